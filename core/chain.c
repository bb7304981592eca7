/* vhdchain core: opening a chain from its tip (FORMATS.md 1, 2.6, 3.9).
 *
 * Each differencing layer's parent is looked for among candidates in a
 * fixed order (explicit parent= list, then locator_candidates()).  The first
 * candidate that opens as an image of the same format whose identity is the
 * one the child expects is the parent; every other candidate is remembered
 * with the reason it was passed over, so "parent not found" can say what
 * was tried.  Files are only ever opened read-only; (st_dev, st_ino) catch
 * cycles, and the depth is bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chain.h"
#include "error.h"
#include "guid.h"

/* The reasons candidates were passed over, as one growing line. */
struct tried {
  char *text;
  size_t len;
};

static void
tried_add (struct tried *t, const char *path, const char *why,
           const char *reason)
{
  char *s;
  int n = asprintf (&s, "%s%s [%s]: %s", t->len ? "; " : "", path, why,
                    reason);

  if (n < 0 || t->len > 16384)  /* enough to act on; bounded */
    return;
  char *nt = realloc (t->text, t->len + n + 1);
  if (nt) {
    memcpy (nt + t->len, s, n + 1);
    t->text = nt;
    t->len += n;
  }
  free (s);
}

static void
format_id (const struct layer *l, const uint8_t *id, char *buf)
{
  if (l->format == FMT_VHDX)
    guid_format (id, buf);
  else
    for (int i = 0; i < 16; i++)
      sprintf (buf + 2 * i, "%02x", id[i]);
}

static bool
linked (const struct layer *child, const struct layer *parent)
{
  static const uint8_t zero[16];

  return memcmp (parent->id, child->parent_id, 16) == 0 ||
         (memcmp (child->parent_id2, zero, 16) != 0 &&
          memcmp (parent->id, child->parent_id2, 16) == 0);
}

static bool
in_chain (const struct chain *c, const struct layer *l)
{
  for (size_t i = 0; i < c->depth; i++)
    if (c->layers[i]->dev == l->dev && c->layers[i]->ino == l->ino)
      return true;
  return false;
}

enum verdict { PARENT, MISMATCH, OTHER };

/* Is this opened candidate the child's parent?  If not, *why says why. */
static enum verdict
judge (const struct layer *child, const struct layer *cand, char *why,
       size_t len)
{
  char want[40], have[40];

  if (cand->format != child->format) {
    snprintf (why, len, "a %s image under a %s child",
              cand->format == FMT_VHDX ? "VHDX" : "VHD",
              child->format == FMT_VHDX ? "VHDX" : "VHD");
    return OTHER;
  }
  if (cand->sector != child->sector) {
    snprintf (why, len, "logical sector size %u, the child's is %u",
              cand->sector, child->sector);
    return OTHER;
  }
  if (!linked (child, cand)) {
    format_id (child, child->parent_id, want);
    format_id (cand, cand->id, have);
    snprintf (why, len, "identity %s, the child expects %s", have, want);
    return MISMATCH;
  }
  return PARENT;
}

/* Search state for one child's parent. */
struct search {
  const struct resolver *r;
  const struct chain_opts *o;
  struct chain *c;
  struct layer *child;
  struct layer *fallback;       /* first id mismatch, for ignore-id-mismatch */
  char *fallback_how;
  struct tried tried;
};

static int
open_candidate (struct search *s, const char *path, bool explicit,
                const char *why, struct layer **out)
{
  char *real = NULL, reason[256];
  int fd, r;

  fd = explicit ? open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
                : locator_open (s->r, path, &real);
  if (explicit && fd == -1)
    fd = -errno;
  if (fd < 0) {
    if (fd == -EPERM && real)
      snprintf (reason, sizeof reason, "resolves to %s, outside the allowed "
                "folders (add search= or confine=false)", real);
    else
      snprintf (reason, sizeof reason, "%s", strerror (-fd));
    tried_add (&s->tried, path, why, reason);
    free (real);
    return fd;
  }
  vc_clear_error ();
  r = layer_open (fd, real ? real : path, &s->o->layer, out);
  free (real);
  if (r < 0) {
    tried_add (&s->tried, path, why, vc_last_error ());
    close (fd);
  }
  return r;
}

