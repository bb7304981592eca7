/* What the C unit tests share: CHECK counts a check and says what failed
 * (file, line, message); unit_finish() prints the tally and gives the exit
 * status (1 if anything failed or nothing ran).  One test is one program,
 * so the counters can live here. */
#ifndef VHDCHAIN_UNIT_H
#define VHDCHAIN_UNIT_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (cond)                                                   \
      passed++;                                                 \
    else {                                                      \
      failed++;                                                 \
      fprintf (stderr, "FAIL %s:%d: ", __FILE__, __LINE__);     \
      fprintf (stderr, __VA_ARGS__);                            \
      fputc ('\n', stderr);                                     \
    }                                                           \
  } while (0)

#endif
