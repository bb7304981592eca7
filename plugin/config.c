/* nbdkit-vhdchain-plugin: parameters (see vhdchain_config_help). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "error.h"
#include "vhdchain.h"

struct chain_opts chain_opts;
enum io_engine io_engine = IO_AUTO;
bool direct_io;
static char *tip, *keep, *vm_path, *checkpoint, *disk;
static struct vm *vm;

/* Append a copy of value to a string list. */
static int
list_add (char ***list, size_t *n, const char *value)
{
  char **l = realloc (*list, (*n + 1) * sizeof *l);

  if (!l) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  *list = l;
  if (!(l[*n] = strdup (value))) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  (*n)++;
  return 0;
}

/* drive=C:/path, mapping a Windows drive letter to a Linux folder. */
static int
add_drive (const char *value)
{
  struct drive_map *d;

  if (!((value[0] | 0x20) >= 'a' && (value[0] | 0x20) <= 'z') ||
      value[1] != ':' || value[2] == '\0') {
    nbdkit_error ("drive=%s: expected LETTER:/linux/folder, e.g. "
                  "drive=C:/mnt/windows", value);
    return -1;
  }
  d = realloc (chain_opts.drives, (chain_opts.nr_drives + 1) * sizeof *d);
  if (!d) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  chain_opts.drives = d;
  d[chain_opts.nr_drives].letter = value[0];
  if (!(d[chain_opts.nr_drives].path = strdup (value + 2))) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  chain_opts.nr_drives++;
  return 0;
}

static int
parse_bool (const char *value, bool *out)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1)
    return -1;
  *out = r;
  return 0;
}

static int
parse_io (const char *value)
{
  if (strcmp (value, "auto") == 0) io_engine = IO_AUTO;
  else if (strcmp (value, "uring") == 0) io_engine = IO_URING;
  else if (strcmp (value, "pread") == 0) io_engine = IO_PREAD;
  else {
    nbdkit_error ("io=%s: expected auto, uring or pread", value);
    return -1;
  }
  return 0;
}

static int
set_path (char **where, const char *key, const char *value, bool exists)
{
  free (*where);
  *where = exists ? nbdkit_realpath (value) : nbdkit_absolute_path (value);
  return *where ? 0 : -1;
}

static int
set_string (char **where, const char *value)
{
  free (*where);
  if (!(*where = strdup (value)))
    nbdkit_error ("strdup: %m");
  return *where ? 0 : -1;
}

/* vm=FOLDER: every point of the VM becomes an export. */
static int
open_vm (void)
{
  struct vm_opts o = { .chain = chain_opts };

  if (vm_open (vm_path, &o, &vm) < 0) {
    nbdkit_error ("%s", vc_last_error ());
    return -1;
  }
  return exports_add_vm (vm, checkpoint, disk, keep);
}

int
vhdchain_config (const char *key, const char *value)
{
  bool b = false;

  if (strcmp (key, "file") == 0)
    return set_path (&tip, key, value, true);
  if (strcmp (key, "overlay") == 0)
    return set_path (&keep, key, value, false);
  if (strcmp (key, "vm") == 0)
    return set_path (&vm_path, key, value, true);
  if (strcmp (key, "checkpoint") == 0)
    return set_string (&checkpoint, value);
  if (strcmp (key, "disk") == 0)
    return set_string (&disk, value);
  if (strcmp (key, "search") == 0)
    return list_add (&chain_opts.search, &chain_opts.nr_search, value);
  if (strcmp (key, "parent") == 0)
    return list_add (&chain_opts.parents, &chain_opts.nr_parents, value);
  if (strcmp (key, "drive") == 0)
    return add_drive (value);
  if (strcmp (key, "confine") == 0) {
    int r = parse_bool (value, &b);
    chain_opts.no_confine = !b;
    return r;
  }
  if (strcmp (key, "ignore-checksums") == 0)
    return parse_bool (value, &chain_opts.layer.ignore_checksums);
  if (strcmp (key, "ignore-id-mismatch") == 0)
    return parse_bool (value, &chain_opts.ignore_id_mismatch);
  if (strcmp (key, "io") == 0)
    return parse_io (value);
  if (strcmp (key, "direct") == 0)
    return parse_bool (value, &direct_io);
  nbdkit_error ("unknown parameter '%s' (see nbdkit vhdchain --help)", key);
  return -1;
}

int
vhdchain_config_complete (void)
{
  if (!tip == !vm_path) {
    nbdkit_error ("give either file=TIP (the chain's tip: a .vhd, .avhd, "
                  ".vhdx or .avhdx file) or vm=FOLDER (a Hyper-V VM folder)");
    return -1;
  }
  if ((checkpoint || disk) && !vm_path) {
    nbdkit_error ("checkpoint= and disk= go with vm=FOLDER");
    return -1;
  }
  vc_clear_error ();
  if (io_setup (io_engine) < 0) {
    nbdkit_error ("%s", vc_last_error ());
    return -1;
  }
  if ((vm_path ? open_vm () : exports_add ("", tip, tip, keep, NULL) ? 0 : -1)
      < 0 || exports_open () < 0)
    return -1;
  nbdkit_debug ("read engine %s", io_engine_name ());
  return 0;
}

void
config_free (void)
{
  exports_free ();
  vm_free (vm);
  free (tip);
  free (keep);
  free (vm_path);
  free (checkpoint);
  free (disk);
  for (size_t i = 0; i < chain_opts.nr_parents; i++)
    free (chain_opts.parents[i]);
  for (size_t i = 0; i < chain_opts.nr_search; i++)
    free (chain_opts.search[i]);
  for (size_t i = 0; i < chain_opts.nr_drives; i++)
    free (chain_opts.drives[i].path);
  free (chain_opts.parents);
  free (chain_opts.search);
  free (chain_opts.drives);
}
