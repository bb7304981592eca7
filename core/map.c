/* vhdchain core: the resolved map (DESIGN.md "A read", step 2).
 *
 * The virtual disk is cut into granules of the smallest block size in the
 * chain.  Each granule has one 64-bit entry:
 *
 *   HOLE   no layer has it (reads zeros)
 *   ZERO   the top-most layer that has it says zero
 *   DATA   one layer owns it whole: layer index (8 bits) + file offset
 *   MIXED  index of a descriptor: a partial block of one layer over the
 *          entry that was there before (which may itself be MIXED)
 *
 * map_build() walks the layers from the base up, each overwriting what its
 * blocks cover, so after open a lookup is one array access whatever the
 * depth.  A MIXED granule is resolved on first use into a run list (read
 * the bitmaps once, merge with the runs below) and cached; the run list is
 * published with a compare-and-swap, so readers never lock.
 *
 * A layer's bytes are visible only below the smallest virtual size among
 * it and the layers above it (FORMATS.md: a child may be larger than its
 * parent); vis[] holds that limit per layer and reads clip against it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "map.h"

enum { K_HOLE, K_ZERO, K_DATA, K_MIXED };

#define KIND(e)       ((unsigned) ((e) >> 62))
#define LAYER(e)      ((unsigned) (((e) >> 54) & 0xFF))
#define OFFSET(e)     ((e) & ((UINT64_C (1) << 54) - 1))
#define MAX_OFFSET    (UINT64_C (1) << 54)
#define MK_DATA(l, o) ((UINT64_C (2) << 62) | ((uint64_t) (l) << 54) | (o))
#define MK_MIXED(i)   ((UINT64_C (3) << 62) | (i))
#define ZERO_ENT      (UINT64_C (1) << 62)
#define HOLE_ENT      UINT64_C (0)
#define MAX_GRANULES  (UINT64_C (1) << 27)  /* 1 GiB of entries */
#define SEG_BATCH     64

struct run { uint64_t ent; uint32_t start, len; };
struct runs { uint32_t n; struct run r[]; };

struct mixed {
  uint64_t own;                 /* MK_DATA of this granule in its layer */
  uint64_t below;
  struct runs *_Atomic runs;    /* resolved lazily */
};

struct map {
  struct chain *c;
  uint64_t size;
  unsigned gshift;
  uint64_t nr;                  /* granules */
  uint64_t *ent;
  struct mixed *mixed;
  uint64_t nr_mixed, cap_mixed;
  uint64_t vis[CHAIN_MAX_DEPTH];
  int fd[CHAIN_MAX_DEPTH];     /* the layers', or O_DIRECT twins */
  bool direct;
  uint64_t bytes[CHAIN_MAX_DEPTH];
};

uint64_t map_size (const struct map *m) { return m->size; }
uint32_t map_granule (const struct map *m) { return UINT32_C (1) << m->gshift; }
uint64_t map_layer_bytes (const struct map *m, int i) { return m->bytes[i]; }

/* --- building -------------------------------------------------------- */

struct build { struct map *m; unsigned li; struct layer *l; };

static int
push_mixed (struct map *m, uint64_t own, uint64_t below, uint64_t *ent)
{
  if (m->nr_mixed == m->cap_mixed) {
    uint64_t cap = m->cap_mixed ? 2 * m->cap_mixed : 1024;
    struct mixed *n = realloc (m->mixed, cap * sizeof *n);
    if (!n)
      return -ENOMEM;
    m->mixed = n;
    m->cap_mixed = cap;
  }
  m->mixed[m->nr_mixed] = (struct mixed) { own, below, NULL };
  *ent = MK_MIXED (m->nr_mixed);
  m->nr_mixed++;
  return 0;
}

static int
on_block (void *opaque, uint64_t b, enum block_state st, uint64_t data_off)
{
  struct build *bd = opaque;
  struct map *m = bd->m;
  uint64_t per = bd->l->block_size >> m->gshift, g = b * per;

  if (b >= bd->l->nr_blocks ||
      data_off > MAX_OFFSET - bd->l->block_size)
    return vc_error (EINVAL, "%s: block %" PRIu64 " at %" PRIu64
                     " is out of range", bd->l->path, b, data_off);
  for (uint64_t k = 0; k < per && g + k < m->nr; k++) {
    uint64_t *e = &m->ent[g + k], off = data_off + (k << m->gshift);

    if ((g + k) << m->gshift >= bd->l->size)
      break;
    if (st == BLK_ZERO)
      *e = ZERO_ENT;
    else if (st == BLK_FULL)
      *e = MK_DATA (bd->li, off);
    else if (push_mixed (m, MK_DATA (bd->li, off), *e, e) < 0)
      return vc_error (ENOMEM, "%s: out of memory for the map", bd->l->path);
    if (st != BLK_ZERO)
      m->bytes[bd->li] += UINT64_C (1) << m->gshift;
  }
  return 0;
}

