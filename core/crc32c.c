/* vhdchain core: CRC-32C, slice-by-8.
 *
 * table[0] is the classic byte-at-a-time table for the reflected polynomial;
 * table[k][i] is the CRC of byte i followed by k zero bytes, so eight input
 * bytes fold into the CRC with eight lookups and no carried dependency
 * between them.  A few hundred MB/s is ample: only metadata (headers, region
 * tables, log entries) is ever summed.  The tables are built once, on first
 * use, under pthread_once so concurrent first opens are safe.
 */
#include <pthread.h>

#include "byteorder.h"
#include "crc32c.h"

#define CRC32C_POLY 0x82F63B78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void
build_tables (void)
{
  unsigned i, k, bit;

  for (i = 0; i < 256; i++) {
    uint32_t c = i;
    for (bit = 0; bit < 8; bit++)
      c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
    table[0][i] = c;
  }
  for (i = 0; i < 256; i++)
    for (k = 1; k < 8; k++)
      table[k][i] = (table[k - 1][i] >> 8) ^ table[0][table[k - 1][i] & 0xFF];
}

uint32_t
crc32c_update (uint32_t crc, const void *buf, size_t len)
{
  const uint8_t *p = buf;

  pthread_once (&table_once, build_tables);
  crc = ~crc;
  /* get_le32 keeps this correct on big-endian hosts and unaligned buffers. */
  for (; len >= 8; p += 8, len -= 8) {
    uint32_t lo = get_le32 (p) ^ crc, hi = get_le32 (p + 4);
    crc = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF]
      ^ table[5][(lo >> 16) & 0xFF] ^ table[4][lo >> 24]
      ^ table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF]
      ^ table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
  }
  for (; len > 0; p++, len--)
    crc = table[0][(crc ^ *p) & 0xFF] ^ (crc >> 8);
  return ~crc;
}
