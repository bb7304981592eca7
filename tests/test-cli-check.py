#!/usr/bin/python3
"""vhdchain check: exit 0 on sound chains, 1 listing every problem of a
damaged one, 2 when TIP cannot be opened.

Each case copies a generated three-layer chain, damages it with vhdgen's
helpers and checks the exit status and that the expected error or warning
line names the damaged file and field: checksums (footer, both copies or
the trailer only, dynamic header), BAT entries past the end or aliasing
each other, a missing parent (the layers above are still checked), an
identity mismatch, two damaged files at once (both listed), an empty
sector bitmap, orphan space before the footer, the saved-state flag; the
VHDX samples: a pending log (its documented LogGuid), one header damaged
(a warning), both (an error).
--ignore-checksums and --ignore-id-mismatch turn those errors into
warnings.  A missing file and a folder exit 2; a file that is no image is
an error.
"""

import os
import random
import shutil

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-check')


def make_chain(folder, seed=31, **snap1):
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    # 8 MiB, written in the first 6: block 3 is free in every layer.
    c.base('base.vhd', 8 * MiB, writes=g.random_writes(rng, 6 * MiB, 20))
    c.child('snap1.avhd', writes=g.random_writes(rng, 6 * MiB, 20), **snap1)
    c.child('snap2.avhd', writes=g.random_writes(rng, 6 * MiB, 20))
    return c.write(expected=False)


def lines(out, kind):
    return [l for l in out.splitlines() if l.startswith(kind + ': ')]


def expect(points, args, status, errors, warnings, what):
    """errors / warnings: list of (file name, text) each line must match."""
    tip = points[-1] if isinstance(points[-1], str) else points[-1].path
    rc, out, err = cli.run('check', *args, tip)
    r.equal(rc, status, '%s: exit status' % what)
    for kind, want in (('error', errors), ('warning', warnings)):
        got = lines(out, kind)
        for name, text in want:
            r.check(any(name in l and text in l for l in got),
                    '%s: %s line for %s: %s' % (what, kind, name, text), out)
        r.equal(len(got), len(want), '%s: number of %ss' % (what, kind))
    r.check(out.splitlines()[-1].endswith('%d error%s, %d warning%s' % (
        len(errors), '' if len(errors) == 1 else 's', len(warnings),
        '' if len(warnings) == 1 else 's')), '%s: summary line' % what, out)
    r.equal(err, '', '%s: nothing on stderr' % what)


def fresh(tmp, name, **snap1):
    folder = os.path.join(tmp, name)
    return make_chain(folder, **snap1)


def insert_before_footer(path, n):
    with open(path, 'rb') as f:
        raw = f.read()
    with open(path, 'wb') as f:
        f.write(raw[:-512] + bytes(n) + raw[-512:])


def vhdx_cases(tmp):
    log = harness.gunzip_to(harness.sample(
        'discutils', 'vhdx-log-replay.vhdx.gz'), tmp)
    expect([log], [], 0, [], [('vhdx-log-replay.vhdx', 'log: updates not '
                              'yet applied to the file (LogGuid e6fc743c-'
                              '81ed-4fe8-bf54-698ed57ba0b8)')],
           'VHDX with a log to replay')
    swap = harness.gunzip_to(harness.sample('discutils', 'swap.vhdx.gz'),
                             tmp)
    expect([swap], [], 0, [], [], 'sound VHDX')
    with open(swap, 'r+b') as f:                  # header 1's CRC fails
        f.seek(64 * 1024 + 100)
        f.write(b'XXXX')
    expect([swap], [], 0, [], [('swap.vhdx', 'header 1: damaged; header 2 '
                                'stands in')], 'VHDX header 1 damaged')
    with open(swap, 'r+b') as f:
        f.seek(128 * 1024 + 100)
        f.write(b'XXXX')
    expect([swap], [], 1, [('swap.vhdx', 'header')], [],
           'both VHDX headers damaged')


