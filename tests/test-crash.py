#!/usr/bin/python3
"""kill -9 of nbdkit at random moments: the kept layer survives each crash.

A client writes to a kept layer (overlay=PATH) over a vhdgen chain with
data in both layers: writes of 1 byte to 512 KiB (aligned or not, some
across 2 MiB block borders, some FUA), zeroes, and a flush every few
operations.  A second thread SIGKILLs nbdkit after a random delay, so the
kill lands anywhere: in a write, in a block allocation, between the two
syncs of a flush, between flushes.  After each crash:

  - the layer is a sound VHD child of the tip (footers, header, every BAT
    entry's block inside the file, no overlaps);
  - nbdkit -r PLUGIN LAYER starts and serves it;
  - every sector holds either its value as of the last completed flush
    (or completed FUA write of that sector) or a value some later write or
    zero gave it; each sector is checked against the set of such
    candidates, so a sector showing garbage, zeros from a half-built
    block, parent data hiding flushed data, or a lost flushed write fails;

and the next round continues the same layer (overlay=PATH again).  A last
round ends with a clean exit, after which the layer must equal the model
exactly.  The chain files never change.
"""

import os
import random
import threading
import time

import harness
import vhdgen as g
from vhdgen import KiB, MiB

r = harness.Reporter('test-crash')

SIZE = 128 * MiB
BLOCK = 2 * MiB
SECTOR = 512
ROUNDS = 24
# Two kinds of rounds, alternating: 'flushing' ones flush often (kills
# land in and between flushes), 'allocating' ones write into new blocks
# often and flush rarely (kills find blocks allocated and written but not
# yet committed).  (flush probability, new-block probability, pause s)
PROFILES = {'flushing': (0.2, 0.01, 0.002),
            'allocating': (0.04, 0.06, 0.004)}
SEED = int(os.environ.get('VHDCHAIN_TEST_SEED', '777'))


def connect(srv):
    """A libnbd handle that may send unaligned requests: the plugin
    advertises the sector as its minimum block size but serves any byte
    range, and these tests write single bytes."""
    return harness.allow_unaligned(srv.connect())


