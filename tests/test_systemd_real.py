"""The shipped systemd units run by a real systemd: PID 1 of private namespaces of the test's
own (``systemdutil``), the units installed with the README's own commands, the agent replaced by
the busybox stand-in through a compose file of the test's, and a window of a few seconds.

What only systemd itself can show: Restart=always feeding the gate, ``$EXIT_STATUS`` as systemd
passes it to ExecStopPost=, what ``systemctl stop|restart|daemon-reload`` do to a waiting gate,
and the daemon unit (mode 2) stopped while the agent runs. Every start time is checked against
the slots computed here from the unit's own environment (``systemctl show -p Environment``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dockerutil
import pytest
import systemdutil
from conftest import REQUIRE_DOCKER, REQUIRE_ROOT_TESTS, clean_env, run_cli, skip_or_fail

from supervisor.core.durations import parse_duration
from supervisor.core.policy import Policy, backoff_level, multiplier, next_grid_slot
from supervisor.core.state import AgentState, Run
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO: Final = Path(__file__).resolve().parent.parent
README: Final = REPO / "README.md"
AGENT: Final = "cilium-agent"
AGENT_UNIT: Final = "cilium-agent.service"
DAEMON_UNIT: Final = "agent-supervisor.service"
#: How late a start may come after it was due: the gate wakes up, python starts, systemd forks.
LATE: Final = 4.0
#: Bound on every wait for something systemd or Docker does (generous: 2 shared cores).
TIMEOUT: Final = 120.0
#: The sources of the harness's own mounts, which only its namespace may have.
MOUNT_NAMES: Final = ("as-test-run", "as-test-tmp", "as-test-var-tmp", "as-test-etc-units",
                      "as-test-journal", "as-test-bin", "as-test-cgroup")  # fmt: skip


# --- the node ------------------------------------------------------------------------------------


def readme_install(mode: str) -> str:
    """The shell commands of the README's section ``### Mode N`` that install the unit."""
    text = README.read_text()
    start = text.index(f"### Mode {mode}")
    end = text.find("\n### ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    for block in re.findall(r"```sh\n(.*?)\n[ \t]*```", section, re.S):
        if "systemctl" in block:
            return textwrap.dedent(block)
    raise AssertionError(f"README section 'Mode {mode}' has no sh block with systemctl")


@dataclass
class Node:
    """One node: a namespaced systemd running a unit under test against the stand-in agent."""

    sd: systemdutil.NamespacedSystemd
    unit: str
    config_map: Path
    state_dir: Path
    project: str
    container: str
    client: Any
    t0: float

    def runs(self) -> tuple[Run, ...]:
        """The runs in the agent's state file."""
        return StateStore(self.state_dir).read(AGENT).state.runs

    def state_bytes(self) -> bytes:
        """The state file's bytes (to show that nothing was written)."""
        return (self.state_dir / f"{AGENT}.json").read_bytes()

    def env(self) -> dict[str, str]:
        """The environment the unit runs agent-supervisor with, as systemd merged it."""
        return self.sd.environment(self.unit)

    def policy(self) -> Policy:
        """The gate's policy as the unit configures it (window, this node's slot offset)."""
        return load_config(env=self.env()).policy(AGENT)

    def prop(self, name: str) -> str:
        """One property of the unit under test."""
        return self.sd.show(self.unit, name)[name]

    def agent_behaves(self, run_seconds: float | None, exit_code: int | None) -> None:
        """What the stand-in does on its next start (None: run until SIGTERM, exit 143)."""
        for name, value in (("standin-run-seconds", run_seconds), ("standin-exit-code", exit_code)):
            path = self.config_map / name
            if value is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(f"{value:g}\n")

    def operator(self, *args: str) -> str:
        """An operator's ``agent-supervisor ARGS`` on the host, with the unit's settings."""
        result = run_cli(*args, env=clean_env(**self.env()))
        assert result.code == 0, result.stderr
        return result.stdout

    def docker_starts(self) -> list[float]:
        """When the engine started the agent's container since the node booted."""
        return dockerutil.starts(self.client, self.t0, time.time(), self.container)

    def running(self) -> bool:
        """Whether the agent's container runs."""
        import docker.errors

        try:
            return bool(self.client.containers.get(self.container).attrs["State"]["Running"])
        except docker.errors.NotFound:
            return False

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """Wait for ``predicate``; on timeout, fail with the unit's journal."""
        try:
            return dockerutil.wait_for(predicate, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.sd.journal(self.unit)[-6000:]}") from None

    def waiting_gate(self) -> str:
        """The unit's ControlPID once its ExecStartPre gate announced a wait (else "")."""
        props = self.sd.show(self.unit, "SubState", "ControlPID")
        if props["SubState"] != "start-pre" or props["ControlPID"] == "0":
            return ""
        pid = props["ControlPID"]
        return pid if f"agent-supervisor[{pid}]" in self._waits() else ""

    def _waits(self) -> str:
        return "\n".join(
            line for line in self.sd.journal(self.unit).splitlines() if '"waiting": true' in line
        )


def compose_file(image: str, container: str, config_map: Path) -> str:
    """The node's compose file: the layout of compose/docker-compose.yml (cilium-init,
    cilium-install-cni, cilium-agent with --config-dir, restart "no"), run by the stand-in,
    with no network, no privilege and no host mounts but the agent's config directory."""
    services = {
        "cilium-init": "entrypoint: /init-container.sh",
        "cilium-install-cni": "entrypoint: /install-plugin.sh",
        "cilium-agent": (
            f"container_name: {container}\n"
            "entrypoint: cilium-agent --config-dir=/tmp/cilium/config-map\n"
            "stop_grace_period: 30s\n"
            f"volumes:\n  - {config_map}:/tmp/cilium/config-map:ro"
        ),
    }
    lines = ["services:"]
    for name, extra in services.items():
        lines += [f"  {name}:", f"    image: {image}", '    network_mode: "none"']
        lines += ['    restart: "no"', *textwrap.indent(extra, "    ").splitlines()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_node(tmp_path: Path, docker_client: Any) -> Iterator[Callable[..., Node]]:
    """Boot a namespaced systemd, install a shipped unit with the README's commands and start
    it (``systemctl enable --now``), for the stand-in agent; everything goes at the end."""
    try:
        systemdutil.check_requirements()
        systemdutil.docker_socket()
    except systemdutil.Unavailable as exc:
        skip_or_fail(str(exc), REQUIRE_ROOT_TESTS or REQUIRE_DOCKER)
    if shutil.which("docker-compose") is None:
        skip_or_fail("docker-compose is not installed", REQUIRE_DOCKER)
    image = dockerutil.standin_image(docker_client)
    made: list[Node] = []

    def make(
        unit: str = AGENT_UNIT,
        window: float = 3.0,
        run_seconds: float | None = None,
        exit_code: int | None = None,
        history: tuple[Run, ...] = (),
    ) -> Node:
        project = dockerutil.unique("sd")
        container = f"{project}-agent"
        compose, config_map = tmp_path / "compose", tmp_path / "config-map"
        state = tmp_path / "state"
        for d in (compose, config_map):
            d.mkdir()
        (compose / "docker-compose.yml").write_text(compose_file(image, container, config_map))
        (compose / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
        # An empty configuration file of the node's: the host's /etc/agent-supervisor is not it.
        (tmp_path / "config.toml").write_text("")
        if history:
            with StateStore(state).transaction(AGENT) as tx:
                tx.write(AgentState(AGENT, runs=history), time.time())
        sd = systemdutil.NamespacedSystemd(tmp_path, [unit])
        node = Node(sd, unit, config_map, state, project, container, docker_client, time.time())
        made.append(node)
        node.agent_behaves(run_seconds, exit_code)
        # The test's node: its compose project, state directory, configuration file and a
        # window of seconds. The cluster size and node name are the README's drop-in's.
        settings = [
            "[Service]",
            f"Environment=AGENT_SUPERVISOR_STATE_DIR={state} AGENT_SUPERVISOR_CONFIG="
            f"{tmp_path / 'config.toml'}",
            f"Environment=AGENT_SUPERVISOR_WINDOW_BASE={window:g}s"
            " AGENT_SUPERVISOR_WINDOW_PER_NODE=0 AGENT_SUPERVISOR_WINDOW_MIN=1s",
        ]
        if unit == AGENT_UNIT:
            settings.append(f"WorkingDirectory={compose}")
        else:
            # The daemon supervises the container the node's compose file made, created the
            # way the README says; it is not called cilium-agent: the engine is shared.
            shipped = (REPO / "systemd" / unit).read_text()
            line = next(ln for ln in shipped.splitlines() if ln.startswith("ExecStart="))
            ours = line.replace(f"--container {AGENT}", f"--container {container}")
            assert ours != line, line
            settings += ["ExecStart=", ours]
            subprocess.run(
                ["docker-compose", "up", "--no-start", AGENT],
                cwd=compose, env=clean_env(), check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        sd.drop_in(unit, "50-as-test-node.conf", "\n".join(settings) + "\n")
        sd.boot()
        node.t0 = time.time()
        mode = "1" if unit == AGENT_UNIT else "2"
        sd.run(["/bin/sh", "-ec", f"cd {REPO}\n{readme_install(mode)}"])
        return node

    try:
        yield make
    finally:
        for node in made:
            try:
                node.sd.close()
            finally:
                dockerutil.remove_project(docker_client, node.project)
                dockerutil.remove_containers(docker_client, node.container)


def crash_history(now: float, count: int) -> tuple[Run, ...]:
    """``count`` failed runs (exit 1 after 5 s), the latest a minute ago: the next start may
    come at once, and the level after it is ``count + 1``."""
    return tuple(
        Run(started_at=now - 60 * (count - i), ended_at=now - 60 * (count - i) + 5,
            exit_code=1, end_source="record-exit")
        for i in range(count)
    )  # fmt: skip


def due(policy: Policy, runs: tuple[Run, ...], i: int) -> float:
    """When the gate may let run ``i`` start, from the runs before it (invariants 2 and 3)."""
    level = backoff_level(AgentState(AGENT, runs=runs[:i]), policy.stable_after)
    w = policy.window
    m = multiplier(level, policy.max_multiplier)
    return next_grid_slot(runs[i - 1].started_at + w * m, w, policy.offset)


# --- mode 1: cilium-agent.service ----------------------------------------------------------------


def test_crash_loop_under_restart_always_starts_per_the_gate(
    make_node: Callable[..., Node],
) -> None:
    """An agent that exits 3 after 1 s, restarted by systemd: each start comes at the node's
    slot of window last + W*m (or when systemd asks, if later), never two within W."""
    node = make_node(run_seconds=1, exit_code=3)
    node.wait(lambda: len(runs := node.runs()) >= 4 and runs[3].ended_at, "four runs")
    restarts = int(node.prop("NRestarts"))
    runs = node.runs()[:4]
    starts = node.docker_starts()[:4]
    policy = node.policy()
    restart_sec = parse_duration(node.prop("RestartUSec"))
    assert restarts >= 3
    assert [(r.via, r.exit_code, r.end_source) for r in runs] == [("gate", 3, "record-exit")] * 4
    waited = 0
    for i in range(1, 4):
        slot, ended = due(policy, runs, i), runs[i - 1].ended_at
        assert ended is not None
        # systemd asks again RestartSec after ExecStopPost recorded the exit.
        asked = ended + restart_sec
        assert slot <= runs[i].started_at <= max(slot, asked) + LATE, (i, slot, asked, runs)
        waited += slot > asked
    assert waited >= 1, "no start waited for its slot: the window is shorter than a restart"
    assert len(starts) == 4
    assert all(b - a >= policy.window for a, b in itertools.pairwise(starts)), starts
    for run, started in zip(runs, starts, strict=True):
        assert run.started_at <= started <= run.started_at + 30


def test_stop_during_the_gates_wait_ends_it_at_once_and_records_nothing(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl stop` while ExecStartPre's gate waits for a slot: the unit goes down promptly,
    the agent is not started, and the state file keeps its bytes."""
    node = make_node(run_seconds=1, exit_code=3, history=crash_history(time.time(), 2))
    node.wait(lambda: (runs := node.runs()) and len(runs) == 3 and runs[2].ended_at, "a run")
    node.wait(node.waiting_gate, "the gate to wait for the level-3 slot")
    before = node.state_bytes()
    node.sd.systemctl("stop", node.unit, timeout=TIMEOUT)
    props = node.sd.show(node.unit, "ActiveState", "Result", "ControlPID", "MainPID")
    # "failed", on purpose: the gate exits 75 when a signal ends its wait, and 75 is not a
    # success status of the unit (a gate killed by hand must not let the agent start ungated).
    assert props == {"ActiveState": "failed", "Result": "exit-code", "ControlPID": "0",
                     "MainPID": "0"}  # fmt: skip
    assert node.state_bytes() == before
    journal = node.sd.journal(node.unit)
    assert '"event": "gate.wait_interrupted"' in journal
    assert "Control process exited, code=exited, status=75/" in journal
    assert "no run in progress; nothing recorded" in journal
    time.sleep(parse_duration(node.prop("RestartUSec")) + 2)
    assert node.prop("ActiveState") == "failed"
    assert len(node.docker_starts()) == 1
    assert node.state_bytes() == before


def test_exec_stop_post_records_the_agents_real_exit_status(
    make_node: Callable[..., Node],
) -> None:
    """$EXIT_STATUS as systemd passes it: the stand-in's exit 3 is recorded as 3, and a
    `systemctl stop` of the running agent as a deliberate stop (143, the SIGTERM it died of)."""
    node = make_node(run_seconds=1, exit_code=3)
    node.wait(lambda: (runs := node.runs()) and runs[0].ended_at, "the first run to end")
    node.agent_behaves(None, None)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the second run")
    node.sd.systemctl("stop", node.unit, timeout=TIMEOUT)
    first, second = node.runs()
    assert (first.exit_code, first.end_source) == (3, "record-exit")
    # The stand-in dies of the SIGTERM of ExecStop's `docker-compose stop` (143); compose's
    # `up` passes that on, or exits 0 itself when systemd's own SIGTERM reaches it first.
    assert (second.exit_code, second.end_source) in ((143, "record-exit"), (0, "record-exit"))
    assert second.stopped_on_purpose
    # A stop on purpose is clean (SuccessExitStatus=143), whoever of compose and systemd wins.
    assert node.prop("ActiveState") == "inactive"
    state = node.client.containers.get(node.container).attrs["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 143)
    journal = node.sd.journal(node.unit)
    assert "Main process exited, code=exited, status=3/" in journal


def test_restart_of_a_healthy_agent_within_the_window_waits_for_the_slot(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl restart` of an agent that started less than W ago: the stop is neutral
    (exit 143 or 0, level 0), and the start waits for the node's first slot at or after last + W."""
    node = make_node(window=10)
    node.wait(node.running, "the agent to run")
    node.sd.systemctl("restart", "--no-block", node.unit)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the restarted agent")
    first, second = node.runs()
    policy = node.policy()
    slot = next_grid_slot(first.started_at + policy.window, policy.window, policy.offset)
    assert first.ended_at is not None and first.ended_at - first.started_at < policy.window
    assert (first.stopped_on_purpose, second.via) == (True, "gate")
    assert backoff_level(AgentState(AGENT, runs=(first,)), policy.stable_after) == 0
    assert slot <= second.started_at <= slot + LATE
    assert node.docker_starts()[1] >= slot


def test_restart_of_a_healthy_agent_after_the_window_is_not_delayed(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl restart` (an upgrade) of an agent that started more than W ago: the gate
    lets the new start through at once ("no start in the last window")."""
    node = make_node(window=3)
    node.wait(node.running, "the agent to run")
    policy = node.policy()
    (first,) = node.runs()
    node.wait(lambda: time.time() > first.started_at + policy.window, "a window to pass")
    asked = time.time()
    node.sd.systemctl("restart", node.unit, timeout=TIMEOUT)
    first, second = node.runs()
    assert (first.stopped_on_purpose, second.via) == (True, "gate")
    assert asked <= second.started_at <= asked + LATE + 2  # the stop, then the gate
    assert '"reason": "no start in the last window"' in node.sd.journal(node.unit)


def test_override_then_restart_restarts_a_healthy_agent_at_once(
    make_node: Callable[..., Node],
) -> None:
    """The README's way to restart on purpose within a window: `agent-supervisor override`,
    then `systemctl restart`: the start goes through at once; `release` ends the override."""
    node = make_node(window=600)
    node.wait(node.running, "the agent to run")
    node.operator("override", "--for", "5m", "--reason", "restart on purpose")
    asked = time.time()
    node.sd.systemctl("restart", node.unit, timeout=TIMEOUT)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the restarted agent")
    node.operator("release")
    first, second = node.runs()
    assert (first.stopped_on_purpose, second.via) == (True, "override")
    assert asked <= second.started_at <= asked + 10
    status = json.loads(node.operator("status", "--json"))
    assert (status["allowed"], status["override"]) == (False, None)


def test_daemon_reload_and_restart_mid_wait_do_not_release_the_agent_early(
    make_node: Callable[..., Node],
) -> None:
    """While the gate waits for the level-3 slot: `systemctl daemon-reload` leaves that gate
    waiting, and `systemctl restart` replaces it by one that waits for the same slot."""
    node = make_node(window=4, run_seconds=1, exit_code=3, history=crash_history(time.time(), 2))
    node.wait(lambda: (runs := node.runs()) and len(runs) == 3 and runs[2].ended_at, "a run")
    gate = node.wait(node.waiting_gate, "the gate to wait for the level-3 slot")
    runs = node.runs()
    policy = node.policy()
    assert backoff_level(AgentState(AGENT, runs=runs), policy.stable_after) == 3
    slot = due(policy, runs, 3)
    before = node.state_bytes()
    node.sd.systemctl("daemon-reload")
    assert node.waiting_gate() == gate
    node.sd.systemctl("restart", "--no-block", node.unit)
    node.wait(lambda: node.waiting_gate() not in ("", gate), "a new gate to wait")
    assert time.time() < slot, "the slot came before the restart: the test proves nothing"
    assert node.state_bytes() == before
    node.wait(lambda: len(node.runs()) == 4, "the next start")
    started = node.runs()[3].started_at
    assert slot <= started <= slot + LATE
    node.wait(lambda: len(node.docker_starts()) == 2, "the container's second start")
    assert node.docker_starts()[1] >= slot


# --- mode 2: agent-supervisor.service ------------------------------------------------------------


def test_daemon_unit_restarts_a_crashing_agent_per_the_gate(
    make_node: Callable[..., Node],
) -> None:
    """agent-supervisor.service under systemd, the stand-in exiting 3 after 1 s: the daemon
    records each exit from Docker and starts the container at the node's slots, never two
    starts within W, and systemd never has to restart the daemon."""
    node = make_node(DAEMON_UNIT, run_seconds=1, exit_code=3)
    node.wait(lambda: len(runs := node.runs()) >= 4 and runs[3].ended_at, "four runs")
    runs = node.runs()[:4]
    starts = node.docker_starts()[:4]
    policy = node.policy()
    assert [(r.via, r.exit_code, r.end_source) for r in runs] == [("gate", 3, "docker")] * 4
    for i in range(1, 4):
        slot = due(policy, runs, i)
        asked = runs[i - 1].ended_at
        assert asked is not None and asked < slot
        assert slot <= runs[i].started_at <= slot + LATE, (i, slot, runs)
    assert len(starts) == 4
    assert all(b - a >= policy.window for a, b in itertools.pairwise(starts)), starts
    assert node.prop("NRestarts") == "0"
    assert node.prop("ActiveState") == "active"


def test_stopping_the_daemon_unit_leaves_the_agent_running(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl stop agent-supervisor` stops the supervision only: the container the daemon
    started keeps running, the same run, and nothing is recorded as its end."""
    node = make_node(DAEMON_UNIT)
    node.wait(node.running, "the daemon to start the agent")
    started = node.client.containers.get(node.container).attrs["State"]["StartedAt"]
    node.sd.systemctl("stop", node.unit, timeout=TIMEOUT)
    assert node.prop("ActiveState") == "inactive"
    time.sleep(2)
    state = node.client.containers.get(node.container).attrs["State"]
    assert (state["Running"], state["StartedAt"]) == (True, started)
    (run,) = node.runs()
    assert run.ended_at is None
    assert '"event": "daemon.stopped"' in node.sd.journal(node.unit)


# --- the harness itself --------------------------------------------------------------------------


def test_the_harness_leaves_the_host_alone(tmp_path: Path) -> None:
    """Boot and power off: the host's /tmp, units, host name, global sysctls and mounts are as
    they were, and the test's cgroup is gone."""
    try:
        systemdutil.check_requirements()
    except systemdutil.Unavailable as exc:
        skip_or_fail(str(exc), REQUIRE_ROOT_TESTS)
    canary = Path("/tmp") / f"{dockerutil.unique('canary')}"
    canary.write_text("still here\n")
    sysctls = ("kernel/core_pattern", "fs/file-max", "fs/nr_open", "kernel/hostname")
    before = {k: Path("/proc/sys", k).read_text() for k in sysctls}
    etc_units = sorted(os.listdir("/etc/systemd/system"))
    sd = systemdutil.NamespacedSystemd(tmp_path, [])
    try:
        sd.boot()
        # Inside: a /tmp of its own, systemd as PID 1 in a container, no unit of the host's.
        inside = sd.run(
            ["sh", "-ec", f"! test -e {canary}; cat /proc/1/comm; ls -A /etc/systemd/system"]
        )
        assert inside.stdout.split() == ["systemd"]
        virt = sd.run(["systemd-detect-virt", "--container"], check=False).stdout.strip()
        assert virt == "container-other"
    finally:
        sd.close()
    try:
        assert canary.read_text() == "still here\n"
        assert {k: Path("/proc/sys", k).read_text() for k in sysctls} == before
        assert sorted(os.listdir("/etc/systemd/system")) == etc_units
        assert not sd.cgroup.exists()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert not [name for name in MOUNT_NAMES if f" {name} " in mounts]
    finally:
        canary.unlink()
