#!/usr/bin/python3
"""Make the fuzz targets' fixtures and seed corpora (tests/fuzz/README.md).

    tests/fuzz/mkcorpus.py WORK [VHDCHAIN]

writes WORK/fixtures/<target>/ (the fixed files each target copies into
its private folder at start-up) and WORK/seeds/<target>/ (seed inputs; the corpora the fuzzers grow live in
WORK/corpus/<target>/, see run.sh), from
the independent writers tests/vhdgen.py, tests/vhdxgen.py and
tests/hypervgen.py, the samples in ../shared/samples, and, when VHDCHAIN
(contrib/vhdchain) is given, children made by the plugin's own writer.
Everything is generated with fixed seeds, so the parents' identities the
seeds (and the committed regressions) link to are the same each time.

Image seeds are written in the image container of fuzz.h: a flags byte,
the file size, then (offset, length, bytes) segments for the non-zero
512-byte runs of the file.
"""

import gzip
import os
import random
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # tests/

import hypervgen  # noqa: E402
import vhdgen  # noqa: E402
import vhdxgen  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
F_IGNORE_CHECKSUMS, F_IGNORE_ID, F_WRITABLE = 1, 2, 4
SAMPLES = os.environ.get('SAMPLES') or os.path.join(
    HERE, '..', '..', '..', 'shared', 'samples')


# The writers fill the absent sectors of a child with a pattern (so a
# reader that shows them is caught); any content does there, and zeros
# keep seeds and fixtures small.
_FILLS = (vhdgen.ABSENT_FILL * 2, vhdxgen.ABSENT_FILL * 30)


def _junk(chunk):
    return b'read the parent!' in chunk and any(chunk in f for f in _FILLS)


def scrub(data):
    """data with every 512-byte chunk of absent-sector fill zeroed."""
    out = bytearray(data)
    for pos in range(0, len(out) - 511, 512):
        if _junk(bytes(out[pos:pos + 512])):
            out[pos:pos + 512] = bytes(512)
    return bytes(out)


def scrub_file(path):
    """Rewrite path scrubbed and sparse."""
    with open(path, 'rb') as f:
        data = scrub(f.read())
    with open(path, 'wb') as f:
        for pos in range(0, len(data), 65536):
            chunk = data[pos:pos + 65536]
            if any(chunk):
                f.seek(pos)
                f.write(chunk)
        f.truncate(len(data))


def scrub_tree(folder):
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p) and n.lower().endswith(
                    ('.vhd', '.avhd', '.vhdx', '.avhdx')):
                scrub_file(p)


def pack(data, flags=0, size=None):
    """The container of fuzz.h for the file content data."""
    size = len(data) if size is None else size
    data = scrub(data)
    out = bytearray(struct.pack('<BI', flags, size))
    pos, n = 0, len(data)
    while pos < n:
        if not any(data[pos:pos + 512]):
            pos += 512
            continue
        end = pos
        while end < n and any(data[end:end + 512]) and end - pos < 65024:
            end += 512
        end = min(end, n)
        out += struct.pack('<IH', pos, end - pos) + data[pos:end]
        pos = end
    return bytes(out)


def read(path):
    if path.endswith('.gz'):
        with gzip.open(path, 'rb') as f:
            return f.read()
    with open(path, 'rb') as f:
        return f.read()


class Seeds:
    def __init__(self, folder):
        self.folder = folder
        self.n = 0
        os.makedirs(folder, exist_ok=True)

    def add(self, name, blob):
        self.n += 1
        with open(os.path.join(self.folder, '%03d-%s' % (self.n, name)),
                  'wb') as f:
            f.write(blob)

    def image(self, name, path_or_bytes, flags=(0,)):
        data = path_or_bytes if isinstance(path_or_bytes, bytes) \
            else read(path_or_bytes)
        for fl in flags:
            self.add('%s-f%d' % (name, fl), pack(data, fl))


