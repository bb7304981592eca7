/* vhdchain core: VHD fixed, dynamic and differencing images (VHD spec v1.0,
 * FORMATS.md section 2).
 *
 * Open finds the footer (trailing 512 bytes, the pre-2004 511-byte form, or
 * the copy at offset 0 when the trailer is lost), checks it and, for sparse
 * images, the dynamic header, its parent locators and every BAT entry.  All
 * on-disk fields are big-endian and converted here, once; above this file a
 * VHD is just a layer.
 *
 * The BAT is not kept after open: walk() streams it in pieces, so an open
 * image costs a few hundred bytes whatever its size.  Sector bitmaps are
 * MSB-first on disk and are reversed to the layer's LSB-first order in
 * bitmap().  A dynamic image's bitmap is ignored (its unwritten sectors hold
 * zeros), as QEMU and Windows do; a differencing image's bitmap decides, per
 * sector, between this file and the parent.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uuid/uuid.h>

#include "byteorder.h"
#include "error.h"
#include "layer.h"
#include "utf16.h"
#include "vhd.h"

#define FOOTER_SIZE     VHD_FOOTER_SIZE
#define HEADER_SIZE     VHD_HEADER_SIZE
#define VHD_MAX_SIZE    (UINT64_C (2040) << 30)  /* VHD spec: 2040 GiB */
#define LOCATOR_MAX     65536                    /* bound on one payload */
#define BAT_UNUSED      UINT32_C (0xFFFFFFFF)
#define BAT_CHUNK       16384                    /* entries read at a time */

enum { TYPE_FIXED = 2, TYPE_DYNAMIC = 3, TYPE_DIFF = 4 };

struct vhd {
  uint64_t bat_off;
  uint32_t bat_entries;         /* entries that matter: nr_blocks */
  uint32_t bitmap_size;         /* bytes before each block's data */
  uint64_t data_end;            /* trailing footer offset, or EOF */
  uint32_t chs;
  uint64_t chs_size;
};

/* A byte range some structure occupies, for the overlap checks. */
struct extent { uint64_t start, end; const char *what; };

uint32_t
vhd_checksum (const uint8_t *p, size_t len, size_t csum_off)
{
  uint32_t sum = 0;
  size_t i;

  for (i = 0; i < len; i++)
    if (i < csum_off || i >= csum_off + 4)
      sum += p[i];
  return ~sum;
}

static bool
footer_checksum_ok (const uint8_t *f)
{
  return vhd_checksum (f, FOOTER_SIZE, 64) == get_be32 (f + 64);
}

/* A footer copy at offset 0 is usable only if it is a valid sparse footer. */
static bool
footer_copy_usable (const uint8_t *f)
{
  uint32_t type = get_be32 (f + 60);

  return memcmp (f, "conectix", 8) == 0 && footer_checksum_ok (f) &&
         (type == TYPE_DYNAMIC || type == TYPE_DIFF);
}

