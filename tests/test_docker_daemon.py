"""The Docker-watching daemon (`agent-supervisor run`) and the gate's Docker end hook.

Two halves: fast tests of the pure parts and of the daemon's loop against a fake Docker on a
fake clock (every start time asserted exactly), and tests against the real engine with the
busybox stand-in agent (starts read back from `docker events`).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import certgen
import dockerutil
import pytest
import structlog
from conftest import clean_env, run_cli
from histories import ended, started

from supervisor.base.errors import ConfigError
from supervisor.containers.daemon import (
    ContainerEvent,
    Daemon,
    Target,
    docker_timestamp,
    signal_name,
)
from supervisor.core.container import (
    ContainerInfo,
    Reconciled,
    check_supervisable,
    parse_docker_time,
    reconcile,
)
from supervisor.core.events import Approved, Bound, apply_all
from supervisor.core.policy import backoff_level, multiplier, next_grid_slot
from supervisor.core.state import AgentState, Run, iso
from supervisor.gate.service import Gate, docker_inspector_for
from supervisor.storage.config import Config, load_config
from supervisor.storage.store import StateStore

AGENT = "cilium-agent"
NODE = "as-test-node"
#: A window of 3 s for a one-node cluster: the backoff is visible within seconds.
WINDOW = [
    "--cluster-size", "1", "--node-name", NODE,
    "--set", "window.base=3s", "--set", "window.per_node=0", "--set", "window.min=1s",
]  # fmt: skip
W = 3.0
T0 = 1_780_000_000.0
EXPIRY_METRIC = 'agent_supervisor_certificate_expiry_seconds{agent="cilium-agent"}'


def small_cfg(state_dir: Path, **extra: object) -> Config:
    """The configuration the daemon tests use: W = 3 s, one node, a fixed node name."""
    overrides: dict[str, object] = {
        "cluster_size": 1,
        "node_name": NODE,
        "window.base": "3s",
        "window.per_node": "0",
        "window.min": "1s",
    }
    overrides.update(extra)
    empty = state_dir.parent / "empty-config.toml"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.touch()
    return load_config(empty, overrides=overrides, env={}, state_dir=state_dir)


def docker_time(ts: float) -> str:
    """Seconds -> Docker's RFC 3339 with nanoseconds."""
    return iso(ts).replace("Z", "123Z")


# --- pure parts ----------------------------------------------------------------------------------


def test_parse_docker_time_reads_nanoseconds_and_never() -> None:
    """Docker's nanosecond timestamps parse to seconds; the zero time means "never"."""
    assert parse_docker_time("2026-11-29T01:02:03.123456789Z") == pytest.approx(
        1795914123.123456, abs=1e-6
    )
    assert parse_docker_time("2026-11-29T02:02:03.5+01:00") == pytest.approx(1795914123.5)
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("yesterday") is None
    assert parse_docker_time(None) is None


def _attrs(**state: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Id": "abc123",
        "Name": "/agent",
        "State": {
            "Running": False,
            "Status": "exited",
            "ExitCode": 0,
            "StartedAt": "0001-01-01T00:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        },
        "HostConfig": {"RestartPolicy": {"Name": "no"}, "AutoRemove": False},
    }
    doc["State"].update(state)
    return doc


def test_container_info_from_inspect() -> None:
    """The inspect document gives id, name, running, exit code, times and restart policy."""
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0), ExitCode=0)
    )
    assert info.id == "abc123"
    assert info.name == "agent"
    assert info.running
    assert info.started_at == pytest.approx(T0)
    assert info.finished_at is None
    assert info.restart_policy == "no"


@pytest.mark.parametrize("policy", ["always", "unless-stopped", "on-failure"])
def test_restart_policy_other_than_no_is_refused(policy: str) -> None:
    """A restart policy other than "no" is a ConfigError (78) that says why, in one line."""
    attrs = _attrs()
    attrs["HostConfig"]["RestartPolicy"]["Name"] = policy
    with pytest.raises(ConfigError) as exc:
        check_supervisable(ContainerInfo.from_attrs(attrs))
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"restart policy is '{policy}'" in msg
    assert "behind the gate's back" in msg
    assert "docker update --restart=no agent" in msg


def test_no_restart_policy_and_empty_name_are_accepted() -> None:
    """Restart policy "no" (or none at all, as old engines write it) is supervisable."""
    check_supervisable(ContainerInfo.from_attrs(_attrs()))
    attrs = _attrs()
    attrs["HostConfig"]["RestartPolicy"]["Name"] = ""
    check_supervisable(ContainerInfo.from_attrs(attrs))


def test_auto_remove_container_is_refused() -> None:
    """A --rm container would vanish at its first exit: refused with the reason."""
    attrs = _attrs()
    attrs["HostConfig"]["AutoRemove"] = True
    with pytest.raises(ConfigError, match="removed when it exits"):
        check_supervisable(ContainerInfo.from_attrs(attrs))


def _reconciled(
    state: AgentState, info: ContainerInfo | None, now: float, grace: float = 120.0
) -> tuple[AgentState, Reconciled]:
    """reconcile, and the state after its events."""
    rec = reconcile(state, info, now, grace)
    return apply_all(state, rec.events), rec


def test_reconcile_records_how_an_open_run_ended() -> None:
    """An exited container ends the open run with Docker's FinishedAt and ExitCode."""
    state = started(AgentState(AGENT), T0)
    info = ContainerInfo.from_attrs(
        _attrs(StartedAt=docker_time(T0 + 0.2), FinishedAt=docker_time(T0 + 700), ExitCode=3)
    )
    new, rec = _reconciled(state, info, T0 + 800)
    assert (rec.outcome, rec.view) == ("exited", "stopped")
    run = new.runs[-1]
    assert run.ended_at == pytest.approx(T0 + 700, abs=1e-3)
    assert run.exit_code == 3
    assert run.end_source == "docker"
    assert run.container == "abc123"


