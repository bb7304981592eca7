/* nbdkit-vhdchain-plugin: a Hyper-V VM folder as one export per point.
 *
 * core/hyperv.c reads the folder into points (each checkpoint and "Now"),
 * each with the chain tip that holds its state; here each point becomes an
 * export named after the checkpoint (its GUID where names repeat, and the
 * GUID is always accepted), described by its creation time and disk, so
 * that nbdinfo --list shows the VM's history.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "error.h"
#include "vhdchain.h"

static const char *
file_name (const char *path)
{
  const char *s = path ? strrchr (path, '/') : NULL;
  return s ? s + 1 : path ? path : "";
}

/* The disk disk= names (a controller location or a file name), or the
 * first; NULL if none matches. */
static const struct vm_disk *
pick_disk (const struct vm_point *p, const char *key)
{
  for (size_t i = 0; i < p->nr_disks; i++) {
    const struct vm_disk *d = &p->disks[i];
    const char *rec = d->recorded ? strrchr (d->recorded, '\\') : NULL;
    if (!key ||
        (d->location && strcasecmp (d->location, key) == 0) ||
        strcmp (file_name (d->file), key) == 0 ||
        strcmp (file_name (d->tip), key) == 0 ||
        (rec && strcasecmp (rec + 1, key) == 0))
      return d;
  }
  return NULL;
}

static bool
name_repeats (const struct vm *vm, const struct vm_point *p)
{
  for (size_t i = 0; i < vm->nr_points; i++)
    if (&vm->points[i] != p && strcmp (vm->points[i].name, p->name) == 0)
      return true;
  return false;
}

/* "checkpoint 'Before update' 3f2c..., created 2024-05-01 10:00:00 UTC,
 *  IDE 0:0 Disk.vhd; disks: IDE 0:0, SCSI 0:1" */
static char *
describe (const struct vm_point *p, const struct vm_disk *d)
{
  char when[32] = "unknown time", *s, *disks = NULL;
  size_t len = 0;
  FILE *f = open_memstream (&disks, &len);
  time_t t = p->created;
  struct tm tm;

  if (p->created >= 0 && gmtime_r (&t, &tm))
    strftime (when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
  for (size_t i = 0; f && i < p->nr_disks; i++)
    fprintf (f, "%s%s", i ? ", " : "",
             p->disks[i].location ? p->disks[i].location
             : file_name (p->disks[i].file));
  if (f)
    fclose (f);
  if (asprintf (&s, "%s '%s' %s, created %s, disk %s %s%s%s",
                p->current ? "current state" : "checkpoint", p->name, p->id,
                when, d && d->location ? d->location : "",
                file_name (d ? d->tip : NULL),
                p->nr_disks > 1 ? "; disks: " : "",
                p->nr_disks > 1 && disks ? disks : "") == -1)
    s = NULL;
  free (disks);
  return s;
}

static int
add_point (const struct vm *vm, const struct vm_point *p, const char *disk,
           const char *keep)
{
  const struct vm_disk *d = pick_disk (p, disk);
  char *desc = describe (p, d), *full = NULL, why[512] = "";
  struct export *e;

  if (!d)
    snprintf (why, sizeof why, "no disk matches disk=%s", disk);
  else if (!p->available || !d->tip)
    snprintf (why, sizeof why, "%s", p->problem ? p->problem : d->problem
              ? d->problem : "its disk is missing");
  if (why[0] && desc && asprintf (&full, "%s; unavailable: %s", desc, why) < 0)
    full = NULL;
  e = exports_add (name_repeats (vm, p) ? p->id : p->name,
                   full ? full : desc, why[0] ? NULL : d->tip, keep,
                   why[0] ? why : NULL);
  free (desc);
  free (full);
  if (!e || !(e->alias = strdup (p->id)))
    return -1;
  e->vm = vm;
  e->disk = d;
  return 0;
}

int
exports_add_vm (const struct vm *vm, const char *checkpoint,
                const char *disk, const char *keep)
{
  const struct vm_point *def = NULL;

  if (checkpoint && !(def = vm_find (vm, checkpoint))) {
    nbdkit_error ("%s: checkpoint=%s: %s", vm->folder, checkpoint,
                  vc_last_error ()[0] ? vc_last_error () : "no such point");
    return -1;
  }
  for (size_t i = 0; !def && i < vm->nr_points; i++)
    if (vm->points[i].current)
      def = &vm->points[i];
  for (size_t i = 0; i < vm->nr_points; i++) {
    const struct vm_point *p = &vm->points[i];
    /* overlay= keeps the default export's writes only. */
    if (add_point (vm, p, disk, p == def ? keep : NULL) < 0)
      return -1;
    if (p == def)
      exports_set_default (name_repeats (vm, p) ? p->id : p->name);
  }
  return 0;
}
