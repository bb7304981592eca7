#!/usr/bin/python3
"""An intact Hyper-V VM folder copied to Linux works as is (issue 2).

Layout of Hyper-V 2008-2012 (FORMATS.md section 4):

    VM/Virtual Hard Disks/Disk.vhd                 the base
    VM/Snapshots/<vm guid>/<snap guid>.avhd        one per checkpoint

Every locator names Windows paths that do not exist here (C:\\ProgramData
...), and the relative locators point into the child's own folder, where
the parent is not.  vhdchain must find each parent inside the VM folder, by
name or by the path's trailing components, with the case drift copies have
("Virtual hard disks"), serve every point byte-exact, and still refuse a
parent outside the VM folder.
"""

import os
import random
import shutil
import uuid

import harness
import vhdgen as g

r = harness.Reporter('test-vmfolder')
MiB = 1 << 20
WIN_VM = 'C:\\ProgramData\\Microsoft\\Windows\\Hyper-V\\MyVM'


def build_vm(root):
    """Write the chain flat, then move it into the VM layout.
    Returns the points, now at their VM paths."""
    rng = random.Random(7)
    flat = os.path.join(root, 'flat')
    vm_guid = str(uuid.UUID(int=rng.getrandbits(128))).upper()
    snaps = [str(uuid.UUID(int=rng.getrandbits(128))).upper() + '.avhd'
             for _ in range(3)]
    c = g.Chain(flat, seed=7, expected_dir=os.path.join(root, 'expected'))
    c.base('Disk.vhd', 16 * MiB, writes=g.random_writes(rng, 16 * MiB, 40))
    where = {'Disk.vhd': WIN_VM + '\\Virtual Hard Disks\\Disk.vhd'}
    parent = 'Disk.vhd'
    for name in snaps:
        full = where[parent]
        c.child(name, writes=g.random_writes(rng, 16 * MiB, 50),
                locators=[g.w2ku(full, slot=0),
                          g.w2ru('.\\' + parent, slot=1)],
                parent_name=full)
        where[name] = WIN_VM + '\\Snapshots\\' + vm_guid + '\\' + name
        parent = name
    points = c.write()

    vm = os.path.join(root, 'MyVM')
    disks = os.path.join(vm, 'Virtual hard disks')     # case drift
    snapdir = os.path.join(vm, 'Snapshots', vm_guid)
    os.makedirs(disks)
    os.makedirs(snapdir)
    for p in points:
        dest = os.path.join(disks if p.name == 'Disk.vhd' else snapdir,
                            p.name)
        shutil.move(p.path, dest)
        p.path = dest
    return vm, points


def body():
    harness.require_plugin()
    with harness.tempdir() as tmp:
        vm, points = build_vm(tmp)
        before = harness.snapshot([p.path for p in points])
        for p in points:
            with harness.Nbdkit(p.path) as srv:
                sha, size = srv.copy_sha256(tmp)
            r.equal((sha, size), (p.sha256, os.path.getsize(
                p.expected_path)), 'point %s served byte-exact' % p.name)

        # The same tip, with the base moved out of the VM folder: refused,
        # with the escaping path named; allowed with search= or confine.
        outside = os.path.join(tmp, 'elsewhere')
        os.makedirs(outside)
        base = points[0].path
        shutil.move(base, os.path.join(outside, 'Disk.vhd'))
        os.symlink(os.path.join(outside, 'Disk.vhd'), base)
        rc, err = harness.start_must_fail(points[-1].path)
        lines = harness.error_lines(err)
        r.check(rc == 1 and len(lines) == 1 and
                'outside the allowed folders' in lines[0] and
                'elsewhere/Disk.vhd' in lines[0],
                'a parent reached through a symlink out of the VM folder '
                'is refused, naming where it leads', err)
        with harness.Nbdkit(points[-1].path, 'search=' + outside) as srv:
            sha, _ = srv.copy_sha256(tmp)
        r.equal(sha, points[-1].sha256, 'search= allows that folder')
        os.unlink(base)
        shutil.move(os.path.join(outside, 'Disk.vhd'), base)
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


r.main(body)
