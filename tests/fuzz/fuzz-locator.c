/* libFuzzer target: parent paths (core/locator.c), the hostile text that
 * images and configurations carry.
 *
 * The input is up to 8 parent hints, one per line: the first byte picks
 * the kind (relative, volume, absolute, file URL, header name), the rest
 * is the path, as a VHD or VHDX would hand it to chain.c.  For each input:
 * win_to_unix of every hint (no backslash, no "//", no leading "./" may
 * survive), then exactly what chain.c does: resolver_init for a tip in
 * the fixture's VM folder (<private>/vm/Snapshots/tip.avhd), with
 * search=<private>/search and drives C: = <private>/vm/c and
 * D: = <private>/drive-d, confined; locator_candidates; locator_open of
 * every candidate.  Checked: every descriptor locator_open returns is,
 * by /proc/self/fd, a file inside vm/, search/ or drive-d/, read-only; and
 * no folder outside them is ever listed (opendir is wrapped: the
 * case-insensitive fallback must not read other folders).  The fixture
 * holds bait outside: outside/secret.vhd, outside/Virtual Hard Disks/,
 * and symlinks from inside to it, to /etc/passwd, and a loop.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "fuzz.h"
#include "layer.h"
#include "locator.h"

#define MAX_HINTS 8
#define MAX_CANDIDATES 1024

static const char *tip;
static char *search[1];
static bool in_core;            /* only core/'s opendir calls are checked */
static struct drive_map drives[2];

DIR *__real_opendir (const char *name);

DIR *
__wrap_opendir (const char *name)
{
  char *real = realpath (name, NULL);

  if (in_core && real && !fuzz_allowed (real))
    fuzz_fail ("core/ listed the folder %s (%s), outside the allowed "
               "folders", name, real);
  free (real);
  return __real_opendir (name);
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_setup ("locator");
  fuzz_allow ("vm");
  fuzz_allow ("search");
  fuzz_allow ("drive-d");
  tip = realpath (fuzz_path (0, "vm/Snapshots/tip.avhd"), NULL);
  search[0] = realpath (fuzz_path (0, "search"), NULL);
  drives[0] = (struct drive_map) { 'C', realpath (fuzz_path (0, "vm/c"),
                                                  NULL) };
  drives[1] = (struct drive_map) { 'D', realpath (fuzz_path (0, "drive-d"),
                                                  NULL) };
  if (!tip || !search[0] || !drives[0].path || !drives[1].path)
    fuzz_fail ("fixture files missing");
  return 0;
}

static void
check_unix (const char *win)
{
  char *u = win_to_unix (win);

  if (!u)
    return;
  if (strchr (u, '\\') || strstr (u, "//") || strncmp (u, "./", 2) == 0 ||
      strlen (u) > strlen (win))
    fuzz_fail ("win_to_unix (\"%s\") = \"%s\"", win, u);
  free (u);
}

static void
check_open (int fd, const char *cand)
{
  char link[64], real[PATH_MAX];
  ssize_t n;

  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  if ((n = readlink (link, real, sizeof real - 1)) < 0)
    fuzz_fail ("%s: %m", link);
  real[n] = '\0';
  if (!fuzz_allowed (real))
    fuzz_fail ("locator_open (\"%s\") opened %s, outside the allowed "
               "folders", cand, real);
  if ((fcntl (fd, F_GETFL) & O_ACCMODE) != O_RDONLY)
    fuzz_fail ("locator_open (\"%s\") opened %s for writing", cand, real);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct layer l = { .path = (char *) tip, .format = FMT_VHD, .fd = -1 };
  struct resolver r;
  struct candidates c;
  size_t i = 0;

  if (size > 8192)
    return 0;
  while (i < size && l.nr_hints < MAX_HINTS) {
    const uint8_t *nl = memchr (data + i, '\n', size - i);
    size_t end = nl ? (size_t) (nl - data) : size;
    if (end > i) {
      char *s = strndup ((const char *) data + i + 1, end - i - 1);
      if (!s)
        return 0;
      check_unix (s);
      if (layer_add_hint (&l, data[i] % 5, s) < 0)
        break;
    }
    i = end + 1;
  }
  vc_clear_error ();
  in_core = true;
  if (resolver_init (&r, tip, search, 1, drives, 2, true) < 0)
    fuzz_fail ("resolver_init: %s", vc_last_error ());
  if (locator_candidates (&r, &l, &c) == 0) {
    for (size_t k = 0; k < c.n && k < MAX_CANDIDATES; k++) {
      char *real = NULL;
      int fd = locator_open (&r, c.path[k], &real);
      if (fd >= 0) {
        check_open (fd, c.path[k]);
        if (!real || !fuzz_allowed (real))
          fuzz_fail ("locator_open (\"%s\"): real path %s", c.path[k],
                     real ? real : "(none)");
        close (fd);
      }
      free (real);
    }
    candidates_free (&c);
  }
  resolver_free (&r);
  in_core = false;
  for (size_t k = 0; k < l.nr_hints; k++)
    free (l.hints[k].path);
  free (l.hints);
  return 0;
}
