#!/usr/bin/python3
"""Load under sanitizers (issue 8, "Load"): an 8-connection mixed
read/write soak with fio verify, once with the plugin built with ASan+UBSan
and once with TSan: zero verify errors, zero sanitizer reports.

The sanitized plugins come from tests/fuzz/build.sh (plugin-asan.so:
clang, shared runtime; plugin-tsan.so: gcc).  They run in the system's
/usr/bin/nbdkit with the sanitizer runtime preloaded (LD_PRELOAD; the
runtime must be first in the process) and the reports written to files
(ASAN_OPTIONS / TSAN_OPTIONS log_path), so a report cannot be lost in a
pipe.  Where the process ends is the catch: with the ASan runtime
preloaded, nbdkit may deadlock at exit in libp11-kit's destructor
(freelocale waits for the locale lock; measured, not ours).  So the ASan
build checks for leaks itself when nbdkit unloads it (after the plugin's
unload has freed everything, tests/fuzz/sanitize-unload.c) and prints one
line; once that line is out, a nbdkit still running after SIGTERM is
killed, and nothing is lost.

Each soak (SOAK_SECONDS each, default 50; `make soak` runs 600):
  - a VHD chain (base + child with data) served with a kept layer;
  - fio, 8 jobs on 8 connections, each on its own 6 MiB region (regions
    not aligned to the 2 MiB blocks, so neighbours share blocks): randrw,
    512 B - 128 KiB, verify=crc32c with verify_backlog (reads check what
    was written while writing goes on), fsync every 24 writes, time_based,
    serialize_overlap (no two overlapping requests in flight at once:
    their order, and so the bytes, would be undefined) and norandommap
    (fio then verifies only blocks no later write partly covered: its
    rule for bsrange);
  - first, a flush before anything is written (an empty flush);
  - meanwhile a python client on a 9th connection zeroes, trims, flushes
    and asks block status (extents) over its own region, and reads the
    chain's untouched region and compares it with the expected image;
  - then nbdkit is stopped: the ASan build's leak check must say none.
Checked: fio exit 0, no job error, no verify complaint; the ninth client's
reads right; no sanitizer report file; for ASan the unload line says no
leaks.  The layer is then served by the normal plugin and must be a sound
VHD child whose untouched region still equals the chain.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import harness
import vhdgen as g
from vhdgen import KiB, MiB

r = harness.Reporter('test-soak')

SECONDS = int(os.environ.get('SOAK_SECONDS', '50'))
SIZE = 64 * MiB
JOBS = 8
REGION = 6 * MiB                # per fio job, from OFFSET
OFFSET = 1 * MiB + 512          # not on a block border
OWN = (52 * MiB, 4 * MiB)       # the ninth client's region
UNTOUCHED = (57 * MiB, 7 * MiB)
BUILD = os.environ.get('FUZZ_BUILD') or os.path.join(
    harness.TOP_BUILDDIR, 'tests', 'fuzz', 'build')


def runtime(kind):
    """The sanitizer runtime to preload: clang's ASan (the plugin was
    built with it), gcc's TSan."""
    if kind == 'asan':
        cc = 'clang-14' if shutil.which('clang-14') else 'clang'
        name = 'libclang_rt.asan-x86_64.so'
    else:
        cc, name = 'gcc', 'libtsan.so'
    p = subprocess.run([cc, '-print-file-name=' + name], capture_output=True,
                       text=True)
    path = os.path.realpath(p.stdout.strip())
    if p.returncode != 0 or not os.path.isfile(path):
        raise harness.TestFailure('%s runtime not found (%s)' % (kind, path))
    return path


