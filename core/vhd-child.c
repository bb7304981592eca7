/* vhdchain core: a VHD differencing child that we write (FORMATS.md 2.7,
 * 2.8).
 *
 * Layout: footer copy at 0, dynamic header at 512, locator payloads (W2ku,
 * W2ru, MacX) from 1536, the BAT 4 KiB aligned, then blocks appended at the
 * end with their data 4 KiB aligned and the sector bitmap just before it,
 * like Windows, and the footer last.
 *
 * alloc() only moves the footer to the new end of the file: the new block
 * reads as a hole (an all-zero bitmap, so a crash shows the parent) until
 * commit() writes its bitmap and BAT entry, after overlay.c has synced the
 * data.  The in-memory BAT here mirrors what is on disk, so a BAT sector is
 * always written from committed entries only.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "byteorder.h"
#include "child.h"
#include "error.h"
#include "io.h"
#include "utf16.h"
#include "vhd.h"

#define CHILD_BLOCK   (UINT32_C (2) << 20)
#define BAT_UNUSED    UINT32_C (0xFFFFFFFF)
#define ALIGN(x, a)   (((x) + (a) - 1) / (a) * (a))

struct vhd_child {
  uint8_t footer[VHD_FOOTER_SIZE];
  uint64_t bat_off;
  uint32_t bitmap_size;
  uint64_t eof;                 /* where the trailing footer starts */
  uint32_t *bat;                /* as on disk (host order) */
};

static int
write_footer (struct child *c, uint64_t off)
{
  struct vhd_child *v = c->priv;
  int r = io_pwrite_full (c->fd, v->footer, VHD_FOOTER_SIZE, off);

  return r < 0 ? vc_error (-r, "writing the footer at %" PRIu64 ": %s",
                           off, strerror (-r)) : 0;
}

static int
vhd_child_alloc (struct child *c, uint64_t block, uint64_t *data_off)
{
  struct vhd_child *v = c->priv;
  uint64_t data = ALIGN (v->eof + v->bitmap_size, 4096);
  uint64_t end = data + c->block_size;
  int r;

  /* The footer first: a crash now leaves orphan space, nothing else. */
  if ((r = write_footer (c, end)) < 0)
    return r;
  v->eof = end;
  *data_off = data;
  return 0;
}

static int
write_bat_sector (struct child *c, uint64_t first)
{
  struct vhd_child *v = c->priv;
  uint8_t sec[512];

  memset (sec, 0xFF, sizeof sec);
  for (uint64_t i = 0; i < 128 && first + i < c->nr_blocks; i++)
    put_be32 (sec + 4 * i, v->bat[first + i]);
  return io_pwrite_full (c->fd, sec, 512, v->bat_off + first * 4);
}

static int
vhd_child_commit (struct child *c, const struct child_dirty *d, size_t n)
{
  struct vhd_child *v = c->priv;
  size_t nbits = c->block_size / 512 / 8;
  uint8_t *disk = calloc (1, v->bitmap_size);
  uint64_t last_sector = UINT64_MAX;
  int r = disk ? 0 : -ENOMEM;

  for (size_t i = 0; i < n && r == 0; i++) {
    vhd_bitmap_flip (disk, d[i].bits, nbits);
    r = io_pwrite_full (c->fd, disk, v->bitmap_size,
                        d[i].data_off - v->bitmap_size);
    v->bat[d[i].block] = (d[i].data_off - v->bitmap_size) / 512;
  }
  /* d is in block order, so each BAT sector is written once. */
  for (size_t i = 0; i < n && r == 0; i++)
    if (d[i].block / 128 != last_sector) {
      last_sector = d[i].block / 128;
      r = write_bat_sector (c, last_sector * 128);
    }
  free (disk);
  return r < 0 ? vc_error (-r, "writing bitmaps and BAT: %s", strerror (-r))
               : 0;
}

static void
vhd_child_close (struct child *c)
{
  struct vhd_child *v = c->priv;

  free (v->bat);
  free (v);
}

static const struct child_ops vhd_child_ops = {
  .alloc = vhd_child_alloc,
  .commit = vhd_child_commit,
  .close = vhd_child_close,
};

/* "file:///a%20b": MacX locator for the exact Linux path. */
static char *
file_url (const char *path)
{
  char *s = malloc (strlen (path) * 3 + 8), *o;

  if (!s)
    return NULL;
  o = stpcpy (s, "file://");
  for (const char *p = path; *p; p++) {
    if (*p == '%' || *p == ' ')
      o += sprintf (o, "%%%02X", *p);
    else
      *o++ = *p;
  }
  *o = '\0';
  return s;
}

struct payload { uint32_t code; uint8_t data[8192]; long len; };

/* The three locators: code, payload bytes. */
static int
make_locators (const struct parent_ref *p, const char *child_path,
               struct payload loc[3])
{
  char *rel = child_relative_path (child_path, p->path);
  char *abs = child_absolute_path (p->path, p->drives, p->nr_drives);
  char *url = file_url (p->path);
  int r = rel && abs && url ? 0 : -ENOMEM;

  loc[0].code = 0x57326B75;     /* W2ku */
  loc[1].code = 0x57327275;     /* W2ru */
  loc[2].code = 0x4D616358;     /* MacX */
  if (r == 0 &&
      ((loc[0].len = utf8_to_utf16 (abs, false, loc[0].data, 8192)) < 0 ||
       (loc[1].len = utf8_to_utf16 (rel, false, loc[1].data, 8192)) < 0 ||
       (loc[2].len = strlen (url)) > 8192))
    r = -ENAMETOOLONG;
  if (r == 0)
    memcpy (loc[2].data, url, loc[2].len);
  free (rel);
  free (abs);
  free (url);
  return r;
}

