/* vhdchain core: Hyper-V 2008 - 2012 R2 XML configurations, and the key
 * tree shared with the .vmcx reader.
 *
 * No real 2008 - 2012 R2 configuration file is public, so this reader
 * follows what public code that reads or writes real files shows:
 *  - fox-it/dissect.target, loaders/hyperv.py: an element with a "type"
 *    attribute is a value ("string", "integer", "bool"/"boolean", "bytes"
 *    = base64), one without is a node of child elements; the document
 *    element is <configuration> with <manifest> among its children; disks
 *    are configuration/_<controller instance>_/controller<N>/drive<M> with
 *    <type>VHD</type> and <pathname>; controller instances come from
 *    manifest/vdevNNN/{device,instance}, device 83f8638b-... (emulated IDE)
 *    or d422512d-... (synthetic SCSI);
 *  - the Hyper-V OVA generator in Red Hat's imagefactory (derived from Matt
 *    Wrock's packer-templates vm.xml, a Hyper-V 2012 R2 export): UTF-16
 *    with a byte order mark and CRLF line ends, standalone="yes";
 *    properties/{name, global_id, creation_time (bytes: a FILETIME,
 *    base64), type_id "Virtual Machines"}, settings/global/logical_id;
 *    global_settings/snapshots/list/size;
 *  - Vagrant's and packer's Hyper-V import scripts
 *    (configuration.properties.name.'#text',
 *    configuration.settings.processors.count.'#text') and Altaro's
 *    "Hyper-V's relationship with virtual machine XML files"
 *    (Configuration > Properties > Name);
 *  - Ben Armstrong ("Virtual PC Guy", 2009): Snapshots\<snapshot GUID>.xml
 *    is a copy of the VM's configuration taken with the checkpoint.
 * The .vmcx sample has the very same key names (vmcx.c), which supports
 * reading both into one tree.
 *
 * The reader is small and lenient about what it does not need, strict about
 * well-formedness: UTF-8 or UTF-16 (either byte order, with or without a
 * byte order mark); the XML declaration, processing instructions,
 * comments, CDATA and a DOCTYPE (skipped, its entities never expanded) are
 * accepted; the five predefined entities and character references are
 * decoded; unknown attributes and elements are kept but never required.  A
 * truncated file, a mismatched end tag or an unknown entity is an error
 * naming the file and line.  Everything is bounded: file size (by
 * cfg_read), element depth, number of elements, name and text lengths.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>

#include "error.h"
#include "hyperv.h"
#include "utf16.h"

/* --- the tree ------------------------------------------------------------ */

struct cfg *
cfg_new (const char *name, size_t namelen)
{
  struct cfg *c = calloc (1, sizeof *c);

  if (!c || !(c->name = strndup (name, namelen))) {
    free (c);
    return NULL;
  }
  return c;
}

int
cfg_add_kid (struct cfg *parent, struct cfg *kid)
{
  if ((parent->nr_kids & (parent->nr_kids - 1)) == 0) {
    size_t cap = parent->nr_kids ? 2 * parent->nr_kids : 4;
    struct cfg **k = realloc (parent->kids, cap * sizeof *k);
    if (!k)
      return -ENOMEM;
    parent->kids = k;
  }
  parent->kids[parent->nr_kids++] = kid;
  return 0;
}

void
cfg_free (struct cfg *c)
{
  if (!c)
    return;
  for (size_t i = 0; i < c->nr_kids; i++)
    cfg_free (c->kids[i]);
  free (c->kids);
  free (c->name);
  free (c->text);
  free (c->bytes);
  free (c);
}

const struct cfg *
cfg_get (const struct cfg *c, const char *path)
{
  while (c && *path) {
    const char *slash = strchr (path, '/');
    size_t n = slash ? (size_t) (slash - path) : strlen (path);
    const struct cfg *next = NULL;

    for (size_t i = 0; !next && i < c->nr_kids; i++)
      if (strlen (c->kids[i]->name) == n &&
          strncasecmp (c->kids[i]->name, path, n) == 0)
        next = c->kids[i];
    c = next;
    path += n + (slash != NULL);
  }
  return c;
}

const char *
cfg_text (const struct cfg *c, const char *path)
{
  c = cfg_get (c, path);
  return c && c->type != CFG_NODE ? c->text : NULL;
}

/* --- reading files ----------------------------------------------------- */

