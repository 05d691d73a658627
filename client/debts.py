"""Agreement across clients, kept in the nodes: who still owes an ejected node a replay.

This module owns rule 4 of the README's consistency section. A client that writes around an
ejected node N (its writes go to stand-ins, its journal fills) first registers a *debt* for
N, and removes it once it has replayed its journal on N; while any debt for N exists, no
client reads N, and a debt whose client died (its item expired) makes N be flushed before
anyone reads it. There is no coordinator: the debts live on the other nodes, in two kinds of
items that every client of the cluster reads and writes the same way:

- ``ringcache:debts:<N>``: the index, the ids of N's debtors separated by spaces, changed
  only by ``gets``/``cas`` (``add`` when absent; a ``cas`` to an already-expired value, which
  memcached takes as a conditional delete, when the last debtor leaves); it never expires,
  and exists only while N is owed something;
- ``ringcache:debt:<N>:<id>``: one per debtor, with a TTL of ``DEBT_TTL`` seconds that the
  debtor renews every ``REFRESH`` seconds while it owes N anything.

Both are written on every usable node but N (a node that restarted empty loses its copies;
the others keep them) and read from all of them when N is about to be re-admitted: an id in
an index whose item is still there is a live debt (N stays out), an id whose item is gone is
an orphan (its client died or stalled past the TTL: N is flushed, then the id removed).
``watch`` asks two of the others every ``WATCH`` seconds whether each node this client takes
as live has an index (``touch``, so that the nodes' ``get_hits``/``get_misses`` — the
application's hit ratio — are not moved by it), reads those that do, and ejects a node that
someone else owes. A look that got every answer is a lease: the client reads the nodes only
within ``LEASE`` seconds of its start, and looks again before reading when it ran out; a
client writes around a node only once its debt for it is ``HOLD`` old. So a client that can
reach a node that another cannot (a partial partition) has stopped reading it before the
other's first write around it is made.
It does no I/O: every read and write is a call of the operations it yields.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterable

from . import protocol
from .membership import Membership
from .peer import Peer
from .protocol import STATUS, VALUES
from .steps import Call, Op, Pause

log = logging.getLogger("ringcache.client")

DEBT_TTL = 3  # seconds a debt outlives its client's last renewal
REFRESH = 1.0  # seconds between renewals
WATCH = 0.3  # seconds between two looks at the debts of the nodes taken as live
# A client reads the nodes for LEASE seconds after the start of its last look that answered,
# then looks again before it reads. A client that has just registered a debt for a node waits
# until the debt is HOLD seconds old before it writes around the node: by then every client
# that still reads the node has seen the debt and stopped (a partial partition cannot make a
# completed write readable under its old value). LEASE is the same for every client of a
# cluster, and longer than WATCH plus a look that waits out a hung node (the default
# timeout, 0.5 s), so that a busy client's lease never runs out between two looks.
LEASE = 0.8
HOLD = LEASE + 0.05
EDIT_ROUNDS = 10  # gets/cas attempts on one index before that copy is given up
_ONE_VALUES = (VALUES,)


# The prefix of both kinds of items: kept on the node they were written to, never moved.
DEBT_KEYS = b"ringcache:debt"


def index_of(name: str) -> bytes:
    """The index of the debts owed to the server named ``name`` (the mover reads it too)."""
    return DEBT_KEYS + b"s:" + name.encode()


def index_key(peer: Peer) -> bytes:
    return index_of(peer.server.name)


def item_key(peer: Peer, debtor: bytes) -> bytes:
    return DEBT_KEYS + b":" + peer.server.name.encode() + b":" + debtor


class Verdict:
    """What the registries say of one node's debts: the live debtors and the orphans."""

    __slots__ = ("live", "orphans")

    def __init__(self) -> None:
        self.live: set[bytes] = set()
        self.orphans: set[bytes] = set()