static uint32_t
parent_timestamp (const struct layer *parent)
{
  struct stat st;

  if (fstat (parent->fd, &st) == -1 || st.st_mtime < VHD_EPOCH)
    return 0;
  return st.st_mtime - VHD_EPOCH;
}

static struct vhd_child *
new_state (struct child *c, uint64_t size, uint32_t block_size)
{
  struct vhd_child *v = calloc (1, sizeof *v);

  c->ops = &vhd_child_ops;
  c->size = size;
  c->sector = 512;
  c->block_size = block_size;
  c->nr_blocks = (size + block_size - 1) / block_size;
  c->priv = v;
  if (v && !(v->bat = malloc (c->nr_blocks * sizeof *v->bat))) {
    free (v);
    return NULL;
  }
  if (v)
    v->bitmap_size = ALIGN (block_size / 512 / 8, 512);
  return v;
}

/* Header (at 512) and locator payloads (from 1536) into img; returns the
 * BAT offset. */
static uint64_t
make_header (uint8_t *img, const struct parent_ref *p, const struct child *c,
             const struct payload loc[3])
{
  uint8_t *h = img + VHD_FOOTER_SIZE;
  const char *base = strrchr (p->path, '/') + 1;
  uint64_t off = VHD_FOOTER_SIZE + VHD_HEADER_SIZE, bat_off;

  memcpy (h, "cxsparse", 8);
  put_be64 (h + 8, UINT64_MAX);
  put_be32 (h + 24, 0x00010000);
  put_be32 (h + 28, c->nr_blocks);
  put_be32 (h + 32, c->block_size);
  memcpy (h + 40, p->layer->id, 16);
  put_be32 (h + 56, parent_timestamp (p->layer));
  if (utf8_to_utf16 (base, true, h + 64, 510) < 0)
    memset (h + 64, 0, 512);    /* too long a name: the locators suffice */
  for (int i = 0; i < 3; i++) {
    uint8_t *e = h + 576 + 24 * i;
    uint32_t space = ALIGN (loc[i].len, 512);
    put_be32 (e, loc[i].code);
    put_be32 (e + 4, space);    /* in bytes, as Windows writes it */
    put_be32 (e + 8, loc[i].len);
    put_be64 (e + 16, off);
    memcpy (img + off, loc[i].data, loc[i].len);
    off += space;
  }
  bat_off = ALIGN (off, 4096);
  put_be64 (h + 16, bat_off);
  put_be32 (h + 36, vhd_checksum (h, VHD_HEADER_SIZE, 36));
  return bat_off;
}

int
vhd_child_create (int fd, const char *path, const struct parent_ref *p,
                  struct child **out)
{
  struct child *c = calloc (1, sizeof *c);
  struct vhd_child *v = c ? new_state (c, p->layer->size, CHILD_BLOCK) : NULL;
  struct vhd_layout pl;
  struct payload loc[3];
  uint8_t *img = NULL;
  int r = v ? make_locators (p, path, loc) : -ENOMEM;

  vhd_layout (p->layer, &pl);
  if (r == 0) {
    uint64_t room = VHD_FOOTER_SIZE + VHD_HEADER_SIZE + 3 * 8192 + 4096 +
                    ALIGN (c->nr_blocks * 4, 4096);
    r = (img = calloc (1, room)) ? 0 : -ENOMEM;
  }
  if (r == 0) {
    c->fd = fd;
    vhd_make_footer (v->footer, 4, p->layer->size, pl.chs);
    memcpy (img, v->footer, VHD_FOOTER_SIZE);
    v->bat_off = make_header (img, p, c, loc);
    memset (img + v->bat_off, 0xFF, c->nr_blocks * 4);
    memset (v->bat, 0xFF, c->nr_blocks * sizeof *v->bat);
    v->eof = ALIGN (v->bat_off + c->nr_blocks * 4, 4096);
    r = io_pwrite_full (fd, img, v->eof, 0);
  }
  if (r == 0 && (r = write_footer (c, v->eof)) == 0 && fsync (fd) == -1)
    r = -errno;
  free (img);
  if (r < 0) {
    if (v)
      vhd_child_close (c);
    free (c);
    return r == -ENOMEM || r == -ENAMETOOLONG
      ? vc_error (-r, "%s: creating the child: %s", path, strerror (-r))
      : vc_error (-r, "%s: writing the new child: %s", path, strerror (-r));
  }
  *out = c;
  return 0;
}

static int
load_entry (void *opaque, uint64_t b, enum block_state st, uint64_t data_off)
{
  struct child *c = opaque;
  struct vhd_child *v = c->priv;

  v->bat[b] = (data_off - v->bitmap_size) / 512;
  return 0;
}

int
vhd_child_attach (int fd, struct layer *l, struct child **out)
{
  struct child *c = calloc (1, sizeof *c);
  struct vhd_child *v = c ? new_state (c, l->size, l->block_size) : NULL;
  struct vhd_layout pl;
  int r = v ? 0 : -ENOMEM;

  if (r == 0) {
    vhd_layout (l, &pl);
    c->fd = fd;
    v->bat_off = pl.bat_off;
    v->eof = pl.data_end;
    memset (v->bat, 0xFF, c->nr_blocks * sizeof *v->bat);
    r = layer_pread (l, v->footer, VHD_FOOTER_SIZE,
                     pl.data_end == l->file_size ? 0 : pl.data_end, "footer");
  }
  if (r == 0)
    r = l->ops->walk (l, load_entry, c);
  if (r < 0) {
    if (v)
      vhd_child_close (c);
    free (c);
    return r == -ENOMEM ? vc_error (ENOMEM, "%s: out of memory", l->path) : r;
  }
  *out = c;
  return 0;
}
