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
      nbd-client fuse3 e2fsprogs fdisk util-linux gzip
      qemu-system-x86 linux-image-amd64 busybox-static extlinux
      syslinux-common kmod systemd)
# Issue 8 (tests/fuzz/README.md): libFuzzer and the ASan/UBSan runtimes
# ship in libclang-rt-14-dev, gcc's TSan runtime in libtsan2; strace
# watches what nbdkit opens (test-hostile.py); nbdfuse (in libnbd-bin),
# fuse3 and e2fsprogs make the failing disk of test-io-errors.py.
test+=(clang-14 libclang-rt-14-dev libtsan2 strace)
# make check-asan (contrib/run-tests-asan.sh): gcc's ASan and UBSan
# runtimes, and git to copy the tracked sources to its build tree.
test+=(libasan8 libubsan1 git)
need=()
for p in "${build[@]}" "${run[@]}" "${test[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # The boot test makes its own initramfs: skip the kernel package's.
    export INITRD=No
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi
