"""The cluster engine: every client operation, composed of the parts that own each rule.

This module owns what a client call means for the cluster, built on the parts beside it:
``options`` (one frozen value, the TTL rules), ``keys`` (argument rules), ``membership``
(views, routing, the previous owners of a move), ``recovery`` (health accounting, the
journal's fence, probing and re-admission), ``debts`` (the agreement across clients),
``leases`` (``get_or_set``) and ``peer`` (one server's state). What it adds is each
operation: replication (reads fall back copy by copy, writes reach every copy, a conditional
write or an arithmetic result is decided by the first copy and copied to the others with the
TTL it has), the failover TTL of writes on a stand-in, moves (a miss is read from the
previous owner; a write or delete also removes the key there), meta-protocol detection per
peer, serde, and the one place that decides whether an error reaches the application
(``reply``). These are the rules of "the cache never lies" in the
README: a value may be forgotten, never served after it was replaced, deleted or expired.

Each operation is a generator (``steps.Op``) that yields steps for a driver to carry out and
returns the call's result; the engine does no I/O, reads only the clocks in its options, and
never calls a driver: ``settle`` returns the peers a step ejected, ``maintain`` (a round of
probes, debt renewals and watching) the time until the next round. ``sync.Client`` and
``aio.AsyncClient`` hold an engine and run its operations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from pymemcache.serde import pickle_serde

from . import leases, protocol
from .debts import REFRESH, Debts
from .errors import NoServerAvailable, ReplyError, UnknownCommandError
from .keys import check_cas, check_int, validate_key
from .membership import Membership
from .options import Options
from .peer import Peer
from .protocol import CONFIG, META, STATS, STATUS, VALUES, ClusterConfig, Meta
from .recovery import PROBE_TICK, Fence, Recovery
from .resolve import Dns, ResolverConfig, joined, split_location
from .ring import Ring, Server
from .steps import Call, Entry, Op

log = logging.getLogger("ringcache.client")

T = TypeVar("T")
_ONE_VALUES = (VALUES,)
_ONE_STATUS = (STATUS,)
_STORED = b"STORED"
# What each storage reply means to the caller (pymemcache's contract).
_STORE_RESULT = {b"STORED": True, b"NOT_STORED": False, b"EXISTS": False, b"NOT_FOUND": None}
FAILED: Any = object()  # ``reply``'s word for a failed call or an error line
_WHAT = {b"set": "set", b"add": "add", b"replace": "replace", b"cas": "cas"}
# A found value: (key, flags, data, cas token or None), the reader's own tuple.
Found = tuple[bytes, int, bytes, bytes | None]


def is_placeholder(flags: int, data: bytes) -> bool:
    """A value with client flags 0 and no bytes is what a get_or_set lease (``mg … N``) looks
    like to every read, classic ones included: it reads as a miss, so a lease never surfaces
    as a value (and an empty flags-0 value reads as a miss too: a cache may always forget)."""
    return not data and not flags


class Engine:
    """Every operation of the client, over one membership, for any driver."""

    def __init__(self, location: str | Iterable[Any] | Mapping[str, Any], options: Options) -> None:
        servers, names = split_location(location)
        if options.discovery is None:  # DNS finds the nodes, the nodes publish the membership
            options = replace(options, discovery=bool(names))
        self.options = options
        self.dns = (
            Dns(names, ResolverConfig.from_options(options.dns_nameservers), options.dns_interval)
            if names
            else None
        )
        self._plain_servers = servers  # the LOCATION's plain servers (beside its DNS names)
        self.membership = Membership(servers, options)
        self.debts = Debts(self.membership)
        self.recovery = Recovery(self.membership, self.debts)
        self.settle = self.recovery.settle
        self.probe = self.recovery.probe
        self._plain_serde = options.serde is pickle_serde

    # -- what the application sees of the cluster -----------------------------------------
    @property
    def peers(self) -> dict[str, Peer]:
        return self.membership.view.peers

    @property
    def ring(self) -> Ring:
        return self.membership.view.ring

    def key(self, key: str | bytes) -> bytes:
        """The validated key as sent, prefix included."""
        return validate_key(key, self.options.key_prefix)

    def server_for(self, key: str | bytes) -> Server:
        """The server that owns ``key`` on the ring (whatever its health)."""
        return self.ring.get(self.key(key))

    def node_stats(self) -> dict[str, dict[str, Any]]:
        """What this client saw of each node: state, failures, ejections, meta support, keys in
        its recovery journal, how often it was flushed because the journal overflowed, and its
        leases."""
        return {str(p.server): p.stats() for p in self.peers.values()}

    def reply(self, call: Call, index: int = 0) -> Any:
        """Reply ``index`` of ``call``; ``FAILED`` for a failed call or an error reply, which
        are raised instead with ``raise_on_error``: the one place that decides it."""
        error = call.error
        if error is None:
            reply = call.replies[index]
            if not isinstance(reply, ReplyError):
                return reply
            error = reply
        if self.options.raise_on_error:
            raise error
        return FAILED

    # -- membership ------------------------------------------------------------------------
    def discover(self) -> Op[bool]:
        """Resolve the LOCATION's DNS names when that is due, then ask one usable peer for the
        published membership and adopt it when it is newer; True when the peers changed.

        DNS finds the nodes; the published membership decides: what DNS returns becomes the
        membership only while nothing is published and nothing was found before (a change
        of the membership otherwise goes through the move protocol: ``ringcache follow``),
        and it gives the addresses of the names the membership has."""
        changed = False
        dns = self.dns
        if dns is not None and dns.due(self.options.clock()):
            first = dns.servers is None
            found = yield from dns.lookup(self.options.clock())
            if found:
                servers = joined(self._plain_servers, found)
                changed = self.membership.found(servers, dns.addresses, first)
        peer = next((p for p in self.membership.view.peer_list if p.health.usable), None)
        if peer is None:
            return changed
        call = Call(peer, protocol.CONFIG_GET, (CONFIG,), "discovery")
        yield [call]
        reply = call.replies[0] if call.error is None else None
        if isinstance(reply, ClusterConfig):
            servers = reply.servers if dns is None else dns.placed(reply.servers)
            changed = self.membership.adopt(reply.version, servers) or changed
        if changed:
            self.debts.lease_until = 0.0  # nothing is known yet of the new nodes' debts
        return changed

    # -- the background ----------------------------------------------------------------------
    def maintain(self) -> Op[float | None]:
        """What a client does in the background, one round: probe the ejected peers (and
        re-admit those that may be), renew this client's debts, and eject the peers that
        another client owes a replay. Returns the seconds until the next round is due, or
        None when there is nothing to do until a step ejects a peer (every peer takes
        traffic, and without ``agreement`` nothing is watched)."""
        wait = yield from self.probe()
        yield from self.debts.refresh()
        if (yield from self._watch()):
            wait = 0.0
        waits = [] if wait is None else [wait]
        if self.debts.owed:
            waits.append(REFRESH)
        if self.debts.watching:
            waits.append(max(self.debts.next_watch - self.options.clock(), 0.0))
        return max(min(waits), PROBE_TICK) if waits else None

    def _watch(self, now_: bool = False) -> Op[bool]:
        """Look at the other clients' debts (when due; ``now_``: at once) and eject the peers
        that another client owes a replay; whether one was ejected."""
        ejected = False
        for peer in (yield from self.debts.watch(now_)):
            if peer.health.eject():
                log.warning("ejected %s: another client owes it a replay", peer.server)
                ejected = True
        return ejected

    def renew_lease(self) -> Op[bool]:
        """Before a read: if this client's lease on the debts ran out (no look answered within
        ``debts.LEASE`` seconds: a new client, a stalled process, a background round that
        failed), look now. False when the look got no lease either: nothing may be read (the
        reads miss; with ``raise_on_error`` the look's failure is raised)."""
        if not self.debts.lapsed():
            return True
        yield from self._watch(True)
        if not self.debts.lapsed():
            return True
        for call in self.debts.failed:
            self.reply(call)
        return False

    def _leased(self, groups: dict[Peer, list[bytes]]) -> Op[dict[Peer, list[bytes]]]:
        """``groups`` of a read once the lease is renewed, without the peers that another
        client turned out to owe (their keys miss); none without a lease."""
        if not (yield from self.renew_lease()):
            return {}
        return {p: ks for p, ks in groups.items() if p.health.usable}

    @property
    def needs_rounds(self) -> bool:
        """Whether a driver must run ``maintain`` rounds now: a peer is out, or the debts of
        the other clients are watched (from the start, with agreement and two nodes or more)."""
        return self.debts.watching or not self.membership.all_usable()

    # -- values ----------------------------------------------------------------------------
    def serialize(self, key: bytes, value: Any, flags: int | None) -> tuple[bytes, int]:
        if flags is None and type(value) is bytes and self._plain_serde:
            return value, 0  # what pickle_serde makes of bytes, without the call
        data, serde_flags = self.options.serde.serialize(key, value)
        if isinstance(data, str):
            data = data.encode()
        if flags is None:
            flags = serde_flags
        return data, check_int(flags, "flags", 0, 2**32 - 1)

    def deserialize(self, key: bytes, data: bytes, flags: int) -> Any:
        # Called for flags 0 too, as pymemcache calls it: a serde may tag values that way.
        if flags == 0 and self._plain_serde:
            return data  # what pickle_serde gives back for flags 0, without the call
        return self.options.serde.deserialize(key, data, flags)

    def entries(self, groups: dict[Peer, list[bytes]], what: str) -> Op[dict[bytes, Any]]:
        """Keys read with their flags, remaining TTL and CAS token in one round trip:
        ``mg k v f t c`` where the peer speaks meta, ``gets`` (TTL None: unknown) where it
        does not. ``{key: (flags, data, ttl, cas)}``, ttl as ``set`` takes it (0 = never)."""
        found: dict[bytes, tuple[int, bytes, int | None, bytes | None]] = {}
        if self.options.clock() >= self.debts.lease_until:
            groups = yield from self._leased(groups)
        while groups:
            calls = []
            for peer, ks in groups.items():
                if peer.meta is False:
                    calls.append(Call(peer, protocol.get(ks, cas=True), _ONE_VALUES, what, ks))
                else:
                    data = b"".join([protocol.meta_get(k) for k in ks])
                    calls.append(Call(peer, data, (META,) * len(ks), what, ks))
            yield calls
            groups = {}
            for call in calls:
                peer, ks = call.peer, call.keys or []
                if call.kinds[0] == VALUES:
                    values = self.reply(call)
                    for key, flags, data, cas in () if values is FAILED else values:
                        found[key] = (flags, data, None, cas)
                elif call.error is None and isinstance(call.replies[0], UnknownCommandError):
                    peer.meta = False  # an older memcached: once per peer, then gets
                    log.info("%s does not speak the meta protocol: gets from now on", peer.server)
                    groups[peer] = ks
                else:
                    for i, key in enumerate(ks):
                        reply = self.reply(call, i)
                        if reply is FAILED:
                            break
                        peer.meta = True
                        ttl = _meta_ttl(reply) if reply.code == b"VA" else None
                        flags = reply.number("f") or 0
                        if ttl is not None and not is_placeholder(flags, reply.value):
                            found[key] = (flags, reply.value, ttl, reply.flags.get("c"))
        return found

    # -- reads -----------------------------------------------------------------------------
    def _read(
        self, first: dict[Peer, list[bytes]], keys: list[bytes], cas: bool
    ) -> Op[dict[Any, Any]]:
        """``get``/``gets`` of ``keys``: ``first`` groups them by the peer of their first copy;
        keys a copy does not have are asked of the next copy, then (during a move, without
        CAS) of their previous owner. (Not a generator itself: with one copy and no move it
        is the one fetch, without a layer of its own.)"""
        if self.options.replicas == 1 and self.membership.previous is None:
            return self._fetch(first, cas, "gets" if cas else "get")
        return self._read_copies(first, keys, cas)

    def _read_copies(
        self, first: dict[Peer, list[bytes]], keys: list[bytes], cas: bool
    ) -> Op[dict[Any, Any]]:
        found: dict[bytes, Found] = {}
        groups = first
        replicas = self.options.replicas
        # Each key's copies, fixed before the first read: a copy that fails and is ejected
        # meanwhile must not shift the others.
        copies = {k: self.membership.copies(k)[0] for k in keys} if replicas > 1 else {}
        for copy in range(replicas):
            if copy:
                groups = {}
                for k in keys:
                    if k not in found and len(copies[k]) > copy:
                        groups.setdefault(copies[k][copy], []).append(k)
            if not groups:
                break
            found.update((yield from self._fetch(groups, cas, "gets" if cas else "get")))
            if len(found) == len(keys):
                return found
        if not cas and self.membership.previous is not None and len(found) < len(keys):
            found.update((yield from self.warm_up([k for k in keys if k not in found])))
        return found

    def warm_up(self, keys: list[bytes]) -> Op[dict[bytes, Found]]:
        """During a move: keys that missed, read from their previous owners.

        Nothing is copied forward: the mover copies (and checks that its source did not change
        meanwhile), and every write or delete of this client removes the key from its previous
        owner (``_invalidate_previous``), so a value read here was not replaced or deleted by
        this client."""
        groups, _ = self.membership.previous_owners(keys)
        if not groups:
            return {}
        return (yield from self._fetch(groups, False, "warm-up"))

    def _fetch(self, groups: dict[Peer, list[bytes]], cas: bool, what: str) -> Op[dict[Any, Any]]:
        """One ``get``/``gets`` per peer, all at once: ``{key: (key, flags, data, cas)}`` of
        the hits, without a lease's placeholder."""
        if self.options.clock() >= self.debts.lease_until:
            groups = yield from self._leased(groups)
        calls = [
            Call(peer, protocol.get(ks, cas), _ONE_VALUES, what) for peer, ks in groups.items()
        ]
        found: dict[bytes, Found] = {}
        if not calls:
            return found
        yield calls
        for call in calls:
            values = self.reply(call)
            if values is not FAILED:
                for item in values:
                    if not is_placeholder(item[1], item[2]):
                        found[item[0]] = item
        return found

    def _previous_out(self, keys: Iterable[bytes]) -> list[Peer]:
        """During a move: the previous owners of ``keys`` that are out, to which the writes
        will owe deletes (``_invalidate_previous`` journals them). This client registers its
        debt for them before it writes, as for a node it writes around: until the journal is
        replayed, neither another client's miss nor the mover may read the old value there.
        (Read at each use, not kept for ``_invalidate_previous``: the pause of registering
        may see such an owner re-admitted, and then its deletes are sent, not journaled.)"""
        return [peer for _, peer in self.membership.previous_owners(keys)[1]]

    def _invalidate_previous(self, keys: Iterable[bytes]) -> Op[set[bytes]]:
        """During a move: delete written or deleted keys from their previous owners, so that
        neither a warm-up read nor a later move can bring the old value back (a previous owner
        that is out journals them instead). Returns the keys it deleted."""
        groups, out = self.membership.previous_owners(keys)
        self.recovery.journal(out)
        if not groups:
            return set()
        return (yield from self._drop(groups, "invalidate previous owner"))

    def _first_copy(self, key: bytes) -> dict[Peer, list[bytes]]:
        peer, _ = self.membership.route(key)
        return {} if peer is None else {peer: [key]}

    def get(self, key: str | bytes, default: Any) -> Op[Any]:
        k, peer = self.membership.owner(key)
        first = {peer: [k]} if peer.health.usable else self._first_copy(k)
        found = yield from self._read(first, [k], False)
        hit = found.get(k)
        return default if hit is None else self.deserialize(k, hit[2], hit[1])

    def gets(self, key: str | bytes, default: Any, cas_default: Any) -> Op[tuple[Any, Any]]:
        k = self.key(key)
        found = yield from self._read(self._first_copy(k), [k], True)
        hit = found.get(k)
        if hit is None:
            return default, cas_default
        return self.deserialize(k, hit[2], hit[1]), hit[3]

    def get_many(self, keys: Iterable[Any], cas: bool) -> Op[dict[Any, Any]]:
        groups, originals, _ = self.membership.group(keys)
        found = yield from self._read(groups, list(originals), cas)
        deserialize = self.deserialize
        out = {}
        for k, flags, data, token in found.values():
            value = deserialize(k, data, flags)
            out[originals[k]] = (value, token) if cas else value
        return out

    def get_entry(self, key: str | bytes) -> Op[Entry | None]:
        k = self.key(key)
        for peer in self.membership.copies(k)[0]:
            entries = yield from self.entries({peer: [k]}, "get_entry")
            if k in entries:
                flags, data, ttl, cas = entries[k]
                return Entry(self.deserialize(k, data, flags), ttl, cas)
        return None

    def get_or_set(
        self,
        key: str | bytes,
        default: Any,
        expire: int,
        lease: int,
        recache: int | None,
        wait: float,
        fallback: Any,
    ) -> Op[Any]:
        return leases.get_or_set(self, key, default, expire, lease, recache, wait, fallback)

    # -- writes ----------------------------------------------------------------------------
    def _write(
        self,
        k: bytes,
        owner: Peer,
        body: Callable[[list[Peer], bool], Op[T]],
        delete: bool = False,
        conditional: bool = False,
    ) -> Op[T]:
        """Run the write ``body`` on ``k``'s copies (owner first, and whether the owner is
        out): a copy it should reach and cannot is journaled for (``fence``), and so is each
        of its calls for its peer if it fails (the calls carry ``writes``). A returning copy
        gets the write after the stand-in that holds the key meanwhile has dropped it; a
        conditional write (its outcome depends on the value the returning copy may still be
        owed a replay for) is not made then: it fails, as against a node that is out. During a
        move the key is then removed from its previous owner."""
        if owner.health.usable and self.options.replicas == 1 and self.membership.previous is None:
            return body([owner], False)  # the common case, without a layer of its own
        return self._write_around(k, body, delete, conditional)

    def _write_around(
        self,
        k: bytes,
        body: Callable[[list[Peer], bool], Op[T]],
        delete: bool,
        conditional: bool,
    ) -> Op[T]:
        membership = self.membership
        standins = membership.returning_standins([k])
        if standins:
            if conditional:
                return (yield from body([], False))
            yield from self._drop(standins, "stand-in delete")
        peers, standin = membership.copies(k, writing=True)
        fenced = self.recovery.fence({k: peers})
        try:
            owed = [peer for peer, _, _ in fenced] + self._previous_out([k])
            if owed:
                yield from self.debts.register(owed)
            result = yield from body(peers, standin)
            if membership.previous is not None:
                gone = yield from self._invalidate_previous([k])
                if delete and result is False and k in gone:
                    result = True  # type: ignore[assignment]  # it lived on its previous owner
            return result
        finally:
            self.recovery.unfence(fenced)

    def _before_writing(
        self, keys: Iterable[bytes], unrouted: list[bytes], fenced: Fence
    ) -> Op[None]:
        """Before a multi-key write: refuse it when keys have nowhere to go (with
        ``raise_on_error``), register this client's debts for the peers written around, and
        remove the keys a returning peer gets from the stand-ins that hold them meanwhile."""
        if unrouted and self.options.raise_on_error:
            raise NoServerAvailable("every server is ejected")
        owed = [peer for peer, _, _ in fenced] + self._previous_out(keys)
        if owed:
            yield from self.debts.register(owed)
        if self.membership.all_usable():
            return
        standins = self.membership.returning_standins(keys)
        if standins:
            yield from self._drop(standins, "stand-in delete")

    def _drop(self, groups: dict[Peer, list[bytes]], what: str) -> Op[set[bytes]]:
        """Delete keys where they must not stay (``{peer: keys}``, all at once); the keys that
        were there. A delete that fails is journaled for its peer."""
        calls = []
        for peer, ks in groups.items():
            data = b"".join([protocol.delete(k) for k in ks])
            calls.append(Call(peer, data, (STATUS,) * len(ks), what, ks, writes=ks))
        yield calls
        gone: set[bytes] = set()
        for call in calls:
            if call.error is None:
                keys = call.keys or []
                gone.update(k for k, r in zip(keys, call.replies, strict=True) if r == b"DELETED")
        return gone

    def store(
        self,
        command: bytes,
        key: str | bytes,
        value: Any,
        expire: int,
        noreply: bool | None,
        flags: int | None,
        cas: int | bytes | None = None,
    ) -> Op[bool | None]:
        k, owner = self.membership.owner(key)
        data, flags = self.serialize(k, value, flags)
        token = None if cas is None else check_cas(cas)
        what = _WHAT.get(command) or command.decode()
        writes = [k]

        def body(peers: list[Peer], standin: bool) -> Op[bool | None]:
            if not peers:
                return False
            ttl = self.options.failover_expire(expire) if standin else expire
            if command == b"set" or len(peers) == 1:
                # Every copy gets a plain set; a conditional write goes to its only copy.
                kinds = () if noreply else _ONE_STATUS
                request = protocol.store(command, k, flags, ttl, data, token, bool(noreply))
                calls = [Call(peer, request, kinds, what, writes=writes) for peer in peers]
                yield calls
                if noreply:
                    return all(call.error is None for call in calls)
                result = self._store_result(calls[0])
                for call in calls[1:]:  # with replicas: stored if any copy stored it
                    other = self._store_result(call)
                    if other and not result:
                        result = other
                return result
            # A conditional write is decided by the first copy; what it wrote is then copied.
            request = protocol.store(command, k, flags, ttl, data, token)
            call = Call(peers[0], request, _ONE_STATUS, what, writes=writes)
            yield [call]
            result = self._store_result(call)
            if result:
                if command in (b"append", b"prepend"):
                    yield from self._sync_copies(k, peers, standin)
                else:  # add, replace, cas: the value and TTL written are known
                    request = protocol.store(b"set", k, flags, ttl, data)
                    yield [
                        Call(p, request, _ONE_STATUS, "replica set", writes=writes)
                        for p in peers[1:]
                    ]
            return result

        return (yield from self._write(k, owner, body, conditional=command != b"set"))

    def _store_result(self, call: Call) -> bool | None:
        reply = self.reply(call)
        return False if reply is FAILED else _STORE_RESULT.get(reply, False)

    def _sync_copies(self, k: bytes, peers: list[Peer], standin: bool) -> Op[None]:
        """After the first copy changed in place (append, incr, …): read it back with its
        TTL and write it to the other copies; delete them when that cannot be done."""
        entries = yield from self.entries({peers[0]: [k]}, "replica read")
        entry = entries.get(k)
        expire = None if entry is None else self.options.copy_expire(entry[2], standin)
        if entry is None or expire is None or entry[2] is None:
            request = protocol.delete(k)
            what = "replica delete"
        else:
            request = protocol.store(b"set", k, entry[0], expire, entry[1])
            what = "replica set"
        yield [Call(peer, request, _ONE_STATUS, what, writes=[k]) for peer in peers[1:]]

    def delta(self, command: bytes, key: str | bytes, amount: int, noreply: bool) -> Op[int | None]:
        k, owner = self.membership.owner(key)
        check_int(amount, "delta")

        def body(peers: list[Peer], standin: bool) -> Op[int | None]:
            if not peers:
                return None
            quiet = bool(noreply) and len(peers) == 1
            request = protocol.delta(command, k, amount, quiet)
            kinds = () if quiet else _ONE_STATUS
            call = Call(peers[0], request, kinds, command.decode(), writes=[k])
            yield [call]
            if quiet:
                return None
            reply = self.reply(call)
            if reply is FAILED or reply == b"NOT_FOUND":
                return None
            result = int(reply)
            if len(peers) > 1:
                yield from self._sync_copies(k, peers, standin)
            return result

        return (yield from self._write(k, owner, body, conditional=True))

    def touch(self, key: str | bytes, expire: int, noreply: bool | None) -> Op[bool]:
        k, owner = self.membership.owner(key)

        def body(peers: list[Peer], standin: bool) -> Op[bool]:
            ttl = self.options.failover_expire(expire) if standin else expire
            kinds = () if noreply else _ONE_STATUS
            request = protocol.touch(k, ttl, bool(noreply))
            calls = [Call(p, request, kinds, "touch", writes=[k]) for p in peers]
            if not calls:
                return False
            yield calls
            if noreply:
                return all(call.error is None for call in calls)
            return any([self.reply(call) == b"TOUCHED" for call in calls])

        return (yield from self._write(k, owner, body))

    def delete(
        self, key: str | bytes, noreply: bool | None, cas: int | bytes | None, stale: bool = False
    ) -> Op[bool | None]:
        k, owner = self.membership.owner(key)
        token = None if cas is None else check_cas(cas)
        writes = [k]

        def body(peers: list[Peer], standin: bool) -> Op[bool | None]:
            if not peers:
                return False
            if stale and peers[0].meta is not False:
                # Serve-stale: the value stays readable (marked stale) until one caller of
                # get_or_set refreshes it, for at most 30 s.
                request = protocol.meta_delete(k, b"I T30")
                calls = [Call(p, request, (META,), "delete", writes=writes) for p in peers]
                yield calls
                replies = [c.replies[0] if c.error is None else None for c in calls]
                if not any(isinstance(r, UnknownCommandError) for r in replies):
                    return any(isinstance(r, Meta) and r.code == b"HD" for r in replies)
                peers[0].meta = False  # fall through: a plain delete
            if token is not None:
                result = yield from self._delete_if_unchanged(peers[0], k, token)
                if result and len(peers) > 1:
                    request = protocol.delete(k)
                    yield [
                        Call(p, request, _ONE_STATUS, "delete", writes=writes) for p in peers[1:]
                    ]
                return result
            kinds = () if noreply else _ONE_STATUS
            request = protocol.delete(k, bool(noreply))
            calls = [Call(p, request, kinds, "delete", writes=writes) for p in peers]
            yield calls
            if noreply:
                return all(call.error is None for call in calls)
            return any([self.reply(call) == b"DELETED" for call in calls])

        return (
            yield from self._write(
                k, owner, body, delete=token is None, conditional=token is not None
            )
        )

    def _delete_if_unchanged(self, peer: Peer, k: bytes, cas: bytes) -> Op[bool | None]:
        """Delete ``k`` only if its CAS token is still ``cas``: True when deleted, False when
        it changed, None when it is not there. ``md k C<cas>`` where the peer speaks meta;
        elsewhere a ``cas`` that stores an already-expired empty value (exptime -1), which
        memcached treats exactly as a conditional delete."""
        if peer.meta is not False:
            call = Call(peer, protocol.meta_delete(k, b"C" + cas), (META,), "delete", writes=[k])
            yield [call]
            first = call.replies[0] if call.error is None else None
            if not isinstance(first, UnknownCommandError):
                reply = self.reply(call)
                if reply is FAILED:
                    return False
                peer.meta = True
                return {b"HD": True, b"EX": False}.get(reply.code)  # NF: None
            peer.meta = False
        request = protocol.store(b"cas", k, 0, -1, b"", cas)
        call = Call(peer, request, _ONE_STATUS, "delete", writes=[k])
        yield [call]
        return self._store_result(call)

    # -- multi-key writes ------------------------------------------------------------------
    def _write_groups(
        self, keys: Iterable[Any]
    ) -> tuple[dict[Peer, list[bytes]], dict[bytes, Any], list[bytes], Fence]:
        """Every copy's peer with its keys (returning peers included); the original key of
        each; keys with no peer; the writes fenced (``unfence`` them when done); then
        ``_before_writing``."""
        membership = self.membership
        if self.options.replicas == 1:
            groups, originals, unrouted = membership.group(keys, writing=True)
        else:
            originals = {self.key(key): key for key in keys}
            groups = membership.group_copies(originals)
            placed_keys = {k for ks in groups.values() for k in ks}
            unrouted = [k for k in originals if k not in placed_keys]
        if membership.all_usable():
            return groups, originals, unrouted, []
        placed: dict[bytes, list[Peer]] = {}
        for peer, ks in groups.items():
            for k in ks:
                placed.setdefault(k, []).append(peer)
        return groups, originals, unrouted, self.recovery.fence(placed)

    def set_many(
        self, values: Mapping[Any, Any], expire: int, noreply: bool | None
    ) -> Op[list[Any]]:
        """Store every value; returns the keys that were not stored (pymemcache's contract)."""
        groups, originals, unrouted, fenced = self._write_groups(values)
        try:
            yield from self._before_writing(originals, unrouted, fenced)
            serialized = {k: self.serialize(k, values[originals[k]], None) for k in originals}
            calls = []
            for peer, ks in groups.items():
                parts = []
                for k in ks:
                    data, flags = serialized[k]
                    # Only a key whose holder is out (fenced) can have its owner out.
                    ttl = self.membership.ttl_for(k, expire) if fenced else expire
                    parts.append(protocol.store(b"set", k, flags, ttl, data, None, bool(noreply)))
                kinds = () if noreply else (STATUS,) * len(ks)
                calls.append(Call(peer, b"".join(parts), kinds, "set_many", ks, writes=ks))
            yield calls
            yield from self._invalidate_previous(originals)
        finally:
            self.recovery.unfence(fenced)
        stored: set[bytes] = set()
        for call in calls:
            if noreply:
                if call.error is None:
                    stored.update(call.keys or ())
                continue
            for i, k in enumerate(call.keys or ()):
                if self.reply(call, i) == _STORED:
                    stored.add(k)
        return [original for k, original in originals.items() if k not in stored]

    def delete_many(self, keys: Iterable[Any], noreply: bool | None) -> Op[bool]:
        groups, originals, unrouted, fenced = self._write_groups(keys)
        try:
            yield from self._before_writing(originals, unrouted, fenced)
            calls = []
            for peer, ks in groups.items():
                data = b"".join([protocol.delete(k, bool(noreply)) for k in ks])
                kinds = () if noreply else (STATUS,) * len(ks)
                calls.append(Call(peer, data, kinds, "delete_many", ks, writes=ks))
            if calls:
                yield calls
            yield from self._invalidate_previous(originals)
        finally:
            self.recovery.unfence(fenced)
        ok = not unrouted
        for call in calls:
            if call.error is not None:
                self.reply(call)
                ok = False
            elif not noreply:
                for i in range(len(call.kinds)):
                    if self.reply(call, i) is FAILED:
                        ok = False
        return ok

    # -- every node ------------------------------------------------------------------------
    def _each(self, what: str, request: bytes, kind: int) -> Op[dict[str, Any]]:
        """``request`` to every usable peer at once: ``{"host:port": reply}`` of those that
        answered."""
        calls = [Call(p, request, (kind,), what) for p in self.peers.values() if p.health.usable]
        if calls:
            yield calls
        out = {}
        for call in calls:
            reply = self.reply(call)
            if reply is not FAILED:
                out[str(call.peer.server)] = reply
        return out

    def stats(self, args: tuple[str, ...]) -> Op[dict[str, dict[bytes, Any]]]:
        replies = yield from self._each("stats", protocol.stats(*args), STATS)
        return {name: protocol.typed_stats(stats) for name, stats in replies.items()}

    def version(self) -> Op[dict[str, bytes]]:
        replies = yield from self._each("version", protocol.VERSION, STATUS)
        return {name: line.removeprefix(b"VERSION ") for name, line in replies.items()}

    def flush_all(self, delay: int, noreply: bool | None) -> Op[bool]:
        """Flush every peer; True when every peer (usable or not) confirmed."""
        done = yield from self._each("flush_all", protocol.flush_all(delay), STATUS)
        return len(done) == len(self.peers) and all(r == b"OK" for r in done.values())


def _meta_ttl(reply: Meta) -> int | None:
    """The remaining TTL of a meta hit as ``set`` takes it (0 = never); None when the value
    expires within the second (no copy of it is worth making)."""
    t = reply.number("t")
    if t is None or t == -1:
        return 0
    return t if t > 0 else None


class Face:
    """What both drivers show of the engine they hold (``self.engine``): the membership, the
    ring, each node's state as this client saw it, and where a key goes."""

    engine: Engine

    @property
    def options(self) -> Options:
        return self.engine.options

    @property
    def servers(self) -> list[Server]:
        return self.engine.membership.view.servers

    @property
    def ring(self) -> Ring:
        return self.engine.ring

    @property
    def nodes(self) -> dict[str, Peer]:
        return self.engine.peers

    @property
    def cluster_version(self) -> int:
        return self.engine.membership.version

    def key(self, key: str | bytes) -> bytes:
        """The validated key as sent, prefix included."""
        return self.engine.key(key)

    def server_for(self, key: str | bytes) -> Server:
        """The server that owns ``key`` on the ring (whatever its health)."""
        return self.engine.server_for(key)

    def node_stats(self) -> dict[str, dict[str, Any]]:
        """What this client saw of each node (``Engine.node_stats``)."""
        return self.engine.node_stats()
