"""Item semantics: what every command does to items (memcached.c ``do_store_item``,
``do_add_delta``, and the meta commands' rules), the CAS counter, ``flush_all`` and the clock.

``Store`` is assembled from the index (``assoc``), the item layout, LRU and allocation
(``items``) and the background walks (``crawler``); this module keeps the command rules.
Every method is synchronous and runs atomically between trio checkpoints: there is never an
``await`` here. Values are returned as fresh ``bytes`` copies, so a later write to a chunk
never changes a reply that is still being sent.
"""

from __future__ import annotations

import struct
import time
from array import array
from collections.abc import Callable

from .assoc import HashIndex
from .config import Config
from .counters import Stats
from .crawler import Crawler
from .defs import (
    ADD,
    APPEND,
    CAS,
    DELTA_OK,
    EXISTS,
    KEY_MAX_LENGTH,
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
from .items import (
    _CAS,
    _I,
    _VIEW,
    ITEM_UPDATE_INTERVAL,
    M_STALE,
    M_TOKEN_SENT,
    Items,
    item_total,
)
from .slabs import (
    F_ACTIVE,
    F_CHUNKED,
    ITEM_HEADER,
    LRU_BITS,
    NONE,
    OFF_CAS,
    OFF_CLSID,
    OFF_EXPTIME,
    OFF_MFLAGS,
    OFFSET_MASK,
    PAGE_SHIFT,
    MemoryFile,
    Slabs,
)

# cas, exptime, time, nbytes, flags, nkey, iflags, clsid, mflags, hash (header offsets 16..47)
_FIELDS = struct.Struct("<QIIIIBBBBI")


class Clock:
    """memcached's 1-second relative clock: ``now`` counts seconds since ``process_started``.

    The server calls ``tick()`` once a second; tests set ``now`` directly.
    """

    __slots__ = ("_wall", "now", "process_started")

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        start = int(wall())
        self.process_started = start - ITEM_UPDATE_INTERVAL - 2
        self.now = start - self.process_started

    @property
    def uptime(self) -> int:
        """memcached's ``uptime``: ``now`` less the ITEM_UPDATE_INTERVAL it starts at (so it
        goes on counting across a warm restart, the process start restored)."""
        return self.now - ITEM_UPDATE_INTERVAL

    def tick(self) -> None:
        self.now = int(self._wall()) - self.process_started

    def wall_seconds(self) -> int:
        return int(self._wall())

    def until_next_second(self) -> float:
        """Seconds until the wall clock's next whole second, when ``tick`` should run next
        (so that each tick advances ``now`` by exactly one)."""
        return 1.0 - self._wall() % 1.0

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


class Store(HashIndex, Items, Crawler):
    """All items of one node."""

    def __init__(
        self,
        cfg: Config,
        clock: Clock | None = None,
        stats: Stats | None = None,
        memory: MemoryFile | None = None,
    ):
        self.cfg = cfg
        self.clock = clock or Clock()
        self.slabs = Slabs(cfg, memory)
        self.pages = self.slabs.pages
        self.stats = stats or Stats(self.slabs.largest)
        self.evictions = cfg.evictions
        self.sieve = cfg.lru_policy == "sieve"
        self.segmented = cfg.lru_policy == "segmented"
        self.hot_lru_pct = cfg.hot_lru_pct
        self.warm_lru_pct = cfg.warm_lru_pct
        self.hot_max_factor = cfg.hot_max_factor
        self.warm_max_factor = cfg.warm_max_factor
        self.temporary_ttl = cfg.temporary_ttl
        # A new item's LRU bits, or -1 while they depend on its TTL (_new_lru).
        self.new_lru_bits = -1
        if self.temporary_ttl is None:
            self.new_lru_bits = self._new_lru(b"", 0)
        self.automove = cfg.slab_automove
        self.automove_ratio = 0.8
        self.cas_id = 0
        # Told of a CAS that did not match (``-vv`` prints it, as memcached does).
        self.cas_mismatch: Callable[[int, int], object] | None = None
        self.oldest_live = 0
        self.oldest_cas = 0
        self.curr_items = 0
        self.bytes = 0
        self.hash_power = 16
        self.table = array("q", [NONE]) * (1 << self.hash_power)
        self.mask = (1 << self.hash_power) - 1
        self.count = 0
        self.old_table: array | None = None  # the table being moved out of while growing
        self.rehash_pos = 0
        self.chunk_max = cfg.slab_chunk_max
        # A value (with its CRLF) of at most this many bytes fits under any key and flags.
        self.always_fits = self.slabs.item_size_max - item_total(KEY_MAX_LENGTH, 1, 0)
        self._crawl_class = 1
        self._crawl_lru = 0
        self._crawl_pos = NONE
        # memcached's autocrawl schedule, per LRU of each class (index clsid * 4 + lru): the
        # time its next pass may start, the wait it has earned, and the pass under way's
        # items seen alive, seen without a TTL, and by minutes left to live (``crawl``).
        nlrus = (self.slabs.largest + 1) * 4
        self._crawl_next = [-1] * nlrus
        self._crawl_wait = [0] * nlrus
        self._crawl_seen = self._crawl_noexp = 0
        self._crawl_histo = [0] * 60

    # -- commands --------------------------------------------------------------------------
    def get(self, key: bytes, touch_exptime: int | None = None):
        """A hit as ``(flags, data_with_crlf, cas, lruid)``, or None; ``touch_exptime`` for
        gat. ``lruid``: the class with the LRU the item was on in its two high bits (memcached's
        ``slabs_clsid``, by which it counts hits to HOT, WARM, COLD, TEMP).

        The hot path of the node: while the index is not growing and no ``flush_all`` is
        pending, the probe of ``_find``, the expiry test of ``_live`` and the reads of the
        header are done here with one ``unpack`` per probed item.
        """
        if self.old_table is not None or self.oldest_live:
            hd = self._lookup(key)
            if hd == NONE:
                return None
            page = self.pages[hd >> PAGE_SHIFT]
            off = hd & OFFSET_MASK
            cas, exptime, _, nbytes, flags, nkey, iflags, clsid, _, _ = _FIELDS.unpack_from(
                page, off + OFF_CAS
            )
        else:
            h = hash(key) & 0xFFFFFFFF
            table = self.table
            mask = self.mask
            pages = self.pages
            nkey = len(key)
            i = h & mask
            while True:
                hd = table[i]
                if hd < 0:
                    return None
                page = pages[hd >> PAGE_SHIFT]
                off = hd & OFFSET_MASK
                cas, exptime, _, nbytes, flags, ikey, iflags, clsid, _, ih = _FIELDS.unpack_from(
                    page, off + OFF_CAS
                )
                start = off + ITEM_HEADER
                if ih == h and ikey == nkey and page[start : start + nkey] == key:
                    break
                i = (i + 1) & mask
            if exptime and exptime <= self.clock.now:
                self.stats.get_expired += 1
                self.unlink(hd)
                return None
        if touch_exptime is not None:
            _I.pack_into(page, off + OFF_EXPTIME, touch_exptime)
        if not iflags & F_ACTIVE:  # an ACTIVE item has had its bump (segmented, sieve)
            self._bump(hd, page, off, iflags)
        if iflags & F_CHUNKED:
            data = self._data(page, off, nkey, nbytes, iflags)
        else:
            start = off + ITEM_HEADER + nkey
            data = page[start : start + nbytes]
        return flags, data, cas, clsid | iflags & LRU_BITS

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
        ntotal, clsid = self.count_set(len(key), flags, len(data))
        slot, old = self._find(key)
        if old != NONE:
            opage, ooff = self._loc(old)
            if not self._live(old, opage, ooff):
                old = NONE
                slot = -1  # unlinking it changed the index
        if old == NONE:
            if mode == CAS:
                self.stats.cas_misses += 1
                return NOT_FOUND, 0
            if mode in (REPLACE, APPEND, PREPEND):
                return NOT_STORED, 0
            count = self.count
            hd = self._new_item(key, flags, exptime, data, mflags, ntotal, clsid)
            if hd == NONE:
                return self._alloc_failure(key, flags, data, mode, meta), 0
            if count != self.count or self.old_table is not None:
                slot = -1  # allocating evicted items (or the index is growing): look again
            return STORED, self._install(key, hd, slot, ntotal)
        opage, ooff = self._loc(old)
        old_cas = _CAS.unpack_from(opage, ooff + OFF_CAS)[0]
        old_cls = opage[ooff + OFF_CLSID]
        if mode == ADD:
            self._update(old, opage, ooff)  # memcached: "promote to head of LRU"
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
                if self.cas_mismatch is not None:
                    self.cas_mismatch(old_cas, cas_in)
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
            return STORED, self._install(key, hd)
        cas = self._replace_in_place(old, opage, ooff, key, flags, exptime, data, mflags)
        if cas:
            return STORED, cas
        hd = self._new_item(key, flags, exptime, data, mflags, ntotal, clsid)
        if hd == NONE:
            return self._alloc_failure(key, flags, data, mode, meta), 0
        return STORED, self._install(key, hd, -1, ntotal)

    def count_set(self, nkey: int, flags: int, nbytes: int) -> tuple[int, int]:
        """memcached counts ``cmd_set`` for every value it reads, whatever happens next. The
        item's size and class (0: too large)."""
        ntotal = item_total(nkey, flags, nbytes)
        clsid = self.slabs.clsid(ntotal)
        self.stats.cls[clsid].cmd_set += 1
        return ntotal, clsid

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
            self._update(hd, page, off)
            return DELTA_OK, digits, hd, True
        new = self._new_item(key, flags, exptime, digits + b"\r\n")
        if new == NONE:
            return NO_MEMORY, b"", NONE, False
        self._install(key, new)
        return DELTA_OK, digits, new, False

    # -- meta commands ---------------------------------------------------------------------
    def fetch(self, key: bytes) -> int:
        """The live item under ``key`` (NONE if none), not bumped (``bump`` does that)."""
        return self._lookup(key)

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
