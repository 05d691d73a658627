"""Membership changes without a miss storm and without bringing back an old value.

This module owns what ``ringcache add``/``remove``/``rebalance`` do to a cluster's data:
compute which keys change owner between two rings, enumerate them on their old owners
(``lru_crawler metadump all``), clear leftovers of earlier memberships from the new owners,
move each key with its flags and remaining TTL (``add`` on the new owner, then delete the
source copy only if it is unchanged, taking the copy back if it changed meanwhile), sweep
again for keys written to an old owner during the move, and publish memberships with
``config set cluster``: first as moving (clients switch to the new ring, delete written keys
from their previous owner, and read the previous owner on a miss), then again as complete.
Re-running after an interruption is safe: every step is idempotent and publishing only ever
raises the version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ringcache.client import Connection, ReplyError, RingcacheError, Security, protocol
from ringcache.client.protocol import ClusterConfig, DumpEntry, parse_metadump_line
from ringcache.client.ring import Ring, Server

MOVERS_KEYS = b"ringcache:move:"  # the lock and the plan of ``follow``, kept on every node


def metadump(server: Server, security: Security | None = None) -> Iterator[DumpEntry]:
    """Every live item of a server, from ``lru_crawler metadump all``."""
    with Connection(server, timeout=30, security=security) as conn:
        for line in conn.lines(protocol.METADUMP_ALL):
            if not line.startswith(b"key="):
                raise RuntimeError(f"{server}: {line.decode(errors='replace')}")
            yield parse_metadump_line(line)


def copy_items(
    src: Server,
    dst: Server,
    items: list[DumpEntry],
    batch: int = 200,
    security: Security | None = None,
) -> int:
    """Move ``items`` from ``src`` to ``dst`` without ever bringing back an old value.

    Per batch, pipelined: read each key with its flags, remaining TTL and CAS on ``src``
    (``mg k v f t c``); add it to ``dst`` with that TTL, asking for the new item's CAS
    (``ms k <n> T F ME c``: a value already on ``dst`` — a newer write — is kept); delete
    the source copy only if it is still the one read (``md k C<cas>``); and where it was not
    (a write or delete reached ``src`` while copying), take the copy back from ``dst`` if it
    is still the one added (``md k C<cas>``), so a value the application replaced or deleted
    meanwhile never survives the move. Returns how many keys were added to ``dst``.
    """
    added = 0
    with (
        Connection(src, timeout=10, security=security) as source,
        Connection(dst, timeout=10, security=security) as target,
    ):
        for i in range(0, len(items), batch):
            keys = [it.key for it in items[i : i + batch]]
            reads = source.request(
                b"".join([protocol.meta_get(k) for k in keys]), (protocol.META,) * len(keys)
            )
            found = []  # (key, value, flags, ttl token, source cas)
            for key, reply in zip(keys, reads, strict=True):
                if isinstance(reply, ReplyError):
                    raise RuntimeError(f"{src}: {reply}")
                t = reply.number("t") if reply.code == b"VA" else None
                if t is None or t == 0 or t < -1:
                    continue  # gone meanwhile (deleted, expired, evicted) or expiring now
                flags = reply.flags.get("f", b"0")
                if not reply.value and flags == b"0":
                    continue  # a get_or_set lease, not a value: it is not moved
                found.append(
                    (key, reply.value, flags, b"0" if t == -1 else b"%d" % t, reply.flags["c"])
                )
            if not found:
                continue
            stores = target.request(
                b"".join(
                    b"ms %s %d T%s F%s ME c\r\n%s\r\n" % (k, len(v), ttl, f, v)
                    for k, v, f, ttl, _ in found
                ),
                (protocol.META,) * len(found),
            )
            checks = source.request(
                b"".join(protocol.meta_delete(k, b"C" + cas) for k, _, _, _, cas in found),
                (protocol.META,) * len(found),
            )
            undo = []
            for (key, *_), stored, check in zip(found, stores, checks, strict=True):
                if isinstance(stored, ReplyError) or isinstance(check, ReplyError):
                    raise RuntimeError(
                        f"{src} → {dst}: {stored if isinstance(stored, ReplyError) else check}"
                    )
                ours = stored.code == b"HD"
                if check.code == b"HD":
                    added += ours
                elif ours:  # the source changed while copying: the copy must not outlive it
                    undo.append(protocol.meta_delete(key, b"C" + stored.flags["c"]))
            if undo:
                target.request(b"".join(undo), (protocol.META,) * len(undo))
    return added


def clear(
    dst: Server, keys: list[bytes], batch: int = 500, security: Security | None = None
) -> None:
    """Delete ``keys`` from ``dst`` (leftovers of an earlier membership, before it owns them)."""
    with Connection(dst, timeout=10, security=security) as conn:
        for i in range(0, len(keys), batch):
            part = keys[i : i + batch]
            conn.request(b"".join(protocol.delete(k) for k in part), (protocol.STATUS,) * len(part))


def published(servers: list[Server], security: Security | None = None) -> ClusterConfig | None:
    """The newest membership any of ``servers`` serves."""
    best: ClusterConfig | None = None
    for server in servers:
        try:
            with Connection(server, timeout=2, security=security) as conn:
                (reply,) = conn.request(protocol.CONFIG_GET, (protocol.CONFIG,))
        except (OSError, RingcacheError):
            continue
        if isinstance(reply, ClusterConfig) and (best is None or reply.version > best.version):
            best = reply
    return best


def cluster_version(servers: list[Server], security: Security | None = None) -> int:
    """The highest membership version any server reports (0 where it has none)."""
    config = published(servers, security)
    return 0 if config is None else config.version


def publish(
    servers: list[Server],
    members: list[Server],
    version: int,
    security: Security | None = None,
) -> list[Server]:
    """Tell every server the membership; returns the servers that refused or failed. A
    server accepts it from loopback, or from a connection that logged in (``-Y``) or showed
    a client certificate it verified: ``security`` carries those for remote clusters."""
    request = protocol.config_set(version, members)
    failed = []
    for server in servers:
        try:
            with Connection(server, timeout=2, security=security) as conn:
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


# The clients' default discovery_interval: every client that discovers has switched by then.
DISCOVERY_GRACE = 5.0


class PublishError(RuntimeError):
    """Members of the new membership refused it or could not be reached."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        super().__init__("the membership was not adopted by " + ", ".join(map(str, servers)))


