"""The async driver: the engine's steps for trio and asyncio alike, one class.

This module owns I/O only: connections with a ``protocol.Reader`` each, the timeouts of
``steps``' policy (each step of opening within ``connect_timeout``, each send and receive
within ``timeout``), running a step (a single call inline, several at once in a task group),
the translation of the event loop's I/O errors into the built-in ones the sync driver raises,
and the background tasks (the engine's rounds, discovery), which live in a task group that
``async with AsyncClient(...)`` opens and closes. Under trio a call takes a connection of its
own from the peer's pool (``_Conn`` on anyio's streams); one cancelled or failed midway is
closed instead of returned, so no unread reply is left on a pooled connection. Under asyncio
(uvloop too) calls share connections on asyncio's own transports (``_Shared``, chosen by
``pool.Lanes``; anyio's stream layer cost two thirds of the throughput): requests of a turn of
the loop leave in one send, replies are read in order by the calls that asked, a cancelled
call's reply is read and dropped. Task groups, cancellation and timeouts are anyio's, so the
same code serves both loops. Every rule of the client is ``engine.Engine``'s.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.streams.buffered
import sniffio
from anyio.streams.tls import TLSStream

from .engine import Engine, Face
from .errors import ProtocolError, RingcacheError, UnexpectedCloseError
from .leases import NO_FALLBACK
from .options import Options
from .peer import Peer
from .pool import Lanes, Pool, Pools
from .protocol import NEED_DATA, STATUS, Reader
from .ring import Server
from .security import Security
from .steps import Call, Compute, Datagram, Entry, Op, Pause

T = TypeVar("T")


def _io_error(exc: BaseException, call: Call) -> BaseException:
    """The event loop's words for an I/O failure, in the built-in exceptions both drivers
    raise."""
    if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError):
        error: BaseException = ConnectionResetError(f"{call.what} on {call.peer.server}: {exc!r}")
    elif isinstance(exc, anyio.EndOfStream):
        error = UnexpectedCloseError("the server closed the connection")
    elif isinstance(exc, OSError) and exc.errno is None and exc.__cause__ is not None:
        # "all attempts to connect failed": the first attempt's own error
        # (ConnectionRefusedError, …), as a blocking connect raises it.
        cause = exc.__cause__
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        return cause if isinstance(cause, OSError) else exc
    else:
        return exc
    error.__cause__ = exc
    return error


class _Conn:
    """One connection to a node on anyio streams (under trio; asyncio has ``_Shared``),
    TLS when the client has ``tls``, with its reply reader; every send and receive within
    ``timeout`` seconds."""

    __slots__ = ("idle_since", "plain", "reader", "sock", "stream", "timeout")

    def __init__(
        self, stream: anyio.abc.ByteStream, plain: anyio.abc.SocketStream, timeout: float
    ) -> None:
        self.stream = stream
        self.plain = plain  # the TCP or unix stream under TLS, if any
        self.sock: socket.socket = plain.extra(anyio.abc.SocketAttribute.raw_socket)
        self.reader = Reader()
        self.idle_since = 0.0
        self.timeout = timeout

    @classmethod
    async def open(cls, server: Server, options: Options) -> _Conn:
        """Connect, then (with ``security``) the TLS handshake and the login, each step within
        ``connect_timeout``."""
        address = server.address
        security: Security | None = options.security
        limit = options.connect_timeout
        with anyio.fail_after(limit):
            if isinstance(address, str):
                plain: anyio.abc.SocketStream = await anyio.connect_unix(address)
            else:
                plain = await anyio.connect_tcp(*address)
        stream: anyio.abc.ByteStream = plain
        try:
            if security is not None and security.tls is not None and not isinstance(address, str):
                with anyio.fail_after(limit):
                    stream = await TLSStream.wrap(
                        plain,
                        hostname=security.server_hostname(server),
                        ssl_context=security.tls,
                        standard_compatible=False,
                    )
            conn = cls(stream, plain, limit)
            if security is not None and security.login is not None:
                (reply,) = await conn.exchange(security.login, (STATUS,))
                security.check_login(reply, server)
            conn.timeout = options.timeout
        except BaseException:
            _close(plain)
            raise
        return conn

    async def exchange(self, data: bytes, kinds: tuple[int, ...]) -> list[Any]:
        """Send ``data`` and read a reply of each kind: the send and every receive within
        ``timeout`` (one cancel scope whose deadline moves forward before each receive, not a
        scope per send and receive)."""
        timeout = self.timeout
        stream, reader = self.stream, self.reader
        replies = []
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            await stream.send(data)
            for kind in kinds:
                reply = reader.next(kind)
                while reply is NEED_DATA:
                    scope.deadline = anyio.current_time() + timeout
                    reader.feed(await stream.receive(65536))
                    reply = reader.next(kind)
                replies.append(reply)
            return replies
        raise TimeoutError("timed out waiting for the server")  # the deadline passed

    def close(self) -> None:
        _close(self.plain)


class _Shared(asyncio.Protocol):
    """One connection to a node on asyncio's own transports (TLS included) that carries many calls
    at once (``pool.Lanes`` chooses it): a request goes out at once when nothing is in
    flight, else it joins the ones written at the end of this turn of the loop (one send for
    all of them), and the replies, which the node sends in the order of the requests, are
    read off by the calls in that order. A call cancelled while it waits leaves its place:
    its reply is read and dropped, so the connection stays in step. Same policy as
    ``_Conn``: each step of opening within ``connect_timeout``; waiting for replies, no more
    than ``timeout`` without a byte received (one timer per connection, not one per wait),
    else every call on it fails with ``TimeoutError``. A lost connection, an EOF or bytes
    that are not the replies asked for fail every call on it, and the lanes open another.
    Retired (its peer left the membership), it closes once every call on it has its replies."""

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self.reader = Reader()
        self.loop = asyncio.get_running_loop()
        self.clock = clock
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket  # set by connection_made
        self.timeout = timeout
        self.closed: BaseException | None = None
        self.idle_since = 0.0
        # (kinds, replies so far, the waiter) of each call whose replies are still to come
        self.pending: deque[tuple[tuple[int, ...], list[Any], asyncio.Future[list[Any]]]] = deque()
        self.out: list[bytes] = []  # requests of this turn of the loop, written by _flush
        self.heard = 0.0  # when the oldest waiting call was sent, or a byte last came
        self.watch: asyncio.TimerHandle | None = None
        self.retiring = False  # close once the calls on it have their replies

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    @classmethod
    async def open(cls, server: Server, options: Options) -> _Shared:
        loop = asyncio.get_running_loop()
        address = server.address
        security = options.security
        limit = options.connect_timeout
        tls = None if security is None or isinstance(address, str) else security.tls

        def made() -> _Shared:
            return cls(limit, options.clock)

        async with asyncio.timeout(limit):  # the connect and the TLS handshake
            if isinstance(address, str):
                _, conn = await loop.create_unix_connection(made, address)
            else:
                host, port = address
                hostname = None
                if security is not None and tls is not None:
                    hostname = security.server_hostname(server)
                _, conn = await loop.create_connection(
                    made, host, port, ssl=tls, server_hostname=hostname
                )
        try:
            if security is not None and security.login is not None:
                (reply,) = await conn.exchange(security.login, (STATUS,))
                security.check_login(reply, server)
        except BaseException:
            conn.close()
            raise
        conn.timeout = options.timeout
        return conn

    def exchange(self, data: bytes, kinds: tuple[int, ...]) -> asyncio.Future[list[Any]]:
        """Send ``data``: at once when nothing is in flight, else with the other requests of
        this turn of the loop; the future of a reply of each kind."""
        if self.closed is not None:
            raise self.closed
        loop = self.loop
        out = self.out
        pending = self.pending
        if out:
            out.append(data)
        elif pending:  # the first of this turn's requests behind replies still to come
            out.append(data)
            loop.call_soon(self._flush)
        else:  # nothing in flight: the node can start on it at once
            self.transport.write(data)  # type: ignore[union-attr]  # open
        waiter: asyncio.Future[list[Any]] = loop.create_future()
        if not kinds:  # noreply: nothing comes back
            waiter.set_result([])
            return waiter
        if not pending:
            self.heard = loop.time()
            if self.watch is None:
                self.watch = loop.call_at(self.heard + self.timeout, self._check)
        pending.append((kinds, [], waiter))
        return waiter

    def _flush(self) -> None:
        out = self.out
        if self.closed is None and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _check(self) -> None:
        """The connection's timer: every call on it fails once ``timeout`` passed without a
        byte while calls wait."""
        self.watch = None
        if not self.pending or self.closed is not None:
            return
        due = self.heard + self.timeout
        if self.loop.time() >= due:
            self._fail(TimeoutError("timed out waiting for the server"))
        else:
            self.watch = self.loop.call_at(due, self._check)

    def _fail(self, error: BaseException) -> None:
        if self.closed is None:
            self.closed = error
        pending, self.pending = self.pending, deque()
        for _, _, waiter in pending:
            if not waiter.done():
                waiter.set_exception(error)
        self.out.clear()
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._fail(ConnectionResetError("the client closed the connection"))

    def retire(self) -> None:
        """Close once every call on it has its replies (now, if none waits)."""
        self.retiring = True
        if not self.pending:
            self._flush()  # a noreply request of this turn still goes out
            self.closed = ConnectionResetError("the client closed the connection")
            if self.transport is not None:
                self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        self.sock = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        try:
            while pending:
                kinds, replies, waiter = pending[0]
                while len(replies) < len(kinds):
                    reply = reader.next(kinds[len(replies)])
                    if reply is NEED_DATA:
                        self.heard = self.loop.time()
                        return
                    replies.append(reply)
                pending.popleft()
                if not waiter.done():
                    waiter.set_result(replies)
            if reader.buffered:
                raise ProtocolError("the server sent bytes no request asked for")
        except Exception as exc:  # out of step: no reply on it can be trusted
            self._fail(exc)
            return
        self.idle_since = self.clock()
        if self.retiring:
            self.retire()

    def eof_received(self) -> bool:
        self._fail(UnexpectedCloseError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or UnexpectedCloseError("the server closed the connection"))


def _opened(lanes: Lanes[_Shared], task: asyncio.Task[_Shared]) -> None:
    """A shared connection's opening ended: the connection joins its lanes."""
    if lanes.opening is task:
        lanes.opening = None
    if not task.cancelled() and task.exception() is None:
        lanes.add(task.result())


