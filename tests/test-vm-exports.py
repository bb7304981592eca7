#!/usr/bin/python3
"""vm=FOLDER: one NBD export per checkpoint of a Hyper-V VM (issue 6).

A Hyper-V 2008 VM folder with a branched checkpoint tree (C1 -> {C2,
C3 -> C4 -> Now}) and two disks, built by tests/hypervgen.py, whose
configurations record the AVHD made when each checkpoint was taken (the
trap: that file holds what changed after the checkpoint; the state is its
parent).  Served with vm=, nbdinfo --list must show every checkpoint by
name with its creation time and disks, each export (by name or GUID) must
be its checkpoint's state byte for byte, the default export Now (or
checkpoint=), disk= must pick the other disk, a checkpoint whose disk is
missing is listed as unavailable while the others still serve, and
writes to one export never reach the chain.
"""

import json
import os
import time
import urllib.parse

import harness
import hypervgen

r = harness.Reporter('test-vm-exports')
NAMES = ['Before update', 'After update', 'Branch', 'Branch again', 'Now']


def uri(srv, name):
    return 'nbd+unix:///%s?socket=%s' % (urllib.parse.quote(name), srv.sock)


def served_sha(srv, name, tmp):
    out = os.path.join(tmp, 'copy.raw')
    harness.run(['nbdcopy', uri(srv, name), out])
    try:
        return harness.sha256_file(out)
    finally:
        os.unlink(out)


def listing(srv):
    """Export names and descriptions, as NBD_OPT_LIST gives them (nbdinfo
    --list would also open each one, which an unavailable one refuses)."""
    import nbd
    found = {}
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.sock)
    h.opt_list(lambda name, desc: found.__setitem__(name, desc) or 0)
    h.opt_abort()
    return found


def states(vm, label):
    """Expected sha256 of each point's state on one disk, in NAMES order."""
    tree = vm.disks[label]
    keys = [c.frozen[label] for c in vm.checkpoints] + [vm.now[label]]
    return [tree.files[k].sha256 for k in keys]


def check_listing(vm, srv):
    p = harness.run(['nbdinfo', '--list', '--json', srv.uri])
    lst = {e['export-name']: e.get('description', '')
           for e in json.loads(p.stdout)['exports']}
    r.equal(sorted(lst), sorted(NAMES), 'nbdinfo --list: one export per '
            'checkpoint and Now, by name')
    for c in vm.checkpoints:
        when = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(c.created))
        d = lst.get(c.name, '')
        r.check(c.guid in d and when in d and 'IDE 0:0' in d and
                'SCSI 0:0' in d, 'description of %s: GUID, creation time, '
                'disks' % c.name, d)


def body():
    harness.require_plugin()
    harness.require_tools('nbdinfo', 'nbdcopy')
    with harness.tempdir() as tmp:
        vm = hypervgen.build_vm(tmp, layout='2008', config='xml',
                                record='post', seed=5)
        before = harness.snapshot([f.path for f in vm.files])
        ide, scsi = states(vm, 'IDE'), states(vm, 'SCSI')

        with harness.Nbdkit(None, 'vm=' + vm.folder) as srv:
            check_listing(vm, srv)
            for name, want in zip(NAMES, ide):
                r.equal(served_sha(srv, name, tmp), want,
                        'export %r is its state (IDE disk)' % name)
            for c, want in zip(vm.checkpoints, ide):
                r.equal(served_sha(srv, c.guid.upper(), tmp), want,
                        'export by GUID %s' % c.guid)
            r.equal(served_sha(srv, '', tmp), ide[-1],
                    'the default export is Now')

        with harness.Nbdkit(None, 'vm=' + vm.folder, 'disk=SCSI 0:0',
                            'checkpoint=Before update') as srv:
            for name, want in zip(NAMES, scsi):
                r.equal(served_sha(srv, name, tmp), want,
                        'disk=SCSI 0:0: export %r' % name)
            r.equal(served_sha(srv, '', tmp), scsi[0],
                    'checkpoint= picks the default export')

        # Writes to a checkpoint go to its own temporary layer.
        with harness.Nbdkit(None, 'vm=' + vm.folder, readonly=False) as srv:
            import nbd
            h = nbd.NBD()
            h.set_export_name('Branch')
            h.connect_unix(srv.sock)
            h.pwrite(b'\xAA' * 4096, 8192)
            h.flush()
            r.equal(h.pread(4096, 8192), b'\xAA' * 4096,
                    'a write to an export reads back')
            h.shutdown()
            r.equal(served_sha(srv, 'Before update', tmp), ide[0],
                    'other exports do not see it')
        r.equal(harness.changed_files(before), [], 'chain files unchanged')

        # A checkpoint whose disk is gone: listed unavailable, others serve.
        c2 = vm.checkpoints[1]
        os.unlink(vm.disks['IDE'].files[c2.post['IDE']].path)
        with harness.Nbdkit(None, 'vm=' + vm.folder) as srv:
            lst = listing(srv)
            r.check('unavailable' in lst.get('After update', ''),
                    'a checkpoint with a missing disk is listed unavailable',
                    lst.get('After update'))
            r.equal(served_sha(srv, 'Branch', tmp), ide[2],
                    'the other checkpoints still serve')
            p = harness.subprocess.run(
                ['nbdcopy', uri(srv, 'After update'), 'null:'],
                capture_output=True)
            r.check(p.returncode != 0, 'the unavailable export refuses to '
                    'open', p.stderr)
            r.check('unavailable' in srv._read_stderr(),
                    'the server says why', srv.stderr[-500:])


r.main(body)
