"""What ``ringcache stats`` and the Prometheus metrics show: figures derived from ``stats``.

This module owns reading ``stats`` from each node (with the client's connection and protocol)
and the figures made of it: items, memory, hits and misses, hit ratio, evictions, connections,
ops/s between two samples, and the cluster's totals. It prints nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from ringcache.client import Connection, ReplyError, RingcacheError, Security, protocol
from ringcache.client.ring import Server


def fetch_stats(
    server: Server, timeout: float = 1.0, security: Security | None = None
) -> dict[str, str] | None:
    """``stats`` of one server as strings, or None when it does not answer."""
    try:
        with Connection(server, timeout, timeout, security) as conn:
            (reply,) = conn.request(protocol.stats(), (protocol.STATS,))
    except (OSError, RingcacheError):
        return None
    if isinstance(reply, ReplyError):
        return None
    return {name.decode(): value.decode(errors="replace") for name, value in reply.items()}


@dataclass
class NodeFigures:
    """What ``ringcache stats`` shows for one node (or the totals)."""

    node: str
    up: bool
    items: int = 0
    bytes: int = 0
    limit: int = 0
    get_hits: int = 0
    get_misses: int = 0
    evictions: int = 0
    connections: int = 0
    ops: int = 0  # cmd_get + cmd_set + cmd_touch, for ops/s between two samples
    ops_per_sec: float | None = None

    @property
    def hit_ratio(self) -> float | None:
        gets = self.get_hits + self.get_misses
        return self.get_hits / gets if gets else None

    def as_dict(self) -> dict:
        return {**asdict(self), "hit_ratio": self.hit_ratio}


def figures(server: Server, security: Security | None = None) -> NodeFigures:
    s = fetch_stats(server, security=security)
    if s is None:
        return NodeFigures(str(server), up=False)

    def n(name: str) -> int:
        try:
            return int(s.get(name, "0"))
        except ValueError:
            return 0

    return NodeFigures(
        node=str(server),
        up=True,
        items=n("curr_items"),
        bytes=n("bytes"),
        limit=n("limit_maxbytes"),
        get_hits=n("get_hits"),
        get_misses=n("get_misses"),
        evictions=n("evictions"),
        connections=n("curr_connections"),
        ops=n("cmd_get") + n("cmd_set") + n("cmd_touch"),
    )


def totals(rows: Iterable[NodeFigures]) -> NodeFigures:
    rows = list(rows)
    up = [r for r in rows if r.up]
    total = NodeFigures("total", up=bool(up))
    for field in (
        "items",
        "bytes",
        "limit",
        "get_hits",
        "get_misses",
        "evictions",
        "connections",
        "ops",
    ):
        setattr(total, field, sum(getattr(r, field) for r in up))
    rates = [r.ops_per_sec for r in up if r.ops_per_sec is not None]
    total.ops_per_sec = sum(rates) if rates else None
    return total


def sample(
    servers: list[Server],
    previous: dict[str, tuple[float, int]] | None,
    security: Security | None = None,
) -> tuple[list[NodeFigures], dict]:
    """Figures of every server; ops/s from the difference with ``previous`` samples."""
    now = time.monotonic()
    rows = [figures(s, security) for s in servers]
    seen = {}
    for row in rows:
        if row.up:
            seen[row.node] = (now, row.ops)
            if previous and row.node in previous:
                t0, ops0 = previous[row.node]
                if now > t0 and row.ops >= ops0:
                    row.ops_per_sec = (row.ops - ops0) / (now - t0)
    return rows, seen
