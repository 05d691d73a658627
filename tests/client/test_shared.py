"""asyncio's shared connections (``pool.Lanes``, ``aio._Shared``): calls in flight together
share a connection (counted on the node), each call gets the reply to its own request, a
cancelled call leaves the connection in step, more calls than ``DEPTH`` open another connection
(at most ``pool_size``), and bytes nobody asked for cost the connection, never an answer."""

from __future__ import annotations

import asyncio
import socket
import threading

from ringcache.client import AsyncClient
from ringcache.client.pool import DEPTH
from tests.client.conftest import total_connections
from tests.proxy import Proxy


def test_calls_in_flight_together_share_one_connection_and_get_their_own_replies(nodes):
    node = nodes[0]
    wrong: list[tuple[int, int, object]] = []

    async def main() -> None:
        async with AsyncClient([node.location], agreement=False) as c:

            async def writer_reader(n: int) -> None:
                for i in range(60):
                    value = f"{n}:{i}".encode()
                    assert await c.set(f"k{n}", value)
                    got = await c.get(f"k{n}")
                    if got != value:
                        wrong.append((n, i, got))
                    many = await c.get_many([f"k{n}", f"absent{n}"])
                    if many != {f"k{n}": value}:
                        wrong.append((n, i, many))

            await asyncio.gather(*(writer_reader(n) for n in range(16)))

    before = total_connections(node.port)
    asyncio.run(main())
    opened = total_connections(node.port) - before - 1  # less this query's own
    assert wrong == []
    assert opened == 1  # 16 tasks, 2,880 calls; a pool of exclusive connections opens 16


def test_more_calls_than_depth_open_another_connection_up_to_pool_size(nodes):
    node = nodes[0]
    calls = 3 * DEPTH + 10

    async def main() -> list[object]:
        async with AsyncClient([node.location], agreement=False, pool_size=3) as c:
            await c.set_many({f"d{i}": f"v{i}".encode() for i in range(calls)})
            return await asyncio.gather(*(c.get(f"d{i}") for i in range(calls)))

    before = total_connections(node.port)
    got = asyncio.run(main())
    opened = total_connections(node.port) - before - 1
    assert got == [f"v{i}".encode() for i in range(calls)]
    assert 2 <= opened <= 3, opened


def test_a_cancelled_call_leaves_its_reply_to_be_read_and_dropped(nodes):
    proxy = Proxy(nodes[0].port, delay=0.3)

    async def main() -> tuple[object, object, int]:
        async with AsyncClient([proxy.location], timeout=3, agreement=False) as c:
            await c.set("a", b"first")
            await c.set("b", b"second")
            cancelled = asyncio.create_task(c.get("a"))
            other = asyncio.create_task(c.get("b"))  # sent right after "a", same connection
            await asyncio.sleep(0.1)
            cancelled.cancel()
            b = await other  # the reply to "a" comes first and is not b's
            a = await c.get("a")
            return a, b, c.node_stats()[proxy.location]["failures"]

    try:
        before = total_connections(nodes[0].port)
        a, b, failures = asyncio.run(main())
        opened = total_connections(nodes[0].port) - before - 1
    finally:
        proxy.close()
    assert (a, b, failures) == (b"first", b"second", 0)
    assert opened == 1  # the cancellation did not cost the connection


class Chatty:
    """A server on 127.0.0.1 that answers every ``get <key>`` with the value ``<key>!``, and on
    its first connection sends after that first reply a whole reply nobody asked for."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            t = threading.Thread(target=self._serve, args=(conn, self.accepted == 1), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, chatty: bool) -> None:
        conn.settimeout(0.05)
        data = b""
        with conn:
            while not self.stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                data += chunk
                while b"\r\n" in data:
                    line, data = data.split(b"\r\n", 1)
                    key = line.split()[1]
                    value = key + b"!"
                    reply = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value)
                    if chatty:
                        reply += b"VALUE other 0 6\r\nother!\r\nEND\r\n"
                        chatty = False
                    conn.sendall(reply)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.sock.close()


def test_bytes_nobody_asked_for_cost_the_connection_not_an_answer():
    server = Chatty()

    async def main() -> tuple[object, object, int]:
        async with AsyncClient([f"127.0.0.1:{server.port}"], agreement=False) as c:
            first = await c.get("one")
            second = await c.get("two")  # on a new connection: not the reply nobody asked for
            return first, second, c.node_stats()[f"127.0.0.1:{server.port}"]["failures"]

    try:
        first, second, failures = asyncio.run(main())
    finally:
        server.close()
    assert (first, second, failures) == (b"one!", b"two!", 0)
    assert server.accepted == 2


def test_a_peer_that_leaves_the_membership_still_answers_the_calls_in_flight(nodes):
    """Adopting a membership without a peer retires its connections: during a move it is the
    previous owner, and a call in flight on it must not fail (a failure ejects it, and an
    ejected previous owner gets no deletes: the mover would copy what they should remove)."""
    proxy = Proxy(nodes[0].port, delay=0.3)

    async def main() -> tuple[object, int, bool]:
        async with AsyncClient([proxy.location], timeout=3, agreement=False) as c:
            await c.set("a", b"first")
            peer = next(iter(c.engine.peers.values()))
            (conn,) = c._lanes[peer].conns
            in_flight = asyncio.create_task(c.get("a"))
            await asyncio.sleep(0.1)
            c._lanes.keep([])  # what adopting a membership without this peer does
            got = await in_flight
            return got, c.node_stats()[proxy.location]["failures"], conn.closed is not None

    try:
        got, failures, closed = asyncio.run(main())
    finally:
        proxy.close()
    assert (got, failures, closed) == (b"first", 0, True)
