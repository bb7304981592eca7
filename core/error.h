/* vhdchain core: error and debug reporting.
 *
 * Core functions return -errno.  When they fail because of something a user
 * must hear about (a malformed field, a missing parent), they first record a
 * one-line message with vc_error(); the caller (the nbdkit plugin or the
 * command-line tool) prints it with vc_last_error().  The message is kept per
 * thread, so concurrent opens never mix their messages.
 */
#ifndef VHDCHAIN_ERROR_H
#define VHDCHAIN_ERROR_H

#include <errno.h>

#define VC_PRINTF(a, b) __attribute__((format (printf, a, b)))

/* Record the current thread's error message.  Returns -err so a failing
 * function can say:  return vc_error (EINVAL, "%s: footer: bad cookie", p);
 */
int vc_error (int err, const char *fmt, ...) VC_PRINTF (2, 3);
const char *vc_last_error (void);
void vc_clear_error (void);

/* Debug messages go wherever the user of core/ points them (nbdkit_debug in
 * the plugin, stderr with -v in the tool); by default nowhere.
 */
extern void (*vc_debug_hook) (const char *msg);
void vc_debug (const char *fmt, ...) VC_PRINTF (1, 2);

#endif
