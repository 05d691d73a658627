"""The engine's rules without sockets, as h11 tests its connection: an operation is run by
``Wire``, a driver that answers each call with reply bytes (or a connection failure) queued
for its server, and the bytes each operation sends are asserted. The clocks are injected."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

import pytest

from ringcache.client import IllegalInputError, NoServerAvailable, ServerError
from ringcache.client.debts import HOLD, LEASE, WATCH
from ringcache.client.engine import Engine
from ringcache.client.health import State
from ringcache.client.leases import NO_FALLBACK
from ringcache.client.options import Options
from ringcache.client.protocol import NEED_DATA, Reader
from ringcache.client.ring import Server
from ringcache.client.steps import Compute, Op, Pause

LOCATION = ["h1:11211", "h2:11211", "h3:11211"]
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Wire:
    """A driver without I/O: each call takes the next answer queued for its server."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.answers: dict[str, deque[Any]] = defaultdict(deque)
        self.sent: list[tuple[str, bytes]] = []
        self.fresh: list[bool] = []
        self.ejected: list[str] = []
        self.pauses: list[float] = []

    def answer(self, name: str, *answers: bytes | BaseException) -> None:
        self.answers[name].extend(answers)

    def run(self, op: Op[Any]) -> Any:
        try:
            step = next(op)
            while True:
                if isinstance(step, list):
                    for call in step:
                        name = call.peer.server.name
                        self.sent.append((name, call.data))
                        self.fresh.append(call.fresh)
                        assert self.answers[name], f"nothing queued for {name}: {call.data!r}"
                        answer = self.answers[name].popleft()
                        if isinstance(answer, BaseException):
                            call.error = answer
                            continue
                        reader = Reader()
                        reader.feed(answer)
                        call.replies = [reader.next(kind) for kind in call.kinds]
                        assert NEED_DATA not in call.replies and not reader.buffered, answer
                    self.ejected += [p.server.name for p in self.engine.settle(step)]
                    step = op.send(step)
                elif isinstance(step, Pause):
                    self.pauses.append(step.seconds)
                    self.clock.t += step.seconds
                    step = op.send(None)
                else:
                    assert isinstance(step, Compute)
                    try:
                        value = step.fn()
                    except BaseException as exc:
                        step = op.throw(exc)
                    else:
                        step = op.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def take(self) -> list[tuple[str, bytes]]:
        sent, self.sent = self.sent, []
        assert not any(self.answers.values()), f"answers left unread: {dict(self.answers)}"
        return sent


def make(location: Any = LOCATION, leased: bool = True, **options: Any) -> tuple[Engine, Wire]:
    """An engine on ``LOCATION``; the cross-client debts are off unless asked for (their own
    tests below), so the other tests show only the bytes of their own rule. With the debts
    on, the engine holds a lease on them (a look that found nothing) unless ``leased`` is
    False: the lease's own tests."""
    clock = Clock(100.0)
    options.setdefault("agreement", False)
    opts = Options(clock=clock, wall_clock=lambda: NOW, **options)
    engine = Engine(location, opts)
    if leased:
        engine.debts.lease_until = float("inf")
    return engine, Wire(engine, clock)


def key_on(engine: Engine, name: str, skip: int = 0) -> str:
    """A key that the ring gives to ``name``."""
    found = (k for k in (f"k{i}" for i in range(10_000)) if engine.server_for(k).name == name)
    for _ in range(skip):
        next(found)
    return next(found)


def eject(engine: Engine, wire: Wire, name: str) -> None:
    """Two failed reads of one of ``name``'s keys eject it (failure_limit 2)."""
    key = key_on(engine, name)
    wire.answer(name, ConnectionRefusedError(111, "refused"), TimeoutError("timed out"))
    assert wire.run(engine.get(key, None)) is None
    assert wire.ejected == []
    assert wire.run(engine.get(key, None)) is None
    assert wire.ejected == [name]
    wire.take()
    wire.ejected.clear()


def standin_of(engine: Engine, key: str) -> str:
    return list(engine.ring.candidates(key.encode()))[1].name


def value(key: str, data: bytes, flags: int = 0, cas: int | None = None) -> bytes:
    tail = b"" if cas is None else b" %d" % cas
    return b"VALUE %s %d %d%s\r\n%s\r\n" % (key.encode(), flags, len(data), tail, data)


# -- routing and keys ------------------------------------------------------------------------
def test_a_get_is_one_request_to_the_keys_owner_on_the_ring():
    engine, wire = make()
    for i in range(30):
        key = f"user:{i}"
        owner = engine.ring.get(key.encode()).name
        wire.answer(owner, value(key, b"v") + b"END\r\n")
        assert wire.run(engine.get(key, None)) == b"v"
        assert wire.take() == [(owner, b"get user:%d\r\n" % i)]


def test_get_many_is_one_request_per_server_in_one_step():
    engine, wire = make()
    keys = [f"m{i}" for i in range(40)]
    by_owner: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        by_owner[engine.ring.get(k.encode()).name].append(k)
    for name, ks in by_owner.items():
        wire.answer(name, b"".join(value(k, k.encode()) for k in ks[:-1]) + b"END\r\n")
    got = wire.run(engine.get_many(keys, False))
    sent = wire.take()
    assert sorted(sent) == sorted(
        (name, b"get " + b" ".join(k.encode() for k in ks) + b"\r\n")
        for name, ks in by_owner.items()
    )
    assert got == {k: k.encode() for ks in by_owner.values() for k in ks[:-1]}


