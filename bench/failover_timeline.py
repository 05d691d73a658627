"""A timeline of what a client sees across a kill, a restart and an add: hit ratio and errors
per second, drawn to a PNG (default ``failover-timeline.png``). Part of ``make bench``.

Traffic comes from the failover suite's harness (a sync and a trio client doing set-after-miss
over 500 keys) against a 3-node LocalCluster on free 127.0.0.1 ports.

    python -m bench.failover_timeline [--out failover-timeline.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ringcache.client.ring import parse_location
from ringcache.cluster import LocalCluster
from ringcache.cluster.rebalance import rebalance
from tests.conftest import free_ports
from tests.failover.harness import Record, Traffic

BUCKET = 0.1  # seconds


def series(record: Record, t0: float, t1: float) -> tuple[list[float], list[float], list[float]]:
    times, ratios, errors = [], [], []
    t = t0
    while t < t1:
        ops = record.between(t, t + BUCKET)
        reads = [o for o in ops if o.kind in ("hit", "miss")]
        times.append(t - t0)
        ratios.append(sum(o.kind == "hit" for o in reads) / len(reads) if reads else float("nan"))
        errors.append(sum(o.kind == "error" for o in ops) / BUCKET)
        t += BUCKET
    return times, ratios, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="failover-timeline.png")
    args = parser.parse_args()
    cluster = LocalCluster(tempfile.mkdtemp(prefix="ringcache-bench-"))
    base = free_ports(5)
    cluster.up(3, base, memory=16)
    events: list[tuple[float, str]] = []
    try:
        with Traffic(cluster.locations(), keys=500, discovery=True, discovery_interval=0.1) as t:
            start = time.monotonic() - 0.5
            time.sleep(1.5)
            events.append((time.monotonic(), "kill -9"))
            cluster.kill(base + 1)
            time.sleep(2.5)
            events.append((time.monotonic(), "restart (empty)"))
            cluster.restart(base + 1)
            time.sleep(2.5)
            events.append((time.monotonic(), "add a node"))
            old = parse_location(cluster.locations())
            member = cluster.add()
            rebalance(old, [*old, parse_location(member.location)[0]], grace=0.5)
            time.sleep(2.5)
            end = time.monotonic()
    finally:
        cluster.down()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for label, record in (("sync client", t.sync), ("trio client", t.trio)):
        times, ratios, errors = series(record, start, end)
        top.plot(times, ratios, label=label)
        bottom.plot(times, errors, label=label)
    for at, name in events:
        for ax in (top, bottom):
            ax.axvline(at - start, color="grey", linestyle="--", linewidth=0.8)
        top.annotate(name, (at - start, 0.02), rotation=90, fontsize=8, va="bottom")
    top.set_ylabel("hit ratio (per 100 ms)")
    top.set_ylim(0, 1.05)
    bottom.set_ylabel("exceptions reaching the app / s")
    bottom.set_xlabel("seconds")
    top.legend(loc="lower right")
    top.set_title("ringcache: a kill, a restart and an add under traffic")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    total_errors = len(t.sync.errors) + len(t.trio.errors)
    print(f"wrote {args.out}: {len(t.sync.ops) + len(t.trio.ops)} operations, "
          f"{total_errors} exceptions reached the application")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
