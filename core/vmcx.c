/* vhdchain core: the Hyper-V 2016+ binary configuration (.vmcx), read-only.
 *
 * Nothing of it is documented by Microsoft ("Editing .vmcx or .vmrs files
 * isn't supported").  What this reader knows comes from fox-it's
 * dissect.hypervisor (descriptor/c_hyperv.py and hyperv.py, read to learn
 * the layout, none of it copied) and from measuring the real file it tests
 * with (dissect's tests/_data/descriptor/hyperv/test.vmcx, in
 * ../shared/samples/dissect/), where every checksum below was verified.
 * All integers are little-endian and every structure is packed.
 *
 *  0x0000, 0x1000  two file headers (46 bytes each):
 *      u32 signature 0x01282014, u32 checksum, u16 sequence, u32 version,
 *      u64 unknown, u32 alignment, u64 replay log offset, u64 replay log
 *      size, u32 header size.  The valid one with the higher sequence is
 *      current; only version 0x400 is known.
 *  replay log (header's offset): u32 signature 0x01110003, u32 checksum,
 *      u32 number of outstanding entries, ...  A file with outstanding
 *      entries was not closed cleanly; replaying it is not implemented
 *      (there is no sample), so such a file is refused.
 *  0x2000  object table: u32 signature 0x01110001, u32 count, then count
 *      entries of 18 bytes: u8 type, u32 checksum, u64 offset, u32 size,
 *      u8 allocated.  Types: 1 object table, 2 key table, 3 file (large
 *      values), 4 free, 6 replay log, 7 change tracking buffer.
 *  key table (an object of type 2): u16 signature 2, u16 index, u16
 *      sequence, u32 checksum; then entries until one of size 0 or the
 *      table's end.  Of several tables with one index, the highest
 *      sequence is current.
 *  key entry: u16 type (low byte: 1 free, 2 unknown, 3 int64, 4 uint64,
 *      5 double, 6 UTF-16LE string, 7 bytes, 8 bool (u32), 9 node; high
 *      byte: flags, 0x01 = the value lives in a file object), u32 entry
 *      size, u16 parent table index (0: a root key), u32 parent entry
 *      offset in that table, u32 checksum, u32 insertion sequence, u8 data
 *      offset; then the key name (UTF-8, NUL-terminated, data offset bytes
 *      with the NUL) and the value: 8 bytes for numbers, 4 for bool, 12 for
 *      a node (8 unknown, u32 sequence), u32 length + bytes for strings and
 *      bytes, or u32 size + u64 file offset for a file-object value.
 *
 * Checksums are CRC-32 (zlib's, reflected 0xEDB88320) of the structure with
 * its checksum field zeroed: the header's 46 bytes, each 18-byte object
 * entry, the key table's 10-byte header, and of a key entry its 21-byte
 * header, name and value (not the slack to the entry's size).  This reader
 * checks all of them: a configuration that fails them is reported, never
 * guessed at.
 *
 * The key tree is the same as the 2008-2012 R2 XML configuration's element
 * tree (the sample's keys are the XML element names), so the result is a
 * struct cfg like hyperv-xml.c's.  Everything is bounded by the buffer (the
 * whole file, read by cfg_read) and by the CFG_MAX_* limits; parent links
 * are checked to reach a root key without a cycle before the tree is built.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "error.h"
#include "hyperv.h"
#include "utf16.h"

#define HDR_SIGNATURE     0x01282014u
#define HDR_SIZE          46
#define LOG_SIGNATURE     0x01110003u
#define OBJ_SIGNATURE     0x01110001u
#define OBJ_TABLE_OFFSET  0x2000u
#define OBJ_ENTRY_SIZE    18
#define KT_SIGNATURE      2
#define KT_HEADER_SIZE    10
#define KE_HEADER_SIZE    21
#define KNOWN_VERSION     0x400u

#define MAX_OBJECTS       65536
#define MAX_KEY_TABLES    4096
#define MAX_TABLE_SIZE    (16u << 20)

enum { OBJ_OBJECT_TABLE = 1, OBJ_KEY_TABLE = 2, OBJ_FILE = 3 };
enum { KT_FREE = 1, KT_UNKNOWN = 2, KT_INT = 3, KT_UINT = 4, KT_DOUBLE = 5,
       KT_STRING = 6, KT_ARRAY = 7, KT_BOOL = 8, KT_NODE = 9 };
#define KF_FILE_OBJECT 0x01

/* zlib's CRC-32, bit by bit: the checksummed pieces are small. */
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

