/* Unit tests: CRC-32C vectors (RFC 3720 B.4 and the usual check value) and
 * GUID text <-> raw on-disk bytes.  Exit 0 if everything passed.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "unit.h"
#include "crc32c.h"
#include "guid.h"



static void
test_crc_vectors (void)
{
  uint8_t buf[48];
  uint32_t c;
  int i;

  CHECK (crc32c ("123456789", 9) == 0xE3069283, "check value");
  CHECK (crc32c ("", 0) == 0, "empty");
  memset (buf, 0, 32);
  CHECK (crc32c (buf, 32) == 0x8A9136AA, "32 zeros: %08x", crc32c (buf, 32));
  memset (buf, 0xFF, 32);
  CHECK (crc32c (buf, 32) == 0x62A8AB43, "32 ones: %08x", crc32c (buf, 32));
  for (i = 0; i < 32; i++)
    buf[i] = i;
  CHECK (crc32c (buf, 32) == 0x46DD794E, "ascending: %08x", crc32c (buf, 32));
  for (i = 0; i < 32; i++)
    buf[i] = 31 - i;
  CHECK (crc32c (buf, 32) == 0x113FDB5C, "descending: %08x", crc32c (buf, 32));

  /* Pieces of every split, and unaligned starts, give the same CRC. */
  for (i = 0; i < 48; i++)
    buf[i] = i * 37 + 11;
  c = crc32c (buf + 3, 45);
  for (i = 0; i <= 45; i++)
    CHECK (crc32c_update (crc32c (buf + 3, i), buf + 3 + i, 45 - i) == c,
           "split at %d", i);
}

static void
test_guid (void)
{
  /* image_header.1's FileWriteGuid, as stored and as text. */
  static const uint8_t raw[16] = {
    0xd4, 0xcd, 0xcc, 0xa3, 0xce, 0xe8, 0x21, 0x43,
    0x92, 0x43, 0xcd, 0xaa, 0x37, 0xd5, 0xa0, 0xe2 };
  static const uint8_t bat[16] = GUID_INIT (0x2DC27766, 0xF623, 0x4200,
    0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08);
  static const uint8_t bat_disk[16] = {
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42,
    0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08 };
  char text[GUID_TEXT_LEN + 1];
  uint8_t out[16];

  guid_format (raw, text);
  CHECK (strcmp (text, "a3cccdd4-e8ce-4321-9243-cdaa37d5a0e2") == 0,
         "format: %s", text);
  CHECK (guid_parse ("a3cccdd4-e8ce-4321-9243-cdaa37d5a0e2", out) == 0
         && memcmp (out, raw, 16) == 0, "parse bare");
  memset (out, 0, 16);
  CHECK (guid_parse ("{A3CCCDD4-E8CE-4321-9243-CDAA37D5A0E2}", out) == 0
         && memcmp (out, raw, 16) == 0, "parse braced upper case");
  CHECK (memcmp (bat, bat_disk, 16) == 0, "GUID_INIT is the on-disk order");
  CHECK (guid_parse ("{a3cccdd4-e8ce-4321-9243-cdaa37d5a0e2", out) == -EINVAL,
         "unbalanced brace");
  CHECK (guid_parse ("a3cccdd4-e8ce-4321-9243-cdaa37d5a0e", out) == -EINVAL,
         "short");
  CHECK (guid_parse ("a3cccdd4-e8ce-4321-9243-cdaa37d5a0e2 ", out) == -EINVAL,
         "trailing space");
  CHECK (guid_parse ("a3cccdd4e-8ce-4321-9243-cdaa37d5a0e2", out) == -EINVAL,
         "dash misplaced");
  CHECK (guid_parse ("a3cccdd4-e8ce-4321-9243-cdaa37d5a0eg", out) == -EINVAL,
         "not hex");
  CHECK (guid_parse ("a3cccdd4-e8ce-4321-9243-cdaa37d5a0+2", out) == -EINVAL,
         "sign is not hex");
  CHECK (!guid_is_zero (raw), "non-zero");
  CHECK (guid_parse ("{00000000-0000-0000-0000-000000000000}", out) == 0
         && guid_is_zero (out), "zero");
}

int
main (void)
{
  test_crc_vectors ();
  test_guid ();
  printf ("unit-crc32c: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
