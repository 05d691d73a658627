"""Fixtures of the client tests: nodes, and ``make_client``, which runs each test that takes it
on both drivers — the sync ``Client`` and the trio ``AsyncClient`` (driven from the test's
thread through a trio loop of its own), so both are held to the same assertions."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import trio

from ringcache.client import AsyncClient, Client
from tests.conftest import start_node
from tests.proxy import NoMeta, Proxy


@pytest.fixture
def nodes():
    """Three node processes on free ports, stopped (by pid) afterwards."""
    started = [start_node() for _ in range(3)]
    yield started
    for n in started:
        n.stop()


class TrioDriven:
    """An ``AsyncClient`` inside ``async with``, in a trio loop on its own thread; every
    coroutine method is called synchronously (``trio.from_thread``), everything else is the
    client's own attribute."""

    def __init__(self, location: Any, **options: Any) -> None:
        object.__setattr__(self, "client", None)
        object.__setattr__(self, "_error", None)
        ready = threading.Event()
        thread = threading.Thread(
            target=trio.run, args=(self._main, location, options, ready), daemon=True
        )
        object.__setattr__(self, "_thread", thread)
        thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error

    async def _main(self, location: Any, options: dict, ready: threading.Event) -> None:
        try:
            async with AsyncClient(location, **options) as client:
                object.__setattr__(self, "_token", trio.lowlevel.current_trio_token())
                object.__setattr__(self, "_stop", trio.Event())
                object.__setattr__(self, "client", client)
                ready.set()
                await self._stop.wait()
        except BaseException as exc:  # reported to the test's thread
            object.__setattr__(self, "_error", exc)
        finally:
            ready.set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: trio.from_thread.run(
                partial(attr, *a, **k), trio_token=self._token
            )
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.client, name, value)

    def close(self) -> None:
        if self.client is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)
        if self._error is not None:
            raise self._error


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


@pytest.fixture(params=["sync", "trio"])
def driver(request) -> str:
    return request.param


@pytest.fixture
def make_client(driver: str) -> Iterator[Callable[..., Any]]:
    """``make_client(location, **options)``: a client of the test's driver, closed afterwards."""
    made: list = []

    def make(location: Any, **options: Any) -> Any:
        client = (
            Client(location, **options) if driver == "sync" else TrioDriven(location, **options)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