int
cfg_read (const char *path, enum cfg_format *fmt, struct cfg **out)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), err;
  struct stat st;
  uint8_t *buf;
  size_t got = 0;
  const char *dot;

  *out = NULL;
  if (fd == -1)
    return vc_error (errno, "%s: %m", path);
  if (fstat (fd, &st) == -1 || !S_ISREG (st.st_mode)) {
    err = S_ISREG (st.st_mode) ? errno : EINVAL;
    close (fd);
    return vc_error (err, "%s: not a regular file", path);
  }
  if ((uint64_t) st.st_size > VM_MAX_CONFIG_SIZE) {
    close (fd);
    return vc_error (EFBIG, "%s: configuration of %jd bytes is larger than "
                     "the %u bytes allowed", path, (intmax_t) st.st_size,
                     VM_MAX_CONFIG_SIZE);
  }
  if (!(buf = malloc (st.st_size + 1))) {
    close (fd);
    return vc_error (ENOMEM, "%s: out of memory", path);
  }
  while (got < (size_t) st.st_size) {
    ssize_t r = read (fd, buf + got, st.st_size - got);
    if (r <= 0) {
      err = r == 0 ? EIO : errno;
      close (fd);
      free (buf);
      return vc_error (err, "%s: read: %s", path,
                       r == 0 ? "file shrank while read" : strerror (err));
    }
    got += r;
  }
  close (fd);
  dot = strrchr (path, '.');
  if ((got >= 4 && buf[0] == 0x14 && buf[1] == 0x20 && buf[2] == 0x28 &&
       buf[3] == 0x01) || (dot && strcasecmp (dot, ".vmcx") == 0)) {
    *fmt = CFG_VMCX;
    err = cfg_read_vmcx (path, buf, got, out);
  }
  else {
    *fmt = CFG_XML;
    err = cfg_read_xml (path, buf, got, out);
  }
  free (buf);
  return err;
}

/* --- XML ----------------------------------------------------------------- */

struct xml {
  const char *path;
  const char *s;                /* UTF-8, NUL-terminated */
  size_t len, pos;
  size_t nodes;
};

static unsigned
line_of (const struct xml *x, size_t pos)
{
  unsigned line = 1;

  for (size_t i = 0; i < pos && i < x->len; i++)
    line += x->s[i] == '\n';
  return line;
}

static int VC_PRINTF (3, 4)
xml_error (const struct xml *x, size_t pos, const char *fmt, ...)
{
  char msg[512];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  return vc_error (EINVAL, "%s: XML: line %u: %s", x->path, line_of (x, pos),
                   msg);
}

static int
truncated (const struct xml *x, const char *inside)
{
  return vc_error (EINVAL, "%s: XML: line %u: the file ends inside %s "
                   "(truncated?)", x->path, line_of (x, x->len), inside);
}

static bool
at (const struct xml *x, const char *lit)
{
  return strncmp (x->s + x->pos, lit, strlen (lit)) == 0;
}

static void
skip_space (struct xml *x)
{
  while (x->pos < x->len && isspace ((unsigned char) x->s[x->pos]))
    x->pos++;
}

/* Skip past the terminator; false at end of input. */
static bool
skip_past (struct xml *x, const char *end)
{
  const char *p = strstr (x->s + x->pos, end);

  if (!p)
    return false;
  x->pos = p - x->s + strlen (end);
  return true;
}

/* <!DOCTYPE ...> with an optional [internal subset]; nothing expanded. */
static bool
skip_doctype (struct xml *x)
{
  int depth = 0;
  char quote = 0;

  for (; x->pos < x->len; x->pos++) {
    char c = x->s[x->pos];
    if (quote) {
      if (c == quote)
        quote = 0;
    }
    else if (c == '"' || c == '\'')
      quote = c;
    else if (c == '[')
      depth++;
    else if (c == ']')
      depth--;
    else if (c == '>' && depth <= 0) {
      x->pos++;
      return true;
    }
  }
  return false;
}

/* Comments, processing instructions and (before the root) a DOCTYPE. */
static int
skip_misc (struct xml *x, bool prolog)
{
  for (;;) {
    skip_space (x);
    if (at (x, "<!--")) {
      if (!skip_past (x, "-->"))
        return truncated (x, "a comment");
    }
    else if (at (x, "<?")) {
      if (!skip_past (x, "?>"))
        return truncated (x, "a processing instruction");
    }
    else if (prolog && at (x, "<!DOCTYPE")) {
      if (!skip_doctype (x))
        return truncated (x, "the DOCTYPE");
    }
    else
      return 0;
  }
}

static bool
name_char (char c)
{
  return c && !isspace ((unsigned char) c) && !strchr ("/<>=\"'&", c);
}

/* A growing text buffer, bounded by CFG_MAX_TEXT. */
struct text {
  char *s;
  size_t len, cap;
};

