"""Async client benchmark on asyncio against Debian memcached, peers measured in the same run.

- gets and sets per second of ``AsyncClient`` against emcache and aiomcache (PyPI) on the same
  memcached, at 1, 4, 16 and 64 concurrent tasks (each client with a pool of that many
  connections), on asyncio's own loop and on uvloop; goal: at least emcache's throughput.
- ``aget_many`` of 100 keys over 3 servers: latency of Django's ``RingCache`` (native) against
  Django's ``PyMemcacheCache`` (Django's default async path, ``sync_to_async`` per key);
  goal: at least 10x faster.

    python -m bench.async_ops [--seconds 2] [--tasks 1,4,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True)

import aiomcache
import emcache
import uvloop
from django.core.cache.backends.memcached import PyMemcacheCache

from bench.client_ops import memcached_servers
from ringcache.client import AsyncClient
from ringcache.client.django import RingCache

VALUE = b"x" * 100


async def throughput(op: Callable[[int], Awaitable[object]], seconds: float, tasks: int) -> float:
    """Calls per second of ``op`` by ``tasks`` concurrent tasks over ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def task(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < deadline:
            await op(i)
            i += tasks
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(task(n) for n in range(tasks)))
    return done / (time.perf_counter() - started)


async def clients_race(
    port: int, seconds: float, rounds: int, tasks: int
) -> dict[str, dict[str, float]]:
    keys = [f"bench:{i}".encode() for i in range(1000)]
    ring = AsyncClient([f"127.0.0.1:{port}"], pool_size=tasks, agreement=False)
    await ring.__aenter__()
    em = await emcache.create_client(
        [emcache.MemcachedHostAddress("127.0.0.1", port)], max_connections=tasks
    )
    aio = aiomcache.Client("127.0.0.1", port, pool_size=tasks)
    for k in keys:
        await em.set(k, VALUE)
    ops = {
        "ringcache AsyncClient": (
            lambda i: ring.get(keys[i % 1000]),
            lambda i: ring.set(keys[i % 1000], VALUE),
        ),
        "emcache": (lambda i: em.get(keys[i % 1000]), lambda i: em.set(keys[i % 1000], VALUE)),
        "aiomcache": (
            lambda i: aio.get(keys[i % 1000]),
            lambda i: aio.set(keys[i % 1000], VALUE),
        ),
    }
    results: dict[str, dict[str, list[float]]] = {n: {"get": [], "set": []} for n in ops}
    try:
        for _ in range(rounds):
            for name, (get, put) in ops.items():
                results[name]["get"].append(await throughput(get, seconds / rounds, tasks))
                results[name]["set"].append(await throughput(put, seconds / rounds, tasks))
    finally:
        await ring.__aexit__(None, None, None)
        await em.close()
        await aio.close()
    return {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}


async def aget_many_race(ports: list[int], rounds: int) -> dict[str, float]:
    location = [f"127.0.0.1:{p}" for p in ports]
    ring = RingCache(location, {"OPTIONS": {"agreement": False}})
    django_default = PyMemcacheCache(location, {})
    keys = [f"many:{i}" for i in range(100)]
    await ring.aset_many(dict.fromkeys(keys, VALUE))
    await asyncio.to_thread(django_default.set_many, dict.fromkeys(keys, VALUE))  # its hashing
    latencies: dict[str, list[float]] = {"RingCache.aget_many": [], "PyMemcacheCache.aget_many": []}
    for _ in range(rounds):
        for name, cache in (
            ("RingCache.aget_many", ring),
            ("PyMemcacheCache.aget_many", django_default),
        ):
            started = time.perf_counter()
            found = await cache.aget_many(keys)
            latencies[name].append(time.perf_counter() - started)
            assert len(found) == 100, (name, len(found))
    return {name: statistics.median(v) * 1e3 for name, v in latencies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tasks", type=lambda v: [int(t) for t in v.split(",")], default=[1, 4, 16, 64]
    )
    args = parser.parse_args()
    with memcached_servers(3) as servers:
        if servers is None:
            return 2
        port = servers[0][1]
        for loop_name, factory in (("asyncio", None), ("uvloop", uvloop.new_event_loop)):
            for tasks in args.tasks:
                with asyncio.Runner(loop_factory=factory) as runner:
                    figures = runner.run(clients_race(port, args.seconds, args.rounds, tasks))
                print(
                    f"{tasks} concurrent tasks, 100-byte values, one memcached, {loop_name} "
                    f"(median of {args.rounds} alternating rounds)"
                )
                for name, f in figures.items():
                    print(f"  {name:24} get {f['get']:9.0f}/s   set {f['set']:9.0f}/s")
                ours, em = figures["ringcache AsyncClient"], figures["emcache"]
                aio = figures["aiomcache"]
                print(
                    f"  ratio vs emcache:   get {ours['get'] / em['get']:.2f}x, "
                    f"set {ours['set'] / em['set']:.2f}x (goal >= 1x)"
                )
                print(
                    f"  ratio vs aiomcache: get {ours['get'] / aio['get']:.2f}x, "
                    f"set {ours['set'] / aio['set']:.2f}x"
                )
        with asyncio.Runner() as runner:
            many = runner.run(aget_many_race([p for _, p in servers], 30))
        print("\naget_many of 100 keys over 3 servers, Django (median of 30)")
        for name, ms in many.items():
            print(f"  {name:28} {ms:8.2f} ms")
        ratio = many["PyMemcacheCache.aget_many"] / many["RingCache.aget_many"]
        print(f"  RingCache is {ratio:.1f}x faster (goal >= 10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
