"""The contract between the engine and its drivers: steps, what a driver does with each, and
what it must report back.

An operation of the engine is a generator (an ``Op``). It yields a *step* and is sent the
step's outcome:

- a ``list`` of ``Call``s — "send these bytes to these peers and read replies of these
  kinds" — comes back as the same list with each call's ``replies`` (one per kind; an error
  line is a ``ReplyError``) or its ``error`` filled in. The driver sends every call of a step
  before it reads any reply (a multi-key call costs one round trip, not one per node), then
  hands the step to ``Engine.settle`` before sending it back;
- a ``Pause`` comes back as ``None`` after the driver waited ``seconds``;
- a ``Compute`` comes back as what its function returned (awaited when it is awaitable), or
  with the exception it raised thrown into the operation;
- a ``Datagram`` (a DNS query) comes back with ``reply`` set to the first datagram received
  from ``address`` within ``Options.timeout``, or left None when none came (or sending failed);
  with ``tcp`` the query goes over a TCP connection instead, framed by a two-byte length as
  DNS over TCP is, and ``reply`` is the one message read back.

The engine's code between two steps runs as one piece: a driver that runs operations from
several threads holds one lock while it advances any of them (``next``, ``send``, ``throw``,
``close``, ``settle``), never while it waits for I/O. So the engine needs no locks of its own.

What a driver must do the same way (the timeout policy and the failure set):

- opening a connection (the TCP or unix connect, the TLS handshake, each send and receive of
  the login) waits at most ``Options.connect_timeout`` for each of those;
- every send and every receive of a call waits at most ``Options.timeout``;
- a call that fails in one of the ``FAILURES`` ways gets that exception as its ``error`` (the
  driver translates its own I/O library's exceptions into them), and its connection is closed;
  anything else is a bug and propagates;
- a ``fresh`` call gets a connection of its own, closed afterwards (probes, replays);
- a reply is only ever read by the call that asked for it: a connection that carries one call
  at a time is returned to its pool only after every reply of its call was read (and closed
  when the call is cancelled midway); one that carries several at once (asyncio's) reads
  the replies in the order of the requests, each for its own call, a cancelled call's too,
  and fails every call on it when its bytes are not those replies.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConnectionBroken

if TYPE_CHECKING:
    from .peer import Peer

T = TypeVar("T")

# What counts as the node failing, as opposed to the request being wrong: every way a
# connection can break, be refused or time out (timeouts are OSErrors), and a byte stream that
# is no longer memcached's protocol (a refused login included).
FAILURES: tuple[type[BaseException], ...] = (OSError, ConnectionBroken)


class Call:
    """One peer's share of a step: the bytes to send and the kinds of the replies to read.

    ``writes`` are the keys this call writes or deletes: journaled for the peer if the call
    fails, since the node may still carry it out later (a request queued behind a stall).
    """

    __slots__ = ("data", "error", "fresh", "keys", "kinds", "peer", "replies", "what", "writes")

    def __init__(
        self,
        peer: Peer,
        data: bytes,
        kinds: tuple[int, ...],
        what: str,
        keys: list[bytes] | None = None,
        fresh: bool = False,
        writes: list[bytes] | None = None,
    ) -> None:
        self.peer = peer
        self.data = data
        self.kinds = kinds
        self.what = what
        self.keys = keys
        self.fresh = fresh
        self.writes = writes
        self.replies: list[Any] = []
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"Call({self.peer}, {self.data[:60]!r}, {self.what})"


class Pause:
    """A step that asks the driver to wait ``seconds`` (``time.sleep`` or ``anyio.sleep``)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Compute:
    """A step that asks the driver to call ``fn()`` (and await what it returns when that is
    awaitable) and send back its result; an exception it raises is thrown into the operation."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class Datagram:
    """A step that asks the driver to send ``data`` in one UDP datagram to ``address`` (a
    nameserver) and to put the one that comes back from it in ``reply`` (over TCP when ``tcp``:
    an answer too large for a datagram)."""

    __slots__ = ("address", "data", "reply", "tcp")

    def __init__(self, address: tuple[str, int], data: bytes, tcp: bool = False) -> None:
        self.address = address
        self.data = data
        self.tcp = tcp
        self.reply: bytes | None = None


Step = list[Call] | Pause | Compute | Datagram
# An operation: yields steps, is sent their outcomes, returns the call's result.
Op = Generator[Step, Any, T]


@dataclass(frozen=True)
class Entry:
    """A value read with what a copy of it needs: ``get_entry``'s result.

    ``ttl`` is the remaining time to live as ``set`` takes it (0 = never expires), or None
    when the server cannot say (a memcached without the meta protocol); ``cas`` is the CAS
    token for ``cas``/``delete(cas=…)``.
    """

    value: Any
    ttl: int | None
    cas: bytes | None