/* FORMATS.md 2.1: which footer to believe.  Returns 0 if this is not a VHD. */
static int
find_footer (struct layer *l, const struct layer_opts *opts, uint8_t *f,
             uint64_t *data_end)
{
  uint8_t head[FOOTER_SIZE], tail[FOOTER_SIZE];
  uint64_t size = l->file_size;
  int r;

  if (size < FOOTER_SIZE - 1)
    return 0;
  if (size >= FOOTER_SIZE &&
      (r = layer_pread (l, head, FOOTER_SIZE, 0, "footer copy")) < 0)
    return r;
  if (size < FOOTER_SIZE)
    memset (head, 0, sizeof head);

  memset (tail, 0, sizeof tail);
  if (size >= FOOTER_SIZE &&
      (r = layer_pread (l, tail, FOOTER_SIZE, size - FOOTER_SIZE,
                        "footer")) < 0)
    return r;
  if (size >= FOOTER_SIZE && memcmp (tail, "conectix", 8) == 0) {
    *data_end = size - FOOTER_SIZE;
    if (!footer_checksum_ok (tail) && footer_copy_usable (head)) {
      vc_debug ("%s: footer checksum is wrong; using the copy at offset 0",
                l->path);
      memcpy (f, head, FOOTER_SIZE);
      return 1;
    }
    memcpy (f, tail, FOOTER_SIZE);
    return 1;
  }

  /* Pre-Virtual PC 2004 images end in a 511-byte footer. */
  if (size % FOOTER_SIZE == FOOTER_SIZE - 1) {
    memset (tail, 0, sizeof tail);
    if ((r = layer_pread (l, tail, FOOTER_SIZE - 1, size - (FOOTER_SIZE - 1),
                          "footer")) < 0)
      return r;
    if (memcmp (tail, "conectix", 8) == 0) {
      *data_end = size - (FOOTER_SIZE - 1);
      memcpy (f, tail, FOOTER_SIZE);
      return 1;
    }
  }

  /* The trailing footer is lost (crash, truncation): the copy at 0 serves. */
  if (memcmp (head, "conectix", 8) == 0 &&
      (footer_copy_usable (head) || opts->ignore_checksums)) {
    vc_debug ("%s: no footer at the end of the file; using the copy at "
              "offset 0", l->path);
    *data_end = size;
    memcpy (f, head, FOOTER_SIZE);
    return 1;
  }
  return 0;
}

static uint64_t
chs_size (const uint8_t *f)
{
  return (uint64_t) get_be16 (f + 56) * f[58] * f[59] * 512;
}

static int
parse_footer (struct layer *l, const struct layer_opts *opts,
              const uint8_t *f, struct vhd *v)
{
  uint32_t type = get_be32 (f + 60);
  uint32_t version = get_be32 (f + 12);

  if (!footer_checksum_ok (f) && !opts->ignore_checksums)
    return vc_error (EINVAL, "%s: footer: checksum mismatch (stored 0x%08"
                     PRIx32 ", computed 0x%08" PRIx32 "; "
                     "ignore-checksums=true accepts it)", l->path,
                     get_be32 (f + 64), vhd_checksum (f, FOOTER_SIZE, 64));
  if (version >> 16 != 1)
    return vc_error (EINVAL, "%s: footer: unsupported version 0x%08" PRIx32,
                     l->path, version);
  if (type != TYPE_FIXED && type != TYPE_DYNAMIC && type != TYPE_DIFF)
    return vc_error (EINVAL, "%s: footer: disk type %" PRIu32 " is not "
                     "fixed (2), dynamic (3) or differencing (4)",
                     l->path, type);

  l->size = get_be64 (f + 48);
  if (l->size == 0 || l->size % 512 || l->size > VHD_MAX_SIZE)
    return vc_error (EINVAL, "%s: footer: current size %" PRIu64 " is not "
                     "a non-zero multiple of 512 up to 2040 GiB",
                     l->path, l->size);
  l->type = type == TYPE_FIXED ? "fixed" :
            type == TYPE_DYNAMIC ? "dynamic" : "differencing";
  l->differencing = type == TYPE_DIFF;
  memcpy (l->id, f + 68, 16);
  memcpy (l->creator, f + 28, 4);
  snprintf (l->creator + 4, sizeof l->creator - 4, " %" PRIu32 ".%" PRIu32,
            get_be32 (f + 32) >> 16, get_be32 (f + 32) & 0xFFFF);
  for (int i = 0; i < 4; i++)   /* creator codes may hold NULs: make text */
    if (l->creator[i] < 0x20 || l->creator[i] > 0x7E)
      l->creator[i] = ' ';
  v->chs = get_be32 (f + 56);
  v->chs_size = chs_size (f);
  return 0;
}

/* True if the first NUL code unit in p (if any) is followed only by NULs:
 * padding is normal, a NUL inside a path would cut it short silently. */
static bool
nul_padded_only (const uint8_t *p, uint32_t len, unsigned unit)
{
  uint32_t i;
  bool nul = false;

  for (i = 0; i + unit <= len; i += unit) {
    bool z = p[i] == 0 && (unit == 1 || p[i + 1] == 0);
    if (nul && !z)
      return false;
    nul |= z;
  }
  return true;
}

