"""vhdxgen: an independent VHDX writer (and small reader) for the tests.

Pure python, stdlib only.  Written from MS-VHDX and docs FORMATS.md section 3
without looking at core/: the plugin's reader is checked against files made
here, and the plugin's writer against the reader here (read_disk,
structure_problems) and libvhdi, never core/ against itself.

Main pieces:

  VhdxFile    one fixed, dynamic or differencing VHDX file: write() logical
              sectors into it, zero_block() to give a block the ZERO state,
              then save(path).  Options make odd but valid files: 512 or
              4096-byte logical sectors, 1-256 MiB blocks, region and block
              order, shuffled metadata, headers with other sequence numbers,
              a dirty log holding the BAT and sector-bitmap updates, extra
              metadata items, PARTIALLY_PRESENT with every bit set, junk bits
              for blocks that are not PARTIALLY_PRESENT ...
  Chain       a base plus differencing children in one folder; write()
              returns one Point per layer with its expected virtual disk
              (held sparse, so disks of more than one 4 GiB chunk are cheap).
  random_writes()  sector-granular random writes that cross block borders.
  read_file(), read_disk(), structure_problems()  an independent reader
              for checking files others wrote (the plugin's AVHDX layers).
  Corruption helpers (patch_header, break_header_crc, set_bat_entry,
              patch_region, add_metadata_entry, patch_item, corrupt_log,
              patch_locator_value ...) to damage saved files.

GUIDs are raw on-disk bytes (16, mixed-endian); guid_text() formats them
the Windows way.  Sizes are bytes.
"""

import hashlib
import os
import random
import struct

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# ---------------------------------------------------------------- CRC-32C

