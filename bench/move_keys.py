"""How long a membership change takes to move 100,000 keys (ringcache add on a local cluster).

Three nodes hold about 400,000 keys of 200 bytes; a fourth is added and ``rebalance`` moves the
keys it now owns (clearing leftovers, add with TTL, checked delete of the source, a sweep).

    python -m bench.move_keys [--keys 400000]
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.node_memcaslap import local_cluster
from ringcache.client import Client, parse_location
from ringcache.cluster.rebalance import rebalance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=400_000)
    args = parser.parse_args()
    with local_cluster(3, memory=256, spare=2) as lc:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
