"""Helpers shared by the python tests: the plugin in a real nbdkit, readers,
temporary folders, file snapshots and a small result reporter.

Rules every test follows (tests/tests.mk): a missing tool or plugin is a
failure, never a skip; exit 0 only when every check passed.
"""

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Automake's AM_TESTS_ENVIRONMENT sets these; the fallbacks let a developer
# run one test by hand from an in-tree build.
TOP_SRCDIR = os.environ.get('top_srcdir') or os.path.dirname(TESTS_DIR)
TOP_BUILDDIR = os.environ.get('top_builddir') or TOP_SRCDIR
PLUGIN = os.environ.get('PLUGIN') or os.path.join(
    TOP_BUILDDIR, 'plugin', '.libs', 'nbdkit-vhdchain-plugin.so')
SAMPLES = os.environ.get('SAMPLES') or os.path.join(
    TOP_SRCDIR, '..', 'shared', 'samples')

# contrib/run-tests-asan.sh: the folder of its nbdkit wrapper, which every
# PATH a test builds must put ahead of /usr/bin, and the sanitizer in use.
TEST_BIN = os.environ.get('VHDCHAIN_TEST_BIN', '')
SANITIZED = os.environ.get('VHDCHAIN_SANITIZED', '')


def system_path(*dirs):
    """PATH with dirs (default /usr/bin) ahead of the caller's, behind
    TEST_BIN."""
    first = [TEST_BIN] if TEST_BIN else []
    return ':'.join(first + list(dirs or ('/usr/bin',)) +
                    [os.environ.get('PATH', '')])


START_TIMEOUT = 30        # seconds for nbdkit to come up or give up
ERROR_LINE = re.compile(r'\berror:', re.IGNORECASE)


class TestFailure(Exception):
    """A precondition of the test itself failed (missing tool, ...)."""


# ---------------------------------------------------------------- tools