static int
text_add (struct xml *x, struct text *t, const char *p, size_t n)
{
  if (t->len + n > CFG_MAX_TEXT)
    return xml_error (x, x->pos, "a value longer than %u bytes",
                      CFG_MAX_TEXT);
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 64;
    char *ns;
    while (cap < t->len + n + 1)
      cap *= 2;
    if (!(ns = realloc (t->s, cap)))
      return -ENOMEM;
    t->s = ns;
    t->cap = cap;
  }
  memcpy (t->s + t->len, p, n);
  t->len += n;
  t->s[t->len] = '\0';
  return 0;
}

/* Character data up to '<' (or the quote ending an attribute value), with
 * entity and character references decoded. */
static int
read_chars (struct xml *x, struct text *t, char stop)
{
  while (x->pos < x->len && x->s[x->pos] != stop && x->s[x->pos] != '<') {
    const char *p = x->s + x->pos;
    char buf[4];
    size_t n;
    int err;

    if (*p != '&') {
      n = strcspn (p, stop == '<' ? "<&" : stop == '"' ? "\"<&" : "'<&");
      if ((err = text_add (x, t, p, n)) < 0)
        return err;
      x->pos += n;
      continue;
    }
    const char *semi = memchr (p, ';', x->len - x->pos < 16
                               ? x->len - x->pos : 16);
    if (!semi)
      return xml_error (x, x->pos, "'&' starts no entity reference");
    if (p[1] == '#') {
      char *end;
      unsigned long v = p[2] == 'x' ? strtoul (p + 3, &end, 16)
                        : strtoul (p + 2, &end, 10);
      if (end != semi || end == p + 2 || end == p + 3 || v == 0 ||
          v > 0x10FFFF || (v >= 0xD800 && v < 0xE000))
        return xml_error (x, x->pos, "bad character reference %.*s",
                          (int) (semi - p + 1), p);
      n = utf8_put (buf, v);
    }
    else {
      static const struct { const char *name; char c; } ents[] = {
        { "lt", '<' }, { "gt", '>' }, { "amp", '&' }, { "quot", '"' },
        { "apos", '\'' },
      };
      size_t k, len = semi - p - 1;
      for (k = 0; k < 5; k++)
        if (strlen (ents[k].name) == len &&
            strncmp (p + 1, ents[k].name, len) == 0)
          break;
      if (k == 5)
        return xml_error (x, x->pos, "unknown entity %.*s (only the "
                          "predefined ones are read)",
                          (int) (semi - p + 1), p);
      buf[0] = ents[k].c;
      n = 1;
    }
    if ((err = text_add (x, t, buf, n)) < 0)
      return err;
    x->pos = semi - x->s + 1;
  }
  return 0;
}

static int
read_name (struct xml *x, const char **name, size_t *len)
{
  size_t start = x->pos;

  while (x->pos < x->len && name_char (x->s[x->pos]))
    x->pos++;
  *name = x->s + start;
  *len = x->pos - start;
  if (x->pos >= x->len)
    return truncated (x, "a tag");
  if (*len == 0)
    return xml_error (x, start, "expected a name, found '%c'",
                      x->s[start]);
  if (*len > CFG_MAX_NAME)
    return xml_error (x, start, "a name longer than %d bytes", CFG_MAX_NAME);
  return 0;
}

static int64_t
parse_int (const char *s, bool *ok)
{
  char *end;
  long long v;

  while (isspace ((unsigned char) *s))
    s++;
  errno = 0;
  v = strtoll (s, &end, 10);
  while (isspace ((unsigned char) *end))
    end++;
  *ok = end != s && !*end && errno == 0;
  return v;
}

static int
b64_value (char c)
{
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Base64, whitespace ignored; false if it is not base64. */
static bool
base64_decode (const char *s, uint8_t **out, size_t *len)
{
  size_t n = 0, cap = strlen (s) / 4 * 3 + 3;
  uint8_t *b = malloc (cap + 1);
  uint32_t acc = 0;
  int bits = 0, pad = 0;

  if (!b)
    return false;
  for (; *s; s++) {
    int v;
    if (isspace ((unsigned char) *s))
      continue;
    if (*s == '=') {
      pad++;
      continue;
    }
    if (pad || (v = b64_value (*s)) < 0) {
      free (b);
      return false;
    }
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      b[n++] = acc >> bits;
    }
  }
  *out = b;
  *len = n;
  return true;
}

