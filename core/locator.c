/* vhdchain core: parent locators are hostile input (FORMATS.md pitfall 18).
 *
 * A candidate is first built as text, in the documented order, from the
 * child's hints; nothing is opened then.  locator_open() canonicalises a
 * candidate (realpath, with a per-component case-insensitive fallback for
 * the case drift Windows paths have), checks that the result lies inside one
 * of the allowed roots, and opens it relative to that root with openat2
 * RESOLVE_BENEATH, so a symlink swapped in between the check and the open
 * still cannot lead outside.  Where openat2 is missing (old kernels, seccomp)
 * O_NOFOLLOW on the canonical path is the fallback.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/openat2.h>

#include "error.h"
#include "locator.h"

#define MAX_COMPONENTS 64
#define MAX_SUBDIRS    1024     /* Snapshots/<guid> folders searched */

/* --- resolver -------------------------------------------------------- */

static int
push (char ***v, size_t *n, char *s)
{
  char **nv;

  if (!s)
    return -ENOMEM;
  for (size_t i = 0; i < *n; i++)
    if (strcmp ((*v)[i], s) == 0) {
      free (s);
      return 0;
    }
  if (!(nv = realloc (*v, (*n + 1) * sizeof *nv))) {
    free (s);
    return -ENOMEM;
  }
  *v = nv;
  nv[(*n)++] = s;
  return 0;
}

static char *
path_join (const char *a, const char *b)
{
  char *s;

  if (asprintf (&s, "%s%s%s", a, a[0] && a[strlen (a) - 1] == '/' ? "" : "/",
                b) == -1)
    return NULL;
  return s;
}

/* Find a subfolder by case-insensitive name; NULL if there is none. */
static char *
find_ci (const char *dir, const char *name)
{
  DIR *d = opendir (dir);
  struct dirent *e;
  char *r = NULL;

  if (!d)
    return NULL;
  while (!r && (e = readdir (d)) != NULL)
    if (strcasecmp (e->d_name, name) == 0)
      r = path_join (dir, e->d_name);
  closedir (d);
  return r;
}

/* Snapshots/ itself and each Snapshots/<guid>/ (Hyper-V 2008 layout). */
static int
add_snapshot_folders (struct resolver *r, char *snapdir)
{
  DIR *d = opendir (snapdir);
  struct dirent *e;
  size_t n = 0;
  int err = push (&r->search, &r->nr_search, snapdir);

  while (!err && d && n < MAX_SUBDIRS && (e = readdir (d)) != NULL) {
    if (e->d_name[0] == '.' || e->d_type != DT_DIR)
      continue;
    err = push (&r->search, &r->nr_search, path_join (snapdir, e->d_name));
    n++;
  }
  if (d)
    closedir (d);
  return err;
}

/* A Hyper-V VM folder holds "Virtual Hard Disks" and "Snapshots"; a tip in
 * either (at any depth) makes the folder above them a root, and its disk
 * folders search folders, so an intact VM folder copied here just works. */
static int
add_vm_folder (struct resolver *r, const char *tipdir)
{
  char *dir = strdup (tipdir), *slash, *sub;
  int err = 0;

  if (!dir)
    return -ENOMEM;
  while ((slash = strrchr (dir, '/')) != NULL && slash != dir) {
    if (strcasecmp (slash + 1, "Snapshots") == 0 ||
        strcasecmp (slash + 1, "Virtual Hard Disks") == 0) {
      *slash = '\0';
      err = push (&r->roots, &r->nr_roots, strdup (dir));
      if (!err && (sub = find_ci (dir, "Virtual Hard Disks")))
        err = push (&r->search, &r->nr_search, sub);
      if (!err && (sub = find_ci (dir, "Snapshots")))
        err = add_snapshot_folders (r, sub);
      break;
    }
    *slash = '\0';
  }
  free (dir);
  return err;
}

static int
add_canonical (char ***v, size_t *n, const char *path, const char *what)
{
  char *real = realpath (path, NULL);

  if (!real)
    return vc_error (errno, "%s: %s: %m", path, what);
  return push (v, n, real);
}

