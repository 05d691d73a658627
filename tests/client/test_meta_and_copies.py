"""Meta-protocol operations (value + TTL + CAS in one round trip, CAS-guarded delete, classic
fallback detected once per node), copies that keep their TTL (replicas, warm-up), ``noreply``
and ``flags``, the serde's contract, and pooled connections a restarted node closed. Every
test runs on both drivers."""

from __future__ import annotations

import inspect
import os
import signal
import time

from ringcache.client import AsyncClient, Client
from tests.client.test_client import FAST, start_node_on_port
from tests.client.test_discovery import publish
from tests.conftest import RawClient, ServerProcess
from tests.proxy import NoMeta, Proxy


def remaining_ttl(server: ServerProcess | Proxy, key: str) -> int | None:
    """The TTL the server holds for ``key`` (-1 = never), asked with ``mg k t``; None if absent."""
    reply = RawClient(server.port).call(b"mg %s t\r\n" % key.encode())
    if reply.startswith(b"EN"):
        return None
    assert reply.startswith(b"HD t"), reply
    return int(reply.split()[1][1:])


def test_get_entry_reads_value_ttl_and_cas_in_one_round_trip(server, make_client):
    c = make_client([server.location], **FAST)
    assert c.set("k", {"v": 1}, expire=100) and c.set("forever", b"x")
    entry = c.get_entry("k")
    assert entry.value == {"v": 1}
    assert entry.cas is not None and entry.cas.isdigit()
    if isinstance(server, Proxy):  # a server without meta cannot say
        assert entry.ttl is None
        assert NoMeta.seen == 1 and c.node_stats()[server.location]["meta"] is False
    else:
        assert 98 <= entry.ttl <= 100
        assert c.get_entry("forever").ttl == 0  # as set takes it: never expires
        assert c.node_stats()[server.location]["meta"] is True
    assert c.get_entry("missing") is None
    assert c.cas("k", b"new", entry.cas) is True
    assert c.cas("k", b"newer", entry.cas) is False
    if isinstance(server, Proxy):
        assert NoMeta.seen == 1  # detected once per node, not per call


def test_delete_guarded_by_cas(server, make_client):
    c = make_client([server.location], **FAST)
    assert c.set("k", b"v1", expire=100)
    _, old = c.gets("k")
    assert c.set("k", b"v2", expire=100)
    assert c.delete("k", cas=old) is False  # changed since the token was read
    assert c.get("k") == b"v2"
    _, current = c.gets("k")
    assert c.delete("k", cas=current) is True
    assert c.get("k") is None
    assert c.delete("k", cas=current) is None  # not there
    assert c.get_many(["k"]) == {}


def test_noreply_and_flags_are_honoured(nodes, make_client):
    c = make_client([nodes[0].location], **FAST)
    assert c.set("quiet", b"v", noreply=True) is True
    assert c.set("flagged", b"raw", flags=7)
    assert c.delete("quiet", noreply=True) is True
    assert c.get("quiet") is None  # the noreply delete reached the node before this get
    reply = RawClient(nodes[0].port).call(b"get flagged\r\n", b"END\r\n")
    assert reply == b"VALUE flagged 7 3\r\nraw\r\nEND\r\n"
    assert c.set_many({"a": b"1", "b": b"2"}, noreply=True) == []
    assert c.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}


class TaggingSerde:
    """A serde that also tags flags-0 values, which pymemcache hands to deserialize too."""

    def serialize(self, key, value):
        return value, 0

    def deserialize(self, key, value, flags):
        return ("deserialized", value)


def test_deserialize_is_called_for_flags_zero(nodes, make_client):
    c = make_client([nodes[0].location], serde=TaggingSerde(), **FAST)
    assert c.set("k", b"v")
    assert c.get("k") == ("deserialized", b"v")
    assert c.get_many(["k"]) == {"k": ("deserialized", b"v")}


