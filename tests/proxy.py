"""A loopback TCP proxy in front of a server, for tests that need a slow or silent network.

``delay`` holds every server reply that long; ``blocked`` (an Event) makes the proxy swallow
everything in both directions without closing anything, like a partition that neither refuses
nor resets. Listens on 127.0.0.1 only and is stopped by ``close()``.
"""

from __future__ import annotations

import socket
import threading
import time


class Proxy:
    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.target = port
        self.delay = delay
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
            threading.Thread(target=self._pipe, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
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