/* CRC-32 of n bytes at p with the 4-byte checksum field at ck zeroed. */
static bool
checksum_ok (const uint8_t *p, size_t n, size_t ck)
{
  uint8_t tmp[64];
  uint32_t want = get_le32 (p + ck), crc;

  if (n <= sizeof tmp) {
    memcpy (tmp, p, n);
    memset (tmp + ck, 0, 4);
    return crc32_zlib (tmp, n) == want;
  }
  /* Longer pieces: CRC of the prefix, four zero bytes, the rest. */
  crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    crc ^= (i >= ck && i < ck + 4) ? 0 : p[i];
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1));
  }
  return ~crc == want;
}

struct table {
  uint16_t index, seq;
  uint64_t off;
  uint32_t size;
};

struct fileobj {
  uint64_t off;
  uint32_t size;
};

struct entry {
  uint16_t table;               /* index of the table holding it */
  uint32_t off;                 /* its offset in that table */
  uint16_t ptable;
  uint32_t poff;
  uint32_t seq;                 /* insertion sequence: order of children */
  uint8_t type;
  struct cfg *c;
  struct entry *parent;
  bool attached;
};

struct vmcx {
  const char *path;
  const uint8_t *buf;
  size_t len;
  struct table *tables;
  size_t nr_tables;
  struct fileobj *files;
  size_t nr_files;
  struct entry *ents;
  size_t nr_ents, cap_ents;
};

static int
header_ok (const uint8_t *h, uint16_t *seq)
{
  if (get_le32 (h) != HDR_SIGNATURE || !checksum_ok (h, HDR_SIZE, 4))
    return 0;
  *seq = get_le16 (h + 8);
  return 1;
}

/* The current header, or an error. */
static int
pick_header (struct vmcx *x, const uint8_t **out)
{
  const uint8_t *h0 = x->buf, *h1 = x->buf + 0x1000;
  uint16_t s0 = 0, s1 = 0;
  int ok0 = header_ok (h0, &s0), ok1 = header_ok (h1, &s1);

  if (!ok0 && !ok1) {
    if (get_le32 (h0) != HDR_SIGNATURE && get_le32 (h1) != HDR_SIGNATURE)
      return vc_error (EINVAL, "%s: VMCX: not a Hyper-V configuration "
                       "(signature 0x%08" PRIx32 ", expected 0x%08x)",
                       x->path, get_le32 (h0), HDR_SIGNATURE);
    return vc_error (EINVAL, "%s: VMCX: both file headers (at 0x0 and "
                     "0x1000) fail their checksum", x->path);
  }
  /* Sequence numbers are 16 bits: compare as serial numbers. */
  if (ok0 && ok1)
    *out = (int16_t) (s1 - s0) > 0 ? h1 : h0;
  else
    *out = ok0 ? h0 : h1;
  return 0;
}

static int
check_log (struct vmcx *x, const uint8_t *hdr)
{
  uint64_t off = get_le64 (hdr + 26);
  uint32_t n;

  if (off == 0)
    return 0;
  if (off > x->len || x->len - off < 12)
    return vc_error (EINVAL, "%s: VMCX: replay log at 0x%" PRIx64
                     " lies past the end of the file (%zu bytes; "
                     "truncated?)", x->path, off, x->len);
  if (get_le32 (x->buf + off) != LOG_SIGNATURE)
    return vc_error (EINVAL, "%s: VMCX: replay log at 0x%" PRIx64 ": bad "
                     "signature 0x%08" PRIx32, x->path, off,
                     get_le32 (x->buf + off));
  n = get_le32 (x->buf + off + 8);
  if (n)
    return vc_error (ENOTSUP, "%s: VMCX: the replay log holds %" PRIu32
                     " outstanding entr%s (the file was not closed "
                     "cleanly); replaying it is not supported", x->path, n,
                     n == 1 ? "y" : "ies");
  return 0;
}

