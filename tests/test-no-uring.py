#!/usr/bin/python3
"""The pread fallback (issue 4): io=auto reads correctly where io_uring is
refused, and says so once in the debug log; io=uring then refuses to start.

io_uring is refused for nbdkit by tests/no-uring, which installs a seccomp
filter making io_uring_setup(2) fail with ENOSYS (what container profiles
do) and then runs the command; the whole machine is left alone.
"""

import os
import random
import subprocess

import harness
import vhdgen as g

r = harness.Reporter('test-no-uring')
MiB = 1 << 20
NO_URING = os.path.join(harness.TOP_BUILDDIR, 'tests', 'no-uring')
FALLBACK = 'io_uring unavailable'


def build_chain(folder):
    rng = random.Random(4)
    c = g.Chain(folder, seed=4)
    c.base('base.vhd', 8 * MiB, writes=g.random_writes(rng, 8 * MiB, 40))
    for n in range(1, 4):
        c.child('snap%d.avhd' % n,
                writes=g.random_writes(rng, 8 * MiB, 60, max_sectors=40))
    return c.write()[-1]


def serve_and_copy(tip, out, engine, wrapped):
    """nbdkit -v [under no-uring] serving tip; nbdcopy it to out.
    Returns (exit status, stderr)."""
    argv = ['nbdkit', '-r', '-v', '-U', '-', harness.PLUGIN, tip, engine,
            '--run', 'nbdcopy "$uri" ' + out]
    if wrapped:
        argv = [NO_URING] + argv
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    return p.returncode, p.stderr.decode(errors='replace')


def body():
    harness.require_plugin()
    harness.require_tools('nbdcopy')
    r.check(os.access(NO_URING, os.X_OK), 'tests/no-uring is built', NO_URING)
    with harness.tempdir() as tmp:
        tip = build_chain(tmp)
        before = harness.snapshot([os.path.join(tmp, f)
                                   for f in os.listdir(tmp)
                                   if f.endswith('vhd')])
        out = os.path.join(tmp, 'out.raw')

        for engine, wrapped in (('io=auto', False), ('io=uring', False),
                                ('io=pread', False), ('io=auto', True),
                                ('io=pread', True)):
            what = '%s%s' % (engine, ' without io_uring' if wrapped else '')
            rc, err = serve_and_copy(tip.path, out, engine, wrapped)
            if not r.check(rc == 0, what + ': served', err[-2000:]):
                continue
            r.equal(harness.sha256_file(out), tip.sha256,
                    what + ': bytes equal the expected image')
            said = err.count(FALLBACK)
            if engine == 'io=auto' and wrapped:
                r.equal(said, 1, what + ': the fallback is said exactly once')
            else:
                r.equal(said, 0, what + ': no fallback message')
            os.unlink(out)

        rc, err = serve_and_copy(tip.path, out, 'io=uring', True)
        r.check(rc != 0 and 'io_uring is not available' in err,
                'io=uring without io_uring: refuses to start, saying why',
                err[-2000:])
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


r.main(body)
