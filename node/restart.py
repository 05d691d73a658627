"""Warm restarts, as memcached's ``-e <file>`` (restart.c and the "main" metadata of
memcached.c): item memory lives in a file mapped page by page; a graceful stop (SIGUSR1,
``shutdown graceful``) writes ``<file>.meta``; a start with the same settings finds every item
again — value, flags, CAS, remaining TTL — the clock and the CAS counter going on from where
they stopped.

This module owns the metadata file (memcached's ``T``/``K`` lines and keys, checked with
memcached's rules and messages, followed by a ``ringcache`` tag with what our own layout
needs) and the rebuild of what lives outside item memory: the hash index, whose hashes are the
process's own, and the counts. The mapped file itself is ``slabs.MemoryFile``. Items, chunks
and links are page-relative handles, so item memory needs no pointer fix-up (memcached's
``restart_fixup``).

Beyond memcached: the memory file's CRC-32 is kept in the metadata, so a damaged file starts
empty instead of crashing, and a metadata file that is not metadata starts empty where
memcached aborts. memcached's file and ours are refused by each other (``mmap_oldbase`` names
no address in ours).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .items import _Q, _VIEW
from .slabs import (
    F_DATA,
    F_LINKED,
    ITEM_HEADER,
    LRU_SHIFT,
    NONE,
    OFF_EXPTIME,
    OFFSET_MASK,
    PAGE_SHIFT,
    MemoryFile,
    Slabs,
)

if TYPE_CHECKING:
    from .config import Config
    from .store import Store

META_SUFFIX = ".meta"
REQUIRED_META = 17  # memcached's RESTART_REQUIRED_META
LAYOUT = "2"  # of the ringcache tag and of the item memory it describes
_INCOMPATIBLE = "[restart] restart incompatible due to setting for [{key}] [old value: {value}]"
NOT_AN_ADDRESS = "ringcache"  # our mmap_oldbase: memcached refuses our file, we refuse its
_CLASS_FIELDS = ("free_head", "free_count", "end_handle", "end_left", "used", "hand")
_CLASS_LRUS = ("heads", "tails", "lru_counts")  # four each: HOT, WARM, COLD, TEMP


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _main_settings(cfg: Config) -> list[tuple[str, str]]:
    """The settings memcached remembers, in its order; a restart needs all of them equal."""
    return [
        ("slab_config", cfg.slab_config),
        ("maxbytes", str(cfg.memory_limit)),
        ("chunk_size", str(cfg.chunk_size)),
        ("item_size_max", str(cfg.item_size_max)),
        ("slab_chunk_size_max", str(cfg.slab_chunk_max)),
        ("slab_page_size", str(cfg.slab_page_size)),
        ("use_cas", "true"),
        ("slab_reassign", "true"),
    ]


def save(store: Store, cfg: Config, memory: MemoryFile) -> None:
    """The graceful stop: item memory to the file, then ``<file>.meta`` (memcached's
    ``restart_mmap_close``). Runs once no session can change the store any more."""
    slabs = store.slabs
    crc = memory.crc()
    lines = ["Tmain"]
    lines += [f"K{key} {value}" for key, value in _main_settings(cfg)]
    clock = store.clock
    lines += [
        f"Kcurrent_time {clock.now}",
        f"Kprocess_started {clock.process_started}",
        f"Kstop_time {clock.wall_seconds()}",
        # memcached saves get_cas_id(), which takes the next value: the next item gets one more.
        f"Kcurrent_cas {store.cas_id + 1}",
        f"Koldest_cas {store.oldest_cas}",
        "Klogger_gid 0",
        f"Khashpower {store.hash_power}",
        f"Koldest_live {store.oldest_live}",
        f"Kmmap_oldbase {NOT_AN_ADDRESS}",
        "Tringcache",
        f"Klayout {LAYOUT}",
        f"Klru_policy {cfg.lru_policy}",
        f"Kpages {','.join(map(str, slabs.page_class))}",
        f"Kpool {','.join(map(str, slabs.free_pages))}",
    ]
    for cls in slabs.classes[1:]:
        fields = [str(getattr(cls, name)) for name in _CLASS_FIELDS]
        fields += [str(value) for name in _CLASS_LRUS for value in getattr(cls, name)]
        lines.append(f"Kclass {cls.clsid}:{':'.join(fields)}:{','.join(map(str, cls.pages))}")
    lines.append(f"Kitems {store.curr_items}")
    lines.append(f"Kcrc32 {crc:08x}")
    memory.close()
    meta = memory.path + META_SUFFIX
    old = os.umask(0o177)  # memcached: read and write for the owner only
    try:
        with open(meta, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    except OSError as exc:
        _say(f"failed to write metadata file: {exc.strerror}")
    finally:
        os.umask(old)


class _Meta:
    """What ``<file>.meta`` said: memcached's keys and our tag's."""

    def __init__(self) -> None:
        self.main: dict[str, str] = {}
        self.ours: dict[str, str] = {}
        self.classes: list[str] = []


def _read(path: str, cfg: Config, now: int, say: Callable[[str], None]) -> _Meta | None:
    """``restart_check`` and ``_mc_meta_load_cb``: the metadata if it allows a restart, with
    memcached's messages when it does not. The metadata file is removed either way."""
    meta_path = path + META_SUFFIX
    try:
        with open(meta_path, "rb") as fh:
            raw = fh.read()
    except OSError:
        say("[restart] no metadata save file, starting with a clean cache")
        return None
    try:
        os.unlink(meta_path)
    except OSError:
        pass
    meta = _parse(raw, cfg, now, say)
    if meta is None:
        say("[restart] failed to validate metadata, starting with a clean cache")
    return meta


