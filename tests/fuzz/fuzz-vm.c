/* vhdchain fuzz targets: a configuration read as the plugin reads it
 * (vm= FOLDER), shared by fuzz-xml.c and fuzz-vmcx.c.
 *
 * The input is parsed by cfg_read_xml or cfg_read_vmcx straight from
 * memory (cfg_read hands them the file's bytes the same way).  When it
 * parses, it also becomes the VM's own configuration file in a copy of a
 * Hyper-V VM folder made by tests/hypervgen.py ("Web Server", with its
 * disks and one checkpoint's configuration), and the plugin's path runs:
 * vm_open of the folder, then for every point and disk vm_chain_open and
 * the reads of fuzz_exercise.  The recorded disk paths are hostile text:
 * every file vm_open resolves and every chain layer must lie inside the
 * VM folder, where copies of the disks outside it (outside/) are bait.
 */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fuzz.h"
#include "hyperv.h"

#define MAX_POINTS 8
#define MAX_DISKS 4

static char *folder, *config;

void
fuzz_vm_setup (const char *fixture)
{
  char dir[PATH_MAX];
  struct dirent *e;
  DIR *d;

  fuzz_setup (fixture);
  fuzz_allow ("Web Server");
  if (!(folder = realpath (fuzz_path (0, "Web Server"), NULL)))
    fuzz_fail ("fixture VM folder missing");
  snprintf (dir, sizeof dir, "%s/Virtual Machines", folder);
  if (!(d = opendir (dir)))
    fuzz_fail ("%s: %m", dir);
  while ((e = readdir (d)) && !config)
    if (e->d_name[0] != '.' && asprintf (&config, "%s/%s", dir,
                                         e->d_name) < 0)
      config = NULL;
  closedir (d);
  if (!config)
    fuzz_fail ("no configuration in %s", dir);
}

static void
check_inside (const char *what, const char *path)
{
  char *real;

  if (!path)
    return;
  if (!(real = realpath (path, NULL)) || !fuzz_allowed (real))
    fuzz_fail ("vm_open took %s %s (%s), outside the VM folder", what, path,
               real ? real : "?");
  free (real);
}

void
fuzz_vm_one (const uint8_t *data, size_t size, enum cfg_format fmt)
{
  struct vm_opts o = { 0 };
  struct cfg *c;
  struct vm *vm;
  int r;

  vc_clear_error ();
  r = fmt == CFG_XML ? cfg_read_xml ("fuzz", data, size, &c)
                     : cfg_read_vmcx ("fuzz", data, size, &c);
  if (r < 0)
    return;
  cfg_get (c, "configuration/properties/name");
  cfg_free (c);

  fuzz_write_file (config, data, size);
  vc_clear_error ();
  if (vm_open (folder, &o, &vm) < 0)
    return;
  vm_find (vm, "Now");
  for (size_t i = 0; i < vm->nr_points && i < MAX_POINTS; i++) {
    const struct vm_point *p = &vm->points[i];
    for (size_t k = 0; k < p->nr_disks && k < MAX_DISKS; k++) {
      const struct vm_disk *d = &p->disks[k];
      struct chain *ch;
      check_inside ("the disk", d->file);
      check_inside ("the tip", d->tip);
      for (size_t j = 0; j < d->depth; j++)
        check_inside ("the chain file", d->chain[j]);
      if (!d->tip)
        continue;
      vc_clear_error ();
      if (vm_chain_open (vm, d, &o.chain, &ch) < 0)
        continue;
      fuzz_exercise (ch, 0, NULL, NULL, 0);
      chain_close (ch);
    }
  }
  vm_free (vm);
}
