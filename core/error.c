/* vhdchain core: per-thread error messages, see error.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

static __thread char last_error[1024];

void (*vc_debug_hook) (const char *msg);

int
vc_error (int err, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (last_error, sizeof last_error, fmt, ap);
  va_end (ap);
  return -err;
}

const char *
vc_last_error (void)
{
  return last_error[0] ? last_error : "unknown error";
}

void
vc_clear_error (void)
{
  last_error[0] = '\0';
}

void
vc_debug (const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  if (!vc_debug_hook)
    return;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  vc_debug_hook (msg);
}
