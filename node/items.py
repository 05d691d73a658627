"""Items inside slab chunks: header fields, values and chains, LRU links, allocation with
eviction, linking and unlinking (memcached's items.c).

An item is a 48-byte header (offsets named in ``slabs``), the key and the value with its
``\\r\\n``, in one chunk or, when larger than the largest chunk, a header chunk whose value
lives in a chain of chunks. This module owns that layout and the expiry and flush rules of a
lookup; what commands do with items is ``store``'s business. It is a part of ``Store`` (a
mixin) and never awaits.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .slabs import (
    CHUNK_HEADER,
    F_ACTIVE,
    F_CHUNKED,
    F_DATA,
    F_FETCHED,
    F_LINKED,
    HDR,
    ITEM_HEADER,
    NONE,
    OFF_CAS,
    OFF_CLSID,
    OFF_EXPTIME,
    OFF_HASH,
    OFF_IFLAGS,
    OFF_MFLAGS,
    OFF_NBYTES,
    OFF_NKEY,
    OFF_PREV,
    OFF_TIME,
    OFFSET_MASK,
    PAGE_SHIFT,
)

SIEVE_SCAN_LIMIT = 1000  # items one SIEVE eviction may pass over (each loses its visited bit)
_Q = struct.Struct("<q")
_I = struct.Struct("<I")
_QQ = struct.Struct("<qq")
_CAS = struct.Struct("<Q")
_TIME = struct.Struct("<I")
_EXP_TIME = struct.Struct("<II")
# exptime, time, nbytes, flags, nkey, iflags (offsets 24..41)
_VIEW = struct.Struct("<IIIIBB")
# cas, exptime, time, nbytes, flags (offsets 16..39)
_REWRITE = struct.Struct("<QIIII")

# Meta flags of an item (the header byte at offset 43): a client was handed the win token
# (mg N/R/stale), the value is stale (md I, ms I), the key arrived in base64 (b).
M_TOKEN_SENT = 0x01
M_STALE = 0x02
M_KEY_BINARY = 0x04


def item_total(nkey: int, flags: int, nbytes: int) -> int:
    """memcached's size of an item (``item_make_header`` plus the CAS): header, key and its
    NUL, 4 bytes of client flags when they are not 0, the value with its CRLF (``nbytes``)."""
    return ITEM_HEADER + nkey + 1 + (4 if flags else 0) + nbytes + 8


class Items:
    """Item layout, LRU and allocation methods of ``Store``."""

    # -- item fields -----------------------------------------------------------------------
    def _loc(self, hd: int) -> tuple[bytearray, int]:
        return self.pages[hd >> PAGE_SHIFT], hd & OFFSET_MASK

    def item_time(self, hd: int) -> int:
        page, off = self._loc(hd)
        return _TIME.unpack_from(page, off + OFF_TIME)[0]

    def _data(self, page: bytearray, off: int, nkey: int, nbytes: int, iflags: int) -> bytes:
        """The value with its trailing ``\\r\\n`` (a copy)."""
        start = off + ITEM_HEADER + nkey
        if not iflags & F_CHUNKED:
            return page[start : start + nbytes]
        parts = []
        ch = _Q.unpack_from(page, start)[0]
        pages = self.pages
        while ch != NONE:
            cpage = pages[ch >> PAGE_SHIFT]
            coff = ch & OFFSET_MASK
            nxt = _Q.unpack_from(cpage, coff)[0]
            used = _I.unpack_from(cpage, coff + OFF_NBYTES)[0]
            parts.append(cpage[coff + CHUNK_HEADER : coff + CHUNK_HEADER + used])
            ch = nxt
        return b"".join(parts)

    def _live(self, hd: int, page: bytearray, off: int) -> bool:
        """False (and the item unlinked) when it has expired or been flushed."""
        exptime, itime = _EXP_TIME.unpack_from(page, off + OFF_EXPTIME)
        # The attribute test keeps the call off the hot path when no flush_all is pending.
        if self.oldest_live and self._flushed(page, off, itime):
            self.stats.get_flushed += 1
            self.unlink(hd)
            return False
        if exptime and exptime <= self.clock.now:
            self.stats.get_expired += 1
            self.unlink(hd)
            return False
        return True

    def _lookup(self, key: bytes) -> int:
        _, hd = self._find(key)
        if hd == NONE:
            return NONE
        page, off = self._loc(hd)
        if not self._live(hd, page, off):
            return NONE
        return hd

    # -- LRU -------------------------------------------------------------------------------
    def _lru_cls(self, page: bytearray, off: int):
        return self.slabs.classes[page[off + OFF_CLSID]]

    def _lru_link(self, hd: int, page: bytearray, off: int) -> None:
        cls = self._lru_cls(page, off)
        head = cls.lru_head
        _QQ.pack_into(page, off, head, NONE)
        if head != NONE:
            _Q.pack_into(self.pages[head >> PAGE_SHIFT], (head & OFFSET_MASK) + OFF_PREV, hd)
        else:
            cls.lru_tail = hd
        cls.lru_head = hd
        cls.lru_count += 1

    def _lru_unlink(self, hd: int, page: bytearray, off: int) -> None:
        cls = self._lru_cls(page, off)
        nxt, prv = _QQ.unpack_from(page, off)
        if hd == cls.hand:
            cls.hand = prv
        if prv != NONE:
            _Q.pack_into(self.pages[prv >> PAGE_SHIFT], prv & OFFSET_MASK, nxt)
        else:
            cls.lru_head = nxt
        if nxt != NONE:
            _Q.pack_into(self.pages[nxt >> PAGE_SHIFT], (nxt & OFFSET_MASK) + OFF_PREV, prv)
        else:
            cls.lru_tail = prv
        cls.lru_count -= 1

    def _bump(self, hd: int, page: bytearray, off: int) -> None:
        """Mark a fetched item: the eviction scan gives active items a second chance (CLOCK),
        which keeps recently read items cached without relinking the LRU on every hit."""
        page[off + OFF_IFLAGS] |= F_FETCHED | F_ACTIVE
        _TIME.pack_into(page, off + OFF_TIME, self.clock.now)

    # -- allocation ------------------------------------------------------------------------
    def _alloc(self, clsid: int) -> int:
        slabs = self.slabs
        for attempt in range(10):
            hd = slabs.alloc(clsid)
            if hd != NONE:
                if attempt:
                    self.stats.cls[clsid].direct_reclaims += attempt
                return hd
            if not self._pull_tail(clsid) and not self._steal_page(clsid):
                break
        return NONE

    def _pull_tail(self, clsid: int) -> bool:
        """Free one item of ``clsid``'s list: an expired one met on the way, else evict (unless
        -M). ``clock`` starts at the tail and moves an item read since it was last looked at
        to the head (a second chance, five at most). ``sieve`` (Zhang et al., NSDI'24, ``-o
        lru_policy=sieve``) keeps the list a FIFO: a hand moves from the tail towards the head
        clearing the visited bit (``F_ACTIVE``, set by a hit) of the items it passes, evicts
        the first one not read since it last passed and stays there for the next eviction,
        wrapping to the tail at the head; new items never read again go first, unmoved."""
        cls = self.slabs.classes[clsid]
        counters = self.stats.cls[clsid]
        now = self.clock.now
        sieve = self.sieve
        hd = cls.hand if sieve and cls.hand != NONE else cls.lru_tail
        spared = SIEVE_SCAN_LIMIT if sieve else 5  # read items passed over before one goes
        while hd != NONE:
            page, off = self._loc(hd)
            prv = _Q.unpack_from(page, off + OFF_PREV)[0]
            exptime, itime = _EXP_TIME.unpack_from(page, off + OFF_EXPTIME)
            iflags = page[off + OFF_IFLAGS]
            if (exptime and exptime <= now) or self._flushed(page, off, itime):
                counters.reclaimed += 1
                if not iflags & F_FETCHED:
                    counters.expired_unfetched += 1
                self.unlink(hd)
                return True
            if not self.evictions:
                return False
            if iflags & F_ACTIVE and spared:
                spared -= 1
                page[off + OFF_IFLAGS] = iflags & ~F_ACTIVE
                if sieve:
                    counters.moves_within_lru += 1
                    hd = prv if prv != NONE else cls.lru_tail
                    continue
                self._lru_unlink(hd, page, off)
                self._lru_link(hd, page, off)
                counters.moves_to_warm += 1
                hd = prv
                continue
            if sieve:
                cls.hand = hd  # unlinking it moves the hand on to the item before it
            counters.evicted += 1
            counters.evicted_time = now - itime
            if exptime:
                counters.evicted_nonzero += 1
            if not iflags & F_FETCHED:
                counters.evicted_unfetched += 1
            if iflags & F_ACTIVE:
                counters.evicted_active += 1
            self.unlink(hd)
            return True
        return False

    def _flushed(self, page: bytearray, off: int, itime: int) -> bool:
        """memcached's flush rule: the item predates a ``flush_all`` that has taken effect."""
        oldest = self.oldest_live
        if not oldest or oldest > self.clock.now:
            return False
        if itime <= oldest:
            return True
        cas = _CAS.unpack_from(page, off + OFF_CAS)[0]
        return bool(self.oldest_cas and cas and cas < self.oldest_cas)

    # -- linking ---------------------------------------------------------------------------
    def unlink(self, hd: int) -> None:
        """Remove a linked item from the index and LRU and free its chunks."""
        page, off = self._loc(hd)
        nkey = page[off + OFF_NKEY]
        slot, found = self._find(bytes(page[off + ITEM_HEADER : off + ITEM_HEADER + nkey]))
        if found == hd:
            self._table_remove(slot)
        self._forget(hd, page, off)

    def _forget(self, hd: int, page: bytearray, off: int) -> None:
        """Everything of ``unlink`` but the hash index: LRU, accounting, chunks."""
        _, _, nbytes, flags, nkey, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        self._lru_unlink(hd, page, off)
        ntotal = item_total(nkey, flags, nbytes)
        self._lru_cls(page, off).requested -= ntotal
        self.curr_items -= 1
        self.bytes -= ntotal
        page[off + OFF_IFLAGS] = iflags & ~F_LINKED
        self._free_item(hd, page, off, nkey, iflags)

    def _free_item(self, hd: int, page: bytearray, off: int, nkey: int, iflags: int) -> None:
        slabs = self.slabs
        if iflags & F_CHUNKED:
            ch = _Q.unpack_from(page, off + ITEM_HEADER + nkey)[0]
            while ch != NONE:
                nxt = _Q.unpack_from(self.pages[ch >> PAGE_SHIFT], ch & OFFSET_MASK)[0]
                slabs.free(ch)
                ch = nxt
        slabs.free(hd)

    def _install(self, key: bytes, hd: int, empty_slot: int = -1, ntotal: int = 0) -> int:
        """Link a new item under ``key``, replacing what is linked under it now; its CAS.

        The key is looked up again here because allocating ``hd`` may have evicted items
        (possibly the old value itself) and moved entries of the hash index; unless the caller
        knows ``empty_slot`` is where the key's probe ends now (the key is absent and the index
        was not changed since it was looked up). ``ntotal``: the item's size, when known.
        """
        if empty_slot < 0:
            slot, old = self._find(key)
        else:
            slot, old = empty_slot, NONE
        page, off = self._loc(hd)
        self.cas_id += 1
        cas = self.cas_id
        _CAS.pack_into(page, off + OFF_CAS, cas)
        _TIME.pack_into(page, off + OFF_TIME, self.clock.now)
        page[off + OFF_IFLAGS] |= F_LINKED
        if old != NONE:
            self.table[slot] = hd  # same key, same slot
            self._forget(old, *self._loc(old))
        else:
            self._table_insert(slot, hd)
        self._lru_link(hd, page, off)
        if not ntotal:
            _, _, nbytes, flags, nkey, _ = _VIEW.unpack_from(page, off + OFF_EXPTIME)
            ntotal = item_total(nkey, flags, nbytes)
        self._lru_cls(page, off).requested += ntotal
        self.curr_items += 1
        self.bytes += ntotal
        self.stats.total_items += 1
        return cas

    def relink(self, hd: int, key: bytes, page, off: int) -> None:
        """Index a linked item found in item memory after a warm restart, counted as
        ``_install`` counts it (memcached's ``do_item_link_fixup``); its hash is this
        process's, its LRU links are in place already."""
        h = hash(key) & 0xFFFFFFFF
        _I.pack_into(page, off + OFF_HASH, h)
        slot, old = self._find(key)
        if old != NONE:
            raise ValueError(f"the key {key!r} twice")
        self._table_insert(slot, hd)
        self.curr_items += 1
        self.bytes += self.item_size(hd)
        self.stats.total_items += 1

    def _replace_in_place(
        self,
        old: int,
        page: bytearray,
        off: int,
        key: bytes,
        flags: int,
        exptime: int,
        data: bytes,
        mflags: int,
    ) -> int:
        """Write a new value of ``key`` over its live, unchained item ``old``; the new CAS,
        or 0 when the new item must be allocated elsewhere.

        memcached allocates the new item (from the head of its class's free list) and then
        frees the old chunk. When the new item is of the same class and that free list is not
        empty, writing it over the old chunk leaves every count of ``stats``, ``stats slabs``
        and ``stats items`` as memcached's would be, without the allocation's work. The item
        goes to the head of its LRU, as a new item does.
        """
        nbytes = len(data)
        nkey = len(key)
        ntotal = item_total(nkey, flags, nbytes)
        clsid = page[off + OFF_CLSID]
        slabs = self.slabs
        if ntotal > self.chunk_max or slabs.clsid(ntotal) != clsid:
            return 0
        cls = slabs.classes[clsid]
        if cls.free_head == NONE or page[off + OFF_IFLAGS] & F_CHUNKED:
            return 0
        _, _, onbytes, oflags, _, _ = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        grown = ntotal - item_total(nkey, oflags, onbytes)
        cls.requested += grown
        self.bytes += grown
        self.cas_id += 1
        cas = self.cas_id
        _REWRITE.pack_into(page, off + OFF_CAS, cas, exptime, self.clock.now, nbytes, flags)
        page[off + OFF_IFLAGS] = F_LINKED
        page[off + OFF_MFLAGS] = mflags
        start = off + ITEM_HEADER + nkey
        page[start : start + nbytes] = data
        if cls.lru_head != old:
            self._lru_unlink(old, page, off)
            self._lru_link(old, page, off)
        self.stats.total_items += 1
        return cas

    # -- item construction -----------------------------------------------------------------
    def item_size_ok(self, nkey: int, flags: int, nbytes: int) -> bool:
        ntotal = item_total(nkey, flags, nbytes)
        return self.slabs.clsid(ntotal) != 0

    def _new_item(
        self,
        key: bytes,
        flags: int,
        exptime: int,
        data: bytes | list[bytes],
        mflags: int = 0,
        ntotal: int = 0,
        clsid: int = 0,
    ) -> int:
        """Allocate and fill an unlinked item; ``data`` includes the trailing ``\\r\\n``;
        ``ntotal`` and ``clsid``, when the caller knows them, are its size and class.

        Returns NONE when the item is too large or memory cannot be found.
        """
        nkey = len(key)
        nbytes = sum(map(len, data)) if type(data) is list else len(data)
        slabs = self.slabs
        if not ntotal:
            ntotal = item_total(nkey, flags, nbytes)
            clsid = slabs.clsid(ntotal)
        if clsid == 0:
            return NONE
        h = hash(key) & 0xFFFFFFFF
        if ntotal <= self.chunk_max:
            hd = self._alloc(clsid)
            if hd == NONE:
                self.stats.cls[clsid].outofmemory += 1
                return NONE
            page, off = self._loc(hd)
            HDR.pack_into(
                page, off, NONE, NONE, 0, exptime, 0, nbytes, flags, nkey, 0, clsid, mflags, h
            )
            start = off + ITEM_HEADER
            page[start : start + nkey] = key
            start += nkey
            if isinstance(data, list):
                for part in data:
                    page[start : start + len(part)] = part
                    start += len(part)
            else:
                page[start : start + nbytes] = data
            return hd
        return self._new_chained(key, h, flags, exptime, data, nbytes, clsid, mflags)

    def _new_chained(self, key, h, flags, exptime, data, nbytes, clsid, mflags) -> int:
        nkey = len(key)
        slabs = self.slabs
        htotal = nkey + 1 + (4 if flags else 0) + ITEM_HEADER + CHUNK_HEADER + 8
        hdr_cls = slabs.clsid(htotal)
        hd = self._alloc(hdr_cls)
        if hd == NONE:
            self.stats.cls[clsid].outofmemory += 1
            return NONE
        page, off = self._loc(hd)
        HDR.pack_into(
            page, off, NONE, NONE, 0, exptime, 0, nbytes, flags, nkey, F_CHUNKED, clsid, mflags, h
        )
        page[off + ITEM_HEADER : off + ITEM_HEADER + nkey] = key
        link_at = (hd, off + ITEM_HEADER + nkey)  # where the next chunk's handle goes
        _Q.pack_into(page, link_at[1], NONE)
        blob = data if isinstance(data, bytes | bytearray) else b"".join(data)
        view = memoryview(blob)
        pos = 0
        while pos < nbytes:
            size = min(nbytes - pos + CHUNK_HEADER, self.chunk_max)
            ccls = slabs.clsid(size)
            ch = self._alloc(ccls)
            if ch == NONE and size != self.chunk_max:
                ch = self._alloc(slabs.clsid(self.chunk_max))
            if ch == NONE:
                self._free_item(hd, page, off, nkey, F_CHUNKED)
                self.stats.cls[clsid].outofmemory += 1
                return NONE
            cpage, coff = self._loc(ch)
            cap = slabs.sizes[slabs.page_class[ch >> PAGE_SHIFT]] - CHUNK_HEADER
            used = min(cap, nbytes - pos)
            HDR.pack_into(cpage, coff, NONE, hd, 0, 0, 0, used, 0, 0, F_DATA, 0, 0, 0)
            cpage[coff + CHUNK_HEADER : coff + CHUNK_HEADER + used] = view[pos : pos + used]
            lpage, _ = self._loc(link_at[0])
            _Q.pack_into(lpage, link_at[1], ch)
            link_at = (ch, coff)
            pos += used
        return hd

    def bump(self, hd: int) -> None:
        self._bump(hd, *self._loc(hd))

    def fields(self, hd: int) -> tuple[int, int, int, int, int, int, int, int]:
        """``(exptime, time, nbytes, flags, iflags, mflags, cas, clsid)`` of an item."""
        page, off = self._loc(hd)
        exptime, itime, nbytes, flags, _, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        cas = _CAS.unpack_from(page, off + OFF_CAS)[0]
        mflags = page[off + OFF_MFLAGS]
        return exptime, itime, nbytes, flags, iflags, mflags, cas, page[off + OFF_CLSID]

    def value(self, hd: int) -> bytes:
        """The item's value with its ``\\r\\n`` (a copy)."""
        page, off = self._loc(hd)
        _, _, nbytes, _, nkey, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        return bytes(self._data(page, off, nkey, nbytes, iflags))

    def item_size(self, hd: int) -> int:
        page, off = self._loc(hd)
        _, _, nbytes, flags, nkey, _ = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        return item_total(nkey, flags, nbytes)

    def key_of(self, hd: int) -> bytes:
        page, off = self._loc(hd)
        return bytes(page[off + ITEM_HEADER : off + ITEM_HEADER + page[off + OFF_NKEY]])

    def set_exptime(self, hd: int, exptime: int) -> None:
        page, off = self._loc(hd)
        _I.pack_into(page, off + OFF_EXPTIME, exptime)

    def set_mflags(self, hd: int, mflags: int) -> None:
        page, off = self._loc(hd)
        page[off + OFF_MFLAGS] = mflags

    # -- introspection ---------------------------------------------------------------------
    def items(self, clsid: int) -> Iterator[int]:
        """Handles of the items of one class, most recently used first."""
        hd = self.slabs.classes[clsid].lru_head
        while hd != NONE:
            page, off = self._loc(hd)
            nxt = _Q.unpack_from(page, off)[0]
            yield hd
            hd = nxt
