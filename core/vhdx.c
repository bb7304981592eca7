/* Placeholder until the VHDX reader lands: recognise the signature only. */
#include <errno.h>
#include <string.h>
#include "error.h"
#include "layer.h"

int
vhdx_open (struct layer *l, const struct layer_opts *opts)
{
  char sig[8];
  if (l->file_size < 8 || layer_pread (l, sig, 8, 0, "file identifier") < 0
      || memcmp (sig, "vhdxfile", 8) != 0)
    return 0;
  return vc_error (ENOTSUP, "%s: VHDX is not supported yet", l->path);
}
