#!/usr/bin/python3
"""vhdchain create: a new empty differencing child that the plugin and
libvhdi (vhdimount) read as the parent's disk.

On a generated chain (4 KiB-aligned writes: libvhdi misreads partly set
bitmap bytes, FORMATS.md pitfall 4), create CHILD of the tip: the file is
structurally sound (read with vhdgen's tables, linked to the tip's id);
the plugin serving CHILD and vhdimount mounting it both read the tip's
expected image; the plugin continues it as overlay= and what it writes is
then read back by vhdimount and counted by info.  A child in another
folder links back with a relative locator (..\\), and --drive puts a drive
letter in its absolute locator.  An existing CHILD, a missing parent and a
missing folder are refused with one line and the documented exit status;
the chain files never change.  A VHDX parent (a sample with a dirty log)
gets an empty VHDX child that reads as the parent.
"""

import os
import random

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-create')


def check_vhdimount(path, want, tmp, what):
    with harness.vhdimount(path, os.path.join(tmp, 'mnt')) as files:
        with open(files[-1], 'rb') as f:
            got = f.read()
    r.same(got, want, '%s: vhdimount reads it' % what)


def body():
    cli.require_tool()
    harness.require_plugin()
    rng = random.Random(51)
    with harness.tempdir() as tmp:
        folder = os.path.join(tmp, 'chain')
        c = g.Chain(folder, seed=51)
        c.base('base.vhd', 8 * MiB,
               writes=g.random_writes(rng, 8 * MiB, 30, aligned4k=True))
        c.child('snap1.avhd',
                writes=g.random_writes(rng, 8 * MiB, 30, aligned4k=True))
        points = c.write()
        tip, want = points[-1], points[-1].expected()
        before = harness.snapshot([p.path for p in points])

        child = os.path.join(folder, 'snap2.avhd')
        out = cli.ok('create', tip.path, child)
        r.check('snap2.avhd' in out, 'create says what it made', out)
        r.equal(harness.vhd_structure_problems(child, parent=tip.path), [],
                'the child is sound and linked to the tip')
        info = cli.json_of('info', '--json', child)['layers'][0]
        r.equal((info['type'], info['size'], info['allocated']),
                ('differencing', tip.size, 0), 'an empty differencing child')
        r.check(cli.read_export(child, tmp) == want,
                'the plugin reads the child as the tip')
        check_vhdimount(child, want, tmp, 'new child')

        # The plugin continues it; libvhdi reads what was written.
        data = rng.randbytes(64 * 1024)
        with harness.Nbdkit(tip.path, 'overlay=' + child,
                            readonly=False) as srv:
            h = srv.connect()
            h.pwrite(data, 3 * MiB)
            h.flush()
            h.shutdown()
        want2 = want[:3 * MiB] + data + want[3 * MiB + len(data):]
        check_vhdimount(child, want2, tmp, 'child written by the plugin')
        info = cli.json_of('info', '--json', child)['layers'][0]
        r.equal(info['present'], len(data), 'info counts what was written')

        # Elsewhere: relative locator through "..", absolute through --drive.
        other = os.path.join(tmp, 'other')
        os.mkdir(other)
        far = os.path.join(other, 'far.avhd')
        cli.ok('create', '--drive', 'D:' + tmp, tip.path, far)
        hints = {(h['kind'], h['path']) for h in
                 cli.json_of('info', '--json', '--search', folder,
                             far)['layers'][0]['parent_hints']}
        r.check(('relative path', '..\\chain\\snap1.avhd') in hints,
                'relative locator from another folder', hints)
        r.check(('absolute path', 'D:\\chain\\snap1.avhd') in hints,
                'absolute locator through --drive', hints)
        r.check(cli.read_export(far, tmp, 'search=' + folder) == want,
                'the plugin reads the child in another folder')

        cli.fails(r, ['create', tip.path, child], 1, 'exists',
                  'existing child')
        cli.fails(r, ['create', os.path.join(tmp, 'none.vhd'),
                      os.path.join(tmp, 'x.avhd')], 2, 'none.vhd',
                  'missing parent')
        cli.fails(r, ['create', tip.path, os.path.join(tmp, 'no', 'x.avhd')],
                  1, 'x.avhd', 'missing folder')
        r.check(not os.path.exists(os.path.join(tmp, 'no')),
                'nothing left behind for a refused create')
        r.equal(harness.changed_files(before), [], 'the chain is unchanged')

        # A VHDX parent (with a dirty log, replayed in memory) gets a VHDX
        # child that reads as the parent: the documented SHA-256.
        vhdx = harness.gunzip_to(harness.sample(
            'discutils', 'vhdx-log-replay.vhdx.gz'), tmp)
        vsnap = harness.snapshot([vhdx])
        vchild = os.path.join(tmp, 'child.avhdx')
        cli.ok('create', vhdx, vchild)
        info = cli.json_of('info', '--json', vchild)['layers'][0]
        r.equal((info['format'], info['type'], info['size'], info['allocated']),
                ('vhdx', 'differencing', 1 << 30, 0),
                'VHDX parent: an empty differencing VHDX child')
        out = os.path.join(tmp, 'vchild.raw')
        cli.ok('convert', vchild, out)
        r.equal(harness.sha256_file(out), '3ba3b309425b7ff5e8e0199edceed952'
                '26250f880c53b24e8eae93865f3fad5e',
                'VHDX child reads as its parent')
        r.equal(harness.changed_files(vsnap), [], 'the VHDX parent is '
                'unchanged')


r.main(body)
