#!/usr/bin/python3
"""Hyper-V 2008 - 2012 R2 VM folders (issue 6): XML configurations.

The folder the test builds (tests/hypervgen.py), as Hyper-V 2008 lays it
out (FORMATS.md section 4):

    Web Server/Virtual Machines/<VM GUID>.xml      the VM: "Now"
    Web Server/Snapshots/<checkpoint GUID>.xml      one per checkpoint
    Web Server/Snapshots/<checkpoint GUID>/...      saved state (ignored)
    Web Server/Virtual hard disks/Disk.vhd, Data.vhd     (case drift)
    Web Server/Snapshots/<VM GUID>/<checkpoint GUID>.avhd, Data_<...>.avhd

with two disks (IDE 0:0 and SCSI 0:0) and a branched tree: C1, C2, C1
applied, C3, C4 (C1 -> {C2, C3 -> C4 -> Now}).  The AVHD named after a
checkpoint holds the changes made after it; the state of a checkpoint is
the disk that became read-only when it was taken.  Two variants of the
configurations: each checkpoint records that frozen disk, or the AVHD made
when it was taken (then the state is that file's parent).  Every point's
tip must be the right file, its chain complete, and its image, served by
the plugin, byte-exact.  Then: a missing disk makes its checkpoint
unavailable (the others stay), a hostile recorded path opens nothing, and
a truncated or malformed XML file is one error line naming it.
"""

import json
import os
import shutil

import harness
import hypervgen
import vhdchain_cli as cli

r = harness.Reporter('test-hyperv-2008')


def checkpoints(folder):
    return cli.json_of('checkpoints', '--json', folder)


def variant(tmp, record, served):
    root = os.path.join(tmp, record)
    vm = hypervgen.build_vm(root, layout='2008', config='xml', record=record,
                            seed=3, drift=True)
    what = 'XML, checkpoints record the %s disk' % record
    before = harness.snapshot([f.path for f in vm.files])
    if record == 'frozen':
        # A decoy with the base disk's name, elsewhere in the VM folder:
        # the recorded path's folder decides, not the base name alone.
        os.makedirs(os.path.join(vm.folder, 'Old'))
        shutil.copyfile(vm.disks['SCSI'].files['base'].path,
                        os.path.join(vm.folder, 'Old', 'Disk.vhd'))
    j = checkpoints(vm.folder)
    hypervgen.check_config_tree(r, vm, j, what, served, tmp, record=record)
    out = cli.ok('checkpoints', vm.folder)
    hypervgen.check_text(r, out, vm, what)
    r.check('Web Server (VM %s)' % vm.guid in out and
            'XML configuration' in out, '%s: text header' % what, out)
    if record == 'post':
        r.check('named after the checkpoint' in out,
                '%s: text says why the tip is the parent' % what, out)

    # A missing disk: the IDE file frozen at C2 (made at C1) is gone.
    c1, c2, c3 = vm.checkpoints[:3]
    x1 = vm.disks['IDE'].files[c2.frozen['IDE']]
    hidden = x1.path + '.hidden'
    os.rename(x1.path, hidden)
    try:
        j = checkpoints(vm.folder)
        pts = {p['id']: p for p in j['points']}
        avail = {p['name']: p['available'] for p in j['points']}
        if record == 'frozen':
            r.equal(avail, {'Before update': True, 'After update': False,
                            'Branch': True, 'Branch again': True,
                            'Now': True},
                    '%s: only C2 unavailable without its disk' % what)
            r.check('is missing' in (pts[c2.guid]['problem'] or '') and
                    os.path.basename(x1.path) in pts[c2.guid]['problem'],
                    '%s: C2 says which disk is missing' % what,
                    pts[c2.guid]['problem'])
        else:
            # C1 records that very file; C2 records the file made at C2,
            # whose parent (C2's state) is the missing one.
            r.equal(avail, {'Before update': False, 'After update': False,
                            'Branch': True, 'Branch again': True,
                            'Now': True},
                    '%s: C1 and C2 unavailable without the file' % what)
            r.check('is missing' in (pts[c1.guid]['problem'] or ''),
                    '%s: C1: its recorded disk is missing' % what,
                    pts[c1.guid]['problem'])
            r.check('its parent (the checkpoint\'s state) was not found'
                    in (pts[c2.guid]['problem'] or ''),
                    '%s: C2: the state behind its file is missing' % what,
                    pts[c2.guid]['problem'])
        out = cli.ok('checkpoints', vm.folder)
        r.check('UNAVAILABLE' in out, '%s: text marks it' % what, out)
    finally:
        os.rename(hidden, x1.path)

    # Hostile recorded paths open nothing outside the VM folder.
    text = open(c2.config, 'rb').read().decode('utf-16')
    good = text
    for bad in ('C:\\..\\..\\..\\..\\..\\etc\\passwd', '/etc/passwd',
                '\\\\server\\share\\..\\..\\etc\\passwd',
                '..\\..\\..\\..\\..\\..\\etc\\passwd'):
        t = good
        for lab in ('IDE', 'SCSI'):
            tree = vm.disks[lab]
            key = c2.frozen[lab] if record == 'frozen' else c2.post[lab]
            t = t.replace(tree.win(tree.files[key].rel), bad)
        with open(c2.config, 'wb') as f:
            f.write(b'\xff\xfe' + t.encode('utf-16-le'))
        j = checkpoints(vm.folder)
        p = [p for p in j['points'] if p['id'] == c2.guid][0]
        r.check(not p['available'] and
                all(d['file'] is None and d['tip'] is None
                    for d in p['disks']),
                '%s: recorded %s opens nothing' % (what, bad), p)
    with open(c2.config, 'wb') as f:
        f.write(b'\xff\xfe' + good.encode('utf-16-le'))

    # Truncated and malformed configurations: one line naming the file.
    raw = open(c3.config, 'rb').read()
    for label, data, pattern in (
            ('truncated', raw[:len(raw) // 2], 'truncated'),
            ('mismatched end tag',
             raw.replace('</properties>'.encode('utf-16-le'),
                         '</propertie>'.encode('utf-16-le')),
             'does not match'),
            ('empty', b'', 'no element'),
            ('not XML', b'\xff\xfe' + 'hello'.encode('utf-16-le'),
             'not XML')):
        with open(c3.config, 'wb') as f:
            f.write(data)
        err = cli.fails(r, ['checkpoints', vm.folder], 2, c3.config,
                        '%s: %s XML' % (what, label))
        r.check(pattern in err and 'XML' in err,
                '%s: %s XML: says %r' % (what, label, pattern), err)
    with open(c3.config, 'wb') as f:
        f.write(raw)
    r.equal(checkpoints(vm.folder)['points'][0]['available'], True,
            '%s: restored' % what)
    r.equal(harness.changed_files(before), [],
            '%s: no disk file changed' % what)


def body():
    harness.require_plugin()
    cli.require_tool()
    served = {}
    with harness.tempdir() as tmp:
        variant(tmp, 'frozen', served)
        variant(tmp, 'post', served)


r.main(body)