/* Give an element its value from its type attribute and text. */
static int
set_value (struct cfg *c, const char *type, struct text *t, bool has_kids)
{
  bool ok;

  if (has_kids || (!type && t->len == 0)) {
    c->type = CFG_NODE;
    free (t->s);
    return 0;
  }
  c->text = t->s ? t->s : strdup ("");
  t->s = NULL;
  if (!c->text)
    return -ENOMEM;
  if (!type || strcasecmp (type, "string") == 0)
    c->type = CFG_STRING;
  else if (strcasecmp (type, "integer") == 0) {
    c->value = parse_int (c->text, &ok);
    c->type = ok ? CFG_INT : CFG_OTHER;
  }
  else if (strcasecmp (type, "bool") == 0 ||
           strcasecmp (type, "boolean") == 0) {
    const char *s = c->text;
    while (isspace ((unsigned char) *s))
      s++;
    c->type = CFG_BOOL;
    if (strncasecmp (s, "true", 4) == 0)
      c->value = 1;
    else if (strncasecmp (s, "false", 5) == 0)
      c->value = 0;
    else
      c->type = CFG_OTHER;
  }
  else if (strcasecmp (type, "bytes") == 0 &&
           base64_decode (c->text, &c->bytes, &c->len))
    c->type = CFG_BYTES;
  else
    c->type = CFG_OTHER;
  return 0;
}

/* One element, x->pos just past its '<'. */
static int
read_element (struct xml *x, struct cfg *parent, unsigned depth)
{
  const char *name, *aname;
  size_t nlen, alen, start = x->pos - 1;
  char *type = NULL;
  struct text t = { 0 };
  struct cfg *c;
  bool empty = false, has_kids = false;
  int err;

  if (depth > CFG_MAX_DEPTH)
    return xml_error (x, start, "elements nested deeper than %d",
                      CFG_MAX_DEPTH);
  if (++x->nodes > CFG_MAX_NODES)
    return xml_error (x, start, "more than %u elements", CFG_MAX_NODES);
  if ((err = read_name (x, &name, &nlen)) < 0)
    return err;
  if (!(c = cfg_new (name, nlen)))
    return -ENOMEM;
  if ((err = cfg_add_kid (parent, c)) < 0) {
    cfg_free (c);
    return err;
  }
  c->type = CFG_NODE;

  /* Attributes: only "type" is kept. */
  for (;;) {
    skip_space (x);
    if (x->pos >= x->len) {
      err = truncated (x, "a start tag");
      goto out;
    }
    if (at (x, "/>")) {
      x->pos += 2;
      empty = true;
      break;
    }
    if (x->s[x->pos] == '>') {
      x->pos++;
      break;
    }
    if ((err = read_name (x, &aname, &alen)) < 0)
      goto out;
    skip_space (x);
    if (x->pos >= x->len) {
      err = truncated (x, "a start tag");
      goto out;
    }
    if (x->s[x->pos] != '=') {
      err = xml_error (x, x->pos, "attribute %.*s has no value",
                       (int) alen, aname);
      goto out;
    }
    x->pos++;
    skip_space (x);
    if (x->pos >= x->len) {
      err = truncated (x, "a start tag");
      goto out;
    }
    char q = x->s[x->pos];
    if (q != '"' && q != '\'') {
      err = xml_error (x, x->pos, "attribute %.*s: value not quoted",
                       (int) alen, aname);
      goto out;
    }
    x->pos++;
    struct text v = { 0 };
    if ((err = read_chars (x, &v, q)) < 0) {
      free (v.s);
      goto out;
    }
    if (x->pos >= x->len || x->s[x->pos] != q) {
      free (v.s);
      err = x->pos >= x->len ? truncated (x, "an attribute value")
        : xml_error (x, x->pos, "'<' in an attribute value");
      goto out;
    }
    x->pos++;
    if (alen == 4 && strncmp (aname, "type", 4) == 0) {
      free (type);
      type = v.s ? v.s : strdup ("");
    }
    else
      free (v.s);
  }

  /* Content. */
  while (!empty) {
    if (x->pos >= x->len) {
      char what[80];
      snprintf (what, sizeof what, "element <%.*s>",
                (int) (nlen < 40 ? nlen : 40), name);
      err = truncated (x, what);
      goto out;
    }
    if (at (x, "</")) {
      const char *ename;
      size_t elen, epos = x->pos;
      x->pos += 2;
      if ((err = read_name (x, &ename, &elen)) < 0)
        goto out;
      if (elen != nlen || memcmp (ename, name, nlen) != 0) {
        err = xml_error (x, epos, "end tag </%.*s> does not match <%.*s>",
                         (int) (elen < 60 ? elen : 60), ename,
                         (int) (nlen < 60 ? nlen : 60), name);
        goto out;
      }
      skip_space (x);
      if (x->pos >= x->len) {
        err = truncated (x, "an end tag");
        goto out;
      }
      if (x->s[x->pos] != '>') {
        err = xml_error (x, x->pos, "junk in the end tag </%.*s>",
                         (int) (nlen < 60 ? nlen : 60), name);
        goto out;
      }
      x->pos++;
      break;
    }
    if (at (x, "<!--")) {
      if (!skip_past (x, "-->")) {
        err = truncated (x, "a comment");
        goto out;
      }
    }
    else if (at (x, "<![CDATA[")) {
      const char *end = strstr (x->s + x->pos + 9, "]]>");
      if (!end) {
        err = truncated (x, "a CDATA section");
        goto out;
      }
      if ((err = text_add (x, &t, x->s + x->pos + 9,
                           end - (x->s + x->pos + 9))) < 0)
        goto out;
      x->pos = end - x->s + 3;
    }
    else if (at (x, "<?")) {
      if (!skip_past (x, "?>")) {
        err = truncated (x, "a processing instruction");
        goto out;
      }
    }
    else if (at (x, "<!")) {
      err = xml_error (x, x->pos, "unexpected markup '<!'");
      goto out;
    }
    else if (x->s[x->pos] == '<') {
      x->pos++;
      has_kids = true;
      if ((err = read_element (x, c, depth + 1)) < 0)
        goto out;
    }
    else if ((err = read_chars (x, &t, '<')) < 0)
      goto out;
  }
  err = set_value (c, type, &t, has_kids);
  t.s = NULL;

 out:
  free (t.s);
  free (type);
  return err;
}

