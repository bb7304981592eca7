/* vhdchain core: VHDX internals shared by vhdx.c (headers, regions,
 * metadata, BAT) and vhdx-log.c (log replay), and seen by the unit tests.
 *
 * Layout (MS-VHDX 2.1): the first MiB holds the file identifier (0), two
 * headers (64 KiB, 128 KiB) and two copies of the region table (192 KiB,
 * 256 KiB); the log, the metadata region, the BAT and the payload and
 * sector-bitmap blocks are 1 MiB aligned anywhere after it.
 *
 * The structs below are on-disk structures decoded to host order once, by the
 * vhdx_*_decode functions; nothing else reads on-disk integers.  GUIDs stay
 * raw on-disk bytes (guid.h).
 *
 * Metadata that the log may have updated (region table, metadata region, BAT,
 * sector bitmaps) is read with vhdx_read, which lays the replayed log pages
 * over the file: the file itself is never written (FORMATS.md 3.8).
 */
#ifndef VHDCHAIN_VHDX_H
#define VHDCHAIN_VHDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layer.h"

#define VHDX_KiB 1024u
#define VHDX_MiB (1024u * 1024u)
#define VHDX_MAX_SIZE (UINT64_C (64) << 40)       /* MS-VHDX 2.6.2.2 */

#define VHDX_FILE_ID_SIZE (64 * VHDX_KiB)
#define VHDX_CREATOR_OFF 8
#define VHDX_CREATOR_SIZE 512
#define VHDX_HEADER1_OFF (64 * VHDX_KiB)
#define VHDX_HEADER2_OFF (128 * VHDX_KiB)
#define VHDX_HEADER_SIZE (4 * VHDX_KiB)
#define VHDX_RT1_OFF (192 * VHDX_KiB)
#define VHDX_RT2_OFF (256 * VHDX_KiB)
#define VHDX_RT_SIZE (64 * VHDX_KiB)
#define VHDX_RT_HEADER_SIZE 16
#define VHDX_RT_ENTRY_SIZE 32
#define VHDX_RT_MAX_ENTRIES 2047
#define VHDX_MD_TABLE_SIZE (64 * VHDX_KiB)
#define VHDX_MD_HEADER_SIZE 32
#define VHDX_MD_ENTRY_SIZE 32
#define VHDX_MD_MAX_ENTRIES 2047
#define VHDX_MD_ITEM_MAX VHDX_MiB
#define VHDX_PL_HEADER_SIZE 20
#define VHDX_PL_ENTRY_SIZE 12
#define VHDX_SB_BLOCK_SIZE VHDX_MiB

/* Block Allocation Table entry (MS-VHDX 2.5). */
#define VHDX_BAT_STATE(e) ((unsigned) ((e) & 7))
#define VHDX_BAT_RESERVED(e) ((e) & UINT64_C (0xFFFF8))      /* bits 3-19 */
#define VHDX_BAT_OFFSET_MB(e) ((e) >> 20)
enum {
  VHDX_PAYLOAD_NOT_PRESENT = 0,
  VHDX_PAYLOAD_UNDEFINED = 1,
  VHDX_PAYLOAD_ZERO = 2,
  VHDX_PAYLOAD_UNMAPPED = 3,
  VHDX_PAYLOAD_FULLY_PRESENT = 6,
  VHDX_PAYLOAD_PARTIALLY_PRESENT = 7,
  VHDX_SB_NOT_PRESENT = 0,
  VHDX_SB_PRESENT = 6,
};

/* Metadata entry flags (MS-VHDX 2.6.1.2). */
#define VHDX_MD_IS_USER 1u
#define VHDX_MD_IS_VIRTUAL_DISK 2u
#define VHDX_MD_IS_REQUIRED 4u

/* File Parameters flags (MS-VHDX 2.6.2.1). */
#define VHDX_FP_LEAVE_BLOCKS_ALLOCATED 1u
#define VHDX_FP_HAS_PARENT 2u

/* Known GUIDs, raw on-disk bytes. */
extern const uint8_t vhdx_guid_bat[16], vhdx_guid_metadata[16];
extern const uint8_t vhdx_guid_file_parameters[16];
extern const uint8_t vhdx_guid_virtual_disk_size[16];
extern const uint8_t vhdx_guid_virtual_disk_id[16];
extern const uint8_t vhdx_guid_logical_sector_size[16];
extern const uint8_t vhdx_guid_physical_sector_size[16];
extern const uint8_t vhdx_guid_parent_locator[16];
extern const uint8_t vhdx_guid_locator_type_vhdx[16];

