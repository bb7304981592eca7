#!/usr/bin/python3
"""Block status (NBD extents) through the real plugin, read with nbdinfo.

Ranges that no layer holds and a dynamic base leaves unallocated are holes
reading zeros; everything reported zero must read as zeros in the expected
image; the extents tile the disk; data written through a writable layer
shows up as data.
"""

import json
import os
import random
import subprocess

import harness
import vhdgen as g

r = harness.Reporter('test-extents')
MiB = 1 << 20


def extents(uri):
    p = harness.run(['nbdinfo', '--map', '--json', uri])
    return [(e['offset'], e['length'], e['type']) for e in
            json.loads(p.stdout)]


def check_map(ext, expected, size, what):
    pos = 0
    for off, n, t in ext:
        if not r.check(off == pos, '%s: extents tile the disk at %d' % (
                what, off)):
            return
        if t & 2:   # NBD_STATE_ZERO
            r.check(expected[off:off + n].count(0) == n,
                    '%s: [%d, +%d) said zero reads zeros' % (what, off, n))
        pos = off + n
    r.equal(pos, size, '%s: extents end at the disk size' % what)


def body():
    harness.require_plugin()
    harness.require_tools('nbdinfo')
    rng = random.Random(11)
    with harness.tempdir() as tmp:
        c = g.Chain(tmp, seed=11)
        c.base('base.vhd', 8 * MiB, block_size=MiB,
               writes=g.random_writes(rng, 3 * MiB, 30))
        c.child('snap1.avhd', block_size=MiB,
                writes=g.random_writes(rng, 2 * MiB, 30, lo=MiB) +
                [(5 * MiB + 512, b'\x01' * 1024)])
        tip = c.write()[-1]
        with open(tip.expected_path, 'rb') as f:
            expected = f.read()

        with harness.Nbdkit(tip.path) as srv:
            ext = extents(srv.uri)
        check_map(ext, expected, tip.size, 'chain')
        holes = [(o, n) for o, n, t in ext if t == 3]
        # Block 5 is partial in the child: its unset sectors are holes too.
        r.equal(holes, [(3 * MiB, 2 * MiB + 512),
                        (5 * MiB + 1536, 3 * MiB - 1536)],
                'sectors no layer holds are exactly the holes')

        with harness.Nbdkit(tip.path, readonly=False) as srv:
            h = srv.connect()
            h.pwrite(b'\x02' * 4096, 7 * MiB)
            h.flush()
            h.shutdown()
            ext = extents(srv.uri)
        expected = bytearray(expected)
        expected[7 * MiB:7 * MiB + 4096] = b'\x02' * 4096
        check_map(ext, expected, tip.size, 'with a writable layer')
        data = [(o, n) for o, n, t in ext if t == 0 and o <= 7 * MiB < o + n]
        r.check(len(data) == 1 and data[0][0] + data[0][1] >= 7 * MiB + 4096,
                'data written through the layer is reported as data', ext)


r.main(body)
