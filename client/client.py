"""The synchronous cluster client: pymemcache's surface over a ketama ring of nodes.

This module owns routing (each key to the first usable server of its ring order), the
translation of node failures into misses (or pymemcache exceptions with
``raise_on_error=True``), the failover TTL cap for writes that land on a stand-in, multi-key
fan-out (requests go to every node before any reply is read), the per-node connection pools
and the background prober that re-admits ejected nodes after a real round trip. The protocol
itself is pymemcache's: every connection is a ``pymemcache.client.base.Client``.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from hashlib import md5
from typing import Any

from pymemcache.client.base import Client as ProtocolClient
from pymemcache.client.base import _readline
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)
from pymemcache.serde import pickle_serde

from .health import NodeHealth
from .ring import Ring, Server, parse_location

log = logging.getLogger("ringcache.client")

REALTIME_MAXDELTA = 60 * 60 * 24 * 30
# What counts as the node failing (as opposed to the request being wrong): every way a
# connection can break, be refused, time out (socket timeouts are OSErrors), or close under us.
CONNECTION_ERRORS = (OSError, MemcacheUnexpectedCloseError, MemcacheUnknownError)


class NoServerAvailable(MemcacheServerError):
    """Every server of the LOCATION is ejected (raised only with ``raise_on_error``)."""


_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")
_VALUE_LINE = re.compile(rb"VALUE (\S+) (\d+) (\d+)(?: (\d+))?\r\n")


def validate_key(key: str | bytes, key_prefix: bytes = b"") -> bytes:
    """The key as bytes, or ``MemcacheIllegalInputError``: memcached's rules (at most 250 bytes,
    no spaces or control characters)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        raise MemcacheIllegalInputError(f"key must be str or bytes, not {type(key).__name__}")
    if key_prefix:
        key = key_prefix + key
    if not key:
        raise MemcacheIllegalInputError("empty key")
    if len(key) > 250:
        raise MemcacheIllegalInputError(f"key is longer than 250 bytes: {key[:40]!r}...")
    if _BAD_KEY_BYTE.search(key):
        raise MemcacheIllegalInputError(f"key contains a space or control character: {key!r}")
    return key


def check_error_line(line: bytes) -> None:
    """Raise pymemcache's exception for an ERROR / CLIENT_ERROR / SERVER_ERROR reply line."""
    if line.startswith(b"CLIENT_ERROR"):
        raise MemcacheClientError(line[13:].decode(errors="replace"))
    if line.startswith(b"SERVER_ERROR"):
        raise MemcacheServerError(line[13:].decode(errors="replace"))
    if line.startswith(b"ERROR"):
        raise MemcacheUnknownCommandError(line.decode(errors="replace"))


def reply_may_be_complete(data: bytes | bytearray) -> bool:
    """Only a get reply that ends like one can be complete: parse then, not after every recv."""
    return data.endswith(b"END\r\n") or (data.endswith(b"\r\n") and data[:6] != b"VALUE ")


def parse_values(
    data: bytes, cas: bool, deserialize: Callable[[bytes, bytes, int], Any]
) -> tuple[dict[bytes, Any], int] | None:
    """A get/gets reply (VALUE blocks, then END) in one pass: the values and the length of the
    reply, or None when ``data`` does not hold all of it yet."""
    found: dict[bytes, Any] = {}
    match = _VALUE_LINE.match
    pos = 0
    size = len(data)
    while True:
        m = match(data, pos)
        if m is None:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                return None
            if data[pos:eol] == b"END":
                return found, eol + 2
            check_error_line(data[pos:eol])
            raise MemcacheUnknownError(data[pos : pos + 32])
        key, flags, length, token = m.groups()
        start = m.end()
        end = start + int(length)
        if size < end + 2:
            return None
        value = data[start:end]
        if flags != b"0":
            value = deserialize(key, value, int(flags))
        found[key] = (value, token) if cas else value
        pos = end + 2


