"""The trio cluster client: the sync client's surface with ``await``.

This module owns the async side: trio connections with their receive buffers, the text
protocol over them (pymemcache has no async client), per-call timeouts, multi-key fan-out in
a nursery, and the prober task. Routing, health and the failover rules are ``ClusterBase``'s,
shared with the sync client. A call that is cancelled or fails midway closes its connection
instead of returning it to the pool, so no unread reply is ever left on a pooled connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)

from .client import (
    REPLICA_EVERY_COPY,
    REPLICA_READS,
    ClusterBase,
    _Node,
    check_error_line,
    fetch_cluster_config,
    parse_values,
    reply_may_be_complete,
)

_MISS = object()
_STORE_REPLIES = {b"STORED": True, b"NOT_STORED": False, b"EXISTS": False, b"NOT_FOUND": None}


class _Conn:
    """One trio connection to a node, with its receive buffer."""

    __slots__ = ("buf", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise MemcacheUnexpectedCloseError()
        self.buf += chunk

    async def readline(self) -> bytes:
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            start = max(0, len(self.buf) - 1)
            await self._fill()

    def close(self) -> None:
        sock = getattr(self.stream, "socket", None)
        if sock is not None:
            sock.close()


class AsyncClient(ClusterBase):
    """``await client.get("k")``: the cluster client for trio programs.

    Use ``async with AsyncClient(location) as client:`` (or call ``aclose()``) so that pooled
    connections and the prober end with it.
    """

    def __init__(self, location: str | Iterable | Mapping, **options: Any) -> None:
        super().__init__(location, **options)
        self._prober_scope: trio.CancelScope | None = None
        self._prober_running = False
        self._discovery_scope: trio.CancelScope | None = None
        self._discovery_started = False

    async def __aenter__(self) -> AsyncClient:
        await self._start_discovery()
        return self

    async def _start_discovery(self) -> None:
        """With ``discovery=True``: adopt the current membership, then poll for changes."""
        if not self.discovery or self._discovery_started:
            return
        self._discovery_started = True
        await self._discover_once()
        trio.lowlevel.spawn_system_task(self._discover_loop, name="ringcache-discovery")

    async def _discover_once(self) -> bool:
        node = self._discovery_source()
        if node is None:
            return False
        found = await trio.to_thread.run_sync(fetch_cluster_config, node.server, self.timeout)
        return found is not None and self._apply_cluster_config(*found)

    async def _discover_loop(self) -> None:
        with trio.CancelScope() as self._discovery_scope:
            while True:
                await trio.sleep(self.discovery_interval)
                await self._discover_once()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for scope in (self._prober_scope, self._discovery_scope):
            if scope is not None:
                scope.cancel()
        for node in self.nodes.values():
            for conn in node.drain():
                conn.close()

    # -- connections and calls -------------------------------------------------------------
    async def _connect(self, node: _Node) -> _Conn:
        conn = node.take()
        if conn is not None:
            return conn
        address = node.server.address
        with trio.fail_after(self.connect_timeout):
            if isinstance(address, str):
                stream = await trio.open_unix_socket(address)
            else:
                stream = await trio.open_tcp_stream(*address)
        return _Conn(stream)

    async def _on_node(
        self, node: _Node, what: str, fn: Callable[[_Conn], Awaitable[Any]], default: Any
    ) -> Any:
        """Run ``fn`` on a connection to ``node``; a failure is counted and becomes ``default``."""
        conn: _Conn | None = None
        try:
            with trio.fail_after(self.connect_timeout + self.timeout):
                conn = await self._connect(node)
                result = await fn(conn)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, MemcacheUnexpectedCloseError,
                MemcacheUnknownError) as exc:  # fmt: skip
            if conn is not None:
                conn.close()
            self._failed(node, exc, what)
            if self.raise_on_error:
                if isinstance(exc, trio.TooSlowError):
                    raise TimeoutError(f"{what} on {node.server} timed out") from exc
                if isinstance(exc, trio.BrokenResourceError):
                    raise ConnectionResetError(f"{what} on {node.server}: {exc}") from exc
                raise
            return default
        except MemcacheError:
            # An error reply: the node is healthy and the connection is in sync.
            node.health.succeeded()
            if conn is not None and not node.give(conn):
                conn.close()
            if self.raise_on_error:
                raise
            return default
        except BaseException:
            # Cancelled (or a bug) midway: the reply may still be on its way, so never reuse.
            if conn is not None:
                conn.close()
            raise
        node.health.succeeded()
        if not node.give(conn):
            conn.close()
        return result

    async def _call(
        self, key: bytes, what: str, fn: Callable[[_Conn, bool], Awaitable[Any]], default: Any
    ) -> Any:
        if self.discovery and not self._discovery_started:
            await self._start_discovery()
        if self.replicas > 1:
            return await self._call_replicated(key, what, fn, default)
        node, standin = self._target(key)
        if node is None:
            return default
        return await self._on_node(node, what, lambda conn: fn(conn, standin), default)

    async def _call_replicated(
        self, key: bytes, what: str, fn: Callable[[_Conn, bool], Awaitable[Any]], default: Any
    ) -> Any:
        """The sync client's replication rules (see ``Client._call_replicated``)."""
        nodes, standin = self._copies(key)

        async def on(node: _Node, op: Callable[[_Conn, bool], Awaitable[Any]], dflt: Any) -> Any:
            return await self._on_node(node, what, lambda conn: op(conn, standin), dflt)

        if what in REPLICA_READS:
            for node in nodes:
                result = await on(node, fn, default)
                if not (result is default or result == default):
                    return result
            return default
        if what in REPLICA_EVERY_COPY:
            results = [await on(node, fn, default) for node in nodes]
            return next((r for r in results if r), results[0] if results else default)
        if not nodes:
            return default
        result = await on(nodes[0], fn, default)
        if result and len(nodes) > 1:
            value = await on(nodes[0], self._get_op(key, _MISS), _MISS)
            for node in nodes[1:]:
                if value is _MISS:
                    await on(node, self._simple_op(b"delete %s\r\n" % key), False)
                else:
                    ttl = self._failover_expire(0) if standin else 0
                    await on(node, self._store_op(b"set", key, value, ttl), False)
        return result

    def _get_op(self, k: bytes, default: Any) -> Callable[[_Conn, bool], Awaitable[Any]]:
        async def op(conn: _Conn, _: bool) -> Any:
            await conn.send(b"get %s\r\n" % k)
            return (await self._read_values(conn, False)).get(k, default)

        return op

    def _store_op(self, name: bytes, k: bytes, value: Any, ttl: int, cas: Any = None):
        async def op(conn: _Conn, _: bool) -> bool | None:
            await conn.send(self._storage_command(name, k, value, ttl, cas))
            line = await self._reply_line(conn)
            if line not in _STORE_REPLIES:
                raise MemcacheUnknownError(line[:32])
            return _STORE_REPLIES[line]

        return op

    def _simple_op(self, command: bytes) -> Callable[[_Conn, bool], Awaitable[bytes]]:
        """Send one command line, return its (checked) one-line reply."""

        async def op(conn: _Conn, _: bool) -> bytes:
            await conn.send(command)
            return await self._reply_line(conn)

        return op

    async def _warm_up(self, keys: list[bytes]) -> dict[bytes, Any]:
        """Keys that missed, read from their previous owners and copied forward (``add``)."""
        groups = self._previous_owners(keys)
        if not groups:
            return {}

        async def fetch(node: _Node, ks: list[bytes], conn: _Conn) -> dict:
            await conn.send(b"get " + b" ".join(ks) + b"\r\n")
            return await self._read_values(conn, False)

        results = await self._fan_out(groups, "warm-up", fetch)
        found = {k: v for part in results.values() for k, v in part.items()}
        for k, v in found.items():
            await self._call(k, "add", self._store_op(b"add", k, v, 0), False)
        return found

    # -- prober ----------------------------------------------------------------------------
    def _start_prober(self) -> None:
        if self._prober_running:
            return
        self._prober_running = True
        trio.lowlevel.spawn_system_task(self._probe_loop, name="ringcache-prober")

    async def _probe_loop(self) -> None:
        try:
            with trio.CancelScope() as self._prober_scope:
                while True:
                    due, out = self._probe_due()
                    for node in due:
                        self._probed(node, await self._probe(node))
                    if not out:
                        return
                    await trio.sleep(0.05)
        finally:
            self._prober_running = False
            self._prober_scope = None

    async def _probe(self, node: _Node) -> bool:
        """A real round trip on a fresh connection: ``version``."""
        with trio.move_on_after(self.connect_timeout + self.timeout):
            try:
                address = node.server.address
                if isinstance(address, str):
                    stream = await trio.open_unix_socket(address)
                else:
                    stream = await trio.open_tcp_stream(*address)
                conn = _Conn(stream)
                try:
                    await conn.send(b"version\r\n")
                    return (await conn.readline()).startswith(b"VERSION ")
                finally:
                    conn.close()
            except (OSError, trio.BrokenResourceError, MemcacheError):
                return False
        return False

    # -- protocol helpers ------------------------------------------------------------------
    async def _read_values(self, conn: _Conn, cas: bool) -> dict[bytes, Any]:
        """A get/gets reply, parsed in one pass once it has all arrived."""
        while True:
            if reply_may_be_complete(conn.buf):
                parsed = parse_values(bytes(conn.buf), cas, self.serde.deserialize)
                if parsed is not None:
                    found, length = parsed
                    del conn.buf[:length]
                    return found
            await conn._fill()

    async def _reply_line(self, conn: _Conn) -> bytes:
        line = await conn.readline()
        check_error_line(line)
        return line

    def _storage_command(
        self, name: bytes, key: bytes, value: Any, ttl: int, cas: Any = None
    ) -> bytes:
        data, flags = self.serde.serialize(key, value)
        if isinstance(data, str):
            data = data.encode()
        tail = b" %s" % (cas if isinstance(cas, bytes) else str(cas).encode()) if cas else b""
        return b"%s %s %d %d %d%s\r\n%s\r\n" % (name, key, flags, ttl, len(data), tail, data)

    # -- single-key operations -------------------------------------------------------------
    async def get(self, key: str | bytes, default: Any = None) -> Any:
        k = self.key(key)
        value = await self._call(k, "get", self._get_op(k, _MISS), _MISS)
        if value is _MISS and self._previous is not None:
            value = (await self._warm_up([k])).get(k, _MISS)
        return default if value is _MISS else value

    async def gets(self, key: str | bytes, default: Any = None, cas_default: Any = None):
        k = self.key(key)

        async def op(conn: _Conn, _: bool) -> Any:
            await conn.send(b"gets %s\r\n" % k)
            return (await self._read_values(conn, True)).get(k, (default, cas_default))

        return await self._call(k, "gets", op, (default, cas_default))

    async def _store(self, name: bytes, key, value, expire: int, cas: Any = None) -> bool | None:
        k = self.key(key)

        async def op(conn: _Conn, standin: bool) -> bool | None:
            ttl = self._failover_expire(expire) if standin else expire
            return await self._store_op(name, k, value, ttl, cas)(conn, standin)

        return await self._call(k, name.decode(), op, False)

    async def set(self, key, value, expire: int = 0) -> bool:
        return bool(await self._store(b"set", key, value, expire))

    async def add(self, key, value, expire: int = 0) -> bool:
        return bool(await self._store(b"add", key, value, expire))

    async def replace(self, key, value, expire: int = 0) -> bool:
        return bool(await self._store(b"replace", key, value, expire))

    async def append(self, key, value, expire: int = 0) -> bool:
        return bool(await self._store(b"append", key, value, expire))

    async def prepend(self, key, value, expire: int = 0) -> bool:
        return bool(await self._store(b"prepend", key, value, expire))

    async def cas(self, key, value, cas, expire: int = 0) -> bool | None:
        """True when stored, False when the token is stale (or on failure), None if absent."""
        return await self._store(b"cas", key, value, expire, cas)

    async def _simple(self, key, what: str, command: bytes, parse, default):
        k = self.key(key)
        send = self._simple_op(command % k)

        async def op(conn: _Conn, standin: bool) -> Any:
            return parse(await send(conn, standin))

        return await self._call(k, what, op, default)

    async def delete(self, key) -> bool:
        return await self._simple(key, "delete", b"delete %s\r\n", lambda r: r == b"DELETED", False)

    async def incr(self, key, value: int) -> int | None:
        return await self._delta(key, b"incr", value)

    async def decr(self, key, value: int) -> int | None:
        return await self._delta(key, b"decr", value)

    async def _delta(self, key, name: bytes, value: int) -> int | None:
        if value < 0:
            raise MemcacheClientError("delta must be a non-negative integer")
        command = name + b" %s " + b"%d\r\n" % value
        return await self._simple(
            key, name.decode(), command, lambda r: None if r == b"NOT_FOUND" else int(r), None
        )

    async def touch(self, key, expire: int = 0) -> bool:
        command = b"touch %s " + b"%d\r\n" % expire
        return await self._simple(key, "touch", command, lambda r: r == b"TOUCHED", False)

    # -- multi-key operations --------------------------------------------------------------
    async def _fan_out(
        self,
        groups: dict[_Node, list[bytes]],
        what: str,
        fn: Callable[[_Node, list[bytes], _Conn], Awaitable[Any]],
    ) -> dict[_Node, Any]:
        """Run every node's share at once in a nursery; a failed node is left out."""
        results: dict[_Node, Any] = {}
        missing = object()

        async def one(node: _Node, keys: list[bytes]) -> None:
            result = await self._on_node(node, what, lambda conn: fn(node, keys, conn), missing)
            if result is not missing:
                results[node] = result

        async with trio.open_nursery() as nursery:
            for node, keys in groups.items():
                nursery.start_soon(one, node, keys)
        return results

    async def _get_many(self, keys: Iterable, cas: bool) -> dict:
        groups, originals, _ = self._group(keys)
        name = b"gets " if cas else b"get "

        async def fetch(node: _Node, ks: list[bytes], conn: _Conn) -> dict:
            await conn.send(name + b" ".join(ks) + b"\r\n")
            return await self._read_values(conn, cas)

        results = await self._fan_out(groups, "get_many", fetch)
        return {originals[k]: v for found in results.values() for k, v in found.items()}

    async def get_many(self, keys: Iterable) -> dict:
        keys = list(keys)
        found = await self._get_many(keys, False)
        if len(found) < len(keys) and (self._previous is not None or self.replicas > 1):
            for key in keys:  # warm-up and replica fall-back, one key at a time
                if key not in found:
                    value = await self.get(key, _MISS)
                    if value is not _MISS:
                        found[key] = value
        return found

    async def gets_many(self, keys: Iterable) -> dict:
        return await self._get_many(keys, True)

    async def set_many(self, values: Mapping, expire: int = 0) -> list:
        """Store every value; returns the keys that were not stored."""
        if self.replicas > 1:
            return [k for k, v in values.items() if not await self.set(k, v, expire)]
        items = {self.key(k): v for k, v in values.items()}
        groups, originals, unrouted = self._group(values)

        async def store(node: _Node, ks: list[bytes], conn: _Conn) -> list[bytes]:
            await conn.send(
                b"".join(
                    self._storage_command(b"set", k, items[k], self._ttl_for(k, node, expire))
                    for k in ks
                )
            )
            return [k for k in ks if await self._reply_line(conn) != b"STORED"]

        results = await self._fan_out(groups, "set_many", store)
        failed = [originals[k] for k in unrouted]
        for node, ks in groups.items():
            failed += [originals[k] for k in results.get(node, ks)]
        return failed

    async def delete_many(self, keys: Iterable) -> bool:
        if self.replicas > 1:
            for key in list(keys):
                await self.delete(key)
            return True
        groups, _, unrouted = self._group(keys)

        async def delete(node: _Node, ks: list[bytes], conn: _Conn) -> bool:
            await conn.send(b"".join(b"delete %s\r\n" % k for k in ks))
            for _ in ks:
                await self._reply_line(conn)
            return True

        results = await self._fan_out(groups, "delete_many", delete)
        return not unrouted and len(results) == len(groups)

    # -- every node ------------------------------------------------------------------------
    async def _each_node(self, what: str, command: bytes, read) -> dict[str, Any]:
        groups = {n: [] for n in self.nodes.values() if n.health.usable}

        async def run(node: _Node, _: list[bytes], conn: _Conn) -> Any:
            await conn.send(command)
            return await read(conn)

        results = await self._fan_out(groups, what, run)
        return {str(node.server): value for node, value in results.items()}

    async def stats(self, *args: str) -> dict[str, dict[bytes, bytes]]:
        async def read(conn: _Conn) -> dict[bytes, bytes]:
            out = {}
            while (line := await self._reply_line(conn)) != b"END":
                _, name, value = line.split(b" ", 2)
                out[name] = value
            return out

        command = b" ".join([b"stats", *(a.encode() for a in args)]) + b"\r\n"
        return await self._each_node("stats", command, read)

    async def version(self) -> dict[str, bytes]:
        async def read(conn: _Conn) -> bytes:
            return (await self._reply_line(conn)).removeprefix(b"VERSION ")

        return await self._each_node("version", b"version\r\n", read)

    async def flush_all(self, delay: int = 0) -> bool:
        async def read(conn: _Conn) -> bool:
            return await self._reply_line(conn) == b"OK"

        done = await self._each_node("flush_all", b"flush_all %d\r\n" % delay, read)
        return len(done) == len(self.nodes) and all(done.values())
