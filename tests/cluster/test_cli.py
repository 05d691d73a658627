"""The ``ringcache`` command and the Makefile against real processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ringcache.client import Client, Ring, parse_location
from ringcache.cluster.local import answers
from tests.conftest import free_port, free_ports

REPO = Path(__file__).resolve().parents[2]
RINGCACHE = [sys.executable, "-m", "ringcache.cluster.cli"]


def ringcache(
    run_dir: Path | None, *args: str, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; ``run_dir=None``: no --run-dir (the environment decides)."""
    where = [] if run_dir is None else ["--run-dir", str(run_dir)]
    result = subprocess.run(
        [*RINGCACHE, *where, *args], capture_output=True, text=True, timeout=60, **kwargs
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
    result = ringcache(run_dir, "status", check=False)
    assert result.returncode == 1 and result.stdout.count(" down ") == 1


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
    assert result.returncode == 1 and "no local cluster is running" in result.stderr
    result = ringcache(tmp_path / "empty", "status", check=False)
    assert result.returncode == 1 and "no local cluster in" in result.stdout


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
    # The user's one state directory (XDG), as on a fresh machine: no --run-dir anywhere.
    env = {k: v for k, v in os.environ.items() if k != "RINGCACHE_RUN_DIR"}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return ringcache(None, *args, check=check, cwd=elsewhere, env=env)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*make, *args], capture_output=True, text=True, timeout=120, env=env)

    try:
        out = run("cluster")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"LOCATION: 127.0.0.1:{base};127.0.0.1:{base + 1};127.0.0.1:{base + 2}" in out.stdout
        assert '"OPTIONS": {"discovery": True}' in out.stdout
        again = run("cluster")
        assert again.returncode == 0 and "already running: 3 nodes" in again.stdout
        state = tmp_path / "state" / "ringcache"
        assert len(list(state.glob("node-*.pid"))) == 3 and not (clone / ".run").exists()
        assert run("status").stdout.count(" up ") == 3
        assert "total" in run("stats").stdout
        # From another directory, the same cluster: status, stats, add and remove.
        assert cli("status").stdout.count(" up ") == 3
        client = Client([f"127.0.0.1:{base + i}" for i in range(3)])
        client.set_many({f"k{i}": b"v" for i in range(300)})
        client.close()
        assert json.loads(cli("stats", "--json").stdout)["total"]["items"] == 300
        added = cli("add", "--grace", "0").stdout
        assert "membership version" in added
        assert cli("status").stdout.count(" up ") == 4
        cli("remove", f"127.0.0.1:{base}", "--grace", "0")
        data = json.loads(cli("stats", "--json").stdout)
        assert data["total"]["members"] == 3 and data["total"]["items"] == 300
        assert f"127.0.0.1:{base} " not in cli("status").stdout
    finally:
        down = run("down")
    assert "stopped 3 nodes" in down.stdout
    assert cli("status", check=False).returncode == 1


def test_up_never_changes_a_running_clusters_shape(local):
    run_dir, base = local
    members = json.loads((run_dir / "cluster.json").read_text())
    for args, asked in (
        (["--nodes", "4"], "4 nodes"),
        (["--port", str(base + 10)], f"the first port {base + 10}"),
        (["--memory", "32"], "32 MB each"),
    ):
        result = ringcache(run_dir, "up", *args, check=False)
        assert result.returncode == 1, result.stdout
        (line,) = result.stderr.splitlines()
        assert (
            f"asked for {asked}" in line and "ringcache add" in line and "ringcache remove" in line
        )
    assert json.loads((run_dir / "cluster.json").read_text()) == members
    assert ringcache(run_dir, "status").stdout.count(" up ") == 3
    same = ringcache(run_dir, "up", "--nodes", "3", "--port", str(base), "--memory", "16").stdout
    assert "already running: 3 nodes" in same and f"LOCATION: 127.0.0.1:{base};" in same
    from ringcache.cluster import LocalCluster

    LocalCluster(run_dir).kill(base + 2)
    restarted = ringcache(run_dir, "up").stdout
    assert f"started 1 of 3 nodes of 3 nodes (127.0.0.1:{base}-{base + 2}" in restarted
    assert ringcache(run_dir, "status").stdout.count(" up ") == 3


