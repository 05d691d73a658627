"""Prometheus exposition: a cluster's ``stats`` (scraped from the nodes on every request) and
what one client saw of each node (``ClientCollector``, for the application's own registry).

This module owns the metric names and the collectors; the figures are ``figures.py``'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ringcache.client.engine import Face
from ringcache.client.ring import Server
from ringcache.client.security import Security

from .figures import figures


class ClusterCollector(Collector):
    """One scrape = one ``stats`` round trip to every node."""

    def __init__(self, servers: list[Server], security: Security | None = None) -> None:
        self.servers = servers
        self.security = security

    def collect(self) -> Iterator:
        rows = [figures(s, self.security) for s in self.servers]
        up = GaugeMetricFamily("ringcache_up", "Whether the node answered stats", labels=["node"])
        gauges = {
            "items": GaugeMetricFamily("ringcache_items", "Items stored", labels=["node"]),
            "bytes": GaugeMetricFamily("ringcache_bytes", "Bytes of items stored", labels=["node"]),
            "limit": GaugeMetricFamily(
                "ringcache_limit_bytes", "Memory limit (-m)", labels=["node"]
            ),
            "connections": GaugeMetricFamily(
                "ringcache_connections", "Open client connections", labels=["node"]
            ),
        }
        counters = {
            "get_hits": CounterMetricFamily("ringcache_get_hits", "get hits", labels=["node"]),
            "get_misses": CounterMetricFamily(
                "ringcache_get_misses", "get misses", labels=["node"]
            ),
            "evictions": CounterMetricFamily(
                "ringcache_evictions", "Evicted items", labels=["node"]
            ),
            "ops": CounterMetricFamily(
                "ringcache_commands", "get+set+touch commands", labels=["node"]
            ),
        }
        ratio = GaugeMetricFamily(
            "ringcache_hit_ratio", "get_hits / (get_hits + get_misses)", labels=["node"]
        )
        for row in rows:
            up.add_metric([row.node], 1 if row.up else 0)
            if not row.up:
                continue
            for name, family in gauges.items():
                family.add_metric([row.node], getattr(row, name))
            for name, family in counters.items():
                family.add_metric([row.node], getattr(row, name))
            if row.hit_ratio is not None:
                ratio.add_metric([row.node], row.hit_ratio)
        yield up
        yield from gauges.values()
        yield from counters.values()
        yield ratio


def serve(servers: list[Server], host: str, port: int, security: Security | None = None):
    """Start the HTTP exporter in a thread; returns (server, thread)."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(servers, security))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread


class ClientCollector(Collector):
    """What one client (``Client`` or ``AsyncClient``) saw of each node, from its
    ``node_stats()``: state, failures, ejections, the recovery journal, and get_or_set's
    leases. Register it in the application's registry (these counters live in the
    application's process, not on the nodes, so ``ringcache stats`` cannot show them):

        prometheus_client.REGISTRY.register(ClientCollector(cache))
    """

    def __init__(self, client: Face) -> None:
        self.client = client

    def collect(self) -> Iterator:
        label = ["node"]
        live = GaugeMetricFamily(
            "ringcache_client_node_live",
            "1 while the node takes this client's traffic",
            labels=label,
        )
        journal = GaugeMetricFamily(
            "ringcache_client_journal_keys", "Keys in the node's recovery journal", labels=label
        )
        counters = {
            name: CounterMetricFamily(f"ringcache_client_{name}", text, labels=label)
            for name, text in (
                ("failures", "Failed requests to the node"),
                ("ejections", "Times the node was ejected"),
                ("journal_flushes", "Flushes after the node's journal overflowed"),
                ("leases_won", "get_or_set leases won (computations)"),
                ("lease_waits", "Polls while another caller held the lease"),
                ("lease_wait_seconds", "Seconds spent waiting for another caller's value"),
                ("lease_fallbacks", "Fallback values served instead of waiting"),
            )
        }
        for node, seen in self.client.node_stats().items():
            live.add_metric([node], 1 if seen["state"] in ("live", "failing") else 0)
            journal.add_metric([node], seen["journal"])
            leases = seen["leases"]
            for name, value in (
                ("failures", seen["failures"]),
                ("ejections", seen["ejections"]),
                ("journal_flushes", seen["journal_flushes"]),
                ("leases_won", leases["won"]),
                ("lease_waits", leases["waits"]),
                ("lease_wait_seconds", leases["wait_seconds"]),
                ("lease_fallbacks", leases["fallbacks"]),
            ):
                counters[name].add_metric([node], value)
        yield live
        yield journal
        yield from counters.values()
