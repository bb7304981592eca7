#!/usr/bin/python3
"""kill -9 at 100 random moments of a mixed workload over several
connections (issue 8, "Faults"): nothing acknowledged and flushed is lost,
and the layer passes vhdchain check after every crash.

Two chains, a VHD one (vhdgen) and a VHDX one (vhdxgen), each with data in
both layers; each gets a kept layer (overlay=PATH) that the rounds
continue, alternating between the chains, 50 rounds each.  In a round
three connections work at once, each in its own thread: writes (1 byte to
64 KiB, aligned or not, some FUA), zeroes (some FUA), trims (some FUA) and
flushes, into blocks the layer has and into new ones, so that blocks are
allocated concurrently by several connections.  Each connection owns
every third 64 KiB of the disk, so the operations on any one sector come
from one connection in order and the model below is exact; 2 MiB blocks
are shared by all three.  A killer thread SIGKILLs nbdkit after a random
delay (20 to 350 ms).

The model (per sector): the value it had at the last point it was made
durable, and the values the operations issued since gave it.  An operation
is durable once acknowledged with FUA, or acknowledged before a flush (on
any connection: the plugin advertises multi-conn) or a FUA trim was sent
that then completed.  Trims keep what a range holds (README "Writes").
After each kill:

  - `vhdchain check LAYER` exits 0 (every structure of the layer and its
    link to the chain);
  - nbdkit -r PLUGIN LAYER serves it, and every sector holds its durable
    value or one a later operation gave it: a lost flushed write, parent
    data over flushed data, zeros from a half-built block or garbage fail;

and the next round continues the layer.  At the end each layer gets a
round that exits cleanly, after which it must equal the model exactly, and
the chain files must be unchanged.
"""

import itertools
import os
import random
import threading
import time

import harness
import vhdchain_cli as cli
import vhdgen
import vhdxgen
from vhdgen import KiB, MiB

r = harness.Reporter('test-crash-multi')

SIZE = 16 * MiB
BLOCK = 2 * MiB
SECTOR = 512
CHUNK = 64 * KiB                 # connection c owns chunks k with k % 3 == c
CONNS = 3
ROUNDS = int(os.environ.get('VHDCHAIN_CRASH_ROUNDS', '100'))
SEED = int(os.environ.get('VHDCHAIN_TEST_SEED', '8080'))


