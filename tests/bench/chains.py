"""Benchmark chains, built with tests/vhdgen.py and cached on disk.

build_big(folder)    the 1 GiB chain: a dynamic base VHD with every block
                     allocated and filled with random data, then 63
                     differencing layers, each with random sector-granular
                     writes (some crossing block borders) in a few
                     randomly chosen pairs of blocks, so that blocks end up
                     shared between layers sector by sector (fragmented).
                     Depth d (the number of files) is the chain whose tip
                     is layer d-1; the expected raw image of each depth in
                     DEPTHS is written too (the reference's input).
build_huge(folder)   the 2040 GiB chain (the VHD maximum, "2 TiB") of 64
                     files: a dynamic base with a few blocks, 63
                     differencing layers with a handful of blocks each.
                     vhdgen keeps a whole virtual disk in memory, so this
                     one uses SparseVhdFile, which stores only the blocks
                     written and leaves the file assembly to vhdgen.
build_vhdx(folder)   the 1 GiB VHDX chain of 8 files, built with
                     tests/vhdxgen.py: a dynamic base.vhdx (32 MiB blocks,
                     Windows' default, in file order) with every block
                     allocated and filled with random data, then 7
                     differencing .avhdx layers (2 MiB blocks, shuffled in
                     the file) with the same fragmented sector-granular
                     writes as the VHD layers.  vhdxgen.VhdxFile holds only
                     the blocks written, so the thin layers cost little; the
                     expected raw images of depths 1 and 8 are written.

All write a stamp file last; a folder whose stamp matches the parameters
(and the sha256 of vhdgen.py) is reused as it is.
"""

import hashlib
import json
import os
import random
import time

import vhdgen
import vhdxgen
from vhdgen import MiB, GiB, SECTOR

STAMP = 'bench-stamp.json'
FORMAT = 2                       # bump when the chain recipe changes

BIG = dict(format=FORMAT, size=1 * GiB, block_size=2 * MiB, layers=64,
           regions_per_layer=8, writes_per_region=12, max_sectors=64,
           seed=20240611)
DEPTHS = (1, 8, 64)

HUGE = dict(format=FORMAT, size=2040 * GiB, block_size=2 * MiB, layers=64,
            base_blocks=8, blocks_per_layer=4, writes_per_block=6,
            seed=4242)

WIN_DIR = 'C:\\Hyper-V\\Virtual Hard Disks'

VHDX = dict(format=1, size=1 * GiB, base_block_size=32 * MiB,
            block_size=2 * MiB, layers=8, regions_per_layer=8,
            writes_per_region=12, max_sectors=64, seed=20240612)
VHDX_DEPTHS = (1, 8)

# A cached chain is rebuilt when the generator changes, too.
with open(vhdgen.__file__, 'rb') as _f:
    BIG['vhdgen_sha256'] = HUGE['vhdgen_sha256'] = \
        hashlib.sha256(_f.read()).hexdigest()
with open(vhdxgen.__file__, 'rb') as _f:
    VHDX['vhdxgen_sha256'] = hashlib.sha256(_f.read()).hexdigest()


def layer_name(i):
    return 'base.vhd' if i == 0 else 'snap%02d.avhd' % i


def _stamp_ok(folder, params):
    try:
        with open(os.path.join(folder, STAMP)) as f:
            return json.load(f).get('params') == params
    except (OSError, ValueError):
        return False


def _write_stamp(folder, params, info):
    with open(os.path.join(folder, STAMP), 'w') as f:
        json.dump({'params': params, **info}, f, indent=1)


def _read_stamp(folder):
    with open(os.path.join(folder, STAMP)) as f:
        return json.load(f)


def _child_opts(parent_name, parent):
    """Link a child to its parent the way vhdgen.Chain.child does."""
    full = WIN_DIR + '\\' + parent_name
    return dict(locators=[vhdgen.w2ku(full, slot=0),
                          vhdgen.w2ru('.\\' + parent_name, slot=1)],
                parent_uid=parent.uid, parent_name=full,
                block_size=parent.block_size)


