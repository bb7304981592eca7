#!/usr/bin/python3
"""Malformed VHDX files and chains make nbdkit refuse to start, cleanly.

Table-driven.  Each case builds a small valid chain with vhdxgen (a
dynamic base and a differencing child, or the base alone), damages one
thing with vhdxgen's helpers, and expects nbdkit with the plugin to exit
with status 1 (not a signal, not a hang) and print exactly ONE error line
that names the damaged file and holds the case's keyword (the field).
Cases that must still open (one header with a bad CRC, the current one or
the other) open and read right instead.  Every fixture is also served
undamaged and must read right, and where an override exists
(ignore-checksums, ignore-id-mismatch) the damaged build opens with it.
"""

import os
import random
import struct

import harness
import vhdxgen as g
from vhdxgen import MiB

r = harness.Reporter('test-vhdx-malformed')
SIZE = 12 * MiB


def build(folder, target, seed=1, **base_opts):
    """base.vhdx (dynamic, 4 MiB blocks, data in every block) and, unless
    target is 'base', child.avhdx (2 MiB blocks, PARTIALLY_PRESENT and
    FULLY_PRESENT blocks).  Returns (tip point, victim point)."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    c.base('base.vhdx', SIZE, block_size=4 * MiB,
           writes=[(b * 4 * MiB + 4096, rng.randbytes(8192))
                   for b in range(3)] +
           g.random_writes(rng, SIZE, 20, block_size=4 * MiB), **base_opts)
    if target != 'base':
        c.child('child.avhdx', writes=g.random_writes(rng, SIZE, 30) +
                [(6 * MiB, rng.randbytes(2 * MiB))])
    points = c.write()
    victim = points[0] if target in ('base', 'parent') else points[1]
    return points[-1], victim


# ---------------------------------------------------------------- damages

def allocated_block(v):
    st = v.vhdx.file_layout['states']
    return min(b for b, s in st.items()
               if s in (g.FULLY_PRESENT, g.PARTIALLY_PRESENT))


def bat_past_eof(v):
    b = allocated_block(v)
    e = g.get_bat_entry(v.path, g.bat_index(b, v.vhdx.ratio))
    past = (os.path.getsize(v.path) // MiB + 8) << 20
    g.set_bat_entry(v.path, g.bat_index(b, v.vhdx.ratio),
                    past | (e & 7))


def bat_overlap(v):
    blocks = sorted(v.vhdx.file_layout['blocks'].items(), key=lambda x: x[1])
    (b1, off1), (b2, _) = blocks[0], blocks[1]
    e = g.get_bat_entry(v.path, g.bat_index(b2, v.vhdx.ratio))
    g.set_bat_entry(v.path, g.bat_index(b2, v.vhdx.ratio),
                    (off1 // MiB) << 20 | (e & 7))


def bat_into_metadata(v):
    b = allocated_block(v)
    e = g.get_bat_entry(v.path, g.bat_index(b, v.vhdx.ratio))
    md = v.vhdx.file_layout['md'][0]
    g.set_bat_entry(v.path, g.bat_index(b, v.vhdx.ratio),
                    (md // MiB) << 20 | (e & 7))


def region_overlap(v):
    # The metadata region (at 2 MiB) grows over the BAT (at 3 MiB); both
    # still parse.
    md_off, _ = v.vhdx.file_layout['md']
    bat_off, _ = v.vhdx.file_layout['bat']
    assert bat_off == md_off + MiB
    g.patch_region(v.path, g.GUID_METADATA, length=2 * MiB)


def region_unknown_required(v):
    g.patch_region(v.path, g.guid_raw('11111111-2222-3333-4444-555555555555'),
                   offset=v.vhdx.file_layout['size'], length=MiB,
                   required=1, add=True)


def both_headers(v):
    g.break_header_crc(v.path, 1)
    g.break_header_crc(v.path, 2)


def fp(block_size, flags=None):
    def damage(v):
        fl = (g.FP_HAS_PARENT if v.vhdx.differencing else 0) \
            if flags is None else flags
        g.patch_item(v.path, g.GUID_FILE_PARAMETERS,
                     struct.pack('<II', block_size, fl))
    return damage


def logical_sector(n):
    def damage(v):
        g.patch_item(v.path, g.GUID_LOGICAL_SECTOR, struct.pack('<I', n))
    return damage


def unknown_required_item(v):
    g.add_metadata_entry(v.path,
                         g.guid_raw('a1b2c3d4-0000-4000-8000-0123456789ab'),
                         g.MD_IS_REQUIRED)


def unknown_required_user_item(v):
    g.add_metadata_entry(v.path,
                         g.guid_raw('a1b2c3d4-0000-4000-8000-0123456789ac'),
                         g.MD_IS_REQUIRED | g.MD_IS_USER)


def corrupt_log(v):
    g.corrupt_log(v.path, v.vhdx.file_layout)


def linkage_mismatch(v):
    loc = dict(g.read_metadata(v.path)['locator'])
    other = g.linkage_text(g.random_guid(random.Random(99)))
    assert len(other) == len(loc['parent_linkage'])
    g.patch_locator_value(v.path, 'parent_linkage', other)


def locator_type(v):
    md = g.read_metadata(v.path)
    for gid, off, length, flags in md['entries']:
        if gid == g.GUID_PARENT_LOCATOR:
            with open(v.path, 'r+b') as f:
                f.seek(md['offset'] + off)
                f.write(g.guid_raw('00000000-1111-2222-3333-444444444444'))


def partial_without_sb(v):
    ratio = v.vhdx.ratio
    g.set_bat_entry(v.path, g.sb_index(0, ratio), 0)


def version_2(v):
    cur = v.vhdx.file_layout['current_header']
    g.patch_header(v.path, cur, version=2)


# name: (target, damage, keyword, override that makes it open, base opts)
CASES = {
    'bad CRC in both headers': ('base', both_headers, 'header',
                                'ignore-checksums=true', {}),
    'bad CRC in both headers of the parent': ('parent', both_headers,
                                              'header',
                                              'ignore-checksums=true', {}),
    'header version 2': ('base', version_2, 'version', None, {}),
    'region overlap': ('base', region_overlap, 'overlap', None, {}),
    'unknown required region': ('child', region_unknown_required,
                                'required', None, {}),
    'BAT entry past EOF': ('base', bat_past_eof, 'BAT', None, {}),
    'BAT entry past EOF in a child': ('child', bat_past_eof, 'BAT', None,
                                      {}),
    'BAT entries overlap': ('child', bat_overlap, 'BAT', None, {}),
    'BAT entry into the metadata': ('base', bat_into_metadata, 'BAT', None,
                                    {}),
    'block size not a power of two (chunk ratio)': (
        'base', fp(3 * MiB), 'BlockSize', None, {}),
    'block size 512 MiB': ('base', fp(512 * MiB), 'BlockSize', None, {}),
    'block size 512 KiB': ('child', fp(512 * 1024), 'BlockSize', None, {}),
    'logical sector size 1024 (chunk ratio)': (
        'base', logical_sector(1024), 'Logical Sector Size', None, {}),
    'unknown required metadata item': ('base', unknown_required_item,
                                       'required', None, {}),
    'unknown required user item': ('child', unknown_required_user_item,
                                   'required', None, {}),
    'corrupt log entry': ('base', corrupt_log, 'log', None,
                          {'dirty_log': True, 'log_entries': 1}),
    'corrupt log entry in a parent': ('parent', corrupt_log, 'log', None,
                                      {'dirty_log': True,
                                       'log_entries': 1}),
    'linkage mismatch': ('child', linkage_mismatch, 'identity',
                         'ignore-id-mismatch=true', {}),
    'locator type not VHDX': ('child', locator_type, 'LocatorType', None,
                              {}),
    'PARTIALLY_PRESENT without a sector bitmap': (
        'child', partial_without_sb, 'sector bitmap', None, {}),
}

# Damage that must not stop the file from opening.
def current_crc(v):
    g.break_header_crc(v.path, v.vhdx.file_layout['current_header'])


def other_crc(v):
    g.break_header_crc(v.path, 3 - v.vhdx.file_layout['current_header'])


STILL_OPENS = {
    'bad CRC in the current header': ('child', current_crc),
    'bad CRC in the other header': ('child', other_crc),
    'bad CRC in the parent\'s current header': ('parent', current_crc),
    'bad CRC in the first region table copy': (
        'base', lambda v: g.patch_region(v.path, g.GUID_BAT, fix_crc=False,
                                         copies=(1,), offset=5 * MiB)),
}


def served_sha(path, tmp, *params):
    with harness.Nbdkit(path, *params) as srv:
        return srv.copy_sha256(tmp)[0]


def check_case(tmp, n, name, target, damage, keyword, override, opts):
    folder = os.path.join(tmp, 'case%02d' % n)  # no keyword in the path
    tip, victim = build(folder, target, **opts)
    r.equal(served_sha(tip.path, tmp), tip.sha256, name + ': undamaged '
            'build reads right')
    damage(victim)
    rc, err = harness.start_must_fail(tip.path)
    lines = harness.error_lines(err)
    r.equal(rc, 1, name + ': nbdkit exits with status 1')
    ok = len(lines) == 1 and victim.name in lines[0] and \
        keyword.lower() in lines[0].replace(tmp, '').lower()
    r.check(ok, '%s: one error line naming %s and "%s"' % (
        name, victim.name, keyword), err.strip())
    if override:
        r.equal(served_sha(tip.path, tmp, override), tip.sha256,
                '%s: opens and reads right with %s' % (name, override))


def check_still_opens(tmp, n, name, target, damage):
    folder = os.path.join(tmp, 'opens%02d' % n)
    tip, victim = build(folder, target)
    damage(victim)
    r.equal(served_sha(tip.path, tmp), tip.sha256, name + ': opens and '
            'reads right')


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy')
    with harness.tempdir() as tmp:
        for n, (name, case) in enumerate(CASES.items()):
            r.run(check_case, tmp, n, name, *case, what=name)
        for n, (name, (target, damage)) in enumerate(STILL_OPENS.items()):
            r.run(check_still_opens, tmp, n, name, target, damage, what=name)


if __name__ == '__main__':
    r.main(main)
