/* vhdchain core: the VHDX reader (MS-VHDX rev. 8.0; FORMATS.md section 3).
 *
 * vhdx_open validates the whole file once and keeps only what reads need:
 *
 *   file identifier (2.1)     "vhdxfile" + UTF-16LE creator -> l->creator
 *   headers (2.2.2)           both read, CRC-32C; the valid one with the
 *                             larger SequenceNumber is current; equal numbers
 *                             only if byte-identical.  DataWriteGuid -> l->id
 *   log (2.3)                 replayed in memory (vhdx-log.c) before anything
 *                             the log may update is read
 *   region table (2.2.3)      first copy with a valid CRC: where the BAT and
 *                             the metadata region are
 *   metadata (2.6)            block size, flags, virtual size, sector sizes,
 *                             parent locator -> l->parent_id, l->hints
 *   BAT (2.5)                 one validating pass: every entry's state and
 *                             offset, and that no two allocations (blocks,
 *                             sector bitmaps, regions, log, first MiB) share
 *                             a MiB of the file
 *
 * What stays after open (struct vhdx_priv): the replayed log overlay, where
 * the BAT is, the chunk geometry and one sector-bitmap offset per chunk (a
 * chunk is 2^23 logical sectors, so a 64 TiB disk has at most 16384).  The
 * BAT itself is re-read in pieces by walk, which re-applies the open-time
 * checks to every entry it reports, so nothing proportional to the virtual
 * size is held.
 *
 * Payload is read by the caller straight from l->fd at data_off, never
 * through the overlay, so open refuses a log that writes into an allocated
 * payload block (logs carry metadata only).  Sector-bitmap entries are used,
 * and so validated, only in differencing files.
 *
 * BAT layout (2.5): payload entries of chunk_ratio blocks are followed by the
 * sector-bitmap entry of their chunk; block b is at index b + b/chunk_ratio,
 * the sector bitmap of chunk c at c * (chunk_ratio + 1) + chunk_ratio.  We
 * read the BAT one "group" (a chunk's payload entries + its bitmap entry) at
 * a time, so a chunk's bitmap entry is known before its payload entries.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "crc32c.h"
#include "error.h"
#include "guid.h"
#include "layer.h"
#include "utf16.h"
#include "vhdx.h"

const uint8_t vhdx_guid_bat[16] = GUID_INIT (0x2DC27766, 0xF623, 0x4200,
  0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08);
const uint8_t vhdx_guid_metadata[16] = GUID_INIT (0x8B7CA206, 0x4790, 0x4B9A,
  0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E);
const uint8_t vhdx_guid_file_parameters[16] = GUID_INIT (0xCAA16737, 0xFA36,
  0x4D43, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B);
/* Not the …-5BE07A6CE32C some third-party code uses (FORMATS pitfall 21). */
const uint8_t vhdx_guid_virtual_disk_size[16] = GUID_INIT (0x2FA54224, 0xCD1B,
  0x4876, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8);
const uint8_t vhdx_guid_virtual_disk_id[16] = GUID_INIT (0xBECA12AB, 0xB2E6,
  0x4523, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46);
const uint8_t vhdx_guid_logical_sector_size[16] = GUID_INIT (0x8141BF1D,
  0xA96F, 0x4709, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F);
const uint8_t vhdx_guid_physical_sector_size[16] = GUID_INIT (0xCDA348C7,
  0x445D, 0x4471, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56);
const uint8_t vhdx_guid_parent_locator[16] = GUID_INIT (0xA8D35F2D, 0xB30B,
  0x454D, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C);
const uint8_t vhdx_guid_locator_type_vhdx[16] = GUID_INIT (0xB04AEFB7, 0xD19E,
  0x4A81, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13);

/* BAT bytes read at a time by walk and validation (whole groups). */
#define BAT_PIECE (1024 * 1024)
/* Largest file we lay a per-MiB occupancy bitmap over (128 MiB of bits,
 * zero pages until touched): far beyond any real VHDX. */
#define MAX_FILE_SIZE (UINT64_C (1) << 50)

struct vhdx_priv {
  struct vhdx_overlay ov;       /* replayed log, logical file size */
  uint64_t bat_offset;
  uint64_t bat_entries;
  uint32_t chunk_ratio;         /* payload blocks per sector-bitmap block */
  uint64_t nr_chunks;
  uint64_t *sb;                 /* per chunk: sector bitmap offset, 0 none */
};

/* Parsed metadata items (MS-VHDX 2.6.2). */
struct vhdx_params {
  uint32_t block_size, fp_flags, logical_sector, physical_sector;
  uint64_t virtual_size;
  unsigned found;               /* ITEM_* bits of the items seen */
  struct vhdx_md_entry locator;
};

/* What open needs while it validates, freed at its end. */
struct open_ctx {
  struct layer *l;
  const struct layer_opts *opts;
  struct vhdx_priv *p;
  struct vhdx_header hdr;
  int hdr_index;                /* 1 or 2, for messages */
  struct vhdx_region *regions;
  uint32_t nr_regions;
  uint64_t md_offset;
  uint32_t md_length, bat_length;
  struct vhdx_params par;
  uint8_t *claimed;             /* per MiB of the file: allocated */
  uint8_t *logged;              /* per MiB: written by log replay */
};

/* ---- raw decoders (also used by the unit tests) ---- */

bool
vhdx_checksum_ok (const uint8_t *buf, size_t len)
{
  static const uint8_t zero[4];
  uint32_t crc = crc32c_update (0, buf, 4);

  crc = crc32c_update (crc, zero, 4);
  crc = crc32c_update (crc, buf + 8, len - 8);
  return crc == get_le32 (buf + 4);
}

void
vhdx_header_decode (const uint8_t *buf, struct vhdx_header *h)
{
  h->signature_ok = memcmp (buf, "head", 4) == 0;
  h->checksum = get_le32 (buf + 4);
  h->seq = get_le64 (buf + 8);
  memcpy (h->file_write_guid, buf + 16, 16);
  memcpy (h->data_write_guid, buf + 32, 16);
  memcpy (h->log_guid, buf + 48, 16);
  h->log_version = get_le16 (buf + 64);
  h->version = get_le16 (buf + 66);
  h->log_length = get_le32 (buf + 68);
  h->log_offset = get_le64 (buf + 72);
}

void
vhdx_rt_header_decode (const uint8_t *buf, struct vhdx_rt_header *h)
{
  h->signature_ok = memcmp (buf, "regi", 4) == 0;
  h->checksum = get_le32 (buf + 4);
  h->entry_count = get_le32 (buf + 8);
}

