/* vhdchain core: the writable layer (DESIGN.md "A write"; FORMATS.md 2.8).
 *
 * In memory, blocks[b] is NULL until block b is allocated, then points at
 * its file offset and its presence bits (1 = the sector is in our file).
 * Both only ever grow: a pointer is published once, bits are only set.
 * That is what lets reads take no lock at all: a reader that sees a bit
 * set (acquire) also sees the data, because the writer's pwrite returned
 * before it set the bit (release); a reader that sees it clear reads the
 * chain below, which is what the sector held before the racing write.
 *
 * Writers lock a stripe of blocks, so partial-sector read-modify-writes of
 * one block are serialised while other blocks proceed; allocation takes a
 * short global lock (the file end moves).  Nothing that points at data is
 * written by a write: a flush swaps out the dirty blocks, clears their
 * flags, snapshots their bits, syncs (the data is durable), lets the child
 * write bitmaps and table entries for the snapshot, and syncs again.  Any
 * bit in a snapshot belongs to data written before it, so a crash at any
 * moment leaves each block showing old or new contents, never garbage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>

#include "child.h"
#include "error.h"
#include "io.h"
#include "overlay.h"

#define STRIPES 64

struct oblock {
  uint64_t data_off;
  atomic_bool dirty;
  _Atomic uint64_t bits[];
};

struct overlay {
  struct child *child;
  char *path;
  struct map *below;
  uint64_t size;
  uint32_t sector, bsize;
  unsigned bshift;
  uint64_t nr_blocks;
  size_t nwords;                /* 64-bit words of bits per block */
  struct oblock *_Atomic *blocks;
  pthread_mutex_t alloc_lock, flush_lock, dirty_lock;
  pthread_mutex_t stripe[STRIPES];
  uint64_t *dirty;
  size_t nr_dirty, cap_dirty;
  atomic_int broken;            /* errno of a failed sync: no more writes */
};

const char *overlay_path (const struct overlay *ov) { return ov->path; }

/* --- bits ------------------------------------------------------------ */

static bool
bit (const struct oblock *ob, uint32_t s)
{
  return atomic_load_explicit (&((struct oblock *) ob)->bits[s >> 6],
                               memory_order_acquire) >> (s & 63) & 1;
}

/* Sectors from s (below end) with the same bit as s. */
static uint32_t
same_run (const struct oblock *ob, uint32_t s, uint32_t end)
{
  bool v = bit (ob, s);
  uint32_t e = s + 1;

  while (e < end && bit (ob, e) == v)
    e++;
  return e - s;
}

static bool
any_bit (const struct oblock *ob, uint32_t s, uint32_t end)
{
  return ob && (bit (ob, s) || same_run (ob, s, end) < end - s);
}

static void
set_bits (struct oblock *ob, uint32_t s, uint32_t end)
{
  while (s < end) {
    uint32_t w = s >> 6, lo = s & 63;
    uint32_t hi = end - (w << 6) < 64 ? end - (w << 6) : 64;
    uint64_t mask = (hi == 64 ? ~UINT64_C (0) : (UINT64_C (1) << hi) - 1) &
                    ~((UINT64_C (1) << lo) - 1);
    atomic_fetch_or_explicit (&ob->bits[w], mask, memory_order_release);
    s = (w + 1) << 6;
  }
}

static struct oblock *
get (struct overlay *ov, uint64_t b)
{
  return atomic_load_explicit (&ov->blocks[b], memory_order_acquire);
}

/* --- reading --------------------------------------------------------- */

/* [off, off + n) inside block b, which is allocated. */
static int
read_in_block (struct overlay *ov, const struct oblock *ob, char *buf,
               uint64_t n, uint64_t off)
{
  uint32_t in = off & (ov->bsize - 1), end = in + n;
  uint32_t s = in / ov->sector, send = (end + ov->sector - 1) / ov->sector;
  int r = 0;

  while (s < send && r == 0) {
    uint32_t len = same_run (ob, s, send);
    uint32_t a = s * ov->sector > in ? s * ov->sector : in;
    uint32_t e = (s + len) * ov->sector < end ? (s + len) * ov->sector : end;

    r = bit (ob, s)
      ? io_pread_full (ov->child->fd, buf + (a - in), e - a, ob->data_off + a)
      : map_read (ov->below, buf + (a - in), e - a, off - in + a);
    s += len;
  }
  return r;
}

