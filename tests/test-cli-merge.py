#!/usr/bin/python3
"""vhdchain merge: the merged file equals the expected image at that point,
passes check, reads the same through independent readers, and an
interruption at any step leaves a readable file that a second run
completes.

- A dynamic base and three differencing layers (sector-granular writes
  crossing blocks, new blocks and blocks the parent already has): merge the
  tip into its differencing parent, then --into the base the two layers
  left, with --delete.  Each result is read by the plugin and compared with
  vhdgen's expected image of the merged point; only the file merged into
  changes; check passes; the merged tip still reads the same.
- The same with 4 KiB-aligned writes, read by vhdimount (libvhdi) and, for
  the dynamic base, by qemu-img; a fixed base, read by qemu-img; layers of
  512 KiB, 1 MiB and 2 MiB blocks merged into one another.
- Refusals: another child of the parent in the folder (without --force),
  a base image, --into outside the chain or the child itself.  (VHDX
  merges: test-cli-vhdx.py.)
- Crash safety: VHDCHAIN_TEST_CRASH_AFTER=N stops the merge dead after its
  Nth write step, for every N.  Each time the child's chain still reads as
  before, the parent alone opens, passes check and reads per sector either
  its old or its new content, and running the merge again completes it.
"""

import os
import random
import shutil

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-merge')


def build(folder, seed, aligned=False, fixed=False, layers=3, count=30):
    rng = random.Random(seed)
    size = 8 * MiB
    w = lambda lo, hi, n: g.random_writes(rng, size, n, lo=lo, hi=hi,
                                          aligned4k=aligned, max_sectors=64)
    c = g.Chain(folder, seed=seed)
    if fixed:
        c.base('base.vhd', size, fixed=True, writes=g.fill_writes(rng, size))
    else:                           # blocks 0-1 allocated, 2-3 not
        c.base('base.vhd', size, writes=w(0, 4 * MiB, count))
    c.child('snap1.avhd', writes=w(0, 5 * MiB, count))
    for i in range(2, layers + 1):
        c.child('snap%d.avhd' % i, writes=w(0, size, count))
    return c.write()


def merge_chain(tmp):
    p = build(os.path.join(tmp, 'a'), 61)
    files = [x.path for x in p]
    before = harness.snapshot(files)
    out = cli.ok('merge', p[3].path)
    r.check('snap3.avhd: obsolete' in out, 'merge says the child is obsolete',
            out)
    r.equal(harness.changed_files(before), [p[2].path],
            'only the parent changed')
    r.same(cli.read_export(p[2].path, tmp), p[3].expected(),
           'merged parent reads as the child did')
    r.same(cli.read_export(p[3].path, tmp), p[3].expected(),
           'the child still reads so')
    cli.check_passes(r, p[3].path, 'merged chain')
    r.equal(harness.vhd_structure_problems(p[2].path, parent=p[1].path), [],
            'merged parent is sound (vhdgen tables)')

    out = cli.ok('merge', '--delete', '--into', p[0].path, p[2].path)
    r.check(not os.path.exists(p[2].path) and not os.path.exists(p[1].path),
            '--delete removed the merged layers', out)
    r.same(cli.read_export(p[0].path, tmp), p[3].expected(),
           'base after --into reads as the tip did')
    cli.check_passes(r, p[0].path, 'base after --into')
    r.same(open(harness.qemu_raw(p[0].path, os.path.join(tmp, 'q.raw'),
                                 size_calc='current_size'), 'rb').read(),
           p[3].expected(), 'qemu-img reads the merged dynamic base')


def merge_for_libvhdi(tmp):
    p = build(os.path.join(tmp, 'b'), 62, aligned=True)
    cli.ok('merge', p[3].path)
    with harness.vhdimount(p[2].path, os.path.join(tmp, 'mnt')) as files:
        r.same(open(files[-1], 'rb').read(), p[3].expected(),
               'vhdimount reads the merged differencing parent')
    cli.ok('merge', '--into=' + p[0].path, p[2].path)
    with harness.vhdimount(p[0].path, os.path.join(tmp, 'mnt')) as files:
        r.same(open(files[-1], 'rb').read(), p[3].expected(),
               'vhdimount reads the merged dynamic base')

    p = build(os.path.join(tmp, 'c'), 63, aligned=True, fixed=True, layers=1)
    cli.ok('merge', p[1].path)
    r.same(open(harness.qemu_raw(p[0].path, os.path.join(tmp, 'f.raw'),
                                 size_calc='current_size'), 'rb').read(),
           p[1].expected(), 'qemu-img reads the merged fixed base')
    cli.check_passes(r, p[0].path, 'merged fixed base')


