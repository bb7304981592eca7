/* vhdchain map TIP: which layer provides each range of the virtual disk.
 *
 * The ranges are the resolved map's extents (map_extents), the same the
 * plugin answers NBD block status with: data (with the index and file of
 * the layer that holds it), zero (a layer says zero) or hole (no layer has
 * it; reads zeros).  Text by default, --json for scripts.
 *
 * --svg FILE draws the disk as a grid of cells, left to right and top to
 * bottom.  Each cell stands for an equal slice of the disk and is split into
 * vertical bands in proportion to what provides its bytes, one colour per
 * layer (legend below, with each layer's share); hovering a cell names its
 * range and owners.  One look shows how fragmented a chain is and where
 * each checkpoint wrote.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define COLUMNS   64
#define MAX_CELLS 4096
#define CELL_PX   12

/* Per cell, bytes per class: layers 0 .. depth-1, then zero, then hole. */
struct grid {
  const struct chain *c;
  uint64_t size, cell;          /* bytes per cell */
  size_t cells, classes;
  uint64_t *bytes;              /* cells x classes */
  uint64_t *total;              /* per class */
};

struct mapper {
  const struct cli *cli;
  const struct chain *c;
  struct grid *g;               /* NULL without --svg */
  bool first;
};

static const char *
type_name (enum extent_type t)
{
  return t == EXT_DATA ? "data" : t == EXT_ZERO ? "zero" : "hole";
}

static void
grid_add (struct grid *g, uint64_t off, uint64_t len, size_t cls)
{
  g->total[cls] += len;
  while (len) {
    size_t cell = off / g->cell;
    uint64_t n = (cell + 1) * g->cell - off;
    if (n > len)
      n = len;
    g->bytes[cell * g->classes + cls] += n;
    off += n;
    len -= n;
  }
}

static int
print_extent (void *opaque, uint64_t off, uint64_t len, enum extent_type t,
              int layer)
{
  struct mapper *mp = opaque;
  const char *file = t == EXT_DATA ? mp->c->layers[layer]->path : NULL;

  if (mp->g)
    grid_add (mp->g, off, len, t == EXT_DATA ? (size_t) layer
              : mp->c->depth + (t == EXT_ZERO ? 0 : 1));
  if (!mp->cli->json) {
    char idx[16] = "-";
    if (t == EXT_DATA)
      snprintf (idx, sizeof idx, "%d", layer);
    printf ("%16" PRIu64 " %16" PRIu64 "  %-4s  %5s  %s\n", off, len,
            type_name (t), idx, file ? file : "-");
    return 0;
  }
  printf ("%s  {\"offset\": %" PRIu64 ", \"length\": %" PRIu64
          ", \"type\": \"%s\", \"layer\": ", mp->first ? "" : ",\n", off,
          len, type_name (t));
  if (file) {
    printf ("%d, \"file\": ", layer);
    json_string (stdout, file);
  }
  else
    printf ("null, \"file\": null");
  printf ("}");
  mp->first = false;
  return 0;
}

/* --- SVG --------------------------------------------------------------- */

static int
grid_init (struct grid *g, const struct chain *c)
{
  uint64_t size = c->layers[0]->size;

  g->c = c;
  g->size = size;
  g->cell = (size + MAX_CELLS - 1) / MAX_CELLS;
  g->cell = (g->cell + 511) / 512 * 512;
  g->cells = (size + g->cell - 1) / g->cell;
  g->classes = c->depth + 2;
  g->bytes = calloc (g->cells * g->classes, sizeof *g->bytes);
  g->total = calloc (g->classes, sizeof *g->total);
  if (!g->bytes || !g->total) {
    cli_error ("out of memory for the picture");
    return -ENOMEM;
  }
  return 0;
}

static void
colour (const struct grid *g, size_t cls, char buf[32])
{
  static const char *const palette[] = {
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
  };

  if (cls == g->c->depth)
    snprintf (buf, 32, "#ffffff");              /* zero */
  else if (cls == g->c->depth + 1)
    snprintf (buf, 32, "#e8e8e8");              /* hole */
  else if (cls < 10)
    snprintf (buf, 32, "%s", palette[cls]);
  else
    snprintf (buf, 32, "hsl(%u,65%%,50%%)",
              (unsigned) (cls * 137508 / 1000 % 360));  /* golden angle */
}

static const char *
class_name (const struct grid *g, size_t cls)
{
  return cls == g->c->depth ? "zero" : cls == g->c->depth + 1 ? "hole"
         : g->c->layers[cls]->path;
}

