"""A warm restart (``-e <file>`` on /dev/shm, SIGUSR1, the same flags again) of a node holding
about 1 GB of items, against Debian's memcached doing the same in the same run: seconds from
SIGUSR1 to the process's exit (the graceful stop), from the new start to the first answer, and
the share of the items that came back.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time

from tests.conftest import (
    MEMCACHED,
    ServerProcess,
    free_port,
    start_again,
    start_memcached,
    start_node,
)


def fill(port: int, count: int, size: int) -> None:
    value = b"v" * size
    batch = 2000
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for start in range(0, count, batch):
            payload = b"".join(
                b"ms k%d %d q\r\n%s\r\n" % (i, size, value)
                for i in range(start, min(count, start + batch))
            )
            sock.sendall(payload + b"mn\r\n")
            reply = b""
            while not reply.endswith(b"MN\r\n"):
                reply += sock.recv(65536)
            if reply != b"MN\r\n":
                raise RuntimeError(f"unexpected reply while filling: {reply[:80]!r}")


def curr_items(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"stats\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            reply += sock.recv(65536)
    for line in reply.decode().split("\r\n"):
        if line.startswith("STAT curr_items "):
            return int(line.split()[2])
    raise RuntimeError("no curr_items")


def measure(kind: str, folder: str, megabytes: int, count: int, size: int) -> dict[str, float]:
    memory = os.path.join(folder, f"{kind}.memory")
    args = ["-e", memory, "-m", str(megabytes)]
    if kind == "node":  # a port of its own, so that the same command line restarts it there
        server: ServerProcess = start_node("-p", str(free_port()), *args)
    else:
        server = start_memcached(*args)
    try:
        fill(server.port, count, size)
        items = curr_items(server.port)
        started = time.perf_counter()
        server.proc.send_signal(signal.SIGUSR1)
        server.proc.wait(timeout=600)
        stopped = time.perf_counter() - started
        now = time.time()
        time.sleep(int(now) + 1.05 - now)  # the clock must move on (memcached's rule)
        started = time.perf_counter()
        server = start_again(server)
        answered = time.perf_counter() - started
        back = curr_items(server.port)
    finally:
        server.stop()
        for path in (memory, memory + ".meta"):
            if os.path.exists(path):
                os.unlink(path)
    return {"items": items, "stop": stopped, "start": answered, "back": back / items}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=1100, help="-m of both servers")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=900, help="bytes per value")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="ringcache-warm-", dir="/dev/shm")
    kinds = ["node"] + (["memcached"] if MEMCACHED else [])
    results = {k: measure(k, folder, args.megabytes, args.items, args.size) for k in kinds}
    os.rmdir(folder)
    print(f"warm restart, -m {args.megabytes}, {args.items:,} values of {args.size} bytes:")
    print(f"{'':>10} {'items':>10} {'stop s':>8} {'start s':>8} {'back':>7}")
    for kind, r in results.items():
        line = f"{kind:>10} {r['items']:>10,} {r['stop']:>8.2f} {r['start']:>8.2f}"
        print(f"{line} {r['back']:>7.1%}")
    if "memcached" in results:
        node, mc = results["node"], results["memcached"]
        print(f"node/memcached: stop {node['stop'] / max(mc['stop'], 1e-3):.1f}x, "
              f"start {node['start'] / max(mc['start'], 1e-3):.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
