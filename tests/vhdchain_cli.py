"""Helpers for the tests of the vhdchain command (tests/test-cli-*.py).

The tool is $top_builddir/contrib/vhdchain.  run() gives (status, stdout,
stderr); fails() runs a command that must fail and checks the documented
exit status and the one-line "vhdchain: ..." message.  Importing this puts
/usr/bin first in PATH.
"""

import json
import os
import subprocess

import harness

VHDCHAIN = os.path.join(harness.TOP_BUILDDIR, 'contrib', 'vhdchain')

# The system tools (qemu-img, nbdkit, nbdinfo, vhdimount, podchecker) come
# first, whatever the caller's PATH holds.
os.environ['PATH'] = harness.system_path()


def check_passes(r, path, what):
    """`vhdchain check PATH` exits 0 and finds no error (a check of r)."""
    rc, out, err = run('check', path)
    return r.check(rc == 0 and ' 0 errors' in out,
                   '%s: check passes' % what, out + err)


def require_tool():
    if not os.access(VHDCHAIN, os.X_OK):
        raise harness.TestFailure('vhdchain not built: %s' % VHDCHAIN)


def run(*args, env=None, cwd=None):
    """(exit status, stdout, stderr) of `vhdchain args...`."""
    p = subprocess.run([VHDCHAIN] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       env=env, cwd=cwd)
    return (p.returncode, p.stdout.decode(errors='replace'),
            p.stderr.decode(errors='replace'))


def ok(*args, **kw):
    """Run, raise TestFailure unless it exits 0; return stdout."""
    rc, out, err = run(*args, **kw)
    if rc != 0:
        raise harness.TestFailure('vhdchain %s: exit %d: %s' % (
            ' '.join(map(str, args)), rc, err.strip()))
    return out


def json_of(*args, **kw):
    return json.loads(ok(*args, **kw))


def fails(r, args, status, pattern, what):
    """The command exits with `status` and says exactly one line on
    stderr, "vhdchain: ..." containing `pattern`."""
    rc, out, err = run(*args)
    lines = err.splitlines()
    r.equal(rc, status, '%s: exit status' % what)
    r.check(len(lines) >= 1 and all(l.startswith('vhdchain: ')
                                    for l in lines) and
            pattern in err and len(lines) == 1,
            '%s: one line "vhdchain: ...%s..."' % (what, pattern), err)
    return err


def read_export(tip, folder, *params):
    """The whole virtual disk of tip as the plugin serves it."""
    with harness.Nbdkit(tip, *params) as srv:
        out = srv.copy_to(os.path.join(folder, 'export.raw'))
    with open(out, 'rb') as f:
        data = f.read()
    os.unlink(out)
    return data


def sector_ranges(a, b, sector=512):
    """Merged [offset, length] ranges of the sectors where a and b differ
    (b may be longer: its extra bytes compare against zeros)."""
    n = max(len(a), len(b))
    a = a + bytes(n - len(a))
    b = b + bytes(n - len(b))
    out = []
    for off in range(0, n, sector):
        if a[off:off + sector] != b[off:off + sector]:
            if out and out[-1][0] + out[-1][1] == off:
                out[-1][1] += sector
            else:
                out.append([off, sector])
    return out
