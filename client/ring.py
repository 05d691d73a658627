"""Key placement: LOCATION parsing and the ketama continuum of libmemcached and twemproxy.

This module owns how a LOCATION becomes a list of servers, how servers are named for hashing
(``host:port``, or just ``host`` on port 11211, as libmemcached and twemproxy name them), and
which server owns a key. The continuum's points come from ``uhashring`` (ketama, 160 points
per server at equal weight, ``floor(w/W * 40 * n) * 4`` with weights); the lookup hashes the
key's raw bytes and takes the first point >= the hash, as libmemcached and twemproxy do
(uhashring alone takes the first point > the hash and hashes ``str(key)``).
It knows nothing of health: ``Ring.candidates`` gives the owner and the fallback order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from hashlib import md5
from typing import Any

from uhashring import HashRing

DEFAULT_PORT = 11211


@dataclass(frozen=True)
class Server:
    """One memcached-compatible server of a LOCATION."""

    host: str
    port: int = DEFAULT_PORT
    weight: int = 1
    unix: str | None = None
    # Where to connect when ``host`` is a name DNS resolved for the client (an SRV target);
    # not part of the server's identity (the ring is keyed on the name).
    ip: str | None = field(default=None, compare=False)

    @cached_property
    def name(self) -> str:
        """The ketama name: ``host:port``, ``host`` alone on 11211, the path for a socket."""
        if self.unix is not None:
            return self.unix
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT else f"{host}:{self.port}"

    @property
    def address(self) -> tuple[str, int] | str:
        if self.unix is not None:
            return self.unix
        return (self.ip or self.host, self.port)

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_server(spec: str, weight: int | None = None) -> Server:
    """``host``, ``host:port``, ``host:port:weight``, ``[v6]:port``, ``unix:/path``."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty server address")
    if spec.startswith("unix:"):
        return Server(host="", port=0, weight=weight or 1, unix=spec[5:])
    if spec.startswith("/"):
        return Server(host="", port=0, weight=weight or 1, unix=spec)
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError(f"unbalanced brackets in {spec!r}")
        parts = rest[1:].split(":") if rest.startswith(":") else []
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad server address {spec!r}")
    else:
        host, *parts = spec.split(":")
    if len(parts) > 2 or not host:
        raise ValueError(f"bad server address {spec!r}")
    try:
        port = int(parts[0]) if parts and parts[0] else DEFAULT_PORT
        w = int(parts[1]) if len(parts) == 2 else (weight or 1)
    except ValueError:
        raise ValueError(f"bad port or weight in {spec!r}") from None
    if not 0 < port < 65536 or w <= 0:
        raise ValueError(f"bad port or weight in {spec!r}")
    return Server(host=host, port=port, weight=w)


def parse_location(location: str | Iterable[Any] | Mapping[str, Any]) -> list[Server]:
    """Every LOCATION form Django accepts, plus ``{"host:port": weight}`` dicts."""
    if isinstance(location, Mapping):
        servers = [parse_server(spec, int(w)) for spec, w in location.items()]
    else:
        if isinstance(location, str):
            location = location.replace(",", ";").split(";")
        servers = []
        for item in location:
            if isinstance(item, tuple):
                spec, w = item
                servers.append(parse_server(spec, int(w)))
            elif isinstance(item, Server):
                servers.append(item)
            elif str(item).strip():
                servers.append(parse_server(str(item)))
    if not servers:
        raise ValueError("LOCATION names no server")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"LOCATION names a server twice: {names}")
    return servers


def key_hash(key: bytes) -> int:
    """ketama's key hash: the first four bytes of the md5 digest, little-endian."""
    return int.from_bytes(md5(key).digest()[:4], "little")


class Ring:
    """The continuum of a fixed set of servers."""

    def __init__(self, servers: Iterable[Server]) -> None:
        self.servers = list(servers)
        index = {s.name: i for i, s in enumerate(self.servers)}
        ring = HashRing(
            nodes={s.name: {"weight": s.weight, "instance": s} for s in self.servers},
            hash_fn="ketama",
        )
        self._points: list[int] = list(ring.runtime._keys)
        # The owner of each point, as an index into ``servers`` (cheap to map to anything).
        self._owner_index: list[int] = [index[ring.runtime._ring[p]] for p in self._points]

    @property
    def points(self) -> int:
        return len(self._points)

    def continuum(self) -> tuple[list[int], list[int]]:
        """The sorted points and, for each, its owner's index in ``servers`` (copies)."""
        return list(self._points), list(self._owner_index)

    def _position(self, h: int) -> int:
        """The first point >= ``h`` (wrapping around), as libmemcached and twemproxy look up."""
        i = bisect.bisect_left(self._points, h)
        return i if i < len(self._points) else 0

    def index_of(self, key: bytes) -> int:
        """The index in ``servers`` of the owner of ``key``."""
        return self._owner_index[self._position(key_hash(key))]

    def get(self, key: bytes) -> Server:
        return self.servers[self.index_of(key)]

    def owner_of_hash(self, h: int) -> Server:
        return self.servers[self._owner_index[self._position(h)]]

    def candidate_indices(self, key: bytes) -> Iterator[int]:
        """The owner's index, then every other server's in the order the continuum reaches them."""
        n = len(self._points)
        start = self._position(key_hash(key))
        seen: set[int] = set()
        for j in range(n):
            i = self._owner_index[(start + j) % n]
            if i not in seen:
                seen.add(i)
                yield i
                if len(seen) == len(self.servers):
                    return

    def candidates(self, key: bytes) -> Iterator[Server]:
        return (self.servers[i] for i in self.candidate_indices(key))

    def shares(self) -> dict[Server, float]:
        """The share of the key space (hash range) each server owns."""
        share = [0] * len(self.servers)
        prev = self._points[-1] - (1 << 32)
        for point, owner in zip(self._points, self._owner_index, strict=True):
            share[owner] += point - prev
            prev = point
        return {s: share[i] / (1 << 32) for i, s in enumerate(self.servers)}