void
vhdx_region_decode (const uint8_t *buf, struct vhdx_region *r)
{
  memcpy (r->guid, buf, 16);
  r->offset = get_le64 (buf + 16);
  r->length = get_le32 (buf + 24);
  r->required = get_le32 (buf + 28);
}

void
vhdx_md_header_decode (const uint8_t *buf, struct vhdx_md_header *h)
{
  h->signature_ok = memcmp (buf, "metadata", 8) == 0;
  h->entry_count = get_le16 (buf + 10);
}

void
vhdx_md_entry_decode (const uint8_t *buf, struct vhdx_md_entry *e)
{
  memcpy (e->item_id, buf, 16);
  e->offset = get_le32 (buf + 16);
  e->length = get_le32 (buf + 20);
  e->flags = get_le32 (buf + 24);
}

void
vhdx_pl_header_decode (const uint8_t *buf, struct vhdx_pl_header *h)
{
  memcpy (h->locator_type, buf, 16);
  h->key_value_count = get_le16 (buf + 18);
}

void
vhdx_pl_entry_decode (const uint8_t *buf, struct vhdx_pl_entry *e)
{
  e->key_offset = get_le32 (buf);
  e->value_offset = get_le32 (buf + 4);
  e->key_length = get_le16 (buf + 8);
  e->value_length = get_le16 (buf + 10);
}

/* ---- file identifier and headers ---- */

/* Copy UTF-8 s into l->creator, cutting only between characters. */
static void
set_creator (struct layer *l, const char *s)
{
  size_t n = strlen (s);

  if (n >= sizeof l->creator) {
    n = sizeof l->creator - 1;
    while (n > 0 && ((unsigned char) s[n] & 0xC0) == 0x80)
      n--;
  }
  memcpy (l->creator, s, n);
  l->creator[n] = '\0';
}

/* The creator is informational: a bad string is reported, not fatal. */
static int
read_creator (struct open_ctx *c)
{
  uint8_t buf[VHDX_CREATOR_SIZE];
  char *s;
  int r;

  r = layer_pread (c->l, buf, sizeof buf, VHDX_CREATOR_OFF,
                   "file identifier");
  if (r < 0)
    return r;
  if (utf16_to_utf8 (buf, sizeof buf, false, &s) < 0) {
    vc_debug ("%s: file identifier: creator is not valid UTF-16LE",
              c->l->path);
    return 0;
  }
  set_creator (c->l, s);
  free (s);
  return 0;
}

static const char *
header_problem (const struct vhdx_header *h, bool crc_ok)
{
  return !h->signature_ok ? "no 'head' signature" :
    !crc_ok ? "CRC-32C mismatch" : "valid";
}

/* Choose between the two headers (MS-VHDX 2.2.2); returns 0 or 1. */
static int
pick_header (struct open_ctx *c, uint8_t buf[2][VHDX_HEADER_SIZE],
             const struct vhdx_header h[2], const bool crc_ok[2])
{
  bool use[2] = { h[0].signature_ok && crc_ok[0],
                  h[1].signature_ok && crc_ok[1] };
  int i;

  if (!use[0] && !use[1] && c->opts->ignore_checksums) {
    use[0] = h[0].signature_ok;
    use[1] = h[1].signature_ok;
    vc_debug ("%s: headers: ignoring CRC-32C mismatches", c->l->path);
  }
  if (!use[0] && !use[1])
    return vc_error (EINVAL, "%s: header 1: %s, header 2: %s: no valid "
                     "header", c->l->path, header_problem (&h[0], crc_ok[0]),
                     header_problem (&h[1], crc_ok[1]));
  if (use[0] && use[1] && h[0].seq == h[1].seq) {
    /* Disk2vhd writes identical twins; different twins are ambiguous. */
    if (memcmp (buf[0], buf[1], VHDX_HEADER_SIZE) != 0)
      return vc_error (EINVAL, "%s: headers 1 and 2: same SequenceNumber %"
                       PRIu64 " but different contents", c->l->path, h[0].seq);
    return 0;
  }
  if (use[0] && use[1])
    return h[0].seq > h[1].seq ? 0 : 1;
  i = use[0] ? 1 : 0;           /* the one we cannot use */
  vc_debug ("%s: header %d: %s, using header %d", c->l->path, i + 1,
            header_problem (&h[i], crc_ok[i]), 2 - i);
  return 1 - i;
}

/* Fields of the current header that everything after depends on. */
static int
check_header (struct open_ctx *c)
{
  const struct vhdx_header *h = &c->hdr;
  const char *why = NULL;

  if (h->version != 1)
    why = "Version is not 1";
  else if (!guid_is_zero (h->log_guid) && h->log_version != 0)
    why = "LogVersion is not 0";
  else if (h->log_offset % VHDX_MiB || h->log_length % VHDX_MiB)
    why = "LogOffset or LogLength is not a multiple of 1 MiB";
  else if (h->log_length && h->log_offset < VHDX_MiB)
    why = "the log is inside the first MiB";
  else if (!h->log_length && !guid_is_zero (h->log_guid))
    why = "LogGuid is set but LogLength is 0";
  if (!why)
    return 0;
  return vc_error (EINVAL, "%s: header %d: %s (Version %u, LogVersion %u, "
                   "log %" PRIu64 " + %" PRIu32 ")", c->l->path, c->hdr_index,
                   why, h->version, h->log_version, h->log_offset,
                   h->log_length);
}

static int
read_headers (struct open_ctx *c)
{
  static const uint64_t where[2] = { VHDX_HEADER1_OFF, VHDX_HEADER2_OFF };
  uint8_t buf[2][VHDX_HEADER_SIZE];
  struct vhdx_header h[2];
  bool crc_ok[2];
  int i, r;

  for (i = 0; i < 2; i++) {
    r = layer_pread (c->l, buf[i], VHDX_HEADER_SIZE, where[i],
                     i ? "header 2" : "header 1");
    if (r < 0)
      return r;
    vhdx_header_decode (buf[i], &h[i]);
    crc_ok[i] = vhdx_checksum_ok (buf[i], VHDX_HEADER_SIZE);
  }
  if ((i = pick_header (c, buf, h, crc_ok)) < 0)
    return i;
  c->hdr = h[i];
  c->hdr_index = i + 1;
  memcpy (c->l->id, c->hdr.data_write_guid, 16);
  return check_header (c);
}