def writes(rng, size, n, sector=512):
    return [(rng.randrange(0, size // sector) * sector,
             rng.randbytes(sector * rng.randint(1, 3))) for _ in range(n)]


def clip(ws, size):
    return [(o, d[:size - o]) for o, d in ws if o < size]


# ---------------------------------------------------------------- VHD

def vhd_target(work, vhdchain):
    fx = os.path.join(work, 'fixtures', 'vhd')
    vhds = os.path.join(fx, 'vm', 'Virtual Hard Disks')
    snaps = os.path.join(fx, 'vm', 'Snapshots')
    outside = os.path.join(fx, 'outside')
    for d in (vhds, snaps, outside):
        os.makedirs(d, exist_ok=True)
    rng = random.Random(1)
    size, bs = 2 * MiB, 64 * KiB
    base = vhdgen.VhdFile('dynamic', size, rng=rng, block_size=bs,
                          timestamp=0)
    base.apply(clip(writes(rng, size, 12), size))
    mid = vhdgen.VhdFile('differencing', size, rng=rng, block_size=bs,
                         timestamp=0, parent_uid=base.uid,
                         parent_name='C:\\Virtual Hard Disks\\base.vhd',
                         locators=[vhdgen.w2ku('C:\\Virtual Hard Disks\\'
                                               'base.vhd', slot=0),
                                   vhdgen.w2ru('.\\base.vhd', slot=1)])
    mid.apply(clip(writes(rng, size, 12), size))
    for folder in (vhds, outside):
        base.save(os.path.join(folder, 'base.vhd'))
        mid.save(os.path.join(folder, 'mid.avhd'))
        scrub_tree(folder)
    os.symlink('../../outside/mid.avhd', os.path.join(snaps, 'escape.avhd'))

    s = Seeds(os.path.join(work, 'seeds', 'vhd'))
    tmp = os.path.join(work, 'tmp-vhd')
    os.makedirs(tmp, exist_ok=True)

    def child(name, parent, parent_name, locs, flags=(0, F_WRITABLE),
              **kw):
        kw.setdefault('block_size', bs)
        sz = kw.pop('size', size)
        v = vhdgen.VhdFile('differencing', sz, rng=rng, timestamp=0,
                           parent_uid=parent.uid, parent_name=parent_name,
                           locators=locs, **kw)
        v.apply(clip(writes(rng, sz, 10), sz))
        p = v.save(os.path.join(tmp, name))
        s.image(name, p, flags)
        return p

    rel = '..\\Virtual Hard Disks\\mid.avhd'
    absp = 'C:\\Virtual Hard Disks\\mid.avhd'
    child('child-of-mid', mid, absp,
          [vhdgen.w2ku(absp, slot=0), vhdgen.w2ru(rel, slot=1)])
    child('child-small-blocks', mid, 'mid.avhd',
          [vhdgen.w2ru(rel)], block_size=4 * KiB, layout='packed')
    child('child-larger', mid, absp, [vhdgen.w2ku(absp)], size=4 * MiB,
          bat_first=True)
    child('child-big-blocks', mid, absp, [vhdgen.w2ru(rel)],
          block_size=2 * MiB, block_order='reverse')
    child('child-of-base', base, 'C:\\Virtual Hard Disks\\base.vhd',
          [vhdgen.w2ru('..\\Virtual Hard Disks\\base.vhd')])
    child('child-ascii-slots', mid, 'x',
          [vhdgen.wi2r(rel, slot=5), vhdgen.wi2k(absp, slot=7)],
          space_unit='sectors')
    child('child-name-only', mid, 'mid.avhd', [])
    child('child-suffix', mid, 'D:\\Hyper-V\\vm\\Virtual Hard Disks\\'
          'mid.avhd', [vhdgen.w2ku('D:\\Hyper-V\\vm\\Virtual Hard Disks\\'
                                   'mid.avhd')])
    child('child-escape', mid, 'escape.avhd',
          [vhdgen.w2ru('.\\escape.avhd'),
           vhdgen.w2ru('..\\..\\outside\\mid.avhd')])
    child('child-empty-blocks', mid, absp, [vhdgen.w2ru(rel)],
          empty_blocks=[0, 3])

    dyn = vhdgen.VhdFile('dynamic', 1 * MiB, rng=rng, block_size=4 * KiB,
                         timestamp=0, dyn_bitmap='ones', layout='packed')
    dyn.apply(writes(rng, 1 * MiB, 20))
    s.image('dynamic-4k', dyn.save(os.path.join(tmp, 'd.vhd')),
            (0, F_WRITABLE))
    fixed = vhdgen.VhdFile('fixed', 256 * KiB, rng=rng, timestamp=0)
    fixed.apply(writes(rng, 256 * KiB, 8))
    data = read(fixed.save(os.path.join(tmp, 'f.vhd')))
    s.image('fixed', data, (0, F_WRITABLE))
    s.image('fixed-511-footer', data[:-1])
    data = read(dyn.save(os.path.join(tmp, 'd2.vhd')))
    s.image('dynamic-no-trailer', data[:-512])
    s.image('dynamic-bad-sum', data[:-1] + b'\x01', (F_IGNORE_CHECKSUMS,))

    if vhdchain:
        for name, parent in (('plugin-child-of-mid', 'mid.avhd'),
                             ('plugin-child-of-base', 'base.vhd')):
            out = os.path.join(snaps, 'tip-%s.avhd' % name)
            subprocess.run([vhdchain, 'create', '-q', '--drive',
                            'C:' + os.path.join(fx, 'vm'),
                            os.path.join(vhds, parent), out], check=True)
            s.image(name, out, (0, F_WRITABLE))
            os.unlink(out)

    for d, names in (('dfvfs', ('ext2.vhd', 'fat-differential.vhd',
                                'image-differential.vhd', 'image.vhd')),
                     ('dissect', ('dynamic.vhd.gz', 'fixed.vhd.gz'))):
        for n in names:
            p = os.path.join(SAMPLES, d, n)
            if os.path.isfile(p):
                s.image('%s-%s' % (d, n.replace('.gz', '')), p)
    frag = os.path.join(SAMPLES, 'libvhdi-fragments')
    if os.path.isdir(frag):
        foot = read(os.path.join(frag, 'file_footer.1'))
        head = read(os.path.join(frag, 'dynamic_disk_header.1'))
        s.image('fragments', foot + head + b'\xff' * 512 + foot)
    shutil.rmtree(tmp)
    return s.n


# ---------------------------------------------------------------- VHDX

def vhdx_target(work, vhdchain):
    fx = os.path.join(work, 'fixtures', 'vhdx')
    vhds = os.path.join(fx, 'vm', 'Virtual Hard Disks')
    snaps = os.path.join(fx, 'vm', 'Snapshots')
    outside = os.path.join(fx, 'outside')
    for d in (vhds, snaps, outside):
        os.makedirs(d, exist_ok=True)
    rng = random.Random(2)
    size = 8 * MiB
    base = vhdxgen.VhdxFile('dynamic', size, rng=rng, block_size=1 * MiB)
    base.apply(clip(writes(rng, size, 12), size))
    base.zero_block(5)

    def locator(parent, rel, absp):
        return [('parent_linkage', vhdxgen.linkage_text(
                     parent.data_write_guid)),
                ('absolute_win32_path', absp), ('relative_path', rel),
                ('parent_linkage2', vhdxgen.linkage_text(
                    vhdxgen.ZERO_GUID))]

    mid = vhdxgen.VhdxFile('differencing', size, rng=rng,
                           block_size=1 * MiB, disk_id=base.disk_id,
                           locator=locator(base, '.\\base.vhdx',
                                           'C:\\Virtual Hard Disks\\'
                                           'base.vhdx'))
    mid.apply(clip(writes(rng, size, 12), size))
    for folder in (vhds, outside):
        base.save(os.path.join(folder, 'base.vhdx'))
        mid.save(os.path.join(folder, 'mid.avhdx'))
        scrub_tree(folder)
    os.symlink('../../outside/mid.avhdx', os.path.join(snaps,
                                                         'escape.avhdx'))

    s = Seeds(os.path.join(work, 'seeds', 'vhdx'))
    tmp = os.path.join(work, 'tmp-vhdx')
    os.makedirs(tmp, exist_ok=True)
    rel = '..\\Virtual Hard Disks\\mid.avhdx'
    absp = 'C:\\Virtual Hard Disks\\mid.avhdx'

    def child(name, parent=mid, loc=None, flags=(0, F_WRITABLE), zero=(),
              **kw):
        sz = kw.pop('size', size)
        kw.setdefault('disk_id', base.disk_id)
        v = vhdxgen.VhdxFile('differencing', sz, rng=rng,
                             locator=loc or locator(parent, rel, absp),
                             **kw)
        v.apply(clip(writes(rng, sz, 10, v.sector), sz))
        for b in zero:
            v.zero_block(b)
        s.image(name, v.save(os.path.join(tmp, name)), flags)

    child('child-of-mid')
    child('child-1m-blocks', block_size=1 * MiB, zero=(2,))
    child('child-larger', size=12 * MiB, order=('bat', 'md', 'log',
                                                 'blocks'))
    child('child-dirty-log', dirty_log=True, log_entries=3)
    child('child-dirty-log-wrapped', dirty_log=True, log_entries=2,
          log_start=768 * KiB, log_old_sequence=True)
    child('child-partial-full', partial_full=True, junk_bits=True,
          sb_always=True, empty_blocks=(1,))
    child('child-of-base', parent=base,
          loc=locator(base, '..\\Virtual Hard Disks\\base.vhdx',
                      'C:\\Virtual Hard Disks\\base.vhdx'))
    child('child-escape', loc=locator(mid, '.\\escape.avhdx',
                                      '\\\\?\\UNC\\srv\\share\\mid.avhdx'))
    child('child-stale-header', stale_header=True, seqs=(12, 11),
          md_order='shuffle')
    for name, kw in (('dynamic', dict(block_size=1 * MiB)),
                     ('dynamic-4k-sectors', dict(block_size=1 * MiB,
                                                 logical_sector=4096)),
                     ('dynamic-dirty', dict(block_size=1 * MiB,
                                            dirty_log=True)),
                     ('fixed', dict(block_size=1 * MiB))):
        kind = 'fixed' if name == 'fixed' else 'dynamic'
        sz = 4 * MiB
        v = vhdxgen.VhdxFile(kind, sz, rng=rng, **kw)
        v.apply(clip(writes(rng, sz, 10, v.sector), sz))
        s.image(name, v.save(os.path.join(tmp, name)), (0, F_WRITABLE))

    if vhdchain:
        out = os.path.join(snaps, 'tip-plugin.avhdx')
        subprocess.run([vhdchain, 'create', '-q', '--drive',
                        'C:' + os.path.join(fx, 'vm'),
                        os.path.join(vhds, 'mid.avhdx'), out], check=True)
        s.image('plugin-child-of-mid', out, (0, F_WRITABLE))
        os.unlink(out)
    for n in ('swap.vhdx.gz', 'vhdx-log-replay.vhdx.gz'):
        p = os.path.join(SAMPLES, 'discutils', n)
        if os.path.isfile(p):
            s.image('discutils-' + n[:-3], p)
    shutil.rmtree(tmp)
    return s.n


# ---------------------------------------------------------------- locator

LOCATOR_SEEDS = [
    [(0, '.\\base.vhd'), (2, 'C:\\Windows\\disk.vhd')],
    [(0, '..\\Virtual Hard Disks\\base.vhd')],
    [(0, '..\\virtual hard disks\\SUB DIR\\X.VHD')],
    [(2, 'D:\\d.vhd'), (2, 'd:/d.vhd'), (1, '\\\\?\\Volume{0f0e}\\x.vhd')],
    [(2, '\\\\?\\C:\\Windows\\disk.vhd'), (2, '\\\\?\\UNC\\srv\\s\\x.vhd')],
    [(2, '\\\\server\\share\\base.vhd'), (4, 'base.vhd')],
    [(3, 'file:///etc/passwd'), (3, 'file://localhost/x%2Fy.vhd')],
    [(0, '..\\..\\..\\..\\..\\..\\etc\\passwd'), (4, '/etc/passwd')],
    [(0, '..\\..\\outside\\secret.vhd'), (0, '..\\dir-out\\secret.vhd')],
    [(0, '.\\out-link.vhd'), (0, 'passwd-link'), (0, '..\\loop\\x')],
    [(2, 'E:\\Hyper-V\\VM\\Virtual Hard Disks\\base.vhd')],
    [(2, 'C:\\x\\outside\\Virtual Hard Disks\\base.vhd')],
    [(4, 'C:\\Hyper-V\\vm\\Snapshots\\0A1B2C3D\\snap.avhd')],
    [(0, '..\\Virtual Hard Disks\\in-link.vhd'), (0, '.\\.\\.\\tip.avhd')],
    [(0, '..\\..\\..\\ETC\\PASSWD'), (0, '..\\..\\OUTSIDE\\Secret.vhd')],
    [(0, ''), (4, '\\'), (2, 'C:'), (2, 'C:\\'), (3, 'file://')],
]


def locator_target(work):
    fx = os.path.join(work, 'fixtures', 'locator')
    files = ['vm/Virtual Hard Disks/base.vhd',
             'vm/Virtual Hard Disks/Sub Dir/x.vhd',
             'vm/Snapshots/tip.avhd', 'vm/Snapshots/0A1B2C3D/snap.avhd',
             'vm/c/Windows/disk.vhd', 'search/s.vhd', 'drive-d/d.vhd',
             'outside/secret.vhd', 'outside/Virtual Hard Disks/base.vhd']
    for f in files:
        p = os.path.join(fx, f)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'wb') as fh:
            fh.write(b'x')
    links = {'vm/Virtual Hard Disks/in-link.vhd': 'Sub Dir/x.vhd',
             'vm/Snapshots/out-link.vhd': '../../outside/secret.vhd',
             'vm/Snapshots/passwd-link': '/etc/passwd',
             'vm/dir-out': '../outside',
             'vm/loop': 'loop'}
    for f, target in links.items():
        os.symlink(target, os.path.join(fx, f))
    s = Seeds(os.path.join(work, 'seeds', 'locator'))
    for i, hints in enumerate(LOCATOR_SEEDS):
        s.add('hints%d' % i, b'\n'.join(bytes([k]) + p.encode()
                                        for k, p in hints))
    return s.n


