#!/usr/bin/python3
"""Every point of VHDX chains made by vhdxgen reads right through nbdkit.

Three chains, each layer a point of its own (depth 1 to 8), served by the
real plugin in a real nbdkit with each read engine (io=pread, io=uring),
read whole with nbdcopy and in random ranges with libnbd, and compared with
vhdxgen's expected disk:

- 512-byte sectors, depth 8: a 32 MiB-block dynamic base with a ZERO
  block, children of 1 to 32 MiB blocks with sector-granular writes across
  block borders, ZERO blocks hiding parent data, an empty layer, a child
  larger than its parent (and not a block multiple), a dirty log holding a
  child's BAT and bitmaps, PARTIALLY_PRESENT with every bit set, junk bits
  in unused bitmap ranges, an allocated block with no bit set, a stale
  second header with another DataWriteGuid, shuffled metadata and regions,
  Hyper-V's locator (zero parent_linkage2) and others.
- 4096-byte logical sectors, depth 4: nbdinfo must report a minimum block
  size of 4096, and 512-byte reads at offsets that are not 4 KiB aligned
  must still return the right bytes.
- more than one 4 GiB chunk (512-byte sectors), depth 3: sector-bitmap
  entries interleaved in the BAT, writes across the chunk border.

The chain files must be byte-identical afterwards.
"""

import json
import os
import random

import harness
import vhdxgen as g
from vhdxgen import KiB, MiB, GiB

r = harness.Reporter('test-vhdx-chain')

ENGINES = ('io=pread', 'io=uring')
RANDOM_READS = 40


def writes(rng, size, count, bs, sector=512, avoid=(), **kw):
    """Random writes across block borders, none touching the blocks in
    avoid (whose ZERO state must stay)."""
    out = []
    for off, data in g.random_writes(rng, size, count, block_size=bs,
                                     sector=sector,
                                     max_sectors=kw.pop('max_sectors', 70),
                                     **kw):
        first, last = off // bs, (off + len(data) - 1) // bs
        if not any(first <= b <= last for b in avoid):
            out.append((off, data))
    return out


def build_512(folder, seed):
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    size = 72 * MiB + 5 * 512
    c.base('base.vhdx', size, block_size=32 * MiB, zero_blocks=[1],
           writes=writes(rng, size, 60, 32 * MiB, avoid=[1]) +
           [(0, rng.randbytes(2 * MiB))])
    c.child('snap1.avhdx', writes=writes(rng, size, 60, 2 * MiB))
    # 1 MiB blocks: ZERO over the base's data in block 0 and elsewhere.
    c.child('snap2.avhdx', block_size=1 * MiB, zero_blocks=[0, 5, 40],
            writes=writes(rng, size, 60, 1 * MiB, avoid=[0, 5, 40]),
            junk_bits=True, md_order='shuffle',
            order=('blocks', 'bat', 'md', 'log'))
    c.child('snap3.avhdx', writes=[],
            locator=[('relative_path', '.\\snap2.avhdx'),
                     ('parent_linkage', g.linkage_text(
                         c.layers[-1][1].data_write_guid))])
    big = 100 * MiB + 7 * 512                     # larger, not a multiple
    c.child('snap4.avhdx', size=big, block_size=8 * MiB, dirty_log=True,
            writes=writes(rng, big, 30, 8 * MiB, lo=70 * MiB) +
            writes(rng, size, 30, 8 * MiB))
    c.child('snap5.avhdx', partial_full=True, empty_blocks=[3],
            sb_always=True, stale_header=True, seqs=(20, 3),
            writes=writes(rng, big, 50, 2 * MiB) +
            [(6 * MiB, rng.randbytes(2 * MiB))])  # a whole block
    c.child('snap6.avhdx', block_size=32 * MiB, zero_blocks=[2],
            writes=writes(rng, big, 40, 32 * MiB, avoid=[2],
                          max_sectors=600))
    c.child('snap7.avhdx', block_order='reverse',
            locator=[('parent_linkage', g.linkage_text(
                c.layers[-1][1].data_write_guid)),
                     ('absolute_win32_path', 'D:\\elsewhere\\snap6.avhdx'),
                     ('relative_path', '.\\snap6.avhdx'),
                     ('volume_path', '\\\\?\\Volume{26a21bda-a627-11d7-'
                      '9931-806e6f6e6963}\\x\\snap6.avhdx')],
            writes=writes(rng, big, 60, 2 * MiB))
    return c.write()