/* ---- region table ---- */

static int
check_region (struct open_ctx *c, uint32_t i, const struct vhdx_region *r)
{
  char g[GUID_TEXT_LEN + 1];
  uint32_t j;

  guid_format (r->guid, g);
  if (r->offset % VHDX_MiB || r->offset < VHDX_MiB || r->length % VHDX_MiB
      || r->length == 0)
    return vc_error (EINVAL, "%s: region table: entry %" PRIu32 " {%s}: "
                     "FileOffset %" PRIu64 " / Length %" PRIu32 " not "
                     "non-zero multiples of 1 MiB past the first MiB",
                     c->l->path, i, g, r->offset, r->length);
  for (j = 0; j < i; j++)
    if (memcmp (c->regions[j].guid, r->guid, 16) == 0)
      return vc_error (EINVAL, "%s: region table: entry %" PRIu32 " {%s}: "
                       "duplicate of entry %" PRIu32, c->l->path, i, g, j);
  if (memcmp (r->guid, vhdx_guid_bat, 16) == 0) {
    c->p->bat_offset = r->offset;
    c->bat_length = r->length;
  }
  else if (memcmp (r->guid, vhdx_guid_metadata, 16) == 0) {
    c->md_offset = r->offset;
    c->md_length = r->length;
  }
  else if (r->required & 1)
    return vc_error (ENOTSUP, "%s: region table: entry %" PRIu32 " {%s}: "
                     "unknown region marked required", c->l->path, i, g);
  return 0;
}

static int
parse_regions (struct open_ctx *c, const uint8_t *buf)
{
  struct vhdx_rt_header h;
  uint32_t i;
  int r;

  vhdx_rt_header_decode (buf, &h);
  if (h.entry_count > VHDX_RT_MAX_ENTRIES)
    return vc_error (EINVAL, "%s: region table: EntryCount %" PRIu32
                     " is more than %d", c->l->path, h.entry_count,
                     VHDX_RT_MAX_ENTRIES);
  c->regions = calloc (h.entry_count + 1, sizeof *c->regions);
  if (!c->regions)
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  for (i = 0; i < h.entry_count; i++) {
    vhdx_region_decode (buf + VHDX_RT_HEADER_SIZE + i * VHDX_RT_ENTRY_SIZE,
                        &c->regions[i]);
    if ((r = check_region (c, i, &c->regions[i])) < 0)
      return r;
  }
  c->nr_regions = h.entry_count;
  if (!c->bat_length || !c->md_length)
    return vc_error (EINVAL, "%s: region table: no %s region", c->l->path,
                     !c->bat_length ? "BAT" : "metadata");
  return 0;
}

/* Index of the first copy with a valid signature and CRC (or, ignoring
 * checksums, signature), or -1. */
static int
pick_region_table (struct open_ctx *c, const uint8_t *buf)
{
  int i, pass;

  for (pass = 0; pass < (c->opts->ignore_checksums ? 2 : 1); pass++)
    for (i = 0; i < 2; i++) {
      const uint8_t *t = buf + i * VHDX_RT_SIZE;
      struct vhdx_rt_header h;
      vhdx_rt_header_decode (t, &h);
      if (h.signature_ok && (pass || vhdx_checksum_ok (t, VHDX_RT_SIZE)))
        return i;
    }
  return -1;
}

static int
read_region_table (struct open_ctx *c)
{
  uint8_t *buf = malloc (2 * VHDX_RT_SIZE);
  int i, r;

  if (!buf)
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  /* After replay: the region table may be updated through the log. */
  r = vhdx_read (c->l, &c->p->ov, buf, 2 * VHDX_RT_SIZE, VHDX_RT1_OFF,
                 "region table");
  if (r == 0 && (i = pick_region_table (c, buf)) < 0)
    r = vc_error (EINVAL, "%s: region table: neither copy has a 'regi' "
                  "signature and a valid CRC-32C", c->l->path);
  else if (r == 0) {
    if (i == 1)
      vc_debug ("%s: region table: first copy invalid, using the second",
                c->l->path);
    r = parse_regions (c, buf + i * VHDX_RT_SIZE);
  }
  free (buf);
  return r;
}

/* ---- metadata region ---- */

enum {
  ITEM_FILE_PARAMETERS = 1, ITEM_SIZE = 2, ITEM_DISK_ID = 4,
  ITEM_LOGICAL = 8, ITEM_PHYSICAL = 16, ITEM_LOCATOR = 32,
  ITEMS_REQUIRED = 31,
};

/* The system items we know (MS-VHDX 2.6.2) and the bytes each must hold. */
static const struct known_item {
  const uint8_t *guid;
  const char *name;
  uint32_t size;
  unsigned bit;
} known_items[] = {
  { vhdx_guid_file_parameters, "File Parameters", 8, ITEM_FILE_PARAMETERS },
  { vhdx_guid_virtual_disk_size, "Virtual Disk Size", 8, ITEM_SIZE },
  /* Shared by parent and child: never a linkage (pitfall 14). */
  { vhdx_guid_virtual_disk_id, "Virtual Disk ID", 16, ITEM_DISK_ID },
  { vhdx_guid_logical_sector_size, "Logical Sector Size", 4, ITEM_LOGICAL },
  { vhdx_guid_physical_sector_size, "Physical Sector Size", 4,
    ITEM_PHYSICAL },
  { vhdx_guid_parent_locator, "Parent Locator", VHDX_PL_HEADER_SIZE,
    ITEM_LOCATOR },
};

static void
store_item (struct vhdx_params *par, unsigned bit, const uint8_t *b)
{
  switch (bit) {
  case ITEM_FILE_PARAMETERS:
    par->block_size = get_le32 (b);
    par->fp_flags = get_le32 (b + 4);
    break;
  case ITEM_SIZE: par->virtual_size = get_le64 (b); break;
  case ITEM_LOGICAL: par->logical_sector = get_le32 (b); break;
  case ITEM_PHYSICAL: par->physical_sector = get_le32 (b); break;
  }
}