def body():
    cli.require_tool()
    with harness.tempdir() as tmp:
        p = fresh(tmp, 'good')
        expect(p, [], 0, [], [], 'sound chain')

        p = fresh(tmp, 'footer')
        g.break_checksum(p[1].path, 'footer')
        expect(p, [], 1, [('snap1.avhd', 'footer: checksum mismatch')], [],
               'footer checksum (both copies)')
        expect(p, ['--ignore-checksums'], 0, [],
               [('snap1.avhd', 'footer: checksum mismatch')],
               'footer checksum with --ignore-checksums')

        p = fresh(tmp, 'trailer')
        g.break_checksum(p[1].path, 'footer', where='trailer')
        expect(p, [], 0, [], [('snap1.avhd', 'copy at offset 0 stands in')],
               'trailing footer only')

        p = fresh(tmp, 'header')
        g.break_checksum(p[2].path, 'header')
        expect(p, [], 1,
               [('snap2.avhd', 'dynamic header: checksum mismatch')], [],
               'header checksum')

        p = fresh(tmp, 'bat')
        g.set_bat_entry(p[1].path, 1, 0x7FFFFFF)
        expect(p, [], 1, [('snap1.avhd', 'BAT entry 1')], [],
               'BAT entry past the end')

        p = fresh(tmp, 'alias')
        g.set_bat_entry(p[1].path, 1, g.read_bat(p[1].path)[0])
        expect(p, [], 1, [('snap1.avhd', 'overlaps')], [],
               'two BAT entries at one block')

        p = fresh(tmp, 'missing')
        os.unlink(p[0].path)
        g.break_checksum(p[2].path, 'header')
        expect(p, [], 1, [('snap1.avhd', 'parent not found'),
                          ('snap2.avhd', 'dynamic header')], [],
               'missing parent and a damaged tip')

        p = fresh(tmp, 'id')
        g.patch_header(p[1].path, parent_unique_id=b'\x11' * 16)
        expect(p, [], 1, [('snap1.avhd', 'the child expects ' + '11' * 16)],
               [], 'identity mismatch')
        expect(p, ['--ignore-id-mismatch'], 0, [],
               [('snap1.avhd', 'the child expects')],
               'identity mismatch with --ignore-id-mismatch')

        p = fresh(tmp, 'two')
        g.break_checksum(p[0].path, 'footer')
        g.break_checksum(p[2].path, 'header')
        expect(p, [], 1, [('base.vhd', 'footer: checksum mismatch'),
                          ('snap2.avhd', 'dynamic header')], [],
               'two damaged files')

        p = fresh(tmp, 'empty', empty_blocks=[3])
        expect(p, [], 0, [], [('snap1.avhd', 'empty sector bitmap')],
               'allocated block with an empty bitmap')

        p = fresh(tmp, 'orphan')
        insert_before_footer(p[2].path, 3 * MiB)
        expect(p, [], 0, [], [('snap2.avhd', 'belong to no block')],
               'orphan space before the footer')

        p = fresh(tmp, 'copy')
        g.patch_footer(p[2].path, where='copy', timestamp=1)
        expect(p, [], 0, [], [('snap2.avhd', 'differs from the trailing')],
               'footer copy differs from the trailer')

        p = fresh(tmp, 'saved')
        g.patch_footer(p[0].path, saved_state=1)
        expect(p, [], 0, [], [('base.vhd', 'saved-state flag')],
               'saved-state flag')

        vhdx_cases(tmp)

        cli.fails(r, ['check', os.path.join(tmp, 'nope.vhd')], 2,
                  'No such file', 'missing file')
        cli.fails(r, ['check', tmp], 2, 'not a regular file', 'a folder')
        junk = os.path.join(tmp, 'junk.vhd')
        with open(junk, 'wb') as f:
            f.write(os.urandom(8192))
        rc, out, err = cli.run('check', junk)
        r.equal(rc, 1, 'not an image: exit 1')
        r.check('not a VHD or VHDX image' in out, 'not an image: said', out)


r.main(body)
