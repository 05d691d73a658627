"""DNS in a LOCATION without sockets: the queries the engine sends (as ``Datagram`` steps) and
what it makes of the answers (built with dnspython, as a nameserver would send them)."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from ringcache.client import protocol
from ringcache.client.engine import Engine
from ringcache.client.options import Options
from ringcache.client.resolve import DnsEntry, ResolverConfig, resolve, split_location
from ringcache.client.ring import Server
from ringcache.client.steps import Datagram, Op

SRV_NAME = "_memcache._tcp.ringcache.ns.svc.cluster.local"
NS1, NS2 = ("10.0.0.53", 53), ("10.0.0.54", 5353)


class Nameservers:
    """Answers each ``Datagram`` with what a handler makes of the parsed query."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.asked: list[tuple[tuple[str, int], str, str]] = []

    def run(self, op: Op[Any], peers: Any = None) -> Any:
        try:
            step = next(op)
            while True:
                if isinstance(step, Datagram):
                    query = dns.message.from_wire(step.data)
                    question = query.question[0]
                    qname = question.name.to_text(omit_final_dot=True)
                    kind = dns.rdatatype.to_text(question.rdtype)
                    self.asked.append((step.address, qname, kind))
                    if step.tcp:
                        reply = self.handler(step.address, query, qname, kind, tcp=True)
                    else:
                        reply = self.handler(step.address, query, qname, kind)
                    size = 65535 if step.tcp else 0  # 0: the query's EDNS payload
                    step.reply = None if reply is None else reply.to_wire(max_size=size)
                    step = op.send(step)
                else:
                    assert peers is not None, step
                    step = op.send(peers(step))
        except StopIteration as stop:
            return stop.value


def answer(query: dns.message.Message, *records: str, rcode: int = 0, extra: tuple = ()):
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for text in records:
        name, kind, *data = text.split()
        reply.answer.append(dns.rrset.from_text(name + ".", 30, "IN", kind, " ".join(data)))
    for text in extra:
        name, kind, *data = text.split()
        reply.additional.append(dns.rrset.from_text(name + ".", 30, "IN", kind, " ".join(data)))
    return reply


def test_location_entries():
    plain, names = split_location(f"dnssrv+{SRV_NAME};dns+ringcache:11311;10.1.1.1:11211")
    assert names == [DnsEntry("srv", SRV_NAME), DnsEntry("a", "ringcache", 11311)]
    assert plain == [Server("10.1.1.1", 11211)]
    assert split_location(["dns+cache"]) == ([], [DnsEntry("a", "cache", 11211)])
    assert split_location("h1:11211;h2") == ([Server("h1"), Server("h2")], [])
    for bad in ("dnssrv+", "dnssrv+name:11211", "dns+name:port", "dns+:0"):
        with pytest.raises(ValueError, match="bad"):
            split_location(bad)


def test_search_rule_of_resolv_conf(tmp_path, monkeypatch):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local\n"
        "options ndots:5 timeout:1\n"
    )
    monkeypatch.setattr("ringcache.client.resolve.RESOLV_CONF", conf)
    config = ResolverConfig.from_options(())
    assert config.nameservers == (("10.96.0.10", 53),) and config.ndots == 5
    assert config.names("ringcache") == [
        "ringcache.ns.svc.cluster.local", "ringcache.svc.cluster.local", "ringcache"
    ]  # fmt: skip
    assert config.names("a.b.c.d.e.f")[0] == "a.b.c.d.e.f"
    assert config.names("absolute.") == ["absolute."]
    assert ResolverConfig.from_options(("127.0.0.1:5353",)).nameservers == (("127.0.0.1", 5353),)
    with pytest.raises(ValueError, match="dns_nameservers"):
        ResolverConfig.from_options(("127.0.0.1:x",))


def test_srv_targets_are_the_names_and_their_addresses_where_to_connect():
    def handler(address, query, qname, kind):
        if kind == "SRV":
            return answer(
                query,
                f"{SRV_NAME} SRV 0 50 11211 ringcache-1.ringcache.ns.svc.cluster.local.",
                f"{SRV_NAME} SRV 0 50 11211 ringcache-0.ringcache.ns.svc.cluster.local.",
                extra=("ringcache-0.ringcache.ns.svc.cluster.local A 10.2.0.7",),
            )
        assert (qname, kind) == ("ringcache-1.ringcache.ns.svc.cluster.local", "A")
        return answer(query, f"{qname} A 10.2.0.9")

    ns = Nameservers(handler)
    config = ResolverConfig((NS1,))
    servers = ns.run(resolve(config, [DnsEntry("srv", SRV_NAME)]))
    assert [s.name for s in servers] == [
        "ringcache-0.ringcache.ns.svc.cluster.local", "ringcache-1.ringcache.ns.svc.cluster.local"
    ]  # fmt: skip
    assert [s.address for s in servers] == [("10.2.0.7", 11211), ("10.2.0.9", 11211)]
    # The address is not the server's identity: the same name elsewhere is the same server.
    assert servers[0] == Server("ringcache-0.ringcache.ns.svc.cluster.local", 11211)
    assert [kind for _, _, kind in ns.asked] == ["SRV", "A"]  # the additional section served