static int
add_table (struct vmcx *x, uint64_t off, uint32_t size, unsigned i)
{
  const uint8_t *t;
  uint16_t index, seq;
  struct table *nt;

  if (size < KT_HEADER_SIZE || size > MAX_TABLE_SIZE || off > x->len ||
      x->len - off < size)
    return vc_error (EINVAL, "%s: VMCX: object %u: key table at 0x%" PRIx64
                     " (%" PRIu32 " bytes) does not fit in the file "
                     "(%zu bytes; truncated?)", x->path, i, off, size,
                     x->len);
  t = x->buf + off;
  if (get_le16 (t) != KT_SIGNATURE || !checksum_ok (t, KT_HEADER_SIZE, 6))
    return vc_error (EINVAL, "%s: VMCX: key table at 0x%" PRIx64 ": bad "
                     "%s", x->path, off, get_le16 (t) != KT_SIGNATURE
                     ? "signature" : "header checksum");
  index = get_le16 (t + 2);
  seq = get_le16 (t + 4);
  if (index == 0)
    return vc_error (EINVAL, "%s: VMCX: key table at 0x%" PRIx64 ": index "
                     "0", x->path, off);
  for (size_t k = 0; k < x->nr_tables; k++)
    if (x->tables[k].index == index) {
      if ((int16_t) (seq - x->tables[k].seq) > 0)
        x->tables[k] = (struct table) { index, seq, off, size };
      return 0;
    }
  if (x->nr_tables == MAX_KEY_TABLES)
    return vc_error (EINVAL, "%s: VMCX: more than %d key tables", x->path,
                     MAX_KEY_TABLES);
  if (!(nt = realloc (x->tables, (x->nr_tables + 1) * sizeof *nt)))
    return -ENOMEM;
  x->tables = nt;
  x->tables[x->nr_tables++] = (struct table) { index, seq, off, size };
  return 0;
}

static int
read_objects (struct vmcx *x)
{
  const uint8_t *o = x->buf + OBJ_TABLE_OFFSET;
  uint32_t n;
  int err;

  if (get_le32 (o) != OBJ_SIGNATURE)
    return vc_error (EINVAL, "%s: VMCX: object table at 0x%x: bad "
                     "signature 0x%08" PRIx32, x->path, OBJ_TABLE_OFFSET,
                     get_le32 (o));
  n = get_le32 (o + 4);
  if (n > MAX_OBJECTS ||
      (uint64_t) n * OBJ_ENTRY_SIZE > x->len - OBJ_TABLE_OFFSET - 8)
    return vc_error (EINVAL, "%s: VMCX: object table: %" PRIu32 " entries "
                     "do not fit in the file (%zu bytes; truncated?)",
                     x->path, n, x->len);
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *e = o + 8 + (size_t) i * OBJ_ENTRY_SIZE;
    uint8_t type = e[0], allocated = e[17];
    uint64_t off = get_le64 (e + 5);
    uint32_t size = get_le32 (e + 13);

    if (!checksum_ok (e, OBJ_ENTRY_SIZE, 1))
      return vc_error (EINVAL, "%s: VMCX: object table entry %" PRIu32
                       ": bad checksum", x->path, i);
    if (!allocated)
      continue;
    if (type == OBJ_KEY_TABLE) {
      if ((err = add_table (x, off, size, i)) < 0)
        return err;
    }
    else if (type == OBJ_FILE) {
      struct fileobj *nf;
      if (off > x->len || x->len - off < size)
        return vc_error (EINVAL, "%s: VMCX: object %" PRIu32 ": file object "
                         "at 0x%" PRIx64 " (%" PRIu32 " bytes) does not fit "
                         "in the file (truncated?)", x->path, i, off, size);
      if (x->nr_files == MAX_OBJECTS ||
          !(nf = realloc (x->files, (x->nr_files + 1) * sizeof *nf)))
        return -ENOMEM;
      x->files = nf;
      x->files[x->nr_files++] = (struct fileobj) { off, size };
    }
    else if (type == OBJ_OBJECT_TABLE)
      vc_debug ("%s: VMCX: a second object table (at 0x%" PRIx64 ") is "
                "ignored", x->path, off);
  }
  if (x->nr_tables == 0)
    return vc_error (EINVAL, "%s: VMCX: no key table", x->path);
  return 0;
}

