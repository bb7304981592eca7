/* vhdchain check TIP: every structure, checksum, block table entry, sector
 * bitmap and link of the chain from TIP to its base.
 *
 * The chain is opened leniently (checksums and identities not enforced) so
 * that one problem does not hide the others, and as far as it goes
 * (chain_open_partial): a missing parent is listed and the layers above it
 * are still checked.  Opening validates each file's structures (core/vhd.c,
 * core/vhdx.c: headers, tables, every BAT entry inside the file and no two
 * structures overlapping); on top of that each file is checked for what a
 * lenient open lets pass, and each link for identity and size.
 *
 * Each problem is one line on stdout, "error: FILE: field: problem" or
 * "warning: ...", then a summary.  The split follows what Hyper-V and
 * vhdchain do with the file (vhdchain(1) lists every check):
 *  - error: a strict open refuses it or data would read wrong: a checksum
 *    or CRC in use that is wrong, a malformed or overlapping structure, an
 *    unreadable bitmap, a parent that is missing or whose identity does
 *    not match, mixed formats or sector sizes.  --ignore-checksums and
 *    --ignore-id-mismatch turn those two kinds into warnings;
 *  - warning: the data reads right but the file is not as Windows writes
 *    it: a lost or damaged trailing footer while the copy at 0 serves, a
 *    footer copy that is missing, damaged or different, the saved-state
 *    flag, allocated blocks with empty bitmaps or bits past the end, space
 *    before the footer no block uses (an interrupted write or merge), a
 *    child whose size differs from its parent's; for VHDX, one of the two
 *    headers damaged, or a log not yet replayed into the file.
 * Exit status: 0 no errors (warnings allowed), 1 errors, 2 TIP cannot be
 * opened as a file (or bad usage).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "byteorder.h"
#include "cli.h"
#include "guid.h"
#include "vhd.h"
#include "vhdx.h"

struct report {
  const struct cli *cli;
  int errors, warnings;
  int checksums;                /* checksum problems said for this file */
};

static void VC_PRINTF (3, 4)
problem (struct report *rp, bool error, const char *fmt, ...)
{
  va_list ap;

  printf ("%s: ", error ? "error" : "warning");
  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  putchar ('\n');
  if (error)
    rp->errors++;
  else
    rp->warnings++;
}

/* A wrong checksum: an error unless --ignore-checksums. */
static void
bad_checksum (struct report *rp, const struct layer *l, const char *what,
              uint32_t stored, uint32_t computed)
{
  rp->checksums++;
  problem (rp, !rp->cli->chain.layer.ignore_checksums, "%s: %s: checksum "
           "mismatch (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 ")",
           l->path, what, stored, computed);
}

/* --- every format: blocks and bitmaps ------------------------------------ */

struct blocks {
  struct report *rp;
  struct layer *l;
  uint8_t *bits;
  uint64_t empty, past_end;     /* counts, said once each */
  uint64_t first_empty;
};

static int
check_block (void *opaque, uint64_t b, enum block_state st, uint64_t off)
{
  struct blocks *bk = opaque;
  struct layer *l = bk->l;
  size_t n = l->block_size / l->sector / 8;
  uint64_t in = l->size - b * l->block_size;   /* sectors inside the disk */
  size_t i;

  if (st != BLK_PARTIAL)
    return 0;
  vc_clear_error ();
  if (l->ops->bitmap (l, b, off, bk->bits) < 0) {
    problem (bk->rp, true, "%s", vc_last_error ());
    return 0;
  }
  for (i = 0; i < n && bk->bits[i] == 0; i++)
    ;
  if (i == n && bk->empty++ == 0)
    bk->first_empty = b;
  in = in >= l->block_size ? l->block_size / l->sector : in / l->sector;
  for (uint64_t s = in; s < n * 8; s++)
    if (bk->bits[s >> 3] >> (s & 7) & 1) {
      bk->past_end++;
      break;
    }
  return 0;
}

static void
check_blocks (struct report *rp, struct layer *l)
{
  struct blocks bk = { .rp = rp, .l = l,
                       .bits = malloc (l->block_size / l->sector / 8) };

  vc_clear_error ();
  if (!bk.bits || l->ops->walk (l, check_block, &bk) < 0)
    problem (rp, true, "%s", bk.bits ? vc_last_error () : "out of memory");
  if (bk.empty)
    problem (rp, false, "%s: block %" PRIu64 ": allocated with an empty "
             "sector bitmap (%" PRIu64 " such block%s: wasted space)",
             l->path, bk.first_empty, bk.empty, bk.empty == 1 ? "" : "s");
  if (bk.past_end)
    problem (rp, false, "%s: sector bitmap: the last block marks sectors "
             "past the virtual end", l->path);
  free (bk.bits);
}

/* --- VHD: what a lenient open lets pass -------------------------------- */

static bool
footer_ok (const uint8_t *f)
{
  return memcmp (f, "conectix", 8) == 0 &&
         vhd_checksum (f, VHD_FOOTER_SIZE, 64) == get_be32 (f + 64);
}

