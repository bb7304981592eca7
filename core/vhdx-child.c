/* vhdchain core: a VHDX differencing child that we write (FORMATS.md 3.10;
 * the contract is core/child.h).
 *
 * Layout, as Windows lays out a new AVHDX:
 *
 *   0          file identifier "vhdxfile", creator "vhdchain"
 *   64 KiB     header 1          128 KiB   header 2
 *   192 KiB    region table      256 KiB   its copy
 *   1 MiB      log, 1 MiB, never written (LogGuid stays zero)
 *   2 MiB      metadata: File Parameters (2 MiB blocks, HasParent), copies
 *              of the parent's IsVirtualDisk items (size, disk id, sector
 *              sizes, any such user items), the parent locator
 *              (parent_linkage, relative_path, absolute_win32_path)
 *   3 MiB      BAT, all NOT_PRESENT (zeros): a hole until used
 *   then       payload blocks and 1 MiB sector-bitmap blocks, 1 MiB
 *              aligned, appended as they are needed
 *
 * Crash safety without the log.  MS-VHDX routes metadata updates through
 * the log because an update may in general need several writes to become
 * visible at once.  Ours never does, so we update in place, in an order in
 * which every state a crash can leave behind is valid and shows, per
 * sector, old or new data:
 *
 *  - alloc() moves the end of the file (ftruncate): the new payload block
 *    and, when its chunk has none yet, a 1 MiB sector-bitmap block read as
 *    zeros and nothing points at them; a crash leaves orphan space.  When
 *    the chunk's bitmap block exists already, alloc() zeroes the block's
 *    range in it: bits left there by an earlier life of the block (a crash
 *    between bitmap and BAT writes, another writer) would otherwise point
 *    into the new block's unwritten sectors.
 *  - overlay.c syncs the data (and with it the new file size and those
 *    zeroed ranges) before it calls commit(), and every bit in the snapshot
 *    commit() gets refers to sectors whose data is in that sync; bits only
 *    ever grow, and a block's data never moves once its entry is written.
 *  - commit() writes, in this order:
 *      1. the sector-bitmap bytes of each block (the block's whole range,
 *         in its chunk's bitmap block).  Whatever part of them reaches the
 *         disk, each bit is its old or its new value, and both are true:
 *         a new bit points at durable data, an old one was true before.  A
 *         block whose BAT entry still says NOT_PRESENT ignores them anyway.
 *      2. the SB_BLOCK_PRESENT entry of each chunk whose bitmap block is
 *         new, then fdatasync: a reader refuses a PARTIALLY_PRESENT block
 *         whose chunk has no bitmap block, so that entry must be durable
 *         before any such block entry.  It points at a block whose size is
 *         durable (the first sync) and whose content is zeros or bits as in
 *         step 1.  This extra sync happens once per chunk (4 GiB of disk
 *         with 512-byte sectors, 32 GiB with 4096) in the life of the file.
 *      3. the payload BAT entries: PARTIALLY_PRESENT, or FULLY_PRESENT when
 *         every sector of the block (below the virtual size) is set.  An
 *         entry is 8 aligned bytes inside one sector, so it is either old
 *         or new: NOT_PRESENT (the parent, as before the block existed),
 *         PARTIALLY_PRESENT (sectors per the bitmap, each old or new), or
 *         FULLY_PRESENT (only written when every sector is durable data).
 *    overlay.c syncs again before the flush completes.
 *  No write ever needs another write to be meaningful, which is exactly the
 *  case the log exists for, so the log region stays empty and LogGuid zero:
 *  the file is always "clean" to Hyper-V, QEMU and libvhdi.
 *
 * Headers change twice: at creation, and when a kept layer is attached for
 * writing.  Attaching renews FileWriteGuid and DataWriteGuid (MS-VHDX 2.2.2:
 * before the first user-visible change, so that a child made of the kept
 * layer meanwhile is orphaned, not corrupted) the safe way: the header that
 * is not current is written with SequenceNumber + 1 and synced, then the
 * other with + 2 and synced; a crash between leaves one valid, current
 * header.  A kept layer whose current header names a log (Hyper-V opened
 * it and stopped hard) has the log replayed in place first, synced, and
 * the new headers then carry LogGuid zero (MS-VHDX 2.3.3).
 *
 * The same operations serve a merge (vhdchain merge) into any VHDX:
 * vhdx_attach takes a fixed, dynamic or differencing file, with the
 * DataWriteGuid the caller chose.  In a file without a parent there are no
 * sector bitmaps and no PARTIALLY_PRESENT (MS-VHDX 2.5.1): alloc() only
 * extends the file, and commit() writes FULLY_PRESENT entries, for blocks
 * the caller wrote whole (all bits set), and refuses anything else.  Its
 * sector-bitmap BAT entries are never read or written.
 *
 * vhdx_relink keeps a child linked across that renewal.  A child names its
 * parent's DataWriteGuid in parent_linkage and, optionally,
 * parent_linkage2 (which exists for merges); the one that does not name
 * the current DataWriteGuid is set to the next one before the parent's
 * headers change, so at every moment one of them names the parent.  The
 * child's own FileWriteGuid is renewed first (its headers as above); its
 * DataWriteGuid stays, the disk it shows being unchanged.  A value of the
 * same length is rewritten in place (a torn write leaves a GUID that names
 * nothing, while the other linkage still holds); a locator without the key
 * (ours has none) is rebuilt in free space after every metadata item,
 * synced, and only then its 8-byte table entry (offset, length, inside one
 * sector) is pointed at it, synced: old or new, a valid locator.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "byteorder.h"
#include "child.h"
#include "crc32c.h"
#include "error.h"
#include "guid.h"
#include "io.h"
#include "utf16.h"
#include "vhdx.h"

#define CHILD_BLOCK   (UINT32_C (2) << 20)
#define LOG_OFF       VHDX_MiB
#define LOG_LEN       VHDX_MiB
#define MD_OFF        (2 * (uint64_t) VHDX_MiB)
#define ALIGN(x, a)   (((x) + (a) - 1) / (a) * (a))
#define CREATOR       "vhdchain"
#define MAX_ITEMS     64

struct vhdx_child {
  char *path;                   /* for messages */
  uint32_t chunk_ratio;
  uint64_t nr_chunks;
  uint64_t bat_off;
  uint64_t eof;                 /* 1 MiB aligned end of the file */
  uint64_t *sb;                 /* per chunk: its bitmap block, 0 none yet */
  bool *sb_on_disk;             /* per chunk: BAT says SB_BLOCK_PRESENT */
  bool differencing;            /* false: whole blocks, no sector bitmaps */
};

