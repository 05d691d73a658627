"""The drivers' connections to each peer, and how a stale one is told apart.

This module owns connection reuse for both drivers: a bounded stack of idle connections per peer
(``Pool``: the sync driver's and trio's, a connection carries one call at a time), the shared
connections of asyncio's driver (``Lanes``: each carries up to ``DEPTH`` calls at once, their
requests written together and their replies read in order; another is opened only when every
open one is that deep, at most ``size``), one of either per peer (``Pools``; a peer that leaves
the membership has its own retired: idle connections closed, shared ones once their calls have
their replies), the rule that a connection idle for more than ``STALE_CHECK_AFTER`` is checked
before it carries a request (closed if the server closed it meanwhile, so a restarted node's old
connections are replaced instead of counting as its failures; one idle for less is not checked:
a server that closed it within that time died, and a request to it fails anyway), and the check
itself: an idle connection is stale when its reader holds bytes nobody asked for or its socket
is readable (the server closed it, or sent what was not asked for), tested with ``poll``, which
takes descriptors of any number, unlike ``select``. A TLS connection is tested on its socket
too: a TLS record that arrives while it is idle (none does, after a request has been answered,
from the node or from memcached) would only cost a reconnect, never a failure. The time is the
engine's injected clock. A connection has ``idle_since``, ``reader``, ``sock`` and ``close()``.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from .protocol import Reader

STALE_CHECK_AFTER = 0.01  # seconds a pooled connection may sit idle before use checks it
DEPTH = 32  # calls in flight on one shared connection before another one is opened


class Pooled(Protocol):
    idle_since: float
    reader: Reader
    sock: socket.socket

    def close(self) -> None: ...


class Shared(Pooled, Protocol):
    """A connection that carries several calls at once (``in_flight`` of them); ``closed`` is
    set once it failed or was closed."""

    closed: BaseException | None

    @property
    def in_flight(self) -> int: ...

    def retire(self) -> None: ...


class Closable(Protocol):
    def close(self) -> None: ...

    def retire(self) -> None: ...


C = TypeVar("C", bound=Pooled)
S = TypeVar("S", bound=Shared)
P = TypeVar("P", bound=Closable)


def stale(conn: Pooled) -> bool:
    """True when an idle connection must not carry a request: its reader holds bytes nobody
    asked for, or its socket is readable (closed by the server, or out of step)."""
    if conn.reader.buffered:
        return True
    try:
        poller = select.poll()
        poller.register(conn.sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return True


class Pool(Generic[C]):
    """The idle connections to one peer (``list.pop``/``append`` are atomic: no lock)."""

    __slots__ = ("_clock", "_idle", "_size")

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._idle: list[C] = []
        self._size = size
        self._clock = clock

    def take(self) -> C | None:
        """An idle connection that may carry a request, or None."""
        now = self._clock()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return None
            if now - conn.idle_since < STALE_CHECK_AFTER or not stale(conn):
                return conn
            conn.close()

    def give(self, conn: C) -> None:
        """Keep ``conn`` for reuse, or close it when the pool is full."""
        conn.idle_since = self._clock()
        if len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return

    retire = close  # only idle connections are here: a call in flight holds its own


class Lanes(Generic[S]):
    """The shared connections to one peer: a call goes on the first open one with fewer than
    ``DEPTH`` calls in flight (so calls gather on as few connections as they fit, and their
    requests leave together); when every open one is that deep, another is opened, at most
    ``size`` (then the least busy one carries it). ``opening`` is the driver's connection on
    its way, at most one at a time: callers that find no room wait for it."""

    __slots__ = ("_clock", "closed", "conns", "opening", "size")

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.conns: list[S] = []
        self.opening: Any = None
        self.size = max(1, size)
        self._clock = clock
        self.closed = False  # closed or retired: a caller that waited for ``opening`` looks again

    def pick(self) -> S | None:
        """The connection for the next call, or None: open another (or wait for ``opening``)."""
        least: S | None = None
        dropped = False
        for conn in self.conns:
            n = conn.in_flight
            if n >= DEPTH:
                if least is None or n < least.in_flight:
                    least = conn
            elif conn.closed is None and (
                n or self._clock() - conn.idle_since < STALE_CHECK_AFTER or not stale(conn)
            ):
                return conn
            else:  # failed, or closed by the server while idle
                conn.close()
                dropped = True
        if dropped:
            self.conns = [c for c in self.conns if c.closed is None]
        if len(self.conns) + (self.opening is not None) < self.size:
            return None
        return least

    def add(self, conn: S) -> None:
        """A connection that was opened for this peer (retired if these lanes were)."""
        if self.closed:
            conn.retire()
        else:
            self.conns.append(conn)

    def retire(self) -> None:
        """The peer left the membership: no new call here, and each connection closes once
        the calls on it have their replies (a peer that was the previous owner during a move
        still answers the calls made before)."""
        self.closed = True
        while self.conns:
            self.conns.pop().retire()

    def close(self) -> None:
        """Close every connection now (the client is closing): calls on them fail."""
        self.closed = True
        while self.conns:
            self.conns.pop().close()


class Pools(dict[Any, P]):
    """A ``Pool`` or ``Lanes`` per peer (what ``make`` returns), made on first use (a dict: a
    lookup of an existing one, on every call, runs no Python code)."""

    def __init__(self, make: Callable[[], P]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, peer: Any) -> P:
        return self.setdefault(peer, self._make())

    def keep(self, peers: Iterable[Any]) -> None:
        """Retire the pools of every peer not in ``peers`` (it left the membership)."""
        kept = set(peers)
        for peer in [p for p in self if p not in kept]:
            pool = self.pop(peer, None)
            if pool is not None:
                pool.retire()

    def close(self) -> None:
        for peer in list(self):
            pool = self.pop(peer, None)
            if pool is not None:
                pool.close()
