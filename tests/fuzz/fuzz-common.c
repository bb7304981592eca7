/* vhdchain fuzz targets: the shared part (see fuzz.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "error.h"
#include "fuzz.h"
#include "io.h"
#include "overlay.h"

#ifndef FUZZ_FIXTURES
#define FUZZ_FIXTURES "tests/fuzz/work/fixtures"
#endif

static char root[PATH_MAX];
static char *allowed[16];
static size_t nr_allowed;
static char write_ok[PATH_MAX];         /* the only folder written in */

int __real_open (const char *path, int flags, ...);

void
fuzz_fail (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "\n*** vhdchain fuzz property failed: ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  abort ();
}

/* ---- the private folder ---------------------------------------------- */

static const char *copy_from;

static int
copy_one (const char *src, const struct stat *st, int type, struct FTW *f)
{
  char dst[PATH_MAX], buf[65536], link[PATH_MAX];
  ssize_t n;
  int in, out;

  snprintf (dst, sizeof dst, "%s%s", root, src + strlen (copy_from));
  switch (type) {
  case FTW_D:
    if (mkdir (dst, 0755) == -1 && errno != EEXIST)
      fuzz_fail ("mkdir %s: %m", dst);
    return 0;
  case FTW_SL:
  case FTW_SLN:
    if ((n = readlink (src, link, sizeof link - 1)) < 0)
      fuzz_fail ("readlink %s: %m", src);
    link[n] = '\0';
    if (symlink (link, dst) == -1)
      fuzz_fail ("symlink %s: %m", dst);
    return 0;
  case FTW_F:
    if ((in = __real_open (src, O_RDONLY)) < 0 ||
        (out = __real_open (dst, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
      fuzz_fail ("copying %s: %m", src);
    while ((n = read (in, buf, sizeof buf)) > 0) {
      /* Keep zeros as holes: the fixtures are mostly empty disks. */
      bool zero = true;
      for (ssize_t i = 0; i < n && zero; i++)
        zero = buf[i] == 0;
      if (zero ? lseek (out, n, SEEK_CUR) < 0 : write (out, buf, n) != n)
        fuzz_fail ("copying %s: %m", src);
    }
    if (n < 0 || ftruncate (out, st->st_size) == -1)
      fuzz_fail ("copying %s: %m", src);
    close (in);
    close (out);
    return 0;
  default:
    fuzz_fail ("%s: cannot copy (type %d)", src, type);
  }
}

static int
remove_one (const char *p, const struct stat *st, int type, struct FTW *f)
{
  return remove (p) == -1 ? 0 : 0;
}

static void
cleanup (void)
{
  if (root[0])
    nftw (root, remove_one, 32, FTW_DEPTH | FTW_PHYS);
}

/* Private folders of fuzzers that died (libFuzzer leaves on a signal or
 * a crash without running atexit): <tmp>/vhdchain-fuzz-<pid>-XXXXXX whose
 * pid no longer runs. */
static void
remove_stale (const char *tmp)
{
  DIR *d = opendir (tmp);
  struct dirent *e;
  char path[PATH_MAX];
  int pid;

  while (d && (e = readdir (d)) != NULL)
    if (sscanf (e->d_name, "vhdchain-fuzz-%d-", &pid) == 1 && pid > 0 &&
        kill (pid, 0) == -1 && errno == ESRCH) {
      snprintf (path, sizeof path, "%s/%s", tmp, e->d_name);
      nftw (path, remove_one, 32, FTW_DEPTH | FTW_PHYS);
    }
  if (d)
    closedir (d);
}

const char *
fuzz_setup (const char *fixture)
{
  const char *fx = getenv ("VHDCHAIN_FUZZ_FIXTURES");
  const char *tmp = getenv ("VHDCHAIN_FUZZ_TMP");
  char src[PATH_MAX], *real;
  struct stat st;

  if (root[0])
    return root;
  snprintf (src, sizeof src, "%s/%s", fx ? fx : FUZZ_FIXTURES, fixture);
  if (stat (src, &st) == -1 || !S_ISDIR (st.st_mode))
    fuzz_fail ("fixtures missing: %s (run tests/fuzz/mkcorpus.py, or set "
               "VHDCHAIN_FUZZ_FIXTURES)", src);
  if (!tmp)
    tmp = access ("/dev/shm", W_OK) == 0 ? "/dev/shm"
      : getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp";
  remove_stale (tmp);
  snprintf (root, sizeof root, "%s/vhdchain-fuzz-%d-XXXXXX", tmp,
            (int) getpid ());
  if (!mkdtemp (root))
    fuzz_fail ("mkdtemp %s: %m", root);
  if (!(real = realpath (root, NULL)))
    fuzz_fail ("realpath %s: %m", root);
  snprintf (root, sizeof root, "%s", real);
  free (real);
  atexit (cleanup);
  copy_from = src;
  if (nftw (src, copy_one, 32, FTW_PHYS) != 0)
    fuzz_fail ("copying the fixtures from %s failed", src);
  snprintf (write_ok, sizeof write_ok, "%s/tmp", root);
  mkdir (write_ok, 0755);
  io_setup (IO_PREAD);          /* ASan checks pread's buffer; see README */
  return root;
}

const char *
fuzz_path (int slot, const char *rel)
{
  static char buf[4][PATH_MAX];

  snprintf (buf[slot], sizeof buf[slot], "%s/%s", root, rel);
  return buf[slot];
}

void
fuzz_allow (const char *rel)
{
  char *real = realpath (fuzz_path (0, rel), NULL);

  if (!real || nr_allowed == sizeof allowed / sizeof allowed[0])
    fuzz_fail ("allowed folder %s: %m", rel);
  allowed[nr_allowed++] = real;
}

static bool
under (const char *dir, const char *p)
{
  size_t n = strlen (dir);
  return strncmp (p, dir, n) == 0 && (p[n] == '/' || p[n] == '\0');
}

bool
fuzz_allowed (const char *real)
{
  for (size_t i = 0; i < nr_allowed; i++)
    if (under (allowed[i], real))
      return true;
  return false;
}

/* ---- writing the input ----------------------------------------------- */

/* core/ is linked with --wrap=open: every open it makes comes here, and
 * none may write in the private folder (where every chain file is) but in
 * its overlay folder. */
int
__wrap_open (const char *path, int flags, ...)
{
  mode_t mode = 0;
  va_list ap;

  if (flags & (O_CREAT | __O_TMPFILE)) {
    va_start (ap, flags);
    mode = va_arg (ap, int);
    va_end (ap);
  }
  if (((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC))) &&
      root[0] && under (root, path) && !under (write_ok, path))
    fuzz_fail ("core/ opened %s for writing (flags 0%o)", path, flags);
  return __real_open (path, flags, mode);
}

void
fuzz_write_file (const char *path, const uint8_t *data, size_t size)
{
  int fd = __real_open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                        0644);

  if (fd < 0 || (size && write (fd, data, size) != (ssize_t) size))
    fuzz_fail ("writing %s: %m", path);
  close (fd);
}

static uint32_t
le32 (const uint8_t *p)
{
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24;
}

unsigned
fuzz_write_image (const char *path, const uint8_t *data, size_t size)
{
  int fd = __real_open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                        0644);
  unsigned flags = size ? data[0] : 0;
  uint32_t fsize = size >= 5 ? le32 (data + 1) : 0;
  size_t i = 5;

  if (fd < 0)
    fuzz_fail ("writing %s: %m", path);
  if (fsize > FUZZ_MAX_FILE)
    fsize = FUZZ_MAX_FILE;
  if (ftruncate (fd, fsize) == -1)
    fuzz_fail ("ftruncate %s: %m", path);
  while (i + 6 <= size) {
    uint32_t off = le32 (data + i);
    size_t len = data[i + 4] | data[i + 5] << 8;
    i += 6;
    if (len > size - i)
      len = size - i;
    if (off < fsize && len)
      if (pwrite (fd, data + i, len < fsize - off ? len : fsize - off, off)
          < 0)
        fuzz_fail ("pwrite %s: %m", path);
    i += len;
  }
  close (fd);
  return flags;
}