class Sanitized:
    """nbdkit with a sanitized plugin, reports to files under folder."""

    def __init__(self, kind, folder, tip, *params):
        self.kind, self.folder = kind, folder
        os.makedirs(folder)
        self.sock = os.path.join(folder, 'sock')
        self.pidfile = os.path.join(folder, 'pid')
        self.logs = os.path.join(folder, 'report')
        self.uri = 'nbd+unix:///?socket=' + self.sock
        env = dict(os.environ, LD_PRELOAD=runtime(kind))
        opts = 'log_path=%s' % self.logs
        if kind == 'asan':
            env['ASAN_OPTIONS'] = opts + ':detect_leaks=1:' \
                'detect_stack_use_after_return=1'
            env['UBSAN_OPTIONS'] = 'log_path=%s:print_stacktrace=1' \
                % self.logs
        else:
            env['TSAN_OPTIONS'] = opts + ':second_deadlock_stack=1'
        plugin = os.path.join(BUILD, 'plugin-%s.so' % kind)
        self.errpath = os.path.join(folder, 'stderr')
        argv = ['nbdkit', '-f', '-U', self.sock, '-P', self.pidfile,
                '--exit-with-parent', plugin, tip] + list(params)
        with open(self.errpath, 'wb') as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env)
        deadline = time.monotonic() + 60
        while not (os.path.exists(self.pidfile) and
                   os.path.getsize(self.pidfile)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise harness.TestFailure('sanitized nbdkit did not start:\n'
                                          + self.stderr())
            time.sleep(0.05)

    def stderr(self):
        with open(self.errpath, errors='replace') as f:
            return f.read()

    def connect(self):
        import nbd
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(self.uri)
        return harness.allow_unaligned(h)

    def stop(self):
        """SIGTERM; once the unload line is out (ASan) or after 30 s, a
        nbdkit stuck at exit is killed.  Returns (exit status, how)."""
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while self.proc.poll() is None and time.monotonic() - t0 < 30:
            if self.kind == 'asan' and 'leak check at unload' in \
                    self.stderr() and time.monotonic() - t0 > 3:
                break
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return self.proc.returncode, 'killed after the unload'
        return self.proc.returncode, 'exited'

    def reports(self):
        out = []
        for p in sorted(glob.glob(self.logs + '*')):
            with open(p, errors='replace') as f:
                text = f.read()
            if text.strip():
                out.append('%s:\n%s' % (p, text[:6000]))
        return out


def fio(uri, seconds, cwd):
    argv = ['fio', '--output-format=json', '--name=soak', '--ioengine=nbd',
            '--uri=' + uri, '--numjobs=%d' % JOBS, '--rw=randrw',
            '--rwmixread=50', '--bsrange=512-128k', '--blockalign=512',
            '--offset=%d' % OFFSET, '--size=%d' % REGION,
            '--offset_increment=%d' % REGION, '--iodepth=8',
            '--verify=crc32c', '--verify_backlog=16', '--verify_fatal=1',
            '--verify_state_save=0', '--fsync=24', '--time_based',
            # Two overlapping requests in flight may complete in either
            # order: the overlap is undefined (fio's HOWTO), and a verify
            # of it fails at random after a few minutes.  The plugin is
            # not asked to order them, so fio must not send them together.
            '--serialize_overlap=1',
            # A time_based run writes each region many times over, with
            # blocks of other sizes: without the random map fio keeps its
            # written blocks in a tree and verifies only those no later
            # write has partly covered (its HOWTO, norandommap).
            '--norandommap',
            '--runtime=%d' % seconds, '--randrepeat=0',
            '--group_reporting=0']
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=seconds + 300, cwd=cwd)
    try:
        jobs = json.loads(p.stdout[p.stdout.index('{'):])['jobs']
    except ValueError:
        jobs = []
    return p.returncode, jobs, p.stderr


def ninth(srv, expected, stop, out):
    """Zeroes, trims, flushes and extents on its own region; reads of the
    untouched region compared with the chain."""
    import nbd
    rng = random.Random(9)
    h = srv.connect()
    model = bytearray(expected[OWN[0]:OWN[0] + OWN[1]])
    n = 0
    try:
        while not stop.is_set():
            x = rng.random()
            off = rng.randrange(0, OWN[1] - 256 * KiB)
            ln = rng.randint(1, 256 * KiB)
            if x < 0.3:
                h.zero(ln, OWN[0] + off)
                model[off:off + ln] = bytes(ln)
            elif x < 0.45:
                h.trim(ln, OWN[0] + off)
            elif x < 0.6:
                data = rng.randbytes(ln)
                h.pwrite(data, OWN[0] + off)
                model[off:off + ln] = data
            elif x < 0.7:
                h.flush()
            elif x < 0.85:
                ext = []

                def seen(ctx, o, e, err):
                    ext.append(len(e))
                    return 0
                h.block_status(OWN[1], OWN[0], seen)
                if not ext:
                    out['bad'].append('no extents')
            else:
                uo = rng.randrange(0, UNTOUCHED[1] - 64 * KiB)
                got = h.pread(64 * KiB, UNTOUCHED[0] + uo)
                want = expected[UNTOUCHED[0] + uo:UNTOUCHED[0] + uo +
                                64 * KiB]
                if got != want:
                    out['bad'].append('untouched region at %d' % uo)
            n += 1
        got = h.pread(OWN[1], OWN[0])
        if got != bytes(model):
            out['bad'].append('own region differs from its model at %s'
                              % harness.first_difference(got, bytes(model)))
        h.shutdown()
    except nbd.Error as e:
        out['bad'].append('nbd error: %s' % e)
    out['ops'] = n


