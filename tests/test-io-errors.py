#!/usr/bin/python3
"""I/O errors under a served chain and its layer (issue 8, "Faults"):
clients get errors, the server stays up, nothing acknowledged is lost.
Needs root (mount, losetup).

1. A failing disk under the kept layer.  This kernel has no device-mapper
   (no /dev/mapper/control, no dm module), so the `error` target is built
   from what it has: nbdkit's memory plugin behind its error filter
   (error-pwrite-rate=100%, armed while a trigger file exists), exposed as
   a file by nbdfuse (FUSE), attached to a loop device, formatted ext4 and
   mounted.  The chain lives on the normal disk, the layer
   (overlay=PATH) on that file system.  Per chain (VHD and VHDX):
     - healthy: writes, zeroes, flushes, FUA writes, all acknowledged;
     - armed: every write reaching the device fails.  Writes and flushes
       keep coming; the flush (or FUA) that meets the failure returns EIO,
       every later one too (a failed sync is sticky: pages the kernel
       dropped are never reported clean), nothing else; reads, on this and
       on a new connection, still work and show the model; nbdkit stays up;
     - disarmed: the same, still EIO (sticky);
   then nbdkit is stopped, the file system unmounted, fsck'ed, mounted
   again, and `vhdchain check` passes on the layer, which served alone
   holds every sector's durable value (acknowledged before a successful
   flush, or FUA) or a later one; and the layer is continued writably,
   takes writes and flushes, and reopens with them.
2. A chain file that shrinks or disappears while served: the base of a
   served VHD chain and of a served VHDX chain (whose child's sector
   bitmaps are read lazily) is truncated: reads that need the missing
   bytes get EIO, reads that do not still succeed, data written and
   flushed to the layer reads back, a new connection works; with the
   bytes back every read is right again.  Unlinked or renamed over, the
   file still serves what was opened (the descriptor holds it).
3. A chain file on a file system that dies: the base is reached through a
   FUSE mount (nbdfuse) whose daemon is killed: reads that need it fail
   with EIO, the others succeed, nbdkit stays up and exits cleanly.
"""

import errno
import itertools
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import harness
import vhdchain_cli as cli
import vhdgen
import vhdxgen
from vhdgen import KiB, MiB

r = harness.Reporter('test-io-errors')
SIZE = 16 * MiB
BLOCK = 2 * MiB
SECTOR = 512
SEED = int(os.environ.get('VHDCHAIN_TEST_SEED', '5150'))


def sh(*argv, check=True):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    if check and p.returncode != 0:
        raise harness.TestFailure('%s failed (%d): %s' % (
            ' '.join(argv), p.returncode, p.stderr.decode(errors='replace')))
    return p


def connect(srv):
    return harness.allow_unaligned(srv.connect())


def nbd_errno(e):
    """The errno of a libnbd error, as a number."""
    return getattr(e, 'errnum', None)


# ---------------------------------------------------------------- model

