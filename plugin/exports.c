/* nbdkit-vhdchain-plugin: the exports, each a point of a chain.
 *
 * Every export's chain and resolved map are opened in config_complete, so
 * a bad image makes nbdkit refuse to start; an export whose files are
 * missing is listed as unavailable instead (a VM folder with one broken
 * checkpoint still serves the others).  Opened exports are shared by
 * every connection; the only thing created later is an export's writable
 * layer, by its first writable connection, under the export's lock.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "error.h"
#include "vhdchain.h"

static struct export *exports;
static size_t nr_exports;
static char *default_name;

struct export *
exports_add (const char *name, const char *description, const char *tip,
             const char *keep, const char *unavailable)
{
  struct export *e = realloc (exports, (nr_exports + 1) * sizeof *e);

  if (!e) {
    nbdkit_error ("realloc: %m");
    return NULL;
  }
  exports = e;
  e = &exports[nr_exports];
  memset (e, 0, sizeof *e);
  pthread_mutex_init (&e->lock, NULL);
  nr_exports++;
  if (!(e->name = strdup (name)) ||
      !(e->description = strdup (description ? description : "")) ||
      (tip && !(e->tip = strdup (tip))) ||
      (keep && !(e->keep = strdup (keep))) ||
      (unavailable && !(e->unavailable = strdup (unavailable)))) {
    nbdkit_error ("strdup: %m");
    return NULL;
  }
  return e;
}

void
exports_set_default (const char *name)
{
  free (default_name);
  default_name = strdup (name);
}

static int
open_one (struct export *e)
{
  vc_clear_error ();
  if ((e->vm ? vm_chain_open (e->vm, e->disk, &chain_opts, &e->chain)
             : chain_open (e->tip, &chain_opts, &e->chain)) < 0 ||
      map_build (e->chain, &e->map) < 0 ||
      (direct_io && map_use_direct (e->map) < 0)) {
    nbdkit_error ("%s", vc_last_error ());
    return -1;
  }
  for (size_t i = 1; i < e->chain->depth; i++)
    nbdkit_debug ("export '%s': layer %zu: %s", e->name, i,
                  e->chain->found[i]);
  return 0;
}

int
exports_open (void)
{
  for (size_t i = 0; i < nr_exports; i++)
    if (!exports[i].unavailable && open_one (&exports[i]) < 0)
      return -1;
  return 0;
}

struct export *
exports_find (const char *name)
{
  for (size_t i = 0; i < nr_exports; i++)
    if (strcmp (exports[i].name, name) == 0 ||
        (exports[i].alias && strcasecmp (exports[i].alias, name) == 0))
      return &exports[i];
  nbdkit_error ("no export named '%s' (nbdinfo --list shows them)", name);
  return NULL;
}

/* The writable layer is made when the first writable connection opens,
 * so that nbdkit -r never creates one. */
int
export_make_writable (struct export *e)
{
  struct overlay_opts o = { .path = e->keep, .drives = chain_opts.drives,
                            .nr_drives = chain_opts.nr_drives };
  struct overlay *ov;
  int r = 0;

  pthread_mutex_lock (&e->lock);
  if (!atomic_load (&e->overlay)) {
    vc_clear_error ();
    if ((r = overlay_open (e->chain, e->map, &o, &ov)) < 0)
      nbdkit_error ("%s", vc_last_error ());
    else {
      nbdkit_debug ("export '%s': writable layer %s", e->name,
                    e->keep ? e->keep : "(temporary)");
      atomic_store (&e->overlay, ov);
    }
  }
  pthread_mutex_unlock (&e->lock);
  return r;
}

int
exports_list (struct nbdkit_exports *list)
{
  for (size_t i = 0; i < nr_exports; i++)
    if (nbdkit_add_export (list, exports[i].name,
                           exports[i].description) == -1)
      return -1;
  return 0;
}

const char *
exports_default (void)
{
  return default_name ? default_name : nr_exports ? exports[0].name : "";
}

void
exports_free (void)
{
  for (size_t i = 0; i < nr_exports; i++) {
    struct export *e = &exports[i];
    /* A clean exit keeps everything written, flushed or not. */
    if (e->overlay && overlay_flush (e->overlay) < 0)
      nbdkit_error ("export '%s': flushing the writable layer at exit "
                    "failed", e->name);
    overlay_close (e->overlay);
    map_free (e->map);
    chain_close (e->chain);
    free (e->name);
    free (e->alias);
    free (e->description);
    free (e->tip);
    free (e->keep);
    free (e->unavailable);
  }
  free (exports);
  free (default_name);
  exports = NULL;
  default_name = NULL;
  nr_exports = 0;
}
