#!/bin/bash
# Build a small BIOS-bootable disk image from Debian packages only, for the
# end-to-end boot test (tests/test-e2e-boot.py).  Needs root (loop device,
# mount) and: linux-image-amd64 (or a /boot kernel with its modules),
# busybox-static, extlinux, syslinux-common, e2fsprogs, fdisk, util-linux.
#
#   build-bootdisk.sh OUTDIR      -> OUTDIR/disk.raw, OUTDIR/kernel-version
#
# disk.raw (64 MiB): an MBR (syslinux mbr.bin) with one active Linux
# partition from 1 MiB, holding an ext4 file system with extlinux in
# /boot/extlinux, the Debian kernel /boot/vmlinuz and a busybox-static
# initramfs /boot/initrd.gz, plus the state the test's checkpoints change:
#
#   /state/checkpoint      the name of the checkpoint ("base" here)
#   /state/only-base       a file that exists only at this checkpoint
#   /data/blob             2 MiB of data (checkpoints rewrite parts of it)
#   /guest/                where the guest writes a file at every boot
#
# The initramfs's /init loads the virtio, ext4 and fw_cfg modules, mounts
# /dev/vda1, compares what it finds with the checkpoint the host asked for
# (QEMU -fw_cfg name=opt/vhdchain/expect), prints "VHDCHAIN-E2E: ..."
# lines on the serial console (ttyS0), writes /guest/boot-N (with the
# host's nonce, opt/vhdchain/nonce), syncs, unmounts and powers off.
set -euo pipefail
export PATH=/usr/sbin:/sbin:/usr/bin:/bin:$PATH
out=${1:?usage: build-bootdisk.sh OUTDIR}
SIZE_MIB=64
PART_START=2048                         # sectors: 1 MiB

die () { echo "build-bootdisk: $*" >&2; exit 1; }
for t in extlinux mkfs.ext4 sfdisk losetup partx mount umount modprobe \
         gzip dd; do
    command -v "$t" >/dev/null || die "required tool missing: $t"
done
MBR=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR" ] || die "missing $MBR (package syslinux-common)"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "missing $BUSYBOX (package busybox-static)"
ldd "$BUSYBOX" >/dev/null 2>&1 &&
    die "$BUSYBOX is dynamically linked: install busybox-static"
[ "$(id -u)" = 0 ] || die "must run as root (loop device, mount)"

# The kernel: the one linux-image-amd64 depends on, else the running
# kernel's if /boot has it; its modules must be installed too.
kver=
dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null || true)
if [[ $dep =~ linux-image-([^ ,]+) ]]; then kver=${BASH_REMATCH[1]}; fi
if [ -z "$kver" ] || [ ! -f "/boot/vmlinuz-$kver" ]; then
    kver=$(uname -r)
fi
[ -f "/boot/vmlinuz-$kver" ] && [ -d "/lib/modules/$kver" ] ||
    die "no kernel: install linux-image-amd64 (tried /boot/vmlinuz-$kver)"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vhdchain-bootdisk.XXXXXX")
loop=
cleanup () {
    set +e
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null; losetup -d "$loop"; fi
    rm -rf "$work"
}
trap cleanup EXIT

# ---- the initramfs: busybox-static, the modules, /init
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,mnt,etc,lib/modules}
cp "$BUSYBOX" "$ird/bin/busybox"
: > "$ird/etc/modules"
# Modules and their dependencies in load order (CPU-specific crypto
# drivers such as crc32c-intel are left out: the generic ones suffice).
for m in virtio_pci virtio_blk ext4 crc32c_generic qemu_fw_cfg; do
    modprobe -S "$kver" --show-depends "$m" |
        sed -n 's/^insmod \([^ ]*\).*/\1/p' | grep -v '/arch/x86/crypto/'
done | awk '!seen[$0]++' | while read -r ko; do
    case $ko in *.ko) ;; *) die "compressed module not handled: $ko" ;; esac
    cp "$ko" "$ird/lib/modules/"
    basename "$ko" >> "$ird/etc/modules"
done
[ -s "$ird/etc/modules" ] || die "no modules found for $kver"
cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say () { echo "VHDCHAIN-E2E: $*"; }
halt () { say "$*"; sync; poweroff -f; sleep 5; exit 1; }
for m in $(cat /etc/modules); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
n=0
while [ ! -b /dev/vda1 ]; do
    n=$((n + 1)); [ $n -gt 300 ] && halt "check FAIL: no /dev/vda1"
    sleep 0.1
