/* vhdchain core: on-disk integers.  VHD is big-endian, VHDX little-endian;
 * every parser converts through these once, at the edge, and works in host
 * order afterwards.
 */
#ifndef VHDCHAIN_BYTEORDER_H
#define VHDCHAIN_BYTEORDER_H

#include <stdint.h>
#include <string.h>
#include <endian.h>

static inline uint16_t get_be16 (const void *p) { uint16_t v; memcpy (&v, p, 2); return be16toh (v); }
static inline uint32_t get_be32 (const void *p) { uint32_t v; memcpy (&v, p, 4); return be32toh (v); }
static inline uint64_t get_be64 (const void *p) { uint64_t v; memcpy (&v, p, 8); return be64toh (v); }
static inline uint16_t get_le16 (const void *p) { uint16_t v; memcpy (&v, p, 2); return le16toh (v); }
static inline uint32_t get_le32 (const void *p) { uint32_t v; memcpy (&v, p, 4); return le32toh (v); }
static inline uint64_t get_le64 (const void *p) { uint64_t v; memcpy (&v, p, 8); return le64toh (v); }

static inline void put_be16 (void *p, uint16_t v) { v = htobe16 (v); memcpy (p, &v, 2); }
static inline void put_be32 (void *p, uint32_t v) { v = htobe32 (v); memcpy (p, &v, 4); }
static inline void put_be64 (void *p, uint64_t v) { v = htobe64 (v); memcpy (p, &v, 8); }
static inline void put_le16 (void *p, uint16_t v) { v = htole16 (v); memcpy (p, &v, 2); }
static inline void put_le32 (void *p, uint32_t v) { v = htole32 (v); memcpy (p, &v, 4); }
static inline void put_le64 (void *p, uint64_t v) { v = htole64 (v); memcpy (p, &v, 8); }

#endif
