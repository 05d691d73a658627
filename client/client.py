"""The synchronous driver: the engine's steps on blocking sockets, with thread-safe pools.

This module owns I/O only: ``Connection`` (a blocking socket with a ``protocol.Reader``),
the per-node pools (an idle connection that the server closed meanwhile is noticed before use
and replaced, instead of counting as a node failure), running a step (a single call inline;
several calls are all sent before any reply is read, so a multi-key call costs about one
round trip, not one per node), and the prober and discovery threads. Every rule of the client
is ``engine.Engine``'s; the public methods only run its operations.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from . import protocol
from .engine import NO_FALLBACK, Call, Engine, Entry, Op, Pause, validate_key
from .errors import ConnectionBroken, NoServerAvailable, UnexpectedCloseError
from .protocol import LINE, NEED_DATA
from .ring import Server
from .security import Security

__all__ = ["Client", "Connection", "NoServerAvailable", "validate_key"]

# What counts as the node failing (as opposed to the request being wrong): every way a
# connection can break, be refused or time out (socket timeouts are OSErrors), and a byte
# stream that is no longer memcached's protocol.
CONNECTION_ERRORS = (OSError, ConnectionBroken)


class Connection:
    """A blocking connection to one server, replies read with ``protocol.Reader``.

    The cluster tooling uses it too: ``Connection(server).request(protocol.VERSION,
    (protocol.STATUS,))``. With ``security``, a TCP connection is wrapped in TLS and logs in
    before it is used.
    """

    __slots__ = ("_poll", "idle_since", "reader", "sock")

    def __init__(
        self,
        server: Server,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        security: Security | None = None,
    ) -> None:
        if server.unix is not None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(connect_timeout)
            try:
                sock.connect(server.unix)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((server.host, server.port), timeout=connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if security is not None and security.tls is not None:
                try:  # the handshake, within connect_timeout
                    sock = security.tls.wrap_socket(
                        sock, server_hostname=security.server_hostname(server)
                    )
                except BaseException:
                    sock.close()
                    raise
        # Blocking, with the kernel's timeouts: Python's own socket timeout would add a poll
        # before every send and receive.
        sock.settimeout(None)
        if timeout:
            tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.sock = sock
        self.idle_since = 0.0
        self.reader = protocol.Reader()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        login = security.login if security is not None else None
        if login is not None:
            try:
                self.send(login)
                security.check_login(self.read(protocol.STATUS), server)  # type: ignore[union-attr]
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

    def request(self, data: bytes, kinds: tuple[int, ...]) -> list:
        self.send(data)
        return [self.read(kind) for kind in kinds]

    def lines(self, data: bytes) -> Iterator[bytes]:
        """Send ``data``, then yield reply lines up to (not including) ``END``."""
        self.send(data)
        while (line := self.read(LINE)) != b"END":
            yield line

    def stale(self) -> bool:
        """True when an idle connection has something to read: the server closed it (a
        restart), or bytes nobody asked for. Either way it must not carry a request."""
        if self.reader.buffered:
            return True
        if not self._poll.poll(0):
            return False
        if not isinstance(self.sock, ssl.SSLSocket):
            return True
        # TLS: what arrived may be a message of TLS itself (a session ticket), not data.
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            self.sock.setblocking(True)
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(Engine):
    """A memcached client for a cluster of servers placed with ketama.

    ``Client(["10.0.0.1:11211", "10.0.0.2:11211"])``; every LOCATION form Django accepts works.
    Safe to share between threads.
    """

    def __init__(self, location: str | Iterable | Mapping, **options: Any) -> None:
        super().__init__(location, **options)
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None
        self._prober_lock = threading.Lock()
        self._discoverer: threading.Thread | None = None
        if self.discovery:
            self._run(self._discover())
            self._discoverer = threading.Thread(
                target=self._discover_loop, name="ringcache-discovery", daemon=True
            )
            self._discoverer.start()

    # -- running the engine's operations ---------------------------------------------------
    def _run(self, op: Op[Any]) -> Any:
        try:
            step = next(op)
            while True:
                if step.__class__ is list:
                    if len(step) == 1 and not step[0].fresh:
                        self._execute_one(step[0])
                    else:
                        self._execute(step)
                    self._settle(step)
                    step = op.send(step)
                elif step.__class__ is Pause:
                    time.sleep(step.seconds)
                    step = op.send(None)
                else:  # Compute
                    try:
                        value = step.fn()
                    except BaseException as exc:
                        step = op.throw(exc)
                    else:
                        step = op.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()  # an interrupted operation still releases what it holds

    def _execute_one(self, call: Call) -> None:
        """The hot path: one request on a pooled connection."""
        node = call.node
        conn = None
        try:
            conn = node.take() or Connection(
                node.server, self.connect_timeout, self.timeout, self.security
            )
            conn.send(call.data)
            kinds = call.kinds
            if len(kinds) == 1:
                call.replies = [conn.read(kinds[0])]
            else:
                read = conn.read
                call.replies = [read(kind) for kind in kinds]
        except CONNECTION_ERRORS as exc:
            if conn is not None:
                conn.close()
            call.error = exc
            return
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if not node.give(conn):
            conn.close()

    def _checkout(self, call: Call) -> Connection:
        node = call.node
        conn = None if call.fresh else node.take()
        return conn or Connection(node.server, self.connect_timeout, self.timeout, self.security)

    def _checkin(self, call: Call, conn: Connection) -> None:
        if call.fresh or not call.node.give(conn):
            conn.close()

    def _execute(self, step: list[Call]) -> None:
        # Every request is sent before any reply is read.
        sent: list[tuple[Call, Connection]] = []
        try:
            for call in step:
                conn = None
                try:
                    conn = self._checkout(call)
                    conn.send(call.data)
                except CONNECTION_ERRORS as exc:
                    if conn is not None:
                        conn.close()
                    call.error = exc
                    continue
                sent.append((call, conn))
            while sent:
                call, conn = sent[0]
                try:
                    call.replies = [conn.read(kind) for kind in call.kinds]
                except CONNECTION_ERRORS as exc:
                    conn.close()
                    call.error = exc
                else:
                    self._checkin(call, conn)
                sent.pop(0)
        finally:
            for _, conn in sent:  # interrupted: no reply may be left unread on a pooled one
                conn.close()

    # -- background threads ----------------------------------------------------------------
    def _node_ejected(self, node: Any) -> None:
        with self._prober_lock:
            if self._prober is None and not self._closed.is_set():
                self._prober = threading.Thread(
                    target=self._probe_loop, name="ringcache-prober", daemon=True
                )
                self._prober.start()

    def _probe_loop(self) -> None:
        while not self._closed.is_set():
            if not self._run(self._probe_round()):
                with self._prober_lock:
                    # Checked again under the lock: a node ejected meanwhile keeps us going.
                    if all(n.health.usable for n in self.nodes.values()):
                        self._prober = None
                        return
            self._closed.wait(0.05)

    def _discover_loop(self) -> None:
        while not self._closed.wait(self.discovery_interval):
            self._run(self._discover())

    # -- the public surface (each runs one engine operation) -------------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        return self._run(self._get(key, default))

    def gets(
        self, key: str | bytes, default: Any = None, cas_default: Any = None
    ) -> tuple[Any, Any]:
        return self._run(self._gets(key, default, cas_default))

    def get_entry(self, key: str | bytes) -> Entry | None:
        """The value with its remaining TTL and CAS token in one round trip (``mg``), or None."""
        return self._run(self._get_entry(key))

    def get_many(self, keys: Iterable) -> dict:
        return self._run(self._get_many(keys, False))

    get_multi = get_many

    def gets_many(self, keys: Iterable) -> dict:
        return self._run(self._get_many(keys, True))

    def set(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self._store(b"set", key, value, expire, noreply, flags)))

    def add(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self._store(b"add", key, value, expire, noreply, flags)))

    def replace(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self._store(b"replace", key, value, expire, noreply, flags)))

    def append(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self._store(b"append", key, value, expire, noreply, flags)))

    def prepend(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(self._run(self._store(b"prepend", key, value, expire, noreply, flags)))

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
        return self._run(self._store(b"cas", key, value, expire, noreply, flags, cas))

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
        return self._run(self._delete(key, noreply, cas, stale))

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
        return self._run(self._get_or_set(key, default, expire, lease, recache, wait, fallback))

    def incr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        return self._run(self._delta(b"incr", key, value, bool(noreply)))

    def decr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        return self._run(self._delta(b"decr", key, value, bool(noreply)))

    def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> bool:
        return self._run(self._touch(key, expire, noreply))

    def set_many(self, values: Mapping, expire: int = 0, noreply: bool | None = None) -> list:
        """Store every value; returns the keys that were not stored (pymemcache's contract)."""
        return self._run(self._set_many(values, expire, noreply))

    set_multi = set_many

    def delete_many(self, keys: Iterable, noreply: bool | None = None) -> bool:
        return self._run(self._delete_many(keys, noreply))

    delete_multi = delete_many

    def stats(self, *args: str) -> dict[str, dict[bytes, Any]]:
        """``stats`` of every usable node, by ``host:port``."""
        return self._run(self._stats(args))

    def version(self) -> dict[str, bytes]:
        return self._run(self._version())

    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> bool:
        """Flush every node; True when every node (usable or not) confirmed."""
        return self._run(self._flush_all(delay, noreply))

    def close(self) -> None:
        self._closed.set()
        for node in self.nodes.values():
            for conn in node.drain():
                conn.close()
        for thread in (self._prober, self._discoverer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
