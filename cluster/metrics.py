"""Prometheus exposition of a cluster's ``stats``: scraped from the nodes on every request.

This module owns the metric names and the collector; the figures are ``figures.py``'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ringcache.client.ring import Server

from .figures import figures


class ClusterCollector(Collector):
    """One scrape = one ``stats`` round trip to every node."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    def collect(self) -> Iterator:
        rows = [figures(s) for s in self.servers]
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


def serve(servers: list[Server], host: str, port: int):
    """Start the HTTP exporter in a thread; returns (server, thread)."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(servers))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread
