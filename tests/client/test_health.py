"""The node health state machine with an injected clock."""

from __future__ import annotations

from ringcache.client.health import NodeHealth, State


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_failures_below_the_limit_keep_the_node_in_use():
    h = NodeHealth(failure_limit=3, clock=FakeClock())
    assert not h.failed() and h.state is State.FAILING and h.usable
    assert not h.failed() and h.usable
    h.succeeded()
    assert h.state is State.LIVE and h.consecutive_failures == 0
    assert not h.failed() and not h.failed()
    assert h.failed()  # third consecutive failure
    assert h.state is State.EJECTED and not h.usable and h.ejections == 1


def test_only_a_probe_readmits_and_backoff_grows():
    clock = FakeClock()
    h = NodeHealth(failure_limit=1, probe_interval=0.5, probe_max_interval=2.0, clock=clock)
    assert h.failed()
    h.succeeded()  # a stray success from an old request does not re-admit
    assert h.state is State.EJECTED
    assert not h.probe_due()
    clock.t += 0.5
    assert h.probe_due() and h.state is State.PROBING
    assert not h.probe_due()  # one probe at a time
    h.probe_result(False)
    assert h.state is State.EJECTED
    clock.t += 0.9
    assert not h.probe_due()  # backoff doubled to 1.0
    clock.t += 0.1
    assert h.probe_due()
    h.probe_result(False)
    clock.t += 2.0
    assert h.probe_due()  # capped at 2.0
    h.probe_result(False)
    clock.t += 1.9
    assert not h.probe_due()
    clock.t += 0.1
    assert h.probe_due()
    h.probe_result(True)
    assert h.state is State.RETURNING and h.returning and not h.usable  # writes, no reads
    assert h.probe_wait() == 0.0
    h.readmitted()
    assert h.state is State.LIVE and h.usable and h.consecutive_failures == 0
    assert h.probe_wait() is None


def test_a_failure_while_returning_ejects_again_and_keeps_backing_off():
    clock = FakeClock()
    h = NodeHealth(failure_limit=3, probe_interval=0.5, probe_max_interval=8, clock=clock)
    for _ in range(3):
        h.failed()
    clock.t += 0.5
    assert h.probe_due()
    h.probe_result(True)
    assert h.failed()  # one failure is enough: it has not been re-admitted
    assert h.state is State.EJECTED and h.probe_wait() == 1.0


def test_failures_while_ejected_do_not_eject_again():
    h = NodeHealth(failure_limit=1, clock=FakeClock())
    assert h.failed()
    assert not h.failed()
    assert h.ejections == 1 and h.failures == 2


def test_a_new_ejection_restarts_the_backoff():
    clock = FakeClock()
    h = NodeHealth(failure_limit=1, probe_interval=0.5, probe_max_interval=8, clock=clock)
    h.failed()
    for _ in range(3):
        clock.t += 10
        assert h.probe_due()
        h.probe_result(False)
    clock.t += 10
    assert h.probe_due()
    h.probe_result(True)
    h.readmitted()
    h.failed()
    clock.t += 0.5
    assert h.probe_due()
