/* Unit tests of the Hyper-V configuration readers (core/vmcx.c,
 * core/hyperv-xml.c) and of vm_open on small folders (core/hyperv.c).
 *
 *  1. The real .vmcx from dissect.hypervisor (../shared/samples/dissect):
 *     the key tree (the key counts dissect's own test asserts), the VM's
 *     name, GUID, creation time and the disk path it records,
 *     `C:\Users\Public\Documents\Hyper-V\Virtual Hard Disks\Other
 *     Location.vhdx`.
 *  2. Damaged copies of it: truncated at several places, a flipped byte in
 *     a key, both headers broken, another signature, another version (with
 *     its checksum fixed), an unclean replay log, a parent loop: each a
 *     one-line error naming the file.
 *  3. XML: UTF-16LE with a byte order mark and CRLF (as Hyper-V writes),
 *     UTF-16BE, UTF-8; typed values (string, integer, bool, bytes);
 *     entities, CDATA, comments, a DOCTYPE; malformed and truncated files,
 *     each a one-line error naming the file and line.
 *  4. vm_open on a folder holding the sample as its configuration: the disk
 *     missing (listed unavailable), found through a drive map, found by
 *     name in the VM folder, refused through a symlink out of the folder.
 *  5. vm_open on small XML folders without disks: times, lookups by GUID
 *     and name, a declared parent, several VMs in one folder.
 *
 * Needs SAMPLES and qemu-img.  VERBOSE=1 prints each expected error.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "unit.h"
#include "byteorder.h"
#include "error.h"
#include "hyperv.h"

static const char *samples;
static char tmpdir[64];
static bool verbose;


#define SAMPLE_DISK \
  "C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks\\" \
  "Other Location.vhdx"

static int __attribute__ ((format (printf, 1, 2)))
run (const char *fmt, ...)
{
  char cmd[4096];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  return system (cmd);
}

static void
tmp_path (char *out, const char *name)
{
  snprintf (out, PATH_MAX, "%s/%s", tmpdir, name);
}

static uint8_t *
slurp (const char *path, size_t *len)
{
  FILE *f = fopen (path, "rb");
  uint8_t *buf;
  long n;

  if (!f)
    return NULL;
  fseek (f, 0, SEEK_END);
  n = ftell (f);
  rewind (f);
  buf = malloc (n + 1);
  if (buf && fread (buf, 1, n, f) != (size_t) n) {
    free (buf);
    buf = NULL;
  }
  fclose (f);
  *len = n;
  return buf;
}

static void
spit (const char *path, const void *buf, size_t len)
{
  FILE *f = fopen (path, "wb");

  if (!f || fwrite (buf, 1, len, f) != len) {
    fprintf (stderr, "unit-hyperv: cannot write %s\n", path);
    exit (1);
  }
  fclose (f);
}

/* zlib's CRC-32, to re-seal a patched structure. */
static uint32_t
crc32_zlib (const uint8_t *p, size_t n)
{
  uint32_t crc = 0xFFFFFFFFu;

  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1));
  }
  return ~crc;
}

static void
seal (uint8_t *p, size_t n, size_t ck)
{
  put_le32 (p + ck, 0);
  put_le32 (p + ck, crc32_zlib (p, n));
}

/* cfg_read must fail with one line naming the file and saying needle. */
static void
expect_cfg_error (const char *path, const char *needle, const char *what)
{
  enum cfg_format fmt;
  struct cfg *c = NULL;
  int r;

  vc_clear_error ();
  r = cfg_read (path, &fmt, &c);
  CHECK (r < 0 && c == NULL, "%s: cfg_read should fail, got %d", what, r);
  if (r < 0) {
    const char *m = vc_last_error ();
    if (verbose)
      fprintf (stderr, "  %s: %s\n", what, m);
    CHECK (strstr (m, path) != NULL, "%s: message does not name %s: %s",
           what, path, m);
    CHECK (strchr (m, '\n') == NULL, "%s: message is not one line: %s",
           what, m);
    CHECK (strstr (m, needle) != NULL, "%s: message lacks '%s': %s", what,
           needle, m);
  }
  cfg_free (c);
}

