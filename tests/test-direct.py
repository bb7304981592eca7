#!/usr/bin/python3
"""direct=true (issue 4): the chain read with O_DIRECT through aligned
bounce buffers gives the same bytes, for requests of any alignment and for
a disk whose size is not a multiple of 4 KiB, with both engines; a file
system without O_DIRECT makes nbdkit refuse to start, saying so.
"""

import os
import random
import subprocess

import harness
import vhdgen as g

r = harness.Reporter('test-direct')
MiB = 1 << 20


def build_chain(folder):
    rng = random.Random(21)
    c = g.Chain(folder, seed=21)
    size = 10 * MiB + 3 * 512              # the last sector ends off 4 KiB
    c.base('base.vhd', size, writes=g.random_writes(rng, size, 40))
    for n in range(1, 4):
        c.child('snap%d.avhd' % n,
                writes=g.random_writes(rng, size, 60, max_sectors=50))
    return c.write()[-1]


def body():
    harness.require_plugin()
    with harness.tempdir() as tmp:
        tip = build_chain(tmp)
        before = harness.snapshot([os.path.join(tmp, f)
                                   for f in os.listdir(tmp)
                                   if f.endswith('vhd')])
        for engine in ('io=pread', 'io=uring'):
            with harness.Nbdkit(tip.path, 'direct=true', engine) as srv:
                sha, size = srv.copy_sha256(tmp)
                r.equal((sha, size), (tip.sha256, tip.size),
                        '%s direct=true: whole disk byte-exact' % engine)
                h = srv.connect()
                harness.allow_unaligned(h)
                bad = harness.compare_random_reads(h, tip.expected_path,
                                                   tip.size, 80, seed=5)
                r.equal(bad, [], '%s direct=true: unaligned random reads'
                        % engine)
                h.shutdown()
        # /dev/shm is tmpfs; whether it takes O_DIRECT depends on the
        # kernel, so the test checks that either outcome is stated right.
        shm = os.path.join('/dev/shm', 'vhdchain-direct-%d' % os.getpid())
        os.makedirs(shm)
        try:
            c = g.Chain(shm, seed=1)
            c.base('base.vhd', MiB, writes=[(0, b'\x55' * 4096)])
            p = c.write()[-1]
            fd = None
            try:
                fd = os.open(p.path, os.O_RDONLY | os.O_DIRECT)
                supported = True
            except OSError:
                supported = False
            finally:
                if fd is not None:
                    os.close(fd)
            if supported:
                with harness.Nbdkit(p.path, 'direct=true') as srv:
                    r.equal(srv.copy_sha256(tmp)[0], p.sha256,
                            'direct=true on tmpfs (which takes O_DIRECT)')
            else:
                rc, err = harness.start_must_fail(p.path, 'direct=true')
                r.check(rc == 1 and 'O_DIRECT' in err,
                        'no O_DIRECT: nbdkit refuses, saying so', err)
        finally:
            subprocess.run(['rm', '-rf', shm])
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


r.main(body)
