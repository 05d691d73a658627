"""Traffic for the failover suite: a sync, a trio and an asyncio client (four tasks whose
calls share its connections) hammer a key space each while a scenario injects a fault; every operation's outcome and latency is recorded with its time, and
every hit is checked against what that client last wrote (``checked.Model``).

Loops are bounded by a deadline and by ``stop``; nothing here sends traffic anywhere but the
127.0.0.1 servers a test started.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ringcache.client import AsyncClient, Client
from tests.failover.checked import OPTIONS, Model

log = logging.getLogger("ringcache.failover")


@dataclass
class Op:
    at: float
    kind: str  # "hit", "miss", "stored", "not_stored", "error"
    latency: float


@dataclass
class Record:
    ops: list[Op] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[Op]:
        return [o for o in self.ops if start <= o.at < end]

    def hit_ratio(self, start: float, end: float) -> float:
        reads = [o for o in self.between(start, end) if o.kind in ("hit", "miss")]
        return sum(o.kind == "hit" for o in reads) / len(reads) if reads else 0.0

    def max_latency(self, start: float = 0, end: float = float("inf")) -> float:
        return max((o.latency for o in self.between(start, end)), default=0.0)

    def recovered_at(self, after: float, ratio: float = 0.9, window: float = 0.3) -> float | None:
        """The first time after ``after`` from which reads hit at ``ratio`` for ``window``."""
        reads = [o for o in self.ops if o.at >= after and o.kind in ("hit", "miss")]
        end = hits = 0
        for start, op in enumerate(reads):  # a sliding window: linear in the number of reads
            while end < len(reads) and reads[end].at < op.at + window:
                hits += reads[end].kind == "hit"
                end += 1
            count = end - start
            if count >= 5 and hits / count >= ratio:
                return op.at
            hits -= op.kind == "hit"
        return None


class Traffic:
    """A sync thread, a trio thread and an asyncio thread (four tasks) doing set-then-get over
    ``keys`` until stopped."""

    def __init__(self, location: list[str], keys: int = 200, **options) -> None:
        self.location = location
        self.keys = [f"key:{i}" for i in range(keys)]
        self.models = {"sync": Model(), "trio": Model(), "asyncio": Model()}
        self.options = {**OPTIONS, **options}
        self.stop = threading.Event()
        self.sync = Record()
        self.trio = Record()
        self.asyncio = Record()
        self.clients: list[Client] = []
        self._threads = [
            threading.Thread(target=self._sync_loop, daemon=True),
            threading.Thread(target=lambda: trio.run(self._trio_loop), daemon=True),
            threading.Thread(target=lambda: asyncio.run(self._asyncio_loop()), daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        time.sleep(0.5)  # steady state before the fault
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(15)

    def _sync_loop(self, limit: float = 60.0) -> None:
        client = Client(self.location, **self.options)
        self.clients.append(client)
        deadline = time.monotonic() + limit
        i = 0
        try:
            model = self.models["sync"]
            while not self.stop.is_set() and time.monotonic() < deadline:
                key = "sync:" + self.keys[i % len(self.keys)]
                i += 1
                try:
                    started = time.monotonic()
                    value = client.get(key)
                    model.read(key, value, started)
                    self.sync.ops.append(
                        Op(started, "miss" if value is None else "hit", time.monotonic() - started)
                    )
                    if value is None:
                        started = time.monotonic()
                        ok = client.set(key, i)
                        model.wrote(key, i, 0, ok, time.monotonic())
                        kind = "stored" if ok else "not_stored"
                        self.sync.ops.append(Op(started, kind, time.monotonic() - started))
                except Exception as exc:  # the point of the suite: none may reach us
                    self.sync.errors.append(exc)
                    self.sync.ops.append(Op(started, "error", time.monotonic() - started))
        finally:
            client.close()

    async def _trio_loop(self, limit: float = 60.0) -> None:
        async with AsyncClient(self.location, **self.options) as client:
            await self._async_loop(client, "trio", self.trio, trio.sleep, 0, 1, limit)

    async def _asyncio_loop(self, limit: float = 60.0) -> None:
        async with AsyncClient(self.location, **self.options) as client:
            await asyncio.gather(
                *(
                    self._async_loop(client, "asyncio", self.asyncio, asyncio.sleep, n, 4, limit)
                    for n in range(4)
                )
            )

    async def _async_loop(
        self,
        client: AsyncClient,
        label: str,
        record: Record,
        sleep: Any,
        start: int,
        step: int,
        limit: float,
    ) -> None:
        """One task's set-then-get: keys ``start``, ``start + step``, … (times 7, spread)."""
        deadline = time.monotonic() + limit
        i = start
        model = self.models[label]
        while not self.stop.is_set() and time.monotonic() < deadline:
            key = f"{label}:" + self.keys[(i * 7) % len(self.keys)]
            i += step
            try:
                started = time.monotonic()
                value = await client.get(key)
                model.read(key, value, started)
                record.ops.append(
                    Op(started, "miss" if value is None else "hit", time.monotonic() - started)
                )
                if value is None:
                    started = time.monotonic()
                    stored = await client.set(key, i)
                    model.wrote(key, i, 0, stored, time.monotonic())
                    kind = "stored" if stored else "not_stored"
                    record.ops.append(Op(started, kind, time.monotonic() - started))
            except Exception as exc:
                record.errors.append(exc)
                record.ops.append(Op(started, "error", time.monotonic() - started))
            await sleep(0)

    def report(self, name: str, fault_at: float) -> dict[str, float | int | None]:
        figures = {}
        for label, record in (("sync", self.sync), ("trio", self.trio), ("asyncio", self.asyncio)):
            recovered = record.recovered_at(fault_at)
            figures[f"{label}_ops"] = len(record.ops)
            figures[f"{label}_errors"] = len(record.errors)
            figures[f"{label}_max_latency_s"] = round(record.max_latency(fault_at), 3)
            figures[f"{label}_recovery_s"] = (
                None if recovered is None else round(recovered - fault_at, 3)
            )
            figures[f"{label}_wrong_reads"] = len(self.models[label].wrong)
        log.warning("%s: %s", name, figures)
        print(f"\n[failover] {name}: {figures}")
        return figures