@pytest.mark.parametrize("bad", ["", "a b", "x" * 251, "a\r\nflush_all", "tab\tkey", b"\x00", 7])
def test_a_bad_key_is_refused_before_anything_is_sent(bad):
    engine, wire = make()
    for op in (
        lambda: engine.get(bad, None),
        lambda: engine.store(b"set", bad, b"v", 0, None, None),
        lambda: engine.get_many(["ok", bad], False),
        lambda: engine.set_many({bad: b"v"}, 0, None),
        lambda: engine.delete(bad, None, None),
    ):
        with pytest.raises(IllegalInputError):
            wire.run(op())
    assert wire.take() == []


def test_the_key_prefix_is_sent_and_hashed_and_counts_towards_250_bytes():
    engine, wire = make(key_prefix=b"app:")
    owner = engine.ring.get(b"app:k").name
    wire.answer(owner, b"STORED\r\n")
    assert wire.run(engine.store(b"set", "k", b"v", 0, None, None)) is True
    assert wire.take() == [(owner, b"set app:k 0 0 1\r\nv\r\n")]
    with pytest.raises(IllegalInputError):
        wire.run(engine.get("x" * 247, None))


def test_a_lease_placeholder_reads_as_a_miss_everywhere():
    engine, wire = make()
    key = key_on(engine, "h1")
    wire.answer("h1", value(key, b"") + b"END\r\n", value(key, b"") + b"END\r\n")
    assert wire.run(engine.get(key, "default")) == "default"
    assert wire.run(engine.get_many([key], False)) == {}
    wire.answer("h1", b"VA 0 f0 t30 c5\r\n\r\n")
    assert wire.run(engine.get_entry(key)) is None
    wire.take()


def test_values_round_trip_through_the_serde_with_its_flags():
    engine, wire = make()
    key = key_on(engine, "h2")
    wire.answer("h2", b"STORED\r\n")
    assert wire.run(engine.store(b"set", key, {"a": 1}, 0, None, None))
    ((_, request),) = wire.take()
    line, data = request.split(b"\r\n")[:2]
    assert line.split()[2] == b"1"  # pickle_serde's flag for a pickled value
    wire.answer("h2", value(key, data, flags=1) + b"END\r\n")
    assert wire.run(engine.get(key, None)) == {"a": 1}
    wire.take()
    with pytest.raises(IllegalInputError):
        wire.run(engine.store(b"set", key, b"v", 0, None, 2**32))


# -- failures, ejection and the failover TTL ------------------------------------------------
def test_failures_are_counted_and_the_step_that_ejects_says_so():
    engine, wire = make()
    eject(engine, wire, "h1")
    peer = engine.peers["h1"]
    assert peer.health.state is State.EJECTED and peer.health.failures == 2
    key = key_on(engine, "h1")
    standin = standin_of(engine, key)
    wire.answer(standin, b"END\r\n")
    assert wire.run(engine.get(key, None)) is None
    assert wire.take() == [(standin, b"get %s\r\n" % key.encode())]


def test_a_success_clears_the_count_of_failures():
    engine, wire = make()
    key = key_on(engine, "h3")
    wire.answer("h3", TimeoutError("slow"), b"END\r\n", TimeoutError("slow"))
    for _ in range(3):
        wire.run(engine.get(key, None))
    assert wire.ejected == [] and engine.peers["h3"].health.usable
    wire.take()


def test_an_error_that_is_not_a_failure_is_raised_and_not_counted():
    engine, wire = make()
    key = key_on(engine, "h1")
    wire.answer("h1", TypeError("a driver bug"))
    with pytest.raises(TypeError):
        wire.run(engine.get(key, None))
    assert engine.peers["h1"].health.failures == 0
    wire.take()


@pytest.mark.parametrize(
    ("expire", "stored"),
    [(0, 30), (10, 10), (100, 30), (-1, -1), (int(NOW) + 20, 20), (int(NOW) + 500, 30)],
)
def test_a_write_on_a_stand_in_gets_the_failover_ttl(expire, stored):
    engine, wire = make()
    eject(engine, wire, "h1")
    key = key_on(engine, "h1")
    standin = standin_of(engine, key)
    wire.answer(standin, b"STORED\r\n", b"TOUCHED\r\n")
    assert wire.run(engine.store(b"set", key, b"v", expire, None, None)) is True
    assert wire.run(engine.touch(key, expire, None)) is True
    k = key.encode()
    assert wire.take() == [
        (standin, b"set %s 0 %d 1\r\nv\r\n" % (k, stored)),
        (standin, b"touch %s %d\r\n" % (k, stored)),
    ]


def test_a_write_to_a_live_owner_keeps_its_ttl():
    engine, wire = make()
    key = key_on(engine, "h2")
    wire.answer("h2", b"STORED\r\n")
    wire.run(engine.store(b"set", key, b"v", 100, None, None))
    assert wire.take() == [("h2", b"set %s 0 100 1\r\nv\r\n" % key.encode())]


def test_set_many_caps_only_the_keys_whose_owner_is_out():
    engine, wire = make()
    eject(engine, wire, "h1")
    out, live = key_on(engine, "h1"), key_on(engine, standin_of(engine, key_on(engine, "h1")))
    standin = standin_of(engine, out)
    wire.answer(standin, b"STORED\r\nSTORED\r\n")
    assert wire.run(engine.set_many({out: b"a", live: b"b"}, 600, None)) == []
    ((name, data),) = wire.take()
    assert name == standin
    assert b"set %s 0 30 1\r\na\r\n" % out.encode() in data
    assert b"set %s 0 600 1\r\nb\r\n" % live.encode() in data


