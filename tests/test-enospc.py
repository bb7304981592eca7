#!/usr/bin/python3
"""A kept layer on a file system that fills up (needs root: mount).

The layer (overlay=PATH) lives on a small file system, once a tmpfs of
8 MiB and once a loop-mounted ext4 of 20 MiB, while the chain (a 32 MiB
vhdgen chain with data in the base) lives elsewhere.  The client writes
1 KiB - 1 MiB pieces (unaligned ones too) all over the disk, so new blocks
keep being allocated, with a flush every third write, until the file
system is full.  Checked:

  - writes beyond capacity fail with ENOSPC or EIO, never succeed
    silently, and the server stays up: reads on the same and on a new
    connection still work and show the model;
  - overwriting data the layer already holds still works when the file
    system is full (it needs no new space), and so does a flush;
  - after a clean exit, the layer opens (served alone, read-only, on the
    full file system) and every sector holds its flushed value, or for
    sectors under a failed write either the old or the new value;
  - once space is freed, the layer is continued (overlay=PATH again),
    takes new blocks and reopens with everything.

Mounts are undone in a finally.
"""

import errno
import os
import random
import subprocess
import time

import harness
import vhdgen as g
from vhdgen import KiB, MiB

r = harness.Reporter('test-enospc')

SIZE = 32 * MiB
SECTOR = 512
SEED = int(os.environ.get('VHDCHAIN_TEST_SEED', '99'))


def connect(srv):
    """A libnbd handle that may send unaligned requests: the plugin
    advertises the sector as its minimum block size but serves any byte
    range, and these tests write single bytes."""
    return harness.allow_unaligned(srv.connect())


def mount_small(kind, tmp):
    """Mount a small file system; return (mountpoint, undo function)."""
    mnt = os.path.join(tmp, 'mnt-' + kind)
    os.mkdir(mnt)
    if kind == 'tmpfs':
        harness.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt])
    else:
        img = os.path.join(tmp, 'ext4.img')
        with open(img, 'wb') as f:
            f.truncate(20 * MiB)
        harness.run(['mkfs.ext4', '-q', '-F', img])
        harness.run(['mount', '-o', 'loop', img, mnt])

    def undo():
        for _ in range(50):
            if subprocess.run(['umount', mnt],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        subprocess.run(['umount', '-l', mnt], capture_output=True)
    return mnt, undo


class Model:
    """model: the disk if every write landed; durable: as of the last
    completed flush; maybe: sector -> other values it may show (writes
    after that flush, failed writes)."""

    def __init__(self, image):
        self.model = bytearray(image)
        self.durable = bytearray(image)
        self.maybe = {}
        self.failed_sectors = set()

    def note(self, off, data):
        old = bytes(self.model[off:off + len(data)])
        self.model[off:off + len(data)] = data
        for s in range(off // SECTOR, (off + len(data) - 1) // SECTOR + 1):
            self.maybe.setdefault(s, set()).add(
                bytes(self.model[s * SECTOR:(s + 1) * SECTOR]))
        return old

    def failed(self, off, data, old):
        """A failed write: its sectors may show old or new; the model
        keeps the old (NBD leaves the range unspecified)."""
        self.model[off:off + len(data)] = old
        for s in range(off // SECTOR, (off + len(data) - 1) // SECTOR + 1):
            self.maybe.setdefault(s, set()).add(
                bytes(self.model[s * SECTOR:(s + 1) * SECTOR]))
        self.failed_sectors.update(
            range(off // SECTOR, (off + len(data) - 1) // SECTOR + 1))

    def flushed(self):
        self.durable[:] = self.model
        # Sectors under failed writes stay uncertain.
        self.maybe = {s: v for s, v in self.maybe.items()
                      if s in self.failed_sectors}

    def bad(self, image):
        out = []
        for s in range(len(image) // SECTOR):
            got = bytes(image[s * SECTOR:(s + 1) * SECTOR])
            if got != self.durable[s * SECTOR:(s + 1) * SECTOR] and \
                    got not in self.maybe.get(s, ()):
                out.append(s)
        return out

    def uncertain_equal(self, image):
        """image equals the model outside sectors of failed writes."""
        for s in range(len(image) // SECTOR):
            if s in self.failed_sectors:
                continue
            if image[s * SECTOR:(s + 1) * SECTOR] != \
                    self.model[s * SECTOR:(s + 1) * SECTOR]:
                return s
        return None


def read_alone(keep, chain_dir):
    with harness.Nbdkit(keep, 'search=' + chain_dir) as srv:
        h = connect(srv)
        image = harness.read_all(h, SIZE)
        h.shutdown()
    return image


def fill_up(h, m, rng, pool, label):
    """Write until the file system is full; returns (errors, written)."""
    import nbd
    errors, written, since_flush = [], [], 0
    for i in range(400):
        n = rng.choice((rng.randint(1, 64) * KiB, MiB,
                        rng.randint(1, MiB)))
        off = rng.randrange(0, SIZE - n)
        if rng.random() < 0.5:
            off = off // SECTOR * SECTOR
        k = rng.randrange(0, len(pool) - n)
        data = pool[k:k + n]
        old = m.note(off, data)
        try:
            h.pwrite(data, off)
            written.append((off, n))
        except nbd.Error as e:
            m.failed(off, data, old)
            errors.append(e)
            if len(errors) >= 4:
                break
            continue
        since_flush += 1
        if since_flush == 3:
            since_flush = 0
            try:
                h.flush()
                m.flushed()
            except nbd.Error as e:
                errors.append(e)
    return errors, written


def scenario(kind, tmp, points, rng, pool):
    tip = points[-1]
    chain_dir = os.path.dirname(tip.path)
    mnt, undo = mount_small(kind, tmp)
    try:
        ballast = os.path.join(mnt, 'ballast')
        with open(ballast, 'wb') as f:
            f.write(b'\x5a' * (3 * MiB // 2))
        keep = os.path.join(mnt, 'keep.avhd')
        m = Model(tip.expected())
        import nbd
        with harness.Nbdkit(tip.path, 'overlay=' + keep,
                            readonly=False) as srv:
            h = connect(srv)
            errors, written = fill_up(h, m, rng, pool, kind)
            r.check(errors, kind + ': writes beyond capacity fail',
                    'no error after %d writes, %s free' % (
                        len(written), os.statvfs(mnt).f_bavail))
            codes = sorted({e.errnum for e in errors})
            r.check(errors and all(c in (errno.ENOSPC, errno.EIO)
                                   for c in codes),
                    kind + ': the errors are ENOSPC or EIO',
                    'errnos %r: %s' % (codes, errors[:2]))
            r.check(os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
                    < 1 * MiB, kind + ': the file system is (nearly) full',
                    '%d blocks free' % os.statvfs(mnt).f_bavail)
            # Still up: reads on this and on a new connection.
            got = harness.read_all(h, SIZE)
            d = m.uncertain_equal(got)
            r.check(d is None, kind + ': reads after the errors show the '
                    'model', 'first bad sector %s' % d)
            h2 = connect(srv)
            r.check(h2.pread(4096, 0) == m.model[:4096] or
                    0 in m.failed_sectors,
                    kind + ': a new connection reads')
            # Overwrite data the layer already holds: no new space needed.
            ok_over = []
            for off, n in written[:5]:
                data = pool[:n]
                old = m.note(off, data)
                try:
                    h2.pwrite(data, off)
                    ok_over.append(True)
                except nbd.Error as e:
                    m.failed(off, data, old)
                    ok_over.append(e)
            r.check(ok_over and all(x is True for x in ok_over),
                    kind + ': overwrites of data already in the layer '
                    'succeed on the full file system', ok_over)
            try:
                h2.flush()
                m.flushed()
                flush_ok = True
            except nbd.Error as e:
                flush_ok = e
            r.check(flush_ok is True, kind + ': a flush on the full file '
                    'system succeeds', flush_ok)
            h.shutdown()
            h2.shutdown()
        bad = harness.vhd_structure_problems(keep, parent=tip.path,
                                             block_size=2 * MiB)
        r.check(not bad, kind + ': the layer is a sound VHD child',
                '\n'.join(bad))
        image = read_alone(keep, chain_dir)
        badsec = m.bad(image)
        r.check(not badsec, kind + ': served alone, every sector holds its '
                'flushed value (old or new under failed writes)',
                '%d bad sectors, first %s' % (len(badsec), badsec[:8]))
        d = m.uncertain_equal(image)
        r.check(d is None, kind + ': a clean exit kept every successful '
                'write', 'first differing sector %s' % d)

        # Free space; continue the layer; new blocks again.
        os.unlink(ballast)
        m = Model(image)
        with harness.Nbdkit(tip.path, 'overlay=' + keep,
                            readonly=False) as srv:
            h = connect(srv)
            for off in (SIZE - 3 * MiB // 2 - 5, 17 * MiB + 1, 3 * MiB):
                data = pool[:300 * KiB]
                m.note(off, data)
                h.pwrite(data, off)
            h.flush()
            m.flushed()
            h.shutdown()
        r.check(True, kind + ': after freeing space, writes and a flush on '
                'the continued layer succeed')
        image = read_alone(keep, chain_dir)
        d = m.uncertain_equal(image)
        r.check(d is None, kind + ': the continued layer reopens with '
                'everything', 'first differing sector %s' % d)
    finally:
        undo()
    r.check(not os.path.ismount(mnt), kind + ': unmounted')


def main():
    harness.require_plugin()
    harness.require_tools('mount', 'umount', 'mkfs.ext4')
    if os.geteuid() != 0:
        raise harness.TestFailure('test-enospc needs root (mount)')
    import nbd  # noqa: F401
    rng = random.Random(SEED)
    pool = rng.randbytes(3 * MiB)
    with harness.tempdir() as tmp:
        c = g.Chain(os.path.join(tmp, 'chain'), seed=SEED)
        c.base('base.vhd', SIZE, writes=g.fill_writes(rng, 4 * MiB) +
               g.random_writes(rng, SIZE, 80, max_sectors=400))
        c.child('snap1.avhd', writes=g.random_writes(rng, SIZE, 40,
                                                     max_sectors=200))
        points = c.write()
        before = harness.snapshot([p.path for p in points])
        for kind in ('tmpfs', 'ext4'):
            r.run(scenario, kind, tmp, points, rng, pool, what=kind)
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


if __name__ == '__main__':
    r.main(main)
