#!/usr/bin/python3
"""vhdchain merge and convert on VHDX chains (vhdxgen).

- Merge: a dynamic base (4 MiB blocks, unallocated ones, a ZERO one, a
  last one the disk ends inside) and three differencing layers (2 MiB blocks; the first
  with a ZERO block the second writes into part of; sector-granular writes
  crossing blocks), for 512 and 4096-byte logical sectors.  The second
  layer is merged into the first (differencing parent), then --into the
  base the three left, with --delete.  Each result equals vhdxgen's
  expected image of the merged point, read by the plugin (nbdkit -r), by
  vhdxgen's own reader and, for the base, by qemu-img (which opens
  512-byte logical sectors only); `vhdchain check`
  and vhdxgen's structure check pass; the base has only NOT_PRESENT and
  FULLY_PRESENT blocks (no PARTIALLY_PRESENT without a parent); the parent
  has a new FileWriteGuid and DataWriteGuid, which the merged child names
  in parent_linkage2 (its own DataWriteGuid unchanged), so it still reads
  as before; only those two files change.
- libvhdi (vhdimount) reads a merged differencing parent (over its base)
  and a merged dynamic base of a 4 KiB-aligned chain.
- A fixed VHDX base: written in place (still all FULLY_PRESENT, no block
  added) after its new DataWriteGuid; qemu-img and libvhdi read it.
- A child made by `vhdchain create` (no parent_linkage2 yet): the merge
  adds one (the locator item is rewritten and moved), and a second merge
  into the same parent writes parent_linkage, the one that no longer
  names the parent.
- Windows-made dynamic VHDX (the DiscUtils samples: 32 MiB blocks, ZERO
  blocks, one with a log still to replay) as merge targets: writes into a
  data block, a hole and a ZERO block through a child merged in; the log
  is replayed into the file first; the result passes check and vhdxgen's
  structure check and reads (vhdchain, qemu-img) as the child did.
- Refusals: another child of the parent in the folder (it links by the
  DataWriteGuid the merge renews) without --force; with --force the merge
  happens and that child no longer opens (orphaned, as MS-VHDX says).
- Crash safety: VHDCHAIN_TEST_CRASH_AFTER=N stops the merge dead after
  its Nth step (child relinked, parent headers renewed, each allocation,
  write and commit), for every N, into a differencing and into a dynamic
  parent.  Each time the child's chain still opens and reads as before,
  the parent alone passes check and reads per sector its old or new
  content, and running the merge again completes it.
- Convert to VHDX: a VHDX chain point (512 and 4096-byte sectors) to 32 MiB
  (default) and 2 MiB blocks: vhdxgen finds a sound dynamic VHDX whose
  allocated blocks are exactly those holding non-zero data; vhdxgen, the
  plugin, and for 512-byte sectors qemu-img (`convert -f vhdx -O raw`)
  and libvhdi read the expected image; check passes; the file is sparse.
  --block-size refusals.
"""

import os
import random
import shutil

import harness
import vhdchain_cli as cli
import vhdxgen as g
from vhdxgen import MiB

r = harness.Reporter('test-cli-vhdx')


def build(folder, seed, sector=512, aligned=False, zeros=True, layers=3,
          count=30, size=30 * MiB):
    """base.vhdx (4 MiB blocks: 0-3 written, 4 and 6 not present, 5 ZERO,
    7 the short last one) and snap1..snapN.avhdx (2 MiB blocks)."""
    rng = random.Random(seed)
    w = lambda lo, hi, n, **kw: g.random_writes(
        rng, size, n, lo=lo, hi=hi, sector=sector, aligned4k=aligned,
        max_sectors=64 if sector == 512 else 16, **kw)
    c = g.Chain(folder, seed=seed)
    c.base('base.vhdx', size, block_size=4 * MiB, logical_sector=sector,
           zero_blocks=[5] if zeros else [],
           writes=w(0, 16 * MiB, count, block_size=4 * MiB))
    c.child('snap1.avhdx', writes=w(0, 20 * MiB, count),
            zero_blocks=[5] if zeros else [])
    # Part of snap1's ZERO block 5 (10-12 MiB): the merge writes it whole.
    extra = [(10 * MiB + 8192, rng.randbytes(4 * sector))] if zeros else []
    if layers >= 2:
        c.child('snap2.avhdx', writes=w(0, size, count) + extra)
    for i in range(3, layers + 1):
        c.child('snap%d.avhdx' % i, writes=w(0, size, count))
    return c.write()