static const struct cfg *
must_get (const struct cfg *c, const char *path)
{
  const struct cfg *r = cfg_get (c, path);

  CHECK (r != NULL, "key %s missing", path);
  return r;
}

/* ---- 1. the real .vmcx ---- */

static char vmcx_path[PATH_MAX];

static void
test_vmcx_sample (void)
{
  struct cfg *doc = NULL;
  const struct cfg *conf, *c;
  enum cfg_format fmt;
  int r;

  snprintf (vmcx_path, sizeof vmcx_path, "%s/dissect/test.vmcx", samples);
  vc_clear_error ();
  r = cfg_read (vmcx_path, &fmt, &doc);
  CHECK (r == 0, "test.vmcx: %s", vc_last_error ());
  if (r)
    return;
  CHECK (fmt == CFG_VMCX, "test.vmcx read as XML");
  CHECK (doc->nr_kids == 1, "test.vmcx: %zu root keys, want 1",
         doc->nr_kids);
  conf = must_get (doc, "configuration");
  if (!conf)
    goto out;
  /* The counts dissect.hypervisor's test asserts for this file. */
  CHECK (conf->nr_kids == 27, "configuration: %zu keys, want 27",
         conf->nr_kids);
  c = must_get (conf, "manifest");
  CHECK (c && c->nr_kids == 39, "manifest: %zu keys, want 39",
         c ? c->nr_kids : 0);
  c = must_get (conf, "properties");
  CHECK (c && c->nr_kids == 11, "properties: %zu keys, want 11",
         c ? c->nr_kids : 0);
  c = must_get (conf, "settings");
  CHECK (c && c->nr_kids == 6, "settings: %zu keys, want 6",
         c ? c->nr_kids : 0);

  c = must_get (conf, "_83f8638b-8dca-4152-9eda-2ca8b33039b4_/controller0/"
                "drive0/pathname");
  CHECK (c && c->type == CFG_STRING && strcmp (c->text, SAMPLE_DISK) == 0,
         "IDE 0:0 pathname: %s", c ? c->text : "(none)");
  c = cfg_get (conf, "_83F8638B-8DCA-4152-9EDA-2CA8B33039B4_/Controller0/"
               "DRIVE0/type");
  CHECK (c && c->type == CFG_STRING && strcmp (c->text, "VHD") == 0,
         "IDE 0:0 type (case-insensitive lookup): %s", c ? c->text : "-");
  c = must_get (conf, "properties/name");
  CHECK (c && strcmp (c->text, "Other Location") == 0, "name %s",
         c ? c->text : "-");
  c = must_get (conf, "properties/global_id");
  CHECK (c && strcmp (c->text, "282874FC-59D6-4F30-BC04-5FDD909C82E0") == 0,
         "global_id %s", c ? c->text : "-");
  c = must_get (conf, "properties/creation_time");
  CHECK (c && c->type == CFG_BYTES && c->len == 8 &&
         get_le64 (c->bytes) == UINT64_C (132741420607172263),
         "creation_time");
  c = must_get (conf, "properties/version");
  CHECK (c && c->type == CFG_INT && c->value == 2304 &&
         strcmp (c->text, "2304") == 0, "version");
  c = must_get (conf, "global_settings/vhd_path_acled");
  CHECK (c && c->type == CFG_BOOL && c->value == 1 &&
         strcmp (c->text, "True") == 0, "vhd_path_acled");
  c = must_get (conf, "_ac6b8dc1-3257-4a70-b1b2-a9c9215659ad_/boot/device1");
  CHECK (c && strcmp (c->text, "HardDrive") == 0, "boot/device1");
  /* A node's children in insertion order: device0..3. */
  c = must_get (conf, "_ac6b8dc1-3257-4a70-b1b2-a9c9215659ad_/boot");
  CHECK (c && c->nr_kids == 4 && strcmp (c->kids[0]->name, "device0") == 0 &&
         strcmp (c->kids[3]->name, "device3") == 0, "boot order");
  c = must_get (conf, "global_settings/snapshots/list/size");
  CHECK (c && c->type == CFG_INT && c->value == 0, "snapshots/list/size");
 out:
  cfg_free (doc);
}

/* ---- 2. damaged copies ---- */