int
resolver_init (struct resolver *r, const char *tip, char **search,
               size_t nr_search, const struct drive_map *drives,
               size_t nr_drives, bool confine)
{
  char *real = realpath (tip, NULL), *slash;
  int err;

  memset (r, 0, sizeof *r);
  r->confine = confine;
  if (!real)
    return vc_error (errno, "%s: %m", tip);
  slash = strrchr (real, '/');
  *slash = '\0';
  err = push (&r->roots, &r->nr_roots, strdup (slash == real ? "/" : real));
  if (!err)
    err = add_vm_folder (r, real);
  free (real);
  for (size_t i = 0; !err && i < nr_search; i++) {
    if ((err = add_canonical (&r->search, &r->nr_search, search[i],
                              "search folder")) == 0)
      err = push (&r->roots, &r->nr_roots,
                  strdup (r->search[r->nr_search - 1]));
  }
  if (!err && nr_drives &&
      !(r->drives = calloc (nr_drives, sizeof *r->drives)))
    err = -ENOMEM;
  for (size_t i = 0; !err && i < nr_drives; i++) {
    r->drives[i].letter = toupper ((unsigned char) drives[i].letter);
    if (!(r->drives[i].path = realpath (drives[i].path, NULL)))
      err = vc_error (errno, "%s: drive map for %c: %m", drives[i].path,
                      drives[i].letter);
    else
      err = push (&r->roots, &r->nr_roots, strdup (r->drives[i].path));
    r->nr_drives++;
  }
  if (err == -ENOMEM)
    vc_error (ENOMEM, "%s: out of memory", tip);
  return err;
}

void
resolver_free (struct resolver *r)
{
  for (size_t i = 0; i < r->nr_roots; i++)
    free (r->roots[i]);
  for (size_t i = 0; i < r->nr_search; i++)
    free (r->search[i]);
  for (size_t i = 0; i < r->nr_drives; i++)
    free (r->drives[i].path);
  free (r->roots);
  free (r->search);
  free (r->drives);
  memset (r, 0, sizeof *r);
}

/* --- Windows paths --------------------------------------------------- */

/* Backslashes to slashes, runs of separators folded, leading ".\" gone.
 * ".." stays: confinement, not text surgery, keeps it inside. */
char *
win_to_unix (const char *win)
{
  char *s = malloc (strlen (win) + 1), *o = s;

  if (!s)
    return NULL;
  for (const char *p = win; *p; p++) {
    char c = *p == '\\' ? '/' : *p;
    if (c == '/' && o > s && o[-1] == '/')
      continue;
    *o++ = c;
  }
  *o = '\0';
  while (strncmp (s, "./", 2) == 0)
    memmove (s, s + 2, strlen (s + 2) + 1);
  return s;
}

/* Split "C:\a\b", "\\?\C:\a\b", "\\?\Volume{..}\a\b", "\\srv\share\a" into
 * a drive letter (0 if none) and the path below it ("a/b"). */
static char *
split_absolute (const char *win, char *letter)
{
  const char *p = win;

  *letter = 0;
  if (strncmp (p, "\\\\?\\", 4) == 0 || strncmp (p, "//?/", 4) == 0)
    p += 4;
  if (isalpha ((unsigned char) p[0]) && p[1] == ':') {
    *letter = toupper ((unsigned char) p[0]);
    p += 2;
  }
  else if (strncasecmp (p, "Volume{", 7) == 0 && strchr (p, '}'))
    p = strchr (p, '}') + 1;
  else if (strncasecmp (p, "UNC\\", 4) == 0 || strncmp (win, "\\\\", 2) == 0)
    return NULL;                /* UNC: only a user mapping could say where */
  while (*p == '\\' || *p == '/')
    p++;
  return win_to_unix (p);
}

static const char *
base_name (const char *unixpath)
{
  const char *s = strrchr (unixpath, '/');
  return s ? s + 1 : unixpath;
}

/* --- candidates ------------------------------------------------------ */

static int
cand_add (struct candidates *c, char *path, const struct parent_hint *h,
          const char *via)
{
  char *why = NULL;
  char **np, **nw;

  if (!path)
    return -ENOMEM;
  for (size_t i = 0; i < c->n; i++)
    if (strcmp (c->path[i], path) == 0) {
      free (path);
      return 0;
    }
  if (asprintf (&why, "%s '%s'%s", hint_kind_name (h->kind), h->path,
                via) == -1 ||
      !(np = realloc (c->path, (c->n + 1) * sizeof *np))) {
    free (why);
    free (path);
    return -ENOMEM;
  }
  c->path = np;
  if (!(nw = realloc (c->why, (c->n + 1) * sizeof *nw))) {
    free (why);
    free (path);
    return -ENOMEM;
  }
  c->why = nw;
  c->path[c->n] = path;
  c->why[c->n++] = why;
  return 0;
}

