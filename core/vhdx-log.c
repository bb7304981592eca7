/* vhdchain core: VHDX log replay, in memory (MS-VHDX 2.3, FORMATS.md 3.8).
 *
 * A VHDX file whose current header has a non-zero LogGuid was not closed
 * cleanly: metadata updates (BAT pages, sector bitmaps, metadata, region
 * table) may sit in the log and not yet in place.  MS-VHDX 2.3.3 says such a
 * file must not be read without replaying the log; a read-only reader has to
 * do it in memory.  This file finds the active sequence, checks every entry
 * of it, and turns its descriptors into an overlay: a list of extents, in
 * replay order, that vhdx_read lays over what pread returns.  The file is
 * never written.
 *
 * The log is a ring of 4 KiB sectors at LogOffset, LogLength bytes long; an
 * entry may wrap from its end to its start.  An entry is:
 *   header (64)     "loge", CRC-32C of the whole entry, EntryLength, Tail,
 *                   SequenceNumber, DescriptorCount, LogGuid,
 *                   FlushedFileOffset, LastFileOffset
 *   descriptors     32 bytes each, packed after the header (126 fit in the
 *                   first sector, 128 in each further one): "desc" (data:
 *                   TrailingBytes, LeadingBytes, FileOffset, SequenceNumber)
 *                   or "zero" (ZeroLength, FileOffset, SequenceNumber)
 *   data sectors    one per "desc", in descriptor order: "data",
 *                   SequenceHigh, 4084 bytes, SequenceLow
 * The 4 KiB page a data descriptor writes is LeadingBytes, the 4084 bytes,
 * TrailingBytes: the sector's own signature and sequence fields are not data.
 *
 * The overlay is a plain list scanned on each read: with Windows' 1 MiB log
 * it holds at most 256 pages, and only metadata reads consult it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "error.h"
#include "guid.h"
#include "vhdx.h"

#define LOG_SECTOR 4096u
#define LOG_HEADER_SIZE 64u
#define LOG_DESC_SIZE 32u
/* Replay may not touch the file identifier or the headers (MS-VHDX 2.3). */
#define LOG_MIN_TARGET VHDX_RT1_OFF
/* No VHDX is this large (64 TiB of payload plus its metadata); a log that
 * says otherwise is corrupt, and the bound keeps later arithmetic exact. */
#define LOG_MAX_TARGET (UINT64_C (1) << 50)

/* The log region named by the current header. */
struct log_ring {
  const struct layer *l;
  const struct vhdx_header *h;
  uint64_t off, len;
  uint64_t *loaded, budget;     /* entry bytes read so far, and the cap */
};

/* An entry header, decoded. */
struct log_entry {
  uint32_t length, tail, desc_count;
  uint64_t seq, flushed, last;
};

/* A chain of valid entries with consecutive sequence numbers. */
struct log_run {
  uint64_t *offs;               /* log-relative offsets of its entries */
  size_t n;
  uint64_t bytes;               /* sum of their lengths */
  struct log_entry head;        /* the last one */
};

/* Read len bytes at log-relative offset rel, wrapping at the ring's end. */
static int
ring_read (const struct log_ring *ring, uint64_t rel, uint8_t *buf,
           uint64_t len)
{
  uint64_t first = ring->len - rel < len ? ring->len - rel : len;
  int r;

  r = layer_pread (ring->l, buf, first, ring->off + rel, "log");
  if (r == 0 && first < len)
    r = layer_pread (ring->l, buf + first, len - first, ring->off, "log");
  return r;
}

static uint64_t
desc_sectors (uint32_t desc_count)
{
  uint64_t bytes = LOG_HEADER_SIZE + (uint64_t) LOG_DESC_SIZE * desc_count;
  return (bytes + LOG_SECTOR - 1) / LOG_SECTOR;
}

static void
entry_decode (const uint8_t *buf, struct log_entry *e)
{
  e->length = get_le32 (buf + 8);
  e->tail = get_le32 (buf + 12);
  e->seq = get_le64 (buf + 16);
  e->desc_count = get_le32 (buf + 24);
  e->flushed = get_le64 (buf + 48);
  e->last = get_le64 (buf + 56);
}

/* Header-sector checks: 1 if this may be an entry of our log, 0 if not.
 * An entry too large to hold in memory is an error rather than "not an
 * entry", so a sequence is never silently cut short.
 */