def test_reconcile_binds_a_running_run_and_records_nothing_else() -> None:
    """A running container and an open run: the run is bound to it, nothing else changes."""
    state = started(AgentState(AGENT), T0)
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 0.1))
    )
    new, rec = _reconciled(state, info, T0 + 5000)
    assert (rec.outcome, rec.view) == ("running", "running")
    assert new.runs == (replace(state.runs[0], container="abc123"),)
    assert reconcile(new, info, T0 + 6000).events == ()


def test_reconcile_records_a_start_outside_the_gate() -> None:
    """A running container with no open run was started outside the gate: it counts."""
    state = ended(started(AgentState(AGENT), T0), T0 + 5, 1)
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 60))
    )
    new, rec = _reconciled(state, info, T0 + 61)
    assert rec.outcome == "outside"
    assert new.runs[-1].started_at == pytest.approx(T0 + 60, abs=1e-3)
    assert new.runs[-1].via == "docker" and not new.runs[-1].operator
    assert new.runs[-1].reason == "started outside the gate"


def test_reconcile_withdraws_an_approval_no_start_followed() -> None:
    """An approval that Docker never followed stands for the grace, then is withdrawn."""
    state = started(ended(started(AgentState(AGENT), T0), T0 + 50, 0), T0 + 100)
    info = ContainerInfo.from_attrs(
        _attrs(StartedAt=docker_time(T0), FinishedAt=docker_time(T0 + 50), ExitCode=0)
    )
    within = reconcile(state, info, T0 + 100 + 120)
    assert (within.events, within.view) == ((), "pending")
    new, rec = _reconciled(state, info, T0 + 100 + 121, 120)
    assert rec.outcome == "withdrawn" and new.runs == state.runs[:1]


def test_reconcile_matches_a_start_within_the_grace_to_its_approval() -> None:
    """Compose starts the container seconds after the gate's approval: one run, not two."""
    state = started(AgentState(AGENT), T0)
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 90))
    )
    new, rec = _reconciled(state, info, T0 + 1000, 120)
    assert rec.outcome == "running" and len(new.runs) == 1 and new.runs[0].via == "gate"
    late = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 300))
    )
    new, rec = _reconciled(state, late, T0 + 1000, 120)
    # Docker's only start came after the grace: the approval was not followed (withdrawn),
    # and the start counts as one that no gate approved.
    assert rec.outcome == "outside"
    assert [r.via for r in new.runs] == ["docker"]
    assert new.runs[0].started_at == pytest.approx(T0 + 300)


def test_reconcile_a_restart_within_a_second_of_the_crash_is_one_start() -> None:
    """The daemon restarts a crashed agent half a second after its exit: Docker's FinishedAt
    (the crash) lies just before the approval, and is the previous run's end, not a second
    start of the approved one (regression: it was read as one, within the 1 s slack)."""
    state = ended(started(AgentState(AGENT), T0), T0 + 20, 1, "docker")
    state = started(state, T0 + 20.5)
    info = ContainerInfo.from_attrs(
        _attrs(
            Running=True,
            Status="running",
            StartedAt=docker_time(T0 + 20.6),
            FinishedAt=docker_time(T0 + 20),
        )
    )
    new, rec = _reconciled(state, info, T0 + 30)
    assert (rec.outcome, rec.view) == ("running", "running")
    assert [(r.via, r.ended_at) for r in new.runs] == [("gate", T0 + 20), ("gate", None)]


def test_docker_event_parsing_reads_exit_code_signal_and_time() -> None:
    """A die carries its exit code and nanosecond time; a kill its signal, by number or name."""
    die = ContainerEvent.parse(
        {
            "Action": "die",
            "id": "abc",
            "Actor": {"ID": "abc", "Attributes": {"exitCode": "137", "name": "agent"}},
            "timeNano": 1_780_000_000_123_456_789,
        }
    )
    assert (die.action, die.container, die.exit_code) == ("die", "abc", 137)
    assert die.at == pytest.approx(1_780_000_000.123456789)
    kill = ContainerEvent.parse({"status": "kill", "id": "abc", "time": 5, "Actor": {}})
    assert (kill.action, kill.at, kill.signal, kill.exit_code) == ("kill", 5.0, None, None)
    assert [signal_name(s) for s in ("15", "TERM", "SIGKILL", "28", "", None)] == [
        "SIGTERM",
        "SIGTERM",
        "SIGKILL",
        "SIGWINCH",
        None,
        None,
    ]


def test_docker_timestamp_is_seconds_dot_nanoseconds() -> None:
    """Docker reads the part after the dot of since/until as nanoseconds: nine digits."""
    assert docker_timestamp(1_780_000_000.5) == "1780000000.500000000"
    assert docker_timestamp(1_780_000_000.000001) == "1780000000.000001000"
    assert docker_timestamp(2.0) == "2.000000000"


# --- the daemon's loop against a fake Docker on a fake clock -------------------------------------

#: The fake container's id.
CID = "abc123"