/* Locator payload decoding by platform code (FORMATS.md 2.3, pitfall 7). */
static int
decode_locator (struct layer *l, int slot, uint32_t code, const uint8_t *p,
                uint32_t len)
{
  enum hint_kind kind;
  bool utf16 = false;
  char *s;
  int r;

  switch (code) {
  case 0x57327275: kind = HINT_RELATIVE; utf16 = true; break; /* W2ru */
  case 0x57326B75: kind = HINT_ABSOLUTE; utf16 = true; break; /* W2ku */
  case 0x57693272: kind = HINT_RELATIVE; break;               /* Wi2r */
  case 0x5769326B: kind = HINT_ABSOLUTE; break;               /* Wi2k */
  case 0x4D616358: kind = HINT_URL; break;                    /* MacX */
  default: return 0;            /* Mac alias blobs and unknown codes */
  }

  if (!nul_padded_only (p, len, utf16 ? 2 : 1))
    return vc_error (EINVAL, "%s: parent locator %d: NUL inside the path",
                     l->path, slot);
  if (utf16) {
    r = utf16_to_utf8 (p, len, false, &s);
    if (r < 0)
      return vc_error (EINVAL, "%s: parent locator %d: %s",
                       l->path, slot, len & 1 ? "odd UTF-16 length"
                       : "invalid UTF-16 (unpaired surrogate)");
  }
  else if (!(s = strndup ((const char *) p, len)))
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  if (s[0] == '\0') {
    free (s);
    return vc_error (EINVAL, "%s: parent locator %d: empty path",
                     l->path, slot);
  }
  return layer_add_hint (l, kind, s);
}

static int
parse_locators (struct layer *l, const uint8_t *h, struct extent *ext,
                size_t *next)
{
  for (int i = 0; i < 8; i++) {
    const uint8_t *e = h + 576 + 24 * i;
    uint32_t code = get_be32 (e), len = get_be32 (e + 8);
    uint64_t off = get_be64 (e + 16);
    uint8_t *buf;
    int r;

    if (code == 0)
      continue;
    if (len == 0 || len > LOCATOR_MAX)
      return vc_error (EINVAL, "%s: parent locator %d: data length %" PRIu32
                       " is outside 1..%d", l->path, i, len, LOCATOR_MAX);
    if (off % 512 || off > l->file_size || len > l->file_size - off)
      return vc_error (EINVAL, "%s: parent locator %d: data offset %" PRIu64
                       " (length %" PRIu32 ") is unaligned or past the end "
                       "of the file", l->path, i, off, len);
    if (!(buf = malloc (len)))
      return vc_error (ENOMEM, "%s: out of memory", l->path);
    r = layer_pread (l, buf, len, off, "parent locator");
    if (r == 0)
      r = decode_locator (l, i, code, buf, len);
    free (buf);
    if (r < 0)
      return r;
    ext[(*next)++] = (struct extent) { off, off + len, "parent locator" };
  }
  return 0;
}

static int
parse_parent (struct layer *l, const uint8_t *h)
{
  char *name;

  memcpy (l->parent_id, h + 40, 16);
  if (utf16_to_utf8 (h + 64, 512, true, &name) < 0)
    return vc_error (EINVAL, "%s: dynamic header: parent name is not valid "
                     "UTF-16BE", l->path);
  if (name[0] == '\0') {
    free (name);
    return 0;
  }
  return layer_add_hint (l, HINT_NAME, name);
}

static bool
is_pow2 (uint64_t x)
{
  return x && !(x & (x - 1));
}

