"""A ``dnssrv+`` and a ``dns+`` LOCATION against a real DNS server (dnsmasq) naming nodes on
addresses of their own (127.0.0.x), rewritten as a StatefulSet would change: on every driver.
"""

from __future__ import annotations

import time

import pytest

from ringcache.client import protocol
from ringcache.client.ring import Ring, Server
from tests.conftest import RawClient, free_ports, start_node
from tests.dnsserver import DNSMASQ, SERVICE, SRV_NAME, Dnsmasq

pytestmark = pytest.mark.skipif(
    DNSMASQ is None, reason="dnsmasq (Debian's dnsmasq-base) is not installed; CI installs it"
)
FAST = {"dns_interval": 0.2, "discovery_interval": 0.2, "probe_interval": 0.05}


@pytest.fixture
def statefulset(tmp_path):
    """Three pods: ``ringcache-i`` on 127.0.0.(11+i), each on a port of its own."""
    base = free_ports(6)
    dnsmasq = Dnsmasq(tmp_path)
    pods: dict[str, object] = {}

    def run(name: str, ip: str) -> None:
        port = base + int(name.rsplit("-", 1)[1])
        pods[name] = start_node("-p", str(port), host=ip)

    for i in range(3):
        run(f"ringcache-{i}", f"127.0.0.{11 + i}")

    def publish() -> None:
        dnsmasq.serve({n: (p.host, p.port) for n, p in pods.items()})

    publish()
    yield pods, run, publish, dnsmasq
    dnsmasq.stop()
    for pod in pods.values():
        pod.stop()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def names(pods) -> list[Server]:
    return [Server(f"{n}.{SERVICE}", p.port) for n, p in sorted(pods.items())]


def test_dnssrv_places_keys_by_pod_name_and_follows_a_new_address(statefulset, make_client):
    pods, run, publish, dnsmasq = statefulset
    client = make_client(f"dnssrv+{SRV_NAME}", dns_nameservers=dnsmasq.nameserver, **FAST)
    ring = Ring(names(pods))
    keys = [f"user:{i}" for i in range(300)]
    assert client.set_many({k: k.encode() for k in keys}) == []
    by_pod = {n: RawClient(p.port, host=p.host) for n, p in pods.items()}
    for k in keys[:60]:  # each key is on the pod its *name* owns on the ring
        owner = ring.get(k.encode()).host.split(".")[0]
        assert by_pod[owner].call(b"get %s\r\n" % k.encode(), b"END\r\n").startswith(b"VALUE")
    for raw in by_pod.values():
        raw.close()
    # ringcache-1 comes back (empty) at another address; DNS says so.
    moved = [k for k in keys if ring.get(k.encode()).host.startswith("ringcache-1.")]
    pods["ringcache-1"].stop()
    run("ringcache-1", "127.0.0.21")
    publish()
    peer = client.engine.peers[names(pods)[1].name]
    address = ("127.0.0.21", pods["ringcache-1"].port)
    # Re-addressed by DNS, probed and re-admitted (with the recovery rules of a return).
    wait_for(lambda: peer.server.address == address and peer.health.usable)
    assert client.get(moved[0]) is None  # it came back empty
    assert client.set(moved[1], b"new")
    raw = RawClient(pods["ringcache-1"].port, host="127.0.0.21")
    assert raw.call(b"get %s\r\n" % moved[1].encode(), b"END\r\n").startswith(b"VALUE")
    raw.close()
    # Every key the other pods hold is still a hit: the ring did not change.
    kept = [k for k in keys if k not in moved]
    assert client.get_many(kept) == {k: k.encode() for k in kept}


def test_dns_changes_wait_for_a_published_membership_and_failures_keep_it(statefulset, make_client):
    pods, run, publish, dnsmasq = statefulset
    client = make_client(f"dnssrv+{SRV_NAME}", dns_nameservers=dnsmasq.nameserver, **FAST)
    keys = [f"k{i}" for i in range(200)]
    assert client.set_many(dict.fromkeys(keys, b"v")) == []
    run("ringcache-3", "127.0.0.14")  # scaled to 4: DNS lists it, nothing published yet
    publish()
    time.sleep(1.0)  # five DNS rounds
    assert client.get_many(keys) == dict.fromkeys(keys, b"v")
    assert len(client.engine.peers) == 3
    # The membership is published (as `ringcache follow` does after moving the keys).
    four = names(pods)
    for pod in pods.values():
        raw = RawClient(pod.port, host=pod.host)
        assert raw.call(protocol.config_set(2, four)) == b"OK\r\n"
        raw.close()
    wait_for(lambda: len(client.engine.peers) == 4)
    port = pods["ringcache-3"].port
    peer = client.engine.peers[f"ringcache-3.{SERVICE}:{port}"]
    assert peer.server.address == ("127.0.0.14", port)
    assert client.get_many(keys[:50]).keys() <= set(keys)
    # DNS goes away: what is known stays, and works.
    dnsmasq.stop()
    time.sleep(0.6)
    assert client.set("after", b"dns") and client.get("after") == b"dns"
    assert len(client.engine.peers) == 4


def test_dns_a_records_name_the_servers_by_address(statefulset, make_client):
    pods, _, _, dnsmasq = statefulset
    port = pods["ringcache-0"].port
    # dns+ gives addresses on one port: only ringcache-0's address has a node on it.
    client = make_client(f"dns+{SERVICE}:{port}", dns_nameservers=dnsmasq.nameserver, **FAST)
    assert sorted(client.engine.peers) == [f"127.0.0.{11 + i}:{port}" for i in range(3)]
    assert client.engine.options.discovery is True


def test_more_pods_than_a_datagram_carries_are_read_over_tcp(tmp_path, make_client):
    dnsmasq = Dnsmasq(tmp_path)
    try:
        dnsmasq.serve({f"ringcache-{i}": (f"127.0.1.{i + 1}", 11211) for i in range(40)})
        client = make_client(f"dnssrv+{SRV_NAME}", dns_nameservers=dnsmasq.nameserver, **FAST)
        assert len(client.engine.peers) == 40  # a UDP answer holds about ten of them
        assert client.engine.peers[f"ringcache-39.{SERVICE}"].server.ip == "127.0.1.40"
    finally:
        dnsmasq.stop()