/* Read and store one system item we know: its bit, or 0 if unknown. */
static int
known_item (struct open_ctx *c, const struct vhdx_md_entry *e)
{
  const struct known_item *k = NULL;
  uint8_t b[16];
  size_t i;
  int r;

  for (i = 0; i < sizeof known_items / sizeof known_items[0] && !k; i++)
    if (memcmp (e->item_id, known_items[i].guid, 16) == 0)
      k = &known_items[i];
  if (!k)
    return 0;
  if (e->length < k->size)
    return vc_error (EINVAL, "%s: metadata: %s item is %" PRIu32 " bytes, "
                     "expected at least %" PRIu32, c->l->path, k->name,
                     e->length, k->size);
  if (k->bit == ITEM_LOCATOR) {
    c->par.locator = *e;        /* parsed once HasParent is known */
    return k->bit;
  }
  r = vhdx_read (c->l, &c->p->ov, b, k->size, c->md_offset + e->offset,
                 k->name);
  if (r < 0)
    return r;
  store_item (&c->par, k->bit, b);
  return k->bit;
}

/* Offset/length rules of MS-VHDX 2.6.1.2 and uniqueness of (id, IsUser). */
static int
check_md_entry (struct open_ctx *c, const struct vhdx_md_entry *es,
                uint32_t i)
{
  const struct vhdx_md_entry *e = &es[i];
  char g[GUID_TEXT_LEN + 1];
  uint32_t j;

  guid_format (e->item_id, g);
  if (e->length == 0 ? e->offset != 0 :
      e->offset < VHDX_MD_TABLE_SIZE || e->length > VHDX_MD_ITEM_MAX
      || e->offset > c->md_length || e->length > c->md_length - e->offset)
    return vc_error (EINVAL, "%s: metadata table: entry %" PRIu32 " {%s}: "
                     "Offset %" PRIu32 " / Length %" PRIu32 " outside the "
                     "metadata region (%" PRIu32 " bytes)", c->l->path, i, g,
                     e->offset, e->length, c->md_length);
  for (j = 0; j < i; j++) {
    const struct vhdx_md_entry *o = &es[j];
    if (memcmp (o->item_id, e->item_id, 16) == 0
        && (o->flags & VHDX_MD_IS_USER) == (e->flags & VHDX_MD_IS_USER))
      return vc_error (EINVAL, "%s: metadata table: entry %" PRIu32 " {%s}: "
                       "duplicate of entry %" PRIu32, c->l->path, i, g, j);
    if (e->length && o->length && e->offset < o->offset + o->length
        && o->offset < e->offset + e->length)
      return vc_error (EINVAL, "%s: metadata table: entry %" PRIu32 " {%s}: "
                       "overlaps entry %" PRIu32, c->l->path, i, g, j);
  }
  return 0;
}

static int
parse_md_entry (struct open_ctx *c, const struct vhdx_md_entry *es,
                uint32_t i)
{
  const struct vhdx_md_entry *e = &es[i];
  char g[GUID_TEXT_LEN + 1];
  int r;

  if ((r = check_md_entry (c, es, i)) < 0)
    return r;
  r = (e->flags & VHDX_MD_IS_USER) ? 0 : known_item (c, e);
  if (r < 0)
    return r;
  c->par.found |= r;
  if (r == 0 && (e->flags & VHDX_MD_IS_REQUIRED)) {
    guid_format (e->item_id, g);
    return vc_error (ENOTSUP, "%s: metadata table: entry %" PRIu32 " {%s}: "
                     "unknown %s item marked required", c->l->path, i, g,
                     (e->flags & VHDX_MD_IS_USER) ? "user" : "system");
  }
  return 0;
}

static int
parse_md_table (struct open_ctx *c, const uint8_t *t)
{
  struct vhdx_md_header h;
  struct vhdx_md_entry *es;
  uint32_t i;
  int r = 0;

  vhdx_md_header_decode (t, &h);
  if (!h.signature_ok || h.entry_count > VHDX_MD_MAX_ENTRIES)
    return vc_error (EINVAL, "%s: metadata table: %s", c->l->path,
                     !h.signature_ok ? "no 'metadata' signature" :
                     "EntryCount is more than 2047");
  if (!(es = calloc (h.entry_count + 1, sizeof *es)))
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  for (i = 0; i < h.entry_count && r == 0; i++) {
    vhdx_md_entry_decode (t + VHDX_MD_HEADER_SIZE + i * VHDX_MD_ENTRY_SIZE,
                          &es[i]);
    r = parse_md_entry (c, es, i);
  }
  free (es);
  if (r == 0 && (c->par.found & ITEMS_REQUIRED) != ITEMS_REQUIRED)
    r = vc_error (EINVAL, "%s: metadata table: a required item is missing "
                  "(File Parameters, Virtual Disk Size, Virtual Disk ID, "
                  "Logical or Physical Sector Size)", c->l->path);
  return r;
}

static int
read_metadata (struct open_ctx *c)
{
  uint8_t *t = malloc (VHDX_MD_TABLE_SIZE);
  int r;

  if (!t)
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  r = vhdx_read (c->l, &c->p->ov, t, VHDX_MD_TABLE_SIZE, c->md_offset,
                 "metadata table");
  if (r == 0)
    r = parse_md_table (c, t);
  free (t);
  return r;
}

/* ---- geometry ---- */

static bool
is_pow2 (uint64_t x)
{
  return x && !(x & (x - 1));
}

static int
check_params (struct open_ctx *c)
{
  const struct vhdx_params *par = &c->par;
  const char *why = NULL;

  if (!is_pow2 (par->block_size) || par->block_size < VHDX_MiB
      || par->block_size > 256 * VHDX_MiB)
    why = "BlockSize is not a power of two from 1 to 256 MiB";
  else if (par->logical_sector != 512 && par->logical_sector != 4096)
    why = "Logical Sector Size is not 512 or 4096";
  else if (par->physical_sector != 512 && par->physical_sector != 4096)
    why = "Physical Sector Size is not 512 or 4096";
  else if (par->virtual_size % par->logical_sector)
    why = "Virtual Disk Size is not a multiple of the logical sector size";
  else if (par->virtual_size > VHDX_MAX_SIZE)
    why = "Virtual Disk Size is more than 64 TiB";
  if (!why)
    return 0;
  return vc_error (EINVAL, "%s: metadata: %s (block size %" PRIu32 ", "
                   "sectors %" PRIu32 "/%" PRIu32 ", size %" PRIu64 ")",
                   c->l->path, why, par->block_size, par->logical_sector,
                   par->physical_sector, par->virtual_size);
}

