/* vhdchain core: a layer is one opened image file, of any format.
 *
 * Every format (vhd.c, vhdx.c) answers the same two questions, so nothing
 * above this interface knows a footer from a region table:
 *
 *  - walk: which blocks does this file say something about?  For each block
 *    that is not ABSENT the format calls back once, in any order, with
 *      ZERO     the block reads as zeros, whatever the parents hold;
 *      FULL     every sector of the block is in this file at data_off;
 *      PARTIAL  per sector, this file (at data_off + sector offset) or the
 *               parent; the presence bitmap says which.
 *    A block the walk does not visit is ABSENT: ask the parent, or zeros in
 *    a base.  The walk reads the block table in pieces, so a layer holds no
 *    array proportional to the virtual size once it is open.
 *
 *  - bitmap: the presence bitmap of one PARTIAL block, normalised to one bit
 *    per logical sector, LSB-first (sector k: byte k >> 3, mask 1 << (k & 7)),
 *    1 = in this file.  Formats convert their on-disk order (VHD MSB-first,
 *    VHDX LSB-first) here, once.
 *
 * A layer is immutable once open; its fields may be read from any thread and
 * ops->bitmap only uses pread, so concurrent calls are safe.
 */
#ifndef VHDCHAIN_LAYER_H
#define VHDCHAIN_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum layer_format { FMT_VHD = 1, FMT_VHDX = 2 };

enum block_state { BLK_ABSENT, BLK_ZERO, BLK_FULL, BLK_PARTIAL };

/* Parent hints, in the order chain.c tries them (FORMATS.md 2.6, 3.9). */
enum hint_kind {
  HINT_RELATIVE,  /* W2ru, Wi2r, relative_path: from the child's folder */
  HINT_VOLUME,    /* volume_path: \\?\Volume{GUID}\... */
  HINT_ABSOLUTE,  /* W2ku, Wi2k, absolute_win32_path: C:\... */
  HINT_URL,       /* MacX: file:// URL */
  HINT_NAME,      /* VHD header parent name */
};

struct parent_hint {
  enum hint_kind kind;
  char *path;                   /* UTF-8, as stored (Windows separators) */
};

struct layer;

typedef int (*layer_walk_fn) (void *opaque, uint64_t block,
                              enum block_state state, uint64_t data_off);

struct layer_ops {
  /* Visit every block that is not ABSENT.  A non-zero return from fn stops
   * the walk and is returned. */
  int (*walk) (struct layer *, layer_walk_fn fn, void *opaque);
  /* Presence bitmap of a PARTIAL block (block_size / sector / 8 bytes). */
  int (*bitmap) (struct layer *, uint64_t block, uint64_t data_off,
                 uint8_t *bits);
  void (*close) (struct layer *);
};

struct layer {
  const struct layer_ops *ops;
  char *path;                   /* as opened, for messages */
  int fd;                       /* O_RDONLY unless it is our own overlay */
  dev_t dev;
  ino_t ino;
  uint64_t file_size;

  enum layer_format format;
  const char *type;             /* "fixed", "dynamic", "differencing" */
  bool differencing;
  uint64_t size;                /* virtual size in bytes */
  uint32_t sector;              /* logical sector: 512 or 4096 */
  uint32_t block_size;          /* power of two, >= sector * 8 */
  uint64_t nr_blocks;           /* ceil (size / block_size) */

  uint8_t id[16];               /* VHD unique id, VHDX DataWriteGuid */
  uint8_t parent_id[16];        /* VHD parent id, VHDX parent_linkage */
  uint8_t parent_id2[16];       /* VHDX parent_linkage2, else zero */
  struct parent_hint *hints;
  size_t nr_hints;

  char creator[64];             /* for info: creator application */
  void *priv;                   /* format-private */
};

struct layer_opts {
  bool ignore_checksums;        /* accept bad VHD checksums / VHDX CRCs */
};

/* Probe the format of fd and open it as a layer.  path is used in messages.
 * On success the layer owns fd.  On failure fd is left open and an error
 * message naming path and the field at fault is recorded (error.h).
 */
int layer_open (int fd, const char *path, const struct layer_opts *opts,
                struct layer **out);
void layer_close (struct layer *);

/* Helpers for format implementations. */
int layer_pread (const struct layer *, void *buf, size_t count,
                 uint64_t offset, const char *what);
int layer_add_hint (struct layer *, enum hint_kind kind, char *path);
const char *hint_kind_name (enum hint_kind);

/* Implemented by each format: 0 = not this format, 1 = opened, < 0 error. */
int vhd_open (struct layer *, const struct layer_opts *);
int vhdx_open (struct layer *, const struct layer_opts *);

#endif
