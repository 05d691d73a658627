"""The cache never lies to the whole application: many processes, each its own client (as a
pre-fork server's workers are), and Django's per-thread backends, every read checked against
the last write that completed before it began (``processes``). Real node processes, real
faults; each scenario prints its figures."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True)

from ringcache.client import Client
from tests.failover.checked import OPTIONS
from tests.failover.processes import Processes, Shared, threads_of_django_backends

pytestmark = pytest.mark.failover


def report(name: str, figures: dict) -> None:
    shown = {k: v for k, v in figures.items() if k != "first_wrong_at"}
    print(f"\n[processes] {name}: {shown}")


def test_a_sigstopped_node_returns_without_a_lie_to_any_process(local_cluster):
    lc, base = local_cluster
    with Processes(lc.locations(), OPTIONS) as p:
        lc.pause(base)
        time.sleep(3.0)
        lc.resume(base)
        time.sleep(3.0)
    figures = p.figures()
    report("SIGSTOP 3 s", figures)
    assert figures["wrong"] == 0 and figures["hits"] > 0


def test_a_node_killed_and_restarted_empty(local_cluster):
    lc, base = local_cluster
    with Processes(lc.locations(), OPTIONS) as p:
        lc.kill(base + 1)
        time.sleep(2.0)
        lc.restart(base + 1)
        time.sleep(3.0)
    figures = p.figures()
    report("kill -9, restart empty", figures)
    assert figures["wrong"] == 0 and figures["hits"] > 0


def test_a_flapping_node(local_cluster):
    lc, base = local_cluster
    with Processes(lc.locations(), OPTIONS) as p:
        for _ in range(4):
            lc.pause(base + 2)
            time.sleep(0.8)
            lc.resume(base + 2)
            time.sleep(0.8)
        time.sleep(2.0)
    figures = p.figures()
    report("flapping node", figures)
    assert figures["wrong"] == 0


def test_a_process_that_owes_a_replay_dies_while_the_node_is_out(local_cluster):
    """A writer process writes around the stopped node (its debt registered), then is killed
    -9 before it can replay. Its debt expires; the others flush the node before reading it."""
    lc, base = local_cluster
    with Processes(lc.locations(), OPTIONS, writers=2, readers=2) as p:
        lc.pause(base)
        time.sleep(1.5)  # the writers eject it and write around it
        victim = p.writer_process(0)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        time.sleep(0.5)
        lc.resume(base)
        time.sleep(5.0)  # the dead writer's debt expires (3 s), the node is flushed, read
    figures = p.figures()
    flushes = int(
        next(
            line.split()[2]
            for line in _stats(base).splitlines()
            if line.startswith("STAT cmd_flush ")
        )
    )
    report("a debtor killed -9 while the node is out", {**figures, "node_flushes": flushes})
    assert figures["wrong"] == 0
    assert flushes >= 1


def test_a_client_made_before_fork_is_used_by_every_child(local_cluster):
    """gunicorn --preload: the parent makes and uses the client, then forks its workers."""
    lc, base = local_cluster
    parent = Client(lc.locations(), **OPTIONS)
    assert parent.set("warm", 1) and parent.get("warm") == 1
    with Processes(lc.locations(), OPTIONS, inherited=parent) as p:
        lc.pause(base)
        time.sleep(2.0)
        lc.resume(base)
        time.sleep(3.0)
    parent.close()
    figures = p.figures()
    report("client made before fork, SIGSTOP 2 s", figures)
    assert figures["wrong"] == 0 and figures["hits"] > 0


def test_djangos_per_thread_backends_in_one_process(local_cluster):
    """Django's way: four writer and four reader threads, each with its own backend object
    (all sharing the process's one client), and a node SIGSTOPped for 3 s."""
    import multiprocessing as mp

    lc, base = local_cluster
    shared = Shared(mp.get_context("spawn"), 4, 8)
    location = ";".join(lc.locations())
    threads = threads_of_django_backends(location, dict(OPTIONS), shared, 8)
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        lc.pause(base)
        time.sleep(3.0)
        lc.resume(base)
        time.sleep(3.0)
    finally:
        shared.stop.set()
        for t in threads:
            t.join(10)
    stats = shared.stats
    reads = sum(stats[s * 4] for s in range(8))
    wrong = sum(stats[s * 4 + 2] for s in range(8))
    print(f"\n[processes] Django per-thread backends, SIGSTOP 3 s: reads {reads}, wrong {wrong}")
    assert wrong == 0 and reads > 0
    assert not [t for t in threads if t.is_alive()]


def _stats(port: int) -> str:
    from tests.conftest import RawClient

    raw = RawClient(port)
    try:
        return raw.call(b"stats\r\n", b"END\r\n").decode()
    finally:
        raw.close()


def test_a_partial_partition_does_not_make_the_readers_lie(local_cluster):
    """One writer process cannot reach a node the reader processes can (a proxy in front of
    the node holds that process's traffic only). The writer ejects it, registers its debt and
    writes around it only once the debt is HOLD old; the readers read the node only within
    LEASE of a look at the debts, so each has seen the debt and stopped reading the node
    before any of those writes completes: no read returns a value replaced before it began."""
    from tests.proxy import Proxy

    lc, base = local_cluster
    hole = Proxy(base)
    try:
        location = [hole.location, *lc.locations()[1:]]
        with Processes(location, OPTIONS, writers=1, readers=2) as p:
            hole.block_process(p.writer_process(0).pid)
            time.sleep(3.0)
            hole.unblock_process()
            time.sleep(3.0)
        figures = p.figures()
    finally:
        hole.close()
    report("partial partition (one writer cut off from a node)", figures)
    assert figures["wrong"] == 0 and figures["hits"] > 0


def test_a_blackholed_node_returns_without_a_lie_to_any_process(local_cluster):
    """A proxy in front of a node holds everyone's traffic for 2.5 s (and then delivers it:
    requests that were sent land late), like a partition that neither refuses nor resets."""
    from tests.proxy import Proxy

    lc, base = local_cluster
    hole = Proxy(base)
    try:
        with Processes([hole.location, *lc.locations()[1:]], OPTIONS) as p:
            hole.blocked.set()
            time.sleep(2.5)
            hole.blocked.clear()
            time.sleep(3.0)
        figures = p.figures()
    finally:
        hole.close()
    report("blackhole 2.5 s", figures)
    assert figures["wrong"] == 0 and figures["hits"] > 0