def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), reflected, init and final xor all ones:
    crc32c(b'123456789') == 0xE3069283."""
    t = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def with_crc(buf, at=4):
    """buf (bytearray) with its CRC-32C field at `at` set (taken as 0)."""
    struct.pack_into('<I', buf, at, 0)
    struct.pack_into('<I', buf, at, crc32c(buf))
    return buf


# ---------------------------------------------------------------- GUIDs

def guid_raw(text):
    """'2DC27766-F623-4200-9D64-115E9BFD4A08' -> 16 raw on-disk bytes."""
    t = text.strip('{}').replace('-', '')
    b = bytes.fromhex(t)
    return b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:]


def guid_text(raw):
    """Raw on-disk bytes -> lowercase 8-4-4-4-12 text."""
    b = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]
    h = b.hex()
    return '%s-%s-%s-%s-%s' % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def linkage_text(raw):
    return '{%s}' % guid_text(raw)


def random_guid(rng):
    b = bytearray(rng.randbytes(16))
    b[7] = (b[7] & 0x0F) | 0x40          # version 4 (Data3 is little-endian)
    b[8] = (b[8] & 0x3F) | 0x80          # RFC 4122 variant
    return bytes(b)


ZERO_GUID = bytes(16)
GUID_BAT = guid_raw('2DC27766-F623-4200-9D64-115E9BFD4A08')
GUID_METADATA = guid_raw('8B7CA206-4790-4B9A-B8FE-575F050F886E')
GUID_FILE_PARAMETERS = guid_raw('CAA16737-FA36-4D43-B3B6-33F0AA44E76B')
GUID_VIRTUAL_DISK_SIZE = guid_raw('2FA54224-CD1B-4876-B211-5DBED83BF4B8')
GUID_VIRTUAL_DISK_ID = guid_raw('BECA12AB-B2E6-4523-93EF-C309E000C746')
GUID_LOGICAL_SECTOR = guid_raw('8141BF1D-A96F-4709-BA47-F233A8FAAB5F')
GUID_PHYSICAL_SECTOR = guid_raw('CDA348C7-445D-4471-9CC9-E9885251C556')
GUID_PARENT_LOCATOR = guid_raw('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C')
GUID_LOCATOR_TYPE_VHDX = guid_raw('B04AEFB7-D19E-4A81-B789-25B8E9445913')

ITEM_NAMES = {
    GUID_FILE_PARAMETERS: 'file_parameters',
    GUID_VIRTUAL_DISK_SIZE: 'virtual_disk_size',
    GUID_VIRTUAL_DISK_ID: 'virtual_disk_id',
    GUID_LOGICAL_SECTOR: 'logical_sector_size',
    GUID_PHYSICAL_SECTOR: 'physical_sector_size',
    GUID_PARENT_LOCATOR: 'parent_locator',
}

# ---------------------------------------------------------------- layout

HEADER1, HEADER2 = 64 * KiB, 128 * KiB
HEADER_SIZE = 4 * KiB
RT1, RT2 = 192 * KiB, 256 * KiB
RT_SIZE = 64 * KiB
MD_TABLE = 64 * KiB
SB_BLOCK = 1 * MiB
LOG_SECTOR = 4 * KiB

MD_IS_USER, MD_IS_VIRTUAL_DISK, MD_IS_REQUIRED = 1, 2, 4
FP_LEAVE_ALLOCATED, FP_HAS_PARENT = 1, 2

NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED = 0, 1, 2, 3
FULLY_PRESENT, PARTIALLY_PRESENT = 6, 7
SB_NOT_PRESENT, SB_PRESENT = 0, 6

# What the file holds for an absent sector inside a PARTIALLY_PRESENT block:
# not zero and not parent data, so a reader ignoring the bitmap fails.
ABSENT_FILL = b'vhdxgen: absent sector, read the parent! '


def roundup(n, m):
    return (n + m - 1) // m * m


def chunk_ratio(logical_sector, block_size):
    return (1 << 23) * logical_sector // block_size


def bat_entries(size, block_size, logical_sector, differencing):
    """Entry count of MS-VHDX 2.5."""
    n = (size + block_size - 1) // block_size
    cr = chunk_ratio(logical_sector, block_size)
    if differencing:
        return (n + cr - 1) // cr * (cr + 1)
    return n + (n - 1) // cr if n else 0


def bat_index(block, ratio):
    return block + block // ratio


def sb_index(chunk, ratio):
    return chunk * (ratio + 1) + ratio


def header_bytes(seq, file_write, data_write, log_guid=ZERO_GUID,
                 log_offset=1 * MiB, log_length=1 * MiB, version=1,
                 log_version=0):
    b = bytearray(HEADER_SIZE)
    b[0:4] = b'head'
    struct.pack_into('<Q16s16s16sHHIQ', b, 8, seq, file_write, data_write,
                     log_guid, log_version, version, log_length, log_offset)
    return with_crc(b)


def region_table_bytes(regions):
    """regions: [(guid, offset, length, required)]."""
    b = bytearray(RT_SIZE)
    b[0:4] = b'regi'
    struct.pack_into('<I', b, 8, len(regions))
    for i, (g, off, length, req) in enumerate(regions):
        struct.pack_into('<16sQII', b, 16 + 32 * i, g, off, length, req)
    return with_crc(b)


def locator_bytes(pairs, locator_type=GUID_LOCATOR_TYPE_VHDX):
    """Parent locator item: [(key, value)] as UTF-16LE, in that order."""
    n = len(pairs)
    head = bytearray(20 + 12 * n)
    head[0:16] = locator_type
    struct.pack_into('<HH', head, 16, 0, n)
    strings = bytearray()
    at = len(head)
    for i, (k, v) in enumerate(pairs):
        kb, vb = k.encode('utf-16-le'), v.encode('utf-16-le')
        struct.pack_into('<IIHH', head, 20 + 12 * i, at, at + len(kb),
                         len(kb), len(vb))
        strings += kb + vb
        at += len(kb) + len(vb)
    return bytes(head + strings)


# ---------------------------------------------------------------- sparse disk

class SparseImage:
    """A virtual disk held as 1 MiB pages; missing pages are zeros."""

    PAGE = 1 * MiB

    def __init__(self, size):
        self.size = size
        self.pages = {}

    def copy(self, size=None):
        img = SparseImage(self.size if size is None else size)
        for p, data in self.pages.items():
            if p * self.PAGE < img.size:
                img.pages[p] = bytearray(data)
        if img.size < self.size and img.size % self.PAGE:
            last = img.size // self.PAGE
            if last in img.pages:
                cut = img.size - last * self.PAGE
                img.pages[last][cut:] = bytes(self.PAGE - cut)
        return img

    def write(self, off, data):
        assert off + len(data) <= self.size, 'write past the end'
        pos = 0
        while pos < len(data):
            p, o = divmod(off + pos, self.PAGE)
            n = min(self.PAGE - o, len(data) - pos)
            page = self.pages.get(p)
            if page is None:
                page = self.pages[p] = bytearray(self.PAGE)
            page[o:o + n] = data[pos:pos + n]
            pos += n

    def zero(self, off, length):
        end = off + length
        while off < end:
            p, o = divmod(off, self.PAGE)
            n = min(self.PAGE - o, end - off)
            if p in self.pages:
                if n == self.PAGE:
                    del self.pages[p]
                else:
                    self.pages[p][o:o + n] = bytes(n)
            off += n

    def read(self, off, length):
        out = bytearray(length)
        pos = 0
        while pos < length:
            p, o = divmod(off + pos, self.PAGE)
            n = min(self.PAGE - o, length - pos)
            page = self.pages.get(p)
            if page is not None:
                out[pos:pos + n] = page[o:o + n]
            pos += n
        return bytes(out)

    def save(self, path):
        """Write it as a (sparse) raw file."""
        with open(path, 'wb') as f:
            for p in sorted(self.pages):
                f.seek(p * self.PAGE)
                f.write(self.pages[p][:max(0, min(self.PAGE,
                                                  self.size - p * self.PAGE))])
            f.truncate(self.size)
        return path

    def sha256(self):
        h = hashlib.sha256()
        zero = bytes(self.PAGE)
        for p in range((self.size + self.PAGE - 1) // self.PAGE):
            n = min(self.PAGE, self.size - p * self.PAGE)
            page = self.pages.get(p)
            h.update(page[:n] if page is not None else zero[:n])
        return h.hexdigest()

    def ranges(self):
        """(offset, length) of the pages that may hold data."""
        return [(p * self.PAGE, min(self.PAGE, self.size - p * self.PAGE))
                for p in sorted(self.pages)]


# ---------------------------------------------------------------- one file

class VhdxFile:
    """A VHDX file held in memory until save().

    Content: for each touched block, its bytes and one present flag per
    logical sector.  Unwritten sectors of a base read zero; of a child, the
    parent.  zero_blocks read zero in both.

    Keyword options (defaults follow Windows unless said):
      block_size       default 32 MiB (base) or 2 MiB (child); not checked
      logical_sector   512 or 4096;  physical_sector (default 4096)
      creator          file identifier string (default 'vhdxgen')
      disk_id, data_write_guid, file_write_guid   raw GUIDs (random)
      seqs             (header 1, header 2) SequenceNumbers, default (8, 9)
      stale_header     the non-current header has other GUIDs (an older
                       DataWriteGuid): only the current one may count
      log_offset, log_length   the log region (1 MiB at 1 MiB)
      order            placement of 'log', 'md', 'bat' and 'blocks' in the
                       file after the first MiB (default Windows: log, md,
                       bat, blocks)
      block_order      'shuffle' (seeded), 'sequential', 'reverse'
      md_order         'windows' or 'shuffle' (metadata entries and items)
      extra_items      [(guid, flags, bytes)] more metadata items
      locator          [(key, value)] of the parent locator (children)
      zero_state       state written for zero_blocks (2 ZERO; 1, 3 alike)
      partial_full     a child writes PARTIALLY_PRESENT with all bits set
                       instead of FULLY_PRESENT
      junk_bits        set bits for NOT_PRESENT / ZERO / FULLY_PRESENT
                       blocks too (a reader must ignore them)
      sb_always        every chunk of a child gets a sector-bitmap block
      empty_blocks     child blocks allocated PARTIALLY_PRESENT with no bit
      dirty_log        BAT pages and sector-bitmap pages live only in the
                       log (the in-place copies are stale zeros), LogGuid
                       set: a reader must replay to read right
      log_entries      how many log entries carry them (default 2)
      log_start        log-relative offset of the first entry (wraps)
      log_old_sequence also an older valid sequence (lower numbers) that
                       writes stale zero pages over the BAT
    """

    def __init__(self, kind, size, *, rng=None, block_size=None,
                 logical_sector=512, physical_sector=4096,
                 creator='vhdxgen', disk_id=None, data_write_guid=None,
                 file_write_guid=None, seqs=(8, 9), stale_header=False,
                 log_offset=None, log_length=1 * MiB, order=None,
                 block_order='shuffle', md_order='windows', extra_items=(),
                 locator=None, zero_state=ZERO, partial_full=False,
                 junk_bits=False, sb_always=False, empty_blocks=(),
                 dirty_log=False, log_entries=2, log_start=0,
                 log_old_sequence=False):
        assert kind in ('fixed', 'dynamic', 'differencing'), kind
        self.kind = kind
        self.differencing = kind == 'differencing'
        self.rng = rng or random.Random()
        if block_size is None:
            block_size = 2 * MiB if self.differencing else 32 * MiB
        assert size % logical_sector == 0
        self.size = size
        self.block_size = block_size
        self.sector = logical_sector
        self.physical_sector = physical_sector
        self.creator = creator
        self.disk_id = disk_id or random_guid(self.rng)
        self.data_write_guid = data_write_guid or random_guid(self.rng)
        self.file_write_guid = file_write_guid or random_guid(self.rng)
        self.seqs = seqs
        self.stale_header = stale_header
        self.log_offset = log_offset
        self.log_length = log_length
        self.order = order or ('log', 'md', 'bat', 'blocks')
        self.block_order = block_order
        self.md_order = md_order
        self.extra_items = list(extra_items)
        self.locator = locator
        self.zero_state = zero_state
        self.partial_full = partial_full
        self.junk_bits = junk_bits
        self.sb_always = sb_always
        self.empty_blocks = set(empty_blocks)
        self.dirty_log = dirty_log
        self.log_entries = log_entries
        self.log_start = log_start
        self.log_old_sequence = log_old_sequence
        self.spb = block_size // logical_sector          # sectors per block
        self.nr_blocks = (size + block_size - 1) // block_size
        self.ratio = chunk_ratio(logical_sector, block_size)
        self.blocks = {}          # b -> [bytearray data, bytearray present]
        self.zero_blocks = set()
        self.file_layout = None
        self.path = None

    # -- content

    def _block(self, b):
        blk = self.blocks.get(b)
        if blk is None:
            blk = self.blocks[b] = [bytearray(self.block_size),
                                    bytearray(self.spb)]
            if b in self.zero_blocks:     # writing into a ZERO block
                self.zero_blocks.discard(b)
                blk[1][:] = b'\x01' * self._sectors_in(b)
        return blk

    def _sectors_in(self, b):
        return (min(self.block_size, self.size - b * self.block_size)
                // self.sector)

    def write(self, offset, data):
        """Store whole logical sectors at a virtual byte offset."""
        if offset % self.sector or len(data) % self.sector:
            raise ValueError('writes are sector-granular (%d)' % self.sector)
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError('write past the virtual end')
        pos = 0
        while pos < len(data):
            b, o = divmod(offset + pos, self.block_size)
            n = min(self.block_size - o, len(data) - pos)
            blk = self._block(b)
            blk[0][o:o + n] = data[pos:pos + n]
            s = o // self.sector
            blk[1][s:s + n // self.sector] = b'\x01' * (n // self.sector)
            pos += n

    def apply(self, writes):
        for offset, data in writes:
            self.write(offset, data)

    def zero_block(self, b):
        """Give block b the ZERO state: it reads zeros, hiding the parent."""
        assert 0 <= b < self.nr_blocks
        self.blocks.pop(b, None)
        self.zero_blocks.add(b)

    def present_runs(self):
        """(virtual offset, length) runs of the sectors this file holds."""
        runs = []
        for b in sorted(self.blocks):
            data, flags = self.blocks[b]
            n = self._sectors_in(b)
            s = flags.find(1, 0, n)
            while s != -1:
                e = flags.find(0, s, n)
                e = n if e == -1 else e
                runs.append((b * self.block_size + s * self.sector,
                             (e - s) * self.sector,
                             bytes(data[s * self.sector:e * self.sector])))
                s = flags.find(1, e, n) if e < n else -1
        return runs

    # -- block states

    def block_state(self, b):
        if self.kind == 'fixed':
            return FULLY_PRESENT
        if b in self.zero_blocks:
            return self.zero_state
        blk = self.blocks.get(b)
        if blk is None:
            return PARTIALLY_PRESENT if (self.differencing and
                                         b in self.empty_blocks) \
                else NOT_PRESENT
        if not self.differencing:
            return FULLY_PRESENT
        n = self._sectors_in(b)
        if blk[1].count(1, 0, n) == n and not self.partial_full:
            return FULLY_PRESENT
        return PARTIALLY_PRESENT

    def _payload(self, b):
        """The bytes of block b as stored."""
        blk = self.blocks.get(b)
        if blk is None:
            return bytes(self.block_size) if self.kind == 'fixed' else \
                (ABSENT_FILL * (self.block_size // len(ABSENT_FILL) + 1)
                 )[:self.block_size]
        data, flags = blk
        if not self.differencing:
            return bytes(data)
        out = bytearray(data)
        fill = (ABSENT_FILL * (self.sector // len(ABSENT_FILL) + 1)
                )[:self.sector]
        s = flags.find(0)
        while s != -1:
            out[s * self.sector:(s + 1) * self.sector] = fill
            s = flags.find(0, s + 1)
        return bytes(out)

    def _bits(self, b, state):
        """LSB-first sector bitmap bytes of block b."""
        nbytes = self.spb // 8
        if state == PARTIALLY_PRESENT and b in self.blocks:
            flags = self.blocks[b][1]
            bits = bytearray(nbytes)
            s = flags.find(1)
            while s != -1:
                bits[s >> 3] |= 1 << (s & 7)
                s = flags.find(1, s + 1)
            return bytes(bits)
        if state == FULLY_PRESENT:
            return b'\xff' * nbytes
        if self.junk_bits:
            return bytes(self.rng.getrandbits(8) for _ in range(nbytes))
        return bytes(nbytes)

    # -- assembly

    def _metadata(self):
        fp_flags = (FP_HAS_PARENT if self.differencing else 0) | \
            (FP_LEAVE_ALLOCATED if self.kind == 'fixed' else 0)
        items = [
            (GUID_FILE_PARAMETERS, MD_IS_REQUIRED,
             struct.pack('<II', self.block_size, fp_flags)),
            (GUID_VIRTUAL_DISK_SIZE, MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK,
             struct.pack('<Q', self.size)),
            (GUID_VIRTUAL_DISK_ID, MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK,
             self.disk_id),
            (GUID_LOGICAL_SECTOR, MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK,
             struct.pack('<I', self.sector)),
            (GUID_PHYSICAL_SECTOR, MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK,
             struct.pack('<I', self.physical_sector)),
        ]
        if self.differencing:
            items.append((GUID_PARENT_LOCATOR, MD_IS_REQUIRED,
                          locator_bytes(self.locator or [])))
        items += self.extra_items
        order = list(range(len(items)))
        place = list(range(len(items)))
        if self.md_order == 'shuffle':
            self.rng.shuffle(order)
            self.rng.shuffle(place)
        md = bytearray(1 * MiB)
        md[0:8] = b'metadata'
        struct.pack_into('<H', md, 10, len(items))
        at, offsets = MD_TABLE, {}
        for i in place:                       # where the items go
            g, flags, data = items[i]
            offsets[i] = at if data else 0
            md[at:at + len(data)] = data
            at = roundup(at + len(data), 8 if self.md_order == 'shuffle'
                         else 4 * KiB)
        assert at <= len(md), 'metadata does not fit in 1 MiB'
        for slot, i in enumerate(order):      # order of the table entries
            g, flags, data = items[i]
            struct.pack_into('<16sIII', md, 32 + 32 * slot, g, offsets[i],
                             len(data), flags)
        return bytes(md)

    def _allocation(self):
        """BAT entries and the file offset of every allocated block."""
        states = {b: self.block_state(b) for b in range(self.nr_blocks)}
        chunks = set()
        if self.differencing:
            for b, st in states.items():
                if st == PARTIALLY_PRESENT or self.sb_always:
                    chunks.add(b // self.ratio)
        units = [('block', b) for b, st in states.items()
                 if st in (FULLY_PRESENT, PARTIALLY_PRESENT)]
        units += [('sb', c) for c in sorted(chunks)]
        if self.block_order == 'shuffle':
            self.rng.shuffle(units)
        elif self.block_order == 'reverse':
            units.reverse()
        return states, chunks, units

    def save(self, path):
        states, chunks, units = self._allocation()
        nent = bat_entries(self.size, self.block_size, self.sector,
                           self.differencing)
        bat_len = roundup(max(nent * 8, 1), MiB)
        md = self._metadata()
        cursor = 1 * MiB
        where = {}
        unit_at = {}
        for part in self.order:
            if part == 'log':
                if self.log_offset is not None:
                    where['log'] = self.log_offset
                    cursor = max(cursor, self.log_offset + self.log_length)
                else:
                    where['log'] = cursor
                    cursor += self.log_length
            elif part == 'md':
                where['md'] = cursor
                cursor += len(md)
            elif part == 'bat':
                where['bat'] = cursor
                cursor += bat_len
            elif part == 'blocks':
                for u in units:
                    unit_at[u] = cursor
                    cursor += self.block_size if u[0] == 'block' else SB_BLOCK
        file_size = cursor

        # BAT and sector bitmaps.
        bat = bytearray(bat_len)
        for b, st in states.items():
            off = unit_at.get(('block', b), 0)
            struct.pack_into('<Q', bat, 8 * bat_index(b, self.ratio),
                             (off // MiB) << 20 | st)
        sbs = {}
        for c in chunks:
            struct.pack_into('<Q', bat, 8 * sb_index(c, self.ratio),
                             (unit_at[('sb', c)] // MiB) << 20 | SB_PRESENT)
            sb = sbs[c] = bytearray(SB_BLOCK)
            nb = self.spb // 8
            for b in range(c * self.ratio,
                           min(self.nr_blocks, (c + 1) * self.ratio)):
                at = (b % self.ratio) * nb
                sb[at:at + nb] = self._bits(b, states[b])

        # The first MiB.
        first = bytearray(1 * MiB)
        first[0:8] = b'vhdxfile'
        creator = self.creator.encode('utf-16-le')[:512]
        first[8:8 + len(creator)] = creator
        log_guid = random_guid(self.rng) if self.dirty_log else ZERO_GUID
        s1, s2 = self.seqs
        cur = 0 if s1 > s2 else 1
        for i, (at, seq) in enumerate(((HEADER1, s1), (HEADER2, s2))):
            fw, dw, lg = self.file_write_guid, self.data_write_guid, log_guid
            if self.stale_header and i != cur:
                fw, dw, lg = random_guid(self.rng), random_guid(self.rng), \
                    ZERO_GUID
            first[at:at + HEADER_SIZE] = header_bytes(
                seq, fw, dw, lg, where['log'], self.log_length)
        regions = [(GUID_BAT, where['bat'], bat_len, 1),
                   (GUID_METADATA, where['md'], len(md), 1)]
        if self.md_order == 'shuffle':
            regions.reverse()
        rt = region_table_bytes(regions)
        first[RT1:RT1 + RT_SIZE] = rt
        first[RT2:RT2 + RT_SIZE] = rt

        writes = [(0, bytes(first)), (where['md'], md)]
        meta_pages = [(where['bat'], bytes(bat))]
        for c, sb in sbs.items():
            meta_pages.append((unit_at[('sb', c)], bytes(sb)))
        log_layout = []
        if self.dirty_log:
            log_writes, log_layout = self._log(log_guid, where['log'],
                                               meta_pages, file_size)
            writes += log_writes
        else:
            writes += meta_pages
        for u, at in unit_at.items():
            if u[0] == 'block':
                writes.append((at, self._payload(u[1])))

        with open(path, 'wb') as f:
            for at, data in sorted(writes, key=lambda w: w[0]):
                f.seek(at)
                f.write(data)
            f.truncate(file_size)
        self.path = path
        self.file_layout = {
            'size': file_size, 'log': (where['log'], self.log_length),
            'md': (where['md'], len(md)), 'bat': (where['bat'], bat_len),
            'blocks': {u[1]: at for u, at in unit_at.items()
                       if u[0] == 'block'},
            'sb': {u[1]: at for u, at in unit_at.items() if u[0] == 'sb'},
            'states': states, 'log_entries': log_layout,
            'current_header': cur + 1,
        }
        return path

    def _log(self, log_guid, log_off, meta_pages, file_size):
        """Log entries carrying the non-zero 4 KiB pages of meta_pages.
        Returns ([(file offset, bytes)], [(file offset, length, seq)])."""
        pages = []
        for at, data in meta_pages:
            for o in range(0, len(data), LOG_SECTOR):
                page = data[o:o + LOG_SECTOR]
                if page.count(0) != LOG_SECTOR:
                    pages.append((at + o, page))
        k = max(1, min(self.log_entries, len(pages)))
        per = (len(pages) + k - 1) // k
        groups = [pages[i:i + per] for i in range(0, len(pages), per)] or [[]]
        seq0 = self.rng.randint(2, 1 << 40)
        writes, layout = [], []
        ring = bytearray(self.log_length)
        rel = self.log_start
        tail = rel
        entries = []
        for i, g in enumerate(groups):
            entries.append(log_entry(seq0 + i, tail, log_guid, g, file_size,
                                     file_size))
        if self.log_old_sequence:
            # An older complete sequence, after the active one in the ring,
            # that would wipe the BAT if a reader replayed it last.
            old_tail = (rel + sum(len(e) for e in entries)) % self.log_length
            old = [log_entry(seq0 - 1000, old_tail, log_guid,
                             [(at, bytes(LOG_SECTOR)) for at, _ in pages[:2]],
                             file_size, file_size)]
            entries += old
        for e in entries:
            assert len(e) <= self.log_length
            first = min(len(e), self.log_length - rel)
            ring[rel:rel + first] = e[:first]
            ring[0:len(e) - first] = e[first:]
            layout.append((log_off + rel, len(e),
                           struct.unpack_from('<Q', e, 16)[0]))
            rel = (rel + len(e)) % self.log_length
        assert sum(len(e) for e in entries) <= self.log_length, 'log full'
        writes.append((log_off, bytes(ring)))
        # In place, the BAT and the bitmaps are stale: all zero.
        for at, data in meta_pages:
            writes.append((at, bytes(len(data))))
        return writes, layout


def log_entry(seq, tail, log_guid, pages, flushed, last, zeros=()):
    """One log entry: data descriptors for pages [(file offset, 4 KiB)],
    zero descriptors for zeros [(file offset, length)]."""
    ndesc = len(pages) + len(zeros)
    dsec = (64 + 32 * ndesc + LOG_SECTOR - 1) // LOG_SECTOR
    length = (dsec + len(pages)) * LOG_SECTOR
    e = bytearray(length)
    e[0:4] = b'loge'
    struct.pack_into('<IIQII16sQQ', e, 8, length, tail, seq, ndesc, 0,
                     log_guid, flushed, last)
    d = 64
    for off, length_z in zeros:
        e[d:d + 4] = b'zero'
        struct.pack_into('<IQQQ', e, d + 4, 0, length_z, off, seq)
        d += 32
    for i, (off, page) in enumerate(pages):
        e[d:d + 4] = b'desc'
        e[d + 4:d + 8] = page[4092:4096]          # TrailingBytes
        e[d + 8:d + 16] = page[0:8]               # LeadingBytes
        struct.pack_into('<QQ', e, d + 16, off, seq)
        d += 32
        s = (dsec + i) * LOG_SECTOR
        e[s:s + 4] = b'data'
        struct.pack_into('<I', e, s + 4, seq >> 32)
        e[s + 8:s + 4092] = page[8:4092]
        struct.pack_into('<I', e, s + 4092, seq & 0xFFFFFFFF)
    return bytes(with_crc(e))


# ---------------------------------------------------------------- writes

def random_writes(rng, size, count, *, block_size=2 * MiB, sector=512,
                  max_sectors=40, aligned4k=False, lo=0, hi=None,
                  crossing=0.5):
    """`count` random sector-granular writes inside [lo, hi): about
    `crossing` of them straddle a block border.  aligned4k: offsets and
    lengths are 4 KiB multiples.  Returns [(offset, bytes)]."""
    hi = size if hi is None else hi
    unit = max(sector, 4096 if aligned4k else sector)
    lo_u, hi_u = roundup(lo, unit) // unit, hi // unit
    assert hi_u > lo_u, 'empty write range'
    max_units = max(1, max_sectors * sector // unit)
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
    return [(off, rng.randbytes(min(chunk, size - off)))
            for off in range(0, size, chunk)]


# ---------------------------------------------------------------- chains

class Point:
    """One layer of a chain and the disk it shows (with its ancestors)."""

    def __init__(self, index, name, path, vhdx, image, expected_path, sha):
        self.index = index
        self.name = name
        self.path = path
        self.vhdx = vhdx
        self.size = vhdx.size
        self.sector = vhdx.sector
        self.image = image                  # SparseImage
        self.expected_path = expected_path
        self.sha256 = sha

    def expected(self, offset=0, length=None):
        length = self.size - offset if length is None else length
        return self.image.read(offset, length)

    def __repr__(self):
        return 'Point(%d, %s, %d bytes)' % (self.index, self.name, self.size)


class Chain:
    """A base and differencing children in one folder.

        c = Chain(folder, seed=1)
        c.base('base.vhdx', 64 * MiB, writes=[...])
        c.child('snap1.avhdx', writes=[...], zero_blocks=[3])
        points = c.write()

    Children link like Hyper-V's: parent_linkage = the parent's
    DataWriteGuid, then absolute_win32_path (win_dir + name),
    relative_path (.\\name), unless locator= is given; the Virtual Disk
    ID, sector sizes and IsVirtualDisk extra items are copied; block size
    2 MiB.  Expected images are
    written to expected_dir (sparse raw files) unless expected=False.
    """

    def __init__(self, folder, *, seed=0, expected_dir=None,
                 win_dir='C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard '
                 'Disks'):
        self.folder = folder
        self.rng = random.Random(seed)
        self.expected_dir = expected_dir or os.path.join(folder, 'expected')
        self.win_dir = win_dir
        self.layers = []

    def base(self, name, size, *, fixed=False, writes=(), zero_blocks=(),
             **opts):
        assert not self.layers
        v = VhdxFile('fixed' if fixed else 'dynamic', size, rng=self.rng,
                     **opts)
        for b in zero_blocks:
            v.zero_block(b)
        v.apply(writes)
        self.layers.append((name, v))
        return v

    def default_locator(self, parent_name, parent):
        return [('parent_linkage', linkage_text(parent.data_write_guid)),
                ('absolute_win32_path', self.win_dir + '\\' + parent_name),
                ('relative_path', '.\\' + parent_name),
                ('parent_linkage2', linkage_text(ZERO_GUID))]

    def child(self, name, *, writes=(), size=None, zero_blocks=(),
              locator=None, **opts):
        parent_name, parent = self.layers[-1]
        if locator is None:
            locator = self.default_locator(parent_name, parent)
        opts.setdefault('logical_sector', parent.sector)
        opts.setdefault('physical_sector', parent.physical_sector)
        opts.setdefault('disk_id', parent.disk_id)
        # A child copies its parent's virtual disk items (MS-VHDX 2.6.1.2).
        opts.setdefault('extra_items', [it for it in parent.extra_items
                                        if it[1] & MD_IS_VIRTUAL_DISK])
        v = VhdxFile('differencing', size or parent.size, rng=self.rng,
                     locator=locator, **opts)
        for b in zero_blocks:
            v.zero_block(b)
        v.apply(writes)
        self.layers.append((name, v))
        return v

    def write(self, expected=True, sha_limit=1 * GiB):
        os.makedirs(self.folder, exist_ok=True)
        if expected:
            os.makedirs(self.expected_dir, exist_ok=True)
        points, image = [], None
        for i, (name, v) in enumerate(self.layers):
            path = v.save(os.path.join(self.folder, name))
            image = see_through(v, image)
            exp = sha = None
            if expected:
                exp = image.save(os.path.join(self.expected_dir,
                                              name + '.raw'))
                if v.size <= sha_limit:
                    sha = image.sha256()
            points.append(Point(i, name, path, v, image, exp, sha))
        return points


def see_through(v, parent_image):
    """The disk of VhdxFile v over its parent's disk (None: a base)."""
    img = SparseImage(v.size) if parent_image is None \
        else parent_image.copy(v.size)
    for b in v.zero_blocks:
        img.zero(b * v.block_size, min(v.block_size,
                                       v.size - b * v.block_size))
    if v.kind == 'fixed' or not v.differencing:
        # A base: everything not written reads zero, written sectors data.
        for b in v.blocks:
            data, _ = v.blocks[b]
            n = min(v.block_size, v.size - b * v.block_size)
            img.write(b * v.block_size, bytes(data[:n]))
        return img
    for off, n, data in v.present_runs():
        img.write(off, data)
    return img