/* A random GUID, version 4, in VHDX's raw mixed-endian byte order. */
void
vhdx_new_guid (uint8_t raw[16])
{
  uuid_t u;

  uuid_generate_random (u);
  raw[0] = u[3]; raw[1] = u[2]; raw[2] = u[1]; raw[3] = u[0];
  raw[4] = u[5]; raw[5] = u[4];
  raw[6] = u[7]; raw[7] = u[6];
  memcpy (raw + 8, u + 8, 8);
}

static void
set_crc (uint8_t *buf, size_t len)
{
  put_le32 (buf + 4, 0);
  put_le32 (buf + 4, crc32c (buf, len));
}

static int
fail (const char *path, int r, const char *what)
{
  return vc_error (-r, "%s: %s: %s", path, what, strerror (-r));
}

/* ---- the child operations ------------------------------------------ */

static int
vhdx_child_alloc (struct child *c, uint64_t block, uint64_t *data_off)
{
  static const uint8_t zeros[4096];
  struct vhdx_child *v = c->priv;
  uint64_t chunk = block / v->chunk_ratio;
  uint64_t bytes = c->block_size / c->sector / 8;
  uint64_t data = v->eof, end = data + c->block_size, sb = 0;
  int r;

  /* The block's range of an existing bitmap block may hold bits from an
   * earlier life of the block (a session that crashed between bitmap and
   * BAT, or another writer): zero them, durable with the data, so that
   * whatever order commit()'s bitmap and entry reach the disk in, no bit
   * points into the new block's unwritten sectors.  A file without a
   * parent has no sector bitmaps. */
  if (!v->differencing)
    ;
  else if (v->sb[chunk]) {
    for (uint64_t k = 0; k < bytes; k += sizeof zeros)
      if ((r = io_pwrite_full (c->fd, zeros, bytes - k < sizeof zeros
                               ? bytes - k : sizeof zeros,
                               v->sb[chunk] + block % v->chunk_ratio * bytes
                               + k)) < 0)
        return fail (v->path, r, "clearing a sector bitmap range");
  }
  else {
    sb = end;
    end += VHDX_SB_BLOCK_SIZE;
  }
  if (ftruncate (c->fd, end) == -1)
    return fail (v->path, -errno, "extending the file for a new block");
  if (sb)
    v->sb[chunk] = sb;
  v->eof = end;
  *data_off = data;
  return 0;
}

/* Are all the block's sectors below the virtual size set? */
static bool
all_set (const struct child *c, uint64_t block, const uint8_t *bits)
{
  uint64_t left = c->size - block * c->block_size;
  uint64_t n = (left < c->block_size ? left : c->block_size) / c->sector;

  for (uint64_t i = 0; i < n / 8; i++)
    if (bits[i] != 0xFF)
      return false;
  for (uint64_t i = n / 8 * 8; i < n; i++)
    if (!(bits[i >> 3] & (1u << (i & 7))))
      return false;
  return true;
}

static int
write_entry (struct child *c, uint64_t index, uint64_t entry)
{
  struct vhdx_child *v = c->priv;
  uint8_t e[8];

  put_le64 (e, entry);
  return io_pwrite_full (c->fd, e, 8, v->bat_off + index * 8);
}

/* A file without a parent: FULLY_PRESENT is the only state that holds
 * data (PARTIALLY_PRESENT is invalid there), so every block committed must
 * have all its sectors set: its writer wrote it whole. */
static int
commit_whole (struct child *c, const struct child_dirty *d, size_t n)
{
  struct vhdx_child *v = c->priv;
  int r = 0;

  for (size_t i = 0; i < n; i++)
    if (!all_set (c, d[i].block, d[i].bits))
      return vc_error (EINVAL, "%s: block %" PRIu64 ": a VHDX without a "
                       "parent holds whole blocks only", v->path,
                       d[i].block);
  for (size_t i = 0; i < n && r == 0; i++) {
    uint64_t b = d[i].block;
    r = write_entry (c, b + b / v->chunk_ratio,
                     (d[i].data_off / VHDX_MiB) << 20 |
                     VHDX_PAYLOAD_FULLY_PRESENT);
  }
  return r < 0 ? fail (v->path, r, "writing the BAT") : 0;
}

static int
vhdx_child_commit (struct child *c, const struct child_dirty *d, size_t n)
{
  struct vhdx_child *v = c->priv;
  uint64_t bytes = c->block_size / c->sector / 8, group = v->chunk_ratio + 1;
  bool new_sb = false;
  int r = 0;

  if (!v->differencing)
    return commit_whole (c, d, n);
  /* 1. Sector bitmaps (LSB-first on disk, as in the snapshot). */
  for (size_t i = 0; i < n && r == 0; i++) {
    uint64_t chunk = d[i].block / v->chunk_ratio;
    if (v->sb[chunk])
      r = io_pwrite_full (c->fd, d[i].bits, bytes, v->sb[chunk] +
                          d[i].block % v->chunk_ratio * bytes);
    else if (!all_set (c, d[i].block, d[i].bits))
      r = -EIO;                 /* alloc always gives a chunk its block */
  }
  /* 2. New sector-bitmap blocks, durable before any block needs them. */
  for (size_t i = 0; i < n && r == 0; i++) {
    uint64_t chunk = d[i].block / v->chunk_ratio;
    if (v->sb[chunk] && !v->sb_on_disk[chunk]) {
      r = write_entry (c, chunk * group + v->chunk_ratio,
                       (v->sb[chunk] / VHDX_MiB) << 20 | VHDX_SB_PRESENT);
      v->sb_on_disk[chunk] = r == 0;
      new_sb = true;
    }
  }
  if (r == 0 && new_sb && fdatasync (c->fd) == -1) {
    r = -errno;
    /* Not known to be durable: a retry writes and syncs them again. */
    for (size_t i = 0; i < n; i++)
      v->sb_on_disk[d[i].block / v->chunk_ratio] = false;
  }
  /* 3. The blocks' entries. */
  for (size_t i = 0; i < n && r == 0; i++) {
    uint64_t b = d[i].block;
    unsigned state = all_set (c, b, d[i].bits)
      ? VHDX_PAYLOAD_FULLY_PRESENT : VHDX_PAYLOAD_PARTIALLY_PRESENT;
    r = write_entry (c, b + b / v->chunk_ratio,
                     (d[i].data_off / VHDX_MiB) << 20 | state);
  }
  return r < 0 ? fail (v->path, r, "writing sector bitmaps and BAT") : 0;
}