def test_replica_copies_keep_the_ttl_they_were_written_with(nodes, make_client):
    c = make_client([n.location for n in nodes], replicas=2, **FAST)
    holders = lambda key: [n for n in nodes if remaining_ttl(n, key) is not None]  # noqa: E731
    assert c.set("s", b"v", expire=60)
    assert c.add("a", b"v", expire=60)
    assert c.set("n", 5, expire=60) and c.incr("n", 3) == 8
    assert c.set("p", b"x", expire=60) and c.append("p", b"y")
    for key in ("s", "a", "n", "p"):
        copies = holders(key)
        assert len(copies) == 2, key
        assert all(0 < remaining_ttl(n, key) <= 60 for n in copies), key  # never immortal
    assert c.set_many({"m1": b"v", "m2": b"v"}, expire=60) == []
    assert c.set_many({"f1": b"v"}) == []
    for key in ("m1", "m2"):  # set_many's replica copies are not stand-ins: no failover cap
        assert all(30 < remaining_ttl(n, key) <= 60 for n in holders(key)), key
    assert [remaining_ttl(n, "f1") for n in holders("f1")] == [-1, -1]
    assert c.set("z", 1) and c.decr("z", 5) == 0
    assert [RawClient(n.port).call(b"get z\r\n", b"END\r\n") for n in holders("z")] == [
        b"VALUE z 2 1\r\n0\r\nEND\r\n"
    ] * 2  # a decr to 0 reaches the replica too, with its flags (2: an int)


def test_warm_up_reads_the_previous_owner_copies_nothing_and_honours_the_ttl(nodes, make_client):
    """During a move a miss on the new owner is read from the previous one; nothing is copied
    forward (an old value must not outlive a later write, delete or its TTL), writes and
    deletes remove the key from the previous owner, and a value past its TTL is gone."""
    old, new = nodes[:2], nodes
    publish(nodes, old, version=2)
    c = make_client([n.location for n in old], discovery=True, discovery_interval=0.05, **FAST)
    sync_view = Client([n.location for n in new])
    moving = [
        k
        for k in (f"code:{i}" for i in range(300))
        if str(sync_view.server_for(k)) == nodes[2].location
    ]
    sync_view.close()
    assert len(moving) > 10 and all(c.set(k, b"123456", expire=2) for k in moving)
    publish(nodes, new, version=3)  # a move begins: nothing has been copied yet
    deadline = time.monotonic() + 5
    while c.cluster_version < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.get(moving[0]) == b"123456"  # read from the previous owner
    assert c.get_many(moving[1:5]) == dict.fromkeys(moving[1:5], b"123456")
    assert remaining_ttl(nodes[2], moving[0]) is None  # no copy forward
    assert c.delete(moving[5]) and c.get(moving[5]) is None  # gone from both owners
    assert remaining_ttl(nodes[0], moving[5]) is None and remaining_ttl(nodes[1], moving[5]) is None
    assert c.set(moving[6], b"new", expire=60) and c.get(moving[6]) == b"new"
    assert [remaining_ttl(n, moving[6]) is not None for n in nodes] == [False, False, True]
    # A lease's placeholder on the previous owner is not a value, through warm-up either.
    assert c.delete(moving[11])
    before = Client([n.location for n in old])
    previous_owner = next(n for n in old if n.location == str(before.server_for(moving[11])))
    before.close()
    lease = RawClient(previous_owner.port).call(
        b"mg %s v c N30\r\n" % moving[11].encode(), b"\r\n\r\n"
    )
    assert lease.startswith(b"VA 0")
    assert c.get(moving[11]) is None and c.get_many([moving[11]]) == {}
    time.sleep(3.2)
    assert c.get(moving[7]) is None and c.get_many(moving[8:10]) == {}  # past their TTL


def test_a_pooled_connection_the_restarted_node_closed_is_replaced(nodes, make_client):
    c = make_client([nodes[0].location], **FAST)
    assert c.set("k", b"v") and c.get("k") == b"v"  # a connection is pooled
    os.kill(nodes[0].pid, signal.SIGKILL)
    nodes[0].proc.wait(5)
    restarted = start_node_on_port(nodes[0].port)
    try:
        assert c.set("k", b"again") and c.get("k") == b"again"
        assert c.node_stats()[nodes[0].location]["failures"] == 0
    finally:
        restarted.stop()


def test_both_clients_have_the_same_public_surface():
    def surface(cls):
        return {
            name: inspect.signature(getattr(cls, name))
            for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))
        }

    sync, trio_ = surface(Client), surface(AsyncClient)
    sync.pop("close")  # AsyncClient's is aclose
    trio_.pop("aclose")
    assert sync.keys() == trio_.keys()
    for name in sync:
        assert sync[name].parameters == trio_[name].parameters, name
