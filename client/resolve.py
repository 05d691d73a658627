"""DNS in a LOCATION, sans-IO: ``dnssrv+NAME`` and ``dns+NAME:PORT``.

This module owns which LOCATION entries are DNS names (the spellings of Grafana Mimir, Loki
and Thanos: ``dnssrv+_memcache._tcp.ringcache.NS.svc.cluster.local`` asks for SRV records,
``dns+ringcache:11211`` for A/AAAA records), the resolver's configuration (``dns_nameservers``,
else ``/etc/resolv.conf`` with its search list and ``ndots``), the queries (built and read with
dnspython's message module; each goes out as a ``Datagram`` step that a driver sends and
answers with the reply's bytes), how answers become servers, and what a failure does.

- An SRV record gives a server named by its *target* (``ringcache-0.ringcache.NS.svc…``) and
  port: the ring is keyed on the name, so a pod that comes back with another address keeps its
  keys; the address DNS gives the name is where the client connects (``Server.ip``).
- An A/AAAA record gives a server named by its address, on the entry's port.
- An empty or failed answer keeps what was known before, and is logged. An answer cut short
  (more pods than one datagram carries: about ten with their addresses) is asked again over
  TCP, as resolvers do.

DNS finds the nodes; it does not decide the membership on its own (``Membership.found``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from .ring import DEFAULT_PORT, Server, parse_location
from .steps import Datagram, Op

log = logging.getLogger("ringcache.client")

SRV_PREFIX = "dnssrv+"
A_PREFIX = "dns+"
EDNS_PAYLOAD = 1232  # the size DNS flag day 2020 deems safe; a longer answer comes over TCP
RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class DnsEntry:
    """One DNS name of a LOCATION: ``srv`` (SRV records) or ``a`` (addresses, on ``port``)."""

    kind: str
    name: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        if self.kind == "srv":
            return f"{SRV_PREFIX}{self.name}"
        return f"{A_PREFIX}{self.name}:{self.port}"


def parse_entry(spec: str) -> DnsEntry | None:
    """The DNS entry ``spec`` spells, or None when it is a plain server."""
    spec = spec.strip()
    if spec.startswith(SRV_PREFIX):
        name = spec[len(SRV_PREFIX) :]
        if not name or ":" in name:
            raise ValueError(f"bad SRV name in {spec!r} (dnssrv+NAME: the port comes from DNS)")
        return DnsEntry("srv", name)
    if spec.startswith(A_PREFIX):
        name, sep, port = spec[len(A_PREFIX) :].rpartition(":")
        if not sep:
            name, port = port, str(DEFAULT_PORT)
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad name or port in {spec!r} (dns+NAME:PORT)")
        return DnsEntry("a", name, int(port))
    return None


def split_location(
    location: str | Iterable[Any] | Mapping[str, Any],
) -> tuple[list[Server], list[DnsEntry]]:
    """A LOCATION's plain servers and its DNS names (a LOCATION may mix them)."""
    if isinstance(location, str):
        items: list[Any] = location.replace(",", ";").split(";")
    elif isinstance(location, Mapping):
        return parse_location(location), []
    else:
        items = list(location)
    plain: list[Any] = []
    names: list[DnsEntry] = []
    for item in items:
        entry = parse_entry(item) if isinstance(item, str) else None
        if entry is None:
            plain.append(item)
        elif entry not in names:
            names.append(entry)
    if not names:
        return parse_location(location), []
    has_plain = any(not isinstance(i, str) or i.strip() for i in plain)
    return (parse_location(plain) if has_plain else []), names


@dataclass(frozen=True)
class ResolverConfig:
    """Where queries go and which names are tried for a short one."""

    nameservers: tuple[tuple[str, int], ...]
    search: tuple[str, ...] = ()
    ndots: int = 1

    @classmethod
    def from_options(cls, nameservers: tuple[str, ...]) -> ResolverConfig:
        """``dns_nameservers`` ("host:port", port 53 by default) when given, else the
        system's ``/etc/resolv.conf`` (nameserver, search/domain, options ndots)."""
        if nameservers:
            return cls(tuple(_host_port(spec) for spec in nameservers))
        servers: list[tuple[str, int]] = []
        search: tuple[str, ...] = ()
        ndots = 1
        try:
            lines = RESOLV_CONF.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0] == "nameserver":
                servers.append((words[1], 53))
            elif words and words[0] in ("search", "domain"):
                search = tuple(words[1:])
            elif words and words[0] == "options":
                for opt in words[1:]:
                    if opt.startswith("ndots:") and opt[6:].isdigit():
                        ndots = min(int(opt[6:]), 15)
        return cls(tuple(servers) or (("127.0.0.1", 53),), search, ndots)

    def names(self, name: str) -> list[str]:
        """The names to ask for, in order (the resolver's search rule)."""
        if name.endswith("."):
            return [name]
        searched = [f"{name}.{domain}" for domain in self.search]
        return [name, *searched] if name.count(".") >= self.ndots else [*searched, name]


def _host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.strip().rpartition(":")
    if not sep:
        host, port = port, "53"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad dns_nameservers entry {spec!r} (host:port)")
    return host.strip("[]"), int(port)


