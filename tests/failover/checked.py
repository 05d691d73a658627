"""Traffic that checks every read against what it last wrote: the "cache never lies" oracle.

A sync thread, a trio task and four asyncio tasks (one client, whose calls share its
connections) each own a key space and, until stopped, read, overwrite (some writes with a
2-second TTL), delete and multi-get their own keys with values never used twice.
Each key's model is the set of values a read may return: after a write that succeeded, only
that value (until its TTL has passed); after a write or delete whose outcome is unknown (it
returned False: a failure, or for a delete also "not found"), the old possibilities plus the
new one. A miss is always allowed (a cache may forget); a hit with any other value, or with a
value past its TTL, is a wrong read.

Loops are bounded by a deadline and by ``stop``; nothing here talks to anything but the
127.0.0.1 servers a test started.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from ringcache.client import AsyncClient, Client

OPTIONS = {
    "connect_timeout": 0.25,
    "timeout": 0.25,
    "probe_interval": 0.1,
    "probe_max_interval": 0.5,
}
# memcached counts whole seconds: a value written with TTL t can be served until about t + 1 s.
TTL_SLACK = 1.5
FOREVER = float("inf")
ASYNCIO_TASKS = 4


@dataclass
class Model:
    """What each key may hold: value → the time after which it must not be served."""

    allowed: dict[str, dict[Any, float]] = field(default_factory=dict)
    reads: int = 0
    hits: int = 0
    wrong: list[tuple[str, Any, float]] = field(default_factory=list)

    def wrote(self, key: str, value: Any, ttl: int, ok: bool, ended: float) -> None:
        deadline = ended + ttl + TTL_SLACK if ttl else FOREVER
        if ok:
            self.allowed[key] = {value: deadline}
        else:
            self.allowed.setdefault(key, {})[value] = deadline

    def deleted(self, key: str, ok: bool) -> None:
        if ok:
            self.allowed[key] = {}

    def read(self, key: str, value: Any, started: float) -> None:
        self.reads += 1
        if value is None:
            return
        self.hits += 1
        deadline = self.allowed.get(key, {}).get(value)
        if deadline is None or started > deadline:
            self.wrong.append((key, value, started))


class CheckedTraffic:
    """``with CheckedTraffic(location) as t: ...fault...``; then ``t.wrong_reads()``."""

    def __init__(self, location: list[str], keys: int = 150, seed: int = 7, **options: Any):
        self.location = location
        self.keys = keys
        self.seed = seed
        self.options = {**OPTIONS, **options}
        self.stop = threading.Event()
        self.models = {"sync": Model(), "trio": Model()}
        self.models.update({f"asyncio{n}": Model() for n in range(ASYNCIO_TASKS)})
        self.errors: list[BaseException] = []
        self.clients: list[Any] = []
        self._threads = [
            threading.Thread(target=self._sync_loop, daemon=True),
            threading.Thread(target=lambda: trio.run(self._trio_loop), daemon=True),
            threading.Thread(target=lambda: asyncio.run(self._asyncio_loop()), daemon=True),
        ]

    def __enter__(self) -> CheckedTraffic:
        for t in self._threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(20)

    def wrong_reads(self) -> int:
        return sum(len(m.wrong) for m in self.models.values())

    def figures(self) -> dict[str, Any]:
        return {
            name: {"reads": m.reads, "hits": m.hits, "wrong": len(m.wrong), "first": m.wrong[:3]}
            for name, m in self.models.items()
        }

    def _plan(self, label: str, rng: random.Random, counter: int) -> tuple[str, Any]:
        key = f"{label}:{rng.randrange(self.keys)}"
        roll = rng.random()
        if roll < 0.45:
            return "get", key
        if roll < 0.75:
            return "set", (key, f"{label}-{counter}", rng.choice((0, 0, 0, 2)))
        if roll < 0.9:
            return "delete", key
        return "get_many", [f"{label}:{rng.randrange(self.keys)}" for _ in range(5)]

    def _sync_loop(self, limit: float = 60.0) -> None:
        client = Client(self.location, **self.options)
        self.clients.append(client)
        try:
            model = self.models["sync"]
            for what, arg, args in self._ops("sync", limit):
                started = time.monotonic()
                try:
                    self._record(model, what, arg, getattr(client, what)(*args), started)
                except Exception as exc:  # none may reach the application
                    self.errors.append(exc)
        finally:
            client.close()

    async def _trio_loop(self, limit: float = 60.0) -> None:
        async with AsyncClient(self.location, **self.options) as client:
            self.clients.append(client)
            await self._drive_async(client, "trio", trio.sleep, limit)

    async def _asyncio_loop(self, limit: float = 60.0) -> None:
        async with AsyncClient(self.location, **self.options) as client:
            self.clients.append(client)
            await asyncio.gather(
                *(
                    self._drive_async(client, f"asyncio{n}", asyncio.sleep, limit)
                    for n in range(ASYNCIO_TASKS)
                )
            )

    async def _drive_async(self, client: AsyncClient, label: str, sleep: Any, limit: float) -> None:
        model = self.models[label]
        for what, arg, args in self._ops(label, limit):
            started = time.monotonic()
            try:
                self._record(model, what, arg, await getattr(client, what)(*args), started)
            except Exception as exc:
                self.errors.append(exc)
            await sleep(0)

    def _ops(self, label: str, limit: float) -> Iterator[tuple[str, Any, tuple[Any, ...]]]:
        """The next operation of ``label``'s traffic (the client method, its plan, its
        arguments) until stopped or ``limit`` seconds have passed."""
        rng = random.Random(f"{self.seed}{label}")
        deadline = time.monotonic() + limit
        counter = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            counter += 1
            what, arg = self._plan(label, rng, counter)
            yield what, arg, tuple(arg) if what == "set" else (arg,)

    @staticmethod
    def _record(model: Model, what: str, arg: Any, result: Any, started: float) -> None:
        """What the operation's outcome allows the key (or keys) to hold from now on."""
        if what == "get":
            model.read(arg, result, started)
        elif what == "get_many":
            for key in arg:
                model.read(key, result.get(key), started)
        elif what == "set":
            key, value, ttl = arg
            model.wrote(key, value, ttl, bool(result), time.monotonic())
        else:
            model.deleted(arg, bool(result))