class _Node:
    """One server: its health (which counts its failures) and its idle connections."""

    def __init__(self, server: Server, owner: ClusterBase) -> None:
        self.server = server
        self.health = NodeHealth(
            owner.failure_limit, owner.probe_interval, owner.probe_max_interval, owner.clock
        )
        self.pool_size = owner.pool_size
        self._idle: list = []

    def take(self) -> Any:
        """An idle connection, or None (list.pop is atomic: no lock on the hot path)."""
        try:
            return self._idle.pop()
        except IndexError:
            return None

    def give(self, conn: Any) -> bool:
        """Keep ``conn`` for reuse; False when the pool is full (the caller closes it)."""
        if len(self._idle) < self.pool_size:
            self._idle.append(conn)
            return True
        return False

    def drain(self) -> list:
        idle = []
        while (conn := self.take()) is not None:
            idle.append(conn)
        return idle


class _View:
    """One membership: servers, their ring and nodes, and the point → node table."""

    __slots__ = ("node_list", "node_of_point", "nodes", "points", "ring", "servers")

    def __init__(self, servers: list[Server], owner: ClusterBase, previous: _View | None) -> None:
        self.servers = servers
        self.ring = Ring(servers)
        kept = previous.nodes if previous is not None else {}
        # A server that stays keeps its node: health, pool and counters carry over.
        self.nodes = {s.name: kept.get(s.name) or _Node(s, owner) for s in servers}
        self.node_list = [self.nodes[s.name] for s in servers]  # ring index -> node
        # The node of every continuum point, plus the first again so that a hash past the
        # last point needs no wrap-around test.
        owners = self.ring._owner_index
        self.node_of_point = [self.node_list[i] for i in [*owners, owners[0]]]
        self.points = self.ring._points


def parse_cluster_config(reply: bytes) -> tuple[int, list[Server]] | None:
    """A ``config get cluster`` reply (ElastiCache's format) as (version, servers)."""
    head, _, rest = reply.partition(b"\r\n")
    parts = head.split()
    if len(parts) != 4 or parts[:2] != [b"CONFIG", b"cluster"]:
        return None
    body = rest[: int(parts[3])].decode(errors="replace")
    lines = body.split("\n")
    try:
        version = int(lines[0])
    except ValueError:
        return None
    servers = []
    for member in lines[1].split() if len(lines) > 1 else []:
        host, ip, port = member.split("|")
        servers.append(Server(host=host or ip, port=int(port)))
    return version, servers


def connect(server: Server, timeout: float) -> socket.socket:
    """A blocking socket to ``server`` (TCP or unix) with ``timeout``."""
    if server.unix is not None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        try:
            sock.connect(server.unix)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection((server.host, server.port), timeout=timeout)


def round_trip(
    server: Server, command: bytes, ends: tuple[bytes, ...], timeout: float
) -> bytes | None:
    """One admin request on a fresh connection: the reply up to one of ``ends``, or None."""
    try:
        with connect(server, timeout) as sock:
            sock.sendall(command)
            data = b""
            while not data.endswith(ends):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
            return data
    except OSError:
        return None


def fetch_cluster_config(server: Server, timeout: float) -> tuple[int, list[Server]] | None:
    """Ask one server for its membership; None when it cannot say."""
    data = round_trip(server, b"config get cluster\r\n", (b"END\r\n", b"ERROR\r\n"), timeout)
    if data is None:
        return None
    try:
        return parse_cluster_config(data)
    except ValueError:
        return None