class FakeStream:
    """A blocking event stream fed by the fake world (or a finite one: a replay)."""

    def __init__(self, items: list[dict[str, Any]] | None = None) -> None:
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        if items is not None:
            for item in items:
                self.q.put(item)
            self.q.put(None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (item := self.q.get()) is not None:
            yield item

    def close(self) -> None:
        self.q.put(None)


def fake_event(action: str, at: float, **attrs: str) -> dict[str, Any]:
    """A container event as the SDK decodes it."""
    return {
        "Type": "container",
        "Action": action,
        "id": CID,
        "Actor": {"ID": CID, "Attributes": {"name": "agent", **attrs}},
        "timeNano": round(at * 1e9),
    }


@dataclass
class FakeWorld:
    """One container that, once started, runs ``run_seconds`` and exits ``exit_code``.

    ``kill_at``: someone sends ``kills`` (signal numbers) then, if ``kill_exit`` is set, the
    container dies with it. ``compose_start_at``: someone else starts the container.
    ``remove_on_die``: the container is removed right after its die (compose down).
    ``stop_before_die``: the daemon's SIGTERM comes before the die event reaches it.
    Every event goes to :attr:`log`, which a connection's replay reads back.
    """

    now: float = T0
    run_seconds: float = 1.0
    exit_code: int = 1
    restart_policy: str = "no"
    stop_signal: str | None = None
    exists: bool = True
    running: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    last_code: int = 0
    connect_failures: int = 0
    stop_after_starts: int | None = None
    stop_delay: float = 0.5
    stop_at: float | None = None
    kill_at: float | None = None
    kills: tuple[str, ...] = ("15",)
    kill_exit: int | None = 143
    compose_start_at: float | None = None
    remove_on_die: bool = False
    stop_before_die: bool = False
    starts: list[float] = field(default_factory=list)
    daemon_starts: list[float] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    stream: FakeStream | None = None
    daemon: Daemon | None = None
    die_at: float | None = None

    def clock(self) -> float:
        return self.now

    def connect(self, _timeout: float) -> Any:
        import docker.errors

        if self.connect_failures:
            self.connect_failures -= 1
            raise docker.errors.DockerException("Error while fetching server API version")
        world = self

        class Containers:
            def get(self, name: str) -> Any:
                if not world.exists:
                    raise docker.errors.NotFound(f"No such container: {name}")
                return SimpleNamespace(attrs=world.attrs(), labels={})

        class API:
            def start(self, cid: str) -> None:
                if not world.exists:
                    raise docker.errors.NotFound(f"No such container: {cid}")
                world.daemon_starts.append(world.now)
                world.start()

        def events(
            decode: bool,
            filters: dict[str, Any],
            since: str | None = None,
            until: str | None = None,
        ) -> FakeStream:
            if until is not None:
                lo, hi = float(since or 0), float(until)
                return FakeStream([e for e in world.log if lo <= e["timeNano"] / 1e9 <= hi])
            world.stream = FakeStream()
            return world.stream

        return SimpleNamespace(
            containers=Containers(), api=API(), events=events, close=lambda: None
        )

    def attrs(self) -> dict[str, Any]:
        doc = _attrs(
            Running=self.running,
            Status="running" if self.running else "exited",
            ExitCode=self.last_code,
            StartedAt=docker_time(self.started_at) if self.started_at else "0001-01-01T00:00:00Z",
            FinishedAt=docker_time(self.finished_at)
            if self.finished_at
            else "0001-01-01T00:00:00Z",
        )
        doc["HostConfig"]["RestartPolicy"]["Name"] = self.restart_policy
        doc["Config"] = {"StopSignal": self.stop_signal} if self.stop_signal else {}
        return doc

    def emit(self, action: str, **attrs: str) -> None:
        """The engine emits an event: logged, and delivered to the daemon's inbox."""
        event = fake_event(action, self.now, **attrs)
        self.log.append(event)
        if self.stream is None or self.daemon is None:
            return
        inbox = self.daemon.inbox
        before = inbox.qsize()
        self.stream.q.put(event)
        dockerutil.wait_for(lambda: inbox.qsize() > before, 5, "the event", interval=0.001)

    def start(self) -> None:
        self.running = True
        self.started_at = self.now
        self.starts.append(self.now)
        self.die_at = self.now + self.run_seconds
        if self.stop_after_starts is not None and len(self.starts) >= self.stop_after_starts:
            self.stop_at = self.now + self.stop_delay
        self.emit("start")

    def _next_in_inbox(self) -> Any:
        assert self.daemon is not None
        return self.daemon.inbox.get(timeout=5)

    def receive(self, timeout: float | None) -> Any:
        """Deliver what is due, advancing the fake clock; None when the timeout passes first."""
        assert self.daemon is not None
        try:
            return self.daemon.inbox.get_nowait()
        except queue.Empty:
            pass
        moments = (self.die_at, self.stop_at, self.kill_at, self.compose_start_at)
        due = [t for t in moments if t is not None]
        if not due or (timeout is not None and self.now + timeout < min(due)):
            assert timeout is not None, "the daemon would block forever"
            self.now += timeout
            return None
        self.now = min(due)
        if self.now == self.stop_at:
            self.stop_at = None
            self.daemon.request_stop("SIGTERM")
        elif self.now == self.compose_start_at:
            self.compose_start_at = None
            self.start()
        elif self.now == self.kill_at:
            # docker stop / docker kill: the kill events, then (if they stop it) the die.
            self.kill_at = None
            for sig in self.kills:
                self.emit("kill", signal=sig)
            if self.kill_exit is not None:
                self.die_at = self.now
                self.exit_code = self.kill_exit
        else:
            self.die_at = None
            self.running = False
            self.finished_at = self.now
            self.last_code = self.exit_code
            if self.stop_before_die:
                self.daemon.request_stop("SIGTERM")
            self.emit("die", exitCode=str(self.last_code))
            if self.remove_on_die:
                self.exists = False
                self.emit("destroy")
        return self._next_in_inbox()


def fake_daemon(world: FakeWorld, cfg: Config) -> Daemon:
    """A daemon wired to the fake world's Docker, clock and message delivery."""
    daemon = Daemon(
        cfg,
        AGENT,
        Target.by_name("agent"),
        connect=world.connect,
        clock=world.clock,
        monotonic=world.clock,
        receive=world.receive,
    )
    world.daemon = daemon
    return daemon


def runs_of(daemon: Daemon) -> tuple[Run, ...]:
    """The runs the daemon's state holds."""
    return StateStore(daemon.cfg.state_dir).read(AGENT).state.runs


def first_slot(daemon: Daemon, asked: float = T0) -> float:
    """Where a first start asked for at ``asked`` goes: the node's admission slot (J = W)."""
    return next_grid_slot(asked, daemon.policy.admission_period, daemon.policy.offset)


def test_fake_crash_loop_starts_exactly_on_the_backoff_schedule(tmp_path: Path) -> None:
    """The first start is at the node's admission slot; each restart at
    next_grid_slot(last + W*m, W, slot), m doubling to the cap."""
    cfg = small_cfg(tmp_path / "state")
    world = FakeWorld(stop_after_starts=6)
    daemon = fake_daemon(world, cfg)
    assert daemon.run() == 0
    runs = runs_of(daemon)
    recorded = [r.started_at for r in runs]
    # The state file keeps microseconds: what it recorded is what the engine was asked to do.
    assert world.starts == pytest.approx(recorded, abs=1e-6)
    assert world.starts[0] == pytest.approx(first_slot(daemon), abs=1e-6)
    policy = daemon.policy
    for k in range(1, 6):
        m = multiplier(k, policy.max_multiplier)
        slot = next_grid_slot(recorded[k - 1] + W * m, W, policy.offset)
        assert world.starts[k] == pytest.approx(slot, abs=1e-6), k
    assert [multiplier(k, policy.max_multiplier) for k in range(1, 6)] == [1, 2, 4, 4, 4]
    assert all(b - a >= W for a, b in itertools.pairwise(world.starts))
    assert [r.exit_code for r in runs[:-1]] == [1] * 5
    assert {r.end_source for r in runs[:-1]} == {"docker"}
    assert {r.container for r in runs} == {CID}
    assert [r.duration(0) for r in runs[:-1]] == pytest.approx([1.0] * 5, abs=1e-3)


def test_fake_refuses_a_container_with_restart_always(tmp_path: Path) -> None:
    """The daemon stops with a ConfigError (78) on a container that Docker would restart."""
    world = FakeWorld(restart_policy="always")
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with pytest.raises(ConfigError, match="restart policy is 'always'"):
        daemon.run()
    assert world.starts == []


def test_fake_reconnects_with_a_bounded_doubling_backoff(tmp_path: Path) -> None:
    """Docker absent: retries at 0.5, 1, 2, ... capped at 30 s, then supervises as usual."""
    world = FakeWorld(connect_failures=9, stop_after_starts=1)
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    waits = [e["retry_in"] for e in logs if e["event"] == "daemon.docker_unavailable"]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [e["event"] for e in logs].count("daemon.reconnected") == 1
    assert world.starts == [pytest.approx(first_slot(daemon, T0 + sum(waits)))]


def test_fake_operator_stop_is_recorded_as_such_and_not_undone(tmp_path: Path) -> None:
    """A die that follows a kill with SIGTERM (docker stop) is recorded as stopped on purpose,
    with who stopped it, and the daemon does not start the container again."""
    world = FakeWorld(run_seconds=1000.0, exit_code=0, kill_at=T0 + 100, stop_at=T0 + 5000)
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert world.starts == [pytest.approx(first_slot(daemon))]
    assert "daemon.stopped_by_operator" in [e["event"] for e in logs]
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop, run.end_source) == (
        143,
        "docker stop/kill (SIGTERM)",
        "docker",
    )
    assert run.ended_at == pytest.approx(T0 + 100)
    assert run.stopped_on_purpose