/* ---- serving --------------------------------------------------------- */

struct ext { uint64_t off, len; enum extent_type type; };
struct exts { struct ext e[4096]; size_t n; uint64_t next; };

static int
collect (void *opaque, uint64_t off, uint64_t len, enum extent_type type,
         int layer)
{
  struct exts *x = opaque;

  if (off != x->next || len == 0)
    fuzz_fail ("map_extents: extent at %lu + %lu, expected one at %lu",
               (unsigned long) off, (unsigned long) len,
               (unsigned long) x->next);
  x->next = off + len;
  if (x->n < sizeof x->e / sizeof x->e[0])
    x->e[x->n++] = (struct ext) { off, len, type };
  return 0;
}

static void
check_fd (const struct layer *l, size_t i)
{
  char link[64], real[PATH_MAX];
  ssize_t n;

  snprintf (link, sizeof link, "/proc/self/fd/%d", l->fd);
  if ((n = readlink (link, real, sizeof real - 1)) < 0)
    fuzz_fail ("%s: %m", link);
  real[n] = '\0';
  if (!fuzz_allowed (real))
    fuzz_fail ("layer %zu of the chain is %s, outside the allowed folders",
               i, real);
  if ((fcntl (l->fd, F_GETFL) & O_ACCMODE) != O_RDONLY)
    fuzz_fail ("layer %zu (%s) is open for writing", i, real);
}