def test_raise_on_error_raises_what_happened_and_then_no_server_available():
    engine, wire = make(["h1:11211"], raise_on_error=True)
    wire.answer("h1", b"SERVER_ERROR out of memory storing object\r\n")
    with pytest.raises(ServerError):
        wire.run(engine.store(b"set", "k", b"v", 0, None, None))
    wire.answer("h1", ConnectionRefusedError(111, "refused"), ConnectionRefusedError(111, "x"))
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            wire.run(engine.get("k", None))
    with pytest.raises(NoServerAvailable):
        wire.run(engine.get("k", None))
    wire.take()


# -- the recovery journal and re-admission --------------------------------------------------
def test_writes_around_an_ejected_node_are_replayed_on_it_and_its_stand_ins_first():
    engine, wire = make(probe_interval=0.25)
    eject(engine, wire, "h1")  # its failed reads journal nothing
    key = key_on(engine, "h1")
    standin = standin_of(engine, key)
    wire.answer(standin, b"STORED\r\n")
    wire.run(engine.store(b"set", key, b"new", 0, None, None))
    assert engine.peers["h1"].journal == {key.encode(): {engine.peers[standin]}}
    wire.take()

    assert wire.run(engine.probe()) == pytest.approx(0.25)  # not due yet: nothing sent
    assert wire.take() == []
    wire.clock.t += 0.25
    wire.fresh.clear()
    k = key.encode()
    wire.answer("h1", b"VERSION 1.6.18\r\n", b"DELETED\r\n")
    wire.answer(standin, b"DELETED\r\n")
    assert wire.run(engine.probe()) is None  # every node takes traffic again
    assert wire.take() == [
        ("h1", b"version\r\n"),
        ("h1", b"delete %s\r\n" % k),
        (standin, b"delete %s\r\n" % k),
    ]
    assert all(wire.fresh)  # probes and replays on connections of their own
    assert engine.peers["h1"].health.state is State.LIVE and not engine.peers["h1"].journal


def test_a_failed_write_is_journaled_for_its_node_which_may_apply_it_late():
    engine, wire = make()
    key = key_on(engine, "h2")
    wire.answer("h2", TimeoutError("stalled"))
    assert wire.run(engine.store(b"set", key, b"v", 0, None, None)) is False
    assert key.encode() in engine.peers["h2"].journal
    wire.take()


def test_a_write_that_may_have_reached_the_node_is_deleted_again_after_the_late_window():
    """A request held by a stalled node (or network) can be carried out after the replay:
    its key is deleted once more when such a late write would have landed (2 x timeout,
    at least 0.5 s after the node answered), and only then is the node re-admitted."""
    engine, wire = make(probe_interval=0.25, timeout=0.5)
    key = key_on(engine, "h2")
    k = key.encode()
    wire.answer("h2", TimeoutError("stalled"), TimeoutError("stalled"))
    assert wire.run(engine.store(b"set", key, b"v", 0, None, None)) is False
    assert wire.run(engine.get(key, None)) is None
    assert wire.ejected == ["h2"] and engine.peers["h2"].late == {k}
    wire.take()
    wire.clock.t += 0.25
    wire.answer("h2", b"VERSION 1.6.18\r\n", b"DELETED\r\n")
    assert wire.run(engine.probe()) == 0.01
    wire.clock.t += 0.5
    assert wire.run(engine.probe()) == 0.01  # still within the late window: nothing sent
    assert wire.take() == [("h2", b"version\r\n"), ("h2", b"delete %s\r\n" % k)]
    assert engine.peers["h2"].health.returning
    wire.clock.t += 0.6
    wire.answer("h2", b"NOT_FOUND\r\n")
    assert wire.run(engine.probe()) is None
    assert wire.take() == [("h2", b"delete %s\r\n" % k)]
    assert engine.peers["h2"].health.usable and not engine.peers["h2"].late


def test_a_refused_write_never_reached_the_node_and_needs_no_second_delete():
    engine, wire = make(probe_interval=0.25)
    key = key_on(engine, "h2")
    refused = ConnectionRefusedError(111, "refused")
    wire.answer("h2", refused, refused)
    wire.run(engine.store(b"set", key, b"v", 0, None, None))
    wire.run(engine.store(b"set", key, b"v", 0, None, None))
    assert wire.ejected == ["h2"] and not engine.peers["h2"].late
    wire.clock.t += 0.25
    wire.answer("h2", b"VERSION 1.6.18\r\n", b"DELETED\r\n")
    assert wire.run(engine.probe()) is None
    wire.take()


def test_a_replay_that_fails_keeps_the_node_out_and_its_journal():
    engine, wire = make(probe_interval=0.25)
    eject(engine, wire, "h1")
    key = key_on(engine, "h1")
    standin = standin_of(engine, key)
    wire.answer(standin, b"DELETED\r\n")
    wire.run(engine.delete(key, None, None))
    wire.clock.t += 0.25
    wire.answer("h1", b"VERSION 1.6.18\r\n", ConnectionResetError(104, "reset"))
    wire.answer(standin, b"NOT_FOUND\r\n")
    assert wire.run(engine.probe()) == pytest.approx(0.5)  # backed off
    assert engine.peers["h1"].health.state is State.EJECTED
    assert key.encode() in engine.peers["h1"].journal
    wire.take()