def test_fake_docker_stop_that_had_to_kill_is_neutral(tmp_path: Path) -> None:
    """`docker stop` of an agent that ignores TERM ends in SIGKILL (137): still a stop on
    purpose, so the backoff level stays 0 and nothing restarts it."""
    world = FakeWorld(
        run_seconds=1000.0, kill_at=T0 + 100, kills=("15", "9"), kill_exit=137, stop_at=T0 + 500
    )
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    assert daemon.run() == 0
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop) == (137, "docker stop/kill (SIGTERM)")
    assert backoff_level(AgentState(AGENT, runs=(run,)), 600.0) == 0
    assert len(world.starts) == 1


def test_fake_the_containers_own_stop_signal_is_a_stop(tmp_path: Path) -> None:
    """A kill with the container's configured StopSignal (SIGUSR1 here) is a stop on purpose."""
    world = FakeWorld(
        run_seconds=1000.0,
        stop_signal="SIGUSR1",
        kill_at=T0 + 100,
        kills=("10",),
        kill_exit=138,
        stop_at=T0 + 500,
    )
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    assert daemon.run() == 0
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop) == (138, "docker stop/kill (SIGUSR1)")
    assert len(world.starts) == 1


def test_fake_a_signal_that_stops_nothing_then_a_crash_is_restarted(tmp_path: Path) -> None:
    """`docker kill -s WINCH` is not a stop: when the agent crashes (exit 1) 15 s later, the
    crash is recorded as a failure and the daemon restarts it through the gate."""
    world = FakeWorld(
        run_seconds=20.0, exit_code=1, kill_at=T0 + 5, kills=("28",), kill_exit=None,
        stop_after_starts=2,
    )  # fmt: skip
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert "daemon.stopped_by_operator" not in [e["event"] for e in logs]
    first, second = runs_of(daemon)
    assert (first.exit_code, first.stop, first.stopped_on_purpose) == (1, None, False)
    assert second.via == "gate"
    # The run lasted longer than W, so its window slot had passed: the restart waits for the
    # node's admission slot after the crash (invariant 2), as any caller would be told.
    slot = next_grid_slot(
        first.ended_at or 0.0, daemon.policy.admission_period, daemon.policy.offset
    )
    assert world.starts[1] == pytest.approx(slot, abs=1e-6)


def test_fake_end_is_recorded_from_the_die_when_the_container_is_gone(tmp_path: Path) -> None:
    """A container removed right after its die (compose down) still has its end recorded,
    from the die event's exit code and time, for the run that ran in it."""
    world = FakeWorld(run_seconds=1000.0, kill_at=T0 + 50, remove_on_die=True, stop_at=T0 + 300)
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop, run.end_source) == (
        143,
        "docker stop/kill (SIGTERM)",
        "docker",
    )
    assert run.ended_at == pytest.approx(T0 + 50)
    assert "daemon.container_missing" in [e["event"] for e in logs]


