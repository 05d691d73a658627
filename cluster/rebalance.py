"""Membership changes without a miss storm: publish the new membership, then move the keys.

This module owns what ``ringcache add``/``remove`` do to a cluster's data: compute which keys
change owner between two rings, enumerate them on their old owners (``lru_crawler metadump
all``), copy each to its new owner with its remaining TTL and flags using ``add`` (so a value a
client wrote to the new owner meanwhile is never overwritten), and publish memberships with
``config set cluster``. The order is: publish the new membership marked as moving (clients
switch to the new ring and fall back to the previous owner on a miss), copy, then publish the
same membership again as settled. Re-running after an interruption is safe: copies use ``add``
and publishing only ever raises the version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ringcache.client import Connection, ReplyError, RingcacheError, protocol
from ringcache.client.protocol import ClusterConfig, DumpEntry, parse_metadump_line
from ringcache.client.ring import Ring, Server

REALTIME_MAXDELTA = 60 * 60 * 24 * 30


def metadump(server: Server) -> Iterator[DumpEntry]:
    """Every live item of a server, from ``lru_crawler metadump all``."""
    with Connection(server, timeout=30) as conn:
        for line in conn.lines(protocol.METADUMP_ALL):
            if not line.startswith(b"key="):
                raise RuntimeError(f"{server}: {line.decode(errors='replace')}")
            yield parse_metadump_line(line)


def copy_items(src: Server, dst: Server, items: list[DumpEntry], batch: int = 100) -> int:
    """Copy ``items`` from ``src`` to ``dst`` with their flags and remaining TTL, by ``add``.

    Returns how many were added (a key already on ``dst`` — a newer write — is left alone).
    """
    added = 0
    now = time.time()
    with Connection(src, timeout=5) as source, Connection(dst, timeout=5) as target:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            (reply,) = source.request(protocol.get([it.key for it in chunk]), (protocol.VALUES,))
            if isinstance(reply, ReplyError):
                raise RuntimeError(f"{src}: {reply}")
            values = {key: (flags, data) for key, flags, data, _ in reply}
            requests = []
            for it in chunk:
                if it.key not in values:
                    continue  # gone meanwhile (deleted, expired, evicted)
                if it.exp != -1 and it.exp <= now:
                    continue
                flags, data = values[it.key]
                # An absolute expiry time is what memcached takes for values above 30 days.
                exptime = 0 if it.exp == -1 else max(it.exp, REALTIME_MAXDELTA + 1)
                requests.append(protocol.store(b"add", it.key, flags, exptime, data))
            if requests:
                replies = target.request(b"".join(requests), (protocol.STATUS,) * len(requests))
                added += sum(r == b"STORED" for r in replies)
    return added


def cluster_version(servers: list[Server]) -> int:
    """The highest membership version any server reports (0 where it has none)."""
    best = 0
    for server in servers:
        try:
            with Connection(server, timeout=2) as conn:
                (reply,) = conn.request(protocol.CONFIG_GET, (protocol.CONFIG,))
        except (OSError, RingcacheError):
            continue
        if isinstance(reply, ClusterConfig):
            best = max(best, reply.version)
    return best


def publish(servers: list[Server], members: list[Server], version: int) -> list[Server]:
    """Tell every server the membership; returns the servers that refused or failed."""
    request = protocol.config_set(version, members)
    failed = []
    for server in servers:
        try:
            with Connection(server, timeout=2) as conn:
                (reply,) = conn.request(request, (protocol.STATUS,))
        except (OSError, RingcacheError):
            reply = None
        if reply != b"OK":
            failed.append(server)
    return failed


@dataclass
class Move:
    src: Server
    dst: Server
    items: list[DumpEntry]


def plan(old: list[Server], new: list[Server]) -> list[Move]:
    """For every server of ``old`` that answers: its keys whose owner differs on ``new``."""
    new_ring = Ring(new)
    by_name = {s.name: s for s in new}
    moves: dict[tuple[str, str], Move] = {}
    for src in old:
        for item in metadump(src):
            owner = new_ring.get(item.key)
            if owner.name == src.name:
                continue
            dst = by_name[owner.name]
            moves.setdefault((src.name, dst.name), Move(src, dst, [])).items.append(item)
    return list(moves.values())


def rebalance(
    old: list[Server],
    new: list[Server],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Move from membership ``old`` to ``new``; returns counts (planned, copied, version)."""
    everyone = list({s.name: s for s in [*old, *new]}.values())
    version = cluster_version(everyone) + 1
    publish(everyone, new, version)  # clients switch, reading the previous owner on a miss
    moves = plan(old, new)
    total = sum(len(m.items) for m in moves)
    done = copied = 0
    for move in moves:
        for i in range(0, len(move.items), 500):
            part = move.items[i : i + 500]
            copied += copy_items(move.src, move.dst, part)
            done += len(part)
            if progress:
                progress(done, total)
    publish(everyone, new, version + 1)  # the same members again: the move is complete
    return {"planned": total, "copied": copied, "version": version + 1}
