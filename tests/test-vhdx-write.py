#!/usr/bin/python3
"""Writes over VHDX chains go to a VHDX child that others can read.

Against a model of the disk (vhdxgen's sparse image plus every write and
zero the test sends), for 512 and 4096-byte logical sectors:

- a temporary layer: random writes and zeroes, aligned or not, across
  2 MiB block borders, some FUA, flushes; read back on the same server and
  on a second connection;
- a kept layer (overlay=PATH): the same, then the AVHDX is checked by the
  test's own VHDX reader (vhdxgen: headers, region tables, metadata copied
  from the parent, parent locator, BAT, bitmaps; the disk it shows), served
  alone read-only by a second server, and read by libvhdi (vhdimount, with
  4 KiB-aligned writes only, what libvhdi reads reliably);
- the kept layer continued (overlay=PATH again): new FileWriteGuid and
  DataWriteGuid before any change, so a child made of the kept layer
  meanwhile no longer links to it (refused, one error line), old and new
  writes all there;
- a kept layer made by another tool (vhdxgen) with ZERO, FULLY_PRESENT and
  PARTIALLY_PRESENT blocks, 1 MiB blocks and a dirty log, continued: the
  log is replayed in place, ZERO blocks keep reading zeros;
- a chain made by the writer alone (base, then three sessions each on
  the previous kept layer): every point read back, and by libvhdi;
- a 4 GiB + 4 MiB disk: writes on both sides of the 4 GiB chunk border
  (two sector-bitmap blocks).

The chain files never change.
"""

import os
import random

import harness
import vhdxgen as g
from vhdxgen import KiB, MiB, GiB

r = harness.Reporter('test-vhdx-write')
BLOCK = 2 * MiB


def unaligned(h):
    import nbd
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
    return h


