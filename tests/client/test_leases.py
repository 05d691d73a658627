"""get_or_set without a thundering herd: leases (``mg … N``), early recache (``R``) and
serve-stale (``md I``), on both drivers and in Django, against nodes and Debian's memcached,
and its plain fallback against a server without the meta protocol."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from ringcache.client import AsyncClient, Client
from tests.client.test_client import FAST


class Counting:
    """A slow computation that counts how often it ran."""

    def __init__(self, value="computed", delay: float = 0.3) -> None:
        self.value = value
        self.delay = delay
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return self.value


def herd(n: int, fn) -> list:
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    return results


@pytest.mark.parametrize("server", ["node", "memcached"], indirect=True)
def test_a_herd_of_clients_computes_once(server):
    clients = [Client([server.location], **FAST) for _ in range(40)]  # as 40 processes would
    compute = Counting()
    started = time.monotonic()
    results = herd(40, lambda i: clients[i].get_or_set("hot", compute, 60))
    elapsed = time.monotonic() - started
    assert compute.calls == 1
    assert results == ["computed"] * 40
    assert elapsed < 3.0
    won = sum(c.node_stats()[server.location]["leases"]["won"] for c in clients)
    waits = sum(c.node_stats()[server.location]["leases"]["waits"] for c in clients)
    assert won == 1 and waits > 0
    for c in clients:
        c.close()


async def test_a_herd_of_trio_tasks_computes_once(nodes):
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        await trio.sleep(0.3)
        return {"v": 1}

    results = []
    async with AsyncClient([n.location for n in nodes], **FAST) as c:

        async def one() -> None:
            results.append(await c.get_or_set("hot", compute, 60))

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one)
    assert calls == 1 and results == [{"v": 1}] * 40


def test_a_herd_of_django_workers_computes_once(nodes):
    from django.conf import settings

    if not settings.configured:
        settings.configure(CACHES={})
    from ringcache.client.django import RingCache

    location = [n.location for n in nodes]
    caches = [RingCache(location, {"OPTIONS": FAST}) for _ in range(40)]  # one per thread
    compute = Counting(value=[1, 2, 3])
    results = herd(40, lambda i: caches[i].get_or_set("page", compute, 60))
    assert compute.calls == 1 and results == [[1, 2, 3]] * 40
    assert caches[0].get("page") == [1, 2, 3]


def test_a_winner_that_raises_releases_its_lease(nodes, make_client):
    c = make_client([nodes[0].location], **FAST)

    def broken():
        raise ValueError("backend down")

    with pytest.raises(ValueError):
        c.get_or_set("k", broken, 60)
    started = time.monotonic()
    assert c.get_or_set("k", lambda: "second", 60) == "second"  # a new winner at once
    assert time.monotonic() - started < 1.0
    assert c.get("k") == "second"


def test_waiters_can_take_a_fallback(nodes):
    winner = Client([nodes[0].location], **FAST)
    other = Client([nodes[0].location], **FAST)
    slow = Counting(delay=1.0)
    thread = threading.Thread(target=winner.get_or_set, args=("k", slow, 60))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert other.get_or_set("k", Counting(), 60, fallback="placeholder") == "placeholder"
    assert time.monotonic() - started < 0.5  # at once: one round trip, no waiting
    thread.join(5)
    assert other.get_or_set("k", Counting(), 60) == "computed" and slow.calls == 1
    assert other.node_stats()[nodes[0].location]["leases"]["fallbacks"] == 1
    winner.close()
    other.close()


@pytest.mark.parametrize("server", ["node", "memcached"], indirect=True)
def test_serve_stale_and_early_recache(server, make_client):
    c = make_client([server.location], **FAST)
    assert c.set("k", "v1", expire=60)
    assert c.delete("k", stale=True)
    refresh = Counting(value="v2", delay=0)
    assert c.get_or_set("k", refresh, 60) == "v2"  # the one caller that refreshes
    assert refresh.calls == 1 and c.get("k") == "v2"
    assert c.set("r", "old", expire=3)
    again = Counting(value="new", delay=0)
    assert c.get_or_set("r", again, 60, recache=10) == "new"  # TTL below 10 s: refreshed
    assert c.get_or_set("r", again, 60, recache=10) == "new" and again.calls == 1


def test_degrades_to_get_then_set_without_meta(server, make_client):
    c = make_client([server.location], **FAST)
    compute = Counting(delay=0)
    assert c.get_or_set("k", compute, 60) == "computed"
    assert c.get_or_set("k", compute, 60) == "computed" and compute.calls == 1
    assert c.delete("k", stale=True) and c.get("k") in (None, "computed")


def test_a_lease_never_reads_as_a_value(nodes, make_client):
    """While a winner computes, the lease's placeholder is an empty item on the node; plain
    reads (get, get_many, get_entry) must miss, not return it."""
    winner = Client([nodes[0].location], **FAST)
    reader = make_client([nodes[0].location], **FAST)
    thread = threading.Thread(target=winner.get_or_set, args=("k", Counting(delay=0.8), 60))
    thread.start()
    time.sleep(0.2)
    assert reader.get("k") is None
    assert reader.get_many(["k"]) == {} and reader.get_entry("k") is None
    thread.join(5)
    assert reader.get("k") == "computed"
    winner.close()


def test_leases_with_replicas_on_a_stand_in_and_during_a_move(nodes):
    import os
    import signal

    from tests.client.test_client import keys_owned_by
    from tests.client.test_discovery import publish

    location = [n.location for n in nodes]
    clients = [Client(location, replicas=2, **FAST) for _ in range(20)]
    compute = Counting()
    assert herd(20, lambda i: clients[i].get_or_set("rep", compute, 60)) == ["computed"] * 20
    assert compute.calls == 1
    holders = [n for n in nodes if Client([n.location]).get("rep") == "computed"]
    assert len(holders) == 2  # the winner's set reached both copies

    # The owner out: the lease lives on its stand-in, still one computation.
    victim = nodes[1]
    key = keys_owned_by(clients[0], victim, 1)[0]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        plain = [Client(location, **FAST) for _ in range(20)]
        for c in plain:
            c.get(key)
            c.get(key)  # ejected in every client
        compute = Counting()
        assert herd(20, lambda i: plain[i].get_or_set(key, compute, 60)) == ["computed"] * 20
        assert compute.calls == 1
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    # Every client re-admits the victim (and the winner settles the debt it registered for it:
    # until then any other client, the mover below included, keeps the victim out).
    deadline = time.monotonic() + 10
    while any(c.node_stats()[victim.location]["state"] != "live" for c in plain):
        assert time.monotonic() < deadline
        time.sleep(0.02)

    # During a move the value still on its previous owner is returned, not recomputed.
    publish(nodes, nodes[:2], version=2)
    mover = Client([n.location for n in nodes[:2]], discovery=True, discovery_interval=0.05, **FAST)
    view = Client(location)
    moving = next(
        k for k in (f"m{i}" for i in range(500)) if view.server_for(k).port == nodes[2].port
    )
    assert mover.set(moving, "kept", expire=60)
    publish(nodes, nodes, version=3)
    deadline = time.monotonic() + 5
    while mover.cluster_version < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    compute = Counting()
    assert mover.get_or_set(moving, compute, 60) == "kept" and compute.calls == 0
    for c in [*clients, *plain, mover, view]:
        c.close()


def test_early_recache_keeps_a_hot_key_from_ever_missing(nodes):
    """A key with a 3 s TTL read in a loop by 8 threads for 5 s with recache=2: one caller
    refreshes it in its last 2 s (memcached counts whole seconds: recache=1 would only ever see
    a remaining TTL of 0), so it never expires and no caller ever waits."""
    clients = [Client([nodes[0].location], **FAST) for _ in range(8)]
    compute = Counting(value="fresh", delay=0.05)
    clients[0].set("hot", "fresh", expire=3)
    stop = time.monotonic() + 5.0
    results: list = []

    def loop(i: int) -> int:
        n = 0
        while time.monotonic() < stop:
            results.append(clients[i].get_or_set("hot", compute, 3, recache=2))
            n += 1
        return n

    herd(8, loop)
    waits = sum(c.node_stats()[nodes[0].location]["leases"]["waits"] for c in clients)
    print(f"\n[leases] recache: {len(results)} reads, {compute.calls} refreshes, {waits} waits")
    assert set(results) == {"fresh"} and waits == 0
    assert 1 <= compute.calls <= 6  # about one refresh per TTL, never a herd
    for c in clients:
        c.close()


def test_lease_counters_in_the_applications_prometheus_registry(nodes):
    from prometheus_client import CollectorRegistry, generate_latest

    from ringcache.cluster.metrics import ClientCollector

    winner = Client([nodes[0].location], **FAST)
    other = Client([nodes[0].location], **FAST)
    thread = threading.Thread(target=winner.get_or_set, args=("k", Counting(delay=0.5), 60))
    thread.start()
    time.sleep(0.1)
    assert other.get_or_set("k", Counting(), 60) == "computed"  # waited for the winner
    thread.join(5)
    registry = CollectorRegistry()
    registry.register(ClientCollector(other))
    text = generate_latest(registry).decode()
    node = nodes[0].location
    assert f'ringcache_client_node_live{{node="{node}"}} 1.0' in text
    waits = other.node_stats()[node]["leases"]["waits"]
    assert (
        waits > 0 and f'ringcache_client_lease_waits_total{{node="{node}"}} {float(waits)}' in text
    )
    registry = CollectorRegistry()
    registry.register(ClientCollector(winner))
    assert (
        f'ringcache_client_leases_won_total{{node="{node}"}} 1.0'
        in generate_latest(registry).decode()
    )
    winner.close()
    other.close()


@pytest.mark.parametrize("server", ["node", "memcached"], indirect=True)
def test_a_winner_that_dies_leaves_a_lease_that_expires(server, make_client):
    """A winner that vivified the lease and died (here: a raw connection that takes the lease
    and never stores) holds the others up only until the lease's TTL; then one of them wins."""
    from tests.conftest import RawClient

    raw = RawClient(server.port)
    assert raw.call(b"mg dead v c N2\r\n", b"\r\n\r\n").startswith(b"VA 0")  # won, then gone
    c = make_client([server.location], **FAST)
    compute = Counting(value="after", delay=0)
    started = time.monotonic()
    assert c.get_or_set("dead", compute, 60, lease=2) == "after"
    # A 2 s TTL in whole server seconds ends 1 to 2 s after it was set.
    assert compute.calls == 1 and 0.8 < time.monotonic() - started < 3.5
