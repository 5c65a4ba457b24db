"""Starts are facts (invariant 7), and one answer whoever asks (invariant 0), on a real engine.

With ``docker.container`` set, the gate reconciles the state file with the container's State
before every decision: a re-run ``docker compose up -d`` on a running agent starts and records
nothing, a ``docker start`` that no gate approved counts, an approval that no start followed
is withdrawn after ``docker.grace``, and ``gate --wait`` and the daemon (the same
``Gate.wait``) announce the same ``gate.*`` events for the same situation. The agent is the
busybox stand-in of dockerutil; every process is a real one, and every decision is read back
from its JSON answer, its structured log on stderr and the state file.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import QUICK_ADMISSION, Result, clean_env, run_cli
from histories import ended, started

# The shipped compose file's project (both compose implementations, the supervisor image built
# once and cached), as test_compose.py runs it: pytest finds the fixture by its name here.
from test_compose import AGENT, Project, project  # noqa: F401

from supervisor.core.container import parse_docker_time
from supervisor.core.state import AgentState, parse_iso
from supervisor.storage.store import StateStore

NODE = "as-test-node"
#: 1000 nodes: a 20-minute window, so within a test only "already running" or a withdrawn
#: approval can let the gate say yes a second time.
LONG_WINDOW = ["--cluster-size", "1000", "--node-name", NODE]
#: ``docker.grace`` of the withdrawal test: long enough for a second CLI call to land inside it.
GRACE = 3.0
#: A 6 s window for one node: the parity test's wait is seconds, and both processes are up and
#: have made their first decision well before the slot.
SMALL_WINDOW = [
    "--cluster-size", "1", "--node-name", NODE,
    "--set", "window.base=6s", "--set", "window.per_node=0", "--set", "window.min=1s",
]  # fmt: skip
#: What a gate.* log line is compared by: (event, backoff_level, recorded, waiting).
GateEvent = tuple[str, int | None, bool | None, bool | None]


# --- reading what the processes said -------------------------------------------------------------


def log_events(text: str) -> list[dict[str, Any]]:
    """The structured log lines (one JSON object each) of a process's output, in order."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def event_names(text: str) -> list[str]:
    """The ``event`` ids of a process's structured log, in order."""
    return [str(e.get("event", "")) for e in log_events(text)]


def gate_events(text: str) -> list[GateEvent]:
    """The ``gate.*`` events of a process's log as (event, level, recorded, waiting)."""
    return [
        (e["event"], e.get("backoff_level"), e.get("recorded"), e.get("waiting"))
        for e in log_events(text)
        if str(e.get("event", "")).startswith("gate.")
    ]


def logs_since(container: Any, since: float) -> str:
    """A container's output (stdout and stderr) written at or after ``since``, timestamps cut.

    By Docker's own timestamps, so it does not matter whether compose started the same gate
    container again or made a new one.
    """
    raw = container.logs(stdout=True, stderr=True, timestamps=True).decode(errors="replace")
    out = []
    for line in raw.splitlines():
        stamp, _, text = line.partition(" ")
        at = parse_docker_time(stamp)
        if at is not None and at >= since:
            out.append(text)
    return "\n".join(out)


# --- the agent's containers ----------------------------------------------------------------------


class Agents:
    """Stand-in agent containers (restart policy "no", no network), removed at the end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.image = dockerutil.standin_image(client)
        self.names: list[str] = []

    def create(self, kind: str, config_dir: Path | None = None) -> Any:
        """A created, never started container; ``config_dir`` is its --config-dir (run time
        and exit code as files, read at each start), else it runs until stopped."""
        name = dockerutil.unique(kind)
        self.names.append(name)  # before creating: a half-made one is removed too
        volumes = {}
        if config_dir is not None:
            volumes[str(config_dir)] = {"bind": "/tmp/cilium/config-map", "mode": "ro"}
        return self.client.containers.create(
            self.image,
            name=name,
            network_mode="none",
            restart_policy={"Name": "no"},
            stop_signal="SIGTERM",
            volumes=volumes,
        )

    def remove(self) -> None:
        """Force-remove every container made here."""
        dockerutil.remove_containers(self.client, *self.names)


@pytest.fixture
def agents(docker_client: Any) -> Iterator[Agents]:
    """A maker of stand-in agent containers that removes them afterwards."""
    made = Agents(docker_client)
    try:
        yield made
    finally:
        made.remove()


def cli(container: str, state_dir: Path, *args: str) -> Result:
    """``agent-supervisor ARGS`` with ``docker.container`` set (by environment, as compose does)
    and the test's state directory."""
    return run_cli(
        *args,
        "--state-dir",
        str(state_dir),
        env=clean_env(AGENT_SUPERVISOR_DOCKER_CONTAINER=container),
    )


