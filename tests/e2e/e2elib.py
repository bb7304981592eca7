"""Helpers shared by the end-to-end tests (tests/test-e2e-*.py).

A disk is a raw image with an MBR and one ext4 partition from 1 MiB (or a
bare ext4 file system).  Successive raw states of it become a checkpoint
chain the way a user would make one with vhdchain: the first state is
converted to a dynamic VHD with qemu-img, and every later state becomes a
differencing layer written by the plugin itself (overlay=PATH) from the 4
KiB pieces that changed (contrib/write-changes.py).

Everything here fails (harness.TestFailure), never skips, when a tool or a
capability is missing.
"""

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

import harness

TOP = harness.TOP_SRCDIR
WRITE_CHANGES = os.path.join(TOP, 'contrib', 'write-changes.py')
PYTHON = '/usr/bin/python3'      # the python that has libnbd
SECTOR = 512
PART_START = 2048 * SECTOR       # the partition's byte offset in the disk
MiB = 1 << 20


def require_root(why):
    if os.geteuid() != 0:
        raise harness.TestFailure('must run as root (%s)' % why)


def tool_env():
    """The environment for the tools: sbin folders on PATH."""
    env = dict(os.environ)
    env['PATH'] = harness.system_path('/usr/sbin', '/sbin', '/usr/bin', '/bin')
    return env


# ---------------------------------------------------------------- disks

def make_disk(path, size, rootdir, label='vhdchain', partitioned=True,
              uuid='5d1b7a62-3f0e-4c8a-9b47-2e6f1a3c5d70'):
    """A raw disk of `size` bytes holding an ext4 file system made from
    rootdir (mkfs.ext4 -d): in an MBR partition from 1 MiB, or, with
    partitioned=False, filling the disk.  Returns the file system's offset."""
    harness.require_tools('mkfs.ext4', 'sfdisk')
    env = tool_env()
    env['E2FSPROGS_FAKE_TIME'] = '1700000000'
    with open(path, 'wb') as f:
        f.truncate(size)
    mkfs = ['mkfs.ext4', '-q', '-F', '-b', '4096', '-U', uuid,
            '-E', 'hash_seed=' + uuid, '-L', label, '-d', rootdir]
    if not partitioned:
        harness.run(mkfs + [path], env=env)
        return 0
    p = subprocess.run(['sfdisk', '-q', '--label', 'dos', path],
                       input=b'start=2048, type=83\n', capture_output=True,
                       env=env)
    if p.returncode:
        raise harness.TestFailure('sfdisk failed: %s' % p.stderr.decode())
    part = path + '.part'
    with open(part, 'wb') as f:
        f.truncate(size - PART_START)
    harness.run(mkfs + [part], env=env)
    with open(part, 'rb') as src, open(path, 'r+b') as dst:
        dst.seek(PART_START)
        shutil.copyfileobj(src, dst, 4 * MiB)
    os.unlink(part)
    return PART_START


def fs_spec(raw, offset):
    """How e2fsprogs names a file system at a byte offset of an image."""
    return '%s?offset=%d' % (raw, offset) if offset else raw


def debugfs(raw, commands, offset=PART_START):
    """Change the file system in place with debugfs -w; fail on any
    complaint (debugfs itself exits 0 when a command fails)."""
    harness.require_tools('debugfs')
    script = raw + '.debugfs'
    with open(script, 'w') as f:
        f.write('\n'.join(commands) + '\n')
    try:
        p = harness.run(['debugfs', '-w', '-f', script, fs_spec(raw, offset)])
    finally:
        os.unlink(script)
    out = (p.stdout + p.stderr).decode(errors='replace').splitlines()
    bad = [l for l in out if l.strip() and not l.startswith(
        ('debugfs', 'Allocated inode:'))]
    if bad:
        raise harness.TestFailure('debugfs on %s: %s' % (raw, '; '.join(bad)))


def fs_cat(raw, path, offset=PART_START):
    """A file's bytes from the file system in raw, read with debugfs."""
    harness.require_tools('debugfs')
    return harness.run(['debugfs', '-R', 'cat ' + path,
                        fs_spec(raw, offset)]).stdout


def fs_ls(raw, folder, offset=PART_START):
    """Names in a folder of the file system in raw (without . and ..)."""
    out = harness.run(['debugfs', '-R', 'ls -p ' + folder,
                       fs_spec(raw, offset)]).stdout.decode()
    names = []
    for line in out.splitlines():
        parts = line.split('/')
        if len(parts) >= 6 and parts[5] not in ('.', '..', ''):
            names.append(parts[5])
    return sorted(names)


