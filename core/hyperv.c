/* vhdchain core: a Hyper-V VM folder as a tree of points (hyperv.h).
 *
 * vm_open, in order:
 *  1. scan the folder (bounded depth and counts, symlinks not followed):
 *     disk files (.vhd .avhd .vhdx .avhdx), configurations in
 *     "Virtual Machines" and "Snapshots" (.xml, .vmcx), and the folders
 *     holding disks, which become search folders for every chain;
 *  2. read every configuration (cfg_read: XML or VMCX, by content) into a
 *     point: name, GUID, creation time, declared parent, and its disks
 *     (IDE and SCSI controllers found through the manifest, as
 *     dissect.target does, or by their device GUID in the node name);
 *  3. resolve each recorded disk path with locator.c's candidates from the
 *     configuration's folder (drive map, base name in the search folders,
 *     trailing components under the allowed roots), opened only inside the
 *     allowed folders;
 *  4. open the chain behind each disk; a checkpoint whose recorded file is
 *     the post-checkpoint differencing disk (named after the checkpoint, or
 *     the VM's current disk) gets that file's parent as its tip;
 *  5. link points: a point's parent is the nearest checkpoint whose tip is
 *     in its chain (below its own tip); the configuration's parent key
 *     only where the disks say nothing;
 *  6. without configurations: every disk file is a point, linked to the
 *     file whose identity its parent identity names.
 * Then the points are put in tree order.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "error.h"
#include "guid.h"
#include "hyperv.h"
#include "locator.h"

#define IDE_DEVICE   "83f8638b-8dca-4152-9eda-2ca8b33039b4"
#define SCSI_DEVICE  "d422512d-2bf2-4752-809d-7b82b5fcb1b4"

#define MAX_SCAN_DEPTH   4
#define MAX_SCAN_DIRS    1024
#define MAX_SCAN_ENTRIES 65536
#define MAX_DISK_PATH    32768
#define MAX_CONFIGS      VM_MAX_POINTS

/* FILETIME (100 ns since 1601) of 1995-01-01 and 2200-01-01. */
#define FT_UNIX_OFFSET   INT64_C (11644473600)
#define UNIX_MIN         INT64_C (788918400)
#define UNIX_MAX         INT64_C (7258118400)

/* --- small helpers ----------------------------------------------------- */

struct strv {
  char **v;
  size_t n;
};

/* Append s (owned; NULL means out of memory), skipping duplicates. */
static int
strv_add (struct strv *l, char *s)
{
  char **nv;

  if (!s)
    return -ENOMEM;
  for (size_t i = 0; i < l->n; i++)
    if (strcmp (l->v[i], s) == 0) {
      free (s);
      return 0;
    }
  if (!(nv = realloc (l->v, (l->n + 1) * sizeof *nv))) {
    free (s);
    return -ENOMEM;
  }
  l->v = nv;
  l->v[l->n++] = s;
  return 0;
}

static void
strv_free (struct strv *l)
{
  for (size_t i = 0; i < l->n; i++)
    free (l->v[i]);
  free (l->v);
  l->v = NULL;
  l->n = 0;
}

static int
cmp_str (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

static char *
join (const char *a, const char *b)
{
  char *s;

  if (asprintf (&s, "%s%s%s", a, a[0] && a[strlen (a) - 1] == '/' ? "" : "/",
                b) == -1)
    return NULL;
  return s;
}

static const char *
base_name (const char *p)
{
  const char *s = strrchr (p, '/');
  return s ? s + 1 : p;
}

static bool
has_ext (const char *name, const char *const *exts)
{
  const char *dot = strrchr (name, '.');

  for (; dot && *exts; exts++)
    if (strcasecmp (dot + 1, *exts) == 0)
      return true;
  return false;
}

static const char *const disk_exts[] = { "vhd", "avhd", "vhdx", "avhdx",
                                         NULL };
static const char *const config_exts[] = { "xml", "vmcx", NULL };

static bool
is_hex (char c)
{
  return isxdigit ((unsigned char) c);
}

/* The first GUID (8-4-4-4-12 hex) in s, lowercase, into out[37]. */
static bool
find_guid (const char *s, char out[GUID_TEXT_LEN + 1])
{
  static const int dash[] = { 8, 13, 18, 23 };
  size_t len = strlen (s);

  for (size_t i = 0; i + GUID_TEXT_LEN <= len; i++) {
    bool ok = true;
    for (int k = 0; ok && k < GUID_TEXT_LEN; k++) {
      bool d = k == dash[0] || k == dash[1] || k == dash[2] || k == dash[3];
      ok = d ? s[i + k] == '-' : is_hex (s[i + k]);
    }
    if (ok && (i + GUID_TEXT_LEN == len || !is_hex (s[i + GUID_TEXT_LEN])) &&
        (i == 0 || !is_hex (s[i - 1]))) {
      for (int k = 0; k < GUID_TEXT_LEN; k++)
        out[k] = tolower ((unsigned char) s[i + k]);
      out[GUID_TEXT_LEN] = '\0';
      return true;
    }
  }
  return false;
}

/* The file name without its extension, if it is exactly a GUID (braces
 * allowed). */
static bool
stem_guid (const char *path, char out[GUID_TEXT_LEN + 1])
{
  const char *b = base_name (path), *dot = strrchr (b, '.');
  size_t n = dot ? (size_t) (dot - b) : strlen (b);
  char stem[64];

  if (n != GUID_TEXT_LEN && n != GUID_TEXT_LEN + 2)
    return false;
  memcpy (stem, b, n);
  stem[n] = '\0';
  if (n == GUID_TEXT_LEN + 2 && (stem[0] != '{' || stem[n - 1] != '}'))
    return false;
  return find_guid (stem, out);
}

static bool
contains_ci (const char *hay, const char *needle)
{
  size_t n = strlen (needle);

  for (; *hay; hay++)
    if (strncasecmp (hay, needle, n) == 0)
      return true;
  return false;
}

/* --- the context ------------------------------------------------------- */

struct conf {
  char *path;
  struct cfg *doc;
  enum cfg_format fmt;
  char guid[GUID_TEXT_LEN + 1];     /* from the file name or global_id */
  char logical[GUID_TEXT_LEN + 1];  /* settings/global/logical_id */
};

struct ctx {
  const struct vm_opts *o;
  struct vm *vm;
  struct chain_opts co;         /* the caller's, plus the VM's folders */
  struct strv search;           /* co.search */
  struct resolver r;
  bool have_r;
  struct strv disks;            /* disk files found by the scan */
  struct strv vmconfs, snapconfs;
  struct strv dirs;             /* folders holding disks */
  size_t entries, ndirs;
  char **declared;              /* per point: parent id from its config */
};

/* --- 1. scanning ------------------------------------------------------- */

static int
scan (struct ctx *x, const char *dir, unsigned depth, const char *dname)
{
  DIR *d = opendir (dir);
  struct dirent *e;
  bool vmdir = depth == 1 && strcasecmp (dname, "Virtual Machines") == 0;
  bool snapdir = depth == 1 && strcasecmp (dname, "Snapshots") == 0;
  bool has_disks = false;
  int err = 0;

  if (!d)
    return depth == 0 ? vc_error (errno, "%s: %m", dir) : 0;
  if (++x->ndirs > MAX_SCAN_DIRS) {
    closedir (d);
    return vc_error (E2BIG, "%s: more than %d folders in the VM folder",
                     x->vm->folder, MAX_SCAN_DIRS);
  }
  while (!err && (e = readdir (d)) != NULL) {
    struct stat st;
    char *p;

    if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0)
      continue;
    if (++x->entries > MAX_SCAN_ENTRIES) {
      err = vc_error (E2BIG, "%s: more than %d files in the VM folder",
                      x->vm->folder, MAX_SCAN_ENTRIES);
      break;
    }
    if (!(p = join (dir, e->d_name))) {
      err = -ENOMEM;
      break;
    }
    if (lstat (p, &st) == -1) {
      free (p);
      continue;
    }
    if (S_ISDIR (st.st_mode) && depth < MAX_SCAN_DEPTH) {
      err = scan (x, p, depth + 1, e->d_name);
      free (p);
    }
    else if (S_ISREG (st.st_mode) && has_ext (e->d_name, disk_exts)) {
      has_disks = true;
      if (x->disks.n == VM_MAX_POINTS) {
        free (p);
        err = vc_error (E2BIG, "%s: more than %d disk files in the VM "
                        "folder", x->vm->folder, VM_MAX_POINTS);
      }
      else
        err = strv_add (&x->disks, p);
    }
    else if (S_ISREG (st.st_mode) && (vmdir || snapdir) &&
             has_ext (e->d_name, config_exts)) {
      struct strv *l = vmdir ? &x->vmconfs : &x->snapconfs;
      if (l->n == MAX_CONFIGS) {
        free (p);
        err = vc_error (E2BIG, "%s: more than %d configuration files",
                        dir, MAX_CONFIGS);
      }
      else
        err = strv_add (l, p);
    }
    else
      free (p);
  }
  closedir (d);
  if (!err && has_disks)
    err = strv_add (&x->dirs, strdup (dir));
  return err;
}