def _parse(raw: bytes, cfg: Config, now: int, say: Callable[[str], None]) -> _Meta | None:
    text = raw.decode("latin-1")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].startswith("T"):
        say("[restart] corrupt metadata file")
        return None
    meta = _Meta()
    tag = None
    seen = 0
    expected = dict(_main_settings(cfg))
    for line in lines:
        if line.startswith("T"):
            tag = line[1:]
            if tag not in ("main", "ringcache"):
                say(f"[restart] internal handler for metadata tag not found: {tag}:")
                return None
            continue
        if not line.startswith("K"):
            say(f"[restart] invalid metadata line:\n\n{line}\n")
            return None
        key, _, value = line[1:].partition(" ")
        if tag == "ringcache":
            if key == "lru_policy" and value != cfg.lru_policy:
                # The items' LRU marks are the old policy's.
                say(_INCOMPATIBLE.format(key=key, value=value))
                return None
            if key == "class":
                meta.classes.append(value)
            else:
                meta.ours[key] = value
            continue
        if key not in _MAIN_KEYS:
            say(f"[restart] unknown/unhandled key: {key}")
            continue
        seen += 1
        if not _main_value_ok(key, value, expected, now):
            say(_INCOMPATIBLE.format(key=key, value=value))
            break
        meta.main[key] = value
    if seen < REQUIRED_META:
        say("[restart] missing some metadata lines")
        return None
    if len(meta.main) < REQUIRED_META:
        return None
    return meta


_MAIN_KEYS = (
    "mmap_oldbase",
    "maxbytes",
    "chunk_size",
    "item_size_max",
    "slab_chunk_size_max",
    "slab_page_size",
    "slab_config",
    "use_cas",
    "slab_reassign",
    "current_cas",
    "oldest_cas",
    "oldest_live",
    "logger_gid",
    "current_time",
    "stop_time",
    "process_started",
    "hashpower",
)


def _main_value_ok(key: str, value: str, expected: dict[str, str], now: int) -> bool:
    if key in expected:
        return value == expected[key]
    if key == "mmap_oldbase":
        if value[:2].lower() == "0x":
            # A hexadecimal address: memcached's own file, whose memory is laid out otherwise.
            return False
        return value == NOT_AN_ADDRESS
    if not value.isdigit():
        return False
    if key == "stop_time":
        # memcached: the clock must have moved forward since the stop.
        return now - int(value) > 0
    return True