def test_fake_a_crash_of_a_removed_container_is_recorded_as_a_crash(tmp_path: Path) -> None:
    """An exit 1 whose container is gone at once is recorded from the die: a failure."""
    world = FakeWorld(run_seconds=5.0, exit_code=1, remove_on_die=True, stop_at=T0 + 300)
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    assert daemon.run() == 0
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop) == (1, None)
    assert run.ended_at == pytest.approx(world.starts[0] + 5.0)


def test_fake_sigterm_first_records_the_events_already_received(tmp_path: Path) -> None:
    """SIGTERM arrives before the die of `compose down` is handled: the daemon records the
    stop first (a short drain), then exits, starting nothing."""
    world = FakeWorld(run_seconds=1000.0, kill_at=T0 + 50, stop_before_die=True)
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop) == (143, "docker stop/kill (SIGTERM)")
    assert len(world.starts) == 1
    assert [e["event"] for e in logs][-2:] == ["run.exited", "daemon.stopped"]


def test_fake_events_missed_while_no_daemon_ran_are_replayed(tmp_path: Path) -> None:
    """A daemon started after `docker stop` ended a run (the supervisor was being recreated)
    learns it from the engine's events: the run ends as stopped on purpose, and the stopped
    container is not started again."""
    state_dir = tmp_path / "state"
    cfg = small_cfg(state_dir)
    store = StateStore(state_dir)
    began = T0 - 100
    with store.transaction(AGENT) as tx:
        s = apply_all(AgentState(AGENT), (Approved(began, "r1"), Bound("r1", CID)))
        tx.write(s, began)
    world = FakeWorld(running=False, started_at=began + 0.2, stop_at=T0 + 200)
    world.log = [
        fake_event("start", began + 0.2),
        fake_event("kill", T0 - 50, signal="15"),
        fake_event("die", T0 - 49.9, exitCode="143"),
    ]
    world.finished_at, world.last_code = T0 - 49.9, 143
    daemon = fake_daemon(world, cfg)
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    (run,) = runs_of(daemon)
    assert (run.exit_code, run.stop) == (143, "docker stop/kill (SIGTERM)")
    assert run.ended_at == pytest.approx(T0 - 49.9)
    assert world.starts == []
    assert "daemon.stopped_by_operator" in [e["event"] for e in logs]


def test_fake_a_start_approved_by_the_gate_service_is_left_to_compose(tmp_path: Path) -> None:
    """The gate service approved a start that compose is about to make: the daemon waits for
    it (no second start, no busy loop), and binds the run to it when it comes."""
    state_dir = tmp_path / "state"
    cfg = small_cfg(state_dir)
    with StateStore(state_dir).transaction(AGENT) as tx:
        tx.write(apply_all(AgentState(AGENT), (Approved(T0 - 1, "r1"),)), T0 - 1)
    world = FakeWorld(run_seconds=1000.0, compose_start_at=T0 + 2, stop_at=T0 + 10)
    daemon = fake_daemon(world, cfg)
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert world.starts == [T0 + 2] and world.daemon_starts == []
    assert [e["event"] for e in logs].count("gate.pending") == 1
    (run,) = runs_of(daemon)
    assert (run.id, run.container, run.ended_at) == ("r1", CID, None)


def test_fake_stop_during_a_wait_records_no_start(tmp_path: Path) -> None:
    """SIGTERM while the gate waits: the daemon returns 0 and no start is recorded."""
    world = FakeWorld(stop_after_starts=1, stop_delay=1.5)  # the run ended, the slot ahead
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert len(world.starts) == 1
    assert len(runs_of(daemon)) == 1
    events = [e["event"] for e in logs]
    assert events[-2:] == ["gate.refused", "daemon.stopped"]
    assert logs[-2]["waiting"] is True


def test_fake_missing_container_is_waited_for(tmp_path: Path) -> None:
    """No such container yet: logged once, nothing started, the daemon keeps waiting."""
    world = FakeWorld(exists=False)
    world.stop_at = T0 + 200  # several periodic looks
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert [e["event"] for e in logs].count("daemon.container_missing") == 1
    assert world.starts == []


def _identity_cfg(tmp_path: Path, cn: str) -> Config:
    """The daemon's configuration with an [identity] whose certificate names ``cn``, and a
    metrics file."""
    issued = certgen.issue("cryptography", tmp_path / "pki", now=T0, cn=cn)
    return small_cfg(
        tmp_path / "state",
        **{
            "identity.cert": str(issued.cert),
            "identity.key": str(issued.key),
            "identity.ca": str(issued.ca),
            "metrics_file": str(tmp_path / "metrics.prom"),
        },
    )


def test_fake_the_certificate_is_published_in_daemon_mode(tmp_path: Path) -> None:
    """The daemon's starts go through the Gate's identity check, whose report is published:
    the certificate_expiry_seconds metric is there, about 90 days."""
    cfg = _identity_cfg(tmp_path, f"system:cilium-agent:{NODE}")
    world = FakeWorld(run_seconds=1000.0, stop_after_starts=1)
    daemon = fake_daemon(world, cfg)
    assert daemon.run() == 0
    assert len(world.starts) == 1
    metrics = (tmp_path / "metrics.prom").read_text()
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith(EXPIRY_METRIC)]
    assert float(line.split()[-1]) == pytest.approx(90 * 86400 - (world.starts[0] - T0), abs=60)


def test_fake_an_identity_refusal_is_checked_again_every_minute(tmp_path: Path) -> None:
    """A certificate for another node: no start, and the daemon asks again each minute (here
    at +0, +60, +120 s), publishing the certificate's metric each time."""
    cfg = _identity_cfg(tmp_path, "system:cilium-agent:another-node")
    world = FakeWorld(stop_at=T0 + 150)
    daemon = fake_daemon(world, cfg)
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert world.starts == []
    assert [e["event"] for e in logs].count("daemon.identity_refused") == 3
    assert EXPIRY_METRIC in (tmp_path / "metrics.prom").read_text()


