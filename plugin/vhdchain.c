/* nbdkit-vhdchain-plugin: serve any point of a VHD/VHDX snapshot chain.
 *
 * This file is only glue: parameters in, core/ calls out.  The chain and
 * its resolved map are opened once in config_complete (so a bad image makes
 * nbdkit refuse to start) and shared read-only by every connection and
 * worker thread; core/map.c explains why that needs no locks.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "chain.h"
#include "error.h"
#include "io.h"
#include "map.h"
#include "overlay.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *tip;
static struct chain_opts opts;
static enum io_engine io_engine = IO_AUTO;
static struct chain *chain;
static struct map *map;
static char *keep_path;
static struct overlay *_Atomic overlay;   /* created by the first writer */
static pthread_mutex_t overlay_lock = PTHREAD_MUTEX_INITIALIZER;

static void
debug_hook (const char *msg)
{
  nbdkit_debug ("%s", msg);
}

static void
vhdchain_load (void)
{
  vc_debug_hook = debug_hook;
}

static void
vhdchain_unload (void)
{
  /* A clean exit keeps everything written, flushed or not. */
  if (overlay && overlay_flush (overlay) < 0)
    nbdkit_error ("flushing the writable layer at exit failed");
  overlay_close (overlay);
  free (keep_path);
  map_free (map);
  chain_close (chain);
  free (tip);
  for (size_t i = 0; i < opts.nr_parents; i++)
    free (opts.parents[i]);
  for (size_t i = 0; i < opts.nr_search; i++)
    free (opts.search[i]);
  for (size_t i = 0; i < opts.nr_drives; i++)
    free (opts.drives[i].path);
  free (opts.parents);
  free (opts.search);
  free (opts.drives);
}

/* Append a copy of value to a string list. */
static int
list_add (char ***list, size_t *n, const char *value)
{
  char **l = realloc (*list, (*n + 1) * sizeof *l);

  if (!l || !(l[*n] = strdup (value))) {
    nbdkit_error ("strdup: %m");
    if (l)
      *list = l;
    return -1;
  }
  *list = l;
  (*n)++;
  return 0;
}

/* drive=C:/path, mapping a Windows drive letter to a Linux folder. */
static int
add_drive (const char *value)
{
  struct drive_map *d;

  if (!((value[0] | 0x20) >= 'a' && (value[0] | 0x20) <= 'z') ||
      value[1] != ':' || value[2] == '\0') {
    nbdkit_error ("drive=%s: expected LETTER:/linux/folder, e.g. "
                  "drive=C:/mnt/windows", value);
    return -1;
  }
  d = realloc (opts.drives, (opts.nr_drives + 1) * sizeof *d);
  if (!d) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  opts.drives = d;
  d[opts.nr_drives].letter = value[0];
  if (!(d[opts.nr_drives].path = strdup (value + 2))) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  opts.nr_drives++;
  return 0;
}

static int
parse_bool (const char *key, const char *value, bool *out)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1)
    return -1;
  *out = r;
  return 0;
}

static int
parse_io (const char *value)
{
  if (strcmp (value, "auto") == 0) io_engine = IO_AUTO;
  else if (strcmp (value, "uring") == 0) io_engine = IO_URING;
  else if (strcmp (value, "pread") == 0) io_engine = IO_PREAD;
  else {
    nbdkit_error ("io=%s: expected auto, uring or pread", value);
    return -1;
  }
  return 0;
}

static int
vhdchain_config (const char *key, const char *value)
{
  bool confine = true;

  if (strcmp (key, "file") == 0) {
    free (tip);
    return (tip = nbdkit_realpath (value)) ? 0 : -1;
  }
  if (strcmp (key, "search") == 0)
    return list_add (&opts.search, &opts.nr_search, value);
  if (strcmp (key, "parent") == 0)
    return list_add (&opts.parents, &opts.nr_parents, value);
  if (strcmp (key, "drive") == 0)
    return add_drive (value);
  if (strcmp (key, "confine") == 0) {
    int r = parse_bool (key, value, &confine);
    opts.no_confine = !confine;
    return r;
  }
  if (strcmp (key, "ignore-checksums") == 0)
    return parse_bool (key, value, &opts.layer.ignore_checksums);
  if (strcmp (key, "ignore-id-mismatch") == 0)
    return parse_bool (key, value, &opts.ignore_id_mismatch);
  if (strcmp (key, "io") == 0)
    return parse_io (value);
  if (strcmp (key, "overlay") == 0) {
    free (keep_path);
    return (keep_path = nbdkit_absolute_path (value)) ? 0 : -1;
  }
  nbdkit_error ("unknown parameter '%s' (see nbdkit vhdchain --help)", key);
  return -1;
}

