"""hypervgen: Hyper-V VM folders with a branched checkpoint tree, for the
tests of core/hyperv.c (tests/test-hyperv-*.py).

Disk files come from the independent writers (vhdgen for VHD, vhdxgen for
VHDX); configurations are written here:

  xml_bytes(tree)   a Hyper-V 2008 - 2012 R2 XML configuration: UTF-16LE
                    with a byte order mark, CRLF, standalone="yes", one
                    element per key, leaves typed string / integer / bool /
                    bytes (base64), as the public code that reads and writes
                    real files shows (see core/hyperv-xml.c's comment).
  vmcx_bytes(tree)  a Hyper-V 2016+ .vmcx container: the layout measured on
                    dissect.hypervisor's real test.vmcx (see core/vmcx.c):
                    two headers, object table at 0x2000, a clean replay
                    log, key tables of checksummed entries, values of 2 KiB
                    or more in file objects.

A tree is a list of (name, value): value a list (a node) or a tuple
('string', str), ('int', n), ('bool', b), ('bytes', b).

build_vm() plays a VM's life: a disk (two, IDE 0:0 and SCSI 0:0) with
writes; checkpoint C1; writes; checkpoint C2; writes; C1 applied (a new
differencing disk on C1's state); writes; checkpoint C3; writes; checkpoint
C4; writes.  The tree: C1 -> {C2, C3 -> C4 -> Now}.  The file created at C2
(post-C2 changes, abandoned by the apply) stays in the folder: the state of
C2 must never include it.
"""

import base64
import hashlib
import os
import random
import struct
import uuid
import zlib

import vhdgen
import vhdxgen

MiB = 1 << 20

IDE_DEVICE = '83f8638b-8dca-4152-9eda-2ca8b33039b4'
SCSI_DEVICE = 'd422512d-2bf2-4752-809d-7b82b5fcb1b4'

# ---------------------------------------------------------------- XML

def _xml_escape(s):
    return s.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def _xml_lines(tree, depth, out):
    pad = '  ' * depth
    for name, value in tree:
        if isinstance(value, list):
            out.append('%s<%s>' % (pad, name))
            _xml_lines(value, depth + 1, out)
            out.append('%s</%s>' % (pad, name))
            continue
        kind, v = value
        if kind == 'string':
            text, typ = _xml_escape(v), 'string'
        elif kind == 'int':
            text, typ = str(v), 'integer'
        elif kind == 'bool':
            text, typ = 'True' if v else 'False', 'bool'
        elif kind == 'bytes':
            text, typ = base64.b64encode(v).decode() + '\n', 'bytes'
        else:
            raise ValueError(kind)
        if text == '':
            out.append('%s<%s type="%s" />' % (pad, name, typ))
        else:
            out.append('%s<%s type="%s">%s</%s>' % (pad, name, typ, text,
                                                    name))


def xml_bytes(tree):
    lines = ['<?xml version="1.0" encoding="UTF-16" standalone="yes"?>']
    _xml_lines(tree, 0, lines)
    text = '\r\n'.join(lines) + '\r\n'
    return b'\xff\xfe' + text.encode('utf-16-le')


# ---------------------------------------------------------------- VMCX

VMCX_SIGNATURE = 0x01282014
LOG_SIGNATURE = 0x01110003
OBJ_SIGNATURE = 0x01110001
KT_FREE, KT_INT, KT_UINT, KT_STRING, KT_ARRAY, KT_BOOL, KT_NODE = \
    1, 3, 4, 6, 7, 8, 9
FILE_THRESHOLD = 0x800
TABLE_SIZE = 0x1000


def _sealed(buf, at):
    """buf with its CRC-32 (zlib) field at `at` computed over buf."""
    buf = bytearray(buf)
    struct.pack_into('<I', buf, at, 0)
    struct.pack_into('<I', buf, at, zlib.crc32(bytes(buf)) & 0xFFFFFFFF)
    return bytes(buf)