static void
test_vmcx_damaged (void)
{
  uint8_t *orig, *b;
  size_t len;
  char p[PATH_MAX];

  orig = slurp (vmcx_path, &len);
  CHECK (orig != NULL && len == 81920, "read test.vmcx");
  if (!orig)
    return;
  b = malloc (len);

  tmp_path (p, "short.vmcx");
  spit (p, orig, 0x1800);
  expect_cfg_error (p, "too short", "cut inside the object table");

  tmp_path (p, "cut-tables.vmcx");
  spit (p, orig, 0x9800);
  expect_cfg_error (p, "truncated", "cut inside the key tables");

  tmp_path (p, "cut-table8.vmcx");
  spit (p, orig, 0x13400);
  expect_cfg_error (p, "truncated", "cut inside the last key table");

  /* The pathname key lives in table 8 (at 0x13000) at +175: its value. */
  memcpy (b, orig, len);
  b[0x13000 + 175 + 21 + 9 + 4 + 10] ^= 0x20;
  tmp_path (p, "flipped.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "'pathname'): bad checksum", "a flipped byte");

  memcpy (b, orig, len);
  b[0x20] ^= 1;
  b[0x1020] ^= 1;
  tmp_path (p, "headers.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "both file headers", "both headers broken");

  /* One header broken: the other (older) one is used. */
  memcpy (b, orig, len);
  b[0x20] ^= 1;
  tmp_path (p, "oneheader.vmcx");
  spit (p, b, len);
  {
    enum cfg_format fmt;
    struct cfg *c = NULL;
    vc_clear_error ();
    CHECK (cfg_read (p, &fmt, &c) == 0, "one broken header: %s",
           vc_last_error ());
    cfg_free (c);
  }

  memcpy (b, orig, len);
  memset (b, 0x55, 4);
  memset (b + 0x1000, 0x55, 4);
  tmp_path (p, "signature.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "VMCX: not a Hyper-V configuration (signature",
                    "another signature");

  memcpy (b, orig, len);
  put_le32 (b + 10, 0x500);
  seal (b, 46, 4);
  put_le32 (b + 0x1000 + 10, 0x500);
  seal (b + 0x1000, 46, 4);
  tmp_path (p, "version.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "version 0x500", "another version");

  memcpy (b, orig, len);
  put_le32 (b + 0xa000 + 8, 3);
  tmp_path (p, "dirty.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "not closed cleanly", "an unclean replay log");

  /* "configuration" (table 1, +10) made a child of its own child
   * "_197f74e3..._" (table 1, +57): a parent loop, checksum resealed. */
  memcpy (b, orig, len);
  put_le16 (b + 0x3000 + 10 + 6, 1);
  put_le32 (b + 0x3000 + 10 + 8, 57);
  seal (b + 0x3000 + 10, 21 + 14 + 12, 12);
  tmp_path (p, "loop.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "loop", "a parent loop");

  /* A key whose parent offset points at no entry. */
  memcpy (b, orig, len);
  put_le32 (b + 0x3000 + 57 + 8, 11);
  seal (b + 0x3000 + 57, 21 + 39 + 12, 12);
  tmp_path (p, "dangling.vmcx");
  spit (p, b, len);
  expect_cfg_error (p, "missing", "a dangling parent");

  free (b);
  free (orig);
}

/* ---- 3. XML ---- */

/* UTF-8 text to a file as UTF-16 (le or be), with a BOM if asked. */
static void
write_utf16 (const char *path, const char *s, bool be, bool bom)
{
  size_t n = strlen (s), o = 0;
  uint8_t *b = malloc (2 * n + 2);

  if (bom) {
    b[o++] = be ? 0xFE : 0xFF;
    b[o++] = be ? 0xFF : 0xFE;
  }
  for (size_t i = 0; i < n; i++) {   /* ASCII test text only */
    b[o++] = be ? 0 : (uint8_t) s[i];
    b[o++] = be ? (uint8_t) s[i] : 0;
  }
  spit (path, b, o);
  free (b);
}

static const char xml_good[] =
  "<?xml version=\"1.0\" encoding=\"UTF-16\" standalone=\"yes\"?>\r\n"
  "<!-- written the way Hyper-V 2012 R2 does -->\r\n"
  "<configuration>\r\n"
  "  <_83f8638b-8dca-4152-9eda-2ca8b33039b4_>\r\n"
  "    <controller0>\r\n"
  "      <drive0>\r\n"
  "        <pathname type=\"string\">D:\\VMs\\A&amp;B\\Disk &lt;1&gt;.vhd"
  "</pathname>\r\n"
  "        <type type=\"string\">VHD</type>\r\n"
  "      </drive0>\r\n"
  "      <drive1>\r\n"
  "        <pathname type=\"string\" />\r\n"
  "        <type type='string'>NONE</type>\r\n"
  "      </drive1>\r\n"
  "    </controller0>\r\n"
  "  </_83f8638b-8dca-4152-9eda-2ca8b33039b4_>\r\n"
  "  <properties>\r\n"
  "    <creation_time type=\"bytes\">p25FZp6X1wE=\r\n</creation_time>\r\n"
  "    <global_id type=\"string\">282874FC-59D6-4F30-BC04-5FDD909C82E0"
  "</global_id>\r\n"
  "    <name type=\"string\">caf&#233; &#x263A; <![CDATA[<raw> & ]]>"
  "</name>\r\n"
  "    <highly_available type=\"bool\">False</highly_available>\r\n"
  "    <version type=\"integer\"> -1280 </version>\r\n"
  "    <odd type=\"integer\">12x</odd>\r\n"
  "    <?pi inside?>\r\n"
  "  </properties>\r\n"
  "  <settings><global><logical_id type=\"string\">x</logical_id></global>"
  "</settings>\r\n"
  "  <empty/>\r\n"
  "</configuration>\r\n";

static void
check_good_xml (const char *path, const char *what)
{
  struct cfg *doc = NULL;
  const struct cfg *c;
  enum cfg_format fmt;
  int r;

  vc_clear_error ();
  r = cfg_read (path, &fmt, &doc);
  CHECK (r == 0 && fmt == CFG_XML, "%s: %s", what, vc_last_error ());
  if (r)
    return;
  c = cfg_get (doc, "configuration/_83f8638b-8dca-4152-9eda-2ca8b33039b4_/"
               "controller0/drive0/pathname");
  CHECK (c && c->type == CFG_STRING &&
         strcmp (c->text, "D:\\VMs\\A&B\\Disk <1>.vhd") == 0,
         "%s: pathname %s", what, c ? c->text : "-");
  c = cfg_get (doc, "configuration/_83f8638b-8dca-4152-9eda-2ca8b33039b4_/"
               "controller0/drive1/pathname");
  CHECK (c && c->type == CFG_STRING && strcmp (c->text, "") == 0,
         "%s: empty typed element", what);
  c = cfg_get (doc, "configuration/properties/creation_time");
  CHECK (c && c->type == CFG_BYTES && c->len == 8 &&
         get_le64 (c->bytes) == UINT64_C (132741420607172263),
         "%s: base64 creation_time", what);
  c = cfg_get (doc, "configuration/properties/name");
  CHECK (c && strcmp (c->text, "caf\xc3\xa9 \xe2\x98\xba <raw> & ") == 0,
         "%s: name with references and CDATA: '%s'", what,
         c ? c->text : "-");
  c = cfg_get (doc, "configuration/properties/highly_available");
  CHECK (c && c->type == CFG_BOOL && c->value == 0, "%s: bool", what);
  c = cfg_get (doc, "configuration/properties/version");
  CHECK (c && c->type == CFG_INT && c->value == -1280, "%s: integer", what);
  c = cfg_get (doc, "configuration/properties/odd");
  CHECK (c && c->type == CFG_OTHER && strcmp (c->text, "12x") == 0,
         "%s: a bad integer is kept as text", what);
  c = cfg_get (doc, "configuration/empty");
  CHECK (c && c->type == CFG_NODE && c->nr_kids == 0, "%s: empty node",
         what);
  CHECK (cfg_text (doc, "configuration/settings/global/logical_id") &&
         strcmp (cfg_text (doc, "configuration/settings/global/logical_id"),
                 "x") == 0, "%s: logical_id", what);
  cfg_free (doc);
}

static void
expect_xml_error (const char *name, const char *text, const char *needle)
{
  char p[PATH_MAX];

  tmp_path (p, name);
  spit (p, text, strlen (text));
  expect_cfg_error (p, needle, name);
}

static void
test_xml (void)
{
  char p[PATH_MAX], *deep;
  size_t n;

  tmp_path (p, "le.xml");
  write_utf16 (p, xml_good, false, true);
  check_good_xml (p, "UTF-16LE with BOM");
  tmp_path (p, "be.xml");
  write_utf16 (p, xml_good, true, true);
  check_good_xml (p, "UTF-16BE with BOM");
  tmp_path (p, "le-nobom.xml");
  write_utf16 (p, xml_good, false, false);
  check_good_xml (p, "UTF-16LE without BOM");
  tmp_path (p, "utf8.xml");
  spit (p, xml_good, strlen (xml_good));
  check_good_xml (p, "UTF-8");

  /* Truncated UTF-16 (odd length, cut inside an element). */
  {
    size_t len;
    uint8_t *b;
    tmp_path (p, "le.xml");
    b = slurp (p, &len);
    tmp_path (p, "le-cut.xml");
    spit (p, b, len / 2 + 1);
    expect_cfg_error (p, "truncated", "UTF-16 cut in the middle");
    free (b);
  }
  expect_xml_error ("cut.xml", "<configuration><properties><name "
                    "type=\"string\">abc", "ends inside element <name>");
  expect_xml_error ("cut-tag.xml", "<configuration><proper", "truncated");
  expect_xml_error ("cut-attr.xml", "<configuration><name type=\"str",
                    "truncated");
  expect_xml_error ("cut-comment.xml", "<configuration><!-- abc",
                    "truncated");
  expect_xml_error ("mismatch.xml", "<configuration>\n<a>\n</b>\n"
                    "</configuration>", "line 3: end tag </b> does not "
                    "match <a>");
  expect_xml_error ("entity.xml", "<configuration><a>&nbsp;</a>"
                    "</configuration>", "unknown entity &nbsp;");
  expect_xml_error ("charref.xml", "<configuration><a>&#0;</a>"
                    "</configuration>", "bad character reference");
  expect_xml_error ("empty.xml", "", "no element");
  expect_xml_error ("space.xml", " \r\n ", "no element");
  expect_xml_error ("text.xml", "hello <configuration/>", "not XML");
  expect_xml_error ("after.xml", "<configuration/><more/>",
                    "content after the document element");
  expect_xml_error ("unquoted.xml", "<configuration a=b/>", "not quoted");
  expect_xml_error ("noval.xml", "<configuration a/>", "has no value");
  {
    char nul[] = "<configuration>x\0y</configuration>";
    tmp_path (p, "nul2.xml");
    spit (p, nul, sizeof nul - 1);
    expect_cfg_error (p, "NUL byte", "a NUL byte in UTF-8");
  }
  /* 100 nested elements: over the depth bound. */
  n = 100;
  deep = calloc (1, n * 8 + 32);
  for (size_t i = 0; i < n; i++)
    strcat (deep, "<a>");
  for (size_t i = 0; i < n; i++)
    strcat (deep, "</a>");
  expect_xml_error ("deep.xml", deep, "nested deeper");
  free (deep);

  /* A DOCTYPE is skipped, never expanded. */
  tmp_path (p, "doctype.xml");
  {
    static const char t[] =
      "<?xml version=\"1.0\"?><!DOCTYPE c [ <!ENTITY e \"x]>\"> ]>"
      "<configuration><a type=\"string\">ok</a></configuration>";
    struct cfg *doc = NULL;
    enum cfg_format fmt;
    spit (p, t, sizeof t - 1);
    vc_clear_error ();
    CHECK (cfg_read (p, &fmt, &doc) == 0 &&
           cfg_text (doc, "configuration/a") &&
           strcmp (cfg_text (doc, "configuration/a"), "ok") == 0,
           "DOCTYPE skipped: %s", vc_last_error ());
    cfg_free (doc);
  }
}

/* ---- 4. vm_open on the sample ---- */

static struct vm *
open_vm (const char *folder, struct drive_map *drives, size_t nd,
         const char *what)
{
  struct vm_opts o = { 0 };
  struct vm *vm = NULL;

  o.chain.drives = drives;
  o.chain.nr_drives = nd;
  vc_clear_error ();
  CHECK (vm_open (folder, &o, &vm) == 0, "%s: vm_open: %s", what,
         vc_last_error ());
  return vm;
}

static void
test_vm_sample (void)
{
  char vm[PATH_MAX], vmdir[PATH_MAX + 32], cfgp[PATH_MAX + 96];
  char drive[PATH_MAX], disk[PATH_MAX + 96], outside[PATH_MAX];
  struct vm *v;
  struct drive_map dm;

  tmp_path (vm, "Other Location");
  snprintf (vmdir, sizeof vmdir, "%s/Virtual Machines", vm);
  snprintf (cfgp, sizeof cfgp,
            "%s/282874FC-59D6-4F30-BC04-5FDD909C82E0.vmcx", vmdir);
  run ("mkdir -p '%s' && cp '%s' '%s'", vmdir, vmcx_path, cfgp);

  /* The disk is not here: the VM is read, its one point unavailable. */
  if ((v = open_vm (vm, NULL, 0, "sample, no disk"))) {
    CHECK (v->source == VM_SOURCE_VMCX, "source %s",
           vm_source_name (v->source));
    CHECK (v->name && strcmp (v->name, "Other Location") == 0, "VM name %s",
           v->name);
    CHECK (v->guid &&
           strcmp (v->guid, "282874fc-59d6-4f30-bc04-5fdd909c82e0") == 0,
           "VM guid %s", v->guid);
    CHECK (v->nr_points == 1, "%zu points, want 1 (Now)", v->nr_points);
    if (v->nr_points == 1) {
      const struct vm_point *p = &v->points[0];
      CHECK (p->current && strcmp (p->id, "now") == 0, "Now point");
      CHECK (!p->available && p->problem &&
             strstr (p->problem, "is missing") &&
             strstr (p->problem, "Other Location.vhdx"),
             "unavailable, naming the disk: %s", p->problem);
      CHECK (p->nr_disks == 1 && p->disks[0].location &&
             strcmp (p->disks[0].location, "IDE 0:0") == 0 &&
             strcmp (p->disks[0].recorded, SAMPLE_DISK) == 0,
             "IDE 0:0 recorded %s", p->nr_disks ? p->disks[0].recorded : "");
      CHECK (vm_find (v, "now") == p && vm_find (v, "Now") == p,
             "vm_find now");
      CHECK (vm_find (v, "nothing") == NULL, "vm_find nothing");
    }
    vm_free (v);
  }

  /* Through a drive map, C: -> drive/. */
  tmp_path (drive, "drive");
  snprintf (disk, sizeof disk, "%s/Users/Public/Documents/Hyper-V/"
            "Virtual Hard Disks/Other Location.vhdx", drive);
  run ("mkdir -p '%s/Users/Public/Documents/Hyper-V/Virtual Hard Disks' && "
       "qemu-img create -q -f vhdx '%s' 4M", drive, disk);
  dm.letter = 'C';
  dm.path = drive;
  if ((v = open_vm (vm, &dm, 1, "sample, drive map"))) {
    const struct vm_point *p = &v->points[0];
    char *real = realpath (disk, NULL);
    CHECK (p->available, "drive map: %s", p->problem);
    CHECK (p->nr_disks == 1 && p->disks[0].tip && real &&
           strcmp (p->disks[0].tip, real) == 0 &&
           p->disks[0].tip_rule == TIP_RECORDED && p->disks[0].depth == 1 &&
           p->disks[0].size == 4 * 1024 * 1024,
           "drive map: tip %s", p->disks[0].tip);
    free (real);
    {
      struct chain_opts co = { 0 };
      struct chain *c = NULL;
      co.drives = &dm;
      co.nr_drives = 1;
      vc_clear_error ();
      CHECK (vm_chain_open (v, &p->disks[0], &co, &c) == 0 && c &&
             c->depth == 1 && c->layers[0]->size == 4 * 1024 * 1024,
             "vm_chain_open: %s", vc_last_error ());
      chain_close (c);
    }
    vm_free (v);
  }

  /* In the VM folder's "Virtual hard disks" (case drift), no map. */
  run ("mkdir -p '%s/Virtual hard disks' && cp '%s' '%s/Virtual hard "
       "disks/'", vm, disk, vm);
  if ((v = open_vm (vm, NULL, 0, "sample, disk in the VM folder"))) {
    const struct vm_point *p = &v->points[0];
    CHECK (p->available && p->disks[0].tip &&
           strstr (p->disks[0].tip, "/Other Location/Virtual hard disks/"
                   "Other Location.vhdx"),
           "found in the VM folder: %s", p->disks[0].tip ?
           p->disks[0].tip : p->problem);
    vm_free (v);
  }

  /* A symlink there pointing out of the allowed folders: refused. */
  tmp_path (outside, "outside.vhdx");
  run ("mv '%s/Virtual hard disks/Other Location.vhdx' '%s' && "
       "ln -s '%s' '%s/Virtual hard disks/Other Location.vhdx'",
       vm, outside, outside, vm);
  if ((v = open_vm (vm, NULL, 0, "sample, symlink out"))) {
    const struct vm_point *p = &v->points[0];
    CHECK (!p->available && p->problem &&
           strstr (p->problem, "outside the allowed folders") &&
           strstr (p->problem, "outside.vhdx"),
           "symlink out refused: %s", p->problem);
    vm_free (v);
  }

  /* The configuration file itself given instead of the folder. */
  if ((v = open_vm (cfgp, NULL, 0, "sample, the .vmcx given"))) {
    char *real = realpath (vm, NULL);
    CHECK (real && strcmp (v->folder, real) == 0, "folder %s", v->folder);
    free (real);
    vm_free (v);
  }

  /* A damaged configuration fails vm_open, naming the file. */
  run ("head -c 30000 '%s' > '%s.tmp' && mv '%s.tmp' '%s'", vmcx_path, cfgp,
       cfgp, cfgp);
  {
    struct vm_opts o = { 0 };
    struct vm *bad = NULL;
    vc_clear_error ();
    CHECK (vm_open (vm, &o, &bad) < 0 && !bad &&
           strstr (vc_last_error (), cfgp) &&
           !strchr (vc_last_error (), '\n'),
           "truncated .vmcx: %s", vc_last_error ());
    if (verbose)
      fprintf (stderr, "  truncated vm: %s\n", vc_last_error ());
    vm_free (bad);
  }
}

/* A small XML folder without disks: names, times, lookups, the parent a
 * configuration declares (used only where no disk links a point), several
 * VMs in one folder. */
static void
write_conf (const char *path, const char *name, const char *gid,
            const char *extra)
{
  char *t;

  if (asprintf (&t, "<?xml version=\"1.0\"?>\r\n<configuration>\r\n"
                "<properties><name type=\"string\">%s</name>"
                "<global_id type=\"string\">%s</global_id>"
                "<creation_time type=\"bytes\">p25FZp6X1wE=</creation_time>"
                "%s</properties>\r\n</configuration>\r\n",
                name, gid, extra) < 0)
    exit (1);
  write_utf16 (path, t, false, true);
  free (t);
}

#define G1 "11111111-2222-4333-8444-555555555555"
#define G2 "21111111-2222-4333-8444-555555555555"
#define G3 "31111111-2222-4333-8444-555555555555"
#define GV "41111111-2222-4333-8444-555555555555"
#define GW "51111111-2222-4333-8444-555555555555"

static void
test_vm_small (void)
{
  char vm[PATH_MAX], p[PATH_MAX + 128];
  struct vm_opts o = { 0 };
  struct vm *v = NULL;
  const struct vm_point *pt;

  tmp_path (vm, "Small");
  run ("mkdir -p '%s/Virtual Machines' '%s/Snapshots'", vm, vm);
  snprintf (p, sizeof p, "%s/Virtual Machines/%s.xml", vm, GV);
  write_conf (p, "Small VM", GV, "");
  snprintf (p, sizeof p, "%s/Snapshots/%s.xml", vm, G1);
  write_conf (p, "Same", G1, "");
  snprintf (p, sizeof p, "%s/Snapshots/{%s}.xml", vm, G2);
  write_conf (p, "Same", G2, "<parent_snapshot_id type=\"string\">{" G1
              "}</parent_snapshot_id>");
  snprintf (p, sizeof p, "%s/Snapshots/%s.xml", vm, G3);
  write_conf (p, "Third", G3, "");

  vc_clear_error ();
  CHECK (vm_open (vm, &o, &v) == 0, "small: %s", vc_last_error ());
  if (!v)
    return;
  CHECK (v->source == VM_SOURCE_XML && strcmp (v->name, "Small VM") == 0 &&
         v->guid && strcmp (v->guid, GV) == 0, "small: VM %s", v->name);
  CHECK (v->nr_points == 4, "small: %zu points", v->nr_points);
  pt = vm_find (v, "{" "11111111-2222-4333-8444-555555555555" "}");
  CHECK (pt && strcmp (pt->id, G1) == 0 && pt->created == 1629668460 &&
         !pt->available && pt->problem &&
         strstr (pt->problem, "no virtual hard disk"),
         "small: find by braced GUID, time, no disk: %s",
         pt ? pt->problem : "-");
  pt = vm_find (v, "21111111-2222-4333-8444-555555555555");
  CHECK (pt && pt->parent && strcmp (pt->parent, G1) == 0 &&
         pt->parent_from_config,
         "small: the declared parent where no disk says: %s",
         pt ? pt->parent : "-");
  vc_clear_error ();
  CHECK (vm_find (v, "Same") == NULL &&
         strstr (vc_last_error (), "2 checkpoints are named 'Same'"),
         "small: ambiguous name: %s", vc_last_error ());
  pt = vm_find (v, "third");
  CHECK (pt && strcmp (pt->id, G3) == 0, "small: name, any case");
  pt = vm_find (v, "Now");
  CHECK (pt && pt->current && pt->parent == NULL, "small: Now, no parent");
  /* Tree order: G1, its child G2, G3, then Now (no times: last). */
  CHECK (strcmp (v->points[0].id, G1) == 0 &&
         strcmp (v->points[1].id, G2) == 0 &&
         strcmp (v->points[2].id, G3) == 0 &&
         strcmp (v->points[3].id, "now") == 0, "small: tree order");
  vm_free (v);

  /* A second VM in the same folder: refuse to guess, or select. */
  snprintf (p, sizeof p, "%s/Virtual Machines/%s.xml", vm, GW);
  write_conf (p, "Other VM", GW, "");
  v = NULL;
  vc_clear_error ();
  CHECK (vm_open (vm, &o, &v) < 0 && !v &&
         strstr (vc_last_error (), "holds 2 virtual machines") &&
         strstr (vc_last_error (), "Other VM"),
         "two VMs: %s", vc_last_error ());
  o.select = "Other VM";
  CHECK (vm_open (vm, &o, &v) == 0 && v && v->guid &&
         strcmp (v->guid, GW) == 0, "select by name: %s", vc_last_error ());
  vm_free (v);
  v = NULL;
  o.select = "{" GV "}";
  CHECK (vm_open (vm, &o, &v) == 0 && v && strcmp (v->name, "Small VM") == 0,
         "select by GUID: %s", vc_last_error ());
  vm_free (v);
  v = NULL;
  o.select = "nothing";
  CHECK (vm_open (vm, &o, &v) < 0 && strstr (vc_last_error (), "no virtual "
         "machine 'nothing'"), "select nothing: %s", vc_last_error ());
  vm_free (v);
}

int
main (void)
{
  char tmpl[] = "/tmp/unit-hyperv.XXXXXX";

  samples = getenv ("SAMPLES");
  verbose = getenv ("VERBOSE") != NULL;
  if (!samples) {
    fprintf (stderr, "unit-hyperv: SAMPLES is not set (the shared samples "
             "folder)\n");
    return 1;
  }
  if (system ("qemu-img --version >/dev/null 2>&1") != 0) {
    fprintf (stderr, "unit-hyperv: qemu-img is required\n");
    return 1;
  }
  if (!mkdtemp (tmpl)) {
    perror ("mkdtemp");
    return 1;
  }
  snprintf (tmpdir, sizeof tmpdir, "%s", tmpl);

  test_vmcx_sample ();
  test_vmcx_damaged ();
  test_xml ();
  test_vm_sample ();
  test_vm_small ();

  run ("rm -rf '%s'", tmpdir);
  printf ("unit-hyperv: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
