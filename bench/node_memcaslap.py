"""Node benchmark: libmemcached's memcaslap against a ringcache node and Debian's memcached.

Rounds alternate between the two servers in one run, a fresh server each time, for each
workload: ``memcaslap -T 1`` (its 90/10 get/set mix, ~1 KB values) with 16, 64 and 256
connections, with 4 KB and 64 KB values, and get_many of 100 keys by pylibmc clients. Each
round prints both servers' throughput, server CPU time per operation and the ratios; the
summary gives the medians. A second part stores N items with 100-byte values in each server
and reports RSS bytes per stored item. Never run in CI.

    python -m bench.node_memcaslap [--rounds 3] [--seconds 10] [--items 200000] [--only TEXT]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
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


# The interpreter of each node build: this one, and with --before another checkout's.
PYTHONS = {"node": sys.executable}


def start(kind: str, memory: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """A fresh ``kind`` server ("memcached" -t 1, "node", or the "before" node of
    ``--before``) on a free port, with ``extra`` flags."""
    port = free_port()
    if kind == "memcached":
        user = ["-u", "root"] if os.geteuid() == 0 else []
        argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1"]
        argv += ["-m", str(memory), *user, *extra]
    else:
        argv = [PYTHONS[kind], "-m", "ringcache.node", "-p", str(port), "-m", str(memory)]
        argv += extra
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def memcaslap(port: int, seconds: int, args: list[str]) -> tuple[int, float]:
    """One memcaslap run (one thread, 90/10 get/set): (operations, operations per second)."""
    out = subprocess.run(
        ["memcaslap", "-s", f"127.0.0.1:{port}", "-T", "1", "-t", f"{seconds}s", *args],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    m = re.search(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)", out)
    if not m:
        raise RuntimeError(f"memcaslap said:\n{out}")
    return int(m.group(2)), float(m.group(3))


MULTIGET_KEYS = 100
MULTIGET_ITEMS = 10_000
MULTIGET_CLIENTS = 4


def _multiget_client(port: int, seconds: float, seed: int, counts) -> None:
    import random

    import pylibmc

    mc = pylibmc.Client([f"127.0.0.1:{port}"], binary=False)
    rng = random.Random(seed)
    keys = [f"mg:{i:06d}" for i in range(MULTIGET_ITEMS)]
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = mc.get_multi(rng.sample(keys, MULTIGET_KEYS))
        assert len(got) == MULTIGET_KEYS, "a key of the get_many workload missed"
        done += 1
    counts.put(done)


def multiget(port: int, seconds: int) -> tuple[int, float]:
    """get_many(100) of 300-byte values by MULTIGET_CLIENTS pylibmc (C) clients in their own
    processes: (keys, keys per second)."""
    import multiprocessing

    value = b"m" * 300
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"".join(
                b"set mg:%06d 0 0 %d noreply\r\n%s\r\n" % (i, len(value), value)
                for i in range(MULTIGET_ITEMS)
            )
            + b"version\r\n"
        )
        s.settimeout(30)
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += s.recv(4096)
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Queue()
    procs = [
        ctx.Process(target=_multiget_client, args=(port, seconds, i, counts))
        for i in range(MULTIGET_CLIENTS)
    ]
    for p in procs:
        p.start()
    calls = sum(counts.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(10)
    keys = calls * MULTIGET_KEYS
    return keys, keys / seconds


# (name, how to load the server); memcaslap's default values are about 1 KB.
WORKLOADS = [
    ("memcaslap -c 16", lambda port, secs: memcaslap(port, secs, ["-c", "16"])),
    ("memcaslap -c 64", lambda port, secs: memcaslap(port, secs, ["-c", "64"])),
    ("memcaslap -c 256", lambda port, secs: memcaslap(port, secs, ["-c", "256"])),
    (
        "memcaslap -c 16 -X 4096",
        lambda port, secs: memcaslap(port, secs, ["-c", "16", "-X", "4096"]),
    ),
    (
        "memcaslap -c 16 -X 65536",
        lambda port, secs: memcaslap(port, secs, ["-c", "16", "-X", "65536"]),
    ),
    (f"get_many({MULTIGET_KEYS}), {MULTIGET_CLIENTS} pylibmc clients, keys", multiget),
]


def throughput(rounds: int, seconds: int, only: str | None) -> list[str]:
    """Alternating rounds of each workload against a fresh node and a fresh memcached -t 1;
    the median of the rounds' ratios. Returns the summary lines."""
    summary = []
    for name, load in WORKLOADS:
        if only and only not in name:
            continue
        print(f"\n{name}: {rounds} alternating rounds of {seconds}s")
        kinds = [*PYTHONS, "memcached"]
        ratios, cpu_ratios = [], []
        per: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
        for r in range(rounds):
            got = {}
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                proc, port = start(kind, 64)
                cpu0 = cpu_seconds(proc.pid)
                ops, tps = load(port, seconds)
                cpu = (cpu_seconds(proc.pid) - cpu0) / ops * 1e6
                stop(proc)
                got[kind] = (tps, cpu)
                per[kind].append((tps, cpu))
            ratios.append(got["node"][0] / got["memcached"][0])
            cpu_ratios.append(got["node"][1] / got["memcached"][1])
            print(
                f"  round {r + 1}: "
                + "  ".join(f"{k} {got[k][0]:9.0f}/s {got[k][1]:6.1f} µs CPU" for k in kinds)
                + f"  ratio {ratios[-1]:.2f}x  CPU {cpu_ratios[-1]:.2f}x"
            )
        medians = {
            k: (statistics.median(t for t, _ in per[k]), statistics.median(c for _, c in per[k]))
            for k in kinds
        }
        line = (
            f"{name:52s} "
            + "  ".join(f"{k} {medians[k][0]:9.0f}/s {medians[k][1]:6.1f} µs" for k in kinds)
            + f"  ratio {statistics.median(ratios):.2f}x"
            + f"  CPU/op {statistics.median(cpu_ratios):.2f}x"
        )
        if "before" in medians:
            line += (
                f"  node/before {medians['node'][0] / medians['before'][0]:.2f}x,"
                f" CPU/op {medians['node'][1] / medians['before'][1]:.2f}x"
            )
        summary.append(line)
    print("\nnode vs memcached -t 1 (medians; goals: ratio >= 0.5x, CPU/op <= 2.2x)")
    for line in summary:
        print("  " + line)
    return summary


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
    for kind in [*PYTHONS, "memcached"]:
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
    parser.add_argument("--only", help="run the workloads whose name contains this")
    parser.add_argument(
        "--before",
        metavar="PYTHON",
        help="also a node run by this interpreter (another checkout's, installed in it), in "
        "the same alternating rounds: the change's effect from one run",
    )
    args = parser.parse_args()
    if args.before:
        PYTHONS["before"] = args.before
    for tool in ("memcached", "memcaslap"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install memcached libmemcached-tools")
            return 2
    os.chdir(tempfile.mkdtemp())
    throughput(args.rounds, args.seconds, args.only)
    if not args.only:
        memory(args.items)
    return 0


if __name__ == "__main__":
    sys.exit(main())