def header(path):
    return g.current_header(path)[1]


def locator(path):
    return dict(g.read_metadata(path).get('locator') or [])


def linked_by(child, parent):
    """Which of the child's linkages names the parent's DataWriteGuid."""
    dw = g.linkage_text(header(parent)['data_write_guid'])
    loc = locator(child)
    return [k for k in ('parent_linkage', 'parent_linkage2')
            if loc.get(k, '').lower() == dw]


def states(path):
    return sorted(set(st for st, _, _ in g.read_file(path).blocks.values()))


def qemu_read(path, tmp):
    with open(harness.qemu_raw(path, os.path.join(tmp, 'q.raw'),
                               fmt='vhdx'), 'rb') as f:
        data = f.read()
    os.unlink(os.path.join(tmp, 'q.raw'))
    return data


def merge_chain(tmp, sector):
    label = 'sector %d' % sector
    p = build(os.path.join(tmp, 'a%d' % sector), 71 + sector, sector=sector)
    files = [x.path for x in p]
    before = harness.snapshot(files)
    h1, h2 = header(p[1].path), header(p[2].path)

    out = cli.ok('merge', p[2].path)
    r.check('snap2.avhdx: obsolete' in out,
            '%s: merge says the child is obsolete' % label, out)
    r.equal(harness.changed_files(before), [p[1].path, p[2].path],
            '%s: only the parent and the child\'s locator changed' % label)
    n1, n2 = header(p[1].path), header(p[2].path)
    r.check(n1['data_write_guid'] != h1['data_write_guid'] and
            n1['file_write_guid'] != h1['file_write_guid'] and
            n1['log_guid'] == g.ZERO_GUID,
            '%s: the parent has a new FileWriteGuid and DataWriteGuid'
            % label)
    r.check(n2['data_write_guid'] == h2['data_write_guid'] and
            n2['file_write_guid'] != h2['file_write_guid'],
            '%s: the child keeps its DataWriteGuid, new FileWriteGuid'
            % label)
    r.equal(linked_by(p[2].path, p[1].path), ['parent_linkage2'],
            '%s: the child names the new one in parent_linkage2' % label)
    r.same(cli.read_export(p[1].path, tmp), p[2].expected(),
           '%s: merged parent reads as the child did' % label)
    r.same(cli.read_export(p[3].path, tmp), p[3].expected(),
           '%s: the tip still reads so' % label)
    cli.check_passes(r, p[3].path, '%s: merged chain' % label)
    r.equal(g.structure_problems(p[1].path, parent=p[0].path), [],
            '%s: merged differencing parent is sound (vhdxgen)' % label)
    img = g.read_disk([p[1].path, p[0].path])
    r.same(img.read(0, img.size), p[2].expected(),
           '%s: vhdxgen reads the merged parent' % label)
    st = g.read_file(p[1].path).blocks[5][0]
    r.equal(st, g.FULLY_PRESENT, '%s: the ZERO block written into became '
            'FULLY_PRESENT' % label)

    out = cli.ok('merge', '--delete', '--into', p[0].path, p[3].path)
    r.check(not any(os.path.exists(x.path) for x in p[1:]),
            '%s: --delete removed the merged layers' % label, out)
    want = p[3].expected()
    r.same(cli.read_export(p[0].path, tmp), want,
           '%s: base after --into reads as the tip did' % label)
    cli.check_passes(r, p[0].path, '%s: base after --into' % label)
    r.equal(g.structure_problems(p[0].path), [],
            '%s: merged base is sound (vhdxgen)' % label)
    r.check(set(states(p[0].path)) <= {g.NOT_PRESENT, g.FULLY_PRESENT},
            '%s: the base has only NOT_PRESENT and FULLY_PRESENT blocks'
            % label, states(p[0].path))
    img = g.read_disk([p[0].path])
    r.same(img.read(0, img.size), want, '%s: vhdxgen reads the merged base'
           % label)
    if sector == 512:               # QEMU: 512-byte logical sectors only
        r.same(qemu_read(p[0].path, tmp), want,
               '%s: qemu-img reads the merged dynamic base' % label)


