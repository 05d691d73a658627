"""Item semantics: the hash index, per-class LRUs, expiry, flush, CAS and every command's rules.

This module owns what an item is and what each storage command does to items, following
memcached 1.6.18 (memcached.c ``do_store_item``/``do_add_delta``, items.c). Items live inside
slab chunks (a 48-byte header, the key, the value with its ``\\r\\n``); the only per-item
state outside slab pages is one 8-byte slot of the open-addressing hash index. Every method
is synchronous and runs atomically between trio checkpoints: there is never an ``await`` here.
Values are returned as fresh ``bytes``/``bytearray`` copies, so a later write to a chunk never
changes a reply that is still being sent.
"""

from __future__ import annotations

import struct
import time
from array import array
from collections.abc import Callable, Iterator
from urllib.parse import quote_from_bytes

from .config import Config
from .defs import (
    ADD,
    APPEND,
    CAS,
    DELTA_OK,
    EXISTS,
    NO_MEMORY,
    NON_NUMERIC,
    NOT_FOUND,
    NOT_STORED,
    PREPEND,
    REALTIME_MAXDELTA,
    REPLACE,
    SET,
    STORED,
    TOO_LARGE,
    U64,
    Mode,
    Result,
    parse_u64,
)
from .slabs import (
    CHUNK_HEADER,
    F_ACTIVE,
    F_CHUNKED,
    F_DATA,
    F_FETCHED,
    F_FREE,
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
    Slabs,
)
from .stats import Stats

ITEM_UPDATE_INTERVAL = 60

_Q = struct.Struct("<q")
_I = struct.Struct("<I")
_QQ = struct.Struct("<qq")
_CAS = struct.Struct("<Q")
_TIME = struct.Struct("<I")
_EXP_TIME = struct.Struct("<II")
# exptime, time, nbytes, flags, nkey, iflags (offsets 24..41)
_VIEW = struct.Struct("<IIIIBB")

# Meta flags of an item (the header byte at offset 43): a client was handed the win token
# (mg N/R/stale), the value is stale (md I, ms I), the key arrived in base64 (b).
M_TOKEN_SENT = 0x01
M_STALE = 0x02
M_KEY_BINARY = 0x04


def item_total(nkey: int, flags: int, nbytes: int) -> int:
    """memcached's size of an item (``item_make_header`` plus the CAS): header, key and its
    NUL, 4 bytes of client flags when they are not 0, the value with its CRLF (``nbytes``)."""
    return ITEM_HEADER + nkey + 1 + (4 if flags else 0) + nbytes + 8


