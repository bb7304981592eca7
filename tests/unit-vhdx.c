/* Unit tests of the VHDX reader (core/vhdx.c, core/vhdx-log.c).
 *
 *  1. libvhdi fragments: the raw decoders against FORMATS.md section 6.
 *  2. The DiscUtils samples (made by Windows): the whole virtual disk rebuilt
 *     with walk + pread, its SHA-256 compared with FORMATS.md, block states
 *     checked, and the file unchanged (the log is replayed in memory only).
 *  3. Images made by qemu-img (dynamic, fixed, several block sizes) read the
 *     same as `qemu-img convert -f vhdx -O raw` of them.
 *  4. Images this test builds (vb_* below) for what no tool here makes:
 *     4096-byte sectors, several chunks, differencing files with partial
 *     blocks and parent locators, dirty logs that wrap, malformed files.
 *
 * Needs SAMPLES (the shared samples folder), qemu-img, gzip and sha256sum
 * (or openssl, which is faster).  Set VERBOSE=1 to see each expected error
 * message.  Exit 0 when every check passed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "unit.h"
#include "byteorder.h"
#include "crc32c.h"
#include "error.h"
#include "guid.h"
#include "layer.h"
#include "vhdx.h"

#define MiB (UINT64_C (1024) * 1024)
#define GiB (MiB * 1024)

static const char *samples;
static char tmpdir[64];
static bool verbose;


/* ---- small helpers ---- */

static void
tmp_path (char *out, const char *name)
{
  snprintf (out, PATH_MAX, "%s/%s", tmpdir, name);
}

static int __attribute__ ((format (printf, 1, 2)))
run (const char *fmt, ...)
{
  char cmd[4 * PATH_MAX];
  va_list ap;
  int r;

  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  r = system (cmd);
  if (r != 0)
    fprintf (stderr, "command failed (%d): %s\n", r, cmd);
  return r;
}

static int
pread_all (int fd, void *buf, size_t n, uint64_t off)
{
  size_t done = 0;

  while (done < n) {
    ssize_t r = pread (fd, (char *) buf + done, n - done, off + done);
    if (r <= 0)
      return -1;
    done += r;
  }
  return 0;
}

static void
pwrite_all (int fd, const void *buf, size_t n, uint64_t off)
{
  if (pwrite (fd, buf, n, off) != (ssize_t) n) {
    perror ("pwrite");
    exit (2);
  }
}

/* SHA-256 through openssl (SHA-NI, fast) or sha256sum. */
struct hasher {
  FILE *pipe;
  char out[PATH_MAX];
};

static void
hasher_open (struct hasher *h, const char *tag)
{
  char cmd[2 * PATH_MAX];

  snprintf (h->out, sizeof h->out, "%s/%s.sha256", tmpdir, tag);
  snprintf (cmd, sizeof cmd, "if command -v openssl >/dev/null 2>&1; then "
            "openssl dgst -sha256 -r; else sha256sum; fi > '%s'", h->out);
  h->pipe = popen (cmd, "w");
  if (!h->pipe) {
    perror ("popen");
    exit (2);
  }
}

static void
hasher_close (struct hasher *h, char hex[65])
{
  FILE *f;

  hex[0] = '\0';
  pclose (h->pipe);
  if ((f = fopen (h->out, "r"))) {
    if (fscanf (f, "%64s", hex) != 1)
      hex[0] = '\0';
    fclose (f);
  }
}

static void
sha256_file (const char *path, char hex[65])
{
  struct hasher h;
  static uint8_t buf[1 << 20];
  int fd = open (path, O_RDONLY);
  ssize_t n;

  hasher_open (&h, "file");
  while (fd >= 0 && (n = read (fd, buf, sizeof buf)) > 0)
    fwrite (buf, 1, n, h.pipe);
  if (fd >= 0)
    close (fd);
  hasher_close (&h, hex);
}

static struct layer *
open_image (const char *path, bool ignore_checksums)
{
  struct layer_opts o = { .ignore_checksums = ignore_checksums };
  struct layer *l;
  int fd = open (path, O_RDONLY | O_CLOEXEC);

  vc_clear_error ();
  if (fd < 0) {
    vc_error (errno, "%s: open: %m", path);
    return NULL;
  }
  if (layer_open (fd, path, &o, &l) < 0) {
    close (fd);
    return NULL;
  }
  return l;
}

static struct layer *
expect_open (const char *path, bool ignore, const char *what)
{
  struct layer *l = open_image (path, ignore);

  CHECK (l != NULL, "%s: open failed: %s", what, vc_last_error ());
  return l;
}

static void
expect_fail (const char *path, bool ignore, const char *needle,
             const char *what)
{
  struct layer *l = open_image (path, ignore);
  const char *msg = vc_last_error ();

  CHECK (l == NULL, "%s: opened, expected an error with '%s'", what, needle);
  if (l) {
    layer_close (l);
    return;
  }
  CHECK (strstr (msg, needle) && strstr (msg, path) && !strchr (msg, '\n'),
         "%s: message '%s' lacks '%s' or the path", what, msg, needle);
  if (verbose)
    printf ("  %-40s %s\n", what, msg);
}

/* ---- what a layer says, block by block ---- */

struct blocks {
  uint64_t n;
  uint8_t *state;
  uint64_t *off;
  int bad;                      /* visits out of range, twice, or ABSENT */
};

static int
collect_fn (void *opaque, uint64_t b, enum block_state st, uint64_t off)
{
  struct blocks *bs = opaque;

  if (b >= bs->n || bs->state[b] != BLK_ABSENT || st == BLK_ABSENT) {
    bs->bad++;
    return 0;
  }
  bs->state[b] = st;
  bs->off[b] = off;
  return 0;
}

static int
collect (struct layer *l, struct blocks *bs)
{
  int r;

  bs->n = l->nr_blocks;
  bs->state = calloc (bs->n + 1, 1);
  bs->off = calloc (bs->n + 1, sizeof *bs->off);
  bs->bad = 0;
  r = l->ops->walk (l, collect_fn, bs);
  CHECK (r == 0 && bs->bad == 0, "%s: walk: r=%d bad=%d: %s", l->path, r,
         bs->bad, vc_last_error ());
  return r;
}

static void
blocks_free (struct blocks *bs)
{
  free (bs->state);
  free (bs->off);
}

/* Test data: byte at virtual offset v of a layer with this seed. */
static uint8_t
pat (uint64_t v, int seed)
{
  uint64_t x = (v >> 3) * 0x9E3779B1u + (uint64_t) seed * 0x85EBCA77u + (v & 7);
  return x ^ (x >> 13) ^ (x >> 29);
}

static void
fill_pat (uint8_t *buf, uint64_t v, uint64_t len, int seed)
{
  uint64_t i;

  if (seed < 0)
    memset (buf, 0, len);
  else
    for (i = 0; i < len; i++)
      buf[i] = pat (v + i, seed);
}

static uint64_t
block_len (const struct layer *l, uint64_t b)
{
  uint64_t left = l->size - b * l->block_size;
  return left < l->block_size ? left : l->block_size;
}

/* Virtual bytes of block b as the layer says them, the parent holding
 * pat(v, parent_seed) (or zeros when parent_seed < 0, a base). */
static int
read_block (struct layer *l, const struct blocks *bs, uint64_t b,
            uint8_t *buf, int parent_seed)
{
  uint64_t len = block_len (l, b), k, spb = l->block_size / l->sector;
  uint8_t *bits;
  int r = 0;

  switch (bs->state[b]) {
  case BLK_ABSENT:
    fill_pat (buf, b * l->block_size, len, parent_seed);
    return 0;
  case BLK_ZERO:
    memset (buf, 0, len);
    return 0;
  case BLK_FULL:
    return pread_all (l->fd, buf, len, bs->off[b]);
  }
  fill_pat (buf, b * l->block_size, len, parent_seed);
  bits = calloc (1, spb / 8);
  if ((r = l->ops->bitmap (l, b, bs->off[b], bits)) == 0)
    for (k = 0; k * l->sector < len && r == 0; k++)
      if (bits[k >> 3] & (1u << (k & 7)))
        r = pread_all (l->fd, buf + k * l->sector, l->sector,
                       bs->off[b] + k * l->sector);
  free (bits);
  return r;
}

static void
hash_disk (struct layer *l, const struct blocks *bs, char hex[65])
{
  uint8_t *buf = malloc (l->block_size);
  struct hasher h;
  uint64_t b;

  hasher_open (&h, "disk");
  for (b = 0; b < l->nr_blocks; b++) {
    if (read_block (l, bs, b, buf, -1) < 0) {
      CHECK (0, "%s: reading block %" PRIu64, l->path, b);
      break;
    }
    fwrite (buf, 1, block_len (l, b), h.pipe);
  }
  hasher_close (&h, hex);
  free (buf);
}

