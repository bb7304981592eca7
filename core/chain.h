/* vhdchain core: a chain is a tip and all its ancestors, each a layer,
 * opened read-only and linked by identity (FORMATS.md 1, "Opening a chain").
 */
#ifndef VHDCHAIN_CHAIN_H
#define VHDCHAIN_CHAIN_H

#include "layer.h"
#include "locator.h"

#define CHAIN_MAX_DEPTH 256

struct chain_opts {
  struct layer_opts layer;
  char **parents;               /* explicit parent candidates, tried first */
  size_t nr_parents;
  char **search;                /* search folders */
  size_t nr_search;
  struct drive_map *drives;
  size_t nr_drives;
  bool no_confine;              /* allow parents outside the allowed folders */
  bool ignore_id_mismatch;      /* like Set-VHD -IgnoreIdMismatch */
  unsigned max_depth;           /* 0: CHAIN_MAX_DEPTH */
};

struct chain {
  struct layer **layers;        /* [0] the tip ... [depth - 1] the base */
  char **found;                 /* how layers[i] was found (i > 0) */
  size_t depth;
};

int chain_open (const char *tip, const struct chain_opts *,
                struct chain **out);
/* Like chain_open, but when a parent cannot be found or accepted (or the
 * chain is too deep, or loops), *out still receives the layers opened so
 * far, tip first, along with the error: for tools that report every
 * problem (vhdchain check).  *out is NULL only if the tip did not open. */
int chain_open_partial (const char *tip, const struct chain_opts *,
                        struct chain **out);
void chain_close (struct chain *);

/* Open one layer by path, read-only, outside any chain (tools, tests). */
int chain_open_file (const char *path, const struct layer_opts *,
                     struct layer **out);

#endif