/* Search folders for every chain: the caller's, then the VM's folders that
 * hold disks, then the VM folder itself. */
static int
setup_search (struct ctx *x)
{
  int err = 0;

  struct strv *lists[] = { &x->disks, &x->vmconfs, &x->snapconfs, &x->dirs };
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
    if (lists[i]->n)            /* v is NULL when empty: qsort's UB */
      qsort (lists[i]->v, lists[i]->n, sizeof *lists[i]->v, cmp_str);
  struct strv vs = { 0 };

  for (size_t i = 0; !err && i < x->dirs.n; i++)
    err = strv_add (&vs, strdup (x->dirs.v[i]));
  if (!err)
    err = strv_add (&vs, strdup (x->vm->folder));
  x->vm->search = vs.v;
  x->vm->nr_search = vs.n;
  for (size_t i = 0; !err && i < x->o->chain.nr_search; i++) {
    char *real = realpath (x->o->chain.search[i], NULL);
    if (!real)
      return vc_error (errno, "%s: search folder: %m",
                       x->o->chain.search[i]);
    err = strv_add (&x->search, real);
  }
  for (size_t i = 0; !err && i < x->vm->nr_search; i++)
    err = strv_add (&x->search, strdup (x->vm->search[i]));
  x->co = x->o->chain;
  x->co.parents = NULL;
  x->co.nr_parents = 0;
  x->co.search = x->search.v;
  x->co.nr_search = x->search.n;
  return err;
}

/* The resolver for paths written in configurations: roots are tip's folder,
 * the search folders (the VM's among them) and the drive-map targets. */
static int
setup_resolver (struct ctx *x, const char *tip)
{
  int err;

  if (x->have_r)
    return 0;
  err = resolver_init (&x->r, tip, x->search.v, x->search.n,
                       x->o->chain.drives, x->o->chain.nr_drives,
                       !x->o->chain.no_confine);
  if (err < 0) {
    resolver_free (&x->r);
    return err;
  }
  x->have_r = true;
  return 0;
}

/* --- 2. configurations ------------------------------------------------- */

static const struct cfg *
conf_root (const struct conf *c)
{
  return cfg_get (c->doc, "configuration");
}

static int
load_conf (const char *path, struct conf *c)
{
  const struct cfg *root;
  const char *gid;
  int err;

  memset (c, 0, sizeof *c);
  if ((err = cfg_read (path, &c->fmt, &c->doc)) < 0)
    return err;
  if (!(c->path = strdup (path)))
    return -ENOMEM;
  if (!(root = conf_root (c))) {
    vc_debug ("%s: no <configuration> at the top: not a Hyper-V "
              "configuration, ignored", path);
    return 1;
  }
  gid = cfg_text (root, "properties/global_id");
  if (!stem_guid (path, c->guid) && !(gid && find_guid (gid, c->guid)))
    c->guid[0] = '\0';
  gid = cfg_text (root, "settings/global/logical_id");
  if (!(gid && find_guid (gid, c->logical)))
    c->logical[0] = '\0';
  return 0;
}

static void
conf_free (struct conf *c)
{
  free (c->path);
  cfg_free (c->doc);
  memset (c, 0, sizeof *c);
}

/* FILETIME (bytes or integer) to Unix seconds, -1 if implausible. */
static int64_t
filetime_to_unix (uint64_t ft)
{
  int64_t t = (int64_t) (ft / 10000000) - FT_UNIX_OFFSET;

  return ft > INT64_MAX || t < UNIX_MIN || t > UNIX_MAX ? -1 : t;
}

static int64_t
creation_time (const struct cfg *root)
{
  const struct cfg *c = cfg_get (root, "properties/creation_time");
  uint64_t le = 0, be = 0;
  int64_t t;

  if (!c)
    return -1;
  if (c->type == CFG_INT)
    return filetime_to_unix ((uint64_t) c->value);
  if (c->type != CFG_BYTES || c->len != 8)
    return -1;
  for (int i = 7; i >= 0; i--) {
    le = le << 8 | c->bytes[i];
    be = be << 8 | c->bytes[7 - i];
  }
  /* Windows writes it little-endian; one public generator big-endian. */
  t = filetime_to_unix (le);
  return t >= 0 ? t : filetime_to_unix (be);
}

