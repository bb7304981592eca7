/* vhdchain(1): what the dispatcher (vhdchain.c) and the commands
 * (cmd-*.c) share.
 *
 * The dispatcher parses the command line into a struct cli: the options
 * every command takes (how to open a chain, --quiet, --verbose), the
 * options of the command that runs, and the remaining arguments.  A command
 * is a struct command in its own file: its name, arguments, the options it
 * takes besides the common ones, and run(), which returns the exit status.
 *
 * Inside a command, functions return 0 or -errno like core/; a failure is
 * said once, where it is detected, as one line on stderr:
 *   vhdchain: FILE: field: problem
 * (core/ records its messages with vc_error, cli_core_error prints them).
 */
#ifndef VHDCHAIN_CLI_H
#define VHDCHAIN_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "chain.h"
#include "error.h"
#include "layer.h"
#include "map.h"

/* Exit statuses (vhdchain(1) "EXIT STATUS"). */
enum {
  EXIT_OK = 0,
  EXIT_FAIL = 1,                /* the command failed; check: problems */
  EXIT_USAGE = 2,               /* bad arguments, or an input won't open */
};

/* Options.  The short ones are their letters; long-only ones follow. */
enum cli_opt {
  OPT_HELP = 'h',
  OPT_QUIET = 'q',
  OPT_VERBOSE = 'v',
  OPT_VERSION = 'V',
  OPT_SEARCH = 256,
  OPT_PARENT,
  OPT_DRIVE,
  OPT_NO_CONFINE,
  OPT_IGNORE_CHECKSUMS,
  OPT_IGNORE_ID_MISMATCH,
  OPT_JSON,
  OPT_SVG,
  OPT_INTO,
  OPT_FORCE,
  OPT_DELETE,
  OPT_VERIFY,
  OPT_FORMAT,
  OPT_FLUSH,
  OPT_BLOCK_SIZE,
};

struct cli {
  struct chain_opts chain;      /* --search, --parent, --drive, ... */
  bool quiet;                   /* no progress bar, no summary */
  bool verbose;                 /* core's debug messages on stderr */
  bool json, force, delete, verify, flush;
  const char *svg, *into, *format;
  uint32_t block_size;          /* --block-size; 0: the default */
  char **args;                  /* the arguments after the options */
  int nargs;
};

struct command {
  const char *name;
  const char *args;             /* "TIP", "PARENT CHILD" */
  const char *summary;          /* one line for the command list */
  const int *options;           /* its own OPT_*, 0-terminated */
  int nargs;                    /* exact number of arguments */
  int (*run) (struct cli *);    /* returns EXIT_* */
};

extern const struct command cmd_info, cmd_check, cmd_map, cmd_create,
  cmd_merge, cmd_changed, cmd_convert;

/* Messages: "vhdchain: " + text + newline, on stderr. */
void cli_error (const char *fmt, ...) VC_PRINTF (1, 2);
/* The message core/ recorded for the failure just returned. */
void cli_core_error (void);

/* The chain from tip with the user's options; the error is printed. */
int cli_open_chain (const struct cli *, const char *tip, struct chain **);
/* Its resolved map; the error is printed. */
int cli_build_map (struct chain *, struct map **);
/* Index of the layer of c that is the file at path; else a message is
 * printed and the result is -1 (not in c) or -2 (path does not exist). */
int cli_find_layer (const struct chain *, const char *path, const char *what);

/* Identity as text: VHD unique ids in hex, VHDX GUIDs 8-4-4-4-12. */
void cli_format_id (const struct layer *, const uint8_t *id, char buf[40]);
/* "1.5 MiB" */
void cli_human (uint64_t bytes, char buf[32]);

/* A JSON string literal of s (UTF-8; invalid bytes become U+FFFD). */
void json_string (FILE *, const char *s);
/* The same escaping for XML text and attribute values. */
void xml_string (FILE *, const char *s);

/* Every range a layer holds, from its block table and sector bitmaps, in
 * block table order: ZERO and FULL blocks whole, PARTIAL ones per run of
 * present sectors; clipped to [0, limit).  fn returns non-zero to stop. */
typedef int (*layer_range_fn) (void *opaque, uint64_t off, uint64_t len,
                               enum block_state);
int cli_layer_ranges (struct layer *, uint64_t limit, layer_range_fn,
                      void *opaque);

/* A progress bar on stderr when it is a terminal and --quiet is not set;
 * otherwise nothing.  Redrawn at most ten times a second. */
struct progress {
  const char *what;
  uint64_t total, done;
  bool on;
  long long last_ms;
};
void progress_start (struct progress *, const struct cli *, const char *what,
                     uint64_t total);
void progress_add (struct progress *, uint64_t n);
void progress_end (struct progress *);

/* Sync the folder holding path (after creating or removing a file in it). */
void cli_sync_dir (const char *path);

/* Sparse output: whether n bytes are all zero, and a write of only the
 * non-zero 4 KiB pieces of buf, merged into runs (0 or -errno). */
bool cli_all_zero (const void *p, size_t n);
int cli_pwrite_sparse (int fd, const void *buf, size_t len, uint64_t off);

#endif