int
overlay_read (struct overlay *ov, void *buf, uint64_t count, uint64_t off)
{
  char *p = buf;
  int r = 0;

  while (count && r == 0) {
    uint64_t b = off >> ov->bshift, n = ov->bsize - (off & (ov->bsize - 1));
    const struct oblock *ob = get (ov, b);

    if (n > count)
      n = count;
    if (ob)
      r = read_in_block (ov, ob, p, n, off);
    else {                      /* a run of blocks we do not have */
      while (n < count && !get (ov, ++b))
        n += count - n < ov->bsize ? count - n : ov->bsize;
      r = map_read (ov->below, p, n, off);
    }
    p += n;
    off += n;
    count -= n;
  }
  return r;
}

/* --- allocation and dirty tracking ------------------------------------ */

static int
get_or_alloc (struct overlay *ov, uint64_t b, struct oblock **out)
{
  struct oblock *ob = get (ov, b);
  uint64_t data_off;
  int r = 0;

  if (!ob) {
    pthread_mutex_lock (&ov->alloc_lock);
    if (!(ob = get (ov, b))) {
      ob = calloc (1, sizeof *ob + ov->nwords * sizeof ob->bits[0]);
      if (!ob)
        r = -ENOMEM;
      else if ((r = ov->child->ops->alloc (ov->child, b, &data_off)) < 0) {
        free (ob);
        ob = NULL;
      }
      else {
        ob->data_off = data_off;
        atomic_store_explicit (&ov->blocks[b], ob, memory_order_release);
      }
    }
    pthread_mutex_unlock (&ov->alloc_lock);
  }
  *out = ob;
  return r;
}

static int
mark_dirty (struct overlay *ov, uint64_t b, struct oblock *ob)
{
  int r = 0;

  if (atomic_exchange (&ob->dirty, true))
    return 0;
  pthread_mutex_lock (&ov->dirty_lock);
  if (ov->nr_dirty == ov->cap_dirty) {
    size_t cap = ov->cap_dirty ? 2 * ov->cap_dirty : 256;
    uint64_t *d = realloc (ov->dirty, cap * sizeof *d);
    if (d) {
      ov->dirty = d;
      ov->cap_dirty = cap;
    }
  }
  if (ov->nr_dirty < ov->cap_dirty)
    ov->dirty[ov->nr_dirty++] = b;
  else {
    atomic_store (&ob->dirty, false);
    r = -ENOMEM;
  }
  pthread_mutex_unlock (&ov->dirty_lock);
  return r;
}

/* --- writing --------------------------------------------------------- */

/* A partial sector: read what it holds now, patch, write it whole.  The
 * caller holds the block's stripe, so nobody else patches it meanwhile. */
static int
patch_sector (struct overlay *ov, const struct oblock *ob, uint64_t vsec,
              const char *src, uint32_t at, uint32_t len)
{
  char *tmp = malloc (ov->sector);
  int r = tmp ? overlay_read (ov, tmp, ov->sector, vsec) : -ENOMEM;

  if (r == 0) {
    if (src)
      memcpy (tmp + at, src, len);
    else
      memset (tmp + at, 0, len);
    r = io_pwrite_full (ov->child->fd, tmp, ov->sector,
                        ob->data_off + (vsec & (ov->bsize - 1)));
  }
  free (tmp);
  return r;
}

/* Zeros for [off, off + len) of our file: punched where the file system
 * can, written where it cannot. */
static int
zero_file (int fd, uint64_t off, uint64_t len)
{
  static const char zeros[65536];
  int r = 0;

  if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len)
      == 0)
    return 0;
  while (len && r == 0) {
    uint64_t n = len < sizeof zeros ? len : sizeof zeros;
    r = io_pwrite_full (fd, zeros, n, off);
    off += n;
    len -= n;
  }
  return r;
}