static int
entry_plausible (const struct log_ring *ring, const uint8_t *buf,
                 uint64_t rel, const struct log_entry *e)
{
  if (memcmp (buf, "loge", 4) != 0
      || memcmp (buf + 32, ring->h->log_guid, 16) != 0)
    return 0;
  if (e->length == 0 || e->length % LOG_SECTOR || e->length > ring->len
      || e->tail % LOG_SECTOR || e->tail >= ring->len || e->seq == 0
      || desc_sectors (e->desc_count) * LOG_SECTOR > e->length)
    return 0;
  if (e->length > VHDX_LOG_MAX_ENTRY)
    return vc_error (EFBIG, "%s: log entry at log offset %" PRIu64
                     ": EntryLength %" PRIu32 " is larger than the %u MiB "
                     "this reader replays in memory", ring->l->path, rel,
                     e->length, VHDX_LOG_MAX_ENTRY / VHDX_MiB);
  return 1;
}

/* Check one data sector against its entry's sequence number. */
static bool
data_sector_ok (const uint8_t *s, uint64_t seq)
{
  return memcmp (s, "data", 4) == 0
    && get_le32 (s + 4) == (uint32_t) (seq >> 32)
    && get_le32 (s + 4092) == (uint32_t) seq;
}

/* CRC, descriptors and data sectors of a whole entry in buf. */
static bool
entry_body_ok (const uint8_t *buf, const struct log_entry *e)
{
  uint64_t next_data = desc_sectors (e->desc_count);
  uint32_t i;

  if (!vhdx_checksum_ok (buf, e->length))
    return false;
  for (i = 0; i < e->desc_count; i++) {
    const uint8_t *d = buf + LOG_HEADER_SIZE + (size_t) LOG_DESC_SIZE * i;
    uint64_t foff = get_le64 (d + 16);

    if (get_le64 (d + 24) != e->seq || foff % LOG_SECTOR)
      return false;
    if (memcmp (d, "zero", 4) == 0) {
      if (get_le64 (d + 8) % LOG_SECTOR)
        return false;
    }
    else if (memcmp (d, "desc", 4) != 0
             || (next_data + 1) * LOG_SECTOR > e->length
             || !data_sector_ok (buf + next_data++ * LOG_SECTOR, e->seq))
      return false;
  }
  return true;
}

/* Load the entry at rel: 1 and (if bufp) the whole entry in a new buffer
 * when it is valid, 0 when there is no valid entry there, < 0 on error.
 */
static int
entry_load (const struct log_ring *ring, uint64_t rel, struct log_entry *e,
            uint8_t **bufp)
{
  uint8_t sector[LOG_SECTOR], *buf;
  int r;

  if ((r = ring_read (ring, rel, sector, LOG_SECTOR)) < 0)
    return r;
  entry_decode (sector, e);
  if ((r = entry_plausible (ring, sector, rel, e)) <= 0)
    return r;
  /* Each 4 KiB of the ring may hold a header claiming the whole ring:
   * unbounded, the search for the active sequence would read the ring
   * once per 4 KiB of it.  A real log is read about twice. */
  if ((*ring->loaded += e->length) > ring->budget)
    return vc_error (EFBIG, "%s: log: more than %" PRIu64 " bytes of "
                     "entries read looking for the active sequence in a "
                     "%" PRIu64 "-byte log: corrupt log", ring->l->path,
                     ring->budget, ring->len);
  if (!(buf = malloc (e->length)))
    return vc_error (ENOMEM, "%s: log: out of memory", ring->l->path);
  if ((r = ring_read (ring, rel, buf, e->length)) == 0)
    r = entry_body_ok (buf, e);
  if (r == 1 && bufp)
    *bufp = buf;
  else
    free (buf);
  return r;
}

/* Follow valid entries with consecutive sequence numbers from start. */
static int
run_chain (const struct log_ring *ring, uint64_t start, struct log_run *run)
{
  uint64_t rel = start;
  struct log_entry e;
  int r;

  run->n = 0;
  run->bytes = 0;
  for (;;) {
    if ((r = entry_load (ring, rel, &e, NULL)) <= 0)
      return r;
    if ((run->n > 0 && e.seq != run->head.seq + 1)
        || run->bytes + e.length > ring->len)   /* would lap the ring */
      return 0;
    run->offs[run->n++] = rel;
    run->head = e;
    run->bytes += e.length;
    rel = (rel + e.length) % ring->len;
  }
}

/* Index of the entry the head's Tail names, or -1: a run is only a
 * complete sequence if it holds its own tail (MS-VHDX 2.3.3). */
static long
run_tail (const struct log_run *run)
{
  size_t i;

  for (i = 0; i < run->n; i++)
    if (run->offs[i] == run->head.tail)
      return i;
  return -1;
}

/* Scan every 4 KiB start for runs; keep the complete one with the highest
 * head sequence number in *best.  After a run, scanning resumes at its end:
 * any run starting inside it is a suffix with the same head.
 */
static int
find_active (const struct log_ring *ring, struct log_run *best,
             struct log_run *run)
{
  uint64_t start = 0, bytes;
  int r;