def test_an_overflowing_journal_flushes_the_node_instead():
    engine, wire = make(journal_size=2, probe_interval=0.25)
    eject(engine, wire, "h1")
    keys = [key_on(engine, "h1", skip=i) for i in range(3)]
    for key in keys:
        wire.answer(standin_of(engine, key), b"STORED\r\n")
        wire.run(engine.store(b"set", key, b"v", 0, None, None))
    assert engine.peers["h1"].journal_overflow
    wire.take()
    wire.clock.t += 0.25
    wire.answer("h1", b"VERSION 1.6.18\r\n", b"OK\r\n")
    assert wire.run(engine.probe()) is None
    assert wire.take() == [("h1", b"version\r\n"), ("h1", b"flush_all 0\r\n")]
    assert engine.peers["h1"].journal_flushes == 1


def test_a_write_in_flight_on_an_ejected_nodes_behalf_holds_its_readmission():
    engine, wire = make(probe_interval=0.25)
    eject(engine, wire, "h1")
    key = key_on(engine, "h1")
    k = key.encode()
    standin = standin_of(engine, key)
    write = engine.store(b"set", key, b"v", 0, None, None)
    (call,) = next(write)  # the write is on its way to the stand-in
    assert engine.peers["h1"].fenced == 1
    wire.clock.t += 0.25
    wire.answer("h1", b"VERSION 1.6.18\r\n", b"NOT_FOUND\r\n")
    wire.answer(standin, b"NOT_FOUND\r\n")
    assert wire.run(engine.probe()) == 0.01  # answered, but not re-admitted: soon again
    assert engine.peers["h1"].health.returning
    call.replies = [b"STORED"]
    engine.settle([call])
    with pytest.raises(StopIteration):
        write.send([call])
    # It may have landed after the replay: journaled again, and replayed before re-admission.
    assert engine.peers["h1"].fenced == 0 and k in engine.peers["h1"].journal
    wire.take()
    wire.answer("h1", b"DELETED\r\n")
    wire.answer(standin, b"DELETED\r\n")
    assert wire.run(engine.probe()) is None
    assert engine.peers["h1"].health.usable
    assert wire.take() == [("h1", b"delete %s\r\n" % k), (standin, b"delete %s\r\n" % k)]


def test_writes_reach_a_returning_node_so_its_readmission_ends_under_load():
    """While the journal is replayed, a write goes to the returning owner after the stand-in
    dropped the key: nothing new is journaled, and the next round re-admits it."""
    engine, wire = make(probe_interval=0.25)
    eject(engine, wire, "h1")
    old, new = key_on(engine, "h1"), key_on(engine, "h1", skip=1)
    standin = standin_of(engine, old)
    wire.answer(standin, b"STORED\r\n")
    wire.run(engine.store(b"set", old, b"v", 0, None, None))
    wire.take()
    wire.clock.t += 0.25
    probe = engine.probe()
    (version,) = next(probe)
    version.replies = [b"VERSION 1.6.18"]
    replay = probe.send([version])  # the replay is on its way
    assert engine.peers["h1"].health.returning and not engine.peers["h1"].health.usable
    wire.answer(standin, b"DELETED\r\n")
    wire.answer("h1", b"STORED\r\n")
    assert wire.run(engine.store(b"set", new, b"w", 0, None, None)) is True
    n = new.encode()
    assert wire.take() == [(standin, b"delete %s\r\n" % n), ("h1", b"set %s 0 0 1\r\nw\r\n" % n)]
    assert n not in engine.peers["h1"].journal
    # A read still goes to the stand-in; a conditional write is not made at all.
    wire.answer(standin, b"END\r\n")
    assert wire.run(engine.get(new, None)) is None
    assert wire.run(engine.store(b"add", new, b"x", 0, None, None)) is False
    assert wire.run(engine.delta(b"incr", new, 1, False)) is None
    assert wire.take() == [(standin, b"get %s\r\n" % n)]
    for call in replay:  # type: ignore[union-attr]
        call.replies = [b"DELETED"]
    with pytest.raises(StopIteration) as done:
        probe.send(replay)
    assert done.value.value is None and engine.peers["h1"].health.usable


def test_a_probe_that_is_not_answered_backs_off():
    engine, wire = make(probe_interval=0.25, probe_max_interval=0.6)
    eject(engine, wire, "h2")
    for wait in (0.5, 0.6, 0.6):
        wire.clock.t += 1
        wire.answer("h2", ConnectionRefusedError(111, "refused"))
        assert wire.run(engine.probe()) == pytest.approx(wait)
    wire.take()


# -- replication ----------------------------------------------------------------------------
def test_with_replicas_writes_reach_every_copy_and_reads_fall_back_copy_by_copy():
    engine, wire = make(replicas=2)
    key = "r1"
    first, second = [s.name for s in engine.ring.candidates(key.encode())][:2]
    wire.answer(first, b"STORED\r\n")
    wire.answer(second, b"STORED\r\n")
    assert wire.run(engine.store(b"set", key, b"v", 60, None, None))
    assert wire.take() == [(first, b"set r1 0 60 1\r\nv\r\n"), (second, b"set r1 0 60 1\r\nv\r\n")]
    wire.answer(first, b"END\r\n")
    wire.answer(second, value(key, b"v") + b"END\r\n")
    assert wire.run(engine.get(key, None)) == b"v"
    assert wire.take() == [(first, b"get r1\r\n"), (second, b"get r1\r\n")]


def test_with_replicas_a_conditional_write_is_decided_by_the_first_copy():
    engine, wire = make(replicas=2)
    first, second = [s.name for s in engine.ring.candidates(b"r2")][:2]
    wire.answer(first, b"STORED\r\n")
    wire.answer(second, b"STORED\r\n")
    assert wire.run(engine.store(b"add", "r2", b"v", 60, None, None))
    assert wire.take() == [(first, b"add r2 0 60 1\r\nv\r\n"), (second, b"set r2 0 60 1\r\nv\r\n")]
    wire.answer(first, b"NOT_STORED\r\n")
    assert wire.run(engine.store(b"add", "r2", b"w", 60, None, None)) is False
    assert wire.take() == [(first, b"add r2 0 60 1\r\nw\r\n")]