def mixed_block_sizes(tmp):
    """1 MiB base, 2 MiB and 512 KiB layers: merge into each size."""
    rng = random.Random(66)
    size = 8 * MiB
    c = g.Chain(os.path.join(tmp, 'f'), seed=66)
    c.base('base.vhd', size, block_size=MiB,
           writes=g.random_writes(rng, size, 30, block_size=MiB, hi=5 * MiB))
    c.child('snap1.avhd', block_size=2 * MiB,
            writes=g.random_writes(rng, size, 30))
    c.child('snap2.avhd', block_size=512 * 1024,
            writes=g.random_writes(rng, size, 40, block_size=512 * 1024,
                                   max_sectors=300))
    p = c.write()
    shutil.copytree(os.path.join(tmp, 'f'), os.path.join(tmp, 'f2'))
    cli.ok('merge', p[2].path)
    r.same(cli.read_export(p[1].path, tmp), p[2].expected(),
           '512 KiB blocks into 2 MiB blocks')
    cli.check_passes(r, p[2].path, 'mixed block sizes, merged once')
    base2 = os.path.join(tmp, 'f2', 'base.vhd')
    cli.ok('merge', '--into', base2, os.path.join(tmp, 'f2', 'snap2.avhd'))
    r.same(cli.read_export(base2, tmp), p[2].expected(),
           '512 KiB and 2 MiB blocks into 1 MiB blocks')
    cli.check_passes(r, base2, 'mixed block sizes, merged --into the base')


def refusals(tmp):
    p = build(os.path.join(tmp, 'd'), 64, layers=2)
    sibling = os.path.join(tmp, 'd', 'other.avhd')
    cli.ok('create', p[1].path, sibling)
    before = harness.snapshot([x.path for x in p])
    cli.fails(r, ['merge', p[2].path], 1, 'other.avhd: parent: depends on',
              'another child of the parent')
    cli.fails(r, ['merge', '--into', p[0].path, p[2].path], 1,
              'other.avhd', 'another child of a layer between')
    cli.fails(r, ['merge', p[0].path], 1, 'no parent', 'a base image')
    cli.fails(r, ['merge', '--into', sibling, p[2].path], 1,
              'not in the chain', '--into outside the chain')
    cli.fails(r, ['merge', '--into', p[2].path, p[2].path], 1,
              'CHILD itself', '--into the child itself')
    r.equal(harness.changed_files(before), [], 'refused merges wrote nothing')
    cli.ok('merge', '--force', '-q', p[2].path)
    r.same(cli.read_export(p[1].path, tmp), p[2].expected(),
           '--force merges anyway')


def crash_case(tmp, src, into, want_old, want_new, child, label):
    """Merge crashing after every step; returns the number of steps."""
    env = dict(os.environ)
    n = 0
    while True:
        n += 1
        work = os.path.join(tmp, 'crash')
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        args = ['merge', '-q', os.path.join(work, child)]
        if into:
            args[2:2] = ['--into', os.path.join(work, into)]
        env['VHDCHAIN_TEST_CRASH_AFTER'] = str(n)
        rc, out, err = cli.run(*args, env=env)
        if rc == 0:
            return n - 1
        if not r.check(rc == 99, '%s: step %d: stopped dead' % (label, n),
                       err):
            return n
        parent = os.path.join(work, into or 'snap1.avhd')
        rc2, out2, err2 = cli.run('check', parent)
        r.check(rc2 == 0, '%s: step %d: the parent passes check'
                % (label, n), out2 + err2)
        got = cli.read_export(parent, tmp)
        bad = [s for s in range(0, len(got), 512)
               if got[s:s + 512] not in (want_old[s:s + 512],
                                         want_new[s:s + 512])]
        r.check(not bad, '%s: step %d: each sector old or new' % (label, n),
                bad[:5])
        r.same(cli.read_export(os.path.join(work, child), tmp), want_new,
               '%s: step %d: the child still reads as before' % (label, n))
        del env['VHDCHAIN_TEST_CRASH_AFTER']
        cli.ok(*args, env=env)
        r.same(cli.read_export(parent, tmp), want_new,
               '%s: step %d: merging again completes it' % (label, n))


def crashes(tmp):
    p = build(os.path.join(tmp, 'e'), 65, layers=2, count=8)
    steps = crash_case(tmp, os.path.join(tmp, 'e'), None, p[1].expected(),
                       p[2].expected(), 'snap2.avhd', 'into differencing')
    r.check(steps >= 6, 'into differencing: several steps were crashed at',
            steps)
    steps = crash_case(tmp, os.path.join(tmp, 'e'), 'base.vhd',
                       p[0].expected(), p[2].expected(), 'snap2.avhd',
                       'into dynamic')
    r.check(steps >= 6, 'into dynamic: several steps were crashed at', steps)


def body():
    cli.require_tool()
    harness.require_plugin()
    with harness.tempdir() as tmp:
        merge_chain(tmp)
        merge_for_libvhdi(tmp)
        mixed_block_sizes(tmp)
        refusals(tmp)
        crashes(tmp)


r.main(body)
