/* vhdchain core: the resolved map of a chain (DESIGN.md "A read").
 *
 * Built once at open; afterwards a virtual range becomes segments in O(1)
 * of chain depth.  Thread-safe: the map is immutable except for lazily
 * resolved run lists, which are published with a compare-and-swap.
 */
#ifndef VHDCHAIN_MAP_H
#define VHDCHAIN_MAP_H

#include <stdint.h>

#include "chain.h"
#include "io.h"

struct map;

enum extent_type {
  EXT_DATA,                     /* in some layer's file */
  EXT_ZERO,                     /* a layer says zero (VHDX ZERO states) */
  EXT_HOLE,                     /* no layer has it: reads as zeros */
};

int map_build (struct chain *, struct map **out);
void map_free (struct map *);
/* Read the chain's files with O_DIRECT (io.h) from now on. */
int map_use_direct (struct map *);
uint64_t map_size (const struct map *);
uint32_t map_granule (const struct map *);

/* Read [offset, offset + count) of the virtual disk into buf. */
int map_read (struct map *, void *buf, uint64_t count, uint64_t offset);

/* Describe [offset, offset + count) as extents, merged, in order.  fn
 * returns non-zero to stop early (that value is returned). */
typedef int (*map_extent_fn) (void *opaque, uint64_t offset, uint64_t len,
                              enum extent_type type, int layer);
int map_extents (struct map *, uint64_t offset, uint64_t count,
                 map_extent_fn fn, void *opaque);

/* Bytes allocated per layer (index as in the chain); for info and tests. */
uint64_t map_layer_bytes (const struct map *, int layer);

#endif
