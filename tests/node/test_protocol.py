"""The sans-IO protocol and request handling: bytes in, bytes out, no sockets."""

from __future__ import annotations

import pytest

from ringcache.node.commands import STREAM_CHUNK, Session
from ringcache.node.config import parse_args
from ringcache.node.protocol import MULTIGET_LIMIT, Parser, StorageRequest
from ringcache.node.state import NodeState
from ringcache.node.store import Store


def session(*args: str) -> Session:
    cfg = parse_args(list(args))
    return Session(NodeState(cfg, Store(cfg), log=lambda line: None))


def run(s: Session, data: bytes) -> bytes:
    s.feed(data)
    out = b""
    while True:
        chunk, more = s.step()
        out += chunk
        if not more:
            return out


@pytest.mark.parametrize(
    "request_bytes,reply",
    [
        (b"set a 0 0 1\r\nx\r\n", b"STORED\r\n"),
        (b"set a 0 0 1 noreply\r\nx\r\n", b""),
        (b"get a\r\n", b"END\r\n"),
        (b"bogus\r\n", b"ERROR\r\n"),
        (b"\r\n", b"ERROR\r\n"),
        (b"GET a\r\n", b"ERROR\r\n"),
        (b"set a 0 0\r\n", b"ERROR\r\n"),
        (b"set a x 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        (b"set a 0 x 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        (b"set a 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set a 0 0 1\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        (
            b"set %s 0 0 1\r\nx\r\n" % (b"k" * 251),
            b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
        ),
        (b"get %s\r\n" % (b"k" * 251), b"CLIENT_ERROR bad command line format\r\n"),
        (
            b"delete a 5\r\n",
            b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        ),
        (b"delete a\r\n", b"NOT_FOUND\r\n"),
        (b"delete a 0\r\n", b"NOT_FOUND\r\n"),
        (b"delete a noreply\r\n", b""),
        (b"incr a x\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
        (b"incr a 1\r\n", b"NOT_FOUND\r\n"),
        (b"touch a x\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
        (b"touch a 1\r\n", b"NOT_FOUND\r\n"),
        (b"gat x a\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
        (b"flush_all x\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
        (b"flush_all\r\n", b"OK\r\n"),
        (b"flush_all noreply\r\n", b""),
        (b"verbosity x\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"verbosity 1\r\n", b"OK\r\n"),
        (b"version\r\n", b"VERSION 1.6.18\r\n"),
        (b"shutdown\r\n", b"ERROR: shutdown not enabled\r\n"),
        (b"stats reset\r\n", b"RESET\r\n"),
        (b"stats sizes\r\n", b"STAT sizes_status disabled\r\nEND\r\n"),
        (b"stats bogus\r\n", b"ERROR\r\n"),
        (b"stats cachedump 99 0\r\n", b"CLIENT_ERROR Illegal slab id\r\n"),
        (b"stats detail\r\n", b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
        (b"slabs reassign 1 1\r\n", b"SAME src and dst class are identical\r\n"),
        (b"slabs reassign 99 1\r\n", b"BADCLASS invalid src or dst class id\r\n"),
        (b"slabs reassign 1 2\r\n", b"NOSPARE source class has no spare pages\r\n"),
        (b"slabs automove 1\r\n", b"OK\r\n"),
        (b"slabs automove 9\r\n", b"ERROR\r\n"),
        (b"lru_crawler metadump all\r\n", b"END\r\n"),
        (b"lru_crawler metadump 99\r\n", b"BADCLASS invalid class id\r\n"),
        (b"lru_crawler crawl all\r\n", b"OK\r\n"),
        (b"cas a 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n"),
        (b"set a 0 0 1\nx\r\nget a\n", b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"),
    ],
)
def test_replies(request_bytes, reply):
    assert run(session(), request_bytes) == reply


def test_pipelined_commands_are_answered_in_one_batch():
    s = session()
    s.feed(b"".join(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10) for i in range(10)) + b"get k3 k7\r\n")
    out, more = s.step()
    assert out == b"STORED\r\n" * 10 + b"VALUE k3 0 1\r\n3\r\nVALUE k7 0 1\r\n7\r\nEND\r\n"
    assert not more


def test_a_batch_is_bounded_and_resumes():
    s = session()
    s.feed(b"version\r\n" * 50)
    out, more = s.step(max_requests=20)
    assert out == b"VERSION 1.6.18\r\n" * 20 and more
    assert run(s, b"") == b"VERSION 1.6.18\r\n" * 30


def test_partial_line_and_partial_data_wait_for_more():
    s = session()
    assert run(s, b"se") == b""
    assert run(s, b"t a 0 0 5\r\nab") == b""
    assert run(s, b"cde\r") == b""
    assert run(s, b"\nget a\r\n") == b"STORED\r\nVALUE a 0 5\r\nabcde\r\nEND\r\n"


def test_too_large_value_is_swallowed_without_buffering_and_answered_after_it():
    """As memcached 1.6.18: the error comes once the whole data block has been swallowed."""
    for header in (b"set big 0 0 2000000\r\n", b"ms big 2000000 T0\r\n"):
        s = session()
        assert run(s, header) == b""
        for _ in range(20):
            assert run(s, b"x" * 100000) == b""
            assert s.parser.buffered() == 0
        assert run(s, b"\r\nget big\r\n") == b"SERVER_ERROR object too large for cache\r\nEND\r\n"


def test_a_swallowed_block_that_ends_with_a_read_is_answered_at_once():
    """The last bytes of a too-large value arrive at the very end of a read: nothing is left
    in the buffer, and the error is still answered then (a client waits for it)."""
    s = session()
    header = b"set big 0 0 2000000\r\n"
    buf = bytearray(header + b"x" * 500000)
    assert s.receive(buf, len(buf)) == (b"", False)
    rest = bytearray(b"x" * 1500000 + b"\r\n")
    assert s.receive(rest, len(rest)) == (b"SERVER_ERROR object too large for cache\r\n", False)


def test_huge_declared_length_is_swallowed():
    s = session()
    assert run(s, b"set big 0 0 2147483645\r\nshort\r\n") == b""  # as memcached: no reply yet
    assert s.parser.swallow == 2147483647 - len(b"short\r\n")
    assert s.parser.buffered() == 0


def test_2048_rule_closes_non_get_lines():
    s = session()
    run(s, b"x" * 2049)
    assert s.closing


def test_long_multiget_lines_are_allowed_up_to_a_bound():
    s = session()
    run(s, b"get " + b"k " * 5000)
    assert not s.closing
    assert run(s, b"\r\n") == b"END\r\n"
    s = session()
    run(s, b"get " + b"k" * MULTIGET_LIMIT)
    assert s.closing


def test_http_and_quit_close():
    s = session()
    run(s, b"GET / HTTP/1.1\r\n")
    assert s.closing
    s = session()
    assert run(s, b"version\r\nquit\r\nversion\r\n") == b"VERSION 1.6.18\r\n"
    assert s.closing


def test_long_key_in_multiget_drops_the_pending_batch():
    s = session()
    out = run(s, b"set a 0 0 1\r\na\r\nget a %s\r\nget a\r\n" % (b"k" * 251))
    assert out == b"CLIENT_ERROR bad command line format\r\nVALUE a 0 1\r\na\r\nEND\r\n"


def test_big_multiget_is_streamed_in_chunks():
    s = session()
    run(s, b"".join(b"set k%d 0 0 1000\r\n%s\r\n" % (i, b"v" * 1000) for i in range(1000)))
    s.feed(b"get " + b" ".join(b"k%d" % i for i in range(1000)) + b"\r\n")
    sizes = []
    while True:
        out, more = s.step(max_bytes=64 * 1024)
        sizes.append(len(out))
        if not more:
            break
    # A chunk stops at the first value that takes it past STREAM_CHUNK.
    assert len(sizes) >= 4 and max(sizes) < STREAM_CHUNK + 1100
    assert sum(sizes) == sum(len(b"VALUE k%d 0 1000\r\n" % i) + 1002 for i in range(1000)) + 5


def test_metadump_lists_items():
    s = session()
    run(s, b"set a%20b 3 0 2\r\nhi\r\nset c 0 100 1\r\nx\r\nget c\r\n")
    out = run(s, b"lru_crawler metadump all\r\n")
    lines = out.split(b"\r\n")
    assert lines[-2:] == [b"END", b""]
    assert any(
        line.startswith(b"key=a%2520b exp=-1 ") and b"fetch=no cls=1 size=70" in line
        for line in lines
    )
    assert any(line.startswith(b"key=c exp=") and b"fetch=yes" in line for line in lines)


def test_cachedump():
    s = session()
    run(s, b"set k1 0 0 3\r\nabc\r\n")
    assert run(s, b"stats cachedump 1 0\r\n") == b"ITEM k1 [3 b; 0 s]\r\nEND\r\n"


def test_noreply_on_every_storage_and_error():
    s = session()
    data = (
        b"set a 0 0 1 noreply\r\n1\r\n"
        b"add a 0 0 1 noreply\r\n2\r\n"
        b"replace a 0 0 1 noreply\r\n3\r\n"
        b"append a 0 0 1 noreply\r\n4\r\n"
        b"prepend a 0 0 1 noreply\r\n5\r\n"
        b"incr b 1 noreply\r\n"
        b"touch a 10 noreply\r\n"
        b"delete c noreply\r\n"
        b"set a x 0 1 noreply\r\n"
        b"get a\r\n"
    )
    assert run(s, data) == b"VALUE a 0 3\r\n534\r\nEND\r\n"


def test_parser_never_copies_consumed_bytes_forever():
    p = Parser(lambda nkey, flags, nbytes: True)
    for _ in range(1000):
        p.feed(b"version\r\n")
        assert p.next() == [b"version"]
    assert len(p.buf) < 100


def test_storage_request_fields():
    p = Parser(lambda nkey, flags, nbytes: True)
    p.feed(b"cas k 5 100 3 77 noreply\r\nabc\r\n")
    req = p.next()
    assert isinstance(req, StorageRequest)
    assert (req.key, req.flags, req.exptime, req.nbytes, req.cas, req.noreply, req.data) == (
        b"k",
        5,
        100,
        5,
        77,
        True,
        b"abc\r\n",
    )


def test_cluster_config_get_and_set():
    s = session()
    assert run(s, b"config get cluster\r\n") == b"CONFIG cluster 0 3\r\n0\n\n\r\nEND\r\n"
    assert run(s, b"config set cluster a|10.0.0.1|11211 b||11212\r\n") == b"OK\r\n"
    body = b"1\na|10.0.0.1|11211 b||11212\n"
    assert run(s, b"config get cluster\r\n") == b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (
        len(body),
        body,
    )
    assert run(s, b"config set cluster version=9 a|10.0.0.1|11211\r\n") == b"OK\r\n"
    assert run(s, b"config get cluster\r\n").split(b"\r\n")[1].startswith(b"9\n")
    assert run(s, b"config set cluster version=9 x||1\r\n") == (
        b"CLIENT_ERROR version must be above 9\r\n"
    )
    assert run(s, b"config set cluster nonsense\r\n").startswith(b"CLIENT_ERROR bad cluster member")
    assert run(s, b"config bogus\r\n") == b"ERROR\r\n"


def test_cluster_config_set_is_refused_from_other_hosts():
    cfg = parse_args([])
    remote = Session(NodeState(cfg, Store(cfg), log=lambda line: None), peer="10.1.2.3:40000")
    assert run(remote, b"config set cluster a||1\r\n") == (
        b"CLIENT_ERROR config set cluster is only accepted from loopback or an authenticated connection\r\n"
    )
    assert run(remote, b"config get cluster\r\n").startswith(b"CONFIG cluster 0 ")


def test_cluster_config_set_is_accepted_from_authenticated_remote_peers(tmp_path):
    authfile = tmp_path / "authfile"
    authfile.write_bytes(b"admin:pw\n")
    cfg = parse_args(["-Y", str(authfile)])
    state = NodeState(cfg, Store(cfg), log=lambda line: None)
    remote = Session(state, peer="10.1.2.3:40000")
    assert run(remote, b"config set cluster a||1\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
    assert run(remote, b"set x 0 0 8\r\nadmin pw\r\nconfig set cluster a||1\r\n") == (
        b"STORED\r\nOK\r\n"
    )
    assert state.cluster_members == [b"a||1"]
    # A verified TLS client certificate is proof enough without -Y.
    plain = parse_args([])
    cert_holder = Session(NodeState(plain, Store(plain), log=lambda line: None), peer="10.9.9.9:1")
    cert_holder.verified_cert = True
    assert run(cert_holder, b"config set cluster b||2\r\n") == b"OK\r\n"


# -- meta protocol ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_bytes,reply",
    [
        (b"ms a 2\r\nhi\r\nmg a v\r\n", b"HD\r\nVA 2\r\nhi\r\n"),
        (b"ms a 2 q\r\nhi\r\nmn\r\n", b"MN\r\n"),
        # Errors before the length is known: the data line is read as a command.
        (b"ms a\r\nhi\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        (b"ms a x\r\nhi\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        (b"ms\r\n", b"ERROR\r\n"),
        # Errors after it: the data block is swallowed, even under q.
        (b"ms a 2 zz\r\nhi\r\nmn\r\n", b"CLIENT_ERROR invalid flag\r\nMN\r\n"),
        (b"ms a 2 T1 T2\r\nhi\r\nmn\r\n", b"CLIENT_ERROR duplicate flag\r\nMN\r\n"),
        (b"ms a 2 MX q\r\nhi\r\nmn\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\nMN\r\n"),
        (b"ms a 2 q\r\nhix\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        (b"ms a 1 b\r\nx\r\nmn\r\n", b"CLIENT_ERROR error decoding key\r\nMN\r\n"),
        (b"mg a O" + b"1" * 33 + b"\r\n", b"CLIENT_ERROR opaque token too long\r\n"),
        (b"mg a v q\r\nmn\r\n", b"MN\r\n"),
        (b"md a q\r\nmd a q\r\n", b"NF\r\nNF\r\n"),
        (b"ma a\r\nma a N0 J5 v\r\n", b"NF\r\nVA 1\r\n5\r\n"),
        (b"mz a\r\n", b"ERROR\r\n"),
    ],
)
def test_meta_replies(request_bytes, reply):
    assert run(session(), request_bytes) == reply


def test_ms_data_block_may_arrive_in_pieces_and_holds_any_bytes():
    s = session()
    assert run(s, b"ms k 14 T0 F3\r\nab\r\n") == b""
    assert run(s, b"mg k v\r\n") == b""  # still inside the data block
    assert run(s, b"xx\r\n") == b"HD\r\n"
    assert run(s, b"mg k v f\r\n") == b"VA 14 f3\r\nab\r\nmg k v\r\nxx\r\n"


def test_ms_too_large_is_swallowed_without_buffering():
    s = session("-I", "1m")
    s.feed(b"ms big 2000000 T0\r\n" + b"z" * 1000)
    out, _ = s.step()
    assert out == b""  # answered after the data block, as memcached answers it
    assert s.parser.buffered() == 0
    assert run(s, b"z" * (2000000 - 1000) + b"\r\nmn\r\n") == (
        b"SERVER_ERROR object too large for cache\r\nMN\r\n"
    )


def test_meta_flags_parse_like_memcached():
    from ringcache.node.protocol import b64decode, parse_meta_flags

    of = parse_meta_flags([b"mg", b"a", b"v", b"T30", b"N-1", b"R5", b"q", b"C7", b"MD"], 2)
    assert of.error is None and of.value and of.no_reply and of.vivify and of.locked
    assert (of.exptime, of.autoviv, of.recache, of.req_cas, of.mode) == (30, -1, 5, 7, ord("D"))
    assert parse_meta_flags([b"mg", b"a", b"Tx", b"Fx"], 2).error == (
        "CLIENT_ERROR bad token in command line format"
    )
    assert parse_meta_flags([b"mg", b"a", b"\xffx"], 2).error == "CLIENT_ERROR duplicate flag"
    assert parse_meta_flags([b"mg", b"YWJj", b"b"], 2).key == b"abc"
    assert b64decode(b"YQ==") == b"a"
    assert b64decode(b"YQ===") is None  # five significant characters
    assert b64decode(b"Y!Q=!=") == b"a"  # characters outside the alphabet are skipped
    assert b64decode(b"YQ==YWJj") == b"a"  # decoding stops after the padded block
    assert b64decode(b"Y===") is None
