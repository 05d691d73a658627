"""Following DNS: the membership changes when the set of names DNS returns changes, through
the move protocol, one mover at a time.

This module owns ``MoveLock`` (the one lock every mover takes: ``ringcache add``/``remove``/
``rebalance``, a pod's ``preStop`` and the follower), the plan of a move kept on the nodes so
that a follower restarted in the middle of one finishes it, and ``follow_once``: one round of
``ringcache follow``. The lock is an item ``ringcache:move:lock`` added (memcached's ``add``:
one winner) on every reachable server, in the order of their names, with a TTL the holder
renews; the plan is the item ``ringcache:move:plan`` on every server. Both live in the cache
itself, so the lock is lost with a restarted node: a second follower started by mistake then
waits for a round or two, never moves at the same time as the first while both see the nodes.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from ringcache.client import Connection, RingcacheError, Security, Server, protocol
from ringcache.client.protocol import Meta
from ringcache.client.resolve import placed

from .rebalance import MOVERS_KEYS, publish, published, rebalance

LOCK_KEY = MOVERS_KEYS + b"lock"
PLAN_KEY = MOVERS_KEYS + b"plan"
DRAINED = MOVERS_KEYS + b"drained:"  # + a server's name: the node process a remove drained
DRAINED_TTL = 3600
LOCK_TTL = 15.0  # at least; a mover that sleeps ``grace`` between renewals holds it 3 graces


class MoveBusy(RuntimeError):
    """Another mover holds the lock."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"another move is in progress ({holder})")


def _request(server: Server, data: bytes, kinds: tuple[int, ...], security: Security | None):
    with Connection(server, timeout=2, security=security) as conn:
        return conn.request(data, kinds)


class MoveLock:
    """One mover at a time over ``servers``; ``owner`` says who holds it (host, pid, id)."""

    def __init__(
        self, servers: list[Server], security: Security | None = None, grace: float = 5.0
    ) -> None:
        self.servers = sorted({s.name: s for s in servers}.values(), key=lambda s: s.name)
        self.security = security
        self.ttl = int(max(LOCK_TTL, 3 * grace))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: list[Server] = []
        self.renewed = 0.0

    def try_acquire(self) -> None:
        """Take the lock on every server that answers, or raise ``MoveBusy`` holding nothing.
        A server that does not answer, or refuses (a login it wants), holds nothing: the move
        itself then says what is wrong."""
        data = self.owner.encode()
        for server in self.servers:
            try:
                add = protocol.store(b"add", LOCK_KEY, 0, self.ttl, data)
                (reply,) = _request(server, add, (protocol.STATUS,), self.security)
                if reply == b"NOT_STORED":
                    read = protocol.meta_get(LOCK_KEY, b"v")
                    (found,) = _request(server, read, (protocol.META,), self.security)
                    holder = found.value if isinstance(found, Meta) else None
                    if holder is not None and holder != data:
                        self.release()
                        raise MoveBusy(holder.decode(errors="replace"))
                elif reply != b"STORED":
                    continue
            except (OSError, RingcacheError):
                continue
            self.held.append(server)
        self.renewed = time.monotonic()

    def acquire(self, wait: float, waiting: Callable[[str], None] | None = None) -> None:
        deadline = time.monotonic() + wait
        said = None
        while True:
            try:
                self.try_acquire()
                return
            except MoveBusy as busy:
                if time.monotonic() >= deadline:
                    raise
                if waiting is not None and busy.holder != said:
                    waiting(busy.holder)
                    said = busy.holder
                time.sleep(0.5)

    def renew(self) -> None:
        """Push the TTL back (at most every few seconds; a move calls it as it goes)."""
        if time.monotonic() - self.renewed < self.ttl / 6:
            return
        for server in self.held:
            try:
                _request(
                    server, protocol.touch(LOCK_KEY, self.ttl), (protocol.STATUS,), self.security
                )
            except (OSError, RingcacheError):
                pass
        self.renewed = time.monotonic()

    def release(self) -> None:
        """Drop the lock where it is still this owner's (compare, then delete by CAS)."""
        for server in self.held:
            try:
                (found,) = _request(
                    server, protocol.meta_get(LOCK_KEY, b"v c"), (protocol.META,), self.security
                )
                if isinstance(found, Meta) and found.value == self.owner.encode():
                    cas = found.flags["c"]
                    _request(
                        server, protocol.meta_delete(LOCK_KEY, b"C" + cas), (protocol.META,),
                        self.security,
                    )  # fmt: skip
            except (OSError, RingcacheError):
                pass
        self.held = []

    def __enter__(self) -> MoveLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _names(servers: list[Server]) -> set[str]:
    return {s.name for s in servers}


