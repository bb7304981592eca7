/* nbdkit-vhdchain-plugin: serve any point of a VHD/VHDX snapshot chain.
 *
 * Only glue lives here: nbdkit callbacks in, core/ calls out.  A
 * connection's handle is its export (exports.c), whose chain and resolved
 * map are read-only and shared by every worker thread (core/map.c says why
 * that needs no locks); writes go to the export's writable layer
 * (core/overlay.c).  Errors cross this boundary once: core returns -errno
 * and has recorded a message, the callback sets errno and says it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "error.h"
#include "vhdchain.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

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
  config_free ();
}

static void
vhdchain_dump_plugin (void)
{
  printf ("vhdchain_version=%s\n", PACKAGE_VERSION);
  printf ("vhdchain_formats=vhd,vhdx\n");
  printf ("vhdchain_io_uring=yes\n");
  printf ("vhdchain_max_depth=%d\n", CHAIN_MAX_DEPTH);
}

static int
vhdchain_list_exports (int readonly, int is_tls, struct nbdkit_exports *l)
{
  return exports_list (l);
}

static const char *
vhdchain_default_export (int readonly, int is_tls)
{
  return exports_default ();
}

static void *
vhdchain_open (int readonly)
{
  struct export *e = exports_find (nbdkit_export_name ());

  if (!e)
    return NULL;
  if (e->unavailable) {
    nbdkit_error ("export '%s' is unavailable: %s", e->name, e->unavailable);
    return NULL;
  }
  if (!readonly && export_make_writable (e) < 0)
    return NULL;
  return e;
}

static const char *
vhdchain_export_description (void *handle)
{
  return ((struct export *) handle)->description;
}

static int64_t
vhdchain_get_size (void *handle)
{
  return map_size (((struct export *) handle)->map);
}

static int
vhdchain_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum)
{
  uint32_t sector = ((struct export *) handle)->chain->layers[0]->sector;

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
  return 1;                     /* one layer; flush covers every connection */
}

static int
vhdchain_can_cache (void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

/* Errors the NBD protocol has a code for; nbdkit sends any other as
 * EINVAL, which would tell a client its request was wrong. */
static bool
nbd_carries (int err)
{
  switch (err) {
  case EPERM: case EROFS: case EIO: case ENOMEM: case EINVAL: case ENOSPC:
  case EDQUOT: case EFBIG: case EOVERFLOW: case ENOTSUP: case ESHUTDOWN:
    return true;
  }
  return false;
}

/* The plugin boundary: -errno from core becomes errno and one message.
 * A failure the protocol cannot name (ENOTCONN from a dead FUSE mount,
 * ESTALE, ENXIO ...) goes to the client as EIO, which it is. */
static int
result (struct export *e, int r, const char *what, uint32_t count,
        uint64_t offset)
{
  if (r == 0)
    return 0;
  errno = -r;
  nbdkit_error ("%s: %s of %" PRIu32 " bytes at %" PRIu64 ": %m",
                e->keep ? e->keep : e->tip, what, count, offset);
  errno = nbd_carries (-r) ? -r : EIO;
  return -1;
}

static int
vhdchain_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  struct export *e = handle;
  struct overlay *ov = atomic_load (&e->overlay);

  return result (e, ov ? overlay_read (ov, buf, count, offset)
                       : map_read (e->map, buf, count, offset),
                 "read", count, offset);
}

static int
add_extent (void *opaque, uint64_t offset, uint64_t len,
            enum extent_type type, int layer)
{
  uint32_t t = type == EXT_DATA ? 0
               : type == EXT_ZERO ? NBDKIT_EXTENT_ZERO
               : NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;

  return nbdkit_add_extent (opaque, offset, len, t) == -1;  /* 1: stop */
}

static int
vhdchain_extents (void *handle, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents)
{
  struct export *e = handle;
  struct overlay *ov = atomic_load (&e->overlay);
  int r = ov ? overlay_extents (ov, offset, count, add_extent, extents)
             : map_extents (e->map, offset, count, add_extent, extents);

  return r > 0 ? -1 : result (e, r, "extents", count, offset);
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

static int
vhdchain_pwrite (void *handle, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags)
{
  struct export *e = handle;

  return result (e, overlay_write (e->overlay, buf, count, offset,
                                   flags & NBDKIT_FLAG_FUA),
                 "write", count, offset);
}

static int
vhdchain_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct export *e = handle;

  return result (e, overlay_zero (e->overlay, count, offset,
                                  flags & NBDKIT_FLAG_FUA),
                 "zero", count, offset);
}

/* Trim is advisory: clearing bits would bring older parent data back
 * (FORMATS.md 2.9), so the range keeps what it holds. */
static int
vhdchain_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct export *e = handle;

  return result (e, flags & NBDKIT_FLAG_FUA ? overlay_flush (e->overlay) : 0,
                 "trim", count, offset);
}

static int
vhdchain_flush (void *handle, uint32_t flags)
{
  struct export *e = handle;

  return result (e, overlay_flush (e->overlay), "flush", 0, 0);
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
  .list_exports = vhdchain_list_exports,
  .default_export = vhdchain_default_export,
  .open = vhdchain_open,
  .export_description = vhdchain_export_description,
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