def test_a_failed_up_stops_what_it_started(tmp_path):
    run_dir = tmp_path / "run"
    base = free_ports(3)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base + 2))
        blocker.listen()
        result = ringcache(run_dir, "up", "--port", str(base), "--memory", "16", check=False)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert f"port {base + 2} on 127.0.0.1 is already in use by pid {os.getpid()}" in line
    assert not any(answers(base + i, timeout=0.2) for i in range(3))
    assert not (run_dir / "cluster.json").exists()
    assert ringcache(run_dir, "status", check=False).returncode == 1


def test_stale_and_foreign_state_are_said(local, tmp_path):
    run_dir, base = local
    from ringcache.cluster import LocalCluster
    from ringcache.cluster.local import Member

    # A second state directory that lists the ports the first one's nodes hold.
    other = LocalCluster(tmp_path / "other")
    other._save([Member(base + i, 16) for i in range(3)])
    result = ringcache(other.run_dir, "status", check=False)
    assert result.returncode == 1 and result.stdout.count(" foreign ") == 3
    pid = LocalCluster(run_dir).pid(base)
    assert f"127.0.0.1:{base} answers, but pid {pid} is not a node of {other.run_dir}" in " ".join(
        result.stdout.split()
    )
    started = ringcache(other.run_dir, "up", check=False)
    assert started.returncode == 1 and f"is already in use by pid {pid}" in started.stderr
    # The first directory's nodes all killed: its state is stale, and said to be.
    first = LocalCluster(run_dir)
    for i in range(3):
        first.kill(base + i)
    result = ringcache(run_dir, "status", check=False)
    assert result.returncode == 1 and result.stdout.count(" down ") == 3
    assert "stale state" in result.stdout


def test_status_says_when_the_nodes_publish_another_membership(local):
    run_dir, base = local
    everyone = ";".join(f"127.0.0.1:{base + i}" for i in range(3))
    assert "membership drift" not in ringcache(run_dir, "status").stdout
    two = f"127.0.0.1:{base};127.0.0.1:{base + 1}"
    ringcache(run_dir, "rebalance", "--location", everyone, "--to", two, "--grace", "0")
    result = ringcache(run_dir, "status", check=False)
    assert "membership drift: the nodes publish version" in " ".join(result.stdout.split())


