#!/usr/bin/python3
"""The writable layer against a model kept by the test.

A depth-3 VHD chain made by vhdgen (data in every layer, sector-granular
writes crossing block borders, a size that ends inside a block) is served
writable by the real plugin.  Random writes of 1 byte to 4 MiB (aligned and
not, crossing 2 MiB borders, some FUA), write-zeroes (whole blocks, partial,
unaligned, with FUA / NO_HOLE / FAST_ZERO flags), trims and flushes go
through python libnbd over two connections; the test applies each to a
bytearray model (trim is a no-op by design, zero never shows parent data)
and reads every touched range back through the other connection, plus
random and whole-disk reads and a block-status sanity check (nothing
reported as zero that is not).  The first operations on the fresh layer
zero parent-only data and patch a partial sector of it.

Phases:
  temporary  no overlay=: the model; the layer is an unlinked file in
             $TMPDIR (nothing visible there while it runs or after); every
             chain file is open read-only
  read-only  nbdkit -r creates nothing, not even at overlay=PATH, and
             refuses writes
  kept       overlay=PATH in the chain's folder: a sound VHD child with the
             FORMATS.md 2.7 fields; served alone (nbdkit -r PLUGIN PATH) it
             equals the model, including unflushed writes kept by the clean
             exit; continued (overlay=PATH again) it keeps its identity and
             takes more writes
  sparse     a fresh kept layer, a few small writes and zeroes never
             flushed: partly set bitmap bytes, kept by the clean exit
  concurrent 4 connections patching the same sectors at once (sub-sector
             pieces): no read-modify-write lost
  foreign    continuing a child of the tip made by another writer (vhdgen:
             512 KiB blocks, packed layout, partly set bitmaps)
  libvhdi    4 KiB-aligned workload on a second chain, the kept layer read
             back with vhdimount, an independent reader
  unrelated  overlay= naming an existing file that is not a child of the
             tip (the tip itself, the base, a child of the base, a child of
             another tip, a VHD of another chain, a random file, an empty
             file) is refused with an error naming the file, which stays
             byte-identical
The chain files never change.  VHDCHAIN_TEST_SEED=n replays another
workload.
"""

import errno
import os
import random

import harness
import vhdgen as g
from vhdgen import KiB, MiB

r = harness.Reporter('test-write-model')

BLOCK = 2 * MiB
SIZE_A = 17 * MiB + 3 * 512          # the last block is partial
SIZE_B = 12 * MiB
OPS = 400


def connect(srv):
    """A libnbd handle that may send unaligned requests: the plugin
    advertises the sector as its minimum block size but serves any byte
    range, and these tests write single bytes."""
    return harness.allow_unaligned(srv.connect())
# VHDCHAIN_TEST_SEED=n replays another random workload.
SEED = int(os.environ.get('VHDCHAIN_TEST_SEED', '4242'))


# ------------------------------------------------------------------ chains

def crossing(rng, size, count, **kw):
    return g.random_writes(rng, size, count, block_size=BLOCK, **kw)


def build_chain_a(folder, seed):
    """Dynamic base (one block left unallocated), two children; every
    layer holds data in partly set sectors bitmaps."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    c.base('base.vhd', SIZE_A,
           writes=g.fill_writes(rng, 6 * MiB) +
           crossing(rng, SIZE_A, 40, lo=10 * MiB, max_sectors=600))
    c.child('snap1.avhd', writes=crossing(rng, SIZE_A, 60, max_sectors=300))
    c.child('snap2.avhd', writes=crossing(rng, SIZE_A, 60, max_sectors=300),
            layout='packed')
    return c.write()


def build_chain_b(folder, seed):
    """4 KiB-aligned everything, so that libvhdi reads it right."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    c.base('base.vhd', SIZE_B,
           writes=crossing(rng, SIZE_B, 50, aligned4k=True, max_sectors=800))
    c.child('snap1.avhd', writes=crossing(rng, SIZE_B, 50, aligned4k=True,
                                          max_sectors=400))
    return c.write()