/* "file:///a%20b" -> "/a b" (MacX locators). */
static char *
url_to_path (const char *url)
{
  const char *p;
  char *s, *o;

  if (strncmp (url, "file://localhost/", 17) == 0)
    p = url + 16;
  else if (strncmp (url, "file:///", 8) == 0)
    p = url + 7;
  else
    return NULL;
  if (!(s = o = malloc (strlen (p) + 1)))
    return NULL;
  for (; *p; p++) {
    unsigned v;
    if (*p == '%' && sscanf (p + 1, "%2x", &v) == 1 && v != 0 &&
        isxdigit ((unsigned char) p[1]) && isxdigit ((unsigned char) p[2])) {
      *o++ = v;
      p += 2;
    }
    else
      *o++ = *p;
  }
  *o = '\0';
  return s;
}

static bool
looks_absolute (const char *w)
{
  return (isalpha ((unsigned char) w[0]) && w[1] == ':') ||
         w[0] == '\\' || w[0] == '/';
}

static const char *
drive_path (const struct resolver *r, char letter)
{
  for (size_t i = 0; i < r->nr_drives; i++)
    if (r->drives[i].letter == letter)
      return r->drives[i].path;
  return NULL;
}

/* Steps 1-5: each hint read as what it says it is. */
static int
direct_candidate (const struct resolver *r, const char *childdir,
                  const struct parent_hint *h, struct candidates *c)
{
  const char *drv;
  char letter, *rest;
  int err = 0;

  if (h->kind == HINT_URL)
    return (rest = url_to_path (h->path)) ? cand_add (c, rest, h, "") : 0;
  if (h->kind == HINT_RELATIVE ||
      (h->kind == HINT_NAME && !looks_absolute (h->path))) {
    if (!(rest = win_to_unix (h->path)))
      return -ENOMEM;
    if (rest[0] != '/')
      err = cand_add (c, path_join (childdir, rest), h,
                      " from the child's folder");
    free (rest);
    return err;
  }
  rest = split_absolute (h->path, &letter);
  if (rest && letter && (drv = drive_path (r, letter)))
    err = cand_add (c, path_join (drv, rest), h, " through the drive map");
  free (rest);
  return err;
}

/* Step 6 and 7: base names in the child's and the search folders, then the
 * path's trailing components under each root ("VM/Virtual Hard Disks/x"). */
static int
search_candidates (const struct resolver *r, const char *childdir,
                   const struct parent_hint *h, struct candidates *c)
{
  char letter, *rel, *comp[MAX_COMPONENTS];
  size_t n = 0;
  int err;

  rel = h->kind == HINT_URL ? url_to_path (h->path)
        : looks_absolute (h->path) ? split_absolute (h->path, &letter)
        : win_to_unix (h->path);
  if (!rel)
    return 0;
  err = cand_add (c, path_join (childdir, base_name (rel)), h,
                  ": its name in the child's folder");
  for (size_t i = 0; !err && i < r->nr_search; i++)
    err = cand_add (c, path_join (r->search[i], base_name (rel)), h,
                    ": its name in a search folder");

  for (char *t = strtok (rel, "/"); t && n < MAX_COMPONENTS;
       t = strtok (NULL, "/"))
    if (strcmp (t, "..") == 0 || strcmp (t, ".") == 0)
      n = 0;                    /* a suffix never climbs */
    else
      comp[n++] = t;
  for (size_t i = 0; !err && i < r->nr_roots; i++)
    for (size_t k = n; !err && k >= 2; k--) {
      char *path = strdup (r->roots[i]);
      for (size_t j = n - k; path && j < n; j++) {
        char *p2 = path_join (path, comp[j]);
        free (path);
        path = p2;
      }
      err = cand_add (c, path, h, ": its trailing components under a root");
    }
  free (rel);
  return err;
}

int
locator_candidates (const struct resolver *r, const struct layer *child,
                    struct candidates *c)
{
  char *childdir = realpath (child->path, NULL), *slash;
  int err = 0;