static void
vhdx_child_close (struct child *c)
{
  struct vhdx_child *v = c->priv;

  if (v) {
    free (v->path);
    free (v->sb);
    free (v->sb_on_disk);
    free (v);
  }
  c->priv = NULL;
}

static const struct child_ops vhdx_child_ops = {
  .alloc = vhdx_child_alloc,
  .commit = vhdx_child_commit,
  .close = vhdx_child_close,
};

static struct vhdx_child *
new_state (struct child *c, const char *path, uint64_t size, uint32_t sector,
           uint32_t block_size)
{
  struct vhdx_child *v = calloc (1, sizeof *v);

  c->ops = &vhdx_child_ops;
  c->size = size;
  c->sector = sector;
  c->block_size = block_size;
  c->nr_blocks = (size + block_size - 1) / block_size;
  c->priv = v;
  if (!v)
    return NULL;
  v->differencing = true;
  v->chunk_ratio = (UINT64_C (1) << 23) * sector / block_size;
  v->nr_chunks = (c->nr_blocks + v->chunk_ratio - 1) / v->chunk_ratio;
  v->path = strdup (path);
  v->sb = calloc (v->nr_chunks + 1, sizeof *v->sb);
  v->sb_on_disk = calloc (v->nr_chunks + 1, sizeof *v->sb_on_disk);
  if (!v->path || !v->sb || !v->sb_on_disk) {
    vhdx_child_close (c);
    return NULL;
  }
  return v;
}

/* ---- headers ------------------------------------------------------- */

struct hdr {
  uint64_t seq;
  uint8_t file_write[16], data_write[16], log_guid[16];
  uint32_t log_length;
  uint64_t log_offset;
};

static void
make_header (uint8_t *b, const struct hdr *h)
{
  memset (b, 0, VHDX_HEADER_SIZE);
  memcpy (b, "head", 4);
  put_le64 (b + 8, h->seq);
  memcpy (b + 16, h->file_write, 16);
  memcpy (b + 32, h->data_write, 16);
  memcpy (b + 48, h->log_guid, 16);
  put_le16 (b + 64, 0);                 /* LogVersion */
  put_le16 (b + 66, 1);                 /* Version */
  put_le32 (b + 68, h->log_length);
  put_le64 (b + 72, h->log_offset);
  set_crc (b, VHDX_HEADER_SIZE);
}

/* The current header of raw header slots buf[2] (MS-VHDX 2.2.2): the valid
 * one with the larger SequenceNumber.  The file opened as a layer, so one
 * is valid, unless checksums were ignored: then the signature decides. */
static int
pick_header (uint8_t buf[2][VHDX_HEADER_SIZE], struct vhdx_header h[2])
{
  bool ok[2];

  for (int i = 0; i < 2; i++) {
    vhdx_header_decode (buf[i], &h[i]);
    ok[i] = h[i].signature_ok && vhdx_checksum_ok (buf[i], VHDX_HEADER_SIZE);
  }
  if (!ok[0] && !ok[1])
    for (int i = 0; i < 2; i++)
      ok[i] = h[i].signature_ok;
  if (ok[0] && ok[1])
    return h[1].seq > h[0].seq ? 1 : 0;
  return ok[0] ? 0 : ok[1] ? 1 : -1;
}

/* ---- what the parent says about the virtual disk --------------------- */

struct item {
  uint8_t guid[16];
  uint32_t flags, len;
  uint8_t *data;
};

struct items {
  struct item it[MAX_ITEMS];
  size_t n;
};

static void
items_free (struct items *its)
{
  for (size_t i = 0; i < its->n; i++)
    free (its->it[i].data);
  its->n = 0;
}

static bool
is_known (const uint8_t *g)
{
  return memcmp (g, vhdx_guid_virtual_disk_size, 16) == 0 ||
         memcmp (g, vhdx_guid_virtual_disk_id, 16) == 0 ||
         memcmp (g, vhdx_guid_logical_sector_size, 16) == 0 ||
         memcmp (g, vhdx_guid_physical_sector_size, 16) == 0;
}

/* Region guid in the two region table copies rt (2 x 64 KiB): the first
 * copy with a valid CRC that has it, else the first with the signature. */
static void
region_in (const uint8_t *rt, const uint8_t *guid, uint64_t *off,
           uint32_t *len)
{
  for (int pass = 0; pass < 2 && !*len; pass++)
    for (int k = 0; k < 2 && !*len; k++) {
      const uint8_t *b = rt + k * VHDX_RT_SIZE;
      struct vhdx_rt_header rh;

      vhdx_rt_header_decode (b, &rh);
      if (!rh.signature_ok || rh.entry_count > VHDX_RT_MAX_ENTRIES ||
          (pass == 0 && !vhdx_checksum_ok (b, VHDX_RT_SIZE)))
        continue;
      for (uint32_t i = 0; i < rh.entry_count; i++) {
        struct vhdx_region g;
        vhdx_region_decode (b + VHDX_RT_HEADER_SIZE + i * VHDX_RT_ENTRY_SIZE,
                            &g);
        if (memcmp (g.guid, guid, 16) == 0) {
          *off = g.offset;
          *len = g.length;
        }
      }
    }
}