/* Write (src) or zero (src == NULL) [off, off + n) inside block b. */
static int
store (struct overlay *ov, uint64_t b, const char *src, uint64_t n,
       uint64_t off)
{
  uint32_t sec = ov->sector, in = off & (ov->bsize - 1), end = in + n;
  uint32_t head = in % sec, a = in - head, z = (end + sec - 1) / sec * sec;
  uint32_t mid_a = head ? a + sec : a, mid_z = end % sec ? z - sec : z;
  struct oblock *ob;
  int r = get_or_alloc (ov, b, &ob);

  if (r == 0 && head)
    r = patch_sector (ov, ob, off - in + a, src, head,
                      end - a < sec ? end - in : sec - head);
  if (r == 0 && end % sec && (!head || z - sec > a))
    r = patch_sector (ov, ob, off - in + z - sec,
                      src ? src + (z - sec - in) : NULL, 0, end % sec);
  if (r == 0 && mid_z > mid_a)
    r = src ? io_pwrite_full (ov->child->fd, src + (mid_a - in),
                              mid_z - mid_a, ob->data_off + mid_a)
            : zero_file (ov->child->fd, ob->data_off + mid_a, mid_z - mid_a);
  if (r == 0) {
    set_bits (ob, a / sec, z / sec);
    r = mark_dirty (ov, b, ob);
  }
  return r;
}

static pthread_mutex_t *
stripe (struct overlay *ov, uint64_t b)
{
  return &ov->stripe[b % STRIPES];
}

/* Does the range read as zeros already, with nothing of ours in it? */
static int
reads_zero (void *opaque, uint64_t off, uint64_t len, enum extent_type t,
            int layer)
{
  return t == EXT_DATA;         /* stop at the first data extent */
}

static bool
already_zero (struct overlay *ov, const struct oblock *ob, uint64_t n,
              uint64_t off)
{
  uint32_t in = off & (ov->bsize - 1);
  uint32_t s = in / ov->sector, e = (in + n + ov->sector - 1) / ov->sector;

  return !any_bit (ob, s, e) &&
         map_extents (ov->below, off, n, reads_zero, NULL) == 0;
}

static int
for_each_block (struct overlay *ov, const char *src, uint64_t count,
                uint64_t off)
{
  int r = 0;

  while (count && r == 0) {
    uint64_t b = off >> ov->bshift, n = ov->bsize - (off & (ov->bsize - 1));

    if (n > count)
      n = count;
    pthread_mutex_lock (stripe (ov, b));
    if (src || !already_zero (ov, get (ov, b), n, off))
      r = store (ov, b, src, n, off);
    pthread_mutex_unlock (stripe (ov, b));
    if (src)
      src += n;
    off += n;
    count -= n;
  }
  return r;
}

int
overlay_write (struct overlay *ov, const void *buf, uint64_t count,
               uint64_t off, bool fua)
{
  int r = -atomic_load (&ov->broken);

  if (r == 0)
    r = for_each_block (ov, buf, count, off);

  return r == 0 && fua ? overlay_flush (ov) : r;
}

int
overlay_zero (struct overlay *ov, uint64_t count, uint64_t off, bool fua)
{
  int r = -atomic_load (&ov->broken);

  if (r == 0)
    r = for_each_block (ov, NULL, count, off);

  return r == 0 && fua ? overlay_flush (ov) : r;
}

/* --- flush ----------------------------------------------------------- */

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Copy the bits of block ob as bytes, LSB-first. */
static void
snapshot_bits (const struct overlay *ov, struct oblock *ob, uint8_t *out)
{
  for (size_t w = 0; w < ov->nwords; w++) {
    uint64_t v = atomic_load (&ob->bits[w]);
    for (int i = 0; i < 8; i++)
      out[w * 8 + i] = v >> (8 * i);
  }
}

/* After a failed sync nobody knows what reached the disk, and a retried
 * sync may succeed without it (the kernel drops the failed pages' error):
 * the layer stops taking writes rather than record bits over lost data. */
static int
sync_layer (struct overlay *ov)
{
  int e;

  if (fdatasync (ov->child->fd) == 0)
    return 0;
  e = errno;
  atomic_store (&ov->broken, e);
  return vc_error (e, "%s: fdatasync: %s; the layer takes no more writes",
                   ov->path, strerror (e));
}