/* One cell: a hover title and one band per class it holds. */
static void
svg_cell (FILE *f, const struct grid *g, size_t i)
{
  uint64_t start = i * g->cell, len = g->size - start < g->cell
                   ? g->size - start : g->cell;
  double x = 10 + (double) (i % COLUMNS) * CELL_PX, y = 40 + (double) (i /
             COLUMNS) * CELL_PX, w = CELL_PX - 1;
  char fill[32];

  fprintf (f, "<g><title>%" PRIu64 "-%" PRIu64 ":", start, start + len);
  for (size_t k = 0; k < g->classes; k++)
    if (g->bytes[i * g->classes + k]) {
      fprintf (f, " ");
      xml_string (f, class_name (g, k));
      fprintf (f, " %.0f%%;", 100.0 * g->bytes[i * g->classes + k] / len);
    }
  fprintf (f, "</title>");
  for (size_t k = 0; k < g->classes; k++) {
    double bw = w * g->bytes[i * g->classes + k] / len;
    if (bw <= 0)
      continue;
    colour (g, k, fill);
    fprintf (f, "<rect x=\"%.2f\" y=\"%.0f\" width=\"%.2f\" height=\"%.0f\""
             " fill=\"%s\"/>", x, y, bw, w, fill);
    x += bw;
  }
  fprintf (f, "</g>\n");
}

static void
svg_legend (FILE *f, const struct grid *g, double y)
{
  char fill[32], h[32];

  for (size_t k = 0; k < g->classes; k++) {
    if (!g->total[k])
      continue;
    colour (g, k, fill);
    cli_human (g->total[k], h);
    fprintf (f, "<rect x=\"10\" y=\"%.0f\" width=\"12\" height=\"12\" "
             "fill=\"%s\" stroke=\"#999\"/><text x=\"28\" y=\"%.0f\">",
             y, fill, y + 10);
    if (k < g->c->depth)
      fprintf (f, "layer %zu: ", k);
    xml_string (f, class_name (g, k));
    fprintf (f, " — %s (%.1f%%)</text>\n", h, 100.0 * g->total[k] / g->size);
    y += 18;
  }
}

static int
write_svg (const char *path, const struct grid *g)
{
  size_t rows = (g->cells + COLUMNS - 1) / COLUMNS, shown = 0;
  double legend_y = 40 + rows * CELL_PX + 16;
  char h[32], c1[32];
  FILE *f = fopen (path, "w");

  if (!f) {
    int err = errno;
    cli_error ("%s: --svg: %s", path, strerror (err));
    return -err;
  }
  for (size_t k = 0; k < g->classes; k++)
    shown += g->total[k] != 0;
  cli_human (g->size, h);
  cli_human (g->cell, c1);
  fprintf (f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns="
           "\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\" "
           "font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" "
           "y=\"20\" font-size=\"14\">", 20 + COLUMNS * CELL_PX + 500,
           legend_y + 18 * shown + 10);
  xml_string (f, g->c->layers[0]->path);
  fprintf (f, "</text>\n<text x=\"10\" y=\"34\">%s, %zu layer%s, %s per "
           "cell</text>\n", h, g->c->depth, g->c->depth == 1 ? "" : "s", c1);
  for (size_t i = 0; i < g->cells; i++)
    svg_cell (f, g, i);
  svg_legend (f, g, legend_y);
  fprintf (f, "</svg>\n");
  if (fclose (f) == EOF) {
    int err = errno;
    cli_error ("%s: --svg: writing: %s", path, strerror (err));
    return -err;
  }
  return 0;
}

static int
map_run (struct cli *cli)
{
  struct chain *c;
  struct map *m = NULL;
  struct grid g = { 0 };
  struct mapper mp = { cli, NULL, NULL, true };
  int status = EXIT_USAGE, r;

  if (cli_open_chain (cli, cli->args[0], &c) < 0)
    return EXIT_USAGE;
  mp.c = c;
  if (cli_build_map (c, &m) == 0) {
    status = EXIT_FAIL;
    if (!cli->svg || grid_init (&g, c) == 0) {
      mp.g = cli->svg ? &g : NULL;
      if (cli->json)
        printf ("[\n");
      else
        printf ("%16s %16s  %-4s  %5s  %s\n", "offset", "length", "type",
                "layer", "file");
      vc_clear_error ();
      r = map_extents (m, 0, map_size (m), print_extent, &mp);
      if (r < 0)
        cli_core_error ();
      if (cli->json)
        printf ("%s]\n", mp.first ? "" : "\n");
      if (r == 0 && (!cli->svg || write_svg (cli->svg, &g) == 0))
        status = EXIT_OK;
    }
  }
  free (g.bytes);
  free (g.total);
  map_free (m);
  chain_close (c);
  return status;
}

static const int map_options[] = { OPT_JSON, OPT_SVG, 0 };

const struct command cmd_map = {
  .name = "map",
  .args = "TIP",
  .summary = "which layer provides each range of the virtual disk",
  .options = map_options,
  .nargs = 1,
  .run = map_run,
};
