/* vhdchain core: GUIDs as VHDX stores them.
 *
 * On disk a GUID is 16 bytes in Microsoft's mixed-endian layout: Data1 u32
 * LE, Data2 and Data3 u16 LE, Data4 8 bytes as is.  vhdchain keeps GUIDs as
 * those raw bytes everywhere (compare with memcmp, never reorder) and only
 * converts at the text edge: locator values such as parent_linkage, and
 * messages.  Text is 8-4-4-4-12 hex, lowercase when we format it.
 */
#ifndef VHDCHAIN_GUID_H
#define VHDCHAIN_GUID_H

#include <stdbool.h>
#include <stdint.h>

#define GUID_TEXT_LEN 36          /* without braces and NUL */

/* Raw on-disk bytes of the GUID written {d1-d2-d3-b0b1-b2b3b4b5b6b7}, for
 * constants: GUID_INIT (0x2DC27766, 0xF623, 0x4200, 0x9D, 0x64, 0x11, ...).
 */
#define GUID_INIT(d1, d2, d3, b0, b1, b2, b3, b4, b5, b6, b7)             \
  { (d1) & 0xFF, ((d1) >> 8) & 0xFF, ((d1) >> 16) & 0xFF, ((d1) >> 24) & 0xFF, \
    (d2) & 0xFF, ((d2) >> 8) & 0xFF, (d3) & 0xFF, ((d3) >> 8) & 0xFF,    \
    b0, b1, b2, b3, b4, b5, b6, b7 }

/* Format raw bytes as lowercase text, out must hold GUID_TEXT_LEN + 1. */
void guid_format (const uint8_t raw[16], char *out);

/* Parse "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", optionally in braces, any
 * hex case, nothing before or after, into raw on-disk bytes.  -EINVAL if the
 * text is not exactly that.
 */
int guid_parse (const char *text, uint8_t raw[16]);

bool guid_is_zero (const uint8_t raw[16]);

#endif
