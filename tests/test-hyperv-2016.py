#!/usr/bin/python3
"""Hyper-V 2016+ VM folders (issue 6): VHDX with <disk>_<GUID>.avhdx next
to the disk, .vmcx configurations, and no configuration at all.

The folder the test builds (tests/hypervgen.py, VHDX from vhdxgen):

    Web Server/Virtual Hard Disks/Disk.vhdx, Data.vhdx
    Web Server/Virtual Hard Disks/Disk_<GUID>.avhdx, Data_<GUID>.avhdx ...
    Web Server/Virtual Machines/<VM GUID>.vmcx
    Web Server/Snapshots/<checkpoint GUID>.vmcx (+ .vmrs, ignored)

with the branched tree of test-hyperv-2008 (C1 -> {C2, C3 -> C4 -> Now});
the names say nothing about position, only the configurations and the
parent linkage do.  Checked:
  1. without any configuration, the disk files linked into their trees by
     parent identity (DataWriteGuid), one point per file, each served
     byte-exact;
  2. with .vmcx configurations (written in the layout measured on the real
     sample, values of 2 KiB and more in file objects), every checkpoint's
     state and chain, served byte-exact; and the same with 2012 R2's XML;
  3. a missing disk: that checkpoint unavailable, the others not;
  4. damaged .vmcx files: one error line naming the file;
  5. the real test.vmcx (dissect.hypervisor): parsed, the disk path it
     records reported (C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard
     Disks\\Other Location.vhdx), that point unavailable here.
"""

import os
import shutil

import harness
import hypervgen
import vhdchain_cli as cli

r = harness.Reporter('test-hyperv-2016')

SAMPLE_DISK = ('C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks\\'
               'Other Location.vhdx')


def checkpoints(folder):
    return cli.json_of('checkpoints', '--json', folder)


def linkage(tmp, served):
    vm = hypervgen.build_vm(os.path.join(tmp, 'bare'), layout='2016',
                            config=None, seed=5)
    what = 'VHDX, no configuration'
    j = checkpoints(vm.folder)
    r.equal(j['source'], 'linkage', '%s: the tree by linkage' % what)
    pts = {p['id']: p for p in j['points']}
    rel = {f.path: os.path.relpath(f.path, vm.folder) for f in vm.files}
    r.equal(sorted(pts), sorted(rel.values()),
            '%s: one point per disk file, named by its path' % what)
    order = [p['id'] for p in j['points']]
    for tree in vm.disks.values():
        for key, f in tree.files.items():
            p = pts.get(rel[f.path])
            if p is None:
                continue
            parent = tree.files[f.parent] if f.parent else None
            r.equal(p['parent'], rel[parent.path] if parent else None,
                    '%s: %s: parent by identity' % (what, p['name']))
            if parent:
                r.check(order.index(p['parent']) < order.index(p['id']),
                        '%s: %s after its parent' % (what, p['name']))
            d = p['disks'][0]
            r.equal((p['name'], p['available'], d['tip'], d['tip_rule'],
                     d['chain']),
                    (os.path.basename(f.path), True, hypervgen.real(f.path),
                     'file', [hypervgen.real(x) for x in tree.chain(key)]),
                    '%s: %s: its chain' % (what, p['name']))
            if d['tip'] not in served:
                with harness.Nbdkit(d['tip']) as srv:
                    served[d['tip']] = srv.copy_sha256(tmp)[0]
            r.equal(served[d['tip']], f.sha256,
                    '%s: %s served byte-exact' % (what, p['name']))
    out = cli.ok('checkpoints', vm.folder)
    r.check('no configuration' in out and
            '\n- Virtual Hard Disks/Disk.vhdx (8.0 MiB)\n' in out and
            '\n  - Virtual Hard Disks/Disk_' in out and
            '\n    - Virtual Hard Disks/Disk_' in out,
            '%s: text tree' % what, out)

    # A file whose parent is gone: listed, unavailable; its parent absent.
    f = vm.disks['IDE'].files['x1']
    child = [g for g in vm.disks['IDE'].files.values() if g.parent == 'x1']
    os.rename(f.path, f.path + '.gone')
    try:
        j = checkpoints(vm.folder)
        pts = {p['id']: p for p in j['points']}
        for g in child:
            p = pts[rel[g.path]]
            r.check(not p['available'] and p['parent'] is None and
                    'parent not found' in (p['problem'] or ''),
                    '%s: %s without its parent: unavailable' % (what,
                                                                 p['name']),
                    p)
        r.check(pts[rel[vm.disks['IDE'].files['x4'].path]]['available'],
                '%s: another branch still available' % what)
    finally:
        os.rename(f.path + '.gone', f.path)


def configured(tmp, served, config):
    notes = 'A long note kept in a file object. ' * 80   # > 2 KiB UTF-16
    vm = hypervgen.build_vm(os.path.join(tmp, config), layout='2016',
                            config=config, seed=6, notes=notes)
    what = 'VHDX, %s configurations' % config.upper()
    before = harness.snapshot([f.path for f in vm.files])
    j = checkpoints(vm.folder)
    hypervgen.check_config_tree(r, vm, j, what, served, tmp, source=config)
    hypervgen.check_text(r, cli.ok('checkpoints', vm.folder), vm, what)
    r.equal(j['points'][-1]['notes'], notes,
            '%s: a long value (in a file object for VMCX) read' % what)

    # A missing disk: the SCSI file frozen at C4 is gone.
    c4 = vm.checkpoints[3]
    f = vm.disks['SCSI'].files[c4.frozen['SCSI']]
    os.rename(f.path, f.path + '.gone')
    try:
        j = checkpoints(vm.folder)
        avail = {p['name']: p['available'] for p in j['points']}
        r.equal(avail, {'Before update': True, 'After update': True,
                        'Branch': True, 'Branch again': False,
                        'Now': False},
                '%s: without C4\'s SCSI disk: C4 and Now (above it) '
                'unavailable' % what)
        p = [p for p in j['points'] if p['id'] == c4.guid][0]
        r.check('SCSI 0:0' in p['problem'] and 'is missing' in p['problem']
                and os.path.basename(f.path) in p['problem'],
                '%s: C4 names its missing disk' % what, p['problem'])
    finally:
        os.rename(f.path + '.gone', f.path)

    if config == 'vmcx':
        c3 = vm.checkpoints[2]
        raw = open(c3.config, 'rb').read()
        cases = [('truncated', raw[:0x2800], 'truncated'),
                 ('cut in a key table', raw[:0x4800], 'truncated'),
                 ('empty', b'', 'too short')]
        flipped = bytearray(raw)
        flipped[0x4000 + 200] ^= 0x40
        cases.append(('a flipped byte', bytes(flipped), 'bad checksum'))
        dirty = bytearray(raw)
        dirty[0x3008] = 1
        cases.append(('an unclean log', bytes(dirty), 'not closed cleanly'))
        for label, data, pattern in cases:
            with open(c3.config, 'wb') as fh:
                fh.write(data)
            err = cli.fails(r, ['checkpoints', vm.folder], 2, c3.config,
                            '%s: %s .vmcx' % (what, label))
            r.check(pattern in err and 'VMCX' in err,
                    '%s: %s .vmcx: says %r' % (what, label, pattern), err)
        with open(c3.config, 'wb') as fh:
            fh.write(raw)
        r.equal(len(checkpoints(vm.folder)['points']), 5,
                '%s: restored' % what)
    r.equal(harness.changed_files(before), [],
            '%s: no disk file changed' % what)


def sample(tmp):
    vm = os.path.join(tmp, 'Other Location')
    os.makedirs(os.path.join(vm, 'Virtual Machines'))
    cfg = os.path.join(vm, 'Virtual Machines',
                       '282874FC-59D6-4F30-BC04-5FDD909C82E0.vmcx')
    shutil.copyfile(harness.sample('dissect', 'test.vmcx'), cfg)
    j = checkpoints(vm)
    what = 'the real test.vmcx'
    r.equal((j['source'], j['name'], j['guid']),
            ('vmcx', 'Other Location',
             '282874fc-59d6-4f30-bc04-5fdd909c82e0'),
            '%s: format, VM name and GUID' % what)
    r.equal([(p['id'], p['available'], [(d['location'], d['recorded'])
                                         for d in p['disks']])
             for p in j['points']],
            [('now', False, [('IDE 0:0', SAMPLE_DISK)])],
            '%s: Now, its disk path reported, unavailable here' % what)
    out = cli.ok('checkpoints', vm)
    r.check(SAMPLE_DISK in out and 'UNAVAILABLE' in out and
            'Other Location' in out, '%s: text names the disk' % what, out)
    out = cli.ok('checkpoints', cfg)
    r.check(SAMPLE_DISK in out, '%s: the .vmcx given directly' % what, out)


def body():
    harness.require_plugin()
    cli.require_tool()
    served = {}
    with harness.tempdir() as tmp:
        linkage(tmp, served)
        configured(tmp, served, 'vmcx')
        configured(tmp, served, 'xml')
        sample(tmp)


r.main(body)