/* ---- 1. libvhdi fragments ---- */

static size_t
read_fragment (const char *name, uint8_t *buf, size_t max)
{
  char path[PATH_MAX];
  FILE *f;
  size_t n = 0;

  snprintf (path, sizeof path, "%s/libvhdi-fragments/%s", samples, name);
  if ((f = fopen (path, "rb"))) {
    n = fread (buf, 1, max, f);
    fclose (f);
  }
  CHECK (n > 0, "fragment %s: cannot read %s", name, path);
  return n;
}

static bool
guid_is (const uint8_t raw[16], const char *text)
{
  char g[GUID_TEXT_LEN + 1];

  guid_format (raw, g);
  return strcmp (g, text) == 0;
}

static void
test_fragment_header (void)
{
  uint8_t buf[4096] = { 0 };
  struct vhdx_header h;

  read_fragment ("image_header.1", buf, sizeof buf);
  vhdx_header_decode (buf, &h);
  CHECK (h.signature_ok, "image_header.1: signature");
  CHECK (vhdx_checksum_ok (buf, 4096), "image_header.1: CRC");
  CHECK (h.seq == 6, "image_header.1: seq %" PRIu64, h.seq);
  CHECK (guid_is_zero (h.log_guid), "image_header.1: LogGuid");
  CHECK (h.log_offset == MiB && h.log_length == MiB, "image_header.1: log");
  CHECK (h.version == 1 && h.log_version == 0, "image_header.1: versions");
  CHECK (guid_is (h.file_write_guid, "a3cccdd4-e8ce-4321-9243-cdaa37d5a0e2"),
         "image_header.1: FileWriteGuid");
  CHECK (guid_is (h.data_write_guid, "0ffbcd55-1320-498f-9c15-1a97335aafcd"),
         "image_header.1: DataWriteGuid");
  buf[100] ^= 1;
  CHECK (!vhdx_checksum_ok (buf, 4096), "image_header.1: flipped bit");
}

static void
test_fragment_regions (void)
{
  static uint8_t buf[VHDX_RT_SIZE];
  uint8_t part[32];
  struct vhdx_rt_header h;
  struct vhdx_region r[2];

  CHECK (read_fragment ("region_table.1", buf, sizeof buf) == 80,
         "region_table.1: size");
  vhdx_rt_header_decode (buf, &h);
  CHECK (h.signature_ok && h.entry_count == 2, "region_table.1: header");
  CHECK (h.checksum == 0xC66B8CAE, "region_table.1: CRC %08" PRIx32,
         h.checksum);
  CHECK (vhdx_checksum_ok (buf, VHDX_RT_SIZE), "region_table.1: CRC valid "
         "when zero-padded to 64 KiB");
  vhdx_region_decode (buf + 16, &r[0]);
  vhdx_region_decode (buf + 48, &r[1]);
  CHECK (memcmp (r[0].guid, vhdx_guid_bat, 16) == 0 && r[0].offset == 3 * MiB
         && r[0].length == MiB && r[0].required == 1, "region_table.1: BAT");
  CHECK (memcmp (r[1].guid, vhdx_guid_metadata, 16) == 0
         && r[1].offset == 2 * MiB && r[1].length == MiB
         && r[1].required == 1, "region_table.1: metadata");
  read_fragment ("region_table_header.1", part, 16);
  CHECK (memcmp (part, buf, 16) == 0, "region_table_header.1");
  read_fragment ("region_table_entry.1", part, 32);
  CHECK (memcmp (part, buf + 16, 32) == 0, "region_table_entry.1");
}

static void
test_fragment_metadata (void)
{
  uint8_t buf[32];
  struct vhdx_md_header h;
  struct vhdx_md_entry e;

  read_fragment ("metadata_table_header.1", buf, 32);
  vhdx_md_header_decode (buf, &h);
  CHECK (h.signature_ok && h.entry_count == 5, "metadata_table_header.1");
  read_fragment ("metadata_table_entry.1", buf, 32);
  vhdx_md_entry_decode (buf, &e);
  CHECK (memcmp (e.item_id, vhdx_guid_file_parameters, 16) == 0
         && e.offset == 65536 && e.length == 8 && e.flags == 4,
         "metadata_table_entry.1: %" PRIu32 " %" PRIu32 " %" PRIx32,
         e.offset, e.length, e.flags);
}

static void
test_fragment_locator (void)
{
  uint8_t buf[20];
  struct vhdx_pl_header h;
  struct vhdx_pl_entry e;

  read_fragment ("parent_locator_header.1", buf, 20);
  vhdx_pl_header_decode (buf, &h);
  CHECK (memcmp (h.locator_type, vhdx_guid_locator_type_vhdx, 16) == 0
         && h.key_value_count == 5, "parent_locator_header.1");
  read_fragment ("parent_locator_entry.1", buf, 12);
  vhdx_pl_entry_decode (buf, &e);
  CHECK (e.key_offset == 80 && e.key_length == 28 && e.value_offset == 108
         && e.value_length == 76, "parent_locator_entry.1");
  /* 28 bytes = "parent_linkage", 76 = a braced GUID. */
  CHECK (e.key_length / 2 == strlen ("parent_linkage")
         && e.value_length / 2 == GUID_TEXT_LEN + 2, "entry lengths");
}

/* ---- 2. Windows samples ---- */

static bool
gunzip_sample (const char *rel, const char *name, char *out)
{
  tmp_path (out, name);
  return run ("gzip -dc '%s/%s' > '%s'", samples, rel, out) == 0;
}

static void
test_swap (void)
{
  char path[PATH_MAX], before[65], after[65], hex[65];
  struct layer *l;
  struct blocks bs;
  uint8_t buf[16];
  uint64_t b;
  int absent = 0;

  if (!gunzip_sample ("discutils/swap.vhdx.gz", "swap.vhdx", path)) {
    CHECK (0, "gunzip swap.vhdx.gz");
    return;
  }
  sha256_file (path, before);
  if (!(l = expect_open (path, false, "swap.vhdx")))
    return;
  CHECK (l->format == FMT_VHDX && strcmp (l->type, "dynamic") == 0
         && !l->differencing, "swap: type %s", l->type);
  CHECK (l->size == 10 * GiB && l->block_size == 32 * MiB
         && l->nr_blocks == 320 && l->sector == 512, "swap: geometry");
  CHECK (strncmp (l->creator, "Microsoft Windows 10.0.14393", 28) == 0,
         "swap: creator '%s'", l->creator);
  collect (l, &bs);
  CHECK (bs.state[0] == BLK_FULL && bs.off[0] == 4 * MiB, "swap: block 0");
  CHECK (bs.state[319] == BLK_ZERO, "swap: block 319 state %d", bs.state[319]);
  for (b = 1; b < 319; b++)
    absent += bs.state[b] == BLK_ABSENT;
  CHECK (absent == 318, "swap: %d blocks NOT_PRESENT, expected 318", absent);
  CHECK (pread_all (l->fd, buf, 10, 4 * MiB + 4086) == 0
         && memcmp (buf, "SWAPSPACE2", 10) == 0, "swap: SWAPSPACE2");
  hash_disk (l, &bs, hex);
  CHECK (strcmp (hex, "60dd30b4c74361427d1089510cabb36e2eeda0cc4747f467ea43173acd358c49") == 0,
         "swap: disk SHA-256 %s", hex);
  blocks_free (&bs);
  layer_close (l);
  sha256_file (path, after);
  CHECK (strcmp (before, after) == 0 && before[0], "swap: file changed");
  unlink (path);
}

static void
test_log_replay_sample (void)
{
  char path[PATH_MAX], after[65], hex[65];
  struct layer *l;
  struct blocks bs;
  uint8_t mbr[512];
  uint64_t b;
  int others = 0;

  if (!gunzip_sample ("discutils/vhdx-log-replay.vhdx.gz", "replay.vhdx",
                      path)) {
    CHECK (0, "gunzip vhdx-log-replay.vhdx.gz");
    return;
  }
  if (!(l = expect_open (path, false, "vhdx-log-replay.vhdx")))
    return;
  CHECK (strcmp (l->type, "dynamic") == 0 && l->size == GiB
         && l->block_size == 32 * MiB && l->sector == 512,
         "log-replay: geometry");
  collect (l, &bs);
  CHECK (bs.state[0] == BLK_FULL && bs.off[0] == 4 * MiB,
         "log-replay: block 0 %d at %" PRIu64, bs.state[0], bs.off[0]);
  CHECK (bs.state[3] == BLK_ZERO && bs.state[9] == BLK_ZERO
         && bs.state[31] == BLK_ZERO, "log-replay: ZERO blocks");
  for (b = 1; b < 31; b++)
    others += b != 3 && b != 9 && bs.state[b] != BLK_ABSENT;
  CHECK (others == 0, "log-replay: %d unexpected allocated blocks", others);
  CHECK (pread_all (l->fd, mbr, 512, 4 * MiB) == 0 && mbr[510] == 0x55
         && mbr[511] == 0xAA && mbr[450] == 0x83 && mbr[466] == 0x83
         && get_le32 (mbr + 454) == 2048 && get_le32 (mbr + 458) == 204800
         && get_le32 (mbr + 470) == 206848 && get_le32 (mbr + 474) == 409600,
         "log-replay: MBR partitions");
  hash_disk (l, &bs, hex);
  CHECK (strcmp (hex, "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e") == 0,
         "log-replay: disk SHA-256 %s", hex);
  blocks_free (&bs);
  layer_close (l);
  sha256_file (path, after);
  CHECK (strcmp (after, "d0805b6f7cdd3908239442900d73053a013079f839656d69bae00a44948983d6") == 0,
         "log-replay: file changed: %s", after);
  unlink (path);
}