def require_tools(*names):
    """Fail (not skip) when a tool the test needs is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise TestFailure('required tool(s) missing: %s' % ', '.join(missing))


def require_plugin():
    if not os.path.isfile(PLUGIN):
        raise TestFailure('plugin not built: %s' % PLUGIN)
    require_tools('nbdkit')


def sample(*parts):
    path = os.path.join(SAMPLES, *parts)
    if not os.path.isfile(path):
        raise TestFailure('sample missing: %s' % path)
    return path


def run(cmd, **kw):
    """Run a command, fail with its stderr if it fails."""
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                       **kw)
    if p.returncode != 0:
        raise TestFailure('%s failed (%d): %s' % (
            ' '.join(cmd), p.returncode,
            p.stderr.decode(errors='replace').strip()))
    return p


@contextlib.contextmanager
def tempdir(prefix='vhdchain-test-'):
    """A fresh folder under $TMPDIR, removed afterwards even on failure."""
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def sha256_file(path, chunk=4 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def gunzip_to(src, folder):
    """Decompress a .gz sample into folder; return the new path."""
    import gzip
    dst = os.path.join(folder, os.path.basename(src)[:-3])
    with gzip.open(src, 'rb') as fi, open(dst, 'wb') as fo:
        shutil.copyfileobj(fi, fo, 4 << 20)
    return dst


def qemu_raw(image, out, fmt='vpc', size_calc=None):
    """qemu-img's reading of image as a raw file.

    size_calc='current_size' or 'chs' forces QEMU's choice of virtual size
    for VHD (driver option force_size_calc); None lets QEMU decide by the
    creator application."""
    require_tools('qemu-img')
    if size_calc is None:
        run(['qemu-img', 'convert', '-f', fmt, '-O', 'raw', image, out])
    else:
        spec = 'driver=%s,force_size_calc=%s,file.filename=%s' % (
            fmt, size_calc, image.replace(',', ',,'))
        run(['qemu-img', 'convert', '--image-opts', spec, '-O', 'raw', out])
    return out


@contextlib.contextmanager
def vhdimount(image, mountpoint):
    """Mount image with libvhdi's vhdimount (FUSE); yields the list of
    files it shows, base first (vhdi1 = the base, vhdiN = image).  libvhdi
    finds each parent by the basename of the header's parent name in the
    child's folder."""
    require_tools('vhdimount', 'fusermount')
    os.makedirs(mountpoint, exist_ok=True)
    run(['vhdimount', image, mountpoint])
    try:
        names = sorted(os.listdir(mountpoint), key=lambda n: int(n[4:]))
        yield [os.path.join(mountpoint, n) for n in names]
    finally:
        # Retry: the kernel may still hold a file we just closed.
        for _ in range(50):
            if subprocess.run(['fusermount', '-u', mountpoint],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(['fusermount', '-u', '-z', mountpoint],
                           capture_output=True)


# ---------------------------------------------------------------- nbdkit

def terminate(proc, timeout):
    """SIGTERM proc, give it timeout seconds, else SIGKILL; return its exit
    status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class StartError(Exception):
    def __init__(self, returncode, stderr):
        super().__init__('nbdkit did not start (exit %r):\n%s' %
                         (returncode, stderr))
        self.returncode = returncode
        self.stderr = stderr


def nbdkit_argv(sock, pidfile, tip, params, readonly=True, extra=()):
    argv = ['nbdkit', '-U', sock, '-P', pidfile, '--exit-with-parent']
    if readonly:
        argv.append('-r')
    if os.environ.get('VHDCHAIN_TEST_VERBOSE'):
        argv.append('-v')
    argv += list(extra) + [PLUGIN]
    if tip is not None:
        argv.append(tip)             # the magic first parameter: file=
    return argv + list(params)


class Nbdkit:
    """The plugin serving `tip` in a real nbdkit on a Unix socket.

        with Nbdkit(tip, 'io=pread') as srv:
            srv.uri, srv.sock, srv.connect(), srv.copy_to(path)

    Leaving the block stops nbdkit (SIGTERM) and checks it exited cleanly;
    srv.stderr holds everything it printed.  A start failure raises
    StartError with the exit status and stderr.
    """

    def __init__(self, tip, *params, readonly=True, extra=(), env=None):
        require_plugin()
        self.tip, self.params = tip, params
        self.readonly, self.extra = readonly, extra
        self.env = env               # None: inherit the test's environment
        self.proc = None
        self.stderr = ''
        self.killed = False

    def __enter__(self):
        self._dir = tempfile.mkdtemp(prefix='vhdchain-nbdkit-')
        self.sock = os.path.join(self._dir, 'sock')
        self.pidfile = os.path.join(self._dir, 'pid')
        self.uri = 'nbd+unix:///?socket=' + self.sock
        self._errpath = os.path.join(self._dir, 'stderr')
        argv = nbdkit_argv(self.sock, self.pidfile, self.tip, self.params,
                           self.readonly, self.extra)
        with open(self._errpath, 'wb') as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err,
                                         env=self.env)
        try:
            self._wait_ready()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _wait_ready(self):
        # nbdkit writes the pidfile once its socket listens.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if os.path.exists(self.pidfile) and os.path.getsize(self.pidfile):
                return
            rc = self.proc.poll()
            if rc is not None:
                raise StartError(rc, self._read_stderr())
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise StartError('timeout', self._read_stderr())
            time.sleep(0.01)

    def _read_stderr(self):
        with open(self._errpath, 'rb') as f:
            self.stderr = f.read().decode(errors='replace')
        return self.stderr

    def stop(self):
        """SIGTERM, wait, return the exit status (0 is a clean exit)."""
        if self.proc is None:
            return None
        rc, self.proc = terminate(self.proc, 20), None
        self._read_stderr()
        return rc

    def kill(self):
        """SIGKILL nbdkit (a crash), wait for it and return its stderr.
        Leaving the with block afterwards does not count it as unclean."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.killed = True
            self._read_stderr()
            self.proc = None
        return self.stderr

    def _cleanup(self):
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __exit__(self, et, ev, tb):
        rc = self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        if et is None and rc != 0 and not (self.killed and rc is None):
            raise AssertionError('nbdkit exited with %r on SIGTERM:\n%s'
                                 % (rc, self.stderr))
        return False

    # -- clients

    def connect(self):
        """A connected python-libnbd handle."""
        import nbd
        h = nbd.NBD()
        h.connect_unix(self.sock)
        return h

    def copy_to(self, out):
        """nbdcopy the whole export into a file."""
        require_tools('nbdcopy')
        run(['nbdcopy', self.uri, out])
        return out

    def copy_sha256(self, folder):
        """sha256 and size of the whole export, read with nbdcopy."""
        out = self.copy_to(os.path.join(folder, 'nbdcopy.raw'))
        try:
            return sha256_file(out), os.path.getsize(out)
        finally:
            os.unlink(out)


def start_must_fail(tip, *params, readonly=True, extra=()):
    """Start nbdkit expecting it to refuse; return (returncode, stderr).

    Raises AssertionError when nbdkit comes up instead."""
    try:
        with Nbdkit(tip, *params, readonly=readonly, extra=extra) as srv:
            pass
    except StartError as e:
        return e.returncode, e.stderr
    raise AssertionError('nbdkit started but should have refused:\n%s'
                         % srv.stderr)


def error_lines(stderr):
    return [l for l in stderr.splitlines() if ERROR_LINE.search(l)]


# ---------------------------------------------------------------- reading

def read_ranges(h, size, count, rng, max_len=300000):
    """Random (offset, length) pairs inside [0, size) honouring the
    export's minimum block size, always including both ends."""
    import nbd
    try:
        align = max(1, h.get_block_size(nbd.SIZE_MINIMUM))
    except nbd.Error:
        align = 1
    ranges = [(0, min(size, 4096)), (max(0, size - 4096), min(size, 4096))]
    for _ in range(count):
        off = rng.randrange(0, size) // align * align
        n = rng.randint(1, max_len) // align * align or align
        ranges.append((off, min(n, size - off)))
    return [(o, n) for o, n in ranges if n > 0]


def compare_random_reads(h, expected_file, size, count, seed):
    """Read random ranges through NBD and compare with expected_file.

    Returns a list of mismatch descriptions (empty when all equal)."""
    bad = []
    rng = random.Random(seed)
    with open(expected_file, 'rb') as f:
        for off, n in read_ranges(h, size, count, rng):
            got = h.pread(n, off)
            f.seek(off)
            want = f.read(n)
            if got != want:
                first = next(i for i in range(n) if got[i] != want[i])
                bad.append('range [%d, +%d): first difference at byte %d'
                           % (off, n, off + first))
    return bad


# ---------------------------------------------------------------- snapshots

def snapshot(paths):
    """Content hash, size and mtime of each file, to prove none changed."""
    snap = {}
    for p in paths:
        st = os.stat(p)
        snap[p] = (sha256_file(p), st.st_size, st.st_mtime_ns)
    return snap


def changed_files(before):
    """Files whose content, size or mtime differ from the snapshot."""
    after = snapshot(before.keys())
    return sorted(p for p in before if before[p] != after[p])


# ---------------------------------------------------------------- reporter

class Reporter:
    """Counts checks; prints one line each; exit status 1 if any failed.

        r = Reporter('test-x')
        r.check(a == b, 'what is compared', detail)
        r.run(function)          # exceptions become failures, not crashes
        sys.exit(r.finish())
    """

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = []

    def check(self, ok, what, detail=''):
        if ok:
            self.passed += 1
            print('ok   %s' % what, flush=True)
        else:
            self.failed.append(what)
            print('FAIL %s%s' % (what, ('\n     ' + str(detail).replace(
                '\n', '\n     ')) if detail else ''), flush=True)
        return ok

    def equal(self, got, want, what):
        return self.check(got == want, what,
                          'got:  %r\nwant: %r' % (got, want))

    def same(self, got, want, what):
        """equal() for bytes too long to print: says where they part."""
        return self.check(got == want, what, 'first difference at %r'
                          % first_difference(got, want))

    def run(self, fn, *args, what=None):
        """Call fn; an exception is reported as one failure."""
        try:
            return fn(*args)
        except Exception as e:
            label = what or getattr(fn, '__name__', 'step')
            self.failed.append(label)
            print('FAIL %s: %s: %s' % (label, type(e).__name__, e), flush=True)
            traceback.print_exc(file=sys.stdout)
            return None

    def main(self, fn):
        """Run fn (the test body) and exit with the verdict."""
        self.run(fn, what='test body')
        sys.exit(self.finish())

    def finish(self):
        total = self.passed + len(self.failed)
        if self.failed:
            print('%s: %d of %d checks FAILED:' % (self.name, len(self.failed),
                                                  total))
            for f in self.failed:
                print('  - ' + f)
            return 1
        if total == 0:
            print('%s: no checks ran' % self.name)
            return 1
        print('%s: all %d checks passed' % (self.name, total))
        return 0


# ---------------------------------------------------------------- VHD check

def vhd_structure_problems(path, parent=None, block_size=None):
    """Structural problems of a dynamic or differencing VHD file, as a list
    of strings (empty: sound).  Read with vhdgen's field tables, not with
    the code under test.  Checks both footers (cookie, checksum), the
    dynamic header, that every BAT entry's bitmap and block lie inside the
    file before the trailing footer, past the BAT, without overlapping each
    other, the header or the locator payloads; with parent= (a VHD path)
    that the parent identity matches that file's footer id."""
    size = os.path.getsize(path)
    if size % 512 or size < 512 + 1024 + 512:
        return ['file size %d is not a sane VHD size' % size]
    with open(path, 'rb') as f:
        def at(off, n):
            f.seek(off)
            return f.read(n)
        return _vhd_problems(at, size, parent, block_size)


def _vhd_problems(at, size, parent, block_size):
    import struct
    import vhdgen as g
    bad = []
    trailer, copy = at(size - 512, 512), at(0, 512)
    for name, foot in (('trailing footer', trailer), ('footer copy', copy)):
        if foot[:8] != b'conectix':
            bad.append('%s: no conectix cookie' % name)
        elif g.vhd_checksum(foot, g.FOOTER_CHECKSUM_AT) != \
                struct.unpack_from('>I', foot, g.FOOTER_CHECKSUM_AT)[0]:
            bad.append('%s: bad checksum' % name)
    if bad:
        return bad
    if trailer != copy:
        bad.append('footer copy at 0 differs from the trailing footer')
    foot = g._unpack_fields(trailer, g.FOOTER_FIELDS)
    if foot['disk_type'] not in (g.DYNAMIC, g.DIFFERENCING):
        return bad + ['disk type %d' % foot['disk_type']]
    hoff = foot['data_offset']
    if hoff % 512 or hoff + 1024 > size - 512:
        return bad + ['header offset %d outside the file' % hoff]
    hraw = at(hoff, 1024)
    if hraw[:8] != b'cxsparse':
        return bad + ['dynamic header: no cxsparse cookie']
    if g.vhd_checksum(hraw, g.HEADER_CHECKSUM_AT) != \
            struct.unpack_from('>I', hraw, g.HEADER_CHECKSUM_AT)[0]:
        bad.append('dynamic header: bad checksum')
    hdr = g._unpack_fields(hraw, g.HEADER_FIELDS)
    bs, n = hdr['block_size'], hdr['max_table_entries']
    if block_size is not None and bs != block_size:
        bad.append('block size %d, want %d' % (bs, block_size))
    if bs & (bs - 1) or bs < 512:
        return bad + ['block size %d' % bs]
    if n * bs < foot['current_size']:
        bad.append('%d BAT entries of %d bytes do not cover %d bytes'
                   % (n, bs, foot['current_size']))
    bm = g.bitmap_size(bs)
    bat_off = hdr['table_offset']
    end = size - 512                      # data must end before the footer
    if bat_off % 512 or bat_off + 4 * n > end:
        return bad + ['BAT at %d (%d entries) outside the file'
                      % (bat_off, n)]
    used = [(0, 512, 'footer copy'), (hoff, hoff + 1024, 'header'),
            (bat_off, bat_off + g.roundup(4 * n, 512), 'BAT')]
    for slot in range(8):
        code, space, length, _, off = g.LOCATOR_ENTRY.unpack_from(
            hraw, g.LOCATOR_TABLE + 24 * slot)
        if code == bytes(4):
            continue
        if off + length > end:
            bad.append('locator %d payload outside the file' % slot)
        used.append((off, off + max(length, 1), 'locator %d' % slot))
    bat = struct.unpack('>%dI' % n, at(bat_off, 4 * n))
    for b, e in enumerate(bat):
        if e == g.UNALLOCATED:
            continue
        at = e * 512
        if at + bm + bs > end:
            bad.append('BAT entry %d: block at %d (+%d) runs past the data '
                       'end %d' % (b, at, bm + bs, end))
        used.append((at, at + bm + bs, 'block %d' % b))
    used.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(used, used[1:]):
        if b0 < a1:
            bad.append('%s at %d overlaps %s at %d' % (bn, b0, an, a0))
    if parent is not None:
        want = g.read_footer(parent)['unique_id']
        if hdr['parent_unique_id'] != want:
            bad.append('parent id %s, want %s (the footer id of %s)'
                       % (hdr['parent_unique_id'].hex(), want.hex(), parent))
    return bad


def read_all(h, size, chunk=4 << 20):
    """The whole export through a libnbd handle."""
    return b''.join(h.pread(min(chunk, size - off), off)
                    for off in range(0, size, chunk))


def first_difference(got, want):
    """Index of the first differing byte (len of the shorter if one is a
    prefix of the other), or None when equal."""
    if got == want:
        return None
    n = min(len(got), len(want))
    lo, hi = 0, n
    while hi - lo > 4096:       # bisect on slices: fast for big buffers
        mid = (lo + hi) // 2
        if got[lo:mid] != want[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if got[i] != want[i]:
            return i
    return n


def allow_unaligned(h):
    """Let libnbd send requests that are not multiples of the export's
    minimum block size (the plugin serves them; libnbd refuses them by
    default).  Returns h."""
    import nbd
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
    return h
