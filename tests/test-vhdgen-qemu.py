#!/usr/bin/python3
"""The test generator is right: its VHDs read the same in independent readers.

- Fixed and dynamic VHDs from vhdgen, read by qemu-img (block/vpc.c), equal
  vhdgen's expected image: in full where QEMU sizes by current size, and up
  to the CHS size where it sizes by geometry (FORMATS.md 2.2).
- Differencing chains of depth 1..4 from vhdgen, read by libvhdi's
  vhdimount, equal the expected image at every point.  Writes are 4 KiB
  aligned (libvhdi misreads partly set bitmap bytes, FORMATS.md pitfall 4)
  plus single-sector writes at the last sector of a bitmap byte, which
  libvhdi reads right and which pin the MSB-first bit order.
- Spec vectors for the CHS algorithm and the bitmap bit order.

No plugin involved: this is what lets the other tests trust vhdgen.
"""

import os
import random
import struct

import harness
import vhdgen as g
from vhdgen import KiB, MiB

r = harness.Reporter('test-vhdgen-qemu')


def check_spec_vectors():
    # FORMATS.md 2.2 and pitfall 10: (bytes, CHS bytes) pairs.
    r.equal(g.chs_geometry(8192 * 512), (120, 4, 17), 'CHS of 8192 sectors')
    for size, chs in ((10485760, 10479616), (4194304, 4177920),
                      (536870912, 536739840)):
        r.equal(g.chs_size(g.chs_geometry(size)), chs, 'CHS size of %d' % size)
    r.equal(g.chs_geometry(536870912), (1040, 16, 63),
            'CHS of 512 MiB (libvhdi fragment file_footer.1)')


def check_footer_against_sample():
    # A real footer (libvhdi fragment, made by Virtual PC): our checksum
    # formula must reproduce its stored checksum.
    raw = open(harness.sample('libvhdi-fragments', 'file_footer.1'),
               'rb').read()
    stored = struct.unpack_from('>I', raw, g.FOOTER_CHECKSUM_AT)[0]
    r.equal(g.vhd_checksum(raw[:512], g.FOOTER_CHECKSUM_AT), stored,
            'checksum formula on a real footer')
    raw = open(harness.sample('libvhdi-fragments', 'dynamic_disk_header.1'),
               'rb').read()
    stored = struct.unpack_from('>I', raw, g.HEADER_CHECKSUM_AT)[0]
    r.equal(g.vhd_checksum(raw[:1024], g.HEADER_CHECKSUM_AT), stored,
            'checksum formula on a real dynamic header')


def check_bitmap_order(tmp):
    # Sector s of a block is bit 0x80 >> (s & 7) of byte s >> 3.
    v = g.VhdFile('differencing', 4 * MiB, rng=random.Random(1),
                  parent_uid=bytes(16))
    for s in (1, 9, 15, 4096 + 7):
        v.write(s * 512, b'x' * 512)
    path = v.save(os.path.join(tmp, 'bits.vhd'))
    bat = g.read_bat(path)
    raw = open(path, 'rb').read()
    b0 = raw[bat[0] * 512:bat[0] * 512 + 2]
    b1 = raw[bat[1] * 512:bat[1] * 512 + 1]
    r.equal(b0, bytes([0x40, 0x41]), 'bitmap of sectors 1, 9, 15 (MSB-first)')
    r.equal(b1, bytes([0x01]), 'bitmap of sector 7 of block 1')
    # Fields round-trip through the reader helpers.
    f = g.read_footer(path)
    r.check(f['cookie'] == b'conectix' and f['disk_type'] == 4
            and f['features'] == 2 and f['version'] == 0x10000,
            'footer fields of a differencing file')
    r.equal(g.read_footer(path, 'copy'), f, 'footer copy at 0 equals trailer')


# Block 0 sectors present in dfvfs/fat-differential.vhd (FORMATS.md 6).
FAT_DIFF_PRESENT = [134, 143] + list(range(152, 160)) + \
    [184, 185, 188] + list(range(190, 193)) + [194, 196]


def check_windows_sample_layout():
    """Rebuild the real Windows 10 differencing file from its documented
    fields: footer, header, locators, BAT and bitmap must come out byte for
    byte as Windows wrote them."""
    path = harness.sample('dfvfs', 'fat-differential.vhd')
    raw = open(path, 'rb').read()
    foot = raw[-512:]
    name = 'C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd'
    v = g.VhdFile(
        'differencing', 4194304, creator_app=b'win ',
        creator_version=0x000A0000,
        timestamp=struct.unpack_from('>I', foot, 24)[0],   # not documented
        uid=foot[68:84],                                    # not documented
        parent_uid=bytes.fromhex('5FA21A55F394AA4D99581951A67D5540'),
        parent_timestamp=0, parent_name=name, bat_offset=8192,
        locators=[g.w2ku(name, slot=0, space=4096, offset=4096),
                  g.w2ru('.\\fat-parent.vhd', slot=1, space=65536,
                         offset=12288)])
    for s in FAT_DIFF_PRESENT:
        at = 81920 + s * 512
        v.write(s * 512, raw[at:at + 512])
    built = v.build()
    r.equal(v.file_layout['blocks'], {0: 159 * 512},
            'Windows layout puts block 0 bitmap at sector 159')
    for what, a, n in (('footer copy', 0, 512), ('dynamic header', 512, 1024),
                       ('W2ku payload', 4096, 4096),
                       ('W2ru payload', 12288, 65536), ('BAT', 8192, 512),
                       ('bitmap', 159 * 512, 512)):
        r.check(built[a:a + n] == raw[a:a + n],
                '%s as Windows wrote it' % what)
    r.check(built[-512:] == foot, 'footer as Windows wrote it')