static int
parse_header (struct layer *l, const struct layer_opts *opts,
              const uint8_t *h, uint64_t hoff, struct vhd *v)
{
  uint64_t entries_needed;
  uint32_t entries = get_be32 (h + 28);

  if (memcmp (h, "cxsparse", 8) != 0)
    return vc_error (EINVAL, "%s: dynamic header at %" PRIu64 ": bad cookie "
                     "(expected 'cxsparse')", l->path, hoff);
  if (vhd_checksum (h, HEADER_SIZE, 36) != get_be32 (h + 36) &&
      !opts->ignore_checksums)
    return vc_error (EINVAL, "%s: dynamic header: checksum mismatch (stored "
                     "0x%08" PRIx32 ", computed 0x%08" PRIx32 "; "
                     "ignore-checksums=true accepts it)", l->path,
                     get_be32 (h + 36), vhd_checksum (h, HEADER_SIZE, 36));
  if (get_be32 (h + 24) >> 16 != 1)
    return vc_error (EINVAL, "%s: dynamic header: unsupported version 0x%08"
                     PRIx32, l->path, get_be32 (h + 24));

  l->block_size = get_be32 (h + 32);
  if (!is_pow2 (l->block_size) || l->block_size < 4096 ||
      l->block_size > (UINT32_C (256) << 20))
    return vc_error (EINVAL, "%s: dynamic header: block size %" PRIu32
                     " is not a power of two from 4 KiB to 256 MiB",
                     l->path, l->block_size);
  l->nr_blocks = (l->size + l->block_size - 1) / l->block_size;
  entries_needed = l->nr_blocks;
  if (entries < entries_needed)
    return vc_error (EINVAL, "%s: dynamic header: max table entries %" PRIu32
                     " cannot cover the size (%" PRIu64 " blocks needed)",
                     l->path, entries, entries_needed);

  v->bat_off = get_be64 (h + 16);
  v->bat_entries = entries_needed;
  v->bitmap_size = ((l->block_size / 512 / 8) + 511) & ~UINT32_C (511);
  if (v->bat_off % 512 || v->bat_off > v->data_end ||
      (uint64_t) entries_needed * 4 > v->data_end - v->bat_off)
    return vc_error (EINVAL, "%s: dynamic header: BAT offset %" PRIu64
                     " (%" PRIu32 " entries) is unaligned or past the end "
                     "of the file", l->path, v->bat_off, v->bat_entries);
  return 0;
}

/* Stream the BAT, calling fn for every allocated block below nr_blocks. */
typedef int (*bat_fn) (void *opaque, uint64_t block, uint64_t block_off);

static int
bat_scan (struct layer *l, bat_fn fn, void *opaque)
{
  struct vhd *v = l->priv;
  uint8_t *buf = malloc (BAT_CHUNK * 4);
  uint32_t b, i, n;
  int r = 0;

  if (!buf)
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  for (b = 0; b < v->bat_entries && r == 0; b += n) {
    n = v->bat_entries - b < BAT_CHUNK ? v->bat_entries - b : BAT_CHUNK;
    r = layer_pread (l, buf, n * 4, v->bat_off + (uint64_t) b * 4, "BAT");
    for (i = 0; i < n && r == 0; i++) {
      uint32_t sector = get_be32 (buf + 4 * i);
      if (sector != BAT_UNUSED)
        r = fn (opaque, b + i, (uint64_t) sector * 512);
    }
  }
  free (buf);
  return r;
}

struct check {
  struct layer *l;
  struct extent *ext;
  size_t n;
  uint64_t blocks, fit;         /* blocks seen; most the data can hold */
};

static int
check_block (void *opaque, uint64_t b, uint64_t off)
{
  struct check *c = opaque;
  struct vhd *v = c->l->priv;
  uint64_t len = v->bitmap_size + (uint64_t) c->l->block_size;

  if (off > v->data_end || len > v->data_end - off)
    return vc_error (EINVAL, "%s: BAT entry %" PRIu64 ": block at %" PRIu64
                     " runs past the end of the data (%" PRIu64 ")",
                     c->l->path, b, off, v->data_end);
  /* Blocks never share a byte, so more than fit in the data overlap:
   * say so now, before the list grows with a BAT that a sparse file
   * makes nearly free (2 GiB of zeros: 534 million blocks at 0). */
  if (++c->blocks > c->fit)
    return vc_error (EINVAL, "%s: BAT: %" PRIu64 " allocated blocks of %"
                     PRIu64 " bytes do not fit in the %" PRIu64 " bytes of "
                     "data: blocks overlap", c->l->path, c->blocks, len,
                     v->data_end);
  c->ext[c->n++] = (struct extent) { off, off + len, "block" };
  return 0;
}

