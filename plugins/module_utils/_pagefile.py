# Copyright: pggit.chaos contributors
# MIT License
"""Pure page logic for the index corruption fault: read, judge and damage one btree page in memory.

Nothing here touches a file or a server: the fault (``pggit_chaos_corrupt``)
reads the 8 kB page, asks :func:`leaf_problem` whether it is a btree leaf it
may damage, builds the damaged copy with :func:`scramble` or :func:`zero`, and
writes it itself.  Layouts are PostgreSQL's (``bufpage.h``, ``itemid.h``,
``nbtree.h``, ``checksum_impl.h``), little-endian, 8 kB pages:

- page header (24 bytes): pd_lsn (8), pd_checksum (2), pd_flags (2), pd_lower,
  pd_upper, pd_special, pd_pagesize_version (2 each), pd_prune_xid (4);
- line pointers from byte 24, 4 bytes each: lp_off (15 bits), lp_flags (2),
  lp_len (15);
- btree special space (16 bytes at pd_special): btpo_prev, btpo_next,
  btpo_level (4 each), btpo_flags, btpo_cycleid (2 each).

Standard library only.
"""
from __future__ import annotations

import hashlib
import struct

PAGE_SIZE = 8192
# Blocks per 1 GB segment file (RELSEG_SIZE): block N lives in segment N // SEGMENT_BLOCKS.
SEGMENT_BLOCKS = 131072
HEADER_SIZE = 24
ITEM_SIZE = 4
BT_SPECIAL_SIZE = 16
PAGE_LAYOUT_VERSION = 4
BTP_LEAF, BTP_ROOT, BTP_DELETED, BTP_META, BTP_HALF_DEAD = 1, 2, 4, 8, 16
LP_NORMAL = 1
MODES = ('scramble', 'zero')

# checksum_impl.h
N_SUMS = 32
FNV_PRIME = 16777619
_BASE_OFFSETS = (
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
)
_MASK = 0xFFFFFFFF


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def header(page):
    """The page header as a dict."""
    lsn_hi, lsn_lo, checksum, flags, lower, upper, special, size_version, prune_xid = struct.unpack_from('<IIHHHHHHI', page, 0)
    return {'lsn': '%X/%X' % (lsn_hi, lsn_lo), 'checksum': checksum, 'flags': flags, 'lower': lower, 'upper': upper,
            'special': special, 'page_size': size_version & 0xFF00, 'layout_version': size_version & 0x00FF,
            'prune_xid': prune_xid}


def is_new(page):
    """True for an all-zero page (PostgreSQL's "new" page: it passes every check, checksums included)."""
    return not any(page)


def btree_opaque(page):
    """The btree special space of a page: prev, next, level, flags, cycle_id."""
    special = header(page)['special']
    prev, nxt, level, flags, cycle = struct.unpack_from('<IIIHH', page, special)
    return {'prev': prev, 'next': nxt, 'level': level, 'flags': flags, 'cycle_id': cycle}


