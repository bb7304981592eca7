"""vhdgen: an independent VHD writer for the tests (pure python, stdlib only).

Written from the VHD Image Format Specification v1.0 and the Windows habits
listed in docs FORMATS.md section 2, without looking at core/: the reader is
checked against this writer and this writer against qemu-img and libvhdi,
never the reader against itself.

Main pieces:

  VhdFile     one fixed, dynamic or differencing VHD file: write() sectors
              into it, then save(path).  Every field is a keyword argument so
              tests can make odd but valid files (creator, block size, layout,
              block order, locator slots, data space units ...).
  Chain       a base plus differencing layers in one folder; write() returns
              one Point per layer with the expected raw virtual disk.
  random_writes()  sector-granular random writes that cross block borders.
  Corruption helpers (patch_footer, patch_header, patch_locator,
              set_bat_entry, truncate, ...) to damage saved files for the
              malformed-image tests.

Sizes are bytes; offsets in files are bytes unless a name says "sector".
"""

import hashlib
import os
import random
import struct
import time

SECTOR = 512
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

VHD_EPOCH = 946684800                 # 2000-01-01 00:00:00 UTC in Unix time
MAX_VHD_SIZE = 2040 * GiB             # the spec's limit
NO_OFFSET = 0xFFFFFFFFFFFFFFFF        # footer data offset of a fixed disk
UNALLOCATED = 0xFFFFFFFF              # BAT entry of an unallocated block

FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
KINDS = {'fixed': FIXED, 'dynamic': DYNAMIC, 'differencing': DIFFERENCING}

FOOTER_SIZE = 512
HEADER_SIZE = 1024

# Footer fields: name -> (offset, struct format).  Big-endian throughout.
FOOTER_FIELDS = {
    'cookie': (0, '8s'),
    'features': (8, '>I'),
    'version': (12, '>I'),
    'data_offset': (16, '>Q'),
    'timestamp': (24, '>I'),
    'creator_app': (28, '4s'),
    'creator_version': (32, '>I'),
    'creator_os': (36, '4s'),
    'original_size': (40, '>Q'),
    'current_size': (48, '>Q'),
    'cylinders': (56, '>H'),
    'heads': (58, 'B'),
    'sectors_per_track': (59, 'B'),
    'disk_type': (60, '>I'),
    'checksum': (64, '>I'),
    'unique_id': (68, '16s'),
    'saved_state': (84, 'B'),
}

# Dynamic disk header fields, same convention.
HEADER_FIELDS = {
    'cookie': (0, '8s'),
    'data_offset': (8, '>Q'),
    'table_offset': (16, '>Q'),
    'version': (24, '>I'),
    'max_table_entries': (28, '>I'),
    'block_size': (32, '>I'),
    'checksum': (36, '>I'),
    'parent_unique_id': (40, '16s'),
    'parent_timestamp': (56, '>I'),
    'parent_name': (64, '512s'),
}
LOCATOR_TABLE = 576                   # 8 entries of 24 bytes
# code, data space, data length, reserved, data offset
LOCATOR_ENTRY = struct.Struct('>4sIIIQ')
FOOTER_CHECKSUM_AT = FOOTER_FIELDS['checksum'][0]
HEADER_CHECKSUM_AT = HEADER_FIELDS['checksum'][0]

# What the data of an absent sector inside an allocated differencing block
# holds in the file.  Deliberately not zero and not parent data, so a reader
# that ignores the sector bitmap returns visibly wrong bytes.
ABSENT_FILL = (b'vhdgen: absent sector, read the parent! ' * 13)[:SECTOR]


def roundup(n, m):
    return (n + m - 1) // m * m


def vhd_checksum(buf, field_at):
    """One's complement of the byte sum, the checksum field counted as 0."""
    total = sum(buf) - sum(buf[field_at:field_at + 4])
    return ~total & 0xFFFFFFFF


def chs_geometry(size):
    """CHS geometry for a new disk of `size` bytes (VHD spec appendix)."""
    total = size // SECTOR
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def chs_size(geometry):
    c, h, s = geometry
    return c * h * s * SECTOR