/* ---- 3. qemu-img ---- */

/* 67 MiB + 1536 bytes: data, zero runs, whole zero MiBs, a short tail. */
static void
make_raw (const char *path, uint64_t size)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  static uint8_t buf[65536];
  uint64_t off, i;

  for (i = 0, off = 0; off < size; i++, off += sizeof buf) {
    uint64_t n = size - off < sizeof buf ? size - off : sizeof buf;
    bool zero = i % 5 == 2 || (off >= 5 * MiB && off < 12 * MiB + 65536);
    fill_pat (buf, off, n, zero ? -1 : 7);
    pwrite_all (fd, buf, n, off);
  }
  close (fd);
}

static void
test_qemu (const char *raw, const char *src, const char *opts,
           const char *want_type)
{
  char vhdx[PATH_MAX], back[PATH_MAX], want[65], hex[65];
  struct layer *l;
  struct blocks bs;

  tmp_path (vhdx, "qemu.vhdx");
  tmp_path (back, "qemu-back.raw");
  if (run ("qemu-img convert -q -f raw -O vhdx -o '%s' '%s' '%s'", opts, raw,
           vhdx) != 0
      || run ("qemu-img convert -q -f vhdx -O raw '%s' '%s'", vhdx, back) != 0) {
    CHECK (0, "qemu-img %s", opts);
    return;
  }
  sha256_file (back, want);
  CHECK (strcmp (want, src) == 0, "qemu %s: round trip differs", opts);
  if (!(l = expect_open (vhdx, false, opts)))
    return;
  CHECK (strcmp (l->type, want_type) == 0, "qemu %s: type %s", opts, l->type);
  collect (l, &bs);
  hash_disk (l, &bs, hex);
  CHECK (strcmp (hex, want) == 0 && want[0], "qemu %s: SHA-256 %s, qemu %s",
         opts, hex, want);
  blocks_free (&bs);
  layer_close (l);
  unlink (vhdx);
  unlink (back);
}

static void
test_qemu_images (void)
{
  char raw[PATH_MAX], src[65];

  tmp_path (raw, "src.raw");
  make_raw (raw, 67 * MiB + 1536);
  sha256_file (raw, src);
  test_qemu (raw, src, "subformat=dynamic", "dynamic");
  test_qemu (raw, src, "subformat=dynamic,block_size=1M,log_size=1M",
             "dynamic");
  test_qemu (raw, src, "subformat=dynamic,block_size=8M,block_state_zero=off",
             "dynamic");
  test_qemu (raw, src, "subformat=fixed,block_size=1M", "fixed");
  test_qemu (raw, src, "subformat=fixed,block_size=32M,log_size=2M", "fixed");
  unlink (raw);
}

/* ---- 4. images built here ---- */

enum { VB_DYNAMIC, VB_FIXED, VB_DIFF };

struct vb_item {
  uint8_t guid[16];
  uint32_t flags;
  uint8_t *data;
  uint32_t len;
};

struct vb_region {
  uint8_t guid[16];
  uint64_t off;
  uint32_t len, required;
};

struct vb {
  char path[PATH_MAX];
  int fd;
  uint64_t size;
  uint32_t bs, sector, cr;
  int kind;
  uint64_t nr_blocks, nr_chunks, bat_entries;
  uint64_t log_off, md_off, bat_off, next;
  uint32_t log_len, bat_len;
  uint64_t *bat;                /* host order */
  struct vb_item items[16];
  int nr_items;
  struct vb_region regions[8];
  int nr_regions;
  uint8_t data_guid[16], log_guid[16];
  uint64_t seq[2];
  bool twins;                   /* headers byte-identical */
  const uint8_t *file_id;       /* 520 bytes to put at 0, or NULL */
  const char *creator;
};

static const uint8_t guid_unknown[16] = GUID_INIT (0x12345678, 0x9ABC, 0xDEF0,
  1, 2, 3, 4, 5, 6, 7, 8);

static void
put_crc (uint8_t *buf, size_t len)
{
  put_le32 (buf + 4, 0);
  put_le32 (buf + 4, crc32c (buf, len));
}

static void
vb_add_item (struct vb *v, const uint8_t guid[16], uint32_t flags,
             const void *data, uint32_t len)
{
  struct vb_item *it = &v->items[v->nr_items++];

  memcpy (it->guid, guid, 16);
  it->flags = flags;
  it->len = len;
  it->data = calloc (1, len + 1);
  memcpy (it->data, data, len);
}

static struct vb_item *
vb_item (struct vb *v, const uint8_t guid[16])
{
  int i;

  for (i = 0; i < v->nr_items; i++)
    if (memcmp (v->items[i].guid, guid, 16) == 0)
      return &v->items[i];
  return NULL;
}

static void
vb_add_region (struct vb *v, const uint8_t guid[16], uint64_t off,
               uint32_t len, uint32_t required)
{
  struct vb_region *r = &v->regions[v->nr_regions++];

  memcpy (r->guid, guid, 16);
  r->off = off;
  r->len = len;
  r->required = required;
}

