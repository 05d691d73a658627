"""Client benchmark against three Debian memcached servers, peers measured in the same run.

- ``get_many`` of 100 keys: keys per second of ringcache's ``Client`` against pymemcache's
  ``HashClient`` and pylibmc (ketama); goals: >= 5x HashClient, >= 0.5x pylibmc.
- single ``get``/``set`` against one server: time per operation against pymemcache's plain
  ``Client``; goal: at most 1.15x.

    python -m bench.client_ops [--seconds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pylibmc
from pymemcache.client.base import Client as PlainClient
from pymemcache.client.hash import HashClient

from bench.node_memcaslap import free_port, wait_port
from ringcache.client import Client


def start_memcached() -> tuple[subprocess.Popen, int]:
    port = free_port()
    user = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1", *user],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def rate(fn, seconds: float) -> tuple[float, float]:
    """Calls per second of ``fn`` over about ``seconds``, and client CPU µs per call."""
    fn()
    calls = 0
    started = time.perf_counter()
    cpu = time.process_time()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            fn()
        calls += 20
    return calls / (time.perf_counter() - started), (time.process_time() - cpu) / calls * 1e6


def race(contenders: dict, seconds: float, rounds: int = 15) -> dict[str, tuple[float, float]]:
    """Many short alternating rounds (so that drift in machine load hits every contender
    alike): the median rate and the median CPU µs per call of each."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            r, c = rate(fn, seconds / rounds)
            rates[name].append(r)
            cpus[name].append(c)
    return {name: (statistics.median(rates[name]), statistics.median(cpus[name])) for name in rates}


@contextlib.contextmanager
def memcached_servers(n: int) -> Iterator[list[tuple[subprocess.Popen, int]] | None]:
    """``n`` Debian memcached processes on 127.0.0.1 (None, said, when memcached is missing),
    stopped by pid afterwards."""
    if shutil.which("memcached") is None:
        print("memcached is missing: apt-get install memcached")
        yield None
        return
    servers = [start_memcached() for _ in range(n)]
    try:
        yield servers
    finally:
        for proc, _ in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with memcached_servers(3) as servers:
        if servers is None:
            return 2
        locations = [f"127.0.0.1:{port}" for _, port in servers]
        keys = [f"bench:key:{i}" for i in range(100)]
        value = b"v" * 100
        ours = Client(locations)
        ours.set_many(dict.fromkeys(keys, value))
        hash_client = HashClient([("127.0.0.1", p) for _, p in servers], default_noreply=False)
        libmc = pylibmc.Client(locations, behaviors={"ketama_weighted": True, "tcp_nodelay": True})
        for k in keys:
            hash_client.set(k, value)
            libmc.set(k, value)
        assert len(ours.get_many(keys)) == len(hash_client.get_many(keys)) == 100
        assert len(libmc.get_multi(keys)) == 100

        print(
            "get_many of 100 keys over 3 servers "
            f"(median of 15 alternating rounds, {args.seconds:.0f}s in all)"
        )
        results = race(
            {
                "ringcache Client": lambda: ours.get_many(keys),
                "pymemcache HashClient": lambda: hash_client.get_many(keys),
                "pylibmc (ketama)": lambda: libmc.get_multi(keys),
            },
            args.seconds,
        )
        for name, (calls, cpu) in results.items():
            print(f"  {name:22s} {calls * 100:12.0f} keys/s  {cpu:8.1f} µs CPU per call")
        ours_keys = results["ringcache Client"][0]
        vs_hash = ours_keys / results["pymemcache HashClient"][0]
        vs_libmc = ours_keys / results["pylibmc (ketama)"][0]
        print(f"  ratio vs HashClient: {vs_hash:.2f}x (goal >= 5x)")
        print(f"  ratio vs pylibmc:    {vs_libmc:.2f}x (goal >= 0.5x)")

        print("\nsingle get/set against one server")
        one = Client([locations[0]])
        plain = PlainClient(("127.0.0.1", servers[0][1]), default_noreply=False, no_delay=True)
        for op in ("get", "set"):
            if op == "get":
                ours_fn, plain_fn = (lambda: one.get("k")), (lambda: plain.get("k"))
            else:
                ours_fn = lambda: one.set("k", value)  # noqa: E731
                plain_fn = lambda: plain.set("k", value)  # noqa: E731
            results = race({"ours": ours_fn, "plain": plain_fn}, args.seconds)
            ours_us, plain_us = (1e6 / results[n][0] for n in ("ours", "plain"))
            ours_cpu, plain_cpu = (results[n][1] for n in ("ours", "plain"))
            print(
                f"  {op}: ringcache {ours_us:6.1f} µs ({ours_cpu:.1f} CPU), "
                f"pymemcache Client {plain_us:6.1f} µs ({plain_cpu:.1f} CPU), "
                f"ratio {ours_us / plain_us:.2f}x (goal <= 1.15x)"
            )
        ours.close()
        one.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