static void
check_copy (struct report *rp, const struct layer *l, const uint8_t *head,
            const uint8_t *tail)
{
  if (memcmp (head, "conectix", 8) != 0)
    problem (rp, false, "%s: footer copy at 0: missing", l->path);
  else if (!footer_ok (head))
    problem (rp, false, "%s: footer copy at 0: checksum mismatch", l->path);
  else if (memcmp (head, tail, VHD_FOOTER_SIZE) != 0)
    problem (rp, false, "%s: footer copy at 0: differs from the trailing "
             "footer", l->path);
}

/* Both footers; returns the one in use (as core/vhd.c chooses). */
static const uint8_t *
check_footers (struct report *rp, const struct layer *l,
               const struct vhd_layout *lo, uint8_t *tail, uint8_t *head)
{
  uint64_t tail_len = l->file_size - lo->data_end;      /* 512, 511 or 0 */
  bool sparse = lo->bat_entries != 0, tail_ok, head_ok;

  memset (tail, 0, VHD_FOOTER_SIZE);
  memset (head, 0, VHD_FOOTER_SIZE);
  if ((tail_len && layer_pread (l, tail, tail_len, lo->data_end,
                                "footer") < 0) ||
      (sparse && layer_pread (l, head, VHD_FOOTER_SIZE, 0, "footer") < 0))
    problem (rp, true, "%s", vc_last_error ());
  tail_ok = tail_len && footer_ok (tail);
  head_ok = sparse && footer_ok (head);
  if (tail_len == VHD_FOOTER_SIZE - 1)
    problem (rp, false, "%s: footer: 511 bytes long (a Virtual PC image "
             "from before 2004)", l->path);
  if (!tail_len)
    problem (rp, false, "%s: footer: missing at the end of the file; the "
             "copy at offset 0 stands in", l->path);
  else if (!tail_ok && head_ok)
    problem (rp, false, "%s: footer: checksum mismatch; the copy at offset "
             "0 stands in", l->path);
  else if (!tail_ok)
    bad_checksum (rp, l, "footer", get_be32 (tail + 64),
                  vhd_checksum (tail, VHD_FOOTER_SIZE, 64));
  if (!tail_len && !head_ok)
    bad_checksum (rp, l, "footer copy at 0", get_be32 (head + 64),
                  vhd_checksum (head, VHD_FOOTER_SIZE, 64));
  if (sparse && tail_ok)
    check_copy (rp, l, head, tail);
  return tail_ok || (tail_len && !head_ok) ? tail : head;
}

/* The end of the last structure the file uses, for orphan space. */
struct ends { struct layer *l; uint64_t end; };

static int
block_end (void *opaque, uint64_t b, enum block_state st, uint64_t off)
{
  struct ends *e = opaque;

  if (off + e->l->block_size > e->end)
    e->end = off + e->l->block_size;
  return 0;
}

static void
check_orphans (struct report *rp, struct layer *l,
               const struct vhd_layout *lo, const uint8_t *hdr)
{
  struct ends e = { l, lo->bat_off + (uint64_t) lo->bat_entries * 4 };

  for (int i = 0; i < 8; i++) {
    const uint8_t *loc = hdr + 576 + 24 * i;
    uint64_t stop = get_be64 (loc + 16) + get_be32 (loc + 8);
    if (get_be32 (loc) != 0 && stop > e.end)
      e.end = stop;
  }
  if (l->ops->walk (l, block_end, &e) == 0 && lo->data_end > e.end &&
      lo->data_end - e.end >= l->block_size)
    problem (rp, false, "%s: %" PRIu64 " bytes before the footer belong to "
             "no block (an interrupted write or merge left them)", l->path,
             lo->data_end - e.end);
}

static void
check_vhd (struct report *rp, struct layer *l)
{
  uint8_t tail[VHD_FOOTER_SIZE], head[VHD_FOOTER_SIZE], hdr[VHD_HEADER_SIZE];
  struct vhd_layout lo;
  const uint8_t *f;

  vhd_layout (l, &lo);
  f = check_footers (rp, l, &lo, tail, head);
  if (f[84])
    problem (rp, false, "%s: footer: the saved-state flag is set (a VM "
             "was saved with this disk)", l->path);
  if (lo.bat_entries == 0)
    return;                     /* fixed: no more structures */
  vc_clear_error ();
  if (layer_pread (l, hdr, VHD_HEADER_SIZE, get_be64 (f + 16),
                   "dynamic header") < 0) {
    problem (rp, true, "%s", vc_last_error ());
    return;
  }
  if (vhd_checksum (hdr, VHD_HEADER_SIZE, 36) != get_be32 (hdr + 36))
    bad_checksum (rp, l, "dynamic header", get_be32 (hdr + 36),
                  vhd_checksum (hdr, VHD_HEADER_SIZE, 36));
  if (get_be64 (hdr + 8) != UINT64_MAX)
    problem (rp, false, "%s: dynamic header: data offset is 0x%" PRIx64
             ", not all ones", l->path, get_be64 (hdr + 8));
  check_orphans (rp, l, &lo, hdr);
}

/* --- VHDX: what a lenient open lets pass ------------------------------- */

