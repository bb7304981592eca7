#!/usr/bin/python3
"""vhdchain convert: a flattened point equals qemu-img's reading of the
output, sparse, with a progress bar only on a terminal.

- A generated chain (dynamic base with unallocated and all-zero blocks,
  sector-granular layers) converted to raw equals vhdgen's expected image
  and leaves holes; to .vhd it is a dynamic VHD that passes check and
  vhdgen's structure reading, whose all-zero blocks are unallocated, and
  that qemu-img reads (`qemu-img convert -f vpc -O raw`) as the expected
  image.  The output's creator code is vhdchain's "vhdc", which QEMU sizes
  by CHS geometry (FORMATS.md 2.2), so the comparison is made with
  force_size_calc=current_size, and QEMU's default reading is checked to be
  the CHS-sized prefix of the same bytes.
- To .vhdx (from a VHD chain): a dynamic VHDX with 32 MiB blocks (the
  default) or 2 MiB ones (--block-size 2M) that passes check and vhdxgen's
  structure reading, whose allocated blocks are exactly those holding
  non-zero data, and that qemu-img (`qemu-img convert -f vhdx -O raw`) and
  the plugin read as the expected image.  (VHDX chains, 4096-byte
  sectors: test-cli-vhdx.py.)
- The DiscUtils VHDX sample with a dirty log converts to the SHA-256
  FORMATS.md documents.
- Progress: drawn on a terminal (a pty), not with --quiet, never when
  stderr is not a terminal.
- Refusals: existing OUT (unless --force), OUT being a chain file, a bad
  --format, a missing TIP.
"""

import os
import pty
import random
import subprocess

import harness
import vhdchain_cli as cli
import vhdgen as g
import vhdxgen
from vhdgen import MiB

r = harness.Reporter('test-cli-convert')


def build(folder):
    rng = random.Random(81)
    size = 12 * MiB
    c = g.Chain(folder, seed=81)
    c.base('base.vhd', size, writes=g.random_writes(rng, size, 30,
                                                    hi=6 * MiB) +
           [(8 * MiB, bytes(2 * MiB))])         # allocated, all zero
    c.child('snap1.avhd', writes=g.random_writes(rng, size, 40, hi=8 * MiB))
    c.child('snap2.avhd', writes=g.random_writes(rng, size, 40, hi=8 * MiB,
                                                 max_sectors=300))
    return c.write()


def to_raw(tip, want, tmp):
    out = os.path.join(tmp, 'out.raw')
    rc, stdout, err = cli.run('convert', tip, out)
    r.equal((rc, err), (0, ''), 'raw: exit 0, nothing on stderr when it is '
            'not a terminal')
    r.same(open(out, 'rb').read(), want, 'raw: the expected image')
    r.check(os.stat(out).st_blocks * 512 <= 9 * MiB,
            'raw: sparse (holes where nothing or zeros are)',
            os.stat(out).st_blocks * 512)
    return out


def to_vhd(tip, want, tmp):
    out = os.path.join(tmp, 'out.vhd')
    cli.ok('convert', '--flush', tip, out)
    r.equal(harness.vhd_structure_problems(out), [], 'vhd: sound structure')
    rc, text, err = cli.run('check', out)
    r.check(rc == 0 and ' 0 errors, 0 warnings' in text, 'vhd: check passes',
            text + err)
    f = g.read_footer(out)
    r.equal((f['disk_type'], f['creator_app'], f['current_size']),
            (g.DYNAMIC, b'vhdc', len(want)), 'vhd: dynamic, ours, exact size')
    bs = 2 * MiB
    nonzero = [b for b in range(len(want) // bs)
               if want[b * bs:(b + 1) * bs].count(0) != bs]
    bat = g.read_bat(out)
    r.equal([b for b, e in enumerate(bat) if e != g.UNALLOCATED], nonzero,
            'vhd: exactly the blocks holding non-zero data are allocated')
    q = harness.qemu_raw(out, os.path.join(tmp, 'q.raw'),
                         size_calc='current_size')
    r.same(open(q, 'rb').read(), want,
           'vhd: qemu-img reads the expected image')
    q = harness.qemu_raw(out, os.path.join(tmp, 'q2.raw'))
    chs = g.chs_size(g.chs_geometry(len(want)))
    r.same(open(q, 'rb').read(), want[:chs], 'vhd: qemu-img by default reads '
           'the CHS-sized prefix (creator "vhdc")')
    r.same(cli.read_export(out, tmp), want, 'vhd: the plugin reads it')


def to_vhdx(tip, want, tmp):
    for bs, opts in ((32 * MiB, []), (2 * MiB, ['--block-size', '2M'])):
        what = 'vhdx, %d MiB blocks' % (bs // MiB)
        out = os.path.join(tmp, 'out%d.vhdx' % (bs // MiB))
        cli.ok('convert', *opts, tip, out)
        r.equal(vhdxgen.structure_problems(out), [],
                '%s: sound structure' % what)
        rc, text, err = cli.run('check', out)
        r.check(rc == 0 and ' 0 errors, 0 warnings' in text,
                '%s: check passes' % what, text + err)
        info = vhdxgen.read_file(out)
        r.equal((info.differencing, info.block_size, info.sector,
                 info.size), (False, bs, 512, len(want)),
                '%s: dynamic, block size, exact size' % what)
        nonzero = [b for b in range(info.nr_blocks)
                   if want[b * bs:(b + 1) * bs].count(0) !=
                   len(want[b * bs:(b + 1) * bs])]
        r.equal([b for b, (st, _, _) in sorted(info.blocks.items())
                 if st != vhdxgen.NOT_PRESENT], nonzero,
                '%s: exactly the blocks holding non-zero data are allocated'
                % what)
        r.check(set(st for st, _, _ in info.blocks.values()) <=
                {vhdxgen.NOT_PRESENT, vhdxgen.FULLY_PRESENT},
                '%s: NOT_PRESENT or FULLY_PRESENT blocks only' % what)
        q = harness.qemu_raw(out, os.path.join(tmp, 'qx.raw'), fmt='vhdx')
        r.same(open(q, 'rb').read(), want, '%s: qemu-img reads the expected '
               'image' % what)
        r.same(cli.read_export(out, tmp), want, '%s: the plugin reads it'
               % what)


def progress(tip, tmp):
    def on_pty(*args):
        """Run with stderr on a pty, reading it as it comes (EIO: the
        child is gone and closed it)."""
        master, slave = pty.openpty()
        p = subprocess.Popen([cli.VHDCHAIN] + list(args),
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        data = b''
        try:
            while True:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        os.close(master)
        return p.wait(), data.decode(errors='replace')
    rc, seen = on_pty('convert', tip, os.path.join(tmp, 'p1.raw'))
    r.check(rc == 0 and 'convert [' in seen and '100%' in seen,
            'progress bar on a terminal', seen)
    rc, seen = on_pty('convert', '-q', tip, os.path.join(tmp, 'p2.raw'))
    r.check(rc == 0 and seen == '', 'no progress bar with --quiet', seen)


def body():
    cli.require_tool()
    harness.require_tools('qemu-img')
    with harness.tempdir() as tmp:
        points = build(os.path.join(tmp, 'c'))
        tip, want = points[-1].path, points[-1].expected()
        before = harness.snapshot([p.path for p in points])
        raw = to_raw(tip, want, tmp)
        to_vhd(tip, want, tmp)
        to_vhdx(tip, want, tmp)
        progress(tip, tmp)

        log = harness.gunzip_to(harness.sample(
            'discutils', 'vhdx-log-replay.vhdx.gz'), tmp)
        out = os.path.join(tmp, 'log.raw')
        cli.ok('convert', log, out)
        r.equal(harness.sha256_file(out), '3ba3b309425b7ff5e8e0199edceed952'
                '26250f880c53b24e8eae93865f3fad5e',
                'VHDX with a dirty log: the documented SHA-256')
        os.unlink(out)

        cli.fails(r, ['convert', tip, raw], 1, 'exists', 'existing OUT')
        cli.ok('convert', '--force', points[0].path, raw)
        r.same(open(raw, 'rb').read(), points[0].expected(),
               '--force overwrites OUT')
        cli.fails(r, ['convert', '--force', tip, points[0].path], 1,
                  'file of the chain', 'OUT is a chain file')
        cli.fails(r, ['convert', '--format', 'qcow2', tip,
                      os.path.join(tmp, 'x')], 2, 'qcow2', 'bad --format')
        cli.fails(r, ['convert', os.path.join(tmp, 'no.vhd'),
                      os.path.join(tmp, 'y.raw')], 2, 'no.vhd', 'missing TIP')
        r.check(not os.path.exists(os.path.join(tmp, 'y.raw')),
                'refused converts leave no file')
        r.equal(harness.changed_files(before), [], 'the chain is unchanged')


r.main(body)