def merge_for_libvhdi(tmp):
    p = build(os.path.join(tmp, 'b'), 72, aligned=True, zeros=False,
              layers=2)
    cli.ok('merge', p[2].path)
    with harness.vhdimount(p[1].path, os.path.join(tmp, 'mnt')) as files:
        r.same(open(files[-1], 'rb').read(), p[2].expected(),
               'vhdimount reads the merged differencing parent')
    cli.ok('merge', '--into=' + p[0].path, p[1].path)
    with harness.vhdimount(p[0].path, os.path.join(tmp, 'mnt')) as files:
        r.same(open(files[-1], 'rb').read(), p[2].expected(),
               'vhdimount reads the merged dynamic base')


def fixed_base(tmp):
    """A fixed VHDX base (8 MiB blocks, all FULLY_PRESENT): written in
    place after its new identity."""
    rng = random.Random(77)
    size = 20 * MiB
    c = g.Chain(os.path.join(tmp, 'x'), seed=77)
    c.base('base.vhdx', size, fixed=True, block_size=8 * MiB,
           writes=g.fill_writes(rng, size))
    c.child('snap1.avhdx', writes=g.random_writes(rng, size, 40,
                                                  aligned4k=True))
    p = c.write()
    dw = header(p[0].path)['data_write_guid']
    length = os.path.getsize(p[0].path)
    cli.ok('merge', '-q', p[1].path)
    r.check(header(p[0].path)['data_write_guid'] != dw,
            'fixed base: new DataWriteGuid')
    r.equal(states(p[0].path), [g.FULLY_PRESENT], 'fixed base: still all '
            'FULLY_PRESENT')
    r.equal(os.path.getsize(p[0].path), length, 'fixed base: no block added')
    cli.check_passes(r, p[0].path, 'fixed base merged')
    r.equal(g.structure_problems(p[0].path), [], 'fixed base: sound')
    r.same(qemu_read(p[0].path, tmp), p[1].expected(),
           'fixed base: qemu-img reads it merged')
    with harness.vhdimount(p[0].path, os.path.join(tmp, 'mnt')) as files:
        r.same(open(files[-1], 'rb').read(), p[1].expected(),
               'fixed base: vhdimount reads it merged')


def created_child(tmp):
    """A child vhdchain made: no parent_linkage2 until a merge adds it."""
    p = build(os.path.join(tmp, 'c'), 73, layers=1)
    kid = os.path.join(tmp, 'c', 'kid.avhdx')
    cli.ok('create', p[1].path, kid)
    r.check('parent_linkage2' not in locator(kid),
            'created child: no parent_linkage2')
    with harness.Nbdkit(p[1].path, 'overlay=' + kid, readonly=False) as srv:
        h = srv.connect()
        h.pwrite(b'\x5a' * 8192, 3 * MiB + 4096)
        h.pwrite(b'\xa5' * 4096, 20 * MiB)
        h.flush()
        h.shutdown()
    want = bytearray(p[1].expected())
    want[3 * MiB + 4096:3 * MiB + 4096 + 8192] = b'\x5a' * 8192
    want[20 * MiB:20 * MiB + 4096] = b'\xa5' * 4096
    want = bytes(want)
    r.same(cli.read_export(kid, tmp), want,
           'created child: written through the plugin')
    cli.ok('merge', kid)
    r.equal(linked_by(kid, p[1].path), ['parent_linkage2'],
            'created child: the merge added parent_linkage2')
    r.equal(g.structure_problems(kid), [],
            'created child: sound after the locator moved')
    r.same(cli.read_export(p[1].path, tmp), want, 'created child: merged')
    r.same(cli.read_export(kid, tmp), want, 'created child: still reads so')
    cli.ok('merge', kid)
    r.equal(linked_by(kid, p[1].path), ['parent_linkage'],
            'created child: merged again, parent_linkage names the parent')
    r.same(cli.read_export(kid, tmp), want,
           'created child: merged twice, still reads')
    cli.check_passes(r, kid, 'created child merged twice')