def test_a_records_the_search_list_and_a_failing_nameserver():
    def handler(address, query, qname, kind):
        if address == NS1:
            return None  # times out
        if qname == "ringcache.ns.svc.cluster.local" and kind == "A":
            return answer(query, f"{qname} A 10.2.0.9", f"{qname} A 10.2.0.7")
        return answer(query, rcode=dns.rcode.NXDOMAIN)

    ns = Nameservers(handler)
    config = ResolverConfig((NS1, NS2), ("ns.svc.cluster.local",), ndots=5)
    servers = ns.run(resolve(config, [DnsEntry("a", "ringcache", 11311)]))
    assert servers == [Server("10.2.0.7", 11311), Server("10.2.0.9", 11311)]
    assert ns.asked == [
        (NS1, "ringcache.ns.svc.cluster.local", "A"), (NS2, "ringcache.ns.svc.cluster.local", "A")
    ]  # fmt: skip


def test_no_answer_and_a_wrong_id_are_failures_not_an_empty_cluster():
    def handler(address, query, qname, kind):
        reply = answer(query, f"{qname} A 10.2.0.9")
        reply.id = (query.id + 1) % 65536  # not the answer to this query
        return reply

    ns = Nameservers(handler)
    assert ns.run(resolve(ResolverConfig((NS1,)), [DnsEntry("a", "x", 1)])) is None
    ns = Nameservers(lambda *args: None)
    assert ns.run(resolve(ResolverConfig((NS1, NS2)), [DnsEntry("srv", SRV_NAME)])) is None


def test_a_truncated_answer_is_asked_again_over_tcp():
    pods = [f"{SRV_NAME} SRV 0 50 11211 ringcache-{i}.ringcache." for i in range(40)]
    over: list[bool] = []

    def handler(address, query, qname, kind, tcp=False):
        if kind == "A":
            return answer(query, f"{qname} A 10.2.0.1")
        over.append(tcp)
        if not tcp:  # the other pods did not fit: not a scale-down
            reply = answer(query, *pods[:3])
            reply.flags |= dns.flags.TC
            return reply
        return answer(query, *pods)

    ns = Nameservers(handler)
    servers = ns.run(resolve(ResolverConfig((NS1,)), [DnsEntry("srv", SRV_NAME)]))
    assert len(servers) == 40 and over == [False, True]
    ns = Nameservers(lambda *args, tcp=False: None if tcp else handler(*args))
    assert ns.run(resolve(ResolverConfig((NS1,)), [DnsEntry("srv", SRV_NAME)])) is None


def engine_with(handler: Any, clock: list[float]) -> tuple[Engine, Nameservers]:
    options = Options(clock=lambda: clock[0], dns_nameservers=("10.0.0.53:53",), dns_interval=10)
    return Engine(f"dnssrv+{SRV_NAME}", options), Nameservers(handler)


def srv_handler(pods: dict[str, str]):
    def handler(address, query, qname, kind):
        if kind == "SRV":
            records = [f"{SRV_NAME} SRV 0 50 11211 {name}." for name in pods]
            return answer(query, *records, extra=tuple(f"{n} A {ip}" for n, ip in pods.items()))
        return answer(query, rcode=dns.rcode.NXDOMAIN)

    return handler


def no_published_membership(step: list) -> list:
    for call in step:
        assert call.data == protocol.CONFIG_GET
        call.replies = [protocol.ClusterConfig(0, [])]
    return step


def test_the_engine_resolves_when_due_and_dns_never_changes_the_ring_by_itself():
    pods = {"pod-0.rc": "10.2.0.1", "pod-1.rc": "10.2.0.2"}
    clock = [100.0]
    engine, ns = engine_with(srv_handler(pods), clock)
    assert engine.options.discovery is True  # a DNS LOCATION discovers by default
    assert engine.peers == {}
    assert engine.membership.route(b"k")[0] is None  # before DNS answers: a miss, no server
    assert ns.run(engine.discover(), no_published_membership) is True
    assert sorted(engine.peers) == ["pod-0.rc", "pod-1.rc"]
    ring = engine.membership.view.ring
    asked = len(ns.asked)
    assert ns.run(engine.discover(), no_published_membership) is False
    assert len(ns.asked) == asked  # not due yet: no query
    # A scale-up and a pod that came back at another address, seen after dns_interval.
    pods.update({"pod-1.rc": "10.2.0.9", "pod-2.rc": "10.2.0.3"})
    clock[0] += 10
    assert ns.run(engine.discover(), no_published_membership) is False
    assert sorted(engine.peers) == ["pod-0.rc", "pod-1.rc"]  # the ring waits for a publish
    assert engine.membership.view.ring is ring
    assert engine.peers["pod-1.rc"].server.address == ("10.2.0.9", 11211)
    # DNS failing keeps everything known.
    engine.dns.config = ResolverConfig((("10.0.0.99", 53),))
    ns.handler = lambda *args: None
    clock[0] += 10
    assert ns.run(engine.discover(), no_published_membership) is False
    assert sorted(engine.peers) == ["pod-0.rc", "pod-1.rc"]


def test_a_published_membership_gets_the_addresses_dns_gave_its_names():
    pods = {"pod-0.rc": "10.2.0.1", "pod-1.rc": "10.2.0.2", "pod-2.rc": "10.2.0.3"}
    engine, ns = engine_with(srv_handler(pods), [0.0])

    def published(step: list) -> list:
        for call in step:
            call.replies = [
                protocol.ClusterConfig(2, [Server(n, 11211) for n in ("pod-0.rc", "pod-2.rc")])
            ]
        return step

    assert ns.run(engine.discover(), published) is True
    assert engine.membership.version == 2
    assert {n: p.server.address for n, p in engine.peers.items()} == {
        "pod-0.rc": ("10.2.0.1", 11211), "pod-2.rc": ("10.2.0.3", 11211)
    }  # fmt: skip
