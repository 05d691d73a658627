"""The cluster engine: every rule of the client, written once, with no I/O.

This module owns what a client call means for the cluster: key validation, routing (each key
to the first usable server of its ring order), the failover TTL of writes that land on a
stand-in, replication (reads fall back copy by copy, writes reach every copy, a conditional
write or an arithmetic result is decided by the first copy and copied to the others with the
TTL it has), membership views and moves (a miss is read from the previous owner, a write or
delete also removes the key there), health accounting, probing and the recovery journal (what
was written on an out node's behalf is deleted from it and from its stand-ins before it is
re-admitted), discovery and the meta-protocol support of each node (detected once, from the
first ``ERROR`` a node answers to a meta command). These are the rules of "the cache never
lies" in the README: a value may be forgotten, never served after it was replaced, deleted or
expired.

Each public operation is a generator (an ``Op``): it yields a *step* — a list of ``Call``s,
"send these bytes to this node and read replies of these kinds" — and receives the same
calls back with their ``replies`` (or the ``error`` that broke the connection) filled in by a
driver. ``client.Client`` runs steps on blocking sockets, ``aio.AsyncClient`` on trio streams;
neither holds a rule of its own. The bytes and the replies are ``protocol``'s.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from hashlib import md5
from time import monotonic
from typing import Any, TypeVar

from pymemcache.serde import pickle_serde

from . import protocol
from .errors import (
    IllegalInputError,
    NoServerAvailable,
    ReplyError,
    UnknownCommandError,
)
from .health import NodeHealth
from .protocol import CONFIG, META, STATS, STATUS, VALUES, ClusterConfig, Meta
from .ring import Ring, Server, key_hash, parse_location
from .security import Security

log = logging.getLogger("ringcache.client")

T = TypeVar("T")
REALTIME_MAXDELTA = 60 * 60 * 24 * 30
KEY_MAX_LENGTH = 250
ROUTE_CACHE_SIZE = 32768
STALE_CHECK_AFTER = 0.01  # seconds a pooled connection may sit idle before use checks it
U64_MAX = 2**64 - 1

_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")
_ONE_VALUES = (VALUES,)
_ONE_STATUS = (STATUS,)
_STORED = b"STORED"
# What each storage reply means to the caller (pymemcache's contract).
_STORE_RESULT = {b"STORED": True, b"NOT_STORED": False, b"EXISTS": False, b"NOT_FOUND": None}
_FAILED: Any = object()
# A value with client flags 0 and no bytes is what a get_or_set lease (``mg … N``) looks like to
# every read, classic ones included; the client reads it as a miss, so a lease never surfaces as
# a value (and an empty ``bytes`` value reads as a miss too: a cache may always forget).
_MISS: Any = object()
NO_FALLBACK: Any = _MISS  # get_or_set without a fallback: wait for the lease's winner
_REPLAYED = frozenset((b"DELETED", b"NOT_FOUND", b"OK"))
_WHAT = {b"set": "set", b"add": "add", b"replace": "replace", b"cas": "cas"}


def validate_key(key: str | bytes, key_prefix: bytes = b"") -> bytes:
    """The key as bytes, or ``IllegalInputError``: memcached's rules (at most 250 bytes, no
    spaces or control characters)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        raise IllegalInputError(f"key must be str or bytes, not {type(key).__name__}")
    if key_prefix:
        key = key_prefix + key
    if not key:
        raise IllegalInputError("empty key")
    if len(key) > KEY_MAX_LENGTH:
        raise IllegalInputError(f"key is longer than 250 bytes: {key[:40]!r}...")
    if _BAD_KEY_BYTE.search(key):
        raise IllegalInputError(f"key contains a space or control character: {key!r}")
    return key


def _check_int(value: Any, what: str, low: int = 0, high: int = U64_MAX) -> int:
    if type(value) is not int or not low <= value <= high:
        raise IllegalInputError(f"{what} must be an integer in [{low}, {high}], not {value!r}")
    return value


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


class Node:
    """One server: its health (which counts its failures), its idle connections, and whether
    it speaks the meta protocol (None until it has said)."""

    __slots__ = (
        "_idle",
        "fenced",
        "health",
        "journal",
        "journal_flushes",
        "journal_overflow",
        "journal_size",
        "leases",
        "lock",
        "meta",
        "pool_size",
        "server",
    )

    def __init__(self, server: Server, owner: Engine) -> None:
        self.server = server
        self.health = NodeHealth(
            owner.failure_limit, owner.probe_interval, owner.probe_max_interval, owner.clock
        )
        self.pool_size = owner.pool_size
        self.meta: bool | None = None
        self._idle: list = []
        # The recovery journal: keys this client wrote or deleted elsewhere on this node's
        # behalf while it was out (with the stand-ins that got them), or whose write to it
        # failed (it may still apply it late). Replayed as deletes on the node and on those
        # stand-ins before the node takes traffic again; past ``journal_size`` keys the node is
        # flushed instead. ``fenced`` counts such writes still in flight: the node is not
        # re-admitted while any is. ``lock`` makes "is it out? then journal the key" and
        # "journal empty, nothing in flight? then re-admit" exclusive.
        self.journal: dict[bytes, set[Node]] = {}
        self.journal_size = owner.journal_size
        self.journal_overflow = False
        self.journal_flushes = 0
        self.fenced = 0
        self.lock = threading.Lock()
        # get_or_set's leases on this node: won, waits, seconds waited, fallbacks served.
        self.leases = {"won": 0, "waits": 0, "wait_seconds": 0.0, "fallbacks": 0}

    def record(self, keys: Iterable[bytes], standins: Iterable[Node] = ()) -> None:
        """Journal ``keys``, written on ``standins`` (call with ``lock`` held)."""
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

    def take(self) -> Any:
        """An idle connection that may carry a request, or None (list.pop is atomic: no lock
        on the hot path).

        One idle for more than ``STALE_CHECK_AFTER`` is checked first (``conn.stale()``, a
        system call) and closed if the server closed it meanwhile: a restarted node's old
        connections are replaced, not counted as its failures. One idle for less is not: the
        server that closed it died within that time, and a request to it fails anyway.
        """
        now = monotonic()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return None
            if now - conn.idle_since < STALE_CHECK_AFTER or not conn.stale():
                return conn
            conn.close()

    def give(self, conn: Any) -> bool:
        """Keep ``conn`` for reuse; False when the pool is full (the caller closes it)."""
        conn.idle_since = monotonic()
        if len(self._idle) < self.pool_size:
            self._idle.append(conn)
            return True
        return False

    def drain(self) -> list:
        idle = []
        while self._idle:
            try:
                idle.append(self._idle.pop())
            except IndexError:
                break
        return idle

    def __repr__(self) -> str:
        return f"Node({self.server})"


