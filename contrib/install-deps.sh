#!/bin/bash
# Install what vhdchain needs to build and to run its tests on Debian 12.
# Idempotent; run as root.  The product needs only the first line's -dev
# packages; the rest are the real clients and independent readers the
# tests talk to (README "Tests").
set -euo pipefail
build=(build-essential autoconf automake libtool pkg-config
       nbdkit-plugin-dev liburing-dev uuid-dev)
run=(nbdkit)
test=(libnbd-bin python3 python3-libnbd qemu-utils libvhdi-utils fio
      nbd-client fuse3 nbdfuse e2fsprogs fdisk util-linux gzip)
need=()
for p in "${build[@]}" "${run[@]}" "${test[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi
