/* Preloaded with the ASan runtime into /usr/bin/nbdkit by
 * contrib/run-tests-asan.sh; never part of the product.
 *
 * Leaks are checked when nbdkit unloads the vhdchain plugin, not at exit:
 * by then the plugin's unload has freed all it owns, while nbdkit itself
 * still holds its own memory (at exit it leaves the structure of every
 * connection still open, which is not ours to report).  The wrapper turns
 * the check at exit off.  The plugin then stays mapped (dlclose does
 * nothing), so the reports can name its functions.
 *
 * The preloads are for nbdkit only: its children (--run commands, qemu
 * started by a test) are not instrumented and must not load the runtime.
 *
 * swift_demangle exists: nbdkit links libp11-kit (through GnuTLS), whose
 * constructor calls newlocale(), which holds glibc's locale lock for
 * writing while it mallocs.  With the ASan runtime preloaded, that malloc
 * is ASan's first and initialises ASan, which looks up "swift_demangle"
 * with dlsym and clears the failure with dlerror(); dlerror translates its
 * message, taking and releasing the same lock for reading.  The release
 * ends the write lock, newlocale's own release then drives the reader
 * count negative, and the next writer (freelocale in p11-kit's destructor,
 * at exit) waits forever.  When the symbol exists, dlsym succeeds, dlerror
 * has nothing to translate and the lock is left alone.  ASan only calls it
 * for Swift symbols, which a C program never has. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sanitizer/lsan_interface.h>

__attribute__ ((constructor)) static void
not_for_children (void)
{
  unsetenv ("LD_PRELOAD");
}

int
dlclose (void *handle)
{
  struct link_map *map;

  if (dlinfo (handle, RTLD_DI_LINKMAP, &map) == 0 &&
      strstr (map->l_name, "vhdchain"))
    __lsan_do_recoverable_leak_check ();
  return 0;
}

char *swift_demangle (const char *mangled, size_t len, char *out,
                      size_t *outlen, unsigned flags);

char *
swift_demangle (const char *mangled, size_t len, char *out, size_t *outlen,
                unsigned flags)
{
  (void) mangled; (void) len; (void) out; (void) outlen; (void) flags;
  return NULL;
}