# ---------------------------------------------------------------- reading
# An independent reader, enough to check files others write.

class VhdxInfo:
    pass


def _read_at(f, off, n):
    f.seek(off)
    b = f.read(n)
    return b + bytes(n - len(b))


def read_headers(path):
    """[(slot, fields dict, crc ok)] of both headers."""
    out = []
    with open(path, 'rb') as f:
        for slot, at in ((1, HEADER1), (2, HEADER2)):
            raw = _read_at(f, at, HEADER_SIZE)
            sig, crc, seq, fw, dw, lg, lv, ver, ll, lo = struct.unpack_from(
                '<4sIQ16s16s16sHHIQ', raw)
            ok = sig == b'head' and crc == crc32c(raw[:4] + bytes(4) +
                                                  raw[8:])
            out.append((slot, dict(signature=sig, checksum=crc, seq=seq,
                                   file_write_guid=fw, data_write_guid=dw,
                                   log_guid=lg, log_version=lv, version=ver,
                                   log_length=ll, log_offset=lo), ok))
    return out


def current_header(path):
    hs = [h for h in read_headers(path) if h[2]]
    if not hs:
        raise ValueError('%s: no valid header' % path)
    return max(hs, key=lambda h: h[1]['seq'])


def read_region_table(path, copy=1):
    with open(path, 'rb') as f:
        raw = _read_at(f, RT1 if copy == 1 else RT2, RT_SIZE)
    sig, crc, count = struct.unpack_from('<4sII', raw)
    ok = sig == b'regi' and crc == crc32c(raw[:4] + bytes(4) + raw[8:])
    regions = [struct.unpack_from('<16sQII', raw, 16 + 32 * i)
               for i in range(min(count, 2047))]
    return raw, ok, regions


