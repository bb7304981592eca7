#!/usr/bin/python3
"""vhdchain changed: the ranges that may differ between two points cover
every real difference, are exactly what the layers between hold, and
--verify keeps exactly the sectors that differ.

A dynamic base and four differencing layers (sector-granular writes, 1 MiB
and 2 MiB blocks, one layer rewriting bytes its ancestors already hold, the
last one larger).  For every pair of points FROM below TO: the output is
sorted, merged JSON; every sector where vhdgen's expected images of FROM
and TO differ lies inside it (full compare); it equals the union of the
sectors the layers above FROM hold (vhdgen's presence flags, clipped to
what TO shows) plus TO's growth, so it is no larger than their allocation;
with --verify it equals the set of differing sectors.  FROM = TO gives [];
FROM outside TO's chain, a missing FROM and bad arguments give one line
and the documented status.
"""

import os
import random

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-changed')
SEC = g.SECTOR


def build(folder):
    rng = random.Random(71)
    size = 8 * MiB
    same = rng.randbytes(8192)
    c = g.Chain(folder, seed=71)
    c.base('base.vhd', size, writes=g.random_writes(rng, size, 30,
                                                    hi=6 * MiB) +
           [(MiB, same)])
    c.child('snap1.avhd', block_size=MiB,
            writes=g.random_writes(rng, size, 30, block_size=MiB,
                                   lo=2 * MiB))
    # Rewrites what the base holds at 1 MiB: changed, but not really.
    c.child('snap2.avhd', block_size=MiB,
            writes=g.random_writes(rng, size, 30, block_size=MiB,
                                   lo=2 * MiB) + [(MiB, same)])
    c.child('snap3.avhd', writes=g.random_writes(rng, size, 40,
                                                 max_sectors=200))
    c.child('snap4.avhd', size=10 * MiB,
            writes=g.random_writes(rng, 10 * MiB, 30, lo=6 * MiB))
    return c.write()


def to_sectors(ranges):
    out = set()
    for off, n in ranges:
        out.update(range(off // SEC, (off + n) // SEC))
    return out


def held_by_layers(points, i, j):
    """Sectors the layers above point i up to point j hold, as TO sees them,
    plus the growth of TO past FROM's end."""
    held = set()
    for k in range(i + 1, j + 1):
        limit = min(points[m].size for m in range(k, j + 1)) // SEC
        held.update(s for s in range(min(limit, len(points[k].vhd.present)))
                    if points[k].vhd.present[s])
    held.update(range(points[i].size // SEC, points[j].size // SEC))
    return held


def well_formed(ranges):
    return all(n > 0 for _, n in ranges) and all(
        a[0] + a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def check_pair(points, i, j):
    a, b = points[i], points[j]
    what = '%s..%s' % (a.name, b.name)
    ranges = [(e['offset'], e['length']) for e in
              cli.json_of('changed', a.path, b.path)]
    r.check(well_formed(ranges), '%s: sorted, merged ranges' % what, ranges)
    diff = cli.sector_ranges(a.expected(), b.expected())
    got, real = to_sectors(ranges), to_sectors(diff)
    r.check(real <= got, '%s: every real difference is covered' % what,
            sorted(real - got)[:5])
    r.equal(got, held_by_layers(points, i, j),
            '%s: exactly what the layers between hold' % what)
    verified = [[e['offset'], e['length']] for e in
                cli.json_of('changed', '--verify', a.path, b.path)]
    r.equal(verified, diff, '%s: --verify keeps exactly the differing '
            'sectors' % what)
    return len(got), len(real)


def body():
    cli.require_tool()
    with harness.tempdir() as tmp:
        points = build(os.path.join(tmp, 'c'))
        fewer = 0
        for j in range(1, len(points)):
            for i in range(j):
                got, real = check_pair(points, i, j)
                fewer += real < got
        r.check(fewer > 0, 'some layer rewrote equal bytes: --verify drops '
                'something')
        r.equal(cli.json_of('changed', points[2].path, points[2].path), [],
                'a point against itself: nothing')
        cli.fails(r, ['changed', points[3].path, points[1].path], 1,
                  'not in the chain', 'FROM above TO')
        cli.fails(r, ['changed', os.path.join(tmp, 'no.vhd'),
                      points[1].path], 2, 'no.vhd', 'missing FROM')
        cli.fails(r, ['changed', points[1].path], 2, 'expected FROM TO',
                  'one argument')


r.main(body)
