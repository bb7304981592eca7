/* vhdchain core: CRC-32C (Castagnoli), the checksum of every VHDX
 * structure (MS-VHDX 2.2, 2.3): reflected polynomial 0x82F63B78, initial
 * value and final xor all ones, so "123456789" gives 0xE3069283.  Not zlib's
 * CRC-32 (FORMATS.md pitfall 21).
 */
#ifndef VHDCHAIN_CRC32C_H
#define VHDCHAIN_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC: crc is the value returned for the bytes before buf (0 for
 * none), like zlib's crc32(), so a structure can be summed in pieces.
 */
uint32_t crc32c_update (uint32_t crc, const void *buf, size_t len);

static inline uint32_t
crc32c (const void *buf, size_t len)
{
  return crc32c_update (0, buf, len);
}

#endif
