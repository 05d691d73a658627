"""The ``ringcache`` command and the Makefile against real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ringcache.client import Client, Ring, parse_location
from tests.conftest import free_port, free_ports

REPO = Path(__file__).resolve().parents[2]
RINGCACHE = [sys.executable, "-m", "ringcache.cluster.cli"]


def ringcache(run_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*RINGCACHE, "--run-dir", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def local(tmp_path):
    run_dir = tmp_path / "run"
    base = free_ports(3)
    ringcache(run_dir, "up", "--nodes", "3", "--port", str(base), "--memory", "16")
    yield run_dir, base
    ringcache(run_dir, "down", check=False)


def test_up_prints_location_and_caches(tmp_path):
    run_dir = tmp_path / "run"
    base = free_ports(2)
    try:
        out = ringcache(run_dir, "up", "--nodes", "2", "--port", str(base)).stdout
        assert f"LOCATION: 127.0.0.1:{base};127.0.0.1:{base + 1}" in out
        assert '"BACKEND": "ringcache.client.django.RingCache"' in out
        status = ringcache(run_dir, "status").stdout
        assert status.count(" up ") == 2 and f"127.0.0.1:{base + 1}" in status
    finally:
        assert "stopped 2 nodes" in ringcache(run_dir, "down").stdout


def test_stats_figures_match_what_was_done(local):
    run_dir, base = local
    locations = [f"127.0.0.1:{base + i}" for i in range(3)]
    client = Client(locations)
    keys = [f"k{i}" for i in range(30)]
    client.set_many(dict.fromkeys(keys, b"v" * 100))
    for k in keys[:20]:
        assert client.get(k) == b"v" * 100
    for i in range(10):
        assert client.get(f"missing{i}") is None
    client.close()
    data = json.loads(ringcache(run_dir, "stats", "--json").stdout)
    total = data["total"]
    assert total["items"] == 30
    assert total["get_hits"] == 20 and total["get_misses"] == 10
    assert total["hit_ratio"] == pytest.approx(20 / 30)
    assert total["limit"] == 3 * 16 * 1024 * 1024
    assert sum(n["items"] for n in data["nodes"]) == 30
    for node in data["nodes"]:
        gets = node["get_hits"] + node["get_misses"]
        assert node["hit_ratio"] == (node["get_hits"] / gets if gets else None)
    table = ringcache(run_dir, "stats").stdout
    assert "66.7%" in table and "total" in table


def test_stats_with_a_node_down(local):
    run_dir, base = local
    from ringcache.cluster import LocalCluster

    LocalCluster(run_dir).kill(base + 1)
    data = json.loads(ringcache(run_dir, "stats", "--json").stdout)
    ups = {n["node"]: n["up"] for n in data["nodes"]}
    assert ups[f"127.0.0.1:{base + 1}"] is False and sum(ups.values()) == 2
    assert "down" in ringcache(run_dir, "status").stdout


def test_locate_and_ring_agree_with_the_client(local):
    run_dir, base = local
    locations = [f"127.0.0.1:{base + i}" for i in range(3)]
    ring = Ring(parse_location(locations))
    out = ringcache(run_dir, "locate", "user:42").stdout
    order = list(ring.candidates(b"user:42"))
    assert f"→ {order[0]} " in out
    assert f"fallback order: {order[1]} → {order[2]}" in out
    shares = ringcache(run_dir, "ring").stdout
    assert "480 points" in shares
    for server, share in ring.shares().items():
        assert f"{share:.1%}" in shares and str(server) in shares


def test_location_option_works_against_memcached(memcached, tmp_path):
    out = ringcache(tmp_path, "--location", memcached.location, "stats", "--json").stdout
    data = json.loads(out)
    assert data["nodes"][0]["up"] is True and data["nodes"][0]["limit"] == 64 * 1024 * 1024


def test_no_cluster_is_a_clear_error(tmp_path):
    result = ringcache(tmp_path / "empty", "stats", check=False)
    assert result.returncode != 0 and "no local cluster is running" in result.stderr


def test_metrics_endpoint(local):
    run_dir, base = local
    port = free_port()
    proc = subprocess.Popen(
        [*RINGCACHE, "--run-dir", str(run_dir), "metrics", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        Client([f"127.0.0.1:{base}"]).get("nothing")
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        text = body.decode()
        assert f'ringcache_up{{node="127.0.0.1:{base}"}} 1.0' in text
        assert f'ringcache_get_misses_total{{node="127.0.0.1:{base}"}} 1.0' in text
        assert "ringcache_limit_bytes" in text
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to clone the repository")
def test_make_cluster_status_stats_down_from_a_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    # Reuse this checkout's virtualenv: a stamp newer than the clone's pyproject.toml.
    stamp = tmp_path / "installed"
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))
    base = free_ports(3)
    make = ["make", "-C", str(clone), f"VENV={Path(sys.executable).parent.parent}", f"STAMP={stamp}",
            f"PORT={base}", "MEMORY=16"]  # fmt: skip
    try:
        out = subprocess.run([*make, "cluster"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"LOCATION: 127.0.0.1:{base};127.0.0.1:{base + 1};127.0.0.1:{base + 2}" in out.stdout
        again = subprocess.run([*make, "cluster"], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0  # running twice starts no duplicates
        assert len(list((clone / ".run").glob("node-*.pid"))) == 3
        status = subprocess.run([*make, "status"], capture_output=True, text=True, timeout=60)
        assert status.stdout.count(" up ") == 3
        stats = subprocess.run([*make, "stats"], capture_output=True, text=True, timeout=60)
        assert "total" in stats.stdout
    finally:
        down = subprocess.run([*make, "down"], capture_output=True, text=True, timeout=60)
    assert "stopped 3 nodes" in down.stdout
