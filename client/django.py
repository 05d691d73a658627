"""A Django cache backend on the ringcache client: ``ringcache.client.django.RingCache``.

This module owns the mapping from Django's cache API to ``Client``: Django's timeout rules
(None = never, 0 = expire now, over 30 days = absolute time), key making and validation,
``OPTIONS`` passed to the client, and the clients' lifetime. Django makes a backend object per
thread, and all of them share one ``Client`` per process for each configuration (one pool,
one view of which node is out, one recovery journal; Django's ticket 33625), which stays
correct across ``fork()`` (``sync.Client`` starts afresh in the child). Django's async API
(``aget``, ``aset``, … ``aget_or_set``) runs natively on an ``AsyncClient`` — no thread, no
``sync_to_async``, one request per node for a multi-key call — one per process and event loop
for each configuration, made on first use: a task of that loop holds it open (its background
rounds run there) until the loop ends, which cancels the task and closes its connections.
The sync and async faces have the same options and rules; each is a client of its own,
kept consistent with the other, as with every other client, by the cluster-wide agreement
(``debts``). It reuses Django's own memcached base class so that every behaviour Django's
memcached backends have, it has too.

    CACHES = {"default": {
        "BACKEND": "ringcache.client.django.RingCache",
        "LOCATION": ["10.0.0.1:11211", "10.0.0.2:11211"],
        "OPTIONS": {"failover_ttl": 30},
    }}
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.memcached import BaseMemcachedCache
from django.utils.functional import cached_property

from . import sync
from .aio import AsyncClient
from .sync import Client

# One client per process for each (LOCATION, OPTIONS): {key: client}.
_SHARED: dict[tuple[str, str], Client] = {}
_SHARED_LOCK = threading.Lock()


def _config_key(servers: Any, options: dict[str, Any]) -> tuple[str, str]:
    return (repr(servers), repr(sorted(options.items(), key=lambda item: item[0])))


def shared_client(servers: Any, options: dict[str, Any]) -> Client:
    """The process's client for this configuration, made on first use (again after it was
    closed)."""
    key = _config_key(servers, options)
    with _SHARED_LOCK:
        client = _SHARED.get(key)
        if client is None or client.closed:
            client = _SHARED[key] = Client(servers, **options)
        return client


# One async client per event loop for each configuration: {loop: {key: future of the client}}.
_ASYNC: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Future[Any]]] = (
    weakref.WeakKeyDictionary()
)
_HOLDERS: set[asyncio.Task[None]] = set()  # the tasks that hold the clients open


async def shared_async_client(servers: Any, options: dict[str, Any]) -> AsyncClient:
    """This event loop's async client for this configuration, made on first use: a task of
    the loop enters it and holds it open until the loop cancels that task at its end."""
    loop = asyncio.get_running_loop()
    clients = _ASYNC.setdefault(loop, {})
    key = _config_key(servers, options)
    ready = clients.get(key)
    if ready is None or (ready.done() and ready.exception() is not None):
        ready = clients[key] = loop.create_future()
        client = AsyncClient(servers, **options)

        async def hold(ready: asyncio.Future[Any] = ready) -> None:
            try:
                async with client:
                    ready.set_result(client)
                    await asyncio.Event().wait()  # until the loop ends
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                raise
            finally:
                if clients.get(key) is ready:
                    del clients[key]

        task = loop.create_task(hold(), name="ringcache-async-client")
        _HOLDERS.add(task)
        task.add_done_callback(_HOLDERS.discard)
    result: AsyncClient = await asyncio.shield(ready)
    return result


class RingCache(BaseMemcachedCache):
    """Django cache backend for a ringcache (or any memcached) cluster."""

    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params, library=sync, value_not_found_exception=KeyError)
        self._class = Client

    @cached_property
    def _cache(self) -> Client:
        return shared_client(self._servers, self._options)

    def get_or_set(
        self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """Django's ``get_or_set``, stampede-safe: on a miss exactly one caller (across threads
        and processes) computes ``default``; the others wait for its value
        (``Client.get_or_set``)."""
        key = self.make_and_validate_key(key, version=version)
        return self._cache.get_or_set(key, default, self.get_backend_timeout(timeout))

    def delete(self, key: str, version: int | None = None, stale: bool = False) -> bool:
        """Django's ``delete``; ``stale=True`` marks the value stale instead: ``get_or_set``
        callers keep getting it while one of them recomputes it."""
        key = self.make_and_validate_key(key, version=version)
        return bool(self._cache.delete(key, stale=stale))

    def close(self, **kwargs: Any) -> None:
        # Django calls close() after every request. The client's pools are thread-safe and
        # its health knowledge (which node is ejected) must survive requests, so connections
        # are kept, as Django's PyLibMCCache keeps libmemcached's.
        pass

    # -- Django's async API, on the async client ------------------------------------------
    async def _acache(self) -> AsyncClient:
        return await shared_async_client(self._servers, self._options)

    async def aadd(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        client = await self._acache()
        return await client.add(key, value, self.get_backend_timeout(timeout))

    async def aget(self, key: str, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return await (await self._acache()).get(key, default)

    async def aset(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        client = await self._acache()
        if not await client.set(key, value, self.get_backend_timeout(timeout)):
            await client.delete(key)  # as Django's: no old value may stay after a failed set

    async def atouch(
        self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        client = await self._acache()
        return bool(await client.touch(key, self.get_backend_timeout(timeout)))

    async def adelete(self, key: str, version: int | None = None, stale: bool = False) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(await (await self._acache()).delete(key, stale=stale))

    async def aget_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        key_map = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = await (await self._acache()).get_many(key_map)
        return {key_map[k]: v for k, v in found.items()}

    async def ahas_key(self, key: str, version: int | None = None) -> bool:
        missing = object()
        return await self.aget(key, missing, version=version) is not missing

    async def aincr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        client = await self._acache()
        value = await (client.decr(key, -delta) if delta < 0 else client.incr(key, delta))
        if value is None:
            raise ValueError(f"Key '{key}' not found")
        return value

    async def adecr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return await self.aincr(key, -delta, version=version)

    async def aset_many(
        self,
        data: dict[str, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[str]:
        safe = {self.make_and_validate_key(key, version=version): key for key in data}
        values = {k: data[original] for k, original in safe.items()}
        client = await self._acache()
        failed = await client.set_many(values, self.get_backend_timeout(timeout))
        return [safe[k] for k in failed]

    async def adelete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        safe = [self.make_and_validate_key(key, version=version) for key in keys]
        await (await self._acache()).delete_many(safe)

    async def aget_or_set(
        self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """``get_or_set``'s async face, stampede-safe like it: on a miss one caller computes
        ``default`` (a plain or an async callable, or a value) while the others wait."""
        key = self.make_and_validate_key(key, version=version)
        client = await self._acache()
        return await client.get_or_set(key, default, self.get_backend_timeout(timeout))

    async def aclear(self) -> None:
        await (await self._acache()).flush_all()

    async def aclose(self, **kwargs: Any) -> None:
        # As close(): the async client outlives requests; the loop's end closes it.
        pass