def _encode(servers: list[Server]) -> list[list[Any]]:
    return [[s.host, s.ip, s.port] for s in servers]


def _decode(rows: list[list[Any]]) -> list[Server]:
    return [Server(host=host, ip=ip, port=int(port)) for host, ip, port in rows]


def save_plan(servers: list[Server], old: list[Server], new: list[Server], sec) -> None:
    data = json.dumps({"old": _encode(old), "new": _encode(new)}).encode()
    for server in servers:
        try:
            _request(server, protocol.store(b"set", PLAN_KEY, 0, 0, data), (protocol.STATUS,), sec)
        except (OSError, RingcacheError):
            pass


def load_plan(servers: list[Server], sec) -> tuple[list[Server], list[Server]] | None:
    for server in servers:
        try:
            (found,) = _request(server, protocol.meta_get(PLAN_KEY, b"v"), (protocol.META,), sec)
        except (OSError, RingcacheError):
            continue
        if isinstance(found, Meta) and found.value:
            try:
                plan = json.loads(found.value)
                return _decode(plan["old"]), _decode(plan["new"])
            except (ValueError, KeyError, TypeError):
                continue
    return None


def drop_plan(servers: list[Server], sec) -> None:
    for server in servers:
        try:
            _request(server, protocol.delete(PLAN_KEY), (protocol.STATUS,), sec)
        except (OSError, RingcacheError):
            pass


def identity(server: Server, security: Security | None = None) -> tuple[str, int] | None:
    """Which process answers at ``server``: its pid and start time, and the connections it
    has accepted so far (``total_connections``); None if none answers. The pid and start
    time alone do not tell a process from the one it replaced when the pid is the same (a
    container's pid 1) and the start time is carried over (a warm restart keeps
    ``process_started``, as memcached's does); the count does: it only grows in one process
    and starts again in the next."""
    try:
        (stats,) = _request(server, protocol.stats(), (protocol.STATS,), security)
        started = int(stats[b"time"]) - int(stats[b"uptime"])
        return f"{stats[b'pid'].decode()}@{started}", int(stats[b"total_connections"])
    except (OSError, RingcacheError, KeyError, ValueError, TypeError):
        return None


def mark_drained(server: Server, members: list[Server], security: Security | None) -> None:
    """Before a ``remove`` of ``server`` (a pod's preStop) moves its keys: remember on the
    members which process is being drained (``identity``: ``pid@start connections``), so
    that the follower does not move keys back onto it while DNS still lists the terminating
    pod (only a server that is no longer a member is looked up, so a remove that fails leaves
    the mark unused)."""
    ident = identity(server, security)
    if ident is None:
        return
    mark = ("%s %d" % ident).encode()
    data = protocol.store(b"set", DRAINED + server.name.encode(), 0, DRAINED_TTL, mark)
    for member in members:
        try:
            _request(member, data, (protocol.STATUS,), security)
        except (OSError, RingcacheError):
            pass


def drained(server: Server, members: list[Server], security: Security | None) -> bool:
    """Whether ``server`` is the very process a ``remove`` drained (or none answers there):
    not to be added back. A pod restarted under the same name is another process: another
    pid or start time, or (a warm restart as pid 1) fewer connections accepted than the
    drained one had."""
    read = protocol.meta_get(DRAINED + server.name.encode(), b"v")
    for member in members:
        try:
            (found,) = _request(member, read, (protocol.META,), security)
        except (OSError, RingcacheError):
            continue
        if isinstance(found, Meta) and found.value:
            ident = identity(server, security)
            if ident is None:
                return True
            marked, _, count = found.value.decode(errors="replace").partition(" ")
            return ident[0] == marked and ident[1] >= (int(count) if count.isdigit() else 0)
    return False