static int
commit (struct overlay *ov, const uint64_t *list, size_t n)
{
  struct child_dirty *d = calloc (n ? n : 1, sizeof *d);
  uint8_t *bits = malloc ((n ? n : 1) * ov->nwords * 8);
  int r = d && bits ? 0 : -ENOMEM;

  for (size_t i = 0; i < n && r == 0; i++) {
    struct oblock *ob = get (ov, list[i]);
    atomic_store (&ob->dirty, false);   /* before the snapshot: see top */
    snapshot_bits (ov, ob, bits + i * ov->nwords * 8);
    d[i] = (struct child_dirty) { list[i], ob->data_off,
                                  bits + i * ov->nwords * 8 };
  }
  if (r == 0)
    r = sync_layer (ov);
  if (r == 0 && n)
    r = ov->child->ops->commit (ov->child, d, n);
  if (r == 0 && n)
    r = sync_layer (ov);
  free (d);
  free (bits);
  return r;
}

int
overlay_flush (struct overlay *ov)
{
  uint64_t *list;
  size_t n;
  int r;

  if ((r = atomic_load (&ov->broken)) != 0)
    return -r;
  pthread_mutex_lock (&ov->flush_lock);
  pthread_mutex_lock (&ov->dirty_lock);
  list = ov->dirty;
  n = ov->nr_dirty;
  ov->dirty = NULL;
  ov->nr_dirty = ov->cap_dirty = 0;
  pthread_mutex_unlock (&ov->dirty_lock);

  if (n)                        /* list is NULL then: qsort's UB */
    qsort (list, n, sizeof *list, cmp_u64);
  r = commit (ov, list, n);
  for (size_t i = 0; r < 0 && i < n; i++) {    /* keep them for a retry */
    atomic_store (&get (ov, list[i])->dirty, false);
    mark_dirty (ov, list[i], get (ov, list[i]));
  }
  free (list);
  pthread_mutex_unlock (&ov->flush_lock);
  return r;
}

/* --- extents --------------------------------------------------------- */

int
overlay_extents (struct overlay *ov, uint64_t off, uint64_t count,
                 map_extent_fn fn, void *opaque)
{
  int r = 0;

  while (count && r == 0) {
    uint64_t b = off >> ov->bshift, n = ov->bsize - (off & (ov->bsize - 1));
    const struct oblock *ob = get (ov, b);
    uint32_t in = off & (ov->bsize - 1);

    if (n > count)
      n = count;
    if (!ob)
      r = map_extents (ov->below, off, n, fn, opaque);
    for (uint32_t s = in / ov->sector, len; ob && r == 0 && s * ov->sector
           < in + n; s += len) {
      uint32_t send = (in + n + ov->sector - 1) / ov->sector;
      uint32_t a, e;
      len = same_run (ob, s, send);
      a = s * ov->sector > in ? s * ov->sector : in;
      e = (s + len) * ov->sector < in + n ? (s + len) * ov->sector : in + n;
      r = bit (ob, s) ? fn (opaque, off - in + a, e - a, EXT_DATA, -2)
                      : map_extents (ov->below, off - in + a, e - a, fn,
                                     opaque);
    }
    off += n;
    count -= n;
  }
  return r;
}

/* --- open and close --------------------------------------------------- */

static int
init_state (struct overlay *ov, struct child *c)
{
  ov->child = c;
  ov->size = c->size;
  ov->sector = c->sector;
  ov->bsize = c->block_size;
  ov->bshift = __builtin_ctz (c->block_size);
  ov->nr_blocks = c->nr_blocks;
  ov->nwords = (c->block_size / c->sector + 63) / 64;
  pthread_mutex_init (&ov->alloc_lock, NULL);
  pthread_mutex_init (&ov->flush_lock, NULL);
  pthread_mutex_init (&ov->dirty_lock, NULL);
  for (int i = 0; i < STRIPES; i++)
    pthread_mutex_init (&ov->stripe[i], NULL);
  ov->blocks = calloc (ov->nr_blocks ? ov->nr_blocks : 1,
                       sizeof *ov->blocks);
  return ov->blocks ? 0 : -ENOMEM;
}

/* Load an existing child's blocks and bits (a resumed session). */
struct loader { struct overlay *ov; struct layer *l; uint8_t *bits; };