def test_with_replicas_an_incr_is_copied_with_the_ttl_it_has_left():
    engine, wire = make(replicas=2)
    first, second = [s.name for s in engine.ring.candidates(b"n")][:2]
    wire.answer(first, b"6\r\n", b"VA 1 f0 t25 c9\r\n6\r\n")
    wire.answer(second, b"STORED\r\n")
    assert wire.run(engine.delta(b"incr", "n", 1, False)) == 6
    assert wire.take() == [
        (first, b"incr n 1\r\n"),
        (first, b"mg n v f t c\r\n"),
        (second, b"set n 0 25 1\r\n6\r\n"),
    ]


# -- the meta protocol, and servers without it ----------------------------------------------
def test_a_server_without_meta_is_asked_with_gets_from_then_on():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"ERROR\r\n", value("k", b"v", cas=7) + b"END\r\n")
    entry = wire.run(engine.get_entry("k"))
    assert (entry.value, entry.ttl, entry.cas) == (b"v", None, b"7")
    assert engine.peers["h1"].meta is False
    wire.answer("h1", b"END\r\n")
    assert wire.run(engine.get_entry("k")) is None
    assert wire.take() == [
        ("h1", b"mg k v f t c\r\n"),
        ("h1", b"gets k\r\n"),
        ("h1", b"gets k\r\n"),
    ]


def test_get_entry_reads_the_remaining_ttl_and_cas_in_one_round_trip():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"VA 1 f0 t-1 c12\r\nv\r\n")
    entry = wire.run(engine.get_entry("k"))
    assert (entry.value, entry.ttl, entry.cas) == (b"v", 0, b"12")
    assert engine.peers["h1"].meta is True
    wire.take()


def test_delete_with_cas_is_md_with_meta_and_an_expired_cas_without():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"EX\r\n")
    assert wire.run(engine.delete("k", None, 5)) is False
    wire.answer("h1", b"ERROR\r\n", b"STORED\r\n")
    assert wire.run(engine.delete("k", None, 5)) is True
    assert wire.take() == [
        ("h1", b"md k C5\r\n"),
        ("h1", b"md k C5\r\n"),
        ("h1", b"cas k 0 -1 0 5\r\n\r\n"),
    ]


def test_delete_stale_marks_the_value_stale():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"HD\r\n")
    assert wire.run(engine.delete("k", None, None, stale=True)) is True
    assert wire.take() == [("h1", b"md k I T30\r\n")]


# -- membership: discovery and moves --------------------------------------------------------
def test_discovery_adopts_a_newer_membership_and_keeps_the_peers_that_stay():
    engine, wire = make(["h1:11211"])
    h1 = engine.peers["h1"]
    body = b"2\nh1|127.0.0.1|11211 h2|127.0.0.1|11211"
    wire.answer("h1", b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body))
    assert wire.run(engine.discover()) is True
    assert sorted(engine.peers) == ["h1", "h2"] and engine.peers["h1"] is h1
    assert not engine.membership.adopt(1, [Server("h3", 11211)])  # older: ignored
    assert wire.take() == [("h1", b"config get cluster\r\n")]


def test_during_a_move_a_miss_reads_the_previous_owner_and_a_write_deletes_there():
    engine, wire = make(LOCATION[:2])
    assert engine.membership.adopt(3, [Server(h, 11211) for h in ("h1", "h2", "h3")])
    key = key_on(engine, "h3")
    k = key.encode()
    old = engine.membership.previous.owner(k).server.name
    wire.answer("h3", b"END\r\n")
    wire.answer(old, value(key, b"old") + b"END\r\n")
    assert wire.run(engine.get(key, None)) == b"old"
    assert wire.take() == [("h3", b"get %s\r\n" % k), (old, b"get %s\r\n" % k)]
    wire.answer("h3", b"STORED\r\n")
    wire.answer(old, b"DELETED\r\n")
    assert wire.run(engine.store(b"set", key, b"new", 0, None, None))
    assert wire.take() == [("h3", b"set %s 0 0 3\r\nnew\r\n" % k), (old, b"delete %s\r\n" % k)]
    # A delete of a key that lived only on its previous owner is a delete.
    wire.answer("h3", b"NOT_FOUND\r\n")
    wire.answer(old, b"DELETED\r\n")
    assert wire.run(engine.delete(key, None, None)) is True
    wire.take()
    # An even version ends the move: no more reads or deletes on the previous owner.
    assert engine.membership.adopt(4, [Server(h, 11211) for h in ("h1", "h2", "h3")])
    wire.answer("h3", b"END\r\n")
    assert wire.run(engine.get(key, None)) is None
    assert wire.take() == [("h3", b"get %s\r\n" % k)]


# -- leases (get_or_set) --------------------------------------------------------------------
def test_get_or_set_the_winner_computes_and_stores():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"VA 0 f0 c3 W\r\n\r\n", b"STORED\r\n")
    computed = []
    result = wire.run(
        engine.get_or_set("k", lambda: computed.append(1) or b"v", 60, 30, None, 5.0, NO_FALLBACK)
    )
    assert result == b"v" and computed == [1]
    assert wire.take() == [("h1", b"mg k v f c N30\r\n"), ("h1", b"set k 0 60 1\r\nv\r\n")]
    assert engine.peers["h1"].leases["won"] == 1