class _Parent:
    """What a child needs of its parent once the parent is saved."""

    def __init__(self, vhd):
        self.uid, self.block_size = vhd.uid, vhd.block_size


def _region_writes(rng, p, nblocks):
    """Random writes in `regions_per_layer` pairs of adjacent blocks."""
    bs = p['block_size']
    writes = []
    for b in rng.sample(range(nblocks - 1), p['regions_per_layer']):
        writes += vhdgen.random_writes(
            rng, p['size'], p['writes_per_region'], block_size=bs,
            max_sectors=p['max_sectors'], lo=b * bs, hi=(b + 2) * bs)
    return writes


def build_big(folder, log=print):
    """The 1 GiB chain; returns {'layers': [path...], 'expected': {depth:
    raw path}}.  Reuses the folder when its stamp matches."""
    p = BIG
    layers = [os.path.join(folder, layer_name(i)) for i in range(p['layers'])]
    expected = {d: os.path.join(folder, 'expected', 'depth%d.raw' % d)
                for d in DEPTHS}
    result = {'layers': layers, 'expected': expected}
    if _stamp_ok(folder, p):
        result.update(_read_stamp(folder))
        return result
    log('building the 1 GiB chain of %d files in %s (once; cached)'
        % (p['layers'], folder))
    t0 = time.monotonic()
    os.makedirs(os.path.join(folder, 'expected'), exist_ok=True)
    try:
        os.unlink(os.path.join(folder, STAMP))
    except FileNotFoundError:
        pass
    rng = random.Random(p['seed'])
    size, bs = p['size'], p['block_size']
    nblocks = size // bs

    # Base: dynamic, Hyper-V's creator (so QEMU sizes it by current_size),
    # every block written with random data in big chunks.
    base = vhdgen.VhdFile('dynamic', size, rng=rng, block_size=bs,
                          creator_app=b'win ')
    chunk = 64 * MiB
    for off in range(0, size, chunk):
        base.write(off, rng.randbytes(chunk))
    base.save(layers[0])
    image = base.data                     # the expected disk, kept current
    parent, parent_name = _Parent(base), layer_name(0)
    del base
    _save_expected(image, expected, 1)

    # The layers hold a few blocks each: SparseVhdFile spares a 1 GiB
    # buffer per layer (vhdgen's file assembly all the same).
    fragmented = set()
    for i in range(1, p['layers']):
        vhd = SparseVhdFile('differencing', size, rng=rng,
                            **_child_opts(parent_name, parent))
        vhd.apply(_region_writes(rng, p, nblocks))
        vhd.save(layers[i])
        fragmented.update(vhd.allocated_blocks())
        _overlay(image, vhd)
        parent, parent_name = _Parent(vhd), layer_name(i)
        del vhd
        _save_expected(image, expected, i + 1)
        if i % 16 == 0:
            log('  layer %d of %d (%.0f s)' % (i, p['layers'] - 1,
                                               time.monotonic() - t0))
    del image
    info = {'build_seconds': round(time.monotonic() - t0, 1),
            'blocks_in_layers': len(fragmented), 'blocks': nblocks}
    _write_stamp(folder, p, info)
    log('  built in %.0f s' % info['build_seconds'])
    result.update(info)
    return result


def _save_expected(image, expected, depth):
    if depth in expected:
        with open(expected[depth], 'wb') as f:
            f.write(image)


# ---------------------------------------------------------------- 2 TiB

