"""Which servers the client uses and where each key goes.

This module owns the membership views (the servers, their ring and peers, the point → peer
table and the route cache), adopting a newer published membership (``config get cluster``)
and what the LOCATION's DNS names resolved to (``found``), and routing: each key to the first
usable peer of its ring order, the copies of a key when there are replicas, the grouping of
many keys by peer, and, while keys move between two memberships (an odd version), each key's
previous owner. A change swaps the whole view in one assignment and every routing call reads
``view`` once, so no call mixes two memberships.
"""

from __future__ import annotations

import itertools
import logging
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .errors import NoServerAvailable
from .keys import validate_key
from .options import Options
from .peer import Peer
from .ring import Ring, Server, key_hash

log = logging.getLogger("ringcache.client")

ROUTE_CACHE_SIZE = 32768


class View:
    """One membership: its servers, their ring and peers, and the point → peer table."""

    __slots__ = ("peer_list", "peer_of_point", "peers", "points", "ring", "routes", "servers")

    def __init__(self, servers: list[Server], options: Options, previous: View | None) -> None:
        self.peers: dict[str, Peer]
        self.servers = servers
        self.ring = Ring(servers)
        kept: dict[str, Peer] = previous.peers if previous is not None else {}
        # A server that stays keeps its peer: health, journal and counters carry over.
        self.peers = {s.name: kept.get(s.name) or Peer(s, options) for s in servers}
        self.peer_list = [self.peers[s.name] for s in servers]  # ring index -> peer
        # The peer of every continuum point, plus the first again so that a hash past the
        # last point needs no wrap-around test. No server yet (DNS has not answered): every
        # key's owner is a peer that never takes traffic, so every call is a miss.
        points, owners = self.ring.continuum()
        if points:
            self.peer_of_point = [self.peer_list[i] for i in [*owners, owners[0]]]
        else:
            nobody = Peer(Server(host="(no server yet)", port=0), options)
            nobody.health.eject()
            self.peer_of_point = [nobody]
        self.points = points
        # Key as the application gave it -> (key as sent, owner): hot keys skip validation,
        # MD5 and the ring search. Emptied when full, so it follows the hot set.
        self.routes: dict[Any, tuple[bytes, Peer]] = {}

    def owner(self, key: bytes) -> Peer:
        """The peer that owns ``key`` (``Ring.index_of``, through the point → peer table)."""
        return self.peer_of_point[bisect_left(self.points, key_hash(key))]

    def holders(self, key: bytes, replicas: int) -> list[Peer]:
        """The peers that should hold ``key``'s copies, whatever their health."""
        if replicas == 1:
            return [self.owner(key)]
        indices = itertools.islice(self.ring.candidate_indices(key), replicas)
        return [self.peer_list[i] for i in indices]