def bitmap_size(block_size):
    """Bytes of the sector bitmap before each block: 1 bit per sector."""
    return roundup((block_size // SECTOR + 7) // 8, SECTOR)


def vhd_timestamp(unix_time=None):
    if unix_time is None:
        unix_time = time.time()
    return max(0, int(unix_time) - VHD_EPOCH) & 0xFFFFFFFF


# ---------------------------------------------------------------- locators

class Locator:
    """One parent locator: platform code and its payload bytes.

    slot: index 0-7 in the header table (None: next free slot).
    space: bytes reserved in the file (None: rounded up from the payload).
    offset: file offset of the payload (None: placed by the layout).
    length: data length field (None: len(payload)).
    """

    def __init__(self, code, payload, slot=None, space=None, offset=None,
                 length=None):
        assert len(code) == 4
        self.code = code
        self.payload = payload
        self.slot = slot
        self.space = space
        self.offset = offset
        self.length = len(payload) if length is None else length

    def __repr__(self):
        return '%s@%s' % (self.code.decode('latin-1'), self.slot)


def w2ku(path, **kw):
    """Absolute Windows path, UTF-16LE, no terminator (as Windows writes)."""
    return Locator(b'W2ku', path.encode('utf-16-le'), **kw)


def w2ru(path, **kw):
    """Relative Windows path such as .\\parent.vhd, UTF-16LE."""
    return Locator(b'W2ru', path.encode('utf-16-le'), **kw)


def wi2k(path, **kw):
    """Deprecated absolute path, ASCII."""
    return Locator(b'Wi2k', path.encode('ascii'), **kw)


def wi2r(path, **kw):
    """Deprecated relative path, ASCII."""
    return Locator(b'Wi2r', path.encode('ascii'), **kw)


def macx(url, **kw):
    """Mac OS X file URL, UTF-8."""
    return Locator(b'MacX', url.encode('utf-8'), **kw)


# ---------------------------------------------------------------- one file

class VhdFile:
    """A VHD file held in memory until save().

    The virtual content is `data` (bytearray of the virtual size) plus
    `present` (one flag byte per sector: 1 = this file holds the sector).
    For a dynamic disk an absent sector reads zero; for a differencing disk
    it reads the parent.  A fixed disk holds every sector.

    Keyword options (defaults follow Windows unless said):
      block_size        power of two, default 2 MiB (not checked: tests may
                        want a bad one, but then use patch_header instead)
      creator_app       4 bytes, default b'vgen' (QEMU then sizes by CHS)
      creator_version, creator_os, features, timestamp, saved_state
      uid               16 bytes, default random from rng
      original_size     default = size
      geometry          (c, h, s), default chs_geometry(size)
      layout            'windows': metadata and block data 4 KiB aligned,
                        the bitmap in the sectors just before the data;
                        'packed': everything 512-aligned, back to back
      block_order       'shuffle' (seeded), 'sequential', 'reverse' or an
                        explicit list of block numbers (file order)
      dyn_bitmap        dynamic disks: 'written' (bits of written sectors)
                        or 'ones' (all set, as QEMU writes)
      locators          list of Locator
      space_unit        'bytes' (Windows) or 'sectors' (spec) for the
                        locators' data space field
      bat_first         put the BAT before the locator payloads
      bat_offset        put the BAT exactly there (locators given explicit
                        offsets may then sit around it, as Windows does)
      max_table_entries default ceil(size / block_size)
      parent_uid, parent_name (str, stored UTF-16BE), parent_timestamp
      empty_blocks      blocks to allocate with an all-zero bitmap
      footer_copy       write the footer copy at 0 (default: not for fixed)
    """

    def __init__(self, kind, size, *, rng=None, block_size=2 * MiB,
                 creator_app=b'vgen', creator_version=0x000A0000,
                 creator_os=b'Wi2k', features=2, timestamp=None, uid=None,
                 original_size=None, geometry=None, saved_state=0,
                 layout='windows', block_order='shuffle',
                 dyn_bitmap='written', locators=(), space_unit='bytes',
                 bat_first=False, bat_offset=None, max_table_entries=None,
                 parent_uid=None, parent_name='', parent_timestamp=0,
                 empty_blocks=(), footer_copy=None):
        self.kind = KINDS.get(kind, kind)
        assert self.kind in (FIXED, DYNAMIC, DIFFERENCING), kind
        assert size % SECTOR == 0, 'virtual size must be whole sectors'
        self.rng = rng or random.Random()
        self.size = size
        self.block_size = block_size
        self.creator_app = creator_app
        self.creator_version = creator_version
        self.creator_os = creator_os
        self.features = features
        self.timestamp = vhd_timestamp() if timestamp is None else timestamp
        self.uid = uid if uid is not None else self.rng.randbytes(16)
        self.original_size = size if original_size is None else original_size
        self.geometry = geometry or chs_geometry(size)
        self.saved_state = saved_state
        self.layout = layout
        self.block_order = block_order
        self.dyn_bitmap = dyn_bitmap
        self.locators = list(locators)
        self.space_unit = space_unit
        self.bat_first = bat_first
        self.bat_offset = bat_offset
        self.max_table_entries = max_table_entries
        self.parent_uid = parent_uid if parent_uid is not None else bytes(16)
        self.parent_name = parent_name
        self.parent_timestamp = parent_timestamp
        self.empty_blocks = set(empty_blocks)
        self.footer_copy = (self.kind != FIXED) if footer_copy is None \
            else footer_copy
        self.data = bytearray(size)
        # A fixed disk holds everything; the others start empty.
        fill = b'\x01' if self.kind == FIXED else b'\x00'
        self.present = bytearray(fill * (size // SECTOR))
        self.file_layout = None      # filled in by build()

    # -- content

    def write(self, offset, data):
        """Store whole sectors at a virtual byte offset."""
        if offset % SECTOR or len(data) % SECTOR:
            raise ValueError('writes are sector-granular')
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError('write past the virtual end')
        self.data[offset:offset + len(data)] = data
        self.present[offset // SECTOR:(offset + len(data)) // SECTOR] = \
            b'\x01' * (len(data) // SECTOR)

    def apply(self, writes):
        for offset, data in writes:
            self.write(offset, data)

    def present_runs(self):
        """(first sector, sector count) runs of present sectors."""
        p, n, runs = self.present, len(self.present), []
        s = p.find(1)
        while s != -1:
            e = p.find(0, s)
            e = n if e == -1 else e
            runs.append((s, e - s))
            s = p.find(1, e) if e < n else -1
        return runs

    # -- file assembly

    def entries(self):
        if self.max_table_entries is not None:
            return self.max_table_entries
        return (self.size + self.block_size - 1) // self.block_size

    def allocated_blocks(self):
        spb = self.block_size // SECTOR
        blocks = set(self.empty_blocks)
        for first, count in self.present_runs():
            blocks.update(range(first // spb, (first + count - 1) // spb + 1))
        return sorted(blocks)

    def _file_order(self, blocks):
        order = self.block_order
        if order == 'sequential':
            return list(blocks)
        if order == 'reverse':
            return list(reversed(blocks))
        if order == 'shuffle':
            shuffled = list(blocks)
            self.rng.shuffle(shuffled)
            return shuffled
        assert sorted(order) == list(blocks), 'block_order must list ' \
            'exactly the allocated blocks'
        return list(order)

    def footer_bytes(self, data_offset):
        c, h, s = self.geometry
        buf = bytearray(FOOTER_SIZE)
        fields = dict(cookie=b'conectix', features=self.features,
                      version=0x00010000, data_offset=data_offset,
                      timestamp=self.timestamp, creator_app=self.creator_app,
                      creator_version=self.creator_version,
                      creator_os=self.creator_os,
                      original_size=self.original_size,
                      current_size=self.size, cylinders=c, heads=h,
                      sectors_per_track=s, disk_type=self.kind,
                      unique_id=self.uid, saved_state=self.saved_state)
        for name, value in fields.items():
            _pack_field(buf, FOOTER_FIELDS, name, value)
        _pack_field(buf, FOOTER_FIELDS, 'checksum',
                    vhd_checksum(buf, FOOTER_CHECKSUM_AT))
        return bytes(buf)

    def header_bytes(self, table_offset, placed_locators):
        buf = bytearray(HEADER_SIZE)
        name = self.parent_name.encode('utf-16-be')
        if len(name) > 512:
            raise ValueError('parent name longer than 256 UTF-16 units')
        fields = dict(cookie=b'cxsparse', data_offset=NO_OFFSET,
                      table_offset=table_offset, version=0x00010000,
                      max_table_entries=self.entries(),
                      block_size=self.block_size,
                      parent_unique_id=self.parent_uid,
                      parent_timestamp=self.parent_timestamp,
                      parent_name=name)
        for field, value in fields.items():
            _pack_field(buf, HEADER_FIELDS, field, value)
        for loc in placed_locators:
            space = loc.space // SECTOR if self.space_unit == 'sectors' \
                else loc.space
            LOCATOR_ENTRY.pack_into(buf, LOCATOR_TABLE + 24 * loc.slot,
                                    loc.code, space, loc.length, 0,
                                    loc.offset)
        _pack_field(buf, HEADER_FIELDS, 'checksum',
                    vhd_checksum(buf, HEADER_CHECKSUM_AT))
        return bytes(buf)

    def _place_locators(self, cursor, align):
        """Give every locator a slot, a space and an offset."""
        placed, free = [], [s for s in range(8)
                            if s not in {l.slot for l in self.locators}]
        for loc in self.locators:
            slot = loc.slot if loc.slot is not None else free.pop(0)
            space = loc.space if loc.space is not None \
                else roundup(max(len(loc.payload), 1), align)
            offset = loc.offset
            if offset is None:
                offset = roundup(cursor, align)
            cursor = max(cursor, offset + space)
            placed.append(Locator(loc.code, loc.payload, slot, space, offset,
                                  loc.length))
        return placed, cursor

    def build(self):
        """The whole file as bytes; self.file_layout tells where things are."""
        if self.kind == FIXED:
            self.file_layout = {'footer': self.size}
            return bytes(self.data) + self.footer_bytes(NO_OFFSET)
        align = 4096 if self.layout == 'windows' else SECTOR
        bsize, bmsize = self.block_size, bitmap_size(self.block_size)
        bat_bytes = roundup(4 * self.entries(), SECTOR)
        # Like Windows: the BAT 512-aligned right after what precedes it
        # (1536 in a dynamic disk), locator payloads on `align`.
        cursor = FOOTER_SIZE + HEADER_SIZE
        if self.bat_offset is not None:
            bat_offset = self.bat_offset
            placed, cursor = self._place_locators(cursor, align)
        elif self.bat_first:
            bat_offset = cursor
            placed, cursor = self._place_locators(bat_offset + bat_bytes,
                                                  align)
        else:
            placed, cursor = self._place_locators(cursor, align)
            bat_offset = roundup(cursor, SECTOR)
        cursor = max(cursor, bat_offset + bat_bytes)

        bitmap_at = {}
        for b in self._file_order(self.allocated_blocks()):
            if self.layout == 'windows':
                data_at = roundup(cursor + bmsize, 4096)
            else:
                data_at = roundup(cursor, SECTOR) + bmsize
            bitmap_at[b] = data_at - bmsize
            cursor = data_at + bsize
        footer_at = roundup(cursor, SECTOR)

        out = bytearray(footer_at + FOOTER_SIZE)
        footer = self.footer_bytes(FOOTER_SIZE)
        if self.footer_copy:
            out[0:FOOTER_SIZE] = footer
        out[footer_at:] = footer
        out[FOOTER_SIZE:FOOTER_SIZE + HEADER_SIZE] = \
            self.header_bytes(bat_offset, placed)
        for loc in placed:
            out[loc.offset:loc.offset + len(loc.payload)] = loc.payload
        bat = bytearray(b'\xff' * bat_bytes)
        for b, at in bitmap_at.items():
            if b < self.entries():
                struct.pack_into('>I', bat, 4 * b, at // SECTOR)
        out[bat_offset:bat_offset + bat_bytes] = bat
        for b, at in bitmap_at.items():
            bitmap, data = self._block_bytes(b)
            out[at:at + bmsize] = bitmap
            out[at + bmsize:at + bmsize + bsize] = data

        self.file_layout = {
            'footer': footer_at, 'header': FOOTER_SIZE, 'bat': bat_offset,
            'bat_bytes': bat_bytes, 'bitmap_size': bmsize,
            'blocks': dict(bitmap_at),
            'locators': {l.slot: (l.offset, l.space) for l in placed},
        }
        return bytes(out)

    def _block_bytes(self, b):
        """(bitmap, data) of block b as stored in the file."""
        bsize, spb = self.block_size, self.block_size // SECTOR
        first = b * spb
        flags = self.present[first:first + spb]
        flags += bytes(spb - len(flags))          # block past the virtual end
        data = bytearray(self.data[first * SECTOR:first * SECTOR + bsize])
        data += bytes(bsize - len(data))
        bits = bytearray(bitmap_size(bsize))
        for i in _ones(flags):
            bits[i >> 3] |= 0x80 >> (i & 7)       # MSB = lowest sector
        if self.kind == DYNAMIC and self.dyn_bitmap == 'ones':
            bits = bytearray(b'\xff' * len(bits))
        if self.kind == DIFFERENCING:
            # Absent sectors hold junk: only the bitmap may say they are here.
            for i in _ones(bytes(1 - f for f in flags)):
                data[i * SECTOR:(i + 1) * SECTOR] = ABSENT_FILL
        return bytes(bits), bytes(data)

    def save(self, path):
        blob = self.build()
        with open(path, 'wb') as f:
            f.write(blob)
        self.path = path
        return path


def _ones(flags):
    """Indexes of the 1 bytes in a flags array, cheaply."""
    i = flags.find(1)
    while i != -1:
        yield i
        i = flags.find(1, i + 1)


def _pack_field(buf, table, name, value):
    at, fmt = table[name]
    struct.pack_into(fmt, buf, at, value)


# ---------------------------------------------------------------- writes

def random_writes(rng, size, count, *, block_size=2 * MiB, max_sectors=40,
                  aligned4k=False, lo=0, hi=None, crossing=0.5):
    """`count` random writes inside [lo, hi) of a disk of `size` bytes.

    About `crossing` of them straddle a block border (when [lo, hi) holds
    one), the rest land anywhere; lengths are 1..max_sectors sectors, so
    bitmap bytes end up partly set.  aligned4k=True makes every offset and
    length a multiple of 4 KiB, so that bitmap bytes are 0x00 or 0xFF (what
    libvhdi reads correctly).  Returns [(offset, bytes)].
    """
    hi = size if hi is None else hi
    unit = 4096 if aligned4k else SECTOR
    lo_u, hi_u = roundup(lo, unit) // unit, hi // unit
    assert hi_u > lo_u, 'empty write range'
    per_unit = unit // SECTOR
    max_units = max(1, max_sectors // per_unit)
    borders = [b // unit for b in range(block_size, hi, block_size)
               if lo_u < b // unit < hi_u]
    writes = []
    for _ in range(count):
        n = rng.randint(1, min(max_units, hi_u - lo_u))
        if borders and n > 1 and rng.random() < crossing:
            border = rng.choice(borders)
            start = border - rng.randint(1, n - 1)
            start = min(max(start, lo_u), hi_u - n)
        else:
            start = rng.randint(lo_u, hi_u - n)
        writes.append((start * unit, rng.randbytes(n * unit)))
    return writes


def fill_writes(rng, size, chunk=1 * MiB):
    """Writes covering the whole disk with random data (a full base)."""
    return [(off, rng.randbytes(min(chunk, size - off)))
            for off in range(0, size, chunk)]


# ---------------------------------------------------------------- chains

class Point:
    """One layer of a chain and the disk it shows (with its ancestors)."""

    def __init__(self, index, name, path, vhd, expected_path, sha256):
        self.index = index            # 0 = base
        self.name = name
        self.path = path
        self.vhd = vhd
        self.size = vhd.size
        self.uid = vhd.uid
        self.expected_path = expected_path
        self.sha256 = sha256

    def expected(self, offset=0, length=None):
        """Bytes of the expected virtual disk."""
        length = self.size - offset if length is None else length
        with open(self.expected_path, 'rb') as f:
            f.seek(offset)
            return f.read(length)

    def __repr__(self):
        return 'Point(%d, %s, %d bytes)' % (self.index, self.name, self.size)


class Chain:
    """A base and differencing layers in one folder.

        c = Chain(folder, seed=1)
        c.base('base.vhd', 8 * MiB, fixed=False, writes=[...])
        c.child('snap1.avhd', writes=[...])
        c.child('snap2.avhd', size=12 * MiB, writes=[...])   # larger
        points = c.write()

    Children link to their parent like Windows: parent id = the parent's
    footer id, header name = the parent's full Windows path (win_dir +
    name; header_name='base' stores the bare name), locators W2ku (full
    path) in slot 0 and W2ru (.\\name) in slot 1 unless `locators` is given.
    Expected images are written to expected_dir (default folder/expected),
    one <layer name>.raw each.
    """

    def __init__(self, folder, *, seed=0, expected_dir=None,
                 win_dir='C:\\Hyper-V\\Virtual Hard Disks'):
        self.folder = folder
        self.rng = random.Random(seed)
        self.expected_dir = expected_dir or os.path.join(folder, 'expected')
        self.win_dir = win_dir
        self.layers = []             # [(name, VhdFile)]

    def base(self, name, size, *, fixed=False, writes=(), **opts):
        assert not self.layers, 'base() comes first'
        vhd = VhdFile('fixed' if fixed else 'dynamic', size, rng=self.rng,
                      **opts)
        vhd.apply(writes)
        self.layers.append((name, vhd))
        return vhd

    def child(self, name, *, writes=(), size=None, header_name='full',
              locators=None, **opts):
        parent_name, parent = self.layers[-1]
        full = self.win_dir + '\\' + parent_name
        if locators is None:
            locators = [w2ku(full, slot=0), w2ru('.\\' + parent_name, slot=1)]
        opts.setdefault('parent_uid', parent.uid)
        opts.setdefault('parent_name',
                        full if header_name == 'full' else parent_name)
        opts.setdefault('block_size', parent.block_size if
                        parent.kind != FIXED else 2 * MiB)
        vhd = VhdFile('differencing', size or parent.size, rng=self.rng,
                      locators=locators, **opts)
        vhd.apply(writes)
        self.layers.append((name, vhd))
        return vhd

    def write(self, expected=True):
        """Save every layer; return [Point].

        expected: True, expected image files for every point; 'tip', for
        the last one only; False, none (Point.sha256 is then None)."""
        os.makedirs(self.folder, exist_ok=True)
        if expected:
            os.makedirs(self.expected_dir, exist_ok=True)
        points, image = [], None
        for i, (name, vhd) in enumerate(self.layers):
            path = vhd.save(os.path.join(self.folder, name))
            exp_path = sha = None
            if expected:
                image = _see_through(vhd, image)
            if expected is True or (expected == 'tip' and
                                    i == len(self.layers) - 1):
                exp_path = os.path.join(self.expected_dir, name + '.raw')
                with open(exp_path, 'wb') as f:
                    f.write(image)
                sha = hashlib.sha256(image).hexdigest()
            points.append(Point(i, name, path, vhd, exp_path, sha))
        return points


def _see_through(vhd, parent_image):
    """The virtual disk of vhd laid over its parent's disk (None: base).

    Past the parent's end the parent reads zeros; a smaller child cuts the
    parent's disk at its own size."""
    if parent_image is None:
        return bytearray(vhd.data)
    image = bytearray(vhd.size)
    keep = min(len(parent_image), vhd.size)
    image[:keep] = parent_image[:keep]
    for first, count in vhd.present_runs():
        a, b = first * SECTOR, (first + count) * SECTOR
        image[a:b] = vhd.data[a:b]
    return image


def expected_of(vhds):
    """Expected image of a list of VhdFile from base to tip."""
    image = None
    for vhd in vhds:
        image = _see_through(vhd, image)
    return bytes(image)


# ---------------------------------------------------------------- reading
# Just enough structure reading to find fields in a saved file, for the
# corruption helpers and for checking samples.

def read_footer(path, where='trailer'):
    """Footer fields as a dict ('trailer' at EOF-512, or 'copy' at 0)."""
    with open(path, 'rb') as f:
        f.seek(_footer_offset(f, where))
        return _unpack_fields(f.read(FOOTER_SIZE), FOOTER_FIELDS)


def read_header(path):
    """Dynamic header fields; 'locators' = {slot: (code, space, len, off)}."""
    with open(path, 'rb') as f:
        f.seek(_header_offset(path))
        raw = f.read(HEADER_SIZE)
    fields = _unpack_fields(raw, HEADER_FIELDS)
    fields['parent_name'] = fields['parent_name'].decode(
        'utf-16-be', 'surrogatepass').rstrip('\0')
    fields['locators'] = {}
    for slot in range(8):
        code, space, length, _, offset = LOCATOR_ENTRY.unpack_from(
            raw, LOCATOR_TABLE + 24 * slot)
        if code != bytes(4):
            fields['locators'][slot] = (code, space, length, offset)
    return fields


def read_bat(path):
    h = read_header(path)
    with open(path, 'rb') as f:
        f.seek(h['table_offset'])
        raw = f.read(4 * h['max_table_entries'])
    return list(struct.unpack('>%dI' % h['max_table_entries'], raw))


def _footer_offset(f, where):
    if where == 'copy':
        return 0
    return f.seek(0, os.SEEK_END) - FOOTER_SIZE


def _header_offset(path):
    return read_footer(path)['data_offset']


def _unpack_fields(raw, table):
    return {name: struct.unpack_from(fmt, raw, at)[0]
            for name, (at, fmt) in table.items()}


# ---------------------------------------------------------------- damage

def patch_footer(path, where=('trailer', 'copy'), fix_checksum=True,
                 **fields):
    """Set footer fields in the trailer and/or the copy at 0.

    fix_checksum=False leaves the old checksum (so it no longer matches);
    giving checksum=... sets it verbatim."""
    with open(path, 'r+b') as f:
        for w in (where,) if isinstance(where, str) else where:
            at = _footer_offset(f, w)
            _patch_struct(f, at, FOOTER_SIZE, FOOTER_FIELDS,
                          FOOTER_CHECKSUM_AT, fix_checksum, fields)


def patch_header(path, fix_checksum=True, **fields):
    """Set dynamic header fields (parent_name may be a str)."""
    if isinstance(fields.get('parent_name'), str):
        fields['parent_name'] = fields['parent_name'].encode('utf-16-be')
    at = _header_offset(path)
    with open(path, 'r+b') as f:
        _patch_struct(f, at, HEADER_SIZE, HEADER_FIELDS, HEADER_CHECKSUM_AT,
                      fix_checksum, fields)


def patch_locator(path, slot, fix_checksum=True, code=None, space=None,
                  length=None, offset=None, payload=None):
    """Rewrite locator entry `slot`; payload (bytes) goes to its offset."""
    at = _header_offset(path)
    with open(path, 'r+b') as f:
        f.seek(at)
        raw = bytearray(f.read(HEADER_SIZE))
        entry = list(LOCATOR_ENTRY.unpack_from(raw, LOCATOR_TABLE + 24 * slot))
        if payload is not None and length is None:
            length = len(payload)
        for i, v in ((0, code), (1, space), (2, length), (4, offset)):
            if v is not None:
                entry[i] = v
        LOCATOR_ENTRY.pack_into(raw, LOCATOR_TABLE + 24 * slot, *entry)
        if fix_checksum:
            struct.pack_into('>I', raw, HEADER_CHECKSUM_AT,
                             vhd_checksum(raw, HEADER_CHECKSUM_AT))
        f.seek(at)
        f.write(raw)
        if payload is not None:
            f.seek(entry[4])
            f.write(payload)


def set_bat_entry(path, index, sector):
    """Point BAT entry `index` at file sector `sector` (no checksum here)."""
    table = read_header(path)['table_offset']
    with open(path, 'r+b') as f:
        f.seek(table + 4 * index)
        f.write(struct.pack('>I', sector))


def break_checksum(path, what='footer', where=('trailer', 'copy')):
    """Make a stored checksum wrong by one."""
    if what == 'footer':
        old = read_footer(path)['checksum']
        patch_footer(path, where, fix_checksum=False,
                     checksum=(old + 1) & 0xFFFFFFFF)
    else:
        old = read_header(path)['checksum']
        patch_header(path, fix_checksum=False,
                     checksum=(old + 1) & 0xFFFFFFFF)


def truncate(path, size):
    os.truncate(path, size)


def _patch_struct(f, at, size, table, checksum_at, fix_checksum, fields):
    f.seek(at)
    raw = bytearray(f.read(size))
    for name, value in fields.items():
        _pack_field(raw, table, name, value)
    if fix_checksum and 'checksum' not in fields:
        struct.pack_into('>I', raw, checksum_at,
                         vhd_checksum(raw, checksum_at))
    f.seek(at)
    f.write(raw)


def sha256_file(path, chunk=4 * MiB):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()
