/* vhdchain(1): standalone dynamic VHDX images, written front to back (see
 * dynamic-vhdx.h).
 *
 * Layout, as Windows lays out a new dynamic VHDX (MS-VHDX 2.1, FORMATS.md
 * 3.1): the first MiB (file identifier with creator "vhdchain", both
 * headers with LogGuid zero, both region table copies; core's
 * vhdx_make_first_mib, shared with the child writer), the log at 1 MiB
 * (1 MiB, never written: LogGuid zero, nothing to replay), the metadata
 * region at 2 MiB, the BAT at 3 MiB, then the payload blocks, each 1 MiB
 * aligned, in increasing virtual order.
 *
 * Metadata: File Parameters (the block size; neither LeaveBlockAllocated
 * nor HasParent), Virtual Disk Size, a new Virtual Disk ID (a new disk,
 * not the source's), the logical sector size of the source and a physical
 * sector size of 4096 (Windows' default).  The BAT has n + (n - 1) /
 * chunk_ratio entries for n blocks (MS-VHDX 2.5); a block is FULLY_PRESENT
 * or NOT_PRESENT (PARTIALLY_PRESENT does not exist without a parent), with
 * FileOffsetMB 0 for NOT_PRESENT, and the sector-bitmap entries are zero.
 * The BAT is kept in memory and written by dvhdx_finish.  The file ends
 * after the last block, whole even if the disk ends inside it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "byteorder.h"
#include "cli.h"
#include "dynamic-vhdx.h"
#include "io.h"
#include "vhdx.h"

#define MD_OFF      (2 * (uint64_t) VHDX_MiB)
#define MD_LEN      VHDX_MiB
#define BAT_OFF     (3 * (uint64_t) VHDX_MiB)
#define PHYSICAL    4096
#define ALIGN(x, a) (((x) + (a) - 1) / (a) * (a))

struct dvhdx {
  int fd;
  char *path;
  uint64_t size, nr_blocks;
  uint32_t sector, block_size, chunk_ratio;
  uint64_t bat_entries, bat_len;
  uint64_t *bat;                /* host order, as it will be on disk */
  uint64_t next;                /* file offset for the next block */
  uint64_t last;                /* the block written last, or UINT64_MAX */
  uint64_t written;             /* virtual end of what was stored */
};

static int
fail (struct dvhdx *d, int err, const char *what)
{
  cli_error ("%s: %s: %s", d->path, what, strerror (err));
  return -err;
}

int
dvhdx_create (int fd, const char *path, uint64_t size, uint32_t sector,
              uint32_t block_size, struct dvhdx **out)
{
  struct dvhdx *d;

  if (size == 0 || size % sector || size > VHDX_MAX_SIZE) {
    cli_error ("%s: size: %" PRIu64 " bytes cannot be a VHDX (a non-zero "
               "multiple of %" PRIu32 " up to 64 TiB)", path, size, sector);
    return -EFBIG;
  }
  if (!(d = calloc (1, sizeof *d)) || !(d->path = strdup (path))) {
    free (d);
    cli_error ("%s: out of memory", path);
    return -ENOMEM;
  }
  d->fd = fd;
  d->size = size;
  d->sector = sector;
  d->block_size = block_size;
  d->nr_blocks = (size + block_size - 1) / block_size;
  d->chunk_ratio = (UINT64_C (1) << 23) * sector / block_size;
  d->bat_entries = d->nr_blocks + (d->nr_blocks - 1) / d->chunk_ratio;
  d->bat_len = ALIGN (d->bat_entries * 8, VHDX_MiB);
  d->next = BAT_OFF + d->bat_len;
  d->last = UINT64_MAX;
  if (d->bat_len > UINT32_MAX ||
      !(d->bat = calloc (d->bat_entries, sizeof *d->bat))) {
    dvhdx_free (d);
    cli_error ("%s: out of memory", path);
    return -ENOMEM;
  }
  *out = d;
  return 0;
}

