#!/usr/bin/python3
"""vhdchain info: every field equals what vhdgen wrote.

Two generated chains (a dynamic base with two differencing layers, one of
them with 1 MiB blocks, a Windows creator, an allocated block with an empty
bitmap and a larger virtual size; and a fixed base with one layer) are
described with --json and as text; each layer's format, type, sizes (and
the CHS size QEMU would use), block size, identities, parent, how it was
found, locators, file size and allocated / present bytes are compared with
vhdgen's own values.  The DiscUtils VHDX sample gives the values FORMATS.md
documents (size, 32 MiB blocks, one FULLY_PRESENT and one ZERO block).  A
chain whose parent is missing gives exit 2 and one line.
"""

import os
import random

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-info')


def expected_layer(p, parent):
    """What info --json must say about Point p (parent: Point or None)."""
    v = p.vhd
    fixed = v.kind == g.FIXED
    bs = 2 * MiB if fixed else v.block_size
    nblocks = (v.size + bs - 1) // bs
    if fixed:
        allocated, present = nblocks * bs, v.size
    elif v.kind == g.DYNAMIC:
        allocated = len(v.allocated_blocks()) * bs
        present = sum(min(bs, v.size - b * bs) for b in v.allocated_blocks())
    else:
        allocated = len(v.allocated_blocks()) * bs
        present = sum(v.present) * g.SECTOR
    return {
        'path': os.path.realpath(p.path),
        'format': 'vhd',
        'type': {g.FIXED: 'fixed', g.DYNAMIC: 'dynamic',
                 g.DIFFERENCING: 'differencing'}[v.kind],
        'size': v.size,
        'chs_size': g.chs_size(v.geometry),
        'block_size': bs,
        'sector_size': 512,
        'id': v.uid.hex(),
        'parent_id': v.parent_uid.hex() if v.kind == g.DIFFERENCING
        else None,
        'parent': os.path.realpath(parent.path) if parent else None,
        'file_size': os.path.getsize(p.path),
        'allocated': allocated,
        'present': present,
        'zero': 0,
    }


def check_chain(points, label):
    tip = points[-1]
    info = cli.json_of('info', '--json', tip.path)
    r.equal(info['depth'], len(points), '%s: depth' % label)
    r.equal(info['size'], tip.size, '%s: size' % label)
    layers = info['layers']
    for i, p in enumerate(reversed(points)):
        parent = points[p.index - 1] if p.index > 0 else None
        want = expected_layer(p, parent)
        got = dict(layers[i])
        got['path'] = os.path.realpath(got['path'])
        for key, value in want.items():
            r.equal(got.get(key), value, '%s: %s: %s' % (label, p.name, key))
        r.check(got['creator'].startswith(
            p.vhd.creator_app.decode().rstrip('\0')),
            '%s: %s: creator' % (label, p.name), got['creator'])
        if parent is not None:
            hints = {(h['kind'], h['path']) for h in got['parent_hints']}
            r.check(('relative path', '.\\' + parent.name) in hints,
                    '%s: %s: relative locator listed' % (label, p.name),
                    hints)
            r.check('relative path' in got['parent_found_by'],
                    '%s: %s: found by its relative locator' % (label, p.name),
                    got['parent_found_by'])
    text = cli.ok('info', tip.path)
    for p in points:
        r.check(p.vhd.uid.hex() in text and p.name in text,
                '%s: text output names %s and its identity' % (label, p.name))


def check_vhdx_sample(tmp):
    path = harness.gunzip_to(harness.sample('discutils', 'swap.vhdx.gz'), tmp)
    info = cli.json_of('info', '--json', path)
    l = info['layers'][0]
    r.equal((l['format'], l['type'], l['size'], l['block_size'],
             l['sector_size']),
            ('vhdx', 'dynamic', 10 << 30, 32 * MiB, 512),
            'VHDX sample: format, type, size, block and sector size')
    r.equal((l['allocated'], l['present'], l['zero']),
            (32 * MiB, 32 * MiB, 32 * MiB),
            'VHDX sample: block 0 FULLY_PRESENT, block 319 ZERO')
    r.check(l['creator'].startswith('Microsoft Windows 10.0.14393'),
            'VHDX sample: creator from the file identifier', l['creator'])


def body():
    cli.require_tool()
    rng = random.Random(21)
    with harness.tempdir() as tmp:
        c = g.Chain(os.path.join(tmp, 'dyn'), seed=21)
        c.base('base.vhd', 8 * MiB, writes=g.random_writes(rng, 6 * MiB, 30))
        c.child('snap1.avhd', block_size=MiB, creator_app=b'win ',
                empty_blocks=[7], writes=g.random_writes(
                    rng, 8 * MiB, 40, block_size=MiB))
        c.child('snap2.avhd', size=10 * MiB, block_size=MiB,
                writes=g.random_writes(rng, 10 * MiB, 40, block_size=MiB))
        check_chain(c.write(), 'dynamic chain')

        c = g.Chain(os.path.join(tmp, 'fixed'), seed=22)
        c.base('base.vhd', 5 * MiB, fixed=True,
               writes=g.fill_writes(rng, 5 * MiB))
        c.child('snap1.avhd', writes=g.random_writes(rng, 5 * MiB, 20))
        points = c.write()
        check_chain(points, 'fixed chain')

        os.unlink(points[0].path)
        cli.fails(r, ['info', points[1].path], 2, 'parent not found',
                  'missing parent')
        check_vhdx_sample(tmp)


r.main(body)