/* The value of a file-object entry: size and absolute offset, checked
 * against the object table. */
static int
file_value (struct vmcx *x, const uint8_t *v, const uint8_t **data,
            size_t *len)
{
  uint32_t size = get_le32 (v);
  uint64_t off = get_le64 (v + 4);

  for (size_t i = 0; i < x->nr_files; i++)
    if (x->files[i].off == off && size <= x->files[i].size) {
      *data = x->buf + off;
      *len = size;
      return 0;
    }
  return vc_error (EINVAL, "%s: VMCX: a value points at 0x%" PRIx64
                   " (%" PRIu32 " bytes), which is no file object", x->path,
                   off, size);
}

/* Fill the leaf c from the value of entry type/flags at v (avail bytes up
 * to the entry's end).  Returns the value's size in bytes, or -errno. */
static long
read_value (struct vmcx *x, struct cfg *c, uint8_t type, uint8_t flags,
            const uint8_t *v, size_t avail, const char *where)
{
  const uint8_t *data = v;
  size_t len = 0, vsize;
  char num[64];
  int err;

  switch (type) {
  case KT_NODE: vsize = 12; break;
  case KT_INT: case KT_UINT: case KT_DOUBLE: vsize = 8; break;
  case KT_BOOL: vsize = 4; break;
  case KT_STRING: case KT_ARRAY:
    if (flags & KF_FILE_OBJECT)
      vsize = 12;
    else {
      if (avail < 4)
        goto overflow;
      len = get_le32 (v);
      if (len > avail - 4)
        goto overflow;
      data = v + 4;
      vsize = 4 + len;
    }
    break;
  default:
    return vc_error (EINVAL, "%s: VMCX: %s: unknown value type %u", x->path,
                     where, type);
  }
  if (vsize > avail)
    goto overflow;
  if ((flags & KF_FILE_OBJECT) && (type == KT_STRING || type == KT_ARRAY) &&
      (err = file_value (x, v, &data, &len)) < 0)
    return err;
  if (len > CFG_MAX_TEXT)
    return vc_error (EINVAL, "%s: VMCX: %s: value of %zu bytes is too long",
                     x->path, where, len);

  switch (type) {
  case KT_NODE:
    c->type = CFG_NODE;
    return vsize;
  case KT_INT:
    c->type = CFG_INT;
    c->value = (int64_t) get_le64 (v);
    snprintf (num, sizeof num, "%" PRId64, c->value);
    break;
  case KT_UINT:
    c->type = CFG_INT;
    c->value = (int64_t) get_le64 (v);
    snprintf (num, sizeof num, "%" PRIu64, get_le64 (v));
    break;
  case KT_DOUBLE: {
    double d;
    uint64_t u = get_le64 (v);
    memcpy (&d, &u, 8);
    c->type = CFG_OTHER;
    snprintf (num, sizeof num, "%.17g", d);
    break;
  }
  case KT_BOOL:
    c->type = CFG_BOOL;
    c->value = get_le32 (v) != 0;
    snprintf (num, sizeof num, "%s", c->value ? "True" : "False");
    break;
  case KT_STRING:
    c->type = CFG_STRING;
    if ((err = utf16_to_utf8 (data, len, false, &c->text)) < 0)
      return err == -ENOMEM ? err
        : vc_error (EINVAL, "%s: VMCX: %s: the string is not valid UTF-16",
                    x->path, where);
    return vsize;
  case KT_ARRAY:
    c->type = CFG_BYTES;
    if (!(c->bytes = malloc (len + 1)) || !(c->text = strdup ("")))
      return -ENOMEM;
    memcpy (c->bytes, data, len);
    c->len = len;
    return vsize;
  }
  return (c->text = strdup (num)) ? (long) vsize : -ENOMEM;

 overflow:
  return vc_error (EINVAL, "%s: VMCX: %s: the value runs past its entry",
                   x->path, where);
}