# --- the gate's view of Docker --------------------------------------------------------------------


def _gate(tmp_path: Path, inspect: Any, **extra: object) -> Gate:
    """A gate whose Docker is ``inspect`` (no probe)."""
    cfg = small_cfg(tmp_path / "state", **{"docker.container": "agent", **extra})
    return Gate(cfg, AGENT, inspect=inspect, probe=None, clock=lambda: T0 + 1000)


def test_no_docker_container_means_no_inspector(tmp_path: Path) -> None:
    """Without docker.container the gate never touches Docker."""
    assert docker_inspector_for(small_cfg(tmp_path)) is None
    assert Gate(small_cfg(tmp_path / "state"), AGENT).inspect is None


def test_gate_fills_in_the_end_from_docker(tmp_path: Path) -> None:
    """An open run whose container has exited ends with Docker's FinishedAt and ExitCode."""
    info = ContainerInfo.from_attrs(
        _attrs(StartedAt=docker_time(T0 + 1), FinishedAt=docker_time(T0 + 900), ExitCode=2)
    )
    gate = _gate(tmp_path, lambda: info)
    with gate.store.transaction(AGENT) as tx:
        tx.write(started(tx.state, T0), T0)
    result = gate.decide(record=False)
    assert result.state is not None
    run = result.state.runs[-1]
    assert run.ended_at == pytest.approx(T0 + 900, abs=1e-3)
    assert (run.exit_code, run.end_source) == (2, "docker")
    assert gate.store.read(AGENT).state == result.state  # kept


def test_docker_not_answering_is_unknown_never_a_start(tmp_path: Path) -> None:
    """Docker unreachable: logged, and the gate refuses (no start recorded), saying Docker did
    not answer and when it asks again."""

    def broken() -> ContainerInfo:
        raise ConnectionError("Docker is not running")

    gate = _gate(tmp_path, broken)
    with structlog.testing.capture_logs() as logs:
        result = gate.decide()
    d = result.decision
    assert not d.allowed and not result.recorded
    assert d.event == "gate.docker_unknown"
    assert "Docker did not answer (Docker is not running)" in d.reason
    assert [e["event"] for e in logs] == ["docker.unavailable", "gate.docker_unknown"]
    assert gate.store.read(AGENT).state.runs == ()


def test_gate_with_docker_host_unreachable_answers_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real SDK and no engine at DOCKER_HOST, the gate answers at once: not now."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    gate = Gate(small_cfg(tmp_path / "state", **{"docker.container": "agent"}), AGENT)
    began = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        assert not gate.decide().decision.allowed
    assert time.monotonic() - began < 5
    assert [e["event"] for e in logs] == ["docker.unavailable", "gate.docker_unknown"]


def test_importing_the_deploy_modules_does_not_import_docker_or_yaml() -> None:
    """docker and yaml are imported lazily: the gate's import path pays for neither."""
    code = (
        "import sys, supervisor.cli.app, supervisor.containers.daemon, supervisor.cli.deploy, "
        "supervisor.containers.doctor; "
        "print(sorted(m for m in ('docker', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean_env()
    )
    assert out.stdout.strip() == "[]"


# --- the command line ----------------------------------------------------------------------------