def real_samples(tmp):
    """Windows-made dynamic VHDX (DiscUtils samples, 32 MiB blocks, ZERO
    blocks; one with a log still to replay) as merge targets."""
    import nbd
    for name in ('swap.vhdx.gz', 'vhdx-log-replay.vhdx.gz'):
        folder = os.path.join(tmp, 's-' + name[:-3])
        os.makedirs(folder)
        base = harness.gunzip_to(harness.sample('discutils', name), folder)
        orig = os.path.join(tmp, 'orig.raw')
        cli.ok('convert', '-q', '--force', base, orig)
        zero = [e['offset'] for e in cli.json_of('map', '--json', base)
                if e['type'] == 'zero'][0]
        kid = os.path.join(folder, 'kid.avhdx')
        rng = random.Random(name)
        writes = [(4096, rng.randbytes(65536)),           # in a data block
                  (40 * MiB + 512, rng.randbytes(3 * 512)),   # a hole
                  (zero + 512 * 7, rng.randbytes(8192))]      # a ZERO block
        with harness.Nbdkit(base, 'overlay=' + kid, readonly=False) as srv:
            h = srv.connect()
            h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
            for off, data in writes:
                h.pwrite(data, off)
            h.flush()
            h.shutdown()
        with open(orig, 'r+b') as f:
            for off, data in writes:
                f.seek(off)
                f.write(data)
        cli.ok('merge', '--delete', kid)
        what = name[:-3]
        cli.check_passes(r, base, '%s merged' % what)
        r.equal(g.structure_problems(base), [], '%s merged: sound (vhdxgen)'
                % what)
        r.equal(header(base)['log_guid'], g.ZERO_GUID,
                '%s merged: the log was replayed into the file' % what)
        got = os.path.join(tmp, 'got.raw')
        cli.ok('convert', '-q', '--force', base, got)
        r.check(g.sparse_equal(got, orig), '%s merged: reads as the child '
                'did' % what)
        q = harness.qemu_raw(base, os.path.join(tmp, 'q.raw'), fmt='vhdx')
        r.check(g.sparse_equal(q, orig), '%s merged: qemu-img reads it so'
                % what)
        for f in (orig, got, q):
            os.unlink(f)


def refusals(tmp):
    p = build(os.path.join(tmp, 'd'), 74, layers=2)
    sibling = os.path.join(tmp, 'd', 'other.avhdx')
    cli.ok('create', p[1].path, sibling)
    before = harness.snapshot([x.path for x in p] + [sibling])
    cli.fails(r, ['merge', p[2].path], 1, 'other.avhdx: parent: depends on',
              'VHDX: another child of the parent')
    cli.fails(r, ['merge', '--into', p[0].path, p[2].path], 1,
              'other.avhdx', 'VHDX: another child of a layer between')
    r.equal(harness.changed_files(before), [], 'refused merges wrote nothing')
    cli.ok('merge', '--force', '-q', p[2].path)
    r.same(cli.read_export(p[1].path, tmp), p[2].expected(),
           '--force merges anyway')
    cli.fails(r, ['info', sibling], 2, 'identity',
              'the other child is orphaned by the new DataWriteGuid')


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
        parent = os.path.join(work, into or 'snap1.avhdx')
        rc2, out2, err2 = cli.run('check', parent)
        r.check(rc2 == 0 and ' 0 errors' in out2,
                '%s: step %d: the parent passes check' % (label, n),
                out2 + err2)
        got = cli.read_export(parent, tmp)
        sec = 512
        bad = [s for s in range(0, len(got), sec)
               if got[s:s + sec] not in (want_old[s:s + sec],
                                         want_new[s:s + sec])]
        r.check(not bad, '%s: step %d: each sector old or new' % (label, n),
                bad[:5])
        r.same(cli.read_export(os.path.join(work, child), tmp), want_new,
               '%s: step %d: the child still reads as before' % (label, n))
        del env['VHDCHAIN_TEST_CRASH_AFTER']
        cli.ok(*args, env=env)
        r.same(cli.read_export(parent, tmp), want_new,
               '%s: step %d: merging again completes it' % (label, n))
        cli.check_passes(r, os.path.join(work, child),
                         '%s: step %d: merged again' % (label, n))