def regions_of(path):
    _, ok, regions = read_region_table(path, 1)
    if not ok:
        _, ok, regions = read_region_table(path, 2)
    if not ok:
        raise ValueError('%s: no valid region table' % path)
    return {g: (off, length, req) for g, off, length, req in regions}


def read_metadata(path):
    """{'entries': [(guid, offset, length, flags)], items by name}."""
    md_off, md_len, _ = regions_of(path)[GUID_METADATA]
    with open(path, 'rb') as f:
        raw = _read_at(f, md_off, md_len)
    assert raw[:8] == b'metadata', 'no metadata signature'
    n = struct.unpack_from('<H', raw, 10)[0]
    entries = [struct.unpack_from('<16sIII', raw, 32 + 32 * i)
               for i in range(n)]
    out = {'entries': entries, 'raw': raw, 'offset': md_off}
    for g, off, length, flags in entries:
        out.setdefault('items', {})[(g, flags & MD_IS_USER)] = \
            raw[off:off + length]
        name = ITEM_NAMES.get(g)
        if name is None or flags & MD_IS_USER:
            continue
        data = raw[off:off + length]
        if name == 'file_parameters':
            out['block_size'], fl = struct.unpack('<II', data[:8])
            out['has_parent'] = bool(fl & FP_HAS_PARENT)
            out['leave_allocated'] = bool(fl & FP_LEAVE_ALLOCATED)
        elif name == 'virtual_disk_size':
            out['size'] = struct.unpack('<Q', data[:8])[0]
        elif name == 'virtual_disk_id':
            out['disk_id'] = data[:16]
        elif name == 'logical_sector_size':
            out['logical_sector'] = struct.unpack('<I', data[:4])[0]
        elif name == 'physical_sector_size':
            out['physical_sector'] = struct.unpack('<I', data[:4])[0]
        elif name == 'parent_locator':
            out['locator_type'] = data[:16]
            out['locator'] = parse_locator(data)
    return out


