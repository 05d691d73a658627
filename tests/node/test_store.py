"""Store semantics with an injected clock: expiry, flush, CAS, incr/decr, eviction, memory."""

from __future__ import annotations

import pytest

from ringcache.node.config import parse_args
from ringcache.node.defs import (
    ADD,
    APPEND,
    CAS,
    EXISTS,
    NO_MEMORY,
    NON_NUMERIC,
    NOT_FOUND,
    NOT_STORED,
    PREPEND,
    REPLACE,
    SET,
    STORED,
    TOO_LARGE,
    c_strtonum,
)
from ringcache.node.store import Clock, Store

START = 1_800_000_000


class FakeWall:
    def __init__(self) -> None:
        self.t = float(START)

    def __call__(self) -> float:
        return self.t


def make(*args: str) -> tuple[Store, Clock, FakeWall]:
    wall = FakeWall()
    clock = Clock(wall)
    return Store(parse_args(list(args)), clock), clock, wall


def advance(clock: Clock, wall: FakeWall, seconds: float) -> None:
    wall.t += seconds
    clock.tick()


def value(store: Store, key: bytes):
    hit = store.get(key)
    return None if hit is None else bytes(hit[1][:-2])


def put(store: Store, key: bytes, data: bytes, exptime: int = 0, flags: int = 0, mode=SET):
    return store.store(mode, key, flags, store.clock.realtime(exptime), data + b"\r\n")[0]


# -- expiry -----------------------------------------------------------------------------------


def test_relative_expiry_edges():
    store, clock, wall = make()
    put(store, b"a", b"1", exptime=1)
    put(store, b"b", b"2", exptime=10)
    assert value(store, b"a") == b"1"
    advance(clock, wall, 0.5)  # same second: still there
    assert value(store, b"a") == b"1"
    advance(clock, wall, 0.5)
    assert value(store, b"a") is None
    advance(clock, wall, 8)
    assert value(store, b"b") == b"2"
    advance(clock, wall, 1)
    assert value(store, b"b") is None
    assert store.stats.get_expired == 2


def test_absolute_and_negative_expiry():
    store, clock, wall = make()
    put(store, b"past", b"x", exptime=START - 10)
    put(store, b"future", b"x", exptime=START + 5)
    put(store, b"neg", b"x", exptime=-1)
    put(store, b"limit", b"x", exptime=2592000)  # 30 days: still relative
    assert value(store, b"past") is None
    assert value(store, b"neg") is None
    assert value(store, b"future") == b"x"
    assert value(store, b"limit") == b"x"
    advance(clock, wall, 5)
    assert value(store, b"future") is None


def test_touch_and_gat_change_the_ttl():
    store, clock, wall = make()
    put(store, b"k", b"v", exptime=1)
    assert store.touch(b"k", clock.realtime(100))
    advance(clock, wall, 50)
    assert value(store, b"k") == b"v"
    assert store.get(b"k", touch_exptime=clock.realtime(1)) is not None
    advance(clock, wall, 1)
    assert value(store, b"k") is None
    assert not store.touch(b"k", 0)


def test_flush_all_now_and_delayed():
    store, clock, wall = make()
    put(store, b"a", b"1")
    store.flush_all()
    assert value(store, b"a") is None
    put(store, b"b", b"2")  # same second, after the flush: kept (CAS rule)
    assert value(store, b"b") == b"2"
    store.flush_all(10)
    advance(clock, wall, 5)
    assert value(store, b"b") == b"2"
    advance(clock, wall, 6)
    assert value(store, b"b") is None


def test_crawler_reclaims_expired_items():
    store, clock, wall = make()
    for i in range(500):
        put(store, b"k%d" % i, b"v", exptime=1 if i % 2 else 0)
    advance(clock, wall, 2)
    visited = 0
    for _ in range(20):
        visited += store.crawl(budget=100)
    assert store.curr_items == 250
    assert store.stats.class_sum("crawler_reclaimed") == 250
    assert visited >= 500


