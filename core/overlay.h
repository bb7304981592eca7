/* vhdchain core: the writable differencing layer on top of a chain
 * (DESIGN.md "A write", FORMATS.md 2.7-2.9 and 3.10).
 */
#ifndef VHDCHAIN_OVERLAY_H
#define VHDCHAIN_OVERLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "chain.h"
#include "locator.h"
#include "map.h"

struct overlay;

struct overlay_opts {
  const char *path;             /* keep the layer here; NULL: temporary */
  const char *tmpdir;           /* for a temporary layer; NULL: $TMPDIR */
  const struct drive_map *drives; /* to write Windows parent paths */
  size_t nr_drives;
};

/* Create (or, when opts->path names an existing child of the chain's tip,
 * continue) the writable layer over chain, whose resolved map is below. */
int overlay_open (struct chain *, struct map *below,
                  const struct overlay_opts *, struct overlay **out);
/* Close; a temporary layer is deleted.  Does not flush. */
void overlay_close (struct overlay *);
const char *overlay_path (const struct overlay *);

int overlay_read (struct overlay *, void *buf, uint64_t count, uint64_t off);
int overlay_write (struct overlay *, const void *buf, uint64_t count,
                   uint64_t off, bool fua);
/* Zeroed ranges read as zeros afterwards, never as parent data. */
int overlay_zero (struct overlay *, uint64_t count, uint64_t off, bool fua);
/* Make every write completed before the call durable. */
int overlay_flush (struct overlay *);
int overlay_extents (struct overlay *, uint64_t offset, uint64_t count,
                     map_extent_fn fn, void *opaque);

#endif
