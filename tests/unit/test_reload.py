"""The rolling-restart state machine of a reload, driven by a fake clock (no processes)."""

from __future__ import annotations

from gxsubmit.supervisor.reload import RollingRestart
from gxsubmit.supervisor.slot import Slot, State

SETTLE = 40.0  # drain_timeout + heartbeat_timeout


def running(*names: str) -> dict[str, Slot]:
    return {name: Slot(name, "role", state=State.RUNNING, pid=100 + i, ready_once=True)
            for i, name in enumerate(names)}


def respawn(slot: Slot, state: State = State.STARTING) -> None:
    """What the arbiter does when a worker stopped for the reload exits: respawn it at once."""
    assert slot.pid is not None
    slot.pid, slot.state, slot.reload_requested = slot.pid + 1000, state, False


def test_one_worker_at_a_time_the_next_once_the_new_one_is_connected() -> None:
    slots = running("a", "b", "c")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b", "c"])
    first = rr.next(0.0, slots)
    assert first is slots["a"]
    assert first.reload_requested and not first.ready_once
    assert rr.next(1.0, slots) is None  # still draining
    respawn(slots["a"])
    assert rr.next(2.0, slots) is None  # its successor is not connected yet
    slots["a"].state = State.RUNNING
    assert rr.next(3.0, slots) is slots["b"]
    respawn(slots["b"], State.RUNNING)
    assert rr.next(4.0, slots) is slots["c"]
    respawn(slots["c"], State.RUNNING)
    assert rr.next(5.0, slots) is None
    assert rr.queue == [] and rr.current is None


def test_a_worker_that_never_comes_back_does_not_stall_the_reload() -> None:
    slots = running("a", "b")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b"])
    assert rr.next(10.0, slots) is slots["a"]
    respawn(slots["a"])  # and it stays STARTING
    assert rr.next(10.0 + SETTLE - 0.001, slots) is None
    assert rr.next(10.0 + SETTLE, slots) is slots["b"]
    assert rr.deadline == 10.0 + 2 * SETTLE


def test_a_worker_stuck_in_its_drain_is_waited_for_until_the_deadline_only() -> None:
    slots = running("a", "b")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b"])
    assert rr.next(0.0, slots) is slots["a"]
    slots["a"].state = State.RUNNING  # old process still running, reload_requested still set
    assert rr.next(SETTLE / 2, slots) is None
    assert rr.next(SETTLE, slots) is slots["b"]


def test_a_configuration_error_settles_the_current_worker() -> None:
    slots = running("a", "b")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b"])
    assert rr.next(0.0, slots) is slots["a"]
    respawn(slots["a"], State.CONFIG_ERROR)  # the new process exited 78: waiting would not help
    assert rr.next(1.0, slots) is slots["b"]


def test_a_current_worker_gone_from_the_slots_settles_at_once() -> None:
    slots = running("a", "b")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b"])
    assert rr.next(0.0, slots) is slots["a"]
    del slots["a"]
    assert rr.next(1.0, slots) is slots["b"]


def test_dead_retiring_and_unknown_workers_are_skipped() -> None:
    slots = running("a", "b", "c", "d")
    slots["a"].pid, slots["a"].state = None, State.BACKOFF  # restarts with the new settings anyway
    slots["b"].retiring = True
    rr = RollingRestart(SETTLE)
    rr.restart(["gone", "a", "b", "c", "d"])
    assert rr.next(0.0, slots) is slots["c"]
    assert rr.queue == ["d"]
    assert not slots["a"].reload_requested and not slots["b"].reload_requested


def test_a_new_reload_replaces_what_an_earlier_one_left() -> None:
    slots = running("a", "b", "c")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b"])
    assert rr.next(0.0, slots) is slots["a"]
    rr.restart(["c"])  # SIGHUP again while a is draining: no wait for a
    assert rr.current is None
    assert rr.next(1.0, slots) is slots["c"]
    assert rr.queue == []


def test_a_tls_change_queues_behind_the_running_reload() -> None:
    slots = running("a", "b", "c")
    rr = RollingRestart(SETTLE)
    rr.restart(["a", "b"])
    assert rr.next(0.0, slots) is slots["a"]
    rr.add(["c"])
    assert rr.queued("b") and rr.queued("c") and not rr.queued("a")
    respawn(slots["a"], State.RUNNING)
    assert rr.next(1.0, slots) is slots["b"]
    respawn(slots["b"], State.RUNNING)
    assert rr.next(2.0, slots) is slots["c"]


def test_nothing_queued_nothing_stopped() -> None:
    slots = running("a")
    rr = RollingRestart(SETTLE)
    assert rr.next(0.0, slots) is None
    assert not slots["a"].reload_requested
