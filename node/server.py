"""The node's network side on trio: listeners, one task per connection, background upkeep.

This is the only module of the node that does I/O or imports trio. It owns the connection
limit (``-c``), the idle timeout, per-connection fairness (a batch of at most
``reqs_per_event`` requests, then a yield), one send per batch of replies, back-pressure (a
client that does not read its replies stops being read, so the node's memory for it stays at
one batch), the once-a-second clock, the expiry crawler and the slab automover. Sockets are
driven with ``wait_readable``/``wait_writable`` and non-blocking ``recv_into``/``send`` on the
raw socket, which measured clearly faster than trio's ``SocketStream`` (see DESIGN.md).
"""

from __future__ import annotations

import errno
import math
import select
import socket
import traceback
from collections.abc import Callable

import trio

from .commands import NodeState, Session
from .config import Config
from .protocol import R_TOO_MANY_CONNECTIONS
from .store import Store

RECV_SIZE = 64 * 1024
CRAWL_BUDGET = 2000  # items the crawler visits between two checkpoints
CRAWL_PER_SECOND = 50_000
AUTOMOVE_INTERVAL = 1.0
REHASH_BUDGET = 4096  # hash index slots moved between two checkpoints while it grows
# Accept errors that concern only the connection being accepted (as trio's serve_listeners).
IGNORED_ACCEPT_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN, errno.EWOULDBLOCK}
)
CAPACITY_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Poller:
    """Read readiness for all connections from one epoll set, registered once per socket.

    trio's ``wait_readable`` adds and removes the descriptor from its epoll set on every
    wait (two ``epoll_ctl`` calls per request for a client with one request in flight). Here
    each connection is registered once, edge-triggered; one task waits on the epoll set and
    wakes the connection tasks whose sockets became readable. An edge that arrives while its
    task is busy is remembered, so the task's next wait returns at once.
    """

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.waiters: dict[int, trio.lowlevel.Task] = {}
        self.pending: set[int] = set()

    def register(self, fd: int) -> None:
        self.epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)

    def unregister(self, fd: int) -> None:
        self.pending.discard(fd)
        self.waiters.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass

    async def wait_readable(self, fd: int) -> None:
        if fd in self.pending:
            self.pending.discard(fd)
            await trio.lowlevel.checkpoint()
            return
        self.waiters[fd] = trio.lowlevel.current_task()

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            self.waiters.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        epfd = self.epoll.fileno()
        poll = self.epoll.poll
        waiters = self.waiters
        while True:
            await trio.lowlevel.wait_readable(epfd)
            for fd, _ in poll(0, 256):
                task = waiters.pop(fd, None)
                if task is None:
                    self.pending.add(fd)
                else:
                    trio.lowlevel.reschedule(task)

    def close(self) -> None:
        self.epoll.close()


class ListenError(OSError):
    """The node could not listen on the address it was given."""


def open_listeners(cfg: Config) -> list[socket.socket]:
    """Bind every ``-l`` address (comma-separated, as memcached allows) on ``-p``."""
    listeners = []
    for host in filter(None, (h.strip() for h in cfg.listen.split(","))):
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(
                host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise ListenError(errno.EINVAL, f"cannot resolve -l {host}: {exc}") from None
        for family, kind, proto, _, addr in infos[:1]:
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                for other in listeners:
                    other.close()
                raise ListenError(
                    exc.errno, f"failed to listen on TCP port {cfg.port}: {exc.strerror}"
                ) from None
            sock.setblocking(False)
            listeners.append(sock)
    if not listeners:
        raise ListenError(errno.EINVAL, "no address to listen on")
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
        self.poller = Poller()
        self._crawl_wanted = trio.Event()
        self.state.request_crawl = self._request_crawl

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
                nursery.start_soon(self.poller.run)
                nursery.start_soon(self._tick)
                nursery.start_soon(self._crawler)
                nursery.start_soon(self._automover)
                for listener in self.listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(self.port)
        finally:
            for listener in self.listeners:
                listener.close()
            self.poller.close()

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    # -- upkeep ----------------------------------------------------------------------------
    async def _tick(self) -> None:
        store = self.store
        clock = store.clock
        while True:
            clock.tick()
            # A growing hash index moves a bounded share of its slots per step.
            while store.rehash_step(REHASH_BUDGET):
                await trio.lowlevel.checkpoint()
            await trio.sleep(1.0 - (trio.current_time() % 1.0) + 0.001)

    async def _crawler(self) -> None:
        """Reclaim expired items: a share every second, a whole pass after ``lru_crawler
        crawl`` — always in steps of CRAWL_BUDGET items between checkpoints."""
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
                n = store.crawl(CRAWL_BUDGET)
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
    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        stats = self.store.stats
        while True:
            try:
                conn, addr = listener.accept()
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
            conn.setblocking(False)
            if len(self.state.connections) >= self.cfg.max_connections:
                stats.rejected_connections += 1
                try:
                    conn.send(R_TOO_MANY_CONNECTIONS)
                except OSError:
                    pass
                conn.close()
                continue
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            session = Session(self.state, peer)
            self.state.connections[session.id] = session
            nursery.start_soon(self._serve_conn, conn, session)

    async def _serve_conn(self, sock: socket.socket, session: Session) -> None:
        state = self.state
        stats = self.store.stats
        verbose = state.verbosity > 1
        if verbose:
            state.log(f"<{session.id} new auto-negotiating client connection")
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        idle = self.cfg.idle_timeout or math.inf
        batch = self.cfg.reqs_per_event
        recv_into = sock.recv_into
        wait_readable = self.poller.wait_readable
        fd = sock.fileno()
        self.poller.register(fd)
        checkpoint = trio.lowlevel.checkpoint
        # After a reply the client is most likely waiting for it, so the next read waits for
        # readiness first instead of spending a recv() that would fail with EAGAIN.
        ready = True
        try:
            while True:
                if not ready:
                    if idle == math.inf:
                        await wait_readable(fd)
                    else:
                        with trio.move_on_after(idle) as scope:
                            await wait_readable(fd)
                        if scope.cancelled_caught:
                            break
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    ready = False
                    continue
                except OSError:
                    break
                if n == 0:
                    break
                session.feed(view[:n])
                while True:
                    out, more = session.step(batch)
                    if out:
                        await _send_all(sock, out)
                    if session.closing:
                        return
                    if not more:
                        break
                    stats.conn_yields += 1
                    await checkpoint()
                # A full buffer means more is probably waiting; otherwise wait (and so yield).
                ready = n == RECV_SIZE
                if ready:
                    await checkpoint()
                if state.shutdown_requested:
                    self.stop()
        except OSError:
            pass
        except Exception:
            # A bug met while serving one connection closes that connection only.
            state.log(
                f"<{session.id} closing the connection after an internal error:\n"
                + traceback.format_exc().rstrip()
            )
        finally:
            state.connections.pop(session.id, None)
            self.poller.unregister(fd)
            sock.close()
            if verbose:
                state.log(f"<{session.id} connection closed.")
            if state.shutdown_requested:
                self.stop()


async def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)
    while sent < len(data):
        await trio.lowlevel.wait_writable(sock)
        try:
            sent += sock.send(view[sent:])
        except BlockingIOError:
            continue
