/* nbdkit-vhdchain-plugin: what the plugin's files share. */
#ifndef VHDCHAIN_PLUGIN_H
#define VHDCHAIN_PLUGIN_H

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>

#include "chain.h"
#include "hyperv.h"
#include "io.h"
#include "map.h"
#include "overlay.h"

/* One NBD export: a point of a chain, opened at start-up. */
struct export {
  char *name;                   /* "" is the default export */
  char *alias;                  /* also accepted: a checkpoint GUID */
  char *description;
  char *tip;                    /* NULL when unavailable */
  const struct vm *vm;          /* a VM folder's point: opened through it */
  const struct vm_disk *disk;
  char *unavailable;            /* why it cannot be served, or NULL */
  struct chain *chain;
  struct map *map;
  char *keep;                   /* overlay=PATH, or NULL: temporary */
  struct overlay *_Atomic overlay;      /* made by the first writer */
  pthread_mutex_t lock;
};

/* config.c: the parameters. */
extern struct chain_opts chain_opts;
extern enum io_engine io_engine;
extern bool direct_io;
int vhdchain_config (const char *key, const char *value);
int vhdchain_config_complete (void);
void config_free (void);
#define vhdchain_config_help \
  "file=TIP                 the chain's tip: .vhd .avhd .vhdx .avhdx\n" \
  "search=DIR               folder to look for parents in (repeatable)\n" \
  "parent=PATH              explicit parent candidate, tried first (repeatable)\n" \
  "drive=C:/DIR             Linux folder standing for a Windows drive letter\n" \
  "confine=false            allow parents outside the allowed folders\n" \
  "ignore-checksums=true    accept bad VHD checksums and VHDX CRCs\n" \
  "ignore-id-mismatch=true  accept a parent whose identity does not match\n" \
  "io=auto|uring|pread      read engine (default auto: io_uring, else pread)\n" \
  "direct=true              read the chain with O_DIRECT (no page cache)\n" \
  "overlay=PATH             keep the writable layer at PATH (default: a\n" \
  "                         temporary file in $TMPDIR or /var/tmp); an\n" \
  "                         existing child of the tip at PATH is continued\n" \
  "vm=FOLDER                a Hyper-V VM folder: one export per checkpoint\n" \
  "checkpoint=NAME|GUID     with vm=: the default export (default: Now)\n" \
  "disk=LOCATION|FILE       with vm=: which disk (\"IDE 0:0\", file name)"

/* exports.c: the set of exports; vm-exports.c: those of a VM folder. */
struct export *exports_add (const char *name, const char *description,
                            const char *tip, const char *keep,
                            const char *unavailable);
void exports_set_default (const char *name);
int exports_add_vm (const struct vm *, const char *checkpoint,
                    const char *disk, const char *keep);
int exports_open (void);
struct export *exports_find (const char *name);
int export_make_writable (struct export *);
int exports_list (struct nbdkit_exports *);
const char *exports_default (void);
void exports_free (void);

#endif