def parse_locator(data):
    n = struct.unpack_from('<H', data, 18)[0]
    pairs = []
    for i in range(n):
        ko, vo, kl, vl = struct.unpack_from('<IIHH', data, 20 + 12 * i)
        pairs.append((data[ko:ko + kl].decode('utf-16-le'),
                      data[vo:vo + vl].decode('utf-16-le')))
    return pairs


def read_file(path):
    """A VhdxInfo: headers, regions, metadata, BAT states and offsets.
    Ignores the log (check it is clean with current_header)."""
    i = VhdxInfo()
    i.path = path
    i.file_size = os.path.getsize(path)
    with open(path, 'rb') as f:
        i.signature = _read_at(f, 0, 8)
        i.creator = _read_at(f, 8, 512).decode('utf-16-le').split('\0')[0]
    i.header = current_header(path)
    i.regions = regions_of(path)
    i.md = read_metadata(path)
    i.size, i.block_size = i.md['size'], i.md['block_size']
    i.sector = i.md['logical_sector']
    i.differencing = i.md['has_parent']
    i.ratio = chunk_ratio(i.sector, i.block_size)
    i.nr_blocks = (i.size + i.block_size - 1) // i.block_size
    i.nr_chunks = (i.nr_blocks + i.ratio - 1) // i.ratio
    bat_off, bat_len, _ = i.regions[GUID_BAT]
    i.bat_offset = bat_off
    n = bat_entries(i.size, i.block_size, i.sector, i.differencing)
    with open(path, 'rb') as f:
        raw = _read_at(f, bat_off, n * 8)
    i.bat = list(struct.unpack('<%dQ' % n, raw))
    i.blocks = {}
    for b in range(i.nr_blocks):
        e = i.bat[bat_index(b, i.ratio)]
        i.blocks[b] = (e & 7, (e >> 20) * MiB, e)
    i.sbs = {}
    if i.differencing:
        for c in range(i.nr_chunks):
            e = i.bat[sb_index(c, i.ratio)]
            i.sbs[c] = (e & 7, (e >> 20) * MiB, e)
    return i


