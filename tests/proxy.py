"""A loopback TCP proxy in front of a server, for tests that need a slow or silent network.

``delay`` holds every server reply that long; ``blocked`` (an Event) makes the proxy hold
everything in both directions without closing anything (delivered once unblocked), like a
partition that neither refuses nor resets; ``block_process(pid)`` does the same for the
connections of one client process only (a partial partition); ``requests`` (a factory of
per-connection filters) rewrites what clients send.
Listens on 127.0.0.1 only and is stopped by ``close()``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


class NoMeta:
    """A request filter that makes a memcached 1.6 look like an older one: every meta command
    line (``mg md ma me mn``) becomes an unknown command, which memcached answers ``ERROR`` in
    its place in the reply stream. Storage commands' data blocks pass untouched."""

    seen = 0  # meta commands rewritten, over every connection

    def __init__(self) -> None:
        self.buf = b""
        self.data_left = 0

    def __call__(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while self.buf:
            if self.data_left:
                part, self.buf = self.buf[: self.data_left], self.buf[self.data_left :]
                self.data_left -= len(part)
                out.append(part)
                continue
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                break
            line, self.buf = self.buf[:eol], self.buf[eol + 2 :]
            words = line.split()
            if words and words[0] in (b"mg", b"md", b"ma", b"me", b"mn"):
                NoMeta.seen += 1
                line = b"no_such_command"
            elif words and words[0] in (b"set", b"add", b"replace", b"append", b"prepend", b"cas"):
                self.data_left = int(words[4]) + 2
            out.append(line + b"\r\n")
        return b"".join(out)


class Proxy:
    def __init__(
        self,
        port: int,
        delay: float = 0.0,
        requests: Callable[[], Callable[[bytes], bytes]] | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.target = port
        self.delay = delay
        self.requests = requests
        self.blocked = threading.Event()
        self.blocked_pid: int | None = None
        self.blocked_ports: set[int] = set()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(listen)
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.location = f"{listen[0]}:{self.port}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, (_, client_port) = self.listener.accept()
            except OSError:
                return
            if self.blocked_pid is not None and client_port in _tcp_ports(self.blocked_pid):
                self.blocked_ports.add(client_port)
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                down.close()
                continue
            rewrite = self.requests() if self.requests else None
            threading.Thread(
                target=self._pipe, args=(down, up, False, rewrite, client_port), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(up, down, True, None, client_port), daemon=True
            ).start()

    def block_process(self, pid: int) -> None:
        """Hold the traffic of ``pid``'s connections (open now or later), nobody else's."""
        self.blocked_pid = pid
        self.blocked_ports = set(_tcp_ports(pid))

    def unblock_process(self) -> None:
        self.blocked_pid = None
        self.blocked_ports = set()

    def _held(self, client_port: int) -> bool:
        return self.blocked.is_set() or client_port in self.blocked_ports

    def _pipe(
        self,
        src: socket.socket,
        dst: socket.socket,
        reply: bool,
        rewrite: Callable[[bytes], bytes] | None = None,
        client_port: int = 0,
    ) -> None:
        src.settimeout(0.2)
        try:
            while not self.closed:
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if reply and self.delay:
                    time.sleep(self.delay)
                if rewrite is not None:
                    data = rewrite(data)
                while self._held(client_port) and not self.closed:
                    time.sleep(0.05)  # held: nothing goes through while blocked
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _tcp_ports(pid: int) -> set[int]:
    """The local ports of ``pid``'s TCP sockets (from /proc: its descriptors' inodes)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports
