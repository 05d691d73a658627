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
from urllib.parse import unquote_to_bytes

from ringcache.client.client import connect
from ringcache.client.ring import Ring, Server

REALTIME_MAXDELTA = 60 * 60 * 24 * 30


class Conn:
    """A blocking text-protocol connection for admin work (metadump, gets, add, config)."""

    def __init__(self, server: Server, timeout: float = 5.0) -> None:
        self.sock = connect(server, timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data


@dataclass
class Item:
    key: bytes
    exp: int  # absolute unix time, -1 = never


def metadump(server: Server) -> Iterator[Item]:
    """Every live item of a server, from ``lru_crawler metadump all``."""
    conn = Conn(server, timeout=30)
    try:
        conn.send(b"lru_crawler metadump all\r\n")
        while True:
            line = conn.line()
            if line == b"END":
                return
            if not line.startswith(b"key="):
                raise RuntimeError(f"{server}: {line.decode(errors='replace')}")
            fields = dict(part.split(b"=", 1) for part in line.split(b" ") if b"=" in part)
            yield Item(unquote_to_bytes(fields[b"key"]), int(fields[b"exp"]))
    finally:
        conn.close()


def copy_items(src: Server, dst: Server, items: list[Item], batch: int = 100) -> int:
    """Copy ``items`` from ``src`` to ``dst`` with their flags and remaining TTL, by ``add``.

    Returns how many were added (a key already on ``dst`` — a newer write — is left alone).
    """
    added = 0
    now = time.time()
    source = Conn(src)
    target = Conn(dst)
    try:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            source.send(b"gets " + b" ".join(it.key for it in chunk) + b"\r\n")
            values = {}
            while (line := source.line()) != b"END":
                _, key, flags, size, _cas = line.split(b" ")
                values[key] = (int(flags), source.exact(int(size)))
            requests = []
            for it in chunk:
                if it.key not in values:
                    continue  # gone meanwhile (deleted, expired, evicted)
                if it.exp != -1 and it.exp <= now:
                    continue
                flags, data = values[it.key]
                # An absolute expiry time is what memcached takes for values above 30 days.
                exptime = 0 if it.exp == -1 else max(it.exp, REALTIME_MAXDELTA + 1)
                requests.append(
                    b"add %s %d %d %d\r\n%s\r\n" % (it.key, flags, exptime, len(data), data)
                )
            if requests:
                target.send(b"".join(requests))
                for _ in requests:
                    if target.line() == b"STORED":
                        added += 1
    finally:
        source.close()
        target.close()
    return added


def cluster_version(servers: list[Server]) -> int:
    """The highest membership version any server reports (0 where it has none)."""
    best = 0
    for server in servers:
        try:
            conn = Conn(server, timeout=2)
        except OSError:
            continue
        try:
            conn.send(b"config get cluster\r\n")
            head = conn.line()
            if head.startswith(b"CONFIG cluster"):
                body = conn.exact(int(head.split()[3]))
                best = max(best, int(body.split(b"\n", 1)[0]))
                conn.line()  # END
        except (OSError, ValueError, IndexError):
            pass
        finally:
            conn.close()
    return best


def publish(servers: list[Server], members: list[Server], version: int) -> list[Server]:
    """Tell every server the membership; returns the servers that refused or failed."""
    entries = b" ".join(b"%s|%s|%d" % (m.host.encode(), m.host.encode(), m.port) for m in members)
    failed = []
    for server in servers:
        try:
            conn = Conn(server, timeout=2)
            try:
                conn.send(b"config set cluster version=%d %s\r\n" % (version, entries))
                if conn.line() != b"OK":
                    failed.append(server)
            finally:
                conn.close()
        except OSError:
            failed.append(server)
    return failed


@dataclass
class Move:
    src: Server
    dst: Server
    items: list[Item]


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