def test_get_or_set_a_waiter_pauses_then_reads_the_winners_value():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"VA 0 f0 c3 Z\r\n\r\n", b"VA 0 f0 c3 Z\r\n\r\n", b"VA 1 f0 c4\r\nv\r\n")
    result = wire.run(
        engine.get_or_set("k", lambda: pytest.fail("computed"), 60, 30, None, 5.0, NO_FALLBACK)
    )
    assert result == b"v" and wire.pauses == [0.005, 0.01]
    wire.take()


def test_get_or_set_a_waiter_with_a_fallback_gets_it_at_once():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"VA 0 f0 c3 Z\r\n\r\n")
    assert wire.run(engine.get_or_set("k", b"x", 60, 30, None, 5.0, "fallback")) == "fallback"
    assert wire.pauses == []
    wire.take()


def test_get_or_set_a_winner_that_raises_releases_its_lease():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"VA 0 f0 c3 W\r\n\r\n", b"HD\r\n")

    def broken() -> bytes:
        raise KeyError("compute failed")

    with pytest.raises(KeyError):
        wire.run(engine.get_or_set("k", broken, 60, 30, None, 5.0, NO_FALLBACK))
    assert wire.take() == [("h1", b"mg k v f c N30\r\n"), ("h1", b"md k C3\r\n")]


def test_get_or_set_without_meta_is_get_then_set():
    engine, wire = make(["h1:11211"])
    wire.answer("h1", b"ERROR\r\n", b"END\r\n", b"STORED\r\n")
    assert wire.run(engine.get_or_set("k", b"v", 60, 30, None, 5.0, NO_FALLBACK)) == b"v"
    assert wire.take() == [
        ("h1", b"mg k v f c N30\r\n"),
        ("h1", b"get k\r\n"),
        ("h1", b"set k 0 60 1\r\nv\r\n"),
    ]


# -- agreement across clients: debts kept in the nodes --------------------------------------
def index_value(key: bytes, ids: bytes, cas: int) -> bytes:
    return b"VALUE %s 0 %d %d\r\n%s\r\n" % (key, len(ids), cas, ids)


def test_a_write_around_an_ejected_node_registers_this_clients_debt_first():
    engine, wire = make(agreement=True)
    eject(engine, wire, "h1")
    me = engine.debts.identity
    key = key_on(engine, "h1")
    standin = standin_of(engine, key)
    other = ({"h2", "h3"} - {standin}).pop()
    item = b"ringcache:debt:h1:" + me
    wire.answer(standin, b"STORED\r\n", b"END\r\n", b"STORED\r\n", b"STORED\r\n")
    wire.answer(other, b"STORED\r\n", b"END\r\n", b"STORED\r\n")
    assert wire.run(engine.store(b"set", key, b"v", 0, None, None)) is True
    sent = wire.take()
    for name in ("h2", "h3"):  # on every node but the one owed, before the write
        mine = [data for n, data in sent if n == name]
        assert mine[:3] == [
            b"set %s 0 3 1\r\n1\r\n" % item,
            b"gets ringcache:debts:h1\r\n",
            b"add ringcache:debts:h1 0 0 %d\r\n%s\r\n" % (len(me), me),
        ]
    assert sent[-1] == (standin, b"set %s 0 30 1\r\nv\r\n" % key.encode())
    assert engine.peers["h1"] in engine.debts.owed
    # Before the write: a pause until the debt is HOLD old (every reader has seen it).
    assert wire.pauses == [pytest.approx(HOLD)]
    # Owed already: the next write around it sends nothing more, and waits no more.
    wire.answer(standin, b"STORED\r\n")
    wire.run(engine.store(b"set", key, b"w", 0, None, None))
    assert len(wire.take()) == 1 and wire.pauses == [pytest.approx(HOLD)]


def test_during_a_move_a_write_owing_an_out_previous_owner_registers_the_debt_first():
    # The previous owner is out for this client: the delete there is journaled. Until it is
    # replayed, the old value must be read by nobody: neither another client's miss nor the
    # mover copying it to the new owner, and both look at the debts before they read it.
    engine, wire = make(LOCATION[:2], agreement=True)
    assert engine.membership.adopt(3, [Server(h, 11211) for h in ("h1", "h2", "h3")])
    key = key_on(engine, "h3")
    k = key.encode()
    old = engine.membership.previous.owner(k).server.name
    other = ({"h1", "h2"} - {old}).pop()
    eject(engine, wire, old)
    me = engine.debts.identity
    item = b"ringcache:debt:%s:" % old.encode() + me
    index = b"ringcache:debts:%s" % old.encode()
    wire.answer("h3", b"STORED\r\n", b"END\r\n", b"STORED\r\n", b"DELETED\r\n")
    wire.answer(other, b"STORED\r\n", b"END\r\n", b"STORED\r\n")
    assert wire.run(engine.delete(key, None, None)) is True
    sent = wire.take()
    registration = [
        b"set %s 0 3 1\r\n1\r\n" % item,
        b"gets %s\r\n" % index,
        b"add %s 0 0 %d\r\n%s\r\n" % (index, len(me), me),
    ]
    assert [data for n, data in sent if n == other] == registration
    assert [data for n, data in sent if n == "h3"] == [*registration, b"delete %s\r\n" % k]
    assert sent[-1] == ("h3", b"delete %s\r\n" % k)  # the write last, after the pause
    assert wire.pauses == [pytest.approx(HOLD)]
    assert engine.peers[old] in engine.debts.owed and k in engine.peers[old].journal
    # The move ends without the previous owner (it left): the debt is no longer renewed, and
    # expires into an orphan, which gets the node flushed should it ever come back.
    assert engine.membership.adopt(4, [Server(h, 11211) for h in ("h1", "h2", "h3") if h != old])
    wire.clock.t += 5
    wire.run(engine.debts.refresh())
    assert engine.debts.owed == {} and wire.take() == []