/* The parent checkpoint a configuration declares, if any.  Which key holds
 * it is not documented and no public sample shows one: these names are
 * guesses, used only where no disk links the point into the tree. */
static bool
declared_parent (const struct cfg *root, char out[GUID_TEXT_LEN + 1])
{
  static const char *const keys[] = {
    "properties/parent_snapshot_id", "properties/parent_snapshot",
    "properties/parent_id", "properties/parent",
    "global_settings/snapshots/parent", "snapshot/parent_id",
    "snapshot/parent",
  };

  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    const char *t = cfg_text (root, keys[i]);
    if (t && find_guid (t, out) && strcmp (out, "00000000-0000-0000-0000-"
                                           "000000000000") != 0)
      return true;
  }
  return false;
}

struct ctrl {
  const struct cfg *node;
  bool scsi;
};

static bool
is_device_node (const char *name, const char *device)
{
  char g[GUID_TEXT_LEN + 1];

  return name[0] == '_' && find_guid (name, g) && strcmp (g, device) == 0;
}

/* The storage controllers of a configuration, IDE first, each SCSI one in
 * manifest order (its number). */
static size_t
controllers (const struct cfg *root, struct ctrl *out, size_t max)
{
  const struct cfg *man = cfg_get (root, "manifest");
  size_t n = 0;

  for (int pass = 0; pass < 2; pass++) {
    const char *want = pass == 0 ? IDE_DEVICE : SCSI_DEVICE;
    /* Through the manifest: vdevNNN/{device, instance}. */
    for (size_t i = 0; man && i < man->nr_kids && n < max; i++) {
      const char *dev = cfg_text (man->kids[i], "device");
      const char *inst = cfg_text (man->kids[i], "instance");
      char g[GUID_TEXT_LEN + 1], ig[GUID_TEXT_LEN + 1];
      if (!dev || !inst || !find_guid (dev, g) || strcmp (g, want) != 0 ||
          !find_guid (inst, ig))
        continue;
      for (size_t k = 0; k < root->nr_kids; k++) {
        char kg[GUID_TEXT_LEN + 1];
        const struct cfg *c = root->kids[k];
        bool dup = false;
        if (c->name[0] != '_' || !find_guid (c->name, kg) ||
            strcmp (kg, ig) != 0)
          continue;
        for (size_t j = 0; j < n; j++)
          dup |= out[j].node == c;
        if (!dup && n < max)
          out[n++] = (struct ctrl) { c, pass == 1 };
      }
    }
    /* By name: _<device GUID>_ (and any suffix). */
    for (size_t k = 0; k < root->nr_kids && n < max; k++) {
      const struct cfg *c = root->kids[k];
      bool dup = false;
      if (!is_device_node (c->name, want))
        continue;
      for (size_t j = 0; j < n; j++)
        dup |= out[j].node == c;
      if (!dup)
        out[n++] = (struct ctrl) { c, pass == 1 };
    }
  }
  return n;
}

static bool
numbered (const char *name, const char *prefix, unsigned *num)
{
  size_t n = strlen (prefix);
  char *end;
  unsigned long v;

  if (strncasecmp (name, prefix, n) != 0 || !isdigit ((unsigned char) name[n]))
    return false;
  v = strtoul (name + n, &end, 10);
  if (*end || v > 65535)
    return false;
  *num = v;
  return true;
}

static int
add_disk (struct vm_point *p, const char *location, const char *recorded)
{
  struct vm_disk *nd;

  if (p->nr_disks == VM_MAX_DISKS)
    return vc_error (E2BIG, "%s: more than %d disks", p->config,
                     VM_MAX_DISKS);
  if (!(nd = realloc (p->disks, (p->nr_disks + 1) * sizeof *nd)))
    return -ENOMEM;
  p->disks = nd;
  nd = &p->disks[p->nr_disks];
  memset (nd, 0, sizeof *nd);
  if ((location && !(nd->location = strdup (location))) ||
      (recorded && !(nd->recorded = strdup (recorded)))) {
    free (nd->location);
    return -ENOMEM;
  }
  p->nr_disks++;
  return 0;
}

/* Every virtual hard disk drive of a configuration. */
static int
read_disks (const struct cfg *root, struct vm_point *p)
{
  struct ctrl ctl[64];
  size_t n = controllers (root, ctl, 64);
  unsigned scsi = 0;
  int err = 0;

  for (size_t i = 0; !err && i < n; i++) {
    unsigned cnum, dnum;
    for (size_t k = 0; !err && k < ctl[i].node->nr_kids; k++) {
      const struct cfg *cc = ctl[i].node->kids[k];
      if (!numbered (cc->name, "controller", &cnum))
        continue;
      for (size_t j = 0; !err && j < cc->nr_kids; j++) {
        const struct cfg *d = cc->kids[j];
        const char *type = cfg_text (d, "type"), *path;
        char loc[64];
        if (!numbered (d->name, "drive", &dnum) ||
            !(path = cfg_text (d, "pathname")) || !*path)
          continue;
        if (type ? strcasecmp (type, "VHD") != 0
            : !has_ext (path, disk_exts))
          continue;
        if (ctl[i].scsi)
          snprintf (loc, sizeof loc, "SCSI %u:%u", scsi + cnum, dnum);
        else
          snprintf (loc, sizeof loc, "IDE %u:%u", cnum, dnum);
        err = add_disk (p, loc, path);
      }
    }
    scsi += ctl[i].scsi;
  }
  return err;
}

/* A point from a configuration: names, time, disks. */
static int
point_from_conf (struct ctx *x, const struct conf *c, bool current,
                 struct vm_point *p, char **declared)
{
  const struct cfg *root = conf_root (c);
  const char *name = cfg_text (root, "properties/name"), *notes;
  char par[GUID_TEXT_LEN + 1];

  memset (p, 0, sizeof *p);
  p->current = current;
  p->created = current ? -1 : creation_time (root);
  if (!(p->config = strdup (c->path)) ||
      !(p->id = strdup (current ? "now" : c->guid[0] ? c->guid
                        : base_name (c->path))) ||
      !(p->name = strdup (current ? "Now" : name && *name ? name : p->id)))
    return -ENOMEM;
  notes = cfg_text (root, "properties/notes");
  if (notes && *notes && !(p->notes = strdup (notes)))
    return -ENOMEM;
  *declared = NULL;
  if (!current && declared_parent (root, par) && !(*declared = strdup (par)))
    return -ENOMEM;
  return read_disks (root, p);
}

/* --- 3. recorded disk paths -------------------------------------------- */

static bool
looks_absolute (const char *w)
{
  return (isalpha ((unsigned char) w[0]) && w[1] == ':') || w[0] == '\\' ||
         w[0] == '/';
}