class _SparseBuf:
    """A huge zero-initialised byte array that stores only written chunks.

    Supports what vhdgen.VhdFile does with its data and present arrays:
    len() and slice get/set with step 1."""

    def __init__(self, total, chunk):
        self.total, self.chunk, self.chunks = total, chunk, {}

    def __len__(self):
        return self.total

    def _range(self, s):
        start, stop, step = s.indices(self.total)
        assert step == 1
        return start, stop

    def __getitem__(self, s):
        start, stop = self._range(s)
        out = bytearray()
        while start < stop:
            c, at = divmod(start, self.chunk)
            n = min(stop - start, self.chunk - at)
            part = self.chunks.get(c)
            out += part[at:at + n] if part is not None else bytes(n)
            start += n
        return out

    def __setitem__(self, s, value):
        start, stop = self._range(s)
        assert len(value) == stop - start
        done = 0
        while start < stop:
            c, at = divmod(start, self.chunk)
            n = min(stop - start, self.chunk - at)
            part = self.chunks.setdefault(c, bytearray(self.chunk))
            part[at:at + n] = value[done:done + n]
            start += n
            done += n


class SparseVhdFile(vhdgen.VhdFile):
    """vhdgen.VhdFile for huge virtual sizes: only written blocks are held.

    Everything about the file layout is vhdgen's; only the storage of the
    virtual content and the list of allocated blocks are replaced."""

    def __init__(self, kind, size, **kw):
        kw.setdefault('geometry', vhdgen.chs_geometry(size))
        kw.setdefault('original_size', size)
        super().__init__(kind, SECTOR, **kw)        # tiny, then grow
        self.size = size
        spb = self.block_size // SECTOR
        self.data = _SparseBuf(size, self.block_size)
        self.present = _SparseBuf(size // SECTOR, spb)

    def present_runs(self):
        spb = self.block_size // SECTOR
        runs = []
        for c in sorted(self.present.chunks):
            flags = self.present.chunks[c]
            for first, count in _runs(flags):
                runs.append((c * spb + first, count))
        return runs


def _overlay(image, vhd):
    """Lay vhd's present sectors over image (what a reader must show)."""
    for first, count in vhd.present_runs():
        a, b = first * SECTOR, (first + count) * SECTOR
        image[a:b] = vhd.data[a:b]


def _runs(flags):
    n, s = len(flags), flags.find(1)
    while s != -1:
        e = flags.find(0, s)
        e = n if e == -1 else e
        yield s, e - s
        s = flags.find(1, e) if e < n else -1


def build_huge(folder, log=print):
    """The 2040 GiB chain of 64 files; returns {'layers': [path...],
    'samples': [(offset, sha256 of 4096 bytes)]}."""
    p = HUGE
    layers = [os.path.join(folder, layer_name(i)) for i in range(p['layers'])]
    result = {'layers': layers}
    if _stamp_ok(folder, p):
        result.update(_read_stamp(folder))
        return result
    log('building the 2040 GiB chain of %d files in %s (once; cached)'
        % (p['layers'], folder))
    t0 = time.monotonic()
    os.makedirs(folder, exist_ok=True)
    try:
        os.unlink(os.path.join(folder, STAMP))
    except FileNotFoundError:
        pass
    rng = random.Random(p['seed'])
    size, bs = p['size'], p['block_size']
    nblocks = size // bs

    base = SparseVhdFile('dynamic', size, rng=rng, block_size=bs,
                         creator_app=b'win ')
    for b in rng.sample(range(nblocks), p['base_blocks']):
        base.write(b * bs, rng.randbytes(bs))
    base.save(layers[0])
    image = _SparseBuf(size, bs)          # the expected disk at the tip
    _overlay(image, base)
    parent, parent_name = _Parent(base), layer_name(0)
    allocated = len(base.allocated_blocks())
    for i in range(1, p['layers']):
        vhd = SparseVhdFile('differencing', size, rng=rng,
                            **_child_opts(parent_name, parent))
        for b in rng.sample(range(nblocks), p['blocks_per_layer']):
            vhd.apply(vhdgen.random_writes(
                rng, size, p['writes_per_block'], block_size=bs,
                max_sectors=64, lo=b * bs, hi=(b + 1) * bs))
        vhd.save(layers[i])
        _overlay(image, vhd)
        allocated += len(vhd.allocated_blocks())
        parent, parent_name = _Parent(vhd), layer_name(i)
    # Expected sha256 of some blocks at the tip (written ones and holes),
    # for a cheap check that the server reads the chain right.
    written = sorted(image.chunks)
    picks = written[::max(1, len(written) // 12)]
    holes = [b for b in range(0, nblocks, nblocks // 5) if b not in
             image.chunks][:4]
    samples = [[b * bs, hashlib.sha256(image[b * bs:(b + 1) * bs])
                .hexdigest()] for b in sorted(picks + holes)]
    info = {'build_seconds': round(time.monotonic() - t0, 1),
            'samples': samples, 'block_size': bs,
            'allocated_blocks': allocated,
            'file_bytes': sum(os.path.getsize(l) for l in layers)}
    _write_stamp(folder, p, info)
    log('  built in %.0f s' % info['build_seconds'])
    result.update(info)
    return result


# ---------------------------------------------------------------- VHDX

VHDX_WIN_DIR = 'C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks'


def vhdx_layer_name(i):
    return 'base.vhdx' if i == 0 else 'snap%02d.avhdx' % i


def build_vhdx(folder, log=print):
    """The 1 GiB VHDX chain of 8 files; returns {'layers': [path...],
    'expected': {depth: raw path}} (depths VHDX_DEPTHS).  Reuses the folder
    when its stamp matches."""
    p = VHDX
    layers = [os.path.join(folder, vhdx_layer_name(i))
              for i in range(p['layers'])]
    expected = {d: os.path.join(folder, 'expected', 'depth%d.raw' % d)
                for d in VHDX_DEPTHS}
    result = {'layers': layers, 'expected': expected}
    if _stamp_ok(folder, p):
        result.update(_read_stamp(folder))
        return result
    log('building the 1 GiB VHDX chain of %d files in %s (once; cached)'
        % (p['layers'], folder))
    t0 = time.monotonic()
    os.makedirs(os.path.join(folder, 'expected'), exist_ok=True)
    try:
        os.unlink(os.path.join(folder, STAMP))
    except FileNotFoundError:
        pass
    rng = random.Random(p['seed'])
    size, bs = p['size'], p['block_size']
    nblocks = size // bs

    # Base: dynamic, every block written with random data; blocks in the
    # file in virtual order, as a disk filled front to back leaves them.
    base = vhdxgen.VhdxFile('dynamic', size, rng=rng,
                            block_size=p['base_block_size'],
                            block_order='sequential')
    image = bytearray(size)               # the expected disk, kept current
    chunk = 64 * MiB
    for off in range(0, size, chunk):
        data = rng.randbytes(chunk)
        base.write(off, data)
        image[off:off + chunk] = data
    base.save(layers[0])
    parent = (base.data_write_guid, base.disk_id, base.sector,
              base.physical_sector)
    del base
    _save_expected(image, expected, 1)

    fragmented = set()
    for i in range(1, p['layers']):
        pname = vhdx_layer_name(i - 1)
        guid, disk_id, sector, physical = parent
        locator = [('parent_linkage', vhdxgen.linkage_text(guid)),
                   ('absolute_win32_path', VHDX_WIN_DIR + '\\' + pname),
                   ('relative_path', '.\\' + pname)]
        v = vhdxgen.VhdxFile('differencing', size, rng=rng, block_size=bs,
                             locator=locator, disk_id=disk_id,
                             logical_sector=sector,
                             physical_sector=physical)
        v.apply(_region_writes(rng, p, nblocks))
        v.save(layers[i])
        fragmented.update(v.blocks)
        for off, n, data in v.present_runs():
            image[off:off + n] = data
        parent = (v.data_write_guid, disk_id, sector, physical)
        del v
        _save_expected(image, expected, i + 1)
    del image
    info = {'build_seconds': round(time.monotonic() - t0, 1),
            'blocks_in_layers': len(fragmented), 'blocks': nblocks}
    _write_stamp(folder, p, info)
    log('  built in %.0f s' % info['build_seconds'])
    result.update(info)
    return result