def item_count(page):
    """How many line pointers the page has (pd_lower - header) / 4."""
    return max(0, (header(page)['lower'] - HEADER_SIZE) // ITEM_SIZE)


def line_pointer(page, number):
    """(lp_off, lp_flags, lp_len) of line pointer ``number`` (1-based, as PostgreSQL counts)."""
    raw = struct.unpack_from('<I', page, HEADER_SIZE + ITEM_SIZE * (number - 1))[0]
    return raw & 0x7FFF, (raw >> 15) & 0x3, (raw >> 17) & 0x7FFF


def first_data_item(page):
    """The line pointer number of the first data item: 1 on the rightmost page, else 2 (1 holds the high key)."""
    return 1 if btree_opaque(page)['next'] == 0 else 2


def data_items(page):
    """Numbers of the normal (LP_NORMAL) data items of a btree page."""
    return [n for n in range(first_data_item(page), item_count(page) + 1) if line_pointer(page, n)[1] == LP_NORMAL]


def leaf_problem(page, block):
    """None when ``page`` (block ``block`` of an index) is a btree leaf page this fault may damage, else why not.

    Block 0 is the metapage and is never a leaf; a leaf needs the 8 kB
    layout, a 16-byte btree special space, BTP_LEAF, not deleted or half-dead,
    and at least two data items (a scramble swaps two)."""
    if len(page) != PAGE_SIZE:
        return 'block %s: %d bytes read, not a whole %d-byte page' % (block, len(page), PAGE_SIZE)
    if block == 0:
        return 'block 0 is the btree metapage, never a leaf: it is never damaged'
    if is_new(page):
        return 'block %s is an empty (all-zero) page' % block
    head = header(page)
    if head['page_size'] != PAGE_SIZE or head['layout_version'] != PAGE_LAYOUT_VERSION:
        return 'block %s: page size/version %s/%s is not PostgreSQL 8 kB layout %d' % (
            block, head['page_size'], head['layout_version'], PAGE_LAYOUT_VERSION)
    if head['special'] != PAGE_SIZE - BT_SPECIAL_SIZE:
        return 'block %s: special space at %s, not the btree one at %d' % (block, head['special'], PAGE_SIZE - BT_SPECIAL_SIZE)
    if not HEADER_SIZE <= head['lower'] <= head['upper'] <= head['special']:
        return 'block %s: pd_lower %s / pd_upper %s / pd_special %s are not in order' % (block, head['lower'], head['upper'], head['special'])
    flags = btree_opaque(page)['flags']
    if flags & BTP_META:
        return 'block %s is a btree metapage' % block
    if not flags & BTP_LEAF:
        return 'block %s is an internal btree page (btpo_flags %#x has no BTP_LEAF)' % (block, flags)
    if flags & (BTP_DELETED | BTP_HALF_DEAD):
        return 'block %s is a deleted or half-dead btree page (btpo_flags %#x)' % (block, flags)
    if len(data_items(page)) < 2:
        return 'block %s is a btree leaf with fewer than two data items' % block
    return None


def checksum(page, block):
    """PostgreSQL's page checksum (pg_checksum_page) of ``page`` as block ``block`` of its relation."""
    data = bytearray(page)
    data[8:10] = b'\0\0'
    words = struct.unpack('<%dI' % (PAGE_SIZE // 4), bytes(data))
    sums = list(_BASE_OFFSETS)
    for row in range(0, len(words), N_SUMS):
        for col in range(N_SUMS):
            tmp = sums[col] ^ words[row + col]
            sums[col] = ((tmp * FNV_PRIME) & _MASK) ^ (tmp >> 17)
    for _round in range(2):
        for col in range(N_SUMS):
            tmp = sums[col]
            sums[col] = ((tmp * FNV_PRIME) & _MASK) ^ (tmp >> 17)
    result = 0
    for value in sums:
        result ^= value
    result ^= block & _MASK
    return (result % 65535) + 1


def with_checksum(page, block):
    """A copy of ``page`` whose pd_checksum is right for block ``block``."""
    data = bytearray(page)
    struct.pack_into('<H', data, 8, checksum(page, block))
    return bytes(data)


def checksum_ok(page, block):
    """True when the stored pd_checksum matches (an all-zero page always passes, as in PostgreSQL)."""
    return is_new(page) or header(page)['checksum'] == checksum(page, block)


def scramble(page, block, checksums):
    """The page with the line pointers of its first two data items swapped: the keys are out of order.

    The tuples stay intact; only their order is wrong, which amcheck reports
    as "item order invariant violated" and index scans turn into wrong answers.
    With data checksums on, the checksum is set right for the new content, so
    the damage is the logical kind (like a collation change), not a torn page."""
    problem = leaf_problem(page, block)
    if problem:
        raise ValueError(problem)
    first, second = data_items(page)[:2]
    data = bytearray(page)
    a, b = HEADER_SIZE + ITEM_SIZE * (first - 1), HEADER_SIZE + ITEM_SIZE * (second - 1)
    data[a:a + ITEM_SIZE], data[b:b + ITEM_SIZE] = data[b:b + ITEM_SIZE], data[a:a + ITEM_SIZE]
    damaged = bytes(data)
    if damaged == bytes(page):
        raise ValueError('block %s: its first two data items have identical line pointers; scrambling changes nothing' % block)
    return with_checksum(damaged, block) if checksums else damaged


def zero(page, block, checksums=False):
    """An all-zero page. PostgreSQL takes it for a new page (no checksum to fail), and btree reads of it fail with
    "index ... contains unexpected zero page at block N"."""
    problem = leaf_problem(page, block)
    if problem:
        raise ValueError(problem)
    return bytes(PAGE_SIZE)


def damage(page, block, mode, checksums):
    if mode not in MODES:
        raise ValueError('mode must be one of %s, got %r' % (', '.join(MODES), mode))
    return scramble(page, block, checksums) if mode == 'scramble' else zero(page, block, checksums)


def location(relation_path, block):
    """(file relative to the data directory, byte offset in it) of ``block`` of a relation whose first segment is
    ``relation_path`` (as pg_relation_filepath returns it)."""
    segment = block // SEGMENT_BLOCKS
    path = relation_path if segment == 0 else '%s.%d' % (relation_path, segment)
    return path, (block % SEGMENT_BLOCKS) * PAGE_SIZE
