"""The rolling-restart state machine of a reload, driven by a fake clock (no processes)."""

from __future__ import annotations

import signal
from pathlib import Path

from gxsubmit.catalog import load_catalog
from gxsubmit.config import Config
from gxsubmit.supervisor.reload import Reloader, RollingRestart
from gxsubmit.supervisor.slot import Slot, State

SETTLE = 40.0  # drain_timeout + heartbeat_timeout


def running(*names: str) -> dict[str, Slot]:
    return {name: Slot(name, "role", state=State.RUNNING, pid=100 + i, ready_once=True, pids=[100 + i])
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


# -- the Reloader: SIGHUP and TLS rotation over fake slots, clock, kill and wallet ----------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSupervisor:
    """The parts of the arbiter the reloader reads and drives."""

    def __init__(self, cfg: Config, slots: dict[str, Slot]) -> None:
        self.cfg = cfg
        self.catalog = load_catalog(None)
        self.slots = slots
        self.draining = False
        self.spawned: list[str] = []

    def spawn(self, slot: Slot) -> None:
        self.spawned.append(slot.identity)
        slot.pid, slot.state = 9000 + len(self.spawned), State.STARTING
        slot.pids.append(slot.pid)


IDS = ("org1-super-admin", "org1-admin", "org1-partner-api")


def reloader(slots: dict[str, Slot], *, wallet: dict[str, str] | None = None,
             cfg: Config | None = None) -> tuple[Reloader, FakeSupervisor, FakeClock, list[tuple[int, int]]]:
    sup = FakeSupervisor(cfg or Config(drain_timeout=30.0, heartbeat_timeout=10.0), slots)
    clock, kills = FakeClock(), []
    problems = wallet or {}
    r = Reloader(sup, clock=clock, kill=lambda pid, sig: kills.append((pid, int(sig))),  # type: ignore[arg-type]
                 wallet_problem=lambda cfg, slot: problems.get(slot.identity))
    return r, sup, clock, kills


def test_sighup_restarts_every_running_worker_one_at_a_time() -> None:
    slots = running(*IDS)
    r, sup, clock, kills = reloader(slots)
    r.handle_hup()
    r.rolling_restart()
    assert kills == [(100, signal.SIGTERM)]
    r.rolling_restart()
    assert len(kills) == 1  # org1-super-admin has not come back yet
    respawn(slots["org1-super-admin"], State.RUNNING)
    clock.now += 1
    r.rolling_restart()
    assert kills[-1] == (101, signal.SIGTERM)
    clock.now += 40.0  # org1-admin never comes back: the deadline moves the reload on
    r.rolling_restart()
    assert kills[-1] == (102, signal.SIGTERM)
    assert sup.spawned == []


def test_sighup_while_draining_stops_nobody() -> None:
    slots = running(*IDS)
    r, sup, _, kills = reloader(slots)
    r.handle_hup()
    sup.draining = True
    r.rolling_restart()
    assert kills == []


def test_sighup_retries_a_configuration_error_at_once_and_keeps_a_worker_whose_wallet_fails() -> None:
    slots = running(*IDS)
    broken = slots["org1-admin"]
    broken.pid, broken.state, broken.delay, broken.reason = None, State.CONFIG_ERROR, 8.0, "bad key"
    r, _, clock, kills = reloader(slots, wallet={"org1-partner-api": "certificate expired"})
    r.handle_hup()
    assert broken.state is State.BACKOFF and broken.respawn_at == clock.now and broken.delay == 0.0
    assert broken.reason is None
    assert r.rolling.queue == ["org1-super-admin"]  # not org1-partner-api: its wallet check failed
    r.rolling_restart()
    assert kills == [(100, signal.SIGTERM)]


def test_sighup_retires_identities_that_left_and_starts_new_ones() -> None:
    slots = running("org1-super-admin", "org9-gone")
    r, sup, _, kills = reloader(slots)
    r.handle_hup()
    assert slots["org9-gone"].retiring and kills == [(101, signal.SIGTERM)]
    assert sup.spawned == ["org1-admin", "org1-partner-api"]  # they run the new catalogue already
    assert r.rolling.queue == ["org1-super-admin"]


def test_a_bad_catalogue_keeps_the_running_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.toml"
    bad.write_text("not [ toml")
    slots = running(*IDS)
    r, sup, _, kills = reloader(slots, cfg=Config(catalog=bad))
    before = sup.catalog
    r.handle_hup()
    assert sup.catalog is before and r.rolling.queue == [] and kills == []