def test_a_returning_node_waits_for_another_clients_debt_and_is_flushed_for_a_dead_one():
    engine, wire = make(agreement=True, probe_interval=0.25)
    eject(engine, wire, "h1")  # this client owes nothing: it only read
    index = b"ringcache:debts:h1"
    item = b"ringcache:debt:h1:other.1"
    wire.clock.t += 0.25
    wire.answer("h1", b"VERSION 1.6.18\r\n")
    wire.answer(
        "h2",
        index_value(index, b"other.1", 5) + b"END\r\n",
        b"VALUE %s 0 1\r\n1\r\nEND\r\n" % item,
    )
    wire.answer("h3", b"END\r\n")
    assert wire.run(engine.probe()) == 0.01  # another client's live debt: stays returning
    assert engine.peers["h1"].health.returning
    assert wire.take() == [
        ("h1", b"version\r\n"),
        ("h2", b"get %s\r\n" % index),
        ("h3", b"get %s\r\n" % index),
        ("h2", b"get %s\r\n" % item),
    ]
    # Its client died: the debt's item expired, the index still names it.
    wire.answer("h1", b"OK\r\n")
    wire.answer(
        "h2",
        index_value(index, b"other.1", 5) + b"END\r\n",
        b"END\r\n",
        index_value(index, b"other.1", 5) + b"END\r\n",
        b"STORED\r\n",
    )
    wire.answer("h3", b"END\r\n", b"END\r\n")
    assert wire.run(engine.probe()) is None
    assert wire.take() == [
        ("h2", b"get %s\r\n" % index),
        ("h3", b"get %s\r\n" % index),
        ("h2", b"get %s\r\n" % item),
        ("h1", b"flush_all 0\r\n"),  # before anyone reads it
        ("h2", b"gets %s\r\n" % index),
        ("h3", b"gets %s\r\n" % index),
        ("h2", b"cas %s 0 -1 0 5\r\n\r\n" % index),  # the last debtor gone: the index too
    ]
    assert engine.peers["h1"].health.usable


def test_this_clients_debt_is_settled_before_it_re_admits_the_node():
    engine, wire = make(["h1:11211", "h2:11211"], agreement=True, probe_interval=0.25)
    eject(engine, wire, "h1")
    me = engine.debts.identity
    key = key_on(engine, "h1")
    index, item = b"ringcache:debts:h1", b"ringcache:debt:h1:" + me
    wire.answer("h2", b"STORED\r\n", b"END\r\n", b"STORED\r\n", b"STORED\r\n")
    wire.run(engine.store(b"set", key, b"v", 0, None, None))
    wire.take()
    wire.clock.t += 0.25
    wire.answer("h1", b"VERSION 1.6.18\r\n", b"DELETED\r\n")
    wire.answer(
        "h2",
        b"DELETED\r\n",
        index_value(index, me, 9) + b"END\r\n",
        b"STORED\r\n",
        b"DELETED\r\n",
        b"END\r\n",
    )
    assert wire.run(engine.probe()) is None
    assert wire.take()[3:] == [
        ("h2", b"gets %s\r\n" % index),
        ("h2", b"cas %s 0 -1 0 9\r\n\r\n" % index),
        ("h2", b"delete %s\r\n" % item),
        ("h2", b"get %s\r\n" % index),  # nobody else owes it anything
    ]
    assert engine.peers["h1"].health.usable and not engine.debts.owed


# A look at the debts of h1..h3: each node's index asked of two others.
LOOK = [
    ("h2", b"touch ringcache:debts:h1 0\r\ntouch ringcache:debts:h3 0\r\n"),
    ("h3", b"touch ringcache:debts:h1 0\r\ntouch ringcache:debts:h2 0\r\n"),
    ("h1", b"touch ringcache:debts:h2 0\r\ntouch ringcache:debts:h3 0\r\n"),
]


def nothing_owed(wire: Wire) -> None:
    """The answers of a look that finds no index anywhere."""
    for name, _ in LOOK:
        wire.answer(name, b"NOT_FOUND\r\nNOT_FOUND\r\n")