# ---------------------------------------------------------------- Hyper-V

def vm_target(work, kind):
    fx = os.path.join(work, 'fixtures', kind)
    os.makedirs(fx, exist_ok=True)
    layout = '2008' if kind == 'xml' else '2016'
    vm = hypervgen.build_vm(fx, layout=layout, config=kind, seed=3,
                            size=2 * MiB)
    scrub_tree(vm.folder)
    s = Seeds(os.path.join(work, 'seeds', kind))
    s.add('vm', read(vm.config))
    for cp in vm.checkpoints:
        s.add('checkpoint', read(cp.config))
    # Keep one checkpoint's configuration: vm_open then links points.
    for cp in vm.checkpoints[1:]:
        os.unlink(cp.config)
    shutil.copytree(os.path.join(vm.folder, 'Virtual Hard Disks'),
                    os.path.join(fx, 'outside', 'Virtual Hard Disks'))
    scrub_tree(os.path.join(fx, 'outside'))
    if kind == 'vmcx':
        p = os.path.join(SAMPLES, 'dissect', 'test.vmcx')
        if os.path.isfile(p):
            s.add('dissect-test', read(p))
    return s.n


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit('usage: mkcorpus.py WORK [VHDCHAIN]')
    work = sys.argv[1]
    vhdchain = sys.argv[2] if len(sys.argv) == 3 else None
    for sub in ('fixtures', 'seeds'):
        shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    counts = dict(vhd=vhd_target(work, vhdchain),
                  vhdx=vhdx_target(work, vhdchain),
                  locator=locator_target(work),
                  xml=vm_target(work, 'xml'),
                  vmcx=vm_target(work, 'vmcx'))
    print('seeds: ' + ', '.join('%s %d' % kv for kv in counts.items()))


if __name__ == '__main__':
    main()
