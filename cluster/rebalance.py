"""Membership changes without a miss storm and without bringing back an old value.

This module owns what ``ringcache add``/``remove``/``rebalance`` do to a cluster's data:
compute which keys change owner between two rings, enumerate them on their old owners
(``lru_crawler metadump all``), clear leftovers of earlier memberships from the new owners
(every item of a joining server, the keys about to arrive on the others),
move each key with its flags and remaining TTL (``add`` on the new owner, then delete the
source copy only if it is unchanged, taking the copy back if it changed meanwhile) unless a
client owes the source a replay (its debts, read as the clients read them), sweep again for
keys written to an old owner during the move, and publish memberships with
``config set cluster``: first as moving (clients switch to the new ring, delete written keys
from their previous owner, and read the previous owner on a miss), then again as complete.
Re-running after an interruption is safe: every step is idempotent and publishing only ever
raises the version.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ringcache.client import Connection, ReplyError, RingcacheError, Security, protocol
from ringcache.client.debts import DEBT_KEYS, LEASE, index_of
from ringcache.client.protocol import ClusterConfig, DumpEntry, parse_metadump_line
from ringcache.client.ring import Ring, Server

MOVERS_KEYS = b"ringcache:move:"  # the lock and the plan of ``follow``, kept on every node
RENEW_EVERY = 10_000  # items listed between two calls of a move's ``renew`` (its lock's TTL)


def metadump(
    server: Server, security: Security | None = None, renew: Callable[[], None] = lambda: None
) -> Iterator[DumpEntry]:
    """Every live item of a server, from ``lru_crawler metadump all``; ``renew`` (the mover's
    lock) is called every ``RENEW_EVERY`` items: a dump of millions takes longer than the
    lock lives."""
    with Connection(server, timeout=30, security=security) as conn:
        for n, line in enumerate(conn.lines(protocol.METADUMP_ALL), 1):
            if not line.startswith(b"key="):
                raise RuntimeError(f"{server}: {line.decode(errors='replace')}")
            if n % RENEW_EVERY == 0:
                renew()
            yield parse_metadump_line(line)


class Owed(RuntimeError):
    """A client owes the source a replay: what it holds may be older than what the
    application last wrote, so nothing more is copied from it."""

    def __init__(self, src: Server) -> None:
        self.src = src
        super().__init__(f"{src} is owed a replay by a client that could not reach it")


class Debts:
    """The debt indexes of one source on the other members (``client/debts.py``), asked over
    connections kept open for the whole copy."""

    def __init__(self, src: Server, registries: list[Server], security: Security | None) -> None:
        self.index = index_of(src.name)
        self.registries = registries
        self.security = security
        self.conns: dict[str, Connection] = {}
        self.failed: set[str] = set()  # not asked again during this copy

    def owed(self) -> bool:
        """Whether a client owes the source a replay: its index on any registry that answers
        (``touch``, as the clients' watch asks, so that no hit ratio moves), or none of them
        answering; one that fails is not asked again. An index that names only dead debtors
        counts too: the clients flush such a node before they read it again."""
        answered = False
        for server in self.registries:
            if server.name in self.failed:
                continue
            try:
                conn = self.conns.get(server.name)
                if conn is None:
                    conn = Connection(server, timeout=2, security=self.security)
                    self.conns[server.name] = conn
                (reply,) = conn.request(protocol.touch(self.index, 0), (protocol.STATUS,))
            except (OSError, RingcacheError):
                self.failed.add(server.name)
                dead = self.conns.pop(server.name, None)
                if dead is not None:
                    dead.close()
                continue
            if reply == b"TOUCHED":
                return True
            answered = True
        return not answered

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def copy_items(
    src: Server,
    dst: Server,
    items: list[DumpEntry],
    batch: int = 200,
    security: Security | None = None,
    registries: list[Server] | None = None,
) -> int:
    """Move ``items`` from ``src`` to ``dst`` without ever bringing back an old value.

    Per batch, pipelined: read each key with its flags, remaining TTL and CAS on ``src``
    (``mg k v f t c``); add it to ``dst`` with that TTL, asking for the new item's CAS
    (``ms k <n> T F ME c``: a value already on ``dst`` — a newer write — is kept); delete
    the source copy only if it is still the one read (``md k C<cas>``); and where it was not
    (a write or delete reached ``src`` while copying), take the copy back from ``dst`` if it
    is still the one added (``md k C<cas>``), so a value the application replaced or deleted
    meanwhile never survives the move. Returns how many keys were added to ``dst``.

    With ``registries`` (the other members), a batch is copied only after a look at them
    found no client that owes ``src`` a replay (``Debts.owed``), and kept only if it ended within
    the clients' ``LEASE`` of that look: a client that cannot reach ``src`` and writes or
    deletes one of its keys registers its debt first and writes only once the debt is
    ``HOLD`` (more than ``LEASE``) old, so every copy kept was added before any such write,
    which then replaces or deletes it on ``dst``. A batch that ended later is taken back
    (``md k C<cas>`` on ``dst``: its keys are misses); a look that finds a debt raises
    ``Owed``: what ``src`` still holds may be what such a client replaced or deleted.
    """
    added = 0
    debts = Debts(src, registries or [], security)
    with (
        Connection(src, timeout=10, security=security) as source,
        Connection(dst, timeout=10, security=security) as target,
        contextlib.closing(debts),
    ):
        i = 0
        while i < len(items):
            looked = time.monotonic()
            if registries is not None and debts.owed():
                raise Owed(src)
            part = items[i : i + batch]
            i += len(part)
            kept = _copy_batch(source, target, src, dst, [it.key for it in part])
            if kept and registries is not None and time.monotonic() - looked > LEASE:
                # Too slow for the look it was made under: taken back (its keys are misses
                # now), and the batches that follow are smaller.
                _take_back(target, kept)
                batch = max(1, batch // 2)
                continue
            added += len(kept)
    return added


def _copy_batch(
    source: Connection, target: Connection, src: Server, dst: Server, keys: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """One batch of ``copy_items``: the keys added to ``dst`` and kept, with their CAS there."""
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
        found.append((key, reply.value, flags, b"0" if t == -1 else b"%d" % t, reply.flags["c"]))
    if not found:
        return []
    stores = target.request(
        b"".join(
            b"ms %s %d T%s F%s ME c\r\n%s\r\n" % (k, len(v), ttl, f, v) for k, v, f, ttl, _ in found
        ),
        (protocol.META,) * len(found),
    )
    checks = source.request(
        b"".join(protocol.meta_delete(k, b"C" + cas) for k, _, _, _, cas in found),
        (protocol.META,) * len(found),
    )
    undo = []
    kept = []
    for (key, *_), stored, check in zip(found, stores, checks, strict=True):
        if isinstance(stored, ReplyError) or isinstance(check, ReplyError):
            raise RuntimeError(
                f"{src} → {dst}: {stored if isinstance(stored, ReplyError) else check}"
            )
        if stored.code != b"HD":
            continue  # dst had a value: the newer one, kept
        if check.code == b"HD":
            kept.append((key, stored.flags["c"]))
        else:  # the source changed while copying: the copy must not outlive it
            undo.append((key, stored.flags["c"]))
    if undo:
        _take_back(target, undo)
    return kept


def _take_back(target: Connection, copies: list[tuple[bytes, bytes]]) -> None:
    """Delete copies added to ``dst`` where each is still the one added (``md k C<cas>``):
    a value written there since stays."""
    target.request(
        b"".join(protocol.meta_delete(k, b"C" + cas) for k, cas in copies),
        (protocol.META,) * len(copies),
    )


def clear(
    dst: Server,
    keys: list[bytes],
    batch: int = 500,
    security: Security | None = None,
    renew: Callable[[], None] = lambda: None,
) -> None:
    """Delete ``keys`` from ``dst`` (leftovers of an earlier membership, before it owns them);
    ``renew`` is called after each batch (the mover's lock)."""
    with Connection(dst, timeout=10, security=security) as conn:
        for i in range(0, len(keys), batch):
            part = keys[i : i + batch]
            conn.request(b"".join(protocol.delete(k) for k in part), (protocol.STATUS,) * len(part))
            renew()


def clear_joining(
    server: Server, security: Security | None = None, renew: Callable[[], None] = lambda: None
) -> int:
    """Delete every item of a server about to join but the movers' lock, plan and marks
    (``MOVERS_KEYS``): a node removed earlier, or restarted warm while out, still holds what
    it held then, and no client has replaced or deleted those keys on it since. Returns how
    many were deleted. No client writes to a server before the membership naming it is
    published, so nothing newer is lost."""
    keys = [
        it.key for it in metadump(server, security, renew) if not it.key.startswith(MOVERS_KEYS)
    ]
    clear(server, keys, security=security, renew=renew)
    return len(keys)


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
    renew: Callable[[], None] = lambda: None,
) -> list[Move]:
    """For every server of ``old`` that answers: its keys whose owner differs on ``new``.
    Servers that do not answer are skipped (and listed in ``unreachable``). ``renew`` is
    called as the items are listed (the mover's lock)."""
    new_ring = Ring(new)
    by_name = {s.name: s for s in new}
    moves: dict[tuple[str, str], Move] = {}
    for src in old:
        try:
            items = list(metadump(src, security, renew))
        except (OSError, RingcacheError):
            if unreachable is None:
                raise
            unreachable.append(src)
            continue
        for item in items:
            if item.key.startswith(MOVERS_KEYS) or item.key.startswith(DEBT_KEYS):
                continue  # the movers' lock and plan, the clients' debts: per node, never moved
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
    renew: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Move from membership ``old`` to ``new`` without a miss storm and without a lie.

    1. Plan from every old member that answers (one that does not — a dead node being
       removed — moves nothing and is reported in ``skipped``).
    2. Unless ``new`` is already published (a re-run), delete the planned keys from their
       new owners: a leftover of an earlier membership must not win over the moved value.
       A server that joins (in ``new``, not in ``old``) is emptied of every item but the
       movers' (``clear_joining``): what it kept from an earlier membership may be a value
       the application has since replaced or deleted, and the plan only names the keys that
       still exist on an old member.
    3. Publish ``new`` as moving (an odd version): clients write to the new owners, delete
       the key from the previous owner, and read the previous owner on a miss. Then wait
       ``grace`` seconds, at least the clients' ``discovery_interval``, so that no client still
       writes to an old owner once copying starts (such a write could land after the copy and
       be hidden behind it).
    4. Copy (``copy_items``), then look again (up to ``passes`` times) for keys that still sit
       on a server that no longer owns them (written by a client that had not switched yet).
       Nothing more is copied from a source that a client owes a replay (``Owed``: a client
       that cannot reach it wrote its keys elsewhere meanwhile); its keys are misses instead,
       and it is listed in ``owed``.
    5. Publish ``new`` again (the next, even, version): the move is complete.

    A member of ``new`` that refuses or misses a publish raises ``PublishError``, naming it.
    ``security`` (TLS, login) is used for every connection; ``renew`` (the mover's lock) is
    called as items are listed, cleared and copied, so that a lock with a TTL of seconds
    outlives a move of millions of keys. Returns planned, copied, version, passes, skipped,
    owed and cleared (the leftovers deleted from joining servers).
    """
    everyone = list({s.name: s for s in [*old, *new]}.values())
    members = {s.name for s in new}
    current = published(everyone, security)
    # Moving memberships have odd versions, settled ones even: a client re-reading an odd one
    # (a re-run) keeps treating the last even one as where keys come from.
    version = (current.version if current is not None else 0) + 1
    version += 1 - version % 2
    skipped: list[Server] = []
    moves = plan(old, new, skipped, security, renew)
    rerun = current is not None and {s.name for s in current.servers} == members
    cleared = 0
    if not rerun:
        members_before = {s.name for s in old}
        for server in new:
            if server.name not in members_before:
                cleared += clear_joining(server, security, renew)
        for move in moves:
            if move.dst.name in members_before:
                clear(move.dst, [it.key for it in move.items], security=security, renew=renew)
    _publish(everyone, new, version, members, security)
    time.sleep(grace)
    total = sum(len(m.items) for m in moves)
    done = copied = 0
    sources = [s for s in old if s not in skipped]
    owes: list[Server] = []  # sources a client owes a replay: nothing more copied from them
    rounds = 0
    while moves and rounds < passes:
        rounds += 1
        for move in moves:
            registries = [s for s in everyone if s.name != move.src.name and s not in skipped]
            for i in range(0, len(move.items), 500):
                if move.src in owes:
                    break
                part = move.items[i : i + 500]
                try:
                    copied += copy_items(
                        move.src, move.dst, part, security=security, registries=registries
                    )
                except Owed:
                    owes.append(move.src)
                done += len(part)
                renew()
                if progress:
                    progress(done, max(total, done))
        moves = plan([s for s in sources if s not in owes], new, [], security, renew)
        total += sum(len(m.items) for m in moves)
    _publish(everyone, new, version + 1, members, security)  # the same members: complete
    return {
        "planned": total,
        "copied": copied,
        "version": version + 1,
        "passes": rounds,
        "skipped": [str(s) for s in skipped],
        "owed": [str(s) for s in owes],
        "cleared": cleared,
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
