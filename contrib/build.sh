#!/bin/bash
# Configure (once) and build vhdchain in the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x configure ] || autoreconf -fi
# configure's clean-up tries "rm -f core" for core dumps; ours is a folder.
[ -f Makefile ] || ./configure --quiet 2> >(grep -v "cannot remove 'core'" >&2)
make -j"$(nproc)" --quiet
