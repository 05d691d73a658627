"""A loopback TCP proxy in front of a server, for tests that need a slow or silent network.

``delay`` holds every server reply that long; ``blocked`` (an Event) makes the proxy swallow
everything in both directions without closing anything, like a partition that neither refuses
nor resets; ``requests`` (a factory of per-connection filters) rewrites what clients send.
Listens on 127.0.0.1 only and is stopped by ``close()``.
"""

from __future__ import annotations

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
    ) -> None:
        self.target = port
        self.delay = delay
        self.requests = requests
        self.blocked = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.location = f"127.0.0.1:{self.port}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                down.close()
                continue
            rewrite = self.requests() if self.requests else None
            threading.Thread(
                target=self._pipe, args=(down, up, False, rewrite), daemon=True
            ).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _pipe(
        self,
        src: socket.socket,
        dst: socket.socket,
        reply: bool,
        rewrite: Callable[[bytes], bytes] | None = None,
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
                while self.blocked.is_set() and not self.closed:
                    time.sleep(0.05)  # swallowed: nothing goes through while blocked
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
