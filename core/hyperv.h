/* vhdchain core: a copied Hyper-V VM folder read as a tree of points, each
 * the state of one checkpoint (or of "Now") and the chain tip behind it.
 *
 *   struct vm *vm;
 *   struct vm_opts o = { .chain = my_chain_opts };
 *   if (vm_open ("/mnt/MyVM", &o, &vm) < 0)
 *     fail (vc_last_error ());
 *   for (size_t i = 0; i < vm->nr_points; i++) {
 *     struct vm_point *p = &vm->points[i];
 *     ... p->name, p->id, p->parent, p->available, p->disks[d].tip ...
 *   }
 *   vm_chain_open (vm, &vm->points[i].disks[0], &my_chain_opts, &chain);
 *   vm_free (vm);
 *
 * Where the points come from (FORMATS.md section 4):
 *  - Hyper-V 2008 - 2012 R2: XML configurations, Virtual Machines/<GUID>.xml
 *    for the VM ("Now") and Snapshots/<GUID>.xml per checkpoint
 *    (hyperv-xml.c);
 *  - Hyper-V 2016+: the binary .vmcx container at the same places (vmcx.c);
 *  - no configuration at all: every disk file in the folder is opened and
 *    the files are linked into their tree by parent identity; each file is
 *    a point named after the file.
 * Both configuration formats hold the same key tree (the .vmcx key names are
 * the XML element names), so both parsers produce a struct cfg and one
 * interpreter (hyperv.c) reads names, GUIDs, times and disks from it.
 *
 * State semantics: the state of checkpoint S is the disk that became
 * read-only when S was taken, plus its ancestors, never a descendant.  The
 * AVHD(X) created at S holds the changes made after S.  A configuration
 * that records that post-checkpoint file instead (recognised by its file
 * name carrying S's GUID, as Hyper-V 2008 names it, or by its being the
 * VM's current disk) is mapped to the file's parent, which is found by
 * opening the file's chain; vm_disk.tip_rule says which rule applied.
 * A checkpoint's parent checkpoint is read from the disk linkage (the
 * nearest checkpoint whose tip lies in this tip's chain) and, where no disk
 * can be opened, from the configuration.
 *
 * Configuration disk paths are hostile text like parent locators (FORMATS.md
 * pitfall 18): they are resolved with locator.c's candidates and opened only
 * inside the VM folder, the search folders and the drive-map targets, with
 * the same case-insensitive component fallback.  A configuration records no
 * disk identity, so the most specific candidate wins: the drive map's, then
 * the one sharing the most trailing components with the recorded path,
 * then a base name in the search folders.  Chains are then opened (and
 * linkage-checked) by chain.c with the VM's own folders as search folders.
 *
 * A checkpoint whose disk (or a parent of it) is missing is listed with
 * available = false and a one-line reason; a malformed or truncated
 * configuration file fails vm_open with a one-line error naming the file.
 */
#ifndef VHDCHAIN_HYPERV_H
#define VHDCHAIN_HYPERV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "chain.h"

/* Bounds on hostile input. */
#define VM_MAX_CONFIG_SIZE   (32u << 20) /* one .xml or .vmcx file */
#define VM_MAX_POINTS        1024        /* checkpoints, or disk files */
#define VM_MAX_DISKS         256         /* drives of one configuration */
#define CFG_MAX_NODES        (1u << 18)  /* keys/elements in one file */
#define CFG_MAX_DEPTH        64
#define CFG_MAX_NAME         1024        /* key / element name, bytes */
#define CFG_MAX_TEXT         (1u << 20)  /* one value, bytes */

struct vm_opts {
  /* How chains are opened: checksums, search folders, drive map,
   * confinement, max depth, id-mismatch override.  Explicit parents
   * (parents, nr_parents) are ignored: they belong to one chain. */
  struct chain_opts chain;
  /* When the folder holds several VM configurations: the one whose GUID
   * or name this is (NULL: refuse to guess). */
  const char *select;
  /* Ignore configuration files: the tree by linkage only. */
  bool linkage_only;
};

enum vm_source { VM_SOURCE_XML, VM_SOURCE_VMCX, VM_SOURCE_LINKAGE };

/* How a disk's tip was chosen from the recorded file. */
enum vm_tip_rule {
  TIP_NONE,                     /* no tip: see problem */
  TIP_RECORDED,                 /* the recorded file is the frozen disk */
  TIP_PARENT_NAMED,             /* its parent: the file is named after S */
  TIP_PARENT_CURRENT,           /* its parent: the file is the VM's disk now */
  TIP_FILE,                     /* linkage fallback: the file itself */
};