def test_the_watch_ejects_a_live_node_another_client_owes_without_moving_hit_ratios():
    engine, wire = make(agreement=True)
    index = b"ringcache:debts:h1"
    wire.answer("h2", b"TOUCHED\r\nNOT_FOUND\r\n", index_value(index, b"other.1", 3) + b"END\r\n")
    wire.answer("h3", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    wire.answer("h1", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    assert wire.run(engine.maintain()) == 0.01
    assert wire.take() == [*LOOK, ("h2", b"get %s\r\n" % index)]  # touch: no hit ratio moved
    assert engine.peers["h1"].health.state is State.EJECTED
    # Its own debt alone is no reason.
    engine2, wire2 = make(agreement=True)
    me = engine2.debts.identity
    wire2.answer("h2", b"TOUCHED\r\nNOT_FOUND\r\n", index_value(index, me, 3) + b"END\r\n")
    wire2.answer("h3", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    wire2.answer("h1", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    assert wire2.run(engine2.maintain()) == pytest.approx(WATCH)
    assert engine2.peers["h1"].health.usable
    wire2.take()


def test_during_a_move_the_watch_looks_at_a_leaving_previous_owner_too():
    # h3 leaves: during the move a miss still reads it, so a debt another client registered
    # for it (a delete it journaled there) must stop this client from reading it.
    engine, wire = make(agreement=True)
    assert engine.membership.adopt(3, [Server(h, 11211) for h in ("h1", "h2")])
    index = b"ringcache:debts:h3"
    wire.answer("h1", b"NOT_FOUND\r\nTOUCHED\r\n", index_value(index, b"other.1", 3) + b"END\r\n")
    wire.answer("h2", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    wire.answer("h3", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    wire.run(engine.maintain())
    assert wire.take() == [*LOOK, ("h1", b"get %s\r\n" % index)]
    assert engine.membership.previous.peers["h3"].health.state is State.EJECTED
    key = next(
        k
        for k in (f"k{i}" for i in range(10_000))
        if engine.server_for(k).name != "h3"
        and engine.membership.previous.owner(k.encode()).server.name == "h3"
    )
    wire.answer(engine.server_for(key).name, b"END\r\n")
    assert wire.run(engine.get(key, None)) is None  # its previous owner is not read
    assert wire.take() == [(engine.server_for(key).name, b"get %s\r\n" % key.encode())]


def test_a_read_needs_a_lease_on_the_debts_and_a_look_renews_it():
    """A client reads the nodes only within LEASE seconds of the start of a look at the
    debts that answered: a new client looks first, a stale one again; a node that another
    client turns out to owe is not read (its keys miss)."""
    engine, wire = make(agreement=True, leased=False)
    key = key_on(engine, "h2")
    nothing_owed(wire)
    wire.answer("h2", value(key, b"v") + b"END\r\n")
    assert wire.run(engine.get(key, None)) == b"v"
    assert wire.take() == [*LOOK, ("h2", b"get %s\r\n" % key.encode())]
    wire.clock.t += LEASE - 0.01  # still leased: the read alone
    wire.answer("h2", value(key, b"v") + b"END\r\n")
    assert wire.run(engine.get(key, None)) == b"v"
    assert wire.take() == [("h2", b"get %s\r\n" % key.encode())]
    # The lease ran out; the look finds another client's debt for h2: h2 is not read.
    wire.clock.t += 0.02
    index = b"ringcache:debts:h2"
    wire.answer("h2", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    wire.answer("h3", b"NOT_FOUND\r\nTOUCHED\r\n", index_value(index, b"other.1", 4) + b"END\r\n")
    wire.answer("h1", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    assert wire.run(engine.get(key, None)) is None
    assert wire.take() == [*LOOK, ("h3", b"get %s\r\n" % index)]
    assert engine.peers["h2"].health.state is State.EJECTED


def test_one_node_that_does_not_answer_a_look_leaves_the_lease_renewed():
    """Each index is asked of two nodes: one failing leaves every question answered; two
    failing (h3's index unanswered) renew no lease, and a read looks again first."""
    engine, wire = make(agreement=True, leased=False)
    nothing_owed(wire)
    wire.answers["h3"].clear()
    wire.answer("h3", TimeoutError("timed out"))
    wire.run(engine.maintain())
    assert not engine.debts.lapsed()
    wire.take()
    wire.clock.t += LEASE
    wire.answer("h2", TimeoutError("timed out"))
    wire.answer("h3", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    wire.answer("h1", TimeoutError("timed out"))
    wire.run(engine.maintain())
    assert engine.debts.lapsed()
    wire.take()
    key = key_on(engine, "h1")
    nothing_owed(wire)
    wire.answer("h1", value(key, b"v") + b"END\r\n")
    assert wire.run(engine.get(key, None)) == b"v"  # a look first, answered this time
    assert wire.take() == [*LOOK, ("h1", b"get %s\r\n" % key.encode())]
    assert not engine.debts.lapsed()


def test_a_new_membership_needs_a_look_before_its_nodes_are_read():
    """One node: nothing to watch, reads need no look. Discovery brings in two more: nothing is
    known of their debts yet, so the next read looks first."""
    engine, wire = make(["h1:11211"], agreement=True, leased=False)
    wire.answer("h1", b"END\r\n")
    assert wire.run(engine.get("k", None)) is None
    assert wire.take() == [("h1", b"get k\r\n")]
    body = b"2\nh1|127.0.0.1|11211 h2|127.0.0.1|11211 h3|127.0.0.1|11211"
    wire.answer("h1", b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body))
    assert wire.run(engine.discover()) is True
    wire.take()
    key = key_on(engine, "h3")
    nothing_owed(wire)
    wire.answer("h3", b"END\r\n")
    assert wire.run(engine.get(key, None)) is None
    assert wire.take() == [*LOOK, ("h3", b"get %s\r\n" % key.encode())]


def test_without_a_lease_nothing_is_read():
    """A look that cannot get its answers (two of three nodes do not answer) renews no lease:
    the read misses without asking the node that holds the key."""
    engine, wire = make(agreement=True, leased=False)
    key = key_on(engine, "h1")
    wire.answer("h2", TimeoutError("timed out"))
    wire.answer("h3", TimeoutError("timed out"))
    wire.answer("h1", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    assert wire.run(engine.get(key, None)) is None
    assert wire.take() == LOOK  # and no get
    strict, wire2 = make(agreement=True, leased=False, raise_on_error=True)
    wire2.answer("h2", TimeoutError("timed out"))
    wire2.answer("h3", TimeoutError("timed out"))
    wire2.answer("h1", b"NOT_FOUND\r\nNOT_FOUND\r\n")
    with pytest.raises(TimeoutError):
        wire2.run(strict.get(key, None))
