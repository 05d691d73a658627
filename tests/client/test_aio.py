"""What only the trio client has: cancellation, and background tasks that live in the nursery
of ``async with`` (every other client test runs on both drivers, in test_client.py)."""

from __future__ import annotations

import pytest
import trio

from ringcache.client import AsyncClient, RingcacheError
from tests.proxy import Proxy

FAST = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1, "probe_max_interval": 0.5}


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


async def test_a_cancelled_fan_out_closes_every_connection_it_used(nodes):
    proxies = [Proxy(n.port, delay=0.3) for n in nodes]
    try:
        async with AsyncClient([p.location for p in proxies], timeout=3) as c:
            keys = [f"k{i}" for i in range(30)]
            assert await c.set_many(dict.fromkeys(keys, b"v")) == []
            with trio.move_on_after(0.1):
                await c.get_many(keys)
            await trio.sleep(0.4)
            assert await c.get_many(keys) == dict.fromkeys(keys, b"v")
    finally:
        for p in proxies:
            p.close()


def _task_names() -> list[str]:
    names = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


async def test_background_tasks_end_with_the_block(nodes):
    async with AsyncClient(
        [n.location for n in nodes], discovery=True, discovery_interval=0.05, **FAST
    ):
        # discovery, and the background rounds (debts are watched from the start)
        ours = sorted(n for n in _task_names() if n.startswith("ringcache-"))
        assert ours == ["ringcache-discovery", "ringcache-prober"]
    assert not [n for n in _task_names() if n.startswith("ringcache-")]


async def test_a_crashed_background_task_is_raised_from_the_block(nodes, monkeypatch):
    client = AsyncClient([nodes[0].location], discovery=True, discovery_interval=0.05, **FAST)

    def broken():
        raise ValueError("discovery bug")
        yield  # pragma: no cover - a generator, like the engine's operations

    with pytest.raises(RingcacheError) as raised:
        async with client:
            monkeypatch.setattr(client.engine, "discover", broken)
            await trio.sleep(5)  # cancelled by the crash, not waited out
    assert isinstance(raised.value.__cause__, ValueError)


async def test_the_blocks_own_exception_is_raised_as_itself(nodes):
    with pytest.raises(KeyError):
        async with AsyncClient([nodes[0].location], **FAST):
            raise KeyError("mine")


async def test_calls_outside_async_with_are_refused(nodes):
    client = AsyncClient([nodes[0].location], **FAST)
    with pytest.raises(RuntimeError, match="async with"):
        await client.get("k")


async def test_discovery_runs_no_thread(nodes, monkeypatch):
    def no_threads(*args, **kwargs):
        raise AssertionError("discovery ran blocking code in a thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_threads)
    async with AsyncClient(
        [nodes[0].location], discovery=True, discovery_interval=0.05, **FAST
    ) as c:
        await trio.sleep(0.2)
        assert await c.set("k", b"v") and await c.get("k") == b"v"


def test_the_same_client_runs_under_asyncio_and_uvloop(nodes):
    """``asyncio.run(main())`` with ``async with AsyncClient(...)``: the same class as under
    trio, on asyncio's own loop and on uvloop's."""
    import asyncio

    import uvloop

    async def main() -> dict:
        async with AsyncClient([n.location for n in nodes], **FAST) as c:
            assert await c.set("a", b"1") and await c.get("a") == b"1"
            assert await c.get_many(["a", "b"]) == {"a": b"1"}
            assert await c.get_or_set("g", lambda: b"computed") == b"computed"
            return c.node_stats()

    for factory in (None, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            stats = runner.run(main())
        assert all(s["failures"] == 0 for s in stats.values())


def test_outside_a_running_event_loop_the_error_says_so(nodes):
    client = AsyncClient([nodes[0].location], **FAST)
    with pytest.raises(RuntimeError, match="running event loop"):
        client.__aenter__().send(None)
