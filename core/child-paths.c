/* vhdchain core: the parent paths a new child records (FORMATS.md 2.7,
 * 3.10): a relative path from the child's folder, as Windows writes it
 * (".\parent.vhd", "..\base\parent.vhd"), and an absolute Windows path,
 * through the user's drive map when one covers the parent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "child.h"

/* Length of the common leading folders of a and b, ending at a '/'. */
static size_t
common_dirs (const char *a, const char *b)
{
  size_t i, last = 0;

  for (i = 0; a[i] && a[i] == b[i]; i++)
    if (a[i] == '/')
      last = i + 1;
  return last;
}

char *
child_relative_path (const char *child_path, const char *parent_path)
{
  size_t common = common_dirs (child_path, parent_path), ups = 0, n;
  const char *p;
  char *s, *o;

  for (p = child_path + common; (p = strchr (p, '/')) != NULL; p++)
    ups++;
  n = 3 * ups + strlen (parent_path + common) + 3;
  if (!(s = o = malloc (n)))
    return NULL;
  if (ups == 0)
    o = stpcpy (o, ".\\");
  while (ups--)
    o = stpcpy (o, "..\\");
  for (p = parent_path + common; *p; p++)
    *o++ = *p == '/' ? '\\' : *p;
  *o = '\0';
  return s;
}

char *
child_absolute_path (const char *parent_path, const struct drive_map *d,
                     size_t n)
{
  const char *rest = parent_path, *best = NULL;
  char letter = 0, *s, *o;

  for (size_t i = 0; i < n; i++) {
    size_t len = strlen (d[i].path);
    if (strncmp (parent_path, d[i].path, len) == 0 &&
        parent_path[len] == '/' && (!best || len > strlen (best))) {
      best = d[i].path;
      letter = d[i].letter;
      rest = parent_path + len;
    }
  }
  /* Without a map the Linux path, '\'-separated: Windows reads it on the
   * current drive, vhdchain's suffix matching finds it under a root. */
  if (!(s = o = malloc (strlen (rest) + 3)))
    return NULL;
  if (letter) {
    *o++ = letter;
    *o++ = ':';
  }
  for (; *rest; rest++)
    *o++ = *rest == '/' ? '\\' : *rest;
  *o = '\0';
  return s;
}
