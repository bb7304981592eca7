/* vhdchain convert TIP OUT: flatten a point of a chain into one image.
 *
 * The output format comes from --format or OUT's extension: .vhd makes a
 * dynamic VHD (dynamic-vhd.c), .vhdx a dynamic VHDX (dynamic-vhdx.c; 32 MiB
 * blocks, or 2 MiB with --block-size 2M; the source's logical sector
 * size), anything else is raw.  The disk is walked in 2 MiB chunks; a
 * chunk the resolved map says holds no data (holes, zero ranges) is
 * skipped without a read; a chunk with data is read through map_read by a
 * reader thread, up to RING chunks ahead, while the main thread writes the
 * chunks in order, sparsely (reading and writing overlap, as in qemu-img):
 * raw output skips all-zero 4 KiB pieces (the file was sized with
 * ftruncate, so they read as zeros), VHD output leaves all-zero blocks
 * unallocated, VHDX output leaves blocks no non-zero byte reaches
 * NOT_PRESENT and all-zero 4 KiB pieces of the others unwritten.  The
 * progress bar counts data bytes.
 *
 * OUT is created exclusively unless --force; a chain file is never a valid
 * OUT; a failed convert removes OUT.  Like cp, nbdcopy and qemu-img, the
 * data is left to the page cache; --flush syncs it before exiting.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>

#include "cli.h"
#include "dynamic-vhd.h"
#include "dynamic-vhdx.h"
#include "io.h"

#define CHUNK DVHD_BLOCK_SIZE
#define RING  4                 /* chunks the reader may be ahead */
#define END   UINT64_MAX

enum out_format { OUT_RAW, OUT_VHD, OUT_VHDX };

/* A chunk read ahead of the writer. */
struct slot {
  uint64_t b;                   /* chunk number, or END */
  size_t len;                   /* bytes inside the disk */
  uint64_t data;                /* data bytes in it, for the progress */
  int err;                      /* the reader failed here */
  bool full;                    /* read, not yet written */
  char *buf;                    /* CHUNK bytes */
};

struct convert {
  struct cli *cli;
  struct chain *c;
  struct map *m;
  const char *out;
  int fd;
  enum out_format fmt;
  struct dvhd *vhd;
  struct dvhdx *vhdx;
  struct progress prog;
  struct slot ring[RING];
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stop;                    /* the writer is done: the reader stops */
};

static int
parse_format (const struct cli *cli, const char *out, enum out_format *fmt)
{
  const char *f = cli->format, *dot = strrchr (out, '.');

  if (!f)
    f = dot && strcasecmp (dot, ".vhd") == 0 ? "vhd"
        : dot && strcasecmp (dot, ".vhdx") == 0 ? "vhdx" : "raw";
  if (strcmp (f, "raw") == 0) *fmt = OUT_RAW;
  else if (strcmp (f, "vhd") == 0) *fmt = OUT_VHD;
  else if (strcmp (f, "vhdx") == 0) *fmt = OUT_VHDX;
  else {
    cli_error ("convert: --format %s: expected raw, vhd or vhdx", f);
    return -EINVAL;
  }
  return 0;
}

/* Sum the data bytes of a range; *opaque is the running total. */
static int
add_data (void *opaque, uint64_t off, uint64_t len, enum extent_type t,
          int layer)
{
  if (t == EXT_DATA)
    *(uint64_t *) opaque += len;
  return 0;
}

static int
data_bytes (struct convert *cv, uint64_t off, uint64_t len, uint64_t *n)
{
  int r;

  *n = 0;
  vc_clear_error ();
  if ((r = map_extents (cv->m, off, len, add_data, n)) < 0)
    cli_core_error ();
  return r;
}

/* Raw: the file was sized with ftruncate, so zeros need no write. */
static int
write_raw (struct convert *cv, const char *buf, uint64_t off, size_t len)
{
  int r = cli_pwrite_sparse (cv->fd, buf, len, off);

  if (r < 0)
    cli_error ("%s: writing at %" PRIu64 ": %s", cv->out, off,
               strerror (-r));
  return r;
}

/* --- the reader thread ------------------------------------------------- */

