#!/usr/bin/python3
"""kill -9 of nbdkit while it writes a kept VHDX layer: nothing flushed is
lost, nothing half-made shows.

Part of the VHDX write tests (test-vhdx-write.py holds the rest; this one is
apart to keep each under a minute).  Two vhdxgen chains (512 and 4096-byte
logical sectors) with data in both layers; a client writes to a kept layer
(overlay=PATH): writes of 1 byte to 400 KiB, aligned or not, across 2 MiB
block borders, into blocks not allocated yet and into allocated ones,
zeroes, FUA, and a flush every few operations.  A second thread SIGKILLs
nbdkit after a random delay, 20 times in all, so kills land in writes,
block allocations, between the syncs of a flush, between flushes.  After
each kill:

  - the layer is a sound VHDX child of the tip (the test's own reader:
    both headers valid, LogGuid zero, region tables, metadata, every BAT
    entry inside the file, sector-bitmap blocks for PARTIALLY_PRESENT
    blocks, no overlaps);
  - nbdkit -r PLUGIN LAYER serves it;
  - every logical sector holds its value as of the last completed flush
    (or completed FUA write to it) or a value a later write or zero gave
    it: garbage, a half-built block, parent data over flushed data, or a
    lost flushed write fails;

and the next round continues the same layer.  A last round of each chain
ends with a clean exit, after which the layer must equal the model exactly.
The chain files never change.
"""

import os
import random
import threading
import time

import harness
import vhdxgen as g
from vhdxgen import KiB, MiB

r = harness.Reporter('test-vhdx-crash')

SIZE = 96 * MiB
BLOCK = 2 * MiB
SEED = int(os.environ.get('VHDCHAIN_TEST_SEED', '4242'))
ROUNDS = {512: 12, 4096: 8}             # 20 kills
# Round profiles: (flush probability, fresh block probability, pause
# between operations).  'allocating' rounds spend their time between
# flushes with new blocks in flight, 'flushing' ones mostly in flushes.
PROFILES = {'allocating': (0.02, 0.1, 0.002),
            'flushing': (0.25, 0.03, 0.0)}