/* Sizes, chunk ratio and BAT entry count (MS-VHDX 2.5). */
static int
set_geometry (struct open_ctx *c)
{
  struct layer *l = c->l;
  struct vhdx_priv *p = c->p;
  uint64_t n;
  int r;

  if ((r = check_params (c)) < 0)
    return r;
  l->differencing = c->par.fp_flags & VHDX_FP_HAS_PARENT;
  /* LeaveBlockAllocated means nothing in a child (FORMATS 3.4). */
  l->type = l->differencing ? "differencing" :
    (c->par.fp_flags & VHDX_FP_LEAVE_BLOCKS_ALLOCATED) ? "fixed" : "dynamic";
  l->size = c->par.virtual_size;
  l->sector = c->par.logical_sector;
  l->block_size = c->par.block_size;
  l->nr_blocks = n = (l->size + l->block_size - 1) / l->block_size;
  p->chunk_ratio = (UINT64_C (1) << 23) * l->sector / l->block_size;
  p->nr_chunks = (n + p->chunk_ratio - 1) / p->chunk_ratio;
  p->bat_entries = l->differencing ? p->nr_chunks * (p->chunk_ratio + 1) :
    n ? n + (n - 1) / p->chunk_ratio : 0;
  if (p->bat_entries > c->bat_length / 8)
    return vc_error (EINVAL, "%s: region table: BAT region of %" PRIu32
                     " bytes cannot hold the %" PRIu64 " entries a %" PRIu64
                     "-byte disk needs", l->path, c->bat_length,
                     p->bat_entries, l->size);
  return 0;
}

/* ---- parent locator (MS-VHDX 2.6.2.6) ---- */

struct kv {
  char *key, *value;
};

/* Decode one UTF-16LE string of the locator item, bounds and NULs checked. */
static int
locator_string (struct open_ctx *c, const uint8_t *item, uint32_t len,
                uint32_t table_end, uint32_t off, uint32_t n, uint32_t i,
                bool is_key, char **out)
{
  const char *what = is_key ? "key" : "value";
  uint32_t k;

  /* An empty value is legal (an unknown path); an empty key is not. */
  if (n % 2 || off < table_end || off > len || n > len - off
      || (n == 0 && is_key))
    return vc_error (EINVAL, "%s: parent locator: entry %" PRIu32 ": %s at "
                     "%" PRIu32 ", %" PRIu32 " bytes: empty, odd length, or "
                     "outside the item (%" PRIu32 " bytes) after the entry "
                     "table", c->l->path, i, what, off, n, len);
  for (k = 0; k < n; k += 2)
    if (item[off + k] == 0 && item[off + k + 1] == 0)
      return vc_error (EINVAL, "%s: parent locator: entry %" PRIu32 ": %s "
                       "holds a NUL character", c->l->path, i, what);
  if (utf16_to_utf8 (item + off, n, false, out) < 0)
    return vc_error (EILSEQ, "%s: parent locator: entry %" PRIu32 ": %s is "
                     "not valid UTF-16LE", c->l->path, i, what);
  return 0;
}

static int
kv_compare (const void *a, const void *b)
{
  return strcmp (((const struct kv *) a)->key, ((const struct kv *) b)->key);
}

static int
check_duplicate_keys (struct open_ctx *c, struct kv *kv, uint32_t n)
{
  uint32_t i;

  qsort (kv, n, sizeof *kv, kv_compare);
  for (i = 1; i < n; i++)
    if (strcmp (kv[i - 1].key, kv[i].key) == 0)
      return vc_error (EINVAL, "%s: parent locator: key '%s' appears twice",
                       c->l->path, kv[i].key);
  return 0;
}

static int
parse_linkage (struct open_ctx *c, const char *key, const char *value,
               uint8_t *out)
{
  if (guid_parse (value, out) < 0)
    return vc_error (EINVAL, "%s: parent locator: %s '%s' is not a GUID",
                     c->l->path, key, value);
  return 0;
}

/* Turn the key/value pairs into linkages and hints (FORMATS 3.9). */
static int
apply_locator (struct open_ctx *c, struct kv *kv, uint32_t n)
{
  static const struct { const char *key; enum hint_kind kind; } paths[] = {
    { "relative_path", HINT_RELATIVE },
    { "volume_path", HINT_VOLUME },
    { "absolute_win32_path", HINT_ABSOLUTE },
  };
  bool linked = false;
  uint32_t i, k;
  int r = 0;

  for (i = 0; i < n && r == 0; i++) {
    if (strcmp (kv[i].key, "parent_linkage") == 0)
      linked = (r = parse_linkage (c, kv[i].key, kv[i].value,
                                   c->l->parent_id)) == 0;
    else if (strcmp (kv[i].key, "parent_linkage2") == 0)
      r = parse_linkage (c, kv[i].key, kv[i].value, c->l->parent_id2);
  }
  if (r == 0 && !linked)
    return vc_error (EINVAL, "%s: parent locator: no parent_linkage",
                     c->l->path);
  /* Added in the order chain.c tries them, whatever the order on disk. */
  for (k = 0; k < 3 && r == 0; k++)
    for (i = 0; i < n && r == 0; i++)
      if (strcmp (kv[i].key, paths[k].key) == 0 && kv[i].value[0]) {
        r = layer_add_hint (c->l, paths[k].kind, kv[i].value);
        kv[i].value = NULL;     /* the layer owns it now, even on error */
      }
  return r;
}

static int
parse_kv_table (struct open_ctx *c, const uint8_t *item, uint32_t len,
                struct kv *kv, uint32_t n)
{
  uint32_t table_end = VHDX_PL_HEADER_SIZE + n * VHDX_PL_ENTRY_SIZE, i;
  int r;

  for (i = 0; i < n; i++) {
    struct vhdx_pl_entry e;
    vhdx_pl_entry_decode (item + VHDX_PL_HEADER_SIZE
                          + i * VHDX_PL_ENTRY_SIZE, &e);
    r = locator_string (c, item, len, table_end, e.key_offset, e.key_length,
                        i, true, &kv[i].key);
    if (r == 0)
      r = locator_string (c, item, len, table_end, e.value_offset,
                          e.value_length, i, false, &kv[i].value);
    if (r < 0)
      return r;
  }
  r = check_duplicate_keys (c, kv, n);
  return r < 0 ? r : apply_locator (c, kv, n);
}