def block_bits(info, b):
    """LSB-first bitmap bytes of block b of a differencing file."""
    st, off, _ = info.sbs[b // info.ratio]
    nb = info.block_size // info.sector // 8
    with open(info.path, 'rb') as f:
        return _read_at(f, off + (b % info.ratio) * nb, nb)


def read_disk(paths, ranges=None):
    """The virtual disk of a chain given tip first ([tip, parent, ...,
    base]), as a SparseImage of the tip's size; ranges limits the reading
    to [(offset, length)] (block granular)."""
    infos = [read_file(p) for p in paths]
    return _compose(infos[::-1], ranges)


def _compose(infos, ranges):
    img = None
    for info in infos:
        img = SparseImage(info.size) if img is None else img.copy(info.size)
        bs = info.block_size
        wanted = None
        if ranges is not None:
            wanted = set()
            for off, n in ranges:
                wanted.update(range(off // bs, min(info.nr_blocks,
                                                   (off + n - 1) // bs + 1)))
        with open(info.path, 'rb') as f:
            for b, (st, off, _) in info.blocks.items():
                if wanted is not None and b not in wanted:
                    continue
                vo = b * bs
                n = min(bs, info.size - vo)
                if st == NOT_PRESENT:
                    if not info.differencing:
                        img.zero(vo, n)
                    continue
                if st in (UNDEFINED, ZERO, UNMAPPED, 5):
                    img.zero(vo, n)
                elif st == FULLY_PRESENT:
                    img.write(vo, _read_at(f, off, n))
                elif st == PARTIALLY_PRESENT:
                    bits = block_bits(info, b)
                    data = _read_at(f, off, n)
                    sec = info.sector
                    for s in range(n // sec):
                        if bits[s >> 3] >> (s & 7) & 1:
                            img.write(vo + s * sec,
                                      data[s * sec:(s + 1) * sec])
                else:
                    raise ValueError('%s: block %d state %d'
                                     % (info.path, b, st))
    return img


def structure_problems(path, parent=None):
    """Problems of a VHDX file as a list of strings (empty: sound):
    signature, both headers' CRCs, the current header's version and log,
    both region table copies, required metadata items, every allocated
    BAT entry 1 MiB aligned inside the file without overlaps, sector
    bitmap blocks for PARTIALLY_PRESENT blocks, and with parent= (a VHDX
    path) that parent_linkage names the parent's DataWriteGuid and the
    virtual disk items equal the parent's."""
    bad = []
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        if _read_at(f, 0, 8) != b'vhdxfile':
            return ['no vhdxfile signature']
    hs = read_headers(path)
    for slot, h, ok in hs:
        if not ok:
            bad.append('header %d: bad signature or CRC' % slot)
    try:
        cur = current_header(path)[1]
    except ValueError as e:
        return bad + [str(e)]
    if cur['version'] != 1:
        bad.append('header version %d' % cur['version'])
    if cur['log_guid'] != ZERO_GUID:
        bad.append('LogGuid is set: the log is not clean')
    valid = [h for _, h, ok in hs if ok]
    if len(valid) == 2 and valid[0]['seq'] == valid[1]['seq']:
        bad.append('both headers have SequenceNumber %d' % valid[0]['seq'])
    raw1, ok1, _ = read_region_table(path, 1)
    raw2, ok2, _ = read_region_table(path, 2)
    if not ok1 or not ok2:
        bad.append('region table copy %s bad' % ('1' if not ok1 else '2'))
    elif raw1 != raw2:
        bad.append('region table copies differ')
    try:
        info = read_file(path)
    except Exception as e:
        return bad + ['unreadable: %s' % e]
    used = [(0, MiB, 'first MiB')]
    if cur['log_length']:
        used.append((cur['log_offset'], cur['log_offset'] +
                     cur['log_length'], 'log'))
    for g, (off, length, req) in info.regions.items():
        name = 'BAT' if g == GUID_BAT else 'metadata' if g == GUID_METADATA \
            else 'region ' + guid_text(g)
        if off % MiB or length % MiB:
            bad.append('%s region not 1 MiB aligned' % name)
        if off + length > size:
            bad.append('%s region past the end of the file' % name)
        used.append((off, off + length, name))
    for key in ('size', 'block_size', 'logical_sector', 'physical_sector',
                'disk_id'):
        if key not in info.md:
            bad.append('metadata item %s missing' % key)
    for b, (st, off, e) in info.blocks.items():
        if e & 0xFFFF8:
            bad.append('block %d: reserved bits' % b)
        if st in (FULLY_PRESENT, PARTIALLY_PRESENT):
            if off < MiB or off + info.block_size > size:
                bad.append('block %d at %d outside the file' % (b, off))
            used.append((off, off + info.block_size, 'block %d' % b))
        elif off:
            bad.append('block %d: state %d with FileOffsetMB %d'
                       % (b, st, off // MiB))
        if st == PARTIALLY_PRESENT and \
                info.sbs.get(b // info.ratio, (0,))[0] != SB_PRESENT:
            bad.append('block %d: PARTIALLY_PRESENT without a sector bitmap'
                       % b)
        if st == PARTIALLY_PRESENT and not info.differencing:
            bad.append('block %d: PARTIALLY_PRESENT in a base' % b)
        if st == 4:
            bad.append('block %d: reserved state 4' % b)
    for c, (st, off, e) in info.sbs.items():
        if st == SB_PRESENT:
            if off < MiB or off + SB_BLOCK > size:
                bad.append('chunk %d: bitmap block outside the file' % c)
            used.append((off, off + SB_BLOCK, 'bitmap of chunk %d' % c))
        elif st != SB_NOT_PRESENT:
            bad.append('chunk %d: bitmap state %d' % (c, st))
    used.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(used, used[1:]):
        if b0 < a1:
            bad.append('%s at %d overlaps %s at %d' % (bn, b0, an, a0))
    if parent is not None:
        pinfo = read_file(parent)
        pdw = current_header(parent)[1]['data_write_guid']
        loc = dict(info.md.get('locator') or [])
        if info.md.get('locator_type') != GUID_LOCATOR_TYPE_VHDX:
            bad.append('locator type is not VHDX')
        if loc.get('parent_linkage') != linkage_text(pdw):
            bad.append('parent_linkage %r, want %r' % (
                loc.get('parent_linkage'), linkage_text(pdw)))
        if not info.differencing:
            bad.append('HasParent is not set')
        for key in ('size', 'disk_id', 'logical_sector', 'physical_sector'):
            if info.md.get(key) != pinfo.md.get(key):
                bad.append('%s %r differs from the parent\'s %r' % (
                    key, info.md.get(key), pinfo.md.get(key)))
        for (g, user), data in pinfo.md['items'].items():
            flags = next(fl for gg, _, _, fl in pinfo.md['entries']
                         if gg == g and fl & MD_IS_USER == user)
            if flags & MD_IS_VIRTUAL_DISK and \
                    info.md['items'].get((g, user)) != data:
                bad.append('virtual disk item %s not copied' % guid_text(g))
    return bad


# ---------------------------------------------------------------- damage

def patch_header(path, slot, fix_crc=True, **fields):
    """Set fields of header `slot` (1 or 2); names as read_headers."""
    at = HEADER1 if slot == 1 else HEADER2
    layout = {'signature': (0, '4s'), 'checksum': (4, '<I'),
              'seq': (8, '<Q'), 'file_write_guid': (16, '16s'),
              'data_write_guid': (32, '16s'), 'log_guid': (48, '16s'),
              'log_version': (64, '<H'), 'version': (66, '<H'),
              'log_length': (68, '<I'), 'log_offset': (72, '<Q')}
    with open(path, 'r+b') as f:
        raw = bytearray(_read_at(f, at, HEADER_SIZE))
        for k, v in fields.items():
            o, fmt = layout[k]
            struct.pack_into(fmt, raw, o, v)
        if fix_crc and 'checksum' not in fields:
            with_crc(raw)
        f.seek(at)
        f.write(raw)


def break_header_crc(path, slot):
    """Flip a reserved byte of header `slot`: its CRC no longer matches."""
    at = (HEADER1 if slot == 1 else HEADER2) + 2000
    with open(path, 'r+b') as f:
        b = _read_at(f, at, 1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x5A]))


def patch_region(path, guid, fix_crc=True, copies=(1, 2), offset=None,
                 length=None, required=None, add=False):
    """Change (or with add=True append) the region entry `guid`."""
    for copy in copies:
        raw, _, regions = read_region_table(path, copy)
        raw = bytearray(raw)
        idx = [i for i, r in enumerate(regions) if r[0] == guid]
        if add or not idx:
            i = len(regions)
            struct.pack_into('<I', raw, 8, i + 1)
            entry = [guid, 0, 0, 0]
        else:
            i = idx[0]
            entry = list(regions[i])
        for k, v in ((1, offset), (2, length), (3, required)):
            if v is not None:
                entry[k] = v
        struct.pack_into('<16sQII', raw, 16 + 32 * i, *entry)
        if fix_crc:
            with_crc(raw)
        with open(path, 'r+b') as f:
            f.seek(RT1 if copy == 1 else RT2)
            f.write(raw)


def set_bat_entry(path, index, value):
    """Raw 64-bit BAT entry `index` (in place, not through any log)."""
    bat_off = regions_of(path)[GUID_BAT][0]
    with open(path, 'r+b') as f:
        f.seek(bat_off + 8 * index)
        f.write(struct.pack('<Q', value))


def get_bat_entry(path, index):
    bat_off = regions_of(path)[GUID_BAT][0]
    with open(path, 'rb') as f:
        return struct.unpack('<Q', _read_at(f, bat_off + 8 * index, 8))[0]


def patch_item(path, guid, data, user=False):
    """Overwrite the bytes of metadata item `guid` (same length or less)."""
    md = read_metadata(path)
    for g, off, length, flags in md['entries']:
        if g == guid and bool(flags & MD_IS_USER) == user:
            assert len(data) <= length
            with open(path, 'r+b') as f:
                f.seek(md['offset'] + off)
                f.write(data)
            return
    raise KeyError(guid_text(guid))


def add_metadata_entry(path, guid, flags, data=b'\0' * 8):
    """Append a metadata table entry (and its item after the others)."""
    md = read_metadata(path)
    n = len(md['entries'])
    end = max([MD_TABLE] + [off + length for _, off, length, _ in
                            md['entries']])
    at = roundup(end, 8)
    with open(path, 'r+b') as f:
        f.seek(md['offset'] + 32 + 32 * n)
        f.write(struct.pack('<16sIII', guid, at, len(data), flags))
        f.seek(md['offset'] + 10)
        f.write(struct.pack('<H', n + 1))
        f.seek(md['offset'] + at)
        f.write(data)


def patch_locator_value(path, key, value):
    """Replace the value of locator `key` (same UTF-16 length)."""
    md = read_metadata(path)
    for g, off, length, flags in md['entries']:
        if g == GUID_PARENT_LOCATOR:
            data = md['raw'][off:off + length]
            n = struct.unpack_from('<H', data, 18)[0]
            for i in range(n):
                ko, vo, kl, vl = struct.unpack_from('<IIHH', data, 20 + 12 * i)
                if data[ko:ko + kl].decode('utf-16-le') == key:
                    vb = value.encode('utf-16-le')
                    assert len(vb) == vl, 'same length only'
                    with open(path, 'r+b') as f:
                        f.seek(md['offset'] + off + vo)
                        f.write(vb)
                    return
    raise KeyError(key)


def corrupt_log(path, layout, entry=0, at=4096 + 100):
    """Flip a byte inside log entry `entry` (file_layout['log_entries'])."""
    off, length, _ = layout['log_entries'][entry]
    log_off, log_len = layout['log']
    rel = (off - log_off + at % length) % log_len
    with open(path, 'r+b') as f:
        b = _read_at(f, log_off + rel, 1)
        f.seek(log_off + rel)
        f.write(bytes([b[0] ^ 0xFF]))


def data_extents(path):
    """(offset, length) of the data of a sparse file (SEEK_DATA/HOLE)."""
    out, size = [], os.path.getsize(path)
    with open(path, 'rb') as f:
        fd, off = f.fileno(), 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            off = end
    return out


def sparse_sha256(path, chunk=4 << 20):
    """SHA-256 of a file, reading only its data: holes are hashed from a
    buffer of zeros (nbdcopy and qemu-img write disks sparse; a 10 GiB
    disk is mostly holes)."""
    h, zero, size, pos = hashlib.sha256(), bytes(chunk), \
        os.path.getsize(path), 0
    with open(path, 'rb') as f:
        for off, n in data_extents(path) + [(size, 0)]:
            while pos < off:
                k = min(chunk, off - pos)
                h.update(zero[:k])
                pos += k
            f.seek(off)
            while pos < off + n:
                k = min(chunk, off + n - pos)
                h.update(f.read(k))
                pos += k
    return h.hexdigest()


def sparse_equal(a, b):
    """Do files a and b hold the same bytes?  Only their data extents
    (the union of both) are read; holes are zeros."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        for off, n in sorted(data_extents(a) + data_extents(b)):
            for o in range(off, off + n, 4 << 20):
                k = min(4 << 20, off + n - o)
                fa.seek(o)
                fb.seek(o)
                if fa.read(k) != fb.read(k):
                    return False
    return True


def sha256_file(path, chunk=4 * MiB):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()