def vmcx_bytes(tree, *, slack=0):
    """The .vmcx container holding tree.  slack: extra bytes after each
    entry (real files have some)."""
    tables = [bytearray()]            # entry bytes of table index i + 1
    files = []                        # (data) of file objects
    file_base = None                  # filled in once tables are counted

    # First pass: lay entries out (parents first), file values noted.
    pending = []                      # (table, offset, header fields, data)

    def place(size):
        t = tables[-1]
        if 10 + len(t) + size > TABLE_SIZE:
            tables.append(bytearray())
            t = tables[-1]
        return len(tables), 10 + len(t)

    def emit(name, value, parent, seq):
        key = name.encode() + b'\0'
        flags = 0
        file_data = None
        if isinstance(value, list):
            typ, val = KT_NODE, bytes(8) + struct.pack('<I', len(value))
        else:
            kind, v = value
            if kind == 'string':
                typ, raw = KT_STRING, v.encode('utf-16-le')
            elif kind == 'bytes':
                typ, raw = KT_ARRAY, bytes(v)
            elif kind == 'int':
                typ, val = KT_INT, struct.pack('<q', v)
            elif kind == 'bool':
                typ, val = KT_BOOL, struct.pack('<I', 1 if v else 0)
            else:
                raise ValueError(kind)
            if kind in ('string', 'bytes'):
                if len(raw) >= FILE_THRESHOLD:
                    flags, file_data = 1, raw
                    val = None                 # pointer, filled in later
                else:
                    val = struct.pack('<I', len(raw)) + raw
        vlen = 12 if file_data is not None else len(val)
        size = 21 + len(key) + vlen + slack
        ti, off = place(size)
        entry = {'type': typ | flags << 8, 'size': size, 'parent': parent,
                 'seq': seq, 'key': key, 'val': val, 'file': file_data,
                 'table': ti, 'off': off}
        tables[-1] += bytes(size)
        pending.append(entry)
        if isinstance(value, list):
            for k, (n2, v2) in enumerate(value):
                emit(n2, v2, (ti, off), k + 1)

    for k, (name, value) in enumerate(tree):
        emit(name, value, (0, 0), k + 1)

    ntab = len(tables)
    table_at = 0x4000
    file_base = table_at + ntab * TABLE_SIZE
    cursor = file_base
    for e in pending:
        if e['file'] is not None:
            e['val'] = struct.pack('<IQ', len(e['file']), cursor)
            files.append((cursor, e['file']))
            cursor += (len(e['file']) + 0xFFF) // 0x1000 * 0x1000
        head = struct.pack('<HIHIIIB', e['type'], e['size'], e['parent'][0],
                           e['parent'][1], 0, e['seq'], len(e['key']))
        body = bytearray(head + e['key'] + e['val'])
        body = _sealed(body, 12)
        t = tables[e['table'] - 1]
        t[e['off'] - 10:e['off'] - 10 + len(body)] = body

    size = max(cursor, file_base)
    out = bytearray(size)
    # Headers: the one at 0 is current (higher sequence).
    for at, seq in ((0, 2), (0x1000, 1)):
        h = struct.pack('<IIHIQIQQI', VMCX_SIGNATURE, 0, seq, 0x400, 0,
                        0x1000, 0x3000, 0x1000, 0x1000)
        out[at:at + 46] = _sealed(h, 4)
    # Object table.
    objs = [(2, table_at + i * TABLE_SIZE, TABLE_SIZE) for i in range(ntab)]
    objs += [(3, off, (len(d) + 0xFFF) // 0x1000 * 0x1000)
             for off, d in files]
    objs += [(0, 0, 0)] * 8
    ot = bytearray(struct.pack('<II', OBJ_SIGNATURE, len(objs)))
    for typ, off, sz in objs:
        e = struct.pack('<BIQIB', typ, 0, off, sz, 1 if typ else 0)
        ot += _sealed(e, 1)
    out[0x2000:0x2000 + len(ot)] = ot
    # Replay log, clean.
    log = struct.pack('<IIIBIIIIIB', LOG_SIGNATURE, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    out[0x3000:0x3000 + len(log)] = _sealed(log, 4)
    # Key tables.
    for i, t in enumerate(tables):
        hdr = _sealed(struct.pack('<HHHI', 2, i + 1, 1, 0), 6)
        at = table_at + i * TABLE_SIZE
        out[at:at + 10] = hdr
        out[at + 10:at + 10 + len(t)] = t
    for off, d in files:
        out[off:off + len(d)] = d
    return bytes(out)


# ---------------------------------------------------------------- trees

def filetime_bytes(unix):
    return struct.pack('<Q', (unix + 11644473600) * 10 ** 7)


def config_tree(*, name, global_id, vm_guid, created, disks, scsi_instance,
                snapshots=(), notes=''):
    """A configuration key tree.  disks: {'IDE': path, 'SCSI': path}."""
    ide = [('controller0', [
        ('drive0', [('pathname', ('string', disks.get('IDE', ''))),
                    ('type', ('string', 'VHD' if 'IDE' in disks
                              else 'NONE'))]),
        ('drive1', [('pathname', ('string', '')),
                    ('type', ('string', 'NONE'))])]),
        ('controller1', [
            ('drive0', [('pathname', ('string', '')),
                        ('type', ('string', 'ISO'))])]),
        ('VDEVVersion', ('int', 1280))]
    scsi = [('ChannelInstanceGuid', ('string', '{%s}' % uuid.uuid4())),
            ('controller0', [
                ('drive0', [('pathname', ('string', disks.get('SCSI', ''))),
                            ('type', ('string', 'VHD' if 'SCSI' in disks
                                      else 'NONE'))])]),
            ('VDEVVersion', ('int', 256))]
    snaplist = [('guid%d' % i, ('string', g.upper()))
                for i, g in enumerate(snapshots)]
    snaplist.append(('size', ('int', len(snapshots))))
    return [('configuration', [
        ('_%s_' % IDE_DEVICE, ide),
        ('_%s_' % scsi_instance.lower(), scsi),
        ('global_settings', [
            ('disk_merge_pending', ('bool', False)),
            ('snapshots', [('list', snaplist)]),
            ('vhd_path_acled', ('bool', True))]),
        ('manifest', [
            ('size', ('int', 2)),
            ('vdev001', [('device', ('string', IDE_DEVICE)),
                         ('flags', ('int', 1)),
                         ('instance', ('string', IDE_DEVICE.upper())),
                         ('name', ('string',
                                   'Microsoft Emulated IDE Controller'))]),
            ('vdev002', [('device', ('string', SCSI_DEVICE)),
                         ('flags', ('int', 1)),
                         ('instance', ('string', scsi_instance.upper())),
                         ('name', ('string', 'Synthetic SCSI Controller'))]),
            ('version', ('int', 260))]),
        ('properties', [
            ('creation_time', ('bytes', filetime_bytes(created))),
            ('global_id', ('string', global_id.upper())),
            ('highly_available', ('bool', False)),
            ('name', ('string', name)),
            ('notes', ('string', notes)),
            ('subtype', ('int', 0)),
            ('type_id', ('string', 'Virtual Machines')),
            ('version', ('int', 1280))]),
        ('settings', [
            ('global', [('logical_id', ('string', vm_guid.upper()))]),
            ('processors', [('count', ('int', 1))])]),
    ])]


# ---------------------------------------------------------------- disks

class DiskFile:
    def __init__(self, key, rel, parent, obj):
        self.key, self.rel, self.parent, self.obj = key, rel, parent, obj
        self.path = None
        self.sha256 = None


class DiskTree:
    """The files of one virtual disk, as a tree, in VHD or VHDX."""

    def __init__(self, fmt, folder, win_root, rng, size):
        self.fmt, self.folder, self.win_root = fmt, folder, win_root
        self.rng, self.size = rng, size
        self.files = {}

    def win(self, rel):
        return self.win_root + '\\' + rel.replace('/', '\\')

    def _writes(self, n):
        if self.fmt == 'vhd':
            return vhdgen.random_writes(self.rng, self.size, n)
        return vhdxgen.random_writes(self.rng, self.size, n,
                                     block_size=2 * MiB)

    def base(self, key, rel, writes=30):
        if self.fmt == 'vhd':
            obj = vhdgen.VhdFile('dynamic', self.size, rng=self.rng)
        else:
            obj = vhdxgen.VhdxFile('dynamic', self.size, rng=self.rng,
                                   block_size=2 * MiB)
        obj.apply(self._writes(writes))
        self.files[key] = DiskFile(key, rel, None, obj)

    def child(self, key, rel, parent, writes=30):
        p = self.files[parent]
        name = os.path.basename(p.rel)
        if self.fmt == 'vhd':
            obj = vhdgen.VhdFile(
                'differencing', self.size, rng=self.rng,
                parent_uid=p.obj.uid, parent_name=self.win(p.rel),
                locators=[vhdgen.w2ku(self.win(p.rel), slot=0),
                          vhdgen.w2ru('.\\' + name, slot=1)])
        else:
            obj = vhdxgen.VhdxFile(
                'differencing', self.size, rng=self.rng, disk_id=p.obj.disk_id,
                locator=[('parent_linkage',
                          vhdxgen.linkage_text(p.obj.data_write_guid)),
                         ('absolute_win32_path', self.win(p.rel)),
                         ('relative_path', '.\\' + name),
                         ('parent_linkage2',
                          vhdxgen.linkage_text(vhdxgen.ZERO_GUID))])
        obj.apply(self._writes(writes))
        self.files[key] = DiskFile(key, rel, parent, obj)

    def lineage(self, key):
        """Files from the base to key."""
        out = []
        while key is not None:
            out.append(self.files[key])
            key = self.files[key].parent
        return out[::-1]

    def chain(self, key):
        """Paths from key down to the base (tip first)."""
        return [f.path for f in self.lineage(key)[::-1]]

    def save(self):
        for f in self.files.values():
            f.path = os.path.join(self.folder, f.rel)
            os.makedirs(os.path.dirname(f.path), exist_ok=True)
            f.obj.save(f.path)
        for key, f in self.files.items():
            line = self.lineage(key)
            if self.fmt == 'vhd':
                img = vhdgen.expected_of([x.obj for x in line])
                f.sha256 = hashlib.sha256(img).hexdigest()
            else:
                img = None
                for x in line:
                    img = vhdxgen.see_through(x.obj, img)
                f.sha256 = img.sha256()


# ---------------------------------------------------------------- a VM

class Checkpoint:
    def __init__(self, guid, name, created, parent):
        self.guid, self.name, self.created = guid, name, created
        self.parent = parent            # guid or None
        self.frozen = {}                # disk label -> file key
        self.post = {}                  # disk label -> file key


class VM:
    pass


def _guid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def build_vm(root, *, layout, config, record='frozen', seed=1,
             name='Web Server', size=8 * MiB, drift=False, notes=''):
    """A VM folder under root.  layout: '2008' (VHD, AVHDs named after the
    checkpoint in Snapshots/<vm guid>/) or '2016' (VHDX, <disk>_<GUID>.avhdx
    next to the disk).  config: 'xml', 'vmcx' or None (disk files only).
    record: what a checkpoint's configuration names for each disk: the
    'frozen' file (its state) or the 'post' file made when it was taken.
    drift: the disk folder is 'Virtual hard disks' on disk (case drift).
    Returns a VM with folder, guid, name, checkpoints (in order), disks
    ({label: DiskTree}), now ({label: file key}), files (every DiskFile)."""
    rng = random.Random(seed)
    vm = VM()
    vm.guid = _guid(rng)
    vm.name = name
    vm.folder = os.path.join(root, name)
    vm.layout = layout
    win_root = 'D:\\Hyper-V\\' + name
    fmt = 'vhd' if layout == '2008' else 'vhdx'
    ext = '.vhd' if fmt == 'vhd' else '.vhdx'
    aext = '.avhd' if fmt == 'vhd' else '.avhdx'
    vhd_dir = 'Virtual hard disks' if drift else 'Virtual Hard Disks'
    labels = {'IDE': 'Disk', 'SCSI': 'Data'}
    vm.disks = {lab: DiskTree(fmt, vm.folder, win_root, rng, size)
                for lab in labels}
    current = {}
    for lab, stem in labels.items():
        vm.disks[lab].base('base', '%s/%s%s' % (vhd_dir, stem, ext))
        current[lab] = 'base'

    def new_file(lab, key, made_for):
        stem = labels[lab]
        if layout == '2008':
            fname = ('%s%s' % (made_for.upper(), aext) if lab == 'IDE'
                     else '%s_%s%s' % (stem, made_for.upper(), aext))
            rel = 'Snapshots/%s/%s' % (vm.guid.upper(), fname)
        else:
            rel = '%s/%s_%s%s' % (vhd_dir, stem, _guid(rng).upper(), aext)
        vm.disks[lab].child(key, rel, current[lab])
        current[lab] = key

    t = 1400000000
    cps = []
    names = ['Before update', 'After update', 'Branch', 'Branch again']
    parents = [None, 0, 0, 2]
    for i, cname in enumerate(names):
        if i == 2:
            # Apply C1: a new differencing disk on C1's state.
            for lab in labels:
                current[lab] = cps[0].frozen[lab]
                new_file(lab, 'apply', _guid(rng))
        g = _guid(rng)
        cp = Checkpoint(g, cname, t + 3600 * (i + 1),
                        None if parents[i] is None else cps[parents[i]].guid)
        for lab in labels:
            cp.frozen[lab] = current[lab]
            new_file(lab, 'x%d' % (i + 1), g)
            cp.post[lab] = 'x%d' % (i + 1)
        cps.append(cp)
    vm.checkpoints = cps
    vm.now = dict(current)
    for d in vm.disks.values():
        d.save()

    if config:
        scsi_instance = _guid(rng)
        conf_ext = '.xml' if config == 'xml' else '.vmcx'
        make = xml_bytes if config == 'xml' else vmcx_bytes
        vmdir = os.path.join(vm.folder, 'Virtual Machines')
        snapdir = os.path.join(vm.folder, 'Snapshots')
        os.makedirs(vmdir, exist_ok=True)
        os.makedirs(snapdir, exist_ok=True)

        def recorded(keys):
            return {lab: vm.disks[lab].win(vm.disks[lab].files[k].rel)
                    for lab, k in keys.items()}

        vm.config = os.path.join(vmdir, vm.guid.upper() + conf_ext)
        with open(vm.config, 'wb') as f:
            f.write(make(config_tree(
                name=name, global_id=vm.guid, vm_guid=vm.guid, created=t,
                disks=recorded(vm.now), scsi_instance=scsi_instance,
                snapshots=[c.guid for c in cps], notes=notes)))
        for cp in cps:
            keys = cp.frozen if record == 'frozen' else cp.post
            cp.config = os.path.join(snapdir, cp.guid.upper() + conf_ext)
            with open(cp.config, 'wb') as f:
                f.write(make(config_tree(
                    name=cp.name, global_id=cp.guid, vm_guid=vm.guid,
                    created=cp.created, disks=recorded(keys),
                    scsi_instance=scsi_instance)))
            # Saved state files Hyper-V keeps beside (never read).
            state = os.path.join(snapdir, cp.guid.upper())
            os.makedirs(state, exist_ok=True)
            for e in ('.bin', '.vsv') if layout == '2008' else ('.vmrs',):
                with open(os.path.join(state, cp.guid.upper() + e),
                          'wb') as f:
                    f.write(b'\0' * 512)
    vm.files = [f for d in vm.disks.values() for f in d.files.values()]
    return vm


# ---------------------------------------------------------------- checks

def real(p):
    return os.path.realpath(p)


def check_config_tree(r, vm, j, what, served, tmp, *, record='frozen',
                      source='xml'):
    """Check `vhdchain checkpoints --json` output j against vm: the tree,
    each point's tip, rule and chain, and (served: a dict path -> sha,
    filled as files are served) every tip's image through the plugin."""
    import harness
    cps = vm.checkpoints
    ids = [p['id'] for p in j['points']]
    pts = {p['id']: p for p in j['points']}
    r.equal(j['source'], source, '%s: configuration format' % what)
    r.equal((j['name'], j['guid']), (vm.name, vm.guid),
            '%s: VM name and GUID' % what)
    r.equal(ids, [c.guid for c in cps] + ['now'],
            '%s: points in tree order (C1, C2, C3, C4, Now)' % what)
    want_parents = {c.guid: c.parent for c in cps}
    want_parents['now'] = cps[-1].guid
    r.equal({i: pts[i]['parent'] for i in ids if i in pts}, want_parents,
            '%s: parents (C1 -> {C2, C3 -> C4 -> Now})' % what)
    r.equal([(pts[c.guid]['name'], pts[c.guid]['created'])
             for c in cps if c.guid in pts],
            [(c.name, c.created) for c in cps],
            '%s: names and creation times' % what)
    for pid, keys, cp in [(c.guid, c.frozen, c) for c in cps] + \
            [('now', vm.now, None)]:
        p = pts.get(pid)
        if p is None:
            continue
        r.check(p['available'] and p['problem'] is None,
                '%s: %s available' % (what, p['name']), p['problem'])
        disks = {d['location']: d for d in p['disks']}
        r.equal(sorted(disks), ['IDE 0:0', 'SCSI 0:0'],
                '%s: %s: its disks' % (what, p['name']))
        for loc, lab in (('IDE 0:0', 'IDE'), ('SCSI 0:0', 'SCSI')):
            d = disks.get(loc)
            if d is None:
                continue
            tree = vm.disks[lab]
            f = tree.files[keys[lab]]
            if cp is None or record == 'frozen':
                rule = 'recorded'
            else:
                rule = 'parent-of-recorded-named-after-checkpoint'
            r.equal((d['tip'], d['tip_rule'], d['chain']),
                    (real(f.path), rule,
                     [real(x) for x in tree.chain(keys[lab])]),
                    '%s: %s %s: tip, rule, chain' % (what, p['name'], loc))
            if cp is not None:
                post = tree.files[cp.post[lab]]
                r.check(post.sha256 != f.sha256 and d['tip'] != real(post.path),
                        '%s: %s %s: the file made at the checkpoint is not '
                        'its state' % (what, p['name'], loc))
            if d['tip'] not in served:
                with harness.Nbdkit(d['tip']) as srv:
                    served[d['tip']] = srv.copy_sha256(tmp)[0]
            r.equal(served[d['tip']], f.sha256,
                    '%s: %s %s: the state served byte-exact'
                    % (what, p['name'], loc))


def check_text(r, out, vm, what):
    """The text tree: indentation by depth, every name, Now last."""
    lines = [l for l in out.splitlines() if l.lstrip().startswith('- ')]
    want = ['- Before update', '  - After update', '  - Branch',
            '    - Branch again', '      - Now']
    got = [l.split('  [')[0] for l in lines]
    r.equal(got, want, '%s: text tree' % what)
