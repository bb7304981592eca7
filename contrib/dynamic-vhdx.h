/* vhdchain(1): a writer of standalone dynamic VHDX images, front to back.
 *
 * For flattening a chain (vhdchain convert), as dynamic-vhd.h is for VHD:
 * the caller hands over the data in increasing order of virtual offset, a
 * piece at a time, each inside one block; a block is allocated (appended,
 * 1 MiB aligned) at its first piece holding a non-zero byte, and all-zero
 * 4 KiB pieces are never written (the file space reads as zeros), so
 * blocks no data reaches stay NOT_PRESENT and the file stays sparse.
 * Finishing writes the BAT, the metadata and the first MiB (headers,
 * region tables); syncing is the caller's choice.  Until then the file is
 * not a valid image: a convert that fails removes it.  Not crash-safe and
 * not for chains: the writer of differencing layers is core/vhdx-child.c.
 */
#ifndef VHDCHAIN_DYNAMIC_VHDX_H
#define VHDCHAIN_DYNAMIC_VHDX_H

#include <stddef.h>
#include <stdint.h>

#define DVHDX_BLOCK_SIZE (UINT32_C (32) << 20)  /* the default, as Windows */

struct dvhdx;

/* Start a dynamic VHDX of size bytes (a multiple of sector, at most
 * 64 TiB) with logical sectors of sector bytes (512 or 4096) and blocks of
 * block_size bytes (a power of two from 1 to 256 MiB) in the empty file fd.
 * Messages name path. */
int dvhdx_create (int fd, const char *path, uint64_t size, uint32_t sector,
                  uint32_t block_size, struct dvhdx **out);
/* Store len bytes of the disk at virtual offset off: inside one block,
 * after every byte stored so far, 4 KiB aligned (len too, except at the
 * end of the disk). */
int dvhdx_write (struct dvhdx *, uint64_t off, const void *data, size_t len);
/* Write the BAT, the metadata region, headers and region tables (not
 * synced: the caller decides). */
int dvhdx_finish (struct dvhdx *);
void dvhdx_free (struct dvhdx *);

#endif
