"""Adding and removing nodes moves the keys: hits survive, TTLs and flags too, newer writes win."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from pymemcache.client.base import Client as Plain

from ringcache.client import Client, Ring, parse_location
from ringcache.client.debts import index_of
from ringcache.cluster.rebalance import cluster_version, metadump, plan, publish, rebalance

RINGCACHE = [sys.executable, "-m", "ringcache.cluster.cli"]


def hit_ratio(locations: list[str], expected: dict[str, object]) -> float:
    client = Client(locations)
    got = client.get_many(list(expected))
    client.close()
    return sum(got.get(k) == v for k, v in expected.items()) / len(expected)


def fill(locations: list[str], n: int = 3000) -> dict[str, object]:
    client = Client(locations)
    values: dict[str, object] = {f"user:{i}": (i if i % 3 else f"v{i}") for i in range(n)}
    assert client.set_many(values) == []
    client.close()
    return values


def joining(lc, n: int = 400):
    """The members, the members and a node just started beside them (not yet a member), that
    node, and which of the keys k0..k<n-1> it will own."""
    old = parse_location(lc.locations())
    member = lc.add()
    new = [*old, parse_location(member.location)[0]]
    ring = Ring(new)
    owned = [f"k{i}" for i in range(n) if ring.get(f"k{i}".encode()).port == member.port]
    return old, new, member, owned


def test_add_keeps_the_hit_ratio(local_cluster):
    lc, base = local_cluster
    before = lc.locations()
    values = fill(before)
    plain_ring_loss = 1 - sum(
        Ring(parse_location(before)).get(k.encode())
        == Ring(parse_location([*before, f"127.0.0.1:{base + 3}"])).get(k.encode())
        for k in values
    ) / len(values)
    assert plain_ring_loss > 0.15  # what a ring change alone would cost
    result = subprocess.run(
        [*RINGCACHE, "--run-dir", str(lc.run_dir), "add", "--grace", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = lc.locations()
    assert len(after) == 4
    assert hit_ratio(after, values) >= 0.995
    assert cluster_version(parse_location(after)) >= 2
    assert "moved" in result.stdout


def test_remove_keeps_the_hit_ratio(local_cluster):
    lc, base = local_cluster
    values = fill(lc.locations())
    result = subprocess.run(
        [
            *RINGCACHE,
            "--run-dir",
            str(lc.run_dir),
            "remove",
            f"127.0.0.1:{base + 1}",
            "--grace",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = lc.locations()
    assert f"127.0.0.1:{base + 1}" not in after and len(after) == 2
    assert hit_ratio(after, values) >= 0.995
    assert lc.pid(base + 1) is None


def test_ttl_and_flags_move_with_the_key_and_leftovers_do_not_win(local_cluster):
    lc, _ = local_cluster
    old, new, new_member, moving = joining(lc)
    client = Client(lc.locations()[:3])
    client.set(moving[0], 12345, expire=1000)  # int: pymemcache flags 2
    client.set(moving[1], "old value")
    client.close()
    # A copy left on the new owner by an earlier membership: the value the application last
    # wrote (on the current owner) must win over it, not the other way round.
    Plain(("127.0.0.1", new_member.port)).set(moving[1], b"leftover")
    result = rebalance(old, new, grace=0)
    assert result["planned"] >= 2
    assert Client([str(s) for s in new]).get(moving[1]) == "old value"
    assert all(Plain(s.address).get(moving[1]) is None for s in old)  # nothing left behind
    assert Client([str(s) for s in new]).get(moving[0]) == 12345
    exp = {i.key: i.exp for i in metadump(new[-1])}[moving[0].encode()]
    assert 990 <= exp - time.time() <= 1001
    again = rebalance(old, new, grace=0)  # re-running after an interruption is harmless
    assert again["copied"] == 0


def test_a_joining_node_keeps_nothing_from_before_it_joined(local_cluster):
    # A node removed earlier (or restarted warm while out) still holds values from then. The
    # application has since deleted or replaced those keys on the members, or they were
    # evicted there: the plan, made from the members, does not name them, and the node's old
    # copies would be read once it owns the keys again.
    lc, _ = local_cluster
    old, new, member, owned = joining(lc)
    stale = Plain(("127.0.0.1", member.port))
    for k in owned[:20]:
        stale.set(k, b"from before")  # deleted on the members since: on no member now
    stale.set(b"elsewhere", b"from before")  # not its key in the new ring either
    stale.set(b"ringcache:move:drained:x", b"kept")  # the movers' own keys stay
    client = Client([str(s) for s in old])
    client.set(owned[20], "current")  # the one key the plan moves
    client.close()
    result = rebalance(old, new, grace=0)
    assert result["cleared"] == 21 and result["copied"] == 1
    after = Client([str(s) for s in new])
    assert after.get_many(owned[:21]) == {owned[20]: "current"}
    assert stale.get(b"elsewhere") is None
    assert stale.get(b"ringcache:move:drained:x") == b"kept"
    # A re-run (the membership is published: clients write to the node now) clears nothing.
    after.set(owned[0], "written since")
    again = rebalance(old, new, grace=0)
    assert again["cleared"] == 0 and after.get(owned[0]) == "written since"
    after.close()


def test_clients_warm_up_from_the_previous_owner_during_a_move(local_cluster):
    lc, _ = local_cluster
    old = parse_location(lc.locations())
    values = fill(lc.locations(), 500)
    new_member = lc.add()
    new = [*old, parse_location(new_member.location)[0]]
    client = Client([str(s) for s in old], discovery=True, discovery_interval=0.05)
    publish([*old, new[-1]], new, cluster_version(new) + 1)  # moving: nothing copied yet
    deadline = time.monotonic() + 3
    while len(client.servers) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(client.servers) == 4
    moved = [k for k in values if client.server_for(k).port == new_member.port]
    assert moved
    assert client.get(moved[0]) == values[moved[0]]  # read from the previous owner...
    assert Client([new_member.location]).get(moved[0]) is None  # ...not copied: the mover's job
    got = client.get_many(moved[1:20])
    assert got == {k: values[k] for k in moved[1:20]}
    client.close()


def test_plan_lists_exactly_the_keys_whose_owner_changes(local_cluster):
    lc, _ = local_cluster
    old = parse_location(lc.locations())
    values = fill(lc.locations(), 300)
    new = old[:2]
    moves = plan(old, new)
    moved = {it.key.decode() for m in moves for it in m.items}
    old_ring, new_ring = Ring(old), Ring(new)
    assert moved == {
        k for k in values if old_ring.get(k.encode()).name != new_ring.get(k.encode()).name
    }


async def test_trio_client_warms_up_during_a_move(local_cluster):
    from ringcache.client import AsyncClient

    lc, _ = local_cluster
    old = parse_location(lc.locations())
    values = fill(lc.locations(), 300)
    new_member = lc.add()
    new = [*old, parse_location(new_member.location)[0]]
    publish([*old, new[-1]], new, cluster_version(new) + 1)
    async with AsyncClient([str(s) for s in old], discovery=True, discovery_interval=0.05) as c:
        assert len(c.servers) == 4
        moved = [k for k in values if c.server_for(k).port == new_member.port]
        assert await c.get(moved[0]) == values[moved[0]]
        assert Plain(("127.0.0.1", new_member.port)).get(moved[0]) is None  # the mover copies
        assert await c.get_many(moved[1:10]) == {k: values[k] for k in moved[1:10]}


def test_no_key_is_copied_from_a_source_that_a_client_owes_a_replay(local_cluster):
    # A client that cannot reach a key's previous owner during a move deletes the key on its
    # new owner and journals the delete for the previous owner, after registering its debt
    # there (tests/client/test_engine.py). The previous owner still holds the old value: the
    # mover must not copy it to the new owner, where the next read would return a value the
    # application deleted.
    lc, _ = local_cluster
    old, new, new_member, moving = joining(lc, 2000)
    old_ring = Ring(old)
    src = old_ring.get(moving[0].encode())
    from_src = [k for k in moving if old_ring.get(k.encode()) == src]
    for k in from_src:
        Plain(src.address).set(k, b"old")
    other = next(s for s in old if s != src)
    debtor = b"host.1.abc"
    Plain(other.address).set(b"ringcache:debt:%s:%s" % (src.name.encode(), debtor), b"1", 3)
    Plain(other.address).add(index_of(src.name), debtor, noreply=False)
    result = rebalance(old, new, grace=0)
    assert result["owed"] == [str(src)] and result["copied"] == 0
    new_owner = Plain(("127.0.0.1", new_member.port))
    assert all(new_owner.get(k) is None for k in from_src)  # misses, never "old"
    # Once nobody owes it anything, a move copies from it again.
    Plain(other.address).delete(index_of(src.name))
    again = rebalance(old, new, grace=0)
    assert again["owed"] == [] and again["copied"] == len(from_src)
    assert all(new_owner.get(k) == b"old" for k in from_src)


def test_the_movers_lock_outlives_a_clear_longer_than_its_ttl(local_cluster, monkeypatch):
    # Listing the members' items and clearing a joining node's take seconds here (a re-added
    # 1 GB node: over a minute, at 60,000 items a second): the move renews its lock as it
    # goes, or a second mover could take it meanwhile.
    from ringcache.cluster import follow

    monkeypatch.setattr(follow, "LOCK_TTL", 2.0)  # memcached's whole seconds: 1 s lives 0-1 s
    lc, _ = local_cluster
    old, new, member, _ = joining(lc)
    ring = Ring(new)
    keys: dict[int, list[bytes]] = {s.port: [] for s in new}
    for i in range(250_000):  # the members' keys stay theirs: listed, not copied
        key = b"k:%d" % i
        keys[ring.get(key).port].append(key)
    keys[member.port] = [b"old:%d" % i for i in range(100_000)]
    for port, some in keys.items():
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"".join(b"set %s 0 0 1 noreply\r\nx\r\n" % k for k in some))
            s.sendall(b"version\r\n")
            s.settimeout(30)
            assert s.recv(100).startswith(b"VERSION")
    lock = follow.MoveLock(new, grace=0)
    assert lock.ttl == 2
    lock.try_acquire()
    started = time.monotonic()
    result = rebalance(old, new, grace=0, renew=lock.renew)
    assert result["cleared"] == 100_000 and result["copied"] == 0
    assert time.monotonic() - started > lock.ttl + 1  # long enough to lose an unrenewed lock
    holders = {Plain(s.address).get(follow.LOCK_KEY) for s in new}
    assert holders == {lock.owner.encode()}
    lock.release()