static int
cmp_extent (const void *a, const void *b)
{
  const struct extent *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* No two structures may share a byte (FORMATS.md 2.4): an overlap is either
 * corruption or a crafted file making two blocks alias. */
static int
check_overlaps (struct layer *l, struct extent *ext, size_t n)
{
  size_t i;

  qsort (ext, n, sizeof *ext, cmp_extent);
  for (i = 1; i < n; i++)
    if (ext[i].start < ext[i - 1].end)
      return vc_error (EINVAL, "%s: BAT: %s at %" PRIu64 " overlaps %s at %"
                       PRIu64, l->path, ext[i].what, ext[i].start,
                       ext[i - 1].what, ext[i - 1].start);
  return 0;
}

static int
validate_bat (struct layer *l, uint64_t hoff, const struct extent *locs,
              size_t nlocs)
{
  struct vhd *v = l->priv;
  struct check c = { .l = l };
  int r;

  c.fit = v->data_end / (v->bitmap_size + (uint64_t) l->block_size);
  if (c.fit > v->bat_entries)
    c.fit = v->bat_entries;
  c.ext = malloc ((c.fit + nlocs + 3) * sizeof *c.ext);
  if (!c.ext)
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  c.ext[c.n++] = (struct extent) { 0, FOOTER_SIZE, "footer copy" };
  c.ext[c.n++] = (struct extent) { hoff, hoff + HEADER_SIZE, "dynamic header" };
  c.ext[c.n++] = (struct extent) { v->bat_off,
                                   v->bat_off + (uint64_t) v->bat_entries * 4,
                                   "BAT" };
  memcpy (c.ext + c.n, locs, nlocs * sizeof *locs);
  c.n += nlocs;
  r = bat_scan (l, check_block, &c);
  if (r == 0)
    r = check_overlaps (l, c.ext, c.n);
  free (c.ext);
  return r;
}

/* The layer operations. */

struct walk { struct layer *l; layer_walk_fn fn; void *opaque; };

static int
walk_block (void *opaque, uint64_t b, uint64_t off)
{
  struct walk *w = opaque;
  struct vhd *v = w->l->priv;

  return w->fn (w->opaque, b, w->l->differencing ? BLK_PARTIAL : BLK_FULL,
                off + v->bitmap_size);
}

static int
vhd_walk (struct layer *l, layer_walk_fn fn, void *opaque)
{
  struct walk w = { l, fn, opaque };
  uint64_t b;
  int r;

  if (((struct vhd *) l->priv)->bat_entries)
    return bat_scan (l, walk_block, &w);
  for (b = 0; b < l->nr_blocks; b++)      /* fixed: the file is the disk */
    if ((r = fn (opaque, b, BLK_FULL, b * l->block_size)) != 0)
      return r;
  return 0;
}

static int
vhd_bitmap (struct layer *l, uint64_t b, uint64_t data_off, uint8_t *bits)
{
  struct vhd *v = l->priv;
  size_t n = l->block_size / 512 / 8;
  int r;

  r = layer_pread (l, bits, n, data_off - v->bitmap_size, "sector bitmap");
  if (r == 0)
    vhd_bitmap_flip (bits, bits, n);
  return r;
}

static void
vhd_close (struct layer *l)
{
  free (l->priv);
}

static const struct layer_ops vhd_ops = {
  .walk = vhd_walk,
  .bitmap = vhd_bitmap,
  .close = vhd_close,
};

static int
open_fixed (struct layer *l, struct vhd *v)
{
  if (l->size > v->data_end)
    return vc_error (EINVAL, "%s: footer: current size %" PRIu64 " is larger "
                     "than the data before the footer (%" PRIu64 "): "
                     "truncated image", l->path, l->size, v->data_end);
  l->block_size = 2 << 20;
  l->nr_blocks = (l->size + l->block_size - 1) / l->block_size;
  return 0;
}

static int
open_sparse (struct layer *l, const struct layer_opts *opts, const uint8_t *f,
             struct vhd *v)
{
  uint64_t hoff = get_be64 (f + 16);
  struct extent locs[8];
  size_t nlocs = 0;
  uint8_t h[HEADER_SIZE];
  int r;

  if (hoff < FOOTER_SIZE || hoff % 512 || hoff > v->data_end ||
      HEADER_SIZE > v->data_end - hoff)
    return vc_error (EINVAL, "%s: footer: data offset %" PRIu64 " does not "
                     "point at a dynamic header inside the file",
                     l->path, hoff);
  if ((r = layer_pread (l, h, HEADER_SIZE, hoff, "dynamic header")) < 0 ||
      (r = parse_header (l, opts, h, hoff, v)) < 0)
    return r;
  if (l->differencing &&
      ((r = parse_parent (l, h)) < 0 ||
       (r = parse_locators (l, h, locs, &nlocs)) < 0))
    return r;
  return validate_bat (l, hoff, locs, nlocs);
}

int
vhd_open (struct layer *l, const struct layer_opts *opts)
{
  uint8_t f[FOOTER_SIZE];
  struct vhd *v;
  int r;

  if (!(v = calloc (1, sizeof *v)))
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  l->priv = v;
  l->ops = &vhd_ops;
  l->format = FMT_VHD;
  l->sector = 512;

  r = find_footer (l, opts, f, &v->data_end);
  if (r <= 0)
    goto fail;
  if ((r = parse_footer (l, opts, f, v)) < 0)
    goto fail;
  r = get_be32 (f + 60) == TYPE_FIXED ? open_fixed (l, v)
      : open_sparse (l, opts, f, v);
  if (r < 0)
    goto fail;
  return 1;

 fail:
  free (v);
  l->priv = NULL;
  l->ops = NULL;
  return r;
}

void
vhd_layout (const struct layer *l, struct vhd_layout *out)
{
  const struct vhd *v = l->priv;

  *out = (struct vhd_layout) { v->bat_off, v->bat_entries, v->bitmap_size,
                               v->data_end, v->chs, v->chs_size };
}

void
vhd_bitmap_flip (uint8_t *out, const uint8_t *in, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    uint8_t x = in[i];
    x = (x & 0xF0) >> 4 | (x & 0x0F) << 4;
    x = (x & 0xCC) >> 2 | (x & 0x33) << 2;
    out[i] = (x & 0xAA) >> 1 | (x & 0x55) << 1;
  }
}

