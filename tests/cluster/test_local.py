"""LocalCluster against real node processes: start, kill, pause, restart, add, stale state."""

from __future__ import annotations

import os
import socket
import time

import pytest

from ringcache.client import Client
from ringcache.cluster import ClusterError, LocalCluster
from ringcache.cluster.local import answers
from tests.conftest import free_ports


@pytest.fixture
def cluster(tmp_path):
    lc = LocalCluster(tmp_path / "run")
    yield lc
    lc.down()


def test_up_status_down(cluster):
    base = free_ports(3)
    members = cluster.up(3, base, memory=16)
    assert [m.port for m in members] == [base, base + 1, base + 2]
    status = cluster.status()
    assert all(s.up and s.answering and s.pid for s in status)
    assert all(cluster.logfile(s.port).exists() for s in status)
    client = Client(cluster.locations())
    assert client.set("k", b"v") and client.get("k") == b"v"
    client.close()
    pids = [s.pid for s in status]
    cluster.up(3, base, memory=16)  # again: no duplicates
    assert [s.pid for s in cluster.status()] == pids
    cluster.down()
    assert cluster.members() == []
    assert not any(answers(p) for p in range(base, base + 3))


def test_kill_leaves_a_stale_pidfile_that_is_detected(cluster):
    base = free_ports(2)
    cluster.up(2, base, memory=16)
    cluster.kill(base)
    assert cluster.pidfile(base).exists()  # as after a crash
    assert cluster.pid(base) is None  # detected as stale...
    assert not cluster.pidfile(base).exists()  # ...and cleaned
    status = {s.port: s for s in cluster.status()}
    assert not status[base].up and status[base + 1].up
    cluster.up(2, base, memory=16)  # starts only the missing node
    assert all(s.up for s in cluster.status())


def test_a_reused_pid_is_never_signalled(cluster, tmp_path):
    base = free_ports(1)
    cluster.up(1, base, memory=16)
    cluster.stop(base)
    cluster.pidfile(base).write_text(f"{os.getpid()}\n")  # the test runner, not a node
    assert cluster.pid(base) is None


def test_pause_resume_restart_add_remove(cluster):
    base = free_ports(4)
    cluster.up(3, base, memory=16)
    cluster.pause(base + 1)
    assert not answers(base + 1, timeout=0.3)
    cluster.resume(base + 1)
    assert answers(base + 1)
    old = cluster.pid(base + 2)
    cluster.restart(base + 2)
    assert cluster.pid(base + 2) not in (None, old) and answers(base + 2)
    added = cluster.add()
    assert added.port == base + 3 and answers(added.port)
    assert len(cluster.members()) == 4
    cluster.remove(base)
    assert [m.port for m in cluster.members()] == [base + 1, base + 2, base + 3]
    assert not answers(base)


def test_busy_port_is_a_clear_error(cluster):
    base = free_ports(1)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base))
        blocker.listen()
        started = time.monotonic()
        with pytest.raises(ClusterError, match=f"port {base} .* already in use"):
            cluster.up(1, base, memory=16)
        assert time.monotonic() - started < 5
