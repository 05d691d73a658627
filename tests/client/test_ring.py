"""Placement: LOCATION parsing, and agreement with pylibmc (libmemcached) and nutcracker."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pylibmc
import pytest
from pymemcache.client.base import Client as PymemcacheClient

from ringcache.client.ring import Ring, Server, parse_location, parse_server
from tests.conftest import free_port, wait_port

KEYS = [f"key:{i}" for i in range(400)] + ["ü-ñ", "a" * 250, "user:42", "x"]


@pytest.mark.parametrize(
    "location,expected",
    [
        ("10.0.0.1:11211", [Server("10.0.0.1", 11211)]),
        ("10.0.0.1", [Server("10.0.0.1", 11211)]),
        ("a:1;b:2", [Server("a", 1), Server("b", 2)]),
        ("a:1,b:2", [Server("a", 1), Server("b", 2)]),
        (" a:1 ; b:2 ;", [Server("a", 1), Server("b", 2)]),
        (["a:1", "b:2:3"], [Server("a", 1), Server("b", 2, weight=3)]),
        ({"a:1": 2, "b": 1}, [Server("a", 1, weight=2), Server("b", 11211)]),
        ("[::1]:11300", [Server("::1", 11300)]),
        ("[::1]", [Server("::1", 11211)]),
        ("unix:/tmp/mc.sock", [Server("", 0, unix="/tmp/mc.sock")]),
    ],
)
def test_parse_location(location, expected):
    assert parse_location(location) == expected


@pytest.mark.parametrize("bad", ["", ";", "a:x", "a:1:2:3", "[::1", "a:0", "a:70000", "a:1,a:1"])
def test_parse_location_rejects(bad):
    with pytest.raises(ValueError):
        parse_location(bad)


def test_names_follow_libmemcached():
    assert parse_server("10.0.0.1:11211").name == "10.0.0.1"
    assert parse_server("10.0.0.1:11212").name == "10.0.0.1:11212"
    assert parse_server("[::1]:11212").name == "[::1]:11212"
    assert str(parse_server("10.0.0.1")) == "10.0.0.1:11211"


def test_points_and_shares():
    ring = Ring(parse_location(["a:1", "b:1", "c:1"]))
    assert ring.points == 480
    shares = ring.shares()
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert all(0.2 < v < 0.5 for v in shares.values())
    weighted = Ring(parse_location(["a:1:3", "b:1:1"]))
    assert weighted.shares()[Server("a", 1, weight=3)] > 0.6


def test_candidates_are_owner_then_distinct_servers():
    ring = Ring(parse_location(["a:1", "b:1", "c:1", "d:1"]))
    for key in (b"x", b"y", b"zzz"):
        order = list(ring.candidates(key))
        assert order[0] == ring.get(key)
        assert sorted(s.name for s in order) == ["a:1", "b:1", "c:1", "d:1"]


def test_a_hash_exactly_on_a_point_goes_to_that_point():
    ring = Ring(parse_location(["a:1", "b:1", "c:1"]))
    points = ring._points
    owners = [ring.servers[i] for i in ring._owner_index]
    for i in range(0, len(points) - 1, 7):
        assert ring.owner_of_hash(points[i]) == owners[i]
        assert ring.owner_of_hash(points[i] + 1) == owners[i + 1]
    assert ring.owner_of_hash(points[-1] + 1) == owners[0]  # wraps around


def placement_on(nodes, keys) -> dict[str, str]:
    """Which node holds each key (read back directly from every node)."""
    where = {}
    for node in nodes:
        c = PymemcacheClient(node.address, allow_unicode_keys=True)
        for key in keys:
            if c.get(key) is not None:
                where[key] = node.location
        c.flush_all()
        c.close()
    return where


def expected_placement(locations: list[str], keys) -> dict[str, str]:
    ring = Ring(parse_location(locations))
    return {k: str(ring.get(k.encode())) for k in keys}


def assert_pylibmc_agrees(nodes) -> None:
    """pylibmc (ketama_weighted) stores KEYS; each must be where our ring says."""
    locations = [n.location for n in nodes]
    mc = pylibmc.Client(locations, behaviors={"ketama_weighted": True})
    for k in KEYS:
        mc.set(k, "x")
    mc.disconnect_all()
    assert placement_on(nodes, KEYS) == expected_placement(locations, KEYS)


def test_same_servers_as_pylibmc_ketama_weighted(nodes):
    assert_pylibmc_agrees(nodes)


def test_same_servers_as_pylibmc_with_weights(nodes):
    weights = [1, 2, 5]
    locations = [n.location for n in nodes]
    mc = pylibmc.Client(
        [f"{loc}:{w}" for loc, w in zip(locations, weights, strict=True)],
        behaviors={"ketama_weighted": True},
    )
    for k in KEYS:
        mc.set(k, "x")
    mc.disconnect_all()
    ring = Ring(parse_location({loc: w for loc, w in zip(locations, weights, strict=True)}))
    assert placement_on(nodes, KEYS) == {k: str(ring.get(k.encode())) for k in KEYS}


def start_on(host: str, port: int):
    """A node on a given address (for the port-11211 naming rule)."""
    import os
    import signal
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "ringcache.node", "-l", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    class Handle:
        location = f"{host}:{port}"
        address = (host, port)

        def stop(self) -> None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)

    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"cannot listen on {host}:{port}")
            time.sleep(0.05)
    return Handle()


def test_same_servers_as_pylibmc_on_port_11211():
    nodes = [start_on(f"127.0.0.{i}", 11211) for i in (2, 3, 4)]
    try:
        assert_pylibmc_agrees(nodes)
    finally:
        for n in nodes:
            n.stop()


def run_nutcracker(servers: list[str]):
    binary = shutil.which("nutcracker")
    if binary is None:
        pytest.skip("nutcracker is not installed (apt-get install nutcracker); CI installs it")
    port = free_port()
    conf = Path(tempfile.mkdtemp()) / "nutcracker.yml"
    lines = [
        "pool:",
        f"  listen: 127.0.0.1:{port}",
        "  hash: md5",
        "  distribution: ketama",
        "  auto_eject_hosts: false",
        "  servers:",
        *[f"   - {s}:1" for s in servers],
    ]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-s", str(free_port()), "-a", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, port


@pytest.mark.parametrize("on_11211", [False, True], ids=["custom ports", "port 11211"])
def test_same_servers_as_nutcracker(on_11211, nodes):
    nodes = [start_on(f"127.0.0.{i}", 11211) for i in (5, 6, 7)] if on_11211 else nodes
    locations = [n.location for n in nodes]
    proc, port = run_nutcracker(locations)
    try:
        proxy = PymemcacheClient(("127.0.0.1", port), timeout=5, allow_unicode_keys=True)
        for k in KEYS:
            assert proxy.set(k, b"x", noreply=False)
        proxy.close()
        assert placement_on(nodes, KEYS) == expected_placement(locations, KEYS)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if on_11211:
            for n in nodes:
                n.stop()


def test_the_route_cache_places_keys_as_the_ring_does():
    """Multi-key calls route hot keys from a cache; it must agree with the ring, first time and
    cached, also after it filled up and was emptied."""
    from ringcache.client import Client
    from ringcache.client.membership import ROUTE_CACHE_SIZE

    c = Client(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11212"], key_prefix="p:")
    keys = [f"user:{i}" for i in range(ROUTE_CACHE_SIZE + 1000)]
    for _ in range(2):
        groups, originals, _ = c.engine.membership.group(keys)
        for node, ks in groups.items():
            assert all(c.ring.get(k).name == node.server.name for k in ks)
        assert len(originals) == len(keys)
        assert 0 < len(c.engine.membership.view.routes) <= ROUTE_CACHE_SIZE
    assert c.engine.membership.owner("user:7") == (
        b"p:user:7",
        c.nodes[c.ring.get(b"p:user:7").name],
    )
    c.close()