static struct slot *
wait_slot (struct convert *cv, size_t i, bool full)
{
  struct slot *sl = &cv->ring[i];

  pthread_mutex_lock (&cv->lock);
  while (sl->full != full && !cv->stop)
    pthread_cond_wait (&cv->cond, &cv->lock);
  pthread_mutex_unlock (&cv->lock);
  return cv->stop && !full ? NULL : sl;
}

static void
set_slot (struct convert *cv, struct slot *sl, bool full)
{
  pthread_mutex_lock (&cv->lock);
  sl->full = full;
  pthread_cond_broadcast (&cv->cond);
  pthread_mutex_unlock (&cv->lock);
}

/* Read chunk b (which holds n data bytes) into sl. */
static int
read_chunk (struct convert *cv, struct slot *sl, uint64_t b, uint64_t n)
{
  uint64_t off = b * CHUNK, size = map_size (cv->m);
  int r;

  sl->b = b;
  sl->len = size - off < CHUNK ? size - off : CHUNK;
  sl->data = n;
  memset (sl->buf + sl->len, 0, CHUNK - sl->len);
  if ((r = map_read (cv->m, sl->buf, sl->len, off)) < 0)
    cli_error ("%s: reading %zu bytes at %" PRIu64 ": %s",
               cv->c->layers[0]->path, sl->len, off, strerror (-r));
  return r;
}

/* Fill the ring with the chunks that hold data, in order; then an end
 * (or error) slot. */
static void *
reader (void *arg)
{
  struct convert *cv = arg;
  uint64_t chunks = (map_size (cv->m) + CHUNK - 1) / CHUNK, n;
  size_t i = 0;
  struct slot *sl;
  int r = 0;

  for (uint64_t b = 0; b < chunks && r == 0; b++) {
    uint64_t len = map_size (cv->m) - b * CHUNK;
    if ((r = data_bytes (cv, b * CHUNK, len < CHUNK ? len : CHUNK, &n)) == 0
        && n == 0)
      continue;
    if (!(sl = wait_slot (cv, i, false)))
      return NULL;              /* the writer stopped */
    r = sl->err = r < 0 ? r : read_chunk (cv, sl, b, n);
    set_slot (cv, sl, true);    /* data, or the error that ends it */
    i = (i + 1) % RING;
  }
  if (r == 0 && (sl = wait_slot (cv, i, false)) != NULL) {
    sl->b = END;
    set_slot (cv, sl, true);
  }
  return NULL;
}

/* --- the writer (main thread) ------------------------------------------ */

static int
write_slot (struct convert *cv, struct slot *sl)
{
  if (cv->vhdx)
    return dvhdx_write (cv->vhdx, sl->b * CHUNK, sl->buf, sl->len);
  if (!cv->vhd)
    return write_raw (cv, sl->buf, sl->b * CHUNK, sl->len);
  if (cli_all_zero (sl->buf, CHUNK))
    return 0;                   /* an unallocated block reads zeros */
  return dvhd_write_block (cv->vhd, sl->b, sl->buf);
}

static int
write_all (struct convert *cv)
{
  struct slot *sl;
  int r = 0;

  for (size_t i = 0;; i = (i + 1) % RING) {
    sl = wait_slot (cv, i, true);
    if (sl->err || sl->b == END) {
      r = sl->err;
      break;
    }
    r = write_slot (cv, sl);
    progress_add (&cv->prog, sl->data);
    set_slot (cv, sl, false);
    if (r < 0)
      break;
  }
  pthread_mutex_lock (&cv->lock);
  cv->stop = true;              /* a reader waiting for a slot returns */
  pthread_cond_broadcast (&cv->cond);
  pthread_mutex_unlock (&cv->lock);
  return r;
}