static int
parse_locator (struct open_ctx *c, const uint8_t *item, uint32_t len)
{
  struct vhdx_pl_header h;
  struct kv *kv;
  char g[GUID_TEXT_LEN + 1];
  uint32_t n, i;
  int r;

  vhdx_pl_header_decode (item, &h);
  if (memcmp (h.locator_type, vhdx_guid_locator_type_vhdx, 16) != 0) {
    guid_format (h.locator_type, g);
    return vc_error (ENOTSUP, "%s: parent locator: LocatorType {%s} is not "
                     "the VHDX type", c->l->path, g);
  }
  n = h.key_value_count;
  if (VHDX_PL_HEADER_SIZE + (uint64_t) n * VHDX_PL_ENTRY_SIZE > len)
    return vc_error (EINVAL, "%s: parent locator: %" PRIu32 " entries do not "
                     "fit in the %" PRIu32 "-byte item", c->l->path, n, len);
  if (!(kv = calloc (n + 1, sizeof *kv)))
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  r = parse_kv_table (c, item, len, kv, n);
  for (i = 0; i < n; i++) {
    free (kv[i].key);
    free (kv[i].value);
  }
  free (kv);
  return r;
}

static int
read_parent_locator (struct open_ctx *c)
{
  const struct vhdx_md_entry *e = &c->par.locator;
  uint8_t *item;
  int r;

  if (!c->l->differencing) {
    if (c->par.found & ITEM_LOCATOR)
      vc_debug ("%s: parent locator present but HasParent clear: ignored",
                c->l->path);
    return 0;
  }
  if (!(c->par.found & ITEM_LOCATOR))
    return vc_error (EINVAL, "%s: metadata: HasParent is set but there is "
                     "no parent locator item", c->l->path);
  if (!(item = malloc (e->length)))
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  r = vhdx_read (c->l, &c->p->ov, item, e->length, c->md_offset + e->offset,
                 "parent locator");
  if (r == 0)
    r = parse_locator (c, item, e->length);
  free (item);
  return r;
}

/* ---- BAT ---- */

typedef int (*chunk_fn) (struct layer *, uint64_t chunk, const uint8_t *group,
                         uint64_t nentries, void *opaque);

/* Call fn for each chunk with its BAT group (payload entries, then the
 * sector-bitmap entry if the BAT has one), reading whole groups in pieces
 * of about BAT_PIECE bytes through the log overlay.
 */
static int
bat_foreach_chunk (struct layer *l, chunk_fn fn, void *opaque)
{
  struct vhdx_priv *p = l->priv;
  uint64_t group = p->chunk_ratio + 1, c0, c, per_piece;
  uint8_t *buf;
  int r = 0;

  per_piece = BAT_PIECE / (group * 8) ? BAT_PIECE / (group * 8) : 1;
  if (!(buf = malloc (per_piece * group * 8)))
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  for (c0 = 0; c0 < p->nr_chunks && r == 0; c0 += per_piece) {
    uint64_t first = c0 * group, end = (c0 + per_piece) * group;
    if (end > p->bat_entries)
      end = p->bat_entries;
    r = vhdx_read (l, &p->ov, buf, (end - first) * 8,
                   p->bat_offset + first * 8, "BAT");
    for (c = c0; c < c0 + per_piece && c < p->nr_chunks && r == 0; c++) {
      uint64_t idx = c * group;
      r = fn (l, c, buf + (idx - first) * 8,
              end - idx < group ? end - idx : group, opaque);
    }
  }
  free (buf);
  return r;
}

/* Bytes of block b that hold virtual data: the last may be short. */
static uint64_t
block_len (const struct layer *l, uint64_t b)
{
  uint64_t left = l->size - b * l->block_size;
  return left < l->block_size ? left : l->block_size;
}

static int
bat_error (const struct layer *l, uint64_t b, uint64_t e, const char *why)
{
  const struct vhdx_priv *p = l->priv;

  return vc_error (EINVAL, "%s: BAT entry %" PRIu64 " (block %" PRIu64 ", "
                   "0x%016" PRIx64 "): %s", l->path,
                   b + b / p->chunk_ratio, b, e, why);
}

/* What one payload entry means (FORMATS 3.6).  Every check on an entry is
 * here, so walk re-applies to what it reads all that open checked.
 */
static int
decode_payload (const struct layer *l, uint64_t b, uint64_t e,
                enum block_state *st, uint64_t *off)
{
  const struct vhdx_priv *p = l->priv;
  uint64_t len;

  if (VHDX_BAT_RESERVED (e))
    return bat_error (l, b, e, "reserved bits set");
  switch (VHDX_BAT_STATE (e)) {
  case VHDX_PAYLOAD_NOT_PRESENT:
    *st = BLK_ABSENT;   /* the parent's, or zeros in a base */
    return 0;
  case VHDX_PAYLOAD_UNDEFINED: case VHDX_PAYLOAD_ZERO:
  case VHDX_PAYLOAD_UNMAPPED: case 5:
    *st = BLK_ZERO;     /* never stale bytes, never the parent (pitfall 15) */
    return 0;
  case VHDX_PAYLOAD_FULLY_PRESENT:
    *st = BLK_FULL;
    break;
  case VHDX_PAYLOAD_PARTIALLY_PRESENT:
    if (!l->differencing)
      return bat_error (l, b, e, "PARTIALLY_PRESENT in a file without a parent");
    if (!p->sb[b / p->chunk_ratio])
      return bat_error (l, b, e, "PARTIALLY_PRESENT but its chunk has no "
                        "sector bitmap block");
    *st = BLK_PARTIAL;
    break;
  default:
    return bat_error (l, b, e, "reserved block state 4");
  }
  *off = VHDX_BAT_OFFSET_MB (e) * VHDX_MiB;
  len = block_len (l, b);
  if (*off == 0)
    return bat_error (l, b, e, "allocated block with FileOffsetMB 0");
  if (*off > p->ov.logical_size || len > p->ov.logical_size - *off)
    return bat_error (l, b, e, "block lies past the end of the file");
  return 0;
}

/* A chunk's sector-bitmap entry: its block offset, or 0 if not present. */
static int
decode_sb (const struct layer *l, uint64_t chunk, uint64_t e, uint64_t *off)
{
  const struct vhdx_priv *p = l->priv;
  const char *why = NULL;

  *off = VHDX_BAT_OFFSET_MB (e) * VHDX_MiB;
  if (VHDX_BAT_RESERVED (e))
    why = "reserved bits set";
  else if (VHDX_BAT_STATE (e) == VHDX_SB_NOT_PRESENT)
    *off = 0;
  else if (VHDX_BAT_STATE (e) != VHDX_SB_PRESENT)
    why = "state is neither SB_BLOCK_NOT_PRESENT nor SB_BLOCK_PRESENT";
  else if (*off == 0)
    why = "SB_BLOCK_PRESENT with FileOffsetMB 0";
  else if (*off > p->ov.logical_size
           || VHDX_SB_BLOCK_SIZE > p->ov.logical_size - *off)
    why = "sector bitmap block lies past the end of the file";
  if (!why)
    return 0;
  return vc_error (EINVAL, "%s: BAT entry %" PRIu64 " (sector bitmap of chunk "
                   "%" PRIu64 ", 0x%016" PRIx64 "): %s", l->path,
                   chunk * (p->chunk_ratio + 1) + p->chunk_ratio, chunk, e,
                   why);
}

