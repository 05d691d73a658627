"""The synchronous driver: the engine's steps on blocking sockets, safe to share by threads.

This module owns I/O only: ``Connection`` (a blocking socket with a ``protocol.Reader``, the
timeouts of ``steps``' policy set on the socket itself), running an operation's steps (a
single call inline; several calls all sent before any reply is read), the lock that makes the
engine's code between two steps one piece when many threads share the client, the per-peer
pools (``pool``), the prober and discovery threads, started when a step's outcome says a
peer was ejected, and ``fork()``: a child's copy of a client uses none of the parent's
sockets, locks or threads. Every rule of the client is ``engine.Engine``'s; the public
methods only run its operations.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from . import protocol
from .engine import Engine, Face
from .errors import NoServerAvailable, UnexpectedCloseError
from .keys import validate_key
from .leases import NO_FALLBACK
from .options import Options
from .peer import Peer
from .pool import Pool, Pools
from .protocol import LINE, NEED_DATA
from .recovery import PROBE_TICK
from .resolve import ResolverConfig, joined, resolve, split_location
from .ring import Server
from .security import Security
from .steps import Call, Compute, Datagram, Entry, Op, Pause

__all__ = ["Client", "Connection", "NoServerAvailable", "resolve_location", "validate_key"]


T = TypeVar("T")

# Every open Client of this process: after fork() the child's copies start afresh.
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


class Connection:
    """A blocking connection to one server, replies read with ``protocol.Reader``.

    The cluster tooling uses it too: ``Connection(server).request(protocol.VERSION,
    (protocol.STATUS,))``. With ``security``, a TCP connection is wrapped in TLS and logs in
    before it is used.
    """

    __slots__ = ("idle_since", "reader", "sock")

    def __init__(
        self,
        server: Server,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        security: Security | None = None,
    ) -> None:
        # Each step of opening (connect, TLS handshake, the login's send and receive) within
        # connect_timeout, as Python's socket timeout; then each send and receive within
        # timeout, as the kernel's (Python's own would add a poll before each of them).
        if server.unix is not None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(connect_timeout)
            try:
                sock.connect(server.unix)
            except OSError:
                sock.close()
                raise
        else:
            address = server.address
            assert not isinstance(address, str)
            sock = socket.create_connection(address, timeout=connect_timeout)
        self.sock = sock
        self.idle_since = 0.0
        self.reader = protocol.Reader()
        try:
            if server.unix is None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if security is not None and security.tls is not None:
                    self.sock = sock = security.tls.wrap_socket(
                        sock, server_hostname=security.server_hostname(server)
                    )
            if security is not None and security.login is not None:
                self.send(security.login)
                security.check_login(self.read(protocol.STATUS), server)
            sock.settimeout(None)
            if timeout:
                tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except BaseException:
            sock.close()
            raise

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BlockingIOError, ssl.SSLWantWriteError):  # SO_SNDTIMEO
            raise TimeoutError("timed out sending to the server") from None

    def read(self, kind: int) -> Any:
        """The next reply of ``kind``, receiving until it is complete."""
        reader = self.reader
        reply = reader.next(kind) if reader.buffered else NEED_DATA
        while reply is NEED_DATA:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):  # SO_RCVTIMEO
                raise TimeoutError("timed out waiting for the server") from None
            if not chunk:
                raise UnexpectedCloseError("the server closed the connection")
            reader.feed(chunk)
            reply = reader.next(kind)
        return reply

    def request(self, data: bytes, kinds: tuple[int, ...]) -> list[Any]:
        self.send(data)
        return [self.read(kind) for kind in kinds]

    def lines(self, data: bytes) -> Iterator[bytes]:
        """Send ``data``, then yield reply lines up to (not including) ``END``."""
        self.send(data)
        while (line := self.read(LINE)) != b"END":
            yield line

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exchange(step: Datagram, timeout: float) -> bytes | None:
    """One DNS message out and the one that answers it, each step within ``timeout``: a UDP
    datagram, or over TCP (``step.tcp``) framed by its two-byte length."""
    host, port = step.address
    try:
        if step.tcp:
            with socket.create_connection((host, port), timeout=timeout) as tcp:
                tcp.sendall(struct.pack("!H", len(step.data)) + step.data)
                (size,) = struct.unpack("!H", _read_exactly(tcp, 2))
                return _read_exactly(tcp, size)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as udp:
            udp.settimeout(timeout)
            udp.connect(address)
            udp.send(step.data)
            return udp.recv(65535)
    except OSError:
        return None


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the nameserver closed the connection")
        data += chunk
    return data


def resolve_location(
    location: str | Iterable[Any], dns_nameservers: Iterable[str] = (), timeout: float = 2.0
) -> list[Server]:
    """The servers a LOCATION names now, its DNS names resolved once (for the tooling:
    ``ringcache follow`` and every command given a ``dnssrv+``/``dns+`` location). A DNS
    name that gets no answer raises ``OSError`` naming it."""
    plain, names = split_location(location)
    if not names:
        return plain
    op = resolve(ResolverConfig.from_options(tuple(dns_nameservers)), names)
    try:
        step = next(op)
        while True:
            assert type(step) is Datagram
            step.reply = _exchange(step, timeout)
            step = op.send(step)
    except StopIteration as stop:
        found: list[Server] | None = stop.value
    if not found:
        raise OSError(f"DNS: no servers for {', '.join(map(str, names))}")
    return joined(plain, found)


class Client(Face):
    """A memcached client for a cluster of servers placed with ketama.

    ``Client(["10.0.0.1:11211", "10.0.0.2:11211"])``; every LOCATION form Django accepts works;
    the options are those of ``options.Options``. Safe to share between threads.
    """

    def __init__(self, location: str | Iterable[Any] | Mapping[str, Any], **options: Any) -> None:
        opts = Options.from_kwargs(**options)
        self.engine = Engine(location, opts)
        # Held while the engine's code runs (never during I/O): see ``steps``.
        self._lock = threading.Lock()
        self._pools: Pools[Pool[Connection]] = Pools(lambda: Pool(opts.pool_size, opts.clock))
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None
        self._prober_lock = threading.Lock()
        self._wake = threading.Event()
        self._discoverer: threading.Thread | None = None
        _CLIENTS.add(self)
        if self.engine.options.discovery:
            self._discover()
            self._start_discovery()
        if self.engine.needs_rounds:
            self._start_prober()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _after_fork(self) -> None:
        """In a child made by fork(): nothing of the parent's is used again — its sockets
        (their descriptors are closed here, without a byte sent on them), its locks (another
        thread may have held one when the process forked) and its threads (which the child
        does not have). What the engine knows (health, journal, membership) is kept."""
        self._pools.close()  # closing a descriptor sends nothing, TLS or not
        self._lock = threading.Lock()
        self._prober_lock = threading.Lock()
        self._prober = None
        self._discoverer = None
        if self._closed.is_set():
            return
        self._closed = threading.Event()
        self._wake = threading.Event()
        self.engine.debts.renew_identity()  # the parent's debts are the parent's
        if self.engine.needs_rounds:
            self._start_prober()
        if self.engine.options.discovery:
            self._start_discovery()

    def _start_discovery(self) -> None:
        self._discoverer = threading.Thread(
            target=self._discover_loop, name="ringcache-discovery", daemon=True
        )
        self._discoverer.start()

    # -- running the engine's operations ---------------------------------------------------
    def _run(self, op: Op[T]) -> T:
        lock = self._lock
        try:
            with lock:
                step = next(op)
            while True:
                if type(step) is list:
                    if len(step) == 1 and not step[0].fresh:
                        self._execute_one(step[0])
                    else:
                        self._execute(step)
                    with lock:
                        if self.engine.settle(step):
                            self._start_prober()
                        step = op.send(step)
                elif type(step) is Pause:
                    time.sleep(step.seconds)
                    with lock:
                        step = op.send(None)
                elif type(step) is Datagram:
                    step.reply = _exchange(step, self.engine.options.timeout)
                    with lock:
                        step = op.send(step)
                else:
                    assert type(step) is Compute
                    try:
                        value = step.fn()
                    except BaseException as exc:
                        with lock:
                            step = op.throw(exc)
                    else:
                        with lock:
                            step = op.send(value)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            with lock:
                op.close()  # an interrupted operation still releases what it holds

    def _connect(self, peer: Peer) -> Connection:
        o = self.engine.options
        return Connection(peer.server, o.connect_timeout, o.timeout, o.security)

    def _execute_one(self, call: Call) -> None:
        """The hot path: one request on a pooled connection."""
        pool = self._pools[call.peer]
        conn = None
        try:
            conn = pool.take() or self._connect(call.peer)
            conn.send(call.data)
            kinds = call.kinds
            if len(kinds) == 1:
                call.replies = [conn.read(kinds[0])]
            else:
                read = conn.read
                call.replies = [read(kind) for kind in kinds]
        except Exception as exc:  # the engine decides what it means (``settle``)
            if conn is not None:
                conn.close()
            call.error = exc
            return
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        pool.give(conn)

    def _execute(self, step: list[Call]) -> None:
        # Every request is sent before any reply is read.
        sent: list[tuple[Call, Connection, Pool[Connection] | None]] = []
        try:
            for call in step:
                pool = None if call.fresh else self._pools[call.peer]
                conn = None
                try:
                    conn = (pool and pool.take()) or self._connect(call.peer)
                    conn.send(call.data)
                except Exception as exc:
                    if conn is not None:
                        conn.close()
                    call.error = exc
                    continue
                sent.append((call, conn, pool))
            while sent:
                call, conn, pool = sent[0]
                try:
                    call.replies = [conn.read(kind) for kind in call.kinds]
                except Exception as exc:
                    conn.close()
                    call.error = exc
                else:
                    if pool is None:
                        conn.close()
                    else:
                        pool.give(conn)
                sent.pop(0)
        finally:
            for _, conn, _ in sent:  # interrupted: no reply may be left unread on a pooled one
                conn.close()

    # -- background threads ----------------------------------------------------------------
    def _start_prober(self) -> None:
        """Run the engine's background rounds (probes, debts, watching) in a thread of their
        own: from the start when the engine watches, else once a step ejects a peer (called
        with the engine's lock held, which ``_maintain`` also takes before it stops)."""
        with self._prober_lock:
            if self._prober is None and not self._closed.is_set():
                self._prober = threading.Thread(
                    target=self._maintain, name="ringcache-prober", daemon=True
                )
                self._prober.start()
            else:
                self._wake.set()

    def _maintain(self) -> None:
        while not self._closed.is_set():
            wait = self._run(self.engine.maintain())
            if wait is None:
                with self._lock, self._prober_lock:
                    # Checked again under both locks: a peer ejected meanwhile keeps us going.
                    if not self.engine.needs_rounds:
                        self._prober = None
                        return
                wait = PROBE_TICK
            self._wake.wait(wait)
            self._wake.clear()

    def _discover(self) -> None:
        if self._run(self.engine.discover()):
            self._pools.keep(self.engine.peers.values())

    def _discover_loop(self) -> None:
        while not self._closed.wait(self.engine.options.discovery_interval):
            self._discover()

    # -- the public surface (each runs one engine operation) -------------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        return self._run(self.engine.get(key, default))

    def gets(
        self, key: str | bytes, default: Any = None, cas_default: Any = None
    ) -> tuple[Any, Any]:
        return self._run(self.engine.gets(key, default, cas_default))

    def get_entry(self, key: str | bytes) -> Entry | None:
        """The value with its remaining TTL and CAS token in one round trip (``mg``), or None."""
        return self._run(self.engine.get_entry(key))

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        return self._run(self.engine.get_many(keys, False))

    get_multi = get_many

    def gets_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        return self._run(self.engine.get_many(keys, True))

    def set(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self.engine.store(b"set", key, value, expire, noreply, flags)))

    def add(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self.engine.store(b"add", key, value, expire, noreply, flags)))

    def replace(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self.engine.store(b"replace", key, value, expire, noreply, flags)))

    def append(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self.engine.store(b"append", key, value, expire, noreply, flags)))

    def prepend(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self.engine.store(b"prepend", key, value, expire, noreply, flags)))

    def cas(
        self,
        key: str | bytes,
        value: Any,
        cas: int | bytes,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool | None:
        """True when stored, False when the CAS token is stale (or on failure), None if absent."""
        return self._run(self.engine.store(b"cas", key, value, expire, noreply, flags, cas))

    def delete(
        self,
        key: str | bytes,
        noreply: bool | None = None,
        cas: int | bytes | None = None,
        stale: bool = False,
    ) -> bool | None:
        """True when deleted. With ``cas``: only if unchanged since that token was read (False
        when it changed, None when absent). With ``stale=True`` (servers with meta): the value
        is only marked stale, still served by ``get_or_set`` until one caller refreshes it."""
        return self._run(self.engine.delete(key, noreply, cas, stale))

    def get_or_set(
        self,
        key: str | bytes,
        default: Any,
        expire: int = 0,
        *,
        lease: int = 30,
        recache: int | None = None,
        wait: float = 5.0,
        fallback: Any = NO_FALLBACK,
    ) -> Any:
        """The value of ``key``; when it is missing, ``default()`` (or ``default``) computed by
        exactly one caller across every process and stored with ``expire``, while the others
        wait for it (at most ``wait`` seconds) or get ``fallback``. See the README."""
        return self._run(
            self.engine.get_or_set(key, default, expire, lease, recache, wait, fallback)
        )

    def incr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        return self._run(self.engine.delta(b"incr", key, value, bool(noreply)))

    def decr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        return self._run(self.engine.delta(b"decr", key, value, bool(noreply)))

    def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> bool:
        return self._run(self.engine.touch(key, expire, noreply))

    def set_many(
        self, values: Mapping[Any, Any], expire: int = 0, noreply: bool | None = None
    ) -> list[Any]:
        """Store every value; returns the keys that were not stored (pymemcache's contract)."""
        return self._run(self.engine.set_many(values, expire, noreply))

    set_multi = set_many

    def delete_many(self, keys: Iterable[Any], noreply: bool | None = None) -> bool:
        return self._run(self.engine.delete_many(keys, noreply))

    delete_multi = delete_many

    def stats(self, *args: str) -> dict[str, dict[bytes, Any]]:
        """``stats`` of every usable node, by ``host:port``."""
        return self._run(self.engine.stats(args))

    def version(self) -> dict[str, bytes]:
        return self._run(self.engine.version())

    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> bool:
        """Flush every node; True when every node (usable or not) confirmed."""
        return self._run(self.engine.flush_all(delay, noreply))

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._pools.close()
        for thread in (self._prober, self._discoverer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _forget_parents_connections() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


os.register_at_fork(after_in_child=_forget_parents_connections)