static int
start (struct convert *cv, uint64_t size)
{
  int r = 0;

  for (size_t i = 0; i < RING && r == 0; i++)
    if (!(cv->ring[i].buf = malloc (CHUNK)))
      r = -ENOMEM;
  if (r < 0)
    cli_error ("out of memory");
  else if (cv->fmt == OUT_RAW && ftruncate (cv->fd, size) == -1) {
    r = -errno;
    cli_error ("%s: setting the size: %m", cv->out);
  }
  else if (cv->fmt == OUT_VHD)
    r = dvhd_create (cv->fd, cv->out, size, &cv->vhd);
  else if (cv->fmt == OUT_VHDX)
    r = dvhdx_create (cv->fd, cv->out, size, cv->c->layers[0]->sector,
                      cv->cli->block_size ? cv->cli->block_size
                      : DVHDX_BLOCK_SIZE, &cv->vhdx);
  return r;
}

static int
copy_all (struct convert *cv)
{
  uint64_t size = map_size (cv->m), total;
  pthread_t thread;
  int r;

  if ((r = data_bytes (cv, 0, size, &total)) < 0 || (r = start (cv, size)) < 0)
    return r;
  progress_start (&cv->prog, cv->cli, "convert", total);
  if ((r = -pthread_create (&thread, NULL, reader, cv)) < 0)
    cli_error ("starting the reader thread: %s", strerror (-r));
  else {
    r = write_all (cv);
    pthread_join (thread, NULL);
  }
  progress_end (&cv->prog);
  if (r == 0 && cv->vhd)
    r = dvhd_finish (cv->vhd);
  if (r == 0 && cv->vhdx)
    r = dvhdx_finish (cv->vhdx);
  if (r == 0 && cv->cli->flush && fsync (cv->fd) == -1) {
    r = -errno;
    cli_error ("%s: fsync: %m", cv->out);
  }
  return r;
}

/* OUT: never a file of the chain, never overwritten without --force. */
static int
open_out (struct convert *cv)
{
  struct stat st;

  if (stat (cv->out, &st) == 0) {
    for (size_t i = 0; i < cv->c->depth; i++)
      if (cv->c->layers[i]->dev == st.st_dev &&
          cv->c->layers[i]->ino == st.st_ino) {
        cli_error ("%s: is a file of the chain being converted", cv->out);
        return -EEXIST;
      }
    if (!cv->cli->force) {
      cli_error ("%s: exists; refusing to overwrite it (--force does)",
                 cv->out);
      return -EEXIST;
    }
  }
  cv->fd = open (cv->out, O_WRONLY | O_CREAT | O_CLOEXEC |
                 (cv->cli->force ? O_TRUNC : O_EXCL), 0644);
  if (cv->fd == -1) {
    int err = errno;
    cli_error ("%s: creating: %s", cv->out, strerror (err));
    return -err;
  }
  return 0;
}

static int
convert_run (struct cli *cli)
{
  struct convert cv = { .cli = cli, .out = cli->args[1], .fd = -1,
                        .lock = PTHREAD_MUTEX_INITIALIZER,
                        .cond = PTHREAD_COND_INITIALIZER };
  int status = EXIT_FAIL;

  if (parse_format (cli, cv.out, &cv.fmt) < 0)
    return EXIT_USAGE;
  if (cli->block_size && cv.fmt != OUT_VHDX) {
    cli_error ("convert: --block-size: only for VHDX output");
    return EXIT_USAGE;
  }
  if (cli_open_chain (cli, cli->args[0], &cv.c) < 0)
    return EXIT_USAGE;
  if (cli_build_map (cv.c, &cv.m) == 0 && open_out (&cv) == 0) {
    if (copy_all (&cv) == 0)
      status = EXIT_OK;
    if (status != EXIT_OK)
      unlink (cv.out);
    close (cv.fd);
  }
  for (size_t i = 0; i < RING; i++)
    free (cv.ring[i].buf);
  dvhd_free (cv.vhd);
  dvhdx_free (cv.vhdx);
  map_free (cv.m);
  chain_close (cv.c);
  return status;
}

static const int convert_options[] = { OPT_FORMAT, OPT_BLOCK_SIZE, OPT_FORCE,
                                       OPT_FLUSH, 0 };

const struct command cmd_convert = {
  .name = "convert",
  .args = "TIP OUT",
  .summary = "flatten TIP into a standalone raw, dynamic VHD or VHDX image",
  .options = convert_options,
  .nargs = 2,
  .run = convert_run,
};
