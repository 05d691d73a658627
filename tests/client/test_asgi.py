"""Django async views under a real ASGI server (uvicorn), on RingCache's async API: the
verification-code flow (``asgi_site``), and a node killed while requests keep coming — no
500s, the codes on the dead node are misses (403), never an error."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, start_node

pytest.importorskip("uvicorn", reason="uvicorn is a test dependency (pip install uvicorn)")
ROOT = Path(__file__).resolve().parents[2]


def post(port: int, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


@pytest.fixture
def site():
    nodes = [start_node() for _ in range(3)]
    port = free_port()
    env = {**os.environ, "RINGCACHE_TEST_LOCATION": ";".join(n.location for n in nodes)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.client.asgi_site:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                post(port, "/check/nobody")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(
                f"uvicorn did not start: {server.stderr.read(2000) if server.stderr else ''}"
            )
        yield port, nodes
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        for n in nodes:
            n.stop()


def test_verification_codes_under_uvicorn_with_a_node_killed(site):
    port, nodes = site
    statuses: dict[int, int] = {}
    for i in range(150):
        if i == 50:
            os.kill(nodes[1].pid, signal.SIGKILL)
            nodes[1].proc.wait(5)
        user = f"user{i}"
        status, code = post(port, f"/code/{user}")
        assert status == 200
        status, _ = post(port, f"/check/{user}", code)
        statuses[status] = statuses.get(status, 0) + 1
        assert post(port, f"/check/{user}", code)[0] == 403  # a code is good once
    print(f"\n[asgi] 150 verification rounds, one node killed after 50: {statuses}")
    assert set(statuses) <= {200, 403}  # misses only, never a 500
    assert statuses.get(200, 0) >= 140
