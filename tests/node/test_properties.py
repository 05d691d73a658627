"""Property tests: the store against a plain-dict model, and random bytes against the parser."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ringcache.node.commands import Session
from ringcache.node.config import parse_args
from ringcache.node.defs import ADD, APPEND, CAS, NOT_FOUND, PREPEND, REPLACE, SET, STORED
from ringcache.node.state import NodeState
from ringcache.node.store import Clock, Store

KEYS = st.sampled_from([b"a", b"b", b"c", b"key:" + b"x" * 200, b"\x01ctl"])
# Sizes that exercise small classes, large classes and chained items.
VALUES = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=1000, max_size=3000),
    st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: str(n).encode()),
    st.sampled_from([b"x" * 600_000, b"y" * 1_000_000]),
)
U64 = 2**64 - 1


class Wall:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class StoreModel(RuleBasedStateMachine):
    """Every operation is applied to the store and to a dict of (value, flags, expires_at)."""

    def __init__(self) -> None:
        super().__init__()
        self.wall = Wall()
        self.clock = Clock(self.wall)
        self.store = Store(parse_args(["-m", "64"]), self.clock)
        self.model: dict[bytes, tuple[bytes, int, int | None]] = {}
        self.cas: dict[bytes, int] = {}
        # Meta state of live keys: "stale" (md I / ms I) and "token" (a W was handed out).
        self.marks: dict[bytes, set[str]] = {}
        self.session = Session(NodeState(self.store.cfg, self.store, log=lambda line: None))

    def _meta(self, line: bytes, data: bytes | None = None) -> bytes:
        """One meta command through a session on the same store; its whole reply."""
        self.session.feed(line + b"\r\n" + (b"" if data is None else data + b"\r\n"))
        out, more = self.session.step()
        assert not more
        return out

    def _live(self, key: bytes):
        entry = self.model.get(key)
        if entry is None:
            return None
        if entry[2] is not None and entry[2] <= self.clock.now:
            del self.model[key]
            self.marks.pop(key, None)
            return None
        return entry

    def _expiry(self, ttl: int) -> tuple[int, int | None]:
        rel = self.clock.realtime(ttl)
        return rel, (rel if rel else None)

    @rule(key=KEYS, value=VALUES, flags=st.integers(0, 2**32 - 1), ttl=st.integers(0, 5))
    def set(self, key, value, flags, ttl):
        rel, exp = self._expiry(ttl)
        result, cas = self.store.store(SET, key, flags, rel, value + b"\r\n")
        assert result == STORED
        self.model[key] = (value, flags, exp)
        self.cas[key] = cas
        self.marks.pop(key, None)

    @rule(key=KEYS, value=VALUES, mode=st.sampled_from([ADD, REPLACE, APPEND, PREPEND]))
    def conditional(self, key, value, mode):
        old = self._live(key)
        result, _ = self.store.store(mode, key, 0, 0, value + b"\r\n")
        if mode == ADD:
            expected = old is None
        else:
            expected = old is not None
        if mode in (APPEND, PREPEND) and old is not None:
            combined = old[0] + value if mode == APPEND else value + old[0]
            if len(combined) + len(key) + 59 + (4 if old[1] else 0) > 1024 * 1024:
                expected = False  # cannot fit: not stored
        assert (result == STORED) == expected
        if result == STORED:
            self.cas.pop(key, None)  # changed: a client would have to ask again
            self.marks.pop(key, None)
            if mode in (ADD, REPLACE):
                self.model[key] = (value, 0, None)
            else:
                combined = old[0] + value if mode == APPEND else value + old[0]
                self.model[key] = (combined, old[1], old[2])

    @rule(key=KEYS, value=VALUES, stale=st.booleans())
    def cas_store(self, key, value, stale):
        old = self._live(key)
        token = self.cas.get(key, 0) + (1000 if stale else 0)
        result, _ = self.store.store(CAS, key, 0, 0, value + b"\r\n", token)
        if old is None:
            assert result == NOT_FOUND
        elif stale or key not in self.cas:
            assert result != STORED
        else:
            assert result == STORED
            self.model[key] = (value, 0, None)
            self.marks.pop(key, None)
        self.cas.pop(key, None)

    @rule(key=KEYS)
    def get(self, key):
        hit = self.store.get(key)
        entry = self._live(key)
        if entry is None:
            assert hit is None
        else:
            assert hit is not None
            flags, data, cas, _ = hit
            assert bytes(data) == entry[0] + b"\r\n"
            assert flags == entry[1]
            self.cas[key] = cas

    @rule(key=KEYS)
    def delete(self, key):
        assert self.store.delete(key) == (self._live(key) is not None)
        self.model.pop(key, None)
        self.cas.pop(key, None)
        self.marks.pop(key, None)

    @rule(key=KEYS, amount=st.integers(0, U64), incr=st.booleans())
    def delta(self, key, amount, incr):
        entry = self._live(key)
        result, digits, _, _ = self.store.delta(key, incr, amount)
        if entry is None:
            assert result == NOT_FOUND
            return
        text = entry[0]
        if text.isdigit() and len(text) <= 20 and int(text) <= U64:
            current = int(text)
            new = (current + amount) & U64 if incr else max(current - amount, 0)
            assert digits == b"%d" % new
            stored = (
                digits + b" " * (len(text) - len(digits)) if len(digits) <= len(text) else digits
            )
            self.model[key] = (stored, entry[1], entry[2])
            self.cas.pop(key, None)
            if len(digits) > len(text):
                self.marks.pop(key, None)  # a new item; in place, the item keeps its marks

    @rule(seconds=st.integers(0, 3))
    def tick(self, seconds):
        self.wall.t += seconds
        self.clock.tick()

    @precondition(lambda self: self.model)
    @rule()
    def flush(self):
        self.store.flush_all()
        self.model.clear()
        self.cas.clear()
        self.marks.clear()

    # -- meta: vivify, invalidation, stale writes, CAS-guarded deletes ---------------------
    @rule(key=KEYS)
    def meta_get_or_vivify(self, key):
        head, _, rest = self._meta(b"mg %s v c N30" % key).partition(b"\r\n")
        words = head.split(b" ")
        entry = self._live(key)
        marks = self.marks.setdefault(key, set())
        if entry is None:
            assert words[1] == b"0" and words[-1] == b"W" and rest == b"\r\n"
            self.model[key] = (b"", 0, self.clock.realtime(30))
            marks.add("token")
        else:
            assert rest == entry[0] + b"\r\n"
            expect = []
            if "token" in marks:
                expect.append(b"Z")
            if "stale" in marks:
                expect.append(b"X")
                if "token" not in marks:
                    expect.append(b"W")
                    marks.add("token")
            assert words[3:] == expect
        self.cas[key] = int(words[2][1:])

    @rule(key=KEYS)
    def invalidate(self, key):
        reply = self._meta(b"md %s I T30" % key)
        if self._live(key) is None:
            assert reply == b"NF\r\n"
            return
        assert reply == b"HD\r\n"
        value, flags, _ = self.model[key]
        self.model[key] = (value, flags, self.clock.realtime(30))
        self.marks.setdefault(key, set()).add("stale")
        self.marks[key].discard("token")
        self.cas.pop(key, None)

    @precondition(lambda self: self.cas)
    @rule(data=st.data(), value=st.binary(max_size=40), older=st.booleans())
    def meta_cas_write(self, data, value, older):
        key = data.draw(st.sampled_from(sorted(self.cas)))
        token = self.cas[key] - 1 if older else self.cas[key]
        reply = self._meta(b"ms %s %d I C%d F3 T0" % (key, len(value), token), value)
        entry = self._live(key)
        if entry is None:
            assert reply == b"NF\r\n"
            return
        if token == 0:
            assert reply == b"EX\r\n"  # C0 never matches
            return
        assert reply == b"HD\r\n"
        if older:
            # Stale write: the value is taken, marked stale, and keeps its TTL and token.
            self.model[key] = (value, 3, entry[2])
            self.marks.setdefault(key, set()).add("stale")
        else:
            self.model[key] = (value, 3, None)
            self.marks.pop(key, None)
        self.cas.pop(key, None)

    @precondition(lambda self: self.cas)
    @rule(data=st.data(), match=st.booleans())
    def delete_if_unchanged(self, data, match):
        key = data.draw(st.sampled_from(sorted(self.cas)))
        reply = self._meta(b"md %s C%d" % (key, self.cas[key] + (0 if match else 1000)))
        if self._live(key) is None:
            assert reply == b"NF\r\n"
        elif match:
            assert reply == b"HD\r\n"
            self.model.pop(key)
            self.marks.pop(key, None)
            self.cas.pop(key)
        else:
            assert reply == b"EX\r\n"

    @rule()
    def crawl(self):
        self.store.crawl(budget=50)

    @invariant()
    def accounting(self):
        classes = self.store.slabs.classes
        live = sum(c.count for c in classes)
        assert live == self.store.curr_items == self.store.count
        assert sum(c.requested for c in classes) == self.store.bytes


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)


COMMAND_WORDS = [
    b"get ", b"gets ", b"set ", b"add ", b"cas ", b"incr ", b"decr ", b"delete ", b"touch ",
    b"gat ", b"stats", b"flush_all", b"lru_crawler metadump all", b"slabs reassign 1 2",
    b"noreply", b" 0 0 5", b" 4294967296", b" -1", b"\r\n", b"\n", b"\r", b" ", b"\x00",
    b"HTTP/1.1", b"x" * 300, b"mg ", b"ms ", b"md ", b"ma ", b"me ", b"mn", b" v", b" q",
    b" N30", b" T-1", b" C1", b" I", b" b", b" MA", b" O1", b" k",
]  # fmt: skip
FRAGMENTS = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from(COMMAND_WORDS)), max_size=60
).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(chunks=st.lists(FRAGMENTS, max_size=8))
def test_random_bytes_never_crash_or_hang(chunks):
    cfg = parse_args(["-m", "8"])
    s = Session(NodeState(cfg, Store(cfg), log=lambda line: None))
    started = time.monotonic()
    for chunk in chunks:
        s.feed(chunk)
        for _ in range(10_000):
            out, more = s.step()
            assert isinstance(out, bytes)
            if not more or s.closing:
                break
        else:
            raise AssertionError("the session kept claiming more work")
        if s.closing:
            break
        # Nothing is buffered beyond what the protocol allows for an unfinished request.
        assert s.parser.buffered() <= sum(map(len, chunks))
    assert time.monotonic() - started < 5


# A read of one "get <key>\r\n" or one plain "set" with its data is answered by
# Session.receive without the parser; any read must get the same replies and leave the same
# counters and items as feed + step.
PIECES = st.sampled_from(
    [b"get", b"gets", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\0", b"k", b"v", b"x" * 250, b"x"]
)
READ_BYTES = st.one_of(
    st.lists(PIECES, max_size=8).map(b"".join),
    st.tuples(st.lists(PIECES, max_size=3), st.lists(PIECES, max_size=2)).map(
        lambda parts: b"get " + b"".join(parts[0]) + b"\r\n" + b"".join(parts[1])
    ),
)


def _counters(stats) -> list:
    return [getattr(stats, name) for name in type(stats).__slots__ if name != "cls"] + [
        [getattr(c, name) for name in type(c).__slots__] for c in stats.cls
    ]


def _twin_stores(*args: str) -> list[Store]:
    stores = []
    for _ in range(2):
        store = Store(parse_args(["-m", "64", *args]), Clock(Wall()))
        for key in (b"k", b"v", b"k\t", b"k\r", b"x" * 250):
            store.store(SET, key, 5, 0, b"val\r\n")
        stores.append(store)
    return stores


TWINS = _twin_stores()  # shared by the examples; both always see the same requests
# Values over about 1000 bytes never fit in these: the parser swallows them.
SMALL_TWINS = _twin_stores("-I", "1k", "-o", "slab_chunk_max=512")
KEYS = (b"k", b"v", b"k\t", b"k\r", b"x" * 250, b"x" * 251, b"k\0", b"")


@settings(max_examples=300, deadline=None)
@given(reads=st.lists(READ_BYTES, min_size=1, max_size=4))
@example(reads=[b"get k v\r\n"])
@example(reads=[b"get k \r\n", b"get  k\r\n", b"get k\n", b"get k\0\r\n"])
@example(reads=[b"get \tk\r\n", b"get k\r\r\n", b"get k\r\nget v\r\n", b"get k\r"])
@example(reads=[b"get " + b"x" * 250 + b"\r\n", b"get " + b"x" * 251 + b"\r\n", b"get \r\n"])
@example(reads=[b"set k 0 0 3\r\n", b"get k\r\n", b"\r\nget k\r\n"])
def test_receive_answers_as_feed_and_step(reads):
    _same_as_feed_and_step(TWINS, reads)


def _same_as_feed_and_step(twins: list[Store], reads: list[bytes]) -> None:
    fast, slow = (Session(NodeState(s.cfg, s, log=lambda line: None)) for s in twins)
    buf = bytearray(64 * 1024)
    for data in reads:
        buf[: len(data)] = data
        got = fast.receive(buf, len(data)) if data else (b"", False)
        slow.feed(data)
        assert got == slow.step()
        assert _counters(fast.stats) == _counters(slow.stats)
        assert fast.closing == slow.closing
        assert _items(fast.store) == _items(slow.store)


def _items(store: Store) -> list:
    """Every field and the value of the items under KEYS."""
    found = [(key, store._lookup(key)) for key in KEYS]
    return [(key, hd >= 0 and (store.fields(hd), store.value(hd))) for key, hd in found]


def _set_read(parts) -> bytes:
    key, flags, exptime, length, line_end, size, term, rest = parts
    head = b"set %s %s %s %s%s" % (key, flags, exptime, length, line_end)
    return head + b"y" * size + term + rest


NUMBERS = [b"0", b"5", b"007", b"123456789", b"1234567890", b"4294967295", b"4294967296"]
NUMBERS += [b"-1", b"+1", b"1x", b"", b"100", b"999999999", b"2592001"]
SET_READS = st.tuples(
    st.sampled_from(KEYS),
    st.sampled_from(NUMBERS),
    st.sampled_from(NUMBERS),
    st.one_of(st.sampled_from(NUMBERS), st.integers(0, 1500).map(b"%d".__mod__)),
    st.sampled_from([b"\r\n", b"\n", b" noreply\r\n", b" \r\n", b"\r\r\n"]),
    st.sampled_from([0, 1, 3, 5, 100, 950, 1000, 1200, 1500]),
    st.sampled_from([b"\r\n", b"\n", b"xx", b""]),
    st.sampled_from([b"", b"get k\r\n", b"\r\n", b"set k 0 0 1\r\n"]),
).map(_set_read)


@settings(max_examples=400, deadline=None)
@given(reads=st.lists(st.one_of(SET_READS, READ_BYTES), min_size=1, max_size=4))
@example(reads=[b"set k 1 0 3\r\nabc\r\n", b"get k\r\n", b"set k 2 0 3\r\nab\r\r\n"])
@example(reads=[b"set v 0 0 1000\r\n" + b"y" * 1000 + b"\r\n", b"get v\r\n"])
@example(reads=[b"set k 0 -1 1\r\ny\r\n", b"set k 0 100 1\r\ny\r\n", b"get k\r\n"])
@example(reads=[b"set " + b"x" * 251 + b" 0 0 1\r\ny\r\n", b"set k 0 0 1\r\nyy\r\n"])
def test_receive_stores_as_feed_and_step(reads):
    _same_as_feed_and_step(SMALL_TWINS, reads)
