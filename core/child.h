/* vhdchain core: the on-disk side of the writable layer, one per format.
 *
 * overlay.c owns what is in memory (which blocks exist, which sectors are
 * set) and the ordering; a child only knows where things go in its file.
 * The contract that makes the ordering crash-safe (FORMATS.md 2.8):
 *  - alloc() extends the file so that the new block lies inside it and the
 *    file still ends in a valid form; it writes nothing that points at the
 *    block;
 *  - commit() runs after the data of every listed block is durable and
 *    before the second sync of a flush; it writes the bitmaps and the
 *    table entries of exactly those blocks, and nothing else that points
 *    at data.
 */
#ifndef VHDCHAIN_CHILD_H
#define VHDCHAIN_CHILD_H

#include <stdint.h>

#include "layer.h"
#include "locator.h"

struct child_dirty {
  uint64_t block;
  uint64_t data_off;
  const uint8_t *bits;          /* snapshot, LSB-first, 1 = in this file */
};

struct child;

struct child_ops {
  int (*alloc) (struct child *, uint64_t block, uint64_t *data_off);
  int (*commit) (struct child *, const struct child_dirty *, size_t n);
  void (*close) (struct child *);
};

struct child {
  const struct child_ops *ops;
  int fd;                       /* O_RDWR: our own file, never the chain's */
  uint64_t size;
  uint32_t sector;
  uint32_t block_size;
  uint64_t nr_blocks;
  void *priv;
};

/* What a new child records about its parent. */
struct parent_ref {
  const struct layer *layer;
  const char *path;             /* canonical Linux path */
  const struct drive_map *drives;
  size_t nr_drives;
};

/* Write a fresh, empty child into the empty file fd (and sync it). */
int vhd_child_create (int fd, const char *path, const struct parent_ref *,
                      struct child **out);
/* Take over an existing child file, already checked as a layer. */
int vhd_child_attach (int fd, struct layer *, struct child **out);

/* The same for a VHDX child of a VHDX tip (vhdx-child.c).  Attaching renews
 * the file's FileWriteGuid and DataWriteGuid (and replays a pending log in
 * place) before returning. */
int vhdx_child_create (int fd, const char *path, const struct parent_ref *,
                       struct child **out);
int vhdx_child_attach (int fd, struct layer *, struct child **out);

/* The same for any VHDX opened for writing (a merge's target): fixed,
 * dynamic or differencing.  It takes the DataWriteGuid data_write (NULL: a
 * new random one), so that a caller can first link a child to it
 * (vhdx_relink).  In a file without a parent, alloc() adds no sector
 * bitmaps and commit() writes FULLY_PRESENT entries only: every block
 * committed must have all its sectors set (its writer writes it whole). */
int vhdx_attach (int fd, struct layer *, const uint8_t *data_write,
                 struct child **out);

/* Make the VHDX child l (its file open O_RDWR as fd) link to a parent
 * whose DataWriteGuid is now `now` and will be `next` (MS-VHDX: a merge
 * renews the parent's DataWriteGuid before changing it): the one of
 * parent_linkage and parent_linkage2 that does not name `now` gets `next`,
 * added or rewritten so that each single write leaves a valid locator and
 * the child linked; synced.  The child's FileWriteGuid is renewed first,
 * its DataWriteGuid kept (what it shows does not change); a pending log is
 * replayed into the file before. */
int vhdx_relink (int fd, struct layer *l, const uint8_t now[16],
                 const uint8_t next[16]);

/* Paths as a Windows child records them (shared by VHD and VHDX). */
char *child_relative_path (const char *child_path, const char *parent_path);
char *child_absolute_path (const char *parent_path,
                           const struct drive_map *, size_t nr_drives);

#endif