static void
vb_init (struct vb *v, const char *name, uint64_t size, uint32_t bs,
         uint32_t sector, int kind)
{
  uint8_t b8[8] = { 0 };
  uint64_t n;
  int i;

  memset (v, 0, sizeof *v);
  tmp_path (v->path, name);
  v->fd = open (v->path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  v->size = size;
  v->bs = bs;
  v->sector = sector;
  v->kind = kind;
  v->cr = (UINT64_C (1) << 23) * sector / bs;
  v->nr_blocks = n = (size + bs - 1) / bs;
  v->nr_chunks = (n + v->cr - 1) / v->cr;
  v->bat_entries = kind == VB_DIFF ? v->nr_chunks * (v->cr + 1) :
    n ? n + (n - 1) / v->cr : 0;
  v->log_off = MiB;
  v->log_len = MiB;
  v->md_off = 2 * MiB;
  v->bat_off = 3 * MiB;
  v->bat_len = (v->bat_entries * 8 + MiB - 1) / MiB * MiB;
  if (!v->bat_len)
    v->bat_len = MiB;
  v->next = v->bat_off + v->bat_len;
  v->bat = calloc (v->bat_entries + 1, 8);
  for (i = 0; i < 16; i++)
    v->data_guid[i] = 0xA0 + i;
  v->seq[0] = 1;
  v->seq[1] = 2;
  vb_add_region (v, vhdx_guid_bat, v->bat_off, v->bat_len, 1);
  vb_add_region (v, vhdx_guid_metadata, v->md_off, MiB, 1);
  put_le32 (b8, bs);
  put_le32 (b8 + 4, kind == VB_FIXED ? 1 : kind == VB_DIFF ? 2 : 0);
  vb_add_item (v, vhdx_guid_file_parameters, 4, b8, 8);
  put_le64 (b8, size);
  vb_add_item (v, vhdx_guid_virtual_disk_size, 6, b8, 8);
  vb_add_item (v, vhdx_guid_virtual_disk_id, 6, v->data_guid, 16);
  put_le32 (b8, sector);
  vb_add_item (v, vhdx_guid_logical_sector_size, 6, b8, 4);
  put_le32 (b8, 4096);
  vb_add_item (v, vhdx_guid_physical_sector_size, 6, b8, 4);
}

static void
vb_free (struct vb *v, bool keep)
{
  int i;

  for (i = 0; i < v->nr_items; i++)
    free (v->items[i].data);
  free (v->bat);
  close (v->fd);
  if (!keep)
    unlink (v->path);
}

static uint64_t
vb_alloc (struct vb *v, uint64_t len)
{
  uint64_t off = v->next;

  v->next += (len + MiB - 1) / MiB * MiB;
  return off;
}

/* Which sectors a PARTIAL test block holds: irregular, byte-straddling. */
static bool
present (uint64_t b, uint64_t k)
{
  return ((k * 7 + b * 3) % 5) < 2 || k == 0 || (k >= 40 && k < 57);
}

static uint64_t
vb_sb (struct vb *v, uint64_t chunk)
{
  uint64_t *e = &v->bat[chunk * (v->cr + 1) + v->cr];

  if (!(*e & 7))
    *e = vb_alloc (v, MiB) | 6;
  return *e & ~UINT64_C (0xFFFFF);
}

/* Write a payload block of state st (data in pat(v, seed) for FULL and the
 * present sectors of PARTIAL, with its sector bitmap bits). */
static uint64_t
vb_block (struct vb *v, uint64_t b, unsigned st, int seed)
{
  uint64_t spb = v->bs / v->sector, k, off = 0, len;
  uint8_t *buf;

  if (st == 6 || st == 7) {
    len = v->size - b * v->bs < v->bs ? v->size - b * v->bs : v->bs;
    off = vb_alloc (v, v->bs);
    if (seed < 0)
      len = 0;                  /* left sparse: reads as zeros */
    buf = malloc (len);
    fill_pat (buf, b * v->bs, len, seed);
    for (k = 0; st == 7 && k * v->sector < len; k++)
      if (!present (b, k))
        memset (buf + k * v->sector, 0xEE, v->sector);
    pwrite_all (v->fd, buf, len, off);
    free (buf);
  }
  if (st == 7) {
    uint8_t *bits = calloc (1, spb / 8);
    for (k = 0; k < spb; k++)
      if (present (b, k))
        bits[k >> 3] |= 1u << (k & 7);
    pwrite_all (v->fd, bits, spb / 8, vb_sb (v, b / v->cr)
                + (b % v->cr) * (spb / 8));
    free (bits);
  }
  v->bat[b + b / v->cr] = off | st;
  return off;
}

/* A parent locator item from key, value, ..., NULL (ASCII strings). */
static void
vb_locator (struct vb *v, const uint8_t type[16], const char *const *kv)
{
  uint8_t item[4096] = { 0 };
  uint32_t n = 0, i, pos, k;

  while (kv[2 * n])
    n++;
  memcpy (item, type, 16);
  put_le16 (item + 18, n);
  pos = 20 + 12 * n;
  for (i = 0; i < n; i++)
    for (k = 0; k < 2; k++) {
      const char *s = kv[2 * i + k];
      size_t j, len = strlen (s);
      put_le32 (item + 20 + 12 * i + 4 * k, pos);
      put_le16 (item + 20 + 12 * i + 8 + 2 * k, 2 * len);
      for (j = 0; j < len; j++)
        put_le16 (item + pos + 2 * j, (unsigned char) s[j]);
      pos += 2 * len;
    }
  vb_add_item (v, vhdx_guid_parent_locator, 4, item, pos);
}

static void
vb_header (const struct vb *v, int i, uint8_t *h)
{
  memset (h, 0, 4096);
  memcpy (h, "head", 4);
  put_le64 (h + 8, v->seq[i]);
  memset (h + 16, 0x11, 16);
  memcpy (h + 32, v->data_guid, 16);
  if (!v->twins)
    h[47] = i + 1;              /* tells the tests which header won */
  memcpy (h + 48, v->log_guid, 16);
  put_le16 (h + 66, 1);
  put_le32 (h + 68, v->log_len);
  put_le64 (h + 72, v->log_off);
  put_crc (h, 4096);
}

static void
vb_write_metadata (struct vb *v)
{
  uint8_t *t = calloc (1, 64 * 1024);
  uint32_t pos = 64 * 1024;
  int i;

  memcpy (t, "metadata", 8);
  put_le16 (t + 10, v->nr_items);
  for (i = 0; i < v->nr_items; i++) {
    uint8_t *e = t + 32 + 32 * i;
    memcpy (e, v->items[i].guid, 16);
    put_le32 (e + 16, v->items[i].len ? pos : 0);
    put_le32 (e + 20, v->items[i].len);
    put_le32 (e + 24, v->items[i].flags);
    pwrite_all (v->fd, v->items[i].data, v->items[i].len, v->md_off + pos);
    pos += (v->items[i].len + 7) / 8 * 8;
  }
  pwrite_all (v->fd, t, 64 * 1024, v->md_off);
  free (t);
}

static void
vb_write_bat (struct vb *v)
{
  uint8_t *b = calloc (1, v->bat_len);
  uint64_t i;

  for (i = 0; i < v->bat_entries; i++)
    put_le64 (b + 8 * i, v->bat[i]);
  pwrite_all (v->fd, b, v->bat_len, v->bat_off);
  free (b);
}

static void
vb_write (struct vb *v)
{
  uint8_t *buf = calloc (1, 64 * 1024);
  const char *cr = v->creator ? v->creator : "vhdchain unit test";
  size_t i;
  int k;

  memcpy (buf, "vhdxfile", 8);
  for (i = 0; cr[i] && i < 256; i++)
    put_le16 (buf + 8 + 2 * i, (unsigned char) cr[i]);
  if (v->file_id)
    memcpy (buf, v->file_id, 520);
  pwrite_all (v->fd, buf, 64 * 1024, 0);
  for (k = 0; k < 2; k++) {
    vb_header (v, k, buf);
    pwrite_all (v->fd, buf, 4096, (k + 1) * 64 * 1024);
  }
  memset (buf, 0, 64 * 1024);
  memcpy (buf, "regi", 4);
  put_le32 (buf + 8, v->nr_regions);
  for (k = 0; k < v->nr_regions; k++) {
    uint8_t *e = buf + 16 + 32 * k;
    memcpy (e, v->regions[k].guid, 16);
    put_le64 (e + 16, v->regions[k].off);
    put_le32 (e + 24, v->regions[k].len);
    put_le32 (e + 28, v->regions[k].required);
  }
  put_crc (buf, 64 * 1024);
  pwrite_all (v->fd, buf, 64 * 1024, 192 * 1024);
  pwrite_all (v->fd, buf, 64 * 1024, 256 * 1024);
  free (buf);
  vb_write_metadata (v);
  vb_write_bat (v);
  if (ftruncate (v->fd, v->next) < 0)
    exit (2);
}

/* Patch bytes of the written file and, if crc_len, re-sum the structure
 * at crc_off. */
static void
vb_patch (struct vb *v, uint64_t off, const void *data, size_t len,
          uint64_t crc_off, size_t crc_len)
{
  uint8_t *buf;

  pwrite_all (v->fd, data, len, off);
  if (!crc_len)
    return;
  buf = malloc (crc_len);
  if (pread_all (v->fd, buf, crc_len, crc_off) < 0)
    exit (2);
  put_crc (buf, crc_len);
  pwrite_all (v->fd, buf, crc_len, crc_off);
  free (buf);
}

static void
vb_patch32 (struct vb *v, uint64_t off, uint32_t x, uint64_t crc_off,
            size_t crc_len)
{
  uint8_t b[4];

  put_le32 (b, x);
  vb_patch (v, off, b, 4, crc_off, crc_len);
}

/* Expected contents of block b of a built image. */
static void
expect_block (const struct vb *v, uint64_t b, unsigned st, int seed,
              int parent_seed, uint8_t *buf)
{
  uint64_t len = v->size - b * v->bs < v->bs ? v->size - b * v->bs : v->bs;
  uint64_t k;

  if (st == 0)
    fill_pat (buf, b * v->bs, len, parent_seed);
  else if (st == 6)
    fill_pat (buf, b * v->bs, len, seed);
  else if (st == 7)
    for (k = 0; k * v->sector < len; k++)
      fill_pat (buf + k * v->sector, b * v->bs + k * v->sector, v->sector,
                present (b, k) ? seed : parent_seed);
  else
    memset (buf, 0, len);
}

struct tblock {
  uint64_t b;
  unsigned st;                  /* VHDX payload state */
  int seed;
};

static enum block_state
want_state (unsigned st)
{
  return st == 0 ? BLK_ABSENT : st == 6 ? BLK_FULL : st == 7 ? BLK_PARTIAL
    : BLK_ZERO;
}

/* Walk states and the contents of every listed block (the rest must be
 * ABSENT). */
static void
check_blocks (struct layer *l, const struct vb *v, const struct tblock *t,
              size_t nt, int parent_seed, const char *what)
{
  uint8_t *got = malloc (l->block_size), *want = malloc (l->block_size);
  struct blocks bs;
  size_t i, allocated = 0;
  uint64_t b;

  collect (l, &bs);
  for (b = 0; b < bs.n; b++)
    allocated += bs.state[b] != BLK_ABSENT;
  for (i = 0; i < nt; i++) {
    b = t[i].b;
    allocated -= want_state (t[i].st) != BLK_ABSENT;
    CHECK (bs.state[b] == want_state (t[i].st), "%s: block %" PRIu64
           ": state %d, expected %d", what, b, bs.state[b],
           want_state (t[i].st));
    expect_block (v, b, t[i].st, t[i].seed, parent_seed, want);
    CHECK (read_block (l, &bs, b, got, parent_seed) == 0
           && memcmp (got, want, block_len (l, b)) == 0,
           "%s: block %" PRIu64 ": wrong contents", what, b);
  }
  CHECK (allocated == 0, "%s: %zu unexpected non-ABSENT blocks", what,
         allocated);
  blocks_free (&bs);
  free (got);
  free (want);
}

static void
test_dynamic_4k (void)
{
  static const struct tblock t[] = {
    { 0, 6, 1 }, { 1, 2, 0 }, { 2, 1, 0 }, { 3, 3, 0 }, { 4, 5, 0 },
    { 32767, 6, 2 }, { 32768, 6, 3 }, { 40960, 6, 4 },
  };
  struct vb v;
  struct layer *l;
  size_t i;

  /* 4096-byte sectors, 1 MiB blocks: chunk ratio 32768, two chunks, a
   * last block of one sector. */
  vb_init (&v, "dyn4k.vhdx", 40 * GiB + 4096, MiB, 4096, VB_DYNAMIC);
  for (i = 0; i < sizeof t / sizeof t[0]; i++)
    vb_block (&v, t[i].b, t[i].st, t[i].seed);
  v.bat[v.cr] = 6;   /* junk SB entry in a base: unused, tolerated */
  vb_write (&v);
  if ((l = expect_open (v.path, false, "dynamic 4k"))) {
    CHECK (l->sector == 4096 && l->size == 40 * GiB + 4096
           && l->nr_blocks == 40961 && strcmp (l->type, "dynamic") == 0
           && strcmp (l->creator, "vhdchain unit test") == 0,
           "dynamic 4k: geometry");
    check_blocks (l, &v, t, sizeof t / sizeof t[0], -1, "dynamic 4k");
    layer_close (l);
  }
  vb_free (&v, false);
}

static void
test_fixed_big_blocks (void)
{
  uint8_t *got = malloc (MiB), *want = malloc (MiB);
  struct blocks bs;
  struct vb v;
  struct layer *l;
  uint64_t b;

  /* 256 MiB blocks, 512-byte sectors: chunk ratio 16, 18 blocks over two
   * chunks, the last one 1 MiB and the only one written (the rest sparse). */
  vb_init (&v, "fixed.vhdx", 17 * 256 * MiB + MiB, 256 * MiB, 512, VB_FIXED);
  for (b = 0; b < 18; b++)
    vb_block (&v, b, 6, b == 17 ? 4 : -1);
  vb_write (&v);
  if ((l = expect_open (v.path, false, "fixed 256M"))) {
    CHECK (strcmp (l->type, "fixed") == 0 && l->block_size == 256 * MiB
           && l->nr_blocks == 18, "fixed: type %s", l->type);
    collect (l, &bs);
    for (b = 0; b < 18; b++)
      CHECK (bs.state[b] == BLK_FULL && bs.off[b] == v.bat_off + v.bat_len
             + b * 256 * MiB, "fixed: block %" PRIu64, b);
    expect_block (&v, 17, 6, 4, -1, want);
    CHECK (read_block (l, &bs, 17, got, -1) == 0
           && memcmp (got, want, MiB) == 0, "fixed: last block contents");
    blocks_free (&bs);
    layer_close (l);
  }
  vb_free (&v, false);
  free (got);
  free (want);
}

static const char *const hyperv_locator[] = {
  "parent_linkage", "{0ffbcd55-1320-498f-9c15-1a97335aafcd}",
  "absolute_win32_path", "C:\\Users\\Public\\Documents\\Hyper-V\\Virtual "
  "hard disks\\Generation 1_49C4.avhdx",
  "relative_path", ".\\Generation 1_49C4.avhdx",
  "volume_path", "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\"
  "Users\\Public\\Generation 1_49C4.avhdx",
  "parent_linkage2", "{00000000-0000-0000-0000-000000000000}",
  NULL,
};

static void
check_hyperv_locator (struct layer *l)
{
  static const uint8_t linkage[16] = {
    0x55, 0xcd, 0xfb, 0x0f, 0x20, 0x13, 0x8f, 0x49,
    0x9c, 0x15, 0x1a, 0x97, 0x33, 0x5a, 0xaf, 0xcd };

  CHECK (memcmp (l->parent_id, linkage, 16) == 0, "locator: parent_id");
  CHECK (guid_is_zero (l->parent_id2), "locator: parent_id2");
  CHECK (l->nr_hints == 3, "locator: %zu hints", l->nr_hints);
  if (l->nr_hints != 3)
    return;
  CHECK (l->hints[0].kind == HINT_RELATIVE
         && strcmp (l->hints[0].path, hyperv_locator[5]) == 0,
         "locator: relative '%s'", l->hints[0].path);
  CHECK (l->hints[1].kind == HINT_VOLUME
         && strcmp (l->hints[1].path, hyperv_locator[7]) == 0,
         "locator: volume '%s'", l->hints[1].path);
  CHECK (l->hints[2].kind == HINT_ABSOLUTE
         && strcmp (l->hints[2].path, hyperv_locator[3]) == 0,
         "locator: absolute '%s'", l->hints[2].path);
}

static void
test_differencing (uint32_t sector)
{
  uint32_t cr = (UINT64_C (1) << 23) * sector / (2 * MiB);
  const struct tblock t[] = {
    { 0, 7, 1 }, { 1, 6, 2 }, { 2, 2, 0 }, { 4, 1, 0 }, { 5, 3, 0 },
    { 6, 5, 0 }, { cr - 1, 7, 3 }, { cr, 7, 4 }, { cr + 1, 6, 5 },
    { cr + 2, 7, 6 },
  };
  char what[64];
  struct vb v;
  struct layer *l;
  size_t i;

  snprintf (what, sizeof what, "differencing %" PRIu32, sector);
  /* Two chunks; the last block (cr + 2) is partial and short. */
  vb_init (&v, "diff.vhdx", (uint64_t) (cr + 2) * 2 * MiB + 3 * sector,
           2 * MiB, sector, VB_DIFF);
  for (i = 0; i < sizeof t / sizeof t[0]; i++)
    vb_block (&v, t[i].b, t[i].st, t[i].seed);
  vb_locator (&v, vhdx_guid_locator_type_vhdx, hyperv_locator);
  vb_write (&v);
  if ((l = expect_open (v.path, false, what))) {
    CHECK (l->differencing && strcmp (l->type, "differencing") == 0
           && l->sector == sector && l->nr_blocks == cr + 3,
           "%s: geometry", what);
    CHECK (l->id[0] == 0xA0 && l->id[15] == 2, "%s: id from header 2", what);
    check_hyperv_locator (l);
    check_blocks (l, &v, t, sizeof t / sizeof t[0], 99, what);
    layer_close (l);
  }
  vb_free (&v, false);
}

/* ---- log replay, built ---- */

struct tdesc {
  bool zero;
  uint64_t off, zlen;
  const uint8_t *page;
};

/* A log entry into out; returns its length. */
static size_t
log_entry (uint8_t *out, const uint8_t guid[16], uint64_t seq, uint32_t tail,
           uint64_t flushed, uint64_t last, const struct tdesc *d, int nd)
{
  size_t dsec = (64 + 32 * nd + 4095) / 4096, len = dsec * 4096, next = dsec;
  int i;

  for (i = 0; i < nd; i++)
    len += d[i].zero ? 0 : 4096;
  memset (out, 0, len);
  memcpy (out, "loge", 4);
  put_le32 (out + 8, len);
  put_le32 (out + 12, tail);
  put_le64 (out + 16, seq);
  put_le32 (out + 24, nd);
  memcpy (out + 32, guid, 16);
  put_le64 (out + 48, flushed);
  put_le64 (out + 56, last);
  for (i = 0; i < nd; i++) {
    uint8_t *e = out + 64 + 32 * i;
    memcpy (e, d[i].zero ? "zero" : "desc", 4);
    put_le64 (e + 16, d[i].off);
    put_le64 (e + 24, seq);
    if (d[i].zero) {
      put_le64 (e + 8, d[i].zlen);
      continue;
    }
    memcpy (e + 4, d[i].page + 4092, 4);
    memcpy (e + 8, d[i].page, 8);
    memcpy (out + next * 4096, "data", 4);
    put_le32 (out + next * 4096 + 4, seq >> 32);
    memcpy (out + next * 4096 + 8, d[i].page + 8, 4084);
    put_le32 (out + next * 4096 + 4092, (uint32_t) seq);
    next++;
  }
  put_crc (out, len);
  return len;
}

static void
vb_log_put (struct vb *v, uint64_t rel, const uint8_t *e, size_t len)
{
  size_t first = v->log_len - rel < len ? v->log_len - rel : len;

  pwrite_all (v->fd, e, first, v->log_off + rel);
  if (first < len)
    pwrite_all (v->fd, e + first, len - first, v->log_off);
}

/* The BAT page (4 KiB, 512 entries) as v->bat has it now. */
static void
vb_bat_page (const struct vb *v, uint64_t page, uint8_t *out)
{
  uint64_t i;

  memset (out, 0, 4096);
  for (i = 0; i < 512 && page * 512 + i < v->bat_entries; i++)
    put_le64 (out + 8 * i, v->bat[page * 512 + i]);
}

enum log_variant {
  LOG_GOOD, LOG_EMPTY, LOG_TRUNCATED, LOG_TARGET_LOG, LOG_TARGET_HEADER,
  LOG_TARGET_PAYLOAD, LOG_ONLY_TORN,
};

/* A 1 GiB dynamic image whose on-disk BAT is stale: the log's active
 * sequence (seq 200-202) wraps around the end of the ring; an older
 * sequence, an entry of another log and a torn entry must be ignored. */
static void
log_put_entry (struct vb *v, uint64_t rel, const uint8_t guid[16],
               uint64_t seq, uint64_t flushed, uint64_t last,
               const struct tdesc *d, int torn_byte)
{
  uint8_t *e = malloc (3 * 4096);
  size_t len = log_entry (e, guid, seq, seq < 100 ? rel : 1020 * 1024,
                          flushed, last, d, 1);

  if (torn_byte >= 0)
    e[torn_byte] ^= 0xFF;
  vb_log_put (v, rel, e, len);
  free (e);
}

/* A 1 GiB dynamic image whose on-disk BAT is stale: the log's active
 * sequence (seq 200-202, tail at 1020 KiB) wraps around the end of the
 * ring; an older sequence (seq 50), an entry of another log and a torn
 * entry (seq 203) must be ignored. */
static void
build_log_image (struct vb *v, enum log_variant var)
{
  static const uint8_t other_guid[16] = { 9, 9, 9 };
  uint8_t page_old[4096], page0[4096], page1[4096];
  uint64_t a, b, size;
  struct tdesc d;

  vb_init (v, "log.vhdx", GiB, MiB, 512, VB_DYNAMIC);
  memset (v->log_guid, 0x5A, 16);
  /* On disk: block 600 FULL (the log zeroes its BAT page); blocks 0 and
   * 2 written but not yet in the on-disk BAT. */
  vb_block (v, 600, 6, 8);
  vb_write (v);
  a = vb_block (v, 0, 6, 1);
  b = vb_block (v, 2, 6, 2);
  size = v->next;
  if (ftruncate (v->fd, size) < 0)
    exit (2);
  memset (v->bat, 0, 8 * 3);
  v->bat[0] = 2;                        /* the stale view: block 0 ZERO */
  vb_bat_page (v, 0, page_old);
  v->bat[0] = a | 6;                    /* seq 200: block 0, block 1 ZERO */
  v->bat[1] = 2;
  vb_bat_page (v, 0, page0);
  v->bat[2] = b | 6;                    /* seq 201: block 2 as well */
  vb_bat_page (v, 0, page1);

  d = (struct tdesc) { false, v->bat_off, 0, page_old };
  log_put_entry (v, 600 * 1024, other_guid, 500, size, size, &d, -1);
  if (var == LOG_EMPTY)
    return;
  log_put_entry (v, 512 * 1024, v->log_guid, 50, size, size, &d, -1);
  d.page = page0;
  d.off = var == LOG_TARGET_LOG ? v->log_off + 8192
    : var == LOG_TARGET_HEADER ? 64 * 1024
    : var == LOG_TARGET_PAYLOAD ? b + 4096 : v->bat_off;
  log_put_entry (v, 1020 * 1024, v->log_guid, 200, size, size, &d,
                 var == LOG_ONLY_TORN ? 5000 : -1);     /* wraps */
  d = (struct tdesc) { false, v->bat_off, 0, page1 };
  log_put_entry (v, 4096, v->log_guid, 201, size, size, &d, -1);
  /* Zero the BAT page holding block 600's entry; extend the file. */
  d = (struct tdesc) { true, v->bat_off + 4096, 4096, NULL };
  log_put_entry (v, 12 * 1024, v->log_guid, 202,
                 var == LOG_TRUNCATED ? size + 4096 : size, size + 2 * MiB,
                 &d, -1);
  d = (struct tdesc) { false, v->bat_off, 0, page_old };
  log_put_entry (v, 20 * 1024, v->log_guid, 203, size, size, &d, 4100);
}

static void
test_log_built (void)
{
  static const struct tblock t[] = {
    { 0, 6, 1 }, { 1, 2, 0 }, { 2, 6, 2 },
  };
  char before[65], after[65];
  struct vb v;
  struct layer *l;

  build_log_image (&v, LOG_GOOD);
  sha256_file (v.path, before);
  if ((l = expect_open (v.path, false, "built log"))) {
    check_blocks (l, &v, t, sizeof t / sizeof t[0], -1, "built log");
    layer_close (l);
  }
  sha256_file (v.path, after);
  CHECK (strcmp (before, after) == 0, "built log: file changed");
  vb_free (&v, false);

  build_log_image (&v, LOG_EMPTY);
  expect_fail (v.path, false, "no valid sequence", "log: no entry of ours");
  vb_free (&v, false);
  build_log_image (&v, LOG_ONLY_TORN);
  if ((l = expect_open (v.path, false, "log: torn first entry"))) {
    /* Without seq 200, the run 201-202 lacks its tail: the stale
     * sequence 50 is the only complete one, and block 600's BAT page is
     * as on disk. */
    static const struct tblock t2[] = { { 0, 2, 0 }, { 600, 6, 8 } };
    check_blocks (l, &v, t2, 2, -1, "log: torn first entry");
    layer_close (l);
  }
  vb_free (&v, false);
  build_log_image (&v, LOG_TRUNCATED);
  expect_fail (v.path, false, "FlushedFileOffset", "log: truncated file");
  vb_free (&v, false);
  build_log_image (&v, LOG_TARGET_LOG);
  expect_fail (v.path, false, "inside the log", "log: target in the log");
  vb_free (&v, false);
  build_log_image (&v, LOG_TARGET_HEADER);
  expect_fail (v.path, false, "below 192 KiB", "log: target a header");
  vb_free (&v, false);
  build_log_image (&v, LOG_TARGET_PAYLOAD);
  expect_fail (v.path, false, "the log writes into this payload block",
               "log: target a payload block");
  vb_free (&v, false);
}

/* ---- malformed files ---- */

/* A small valid image: 8 MiB dynamic, 1 MiB blocks, block 0 FULL. */
static void
small (struct vb *v, int kind)
{
  vb_init (v, "bad.vhdx", 8 * MiB, MiB, 512, kind);
  vb_block (v, 0, kind == VB_DIFF ? 7 : 6, 1);
  if (kind == VB_DIFF)
    vb_locator (v, vhdx_guid_locator_type_vhdx, hyperv_locator);
}

#define H1 (64 * 1024)
#define H2 (128 * 1024)
#define RT1 (192 * 1024)
#define RT2 (256 * 1024)

static void
test_headers (void)
{
  struct vb v;
  struct layer *l;

  small (&v, VB_DYNAMIC);
  v.seq[0] = 3;                 /* header 1 would win */
  vb_write (&v);
  vb_patch32 (&v, H1 + 200, 1, 0, 0);
  if ((l = expect_open (v.path, false, "header 1 bad CRC"))) {
    CHECK (l->id[15] == 2, "header 1 bad CRC: used header %d", l->id[15]);
    layer_close (l);
  }
  vb_patch32 (&v, H2 + 200, 1, 0, 0);
  expect_fail (v.path, false, "header 1: CRC-32C mismatch, header 2: CRC-32C "
               "mismatch", "both headers bad CRC");
  if ((l = expect_open (v.path, true, "both bad, ignore_checksums"))) {
    CHECK (l->id[15] == 1, "ignore_checksums: larger sequence number");
    layer_close (l);
  }
  vb_patch (&v, H1, "HEAD", 4, 0, 0);
  vb_patch (&v, H2, "HEAD", 4, 0, 0);
  expect_fail (v.path, true, "no 'head' signature", "no header signature");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_write (&v);
  vb_patch32 (&v, H2 + 200, 1, 0, 0);
  if ((l = expect_open (v.path, false, "header 2 bad CRC"))) {
    CHECK (l->id[15] == 1, "header 2 bad CRC: used header %d", l->id[15]);
    layer_close (l);
  }
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  v.seq[0] = v.seq[1] = 7;
  v.twins = true;
  vb_write (&v);
  if ((l = expect_open (v.path, false, "identical twin headers")))
    layer_close (l);
  vb_patch32 (&v, H1 + 200, 1, H1, 4096);
  expect_fail (v.path, false, "same SequenceNumber 7 but different",
               "equal sequence numbers");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_write (&v);
  vb_patch32 (&v, H2 + 66, 2, H2, 4096);
  expect_fail (v.path, false, "header 2: Version is not 1", "version 2");
  vb_patch32 (&v, H2 + 66, 1, H2, 4096);
  vb_patch32 (&v, H2 + 72, MiB + 4096, H2, 4096);
  expect_fail (v.path, false, "multiple of 1 MiB", "log offset unaligned");
  vb_free (&v, false);
}

static void
test_regions (void)
{
  struct vb v;
  struct layer *l;

  small (&v, VB_DYNAMIC);
  vb_write (&v);
  vb_patch32 (&v, RT1 + 1000, 1, 0, 0);
  if ((l = expect_open (v.path, false, "region table 1 bad CRC")))
    layer_close (l);
  vb_patch32 (&v, RT2 + 1000, 1, 0, 0);
  expect_fail (v.path, false, "neither copy", "both region tables bad");
  if ((l = expect_open (v.path, true, "region tables, ignore_checksums")))
    layer_close (l);
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_add_region (&v, guid_unknown, 20 * MiB, MiB, 1);
  vb_write (&v);
  expect_fail (v.path, false, "unknown region marked required",
               "unknown required region");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_add_region (&v, guid_unknown, vb_alloc (&v, MiB), MiB, 0);
  vb_write (&v);
  if ((l = expect_open (v.path, false, "unknown optional region")))
    layer_close (l);
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_add_region (&v, guid_unknown, v.bat_off, MiB, 0);
  vb_write (&v);
  expect_fail (v.path, false, "region {12345678-9abc-def0-0102-030405060708}"
               " at 3145728 + 1048576 overlaps",
               "region overlapping the BAT");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  v.regions[0].off = 3 * MiB + 4096;
  vb_write (&v);
  expect_fail (v.path, false, "multiples of 1 MiB", "BAT region unaligned");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  v.nr_regions = 1;
  vb_write (&v);
  expect_fail (v.path, false, "no metadata region", "no metadata region");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  v.regions[1] = v.regions[0];
  vb_write (&v);
  expect_fail (v.path, false, "duplicate", "duplicate region");
  vb_free (&v, false);
}

static void
set_u32_item (struct vb *v, const uint8_t *guid, uint32_t x)
{
  put_le32 (vb_item (v, guid)->data, x);
}

static void
set_u64_item (struct vb *v, const uint8_t *guid, uint64_t x)
{
  put_le64 (vb_item (v, guid)->data, x);
}

static void
test_metadata_items (void)
{
  struct vb v;
  struct layer *l;
  int i;

  small (&v, VB_DYNAMIC);
  vb_add_item (&v, guid_unknown, 4, "x", 1);
  vb_write (&v);
  expect_fail (v.path, false, "unknown system item marked required",
               "unknown required item");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_add_item (&v, guid_unknown, 1 | 4, "x", 1);
  vb_write (&v);
  expect_fail (v.path, false, "unknown user item marked required",
               "unknown required user item");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_add_item (&v, guid_unknown, 2, "x", 1);
  vb_add_item (&v, vhdx_guid_file_parameters, 1, "user", 4); /* user item */
  vb_write (&v);
  if ((l = expect_open (v.path, false, "unknown optional items")))
    layer_close (l);
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  for (i = 0; i < v.nr_items; i++)
    if (vb_item (&v, vhdx_guid_logical_sector_size) == &v.items[i]) {
      free (v.items[i].data);
      v.items[i] = v.items[--v.nr_items];
    }
  vb_write (&v);
  expect_fail (v.path, false, "required item is missing", "no sector size");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_add_item (&v, vhdx_guid_virtual_disk_size, 6, "12345678", 8);
  vb_write (&v);
  expect_fail (v.path, false, "duplicate", "duplicate item");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  vb_write (&v);
  vb_patch32 (&v, v.md_off + 32 + 16, 4096, 0, 0);      /* item offset */
  expect_fail (v.path, false, "outside the metadata region",
               "item inside the table");
  vb_patch32 (&v, v.md_off + 32 + 16, MiB - 4, 0, 0);
  expect_fail (v.path, false, "outside the metadata region",
               "item past the region");
  vb_free (&v, false);

}

static void
test_metadata_values (void)
{
  struct vb v;

  small (&v, VB_DYNAMIC);
  vb_item (&v, vhdx_guid_file_parameters)->len = 4;
  vb_write (&v);
  expect_fail (v.path, false, "File Parameters item is 4 bytes",
               "short File Parameters");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  set_u32_item (&v, vhdx_guid_file_parameters, 3 * MiB);
  vb_write (&v);
  expect_fail (v.path, false, "BlockSize", "block size 3 MiB");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  set_u32_item (&v, vhdx_guid_file_parameters, 512 * MiB);
  vb_write (&v);
  expect_fail (v.path, false, "BlockSize", "block size 512 MiB");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  set_u32_item (&v, vhdx_guid_logical_sector_size, 1024);
  vb_write (&v);
  expect_fail (v.path, false, "Logical Sector Size", "1024-byte sectors");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  set_u64_item (&v, vhdx_guid_virtual_disk_size, 8 * MiB + 100);
  vb_write (&v);
  expect_fail (v.path, false, "not a multiple", "size not in sectors");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  set_u64_item (&v, vhdx_guid_virtual_disk_size, (UINT64_C (64) << 40) + MiB);
  vb_write (&v);
  expect_fail (v.path, false, "more than 64 TiB", "size 64 TiB + 1 MiB");
  vb_free (&v, false);

  small (&v, VB_DYNAMIC);
  set_u64_item (&v, vhdx_guid_virtual_disk_size, 200 * GiB);
  vb_write (&v);
  expect_fail (v.path, false, "cannot hold", "BAT region too small");
  vb_free (&v, false);
}

static void
bat_case (uint64_t entry1, int kind, const char *needle, const char *what)
{
  struct vb v;

  small (&v, kind);
  v.bat[1] = entry1;
  vb_write (&v);
  expect_fail (v.path, false, needle, what);
  vb_free (&v, false);
}

static void
test_bat (void)
{
  struct vb v;
  uint64_t off0;

  small (&v, VB_DYNAMIC);
  off0 = v.bat[0] & ~UINT64_C (7);
  vb_free (&v, false);
  bat_case (off0 | 6 | 8, VB_DYNAMIC, "reserved bits", "BAT reserved bits");
  bat_case (4, VB_DYNAMIC, "reserved block state 4", "BAT state 4");
  bat_case (off0 + MiB + 7, VB_DYNAMIC, "PARTIALLY_PRESENT in a file without",
            "BAT state 7 in a base");
  bat_case (6, VB_DYNAMIC, "FileOffsetMB 0", "FULL at 0");
  bat_case ((UINT64_C (1000) << 20) | 6, VB_DYNAMIC, "past the end",
            "FULL past EOF");
  bat_case (off0 | 6, VB_DYNAMIC, "overlaps", "two blocks at one offset");
  bat_case ((UINT64_C (3) << 20) | 6, VB_DYNAMIC, "overlaps", "block on BAT");
  bat_case ((UINT64_C (1) << 20) | 6, VB_DYNAMIC, "overlaps", "block on log");
  bat_case ((UINT64_C (0) << 20) | 2 | (UINT64_C (1) << 19), VB_DYNAMIC,
            "reserved bits", "ZERO with reserved bit 19");
  /* FileOffsetMB of a ZERO block is ignored, as Windows may leave one. */
  small (&v, VB_DYNAMIC);
  v.bat[1] = (UINT64_C (3) << 20) | 3;
  vb_write (&v);
  {
    struct layer *l = expect_open (v.path, false, "UNMAPPED with offset");
    if (l)
      layer_close (l);
  }
  vb_free (&v, false);

  /* Differencing: a PARTIAL block needs its chunk's sector bitmap. */
  small (&v, VB_DIFF);
  v.bat[v.cr] = 0;
  vb_write (&v);
  expect_fail (v.path, false, "no sector bitmap block", "PARTIAL without SB");
  vb_free (&v, false);
  small (&v, VB_DIFF);
  v.bat[v.cr] = (v.bat[v.cr] & ~UINT64_C (7)) | 3;
  vb_write (&v);
  expect_fail (v.path, false, "neither SB_BLOCK_NOT_PRESENT", "SB state 3");
  vb_free (&v, false);
  small (&v, VB_DIFF);
  v.bat[v.cr] = (v.bat[0] & ~UINT64_C (7)) | 6;
  vb_write (&v);
  expect_fail (v.path, false, "overlaps", "SB on a payload block");
  vb_free (&v, false);
}

static void
locator_case (const uint8_t *type, const char *const *kv, const char *needle,
              const char *what)
{
  struct vb v;

  vb_init (&v, "loc.vhdx", 8 * MiB, MiB, 512, VB_DIFF);
  if (kv)
    vb_locator (&v, type, kv);
  vb_write (&v);
  expect_fail (v.path, false, needle, what);
  vb_free (&v, false);
}

static void
test_locators (void)
{
  static const char *const no_link[] = { "relative_path", "x.vhdx", NULL };
  static const char *const dup[] = {
    "parent_linkage", "{0ffbcd55-1320-498f-9c15-1a97335aafcd}",
    "relative_path", "a.vhdx", "relative_path", "b.vhdx", NULL };
  static const char *const bad_guid[] = {
    "parent_linkage", "{0ffbcd55-1320-498f-9c15-1a97335aafc}", NULL };
  static const char *const empty_key[] = {
    "parent_linkage", "{0ffbcd55-1320-498f-9c15-1a97335aafcd}", "", "x",
    NULL };
  static const char *const linkage2[] = {
    "parent_linkage", "{0ffbcd55-1320-498f-9c15-1a97335aafcd}",
    "parent_linkage2", "A3CCCDD4-E8CE-4321-9243-CDAA37D5A0E2",
    "relative_path", "", "unknown_key", "whatever", NULL };
  struct vb v;
  struct layer *l;
  uint8_t nul[2] = { 0, 0 };

  locator_case (NULL, NULL, "no parent locator", "HasParent, no locator");
  locator_case (vhdx_guid_locator_type_vhdx, no_link, "no parent_linkage",
                "no parent_linkage");
  locator_case (vhdx_guid_locator_type_vhdx, dup, "'relative_path' appears "
                "twice", "duplicate key");
  locator_case (vhdx_guid_locator_type_vhdx, bad_guid, "is not a GUID",
                "bad linkage");
  locator_case (vhdx_guid_locator_type_vhdx, empty_key, "key at",
                "empty key");
  locator_case (guid_unknown, hyperv_locator, "not the VHDX type",
                "locator type");

  vb_init (&v, "loc.vhdx", 8 * MiB, MiB, 512, VB_DIFF);
  vb_locator (&v, vhdx_guid_locator_type_vhdx, linkage2);
  vb_write (&v);
  if ((l = expect_open (v.path, false, "parent_linkage2"))) {
    CHECK (guid_is (l->parent_id2, "a3cccdd4-e8ce-4321-9243-cdaa37d5a0e2")
           && l->nr_hints == 0, "parent_linkage2 parsed, empty path dropped");
    layer_close (l);
  }
  /* Locator item 6 is the last: its first value holds a GUID; a NUL in it,
   * an odd length, an entry count too large for the item. */
  {
    struct vb_item *it = vb_item (&v, vhdx_guid_parent_locator);
    uint64_t item_off = v.md_off + 64 * 1024;
    int i;
    for (i = 0; &v.items[i] != it; i++)
      item_off += (v.items[i].len + 7) / 8 * 8;
    vb_patch (&v, item_off + get_le32 (it->data + 24) + 2, nul, 2, 0, 0);
    expect_fail (v.path, false, "NUL character", "NUL in a value");
    vb_patch (&v, item_off + get_le32 (it->data + 24) + 2, "0\0", 2, 0, 0);
    vb_patch (&v, item_off + 20 + 10, "\x4b", 1, 0, 0);
    expect_fail (v.path, false, "outside the item", "odd length");
    vb_patch (&v, item_off + 20 + 10, "\x4c", 1, 0, 0);
    vb_patch (&v, item_off + 18, "\xff\x0f", 2, 0, 0);
    expect_fail (v.path, false, "do not fit", "too many entries");
  }
  vb_free (&v, false);
}

static void
test_creator (void)
{
  uint8_t fid[520];
  struct vb v;
  struct layer *l;
  char longname[200];
  int i;

  /* The libvhdi file identifier fragment gives the creator. */
  read_fragment ("file_identifier.1", fid, sizeof fid);
  small (&v, VB_DYNAMIC);
  v.file_id = fid;
  vb_write (&v);
  if ((l = expect_open (v.path, false, "file_identifier.1"))) {
    CHECK (strcmp (l->creator, "Microsoft Windows 10.0.19041.0") == 0,
           "file_identifier.1: creator '%s'", l->creator);
    layer_close (l);
  }
  vb_free (&v, false);

  /* A long creator is cut at 63 bytes, between characters. */
  for (i = 0; i < 100; i++)
    longname[i] = 'a' + i % 26;
  longname[100] = '\0';
  small (&v, VB_DYNAMIC);
  v.creator = longname;
  vb_write (&v);
  if ((l = expect_open (v.path, false, "long creator"))) {
    CHECK (strlen (l->creator) == 63 && strncmp (l->creator, longname, 63) == 0,
           "long creator '%s'", l->creator);
    layer_close (l);
  }
  /* Truncated file. */
  if (ftruncate (v.fd, 200 * 1024) == 0)
    expect_fail (v.path, false, "truncated", "truncated file");
  vb_free (&v, false);

}

static void
test_misc (void)
{
  struct vb v;
  struct layer *l;
  char path[PATH_MAX];
  int fd;

  /* Not a VHDX: vhdx_open declines without an error. */
  tmp_path (path, "not.vhdx");
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  pwrite_all (fd, "vhdxfil", 7, 0);
  {
    struct layer fake = { .path = path, .fd = fd, .file_size = 7 };
    struct layer_opts o = { 0 };
    CHECK (vhdx_open (&fake, &o) == 0, "short non-VHDX: not declined");
    pwrite_all (fd, "conectix", 8, 0);
    fake.file_size = 4096;
    pwrite_all (fd, "", 1, 4095);
    CHECK (vhdx_open (&fake, &o) == 0, "VHD-like file: not declined");
  }
  close (fd);
  unlink (path);

  /* A zero-sized disk opens with no blocks. */
  vb_init (&v, "empty.vhdx", 0, 32 * MiB, 512, VB_DYNAMIC);
  vb_write (&v);
  if ((l = expect_open (v.path, false, "zero size"))) {
    struct blocks bs;
    CHECK (l->size == 0 && l->nr_blocks == 0, "zero size: geometry");
    collect (l, &bs);
    blocks_free (&bs);
    layer_close (l);
  }
  vb_free (&v, false);
}

/* The largest disk: 64 TiB, 32 MiB blocks, 4096-byte sectors (chunk ratio
 * 1024, 2^21 blocks, a 17 MiB BAT read in pieces). */
static void
test_max_size (void)
{
  const uint64_t n = UINT64_C (1) << 21;
  const struct tblock t[] = {
    { 0, 6, -1 }, { 1023, 2, 0 }, { 1024, 3, 0 }, { n - 1, 6, 3 },
  };
  struct vb v;
  struct layer *l;
  size_t i;

  vb_init (&v, "max.vhdx", UINT64_C (64) << 40, 32 * MiB, 4096, VB_DYNAMIC);
  for (i = 0; i < sizeof t / sizeof t[0]; i++)
    vb_block (&v, t[i].b, t[i].st, t[i].seed);
  vb_write (&v);
  if ((l = expect_open (v.path, false, "64 TiB"))) {
    CHECK (l->size == UINT64_C (64) << 40 && l->nr_blocks == n,
           "64 TiB: geometry");
    check_blocks (l, &v, t, sizeof t / sizeof t[0], -1, "64 TiB");
    layer_close (l);
  }
  vb_free (&v, false);
}

int
main (void)
{
  char tmpl[] = "/tmp/unit-vhdx.XXXXXX";

  samples = getenv ("SAMPLES");
  verbose = getenv ("VERBOSE") != NULL;
  if (!samples) {
    fprintf (stderr, "unit-vhdx: SAMPLES is not set (the shared samples "
             "folder)\n");
    return 1;
  }
  if (!mkdtemp (tmpl)) {
    perror ("mkdtemp");
    return 1;
  }
  snprintf (tmpdir, sizeof tmpdir, "%s", tmpl);

  test_fragment_header ();
  test_fragment_regions ();
  test_fragment_metadata ();
  test_fragment_locator ();
  test_dynamic_4k ();
  test_fixed_big_blocks ();
  test_differencing (512);
  test_differencing (4096);
  test_log_built ();
  test_headers ();
  test_regions ();
  test_metadata_items ();
  test_metadata_values ();
  test_bat ();
  test_locators ();
  test_creator ();
  test_misc ();
  test_max_size ();
  test_log_replay_sample ();
  test_qemu_images ();
  test_swap ();

  run ("rm -rf '%s'", tmpdir);
  printf ("unit-vhdx: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