struct vm_disk {
  char *location;               /* "IDE 0:1", "SCSI 0:3"; NULL (fallback) */
  char *recorded;               /* the path as the configuration stores it */
  char *file;                   /* the recorded path resolved here, or NULL */
  char *tip;                    /* the chain tip holding the state, or NULL */
  enum vm_tip_rule tip_rule;
  char **chain;                 /* tip's chain, tip first, base last */
  size_t depth;
  uint64_t size;                /* virtual size (0 if unavailable) */
  char *problem;                /* one line, when tip or chain is missing */
  dev_t dev;                    /* identity of tip (valid if tip) */
  ino_t ino;
};

struct vm_point {
  char *id;                     /* checkpoint GUID (lowercase, no braces);
                                   "now"; or (fallback) the file's path
                                   relative to the VM folder */
  char *name;                   /* as Hyper-V shows it; "Now"; file name */
  char *notes;                  /* properties/notes, NULL if none or empty */
  char *parent;                 /* id of the parent point, NULL: a root */
  int64_t created;              /* Unix seconds, -1 unknown */
  bool current;                 /* the "Now" point */
  char *config;                 /* its configuration file, NULL: fallback */
  bool parent_from_config;      /* parent read from the configuration */
  struct vm_disk *disks;
  size_t nr_disks;
  bool available;               /* every disk has a tip and a whole chain */
  char *problem;                /* first problem, one line, or NULL */
};

struct vm {
  char *folder;                 /* canonical VM folder */
  char *name;                   /* VM name, or the folder's base name */
  char *guid;                   /* VM GUID (lowercase), NULL if unknown */
  char *config;                 /* VM configuration file, NULL if none */
  enum vm_source source;
  /* Tree order: every parent before its children, siblings by creation
   * time then name; "Now" is a point like the others. */
  struct vm_point *points;
  size_t nr_points;
  /* Folders of the VM that chains are searched in besides the caller's
   * (the folder itself, Virtual Hard Disks, Snapshots and its
   * subfolders), canonical: vm_chain_open adds them. */
  char **search;
  size_t nr_search;
};

/* Read the VM folder at path (a folder, or a configuration file inside
 * one).  0 and *out, or -errno with a one-line message (error.h). */
int vm_open (const char *path, const struct vm_opts *, struct vm **out);
void vm_free (struct vm *);

/* The point whose id (case-insensitive, braces allowed for GUIDs) or name
 * is key; NULL if none, or if the name is ambiguous (message recorded). */
const struct vm_point *vm_find (const struct vm *, const char *key);

/* Open the chain of a disk's tip with o plus the VM's own folders as
 * search folders. */
int vm_chain_open (const struct vm *, const struct vm_disk *,
                   const struct chain_opts *o, struct chain **out);

const char *vm_source_name (enum vm_source);
const char *vm_tip_rule_name (enum vm_tip_rule);

/* The model as JSON (one object, newline-terminated). */
void vm_write_json (FILE *, const struct vm *);

/* --- configuration files (hyperv-xml.c, vmcx.c) ---------------------- */

enum cfg_type {
  CFG_NODE,                     /* children only */
  CFG_STRING,                   /* text (UTF-8) */
  CFG_INT,                      /* value (and its decimal text) */
  CFG_BOOL,                     /* value ("True" / "False") */
  CFG_BYTES,                    /* bytes, len */
  CFG_OTHER,                    /* text as stored (unknown type) */
};

struct cfg {
  char *name;
  enum cfg_type type;
  char *text;                   /* NUL-terminated, never NULL for leaves */
  int64_t value;                /* CFG_INT, CFG_BOOL */
  uint8_t *bytes;               /* CFG_BYTES */
  size_t len;
  struct cfg **kids;
  size_t nr_kids;
};

enum cfg_format { CFG_XML, CFG_VMCX };

/* Read a configuration file of either format (by its content) into its key
 * tree; the root is the "configuration" node.  -errno and a one-line
 * message naming the file if it is malformed, truncated or too large. */
int cfg_read (const char *path, enum cfg_format *fmt, struct cfg **out);
int cfg_read_xml (const char *path, const uint8_t *buf, size_t len,
                  struct cfg **out);
int cfg_read_vmcx (const char *path, const uint8_t *buf, size_t len,
                   struct cfg **out);
void cfg_free (struct cfg *);

/* The node at a '/'-separated path below c, names compared
 * case-insensitively; NULL if absent. */
const struct cfg *cfg_get (const struct cfg *c, const char *path);
/* Its text if it is a leaf, else NULL. */
const char *cfg_text (const struct cfg *c, const char *path);

/* Tree building, shared by the two parsers. */
struct cfg *cfg_new (const char *name, size_t namelen);
int cfg_add_kid (struct cfg *parent, struct cfg *kid);

#endif