def build_4k(folder, seed):
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    size = 24 * MiB + 3 * 4096
    c.base('base4k.vhdx', size, block_size=1 * MiB, logical_sector=4096,
           writes=writes(rng, size, 40, 1 * MiB, sector=4096))
    c.child('k1.avhdx', writes=writes(rng, size, 40, 2 * MiB, sector=4096))
    c.child('k2.avhdx', block_size=1 * MiB, zero_blocks=[4, 9],
            writes=writes(rng, size, 40, 1 * MiB, sector=4096,
                          avoid=[4, 9]))
    big = 40 * MiB
    c.child('k3.avhdx', size=big, dirty_log=True, block_size=4 * MiB,
            writes=writes(rng, big, 40, 4 * MiB, sector=4096, lo=20 * MiB))
    return c.write()


def build_chunks(folder, seed):
    """A 4 GiB + 6 MiB disk: two chunks with 512-byte sectors."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    size = 4 * GiB + 6 * MiB
    border = 4 * GiB
    c.base('big.vhdx', size, block_size=8 * MiB,
           writes=writes(rng, size, 10, 8 * MiB, hi=8 * MiB) +
           writes(rng, size, 10, 8 * MiB, lo=border - 8 * MiB))
    c.child('big1.avhdx',
            writes=writes(rng, size, 30, 2 * MiB, lo=border - 4 * MiB) +
            writes(rng, size, 10, 2 * MiB, hi=4 * MiB))
    c.child('big2.avhdx', block_size=1 * MiB, zero_blocks=[4095],
            writes=writes(rng, size, 30, 1 * MiB, lo=border - 3 * MiB,
                          avoid=[4095]))
    return c.write(sha_limit=0)


def block_size_minimum(uri):
    out = harness.run(['nbdinfo', '--json', uri]).stdout
    return json.loads(out)['exports'][0].get('block_size_minimum')


def unaligned(h):
    import nbd
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
    return h


def check_point(p, engine, tmp, extra):
    label = '%s %s' % (p.name, engine)
    with harness.Nbdkit(p.path, engine) as srv:
        h = srv.connect()
        try:
            r.equal(h.get_size(), p.size, 'size of ' + label)
            bad = harness.compare_random_reads(
                h, p.expected_path, p.size, RANDOM_READS,
                seed=p.index * 10 + ENGINES.index(engine))
            r.check(not bad, 'random reads of ' + label, '\n'.join(bad[:5]))
            if extra:
                extra(p, srv, h, label)
        finally:
            h.shutdown()
        out = srv.copy_to(os.path.join(tmp, 'copy.raw'))
    r.check(g.sparse_equal(out, p.expected_path), 'nbdcopy of ' + label)
    if p.sha256:
        r.equal(g.sparse_sha256(out), p.sha256, 'SHA-256 of ' + label)
    os.unlink(out)


def check_4k(p, srv, h, label):
    r.equal(block_size_minimum(srv.uri), 4096,
            'nbdinfo: minimum block size 4096 for ' + label)
    unaligned(h)
    rng = random.Random(p.index)
    bad = []
    for _ in range(40):
        off = rng.randrange(0, p.size // 512 - 8) * 512
        if off % 4096 == 0:
            off += 512
        n = rng.choice((512, 1024, 1536, 3584))
        n = min(n, p.size - off)
        if h.pread(n, off) != p.expected(off, n):
            bad.append('[%d, +%d)' % (off, n))
    r.check(not bad, '512-byte reads not 4 KiB aligned of ' + label,
            ', '.join(bad[:5]))


def check_written_ranges(p, srv, h, label):
    """Around every range any layer of the chain wrote: exact bytes."""
    bad = []
    for off, n in p.image.ranges():
        lo = max(0, off - 4096)
        hi = min(p.size, off + n + 4096)
        if h.pread(hi - lo, lo) != p.expected(lo, hi - lo):
            bad.append('[%d, %d)' % (lo, hi))
    border = 4 * GiB
    if h.pread(2 * MiB, border - MiB) != p.expected(border - MiB, 2 * MiB):
        bad.append('chunk border')
    r.check(not bad, 'written ranges of ' + label, ', '.join(bad[:5]))


def check_chain(tmp, name, builder, seed, extra=None):
    folder = os.path.join(tmp, name)
    points = builder(folder, seed)
    before = harness.snapshot([p.path for p in points])
    for p in points:
        for engine in ENGINES:
            r.run(check_point, p, engine, tmp, extra,
                  what='%s/%s %s' % (name, p.name, engine))
    r.equal(harness.changed_files(before), [],
            'chain files of %s unchanged' % name)
    for p in points:
        os.unlink(p.expected_path)


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy', 'nbdinfo')
    with harness.tempdir() as tmp:
        check_chain(tmp, 'chain512', build_512, 21)
        check_chain(tmp, 'chain4k', build_4k, 22, check_4k)
        check_chain(tmp, 'chunks', build_chunks, 23, check_written_ranges)


if __name__ == '__main__':
    r.main(main)
