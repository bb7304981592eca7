/* vhdchain(1): look at, check, make, merge and flatten VHD/VHDX chains.
 *
 *   vhdchain COMMAND [OPTIONS] ARGS...
 *
 * This file is only the dispatcher: a table of commands (each in its own
 * cmd-*.c), one table describing every option (for getopt_long and for
 * --help alike), the options every command shares (how to open a chain,
 * exactly as the plugin's parameters), and the usage text.  A command sees
 * a filled struct cli and returns its exit status (cli.h).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

extern const struct command cmd_checkpoints;   /* cmd-checkpoints.c */

static const struct command *const commands[] = {
  &cmd_info, &cmd_check, &cmd_map, &cmd_create, &cmd_merge, &cmd_changed,
  &cmd_convert, &cmd_checkpoints,
};
#define NR_COMMANDS (sizeof commands / sizeof commands[0])

struct optdesc {
  int key;
  const char *name;
  const char *arg;              /* NULL: no argument */
  const char *help;
};

static const struct optdesc optdescs[] = {
  { OPT_SEARCH, "search", "DIR",
    "also look for parents in DIR (repeatable); DIR becomes allowed" },
  { OPT_PARENT, "parent", "PATH",
    "explicit parent candidate, tried first (repeatable)" },
  { OPT_DRIVE, "drive", "C:/DIR",
    "the Linux folder standing for a Windows drive letter" },
  { OPT_NO_CONFINE, "no-confine", NULL,
    "allow parents outside the allowed folders" },
  { OPT_IGNORE_CHECKSUMS, "ignore-checksums", NULL,
    "accept bad VHD checksums and VHDX CRCs" },
  { OPT_IGNORE_ID_MISMATCH, "ignore-id-mismatch", NULL,
    "accept a parent whose identity does not match" },
  { OPT_QUIET, "quiet", NULL, "no progress bar and no summary" },
  { OPT_VERBOSE, "verbose", NULL, "debug messages on stderr" },
  { OPT_HELP, "help", NULL, "this help" },
  { OPT_JSON, "json", NULL, "output JSON" },
  { OPT_SVG, "svg", "FILE", "also draw the map as an SVG picture in FILE" },
  { OPT_INTO, "into", "ANCESTOR",
    "merge every layer from CHILD up to ANCESTOR's child into ANCESTOR" },
  { OPT_FORCE, "force", NULL, NULL },   /* help given per command */
  { OPT_DELETE, "delete", NULL,
    "delete the merged (now obsolete) layers afterwards" },
  { OPT_VERIFY, "verify", NULL,
    "compare the data and drop ranges that did not really change" },
  { OPT_FORMAT, "format", "raw|vhd|vhdx",
    "output format (default: from OUT's extension, else raw)" },
  { OPT_FLUSH, "flush", NULL, "make OUT durable (fsync) before exiting" },
  { OPT_BLOCK_SIZE, "block-size", "2M|32M",
    "VHDX output: block size (default 32M, as Windows)" },
};

static const int common_options[] = {
  OPT_SEARCH, OPT_PARENT, OPT_DRIVE, OPT_NO_CONFINE, OPT_IGNORE_CHECKSUMS,
  OPT_IGNORE_ID_MISMATCH, OPT_QUIET, OPT_VERBOSE, OPT_HELP, 0
};

static const struct optdesc *
desc (int key)
{
  for (size_t i = 0; i < sizeof optdescs / sizeof optdescs[0]; i++)
    if (optdescs[i].key == key)
      return &optdescs[i];
  abort ();
}

static void
print_option (FILE *f, int key, const char *help)
{
  const struct optdesc *d = desc (key);
  char left[64], shortopt[8] = "    ";   /* "-q, " or blanks */

  if (key < 256)
    snprintf (shortopt, sizeof shortopt, "-%c, ", key);
  snprintf (left, sizeof left, "%s--%s%s%s", shortopt, d->name,
            d->arg ? " " : "", d->arg ? d->arg : "");
  fprintf (f, "  %-28s %s\n", left, help ? help : d->help);
}

static void
print_common (FILE *f)
{
  fputs ("\nOptions for every command (as the plugin's parameters):\n", f);
  for (const int *o = common_options; *o; o++)
    print_option (f, *o, NULL);
}

