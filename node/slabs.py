"""Slab memory: memcached's class table, 1 MB pages bounded by ``-m``, and chunk allocation.

This module owns raw memory: which chunk sizes exist, which page belongs to which class, the
free list of every class and the page accounting that decides when the store must evict. It
knows the layout of the 48-byte chunk header only as far as free chunks need it (free-list
links and the FREE flag); what items mean is ``store``'s business. A chunk is addressed by an
integer handle ``page_index << PAGE_SHIFT | offset``. Pages are ``bytearray``s, or with
``-e`` mappings of the memory file (``MemoryFile``), every class given one at start as
memcached preallocates them; what a warm restart writes and reads besides is ``restart``'s.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator

from .config import Config

ITEM_HEADER = 48  # sizeof(item) on 64-bit memcached; also our own header size.
CHUNK_HEADER = 48  # sizeof(item_chunk): the header of each chunk of a chained item.
CHUNK_ALIGN = 8
MAX_NUMBER_OF_SLAB_CLASSES = 64
PAGE_SHIFT = 20
OFFSET_MASK = (1 << PAGE_SHIFT) - 1
NONE = -1

# Chunk header layout shared with store.py.  next/prev are LRU links for items, free-list
# links for free chunks, and (next chunk, head item) for the chunks of a chained item.
HDR = struct.Struct("<qqQIIIIBBBBI")
# Offsets of the header fields, in HDR's order.
OFF_NEXT = 0  # LRU next / free-list next / next chunk of a chain
OFF_PREV = 8  # LRU prev / free-list prev / head item of a chain's chunk
OFF_CAS = 16
OFF_EXPTIME = 24
OFF_TIME = 28  # last access
OFF_NBYTES = 32  # value length with CRLF; for a chain's chunk, the bytes used in it
OFF_FLAGS = 36  # client flags
OFF_NKEY = 40
OFF_IFLAGS = 41  # F_* below
OFF_CLSID = 42
OFF_MFLAGS = 43  # the store's meta flags (stale, win token sent, binary key)
OFF_HASH = 44
LINKS = struct.Struct("<qq")

F_LINKED = 0x01
F_FETCHED = 0x02
F_ACTIVE = 0x04
F_CHUNKED = 0x08  # an item header whose value lives in a chain of chunks
F_FREE = 0x10
F_DATA = 0x20  # a chunk of a chained item's value
# The two high bits of the item flags say which of its class's LRUs an item is on (memcached
# keeps them in the high bits of ``slabs_clsid``).
LRU_SHIFT = 6
LRU_BITS = 0xC0
HOT, WARM, COLD, TEMP = 0, 1, 2, 3


def class_sizes(
    chunk_size: int = 48, factor: float = 1.25, slab_chunk_max: int = 524288
) -> list[int]:
    """Chunk sizes of classes 1..N exactly as memcached's ``slabs_init`` computes them."""
    size = ITEM_HEADER + chunk_size
    sizes: list[int] = []
    while len(sizes) < MAX_NUMBER_OF_SLAB_CLASSES - 2:
        if size >= slab_chunk_max / factor:
            break
        if size % CHUNK_ALIGN:
            size += CHUNK_ALIGN - size % CHUNK_ALIGN
        sizes.append(size)
        size = int(size * factor)  # C: unsigned int *= double truncates
    sizes.append(slab_chunk_max)
    return sizes


def class_table(cfg: Config) -> str:
    """The ``-vv`` start-up lines, byte for byte as memcached prints them to stderr."""
    lines = []
    for clsid, size in enumerate(
        class_sizes(cfg.chunk_size, cfg.growth_factor, cfg.slab_chunk_max), start=1
    ):
        lines.append(
            "slab class %3d: chunk size %9u perslab %7u\n"
            % (clsid, size, cfg.slab_page_size // size)
        )
    return "".join(lines)


class MemoryFileError(Exception):
    """``-e``'s file cannot be used at all (memcached aborts); the message is for the user."""


class MemoryFile:
    """``-e``'s file: ``limit`` bytes, one shared mapping per slab page."""

    def __init__(self, path: str, limit: int, page_size: int) -> None:
        self.path = path
        self.page_size = page_size
        self.npages = limit // page_size
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o700)
        except OSError as exc:
            raise MemoryFileError(f"failed to open file for mmap: {exc.strerror}") from None
        try:
            os.ftruncate(self.fd, limit)
        except OSError as exc:
            os.close(self.fd)
            raise MemoryFileError(f"ftruncate failed: {exc.strerror}") from None
        self.maps: list[mmap.mmap] = []

    def page(self, index: int) -> mmap.mmap:
        """The mapping of page ``index`` (pages are handed out in order: 0, 1, …)."""
        if index < len(self.maps):
            return self.maps[index]
        assert index == len(self.maps) < self.npages
        mapping = mmap.mmap(self.fd, self.page_size, offset=index * self.page_size)
        self.maps.append(mapping)
        return mapping

    def clear(self) -> None:
        """Forget what the file held (a cold start): zeroes, as a new file."""
        os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, self.npages * self.page_size)

    def crc(self) -> int:
        crc = 0
        for mapping in self.maps:
            crc = zlib.crc32(mapping, crc)
        return crc

    def close(self) -> None:
        for mapping in self.maps:
            mapping.flush()
            mapping.close()
        self.maps = []
        os.close(self.fd)