/* The document as UTF-8 text: UTF-16 (by byte order mark or by a '<'
 * next to a zero byte) is converted. */
static int
decode (const char *path, const uint8_t *buf, size_t len, char **out)
{
  bool le = false, be = false;
  size_t skip = 0;
  int err;

  if (len >= 2 && buf[0] == 0xFF && buf[1] == 0xFE)
    le = true, skip = 2;
  else if (len >= 2 && buf[0] == 0xFE && buf[1] == 0xFF)
    be = true, skip = 2;
  else if (len >= 2 && buf[0] == '<' && buf[1] == 0)
    le = true;
  else if (len >= 2 && buf[0] == 0 && buf[1] == '<')
    be = true;
  else if (len >= 3 && buf[0] == 0xEF && buf[1] == 0xBB && buf[2] == 0xBF)
    skip = 3;
  if (le || be) {
    /* A file cut inside a code unit: drop the odd byte, the parser then
     * reports where the document ends. */
    err = utf16_to_utf8 (buf + skip, (len - skip) & ~(size_t) 1, be, out);
    if (err == -EILSEQ)
      return vc_error (EINVAL, "%s: XML: the UTF-16 text holds an unpaired "
                       "surrogate", path);
    return err;
  }
  if (memchr (buf, 0, len))
    return vc_error (EINVAL, "%s: XML: a NUL byte in UTF-8 text (not a "
                     "configuration file?)", path);
  if (!(*out = malloc (len - skip + 1)))
    return -ENOMEM;
  memcpy (*out, buf + skip, len - skip);
  (*out)[len - skip] = '\0';
  return 0;
}

int
cfg_read_xml (const char *path, const uint8_t *buf, size_t len,
              struct cfg **out)
{
  struct xml x = { .path = path };
  struct cfg *doc = NULL;
  char *s = NULL;
  int err;

  *out = NULL;
  if ((err = decode (path, buf, len, &s)) < 0)
    goto out;
  x.s = s;
  x.len = strlen (s);
  if (!(doc = cfg_new ("", 0))) {
    err = -ENOMEM;
    goto out;
  }
  doc->type = CFG_NODE;
  if ((err = skip_misc (&x, true)) < 0)
    goto out;
  if (x.pos >= x.len) {
    err = vc_error (EINVAL, "%s: XML: no element (empty or truncated "
                    "file)", path);
    goto out;
  }
  if (x.s[x.pos] != '<') {
    err = xml_error (&x, x.pos, "expected '<', found '%c' (not XML?)",
                     x.s[x.pos]);
    goto out;
  }
  x.pos++;
  if ((err = read_element (&x, doc, 1)) < 0 ||
      (err = skip_misc (&x, false)) < 0)
    goto out;
  if (x.pos < x.len)
    err = xml_error (&x, x.pos, "content after the document element");

 out:
  free (s);
  if (err == -ENOMEM)
    vc_error (ENOMEM, "%s: out of memory", path);
  if (err) {
    cfg_free (doc);
    return err;
  }
  *out = doc;
  return 0;
}