class Clock:
    """memcached's 1-second relative clock: ``now`` counts seconds since ``process_started``.

    The server calls ``tick()`` once a second; tests set ``now`` directly.
    """

    __slots__ = ("_wall", "now", "process_started", "started_rel")

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        start = int(wall())
        self.process_started = start - ITEM_UPDATE_INTERVAL - 2
        self.now = start - self.process_started
        self.started_rel = self.now - ITEM_UPDATE_INTERVAL

    def tick(self) -> None:
        self.now = int(self._wall()) - self.process_started

    def realtime(self, exptime: int) -> int:
        """A client exptime as a relative time; 0 = never, anything <= now = expired."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > REALTIME_MAXDELTA:
            if exptime <= self.process_started:
                return 1
            return exptime - self.process_started
        return exptime + self.now

    def absolute(self, rel: int) -> int:
        return rel + self.process_started


class Store:
    """All items of one node."""

    def __init__(self, cfg: Config, clock: Clock | None = None, stats: Stats | None = None):
        self.cfg = cfg
        self.clock = clock or Clock()
        self.slabs = Slabs(cfg)
        self.pages = self.slabs.pages
        self.stats = stats or Stats(self.slabs.largest)
        self.evictions = cfg.evictions
        self.automove = cfg.slab_automove
        self.automove_ratio = 0.8
        self.cas_id = 0
        self.oldest_live = 0
        self.oldest_cas = 0
        self.curr_items = 0
        self.bytes = 0
        self.hash_power = 16
        self.table = array("q", [NONE]) * (1 << self.hash_power)
        self.mask = (1 << self.hash_power) - 1
        self.count = 0
        self.chunk_max = cfg.slab_chunk_max
        self._crawl_class = 1
        self._crawl_pos = NONE

    # -- hash index ------------------------------------------------------------------------
    def _find(self, key: bytes) -> tuple[int, int]:
        """(slot, handle) of ``key``; handle is NONE and slot the empty slot when absent."""
        h = hash(key) & 0xFFFFFFFF
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

    def _hash_of(self, hd: int) -> int:
        return _I.unpack_from(self.pages[hd >> PAGE_SHIFT], (hd & OFFSET_MASK) + OFF_HASH)[0]

    def _table_insert(self, slot: int, hd: int) -> None:
        self.table[slot] = hd
        self.count += 1
        if self.count * 4 > len(self.table) * 3:
            self._grow()

    def _grow(self) -> None:
        old = self.table
        self.hash_power += 1
        size = 1 << self.hash_power
        self.table = table = array("q", [NONE]) * size
        self.mask = mask = size - 1
        for hd in old:
            if hd >= 0:
                i = self._hash_of(hd) & mask
                while table[i] >= 0:
                    i = (i + 1) & mask
                table[i] = hd

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
        now = self.clock.now
        oldest = self.oldest_live
        if oldest and oldest <= now:
            cas = _CAS.unpack_from(page, off + OFF_CAS)[0]
            if itime <= oldest or (self.oldest_cas and cas and cas < self.oldest_cas):
                self.stats.get_flushed += 1
                self.unlink(hd)
                return False
        if exptime and exptime <= now:
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
        """Free one item at the tail of ``clsid``'s LRU: an expired one, else evict (unless -M)."""
        cls = self.slabs.classes[clsid]
        counters = self.stats.cls[clsid]
        now = self.clock.now
        hd = cls.lru_tail
        second_chances = 5
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
            if iflags & F_ACTIVE and second_chances:
                second_chances -= 1
                page[off + OFF_IFLAGS] = iflags & ~F_ACTIVE
                self._lru_unlink(hd, page, off)
                self._lru_link(hd, page, off)
                counters.moves_to_warm += 1
                hd = prv
                continue
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
        oldest = self.oldest_live
        if not oldest or oldest > self.clock.now:
            return False
        if itime <= oldest:
            return True
        cas = _CAS.unpack_from(page, off + OFF_CAS)[0]
        return bool(self.oldest_cas and cas and cas < self.oldest_cas)

    # -- page moves (slab automove / slabs reassign) ---------------------------------------
    def _steal_page(self, dst: int) -> bool:
        """Give ``dst`` a page from the class with the most pages when it can get none."""
        if not self.automove or not self.evictions:
            return False
        slabs = self.slabs
        if slabs.free_pages:
            return True
        donor = max(slabs.classes[1:], key=lambda c: len(c.pages))
        if donor.clsid == dst or len(donor.pages) < 2:
            return False
        return self.move_page(donor.clsid)

    def move_page(self, src: int) -> bool:
        """Evict everything in one page of class ``src`` and put the page in the free pool."""
        slabs = self.slabs
        cls = slabs.classes[src]
        for index in list(cls.pages):
            if self._empty_page(index):
                slabs.release_page(index)
                self.stats.slabs_moved += 1
                return True
        return False

    def _empty_page(self, index: int) -> bool:
        pages = self.pages
        evicted = 0
        for hd in self.slabs.chunks_of_page(index):
            page = pages[hd >> PAGE_SHIFT]
            off = hd & OFFSET_MASK
            iflags = page[off + OFF_IFLAGS]
            if iflags & F_LINKED:
                self.unlink(hd)
                evicted += 1
            elif iflags & F_DATA:
                head = _Q.unpack_from(page, off + OFF_PREV)[0]
                hpage = pages[head >> PAGE_SHIFT]
                if hpage[(head & OFFSET_MASK) + OFF_IFLAGS] & F_LINKED:
                    self.unlink(head)
                    evicted += 1
        self.stats.slab_reassign_evictions += evicted
        return all(
            pages[hd >> PAGE_SHIFT][(hd & OFFSET_MASK) + OFF_IFLAGS] == F_FREE
            for hd in self.slabs.chunks_of_page(index)
        )

    def reassign(self, src: int, dst: int) -> str:
        """``slabs reassign``: memcached's reply word for moving one page from src to dst."""
        largest = self.slabs.largest
        if src == dst:
            return "SAME"
        if not (src == -1 or 1 <= src <= largest) or not 1 <= dst <= largest:
            return "BADCLASS"
        if src == -1:
            candidates = [c for c in self.slabs.classes[1:] if c.clsid != dst and len(c.pages) > 1]
            if not candidates:
                return "NOSPARE"
            src = candidates[0].clsid
        if len(self.slabs.classes[src].pages) < 2 or not self.move_page(src):
            return "NOSPARE"
        self.slabs.new_page(self.slabs.classes[dst])
        return "OK"

    def automove_step(self, last_evictions: list[int]) -> bool:
        """One round of the background page balancer (memcached's ``slab_automove=1`` idea).

        The class that evicted most since the last round receives one page from a class that
        has a page's worth of free chunks, or else from the class whose least recently used
        item is oldest, if that item is more than twice as old as the evicting class's.
        Returns whether a page moved.
        """
        classes = self.slabs.classes[1:]
        counters = self.stats.cls
        hungry = None
        most = 0
        for cls in classes:
            evicted = counters[cls.clsid].evicted
            if evicted - last_evictions[cls.clsid] > most:
                hungry, most = cls, evicted - last_evictions[cls.clsid]
            last_evictions[cls.clsid] = evicted
        if hungry is None or not self.automove:
            return False
        hungry_age = self._tail_age(hungry)
        donor = None
        donor_age = 2 * max(hungry_age, 1)
        for cls in classes:
            if cls is hungry or len(cls.pages) < 2:
                continue
            if cls.free_count + cls.end_left >= cls.perslab:
                donor = cls
                break
            age = self._tail_age(cls)
            if age > donor_age:
                donor, donor_age = cls, age
        if donor is None or not self.move_page(donor.clsid):
            return False
        self.slabs.new_page(hungry)
        return True

    def _tail_age(self, cls) -> int:
        return self.clock.now - self.item_time(cls.lru_tail) if cls.lru_tail != NONE else 0

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

    def _install(self, key: bytes, hd: int) -> int:
        """Link a new item under ``key``, replacing what is linked under it now; its CAS.

        The key is looked up again here because allocating ``hd`` may have evicted items
        (possibly the old value itself) and moved entries of the hash index.
        """
        slot, old = self._find(key)
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
        _, _, nbytes, flags, nkey, _ = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        ntotal = item_total(nkey, flags, nbytes)
        self._lru_cls(page, off).requested += ntotal
        self.curr_items += 1
        self.bytes += ntotal
        self.stats.total_items += 1
        return cas

    # -- item construction -----------------------------------------------------------------
    def item_size_ok(self, nkey: int, flags: int, nbytes: int) -> bool:
        ntotal = item_total(nkey, flags, nbytes)
        return self.slabs.clsid(ntotal) != 0

    def _new_item(
        self, key: bytes, flags: int, exptime: int, data: bytes | list[bytes], mflags: int = 0
    ) -> int:
        """Allocate and fill an unlinked item; ``data`` includes the trailing ``\\r\\n``.

        Returns NONE when the item is too large or memory cannot be found.
        """
        nkey = len(key)
        nbytes = len(data) if isinstance(data, bytes | bytearray) else sum(map(len, data))
        ntotal = item_total(nkey, flags, nbytes)
        slabs = self.slabs
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

    # -- commands --------------------------------------------------------------------------
    def get(self, key: bytes, touch_exptime: int | None = None):
        """A hit as ``(flags, data_with_crlf, cas, clsid)``, or None; ``touch_exptime`` for gat."""
        hd = self._lookup(key)
        if hd == NONE:
            return None
        page = self.pages[hd >> PAGE_SHIFT]
        off = hd & OFFSET_MASK
        _, _, nbytes, flags, nkey, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        if touch_exptime is not None:
            _I.pack_into(page, off + OFF_EXPTIME, touch_exptime)
        self._bump(hd, page, off)
        data = self._data(page, off, nkey, nbytes, iflags)
        return flags, data, _CAS.unpack_from(page, off + OFF_CAS)[0], page[off + OFF_CLSID]

    def store(
        self,
        mode: Mode,
        key: bytes,
        flags: int,
        exptime: int,
        data: bytes,
        cas_in: int = 0,
        set_stale: bool = False,
        mflags: int = 0,
        meta: bool = False,
    ) -> tuple[Result, int]:
        """Store with memcached's ``do_store_item`` rules: ``(result, cas)``.

        ``data`` includes the trailing ``\\r\\n``; ``exptime`` is already relative. A CAS is
        tested in every mode (ms sends one with any mode); with ``set_stale`` (ms ``I``) a CAS
        older than the item's replaces the value but marks it stale and keeps its TTL.
        ``meta`` (ms): a failed allocation drops the key in every mode, not only in set.
        """
        counters = self.stats.cls
        self.count_set(len(key), flags, len(data))
        _, old = self._find(key)
        if old != NONE:
            opage, ooff = self._loc(old)
            if not self._live(old, opage, ooff):
                old = NONE
        if old == NONE:
            if mode == CAS:
                self.stats.cas_misses += 1
                return NOT_FOUND, 0
            if mode in (REPLACE, APPEND, PREPEND):
                return NOT_STORED, 0
            hd = self._new_item(key, flags, exptime, data, mflags)
            if hd == NONE:
                return self._alloc_failure(key, flags, data, mode, meta), 0
            return STORED, self._install(key, hd)
        opage, ooff = self._loc(old)
        old_cas = _CAS.unpack_from(opage, ooff + OFF_CAS)[0]
        old_cls = opage[ooff + OFF_CLSID]
        if mode == ADD:
            _TIME.pack_into(opage, ooff + OFF_TIME, self.clock.now)
            self._lru_unlink(old, opage, ooff)
            self._lru_link(old, opage, ooff)
            return NOT_STORED, 0
        if mode == CAS:
            if cas_in != 0 and cas_in == old_cas:
                counters[old_cls].cas_hits += 1
            elif cas_in != 0 and set_stale and cas_in < old_cas:
                counters[old_cls].cas_hits += 1
                exptime = _I.unpack_from(opage, ooff + OFF_EXPTIME)[0]
                mflags |= M_STALE | (opage[ooff + OFF_MFLAGS] & M_TOKEN_SENT)
            else:
                counters[old_cls].cas_badval += 1
                return EXISTS, 0
        if mode in (APPEND, PREPEND):
            if cas_in != 0 and cas_in != old_cas:
                return EXISTS, 0
            oexp, _, onbytes, oflags, onkey, oiflags = _VIEW.unpack_from(opage, ooff + OFF_EXPTIME)
            old_data = self._data(opage, ooff, onkey, onbytes, oiflags)
            parts = [old_data[:-2], data] if mode == APPEND else [data[:-2], old_data]
            hd = self._new_item(key, oflags, oexp, parts)
            if hd == NONE:
                return NOT_STORED, 0  # as memcached: a failed copy is simply not stored
        else:
            hd = self._new_item(key, flags, exptime, data, mflags)
            if hd == NONE:
                return self._alloc_failure(key, flags, data, mode, meta), 0
        return STORED, self._install(key, hd)

    def count_set(self, nkey: int, flags: int, nbytes: int) -> None:
        """memcached counts ``cmd_set`` for every value it reads, whatever happens next."""
        ntotal = item_total(nkey, flags, nbytes)
        self.stats.cls[self.slabs.clsid(ntotal)].cmd_set += 1

    def _alloc_failure(self, key: bytes, flags: int, data, mode: Mode, meta: bool) -> Result:
        nbytes = len(data)
        if not self.item_size_ok(len(key), flags, nbytes):
            self.stats.store_too_large += 1
            result = TOO_LARGE
        else:
            self.stats.store_no_memory += 1
            result = NO_MEMORY
        if mode == SET or meta:
            # memcached: a failed set (any failed ms) must not leave the old value readable.
            self.delete(key, count=False)
        return result

    def oversized(self, mode: Mode, key: bytes, meta: bool = False) -> None:
        """A storage command whose value can never fit: count it; a set or any ms drops the
        key."""
        self.stats.store_too_large += 1
        if mode == SET or meta:
            self.delete(key, count=False)

    def delete(self, key: bytes, count: bool = True) -> bool:
        hd = self._lookup(key)
        if hd == NONE:
            if count:
                self.stats.delete_misses += 1
            return False
        if count:
            page, off = self._loc(hd)
            self.stats.cls[page[off + OFF_CLSID]].delete_hits += 1
        self.unlink(hd)
        return True

    def touch(self, key: bytes, exptime: int) -> bool:
        self.stats.cmd_touch += 1
        hd = self._lookup(key)
        if hd == NONE:
            self.stats.touch_misses += 1
            return False
        page, off = self._loc(hd)
        _I.pack_into(page, off + OFF_EXPTIME, exptime)
        self._bump(hd, page, off)
        self.stats.cls[page[off + OFF_CLSID]].touch_hits += 1
        return True

    def delta(
        self, key: bytes, incr: bool, amount: int, cas_in: int = 0, count_miss: bool = True
    ) -> tuple[Result, bytes, int, bool]:
        """incr/decr (and ma) as ``do_add_delta``: ``(result, digits, handle, in_place)``.

        ``result`` is DELTA_OK, NOT_FOUND, NON_NUMERIC, EXISTS (``cas_in`` given and different)
        or NO_MEMORY; a miss is counted unless ``count_miss`` is false (ma ``N`` creates the
        item instead, and memcached counts no miss then). ``handle`` is the item now linked
        under the key; ``in_place`` is false
        when the longer number needed a new item (memcached then hands the caller the old,
        unlinked item, so a later TTL change by ``ma T`` does not reach the stored one).
        """
        hd = self._lookup(key)
        if hd == NONE:
            if count_miss:
                self.stats.count_delta_miss(incr)
            return NOT_FOUND, b"", NONE, False
        page, off = self._loc(hd)
        exptime, _, nbytes, flags, nkey, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        if nbytes <= 2 or iflags & F_CHUNKED:
            return NON_NUMERIC, b"", NONE, False
        if cas_in and _CAS.unpack_from(page, off + OFF_CAS)[0] != cas_in:
            return EXISTS, b"", NONE, False
        start = off + ITEM_HEADER + nkey
        value = parse_u64(bytes(page[start : start + nbytes]))
        if value is None:
            return NON_NUMERIC, b"", NONE, False
        if incr:
            value = (value + amount) & U64
        else:
            value = value - amount if amount <= value else 0
        cls = page[off + OFF_CLSID]
        if incr:
            self.stats.cls[cls].incr_hits += 1
        else:
            self.stats.cls[cls].decr_hits += 1
        digits = b"%d" % value
        res = len(digits)
        if res + 2 <= nbytes:
            # In place, padded with spaces as memcached does; the CAS changes.
            self.cas_id += 1
            _CAS.pack_into(page, off + OFF_CAS, self.cas_id)
            page[start : start + nbytes - 2] = digits + b" " * (nbytes - 2 - res)
            _TIME.pack_into(page, off + OFF_TIME, self.clock.now)
            return DELTA_OK, digits, hd, True
        new = self._new_item(key, flags, exptime, digits + b"\r\n")
        if new == NONE:
            return NO_MEMORY, b"", NONE, False
        self._install(key, new)
        return DELTA_OK, digits, new, False

    # -- meta commands ---------------------------------------------------------------------
    def fetch(self, key: bytes, bump: bool) -> int:
        """The live item under ``key`` (NONE if none), marked fetched when ``bump``."""
        hd = self._lookup(key)
        if hd != NONE and bump:
            self._bump(hd, *self._loc(hd))
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

    def create(self, key: bytes, data: bytes = b"\r\n") -> int:
        """Link a new item with flags 0 and no TTL under a key that just missed (mg ``N``
        vivifies an empty one, ma ``N`` the initial number); NONE if memory is short."""
        hd = self._new_item(key, 0, 0, data)
        if hd != NONE:
            self._install(key, hd)
        return hd

    def meta_delete(
        self, key: bytes, cas_in: int | None, stale: bool, exptime: int | None
    ) -> Result:
        """md: NOT_FOUND, EXISTS (``cas_in`` differs), or STORED — deleted, or with ``stale``
        (md ``I``) kept, marked stale with a new CAS and, given ``exptime``, a new TTL."""
        hd = self._lookup(key)
        if hd == NONE:
            self.stats.delete_misses += 1
            return NOT_FOUND
        page, off = self._loc(hd)
        if cas_in is not None and _CAS.unpack_from(page, off + OFF_CAS)[0] != cas_in:
            self.stats.delete_misses += 1
            return EXISTS
        if stale:
            if exptime is not None:
                _I.pack_into(page, off + OFF_EXPTIME, exptime)
            page[off + OFF_MFLAGS] = (page[off + OFF_MFLAGS] | M_STALE) & ~M_TOKEN_SENT
            self.cas_id += 1
            _CAS.pack_into(page, off + OFF_CAS, self.cas_id)
            return STORED
        self.stats.cls[page[off + OFF_CLSID]].delete_hits += 1
        self.unlink(hd)
        return STORED

    def flush_all(self, delay: int = 0) -> None:
        self.stats.cmd_flush += 1
        new_oldest = self.clock.realtime(delay) if delay > 0 else self.clock.now
        self.oldest_live = new_oldest - 1
        if self.oldest_live <= self.clock.now:
            self.cas_id += 1
            self.oldest_cas = self.cas_id

    # -- introspection ---------------------------------------------------------------------
    def items(self, clsid: int) -> Iterator[int]:
        """Handles of the items of one class, most recently used first."""
        hd = self.slabs.classes[clsid].lru_head
        while hd != NONE:
            page, off = self._loc(hd)
            nxt = _Q.unpack_from(page, off)[0]
            yield hd
            hd = nxt

    def cachedump(self, clsid: int, limit: int) -> bytes:
        out = []
        if 1 <= clsid <= self.slabs.largest:
            shown = 0
            size = 0
            for hd in self.items(clsid):
                if limit and shown >= limit:
                    break
                page, off = self._loc(hd)
                exptime, _, nbytes, _, nkey, _ = _VIEW.unpack_from(page, off + OFF_EXPTIME)
                key = bytes(page[off + ITEM_HEADER : off + ITEM_HEADER + nkey])
                line = b"ITEM %s [%d b; %d s]\r\n" % (
                    key,
                    nbytes - 2,
                    self.clock.absolute(exptime) if exptime else 0,
                )
                size += len(line)
                if size + 6 > 2 * 1024 * 1024:
                    break
                out.append(line)
                shown += 1
        out.append(b"END\r\n")
        return b"".join(out)

    def metadump(self, classes: set[int] | None) -> Iterator[bytes]:
        """``lru_crawler metadump`` lines of live items, produced lazily in page order.

        Walking pages rather than LRU links keeps the walk valid while other connections
        change the cache between two chunks of output; ``classes`` None means all.
        """
        pages = self.pages
        for index in range(len(pages)):
            if not self.slabs.page_class[index]:
                continue
            for hd in list(self.slabs.chunks_of_page(index)):
                page = pages[index]
                off = hd & OFFSET_MASK
                if not page[off + OFF_IFLAGS] & F_LINKED:
                    continue
                if classes is not None and page[off + OFF_CLSID] not in classes:
                    continue
                exptime, itime, nbytes, flags, nkey, iflags = _VIEW.unpack_from(
                    page, off + OFF_EXPTIME
                )
                if (exptime and exptime <= self.clock.now) or self._flushed(page, off, itime):
                    continue
                key = bytes(page[off + ITEM_HEADER : off + ITEM_HEADER + nkey])
                yield b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
                    quote_from_bytes(key, safe="-._~").encode(),
                    self.clock.absolute(exptime) if exptime else -1,
                    self.clock.absolute(itime),
                    _CAS.unpack_from(page, off + OFF_CAS)[0],
                    b"yes" if iflags & F_FETCHED else b"no",
                    page[off + OFF_CLSID],
                    item_total(nkey, flags, nbytes),
                )

    def crawl(self, budget: int = 1000) -> int:
        """Reclaim expired and flushed items, visiting at most ``budget`` items; returns visits.

        The crawler walks each class's LRU from the tail and remembers where it stopped, so a
        large cache is covered over many short calls without blocking the event loop.
        """
        visited = 0
        now = self.clock.now
        classes = self.slabs.classes
        start_class = self._crawl_class
        while visited < budget:
            cls = classes[self._crawl_class]
            hd = self._crawl_pos if self._crawl_pos != NONE else cls.lru_tail
            counters = self.stats.cls[cls.clsid]
            while hd != NONE and visited < budget:
                page, off = self._loc(hd)
                prv = _Q.unpack_from(page, off + OFF_PREV)[0]
                if not page[off + OFF_IFLAGS] & F_LINKED:
                    hd = NONE  # our position was freed under us; restart this class
                    break
                visited += 1
                counters.crawler_items_checked += 1
                exptime, itime = _EXP_TIME.unpack_from(page, off + OFF_EXPTIME)
                if (exptime and exptime <= now) or self._flushed(page, off, itime):
                    counters.crawler_reclaimed += 1
                    if not page[off + OFF_IFLAGS] & F_FETCHED:
                        counters.expired_unfetched += 1
                    self.unlink(hd)
                hd = prv
            if hd != NONE:
                self._crawl_pos = hd
                break
            self._crawl_pos = NONE
            self._crawl_class = self._crawl_class % self.slabs.largest + 1
            if self._crawl_class == start_class:
                break
        return visited