/* The parent's metadata items a child must copy (MS-VHDX 2.6.1.2): every
 * IsVirtualDisk item, and the four system ones whatever their flags.  Read
 * through the parent's log, replayed in memory as the reader did. */
static int
parent_items (const struct layer *l, struct items *its)
{
  uint8_t hb[2][VHDX_HEADER_SIZE], *rt = NULL, *t = NULL;
  struct vhdx_header h[2];
  struct vhdx_overlay ov = { 0 };
  struct vhdx_md_header mh = { 0 };
  uint64_t md_off = 0;
  uint32_t md_len = 0;
  int cur, r;

  if ((r = layer_pread (l, hb[0], VHDX_HEADER_SIZE, VHDX_HEADER1_OFF,
                        "header 1")) < 0 ||
      (r = layer_pread (l, hb[1], VHDX_HEADER_SIZE, VHDX_HEADER2_OFF,
                        "header 2")) < 0)
    return r;
  if ((cur = pick_header (hb, h)) < 0)
    return vc_error (EINVAL, "%s: no valid header", l->path);
  if ((r = vhdx_log_replay (l, &h[cur], &ov)) < 0)
    return r;
  if (!(rt = malloc (2 * VHDX_RT_SIZE)) || !(t = malloc (VHDX_MD_TABLE_SIZE)))
    r = -ENOMEM;
  if (r == 0)
    r = vhdx_read (l, &ov, rt, 2 * VHDX_RT_SIZE, VHDX_RT1_OFF,
                   "region table");
  if (r == 0)
    region_in (rt, vhdx_guid_metadata, &md_off, &md_len);
  if (r == 0 && !md_len)
    r = vc_error (EINVAL, "%s: region table: no metadata region", l->path);
  if (r == 0)
    r = vhdx_read (l, &ov, t, VHDX_MD_TABLE_SIZE, md_off, "metadata table");
  if (r == 0)
    vhdx_md_header_decode (t, &mh);
  for (uint32_t i = 0; r == 0 && i < mh.entry_count && i < VHDX_MD_MAX_ENTRIES;
       i++) {
    struct vhdx_md_entry e;
    struct item *it;
    vhdx_md_entry_decode (t + VHDX_MD_HEADER_SIZE + i * VHDX_MD_ENTRY_SIZE,
                          &e);
    if (!(e.flags & VHDX_MD_IS_VIRTUAL_DISK) &&
        ((e.flags & VHDX_MD_IS_USER) || !is_known (e.item_id)))
      continue;
    if (memcmp (e.item_id, vhdx_guid_file_parameters, 16) == 0 ||
        memcmp (e.item_id, vhdx_guid_parent_locator, 16) == 0)
      continue;                 /* ours are our own */
    if (its->n == MAX_ITEMS) {
      r = vc_error (ENOTSUP, "%s: metadata: more than %d virtual disk items",
                    l->path, MAX_ITEMS);
      break;
    }
    it = &its->it[its->n];
    memcpy (it->guid, e.item_id, 16);
    it->flags = e.flags;
    it->len = e.length;
    if (!(it->data = malloc (e.length ? e.length : 1)))
      r = -ENOMEM;
    else {
      its->n++;
      if (e.length)
        r = vhdx_read (l, &ov, it->data, e.length, md_off + e.offset,
                       "metadata item");
    }
  }
  vhdx_overlay_free (&ov);
  free (rt);
  free (t);
  if (r == -ENOMEM)
    r = vc_error (ENOMEM, "%s: out of memory", l->path);
  return r;
}

/* ---- creating -------------------------------------------------------- */

/* UTF-16LE key/value pairs of the parent locator item (MS-VHDX 2.6.2.6). */
static long
make_locator (uint8_t *out, size_t max, const char *const kv[][2], size_t n)
{
  size_t at = VHDX_PL_HEADER_SIZE + n * VHDX_PL_ENTRY_SIZE;

  if (at > max)
    return -ENAMETOOLONG;
  memset (out, 0, at);
  memcpy (out, vhdx_guid_locator_type_vhdx, 16);
  put_le16 (out + 18, n);
  for (size_t i = 0; i < n; i++) {
    uint8_t *e = out + VHDX_PL_HEADER_SIZE + i * VHDX_PL_ENTRY_SIZE;
    for (int k = 0; k < 2; k++) {
      long len = utf8_to_utf16 (kv[i][k], false, out + at, max - at);
      if (len < 0)
        return len;
      if (len > 0xFFFF)
        return -ENAMETOOLONG;
      put_le32 (e + 4 * k, at);
      put_le16 (e + 8 + 2 * k, len);
      at += len;
    }
  }
  return at;
}

/* The metadata region: table at 0, items from 64 KiB.  Returns its length
 * (a multiple of 1 MiB) and the region in *out. */
