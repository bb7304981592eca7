/* vhdchain(1): helpers the commands share (see cli.h).
 *
 * Opening a chain takes the same options as the plugin and prints core's
 * one-line message on failure.  The progress bar draws only on a terminal,
 * at most ten times a second, and erases nothing it did not draw, so output
 * piped to a file or a script never holds control characters.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "cli.h"
#include "guid.h"
#include "io.h"

void
cli_error (const char *fmt, ...)
{
  va_list ap;

  fputs ("vhdchain: ", stderr);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
}

void
cli_core_error (void)
{
  cli_error ("%s", vc_last_error ());
}

int
cli_open_chain (const struct cli *cli, const char *tip, struct chain **out)
{
  int r;

  vc_clear_error ();
  if ((r = chain_open (tip, &cli->chain, out)) < 0)
    cli_core_error ();
  return r;
}

int
cli_build_map (struct chain *c, struct map **out)
{
  int r;

  vc_clear_error ();
  if ((r = map_build (c, out)) < 0)
    cli_core_error ();
  return r;
}

int
cli_find_layer (const struct chain *c, const char *path, const char *what)
{
  struct stat st;

  if (stat (path, &st) == -1) {
    cli_error ("%s: %s: %m", path, what);
    return -2;
  }
  for (size_t i = 0; i < c->depth; i++)
    if (c->layers[i]->dev == st.st_dev && c->layers[i]->ino == st.st_ino)
      return i;
  cli_error ("%s: %s: not in the chain of %s (its %zu layers end at %s)",
             path, what, c->layers[0]->path, c->depth,
             c->layers[c->depth - 1]->path);
  return -1;
}

void
cli_format_id (const struct layer *l, const uint8_t *id, char buf[40])
{
  if (l->format == FMT_VHDX)
    guid_format (id, buf);
  else
    for (int i = 0; i < 16; i++)
      sprintf (buf + 2 * i, "%02x", id[i]);
}

void
cli_human (uint64_t bytes, char buf[32])
{
  static const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
  double v = bytes;
  int u = 0;

  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf (buf, 32, "%" PRIu64 " B", bytes);
  else
    snprintf (buf, 32, "%.1f %s", v, unit[u]);
}

/* --- escaping ---------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, or 0. */
static int
utf8_len (const unsigned char *s)
{
  int n = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2
          : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;

  if (n == 2 && s[0] < 0xC2)
    return 0;                   /* overlong */
  for (int i = 1; i < n; i++)
    if ((s[i] & 0xC0) != 0x80)
      return 0;
  return n;
}

void
json_string (FILE *f, const char *str)
{
  const unsigned char *s = (const unsigned char *) str;

  fputc ('"', f);
  while (*s) {
    int n = utf8_len (s);
    if (n == 0) {
      fputs ("\\ufffd", f);
      s++;
      continue;
    }
    if (*s == '"' || *s == '\\')
      fprintf (f, "\\%c", *s);
    else if (*s < 0x20)
      fprintf (f, "\\u%04x", *s);
    else
      fwrite (s, 1, n, f);
    s += n;
  }
  fputc ('"', f);
}

void
xml_string (FILE *f, const char *str)
{
  const unsigned char *s = (const unsigned char *) str;

  while (*s) {
    int n = utf8_len (s);
    if (n == 0 || (*s < 0x20 && *s != '\t' && *s != '\n'))
      fputs ("&#xFFFD;", f);
    else if (*s == '&') fputs ("&amp;", f);
    else if (*s == '<') fputs ("&lt;", f);
    else if (*s == '>') fputs ("&gt;", f);
    else if (*s == '"') fputs ("&quot;", f);
    else
      fwrite (s, 1, n, f);
    s += n ? n : 1;
  }
}

/* --- ranges of one layer ----------------------------------------------- */

struct ranger {
  struct layer *l;
  uint64_t limit;
  layer_range_fn fn;
  void *opaque;
  uint8_t *bits;
};