static bool
all_zero (const uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

static void
writable (struct chain *c, struct map *m, const char *tmpdir,
          const struct drive_map *drives, size_t nr_drives, uint8_t *buf,
          uint64_t probe)
{
  struct overlay_opts o = { .tmpdir = tmpdir, .drives = drives,
                            .nr_drives = nr_drives };
  uint64_t size = map_size (m), sec = c->layers[0]->sector;
  struct overlay *ov;
  uint8_t *want = buf + 65536;

  vc_clear_error ();
  if (overlay_open (c, m, &o, &ov) < 0)
    return;
  probe = probe / sec * sec;
  if (probe + sec > size)
    probe = size - sec;
  if (map_read (m, want, sec, probe) == 0 &&
      overlay_read (ov, buf, sec, probe) == 0 && memcmp (buf, want, sec))
    fuzz_fail ("a fresh writable layer reads otherwise than the chain at "
               "%lu", (unsigned long) probe);
  memset (want, 0xA5, sec);
  if (overlay_write (ov, want, sec, probe, false) == 0 &&
      (overlay_read (ov, buf, sec, probe) != 0 || memcmp (buf, want, sec)))
    fuzz_fail ("a written sector at %lu does not read back",
               (unsigned long) probe);
  if (overlay_zero (ov, sec, size - sec, false) == 0 &&
      (overlay_read (ov, buf, sec, size - sec) != 0 || !all_zero (buf, sec)))
    fuzz_fail ("the zeroed last sector does not read as zeros");
  overlay_flush (ov);
  overlay_close (ov);
}

void
fuzz_exercise (struct chain *c, unsigned flags, const char *tmpdir,
               const struct drive_map *drives, size_t nr_drives)
{
  static struct exts x;
  static uint8_t buf[2 * 65536 + 2];
  uint64_t size, span, budget = FUZZ_READ_BUDGET, zbudget = 256 << 10;
  uint64_t probe = 0;
  struct map *m;

  for (size_t i = 0; i < c->depth; i++)
    check_fd (c->layers[i], i);
  vc_clear_error ();
  if (map_build (c, &m) < 0)
    return;
  size = map_size (m);
  /* At most 2^20 granules of extents: whole disks but for huge ones. */
  span = (uint64_t) map_granule (m) << 20;
  span = span < size ? span : size;
  x.n = 0;
  x.next = 0;
  if (map_extents (m, 0, span, collect, &x) != 0)
    fuzz_fail ("map_extents failed on an opened chain: %s",
               vc_last_error ());
  if (x.next != span)
    fuzz_fail ("map_extents covered %lu of %lu bytes",
               (unsigned long) x.next, (unsigned long) span);
  for (size_t i = 0; i < x.n; i++) {
    struct ext *e = &x.e[i];
    bool data = e->type == EXT_DATA;
    for (uint64_t o = 0; o < e->len && (data ? budget : zbudget); ) {
      uint64_t n = e->len - o < 65536 ? e->len - o : 65536;
      int r = map_read (m, buf, n, e->off + o);
      if (r < 0 && r != -ENOMEM)
        fuzz_fail ("map_read of %lu + %lu (%s extent) failed: %s",
                   (unsigned long) (e->off + o), (unsigned long) n,
                   data ? "data" : "zero", strerror (-r));
      if (r == 0 && !data && !all_zero (buf, n))
        fuzz_fail ("a %s extent at %lu does not read as zeros",
                   e->type == EXT_ZERO ? "zero" : "hole",
                   (unsigned long) (e->off + o));
      if (data && !probe)
        probe = e->off + o;
      *(data ? &budget : &zbudget) -= n < (data ? budget : zbudget) ? n
        : (data ? budget : zbudget);
      o += n;
    }
    /* An unaligned read across the extent's start. */
    if (e->off > 0 && e->off + 1 < size) {
      uint64_t n = e->off + 4097 < size ? 4098 : size - e->off + 1;
      int r = map_read (m, buf, n, e->off - 1);
      if (r < 0 && r != -ENOMEM)
        fuzz_fail ("unaligned map_read at %lu failed: %s",
                   (unsigned long) (e->off - 1), strerror (-r));
    }
  }
  if (map_read (m, buf, 0, size) != 0 || map_read (m, buf, 1, size) == 0 ||
      (size && (map_read (m, buf, 1, size - 1) != 0 ||
                map_read (m, buf, 2, size - 1) == 0)))
    fuzz_fail ("map_read bounds at the end of the disk");
  if ((flags & FUZZ_F_WRITABLE) && size >= c->layers[0]->sector)
    writable (c, m, tmpdir, drives, nr_drives, buf, probe);
  map_free (m);
}

void
fuzz_serve (const char *tip, const struct chain_opts *o, unsigned flags,
            const char *tmpdir)
{
  struct chain *c;

  vc_clear_error ();
  if (chain_open (tip, o, &c) < 0)
    return;
  fuzz_exercise (c, flags, tmpdir, o->drives, o->nr_drives);
  chain_close (c);
}

/* The image targets: one fixture layout for VHD and VHDX (fuzz.h). */
static struct drive_map image_drive;
static char *image_tip, *image_tmp;

void
fuzz_image_setup (const char *fixture, const char *tip_name)
{
  char *snapshots;

  fuzz_setup (fixture);
  fuzz_allow ("vm");
  image_drive.letter = 'C';
  image_drive.path = realpath (fuzz_path (0, "vm"), NULL);
  snapshots = realpath (fuzz_path (0, "vm/Snapshots"), NULL);
  image_tmp = realpath (fuzz_path (0, "tmp"), NULL);
  if (!image_drive.path || !snapshots || !image_tmp ||
      asprintf (&image_tip, "%s/%s", snapshots, tip_name) < 0)
    fuzz_fail ("fixture folders missing");
  free (snapshots);
}

void
fuzz_image_one (const uint8_t *data, size_t size)
{
  unsigned flags = fuzz_write_image (image_tip, data, size);
  struct chain_opts o = {
    .layer.ignore_checksums = flags & FUZZ_F_IGNORE_CHECKSUMS,
    .ignore_id_mismatch = flags & FUZZ_F_IGNORE_ID,
    .drives = &image_drive, .nr_drives = 1,
  };

  fuzz_serve (image_tip, &o, flags, image_tmp);
}
