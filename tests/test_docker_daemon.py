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
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dockerutil
import pytest
import structlog
from conftest import clean_env, run_cli

from supervisor.base.errors import ConfigError
from supervisor.containers.daemon import Daemon, Target
from supervisor.core.container import (
    ContainerInfo,
    check_supervisable,
    parse_docker_time,
    reconcile,
)
from supervisor.core.policy import multiplier, next_grid_slot
from supervisor.core.state import AgentState, iso
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


def test_reconcile_records_how_an_open_run_ended() -> None:
    """An exited container ends the open run with Docker's FinishedAt and ExitCode."""
    state = AgentState(AGENT).record_start(T0)
    info = ContainerInfo.from_attrs(
        _attrs(StartedAt=docker_time(T0 + 0.2), FinishedAt=docker_time(T0 + 700), ExitCode=3)
    )
    new, outcome = reconcile(state, info, T0 + 800)
    assert outcome == "exited"
    run = new.runs[-1]
    assert run.ended_at == pytest.approx(T0 + 700, abs=1e-3)
    assert run.exit_code == 3
    assert run.end_source == "docker"


def test_reconcile_leaves_a_running_run_alone() -> None:
    """A running container and an open run: nothing to record."""
    state = AgentState(AGENT).record_start(T0)
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 0.1))
    )
    assert reconcile(state, info, T0 + 5000) == (state, "running")


def test_reconcile_records_a_start_outside_the_gate() -> None:
    """A running container with no open run was started outside the gate: it counts."""
    state = AgentState(AGENT).record_start(T0).record_exit(T0 + 5, 1)
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 60))
    )
    new, outcome = reconcile(state, info, T0 + 61)
    assert outcome == "outside"
    assert new.runs[-1].started_at == pytest.approx(T0 + 60, abs=1e-3)
    assert new.runs[-1].via == "docker" and not new.runs[-1].operator
    assert new.runs[-1].reason == "started outside the gate"


def test_reconcile_withdraws_an_approval_no_start_followed() -> None:
    """An approval that Docker never followed stands for the grace, then is withdrawn."""
    state = AgentState(AGENT).record_start(T0).record_exit(T0 + 50, 0).record_start(T0 + 100)
    info = ContainerInfo.from_attrs(
        _attrs(StartedAt=docker_time(T0), FinishedAt=docker_time(T0 + 50), ExitCode=0)
    )
    assert reconcile(state, info, T0 + 100 + 120) == (state, "pending")
    new, outcome = reconcile(state, info, T0 + 100 + 121, 120)
    assert outcome == "withdrawn" and new.runs == state.runs[:1]


def test_reconcile_matches_a_start_within_the_grace_to_its_approval() -> None:
    """Compose starts the container seconds after the gate's approval: one run, not two."""
    state = AgentState(AGENT).record_start(T0)
    info = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 90))
    )
    assert reconcile(state, info, T0 + 1000, 120) == (state, "running")
    late = ContainerInfo.from_attrs(
        _attrs(Running=True, Status="running", StartedAt=docker_time(T0 + 300))
    )
    new, outcome = reconcile(state, late, T0 + 1000, 120)
    assert outcome == "outside"
    (run,) = new.runs
    assert run.via == "docker" and run.started_at == pytest.approx(T0 + 300)


# --- the daemon's loop against a fake Docker on a fake clock -------------------------------------


class FakeStream:
    """A blocking event stream fed by the fake world."""

    def __init__(self) -> None:
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (item := self.q.get()) is not None:
            yield item

    def close(self) -> None:
        self.q.put(None)


@dataclass
class FakeWorld:
    """One container that, once started, runs ``run_seconds`` and exits ``exit_code``."""

    now: float = T0
    run_seconds: float = 1.0
    exit_code: int = 1
    restart_policy: str = "no"
    exists: bool = True
    running: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    last_code: int = 0
    connect_failures: int = 0
    stop_after_starts: int | None = None
    stop_at: float | None = None
    kill_at: float | None = None
    starts: list[float] = field(default_factory=list)
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
                world.start()

        def events(decode: bool, filters: dict[str, Any]) -> FakeStream:
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
        return doc

    def start(self) -> None:
        self.running = True
        self.started_at = self.now
        self.starts.append(self.now)
        self.die_at = self.now + self.run_seconds
        if self.stop_after_starts is not None and len(self.starts) >= self.stop_after_starts:
            self.stop_at = self.now + 0.5

    def push(self, action: str) -> Any:
        assert self.stream is not None and self.daemon is not None
        self.stream.q.put({"Action": action, "id": "abc123"})
        return self.daemon.inbox.get(timeout=5)

    def receive(self, timeout: float | None) -> Any:
        """Deliver what is due, advancing the fake clock; None when the timeout passes first."""
        assert self.daemon is not None
        try:
            return self.daemon.inbox.get_nowait()
        except queue.Empty:
            pass
        due = [t for t in (self.die_at, self.stop_at, self.kill_at) if t is not None]
        if not due or (timeout is not None and self.now + timeout < min(due)):
            assert timeout is not None, "the daemon would block forever"
            self.now += timeout
            return None
        self.now = min(due)
        if self.now == self.stop_at:
            self.stop_at = None
            self.daemon.request_stop("SIGTERM")
            return self.daemon.inbox.get(timeout=5)
        if self.now == self.kill_at:
            # docker stop: a kill event, then the die it causes (exit 143 on SIGTERM).
            self.kill_at = None
            self.die_at = self.now
            self.exit_code = 143
            return self.push("kill")
        self.die_at = None
        self.running = False
        self.finished_at = self.now
        self.last_code = self.exit_code
        return self.push("die")


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


