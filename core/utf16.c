/* vhdchain core: UTF-16 <-> UTF-8 for the strings stored in images.
 * Strict: an unpaired surrogate is an error rather than a guess, because the
 * result is used as a file name and a wrong guess would open another file.
 */
#include <errno.h>
#include <stdlib.h>

#include "byteorder.h"
#include "utf16.h"

size_t
utf8_put (char *p, uint32_t c)
{
  if (c < 0x80) { p[0] = c; return 1; }
  if (c < 0x800) { p[0] = 0xC0 | (c >> 6); p[1] = 0x80 | (c & 0x3F); return 2; }
  if (c < 0x10000) {
    p[0] = 0xE0 | (c >> 12); p[1] = 0x80 | ((c >> 6) & 0x3F);
    p[2] = 0x80 | (c & 0x3F); return 3;
  }
  p[0] = 0xF0 | (c >> 18); p[1] = 0x80 | ((c >> 12) & 0x3F);
  p[2] = 0x80 | ((c >> 6) & 0x3F); p[3] = 0x80 | (c & 0x3F);
  return 4;
}

int
utf16_to_utf8 (const uint8_t *in, size_t nbytes, bool big_endian, char **out)
{
  size_t i, n = 0;
  char *s;

  if (nbytes & 1)
    return -EILSEQ;
  /* Each code unit yields at most 3 bytes (a pair of them at most 4). */
  s = malloc (nbytes / 2 * 3 + 1);
  if (!s)
    return -ENOMEM;
  for (i = 0; i + 1 < nbytes; i += 2) {
    uint32_t c = big_endian ? get_be16 (in + i) : get_le16 (in + i);

    if (c == 0)
      break;
    if (c >= 0xD800 && c < 0xDC00) {
      uint32_t lo;
      if (i + 3 >= nbytes)
        goto bad;
      lo = big_endian ? get_be16 (in + i + 2) : get_le16 (in + i + 2);
      if (lo < 0xDC00 || lo >= 0xE000)
        goto bad;
      c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
      i += 2;
    }
    else if (c >= 0xDC00 && c < 0xE000)
      goto bad;
    n += utf8_put (s + n, c);
  }
  s[n] = '\0';
  *out = s;
  return 0;

 bad:
  free (s);
  return -EILSEQ;
}

/* Decode one UTF-8 sequence at *p; -1 on malformed input. */
static int32_t
get_utf8 (const unsigned char **p)
{
  const unsigned char *s = *p;
  uint32_t c;
  int len, i;

  if (s[0] < 0x80) { *p = s + 1; return s[0]; }
  else if ((s[0] & 0xE0) == 0xC0) { c = s[0] & 0x1F; len = 2; }
  else if ((s[0] & 0xF0) == 0xE0) { c = s[0] & 0x0F; len = 3; }
  else if ((s[0] & 0xF8) == 0xF0) { c = s[0] & 0x07; len = 4; }
  else return -1;
  for (i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80)
      return -1;
    c = (c << 6) | (s[i] & 0x3F);
  }
  if (c > 0x10FFFF || (c >= 0xD800 && c < 0xE000) ||
      (len == 2 && c < 0x80) || (len == 3 && c < 0x800) ||
      (len == 4 && c < 0x10000))
    return -1;
  *p = s + len;
  return c;
}

static void
put16 (uint8_t *p, uint16_t v, bool big_endian)
{
  if (big_endian) put_be16 (p, v); else put_le16 (p, v);
}

long
utf8_to_utf16 (const char *in, bool big_endian, uint8_t *out, size_t outmax)
{
  const unsigned char *p = (const unsigned char *) in;
  size_t n = 0;

  while (*p) {
    int32_t c = get_utf8 (&p);

    if (c < 0)
      return -EILSEQ;
    if (n + (c >= 0x10000 ? 4 : 2) > outmax)
      return -ENAMETOOLONG;
    if (c >= 0x10000) {
      c -= 0x10000;
      put16 (out + n, 0xD800 + (c >> 10), big_endian);
      put16 (out + n + 2, 0xDC00 + (c & 0x3FF), big_endian);
      n += 4;
    }
    else {
      put16 (out + n, c, big_endian);
      n += 2;
    }
  }
  return n;
}
