#!/usr/bin/python3
"""Real VHDX files made by other tools read as FORMATS.md section 6 says.

- discutils/vhdx-log-replay.vhdx.gz (dirty log, Windows 10): served
  read-only, the replayed disk holds an MBR with two Linux partitions
  (sfdisk --dump of the exported bytes: 0x83 at LBA 2048 + 204800 and
  206848 + 409600) and the documented SHA-256; the file is byte-identical
  afterwards (documented SHA-256 of the gunzipped file).  Without replay
  it would read as all zeros, so the partition table proves the replay.
- discutils/swap.vhdx.gz (Windows 10, clean): equal to qemu-img's reading,
  the documented SHA-256 and SWAPSPACE2 at byte 4086.
- Images made by `qemu-img convert -O vhdx` (dynamic and fixed, block
  sizes 1 to 256 MiB, log sizes, ZERO blocks from block_state_zero, a size
  that is not a block multiple): byte-identical to qemu-img's own reading
  of them, and to the raw source, through each read engine.
"""

import os
import random
import re
import subprocess

import harness
import vhdxgen as g

r = harness.Reporter('test-vhdx-samples')

LOG_REPLAY = 'discutils/vhdx-log-replay.vhdx.gz'
LOG_REPLAY_FILE_SHA = ('d0805b6f7cdd3908239442900d73053a'
                       '013079f839656d69bae00a44948983d6')
LOG_REPLAY_DISK_SHA = ('3ba3b309425b7ff5e8e0199edceed952'
                       '26250f880c53b24e8eae93865f3fad5e')
SWAP = 'discutils/swap.vhdx.gz'
SWAP_DISK_SHA = ('60dd30b4c74361427d1089510cabb36e'
                 '2eeda0cc4747f467ea43173acd358c49')
GUNZIPPED = 37748736

# qemu-img -o options for the made images, and the read engine used.
QEMU_VARIANTS = [
    ('subformat=dynamic', 'io=uring'),
    ('subformat=dynamic,block_size=1M,log_size=1M', 'io=pread'),
    ('subformat=dynamic,block_size=8M,log_size=4M', 'io=uring'),
    ('subformat=dynamic,block_size=8M,block_state_zero=off', 'io=pread'),
    ('subformat=dynamic,block_size=256M', 'io=uring'),
    ('subformat=fixed', 'io=pread'),
    ('subformat=fixed,block_size=1M,log_size=2M', 'io=uring'),
    ('subformat=fixed,block_size=32M,log_size=1M', 'io=pread'),
]


def unaligned(h):
    """libnbd refuses requests below the export's minimum block size by
    default; the plugin serves them."""
    import nbd
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
    return h


def served(path, tmp, *params):
    """(export size, SHA-256 of the nbdcopy, its path) of path served
    read-only."""
    with harness.Nbdkit(path, *params) as srv:
        h = srv.connect()
        size = h.get_size()
        h.shutdown()
        out = srv.copy_to(os.path.join(tmp, 'served.raw'))
    return size, g.sparse_sha256(out), out


def check_log_replay(tmp):
    path = harness.gunzip_to(harness.sample(*LOG_REPLAY.split('/')), tmp)
    r.equal(os.path.getsize(path), GUNZIPPED, 'gunzipped size of ' +
            LOG_REPLAY)
    r.equal(harness.sha256_file(path), LOG_REPLAY_FILE_SHA,
            'gunzipped SHA-256 of ' + LOG_REPLAY + ' (before)')
    before = harness.snapshot([path])
    size, sha, raw = served(path, tmp)
    r.equal(size, 1 << 30, 'export size of ' + LOG_REPLAY)
    r.equal(sha, LOG_REPLAY_DISK_SHA, 'replayed disk SHA-256 of ' +
            LOG_REPLAY)
    dump = harness.run(['sfdisk', '--dump', raw]).stdout.decode()
    parts = re.findall(r'start=\s*(\d+),\s*size=\s*(\d+),\s*type=(\w+)',
                       dump)
    r.equal(parts, [('2048', '204800', '83'), ('206848', '409600', '83')],
            'sfdisk --dump of the replayed disk: two 0x83 partitions')
    r.check('label: dos' in dump, 'sfdisk sees an MBR (dos) label', dump)
    os.unlink(raw)
    r.equal(harness.changed_files(before), [], LOG_REPLAY +
            ' unchanged by serving it')
    r.equal(harness.sha256_file(path), LOG_REPLAY_FILE_SHA,
            'gunzipped SHA-256 of ' + LOG_REPLAY + ' (after)')
    # The plugin serves it read-only only: a writable serve makes a child
    # and never touches the file either.
    with harness.Nbdkit(path, readonly=False) as srv:
        h = unaligned(srv.connect())
        h.pwrite(b'x' * 512, 4096)
        h.flush()
        r.equal(h.pread(512, 4096), b'x' * 512,
                'a write over the replayed disk reads back')
        h.shutdown()
    r.equal(harness.changed_files(before), [], LOG_REPLAY +
            ' unchanged by a writable serve')