static int
make_metadata (const struct parent_ref *p, const char *child_path,
               const struct items *its, uint8_t **out, uint32_t *out_len)
{
  char linkage[GUID_TEXT_LEN + 3];
  char *rel = child_relative_path (child_path, p->path);
  char *abs = child_absolute_path (p->path, p->drives, p->nr_drives);
  const char *kv[3][2] = { { "parent_linkage", linkage },
                           { "relative_path", rel },
                           { "absolute_win32_path", abs } };
  uint8_t *loc = malloc (VHDX_MD_ITEM_MAX), *md = NULL;
  uint64_t total = VHDX_MD_TABLE_SIZE + 16;
  long loc_len = 0;
  uint32_t len, at, n = 0;
  int r = rel && abs && loc ? 0 : -ENOMEM;

  linkage[0] = '{';
  guid_format (p->layer->id, linkage + 1);
  strcpy (linkage + 1 + GUID_TEXT_LEN, "}");
  if (r == 0 && (loc_len = make_locator (loc, VHDX_MD_ITEM_MAX, kv, 3)) < 0)
    r = loc_len;
  if (r == 0) {
    for (size_t i = 0; i < its->n; i++)
      total += ALIGN (its->it[i].len, 16);
    total += ALIGN ((uint64_t) loc_len, 16);
    len = ALIGN (total, VHDX_MiB);
    if (!(md = calloc (1, len)))
      r = -ENOMEM;
  }
  if (r == 0) {
    uint8_t *e;
    memcpy (md, "metadata", 8);
    at = VHDX_MD_TABLE_SIZE;
    /* File Parameters: 2 MiB blocks, HasParent; IsRequired. */
    e = md + VHDX_MD_HEADER_SIZE + n++ * VHDX_MD_ENTRY_SIZE;
    memcpy (e, vhdx_guid_file_parameters, 16);
    put_le32 (e + 16, at);
    put_le32 (e + 20, 8);
    put_le32 (e + 24, VHDX_MD_IS_REQUIRED);
    put_le32 (md + at, CHILD_BLOCK);
    put_le32 (md + at + 4, VHDX_FP_HAS_PARENT);
    at += 16;
    for (size_t i = 0; i < its->n; i++) {
      e = md + VHDX_MD_HEADER_SIZE + n++ * VHDX_MD_ENTRY_SIZE;
      memcpy (e, its->it[i].guid, 16);
      put_le32 (e + 16, its->it[i].len ? at : 0);
      put_le32 (e + 20, its->it[i].len);
      put_le32 (e + 24, its->it[i].flags);
      memcpy (md + at, its->it[i].data, its->it[i].len);
      at += ALIGN (its->it[i].len, 16);
    }
    e = md + VHDX_MD_HEADER_SIZE + n++ * VHDX_MD_ENTRY_SIZE;
    memcpy (e, vhdx_guid_parent_locator, 16);
    put_le32 (e + 16, at);
    put_le32 (e + 20, loc_len);
    put_le32 (e + 24, VHDX_MD_IS_REQUIRED);
    memcpy (md + at, loc, loc_len);
    put_le16 (md + 10, n);
    *out = md;
    *out_len = len;
  }
  free (rel);
  free (abs);
  free (loc);
  return r;
}

static void
make_region_table (uint8_t *b, uint64_t md_off, uint32_t md_len,
                   uint64_t bat_off, uint32_t bat_len)
{
  memset (b, 0, VHDX_RT_SIZE);
  memcpy (b, "regi", 4);
  put_le32 (b + 8, 2);
  memcpy (b + 16, vhdx_guid_bat, 16);
  put_le64 (b + 32, bat_off);
  put_le32 (b + 40, bat_len);
  put_le32 (b + 44, 1);
  memcpy (b + 48, vhdx_guid_metadata, 16);
  put_le64 (b + 64, md_off);
  put_le32 (b + 72, md_len);
  put_le32 (b + 76, 1);
  set_crc (b, VHDX_RT_SIZE);
}

/* File identifier, headers and region tables: the first MiB. */
void
vhdx_make_first_mib (uint8_t *m, uint64_t md_off, uint32_t md_len,
                     uint64_t bat_off, uint32_t bat_len)
{
  struct hdr h = { .log_length = LOG_LEN, .log_offset = LOG_OFF };

  memcpy (m, "vhdxfile", 8);
  utf8_to_utf16 (CREATOR, false, m + VHDX_CREATOR_OFF, VHDX_CREATOR_SIZE);
  vhdx_new_guid (h.file_write);
  vhdx_new_guid (h.data_write);
  /* Both headers, consecutive numbers, as Windows writes them. */
  h.seq = 1;
  make_header (m + VHDX_HEADER1_OFF, &h);
  h.seq = 2;
  make_header (m + VHDX_HEADER2_OFF, &h);
  make_region_table (m + VHDX_RT1_OFF, md_off, md_len, bat_off, bat_len);
  memcpy (m + VHDX_RT2_OFF, m + VHDX_RT1_OFF, VHDX_RT_SIZE);
}

int
vhdx_child_create (int fd, const char *path, const struct parent_ref *p,
                   struct child **out)
{
  const struct layer *parent = p->layer;
  struct child *c = calloc (1, sizeof *c);
  struct vhdx_child *v = c ? new_state (c, path, parent->size, parent->sector,
                                        CHILD_BLOCK) : NULL;
  struct items its = { .n = 0 };
  uint8_t *first = NULL, *md = NULL;
  uint32_t md_len = 0;
  uint64_t bat_len = 0;
  int r = v ? 0 : vc_error (ENOMEM, "%s: out of memory", path);

  if (r == 0 && parent->format != FMT_VHDX)
    r = vc_error (EINVAL, "%s: a VHDX child needs a VHDX parent", path);
  if (r == 0)
    r = parent_items (parent, &its);    /* its messages name the parent */
  if (r == 0 && (r = make_metadata (p, path, &its, &md, &md_len)) < 0)
    r = fail (path, r, "creating the child");
  if (r == 0) {
    bat_len = ALIGN (v->nr_chunks * (v->chunk_ratio + 1) * 8, VHDX_MiB);
    if (bat_len > UINT32_MAX)
      r = fail (path, -EFBIG, "creating the child");
  }
  if (r == 0 && !(first = calloc (1, VHDX_MiB)))
    r = vc_error (ENOMEM, "%s: out of memory", path);
  if (r == 0) {
    c->fd = fd;
    v->bat_off = MD_OFF + md_len;
    v->eof = v->bat_off + bat_len;
    vhdx_make_first_mib (first, MD_OFF, md_len, v->bat_off, bat_len);
    r = io_pwrite_full (fd, md, md_len, MD_OFF);
    /* The BAT is all NOT_PRESENT: zeros, so a hole will do. */
    if (r == 0 && ftruncate (fd, v->eof) == -1)
      r = -errno;
    if (r == 0)
      r = io_pwrite_full (fd, first, VHDX_MiB, 0);
    if (r == 0 && fsync (fd) == -1)
      r = -errno;
    if (r < 0)
      r = fail (path, r, "writing the new child");
  }
  items_free (&its);
  free (first);
  free (md);
  if (r < 0) {
    if (c)
      vhdx_child_close (c);
    free (c);
    return r;
  }
  *out = c;
  return 0;
}