def deploy_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run ``agent-supervisor ARGS`` with the deploy commands registered."""
    proc = subprocess.run(
        dockerutil.cli_argv(*args),
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
        check=False,
    )
    return SimpleNamespace(
        code=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        errors=[ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("{")],
    )


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--container", "a", "--compose-file", "x.yml"], 2, "not both"),
        (["--service", "a"], 2, "go with --compose-file"),
        ([], 2, "run needs the agent's container"),
        (["--container", "bad name!"], 2, "not a container name"),
        (["--compose-file", "/nonexistent/docker-compose.yml"], 78, "compose file not found"),
    ],
)
def test_run_bad_input_is_one_line(args: list[str], code: int, text: str, tmp_path: Path) -> None:
    """Bad `run` input exits with the documented code and one line, never a traceback."""
    r = deploy_cli("run", *args, *WINDOW, "--state-dir", str(tmp_path / "s"))
    assert r.code == code
    assert len(r.errors) == 1
    assert text in r.errors[0]
    assert "Traceback" not in r.stderr


def test_run_without_cluster_size_exits_78(tmp_path: Path) -> None:
    """No cluster size: 78 and how to set it, before touching Docker."""
    r = deploy_cli("run", "--container", "agent", "--state-dir", str(tmp_path / "s"))
    assert r.code == 78
    assert "AGENT_SUPERVISOR_CLUSTER_SIZE" in r.errors[0]


def test_run_compose_file_with_unknown_service_exits_78(tmp_path: Path) -> None:
    """A compose file without the named service: 78 naming the services it has."""
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  web:\n    image: x\n")
    r = deploy_cli(
        "run",
        "--compose-file",
        str(f),
        "--service",
        "cilium-agent",
        *WINDOW,
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert r.code == 78
    assert "no service 'cilium-agent' (services: web)" in r.errors[0]


# --- against the real engine ---------------------------------------------------------------------


@dataclass
class DaemonLog:
    """What a daemon process left behind: its structured log and its state directory."""

    log: Path
    state_dir: Path

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def runs(self) -> Any:
        return StateStore(self.state_dir).read(AGENT).state.runs


def _run_args(container: str, state_dir: Path, *extra: str) -> list[str]:
    return dockerutil.cli_argv(
        "run", "--container", container, *WINDOW, "--state-dir", str(state_dir), *extra
    )


def _create(client: Any, image: str, name: str, restart: str = "no", **env: str) -> Any:
    return client.containers.create(
        image,
        name=name,
        environment=env,
        network_mode="none",
        restart_policy={"Name": restart},
        stop_signal="SIGTERM",
    )


def _running(client: Any, name: str) -> bool:
    return bool(client.containers.get(name).attrs["State"]["Running"])


def _sigterm(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


@pytest.mark.docker
@pytest.mark.slow
def test_crash_loop_is_gated_while_restart_always_storms(
    docker_client: Any, tmp_path: Path
) -> None:
    """A stand-in exiting 1 after 1 s starts on the backoff schedule under the daemon, at most
    once per window, while the same container under restart: always starts far more often."""
    image = dockerutil.standin_image(docker_client)
    gated, always = dockerutil.unique("gated"), dockerutil.unique("always")
    state = tmp_path / "state"
    log = tmp_path / "daemon.log"
    _create(docker_client, image, gated, STANDIN_RUN_SECONDS="1", STANDIN_EXIT_CODE="1")
    try:
        t0 = time.time()
        _create(
            docker_client,
            image,
            always,
            restart="always",
            STANDIN_RUN_SECONDS="1",
            STANDIN_EXIT_CODE="1",
        ).start()
        argv = _run_args(gated, state, "--set", "max_multiplier=2")
        with dockerutil.process(argv, clean_env(), log) as proc:
            dockerutil.wait_for(
                lambda: len(dockerutil.starts(docker_client, t0, time.time(), gated)) >= 4,
                timeout=45,
                what="four gated starts",
                interval=0.5,
            )
            t_end = time.time()
            assert _sigterm(proc) == 0
        gated_starts = dockerutil.starts(docker_client, t0, t_end, gated)
        always_starts = dockerutil.starts(docker_client, t0, t_end, always)
    finally:
        dockerutil.remove_containers(docker_client, gated, always)

    cfg = small_cfg(state, max_multiplier=2)
    policy = cfg.policy(AGENT)
    runs = StateStore(state).read(AGENT).state.runs
    recorded = [r.started_at for r in runs]
    assert len(gated_starts) == 4, (gated_starts, recorded)
    assert len(recorded) == 4
    # Every engine start follows its recorded start (the gate said yes first) closely.
    for rec, engine in zip(recorded, gated_starts, strict=True):
        assert rec <= engine <= rec + 2.0
    # Each restart waited exactly for its slot: next_grid_slot(last + W*m, W, offset), give or
    # take scheduling latency, with m = 1, 2, 2 (max_multiplier=2).
    for k in range(1, 4):
        slot = next_grid_slot(recorded[k - 1] + W * multiplier(k, 2), W, policy.offset)
        assert slot <= recorded[k] <= slot + 1.0, (k, slot, recorded)
    assert all(r.exit_code == 1 and r.end_source == "docker" for r in runs[:3])
    # At most one start per window (allowing engine latency); restart: always has several.
    assert all(b - a >= W - 0.5 for a, b in itertools.pairwise(gated_starts))
    crowded = max(sum(1 for t in always_starts if s <= t < s + W) for s in always_starts)
    assert crowded >= 2
    assert len(always_starts) >= len(gated_starts) + 2, (always_starts, gated_starts)
    print(
        f"\nin {t_end - t0:.1f}s: gated {len(gated_starts)} starts, "
        f"restart: always {len(always_starts)} starts"
    )


@pytest.mark.docker
def test_override_wakes_a_waiting_restart_within_a_second(
    docker_client: Any, tmp_path: Path
) -> None:
    """A restart waiting for a 30 s window starts within about a second of an override."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("override")
    state = tmp_path / "state"
    log = tmp_path / "daemon.log"
    long_window = ["--set", "window.base=30s"]
    _create(docker_client, image, name, STANDIN_RUN_SECONDS="1", STANDIN_EXIT_CODE="1")
    sup = DaemonLog(log, state)
    try:
        t0 = time.time()
        with dockerutil.process(_run_args(name, state, *long_window), clean_env(), log) as proc:
            dockerutil.wait_for(
                lambda: "gate.refused" in sup.names(), 20, "the daemon to wait for the gate"
            )
            ov = run_cli(
                "override",
                "--for",
                "1m",
                "--reason",
                "test: wake it",
                *WINDOW,
                *long_window,
                "--state-dir",
                str(state),
            )
            assert ov.code == 0, ov.stderr
            t_override = time.time()
            dockerutil.wait_for(
                lambda: len(dockerutil.starts(docker_client, t0, time.time(), name)) >= 2,
                timeout=10,
                what="the restart after the override",
                interval=0.1,
            )
            second = dockerutil.starts(docker_client, t0, time.time(), name)[1]
            assert _sigterm(proc) == 0
    finally:
        dockerutil.remove_containers(docker_client, name)
    assert second - t_override < 2.5
    assert sup.runs()[-1].via == "override"


@pytest.mark.docker
def test_sigterm_stops_supervising_and_leaves_the_agent_running(
    docker_client: Any, tmp_path: Path
) -> None:
    """SIGTERM: the daemon exits 0 at once, the agent keeps running, its run stays open."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("sigterm")
    state = tmp_path / "state"
    log = tmp_path / "daemon.log"
    _create(docker_client, image, name)
    sup = DaemonLog(log, state)
    try:
        with dockerutil.process(_run_args(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(lambda: _running(docker_client, name), 20, "the agent to start")
            dockerutil.wait_for(
                lambda: "daemon.container_started" in sup.names(), 10, "the daemon to log the start"
            )
            began = time.monotonic()
            assert _sigterm(proc) == 0
            assert time.monotonic() - began < 5
        time.sleep(1)
        assert _running(docker_client, name)
        assert sup.names()[-1] == "daemon.stopped"
        runs = sup.runs()
        assert len(runs) == 1
        assert runs[0].ended_at is None
    finally:
        dockerutil.remove_containers(docker_client, name)


@pytest.mark.docker
def test_refuses_a_container_with_restart_always(docker_client: Any, tmp_path: Path) -> None:
    """`run` on a restart: always container exits 78 with one line saying why."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("always")
    _create(docker_client, image, name, restart="always")
    try:
        r = deploy_cli("run", "--container", name, *WINDOW, "--state-dir", str(tmp_path / "s"))
    finally:
        dockerutil.remove_containers(docker_client, name)
    assert r.code == 78
    assert len(r.errors) == 1
    assert "restart policy is 'always', not \"no\"" in r.errors[0]
    assert docker_client.containers.list(filters={"name": name}) == []


