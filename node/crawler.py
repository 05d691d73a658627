"""Background work over items: the expiry crawler, ``lru_crawler metadump``, and moving slab
pages between classes (memcached's crawler.c and slab_automove.c).

Every walk here is bounded by a budget or produced lazily, so the server can run it between
checkpoints. It is a part of ``Store`` (a mixin) and never awaits.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote_from_bytes

from .items import _CAS, _EXP_TIME, _Q, _VIEW, item_total
from .slabs import (
    COLD,
    F_DATA,
    F_FETCHED,
    F_FREE,
    F_LINKED,
    ITEM_HEADER,
    LRU_SHIFT,
    NONE,
    OFF_CAS,
    OFF_CLSID,
    OFF_EXPTIME,
    OFF_IFLAGS,
    OFF_PREV,
    OFFSET_MASK,
    PAGE_SHIFT,
)


class Crawler:
    """Crawler, metadump and page-move methods of ``Store``."""

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
        tail = cls.tails[COLD]  # memcached's automover compares COLD's tail ages
        return self.clock.now - self.item_time(tail) if tail != NONE else 0

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

    def crawl(self, budget: int = 1000, scheduled: bool = True) -> int:
        """Reclaim expired and flushed items, visiting at most ``budget`` items; returns visits.

        The crawler walks each LRU of each class (HOT, WARM, COLD, TEMP) from the tail and
        remembers where it stopped, so a large cache is covered over many short calls without
        blocking the event loop. ``scheduled`` (the background autocrawl): an LRU's pass
        starts only when memcached's schedule lets it (``_crawl_done``); a ``lru_crawler
        crawl`` walks them all.
        """
        visited = 0
        now = self.clock.now
        classes = self.slabs.classes
        nexts = self._crawl_next
        histo = self._crawl_histo
        start = (self._crawl_class, self._crawl_lru)
        while visited < budget:
            cls = classes[self._crawl_class]
            lru = self._crawl_lru
            slot = self._crawl_class * 4 + lru
            hd = self._crawl_pos
            if hd == NONE and not (scheduled and now <= nexts[slot]):
                hd = cls.tails[lru]  # a new pass
                if scheduled:
                    nexts[slot] = now + 5  # memcached's minimum retry wait
                self._crawl_seen = self._crawl_noexp = 0
                histo[:] = [0] * 60
                walking = True
            else:
                walking = hd != NONE
            counters = self.stats.cls[cls.clsid]
            seen = noexp = 0
            while hd != NONE and visited < budget:
                page, off = self._loc(hd)
                prv = _Q.unpack_from(page, off + OFF_PREV)[0]
                iflags = page[off + OFF_IFLAGS]
                if not iflags & F_LINKED or iflags >> LRU_SHIFT != lru:
                    hd = NONE  # our position was freed or moved under us; on to the next LRU
                    break
                visited += 1
                counters.crawler_items_checked += 1
                exptime, itime = _EXP_TIME.unpack_from(page, off + OFF_EXPTIME)
                if (exptime and exptime <= now) or self._flushed(page, off, itime):
                    counters.crawler_reclaimed += 1
                    if not iflags & F_FETCHED:
                        counters.expired_unfetched += 1
                    self.unlink(hd)
                else:
                    seen += 1
                    if not exptime:
                        noexp += 1
                    elif exptime - now < 3600:
                        histo[(exptime - now) // 60] += 1
                hd = prv
            self._crawl_seen += seen
            self._crawl_noexp += noexp
            if hd != NONE:
                self._crawl_pos = hd
                break
            self._crawl_pos = NONE
            if walking and scheduled:  # a requested crawl leaves the schedule as it is
                self._crawl_done(slot, now)
            self._crawl_lru = (lru + 1) % 4
            if not self._crawl_lru:
                self._crawl_class = self._crawl_class % self.slabs.largest + 1
            if (self._crawl_class, self._crawl_lru) == start:
                break
        return visited

    def _crawl_done(self, slot: int, now: int) -> None:
        """The end of an LRU's pass: when it may be crawled again (memcached's
        ``lru_maintainer_crawler_check``). If 1% of the items it saw with a TTL (plus one)
        expire within x minutes, the wait moves a minute towards x minutes; if none expires
        within the hour, it grows by a minute; at most an hour, then 5 seconds more."""
        histo = self._crawl_histo
        low_watermark = (self._crawl_seen - self._crawl_noexp) // 100 + 1
        wait = self._crawl_wait[slot]
        available = 0
        for x in range(60):
            available += histo[x]
            if available > low_watermark:
                if wait < x * 60:
                    wait += 60
                elif wait >= 60:
                    wait -= 60
                break
        if available == 0:
            wait += 60
        wait = min(wait, 3600)
        self._crawl_wait[slot] = wait
        self._crawl_next[slot] = now + wait + 5
