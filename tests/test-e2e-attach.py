#!/usr/bin/python3
"""Attach a checkpoint as a Linux block device (issue 7, use 2).  Root.

The chain: a 32 MiB disk, MBR + ext4 partition, in three states that
change files (tests/e2e/e2elib.py: /state/checkpoint names the state,
/state/only-<state> exists only there, /data/blob is partly rewritten),
base.vhd <- snap1.avhd <- snap2.avhd, the layers written by the plugin;
beside it a Hyper-V VM folder (tests/hypervgen.py, 2008 layout, XML).

  1. docs/recipes.md "attach-by-hand", as it stands: nbdfuse exposes snap1
     as a file (nbdkit captive, socket-activated by nbdfuse), losetup makes
     a block device, partx -a its partition; the file system is mounted,
     read, written, unmounted and e2fsck -fn is clean; everything is undone.
  2. docs/recipes.md "attach": contrib/vhdchain-attach --mount with
     --overlay: the write lands in the kept layer, which is a sound VHD
     child of snap2.avhd whose file system holds the new file and is clean.
  3. vhdchain-attach step by step: the path it picks (the nbd module if
     the kernel has one, else FUSE + loop); the device reads byte for byte
     as snap2; the partition is mounted, read (files and blob equal
     snap2's), written, unmounted, fsck-clean; the writes reached the
     server (read back over its socket); --list; --detach by device and by
     mount point leaves no loop device, mount, process or state behind;
     the kept layer served as the tip shows the earlier write; vm=FOLDER
     checkpoint=NAME read-only equals that checkpoint's state and refuses
     writes; a broken chain, a missing file, --via nbd without the module
     and --detach of a stranger fail cleanly.
  4. nbd-client -l lists the exports: the recipe "list" on a Unix socket
     (a VM folder: one export per checkpoint) and over TCP loopback.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import time

import harness

sys.path.insert(0, os.path.join(harness.TESTS_DIR, 'e2e'))
import e2elib  # noqa: E402
import hypervgen  # noqa: E402

r = harness.Reporter('test-e2e-attach')

MiB = 1 << 20
SIZE = 32 * MiB
STATES = ['base', 'snap1', 'snap2']
FILES = ['base.vhd', 'snap1.avhd', 'snap2.avhd']
ATTACH = os.path.join(harness.TOP_SRCDIR, 'contrib', 'vhdchain-attach')
CHECKPOINTS = ['Before update', 'After update', 'Branch', 'Branch again',
               'Now']


class Env:
    pass


E = Env()


def attach_cmd(*args, check=True, timeout=90):
    """Run contrib/vhdchain-attach; return (status, stdout, stderr)."""
    p = e2elib.run_timed([ATTACH] + list(args), timeout, cwd=E.tmp,
                         env=E.env)
    out, err = p.stdout.decode().strip(), p.stderr.decode().strip()
    if check and p.returncode != 0:
        raise harness.TestFailure('vhdchain-attach %s failed (%d): %s'
                                  % (' '.join(args), p.returncode, err))
    return p.returncode, out, err


def sha256_dev(path, size=None):
    h = hashlib.sha256()
    n = 0
    with open(path, 'rb') as f:
        while size is None or n < size:
            b = f.read(min(4 * MiB, size - n) if size else 4 * MiB)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def sha256_range(path, start):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        f.seek(start)
        for b in iter(lambda: f.read(4 * MiB), b''):
            h.update(b)
    return h.hexdigest()


def mounted(target):
    return subprocess.run(['mountpoint', '-q', target]).returncode == 0


def loops_on(path):
    """Loop devices whose backing file is path."""
    p = subprocess.run(['losetup', '-n', '-O', 'NAME', '-j', path],
                       capture_output=True, text=True, env=E.env)
    return p.stdout.split()


def state_entries():
    d = E.env['VHDCHAIN_ATTACH_STATE']
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def nbdkit_pids_for(path, cwd=None):
    """nbdkit processes whose command line names path (and, for a relative
    path, that run in cwd: other tests serve files of the same name)."""
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
            if cwd and os.readlink('/proc/%s/cwd' % pid) != cwd:
                continue
        except OSError:
            continue
        if argv and argv[0].endswith(b'nbdkit') and \
                any(path.encode() in a for a in argv):
            pids.append(int(pid))
    return pids


def wait_gone(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---------------------------------------------------------------- setup

def build(tmp):
    root = e2elib.fs_tree(os.path.join(tmp, 'root'), 'base', 1 * MiB)
    raw0 = os.path.join(tmp, 'base.raw')
    e2elib.make_disk(raw0, SIZE, root, label='attach')
    raws, md5s = e2elib.make_states(tmp, raw0, STATES, seed=11)
    tips = e2elib.make_chain(os.path.join(tmp, 'vm'), raws, FILES)
    vm = hypervgen.build_vm(os.path.join(tmp, 'vm'), layout='2008',
                            config='xml', seed=3, name='hyperv')
    return raws, md5s, tips, vm


# ---------------------------------------------------------------- 1, 2

def recipe_by_hand():
    fuse = os.path.join(E.tmp, 'fuse')
    before = harness.snapshot(E.tips)
    rc, out, err = e2elib.run_recipe('attach-by-hand', E.tmp, 120)
    r.equal(rc, 0, 'recipe attach-by-hand: runs to the end (e2fsck -fn '
            'clean included)')
    if rc != 0:
        print(err[-3000:])
    lines = out.splitlines()
    r.equal(lines[:1], ['snap1'], 'recipe attach-by-hand: the mounted file '
            'system is snap1\'s')
    r.check('Pass 5: Checking group summary information' in out,
            'recipe attach-by-hand: e2fsck -fn checked the written file '
            'system through (its status 0 ended the recipe)', out[-2000:])
    r.check(wait_gone(lambda: mounted(fuse) or loops_on(
        os.path.join(fuse, 'disk')), 'fuse'),
            'recipe attach-by-hand: no FUSE mount or loop device left')
    r.check(wait_gone(lambda: nbdkit_pids_for('vm/snap1.avhd', E.tmp),
                      'nbdkit'),
            'recipe attach-by-hand: the captive nbdkit exited')
    r.equal(harness.changed_files(before), [],
            'recipe attach-by-hand: the chain files are unchanged')


def recipe_attach():
    keep = os.path.join(E.tmp, 'vm', 'session.avhd')
    before = harness.snapshot(E.tips)
    rc, out, err = e2elib.run_recipe('attach', E.tmp, 120,
                                     env_extra=E.state_env)
    r.equal(rc, 0, 'recipe attach: runs to the end')
    if rc != 0:
        print(err[-3000:])
    lines = out.splitlines()
    r.check(len(lines) == 2 and lines[0].startswith(('/dev/loop',
                                                     '/dev/nbd'))
            and lines[1] == 'snap2',
            'recipe attach: prints the device, then snap2\'s checkpoint file',
            out)
    r.equal(state_entries(), [], 'recipe attach: --detach leaves no state')
    r.equal(harness.changed_files(before), [],
            'recipe attach: the chain files are unchanged')
    r.check(os.path.isfile(keep), 'recipe attach: the layer was kept')
    if not os.path.isfile(keep):
        return
    bad = harness.vhd_structure_problems(keep, parent=E.tips[2])
    r.check(not bad, 'recipe attach: the kept layer is a sound VHD child '
            'of snap2.avhd', '\n'.join(bad))
    raw = os.path.join(E.tmp, 'session.raw')
    with harness.Nbdkit(keep) as srv:
        srv.copy_to(raw)
    r.equal(e2elib.fs_cat(raw, '/notes.txt'), b'written while attached\n',
            'recipe attach: the kept layer holds the file written while '
            'attached')
    clean, text = e2elib.fsck(raw)
    r.check(clean, 'recipe attach: the kept file system is clean', text)
    os.unlink(raw)


# ---------------------------------------------------------------- 3

def helper_steps():
    snap2, raw2 = E.tips[2], E.raws[2]
    mnt = os.path.join(E.tmp, 'mnt')
    os.makedirs(mnt, exist_ok=True)
    before = harness.snapshot(E.tips)

    _, dev, _ = attach_cmd('vm/snap2.avhd')
    name = os.path.basename(dev)
    r.check(dev.startswith(('/dev/loop', '/dev/nbd')) and
            os.path.exists(dev), 'helper: prints an existing block device',
            dev)
    _, listing, _ = attach_cmd('--list')
    row = [l.split('\t') for l in listing.splitlines()
           if l.startswith(dev + '\t')]
    via = row[0][1] if row else None
    r.check(row and row[0][2] == os.path.realpath(snap2),
            'helper: --list shows the device and its tip', listing)
    nbd_module = os.path.exists('/sys/module/nbd')
    r.equal(via, 'nbd' if nbd_module else 'fuse',
            'helper: the path fits the host (nbd module %s)'
            % ('present' if nbd_module else 'absent'))
    print('# vhdchain-attach used: %s' % via)
    part = dev + 'p1'
    r.check(os.path.exists(part), 'helper: the partition device exists '
            '(partx -a)', part)
    r.equal(sha256_dev(dev), (harness.sha256_file(raw2), SIZE),
            'helper: the device reads byte for byte as snap2')
    r.equal(sha256_dev(part)[0], sha256_range(raw2, e2elib.PART_START),
            'helper: the partition reads as snap2\'s file system')

    harness.run(['mount', '-t', 'ext4', part, mnt], env=E.env)
    try:
        with open(os.path.join(mnt, 'state', 'checkpoint')) as f:
            r.equal(f.read(), 'snap2\n', 'helper: /state/checkpoint read')
        r.equal(sorted(os.listdir(os.path.join(mnt, 'state'))),
                ['checkpoint', 'only-snap2'],
                'helper: only snap2\'s own file is there')
        with open(os.path.join(mnt, 'data', 'blob'), 'rb') as f:
            r.equal(hashlib.md5(f.read()).hexdigest(), E.md5s[2],
                    'helper: /data/blob equals snap2\'s')
        payload = os.urandom(300000)
        with open(os.path.join(mnt, 'guest', 'attached.bin'), 'wb') as f:
            f.write(payload)
        with open(os.path.join(mnt, 'data', 'blob'), 'r+b') as f:
            f.seek(100000)
            f.write(b'overwritten in place' * 100)
        os.sync()
    finally:
        harness.run(['umount', mnt], env=E.env)
    clean, text = e2elib.fsck(part, offset=0)
    r.check(clean, 'helper: e2fsck -fn on the partition after umount is '
            'clean', text)
    # The writes reached the server: read its export over its own socket.
    sock = os.path.join(E.env['VHDCHAIN_ATTACH_STATE'], name, 'sock')
    raw = os.path.join(E.tmp, 'attached.raw')
    harness.run(['nbdcopy', 'nbd+unix:///?socket=' + sock, raw])
    r.equal(e2elib.fs_cat(raw, '/guest/attached.bin'), payload,
            'helper: the written file is in the server\'s layer')
    os.unlink(raw)

    rc, _, err = attach_cmd('--detach', dev)
    r.equal(rc, 0, 'helper: --detach DEVICE')
    r.check(wait_gone(lambda: os.path.exists('/sys/block/%s/loop' % name)
                      or os.path.exists('/sys/block/%s/pid' % name),
                      'device'),
            'helper: the device is detached')
    r.equal(state_entries(), [], 'helper: no state left')
    r.equal(nbdkit_pids_for(os.path.realpath(snap2)), [],
            'helper: the server has exited')
    r.equal(harness.changed_files(before), [],
            'helper: the chain files are unchanged')

    # The kept layer of the recipe as the tip, mounted by the helper.
    keep = os.path.join(E.tmp, 'vm', 'session.avhd')
    if os.path.isfile(keep):
        kept = harness.snapshot([keep])
        rc, dev, err = attach_cmd('--mount', mnt, 'vm/session.avhd')
        r.check(rc == 0 and mounted(mnt), 'helper: --mount mounts the '
                'kept layer\'s partition', err)
        try:
            with open(os.path.join(mnt, 'notes.txt')) as f:
                r.equal(f.read(), 'written while attached\n',
                        'helper: the kept layer as the tip shows the '
                        'earlier write')
            with open(os.path.join(mnt, 'more.txt'), 'w') as f:
                f.write('temporary\n')
        finally:
            rc, _, err = attach_cmd('--detach', mnt, check=False)
        r.equal(rc, 0, 'helper: --detach MOUNTPOINT')
        r.check(not mounted(mnt), 'helper: unmounted')
        r.equal(state_entries(), [], 'helper: no state left')
        r.equal(harness.changed_files(kept), [],
                'helper: the kept layer is unchanged (writes went to a '
                'temporary layer)')

    # A checkpoint of a Hyper-V VM folder, read-only.
    cp = E.vm.checkpoints[1]
    want = E.vm.disks['IDE'].files[cp.frozen['IDE']].sha256
    size = E.vm.disks['IDE'].size
    rc, dev, err = attach_cmd('-r', 'vm=vm/hyperv', 'checkpoint=' + cp.name)
    try:
        r.equal(sha256_dev(dev)[0], want, 'helper: vm=FOLDER checkpoint='
                '"%s" reads as that checkpoint\'s state' % cp.name)
        r.equal(subprocess.run(['blockdev', '--getro', dev],
                               capture_output=True, text=True,
                               env=E.env).stdout.strip(), '1',
                'helper: -r gives a read-only device')
        try:
            with open(dev, 'r+b') as f:
                f.write(b'x' * 512)
                f.flush()
                os.fsync(f.fileno())
            wrote = True
        except OSError:
            wrote = False
        r.check(not wrote, 'helper: a write to the read-only device fails')
        r.equal(subprocess.run(['blockdev', '--getsize64', dev],
                               capture_output=True, text=True,
                               env=E.env).stdout.strip(), str(size),
                'helper: the device has the virtual disk\'s size')
    finally:
        attach_cmd('--detach', dev, check=False)
    r.equal(state_entries(), [], 'helper: no state left after vm=')

    # Failures leave nothing behind.
    rc, out, err = attach_cmd('vm/missing.avhd', check=False)
    r.check(rc != 0 and 'not found' in err, 'helper: a missing tip fails',
            err)
    lone = os.path.join(E.tmp, 'lone')
    os.makedirs(lone, exist_ok=True)
    shutil.copy(snap2, lone)
    rc, out, err = attach_cmd('lone/snap2.avhd', check=False)
    r.check(rc != 0 and 'nbdkit did not start' in err and out == '',
            'helper: a chain whose parent is missing fails, with nbdkit\'s '
            'reason', err)
    r.check(not nbdkit_pids_for(os.path.join(lone, 'snap2.avhd')),
            'helper: ... and no server is left running')
    if not nbd_module:
        rc, out, err = attach_cmd('--via', 'nbd', 'vm/snap2.avhd',
                                  check=False)
        r.check(rc != 0 and 'nbd' in err, 'helper: --via nbd without the '
                'module fails', err)
    rc, out, err = attach_cmd('--detach', E.tmp, check=False)
    r.check(rc != 0, 'helper: --detach of a folder that is no mount point '
            'fails', err)
    r.equal(state_entries(), [], 'helper: no state left after failures')


# ---------------------------------------------------------------- 4

def parse_list(out):
    """Export names from nbd-client -l output ("NAME: description")."""
    names = []
    for line in out.splitlines():
        if line.startswith('Negotiation') or ': ' not in line:
            continue
        names.append(line.split(': ', 1)[0])
    return names


def listing():
    rc, out, err = e2elib.run_recipe('list', E.tmp, 60)
    r.equal(rc, 0, 'recipe list: runs to the end')
    r.equal(parse_list(out), CHECKPOINTS, 'recipe list: nbd-client -unix '
            'SOCK -l lists one export per checkpoint of the VM folder')
    # TCP loopback, on a free port.
    port = e2elib.free_port()
    pidfile = os.path.join(E.tmp, 'tcp.pid')
    errlog = open(os.path.join(E.tmp, 'tcp.log'), 'wb')
    srv = subprocess.Popen(['nbdkit', '-f', '-r', '-p', str(port), '-i',
                            '127.0.0.1', '-P', pidfile, harness.PLUGIN,
                            E.tips[2]], stdin=subprocess.DEVNULL,
                           stdout=errlog, stderr=errlog, env=E.env)
    try:
        e2elib.wait_for(lambda: os.path.exists(pidfile) and
                        os.path.getsize(pidfile), 30, 'nbdkit on TCP')
        p = e2elib.run_timed(['nbd-client', '127.0.0.1', str(port), '-l'],
                             30, env=E.env)
        out = p.stdout.decode()
        r.check(p.returncode == 0 and
                ': ' + os.path.realpath(E.tips[2]) in out.splitlines(),
                'nbd-client HOST PORT -l over TCP loopback lists the export '
                '(its description: the tip)', out + p.stderr.decode())
    finally:
        srv.terminate()
        srv.wait(timeout=30)
        errlog.close()


def main():
    e2elib.require_root('losetup, mount')
    harness.require_plugin()
    harness.require_tools('nbdfuse', 'fusermount3', 'losetup', 'partx',
                          'mount', 'umount', 'e2fsck', 'debugfs',
                          'nbd-client', 'nbdcopy', 'qemu-img', 'blockdev',
                          'findmnt', 'mountpoint')
    if not os.path.exists('/dev/fuse'):
        raise harness.TestFailure('no /dev/fuse: FUSE is needed')
    t0 = time.monotonic()
    with harness.tempdir() as tmp:
        E.tmp = tmp
        E.state_env = {'VHDCHAIN_ATTACH_STATE': os.path.join(tmp, 'state')}
        E.env = e2elib.tool_env()
        E.env.update(E.state_env)
        E.env['VHDCHAIN_PLUGIN'] = harness.PLUGIN
        E.raws, E.md5s, E.tips, E.vm = build(tmp)
        print('# chain built at %.1f s' % (time.monotonic() - t0))
        try:
            r.run(recipe_by_hand)
            r.run(recipe_attach)
            r.run(helper_steps)
            r.run(listing)
        finally:
            # Whatever a failure left attached.
            for name in state_entries():
                if not name.startswith('s.'):
                    attach_cmd('--detach', '/dev/' + name, check=False)
    print('# total %.1f s' % (time.monotonic() - t0))


if __name__ == '__main__':
    r.main(main)