done
cfg=/sys/firmware/qemu_fw_cfg/by_name/opt/vhdchain
expect=$(cat $cfg/expect/raw 2>/dev/null)
nonce=$(cat $cfg/nonce/raw 2>/dev/null)
mount -t ext4 /dev/vda1 /mnt || halt "check FAIL: cannot mount /dev/vda1"
seen=$(cat /mnt/state/checkpoint)
only=$(cd /mnt/state && ls only-* 2>/dev/null | tr '\n' ' ')
say "expect=$expect checkpoint=$seen"
say "only-files: $only"
say "blob-md5: $(md5sum < /mnt/data/blob | cut -d' ' -f1)"
for f in /mnt/guest/*; do
    [ -f "$f" ] && say "guest-file ${f#/mnt/guest/}: $(cat "$f")"
done
result=FAIL
[ -n "$expect" ] && [ "$seen" = "$expect" ] &&
    [ -f "/mnt/state/only-$expect" ] && [ "$only" = "only-$expect " ] &&
    result=ok
n=1
while [ -e "/mnt/guest/boot-$n" ]; do n=$((n + 1)); done
echo "boot $n at $seen nonce $nonce" > "/mnt/guest/boot-$n"
sync
umount /mnt || result="FAIL (umount)"
halt "check $result wrote boot-$n"
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) |
    gzip -9n > "$work/initrd.gz"

# ---- the file system
root=$work/root
mkdir -p "$root"/{boot/extlinux,state,data,guest}
cp "/boot/vmlinuz-$kver" "$root/boot/vmlinuz"
cp "$work/initrd.gz" "$root/boot/initrd.gz"
cat > "$root/boot/extlinux/extlinux.conf" <<CONF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.gz
  APPEND console=ttyS0,115200 panic=-1 loglevel=4
CONF
echo base > "$root/state/checkpoint"
echo "exists only in the base" > "$root/state/only-base"
# 2 MiB of reproducible, incompressible data.
python3 - "$root/data/blob" <<'PY'
import hashlib, sys
with open(sys.argv[1], 'wb') as f:
    for i in range(2 * 1024 * 1024 // 32):
        f.write(hashlib.sha256(b'blob %d' % i).digest())
PY

disk=$work/disk.raw
truncate -s "${SIZE_MIB}M" "$disk"
echo "start=$PART_START, type=83, bootable" | sfdisk -q --label dos "$disk"
part=$work/part.raw
truncate -s $(( (SIZE_MIB << 20) - PART_START * 512 )) "$part"
# No 64bit feature (extlinux); fixed ids and times: a reproducible image.
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -O ^64bit \
    -U 7c3a1e52-0d4b-4f8e-9a61-2b5c8d9e0f13 \
    -E hash_seed=7c3a1e52-0d4b-4f8e-9a61-2b5c8d9e0f13 \
    -L vhdchain-e2e -d "$root" "$part"
dd if="$part" of="$disk" bs=512 seek=$PART_START conv=notrunc,sparse \
    status=none
rm -f "$part"
dd if="$MBR" of="$disk" bs=440 count=1 conv=notrunc status=none

# extlinux needs the mounted file system on a partition device (it records
# the partition's start sector in the boot sector).
loop=$(losetup --find --show "$disk")
partx -a "$loop" 2>/dev/null || true
for _ in $(seq 50); do [ -b "${loop}p1" ] && break; sleep 0.1; done
[ -b "${loop}p1" ] || die "no partition device ${loop}p1 after partx -a"
mkdir "$work/mnt"
mount -t ext4 "${loop}p1" "$work/mnt"
extlinux --install "$work/mnt/boot/extlinux" >/dev/null 2>&1 ||
    die "extlinux --install failed"
umount "$work/mnt"
e2fsck -fn "${loop}p1" >/dev/null 2>&1 || die "the file system is not clean"
partx -d "$loop" 2>/dev/null || true
losetup -d "$loop"
loop=

mkdir -p "$out"
mv "$disk" "$out/disk.raw.tmp"
echo "$kver" > "$out/kernel-version"
mv "$out/disk.raw.tmp" "$out/disk.raw"
echo "build-bootdisk: $out/disk.raw (kernel $kver)"