static int
set_problem (char **slot, const char *fmt, ...) VC_PRINTF (2, 3);

static int
set_problem (char **slot, const char *fmt, ...)
{
  va_list ap;
  char *s;
  int r;

  va_start (ap, fmt);
  r = vasprintf (&s, fmt, ap);
  va_end (ap);
  if (r < 0)
    return -ENOMEM;
  free (*slot);
  *slot = s;
  return 0;
}

/* How many trailing components of a Linux path and a Windows path agree
 * (case-insensitively). */
static size_t
common_tail (const char *path, const char *win)
{
  const char *pe = path + strlen (path), *we = win + strlen (win);
  size_t n = 0;

  for (;;) {
    const char *ps = pe, *ws = we;
    while (ps > path && ps[-1] != '/')
      ps--;
    while (ws > win && ws[-1] != '\\' && ws[-1] != '/')
      ws--;
    if (pe - ps == 0 || pe - ps != we - ws ||
        strncasecmp (ps, ws, pe - ps) != 0)
      return n;
    n++;
    if (ps == path || ws == win)
      return n;
    pe = ps - 1;
    we = ws - 1;
  }
}

struct rank {
  size_t i;
  bool drive;
  size_t tail;
};

static int
cmp_rank (const void *a, const void *b)
{
  const struct rank *x = a, *y = b;

  if (x->drive != y->drive)
    return x->drive ? -1 : 1;
  if (x->tail != y->tail)
    return x->tail > y->tail ? -1 : 1;
  return x->i < y->i ? -1 : x->i > y->i;
}

/* Find the file a configuration names, inside the allowed folders. */
static int
resolve_recorded (struct ctx *x, const char *cfgpath, struct vm_disk *d)
{
  struct parent_hint h;
  struct layer fake;
  struct candidates c;
  struct rank *order;
  char *outside = NULL;
  size_t tried = 0;
  int err;

  if (strlen (d->recorded) > MAX_DISK_PATH)
    return set_problem (&d->problem, "%s: the recorded path is longer than "
                        "%d bytes", d->location, MAX_DISK_PATH);
  if ((err = setup_resolver (x, cfgpath)) < 0)
    return err;
  memset (&fake, 0, sizeof fake);
  h.kind = looks_absolute (d->recorded) ? HINT_ABSOLUTE : HINT_RELATIVE;
  h.path = d->recorded;
  fake.path = (char *) cfgpath;
  fake.hints = &h;
  fake.nr_hints = 1;
  if ((err = locator_candidates (&x->r, &fake, &c)) < 0)
    return set_problem (&d->problem, "%s: %s", d->location,
                        vc_last_error ());
  /* A configuration names no identity to check a file against, so the
   * most specific candidate wins: the drive map's, then the one sharing
   * the most trailing path components with the recorded path
   * (".../Virtual Hard Disks/Disk.vhd" before ".../Old/Disk.vhd"), then
   * locator.c's order. */
  if (!(order = calloc (c.n + 1, sizeof *order))) {
    candidates_free (&c);
    return -ENOMEM;
  }
  for (size_t i = 0; i < c.n; i++)
    order[i] = (struct rank) {
      i, strstr (c.why[i], "drive map") != NULL,
      common_tail (c.path[i], d->recorded) };
  qsort (order, c.n, sizeof *order, cmp_rank);
  for (size_t k = 0; k < c.n && !d->file; k++) {
    size_t i = order[k].i;
    char *real = NULL;
    struct stat st;
    int fd;

    fd = locator_open (&x->r, c.path[i], &real);

    tried++;
    if (fd >= 0) {
      if (fstat (fd, &st) == 0 && S_ISREG (st.st_mode)) {
        d->file = real;
        vc_debug ("%s: %s: %s is %s (%s)", cfgpath, d->location,
                  d->recorded, real, c.why[i]);
      }
      else
        free (real);
      close (fd);
    }
    else if (fd == -EPERM && real && !outside)
      outside = real;
    else
      free (real);
  }
  candidates_free (&c);
  free (order);
  if (!d->file) {
    if (outside)
      err = set_problem (&d->problem, "%s: disk %s resolves to %s, outside "
                         "the allowed folders (add search= or "
                         "confine=false)", d->location, d->recorded, outside);
    else
      err = set_problem (&d->problem, "%s: disk %s is missing (not found in "
                         "the VM folder, the search folders or the drive "
                         "map; %zu candidates tried)", d->location,
                         d->recorded, tried);
    free (outside);
    return err;
  }
  free (outside);
  return 0;
}

/* --- 4. chains and tips ------------------------------------------------ */

/* Record the chain from layer k down in d. */
static int
take_chain (struct vm_disk *d, const struct chain *c, size_t k)
{
  if (!(d->tip = strdup (c->layers[k]->path)) ||
      !(d->chain = calloc (c->depth - k + 1, sizeof *d->chain)))
    return -ENOMEM;
  d->size = c->layers[k]->size;
  for (size_t i = k; i < c->depth; i++) {
    if (!(d->chain[i - k] = strdup (c->layers[i]->path)))
      return -ENOMEM;
    d->depth++;
  }
  return 0;
}

static bool
is_now_file (const struct vm *vm, const char *file)
{
  for (size_t i = 0; i < vm->nr_points; i++)
    if (vm->points[i].current)
      for (size_t k = 0; k < vm->points[i].nr_disks; k++)
        if (vm->points[i].disks[k].file &&
            strcmp (vm->points[i].disks[k].file, file) == 0)
          return true;
  return false;
}

static int
disk_tip (struct ctx *x, struct vm_point *p, struct vm_disk *d,
          enum vm_tip_rule base_rule)
{
  struct chain *c = NULL;
  enum vm_tip_rule rule = base_rule;
  size_t k = 0;
  int err, r;

  vc_clear_error ();
  r = chain_open_partial (d->file, &x->co, &c);
  if (!c)
    return set_problem (&d->problem, "%s: %s", d->location
                        ? d->location : base_name (d->file),
                        vc_last_error ());
  if (base_rule == TIP_RECORDED && !p->current) {
    char g[GUID_TEXT_LEN + 1];
    if (strlen (p->id) == GUID_TEXT_LEN && find_guid (p->id, g) &&
        contains_ci (base_name (d->file), p->id))
      rule = TIP_PARENT_NAMED;
    else if (is_now_file (x->vm, d->file))
      rule = TIP_PARENT_CURRENT;
  }
  if ((rule == TIP_PARENT_NAMED || rule == TIP_PARENT_CURRENT) &&
      !c->layers[0]->differencing) {
    vc_debug ("%s: %s looks like the disk made after the checkpoint but is "
              "no differencing disk: taken as the state itself", p->id,
              d->file);
    rule = TIP_RECORDED;
  }
  if (rule == TIP_PARENT_NAMED || rule == TIP_PARENT_CURRENT) {
    k = 1;
    if (c->depth < 2) {
      err = set_problem (&d->problem, "%s: %s holds the changes made after "
                         "this checkpoint, and its parent (the checkpoint's "
                         "state) was not found: %s", d->location, d->file,
                         vc_last_error ());
      chain_close (c);
      return err;
    }
  }
  d->tip_rule = rule;
  err = take_chain (d, c, k);
  if (!err && r < 0)
    err = set_problem (&d->problem, "%s: %s", d->location ? d->location
                       : base_name (d->file), vc_last_error ());
  chain_close (c);
  return err;
}