def _close(plain: anyio.abc.SocketStream) -> None:
    """Close a connection at once, from synchronous code (the pools close stale and surplus
    connections so): under trio, closing the socket is closing the stream."""
    plain.extra(anyio.abc.SocketAttribute.raw_socket).close()


class AsyncClient(Face):
    """``await client.get("k")``: the cluster client for trio and asyncio programs.

    Use it as ``async with AsyncClient(location) as client:``: the block is the lifetime of its
    background tasks (the rounds that re-admit ejected nodes and watch the debts, discovery);
    they end with it, and a crash of one of them cancels the block and is raised from it.
    """

    def __init__(self, location: str | Iterable[Any] | Mapping[str, Any], **options: Any) -> None:
        opts = Options.from_kwargs(**options)
        self.engine = Engine(location, opts)
        # trio: a pool of connections that carry one call at a time; asyncio: shared ones
        # (__aenter__ chooses).
        self._pools: Pools[Pool[_Conn]] = Pools(lambda: Pool(opts.pool_size, opts.clock))
        self._lanes: Pools[Lanes[_Shared]] = Pools(lambda: Lanes(opts.pool_size, opts.clock))
        self._perform: Callable[[Call], Coroutine[Any, Any, None]] = self._perform_pooled
        self._group: anyio.abc.TaskGroup | None = None
        self._probing = False
        self._wake: anyio.Event | None = None

    async def __aenter__(self) -> AsyncClient:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            raise RuntimeError(
                "AsyncClient needs a running event loop (trio or asyncio): use it inside "
                "`async with AsyncClient(...) as client:` in a coroutine"
            ) from None
        if self._group is not None:
            raise RuntimeError("this AsyncClient is already open")
        self._perform = self._perform_shared if library == "asyncio" else self._perform_pooled
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        self._wake = anyio.Event()
        try:
            if self.engine.options.discovery:
                await self._discover()
                group.start_soon(self._discover_loop, name="ringcache-discovery")
            if self.engine.needs_rounds:
                self._start_prober()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        group = self._group
        if group is None:
            return False
        group.cancel_scope.cancel()
        cancelled_class = anyio.get_cancelled_exc_class()
        try:
            return bool(await group.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as raised:
            cancelled, rest = raised.split(cancelled_class)
            crashes = [] if rest is None else [e for e in rest.exceptions if e is not exc]
            if crashes:
                raise RingcacheError(
                    f"a background task of AsyncClient failed: {crashes[0]!r}"
                ) from crashes[0]
            if cancelled is None and exc is not None:
                return False  # the block's own exception, raised as itself
            raise
        finally:
            self._group = None
            self._probing = False
            self._pools.close()
            self._lanes.close()

    async def aclose(self) -> None:
        """End the background tasks and close the pooled connections."""
        if self._group is not None:
            self._group.cancel_scope.cancel()
        self._pools.close()
        self._lanes.close()

    # -- running the engine's operations ---------------------------------------------------
    async def _run(self, op: Op[T]) -> T:
        if self._group is None:
            op.close()
            raise RuntimeError("use the client inside `async with AsyncClient(...) as client:`")
        try:
            step = next(op)
            while True:
                if type(step) is list:
                    if len(step) == 1:
                        await self._perform(step[0])
                    else:
                        async with anyio.create_task_group() as group:
                            for call in step:
                                group.start_soon(self._perform, call)
                    if self.engine.settle(step):
                        self._start_prober()
                    step = op.send(step)
                elif type(step) is Pause:
                    await anyio.sleep(step.seconds)
                    step = op.send(None)
                elif type(step) is Datagram:
                    step.reply = await self._exchange(step)
                    step = op.send(step)
                else:  # a plain or an async callable
                    assert type(step) is Compute
                    try:
                        value = step.fn()
                        if inspect.isawaitable(value):
                            value = await value
                    except BaseException as exc:
                        step = op.throw(exc)
                    else:
                        step = op.send(value)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            op.close()  # a cancelled operation still releases what it holds

    async def _exchange(self, step: Datagram) -> bytes | None:
        """One DNS message out and the one that answers it, within ``timeout``: a UDP
        datagram, or over TCP (``step.tcp``) framed by its two-byte length."""
        host, port = step.address
        try:
            with anyio.fail_after(self.engine.options.timeout):
                if step.tcp:
                    async with await anyio.connect_tcp(host, port) as tcp:
                        await tcp.send(struct.pack("!H", len(step.data)) + step.data)
                        buffered = anyio.streams.buffered.BufferedByteReceiveStream(tcp)
                        (size,) = struct.unpack("!H", await buffered.receive_exactly(2))
                        return await buffered.receive_exactly(size)
                async with await anyio.create_connected_udp_socket(host, port) as udp:
                    await udp.send(step.data)
                    return await udp.receive()
        except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.IncompleteRead):
            return None

    async def _perform_pooled(self, call: Call) -> None:
        """trio: ``call`` on a connection of its own from the peer's pool, returned to it once
        every reply was read."""
        conn: _Conn | None = None
        peer: Peer = call.peer
        pool = None if call.fresh else self._pools[peer]
        try:
            if pool is not None:
                conn = pool.take()
            if conn is None:
                conn = await _Conn.open(peer.server, self.engine.options)
            call.replies = await conn.exchange(call.data, call.kinds)
        except Exception as exc:  # the engine decides what it means (``settle``)
            if conn is not None:
                conn.close()
            call.error = _io_error(exc, call)
            return
        except BaseException:
            # Cancelled (or a bug) midway: the reply may still be on its way, so never reuse.
            if conn is not None:
                conn.close()
            raise
        if pool is None:
            conn.close()
        else:
            pool.give(conn)

    async def _perform_shared(self, call: Call) -> None:
        """asyncio: ``call`` on one of the peer's shared connections (``fresh``: on one of its
        own, closed afterwards). A failure fails the connection itself (``_Shared``); a
        cancelled call leaves its reply to be read and dropped."""
        peer: Peer = call.peer
        try:
            if call.fresh:
                conn = await _Shared.open(peer.server, self.engine.options)
                try:
                    call.replies = await conn.exchange(call.data, call.kinds)
                finally:
                    conn.close()
                return
            lanes = self._lanes[peer]
            conn = lanes.pick() or await self._open_lane(lanes, peer)
            call.replies = await conn.exchange(call.data, call.kinds)
        except Exception as exc:  # the engine decides what it means (``settle``)
            call.error = _io_error(exc, call)

    async def _open_lane(self, lanes: Lanes[_Shared], peer: Peer) -> _Shared:
        """A shared connection with room, once another one was opened (or the one already on
        its way): opened in a task of its own, so a caller cancelled while it waits leaves it
        to the others. At most ``size`` openings for one call; then the last one opened. When
        the lanes were retired or closed meanwhile, the peer's lanes of now are used."""
        conn: _Shared | None = None
        for _ in range(lanes.size):
            opening = lanes.opening
            if opening is None:
                opening = asyncio.get_running_loop().create_task(
                    _Shared.open(peer.server, self.engine.options)
                )
                lanes.opening = opening
                opening.add_done_callback(partial(_opened, lanes))
            conn = await asyncio.shield(opening)
            if lanes.closed:
                if self._group is None:
                    raise ConnectionResetError("the client closed the connection")
                lanes = self._lanes[peer]
            picked = lanes.pick()
            if picked is not None:
                return picked
        assert conn is not None
        return conn

    # -- background tasks ------------------------------------------------------------------
    def _start_prober(self) -> None:
        """Run the engine's background rounds (probes, debts, watching) in a task of the
        group: from the start when the engine watches, else once a step ejects a peer."""
        if self._group is None:
            return
        if self._probing:
            if self._wake is not None:
                self._wake.set()
            return
        self._probing = True
        self._group.start_soon(self._maintain, name="ringcache-prober")

    async def _maintain(self) -> None:
        try:
            while (wait := await self._run(self.engine.maintain())) is not None:
                self._wake = wake = anyio.Event()
                with anyio.move_on_after(wait):
                    await wake.wait()
        finally:
            self._probing = False

    async def _discover(self) -> None:
        if await self._run(self.engine.discover()):
            self._pools.keep(self.engine.peers.values())
            self._lanes.keep(self.engine.peers.values())  # retired: calls in flight end

    async def _discover_loop(self) -> None:
        while True:
            await anyio.sleep(self.engine.options.discovery_interval)
            await self._discover()

    # -- the public surface (each runs one engine operation) -------------------------------
    async def get(self, key: str | bytes, default: Any = None) -> Any:
        return await self._run(self.engine.get(key, default))

    async def gets(
        self, key: str | bytes, default: Any = None, cas_default: Any = None
    ) -> tuple[Any, Any]:
        return await self._run(self.engine.gets(key, default, cas_default))

    async def get_entry(self, key: str | bytes) -> Entry | None:
        """The value with its remaining TTL and CAS token in one round trip (``mg``), or None."""
        return await self._run(self.engine.get_entry(key))

    async def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        return await self._run(self.engine.get_many(keys, False))

    get_multi = get_many

    async def gets_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        return await self._run(self.engine.get_many(keys, True))

    async def set(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(await self._run(self.engine.store(b"set", key, value, expire, noreply, flags)))

    async def add(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(await self._run(self.engine.store(b"add", key, value, expire, noreply, flags)))

    async def replace(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(
            await self._run(self.engine.store(b"replace", key, value, expire, noreply, flags))
        )

    async def append(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(
            await self._run(self.engine.store(b"append", key, value, expire, noreply, flags))
        )

    async def prepend(
        self,
        key: str | bytes,
        value: Any,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool:
        return bool(
            await self._run(self.engine.store(b"prepend", key, value, expire, noreply, flags))
        )

    async def cas(
        self,
        key: str | bytes,
        value: Any,
        cas: int | bytes,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool | None:
        """True when stored, False when the CAS token is stale (or on failure), None if absent."""
        return await self._run(self.engine.store(b"cas", key, value, expire, noreply, flags, cas))

    async def delete(
        self,
        key: str | bytes,
        noreply: bool | None = None,
        cas: int | bytes | None = None,
        stale: bool = False,
    ) -> bool | None:
        """True when deleted. With ``cas``: only if unchanged since that token was read (False
        when it changed, None when absent). With ``stale=True`` (servers with meta): the value
        is only marked stale, still served by ``get_or_set`` until one caller refreshes it."""
        return await self._run(self.engine.delete(key, noreply, cas, stale))

    async def get_or_set(
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
        return await self._run(
            self.engine.get_or_set(key, default, expire, lease, recache, wait, fallback)
        )

    async def incr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        return await self._run(self.engine.delta(b"incr", key, value, bool(noreply)))

    async def decr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        return await self._run(self.engine.delta(b"decr", key, value, bool(noreply)))

    async def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> bool:
        return await self._run(self.engine.touch(key, expire, noreply))

    async def set_many(
        self, values: Mapping[Any, Any], expire: int = 0, noreply: bool | None = None
    ) -> list[Any]:
        """Store every value; returns the keys that were not stored (pymemcache's contract)."""
        return await self._run(self.engine.set_many(values, expire, noreply))

    set_multi = set_many

    async def delete_many(self, keys: Iterable[Any], noreply: bool | None = None) -> bool:
        return await self._run(self.engine.delete_many(keys, noreply))

    delete_multi = delete_many

    async def stats(self, *args: str) -> dict[str, dict[bytes, Any]]:
        """``stats`` of every usable node, by ``host:port``."""
        return await self._run(self.engine.stats(args))

    async def version(self) -> dict[str, bytes]:
        return await self._run(self.engine.version())

    async def flush_all(self, delay: int = 0, noreply: bool | None = None) -> bool:
        """Flush every node; True when every node (usable or not) confirmed."""
        return await self._run(self.engine.flush_all(delay, noreply))
