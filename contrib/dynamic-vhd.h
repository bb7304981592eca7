/* vhdchain(1): a writer of standalone dynamic VHD images, front to back.
 *
 * For flattening a chain (vhdchain convert): the caller hands over the
 * blocks that hold data in increasing order; each is appended (sector
 * bitmap in the sector before its 4 KiB-aligned data, as Windows lays
 * blocks out), and finishing writes the BAT, the dynamic header and both
 * footers (syncing is the caller's choice).  Until then the file is not a
 * valid image: a convert that fails removes it.  Not crash-safe and not
 * for chains: the writer of differencing layers is core/vhd-child.c.
 */
#ifndef VHDCHAIN_DYNAMIC_VHD_H
#define VHDCHAIN_DYNAMIC_VHD_H

#include <stdint.h>

#define DVHD_BLOCK_SIZE (UINT32_C (2) << 20)

struct dvhd;

/* Start a dynamic VHD of size bytes (a multiple of 512, at most 2040 GiB)
 * with 2 MiB blocks in the empty file fd.  Messages name path. */
int dvhd_create (int fd, const char *path, uint64_t size, struct dvhd **out);
/* Append block b (DVHD_BLOCK_SIZE bytes; past the virtual end, zeros);
 * blocks must come in increasing order.  Every sector is marked written. */
int dvhd_write_block (struct dvhd *, uint64_t b, const void *data);
/* Write the BAT, header and footers (not synced: the caller decides). */
int dvhd_finish (struct dvhd *);
void dvhd_free (struct dvhd *);

#endif
