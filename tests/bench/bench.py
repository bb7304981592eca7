#!/usr/bin/python3
"""make bench: vhdchain's speed as ratios against references run side by side.

Never a test: nothing here asserts a time.  Every vhdchain number is set
beside a reference measured by this same run on this same machine, and the
ratios are compared with the targets below; the verdicts are printed, not
enforced (exit status 0 unless the bench itself could not run).

What runs (all servers on Unix sockets in a temporary folder):

  chains    tests/bench/chains.py, built with tests/vhdgen.py and cached in
            $BENCH_DIR (default /var/tmp/vhdchain-bench): a 1 GiB chain of
            64 files (fully allocated random base, 63 fragmented layers),
            used at depths 1, 8 and 64 with the flattened raw image of each,
            a 1 GiB VHDX chain of 8 files built with tests/vhdxgen.py (the
            same recipe: fully allocated random base.vhdx, 7 fragmented
            .avhdx layers) with the raw images of depths 1 and 8, and a
            2040 GiB chain of 64 sparse files for memory and start-up.
  servers   vhdchain io=auto and io=pread; `nbdkit file` on the flattened
            raw image (the limit of this NBD stack); qemu-nbd -r -f vpc on
            the dynamic base (depth 1 only: QEMU misreads differencing VHD);
            for VHDX (rows x8.*, x1.*) the same at depth 8, and on the base
            alone qemu-nbd -r -f vhdx beside vhdchain (QEMU cannot read
            differencing VHDX at all).
  reads     sequential: nbdcopy URI null:, every server of a depth up at
            once, passes interleaved round by round (round 0 a warm-up),
            $BENCH_SEQ_REPEAT passes (default 5);
            random: fio --ioengine=nbd randread 4 KiB, queue depth 32,
            $BENCH_RUNTIME seconds (default 10), $BENCH_RAND_REPEAT runs
            per server (default 2), interleaved likewise;
            cold cache: depth 64, io=uring against io=pread (and nbdkit
            file for context), page cache dropped before each pass,
            $BENCH_REPEAT passes (default 3); with nbdcopy's defaults
            (rows cold.*) and with one 4 MiB request at a time (cold1.*).
  writes    fio write 1 MiB (queue depth 8, end_fsync) over the whole disk
            and fio randwrite 4 KiB (queue depth 32, end_fsync, for
            $BENCH_RUNTIME s), each against a fresh writable layer on the
            depth-1 chain and against `nbdkit file` on a fresh copy of the
            depth-1 raw image ($BENCH_REPEAT passes, alternating); the
            sequential write also on a fresh sparse raw file for context;
            then reads of what was just written (every block in the layer).
  CLI       (issue 9) vhdchain convert of the depth-8 VHD chain to raw and
            to .vhd against qemu-img convert of its flattened raw image to
            raw and vpc, not synced (both tools' defaults) and synced
            (--flush against -t writeback); vhdchain merge --into base.vhd
            on a fresh copy of the depth-8 chain (always synced) against
            the synced qemu-img convert to vpc.  Times become speeds
            (1 GiB / wall time), so ratios are qemu-img time / vhdchain
            time; unsynced pairs $BENCH_CLI_REPEAT rounds (default 8)
            after a warm-up, synced ones and merge half as many (at least
            $BENCH_REPEAT), tools alternating which goes first; outputs
            checked in full once.
  2 TiB     peak RSS (VmHWM) of nbdkit after start-up, after an nbdcopy pass
            and after random reads, and the time from exec to ready (the
            pid file), against `nbdkit file` on a sparse raw file as large.

Each result is the best of its passes (the one least disturbed by other
work on this small machine); every pass and the median are in the JSON.
The 2 TiB start-up time is the median of its starts.

Every vhdchain and qemu-nbd server is checked first with random reads
against the expected image, so a fast wrong answer shows as "WRONG DATA".

Results: one table on stdout, one line per target, and the same as JSON in
$BENCH_JSON (default $BENCH_DIR/bench-results.json).

Environment: PLUGIN (from make), BENCH_DIR, BENCH_JSON, BENCH_REPEAT,
BENCH_SEQ_REPEAT, BENCH_RAND_REPEAT, BENCH_RUNTIME, BENCH_CLI_REPEAT,
BENCH_ONLY (comma list of sections: cached, vhdx, cold, writes, cli, huge;
default all).
"""

import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import chains                                      # noqa: E402
import harness                                     # noqa: E402

# The system tools (nbdkit, fio, qemu-nbd) and python3-libnbd are under
# /usr/bin; a pyenv or venv earlier in PATH must not shadow them.
os.environ['PATH'] = '/usr/bin:/bin:/usr/sbin:/sbin:' + \
    os.environ.get('PATH', '')

PLUGIN = harness.PLUGIN
VHDCHAIN = os.path.join(harness.TOP_BUILDDIR, 'contrib', 'vhdchain')
BENCH_DIR = os.environ.get('BENCH_DIR') or '/var/tmp/vhdchain-bench'
BENCH_JSON = os.environ.get('BENCH_JSON') or os.path.join(
    BENCH_DIR, 'bench-results.json')