class Model:
    """What the disk must show after a crash.

    model: the disk if every issued operation completed.
    durable: the disk as of the last completed flush (per sector, updated
    also by completed FUA operations on that sector).
    cand: sector -> values given to it since it was last made durable."""

    def __init__(self, image):
        self.model = bytearray(image)
        self.durable = bytearray(image)
        self.cand = {}

    def before(self, off, data):
        """Record the values op (off, data) gives to the sectors it
        touches, before it is sent (it may land even if never acked)."""
        self.model[off:off + len(data)] = data
        s0, s1 = off // SECTOR, (off + len(data) + SECTOR - 1) // SECTOR
        for s in range(s0, s1):
            self.cand.setdefault(s, []).append(
                bytes(self.model[s * SECTOR:(s + 1) * SECTOR]))
        return s0, s1

    def _settle(self, sectors):
        for s in sectors:
            self.durable[s * SECTOR:(s + 1) * SECTOR] = \
                self.model[s * SECTOR:(s + 1) * SECTOR]
            self.cand.pop(s, None)

    def made_durable(self, s0, s1):
        self._settle(range(s0, s1))

    def flushed(self):
        self._settle(list(self.cand))

    def bad_sectors(self, image):
        bad = []
        with_cand = {s * SECTOR // BLOCK for s in self.cand}
        for b in range(0, len(image) // BLOCK):
            a, z = b * BLOCK, (b + 1) * BLOCK
            if b not in with_cand and image[a:z] == self.durable[a:z]:
                continue
            for s in range(a // SECTOR, z // SECTOR):
                got = image[s * SECTOR:(s + 1) * SECTOR]
                if got == self.durable[s * SECTOR:(s + 1) * SECTOR]:
                    continue
                if got in self.cand.get(s, ()):
                    continue
                bad.append(s)
        return bad

    def changed_since_flush(self):
        return len(self.cand)

    def reset(self, image):
        self.__init__(image)


class Placer:
    """Where the next operation goes: mostly into blocks the layer already
    has, sometimes into a block never written, so that new blocks are
    allocated throughout the run and a kill often finds one allocated and
    written but not yet committed by a flush."""

    def __init__(self, rng):
        self.rng = rng
        self.fresh_p = 0.01
        self.touched = set()
        self.fresh = list(range(SIZE // BLOCK))
        rng.shuffle(self.fresh)

    def pick(self):
        rng = self.rng
        if self.fresh and (not self.touched or rng.random() < self.fresh_p):
            b = self.fresh.pop()
        else:
            b = rng.choice(sorted(self.touched))
        x = rng.random()
        if x < 0.3:
            n = rng.randint(1, 700)
        elif x < 0.6:
            n = rng.randint(1, 64) * SECTOR
        else:
            n = rng.randint(2, 512 * KiB)
        off = b * BLOCK + rng.randrange(0, BLOCK)
        if x < 0.6 and rng.random() < 0.5:
            off = off // SECTOR * SECTOR
        if x >= 0.6 and rng.random() < 0.5 and b + 1 < SIZE // BLOCK:
            off = (b + 1) * BLOCK - rng.randint(1, n - 1)   # across
        off = max(0, min(off, SIZE - n))
        for c in range(off // BLOCK, (off + n - 1) // BLOCK + 1):
            self.touched.add(c)
            if c in self.fresh:
                self.fresh.remove(c)
        return off, n


def client(h, m, rng, pool, stats, placer, profile):
    """Write until the connection dies."""
    import nbd
    flush_p, placer.fresh_p, pace = PROFILES[profile]
    while True:
        x = rng.random()
        try:
            if x < flush_p:
                h.flush()
                m.flushed()
                stats['flushes'] += 1
                continue
            time.sleep(pace)
            off, n = placer.pick()
            fua = rng.random() < 0.1
            flags = nbd.CMD_FLAG_FUA if fua else 0
            if rng.random() < 0.2:
                s0, s1 = m.before(off, bytes(n))
                h.zero(n, off, flags)
                stats['zeroes'] += 1
            else:
                k = rng.randrange(0, len(pool) - n)
                data = pool[k:k + n]
                s0, s1 = m.before(off, data)
                h.pwrite(data, off, flags)
                stats['writes'] += 1
            if fua:
                m.made_durable(s0, s1)
        except nbd.Error:
            return


def killer(srv, delay, done):
    time.sleep(delay)
    srv.kill()
    done.set()


def read_layer(keep):
    """(image, error) of the layer served alone, read-only."""
    try:
        with harness.Nbdkit(keep) as srv:
            h = connect(srv)
            image = harness.read_all(h, SIZE)
            h.shutdown()
        return image, None
    except Exception as e:          # start failure, read failure
        return None, '%s: %s' % (type(e).__name__, e)


def one_round(n, tip, keep, m, rng, pool, totals, placer):
    stats = dict(writes=0, zeroes=0, flushes=0)
    delay = rng.uniform(0.01, 0.6)
    profile = 'flushing' if n % 2 else 'allocating'
    srv = harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False)
    try:
        srv.__enter__()
    except harness.StartError as e:
        r.check(False, 'round %d: writable restart on the layer' % n, e)
        return False
    done = threading.Event()
    try:
        h = connect(srv)
        t = threading.Thread(target=killer, args=(srv, delay, done))
        t.start()
        client(h, m, rng, pool, stats, placer, profile)
        t.join()
        del h
    finally:
        srv.__exit__(None, None, None)
    totals['writes'] += stats['writes']
    totals['flushes'] += stats['flushes']
    label = 'round %d, %s (killed after %.0f ms: %d writes, %d zeroes, ' \
        '%d flushes)' % (n, profile, delay * 1000, stats['writes'], stats['zeroes'],
                         stats['flushes'])
    bad = harness.vhd_structure_problems(keep, parent=tip.path,
                                         block_size=BLOCK)
    r.check(not bad, label + ': sound VHD child', '\n'.join(bad[:10]))
    image, err = read_layer(keep)
    if not r.check(image is not None, label + ': served alone', err):
        return False
    badsec = m.bad_sectors(image)
    detail = []
    for s in badsec[:6]:
        got = image[s * SECTOR:(s + 1) * SECTOR]
        detail.append('sector %d (block %d): reads %s..., durable %s..., '
                      '%d later candidates, all-zero read: %s' % (
                          s, s * SECTOR // BLOCK, got[:8].hex(),
                          m.durable[s * SECTOR:s * SECTOR + 8].hex(),
                          len(m.cand.get(s, ())), not any(got)))
    r.check(not badsec, label + ': every sector is its flushed value or a '
            'later one', '%d bad sectors\n%s' % (len(badsec),
                                                '\n'.join(detail)))
    newer = sum(1 for s in m.cand
                if image[s * SECTOR:(s + 1) * SECTOR] != m.durable[
                    s * SECTOR:(s + 1) * SECTOR])
    totals['unflushed_seen'] += newer
    totals['unflushed'] += m.changed_since_flush()
    m.reset(image)
    return True


def main():
    harness.require_plugin()
    import nbd  # noqa: F401
    rng = random.Random(SEED)
    print('seed %d' % SEED)
    pool = rng.randbytes(4 * MiB)
    with harness.tempdir() as tmp:
        c = g.Chain(os.path.join(tmp, 'chain'), seed=SEED)
        # Parent data in every block (256 KiB of each), so a block that
        # shows up without its data reads visibly wrong.
        spots = [(b * BLOCK + rng.randrange(0, 7) * 256 * KiB,
                  rng.randbytes(256 * KiB)) for b in range(SIZE // BLOCK)]
        c.base('base.vhd', SIZE, writes=spots +
               g.random_writes(rng, SIZE, 40, max_sectors=500))
        c.child('snap1.avhd', writes=g.random_writes(rng, SIZE, 200,
                                                     max_sectors=300))
        points = c.write(expected='tip')
        tip = points[-1]
        before = harness.snapshot([p.path for p in points])
        keep = os.path.join(tmp, 'chain', 'crash.avhd')
        m = Model(tip.expected())
        placer = Placer(rng)
        totals = dict(writes=0, flushes=0, unflushed=0, unflushed_seen=0)
        t0 = time.monotonic()
        for n in range(1, ROUNDS + 1):
            if not r.run(one_round, n, tip, keep, m, rng, pool, totals, placer,
                         what='round %d' % n):
                break
        print('# %d rounds in %.1f s: %d writes, %d flushes; of %d sectors '
              'changed after the last flush, %d showed the new value'
              % (ROUNDS, time.monotonic() - t0, totals['writes'],
                 totals['flushes'], totals['unflushed'],
                 totals['unflushed_seen']))
        r.check(totals['flushes'] >= ROUNDS and totals['writes'] >= 4 * ROUNDS,
                'the rounds did real work', totals)
        r.check(len(placer.touched) >= 2 * ROUNDS,
                'blocks kept being allocated (%d of %d touched)'
                % (len(placer.touched), SIZE // BLOCK))

        # A clean exit keeps everything, flushed or not.
        with harness.Nbdkit(tip.path, 'overlay=' + keep,
                            readonly=False) as srv:
            h = connect(srv)
            for _ in range(50):
                off, n = placer.pick()
                k = rng.randrange(0, len(pool) - n)
                h.pwrite(pool[k:k + n], off)
                m.before(off, pool[k:k + n])
            h.shutdown()
        image, err = read_layer(keep)
        r.check(image is not None and image == m.model,
                'after a clean exit the layer equals the model', err or
                'first difference at %s' % harness.first_difference(
                    image or b'', m.model))
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


if __name__ == '__main__':
    r.main(main)
