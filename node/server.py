"""The node on trio: listeners, the task that runs the hot loop, background upkeep.

This is the only module of the node that imports trio. It owns accepting and the connection
limit (``-c``), running ``reactor``'s hot loop (one turn, then a trio checkpoint, or a wait
on the reactor's epoll set when no connection has anything to do), the idle-timeout sweep,
the once-a-second clock and LRU juggle, the expiry crawler, the slab automover, shutdown and
cancellation.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from collections.abc import Callable

import trio

from .auth import AuthFileError
from .commands import Session
from .config import Config, ConfigError, listen_addresses
from .protocol import R_TOO_MANY_CONNECTIONS
from .reactor import Reactor
from .state import NodeState
from .store import Store

# While connections keep the hot loop busy it yields to trio's other tasks (accepting,
# timers, cancellation) at least this often.
YIELD_INTERVAL = 0.001
CRAWL_BUDGET = 2000  # items the crawler visits between two checkpoints
CRAWL_PER_SECOND = 50_000
AUTOMOVE_INTERVAL = 1.0
REHASH_BUDGET = 4096  # hash index slots moved between two checkpoints while it grows
# Accept errors that concern only the connection being accepted (as trio's serve_listeners).
IGNORED_ACCEPT_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN, errno.EWOULDBLOCK}
)
CAPACITY_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ListenError(OSError):
    """The node could not listen on the address it was given."""


class Listener(socket.socket):
    """A listening socket that knows whether its connections speak TLS (``-Z``, not
    ``notls:``)."""

    tls = False


def open_listeners(cfg: Config) -> list[socket.socket]:
    """Bind every ``-l`` address (``,``/``;``-separated, each ``[notls:]host[:port]``, as
    memcached allows; ``-p`` when an entry names no port)."""
    try:
        addresses = listen_addresses(cfg)
    except ConfigError as exc:
        raise ListenError(errno.EINVAL, str(exc)) from None
    listeners: list[socket.socket] = []
    for address in addresses:
        try:
            infos = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise ListenError(errno.EINVAL, f"cannot resolve -l {address.host}: {exc}") from None
        for family, kind, proto, _, addr in infos[:1]:
            sock = Listener(family, kind, proto)
            sock.tls = address.tls
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                for other in listeners:
                    other.close()
                where = f"TCP port {address.port}"
                if address.host:
                    where += f" of {address.host}"
                raise ListenError(
                    exc.errno, f"failed to listen on {where}: {exc.strerror}"
                ) from None
            sock.setblocking(False)
            listeners.append(sock)
    return listeners


class Node:
    """A running node: its store, shared session state and listeners."""

    def __init__(
        self, cfg: Config, store: Store | None = None, log: Callable[[str], None] | None = None
    ):
        self.cfg = cfg
        self.store = store or Store(cfg)
        self.state = NodeState(cfg, self.store, log)
        self.listeners: list[socket.socket] = []
        self.port = cfg.port
        self._cancel: trio.CancelScope | None = None
        self.reactor = Reactor(self.state)
        self._crawl_wanted = trio.Event()
        self.state.request_crawl = self._request_crawl

    def reload_authfile(self) -> None:
        """SIGHUP: read ``-Y``'s file again; if it cannot be read, the entries stay."""
        if self.state.authfile is None:
            return
        try:
            self.state.authfile.reload()
        except AuthFileError as exc:
            self.state.log(str(exc))

    def _request_crawl(self) -> None:
        self._crawl_wanted.set()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled (or ``shutdown`` with ``-A``)."""
        if not self.listeners:
            self.listeners = open_listeners(self.cfg)
        self.port = self.listeners[0].getsockname()[1]
        self.state.listen_addr = f"{self.listeners[0].getsockname()[0]}:{self.port}"
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._serve_connections)
                nursery.start_soon(self._tick)
                nursery.start_soon(self._crawler)
                nursery.start_soon(self._automover)
                for listener in self.listeners:
                    nursery.start_soon(self._accept, listener)
                task_status.started(self.port)
        finally:
            for listener in self.listeners:
                listener.close()
            self.reactor.close_all()

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    # -- upkeep ----------------------------------------------------------------------------
    async def _tick(self) -> None:
        store = self.store
        clock = store.clock
        idle = self.cfg.idle_timeout
        while True:
            clock.tick()
            if idle:
                self.reactor.close_idle(idle)
            # The LRU maintainer's rounds that no write triggers: items that wait in HOT or
            # WARM longer than the age rules allow go down to COLD (each class bounded).
            store.juggle_all()
            # A growing hash index moves a bounded share of its slots per step.
            while store.rehash_step(REHASH_BUDGET):
                await trio.lowlevel.checkpoint()
            # trio's clock is monotonic, ``now`` counts wall seconds: tick just after the
            # wall clock's second turns, or a tick can miss a second (and the idle rule, on
            # ``now``, wait a second longer).
            await trio.sleep(clock.until_next_second() + 0.001)

    async def _crawler(self) -> None:
        """Reclaim expired items: every second the LRUs that memcached's autocrawl schedule
        lets start a pass (``Store.crawl``), at most CRAWL_PER_SECOND items; every LRU after
        ``lru_crawler crawl`` — always in steps of CRAWL_BUDGET items between checkpoints."""
        store = self.store
        while True:
            with trio.move_on_after(1.0):
                await self._crawl_wanted.wait()
            requested = self._crawl_wanted.is_set()
            if requested:
                self._crawl_wanted = trio.Event()
            if requested:
                limit = math.inf
            else:
                limit = CRAWL_PER_SECOND if self.cfg.lru_crawler else 0
            visited = 0
            while visited < limit:
                n = store.crawl(CRAWL_BUDGET, scheduled=not requested)
                visited += n
                await trio.lowlevel.checkpoint()
                if n < CRAWL_BUDGET:
                    break

    async def _automover(self) -> None:
        last = [0] * (self.store.slabs.largest + 1)
        while True:
            await trio.sleep(AUTOMOVE_INTERVAL)
            self.store.automove_step(last)

    # -- connections -----------------------------------------------------------------------
    async def _serve_connections(self) -> None:
        """The hot loop: reactor turns, yielding to trio between them at least every
        YIELD_INTERVAL, and waiting on the epoll set when nothing is ready."""
        reactor = self.reactor
        turn = reactor.turn
        state = self.state
        clock = time.perf_counter
        checkpoint = trio.lowlevel.checkpoint
        wait_readable = trio.lowlevel.wait_readable
        last_yield = clock()
        while True:
            busy = turn()
            if state.shutdown_requested:
                self.stop()
            now = clock()
            if busy:
                if now - last_yield >= YIELD_INTERVAL:
                    last_yield = now
                    await checkpoint()
            else:
                last_yield = now
                await wait_readable(reactor)

    async def _accept(self, listener: socket.socket) -> None:
        stats = self.store.stats
        while True:
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in CAPACITY_ACCEPT_ERRNOS:
                    # Out of descriptors: stop accepting briefly, as memcached does.
                    stats.listen_disabled_num += 1
                    await trio.sleep(0.01)
                    continue
                if exc.errno in IGNORED_ACCEPT_ERRNOS:
                    await trio.lowlevel.checkpoint()
                    continue
                raise
            stats.total_connections += 1
            sock.setblocking(False)
            if len(self.state.connections) >= self.cfg.max_connections:
                stats.rejected_connections += 1
                try:
                    sock.send(R_TOO_MANY_CONNECTIONS)
                except OSError:
                    pass
                sock.close()
                continue
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            tls = self.state.tls
            if getattr(listener, "tls", False) and tls is not None:
                try:
                    sock = tls.wrap(sock)
                except OSError:
                    sock.close()
                    continue
                self.reactor.add(sock, Session(self.state, peer, sock.fileno()), handshake=True)
            else:
                self.reactor.add(sock, Session(self.state, peer, sock.fileno()))
