"""The hash index of a node: key → chunk handle (memcached's assoc.c).

This module owns the open-addressing table of 8-byte handles and its growth, which moves
entries from the old table in bounded steps so that no single command stalls the node. It is
a part of ``Store`` (a mixin); it reads an item's key and hash from its header and nothing else.
"""

from __future__ import annotations

import struct
from array import array

from .slabs import (
    ITEM_HEADER,
    NONE,
    OFF_HASH,
    OFF_NKEY,
    OFFSET_MASK,
    PAGE_SHIFT,
)

TOMBSTONE = -2  # a moved slot of the old hash table while it grows
REHASH_PER_INSERT = 8  # old slots moved by each insert, so the move ends long before it fills
_I = struct.Struct("<I")


class HashIndex:
    """The hash index methods of ``Store``."""

    # -- hash index ------------------------------------------------------------------------
    # Open addressing with linear probing over 8-byte chunk handles. When the table grows,
    # the old one is kept beside the new one and its entries move over in bounded steps
    # (memcached's assoc expansion): a few slots on every insert and REHASH steps from the
    # server, and an entry found in the old table moves at once. Moved slots of the old table
    # become tombstones, so its probe chains stay intact; its empty slots stay empty, so every
    # probe of it ends.
    def _find(self, key: bytes) -> tuple[int, int]:
        """(slot, handle) of ``key``; handle is NONE and slot the empty slot when absent."""
        h = hash(key) & 0xFFFFFFFF
        old = self.old_table
        if old is None:
            # The hot path: one probe of one table, without _probe's tombstone test.
            table = self.table
            mask = self.mask
            pages = self.pages
            nkey = len(key)
            i = h & mask
            while True:
                hd = table[i]
                if hd < 0:
                    return i, NONE
                page = pages[hd >> PAGE_SHIFT]
                off = hd & OFFSET_MASK
                if (
                    _I.unpack_from(page, off + OFF_HASH)[0] == h
                    and page[off + OFF_NKEY] == nkey
                    and page[off + ITEM_HEADER : off + ITEM_HEADER + nkey] == key
                ):
                    return i, hd
                i = (i + 1) & mask
        slot, hd = _probe(self.table, self.mask, self.pages, h, key)
        if hd != NONE:
            return slot, hd
        oslot, hd = _probe(old, len(old) - 1, self.pages, h, key)
        if hd != NONE:
            old[oslot] = TOMBSTONE  # found in the old table: it moves over now
            self.table[slot] = hd
        return slot, hd

    def _hash_of(self, hd: int) -> int:
        return _I.unpack_from(self.pages[hd >> PAGE_SHIFT], (hd & OFFSET_MASK) + OFF_HASH)[0]

    def _table_insert(self, slot: int, hd: int) -> None:
        self.table[slot] = hd
        self.count += 1
        if self.old_table is not None:
            self.rehash_step(REHASH_PER_INSERT)
        elif self.count * 4 > len(self.table) * 3:
            self._grow()

    def _grow(self) -> None:
        """Start moving to a table twice the size (finished by ``rehash_step``)."""
        self.old_table = self.table
        self.rehash_pos = 0
        self.hash_power += 1
        size = 1 << self.hash_power
        self.table = array("q", [NONE]) * size
        self.mask = size - 1

    def rehash_step(self, budget: int) -> bool:
        """Move up to ``budget`` slots of the old table; whether a move is still under way."""
        old = self.old_table
        if old is None:
            return False
        table = self.table
        mask = self.mask
        pos = self.rehash_pos
        end = min(len(old), pos + budget)
        for k in range(pos, end):
            hd = old[k]
            if hd >= 0:
                i = self._hash_of(hd) & mask
                while table[i] >= 0:
                    i = (i + 1) & mask
                table[i] = hd
                old[k] = TOMBSTONE  # empty slots stay empty: every probe still ends
        self.rehash_pos = end
        if end == len(old):
            self.old_table = None
            return False
        return True

    def resize_index(self, hash_power: int) -> None:
        """An empty table of ``2 ** hash_power`` slots (a warm restart: the size it had)."""
        self.hash_power = hash_power
        self.table = array("q", [NONE]) * (1 << hash_power)
        self.mask = (1 << hash_power) - 1
        self.count = 0
        self.old_table = None

    def _table_remove(self, slot: int) -> None:
        table = self.table
        mask = self.mask
        i = slot
        j = slot
        while True:
            j = (j + 1) & mask
            hd = table[j]
            if hd < 0:
                break
            home = self._hash_of(hd) & mask
            # Keep the entry where it is if its home lies cyclically in (i, j].
            if (i < j and i < home <= j) or (j < i and (home > i or home <= j)):
                continue
            table[i] = hd
            i = j
        table[i] = NONE
        self.count -= 1


def _probe(table: array, mask: int, pages: list, h: int, key: bytes) -> tuple[int, int]:
    """Linear probing for ``key`` (hash ``h``): (slot, handle), or (first empty slot, NONE).
    Tombstones (only in an old table) are passed over."""
    nkey = len(key)
    i = h & mask
    while True:
        hd = table[i]
        if hd == NONE:
            return i, NONE
        if hd >= 0:
            page = pages[hd >> PAGE_SHIFT]
            off = hd & OFFSET_MASK
            if (
                _I.unpack_from(page, off + OFF_HASH)[0] == h
                and page[off + OFF_NKEY] == nkey
                and page[off + ITEM_HEADER : off + ITEM_HEADER + nkey] == key
            ):
                return i, hd
        i = (i + 1) & mask
