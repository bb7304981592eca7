/* libFuzzer target: VHDX images (file identifier, both headers, log
 * replay, region tables, metadata items, parent locator, BAT and sector
 * bitmaps) served as the plugin serves them.
 *
 * The input (the image container of fuzz.h) becomes
 * <private>/vm/Snapshots/tip.avhdx, the tip of a chain whose parents are
 * the fixtures' vm/Virtual Hard Disks/base.vhdx and mid.avhdx (mid's
 * parent is base), found through whatever parent locator the input holds,
 * with C: mapped to <private>/vm.  Valid copies of both parents sit
 * outside the VM folder (outside/, and vm/Snapshots/escape.avhdx links
 * there): a chain that takes one fails the confinement check.
 */
#include "fuzz.h"

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_image_setup ("vhdx", "tip.avhdx");
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_image_one (data, size);
  return 0;
}