static void
usage (FILE *f)
{
  fputs ("Usage: vhdchain COMMAND [OPTIONS] ARGS...\n"
         "Look at, check, make, merge and flatten Hyper-V VHD/VHDX "
         "differencing chains.\n\nCommands:\n", f);
  for (size_t i = 0; i < NR_COMMANDS; i++) {
    char left[64];
    snprintf (left, sizeof left, "%s %s", commands[i]->name,
              commands[i]->args);
    fprintf (f, "  %-22s %s\n", left, commands[i]->summary);
  }
  print_common (f);
  fputs ("  -V, --version                vhdchain's version\n"
         "\n'vhdchain COMMAND --help' shows a command's own options.\n"
         "Exit status: 0 success; 1 failure (check: problems found); "
         "2 bad usage,\nor an input that cannot be opened.  "
         "See vhdchain(1).\n", f);
}

/* Per-command help text for options whose meaning depends on it. */
static const char *
command_help (const struct command *cmd, int key)
{
  if (key == OPT_FORCE && strcmp (cmd->name, "merge") == 0)
    return "merge even though other files in the folders depend on it";
  if (key == OPT_FORCE)
    return "overwrite OUT if it exists";
  if (key == OPT_JSON && strcmp (cmd->name, "changed") == 0)
    return "output JSON (the default; accepted for symmetry)";
  return NULL;
}

static void
command_usage (FILE *f, const struct command *cmd)
{
  fprintf (f, "Usage: vhdchain %s [OPTIONS] %s\n%c%s.\n", cmd->name,
           cmd->args, toupper ((unsigned char) cmd->summary[0]),
           cmd->summary + 1);
  if (cmd->options[0]) {
    fputs ("\nOptions:\n", f);
    for (const int *o = cmd->options; *o; o++)
      print_option (f, *o, command_help (cmd, *o));
  }
  print_common (f);
}

/* --- parsing ----------------------------------------------------------- */

static int
list_add (char ***list, size_t *n, char *value)
{
  char **l = realloc (*list, (*n + 1) * sizeof *l);

  if (!l) {
    cli_error ("out of memory");
    return -ENOMEM;
  }
  l[(*n)++] = value;
  *list = l;
  return 0;
}

/* --drive C:/DIR, as the plugin's drive= parameter. */
static int
add_drive (struct cli *cli, char *value)
{
  struct drive_map *d;
  char letter = value[0] & ~0x20;

  if (letter < 'A' || letter > 'Z' || value[1] != ':' || value[2] == '\0') {
    cli_error ("--drive %s: expected LETTER:/linux/folder, e.g. "
               "--drive C:/mnt/windows", value);
    return -EINVAL;
  }
  d = realloc (cli->chain.drives, (cli->chain.nr_drives + 1) * sizeof *d);
  if (!d) {
    cli_error ("out of memory");
    return -ENOMEM;
  }
  d[cli->chain.nr_drives++] = (struct drive_map) { letter, value + 2 };
  cli->chain.drives = d;
  return 0;
}

/* --block-size 2M|32M (also in bytes, or 2MiB / 32MiB). */
static int
parse_block_size (struct cli *cli, const char *arg)
{
  static const struct { const char *name; uint32_t size; } sizes[] = {
    { "2M", 2u << 20 }, { "2MiB", 2u << 20 }, { "2097152", 2u << 20 },
    { "32M", 32u << 20 }, { "32MiB", 32u << 20 }, { "33554432", 32u << 20 },
  };

  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (strcasecmp (arg, sizes[i].name) == 0) {
      cli->block_size = sizes[i].size;
      return 0;
    }
  cli_error ("--block-size %s: expected 2M or 32M", arg);
  return -EINVAL;
}

static int
set_option (struct cli *cli, int key, char *arg)
{
  switch (key) {
  case OPT_SEARCH:
    return list_add (&cli->chain.search, &cli->chain.nr_search, arg);
  case OPT_PARENT:
    return list_add (&cli->chain.parents, &cli->chain.nr_parents, arg);
  case OPT_DRIVE: return add_drive (cli, arg);
  case OPT_NO_CONFINE: cli->chain.no_confine = true; return 0;
  case OPT_IGNORE_CHECKSUMS: cli->chain.layer.ignore_checksums = true; return 0;
  case OPT_IGNORE_ID_MISMATCH: cli->chain.ignore_id_mismatch = true; return 0;
  case OPT_QUIET: cli->quiet = true; return 0;
  case OPT_VERBOSE: cli->verbose = true; return 0;
  case OPT_JSON: cli->json = true; return 0;
  case OPT_SVG: cli->svg = arg; return 0;
  case OPT_INTO: cli->into = arg; return 0;
  case OPT_FORCE: cli->force = true; return 0;
  case OPT_DELETE: cli->delete = true; return 0;
  case OPT_VERIFY: cli->verify = true; return 0;
  case OPT_FORMAT: cli->format = arg; return 0;
  case OPT_FLUSH: cli->flush = true; return 0;
  case OPT_BLOCK_SIZE: return parse_block_size (cli, arg);
  }
  return -EINVAL;
}

