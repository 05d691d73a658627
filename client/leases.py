"""``get_or_set``: a missing value computed by exactly one caller, across every process.

This module owns the lease protocol over meta commands. ``mg k v f c N<lease>`` vivifies a
miss into a lease: the caller that wins (``W``) computes ``default()`` and stores it; every
other caller (``Z``) waits for it, polling with short bounded pauses for at most ``wait``
seconds (or gets ``fallback`` at once, when one is given), then computes itself. A winner that
raises releases its lease (``md k C<cas>``); one that dies leaves it to expire after ``lease``
seconds. With ``recache``, a hit whose remaining TTL is below that many seconds gives one
caller ``W`` to refresh it while everyone keeps reading the current value; after
``delete(key, stale=True)`` readers get the stale value while one refreshes it. Against a
server without meta: get, then compute and set on a miss (no herd protection).

The lease lives on the key's first usable copy (a stand-in while the owner is out); the
winner stores through the engine's ``set``, so replication, the recovery journal and move
invalidation apply to it. During a move the winner first reads the previous owner and, on a
hit, returns that value and releases the lease instead of computing. A lease's placeholder
(an empty value with flags 0) reads as a miss everywhere (``engine.is_placeholder``).
"""

from __future__ import annotations

from typing import Any, Protocol

from . import protocol
from .errors import UnknownCommandError
from .membership import Membership
from .protocol import META, Meta
from .steps import Call, Compute, Op, Pause

# A sentinel: get_or_set without a fallback waits for the lease's winner.
NO_FALLBACK: Any = object()
FIRST_PAUSE = 0.005  # then doubling: a waiter sees the value within ~25 ms of its store
MAX_PAUSE = 0.025


class Host(Protocol):
    """What get_or_set takes from the engine."""

    membership: Membership

    def key(self, key: str | bytes) -> bytes: ...
    def renew_lease(self) -> Op[bool]: ...
    def get(self, key: str | bytes, default: Any) -> Op[Any]: ...
    def store(
        self,
        command: bytes,
        key: str | bytes,
        value: Any,
        expire: int,
        noreply: bool | None,
        flags: int | None,
    ) -> Op[bool | None]: ...
    def warm_up(self, keys: list[bytes]) -> Op[dict[bytes, Any]]: ...
    def deserialize(self, key: bytes, data: bytes, flags: int) -> Any: ...
    def reply(self, call: Call, index: int = 0) -> Any: ...


def get_or_set(
    host: Host,
    key: str | bytes,
    default: Any,
    expire: int,
    lease: int,
    recache: int | None,
    wait: float,
    fallback: Any,
) -> Op[Any]:
    """The value of ``key``, computed by exactly one caller when it is missing."""
    k = host.key(key)
    compute = default if callable(default) else (lambda: default)

    def computed(command: bytes = b"set") -> Op[Any]:
        value = yield Compute(compute)
        yield from host.store(command, key, value, expire, None, None)
        return value

    if not (yield from host.renew_lease()):
        return (yield from computed())  # no read without a lease on the debts: a miss
    peer, _ = host.membership.route(k)
    if peer is None or peer.meta is False:
        value = yield from host.get(key, NO_FALLBACK)
        if value is not NO_FALLBACK:
            return value
        return (yield from computed())
    flags = b"v f c N%d" % lease + (b" R%d" % recache if recache else b"")
    waited = 0.0
    pause = FIRST_PAUSE
    while True:
        call = Call(peer, protocol.meta_get(k, flags), (META,), "get_or_set")
        yield [call]
        reply = call.replies[0] if call.error is None else None
        if isinstance(reply, UnknownCommandError):
            peer.meta = False
            return (
                yield from get_or_set(host, key, default, expire, lease, recache, wait, fallback)
            )
        if not isinstance(reply, Meta) or reply.code != b"VA":
            host.reply(call)  # raises with raise_on_error
            return (yield from computed())  # the node failed: compute, cache if we can
        peer.meta = True
        held = reply.flags
        pending = "Z" in held and not reply.value and "X" not in held
        if "W" in held:  # this caller computes
            peer.leases["won"] += 1
            release = Call(peer, protocol.meta_delete(k, b"C" + held["c"]), (META,), "release")
            if not reply.value and host.membership.previous is not None:
                moved = yield from host.warm_up([k])
                if k in moved:  # still on its previous owner: no computation needed
                    yield [release]
                    _, flags_, data, _ = moved[k]
                    return host.deserialize(k, data, flags_)
            try:
                value = yield Compute(compute)
            except BaseException:
                yield [release]
                raise
            yield from host.store(b"set", key, value, expire, None, None)
            return value
        if not pending:
            return host.deserialize(k, reply.value or b"", reply.number("f") or 0)
        if fallback is not NO_FALLBACK:
            peer.leases["fallbacks"] += 1
            return fallback
        if waited >= wait:  # the winner is late: compute without the lease
            return (yield from computed(b"add"))
        peer.leases["waits"] += 1
        yield Pause(pause)
        peer.leases["wait_seconds"] += pause
        waited += pause
        pause = min(pause * 2, MAX_PAUSE)
