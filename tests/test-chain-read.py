#!/usr/bin/python3
"""Every point of VHD chains of depth 1 to 9 reads right through nbdkit.

Two chains of a base and eight differencing layers (a dynamic base and a
fixed base), made by vhdgen with sector-granular random writes that cross
block borders, shuffled block order, mixed layouts and locators, an empty
layer, an allocated block with an empty bitmap, and a layer larger than its
parent.  Each point is served by the real plugin in a real nbdkit with each
I/O engine (io=pread, io=uring), read whole with nbdcopy and in random
ranges with libnbd, and compared with vhdgen's expected image.  The chain
files must be byte-identical afterwards.
"""

import os
import random

import harness
import vhdgen as g
from vhdgen import KiB, MiB

r = harness.Reporter('test-chain-read')

ENGINES = ('io=pread', 'io=uring')
RANDOM_READS = 60


def crossing_writes(rng, size, count, block_size, **kw):
    return g.random_writes(rng, size, count, block_size=block_size,
                           max_sectors=kw.pop('max_sectors', 70), **kw)


def build_dynamic_chain(folder, seed):
    """Dynamic 2 MiB-block base, 8 layers; layer 4 grows the disk."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    size, bs = 8 * MiB, 2 * MiB
    # The base leaves the last block unallocated (reads zero).
    c.base('base.vhd', size, block_size=bs, creator_app=b'win ',
           writes=crossing_writes(rng, 6 * MiB, 40, bs))
    c.child('snap1.avhd', writes=crossing_writes(rng, size, 50, bs))
    c.child('snap2.avhd', writes=crossing_writes(rng, size, 50, bs),
            layout='packed', block_order='reverse', empty_blocks=[3])
    c.child('snap3.avhd', writes=[],              # an empty layer
            locators=[g.w2ru('.\\snap2.avhd', slot=6)])
    big = 12 * MiB + 5 * g.SECTOR                 # not a block multiple
    c.child('snap4.avhd', size=big,
            writes=crossing_writes(rng, big, 30, bs, lo=7 * MiB) +
            crossing_writes(rng, size, 20, bs))
    c.child('snap5.avhd', writes=crossing_writes(rng, big, 60, bs),
            header_name='base', locators=[])       # found by header name
    c.child('snap6.avhd', writes=crossing_writes(rng, big, 60, bs),
            space_unit='sectors', bat_first=True)
    c.child('snap7.avhd', writes=crossing_writes(rng, big, 80, bs,
                                                 max_sectors=600))
    c.child('snap8.avhd', writes=crossing_writes(rng, big, 40, bs),
            locators=[g.w2ku('C:\\elsewhere\\snap7.avhd', slot=2),
                      g.wi2r('.\\snap7.avhd', slot=4),
                      g.w2ru('.\\snap7.avhd', slot=7)])
    return c.write()


def build_fixed_chain(folder, seed):
    """Fixed base full of data, 8 layers of 512 KiB blocks."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed, win_dir='D:\\VMs\\Disk')
    size, bs = 6 * MiB + 3 * g.SECTOR, 512 * KiB
    c.base('Disk.vhd', size, fixed=True, creator_app=b'win ',
           writes=g.fill_writes(rng, size))
    for i in range(1, 9):
        name = 'Disk_%08X-%04X.avhd' % (rng.getrandbits(32), i)
        c.child(name, block_size=bs, writes=crossing_writes(rng, size, 40, bs),
                layout='packed' if i % 2 else 'windows')
    return c.write()


def check_point(p, engine, tmp, first_key):
    label = '%s %s' % (p.name, engine)
    # The first point uses the explicit key; the rest the magic parameter.
    tip = None if first_key else p.path
    params = (('file=' + p.path,) if first_key else ()) + (engine,)
    with harness.Nbdkit(tip, *params) as srv:
        h = srv.connect()
        try:
            r.equal(h.get_size(), p.size, 'size of ' + label)
            r.check(h.is_read_only(), 'read-only export of ' + label)
            bad = harness.compare_random_reads(
                h, p.expected_path, p.size, RANDOM_READS,
                seed=p.index * 10 + ENGINES.index(engine))
            r.check(not bad, 'random reads of ' + label, '\n'.join(bad[:5]))
        finally:
            h.shutdown()
        sha, size = srv.copy_sha256(tmp)
        r.check(sha == p.sha256 and size == p.size,
                'nbdcopy of ' + label,
                'got %s (%d bytes), want %s' % (sha, size, p.sha256))


def check_chain(tmp, name, builder, seed):
    folder = os.path.join(tmp, name)
    points = builder(folder, seed)
    before = harness.snapshot([p.path for p in points])
    for p in points:
        for engine in ENGINES:
            r.run(check_point, p, engine, tmp, p.index == 1,
                  what='%s/%s %s' % (name, p.name, engine))
    changed = harness.changed_files(before)
    r.check(not changed, 'chain files of %s unchanged' % name,
            'changed: %s' % changed)


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy')
    with harness.tempdir() as tmp:
        check_chain(tmp, 'dynamic-chain', build_dynamic_chain, 11)
        check_chain(tmp, 'fixed-chain', build_fixed_chain, 12)


if __name__ == '__main__':
    r.main(main)
