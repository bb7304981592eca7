#!/usr/bin/python3
"""Boot a VM from a checkpoint over NBD (issue 7, use 1).  Root.

tests/e2e/build-bootdisk.sh makes a 64 MiB BIOS-bootable disk from Debian
packages only: MBR (syslinux mbr.bin), an ext4 partition with extlinux,
the Debian kernel (linux-image-amd64) and a busybox-static initramfs whose
/init checks the disk and powers off.  It is cached in
$VHDCHAIN_VMIMAGE_CACHE (default /var/tmp/vhdchain-vmimage), keyed by a
hash of the build script.

The test turns it into a chain the way a user would: qemu-img makes the
dynamic VHD base; three checkpoints change files inside the file system
(debugfs -w on raw copies: /state/checkpoint names the state, a file
/state/only-<state> exists only there, /data/blob is partly rewritten),
and each becomes a differencing layer written by the plugin itself from
the pieces that changed (overlay=snapN.avhd, contrib/write-changes.py):

    vm/base.vhd <- vm/snap1.avhd <- vm/snap2.avhd <- vm/snap3.avhd

Then qemu-system-x86_64 boots from nbd+unix:// served by vhdchain, through
SeaBIOS from sector 0 (no -kernel), serial console to a file; KVM when a
probe boot of the plain image under KVM works, TCG otherwise.  The host
tells the guest which checkpoint it chose and a nonce through fw_cfg:

  1. docs/recipes.md "boot", as it stands (nbdkit --run qemu, snap2 with
     overlay=vm/session.avhd; a QEMU shim records its command line, adds
     the fw_cfg values and a time bound, and drops "-accel kvm" where the
     probe says KVM cannot run the BIOS): the guest sees state snap2
     (only-snap2 present, no other only-*, the blob's md5 of snap2),
     writes /guest/boot-1 with the nonce, syncs and powers off; the
     chain's files are unchanged; session.avhd is a sound VHD child of
     snap2.avhd, and served alone its file system holds /guest/boot-1 and
     is fsck-clean.
  2. session.avhd served as the tip (temporary layer): the guest sees
     boot-1 from the first boot and writes boot-2; session.avhd and the
     chain are unchanged afterwards.
  3. Control: snap3 served while the guest is told snap2: the guest's
     check must fail.

Every boot is bounded (VHDCHAIN_E2E_BOOT_TIMEOUT, default 240 s).
"""

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time

import harness

sys.path.insert(0, os.path.join(harness.TESTS_DIR, 'e2e'))
import e2elib  # noqa: E402

r = harness.Reporter('test-e2e-boot')

BUILDER = os.path.join(harness.TESTS_DIR, 'e2e', 'build-bootdisk.sh')
CACHE = os.environ.get('VHDCHAIN_VMIMAGE_CACHE', '/var/tmp/vhdchain-vmimage')
BOOT_TIMEOUT = int(os.environ.get('VHDCHAIN_E2E_BOOT_TIMEOUT', '240'))
MARK = 'VHDCHAIN-E2E: '
STATES = ['base', 'snap1', 'snap2', 'snap3']
FILES = ['base.vhd', 'snap1.avhd', 'snap2.avhd', 'snap3.avhd']
QEMU = 'qemu-system-x86_64'


# ---------------------------------------------------------------- image

