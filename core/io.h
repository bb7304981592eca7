/* vhdchain core: read engines (DESIGN.md "A read", step 3). */
#ifndef VHDCHAIN_IO_H
#define VHDCHAIN_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum io_engine { IO_AUTO, IO_URING, IO_PREAD };

struct io_seg {
  int fd;
  uint64_t off;
  size_t len;
  void *buf;
  bool direct;                  /* fd is O_DIRECT: read through a bounce */
};

/* O_DIRECT needs offsets, lengths and memory aligned to the device's
 * logical block; 4096 covers every device this meets. */
#define IO_DIRECT_ALIGN 4096

/* Choose the engine.  IO_URING fails here if this process cannot set up a
 * ring; IO_AUTO falls back to pread for good the first time any thread
 * cannot, saying so once in the debug log. */
int io_setup (enum io_engine);
const char *io_engine_name (void);

/* Read every segment completely.  A short read at end of file is -EIO
 * (a chain file shrank under us). */
int io_read (const struct io_seg *segs, size_t n);

/* pread until done; shared by the engines and the writer. */
int io_pread_full (int fd, void *buf, size_t len, uint64_t off);
int io_pwrite_full (int fd, const void *buf, size_t len, uint64_t off);

#endif
