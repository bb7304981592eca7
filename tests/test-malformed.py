#!/usr/bin/python3
"""Malformed VHD files and chains make nbdkit refuse to start, cleanly.

Table-driven.  Each case builds a valid file or chain with vhdgen, damages
one thing, and expects nbdkit with the plugin to exit with status 1 (not a
signal, not a hang) and print exactly one error line that names the damaged
file's basename and holds the case's keyword.  Each case also proves it can
tell: the undamaged build opens and reads right, and where an override
exists (ignore-checksums, ignore-id-mismatch, confine=false) the damaged
build opens with it and reads right.
"""

import os
import random
import shutil

import harness
import vhdgen as g
from vhdgen import KiB, MiB

# The keyword the single error line must contain (case-insensitive), per
# case.  Align these with the plugin's messages here, in one place.
KEYWORDS = {
    'footer cookie': 'cookie',
    'header cookie': 'cookie',
    'footer checksum': 'checksum',
    'header checksum': 'checksum',
    'parent header checksum': 'checksum',
    'current size 0': 'current size',
    'current size not sector multiple': 'current size',
    'current size > 2040 GiB': 'current size',
    'disk type 5': 'type',
    'BAT entry past EOF': 'BAT',
    'BAT entry into the headers': 'BAT',
    'BAT entry into the BAT': 'BAT',
    'two BAT entries overlap': 'BAT',
    'parent BAT entries overlap': 'BAT',
    'block size not a power of two': 'block size',
    'block size 0': 'block size',
    'max table entries too small': 'entries',
    'truncated in a block': 'BAT',
    'truncated in the header': 'header',
    'missing parent': 'parent',
    'parent id mismatch': 'parent',
    'parent cycle': 'cycle',
    'locator escapes the folder': 'parent',
    'symlink escapes the folder': 'parent',
    'MacX absolute path outside': 'parent',
    'chain deeper than 256': 'deep',
}

r = harness.Reporter('test-malformed')
SIZE, BS = 4 * MiB, 1 * MiB


# ---------------------------------------------------------------- fixtures

