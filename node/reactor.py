"""The node's hot loop: every client connection served from one epoll set, inline.

As memcached's worker thread does, one loop takes the readiness of all connections from one
epoll set and, for each ready connection, receives into one reusable buffer, parses, executes
and sends one batch of replies, with no task switch in between. This module owns that loop
and the state of each connection's socket: reading, sending, back-pressure (a connection
whose replies the socket does not take stops being read until they are sent, so the node
holds at most one batch for it), per-connection fairness (``reqs_per_event`` requests, then
the connection goes to the back of the queue), the idle timeout rule and closing. It never
awaits and never imports trio: ``server`` runs ``turn()`` between trio checkpoints and waits
on ``fileno()`` when there is nothing to do, so accepting, timers, the crawler, signals and
cancellation stay trio's.
"""

from __future__ import annotations

import select
import socket
import traceback
from collections import deque

from .commands import NodeState, Session

RECV_SIZE = 64 * 1024
EVENTS_PER_TURN = 512
_READ = select.EPOLLIN | select.EPOLLRDHUP
_WRITE = select.EPOLLOUT


class Connection:
    """One client socket and its protocol session."""

    __slots__ = ("fd", "more", "open", "out", "queued", "recv_into", "send", "session", "sock")

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.recv_into = sock.recv_into
        self.send = sock.send
        self.fd = sock.fileno()
        self.session = session
        self.out: memoryview | None = None  # replies the socket has not taken yet
        self.more = False  # buffered requests wait behind ``out``
        self.queued = False  # in the reactor's queue of connections with buffered requests
        self.open = True


class Reactor:
    """Level-triggered epoll over all connections; ``turn()`` serves what is ready."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.stats = state.store.stats
        self.batch = state.cfg.reqs_per_event
        self.epoll = select.epoll()
        self.conns: dict[int, Connection] = {}
        self.queue: deque[Connection] = deque()
        self.buf = bytearray(RECV_SIZE)

    def fileno(self) -> int:
        return self.epoll.fileno()

    def add(self, sock: socket.socket, session: Session) -> None:
        conn = Connection(sock, session)
        self.state.connections[session.id] = session
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, _READ)
        if self.state.verbosity > 1:
            self.state.log(f"<{session.id} new auto-negotiating client connection")

    def turn(self) -> bool:
        """Serve one batch of every connection that was waiting its turn, then every
        connection the kernel reports ready. False when there was nothing to do (then
        nothing is queued, and the caller may wait until the epoll set is readable)."""
        queue = self.queue
        queued = len(queue)
        for _ in range(queued):
            conn = queue.popleft()
            conn.queued = False
            if conn.open:
                self._serve(conn)
        conns = self.conns
        buf = self.buf
        events = self.epoll.poll(0, EVENTS_PER_TURN)
        for fd, _ in events:
            conn = conns.get(fd)
            if conn is None or conn.queued:
                # A connection with requests still buffered is read again once they are
                # answered (level-triggered: the kernel keeps reporting it).
                continue
            if conn.out is not None:
                self._flush(conn)
                continue
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n == 0:
                self.close(conn)
                continue
            self._serve(conn, n)
        return bool(queued or events)

    def _serve(self, conn: Connection, received: int = 0) -> None:
        """Answer one batch of the connection's requests (with the ``received`` bytes just
        read into the buffer) and send the replies."""
        session = conn.session
        try:
            if received:
                out, more = session.receive(self.buf, received, self.batch)
            else:
                out, more = session.step(self.batch)
            if out:
                try:
                    sent = conn.send(out)
                except BlockingIOError:
                    sent = 0
                if sent < len(out):
                    # The client does not read fast enough: stop reading it until it has.
                    conn.out = memoryview(out)[sent:]
                    conn.more = more
                    self.epoll.modify(conn.fd, _WRITE)
                    return
            if more or session.closing:
                self._after_send(conn, more)
        except OSError:
            self.close(conn)
        except Exception:
            self._internal_error(conn)

    def _flush(self, conn: Connection) -> None:
        out = conn.out
        assert out is not None
        try:
            sent = conn.send(out)
        except BlockingIOError:
            return
        except OSError:
            self.close(conn)
            return
        if sent < len(out):
            conn.out = out[sent:]
            return
        conn.out = None
        try:
            self.epoll.modify(conn.fd, _READ)
        except OSError:
            self.close(conn)
            return
        self._after_send(conn, conn.more)

    def _after_send(self, conn: Connection, more: bool) -> None:
        if conn.session.closing:
            self.close(conn)
        elif more:
            # Fairness: the rest of this connection's requests wait behind the others.
            self.stats.conn_yields += 1
            conn.queued = True
            self.queue.append(conn)

    def _internal_error(self, conn: Connection) -> None:
        # A bug met while serving one connection closes that connection only.
        self.state.log(
            f"<{conn.session.id} closing the connection after an internal error:\n"
            + traceback.format_exc().rstrip()
        )
        self.close(conn)

    def close_idle(self, idle: int) -> None:
        """Close connections that sent no command for more than ``idle`` seconds (memcached's
        idle_timeout rule, on the node's one-second clock); those being written to stay."""
        now = self.state.store.clock.now
        for conn in list(self.conns.values()):
            if conn.out is None and not conn.queued and now - conn.session.last_cmd > idle:
                self.close(conn)

    def close(self, conn: Connection) -> None:
        if not conn.open:
            return
        conn.open = False
        conn.out = None
        self.conns.pop(conn.fd, None)
        self.state.connections.pop(conn.session.id, None)
        try:
            self.epoll.unregister(conn.fd)
        except OSError:
            pass
        conn.sock.close()
        if self.state.verbosity > 1:
            self.state.log(f"<{conn.session.id} connection closed.")

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)
        self.epoll.close()
