"""One timeout policy and one failure set on every driver — sync, and async on trio and on
asyncio (``steps``): each step of opening a connection waits at most ``connect_timeout``,
each send and receive of a request at most ``timeout``, and the same failures are counted with
the same exceptions. Wall-clock bounds, with room for a loaded 2-core machine, hence in the
failover suite."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time

import pytest

from ringcache.client import AsyncClient, Client
from tests.client.conftest import AsyncDriven
from tests.conftest import free_port

pytestmark = pytest.mark.failover


class Silent:
    """A server on 127.0.0.1 that accepts connections and reads them, and never answers (not
    even a TLS handshake). Stopped by the test that made it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make(driver: str, location, **options):
    if driver == "sync":
        return Client(location, **options)
    return AsyncDriven(location, driver, **options)


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


@pytest.mark.parametrize("driver", ["sync", "trio", "asyncio"])
def test_a_request_without_an_answer_fails_after_timeout_not_connect_plus_timeout(driver):
    with Silent() as server:
        c = make(
            driver, [f"127.0.0.1:{server.port}"], timeout=0.3, connect_timeout=2.0, failure_limit=10
        )
        try:
            elapsed = [timed(lambda: c.get("k")) for _ in range(2)]
        finally:
            c.close()
    print(
        f"\n[failover] {driver}: unanswered get failed after {elapsed[0]:.3f} s, {elapsed[1]:.3f} s"
    )
    assert all(0.28 <= e < 1.3 for e in elapsed), elapsed  # 2.3 s if the whole call had one limit


@pytest.mark.parametrize("driver", ["sync", "trio", "asyncio"])
def test_a_tls_handshake_without_an_answer_fails_after_connect_timeout(driver):
    ctx = ssl.create_default_context()
    with Silent() as server:
        c = make(
            driver,
            [f"127.0.0.1:{server.port}"],
            tls=ctx,
            timeout=2.0,
            connect_timeout=0.3,
            failure_limit=10,
        )
        try:
            elapsed = timed(lambda: c.get("k"))
        finally:
            c.close()
    print(f"\n[failover] {driver}: unanswered TLS handshake failed after {elapsed:.3f} s")
    assert 0.28 <= elapsed < 1.3


@pytest.mark.parametrize("driver", ["sync", "trio", "asyncio"])
def test_both_drivers_count_the_same_failures_with_the_same_exceptions(driver, caplog):
    refused = free_port()
    with Silent() as server:
        c = make(
            driver,
            [f"127.0.0.1:{refused}", f"127.0.0.1:{server.port}"],
            timeout=0.2,
            connect_timeout=0.2,
            failure_limit=10,
        )
        try:
            with caplog.at_level(logging.INFO, logger="ringcache.client"):
                for i in range(40):
                    c.get(f"k{i}")
            stats = c.node_stats()
        finally:
            c.close()
    errors = {
        name: {type(r.args[2]).__name__ for r in caplog.records if name in str(r.args[1])}
        for name in (f"127.0.0.1:{refused}", f"127.0.0.1:{server.port}")
    }
    assert errors == {
        f"127.0.0.1:{refused}": {"ConnectionRefusedError"},
        f"127.0.0.1:{server.port}": {"TimeoutError"},
    }
    assert all(s["failures"] > 0 for s in stats.values())


def test_calls_sharing_a_connection_to_a_silent_server_all_fail_after_timeout():
    """asyncio's shared connection: one timer for all the calls on it, none waits longer."""
    with Silent() as server:
        location = f"127.0.0.1:{server.port}"

        async def main() -> tuple[list[float], dict]:
            async with AsyncClient(
                [location], timeout=0.3, connect_timeout=2.0, failure_limit=100, agreement=False
            ) as c:
                started = time.monotonic()

                async def one(i: int) -> float:
                    assert await c.get(f"k{i}") is None
                    return time.monotonic() - started

                elapsed = await asyncio.gather(*(one(i) for i in range(20)))
                return elapsed, c.node_stats()[location]

        elapsed, stats = asyncio.run(main())
        connections = len(server.conns)
    print(
        f"\n[failover] asyncio: 20 calls on one silent connection failed after {max(elapsed):.3f} s"
    )
    assert all(0.28 <= e < 1.3 for e in elapsed), elapsed
    assert connections == 1
    assert stats["failures"] == 20