  memset (c, 0, sizeof *c);
  if (!childdir)
    return vc_error (errno, "%s: %m", child->path);
  slash = strrchr (childdir, '/');
  slash[slash == childdir] = '\0';
  for (int kind = HINT_RELATIVE; kind <= HINT_NAME; kind++)
    for (size_t i = 0; !err && i < child->nr_hints; i++)
      if ((int) child->hints[i].kind == kind)
        err = direct_candidate (r, childdir, &child->hints[i], c);
  for (size_t i = 0; !err && i < child->nr_hints; i++)
    err = search_candidates (r, childdir, &child->hints[i], c);
  free (childdir);
  if (err)
    return vc_error (-err, "%s: building parent candidates: %s",
                     child->path, strerror (-err));
  return 0;
}

void
candidates_free (struct candidates *c)
{
  for (size_t i = 0; i < c->n; i++) {
    free (c->path[i]);
    free (c->why[i]);
  }
  free (c->path);
  free (c->why);
  memset (c, 0, sizeof *c);
}

/* --- opening --------------------------------------------------------- */

static const char *root_of (const struct resolver *, const char *real);

/* May the case-insensitive fallback list dir?  Confined, only an allowed
 * folder or one below it: a hostile path ("..\..\ETC\x") must not make
 * us read any other folder. */
static bool
listable (const struct resolver *r, const char *dir)
{
  char *real;
  bool ok = !r->confine;

  if (!ok && (real = realpath (dir, NULL)) != NULL) {
    ok = root_of (r, real) != NULL;
    for (size_t i = 0; !ok && i < r->nr_roots; i++)
      ok = strcmp (r->roots[i], real) == 0;
    free (real);
  }
  return ok;
}

/* realpath, falling back to case-insensitive matching component by
 * component: copied Hyper-V folders drift ("Virtual hard disks"). */
static char *
resolve_path (const struct resolver *r, const char *path)
{
  char *real = realpath (path, NULL), *copy, *cur, *t, *save;

  if (real || errno != ENOENT || path[0] != '/')
    return real;
  if (!(copy = strdup (path)) || !(cur = strdup ("/"))) {
    free (copy);
    return NULL;
  }
  for (t = strtok_r (copy, "/", &save); t && cur;
       t = strtok_r (NULL, "/", &save)) {
    char *next = path_join (cur, t);
    struct stat st;
    if (next && lstat (next, &st) == -1 && errno == ENOENT) {
      free (next);
      next = listable (r, cur) ? find_ci (cur, t) : NULL;
    }
    free (cur);
    cur = next;
  }
  free (copy);
  if (!cur) {
    errno = ENOENT;
    return NULL;
  }
  real = realpath (cur, NULL);
  free (cur);
  return real;
}

static const char *
root_of (const struct resolver *r, const char *real)
{
  for (size_t i = 0; i < r->nr_roots; i++) {
    size_t n = strlen (r->roots[i]);
    if (strcmp (r->roots[i], "/") == 0 ||
        (strncmp (real, r->roots[i], n) == 0 && real[n] == '/'))
      return r->roots[i];
  }
  return NULL;
}

static int
open_beneath (const char *root, const char *real)
{
  const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  struct open_how how = {
    .flags = flags,
    .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
  };
  int dfd, fd;

  if (root) {
    if ((dfd = open (root, O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1)
      return -errno;
    fd = syscall (SYS_openat2, dfd, real + strlen (root) + (root[1] != 0),
                  &how, sizeof how);
    close (dfd);
    if (fd >= 0)
      return fd;
    if (errno != ENOSYS && errno != EPERM && errno != EINVAL)
      return -errno;
  }
  fd = open (real, flags | O_NOFOLLOW);
  return fd >= 0 ? fd : -errno;
}

int
locator_open (const struct resolver *r, const char *path, char **realp)
{
  char *real = resolve_path (r, path);
  const char *root;
  int fd;

  *realp = NULL;
  if (!real)
    return -errno;
  root = root_of (r, real);
  if (!root && r->confine) {
    *realp = real;
    return -EPERM;
  }
  fd = open_beneath (root, real);
  if (fd < 0)
    free (real);
  else
    *realp = real;
  return fd;
}
