#!/usr/bin/python3
"""The systemd socket-activated service (issue 7, documentation).

contrib/vhdchain@.socket listens on port 10809 and starts
contrib/vhdchain@.service, which runs nbdkit with the vhdchain plugin on
the tip named by the instance (%f: the unescaped path).  Checked:

  - the socket unit listens on 10809 without Accept= (one nbdkit serves
    every client through the socket it is handed);
  - systemd-analyze verify accepts both units, as an instance;
  - the service's ExecStart=, with the specifiers expanded as systemd does
    (the instance escaped with systemd-escape --path, from a folder whose
    name needs escaping) and the installed plugin name mapped to the build
    tree's, runs under systemd-socket-activate -l 127.0.0.1:PORT (a free
    port): nbdkit takes the socket through LISTEN_FDS (it runs in the
    process systemd-socket-activate started, with LISTEN_FDS=1 and
    LISTEN_PID its own pid), serves the checkpoint byte for byte to several
    connections (nbdinfo, nbdcopy --connections=2), read-only, and stops
    cleanly on SIGTERM, as systemctl stop does;
  - an instance naming a missing file serves nothing.
"""

import configparser
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys

import harness
import vhdgen as g
from vhdgen import MiB

sys.path.insert(0, os.path.join(harness.TESTS_DIR, 'e2e'))
import e2elib  # noqa: E402

r = harness.Reporter('test-e2e-socket')

CONTRIB = os.path.join(harness.TOP_SRCDIR, 'contrib')
SOCKET_UNIT = os.path.join(CONTRIB, 'vhdchain@.socket')
SERVICE_UNIT = os.path.join(CONTRIB, 'vhdchain@.service')


def unit(path):
    c = configparser.ConfigParser(interpolation=None, strict=False)
    c.optionxform = str
    with open(path) as f:
        c.read_string(f.read())
    return c


def escape_path(path):
    return harness.run(['systemd-escape', '--path', path]).stdout.decode() \
        .strip()


def unescape_path(instance):
    return harness.run(['systemd-escape', '--unescape', '--path',
                        instance]).stdout.decode().strip()


def exec_start(instance):
    """The service's ExecStart= for an instance, specifiers expanded; the
    plugin name "vhdchain" mapped to the build tree's plugin, and nbdkit to
    the ASan pass's wrapper in that pass."""
    line = unit(SERVICE_UNIT)['Service']['ExecStart']
    spec = {'%f': unescape_path(instance), '%i': instance,
            '%I': unescape_path(instance).lstrip('/'), '%%': '%'}
    argv = []
    for word in shlex.split(line):
        for k, v in spec.items():
            word = word.replace(k, v)
        argv.append(harness.PLUGIN if word == 'vhdchain' else word)
    if harness.TEST_BIN and argv[0] == '/usr/bin/nbdkit':
        argv[0] = os.path.join(harness.TEST_BIN, 'nbdkit')
    return argv


