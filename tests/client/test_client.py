"""Both clients (every test here runs on the sync and the trio driver) against real node
processes and Debian's memcached, healthy and failing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from urllib.parse import quote

import pytest
from pymemcache.client.base import Client as PymemcacheClient
from pymemcache.exceptions import MemcacheIllegalInputError, MemcacheServerError

from ringcache.client import Client, NoServerAvailable, RingcacheError, ServerError
from tests.conftest import RawClient, ServerProcess
from tests.proxy import Proxy

FAST = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1, "probe_max_interval": 0.5}


@pytest.fixture
def client(nodes, make_client):
    return make_client([n.location for n in nodes], **FAST)


def direct(server: ServerProcess) -> PymemcacheClient:
    return PymemcacheClient(server.address, timeout=2)


def test_operations(client):
    assert client.set("k", b"v", expire=100)
    assert client.get("k") == b"v"
    assert client.get("missing", default="d") == "d"
    assert client.add("k", b"w") is False and client.add("k2", b"w") is True
    assert client.replace("k", b"x") is True and client.replace("nope", b"x") is False
    assert client.append("k", b"y") and client.prepend("k", b"w")
    assert client.get("k") == b"wxy"
    value, token = client.gets("k")
    assert value == b"wxy"
    assert client.cas("k", b"z", token) is True
    assert client.cas("k", b"q", token) is False
    assert client.cas("absent", b"q", token) is None
    assert client.set("n", 10) and client.incr("n", 5) == 15 and client.decr("n", 20) == 0
    assert client.incr("absent", 1) is None
    assert client.touch("k", 10) is True and client.touch("absent", 10) is False
    assert client.delete("k") is True and client.delete("k") is False
    assert client.set("obj", {"a": [1, 2]}) and client.get("obj") == {"a": [1, 2]}
    assert client.set("s", "text") and client.get("s") == "text"
    assert client.set("i", 42) and client.get("i") == 42
    assert set(client.version().values()) == {b"1.6.18"}
    stats = client.stats()
    assert len(stats) == 3 and all(isinstance(s[b"curr_items"], int) for s in stats.values())
    assert client.flush_all() and client.get("n") is None


def test_keys_land_where_the_ring_says(client, nodes):
    keys = [f"user:{i}" for i in range(200)]
    assert client.set_many({k: k.encode() for k in keys}) == []
    by_location = {n.location: n for n in nodes}
    for k in keys:
        owner = by_location[str(client.server_for(k))]
        assert direct(owner).get(k) == k.encode()
    counts = {n.location: 0 for n in nodes}
    for k in keys:
        counts[str(client.server_for(k))] += 1
    assert all(c > 30 for c in counts.values())


def test_multi_key(client):
    values = {f"m{i}": i for i in range(300)}
    assert client.set_many(values, expire=100) == []
    got = client.get_many([*values, "missing"])
    assert got == values
    with_cas = client.gets_many(["m1", "m2"])
    assert with_cas["m1"][0] == 1 and isinstance(with_cas["m1"][1], bytes)
    assert client.delete_many(list(values)[:100])
    assert len(client.get_many(values)) == 200


def test_multi_key_requests_reach_every_node_before_any_reply_is_read(nodes, make_client):
    """Each node answers only after all of them have their request: a serial client would
    need the sum of the delays, the fan-out needs about the largest one."""
    proxies = [Proxy(n.port, delay=0.3) for n in nodes]
    try:
        c = make_client([f"127.0.0.1:{p.port}" for p in proxies], timeout=3, connect_timeout=3)
        keys = [f"k{i}" for i in range(60)]
        c.set_many(dict.fromkeys(keys, 1))
        for p in proxies:
            p.delay = 0.3
        started = time.monotonic()
        assert len(c.get_many(keys)) == 60
        elapsed = time.monotonic() - started
        assert elapsed < 0.8, f"get_many took {elapsed:.2f}s with three 0.3s nodes"
    finally:
        for p in proxies:
            p.close()


def test_key_validation(client):
    for bad in ["a b", "a\nb", "x" * 251, "", "tab\t", b"\x01"]:
        with pytest.raises(MemcacheIllegalInputError):
            client.set(bad, b"v")
        with pytest.raises(MemcacheIllegalInputError):
            client.get(bad)
    assert client.set("x" * 250, b"v") and client.get("x" * 250) == b"v"
    assert client.set("ünïcode", b"v") and client.get("ünïcode") == b"v"


def test_against_real_memcached(memcached, nodes, make_client):
    c = make_client([memcached.location, nodes[0].location], **FAST)
    keys = {f"k{i}": i for i in range(100)}
    assert c.set_many(keys) == []
    assert c.get_many(keys) == keys
    on_memcached = [k for k in keys if str(c.server_for(k)) == memcached.location]
    assert on_memcached and all(direct(memcached).get(k) is not None for k in on_memcached)


def test_thread_safety(client):
    errors = []

    def work(t: int) -> None:
        try:
            for i in range(200):
                key = f"t{t}:{i}"
                assert client.set(key, i)
                assert client.get(key) == i
            assert len(client.get_many([f"t{t}:{i}" for i in range(200)])) == 200
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


# -- failures ---------------------------------------------------------------------------------
def keys_owned_by(client: Client, server: ServerProcess, n: int = 20) -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        key = f"key:{i}"
        if str(client.server_for(key)) == server.location:
            out.append(key)
        i += 1
    return out


def test_killed_node_costs_no_exceptions_and_recovers_within_a_second(client, nodes):
    victim = nodes[1]
    keys = keys_owned_by(client, victim)
    for k in keys:
        assert client.set(k, b"v")
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(5)
    started = time.monotonic()
    assert client.get(keys[0]) is None  # a miss, not an exception
    deadline = started + 1.0
    while time.monotonic() < deadline:
        if client.set(keys[1], b"again") and client.get(keys[1]) == b"again":
            break
    else:
        pytest.fail("set-then-get did not succeed within a second of the kill")
    assert client.node_stats()[victim.location]["state"] == "ejected"
    # The write went to a stand-in and carries the capped TTL (30 s), not "never".
    standin = next(n for n in nodes if n is not victim and direct(n).get(keys[1]) == b"again")
    dump = RawClient(standin.port).call(b"lru_crawler metadump all\r\n", b"END\r\n")
    encoded = quote(keys[1], safe="-._~").encode()
    line = next(x for x in dump.split(b"\r\n") if x.startswith(b"key=%s " % encoded))
    expires = int(line.split(b" exp=")[1].split()[0])
    assert 0 < expires - time.time() <= 31


def test_all_nodes_down_is_fast_misses(nodes, make_client):
    c = make_client([n.location for n in nodes], **FAST)
    for n in nodes:
        os.kill(n.pid, signal.SIGKILL)
        n.proc.wait(5)
    started = time.monotonic()
    for i in range(50):
        assert c.get(f"k{i}") is None
        assert c.set(f"k{i}", b"v") is False
    assert c.get_many(["a", "b"]) == {}
    assert c.set_many({"a": 1}) == ["a"]
    assert time.monotonic() - started < 3
    # With raise_on_error the failures are raised, until every node is ejected: then
    # NoServerAvailable.
    strict = make_client([n.location for n in nodes], raise_on_error=True, **FAST)
    raised = []
    for _ in range(20):
        try:
            strict.get("x")
        except OSError as exc:
            raised.append(exc)
        except NoServerAvailable:
            break
    else:
        pytest.fail("every node is down, yet no NoServerAvailable")
    assert raised and all(isinstance(e, ConnectionRefusedError) for e in raised)


def test_raise_on_error_raises_the_errors_that_happened(nodes, make_client):
    c = make_client([nodes[0].location], raise_on_error=True, **FAST)
    with pytest.raises(ServerError) as raised:
        c.set("big", b"x" * (2 << 20))  # SERVER_ERROR object too large for cache
    assert isinstance(raised.value, MemcacheServerError) and isinstance(
        raised.value, RingcacheError
    )
    assert c.get("k") is None  # the node answered: healthy, the connection still in step
    assert c.node_stats()[nodes[0].location]["failures"] == 0
    os.kill(nodes[0].pid, signal.SIGKILL)
    nodes[0].proc.wait(5)
    time.sleep(0.05)  # the pooled connection, idle since before the kill, is checked and dropped
    with pytest.raises(ConnectionRefusedError):
        c.get("k")


def test_hung_node_costs_no_exceptions_and_no_long_operation(client, nodes):
    victim = nodes[2]
    keys = keys_owned_by(client, victim, 10)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        worst = 0.0
        for k in keys * 3:
            started = time.monotonic()
            client.set(k, b"v")
            client.get(k)
            worst = max(worst, (time.monotonic() - started) / 2)
        assert worst < 1.0
        # Out (the first write around it waited for its debt to be HOLD old: long enough for
        # the prober to have begun).
        assert client.node_stats()[victim.location]["state"] in ("ejected", "probing")
        started = time.monotonic()
        assert client.set(keys[0], b"w") and client.get(keys[0]) == b"w"
        assert time.monotonic() - started < 0.1
    finally:
        os.kill(victim.pid, signal.SIGCONT)


def test_restarted_node_takes_traffic_back_after_a_probe(client, nodes):
    victim = nodes[0]
    keys = keys_owned_by(client, victim, 5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(5)
    for k in keys:
        client.get(k)
    assert client.node_stats()[victim.location]["state"] == "ejected"
    restarted = start_node_on_port(victim.port)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if client.node_stats()[victim.location]["state"] == "live":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the restarted node was not re-admitted within 5 seconds")
        assert client.set(keys[0], b"back")
        assert direct(restarted).get(keys[0]) == b"back"
    finally:
        restarted.stop()


def start_node_on_port(port: int) -> ServerProcess:
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import wait_port

    argv = [sys.executable, "-m", "ringcache.node", "-p", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return ServerProcess(argv, port, proc, Path(os.devnull))


def test_a_memcached_peer_as_stand_in(memcached, nodes, make_client):
    c = make_client([nodes[0].location, memcached.location], **FAST)
    keys = keys_owned_by(c, nodes[0], 5)
    os.kill(nodes[0].pid, signal.SIGKILL)
    nodes[0].proc.wait(5)
    for k in keys:
        c.get(k)
    assert c.set(keys[0], b"v") and direct(memcached).get(keys[0]) == b"v"


@pytest.mark.skipif(shutil.which("memcached") is None, reason="Debian's memcached is not installed")
def test_unix_socket_location(tmp_path, make_client):
    path = tmp_path / "mc.sock"
    extra = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(["memcached", "-s", str(path), "-U", "0", *extra])
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        c = make_client(f"unix:{path}", **FAST)
        assert c.set("k", b"v") and c.get("k") == b"v"
        assert c.get_many(["k", "x"]) == {"k": b"v"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_values_interoperate_with_python_memcached_and_pymemcache(nodes, make_client):
    import memcache
    from pymemcache.client.hash import HashClient
    from pymemcache.serde import pickle_serde

    values = {"int": 42, "str": "text", "bytes": b"\x00raw", "dict": {"a": [1, 2]}, "big": 2**70}
    ours = make_client([nodes[0].location], **FAST)
    python_memcached = memcache.Client([nodes[0].location])
    pymemcache = HashClient([nodes[0].address], serde=pickle_serde)
    for key, value in values.items():
        assert ours.set(key, value)
        assert python_memcached.get(key) == value
        assert pymemcache.get(key) == value
        assert python_memcached.set(key + "-theirs", value)
        assert ours.get(key + "-theirs") == value
    python_memcached.disconnect_all()


def test_a_client_made_before_fork_shares_no_socket_with_the_child(nodes):
    """gunicorn --preload: a client made (and used) before the server forks its workers. The
    child starts afresh — no socket, lock or thread of the parent's — so neither process ever
    reads a reply meant for the other."""
    c = Client([n.location for n in nodes], **FAST)
    for i in range(30):
        assert c.set(f"parent:{i}", i)
    pid = os.fork()
    if pid == 0:  # the child: its own keys, checked
        code = 0
        try:
            for r in range(100):
                for i in range(30):
                    c.set(f"child:{i}", r * 100 + i)
                    if c.get(f"child:{i}") != r * 100 + i or c.get(f"parent:{i}") not in (
                        None,
                        *range(i, 100 * 100, 100),
                    ):
                        code = 1
        except BaseException:
            code = 2
        os._exit(code)
    wrong = 0
    for r in range(100):
        for i in range(30):
            c.set(f"parent:{i}", r * 100 + i)
            if c.get(f"parent:{i}") != r * 100 + i:
                wrong += 1
    _, status = os.waitpid(pid, 0)
    c.close()
    assert wrong == 0 and os.waitstatus_to_exitcode(status) == 0
