/* vhdchain changed FROM TO: the byte ranges that may differ between two
 * points of one chain, for incremental backup.
 *
 * FROM must be a file of TO's chain (the same file, by device and inode).
 * What can differ is exactly what the layers above FROM, up to TO, hold:
 * each is walked (its block table; the sector bitmaps of partial blocks),
 * without reading data.  A layer's bytes count only below the smallest
 * virtual size among it and the layers above it (what TO can see), and when
 * TO is larger than FROM, everything past FROM's end is included.  The
 * ranges are sorted, merged and printed as JSON:
 *   [{"offset": 0, "length": 4096}, ...]
 *
 * --verify then reads both points (map_read on TO's map and on a map of
 * FROM's part of the same chain) and keeps only the logical sectors whose
 * bytes differ; past FROM's end FROM counts as zeros.  A backup of FROM
 * patched with TO's bytes over the printed ranges equals TO.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define VERIFY_CHUNK (UINT64_C (1) << 20)

struct range { uint64_t off, len; };

struct ranges {
  struct range *r;
  size_t n, cap;
};

static int
push (struct ranges *rs, uint64_t off, uint64_t len)
{
  if (rs->n && rs->r[rs->n - 1].off + rs->r[rs->n - 1].len == off) {
    rs->r[rs->n - 1].len += len;        /* continues the last one */
    return 0;
  }
  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? 2 * rs->cap : 256;
    struct range *n = realloc (rs->r, cap * sizeof *n);
    if (!n)
      return vc_error (ENOMEM, "out of memory for the ranges");
    rs->r = n;
    rs->cap = cap;
  }
  rs->r[rs->n++] = (struct range) { off, len };
  return 0;
}

static int
collect (void *opaque, uint64_t off, uint64_t len, enum block_state st)
{
  return push (opaque, off, len);
}

static int
cmp_range (const void *a, const void *b)
{
  const struct range *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

/* Sort, then merge overlapping and touching ranges in place. */
static void
normalise (struct ranges *rs)
{
  size_t o = 0;

  if (rs->n == 0)               /* rs->r may be NULL: qsort wants an array */
    return;
  qsort (rs->r, rs->n, sizeof *rs->r, cmp_range);
  for (size_t i = 0; i < rs->n; i++) {
    struct range *last = o ? &rs->r[o - 1] : NULL;
    if (last && rs->r[i].off <= last->off + last->len) {
      uint64_t end = rs->r[i].off + rs->r[i].len;
      if (end > last->off + last->len)
        last->len = end - last->off;
    }
    else
      rs->r[o++] = rs->r[i];
  }
  rs->n = o;
}

/* The ranges the layers above FROM (indexes 0 .. from - 1) hold. */
static int
layer_ranges (struct chain *c, size_t from, struct ranges *rs)
{
  uint64_t vis = UINT64_MAX, to_size = c->layers[0]->size;
  uint64_t from_size = c->layers[from]->size;
  int r = 0;

  vc_clear_error ();
  for (size_t i = 0; i < from && r == 0; i++) {
    if (c->layers[i]->size < vis)
      vis = c->layers[i]->size;
    r = cli_layer_ranges (c->layers[i], vis, collect, rs);
  }
  if (r == 0 && to_size > from_size)
    r = push (rs, from_size, to_size - from_size);
  if (r < 0)
    cli_core_error ();
  else
    normalise (rs);
  return r;
}

struct verifier {
  struct map *to, *from;
  uint64_t from_size;
  uint32_t sector;
  char *a, *b;                  /* VERIFY_CHUNK bytes each */
  struct ranges out;
  struct progress prog;
};

/* Read [off, off + n) of FROM: past its end, zeros. */
static int
read_from (struct verifier *v, uint64_t off, uint64_t n)
{
  uint64_t have = off >= v->from_size ? 0
                  : v->from_size - off < n ? v->from_size - off : n;

  memset (v->b + have, 0, n - have);
  return have ? map_read (v->from, v->b, have, off) : 0;
}

/* Keep the sectors of [off, off + len) whose bytes differ. */
static int
verify_range (struct verifier *v, uint64_t off, uint64_t len)
{
  int r = 0;

  while (len && r == 0) {
    uint64_t n = len < VERIFY_CHUNK ? len : VERIFY_CHUNK;
    if ((r = map_read (v->to, v->a, n, off)) < 0 ||
        (r = read_from (v, off, n)) < 0)
      return vc_error (-r, "reading %" PRIu64 " bytes at %" PRIu64 ": %s",
                       n, off, strerror (-r));
    for (uint64_t s = 0; s < n && r == 0; s += v->sector) {
      uint64_t k = n - s < v->sector ? n - s : v->sector;
      if (memcmp (v->a + s, v->b + s, k) != 0)
        r = push (&v->out, off + s, k);
    }
    progress_add (&v->prog, n);
    off += n;
    len -= n;
  }
  return r;
}

static int
verify (const struct cli *cli, struct chain *c, size_t from,
        struct ranges *rs)
{
  struct chain view = { c->layers + from, c->found + from, c->depth - from };
  struct verifier v = { .from_size = c->layers[from]->size,
                        .sector = c->layers[0]->sector };
  uint64_t total = 0;
  int r;

  for (size_t i = 0; i < rs->n; i++)
    total += rs->r[i].len;
  if ((r = cli_build_map (c, &v.to)) == 0 &&
      (r = cli_build_map (&view, &v.from)) == 0) {
    v.a = malloc (VERIFY_CHUNK);
    v.b = malloc (VERIFY_CHUNK);
    r = v.a && v.b ? 0 : vc_error (ENOMEM, "out of memory");
    progress_start (&v.prog, cli, "verify", total);
    for (size_t i = 0; i < rs->n && r == 0; i++)
      r = verify_range (&v, rs->r[i].off, rs->r[i].len);
    progress_end (&v.prog);
    if (r < 0)
      cli_core_error ();
  }
  free (rs->r);
  *rs = v.out;
  free (v.a);
  free (v.b);
  map_free (v.to);
  map_free (v.from);
  return r;
}

static void
print_ranges (const struct ranges *rs)
{
  printf ("[");
  for (size_t i = 0; i < rs->n; i++)
    printf ("%s\n  {\"offset\": %" PRIu64 ", \"length\": %" PRIu64 "}",
            i ? "," : "", rs->r[i].off, rs->r[i].len);
  printf ("%s]\n", rs->n ? "\n" : "");
}

static int
changed_run (struct cli *cli)
{
  struct chain *c;
  struct ranges rs = { 0 };
  int status = EXIT_FAIL, from;

  if (cli_open_chain (cli, cli->args[1], &c) < 0)
    return EXIT_USAGE;
  from = cli_find_layer (c, cli->args[0], "FROM");
  if (from == -2)
    status = EXIT_USAGE;
  if (from >= 0 && layer_ranges (c, from, &rs) == 0 &&
      (!cli->verify || verify (cli, c, from, &rs) == 0)) {
    print_ranges (&rs);
    status = EXIT_OK;
  }
  free (rs.r);
  chain_close (c);
  return status;
}

static const int changed_options[] = { OPT_VERIFY, OPT_JSON, 0 };

const struct command cmd_changed = {
  .name = "changed",
  .args = "FROM TO",
  .summary = "the byte ranges that may differ between two points, as JSON",
  .options = changed_options,
  .nargs = 2,
  .run = changed_run,
};