class ClusterBase:
    """What the sync and the trio client share: options, ring, routing, health, failover."""

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
    ) -> None:
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
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.replicas = replicas
        self.discovery_interval = discovery_interval
        self.cluster_version = 0
        self._view = _View(parse_location(location), self, None)
        # While keys move to their new owners, a miss on the new owner is read from the
        # previous membership's owner and copied forward (warm-up), until the next version.
        self._previous: _View | None = None

    # The current membership; a discovered change swaps the whole view in one assignment,
    # and every request reads ``self._view`` once, so it never mixes two memberships.
    @property
    def servers(self) -> list[Server]:
        return self._view.servers

    @property
    def ring(self) -> Ring:
        return self._view.ring

    @property
    def nodes(self) -> dict[str, _Node]:
        return self._view.nodes

    def _apply_cluster_config(self, version: int, servers: list[Server]) -> bool:
        """Adopt a newer membership (from ``config get cluster``); False when not newer."""
        if version <= self.cluster_version or not servers:
            return False
        old = self._view
        new = _View(servers, self, old)
        same_members = set(new.nodes) == set(old.nodes)
        # A new membership starts a warm-up from the old one; the same members again under a
        # newer version mean the move is complete.
        self._previous = None if same_members else old
        self._view = new
        self.cluster_version = version
        for name, node in old.nodes.items():
            if name not in self._view.nodes:
                for conn in node.drain():
                    conn.close()
        log.warning("membership version %d: %s", version, ", ".join(map(str, servers)))
        return True

    def _discovery_source(self) -> _Node | None:
        return next((n for n in self._view.node_list if n.health.usable), None)

    def key(self, key: str | bytes) -> bytes:
        """The validated key as sent, prefix included."""
        return validate_key(key, self.key_prefix)

    def server_for(self, key: str | bytes) -> Server:
        """The server that owns ``key`` on the ring (whatever its health)."""
        return self.ring.get(self.key(key))

    def _route(self, key: bytes) -> tuple[_Node | None, bool]:
        """The node a request for ``key`` goes to, and whether it stands in for the owner."""
        view = self._view
        node = view.node_list[view.ring.index_of(key)]
        if node.health.usable:
            return node, False
        for i in view.ring.candidate_indices(key):
            node = view.node_list[i]
            if node.health.usable:
                return node, True
        return None, True

    def _target(self, key: bytes) -> tuple[_Node | None, bool]:
        """``_route``, raising ``NoServerAvailable`` for no node when ``raise_on_error``."""
        node, standin = self._route(key)
        if node is None and self.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return node, standin

    def _group(
        self, keys: Iterable
    ) -> tuple[dict[_Node, list[bytes]], dict[bytes, Any], list[bytes]]:
        """Keys grouped by the node they go to; the original key of each; keys with no node.

        This is the hot loop of every multi-key call, so validation, hashing and the ring
        lookup of ``key``/``_route`` are inlined here for the common case.
        """
        groups: dict[_Node, list[bytes]] = {}
        originals: dict[bytes, Any] = {}
        unrouted: list[bytes] = []
        prefix = self.key_prefix
        bad = _BAD_KEY_BYTE.search
        view = self._view
        points = view.points
        node_of_point = view.node_of_point
        for key in keys:
            if type(key) is str:
                k = key.encode()
            elif type(key) is bytes:
                k = key
            else:
                k = validate_key(key, prefix)
            if prefix:
                k = prefix + k
            if not k or len(k) > 250 or bad(k):
                validate_key(key, prefix)  # raises with the precise reason
            originals[k] = key
            node = node_of_point[bisect_left(points, int.from_bytes(md5(k).digest()[:4], "little"))]
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
        if unrouted and self.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return groups, originals, unrouted

    def _ttl_for(self, key: bytes, node: _Node, expire: int) -> int:
        """``expire``, capped when ``node`` stands in for the key's ejected owner."""
        if self._view.ring.get(key).name == node.server.name:
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

    def _failed(self, node: _Node, exc: BaseException, what: str) -> None:
        if node.health.failed():
            log.warning(
                "ejected %s after %d failures (%s: %r)",
                node.server,
                node.health.failure_limit,
                what,
                exc,
            )
            self._start_prober()
        else:
            log.info("%s failed on %s: %r", what, node.server, exc)

    def _start_prober(self) -> None:
        raise NotImplementedError

    def _probe_due(self) -> tuple[list[_Node], bool]:
        """Nodes to probe now, and whether any node is still out of the ring."""
        due = [n for n in self.nodes.values() if n.health.probe_due()]
        out = any(not n.health.usable for n in self.nodes.values())
        return due, out

    def _probed(self, node: _Node, ok: bool) -> None:
        node.health.probe_result(ok)
        if ok:
            log.warning("re-admitted %s after a successful probe", node.server)

    def _copies(self, key: bytes) -> tuple[list[_Node], bool]:
        """The usable nodes that hold ``key``'s copies (owner first), and whether the owner
        itself is missing from them (its copies then get the failover TTL)."""
        view = self._view
        nodes = []
        for i in view.ring.candidate_indices(key):
            node = view.node_list[i]
            if node.health.usable:
                nodes.append(node)
                if len(nodes) == self.replicas:
                    break
        owner = view.node_list[view.ring.index_of(key)]
        if not nodes and self.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return nodes, bool(nodes) and nodes[0] is not owner

    def _previous_owners(self, keys: list[bytes]) -> dict[_Node, list[bytes]]:
        """During a membership change: the keys whose previous owner differs, by that owner."""
        previous = self._previous
        if previous is None:
            return {}
        view = self._view
        groups: dict[_Node, list[bytes]] = {}
        for k in keys:
            old = previous.node_list[previous.ring.index_of(k)]
            if old is not view.node_list[view.ring.index_of(k)] and old.health.usable:
                groups.setdefault(old, []).append(k)
        return groups

    def node_stats(self) -> dict[str, dict[str, Any]]:
        """What this client saw of each node: state, failures, ejections."""
        return {
            str(n.server): {
                "state": n.health.state.value,
                "failures": n.health.failures,
                "ejections": n.health.ejections,
            }
            for n in self.nodes.values()
        }


