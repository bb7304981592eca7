#!/usr/bin/python3
"""Hostile images (issue 8, "Malformed inputs"): nbdkit refuses every one
with one line, and nothing worse happens.

Table-driven.  The cases are this file's own (below: every structure's
fields pushed out of range, truncation at each structure boundary, BAT
loops and overlaps, parent cycles, a chain deeper than the bound, hostile
locator strings: empty, odd-length, invalid UTF-16, overlong, /etc/passwd,
..\\..\\.., UNC, symlinks and folders escaping, case drift outside) and
those of test-malformed.py and test-vhdx-malformed.py, imported and run
again here under the same watch.  For each case nbdkit runs as

    strace -f -ff -y -e trace=open,openat,openat2 \\
        prlimit --as=1GiB nbdkit -f -r PLUGIN TIP [params]

and must, within 60 seconds (no hang) and under the address-space limit
(no unbounded allocation), exit with status 1 (no crash, no signal) after
printing exactly one error line that names the damaged file and holds the
case's keyword.  The trace must show that every file opened (by the
descriptor's own path, as strace -y prints it) lies in an allowed folder
of that case (the tip's folder, the Hyper-V VM folder around it, search=
and drive= folders) or is a system file the baseline run also opened
(libraries, locale); that nothing under the test's folders was opened for
writing; and /etc/passwd, the bait most cases aim at, never.  Each
fixture family is first served undamaged under the same watch (it must
start), so a refusal is the damage's doing.
"""

import importlib.util
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import time

import harness
import vhdgen as g
import vhdxgen as x
from vhdgen import KiB, MiB

r = harness.Reporter('test-hostile')

AS_LIMIT = 1 << 30              # prlimit --as for nbdkit
TIMEOUT = 60                    # seconds before a start counts as a hang
SYSTEM = ('/usr/', '/lib/', '/lib64/', '/etc/ld.so.cache', '/proc/',
          '/sys/devices/system/', '/dev/null', '/dev/urandom',
          '/etc/locale.alias', '/etc/gnutls/')
FORBIDDEN = ('/etc/passwd', '/etc/shadow')
WRITE_FLAGS = re.compile(r'O_WRONLY|O_RDWR|O_CREAT|O_TRUNC')
TESTS = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- watch

def parse_trace(prefix):
    """[(path of the opened descriptor, the call's text)] of every
    successful open in the strace -ff output files prefix.*."""
    folder, base = os.path.split(prefix)
    opens = []
    ok = re.compile(r'^(open|openat|openat2)\((.*)\)\s+= \d+<(.*)>$')
    for name in os.listdir(folder):
        if not name.startswith(base + '.'):
            continue
        with open(os.path.join(folder, name), errors='replace') as f:
            for line in f:
                m = ok.match(line.rstrip('\n'))
                if m:
                    opens.append((m.group(3), m.group(2)))
    return opens


class Run:
    """nbdkit under strace and prlimit; see the top of the file."""

    def __init__(self, tip, params, run_dir):
        os.makedirs(run_dir)
        self.run_dir = run_dir
        sock, pidf = os.path.join(run_dir, 'sock'), \
            os.path.join(run_dir, 'pid')
        trace = os.path.join(run_dir, 'trace')
        argv = ['strace', '-f', '-ff', '-qq', '-y', '-e',
                'trace=open,openat,openat2', '-o', trace,
                'prlimit', '--as=%d' % AS_LIMIT, '--',
                'nbdkit', '-f', '-U', sock, '-P', pidf, '--exit-with-parent',
                '-r', harness.PLUGIN, tip] + list(params)
        env = None
        if harness.SANITIZED:
            # ASan reserves terabytes of shadow address space, so the bound
            # is its own: no allocation over the limit, no RSS beyond it.
            argv[argv.index('prlimit'):argv.index('--') + 1] = []
            env = dict(os.environ, ASAN_OPTIONS=os.environ.get(
                'ASAN_OPTIONS', '') + ':max_allocation_size_mb=%d'
                ':hard_rss_limit_mb=%d' % (AS_LIMIT >> 20, AS_LIMIT >> 20)
                # LeakSanitizer cannot work under ptrace: test-malformed
                # and test-vhdx-malformed check these cases for leaks.
                + ':detect_leaks=0')
        errpath = os.path.join(run_dir, 'stderr')
        t0 = time.monotonic()
        self.started = self.hung = False
        with open(errpath, 'wb') as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                 stderr=err, env=env)
        while p.poll() is None:
            if os.path.exists(pidf) and os.path.getsize(pidf):
                self.started = True
                with open(pidf) as f:
                    os.kill(int(f.read()), signal.SIGTERM)
                break
            if time.monotonic() - t0 > TIMEOUT:
                self.hung = True
                p.kill()
                break
            time.sleep(0.01)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.seconds = time.monotonic() - t0
        self.rc = p.returncode
        with open(errpath, 'rb') as f:
            self.stderr = f.read().decode(errors='replace')
        self.opens = parse_trace(trace)


def allowed_roots(tip, params):
    """The allowed folders as README "What vhdchain trusts" defines them,
    computed here independently of core/locator.c."""
    d = os.path.dirname(os.path.realpath(tip))
    roots, cur = {d}, d
    while cur != '/':
        if os.path.basename(cur).lower() in ('snapshots',
                                             'virtual hard disks'):
            roots.add(os.path.dirname(cur))
            break
        cur = os.path.dirname(cur)
    for p in params:
        k, _, v = p.partition('=')
        if k == 'search':
            roots.add(os.path.realpath(v))
        elif k == 'drive':
            roots.add(os.path.realpath(v[2:]))
    return roots


def under(path, folder):
    return path == folder or path.startswith(folder.rstrip('/') + '/')


def violations(run, tmp, roots, baseline):
    """What the trace shows that must not happen."""
    bad = []
    for path, call in run.opens:
        if under(path, run.run_dir):
            continue
        if under(path, tmp):
            if WRITE_FLAGS.search(call):
                bad.append('opened for writing: %s' % path)
            if not any(under(path, f) for f in roots):
                bad.append('opened outside the allowed folders: %s' % path)
        elif any(path == f or under(path, f) for f in FORBIDDEN):
            bad.append('opened %s' % path)
        elif path not in baseline and path != os.path.realpath(
                harness.PLUGIN) and not path.startswith(SYSTEM):
            bad.append('opened a file the baseline run did not: %s' % path)
    return bad


# ---------------------------------------------------------------- fixtures

def cp(src, dst):
    harness.run(['cp', '-a', '--sparse=always', src, dst])


def vhd_pair(folder, size=4 * MiB, bs=1 * MiB, seed=1, **child):
    """base.vhd and snap.avhd (Windows locators), every block of both
    allocated.  Returns (base path, child path)."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed)
    c.base('base.vhd', size, block_size=bs,
           writes=[(b * bs + 512, rng.randbytes(512))
                   for b in range(size // bs)])
    c.child('snap.avhd', block_size=bs,
            writes=[(b * bs + 1024, rng.randbytes(512))
                    for b in range(size // bs)], **child)
    pts = c.write(expected=False)
    return pts[0].path, pts[1].path


def vhd_moved(folder, locators, parent_name='base.vhd'):
    """vm/snap.avhd whose parent base.vhd sits in outside/ (next to vm/),
    reachable only by escaping: the child holds `locators` and
    parent_name.  Returns (tip, case folder)."""
    vm, out = os.path.join(folder, 'vm'), os.path.join(folder, 'outside')
    os.makedirs(vm)
    base, snap = vhd_pair(vm, parent_name=parent_name, locators=locators)
    os.makedirs(out)
    os.rename(base, os.path.join(out, 'base.vhd'))
    return snap


def vhd_bat(path):
    h = g.read_header(path)
    return h['table_offset'], g.read_bat(path)


def vhdx_pair(folder, seed=2, **base_opts):
    """base.vhdx (dynamic, 4 MiB blocks) and child.avhdx, with data."""
    rng = random.Random(seed)
    c = x.Chain(folder, seed=seed)
    size = 12 * MiB
    c.base('base.vhdx', size, block_size=4 * MiB,
           writes=[(b * 4 * MiB + 4096, rng.randbytes(8192))
                   for b in range(3)], **base_opts)
    c.child('child.avhdx', writes=x.random_writes(rng, size, 20) +
            [(6 * MiB, rng.randbytes(2 * MiB))])
    pts = c.write(expected=False)
    return pts[0].path, pts[1].path


TEMPLATES = {}


def template(tmp, name, make):
    """A fixture folder built once and copied (sparse) for each case."""
    if name not in TEMPLATES:
        folder = os.path.join(tmp, 'templates', name)
        make(folder)
        TEMPLATES[name] = folder
    return TEMPLATES[name]


def vhdx_copy(tmp, folder, dirty=False):
    name = 'vhdx-dirty' if dirty else 'vhdx'
    src = template(tmp, name, lambda f: vhdx_pair(
        f, **({'dirty_log': True, 'log_entries': 2} if dirty else {})))
    cp(src, folder)
    return os.path.join(folder, 'base.vhdx'), \
        os.path.join(folder, 'child.avhdx')


def md(path):
    return x.read_metadata(path)


def md_entry_index(path, guid):
    for i, (gid, off, length, flags) in enumerate(md(path)['entries']):
        if gid == guid and not flags & x.MD_IS_USER:
            return i
    raise KeyError(guid)


def set_md_entry(path, i, guid=None, offset=None, length=None, flags=None,
                 m=None):
    m = m or md(path)
    e = list(m['entries'][i])
    for k, v in ((0, guid), (1, offset), (2, length), (3, flags)):
        if v is not None:
            e[k] = v
    with open(path, 'r+b') as f:
        f.seek(m['offset'] + 32 + 32 * i)
        f.write(struct.pack('<16sIII', *e))


def write_at(path, off, data):
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(data)


def raw_locator(pairs, count=None, loc_type=x.GUID_LOCATOR_TYPE_VHDX,
                offsets=None):
    """A parent locator item from raw UTF-16LE byte strings; offsets
    [(key offset, value offset)] override where entries point."""
    n = len(pairs)
    head = bytearray(20 + 12 * n)
    head[0:16] = loc_type
    struct.pack_into('<HH', head, 16, 0, n if count is None else count)
    strings, at = bytearray(), len(head)
    for i, (kb, vb) in enumerate(pairs):
        ko, vo = (at, at + len(kb)) if offsets is None else offsets[i]
        struct.pack_into('<IIHH', head, 20 + 12 * i, ko, vo, len(kb),
                         len(vb))
        strings += kb + vb
        at += len(kb) + len(vb)
    return bytes(head + strings)


def set_locator_item(path, item):
    """Replace the parent locator item (read once: vhdxgen's reader
    would choke on what is written)."""
    m = md(path)
    i = [k for k, e in enumerate(m['entries'])
         if e[0] == x.GUID_PARENT_LOCATOR][0]
    write_at(path, m['offset'] + m['entries'][i][1], item)
    set_md_entry(path, i, length=len(item), m=m)


def u16(s):
    return s.encode('utf-16-le')


def linkage_of(path):
    return u16(x.linkage_text(x.current_header(path)[1]['data_write_guid']))


def locator_pairs(parent, **paths):
    pairs = [(u16('parent_linkage'), linkage_of(parent))]
    for k, v in paths.items():
        pairs.append((u16(k), u16(v)))
    return pairs


def cur_slot(path):
    return x.current_header(path)[0]


def vhdx_info(path):
    return x.read_file(path)


def make_dirty(path, entries, log_off=None, log_len=None):
    """Give path a dirty log made of `entries` (bytes each, from
    x.log_entry with LOG_GUID) in its log region (or log_off/log_len)."""
    slot = cur_slot(path)
    h = x.current_header(path)[1]
    off = h['log_offset'] if log_off is None else log_off
    length = h['log_length'] if log_len is None else log_len
    fields = dict(log_guid=LOG_GUID, log_offset=off, log_length=length)
    x.patch_header(path, slot, **fields)
    pos = off
    for e in entries:
        write_at(path, pos, e)
        pos += len(e)
    if os.path.getsize(path) < off + length:
        os.truncate(path, off + length)


LOG_GUID = x.guid_raw('0badc0de-1111-4222-8333-444455556666')


# ---------------------------------------------------------------- VHD cases

def on_vhd(which, damage, serve='damaged'):
    """Build the VHD pair, damage base.vhd or snap.avhd; serve the damaged
    file (serve='damaged') or the child (serve='child')."""
    def build(folder, tmp):
        base, snap = vhd_pair(folder)
        victim = base if which == 'base' else snap
        damage(victim)
        return (victim if serve == 'damaged' else snap), [], \
            os.path.basename(victim)
    return build


def footer(**kw):
    return lambda p: g.patch_footer(p, **kw)


def header(**kw):
    return lambda p: g.patch_header(p, **kw)


def data_offset_into_footer(p):
    g.patch_footer(p, data_offset=os.path.getsize(p) - 512)


def data_offset_past_eof(p):
    g.patch_footer(p, data_offset=os.path.getsize(p) + 4096)


def bat_offset(rel):
    def damage(p):
        t = g.read_header(p)['table_offset']
        g.patch_header(p, table_offset=rel(t, os.path.getsize(p)))
    return damage


def bat_entry(pick):
    """Set BAT entry b to what pick(bat list, path) returns (b, sector)."""
    def damage(p):
        b, sector = pick(g.read_bat(p), p)
        g.set_bat_entry(p, b, sector)
    return damage


def allocated(bat):
    return [i for i, e in enumerate(bat) if e != g.UNALLOCATED]


def loc_sector(p):
    return g.read_header(p)['table_offset'] // 512


def vhd_fixed_short(folder, tmp):
    os.makedirs(folder)
    v = g.VhdFile('fixed', 2 * MiB, rng=random.Random(4))
    p = v.save(os.path.join(folder, 'fixed.vhd'))
    g.patch_footer(p, where='trailer', current_size=4 * MiB)
    return p, [], 'fixed.vhd'


def vhd_sparse_bat_bomb(folder, tmp):
    """A dynamic header claiming 2040 GiB in 4 KiB blocks, its 2 GiB BAT
    a hole (zeros: every block "at sector 0"): a few KiB on disk.  Memory
    for the BAT checks must follow what the file can hold, not the BAT's
    length (534 million entries)."""
    os.makedirs(folder)
    size, bs = 2040 * g.GiB, 4 * KiB
    entries = size // bs
    v = g.VhdFile('dynamic', 1 * MiB, rng=random.Random(5), block_size=bs)
    p = v.save(os.path.join(folder, 'huge.vhd'))
    foot = open(p, 'rb').read(512)
    end = 1536 + entries * 4 + 4096
    os.truncate(p, end + 512)
    write_at(p, end, foot)
    write_at(p, 0, foot)
    for where in ('trailer', 'copy'):
        g.patch_footer(p, where=where, current_size=size,
                       original_size=size)
    g.patch_header(p, max_table_entries=entries, block_size=bs,
                   table_offset=1536)
    return p, [], 'huge.vhd'


def vhd_truncated(size_of, **child):
    def build(folder, tmp):
        base, snap = vhd_pair(folder, **child)
        victim = snap
        os.truncate(victim, size_of(victim))
        return victim, [], os.path.basename(victim)
    return build


def locator_payload_end(p):
    h = g.read_header(p)
    raw = open(p, 'rb').read()[512:1536]
    for slot in range(8):
        code, space, length, _, off = g.LOCATOR_ENTRY.unpack_from(
            raw, g.LOCATOR_TABLE + 24 * slot)
        if code == b'W2ru':
            return off + length // 2
    raise AssertionError('no W2ru in %s (%r)' % (p, h))


def vhd_self_parent(folder, tmp):
    os.makedirs(folder)
    rng = random.Random(6)
    v = g.VhdFile('differencing', 4 * MiB, rng=rng, block_size=1 * MiB,
                  parent_name='self.vhd', locators=[g.w2ru('.\\self.vhd')])
    v.parent_uid = v.uid
    v.apply([(0, rng.randbytes(512))])
    return v.save(os.path.join(folder, 'self.vhd')), [], 'self.vhd'


def vhd_link_cycle(folder, tmp):
    """a.vhd's parent is link.vhd, a symlink to a.vhd (same identity)."""
    os.makedirs(folder)
    rng = random.Random(7)
    v = g.VhdFile('differencing', 4 * MiB, rng=rng, block_size=1 * MiB,
                  parent_name='link.vhd', locators=[g.w2ru('.\\link.vhd')])
    v.parent_uid = v.uid
    v.apply([(0, rng.randbytes(512))])
    p = v.save(os.path.join(folder, 'a.vhd'))
    os.symlink('a.vhd', os.path.join(folder, 'link.vhd'))
    return p, [], 'a.vhd'


