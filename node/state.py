"""What the sessions of one node share besides the store.

This module owns ``NodeState``: the settings in force (``-vv`` may change the verbosity), the
open sessions, the log, the cluster membership that ``config get cluster`` serves, the TLS
context (``-Z``) and the authfile (``-Y``). The server makes one; every session holds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .auth import AuthFile
from .tls import ServerTLS

if TYPE_CHECKING:
    from .config import Config
    from .store import Store


class NodeState:
    """What the sessions of one node share besides the store: settings and connections."""

    def __init__(self, cfg: Config, store: Store, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.store = store
        self.verbosity = cfg.verbose
        self.connections: dict[int, Any] = {}  # id -> its commands.Session
        self.next_id = 0
        self.log = log or _log_to_stderr
        self.listen_addr = f"{cfg.listen}:{cfg.port}"
        self.shutdown_requested = False
        # SIGUSR1 or ``shutdown graceful``: memcached's GRACE_STOP (``-e``: a warm restart).
        self.graceful_stop = False
        # ``lru_crawler crawl``: the server replaces this with a wake-up of its crawler task,
        # which crawls in bounded steps; without a server the pass runs at once.
        self.request_crawl: Callable[[], object] = lambda: store.crawl(1 << 62, scheduled=False)
        store.cas_mismatch = self._cas_mismatch
        # Cluster membership served by `config get cluster` (ElastiCache auto-discovery).
        self.cluster_version = 0
        self.cluster_members: list[bytes] = []
        # ``-Z``: the TLS context the server wraps connections with; stats, refresh_certs.
        self.tls = ServerTLS(cfg, lambda: store.clock.now) if cfg.ssl_enabled else None
        # ``-Y``: every connection must authenticate before its first command.
        self.authfile = AuthFile(cfg.auth_file) if cfg.auth_file else None

    def cluster_config(self) -> bytes:
        body = b"%d\n%s\n" % (self.cluster_version, b" ".join(self.cluster_members))
        return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)

    def _cas_mismatch(self, expected: int, got: int) -> None:
        if self.verbosity > 1:
            self.log(f"CAS:  failure: expected {expected}, got {got}")


def _log_to_stderr(line: str) -> None:
    """One log line on stderr; protocol text (bytes read as latin-1) goes out as the bytes it
    was, as memcached prints it."""
    try:
        data = line.encode("latin-1")
    except UnicodeEncodeError:
        data = line.encode("utf-8", "replace")
    sys.stderr.buffer.write(data + b"\n")
    sys.stderr.buffer.flush()
