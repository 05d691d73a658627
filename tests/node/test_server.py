"""The node over real loopback sockets: real clients, limits, timeouts, signals and flags."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pylibmc
import pytest
import trio
from pymemcache.client.base import Client as PymemcacheClient

from ringcache.node import Node, parse_args
from tests.conftest import RawClient, start_node, wait_port


# -- real clients -----------------------------------------------------------------------------
def test_pymemcache(node):
    c = PymemcacheClient(node.address, connect_timeout=2, timeout=2, default_noreply=False)
    assert c.set("k", b"v", expire=100)
    assert c.get("k") == b"v"
    assert c.add("k", b"w") is False
    assert c.replace("k", b"w") is True
    assert c.append("k", b"x") and c.prepend("k", b"y")
    assert c.get("k") == b"ywx"
    _, token = c.gets("k")
    assert c.cas("k", b"z", token) is True
    assert c.cas("k", b"q", token) is False
    assert c.set("n", b"10") and c.incr("n", 5) == 15 and c.decr("n", 20) == 0
    assert c.touch("k", 10) and not c.touch("missing", 10)
    assert c.set_many({"a": b"1", "b": b"2"}) == []
    assert c.get_many(["a", "b", "missing"]) == {"a": b"1", "b": b"2"}
    assert c.delete("a") and c.delete_many(["b"])
    assert c.get("a") is None
    stats = c.stats()
    assert stats[b"curr_items"] >= 2 and stats[b"version"] == b"1.6.18"
    assert c.version() == b"1.6.18"
    assert c.flush_all() and c.get("k") is None
    big = os.urandom(900_000)
    assert c.set("big", big) and c.get("big") == big
    c.close()


def test_pylibmc(node):
    c = pylibmc.Client([node.location], behaviors={"cas": True, "tcp_nodelay": True})
    c.set("k", "v")
    assert c.get("k") == "v"
    c.set_multi({"a": 1, "b": [1, 2]})
    assert c.get_multi(["a", "b", "c"]) == {"a": 1, "b": [1, 2]}
    c.set("n", 5)
    assert c.incr("n", 3) == 8
    _, cas = c.gets("k")
    assert c.cas("k", "w", cas) is True
    assert c.get("k") == "w"
    assert c.delete("k") is True
    assert c.get("k") is None
    assert c.add("k", "x") is True and c.add("k", "y") is False
    stats = dict(c.get_stats())
    assert stats
    c.disconnect_all()


def test_python_memcached(node):
    import memcache

    c = memcache.Client([node.location])
    assert c.set("k", "v")
    assert c.get("k") == "v"
    assert c.set_multi({"a": 1, "b": {"x": 2}}) == []
    assert c.get_multi(["a", "b"]) == {"a": 1, "b": {"x": 2}}
    assert c.set("n", "7") and c.incr("n") == 8
    assert c.delete("k")
    assert c.get("k") is None
    c.disconnect_all()


def test_django_backends(node):
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from django.core.cache.backends.memcached import PyLibMCCache, PyMemcacheCache

    for backend in (PyMemcacheCache, PyLibMCCache):
        cache = backend(node.location, {})
        cache.set("user", {"name": "x"}, 30)
        assert cache.get("user") == {"name": "x"}
        assert cache.add("user", 1) is False
        cache.set_many({"a": 1, "b": 2})
        assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert cache.incr("a") == 2
        with pytest.raises(ValueError):
            cache.incr("missing")
        assert cache.touch("a", 10) is True
        cache.delete_many(["a", "b"])
        assert cache.get("a") is None
        cache.set("zero", 1, 0)  # Django's "expire now"
        assert cache.get("zero") is None
        cache.clear()
        cache.close()


# -- connections ------------------------------------------------------------------------------
def test_meta_memcache_client(node):
    """RevenueCat's meta-memcache speaks only the meta protocol: mg/ms/md/ma, leases, stale."""
    from meta_memcache import (
        CacheClient,
        Key,
        LeasePolicy,
        ServerAddress,
        StalePolicy,
        connection_pool_factory_builder,
    )

    client = CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host="127.0.0.1", port=node.port)],
        connection_pool_factory_fn=connection_pool_factory_builder(),
    )
    assert client.set(key=Key("mm:a"), value={"x": [1, 2]}, ttl=60)
    assert client.get(key=Key("mm:a")) == {"x": [1, 2]}
    assert client.get(key=Key("mm:missing")) is None
    value, cas = client.get_cas(key=Key("mm:a"))
    assert value == {"x": [1, 2]} and cas
    assert client.set(key=Key("mm:a"), value="new", ttl=60, cas_token=cas)
    assert not client.set(key=Key("mm:a"), value="lost", ttl=60, cas_token=cas)
    assert client.get(key=Key("mm:a")) == "new"
    assert client.multi_get(keys=[Key("mm:a"), Key("mm:missing")]) == {
        Key("mm:a"): "new",
        Key("mm:missing"): None,
    }
    # A lease: the first caller on a miss wins (gets None and computes); a second caller
    # that asks before the value is stored finds the lease and gives up after its retries.
    policy = LeasePolicy(ttl=30, miss_retries=2, miss_retry_wait=0.01, wait_backoff_factor=1)
    assert client.get_or_lease(key=Key("mm:lease"), lease_policy=policy) is None
    assert client.get_or_lease(key=Key("mm:lease"), lease_policy=policy) is None
    assert client.set(key=Key("mm:lease"), value="computed", ttl=60)
    assert client.get_or_lease(key=Key("mm:lease"), lease_policy=policy) == "computed"
    # Serve-stale invalidation: the first reader wins (a miss: it refreshes), the others
    # keep reading the old value meanwhile.
    stale = StalePolicy(mark_stale_on_deletion_ttl=30)
    assert client.invalidate(key=Key("mm:lease"), stale_policy=stale)
    assert client.get(key=Key("mm:lease")) is None
    assert client.get(key=Key("mm:lease")) == "computed"
    assert client.delta_initialize(key=Key("mm:n"), delta=5, initial_value=10, initial_ttl=60)
    assert client.delta_and_get(key=Key("mm:n"), delta=5) == 15
    assert client.touch(key=Key("mm:n"), ttl=100)
    assert client.delete(key=Key("mm:n"))
    assert client.get(key=Key("mm:n")) is None
    # Binary keys travel in base64.
    assert client.set(key=Key("mm:ü" + "x" * 300), value=b"long", ttl=60)
    assert client.get(key=Key("mm:ü" + "x" * 300)) == b"long"