static int
load_block (void *opaque, uint64_t b, enum block_state st, uint64_t data_off)
{
  struct loader *ld = opaque;
  struct overlay *ov = ld->ov;
  struct oblock *ob = calloc (1, sizeof *ob + ov->nwords * 8);
  size_t nbytes = ov->bsize / ov->sector / 8;
  int r;

  if (!ob)
    return -ENOMEM;
  /* A ZERO block (VHDX) reads zeros whatever the parent holds.  The
   * overlay has no such state, so the block gets a fresh payload block in
   * our file (a hole: zeros) with every sector ours, and is marked dirty:
   * the next flush records it FULLY_PRESENT.  Until then the file still
   * says ZERO; both read zeros. */
  if (st == BLK_ZERO && (r = ov->child->ops->alloc (ov->child, b,
                                                    &data_off)) < 0) {
    free (ob);
    return r;
  }
  ob->data_off = data_off;
  if (st == BLK_FULL || st == BLK_ZERO)
    memset (ld->bits, 0xFF, nbytes);
  else if ((r = ld->l->ops->bitmap (ld->l, b, data_off, ld->bits)) < 0) {
    free (ob);
    return r;
  }
  for (size_t i = 0; i < nbytes; i++)
    ob->bits[i / 8] |= (uint64_t) ld->bits[i] << (8 * (i % 8));
  ov->blocks[b] = ob;
  return st == BLK_ZERO ? mark_dirty (ov, b, ob) : 0;
}

static int
create_child (int fd, const char *path, struct chain *c,
              const struct overlay_opts *o, struct child **out)
{
  struct layer *tip = c->layers[0];
  char *real = realpath (tip->path, NULL);
  struct parent_ref p = { tip, real, o->drives, o->nr_drives };
  int r;

  if (!real)
    return vc_error (errno, "%s: %m", tip->path);
  if (tip->format == FMT_VHDX)
    r = vhdx_child_create (fd, path, &p, out);
  else
    r = vhd_child_create (fd, path, &p, out);
  free (real);
  return r;
}

/* One writer per layer file: two servers continuing one layer would
 * allocate over each other and rewrite each other's BAT sectors. */
static int
lock_layer (int fd, const char *path)
{
  if (flock (fd, LOCK_EX | LOCK_NB) == 0)
    return 0;
  return vc_error (errno == EWOULDBLOCK ? EBUSY : errno, "%s: in use by "
                   "another writer (locked); refusing to write it", path);
}

static void
sync_dir (const char *path)
{
  char *copy = strdup (path);
  int dfd = copy ? open (dirname (copy), O_RDONLY | O_DIRECTORY) : -1;

  if (dfd >= 0) {
    fsync (dfd);
    close (dfd);
  }
  free (copy);
}

/* An existing overlay= file must be a child of the tip: never overwrite.
 * It is checked through a read-only descriptor and reopened for writing
 * only once it has proved to be ours. */
static int
check_child (struct chain *c, const char *path, struct layer **out)
{
  struct layer *tip = c->layers[0], *l;
  char want[40], have[40];
  int r = chain_open_file (path, NULL, &l);

  if (r < 0)
    return r;
  if (!l->differencing || l->format != tip->format || l->size != tip->size ||
      memcmp (l->parent_id, tip->id, 16) != 0) {
    for (int i = 0; i < 16; i++) {
      sprintf (want + 2 * i, "%02x", tip->id[i]);
      sprintf (have + 2 * i, "%02x", l->parent_id[i]);
    }
    layer_close (l);
    return vc_error (EEXIST, "%s: exists and is not a differencing child of "
                     "%s (its parent identity is %s, the tip's %s); refusing "
                     "to overwrite it", path, tip->path, have, want);
  }
  *out = l;
  return 0;
}

