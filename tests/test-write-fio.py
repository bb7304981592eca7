#!/usr/bin/python3
"""fio through the writable layer: parallel writers, checksummed blocks.

fio's nbd engine talks to the real plugin in a real nbdkit serving a
vhdgen chain (base + child, both with data) with a kept layer.  Each
workload runs 4 jobs at once, on 4 connections, with verify=crc32c (every
block carries a checksummed header with its offset; fio reads everything
back after writing and fails on any mismatch):

  own      randwrite, 512 B - 256 KiB blocks, each job on its own region;
           the regions do not start on 2 MiB block borders, so neighbours
           share a block; flushes every 16 writes
  strided  randwrite of 512-byte blocks, the jobs interleaved sector by
           sector (zonemode=strided): all four write the same blocks, the
           same bitmap bytes, at once
  mixed    randrw, 512 B - 64 KiB, verify_backlog (verify reads interleave
           with the writes and reads)

Then the layer is served alone, read-only (nbdkit -r PLUGIN LAYER), and
fio --verify_only replays every workload's writes and checks them all
again; the layer must also be a sound VHD.  A negative control runs the
same verify against the bare chain and must fail, so the verify is known
to bite.  Asserted: exit status 0, every job's error 0, and the verify read
back at least as many bytes as were written.
"""

import json
import os
import random
import subprocess
import time

import harness
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-write-fio')

SIZE = 64 * MiB

COMMON = ['--ioengine=nbd', '--verify=crc32c', '--numjobs=4',
          '--verify_state_save=0',
          '--iodepth=8', '--randrepeat=1', '--group_reporting=0']

WORKLOADS = {
    'own': ['--rw=randwrite', '--bsrange=512-256k', '--blockalign=512',
            '--offset=0', '--size=5888k', '--offset_increment=5888k',
            '--fsync=16'],
    'strided': ['--rw=randwrite', '--bs=512', '--zonemode=strided',
                '--zonesize=1k', '--zoneskip=3k', '--offset=24M',
                '--offset_increment=1k', '--size=4M', '--fsync=64'],
    'mixed': ['--rw=randrw', '--bsrange=512-64k', '--blockalign=512',
              '--offset=40M', '--size=5M', '--offset_increment=5M',
              '--verify_backlog=32', '--fsync=32'],
}


def fio(uri, name, extra=(), cwd=None):
    """Run a workload; return (exit status, jobs from the JSON, stderr)."""
    # Engine options (--uri) only parse after --ioengine.
    argv = ['fio', '--output-format=json', '--name=' + name] + COMMON + \
        ['--uri=' + uri] + WORKLOADS[name] + list(extra)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120, cwd=cwd or FIO_CWD)
    out = p.stdout
    try:
        jobs = json.loads(out[out.index('{'):])['jobs']
    except ValueError:
        jobs = []
    return p.returncode, jobs, p.stderr


FIO_CWD = None     # set to the test's temporary folder: fio drops files


def verify_lines(stderr):
    return [l for l in stderr.splitlines() if 'verify' in l.lower() or
            'bad magic' in l.lower()]


def check_run(label, rc, jobs, stderr, want_writes):
    r.check(rc == 0, label + ': fio exit status 0',
            'exit %d\n%s' % (rc, stderr[-3000:]))
    r.equal(len(jobs), 4, label + ': 4 jobs reported')
    errs = [j['error'] for j in jobs]
    r.check(errs and all(e == 0 for e in errs), label + ': no job error '
            '(verify errors would be EILSEQ 84)',
            'errors %r\n%s' % (errs, '\n'.join(verify_lines(stderr)[:10])))
    r.check(not verify_lines(stderr), label + ': no verify complaint',
            '\n'.join(verify_lines(stderr)[:10]))
    written = [j['write']['io_bytes'] for j in jobs]
    read = [j['read']['io_bytes'] for j in jobs]
    if want_writes:
        r.check(jobs and all(w > 0 for w in written) and
                all(rd >= w for rd, w in zip(read, written)),
                label + ': every job wrote and read back at least as much',
                'written %r read %r' % (written, read))
    else:
        r.check(jobs and all(rd > 0 for rd in read),
                label + ': every job read its blocks back', 'read %r' % read)


def build_chain(folder):
    rng = random.Random(21)
    c = g.Chain(folder, seed=21)
    c.base('base.vhd', SIZE, writes=g.fill_writes(rng, 8 * MiB) +
           g.random_writes(rng, SIZE, 60, max_sectors=400))
    c.child('snap1.avhd', writes=g.random_writes(rng, SIZE, 80,
                                                 max_sectors=300))
    return c.write(expected=False)


def main():
    harness.require_plugin()
    harness.require_tools('fio')
    global FIO_CWD
    with harness.tempdir() as tmp:
        FIO_CWD = tmp
        points = build_chain(os.path.join(tmp, 'chain'))
        tip = points[-1].path
        before = harness.snapshot([p.path for p in points])
        keep = os.path.join(tmp, 'chain', 'fio.avhd')
        t0 = time.monotonic()
        with harness.Nbdkit(tip, 'overlay=' + keep, readonly=False) as srv:
            for name in WORKLOADS:
                rc, jobs, err = fio(srv.uri, name)
                check_run(name, rc, jobs, err, want_writes=True)
        print('# writes and verifies: %.1f s' % (time.monotonic() - t0))
        bad = harness.vhd_structure_problems(keep, parent=tip,
                                             block_size=2 * MiB)
        r.check(not bad, 'the layer is a sound VHD child', '\n'.join(bad))
        with harness.Nbdkit(keep) as srv:
            for name in WORKLOADS:
                rc, jobs, err = fio(srv.uri, name, ['--verify_only'])
                check_run(name + ' verify_only on the layer served alone',
                          rc, jobs, err, want_writes=False)
        # Negative control: without the layer the checksums cannot match.
        with harness.Nbdkit(tip) as srv:
            rc, jobs, err = fio(srv.uri, 'strided', ['--verify_only'])
            r.check(rc != 0 and any(j['error'] for j in jobs) and
                    verify_lines(err),
                    'control: verify_only on the bare chain fails',
                    'exit %d, errors %r' % (rc, [j['error'] for j in jobs]))
        r.equal(harness.changed_files(before), [], 'chain files unchanged')
        print('# total %.1f s' % (time.monotonic() - t0))


if __name__ == '__main__':
    r.main(main)
