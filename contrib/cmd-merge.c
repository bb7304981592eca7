/* vhdchain merge CHILD [--into=ANCESTOR]: roll layers into an ancestor, as
 * deleting a Hyper-V checkpoint does.
 *
 * The layers from CHILD down to ANCESTOR's child (by default CHILD alone,
 * ANCESTOR being its parent) are folded into ANCESTOR: every range the
 * resolved map of CHILD's chain says one of them provides is read through
 * that map and written into ANCESTOR.  ANCESTOR is the file written (and,
 * for VHDX, the parent locator of its child in the chain; see below),
 * opened O_RDWR here only, after these checks:
 *  - the merged layers have ANCESTOR's virtual size;
 *  - no other file in the folders of these layers depends on ANCESTOR or on
 *    a layer between (its parent identity, or for VHDX either parent
 *    linkage, is one of theirs): what it reads would change under it, and
 *    a VHDX ANCESTOR's new DataWriteGuid orphans it.  --force merges
 *    anyway.
 *
 * Writes follow the writer's crash-safe order (FORMATS.md 2.8, 3.10; the
 * on-disk side is core/vhd-child.c's or core/vhdx-child.c's, attached to
 * ANCESTOR).  Per batch of blocks: a block ANCESTOR lacks is appended (VHD:
 * the footer moves first; VHDX: the file grows: a crash leaves orphan
 * space), every merged range is written into its block (in place where
 * ANCESTOR has the block), fdatasync; then the sector bitmaps (old bits |
 * merged sectors: for a differencing ANCESTOR "here", for a dynamic VHD
 * "written") and the BAT entries of new blocks, fdatasync.  A fixed VHD is
 * written in place and synced at the end.
 *
 * VHDX specifics (MS-VHDX 2.2.2, 2.5.1):
 *  - ANCESTOR's FileWriteGuid and DataWriteGuid are renewed before its
 *    first change (core's attach: the non-current header with SequenceNumber
 *    + 1, synced, then the other).  Its child in this chain must follow it:
 *    first that child's parent linkage that does not hold the current
 *    DataWriteGuid (parent_linkage2 the first time, added if missing) is
 *    set to the next one, synced (core's vhdx_relink); then ANCESTOR's
 *    headers change.  A crash between leaves the child linked by the old
 *    value, after by the new one: the chain always opens.
 *  - a file without a parent has no PARTIALLY_PRESENT: a new block of a
 *    dynamic (or fixed) ANCESTOR is written whole, the rest of it read
 *    through the chain (zeros: nothing below a base), and becomes
 *    FULLY_PRESENT.  A ZERO (or UNDEFINED, UNMAPPED) block of a
 *    differencing ANCESTOR hides its parent, so it is written whole too.
 *  - blocks ANCESTOR has are written in place, FULLY_PRESENT ones keep
 *    their state, PARTIALLY_PRESENT ones get their bits.
 *
 * The guarantee, for an interruption at any moment (crash, power loss, ^C):
 *  - CHILD still reads exactly as before: only sectors its side of the
 *    chain provides are written (or, in a whole block, sectors rewritten
 *    with what they hold), which ANCESTOR never shows through it, and the
 *    chain still links (VHD: no identity changes; VHDX: as above);
 *  - ANCESTOR alone stays readable: its bitmaps and BAT only ever point at
 *    durable data.  Per block it shows its old content or the new one for
 *    the sectors it did not hold (they appear with the bitmap or BAT write,
 *    after their data is durable); sectors it held and the merge
 *    overwrites in place are each old or new (a disk writes a sector
 *    whole), as in any in-place merge;
 *  - running the same merge again redoes the copy, which is idempotent,
 *    and completes it (space an interrupted allocation left stays unused).
 * Afterwards ANCESTOR holds CHILD's state: CHILD is redundant and the
 * layers between no longer read as they did; all are reported obsolete,
 * and removed with --delete.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>

#include "child.h"
#include "cli.h"
#include "guid.h"
#include "io.h"
#include "vhdx.h"

#define NO_BLOCK     UINT64_MAX
#define BATCH_BLOCKS 64         /* blocks per pair of syncs */

struct piece { uint32_t off, len; };   /* inside one block of ANCESTOR */

