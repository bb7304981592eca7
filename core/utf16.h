/* vhdchain core: UTF-16 strings found in images (VHD parent name UTF-16BE,
 * W2ku/W2ru and every VHDX string UTF-16LE). */
#ifndef VHDCHAIN_UTF16_H
#define VHDCHAIN_UTF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decode nbytes of UTF-16 (big_endian or little) into a new NUL-terminated
 * UTF-8 string in *out.  Decoding stops at the first NUL code unit.  An
 * unpaired surrogate or an odd byte count is -EILSEQ; an embedded NUL
 * followed by more non-NUL data is allowed (NUL padding is the norm).
 */
int utf16_to_utf8 (const uint8_t *in, size_t nbytes, bool big_endian,
                   char **out);

/* Encode NUL-terminated UTF-8 into UTF-16 (no terminator) in out, at most
 * outmax bytes.  Returns the number of bytes written, or -EILSEQ / -ENAMETOOLONG.
 */
long utf8_to_utf16 (const char *in, bool big_endian, uint8_t *out,
                    size_t outmax);

/* Encode code point c as UTF-8 at p (room for 4 bytes); the length. */
size_t utf8_put (char *p, uint32_t c);

#endif