def check_swap(tmp):
    path = harness.gunzip_to(harness.sample(*SWAP.split('/')), tmp)
    r.equal(os.path.getsize(path), GUNZIPPED, 'gunzipped size of ' + SWAP)
    before = harness.snapshot([path])
    qemu = harness.qemu_raw(path, os.path.join(tmp, 'qemu.raw'), fmt='vhdx')
    size, sha, raw = served(path, tmp, 'io=pread')
    r.equal(size, 10 << 30, 'export size of ' + SWAP)
    r.check(g.sparse_equal(raw, qemu), 'the plugin reads %s like qemu-img'
            % SWAP)
    os.unlink(qemu)
    r.equal(sha, SWAP_DISK_SHA, 'SHA-256 of %s through the plugin' % SWAP)
    with open(raw, 'rb') as f:
        f.seek(4086)
        r.equal(f.read(10), b'SWAPSPACE2', 'SWAPSPACE2 at 4086 of ' + SWAP)
    os.unlink(raw)
    r.equal(harness.changed_files(before), [], SWAP + ' unchanged')


def source_raw(tmp, size, seed):
    """Random data with holes, a zero block run and unaligned extents."""
    rng = random.Random(seed)
    path = os.path.join(tmp, 'source.raw')
    with open(path, 'wb') as f:
        f.truncate(size)
        for _ in range(40):
            off = rng.randrange(0, size - 300000) // 512 * 512
            f.seek(off)
            f.write(rng.randbytes(rng.randint(1, 600) * 512))
        f.seek(size - 4096)                 # the very end
        f.write(rng.randbytes(4096))
    return path


def check_qemu_made(tmp):
    # 41 MiB + 3 sectors: never a block multiple.
    src = source_raw(tmp, 41 * (1 << 20) + 1536, 7)
    src_sha = harness.sha256_file(src)
    for opts, engine in QEMU_VARIANTS:
        label = '%s (%s)' % (opts, engine)
        vhdx = os.path.join(tmp, 'made.vhdx')
        back = os.path.join(tmp, 'back.raw')
        harness.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'vhdx',
                     '-o', opts, src, vhdx])
        harness.run(['qemu-img', 'convert', '-f', 'vhdx', '-O', 'raw', vhdx,
                     back])
        qsha = g.sparse_sha256(back)
        r.equal(qsha, src_sha, 'qemu-img round trip of ' + label)
        before = harness.snapshot([vhdx])
        size, sha, raw = served(vhdx, tmp, engine)
        r.equal(size, os.path.getsize(src), 'export size of ' + label)
        r.equal(sha, qsha, 'plugin reads like qemu-img: ' + label)
        r.equal(harness.changed_files(before), [], label + ' unchanged')
        for p in (vhdx, back, raw):
            os.unlink(p)


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy', 'qemu-img', 'sfdisk')
    with harness.tempdir() as tmp:
        r.run(check_log_replay, tmp)
        r.run(check_swap, tmp)
        r.run(check_qemu_made, tmp)


if __name__ == '__main__':
    r.main(main)