def vhd_under_vhdx(folder, tmp):
    """A VHD child whose locator names a VHDX file."""
    os.makedirs(folder)
    base, _ = vhdx_copy(tmp, os.path.join(folder, 'x'))
    os.rename(base, os.path.join(folder, 'base.vhdx'))
    shutil.rmtree(os.path.join(folder, 'x'))
    rng = random.Random(8)
    v = g.VhdFile('differencing', 4 * MiB, rng=rng, block_size=1 * MiB,
                  parent_name='base.vhdx', locators=[g.w2ru('.\\base.vhdx')])
    return v.save(os.path.join(folder, 'snap.avhd')), [], 'snap.avhd'


def moved(locators, parent_name='base.vhd', params=(), prep=None):
    """The child in vm/, its parent only in outside/; optional prep(folder)
    adds links or files; params may name folders as {vm}, {folder}."""
    def build(folder, tmp):
        tip = vhd_moved(folder, locators, parent_name)
        if prep:
            prep(folder)
        return tip, [p.format(vm=os.path.join(folder, 'vm'), folder=folder)
                     for p in params], 'snap.avhd'
    return build


def loc(code, payload, **kw):
    return g.Locator(code, payload, **kw)


def link_dir_out(folder):
    os.symlink('../outside', os.path.join(folder, 'vm', 'link'))


def link_passwd(folder):
    os.symlink('/etc/passwd', os.path.join(folder, 'vm', 'base.vhd'))


def fifo_parent(folder):
    os.mkfifo(os.path.join(folder, 'vm', 'base.vhd'))


def dir_parent(folder):
    os.mkdir(os.path.join(folder, 'vm', 'base.vhd'))


DEEP_NAMES = 'C:\\' + '\\'.join(['a' * 200] * 150) + '\\base.vhd'