class Debts:
    """This client's debts, and the reading of everyone's."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self.enabled = membership.options.agreement
        self.clock = membership.options.clock
        self.identity = b""
        self.owed: dict[Peer, float] = {}  # peer -> when this client last renewed its debt
        self.since: dict[Peer, float] = {}  # peer -> when this client's debt was registered
        self.next_watch = 0.0
        self.lease_until = 0.0  # reads need a look at the debts first
        self.failed: list[Call] = []  # the calls of the last look that failed
        self.renew_identity()

    def renew_identity(self) -> None:
        """A new id, owing nothing (a process made by fork() is a client of its own)."""
        self.identity = b"%d.%s" % (os.getpid(), secrets.token_hex(4).encode())
        self.owed = {}
        self.since = {}
        self.lease_until = 0.0

    @property
    def watching(self) -> bool:
        """Whether ``watch`` has anything to look at: agreement on, and two nodes or more."""
        return self.enabled and len(self.membership.view.peer_list) > 1

    def lapsed(self) -> bool:
        """Whether this client must look at the debts before it reads (its lease ran out).
        Without anything to watch (agreement off, one node) it never must; that is asked
        again ``LEASE`` seconds later, or at once when the membership changes."""
        now = self.clock()
        if not self.watching:
            self.lease_until = now + LEASE
            return False
        return now >= self.lease_until

    def registries(self, peer: Peer) -> list[Peer]:
        """Where ``peer``'s debts are kept: every usable node but ``peer``."""
        return [p for p in self.membership.view.peer_list if p is not peer and p.health.usable]

    # -- this client's debts ---------------------------------------------------------------
    def register(self, peers: Iterable[Peer]) -> Op[bool]:
        """Before this client writes around ``peers``: its debt for each on every registry,
        then a pause until the youngest of them is ``HOLD`` seconds old (a client that reads
        one of them has seen the debt by then). False when one could not be registered
        anywhere."""
        peers = list(dict.fromkeys(peers))
        if not self.enabled:
            return True
        registered = yield from self._register([p for p in peers if p not in self.owed])
        young = [self.since[p] for p in peers if p in self.since]
        wait = max(young, default=-HOLD) + HOLD - self.clock()
        if wait > 0:
            yield Pause(wait)
        return registered

    def _register(self, new: list[Peer]) -> Op[bool]:
        if not new:
            return True
        me = self.identity
        items: dict[Peer, list[Peer]] = {}
        for peer in new:
            for registry in self.registries(peer):
                items.setdefault(registry, []).append(peer)
        if not items:
            return False
        calls = []
        for registry, owed in items.items():
            data = b"".join(
                [protocol.store(b"set", item_key(p, me), 0, DEBT_TTL, b"1") for p in owed]
            )
            calls.append(Call(registry, data, (STATUS,) * len(owed), "debt"))
        yield calls
        done = yield from self._edit(items, lambda ids: ids if me in ids else [*ids, me])
        now = self.clock()
        registered = {peer for _, peer in done}
        for peer in new:
            if peer in registered:
                self.owed[peer] = now
                self.since[peer] = now
                log.warning("owes %s a replay: debt %s registered", peer.server, me.decode())
        return registered.issuperset(new)

    def refresh(self) -> Op[None]:
        """Renew this client's debts that are due (a debt whose item is gone is registered
        again: another client may have flushed the node meanwhile, which is safe)."""
        now = self.clock()
        self._drop_departed()
        due = [p for p, at in self.owed.items() if now - at >= REFRESH]
        if not due:
            return
        me = self.identity
        calls = []
        for peer in due:
            for registry in self.registries(peer):
                request = protocol.store(b"set", item_key(peer, me), 0, DEBT_TTL, b"1")
                calls.append(Call(registry, request, (STATUS,), "debt renewal"))
        if calls:
            yield calls
        for peer in due:
            self.owed[peer] = now

    def _drop_departed(self) -> None:
        """Stop renewing debts for peers that left the membership (a previous owner this
        client could not reach during the move that removed it): no replay will reach them,
        and the debt, left to expire, is an orphan, which makes the node be flushed before
        any client reads it again, should it come back."""
        membership = self.membership
        previous = membership.previous.peers if membership.previous is not None else {}
        for peer in list(self.owed):
            name = peer.server.name
            if membership.peers.get(name) is not peer and previous.get(name) is not peer:
                log.warning("%s left the membership: its debt is left to expire", peer.server)
                del self.owed[peer]
                self.since.pop(peer, None)

    def settle(self, peers: Iterable[Peer]) -> Op[None]:
        """This client owes ``peers`` nothing any more: its id out of their indexes, its
        items deleted."""
        settled = [p for p in peers if p in self.owed]
        if not settled:
            return
        me = self.identity
        targets: dict[Peer, list[Peer]] = {}
        for peer in settled:
            for registry in self.registries(peer):
                targets.setdefault(registry, []).append(peer)
        yield from self._edit(targets, lambda ids: [i for i in ids if i != me])
        calls = []
        for registry, owed in targets.items():
            data = b"".join([protocol.delete(item_key(p, me)) for p in owed])
            calls.append(Call(registry, data, (STATUS,) * len(owed), "debt settled"))
        if calls:
            yield calls
        for peer in settled:
            del self.owed[peer]
            self.since.pop(peer, None)

    def forget(self, peer: Peer, orphans: set[bytes]) -> Op[None]:
        """Remove dead debtors from ``peer``'s indexes (after ``peer`` was flushed)."""
        targets = {registry: [peer] for registry in self.registries(peer)}
        yield from self._edit(targets, lambda ids: [i for i in ids if i not in orphans])

    # -- everyone's debts ------------------------------------------------------------------
    def check(self, peers: list[Peer]) -> Op[dict[Peer, Verdict]]:
        """The debts of ``peers`` (others' only), read from every registry of each."""
        verdicts = {p: Verdict() for p in peers}
        reads: dict[Peer, list[Peer]] = {}
        for peer in peers if self.enabled else ():
            for registry in self.registries(peer):
                reads.setdefault(registry, []).append(peer)
        if not reads:
            return verdicts
        listed = yield from self._read_indexes(reads)
        items: dict[Peer, list[tuple[Peer, bytes]]] = {}
        for (registry, peer), ids in listed.items():
            for debtor in ids:
                if debtor != self.identity:
                    items.setdefault(registry, []).append((peer, debtor))
        if not items:
            return verdicts
        calls = [
            Call(r, protocol.get([item_key(p, d) for p, d in pairs]), _ONE_VALUES, "debt check")
            for r, pairs in items.items()
        ]
        yield calls
        for call, pairs in zip(calls, items.values(), strict=True):
            if call.error is not None or isinstance(call.replies[0], BaseException):
                continue  # this registry cannot say: the others can
            present = {key for key, *_ in call.replies[0]}
            for peer, debtor in pairs:
                if item_key(peer, debtor) in present:
                    verdicts[peer].live.add(debtor)
                else:
                    verdicts[peer].orphans.add(debtor)
        for verdict in verdicts.values():
            verdict.orphans -= verdict.live  # gone from one copy, present on another: live
        return verdicts

    def watch(self, now_: bool = False) -> Op[list[Peer]]:
        """Every ``WATCH`` seconds (``now_``: at once): the nodes this client takes as live
        (during a move, the previous owners among them) that another client owes a replay
        (their index exists on another node, and lists someone else). Each node's index is
        asked of two others, so that one node that fails to answer leaves every question
        answered; a look that answered them all renews the lease for ``LEASE`` seconds from
        its start."""
        now = self.clock()
        if (now < self.next_watch and not now_) or not self.watching:
            return []
        self.next_watch = now + WATCH
        peers = self.membership.view.peer_list
        previous = self.membership.previous
        if previous is not None:  # a move: the previous owners are read on a miss too
            peers = list(dict.fromkeys([*peers, *previous.peer_list]))
        live = [p for p in peers if p.health.usable]
        if len(live) < 2:
            self.lease_until = now + LEASE  # nobody else to learn from, nothing to read
            return []
        asks: dict[Peer, list[Peer]] = {}
        for peer in live:
            for registry in [r for r in live if r is not peer][:2]:
                asks.setdefault(registry, []).append(peer)
        calls = [
            Call(
                r,
                b"".join([protocol.touch(index_key(p), 0) for p in ps]),
                (STATUS,) * len(ps),
                "debt watch",
            )
            for r, ps in asks.items()
        ]
        yield calls
        self.failed = [call for call in calls if call.error is not None]
        indexed: dict[Peer, list[Peer]] = {}
        answered: set[Peer] = set()
        for call, (registry, peers) in zip(calls, asks.items(), strict=True):
            if call.error is not None:
                continue
            for peer, reply in zip(peers, call.replies, strict=True):
                if reply == b"TOUCHED":
                    indexed.setdefault(registry, []).append(peer)
                elif reply == b"NOT_FOUND":
                    answered.add(peer)
        listed = (yield from self._read_indexes(indexed)) if indexed else {}
        owed = []
        for (_, peer), ids in listed.items():
            answered.add(peer)
            if any(debtor != self.identity for debtor in ids) and peer not in owed:
                owed.append(peer)
        if answered.issuperset(live):
            self.lease_until = now + LEASE
        return owed

    # -- the index items -------------------------------------------------------------------
    def _read_indexes(
        self, reads: dict[Peer, list[Peer]]
    ) -> Op[dict[tuple[Peer, Peer], list[bytes]]]:
        """``{(registry, peer): debtor ids}`` of the registries that answered."""
        calls = [
            Call(r, protocol.get([index_key(p) for p in ps]), _ONE_VALUES, "debt index")
            for r, ps in reads.items()
        ]
        yield calls
        out: dict[tuple[Peer, Peer], list[bytes]] = {}
        for call, (registry, peers) in zip(calls, reads.items(), strict=True):
            if call.error is not None or isinstance(call.replies[0], BaseException):
                continue
            found = {key: data for key, _, data, _ in call.replies[0]}
            for peer in peers:
                out[(registry, peer)] = found.get(index_key(peer), b"").split()
        return out

    def _edit(
        self,
        targets: dict[Peer, list[Peer]],
        change: Callable[[list[bytes]], list[bytes]],
    ) -> Op[list[tuple[Peer, Peer]]]:
        """Apply ``change`` to the index of each ``(registry, peer)`` with ``gets``/``cas``
        (``add`` when there is none), again where another client changed it meanwhile. The
        pairs whose index now says what ``change`` wanted."""
        # A dict, not a set: the calls go out in the order the targets were given.
        pending = {(r, p): None for r, ps in targets.items() for p in ps}
        done: list[tuple[Peer, Peer]] = []
        for _ in range(EDIT_ROUNDS):
            if not pending:
                break
            reads: dict[Peer, list[Peer]] = {}
            for registry, peer in pending:
                reads.setdefault(registry, []).append(peer)
            calls = [
                Call(r, protocol.get([index_key(p) for p in ps], True), _ONE_VALUES, "debt index")
                for r, ps in reads.items()
            ]
            yield calls
            writes: list[tuple[Call, list[tuple[Peer, Peer]]]] = []
            for call, (registry, peers) in zip(calls, reads.items(), strict=True):
                if call.error is not None or isinstance(call.replies[0], BaseException):
                    for p in peers:  # this copy is given up
                        pending.pop((registry, p), None)
                    continue
                found = {key: (data, token) for key, _, data, token in call.replies[0]}
                parts, pairs = [], []
                for peer in peers:
                    key = index_key(peer)
                    data, token = found.get(key, (None, None))
                    ids = [] if data is None else data.split()
                    wanted = change(ids)
                    if (wanted == ids and data is not None) or (data is None and not wanted):
                        pending.pop((registry, peer), None)
                        done.append((registry, peer))
                        continue
                    value = b" ".join(wanted)
                    if data is None:
                        parts.append(protocol.store(b"add", key, 0, 0, value))
                    elif not wanted:  # the last debtor left: gone, unless changed meanwhile
                        parts.append(protocol.store(b"cas", key, 0, -1, b"", token))
                    else:
                        parts.append(protocol.store(b"cas", key, 0, 0, value, token))
                    pairs.append((registry, peer))
                if parts:
                    kinds = (STATUS,) * len(parts)
                    writes.append((Call(registry, b"".join(parts), kinds, "debt index"), pairs))
            if not writes:
                continue
            yield [call for call, _ in writes]
            for call, pairs in writes:
                for pair, reply in zip(pairs, call.replies or [None] * len(pairs), strict=True):
                    if call.error is not None or reply == b"STORED":
                        pending.pop(pair, None)  # stored, or this copy is given up
                    if call.error is None and reply == b"STORED":
                        done.append(pair)
        return done
