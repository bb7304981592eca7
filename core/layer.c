/* vhdchain core: format probing and what every format shares. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "error.h"
#include "layer.h"

int
layer_open (int fd, const char *path, const struct layer_opts *opts,
            struct layer **out)
{
  static const struct layer_opts defaults;
  struct layer *l;
  struct stat st;
  int r;

  if (!opts)
    opts = &defaults;
  if (fstat (fd, &st) == -1)
    return vc_error (errno, "%s: stat: %m", path);
  if (!S_ISREG (st.st_mode))
    return vc_error (EINVAL, "%s: not a regular file", path);

  l = calloc (1, sizeof *l);
  if (!l || !(l->path = strdup (path))) {
    free (l);
    return vc_error (ENOMEM, "%s: out of memory", path);
  }
  l->fd = fd;
  l->dev = st.st_dev;
  l->ino = st.st_ino;
  l->file_size = st.st_size;

  r = vhdx_open (l, opts);
  if (r == 0)
    r = vhd_open (l, opts);
  if (r == 0)
    r = vc_error (EINVAL, "%s: not a VHD or VHDX image "
                  "(no 'vhdxfile' signature, no 'conectix' footer)", path);
  if (r < 0) {
    l->fd = -1;                 /* the caller keeps fd on failure */
    layer_close (l);
    return r;
  }
  *out = l;
  return 0;
}

void
layer_close (struct layer *l)
{
  size_t i;

  if (!l)
    return;
  if (l->ops && l->ops->close)
    l->ops->close (l);
  if (l->fd >= 0)
    close (l->fd);
  for (i = 0; i < l->nr_hints; i++)
    free (l->hints[i].path);
  free (l->hints);
  free (l->path);
  free (l);
}

/* Read exactly count bytes; a short file is a truncated image. */
int
layer_pread (const struct layer *l, void *buf, size_t count, uint64_t offset,
             const char *what)
{
  size_t done = 0;

  if (offset > l->file_size || count > l->file_size - offset)
    return vc_error (EINVAL, "%s: %s: offset %" PRIu64 " + %zu is past the "
                     "end of the file (%" PRIu64 " bytes): truncated image",
                     l->path, what, offset, count, l->file_size);
  while (done < count) {
    ssize_t r = pread (l->fd, (char *) buf + done, count - done,
                       offset + done);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return vc_error (errno, "%s: %s: read at %" PRIu64 ": %m",
                       l->path, what, offset + done);
    if (r == 0)
      return vc_error (EIO, "%s: %s: unexpected end of file at %" PRIu64,
                       l->path, what, offset + done);
    done += r;
  }
  return 0;
}

int
layer_add_hint (struct layer *l, enum hint_kind kind, char *path)
{
  struct parent_hint *h;

  h = realloc (l->hints, (l->nr_hints + 1) * sizeof *h);
  if (!h) {
    free (path);
    return vc_error (ENOMEM, "%s: out of memory", l->path);
  }
  l->hints = h;
  h[l->nr_hints].kind = kind;
  h[l->nr_hints].path = path;
  l->nr_hints++;
  return 0;
}

const char *
hint_kind_name (enum hint_kind k)
{
  switch (k) {
  case HINT_RELATIVE: return "relative path";
  case HINT_VOLUME: return "volume path";
  case HINT_ABSOLUTE: return "absolute path";
  case HINT_URL: return "file URL";
  case HINT_NAME: return "parent name";
  }
  return "?";
}