def cached_image():
    """The boot disk from the cache, built first if missing."""
    with open(BUILDER, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    folder = os.path.join(CACHE, key)
    disk = os.path.join(folder, 'disk.raw')
    if os.path.isfile(disk):
        print('# boot disk: cached %s' % disk)
        return disk
    os.makedirs(CACHE, exist_ok=True)
    t0 = time.monotonic()
    build = os.path.join(CACHE, 'build-%d' % os.getpid())
    shutil.rmtree(build, ignore_errors=True)
    p = subprocess.run(['/bin/bash', BUILDER, build], stdin=subprocess.DEVNULL,
                       capture_output=True, env=e2elib.tool_env(), timeout=600)
    if p.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        raise harness.TestFailure('build-bootdisk.sh failed (%d):\n%s%s' % (
            p.returncode, p.stdout.decode(errors='replace'),
            p.stderr.decode(errors='replace')))
    # Drop images of older builder versions, then publish atomically.
    for old in os.listdir(CACHE):
        if old != key and not old.startswith('build-'):
            shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
    try:
        os.rename(build, folder)
    except OSError:                       # a concurrent build won
        shutil.rmtree(build, ignore_errors=True)
    print('# boot disk: built %s in %.1f s' % (disk, time.monotonic() - t0))
    return disk


# ---------------------------------------------------------------- booting

class Boot:
    def __init__(self, label):
        self.label = label
        self.rc = None
        self.timed_out = False
        self.kvm_error = False
        self.console = ''
        self.stderr = ''
        self.seconds = 0.0

    def markers(self):
        return [l[len(MARK):].strip() for l in self.console.splitlines()
                if l.startswith(MARK)]

    def explain(self):
        return 'exit %r%s%s after %.1f s\n-- console (tail):\n%s\n-- qemu:\n%s' % (
            self.rc, ' TIMEOUT' if self.timed_out else '',
            ' KVM-ERROR' if self.kvm_error else '', self.seconds,
            '\n'.join(self.console.splitlines()[-25:]), self.stderr[-2000:])


def boot(drive, expect, nonce, logdir, label, accel, timeout=BOOT_TIMEOUT):
    """Boot the disk `drive` (a QEMU file= value) from its MBR; return a
    Boot with the serial console's text."""
    b = Boot(label)
    console = os.path.join(logdir, label + '.console')
    errpath = os.path.join(logdir, label + '.qemu')
    argv = [QEMU, '-accel', accel] + (['-cpu', 'host'] if accel == 'kvm'
                                      else []) + [
        '-m', '256', '-smp', '1', '-nodefaults', '-display', 'none',
        '-no-reboot', '-boot', 'order=c', '-serial', 'file:' + console,
        '-drive', 'file=%s,format=raw,if=virtio' % drive.replace(',', ',,'),
        '-fw_cfg', 'name=opt/vhdchain/expect,string=' + expect,
        '-fw_cfg', 'name=opt/vhdchain/nonce,string=' + nonce]
    t0 = time.monotonic()
    with open(errpath, 'wb') as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                             stderr=err)
    try:
        while True:
            b.rc = p.poll()
            if b.rc is not None:
                break
            with open(errpath, 'rb') as f:
                if b'KVM internal error' in f.read():
                    b.kvm_error = True
                    break
            if time.monotonic() - t0 > timeout:
                b.timed_out = True
                break
            time.sleep(0.2)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    b.seconds = time.monotonic() - t0
    with open(errpath, 'rb') as f:
        b.stderr = f.read().decode(errors='replace')
    if os.path.exists(console):
        with open(console, 'rb') as f:
            b.console = f.read().decode(errors='replace')
    print('# boot %s (%s): %.1f s, exit %r' % (label, accel, b.seconds, b.rc))
    return b


QEMU_SHIM = """#!/bin/bash
# The recipe's QEMU command line as it stands, recorded, plus the test's
# fw_cfg values and a time bound; -accel %(drop)s is left out (KVM cannot
# boot the BIOS here: see the test's probe).
printf '%%s\\n' "$@" > %(argv)s
out=() prev=
for a in "$@"; do
    if [ -n "$prev" ]; then
        prev=
        [ "$a" = "%(drop)s" ] || out+=(-accel "$a")
        continue
    fi
    if [ "$a" = -accel ]; then prev=1; continue; fi
    out+=("$a")
done
exec timeout %(timeout)d %(qemu)s "${out[@]}" \\
    -fw_cfg name=opt/vhdchain/expect,string=snap2 \\
    -fw_cfg name=opt/vhdchain/nonce,string=%(nonce)s
"""


def boot_recipe(tmp, accel, nonce):
    """Boot 1: the "boot" block of docs/recipes.md, run in tmp (the chain
    in tmp/vm), QEMU's serial console on its standard output."""
    argv_file = os.path.join(tmp, 'recipe-qemu.argv')
    shim = QEMU_SHIM % {'drop': 'kvm' if accel != 'kvm' else 'none',
                        'argv': argv_file, 'timeout': BOOT_TIMEOUT,
                        'qemu': shutil.which(QEMU), 'nonce': nonce}
    b = Boot('boot1-recipe-snap2')
    t0 = time.monotonic()
    b.rc, b.console, b.stderr = e2elib.run_recipe(
        'boot', tmp, BOOT_TIMEOUT + 60, shims={QEMU: shim})
    b.seconds = time.monotonic() - t0
    b.timed_out = b.rc in ('timeout', 124)
    b.kvm_error = 'KVM internal error' in b.stderr
    print('# boot %s (%s): %.1f s, exit %r' % (b.label, accel, b.seconds,
                                               b.rc))
    argv = open(argv_file).read().splitlines() \
        if os.path.exists(argv_file) else []
    drives = [a for a in argv if a.startswith('file=nbd+unix://')
              and '?socket=' in a]
    r.check(len(drives) == 1 and '-kernel' not in argv,
            'boot 1: the recipe\'s QEMU boots the nbd+unix:// export served '
            'by vhdchain, no -kernel', argv)
    return b


def choose_accel(image, tmp):
    """KVM if a probe boot of the plain image under KVM works, else TCG."""
    forced = os.environ.get('VHDCHAIN_E2E_ACCEL')
    if forced:
        return forced, 'VHDCHAIN_E2E_ACCEL'
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return 'tcg', 'no usable /dev/kvm'
    probe = e2elib.copy_sparse(image, os.path.join(tmp, 'kvm-probe.raw'))
    b = boot(probe, 'base', 'probe', tmp, 'kvm-probe', 'kvm', timeout=60)
    os.unlink(probe)
    if b.rc == 0 and 'check ok wrote boot-1' in b.markers():
        return 'kvm', 'a probe boot under KVM worked'
    why = 'KVM internal error' if b.kvm_error else \
        'timeout' if b.timed_out else 'exit %r' % b.rc
    return 'tcg', 'the probe boot under KVM failed (%s)' % why