# ------------------------------------------------------------------ workload

class Pool:
    """Random bytes to slice write payloads from (fast, seeded)."""

    def __init__(self, rng, size=9 * MiB):
        self.rng = rng
        self.data = rng.randbytes(size)

    def take(self, n):
        k = self.rng.randrange(0, len(self.data) - n + 1)
        return self.data[k:k + n]


def pick_range(rng, size, aligned4k):
    """(offset, length) of a write or zero, from a mix of shapes."""
    u = 4096 if aligned4k else 1
    kind = rng.random()
    borders = list(range(BLOCK, size, BLOCK))
    if kind < 0.2:                                  # tiny
        n = rng.randint(1, 700)
        off = rng.randrange(0, size - n)
    elif kind < 0.45:                               # small, anywhere
        n = rng.randint(1, 96 * KiB)
        off = rng.randrange(0, size - n)
    elif kind < 0.7:                                # across a block border
        n = rng.randint(2, 300 * KiB)
        off = rng.choice(borders) - rng.randint(1, n - 1)
    elif kind < 0.85:                               # large
        n = rng.randint(512 * KiB, 4 * MiB)
        off = rng.randrange(0, size - n)
    else:                                           # sector / 4K aligned
        n = rng.randint(1, 256) * rng.choice((512, 4096))
        off = rng.randrange(0, (size - n) // 512) * 512
    if aligned4k:
        off = off // u * u
        n = max(u, (n + u - 1) // u * u)
    off = max(0, min(off, size - n))
    return off, n


def pick_zero(rng, size, aligned4k):
    kind = rng.random()
    if kind < 0.25:                                 # whole block(s)
        nb = rng.choice((1, 1, 2))
        b = rng.randrange(0, (size + BLOCK - 1) // BLOCK)
        off = b * BLOCK
        return off, min(nb * BLOCK, size - off)
    if kind < 0.35 and not aligned4k:               # a few bytes
        n = rng.randint(1, 100)
        return rng.randrange(0, size - n), n
    return pick_range(rng, size, aligned4k)


def make_ops(rng, size, count, aligned4k=False):
    """[(op, offset, length, flags)] with op in write/zero/trim/flush."""
    import nbd
    ops = []
    for _ in range(count):
        x = rng.random()
        if x < 0.6:
            off, n = pick_range(rng, size, aligned4k)
            flags = nbd.CMD_FLAG_FUA if rng.random() < 0.15 else 0
            ops.append(('write', off, n, flags))
        elif x < 0.82:
            off, n = pick_zero(rng, size, aligned4k)
            flags = rng.choice((0, 0, nbd.CMD_FLAG_FUA, nbd.CMD_FLAG_NO_HOLE,
                                nbd.CMD_FLAG_FAST_ZERO))
            ops.append(('zero', off, n, flags))
        elif x < 0.92:
            off, n = pick_range(rng, size, aligned4k)
            flags = nbd.CMD_FLAG_FUA if rng.random() < 0.3 else 0
            ops.append(('trim', off, n, flags))
        else:
            ops.append(('flush', 0, 0, 0))
    return ops


def parent_only_zeros(points, size):
    """Zeros aimed at data the chain holds and the layer does not: the
    first thing done to a fresh layer, so parent data is under each."""
    image = points[-1].expected()
    ops = []
    for b in range(0, size // BLOCK):
        at = b * BLOCK
        if any(image[at:at + BLOCK]):
            break
    ops.append(('zero', at, BLOCK, 0))                       # whole block
    for off, n in ((at + BLOCK + 1000, 77), (at + BLOCK + 4096 + 5, 9000),
                   (at + 2 * BLOCK - 300, 700), (at + BLOCK + 50000, 1),
                   (at + BLOCK + 81920, 65536)):
        if off + n <= size:
            ops.append(('zero', off, n, 0))
    # A partial-sector write next to the zeros and into parent data.
    ops.append(('write', at + BLOCK + 3 * 512 + 7, 300, 0))
    return ops


class Session:
    """Two connections to one server and the model they must agree with."""

    def __init__(self, srv, model, pool, rng, label):
        self.hs = [connect(srv), connect(srv)]
        self.model, self.pool, self.rng = model, pool, rng
        self.label = label
        self.bad = []
        self.counts = {}

    def close(self):
        for h in self.hs:
            h.shutdown()

    def apply(self, op, off, n, flags):
        h = self.rng.choice(self.hs)
        other = self.hs[1] if h is self.hs[0] else self.hs[0]
        self.counts[op] = self.counts.get(op, 0) + 1
        if op == 'write':
            data = self.pool.take(n)
            h.pwrite(data, off, flags)
            self.model[off:off + n] = data
        elif op == 'zero':
            h.zero(n, off, flags)
            self.model[off:off + n] = bytes(n)
        elif op == 'trim':
            h.trim(n, off, flags)            # advisory: contents stay
        else:
            h.flush()
            return
        a = max(0, off - 1024)
        b = min(len(self.model), off + n + 1024)
        got = other.pread(b - a, a)
        d = harness.first_difference(got, self.model[a:b])
        if d is not None:
            self.bad.append('%s %s [%d, +%d) flags %#x: byte %d reads %#x, '
                            'model %#x' % (self.label, op, off, n, flags,
                                           a + d, got[d], self.model[a + d]))

    def run(self, ops, check_every=40):
        for i, op in enumerate(ops):
            self.apply(*op)
            if i % check_every == check_every - 1:
                self.random_reads(20, i)
        return self.bad

    def random_reads(self, count, salt):
        rng = random.Random(salt)
        size = len(self.model)
        for _ in range(count):
            n = rng.randint(1, 600 * KiB)
            off = rng.randrange(0, size - n)
            got = self.hs[rng.randrange(2)].pread(n, off)
            if got != self.model[off:off + n]:
                d = harness.first_difference(got, self.model[off:off + n])
                self.bad.append('%s random read [%d, +%d): first difference '
                                'at %d' % (self.label, off, n, off + d))


def whole_disk(h, model, what):
    got = harness.read_all(h, len(model))
    d = harness.first_difference(got, model)
    r.check(d is None, what, 'first difference at byte %s' % d)


def block_status_honest(h, model, what):
    """No extent may claim ZERO where the model holds data."""
    import nbd
    lies = []
    size = len(model)

    def cb(meta, off, entries, err):
        if meta != nbd.CONTEXT_BASE_ALLOCATION:
            return 0
        pos = off
        for i in range(0, len(entries), 2):
            ln, fl = entries[i], entries[i + 1]
            if fl & nbd.STATE_ZERO and any(model[pos:pos + ln]):
                lies.append('[%d, +%d) flags %d' % (pos, ln, fl))
            pos += ln
        return 0

    off = 0
    while off < size:
        n = min(size - off, 8 * MiB)
        before = len(lies)
        h.block_status(n, off, cb)
        off += n
        if len(lies) > before + 20:
            break
    r.check(not lies, what, '; '.join(lies[:5]))


def connect_meta(srv):
    import nbd
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(srv.sock)
    return h


def open_fds_in(pid, folder):
    """Targets of the process's open files that lie in folder."""
    out = []
    fd_dir = '/proc/%d/fd' % pid
    for fd in os.listdir(fd_dir):
        try:
            t = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if t.startswith(folder.rstrip('/') + '/'):
            out.append(t)
    return out


def open_modes(pid, folder):
    """{target: 'r' | 'w' | 'rw'} of the process's open files in folder."""
    out = {}
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            t = os.readlink('/proc/%d/fd/%s' % (pid, fd))
            with open('/proc/%d/fdinfo/%s' % (pid, fd)) as f:
                flags = int(f.read().split('flags:')[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            continue
        if t.startswith(folder.rstrip('/') + '/'):
            mode = ('r', 'w', 'rw', '?')[flags & 3]
            out[t] = ''.join(sorted(set(out.get(t, '') + mode)))
    return out


def nbdkit_pid(srv):
    with open(srv.pidfile) as f:
        return int(f.read())


# ------------------------------------------------------------------ phases

def phase_temporary(points, tmp, pool, rng, env, watch):
    """Temporary layer: the model, nothing left in $TMPDIR."""
    tip = points[-1]
    model = bytearray(tip.expected())
    with harness.Nbdkit(tip.path, readonly=False, env=env) as srv:
        s = Session(srv, model, pool, rng, 'temporary')
        r.check(not s.hs[0].is_read_only(), 'temporary: export writable')
        r.equal(s.hs[0].get_size(), SIZE_A, 'temporary: size')
        bad = s.run(parent_only_zeros(points, SIZE_A))
        r.check(not bad, 'temporary: zeros over parent-only data read '
                'zero, a partial-sector write merges with parent bytes',
                '\n'.join(bad[:5]))
        s.bad = []
        bad = s.run(make_ops(rng, SIZE_A, OPS))
        r.check(not bad, 'temporary: %d random ops (%s) read back through '
                'the other connection' % (OPS, s.counts), '\n'.join(bad[:8]))
        whole_disk(s.hs[0], model, 'temporary: whole disk equals the model')
        h = connect_meta(srv)
        block_status_honest(h, model, 'temporary: block status claims '
                            'ZERO only where the model is zero')
        h.shutdown()
        r.equal(os.listdir(watch), [], 'temporary: no file visible in '
                '$TMPDIR while the layer is open')
        held = open_fds_in(nbdkit_pid(srv), watch)
        r.check(len(held) == 1 and held[0].endswith(' (deleted)'),
                'temporary: nbdkit holds one unlinked file in $TMPDIR',
                'open files there: %r' % held)
        modes = open_modes(nbdkit_pid(srv), os.path.dirname(tip.path))
        chain = {p.path: modes.get(p.path) for p in points}
        r.check(all(m == 'r' for m in chain.values()),
                'temporary: every chain file is open read-only', chain)
        s.close()
    r.equal(os.listdir(watch), [], 'temporary: $TMPDIR empty after exit')


def phase_readonly(points, tmp, env, watch):
    """nbdkit -r creates no layer, temporary or kept."""
    import nbd
    tip = points[-1]
    never = os.path.join(tmp, 'never-created.avhd')
    for params in ((), ('overlay=' + never,)):
        label = 'nbdkit -r %s' % (' '.join(params) or '(temporary)')
        with harness.Nbdkit(tip.path, *params, readonly=True,
                            env=env) as srv:
            h = connect(srv)
            r.check(h.is_read_only(), label + ': export read-only')
            try:
                h.pwrite(b'x' * 512, 0)
                r.check(False, label + ': a write is refused')
            except nbd.Error as e:
                r.check(e.errnum in (errno.EPERM, errno.EROFS),
                        label + ': a write is refused (EPERM/EROFS)',
                        'errno %r: %s' % (e.errnum, e))
            whole_disk(h, tip.expected(), label + ': reads the tip')
            r.equal(open_fds_in(nbdkit_pid(srv), watch), [],
                    label + ': no file open in $TMPDIR')
            h.shutdown()
        r.equal(os.listdir(watch), [], label + ': nothing in $TMPDIR')
        r.check(not os.path.lexists(never), label + ': no overlay file')


def check_kept_file(keep, tip, what):
    """The fields FORMATS.md 2.7 asks of a new child."""
    bad = harness.vhd_structure_problems(keep, parent=tip.path,
                                         block_size=BLOCK)
    r.check(not bad, what + ': sound VHD child of the tip', '\n'.join(bad))
    f, hd = g.read_footer(keep), g.read_header(keep)
    pf = g.read_footer(tip.path)
    tip_real = os.path.realpath(tip.path)
    mtime = int(os.stat(tip.path).st_mtime) - g.VHD_EPOCH
    want = dict(disk_type=g.DIFFERENCING, features=2, version=0x00010000,
                data_offset=512, creator_os=b'Wi2k',
                original_size=tip.size, current_size=tip.size,
                cylinders=pf['cylinders'], heads=pf['heads'],
                sectors_per_track=pf['sectors_per_track'])
    got = {k: f[k] for k in want}
    r.equal(got, want, what + ': footer fields (type, features, sizes, '
            'geometry copied from the tip)')
    r.check(f['unique_id'] != pf['unique_id'] and any(f['unique_id']),
            what + ': a fresh unique id')
    r.check(abs(f['timestamp'] - (int(__import__('time').time()) -
                                  g.VHD_EPOCH)) < 3600,
            what + ': footer timestamp is now', f['timestamp'])
    want = dict(data_offset=g.NO_OFFSET, version=0x00010000,
                block_size=BLOCK,
                max_table_entries=(tip.size + BLOCK - 1) // BLOCK,
                parent_unique_id=pf['unique_id'],
                parent_timestamp=mtime,
                parent_name=os.path.basename(tip.path))
    got = {k: hd[k] for k in want}
    r.equal(got, want, what + ': header fields (2 MiB blocks, entries, '
            'parent id, parent mtime, parent name)')
    locs, placed = {}, []
    with open(keep, 'rb') as fh:
        for code, space, length, off in hd['locators'].values():
            fh.seek(off)
            locs[code] = fh.read(length)
            placed.append((code, space, length, off))
    r.check(all(sp % 512 == 0 and sp >= ln and off + sp <= hd['table_offset']
                for _, sp, ln, off in placed),
            what + ': locator data space in bytes, 512 multiples, before '
            'the BAT', placed)
    r.equal(locs.get(b'W2ru', b'').decode('utf-16-le', 'replace'),
            '.\\' + os.path.basename(tip.path),
            what + ': W2ru locator is .\\<tip>')
    r.equal(locs.get(b'W2ku', b'').decode('utf-16-le', 'replace'),
            tip_real.replace('/', '\\'),
            what + ': W2ku locator is the tip\'s path')
    r.equal(locs.get(b'MacX', b'').decode('utf-8', 'replace'),
            'file://' + tip_real.replace('%', '%25').replace(' ', '%20'),
            what + ': MacX locator is the tip\'s file URL')
    return f['unique_id']


def serve_alone(keep, model, what):
    """nbdkit -r PLUGIN PATH: the kept layer as the tip of its chain."""
    with harness.Nbdkit(keep) as srv:
        h = connect(srv)
        r.equal(h.get_size(), len(model), what + ': size')
        whole_disk(h, model, what + ': equals the model')
        h.shutdown()


def phase_kept(points, tmp, pool, rng):
    tip = points[-1]
    keep = os.path.join(os.path.dirname(tip.path), 'keep.avhd')
    model = bytearray(tip.expected())
    # A new kept layer; the last ops are never flushed: a clean exit
    # keeps them.
    with harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False) as srv:
        s = Session(srv, model, pool, rng, 'kept')
        ops = make_ops(rng, SIZE_A, OPS)
        ops += [(o[0], o[1], o[2], 0) for o in make_ops(rng, SIZE_A, 30)
                if o[0] != 'flush']
        bad = s.run(ops)
        r.check(not bad, 'kept: %d ops read back (%s)' % (len(ops), s.counts),
                '\n'.join(bad[:8]))
        modes = open_modes(nbdkit_pid(srv), os.path.dirname(tip.path))
        want = {p.path: 'r' for p in points}
        want[keep] = 'rw'
        r.equal({t: modes.get(t) for t in want}, want,
                'kept: chain files open read-only, only the layer writable')
        whole_disk(s.hs[0], model, 'kept: whole disk equals the model')
        s.close()
    uid = check_kept_file(keep, tip, 'kept')
    serve_alone(keep, model, 'kept, served alone')

    # Continued: same file, same identity, more writes.
    size0 = os.path.getsize(keep)
    with harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False) as srv:
        s = Session(srv, model, pool, rng, 'continued')
        whole_disk(s.hs[0], model, 'continued: starts from the kept data')
        ops = make_ops(rng, SIZE_A, OPS // 2)
        bad = s.run(ops)
        r.check(not bad, 'continued: %d ops read back (%s)'
                % (len(ops), s.counts), '\n'.join(bad[:8]))
        s.close()
    uid2 = check_kept_file(keep, tip, 'continued')
    r.check(uid2 == uid and os.path.getsize(keep) >= size0,
            'continued: same layer (identity kept, file not recreated)',
            'uid %s -> %s, size %d -> %d' % (uid.hex(), uid2.hex(), size0,
                                             os.path.getsize(keep)))
    serve_alone(keep, model, 'continued, served alone')
    # The chain itself still shows its own tip.
    with harness.Nbdkit(tip.path) as srv:
        h = connect(srv)
        whole_disk(h, tip.expected(), 'chain tip unchanged under the layer')
        h.shutdown()
    return keep


def phase_sparse_exit(points, tmp, pool, rng):
    """A fresh kept layer with a few small writes and zeroes, never
    flushed (no FUA either): a clean exit must keep them, and the layer's
    bitmap bytes are partly set (sector order inside a byte matters)."""
    tip = points[-1]
    keep = os.path.join(os.path.dirname(tip.path), 'sparse.avhd')
    model = bytearray(tip.expected())
    with harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False) as srv:
        s = Session(srv, model, pool, rng, 'sparse')
        ops = []
        for i in range(60):
            sector = rng.randrange(0, SIZE_A // 512 - 3)
            at = sector * 512 + rng.choice((0, 0, rng.randrange(512)))
            if i % 5 == 4:
                ops.append(('zero', at, rng.randint(1, 1024), 0))
            else:
                ops.append(('write', at, rng.choice(
                    (1, 100, 512, 1024, 1536)), 0))
        ops = [(o, a, min(n, SIZE_A - a), f) for o, a, n, f in ops]
        bad = s.run(ops)
        r.check(not bad, 'sparse: %d small unflushed writes and zeroes read '
                'back' % len(ops), '\n'.join(bad[:8]))
        s.close()
    partial = 0
    bat = g.read_bat(keep)
    with open(keep, 'rb') as f:
        for e in bat:
            if e != g.UNALLOCATED:
                f.seek(e * 512)
                partial += sum(1 for x in f.read(512) if x not in (0, 0xFF))
    r.check(partial > 0, 'sparse: the layer has partly set bitmap bytes '
            '(%d)' % partial)
    serve_alone(keep, model, 'sparse, never flushed, after a clean exit, '
                'served alone')


def phase_libvhdi(points, tmp, pool, rng):
    """4 KiB-aligned writes, read back with libvhdi."""
    tip = points[-1]
    keep = os.path.join(os.path.dirname(tip.path), 'aligned.avhd')
    model = bytearray(tip.expected())
    with harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False) as srv:
        s = Session(srv, model, pool, rng, 'aligned')
        ops = make_ops(rng, SIZE_B, 150, aligned4k=True)
        bad = s.run(ops)
        r.check(not bad, 'aligned: %d ops read back (%s)'
                % (len(ops), s.counts), '\n'.join(bad[:8]))
        s.close()
    bad = harness.vhd_structure_problems(keep, parent=tip.path,
                                         block_size=BLOCK)
    r.check(not bad, 'aligned: sound VHD child', '\n'.join(bad))
    serve_alone(keep, model, 'aligned, served alone')
    with harness.vhdimount(keep, os.path.join(tmp, 'mnt')) as files:
        r.equal(len(files), len(points) + 1, 'libvhdi: layers found')
        with open(files[-1], 'rb') as f:
            got = f.read()
        d = harness.first_difference(got, model)
        r.check(d is None, 'libvhdi: the kept layer reads as the model',
                'first difference at byte %s of %d' % (d, len(got)))
        with open(files[-2], 'rb') as f:
            r.check(f.read() == tip.expected(),
                    'libvhdi: the layer below reads as the tip')


def phase_concurrent(points, tmp, rng):
    """4 connections at once, each writing its own 4 bytes of every 16,
    all walking the same sectors in the same order at the same time: each
    sector is patched by all four together, so the read-modify-writes of
    partial sectors must not lose each other.  16 passes, each on a fresh
    4 KiB (one straddles a block border), so sectors are patched both
    while the parent still shows and once the layer holds them."""
    import threading
    tip = points[-1]
    model = bytearray(tip.expected())
    passes, region = 16, 4096
    lo = 2 * BLOCK - 8 * region - 2048
    errors = []
    start = threading.Barrier(4)
    with harness.Nbdkit(tip.path, readonly=False) as srv:
        hs = [connect(srv) for _ in range(4)]
        for p in range(passes):
            for j in range(region // 16):
                for k in range(4):
                    o = lo + p * region + 16 * j + 4 * k
                    model[o:o + 4] = bytes([p, k, j & 255, 0xA5])

        def worker(k):
            h = hs[k]
            try:
                start.wait()
                for p in range(passes):
                    for j in range(region // 16):
                        o = lo + p * region + 16 * j + 4 * k
                        h.pwrite(bytes([p, k, j & 255, 0xA5]), o)
            except Exception as e:          # reported below
                errors.append(e)
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        r.check(not errors, 'concurrent: %d sub-sector writes from 4 '
                'connections' % (4 * passes * region // 16), errors[:3])
        a, z = lo - 1024, lo + passes * region + 1024
        got = hs[0].pread(z - a, a)
        d = harness.first_difference(got, model[a:z])
        lost = sum(1 for i in range(0, z - a, 4)
                   if got[i:i + 4] != model[a + i:a + i + 4])
        r.check(d is None, 'concurrent: every 4-byte piece landed, the '
                'parent bytes around them kept',
                '%d pieces wrong, first difference at byte %s'
                % (lost, None if d is None else a + d))
        for h in hs:
            h.shutdown()


def phase_foreign_child(points, tmp, pool, rng):
    """Continue a child of the tip that another writer made (vhdgen):
    512 KiB blocks, packed layout, shuffled blocks, partly set bitmap
    bytes, sector-unit locator space."""
    tip = points[-1]
    bs = 512 * KiB
    child = g.VhdFile('differencing', SIZE_A, rng=random.Random(9),
                      block_size=bs, layout='packed', space_unit='sectors',
                      parent_uid=tip.uid, parent_name=os.path.basename(
                          tip.path),
                      locators=[g.w2ru('.\\' + os.path.basename(tip.path))])
    child.apply(g.random_writes(random.Random(10), SIZE_A, 60,
                                block_size=bs, max_sectors=200))
    path = child.save(os.path.join(os.path.dirname(tip.path),
                                   'foreign-child.avhd'))
    model = bytearray(tip.expected())
    for first, count in child.present_runs():
        a, b = first * 512, (first + count) * 512
        model[a:b] = child.data[a:b]
    uid = child.uid
    with harness.Nbdkit(tip.path, 'overlay=' + path, readonly=False) as srv:
        s = Session(srv, model, pool, rng, 'foreign')
        whole_disk(s.hs[0], model, 'foreign child: continued, starts from '
                   'its own data')
        ops = make_ops(rng, SIZE_A, 150)
        bad = s.run(ops)
        r.check(not bad, 'foreign child: %d ops read back (%s)'
                % (len(ops), s.counts), '\n'.join(bad[:8]))
        s.close()
    bad = harness.vhd_structure_problems(path, parent=tip.path,
                                         block_size=bs)
    r.check(not bad, 'foreign child: still a sound VHD child, its block '
            'size kept', '\n'.join(bad))
    r.equal(g.read_footer(path)['unique_id'], uid,
            'foreign child: identity kept')
    serve_alone(path, model, 'foreign child, served alone')


def refused(tip, target, what, env):
    """A writable server with overlay=target must refuse (at start or at
    the connection) with an error naming target, and leave it alone."""
    import nbd
    before = harness.snapshot([target])
    stderr = ''
    try:
        with harness.Nbdkit(tip.path, 'overlay=' + target, readonly=False,
                            env=env) as srv:
            try:
                h = connect(srv)
                try:
                    h.pwrite(b'\xAA' * 4096, 0)
                    h.flush()
                    outcome = 'connected and wrote'
                except nbd.Error as e:
                    outcome = 'connected, write failed: %s' % e
                h.shutdown()
            except nbd.Error:
                outcome = 'connection refused'
        stderr = srv.stderr
    except harness.StartError as e:
        outcome, stderr = 'start refused', e.stderr
    ok = outcome in ('connection refused', 'start refused')
    r.check(ok, what + ': refused', 'outcome: %s\n%s' % (outcome, stderr))
    named = [l for l in harness.error_lines(stderr) if target in l]
    r.check(bool(named), what + ': the error names the file', stderr)
    r.equal(harness.changed_files(before), [],
            what + ': file byte-identical, mtime kept')


def phase_unrelated(points_a, points_b, tmp, env, watch):
    tip = points_a[-1]
    rnd = os.path.join(tmp, 'random.bin')
    with open(rnd, 'wb') as f:
        f.write(random.Random(5).randbytes(3 * MiB + 17))
    empty = os.path.join(tmp, 'empty.avhd')
    open(empty, 'wb').close()
    # A real child of another tip, of the same size.
    other = os.path.join(tmp, 'other-chain')
    pts = g.Chain(other, seed=77)
    pts.base('base.vhd', SIZE_A)
    pts.child('snap1.avhd')
    pts = pts.write(expected=False)
    foreign = os.path.join(other, 'foreign.avhd')
    with harness.Nbdkit(pts[-1].path, 'overlay=' + foreign,
                        readonly=False) as srv:
        h = connect(srv)
        h.pwrite(b'\x55' * 8192, 4096)
        h.shutdown()
    cases = [('the tip itself', tip.path),
             ('the base of the chain', points_a[0].path),
             ('a child of the base (not of the tip)', points_a[1].path),
             ('a child of another tip', foreign),
             ('a VHD of another chain', points_b[0].path),
             ('a random file', rnd),
             ('an empty file', empty)]
    for what, target in cases:
        r.run(refused, tip, target, 'overlay=' + what, env,
              what='overlay=' + what)
    r.equal(os.listdir(watch), [], 'refusals leave nothing in $TMPDIR')


def main():
    harness.require_plugin()
    harness.require_tools('vhdimount', 'fusermount')
    import nbd  # noqa: F401  (python3-libnbd: a failure, not a skip)
    rng = random.Random(SEED)
    print('seed %d' % SEED)
    with harness.tempdir() as tmp:
        watch = os.path.join(tmp, 'tmpdir')
        os.mkdir(watch)
        env = dict(os.environ, TMPDIR=watch)
        points_a = build_chain_a(os.path.join(tmp, 'a'), 31)
        points_b = build_chain_b(os.path.join(tmp, 'b'), 32)
        chain_files = [p.path for p in points_a + points_b]
        before = harness.snapshot(chain_files)
        pool = Pool(rng)
        r.run(phase_temporary, points_a, tmp, pool, rng, env, watch)
        r.run(phase_readonly, points_a, tmp, env, watch)
        r.run(phase_kept, points_a, tmp, pool, rng)
        r.run(phase_sparse_exit, points_a, tmp, pool, rng)
        r.run(phase_concurrent, points_a, tmp, rng)
        r.run(phase_foreign_child, points_a, tmp, pool, rng)
        r.run(phase_libvhdi, points_b, tmp, pool, rng)
        r.run(phase_unrelated, points_a, points_b, tmp, env, watch)
        r.equal(harness.changed_files(before), [],
                'chain files unchanged (sha256, size, mtime)')


if __name__ == '__main__':
    r.main(main)