/* 1 = parent found (stored in the chain), 0 = go on, < 0 = hard error. */
static int
try_candidate (struct search *s, const char *path, bool explicit,
               const char *why)
{
  struct layer *cand;
  char reason[256], *how;

  if (open_candidate (s, path, explicit, why, &cand) < 0)
    return 0;
  switch (judge (s->child, cand, reason, sizeof reason)) {
  case PARENT:
    if (in_chain (s->c, cand)) {
      int r = vc_error (ELOOP, "%s: parent: %s is already in the chain "
                        "(the parent links form a cycle)", s->child->path,
                        cand->path);
      layer_close (cand);
      return r;
    }
    if (asprintf (&how, "%s (%s)", cand->path, why) == -1)
      how = NULL;
    s->c->layers[s->c->depth] = cand;
    s->c->found[s->c->depth++] = how;
    return 1;
  case MISMATCH:
    if (s->o->ignore_id_mismatch && !s->fallback && !in_chain (s->c, cand)) {
      s->fallback = cand;
      if (asprintf (&s->fallback_how, "%s (%s; identity mismatch ignored)",
                    cand->path, why) == -1)
        s->fallback_how = NULL;
      return 0;
    }
    /* fall through */
  default:
    tried_add (&s->tried, path, why, reason);
    layer_close (cand);
    return 0;
  }
}

static int
not_found (struct search *s)
{
  char want[40];

  format_id (s->child, s->child->parent_id, want);
  return vc_error (ENOENT, "%s: parent not found (expected identity %s); "
                   "tried: %s", s->child->path, want,
                   s->tried.text ? s->tried.text
                   : "nothing (no parent locators or name)");
}

static int
find_parent (const struct resolver *r, const struct chain_opts *o,
             struct chain *c)
{
  struct search s = { .r = r, .o = o, .c = c,
                      .child = c->layers[c->depth - 1] };
  struct candidates cand;
  int found = 0;

  for (size_t i = 0; !found && i < o->nr_parents; i++)
    found = try_candidate (&s, o->parents[i], true, "parent= option");
  if (!found && (found = locator_candidates (r, s.child, &cand)) == 0) {
    for (size_t i = 0; !found && i < cand.n; i++)
      found = try_candidate (&s, cand.path[i], false, cand.why[i]);
    candidates_free (&cand);
  }
  if (!found && s.fallback) {
    vc_debug ("%s: using %s", s.child->path, s.fallback_how);
    c->layers[c->depth] = s.fallback;
    c->found[c->depth++] = s.fallback_how;
    s.fallback = NULL;
    s.fallback_how = NULL;
    found = 1;
  }
  if (found == 0)
    found = not_found (&s);
  layer_close (s.fallback);
  free (s.fallback_how);
  free (s.tried.text);
  return found < 0 ? found : 0;
}

int
chain_open_file (const char *path, const struct layer_opts *opts,
                 struct layer **out)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY), r;

  if (fd == -1)
    return vc_error (errno, "%s: %m", path);
  r = layer_open (fd, path, opts, out);
  if (r < 0)
    close (fd);
  return r;
}

/* partial: on a failure past the tip, hand back the layers opened so far. */
static int
open_chain (const char *tip, const struct chain_opts *o, bool partial,
            struct chain **out)
{
  unsigned max = o->max_depth ? o->max_depth : CHAIN_MAX_DEPTH;
  struct resolver r;
  struct chain *c;
  int err;

  if (max > CHAIN_MAX_DEPTH)
    max = CHAIN_MAX_DEPTH;
  if (!(c = calloc (1, sizeof *c)) ||
      !(c->layers = calloc (max, sizeof *c->layers)) ||
      !(c->found = calloc (max, sizeof *c->found))) {
    chain_close (c);
    return vc_error (ENOMEM, "%s: out of memory", tip);
  }
  err = resolver_init (&r, tip, o->search, o->nr_search, o->drives,
                       o->nr_drives, !o->no_confine);
  if (err == 0 && (err = chain_open_file (tip, &o->layer, &c->layers[0])) == 0)
    c->depth = 1;
  while (err == 0 && c->layers[c->depth - 1]->differencing) {
    if (c->depth == max)
      err = vc_error (ELOOP, "%s: chain deeper than %u layers",
                      tip, max);
    else
      err = find_parent (&r, o, c);
  }
  resolver_free (&r);
  if (err && !(partial && c->depth)) {
    chain_close (c);
    return err;
  }
  *out = c;
  return err;
}

int
chain_open (const char *tip, const struct chain_opts *o, struct chain **out)
{
  return open_chain (tip, o, false, out);
}

int
chain_open_partial (const char *tip, const struct chain_opts *o,
                    struct chain **out)
{
  *out = NULL;
  return open_chain (tip, o, true, out);
}

void
chain_close (struct chain *c)
{
  if (!c)
    return;
  for (size_t i = 0; i < c->depth; i++) {
    layer_close (c->layers[i]);
    free (c->found[i]);
  }
  free (c->layers);
  free (c->found);
  free (c);
}