class Model:
    """See the top of the file.  Thread-safe: one lock for everything."""

    def __init__(self, image):
        self.lock = threading.Lock()
        self.clock = itertools.count()
        self.reset(image)

    def reset(self, image):
        self.model = bytearray(image)
        self.durable = bytearray(image)
        self.cand = {}           # sector -> [(op id, value)]
        self.ops = {}            # op id -> [s0, s1, acked at or None]
        self.ids = itertools.count()

    def issue(self, off, data):
        """Record what op (off, data) gives its sectors before it is sent:
        it may land even if never acknowledged.  Returns its id."""
        with self.lock:
            op = next(self.ids)
            self.model[off:off + len(data)] = data
            s0, s1 = off // SECTOR, (off + len(data) + SECTOR - 1) // SECTOR
            for s in range(s0, s1):
                self.cand.setdefault(s, []).append(
                    (op, bytes(self.model[s * SECTOR:(s + 1) * SECTOR])))
            self.ops[op] = [s0, s1, None]
            return op

    def acked(self, op, fua):
        with self.lock:
            self.ops[op][2] = next(self.clock)
            if fua:
                self._settle(op)

    def flush_starts(self):
        with self.lock:
            return next(self.clock)

    def flushed(self, start):
        """A flush sent at clock `start` completed."""
        with self.lock:
            for op, (_, _, at) in list(self.ops.items()):
                if at is not None and at < start:
                    self._settle(op)

    def _settle(self, op):
        s0, s1, _ = self.ops.pop(op)
        for s in range(s0, s1):
            lst = self.cand.get(s, [])
            for i, (o, value) in enumerate(lst):
                if o == op:
                    self.durable[s * SECTOR:(s + 1) * SECTOR] = value
                    if i + 1 < len(lst):
                        self.cand[s] = lst[i + 1:]
                    else:
                        del self.cand[s]
                    break

    def bad_sectors(self, image):
        bad = []
        blocks = {s * SECTOR // BLOCK for s in self.cand}
        for b in range(SIZE // BLOCK):
            a, z = b * BLOCK, (b + 1) * BLOCK
            if b not in blocks and image[a:z] == self.durable[a:z]:
                continue
            for s in range(a // SECTOR, z // SECTOR):
                got = image[s * SECTOR:(s + 1) * SECTOR]
                if got == self.durable[s * SECTOR:(s + 1) * SECTOR]:
                    continue
                if any(got == v for _, v in self.cand.get(s, ())):
                    continue
                bad.append(s)
        return bad


class Placer:
    """Offsets inside connection c's chunks: mostly in blocks already
    written, sometimes in a fresh block."""

    def __init__(self, rng):
        self.rng = rng
        self.touched = set()
        self.lock = threading.Lock()

    def pick(self, c, rng, fresh_p):
        with self.lock:
            nb = SIZE // BLOCK
            if not self.touched or rng.random() < fresh_p:
                b = rng.randrange(nb)
            else:
                b = rng.choice(sorted(self.touched))
            self.touched.add(b)
        per = BLOCK // CHUNK
        j0 = (c - b * per) % CONNS            # first chunk of c in block b
        k = b * per + j0 + CONNS * rng.randrange((per - j0 + CONNS - 1)
                                                 // CONNS)
        assert k % CONNS == c and k // per == b
        start, end = k * CHUNK, (k + 1) * CHUNK
        x = rng.random()
        if x < 0.3:
            n = rng.randint(1, 700)
        elif x < 0.7:
            n = rng.randint(1, 64) * SECTOR
        else:
            n = rng.randint(2, CHUNK)
        off = rng.randrange(start, end)
        if x >= 0.3 and rng.random() < 0.6:
            off = off // SECTOR * SECTOR
        n = min(n, end - off)
        return off, n


def worker(h, c, m, placer, rng, pool, stats, fresh_p):
    import nbd
    while True:
        x = rng.random()
        try:
            if x < 0.08:
                start = m.flush_starts()
                h.flush()
                m.flushed(start)
                stats['flushes'] += 1
                continue
            off, n = placer.pick(c, rng, fresh_p)
            fua = rng.random() < 0.12
            flags = nbd.CMD_FLAG_FUA if fua else 0
            if x < 0.16:
                start = m.flush_starts() if fua else None
                h.trim(n, off, flags)
                if fua:
                    m.flushed(start)
                stats['trims'] += 1
            elif x < 0.32:
                op = m.issue(off, bytes(n))
                h.zero(n, off, flags)
                m.acked(op, fua)
                stats['zeroes'] += 1
            else:
                k = rng.randrange(0, len(pool) - n)
                op = m.issue(off, pool[k:k + n])
                h.pwrite(pool[k:k + n], off, flags)
                m.acked(op, fua)
                stats['writes'] += 1
        except nbd.Error:
            return


def connect(srv):
    return harness.allow_unaligned(srv.connect())


def read_layer(keep):
    try:
        with harness.Nbdkit(keep) as srv:
            h = connect(srv)
            image = harness.read_all(h, SIZE)
            h.shutdown()
        return image, None
    except Exception as e:
        return None, '%s: %s' % (type(e).__name__, e)


class Subject:
    """One chain, its kept layer and its model."""

    def __init__(self, name, tip, image, keep):
        self.name, self.tip, self.keep = name, tip, keep
        self.m = Model(image)
        self.rounds = 0


def one_round(n, s, rng, pool, placer, totals):
    stats = dict(writes=0, zeroes=0, trims=0, flushes=0)
    delay = rng.uniform(0.02, 0.35)
    fresh_p = rng.choice((0.02, 0.08))
    srv = harness.Nbdkit(s.tip, 'overlay=' + s.keep, readonly=False)
    try:
        srv.__enter__()
    except harness.StartError as e:
        r.check(False, 'round %d (%s): writable restart on the layer'
                % (n, s.name), e)
        return False
    try:
        hs = [connect(srv) for _ in range(CONNS)]
        ts = [threading.Thread(target=worker, args=(
            hs[c], c, s.m, placer, random.Random(rng.random()), pool, stats,
            fresh_p)) for c in range(CONNS)]
        for t in ts:
            t.start()
        time.sleep(delay)
        srv.kill()
        for t in ts:
            t.join()
        del hs
    finally:
        srv.__exit__(None, None, None)
    s.rounds += 1
    for k in stats:
        totals[k] += stats[k]
    label = 'round %d, %s (killed after %.0f ms: %d writes, %d zeroes, ' \
        '%d trims, %d flushes)' % (n, s.name, delay * 1000, stats['writes'],
                                   stats['zeroes'], stats['trims'],
                                   stats['flushes'])
    rc, out, err = cli.run('check', '-q', s.keep)
    r.check(rc == 0, label + ': vhdchain check passes', (out + err)[-2000:])
    image, err = read_layer(s.keep)
    if not r.check(image is not None, label + ': served alone', err):
        return False
    bad = s.m.bad_sectors(image)
    detail = ['sector %d (block %d): reads %s..., durable %s..., %d later '
              'candidates' % (x, x * SECTOR // BLOCK,
                              image[x * SECTOR:x * SECTOR + 8].hex(),
                              s.m.durable[x * SECTOR:x * SECTOR + 8].hex(),
                              len(s.m.cand.get(x, ()))) for x in bad[:6]]
    r.check(not bad, label + ': every sector is its durable value or a '
            'later one', '%d bad sectors\n%s' % (len(bad), '\n'.join(detail)))
    totals['pending'] += len(s.m.cand)
    totals['pending_seen'] += sum(
        1 for x in s.m.cand if image[x * SECTOR:(x + 1) * SECTOR] !=
        s.m.durable[x * SECTOR:(x + 1) * SECTOR])
    s.m.reset(image)
    return True


def clean_round(s, rng, pool, placer):
    """Writes on every connection, then a clean exit: everything kept."""
    with harness.Nbdkit(s.tip, 'overlay=' + s.keep, readonly=False) as srv:
        hs = [connect(srv) for _ in range(CONNS)]
        for i in range(60):
            c = i % CONNS
            off, n = placer.pick(c, rng, 0.1)
            k = rng.randrange(0, len(pool) - n)
            s.m.issue(off, pool[k:k + n])
            hs[c].pwrite(pool[k:k + n], off)
        for h in hs:
            h.shutdown()
    rc, out, err = cli.run('check', '-q', s.keep)
    r.check(rc == 0, '%s: vhdchain check after a clean exit' % s.name,
            out + err)
    image, err = read_layer(s.keep)
    r.check(image is not None and image == bytes(s.m.model),
            '%s: after a clean exit the layer equals the model' % s.name,
            err or 'first difference at %s' % harness.first_difference(
                image or b'', bytes(s.m.model)))


def make_chains(tmp, rng):
    vd = os.path.join(tmp, 'vhd')
    c = vhdgen.Chain(vd, seed=SEED)
    c.base('base.vhd', SIZE, block_size=BLOCK,
           writes=[(b * BLOCK + rng.randrange(0, 7) * 256 * KiB,
                    rng.randbytes(256 * KiB)) for b in range(SIZE // BLOCK)])
    c.child('snap.avhd', writes=vhdgen.random_writes(
        rng, SIZE, 60, block_size=BLOCK, max_sectors=300))
    pv = c.write(expected='tip')
    xd = os.path.join(tmp, 'vhdx')
    c = vhdxgen.Chain(xd, seed=SEED)
    c.base('base.vhdx', SIZE, block_size=BLOCK,
           writes=[(b * BLOCK + rng.randrange(0, 7) * 256 * KiB,
                    rng.randbytes(256 * KiB)) for b in range(SIZE // BLOCK)])
    c.child('snap.avhdx', writes=vhdxgen.random_writes(
        rng, SIZE, 60, block_size=BLOCK))
    px = c.write(expected=False)
    return [Subject('VHD', pv[-1].path, pv[-1].expected(),
                    os.path.join(vd, 'layer.avhd')),
            Subject('VHDX', px[-1].path, px[-1].expected(),
                    os.path.join(xd, 'layer.avhdx'))], \
        [p.path for p in pv + px]


def main():
    harness.require_plugin()
    cli.require_tool()
    import nbd  # noqa: F401
    rng = random.Random(SEED)
    print('seed %d, %d rounds' % (SEED, ROUNDS))
    pool = rng.randbytes(2 * MiB)
    with harness.tempdir() as tmp:
        subjects, chain_files = make_chains(tmp, rng)
        before = harness.snapshot(chain_files)
        placers = [Placer(rng) for _ in subjects]
        totals = dict(writes=0, zeroes=0, trims=0, flushes=0, pending=0,
                      pending_seen=0)
        t0 = time.monotonic()
        for n in range(1, ROUNDS + 1):
            i = n % len(subjects)
            if not r.run(one_round, n, subjects[i], rng, pool, placers[i],
                         totals, what='round %d' % n):
                break
        print('# %d kills in %.1f s: %d writes, %d zeroes, %d trims, %d '
              'flushes; of %d sectors changed after their last durable '
              'point, %d showed a newer value' % (
                  sum(s.rounds for s in subjects), time.monotonic() - t0,
                  totals['writes'], totals['zeroes'], totals['trims'],
                  totals['flushes'], totals['pending'],
                  totals['pending_seen']))
        r.equal(sum(s.rounds for s in subjects), ROUNDS,
                'every round ran to its kill')
        r.check(totals['flushes'] >= ROUNDS and
                totals['writes'] >= 5 * ROUNDS,
                'the rounds did real work', totals)
        for s, p in zip(subjects, placers):
            r.check(len(p.touched) == SIZE // BLOCK, '%s: every block was '
                    'written (%d of %d)' % (s.name, len(p.touched),
                                            SIZE // BLOCK))
            r.run(clean_round, s, rng, pool, p, what=s.name + ' clean exit')
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


if __name__ == '__main__':
    r.main(main)