static int
vhdchain_config_complete (void)
{
  if (!tip) {
    nbdkit_error ("the file=TIP parameter is required (the chain's tip: "
                  "a .vhd, .avhd, .vhdx or .avhdx file)");
    return -1;
  }
  vc_clear_error ();
  if (io_setup (io_engine) < 0 || chain_open (tip, &opts, &chain) < 0 ||
      map_build (chain, &map) < 0) {
    nbdkit_error ("%s", vc_last_error ());
    return -1;
  }
  for (size_t i = 1; i < chain->depth; i++)
    nbdkit_debug ("layer %zu: %s", i, chain->found[i]);
  nbdkit_debug ("chain of %zu layers, %" PRIu64 " bytes, granule %" PRIu32
                ", read engine %s", chain->depth, map_size (map),
                map_granule (map), io_engine_name ());
  return 0;
}

#define vhdchain_config_help \
  "file=TIP                 (required) the chain's tip: .vhd .avhd .vhdx .avhdx\n" \
  "search=DIR               folder to look for parents in (repeatable)\n" \
  "parent=PATH              explicit parent candidate, tried first (repeatable)\n" \
  "drive=C:/DIR             Linux folder standing for a Windows drive letter\n" \
  "confine=false            allow parents outside the allowed folders\n" \
  "ignore-checksums=true    accept bad VHD checksums and VHDX CRCs\n" \
  "ignore-id-mismatch=true  accept a parent whose identity does not match\n" \
  "io=auto|uring|pread      read engine (default auto: io_uring, else pread)\n" \
  "overlay=PATH             keep the writable layer at PATH (default: a\n" \
  "                         temporary file in $TMPDIR or /var/tmp); an\n" \
  "                         existing child of the tip at PATH is continued"

static void
vhdchain_dump_plugin (void)
{
  printf ("vhdchain_version=%s\n", PACKAGE_VERSION);
  printf ("vhdchain_formats=vhd,vhdx\n");
  printf ("vhdchain_io_uring=yes\n");
  printf ("vhdchain_max_depth=%d\n", CHAIN_MAX_DEPTH);
}

/* The writable layer is made when the first writable connection opens,
 * so that nbdkit -r never creates one. */
static int
ensure_overlay (void)
{
  struct overlay_opts o = { .path = keep_path, .drives = opts.drives,
                            .nr_drives = opts.nr_drives };
  struct overlay *ov;
  int r = 0;

  pthread_mutex_lock (&overlay_lock);
  if (!atomic_load (&overlay)) {
    vc_clear_error ();
    if ((r = overlay_open (chain, map, &o, &ov)) < 0)
      nbdkit_error ("%s", vc_last_error ());
    else {
      nbdkit_debug ("writable layer: %s", keep_path ? keep_path
                    : "temporary");
      atomic_store (&overlay, ov);
    }
  }
  pthread_mutex_unlock (&overlay_lock);
  return r;
}

/* Every connection sees the same chain and layer; the handle only marks
 * the connection open. */
static void *
vhdchain_open (int readonly)
{
  if (!readonly && ensure_overlay () < 0)
    return NULL;
  return &chain;
}

static int64_t
vhdchain_get_size (void *handle)
{
  return map_size (map);
}

static int
vhdchain_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum)
{
  uint32_t sector = chain->layers[0]->sector;

  /* The logical sector is what clients should align to (4096 for such
   * VHDX disks); smaller and unaligned requests are still served. */
  *minimum = sector;
  *preferred = sector > 4096 ? sector : 4096;
  *maximum = 0xFFFFFFFF;
  return 0;
}

