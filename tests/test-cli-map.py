#!/usr/bin/python3
"""vhdchain map: the layer providing each range, consistent with the
plugin's block status, and the SVG picture of it.

On a generated chain (dynamic base leaving blocks unallocated, layers with
1 MiB and 2 MiB blocks, partial bitmaps) and on the DiscUtils VHDX sample
(data, hole and ZERO blocks), map --json must tile the disk and agree with
`nbdinfo --map` of the real plugin (data / zero / hole); each data range
must be owned by the layer vhdgen says holds those sectors topmost; the text
output has one line per range.  --svg writes well-formed SVG whose cells
cover the disk and whose legend gives each layer's share of the bytes.
"""

import json
import os
import random
import re
import xml.etree.ElementTree as ET

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-map')
NBD_TYPE = {'data': 0, 'zero': 2, 'hole': 3}


def merged(ranges):
    out = []
    for off, n, t in ranges:
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n, t])
    return out


def nbd_map(tip):
    with harness.Nbdkit(tip) as srv:
        p = harness.run(['nbdinfo', '--map', '--json', srv.uri])
    return merged([(e['offset'], e['length'], e['type'])
                   for e in json.loads(p.stdout)])


def check_against_plugin(tip, size, label):
    m = cli.json_of('map', '--json', tip)
    pos = 0
    for e in m:
        if not r.check(e['offset'] == pos, '%s: ranges tile the disk at %d'
                       % (label, pos), e):
            break
        pos += e['length']
    r.equal(pos, size, '%s: ranges end at the disk size' % label)
    mine = merged([(e['offset'], e['length'], NBD_TYPE[e['type']])
                   for e in m])
    r.equal(mine, nbd_map(tip), '%s: same as nbdinfo --map of the plugin'
            % label)
    text = cli.ok('map', tip).splitlines()
    r.equal(len(text), len(m) + 1, '%s: text: a header and one line per '
            'range' % label)
    return m


def owner_flags(points):
    """Per sector, the index in the chain (0 = tip) of the topmost layer
    holding it, or None."""
    n = points[-1].size // g.SECTOR
    owner = [None] * n
    for depth, p in enumerate(reversed(points)):
        v = p.vhd
        if v.kind == g.DYNAMIC:
            spb = v.block_size // g.SECTOR
            have = bytearray(n)
            for b in v.allocated_blocks():
                have[b * spb:min(n, (b + 1) * spb)] = \
                    b'\x01' * (min(n, (b + 1) * spb) - b * spb)
        else:
            have = v.present
        for s in range(min(n, len(have))):
            if owner[s] is None and have[s]:
                owner[s] = depth
    return owner


def check_owners(m, points, label):
    owner = owner_flags(points)
    bad = []
    for e in m:
        want = e['layer'] if e['type'] == 'data' else None
        a, b = e['offset'] // 512, (e['offset'] + e['length']) // 512
        if any(owner[s] != want for s in range(a, b)):
            bad.append(e)
    r.equal(bad, [], '%s: every range owned by the topmost layer holding '
            'its sectors (vhdgen)' % label)


def check_svg(tip, m, depth, tmp):
    svg = os.path.join(tmp, 'map.svg')
    cli.ok('map', '--svg', svg, tip)
    root = ET.parse(svg).getroot()
    ns = '{http://www.w3.org/2000/svg}'
    r.equal(root.tag, ns + 'svg', 'svg: an SVG document')
    cells = root.findall(ns + 'g')
    r.check(0 < len(cells) <= 4096, 'svg: cells drawn', len(cells))
    widths = [sum(float(x.get('width')) for x in c.findall(ns + 'rect'))
              for c in cells]
    r.check(all(abs(w - 11) < 0.05 for w in widths),
            'svg: every cell is filled by its bands', widths[:5])
    legend = ' '.join(t.text or '' for t in root.findall(ns + 'text'))
    size = sum(e['length'] for e in m)
    for i in range(depth):
        owned = sum(e['length'] for e in m if e['layer'] == i)
        share = '%.1f%%' % (100.0 * owned / size)
        if owned:
            r.check(re.search(r'layer %d: [^—]*— [^(]*\(%s\)' % (
                i, re.escape(share)), legend) is not None,
                'svg: legend gives layer %d its share %s' % (i, share),
                legend)


def body():
    cli.require_tool()
    harness.require_tools('nbdinfo')
    rng = random.Random(41)
    with harness.tempdir() as tmp:
        c = g.Chain(os.path.join(tmp, 'c'), seed=41)
        c.base('base.vhd', 12 * MiB, writes=g.random_writes(rng, 6 * MiB, 20))
        c.child('snap1.avhd', block_size=MiB,
                writes=g.random_writes(rng, 12 * MiB, 40, block_size=MiB))
        c.child('snap2.avhd',
                writes=g.random_writes(rng, 12 * MiB, 40, max_sectors=300))
        points = c.write(expected=False)
        m = check_against_plugin(points[-1].path, 12 * MiB, 'chain')
        check_owners(m, points, 'chain')
        r.check({e['type'] for e in m} == {'data', 'hole'},
                'chain: data and holes', {e['type'] for e in m})
        check_svg(points[-1].path, m, len(points), tmp)

        vhdx = harness.gunzip_to(harness.sample('discutils',
                                                'swap.vhdx.gz'), tmp)
        m = check_against_plugin(vhdx, 10 << 30, 'VHDX sample')
        r.equal([(e['offset'], e['length'], e['type']) for e in m],
                [(0, 32 * MiB, 'data'), (32 * MiB, (10 << 30) - 64 * MiB,
                                         'hole'),
                 ((10 << 30) - 32 * MiB, 32 * MiB, 'zero')],
                'VHDX sample: block 0 data, block 319 zero, holes between')


r.main(body)