def small_chain(folder, seed=1, depth=1):
    """base.vhd (dynamic, 4 MiB, 1 MiB blocks) and snap1..depth.avhd, every
    block of each layer allocated so BAT damage always has targets."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    every_block = [(b * BS + 3 * 512, rng.randbytes(1024))
                   for b in range(SIZE // BS)]
    c.base('base.vhd', SIZE, block_size=BS,
           writes=every_block + g.random_writes(rng, SIZE, 20, block_size=BS))
    for i in range(1, depth + 1):
        c.child('snap%d.avhd' % i,
                writes=g.random_writes(rng, SIZE, 20, block_size=BS) +
                [(b * BS + 9 * 512, rng.randbytes(512))
                 for b in range(SIZE // BS)])
    return c.write()


def damaging(target, damage):
    """A builder: small_chain, then damage() on one file of it.

    target 'base': serve base.vhd alone; 'child': serve snap1.avhd and
    damage it; 'parent': serve snap1.avhd and damage base.vhd."""
    def build(folder, damaged):
        points = small_chain(folder)
        if target == 'base':
            points = points[:1]
        victim = points[0] if target in ('base', 'parent') else points[1]
        if damaged:
            damage(victim.path, victim.vhd.file_layout)
        return points[-1].path, points[-1].sha256, victim.name
    return build


def blocks_by_file_order(layout):
    return sorted(layout['blocks'], key=layout['blocks'].get)


# ---------------------------------------------------------------- damages

def bat_past_eof(path, layout):
    b = blocks_by_file_order(layout)[0]
    g.set_bat_entry(path, b, (os.path.getsize(path) + 4 * MiB) // 512)


def bat_into_headers(path, layout):
    g.set_bat_entry(path, blocks_by_file_order(layout)[0], 1)


def bat_into_bat(path, layout):
    g.set_bat_entry(path, blocks_by_file_order(layout)[0],
                    layout['bat'] // 512)


def bat_overlap(path, layout):
    # The second block starts 8 sectors into the first one's data.
    first, second = blocks_by_file_order(layout)[:2]
    g.set_bat_entry(path, second, layout['blocks'][first] // 512 + 8)


def truncate_in_block(path, layout):
    last = blocks_by_file_order(layout)[-1]
    data_at = layout['blocks'][last] + layout['bitmap_size']
    g.truncate(path, data_at + 300 * KiB)


def mismatch_parent_id(path, layout):
    g.patch_header(path, parent_unique_id=b'\x42' * 16)


# ---------------------------------------------------------------- special

def build_missing_parent(folder, damaged):
    points = small_chain(folder)
    if damaged:
        os.unlink(points[0].path)
    return points[1].path, points[1].sha256, 'snap1.avhd'


def build_cycle(folder, damaged):
    """a.vhd -> b.vhd -> (base.vhd | a.vhd)."""
    os.makedirs(folder)
    rng = random.Random(7)
    base = g.VhdFile('dynamic', SIZE, rng=rng, block_size=BS)
    base.apply(g.random_writes(rng, SIZE, 10, block_size=BS))
    a = g.VhdFile('differencing', SIZE, rng=rng, block_size=BS,
                  parent_name='b.vhd', locators=[g.w2ru('.\\b.vhd')])
    b = g.VhdFile('differencing', SIZE, rng=rng, block_size=BS)
    a.parent_uid = b.uid
    a.apply(g.random_writes(rng, SIZE, 10, block_size=BS))
    b.apply(g.random_writes(rng, SIZE, 10, block_size=BS))
    up = a if damaged else base
    b.parent_uid, b.parent_name = up.uid, 'a.vhd' if damaged else 'base.vhd'
    b.locators = [g.w2ru('.\\' + b.parent_name)]
    for name, v in (('base.vhd', base), ('a.vhd', a), ('b.vhd', b)):
        v.save(os.path.join(folder, name))
    return os.path.join(folder, 'a.vhd'), \
        harness.sha256_bytes(g.expected_of([base, b, a])), 'a.vhd'


def moved_parent_chain(folder, child_dir, parent_dir, parent_ref, **child):
    """Chain x.vhd <- child.vhd made in child_dir, then x.vhd moved to
    parent_dir; parent_ref(path of x.vhd) gives the child's locators."""
    rng = random.Random(9)
    c = g.Chain(child_dir, seed=9)
    c.base('x.vhd', SIZE, block_size=BS,
           writes=g.random_writes(rng, SIZE, 10, block_size=BS))
    final = os.path.join(parent_dir, 'x.vhd')
    c.child('child.vhd', locators=parent_ref(final),
            writes=g.random_writes(rng, SIZE, 10, block_size=BS), **child)
    points = c.write()
    if parent_dir != child_dir:
        os.makedirs(parent_dir, exist_ok=True)
        os.rename(points[0].path, final)
    return points[1].path, points[1].sha256, 'child.vhd'


def build_locator_escape(folder, damaged):
    child_dir = os.path.join(folder, 'a', 'b')
    if not damaged:
        return moved_parent_chain(folder, child_dir, child_dir,
                                  lambda p: [g.w2ru('.\\x.vhd')])
    rel = '..\\..\\etc\\x.vhd'
    return moved_parent_chain(folder, child_dir, os.path.join(folder, 'etc'),
                              lambda p: [g.w2ru(rel)], parent_name=rel)


def build_symlink_escape(folder, damaged):
    child_dir = os.path.join(folder, 'vm')
    outside = os.path.join(folder, 'outside') if damaged else child_dir
    tip = moved_parent_chain(folder, child_dir, outside,
                             lambda p: [g.w2ru('.\\x.vhd')])
    if damaged:
        os.symlink(os.path.join('..', 'outside', 'x.vhd'),
                   os.path.join(child_dir, 'x.vhd'))
    return tip


def build_macx_outside(folder, damaged):
    child_dir = os.path.join(folder, 'vm')
    parent_dir = os.path.join(folder, 'outside') if damaged else child_dir
    return moved_parent_chain(folder, child_dir, parent_dir,
                              lambda p: [g.macx('file://' + p)],
                              parent_name='x.vhd')


def build_deep(folder, damaged):
    """300 layers (damaged) or 100 (fine), small and packed."""
    layers = 300 if damaged else 100
    rng = random.Random(3)
    c = g.Chain(folder, seed=3)
    c.base('l000.vhd', 1 * MiB, block_size=512 * KiB, layout='packed',
           writes=[(0, rng.randbytes(512))])
    for i in range(1, layers):
        # Mostly empty layers keep 300 files small.
        writes = [(512 * i, rng.randbytes(512))] if i % 40 == 0 else []
        c.child('l%03d.vhd' % i, layout='packed', writes=writes)
    points = c.write(expected=False if damaged else 'tip')
    return points[-1].path, points[-1].sha256, points[-1].name


# ---------------------------------------------------------------- table

