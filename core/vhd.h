/* vhdchain core: what vhd.c tells vhd-child.c about an opened VHD. */
#ifndef VHDCHAIN_VHD_H
#define VHDCHAIN_VHD_H

#include <stdint.h>

#include "layer.h"

#define VHD_FOOTER_SIZE 512
#define VHD_HEADER_SIZE 1024
#define VHD_EPOCH       946684800       /* 2000-01-01 00:00:00 UTC */

struct vhd_layout {
  uint64_t bat_off;
  uint32_t bat_entries;         /* 0 for a fixed image */
  uint32_t bitmap_size;
  uint64_t data_end;            /* where the trailing footer starts */
  uint32_t chs;                 /* raw geometry: cylinders, heads, spt */
  uint64_t chs_size;            /* what CHS-trusting readers report */
};

void vhd_layout (const struct layer *, struct vhd_layout *);
uint32_t vhd_checksum (const uint8_t *p, size_t len, size_t csum_off);

/* The geometry the VHD spec's appendix gives a new disk of this size. */
uint32_t vhd_chs_geometry (uint64_t size);
/* A footer of a new image made by vhdchain ("vhdc"): type 3 or 4, the
 * data offset 512, a fresh unique id, checksummed. */
void vhd_make_footer (uint8_t *f, uint32_t type, uint64_t size, uint32_t chs);
/* Sector bitmaps are MSB-first on disk and LSB-first in a layer: the
 * conversion reverses the bits of each byte, the same both ways. */
void vhd_bitmap_flip (uint8_t *out, const uint8_t *in, size_t n);

#endif