static int
map_alloc (struct chain *c, struct map *m)
{
  uint32_t gran = UINT32_MAX;

  m->c = c;
  m->size = c->layers[0]->size;
  for (size_t i = 0; i < c->depth; i++) {
    struct layer *l = c->layers[i];
    if (l->block_size < gran)
      gran = l->block_size;
    m->vis[i] = i == 0 || l->size < m->vis[i - 1] ? l->size : m->vis[i - 1];
    m->fd[i] = l->fd;
  }
  m->gshift = __builtin_ctz (gran);
  m->nr = (m->size + gran - 1) >> m->gshift;
  if (m->nr > MAX_GRANULES)
    return vc_error (EFBIG, "%s: the chain needs %" PRIu64 " map entries "
                     "(virtual size %" PRIu64 ", block size %" PRIu32 "); "
                     "the limit is %" PRIu64, c->layers[0]->path, m->nr,
                     m->size, gran, MAX_GRANULES);
  /* calloc: untouched pages of HOLE entries cost no memory. */
  m->ent = calloc (m->nr ? m->nr : 1, sizeof *m->ent);
  if (!m->ent)
    return vc_error (ENOMEM, "%s: out of memory for the map",
                     c->layers[0]->path);
  return 0;
}

int
map_build (struct chain *c, struct map **out)
{
  struct map *m = calloc (1, sizeof *m);
  int r;

  if (!m)
    return vc_error (ENOMEM, "out of memory");
  r = map_alloc (c, m);
  for (size_t i = c->depth; r == 0 && i-- > 0; ) {
    struct build bd = { m, i, c->layers[i] };
    r = c->layers[i]->ops->walk (c->layers[i], on_block, &bd);
  }
  if (r < 0) {
    map_free (m);
    return r;
  }
  *out = m;
  return 0;
}

/* Read the chain with O_DIRECT from now on: each layer's file is opened
 * again (through /proc/self/fd, so exactly the same file) with O_DIRECT. */
int
map_use_direct (struct map *m)
{
  for (size_t i = 0; i < m->c->depth; i++) {
    char path[64];
    int fd;

    snprintf (path, sizeof path, "/proc/self/fd/%d", m->c->layers[i]->fd);
    fd = open (path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd == -1)
      return vc_error (errno, "%s: direct=true: cannot open with O_DIRECT "
                       "(%m); the file system may not support it",
                       m->c->layers[i]->path);
    m->fd[i] = fd;
    m->direct = true;
  }
  return 0;
}

void
map_free (struct map *m)
{
  if (!m)
    return;
  for (size_t i = 0; m->direct && i < m->c->depth; i++)
    if (m->fd[i] != m->c->layers[i]->fd)
      close (m->fd[i]);
  for (uint64_t i = 0; i < m->nr_mixed; i++)
    free (atomic_load (&m->mixed[i].runs));
  free (m->mixed);
  free (m->ent);
  free (m);
}

/* --- resolving MIXED granules ---------------------------------------- */

/* Append [start, start + len) of entry e, merging with the previous run
 * when it continues it (same kind; for DATA, the next bytes of the file). */
static void
append_run (struct runs *rs, uint64_t e, uint32_t start, uint32_t len)
{
  if (rs->n) {
    struct run *p = &rs->r[rs->n - 1];
    bool cont = KIND (e) == K_DATA
      ? KIND (p->ent) == K_DATA && p->ent + p->len == e
      : p->ent == e;
    if (cont && p->start + p->len == start) {
      p->len += len;
      return;
    }
  }
  rs->r[rs->n++] = (struct run) { e, start, len };
}

/* The piece [a, b) of the runs below, appended to rs. */
static void
append_below (struct runs *rs, const struct runs *below, uint32_t a,
              uint32_t b)
{
  for (uint32_t i = 0; i < below->n; i++) {
    const struct run *r = &below->r[i];
    uint32_t s = r->start > a ? r->start : a;
    uint32_t e = r->start + r->len < b ? r->start + r->len : b;
    if (s < e)
      append_run (rs, KIND (r->ent) == K_DATA ? r->ent + (s - r->start)
                  : r->ent, s, e - s);
  }
}

