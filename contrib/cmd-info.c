/* vhdchain info TIP: the chain from TIP to its base.
 *
 * For each file, tip first: format and type, virtual size (and for VHD the
 * size CHS-trusting readers such as QEMU report), block and sector size,
 * identity, the parent identity it records and how its parent was found,
 * the parent hints it carries, and what it holds: allocated bytes (blocks
 * with file space), present bytes (sectors this file provides, from the
 * sector bitmaps) and zero bytes (VHDX ZERO blocks).  Everything comes
 * through the layer interface, so VHD and VHDX are described alike.
 * --json prints the same as one object for scripts.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "vhd.h"

struct usage {
  uint64_t allocated, present, zero;
};

static int
count_range (void *opaque, uint64_t off, uint64_t len, enum block_state st)
{
  struct usage *u = opaque;

  if (st == BLK_ZERO)
    u->zero += len;
  else
    u->present += len;
  return 0;
}

/* Allocated: blocks with file space, even those whose bitmap is empty. */
static int
count_block (void *opaque, uint64_t b, enum block_state st, uint64_t off)
{
  uint64_t *blocks = opaque;

  if (st != BLK_ZERO)
    (*blocks)++;
  return 0;
}

static int
layer_usage (struct layer *l, struct usage *u)
{
  uint64_t blocks = 0;

  *u = (struct usage) { 0 };
  vc_clear_error ();
  if (l->ops->walk (l, count_block, &blocks) < 0 ||
      cli_layer_ranges (l, l->size, count_range, u) < 0) {
    cli_core_error ();
    return -1;
  }
  u->allocated = blocks * l->block_size;
  return 0;
}

static uint64_t
chs_size (const struct layer *l)
{
  struct vhd_layout lo;

  if (l->format != FMT_VHD)
    return l->size;
  vhd_layout (l, &lo);
  return lo.chs_size;
}

static void
print_text_layer (const struct chain *c, size_t i, const struct usage *u)
{
  const struct layer *l = c->layers[i];
  char id[40], h[32];

  printf ("%s%s\n", i ? "\n" : "", l->path);
  printf ("  format:         %s %s\n", l->format == FMT_VHDX ? "VHDX" : "VHD",
          l->type);
  cli_human (l->size, h);
  printf ("  virtual size:   %" PRIu64 " (%s)", l->size, h);
  if (l->format == FMT_VHD && chs_size (l) != l->size)
    printf ("; CHS size %" PRIu64, chs_size (l));
  printf ("\n  block size:     %" PRIu32 "\n  sector size:    %" PRIu32 "\n",
          l->block_size, l->sector);
  cli_format_id (l, l->id, id);
  printf ("  identity:       %s\n  creator:        %s\n", id, l->creator);
  if (l->differencing) {
    cli_format_id (l, l->parent_id, id);
    printf ("  parent id:      %s\n", id);
  }
  for (size_t k = 0; k < l->nr_hints; k++)
    printf ("  parent hint:    %s: %s\n", hint_kind_name (l->hints[k].kind),
            l->hints[k].path);
  if (i + 1 < c->depth)
    printf ("  parent:         %s\n", c->found[i + 1] ? c->found[i + 1]
            : c->layers[i + 1]->path);
  printf ("  file size:      %" PRIu64 "\n  allocated:      %" PRIu64
          "\n  present:        %" PRIu64 "\n", l->file_size, u->allocated,
          u->present);
  if (u->zero)
    printf ("  zero:           %" PRIu64 "\n", u->zero);
}

/* chain.c records "PATH (how)": the how. */
static const char *
found_by (const struct chain *c, size_t i)
{
  static char how[512];
  const char *f = c->found[i], *p = c->layers[i]->path;
  size_t n = strlen (p), len;

  if (!f)
    return NULL;
  if (strncmp (f, p, n) != 0 || strncmp (f + n, " (", 2) != 0 ||
      (len = strlen (f + n + 2)) == 0 || f[n + 2 + len - 1] != ')')
    return f;
  snprintf (how, sizeof how, "%.*s", (int) len - 1, f + n + 2);
  return how;
}

static void
json_field (const char *name, const char *value, bool comma)
{
  printf ("      \"%s\": ", name);
  if (value)
    json_string (stdout, value);
  else
    fputs ("null", stdout);
  fputs (comma ? ",\n" : "\n", stdout);
}

static void
print_json_hints (const struct layer *l)
{
  printf ("      \"parent_hints\": [");
  for (size_t k = 0; k < l->nr_hints; k++) {
    printf ("%s{\"kind\": ", k ? ", " : "");
    json_string (stdout, hint_kind_name (l->hints[k].kind));
    printf (", \"path\": ");
    json_string (stdout, l->hints[k].path);
    printf ("}");
  }
  printf ("],\n");
}

static void
print_json_layer (const struct chain *c, size_t i, const struct usage *u)
{
  const struct layer *l = c->layers[i];
  char id[40], pid[40];

  cli_format_id (l, l->id, id);
  cli_format_id (l, l->parent_id, pid);
  printf ("    {\n      \"index\": %zu,\n", i);
  json_field ("path", l->path, true);
  json_field ("format", l->format == FMT_VHDX ? "vhdx" : "vhd", true);
  json_field ("type", l->type, true);
  printf ("      \"size\": %" PRIu64 ",\n      \"chs_size\": %" PRIu64 ",\n"
          "      \"block_size\": %" PRIu32 ",\n      \"sector_size\": %"
          PRIu32 ",\n", l->size, chs_size (l), l->block_size, l->sector);
  json_field ("id", id, true);
  json_field ("parent_id", l->differencing ? pid : NULL, true);
  json_field ("parent", i + 1 < c->depth ? c->layers[i + 1]->path : NULL,
              true);
  json_field ("parent_found_by", i + 1 < c->depth ? found_by (c, i + 1)
              : NULL, true);
  print_json_hints (l);
  json_field ("creator", l->creator, true);
  printf ("      \"file_size\": %" PRIu64 ",\n      \"allocated\": %" PRIu64
          ",\n      \"present\": %" PRIu64 ",\n      \"zero\": %" PRIu64
          "\n    }%s\n", l->file_size, u->allocated, u->present, u->zero,
          i + 1 < c->depth ? "," : "");
}

static int
info_run (struct cli *cli)
{
  struct chain *c;
  struct usage u;
  int status = EXIT_OK;

  if (cli_open_chain (cli, cli->args[0], &c) < 0)
    return EXIT_USAGE;
  if (cli->json) {
    printf ("{\n  \"tip\": ");
    json_string (stdout, c->layers[0]->path);
    printf (",\n  \"size\": %" PRIu64 ",\n  \"depth\": %zu,\n"
            "  \"layers\": [\n", c->layers[0]->size, c->depth);
  }
  for (size_t i = 0; i < c->depth && status == EXIT_OK; i++) {
    if (layer_usage (c->layers[i], &u) < 0)
      status = EXIT_FAIL;
    else if (cli->json)
      print_json_layer (c, i, &u);
    else
      print_text_layer (c, i, &u);
  }
  if (cli->json && status == EXIT_OK)
    printf ("  ]\n}\n");
  chain_close (c);
  return status;
}

static const int info_options[] = { OPT_JSON, 0 };

const struct command cmd_info = {
  .name = "info",
  .args = "TIP",
  .summary = "the chain from TIP to its base: files, sizes, identities",
  .options = info_options,
  .nargs = 1,
  .run = info_run,
};