VHD_CASES = [
    # name, builder, keyword
    ('VHD footer version 2.0', on_vhd('base', footer(version=0x00020000)),
     'unsupported version'),
    ('VHD footer disk type 1', on_vhd('base', footer(disk_type=1)),
     'disk type 1'),
    ('VHD footer disk type 6', on_vhd('child', footer(disk_type=6)),
     'disk type 6'),
    ('VHD footer data offset unaligned',
     on_vhd('base', footer(data_offset=513)), 'data offset'),
    ('VHD footer data offset past the end',
     on_vhd('child', data_offset_past_eof), 'data offset'),
    ('VHD footer data offset at the trailing footer',
     on_vhd('base', data_offset_into_footer), 'data offset'),
    ('VHD footer data offset 0', on_vhd('base', footer(data_offset=0)),
     'data offset'),
    ('VHD header version 2.0', on_vhd('child', header(version=0x00020000)),
     'unsupported version'),
    ('VHD BAT offset unaligned', on_vhd('base', bat_offset(
        lambda t, s: t + 3)), 'BAT offset'),
    ('VHD BAT offset past the end', on_vhd('child', bat_offset(
        lambda t, s: s + 512)), 'BAT offset'),
    ('VHD BAT over the dynamic header', on_vhd('base', bat_offset(
        lambda t, s: 1024)), 'overlaps'),
    ('VHD block size 2 KiB', on_vhd('base', header(block_size=2048)),
     'block size'),
    ('VHD block size 512 MiB', on_vhd('child', header(block_size=512 * MiB)),
     'block size'),
    ('VHD max table entries 0', on_vhd('base', header(max_table_entries=0)),
     'entries'),
    ('VHD fixed, current size past the data', vhd_fixed_short,
     'current size'),
    ('VHD BAT entry into the footer copy',
     on_vhd('base', bat_entry(lambda bat, p: (allocated(bat)[0], 0))),
     'overlaps'),
    ('VHD BAT entry into a locator payload',
     on_vhd('child', bat_entry(lambda bat, p: (
         allocated(bat)[1], locator_payload_end(p) // 512 - 1))),
     'overlaps'),
    ('VHD two BAT entries for one block',
     on_vhd('base', bat_entry(lambda bat, p: (
         allocated(bat)[1], bat[allocated(bat)[0]]))), 'overlaps'),
    ('VHD BAT entry 0xFFFFFFFE', on_vhd('child', bat_entry(
        lambda bat, p: (allocated(bat)[0], 0xFFFFFFFE))), 'past the end'),
    ('VHD parent with a bad BAT entry', on_vhd('base', bat_entry(
        lambda bat, p: (allocated(bat)[0], 0xFFFFFFF0)), serve='child'),
     'past the end'),
    ('VHD 2040 GiB of 4 KiB blocks, zero BAT in a sparse file',
     vhd_sparse_bat_bomb, 'BAT'),
    ('VHD file of 0 bytes', vhd_truncated(lambda p: 0), 'not a VHD'),
    # 511 bytes of a footer copy read as a pre-2004 511-byte footer.
    ('VHD file of 511 bytes', vhd_truncated(lambda p: 511), 'data offset'),
    ('VHD truncated to the footer copy', vhd_truncated(lambda p: 512),
     'data offset'),
    ('VHD truncated after the dynamic header',
     vhd_truncated(lambda p: 1536), 'BAT offset'),
    ('VHD truncated inside the BAT', vhd_truncated(
        lambda p: g.read_header(p)['table_offset'] + 4), 'BAT offset'),
    ('VHD truncated inside a locator payload', vhd_truncated(
        locator_payload_end, bat_first=True), 'parent locator'),
    ('VHD parent is itself', vhd_self_parent, 'cycle'),
    ('VHD parent is a symlink to the child', vhd_link_cycle, 'cycle'),
    ('VHD child over a VHDX parent', vhd_under_vhdx, 'VHDX image under'),
    # Locator strings.
    ('W2ru of data length 0', moved([loc(b'W2ru', b'', length=0)]),
     'data length 0'),
    ('W2ru holding only NULs', moved([loc(b'W2ru', b'\0' * 8)]),
     'empty path'),
    ('W2ru of odd length', moved([loc(b'W2ru', b'.\0\\\0b')]),
     'odd UTF-16'),
    ('W2ku with an unpaired surrogate',
     moved([loc(b'W2ku', u16('C:\\x\\') + b'\x00\xdc' + u16('.vhd'))]),
     'invalid UTF-16'),
    ('W2ru with a NUL inside',
     moved([loc(b'W2ru', u16('.\\ba') + b'\0\0' + u16('se.vhd'))]),
     'NUL inside'),
    ('W2ru data length of 1 MiB',
     moved([loc(b'W2ru', u16('.\\base.vhd'), length=1 * MiB)]),
     'data length'),
    ('W2ru payload offset unaligned',
     moved([loc(b'W2ru', u16('.\\base.vhd'), offset=5001)]),
     'unaligned or past'),
    ('header parent name not UTF-16BE',
     on_vhd('child', header(parent_name=b'\xdc\x00\x00a'), serve='child'),
     'parent name'),
    ('W2ku of 60000 characters (longer than PATH_MAX)',
     moved([loc(b'W2ku', u16(DEEP_NAMES))], parent_name='x'),
     'parent not found'),
    ('W2ku C:\\..\\..\\..\\etc\\passwd through drive=',
     moved([g.w2ku('C:\\..\\..\\..\\..\\..\\..\\..\\etc\\passwd')],
           parent_name='x', params=('drive=C:{vm}',)),
     'outside the allowed folders'),
    ('W2ru ..\\..\\..\\..\\etc\\passwd',
     moved([g.w2ru('..\\' * 12 + 'etc\\passwd')], parent_name='x'),
     'outside the allowed folders'),
    ('MacX file:///etc/passwd', moved([g.macx('file:///etc/passwd')],
                                      parent_name='x'),
     'outside the allowed folders'),
    ('W2ru ..\\outside\\base.vhd', moved([g.w2ru('..\\outside\\base.vhd')]),
     'outside the allowed folders'),
    ('W2ku UNC \\\\server\\share\\base.vhd',
     moved([g.w2ku('\\\\server\\share\\outside\\base.vhd')],
           parent_name='\\\\server\\share\\outside\\base.vhd'),
     'parent not found'),
    ('W2ku \\\\?\\UNC\\server\\share\\base.vhd',
     moved([g.w2ku('\\\\?\\UNC\\server\\share\\base.vhd')], parent_name='y'),
     'parent not found'),
    ('W2ru through a folder symlink out',
     moved([g.w2ru('.\\link\\base.vhd')], parent_name='x',
           prep=link_dir_out), 'outside the allowed folders'),
    ('parent name is a symlink to /etc/passwd',
     moved([g.w2ru('.\\base.vhd')], prep=link_passwd),
     'outside the allowed folders'),
    ('case-drifted path to a folder outside',
     moved([g.w2ru('..\\OUTSIDE\\BASE.VHD'),
            g.w2ku('C:\\..\\..\\..\\..\\ETC\\PASSWD')], parent_name='z',
           params=('drive=C:{vm}',)), 'parent not found'),
    ('parent is a FIFO', moved([g.w2ru('.\\base.vhd')], prep=fifo_parent),
     'not a regular file'),
    ('parent is a folder', moved([g.w2ru('.\\base.vhd')], prep=dir_parent),
     'not a regular file'),
]


# ---------------------------------------------------------------- VHDX cases

def on_vhdx(which, damage, dirty=False, serve='damaged'):
    def build(folder, tmp):
        base, child = vhdx_copy(tmp, folder, dirty)
        victim = base if which == 'base' else child
        damage(victim)
        return (victim if serve == 'damaged' else child), [], \
            os.path.basename(victim)
    return build


def hdr(**kw):
    return lambda p: x.patch_header(p, cur_slot(p), **kw)


def both_headers(**kw):
    def damage(p):
        x.patch_header(p, 1, **kw)
        x.patch_header(p, 2, **kw)
    return damage


def region(guid, **kw):
    return lambda p: x.patch_region(p, guid, **kw)


def rt_count(n):
    def damage(p):
        for at in (x.RT1, x.RT2):
            with open(p, 'r+b') as f:
                f.seek(at)
                raw = bytearray(f.read(x.RT_SIZE))
            struct.pack_into('<I', raw, 8, n)
            write_at(p, at, bytes(x.with_crc(raw)))
    return damage


def rt_duplicate(p):
    off, length, req = x.regions_of(p)[x.GUID_BAT]
    x.patch_region(p, x.GUID_BAT, add=True, offset=off + 64 * MiB,
                   length=length, required=req)


def rt_drop_bat(p):
    for at in (x.RT1, x.RT2):
        with open(p, 'r+b') as f:
            f.seek(at)
            raw = bytearray(f.read(x.RT_SIZE))
        n = struct.unpack_from('<I', raw, 8)[0]
        ents = [raw[16 + 32 * i:48 + 32 * i] for i in range(n)]
        ents = [e for e in ents if bytes(e[:16]) != x.GUID_BAT]
        raw[16:16 + 32 * n] = bytes(32 * n)
        for i, e in enumerate(ents):
            raw[16 + 32 * i:48 + 32 * i] = e
        struct.pack_into('<I', raw, 8, len(ents))
        write_at(p, at, bytes(x.with_crc(raw)))


def rt_both_crc(p):
    for at in (x.RT1, x.RT2):
        write_at(p, at + 1000, b'\x77')


def md_header(count=None, sig=None):
    def damage(p):
        off = md(p)['offset']
        if sig is not None:
            write_at(p, off, sig)
        if count is not None:
            write_at(p, off + 10, struct.pack('<H', count))
    return damage


def md_set(guid, **kw):
    return lambda p: set_md_entry(p, md_entry_index(p, guid), **kw)


def md_duplicate(p):
    e = md(p)['entries'][md_entry_index(p, x.GUID_VIRTUAL_DISK_ID)]
    x.add_metadata_entry(p, e[0], e[3], data=b'\x11' * 16)


def md_overlap(p):
    m = md(p)
    a = m['entries'][md_entry_index(p, x.GUID_VIRTUAL_DISK_SIZE)]
    set_md_entry(p, md_entry_index(p, x.GUID_LOGICAL_SECTOR),
                 offset=a[1] + 4)


def md_drop_size(p):
    set_md_entry(p, md_entry_index(p, x.GUID_VIRTUAL_DISK_SIZE),
                 guid=x.guid_raw('5ca1ab1e-0000-4000-8000-000000000001'),
                 flags=0)


def item(guid, data):
    return lambda p: x.patch_item(p, guid, data)


def bat(index_of, value_of):
    """BAT entry index_of(info) := value_of(old entry, info)."""
    def damage(p):
        i = vhdx_info(p)
        k = index_of(i)
        x.set_bat_entry(p, k, value_of(x.get_bat_entry(p, k), i))
    return damage


def allocated_blocks(i):
    return sorted(b for b, s in vhdx_states(i).items()
                  if s in (x.FULLY_PRESENT, x.PARTIALLY_PRESENT))


def first_block(i):
    return x.bat_index(allocated_blocks(i)[0], i.ratio)


def second_block(i):
    return x.bat_index(allocated_blocks(i)[1], i.ratio)


def vhdx_states(i):
    out = {}
    with open(i.path, 'rb') as f:
        off = i.regions[x.GUID_BAT][0]
        for b in range(i.nr_blocks):
            f.seek(off + 8 * x.bat_index(b, i.ratio))
            out[b] = struct.unpack('<Q', f.read(8))[0] & 7
    return out


def log_target(off, length=4096, data=True, flushed=None):
    """A dirty log of one entry writing [off, off + length)."""
    def damage(p):
        size = os.path.getsize(p)
        if data:
            e = x.log_entry(5, 0, LOG_GUID, [(off, b'\x42' * 4096)],
                            size if flushed is None else flushed, size)
        else:
            e = x.log_entry(5, 0, LOG_GUID, [], size if flushed is None
                            else flushed, size, zeros=[(off, length)])
        make_dirty(p, [e])
    return damage


def log_bomb(p):
    """A 64 MiB log whose every 4 KiB holds a plausible entry header
    claiming the whole ring (CRCs wrong): scanning it naively reads
    64 MiB from each of 16384 starts."""
    size = os.path.getsize(p)
    ring = 64 * MiB
    off = (size + MiB - 1) // MiB * MiB
    sector = bytearray(4096)
    sector[0:4] = b'loge'
    struct.pack_into('<IIIQII16sQQ', sector, 4, 0x12345678, ring, 0, 1, 0,
                     0, LOG_GUID, 0, 0)
    with open(p, 'r+b') as f:
        f.truncate(off + ring)
        f.seek(off)
        f.write(bytes(sector) * (ring // 4096))
    x.patch_header(p, cur_slot(p), log_guid=LOG_GUID, log_offset=off,
                   log_length=ring)


def log_zero_bomb(p):
    """One log entry of 120 zero descriptors, each zeroing 2^49 bytes
    from the last payload block on: marking what the log wrote MiB by MiB
    would take 120 x 2^29 steps."""
    size = os.path.getsize(p)
    at = (last_block_end(p) - 4096) // MiB * MiB
    e = x.log_entry(5, 0, LOG_GUID, [], size, size,
                    zeros=[(at, 1 << 49)] * 120)
    make_dirty(p, [e])


def vhdx_truncated(size_of, dirty=False):
    def build(folder, tmp):
        base, child = vhdx_copy(tmp, folder, dirty)
        victim = base if dirty else child
        os.truncate(victim, size_of(victim))
        return victim, [], os.path.basename(victim)
    return build


def bat_region(p):
    return x.regions_of(p)[x.GUID_BAT][0]


def md_region(p):
    return x.regions_of(p)[x.GUID_METADATA][0]


def last_block_end(p):
    i = vhdx_info(p)
    with open(p, 'rb') as f:
        off = i.regions[x.GUID_BAT][0]
        ends = []
        for b in range(i.nr_blocks):
            f.seek(off + 8 * x.bat_index(b, i.ratio))
            e = struct.unpack('<Q', f.read(8))[0]
            if e & 7 in (x.FULLY_PRESENT, x.PARTIALLY_PRESENT):
                ends.append((e >> 20) * MiB)
    return max(ends) + 4096


def locator(pairs_of, **kw):
    """The child's parent locator item replaced by raw pairs."""
    def damage(p):
        parent = os.path.join(os.path.dirname(p), 'base.vhdx')
        set_locator_item(p, raw_locator(pairs_of(parent), **kw))
    return damage


def rel_locator(path):
    return locator(lambda parent: locator_pairs(parent, relative_path=path))


def vhdx_cycle(folder, tmp):
    """child.avhdx -> other.avhdx -> child.avhdx."""
    base, child = vhdx_copy(tmp, folder)
    other = os.path.join(folder, 'other.avhdx')
    cp(child, other)
    x.patch_header(other, 1, data_write_guid=x.guid_raw(
        '22222222-2222-4222-8222-222222222222'))
    x.patch_header(other, 2, data_write_guid=x.guid_raw(
        '22222222-2222-4222-8222-222222222222'))
    set_locator_item(child, raw_locator(locator_pairs(
        other, relative_path='.\\other.avhdx')))
    set_locator_item(other, raw_locator(locator_pairs(
        child, relative_path='.\\child.avhdx')))
    return child, [], 'child.avhdx'


def vhdx_sector_mismatch(folder, tmp):
    """A 512-byte-sector child over a parent of 4096-byte sectors."""
    base, child = vhdx_copy(tmp, folder)
    x.patch_item(base, x.GUID_LOGICAL_SECTOR, struct.pack('<I', 4096))
    return child, [], 'child.avhdx'


def vhdx_over_vhd(folder, tmp):
    """A VHDX child whose relative_path names a VHD file."""
    base, child = vhdx_copy(tmp, folder)
    vb, _ = vhd_pair(os.path.join(folder, 'v'))
    os.rename(vb, os.path.join(folder, 'base.vhd'))
    set_locator_item(child, raw_locator(locator_pairs(
        base, relative_path='.\\base.vhd')))
    os.unlink(base)
    return child, [], 'child.avhdx'


def vhdx_deep(folder, tmp, layers=300):
    """base.vhdx and 299 children, each the parent of the next: copies of
    one child with fresh DataWriteGuids and linkages."""
    base, child = vhdx_copy(tmp, folder)
    names = ['base.vhdx']
    prev = base
    for i in range(1, layers):
        name = 'l%03d.avhdx' % i
        p = os.path.join(folder, name)
        cp(child, p)
        guid = struct.pack('<I', i) + b'\x5a' * 12
        for slot in (1, 2):
            x.patch_header(p, slot, data_write_guid=guid)
        set_locator_item(p, raw_locator(locator_pairs(
            prev, relative_path='.\\' + names[-1])))
        names.append(name)
        prev = p
    os.unlink(child)
    return prev, [], names[-1]


VHDX_CASES = [
    ('VHDX LogOffset not a MiB multiple',
     on_vhdx('base', hdr(log_offset=1 * MiB + 4096)), 'LogOffset'),
    ('VHDX log inside the first MiB', on_vhdx('child', hdr(log_offset=0)),
     'inside the first MiB'),
    ('VHDX LogGuid set, LogLength 0',
     on_vhdx('base', hdr(log_guid=LOG_GUID, log_length=0)),
     'LogLength is 0'),
    ('VHDX LogVersion 1 with a log',
     on_vhdx('child', hdr(log_guid=LOG_GUID, log_version=1)),
     'LogVersion'),
    ('VHDX log past the end of the file',
     on_vhdx('base', hdr(log_guid=LOG_GUID, log_offset=1 << 40)),
     'not inside the file'),
    ('VHDX both headers without signature',
     on_vhdx('base', both_headers(signature=b'HEAD')), 'no valid header'),
    ('VHDX headers with one sequence number, different',
     on_vhdx('child', lambda p: (
         x.patch_header(p, 1, seq=77, file_write_guid=b'\x01' * 16),
         x.patch_header(p, 2, seq=77))), 'same SequenceNumber'),
    ('VHDX region table EntryCount 2048', on_vhdx('base', rt_count(2048)),
     'EntryCount'),
    ('VHDX region at 512 KiB', on_vhdx('child', region(
        x.GUID_BAT, offset=512 * KiB)), 'FileOffset'),
    ('VHDX region of length 0', on_vhdx('base', region(
        x.GUID_METADATA, length=0)), 'Length'),
    ('VHDX region listed twice', on_vhdx('base', rt_duplicate),
     'duplicate'),
    ('VHDX no BAT region', on_vhdx('child', rt_drop_bat), 'no BAT region'),
    ('VHDX both region tables with bad CRCs', on_vhdx('base', rt_both_crc),
     'region table'),
    ('VHDX BAT region past the end', on_vhdx('base', region(
        x.GUID_BAT, offset=1 << 30)), 'past the end'),
    ('VHDX metadata signature', on_vhdx('child', md_header(
        sig=b'metadatX')), "'metadata' signature"),
    ('VHDX metadata EntryCount 2048', on_vhdx('base', md_header(2048)),
     'EntryCount'),
    ('VHDX metadata item below 64 KiB', on_vhdx('base', md_set(
        x.GUID_VIRTUAL_DISK_SIZE, offset=4096)), 'outside the metadata'),
    ('VHDX metadata item over 1 MiB', on_vhdx('child', md_set(
        x.GUID_VIRTUAL_DISK_ID, length=2 * MiB)), 'outside the metadata'),
    ('VHDX File Parameters of 4 bytes', on_vhdx('base', md_set(
        x.GUID_FILE_PARAMETERS, length=4)), 'expected at least'),
    ('VHDX metadata item listed twice', on_vhdx('base', md_duplicate),
     'duplicate'),
    ('VHDX metadata items overlap', on_vhdx('child', md_overlap),
     'overlaps entry'),
    ('VHDX Virtual Disk Size missing', on_vhdx('base', md_drop_size),
     'required item is missing'),
    ('VHDX virtual size 65 TiB', on_vhdx('base', item(
        x.GUID_VIRTUAL_DISK_SIZE, struct.pack('<Q', 65 << 40))), '64 TiB'),
    ('VHDX virtual size not whole sectors', on_vhdx('child', item(
        x.GUID_VIRTUAL_DISK_SIZE, struct.pack('<Q', 12 * MiB + 100))),
     'multiple of the logical sector'),
    ('VHDX physical sector 1024', on_vhdx('base', item(
        x.GUID_PHYSICAL_SECTOR, struct.pack('<I', 1024))),
     'Physical Sector Size'),
    ('VHDX virtual size 64 TiB in a 1 MiB BAT region', on_vhdx('base', item(
        x.GUID_VIRTUAL_DISK_SIZE, struct.pack('<Q', 64 << 40))),
     'cannot hold'),
    ('VHDX BAT state 4', on_vhdx('base', bat(
        first_block, lambda e, i: e & ~7 | 4)), 'reserved block state'),
    ('VHDX BAT reserved bits', on_vhdx('child', bat(
        first_block, lambda e, i: e | 0x100)), 'reserved bits'),
    ('VHDX PARTIALLY_PRESENT in a base', on_vhdx('base', bat(
        first_block, lambda e, i: e & ~7 | 7)), 'without a parent'),
    ('VHDX allocated block at FileOffsetMB 0', on_vhdx('base', bat(
        first_block, lambda e, i: 6)), 'FileOffsetMB 0'),
    ('VHDX sector bitmap entry state 3', on_vhdx('child', bat(
        lambda i: x.sb_index(0, i.ratio), lambda e, i: e & ~7 | 3)),
     'sector bitmap'),
    ('VHDX sector bitmap block over the BAT', on_vhdx('child', bat(
        lambda i: x.sb_index(0, i.ratio),
        lambda e, i: (i.regions[x.GUID_BAT][0] // MiB) << 20 | 6)),
     'overlaps'),
    ('VHDX BAT entry into the log', on_vhdx('base', bat(
        first_block, lambda e, i: (1 << 20) | 6)), 'overlaps'),
    ('VHDX two BAT entries for one block', on_vhdx('child', bat(
        second_block, lambda e, i: x.get_bat_entry(i.path, first_block(i))
        & ~7 | e & 7)), 'overlaps'),
    ('VHDX log FlushedFileOffset past the end', on_vhdx('base', log_target(
        2 * MiB + 8192, flushed=1 << 40)), 'FlushedFileOffset'),
    ('VHDX log writing the headers', on_vhdx('child', log_target(64 * KiB)),
     'below 192 KiB'),
    ('VHDX log writing into the log', on_vhdx('base', log_target(
        1 * MiB + 8192)), 'inside the log'),
    ('VHDX log zeroing past any end', on_vhdx('base', log_target(
        2 * MiB, length=1 << 60, data=False)), 'past any possible end'),
    ('VHDX log writing into a payload block', on_vhdx('base', lambda p: (
        log_target(last_block_end(p) - 4096)(p))), 'payload block'),
    ('VHDX log of 16384 plausible entry headers', on_vhdx('base', log_bomb),
     'log'),
    ('VHDX log zeroing 2^49 bytes 120 times', on_vhdx('base', log_zero_bomb),
     'payload block'),
    ('VHDX dirty log entry corrupt in a parent', on_vhdx(
        'base', lambda p: write_at(p, x.current_header(p)[1]['log_offset']
                                   + 4096 + 77, b'\xee'),
        dirty=True, serve='child'), 'log'),
    # Truncation at each structure boundary.
    ('VHDX truncated to 8 bytes', vhdx_truncated(lambda p: 8),
     'truncated'),
    ('VHDX truncated at header 1', vhdx_truncated(lambda p: 64 * KiB),
     'truncated'),
    ('VHDX truncated at the region table', vhdx_truncated(
        lambda p: 192 * KiB), 'truncated'),
    ('VHDX truncated at 1 MiB', vhdx_truncated(lambda p: 1 * MiB),
     'truncated'),
    ('VHDX truncated inside the metadata table', vhdx_truncated(
        lambda p: md_region(p) + 4096), 'truncated'),
    ('VHDX truncated inside the BAT', vhdx_truncated(
        lambda p: bat_region(p) + 4096), 'past the end'),
    ('VHDX truncated inside a payload block', vhdx_truncated(
        last_block_end), 'past the end'),
    ('VHDX truncated inside a dirty log', vhdx_truncated(
        lambda p: x.current_header(p)[1]['log_offset'] + 4096, dirty=True),
     'log'),
    # Parent locator strings.
    ('VHDX locator value of odd length', on_vhdx('child', locator(
        lambda par: locator_pairs(par) + [(u16('relative_path'),
                                           b'.\0\\\0b')])), 'odd length'),
    ('VHDX locator key not UTF-16', on_vhdx('child', locator(
        lambda par: locator_pairs(par) + [(b'\x00\xdcx\x00', u16('y'))])),
     'not valid UTF-16LE'),
    ('VHDX locator value with a NUL', on_vhdx('child', locator(
        lambda par: locator_pairs(par) + [(u16('relative_path'),
                                           u16('.\\a') + b'\0\0')])),
     'NUL'),
    ('VHDX locator key twice', on_vhdx('child', locator(
        lambda par: locator_pairs(par, relative_path='.\\base.vhdx') +
        [(u16('relative_path'), u16('.\\other.vhdx'))])), 'twice'),
    ('VHDX locator string outside the item', on_vhdx('child', locator(
        lambda par: locator_pairs(par), offsets=[(32, 1 << 20)])),
     'outside the item'),
    ('VHDX locator KeyValueCount 4000', on_vhdx('child', locator(
        lambda par: locator_pairs(par), count=4000)), 'do not fit'),
    ('VHDX locator empty key', on_vhdx('child', locator(
        lambda par: locator_pairs(par) + [(b'', u16('x'))])), 'empty'),
    ('VHDX locator without parent_linkage', on_vhdx('child', locator(
        lambda par: [(u16('relative_path'), u16('.\\base.vhdx'))])),
     'no parent_linkage'),
    ('VHDX parent_linkage not a GUID', on_vhdx('child', locator(
        lambda par: [(u16('parent_linkage'), u16('{not-a-guid}'))])),
     'not a GUID'),
    ('VHDX locator type unknown', on_vhdx('child', locator(
        lambda par: locator_pairs(par), loc_type=bytes(16))),
     'LocatorType'),
    ('VHDX relative_path ..\\..\\..\\etc\\passwd', on_vhdx('child',
     rel_locator('..\\' * 12 + 'etc\\passwd')), 'outside the allowed'),
    ('VHDX absolute_win32_path \\\\?\\UNC\\server\\share', on_vhdx(
        'child', locator(lambda par: locator_pairs(
            par, absolute_win32_path='\\\\?\\UNC\\server\\share\\p.vhdx',
            volume_path='\\\\?\\Volume{01234567-89ab-cdef-0123-'
            '456789abcdef}\\p.vhdx'))), 'parent not found'),
    ('VHDX relative_path of 30000 characters', on_vhdx('child', locator(
        lambda par: locator_pairs(
            par, relative_path='..\\' + '\\'.join(['b' * 250] * 120)))),
     'parent not found'),
    ('VHDX parent cycle', vhdx_cycle, 'cycle'),
    ('VHDX child with other sector size than its parent',
     vhdx_sector_mismatch, 'logical sector size'),
    ('VHDX child over a VHD parent', vhdx_over_vhd, 'VHD image under'),
    ('VHDX chain of 300 layers', vhdx_deep, 'deeper than 256'),
]


# ---------------------------------------------------------------- imported

def load(name):
    spec = importlib.util.spec_from_file_location(
        name.replace('-', '_'), os.path.join(TESTS, name + '.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def imported_cases():
    """test-malformed.py's and test-vhdx-malformed.py's refusal cases."""
    out = []
    tm = load('test-malformed')
    # Its own check matched 'cookie' in the case's folder name; the
    # message says what is wrong without that word.
    keyword = dict(tm.KEYWORDS, **{'footer cookie': 'not a VHD'})
    for name, (build, _) in tm.CASES.items():
        def b(folder, tmp, build=build):
            tip, _, victim = build(folder, True)
            return tip, [], victim
        out.append(('[test-malformed] ' + name, b, keyword[name]))
    tv = load('test-vhdx-malformed')
    for name, (target, damage, keyword, _, opts) in tv.CASES.items():
        def b(folder, tmp, target=target, damage=damage, opts=opts):
            tip, victim = tv.build(folder, target, **opts)
            damage(victim)
            return tip.path, [], victim.name
        out.append(('[test-vhdx-malformed] ' + name, b, keyword))
    return out


# ---------------------------------------------------------------- checks

def baseline(tmp):
    """Serve an undamaged VHD chain and VHDX chain under the watch: both
    must start; what nbdkit opens outside the test's folders then is the
    set of system files a refusal may open too."""
    seen = set()
    for n, make in enumerate((lambda f: vhd_pair(f)[1],
                              lambda f: vhdx_copy(tmp, f)[1],
                              lambda f: vhd_moved(f, [g.w2ru(
                                  '..\\vm\\base.vhd')]))):
        folder = os.path.join(tmp, 'baseline%d' % n)
        tip = make(folder)
        if n == 2:      # parent back inside: the moved fixture is sound
            os.rename(os.path.join(folder, 'outside', 'base.vhd'),
                      os.path.join(folder, 'vm', 'base.vhd'))
        run = Run(tip, [], os.path.join(tmp, 'run-baseline%d' % n))
        r.check(run.started, 'baseline %d: the undamaged fixture starts '
                'under strace and prlimit' % n, run.stderr)
        seen |= {p for p, _ in run.opens if not under(p, tmp)}
        bad = violations(run, tmp, allowed_roots(tip, []), seen)
        r.check(not bad, 'baseline %d: opens only allowed files' % n,
                '\n'.join(bad))
    return seen


def check_case(n, name, build, keyword, tmp, base_opens, stats):
    folder = os.path.join(tmp, 'case%03d' % n)
    tip, params, victim = build(folder, tmp)
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
             if os.path.isfile(os.path.join(d, f)) and
             not os.path.islink(os.path.join(d, f))]
    # Hash what is cheap to hash (not 300 layers or a 2 GiB sparse file).
    before = harness.snapshot(files) if len(files) < 50 and all(
        os.path.getsize(f) < 256 * MiB for f in files) else None
    run = Run(tip, params, os.path.join(tmp, 'run%03d' % n))
    stats['seconds'] = max(stats['seconds'], run.seconds)
    lines = harness.error_lines(run.stderr)
    line = lines[0].replace(tmp, '') if lines else ''
    ok = (not run.hung and not run.started and run.rc == 1 and
          len(lines) == 1 and victim in lines[0] and
          keyword.lower() in line.lower())
    why = ('hung (no exit after %d s)' % TIMEOUT if run.hung else
           'started instead of refusing' if run.started else
           'exit status %r' % run.rc if run.rc != 1 else
           '%d error lines' % len(lines) if len(lines) != 1 else
           'no %r in the line' % victim if victim not in lines[0] else
           'no %r in the line' % keyword)
    r.check(ok, '%s: refused in %.1f s, one line naming %s with "%s"'
            % (name, run.seconds, victim, keyword),
            '%s\n%s' % (why, run.stderr.strip()[-3000:]))
    bad = violations(run, tmp, allowed_roots(tip, params), base_opens)
    r.check(not bad, '%s: opened nothing outside its allowed folders, '
            'nothing for writing' % name, '\n'.join(sorted(set(bad))[:20]))
    if before is not None:
        r.equal(harness.changed_files(before), [], '%s: files unchanged'
                % name)
    stats['cases'] += 1
    shutil.rmtree(folder, ignore_errors=True)


def main():
    harness.require_plugin()
    harness.require_tools('strace', 'prlimit', 'nbdkit', 'cp')
    cases = VHD_CASES + VHDX_CASES + imported_cases()
    names = [c[0] for c in cases]
    r.check(len(names) == len(set(names)), 'case names are unique')
    r.check(len(cases) >= 40, '%d cases (at least 40)' % len(cases))
    with harness.tempdir() as tmp:
        tmp = os.path.realpath(tmp)
        base_opens = baseline(tmp)
        stats = dict(cases=0, seconds=0.0)
        t0 = time.monotonic()
        only = os.environ.get('VHDCHAIN_HOSTILE_ONLY')
        for n, (name, build, keyword) in enumerate(cases):
            if only and only.lower() not in name.lower():
                continue
            r.run(check_case, n, name, build, keyword, tmp, base_opens,
                  stats, what=name)
        print('# %d cases (%d own, %d imported) in %.0f s; slowest refusal '
              '%.1f s; address-space limit %d MiB' % (
                  stats['cases'], len(VHD_CASES) + len(VHDX_CASES),
                  len(cases) - len(VHD_CASES) - len(VHDX_CASES),
                  time.monotonic() - t0, stats['seconds'], AS_LIMIT >> 20))


if __name__ == '__main__':
    r.main(main)