/* Room for the run list of a granule that is not MIXED. */
union one_run {
  struct runs rs;
  char room[sizeof (struct runs) + sizeof (struct run)];
};

static const struct runs *resolve (struct map *, uint64_t e, uint64_t g,
                                   union one_run *one, int *err);

/* Bits of the granule's sectors: runs of this layer where set, the runs
 * below where clear. */
static void
overlay_bits (struct runs *rs, const uint8_t *bits, uint32_t s0, uint32_t ns,
              uint32_t sec, uint64_t own, const struct runs *below)
{
  for (uint32_t i = 0, j; i < ns; i = j) {
    bool set = bits[(s0 + i) >> 3] >> ((s0 + i) & 7) & 1;
    for (j = i + 1; j < ns &&
           (bool) (bits[(s0 + j) >> 3] >> ((s0 + j) & 7) & 1) == set; j++)
      ;
    if (set)
      append_run (rs, own + (uint64_t) i * sec, i * sec, (j - i) * sec);
    else
      append_below (rs, below, i * sec, j * sec);
  }
}

static struct runs *
compose (struct map *m, const struct mixed *mx, uint64_t g, int *err)
{
  struct layer *l = m->c->layers[LAYER (mx->own)];
  uint64_t goff = (g << m->gshift) % l->block_size;
  uint32_t sec = l->sector, ns = (UINT32_C (1) << m->gshift) / sec;
  const struct runs *below;
  struct runs *rs = NULL, *shrunk;
  union one_run one;
  uint8_t *bits;

  if (!(bits = malloc (l->block_size / sec / 8))) {
    *err = -ENOMEM;
    return NULL;
  }
  below = resolve (m, mx->below, g, &one, err);
  if (below &&
      (*err = l->ops->bitmap (l, (g << m->gshift) / l->block_size,
                              OFFSET (mx->own) - goff, bits)) == 0) {
    rs = malloc (sizeof *rs + (size_t) (ns + below->n) * sizeof rs->r[0]);
    if (rs) {
      rs->n = 0;
      overlay_bits (rs, bits, goff / sec, ns, sec, mx->own, below);
      shrunk = realloc (rs, sizeof *rs + rs->n * sizeof rs->r[0]);
      rs = shrunk ? shrunk : rs;
    }
    else
      *err = -ENOMEM;
  }
  free (bits);
  return rs;
}

/* The run list of entry e at granule g: cached for MIXED, else one run. */
static const struct runs *
resolve (struct map *m, uint64_t e, uint64_t g, union one_run *one, int *err)
{
  struct mixed *mx;
  struct runs *rs, *expected = NULL;

  if (KIND (e) != K_MIXED) {
    one->rs.n = 1;
    one->rs.r[0] = (struct run) { e, 0, UINT32_C (1) << m->gshift };
    return &one->rs;
  }
  mx = &m->mixed[e & ~(UINT64_C (3) << 62)];
  if ((rs = atomic_load_explicit (&mx->runs, memory_order_acquire)))
    return rs;
  if (!(rs = compose (m, mx, g, err)))
    return NULL;
  if (!atomic_compare_exchange_strong_explicit (&mx->runs, &expected, rs,
                                                memory_order_acq_rel,
                                                memory_order_acquire)) {
    free (rs);                  /* another thread got there first */
    rs = expected;
  }
  return rs;
}

/* --- reading --------------------------------------------------------- */

struct reader {
  struct map *m;
  char *buf;
  struct io_seg seg[SEG_BATCH];
  size_t n;
  int err;
};

static void
flush_segs (struct reader *rd)
{
  if (rd->n && rd->err == 0)
    rd->err = io_read (rd->seg, rd->n);
  rd->n = 0;
}

/* Bytes [v, v + len) of the disk come from entry e (already advanced to
 * v) into dst. */
static void
emit (struct reader *rd, uint64_t e, uint64_t v, uint64_t len, char *dst)
{
  uint64_t data = 0;
  struct io_seg *last;

  if (KIND (e) == K_DATA) {
    uint64_t vis = rd->m->vis[LAYER (e)];
    data = v >= vis ? 0 : vis - v < len ? vis - v : len;
  }
  if (data < len)
    memset (dst + data, 0, len - data);
  if (data == 0)
    return;
  last = rd->n ? &rd->seg[rd->n - 1] : NULL;
  if (last && last->fd == rd->m->fd[LAYER (e)] &&
      last->off + last->len == OFFSET (e) &&
      (char *) last->buf + last->len == dst) {
    last->len += data;
    return;
  }
  if (rd->n == SEG_BATCH)
    flush_segs (rd);
  rd->seg[rd->n++] = (struct io_seg) { rd->m->fd[LAYER (e)], OFFSET (e),
                                       data, dst, rd->m->direct };
}

