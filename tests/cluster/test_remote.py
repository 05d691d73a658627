"""Membership changes against a secured cluster on another host: nodes in a network namespace
of their own (``ip netns`` + veth, as root), so every connection the CLI makes reaches them
from a non-loopback address, as from another machine."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringcache.client import Client
from tests.conftest import REMOTE_SUBNET

HOST_IP = f"{REMOTE_SUBNET}.1"
NODE_IP = f"{REMOTE_SUBNET}.2"
RINGCACHE = [sys.executable, "-m", "ringcache.cluster.cli"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to make a network namespace (CI runs as root)",
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class RemoteHost:
    """A network namespace joined to this one by a veth pair; processes started in it are
    stopped by pid."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = f"rc-{tag}"
        self.veth = f"rcv{tag}"
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "p")
            _ip("link", "set", self.veth + "p", "netns", self.ns)
            _ip("addr", "add", f"{HOST_IP}/24", "dev", self.veth)
            _ip("link", "set", self.veth, "up")
            inside = ("netns", "exec", self.ns, "ip")
            _ip(*inside, "addr", "add", f"{NODE_IP}/24", "dev", self.veth + "p")
            _ip(*inside, "link", "set", self.veth + "p", "up")
            _ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def start_node(self, port: int, *flags: str) -> subprocess.Popen:
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "ringcache.node"]
        argv += ["-l", NODE_IP, "-p", str(port), *flags]
        with open(self.tmp / f"node-{port}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(proc)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((NODE_IP, port), timeout=0.5).close()
                return proc
            except OSError:
                assert proc.poll() is None, (self.tmp / f"node-{port}.err").read_text()
                assert time.monotonic() < deadline, "the node in the namespace did not start"
                time.sleep(0.05)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


@pytest.fixture
def remote(tmp_path):
    try:
        host = RemoteHost(tmp_path)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    yield host
    host.close()


def ringcache(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RINGCACHE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_add_and_remove_on_a_secured_remote_cluster(remote, tls_files, tmp_path):
    authfile = tmp_path / "authfile"
    authfile.write_text("admin:correct-horse\napp:battery-staple\n")
    flags = [*tls_files.server_flags(), "-Y", str(authfile)]
    ports = [21211, 21212, 21213, 21214]
    for port in ports:
        remote.start_node(port, *flags)
    old = ";".join(f"{NODE_IP}:{p}" for p in ports[:3])
    new_member = f"{NODE_IP}:{ports[3]}"
    app = {"tls": tls_files.client_context(), "username": "app", "password": "battery-staple"}
    client = Client(old, raise_on_error=True, timeout=5, connect_timeout=5, **app)
    written = {f"key-{i}": f"value-{i}" for i in range(1500)}
    assert client.set_many(written) == []

    # Without TLS the nodes cannot even be read; with TLS but no login they refuse it.
    plain = ringcache("--location", old, "add", new_member, "--grace", "0.1")
    assert plain.returncode != 0
    anonymous = ringcache("--location", old, "--ca", tls_files.ca_cert, "add", new_member)
    assert anonymous.returncode != 0 and "unauthenticated" in anonymous.stderr
    assert "--user/--password" in anonymous.stderr

    secured = {
        "RINGCACHE_CA": tls_files.ca_cert,
        "RINGCACHE_USER": "admin",
        "RINGCACHE_PASSWORD": "correct-horse",
    }
    added = ringcache("--location", old, "add", new_member, "--grace", "0.2", env=secured)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "moved" in added.stdout
    stats = ringcache("--location", f"{old};{new_member}", "stats", "--json", env=secured)
    figures = __import__("json").loads(stats.stdout)
    assert all(row["up"] for row in figures["nodes"]) and figures["total"]["items"] == 1500
    assert figures["nodes"][3]["items"] > 0

    grown = Client(f"{old};{new_member}", raise_on_error=True, timeout=5, **app)
    assert grown.get_many(list(written)) == written  # every key where the new ring puts it

    removed = ringcache(
        "--location", f"{old};{new_member}", "--tls", "--ca", tls_files.ca_cert,
        "--user", "admin", "--password", "correct-horse",
        "remove", f"{NODE_IP}:{ports[0]}", "--grace", "0.2",
    )  # fmt: skip
    assert removed.returncode == 0, removed.stdout + removed.stderr
    shrunk = Client(";".join(f"{NODE_IP}:{p}" for p in ports[1:]), raise_on_error=True, **app)
    assert shrunk.get_many(list(written)) == written
    # A client that discovers picks the membership up from a node, through TLS and its login.
    follower = Client(new_member, discovery=True, **app)
    assert sorted(s.port for s in follower.servers) == ports[1:]
    for c in (client, grown, shrunk, follower):
        c.close()


def test_an_unauthenticated_remote_peer_cannot_change_membership(remote):
    port = 21311
    remote.start_node(port)
    with socket.create_connection((NODE_IP, port), timeout=5) as sock:
        sock.sendall(b"config set cluster a|10.0.0.9|11211\r\nconfig get cluster\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"CLIENT_ERROR config set cluster is only accepted from loopback")
    assert b"CONFIG cluster 0 3\r\n0\n\n\r\nEND\r\n" in reply