class Call:
    """One node's share of a step: the bytes to send and the kinds of the replies to read.

    The driver fills in ``replies`` (one per kind; an error line is a ``ReplyError``) or
    ``error`` (the connection failed or the stream broke). ``fresh`` asks for a connection of
    its own that is closed afterwards and counts nothing against the node (probes).
    """

    __slots__ = ("data", "error", "fresh", "keys", "kinds", "node", "replies", "what", "writes")

    def __init__(
        self,
        node: Node,
        data: bytes,
        kinds: tuple[int, ...],
        what: str,
        keys: list[bytes] | None = None,
        fresh: bool = False,
    ) -> None:
        self.node = node
        self.keys = keys
        self.data = data
        self.kinds = kinds
        self.what = what
        self.fresh = fresh
        self.replies: list | None = None
        self.error: BaseException | None = None
        # Keys this call writes or deletes: journaled for the node if the call fails, since the
        # node may still carry it out later (a request queued behind a stall).
        self.writes: list[bytes] | None = None


# An operation: yields steps, receives them back executed, returns the call's result.
class Pause:
    """A step that asks the driver to wait ``seconds`` (``time.sleep`` or ``trio.sleep``)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Compute:
    """A step that asks the driver to call ``fn()`` (and await it in the trio driver when it
    returns an awaitable) and send back its result; an exception it raises is thrown into the
    operation."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


# An operation: yields steps (calls to nodes, or a pause, or a computation), receives them back
# executed (or the computed value), returns the call's result.
Op = Generator[Any, Any, T]


class _View:
    """One membership: servers, their ring and nodes, and the point → node table."""

    __slots__ = ("node_list", "node_of_point", "nodes", "points", "ring", "routes", "servers")

    def __init__(self, servers: list[Server], owner: Engine, previous: _View | None) -> None:
        self.servers = servers
        self.ring = Ring(servers)
        kept = previous.nodes if previous is not None else {}
        # A server that stays keeps its node: health, pool and counters carry over.
        self.nodes = {s.name: kept.get(s.name) or Node(s, owner) for s in servers}
        self.node_list = [self.nodes[s.name] for s in servers]  # ring index -> node
        # The node of every continuum point, plus the first again so that a hash past the
        # last point needs no wrap-around test.
        owners = self.ring._owner_index
        self.node_of_point = [self.node_list[i] for i in [*owners, owners[0]]]
        self.points = self.ring._points
        # Key as the application gave it -> (key as sent, owner node): hot keys skip
        # validation, MD5 and the ring search. Emptied when full, so it follows the hot set.
        self.routes: dict[Any, tuple[bytes, Node]] = {}

    def owner(self, key: bytes) -> Node:
        """The node that owns ``key`` (ring.index_of, through the point → node table)."""
        return self.node_of_point[bisect_left(self.points, key_hash(key))]