/* --- 5. linking -------------------------------------------------------- */

static struct vm_point *
find_id (struct vm *vm, const char *id)
{
  for (size_t i = 0; id && i < vm->nr_points; i++)
    if (strcasecmp (vm->points[i].id, id) == 0)
      return &vm->points[i];
  return NULL;
}

/* The nearest checkpoint whose tip is in p's chain below p's tip. */
static const struct vm_point *
linkage_parent (const struct vm *vm, const struct vm_point *p)
{
  for (size_t k = 0; k < p->nr_disks; k++) {
    const struct vm_disk *d = &p->disks[k];
    for (size_t i = 1; i < d->depth; i++)
      for (size_t j = 0; j < vm->nr_points; j++) {
        const struct vm_point *q = &vm->points[j];
        if (q == p || q->current)
          continue;
        for (size_t m = 0; m < q->nr_disks; m++)
          if (q->disks[m].tip && strcmp (q->disks[m].tip, d->chain[i]) == 0)
            return q;
      }
  }
  return NULL;
}

static int
link_points (struct ctx *x)
{
  struct vm *vm = x->vm;

  for (size_t i = 0; i < vm->nr_points; i++) {
    struct vm_point *p = &vm->points[i];
    const struct vm_point *q = linkage_parent (vm, p);
    const char *decl = x->declared ? x->declared[i] : NULL;

    if (!q && decl && find_id (vm, decl) && find_id (vm, decl) != p) {
      q = find_id (vm, decl);
      p->parent_from_config = true;
    }
    else if (q && decl && strcasecmp (q->id, decl) != 0)
      vc_debug ("%s: the configuration names parent %s, the disks %s: "
                "the disks win", p->id, decl, q->id);
    if (q && !(p->parent = strdup (q->id)))
      return -ENOMEM;
  }
  return 0;
}

/* --- 6. the tree without configurations -------------------------------- */

static int
linkage_tree (struct ctx *x)
{
  struct vm *vm = x->vm;
  struct layer **l;
  size_t flen = strlen (vm->folder);
  int err = 0;

  if (x->disks.n == 0)
    return vc_error (ENOENT, "%s: no Hyper-V configuration and no disk file "
                     "(.vhd, .avhd, .vhdx, .avhdx) in this folder",
                     vm->folder);
  if ((err = setup_resolver (x, x->disks.v[0])) < 0)
    return err;
  if (!(vm->points = calloc (x->disks.n, sizeof *vm->points)) ||
      !(l = calloc (x->disks.n, sizeof *l)))
    return -ENOMEM;
  for (size_t i = 0; !err && i < x->disks.n; i++) {
    struct vm_point *p = &vm->points[vm->nr_points++];
    const char *path = x->disks.v[i];
    char *real = NULL;
    int fd;

    p->created = -1;
    if (!(p->id = strdup (strncmp (path, vm->folder, flen) == 0 &&
                          path[flen] == '/' ? path + flen + 1 : path)) ||
        !(p->name = strdup (base_name (path))) ||
        (err = add_disk (p, NULL, NULL)) < 0) {
      err = -ENOMEM;
      break;
    }
    fd = locator_open (&x->r, path, &real);
    if (fd < 0) {
      err = set_problem (&p->disks[0].problem, "%s: %s", path,
                         fd == -EPERM && real ? "resolves outside the "
                         "allowed folders" : strerror (-fd));
      free (real);
      continue;
    }
    p->disks[0].file = real;
    vc_clear_error ();
    if (layer_open (fd, real, &x->co.layer, &l[i]) < 0) {
      close (fd);
      l[i] = NULL;
      err = set_problem (&p->disks[0].problem, "%s", vc_last_error ());
    }
  }
  /* Parents by identity, then each file's chain. */
  for (size_t i = 0; !err && i < x->disks.n; i++) {
    struct vm_point *p = &vm->points[i];
    if (l[i] && l[i]->differencing)
      for (size_t j = 0; !p->parent && j < x->disks.n; j++) {
        static const uint8_t zero[16];
        if (j == i || !l[j] || l[j]->format != l[i]->format)
          continue;
        if (memcmp (l[j]->id, l[i]->parent_id, 16) == 0 ||
            (memcmp (l[i]->parent_id2, zero, 16) != 0 &&
             memcmp (l[j]->id, l[i]->parent_id2, 16) == 0))
          if (!(p->parent = strdup (vm->points[j].id)))
            err = -ENOMEM;
      }
    if (!err && p->disks[0].file && !p->disks[0].problem)
      err = disk_tip (x, p, &p->disks[0], TIP_FILE);
  }
  for (size_t i = 0; i < x->disks.n; i++)
    if (l[i])
      layer_close (l[i]);
  free (l);
  return err;
}

/* --- the VM's configurations ------------------------------------------- */

static bool
conf_matches (const struct conf *c, const char *sel)
{
  const char *name = cfg_text (conf_root (c), "properties/name");
  char g[GUID_TEXT_LEN + 1];

  if (find_guid (sel, g) && strcmp (g, c->guid) == 0)
    return true;
  return name && strcmp (name, sel) == 0;
}