def crashes(tmp):
    src = os.path.join(tmp, 'e')
    p = build(src, 75, layers=2, count=8)
    steps = crash_case(tmp, src, None, p[1].expected(), p[2].expected(),
                       'snap2.avhdx', 'into differencing')
    r.check(steps >= 6, 'into differencing: several steps were crashed at',
            steps)
    steps = crash_case(tmp, src, 'base.vhdx', p[0].expected(),
                       p[2].expected(), 'snap2.avhdx', 'into dynamic')
    r.check(steps >= 6, 'into dynamic: several steps were crashed at', steps)


def convert_case(tmp, sector):
    label = 'convert %d' % sector
    p = build(os.path.join(tmp, 'f%d' % sector), 76 + sector, sector=sector,
              layers=2)
    tip, want = p[2].path, p[2].expected()
    before = harness.snapshot([x.path for x in p])
    for bs, opts in ((32 * MiB, []), (2 * MiB, ['--block-size', '2M'])):
        what = '%s, %d MiB blocks' % (label, bs // MiB)
        out = os.path.join(tmp, 'out%d-%d.vhdx' % (sector, bs // MiB))
        rc, stdout, err = cli.run('convert', *opts, tip, out)
        r.equal((rc, err), (0, ''), '%s: exit 0, quiet off a terminal'
                % what)
        r.equal(g.structure_problems(out), [], '%s: sound (vhdxgen)' % what)
        info = g.read_file(out)
        r.equal((info.differencing, info.block_size, info.sector,
                 info.size), (False, bs, sector, len(want)),
                '%s: dynamic, block and sector size, exact size' % what)
        nonzero = [b for b in range(info.nr_blocks)
                   if want[b * bs:(b + 1) * bs].count(0) !=
                   len(want[b * bs:(b + 1) * bs])]
        r.equal(sorted(b for b, (st, _, _) in info.blocks.items()
                       if st != g.NOT_PRESENT), nonzero,
                '%s: exactly the non-zero blocks are allocated, FULLY_PRESENT'
                % what)
        r.check(set(states(out)) <= {g.NOT_PRESENT, g.FULLY_PRESENT},
                '%s: block states' % what, states(out))
        r.equal(header(out)['log_guid'], g.ZERO_GUID, '%s: no log' % what)
        img = g.read_disk([out])
        r.same(img.read(0, img.size), want, '%s: vhdxgen reads the expected '
               'image' % what)
        if sector == 512:           # QEMU: 512-byte logical sectors only
            r.same(qemu_read(out, tmp), want, '%s: qemu-img reads the '
                   'expected image' % what)
        r.same(cli.read_export(out, tmp), want,
               '%s: the plugin reads it' % what)
        cli.check_passes(r, out, what)
        r.check(os.stat(out).st_blocks * 512 <= 5 * MiB + len(want),
                '%s: sparse' % what, os.stat(out).st_blocks * 512)
        if sector == 512:
            with harness.vhdimount(out, os.path.join(tmp, 'mnt')) as files:
                r.same(open(files[-1], 'rb').read(), want,
                       '%s: vhdimount reads it' % what)
    r.equal(harness.changed_files(before), [], '%s: the chain is unchanged'
            % label)
    cli.fails(r, ['convert', '--block-size', '4M', tip,
                  os.path.join(tmp, 'x.vhdx')], 2, '--block-size 4M',
              'a block size other than 2M or 32M')
    cli.fails(r, ['convert', '--block-size', '2M', tip,
                  os.path.join(tmp, 'x.raw')], 2, 'only for VHDX',
              '--block-size with raw output')
    r.check(not os.path.exists(os.path.join(tmp, 'x.vhdx')) and
            not os.path.exists(os.path.join(tmp, 'x.raw')),
            'refused converts leave no file')


def body():
    cli.require_tool()
    harness.require_plugin()
    harness.require_tools('qemu-img', 'vhdimount', 'fusermount')
    import nbd  # noqa: F401
    with harness.tempdir() as tmp:
        for sector in (512, 4096):
            r.run(merge_chain, tmp, sector, what='merge, sector %d' % sector)
        r.run(merge_for_libvhdi, tmp)
        r.run(fixed_base, tmp)
        r.run(created_child, tmp)
        r.run(real_samples, tmp)
        r.run(refusals, tmp)
        r.run(crashes, tmp)
        for sector in (512, 4096):
            r.run(convert_case, tmp, sector, what='convert %d' % sector)


r.main(body)