/* VHD spec appendix "CHS calculation", as FORMATS.md 2.2 states it. */
uint32_t
vhd_chs_geometry (uint64_t size)
{
  uint64_t n = size / 512, cth;
  uint32_t spt, heads;

  if (n > 65535ull * 16 * 255)
    n = 65535ull * 16 * 255;
  if (n >= 65535ull * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = n / spt;
  }
  else {
    spt = 17;
    cth = n / spt;
    heads = (cth + 1023) / 1024;
    if (heads < 4)
      heads = 4;
    if (cth >= heads * 1024ull || heads > 16) {
      spt = 31;
      heads = 16;
      cth = n / spt;
    }
    if (cth >= heads * 1024ull) {
      spt = 63;
      heads = 16;
      cth = n / spt;
    }
  }
  return (uint32_t) (cth / heads) << 16 | heads << 8 | spt;
}

void
vhd_make_footer (uint8_t *f, uint32_t type, uint64_t size, uint32_t chs)
{
  uuid_t id;

  memset (f, 0, FOOTER_SIZE);
  memcpy (f, "conectix", 8);
  put_be32 (f + 8, 2);                          /* reserved bit */
  put_be32 (f + 12, 0x00010000);
  put_be64 (f + 16, FOOTER_SIZE);
  put_be32 (f + 24, time (NULL) - VHD_EPOCH);
  memcpy (f + 28, "vhdc", 4);
  put_be32 (f + 32, 0x00000001);
  memcpy (f + 36, "Wi2k", 4);
  put_be64 (f + 40, size);
  put_be64 (f + 48, size);
  put_be32 (f + 56, chs);
  put_be32 (f + 60, type);
  uuid_generate_random (id);
  memcpy (f + 68, id, 16);
  put_be32 (f + 64, vhd_checksum (f, FOOTER_SIZE, 64));
}
