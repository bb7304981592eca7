/* vhdchain core: the read engines (DESIGN.md "A read", step 3).
 *
 * One segment is a plain pread loop: a syscall is as cheap as it gets.
 * Several segments go to the calling thread's own io_uring as one batch,
 * so the disk sees them at once; short reads are resubmitted for the rest.
 * The ring is created lazily in the thread that uses it (after nbdkit has
 * daemonised and started its workers) and torn down by a thread-exit key.
 * Nothing is shared between rings, so no locking is needed.  If a ring
 * cannot be set up in auto mode (seccomp, io_uring_disabled, RLIMIT_MEMLOCK)
 * every thread falls back to pread for good, and that is said once.
 *
 * With direct=true the chain is read with O_DIRECT (no page cache, for
 * streaming huge chains): each segment is widened to IO_DIRECT_ALIGN and
 * read with pread into the thread's aligned bounce buffer, from which the
 * asked-for bytes are copied.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <liburing.h>

#include "error.h"
#include "io.h"

#define RING_ENTRIES 64

static enum io_engine engine = IO_AUTO;
static atomic_bool uring_broken;
static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static __thread struct io_uring *ring;
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;
static __thread char *bounce;

#define BOUNCE_SIZE (UINT64_C (1) << 20)

int
io_pread_full (int fd, void *buf, size_t len, uint64_t off)
{
  while (len) {
    ssize_t r = pread (fd, buf, len, off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -errno;
    if (r == 0)
      return -EIO;              /* the file is shorter than its tables say */
    buf = (char *) buf + r;
    len -= r;
    off += r;
  }
  return 0;
}

int
io_pwrite_full (int fd, const void *buf, size_t len, uint64_t off)
{
  while (len) {
    ssize_t r = pwrite (fd, buf, len, off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -errno;
    buf = (const char *) buf + r;
    len -= r;
    off += r;
  }
  return 0;
}

static void
ring_destroy (void *p)
{
  io_uring_queue_exit (p);
  free (p);
}

static void
make_key (void)
{
  pthread_key_create (&ring_key, ring_destroy);
}

/* This thread's ring, or NULL if the engine is pread (now or for good). */
static struct io_uring *
get_ring (void)
{
  struct io_uring *r;
  int err;

  if (ring || engine == IO_PREAD || atomic_load (&uring_broken))
    return ring;
  pthread_once (&ring_once, make_key);
  if (!(r = malloc (sizeof *r)))
    return NULL;
  err = io_uring_queue_init (RING_ENTRIES, r, 0);
  if (err < 0) {
    free (r);
    if (!atomic_exchange (&uring_broken, true))
      vc_debug ("io_uring unavailable (%s): reading with pread",
                strerror (-err));
    return NULL;
  }
  pthread_setspecific (ring_key, r);
  return ring = r;
}

int
io_setup (enum io_engine e)
{
  struct io_uring probe;
  int err;

  engine = e;
  atomic_store (&uring_broken, false);
  if (e != IO_URING)
    return 0;
  err = io_uring_queue_init (2, &probe, 0);
  if (err < 0)
    return vc_error (-err, "io=uring: io_uring is not available here: %s "
                     "(io=auto falls back to pread)", strerror (-err));
  io_uring_queue_exit (&probe);
  return 0;
}

const char *
io_engine_name (void)
{
  return engine == IO_PREAD || atomic_load (&uring_broken) ? "pread"
                                                           : "io_uring";
}

static int
queue_read (struct io_uring *r, const struct io_seg *s, unsigned idx)
{
  struct io_uring_sqe *sqe = io_uring_get_sqe (r);

  if (!sqe)
    return -EAGAIN;             /* cannot happen: at most RING_ENTRIES live */
  io_uring_prep_read (sqe, s->fd, s->buf, s->len, s->off);
  io_uring_sqe_set_data64 (sqe, idx);
  return 0;
}

/* One completion: 1 if the segment must be queued again, else 0 / -errno. */
static int
complete (struct io_seg *s, int res)
{
  if (res == -EINTR || res == -EAGAIN)
    return 1;
  if (res == -EINVAL || res == -EOPNOTSUPP)     /* old kernel: no READ op */
    return io_pread_full (s->fd, s->buf, s->len, s->off);
  if (res < 0)
    return res;
  if (res == 0)
    return -EIO;                /* end of file inside a block */
  s->buf = (char *) s->buf + res;
  s->off += res;
  s->len -= res;
  return s->len > 0;
}

/* Up to RING_ENTRIES segments as one batch; every completion is drained
 * even after an error, so the ring is clean for the next request. */
static int
uring_batch (struct io_uring *r, const struct io_seg *segs, unsigned n)
{
  struct io_seg cur[RING_ENTRIES];
  unsigned inflight = 0;
  int err = 0;

  memcpy (cur, segs, n * sizeof *cur);
  for (unsigned i = 0; i < n; i++, inflight++)
    queue_read (r, &cur[i], i);
  while (inflight) {
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait (r, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
      return rc;                /* ring is unusable; caller falls back */
    while (io_uring_peek_cqe (r, &cqe) == 0) {
      unsigned i = io_uring_cqe_get_data64 (cqe);
      int again = complete (&cur[i], cqe->res);
      io_uring_cqe_seen (r, cqe);
      inflight--;
      if (again == 1 && err == 0 && queue_read (r, &cur[i], i) == 0)
        inflight++;
      else if (again < 0 && err == 0)
        err = again;
    }
  }
  return err;
}

static void
make_bounce_key (void)
{
  pthread_key_create (&bounce_key, free);
}

/* [s->off, s->off + s->len) through aligned reads of the bounce buffer.
 * The widened tail may run past the end of the file: only the asked-for
 * bytes must be there. */
static int
direct_read (const struct io_seg *s)
{
  uint64_t pos = s->off / IO_DIRECT_ALIGN * IO_DIRECT_ALIGN;
  uint64_t end = s->off + s->len;

  if (!bounce) {
    pthread_once (&bounce_once, make_bounce_key);
    if (posix_memalign ((void **) &bounce, IO_DIRECT_ALIGN, BOUNCE_SIZE))
      return -ENOMEM;
    pthread_setspecific (bounce_key, bounce);
  }
  while (pos < end) {
    uint64_t want = (end - pos + IO_DIRECT_ALIGN - 1) / IO_DIRECT_ALIGN *
                    IO_DIRECT_ALIGN;
    ssize_t r = pread (s->fd, bounce, want < BOUNCE_SIZE ? want : BOUNCE_SIZE,
                       pos);
    uint64_t a, b;

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -errno;
    if (r == 0 || (pos + r < end && r % IO_DIRECT_ALIGN))
      return -EIO;              /* the file ends before the data does */
    a = pos > s->off ? pos : s->off;
    b = pos + r < end ? pos + r : end;
    memcpy ((char *) s->buf + (a - s->off), bounce + (a - pos), b - a);
    pos += r;
  }
  return 0;
}

int
io_read (const struct io_seg *segs, size_t n)
{
  struct io_uring *r = n > 1 && !segs[0].direct ? get_ring () : NULL;
  int err = 0;

  if (!r) {
    for (size_t i = 0; i < n && err == 0; i++)
      err = segs[i].direct ? direct_read (&segs[i])
            : io_pread_full (segs[i].fd, segs[i].buf, segs[i].len,
                             segs[i].off);
    return err;
  }
  for (size_t i = 0; i < n && err == 0; i += RING_ENTRIES)
    err = uring_batch (r, segs + i, n - i < RING_ENTRIES ? n - i
                                                         : RING_ENTRIES);
  return err;
}