def test_the_autocrawl_waits_as_memcached_schedules_it():
    """memcached's lru_maintainer_crawler_check: an LRU whose pass saw nothing that expires
    within the hour waits a minute longer each pass (plus 5 s); one where more than 1% of
    the items with a TTL expire within the minute is crawled again 5 s later; a requested
    crawl (``lru_crawler crawl``) walks regardless and leaves the schedule as it is."""
    store, clock, wall = make("-o", "no_lru_maintainer")  # one LRU: COLD
    for i in range(300):
        put(store, b"k%d" % i, b"v")
    assert store.crawl(10_000) == 300
    assert store.crawl(10_000) == 0  # waits 60 + 5 s
    advance(clock, wall, 65)
    assert store.crawl(10_000) == 0
    assert store.crawl(10_000, scheduled=False) == 300
    advance(clock, wall, 1)
    assert store.crawl(10_000) == 300  # now 120 + 5 s
    advance(clock, wall, 125)
    assert store.crawl(10_000) == 0
    advance(clock, wall, 1)
    assert store.crawl(10_000) == 300
    assert store.stats.class_sum("crawler_items_checked") == 1200
    # Items that expire within the minute: the next pass comes 5 s after this one.
    store, clock, wall = make("-o", "no_lru_maintainer")
    for i in range(300):
        put(store, b"t%d" % i, b"v", exptime=30)
    assert store.crawl(10_000) == 300
    advance(clock, wall, 5)
    assert store.crawl(10_000) == 0
    advance(clock, wall, 1)
    assert store.crawl(10_000) == 300
    assert store.stats.class_sum("crawler_reclaimed") == 0
    advance(clock, wall, 30)
    assert store.crawl(10_000) == 300
    assert store.stats.class_sum("crawler_reclaimed") == 300 and store.curr_items == 0


# -- storage modes and CAS --------------------------------------------------------------------


def test_modes():
    store, _, _ = make()
    assert put(store, b"k", b"a", mode=ADD) == STORED
    assert put(store, b"k", b"b", mode=ADD) == NOT_STORED
    assert put(store, b"x", b"b", mode=REPLACE) == NOT_STORED
    assert put(store, b"k", b"c", mode=REPLACE) == STORED
    assert put(store, b"k", b"d", mode=APPEND) == STORED
    assert put(store, b"k", b"e", mode=PREPEND) == STORED
    assert value(store, b"k") == b"ecd"
    assert put(store, b"x", b"b", mode=APPEND) == NOT_STORED


def test_append_keeps_flags_and_exptime():
    store, clock, wall = make()
    put(store, b"k", b"a", flags=42, exptime=10)
    store.store(APPEND, b"k", 7, 0, b"b\r\n")
    flags, data, _, _ = store.get(b"k")
    assert (flags, bytes(data)) == (42, b"ab\r\n")
    advance(clock, wall, 10)
    assert value(store, b"k") is None


def test_cas_counter_and_rules():
    store, _, _ = make()
    put(store, b"k", b"a")
    cas1 = store.get(b"k")[2]
    put(store, b"other", b"z")
    assert store.get(b"other")[2] == cas1 + 1  # one global counter
    assert store.store(CAS, b"k", 0, 0, b"b\r\n", cas1 + 100)[0] == EXISTS
    assert store.store(CAS, b"k", 0, 0, b"b\r\n", 0)[0] == EXISTS
    result, cas2 = store.store(CAS, b"k", 0, 0, b"b\r\n", cas1)
    assert result == STORED and cas2 > cas1
    assert store.store(CAS, b"nope", 0, 0, b"b\r\n", 1)[0] == NOT_FOUND
    assert store.stats.cas_misses == 1
    assert store.stats.class_sum("cas_badval") == 2
    assert store.stats.class_sum("cas_hits") == 1


# -- incr / decr ------------------------------------------------------------------------------


def test_incr_wraps_and_decr_clamps():
    store, _, _ = make()
    put(store, b"n", b"18446744073709551615")
    assert store.delta(b"n", True, 2)[1] == b"1"
    put(store, b"m", b"5")
    assert store.delta(b"m", False, 10)[1] == b"0"


def test_incr_pads_in_place_and_changes_cas():
    store, _, _ = make()
    put(store, b"n", b"100")
    cas = store.get(b"n")[2]
    assert store.delta(b"n", False, 1)[1] == b"99"
    _, data, cas2, _ = store.get(b"n")
    assert bytes(data) == b"99 \r\n" and cas2 != cas
    assert store.delta(b"n", True, 1)[1] == b"100"
    assert store.delta(b"n", True, 900)[1] == b"1000"  # grows: a new item
    assert value(store, b"n") == b"1000"