def started_at(container: Any) -> float | None:
    """Docker's StartedAt of the container, inspected now."""
    container.reload()
    return parse_docker_time(container.attrs["State"]["StartedAt"])


# --- 1. a re-run `docker compose up -d` changes nothing ------------------------------------------


@pytest.mark.docker
def test_rerun_compose_up_on_a_running_agent_starts_and_records_nothing(
    project: Project,  # noqa: F811 - the fixture imported above
    docker_client: Any,
) -> None:
    """`up -d` three times through the shipped file's gate service on a running agent: one
    recorded start, one engine start, the same container, and each re-run's gate exits 0
    saying "already running"."""
    t0 = time.time()
    first = project.run("up", "-d", timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    agent = docker_client.containers.get(project.container)
    assert agent.attrs["State"]["Running"]
    same = (agent.id, agent.attrs["State"]["StartedAt"])
    for attempt in (2, 3):
        before = time.time()
        try:
            up = project.run("up", "-d", timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`up -d` #{attempt} on a running agent did not finish within 120 s")
        assert up.returncode == 0, up.stdout + up.stderr
        gate = project.service(docker_client, "gate")
        assert gate is not None
        ran = gate.attrs["State"]
        assert not ran["Running"] and ran["ExitCode"] == 0, ran
        # The gate really ran during this `up` (compose started it again), and said why it let
        # compose go on: the agent is running, nothing to start, nothing recorded.
        assert (parse_docker_time(ran["StartedAt"]) or 0.0) >= before, ran
        said = logs_since(gate, before)
        assert "allowed: already running" in said, said
        answers = [(e[0], e[2], e[3]) for e in gate_events(said)]
        assert answers == [("gate.already_running", False, None)], said
        # It compared the running agent with what `up` would create, and found it the same.
        assert not {"docker.recreate_unknown", "docker.recreate_expected"} & set(
            event_names(said)
        ), said
        agent.reload()
        assert agent.attrs["State"]["Running"]
        assert (agent.id, agent.attrs["State"]["StartedAt"]) == same
    runs = project.runs()
    assert [r.via for r in runs] == ["gate"]
    assert runs[0].ended_at is None
    assert len(dockerutil.starts(docker_client, t0, time.time(), project.container)) == 1


# --- 2. a `docker start` no gate approved counts -------------------------------------------------


@pytest.mark.docker
def test_docker_start_outside_the_gate_is_a_run_and_the_gate_says_already_running(
    agents: Agents, tmp_path: Path
) -> None:
    """After the agent exited, a plain `docker start` is listed by `status` as a run via
    docker, and the gate then exits 0 "already running" and leaves the state file as it was."""
    config_dir = tmp_path / "config-map"
    config_dir.mkdir()
    (config_dir / "standin-run-seconds").write_text("0.2\n")
    (config_dir / "standin-exit-code").write_text("1\n")
    c = agents.create("outside", config_dir)
    state = tmp_path / "state"
    state_file = StateStore(state).state_path(AGENT)

    # The gated first start, as compose runs it: the gate approves, then Docker starts.
    first = cli(c.name, state, "gate", "--wait", "--json", *LONG_WINDOW, *QUICK_ADMISSION)
    assert first.code == 0, first.stderr
    c.start()
    assert c.wait(timeout=30)["StatusCode"] == 1
    ended = cli(c.name, state, "status", "--json", *LONG_WINDOW)
    assert ended.code == 0, ended.stderr
    before = json.loads(ended.stdout)["runs"]
    assert [(r["via"], r["exit_code"]) for r in before] == [("gate", 1)]
    assert not json.loads(ended.stdout)["allowed"]  # a failed run a moment ago: not now

    # The agent comes back behind the gate's back: an operator's `docker start`.
    for f in config_dir.iterdir():
        f.unlink()
    c.start()
    docker_started = started_at(c)
    assert docker_started is not None

    status = cli(c.name, state, "status", "--json", *LONG_WINDOW)
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["runs"][:-1] == before
    new = doc["runs"][-1]
    assert new["via"] == "docker"
    assert new["ended_at"] is None
    assert parse_iso(new["started_at"], "started_at") == pytest.approx(docker_started, abs=1e-3)
    assert "docker.started_outside_gate" in event_names(status.stderr)
    assert (doc["allowed"], doc["reason"]) == (True, "already running")
    after_status = state_file.read_bytes()

    gate = cli(c.name, state, "gate", "--json", *LONG_WINDOW)
    assert gate.code == 0, gate.stderr
    answer = json.loads(gate.stdout)
    assert (answer["allowed"], answer["reason"], answer["forced"]) == (
        True,
        "already running",
        False,
    )
    assert [(e[0], e[2]) for e in gate_events(gate.stderr)] == [("gate.already_running", False)]
    assert state_file.read_bytes() == after_status
    runs = StateStore(state).read(AGENT).state.runs
    assert [r.via for r in runs] == ["gate", "docker"]
    assert started_at(c) == docker_started  # the same run: nothing restarted it
    assert c.attrs["State"]["Running"]


# --- 3. an approval no start followed is withdrawn -----------------------------------------------


@pytest.mark.docker
def test_an_approval_no_start_followed_is_withdrawn_after_the_grace(
    agents: Agents, tmp_path: Path
) -> None:
    """An approval Docker never followed stands for docker.grace (a second gate within it
    starts nothing more: the start is on its way), then is withdrawn (logged, gone from
    `status`) and the gate approves a start again."""
    c = agents.create("withdrawn")
    state = tmp_path / "state"
    opts = [*LONG_WINDOW, *QUICK_ADMISSION, "--set", f"docker.grace={GRACE:g}s"]

    first = cli(c.name, state, "gate", "--wait", "--json", *opts)
    assert first.code == 0, first.stderr
    approved_at = parse_iso(json.loads(first.stdout)["decided_at"], "decided_at")
    assert [r.via for r in StateStore(state).read(AGENT).state.runs] == ["gate"]
    # Nobody starts the container (an interrupted `up`, a start that failed).

    second = cli(c.name, state, "gate", "--json", *opts)
    pending = json.loads(second.stdout)
    asked_at = parse_iso(pending["decided_at"], "decided_at")
    assert asked_at - approved_at < GRACE, "the second gate came too late to test the grace"
    assert second.code == 0, second.stdout + second.stderr
    assert pending["allowed"] and pending["run_id"] is None
    assert "on its way" in pending["reason"]
    assert [(e[0], e[2]) for e in gate_events(second.stderr)] == [("gate.pending", False)]
    assert "docker.approval_withdrawn" not in event_names(second.stderr)
    assert len(StateStore(state).read(AGENT).state.runs) == 1

    time.sleep(max(0.0, approved_at + GRACE + 0.5 - time.time()))  # wait out the grace
    assert started_at(c) is None  # never started

    status = cli(c.name, state, "status", "--json", *opts)
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["runs"] == []
    assert doc["backoff_level"] == 0
    withdrawn = [e for e in log_events(status.stderr) if e["event"] == "docker.approval_withdrawn"]
    assert len(withdrawn) == 1, status.stderr
    assert withdrawn[0]["container"] == c.name
    assert parse_iso(withdrawn[0]["approved_at"], "approved_at") == pytest.approx(
        approved_at, abs=1e-3
    )

    again = cli(c.name, state, "gate", "--wait", "--json", *opts)
    assert again.code == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["allowed"]
    assert gate_events(again.stderr)[-1] == ("gate.allowed", 0, True, None)
    assert [r.via for r in StateStore(state).read(AGENT).state.runs] == ["gate"]


# --- 4. the CLI gate and the daemon say the same -------------------------------------------------


@pytest.mark.docker
def test_gate_wait_and_the_daemon_emit_the_same_gate_events(agents: Agents, tmp_path: Path) -> None:
    """With copies of one state (a run failed a moment ago) and a stopped container each,
    `gate --wait` and `run --container` emit the same gate.* events: the refusal they wait on,
    then the allowed, recorded start."""
    prepared = tmp_path / "prepared"
    now = time.time()
    failed = ended(started(AgentState(AGENT), now - 0.5), now - 0.2, 1)
    with StateStore(prepared).transaction(AGENT, now) as tx:
        tx.write(failed, now)
    cli_state, daemon_state = tmp_path / "cli-state", tmp_path / "daemon-state"
    shutil.copytree(prepared, cli_state)
    shutil.copytree(prepared, daemon_state)
    cli_agent, daemon_agent = agents.create("parity-cli"), agents.create("parity-daemon")
    cli_log, daemon_log = tmp_path / "gate.log", tmp_path / "daemon.log"

    gate_argv = [
        sys.executable, "-m", "supervisor", "gate", "--wait", "--json", *SMALL_WINDOW,
        "--state-dir", str(cli_state),
    ]  # fmt: skip
    run_argv = dockerutil.cli_argv(
        "run", "--container", daemon_agent.name, *SMALL_WINDOW, "--state-dir", str(daemon_state)
    )
    gate_env = clean_env(AGENT_SUPERVISOR_DOCKER_CONTAINER=cli_agent.name)
    with (
        dockerutil.process(run_argv, clean_env(), daemon_log) as daemon,
        open(cli_log, "wb") as out,
    ):
        gate = subprocess.run(
            gate_argv, stdout=subprocess.PIPE, stderr=out, env=gate_env, timeout=60, check=False
        )
        dockerutil.wait_for(
            lambda: "daemon.container_started" in event_names(daemon_log.read_text()),
            timeout=30,
            what="the daemon to start its container",
        )
        assert started_at(daemon_agent) is not None
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    assert gate.returncode == 0, cli_log.read_text()
    assert json.loads(gate.stdout)["allowed"]

    cli_events = gate_events(cli_log.read_text())
    daemon_events = gate_events(daemon_log.read_text())
    assert cli_events == daemon_events, (cli_events, daemon_events)
    assert cli_events, "no gate.* events at all"
    assert cli_events[0][0] == "gate.refused" and cli_events[0][1] == 1
    assert cli_events[0][3] is True  # announced as a wait
    assert cli_events[-1] == ("gate.allowed", 1, True, None)
    # The same state and clock give the same answer: both waited for the same slot.
    refusals = [
        [e["next_allowed_at"] for e in log_events(log.read_text()) if e["event"] == "gate.refused"]
        for log in (cli_log, daemon_log)
    ]
    assert refusals[0] == refusals[1], refusals
    for state in (cli_state, daemon_state):
        assert [r.via for r in StateStore(state).read(AGENT).state.runs] == ["gate", "gate"]
    assert started_at(cli_agent) is None  # the CLI gate only answers; it starts nothing


# --- 5. two real starts within docker.grace, nothing reconciling in between ----------------------


@pytest.mark.docker
def test_two_starts_within_the_grace_both_count(agents: Agents, tmp_path: Path) -> None:
    """An approved start, a crash 2 s later, a `docker start` by hand 5 s after that, and no
    gate or status in between: Docker's FinishedAt still holds the crash while the container
    runs again, so the history gets both, the approved run ended there and the ungated start
    after it."""
    config_dir = tmp_path / "config-map"
    config_dir.mkdir()
    (config_dir / "standin-run-seconds").write_text("2\n")
    (config_dir / "standin-exit-code").write_text("1\n")
    c = agents.create("twice", config_dir)
    state = tmp_path / "state"

    approved = cli(c.name, state, "gate", "--wait", "--json", *LONG_WINDOW, *QUICK_ADMISSION)
    assert approved.code == 0, approved.stderr
    c.start()
    assert c.wait(timeout=30)["StatusCode"] == 1
    c.reload()
    crashed_at = parse_docker_time(c.attrs["State"]["FinishedAt"])
    assert crashed_at is not None
    for f in config_dir.iterdir():
        f.unlink()  # the next run lasts until stopped
    time.sleep(5)
    c.start()
    c.reload()
    st = c.attrs["State"]
    # The engine keeps the earlier exit's time while the container runs again.
    assert st["Running"]
    assert parse_docker_time(st["FinishedAt"]) == crashed_at
    second_start = parse_docker_time(st["StartedAt"])
    assert second_start is not None and second_start > crashed_at

    status = cli(c.name, state, "status", "--json", *LONG_WINDOW)
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    first, second = doc["runs"]
    assert first["id"] == json.loads(approved.stdout)["run_id"]
    assert (first["via"], first["end_source"]) == ("gate", "docker")
    assert parse_iso(first["ended_at"], "ended_at") == pytest.approx(crashed_at, abs=1e-3)
    assert second["via"] == "docker" and second["ended_at"] is None
    assert parse_iso(second["started_at"], "started_at") == pytest.approx(second_start, abs=1e-3)
    assert (doc["running"], doc["reason"]) == (True, "already running")
    assert "docker.started_outside_gate" in event_names(status.stderr)


# --- 6. Docker not answering is "unknown", never a start -----------------------------------------


@pytest.fixture
def hanging_docker(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts connections and never answers: a hung Docker engine."""
    import socket
    import threading

    path = tmp_path / "hanging.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize("docker", ["hanging", "down"])
def test_the_gate_never_starts_what_docker_cannot_confirm(
    docker: str, hanging_docker: str, tmp_path: Path
) -> None:
    """The compose gate asked about an agent recorded as running for 2 h, with Docker hanging
    (a socket that never answers) or down (no socket): exit 75, a reason naming Docker, and no
    start recorded."""
    state = tmp_path / "state"
    now = time.time()
    with StateStore(state).transaction(AGENT, now) as tx:
        tx.write(started(AgentState(AGENT), now - 7200), now)
    before = StateStore(state).read(AGENT).state.runs
    host = hanging_docker if docker == "hanging" else f"unix://{tmp_path}/no-such.sock"
    r = run_cli(
        "gate",
        "--json",
        *LONG_WINDOW,
        "--state-dir",
        str(state),
        env=clean_env(AGENT_SUPERVISOR_DOCKER_CONTAINER="cilium-agent", DOCKER_HOST=host),
    )
    assert r.code == 75, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert not doc["allowed"] and doc["run_id"] is None
    assert doc["reason"].startswith("Docker did not answer ("), doc["reason"]
    assert "gate.docker_unknown" in event_names(r.stderr)
    assert StateStore(state).read(AGENT).state.runs == before