  best->n = 0;
  while (start < ring->len) {
    if ((r = run_chain (ring, start, run)) < 0)
      return r;
    if (run->n == 0) {
      start += LOG_SECTOR;
      continue;
    }
    bytes = run->bytes;
    if (run_tail (run) >= 0 && (best->n == 0 || run->head.seq > best->head.seq)) {
      struct log_run t = *best;   /* swap, so the buffers stay owned */
      *best = *run;
      *run = t;
    }
    start += bytes;
  }
  return 0;
}

static int
overlay_add (const struct layer *l, struct vhdx_overlay *ov, uint64_t off,
             uint64_t len, uint8_t *data)
{
  if (ov->n == ov->cap) {
    size_t cap = ov->cap ? ov->cap * 2 : 64;
    struct vhdx_extent *e = realloc (ov->ext, cap * sizeof *e);
    if (!e) {
      free (data);
      return vc_error (ENOMEM, "%s: log: out of memory", l->path);
    }
    ov->ext = e;
    ov->cap = cap;
  }
  ov->ext[ov->n++] = (struct vhdx_extent) { off, len, data };
  if (off + len > ov->logical_size)
    ov->logical_size = off + len;
  return 0;
}

/* Replay may only update metadata: never the first 192 KiB (file
 * identifier, headers) or the log itself. */
static int
check_target (const struct log_ring *ring, uint64_t seq, uint32_t i,
              uint64_t off, uint64_t len)
{
  const char *why = NULL;

  if (off < LOG_MIN_TARGET)
    why = "is below 192 KiB (file identifier and headers)";
  else if (len > LOG_MAX_TARGET || off > LOG_MAX_TARGET - len)
    why = "is past any possible end of a VHDX file";
  else if (off < ring->off + ring->len && off + len > ring->off)
    why = "is inside the log";
  if (!why)
    return 0;
  return vc_error (EINVAL, "%s: log entry %" PRIu64 ": descriptor %" PRIu32
                   ": target %" PRIu64 " + %" PRIu64 " %s", ring->l->path,
                   seq, i, off, len, why);
}

/* The 4 KiB page a data descriptor writes (see the top of this file). */
static uint8_t *
assemble_page (const uint8_t *desc, const uint8_t *sector)
{
  uint8_t *page = malloc (LOG_SECTOR);

  if (page) {
    memcpy (page, desc + 8, 8);                 /* LeadingBytes */
    memcpy (page + 8, sector + 8, 4084);
    memcpy (page + 4092, desc + 4, 4);          /* TrailingBytes */
  }
  return page;
}

static int
apply_entry (const struct log_ring *ring, struct vhdx_overlay *ov,
             const uint8_t *buf, const struct log_entry *e)
{
  uint64_t next_data = desc_sectors (e->desc_count);
  uint32_t i;
  int r;

  for (i = 0; i < e->desc_count; i++) {
    const uint8_t *d = buf + LOG_HEADER_SIZE + (size_t) LOG_DESC_SIZE * i;
    bool zero = memcmp (d, "zero", 4) == 0;
    uint64_t off = get_le64 (d + 16), len = zero ? get_le64 (d + 8) : LOG_SECTOR;
    uint8_t *page = NULL;

    if ((r = check_target (ring, e->seq, i, off, len)) < 0)
      return r;
    if (!zero) {
      if ((ov->data_bytes += LOG_SECTOR) > VHDX_LOG_MAX_OVERLAY)
        return vc_error (EFBIG, "%s: log: the active sequence updates more "
                         "than %u MiB, more than this reader replays in "
                         "memory", ring->l->path,
                         VHDX_LOG_MAX_OVERLAY / VHDX_MiB);
      if (!(page = assemble_page (d, buf + next_data++ * LOG_SECTOR)))
        return vc_error (ENOMEM, "%s: log: out of memory", ring->l->path);
    }
    if ((r = overlay_add (ring->l, ov, off, len, page)) < 0)
      return r;
  }
  return 0;
}