def soak(kind, tmp, tip, expected, chain_dir):
    keep = os.path.join(chain_dir, 'soak-%s.avhd' % kind)
    srv = Sanitized(kind, os.path.join(tmp, 'run-' + kind), tip,
                    'overlay=' + keep)
    how = None
    try:
        # A flush with nothing written (overlay_flush of no block: it
        # once passed qsort a NULL list, which UBSan calls undefined).
        h = srv.connect()
        h.flush()
        h.shutdown()
        stop, out = threading.Event(), {'bad': [], 'ops': 0}
        t = threading.Thread(target=ninth, args=(srv, expected, stop, out))
        t.start()
        t0 = time.monotonic()
        rc, jobs, err = fio(srv.uri, SECONDS, tmp)
        stop.set()
        t.join()
        elapsed = time.monotonic() - t0
    finally:
        status, how = srv.stop()
    label = '%s soak (%d s)' % (kind.upper(), SECONDS)
    r.check(rc == 0, label + ': fio exit status 0', err[-3000:])
    r.equal(len(jobs), JOBS, label + ': %d jobs on %d connections'
            % (JOBS, JOBS))
    errs = [j.get('error') for j in jobs]
    r.check(jobs and all(e == 0 for e in errs), label + ': no job error '
            '(a verify failure is EILSEQ)', errs)
    # (Not fio's note "norandommap given for variable block sizes, verify
    # limited": that is the rule above.)
    vlines = [l for l in err.splitlines()
              if re.search(r'verify failed|bad magic|bad header|expected crc',
                           l, re.IGNORECASE)]
    r.check(not vlines, label + ': no verify complaint', '\n'.join(vlines))
    wr = sum(j['write']['io_bytes'] for j in jobs)
    rd = sum(j['read']['io_bytes'] for j in jobs)
    r.check(wr > 0 and rd > 0, label + ': %.0f MiB written, %.0f MiB read '
            'and verified in %.0f s' % (wr / MiB, rd / MiB, elapsed))
    r.check(not out['bad'] and out['ops'] > 0, label + ': the ninth '
            'connection (%d zeroes, trims, flushes, extents, reads) saw '
            'everything right' % out['ops'], out['bad'][:10])
    text = srv.stderr()
    if kind == 'asan':
        r.check('leak check at unload: none' in text, label + ': no leak '
                'when nbdkit unloads the plugin', text[-3000:])
    reports = srv.reports()
    r.check(not reports, label + ': no sanitizer report (nbdkit %s, '
            'status %s)' % (how, status), '\n'.join(reports)[:12000])
    return keep


def main():
    harness.require_plugin()
    harness.require_tools('fio', 'nbdkit')
    import nbd  # noqa: F401
    if subprocess.run([os.path.join(harness.TOP_SRCDIR, 'tests', 'fuzz',
                                    'build.sh'), BUILD]).returncode != 0:
        raise harness.TestFailure('tests/fuzz/build.sh failed')
    rng = random.Random(33)
    with harness.tempdir() as tmp:
        chain_dir = os.path.join(tmp, 'chain')
        c = g.Chain(chain_dir, seed=33)
        c.base('base.vhd', SIZE, writes=g.fill_writes(rng, SIZE))
        c.child('snap.avhd', writes=g.random_writes(rng, SIZE, 200,
                                                    max_sectors=400))
        points = c.write(expected='tip')
        tip = points[-1]
        expected = tip.expected()
        before = harness.snapshot([p.path for p in points])
        for kind in ('asan', 'tsan'):
            keep = r.run(soak, kind, tmp, tip.path, expected, chain_dir,
                         what=kind + ' soak')
            if not keep:
                continue
            bad = harness.vhd_structure_problems(keep, parent=tip.path,
                                                 block_size=2 * MiB)
            r.check(not bad, '%s: the layer is a sound VHD child' % kind,
                    '\n'.join(bad[:10]))
            with harness.Nbdkit(keep) as srv:
                h = srv.connect()
                got = h.pread(UNTOUCHED[1], UNTOUCHED[0])
                h.shutdown()
            r.check(got == expected[UNTOUCHED[0]:sum(UNTOUCHED)],
                    '%s: the layer shows the chain where nothing wrote'
                    % kind)
        r.equal(harness.changed_files(before), [], 'chain files unchanged')


if __name__ == '__main__':
    r.main(main)
