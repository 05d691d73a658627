"""A thundering herd on one expiring key: recomputations and latency, RingCache vs Django's own
memcached backends on the same nodes.

N concurrent callers (threads, each with its own backend object, as Django gives every thread
one) call ``cache.get_or_set(key, compute, 60)`` on a key that was just deleted; ``compute``
takes 100 ms. Printed per backend and N (10, 40, 200): how many times ``compute`` ran, and the
p50/p99 of the callers' latency.

    python -m bench.herd
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

from django.conf import settings

from bench.node_memcaslap import local_cluster

BACKENDS = {
    "ringcache RingCache": "ringcache.client.django.RingCache",
    "Django PyMemcacheCache": "django.core.cache.backends.memcached.PyMemcacheCache",
    "Django PyLibMCCache": "django.core.cache.backends.memcached.PyLibMCCache",
}


def herd(backend_path: str, location: list[str], callers: int, rounds: int = 3) -> dict:
    from django.core.cache import InvalidCacheBackendError  # noqa: F401 - settings first
    from django.utils.module_loading import import_string

    backend = import_string(backend_path)
    caches = [backend(location, {}) for _ in range(callers)]
    computed = 0
    lock = threading.Lock()
    latencies: list[float] = []
    recomputations = []
    for r in range(rounds):
        key = f"herd:{callers}:{r}"
        caches[0].delete(key)
        computed = 0
        barrier = threading.Barrier(callers)

        def compute() -> str:
            nonlocal computed
            with lock:
                computed += 1
            time.sleep(0.1)
            return "expensive"

        def call(i: int, key: str = key, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            started = time.perf_counter()
            assert caches[i].get_or_set(key, compute, 60) == "expensive"
            with lock:
                latencies.append(time.perf_counter() - started)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        recomputations.append(computed)
    for cache in caches:
        cache.close()
    latencies.sort()
    return {
        "recomputations": statistics.mean(recomputations),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def main() -> int:
    settings.configure(CACHES={})
    with local_cluster(3, memory=64, spare=0) as lc:
        location = lc.locations()
        print("get_or_set on a just-deleted key, compute = 100 ms, 3 rounds each")
        for callers in (10, 40, 200):
            for name, path in BACKENDS.items():
                r = herd(path, location, callers)
                print(
                    f"  {callers:4d} callers  {name:24s} "
                    f"recomputations {r['recomputations']:6.1f}  "
                    f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
