/* Linked into the ASan build of the plugin only (tests/test-soak.py).
 *
 * nbdkit calls the plugin's unload (which frees every export, chain, map
 * and layer) and then dlcloses it; this destructor runs then, before the
 * process exits, and asks LeakSanitizer for a leak check.  The check at
 * process exit cannot be used: with the ASan runtime preloaded,
 * /usr/bin/nbdkit may deadlock in libp11-kit's destructor (freelocale
 * waits for the locale lock), so the test kills nbdkit once this line
 * has been printed. */
#include <stdio.h>
#include <sanitizer/lsan_interface.h>

__attribute__ ((destructor)) static void
leak_check_at_unload (void)
{
  int leaks = __lsan_do_recoverable_leak_check ();

  fprintf (stderr, "vhdchain-sanitize: leak check at unload: %s\n",
           leaks ? "LEAKS" : "none");
  fflush (stderr);
}