def test_connection_limit():
    node = start_node("-c", "2")
    try:
        # The port probe of start_node has closed again; wait until the node has seen that.
        time.sleep(0.2)
        a = RawClient(node.port)
        b = RawClient(node.port)
        assert a.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
        assert b.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
        c = RawClient(node.port)
        assert c.read_until(b"\r\n") == b"ERROR Too many open connections\r\n"
        assert c.closed()
        assert a.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
        a.close()
        time.sleep(0.2)
        d = RawClient(node.port)
        assert d.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
        stats = b.call(b"stats\r\n", b"END\r\n")
        assert b"STAT rejected_connections 1\r\n" in stats
    finally:
        node.stop()


def test_idle_timeout():
    node = start_node("-o", "idle_timeout=1")
    try:
        idle = RawClient(node.port)
        busy = RawClient(node.port)
        for _ in range(6):
            assert busy.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
            time.sleep(0.4)
        assert idle.closed(timeout=0.1)
        assert busy.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
    finally:
        node.stop()


def test_a_client_that_never_reads_does_not_stall_others_or_grow_memory():
    node = start_node("-m", "64")
    try:
        setter = RawClient(node.port)
        value = b"v" * 500_000
        assert setter.call(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value)) == b"STORED\r\n"
        rss_before = node.rss_kb()
        hog = socket.create_connection(node.address)
        hog.setblocking(False)
        sent = 0
        # ~2 GB of replies requested; the node stops reading once the socket buffers fill.
        request = b"get big big big big big big big big\r\n" * 100
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sent < 50_000_000:
            try:
                sent += hog.send(request)
            except BlockingIOError:
                time.sleep(0.01)
        other = RawClient(node.port)
        started = time.monotonic()
        for _ in range(50):
            assert other.call(b"get missing\r\n") == b"END\r\n"
        assert time.monotonic() - started < 2.0
        growth_mb = (node.rss_kb() - rss_before) / 1024
        assert growth_mb < 64, f"RSS grew by {growth_mb:.0f} MB for one non-reading client"
        hog.close()
    finally:
        node.stop()


def test_a_flooding_client_does_not_starve_others(node):
    stop = threading.Event()

    def flood() -> None:
        s = socket.create_connection(node.address)
        s.settimeout(5)
        batch = b"set flood 0 0 1\r\nx\r\nget flood\r\n" * 500
        while not stop.is_set():
            s.sendall(batch)
            s.recv(1 << 20)
        s.close()

    t = threading.Thread(target=flood)
    t.start()
    try:
        time.sleep(0.3)
        c = RawClient(node.port)
        worst = 0.0
        for _ in range(30):
            started = time.monotonic()
            assert c.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
            worst = max(worst, time.monotonic() - started)
        assert worst < 1.0
    finally:
        stop.set()
        t.join(10)


