"""Node benchmark: libmemcached's memcaslap against a ringcache node and Debian's memcached.

Rounds alternate between the two servers in one run (``memcaslap -T 1 -c 16``, its default
90/10 get/set mix); the report gives each server's throughput, server CPU time per operation,
and the node/memcached ratios. A second part stores N items with 100-byte values in each
server and reports RSS bytes per stored item. Never run in CI.

    python -m bench.node_memcaslap [--rounds 3] [--seconds 10] [--items 200000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ringcache.cluster import LocalCluster
from ringcache.cluster.local import port_in_use

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_cluster(nodes: int, memory: int, spare: int = 2) -> Iterator[LocalCluster]:
    """``nodes`` node processes on consecutive free ports (``spare`` more kept free for adds),
    in a temporary run directory, stopped afterwards."""
    with tempfile.TemporaryDirectory() as run:
        lc = LocalCluster(run)
        base = next(
            p for p in (free_port() for _ in range(100))
            if p < 64000 and not any(port_in_use(q) for q in range(p, p + nodes + spare))
        )  # fmt: skip
        lc.up(nodes, base, memory=memory)
        try:
            yield lc
        finally:
            lc.down()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def start(kind: str, memory: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "memcached":
        user = ["-u", "root"] if os.geteuid() == 0 else []
        argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1"]
        argv += ["-m", str(memory), *user]
    else:
        argv = [sys.executable, "-m", "ringcache.node", "-p", str(port), "-m", str(memory)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def memcaslap(port: int, seconds: int) -> tuple[int, float]:
    out = subprocess.run(
        ["memcaslap", "-s", f"127.0.0.1:{port}", "-T", "1", "-c", "16", "-t", f"{seconds}s"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    m = re.search(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)", out)
    if not m:
        raise RuntimeError(f"memcaslap said:\n{out}")
    return int(m.group(2)), float(m.group(3))


def throughput(rounds: int, seconds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"node": [], "memcached": []}
    for r in range(rounds):
        for kind in ("node", "memcached") if r % 2 == 0 else ("memcached", "node"):
            proc, port = start(kind, 64)
            cpu0 = cpu_seconds(proc.pid)
            ops, tps = memcaslap(port, seconds)
            cpu = cpu_seconds(proc.pid) - cpu0
            stop(proc)
            results[kind].append((tps, cpu / ops * 1e6))
            print(f"round {r + 1} {kind:9s} {tps:9.0f} ops/s  {cpu / ops * 1e6:6.1f} µs CPU/op")
    node_tps = sum(t for t, _ in results["node"]) / rounds
    mc_tps = sum(t for t, _ in results["memcached"]) / rounds
    node_cpu = sum(c for _, c in results["node"]) / rounds
    mc_cpu = sum(c for _, c in results["memcached"]) / rounds
    print(f"\nmemcaslap -T 1 -c 16, {rounds} alternating rounds of {seconds}s")
    print(f"  node      {node_tps:9.0f} ops/s  {node_cpu:6.1f} µs server CPU/op")
    print(f"  memcached {mc_tps:9.0f} ops/s  {mc_cpu:6.1f} µs server CPU/op")
    print(f"  throughput ratio node/memcached: {node_tps / mc_tps:.2f}x (goal >= 0.35x)")
    print(f"  CPU per op ratio node/memcached: {node_cpu / mc_cpu:.2f}x")


def fill(port: int, items: int) -> None:
    value = b"v" * 100
    with socket.create_connection(("127.0.0.1", port)) as s:
        batch = 500
        for start_i in range(0, items, batch):
            payload = b"".join(
                b"set key:%08d 0 0 100 noreply\r\n%s\r\n" % (i, value)
                for i in range(start_i, min(items, start_i + batch))
            )
            s.sendall(payload)
        s.sendall(b"version\r\n")
        s.settimeout(60)
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += s.recv(4096)


def memory(items: int) -> None:
    print(f"\nRSS per item, {items} items with 100-byte values (-m 1024)")
    per_item = {}
    for kind in ("node", "memcached"):
        proc, port = start(kind, 1024)
        time.sleep(0.5)
        before = rss_bytes(proc.pid)
        fill(port, items)
        time.sleep(0.5)
        after = rss_bytes(proc.pid)
        stop(proc)
        per_item[kind] = (after - before) / items
        print(f"  {kind:9s} {per_item[kind]:7.1f} bytes/item")
    print(f"  ratio node/memcached: {per_item['node'] / per_item['memcached']:.2f}x (goal <= 2x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--items", type=int, default=200_000)
    args = parser.parse_args()
    for tool in ("memcached", "memcaslap"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install memcached libmemcached-tools")
            return 2
    os.chdir(tempfile.mkdtemp())
    throughput(args.rounds, args.seconds)
    memory(args.items)
    return 0


if __name__ == "__main__":
    sys.exit(main())