def check_boot(b, want):
    """Check a boot against the marker lines it must print, in order."""
    ok = r.check(b.rc == 0 and not b.timed_out and not b.kvm_error,
                 '%s: the guest powered off by itself within %d s'
                 % (b.label, BOOT_TIMEOUT), b.explain())
    r.check('SYSLINUX' in b.console and 'Loading /boot/vmlinuz' in b.console,
            '%s: booted through the BIOS from the MBR (extlinux)' % b.label,
            b.explain())
    got = b.markers()
    r.equal(got, want, '%s: what the guest saw and did' % b.label)
    return ok and got == want


# ---------------------------------------------------------------- main

def main():
    e2elib.require_root('build-bootdisk.sh mounts the image for extlinux')
    harness.require_plugin()
    harness.require_tools(QEMU, 'qemu-img', 'nbdcopy', 'debugfs', 'e2fsck',
                          'extlinux', 'sfdisk', 'partx', 'losetup')
    t0 = time.monotonic()
    image = cached_image()
    with harness.tempdir() as tmp:
        raws, md5s = e2elib.make_states(
            tmp, e2elib.copy_sparse(image, os.path.join(tmp, 'base.raw')),
            STATES)
        chain = os.path.join(tmp, 'vm')        # the recipes' layout
        tips = e2elib.make_chain(chain, raws, FILES)
        for name, tip, raw in zip(STATES, tips, raws):
            with harness.Nbdkit(tip) as srv:
                got = srv.copy_sha256(tmp)
            r.equal(got, (harness.sha256_file(raw), os.path.getsize(raw)),
                    'point %s reads as its raw state' % name)
        print('# chain built and checked at %.1f s' % (time.monotonic() - t0))

        accel, why = choose_accel(image, tmp)
        print('# accelerator: %s (%s)' % (accel, why))
        before = harness.snapshot(tips)
        keep = os.path.join(chain, 'session.avhd')
        nonce1, nonce2 = '%016x' % random.getrandbits(64), \
            '%016x' % random.getrandbits(64)

        # 1. snap2, writes kept in session.avhd: the recipe, as it stands
        b1 = boot_recipe(tmp, accel, nonce1)
        check_boot(b1, ['expect=snap2 checkpoint=snap2',
                        'only-files: only-snap2',
                        'blob-md5: ' + md5s[2],
                        'check ok wrote boot-1'])
        r.equal(harness.changed_files(before), [],
                'boot 1: the chain files are unchanged')
        r.check(os.path.isfile(keep), 'boot 1: the layer was kept at '
                'overlay=PATH')
        if not os.path.isfile(keep):
            return
        bad = harness.vhd_structure_problems(keep, parent=tips[2])
        r.check(not bad, 'boot 1: the kept layer is a sound VHD child of '
                'snap2.avhd', '\n'.join(bad))
        after = os.path.join(tmp, 'after1.raw')
        with harness.Nbdkit(keep) as srv:
            srv.copy_to(after)
        r.equal(e2elib.fs_cat(after, '/guest/boot-1').decode(),
                'boot 1 at snap2 nonce %s\n' % nonce1,
                'boot 1: the kept layer, served alone, holds the guest\'s '
                'new file')
        clean, out = e2elib.fsck(after)
        r.check(clean, 'boot 1: the file system the guest left is clean', out)
        r.equal(e2elib.fs_ls(after, '/state'), ['checkpoint', 'only-snap2'],
                'boot 1: the rest of the file system is still snap2')

        # 2. the kept layer as the tip: the guest sees its earlier file
        kept_before = harness.snapshot([keep])
        with harness.Nbdkit(keep, readonly=False) as srv:
            b2 = boot(srv.uri, 'snap2', nonce2, tmp, 'boot2-session', accel)
        check_boot(b2, ['expect=snap2 checkpoint=snap2',
                        'only-files: only-snap2',
                        'blob-md5: ' + md5s[2],
                        'guest-file boot-1: boot 1 at snap2 nonce ' + nonce1,
                        'check ok wrote boot-2'])
        r.equal(harness.changed_files(kept_before), [],
                'boot 2: the kept layer is unchanged (writes went to a '
                'temporary layer)')

        # 3. control: the guest's check bites on the wrong checkpoint
        with harness.Nbdkit(tips[3], readonly=False) as srv:
            b3 = boot(srv.uri, 'snap2', 'control', tmp, 'boot3-control',
                      accel)
        want3 = ['expect=snap2 checkpoint=snap3', 'only-files: only-snap3',
                 'blob-md5: ' + md5s[3], 'check FAIL wrote boot-1']
        r.check(b3.rc == 0 and b3.markers() == want3,
                'control: served snap3 while told snap2, the guest reports '
                'FAIL', 'markers %r\n%s' % (b3.markers(), b3.explain()))
        r.equal(harness.changed_files(before), [],
                'the chain files are unchanged after all boots')
    print('# total %.1f s' % (time.monotonic() - t0))


if __name__ == '__main__':
    r.main(main)