def op_range(rng, size, aligned4k, lo=0, hi=None):
    hi = size if hi is None else hi
    x = rng.random()
    if x < 0.25:
        n = rng.randint(1, 700)
    elif x < 0.5:
        n = rng.randint(1, 64) * 512
    else:
        n = rng.randint(2, 400 * KiB)
    n = min(n, hi - lo)
    off = rng.randrange(lo, hi - n + 1)
    if x >= 0.75:                       # across a block border
        borders = [b for b in range(BLOCK, hi, BLOCK) if lo < b < hi]
        if borders:
            off = rng.choice(borders) - rng.randint(1, max(1, n - 1))
            off = max(lo, min(off, hi - n))
    elif x >= 0.25 and rng.random() < 0.7:
        off = off // 512 * 512
    if aligned4k:
        off = off // 4096 * 4096
        n = max(4096, (n + 4095) // 4096 * 4096)
        n = min(n, (hi - off) // 4096 * 4096)
    return off, n


def exercise(h, m, rng, count, *, aligned4k=False, lo=0, hi=None):
    """count random operations on h, mirrored in the model m."""
    import nbd
    pool = rng.randbytes(512 * KiB)
    for _ in range(count):
        x = rng.random()
        if x < 0.08:
            h.flush()
            continue
        off, n = op_range(rng, m.size, aligned4k, lo, hi)
        if n <= 0:
            continue
        flags = nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0
        if x < 0.25:
            h.zero(n, off, flags)
            m.zero(off, n)
        else:
            k = rng.randrange(0, len(pool) - n + 1)
            h.pwrite(pool[k:k + n], off, flags)
            m.write(off, pool[k:k + n])
    h.flush()


def differences(read, m, ranges=None, chunk=4 * MiB):
    """Ranges where read(n, off) differs from the model."""
    bad = []
    if ranges is None:
        ranges = [(o, min(chunk, m.size - o)) for o in range(0, m.size,
                                                             chunk)]
    for off, n in ranges:
        if read(n, off) != m.read(off, n):
            bad.append('[%d, +%d)' % (off, n))
    return bad


def serve_check(path, m, label, ranges=None, *params):
    """path served read-only alone equals the model."""
    with harness.Nbdkit(path, *params) as srv:
        h = srv.connect()
        r.equal(h.get_size(), m.size, label + ': size')
        bad = differences(h.pread, m, ranges)
        h.shutdown()
    r.check(not bad, label, ', '.join(bad[:5]))


def libvhdi_check(path, m, tmp, label):
    with harness.vhdimount(path, os.path.join(tmp, 'mnt')) as files:
        with open(files[-1], 'rb') as f:
            def read(n, off):
                f.seek(off)
                return f.read(n)
            bad = differences(read, m)
    r.check(not bad, label, ', '.join(bad[:5]))


def file_checks(keep, parent, m, label, chain):
    """The test's own reader on a kept layer: structure and content."""
    bad = g.structure_problems(keep, parent=parent)
    r.check(not bad, label + ': sound VHDX child of ' +
            os.path.basename(parent), '\n'.join(bad[:10]))
    info = g.read_file(keep)
    r.equal(info.creator, 'vhdchain', label + ': creator')
    r.equal(info.block_size, BLOCK, label + ': 2 MiB blocks')
    loc = dict(info.md['locator'])
    r.equal(loc.get('relative_path'), '.\\' + os.path.basename(parent),
            label + ': relative_path')
    r.check(loc.get('absolute_win32_path', '').endswith(
        os.path.realpath(parent).replace('/', '\\')),
        label + ': absolute_win32_path', loc)
    for b, (st, off, _) in info.blocks.items():
        if st in (g.FULLY_PRESENT, g.PARTIALLY_PRESENT) and off % MiB:
            r.check(False, label + ': block %d not 1 MiB aligned' % b)
    got = g.read_disk([keep] + chain)
    bad = [o for o, n in [(o, min(4 * MiB, m.size - o))
                          for o in range(0, m.size, 4 * MiB)]
           if got.read(o, n) != m.read(o, n)]
    r.check(not bad, label + ': the disk read by vhdxgen', bad[:5])
    return info


# ---------------------------------------------------------------- sessions

def section_kept(tmp, sector):
    name = 'kept%d' % sector
    rng = random.Random(sector)
    folder = os.path.join(tmp, name)
    c = g.Chain(folder, seed=sector)
    size = 40 * MiB + 3 * sector
    bbs = 1 * MiB if sector == 4096 else 32 * MiB
    c.base('base.vhdx', size, block_size=bbs, logical_sector=sector,
           extra_items=[(g.guid_raw('12345678-1234-1234-1234-123456789abc'),
                         g.MD_IS_USER | g.MD_IS_VIRTUAL_DISK,
                         b'a user item of the virtual disk')],
           writes=g.fill_writes(rng, size))
    c.child('tip.avhdx', writes=g.random_writes(rng, size, 50,
                                                sector=sector))
    points = c.write()
    tip = points[-1]
    chain = [tip.path, points[0].path]
    before = harness.snapshot(chain)

    # A temporary layer.
    m = tip.image.copy()
    with harness.Nbdkit(tip.path, readonly=False) as srv:
        h = unaligned(srv.connect())
        exercise(h, m, rng, 150)
        r.check(not differences(h.pread, m), name + ' temporary: read back')
        h2 = unaligned(srv.connect())
        r.check(not differences(h2.pread, m),
                name + ' temporary: second connection')
        h.shutdown()
        h2.shutdown()

    # Kept: 4 KiB-aligned writes (for libvhdi).
    keep = os.path.join(folder, 'keep.avhdx')
    m = tip.image.copy()
    with harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False) as srv:
        h = unaligned(srv.connect())
        exercise(h, m, rng, 150, aligned4k=True)
        r.check(not differences(h.pread, m), name + ' kept: read back')
        h.shutdown()
    info1 = file_checks(keep, tip.path, m, name + ' kept', chain)
    md = g.read_metadata(keep)
    r.check(any(e[0] == g.guid_raw('12345678-1234-1234-1234-123456789abc')
                for e in md['entries']),
            name + ' kept: the parent\'s user virtual disk item copied')
    serve_check(keep, m, name + ' kept served alone by a second server')
    libvhdi_check(keep, m, tmp, name + ' kept read by libvhdi')

    # A child of the kept layer, made meanwhile by another tool.
    kv = g.VhdxFile('differencing', size, logical_sector=sector,
                    disk_id=md['disk_id'],
                    locator=[('parent_linkage', g.linkage_text(
                        g.current_header(keep)[1]['data_write_guid'])),
                        ('relative_path', '.\\keep.avhdx')])
    kv.write(0, b'o' * sector)
    orphan_path = kv.save(os.path.join(folder, 'orphan.avhdx'))
    with harness.Nbdkit(orphan_path) as srv:
        pass                                # links to the kept layer now

    # Continued: unaligned writes on top.
    hdr1 = g.current_header(keep)[1]
    with harness.Nbdkit(tip.path, 'overlay=' + keep, readonly=False) as srv:
        h = unaligned(srv.connect())
        r.check(not differences(h.pread, m), name + ' continued: old writes')
        exercise(h, m, rng, 150)
        r.check(not differences(h.pread, m), name + ' continued: read back')
        h.shutdown()
    hdr2 = g.current_header(keep)[1]
    r.check(hdr2['data_write_guid'] != hdr1['data_write_guid'] and
            hdr2['file_write_guid'] != hdr1['file_write_guid'],
            name + ' continued: new DataWriteGuid and FileWriteGuid')
    r.check(hdr2['seq'] > hdr1['seq'], name + ' continued: headers '
            'rewritten with higher SequenceNumbers')
    file_checks(keep, tip.path, m, name + ' continued', chain)
    serve_check(keep, m, name + ' continued served alone')
    rc, err = harness.start_must_fail(orphan_path)
    lines = harness.error_lines(err)
    r.check(len(lines) == 1 and 'orphan.avhdx' in lines[0] and
            'identity' in lines[0],
            name + ': a child made before the continuation is refused', err)
    r.equal(harness.changed_files(before), [], name + ': chain unchanged')
    return info1


def section_foreign(tmp):
    """overlay= naming a VHDX child made by vhdxgen, with every state."""
    rng = random.Random(7)
    folder = os.path.join(tmp, 'foreign')
    c = g.Chain(folder, seed=7)
    size = 24 * MiB
    c.base('base.vhdx', size, writes=g.fill_writes(rng, size))
    c.child('tip.avhdx', writes=g.random_writes(rng, size, 30))
    c.child('mine.avhdx', block_size=1 * MiB, zero_blocks=[2, 5, 9],
            dirty_log=True, stale_header=True, seqs=(3, 40),
            writes=[(0, rng.randbytes(1 * MiB)),           # FULLY_PRESENT
                    (7 * MiB, rng.randbytes(1 * MiB)),
                    (3 * MiB + 512, rng.randbytes(3000 // 512 * 512)),
                    (12 * MiB + 4096, rng.randbytes(8192))])
    points = c.write()
    tip, mine = points[1], points[2]
    chain = [tip.path, points[0].path]
    before = harness.snapshot(chain)
    states = set(mine.vhdx.file_layout['states'].values())
    r.check({g.ZERO, g.FULLY_PRESENT, g.PARTIALLY_PRESENT,
             g.NOT_PRESENT} <= states, 'foreign layer has every state',
            states)
    m = mine.image.copy()
    with harness.Nbdkit(tip.path, 'overlay=' + mine.path,
                        readonly=False) as srv:
        h = unaligned(srv.connect())
        r.check(not differences(h.pread, m), 'foreign: reads as made')
        # Into a ZERO block, a FULL block, a PARTIAL one, across them.
        for off, n in ((2 * MiB + 100, 700), (0 + 4096, 512),
                       (3 * MiB, 5000), (5 * MiB - 300, 900)):
            data = rng.randbytes(n)
            h.pwrite(data, off)
            m.write(off, data)
        exercise(h, m, rng, 80, hi=9 * MiB)     # block 9 stays ZERO
        r.check(not differences(h.pread, m), 'foreign: read back')
        h.shutdown()
    cur = g.current_header(mine.path)[1]
    r.equal(cur['log_guid'], g.ZERO_GUID, 'foreign: log replayed, LogGuid 0')
    bad = g.structure_problems(mine.path, parent=tip.path)
    r.check(not bad, 'foreign: sound afterwards', '\n'.join(bad[:10]))
    got = g.read_disk([mine.path] + chain)
    r.check(got.read(0, size) == m.read(0, size),
            'foreign: the disk read by vhdxgen')
    r.equal(got.read(9 * MiB, MiB), bytes(MiB),
            'foreign: an untouched ZERO block still reads zeros')
    r.equal(g.read_file(mine.path).blocks[9][0], g.FULLY_PRESENT,
            'foreign: ... now as a FULLY_PRESENT block of zeros')
    serve_check(mine.path, m, 'foreign: served alone')
    r.equal(harness.changed_files(before), [], 'foreign: chain unchanged')


def section_writer_chain(tmp):
    """base, then three sessions each keeping a layer on the last."""
    rng = random.Random(9)
    folder = os.path.join(tmp, 'wchain')
    c = g.Chain(folder, seed=9)
    size = 20 * MiB
    c.base('base.vhdx', size, writes=g.random_writes(rng, size, 40))
    base = c.write()[0]
    tip, models, layers = base.path, [base.image], [base.path]
    for i in range(1, 4):
        keep = os.path.join(folder, 'w%d.avhdx' % i)
        m = models[-1].copy()
        with harness.Nbdkit(tip, 'overlay=' + keep, readonly=False) as srv:
            h = unaligned(srv.connect())
            exercise(h, m, rng, 80, aligned4k=True)
            h.shutdown()
        models.append(m)
        layers.append(keep)
        tip = keep
    before = harness.snapshot(layers)
    for i, (path, m) in enumerate(zip(layers, models)):
        serve_check(path, m, 'writer chain: point %d' % i, None, 'io=pread'
                    if i % 2 else 'io=uring')
        if i:
            bad = g.structure_problems(path, parent=layers[i - 1])
            r.check(not bad, 'writer chain: layer %d sound' % i,
                    '\n'.join(bad))
    libvhdi_check(layers[-1], models[-1], tmp,
                  'writer chain: the tip read by libvhdi')
    r.equal(harness.changed_files(before), [], 'writer chain unchanged')


def section_chunks(tmp):
    rng = random.Random(11)
    folder = os.path.join(tmp, 'chunks')
    c = g.Chain(folder, seed=11)
    size = 4 * GiB + 4 * MiB
    border = 4 * GiB
    c.base('big.vhdx', size, block_size=8 * MiB,
           writes=g.random_writes(rng, size, 10, lo=border - 8 * MiB,
                                  block_size=8 * MiB))
    base = c.write(sha_limit=0)[0]
    keep = os.path.join(folder, 'big.avhdx')
    m = base.image.copy()
    with harness.Nbdkit(base.path, 'overlay=' + keep, readonly=False) as srv:
        h = unaligned(srv.connect())
        exercise(h, m, rng, 60, lo=border - 6 * MiB, hi=border + 4 * MiB)
        exercise(h, m, rng, 20, hi=4 * MiB)
        h.shutdown()
    ranges = [(0, 4 * MiB), (border - 8 * MiB, 12 * MiB)]
    info = g.read_file(keep)
    r.equal(sorted(c for c, (st, _, _) in info.sbs.items()
                   if st == g.SB_PRESENT), [0, 1],
            'chunks: a sector-bitmap block for each chunk written')
    bad = g.structure_problems(keep, parent=base.path)
    r.check(not bad, 'chunks: sound', '\n'.join(bad[:10]))
    got = g.read_disk([keep, base.path], ranges)
    r.check(all(got.read(o, n) == m.read(o, n) for o, n in ranges),
            'chunks: the disk read by vhdxgen')
    serve_check(keep, m, 'chunks: served alone', ranges)


def main():
    harness.require_plugin()
    harness.require_tools('vhdimount', 'fusermount')
    import nbd  # noqa: F401
    with harness.tempdir() as tmp:
        for sector in (512, 4096):
            r.run(section_kept, tmp, sector, what='kept %d' % sector)
        r.run(section_foreign, tmp)
        r.run(section_writer_chain, tmp)
        r.run(section_chunks, tmp)


if __name__ == '__main__':
    r.main(main)
