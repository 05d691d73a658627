"""Traffic from many processes, each its own client, every read checked against the last write
that completed before it began — the "never lies to the whole application" oracle.

Writers each own a range of keys and write increasing versions to them (or delete them, with a
version too); after a write or delete that succeeded, the writer raises the key's *floor* in
shared memory. A reader notes a key's floor, then reads it: a hit below the floor is a value
the application had replaced or deleted before the read began, a wrong read. A miss is always
allowed, and so is a value a write of unknown outcome (it returned False) may have left.

Workers are processes (multiprocessing, "spawn" unless a test forks on purpose); their loops
are bounded by a deadline and a shared stop event, and talk only to the 127.0.0.1 servers the
test started.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from typing import Any

from ringcache.client import Client

KEYS = 150  # per writer
DEADLINE = 60.0
# Per worker, in ``stats``: reads, hits, wrong reads, writes.
FIELDS = 4


class Shared:
    """What the workers share: each key's floor, each worker's counters, the times of the
    first and last wrong read, and the stop event."""

    def __init__(self, ctx: Any, writers: int, workers: int) -> None:
        self.writers = writers
        self.floor = ctx.Array("q", writers * KEYS, lock=False)
        self.stats = ctx.Array("q", workers * FIELDS, lock=False)
        self.wrong_at = ctx.Array("d", 2, lock=True)  # first, last (monotonic, system-wide)
        self.stop = ctx.Event()

    def key(self, i: int) -> str:
        return f"w{i // KEYS}:{i % KEYS}"


def write_loop(client: Any, shared: Shared, writer: int, slot: int) -> None:
    rnd = random.Random(writer)
    version = 0
    first = writer * KEYS
    deadline = time.monotonic() + DEADLINE
    while not shared.stop.is_set() and time.monotonic() < deadline:
        i = first + rnd.randrange(KEYS)
        version += 1
        if rnd.random() < 0.2:
            ok = client.delete(shared.key(i)) is True
        else:
            ok = bool(client.set(shared.key(i), version))
        if ok:
            shared.floor[i] = version
        shared.stats[slot * FIELDS + 3] += 1


def read_loop(client: Any, shared: Shared, slot: int, seed: int) -> None:
    rnd = random.Random(seed)
    total = shared.writers * KEYS
    deadline = time.monotonic() + DEADLINE
    base = slot * FIELDS
    while not shared.stop.is_set() and time.monotonic() < deadline:
        i = rnd.randrange(total)
        floor = shared.floor[i]
        value = client.get(shared.key(i))
        shared.stats[base] += 1
        if value is None:
            continue
        shared.stats[base + 1] += 1
        if value < floor:
            shared.stats[base + 2] += 1
            now = time.monotonic()
            with shared.wrong_at.get_lock():
                if not shared.wrong_at[0]:
                    shared.wrong_at[0] = now
                shared.wrong_at[1] = now


def run_role(client: Any, role: str, index: int, slot: int, shared: Shared) -> None:
    try:
        if role == "writer":
            write_loop(client, shared, index, slot)
        else:
            read_loop(client, shared, slot, 1000 + index)
    finally:
        client.close()


def worker(role: str, index: int, slot: int, location: Any, options: dict, shared: Shared) -> None:
    """A process: its own client (as a pre-fork server's worker has), writing or reading."""
    run_role(Client(location, **options), role, index, slot, shared)


def forked_worker(role: str, index: int, slot: int, client: Client, shared: Shared) -> None:
    """A process made by fork() that uses the client its parent made before forking."""
    run_role(client, role, index, slot, shared)


class Processes:
    """``writers`` writer and ``readers`` reader processes over ``location``."""

    def __init__(
        self,
        location: Any,
        options: dict,
        writers: int = 2,
        readers: int = 2,
        inherited: Client | None = None,
    ) -> None:
        self.ctx = mp.get_context("fork" if inherited is not None else "spawn")
        self.shared = Shared(self.ctx, writers, writers + readers)
        self.roles = [("writer", i) for i in range(writers)] + [
            ("reader", i) for i in range(readers)
        ]
        self.procs = []
        for slot, (role, index) in enumerate(self.roles):
            if inherited is not None:
                args: tuple = (role, index, slot, inherited, self.shared)
                target: Any = forked_worker
            else:
                args = (role, index, slot, location, options, self.shared)
                target = worker
            self.procs.append(self.ctx.Process(target=target, args=args, daemon=True))

    def __enter__(self) -> Processes:
        for proc in self.procs:
            proc.start()
        time.sleep(1.0)  # every worker connected and busy
        return self

    def __exit__(self, *exc: object) -> None:
        self.shared.stop.set()
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    def writer_process(self, index: int) -> Any:
        return self.procs[index]

    def figures(self) -> dict[str, Any]:
        stats = self.shared.stats
        readers = [s for s, (role, _) in enumerate(self.roles) if role == "reader"]
        reads = sum(stats[s * FIELDS] for s in range(len(self.roles)))
        hits = sum(stats[s * FIELDS + 1] for s in range(len(self.roles)))
        wrong = sum(stats[s * FIELDS + 2] for s in range(len(self.roles)))
        writes = sum(stats[s * FIELDS + 3] for s in range(len(self.roles)))
        first, last = self.shared.wrong_at[0], self.shared.wrong_at[1]
        return {
            "processes": len(self.roles),
            "reader_processes": len(readers),
            "reads": reads,
            "hits": hits,
            "writes": writes,
            "wrong": wrong,
            "wrong_window_s": round(last - first, 3) if wrong else 0.0,
            "first_wrong_at": first,
        }


def threads_of_django_backends(location: str, options: dict, shared: Shared, n: int) -> list:
    """Django's way: a backend object per thread, in this process (readers and writers)."""
    from django.core.cache import CacheHandler

    handler = CacheHandler(
        {
            "default": {
                "BACKEND": "ringcache.client.django.RingCache",
                "LOCATION": location,
                "OPTIONS": options,
            }
        }
    )

    class Backend:
        """Django's API as the loops call it."""

        def __init__(self) -> None:
            self.cache = handler["default"]

        def get(self, key: str) -> Any:
            return self.cache.get(key)

        def set(self, key: str, value: Any) -> bool:
            return self.cache.set(key, value, None) is not False and self.cache.get(key) == value

        def delete(self, key: str) -> bool:
            return self.cache.delete(key)

        def close(self) -> None:
            pass

    def run(role: str, index: int, slot: int) -> None:
        run_role(Backend(), role, index, slot, shared)

    threads = []
    for slot in range(n):
        role, index = ("writer", slot) if slot < shared.writers else ("reader", slot)
        threads.append(threading.Thread(target=run, args=(role, index, slot), daemon=True))
    return threads