static int
attach_child (struct overlay *ov, struct chain *c, const char *path)
{
  struct layer *l = NULL;
  struct loader ld = { ov, NULL, NULL };
  int fd = -1, r = check_child (c, path, &l);

  if (r < 0)
    return r;
  ld.l = l;
  if ((fd = open (path, O_RDWR | O_CLOEXEC)) == -1)
    r = vc_error (errno, "%s: opening for writing: %m", path);
  else if ((r = lock_layer (fd, path)) < 0)
    ;
  else if ((r = (l->format == FMT_VHDX ? vhdx_child_attach
                 : vhd_child_attach) (fd, l, &ov->child)) == 0) {
    fd = -1;                    /* the child owns it now */
    r = init_state (ov, ov->child);
    if (r == 0 && !(ld.bits = malloc (l->block_size / l->sector / 8)))
      r = -ENOMEM;
    if (r == 0)
      r = l->ops->walk (l, load_block, &ld);
    if (r == -ENOMEM)
      vc_error (ENOMEM, "%s: out of memory", path);
  }
  if (fd >= 0)
    close (fd);
  free (ld.bits);
  layer_close (l);
  return r;
}

/* A new file, always made under a temporary name: a kept layer in PATH's
 * folder, linked to PATH only once it is complete (so a crash meanwhile
 * leaves no half-made layer at PATH, and a file that appeared at PATH is
 * never replaced); a temporary one in $TMPDIR, unlinked once made, so that
 * not even a crash leaves it behind. */
static int
new_file (const struct overlay_opts *o, char **tmp)
{
  char *copy = o->path ? strdup (o->path) : NULL;
  const char *dir = o->path ? (copy ? dirname (copy) : NULL)
                  : o->tmpdir ? o->tmpdir : getenv ("TMPDIR");
  int fd = -1;

  if (o->path && !copy)
    return vc_error (ENOMEM, "out of memory");
  if (asprintf (tmp, "%s/%svhdchain-XXXXXX.avhd", dir ? dir : "/var/tmp",
                o->path ? "." : "") < 0)
    *tmp = NULL;
  free (copy);
  if (!*tmp)
    return vc_error (ENOMEM, "out of memory");
  if ((fd = mkostemps (*tmp, 5, O_CLOEXEC)) == -1)
    return vc_error (errno, "%s: creating the %s layer: %m", *tmp,
                     o->path ? "new" : "temporary");
  return fd;
}

/* Move the finished layer to its name, never over an existing file. */
static int
place (const char *tmp, const char *path)
{
  if (renameat2 (AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
  return link (tmp, path);      /* file systems without RENAME_NOREPLACE */
}

static int
create_new (struct overlay *ov, struct chain *c, const struct overlay_opts *o)
{
  char *tmp = NULL;
  int fd = new_file (o, &tmp), r;

  if (fd < 0) {
    free (tmp);
    return fd;
  }
  r = lock_layer (fd, tmp);
  if (r == 0)
    r = create_child (fd, o->path ? o->path : tmp, c, o, &ov->child);
  if (r == 0 && o->path && place (tmp, o->path) == -1)
    r = vc_error (errno, "%s: %m", o->path);
  unlink (tmp);
  ov->path = o->path ? strdup (o->path) : tmp;
  if (o->path)
    free (tmp);
  if (r < 0) {
    if (!ov->child)
      close (fd);
    return r;
  }
  if (o->path)
    sync_dir (ov->path);
  return init_state (ov, ov->child);
}

int
overlay_open (struct chain *c, struct map *below,
              const struct overlay_opts *o, struct overlay **out)
{
  struct overlay *ov = calloc (1, sizeof *ov);
  int r;

  if (!ov)
    return vc_error (ENOMEM, "out of memory");
  ov->below = below;
  if (o->path && access (o->path, F_OK) == 0) {
    ov->path = strdup (o->path);
    r = attach_child (ov, c, o->path);
  }
  else
    r = create_new (ov, c, o);
  if (r < 0) {
    if (r == -ENOMEM)
      vc_error (ENOMEM, "out of memory");
    overlay_close (ov);
    return r;
  }
  *out = ov;
  return 0;
}

void
overlay_close (struct overlay *ov)
{
  if (!ov)
    return;
  for (uint64_t b = 0; ov->blocks && b < ov->nr_blocks; b++)
    free (get (ov, b));
  free (ov->blocks);
  free (ov->dirty);
  if (ov->child) {
    close (ov->child->fd);
    ov->child->ops->close (ov->child);
    free (ov->child);
  }
  free (ov->path);
  free (ov);
}