/* ---- attaching a kept layer ------------------------------------------ */

/* Apply the log the reader replayed in memory to the file itself, so that
 * the file can be written in place (MS-VHDX 2.3.3).  Until the headers say
 * LogGuid zero, a crash just replays again. */
static int
replay_in_place (int fd, struct layer *l, const struct vhdx_header *h)
{
  static const uint8_t zeros[4096];
  struct vhdx_overlay ov = { 0 };
  int r = vhdx_log_replay (l, h, &ov);

  if (r < 0)
    return r;
  if (ov.logical_size > l->file_size && ftruncate (fd, ov.logical_size) == -1)
    r = -errno;
  for (size_t i = 0; i < ov.n && r == 0; i++) {
    const struct vhdx_extent *x = &ov.ext[i];
    if (x->data)
      r = io_pwrite_full (fd, x->data, x->len, x->off);
    else
      for (uint64_t k = 0; k < x->len && r == 0; k += sizeof zeros)
        r = io_pwrite_full (fd, zeros, x->len - k < sizeof zeros
                            ? x->len - k : sizeof zeros, x->off + k);
  }
  if (r == 0 && fdatasync (fd) == -1)
    r = -errno;
  vc_debug ("%s: replayed %zu log extents in place", l->path, ov.n);
  vhdx_overlay_free (&ov);
  return r < 0 ? fail (l->path, r, "replaying the log in place") : 0;
}

/* Where region guid is, from the first region table copy with a valid CRC
 * (or, failing that, signature). */
static int
find_region (int fd, const char *path, const uint8_t *guid, const char *name,
             uint64_t *off, uint32_t *len)
{
  uint8_t *rt = malloc (2 * VHDX_RT_SIZE);
  int r = rt ? io_pread_full (fd, rt, 2 * VHDX_RT_SIZE, VHDX_RT1_OFF)
             : -ENOMEM;

  *off = 0;
  *len = 0;
  if (r == 0)
    region_in (rt, guid, off, len);
  free (rt);
  if (r == 0 && !*off)
    return vc_error (EINVAL, "%s: region table: no %s region", path, name);
  return r < 0 ? fail (path, r, "reading the region table") : 0;
}

/* New FileWriteGuid, DataWriteGuid data_write, LogGuid zero: the other
 * header first, synced, then the current one. */
static int
renew_headers (int fd, const char *path, uint8_t hb[2][VHDX_HEADER_SIZE],
               const struct vhdx_header h[2], int cur,
               const uint8_t data_write[16])
{
  static const uint64_t where[2] = { VHDX_HEADER1_OFF, VHDX_HEADER2_OFF };
  struct hdr n = { .seq = h[cur].seq, .log_length = h[cur].log_length,
                   .log_offset = h[cur].log_offset };
  int r = 0;

  vhdx_new_guid (n.file_write);
  memcpy (n.data_write, data_write, 16);
  for (int k = 0; k < 2 && r == 0; k++) {
    int slot = k == 0 ? 1 - cur : cur;
    n.seq++;
    make_header (hb[slot], &n);
    r = io_pwrite_full (fd, hb[slot], VHDX_HEADER_SIZE, where[slot]);
    if (r == 0 && fdatasync (fd) == -1)
      r = -errno;
  }
  return r < 0 ? fail (path, r, "writing the headers") : 0;
}

/* Both headers of fd, which is the file of l, and the current one; a log
 * the current header names is replayed into the file first. */
static int
open_headers (int fd, struct layer *l, uint8_t hb[2][VHDX_HEADER_SIZE],
              struct vhdx_header h[2], int *cur)
{
  int r;

  if ((r = io_pread_full (fd, hb[0], VHDX_HEADER_SIZE,
                          VHDX_HEADER1_OFF)) < 0 ||
      (r = io_pread_full (fd, hb[1], VHDX_HEADER_SIZE,
                          VHDX_HEADER2_OFF)) < 0)
    return fail (l->path, r, "reading the headers");
  if ((*cur = pick_header (hb, h)) < 0)
    return vc_error (EINVAL, "%s: no valid header", l->path);
  if (!guid_is_zero (h[*cur].log_guid))
    return replay_in_place (fd, l, &h[*cur]);
  return 0;
}

int
vhdx_attach (int fd, struct layer *l, const uint8_t *data_write,
             struct child **out)
{
  struct child *c = calloc (1, sizeof *c);
  struct vhdx_child *v = c ? new_state (c, l->path, l->size, l->sector,
                                        l->block_size) : NULL;
  uint8_t hb[2][VHDX_HEADER_SIZE], dw[16];
  struct vhdx_header h[2];
  uint64_t group, size;
  uint32_t bat_len;
  off_t end;
  int cur = -1, r = v ? 0 : vc_error (ENOMEM, "%s: out of memory", l->path);

