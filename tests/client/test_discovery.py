"""Versioned membership: clients adopt a newer `config get cluster` without a restart."""

from __future__ import annotations

import time

import trio
from pymemcache.client.base import Client as PymemcacheClient

from ringcache.client import AsyncClient, Client
from tests.conftest import RawClient

FAST = {"connect_timeout": 0.3, "timeout": 0.3, "discovery": True, "discovery_interval": 0.1}


def publish(nodes, members, version: int | None = None) -> None:
    entries = " ".join(f"{n.address[0]}|{n.address[0]}|{n.port}" for n in members)
    prefix = f"version={version} " if version else ""
    for n in nodes:
        assert (
            RawClient(n.port).call(f"config set cluster {prefix}{entries}\r\n".encode())
            == b"OK\r\n"
        )


def test_sync_client_adopts_a_new_member(nodes):
    publish(nodes, nodes[:2], version=5)
    client = Client([nodes[0].location], **FAST)
    assert client.cluster_version == 5  # seeded from LOCATION, then discovered at once
    assert sorted(str(s) for s in client.servers) == sorted(n.location for n in nodes[:2])
    publish(nodes, nodes, version=6)
    deadline = time.monotonic() + 3
    while len(client.servers) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client.servers) == 3 and client.cluster_version == 6
    keys = [f"k{i}" for i in range(60)]
    assert client.set_many(dict.fromkeys(keys, b"v")) == []
    third = [k for k in keys if str(client.server_for(k)) == nodes[2].location]
    assert third and all(PymemcacheClient(nodes[2].address).get(k) == b"v" for k in third)
    assert not client.engine.membership.adopt(4, client.servers[:1])  # older: ignored
    assert len(client.servers) == 3
    client.close()


def test_health_survives_a_membership_change(nodes):
    publish(nodes, nodes[:2], version=1)
    client = Client([nodes[0].location], **FAST)
    node = client.nodes[nodes[0].location]
    node.health.failed()
    publish(nodes, nodes, version=2)
    deadline = time.monotonic() + 3
    while client.cluster_version < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.cluster_version == 2
    assert client.nodes[nodes[0].location] is node  # same health, pool and counters
    client.close()


async def test_trio_client_adopts_a_new_member(nodes):
    publish(nodes, nodes[:2], version=3)
    async with AsyncClient([nodes[0].location], **FAST) as client:
        assert client.cluster_version == 3 and len(client.servers) == 2
        publish(nodes, nodes, version=4)
        with trio.fail_after(3):
            while len(client.servers) < 3:
                await trio.sleep(0.05)
        assert await client.set("x", 1) and await client.get("x") == 1


def test_without_discovery_location_is_final(nodes):
    publish(nodes, nodes, version=9)
    client = Client([nodes[0].location])
    time.sleep(0.2)
    assert len(client.servers) == 1 and client.cluster_version == 0
    client.close()