def test_fake_crash_loop_starts_exactly_on_the_backoff_schedule(tmp_path: Path) -> None:
    """Each restart happens at next_grid_slot(last + W*m, W, slot), m doubling to the cap."""
    cfg = small_cfg(tmp_path / "state")
    world = FakeWorld(stop_after_starts=6)
    daemon = fake_daemon(world, cfg)
    assert daemon.run() == 0
    runs = StateStore(cfg.state_dir).read(AGENT).state.runs
    recorded = [r.started_at for r in runs]
    # The state file keeps microseconds: what it recorded is what the engine was asked to do.
    assert world.starts == pytest.approx(recorded, abs=1e-6)
    assert world.starts[0] == T0
    policy = daemon.policy
    for k in range(1, 6):
        m = multiplier(k, policy.max_multiplier)
        slot = next_grid_slot(recorded[k - 1] + W * m, W, policy.offset)
        assert world.starts[k] == pytest.approx(slot, abs=1e-6), k
    assert [multiplier(k, policy.max_multiplier) for k in range(1, 6)] == [1, 2, 4, 4, 4]
    assert all(b - a >= W for a, b in itertools.pairwise(world.starts))
    assert [r.exit_code for r in runs[:-1]] == [1] * 5
    assert {r.end_source for r in runs[:-1]} == {"docker"}
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
    assert world.starts == [pytest.approx(T0 + sum(waits))]


def test_fake_operator_stop_is_not_undone(tmp_path: Path) -> None:
    """A die that follows a kill (docker stop) is recorded but not followed by a restart."""
    world = FakeWorld(run_seconds=1000.0, exit_code=0)
    world.kill_at = T0 + 100
    world.stop_at = T0 + 5000
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert world.starts == [T0]
    assert "daemon.stopped_by_operator" in [e["event"] for e in logs]
    run = StateStore(daemon.cfg.state_dir).read(AGENT).state.runs[-1]
    assert run.exit_code == 143
    assert run.ended_at == pytest.approx(T0 + 100)


def test_fake_stop_during_a_wait_records_no_start(tmp_path: Path) -> None:
    """SIGTERM while the gate waits: the daemon returns 0 and no start is recorded."""
    world = FakeWorld()
    world.stop_at = T0 + 2.5  # after the first run ended, before the next slot
    daemon = fake_daemon(world, small_cfg(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        assert daemon.run() == 0
    assert world.starts == [T0]
    assert len(StateStore(daemon.cfg.state_dir).read(AGENT).state.runs) == 1
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
        tx.write(tx.state.record_start(T0), T0)
    result = gate.decide(record=False)
    assert result.state is not None
    run = result.state.runs[-1]
    assert run.ended_at == pytest.approx(T0 + 900, abs=1e-3)
    assert (run.exit_code, run.end_source) == (2, "docker")
    assert gate.store.read(AGENT).state == result.state  # kept


def test_docker_unavailable_never_fails_the_gate(tmp_path: Path) -> None:
    """Docker unreachable: logged, and the gate decides on the state as it is."""

    def broken() -> ContainerInfo:
        raise ConnectionError("Docker is not running")

    gate = _gate(tmp_path, broken)
    with structlog.testing.capture_logs() as logs:
        result = gate.decide()
    assert result.decision.allowed and result.recorded
    assert logs[0]["event"] == "docker.unavailable"
    assert "Docker is not running" in logs[0]["error"]


def test_gate_with_docker_host_unreachable_answers_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real SDK and no engine at DOCKER_HOST, the gate answers at once."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    gate = Gate(small_cfg(tmp_path / "state", **{"docker.container": "agent"}), AGENT)
    began = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        assert gate.decide().decision.allowed
    assert time.monotonic() - began < 5
    assert [e["event"] for e in logs] == ["docker.unavailable", "gate.allowed"]


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
        tx.write(tx.state.record_start(time.time() - 0.5), time.time())
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
