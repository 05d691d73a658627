"""Per-node health: live → failing → ejected → probing → returning → live.

This module owns when a node stops receiving traffic and when it gets it back. Every
connection failure counts (refused, reset, timeout, unexpected close); ``failure_limit``
consecutive failures eject the node; only a successful probe (a real round trip made by the
client's prober) makes it *returning*, with exponential backoff between probes while it keeps
failing; and a returning node is live again once recovery has replayed what it owes it
(``recovery``). A returning node takes writes but no reads. It does no I/O, takes no lock
(the engine's code runs as one piece between steps; see ``steps``) and reads time from an
injected clock, so it is tested without sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class State(Enum):
    LIVE = "live"
    FAILING = "failing"
    EJECTED = "ejected"
    PROBING = "probing"
    RETURNING = "returning"


class NodeHealth:
    """The health of one node."""

    def __init__(
        self,
        failure_limit: int = 2,
        probe_interval: float = 0.25,
        probe_max_interval: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_limit = max(1, failure_limit)
        self.probe_interval = probe_interval
        self.probe_max_interval = probe_max_interval
        self.clock = clock
        self.state = State.LIVE
        self.consecutive_failures = 0
        self.failures = 0  # every failure ever counted
        self.ejections = 0
        self.next_probe = 0.0
        self.returning_since = 0.0  # when it last answered a probe after being out
        self._backoff = probe_interval

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        self._state = state
        # Whether requests go to this node (failing nodes still get traffic); a plain
        # attribute because every request reads it.
        self.usable = state in (State.LIVE, State.FAILING)
        # Answered a probe; its journal is being replayed: writes reach it, reads do not.
        self.returning = state is State.RETURNING

    def succeeded(self) -> None:
        if self.consecutive_failures:  # FAILING always has some; LIVE with none needs nothing
            if self.state is State.FAILING:
                self.state = State.LIVE
            self.consecutive_failures = 0

    def failed(self) -> bool:
        """Count one failure; True when it ejected the node."""
        self.failures += 1
        if self.state is State.RETURNING:  # a write to it failed: out again, probed later
            self._out(min(self._backoff * 2, self.probe_max_interval))
            return True
        if not self.usable:
            return False
        self.consecutive_failures += 1
        if self.consecutive_failures < self.failure_limit:
            self.state = State.FAILING
            return False
        return self.eject()

    def eject(self) -> bool:
        """Take the node out now (its failures reached the limit, or another client owes it a
        replay); True when it was in."""
        if not self.usable:
            return False
        self.ejections += 1
        self._out(self.probe_interval)
        return True

    def _out(self, backoff: float) -> None:
        self.state = State.EJECTED
        self._backoff = backoff
        self.next_probe = self.clock() + backoff

    def probe_due(self) -> bool:
        """True (and the node marked PROBING) when an ejected node should be probed now."""
        if self.state is not State.EJECTED or self.clock() < self.next_probe:
            return False
        self.state = State.PROBING
        return True

    def probe_wait(self) -> float | None:
        """Seconds until this node's next probe is due (0 when it is due, under way, or the
        node is returning); None while it takes traffic."""
        if self.usable:
            return None
        if self.state is not State.EJECTED:
            return 0.0
        return max(0.0, self.next_probe - self.clock())

    def probe_result(self, ok: bool) -> None:
        """The probe's outcome: returning when it was answered, else ejected with the next
        probe backed off. A returning node whose replay failed is ejected the same way."""
        if self.state not in (State.PROBING, State.RETURNING):
            return
        if ok:
            if self.state is State.PROBING:
                self.returning_since = self.clock()
            self.state = State.RETURNING
        else:
            self._out(min(self._backoff * 2, self.probe_max_interval))

    def readmitted(self) -> None:
        """A returning node owes nothing any more: it takes reads again."""
        if self.state is State.RETURNING:
            self.state = State.LIVE
            self.consecutive_failures = 0