/* Header (MS-VHDX 2.2.2), 4 KiB. */
struct vhdx_header {
  bool signature_ok;            /* "head" */
  uint32_t checksum;
  uint64_t seq;
  uint8_t file_write_guid[16];
  uint8_t data_write_guid[16];
  uint8_t log_guid[16];
  uint16_t log_version;
  uint16_t version;
  uint32_t log_length;
  uint64_t log_offset;
};

/* Region table header and entry (MS-VHDX 2.2.3). */
struct vhdx_rt_header {
  bool signature_ok;            /* "regi" */
  uint32_t checksum;
  uint32_t entry_count;
};

struct vhdx_region {
  uint8_t guid[16];
  uint64_t offset;
  uint32_t length;
  uint32_t required;            /* bit 0 */
};

/* Metadata table header and entry (MS-VHDX 2.6.1). */
struct vhdx_md_header {
  bool signature_ok;            /* "metadata" */
  uint16_t entry_count;
};

struct vhdx_md_entry {
  uint8_t item_id[16];
  uint32_t offset;              /* relative to the metadata region */
  uint32_t length;
  uint32_t flags;               /* VHDX_MD_* */
};

/* Parent locator header and key/value entry (MS-VHDX 2.6.2.6). */
struct vhdx_pl_header {
  uint8_t locator_type[16];
  uint16_t key_value_count;
};

struct vhdx_pl_entry {
  uint32_t key_offset;          /* relative to the locator item */
  uint32_t value_offset;
  uint16_t key_length;          /* bytes of UTF-16LE */
  uint16_t value_length;
};

/* Decoders of raw structures; buffers hold at least the structure's size. */
void vhdx_header_decode (const uint8_t *buf, struct vhdx_header *h);
void vhdx_rt_header_decode (const uint8_t *buf, struct vhdx_rt_header *h);
void vhdx_region_decode (const uint8_t *buf, struct vhdx_region *r);
void vhdx_md_header_decode (const uint8_t *buf, struct vhdx_md_header *h);
void vhdx_md_entry_decode (const uint8_t *buf, struct vhdx_md_entry *e);
void vhdx_pl_header_decode (const uint8_t *buf, struct vhdx_pl_header *h);
void vhdx_pl_entry_decode (const uint8_t *buf, struct vhdx_pl_entry *e);

/* CRC-32C of len bytes with the checksum field (bytes 4-7, where every
 * checksummed VHDX structure keeps it) taken as zero, compared with it.
 */
bool vhdx_checksum_ok (const uint8_t *buf, size_t len);

/* ---- log replay (vhdx-log.c, MS-VHDX 2.3) ---- */

/* One replayed update: len bytes at file offset off become data (a 4 KiB
 * page assembled from a data descriptor and its data sector) or zeros (a
 * zero descriptor, data == NULL).  Kept in replay order: a later extent
 * wins where two overlap.
 */
struct vhdx_extent {
  uint64_t off;
  uint64_t len;
  uint8_t *data;
};

struct vhdx_overlay {
  struct vhdx_extent *ext;
  size_t n, cap;
  uint64_t data_bytes;          /* sum of data page sizes, capped */
  /* The file as the log says it is: max (real size, replayed extents, head
   * entry's LastFileOffset).  Bytes past the real end read as zeros. */
  uint64_t logical_size;
};

/* Largest log entry and replayed data we hold in memory: Windows writes
 * 1 MiB logs, so these only stop hostile files from exhausting memory.
 */
#define VHDX_LOG_MAX_ENTRY (64 * VHDX_MiB)
#define VHDX_LOG_MAX_OVERLAY (256 * VHDX_MiB)

/* Replay the log named by the current header h into ov (in memory).  With a
 * zero LogGuid there is nothing to replay and ov only gets logical_size.
 */
int vhdx_log_replay (const struct layer *l, const struct vhdx_header *h,
                     struct vhdx_overlay *ov);
void vhdx_overlay_free (struct vhdx_overlay *ov);

/* Read metadata through the overlay; bounds are the logical size. */
int vhdx_read (const struct layer *l, const struct vhdx_overlay *ov,
               void *buf, size_t count, uint64_t off, const char *what);

/* ---- writing (vhdx-child.c) ---- */

/* A random (version 4) GUID, raw on-disk bytes. */
void vhdx_new_guid (uint8_t raw[16]);

/* The first MiB of a new file (m, 1 MiB): file identifier with creator
 * "vhdchain", both headers (new FileWriteGuid and DataWriteGuid, LogGuid
 * zero, a 1 MiB log at 1 MiB, SequenceNumbers 1 and 2) and both copies of
 * a region table naming the BAT and metadata regions. */
void vhdx_make_first_mib (uint8_t *m, uint64_t md_off, uint32_t md_len,
                          uint64_t bat_off, uint32_t bat_len);

#endif
