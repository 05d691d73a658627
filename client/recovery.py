"""What a failure means and the way back: counting, ejecting, journaling, probing, re-admitting.

This module owns rule 3 of the README's consistency section ("a node that was out misses
nothing silently"): every executed call is counted for or against its peer (``settle``, which
says which peers it ejected), a failed write is journaled for its peer (the node may still
apply it late), and a write routed around an ejected peer is journaled for it with the
stand-ins that got it and counted as in flight (``fence``), journaled again when it is done
(``unfence``: it may have landed after a replay). An ejected peer that answers a probe is
*returning*: writes reach it again (the engine first removes the key from the stand-in that
holds it meanwhile), so nothing new is journaled for it, and the journal it has is replayed
as deletes on it and on those stand-ins (or it is flushed, when the journal overflowed). It
is re-admitted once it owes nothing: an empty journal, no write in flight on its behalf, and
— when a write to it failed after it may have reached the node, so that the node can still
carry it out after the replay (a request held by a stalled process or network) — those keys
deleted once more after ``late_window`` seconds of it answering — and, across clients
(``debts``), once no other client owes it a replay: this client settles its own debt first,
a live debt of another keeps the peer returning, and a debt whose client died makes this
client flush the peer before it reads it. Since a returning peer's journal only shrinks,
re-admission ends under any write load. It does no I/O: probes, replays and the debts' reads
and writes are calls of the operations it yields.
"""

from __future__ import annotations

import logging

from . import protocol
from .debts import Debts
from .membership import Membership
from .peer import Peer
from .protocol import STATUS
from .steps import FAILURES, Call, Op

log = logging.getLogger("ringcache.client")

_REPLAYED = frozenset((b"DELETED", b"NOT_FOUND", b"OK"))
_ONE_STATUS = (STATUS,)
# The shortest wait between probe rounds (while a peer is returning).
PROBE_TICK = 0.01
# What ``fence`` counted: each peer out, the key written on its behalf, and where it went.
Fence = list[tuple[Peer, bytes, list[Peer]]]


