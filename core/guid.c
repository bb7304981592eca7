/* vhdchain core: GUID text <-> raw on-disk bytes, see guid.h.
 *
 * Text order is Data1 Data2 Data3 Data4, each written most significant digit
 * first; raw order stores Data1..Data3 little-endian.  Both directions walk
 * the same table of (raw byte index) per text byte, so they cannot disagree.
 */
#include <errno.h>
#include <string.h>

#include "guid.h"

/* Raw byte index of the n-th byte pair in the text, dashes skipped. */
static const int text_to_raw[16] = {
  3, 2, 1, 0,  5, 4,  7, 6,  8, 9,  10, 11, 12, 13, 14, 15
};

/* Dashes sit before these byte pairs in the text. */
static bool
dash_before (int n)
{
  return n == 4 || n == 6 || n == 8 || n == 10;
}

void
guid_format (const uint8_t raw[16], char *out)
{
  static const char hex[] = "0123456789abcdef";
  int n;

  for (n = 0; n < 16; n++) {
    uint8_t b = raw[text_to_raw[n]];
    if (dash_before (n))
      *out++ = '-';
    *out++ = hex[b >> 4];
    *out++ = hex[b & 0xF];
  }
  *out = '\0';
}

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int
guid_parse (const char *text, uint8_t raw[16])
{
  size_t len = strlen (text);
  const char *p = text;
  int n;

  if (len == GUID_TEXT_LEN + 2 && text[0] == '{' && text[len - 1] == '}')
    p++;
  else if (len != GUID_TEXT_LEN)
    return -EINVAL;
  for (n = 0; n < 16; n++) {
    int hi, lo;
    if (dash_before (n) && *p++ != '-')
      return -EINVAL;
    hi = hex_value (p[0]);
    lo = hi < 0 ? -1 : hex_value (p[1]);
    if (lo < 0)
      return -EINVAL;
    raw[text_to_raw[n]] = hi << 4 | lo;
    p += 2;
  }
  return 0;
}

bool
guid_is_zero (const uint8_t raw[16])
{
  static const uint8_t zero[16];
  return memcmp (raw, zero, 16) == 0;
}
