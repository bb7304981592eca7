#!/usr/bin/python3
"""Back up a checkpoint while the VM writes (issue 7, use 3).

The chain: a 512 MiB disk, mostly holes, made by vhdgen (the independent
VHD writer, which also computes the expected image): a base with a full
first 8 MiB and scattered writes, snap1 and snap2 with scattered writes, a
4 MiB run, and zeros written over data (present in the layer, zero bytes):

    vm/base.vhd <- vm/snap1.avhd <- vm/snap2.avhd

The "running VM" (tests/e2e/writer.py) keeps writing 64 KiB chunks through
a second vhdchain server on snap2 with a kept layer (overlay=running.avhd),
as Hyper-V's VM goes on after a checkpoint, while the backup reads the
frozen snap2 from another, read-only, server:

  1. docs/recipes.md "backup", as it stands: nbdinfo --map, nbdcopy with 4
     connections (and 4 threads: nbdcopy gives each thread 128 MiB) and
     qemu-img convert -O qcow2 -m 4 -W.  Checked: the writer went on
     during the backup; the server saw 4 connections at once (the log
     filter); backup.raw and backup.qcow2 equal vhdgen's image of snap2;
     the qcow2 is sparse like the export: no cluster allocated where the
     export's map has a hole (or reads zero), every cluster with data
     allocated, and as many unallocated clusters as the map's holes make;
     the map's holes read as zeros; the running layer, served alone, is
     snap2 plus exactly the writer's chunks; the chain files never changed.
  2. fio: a known pattern (verify=crc32c headers in every 64 KiB block) is
     written over the whole disk into a kept layer on snap2 (fio.avhd);
     the writer then runs on top of fio.avhd (running2.avhd) while fio
     --verify_only reads all of fio.avhd, frozen, over 4 connections (4
     jobs, one quarter each): no error, every byte read.  Control: the same
     verify against snap2 (without the pattern) fails.
"""

import json
import os
import subprocess
import sys
import time

import harness
import vhdgen as g
from vhdgen import MiB

sys.path.insert(0, os.path.join(harness.TESTS_DIR, 'e2e'))
import e2elib  # noqa: E402
import writer  # noqa: E402

r = harness.Reporter('test-e2e-backup')

