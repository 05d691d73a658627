"""The trio client against real node processes: operations, fan-out, failures, cancellation."""

from __future__ import annotations

import os
import signal

import pytest
import trio
from pymemcache.client.base import Client as PymemcacheClient

from ringcache.client import AsyncClient, Client
from tests.client.test_client import FAST, keys_owned_by, start_node_on_port
from tests.proxy import Proxy


async def test_operations(nodes):
    async with AsyncClient([n.location for n in nodes], **FAST) as c:
        assert await c.set("k", b"v", expire=100)
        assert await c.get("k") == b"v"
        assert await c.get("missing", "d") == "d"
        assert await c.add("k", b"w") is False and await c.add("k2", b"w") is True
        assert await c.replace("k", b"x") and not await c.replace("nope", b"x")
        assert await c.append("k", b"y") and await c.prepend("k", b"w")
        assert await c.get("k") == b"wxy"
        value, token = await c.gets("k")
        assert value == b"wxy"
        assert await c.cas("k", b"z", token) is True
        assert await c.cas("k", b"q", token) is False
        assert await c.cas("absent", b"q", token) is None
        assert await c.set("n", 10)
        assert await c.incr("n", 5) == 15 and await c.decr("n", 20) == 0
        assert await c.incr("absent", 1) is None
        assert await c.touch("k", 10) and not await c.touch("absent", 10)
        assert await c.delete("k") and not await c.delete("k")
        assert await c.set("obj", {"a": (1, 2)}) and await c.get("obj") == {"a": (1, 2)}
        assert set((await c.version()).values()) == {b"1.6.18"}
        stats = await c.stats()
        assert len(stats) == 3 and all(b"curr_items" in s for s in stats.values())
        assert await c.flush_all() and await c.get("n") is None


async def test_interoperates_with_the_sync_client(nodes):
    locations = [n.location for n in nodes]
    sync = Client(locations, **FAST)
    async with AsyncClient(locations, **FAST) as c:
        values = {f"k{i}": {"i": i} for i in range(100)}
        assert await c.set_many(values) == []
        assert sync.get_many(values) == values
        sync.set("from-sync", [1, 2])
        assert await c.get("from-sync") == [1, 2]
        assert await c.get_many([*values, "missing"]) == values
        got = await c.gets_many(["k1"])
        assert got["k1"][0] == {"i": 1}
        assert await c.delete_many(list(values)[:50])
        assert len(await c.get_many(values)) == 50
    sync.close()


async def test_multi_key_fans_out_to_all_nodes_at_once(nodes):
    proxies = [Proxy(n.port, delay=0.3) for n in nodes]
    try:
        async with AsyncClient([f"127.0.0.1:{p.port}" for p in proxies], timeout=3) as c:
            keys = [f"k{i}" for i in range(60)]
            await c.set_many(dict.fromkeys(keys, 1))
            started = trio.current_time()
            assert len(await c.get_many(keys)) == 60
            assert trio.current_time() - started < 0.8
    finally:
        for p in proxies:
            p.close()


async def test_a_cancelled_call_leaves_no_reply_on_a_pooled_connection(nodes):
    proxy = Proxy(nodes[0].port, delay=0.3)
    try:
        async with AsyncClient([f"127.0.0.1:{proxy.port}"], timeout=3) as c:
            await c.set("a", b"first")
            await c.set("b", b"second")
            with trio.move_on_after(0.1) as scope:
                await c.get("a")  # its reply arrives after the cancellation
            assert scope.cancelled_caught
            await trio.sleep(0.4)  # the late reply is now sitting in the socket
            assert await c.get("b") == b"second"
            assert c.node_stats()[f"127.0.0.1:{proxy.port}"]["failures"] == 0
    finally:
        proxy.close()


async def test_killed_node_is_a_miss_then_ejected(nodes):
    async with AsyncClient([n.location for n in nodes], **FAST) as c:
        sync_view = Client([n.location for n in nodes])
        victim = nodes[1]
        keys = keys_owned_by(sync_view, victim)
        sync_view.close()
        for k in keys:
            assert await c.set(k, b"v")
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(5)
        assert await c.get(keys[0]) is None
        with trio.fail_after(1):
            while not (await c.set(keys[1], b"again") and await c.get(keys[1]) == b"again"):
                pass
        assert c.node_stats()[victim.location]["state"] == "ejected"
        got = await c.get_many(keys)
        assert got == {keys[1]: b"again"}


async def test_hung_node_bounds_every_call(nodes):
    async with AsyncClient([n.location for n in nodes], **FAST) as c:
        sync_view = Client([n.location for n in nodes])
        keys = keys_owned_by(sync_view, nodes[2], 5)
        sync_view.close()
        os.kill(nodes[2].pid, signal.SIGSTOP)
        try:
            for k in keys * 2:
                with trio.fail_after(1.0):
                    await c.set(k, b"v")
                with trio.fail_after(1.0):
                    await c.get(k)
            assert c.node_stats()[nodes[2].location]["state"] == "ejected"
        finally:
            os.kill(nodes[2].pid, signal.SIGCONT)


async def test_restarted_node_is_readmitted_by_the_prober(nodes):
    async with AsyncClient([n.location for n in nodes], **FAST) as c:
        victim = nodes[0]
        sync_view = Client([n.location for n in nodes])
        keys = keys_owned_by(sync_view, victim, 3)
        sync_view.close()
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(5)
        for k in keys:
            await c.get(k)
        assert c.node_stats()[victim.location]["state"] == "ejected"
        restarted = start_node_on_port(victim.port)
        try:
            with trio.fail_after(5):
                while c.node_stats()[victim.location]["state"] != "live":
                    await trio.sleep(0.05)
            assert await c.set(keys[0], b"back")
            assert PymemcacheClient(restarted.address).get(keys[0]) == b"back"
        finally:
            restarted.stop()


async def test_all_down_is_fast(nodes):
    async with AsyncClient([n.location for n in nodes], **FAST) as c:
        for n in nodes:
            os.kill(n.pid, signal.SIGKILL)
            n.proc.wait(5)
        with trio.fail_after(3):
            for i in range(30):
                assert await c.get(f"k{i}") is None
                assert await c.set(f"k{i}", 1) is False
            assert await c.get_many(["a", "b"]) == {}


async def test_raise_on_error(nodes):
    async with AsyncClient([nodes[0].location], raise_on_error=True, **FAST) as c:
        os.kill(nodes[0].pid, signal.SIGKILL)
        nodes[0].proc.wait(5)
        with pytest.raises(OSError):
            await c.get("k")
