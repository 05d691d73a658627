"""ringcache's cluster tooling: ``LocalCluster`` (node processes on 127.0.0.1) and the
``ringcache`` command (up, down, status, stats, ping, locate, ring, add, remove, rebalance,
follow, metrics), membership publishing and key moves (``rebalance``), following DNS with one
mover at a time (``follow``), and the Prometheus collector."""

from .local import ClusterError, LocalCluster, Member, NodeStatus

__all__ = ["ClusterError", "LocalCluster", "Member", "NodeStatus"]