/* Read configurations; 0 with the points filled, or 1 if there are none. */
static int
config_tree (struct ctx *x, const char *given)
{
  struct vm *vm = x->vm;
  struct conf *vms = NULL, *snaps = NULL, *mine = NULL;
  size_t nv = 0, ns = 0, np;
  int err = 0;

  if (!(vms = calloc (x->vmconfs.n + 1, sizeof *vms)) ||
      !(snaps = calloc (x->snapconfs.n + 1, sizeof *snaps))) {
    err = -ENOMEM;
    goto out;
  }
  for (size_t i = 0; !err && i < x->vmconfs.n; i++)
    if ((err = load_conf (x->vmconfs.v[i], &vms[nv])) == 0)
      nv++;
    else if (err == 1) {
      conf_free (&vms[nv]);
      err = 0;
    }
  for (size_t i = 0; !err && i < x->snapconfs.n; i++)
    if ((err = load_conf (x->snapconfs.v[i], &snaps[ns])) == 0)
      ns++;
    else if (err == 1) {
      conf_free (&snaps[ns]);
      err = 0;
    }
  if (err)
    goto out;
  if (nv == 0 && ns == 0) {
    err = 1;
    goto out;
  }

  /* Which VM: the file given, the one selected, or the only one. */
  for (size_t i = 0; i < nv; i++)
    if ((given && strcmp (vms[i].path, given) == 0) ||
        (!given && x->o->select && conf_matches (&vms[i], x->o->select)))
      mine = &vms[i];
  if (!mine && x->o->select && nv) {
    err = vc_error (ENOENT, "%s: no virtual machine '%s' in this folder",
                    vm->folder, x->o->select);
    goto out;
  }
  if (!mine && nv > 1) {
    char list[512] = "";
    for (size_t i = 0; i < nv; i++) {
      const char *n = cfg_text (conf_root (&vms[i]), "properties/name");
      size_t l = strlen (list);
      snprintf (list + l, sizeof list - l, "%s%s (%s)", i ? ", " : "",
                n ? n : "?", vms[i].guid[0] ? vms[i].guid : "no GUID");
    }
    err = vc_error (EINVAL, "%s: holds %zu virtual machines: %s; choose one "
                    "by name or GUID", vm->folder, nv, list);
    goto out;
  }
  if (!mine && nv == 1)
    mine = &vms[0];

  if (mine) {
    const char *n = cfg_text (conf_root (mine), "properties/name");
    if ((n && *n && (free (vm->name), !(vm->name = strdup (n)))) ||
        (mine->guid[0] && !(vm->guid = strdup (mine->guid))) ||
        !(vm->config = strdup (mine->path))) {
      err = -ENOMEM;
      goto out;
    }
    vm->source = mine->fmt == CFG_VMCX ? VM_SOURCE_VMCX : VM_SOURCE_XML;
  }
  else
    vm->source = snaps[0].fmt == CFG_VMCX ? VM_SOURCE_VMCX : VM_SOURCE_XML;

  if (!(vm->points = calloc (ns + 1, sizeof *vm->points)) ||
      !(x->declared = calloc (ns + 1, sizeof *x->declared))) {
    err = -ENOMEM;
    goto out;
  }
  for (size_t i = 0; !err && i < ns; i++) {
    /* With several VMs in the folder, keep only this VM's checkpoints. */
    if (nv > 1 && mine && mine->guid[0] && snaps[i].logical[0] &&
        strcmp (snaps[i].logical, mine->guid) != 0)
      continue;
    np = vm->nr_points++;
    err = point_from_conf (x, &snaps[i], false, &vm->points[np],
                           &x->declared[np]);
  }
  if (!err && mine) {
    np = vm->nr_points++;
    err = point_from_conf (x, mine, true, &vm->points[np], &x->declared[np]);
  }
  /* Two configurations with one id (a renamed or copied file): the later
   * one is known by its file name instead. */
  for (size_t i = 0; !err && i < vm->nr_points; i++)
    for (size_t j = 0; !err && j < i; j++)
      if (strcasecmp (vm->points[i].id, vm->points[j].id) == 0) {
        struct vm_point *p = vm->points[i].current ? &vm->points[j]
                                                   : &vm->points[i];
        vc_debug ("%s and %s both say checkpoint %s", vm->points[j].config,
                  vm->points[i].config, p->id);
        free (p->id);
        if (!(p->id = strdup (base_name (p->config))))
          err = -ENOMEM;
        else if (strcasecmp (vm->points[i].id, vm->points[j].id) == 0)
          err = vc_error (EINVAL, "%s and %s: two configurations of "
                          "checkpoint %s", vm->points[j].config,
                          vm->points[i].config, p->id);
      }

  /* Disks: resolve every recorded path (Now first: the post-checkpoint
   * test needs Now's files), then the tips and chains. */
  for (int pass = 0; !err && pass < 2; pass++)
    for (size_t i = 0; !err && i < vm->nr_points; i++) {
      struct vm_point *p = &vm->points[i];
      if (p->current != (pass == 0))
        continue;
      for (size_t k = 0; !err && k < p->nr_disks; k++)
        err = resolve_recorded (x, p->config, &p->disks[k]);
    }
  for (size_t i = 0; !err && i < vm->nr_points; i++)
    for (size_t k = 0; !err && k < vm->points[i].nr_disks; k++)
      if (vm->points[i].disks[k].file)
        err = disk_tip (x, &vm->points[i], &vm->points[i].disks[k],
                        TIP_RECORDED);
  if (!err)
    err = link_points (x);

 out:
  for (size_t i = 0; vms && i < nv; i++)
    conf_free (&vms[i]);
  for (size_t i = 0; snaps && i < ns; i++)
    conf_free (&snaps[i]);
  free (vms);
  free (snaps);
  return err;
}

/* --- ordering ---------------------------------------------------------- */

static int
cmp_point (const void *a, const void *b, void *opaque)
{
  const struct vm *vm = opaque;
  const struct vm_point *p = &vm->points[*(const size_t *) a];
  const struct vm_point *q = &vm->points[*(const size_t *) b];
  int64_t tp = p->created < 0 ? INT64_MAX : p->created;
  int64_t tq = q->created < 0 ? INT64_MAX : q->created;
  int c;

  if (p->current != q->current)
    return p->current ? 1 : -1;
  if (tp != tq)
    return tp < tq ? -1 : 1;
  if ((c = strcmp (p->name, q->name)) != 0)
    return c;
  return strcmp (p->id, q->id);
}

static ssize_t
index_of (const struct vm *vm, const char *id)
{
  for (size_t i = 0; id && i < vm->nr_points; i++)
    if (strcasecmp (vm->points[i].id, id) == 0)
      return i;
  return -1;
}

/* Parents before children, siblings sorted; parent loops and dangling
 * parents are cut (the point becomes a root). */
static int
order_points (struct vm *vm)
{
  size_t n = vm->nr_points, out = 0, *idx, *stack, sp = 0;
  struct vm_point *sorted;
  ssize_t *par;
  bool *done;

  if (n == 0)
    return 0;
  idx = calloc (n, sizeof *idx);
  stack = calloc (n, sizeof *stack);
  par = calloc (n, sizeof *par);
  done = calloc (n, sizeof *done);
  sorted = calloc (n, sizeof *sorted);
  if (!idx || !stack || !par || !done || !sorted) {
    free (idx); free (stack); free (par); free (done); free (sorted);
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++)
    par[i] = index_of (vm, vm->points[i].parent);
  for (size_t i = 0; i < n; i++) {
    ssize_t p = par[i];
    size_t steps = 0;
    while (p >= 0 && (size_t) p != i && steps++ < n)
      p = par[p];
    if (p >= 0 || (vm->points[i].parent && par[i] < 0)) {
      vc_debug ("%s: parent %s %s: taken as a root", vm->points[i].id,
                vm->points[i].parent, p >= 0 ? "makes a loop" : "is unknown");
      free (vm->points[i].parent);
      vm->points[i].parent = NULL;
      par[i] = -1;
    }
  }
  for (size_t i = 0; i < n; i++)
    idx[i] = i;
  qsort_r (idx, n, sizeof *idx, cmp_point, vm);
  /* Depth first: push roots (reversed, so the first pops first). */
  for (size_t k = n; k-- > 0;)
    if (par[idx[k]] < 0)
      stack[sp++] = idx[k];
  while (sp) {
    size_t i = stack[--sp];
    if (done[i])
      continue;
    done[i] = true;
    sorted[out++] = vm->points[i];
    for (size_t k = n; k-- > 0;)
      if (par[idx[k]] == (ssize_t) i && !done[idx[k]] && sp < n)
        stack[sp++] = idx[k];
  }
  for (size_t i = 0; i < n; i++)        /* unreachable: cannot happen */
    if (!done[i])
      sorted[out++] = vm->points[i];
  free (vm->points);
  vm->points = sorted;
  free (idx); free (stack); free (par); free (done);
  return 0;
}

/* --- public ------------------------------------------------------------ */

static void
disk_free (struct vm_disk *d)
{
  free (d->location);
  free (d->recorded);
  free (d->file);
  free (d->tip);
  for (size_t i = 0; i < d->depth; i++)
    free (d->chain[i]);
  free (d->chain);
  free (d->problem);
}

void
vm_free (struct vm *vm)
{
  if (!vm)
    return;
  for (size_t i = 0; i < vm->nr_points; i++) {
    struct vm_point *p = &vm->points[i];
    for (size_t k = 0; k < p->nr_disks; k++)
      disk_free (&p->disks[k]);
    free (p->disks);
    free (p->id);
    free (p->name);
    free (p->notes);
    free (p->parent);
    free (p->config);
    free (p->problem);
  }
  free (vm->points);
  for (size_t i = 0; i < vm->nr_search; i++)
    free (vm->search[i]);
  free (vm->search);
  free (vm->folder);
  free (vm->name);
  free (vm->guid);
  free (vm->config);
  free (vm);
}

/* Where the VM folder is for a path given by the user. */
static int
find_folder (const char *path, char **folder, char **given)
{
  char *real = realpath (path, NULL), *slash;
  struct stat st;

  *folder = *given = NULL;
  if (!real)
    return vc_error (errno, "%s: %m", path);
  if (stat (real, &st) == -1) {
    int e = errno;
    free (real);
    return vc_error (e, "%s: %m", path);
  }
  if (S_ISREG (st.st_mode)) {
    if (!has_ext (real, config_exts)) {
      free (real);
      return vc_error (EINVAL, "%s: neither a VM folder nor a configuration "
                       "file (.xml, .vmcx)", path);
    }
    *given = real;
    if (!(real = strdup (real)))
      return -ENOMEM;
    slash = strrchr (real, '/');
    slash[slash == real] = '\0';
  }
  else if (!S_ISDIR (st.st_mode)) {
    free (real);
    return vc_error (EINVAL, "%s: not a folder", path);
  }
  /* .../VM/Virtual Machines: the VM folder is above. */
  slash = strrchr (real, '/');
  if (*given && slash && strcasecmp (slash + 1, "Snapshots") == 0) {
    free (real);
    free (*given);
    *given = NULL;
    return vc_error (EINVAL, "%s: a checkpoint's configuration: give the VM "
                     "folder, or the VM's own configuration file", path);
  }
  if (slash && slash != real &&
      strcasecmp (slash + 1, "Virtual Machines") == 0)
    *slash = '\0';
  *folder = real;
  return 0;
}

int
vm_open (const char *path, const struct vm_opts *o, struct vm **out)
{
  struct ctx x = { .o = o };
  char *given = NULL;
  int err;

  *out = NULL;
  if (!(x.vm = calloc (1, sizeof *x.vm)))
    return vc_error (ENOMEM, "%s: out of memory", path);
  if ((err = find_folder (path, &x.vm->folder, &given)) < 0)
    goto out;
  if (!(x.vm->name = strdup (base_name (x.vm->folder)))) {
    err = -ENOMEM;
    goto out;
  }
  if ((err = scan (&x, x.vm->folder, 0, "")) < 0)
    goto out;
  if (given) {
    bool listed = false;
    for (size_t i = 0; i < x.vmconfs.n; i++)
      listed |= strcmp (x.vmconfs.v[i], given) == 0;
    if (!listed && (err = strv_add (&x.vmconfs, strdup (given))) < 0)
      goto out;
  }
  if ((err = setup_search (&x)) < 0)
    goto out;
  err = o->linkage_only ? 1 : config_tree (&x, given);
  if (err == 1) {
    x.vm->source = VM_SOURCE_LINKAGE;
    err = linkage_tree (&x);
  }
  if (!err)
    err = order_points (x.vm);
  for (size_t i = 0; !err && i < x.vm->nr_points; i++) {
    struct vm_point *p = &x.vm->points[i];
    p->available = p->nr_disks > 0;
    for (size_t k = 0; k < p->nr_disks; k++) {
      struct vm_disk *d = &p->disks[k];
      if (!d->tip || d->problem)
        p->available = false;
      if (d->problem && !p->problem && !(p->problem = strdup (d->problem)))
        err = -ENOMEM;
    }
    if (!err && p->nr_disks == 0)
      err = set_problem (&p->problem, "no virtual hard disk in %s",
                         p->config ? p->config : "its configuration");
  }

 out:
  if (x.declared)
    for (size_t i = 0; i < x.vm->nr_points; i++)
      free (x.declared[i]);
  free (x.declared);
  if (x.have_r)
    resolver_free (&x.r);
  strv_free (&x.search);
  strv_free (&x.disks);
  strv_free (&x.vmconfs);
  strv_free (&x.snapconfs);
  strv_free (&x.dirs);
  free (given);
  if (err == -ENOMEM)
    vc_error (ENOMEM, "%s: out of memory", path);
  if (err) {
    vm_free (x.vm);
    return err;
  }
  *out = x.vm;
  return 0;
}