/* Replay the entries of the active sequence from its tail to its head. */
static int
replay_run (const struct log_ring *ring, const struct log_run *run,
            size_t from, struct vhdx_overlay *ov)
{
  size_t i;
  int r;

  for (i = from; i < run->n; i++) {
    struct log_entry e;
    uint8_t *buf = NULL;

    r = entry_load (ring, run->offs[i], &e, &buf);
    if (r == 0)   /* it was valid a moment ago: the file is changing */
      r = vc_error (EIO, "%s: log entry at log offset %" PRIu64 " changed "
                    "while it was being replayed", ring->l->path, run->offs[i]);
    if (r > 0)
      r = apply_entry (ring, ov, buf, &e);
    free (buf);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Steps 3-4 of FORMATS.md 3.8: a sequence exists, the file holds it all. */
static int
check_active (const struct log_ring *ring, const struct log_run *best)
{
  if (best->n == 0)
    return vc_error (EINVAL, "%s: log: LogGuid is set but the log holds no "
                     "valid sequence of entries: corrupt log", ring->l->path);
  if (best->head.flushed > ring->l->file_size)
    return vc_error (EINVAL, "%s: log: FlushedFileOffset %" PRIu64 " is past "
                     "the end of the file (%" PRIu64 " bytes): truncated "
                     "image", ring->l->path, best->head.flushed,
                     ring->l->file_size);
  return 0;
}

/* Steps 2-6 of FORMATS.md 3.8 once the ring is known. */
static int
replay_ring (const struct log_ring *ring, struct vhdx_overlay *ov)
{
  struct log_run best = { 0 }, run = { 0 };
  size_t slots = ring->len / LOG_SECTOR, tail = 0;
  int r;

  best.offs = malloc (slots * sizeof *best.offs);
  run.offs = malloc (slots * sizeof *run.offs);
  r = best.offs && run.offs ? find_active (ring, &best, &run)
    : vc_error (ENOMEM, "%s: log: out of memory", ring->l->path);
  if (r == 0)
    r = check_active (ring, &best);
  if (r == 0)
    r = replay_run (ring, &best, tail = run_tail (&best), ov);
  if (r == 0) {
    /* The spec extends the file to LastFileOffset; we only pretend to. */
    if (best.head.last > ov->logical_size)
      ov->logical_size = best.head.last;
    vc_debug ("%s: replayed %zu log entries (log offsets %" PRIu64 " to %"
              PRIu64 ") up to sequence number %" PRIu64 " in memory: %zu "
              "extents", ring->l->path, best.n - tail, best.offs[tail],
              best.offs[best.n - 1], best.head.seq, ov->n);
  }
  free (best.offs);
  free (run.offs);
  return r;
}

int
vhdx_log_replay (const struct layer *l, const struct vhdx_header *h,
                 struct vhdx_overlay *ov)
{
  uint64_t loaded = 0;
  struct log_ring ring = { l, h, h->log_offset, h->log_length, &loaded,
                           4 * (uint64_t) h->log_length
                           + VHDX_LOG_MAX_ENTRY };
  int r;

  ov->logical_size = l->file_size;
  if (guid_is_zero (h->log_guid))
    return 0;
  /* vhdx.c checked alignment; the ring must also be really in the file. */
  if (ring.len == 0 || ring.off > l->file_size
      || ring.len > l->file_size - ring.off)
    return vc_error (EINVAL, "%s: header: log at %" PRIu64 " + %" PRIu64
                     " is not inside the file (%" PRIu64 " bytes)",
                     l->path, ring.off, ring.len, l->file_size);
  r = replay_ring (&ring, ov);
  if (r < 0)
    vhdx_overlay_free (ov);
  return r;
}

void
vhdx_overlay_free (struct vhdx_overlay *ov)
{
  size_t i;

  for (i = 0; i < ov->n; i++)
    free (ov->ext[i].data);
  free (ov->ext);
  ov->ext = NULL;
  ov->n = ov->cap = 0;
  ov->data_bytes = 0;
}

/* Lay one extent over buf, which holds [off, off + count). */
static void
overlay_extent (const struct vhdx_extent *x, uint8_t *buf, size_t count,
                uint64_t off)
{
  uint64_t from = x->off > off ? x->off : off;
  uint64_t to = x->off + x->len < off + count ? x->off + x->len : off + count;

  if (from >= to)
    return;
  if (x->data)
    memcpy (buf + (from - off), x->data + (from - x->off), to - from);
  else
    memset (buf + (from - off), 0, to - from);
}

int
vhdx_read (const struct layer *l, const struct vhdx_overlay *ov, void *buf,
           size_t count, uint64_t off, const char *what)
{
  uint64_t phys = 0;
  size_t i;
  int r;

  if (off > ov->logical_size || count > ov->logical_size - off)
    return vc_error (EINVAL, "%s: %s: offset %" PRIu64 " + %zu is past the "
                     "end of the file (%" PRIu64 " bytes): truncated image",
                     l->path, what, off, count, ov->logical_size);
  /* Past the real end, inside the logical size, the file reads as zeros:
   * the log extended it (MS-VHDX 2.3.3) but nothing was written there. */
  if (off < l->file_size)
    phys = l->file_size - off < count ? l->file_size - off : count;
  if (phys && (r = layer_pread (l, buf, phys, off, what)) < 0)
    return r;
  memset ((uint8_t *) buf + phys, 0, count - phys);
  for (i = 0; i < ov->n; i++)
    overlay_extent (&ov->ext[i], buf, count, off);
  return 0;
}
