"""TLS (``-Z``) and text-protocol authentication (``-Y``) on a node, each checked against
Debian's memcached 1.6.18 started with the same flags and files: the same bytes in, the same
bytes out, the same connections closed."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from pymemcache.client.base import Client as PyMemcacheClient

from ringcache.node.auth import AuthFileError, parse_authfile
from tests.conftest import (
    MEMCACHED,
    RawClient,
    free_port,
    needs_memcached,
    start_memcached,
    start_node,
)
from tests.node.test_differential import SCRIPTS, normalise, run_script, same_lines

AUTHFILE = b"alice:secret\nbob:pw2\r\n"

# Each case is what one fresh connection sends (a list: sent one after another, with a pause
# between, so that each part is one read on the server).
AUTH_CASES = [
    [b"get foo\r\n"],
    [b"set a 0 0 12\r\nalice secret\r\nget foo\r\n"],
    [b"set a 0 0 12\r\nalice secreX\r\n", b"get foo\r\n"],
    [b"set a 0 0 7\r\nbob pw2\r\nset k 0 0 1\r\nv\r\nget k\r\n"],
    [b"set a 0 0 5\r\nalice\r\n"],
    [b"set a 0 0 12\r\nalice secretXX"],
    [b"set a 0 0\r\n", b"set a 0 0 -1\r\n", b"set a 0 0 \r\n\r\n"],
    [b"set a 0 0 4294967298\r\nal\r\n"],
    [b"mg foo v\r\nset a 0 0 12\r\nalice secret\r\nmg foo v\r\n"],
    [b"get x\r\n", b"set a 0 0 12\r\nalice secret\r\n", b"get x\r\n"],
    [b"x" * 3000],
    [b"x" * 2000],
    [b"set a 0 0 100000\r\n" + b"y" * 100002],
    [b"set a 0 0 16382\r\nalice secret" + b" " * 16370 + b"\r\nget k\r\n"],
    [b"set a 0 0 16383\r\nalice secret" + b" " * 16371 + b"\r\n"],
    [b"set a 0 0 13\r\nalice  secret\r\n", b"set a 0 0 13\r\nalice secret \r\n"],
    [b"set a 0 0 12\r\nalice\0secret\r\n"],
    [b"\r\n", b"\n"],
    [b"set a 0 0 12 noreply\r\nalice secret\r\nget x\r\n"],
    [b"set a 0 0 0\r\n\r\n"],
    [b"set a 0 0 12\nalice secret\r\nset b 0 0 1\r\nx\r\nget b\r\n"],
    [b"SET a 0 0 12\r\nalice secret\r\n"],
    [b"set a 0 0 12\r\nbob pw2 extra\r\n", b"get x\r\n"],
    [b"set a 0 0 ", b"7\r\nbob ", b"pw2\r\nget x\r\n"],
    [b"set a 0 0 12\r\nalice secret\r\nset a 0 0 12\r\nalice secret\r\n"],
    [b"set a 0 0 12\r\nmallory evil\r\n" * 25 + b"set a 0 0 7\r\nbob pw2\r\nget z\r\n"],
    [b"get a\r\n" * 30],
]


def _exchange(port: int, parts: list[bytes], tls: ssl.SSLContext | None = None) -> bytes:
    client = RawClient(port, tls=tls)
    out = b""
    try:
        for part in parts:
            try:
                client.send(part)
                out += client.read_for(quiet=0.15, limit=5)
            except OSError:
                return out + b"<closed>"

        return out + (b"<closed>" if client.closed(0.2) else b"")
    finally:
        client.close()


@pytest.fixture(scope="module")
def authfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "authfile"
    path.write_bytes(AUTHFILE)
    return str(path)


@pytest.fixture(scope="module")
def auth_servers(authfile):
    if MEMCACHED is None:
        pytest.skip("Debian's memcached binary is not installed; CI always installs it")
    reference = start_memcached("-Y", authfile)
    node = start_node("-Y", authfile)
    yield reference, node
    reference.stop()
    node.stop()


def _stat(port: int, name: bytes, login: bytes = b"set a 0 0 7\r\nbob pw2\r\n") -> bytes:
    reply = _exchange(port, [login + b"stats\r\n"])
    for line in reply.split(b"\r\n"):
        if line.startswith(b"STAT " + name + b" "):
            return line.split()[2]
    raise AssertionError(f"no {name!r} in {reply!r}")


@pytest.mark.parametrize("parts", AUTH_CASES, ids=[repr(c[0][:28]) for c in AUTH_CASES])
def test_auth_replies_match_memcached(auth_servers, parts):
    reference, node = auth_servers
    expected = _exchange(reference.port, parts)
    assert _exchange(node.port, parts) == expected


def test_auth_counters_and_settings_match_memcached(auth_servers, authfile):
    counts = {}
    for server in auth_servers:
        before = (_stat(server.port, b"auth_cmds"), _stat(server.port, b"auth_errors"))
        _exchange(server.port, [b"set a 0 0 12\r\nalice secreX\r\n"])
        _exchange(server.port, [b"set a 0 0 12\r\nalice secret\r\n"])
        _exchange(server.port, [b"set a 0 0 5\r\nalice\r\n"])
        after = (_stat(server.port, b"auth_cmds"), _stat(server.port, b"auth_errors"))
        counts[server.port] = [int(a) - int(b) for a, b in zip(after, before, strict=True)]
        settings = _exchange(server.port, [b"set a 0 0 7\r\nbob pw2\r\nstats settings\r\n"])
        assert b"STAT auth_enabled_ascii " + authfile.encode() + b"\r\n" in settings
    reference, node = auth_servers
    # Each _stat logs in once more: 3 + 1 commands, 1 error between the two readings.
    assert counts[node.port] == counts[reference.port] == [4, 1]


def test_the_gate_keeps_other_connections_apart(auth_servers):
    """One connection authenticated does not let another one in, and a stalled half-sent
    credential on one connection delays no one."""
    _, node = auth_servers
    stalled = RawClient(node.port)
    stalled.send(b"set a 0 0 500\r\nalice")
    other = RawClient(node.port)
    assert other.call(b"set a 0 0 12\r\nalice secret\r\nversion\r\n", b"VERSION 1.6.18\r\n")
    stranger = RawClient(node.port)
    assert stranger.call(b"get a\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
    assert not stalled.closed(0.1)
    for client in (stalled, other, stranger):
        client.close()


@pytest.mark.parametrize(
    "data,entries",
    [
        (b"a:b\n", ((b"a", b"b"),)),
        (b"a:b\r\nc:d", ((b"a", b"b"), (b"c", b"d"))),
        (b"a:b:c\n", ((b"a", b"b:c"),)),
        (b":\n", ((b"", b""),)),
        (b"".join(b"u%d:p\n" % i for i in range(10)), tuple((b"u%d" % i, b"p") for i in range(8))),
        (b"a:" + b"x" * 300 + b"\n", ((b"a", b"x" * 253), (b"x" * 47, None))),
    ],
)
def test_authfile_is_read_as_memcached_reads_it(data, entries):
    if entries[-1][1] is None:
        # An over-long line goes on as a new entry, which has no ':' here: malformed.
        with pytest.raises(AuthFileError, match="malformed entry"):
            parse_authfile(data)
        return
    assert parse_authfile(data) == entries


@needs_memcached
@pytest.mark.parametrize(
    "content,message",
    [
        (b"nocolon\n", "malformed entry"),
        (b"a:b\n\nc:d\n", "malformed entry"),
        (None, "Could not open"),
    ],
)
def test_bad_authfiles_stop_both_servers_alike(tmp_path, content, message):
    path = tmp_path / "authfile"
    if content is not None:
        path.write_bytes(content)
    extra = ["-u", "root"] if os.geteuid() == 0 else []
    commands = [
        [MEMCACHED, "-p", str(free_port()), "-U", "0", *extra, "-Y", str(path)],
        [sys.executable, "-m", "ringcache.node", "-p", "0", "-Y", str(path)],
    ]
    for argv in commands:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert result.returncode == 1, argv[0]
        assert message in result.stderr


def test_sighup_reloads_the_authfile_and_a_broken_one_keeps_the_old(tmp_path):
    path = tmp_path / "authfile"
    path.write_bytes(b"alice:one\n")
    node = start_node("-Y", str(path))
    try:
        login = b"set a 0 0 %d\r\nalice %s\r\n"
        assert _exchange(node.port, [login % (9, b"one")]) == b"STORED\r\n"
        path.write_bytes(b"alice:two\n")
        os.kill(node.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while _exchange(node.port, [login % (9, b"two")]) != b"STORED\r\n":
            assert time.monotonic() < deadline, "SIGHUP did not reload the authfile"
            time.sleep(0.05)
        path.write_bytes(b"broken\n")
        os.kill(node.pid, signal.SIGHUP)
        time.sleep(0.3)
        assert _exchange(node.port, [login % (9, b"two")]) == b"STORED\r\n"
        assert "malformed entry" in node.stderr()
    finally:
        node.stop()


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_servers(tls_files):
    if MEMCACHED is None:
        pytest.skip("Debian's memcached binary is not installed; CI always installs it")
    reference = start_memcached(*tls_files.server_flags())
    node = start_node(*tls_files.server_flags())
    yield reference, node
    reference.stop()
    node.stop()


# Scripts without pauses or closes, replayed over TLS (the whole set runs in plaintext).
TLS_SCRIPTS = [
    s
    for s in SCRIPTS
    if not any(isinstance(step, float) for step in s[1])
    and not any(word in s[0] for word in ("quit", "shutdown", "HTTP", "conn", "verbosity"))
][::4]


@pytest.mark.parametrize("name,steps", TLS_SCRIPTS, ids=[s[0] for s in TLS_SCRIPTS])
def test_same_replies_over_tls(tls_servers, tls_files, name, steps):
    reference, node = tls_servers
    ctx = tls_files.client_context()
    expected = run_script(reference.port, steps, tls=ctx)
    actual = run_script(node.port, steps, tls=ctx)
    if not same_lines(normalise(actual), normalise(expected)):
        assert normalise(actual) == normalise(expected)


def _settings(port: int, ctx: ssl.SSLContext, prefix: bytes) -> list[bytes]:
    reply = _exchange(port, [b"stats settings\r\n"], tls=ctx)
    return [line for line in reply.split(b"\r\n") if line.startswith(prefix)]


@needs_memcached
def test_tls_settings_lines_match_memcached(tls_files):
    flags = tls_files.server_flags(
        f"ssl_ca_cert={tls_files.ca_cert}",
        "ssl_verify_mode=2",
        "ssl_min_version=3",
        "ssl_ciphers=ECDHE+AESGCM",
        "ssl_wbuf_size=32",
        "ssl_session_cache",
    )
    lines = []
    for start in (start_memcached, start_node):
        server = start(*flags)
        try:
            ctx = tls_files.client_context(cert=True)
            lines.append(_settings(server.port, ctx, b"STAT ssl_"))
            stats = _exchange(server.port, [b"stats\r\n"], tls=ctx)
            names = [line.split()[1] for line in stats.split(b"\r\n") if b" ssl_" in line]
            assert names == [b"ssl_new_sessions", b"ssl_handshake_errors"]
            assert b"STAT time_since_server_cert_refresh " in stats
            assert _exchange(server.port, [b"refresh_certs\r\n"], tls=ctx) == b"OK\r\n"
        finally:
            server.stop()
    assert lines[1] == lines[0]
    assert b"STAT ssl_verify_mode 3" in lines[0]


@needs_memcached
def test_required_client_certificate(tls_files):
    flags = tls_files.server_flags(f"ssl_ca_cert={tls_files.ca_cert}", "ssl_verify_mode=2")
    for start in (start_memcached, start_node):
        server = start(*flags)
        try:
            ok = _exchange(server.port, [b"version\r\n"], tls=tls_files.client_context(cert=True))
            assert ok == b"VERSION 1.6.18\r\n"
            try:
                refused = _exchange(server.port, [b"version\r\n"], tls=tls_files.client_context())
            except (ssl.SSLError, ConnectionResetError):
                refused = b"<closed>"
            assert refused == b"<closed>", start.__name__
        finally:
            server.stop()


def _plaintext(port: int, data: bytes) -> tuple[bool, bool]:
    """(closed, answered in plaintext) for ``data`` sent without TLS."""
    client = RawClient(port)
    try:
        client.send(data)
        reply = client.read_for(quiet=0.3, limit=5)
        closed = client.closed(1.0)
        return closed, reply.startswith((b"VERSION", b"ERROR", b"END"))
    except (ConnectionResetError, BrokenPipeError):
        return True, False
    finally:
        client.close()


@pytest.mark.parametrize(
    "data",
    [b"version\r\n", b"get foo\r\n" * 100, b"\x16\x03\x01\x00\x50" + b"\x01" * 30, b"\0" * 5000],
    ids=["text", "pipelined", "truncated-hello", "zeros"],
)
def test_bad_tls_input_closes_like_memcached(tls_servers, tls_files, data):
    reference, node = tls_servers
    ctx = tls_files.client_context()
    bystander = RawClient(node.port, tls=ctx)
    assert bystander.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
    expected = _plaintext(reference.port, data)
    actual = _plaintext(node.port, data)
    if data.startswith(b"\x16"):
        # A ClientHello cut short: both wait for the rest (neither closes nor answers).
        assert expected == actual == (False, False)
    else:
        assert expected == actual == (True, False)
    assert bystander.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
    bystander.close()


def test_a_stalled_handshake_delays_no_one(tls_servers, tls_files):
    _, node = tls_servers
    stalled = [socket.create_connection(node.address) for _ in range(5)]
    stalled[0].sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    try:
        started = time.monotonic()
        client = RawClient(node.port, tls=tls_files.client_context())
        assert client.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
        assert time.monotonic() - started < 2
        client.close()
        stalled[1].sendall(b"\x16\x03\x01\x00\x05hello")  # a record that is no ClientHello
        stalled[1].settimeout(5)
        assert stalled[1].recv(100).startswith(b"\x15")  # a TLS alert, then the close
        assert _stat_tls(node.port, tls_files, b"ssl_handshake_errors").isdigit()
    finally:
        for sock in stalled:
            sock.close()


def _stat_tls(port, tls_files, name: bytes) -> bytes:
    reply = _exchange(port, [b"stats\r\n"], tls=tls_files.client_context())
    for line in reply.split(b"\r\n"):
        if line.startswith(b"STAT " + name + b" "):
            return line.split()[2]
    raise AssertionError(f"no {name!r}")


@needs_memcached
def test_notls_listener_serves_plaintext_beside_tls(tls_files):
    for start in (start_memcached, start_node):
        tls_port, plain_port = free_port(), free_port()
        server = start(
            "-l",
            f"127.0.0.1:{tls_port},notls:127.0.0.1:{plain_port}",
            *tls_files.server_flags(),
        )
        try:
            plain = RawClient(plain_port)
            assert plain.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
            secure = RawClient(tls_port, tls=tls_files.client_context())
            assert secure.call(b"get k\r\n", b"END\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
            assert _plaintext(tls_port, b"get k\r\n") == (True, False)
            plain.close()
            secure.close()
        finally:
            server.stop()


def test_pymemcache_over_tls_with_auth(tls_files, authfile):
    """pymemcache with ``tls_context`` against a node with -Z and -Y: big values, big
    multigets and several threads at once come back intact."""
    node = start_node(*tls_files.server_flags(), "-Y", authfile, "-I", "2m", "-m", "256")
    try:
        ctx = tls_files.client_context()

        def connect() -> PyMemcacheClient:
            client = PyMemcacheClient(node.address, tls_context=ctx, timeout=10)
            assert client.set("login", b"alice secret", noreply=False)  # the -Y login
            return client

        client = connect()
        big = os.urandom(1_500_000)
        assert client.set("big", big, noreply=False)
        assert client.get("big") == big
        values = {f"k{i}": os.urandom(10_000) for i in range(300)}
        assert client.set_many(values, noreply=False) == []
        assert client.get_many(list(values)) == values
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                own = connect()
                for i in range(150):
                    key, value = f"t{n}-{i}", b"%d" % (n * 1000 + i)
                    own.set(key, value, noreply=False)
                    assert own.get(key) == value
                own.close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        stranger = PyMemcacheClient(node.address, tls_context=ctx, timeout=5)
        with pytest.raises(Exception, match="unauthenticated"):
            stranger.get("big")
        stranger.close()
        client.close()
    finally:
        node.stop()
