"""The cache never lies across failovers and returns: traffic that overwrites, deletes (some
values with short TTLs) and re-reads its own keys checks every read against what it last wrote
(tests/failover/checked.py) while a node stalls, is blackholed, flaps, or has its replica out.
Zero wrong reads in every scenario, and no exception reaching the application.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ringcache.client import Client, Ring, Server, parse_location
from ringcache.cluster.rebalance import MOVERS_KEYS, PublishError, metadump, published, rebalance
from tests.conftest import (
    MEMCACHED,
    ServerProcess,
    free_port,
    next_second,
    start_again,
    start_memcached,
    start_node,
)
from tests.failover.checked import CheckedTraffic
from tests.failover.harness import OPTIONS
from tests.proxy import Proxy

RINGCACHE = [sys.executable, "-m", "ringcache.cluster.cli"]

pytestmark = pytest.mark.failover


def settle(traffic: CheckedTraffic, location: str, timeout: float = 5.0) -> None:
    """Wait until every client of ``traffic`` has re-admitted ``location``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.node_stats()[location]["state"] == "live" for c in traffic.clients):
            return
        time.sleep(0.05)
    raise AssertionError(f"{location} was not re-admitted within {timeout}s")


def check(traffic: CheckedTraffic, name: str) -> None:
    figures = traffic.figures()
    print(f"\n[never lies] {name}: {figures}")
    assert traffic.errors == []
    assert traffic.wrong_reads() == 0, figures
    assert all(m["reads"] > 100 for m in figures.values())


def test_sigstopped_node_returns_without_serving_what_was_replaced(local_cluster):
    lc, base = local_cluster
    with CheckedTraffic(lc.locations()) as t:
        lc.pause(base)
        time.sleep(3.0)  # writes and deletes of its keys go to stand-ins, journaled
        lc.resume(base)
        settle(t, f"127.0.0.1:{base}")
        time.sleep(3.0)  # reads of those keys on the returned node, short TTLs running out
        journals = [c.node_stats()[f"127.0.0.1:{base}"] for c in t.clients]
    check(t, "SIGSTOP 3 s")
    assert all(j["journal"] == 0 and j["journal_flushes"] == 0 for j in journals)


@pytest.fixture
def secured_nodes(tls_files, tmp_path):
    """Three nodes with TLS and logins; the app's login and TLS options for clients."""
    authfile = tmp_path / "authfile"
    authfile.write_text("app:s3cret\n")
    flags = [*tls_files.server_flags(), "-Y", str(authfile)]
    nodes = [start_node(*flags) for _ in range(3)]
    options = {"tls": tls_files.client_context(), "username": "app", "password": "s3cret"}
    yield nodes, flags, authfile, options
    for node in nodes:
        node.stop()


