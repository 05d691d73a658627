"""Django's async cache API on ``RingCache``, natively on the async client: every ``a*`` method
of Django's ``BaseCache``, in the caller's event loop, with no ``sync_to_async`` and no thread;
one request per node for a multi-key call; ``aget_or_set`` stampede-safe; the async client's
lifetime (one per process and event loop, made on first use, closed with the loop)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True)

import django.core.cache.backends.base as django_base

from ringcache.client import django as backend_module
from ringcache.client.django import RingCache
from tests.proxy import Proxy

OPTIONS = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1}


@pytest.fixture
def no_threads(monkeypatch):
    """Django's default async methods hop to a thread through sync_to_async: refuse it."""

    def refused(*args, **kwargs):
        raise AssertionError("an async cache method went through sync_to_async")

    monkeypatch.setattr(django_base, "sync_to_async", refused)


def make_cache(location: str, **options) -> RingCache:
    return RingCache(location, {"OPTIONS": {**OPTIONS, **options}})


def test_every_async_method_runs_natively(cluster, no_threads):
    cache = make_cache(";".join(n.location for n in cluster))

    async def main() -> None:
        await cache.aclear()
        assert await cache.aget("missing") is None
        assert await cache.aget("missing", "default") == "default"
        await cache.aset("k", {"a": 1}, 30)
        assert await cache.aget("k") == {"a": 1}
        assert await cache.aadd("k", "other") is False
        assert await cache.aadd("new", "v") is True
        assert await cache.ahas_key("new") and not await cache.ahas_key("missing")
        assert await cache.atouch("new", 60) is True and await cache.atouch("nope") is False
        assert await cache.adelete("new") is True and await cache.adelete("new") is False
        await cache.aset("n", 10)
        assert await cache.aincr("n") == 11 and await cache.adecr("n", 5) == 6
        with pytest.raises(ValueError):
            await cache.aincr("missing")
        data = {f"m{i}": i for i in range(30)}
        assert await cache.aset_many(data) == []
        assert await cache.aget_many([*data, "absent"]) == data
        await cache.adelete_many(list(data)[:10])
        assert await cache.aget_many(data) == {k: v for k, v in data.items() if v >= 10}
        await cache.aset("z", "zero", 0)  # Django: 0 = expire now
        assert await cache.aget("z") is None
        assert await cache.aget_or_set("g", lambda: "made") == "made"
        assert await cache.aget_or_set("g", lambda: "again") == "made"
        await cache.aset("s", "stale-able")
        assert await cache.adelete("s", stale=True) is True
        await cache.aclose()
        # The sync face sees what the async one wrote, and the other way round.
        assert await asyncio.to_thread(cache.get, "k") == {"a": 1}

    asyncio.run(main())


def test_aget_many_is_one_request_per_node(cluster):
    """Django's default aget_many is a sync get_many on a thread; before it was a get per key
    here. Counted on the servers' side of three proxies."""
    counted = []

    class CountGets:
        def __init__(self) -> None:
            counted.append(0)
            self.index = len(counted) - 1

        def __call__(self, data: bytes) -> bytes:
            counted[self.index] += sum(
                1 for line in data.split(b"\r\n") if line.startswith((b"get ", b"gets "))
            )
            return data

    proxies = [Proxy(n.port, requests=CountGets) for n in cluster]
    try:
        cache = make_cache(";".join(p.location for p in proxies), agreement=False)
        keys = [f"many{i}" for i in range(100)]

        async def main() -> dict:
            await cache.aset_many(dict.fromkeys(keys, b"v"))
            before = sum(counted)
            found = await cache.aget_many(keys)
            assert sum(counted) - before == 3
            return found

        assert len(asyncio.run(main())) == 100
    finally:
        for p in proxies:
            p.close()


def test_concurrent_aget_or_set_on_a_missing_key_computes_once(cluster, no_threads):
    cache = make_cache(";".join(n.location for n in cluster))
    computed = []

    async def compute() -> str:
        computed.append(1)
        await asyncio.sleep(0.1)
        return "value"

    async def main() -> list:
        await cache.adelete("herd")
        return await asyncio.gather(*(cache.aget_or_set("herd", compute, 60) for _ in range(20)))

    results = asyncio.run(main())
    assert results == ["value"] * 20 and computed == [1]


def test_one_async_client_per_event_loop_closed_with_the_loop(cluster):
    cache = make_cache(";".join(n.location for n in cluster))
    seen = []

    async def main() -> None:
        first = await cache._acache()
        again = await asyncio.gather(*(cache._acache() for _ in range(5)))
        assert all(c is first for c in again)
        await cache.aset("loop", 1)
        seen.append(first)

    asyncio.run(main())
    asyncio.run(main())
    assert seen[0] is not seen[1]  # a loop of its own, a client of its own
    assert all(c._group is None for c in seen)  # closed when its loop ended
    threads = [t.name for t in threading.enumerate() if t.name.startswith("ringcache")]
    assert not [t for t in threads if "async" in t]
    assert not backend_module._HOLDERS