def restore(
    store: Store, cfg: Config, memory: MemoryFile, say: Callable[[str], None] = _say
) -> bool:
    """Start warm from ``memory`` if its metadata allows it; False (and ``store`` untouched
    but for its slabs' memory) when the node must start with a clean cache."""
    meta = _read(memory.path, cfg, store.clock.wall_seconds(), say)
    if meta is None:
        return False
    try:
        _apply(store, meta, memory)
    except (ValueError, IndexError, AssertionError) as exc:
        say(f"[restart] the memory file does not match its metadata ({exc})")
        say("[restart] failed to validate metadata, starting with a clean cache")
        return False
    return True


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


def _apply(store: Store, meta: _Meta, memory: MemoryFile) -> None:
    ours = meta.ours
    if ours.get("layout") != LAYOUT:
        raise ValueError(f"layout {ours.get('layout')!r}")
    page_class = _ints(ours["pages"])
    slabs: Slabs = store.slabs
    if len(page_class) > memory.npages:
        raise ValueError(f"{len(page_class)} pages in a file of {memory.npages}")
    while len(slabs.pages) < len(page_class):
        slabs.add_page_memory()
    if memory.crc() != int(ours["crc32"], 16):
        raise ValueError("CRC-32 differs")
    slabs.page_class[:] = page_class
    slabs.limit_reached = True  # all of it was handed out at the first start (prefilled)
    slabs.free_pages[:] = _ints(ours["pool"])
    if len(meta.classes) != slabs.largest:
        raise ValueError(f"{len(meta.classes)} classes, not {slabs.largest}")
    for record in meta.classes:
        clsid_text, *fields, pages_text = record.split(":")
        cls = slabs.classes[int(clsid_text)]
        scalars = len(_CLASS_FIELDS)
        for name, value in zip(_CLASS_FIELDS, fields[:scalars], strict=True):
            setattr(cls, name, int(value))
        lrus = [int(v) for v in fields[scalars:]]
        if len(lrus) != 4 * len(_CLASS_LRUS):
            raise ValueError(f"the LRUs of class {cls.clsid}")
        for i, name in enumerate(_CLASS_LRUS):
            setattr(cls, name, lrus[4 * i : 4 * i + 4])
        cls.pages = _ints(pages_text)
        if any(page_class[i] != cls.clsid for i in cls.pages):
            raise ValueError(f"the pages of class {cls.clsid}")
    main = meta.main
    store.clock.process_started = int(main["process_started"])
    store.clock.tick()
    store.cas_id = int(main["current_cas"])
    store.oldest_cas = int(main["oldest_cas"])
    store.oldest_live = int(main["oldest_live"])
    store.resize_index(int(main["hashpower"]))
    _relink(store)
    if store.curr_items != int(ours["items"]):
        raise ValueError(f"{store.curr_items} items found, {ours['items']} saved")


def _relink(store: Store) -> None:
    """Every linked item into the hash index (hashes are this process's), counted as
    memcached's ``do_item_link_fixup`` counts it; the LRU links are already in place."""
    pages = store.pages
    npages = len(pages)
    for cls in store.slabs.classes[1:]:
        cls.lru_bytes = [0] * 4  # relink counts them again
        for lru in range(4):
            hd = cls.heads[lru]
            for _ in range(cls.lru_counts[lru]):
                if hd < 0 or hd >> PAGE_SHIFT >= npages:
                    raise ValueError(f"a broken LRU in class {cls.clsid}")
                page = pages[hd >> PAGE_SHIFT]
                off = hd & OFFSET_MASK
                _, _, _, _, nkey, iflags = _VIEW.unpack_from(page, off + OFF_EXPTIME)
                if not iflags & F_LINKED or iflags & F_DATA or iflags >> LRU_SHIFT != lru:
                    raise ValueError(f"an unlinked item on an LRU of class {cls.clsid}")
                key = bytes(page[off + ITEM_HEADER : off + ITEM_HEADER + nkey])
                store.relink(hd, key, page, off)
                hd = _Q.unpack_from(page, off)[0]
            if hd != NONE:
                raise ValueError(f"an LRU of class {cls.clsid} is longer than counted")