struct merge {
  struct cli *cli;
  struct chain *c;
  struct map *m;
  size_t k;                     /* index of ANCESTOR in the chain */
  struct layer *into;
  int fd;                       /* O_RDWR on ANCESTOR */
  struct child *child;          /* NULL: fixed, written in place */
  uint64_t *offs;               /* data offset per block, or NO_BLOCK */
  uint8_t *states;              /* per block: enum block_state in ANCESTOR */
  uint8_t *buf;                 /* one block */
  struct piece *pieces;
  size_t npieces, cap;
  struct child_dirty *batch;    /* blocks written, bitmaps not yet */
  uint8_t *bits;                /* BATCH_BLOCKS bitmaps */
  size_t nbatch, nbits;         /* nbits: bytes of one bitmap */
  struct progress prog;
  uint64_t total, merged;
  long crash_after;             /* tests: exit after this many steps */
  bool usage;                   /* the failure is the user's: exit 2 */
};

/* VHDCHAIN_TEST_CRASH_AFTER=N makes the merge stop dead (_exit, nothing
 * flushed or cleaned up) after its Nth write step, so the tests can check
 * the guarantee above at every point of the sequence. */
static void
step (struct merge *mg)
{
  if (mg->crash_after > 0 && --mg->crash_after == 0)
    _exit (99);
}

/* --- checks ------------------------------------------------------------ */

static int
check_layers (struct merge *mg)
{
  for (size_t i = 0; i < mg->k; i++) {
    struct layer *l = mg->c->layers[i];
    if (l->size != mg->into->size) {
      cli_error ("%s: size: %" PRIu64 " bytes, but %s has %" PRIu64 "; "
                 "merging a resized layer is not supported", l->path,
                 l->size, mg->into->path, mg->into->size);
      return -ENOTSUP;
    }
  }
  return 0;
}

static bool
image_name (const char *name)
{
  static const char *const ext[] = { ".vhd", ".avhd", ".vhdx", ".avhdx" };
  const char *dot = strrchr (name, '.');

  for (size_t i = 0; dot && i < 4; i++)
    if (strcasecmp (dot, ext[i]) == 0)
      return true;
  return false;
}

/* Is the file at path a child of ANCESTOR or of a layer between, other
 * than the layers of this chain?  Says so and returns 1. */
static int
dependent (struct merge *mg, const char *path)
{
  struct layer_opts lax = { .ignore_checksums = true };
  struct layer *l;
  struct stat st;
  int found = 0;

  if (stat (path, &st) == -1 || !S_ISREG (st.st_mode))
    return 0;
  for (size_t i = 0; i <= mg->k; i++)
    if (mg->c->layers[i]->dev == st.st_dev &&
        mg->c->layers[i]->ino == st.st_ino)
      return 0;
  if (chain_open_file (path, &lax, &l) < 0)
    return 0;                   /* not an image we can read: no child */
  for (size_t i = 1; l->differencing && !found && i <= mg->k; i++)
    if (memcmp (l->parent_id, mg->c->layers[i]->id, 16) == 0 ||
        (!guid_is_zero (l->parent_id2) &&
         memcmp (l->parent_id2, mg->c->layers[i]->id, 16) == 0)) {
      cli_error ("%s: parent: depends on %s, which the merge changes "
                 "(--force merges anyway)", path, mg->c->layers[i]->path);
      found = 1;
    }
  layer_close (l);
  return found;
}

static int
scan_dir (struct merge *mg, const char *dir)
{
  DIR *d = opendir (dir);
  struct dirent *e;
  char *path;
  int found = 0;

  if (!d)
    return 0;
  while ((e = readdir (d)) != NULL)
    if (image_name (e->d_name) &&
        asprintf (&path, "%s/%s", dir, e->d_name) != -1) {
      found += dependent (mg, path);
      free (path);
    }
  closedir (d);
  return found;
}

