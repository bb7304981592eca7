/* vhdchain checkpoints VMFOLDER: a copied Hyper-V VM folder as its
 * checkpoint tree (core/hyperv.h).
 *
 * Each point (every checkpoint, and "Now") with its name, GUID, creation
 * time, and for each of its disks the controller location, the file that
 * holds its state (the tip) and the chain of files behind it, tip first.
 * Indentation shows the tree.  A point whose disk or a parent of it is
 * missing is marked UNAVAILABLE with the reason.  Without configuration
 * files the disk files are linked by parent identity, one point per file.
 * Paths inside the VM folder are shown relative to it.  --json prints the
 * model as one object (vm_write_json).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "hyperv.h"

static const char *
rel (const struct vm *vm, const char *path)
{
  size_t n = strlen (vm->folder);

  if (path && strncmp (path, vm->folder, n) == 0 && path[n] == '/')
    return path + n + 1;
  return path ? path : "?";
}

static size_t
depth_of (const struct vm *vm, const struct vm_point *p)
{
  size_t d = 0;

  while (p->parent && d < vm->nr_points) {
    const struct vm_point *q = NULL;
    for (size_t i = 0; !q && i < vm->nr_points; i++)
      if (strcmp (vm->points[i].id, p->parent) == 0)
        q = &vm->points[i];
    if (!q)
      break;
    p = q;
    d++;
  }
  return d;
}

static const char *
source_text (enum vm_source s)
{
  switch (s) {
  case VM_SOURCE_XML: return "XML configuration (Hyper-V 2008 - 2012 R2)";
  case VM_SOURCE_VMCX: return "VMCX configuration (Hyper-V 2016 and later)";
  case VM_SOURCE_LINKAGE: return "no configuration: disk files linked by "
                                 "parent identity";
  }
  return "?";
}

static const char *
rule_text (enum vm_tip_rule r)
{
  switch (r) {
  case TIP_PARENT_NAMED:
    return "the parent of the recorded file, which is named after the "
           "checkpoint and holds the changes made after it";
  case TIP_PARENT_CURRENT:
    return "the parent of the recorded file, which is the VM's current disk";
  default:
    return NULL;
  }
}

static void
print_text (const struct vm *vm)
{
  printf ("%s", vm->name);
  if (vm->guid)
    printf (" (VM %s)", vm->guid);
  printf (" in %s\nfrom %s%s%s\n", vm->folder, source_text (vm->source),
          vm->config ? ": " : "", vm->config ? rel (vm, vm->config) : "");
  for (size_t i = 0; i < vm->nr_points; i++) {
    const struct vm_point *p = &vm->points[i];
    size_t ind = 2 * depth_of (vm, p);

    if (!p->config) {
      /* Without configuration: the file is the point. */
      const struct vm_disk *d = p->nr_disks ? &p->disks[0] : NULL;
      char h[32] = "";
      if (d && d->tip)
        cli_human (d->size, h);
      printf ("%s%*s- %s%s%s%s\n", i ? "" : "\n", (int) ind, "", p->id,
              *h ? " (" : "", h, *h ? ")" : "");
      if (!p->available)
        printf ("%*s  UNAVAILABLE: %s\n", (int) ind, "",
                p->problem ? p->problem : "?");
      else if (d && d->depth > 1) {
        printf ("%*s    chain:", (int) ind, "");
        for (size_t c = 0; c < d->depth; c++)
          printf ("%s %s", c ? " <-" : "", rel (vm, d->chain[c]));
        putchar ('\n');
      }
      continue;
    }
    printf ("\n%*s- %s", (int) ind, "", p->name);
    if (!p->current && strcmp (p->id, p->name) != 0)
      printf ("  [%s]", p->id);
    if (p->created >= 0) {
      char buf[64];
      time_t t = p->created;
      struct tm tm;
      gmtime_r (&t, &tm);
      strftime (buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
      printf ("  %s", buf);
    }
    if (p->parent_from_config)
      printf ("  (parent as the configuration says)");
    putchar ('\n');
    if (!p->available)
      printf ("%*s  UNAVAILABLE: %s\n", (int) ind, "",
              p->problem ? p->problem : "?");
    for (size_t k = 0; k < p->nr_disks; k++) {
      const struct vm_disk *d = &p->disks[k];
      const char *why = rule_text (d->tip_rule);
      char h[32];

      printf ("%*s  %s%s", (int) ind, "", d->location ? d->location : "",
              d->location ? ": " : "");
      if (d->tip) {
        cli_human (d->size, h);
        printf ("%s (%s)\n", rel (vm, d->tip), h);
      }
      else
        printf ("no state file (recorded: %s)\n",
                d->recorded ? d->recorded : rel (vm, d->file));
      if (why)
        printf ("%*s    state: %s (recorded: %s)\n", (int) ind, "", why,
                rel (vm, d->file));
      if (d->depth) {
        printf ("%*s    chain:", (int) ind, "");
        for (size_t c = 0; c < d->depth; c++)
          printf ("%s %s", c ? " <-" : "", rel (vm, d->chain[c]));
        putchar ('\n');
      }
    }
  }
}

static int
checkpoints_run (struct cli *cli)
{
  struct vm_opts o = { .chain = cli->chain };
  struct vm *vm;

  vc_clear_error ();
  if (vm_open (cli->args[0], &o, &vm) < 0) {
    cli_core_error ();
    return EXIT_USAGE;
  }
  if (cli->json)
    vm_write_json (stdout, vm);
  else
    print_text (vm);
  vm_free (vm);
  return fflush (stdout) == 0 ? EXIT_OK : EXIT_FAIL;
}

static const int checkpoints_options[] = { OPT_JSON, 0 };

const struct command cmd_checkpoints = {
  .name = "checkpoints",
  .args = "VMFOLDER",
  .summary = "the checkpoint tree of a copied Hyper-V VM folder: names, "
             "times, the files behind each",
  .options = checkpoints_options,
  .nargs = 1,
  .run = checkpoints_run,
};
