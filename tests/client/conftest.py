"""Fixtures of the client tests: nodes, and ``make_client``, which runs each test that takes it
on the sync ``Client`` and on ``AsyncClient`` under trio and under asyncio (each driven from
the test's thread through an event loop of its own), so all three are held to the same
assertions."""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import pytest

from ringcache.client import AsyncClient, Client
from tests.conftest import RawClient, start_node
from tests.proxy import NoMeta, Proxy


def _three_nodes() -> Iterator[list[Any]]:
    started = [start_node() for _ in range(3)]
    yield started
    for n in started:
        n.stop()


@pytest.fixture
def nodes():
    """Three node processes on free ports, stopped (by pid) afterwards."""
    yield from _three_nodes()


@pytest.fixture(scope="module")
def cluster():
    """Three node processes shared by the tests of one module (Django's), stopped after it."""
    yield from _three_nodes()


def total_connections(port: int, tls: ssl.SSLContext | None = None) -> int:
    """The node's ``total_connections`` (this query's own connection included)."""
    raw = RawClient(port, tls=tls)
    try:
        reply = raw.call(b"stats\r\n", b"END\r\n")
    finally:
        raw.close()
    line = next(x for x in reply.split(b"\r\n") if x.startswith(b"STAT total_connections "))
    return int(line.split()[2])


class AsyncDriven:
    """An ``AsyncClient`` inside ``async with``, in an event loop (trio or asyncio) on a thread
    of its own (anyio's blocking portal); every coroutine method is called synchronously,
    everything else is the client's own attribute."""

    def __init__(self, location: Any, backend: str = "trio", **options: Any) -> None:
        portal_cm = anyio.from_thread.start_blocking_portal(backend)
        portal = portal_cm.__enter__()
        try:
            client_cm = portal.wrap_async_context_manager(AsyncClient(location, **options))
            client = client_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        object.__setattr__(self, "_portal_cm", portal_cm)
        object.__setattr__(self, "_portal", portal)
        object.__setattr__(self, "_client_cm", client_cm)
        object.__setattr__(self, "client", client)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self._portal.call(partial(attr, *a, **k))
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.client, name, value)

    def close(self) -> None:
        client_cm = self.__dict__.pop("_client_cm", None)
        if client_cm is not None:
            try:
                client_cm.__exit__(None, None, None)
            finally:
                self._portal_cm.__exit__(None, None, None)


@pytest.fixture(params=["node", "memcached", "memcached without meta"])
def server(request, nodes):
    """A node, Debian's memcached, and that memcached behind a proxy that turns every meta
    command into an unknown one (what a memcached older than 1.6 answers)."""
    if request.param == "node":
        yield nodes[0]
        return
    memcached = request.getfixturevalue("memcached")
    if request.param == "memcached":
        yield memcached
        return
    NoMeta.seen = 0
    proxy = Proxy(memcached.port, requests=NoMeta)
    yield proxy
    proxy.close()


@pytest.fixture(params=["sync", "trio", "asyncio"])
def driver(request) -> str:
    return request.param


@pytest.fixture
def make_client(driver: str) -> Iterator[Callable[..., Any]]:
    """``make_client(location, **options)``: a client of the test's driver, closed afterwards."""
    made: list = []

    def make(location: Any, **options: Any) -> Any:
        client = (
            Client(location, **options)
            if driver == "sync"
            else AsyncDriven(location, driver, **options)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