def plan(
    old: list[Server],
    new: list[Server],
    unreachable: list[Server] | None = None,
    security: Security | None = None,
) -> list[Move]:
    """For every server of ``old`` that answers: its keys whose owner differs on ``new``.
    Servers that do not answer are skipped (and listed in ``unreachable``)."""
    new_ring = Ring(new)
    by_name = {s.name: s for s in new}
    moves: dict[tuple[str, str], Move] = {}
    for src in old:
        try:
            items = list(metadump(src, security))
        except (OSError, RingcacheError):
            if unreachable is None:
                raise
            unreachable.append(src)
            continue
        for item in items:
            if item.key.startswith(MOVERS_KEYS):
                continue  # the movers' own lock and plan are on every node, never moved
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
    passes: int = 3,
    grace: float = DISCOVERY_GRACE,
    security: Security | None = None,
) -> dict[str, Any]:
    """Move from membership ``old`` to ``new`` without a miss storm and without a lie.

    1. Plan from every old member that answers (one that does not — a dead node being
       removed — moves nothing and is reported in ``skipped``).
    2. Unless ``new`` is already published (a re-run), delete the planned keys from their
       new owners: a leftover of an earlier membership must not win over the moved value.
    3. Publish ``new`` as moving (an odd version): clients write to the new owners, delete
       the key from the previous owner, and read the previous owner on a miss. Then wait
       ``grace`` seconds, at least the clients' ``discovery_interval``, so that no client still
       writes to an old owner once copying starts (such a write could land after the copy and
       be hidden behind it).
    4. Copy (``copy_items``), then look again (up to ``passes`` times) for keys that still sit
       on a server that no longer owns them (written by a client that had not switched yet).
    5. Publish ``new`` again (the next, even, version): the move is complete.

    A member of ``new`` that refuses or misses a publish raises ``PublishError``, naming it.
    ``security`` (TLS, login) is used for every connection. Returns planned, copied,
    version, passes and skipped.
    """
    everyone = list({s.name: s for s in [*old, *new]}.values())
    members = {s.name for s in new}
    current = published(everyone, security)
    # Moving memberships have odd versions, settled ones even: a client re-reading an odd one
    # (a re-run) keeps treating the last even one as where keys come from.
    version = (current.version if current is not None else 0) + 1
    version += 1 - version % 2
    skipped: list[Server] = []
    moves = plan(old, new, skipped, security)
    rerun = current is not None and {s.name for s in current.servers} == members
    if not rerun:
        for move in moves:
            clear(move.dst, [it.key for it in move.items], security=security)
    _publish(everyone, new, version, members, security)
    time.sleep(grace)
    total = sum(len(m.items) for m in moves)
    done = copied = 0
    sources = [s for s in old if s not in skipped]
    rounds = 0
    while moves and rounds < passes:
        rounds += 1
        for move in moves:
            for i in range(0, len(move.items), 500):
                part = move.items[i : i + 500]
                copied += copy_items(move.src, move.dst, part, security=security)
                done += len(part)
                if progress:
                    progress(done, max(total, done))
        moves = plan(sources, new, [], security)
        total += sum(len(m.items) for m in moves)
    _publish(everyone, new, version + 1, members, security)  # the same members: complete
    return {
        "planned": total,
        "copied": copied,
        "version": version + 1,
        "passes": rounds,
        "skipped": [str(s) for s in skipped],
    }


def _publish(
    everyone: list[Server],
    new: list[Server],
    version: int,
    members: set[str],
    security: Security | None,
) -> None:
    failed = [s for s in publish(everyone, new, version, security) if s.name in members]
    if failed:
        raise PublishError(failed)