@pytest.mark.docker
def test_compose_labels_find_the_service_container(docker_client: Any, tmp_path: Path) -> None:
    """--compose-file/--service finds the container by compose labels, not a one-off run."""
    image = dockerutil.standin_image(docker_client)
    project = dockerutil.unique("proj")
    d = tmp_path / project
    d.mkdir()
    (d / "docker-compose.yml").write_text(f"services:\n  cilium-agent:\n    image: {image}\n")
    labels = {
        "com.docker.compose.project": project,
        "com.docker.compose.service": "cilium-agent",
        "com.docker.compose.container-number": "1",
    }
    main = docker_client.containers.create(
        image,
        name=f"{project}-main",
        network_mode="none",
        labels={**labels, "com.docker.compose.oneoff": "False"},
    )
    oneoff = docker_client.containers.create(
        image,
        name=f"{project}-run",
        network_mode="none",
        labels={**labels, "com.docker.compose.oneoff": "True"},
    )
    state = tmp_path / "state"
    argv = dockerutil.cli_argv(
        "run",
        "--compose-file",
        str(d / "docker-compose.yml"),
        "--service",
        "cilium-agent",
        *WINDOW,
        "--state-dir",
        str(state),
    )
    try:
        with dockerutil.process(argv, clean_env(), tmp_path / "daemon.log") as proc:
            dockerutil.wait_for(
                lambda: _running(docker_client, main.name), 20, "the service's container to start"
            )
            assert _sigterm(proc) == 0
        assert not _running(docker_client, oneoff.name)
    finally:
        dockerutil.remove_containers(docker_client, main.name, oneoff.name)


@pytest.mark.docker
def test_gate_reads_the_real_container(docker_client: Any, tmp_path: Path) -> None:
    """Against the engine: a finished container's exit code and FinishedAt end the open run."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("hook")
    gate = Gate(small_cfg(tmp_path / "state", **{"docker.container": name}), AGENT)
    with gate.store.transaction(AGENT) as tx:
        tx.write(started(tx.state, time.time() - 0.5), time.time())
    c = _create(docker_client, image, name, STANDIN_RUN_SECONDS="0.3", STANDIN_EXIT_CODE="4")
    try:
        c.start()
        assert c.wait(timeout=20)["StatusCode"] == 4
        new = gate.decide(record=False).state
        assert new is not None
        finished = parse_docker_time(
            docker_client.containers.get(name).attrs["State"]["FinishedAt"]
        )
    finally:
        dockerutil.remove_containers(docker_client, name)
    run = new.runs[-1]
    assert run.exit_code == 4
    assert run.end_source == "docker"
    assert run.ended_at == pytest.approx(finished, abs=1e-3)


@pytest.mark.docker
@pytest.mark.slow
def test_a_restart_of_dockerd_is_survived(
    private_dockerd: dockerutil.PrivateDockerd,
    bystander_dockerd: dockerutil.PrivateDockerd,
    tmp_path: Path,
) -> None:
    """dockerd restarts under the daemon: it waits, reconnects, records the run Docker's
    shutdown ended, and starts the agent again through the gate. The engine restarted is the
    test's own: another engine on the machine (a bystander) keeps its pid and keeps answering."""
    engine = private_dockerd
    bystander = bystander_dockerd.pid
    client = engine.client()
    name = dockerutil.unique("dockerd")
    state = tmp_path / "state"
    log = tmp_path / "daemon.log"
    sup = DaemonLog(log, state)
    try:
        image = dockerutil.standin_image(client)
        _create(client, image, name)
        env = clean_env(DOCKER_HOST=engine.host)
        with dockerutil.process(_run_args(name, state), env, log) as proc:
            dockerutil.wait_for(lambda: _running(client, name), 20, "the agent to start")
            before = engine.pid
            engine.restart()
            assert engine.pid != before
            dockerutil.wait_for(lambda: len(sup.runs()) >= 2, 60, "a second, gated start")
            dockerutil.wait_for(lambda: _running(client, name), 20, "the agent to run")
            assert proc.poll() is None, "the daemon died with dockerd"
            assert _sigterm(proc) == 0
        names = sup.names()
        assert "daemon.docker_unavailable" in names
        assert "daemon.reconnected" in names
        first, second = sup.runs()[-2:]
        assert first.end_source == "docker"
        assert first.exit_code == 143  # the stand-in's answer to dockerd's SIGTERM
        assert second.via == "gate"
        assert second.ended_at is None
        # The engine the test did not restart: same process, still answering.
        dockerutil.assert_untouched(bystander_dockerd, bystander)
    finally:
        if not engine.answers():
            engine.restart()
        dockerutil.remove_containers(client, name)
        client.close()


def test_signal_handler_can_stop_a_blocked_daemon(tmp_path: Path) -> None:
    """request_stop from another thread (as from a signal handler) wakes a blocked daemon."""
    world = FakeWorld(run_seconds=10_000.0)
    cfg = small_cfg(tmp_path / "state")
    daemon = Daemon(cfg, AGENT, Target.by_name("agent"), connect=world.connect)
    world.daemon = daemon
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(daemon.run()))
    t.start()
    dockerutil.wait_for(lambda: world.starts, 10, "the first start")
    daemon.request_stop("SIGTERM")
    t.join(timeout=10)
    assert result == [0]
    assert os.path.exists(StateStore(cfg.state_dir).state_path(AGENT))