def query(
    config: ResolverConfig, name: str, rdtype: dns.rdatatype.RdataType
) -> Op[dns.message.Message | None]:
    """The answer that has records of ``rdtype`` for ``name`` (the first of the search names
    that has some), or None: every nameserver failed, or no name has such records."""
    for qname in config.names(name):
        for nameserver in config.nameservers:
            request = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
            answer = yield from _ask(nameserver, request, False)
            if answer is not None and answer.flags & dns.flags.TC:
                # Cut short (more pods than one datagram carries): what came is not all there
                # is, and a part would look like a scale-down. Asked again over TCP.
                answer = yield from _ask(nameserver, request, True)
            if answer is None:
                continue  # that nameserver failed: the next one
            if answer.rcode() == dns.rcode.NXDOMAIN:
                break  # no such name: the next search name
            if answer.rcode() != dns.rcode.NOERROR:
                continue
            if any(rrset.rdtype == rdtype for rrset in answer.answer):
                return answer
            break  # the name exists without such records
    return None


def _ask(
    nameserver: tuple[str, int], request: dns.message.Message, tcp: bool
) -> Op[dns.message.Message | None]:
    """One exchange with one nameserver: its answer to ``request``, or None."""
    step = Datagram(nameserver, request.to_wire(), tcp)
    yield step
    if step.reply is None:
        return None
    try:
        answer = dns.message.from_wire(step.reply)
    except dns.exception.DNSException:
        return None
    if answer.id != request.id or (tcp and answer.flags & dns.flags.TC):
        return None
    return answer


def _addresses(message: dns.message.Message, section: list[Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rrset in section:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            name = rrset.name.to_text(omit_final_dot=True)
            found.setdefault(name, []).extend(sorted(rr.address for rr in rrset))
    return found


def resolve(config: ResolverConfig, entries: list[DnsEntry]) -> Op[list[Server] | None]:
    """The servers ``entries`` name now, or None when any of them could not be resolved (the
    caller then keeps what it knew: a partial answer must not look like a scale-down)."""
    servers: list[Server] = []
    for entry in entries:
        if entry.kind == "srv":
            answer = yield from query(config, entry.name, dns.rdatatype.SRV)
            if answer is None:
                return None
            known = _addresses(answer, answer.additional)
            targets = sorted(
                {
                    (rr.target.to_text(omit_final_dot=True), rr.port)
                    for rrset in answer.answer
                    if rrset.rdtype == dns.rdatatype.SRV
                    for rr in rrset
                }
            )
            for target, port in targets:
                ips = known.get(target)
                if ips is None:
                    found = yield from query(config, target + ".", dns.rdatatype.A)
                    ips = [] if found is None else _addresses(found, found.answer).get(target, [])
                servers.append(Server(host=target, port=port, ip=ips[0] if ips else None))
        else:
            answer = yield from query(config, entry.name, dns.rdatatype.A)
            if answer is None:
                answer = yield from query(config, entry.name, dns.rdatatype.AAAA)
            if answer is None:
                return None
            ips = sorted({ip for got in _addresses(answer, answer.answer).values() for ip in got})
            servers.extend(Server(host=ip, port=entry.port) for ip in ips)
    return servers


class Dns:
    """The DNS names of one client's LOCATION: what they resolved to last, and when to ask
    again (every ``dns_interval`` seconds, on the injected clock)."""

    def __init__(self, entries: list[DnsEntry], config: ResolverConfig, interval: float) -> None:
        self.entries = entries
        self.config = config
        self.interval = interval
        self.servers: list[Server] | None = None  # None: never resolved
        self.next_due = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def lookup(self, now: float) -> Op[list[Server] | None]:
        """Resolve every name; the servers they name, or None (logged; nothing forgotten)."""
        self.next_due = now + self.interval
        found = yield from resolve(self.config, self.entries)
        names = ", ".join(map(str, self.entries))
        if not found:
            log.warning("DNS %s: %s; keeping the servers known before", names,
                        "no answer" if found is None else "no records")  # fmt: skip
            return None
        self.servers = found
        return found

    @property
    def addresses(self) -> dict[str, str]:
        """SRV target -> the address DNS gave it last."""
        return {s.host: s.ip for s in self.servers or [] if s.ip is not None}

    def placed(self, servers: list[Server]) -> list[Server]:
        """``servers`` (a published membership) with the addresses DNS gave their names."""
        return placed(servers, self.servers or [])


def placed(servers: list[Server], found: list[Server]) -> list[Server]:
    """``servers`` (a published membership) with the addresses that ``found`` (what DNS
    resolved) gives their names; a name DNS did not give keeps its own."""
    addresses = {s.host: s.ip for s in found if s.ip is not None}
    return [replace(s, ip=addresses[s.host]) if s.host in addresses else s for s in servers]


def joined(plain: list[Server], found: list[Server]) -> list[Server]:
    """A LOCATION's plain servers, then those its DNS names found that it does not name."""
    known = {s.name for s in plain}
    return [*plain, *(s for s in found if s.name not in known)]