def fsck(raw, offset=PART_START):
    """(clean?, output) of e2fsck -fn on the file system in raw."""
    harness.require_tools('e2fsck')
    p = subprocess.run(['e2fsck', '-fn', fs_spec(raw, offset)],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       env=tool_env())
    return p.returncode == 0, (p.stdout + p.stderr).decode(errors='replace')


def copy_sparse(src, dst):
    harness.run(['cp', '--sparse=always', src, dst])
    return dst


def fs_tree(folder, state='base', blob_size=1 * MiB, seed=1):
    """The files a test disk starts with (for make_disk): /state/checkpoint
    naming the state, /state/only-<state> that exists only in it,
    /data/blob of incompressible bytes, an empty /guest."""
    rng = random.Random(seed)
    for d in ('state', 'data', 'guest'):
        os.makedirs(os.path.join(folder, d), exist_ok=True)
    with open(os.path.join(folder, 'state', 'checkpoint'), 'w') as f:
        f.write(state + '\n')
    with open(os.path.join(folder, 'state', 'only-' + state), 'w') as f:
        f.write('exists only at %s\n' % state)
    with open(os.path.join(folder, 'data', 'blob'), 'wb') as f:
        f.write(rng.randbytes(blob_size))
    return folder


def make_states(tmp, raw0, names, seed=7, offset=PART_START):
    """Raw states after raw0 (state names[0]): for each later name a copy
    of the previous state where debugfs -w names the new state in
    /state/checkpoint, replaces /state/only-<previous> by only-<name> and
    rewrites three 64 KiB pieces of /data/blob.  Returns (raws, md5s): the
    raw image of every state and the md5 of /data/blob in it."""
    raws = [raw0]
    blob = bytearray(fs_cat(raw0, '/data/blob', offset))
    md5s = [hashlib.md5(blob).hexdigest()]
    rng = random.Random(seed)
    for i in range(1, len(names)):
        name, prev = names[i], names[i - 1]
        raw = copy_sparse(raws[-1], os.path.join(tmp, name + '.raw'))
        for _ in range(3):
            at = rng.randrange(0, len(blob) // 65536) * 65536
            blob[at:at + 65536] = rng.randbytes(65536)
        md5s.append(hashlib.md5(blob).hexdigest())
        files = {'blob': bytes(blob), 'checkpoint': name.encode() + b'\n',
                 'only': ('exists only at %s\n' % name).encode()}
        for k, v in files.items():
            with open(os.path.join(tmp, k), 'wb') as f:
                f.write(v)
        debugfs(raw, [
            'cd /state', 'rm only-' + prev,
            'write %s only-%s' % (os.path.join(tmp, 'only'), name),
            'rm checkpoint',
            'write %s checkpoint' % os.path.join(tmp, 'checkpoint'),
            'cd /data', 'rm blob',
            'write %s blob' % os.path.join(tmp, 'blob')], offset)
        for k in files:
            os.unlink(os.path.join(tmp, k))
        got = fs_ls(raw, '/state', offset)
        if got != sorted(['checkpoint', 'only-' + name]):
            raise harness.TestFailure('state %s: /state holds %r' % (name, got))
        raws.append(raw)
    return raws, md5s


# ---------------------------------------------------------------- chains

def vhd_base(raw, out):
    """A dynamic VHD of exactly the raw image's size (qemu-img)."""
    harness.require_tools('qemu-img')
    harness.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'vpc',
                 '-o', 'subformat=dynamic,force_size=on', raw, out])
    return out


def add_layer(tip, old_raw, new_raw, layer):
    """A differencing layer on top of tip holding what changed from
    old_raw to new_raw, written through the plugin (overlay=layer)."""
    with harness.Nbdkit(tip, 'overlay=' + layer, readonly=False) as srv:
        harness.run([PYTHON, WRITE_CHANGES, old_raw, new_raw, srv.uri])
    if not os.path.isfile(layer):
        raise harness.TestFailure('no layer written at %s' % layer)
    return layer


