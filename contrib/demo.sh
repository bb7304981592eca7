#!/bin/bash
# Set everything up on a fresh Debian 12 machine (as root) and serve a
# checkpoint of a small sample chain built here:
#
#   base.vhd  <- snap1.avhd  <- snap2.avhd      (ext4 file system inside)
#
# base.vhd holds the state before checkpoint 1; snap1.avhd the changes
# made after checkpoint 1, and so on.  The demo serves the state after the
# first change (tip snap1.avhd), writable, with the writes going to a
# temporary layer: the chain's files never change.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO_DIR:-/var/tmp/vhdchain-demo}
port=${PORT:-10809}
plugin=$top/plugin/.libs/nbdkit-vhdchain-plugin.so
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH

[ "$(id -u)" = 0 ] && "$top/contrib/install-deps.sh"
"$top/contrib/build.sh"

# Three states of one small file system, each a raw image.
state () {  # state N TEXT
    mkdir -p "$demo/src$1"
    echo "$2" > "$demo/src$1/hello.txt"
    seq 1 "$(( $1 * 20000 + 1 ))" > "$demo/src$1/numbers.txt"
    rm -f "$demo/state$1.raw"
    E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -d "$demo/src$1" \
        -U 2f4c6a2e-7d3b-4e59-9a0c-6b1f2d3c4e5f -E hash_seed=2f4c6a2e-7d3b-4e59-9a0c-6b1f2d3c4e5f \
        -L demo "$demo/state$1.raw" 32M
}
if [ ! -f "$demo/snap2.avhd" ]; then
    rm -rf "$demo"; mkdir -p "$demo"
    state 0 "base state"
    state 1 "after checkpoint 1"
    state 2 "after checkpoint 2"
    qemu-img convert -q -f raw -O vpc -o subformat=dynamic \
        "$demo/state0.raw" "$demo/base.vhd"
    prev=base.vhd
    for n in 1 2; do
        nbdkit -U - "$plugin" "$demo/$prev" overlay="$demo/snap$n.avhd" \
            --run "/usr/bin/python3 '$top/contrib/write-changes.py' \
                   '$demo/state$((n-1)).raw' '$demo/state$n.raw' \"\$uri\""
        prev=snap$n.avhd
    done
    rm -rf "$demo"/src* "$demo"/state*.raw
fi

pkill -F "$demo/nbdkit.pid" 2>/dev/null || true
nbdkit -P "$demo/nbdkit.pid" -p "$port" -i 127.0.0.1 \
    "$plugin" "$demo/snap1.avhd"
uri="nbd://127.0.0.1:$port"
cat <<MSG

vhdchain is serving checkpoint "snap1" of $demo
(base.vhd <- snap1.avhd; snap2.avhd is a later state and is not seen) at

    $uri

Try:
    nbdinfo $uri
    nbdinfo --map $uri
    nbdcopy $uri snap1.raw
    qemu-img convert -f raw -O qcow2 $uri snap1.qcow2
    nbdfuse /mnt/disk $uri &   # then: mount -o loop,ro /mnt/disk/nbd /mnt/fs

Writes go to a temporary layer and vanish when the server stops:
    pkill -F $demo/nbdkit.pid
MSG
