"""Items inside slab chunks: header fields, values and chains, the LRUs (memcached's
segmented HOT/WARM/COLD/TEMP, its flat LRU, SIEVE): links, bumps, the maintainer's juggle,
allocation with eviction, linking and unlinking (memcached's items.c).

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
    COLD,
    F_ACTIVE,
    F_CHUNKED,
    F_DATA,
    F_FETCHED,
    F_LINKED,
    HDR,
    HOT,
    ITEM_HEADER,
    LRU_BITS,
    LRU_SHIFT,
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
    TEMP,
    WARM,
    SlabClass,
)

ITEM_UPDATE_INTERVAL = 60  # memcached's flat LRU moves a read item to the head this seldom
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
# next, prev, then (past the CAS) exptime, time, nbytes, flags, nkey, iflags, clsid: what an
# LRU move reads of an item, in one unpack from its header's start
_MOVE = struct.Struct("<qq8xIIIIBBB")

# Meta flags of an item (the header byte at offset 43): a client was handed the win token
# (mg N/R/stale), the value is stale (md I, ms I), the key arrived in base64 (b).
M_TOKEN_SENT = 0x01
M_STALE = 0x02
M_KEY_BINARY = 0x04

# An item's flags moving to another LRU keep all but the LRU bits and ACTIVE, then name it
# (``_to_warm``, ``_drain``).
_OFF_LRU = ~(LRU_BITS | F_ACTIVE)
_ON_WARM = WARM << LRU_SHIFT
_ON_COLD = COLD << LRU_SHIFT


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

    # -- LRU: memcached's segmented LRU (items.c, doc/new_lru.txt) -------------------------
    def _lru_cls(self, page: bytearray, off: int) -> SlabClass:
        return self.slabs.classes[page[off + OFF_CLSID]]

    def _lru_link(self, hd: int, page: bytearray, off: int, ntotal: int) -> SlabClass:
        """Link at the head of the LRU the item's flags name (memcached's ``do_item_link_q``);
        ``ntotal``: its size. Returns the item's class."""
        cls = self._lru_cls(page, off)
        lru = page[off + OFF_IFLAGS] >> LRU_SHIFT
        heads = cls.heads
        head = heads[lru]
        _QQ.pack_into(page, off, head, NONE)
        if head != NONE:
            _Q.pack_into(self.pages[head >> PAGE_SHIFT], (head & OFFSET_MASK) + OFF_PREV, hd)
        else:
            cls.tails[lru] = hd
        heads[lru] = hd
        cls.lru_counts[lru] += 1
        cls.lru_bytes[lru] += ntotal
        return cls

    def _lru_unlink(self, hd: int, page: bytearray, off: int, ntotal: int) -> None:
        cls = self._lru_cls(page, off)
        lru = page[off + OFF_IFLAGS] >> LRU_SHIFT
        nxt, prv = _QQ.unpack_from(page, off)
        if hd == cls.hand:
            cls.hand = prv
        if prv != NONE:
            _Q.pack_into(self.pages[prv >> PAGE_SHIFT], prv & OFFSET_MASK, nxt)
        else:
            cls.heads[lru] = nxt
        if nxt != NONE:
            _Q.pack_into(self.pages[nxt >> PAGE_SHIFT], (nxt & OFFSET_MASK) + OFF_PREV, prv)
        else:
            cls.tails[lru] = prv
        cls.lru_counts[lru] -= 1
        cls.lru_bytes[lru] -= ntotal

    def _lru_move(self, hd: int, page: bytearray, off: int, lru: int, clear: int = 0) -> SlabClass:
        """Relink at the head of ``lru`` (the same LRU: its head), clearing the flags
        ``clear``. Returns the item's class."""
        _, _, nbytes, flags, nkey, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
        ntotal = item_total(nkey, flags, nbytes)
        self._lru_unlink(hd, page, off, ntotal)
        page[off + OFF_IFLAGS] = (iflags & ~(LRU_BITS | clear)) | (lru << LRU_SHIFT)
        return self._lru_link(hd, page, off, ntotal)

    def _new_lru(self, page: bytearray, off: int) -> int:
        """The LRU bits of a new item (memcached's ``do_item_alloc``): TEMP for a TTL within
        ``-o temporary_ttl``, else HOT; COLD alone without the segmented LRU. Without a
        temporary TTL they are the same for every item (``new_lru_bits``)."""
        bits = self.new_lru_bits
        if bits >= 0:
            return bits
        if not self.segmented:
            return COLD << LRU_SHIFT
        temporary = self.temporary_ttl
        if temporary is not None:
            exptime = _I.unpack_from(page, off + OFF_EXPTIME)[0]
            if exptime and exptime - self.clock.now <= temporary:
                return TEMP << LRU_SHIFT
        return HOT << LRU_SHIFT

    def _bump(self, hd: int, page: bytearray, off: int, iflags: int = -1) -> None:
        """A fetch (memcached's ``do_item_bump``); ``iflags``: the item's flags when the
        caller has read them. Segmented: the first marks the item FETCHED, the next ACTIVE
        (and gives it the time); an item becoming ACTIVE in COLD moves to WARM at once, where
        memcached queues it for its maintainer thread. ``lru``: FETCHED, and to the head when
        it was last moved a minute ago or more. ``sieve``: the visited bit (ACTIVE)."""
        if iflags < 0:
            iflags = page[off + OFF_IFLAGS]
        if self.segmented:
            if iflags & F_ACTIVE:
                return
            if not iflags & F_FETCHED:
                page[off + OFF_IFLAGS] = iflags | F_FETCHED
            elif iflags & LRU_BITS == COLD << LRU_SHIFT:
                self._to_warm(hd, page, off)
            else:
                page[off + OFF_IFLAGS] = iflags | F_ACTIVE
                _TIME.pack_into(page, off + OFF_TIME, self.clock.now)
        elif self.sieve:
            page[off + OFF_IFLAGS] = iflags | F_FETCHED | F_ACTIVE
            _TIME.pack_into(page, off + OFF_TIME, self.clock.now)
        else:
            page[off + OFF_IFLAGS] = iflags | F_FETCHED
            self._update(hd, page, off)

    def _update(self, hd: int, page: bytearray, off: int) -> None:
        """memcached's ``do_item_update`` (also an ``add`` of a key that exists): segmented,
        an ACTIVE item in COLD moves to WARM, any other gets the time; flat, to the head when
        last moved a minute ago or more (``ITEM_UPDATE_INTERVAL``); SIEVE keeps its order."""
        now = self.clock.now
        if self.segmented:
            iflags = page[off + OFF_IFLAGS]
            if iflags & LRU_BITS == COLD << LRU_SHIFT and iflags & F_ACTIVE:
                self._to_warm(hd, page, off)
            else:
                _TIME.pack_into(page, off + OFF_TIME, now)
        elif self.sieve:
            _TIME.pack_into(page, off + OFF_TIME, now)
        elif self.item_time(hd) < now - ITEM_UPDATE_INTERVAL:
            _TIME.pack_into(page, off + OFF_TIME, now)
            self._lru_move(hd, page, off, COLD)

    def _to_warm(self, hd: int, page: bytearray, off: int) -> None:
        """A hit to COLD moves the item to WARM's head with the time (not ACTIVE: it has had
        its move). ``_lru_unlink`` and ``_lru_link`` written out for the two known LRUs, with
        one read of the header: this runs for about every other hit when the items are read
        alike."""
        nxt, prv, _, _, nbytes, flags, nkey, iflags, clsid = _MOVE.unpack_from(page, off)
        cls = self.slabs.classes[clsid]
        pages = self.pages
        heads = cls.heads
        if prv != NONE:
            _Q.pack_into(pages[prv >> PAGE_SHIFT], prv & OFFSET_MASK, nxt)
        else:
            heads[COLD] = nxt
        if nxt != NONE:
            _Q.pack_into(pages[nxt >> PAGE_SHIFT], (nxt & OFFSET_MASK) + OFF_PREV, prv)
        else:
            cls.tails[COLD] = prv
        head = heads[WARM]
        _QQ.pack_into(page, off, head, NONE)
        if head != NONE:
            _Q.pack_into(pages[head >> PAGE_SHIFT], (head & OFFSET_MASK) + OFF_PREV, hd)
        else:
            cls.tails[WARM] = hd
        heads[WARM] = hd
        page[off + OFF_IFLAGS] = iflags & _OFF_LRU | _ON_WARM
        _TIME.pack_into(page, off + OFF_TIME, self.clock.now)
        counts = cls.lru_counts
        counts[COLD] -= 1
        counts[WARM] += 1
        ntotal = ITEM_HEADER + nkey + 9 + (4 if flags else 0) + nbytes  # item_total
        lru_bytes = cls.lru_bytes
        lru_bytes[COLD] -= ntotal
        warm = lru_bytes[WARM] = lru_bytes[WARM] + ntotal
        self.stats.cls[clsid].moves_to_warm += 1
        if warm > cls.warm_at:
            self.juggle(clsid)

    def juggle(self, clsid: int) -> int:
        """memcached's ``lru_maintainer_juggle`` of one class: TEMP's expired items reclaimed;
        HOT and WARM over their shares of the class's bytes (``hot_lru_pct``,
        ``warm_lru_pct``), or whose tail idles longer than COLD's tail age times
        ``hot_max_factor``/``warm_max_factor``, give their tail to COLD, an ACTIVE tail going
        to WARM's head instead; COLD's ACTIVE tail goes to WARM. memcached takes one item of
        each LRU per round, up to 500 rounds; here each LRU is drained in turn, up to 500
        items each: the same moves in another order. Returns the items moved or reclaimed."""
        if not self.segmented:
            return 0
        cls = self.slabs.classes[clsid]
        did = 0
        if self.temporary_ttl is not None:
            for _ in range(500):
                if self._pull_tail(clsid, TEMP, False) <= 0:
                    break
                did += 1
        tails = cls.tails
        cold_age = self.clock.now - self.item_time(tails[COLD]) if tails[COLD] != NONE else 0
        lru_bytes = cls.lru_bytes
        total = lru_bytes[COLD] + lru_bytes[HOT] + lru_bytes[WARM]
        hot = total * self.hot_lru_pct // 100
        warm = total * self.warm_lru_pct // 100
        did += self._drain(cls, HOT, hot or warm, int(cold_age * self.hot_max_factor))
        did += self._drain(cls, WARM, warm, int(cold_age * self.warm_max_factor))
        did += self._drain(cls, COLD, 0, 0)
        # The next juggle: when HOT (or WARM, by hits to COLD) overshoots its share by a
        # 64th of the class, at most 32 items.
        total = lru_bytes[COLD] + lru_bytes[HOT] + lru_bytes[WARM]
        margin = min(total // 64, 32 * cls.size)
        cls.juggle_at = total * self.hot_lru_pct // 100 + margin
        cls.warm_at = total * self.warm_lru_pct // 100 + margin
        self.stats.lru_maintainer_juggles += 1
        return did

    def _drain(self, cls, lru: int, limit: int, max_age: int, most: int = 500) -> int:
        """``lru_pull_tail`` of one LRU repeated while it does something, at most ``most``
        times: an expired or flushed tail is reclaimed; an ACTIVE tail goes to WARM's head
        (from WARM: ``moves_within_lru``); from HOT or WARM, a tail over ``limit`` bytes or
        idle longer than ``max_age`` goes to COLD's head.

        The items are walked from the tail and strung, as they are met, into one chain for
        each LRU they go to; the walked stretch is then cut off the tail and each chain put
        at its LRU's head: the lists moving them one at a time leaves. An expired item ends
        the stretch (and is reclaimed once it is the tail), and so does the LRU's head, so
        that items moved within WARM are met again as one-at-a-time moves would meet them."""
        counters = self.stats.cls[cls.clsid]
        pages = self.pages
        heads = cls.heads
        tails = cls.tails
        lru_bytes = cls.lru_bytes
        now = self.clock.now
        flush = self.oldest_live
        keep, on_warm, on_cold = _OFF_LRU, _ON_WARM, _ON_COLD  # locals: the walk is hot
        moved = 0
        while True:
            # The chains: their oldest and newest item (its page and offset), length and
            # bytes, to WARM and to COLD.
            w_old = w_new = c_old = c_new = NONE
            w_page = c_page = b""
            w_off = c_off = w_n = w_bytes = c_n = c_bytes = 0
            leaving = 0  # bytes of the stretch that leave ``lru``
            expired = False
            hd = tails[lru]
            while moved < most and hd != NONE:
                page = pages[hd >> PAGE_SHIFT]
                off = hd & OFFSET_MASK
                _, prv, exptime, itime, nbytes, flags, nkey, iflags, _ = _MOVE.unpack_from(
                    page, off
                )
                if (exptime and exptime < now) or (flush and self._flushed(page, off, itime)):
                    expired = True
                    break
                ntotal = ITEM_HEADER + nkey + 9 + (4 if flags else 0) + nbytes  # item_total
                if iflags & F_ACTIVE:  # rescue ACTIVE items aggressively
                    page[off + OFF_IFLAGS] = iflags & keep | on_warm
                    if w_n:
                        _Q.pack_into(page, off, w_new)
                        _Q.pack_into(w_page, w_off + OFF_PREV, hd)
                    else:
                        w_old = hd
                    w_new = hd
                    w_page = page
                    w_off = off
                    w_n += 1
                    w_bytes += ntotal
                    if lru != WARM:
                        leaving += ntotal
                elif lru == COLD or (lru_bytes[lru] - leaving <= limit and now - itime <= max_age):
                    break
                else:
                    page[off + OFF_IFLAGS] = iflags & keep | on_cold
                    if c_n:
                        _Q.pack_into(page, off, c_new)
                        _Q.pack_into(c_page, c_off + OFF_PREV, hd)
                    else:
                        c_old = hd
                    c_new = hd
                    c_page = page
                    c_off = off
                    c_n += 1
                    c_bytes += ntotal
                    leaving += ntotal
                moved += 1
                hd = prv
            if w_n or c_n:  # cut the stretch off: ``hd`` is the new tail
                tails[lru] = hd
                if hd != NONE:
                    _Q.pack_into(pages[hd >> PAGE_SHIFT], hd & OFFSET_MASK, NONE)
                else:
                    heads[lru] = NONE
                if w_n:
                    if lru == WARM:
                        counters.moves_within_lru += w_n
                    else:
                        counters.moves_to_warm += w_n
                    self._chain_to_head(cls, lru, WARM, w_old, w_new, w_n, w_bytes)
                if c_n:
                    counters.moves_to_cold += c_n
                    self._chain_to_head(cls, lru, COLD, c_old, c_new, c_n, c_bytes)
            if expired:
                page = pages[hd >> PAGE_SHIFT]
                off = hd & OFFSET_MASK
                counters.reclaimed += 1
                if not page[off + OFF_IFLAGS] & F_FETCHED:
                    counters.expired_unfetched += 1
                self.unlink(hd)
                moved += 1
            elif hd != NONE or moved >= most or not w_n:
                return moved

    def _chain_to_head(
        self, cls, lru: int, to: int, oldest: int, newest: int, n: int, nbytes: int
    ) -> None:
        """Put a chain cut off ``lru`` (``n`` items, ``nbytes`` in all, linked newest to
        oldest and already marked as on ``to``) at the head of ``to``."""
        pages = self.pages
        heads = cls.heads
        head = heads[to]
        _Q.pack_into(pages[oldest >> PAGE_SHIFT], oldest & OFFSET_MASK, head)
        if head != NONE:
            _Q.pack_into(pages[head >> PAGE_SHIFT], (head & OFFSET_MASK) + OFF_PREV, oldest)
        else:
            cls.tails[to] = oldest
        _Q.pack_into(pages[newest >> PAGE_SHIFT], (newest & OFFSET_MASK) + OFF_PREV, NONE)
        heads[to] = newest
        counts = cls.lru_counts
        counts[lru] -= n
        counts[to] += n
        lru_bytes = cls.lru_bytes
        lru_bytes[lru] -= nbytes
        lru_bytes[to] += nbytes

    def juggle_all(self) -> None:
        """Every class with items, as the maintainer thread's rounds do when nothing else
        wakes it (the ages rule moves items that wait, writes or not)."""
        for cls in self.slabs.classes[1:]:
            if cls.count:
                self.juggle(cls.clsid)

    # -- allocation ------------------------------------------------------------------------
    def _alloc(self, clsid: int) -> int:
        """memcached's ``do_item_alloc_pull``: a chunk, else evict COLD's tail — and when COLD
        gives nothing, push HOT's tail down (segmented) — up to ten tries. Where memcached
        would answer out of memory because the class has nothing to evict, a page is taken
        from another class (``_steal_page``)."""
        flat = not self.segmented and not self.sieve
        if flat:
            self._pull_tail(clsid, COLD, False)  # reclaim first
        hd = self.slabs.alloc(clsid)
        if hd != NONE:
            return hd
        for attempt in range(1, 10):
            if self.sieve:
                freed = self._sieve_evict(clsid)
            else:
                freed = self._pull_tail(clsid, COLD, True) > 0
                if not freed and self.segmented:  # HOT's tail down (or an ACTIVE one to WARM)
                    freed = self._drain(self.slabs.classes[clsid], HOT, 0, 0, 1) > 0
            if not freed and not self._steal_page(clsid):
                return NONE
            if flat:
                self._pull_tail(clsid, COLD, False)
            hd = self.slabs.alloc(clsid)
            if hd != NONE:
                self.stats.cls[clsid].direct_reclaims += attempt
                return hd
        return NONE

    def _pull_tail(self, clsid: int, lru: int, evict: bool) -> int:
        """memcached's ``lru_pull_tail`` on COLD or TEMP of ``clsid`` (HOT's and WARM's are
        ``_drain``'s): from the tail, reclaim expired or flushed items (five looks at most),
        then evict the first live one when ``evict`` (unless -M). Returns the items reclaimed
        or evicted."""
        cls = self.slabs.classes[clsid]
        counters = self.stats.cls[clsid]
        now = self.clock.now
        removed = 0
        hd = cls.tails[lru]
        for _ in range(5):
            if hd == NONE:
                break
            page, off = self._loc(hd)
            prv = _Q.unpack_from(page, off + OFF_PREV)[0]
            exptime, itime = _EXP_TIME.unpack_from(page, off + OFF_EXPTIME)
            iflags = page[off + OFF_IFLAGS]
            if (exptime and exptime < now) or self._flushed(page, off, itime):
                counters.reclaimed += 1
                if not iflags & F_FETCHED:
                    counters.expired_unfetched += 1
                self.unlink(hd)
                removed += 1
                hd = prv
                continue
            if evict and self.evictions:
                self._evict(hd, page, off, counters, exptime, itime, iflags)
                removed += 1
            break
        return removed

    def _evict(self, hd, page, off, counters, exptime: int, itime: int, iflags: int) -> None:
        counters.evicted += 1
        counters.evicted_time = self.clock.now - itime
        if exptime:
            counters.evicted_nonzero += 1
        if not iflags & F_FETCHED:
            counters.evicted_unfetched += 1
        if iflags & F_ACTIVE:
            counters.evicted_active += 1
        self.unlink(hd)

    def _sieve_evict(self, clsid: int) -> bool:
        """SIEVE (Zhang et al., NSDI'24, ``-o lru_policy=sieve``) on the class's one list, a
        FIFO: a hand moves from the tail towards the head clearing the visited bit
        (``F_ACTIVE``, set by a hit) of the items it passes, evicts the first one not read
        since it last passed and stays there for the next eviction, wrapping to the tail at
        the head; new items never read again go first, unmoved. Expired items met on the way
        are reclaimed instead."""
        cls = self.slabs.classes[clsid]
        counters = self.stats.cls[clsid]
        now = self.clock.now
        hd = cls.hand if cls.hand != NONE else cls.tails[COLD]
        spared = SIEVE_SCAN_LIMIT
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
                counters.moves_within_lru += 1
                hd = prv if prv != NONE else cls.tails[COLD]
                continue
            cls.hand = hd  # unlinking it moves the hand on to the item before it
            self._evict(hd, page, off, counters, exptime, itime, iflags)
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
        ntotal = item_total(nkey, flags, nbytes)
        self._lru_unlink(hd, page, off, ntotal)
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
        page[off + OFF_IFLAGS] |= F_LINKED | self._new_lru(page, off)
        if old != NONE:
            self.table[slot] = hd  # same key, same slot
            self._forget(old, *self._loc(old))
        else:
            self._table_insert(slot, hd)
        if not ntotal:
            _, _, nbytes, flags, nkey, _ = _VIEW.unpack_from(page, off + OFF_EXPTIME)
            ntotal = item_total(nkey, flags, nbytes)
        cls = self._lru_link(hd, page, off, ntotal)
        self.curr_items += 1
        self.bytes += ntotal
        self.stats.total_items += 1
        if cls.lru_bytes[HOT] > cls.juggle_at and self.segmented:
            self.juggle(cls.clsid)
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
        size = self.item_size(hd)
        self.curr_items += 1
        self.bytes += size
        self.stats.total_items += 1
        self._lru_cls(page, off).lru_bytes[page[off + OFF_IFLAGS] >> LRU_SHIFT] += size

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
        goes to the head of HOT (or TEMP), not fetched, as a new item does.
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
        old_total = item_total(nkey, oflags, onbytes)
        self._lru_unlink(old, page, off, old_total)
        self.bytes += ntotal - old_total
        self.cas_id += 1
        cas = self.cas_id
        _REWRITE.pack_into(page, off + OFF_CAS, cas, exptime, self.clock.now, nbytes, flags)
        page[off + OFF_IFLAGS] = F_LINKED | self._new_lru(page, off)
        page[off + OFF_MFLAGS] = mflags
        start = off + ITEM_HEADER + nkey
        page[start : start + nbytes] = data
        self._lru_link(old, page, off, ntotal)
        self.stats.total_items += 1
        if cls.lru_bytes[HOT] > cls.juggle_at and self.segmented:
            self.juggle(clsid)
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
    def items(self, clsid: int, lru: int = COLD) -> Iterator[int]:
        """Handles of the items on one LRU of one class, most recently used first."""
        hd = self.slabs.classes[clsid].heads[lru]
        while hd != NONE:
            page, off = self._loc(hd)
            nxt = _Q.unpack_from(page, off)[0]
            yield hd
            hd = nxt