static int
add_entry (struct vmcx *x, const struct entry *e)
{
  if (x->nr_ents == x->cap_ents) {
    size_t cap = x->cap_ents ? 2 * x->cap_ents : 256;
    struct entry *n = realloc (x->ents, cap * sizeof *n);
    if (!n)
      return -ENOMEM;
    x->ents = n;
    x->cap_ents = cap;
  }
  x->ents[x->nr_ents++] = *e;
  return 0;
}

static int
read_table (struct vmcx *x, const struct table *t)
{
  const uint8_t *tb = x->buf + t->off;
  uint32_t eo = KT_HEADER_SIZE;
  char where[96];
  int err;

  while (eo + KE_HEADER_SIZE <= t->size) {
    const uint8_t *h = tb + eo;
    uint16_t tf = get_le16 (h);
    uint32_t esz = get_le32 (h + 2);
    uint8_t type = tf & 0xFF, flags = tf >> 8, doff = h[20];
    struct entry e = { 0 };
    long vsize;

    if (esz == 0)
      break;
    snprintf (where, sizeof where, "key table %u, entry at +%" PRIu32,
              t->index, eo);
    if (esz < KE_HEADER_SIZE || esz > t->size - eo)
      return vc_error (EINVAL, "%s: VMCX: %s: size %" PRIu32 " runs past "
                       "the table (%" PRIu32 " bytes)", x->path, where, esz,
                       t->size);
    if (type == KT_FREE || type == KT_UNKNOWN) {
      eo += esz;
      continue;
    }
    if (doff < 2 || doff > esz - KE_HEADER_SIZE ||
        memchr (h + KE_HEADER_SIZE, 0, doff) !=
        (const void *) (h + KE_HEADER_SIZE + doff - 1))
      return vc_error (EINVAL, "%s: VMCX: %s: bad key name (data offset "
                       "%u)", x->path, where, doff);
    if (x->nr_ents == CFG_MAX_NODES)
      return vc_error (EINVAL, "%s: VMCX: more than %u keys", x->path,
                       CFG_MAX_NODES);
    if (!(e.c = cfg_new ((const char *) h + KE_HEADER_SIZE, doff - 1)))
      return -ENOMEM;
    vsize = read_value (x, e.c, type, flags, h + KE_HEADER_SIZE + doff,
                        esz - KE_HEADER_SIZE - doff, where);
    if (vsize >= 0 &&
        !checksum_ok (h, KE_HEADER_SIZE + doff + vsize, 12))
      vsize = vc_error (EINVAL, "%s: VMCX: %s (key '%s'): bad checksum",
                        x->path, where, e.c->name);
    e.table = t->index;
    e.off = eo;
    e.ptable = get_le16 (h + 6);
    e.poff = get_le32 (h + 8);
    e.seq = get_le32 (h + 16);
    e.type = type;
    if (vsize < 0 || (err = add_entry (x, &e)) < 0) {
      cfg_free (e.c);
      return vsize < 0 ? (int) vsize : err;
    }
    eo += esz;
  }
  return 0;
}

static int
cmp_entry (const void *a, const void *b)
{
  const struct entry *x = a, *y = b;

  if (x->table != y->table)
    return x->table < y->table ? -1 : 1;
  return x->off < y->off ? -1 : x->off > y->off;
}

static int
cmp_kid (const void *a, const void *b)
{
  const struct entry *x = *(struct entry *const *) a;
  const struct entry *y = *(struct entry *const *) b;

  if (x->seq != y->seq)
    return x->seq < y->seq ? -1 : 1;
  return cmp_entry (x, y);
}

