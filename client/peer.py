"""One server as the engine sees it: its health, whether it speaks meta, and what this client
owes it.

This module owns the state the engine keeps per server: ``NodeHealth`` (failures, ejection,
probes), meta-protocol support (None until the server has said, from the first ``ERROR`` it
answers to a meta command), the recovery journal (keys written or deleted elsewhere on its
behalf while it was out, with the stand-ins that got them), the count of writes in flight on
its behalf (``fenced``), and get_or_set's lease counters. It holds no connection and does no
I/O: the drivers keep their pools beside it, keyed by peer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .health import NodeHealth
from .options import Options
from .ring import Server


class Peer:
    """One server: health, meta support, recovery journal and counters."""

    __slots__ = (
        "fenced",
        "health",
        "journal",
        "journal_flushes",
        "journal_overflow",
        "journal_size",
        "late",
        "leases",
        "meta",
        "server",
    )

    def __init__(self, server: Server, options: Options) -> None:
        self.server = server
        self.health = NodeHealth(
            options.failure_limit,
            options.probe_interval,
            options.probe_max_interval,
            options.clock,
        )
        self.meta: bool | None = None
        # The recovery journal: replayed as deletes on the node and on the stand-ins before
        # the node takes traffic again; past ``journal_size`` keys the node is flushed instead.
        self.journal: dict[bytes, set[Peer]] = {}
        self.journal_size = options.journal_size
        self.journal_overflow = False
        self.journal_flushes = 0
        # Writes on this peer's behalf still in flight: it is not re-admitted while any is.
        self.fenced = 0
        # Keys whose write to this peer failed after it may have reached the node: a request
        # held by a stalled node or network can be carried out after the replay deleted it,
        # so they are deleted once more when such a late write would have landed.
        self.late: set[bytes] = set()
        self.leases: dict[str, float] = {"won": 0, "waits": 0, "wait_seconds": 0.0, "fallbacks": 0}

    def record(self, keys: Iterable[bytes], standins: Iterable[Peer] = ()) -> None:
        """Journal ``keys``, written on ``standins``; past ``journal_size`` keys the journal
        is dropped and the node marked for a flush instead (the safe fallback)."""
        if self.journal_overflow:
            return
        journal = self.journal
        for k in keys:
            got = journal.get(k)
            if got is None:
                journal[k] = got = set()
            got.update(standins)
        if len(journal) > self.journal_size:
            journal.clear()
            self.journal_overflow = True

    def stats(self) -> dict[str, Any]:
        """What this client saw of the server (``node_stats``)."""
        return {
            "state": self.health.state.value,
            "failures": self.health.failures,
            "ejections": self.health.ejections,
            "meta": self.meta,
            "journal": len(self.journal),
            "journal_flushes": self.journal_flushes,
            "leases": dict(self.leases),
        }

    def __repr__(self) -> str:
        return f"Peer({self.server})"
