"""client/protocol.py, bytes in and bytes out: every reply shape, every error line, malformed
replies, and the same replies cut at every byte boundary (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ringcache.client import protocol
from ringcache.client.errors import (
    ClientError,
    ProtocolError,
    ServerError,
    UnknownCommandError,
)
from ringcache.client.protocol import (
    CONFIG,
    LINE,
    META,
    NEED_DATA,
    STATS,
    STATUS,
    VALUES,
    ClusterConfig,
    DumpEntry,
    Meta,
    Reader,
)
from ringcache.client.ring import Server

# (kind, reply bytes, what next() returns); error replies compared by type and message.
CASES = [
    (VALUES, b"END\r\n", []),
    (VALUES, b"VALUE k 0 1\r\nv\r\nEND\r\n", [(b"k", 0, b"v", None)]),
    (VALUES, b"VALUE k 5 0\r\n\r\nEND\r\n", [(b"k", 5, b"", None)]),
    (VALUES, b"VALUE k 2 3 77\r\n1\r\n\r\nEND\r\n", [(b"k", 2, b"1\r\n", b"77")]),
    (
        VALUES,
        b"VALUE a 0 2\r\nEN\r\nVALUE b 1 4\r\nEND\r\r\nEND\r\n",
        [(b"a", 0, b"EN", None), (b"b", 1, b"END\r", None)],
    ),
    (VALUES, b"CLIENT_ERROR bad command line format\r\n", ClientError("bad command line format")),
    (VALUES, b"SERVER_ERROR out of memory\r\n", ServerError("out of memory")),
    (VALUES, b"ERROR\r\n", UnknownCommandError("ERROR")),
    (STATUS, b"STORED\r\n", b"STORED"),
    (STATUS, b"NOT_STORED\r\n", b"NOT_STORED"),
    (STATUS, b"EXISTS\r\n", b"EXISTS"),
    (STATUS, b"NOT_FOUND\r\n", b"NOT_FOUND"),
    (STATUS, b"DELETED\r\n", b"DELETED"),
    (STATUS, b"TOUCHED\r\n", b"TOUCHED"),
    (STATUS, b"OK\r\n", b"OK"),
    (STATUS, b"18446744073709551615\r\n", b"18446744073709551615"),
    (STATUS, b"VERSION 1.6.18\r\n", b"VERSION 1.6.18"),
    (
        STATUS,
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ClientError("cannot increment or decrement non-numeric value"),
    ),
    (
        STATUS,
        b"SERVER_ERROR object too large for cache\r\n",
        ServerError("object too large for cache"),
    ),
    (STATUS, b"ERROR\r\n", UnknownCommandError("ERROR")),
    (STATUS, b"ERROR unknown command\r\n", UnknownCommandError("ERROR unknown command")),
    (STATS, b"END\r\n", {}),
    (
        STATS,
        b"STAT pid 12\r\nSTAT version 1.6.18\r\nSTAT rusage_user 0.5\r\nEND\r\n",
        {b"pid": b"12", b"version": b"1.6.18", b"rusage_user": b"0.5"},
    ),
    (STATS, b"ITEM k [3 b; 0 s]\r\nEND\r\n", {b"k": b"[3 b; 0 s]"}),
    (STATS, b"STAT empty\r\nEND\r\n", {b"empty": b""}),
    (STATS, b"CLIENT_ERROR bad command line format\r\n", ClientError("bad command line format")),
    (META, b"HD\r\n", Meta(b"HD", {})),
    (META, b"HD t-1 c12 W\r\n", Meta(b"HD", {"t": b"-1", "c": b"12", "W": b""})),
    (META, b"VA 2 f0 t30\r\nhi\r\n", Meta(b"VA", {"f": b"0", "t": b"30"}, b"hi")),
    (META, b"VA 0\r\n\r\n", Meta(b"VA", {}, b"")),
    (META, b"VA 4 kfoo\r\nVA 1\r\n", Meta(b"VA", {"k": b"foo"}, b"VA 1")),
    (META, b"EN\r\n", Meta(b"EN", {})),
    (META, b"NF\r\n", Meta(b"NF", {})),
    (META, b"NS\r\n", Meta(b"NS", {})),
    (META, b"EX c5\r\n", Meta(b"EX", {"c": b"5"})),
    (META, b"MN\r\n", Meta(b"MN", {})),
    (META, b"ERROR\r\n", UnknownCommandError("ERROR")),
    (
        META,
        b"CLIENT_ERROR bad token in command line format\r\n",
        ClientError("bad token in command line format"),
    ),
    (
        CONFIG,
        b"CONFIG cluster 0 37\r\n12\nh1|10.0.0.1|11211 |10.0.0.2|11212\n\r\nEND\r\n",
        ClusterConfig(12, [Server("h1", 11211), Server("10.0.0.2", 11212)]),
    ),
    (CONFIG, b"CONFIG cluster 0 2\r\n0\n\r\nEND\r\n", ClusterConfig(0, [])),
    (CONFIG, b"ERROR\r\n", UnknownCommandError("ERROR")),
    (
        LINE,
        b"key=a%20b exp=-1 la=1 cas=2 fetch=no cls=1 size=63\r\n",
        b"key=a%20b exp=-1 la=1 cas=2 fetch=no cls=1 size=63",
    ),
    (LINE, b"ERROR\r\n", b"ERROR"),
]


def same(got, expected) -> bool:
    if isinstance(expected, Exception):
        return type(got) is type(expected) and str(got) == str(expected)
    return got == expected


@pytest.mark.parametrize(("kind", "data", "expected"), CASES)
def test_reply_whole(kind, data, expected):
    reader = Reader()
    reader.feed(data)
    assert same(reader.next(kind), expected)
    assert reader.buffered == 0
    assert reader.next(kind) is NEED_DATA


@pytest.mark.parametrize(("kind", "data", "expected"), CASES)
def test_reply_one_byte_at_a_time(kind, data, expected):
    reader = Reader()
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1])
        assert reader.next(kind) is NEED_DATA, data[: i + 1]
    reader.feed(data[-1:])
    assert same(reader.next(kind), expected)


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(CASES) - 1), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_pipelined_replies_cut_anywhere(picks, cuts):
    """Replies back to back, fed in pieces cut at arbitrary byte boundaries, come out the same
    as when fed whole, in order, with nothing left over."""
    stream = b"".join(CASES[i][1] for i in picks)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    reader = Reader()
    results = []
    wanted = iter(picks)
    current = next(wanted)
    for piece in pieces:
        reader.feed(piece)
        while current is not None:
            reply = reader.next(CASES[current][0])
            if reply is NEED_DATA:
                break
            results.append((current, reply))
            current = next(wanted, None)
    assert [i for i, _ in results] == picks
    assert all(same(reply, CASES[i][2]) for i, reply in results)
    assert reader.buffered == 0


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (VALUES, b"VALUE k 0 x\r\nv\r\nEND\r\n"),
        (VALUES, b"VALUE k 0 1\r\nvX\r\nEND\r\n"),  # data not followed by CRLF
        (VALUES, b"STORED\r\n"),
        (STATS, b"garbage\r\n"),
        (META, b"VA x\r\n"),
        (META, b"VA 1\r\nvv\r\n"),
        (META, b"WAT\r\n"),
        (CONFIG, b"CONFIG cluster 0 3\r\nabc\r\nEND\r\n"),
        (CONFIG, b"CONFIG cluster 0 1\r\n0\r\nXXX\r\n"),
        (STATUS, b"x" * (protocol.MAX_LINE + 10)),
    ],
)
def test_bytes_that_are_not_memcached_break_the_connection(kind, data):
    reader = Reader()
    reader.feed(data)
    with pytest.raises(ProtocolError) as raised:
        reader.next(kind)
    assert isinstance(raised.value, MemcacheUnknownError)


def test_error_replies_are_pymemcache_exceptions_too():
    assert isinstance(ClientError("x"), MemcacheClientError)
    assert isinstance(UnknownCommandError("x"), MemcacheUnknownCommandError)
    assert isinstance(ServerError("x"), MemcacheServerError)


def test_a_large_value_is_scanned_once():
    """A 4 MB value fed in 4 KB pieces: after its header, nothing is parsed until all of it can
    be there (the reader is told how much it needs)."""
    data = b"VALUE big 0 4194304\r\n" + b"x" * 4194304 + b"\r\nEND\r\n"
    reader = Reader()
    reader.feed(data[:4096])
    assert reader.next(VALUES) is NEED_DATA
    need = reader._need
    assert need >= 4194304
    for i in range(4096, len(data), 4096):
        reader.feed(data[i : i + 4096])
        if reader.buffered < need:
            assert reader._chunks  # not joined: no parse attempt was made
        result = reader.next(VALUES)
    assert result[0][2] == b"x" * 4194304


def test_requests():
    assert protocol.get([b"a", b"b"]) == b"get a b\r\n"
    assert protocol.get([b"a"], cas=True) == b"gets a\r\n"
    assert protocol.store(b"set", b"k", 3, 60, b"v") == b"set k 3 60 1\r\nv\r\n"
    assert protocol.store(b"cas", b"k", 0, -1, b"", b"12") == b"cas k 0 -1 0 12\r\n\r\n"
    assert protocol.store(b"add", b"k", 0, 0, b"v", noreply=True) == b"add k 0 0 1 noreply\r\nv\r\n"
    assert protocol.delete(b"k") == b"delete k\r\n"
    assert protocol.delete(b"k", noreply=True) == b"delete k noreply\r\n"
    assert protocol.delta(b"incr", b"k", 5) == b"incr k 5\r\n"
    assert protocol.touch(b"k", 10, noreply=True) == b"touch k 10 noreply\r\n"
    assert protocol.meta_get(b"k") == b"mg k v f t c\r\n"
    assert protocol.meta_delete(b"k", b"C12") == b"md k C12\r\n"
    assert protocol.stats("slabs") == b"stats slabs\r\n"
    assert protocol.flush_all(5) == b"flush_all 5\r\n"
    members = [Server("10.0.0.1", 11211), Server("h", 11212)]
    assert protocol.config_set(7, members) == (
        b"config set cluster version=7 10.0.0.1|10.0.0.1|11211 h|h|11212\r\n"
    )


def test_metadump_lines_and_typed_stats():
    entry = protocol.parse_metadump_line(
        b"key=a%20b exp=1700000000 la=1 cas=2 fetch=no cls=1 size=63"
    )
    assert entry == DumpEntry(b"a b", 1700000000)
    with pytest.raises(ProtocolError):
        protocol.parse_metadump_line(b"nothing here")
    typed = protocol.typed_stats(
        {b"pid": b"12", b"rusage_user": b"0.25", b"version": b"1.6.18", b"neg": b"-3"}
    )
    assert typed == {b"pid": 12, b"rusage_user": 0.25, b"version": b"1.6.18", b"neg": -3}
