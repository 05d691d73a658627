"""The text of every ``stats`` reply.

This module renders ``stats``, ``stats items``, ``stats slabs``, ``stats settings``, ``stats
sizes`` and ``stats conns`` with memcached 1.6.18's names and order, from the counters
(``counters``), the store and the slabs; it reads them but never changes them.
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

from .config import VERSION
from .slabs import COLD, HOT, LRU_SHIFT, TEMP, WARM
from .tls import settings_lines as tls_settings

if TYPE_CHECKING:
    from .config import Config
    from .store import Store


def _lines(pairs: list[tuple[str, object]]) -> bytes:
    out = [b"STAT %s %s\r\n" % (k.encode(), str(v).encode()) for k, v in pairs]
    out.append(b"END\r\n")
    return b"".join(out)


def general(
    store: Store, cfg: Config, conns: int, tls: list[tuple[str, object]] | None = None
) -> bytes:
    st = store.stats
    usage = resource.getrusage(resource.RUSAGE_SELF)
    s = st.class_sum
    pairs: list[tuple[str, object]] = [
        ("pid", os.getpid()),
        ("uptime", store.clock.uptime),
        ("time", store.clock.process_started + store.clock.now),
        ("version", VERSION),
        ("libevent", "trio"),
        ("pointer_size", 64),
        ("rusage_user", "%d.%06d" % divmod(int(usage.ru_utime * 1e6), 1_000_000)),
        ("rusage_system", "%d.%06d" % divmod(int(usage.ru_stime * 1e6), 1_000_000)),
        ("max_connections", cfg.max_connections),
        ("curr_connections", conns),
        ("total_connections", st.total_connections),
        ("rejected_connections", st.rejected_connections),
        ("connection_structures", conns + 1),
        ("response_obj_oom", 0),
        ("response_obj_count", 1),
        ("response_obj_bytes", 16384),
        ("read_buf_count", conns + 1),
        ("read_buf_bytes", 16384 * (conns + 1)),
        ("read_buf_bytes_free", 0),
        ("read_buf_oom", 0),
        ("reserved_fds", 20),
        ("cmd_get", st.cmd_get),
        ("cmd_set", s("cmd_set")),
        ("cmd_flush", st.cmd_flush),
        ("cmd_touch", st.cmd_touch),
        ("cmd_meta", st.cmd_meta),
        ("get_hits", s("get_hits")),
        ("get_misses", st.get_misses),
        ("get_expired", st.get_expired),
        ("get_flushed", st.get_flushed),
        ("delete_misses", st.delete_misses),
        ("delete_hits", s("delete_hits")),
        ("incr_misses", st.incr_misses),
        ("incr_hits", s("incr_hits")),
        ("decr_misses", st.decr_misses),
        ("decr_hits", s("decr_hits")),
        ("cas_misses", st.cas_misses),
        ("cas_hits", s("cas_hits")),
        ("cas_badval", s("cas_badval")),
        ("touch_hits", s("touch_hits")),
        ("touch_misses", st.touch_misses),
        ("store_too_large", st.store_too_large),
        ("store_no_memory", st.store_no_memory),
        ("auth_cmds", st.auth_cmds),
        ("auth_errors", st.auth_errors),
        ("bytes_read", st.bytes_read),
        ("bytes_written", st.bytes_written),
        ("limit_maxbytes", cfg.memory_limit),
        ("accepting_conns", 1),
        ("listen_disabled_num", st.listen_disabled_num),
        ("time_in_listen_disabled_us", 0),
        ("threads", 1),
        ("conn_yields", st.conn_yields),
        ("hash_power_level", store.hash_power),
        ("hash_bytes", 8 << store.hash_power),
        ("hash_is_expanding", int(store.old_table is not None)),
        ("slab_reassign_rescues", 0),
        ("slab_reassign_chunk_rescues", 0),
        ("slab_reassign_evictions_nomem", st.slab_reassign_evictions),
        ("slab_reassign_inline_reclaim", 0),
        ("slab_reassign_busy_items", 0),
        ("slab_reassign_busy_deletes", 0),
        ("slab_reassign_running", 0),
        ("slabs_moved", st.slabs_moved),
        ("lru_crawler_running", 0),
        ("lru_crawler_starts", st.lru_crawler_starts),
        ("lru_maintainer_juggles", st.lru_maintainer_juggles),
        ("malloc_fails", 0),
        ("log_worker_dropped", 0),
        ("log_worker_written", 0),
        ("log_watcher_skipped", 0),
        ("log_watcher_sent", 0),
        ("log_watchers", 0),
        *(tls or ()),
        ("unexpected_napi_ids", 0),
        ("round_robin_fallback", 0),
        ("bytes", store.bytes),
        ("curr_items", store.curr_items),
        ("total_items", st.total_items),
        ("slab_global_page_pool", len(store.slabs.free_pages)),
        ("expired_unfetched", s("expired_unfetched")),
        ("evicted_unfetched", s("evicted_unfetched")),
        ("evicted_active", s("evicted_active")),
        ("evictions", s("evicted")),
        ("reclaimed", s("reclaimed")),
        ("crawler_reclaimed", s("crawler_reclaimed")),
        ("crawler_items_checked", s("crawler_items_checked")),
        ("lrutail_reflocked", s("lrutail_reflocked")),
        ("moves_to_cold", s("moves_to_cold")),
        ("moves_to_warm", s("moves_to_warm")),
        ("moves_within_lru", s("moves_within_lru")),
        ("direct_reclaims", s("direct_reclaims")),
        ("lru_bumps_dropped", 0),
    ]
    return _lines(pairs)


def items(store: Store) -> bytes:
    """``stats items``, as memcached's ``item_stats``: the LRU lengths, ages and moves only
    with its LRU maintainer (not with ``-o lru_policy=lru``, its ``no_lru_maintainer``)."""
    pairs: list[tuple[str, object]] = []
    now = store.clock.now
    maintained = store.cfg.lru_policy != "lru"
    hits = store.stats.lru_hits

    def age(hd: int) -> int:
        return now - store.item_time(hd) if hd >= 0 else 0

    for cls in store.slabs.classes[1:]:
        if not cls.count:
            continue
        clsid = cls.clsid
        c = store.stats.cls[clsid]
        counts = cls.lru_counts
        p = f"items:{clsid}:"
        pairs.append((p + "number", cls.count))
        if maintained:
            pairs += [
                (p + "number_hot", counts[HOT]),
                (p + "number_warm", counts[WARM]),
                (p + "number_cold", counts[COLD]),
            ]
            if store.temporary_ttl is not None:
                pairs.append((p + "number_temp", counts[TEMP]))
            pairs += [
                (p + "age_hot", age(cls.tails[HOT])),
                (p + "age_warm", age(cls.tails[WARM])),
            ]
        pairs += [
            (p + "age", age(cls.tails[COLD])),
            (p + "mem_requested", cls.requested),
            (p + "evicted", c.evicted),
            (p + "evicted_nonzero", c.evicted_nonzero),
            (p + "evicted_time", c.evicted_time),
            (p + "outofmemory", c.outofmemory),
            (p + "tailrepairs", c.tailrepairs),
            (p + "reclaimed", c.reclaimed),
            (p + "expired_unfetched", c.expired_unfetched),
            (p + "evicted_unfetched", c.evicted_unfetched),
        ]
        if maintained:
            pairs.append((p + "evicted_active", c.evicted_active))
        pairs += [
            (p + "crawler_reclaimed", c.crawler_reclaimed),
            (p + "crawler_items_checked", c.crawler_items_checked),
            (p + "lrutail_reflocked", c.lrutail_reflocked),
        ]
        if maintained:
            pairs += [
                (p + "moves_to_cold", c.moves_to_cold),
                (p + "moves_to_warm", c.moves_to_warm),
                (p + "moves_within_lru", c.moves_within_lru),
                (p + "direct_reclaims", c.direct_reclaims),
                (p + "hits_to_hot", hits[clsid | HOT << LRU_SHIFT]),
                (p + "hits_to_warm", hits[clsid | WARM << LRU_SHIFT]),
                (p + "hits_to_cold", hits[clsid | COLD << LRU_SHIFT]),
                (p + "hits_to_temp", hits[clsid | TEMP << LRU_SHIFT]),
            ]
    return _lines(pairs)


def slabs(store: Store) -> bytes:
    pairs: list[tuple[str, object]] = []
    active = 0
    for cls in store.slabs.classes[1:]:
        if not cls.pages:
            continue
        active += 1
        c = store.stats.cls[cls.clsid]
        total = store.slabs.total_chunks(cls)
        p = f"{cls.clsid}:"
        pairs += [
            (p + "chunk_size", cls.size),
            (p + "chunks_per_page", cls.perslab),
            (p + "total_pages", len(cls.pages)),
            (p + "total_chunks", total),
            (p + "used_chunks", cls.used),
            (p + "free_chunks", cls.free_count + cls.end_left),
            (p + "free_chunks_end", 0),
            (p + "get_hits", store.stats.get_hits(cls.clsid)),
            (p + "cmd_set", c.cmd_set),
            (p + "delete_hits", c.delete_hits),
            (p + "incr_hits", c.incr_hits),
            (p + "decr_hits", c.decr_hits),
            (p + "cas_hits", c.cas_hits),
            (p + "cas_badval", c.cas_badval),
            (p + "touch_hits", c.touch_hits),
        ]
    pairs += [("active_slabs", active), ("total_malloced", store.slabs.mem_malloced)]
    return _lines(pairs)


def settings(store: Store, cfg: Config, verbosity: int) -> bytes:
    pairs: list[tuple[str, object]] = [
        ("maxbytes", cfg.memory_limit),
        ("maxconns", cfg.max_connections),
        ("tcpport", cfg.port),
        ("udpport", 0),
        ("inter", cfg.listen),
        ("verbosity", verbosity),
        ("oldest", store.oldest_live),
        ("evictions", "on" if cfg.evictions else "off"),
        ("domain_socket", "NULL"),
        ("umask", 700),
        ("shutdown_command", "yes" if cfg.shutdown_command else "no"),
        ("growth_factor", "%.2f" % cfg.growth_factor),
        ("chunk_size", cfg.chunk_size),
        ("num_threads", 1),
        ("num_threads_per_udp", 1),
        ("stat_key_prefix", ":"),
        ("detail_enabled", "no"),
        ("reqs_per_event", cfg.reqs_per_event),
        ("cas_enabled", "yes"),
        ("tcp_backlog", 1024),
        ("binding_protocol", "ascii"),
        ("auth_enabled_sasl", "no"),
        ("auth_enabled_ascii", cfg.auth_file or "no"),
        ("item_size_max", cfg.item_size_max),
        ("maxconns_fast", "yes"),
        ("hashpower_init", 0),
        ("slab_reassign", "yes"),
        ("slab_automove", store.automove),
        ("slab_automove_ratio", "%.2f" % store.automove_ratio),
        ("slab_automove_window", 30),
        ("slab_chunk_max", cfg.slab_chunk_max),
        ("lru_crawler", "yes" if cfg.lru_crawler else "no"),
        ("lru_crawler_sleep", 100),
        ("lru_crawler_tocrawl", 0),
        ("tail_repair_time", 0),
        ("flush_enabled", "yes"),
        ("dump_enabled", "yes"),
        ("hash_algorithm", "siphash"),
        ("lru_maintainer_thread", "no" if cfg.lru_policy == "lru" else "yes"),
        ("lru_segmented", "yes" if cfg.lru_policy == "segmented" else "no"),
        ("hot_lru_pct", cfg.hot_lru_pct),
        ("warm_lru_pct", cfg.warm_lru_pct),
        ("hot_max_factor", "%.2f" % cfg.hot_max_factor),
        ("warm_max_factor", "%.2f" % cfg.warm_max_factor),
        ("temp_lru", "no" if cfg.temporary_ttl is None else "yes"),
        ("temporary_ttl", 61 if cfg.temporary_ttl is None else cfg.temporary_ttl & 0xFFFFFFFF),
        ("idle_timeout", cfg.idle_timeout),
        ("watcher_logbuf_size", 262144),
        ("worker_logbuf_size", 65536),
        ("read_buf_mem_limit", 0),
        ("track_sizes", "no"),
        ("inline_ascii_response", "no"),
        *tls_settings(cfg),
        ("num_napi_ids", "(null)"),
        ("memory_file", cfg.memory_file or "(null)"),
    ]
    return _lines(pairs)


def sizes() -> bytes:
    return b"STAT sizes_status disabled\r\nEND\r\n"


def cachedump(store: Store, clsid: int, limit: int) -> bytes:
    """``stats cachedump``: ``ITEM`` lines of one class, most recently used first, at most
    ``limit`` (0 = no limit) and 2 MB in all, as memcached's ``item_cachedump``."""
    out = []
    if 1 <= clsid <= store.slabs.largest:
        size = 0
        for hd in store.items(clsid):
            if limit and len(out) >= limit:
                break
            exptime, _, nbytes, _, _, _, _, _ = store.fields(hd)
            line = b"ITEM %s [%d b; %d s]\r\n" % (
                store.key_of(hd),
                nbytes - 2,
                store.clock.absolute(exptime) if exptime else 0,
            )
            size += len(line)
            if size + 6 > 2 * 1024 * 1024:
                break
            out.append(line)
    out.append(b"END\r\n")
    return b"".join(out)


def conns(connections: dict, listen_addr: str, now: int) -> bytes:
    """``stats conns``: one group of lines per open connection, by connection id."""
    lines = [
        f"STAT {sid}:addr tcp:{s.peer}\r\nSTAT {sid}:listen_addr tcp:{listen_addr}\r\n"
        f"STAT {sid}:state conn_parse_cmd\r\n"
        f"STAT {sid}:secs_since_last_cmd {now - s.last_cmd}\r\n"
        for sid, s in sorted(connections.items())
    ]
    return ("".join(lines) + "END\r\n").encode()