def footer(**kw):
    return lambda path, layout: g.patch_footer(path, **kw)


def header(**kw):
    return lambda path, layout: g.patch_header(path, **kw)


def bad_checksum(what):
    return lambda path, layout: g.break_checksum(path, what)


IGNORE_SUMS = ('ignore-checksums=true',)

# name -> (builder, parameters with which the damaged build must open)
CASES = {
    'footer cookie': (damaging('base', footer(cookie=b'conectiX')), None),
    'header cookie': (damaging('child', header(cookie=b'cxsparsE')), None),
    'footer checksum': (damaging('base', bad_checksum('footer')),
                        IGNORE_SUMS),
    'header checksum': (damaging('child', bad_checksum('header')),
                        IGNORE_SUMS),
    'parent header checksum': (damaging('parent', bad_checksum('header')),
                               IGNORE_SUMS),
    'current size 0': (damaging('base', footer(current_size=0)), None),
    'current size not sector multiple':
        (damaging('base', footer(current_size=SIZE - 100)), None),
    'current size > 2040 GiB':
        (damaging('base', footer(current_size=2041 * g.GiB)), None),
    'disk type 5': (damaging('base', footer(disk_type=5)), None),
    'BAT entry past EOF': (damaging('child', bat_past_eof), None),
    'BAT entry into the headers': (damaging('base', bat_into_headers), None),
    'BAT entry into the BAT': (damaging('child', bat_into_bat), None),
    'two BAT entries overlap': (damaging('base', bat_overlap), None),
    'parent BAT entries overlap': (damaging('parent', bat_overlap), None),
    'block size not a power of two':
        (damaging('base', header(block_size=3 * MiB)), None),
    'block size 0': (damaging('child', header(block_size=0)), None),
    'max table entries too small':
        (damaging('base', header(max_table_entries=SIZE // BS - 1)), None),
    'truncated in a block': (damaging('child', truncate_in_block), None),
    'truncated in the header':
        (damaging('base', lambda p, l: g.truncate(p, 1000)), None),
    'missing parent': (build_missing_parent, None),
    'parent id mismatch': (damaging('child', mismatch_parent_id),
                           ('ignore-id-mismatch=true',)),
    'parent cycle': (build_cycle, None),
    'locator escapes the folder': (build_locator_escape, ('confine=false',)),
    'symlink escapes the folder': (build_symlink_escape, ('confine=false',)),
    'MacX absolute path outside': (build_macx_outside, ('confine=false',)),
    'chain deeper than 256': (build_deep, None),
}


# ---------------------------------------------------------------- checks

def reads_as(tip, sha, tmp, params, what):
    with harness.Nbdkit(tip, *params) as srv:
        got, _ = srv.copy_sha256(tmp)
    r.equal(got, sha, what)


def check_case(name, tmp):
    build, override = CASES[name]
    keyword = KEYWORDS[name]
    base = os.path.join(tmp, name.replace(' ', '_').replace('>', 'gt'))

    tip, sha, _ = build(base + '-ok', False)
    reads_as(tip, sha, tmp, (), '%s: undamaged build reads right' % name)

    tip, sha, victim = build(base + '-bad', True)
    files = [os.path.join(d, f) for d, _, fs in os.walk(base + '-bad')
             for f in fs if not os.path.islink(os.path.join(d, f))]
    before = harness.snapshot(files)
    rc, err = harness.start_must_fail(tip)
    r.equal(rc, 1, '%s: nbdkit exits with status 1' % name)
    lines = harness.error_lines(err)
    r.check(len(lines) == 1, '%s: exactly one error line' % name, err)
    line = lines[0] if lines else ''
    r.check(victim in line, '%s: error names %s' % (name, victim), err)
    r.check(keyword.lower() in line.lower(),
            '%s: error says %r' % (name, keyword), err)
    if override:
        reads_as(tip, sha, tmp, override,
                 '%s: opens with %s and reads right' % (name,
                                                        ' '.join(override)))
    r.equal(harness.changed_files(before), [], '%s: files unchanged' % name)
    shutil.rmtree(base + '-ok', ignore_errors=True)
    shutil.rmtree(base + '-bad', ignore_errors=True)


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy')
    missing = set(CASES) ^ set(KEYWORDS)
    r.check(not missing, 'every case has a keyword', missing)
    with harness.tempdir() as tmp:
        for name in CASES:
            r.run(check_case, name, tmp, what='case ' + name)


if __name__ == '__main__':
    r.main(main)