class PreallocError(Exception):
    """Not a page for every class (memcached's message; it exits with status 1)."""


class SlabClass:
    """One chunk size: its pages, its free list and its LRUs' ends (the LRUs are store's)."""

    __slots__ = (
        "clsid",
        "end_handle",
        "end_left",
        "free_count",
        "free_head",
        "hand",
        "heads",
        "juggle_at",
        "lru_bytes",
        "lru_counts",
        "pages",
        "perslab",
        "size",
        "tails",
        "used",
        "warm_at",
    )

    def __init__(self, clsid: int, size: int, page_size: int) -> None:
        self.clsid = clsid
        self.size = size
        self.perslab = page_size // size if size else 0
        self.pages: list[int] = []
        self.free_head = NONE
        self.free_count = 0
        # Chunks of the newest page not yet handed out (carved lazily, no per-chunk work).
        self.end_handle = NONE
        self.end_left = 0
        self.used = 0
        # HOT, WARM, COLD and TEMP: each LRU's ends, items and their bytes (memcached's
        # heads, tails, sizes and sizes_bytes); -o lru_policy=lru|sieve use COLD alone.
        self.heads = [NONE] * 4
        self.tails = [NONE] * 4
        self.lru_counts = [0] * 4
        self.lru_bytes = [0] * 4
        self.hand = NONE  # -o lru_policy=sieve: where the next eviction scan starts
        self.juggle_at = 0  # HOT's bytes at which the store juggles this class again
        self.warm_at = 0  # the same for WARM

    @property
    def count(self) -> int:
        """Items linked in this class."""
        return sum(self.lru_counts)

    @property
    def requested(self) -> int:
        """Sum of the sizes of this class's items (``mem_requested``)."""
        return sum(self.lru_bytes)


