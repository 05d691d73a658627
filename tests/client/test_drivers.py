"""What the drivers do with pooled connections, on both: they are reused across idle periods,
plain and TLS, also in a process with more than 1,024 descriptors open (``select`` refuses
those; the pools test idle connections with ``poll``). The pools run on the injected clock,
so "idle long enough to be checked" is a clock step, not a sleep."""

from __future__ import annotations

import os
import resource

import pytest

from tests.client.conftest import total_connections
from tests.conftest import start_node


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def many_descriptors():
    """More than 1,024 descriptors open in this process while the test runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1400
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard limit on open files is {hard}, under {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_pooled_connections_are_reused_past_1024_descriptors(
    transport, many_descriptors, make_client, tls_files
):
    tls = tls_files.client_context() if transport == "tls" else None
    node = start_node(*(tls_files.server_flags() if tls else []))
    try:
        clock = Clock()
        c = make_client([node.location], clock=clock, **({"tls": tls} if tls else {}))
        assert c.set("warm", b"v")
        before = total_connections(node.port, tls)
        for i in range(20):
            clock.t += 1.0  # idle long enough that each use checks the pooled connection
            assert c.set(f"k{i}", b"v") and c.get(f"k{i}") == b"v"
        # Only the second stats connection is new: the client opened none.
        assert total_connections(node.port, tls) - before == 1
        assert c.node_stats()[node.location]["failures"] == 0
    finally:
        node.stop()