def follow_once(
    found: list[Server],
    grace: float,
    security: Security | None = None,
    lock: MoveLock | None = None,
    say: Callable[[str], None] = print,
) -> str:
    """One round of the follower, ``found`` being what DNS names now (with addresses).

    Nothing published yet: publish ``found`` (the membership the clients started from). An
    interrupted move (an odd version): finish it, from the plan kept on the nodes (or, when
    there is none, from the members that remain). A settled membership whose names differ
    from DNS: move the keys to ``found`` and publish it. Else nothing but giving the membership
    to a node that lacks it (a pod restarted empty). Returns what it did
    (``idle``, ``busy``, ``published``, ``resumed``, ``moved``)."""
    current = published(found, security)
    found = _without_drained(found, current, security, say)
    everyone = list({s.name: s for s in [*found, *(current.servers if current else [])]}.values())
    lock = lock or MoveLock(everyone, security, grace)
    settled = current is not None and current.version and current.version % 2 == 0
    if settled and _names(current.servers) == _names(found):
        _catch_up(found, current, security, say)
        return "idle"
    try:
        lock.try_acquire()
    except MoveBusy as busy:
        say(f"waiting: {busy}")
        return "busy"
    try:
        current = published(everyone, security)  # again, under the lock
        # A remove may have ended between the first look and the lock: look again.
        found = _without_drained(found, current, security, say)
        if current is None or current.version == 0:
            failed = publish(found, found, 2, security)
            say(f"published the membership DNS names: {';'.join(map(str, found))}" + (
                f" (not adopted by {', '.join(map(str, failed))})" if failed else ""))  # fmt: skip
            return "published"
        members = placed(current.servers, found)
        if current.version % 2:
            plan = load_plan(everyone, security)
            old, new = plan if plan is not None else (members, members)
            say(f"finishing the interrupted move to {';'.join(map(str, new))}")
            _move(old, new, everyone, grace, security, lock, say)
            return "resumed"
        if _names(members) == _names(found):
            return "idle"
        say(f"DNS names {';'.join(map(str, found))}; moving from {';'.join(map(str, members))}")
        save_plan(everyone, members, found, security)
        _move(members, found, everyone, grace, security, lock, say)
        return "moved"
    finally:
        lock.release()


def _without_drained(found: list[Server], current, security: Security | None, say) -> list[Server]:
    """``found`` without the pods that a ``remove`` drained and that are no longer members:
    DNS lists a terminating pod a while longer, and keys moved back onto it would be lost."""
    if current is None or not current.version:
        return found
    names = _names(current.servers)
    kept = [s for s in found if s.name in names or not drained(s, found, security)]
    if len(kept) < len(found):
        gone = ", ".join(str(s) for s in found if s not in kept)
        say(f"{gone}: drained by a remove (its preStop) and still the same process: left out")
    return kept


def _catch_up(servers: list[Server], current, security: Security | None, say) -> None:
    """Give the membership to a node that lacks it (a pod restarted empty): clients that ask
    it for the membership must not be told of none."""
    for server in servers:
        config = published([server], security)
        behind = config is not None and config.version < current.version
        if behind and not publish([server], current.servers, current.version, security):
            say(f"{server} had membership version {config.version}: given {current.version}")


def _move(
    old: list[Server],
    new: list[Server],
    everyone: list[Server],
    grace: float,
    security: Security | None,
    lock: MoveLock,
    say: Callable[[str], None],
) -> None:
    result = rebalance(old, new, grace=grace, security=security, renew=lock.renew)
    drop_plan(everyone, security)
    for server in result["skipped"]:
        say(f"{server} did not answer: nothing was moved from it")
    for server in result["owed"]:
        say(f"{server} is owed a replay by a client: nothing more was moved from it")
    if result["cleared"]:
        say(f"deleted {result['cleared']} items that a joining node kept from before it joined")
    say(f"moved {result['copied']} of {result['planned']} keys; version {result['version']}")