class Model:
    """model: the disk if every issued operation completed; durable: as
    of the last flush (and completed FUA operations); cand: sector ->
    values given to it since it was last made durable."""

    def __init__(self, image, sector):
        self.sector = sector
        self.model = bytearray(image)
        self.durable = bytearray(image)
        self.cand = {}

    def before(self, off, data):
        sec = self.sector
        self.model[off:off + len(data)] = data
        s0, s1 = off // sec, (off + len(data) + sec - 1) // sec
        for s in range(s0, s1):
            self.cand.setdefault(s, []).append(
                bytes(self.model[s * sec:(s + 1) * sec]))
        return s0, s1

    def made_durable(self, s0, s1):
        sec = self.sector
        self.durable[s0 * sec:s1 * sec] = self.model[s0 * sec:s1 * sec]
        for s in range(s0, s1):
            self.cand.pop(s, None)

    def flushed(self):
        self.durable[:] = self.model
        self.cand = {}

    def bad_sectors(self, image):
        sec, bad, step = self.sector, [], 64 * KiB
        for o in range(0, len(image), step):
            if image[o:o + step] == self.durable[o:o + step]:
                continue
            for s in range(o // sec, (o + step) // sec):
                got = image[s * sec:(s + 1) * sec]
                if got != self.durable[s * sec:(s + 1) * sec] and \
                        got not in self.cand.get(s, ()):
                    bad.append(s)
        return bad


def op_range(rng, touched, fresh, fresh_p):
    if fresh and (not touched or rng.random() < fresh_p):
        b = fresh.pop()
    else:
        b = rng.choice(sorted(touched))
    x = rng.random()
    n = rng.randint(1, 700) if x < 0.3 else \
        rng.randint(1, 64) * 512 if x < 0.6 else rng.randint(2, 400 * KiB)
    off = b * BLOCK + rng.randrange(0, BLOCK)
    if x < 0.6 and rng.random() < 0.5:
        off = off // 512 * 512
    if x >= 0.6 and rng.random() < 0.5 and b + 1 < SIZE // BLOCK:
        off = (b + 1) * BLOCK - rng.randint(1, n - 1)
    off = max(0, min(off, SIZE - n))
    for c in range(off // BLOCK, (off + n - 1) // BLOCK + 1):
        touched.add(c)
        if c in fresh:
            fresh.remove(c)
    return off, n


def client(h, m, rng, pool, stats, touched, fresh, stop, profile):
    import nbd
    flush_p, fresh_p, pace = PROFILES[profile]
    while not stop.is_set():
        x = rng.random()
        try:
            if x < flush_p:
                h.flush()
                m.flushed()
                stats['flushes'] += 1
                continue
            time.sleep(pace)
            off, n = op_range(rng, touched, fresh, fresh_p)
            fua = rng.random() < 0.1
            flags = nbd.CMD_FLAG_FUA if fua else 0
            if rng.random() < 0.2:
                s0, s1 = m.before(off, bytes(n))
                h.zero(n, off, flags)
                stats['zeroes'] += 1
            else:
                k = rng.randrange(0, len(pool) - n)
                s0, s1 = m.before(off, pool[k:k + n])
                h.pwrite(pool[k:k + n], off, flags)
                stats['writes'] += 1
            if fua:
                m.made_durable(s0, s1)
        except nbd.Error:
            return


def read_layer(keep):
    try:
        with harness.Nbdkit(keep) as srv:
            h = srv.connect()
            image = harness.read_all(h, SIZE)
            h.shutdown()
        return image, None
    except Exception as e:
        return None, '%s: %s' % (type(e).__name__, e)


def unaligned(h):
    import nbd
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
    return h


def one_round(label, tip, keep, m, rng, pool, touched, fresh, kill,
              totals, profile):
    stats = dict(writes=0, zeroes=0, flushes=0)
    delay = rng.uniform(0.02, 0.6)
    srv = harness.Nbdkit(tip, 'overlay=' + keep, readonly=False)
    try:
        srv.__enter__()
    except harness.StartError as e:
        r.check(False, label + ': writable restart on the layer', e)
        return False
    stop = threading.Event()
    try:
        h = unaligned(srv.connect())
        if kill:
            t = threading.Thread(target=lambda: (time.sleep(delay),
                                                 srv.kill()))
            t.start()
            client(h, m, rng, pool, stats, touched, fresh, stop, profile)
            t.join()
        else:
            timer = threading.Timer(0.3, stop.set)
            timer.start()
            client(h, m, rng, pool, stats, touched, fresh, stop, profile)
            h.flush()
            m.flushed()
            h.shutdown()
        del h
    finally:
        srv.__exit__(None, None, None)
    totals['writes'] += stats['writes']
    what = '%s, %s (%s after %.0f ms: %d writes, %d zeroes, %d flushes)' \
        % (label, profile, 'killed' if kill else 'clean exit', delay * 1000,
        stats['writes'], stats['zeroes'], stats['flushes'])
    bad = g.structure_problems(keep, parent=tip)
    r.check(not bad, what + ': sound VHDX child', '\n'.join(bad[:10]))
    image, err = read_layer(keep)
    if not r.check(image is not None, what + ': served alone', err):
        return False
    if not kill:
        r.check(image == m.model, what + ': equals the model exactly')
        return True
    badsec = m.bad_sectors(image)
    sec = m.sector
    detail = ['sector %d (block %d): reads %s..., durable %s..., %d later '
              'candidates' % (s, s * sec // BLOCK,
                              image[s * sec:s * sec + 8].hex(),
                              m.durable[s * sec:s * sec + 8].hex(),
                              len(m.cand.get(s, ()))) for s in badsec[:6]]
    r.check(not badsec, what + ': every sector is its flushed value or a '
            'later one', '%d bad sectors\n%s' % (len(badsec),
                                                '\n'.join(detail)))
    totals['unflushed'] += len(m.cand)
    m.__init__(image, sec)
    return True


def run_chain(tmp, sector, rounds, rng, totals):
    folder = os.path.join(tmp, 'c%d' % sector)
    c = g.Chain(folder, seed=sector)
    bbs = 1 * MiB if sector == 4096 else 32 * MiB
    c.base('base.vhdx', SIZE, block_size=bbs, logical_sector=sector,
           writes=g.fill_writes(rng, SIZE))      # parent data everywhere
    c.child('tip.avhdx', writes=g.random_writes(rng, SIZE, 60,
                                                sector=sector))
    points = c.write()
    tip = points[-1]
    before = harness.snapshot([p.path for p in points])
    keep = os.path.join(folder, 'keep.avhdx')
    m = Model(tip.image.read(0, SIZE), sector)
    pool = rng.randbytes(4 * MiB)
    touched, fresh = set(), list(range(SIZE // BLOCK))
    rng.shuffle(fresh)
    for n in range(rounds + 1):
        if not one_round('%d-byte sectors, round %d' % (sector, n), tip.path,
                         keep, m, rng, pool, touched, fresh, n < rounds,
                         totals, 'allocating' if n % 2 == 0 else
                         'flushing'):
            break
    r.equal(harness.changed_files(before), [],
            'chain files unchanged (%d-byte sectors)' % sector)


def main():
    harness.require_plugin()
    import nbd  # noqa: F401
    rng = random.Random(SEED)
    print('seed %d' % SEED)
    totals = dict(writes=0, unflushed=0)
    with harness.tempdir() as tmp:
        for sector, rounds in ROUNDS.items():
            r.run(run_chain, tmp, sector, rounds, rng, totals,
                  what='%d-byte sectors' % sector)
    # The kills must have landed with work in flight, or nothing was shown.
    r.check(totals['unflushed'] > 0, 'kills landed with unflushed writes '
            '(%d sectors in all, %d writes)' % (totals['unflushed'],
                                                totals['writes']))


if __name__ == '__main__':
    r.main(main)
