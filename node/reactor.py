"""The node's hot loop: every client connection served from one epoll set, inline.

As memcached's worker thread does, one loop takes the readiness of all connections from one
epoll set and, for each ready connection, receives into one reusable buffer, parses, executes
and sends one batch of replies, with no task switch in between. This module owns that loop
and the state of each connection's socket: reading, sending, back-pressure (a connection
whose replies the socket does not take stops being read until they are sent, so the node
holds at most one batch for it), per-connection fairness (``reqs_per_event`` requests, then
the connection goes to the back of the queue), the TLS handshake of connections accepted on a
``-Z`` listener (whose sockets are then read and written like the others), the idle timeout
rule and closing. It never awaits and never imports trio: ``server`` runs ``turn()`` between
trio checkpoints and waits on ``fileno()`` when there is nothing to do, so accepting, timers,
the crawler, signals and cancellation stay trio's.
"""

from __future__ import annotations

import select
import socket
import ssl
import traceback
from collections import deque

from .commands import Session
from .state import NodeState

RECV_SIZE = 64 * 1024
EVENTS_PER_TURN = 512
_READ = select.EPOLLIN | select.EPOLLRDHUP
_WRITE = select.EPOLLOUT


class Connection:
    """One client socket and its protocol session."""

    __slots__ = (
        "fd",
        "handshaking",
        "more",
        "open",
        "out",
        "queued",
        "recv_into",
        "send",
        "session",
        "sock",
    )

    def __init__(self, sock: socket.socket, session: Session, handshaking: bool = False) -> None:
        self.sock = sock
        self.recv_into = sock.recv_into
        self.send = sock.send
        self.fd = sock.fileno()
        self.session = session
        self.out: memoryview | None = None  # replies the socket has not taken yet
        self.more = False  # buffered requests wait behind ``out``
        self.queued = False  # in the reactor's queue of connections with buffered requests
        self.open = True
        self.handshaking = handshaking  # a TLS connection whose handshake is not done


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

    def add(self, sock: socket.socket, session: Session, handshake: bool = False) -> None:
        """Serve a new connection; ``handshake``: ``sock`` is a server-side TLS socket whose
        handshake has not begun."""
        conn = Connection(sock, session, handshake)
        self.state.connections[session.id] = session
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, _READ)
        if self.state.verbosity > 1:
            self.state.log(f"<{session.id} new auto-negotiating client connection")
        if handshake:
            # memcached tries the handshake once at accept (counting a failure then in
            # ``ssl_handshake_errors``) and goes on with it as data arrives.
            self._handshake(conn, first=True)

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
            if conn.handshaking:
                self._handshake(conn)
                continue
            try:
                n = conn.recv_into(buf)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                # (TLS: what arrived was no application data, e.g. a post-handshake message.)
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
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    # TLS: a write that must be retried is retried with the same bytes.
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
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
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

    def _handshake(self, conn: Connection, first: bool = False) -> None:
        """Take the TLS handshake one step further. A peer that is not speaking TLS, or breaks
        the handshake off, is closed (counted in ``ssl_handshake_errors`` when that is known
        at the first step, as memcached counts)."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, _READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, _WRITE)
            return
        except OSError:
            tls = self.state.tls
            if first and tls is not None:
                tls.handshake_errors += 1
            self.close(conn)
            return
        conn.handshaking = False
        conn.session.verified_cert = bool(sock.getpeercert())
        if self.state.verbosity > 2:  # not in memcached's -vv transcript
            self.state.log(f"<{conn.session.id} TLS {sock.version()} {sock.cipher()[0]}")
        self._watch(conn, _READ)

    def _watch(self, conn: Connection, events: int) -> None:
        try:
            self.epoll.modify(conn.fd, events)
        except OSError:
            self.close(conn)

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
                if self.state.verbosity > 1:
                    self.state.log(f"Closing idle fd {conn.session.id}")
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