/* ---- occupancy: no two allocations share a MiB of the file ---- */

static int
space_init (struct open_ctx *c)
{
  uint64_t size = c->p->ov.logical_size, bytes;

  if (size > MAX_FILE_SIZE)
    return vc_error (EFBIG, "%s: file of %" PRIu64 " bytes is larger than "
                     "any VHDX can be", c->l->path, size);
  bytes = (size + VHDX_MiB - 1) / VHDX_MiB / 8 + 1;
  c->claimed = calloc (1, bytes);
  if (c->claimed && c->p->ov.n)
    c->logged = calloc (1, bytes);
  if (!c->claimed || (c->p->ov.n && !c->logged))
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  return 0;
}

static bool
bit_test_set (uint8_t *map, uint64_t i, bool set)
{
  bool was = map[i >> 3] & (1u << (i & 7));
  if (set)
    map[i >> 3] |= 1u << (i & 7);
  return was;
}

/* Mark [off, off + len) (inside the logical size) as allocated; false if
 * some MiB of it already was. */
static bool
claim (struct open_ctx *c, uint64_t off, uint64_t len)
{
  uint64_t m, end = (off + len + VHDX_MiB - 1) / VHDX_MiB;
  bool clash = false;

  for (m = off / VHDX_MiB; m < end; m++)
    clash |= bit_test_set (c->claimed, m, true);
  return !clash;
}

static bool
is_logged (struct open_ctx *c, uint64_t off, uint64_t len)
{
  uint64_t m, end = (off + len + VHDX_MiB - 1) / VHDX_MiB;

  for (m = off / VHDX_MiB; c->logged && m < end; m++)
    if (bit_test_set (c->logged, m, false))
      return true;
  return false;
}

static int
claim_structure (struct open_ctx *c, uint64_t off, uint64_t len,
                 const char *what)
{
  uint64_t size = c->p->ov.logical_size;

  if (off > size || len > size - off)
    return vc_error (EINVAL, "%s: %s at %" PRIu64 " + %" PRIu64 " is past "
                     "the end of the file (%" PRIu64 " bytes)", c->l->path,
                     what, off, len, size);
  if (!claim (c, off, len))
    return vc_error (EINVAL, "%s: %s at %" PRIu64 " + %" PRIu64 " overlaps "
                     "another structure", c->l->path, what, off, len);
  return 0;
}