def test_incr_non_numeric_and_missing():
    store, _, _ = make()
    put(store, b"s", b"abc")
    put(store, b"e", b"")
    assert store.delta(b"s", True, 1)[0] == NON_NUMERIC
    assert store.delta(b"e", True, 1)[0] == NON_NUMERIC
    assert store.delta(b"missing", True, 1)[0] == NOT_FOUND
    assert store.stats.incr_misses == 1


@pytest.mark.parametrize(
    "text,bits,signed,expected",
    [
        (b"12", 32, False, 12),
        (b"+12", 32, False, 12),
        (b"-1", 32, False, None),
        (b"-0", 32, False, 0),
        (b"4294967296", 32, False, 0),  # C truncates to 32 bits
        (b"18446744073709551615", 64, False, 2**64 - 1),
        (b"18446744073709551616", 64, False, None),  # ERANGE
        (b"12x", 32, True, None),
        (b"x", 32, True, None),
        (b"", 32, True, None),
        (b"-5", 32, True, -5),
        (b"4294967297", 32, True, 1),
        (b" 7", 64, False, 7),
        (b"7\r\n", 64, False, 7),
    ],
)
def test_c_number_parsing(text, bits, signed, expected):
    assert c_strtonum(text, bits, signed) == expected


# -- memory, eviction, large items ------------------------------------------------------------


def test_item_size_limit():
    store, _, _ = make()
    fits = 1024 * 1024 - 48 - 8 - 1 - 1 - 2
    assert put(store, b"k", b"v" * fits) == STORED
    assert value(store, b"k") == b"v" * fits
    assert put(store, b"k", b"v" * (fits + 1)) == TOO_LARGE
    assert value(store, b"k") is None  # a failed set removes the old value
    assert store.stats.store_too_large == 1


def test_chained_items_round_trip_and_free():
    store, _, _ = make("-m", "8")
    blob = bytes(range(256)) * 3000  # 768000 bytes: two chunks
    assert put(store, b"big", blob, flags=3) == STORED
    assert value(store, b"big") == blob
    used = sum(c.used for c in store.slabs.classes)
    assert store.delete(b"big")
    assert sum(c.used for c in store.slabs.classes) == used - 3  # header + 2 chunks
    assert value(store, b"big") is None


def test_eviction_takes_the_oldest_item_read_at_most_once():
    store, clock, wall = make("-m", "2")
    value_bytes = b"x" * 900
    clsid = store.slabs.clsid(48 + 8 + 3 + 1 + 902)
    n = 0
    # Fill the class's pages until the memory limit makes stores evict.
    while store.stats.class_sum("evicted") < 2:
        put(store, b"k%d" % n, value_bytes)
        n += 1
        if n == 50:
            assert value(store, b"k0") is not None  # read twice: ACTIVE
            assert value(store, b"k0") is not None
            assert value(store, b"k1") is not None  # read once: FETCHED only
        advance(clock, wall, 0.001)
    # The oldest items not read twice went first; the ACTIVE one was kept (in WARM).
    assert value(store, b"k1") is None
    assert value(store, b"k2") is None
    assert value(store, b"k0") is not None
    assert store.stats.cls[clsid].evicted == 2


def test_no_evictions_flag_gives_out_of_memory():
    store, _, _ = make("-m", "2", "-M")
    results = [put(store, b"k%d" % i, b"x" * 900) for i in range(5000)]
    assert NO_MEMORY in results
    first = results.index(NO_MEMORY)
    assert all(r == STORED for r in results[:first])
    assert value(store, b"k0") is not None
    assert store.stats.store_no_memory > 0


def test_page_memory_stays_within_the_limit():
    store, _, _ = make("-m", "4")
    for i in range(20000):
        put(store, b"key:%d" % i, b"v" * (50 + (i * 37) % 3000))
    # Classes that got a first page past the limit are the only excess memcached allows.
    classes_used = sum(1 for c in store.slabs.classes if c.pages)
    assert store.slabs.mem_malloced <= (4 + classes_used) << 20
    assert store.curr_items > 0