/* Visit the runs covering [offset, offset + count), in order. */
typedef void (*run_fn) (void *opaque, uint64_t e, uint64_t v, uint64_t len,
                        uint64_t done);

static int
for_each_run (struct map *m, uint64_t offset, uint64_t count, run_fn fn,
              void *opaque)
{
  uint64_t gmask = (UINT64_C (1) << m->gshift) - 1, done = 0;
  int err = 0;

  while (done < count) {
    uint64_t v = offset + done, g = v >> m->gshift;
    uint32_t in = v & gmask;
    uint64_t n = count - done < gmask + 1 - in ? count - done
                 : gmask + 1 - in;
    union one_run one;
    const struct runs *rs = resolve (m, m->ent[g], g, &one, &err);

    if (!rs)
      return err;
    uint32_t lo = 0, hi = rs->n;
    while (lo + 1 < hi) {       /* the last run starting at or before in */
      uint32_t mid = (lo + hi) / 2;
      if (rs->r[mid].start <= in) lo = mid; else hi = mid;
    }
    for (uint32_t i = lo; i < rs->n && n; i++) {
      const struct run *r = &rs->r[i];
      uint64_t skip = in - r->start, len = r->len - skip < n ? r->len - skip
                                                            : n;
      fn (opaque, KIND (r->ent) == K_DATA ? r->ent + skip : r->ent, v, len,
          done);
      v += len;
      in += len;
      n -= len;
      done += len;
    }
  }
  return 0;
}

static void
read_run (void *opaque, uint64_t e, uint64_t v, uint64_t len, uint64_t done)
{
  struct reader *rd = opaque;

  emit (rd, e, v, len, rd->buf + done);
}

int
map_read (struct map *m, void *buf, uint64_t count, uint64_t offset)
{
  struct reader rd = { .m = m, .buf = buf };
  int err;

  if (offset > m->size || count > m->size - offset)
    return -EINVAL;
  err = for_each_run (m, offset, count, read_run, &rd);
  flush_segs (&rd);
  return err ? err : rd.err;
}

/* --- extents --------------------------------------------------------- */

struct extenter {
  struct map *m;
  map_extent_fn fn;
  void *opaque;
  uint64_t start, len;          /* the extent being grown */
  enum extent_type type;
  int layer, stop;
};

static void
extent_piece (struct extenter *x, uint64_t v, uint64_t len,
              enum extent_type type, int layer)
{
  if (x->len && x->type == type && x->layer == layer &&
      x->start + x->len == v) {
    x->len += len;
    return;
  }
  if (x->len && !x->stop)
    x->stop = x->fn (x->opaque, x->start, x->len, x->type, x->layer);
  *x = (struct extenter) { x->m, x->fn, x->opaque, v, len, type, layer,
                           x->stop };
}

static void
extent_run (void *opaque, uint64_t e, uint64_t v, uint64_t len, uint64_t done)
{
  struct extenter *x = opaque;
  uint64_t vis, data;

  if (KIND (e) == K_ZERO)
    extent_piece (x, v, len, EXT_ZERO, -1);
  else if (KIND (e) != K_DATA)
    extent_piece (x, v, len, EXT_HOLE, -1);
  else {
    vis = x->m->vis[LAYER (e)];
    data = v >= vis ? 0 : vis - v < len ? vis - v : len;
    if (data)
      extent_piece (x, v, data, EXT_DATA, LAYER (e));
    if (data < len)
      extent_piece (x, v + data, len - data, EXT_HOLE, -1);
  }
}

int
map_extents (struct map *m, uint64_t offset, uint64_t count,
             map_extent_fn fn, void *opaque)
{
  struct extenter x = { .m = m, .fn = fn, .opaque = opaque };
  int err;

  if (offset > m->size || count > m->size - offset)
    return -EINVAL;
  err = for_each_run (m, offset, count, extent_run, &x);
  if (err)
    return err;
  if (x.len && !x.stop)
    x.stop = fn (opaque, x.start, x.len, x.type, x.layer);
  return x.stop;
}
