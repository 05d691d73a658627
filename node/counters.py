"""The counters of one node: global ones and one set per slab class.

This module owns the names of memcached 1.6.18's counters (``stats``, the per-class parts of
``stats items`` and ``stats slabs``) and the objects that hold them, which the store, the
commands and the server add to directly. Rendering them is ``stats``'; this module imports
nothing of the node's.
"""

from __future__ import annotations

CLASS_COUNTERS = (
    # slab_stats (per class, summed into the global stats); get_hits is the sum of the
    # class's hits to its four LRUs (Stats.lru_hits)
    "cmd_set",
    "delete_hits",
    "incr_hits",
    "decr_hits",
    "cas_hits",
    "cas_badval",
    "touch_hits",
    # itemstats (per class)
    "evicted",
    "evicted_nonzero",
    "evicted_time",
    "outofmemory",
    "tailrepairs",
    "reclaimed",
    "expired_unfetched",
    "evicted_unfetched",
    "evicted_active",
    "crawler_reclaimed",
    "crawler_items_checked",
    "lrutail_reflocked",
    "moves_to_cold",
    "moves_to_warm",
    "moves_within_lru",
    "direct_reclaims",
)

GLOBAL_COUNTERS = (
    "lru_maintainer_juggles",
    "cmd_get",
    "cmd_flush",
    "cmd_touch",
    "cmd_meta",
    "get_misses",
    "get_expired",
    "get_flushed",
    "delete_misses",
    "incr_misses",
    "decr_misses",
    "cas_misses",
    "touch_misses",
    "store_too_large",
    "store_no_memory",
    "auth_cmds",
    "auth_errors",
    "bytes_read",
    "bytes_written",
    "total_items",
    "total_connections",
    "rejected_connections",
    "conn_yields",
    "slabs_moved",
    "slab_reassign_evictions",
    "lru_crawler_starts",
    "listen_disabled_num",
)


class ClassCounters:
    __slots__ = CLASS_COUNTERS

    def __init__(self) -> None:
        for name in CLASS_COUNTERS:
            setattr(self, name, 0)


class Stats:
    """Every counter of one node; the store and server add to them directly."""

    __slots__ = (*GLOBAL_COUNTERS, "cls", "lru_hits")

    def __init__(self, nclasses: int) -> None:
        self.cls = [ClassCounters() for _ in range(nclasses + 1)]
        # Hits by memcached's LRU id: the class, and HOT/WARM/COLD/TEMP in the two high bits.
        self.lru_hits = [0] * 256
        self.reset()

    def reset(self) -> None:
        """``stats reset``: every counter, as memcached's ``stats_reset`` (current items, bytes
        and connections are state, not counters, and stay)."""
        for name in GLOBAL_COUNTERS:
            setattr(self, name, 0)
        for counters in self.cls:
            for name in CLASS_COUNTERS:
                setattr(counters, name, 0)
        self.lru_hits[:] = [0] * 256

    def get_hits(self, clsid: int) -> int:
        """A class's hits, to any of its LRUs."""
        hits = self.lru_hits
        return hits[clsid] + hits[clsid | 64] + hits[clsid | 128] + hits[clsid | 192]

    def count_delta_miss(self, incr: bool) -> None:
        if incr:
            self.incr_misses += 1
        else:
            self.decr_misses += 1

    def class_sum(self, name: str) -> int:
        if name == "get_hits":
            return sum(self.lru_hits)
        return sum(getattr(c, name) for c in self.cls)
