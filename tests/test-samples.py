#!/usr/bin/python3
"""Real VHD samples made by other tools read as FORMATS.md section 6 says.

- dfvfs/ext2.vhd, dissect/dynamic.vhd.gz, dissect/fixed.vhd.gz: equal to
  qemu-img's reading and to the documented SHA-256.
- dfvfs/image.vhd (bad footer checksums): refused by default with a checksum
  error; with ignore-checksums=true, the documented SHA-256.
- dfvfs/image-differential.vhd: refused by default; with ignore-checksums,
  resolves to image.vhd by the header's parent name.
- dfvfs/fat-differential.vhd: "parent not found" naming fat-parent.vhd;
  with a synthetic fat-parent.vhd carrying the documented id beside a copy,
  the documented sectors come from the child, the rest from the parent.
"""

import os
import random
import shutil

import harness
import vhdgen as g

r = harness.Reporter('test-samples')

# FORMATS.md section 6: sample -> (virtual size, SHA-256 of the virtual disk)
EXPECTED = {
    'dfvfs/ext2.vhd': (4212736, '870be7ae16c1fa8faab05c6eb9205dc9'
                       'a7ae35c5f552c5cf8a267c0bc6a5cb99'),
    'dissect/dynamic.vhd.gz': (10485760, 'ecff2ef6615a3cddc6a6885f1c6d9cf1'
                               '3a232697e1dc6575f2c2f01f57247784'),
    'dissect/fixed.vhd.gz': (10485760, '459325ab1fcd1d5ec9854cba790ee263'
                             '78317cda177ffc1072008a1df88e6463'),
    'dfvfs/image.vhd': (104448, 'c6db12a7db548e193c29420c1b4533e4'
                        '708b20c5033db5cc29ef075d48316d25'),
}
GUNZIPPED_SIZE = {'dissect/dynamic.vhd.gz': 6311936,
                  'dissect/fixed.vhd.gz': 10486272}

FAT_PARENT_ID = bytes.fromhex('5FA21A55F394AA4D99581951A67D5540')
FAT_SIZE = 4194304
FAT_BITMAP_AT, FAT_DATA_AT = 159 * 512, 81920     # block 0
FAT_PRESENT = [134, 143] + list(range(152, 160)) + [184, 185, 188] + \
    list(range(190, 193)) + [194, 196]
FAT_FROM_PARENT = [135, 186, 187, 189, 193, 195, 197, 198, 199]


def local_copy(rel, tmp):
    """Path of a sample, gunzipped into tmp when stored compressed."""
    path = harness.sample(*rel.split('/'))
    if path.endswith('.gz'):
        path = harness.gunzip_to(path, tmp)
        r.equal(os.path.getsize(path), GUNZIPPED_SIZE[rel],
                'gunzipped size of ' + rel)
    return path


def served_sha(path, tmp, *params):
    with harness.Nbdkit(path, *params) as srv:
        h = srv.connect()
        size = h.get_size()
        h.shutdown()
        sha, copied = srv.copy_sha256(tmp)
    return size, sha, copied


def check_like_qemu(rel, tmp):
    path = local_copy(rel, tmp)
    want_size, want_sha = EXPECTED[rel]
    qemu = harness.qemu_raw(path, os.path.join(tmp, 'qemu.raw'))
    qemu_sha = harness.sha256_file(qemu)
    os.unlink(qemu)
    # QEMU is an independent reader; the documented value pins it too.
    r.equal(qemu_sha, want_sha, 'qemu-img reads %s as documented' % rel)
    size, sha, copied = served_sha(path, tmp)
    r.equal(size, want_size, 'export size of ' + rel)
    r.equal(copied, want_size, 'nbdcopy length of ' + rel)
    r.equal(sha, want_sha, 'nbdcopy SHA-256 of ' + rel)


def check_refused(path, keywords, *params):
    rc, err = harness.start_must_fail(path, *params)
    name = os.path.basename(path)
    r.equal(rc, 1, 'exit status refusing %s %s' % (name, params or ''))
    low = err.lower()
    for k in keywords:
        r.check(k.lower() in low, 'refusal of %s mentions %r' % (name, k),
                err)
    return err


