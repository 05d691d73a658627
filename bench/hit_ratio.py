"""Hit ratio of the node against Debian's memcached 1.6.18 at the same ``-m``, on look-aside
traces (a get; on a miss, a set of the value), replayed over the network in the same run.

Traces (seeded, so every server sees the same requests): zipf at two skews, a popularity shift
(the hot set moves halfway), one-hit wonders mixed into a zipf set, and a zipf set with
periodic one-pass loops over cold keys (a batch job walking a table). Prints the hit ratio of
each server on each trace, at two cache sizes: memcached, the node with each eviction policy
(``-o lru_policy=segmented``, memcached's and the default; ``lru``, memcached's flat LRU of
``-o no_lru_maintainer``; ``sieve``), and libcachesim's LRU, ARC, S3-FIFO, SIEVE, LIRS and
W-TinyLFU simulated with the node's item count as their size; each node policy's difference
from memcached in points; and the room: Belady's offline optimum (libcachesim's, told every
request's next request, the same size) less memcached, the most points any eviction policy
could gain.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator

from pymemcache.client.base import Client as Pymemcache

from tests.conftest import MEMCACHED, start_memcached, start_node

VALUE = 200  # bytes per value: items of one slab class
TRACES = ("zipf-0.8", "zipf-1.1", "shift", "one-hit", "loops")


def zipf_keys(n_keys: int, skew: float, rnd: random.Random) -> list[float]:
    weights = [1.0 / (rank**skew) for rank in range(1, n_keys + 1)]
    total = sum(weights)
    acc, cdf = 0.0, []
    for w in weights:
        acc += w / total
        cdf.append(acc)
    return cdf


def draw(cdf: list[float], rnd: random.Random) -> int:
    import bisect

    return min(bisect.bisect_left(cdf, rnd.random()), len(cdf) - 1)


def trace(name: str, length: int, n_keys: int, seed: int = 7) -> Iterator[str]:
    rnd = random.Random(seed)
    if name.startswith("zipf"):
        cdf = zipf_keys(n_keys, 0.8 if name == "zipf-0.8" else 1.1, rnd)
        for _ in range(length):
            yield f"k{draw(cdf, rnd)}"
    elif name == "shift":
        cdf = zipf_keys(n_keys, 0.9, rnd)
        for i in range(length):
            offset = 0 if i < length // 2 else n_keys  # a new hot set halfway
            yield f"k{draw(cdf, rnd) + offset}"
    elif name == "one-hit":
        cdf = zipf_keys(n_keys, 0.9, rnd)
        for i in range(length):
            yield f"k{draw(cdf, rnd)}" if rnd.random() < 0.7 else f"once{i}"
    elif name == "loops":
        cdf = zipf_keys(n_keys, 0.9, rnd)
        cold = 0
        for i in range(length):
            if (i // 20000) % 4 == 3:  # every fourth stretch: a pass over cold keys
                cold += 1
                yield f"cold{cold}"
            else:
                yield f"k{draw(cdf, rnd)}"
    else:
        raise ValueError(name)


def replay(port: int, keys: list[str]) -> tuple[float, int]:
    """The hit ratio of the look-aside trace, and how many items the server held at the end."""
    client = Pymemcache(("127.0.0.1", port), no_delay=True)
    value = b"v" * VALUE
    hits = 0
    for key in keys:
        if client.get(key) is not None:
            hits += 1
        else:
            client.set(key, value, noreply=True)
    items = int(client.stats()[b"curr_items"])
    client.close()
    return hits / len(keys), items


def next_uses(numbered: list[int]) -> list[int]:
    """For each request, the index of the next request of the same object (``NEVER`` when
    there is none): what Belady's offline optimum is told."""
    following = [NEVER] * len(numbered)
    seen: dict[int, int] = {}
    for i in range(len(numbered) - 1, -1, -1):
        following[i] = seen.get(numbered[i], NEVER)
        seen[numbered[i]] = i
    return following


def simulated(policies: list[str], keys: list[str], capacity: int) -> list[float]:
    """libcachesim's policies holding ``capacity`` items (the node's count at the end of the
    same trace: equal memory in items of one class). ``Belady`` evicts the item whose next
    request is farthest: no policy that does not know the future hits more."""
    import libcachesim

    ids: dict[str, int] = {}
    numbered = [ids.setdefault(k, len(ids)) for k in keys]
    following = next_uses(numbered) if "Belady" in policies else []
    ratios = []
    for name in policies:
        cache = getattr(libcachesim, name)(cache_size=capacity)
        request = libcachesim.Request()
        request.obj_size = 1
        hits = 0
        for i, obj in enumerate(numbered):
            request.obj_id = obj
            if following:
                request.next_access_vtime = following[i]
            hits += bool(cache.get(request))
        ratios.append(hits / len(keys))
    return ratios


SERVERS = {
    "memcached": lambda memory: start_memcached("-m", str(memory)),
    "node segm.": lambda memory: start_node("-m", str(memory)),
    "node lru": lambda memory: start_node("-m", str(memory), "-o", "lru_policy=lru"),
    "node sieve": lambda memory: start_node("-m", str(memory), "-o", "lru_policy=sieve"),
}
SIMULATED = ["LRU", "ARC", "S3FIFO", "Sieve", "LIRS", "WTinyLFU", "Belady"]
NEVER = 1 << 62  # no next request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--memory", type=int, nargs="+", default=[4, 8], help="-m values, MB")
    parser.add_argument("--traces", nargs="+", default=list(TRACES))
    args = parser.parse_args(argv)
    if MEMCACHED is None:
        print("memcached is missing: apt-get install memcached")
        return 2
    try:
        import libcachesim  # noqa: F401

        policies = SIMULATED
    except ImportError:
        print("(libcachesim is missing: pip install libcachesim; its columns are left out)")
        policies = []
    names = [*SERVERS, *(f"lcs {p}" for p in policies)]
    print(f"{'trace':10} {'-m':>3} " + " ".join(f"{n:>11}" for n in names) + "  node - memcached")
    for memory in args.memory:
        for name in args.traces:
            keys = list(trace(name, args.length, args.keys))
            ratios, held = [], 0
            for label, start in SERVERS.items():
                server = start(memory)
                try:
                    ratio, items = replay(server.port, keys)
                finally:
                    server.stop()
                ratios.append(ratio)
                held = items if label == "node segm." else held
            ratios += simulated(policies, keys, held)
            theirs = ratios[0]
            points = " ".join(f"{100 * (r - theirs):+.2f}" for r in ratios[1 : len(SERVERS)])
            cells = " ".join(f"{r:>11.3%}" for r in ratios)
            # How many points above memcached any policy could be: Belady's optimum.
            room = f", room {100 * (ratios[-1] - theirs):+.2f}" if "Belady" in policies else ""
            print(f"{name:10} {memory:>3} {cells}  {points} (segm., lru, sieve){room}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