/* The folders of the layers involved, each scanned once. */
static int
check_dependents (struct merge *mg)
{
  char *dirs[CHAIN_MAX_DEPTH];
  size_t n = 0;
  int found = 0;

  for (size_t i = 0; i <= mg->k; i++) {
    char *real = realpath (mg->c->layers[i]->path, NULL), *dir;
    bool seen = false;
    if (!real)
      continue;
    dir = dirname (real);
    for (size_t j = 0; j < n && !seen; j++)
      seen = strcmp (dirs[j], dir) == 0;
    if (!seen && (dirs[n] = strdup (dir)) != NULL)
      n++;
    free (real);
  }
  for (size_t j = 0; j < n; j++) {
    found += scan_dir (mg, dirs[j]);
    free (dirs[j]);
  }
  return found ? -EBUSY : 0;
}

/* --- ANCESTOR, opened for writing ---------------------------------------- */

static int
load_offset (void *opaque, uint64_t b, enum block_state st, uint64_t off)
{
  struct merge *mg = opaque;

  mg->states[b] = st;
  if (st != BLK_ZERO)           /* a VHDX ZERO block has no data */
    mg->offs[b] = off;
  return 0;
}

static int
open_into (struct merge *mg)
{
  struct layer *l = mg->into;
  struct stat st;
  int r;

  mg->fd = open (l->path, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (mg->fd == -1 || fstat (mg->fd, &st) == -1) {
    r = -errno;
    cli_error ("%s: opening for writing: %s", l->path, strerror (-r));
    return r;
  }
  if (st.st_dev != l->dev || st.st_ino != l->ino) {
    cli_error ("%s: replaced while vhdchain was reading it", l->path);
    return -ESTALE;
  }
  mg->offs = malloc (l->nr_blocks * sizeof *mg->offs);
  mg->states = calloc (l->nr_blocks, 1);
  if (!mg->offs || !mg->states) {
    cli_error ("out of memory");
    return -ENOMEM;
  }
  memset (mg->offs, 0xFF, l->nr_blocks * sizeof *mg->offs);
  vc_clear_error ();
  if ((r = l->ops->walk (l, load_offset, mg)) < 0)
    cli_core_error ();
  return r;
}

/* VHDX (MS-VHDX 2.2.2): the DataWriteGuid of ANCESTOR changes before the
 * first change of the disk it shows, which orphans its other children
 * (hence check_dependents).  So that the chain being merged stays linked,
 * ANCESTOR's child in it first records the next DataWriteGuid in the
 * parent linkage that does not hold the current one (parent_linkage2 the
 * first time); then ANCESTOR's headers take it.  A crash between leaves
 * the child linked by the old value, after by the new one. */
static int
relink_child (struct merge *mg, const uint8_t next[16])
{
  struct layer *l = mg->c->layers[mg->k - 1];
  struct stat st;
  int fd, r;

  fd = open (l->path, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd == -1 || fstat (fd, &st) == -1) {
    r = -errno;
    cli_error ("%s: opening for writing: %s", l->path, strerror (-r));
    if (fd >= 0)
      close (fd);
    return r;
  }
  if (st.st_dev != l->dev || st.st_ino != l->ino) {
    close (fd);
    cli_error ("%s: replaced while vhdchain was reading it", l->path);
    return -ESTALE;
  }
  vc_clear_error ();
  if ((r = vhdx_relink (fd, l, mg->into->id, next)) < 0)
    cli_core_error ();
  if (close (fd) == -1 && r == 0) {
    r = -errno;
    cli_error ("%s: closing: %s", l->path, strerror (-r));
  }
  return r;
}

/* The writer's side of ANCESTOR, once the plan is made: a VHD's child
 * writer (none for a fixed VHD: written in place), a VHDX's after its new
 * identity. */
static int
attach_into (struct merge *mg)
{
  struct layer *l = mg->into;
  uint8_t next[16];
  int r;

  if (l->format == FMT_VHDX) {
    vhdx_new_guid (next);
    if ((r = relink_child (mg, next)) < 0)
      return r;
    step (mg);
    vc_clear_error ();
    r = vhdx_attach (mg->fd, l, next, &mg->child);
  }
  else if (strcmp (l->type, "fixed") == 0)
    return 0;
  else {
    vc_clear_error ();
    r = vhd_child_attach (mg->fd, l, &mg->child);
  }
  if (r < 0) {
    cli_core_error ();
    return r;
  }
  mg->fd = -1;                  /* the child owns it now */
  if (l->format == FMT_VHDX)
    step (mg);
  return 0;
}

static int
child_fd (const struct merge *mg)
{
  return mg->child ? mg->child->fd : mg->fd;
}

/* --- what to copy -------------------------------------------------------- */

/* The ranges a layer above ANCESTOR provides in the block of ANCESTOR at
 * base, as sector-aligned pieces relative to base, merged. */
struct collect { struct merge *mg; uint64_t base; };

static int
add_piece (void *opaque, uint64_t off, uint64_t len, enum extent_type t,
           int layer)
{
  struct collect *co = opaque;
  struct merge *mg = co->mg;
  uint32_t sec = mg->into->sector;
  uint64_t a = (off - co->base) / sec * sec;
  uint64_t z = (off - co->base + len + sec - 1) / sec * sec;

  if (t != EXT_DATA || (size_t) layer >= mg->k)
    return 0;
  if (mg->npieces && mg->pieces[mg->npieces - 1].off +
      mg->pieces[mg->npieces - 1].len >= a) {
    mg->pieces[mg->npieces - 1].len = z - mg->pieces[mg->npieces - 1].off;
    return 0;
  }
  if (mg->npieces == mg->cap) {
    size_t cap = mg->cap ? 2 * mg->cap : 64;
    struct piece *p = realloc (mg->pieces, cap * sizeof *p);
    if (!p)
      return vc_error (ENOMEM, "out of memory");
    mg->pieces = p;
    mg->cap = cap;
  }
  mg->pieces[mg->npieces++] = (struct piece) { a, z - a };
  return 0;
}

static uint64_t
block_len (const struct merge *mg, uint64_t b)
{
  uint64_t off = b * mg->into->block_size;

  return mg->into->size - off < mg->into->block_size
         ? mg->into->size - off : mg->into->block_size;
}

/* The pieces of block b; their total in *bytes. */
static int
pieces_of (struct merge *mg, uint64_t b, uint64_t *bytes)
{
  struct collect co = { mg, b * mg->into->block_size };
  int r;

  mg->npieces = 0;
  *bytes = 0;
  if ((r = map_extents (mg->m, co.base, block_len (mg, b), add_piece,
                        &co)) < 0)
    return r;
  for (size_t i = 0; i < mg->npieces; i++)
    *bytes += mg->pieces[i].len;
  return 0;
}

static int
plan (struct merge *mg)
{
  uint64_t n;
  int r = 0;

  mg->total = 0;
  for (uint64_t b = 0; b < mg->into->nr_blocks && r == 0; b++)
    if ((r = pieces_of (mg, b, &n)) == 0)
      mg->total += n;
  return r;
}

/* --- copying --------------------------------------------------------- */

static int
sync_into (struct merge *mg)
{
  int err;

  if (fdatasync (child_fd (mg)) == 0)
    return 0;
  err = errno;
  cli_error ("%s: syncing: %s", mg->into->path, strerror (err));
  return -err;
}

/* Bitmaps and BAT entries of the batch, between two syncs. */
static int
commit_batch (struct merge *mg)
{
  int r;

  if (mg->nbatch == 0)
    return 0;
  if ((r = sync_into (mg)) < 0)
    return r;
  step (mg);
  vc_clear_error ();
  if ((r = mg->child->ops->commit (mg->child, mg->batch, mg->nbatch)) < 0) {
    cli_core_error ();
    return r;
  }
  step (mg);
  if ((r = sync_into (mg)) < 0)
    return r;
  mg->nbatch = 0;
  return 0;
}

/* Where block b's data goes: its place in ANCESTOR, appended if new. */
static int
block_place (struct merge *mg, uint64_t b, uint64_t *data_off, bool *fresh)
{
  int r;

  *fresh = mg->offs[b] == NO_BLOCK;
  if (*fresh) {
    vc_clear_error ();
    if ((r = mg->child->ops->alloc (mg->child, b, &mg->offs[b])) < 0) {
      cli_core_error ();
      return r;
    }
    step (mg);
  }
  *data_off = mg->offs[b];
  return 0;
}

/* The bitmap to commit for block b: what it had, plus the pieces. */
static int
block_bits (struct merge *mg, uint64_t b, bool fresh, uint8_t *bits)
{
  uint32_t sec = mg->into->sector;
  int r;

  memset (bits, 0, mg->nbits);
  vc_clear_error ();
  if (!fresh && mg->into->format == FMT_VHDX &&
      mg->states[b] == BLK_FULL) {
    /* every sector, but none past the virtual end */
    uint32_t n = block_len (mg, b) / sec;
    memset (bits, 0xFF, n / 8);
    for (uint32_t s = n / 8 * 8; s < n; s++)
      bits[s >> 3] |= 1 << (s & 7);
  }
  else if (!fresh &&
      (r = mg->into->ops->bitmap (mg->into, b, mg->offs[b], bits)) < 0) {
    cli_core_error ();
    return r;
  }
  for (size_t i = 0; i < mg->npieces; i++)
    for (uint32_t s = mg->pieces[i].off / sec;
         s < (mg->pieces[i].off + mg->pieces[i].len) / sec; s++)
      bits[s >> 3] |= 1 << (s & 7);
  return 0;
}

static int
read_pieces (struct merge *mg, uint64_t b)
{
  uint64_t base = b * mg->into->block_size;
  int r;

  for (size_t i = 0; i < mg->npieces; i++)
    if ((r = map_read (mg->m, mg->buf + mg->pieces[i].off,
                       mg->pieces[i].len, base + mg->pieces[i].off)) < 0) {
      cli_error ("%s: reading %" PRIu32 " bytes at %" PRIu64 ": %s",
                 mg->c->layers[0]->path, mg->pieces[i].len,
                 base + mg->pieces[i].off, strerror (-r));
      return r;
    }
  return 0;
}

static int
write_pieces (struct merge *mg, uint64_t data_off)
{
  int r;

  for (size_t i = 0; i < mg->npieces; i++) {
    if ((r = io_pwrite_full (child_fd (mg), mg->buf + mg->pieces[i].off,
                             mg->pieces[i].len,
                             data_off + mg->pieces[i].off)) < 0) {
      cli_error ("%s: writing at %" PRIu64 ": %s", mg->into->path,
                 data_off + mg->pieces[i].off, strerror (-r));
      return r;
    }
    step (mg);
  }
  return 0;
}

static int
merge_block (struct merge *mg, uint64_t b)
{
  uint8_t *bits = mg->bits + mg->nbatch * mg->nbits;
  uint64_t data_off;
  bool fresh = false;
  int r;

  /* A new block of a VHDX without a parent is FULLY_PRESENT or nothing,
   * and one that was ZERO hid the disk below it: written whole, the rest
   * of the block read through the chain (zeros, as it reads now). */
  if (mg->into->format == FMT_VHDX && mg->offs[b] == NO_BLOCK &&
      (!mg->into->differencing || mg->states[b] == BLK_ZERO)) {
    mg->pieces[0] = (struct piece) { 0, block_len (mg, b) };
    mg->npieces = 1;
  }
  if ((r = read_pieces (mg, b)) < 0)
    return r;
  if (!mg->child)               /* fixed: the file is the disk */
    return write_pieces (mg, mg->offs[b]);
  if ((r = block_place (mg, b, &data_off, &fresh)) < 0 ||
      (r = write_pieces (mg, data_off)) < 0 ||
      (r = block_bits (mg, b, fresh, bits)) < 0)
    return r;
  mg->batch[mg->nbatch++] = (struct child_dirty) { b, data_off, bits };
  return mg->nbatch == BATCH_BLOCKS ? commit_batch (mg) : 0;
}

static int
merge_all (struct merge *mg)
{
  uint64_t n;
  int r = 0;

  progress_start (&mg->prog, mg->cli, "merge", mg->total);
  for (uint64_t b = 0; b < mg->into->nr_blocks && r == 0; b++) {
    vc_clear_error ();
    if ((r = pieces_of (mg, b, &n)) < 0)
      cli_core_error ();
    else if (n && (r = merge_block (mg, b)) == 0) {
      mg->merged += n;
      progress_add (&mg->prog, n);
    }
  }
  if (r == 0)
    r = mg->child ? commit_batch (mg) : sync_into (mg);
  progress_end (&mg->prog);
  return r;
}

/* --- the command ------------------------------------------------------- */

static int
choose_ancestor (struct merge *mg)
{
  struct chain *c = mg->c;
  int i = 1;

  if (c->depth < 2) {
    cli_error ("%s: type: a %s image has no parent to merge into",
               c->layers[0]->path, c->layers[0]->type);
    return -EINVAL;
  }
  if (mg->cli->into && (i = cli_find_layer (c, mg->cli->into, "--into")) < 0) {
    mg->usage = i == -2;        /* no such file: exit 2 */
    return -ENOENT;
  }
  if (i == 0) {
    cli_error ("%s: --into: is CHILD itself; name one of its ancestors",
               mg->cli->into);
    return -EINVAL;
  }
  mg->k = i;
  mg->into = c->layers[i];
  return 0;
}

static int
prepare (struct merge *mg)
{
  uint32_t bs;
  int r;

  if ((r = choose_ancestor (mg)) < 0 || (r = check_layers (mg)) < 0 ||
      (!mg->cli->force && (r = check_dependents (mg)) < 0) ||
      (r = cli_build_map (mg->c, &mg->m)) < 0 || (r = open_into (mg)) < 0)
    return r;
  bs = mg->into->block_size;
  mg->nbits = bs / mg->into->sector / 8;
  mg->buf = malloc (bs);
  mg->bits = malloc (BATCH_BLOCKS * mg->nbits);
  mg->batch = malloc (BATCH_BLOCKS * sizeof *mg->batch);
  if (!mg->buf || !mg->bits || !mg->batch) {
    cli_error ("out of memory");
    return -ENOMEM;
  }
  vc_clear_error ();
  if ((r = plan (mg)) < 0) {
    cli_core_error ();
    return r;
  }
  return attach_into (mg);
}

/* Say what happened; with --delete, remove the merged layers. */
static int
finish (struct merge *mg)
{
  char h[32];
  int status = EXIT_OK;

  cli_human (mg->merged, h);
  if (!mg->cli->quiet)
    printf ("merged %s from %zu layer%s into %s\n", h, mg->k,
            mg->k == 1 ? "" : "s", mg->into->path);
  for (size_t i = 0; i < mg->k; i++) {
    const char *p = mg->c->layers[i]->path;
    if (mg->cli->delete && unlink (p) == -1) {
      cli_error ("%s: deleting: %m", p);
      status = EXIT_FAIL;
    }
    else if (mg->cli->delete) {
      cli_sync_dir (p);
      if (!mg->cli->quiet)
        printf ("%s: deleted\n", p);
    }
    else if (!mg->cli->quiet)
      printf ("%s: obsolete: %s; delete it (merge --delete does)\n", p,
              i == 0 ? "its data is in the merged file now"
              : "it no longer reads as before, the file below holds the "
                "layers above it");
  }
  return status;
}

static int
merge_run (struct cli *cli)
{
  struct merge mg = { .cli = cli, .fd = -1 };
  const char *crash = getenv ("VHDCHAIN_TEST_CRASH_AFTER");
  int status = EXIT_FAIL;

  if (crash)
    mg.crash_after = atol (crash);
  if (cli_open_chain (cli, cli->args[0], &mg.c) < 0)
    return EXIT_USAGE;
  if (prepare (&mg) == 0 && merge_all (&mg) == 0)
    status = finish (&mg);
  else if (mg.usage)
    status = EXIT_USAGE;
  if (mg.child) {
    close (mg.child->fd);
    mg.child->ops->close (mg.child);
    free (mg.child);
  }
  if (mg.fd >= 0)
    close (mg.fd);
  free (mg.offs);
  free (mg.states);
  free (mg.buf);
  free (mg.bits);
  free (mg.batch);
  free (mg.pieces);
  map_free (mg.m);
  chain_close (mg.c);
  return status;
}

static const int merge_options[] = { OPT_INTO, OPT_FORCE, OPT_DELETE, 0 };

const struct command cmd_merge = {
  .name = "merge",
  .args = "CHILD",
  .summary = "roll CHILD into its parent, as deleting a checkpoint does",
  .options = merge_options,
  .nargs = 1,
  .run = merge_run,
};