static int
emit_clipped (struct ranger *rg, uint64_t off, uint64_t len,
              enum block_state st)
{
  if (off >= rg->limit)
    return 0;
  if (len > rg->limit - off)
    len = rg->limit - off;
  return rg->fn (rg->opaque, off, len, st);
}

static int
range_block (void *opaque, uint64_t b, enum block_state st, uint64_t data_off)
{
  struct ranger *rg = opaque;
  uint32_t sec = rg->l->sector, ns = rg->l->block_size / sec;
  uint64_t base = b * rg->l->block_size;
  int r;

  if (st != BLK_PARTIAL)
    return emit_clipped (rg, base, rg->l->block_size, st);
  if ((r = rg->l->ops->bitmap (rg->l, b, data_off, rg->bits)) < 0)
    return r;
  for (uint32_t s = 0, e; s < ns; s = e) {
    bool set = rg->bits[s >> 3] >> (s & 7) & 1;
    for (e = s + 1; e < ns && (rg->bits[e >> 3] >> (e & 7) & 1) == set; e++)
      ;
    if (set && (r = emit_clipped (rg, base + (uint64_t) s * sec,
                                  (uint64_t) (e - s) * sec, st)) != 0)
      return r;
  }
  return 0;
}

int
cli_layer_ranges (struct layer *l, uint64_t limit, layer_range_fn fn,
                  void *opaque)
{
  struct ranger rg = { l, limit, fn, opaque, NULL };
  int r;

  if (!(rg.bits = malloc (l->block_size / l->sector / 8)))
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  r = l->ops->walk (l, range_block, &rg);
  free (rg.bits);
  return r;
}

/* --- progress ---------------------------------------------------------- */

static long long
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void
progress_draw (struct progress *p)
{
  enum { WIDTH = 30 };
  char done[32], total[32], bar[WIDTH + 1];
  unsigned pct = p->total ? p->done * 100 / p->total : 100;
  unsigned fill = pct * WIDTH / 100;

  memset (bar, '#', fill);
  memset (bar + fill, '.', WIDTH - fill);
  bar[WIDTH] = '\0';
  cli_human (p->done, done);
  cli_human (p->total, total);
  fprintf (stderr, "\r%s [%s] %3u%%  %s / %s\033[K", p->what, bar, pct,
           done, total);
  fflush (stderr);
}

void
progress_start (struct progress *p, const struct cli *cli, const char *what,
                uint64_t total)
{
  *p = (struct progress) { what, total, 0, !cli->quiet && isatty (2), 0 };
  if (p->on) {
    p->last_ms = now_ms ();
    progress_draw (p);
  }
}

void
progress_add (struct progress *p, uint64_t n)
{
  long long t;

  p->done += n;
  if (p->done > p->total)
    p->done = p->total;
  if (p->on && (t = now_ms ()) - p->last_ms >= 100) {
    p->last_ms = t;
    progress_draw (p);
  }
}

void
progress_end (struct progress *p)
{
  if (!p->on)
    return;
  progress_draw (p);
  fputc ('\n', stderr);
  p->on = false;
}

bool
cli_all_zero (const void *p, size_t n)
{
  const char *c = p;

  return n == 0 || (c[0] == 0 && memcmp (c, c + 1, n - 1) == 0);
}

#define PIECE 4096

int
cli_pwrite_sparse (int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;
  size_t i = 0, j;
  int r = 0;

  while (i < len && r == 0) {
    if (cli_all_zero (p + i, len - i < PIECE ? len - i : PIECE)) {
      i += PIECE;
      continue;
    }
    for (j = i + PIECE; j < len &&
           !cli_all_zero (p + j, len - j < PIECE ? len - j : PIECE);
         j += PIECE)
      ;
    if (j > len)
      j = len;
    r = io_pwrite_full (fd, p + i, j - i, off + i);
    i = j;
  }
  return r;
}

void
cli_sync_dir (const char *path)
{
  char *copy = strdup (path);
  int fd = copy ? open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                : -1;

  if (fd >= 0) {
    fsync (fd);
    close (fd);
  }
  free (copy);
}