def test_a_class_gets_pages_when_sizes_change():
    store, clock, wall = make("-m", "8")
    for i in range(8000):
        put(store, b"small:%d" % i, b"s" * 900)  # fills all pages with one class
    advance(clock, wall, 100)
    large_cls = store.slabs.clsid(48 + 8 + len(b"large:0") + 1 + 3002)
    last = [0] * (store.slabs.largest + 1)
    for i in range(3000):
        assert put(store, b"large:%d" % i, b"L" * 3000) == STORED
        if i % 100 == 99:  # what the server's background automover does once a second
            advance(clock, wall, 1)
            store.automove_step(last)
    assert len(store.slabs.classes[large_cls].pages) >= 4
    assert store.stats.slabs_moved >= 3
    # The recent large values are what is cached now, not the stale small ones.
    recent = sum(value(store, b"large:%d" % i) is not None for i in range(2500, 3000))
    assert recent == 500


def test_automove_off_keeps_pages():
    store, clock, wall = make("-m", "8", "-o", "slab_automove=0")
    for i in range(8000):
        put(store, b"small:%d" % i, b"s" * 900)
    advance(clock, wall, 100)
    last = [0] * (store.slabs.largest + 1)
    for i in range(1000):
        put(store, b"large:%d" % i, b"L" * 3000)
        store.automove_step(last)
    assert store.stats.slabs_moved == 0


def test_reassign():
    store, _, _ = make("-m", "8")
    for i in range(4000):
        put(store, b"k%d" % i, b"v" * 600)
    src = store.slabs.clsid(48 + 8 + 6 + 1 + 602)
    assert store.reassign(src, src) == "SAME"
    assert store.reassign(99, 1) == "BADCLASS"
    assert store.reassign(5, 1) == "NOSPARE"
    pages = len(store.slabs.classes[src].pages)
    assert store.reassign(src, 1) == "OK"
    assert len(store.slabs.classes[src].pages) == pages - 1
    assert len(store.slabs.classes[1].pages) == 1


def test_hash_index_grows_and_deletes_keep_probing_correct():
    store, _, _ = make("-m", "64")
    keys = [b"key-%d" % i for i in range(120000)]
    for k in keys:
        put(store, k, k)
    assert store.hash_power > 16
    for k in keys[::3]:
        assert store.delete(k)
    for i, k in enumerate(keys):
        expected = None if i % 3 == 0 else k
        assert value(store, k) == expected


def test_hash_index_grows_in_bounded_steps_and_stays_correct_meanwhile():
    store, _, _ = make("-m", "64")
    keys = [b"g-%d" % i for i in range(49153)]  # one past 3/4 of 2**16: the table grows
    for k in keys:
        put(store, k, k)
    assert store.hash_power == 17 and store.old_table is not None  # moving, not moved
    # Reads, overwrites and deletes are right while entries sit in either table.
    for i, k in enumerate(keys[:2000]):
        if i % 2:
            assert store.delete(k)
        else:
            put(store, k, b"new")
    steps = 0
    while store.rehash_step(4096):
        steps += 1
    assert 1 <= steps <= (1 << 16) // 4096
    assert store.old_table is None and store.count == store.curr_items
    for i, k in enumerate(keys):
        expected = k if i >= 2000 else (None if i % 2 else b"new")
        assert value(store, k) == expected


def test_an_overwrite_within_its_class_reuses_the_chunk_only_when_memcached_would_not_grow():
    store, _, _ = make("-m", "64")
    key = b"ow"
    assert store.store(SET, key, 0, 0, b"a" * 100 + b"\r\n")[0] == STORED
    first = store._find(key)[1]
    # The class has no free chunk yet (it carves from its page): a new chunk, the old freed.
    assert store.store(SET, key, 0, 0, b"b" * 100 + b"\r\n")[0] == STORED
    second = store._find(key)[1]
    assert second != first
    # Now its free list holds the old chunk: the value is written over the item in place.
    result, cas = store.store(SET, key, 3, 0, b"c" * 95 + b"\r\n")
    assert result == STORED and store._find(key)[1] == second
    assert store.get(key) == (3, bytearray(b"c" * 95 + b"\r\n"), cas, store.get(key)[3])
    assert store.curr_items == 1 and store.stats.total_items == 3
    # Into another class: allocated there.
    assert store.store(SET, key, 0, 0, b"d" * 2000 + b"\r\n")[0] == STORED
    assert store._find(key)[1] != second