/* Resolve parent links, refuse cycles and over-deep keys, build the tree
 * under root with children in insertion order. */
static int
link_tree (struct vmcx *x, struct cfg *root)
{
  struct entry **order;
  int err = 0;

  if (x->nr_ents == 0)
    return 0;
  qsort (x->ents, x->nr_ents, sizeof *x->ents, cmp_entry);
  for (size_t i = 0; i < x->nr_ents; i++) {
    struct entry *e = &x->ents[i], key = { .table = e->ptable,
                                           .off = e->poff };
    if (e->ptable == 0)
      continue;
    e->parent = bsearch (&key, x->ents, x->nr_ents, sizeof *x->ents,
                         cmp_entry);
    if (!e->parent || e->parent->type != KT_NODE)
      return vc_error (EINVAL, "%s: VMCX: key '%s' (table %u, +%" PRIu32
                       "): its parent (table %u, +%" PRIu32 ") is %s",
                       x->path, e->c->name, e->table, e->off, e->ptable,
                       e->poff, e->parent ? "not a node" : "missing");
  }
  for (size_t i = 0; i < x->nr_ents; i++) {
    const struct entry *p = &x->ents[i];
    unsigned depth = 0;
    while (p->parent && depth <= CFG_MAX_DEPTH) {
      p = p->parent;
      depth++;
    }
    if (p->parent)
      return vc_error (EINVAL, "%s: VMCX: key '%s': its parent links loop "
                       "or nest deeper than %d", x->path, x->ents[i].c->name,
                       CFG_MAX_DEPTH);
  }
  /* Attach in insertion order: sort pointers, then add each to its
   * parent's cfg (or the root). */
  if (!(order = malloc (x->nr_ents * sizeof *order + 1)))
    return -ENOMEM;
  for (size_t i = 0; i < x->nr_ents; i++)
    order[i] = &x->ents[i];
  qsort (order, x->nr_ents, sizeof *order, cmp_kid);
  for (size_t i = 0; !err && i < x->nr_ents; i++) {
    struct entry *e = order[i];
    err = cfg_add_kid (e->parent ? e->parent->c : root, e->c);
    if (!err)
      e->attached = true;
  }
  free (order);
  return err;
}

int
cfg_read_vmcx (const char *path, const uint8_t *buf, size_t len,
               struct cfg **out)
{
  struct vmcx x = { .path = path, .buf = buf, .len = len };
  const uint8_t *hdr = NULL;
  struct cfg *root = NULL;
  int err;

  *out = NULL;
  if (len < OBJ_TABLE_OFFSET + 8)
    return vc_error (EINVAL, "%s: VMCX: file of %zu bytes is too short for "
                     "the headers and the object table (truncated?)",
                     path, len);
  if ((err = pick_header (&x, &hdr)) < 0)
    return err;
  if (get_le32 (hdr + 10) != KNOWN_VERSION)
    return vc_error (ENOTSUP, "%s: VMCX: version 0x%" PRIx32 " is not "
                     "supported (only 0x%x is known)", path,
                     get_le32 (hdr + 10), KNOWN_VERSION);
  if ((err = check_log (&x, hdr)) < 0 || (err = read_objects (&x)) < 0)
    goto out;
  for (size_t i = 0; i < x.nr_tables; i++)
    if ((err = read_table (&x, &x.tables[i])) < 0)
      goto out;
  if (!(root = cfg_new ("", 0))) {
    err = -ENOMEM;
    goto out;
  }
  root->type = CFG_NODE;
  err = link_tree (&x, root);

 out:
  for (size_t i = 0; i < x.nr_ents; i++)
    if (!x.ents[i].attached)
      cfg_free (x.ents[i].c);
  free (x.ents);
  free (x.tables);
  free (x.files);
  if (err == -ENOMEM)
    vc_error (ENOMEM, "%s: out of memory", path);
  if (err) {
    cfg_free (root);
    return err;
  }
  *out = root;
  return 0;
}