/* getopt_long's table for one command: the common options and its own. */
static struct option *
long_options (const struct command *cmd)
{
  size_t n = 0, i = 0;
  struct option *o;

  for (const int *k = common_options; *k; k++) n++;
  for (const int *k = cmd->options; *k; k++) n++;
  if (!(o = calloc (n + 1, sizeof *o)))
    return NULL;
  for (const int *k = common_options; *k; k++, i++)
    o[i] = (struct option) { desc (*k)->name, desc (*k)->arg != NULL,
                             NULL, *k };
  for (const int *k = cmd->options; *k; k++, i++)
    o[i] = (struct option) { desc (*k)->name, desc (*k)->arg != NULL,
                             NULL, *k };
  return o;
}

static void
bad_option (const struct command *cmd, char **argv, int c)
{
  const char *what = argv[optind - 1];

  if (c == ':')
    cli_error ("%s: option %s needs an argument (vhdchain %s --help)",
               cmd->name, what, cmd->name);
  else if (optopt && strncmp (what, "--", 2) != 0)
    cli_error ("%s: unknown option -%c (vhdchain %s --help)", cmd->name,
               optopt, cmd->name);
  else
    cli_error ("%s: unknown option %s (vhdchain %s --help)", cmd->name,
               what, cmd->name);
}

/* Options and arguments after the command name; EXIT_OK to run, else the
 * exit status (-1 after --help). */
static int
parse (struct cli *cli, const struct command *cmd, int argc, char **argv)
{
  struct option *opts = long_options (cmd);
  int c, status = EXIT_OK;

  if (!opts) {
    cli_error ("out of memory");
    return EXIT_FAIL;
  }
  opterr = 0;
  while (status == EXIT_OK &&
         (c = getopt_long (argc, argv, ":hqv", opts, NULL)) != -1) {
    if (c == OPT_HELP) {
      command_usage (stdout, cmd);
      status = -1;
    }
    else if (c == '?' || c == ':') {
      bad_option (cmd, argv, c);
      status = EXIT_USAGE;
    }
    else if (set_option (cli, c, optarg) < 0)
      status = EXIT_USAGE;
  }
  free (opts);
  cli->args = argv + optind;
  cli->nargs = argc - optind;
  if (status == EXIT_OK && cli->nargs != cmd->nargs) {
    cli_error ("%s: expected %s, got %d argument%s (vhdchain %s --help)",
               cmd->name, cmd->args, cli->nargs, cli->nargs == 1 ? "" : "s",
               cmd->name);
    status = EXIT_USAGE;
  }
  return status;
}

static void
debug_to_stderr (const char *msg)
{
  fprintf (stderr, "vhdchain: debug: %s\n", msg);
}

int
main (int argc, char **argv)
{
  struct cli cli = { 0 };
  const struct command *cmd = NULL;
  int status;

  if (argc < 2) {
    cli_error ("no command given (vhdchain --help lists them)");
    return EXIT_USAGE;
  }
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0) {
    usage (stdout);
    return EXIT_OK;
  }
  if (strcmp (argv[1], "--version") == 0 || strcmp (argv[1], "-V") == 0) {
    printf ("vhdchain %s\n", PACKAGE_VERSION);
    return EXIT_OK;
  }
  for (size_t i = 0; i < NR_COMMANDS; i++)
    if (strcmp (argv[1], commands[i]->name) == 0)
      cmd = commands[i];
  if (!cmd) {
    cli_error ("%s: unknown command (vhdchain --help lists them)", argv[1]);
    return EXIT_USAGE;
  }
  status = parse (&cli, cmd, argc - 1, argv + 1);
  if (status == EXIT_OK) {
    if (cli.verbose)
      vc_debug_hook = debug_to_stderr;
    status = cmd->run (&cli);
  }
  else if (status < 0)
    status = EXIT_OK;
  free (cli.chain.search);
  free (cli.chain.parents);
  free (cli.chain.drives);
  return status;
}