# -------------------------------------------------------------- qemu-img

QEMU_CASES = [
    # kind, size, creator, options
    ('fixed', 10 * MiB, b'win ', {}),
    ('fixed', 10 * MiB, b'vgen', {}),
    ('fixed', 5 * MiB + 3 * 512, b'qem2', {}),
    ('dynamic', 10 * MiB, b'win ', {}),
    ('dynamic', 10 * MiB, b'vgen', {'block_size': 512 * KiB}),
    ('dynamic', 12 * MiB + 7 * 512, b'qem2',
     {'block_size': 1 * MiB, 'layout': 'packed', 'block_order': 'reverse'}),
    ('dynamic', 9 * MiB, b'vpc ',
     {'block_size': 64 * KiB, 'dyn_bitmap': 'ones'}),
    ('dynamic', 20 * MiB, b'd2v ',
     {'block_size': 4 * MiB, 'bat_first': True,
      'locators': [g.w2ku('C:\\x\\nothing.vhd', slot=5)]}),
]


def check_qemu_case(tmp, n, kind, size, creator, opts):
    rng = random.Random(100 + n)
    v = g.VhdFile(kind, size, rng=rng, creator_app=creator, **opts)
    v.apply(g.random_writes(rng, size, 60, block_size=v.block_size,
                            max_sectors=300))
    name = 'q%d-%s.vhd' % (n, kind)
    path = v.save(os.path.join(tmp, name))
    expected = bytes(v.data)
    label = '%s %s %r %s' % (name, kind, creator, opts or '')

    out = harness.qemu_raw(path, os.path.join(tmp, 'q.raw'))
    got = open(out, 'rb').read()
    by_chs = creator in (b'vgen', b'vpc ', b'qemu')
    want = expected[:g.chs_size(v.geometry)] if by_chs else expected
    r.equal(len(got), len(want), 'qemu size of %s' % label)
    r.check(got == want, 'qemu data of %s' % label)

    # Whatever the creator, QEMU told to use the current size reads it all.
    out = harness.qemu_raw(path, os.path.join(tmp, 'q.raw'),
                           size_calc='current_size')
    r.check(open(out, 'rb').read() == expected,
            'qemu (current size) data of %s' % label)
    os.unlink(out)


# -------------------------------------------------------------- vhdimount

def s7_writes(rng, size, count):
    """One-sector writes at sectors 8k+7: bitmap bytes 0x01, which libvhdi
    reads right; a writer with the wrong bit order would set 0x80 and
    libvhdi would then take sectors 8k..8k+6 from the child's junk."""
    return [(rng.randrange(size // 4096) * 4096 + 7 * 512, rng.randbytes(512))
            for _ in range(count)]


def aligned(rng, size, count, block_size):
    return g.random_writes(rng, size, count, block_size=block_size,
                           aligned4k=True, max_sectors=200) + \
        s7_writes(rng, size, count // 3)


CHAIN_CASES = [
    # depth (children), base fixed?, size, block size, child options
    (1, False, 8 * MiB, 2 * MiB, {}),
    (2, True, 6 * MiB, 2 * MiB, {'layout': 'packed'}),
    (3, False, 10 * MiB, 512 * KiB, {'header_name': 'base',
                                     'space_unit': 'sectors'}),
    (4, False, 16 * MiB, 1 * MiB, {'block_order': 'reverse'}),
    (4, True, 4 * MiB + 512 * 9, 2 * MiB, {'bat_first': True}),
]


def check_chain_case(tmp, n, depth, fixed, size, block_size, copts):
    rng = random.Random(200 + n)
    folder = os.path.join(tmp, 'chain%d' % n)
    c = g.Chain(folder, seed=300 + n)
    base_writes = g.fill_writes(rng, size) if fixed else \
        aligned(rng, size, 40, block_size)
    c.base('base.vhd', size, fixed=fixed, writes=base_writes,
           block_size=block_size)
    for i in range(1, depth + 1):
        extra = {}
        if i == 2:   # odd locators on one layer; libvhdi must not mind
            extra['locators'] = [
                g.wi2r('.\\snap1.avhd', slot=3), g.wi2k('C:\\v\\snap1.avhd'),
                g.macx('file://localhost/v/snap1.avhd', slot=7)]
        c.child('snap%d.avhd' % i, writes=aligned(rng, size, 40, block_size),
                **dict(copts, **extra))
    points = c.write()
    label = 'chain %d (depth %d, %s base, %s)' % (
        n, depth, 'fixed' if fixed else 'dynamic', copts or 'defaults')
    with harness.vhdimount(points[-1].path, os.path.join(tmp, 'mnt')) as files:
        r.equal(len(files), len(points), 'vhdimount layers of %s' % label)
        for p, f in zip(points, files):
            r.equal(harness.sha256_file(f), p.sha256,
                    'vhdimount %s of %s' % (p.name, label))


def main():
    harness.require_tools('qemu-img', 'vhdimount', 'fusermount')
    check_spec_vectors()
    r.run(check_footer_against_sample)
    r.run(check_windows_sample_layout)
    with harness.tempdir() as tmp:
        r.run(check_bitmap_order, tmp)
        for n, case in enumerate(QEMU_CASES):
            r.run(check_qemu_case, tmp, n, *case, what='qemu case %d' % n)
        for n, case in enumerate(CHAIN_CASES):
            r.run(check_chain_case, tmp, n, *case, what='chain case %d' % n)


if __name__ == '__main__':
    r.main(main)
