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
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static struct drive_map drive;
static char *tip, *tmpdir;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_setup ("vhdx");
  fuzz_allow ("vm");
  drive.letter = 'C';
  drive.path = realpath (fuzz_path (0, "vm"), NULL);
  tip = realpath (fuzz_path (0, "vm/Snapshots"), NULL);
  tmpdir = realpath (fuzz_path (0, "tmp"), NULL);
  if (!drive.path || !tip || !tmpdir || !(tip = realloc (tip, strlen (tip)
                                                          + 16)))
    fuzz_fail ("fixture folders missing");
  strcat (tip, "/tip.avhdx");
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  unsigned flags = fuzz_write_image (tip, data, size);
  struct chain_opts o = {
    .layer.ignore_checksums = flags & FUZZ_F_IGNORE_CHECKSUMS,
    .ignore_id_mismatch = flags & FUZZ_F_IGNORE_ID,
    .drives = &drive, .nr_drives = 1,
  };

  fuzz_serve (tip, &o, flags, tmpdir);
  return 0;
}
