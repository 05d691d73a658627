"""What a failure means and the way back: counting, ejecting, journaling, probing, re-admitting.

This module owns rule 3 of the README's consistency section ("a node that was out misses
nothing silently"): every executed call is counted for or against its peer (``settle``, which
says which peers it ejected), a failed write is journaled for its peer (the node may still
apply it late), a write routed around an ejected peer is journaled for it with the stand-ins
that got it and counted as in flight (``fence``/``unfence``), and an ejected peer that
answers a probe is re-admitted only once the journal has been replayed as deletes on it and
on those stand-ins (or it was flushed, when the journal overflowed) with no write in flight
on its behalf. It does no I/O: probes and replays are calls of the operations it yields.
"""

from __future__ import annotations

import logging

from . import protocol
from .membership import Membership
from .peer import Peer
from .protocol import STATUS
from .steps import FAILURES, Call, Op

log = logging.getLogger("ringcache.client")

_REPLAYED = frozenset((b"DELETED", b"NOT_FOUND", b"OK"))
_ONE_STATUS = (STATUS,)
# The shortest wait between probe rounds (a peer whose probe must be repeated at once).
PROBE_TICK = 0.01


class Recovery:
    """Health accounting, the journal's fence, and probing with re-admission."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

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

    def fence(self, placed: dict[bytes, list[Peer]]) -> list[Peer]:
        """Before writing keys (``{key: the peers it goes to}``) elsewhere than where they
        belong: journal each for every peer that should hold it and is out, with the peers
        that get it instead, and count the write as in flight on its behalf (``unfence`` when
        done)."""
        view = self.membership.view
        fenced: list[Peer] = []
        if all(p.health.usable for p in view.peer_list):
            return fenced
        replicas = self.membership.options.replicas
        for k, targets in placed.items():
            for peer in view.holders(k, replicas):
                if not peer.health.usable:
                    peer.record((k,), targets)
                    peer.fenced += 1
                    fenced.append(peer)
        return fenced

    @staticmethod
    def unfence(fenced: list[Peer]) -> None:
        for peer in fenced:
            peer.fenced -= 1

    def journal(self, keys: list[tuple[bytes, Peer]]) -> None:
        """Journal keys for peers that are out (a previous owner during a move)."""
        for k, peer in keys:
            peer.record((k,))

    # -- probing ---------------------------------------------------------------------------
    def probe(self) -> Op[float | None]:
        """Probe every ejected peer that is due (a real round trip on a fresh connection) and
        re-admit those that may take traffic again. Returns the seconds until the next probe
        is due, or None when every peer takes traffic (the driver's prober then stops)."""
        peers = list(self.membership.peers.values())
        due = [p for p in peers if p.health.probe_due()]
        if due:
            calls = [Call(p, protocol.VERSION, _ONE_STATUS, "probe", fresh=True) for p in due]
            yield calls
            answered = []
            for call in calls:
                reply = call.replies[0] if call.error is None else None
                if isinstance(reply, bytes) and reply.startswith(b"VERSION "):
                    answered.append(call.peer)
                else:
                    call.peer.health.probe_result(False)
            if answered:
                yield from self.readmit(answered)
        waits = [
            w for p in self.membership.peers.values() if (w := p.health.probe_wait()) is not None
        ]
        return max(min(waits), PROBE_TICK) if waits else None

    def readmit(self, peers: list[Peer]) -> Op[None]:
        """Peers that answered a probe take traffic again once neither they nor the stand-ins
        that took writes on their behalf hold anything this client replaced or deleted
        meanwhile: the journal's keys are deleted on the peer and on those stand-ins (or, if
        it overflowed, the peer is flushed), again for what was journaled meanwhile, and a
        peer is re-admitted only with an empty journal and no write in flight on its behalf."""
        pending = peers
        while pending:
            calls: list[Call] = []
            taken: dict[Peer, tuple[dict[bytes, set[Peer]], bool, list[Call]]] = {}
            for peer in pending:
                journal, overflow = peer.journal, peer.journal_overflow
                if not journal and not overflow:
                    if peer.fenced:
                        peer.health.probe_again()  # a write on its behalf is in flight
                    else:
                        peer.health.probe_result(True)
                        log.warning("re-admitted %s after a successful probe", peer.server)
                    continue
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
                taken[peer] = (journal, overflow, own)
                calls += own
            if not calls:
                return
            yield calls
            pending = []
            for peer, (journal, overflow, own) in taken.items():
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
                peer.health.probe_result(False)
