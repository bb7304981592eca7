/* libFuzzer target: VHD images (footer, dynamic header, BAT, sector
 * bitmaps, parent name and locators) served as the plugin serves them.
 *
 * The input (the image container of fuzz.h) becomes
 * <private>/vm/Snapshots/tip.avhd, the tip of a chain whose parents are
 * the fixtures' vm/Virtual Hard Disks/base.vhd and mid.avhd (mid's parent
 * is base), found through whatever locators the input holds, with C:
 * mapped to <private>/vm.  Valid copies of both parents sit outside the
 * VM folder (outside/, and vm/Snapshots/escape.avhd links there): a chain
 * that takes one fails the confinement check of fuzz_exercise.
 */
#include "fuzz.h"

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_image_setup ("vhd", "tip.avhd");
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_image_one (data, size);
  return 0;
}