static int
vhdchain_can_multi_conn (void *handle)
{
  return 1;
}

static int
vhdchain_can_cache (void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

static int
vhdchain_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  struct overlay *ov = atomic_load (&overlay);
  int r = ov ? overlay_read (ov, buf, count, offset)
             : map_read (map, buf, count, offset);

  if (r < 0) {
    errno = -r;
    nbdkit_error ("%s: read of %" PRIu32 " bytes at %" PRIu64 ": %m",
                  tip, count, offset);
    return -1;
  }
  return 0;
}

static int
add_extent (void *opaque, uint64_t offset, uint64_t len,
            enum extent_type type, int layer)
{
  uint32_t t = type == EXT_DATA ? 0
               : type == EXT_ZERO ? NBDKIT_EXTENT_ZERO
               : NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;

  return nbdkit_add_extent (opaque, offset, len, t) == -1 ? -1 : 0;
}

static int
vhdchain_extents (void *handle, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents)
{
  struct overlay *ov = atomic_load (&overlay);
  int r = ov ? overlay_extents (ov, offset, count, add_extent, extents)
             : map_extents (map, offset, count, add_extent, extents);

  if (r < 0) {
    errno = -r;
    nbdkit_error ("%s: extents at %" PRIu64 ": %m", tip, offset);
    return -1;
  }
  return r;
}

static int
vhdchain_can_write (void *handle)
{
  return 1;
}

static int
vhdchain_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
vhdchain_can_flush (void *handle)
{
  return 1;
}

static int
vhdchain_can_fast_zero (void *handle)
{
  return 1;                     /* zeroing punches or marks, never copies */
}

/* The plugin boundary for every write-side call: -errno to errno. */
static int
write_result (int r, const char *what, uint32_t count, uint64_t offset)
{
  if (r == 0)
    return 0;
  errno = -r;
  nbdkit_error ("%s: %s of %" PRIu32 " bytes at %" PRIu64 ": %m",
                keep_path ? keep_path : "writable layer", what, count,
                offset);
  return -1;
}

static int
vhdchain_pwrite (void *handle, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags)
{
  return write_result (overlay_write (overlay, buf, count, offset,
                                      flags & NBDKIT_FLAG_FUA),
                       "write", count, offset);
}

static int
vhdchain_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return write_result (overlay_zero (overlay, count, offset,
                                     flags & NBDKIT_FLAG_FUA),
                       "zero", count, offset);
}

/* Trim is advisory: clearing bits would bring older parent data back
 * (FORMATS.md 2.9), so the range keeps what it holds. */
static int
vhdchain_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return write_result (flags & NBDKIT_FLAG_FUA ? overlay_flush (overlay) : 0,
                       "trim", count, offset);
}

static int
vhdchain_flush (void *handle, uint32_t flags)
{
  return write_result (overlay_flush (overlay), "flush", 0, 0);
}

static struct nbdkit_plugin plugin = {
  .name = "vhdchain",
  .version = PACKAGE_VERSION,
  .longname = "nbdkit VHD/VHDX snapshot chain plugin",
  .description = "Serve any point of a Hyper-V VHD/VHDX checkpoint chain",
  .load = vhdchain_load,
  .unload = vhdchain_unload,
  .config = vhdchain_config,
  .config_complete = vhdchain_config_complete,
  .config_help = vhdchain_config_help,
  .magic_config_key = "file",
  .dump_plugin = vhdchain_dump_plugin,
  .open = vhdchain_open,
  .get_size = vhdchain_get_size,
  .block_size = vhdchain_block_size,
  .can_multi_conn = vhdchain_can_multi_conn,
  .can_cache = vhdchain_can_cache,
  .pread = vhdchain_pread,
  .extents = vhdchain_extents,
  .can_write = vhdchain_can_write,
  .can_flush = vhdchain_can_flush,
  .can_fua = vhdchain_can_fua,
  .can_fast_zero = vhdchain_can_fast_zero,
  .pwrite = vhdchain_pwrite,
  .zero = vhdchain_zero,
  .trim = vhdchain_trim,
  .flush = vhdchain_flush,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
