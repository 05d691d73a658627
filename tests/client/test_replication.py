"""replicas=2 on both drivers: every value on two nodes, reads fall back, killing any one
node loses nothing."""

from __future__ import annotations

import os
import signal

import pytest
from pymemcache.client.base import Client as Plain

from ringcache.client import Client

FAST = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1}


def holders(nodes, key: str) -> list[str]:
    return [n.location for n in nodes if Plain(n.address).get(key) is not None]


def test_writes_reach_owner_and_next_node(nodes, make_client):
    c = make_client([n.location for n in nodes], replicas=2, **FAST)
    keys = [f"k{i}" for i in range(60)]
    assert c.set_many(dict.fromkeys(keys, b"v")) == []
    for k in keys:
        expected = [str(s) for s in c.ring.candidates(c.key(k))][:2]
        assert sorted(holders(nodes, k)) == sorted(expected)
    assert c.delete("k1") and holders(nodes, "k1") == []
    c.delete_many(keys[2:10])
    assert all(holders(nodes, k) == [] for k in keys[2:10])


def test_arithmetic_and_conditional_writes_keep_copies_equal(nodes, make_client):
    c = make_client([n.location for n in nodes], replicas=2, **FAST)
    assert c.set("n", 10)
    assert c.incr("n", 5) == 15
    assert c.add("a", b"1") and not c.add("a", b"2")
    assert c.append("a", b"x")
    for key, expected in (("n", b"15"), ("a", b"1x")):
        copies = [Plain(n.address).get(key) for n in nodes]
        assert sorted(v for v in copies if v is not None) == [expected, expected]


@pytest.mark.parametrize("victim", [0, 1, 2])
def test_killing_any_one_node_loses_no_value(nodes, victim, make_client):
    c = make_client([n.location for n in nodes], replicas=2, **FAST)
    values = {f"user:{i}": i for i in range(300)}
    assert c.set_many(values) == []
    os.kill(nodes[victim].pid, signal.SIGKILL)
    nodes[victim].proc.wait(5)
    assert all(c.get(k) == v for k, v in values.items())  # every value, no exception
    assert c.get_many(values) == values
    assert c.delete("user:1") and c.get("user:1") is None


def test_replicas_must_be_positive(nodes):
    with pytest.raises(ValueError):
        Client([nodes[0].location], replicas=0)