def make_chain(folder, raws, names):
    """base.vhd <- names[1] <- names[2] ...: the chain whose point i reads
    as raws[i].  Returns the tips (paths), base first."""
    os.makedirs(folder, exist_ok=True)
    tips = [vhd_base(raws[0], os.path.join(folder, names[0]))]
    for i in range(1, len(raws)):
        tips.append(add_layer(tips[-1], raws[i - 1], raws[i],
                              os.path.join(folder, names[i])))
    return tips


# ---------------------------------------------------------------- recipes

RECIPES = os.path.join(TOP, 'docs', 'recipes.md')


def recipe(name):
    """The shell block marked <!-- test: name --> in docs/recipes.md."""
    with open(RECIPES) as f:
        text = f.read()
    m = re.search(r'<!-- test: %s -->\s*```sh\n(.*?)```' % re.escape(name),
                  text, re.S)
    if not m:
        raise harness.TestFailure('docs/recipes.md: no block "test: %s"'
                                  % name)
    return m.group(1)


NBDKIT_SHIM = """#!/bin/bash
# The recipes say "nbdkit vhdchain ...": run the plugin of the build tree.
args=()
for a in "$@"; do
    [ "$a" = vhdchain ] && a=%(plugin)s
    args+=("$a")
done
# Tests may log every connection (nbdkit-log-filter).
if [ -n "${VHDCHAIN_TEST_NBDKIT_LOG:-}" ]; then
    exec %(nbdkit)s --filter=log "${args[@]}" logfile="$VHDCHAIN_TEST_NBDKIT_LOG"
fi
exec %(nbdkit)s "${args[@]}"
"""


def recipe_env(folder, shims=None):
    """An environment in which the recipes' commands run against the build
    tree: `nbdkit vhdchain` loads PLUGIN (a shim that execs nbdkit, so
    socket activation's LISTEN_PID still matches), vhdchain-attach and
    vhdchain come from contrib/, plus any other shims {name: script}."""
    import shlex
    bindir = os.path.join(folder, '.recipe-bin')
    os.makedirs(bindir, exist_ok=True)
    nbdkit = shutil.which('nbdkit', path=tool_env()['PATH'])
    if nbdkit is None:
        raise harness.TestFailure('required tool missing: nbdkit')
    scripts = {'nbdkit': NBDKIT_SHIM % {
        'plugin': shlex.quote(harness.PLUGIN), 'nbdkit': nbdkit}}
    scripts.update(shims or {})
    for name, text in scripts.items():
        path = os.path.join(bindir, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, 0o755)
    env = tool_env()
    contrib = [os.path.join(TOP, 'contrib'),
               os.path.join(harness.TOP_BUILDDIR, 'contrib')]
    env['PATH'] = ':'.join([bindir] + contrib + [env['PATH']])
    env['VHDCHAIN_PLUGIN'] = harness.PLUGIN
    return env


def run_recipe(name, cwd, timeout, shims=None, env_extra=None):
    """Run a recipe block as it stands (bash -euo pipefail) in cwd; returns
    (exit status, stdout, stderr).  On timeout its whole process group is
    killed and the status is 'timeout'."""
    code = recipe(name)
    env = recipe_env(cwd, shims)
    env.update(env_extra or {})
    p = subprocess.Popen(['bash', '-euo', 'pipefail', '-c', code], cwd=cwd,
                         env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = 'timeout'
    return rc, out.decode(errors='replace'), err.decode(errors='replace')


def busy_connections_at_once(logfile):
    """From an nbdkit-log-filter log: the most connections that were open
    at the same time and each served at least one request."""
    if not os.path.exists(logfile):
        return 0
    open_now, sets, tx = set(), [], {}
    with open(logfile, errors='replace') as f:
        for line in f:
            m = re.search(r'connection=(\d+) (Connect|Disconnect)\b'
                          r'(?:.*transactions=(\d+))?', line)
            if not m:
                continue
            conn = int(m.group(1))
            if m.group(2) == 'Connect':
                open_now.add(conn)
                sets.append(set(open_now))
            else:
                open_now.discard(conn)
                tx[conn] = int(m.group(3) or 0)
    return max((sum(1 for c in s if tx.get(c, 0) > 0) for s in sets),
               default=0)


# ---------------------------------------------------------------- misc

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise harness.TestFailure('timed out after %ds waiting for %s'
                                      % (timeout, what))
        time.sleep(step)


def run_timed(cmd, timeout, **kw):
    """subprocess.run with a timeout that becomes a TestFailure."""
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure('%s: no answer in %d s'
                                  % (' '.join(cmd), timeout))