def test_stats_conns_lists_clients(node):
    c = RawClient(node.port)
    out = c.call(b"stats conns\r\n", b"END\r\n")
    assert b":addr tcp:127.0.0.1:" in out and b":state conn_parse_cmd" in out


# -- memory -----------------------------------------------------------------------------------
def test_rss_stays_within_the_memory_limit():
    node = start_node("-m", "16")
    try:
        c = PymemcacheClient(node.address, timeout=10)
        c.set("warm", b"x")
        baseline = node.rss_kb()
        written = 0
        i = 0
        while written < 200 * 1024 * 1024:  # 12x the limit, across many classes
            size = 100 + (i * 7919) % 20000
            c.set_many({f"k{i}-{j}": b"v" * size for j in range(50)})
            written += 50 * size
            i += 1
        growth_mb = (node.rss_kb() - baseline) / 1024
        stats = c.stats()
        assert stats[b"evictions"] > 0
        # -m bounds the page memory; the hash index and Python's own overhead are the rest.
        assert growth_mb < 16 + 24, f"RSS grew by {growth_mb:.1f} MB with -m 16"
        c.close()
    finally:
        node.stop()


# -- process ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_node_cleanly(sig):
    node = start_node()
    c = RawClient(node.port)
    assert c.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
    os.kill(node.pid, sig)
    assert node.proc.wait(timeout=5) == 0
    assert c.closed()
    with pytest.raises(OSError):
        socket.create_connection(node.address, timeout=1)


def test_shutdown_command_with_A():
    node = start_node("-A")
    c = RawClient(node.port)
    c.send(b"shutdown\r\n")
    assert node.proc.wait(timeout=5) == 0


def test_vv_logs_commands_and_replies():
    node = start_node("-vv")
    try:
        c = RawClient(node.port)
        c.call(b"set k 0 0 1\r\nx\r\n")
        c.call(b"get k\r\n", b"END\r\n")
        time.sleep(0.2)
        err = node.stderr()
        assert "new auto-negotiating client connection" in err
        assert "> " not in err.splitlines()[0]
        assert any(line.endswith(" STORED") and line.startswith(">") for line in err.splitlines())
        assert any(line.endswith(" get k") and line.startswith("<") for line in err.splitlines())
    finally:
        node.stop()


def run_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringcache.node", *args], capture_output=True, text=True, timeout=20
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["-U", "1"], "UDP is never served"),
        (["-m", "abc"], "-m"),
        (["-f", "1"], "Factor must be greater than 1"),
        (["-I", "512"], "Item max size cannot be less than 1024 bytes."),
        (["-I", "64m"], "Cannot set item size limit higher than 1/2 of memory max."),
        (["-I", "1500k"], "must be evenly divisible by slab_chunk_max"),
        (["-c", "0"], "Maximum connections must be greater than 0"),
        (["-S"], "not recognized"),
        (["-Z"], "Error loading the certificate chain: (null)"),
        (["-l", "notls:127.0.0.1"], "valid only when SSL is enabled"),
        (["-o", "ssl_verify_mode=9"], "Invalid ssl_verify_mode"),
        (["-o", "ssl_min_version=x"], "could not parse argument to ssl_min_version"),
        (["-o", "ssl_chain_cert"], "Missing ssl_chain_cert argument"),
        (["-o", "ssl_keyformat=2"], "only 1 (PEM)"),
        (["-l", "127.0.0.1:port"], 'Invalid port number: "port"'),
        (["-o", "bogus=1"], 'Illegal suboption "bogus=1"'),
        (["-p", "99999"], "-p"),
        (["extra"], "unexpected argument"),
    ],
)
def test_bad_flags_exit_with_a_message(args, message):
    result = run_node(*args)
    assert result.returncode == 64
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_help_and_version():
    result = run_node("-h")
    assert result.returncode == 0 and "-m, --memory-limit" in result.stdout
    result = run_node("-V")
    assert result.returncode == 0 and "1.6.18" in result.stdout


def test_busy_port_is_a_clear_error(node):
    result = run_node("-p", str(node.port))
    assert result.returncode == 71
    assert f"failed to listen on TCP port {node.port} of 127.0.0.1" in result.stderr


def test_an_address_the_host_does_not_have_is_named():
    result = run_node("-l", "10.255.255.1", "-p", "11211")
    assert result.returncode == 71
    (line,) = result.stderr.splitlines()
    assert (
        line
        == "failed to listen on TCP port 11211 of 10.255.255.1: Cannot assign requested address"
    )