def check_bad_checksums(tmp):
    image = harness.sample('dfvfs', 'image.vhd')
    diff = harness.sample('dfvfs', 'image-differential.vhd')
    size, sha = EXPECTED['dfvfs/image.vhd']
    check_refused(image, ['checksum', 'image.vhd'])
    check_refused(diff, ['checksum', 'image-differential.vhd'])
    got = served_sha(image, tmp, 'ignore-checksums=true')
    r.equal(got, (size, sha, size), 'image.vhd with ignore-checksums')
    got = served_sha(diff, tmp, 'ignore-checksums=true')
    r.equal(got, (size, sha, size),
            'image-differential.vhd -> image.vhd with ignore-checksums')


def check_fat_parent_missing():
    child = harness.sample('dfvfs', 'fat-differential.vhd')
    check_refused(child, ['fat-differential.vhd', 'not found',
                          'fat-parent.vhd'])


def fat_child_sectors(child):
    """Present sectors of block 0 and their data, read from the file at the
    documented offsets (MSB-first bitmap)."""
    raw = open(child, 'rb').read()
    bitmap = raw[FAT_BITMAP_AT:FAT_BITMAP_AT + 512]
    present = [s for s in range(4096) if bitmap[s >> 3] & (0x80 >> (s & 7))]
    data = {s: raw[FAT_DATA_AT + 512 * s:FAT_DATA_AT + 512 * (s + 1)]
            for s in present}
    return present, data


def check_fat_with_parent(tmp):
    folder = os.path.join(tmp, 'fat')
    os.mkdir(folder)
    child = os.path.join(folder, 'fat-differential.vhd')
    shutil.copyfile(harness.sample('dfvfs', 'fat-differential.vhd'), child)
    rng = random.Random(5)
    parent = g.VhdFile('dynamic', FAT_SIZE, rng=rng, uid=FAT_PARENT_ID,
                       creator_app=b'win ')
    parent.apply(g.fill_writes(rng, FAT_SIZE))
    parent.save(os.path.join(folder, 'fat-parent.vhd'))

    present, data = fat_child_sectors(child)
    r.equal(present, FAT_PRESENT, 'fat-differential bitmap as documented')
    expected = bytearray(parent.data)
    for s, d in data.items():
        expected[512 * s:512 * (s + 1)] = d

    before = harness.snapshot([child, parent.path])
    with harness.Nbdkit(child) as srv:
        h = srv.connect()
        r.equal(h.get_size(), FAT_SIZE, 'fat chain size = current size')
        for s in FAT_PRESENT:
            r.check(h.pread(512, 512 * s) == data[s],
                    'fat sector %d from the child' % s)
        for s in FAT_FROM_PARENT:
            want = parent.data[512 * s:512 * (s + 1)]
            r.check(h.pread(512, 512 * s) == want,
                    'fat sector %d from the parent' % s)
        h.shutdown()
        sha, size = srv.copy_sha256(tmp)
    r.equal((sha, size), (harness.sha256_bytes(expected), FAT_SIZE),
            'fat chain read whole')
    r.equal(harness.changed_files(before), [], 'fat chain files unchanged')


def main():
    harness.require_plugin()
    harness.require_tools('qemu-img', 'nbdcopy')
    samples = [os.path.join(harness.SAMPLES, *k.split('/')) for k in
               ('dfvfs/ext2.vhd', 'dfvfs/image.vhd',
                'dfvfs/image-differential.vhd', 'dfvfs/fat-differential.vhd')]
    before = harness.snapshot(samples)
    with harness.tempdir() as tmp:
        for rel in ('dfvfs/ext2.vhd', 'dissect/dynamic.vhd.gz',
                    'dissect/fixed.vhd.gz'):
            r.run(check_like_qemu, rel, tmp, what='sample ' + rel)
        r.run(check_bad_checksums, tmp)
        r.run(check_fat_parent_missing)
        r.run(check_fat_with_parent, tmp)
    r.equal(harness.changed_files(before), [], 'sample files unchanged')


if __name__ == '__main__':
    r.main(main)