  if (r == 0) {
    c->fd = fd;
    v->differencing = l->differencing;
    r = open_headers (fd, l, hb, h, &cur);
  }
  if (r == 0)
    r = find_region (fd, l->path, vhdx_guid_bat, "BAT", &v->bat_off,
                     &bat_len);
  /* Which chunks of a child have a sector-bitmap block already.  A file
   * without a parent never uses those entries (they may hold anything,
   * FORMATS.md 3.6), and its BAT may end before the last one. */
  group = v ? v->chunk_ratio + 1 : 0;
  for (uint64_t k = 0; r == 0 && v->differencing && k < v->nr_chunks; k++) {
    uint8_t e[8];
    uint64_t entry;
    if ((r = io_pread_full (fd, e, 8, v->bat_off +
                            (k * group + v->chunk_ratio) * 8)) < 0) {
      r = fail (l->path, r, "reading the BAT");
      break;
    }
    entry = get_le64 (e);
    if (VHDX_BAT_STATE (entry) == VHDX_SB_PRESENT) {
      v->sb[k] = VHDX_BAT_OFFSET_MB (entry) * VHDX_MiB;
      v->sb_on_disk[k] = true;
    }
  }
  if (r == 0 && (end = lseek (fd, 0, SEEK_END)) == -1)
    r = fail (l->path, -errno, "finding the end of the file");
  if (r == 0) {
    size = ALIGN ((uint64_t) end, VHDX_MiB);
    if ((uint64_t) end != size && ftruncate (fd, size) == -1)
      r = fail (l->path, -errno, "aligning the end of the file");
    v->eof = size;
  }
  /* Before anything a user wrote can change the disk it shows. */
  if (r == 0) {
    if (data_write)
      memcpy (dw, data_write, 16);
    else
      vhdx_new_guid (dw);
    r = renew_headers (fd, l->path, hb, h, cur, dw);
  }
  if (r < 0) {
    if (c)
      vhdx_child_close (c);
    free (c);
    return r;
  }
  *out = c;
  return 0;
}

int
vhdx_child_attach (int fd, struct layer *l, struct child **out)
{
  return vhdx_attach (fd, l, NULL, out);
}

/* ---- relinking a child to its parent's next DataWriteGuid ----------- */

/* One key/value pair of a parent locator item, as stored. */
struct pl_kv {
  struct vhdx_pl_entry e;
  char *key;
  uint8_t id[16];
  bool is_id;                   /* the value is a GUID */
};

static int
pl_parse (const char *path, const uint8_t *item, uint32_t len,
          struct pl_kv *kv, uint16_t n)
{
  for (uint16_t i = 0; i < n; i++) {
    struct vhdx_pl_entry *e = &kv[i].e;
    char *value = NULL;
    vhdx_pl_entry_decode (item + VHDX_PL_HEADER_SIZE + i * VHDX_PL_ENTRY_SIZE,
                          e);
    if (e->key_offset > len || e->key_length > len - e->key_offset ||
        e->value_offset > len || e->value_length > len - e->value_offset ||
        utf16_to_utf8 (item + e->key_offset, e->key_length, false,
                       &kv[i].key) < 0 ||
        utf16_to_utf8 (item + e->value_offset, e->value_length, false,
                       &value) < 0) {
      free (value);
      return vc_error (EINVAL, "%s: parent locator: entry %u is malformed",
                       path, i);
    }
    kv[i].is_id = guid_parse (value, kv[i].id) == 0;
    free (value);
  }
  return 0;
}

/* The locator item with the value of key (added last if missing) set to
 * text; its length in *out_len. */
static int
pl_build (const uint8_t *item, const struct pl_kv *kv, uint16_t n,
          const char *key, int slot, const char *text, uint8_t **out,
          uint32_t *out_len)
{
  uint16_t m = slot < 0 ? n + 1 : n;
  size_t max = VHDX_PL_HEADER_SIZE + (size_t) m * VHDX_PL_ENTRY_SIZE;
  uint32_t at;
  uint8_t *b;

  for (uint16_t i = 0; i < n; i++)
    max += kv[i].e.key_length + kv[i].e.value_length;
  max += 2 * (strlen (key) + strlen (text));
  if (!(b = calloc (1, max)))
    return -ENOMEM;
  memcpy (b, item, VHDX_PL_HEADER_SIZE);
  put_le16 (b + 18, m);
  at = VHDX_PL_HEADER_SIZE + m * VHDX_PL_ENTRY_SIZE;
  for (uint16_t i = 0; i < m; i++) {
    uint8_t *e = b + VHDX_PL_HEADER_SIZE + i * VHDX_PL_ENTRY_SIZE;
    long kl, vl;
    if (i < n) {
      kl = kv[i].e.key_length;
      memcpy (b + at, item + kv[i].e.key_offset, kl);
    }
    else
      kl = utf8_to_utf16 (key, false, b + at, max - at);
    put_le32 (e, at);
    put_le16 (e + 8, kl);
    at += kl;
    if (i == slot || i == n) {
      vl = utf8_to_utf16 (text, false, b + at, max - at);
    }
    else {
      vl = kv[i].e.value_length;
      memcpy (b + at, item + kv[i].e.value_offset, vl);
    }
    put_le32 (e + 4, at);
    put_le16 (e + 10, vl);
    at += vl;
  }
  *out = b;
  *out_len = at;
  return 0;
}

/* Set the locator value of entry slot (or, slot < 0, a new pair) of the
 * locator item described by table entry idx of the metadata region at
 * md_off.  A value of the same length is overwritten in place; otherwise
 * the new item goes into free space after every item, and then the table
 * entry is pointed at it: each single write leaves a valid locator. */
