"""How long a membership change takes to move 100,000 keys (ringcache add on a local cluster).

Three nodes hold about 400,000 keys of 200 bytes; a fourth is added and ``rebalance`` moves the
keys it now owns (clearing leftovers, add with TTL, checked delete of the source, a sweep).

    python -m bench.move_keys [--keys 400000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from bench.node_memcaslap import free_port
from ringcache.client import Client, parse_location
from ringcache.cluster import LocalCluster
from ringcache.cluster.local import port_in_use
from ringcache.cluster.rebalance import rebalance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=400_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run:
        lc = LocalCluster(run)
        base = next(
            p for p in (free_port() for _ in range(100))
            if p < 64000 and not any(port_in_use(q) for q in range(p, p + 5))
        )  # fmt: skip
        lc.up(3, base, memory=256)
        try:
            old = parse_location(lc.locations())
            client = Client(lc.locations())
            started = time.monotonic()
            for i in range(0, args.keys, 2000):
                client.set_many({f"move:{j}": b"x" * 200 for j in range(i, i + 2000)})
            print(f"filled {args.keys} keys in {time.monotonic() - started:.1f}s")
            member = lc.add()
            new = [*old, parse_location(member.location)[0]]
            started = time.monotonic()
            result = rebalance(old, new, grace=0)
            took = time.monotonic() - started
            print(
                f"moved {result['copied']} of {result['planned']} keys in {took:.1f}s "
                f"({result['copied'] / took:,.0f} keys/s, {result['passes']} pass(es)); "
                f"100,000 keys ≈ {100_000 / (result['copied'] / took):.1f}s"
            )
            fresh = Client([str(s) for s in new])
            sample = [f"move:{j}" for j in range(0, args.keys, 97)]
            hits = len(fresh.get_many(sample))
            print(f"hit ratio after the move (fresh client): {hits / len(sample):.4f}")
        finally:
            lc.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
