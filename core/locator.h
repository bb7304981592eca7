/* vhdchain core: turning the parent paths written inside images into files
 * on this machine, and opening them only inside the allowed folders.
 */
#ifndef VHDCHAIN_LOCATOR_H
#define VHDCHAIN_LOCATOR_H

#include <stdbool.h>
#include <stddef.h>

#include "layer.h"

struct drive_map {
  char letter;                  /* upper case */
  char *path;                   /* Linux folder standing for LETTER:\ */
};

struct resolver {
  char **roots;                 /* allowed folders, canonical */
  size_t nr_roots;
  char **search;                /* folders searched by base name, canonical */
  size_t nr_search;
  struct drive_map *drives;
  size_t nr_drives;
  bool confine;                 /* refuse parents outside the roots */
};

/* Candidate list, in the order they are tried. */
struct candidates {
  char **path;                  /* Linux paths */
  char **why;                   /* how each was derived, for messages */
  size_t n;
};

/* Build the resolver for a tip: its folder, the Hyper-V VM folder around it
 * (FORMATS.md section 4: ".../Snapshots/..." or ".../Virtual Hard Disks/"),
 * the search folders and drive-map targets.  All are canonicalised. */
int resolver_init (struct resolver *, const char *tip, char **search,
                   size_t nr_search, const struct drive_map *drives,
                   size_t nr_drives, bool confine);
void resolver_free (struct resolver *);

/* The parent candidates of child (FORMATS.md 2.6 and 3.9 order): relative
 * locators from the child's folder, volume and absolute paths through the
 * drive map, file URLs, the header name, then base names in the child's
 * folder, in each search folder, and path suffixes under each root. */
int locator_candidates (const struct resolver *, const struct layer *child,
                        struct candidates *);
void candidates_free (struct candidates *);

/* Open path read-only if it lies inside an allowed folder (after symlinks).
 * Returns the fd, or -ENOENT (no such file), -EPERM (outside the allowed
 * folders: *why says which), -errno.  *real gets the canonical path. */
int locator_open (const struct resolver *, const char *path, char **real);

/* Exposed for unit tests: Windows path text to a relative Linux path. */
char *win_to_unix (const char *win);

#endif