def listening(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(('127.0.0.1', port)) == 0


class Activated:
    """systemd-socket-activate -l 127.0.0.1:PORT ARGV..."""

    def __init__(self, argv, folder):
        self.port = e2elib.free_port()
        self.errpath = os.path.join(folder, 'activate-%d.err' % self.port)
        with open(self.errpath, 'wb') as err:
            self.proc = subprocess.Popen(
                ['systemd-socket-activate', '-l', '127.0.0.1:%d' % self.port]
                + argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                env=e2elib.tool_env())
        e2elib.wait_for(lambda: 'Listening on' in self.err() or
                        self.proc.poll() is not None, 30,
                        'systemd-socket-activate to listen')

    def err(self):
        with open(self.errpath, errors='replace') as f:
            return f.read()

    def stop(self):
        return harness.terminate(self.proc, 30)


def proc_env(pid):
    with open('/proc/%d/environ' % pid, 'rb') as f:
        return dict(kv.split(b'=', 1) for kv in f.read().split(b'\0')
                    if b'=' in kv)


def body():
    harness.require_plugin()
    harness.require_tools('systemd-socket-activate', 'systemd-analyze',
                          'systemd-escape', 'nbdinfo', 'nbdcopy')
    sock = unit(SOCKET_UNIT)
    r.equal(sock['Socket'].get('ListenStream'), '10809',
            'the socket unit listens on port 10809')
    r.check(sock['Socket'].get('Accept', 'no') in ('no', 'false'),
            'the socket unit hands the listening socket to one service '
            '(Accept=no)')
    with harness.tempdir() as tmp:
        # A tip in a folder whose name needs escaping.
        folder = os.path.join(tmp, 'Hyper-V VMs')
        rng = random.Random(5)
        c = g.Chain(folder, seed=5)
        c.base('base.vhd', 16 * MiB, writes=g.random_writes(rng, 16 * MiB,
                                                            40))
        c.child('snap1.avhd', writes=g.random_writes(rng, 16 * MiB, 40))
        c.child('snap2.avhd', writes=g.random_writes(rng, 16 * MiB, 40))
        points = c.write()
        point = points[1]
        before = harness.snapshot([p.path for p in points])
        instance = escape_path(point.path)
        r.check('\\x20' in instance and '\\x2d' in instance,
                'the instance name escapes the blank and the dash', instance)

        units = os.path.join(tmp, 'units')
        os.makedirs(units)
        names = []
        for src, kind in ((SOCKET_UNIT, 'socket'), (SERVICE_UNIT, 'service')):
            shutil.copy(src, units)
            names.append('vhdchain@%s.%s' % (instance, kind))
            shutil.copy(src, os.path.join(units, names[-1]))
        p = subprocess.run(['systemd-analyze', 'verify', '--man=no'] + names,
                           cwd=units, capture_output=True, text=True)
        r.check(p.returncode == 0 and not p.stderr.strip(),
                'systemd-analyze verify accepts both units',
                p.stdout + p.stderr)

        argv = exec_start(instance)
        print('# ExecStart: %s' % ' '.join(shlex.quote(a) for a in argv))
        r.check(point.path in argv and harness.PLUGIN in argv,
                'ExecStart= serves the instance\'s path with the plugin',
                argv)
        act = Activated(argv, tmp)
        try:
            r.check(act.proc.poll() is None and listening(act.port),
                    'systemd-socket-activate listens on the free port',
                    act.err())
            uri = 'nbd://127.0.0.1:%d' % act.port
            info = e2elib.run_timed(['nbdinfo', '--json', uri], 60)
            r.equal(info.returncode, 0, 'nbdinfo through the activated '
                    'socket', )
            import json
            j = json.loads(info.stdout or b'{}')
            ex = (j.get('exports') or [{}])[0]
            r.equal((ex.get('export-size'), ex.get('is_read_only')),
                    (point.size, True),
                    'the export: the checkpoint\'s size, read-only')
            pid = act.proc.pid
            exe = os.path.basename(os.readlink('/proc/%d/exe' % pid))
            env = proc_env(pid)
            r.check(exe == 'nbdkit' and env.get(b'LISTEN_FDS') == b'1' and
                    env.get(b'LISTEN_PID') == str(pid).encode(),
                    'nbdkit runs in the activated process with the socket '
                    'passed through LISTEN_FDS', (exe, env.get(b'LISTEN_FDS'),
                                                  env.get(b'LISTEN_PID')))
            out = os.path.join(tmp, 'copy.raw')
            cp = e2elib.run_timed(['nbdcopy', '--connections=2',
                                   '--threads=2', uri, out], 120)
            r.check(cp.returncode == 0 and
                    harness.sha256_file(out) == point.sha256,
                    'nbdcopy over 2 connections reads the checkpoint '
                    'byte for byte', cp.stderr.decode())
            import nbd
            h = nbd.NBD()
            h.connect_uri(uri)
            try:
                h.pwrite(b'x' * 512, 0)
                wrote = True
            except nbd.Error:
                wrote = False
            h.shutdown()
            r.check(not wrote, 'writes are refused (nbdkit -r)')
        finally:
            rc = act.stop()
        r.equal(rc, 0, 'nbdkit exits cleanly on SIGTERM (systemctl stop)')
        r.equal(harness.changed_files(before), [], 'the chain files are '
                'unchanged')

        # An instance naming a file that is not there serves nothing.
        act = Activated(exec_start(escape_path(os.path.join(
            folder, 'missing.avhd'))), tmp)
        try:
            p = e2elib.run_timed(['nbdinfo', 'nbd://127.0.0.1:%d' % act.port],
                                 60)
            r.check(p.returncode != 0, 'an instance for a missing file '
                    'serves nothing', p.stdout.decode())
        finally:
            act.stop()


if __name__ == '__main__':
    r.main(body)