static int
pl_store (int fd, const char *path, uint64_t md_off, uint32_t md_len,
          const uint8_t *table, uint16_t count, uint16_t idx,
          const uint8_t *item, const struct pl_kv *kv, uint16_t n,
          const char *key, int slot, const char *braced)
{
  struct vhdx_md_entry e;
  uint8_t *b = NULL, u[2 * (GUID_TEXT_LEN + 2)];
  uint64_t end = VHDX_MD_TABLE_SIZE;
  uint32_t len = 0;
  int r;

  vhdx_md_entry_decode (table + VHDX_MD_HEADER_SIZE +
                        idx * VHDX_MD_ENTRY_SIZE, &e);
  if (slot >= 0 && (kv[slot].e.value_length == 2 * (GUID_TEXT_LEN + 2) ||
                    kv[slot].e.value_length == 2 * GUID_TEXT_LEN)) {
    const char *text = kv[slot].e.value_length == 2 * GUID_TEXT_LEN
                       ? braced + 1 : braced;
    char bare[GUID_TEXT_LEN + 1];
    if (text != braced) {
      memcpy (bare, text, GUID_TEXT_LEN);
      bare[GUID_TEXT_LEN] = '\0';
      text = bare;
    }
    utf8_to_utf16 (text, false, u, sizeof u);
    r = io_pwrite_full (fd, u, kv[slot].e.value_length,
                        md_off + e.offset + kv[slot].e.value_offset);
    if (r == 0 && fdatasync (fd) == -1)
      r = -errno;
    return r;
  }
  if ((r = pl_build (item, kv, n, key, slot, braced, &b, &len)) < 0)
    return r;
  for (uint16_t i = 0; i < count; i++) {
    struct vhdx_md_entry o;
    vhdx_md_entry_decode (table + VHDX_MD_HEADER_SIZE +
                          i * VHDX_MD_ENTRY_SIZE, &o);
    if (o.length && o.offset + (uint64_t) o.length > end)
      end = o.offset + (uint64_t) o.length;
  }
  end = ALIGN (end, 16);
  if (end + len > md_len || len > VHDX_MD_ITEM_MAX) {
    free (b);
    return vc_error (ENOSPC, "%s: metadata: no room for a parent locator "
                     "of %" PRIu32 " bytes", path, len);
  }
  r = io_pwrite_full (fd, b, len, md_off + end);
  free (b);
  if (r == 0 && fdatasync (fd) == -1)
    r = -errno;
  if (r == 0) {
    uint8_t f[8];
    put_le32 (f, end);
    put_le32 (f + 4, len);
    r = io_pwrite_full (fd, f, 8, md_off + VHDX_MD_HEADER_SIZE +
                        idx * VHDX_MD_ENTRY_SIZE + 16);
  }
  if (r == 0 && fdatasync (fd) == -1)
    r = -errno;
  return r;
}

int
vhdx_relink (int fd, struct layer *l, const uint8_t now[16],
             const uint8_t next[16])
{
  static const char *const keys[2] = { "parent_linkage", "parent_linkage2" };
  uint8_t hb[2][VHDX_HEADER_SIZE], *table = NULL, *item = NULL;
  struct vhdx_header h[2];
  struct vhdx_md_header mh;
  struct pl_kv *kv = NULL;
  char braced[GUID_TEXT_LEN + 3];
  uint64_t md_off = 0;
  uint32_t md_len = 0;
  uint16_t n = 0, idx = 0;
  int cur, r, at[2] = { -1, -1 }, target;
  bool found = false;

  if (!l->differencing)
    return vc_error (EINVAL, "%s: has no parent to relink", l->path);
  if ((r = open_headers (fd, l, hb, h, &cur)) < 0)
    return r;
  /* A new FileWriteGuid before the file changes; the DataWriteGuid stays:
   * the disk the file shows does not change. */
  if ((r = renew_headers (fd, l->path, hb, h, cur,
                          h[cur].data_write_guid)) < 0 ||
      (r = find_region (fd, l->path, vhdx_guid_metadata, "metadata",
                        &md_off, &md_len)) < 0)
    return r;
  if (!(table = malloc (VHDX_MD_TABLE_SIZE)))
    r = -ENOMEM;
  else
    r = io_pread_full (fd, table, VHDX_MD_TABLE_SIZE, md_off);
  if (r == 0) {
    vhdx_md_header_decode (table, &mh);
    for (uint16_t i = 0; i < mh.entry_count && i < VHDX_MD_MAX_ENTRIES &&
           !found; i++) {
      struct vhdx_md_entry e;
      vhdx_md_entry_decode (table + VHDX_MD_HEADER_SIZE +
                            i * VHDX_MD_ENTRY_SIZE, &e);
      if (memcmp (e.item_id, vhdx_guid_parent_locator, 16) == 0 &&
          !(e.flags & VHDX_MD_IS_USER) && e.length >= VHDX_PL_HEADER_SIZE &&
          e.offset + (uint64_t) e.length <= md_len) {
        found = true;
        idx = i;
        if (!(item = malloc (e.length)))
          r = -ENOMEM;
        else if ((r = io_pread_full (fd, item, e.length,
                                     md_off + e.offset)) == 0) {
          n = get_le16 (item + 18);
          if (VHDX_PL_HEADER_SIZE + (uint64_t) n * VHDX_PL_ENTRY_SIZE >
              e.length)
            r = vc_error (EINVAL, "%s: parent locator: %u entries do not "
                          "fit", l->path, n);
          else if (!(kv = calloc (n + 1, sizeof *kv)))
            r = -ENOMEM;
          else
            r = pl_parse (l->path, item, e.length, kv, n);
        }
      }
    }
    if (r == 0 && !found)
      r = vc_error (EINVAL, "%s: metadata: no parent locator", l->path);
  }
  /* Keep the linkage that names the parent now; the other one gets next.
   * (Neither names it only when the chain was opened ignoring identities:
   * then parent_linkage2.) */
  for (uint16_t i = 0; r == 0 && i < n; i++)
    for (int k = 0; k < 2; k++)
      if (strcmp (kv[i].key, keys[k]) == 0)
        at[k] = i;
  if (r == 0) {
    target = at[0] >= 0 && kv[at[0]].is_id &&
             memcmp (kv[at[0]].id, now, 16) != 0 &&
             at[1] >= 0 && kv[at[1]].is_id &&
             memcmp (kv[at[1]].id, now, 16) == 0 ? 0 : 1;
    braced[0] = '{';
    guid_format (next, braced + 1);
    strcpy (braced + 1 + GUID_TEXT_LEN, "}");
    r = pl_store (fd, l->path, md_off, md_len, table, mh.entry_count, idx,
                  item, kv, n, keys[target], at[target], braced);
    vc_debug ("%s: %s is now %s", l->path, keys[target], braced);
  }
  for (uint16_t i = 0; kv && i < n; i++)
    free (kv[i].key);
  free (kv);
  free (item);
  free (table);
  if (r == -ENOMEM)
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  return r < 0 && r != -EINVAL && r != -ENOSPC
         ? fail (l->path, r, "writing the parent locator") : r;
}