int
dvhdx_write (struct dvhdx *d, uint64_t off, const void *data, size_t len)
{
  const uint8_t *p = data;
  uint64_t b = off / d->block_size, idx = b + b / d->chunk_ratio;
  uint64_t in = off % d->block_size;
  int r;

  if (off < d->written || off + len > d->size ||
      in + len > d->block_size)
    return fail (d, EINVAL, "writing out of order or across blocks");
  d->written = off + len;
  if (cli_all_zero (p, len))
    return 0;                   /* NOT_PRESENT, or space reading zeros */
  if (b != d->last) {           /* its first data: append the block */
    d->bat[idx] = (d->next / VHDX_MiB) << 20 | VHDX_PAYLOAD_FULLY_PRESENT;
    d->next += d->block_size;
    d->last = b;
  }
  r = cli_pwrite_sparse (d->fd, p, len,
                         (d->bat[idx] >> 20) * VHDX_MiB + in);
  return r < 0 ? fail (d, -r, "writing a block") : 0;
}

/* File Parameters, Virtual Disk Size, Virtual Disk ID, Logical and
 * Physical Sector Size (MS-VHDX 2.6.2), items from 64 KiB on. */
static void
make_metadata (const struct dvhdx *d, uint8_t *md)
{
  static const struct { const uint8_t *guid; uint32_t flags, len; } it[] = {
    { vhdx_guid_file_parameters, VHDX_MD_IS_REQUIRED, 8 },
    { vhdx_guid_virtual_disk_size,
      VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK, 8 },
    { vhdx_guid_virtual_disk_id,
      VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK, 16 },
    { vhdx_guid_logical_sector_size,
      VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK, 4 },
    { vhdx_guid_physical_sector_size,
      VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK, 4 },
  };
  uint32_t at = VHDX_MD_TABLE_SIZE;

  memset (md, 0, MD_LEN);
  memcpy (md, "metadata", 8);
  put_le16 (md + 10, sizeof it / sizeof it[0]);
  for (size_t i = 0; i < sizeof it / sizeof it[0]; i++) {
    uint8_t *e = md + VHDX_MD_HEADER_SIZE + i * VHDX_MD_ENTRY_SIZE;
    memcpy (e, it[i].guid, 16);
    put_le32 (e + 16, at);
    put_le32 (e + 20, it[i].len);
    put_le32 (e + 24, it[i].flags);
    at += 16;
  }
  at = VHDX_MD_TABLE_SIZE;
  put_le32 (md + at, d->block_size);            /* flags 0: dynamic */
  put_le64 (md + at + 16, d->size);
  vhdx_new_guid (md + at + 32);
  put_le32 (md + at + 48, d->sector);
  put_le32 (md + at + 64, PHYSICAL);
}

int
dvhdx_finish (struct dvhdx *d)
{
  uint8_t *first = calloc (1, VHDX_MiB), *md = malloc (MD_LEN);
  uint8_t *bat = calloc (1, d->bat_len);
  int r = first && md && bat ? 0 : -ENOMEM;

  if (r == 0) {
    for (uint64_t i = 0; i < d->bat_entries; i++)
      put_le64 (bat + 8 * i, d->bat[i]);
    make_metadata (d, md);
    vhdx_make_first_mib (first, MD_OFF, MD_LEN, BAT_OFF, d->bat_len);
    /* The whole of the last block lies inside the file. */
    if (ftruncate (d->fd, d->next) == -1)
      r = -errno;
  }
  if (r == 0)
    r = io_pwrite_full (d->fd, bat, d->bat_len, BAT_OFF);
  if (r == 0)
    r = io_pwrite_full (d->fd, md, MD_LEN, MD_OFF);
  if (r == 0)
    r = io_pwrite_full (d->fd, first, VHDX_MiB, 0);
  free (first);
  free (md);
  free (bat);
  return r < 0 ? fail (d, -r, "writing the BAT, metadata and headers") : 0;
}

void
dvhdx_free (struct dvhdx *d)
{
  if (!d)
    return;
  free (d->bat);
  free (d->path);
  free (d);
}