static int
cmp_span (const void *a, const void *b)
{
  const uint64_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The first MiB, the log, every region; and the MiBs replay wrote. */
static int
claim_structures (struct open_ctx *c)
{
  const struct vhdx_overlay *ov = &c->p->ov;
  uint32_t i;
  size_t k;
  int r;

  r = claim_structure (c, 0, VHDX_MiB, "first MiB (identifier, headers, "
                       "region tables)");
  if (r == 0 && c->hdr.log_length)
    r = claim_structure (c, c->hdr.log_offset, c->hdr.log_length, "log");
  for (i = 0; i < c->nr_regions && r == 0; i++) {
    const struct vhdx_region *g = &c->regions[i];
    char name[GUID_TEXT_LEN + 16];
    memcpy (name, "region {", 8);
    guid_format (g->guid, name + 8);
    strcat (name, "}");
    r = claim_structure (c, g->offset, g->length,
                         memcmp (g->guid, vhdx_guid_bat, 16) == 0 ? "BAT region"
                         : memcmp (g->guid, vhdx_guid_metadata, 16) == 0 ?
                         "metadata region" : name);
  }
  /* Each MiB replay wrote is marked once, however many extents cover it:
   * a log may repeat a zero range of 2^49 bytes (2^29 MiBs) 120 times in
   * one 4 KiB entry. */
  if (r == 0 && ov->n) {
    uint64_t (*sp)[2] = malloc (ov->n * sizeof *sp), done = 0;
    if (!sp)
      return vc_error (ENOMEM, "%s: out of memory", c->l->path);
    for (k = 0; k < ov->n; k++) {
      sp[k][0] = ov->ext[k].off / VHDX_MiB;
      sp[k][1] = (ov->ext[k].off + ov->ext[k].len + VHDX_MiB - 1) / VHDX_MiB;
    }
    qsort (sp, ov->n, sizeof *sp, cmp_span);
    for (k = 0; k < ov->n; k++) {
      uint64_t m = sp[k][0] > done ? sp[k][0] : done;
      for (; m < sp[k][1] && m % 8; m++)
        bit_test_set (c->logged, m, true);
      if (m < sp[k][1] && sp[k][1] - m >= 8) {  /* whole bytes at once */
        memset (c->logged + m / 8, 0xFF, (sp[k][1] - m) / 8);
        m += (sp[k][1] - m) / 8 * 8;
      }
      for (; m < sp[k][1]; m++)
        bit_test_set (c->logged, m, true);
      done = sp[k][1] > done ? sp[k][1] : done;
    }
    free (sp);
  }
  return r;
}

static int
validate_sb (struct layer *l, struct open_ctx *c, uint64_t chunk, uint64_t e)
{
  struct vhdx_priv *p = l->priv;
  uint64_t off;
  int r;

  /* Only a child reads sector bitmaps.  Elsewhere the entry is unused and
   * may hold anything: QEMU before 8.0 wrote shifted BAT pages there and
   * Windows leaves present ones (FORMATS 3.6). */
  if (!l->differencing) {
    if (e)
      vc_debug ("%s: chunk %" PRIu64 ": sector bitmap entry 0x%016" PRIx64
                " in a file without a parent: ignored", l->path, chunk, e);
    return 0;
  }
  if ((r = decode_sb (l, chunk, e, &off)) < 0)
    return r;
  if (off && !claim (c, off, VHDX_SB_BLOCK_SIZE))
    return vc_error (EINVAL, "%s: BAT: sector bitmap block of chunk %" PRIu64
                     " at %" PRIu64 " overlaps another structure", l->path,
                     chunk, off);
  p->sb[chunk] = off;
  return 0;
}

static int
validate_chunk (struct layer *l, uint64_t chunk, const uint8_t *group,
                uint64_t n, void *opaque)
{
  struct open_ctx *c = opaque;
  struct vhdx_priv *p = l->priv;
  uint64_t first = chunk * p->chunk_ratio, i, count, off = 0;
  enum block_state st = BLK_ABSENT;
  int r;

  if (n > p->chunk_ratio
      && (r = validate_sb (l, c, chunk, get_le64 (group + 8 * p->chunk_ratio))) < 0)
    return r;
  count = l->nr_blocks - first < p->chunk_ratio ? l->nr_blocks - first
    : p->chunk_ratio;
  for (i = 0; i < count; i++) {
    uint64_t e = get_le64 (group + 8 * i), b = first + i;
    if ((r = decode_payload (l, b, e, &st, &off)) < 0)
      return r;
    if (st != BLK_FULL && st != BLK_PARTIAL)
      continue;
    if (!claim (c, off, block_len (l, b)))
      return bat_error (l, b, e, "block overlaps another block or structure");
    /* vhdchain reads payload straight from the file, past the overlay. */
    if (is_logged (c, off, block_len (l, b)))
      return bat_error (l, b, e, "the log writes into this payload block");
    /* A log may extend the file (MS-VHDX 2.3.3): a whole block in the
     * extension reads as zeros (walk says ZERO); half of one, or a partial
     * block there, has no meaning we could serve. */
    if (off < l->file_size ? block_len (l, b) > l->file_size - off
                           : st == BLK_PARTIAL)
      return bat_error (l, b, e, "block lies past the end of the file");
  }
  return 0;
}

static int
validate_bat (struct open_ctx *c)
{
  struct vhdx_priv *p = c->p;
  int r;

  if ((r = space_init (c)) < 0 || (r = claim_structures (c)) < 0)
    return r;
  if (!(p->sb = calloc (p->nr_chunks + 1, sizeof *p->sb)))
    return vc_error (ENOMEM, "%s: out of memory", c->l->path);
  return bat_foreach_chunk (c->l, validate_chunk, c);
}

/* ---- layer operations ---- */

struct walk_ctx {
  layer_walk_fn fn;
  void *opaque;
};

static int
walk_chunk (struct layer *l, uint64_t chunk, const uint8_t *group,
            uint64_t n, void *opaque)
{
  const struct walk_ctx *w = opaque;
  const struct vhdx_priv *p = l->priv;
  uint64_t first = chunk * p->chunk_ratio, i, count, off = 0;
  enum block_state st = BLK_ABSENT;
  int r;

  (void) n;
  count = l->nr_blocks - first < p->chunk_ratio ? l->nr_blocks - first
    : p->chunk_ratio;
  for (i = 0; i < count; i++) {
    if ((r = decode_payload (l, first + i, get_le64 (group + 8 * i),
                             &st, &off)) < 0)
      return r;
    if (st == BLK_FULL && off >= l->file_size)
      st = BLK_ZERO;            /* in the log-extended tail: zeros */
    if (st != BLK_ABSENT && (r = w->fn (w->opaque, first + i, st,
                                        st == BLK_ZERO ? 0 : off)) != 0)
      return r;
  }
  return 0;
}

static int
vhdx_walk (struct layer *l, layer_walk_fn fn, void *opaque)
{
  struct walk_ctx w = { fn, opaque };

  return bat_foreach_chunk (l, walk_chunk, &w);
}

/* The chunk's 1 MiB sector bitmap holds one bit per logical sector,
 * LSB-first like our normal form; block b's bits start at bit
 * (b mod chunk_ratio) * sectors-per-block, always on a byte boundary. */
static int
vhdx_bitmap (struct layer *l, uint64_t block, uint64_t data_off,
             uint8_t *bits)
{
  const struct vhdx_priv *p = l->priv;
  uint64_t bytes = l->block_size / l->sector / 8;
  uint64_t sb = block < l->nr_blocks ? p->sb[block / p->chunk_ratio] : 0;

  (void) data_off;
  if (!sb)
    return vc_error (EINVAL, "%s: block %" PRIu64 ": no sector bitmap block",
                     l->path, block);
  return vhdx_read (l, &p->ov, bits, bytes,
                    sb + block % p->chunk_ratio * bytes, "sector bitmap");
}

static void
priv_free (struct vhdx_priv *p)
{
  if (!p)
    return;
  vhdx_overlay_free (&p->ov);
  free (p->sb);
  free (p);
}

static void
vhdx_close (struct layer *l)
{
  priv_free (l->priv);
  l->priv = NULL;
}

static const struct layer_ops vhdx_ops = {
  .walk = vhdx_walk,
  .bitmap = vhdx_bitmap,
  .close = vhdx_close,
};

/* ---- open ---- */

/* 1 if the file starts with "vhdxfile", 0 if not: probing must not fail
 * on short or foreign files, vhd_open gets them next. */
static int
probe (struct layer *l)
{
  char sig[8];

  if (l->file_size < 8 || layer_pread (l, sig, 8, 0, "file identifier") < 0)
    return 0;
  return memcmp (sig, "vhdxfile", 8) == 0;
}

static int
open_steps (struct open_ctx *c)
{
  int r;

  if ((r = read_creator (c)) < 0 || (r = read_headers (c)) < 0)
    return r;
  if ((r = vhdx_log_replay (c->l, &c->hdr, &c->p->ov)) < 0)
    return r;
  if ((r = read_region_table (c)) < 0 || (r = read_metadata (c)) < 0
      || (r = set_geometry (c)) < 0 || (r = read_parent_locator (c)) < 0)
    return r;
  return validate_bat (c);
}

int
vhdx_open (struct layer *l, const struct layer_opts *opts)
{
  static const struct layer_opts defaults;
  struct open_ctx c = { .l = l, .opts = opts ? opts : &defaults };
  int r;

  if ((r = probe (l)) <= 0)
    return r;
  if (!(c.p = calloc (1, sizeof *c.p)))
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  l->format = FMT_VHDX;
  l->priv = c.p;
  r = open_steps (&c);
  free (c.regions);
  free (c.claimed);
  free (c.logged);
  if (r < 0) {
    priv_free (c.p);
    l->priv = NULL;
    return r;
  }
  l->ops = &vhdx_ops;
  return 1;
}