SIZE = 512 * MiB
CLUSTER = 65536                # qcow2's default cluster size
WRITER = os.path.join(harness.TESTS_DIR, 'e2e', 'writer.py')
FIO_JOBS = ['--ioengine=nbd', '--rw=write', '--bs=64k', '--numjobs=4',
            '--size=%d' % (SIZE // 4), '--offset_increment=%d' % (SIZE // 4),
            '--verify=crc32c', '--verify_state_save=0', '--iodepth=8',
            '--randrepeat=1', '--group_reporting=0']


def scattered(rng, blocks, per_block, max_sectors=300):
    """Writes clustered in the given 2 MiB blocks (few blocks: a quick
    chain to build, and mostly holes)."""
    out = []
    for b in blocks:
        out += g.random_writes(rng, SIZE, per_block, lo=b * 2 * MiB,
                               hi=(b + 1) * 2 * MiB, max_sectors=max_sectors)
    return out


def build(folder):
    rng = __import__('random').Random(77)
    nblocks = SIZE // (2 * MiB)
    pick = lambda n: sorted(rng.sample(range(4, nblocks), n))  # noqa: E731
    c = g.Chain(folder, seed=77)
    c.base('base.vhd', SIZE, writes=g.fill_writes(rng, 8 * MiB) +
           scattered(rng, pick(12), 6))
    c.child('snap1.avhd', writes=scattered(rng, pick(12), 6) +
            [(200 * MiB, rng.randbytes(4 * MiB))])
    # Zeros written over data: present in the layer, zero bytes.
    c.child('snap2.avhd', writes=scattered(rng, pick(12), 6) +
            [(1 * MiB, bytes(256 * 1024)), (201 * MiB, bytes(64 * 1024))])
    return c.write(expected='tip')


class Writer:
    """tests/e2e/writer.py against a server, as a process."""

    def __init__(self, uri, folder, seed):
        self.progress = os.path.join(folder, 'writer-%d.progress' % seed)
        self.log = os.path.join(folder, 'writer-%d.json' % seed)
        self.errpath = os.path.join(folder, 'writer-%d.err' % seed)
        with open(self.errpath, 'wb') as err:
            self.proc = subprocess.Popen(
                [e2elib.PYTHON, WRITER, uri, str(SIZE), str(seed),
                 self.progress, self.log], stdin=subprocess.DEVNULL,
                stdout=err, stderr=err)
        e2elib.wait_for(lambda: self.count() >= 32 or
                        self.proc.poll() is not None, 30, 'the writer')
        if self.proc.poll() is not None:
            raise harness.TestFailure('the writer died: %s' % self.err())

    def err(self):
        with open(self.errpath, errors='replace') as f:
            return f.read()

    def count(self):
        try:
            with open(self.progress) as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    def stop(self):
        """SIGTERM; returns the log {writes, chunks} (None if it failed)."""
        harness.terminate(self.proc, 30)
        r.equal(self.proc.returncode, 0, 'the writer exited cleanly',)
        if self.proc.returncode != 0 or not os.path.exists(self.log):
            print(self.err())
            return None
        with open(self.log) as f:
            return json.load(f)


def parse_nbdinfo_map(text):
    """[(offset, length, type)] from nbdinfo --map's text output."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].isdigit():
            out.append((int(f[0]), int(f[1]), int(f[2])))
    return out


def clusters(extents, pred):
    s = set()
    for off, n, t in extents:
        if pred(t):
            s.update(range(off // CLUSTER, (off + n - 1) // CLUSTER + 1))
    return s


def qcow2_allocated(path):
    p = harness.run(['qemu-img', 'map', '--output=json', path])
    s = set()
    for e in json.loads(p.stdout):
        if e.get('data'):
            a, b = e['start'], e['start'] + e['length']
            s.update(range(a // CLUSTER, (b - 1) // CLUSTER + 1))
    return s


def nonzero_clusters(image):
    zero = bytes(CLUSTER)
    return {i for i in range(len(image) // CLUSTER)
            if image[i * CLUSTER:(i + 1) * CLUSTER] != zero}


def check_running_layer(tmp, layer, parent_image, log, label):
    """The layer the writer wrote, served alone, is parent_image plus its
    chunks, byte for byte."""
    if log is None:
        return
    model = bytearray(parent_image)
    for off, n in log['chunks'].items():
        off = int(off)
        model[off:off + writer.CHUNK] = writer.chunk_data(n)
    out = os.path.join(tmp, 'running.raw')
    with harness.Nbdkit(layer) as srv:
        srv.copy_to(out)
    with open(out, 'rb') as f:
        got = f.read()
    os.unlink(out)
    at = harness.first_difference(got, bytes(model))
    r.check(at is None, '%s: the running layer holds snap2 plus exactly the '
            'writer\'s %d writes (%d chunks)' % (label, log['writes'],
                                                len(log['chunks'])),
            'first difference at byte %r' % at)


# ---------------------------------------------------------------- 1

def backup(tmp, points):
    snap2 = points[2]
    with open(snap2.expected_path, 'rb') as f:
        image = f.read()
    running = os.path.join(tmp, 'vm', 'running.avhd')
    conn_log = os.path.join(tmp, 'backup-connections.log')
    before = harness.snapshot([p.path for p in points])
    with harness.Nbdkit(snap2.path, 'overlay=' + running,
                        readonly=False) as vm:
        w = Writer(vm.uri, tmp, 1)
        n0 = w.count()
        t0 = time.monotonic()
        rc, out, err = e2elib.run_recipe(
            'backup', tmp, 300,
            env_extra={'VHDCHAIN_TEST_NBDKIT_LOG': conn_log})
        took = time.monotonic() - t0
        n1 = w.count()
        log = w.stop()
    print('# backup recipe: %.1f s; the writer wrote %d chunks meanwhile'
          % (took, n1 - n0))
    r.equal(rc, 0, 'recipe backup: runs to the end')
    if rc != 0:
        print(err[-3000:])
        return
    r.check(n1 - n0 >= 16, 'the VM kept writing during the backup',
            '%d writes' % (n1 - n0))
    conns = e2elib.busy_connections_at_once(conn_log)
    r.check(conns >= 4, 'the backup read over 4 connections at once, each '
            'serving requests', 'at most %d at once' % conns)

    raw = os.path.join(tmp, 'backup.raw')
    r.equal(harness.sha256_file(raw), snap2.sha256,
            'nbdcopy: backup.raw equals vhdgen\'s image of snap2')
    qcow2 = os.path.join(tmp, 'backup.qcow2')
    p = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'qcow2', '-F',
                        'raw', qcow2, snap2.expected_path],
                       capture_output=True, text=True)
    r.equal(p.returncode, 0, 'qemu-img convert: backup.qcow2 equals '
            'vhdgen\'s image of snap2 (qemu-img compare)')
    p = subprocess.run(['qemu-img', 'check', qcow2], capture_output=True,
                       text=True)
    r.equal(p.returncode, 0, 'backup.qcow2 passes qemu-img check')

    with open(os.path.join(tmp, 'backup.map')) as f:
        ext = parse_nbdinfo_map(f.read())
    r.check(ext and ext[0][0] == 0 and sum(n for _, n, _ in ext) == SIZE,
            'nbdinfo --map covers the export', ext[:5])
    holes = [(o, n) for o, n, t in ext if t & 1]
    r.check(holes and all(image[o:o + n] == bytes(n) for o, n in holes),
            'the map\'s holes read as zeros (%d holes, %d MiB)'
            % (len(holes), sum(n for _, n in holes) // MiB))
    total = SIZE // CLUSTER
    datac = clusters(ext, lambda t: not t & 2)          # neither hole nor zero
    holec = set(range(total)) - datac
    alloc = qcow2_allocated(qcow2)
    nonzero = nonzero_clusters(image)
    print('# clusters of 64 KiB: %d; the map\'s data touches %d; qcow2 '
          'allocates %d; %d hold non-zero bytes'
          % (total, len(datac), len(alloc), len(nonzero)))
    r.equal(sorted(alloc & holec)[:10], [],
            'qcow2: nothing allocated where the map says hole or zero')
    r.equal(sorted(nonzero - alloc)[:10], [],
            'qcow2: every cluster holding data is allocated')
    r.equal(total - len(alloc), len(holec) + len(datac - nonzero),
            'qcow2: unallocated clusters = the map\'s hole/zero clusters + '
            'data clusters that hold only zeros')
    r.check(len(holec) > total // 2, 'the export is mostly holes, so the '
            'sparseness checks mean something', len(holec))

    r.equal(harness.changed_files(before), [], 'the chain files are '
            'unchanged')
    check_running_layer(tmp, running, image, log, 'backup')
    for f in (raw, qcow2):
        os.unlink(f)


# ---------------------------------------------------------------- 2

def fio(uri, extra=()):
    argv = ['fio', '--output-format=json', '--name=pattern'] + FIO_JOBS[:1] + \
        ['--uri=' + uri] + FIO_JOBS[1:] + list(extra)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=300, cwd=FIO_CWD)
    try:
        jobs = json.loads(p.stdout[p.stdout.index('{'):])['jobs']
    except ValueError:
        jobs = []
    return p.returncode, jobs, p.stderr


FIO_CWD = None


def verify_lines(stderr):
    return [l for l in stderr.splitlines() if 'verify' in l.lower() or
            'bad magic' in l.lower()]


def fio_pattern(tmp, points):
    global FIO_CWD
    FIO_CWD = tmp
    snap2 = points[2]
    pattern = os.path.join(tmp, 'vm', 'fio.avhd')
    running = os.path.join(tmp, 'vm', 'running2.avhd')
    t0 = time.monotonic()
    with harness.Nbdkit(snap2.path, 'overlay=' + pattern,
                        readonly=False) as srv:
        rc, jobs, err = fio(srv.uri, ['--do_verify=0'])
    r.check(rc == 0 and len(jobs) == 4 and
            all(j['error'] == 0 for j in jobs) and
            sum(j['write']['io_bytes'] for j in jobs) == SIZE,
            'fio wrote its pattern over the whole disk into fio.avhd',
            'exit %d\n%s' % (rc, err[-2000:]))
    print('# fio write: %.1f s' % (time.monotonic() - t0))
    before = harness.snapshot([p.path for p in points] + [pattern])
    conn_log = os.path.join(tmp, 'fio-connections.log')
    with harness.Nbdkit(pattern, 'overlay=' + running,
                        readonly=False) as vm:
        w = Writer(vm.uri, tmp, 2)
        n0 = w.count()
        t0 = time.monotonic()
        with harness.Nbdkit(pattern, 'logfile=' + conn_log,
                            extra=('--filter=log',)) as frozen:
            rc, jobs, err = fio(frozen.uri, ['--verify_only'])
        took = time.monotonic() - t0
        n1 = w.count()
        w.stop()
    print('# fio verify_only: %.1f s; the writer wrote %d chunks meanwhile'
          % (took, n1 - n0))
    r.check(rc == 0 and len(jobs) == 4 and
            all(j['error'] == 0 for j in jobs) and not verify_lines(err),
            'fio --verify_only over the frozen fio.avhd: no error',
            'exit %d, errors %r\n%s' % (rc, [j['error'] for j in jobs],
                                        '\n'.join(verify_lines(err)[:10])))
    r.equal(sum(j['read']['io_bytes'] for j in jobs), SIZE,
            'fio --verify_only read the whole disk')
    r.equal(e2elib.busy_connections_at_once(conn_log), 4,
            'fio --verify_only read over 4 connections at once')
    r.check(n1 - n0 >= 16, 'the VM kept writing during the verify',
            '%d writes' % (n1 - n0))
    r.equal(harness.changed_files(before), [],
            'the chain files and fio.avhd are unchanged')
    # Control: without the pattern the verify must fail.
    with harness.Nbdkit(snap2.path) as srv:
        rc, jobs, err = fio(srv.uri, ['--verify_only', '--size=4m'])
    r.check(rc != 0 and any(j['error'] for j in jobs),
            'control: fio --verify_only against snap2 (no pattern) fails',
            'exit %d, errors %r' % (rc, [j['error'] for j in jobs]))


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy', 'nbdinfo', 'qemu-img', 'fio')
    t0 = time.monotonic()
    with harness.tempdir() as tmp:
        points = build(os.path.join(tmp, 'vm'))
        print('# chain built at %.1f s' % (time.monotonic() - t0))
        r.run(backup, tmp, points)
        r.run(fio_pattern, tmp, points)
    print('# total %.1f s' % (time.monotonic() - t0))


if __name__ == '__main__':
    r.main(main)
