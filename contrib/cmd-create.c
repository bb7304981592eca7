/* vhdchain create PARENT CHILD: a new, empty differencing child.
 *
 * PARENT's chain is opened first (with the usual options), so a child is
 * only made on a chain that opens.  The child is then made by the plugin's
 * own writer (overlay_open with a kept path), so it is exactly what
 * "nbdkit vhdchain PARENT overlay=CHILD" would create: a VHD child of a
 * VHD parent (parent identity, header name, W2ku/W2ru/MacX locators, W2ku
 * through --drive when a map covers PARENT) or a VHDX child of a VHDX one
 * (core/vhdx-child.c), synced with its folder.  CHILD must not exist; it
 * is never overwritten.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "overlay.h"

/* CHILD as an absolute canonical path (its folder must exist), which the
 * relative locator is computed from. */
static char *
child_path (const char *arg)
{
  char *d = strdup (arg), *b = strdup (arg), *dir = NULL, *out = NULL;

  if (d && b && (dir = realpath (dirname (d), NULL)) &&
      asprintf (&out, "%s/%s", strcmp (dir, "/") ? dir : "",
                basename (b)) == -1)
    out = NULL;
  if (!dir)
    cli_error ("%s: folder: %m", arg);
  free (d);
  free (b);
  free (dir);
  return out;
}

static int
make_child (const struct cli *cli, struct chain *c, const char *path)
{
  struct overlay_opts o = { .path = path, .drives = cli->chain.drives,
                            .nr_drives = cli->chain.nr_drives };
  struct overlay *ov;
  struct map *m;
  int r;

  if ((r = cli_build_map (c, &m)) < 0)
    return r;
  vc_clear_error ();
  if ((r = overlay_open (c, m, &o, &ov)) < 0)
    cli_core_error ();
  else
    overlay_close (ov);
  map_free (m);
  return r;
}

static int
create_run (struct cli *cli)
{
  const char *parent = cli->args[0], *arg = cli->args[1];
  struct chain *c;
  struct stat st;
  char *path;
  int status = EXIT_FAIL;

  if (lstat (arg, &st) == 0) {
    cli_error ("%s: exists; refusing to overwrite it", arg);
    return EXIT_FAIL;
  }
  if (cli_open_chain (cli, parent, &c) < 0)
    return EXIT_USAGE;
  if ((path = child_path (arg)) != NULL) {
    if (make_child (cli, c, path) == 0) {
      status = EXIT_OK;
      if (!cli->quiet)
        printf ("%s: differencing child of %s\n", path, c->layers[0]->path);
    }
    free (path);
  }
  chain_close (c);
  return status;
}

static const int create_options[] = { 0 };

const struct command cmd_create = {
  .name = "create",
  .args = "PARENT CHILD",
  .summary = "a new, empty differencing child of PARENT at CHILD",
  .options = create_options,
  .nargs = 2,
  .run = create_run,
};
