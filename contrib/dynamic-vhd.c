/* vhdchain(1): standalone dynamic VHD images, written front to back (see
 * dynamic-vhd.h).
 *
 * Layout (VHD spec v1.0, FORMATS.md 2.1): footer copy at 0, dynamic header
 * at 512, BAT at 1536, blocks from the next 4 KiB boundary, each a 512-byte
 * bitmap in the sector before its 4 KiB-aligned data, footer last.  The BAT
 * is kept in memory and written by dvhd_finish.  The footer carries our
 * creator code "vhdc" like the child writer, the spec's CHS geometry for the
 * size and current size = original size = the exact virtual size.  QEMU
 * sizes images of unknown creators by CHS (FORMATS.md 2.2), so it reads such
 * a file short unless the size is a CHS multiple or it is told
 * force_size_calc=current_size; Windows, VirtualBox, libvhdi and vhdchain
 * read the current size.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "byteorder.h"
#include "cli.h"
#include "dynamic-vhd.h"
#include "io.h"
#include "vhd.h"

#define BAT_OFF     1536
#define BITMAP_SIZE 512         /* 2 MiB / 512 / 8 */
#define MAX_SIZE    (UINT64_C (2040) << 30)
#define ALIGN(x, a) (((x) + (a) - 1) / (a) * (a))

struct dvhd {
  int fd;
  char *path;
  uint64_t size, nr_blocks;
  uint32_t *bat;                /* host order */
  uint64_t next;                /* file offset for the next block */
};

static void
make_header (uint8_t *h, uint64_t nr_blocks)
{
  memset (h, 0, VHD_HEADER_SIZE);
  memcpy (h, "cxsparse", 8);
  put_be64 (h + 8, UINT64_MAX);
  put_be64 (h + 16, BAT_OFF);
  put_be32 (h + 24, 0x00010000);
  put_be32 (h + 28, nr_blocks);
  put_be32 (h + 32, DVHD_BLOCK_SIZE);
  put_be32 (h + 36, vhd_checksum (h, VHD_HEADER_SIZE, 36));
}

static int
fail (struct dvhd *d, int err, const char *what)
{
  cli_error ("%s: %s: %s", d->path, what, strerror (err));
  return -err;
}

int
dvhd_create (int fd, const char *path, uint64_t size, struct dvhd **out)
{
  struct dvhd *d;

  if (size == 0 || size % 512 || size > MAX_SIZE) {
    cli_error ("%s: size: %" PRIu64 " bytes cannot be a VHD (a non-zero "
               "multiple of 512 up to 2040 GiB)", path, size);
    return -EFBIG;
  }
  if (!(d = calloc (1, sizeof *d)) || !(d->path = strdup (path))) {
    free (d);
    cli_error ("%s: out of memory", path);
    return -ENOMEM;
  }
  d->fd = fd;
  d->size = size;
  d->nr_blocks = (size + DVHD_BLOCK_SIZE - 1) / DVHD_BLOCK_SIZE;
  d->next = ALIGN (BAT_OFF + d->nr_blocks * 4, 4096);
  if (!(d->bat = malloc (d->nr_blocks * 4))) {
    dvhd_free (d);
    cli_error ("%s: out of memory", path);
    return -ENOMEM;
  }
  memset (d->bat, 0xFF, d->nr_blocks * 4);
  *out = d;
  return 0;
}

int
dvhd_write_block (struct dvhd *d, uint64_t b, const void *data)
{
  uint8_t bitmap[BITMAP_SIZE];
  uint64_t first = b * DVHD_BLOCK_SIZE, sectors = DVHD_BLOCK_SIZE / 512;
  uint64_t data_off = d->next + 4096;           /* 4 KiB aligned */
  int r;

  if (b >= d->nr_blocks)
    return fail (d, EINVAL, "block past the virtual end");
  if (d->size - first < DVHD_BLOCK_SIZE)
    sectors = (d->size - first) / 512;
  memset (bitmap, 0, BITMAP_SIZE);              /* MSB = lowest sector */
  memset (bitmap, 0xFF, sectors / 8);
  if (sectors % 8)
    bitmap[sectors / 8] = 0xFF << (8 - sectors % 8);
  /* the bitmap sector sits just before the data */
  if ((r = io_pwrite_full (d->fd, bitmap, BITMAP_SIZE,
                           data_off - BITMAP_SIZE)) < 0 ||
      (r = io_pwrite_full (d->fd, data, DVHD_BLOCK_SIZE, data_off)) < 0)
    return fail (d, -r, "writing a block");
  d->bat[b] = (data_off - BITMAP_SIZE) / 512;
  d->next = data_off + DVHD_BLOCK_SIZE;
  return 0;
}

int
dvhd_finish (struct dvhd *d)
{
  uint64_t bat_bytes = ALIGN (d->nr_blocks * 4, 512);
  uint8_t *meta = calloc (1, BAT_OFF + bat_bytes);
  uint8_t footer[VHD_FOOTER_SIZE];
  int r = meta ? 0 : -ENOMEM;

  if (r == 0) {
    vhd_make_footer (footer, 3, d->size, vhd_chs_geometry (d->size));
    memcpy (meta, footer, VHD_FOOTER_SIZE);
    make_header (meta + VHD_FOOTER_SIZE, d->nr_blocks);
    memset (meta + BAT_OFF, 0xFF, bat_bytes);
    for (uint64_t b = 0; b < d->nr_blocks; b++)
      put_be32 (meta + BAT_OFF + 4 * b, d->bat[b]);
    r = io_pwrite_full (d->fd, meta, BAT_OFF + bat_bytes, 0);
  }
  if (r == 0)
    r = io_pwrite_full (d->fd, footer, VHD_FOOTER_SIZE, d->next);
  free (meta);
  return r < 0 ? fail (d, -r, "writing the BAT and footers") : 0;
}

void
dvhd_free (struct dvhd *d)
{
  if (!d)
    return;
  free (d->bat);
  free (d->path);
  free (d);
}