const struct vm_point *
vm_find (const struct vm *vm, const char *key)
{
  const struct vm_point *hit = NULL;
  char g[GUID_TEXT_LEN + 1];
  size_t n = 0;

  for (size_t i = 0; i < vm->nr_points; i++)
    if (strcasecmp (vm->points[i].id, key) == 0)
      return &vm->points[i];
  if (stem_guid (key, g) || (strlen (key) == GUID_TEXT_LEN + 2 &&
                             find_guid (key, g)))
    for (size_t i = 0; i < vm->nr_points; i++)
      if (strcmp (vm->points[i].id, g) == 0)
        return &vm->points[i];
  for (int ci = 0; ci < 2 && n == 0; ci++)
    for (size_t i = 0; i < vm->nr_points; i++)
      if (ci ? strcasecmp (vm->points[i].name, key) == 0
          : strcmp (vm->points[i].name, key) == 0) {
        hit = &vm->points[i];
        n++;
      }
  if (n > 1) {
    vc_error (EINVAL, "%s: %zu checkpoints are named '%s': choose by GUID",
              vm->folder, n, key);
    return NULL;
  }
  if (n == 0)
    vc_error (ENOENT, "%s: no checkpoint '%s'", vm->folder, key);
  return hit;
}

int
vm_chain_open (const struct vm *vm, const struct vm_disk *d,
               const struct chain_opts *o, struct chain **out)
{
  struct chain_opts co = *o;
  char **s;
  int err;

  *out = NULL;
  if (!d->tip)
    return vc_error (ENOENT, "%s", d->problem ? d->problem
                     : "the disk is unavailable");
  if (!(s = calloc (o->nr_search + vm->nr_search + 1, sizeof *s)))
    return vc_error (ENOMEM, "%s: out of memory", d->tip);
  if (o->nr_search)             /* o->search may be NULL then */
    memcpy (s, o->search, o->nr_search * sizeof *s);
  memcpy (s + o->nr_search, vm->search, vm->nr_search * sizeof *s);
  co.search = s;
  co.nr_search = o->nr_search + vm->nr_search;
  err = chain_open (d->tip, &co, out);
  free (s);
  return err;
}

const char *
vm_source_name (enum vm_source s)
{
  switch (s) {
  case VM_SOURCE_XML: return "xml";
  case VM_SOURCE_VMCX: return "vmcx";
  case VM_SOURCE_LINKAGE: return "linkage";
  }
  return "?";
}

const char *
vm_tip_rule_name (enum vm_tip_rule r)
{
  switch (r) {
  case TIP_NONE: return "none";
  case TIP_RECORDED: return "recorded";
  case TIP_PARENT_NAMED: return "parent-of-recorded-named-after-checkpoint";
  case TIP_PARENT_CURRENT: return "parent-of-recorded-current-disk";
  case TIP_FILE: return "file";
  }
  return "?";
}

/* --- JSON -------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, 0 if invalid. */
static size_t
utf8_len (const unsigned char *s)
{
  size_t n;
  uint32_t c;

  if (s[0] < 0x80) return 1;
  if ((s[0] & 0xE0) == 0xC0) n = 2, c = s[0] & 0x1F;
  else if ((s[0] & 0xF0) == 0xE0) n = 3, c = s[0] & 0x0F;
  else if ((s[0] & 0xF8) == 0xF0) n = 4, c = s[0] & 0x07;
  else return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80)
      return 0;
    c = c << 6 | (s[i] & 0x3F);
  }
  if ((n == 2 && c < 0x80) || (n == 3 && c < 0x800) ||
      (n == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
      (c >= 0xD800 && c < 0xE000))
    return 0;
  return n;
}

static void
json_str (FILE *f, const char *s)
{
  if (!s) {
    fputs ("null", f);
    return;
  }
  fputc ('"', f);
  for (const unsigned char *p = (const unsigned char *) s; *p;) {
    size_t n;
    if (*p == '"' || *p == '\\')
      fprintf (f, "\\%c", *p++);
    else if (*p < 0x20)
      fprintf (f, "\\u%04x", *p++);
    else if ((n = utf8_len (p)) == 0) {
      fputs ("\\ufffd", f);
      p++;
    }
    else {
      fwrite (p, 1, n, f);
      p += n;
    }
  }
  fputc ('"', f);
}

void
vm_write_json (FILE *f, const struct vm *vm)
{
  fputs ("{\"folder\": ", f);
  json_str (f, vm->folder);
  fputs (", \"name\": ", f);
  json_str (f, vm->name);
  fputs (", \"guid\": ", f);
  json_str (f, vm->guid);
  fputs (", \"config\": ", f);
  json_str (f, vm->config);
  fprintf (f, ", \"source\": \"%s\", \"points\": [", vm_source_name (vm->source));
  for (size_t i = 0; i < vm->nr_points; i++) {
    const struct vm_point *p = &vm->points[i];
    fprintf (f, "%s\n  {\"id\": ", i ? "," : "");
    json_str (f, p->id);
    fputs (", \"name\": ", f);
    json_str (f, p->name);
    fputs (", \"parent\": ", f);
    json_str (f, p->parent);
    fputs (", \"notes\": ", f);
    json_str (f, p->notes);
    if (p->created >= 0) {
      char buf[32];
      time_t t = p->created;
      struct tm tm;
      gmtime_r (&t, &tm);
      strftime (buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
      fprintf (f, ", \"created\": %" PRId64 ", \"created_utc\": \"%s\"",
               p->created, buf);
    }
    else
      fputs (", \"created\": null, \"created_utc\": null", f);
    fprintf (f, ", \"current\": %s, \"parent_from_config\": %s, "
             "\"available\": %s, \"config\": ", p->current ? "true" : "false",
             p->parent_from_config ? "true" : "false",
             p->available ? "true" : "false");
    json_str (f, p->config);
    fputs (", \"problem\": ", f);
    json_str (f, p->problem);
    fputs (", \"disks\": [", f);
    for (size_t k = 0; k < p->nr_disks; k++) {
      const struct vm_disk *d = &p->disks[k];
      fputs (k ? ",\n    {\"location\": " : "\n    {\"location\": ", f);
      json_str (f, d->location);
      fputs (", \"recorded\": ", f);
      json_str (f, d->recorded);
      fputs (", \"file\": ", f);
      json_str (f, d->file);
      fputs (", \"tip\": ", f);
      json_str (f, d->tip);
      fprintf (f, ", \"tip_rule\": \"%s\", \"size\": %" PRIu64
               ", \"problem\": ", vm_tip_rule_name (d->tip_rule), d->size);
      json_str (f, d->problem);
      fputs (", \"chain\": [", f);
      for (size_t c = 0; c < d->depth; c++) {
        if (c)
          fputs (", ", f);
        json_str (f, d->chain[c]);
      }
      fputs ("]}", f);
    }
    fputs ("]}", f);
  }
  fputs ("]}\n", f);
}