class Recovery:
    """Health accounting, the journal's fence, and probing with re-admission."""

    def __init__(self, membership: Membership, debts: Debts) -> None:
        self.membership = membership
        self.debts = debts
        options = membership.options
        self.clock = options.clock
        # How long after a peer answers a write it was sent before may still be carried out.
        self.late_window = max(2 * options.timeout, 0.5)

    def settle(self, step: list[Call]) -> list[Peer]:
        """Count each executed call for or against its peer; the peers it ejected."""
        ejected: list[Peer] = []
        for call in step:
            if call.fresh:
                continue
            peer = call.peer
            error = call.error
            if error is None:
                if peer.health.consecutive_failures:
                    peer.health.succeeded()
                continue
            if not isinstance(error, FAILURES):
                raise error  # not the node failing: a bug, raised as it is
            if call.writes:
                peer.record(call.writes)
                if not isinstance(error, ConnectionRefusedError):  # it may have been sent
                    peer.late.update(call.writes)
            if peer.health.failed():
                log.warning(
                    "ejected %s after %d failures (%s: %r)",
                    peer.server,
                    peer.health.failure_limit,
                    call.what,
                    error,
                )
                ejected.append(peer)
            else:
                log.info("%s failed on %s: %r", call.what, peer.server, error)
        return ejected

    def fence(self, placed: dict[bytes, list[Peer]]) -> Fence:
        """Before writing keys (``{key: the peers it goes to}``) elsewhere than where they
        belong: journal each for every peer that should hold it and is out (a returning peer
        gets the write itself), with the peers that get it instead, and count the write as in
        flight on its behalf (``unfence`` when done)."""
        fenced: Fence = []
        if self.membership.all_usable():
            return fenced
        view = self.membership.view
        replicas = self.membership.options.replicas
        for k, targets in placed.items():
            for peer in view.holders(k, replicas):
                if not peer.health.usable and not peer.health.returning:
                    peer.record((k,), targets)
                    peer.fenced += 1
                    fenced.append((peer, k, targets))
        return fenced

    @staticmethod
    def unfence(fenced: Fence) -> None:
        """The fenced writes are done: journaled again for peers still not live (a replay may
        have run while they were in flight, and they may have landed after it)."""
        for peer, k, targets in fenced:
            peer.fenced -= 1
            if not peer.health.usable:
                peer.record((k,), targets)

    def journal(self, keys: list[tuple[bytes, Peer]]) -> None:
        """Journal keys for peers that are out (a previous owner during a move)."""
        for k, peer in keys:
            peer.record((k,))

    # -- probing ---------------------------------------------------------------------------
    def probe(self) -> Op[float | None]:
        """Probe every ejected peer that is due (a real round trip on a fresh connection),
        then replay what the returning ones are owed and re-admit those that owe nothing.
        Returns the seconds until the next probe is due, or None when every peer takes
        traffic (the driver's prober then stops)."""
        peers = list(self.membership.peers.values())
        returning = [p for p in peers if p.health.returning]
        due = [p for p in peers if p.health.probe_due()]
        if due:
            calls = [Call(p, protocol.VERSION, _ONE_STATUS, "probe", fresh=True) for p in due]
            yield calls
            for call in calls:
                reply = call.replies[0] if call.error is None else None
                answered = isinstance(reply, bytes) and reply.startswith(b"VERSION ")
                call.peer.health.probe_result(answered)
                if answered:
                    returning.append(call.peer)
        if returning:
            yield from self.readmit(returning)
        waits = [
            w for p in self.membership.peers.values() if (w := p.health.probe_wait()) is not None
        ]
        return max(min(waits), PROBE_TICK) if waits else None

    def readmit(self, peers: list[Peer]) -> Op[None]:
        """Returning peers take reads again once neither they nor the stand-ins that took
        writes on their behalf hold anything this client replaced or deleted meanwhile: the
        journal's keys are deleted on the peer and on those stand-ins (or, if it overflowed,
        the peer is flushed), again for what was journaled meanwhile; the keys of writes that
        failed on it once more after ``late_window``; and a peer is re-admitted only with
        nothing left to replay and no write in flight on its behalf (else it stays returning
        until a later round)."""
        pending = peers
        ready: list[Peer] = []
        while pending:
            calls: list[Call] = []
            taken: dict[Peer, tuple[dict[bytes, set[Peer]], bool, bool, list[Call]]] = {}
            for peer in pending:
                if not peer.health.returning:
                    continue  # failed meanwhile: ejected again
                journal, overflow, late = peer.journal, peer.journal_overflow, False
                if not journal and not overflow:
                    if peer.fenced:
                        continue  # a write on its behalf is in flight
                    if peer.late:
                        if self.clock() - peer.health.returning_since < self.late_window:
                            continue  # a late write may still land
                        journal, late = {k: set() for k in peer.late}, True
                        peer.late = set()
                    else:
                        ready.append(peer)
                        continue
                else:
                    peer.journal, peer.journal_overflow = {}, False
                own: list[Call] = []
                if overflow:
                    own.append(Call(peer, protocol.flush_all(), _ONE_STATUS, "flush", fresh=True))
                by_peer: dict[Peer, list[bytes]] = {} if overflow else {peer: list(journal)}
                for k, standins in journal.items():
                    for standin in standins:
                        if standin is peer:
                            continue
                        if standin.health.usable:
                            by_peer.setdefault(standin, []).append(k)
                        else:  # out too: its own journal takes the copy it holds
                            standin.record((k,))
                for target, ks in by_peer.items():
                    data = b"".join([protocol.delete(k) for k in ks])
                    own.append(Call(target, data, (STATUS,) * len(ks), "replay", ks, fresh=True))
                taken[peer] = (journal, overflow, late, own)
                calls += own
            if not calls:
                break
            yield calls
            pending = []
            for peer, (journal, overflow, late, own) in taken.items():
                if all(c.error is None and all(r in _REPLAYED for r in c.replies) for c in own):
                    if overflow:
                        peer.journal_flushes += 1
                        log.warning("flushed %s: its recovery journal overflowed", peer.server)
                    pending.append(peer)
                    continue
                # Not replayed: kept for the next probe.
                peer.journal_overflow = peer.journal_overflow or overflow
                for k, standins in journal.items():
                    peer.record((k,), standins)
                if late:
                    peer.late.update(journal)
                peer.health.probe_result(False)

        if ready:
            yield from self._agree(ready)

    def _agree(self, peers: list[Peer]) -> Op[None]:
        """Peers this client owes nothing: its debts settled, re-admitted unless another
        client owes them a replay; flushed first where a debtor died."""
        yield from self.debts.settle(peers)
        verdicts = yield from self.debts.check(peers)
        flush = []
        for peer in peers:
            verdict = verdicts[peer]
            if verdict.live:
                log.info("%s stays out: owed a replay by %s", peer.server, sorted(verdict.live))
            elif verdict.orphans:
                flush.append(peer)
            else:
                self._readmit(peer)
        if not flush:
            return
        calls = [Call(p, protocol.flush_all(), _ONE_STATUS, "flush", fresh=True) for p in flush]
        yield calls
        for call in calls:
            peer = call.peer
            if call.error is not None or call.replies[0] != b"OK":
                peer.health.probe_result(False)
                continue
            orphans = verdicts[peer].orphans
            log.warning("flushed %s: owed a replay by %s, gone", peer.server, sorted(orphans))
            yield from self.debts.forget(peer, orphans)
            self._readmit(peer)

    @staticmethod
    def _readmit(peer: Peer) -> None:
        if peer.journal or peer.journal_overflow or peer.fenced or peer.late:
            return  # owed something again meanwhile: a later round
        peer.health.readmitted()
        log.warning("re-admitted %s after a successful probe", peer.server)