def test_global_options_go_after_the_command_too(local, tmp_path):
    run_dir, base = local
    nowhere = tmp_path / "nowhere"
    location = f"127.0.0.1:{base + 1}"
    for args in (
        ["status", "--location", location, "--run-dir", str(nowhere)],
        ["--location", location, "status"],
    ):
        result = subprocess.run([*RINGCACHE, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert location in result.stdout and f"127.0.0.1:{base} " not in result.stdout
    data = json.loads(ringcache(nowhere, "stats", "--json", "--location", location).stdout)
    assert [n["node"] for n in data["nodes"]] == [location]
    assert ringcache(run_dir, "ring", "--run-dir", str(nowhere), check=False).returncode == 1


def test_version_and_short_help():
    out = subprocess.run([*RINGCACHE, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("ringcache 0.")
    for args in (["-h"], ["stats", "-h"]):
        out = subprocess.run([*RINGCACHE, *args], capture_output=True, text=True, timeout=60)
        assert (
            out.returncode == 0 and "Usage: ringcache" in out.stdout and "--location" in out.stdout
        )


def test_stats_counts_the_nodes_that_answer_and_exits_1_when_none_does(local):
    run_dir, base = local
    from ringcache.cluster import LocalCluster

    LocalCluster(run_dir).kill(base + 1)
    result = ringcache(run_dir, "stats")
    total = next(line for line in result.stdout.splitlines() if "total" in line)
    assert "2/3 up" in total
    assert json.loads(ringcache(run_dir, "stats", "--json").stdout)["total"]["answering"] == 2
    nobody = f"127.0.0.1:{free_port()}"
    result = ringcache(run_dir, "stats", "--location", nobody, check=False)
    assert result.returncode == 1 and "0/1 up" in result.stdout


def test_stats_watch_piped_and_as_json_lines(local):
    run_dir, base = local
    client = Client([f"127.0.0.1:{base + i}" for i in range(3)])
    client.set("k", b"v")
    client.close()
    out = ringcache(run_dir, "stats", "--watch", "--interval", "0.2", "--count", "3").stdout
    assert out.count("ringcache stats") == 3 and out.count("3/3 up") == 3
    assert "\x1b" not in out  # plain text when piped
    lines = ringcache(run_dir, "stats", "--watch", "--json", "--interval", "0.2", "--count", "2")
    docs = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(docs) == 2 and all(d["total"]["items"] == 1 for d in docs)
    assert docs[1]["time"] > docs[0]["time"]


# Every mistake: one line on stderr naming the bad value, a non-zero status, no traceback.
BAD = [
    (["up", "--nodes", "0"], 2, "Invalid value for '--nodes': 0"),
    (["up", "--port", "70000"], 2, "Invalid value for '--port': 70000"),
    (["up", "--memory", "1"], 2, "Invalid value for '--memory': 1"),
    (["up", "--nodes", "x"], 2, "Invalid value for '--nodes': 'x'"),
    (["status", "--bogus"], 2, "No such option '--bogus'"),
    (["--bogus", "status"], 2, "No such option '--bogus'"),
    (["nosuch"], 2, "No such command 'nosuch'"),
    (["status", "--location", "h:99999"], 2, "Invalid value for '--location': 'h:99999'"),
    (["stats", "--location", ";"], 2, "Invalid value for '--location': ';'"),
    (["stats", "--interval", "0"], 2, "Invalid value for '--interval': 0"),
    (["stats", "--watch", "--count", "0"], 2, "Invalid value for '--count': 0"),
    (["locate"], 2, "Missing argument 'KEY'"),
    (["locate", "a b"], 2, "Invalid value for 'KEY': 'a b'"),
    (["locate", "k" * 251], 2, "Invalid value for 'KEY'"),
    (["add", "nonsense"], 2, "'nonsense' is not PORT or HOST:PORT"),
    (["add", "127.0.0.2:11214"], 2, "127.0.0.2:11214: the local cluster's nodes listen on"),
    (["add", "LOCAL0"], 2, "127.0.0.1:LOCAL0 is already a member"),
    (["add", "--grace", "-1"], 2, "Invalid value for '--grace': -1"),
    (["remove"], 2, "Missing argument 'SERVER'"),
    (["remove", "127.0.0.1:1"], 2, "127.0.0.1:1 is not a member"),
    (["rebalance"], 2, "Missing option '--to'"),
    (["rebalance", "--to", ""], 2, "Invalid value for '--to': '': LOCATION names no server"),
    (["metrics", "--listen", "nonsense"], 2, "'nonsense' is not HOST:PORT"),
    (["metrics", "--listen", "127.0.0.1:LOCAL0"], 1, "cannot serve /metrics on 127.0.0.1:LOCAL0"),
    (["--ca", "/nonexistent.pem", "ping"], 2, "'/nonexistent.pem' does not exist"),
    (["ping", "--user", "someone"], 2, "username and password go together"),
    (["ping", "--authfile", "EMPTY"], 2, "has no entry"),
    (["up", "--nodes", "5"], 1, "up does not change its shape (asked for 5 nodes)"),
    (["ping", "--location", "127.0.0.1:1"], 1, ""),  # the reason is on stdout, per server
    (["--location", "127.0.0.1:1", "add", "127.0.0.1:2", "--grace", "0"], 1, "no server answers"),
]


@pytest.mark.parametrize(("args", "status", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_invocations(local, tmp_path, args, status, message):
    run_dir, base = local
    empty = tmp_path / "empty-authfile"
    empty.write_text("")
    args = [a.replace("LOCAL0", str(base)).replace("EMPTY", str(empty)) for a in args]
    result = ringcache(run_dir, *args, check=False)
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if message:
        (line,) = result.stderr.splitlines()
        assert message.replace("LOCAL0", str(base)) in line
        assert line.startswith("ringcache")
    assert ringcache(run_dir, "status").stdout.count(" up ") == 3  # nothing changed