def test_daemon_with_pidfile():
    tmp = Path(tempfile.mkdtemp())
    pidfile = tmp / "node.pid"
    port_file = tmp / "ports"
    env = {**os.environ, "MEMCACHED_PORT_FILENAME": str(port_file)}
    result = subprocess.run(
        [sys.executable, "-m", "ringcache.node", "-p", "0", "-d", "-P", str(pidfile)],
        env=env,
        timeout=20,
    )
    assert result.returncode == 0
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        port = int(port_file.read_text().split()[-1])
        c = RawClient(port)
        assert c.call(b"version\r\n") == b"VERSION 1.6.18\r\n"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()


def test_listens_on_loopback_by_default():
    assert parse_args([]).listen == "127.0.0.1"
    node = start_node()
    try:
        out = RawClient(node.port).call(b"stats settings\r\n", b"END\r\n")
        assert b"STAT inter 127.0.0.1\r\n" in out
    finally:
        node.stop()


# -- in-process, under trio -------------------------------------------------------------------
async def test_cancellation_stops_serving_and_closes_connections():
    cfg = parse_args(["-p", "0"])
    node = Node(cfg, log=lambda line: None)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(node.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"set a 0 0 1\r\nx\r\nget a\r\n")
        received = b""
        while not received.endswith(b"END\r\n"):
            received += await stream.receive_some(1024)
        assert received == b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
        nursery.cancel_scope.cancel()
    assert await stream.receive_some(1024) == b""
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def _call(stream: trio.SocketStream, request: bytes, end: bytes) -> bytes:
    await stream.send_all(request)
    received = b""
    with trio.fail_after(5):
        while not received.endswith(end):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
    return received


async def test_an_error_in_one_connection_closes_only_that_connection(monkeypatch):
    from ringcache.node.store import Store

    real_get = Store.get

    def get(self, key, touch_exptime=None):
        if key == b"boom":
            raise RuntimeError("a bug in the node")
        return real_get(self, key, touch_exptime)

    monkeypatch.setattr(Store, "get", get)
    logged: list[str] = []
    node = Node(parse_args(["-p", "0"]), log=logged.append)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(node.serve)
        other = await trio.open_tcp_stream("127.0.0.1", port)
        victim = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _call(victim, b"get boom\r\n", b"\n") == b""  # closed
        assert await _call(other, b"set a 0 0 1\r\nx\r\nget a\r\n", b"END\r\n") == (
            b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
        )
        fresh = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _call(fresh, b"version\r\n", b"\r\n") == b"VERSION 1.6.18\r\n"
        nursery.cancel_scope.cancel()
    assert any("RuntimeError: a bug in the node" in line for line in logged)


@pytest.mark.parametrize("code", ["ECONNABORTED", "EPROTO", "EPERM"])
async def test_accept_errors_of_one_connection_are_ignored(code):
    import errno as errno_module

    class FlakyListener(socket.socket):
        failures = 2

        def accept(self):
            if FlakyListener.failures:
                FlakyListener.failures -= 1
                raise OSError(getattr(errno_module, code), code)
            return super().accept()

    listener = FlakyListener(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    node = Node(parse_args(["-p", "0"]), log=lambda line: None)
    node.listeners = [listener]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(node.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _call(stream, b"version\r\n", b"\r\n") == b"VERSION 1.6.18\r\n"
        assert FlakyListener.failures == 0
        nursery.cancel_scope.cancel()


async def test_lru_crawler_crawl_runs_in_the_background_in_bounded_steps(monkeypatch):
    from ringcache.node import server as server_module

    monkeypatch.setattr(server_module, "CRAWL_BUDGET", 50)
    # Without the LRU maintainer (whose juggle reclaims expired items at the LRUs' tails),
    # only the crawler reclaims them.
    args = ["-p", "0", "-o", "no_lru_crawler,no_lru_maintainer"]
    node = Node(parse_args(args), log=lambda line: None)
    store = node.store
    for i in range(2000):
        store.store(0, b"e%d" % i, 0, store.clock.realtime(100), b"x\r\n")
    store.clock.process_started -= 200  # now all expired
    store.clock.tick()
    assert store.curr_items == 2000
    budgets = []
    real_crawl = store.crawl

    def crawl(budget=1000, scheduled=True):
        budgets.append((budget, scheduled))
        return real_crawl(budget, scheduled)

    store.crawl = crawl
    async with trio.open_nursery() as nursery:
        port = await nursery.start(node.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # The reply does not wait for the crawl.
        assert await _call(stream, b"lru_crawler crawl all\r\n", b"\r\n") == b"OK\r\n"
        with trio.fail_after(5):
            while store.curr_items:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # Requested: not held to the autocrawl's schedule.
    assert len(budgets) >= 2000 // 50 and set(budgets) == {(50, False)}


def test_wait_port_helper_is_bounded():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(TimeoutError):
            wait_port(1, proc, timeout=0.3)
    finally:
        proc.kill()
        proc.wait()