class Membership:
    """The current view, the last settled one, and (during a move) the previous owners."""

    def __init__(self, servers: list[Server], options: Options) -> None:
        self.options = options
        self.version = 0
        self.view = View(servers, options, None)
        # While keys move to their new owners (an odd version), a miss on the new owner is
        # read from the owner in the last settled membership (even version, or the
        # LOCATION), and writes delete the key there; an even version ends the move.
        self.settled = self.view
        self.previous: View | None = None

    @property
    def peers(self) -> dict[str, Peer]:
        return self.view.peers

    def all_usable(self) -> bool:
        return all(p.health.usable for p in self.view.peer_list)

    def found(self, servers: list[Server], addresses: dict[str, str], first: bool) -> bool:
        """What the LOCATION resolved to (its plain servers and what its DNS names gave): the
        membership the ``first`` time while nothing is published; else only the addresses of
        the names the membership has (a pod that came back elsewhere). True when the peers
        changed."""
        if first and self.version == 0:
            self.settled = self.view = View(servers, self.options, self.view)
            log.warning("membership from DNS: %s", ", ".join(map(str, servers)))
            return True
        for peer in self.view.peer_list:
            ip = addresses.get(peer.server.host)
            if ip is not None and ip != peer.server.ip:
                log.warning("%s is now at %s", peer.server, ip)
                peer.server = replace(peer.server, ip=ip)
        names = {s.name for s in servers}
        if names != set(self.view.peers):
            log.info("DNS names %s; the membership changes when it is published", sorted(names))
        return False

    def adopt(self, version: int, servers: list[Server]) -> bool:
        """Adopt a newer membership (from ``config get cluster``); False when not newer."""
        if version <= self.version or not servers:
            return False
        new = View(servers, self.options, self.view)
        if version % 2:  # moving: from the last settled membership, however often re-published
            settled = self.settled
            self.previous = None if set(settled.peers) == set(new.peers) else settled
        else:
            self.previous = None
            self.settled = new
        self.view = new
        self.version = version
        log.warning("membership version %d: %s", version, ", ".join(map(str, servers)))
        return True

    # -- routing ---------------------------------------------------------------------------
    def owner(self, key: str | bytes) -> tuple[bytes, Peer]:
        """The key as sent and the peer that owns it on the ring (whatever its health)."""
        routes = self.view.routes
        try:
            hit = routes.get(key)
        except TypeError:  # unhashable: validate_key names the problem
            hit = None
        if hit is None:
            k = validate_key(key, self.options.key_prefix)
            hit = (k, self.view.owner(k))
            if len(routes) >= ROUTE_CACHE_SIZE:
                routes.clear()
            routes[key] = hit
        return hit

    def route(self, key: bytes, writing: bool = False) -> tuple[Peer | None, bool]:
        """The peer a request for ``key`` goes to, and whether it stands in for the owner (a
        write also goes to a returning peer)."""
        view = self.view
        peer = view.owner(key)
        if peer.health.usable or (writing and peer.health.returning):
            return peer, False
        for i in view.ring.candidate_indices(key):
            peer = view.peer_list[i]
            if peer.health.usable:
                return peer, True
        if self.options.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return None, True

    def copies(self, key: bytes, writing: bool = False) -> tuple[list[Peer], bool]:
        """The usable peers that hold ``key``'s copies (owner first; for a write, returning
        peers too), and whether the owner itself is missing from them (its copies then get
        the failover TTL)."""
        replicas = self.options.replicas
        if replicas == 1:
            peer, standin = self.route(key, writing)
            return ([peer] if peer is not None else []), standin
        view = self.view
        peers = []
        for i in view.ring.candidate_indices(key):
            peer = view.peer_list[i]
            if peer.health.usable or (writing and peer.health.returning):
                peers.append(peer)
                if len(peers) == replicas:
                    break
        if not peers and self.options.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        return peers, bool(peers) and peers[0] is not view.owner(key)

    def group(
        self, keys: Iterable[Any], writing: bool = False
    ) -> tuple[dict[Peer, list[bytes]], dict[bytes, Any], list[bytes]]:
        """Keys grouped by the peer their first usable copy is on (for a write, a returning
        owner); the original key of each; keys with no usable peer."""
        groups: dict[Peer, list[bytes]] = {}
        originals: dict[bytes, Any] = {}
        unrouted: list[bytes] = []
        owner = self.owner
        routes = self.view.routes
        for key in keys:
            try:  # the route cache first: this loop runs once per key of a multi-key call
                hit = routes.get(key)
            except TypeError:
                hit = None
            k, peer = hit or owner(key)
            originals[k] = key
            if not peer.health.usable:
                found, _ = self.route(k, writing)
                if found is None:
                    unrouted.append(k)
                    continue
                peer = found
            group = groups.get(peer)
            if group is None:
                groups[peer] = [k]
            else:
                group.append(k)
        return groups, originals, unrouted

    def group_copies(self, keys: Iterable[bytes]) -> dict[Peer, list[bytes]]:
        """Every copy of every key, by peer (the writes of ``set_many``/``delete_many``)."""
        groups: dict[Peer, list[bytes]] = {}
        for k in keys:
            for peer in self.copies(k, writing=True)[0]:
                groups.setdefault(peer, []).append(k)
        return groups

    def returning_standins(self, keys: Iterable[bytes]) -> dict[Peer, list[bytes]]:
        """For keys a returning peer should hold: the usable peers that hold them meanwhile
        (where their reads go), by peer. A write to the returning peer removes the key there
        first, so no stand-in keeps a value the returning peer no longer has."""
        view = self.view
        replicas = self.options.replicas
        out: dict[Peer, list[bytes]] = {}
        for k in keys:
            holders = view.holders(k, replicas)
            if any(h.health.returning for h in holders):
                for peer in self.copies(k)[0]:
                    if peer not in holders:
                        out.setdefault(peer, []).append(k)
        return out

    def ttl_for(self, key: bytes, expire: int) -> int:
        """``expire``, capped when the key's owner is out (its copies are on stand-ins), the
        rule ``copies`` applies to one key; replica copies of a live owner are not capped."""
        if self.view.owner(key).health.usable:
            return expire
        return self.options.failover_expire(expire)

    def previous_owners(
        self, keys: Iterable[bytes]
    ) -> tuple[dict[Peer, list[bytes]], list[tuple[bytes, Peer]]]:
        """During a move: the keys whose previous owner differs from their owner, by that
        owner when it is usable, and apart (the second list, with their owner) when it is out."""
        previous = self.previous
        groups: dict[Peer, list[bytes]] = {}
        out: list[tuple[bytes, Peer]] = []
        if previous is None:
            return groups, out
        view = self.view
        for k in keys:
            old = previous.owner(k)
            if old is view.owner(k):
                continue
            if old.health.usable:
                groups.setdefault(old, []).append(k)
            else:
                out.append((k, old))
        return groups, out