def test_secured_sigstopped_node_returns_without_serving_what_was_replaced(secured_nodes):
    """The SIGSTOP scenario over TLS with logins: the journal is replayed on the returning
    node through the same TLS connection and login as everything else."""
    nodes, _, _, options = secured_nodes
    with CheckedTraffic([n.location for n in nodes], **options) as t:
        os.kill(nodes[0].pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(nodes[0].pid, signal.SIGCONT)
        settle(t, nodes[0].location)
        time.sleep(3.0)
    check(t, "SIGSTOP 3 s, TLS + login")


def test_a_refused_login_keeps_the_node_out_until_a_probe_logs_in(secured_nodes):
    """A node restarted with an authfile that lacks the application's user refuses every new
    connection: it is ejected like a dead node (misses, no exception), probed with real
    logins, and re-admitted only once a SIGHUP has loaded a file that lets the user in."""
    nodes, flags, authfile, options = secured_nodes
    port = nodes[0].port
    with CheckedTraffic([n.location for n in nodes], **options) as t:
        nodes[0].proc.kill()
        nodes[0].proc.wait(10)
        authfile.write_text("someone-else:pw\n")
        nodes[0] = start_node(*flags, "-p", str(port))
        time.sleep(2.0)
        assert all(c.node_stats()[nodes[0].location]["state"] != "live" for c in t.clients)
        authfile.write_text("app:s3cret\n")
        os.kill(nodes[0].pid, signal.SIGHUP)
        settle(t, nodes[0].location)
        time.sleep(2.0)
    check(t, "login refused, then restored by SIGHUP")


def test_blackholed_node_returns_without_serving_what_was_replaced(local_cluster):
    lc, base = local_cluster
    hole = Proxy(base)
    try:
        locations = [hole.location, *lc.locations()[1:]]
        with CheckedTraffic(locations) as t:
            hole.blocked.set()
            time.sleep(2.5)
            hole.blocked.clear()
            settle(t, hole.location)
            time.sleep(2.5)
        check(t, "blackhole 2.5 s")
    finally:
        hole.close()


def test_flapping_node(local_cluster):
    lc, base = local_cluster
    with CheckedTraffic(lc.locations()) as t:
        for _ in range(4):
            lc.pause(base + 1)
            time.sleep(0.8)
            lc.resume(base + 1)
            time.sleep(0.6)
        settle(t, f"127.0.0.1:{base + 1}")
        time.sleep(2.0)
    check(t, "flapping node")


def test_journal_overflow_flushes_the_returning_node(local_cluster):
    lc, base = local_cluster
    with CheckedTraffic(lc.locations(), journal_size=5) as t:
        lc.pause(base + 2)
        time.sleep(2.0)
        lc.resume(base + 2)
        settle(t, f"127.0.0.1:{base + 2}")
        time.sleep(2.0)
        flushes = [c.node_stats()[f"127.0.0.1:{base + 2}"]["journal_flushes"] for c in t.clients]
    check(t, "journal overflow")
    assert all(f >= 1 for f in flushes)


def test_replica_out_during_writes(local_cluster):
    lc, base = local_cluster
    with CheckedTraffic(lc.locations(), replicas=2) as t:
        lc.pause(base + 1)
        time.sleep(2.5)
        lc.resume(base + 1)
        settle(t, f"127.0.0.1:{base + 1}")
        time.sleep(2.5)
    check(t, "replicas=2, one copy's node out")


def test_a_returning_nodes_untouched_keys_keep_hitting(local_cluster):
    """Only the keys written or deleted while the node was out are dropped from it: every
    other key it holds still hits after it is re-admitted."""
    lc, base = local_cluster
    location = f"127.0.0.1:{base}"
    client = Client(lc.locations(), **OPTIONS)
    keys = [k for k in (f"u{i}" for i in range(3000)) if str(client.server_for(k)) == location]
    assert client.set_many({k: k for k in keys}) == []
    lc.pause(base)
    client.get(keys[0])
    client.get(keys[1])  # two failures: ejected
    touched = keys[: len(keys) // 10]
    for k in touched:  # overwritten and deleted on the stand-in meanwhile
        client.set(k, "new")
        client.delete(k)
    lc.resume(base)
    deadline = time.monotonic() + 5
    while client.node_stats()[location]["state"] != "live":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    untouched = keys[len(touched) :]
    still = sum(client.get(k) == k for k in untouched)
    print(f"\n[never lies] returning node: {still} of {len(untouched)} untouched keys hit")
    assert all(client.get(k) is None for k in touched)
    assert still == len(untouched)
    client.close()


def fill(locations: list[str], n: int) -> None:
    """``n`` keys that nobody reads, so that a move takes seconds."""
    client = Client(locations, **OPTIONS)
    for i in range(0, n, 1000):
        assert client.set_many({f"filler:{j}": b"x" * 200 for j in range(i, i + 1000)}) == []
    client.close()


def test_a_slow_add_then_remove_under_overwrites_and_deletes(local_cluster):
    lc, _ = local_cluster
    old = parse_location(lc.locations())
    fill(lc.locations(), 30000)
    with CheckedTraffic(lc.locations(), discovery=True, discovery_interval=0.1) as t:
        time.sleep(1.0)
        member = lc.add()
        new = [*old, parse_location(member.location)[0]]
        started = time.monotonic()
        added = rebalance(old, new, grace=0.5)
        add_s = time.monotonic() - started
        time.sleep(1.0)
        started = time.monotonic()
        removed = rebalance(new, old, grace=0.5)
        remove_s = time.monotonic() - started
        time.sleep(1.0)
    print(f"\n[never lies] add: {added} in {add_s:.1f}s; remove: {removed} in {remove_s:.1f}s")
    check(t, "slow add then remove")
    assert added["copied"] > 5000 and removed["copied"] > 5000


def items(servers: list[Server]) -> int:
    with Client([str(s) for s in servers]) as client:
        return sum(int(st[b"curr_items"]) for st in client.stats().values())


@pytest.mark.parametrize("lost", ["before the move", "mid-copy"])
def test_a_remove_copies_nothing_the_clients_owe_the_leaving_node(local_cluster, lost):
    """The clients reach the node being removed through a proxy (on 127.0.0.2, the node's
    port: the same server name); the mover reaches it directly. The proxy holds the clients'
    traffic before the move (they write its keys around it, on the nodes that will own them)
    or once copies arrive (its deletes as the keys' previous owner are journaled): either way
    after a debt registered for it, and the old values stay on it. The mover must copy
    nothing more from it once it is owed: a copy would be read on the new owner."""
    lc, _ = local_cluster
    old = parse_location(lc.locations())
    leaving = old[0]
    fill(lc.locations(), 30000)
    hole = Proxy(leaving.port, listen=("127.0.0.2", leaving.port))
    through = [Server(leaving.host, leaving.port, ip="127.0.0.2"), *old[1:]]
    try:
        with CheckedTraffic(through, discovery=True, discovery_interval=0.1) as t:
            time.sleep(1.0)
            if lost == "before the move":
                hole.blocked.set()
                time.sleep(1.5)  # ejected; its keys overwritten and deleted around it
            before = items(old[1:])
            result: dict = {}
            mover = threading.Thread(
                target=lambda: result.update(rebalance(old, old[1:], grace=0.5))
            )
            mover.start()
            if lost == "mid-copy":
                deadline = time.monotonic() + 20
                while items(old[1:]) < before + 100:  # the first copies are arriving
                    assert time.monotonic() < deadline and mover.is_alive()
                    time.sleep(0.02)
                hole.blocked.set()
            mover.join(60)
            time.sleep(1.0)
        print(f"\n[never lies] remove, the leaving node lost {lost}: {result}")
        check(t, f"remove, leaving node lost {lost}")
        assert result["owed"] == [str(leaving)]
    finally:
        hole.close()


def test_a_node_removed_while_stopped_and_re_added_warm_serves_nothing_from_before(tmp_path):
    """A node stopped for a warm restart (SIGUSR1) is removed while it is down (it moves
    nothing: skipped), the application deletes every key, then the node comes back with
    every item it held and is added again under traffic. No client wrote around it (no debt
    names it), and the plan names only keys a member holds: the values it kept are read
    unless the mover empties it before it joins."""
    from ringcache.cluster.rebalance import publish

    servers = [start_node("-p", str(free_port()), "-e", str(tmp_path / "memory"))]
    servers += [start_node() for _ in range(2)]
    try:
        members = [Server("127.0.0.1", s.port) for s in servers]
        publish(members, members, 2)
        options = {"discovery": True, "discovery_interval": 0.1}
        with CheckedTraffic([s.location for s in servers], **options) as before:
            time.sleep(1.5)
        servers[0].proc.send_signal(signal.SIGUSR1)
        assert servers[0].proc.wait(timeout=30) == 0
        removed = rebalance(members, members[1:], grace=0.5)
        assert removed["skipped"] == [str(members[0])]
        keys = [f"{label}:{i}" for label in before.models for i in range(before.keys)]
        with Client([str(m) for m in members[1:]], **OPTIONS) as client:
            assert client.delete_many(keys)
        with CheckedTraffic([str(m) for m in members[1:]], seed=8, **options) as t:
            time.sleep(1.0)
            next_second()
            servers[0] = start_again(servers[0])  # warm: every item it held
            assert "[restart]" not in servers[0].stderr().split("Gracefully stopping")[-1]
            added = rebalance(members[1:], members, grace=0.5)
            time.sleep(2.5)
        print(f"\n[never lies] re-added warm after a remove while stopped: {added}")
        check(t, "a node removed while stopped, re-added warm")
        assert added["cleared"] > 0
    finally:
        for server in servers:
            server.stop()


def test_an_interrupted_move_re_run_completes_without_a_lie(local_cluster):
    lc, _ = local_cluster
    old = parse_location(lc.locations())
    fill(lc.locations(), 30000)
    with CheckedTraffic(lc.locations(), discovery=True, discovery_interval=0.1) as t:
        member = lc.add()
        new = [*old, parse_location(member.location)[0]]
        mover = subprocess.Popen(
            [*RINGCACHE, "--location", ";".join(map(str, old)), "rebalance",
             "--to", ";".join(map(str, new)), "--grace", "0.5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while Client([member.location]).stats()[member.location][b"curr_items"] < 1000:
            assert time.monotonic() < deadline and mover.poll() is None
            time.sleep(0.05)
        mover.kill()  # mid-copy: the moving membership is published, half the keys moved
        mover.wait(10)
        time.sleep(1.0)
        result = rebalance(old, new, grace=0.5)
        time.sleep(1.0)
    print(f"\n[never lies] re-run after the mover was killed: {result}")
    check(t, "interrupted move, re-run")
    ring = Ring(new)
    for server in old:  # nothing left behind on a server that no longer owns it (but the
        # killed mover's lock, on every node until its TTL)
        left = [e.key for e in metadump(server) if not e.key.startswith(MOVERS_KEYS)]
        assert all(ring.get(key).name == server.name for key in left)


def test_remove_of_a_dead_node(local_cluster):
    lc, base = local_cluster
    fill(lc.locations(), 3000)
    lc.kill(base + 1)
    result = subprocess.run(
        [*RINGCACHE, "--run-dir", str(lc.run_dir), "remove", f"127.0.0.1:{base + 1}", "--grace", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{base + 1} did not answer" in result.stdout
    config = published(parse_location(lc.locations()))
    assert config is not None and len(config.servers) == 2


def test_a_refused_publish_is_an_error_naming_the_node(local_cluster, memcached):
    lc, _ = local_cluster
    old = parse_location(lc.locations())
    new = [*old, parse_location(memcached.location)[0]]  # memcached refuses config set
    with pytest.raises(PublishError) as raised:
        rebalance(old, new, grace=0)
    assert raised.value.servers == [new[-1]] and memcached.location in str(raised.value)


def signal_and_settle(pid: int, sig: int) -> None:
    """``sig`` to ``pid``; for SIGSTOP, return once every thread of it is stopped (a thread
    running on the other core may otherwise still answer a request sent just after)."""
    os.kill(pid, sig)
    if sig != signal.SIGSTOP:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)


class Outage:
    """Takes the first of three servers out and brings it back: SIGSTOP/SIGCONT, or a warm
    restart (SIGUSR1, then the same command line with ``-e``: it comes back with every item
    it held, which the clients must treat as a returning node's)."""

    def __init__(self, servers: list[ServerProcess], warm: bool) -> None:
        self.servers = servers
        self.warm = warm
        self.locations = [s.location for s in servers]

    def out(self) -> None:
        first = self.servers[0]
        if not self.warm:
            signal_and_settle(first.pid, signal.SIGSTOP)
            return
        first.proc.send_signal(signal.SIGUSR1)
        assert first.proc.wait(timeout=30) == 0

    def back(self) -> None:
        if not self.warm:
            signal_and_settle(self.servers[0].pid, signal.SIGCONT)
            return
        next_second()
        self.servers[0] = start_again(self.servers[0])
        assert "[restart]" not in self.servers[0].stderr().split("Gracefully stopping")[-1]


@pytest.fixture(params=["nodes", "memcached", "nodes-warm-restart", "memcached-warm-restart"])
def outage(request, tmp_path):
    """Three servers, ringcache nodes or Debian's memcached (the debts use only classic
    commands, which every memcached has), the first one taken out by SIGSTOP or by a warm
    restart."""
    kind, _, how = request.param.partition("-")
    if kind == "memcached" and MEMCACHED is None:
        pytest.skip("Debian's memcached is not installed; CI always installs it")
    servers: list[ServerProcess] = []
    try:
        for i in range(3):
            args = ["-e", str(tmp_path / f"memory{i}")] if how and i == 0 else []
            if kind == "nodes":
                servers.append(start_node("-p", str(free_port()), *args))
            else:
                servers.append(start_memcached(*args))
        yield Outage(servers, warm=bool(how))
    finally:
        for s in servers:
            s.stop()


@pytest.mark.parametrize("outage", ["nodes-warm-restart", "memcached-warm-restart"], indirect=True)
def test_a_warm_restarted_node_returns_without_serving_what_was_replaced(outage):
    """Stopped with SIGUSR1 and started again with -e, the node holds every value it had,
    some of them overwritten or deleted meanwhile through the stand-ins: the journal and the
    debts drop those before anyone reads them there."""
    with CheckedTraffic(outage.locations) as t:
        outage.out()
        time.sleep(2.0)  # writes and deletes of its keys go to stand-ins, journaled
        outage.back()
        settle(t, outage.locations[0])
        time.sleep(3.0)
    check(t, f"warm restart ({outage.servers[0].argv[0].rsplit('/', 1)[-1]})")


def test_another_clients_debt_keeps_the_returning_node_out(outage):
    """Two clients (as two processes are). Client B overwrites keys while their owner is out;
    client A, which wrote nothing meanwhile, must not read the owner's old values when it
    comes back: B's debt, registered on the other nodes before B's first write around the
    owner, keeps A from re-admitting it until B has replayed its journal and settled. Also
    measured: how long after the owner answers again each client uses it."""
    locations = outage.locations
    location = locations[0]
    a = Client(locations, **OPTIONS)
    b = Client(locations, **{**OPTIONS, "probe_interval": 0.5, "probe_max_interval": 0.5})
    keys = [k for k in (f"x{i}" for i in range(2000)) if str(a.server_for(k)) == location][:50]
    assert a.set_many(dict.fromkeys(keys, "old")) == []
    outage.out()
    for client in (a, b):
        client.get(keys[0])
        client.get(keys[0])  # both eject it
    assert b.set_many(dict.fromkeys(keys, "new")) == []  # on stand-ins, in B's journal only
    outage.back()
    back = time.monotonic()
    last_stale = None
    live: dict[str, float] = {}
    while time.monotonic() < back + 3.0:
        if "old" in a.get_many(keys).values():
            last_stale = time.monotonic()
        for name, client in (("A", a), ("B", b)):
            if name not in live and client.node_stats()[location]["state"] == "live":
                live[name] = round(time.monotonic() - back, 3)
        time.sleep(0.01)
    window = 0.0 if last_stale is None else last_stale - back
    print(
        f"\n[never lies] two clients: A read replaced values for {window:.2f}s after the node "
        f"was back (it was up to 0.49 s without the debts); re-admitted after {live} s"
    )
    assert last_stale is None
    assert all(v == "new" for v in a.get_many(keys).values())
    assert set(live) == {"A", "B"} and live["A"] >= live["B"] - 0.05  # A only after B settled
    a.close()
    b.close()
