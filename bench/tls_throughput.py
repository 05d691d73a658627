"""TLS benchmark: a pymemcache-based load with and without TLS, against a ringcache node and
Debian's memcached (``-t 1``, ``-Z`` with the same certificate) in the same run.

memcaslap cannot speak TLS, so the load is pymemcache clients (``tls_context``), each in its
own process with one connection: a 90/10 get/set mix of 1 KB values over 10,000 keys, and
get_many of 50 such keys. Rounds alternate between the four servers (node, node -Z, memcached,
memcached -Z), a fresh server each; each round prints operations per second and server CPU
time per operation; the summary gives the medians and the ratios node/memcached with TLS and
TLS/plaintext for each server. Never run in CI.

    python -m bench.tls_throughput [--rounds 3] [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from bench.node_memcaslap import cpu_seconds, start, stop

KEYS = 10_000
VALUE = b"v" * 1024
MULTI = 50


def _context(ca: str | None) -> ssl.SSLContext | None:
    return None if ca is None else ssl.create_default_context(cafile=ca)


def _client(port: int, ca: str | None, workload: str, seconds: float, seed: int, out) -> None:
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", port), tls_context=_context(ca), timeout=10)
    rng = random.Random(seed)
    keys = [f"key:{i:05d}" for i in range(KEYS)]
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if workload == "mix":
            key = rng.choice(keys)
            if rng.random() < 0.1:
                client.set(key, VALUE, noreply=False)
            else:
                client.get(key)
            done += 1
        else:
            got = client.get_many(rng.sample(keys, MULTI))
            assert len(got) == MULTI, "a key of the get_many workload missed"
            done += MULTI
    out.put(done)


def _fill(port: int, ca: str | None) -> None:
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", port), tls_context=_context(ca), timeout=30)
    items = {f"key:{i:05d}": VALUE for i in range(KEYS)}
    names = list(items)
    for i in range(0, KEYS, 500):
        client.set_many({k: items[k] for k in names[i : i + 500]}, noreply=False)
    client.close()


def run(port: int, pid: int, ca: str | None, workload: str, seconds: float, clients: int):
    """(operations per second, server CPU microseconds per operation)."""
    _fill(port, ca)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(port, ca, workload, seconds, i, out))
        for i in range(clients)
    ]
    cpu0 = cpu_seconds(pid)
    for p in procs:
        p.start()
    ops = sum(out.get(timeout=seconds + 60) for _ in procs)
    cpu = cpu_seconds(pid) - cpu0
    for p in procs:
        p.join(10)
    return ops / seconds, cpu / ops * 1e6


def main() -> int:
    import trustme

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ringcache-tls-bench-"))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    pem = folder / "server.pem"
    tls_flags = ("-Z", "-o", f"ssl_chain_cert={pem},ssl_key={pem}")
    servers = [
        ("node", "node", (), None),
        ("node -Z", "node", tls_flags, str(folder / "ca.pem")),
        ("memcached", "memcached", (), None),
        ("memcached -Z", "memcached", tls_flags, str(folder / "ca.pem")),
    ]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for workload in ("mix", "get_many"):
        for r in range(args.rounds):
            for name, kind, flags, cafile in servers:
                proc, port = start(kind, 256, flags)
                try:
                    rate, cpu = run(port, proc.pid, cafile, workload, args.seconds, args.clients)
                finally:
                    stop(proc)
                results.setdefault((workload, name), []).append((rate, cpu))
                print(f"{workload:9} round {r + 1} {name:13} {rate:10,.0f} ops/s "
                      f"{cpu:7.1f} µs CPU/op", flush=True)  # fmt: skip
    print(f"\nmedians of {args.rounds} rounds x {args.seconds:g} s, {args.clients} clients:")
    for workload in ("mix", "get_many"):
        med = {
            name: (
                statistics.median(r for r, _ in results[(workload, name)]),
                statistics.median(c for _, c in results[(workload, name)]),
            )
            for name, *_ in servers
        }
        for name, (rate, cpu) in med.items():
            print(f"  {workload:9} {name:13} {rate:10,.0f} ops/s {cpu:7.1f} µs CPU/op")
        n, nz, m, mz = (med[s[0]] for s in servers)
        print(
            f"  {workload:9} node/memcached with TLS: {nz[0] / mz[0]:.2f}x throughput, "
            f"{nz[1] / mz[1]:.2f}x CPU/op; TLS/plain: node {nz[0] / n[0]:.2f}x, "
            f"memcached {mz[0] / m[0]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