/* Header i (0, 1) if it is valid. */
static bool
vhdx_header (struct layer *l, int i, struct vhdx_header *h)
{
  uint8_t buf[VHDX_HEADER_SIZE];

  if (layer_pread (l, buf, sizeof buf, i ? VHDX_HEADER2_OFF
                   : VHDX_HEADER1_OFF, "header") < 0 ||
      !vhdx_checksum_ok (buf, sizeof buf))
    return false;
  vhdx_header_decode (buf, h);
  return h->signature_ok;
}

static void
check_vhdx (struct report *rp, struct layer *l)
{
  struct vhdx_header h[2];
  bool ok[2] = { vhdx_header (l, 0, &h[0]), vhdx_header (l, 1, &h[1]) };
  char guid[40];
  int cur;

  if (ok[0] != ok[1])
    problem (rp, false, "%s: header %d: damaged; header %d stands in",
             l->path, ok[0] ? 2 : 1, ok[0] ? 1 : 2);
  if (!ok[0] && !ok[1])
    return;                     /* the lenient open said it all */
  cur = ok[0] && ok[1] ? h[1].seq > h[0].seq : ok[1];
  if (!guid_is_zero (h[cur].log_guid)) {
    guid_format (h[cur].log_guid, guid);
    problem (rp, false, "%s: log: updates not yet applied to the file "
             "(LogGuid %s); vhdchain replays them in memory, Hyper-V on "
             "its next writable open", l->path, guid);
  }
}

/* --- files and links --------------------------------------------------- */

/* One file: its own structures, then its blocks. */
static void
check_file (struct report *rp, struct layer *l)
{
  struct layer_opts strict = { .ignore_checksums = false };
  struct layer *s;

  rp->checksums = 0;
  if (l->format == FMT_VHD)
    check_vhd (rp, l);
  else
    check_vhdx (rp, l);
  /* What the lenient open forgave and the checks above did not say (VHDX
   * CRCs, or anything new in core/): the strict open's message. */
  vc_clear_error ();
  if (chain_open_file (l->path, &strict, &s) == 0)
    layer_close (s);
  else if (rp->checksums == 0)
    problem (rp, !rp->cli->chain.layer.ignore_checksums ||
             l->format == FMT_VHD, "%s", vc_last_error ());
  check_blocks (rp, l);
}

static bool
linked (const struct layer *child, const struct layer *parent)
{
  static const uint8_t zero[16];

  return memcmp (child->parent_id, parent->id, 16) == 0 ||
         (memcmp (child->parent_id2, zero, 16) != 0 &&
          memcmp (child->parent_id2, parent->id, 16) == 0);
}

static void
check_link (struct report *rp, const struct layer *child,
            const struct layer *parent)
{
  char want[40], have[40];

  if (!linked (child, parent)) {
    cli_format_id (child, child->parent_id, want);
    cli_format_id (parent, parent->id, have);
    problem (rp, !rp->cli->chain.ignore_id_mismatch, "%s: parent: %s has "
             "identity %s, the child expects %s", child->path, parent->path,
             have, want);
  }
  if (child->size != parent->size)
    problem (rp, false, "%s: size: %" PRIu64 " bytes, its parent %s has %"
             PRIu64 "%s", child->path, child->size, parent->path,
             parent->size, child->size > parent->size
             ? " (the rest reads zeros)" : "");
}

static int
check_run (struct cli *cli)
{
  struct chain_opts lax = cli->chain;
  struct report rp = { .cli = cli };
  struct chain *c;
  struct stat st;
  int fd, r;

  if ((fd = open (cli->args[0], O_RDONLY | O_CLOEXEC | O_NOCTTY |
                  O_NONBLOCK)) == -1 || fstat (fd, &st) == -1) {
    cli_error ("%s: %m", cli->args[0]);
    return EXIT_USAGE;
  }
  close (fd);
  if (!S_ISREG (st.st_mode)) {
    cli_error ("%s: not a regular file", cli->args[0]);
    return EXIT_USAGE;
  }
  lax.layer.ignore_checksums = lax.ignore_id_mismatch = true;
  vc_clear_error ();
  r = chain_open_partial (cli->args[0], &lax, &c);
  if (r < 0)
    problem (&rp, true, "%s", vc_last_error ());
  for (size_t i = 0; c && i < c->depth; i++) {
    check_file (&rp, c->layers[i]);
    if (i + 1 < c->depth)
      check_link (&rp, c->layers[i], c->layers[i + 1]);
  }
  if (!cli->quiet)
    printf ("%zu file%s checked: %d error%s, %d warning%s\n",
            c ? c->depth : 1, c && c->depth != 1 ? "s" : "", rp.errors,
            rp.errors == 1 ? "" : "s", rp.warnings,
            rp.warnings == 1 ? "" : "s");
  chain_close (c);
  return rp.errors ? EXIT_FAIL : EXIT_OK;
}

static const int check_options[] = { 0 };

const struct command cmd_check = {
  .name = "check",
  .args = "TIP",
  .summary = "every structure and link; exit 0 clean, 1 problems found",
  .options = check_options,
  .nargs = 1,
  .run = check_run,
};