REPEAT = int(os.environ.get('BENCH_REPEAT') or 3)
# Cached sequential passes take well under a second each: take more.
SEQ_REPEAT = int(os.environ.get('BENCH_SEQ_REPEAT') or max(REPEAT, 5))
RAND_REPEAT = int(os.environ.get('BENCH_RAND_REPEAT') or 2)
# CLI commands take about a second each and other work on the machine
# throws single runs about (a slow mode 2-4 times slower): take more.
CLI_REPEAT = int(os.environ.get('BENCH_CLI_REPEAT') or max(REPEAT, 8))
CLI_SYNC_REPEAT = max(REPEAT, CLI_REPEAT // 2)
RUNTIME = int(os.environ.get('BENCH_RUNTIME') or 10)
ONLY = set(filter(None, (os.environ.get('BENCH_ONLY') or
                         'cached,vhdx,cold,writes,cli,huge').split(',')))
MB = 1e6
GiB = 1 << 30
CLK_TCK = os.sysconf('SC_CLK_TCK')
START_TIMEOUT = 60

# (key, numerator row, denominator row, minimum ratio, what)
TARGETS = [
    ('d1-seq-vs-file', 'd1.auto.seq', 'd1.file.seq', 0.9,
     'depth 1 sequential read vs nbdkit file'),
    ('d1-rand-vs-file', 'd1.auto.rand', 'd1.file.rand', 0.9,
     'depth 1 random 4K read vs nbdkit file'),
    ('d8-seq-vs-file', 'd8.auto.seq', 'd8.file.seq', 0.9,
     'depth 8 sequential read vs nbdkit file'),
    ('d8-rand-vs-file', 'd8.auto.rand', 'd8.file.rand', 0.9,
     'depth 8 random 4K read vs nbdkit file'),
    ('d64-seq-vs-file', 'd64.auto.seq', 'd64.file.seq', 0.9,
     'depth 64 sequential read vs nbdkit file'),
    ('d64-rand-vs-file', 'd64.auto.rand', 'd64.file.rand', 0.9,
     'depth 64 random 4K read vs nbdkit file'),
    ('d64-seq-vs-d1', 'd64.auto.seq', 'd64.d1auto.seq', 0.9,
     'depth 64 sequential read vs depth 1 (side by side)'),
    ('d64-rand-vs-d1', 'd64.auto.rand', 'd64.d1auto.rand', 0.9,
     'depth 64 random 4K read vs depth 1 (side by side)'),
    ('d1-seq-vs-qemu', 'd1.auto.seq', 'd1.qemu.seq', 1.3,
     'depth 1 sequential read vs qemu-nbd'),
    ('d1-rand-vs-qemu', 'd1.auto.rand', 'd1.qemu.rand', 1.3,
     'depth 1 random 4K read vs qemu-nbd'),
    ('vhdx-d8-seq-vs-file', 'x8.auto.seq', 'x8.file.seq', 0.9,
     'VHDX depth 8 sequential read vs nbdkit file'),
    ('vhdx-d8-rand-vs-file', 'x8.auto.rand', 'x8.file.rand', 0.9,
     'VHDX depth 8 random 4K read vs nbdkit file'),
    ('cold-uring-vs-pread', 'cold.uring.seq', 'cold.pread.seq', 2.0,
     'cold-cache depth 64 sequential read, io=uring vs io=pread'),
    ('write-seq-vs-file', 'w.vhdchain.seqwrite', 'w.file.seqwrite', 0.7,
     'sequential 1 MiB write vs nbdkit file'),
    ('write-rand-vs-file', 'w.vhdchain.randwrite', 'w.file.randwrite', 0.5,
     'random 4K write vs nbdkit file'),
    ('cli-convert-raw', 'cli.raw.vhdchain', 'cli.raw.qemu', 0.7,
     'convert d8 -> raw vs qemu-img convert, not synced'),
    ('cli-convert-vhd', 'cli.vhd.vhdchain', 'cli.vhd.qemu', 0.7,
     'convert d8 -> vhd vs qemu-img convert -O vpc, not synced'),
    ('cli-convert-raw-sync', 'cli.rawsync.vhdchain', 'cli.rawsync.qemu', 0.7,
     'convert --flush -> raw vs qemu-img -t writeback'),
    ('cli-convert-vhd-sync', 'cli.vhdsync.vhdchain', 'cli.vhdsync.qemu', 0.7,
     'convert --flush -> vhd vs qemu-img -t writeback -O vpc'),
    ('cli-merge', 'cli.merge.vhdchain', 'cli.vhdsync.qemu', 0.7,
     'merge --into base vs qemu-img -t writeback -O vpc'),
]

# Each row's reference for the ratio column of the table.
REFERENCE = {}
for _d in (1, 8, 64):
    for _w in ('seq', 'rand'):
        for _s in ('auto', 'pread', 'qemu'):
            REFERENCE['d%d.%s.%s' % (_d, _s, _w)] = 'd%d.file.%s' % (_d, _w)
for _w in ('seqwrite', 'randwrite', 'seq', 'rand'):
    REFERENCE['w.vhdchain.' + _w] = 'w.file.' + _w
REFERENCE['w.sparse.seqwrite'] = 'w.file.seqwrite'
for _w in ('seq', 'rand'):
    for _s in ('auto', 'pread'):
        REFERENCE['x8.%s.%s' % (_s, _w)] = 'x8.file.' + _w
    REFERENCE['x1.auto.' + _w] = 'x1.qemu.' + _w
for _op in ('raw', 'vhd', 'rawsync', 'vhdsync'):
    REFERENCE['cli.%s.vhdchain' % _op] = 'cli.%s.qemu' % _op
REFERENCE['cli.merge.vhdchain'] = 'cli.vhdsync.qemu'
for _c in ('cold', 'cold1'):
    REFERENCE[_c + '.uring.seq'] = _c + '.pread.seq'
    REFERENCE[_c + '.pread.seq'] = _c + '.file.seq'


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- servers

class Server:
    """One NBD server on a Unix socket in its own temporary folder.

    kind: 'vhdchain', 'file' or 'qemu' (-f fmt).  Ready when its pid file
    is written (both nbdkit and qemu-nbd write it once the socket listens)."""

    def __init__(self, kind, target, params=(), readonly=True, env=None,
                 fmt='vpc'):
        self.kind, self.target, self.params = kind, target, list(params)
        self.readonly, self.env, self.fmt = readonly, env, fmt
        self.proc = None
        self.log = ''

    def argv(self):
        if self.kind == 'qemu':
            return ['qemu-nbd', '-r', '-f', self.fmt, '-t', '--shared=0',
                    '-k', self.sock, '--pid-file', self.pidfile, self.target]
        argv = ['nbdkit', '-f', '--exit-with-parent', '-U', self.sock,
                '-P', self.pidfile]
        if self.readonly:
            argv.append('-r')
        if self.kind == 'file':
            return argv + ['file', 'file=' + self.target] + self.params
        return argv + [PLUGIN, 'file=' + self.target] + self.params

    def start(self):
        self.dir = tempfile.mkdtemp(prefix='vhdchain-bench-')
        self.sock = os.path.join(self.dir, 'sock')
        self.pidfile = os.path.join(self.dir, 'pid')
        self.uri = 'nbd+unix:///?socket=' + self.sock
        self.errpath = os.path.join(self.dir, 'log')
        env = dict(os.environ, **(self.env or {}))
        with open(self.errpath, 'wb') as err:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not (os.path.exists(self.pidfile) and
                   os.path.getsize(self.pidfile) and
                   os.path.exists(self.sock)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('%s did not start:\n%s'
                                   % (' '.join(self.argv()), self.log))
            time.sleep(0.002)
        self.ready_seconds = time.perf_counter() - t0
        return self

    def vmhwm_kib(self, field='VmHWM'):
        """Peak resident set size so far (VmHWM; or another field of
        /proc/PID/status), KiB."""
        with open('/proc/%d/status' % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
        return None

    def cpu_seconds(self):
        """CPU time (user + system, all threads) the server used so far."""
        with open('/proc/%d/stat' % self.proc.pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def open_files(self, folder):
        """(path, size, allocated bytes) of files it holds open in folder
        (the temporary layer is unlinked but still open)."""
        out = []
        fds = '/proc/%d/fd' % self.proc.pid
        for fd in os.listdir(fds):
            try:
                link = os.readlink(os.path.join(fds, fd))
                if link.startswith(folder):
                    st = os.stat(os.path.join(fds, fd))
                    out.append((link, st.st_size, st.st_blocks * 512))
            except OSError:
                pass
        return out

    def stop(self):
        rc = None
        if self.proc is not None:
            rc, self.proc = harness.terminate(self.proc, 60), None
            try:
                with open(self.errpath, 'rb') as f:
                    self.log = f.read().decode(errors='replace')
            except OSError:
                pass
        if getattr(self, 'dir', None):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.rc = rc
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        rc = self.stop()
        if rc not in (0, None) and exc[0] is None:
            WARNINGS.append('%s %s exited with %r on SIGTERM: %s'
                            % (self.kind, self.target, rc,
                               self.log.strip()[-300:]))
        return False


# ---------------------------------------------------------------- workloads

def run(argv, timeout=600, check=True):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError('%s failed (%d): %s' % (
            ' '.join(argv), p.returncode, p.stderr.decode(errors='replace')))
    return p


def nbdcopy_seconds(uri, extra=()):
    t0 = time.perf_counter()
    run(['nbdcopy'] + list(extra) + [uri, 'null:'])
    return time.perf_counter() - t0


def fio(srv, rw, bs, iodepth, runtime=None, extra=()):
    """fio over its nbd engine; returns the job's read or write dict."""
    out = os.path.join(srv.dir, 'fio.json')
    argv = ['fio', '--name=bench', '--ioengine=nbd', '--uri=' + srv.uri,
            '--rw=' + rw, '--bs=' + bs, '--iodepth=%d' % iodepth,
            '--output-format=json', '--output=' + out]
    if runtime:
        argv += ['--runtime=%d' % runtime, '--time_based']
    run(argv + list(extra), timeout=(runtime or 0) + 600)
    with open(out) as f:
        job = json.load(f)['jobs'][0]
    if job.get('error'):
        raise RuntimeError('fio %s: error %r' % (rw, job['error']))
    return job['write' if 'write' in rw else 'read']


def verify(srv, expected_raw, size, count=200):
    """Random reads through NBD against the expected image; returns
    (ok, detail)."""
    import nbd
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    try:
        if h.get_size() != size:
            return False, 'size %d, expected %d' % (h.get_size(), size)
        bad = harness.compare_random_reads(h, expected_raw, size, count,
                                           seed=7)
        return not bad, '; '.join(bad[:3])
    finally:
        h.shutdown()


def drop_caches():
    """Empty the page cache; False (with a note) if not permitted."""
    try:
        os.sync()
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
        return True
    except OSError as e:
        return e


# ---------------------------------------------------------------- results

ROWS = {}                 # key -> row dict
ORDER = []
WARNINGS = []
NOTES = []


def best(samples):
    """Every result here is higher-is-better: the best pass is the one
    least disturbed by other work on the machine."""
    return max(samples) if samples else None


def record_samples(key, server, workload, samples, unit, **extra):
    """A row from several passes: the best, with the median beside it."""
    if not samples:
        return None
    nd = 0 if unit == 'IOPS' else 1
    return record(key, server, workload, best(samples), unit,
                  [round(x, nd) for x in samples],
                  median=statistics.median(samples), **extra)


def record(key, server, workload, value, unit, samples=None, **extra):
    row = dict(key=key, server=server, workload=workload, value=value,
               unit=unit, samples=samples or [value], **extra)
    ROWS[key] = row
    ORDER.append(key)
    return row


def guarded(what, fn, *args):
    """Run one measurement; a failure becomes a warning, not a crash."""
    try:
        return fn(*args)
    except Exception as e:              # noqa: BLE001 (report and go on)
        WARNINGS.append('%s: %s: %s' % (what, type(e).__name__,
                                        str(e).strip()[-600:]))
        log('  !! %s failed: %s' % (what, e))
        return None


def check_data(label, srv, expected, size):
    """'ok' or 'WRONG DATA' (also a warning) from random reads."""
    ok, detail = verify(srv, expected, size)
    if not ok:
        WARNINGS.append('%s: WRONG DATA: %s' % (label, detail))
    return 'ok' if ok else 'WRONG DATA'


def cpu_per_gib(seconds, nbytes):
    """Server CPU seconds per GiB moved: much less sensitive to other load
    on the machine than the throughput."""
    return (seconds / (nbytes / GiB), 's/GiB') if nbytes else None


def cpu_per_io(seconds, ios):
    """Server CPU microseconds per I/O."""
    return (seconds / ios * 1e6, 'us/IO') if ios else None


def cpu_txt(cpu):
    if not cpu:
        return ''
    return ('%.2f %s' if cpu[1] == 's/GiB' else '%.1f %s') % cpu


def cpu_ratio(num, den):
    """Reference CPU per unit / this row's: like the speed ratios, above 1
    is better for vhdchain."""
    a, b = ROWS.get(num), ROWS.get(den)
    if not a or not b or not a.get('cpu') or not b.get('cpu') \
            or not a['cpu'][0]:
        return None
    return b['cpu'][0] / a['cpu'][0]


def samples_txt(passes):
    return ', '.join('%.0f' % p for p in passes)


# ---------------------------------------------------------------- sections

def section_cached(big):
    """Per depth, every server up at once; passes interleaved round by
    round over the servers (nbdcopy round 0 is a warm-up) so that drift in
    the machine's speed and other load hit every server alike.  The
    depth-64 group also runs vhdchain on the depth-1 chain, so that the
    depth 64 vs depth 1 ratio is measured side by side too."""
    size = chains.BIG['size']
    for depth in chains.DEPTHS:
        tip = big['layers'][depth - 1]
        raw = big['expected'][depth]
        log('cached reads, depth %d (tip %s)' % (depth,
                                                os.path.basename(tip)))
        specs = [('file', 'nbdkit file (flat raw)', 'file', raw, [], raw),
                 ('auto', 'vhdchain io=auto', 'vhdchain', tip, ['io=auto'],
                  raw),
                 ('pread', 'vhdchain io=pread', 'vhdchain', tip,
                  ['io=pread'], raw)]
        if depth == 1 and shutil.which('qemu-nbd'):
            specs.append(('qemu', 'qemu-nbd -f vpc', 'qemu', tip, [], raw))
        if depth == 64:
            specs.append(('d1auto', 'd1 vhdchain io=auto', 'vhdchain',
                          big['layers'][0], ['io=auto'], big['expected'][1]))
        group = []
        for short, label, kind, target, params, exp in specs:
            label = label if short == 'd1auto' else \
                'd%-2d %s' % (depth, label)
            group.append(('d%d.%s' % (depth, short), label, kind, target,
                          dict(params=params), exp))
        cached_group(group, size)


def section_vhdx(vx):
    """The VHDX chain of depth 8, as section_cached: nbdkit file on the
    flattened raw image, vhdchain io=auto and io=pread on the tip; and on
    the base alone (qemu cannot read differencing VHDX) qemu-nbd -f vhdx
    beside vhdchain, the pair users would choose between today.  All up at
    once, passes interleaved."""
    size = chains.VHDX['size']
    tip, base = vx['layers'][7], vx['layers'][0]
    d8, d1 = vx['expected'][8], vx['expected'][1]
    log('cached reads, VHDX depth 8 (tip %s; base %s also alone)'
        % (os.path.basename(tip), os.path.basename(base)))
    group = [('x8.file', 'vhdx d8 nbdkit file (flat raw)', 'file', d8,
              {}, d8),
             ('x8.auto', 'vhdx d8 vhdchain io=auto', 'vhdchain', tip,
              dict(params=['io=auto']), d8),
             ('x8.pread', 'vhdx d8 vhdchain io=pread', 'vhdchain', tip,
              dict(params=['io=pread']), d8),
             ('x1.auto', 'vhdx base vhdchain io=auto', 'vhdchain', base,
              dict(params=['io=auto']), d1)]
    if shutil.which('qemu-nbd'):
        group.insert(3, ('x1.qemu', 'vhdx base qemu-nbd -f vhdx', 'qemu',
                         base, dict(fmt='vhdx'), d1))
    cached_group(group, size)


def cached_group(group, size):
    """Start every server of group [(row prefix, label, kind, target,
    Server keywords, expected raw)], check its data, then run the
    sequential passes (round 0 a warm-up) and the random runs, interleaved
    round by round over the servers; record rows PREFIX.seq and
    PREFIX.rand."""
    with contextlib.ExitStack() as stack:
        up = []
        for prefix, label, kind, target, kw, exp in group:
            srv = guarded('start ' + label, stack.enter_context,
                          Server(kind, target, **kw))
            if srv is None:
                continue
            check = '-' if kind == 'file' else \
                check_data(label, srv, exp, size)
            up.append((prefix, label, srv, check))
        seq = {u[0]: [] for u in up}
        rand = {u[0]: [] for u in up}
        cpu = {u[0]: [0.0, 0.0, 0.0] for u in up}   # seq s, rand s, IOs
        for rnd in range(SEQ_REPEAT + 1):
            for prefix, label, srv, check in up:
                c0 = srv.cpu_seconds()
                t = guarded(prefix + '.seq', nbdcopy_seconds, srv.uri)
                if t and rnd:
                    seq[prefix].append(size / t / MB)
                    cpu[prefix][0] += srv.cpu_seconds() - c0
        for rnd in range(RAND_REPEAT):
            for prefix, label, srv, check in up:
                c0 = srv.cpu_seconds()
                r = guarded(prefix + '.rand', fio, srv, 'randread', '4k',
                            32, RUNTIME)
                if r is not None:
                    rand[prefix].append(r['iops'])
                    cpu[prefix][1] += srv.cpu_seconds() - c0
                    cpu[prefix][2] += r['total_ios']
        for prefix, label, srv, check in up:
            c = cpu[prefix]
            record_samples(prefix + '.seq', label, 'seq read',
                           seq[prefix], 'MB/s', check=check,
                           cpu=cpu_per_gib(c[0], len(seq[prefix]) * size))
            record_samples(prefix + '.rand', label, 'rand 4K read qd32',
                           rand[prefix], 'IOPS', check=check,
                           vmhwm_kib=srv.vmhwm_kib(),
                           cpu=cpu_per_io(c[1], c[2]))
            log('  %-28s seq %8s MB/s (%s)   rand %9s IOPS (%s)   [%s]'
                % (label, fmt(best(seq[prefix])),
                   samples_txt(seq[prefix]), fmt(best(rand[prefix])),
                   samples_txt(rand[prefix]), check))


def section_cold(big):
    """Depth 64 from disk: the page cache is dropped after each server is
    up (its start-up reads are not counted) and before each pass.  Rows
    'cold': nbdcopy as it comes (4 connections, 64 requests each); rows
    'cold1': one request at a time (nbdcopy -C 1 -R 1 -T 1 --request-size
    4M), where only parallelism inside a request can help."""
    size = chains.BIG['size']
    tip = big['layers'][63]
    log('cold-cache sequential reads, depth 64 (page cache dropped before '
        'each pass)')
    first = drop_caches()
    if first is not True:
        NOTES.append('cold-cache rows skipped: cannot drop the page cache '
                     '(%s)' % first)
        log('  NOTE: ' + NOTES[-1])
        return
    modes = ('uring', 'pread', 'file')
    labels = {'uring': 'd64 vhdchain io=uring, cold',
              'pread': 'd64 vhdchain io=pread, cold',
              'file': 'd64 nbdkit file (flat raw), cold'}
    qd1 = ['-C', '1', '-R', '1', '-T', '1', '--request-size=%d' % (4 << 20)]
    for row, extra, what in (('cold', [], 'seq read cold'),
                             ('cold1', qd1, 'seq read cold, 1 req 4M')):
        passes = {m: [] for m in modes}
        cpu = {m: 0.0 for m in modes}
        for _ in range(REPEAT):
            for mode in modes:
                if mode == 'file':
                    srv = Server('file', big['expected'][64])
                else:
                    srv = Server('vhdchain', tip, ['io=' + mode])
                with srv:
                    drop_caches()
                    c0 = srv.cpu_seconds()
                    passes[mode].append(
                        size / nbdcopy_seconds(srv.uri, extra) / MB)
                    cpu[mode] += srv.cpu_seconds() - c0
        for mode in modes:
            p = passes[mode]
            record_samples('%s.%s.seq' % (row, mode), labels[mode], what, p,
                           'MB/s', cpu=cpu_per_gib(cpu[mode], len(p) * size))
            log('  %-34s %-24s %8.1f MB/s (%s)'
                % (labels[mode], what, best(p), samples_txt(p)))


WRITE_LABELS = {'file': 'nbdkit file (fresh raw copy)',
                'sparse': 'nbdkit file (fresh sparse raw)',
                'vhdchain': 'vhdchain (new layer on d1)'}


def section_writes(big):
    """Writes against a fresh writable layer on the depth-1 chain and
    against nbdkit file on a fresh copy of the depth-1 raw image (the
    reference: a written file is the fastest a file gets); sequential
    writes also against a fresh sparse raw file, for context (filling holes
    with 8 writes in flight is slow on ext4).  Each pass gets a fresh
    target, passes alternate between the servers, dirty pages are synced
    before each.  After the last sequential round the servers stay up and
    the written disks (every block now in the layer) are read back,
    interleaved as in the cached section."""
    size = chains.BIG['size']
    base = big['layers'][0]
    work = tempfile.mkdtemp(prefix='vhdchain-bench-w-', dir=BENCH_DIR)
    log('writes: fresh writable layer on the depth-1 chain vs nbdkit file '
        'on a fresh raw copy (and a sparse raw file)')

    def server(short, rnd):
        if short == 'vhdchain':
            return Server('vhdchain', base, readonly=False,
                          env={'TMPDIR': work})
        raw = os.path.join(work, 'target-%s-%d.raw' % (short, rnd))
        if short == 'file':
            shutil.copyfile(big['expected'][1], raw)
        else:
            with open(raw, 'wb') as f:
                f.truncate(size)
        return Server('file', raw, readonly=False)

    def layer_size(srv):
        files = srv.open_files(work)
        return files and {'size': files[0][1], 'allocated': files[0][2]}

    def cleanup():
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))

    seqw = {'file': [], 'sparse': [], 'vhdchain': []}
    randw = {'file': [], 'vhdchain': []}
    wcpu = {(k, s): [0.0, 0] for k in ('seq', 'rand')
            for s in ('file', 'sparse', 'vhdchain')}
    layer = {}
    try:
        for rnd in range(REPEAT):
            last = rnd == REPEAT - 1
            with contextlib.ExitStack() as stack:
                kept = []
                for short in ('file', 'vhdchain', 'sparse'):
                    srv = server(short, rnd)
                    os.sync()
                    with contextlib.ExitStack() as one:
                        one.enter_context(srv)
                        c0 = srv.cpu_seconds()
                        w = fio(srv, 'write', '1M', 8,
                                extra=['--end_fsync=1'])
                        seqw[short].append(w['bw_bytes'] / MB)
                        wcpu['seq', short][0] += srv.cpu_seconds() - c0
                        wcpu['seq', short][1] += w['io_bytes']
                        layer['seq', short] = layer_size(srv)
                        if last and short != 'sparse':
                            stack.push(one.pop_all())   # read back below
                            kept.append((short, srv))
                if kept:
                    readback(kept, size)
            cleanup()
        for rnd in range(REPEAT):
            for short in ('file', 'vhdchain'):
                srv = server(short, rnd)
                os.sync()
                with srv:
                    c0 = srv.cpu_seconds()
                    w = fio(srv, 'randwrite', '4k', 32, RUNTIME,
                            extra=['--end_fsync=1'])
                    randw[short].append(w['iops'])
                    wcpu['rand', short][0] += srv.cpu_seconds() - c0
                    wcpu['rand', short][1] += w['total_ios']
                    layer['rand', short] = layer_size(srv)
                cleanup()
    finally:
        for short in ('file', 'vhdchain', 'sparse'):
            extra = {'layer_file': layer.get(('seq', short))} \
                if short == 'vhdchain' else {}
            record_samples('w.%s.seqwrite' % short, WRITE_LABELS[short],
                           'seq 1M write qd8+fsync', seqw[short], 'MB/s',
                           cpu=cpu_per_gib(*wcpu['seq', short]), **extra)
            if short == 'sparse':
                continue
            extra = {'layer_file': layer.get(('rand', short))} \
                if short == 'vhdchain' else {}
            record_samples('w.%s.randwrite' % short, WRITE_LABELS[short],
                           'rand 4K write qd32+fsync', randw[short], 'IOPS',
                           cpu=cpu_per_io(*wcpu['rand', short]), **extra)
        for short in ('file', 'vhdchain', 'sparse'):
            log('  %-30s seq write %8s MB/s (%s)   rand write %9s IOPS (%s)'
                % (WRITE_LABELS[short], fmt(best(seqw[short])),
                   samples_txt(seqw[short]),
                   fmt(best(randw.get(short))),
                   samples_txt(randw.get(short, []))))
        shutil.rmtree(work, ignore_errors=True)


def readback(kept, size):
    """Read back what was just written, the servers interleaved."""
    labels = WRITE_LABELS
    seq = {short: [] for short, _ in kept}
    rand = {short: [] for short, _ in kept}
    cpu = {short: [0.0, 0.0, 0] for short, _ in kept}
    for rnd in range(SEQ_REPEAT + 1):
        for short, srv in kept:
            c0 = srv.cpu_seconds()
            t = nbdcopy_seconds(srv.uri)
            if rnd:
                seq[short].append(size / t / MB)
                cpu[short][0] += srv.cpu_seconds() - c0
    for rnd in range(RAND_REPEAT):
        for short, srv in kept:
            c0 = srv.cpu_seconds()
            r = fio(srv, 'randread', '4k', 32, RUNTIME)
            rand[short].append(r['iops'])
            cpu[short][1] += srv.cpu_seconds() - c0
            cpu[short][2] += r['total_ios']
    for short, srv in kept:
        label = labels[short] + ', read back'
        c = cpu[short]
        record_samples('w.%s.seq' % short, label, 'seq read (written)',
                       seq[short], 'MB/s',
                       cpu=cpu_per_gib(c[0], len(seq[short]) * size))
        record_samples('w.%s.rand' % short, label, 'rand 4K read (written)',
                       rand[short], 'IOPS', cpu=cpu_per_io(c[1], c[2]))
        log('  %-28s read back: seq %8.1f MB/s (%s)   rand %9.0f IOPS (%s)'
            % (labels[short], best(seq[short]), samples_txt(seq[short]),
               best(rand[short]), samples_txt(rand[short])))


CLI_LABELS = {
    ('raw', 'vhdchain'): 'vhdchain convert d8 -> raw',
    ('raw', 'qemu'): 'qemu-img convert flat raw -> raw',
    ('vhd', 'vhdchain'): 'vhdchain convert d8 -> vhd',
    ('vhd', 'qemu'): 'qemu-img convert flat raw -> vpc',
    ('rawsync', 'vhdchain'): 'vhdchain convert --flush d8 -> raw',
    ('rawsync', 'qemu'): 'qemu-img convert -t writeback -> raw',
    ('vhdsync', 'vhdchain'): 'vhdchain convert --flush d8 -> vhd',
    ('vhdsync', 'qemu'): 'qemu-img convert -t writeback -> vpc',
    ('merge', 'vhdchain'): 'vhdchain merge --into base (d8)',
}
CLI_WORKLOADS = {'raw': 'convert, not synced', 'vhd': 'convert, not synced',
                 'rawsync': 'convert, synced',
                 'vhdsync': 'convert, synced',
                 'merge': 'merge 7 layers, synced'}


def section_cli(big):
    """Issue 9: `vhdchain convert` and `vhdchain merge` of the 1 GiB
    depth-8 VHD chain against `qemu-img convert` of its flattened raw image
    to the same format, each command timed from exec to exit and turned
    into a speed (1 GiB / wall time), so that the ratio is qemu-img's time
    over vhdchain's.

      raw, vhd          convert to raw / dynamic VHD, not synced: vhdchain
                        without --flush, qemu-img with its default cache
                        mode for the output ('unsafe': no flush), both
                        leaving the data dirty in the page cache;
      rawsync, vhdsync  the same, synced: vhdchain --flush (fsync before
                        exiting), qemu-img -t writeback (fdatasync on
                        close; its vpc driver also syncs after each block
                        it allocates);
      merge             merge --into base.vhd of snap07.avhd on a fresh copy
                        of the 8 files (the copy and its sync not timed);
                        merge always syncs (fdatasync per batch) and writes
                        only what the layers hold; its reference is the
                        vhdsync qemu-img row, an equivalent full image made
                        durable.

    Every command runs with the page cache synced first and its output
    removed; the sources are cached (round 0 of the unsynced pairs is a
    warm-up).  Pairs alternate which tool goes first.  Outputs of vhdchain
    are checked in full against the flattened image (the raw file compared,
    the VHD and the merged base read through the plugin), once each."""
    size = chains.BIG['size']
    depth = 8
    chain = big['layers'][:depth]
    raw = big['expected'][depth]
    missing = [t for t in ('qemu-img',) if shutil.which(t) is None]
    if not os.access(VHDCHAIN, os.X_OK):
        missing.append(VHDCHAIN)
    if missing:
        NOTES.append('CLI rows skipped: missing %s' % ', '.join(missing))
        log('  NOTE: ' + NOTES[-1])
        return
    work = tempfile.mkdtemp(prefix='vhdchain-bench-cli-', dir=BENCH_DIR)
    log('CLI: vhdchain convert and merge of the depth-8 VHD chain vs '
        'qemu-img convert of the flattened raw image')
    vpc = ['-O', 'vpc', '-o', 'subformat=dynamic,force_size=on']

    def argv(op, tool, out):
        if tool == 'qemu':
            cache = ['-t', 'writeback'] if op.endswith('sync') else []
            fmt = vpc if op.startswith('vhd') else ['-O', 'raw']
            return ['qemu-img', 'convert'] + cache + ['-f', 'raw'] + fmt + \
                [raw, out]
        flush = ['--flush'] if op.endswith('sync') else []
        return [VHDCHAIN, 'convert', '-q'] + flush + [chain[-1], out]

    def output(op, tool):
        return os.path.join(work, '%s-%s.%s' % (
            op, tool, 'vhd' if op.startswith('vhd') else 'raw'))

    passes, cpu, checks, seconds = {}, {}, {}, {}

    def timed(cmd, out=None):
        if out:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
        os.sync()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        run(cmd, timeout=1800)
        t = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    def one(op, tool, counted):
        out = output(op, tool)
        t, c = timed(argv(op, tool, out), out)
        if counted:
            passes.setdefault((op, tool), []).append(size / t / MB)
            seconds.setdefault((op, tool), []).append(round(t, 3))
            cpu[op, tool] = cpu.get((op, tool), 0.0) + c
        if tool == 'vhdchain' and (op, tool) not in checks:
            checks[op, tool] = check_output(op, out, raw, size)
        os.unlink(out)

    def merge_once():
        mdir = os.path.join(work, 'merge')
        os.mkdir(mdir)
        try:
            copies = []
            for path in chain:
                copies.append(os.path.join(mdir, os.path.basename(path)))
                shutil.copyfile(path, copies[-1])
            cmd = [VHDCHAIN, 'merge', '-q', '--into', copies[0], copies[-1]]
            t, c = timed(cmd)
            key = ('merge', 'vhdchain')
            passes.setdefault(key, []).append(size / t / MB)
            seconds.setdefault(key, []).append(round(t, 3))
            cpu[key] = cpu.get(key, 0.0) + c
            if ('merge', 'vhdchain') not in checks:
                checks['merge', 'vhdchain'] = check_merged(copies[0], raw,
                                                          size)
        finally:
            shutil.rmtree(mdir, ignore_errors=True)

    merged = None
    try:
        merged = layer_bytes(chain[-1])
        for rnd in range(CLI_REPEAT + 1):
            for op in ('raw', 'vhd'):
                tools = ('vhdchain', 'qemu') if rnd % 2 else \
                    ('qemu', 'vhdchain')
                for tool in tools:
                    guarded('cli.%s.%s' % (op, tool), one, op, tool, rnd > 0)
        for rnd in range(CLI_SYNC_REPEAT):
            for op in ('rawsync', 'vhdsync'):
                tools = ('vhdchain', 'qemu') if rnd % 2 else \
                    ('qemu', 'vhdchain')
                for tool in tools:
                    guarded('cli.%s.%s' % (op, tool), one, op, tool, True)
            guarded('cli.merge.vhdchain', merge_once)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for op in ('raw', 'vhd', 'rawsync', 'vhdsync', 'merge'):
            for tool in ('qemu', 'vhdchain'):
                p = passes.get((op, tool))
                if not p:
                    continue
                extra = {'seconds': seconds[op, tool]}
                if op == 'merge':
                    extra['layer_bytes'] = merged
                record_samples('cli.%s.%s' % (op, tool),
                               CLI_LABELS[op, tool], CLI_WORKLOADS[op], p,
                               'MB/s', check=checks.get((op, tool), '-'),
                               cpu=cpu_per_gib(cpu[op, tool], len(p) * size),
                               **extra)
                log('  %-36s %-22s best %6.2f s (%s s)   [%s]'
                    % (CLI_LABELS[op, tool], CLI_WORKLOADS[op],
                       min(seconds[op, tool]),
                       ', '.join('%.2f' % x for x in seconds[op, tool]),
                       checks.get((op, tool), '-')))
    NOTES.append('CLI rows: speed = 1 GiB / wall time of the command, so '
                  'the ratio is qemu-img time / vhdchain time; server CPU '
                  'there = the command\'s user+system time.  "not synced": '
                  'vhdchain convert without --flush vs qemu-img convert '
                  'with its default output cache mode (unsafe, no flush); '
                  '"synced": vhdchain convert --flush vs qemu-img convert '
                  '-t writeback (vpc: fdatasync per allocated block too).  '
                  'merge (always fdatasync) writes only the %.1f MiB the 7 '
                  'layers hold into a fresh copy of the chain; its '
                  'reference is qemu-img making the equivalent full image, '
                  'synced (cli.vhdsync.qemu)'
                  % ((merged or 0) / (1 << 20)))


def layer_bytes(tip):
    """Bytes of the virtual disk that the layers above the base provide,
    from `vhdchain map` (what merge --into base copies)."""
    ranges = json.loads(run([VHDCHAIN, 'map', '--json', tip]).stdout)
    base = max(r['layer'] for r in ranges)
    return sum(r['length'] for r in ranges
               if r['type'] == 'data' and r['layer'] != base)


def check_output(op, out, raw, size):
    """'ok' or 'WRONG DATA' (also a warning): the whole output of a
    convert against the flattened image."""
    if op.startswith('raw'):
        bad = not same_file(out, raw)
    else:
        with Server('vhdchain', out) as srv:
            bad = not nbd_equals_file(srv, raw, size)
    if bad:
        WARNINGS.append('cli %s: WRONG DATA: output differs from the '
                        'flattened image' % op)
    return 'WRONG DATA' if bad else 'ok'


def check_merged(base, raw, size):
    """The merged base alone must read as the depth-8 tip did, and pass
    `vhdchain check`."""
    problems = []
    rc = run([VHDCHAIN, 'check', base], check=False)
    if rc.returncode != 0:
        problems.append('vhdchain check: exit %d: %s' % (
            rc.returncode, (rc.stdout + rc.stderr).decode()[-300:]))
    with Server('vhdchain', base) as srv:
        if not nbd_equals_file(srv, raw, size):
            problems.append('merged base differs from the flattened image')
    if problems:
        WARNINGS.append('cli merge: WRONG DATA: ' + '; '.join(problems))
    return 'WRONG DATA' if problems else 'ok'


def same_file(a, b, chunk=16 << 20):
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def nbd_equals_file(srv, path, size, chunk=4 << 20):
    import nbd
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    try:
        if h.get_size() != size:
            return False
        with open(path, 'rb') as f:
            for off in range(0, size, chunk):
                n = min(chunk, size - off)
                if h.pread(n, off) != f.read(n):
                    return False
        return True
    finally:
        h.shutdown()


def section_huge(huge):
    size = chains.HUGE['size']
    tip = huge['layers'][-1]
    work = tempfile.mkdtemp(prefix='vhdchain-bench-h-', dir=BENCH_DIR)
    log('2040 GiB chain of %d files: start-up time and peak RSS'
        % len(huge['layers']))
    try:
        sparse = os.path.join(work, 'huge.raw')
        with open(sparse, 'wb') as f:
            f.truncate(size)
        for short, kind, target in (('file', 'file', sparse),
                                    ('vhdchain', 'vhdchain', tip)):
            guarded('huge.' + short, huge_one, short, kind, target, huge,
                    size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def huge_one(short, kind, target, huge, size):
    starts = []
    for _ in range(REPEAT):
        with Server(kind, target) as srv:
            starts.append(srv.ready_seconds)
    label = {'file': 'nbdkit file (sparse raw)',
             'vhdchain': 'vhdchain 64 layers'}[short]
    with Server(kind, target) as srv:
        starts.append(srv.ready_seconds)
        hwm_ready = srv.vmhwm_kib()
        check = '-'
        if kind == 'vhdchain':
            ok, detail = verify_samples(srv, huge)
            check = 'ok' if ok else 'WRONG DATA'
            if not ok:
                WARNINGS.append('2 TiB chain: WRONG DATA: ' + detail)
        copy_s = nbdcopy_seconds(srv.uri)
        hwm_copy = srv.vmhwm_kib()
        r = fio(srv, 'randread', '4k', 32, 5)
        hwm_rand = srv.vmhwm_kib()
        rss_now = srv.vmhwm_kib('VmRSS')
    start = statistics.median(starts)
    record('huge.%s.start' % short, label, 'start to ready', start * 1000,
           'ms', [round(s * 1000, 1) for s in starts], check=check)
    record('huge.%s.rss_ready' % short, label, 'VmHWM after start',
           hwm_ready / 1024, 'MiB')
    record('huge.%s.rss_read' % short, label, 'VmHWM after reads',
           max(hwm_copy, hwm_rand) / 1024, 'MiB',
           [round(hwm_copy / 1024, 1), round(hwm_rand / 1024, 1)],
           nbdcopy_seconds=round(copy_s, 2), rand_iops=round(r['iops']),
           vmrss_after_kib=rss_now)
    log('  %-26s ready in %6.1f ms; VmHWM %6.1f MiB after start, %6.1f '
        'after nbdcopy (%.2f s), %6.1f after 5 s of random reads (VmRSS '
        'then %.1f) [%s]'
        % (label, start * 1000, hwm_ready / 1024, hwm_copy / 1024, copy_s,
           hwm_rand / 1024, rss_now / 1024, check))


def verify_samples(srv, huge):
    import hashlib
    import nbd
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    try:
        bad = [off for off, sha in huge['samples']
               if hashlib.sha256(h.pread(huge['block_size'], off))
               .hexdigest() != sha]
    finally:
        h.shutdown()
    return not bad, 'blocks at %s differ' % bad[:4]


# ---------------------------------------------------------------- report

def fmt(v):
    if v is None:
        return '-'
    return '%.1f' % v if v < 1000 else '%.0f' % v


def ratio(num, den):
    a, b = ROWS.get(num), ROWS.get(den)
    if not a or not b or not b['value']:
        return None
    return a['value'] / b['value']


def report(meta):
    lines = []
    lines.append('')
    lines.append('result = best pass (samples and median in the JSON); '
                 'ratio = this row / its reference row; server CPU = the '
                 'server\'s user+system time over all passes, per GiB or '
                 'per I/O (less disturbed by other load than the speed); '
                 'CPU efficiency = reference CPU / vhdchain CPU')
    lines.append('%-24s %-38s %-26s %10s %-5s %-24s %-12s %s'
                 % ('row', 'server', 'workload', 'result', 'unit',
                    'ratio vs reference', 'server CPU', 'check'))
    lines.append('-' * 150)
    for key in ORDER:
        r = ROWS[key]
        ref = REFERENCE.get(key)
        q = ratio(key, ref) if ref else None
        rtxt = '%.2fx %s' % (q, ref) if q is not None else ''
        lines.append('%-24s %-38s %-26s %10s %-5s %-24s %-12s %s'
                     % (key, r['server'][:38], r['workload'][:26],
                        fmt(r['value']), r['unit'], rtxt, cpu_txt(r.get('cpu')),
                        r.get('check', '')))
    lines.append('')
    verdicts = []
    for key, num, den, need, what in TARGETS:
        q = ratio(num, den)
        if q is None:
            verdict = 'SKIPPED'
            text = 'TARGET %-22s %-58s >= %.1fx: SKIPPED (not measured)' % (
                key, what, need)
        else:
            verdict = 'MET' if q >= need else 'MISSED'
            text = 'TARGET %-22s %-58s >= %.1fx: %.2fx %-6s' % (
                key, what, need, q, verdict)
            c = cpu_ratio(num, den)
            if c is not None:
                text += '  (CPU efficiency %.2fx)' % c
        verdicts.append(dict(key=key, numerator=num, denominator=den,
                             target=need, ratio=q, verdict=verdict,
                             what=what, cpu_efficiency=cpu_ratio(num, den)))
        lines.append(text)
    # Context without a target of its own.
    for num, den, what in (
            ('cold1.uring.seq', 'cold1.pread.seq', 'cold-cache depth 64, '
             'one 4 MiB request at a time, io=uring vs io=pread'),
            ('d64.pread.seq', 'd64.auto.seq', 'depth 64 cached sequential, '
             'io=pread vs io=auto'),
            ('x1.auto.seq', 'x1.qemu.seq', 'VHDX base alone, sequential '
             'read, vhdchain io=auto vs qemu-nbd -f vhdx'),
            ('x1.auto.rand', 'x1.qemu.rand', 'VHDX base alone, random 4K '
             'read, vhdchain io=auto vs qemu-nbd -f vhdx'),
            ('x8.pread.seq', 'x8.auto.seq', 'VHDX depth 8 cached '
             'sequential, io=pread vs io=auto'),
            ('cli.merge.vhdchain', 'cli.vhd.qemu', 'merge --into base vs '
             'qemu-img convert -O vpc not synced (merge syncs)'),
            ('w.vhdchain.seq', 'w.file.seq', 'sequential read of blocks '
             'in the new layer vs nbdkit file'),
            ('w.vhdchain.rand', 'w.file.rand', 'random 4K read of blocks '
             'in the new layer vs nbdkit file'),
            ('w.vhdchain.seqwrite', 'w.sparse.seqwrite', 'sequential 1 MiB '
             'write vs nbdkit file on a sparse raw file')):
        q = ratio(num, den)
        if q is not None:
            lines.append('INFO   %-81s %.2fx' % (what, q))
    # Issue 4: reported, no target ratio.
    for short in ('vhdchain',):
        s, a, b = (ROWS.get('huge.%s.%s' % (short, k))
                   for k in ('start', 'rss_ready', 'rss_read'))
        fs, fa, fb = (ROWS.get('huge.file.%s' % k)
                      for k in ('start', 'rss_ready', 'rss_read'))
        if s and a and b:
            lines.append('REPORT 2040 GiB, 64 layers: ready in %.1f ms '
                         '(nbdkit file: %s ms), peak RSS %.1f MiB after '
                         'start, %.1f MiB after reads (nbdkit file: %s / %s '
                         'MiB)' % (s['value'], fmt(fs and fs['value']),
                                   a['value'], b['value'],
                                   fmt(fa and fa['value']),
                                   fmt(fb and fb['value'])))
    for n in NOTES:
        lines.append('NOTE ' + n)
    for w in WARNINGS:
        lines.append('WARNING ' + w)
    text = '\n'.join(lines)
    print(text, flush=True)
    out = dict(meta, rows=[ROWS[k] for k in ORDER], targets=verdicts,
               notes=NOTES, warnings=WARNINGS,
               ratios={k: ratio(k, REFERENCE[k]) for k in ORDER
                       if k in REFERENCE and ratio(k, REFERENCE[k])})
    os.makedirs(os.path.dirname(BENCH_JSON) or '.', exist_ok=True)
    with open(BENCH_JSON, 'w') as f:
        json.dump(out, f, indent=1)
    print('\nJSON: %s' % BENCH_JSON, flush=True)


def versions():
    def first_line(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    return {'nbdkit': first_line(['nbdkit', '--version']),
            'qemu-nbd': first_line(['qemu-nbd', '--version']),
            'nbdcopy': first_line(['nbdcopy', '--version']),
            'fio': first_line(['fio', '--version'])}


def main():
    t0 = time.monotonic()
    missing = [t for t in ('nbdkit', 'nbdcopy', 'fio') if
               shutil.which(t) is None]
    if missing or not os.path.isfile(PLUGIN):
        print('bench: cannot run: missing %s' % ', '.join(
            missing + ([] if os.path.isfile(PLUGIN) else [PLUGIN])))
        return 2
    if shutil.which('qemu-nbd') is None:
        NOTES.append('qemu-nbd not installed: its rows are skipped')
    os.makedirs(BENCH_DIR, exist_ok=True)
    private = tempfile.mkdtemp(prefix='vhdchain-bench-plugin-')
    try:
        return bench(private, t0)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def bench(private, t0):
    """The whole run, with the plugin copied into `private` first: one
    binary throughout, whatever rebuilds the tree meanwhile."""
    global PLUGIN, VHDCHAIN
    built = PLUGIN
    PLUGIN = os.path.join(private, os.path.basename(built))
    for _ in range(30):             # a rebuild may be linking it right now
        shutil.copy2(built, PLUGIN)
        if run(['nbdkit', PLUGIN, '--dump-plugin'],
               check=False).returncode == 0:
            break
        time.sleep(2)
    else:
        raise RuntimeError('nbdkit cannot load %s' % built)
    # The same for the vhdchain command (the CLI rows).
    built_tool = VHDCHAIN
    if os.access(built_tool, os.X_OK):
        VHDCHAIN = os.path.join(private, 'vhdchain')
        for _ in range(30):
            shutil.copy2(built_tool, VHDCHAIN)
            if run([VHDCHAIN, '--version'], check=False).returncode == 0:
                break
            time.sleep(2)
        else:
            raise RuntimeError('%s does not run' % built_tool)
    meta = {'when': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'machine': {'cpus': os.cpu_count(), 'kernel': platform.release(),
                        'mem_total_kib': _meminfo('MemTotal')},
            'versions': versions(), 'plugin': built,
            'plugin_sha256': harness.sha256_file(PLUGIN),
            'bench_dir': BENCH_DIR,
            'repeat': REPEAT, 'seq_repeat': SEQ_REPEAT,
            'rand_repeat': RAND_REPEAT, 'runtime': RUNTIME,
            'cli_repeat': CLI_REPEAT, 'cli_sync_repeat': CLI_SYNC_REPEAT,
            'chain_params': {'big': chains.BIG, 'huge': chains.HUGE,
                             'vhdx': chains.VHDX},
            'vhdchain_tool': built_tool}
    meta['loadavg_start'] = _loadavg()
    log('vhdchain bench: %d CPUs, repeat %d, fio runtime %d s, cache %s, '
        'load average %s' % (os.cpu_count(), REPEAT, RUNTIME, BENCH_DIR,
                             meta['loadavg_start']))
    damon = _damon_pageout()
    if damon:
        NOTES.append('DAMON proactive reclaim is on in this kernel (%s): '
                     'page cache idle for about a minute is paged out, so '
                     'every cached group starts with a warm-up round' % damon)
    if float(meta['loadavg_start'].split()[0]) > 0.5:
        NOTES.append('the machine was not idle at the start (load average '
                     '%s): other work skews the numbers; ratios are fairer '
                     'than absolute values' % meta['loadavg_start'])

    big = huge = vx = None
    if ONLY & {'cached', 'cold', 'writes', 'cli'}:
        big = chains.build_big(os.path.join(BENCH_DIR, 'big'), log=log)
        meta['big_chain'] = {k: v for k, v in big.items()
                             if k not in ('layers', 'expected')}
    if 'vhdx' in ONLY:
        vx = chains.build_vhdx(os.path.join(BENCH_DIR, 'vhdx'), log=log)
        meta['vhdx_chain'] = {k: v for k, v in vx.items()
                              if k not in ('layers', 'expected')}
    if 'huge' in ONLY:
        huge = chains.build_huge(os.path.join(BENCH_DIR, 'huge'), log=log)
        meta['huge_chain'] = {k: v for k, v in huge.items()
                              if k not in ('layers', 'samples')}
    meta['build_done_seconds'] = round(time.monotonic() - t0, 1)

    meta['section_seconds'] = {}

    def section(name, fn, arg, guard=False):
        if name not in ONLY:
            return
        s0 = time.monotonic()
        if guard:
            guarded(name, fn, arg)
        else:
            fn(arg)
        meta['section_seconds'][name] = round(time.monotonic() - s0, 1)
        log('  (%s: %.0f s)' % (name, meta['section_seconds'][name]))

    section('cached', section_cached, big)
    section('vhdx', section_vhdx, vx)
    section('cold', section_cold, big, guard=True)
    section('writes', section_writes, big, guard=True)
    section('cli', section_cli, big, guard=True)
    section('huge', section_huge, huge)
    meta['total_seconds'] = round(time.monotonic() - t0, 1)
    meta['loadavg_end'] = _loadavg()
    report(meta)
    log('bench: %.0f s in all' % meta['total_seconds'])
    return 0


def _damon_pageout():
    """A description of a running DAMON 'pageout' scheme, or None (read
    only: the machine's settings are not ours to change)."""
    root = '/sys/kernel/mm/damon/admin/kdamonds'
    try:
        for k in sorted(os.listdir(root)):
            kd = os.path.join(root, k)
            if not os.path.isdir(kd):
                continue
            with open(os.path.join(kd, 'state')) as f:
                if f.read().strip() != 'on':
                    continue
            for dirpath, _, files in os.walk(os.path.join(kd, 'contexts')):
                if 'action' in files:
                    with open(os.path.join(dirpath, 'action')) as f:
                        if f.read().strip() == 'pageout':
                            return 'kdamond %s, action pageout' % k
    except OSError:
        pass
    return None


def _loadavg():
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


def _meminfo(field):
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return None


if __name__ == '__main__':
    sys.exit(main())