class Engine:
    """Options, membership, routing, health and every operation, for both drivers."""

    def __init__(
        self,
        location: str | Iterable | Mapping,
        *,
        connect_timeout: float = 0.5,
        timeout: float = 0.5,
        failure_limit: int = 2,
        probe_interval: float = 0.25,
        probe_max_interval: float = 4.0,
        failover_ttl: int = 30,
        raise_on_error: bool = False,
        pool_size: int = 8,
        serde: Any = None,
        key_prefix: str | bytes = b"",
        clock: Callable[[], float] = time.monotonic,
        discovery: bool = False,
        discovery_interval: float = 5.0,
        replicas: int = 1,
        journal_size: int = 10000,
        tls: Any = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        # TLS and the -Y login, for every connection the drivers open (probes and discovery
        # too); None keeps plain connections.
        self.security = Security.from_options(tls, username, password)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.failure_limit = failure_limit
        self.probe_interval = probe_interval
        self.probe_max_interval = probe_max_interval
        self.failover_ttl = failover_ttl
        self.raise_on_error = raise_on_error
        self.pool_size = pool_size
        self.serde = serde or pickle_serde
        self.key_prefix = key_prefix.encode() if isinstance(key_prefix, str) else key_prefix
        self.clock = clock
        self.discovery = discovery
        self.discovery_interval = discovery_interval
        self.replicas = replicas
        self.journal_size = journal_size
        self.cluster_version = 0
        self._view = _View(parse_location(location), self, None)
        # While keys move to their new owners (an odd membership version), a miss on the new
        # owner is read from the owner in the last settled membership (even version, or the
        # LOCATION), and writes delete the key there; an even version ends the move.
        self._settled = self._view
        self._previous: _View | None = None

    # -- the driver's side -----------------------------------------------------------------
    def _node_ejected(self, node: Node) -> None:
        """Called when ``node`` is ejected: the driver starts its prober."""
        raise NotImplementedError

    def _settle(self, step: list[Call]) -> None:
        """Count each executed call for or against its node."""
        for call in step:
            if call.fresh:
                continue
            if call.error is None:
                if call.node.health.consecutive_failures:
                    call.node.health.succeeded()
                continue
            if call.writes:
                with call.node.lock:
                    call.node.record(call.writes)
            if call.node.health.failed():
                log.warning(
                    "ejected %s after %d failures (%s: %r)",
                    call.node.server,
                    call.node.health.failure_limit,
                    call.what,
                    call.error,
                )
                self._node_ejected(call.node)
            else:
                log.info("%s failed on %s: %r", call.what, call.node.server, call.error)

    def _reply(self, call: Call, index: int = 0) -> Any:
        """Reply ``index`` of ``call``; ``_FAILED`` for a failed call or an error reply, which
        are raised instead with ``raise_on_error``: the one place that decides it."""
        error = call.error
        if error is None:
            reply = call.replies[index]  # type: ignore[index]
            if not isinstance(reply, ReplyError):
                return reply
            error = reply
        if self.raise_on_error:
            raise error
        return _FAILED

    # -- membership ------------------------------------------------------------------------
    # A discovered change swaps the whole view in one assignment, and every operation reads
    # ``self._view`` once, so it never mixes two memberships.
    @property
    def servers(self) -> list[Server]:
        return self._view.servers

    @property
    def ring(self) -> Ring:
        return self._view.ring

    @property
    def nodes(self) -> dict[str, Node]:
        return self._view.nodes

    def _apply_cluster_config(self, version: int, servers: list[Server]) -> bool:
        """Adopt a newer membership (from ``config get cluster``); False when not newer."""
        if version <= self.cluster_version or not servers:
            return False
        old = self._view
        new = _View(servers, self, old)
        if version % 2:  # moving: from the last settled membership, however often re-published
            settled = self._settled
            self._previous = None if set(settled.nodes) == set(new.nodes) else settled
        else:
            self._previous = None
            self._settled = new
        self._view = new
        self.cluster_version = version
        for name, node in old.nodes.items():
            if name not in new.nodes:
                for conn in node.drain():
                    conn.close()
        log.warning("membership version %d: %s", version, ", ".join(map(str, servers)))
        return True

    def _discover(self) -> Op[bool]:
        """Ask one usable node for the membership; adopt it when it is newer."""
        node = next((n for n in self._view.node_list if n.health.usable), None)
        if node is None:
            return False
        call = Call(node, protocol.CONFIG_GET, (CONFIG,), "discovery")
        yield [call]
        reply = call.replies[0] if call.error is None else None  # type: ignore[index]
        if isinstance(reply, ClusterConfig):
            return self._apply_cluster_config(reply.version, reply.servers)
        return False

    # -- probing ---------------------------------------------------------------------------
    def _probe_round(self) -> Op[bool]:
        """Probe every ejected node that is due (a real round trip on a fresh connection, at
        once); True while some node is still out of the ring."""
        nodes = self.nodes.values()
        due = [n for n in nodes if n.health.probe_due()]
        if due:
            calls = [Call(n, protocol.VERSION, _ONE_STATUS, "probe", fresh=True) for n in due]
            yield calls
            answered = []
            for call in calls:
                reply = call.replies[0] if call.error is None else None  # type: ignore[index]
                if isinstance(reply, bytes) and reply.startswith(b"VERSION "):
                    answered.append(call.node)
                else:
                    call.node.health.probe_result(False)
            if answered:
                yield from self._readmit(answered)
        return any(not n.health.usable for n in nodes)

    def _readmit(self, nodes: list[Node]) -> Op[None]:
        """Nodes that answered a probe take traffic again once neither they nor the stand-ins
        that took writes on their behalf hold anything this client replaced or deleted
        meanwhile: the journal's keys are deleted on the node and on those stand-ins (or, if
        it overflowed, the node is flushed), again for what was journaled meanwhile, and a
        node is re-admitted only with an empty journal and no write in flight on its behalf,
        both checked under its lock, which every write that journals for it takes too."""
        pending = nodes
        while pending:
            calls: list[Call] = []
            taken: dict[Node, tuple[dict[bytes, set[Node]], bool, list[Call]]] = {}
            for node in pending:
                with node.lock:
                    journal, overflow = node.journal, node.journal_overflow
                    if not journal and not overflow:
                        if node.fenced:
                            node.health.probe_again()  # a write on its behalf is in flight
                        else:
                            node.health.probe_result(True)
                            log.warning("re-admitted %s after a successful probe", node.server)
                        continue
                    node.journal, node.journal_overflow = {}, False
                own: list[Call] = []
                if overflow:
                    own.append(Call(node, protocol.flush_all(), _ONE_STATUS, "flush", fresh=True))
                by_node: dict[Node, list[bytes]] = {} if overflow else {node: list(journal)}
                for k, standins in journal.items():
                    for standin in standins:
                        if standin is node:
                            continue
                        if standin.health.usable:
                            by_node.setdefault(standin, []).append(k)
                        else:  # out too: its own journal takes the copy it holds
                            with standin.lock:
                                standin.record((k,))
                for target, ks in by_node.items():
                    data = b"".join([protocol.delete(k) for k in ks])
                    own.append(Call(target, data, (STATUS,) * len(ks), "replay", ks, fresh=True))
                taken[node] = (journal, overflow, own)
                calls += own
            if not calls:
                return
            yield calls
            pending = []
            for node, (journal, overflow, own) in taken.items():
                if all(c.error is None and all(r in _REPLAYED for r in c.replies) for c in own):  # type: ignore[union-attr]
                    if overflow:
                        node.journal_flushes += 1
                        log.warning("flushed %s: its recovery journal overflowed", node.server)
                    pending.append(node)
                    continue
                with node.lock:  # not replayed: kept for the next probe
                    node.journal_overflow = node.journal_overflow or overflow
                    for k, standins in journal.items():
                        node.record((k,), standins)
                node.health.probe_result(False)

    def _fence(self, placed: dict[bytes, list[Node]]) -> list[Node] | None:
        """Before writing keys (``{key: the nodes it goes to}``) elsewhere than where they
        belong: journal each for every node that should hold it and is out, with the nodes
        that get it instead, and count the write as in flight on its behalf (``_unfence`` when
        done). None when such a node came back meanwhile: route again."""
        view = self._view
        fenced: list[Node] = []
        if all(n.health.usable for n in view.node_list):
            return fenced
        for k, targets in placed.items():
            if self.replicas == 1:
                holders = [view.owner(k)]
            else:
                holders = [
                    view.node_list[i]
                    for i in itertools.islice(view.ring.candidate_indices(k), self.replicas)
                ]
            for node in holders:
                if node.health.usable:
                    continue
                with node.lock:
                    if node.health.usable:
                        self._unfence(fenced)
                        return None
                    node.record((k,), targets)
                    node.fenced += 1
                fenced.append(node)
        return fenced

    @staticmethod
    def _unfence(fenced: list[Node]) -> None:
        for node in fenced:
            with node.lock:
                node.fenced -= 1

    # -- keys and routing ------------------------------------------------------------------
    def key(self, key: str | bytes) -> bytes:
        """The validated key as sent, prefix included."""
        if type(key) is str and not self.key_prefix:
            k = key.encode()
            if 0 < len(k) <= KEY_MAX_LENGTH and not _BAD_KEY_BYTE.search(k):
                return k
        return validate_key(key, self.key_prefix)

    def _owner(self, key: str | bytes) -> tuple[bytes, Node]:
        """The key as sent and the node that owns it on the ring (whatever its health)."""
        routes = self._view.routes
        try:
            hit = routes.get(key)
        except TypeError:  # unhashable: validate_key names the problem
            hit = None
        if hit is None:
            k = self.key(key)
            hit = (k, self._view.owner(k))
            if len(routes) >= ROUTE_CACHE_SIZE:
                routes.clear()
            routes[key] = hit
        return hit

    def server_for(self, key: str | bytes) -> Server:
        """The server that owns ``key`` on the ring (whatever its health)."""
        return self.ring.get(self.key(key))

    def _route(self, key: bytes) -> tuple[Node | None, bool]:
        """The node a request for ``key`` goes to, and whether it stands in for the owner."""
        view = self._view
        node = view.owner(key)
        if node.health.usable:
            return node, False
        for i in view.ring.candidate_indices(key):
            node = view.node_list[i]
            if node.health.usable:
                return node, True
        if self.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return None, True

    def _copies(self, key: bytes) -> tuple[list[Node], bool]:
        """The usable nodes that hold ``key``'s copies (owner first), and whether the owner
        itself is missing from them (its copies then get the failover TTL)."""
        if self.replicas == 1:
            node, standin = self._route(key)
            return ([node] if node is not None else []), standin
        view = self._view
        nodes = []
        for i in view.ring.candidate_indices(key):
            node = view.node_list[i]
            if node.health.usable:
                nodes.append(node)
                if len(nodes) == self.replicas:
                    break
        if not nodes and self.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return nodes, bool(nodes) and nodes[0] is not view.owner(key)

    def _group(self, keys: Iterable) -> tuple[dict[Node, list[bytes]], dict[bytes, Any], list]:
        """Keys grouped by the node they go to; the original key of each; keys with no node.

        This is the hot loop of every multi-key call, so validation, hashing and the ring
        lookup of ``key``/``_route`` are inlined here for the common case.
        """
        groups: dict[Node, list[bytes]] = {}
        originals: dict[bytes, Any] = {}
        unrouted: list[bytes] = []
        prefix = self.key_prefix
        bad = _BAD_KEY_BYTE.search
        view = self._view
        routes = view.routes
        points = view.points
        node_of_point = view.node_of_point
        for key in keys:
            try:
                hit = routes.get(key)
            except TypeError:
                hit = None
            if hit is None:
                if type(key) is str:
                    k = key.encode()
                elif type(key) is bytes:
                    k = key
                else:
                    k = validate_key(key, prefix)
                if prefix:
                    k = prefix + k
                if not k or len(k) > KEY_MAX_LENGTH or bad(k):
                    validate_key(key, prefix)  # raises with the precise reason
                # view.owner(k), inlined: this loop runs once per key of every multi-key call
                node = node_of_point[
                    bisect_left(points, int.from_bytes(md5(k).digest()[:4], "little"))
                ]
                if len(routes) >= ROUTE_CACHE_SIZE:
                    routes.clear()
                routes[key] = (k, node)
            else:
                k, node = hit
            originals[k] = key
            if not node.health.usable:
                node, _ = self._route(k)
                if node is None:
                    unrouted.append(k)
                    continue
            group = groups.get(node)
            if group is None:
                groups[node] = [k]
            else:
                group.append(k)
        return groups, originals, unrouted

    def _group_copies(self, keys: Iterable[bytes]) -> dict[Node, list[bytes]]:
        """Every copy of every key, by node (the writes of ``set_many``/``delete_many``)."""
        groups: dict[Node, list[bytes]] = {}
        for k in keys:
            for node in self._copies(k)[0]:
                groups.setdefault(node, []).append(k)
        return groups

    def _ttl_for(self, key: bytes, expire: int) -> int:
        """``expire``, capped when the key's owner is out (its copies are on stand-ins), the
        rule ``_copies`` applies to one key; replica copies of a live owner are not capped."""
        if self._view.owner(key).health.usable:
            return expire
        return self._failover_expire(expire)

    def _failover_expire(self, expire: int) -> int:
        """Cap the TTL of a write that lands on a stand-in for an ejected owner."""
        cap = self.failover_ttl
        if expire < 0 or not cap:
            return expire
        if expire == 0:
            return cap
        if expire > REALTIME_MAXDELTA:
            remaining = int(expire - time.time())
            return min(max(remaining, -1), cap) if remaining < cap else cap
        return min(expire, cap)

    def _previous_owners(self, keys: list[bytes]) -> dict[Node, list[bytes]]:
        """During a membership change: the keys whose previous owner differs, by that owner."""
        previous = self._previous
        if previous is None:
            return {}
        view = self._view
        groups: dict[Node, list[bytes]] = {}
        for k in keys:
            old = previous.owner(k)
            if old is not view.owner(k) and old.health.usable:
                groups.setdefault(old, []).append(k)
        return groups

    # -- values ----------------------------------------------------------------------------
    def _serialize(self, key: bytes, value: Any, flags: int | None) -> tuple[bytes, int]:
        data, serde_flags = self.serde.serialize(key, value)
        if isinstance(data, str):
            data = data.encode()
        if flags is None:
            flags = serde_flags
        return data, _check_int(flags, "flags", 0, 2**32 - 1)

    def _deserialize(self, key: bytes, data: bytes, flags: int) -> Any:
        # Called for flags 0 too, as pymemcache calls it: a serde may tag values that way.
        return self.serde.deserialize(key, data, flags)

    def _copy_expire(self, ttl: int | None, standin: bool) -> int | None:
        """The TTL a copy of a value gets: its own remaining TTL (capped on a stand-in), the
        failover TTL when it is unknown, None (no copy) when there is no bound to give it."""
        if ttl is None:
            return self.failover_ttl or None
        return self._failover_expire(ttl) if standin else ttl

    def _entries(self, groups: dict[Node, list[bytes]], what: str) -> Op[dict]:
        """Keys read with their flags, remaining TTL and CAS token in one round trip:
        ``mg k v f t c`` where the node speaks meta, ``gets`` (TTL None: unknown) where it
        does not. ``{key: (flags, data, ttl, cas)}``, ttl as ``set`` takes it (0 = never)."""
        found: dict[bytes, tuple[int, bytes, int | None, bytes | None]] = {}
        while groups:
            calls = []
            for node, ks in groups.items():
                if node.meta is False:
                    calls.append(Call(node, protocol.get(ks, cas=True), _ONE_VALUES, what, ks))
                else:
                    data = b"".join([protocol.meta_get(k) for k in ks])
                    calls.append(Call(node, data, (META,) * len(ks), what, ks))
            yield calls
            groups = {}
            for call in calls:
                node, ks = call.node, call.keys or []
                if call.kinds[0] == VALUES:
                    values = self._reply(call)
                    for key, flags, data, cas in () if values is _FAILED else values:
                        found[key] = (flags, data, None, cas)
                elif call.error is None and isinstance(call.replies[0], UnknownCommandError):  # type: ignore[index]
                    node.meta = False  # an older memcached: once per node, then gets
                    log.info("%s does not speak the meta protocol: gets from now on", node.server)
                    groups[node] = ks
                else:
                    for i, key in enumerate(ks):
                        reply = self._reply(call, i)
                        if reply is _FAILED:
                            break
                        node.meta = True
                        ttl = _meta_ttl(reply) if reply.code == b"VA" else None
                        flags = reply.number("f") or 0
                        if ttl is not None and (reply.value or flags):  # not a lease
                            found[key] = (flags, reply.value, ttl, reply.flags.get("c"))
        return found

    # -- reads -----------------------------------------------------------------------------
    def _read(self, first: dict[Node, list[bytes]], keys: list[bytes], cas: bool) -> Op[dict]:
        """``get``/``gets`` of ``keys``: ``first`` groups them by the node of their first copy;
        keys a copy does not have are asked of the next copy, then (during a membership
        change, without CAS) of their previous owner. ``{key: (key, flags, data, cas)}``, the
        reader's own tuples."""
        found: dict[bytes, tuple[bytes, int, bytes, bytes | None]] = {}
        groups = first
        # Each key's copies, fixed before the first read: a copy that fails and is ejected
        # meanwhile must not shift the others.
        copies = {k: self._copies(k)[0] for k in keys} if self.replicas > 1 else {}
        for copy in range(self.replicas):
            if copy:
                groups = {}
                for k in keys:
                    if k not in found and len(copies[k]) > copy:
                        groups.setdefault(copies[k][copy], []).append(k)
            if not groups:
                break
            found.update((yield from self._fetch(groups, cas, "gets" if cas else "get")))
            if len(found) == len(keys):
                return found
        if not cas and self._previous is not None and len(found) < len(keys):
            found.update((yield from self._warm_up([k for k in keys if k not in found])))
        return found

    def _warm_up(self, keys: list[bytes]) -> Op[dict]:
        """During a membership change: keys that missed, read from their previous owners.

        Nothing is copied forward: the mover copies (and checks that its source did not change
        meanwhile), and every write or delete of this client removes the key from its previous
        owner (``_invalidate_previous``), so a value read here was not replaced or deleted by
        this client. ``{key: (key, flags, data, None)}``."""
        groups = self._previous_owners(keys)
        if not groups:
            return {}
        return (yield from self._fetch(groups, False, "warm-up"))

    def _fetch(self, groups: dict[Node, list[bytes]], cas: bool, what: str) -> Op[dict]:
        """One ``get``/``gets`` per node, all at once: ``{key: (key, flags, data, cas)}`` of
        the hits, without a lease's placeholder (an empty flags-0 value is a miss)."""
        calls = [
            Call(node, protocol.get(ks, cas), _ONE_VALUES, what) for node, ks in groups.items()
        ]
        yield calls
        found = {}
        for call in calls:
            values = self._reply(call)
            if values is not _FAILED:
                for item in values:
                    if item[2] or item[1]:
                        found[item[0]] = item
        return found

    def _invalidate_previous(self, keys: Iterable[bytes]) -> Op[set[bytes]]:
        """During a membership change: delete written or deleted keys from their previous
        owners, so that neither a warm-up read nor a later move can bring the old value back
        (a previous owner that is out journals them instead). Returns the keys it deleted."""
        previous = self._previous
        gone: set[bytes] = set()
        if previous is None:
            return gone
        view = self._view
        groups: dict[Node, list[bytes]] = {}
        for k in keys:
            old = previous.owner(k)
            if old is view.owner(k):
                continue
            if old.health.usable:
                groups.setdefault(old, []).append(k)
            else:
                with old.lock:
                    old.record((k,))
        if groups:
            calls = []
            for node, ks in groups.items():
                data = b"".join([protocol.delete(k) for k in ks])
                call = Call(node, data, (STATUS,) * len(ks), "invalidate previous owner", ks)
                call.writes = ks
                calls.append(call)
            yield calls
            for call in calls:
                if call.error is None:
                    gone.update(
                        k for k, r in zip(call.keys, call.replies, strict=True) if r == b"DELETED"
                    )  # type: ignore[arg-type]
        return gone

    def _first_copy(self, key: bytes) -> dict[Node, list[bytes]]:
        node, _ = self._route(key)
        return {} if node is None else {node: [key]}

    def _get(self, key: str | bytes, default: Any) -> Op[Any]:
        k, node = self._owner(key)
        if self.replicas == 1 and self._previous is None:
            # The common case in one step, without the copy and warm-up machinery.
            if not node.health.usable:
                node, _ = self._route(k)
                if node is None:
                    return default
            call = Call(node, b"get " + k + b"\r\n", _ONE_VALUES, "get")
            yield [call]
            values = self._reply(call)
            if values is _FAILED or not values:
                return default
            _, flags, data, _ = values[0]
            if not data and not flags:
                return default  # a lease's placeholder (get_or_set), not a value
            return self.serde.deserialize(k, data, flags)
        found = yield from self._read(self._first_copy(k), [k], False)
        hit = found.get(k)
        return default if hit is None else self._deserialize(k, hit[2], hit[1])

    def _gets(self, key: str | bytes, default: Any, cas_default: Any) -> Op[tuple[Any, Any]]:
        k = self.key(key)
        found = yield from self._read(self._first_copy(k), [k], True)
        hit = found.get(k)
        if hit is None:
            return default, cas_default
        return self._deserialize(k, hit[2], hit[1]), hit[3]

    def _get_many(self, keys: Iterable, cas: bool) -> Op[dict]:
        groups, originals, _ = self._group(keys)
        found = yield from self._read(groups, list(originals), cas)
        deserialize = self.serde.deserialize
        # pickle_serde gives flags-0 data back as it is: skip the call for the default serde.
        plain = self.serde is pickle_serde
        out = {}
        for k, flags, data, token in found.values():
            value = data if plain and flags == 0 else deserialize(k, data, flags)
            out[originals[k]] = (value, token) if cas else value
        return out

    def _get_entry(self, key: str | bytes) -> Op[Entry | None]:
        k = self.key(key)
        for node in self._copies(k)[0]:
            entries = yield from self._entries({node: [k]}, "get_entry")
            if k in entries:
                flags, data, ttl, cas = entries[k]
                return Entry(self._deserialize(k, data, flags), ttl, cas)
        return None

    def _get_or_set(
        self,
        key: str | bytes,
        default: Any,
        expire: int,
        lease: int,
        recache: int | None,
        wait: float,
        fallback: Any,
    ) -> Op[Any]:
        """The value of ``key``, computed by exactly one caller when it is missing.

        Against a node that speaks meta: ``mg k v f c N<lease>`` vivifies a miss into a lease;
        the caller that wins (``W``) computes ``default()`` and stores it; every other caller
        (``Z``) waits for it, polling with short bounded sleeps for at most ``wait`` seconds
        (or gets ``fallback`` at once, when one is given), then computes itself. A winner that
        raises releases its lease (``md k C<cas>``); one that dies leaves it to expire after
        ``lease`` seconds. With ``recache``, a hit whose remaining TTL is below that many
        seconds gives one caller ``W`` to refresh it while everyone keeps reading the current
        value; after ``delete(key, stale=True)`` readers get the stale value while one
        refreshes it. Against a server without meta, or with replicas: get, then compute and
        set on a miss (no herd protection).

        The lease lives on the key's first usable copy (a stand-in while the owner is out); the
        winner stores through ``set``, so replication, the recovery journal and move
        invalidation apply to it. During a move the winner first reads the previous owner and,
        on a hit, returns that value and releases the lease instead of computing."""
        k = self.key(key)
        compute = default if callable(default) else (lambda: default)
        node, _ = self._route(k)
        if node is None or node.meta is False:
            value = yield from self._get(key, _MISS)
            if value is not _MISS:
                return value
            value = yield Compute(compute)
            yield from self._store(b"set", key, value, expire, None, None)
            return value
        flags = b"v f c N%d" % lease + (b" R%d" % recache if recache else b"")
        waited = 0.0
        pause = 0.005  # then doubling up to 25 ms: a waiter sees the value within ~25 ms
        while True:
            call = Call(node, protocol.meta_get(k, flags), (META,), "get_or_set")
            yield [call]
            reply = call.replies[0] if call.error is None else None  # type: ignore[index]
            if isinstance(reply, UnknownCommandError):
                node.meta = False
                return (
                    yield from self._get_or_set(
                        key, default, expire, lease, recache, wait, fallback
                    )
                )
            if not isinstance(reply, Meta) or reply.code != b"VA":
                self._reply(call)  # raises with raise_on_error
                value = yield Compute(compute)  # the node failed: compute, cache if we can
                yield from self._store(b"set", key, value, expire, None, None)
                return value
            node.meta = True
            held = reply.flags
            pending = "Z" in held and not reply.value and "X" not in held
            if "W" in held:  # this caller computes
                node.leases["won"] += 1
                release = Call(node, protocol.meta_delete(k, b"C" + held["c"]), (META,), "release")
                if not reply.value and self._previous is not None:
                    moved = yield from self._warm_up([k])
                    if k in moved:  # still on its previous owner: no computation needed
                        yield [release]
                        _, flags, data, _ = moved[k]
                        return self._deserialize(k, data, flags)
                try:
                    value = yield Compute(compute)
                except BaseException:
                    yield [release]
                    raise
                yield from self._store(b"set", key, value, expire, None, None)
                return value
            if not pending:
                return self._deserialize(k, reply.value, reply.number("f") or 0)
            if fallback is not _MISS:
                node.leases["fallbacks"] += 1
                return fallback
            if waited >= wait:  # the winner is late: compute without the lease
                value = yield Compute(compute)
                yield from self._store(b"add", key, value, expire, None, None)
                return value
            node.leases["waits"] += 1
            yield Pause(pause)
            node.leases["wait_seconds"] += pause
            waited += pause
            pause = min(pause * 2, 0.025)

    # -- writes ----------------------------------------------------------------------------
    def _write(
        self, k: bytes, body: Callable[[list[Node], bool], Op[T]], delete: bool = False
    ) -> Op[T]:
        """Run the write ``body`` on ``k``'s copies (usable nodes, owner first, and whether the
        owner is out): journaled for every node it should reach and cannot (``_fence``), and
        each of its calls journaled for its node if it fails."""
        while True:
            nodes, standin = self._copies(k)
            fenced = self._fence({k: nodes}) if standin or self.replicas > 1 else []
            if fenced is not None:
                break
        writes = [k]
        op = body(nodes, standin)
        try:
            try:
                step = next(op)
                while True:
                    for call in step:
                        call.writes = writes
                    step = op.send((yield step))
            except StopIteration as stop:
                result = stop.value
            if self._previous is not None:
                gone = yield from self._invalidate_previous(writes)
                if delete and result is False and k in gone:
                    result = True  # it lived on its previous owner, and was deleted there
            return result
        finally:
            op.close()
            if fenced:
                self._unfence(fenced)

    def _store(
        self,
        command: bytes,
        key: str | bytes,
        value: Any,
        expire: int,
        noreply: bool | None,
        flags: int | None,
        cas: int | bytes | None = None,
    ) -> Op[bool | None]:
        k, owner = self._owner(key)
        if flags is None and type(value) is bytes and self.serde is pickle_serde:
            data = value  # what pickle_serde makes of bytes, without the call
            flags = 0
        else:
            data, flags = self._serialize(k, value, flags)
        if cas is not None:
            cas = _check_cas(cas)
        if self.replicas == 1 and owner.health.usable and self._previous is None:
            # The common case in one step.
            kinds = () if noreply else _ONE_STATUS
            request = protocol.store(command, k, flags, expire, data, cas, bool(noreply))
            call = Call(owner, request, kinds, _WHAT.get(command) or command.decode())
            call.writes = [k]
            yield [call]
            if noreply:
                return call.error is None
            if call.error is None and type(reply := call.replies[0]) is bytes:  # type: ignore[index]
                return _STORE_RESULT.get(reply, False)
            return self._store_result(call)

        def body(nodes: list[Node], standin: bool) -> Op[bool | None]:
            if not nodes:
                return False
            ttl = self._failover_expire(expire) if standin else expire
            what = _WHAT.get(command) or command.decode()
            if command == b"set" or len(nodes) == 1:
                # Every copy gets a plain set; a conditional write goes to its only copy.
                kinds = () if noreply else _ONE_STATUS
                request = protocol.store(command, k, flags, ttl, data, cas, bool(noreply))
                calls = [Call(node, request, kinds, what) for node in nodes]
                yield calls
                if noreply:
                    return all(call.error is None for call in calls)
                results = [self._store_result(call) for call in calls]
                return next((r for r in results if r), results[0])
            # A conditional write is decided by the first copy; what it wrote is then copied.
            call = Call(
                nodes[0], protocol.store(command, k, flags, ttl, data, cas), _ONE_STATUS, what
            )
            yield [call]
            result = self._store_result(call)
            if result:
                if command in (b"append", b"prepend"):
                    yield from self._sync_copies(k, nodes, standin)
                else:  # add, replace, cas: the value and TTL written are known
                    request = protocol.store(b"set", k, flags, ttl, data)
                    yield [Call(node, request, _ONE_STATUS, "replica set") for node in nodes[1:]]
            return result

        return (yield from self._write(k, body))

    def _store_result(self, call: Call) -> bool | None:
        reply = self._reply(call)
        return False if reply is _FAILED else _STORE_RESULT.get(reply, False)

    def _sync_copies(self, k: bytes, nodes: list[Node], standin: bool) -> Op[None]:
        """After the first copy changed in place (append, incr, …): read it back with its
        TTL and write it to the other copies; delete them when that cannot be done."""
        entries = yield from self._entries({nodes[0]: [k]}, "replica read")
        entry = entries.get(k)
        expire = None if entry is None else self._copy_expire(entry[2], standin)
        if entry is None or expire is None or entry[2] is None:
            request = protocol.delete(k)
            what = "replica delete"
        else:
            request = protocol.store(b"set", k, entry[0], expire, entry[1])
            what = "replica set"
        yield [Call(node, request, _ONE_STATUS, what) for node in nodes[1:]]

    def _delta(
        self, command: bytes, key: str | bytes, amount: int, noreply: bool
    ) -> Op[int | None]:
        k = self.key(key)
        _check_int(amount, "delta")

        def body(nodes: list[Node], standin: bool) -> Op[int | None]:
            if not nodes:
                return None
            quiet = bool(noreply) and len(nodes) == 1
            request = protocol.delta(command, k, amount, quiet)
            call = Call(nodes[0], request, () if quiet else _ONE_STATUS, command.decode())
            yield [call]
            if quiet:
                return None
            reply = self._reply(call)
            if reply is _FAILED or reply == b"NOT_FOUND":
                return None
            result = int(reply)
            if len(nodes) > 1:
                yield from self._sync_copies(k, nodes, standin)
            return result

        return (yield from self._write(k, body))

    def _touch(self, key: str | bytes, expire: int, noreply: bool | None) -> Op[bool]:
        k = self.key(key)

        def body(nodes: list[Node], standin: bool) -> Op[bool]:
            ttl = self._failover_expire(expire) if standin else expire
            kinds = () if noreply else _ONE_STATUS
            request = protocol.touch(k, ttl, bool(noreply))
            calls = [Call(n, request, kinds, "touch") for n in nodes]
            if not calls:
                return False
            yield calls
            if noreply:
                return all(call.error is None for call in calls)
            return any([self._reply(call) == b"TOUCHED" for call in calls])

        return (yield from self._write(k, body))

    def _delete(
        self, key: str | bytes, noreply: bool | None, cas: int | bytes | None, stale: bool = False
    ) -> Op[bool | None]:
        k = self.key(key)
        token = None if cas is None else _check_cas(cas)

        def body(nodes: list[Node], standin: bool) -> Op[bool | None]:
            if not nodes:
                return False
            if stale and nodes[0].meta is not False:
                # Serve-stale: the value stays readable (marked stale) until one caller of
                # get_or_set refreshes it, for at most 30 s.
                calls = [
                    Call(n, protocol.meta_delete(k, b"I T30"), (META,), "delete") for n in nodes
                ]
                yield calls
                replies = [c.replies[0] if c.error is None else None for c in calls]  # type: ignore[index]
                if not any(isinstance(r, UnknownCommandError) for r in replies):
                    return any(isinstance(r, Meta) and r.code == b"HD" for r in replies)
                nodes[0].meta = False  # fall through: a plain delete
            if token is not None:
                result = yield from self._delete_if_unchanged(nodes[0], k, token)
                if result and len(nodes) > 1:
                    yield [Call(n, protocol.delete(k), _ONE_STATUS, "delete") for n in nodes[1:]]
                return result
            kinds = () if noreply else _ONE_STATUS
            request = protocol.delete(k, bool(noreply))
            calls = [Call(n, request, kinds, "delete") for n in nodes]
            yield calls
            if noreply:
                return all(call.error is None for call in calls)
            return any([self._reply(call) == b"DELETED" for call in calls])

        return (yield from self._write(k, body, delete=token is None))

    def _delete_if_unchanged(self, node: Node, k: bytes, cas: bytes) -> Op[bool | None]:
        """Delete ``k`` only if its CAS token is still ``cas``: True when deleted, False when
        it changed, None when it is not there. ``md k C<cas>`` where the node speaks meta;
        elsewhere a ``cas`` that stores an already-expired empty value (exptime -1), which
        memcached treats exactly as a conditional delete."""
        if node.meta is not False:
            call = Call(node, protocol.meta_delete(k, b"C" + cas), (META,), "delete")
            yield [call]
            first = call.replies[0] if call.error is None else None  # type: ignore[index]
            if not isinstance(first, UnknownCommandError):
                reply = self._reply(call)
                if reply is _FAILED:
                    return False
                node.meta = True
                return {b"HD": True, b"EX": False}.get(reply.code)  # NF: None
            node.meta = False
        call = Call(node, protocol.store(b"cas", k, 0, -1, b"", cas), _ONE_STATUS, "delete")
        yield [call]
        return self._store_result(call)

    # -- multi-key writes ------------------------------------------------------------------
    def _write_groups(
        self, keys: Iterable
    ) -> tuple[dict[Node, list[bytes]], dict, list, list[Node]]:
        """Every copy's node with its keys; the original key of each; keys with no node; the
        nodes fenced for this write (see ``_fence``; ``_unfence`` them when done)."""
        keys = list(keys)
        while True:
            if self.replicas == 1:
                groups, originals, unrouted = self._group(keys)
            else:
                originals = {self.key(key): key for key in keys}
                groups = self._group_copies(originals)
                placed = {k for ks in groups.values() for k in ks}
                unrouted = [k for k in originals if k not in placed]
            if all(n.health.usable for n in self._view.node_list):
                return groups, originals, unrouted, []
            placed: dict[bytes, list[Node]] = {}
            for node, ks in groups.items():
                for k in ks:
                    placed.setdefault(k, []).append(node)
            fenced = self._fence(placed)
            if fenced is not None:
                return groups, originals, unrouted, fenced

    def _set_many(self, values: Mapping, expire: int, noreply: bool | None) -> Op[list]:
        """Store every value; returns the keys that were not stored (pymemcache's contract)."""
        groups, originals, unrouted, fenced = self._write_groups(values)
        try:
            if unrouted and self.raise_on_error:
                raise NoServerAvailable("every server is ejected")
            serialized = {k: self._serialize(k, values[originals[k]], None) for k in originals}
            calls = []
            for node, ks in groups.items():
                parts = []
                for k in ks:
                    data, flags = serialized[k]
                    # Only a key whose holder is out (fenced) can have its owner out.
                    ttl = self._ttl_for(k, expire) if fenced else expire
                    parts.append(protocol.store(b"set", k, flags, ttl, data, None, bool(noreply)))
                kinds = () if noreply else (STATUS,) * len(ks)
                call = Call(node, b"".join(parts), kinds, "set_many", ks)
                call.writes = ks
                calls.append(call)
            yield calls
            yield from self._invalidate_previous(originals)
        finally:
            self._unfence(fenced)
        stored = set()
        for call in calls:
            if noreply:
                if call.error is None:
                    stored.update(call.keys or ())
                continue
            for i, k in enumerate(call.keys or ()):
                if self._reply(call, i) == _STORED:
                    stored.add(k)
        return [original for k, original in originals.items() if k not in stored]

    def _delete_many(self, keys: Iterable, noreply: bool | None) -> Op[bool]:
        groups, originals, unrouted, fenced = self._write_groups(keys)
        try:
            if unrouted and self.raise_on_error:
                raise NoServerAvailable("every server is ejected")
            calls = []
            for node, ks in groups.items():
                data = b"".join([protocol.delete(k, bool(noreply)) for k in ks])
                call = Call(node, data, () if noreply else (STATUS,) * len(ks), "delete_many", ks)
                call.writes = ks
                calls.append(call)
            if calls:
                yield calls
            yield from self._invalidate_previous(originals)
        finally:
            self._unfence(fenced)
        ok = not unrouted
        for call in calls:
            if call.error is not None:
                self._reply(call)
                ok = False
            elif not noreply:
                for i in range(len(call.kinds)):
                    if self._reply(call, i) is _FAILED:
                        ok = False
        return ok

    # -- every node ------------------------------------------------------------------------
    def _each(self, what: str, request: bytes, kind: int) -> Op[dict[str, Any]]:
        """``request`` to every usable node at once: ``{"host:port": reply}`` of those that
        answered."""
        calls = [Call(n, request, (kind,), what) for n in self.nodes.values() if n.health.usable]
        if calls:
            yield calls
        out = {}
        for call in calls:
            reply = self._reply(call)
            if reply is not _FAILED:
                out[str(call.node.server)] = reply
        return out

    def _stats(self, args: tuple[str, ...]) -> Op[dict[str, dict[bytes, Any]]]:
        replies = yield from self._each("stats", protocol.stats(*args), STATS)
        return {name: protocol.typed_stats(stats) for name, stats in replies.items()}

    def _version(self) -> Op[dict[str, bytes]]:
        replies = yield from self._each("version", protocol.VERSION, STATUS)
        return {name: line.removeprefix(b"VERSION ") for name, line in replies.items()}

    def _flush_all(self, delay: int, noreply: bool | None) -> Op[bool]:
        """Flush every node; True when every node (usable or not) confirmed."""
        done = yield from self._each("flush_all", protocol.flush_all(delay), STATUS)
        return len(done) == len(self.nodes) and all(r == b"OK" for r in done.values())

    def node_stats(self) -> dict[str, dict[str, Any]]:
        """What this client saw of each node: state, failures, ejections, meta support, keys in
        its recovery journal, and how often it was flushed because the journal overflowed."""
        return {
            str(n.server): {
                "state": n.health.state.value,
                "failures": n.health.failures,
                "ejections": n.health.ejections,
                "meta": n.meta,
                "journal": len(n.journal),
                "journal_flushes": n.journal_flushes,
                "leases": dict(n.leases),
            }
            for n in self.nodes.values()
        }


def _check_cas(cas: int | bytes) -> bytes:
    if isinstance(cas, bytes) and cas.isdigit():
        return cas
    return b"%d" % _check_int(cas, "cas")


def _meta_ttl(reply: Meta) -> int | None:
    """The remaining TTL of a meta hit as ``set`` takes it (0 = never); None when the value
    expires within the second (no copy of it is worth making)."""
    t = reply.number("t")
    if t is None or t == -1:
        return 0
    return t if t > 0 else None