class Slabs:
    """All pages and classes of one node."""

    def __init__(self, cfg: Config, memory: MemoryFile | None = None) -> None:
        self.memory = memory  # -e: pages are mappings of the memory file
        self.page_size = cfg.slab_page_size
        self.mem_limit = cfg.memory_limit
        self.item_size_max = cfg.item_size_max
        self.chunk_max = cfg.slab_chunk_max
        sizes = class_sizes(cfg.chunk_size, cfg.growth_factor, cfg.slab_chunk_max)
        self.classes: list[SlabClass] = [SlabClass(0, 0, 1)] + [
            SlabClass(i, s, cfg.slab_page_size) for i, s in enumerate(sizes, start=1)
        ]
        self.largest = len(sizes)
        self.sizes = [0, *sizes]
        self.pages: list = []  # bytearray, or mmap.mmap with -e
        self.page_class: list[int] = []
        self.free_pages: list[int] = []  # pages taken from a class and not yet given to another
        self.mem_malloced = 0
        self.limit_reached = False
        # Size → class lookup for the common small sizes (one list index instead of a scan).
        self._clsid_cache = [self._clsid_scan(n) for n in range(min(self.chunk_max, 65536) + 1)]

    # -- sizes -----------------------------------------------------------------------------
    def _clsid_scan(self, size: int) -> int:
        if size == 0 or size > self.item_size_max:
            return 0
        for clsid in range(1, self.largest + 1):
            if size <= self.sizes[clsid]:
                return clsid
        return self.largest

    def clsid(self, size: int) -> int:
        """Smallest class whose chunks hold ``size`` bytes; 0 when larger than ``-I``."""
        cache = self._clsid_cache
        if size < len(cache):
            return cache[size]
        return self._clsid_scan(size)

    # -- pages -----------------------------------------------------------------------------
    def new_page(self, cls: SlabClass) -> bool:
        """Give ``cls`` a page from the pool or new memory; False at the memory limit."""
        if self.free_pages:
            index = self.free_pages.pop()
        else:
            # As memcached: a class that has no page yet always gets its first one (but
            # never beyond the memory file).
            over = self.mem_malloced + self.page_size > self.mem_limit
            if (over and cls.pages) or (self.memory and len(self.pages) >= self.memory.npages):
                self.limit_reached = True
                return False
            index = self.add_page_memory()
        self._give_page(index, cls)
        return True

    def add_page_memory(self) -> int:
        """One more page of memory, in no class yet; its index."""
        index = len(self.pages)
        self.pages.append(self.memory.page(index) if self.memory else bytearray(self.page_size))
        self.page_class.append(0)
        self.mem_malloced += self.page_size
        return index

    def preallocate(self) -> None:
        """``-e`` on a cold start, as memcached's ``slabs_preallocate`` and
        ``slabs_prefill_global``: a page for every class, the rest of the memory into the
        global pool. ``PreallocError`` when the memory has no page for every class."""
        for cls in self.classes[1:]:
            if self.memory and len(self.pages) >= self.memory.npages:
                raise PreallocError(
                    "Error while preallocating slab memory!\n"
                    "If using -L or other prealloc options, max memory must be "
                    f"at least {self.largest} megabytes."
                )
            self._give_page(self.add_page_memory(), cls)
        while self.mem_malloced + self.page_size <= self.mem_limit:
            self.free_pages.append(self.add_page_memory())
        self.limit_reached = True

    def _give_page(self, index: int, cls: SlabClass) -> None:
        self.page_class[index] = cls.clsid
        cls.pages.append(index)
        # Whatever was left of the previous carve page goes onto the free list first.
        while cls.end_left:
            self._carve_one(cls)
        cls.end_handle = index << PAGE_SHIFT
        cls.end_left = cls.perslab

    def _carve_one(self, cls: SlabClass) -> None:
        handle = cls.end_handle
        cls.end_handle += cls.size
        cls.end_left -= 1
        self._push_free(cls, handle)

    # -- chunks ----------------------------------------------------------------------------
    def alloc(self, clsid: int, new_page: bool = True) -> int:
        """A free chunk of class ``clsid``, or ``NONE`` when the class must evict first."""
        cls = self.classes[clsid]
        if cls.free_head == NONE and not cls.end_left and (not new_page or not self.new_page(cls)):
            return NONE
        if cls.free_head != NONE:
            handle = cls.free_head
            page = self.pages[handle >> PAGE_SHIFT]
            nxt = LINKS.unpack_from(page, handle & OFFSET_MASK)[0]
            cls.free_head = nxt
            if nxt != NONE:
                struct.pack_into("<q", self.pages[nxt >> PAGE_SHIFT], (nxt & OFFSET_MASK) + 8, NONE)
            cls.free_count -= 1
        else:
            handle = cls.end_handle
            cls.end_handle += cls.size
            cls.end_left -= 1
        cls.used += 1
        return handle

    def free(self, handle: int) -> None:
        cls = self.classes[self.page_class[handle >> PAGE_SHIFT]]
        cls.used -= 1
        self._push_free(cls, handle)

    def _push_free(self, cls: SlabClass, handle: int) -> None:
        page = self.pages[handle >> PAGE_SHIFT]
        off = handle & OFFSET_MASK
        head = cls.free_head
        LINKS.pack_into(page, off, head, NONE)
        page[off + OFF_IFLAGS] = F_FREE
        if head != NONE:
            struct.pack_into("<q", self.pages[head >> PAGE_SHIFT], (head & OFFSET_MASK) + 8, handle)
        cls.free_head = handle
        cls.free_count += 1

    def _unlink_free(self, cls: SlabClass, handle: int) -> None:
        page = self.pages[handle >> PAGE_SHIFT]
        nxt, prv = LINKS.unpack_from(page, handle & OFFSET_MASK)
        if prv != NONE:
            struct.pack_into("<q", self.pages[prv >> PAGE_SHIFT], prv & OFFSET_MASK, nxt)
        else:
            cls.free_head = nxt
        if nxt != NONE:
            struct.pack_into("<q", self.pages[nxt >> PAGE_SHIFT], (nxt & OFFSET_MASK) + 8, prv)
        cls.free_count -= 1

    def chunks_of_page(self, index: int) -> Iterator[int]:
        """Handles of the handed-out or free chunks of one page (not its uncarved tail)."""
        cls = self.classes[self.page_class[index]]
        base = index << PAGE_SHIFT
        count = cls.perslab
        if cls.end_left and cls.end_handle >> PAGE_SHIFT == index:
            count -= cls.end_left
        for i in range(count):
            yield base + i * cls.size

    def release_page(self, index: int) -> None:
        """Take a page whose chunks are all free away from its class, for another class."""
        cls = self.classes[self.page_class[index]]
        for handle in self.chunks_of_page(index):
            self._unlink_free(cls, handle)
        if cls.end_left and cls.end_handle >> PAGE_SHIFT == index:
            cls.end_left = 0
        cls.pages.remove(index)
        self.page_class[index] = 0
        self.free_pages.append(index)

    def total_chunks(self, cls: SlabClass) -> int:
        return len(cls.pages) * cls.perslab
