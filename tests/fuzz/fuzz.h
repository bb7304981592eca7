/* vhdchain fuzz targets: what the targets share (fuzz-common.c).
 *
 * Every target runs the code the plugin runs on what it is given: the
 * fuzzed bytes become a real file in a private folder (under $TMPDIR, by
 * default /dev/shm), laid out next to fixed, valid files (parents, a VM
 * folder) copied there once from the fixtures folder that
 * tests/fuzz/mkcorpus.py made.  Then layer_open / chain_open (parents
 * found, confined and linkage-checked), map_build, map_extents over the
 * whole disk and map_read of every allocated run, as exports.c and
 * vhdchain.c do; the configuration targets run vm_open and each point's
 * chain.
 *
 * Besides the sanitizers, the targets check properties and abort() when
 * one fails, so libFuzzer keeps the input as a crash:
 *  - every layer of an opened chain is, by its descriptor
 *    (/proc/self/fd), a file inside the allowed folders; the fixtures
 *    plant valid parents outside them as bait;
 *  - no file is opened for writing except under the overlay folder;
 *  - ranges that map_extents calls holes or zeros read as zeros;
 *  - a fresh writable layer over the chain reads like the chain, and a
 *    sector written to it reads back.
 */
#ifndef VHDCHAIN_FUZZ_H
#define VHDCHAIN_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chain.h"
#include "map.h"

/* Largest file a fuzz input may describe: bigger ones are clipped.  Keeps
 * one execution short; the hostile-size cases live in test-hostile.py. */
#define FUZZ_MAX_FILE (64u << 20)
/* Bytes map_read may read per execution (allocated runs first). */
#define FUZZ_READ_BUDGET (2u << 20)

/* The private folder: fixtures/<name>/ copied to it at start-up.
 * Returns its path (canonical); aborts if anything is missing (a
 * missing fixture is a broken build, never a reason to fuzz nothing). */
const char *fuzz_setup (const char *fixture);
/* path inside the private folder (static buffer per call slot 0..3). */
const char *fuzz_path (int slot, const char *rel);
/* Folders a chain may take files from (canonical, NULL-terminated). */
void fuzz_allow (const char *rel);
bool fuzz_allowed (const char *real);

/* The image container (both image targets):
 *   u8  flags           FUZZ_F_*
 *   u32 file size, LE   (clipped to FUZZ_MAX_FILE)
 *   { u32 offset LE, u16 length LE, length bytes }...   until the end
 * The file is that size, zeros (a sparse file) except the segments.  So a
 * 12 MiB VHDX is a few KiB of input, and mutations land on structures
 * rather than on payload. */
enum {
  FUZZ_F_IGNORE_CHECKSUMS = 1,
  FUZZ_F_IGNORE_ID = 2,
  FUZZ_F_WRITABLE = 4,          /* also make a writable layer over it */
};
/* Write the file described by data at path; returns the flags. */
unsigned fuzz_write_image (const char *path, const uint8_t *data,
                           size_t size);
/* Write bytes as is (configuration targets). */
void fuzz_write_file (const char *path, const uint8_t *data, size_t size);

/* What the plugin does with a tip: chain_open, checks, map_build, read.
 * tmpdir: where a writable layer goes (FUZZ_F_WRITABLE). */
void fuzz_serve (const char *tip, const struct chain_opts *o, unsigned flags,
                 const char *tmpdir);
/* fuzz-vhd and fuzz-vhdx: the fixture (vm/, outside/, tmp/) set up, the
 * input written as vm/Snapshots/<tip_name> and served with C: mapped to
 * vm/. */
void fuzz_image_setup (const char *fixture, const char *tip_name);
void fuzz_image_one (const uint8_t *data, size_t size);
/* The checks and reads on an opened chain (used by fuzz_serve and the
 * configuration targets). */
void fuzz_exercise (struct chain *c, unsigned flags, const char *tmpdir,
                    const struct drive_map *drives, size_t nr_drives);
/* Abort with a message: a property failed. */
void fuzz_fail (const char *fmt, ...) __attribute__ ((noreturn,
                                                      format (printf, 1, 2)));

#endif