class Model:
    """One connection's view: see test-crash-multi.py.  cand[s] holds the
    values given to sector s since it was last made durable."""

    def __init__(self, image):
        self.model = bytearray(image)
        self.durable = bytearray(image)
        self.cand = {}
        self.unsynced = []          # sector ranges acked, not yet durable
        self.uncertain = set()      # sectors an operation failed on

    def issue(self, off, data):
        self.model[off:off + len(data)] = data
        s0, s1 = off // SECTOR, (off + len(data) + SECTOR - 1) // SECTOR
        for s in range(s0, s1):
            self.cand.setdefault(s, []).append(
                bytes(self.model[s * SECTOR:(s + 1) * SECTOR]))
        return s0, s1

    def settle(self, s0, s1):
        for s in range(s0, s1):
            self.durable[s * SECTOR:(s + 1) * SECTOR] = \
                self.model[s * SECTOR:(s + 1) * SECTOR]
            self.cand.pop(s, None)

    def acked(self, s0, s1, fua):
        if fua:
            self.settle(s0, s1)
        else:
            self.unsynced.append((s0, s1))

    def failed(self, s0, s1):
        self.uncertain.update(range(s0, s1))

    def live_bad(self, image):
        """Sectors a live read shows wrong: the model's value, or where an
        operation failed, the durable value or a later one."""
        bad = []
        for s in range(len(image) // SECTOR):
            got = image[s * SECTOR:(s + 1) * SECTOR]
            if got == self.model[s * SECTOR:(s + 1) * SECTOR]:
                continue
            if s in self.uncertain and (
                    got == self.durable[s * SECTOR:(s + 1) * SECTOR] or
                    got in self.cand.get(s, ())):
                continue
            bad.append(s)
        return bad

    def flushed(self):
        for s0, s1 in self.unsynced:
            self.settle(s0, s1)
        self.unsynced = []

    def bad_sectors(self, image):
        bad = []
        for s in range(len(image) // SECTOR):
            got = image[s * SECTOR:(s + 1) * SECTOR]
            if got != self.durable[s * SECTOR:(s + 1) * SECTOR] and \
                    got not in self.cand.get(s, ()):
                bad.append(s)
        return bad


# ---------------------------------------------------------------- the device

class FailingDisk:
    """nbdkit memory + error filter -> nbdfuse file -> loop -> ext4."""

    def __init__(self, tmp, name):
        self.dir = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.dir, 'fuse'))
        self.mnt = os.path.join(self.dir, 'fs')
        os.makedirs(self.mnt)
        self.trigger = os.path.join(self.dir, 'armed')
        self.sock = os.path.join(self.dir, 'sock')
        self.pidfile = os.path.join(self.dir, 'pid')
        self.loop = self.fuse = None
        self.file = os.path.join(self.dir, 'fuse', 'disk')

    def __enter__(self):
        harness.require_tools('nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck',
                              'mount', 'umount', 'fusermount3')
        sh('nbdkit', '-U', self.sock, '-P', self.pidfile, '--filter=error',
           'memory', '96M', 'error-pwrite-rate=100%',
           'error-pwrite-file=' + self.trigger, 'error-zero-rate=100%',
           'error-zero-file=' + self.trigger, 'error-trim-rate=100%',
           'error-trim-file=' + self.trigger)
        self.fuse = subprocess.Popen(
            ['nbdfuse', self.file, 'nbd+unix:///?socket=' + self.sock],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(self.file):
                break
            time.sleep(0.05)
        self.loop = sh('losetup', '-f', '--show', '--direct-io=off',
                       self.file).stdout.decode().strip()
        sh('mkfs.ext4', '-q', '-F', self.loop)
        self.mount()
        return self

    def mount(self):
        sh('mount', '-o', 'errors=continue', self.loop, self.mnt)

    def umount(self):
        if sh('umount', self.mnt, check=False).returncode != 0:
            time.sleep(0.5)
            sh('umount', '-l', self.mnt, check=False)

    def arm(self, on):
        if on:
            open(self.trigger, 'w').close()
        elif os.path.exists(self.trigger):
            os.unlink(self.trigger)

    def __exit__(self, *exc):
        self.arm(False)
        if os.path.ismount(self.mnt):
            self.umount()
        if self.loop:
            sh('losetup', '-d', self.loop, check=False)
        sh('fusermount3', '-u', os.path.dirname(self.file), check=False)
        if self.fuse:
            try:
                self.fuse.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.fuse.kill()
        if os.path.exists(self.pidfile):
            try:
                os.kill(int(open(self.pidfile).read()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
        return False


def make_vhd(folder, rng):
    c = vhdgen.Chain(folder, seed=SEED)
    c.base('base.vhd', SIZE, block_size=BLOCK,
           writes=[(b * BLOCK, rng.randbytes(BLOCK)) for b in
                   range(SIZE // BLOCK)])
    c.child('snap.avhd', writes=vhdgen.random_writes(
        rng, SIZE, 40, block_size=BLOCK, max_sectors=200) +
        [(0, rng.randbytes(BLOCK))])
    p = c.write(expected='tip')
    return p[-1].path, p[-1].expected(), [x.path for x in p]


def make_vhdx(folder, rng):
    c = vhdxgen.Chain(folder, seed=SEED)
    c.base('base.vhdx', SIZE, block_size=BLOCK,
           writes=[(b * BLOCK, rng.randbytes(BLOCK)) for b in
                   range(SIZE // BLOCK)])
    c.child('snap.avhdx', writes=vhdxgen.random_writes(
        rng, SIZE, 40, block_size=BLOCK) + [(0, rng.randbytes(BLOCK))])
    p = c.write(expected=False)
    return p[-1].path, p[-1].expected(), [x.path for x in p]


def ops(h, m, rng, pool, count, phase, stats, flush_every=4):
    """count operations: writes (some FUA), zeroes, flushes.  Returns the
    errnos seen, by operation kind."""
    import nbd
    seen = {}
    for i in range(count):
        kind = 'flush' if i % flush_every == flush_every - 1 else \
            rng.choice(['write', 'write', 'fua', 'zero'])
        s = None
        try:
            if kind == 'flush':
                h.flush()
                m.flushed()
            else:
                n = rng.randint(1, 256) * SECTOR - rng.choice((0, 0, 77))
                off = rng.randrange(0, SIZE - n)
                fua = kind == 'fua'
                data = bytes(n) if kind == 'zero' else \
                    pool[i * 131 % (len(pool) - n):][:n]
                s = m.issue(off, data)
                if kind == 'zero':
                    h.zero(n, off, nbd.CMD_FLAG_FUA if fua else 0)
                else:
                    h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
                m.acked(*s, fua)
            stats[phase, kind, 'ok'] = stats.get((phase, kind, 'ok'), 0) + 1
        except nbd.Error as e:
            if s:
                m.failed(*s)
            seen.setdefault(kind, set()).add(nbd_errno(e))
            stats[phase, kind, 'err'] = stats.get((phase, kind, 'err'),
                                                  0) + 1
    return seen


def failing_disk(tmp, fmt, rng, pool):
    """Part 1 for one chain."""
    import nbd
    name = 'disk-' + fmt
    chain = os.path.join(tmp, 'chain-' + fmt)
    tip, image, files = (make_vhd if fmt == 'vhd' else make_vhdx)(chain, rng)
    before = harness.snapshot(files)
    stats = {}
    with FailingDisk(tmp, name) as disk:
        keep = os.path.join(disk.mnt, 'layer' + os.path.splitext(tip)[1])
        m = Model(image)
        with harness.Nbdkit(tip, 'overlay=' + keep, 'search=' + chain,
                            readonly=False) as srv:
            h = connect(srv)
            seen = ops(h, m, rng, pool, 40, 'healthy', stats)
            r.equal(seen, {}, '%s: healthy device: every operation '
                    'succeeds' % fmt)
            h.flush()
            m.flushed()
            disk.arm(True)
            seen = ops(h, m, rng, pool, 60, 'armed', stats)
            errs = set().union(*seen.values()) if seen else set()
            r.check('flush' in seen or 'fua' in seen,
                    '%s: failing device: a flush or FUA write reports it'
                    % fmt, stats)
            r.check(errs <= {errno.EIO}, '%s: failing device: the errors '
                    'are EIO' % fmt, seen)
            try:
                h.flush()
                sticky = False
            except nbd.Error as e:
                sticky = nbd_errno(e) == errno.EIO
            r.check(sticky, '%s: a flush after the failure fails too' % fmt)
            disk.arm(False)
            seen = ops(h, m, rng, pool, 20, 'disarmed', stats)
            try:
                h.flush()
                sticky = False
            except nbd.Error as e:
                sticky = nbd_errno(e) == errno.EIO
            r.check(sticky, '%s: with the device healthy again a flush '
                    'still fails: sync failures are sticky' % fmt, stats)
            h2 = connect(srv)
            bad = m.live_bad(harness.read_all(h2, SIZE))
            r.check(not bad, '%s: reads (new connection) show every write, '
                    'the server is up' % fmt, '%d bad sectors, first %s'
                    % (len(bad), bad[:5]))
            h.shutdown()
            h2.shutdown()
            rc = srv.stop()     # the flush at exit fails: say so, no hang
            srv.killed = True   # (stopped here: __exit__ has nothing to do)
            r.check(rc is not None and rc >= 0 and harness.error_lines(
                srv.stderr), '%s: nbdkit exits (status %r) saying the layer '
                'could not be flushed' % (fmt, rc), srv.stderr)
        disk.umount()
        fsck = sh('e2fsck', '-fy', disk.loop, check=False)
        r.check(fsck.returncode in (0, 1), '%s: e2fsck repairs the file '
                'system (exit %d)' % (fmt, fsck.returncode),
                fsck.stdout.decode(errors='replace')[-1000:])
        disk.mount()
        rc, out, err = cli.run('check', '-q', '--search', chain, keep)
        r.check(rc == 0, '%s: vhdchain check passes on the layer after '
                'remount' % fmt, (out + err)[-2000:])
        with harness.Nbdkit(keep, 'search=' + chain) as srv:
            got = harness.read_all(connect(srv), SIZE)
        bad = m.bad_sectors(got)
        r.check(not bad, '%s: every durable sector is in the layer (%d '
                'sectors were still pending)' % (fmt, len(m.cand)),
                '%d bad sectors, first %s' % (len(bad), bad[:5]))
        m = Model(got)
        with harness.Nbdkit(tip, 'overlay=' + keep, 'search=' + chain,
                            readonly=False) as srv:
            h = connect(srv)
            seen = ops(h, m, rng, pool, 30, 'continued', stats)
            h.flush()
            m.flushed()
            h.shutdown()
        r.equal(seen, {}, '%s: the layer is continued on the repaired file '
                'system' % fmt)
        with harness.Nbdkit(keep, 'search=' + chain) as srv:
            got = harness.read_all(connect(srv), SIZE)
        r.check(got == bytes(m.model), '%s: and reopens with every write'
                % fmt)
    print('# %s: %s' % (fmt, ', '.join('%s %s %s: %d' % (k + (v,))
                                       for k, v in sorted(stats.items()))))
    r.equal(harness.changed_files(before), [], '%s: chain files unchanged'
            % fmt)


# ---------------------------------------------------------------- shrinking

def read_chunks(h, size, chunk=256 * KiB):
    """{offset: bytes or errno} for each chunk of the disk."""
    import nbd
    out = {}
    for off in range(0, size, chunk):
        try:
            out[off] = h.pread(min(chunk, size - off), off)
        except nbd.Error as e:
            out[off] = nbd_errno(e)
    return out


def shrinking(tmp, fmt, rng, pool):
    chain = os.path.join(tmp, 'shrink-' + fmt)
    tip, image, files = (make_vhd if fmt == 'vhd' else make_vhdx)(chain, rng)
    base = files[0]
    with open(base, 'rb') as f:
        original = f.read()
    m = Model(image)
    with harness.Nbdkit(tip, readonly=False) as srv:
        h = connect(srv)
        stats = {}
        r.equal(ops(h, m, rng, pool, 30, 'before', stats), {},
                '%s shrink: writes before' % fmt)
        h.flush()
        m.flushed()
        os.truncate(base, 3 * MiB + 512)
        got = read_chunks(h, SIZE)
        errs = {v for v in got.values() if isinstance(v, int)}
        ok = [o for o, v in got.items() if not isinstance(v, int)]
        r.check(errs == {errno.EIO}, '%s shrink: reads past the new end get '
                'EIO (%d of %d chunks)' % (fmt, len(got) - len(ok), len(got)),
                errs)
        # Block 0 is the child's, whole: its reads never need the base.
        r.check(0 in ok and all(got[o] == m.model[o:o + len(got[o])]
                                for o in ok),
                '%s shrink: the reads that succeed are right (%d chunks)'
                % (fmt, len(ok)), ' '.join(
                    '%d:%s' % (o // KiB, v if isinstance(v, int) else 'ok'
                               if v == m.model[o:o + len(v)] else 'WRONG')
                    for o, v in got.items()))
        h2 = connect(srv)
        r.equal(h2.get_size(), SIZE, '%s shrink: a new connection works'
                % fmt)
        with open(base, 'r+b') as f:
            f.write(original)
        got = harness.read_all(h2, SIZE)
        r.check(got == bytes(m.model), '%s shrink: the bytes back, every '
                'read is right again' % fmt)
        os.rename(base, base + '.gone')
        os.unlink(base + '.gone')
        with open(base, 'wb') as f:
            f.write(b'\xee' * len(original))
        got = harness.read_all(h, SIZE)
        r.check(got == bytes(m.model), '%s shrink: unlinked and replaced, '
                'it still serves the file it opened' % fmt)
        h.shutdown()
        h2.shutdown()


# ---------------------------------------------------------------- dying fs

def dying_fuse(tmp, rng):
    """The base reached through nbdfuse (nbdkit file plugin): kill it."""
    folder = os.path.join(tmp, 'dying')
    tip, image, files = make_vhd(os.path.join(folder, 'chain'), rng)
    base = files[0]
    mnt = os.path.join(folder, 'fuse')
    os.makedirs(mnt)
    exposed = os.path.join(mnt, 'base.vhd')
    fuse = subprocess.Popen(['nbdfuse', '-r', exposed, '--command', 'nbdkit',
                             '-s', '-r', 'file', base],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(exposed):
                break
            time.sleep(0.05)
        with harness.Nbdkit(tip, 'parent=' + exposed) as srv:
            h = connect(srv)
            r.check(harness.read_all(h, SIZE) == image,
                    'dying fs: served right through FUSE')
            # What was read is in the page cache, which outlives the
            # daemon: drop this file's pages, then kill it.
            fd = os.open(exposed, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            fuse.kill()
            fuse.wait()
            got = read_chunks(h, SIZE)
            errs = {v for v in got.values() if isinstance(v, int)}
            ok = [o for o, v in got.items() if not isinstance(v, int)]
            r.check(errs == {errno.EIO}, 'dying fs: reads that need the '
                    'dead file system get EIO', errs)
            r.check(0 in ok and all(got[o] == image[o:o + len(got[o])]
                                    for o in ok),
                    'dying fs: the %d chunks still read are right' % len(ok))
            r.equal(connect(srv).get_size(), SIZE,
                    'dying fs: a new connection works')
            h.shutdown()
    finally:
        if fuse.poll() is None:
            fuse.kill()
        sh('fusermount3', '-u', '-z', mnt, check=False)


def main():
    harness.require_plugin()
    cli.require_tool()
    if os.getuid() != 0:
        raise harness.TestFailure('needs root (mount, losetup)')
    rng = random.Random(SEED)
    pool = rng.randbytes(1 * MiB)
    with harness.tempdir() as tmp:
        for fmt in ('vhd', 'vhdx'):
            r.run(failing_disk, tmp, fmt, rng, pool, what='failing disk '
                  + fmt)
            r.run(shrinking, tmp, fmt, rng, pool, what='shrinking ' + fmt)
        r.run(dying_fuse, tmp, rng, what='dying fs')


if __name__ == '__main__':
    r.main(main)