class Client(ClusterBase):
    """A memcached client for a cluster of servers placed with ketama.

    ``Client(["10.0.0.1:11211", "10.0.0.2:11211"])``; every LOCATION form Django accepts works.
    Safe to share between threads.
    """

    def __init__(self, location: str | Iterable | Mapping, **options: Any) -> None:
        super().__init__(location, **options)
        self._prober: threading.Thread | None = None
        self._prober_lock = threading.Lock()
        self._closed = threading.Event()
        self._discoverer: threading.Thread | None = None
        if self.discovery:
            self._discover_once()
            self._discoverer = threading.Thread(
                target=self._discover_loop, name="ringcache-discovery", daemon=True
            )
            self._discoverer.start()

    def _discover_once(self) -> bool:
        """Poll one live node's ``config get cluster``; adopt a newer membership."""
        node = self._discovery_source()
        if node is None:
            return False
        found = fetch_cluster_config(node.server, self.timeout)
        return found is not None and self._apply_cluster_config(*found)

    def _discover_loop(self) -> None:
        while not self._closed.wait(self.discovery_interval):
            self._discover_once()

    # -- connections -----------------------------------------------------------------------
    def _connection(self, node: _Node) -> ProtocolClient:
        conn = node.take()
        if conn is not None:
            return conn
        return ProtocolClient(
            node.server.address,
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            no_delay=True,
            serde=self.serde,
            allow_unicode_keys=True,
            default_noreply=False,
        )

    def _release(self, node: _Node, conn: ProtocolClient) -> None:
        if not node.give(conn):
            conn.close()

    def _call(
        self, key: bytes, what: str, fn: Callable[[ProtocolClient, bool], Any], default: Any
    ) -> Any:
        if self.replicas > 1:
            return self._call_replicated(key, what, fn, default)
        node, standin = self._target(key)
        if node is None:
            return default
        return self._on(node, standin, what, fn, default)

    def _on(
        self,
        node: _Node,
        standin: bool,
        what: str,
        fn: Callable[[ProtocolClient, bool], Any],
        default: Any,
    ) -> Any:
        """Run ``fn`` on a pooled connection to ``node``; a failure becomes ``default``."""
        conn = self._connection(node)
        try:
            result = fn(conn, standin)
        except CONNECTION_ERRORS as exc:
            conn.close()
            self._failed(node, exc, what)
            if self.raise_on_error:
                raise
            return default
        except MemcacheError:
            # The node answered (an error reply): it is healthy and the connection in sync.
            node.health.succeeded()
            self._release(node, conn)
            if self.raise_on_error:
                raise
            return default
        except BaseException:
            conn.close()
            raise
        node.health.succeeded()
        self._release(node, conn)
        return result

    def _call_replicated(
        self, key: bytes, what: str, fn: Callable[[ProtocolClient, bool], Any], default: Any
    ) -> Any:
        nodes, standin = self._copies(key)
        if what in REPLICA_READS:
            # The owner first; a miss or a failure falls back to the next copy.
            for node in nodes:
                result = self._on(node, standin, what, fn, default)
                if not (result is default or result == default):
                    return result
            return default
        if what in REPLICA_EVERY_COPY:
            results = [self._on(node, standin, what, fn, default) for node in nodes]
            return next((r for r in results if r), results[0] if results else default)
        # Conditional writes and arithmetic: decided by the first copy, then its resulting
        # value is written to the other copies.
        if not nodes:
            return default
        result = self._on(nodes[0], standin, what, fn, default)
        if result and len(nodes) > 1:
            value = self._on(nodes[0], standin, "get", lambda c, _: c.get(key, _MISS), _MISS)
            for node in nodes[1:]:
                if value is _MISS:
                    self._on(node, standin, "delete", lambda c, _: c.delete(key), False)
                else:
                    ttl = self._failover_expire(0) if standin else 0
                    self._on(
                        node, standin, "set", lambda c, _, v=value, t=ttl: c.set(key, v, t), False
                    )
        return result

    # -- prober ----------------------------------------------------------------------------
    def _start_prober(self) -> None:
        with self._prober_lock:
            if self._prober is not None and self._prober.is_alive():
                return
            self._prober = threading.Thread(
                target=self._probe_loop, name="ringcache-prober", daemon=True
            )
            self._prober.start()

    def _probe_loop(self) -> None:
        while not self._closed.is_set():
            due, out = self._probe_due()
            for node in due:
                self._probed(node, self._probe(node))
            if not out:
                return
            self._closed.wait(0.05)

    def _probe(self, node: _Node) -> bool:
        """A real round trip: connect and ask for the version."""
        probe = ProtocolClient(
            node.server.address, connect_timeout=self.connect_timeout, timeout=self.timeout
        )
        try:
            probe.version()
            return True
        except (*CONNECTION_ERRORS, MemcacheError):
            return False
        finally:
            probe.close()

    # -- single-key operations -------------------------------------------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        k = self.key(key)
        value = self._call(k, "get", lambda c, _: c.get(k, _MISS), _MISS)
        if value is _MISS and self._previous is not None:
            found = self._warm_up([k])
            value = found.get(k, _MISS)
        return default if value is _MISS else value

    def _warm_up(self, keys: list[bytes]) -> dict[bytes, Any]:
        """Read keys that missed from their previous owners and copy hits forward (``add``)."""
        groups = self._previous_owners(keys)
        if not groups:
            return {}
        results = self._fan_out(
            groups,
            lambda node, ks: b"get " + b" ".join(ks) + b"\r\n",
            lambda conn, ks: self._read_values(conn, False),
            "warm-up",
        )
        found = {k: v for part in results.values() for k, v in part.items()}
        for k, v in found.items():
            self._call(k, "warm-up add", lambda c, _, k=k, v=v: c.add(k, v, noreply=False), False)
        return found

    def gets(
        self, key: str | bytes, default: Any = None, cas_default: Any = None
    ) -> tuple[Any, Any]:
        k = self.key(key)
        return self._call(
            k, "gets", lambda c, _: c.gets(k, default, cas_default), (default, cas_default)
        )

    def _store(self, name: str, key, value, expire: int, *extra) -> bool:
        k = self.key(key)

        def op(conn: ProtocolClient, standin: bool) -> Any:
            ttl = self._failover_expire(expire) if standin else expire
            return getattr(conn, name)(k, value, *extra, expire=ttl, noreply=False)

        return self._call(k, name, op, False)

    def set(self, key, value, expire: int = 0, noreply: bool | None = None, flags=None) -> bool:
        return self._store("set", key, value, expire)

    def add(self, key, value, expire: int = 0, noreply: bool | None = None, flags=None) -> bool:
        return self._store("add", key, value, expire)

    def replace(self, key, value, expire: int = 0, noreply: bool | None = None, flags=None) -> bool:
        return self._store("replace", key, value, expire)

    def append(self, key, value, expire: int = 0, noreply: bool | None = None, flags=None) -> bool:
        return self._store("append", key, value, expire)

    def prepend(self, key, value, expire: int = 0, noreply: bool | None = None, flags=None) -> bool:
        return self._store("prepend", key, value, expire)

    def cas(
        self, key, value, cas, expire: int = 0, noreply: bool = False, flags=None
    ) -> bool | None:
        """True when stored, False when the CAS token is stale (or on failure), None if absent."""
        return self._store("cas", key, value, expire, cas)

    def delete(self, key, noreply: bool | None = None) -> bool:
        k = self.key(key)
        return self._call(k, "delete", lambda c, _: c.delete(k, noreply=False), False)

    def incr(self, key, value: int, noreply: bool = False) -> int | None:
        k = self.key(key)
        return self._call(k, "incr", lambda c, _: c.incr(k, value, noreply=False), None)

    def decr(self, key, value: int, noreply: bool = False) -> int | None:
        k = self.key(key)
        return self._call(k, "decr", lambda c, _: c.decr(k, value, noreply=False), None)

    def touch(self, key, expire: int = 0, noreply: bool | None = None) -> bool:
        k = self.key(key)
        return self._call(k, "touch", lambda c, _: c.touch(k, expire, noreply=False), False)

    # -- multi-key operations --------------------------------------------------------------
    def _fan_out(
        self,
        groups: dict[_Node, list[bytes]],
        request: Callable[[_Node, list[bytes]], bytes],
        read: Callable[[ProtocolClient, list[bytes]], Any],
        what: str,
    ) -> dict[_Node, Any]:
        """Send every node its request, then read every reply; a failed node is left out."""
        sent: list[tuple[_Node, ProtocolClient, list[bytes]]] = []
        results: dict[_Node, Any] = {}
        first_error: BaseException | None = None
        for node, keys in groups.items():
            conn = self._connection(node)
            try:
                if conn.sock is None:
                    conn._connect()
                conn.sock.sendall(request(node, keys))
                sent.append((node, conn, keys))
            except CONNECTION_ERRORS as exc:
                conn.close()
                self._failed(node, exc, what)
                first_error = first_error or exc
        for node, conn, keys in sent:
            try:
                results[node] = read(conn, keys)
            except CONNECTION_ERRORS as exc:
                conn.close()
                self._failed(node, exc, what)
                first_error = first_error or exc
                continue
            except MemcacheError as exc:
                conn.close()  # an error mid-reply: the stream position is unknown
                first_error = first_error or exc
                continue
            node.health.succeeded()
            self._release(node, conn)
        if first_error is not None and self.raise_on_error:
            raise first_error
        return results

    def _read_values(self, conn: ProtocolClient, cas: bool) -> dict:
        """A get/gets reply (VALUE blocks, then END), read straight from the socket."""
        sock = conn.sock
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise MemcacheUnexpectedCloseError()
            data += chunk
            # Only a reply that ends like one can be complete: parse it then, not per recv.
            if reply_may_be_complete(data):
                parsed = parse_values(data, cas, self.serde.deserialize)
                if parsed is not None:
                    return parsed[0]

    def _get_many(self, keys: Iterable, cas: bool) -> dict:
        groups, originals, _ = self._group(keys)
        name = b"gets " if cas else b"get "
        results = self._fan_out(
            groups,
            lambda node, ks: name + b" ".join(ks) + b"\r\n",
            lambda conn, ks: self._read_values(conn, cas),
            "get_many",
        )
        out = {}
        for found in results.values():
            for k, v in found.items():
                out[originals[k]] = v
        if self._previous is not None and not cas and len(out) < len(originals):
            missed = [k for k, original in originals.items() if original not in out]
            for k, v in self._warm_up(missed).items():
                out[originals[k]] = v
        return out

    def get_many(self, keys: Iterable) -> dict:
        keys = list(keys)
        found = self._get_many(keys, cas=False)
        if self.replicas > 1:
            # Keys the first copies did not have: ask the other copies, one key at a time.
            for key in keys:
                if key not in found:
                    value = self.get(key, _MISS)
                    if value is not _MISS:
                        found[key] = value
        return found

    get_multi = get_many

    def gets_many(self, keys: Iterable) -> dict:
        return self._get_many(keys, cas=True)

    def set_many(self, values: Mapping, expire: int = 0, noreply: bool | None = None) -> list:
        """Store every value; returns the keys that were not stored (pymemcache's contract)."""
        if self.replicas > 1:
            return [k for k, v in values.items() if not self.set(k, v, expire)]
        items = {self.key(k): v for k, v in values.items()}
        originals = {self.key(k): k for k in values}
        groups, _, unrouted = self._group(originals.values())

        def request(node: _Node, ks: list[bytes]) -> bytes:
            parts = []
            for k in ks:
                data, flags = self.serde.serialize(k, items[k])
                if isinstance(data, str):
                    data = data.encode()
                ttl = self._ttl_for(k, node, expire)
                parts.append(b"set %s %d %d %d\r\n%s\r\n" % (k, flags, ttl, len(data), data))
            return b"".join(parts)

        def read(conn: ProtocolClient, ks: list[bytes]) -> list[bytes]:
            buf = b""
            failed = []
            for k in ks:
                buf, line = _readline(conn.sock, buf)
                if line != b"STORED":
                    failed.append(k)
            return failed

        results = self._fan_out(groups, request, read, "set_many")
        failed = [originals[k] for k in unrouted]
        for node, ks in groups.items():
            failed += [originals[k] for k in results.get(node, ks)]
        return failed

    set_multi = set_many

    def delete_many(self, keys: Iterable, noreply: bool | None = None) -> bool:
        if self.replicas > 1:
            for key in keys:
                self.delete(key)
            return True
        groups, _, unrouted = self._group(keys)

        def read(conn: ProtocolClient, ks: list[bytes]) -> bool:
            buf = b""
            for _ in ks:
                buf, line = _readline(conn.sock, buf)
                if line not in (b"DELETED", b"NOT_FOUND"):
                    conn._raise_errors(line, b"delete")
            return True

        results = self._fan_out(
            groups,
            lambda node, ks: b"".join(b"delete %s\r\n" % k for k in ks),
            read,
            "delete_many",
        )
        return not unrouted and len(results) == len(groups)

    delete_multi = delete_many

    # -- every node ------------------------------------------------------------------------
    def _each_node(self, what: str, fn: Callable[[ProtocolClient], Any]) -> dict[str, Any]:
        out = {}
        for node in self.nodes.values():
            if not node.health.usable:
                continue
            result = self._call_node(node, what, fn)
            if result is not _FAILED:
                out[str(node.server)] = result
        return out

    def _call_node(self, node: _Node, what: str, fn: Callable[[ProtocolClient], Any]) -> Any:
        return self._on(node, False, what, lambda conn, _: fn(conn), _FAILED)

    def stats(self, *args) -> dict[str, dict]:
        """``stats`` of every usable node, by ``host:port``."""
        return self._each_node("stats", lambda c: c.stats(*args))

    def version(self) -> dict[str, bytes]:
        return self._each_node("version", lambda c: c.version())

    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> bool:
        """Flush every node; True when every node (usable or not) confirmed."""
        done = self._each_node("flush_all", lambda c: c.flush_all(delay, noreply=False))
        return len(done) == len(self.nodes) and all(done.values())

    def close(self) -> None:
        self._closed.set()
        for node in self.nodes.values():
            for conn in node.drain():
                conn.close()
        for thread in (self._prober, self._discoverer):
            if thread is not None:
                thread.join(timeout=2)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_FAILED = object()
_MISS = object()
# How replication treats an operation: reads fall back copy by copy; these writes go to
# every copy; everything else is decided by the first copy and its result copied.
REPLICA_READS = frozenset({"get", "gets"})
REPLICA_EVERY_COPY = frozenset({"set", "delete", "touch"})
