"""The shipped systemd units run by a real systemd: PID 1 of private namespaces of the test's
own (``systemdutil``), installed as the README says (the node's settings in
``/etc/agent-supervisor/config.toml``, the namespace's own; the unit copied and enabled with the
README's commands), the agent replaced by the busybox stand-in through a compose file of the
test's, and windows of a few seconds.

What only systemd itself can show: Restart=always feeding the gate, ``$EXIT_STATUS`` and the
run id (``EnvironmentFile=``) as systemd passes them to ExecStart= and ExecStopPost=, what
``systemctl stop|restart|daemon-reload`` do to a waiting gate, what a failed ExecStartPre=
leaves behind, the operator's shell reading the same configuration as the unit, and the daemon
unit (mode 2) stopped while the agent runs. Every start is checked against the slot its gate
named in the journal, and that slot against the slots computed here from the node's
configuration (never too early, never later than the contract says).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import dockerutil
import pytest
import systemdutil
from conftest import REQUIRE_DOCKER, REQUIRE_ROOT_TESTS, clean_env, skip_or_fail

from supervisor.core.container import parse_docker_time
from supervisor.core.durations import parse_duration
from supervisor.core.policy import Policy, backoff_level, multiplier, next_grid_slot
from supervisor.core.state import AgentState, Run
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO: Final = Path(__file__).resolve().parent.parent
#: The deployment guide, where the README's install of each mode lives.
DEPLOYMENT: Final = REPO / "docs" / "deployment.md"
AGENT: Final = "cilium-agent"
AGENT_UNIT: Final = "cilium-agent.service"
DAEMON_UNIT: Final = "agent-supervisor.service"
#: The configuration file every command of the node reads (the namespace's own /etc).
CONFIG: Final = "/etc/agent-supervisor/config.toml"
#: Where the unit keeps the run id between its commands (RuntimeDirectory=).
RUN_DIR: Final = "/run/agent-supervisor/cilium-agent"
#: How late a start may come after it was due: the gate wakes up, python starts, systemd forks.
LATE: Final = 4.0
#: Bound on every wait for something systemd or Docker does (generous: 2 shared cores).
TIMEOUT: Final = 120.0
#: The sources of the harness's own mounts, which only its namespace may have.
MOUNT_NAMES: Final = ("as-test-run", "as-test-tmp", "as-test-var-tmp", "as-test-etc",
                      "as-test-etc-units", "as-test-journal", "as-test-bin",
                      "as-test-cgroup")  # fmt: skip


# --- the deployment guide ------------------------------------------------------------------------


def readme_section(mode: str) -> str:
    """The deployment guide's section ``### Mode N``."""
    text = DEPLOYMENT.read_text()
    start = text.index(f"### Mode {mode}")
    end = text.find("\n### ", start + 1)
    return text[start : end if end != -1 else len(text)]


def readme_blocks(mode: str, lang: str) -> list[str]:
    """The code blocks of one language in the deployment guide's section ``### Mode N``,
    dedented."""
    pattern = rf"```{lang}\n(.*?)\n[ \t]*```"
    return [textwrap.dedent(b) for b in re.findall(pattern, readme_section(mode), re.S)]


def readme_install(mode: str) -> str:
    """The shell commands of the deployment guide's section ``### Mode N`` that install the unit."""
    for block in readme_blocks(mode, "sh"):
        if "systemctl" in block:
            return block
    raise AssertionError(f"docs/deployment.md section 'Mode {mode}' has no sh block with systemctl")


def readme_config(mode: str) -> dict[str, Any]:
    """The ``config.toml`` of the deployment guide's section ``### Mode N``."""
    (block,) = readme_blocks(mode, "toml")
    return tomllib.loads(block)


def toml_text(settings: Mapping[str, Any]) -> str:
    """``settings`` (keys, and tables of keys) as TOML."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))  # a TOML basic string

    lines = [f"{k} = {value(v)}" for k, v in settings.items() if not isinstance(v, Mapping)]
    for table, keys in settings.items():
        if isinstance(keys, Mapping):
            lines += ["", f"[{table}]", *(f"{k} = {value(v)}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` (tables merged key by key; a value None removes the key)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, v in changes.items():
        if v is None:
            out.pop(key, None)
        elif isinstance(v, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], v)
        else:
            out[key] = v
    return out


def iso_time(text: str) -> float:
    """An ISO 8601 UTC time of the decision JSON -> seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def on_grid(t: float, period: float, offset: float) -> bool:
    """Whether ``t`` is one of the node's slots on the grid of ``period``."""
    return math.isclose(next_grid_slot(t, period, offset), t, abs_tol=2e-6)


# --- the node ------------------------------------------------------------------------------------


class ContainerStarts:
    """When the engine starts one container, heard live from before the node boots.

    Not ``docker events --since`` after the fact: the engine keeps only its last 256 events
    for that, and a shared engine makes more than that in a minute, so a start a minute old
    may be gone from the answer.
    """

    def __init__(self, name: str) -> None:
        from supervisor.gate.inspect import connect_from_env

        self.times: list[float] = []
        self._client = connect_from_env(30)
        filters = {"type": "container", "container": name, "event": ["start"]}
        self._stream = self._client.events(decode=True, filters=filters)
        self._thread = threading.Thread(target=self._listen, name=f"starts-{name}", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        # Ends when close() closes the stream under it, with whatever the SDK raises then.
        with contextlib.suppress(Exception):
            for event in self._stream:
                self.times.append(event.get("timeNano", 0) / 1e9 or float(event.get("time", 0)))

    def close(self) -> None:
        """Stop listening."""
        self._stream.close()
        self._thread.join(10)
        self._client.close()


@dataclass(frozen=True)
class Logged:
    """One line that agent-supervisor logged in the unit's journal (a JSON event)."""

    pid: str
    at: float
    doc: dict[str, Any]


@dataclass(frozen=True)
class Waited:
    """The slot a gate named for a start (its last refusal before it allowed that start)."""

    due: float
    grid: str
    told_at: float
    level: int
    reason: str


@dataclass
class Node:
    """One node: a namespaced systemd running a unit under test against the stand-in agent."""

    sd: systemdutil.NamespacedSystemd
    unit: str
    config_map: Path
    compose: Path
    state_dir: Path
    project: str
    container: str
    client: Any
    starts: ContainerStarts
    config: Path
    settings: dict[str, Any]

    # --- the node's configuration, as the README installs it --------------------------------

    def configure(self, **changes: Any) -> None:
        """Change the node's config.toml (a value None removes the key) and install it."""
        self.settings = merged(self.settings, changes)
        self.config.write_text(toml_text(self.settings))
        self.sd.run(["install", "-D", "-m", "0644", str(self.config), CONFIG])

    def policy(self) -> Policy:
        """The gate's policy as the node's config.toml makes it (window, this node's slot)."""
        return load_config(self.config, env={}).policy(AGENT)

    def shell(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An operator's ``agent-supervisor ARGS`` in a shell of the node: no environment of
        the unit's, the node's /etc/agent-supervisor/config.toml."""
        return self.sd.run(["agent-supervisor", *args], check=False)

    def operator(self, *args: str) -> str:
        """:meth:`shell`, which must succeed; its output."""
        result = self.shell(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def status(self) -> dict[str, Any]:
        """``agent-supervisor status --json`` in the node's shell."""
        doc: dict[str, Any] = json.loads(self.operator("status", "--json"))
        return doc

    # --- the state, the agent, the unit -----------------------------------------------------

    def runs(self) -> tuple[Run, ...]:
        """The runs in the agent's state file."""
        return StateStore(self.state_dir).read(AGENT).state.runs

    def level(self) -> int:
        """The backoff level of the state file's history (invariant 1), the agent's open run
        skipped while its container runs (as the gate does with Docker's word)."""
        state = AgentState(AGENT, runs=self.runs())
        return backoff_level(state, self.policy().stable_after, running=self.running())

    def state_bytes(self) -> bytes:
        """The state file's bytes (to show that nothing was written)."""
        return (self.state_dir / f"{AGENT}.json").read_bytes()

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

    def docker_starts(self) -> list[float]:
        """When the engine started the agent's container since the node was made."""
        return sorted(self.starts.times)

    def running(self) -> bool:
        """Whether the agent's container runs."""
        import docker.errors

        try:
            return bool(self.client.containers.get(self.container).attrs["State"]["Running"])
        except docker.errors.NotFound:
            return False

    def main_run_id(self) -> str | None:
        """AGENT_SUPERVISOR_RUN_ID in the environment of the unit's main process (ExecStart=,
        docker-compose), as the namespace's /proc shows it; None without a main process."""
        pid = self.prop("MainPID")
        if pid == "0":
            return None
        environ = self.sd.run(["cat", f"/proc/{pid}/environ"], check=False).stdout
        values = dict(v.split("=", 1) for v in environ.split("\0") if "=" in v)
        return values.get("AGENT_SUPERVISOR_RUN_ID")

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """Wait for ``predicate``; on timeout, fail with the unit's journal."""
        try:
            return dockerutil.wait_for(predicate, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.sd.journal(self.unit)[-6000:]}") from None

    # --- the journal ------------------------------------------------------------------------

    def messages(self) -> list[tuple[str, str]]:
        """(PID, message) of every line of the unit's journal, in order."""
        return [(e.get("_PID", ""), e["MESSAGE"]) for e in self.sd.journal_entries(self.unit)]

    def logged(self) -> list[Logged]:
        """agent-supervisor's JSON events in the unit's journal, in order."""
        out = []
        for entry in self.sd.journal_entries(self.unit):
            text = entry["MESSAGE"]
            if not text.startswith("{"):
                continue
            try:
                doc = json.loads(text)
            except ValueError:
                continue
            at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
            out.append(Logged(entry.get("_PID", ""), at, doc))
        return out

    def waited(self, run_id: str) -> Waited:
        """The slot the gate that allowed ``run_id`` named when it refused it last."""
        logged = self.logged()
        allowed = next(
            i for i, e in enumerate(logged)
            if e.doc.get("event") == "gate.allowed" and e.doc.get("run_id") == run_id
        )  # fmt: skip
        pid = logged[allowed].pid
        refusal = next(
            e for e in reversed(logged[:allowed])
            if e.pid == pid and e.doc.get("event") == "gate.refused"
        )  # fmt: skip
        doc = refusal.doc
        return Waited(
            iso_time(doc["next_allowed_at"]),
            doc["grid"],
            refusal.at,
            doc["backoff_level"],
            doc["reason"],
        )

    def ended_by_exec_stop_post(self, run_id: str) -> dict[str, Any]:
        """record-exit's ``run.exited`` event for ``run_id`` (ExecStopPost= named that run)."""
        return next(
            e.doc for e in self.logged()
            if e.doc.get("event") == "run.exited" and e.doc.get("run_id") == run_id
        )  # fmt: skip

    def waiting_gate(self) -> str:
        """The unit's ControlPID once its ExecStartPre gate announced a wait (else "")."""
        props = self.sd.show(self.unit, "SubState", "ControlPID")
        if props["SubState"] != "start-pre" or props["ControlPID"] == "0":
            return ""
        pid = props["ControlPID"]
        waits = [e for e in self.logged() if e.pid == pid and e.doc.get("waiting")]
        return pid if waits else ""

    def after_failed_pre(self, status: int, after: int = 0) -> tuple[int, str] | None:
        """What ExecStopPost's record-exit said after the first failed ExecStartPre= (exit
        ``status``) at or after journal index ``after``: (its index, its line), or None yet."""
        failed = False
        for i, (_pid, text) in enumerate(self.messages()):
            if i < after:
                continue
            if f"Control process exited, code=exited, status={status}/" in text:
                failed = True
            elif failed and (
                text.startswith("recorded exit")
                or text.endswith("nothing recorded")
                or re.search(r'"event": "run\.(exited|exit_ignored)"', text)
            ):
                return i, text
        return None


def recorded_nothing(said: tuple[int, str] | None) -> bool:
    """Whether record-exit's line says it recorded nothing for want of an exit status (systemd
    gave an empty $EXIT_STATUS and, the gate having approved nothing, no run id)."""
    assert said is not None
    text = said[1]
    if text.startswith("{"):
        doc = json.loads(text)
        return bool(
            doc.get("event") == "run.exit_ignored"
            and doc.get("run_id") is None
            and "no exit status" in doc["why"]
        )
    return text.startswith("no exit status") and text.endswith("nothing recorded")


def check_start(policy: Policy, node: Node, runs: tuple[Run, ...], i: int) -> Waited:
    """Run ``i`` started at the slot its gate named, and that slot is the contract's: S (the
    node's window slot at or after last + W*m) when S was ahead when the start was first asked
    for, else the node's first admission slot after that moment (invariants 2 and 3)."""
    w = node.waited(runs[i].id)
    s = due(policy, runs, i) if i else None
    if w.grid == "window":
        assert s is not None and math.isclose(w.due, s, abs_tol=2e-6), (i, w, s)
    else:
        j = policy.admission_period
        assert w.grid == "admission", w
        assert on_grid(w.due, j, policy.offset), (i, w)
        assert s is None or w.due > s, (i, w, s)  # S had passed when the start was asked for
        assert w.due - j <= w.told_at, (i, w)  # the first admission slot after the ask
    assert w.due <= runs[i].started_at <= w.due + LATE, (i, w, runs[i])
    return w


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
    """Boot a namespaced systemd, write the node's config.toml and install a shipped unit with
    the README's commands (``systemctl enable --now``), for the stand-in agent; everything goes
    at the end. ``prepare`` runs between the boot and the README's commands."""
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
        *,
        admission: float | None = None,
        run_seconds: float | None = None,
        exit_code: int | None = None,
        history: tuple[Run, ...] = (),
        settings: Mapping[str, Any] | None = None,
        prepare: Callable[[Node], None] | None = None,
    ) -> Node:
        project = dockerutil.unique("sd")
        container = f"{project}-agent"
        compose, config_map = tmp_path / "compose", tmp_path / "config-map"
        state = tmp_path / "state"
        for d in (compose, config_map):
            d.mkdir()
        (compose / "docker-compose.yml").write_text(compose_file(image, container, config_map))
        (compose / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
        if history:
            with StateStore(state).transaction(AGENT) as tx:
                tx.write(AgentState(AGENT, runs=history), time.time())
        # The node's config.toml: the README's (mode 1), with the test's container, state
        # directory and a window of seconds (J as given, else W).
        window_keys: dict[str, Any] = {"base": f"{window:g}s", "per_node": "0s", "min": "1s"}
        if admission is not None:
            window_keys["admission"] = f"{admission:g}s"
        ours: dict[str, Any] = {"state_dir": str(state), "window": window_keys}
        if unit == AGENT_UNIT:
            base = readme_config("1")
            ours["docker"] = {"container": container}
        else:
            base = {"cluster_size": 1000, "node_name": "node-1"}
        sd = systemdutil.NamespacedSystemd(tmp_path, [unit])
        starts = ContainerStarts(container)
        node = Node(sd, unit, config_map, compose, state, project, container, docker_client,
                    starts, tmp_path / "config.toml", {})  # fmt: skip
        made.append(node)
        node.agent_behaves(run_seconds, exit_code)
        node.settings = merged(merged(base, ours), settings or {})
        # Only what is the unit's own goes in a drop-in: where the node's compose file is, and
        # (the engine is shared) the container the daemon supervises.
        if unit == AGENT_UNIT:
            lines = [f"WorkingDirectory={compose}"]
        else:
            shipped = (REPO / "systemd" / unit).read_text()
            line = next(ln for ln in shipped.splitlines() if ln.startswith("ExecStart="))
            ours_line = line.replace(f"--container {AGENT}", f"--container {container}")
            assert ours_line != line, line
            lines = ["ExecStart=", ours_line]
            subprocess.run(
                ["docker-compose", "up", "--no-start", AGENT],
                cwd=compose, env=clean_env(), check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        sd.drop_in(unit, "50-as-test-node.conf", "\n".join(["[Service]", *lines]) + "\n")
        sd.boot()
        node.configure()
        if prepare is not None:
            prepare(node)
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
                node.starts.close()
                dockerutil.remove_project(docker_client, node.project)
                dockerutil.remove_containers(docker_client, node.container)


def crash_history(now: float, count: int) -> tuple[Run, ...]:
    """``count`` failed runs (exit 1 after 1 s), the latest a minute ago."""
    return tuple(
        Run(f"before-{i}", started_at=now - 60 * (count - i), ended_at=now - 60 * (count - i) + 1,
            exit_code=1, end_source="record-exit")
        for i in range(count)
    )  # fmt: skip


def due(policy: Policy, runs: tuple[Run, ...], i: int) -> float:
    """S for run ``i``: the node's window slot at or after the latest start before it + W*m,
    m from the runs before it (invariant 3)."""
    level = backoff_level(AgentState(AGENT, runs=runs[:i]), policy.stable_after)
    w = policy.window
    m = multiplier(level, policy.max_multiplier)
    return next_grid_slot(runs[i - 1].started_at + w * m, w, policy.offset)


# --- mode 1: cilium-agent.service ----------------------------------------------------------------


def test_crash_loop_under_restart_always_starts_per_the_gate(
    make_node: Callable[..., Node],
) -> None:
    """An agent that exits 3 after 1 s, restarted by systemd: the first start comes at the
    node's admission slot, each later one at S or (S passed when systemd asked) the next
    admission slot, never two within W, and ExecStopPost= closes each run by its id."""
    node = make_node(run_seconds=1, exit_code=3)
    node.wait(lambda: len(runs := node.runs()) >= 4 and runs[3].ended_at, "four runs")
    runs = node.runs()[:4]
    starts = node.docker_starts()[:4]
    policy = node.policy()
    assert int(node.prop("NRestarts")) >= 3
    assert [(r.via, r.exit_code, r.end_source) for r in runs] == [("gate", 3, "record-exit")] * 4
    grids = [check_start(policy, node, runs, i).grid for i in range(4)]
    assert grids[0] == "admission"
    assert "window" in grids, "no start waited for S: the window is shorter than a restart"
    assert len({r.id for r in runs}) == 4
    for run in runs:
        assert node.ended_by_exec_stop_post(run.id)["exit_code"] == 3
    assert len(starts) == 4
    assert all(b - a >= policy.window for a, b in itertools.pairwise(starts)), starts
    for run, started in zip(runs, starts, strict=True):
        assert run.started_at <= started <= run.started_at + 30


def test_stop_during_the_gates_wait_ends_it_at_once_and_records_nothing(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl stop` while ExecStartPre's gate waits for a slot: the unit goes down promptly,
    ExecStopPost's record-exit (no $EXIT_STATUS, no run id) records nothing, the agent is not
    started, and the state file keeps its bytes."""
    node = make_node(run_seconds=1, exit_code=3, history=crash_history(time.time(), 2))
    node.wait(lambda: (runs := node.runs()) and len(runs) == 3 and runs[2].ended_at, "a run")
    node.wait(node.waiting_gate, "the gate to wait for the level-3 slot")
    before = node.state_bytes()
    mark = len(node.messages())
    node.sd.systemctl("stop", node.unit, timeout=TIMEOUT)
    props = node.sd.show(node.unit, "ActiveState", "Result", "ControlPID", "MainPID")
    # "failed", on purpose: the gate exits 75 when a signal ends its wait, and 75 is not a
    # success status of the unit (a gate killed by hand must not let the agent start ungated).
    assert props == {"ActiveState": "failed", "Result": "exit-code", "ControlPID": "0",
                     "MainPID": "0"}  # fmt: skip
    assert node.state_bytes() == before
    said = node.wait(lambda: node.after_failed_pre(75, after=mark), "ExecStopPost after the 75")
    assert recorded_nothing(said), said
    assert any(e.doc.get("event") == "gate.wait_interrupted" for e in node.logged())
    time.sleep(parse_duration(node.prop("RestartUSec")) + 2)
    assert node.prop("ActiveState") == "failed"
    assert len(node.docker_starts()) == 1
    assert node.state_bytes() == before


def test_exec_stop_post_records_the_agents_real_exit_status_for_the_run_it_names(
    make_node: Callable[..., Node],
) -> None:
    """$EXIT_STATUS and the run id as systemd passes them: the stand-in's exit 3 closes its own
    run with 3, and `systemctl stop` of the next run (whose id docker-compose carries) closes
    that run as a deliberate stop (143, the SIGTERM it died of); the id's file goes with it."""
    node = make_node(run_seconds=1, exit_code=3)
    node.wait(lambda: (runs := node.runs()) and runs[0].ended_at, "the first run to end")
    node.agent_behaves(None, None)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the second run")
    first, second = node.runs()
    # EnvironmentFile= is read before ExecStart=: the gate's id reached docker-compose.
    assert node.main_run_id() == second.id != first.id
    node.sd.systemctl("stop", node.unit, timeout=TIMEOUT)
    first, second = node.runs()
    assert (first.exit_code, first.end_source) == (3, "record-exit")
    assert node.ended_by_exec_stop_post(first.id)["exit_code"] == 3
    # The stand-in dies of the SIGTERM of ExecStop's `docker-compose stop` (143); compose's
    # `up` passes that on, or exits 0 itself when systemd's own SIGTERM reaches it first.
    assert (second.exit_code, second.end_source) in ((143, "record-exit"), (0, "record-exit"))
    assert second.stopped_on_purpose
    assert node.ended_by_exec_stop_post(second.id)["exit_code"] == second.exit_code
    # A stop on purpose is clean (SuccessExitStatus=143), whoever of compose and systemd wins.
    assert node.prop("ActiveState") == "inactive"
    state = node.client.containers.get(node.container).attrs["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 143)
    assert any("status=3/" in text for _pid, text in node.messages())
    assert node.sd.run(["test", "-e", RUN_DIR], check=False).returncode == 1
    assert node.level() == 1


def test_restart_of_a_healthy_agent_within_the_window_waits_for_the_slot(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl restart` of an agent that started less than W ago: ExecStopPost closes the
    old run (by its id) as a neutral stop, and the new run (a new id in docker-compose's
    environment) starts at S, the node's first window slot at or after last + W."""
    node = make_node(window=10, admission=2)
    node.wait(node.running, "the agent to run")
    (first,) = node.runs()
    assert node.main_run_id() == first.id
    node.sd.systemctl("restart", "--no-block", node.unit)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the restarted agent")
    first, second = node.runs()
    policy = node.policy()
    assert first.ended_at is not None and first.ended_at - first.started_at < policy.window
    assert (first.stopped_on_purpose, second.via) == (True, "gate")
    assert node.ended_by_exec_stop_post(first.id)["exit_code"] == first.exit_code
    assert node.level() == 0
    waited = check_start(policy, node, (first, second), 1)
    assert (waited.grid, waited.level) == ("window", 0)
    assert node.docker_starts()[1] >= waited.due
    assert node.main_run_id() == second.id


def test_restart_of_a_healthy_agent_after_its_slot_starts_at_the_admission_slot(
    make_node: Callable[..., Node],
) -> None:
    """`systemctl restart` (an upgrade) once S, the node's window slot after last + W, has
    passed: a deliberate stop, then the node's next admission slot (at most J later), not S."""
    node = make_node(window=4, admission=2)
    node.wait(node.running, "the agent to run")
    policy = node.policy()
    (first,) = node.runs()
    s = next_grid_slot(first.started_at + policy.window, policy.window, policy.offset)
    node.wait(lambda: time.time() > s, "the window slot to pass")
    asked = time.time()
    node.sd.systemctl("restart", node.unit, timeout=TIMEOUT)
    first, second = node.runs()
    assert (first.stopped_on_purpose, second.via) == (True, "gate")
    waited = check_start(policy, node, (first, second), 1)
    assert waited.grid == "admission"
    assert waited.reason.startswith("start after a deliberate stop"), waited
    assert waited.due >= asked


def test_override_then_restart_restarts_a_healthy_agent_at_once(
    make_node: Callable[..., Node],
) -> None:
    """The README's way to restart on purpose within a window: `agent-supervisor override` in
    the node's shell, then `systemctl restart`: the start goes through at once; `release`
    ends the override."""
    node = make_node(window=600, admission=2)
    node.wait(node.running, "the agent to run")
    node.operator("override", "--for", "5m", "--reason", "restart on purpose")
    asked = time.time()
    node.sd.systemctl("restart", node.unit, timeout=TIMEOUT)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the restarted agent")
    node.operator("release")
    first, second = node.runs()
    assert (first.stopped_on_purpose, second.via) == (True, "override")
    assert asked <= second.started_at <= asked + 10
    status = node.status()
    assert (status["running"], status["override"], status["backoff_level"]) == (True, None, 0)


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
    assert node.level() == 3
    slot = due(policy, runs, 3)
    before = node.state_bytes()
    node.sd.systemctl("daemon-reload")
    assert node.waiting_gate() == gate
    node.sd.systemctl("restart", "--no-block", node.unit)
    node.wait(lambda: node.waiting_gate() not in ("", gate), "a new gate to wait")
    assert time.time() < slot, "the slot came before the restart: the test proves nothing"
    assert node.state_bytes() == before
    node.wait(lambda: len(node.runs()) == 4, "the next start")
    runs = node.runs()
    assert check_start(policy, node, runs, 3).grid == "window"
    assert slot <= runs[3].started_at <= slot + LATE
    node.wait(lambda: len(node.docker_starts()) == 2, "the container's second start")
    assert node.docker_starts()[1] >= slot


@pytest.mark.parametrize("docker_tells", [True, False], ids=["docker-tells", "docker-cannot-tell"])
def test_power_loss_then_failed_gates_and_a_restart_mid_wait_start_the_agent_at_its_slot(
    make_node: Callable[..., Node], docker_tells: bool
) -> None:
    """Three failed runs, then the power goes while the fourth runs (level 4): the gate fails
    with 78 (no cluster size) and 74 (state directory), and a `systemctl restart` ends its wait
    (75); each time ExecStopPost's record-exit, with an empty $EXIT_STATUS, records nothing, so
    the run from before the power loss is never closed as a stable run, whether Docker tells its
    end (docker.container, as the README installs) or not, and the agent starts exactly at its
    level-4 slot, never before."""
    w, stable_after = 8.0, 5.0

    def power_loss(node: Node) -> None:
        # The fourth run for real: the gate approved it, compose started it, and the power went
        # (SIGKILL: Docker keeps its State, exit 137). Its end was never reported.
        env = clean_env()
        subprocess.run(["docker-compose", "up", "-d", "--no-deps", AGENT], cwd=node.compose,
                       env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
        node.wait(node.running, "the fourth run")
        node.client.containers.get(node.container).kill()
        attrs = node.client.containers.get(node.container).attrs["State"]
        started = parse_docker_time(attrs["StartedAt"])
        assert started is not None
        failed = tuple(
            Run(f"crash-{i}", started - 30 + 8 * i, ended_at=started - 29 + 8 * i, exit_code=1,
                end_source="record-exit")
            for i in range(3)
        )  # fmt: skip
        history = (*failed, Run("before-the-power-loss", started - 0.5))
        with StateStore(node.state_dir).transaction(AGENT) as tx:
            tx.write(AgentState(AGENT, runs=history), time.time())
        # The node boots with no cluster size in config.toml: the gate exits 78.
        node.configure(cluster_size=None)

    settings: dict[str, Any] = {"stable_after": f"{stable_after:g}s"}
    if not docker_tells:
        settings["docker"] = None  # no docker.container: nothing but record-exit ends a run
    node = make_node(window=w, settings=settings, prepare=power_loss)
    before = node.state_bytes()
    # 78: the configuration. ExecStopPost runs, and records nothing.
    said = node.wait(lambda: node.after_failed_pre(78), "a 78, then ExecStopPost")
    assert recorded_nothing(said), said
    assert node.state_bytes() == before
    # 74: the state directory is writable by others; the cluster size is back.
    os.chmod(node.state_dir, 0o770)
    node.configure(cluster_size=readme_config("1")["cluster_size"])
    said = node.wait(lambda: node.after_failed_pre(74, after=said[0]), "a 74, then ExecStopPost")
    assert recorded_nothing(said), said
    assert node.state_bytes() == before
    runs = node.runs()
    assert runs[3].ended_at is None
    # The state directory is fixed: the gate waits for the level-4 slot, the run from before
    # the power loss a failed one: ended by SIGKILL as Docker tells, or with an end never
    # reported.
    os.chmod(node.state_dir, 0o700)
    gate = node.wait(node.waiting_gate, "the gate to wait for the level-4 slot")
    policy = node.policy()
    runs = node.runs()
    end = (137, "docker") if docker_tells else (None, None)
    assert (runs[3].exit_code, runs[3].end_source) == end
    assert node.level() == 4
    slot = due(policy, runs, 4)
    status = node.status()
    assert (status["backoff_level"], status["grid"]) == (4, "window")
    assert math.isclose(iso_time(status["next_allowed_at"]), slot, abs_tol=2e-6)
    # 75: a restart while the gate waits, a while after the old run would have been stable.
    node.wait(lambda: time.time() > runs[3].started_at + stable_after, "stable_after to pass")
    mark = len(node.messages())
    node.sd.systemctl("restart", "--no-block", node.unit)
    node.wait(lambda: node.waiting_gate() not in ("", gate), "a new gate to wait")
    said = node.wait(lambda: node.after_failed_pre(75, after=mark), "ExecStopPost after the 75")
    assert recorded_nothing(said), said
    assert time.time() < slot, "the slot came before the restart: the test proves nothing"
    assert node.runs() == runs
    assert node.level() == 4
    node.wait(lambda: len(node.runs()) == 5, "the fifth start")
    runs = node.runs()
    waited = check_start(policy, node, runs, 4)
    assert (waited.grid, waited.level) == ("window", 4)
    assert slot <= runs[4].started_at <= slot + LATE
    node.wait(lambda: len(node.docker_starts()) == 2, "the container's start after the loss")
    assert node.docker_starts()[1] >= slot


def test_a_late_record_exit_for_an_old_run_does_not_close_the_new_run(
    make_node: Callable[..., Node],
) -> None:
    """A late `record-exit --code 0` for the run before, a second report for it, and one for a
    run that never was change nothing: the running agent's run stays open, and its real crash
    (SIGKILL, 137) is recorded for it by ExecStopPost, so the level is 2, not 0."""
    node = make_node(run_seconds=1, exit_code=3)
    node.wait(lambda: (runs := node.runs()) and runs[0].ended_at, "the first run to end")
    node.agent_behaves(None, None)
    node.wait(lambda: len(node.runs()) == 2 and node.running(), "the second run")
    first, second = node.runs()
    before = node.state_bytes()
    late = node.operator("record-exit", "--code", "0", "--run-id", first.id)
    again = node.operator("record-exit", "--code=3", f"--run-id={first.id}")
    never = node.operator("record-exit", "--code", "0", "--run-id", "20200101T000000Z-000000")
    assert late == again == f"run {first.id} has ended already; nothing recorded\n"
    assert "not in the history; nothing recorded" in never
    assert node.state_bytes() == before
    node.client.containers.get(node.container).kill()
    node.wait(lambda: node.runs()[1].ended_at, "the second run's end")
    first, second = node.runs()[:2]
    assert (first.exit_code, second.exit_code, second.end_source) == (3, 137, "record-exit")
    assert node.ended_by_exec_stop_post(second.id)["exit_code"] == 137
    assert node.level() == 2
    assert node.status()["backoff_level"] == 2


def test_a_healthy_agent_is_running_at_level_0_in_the_shell_and_the_metric(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A healthy agent, stable_after past: `status --json` in the node's shell (the README's
    config.toml, docker.container in it) says running at backoff level 0, and so does the
    backoff_level metric."""
    metrics = tmp_path / "metrics.prom"
    node = make_node(settings={"stable_after": "3s", "metrics_file": str(metrics)})
    node.wait(node.running, "the agent to run")
    (run,) = node.runs()
    node.wait(lambda: time.time() > run.started_at + 3, "stable_after to pass")
    status = node.status()
    assert (status["running"], status["docker"], status["backoff_level"]) == (True, "running", 0)
    assert (status["allowed"], status["reason"]) == (True, "already running")
    assert [(r["id"], r["ended_at"]) for r in status["runs"]] == [(run.id, None)]
    text = metrics.read_text()
    assert re.search(r'^agent_supervisor_backoff_level\{agent="cilium-agent"\} 0(\.0)?$', text,
                     re.M), text  # fmt: skip
    assert re.search(r'^agent_supervisor_agent_running\{agent="cilium-agent"\} 1(\.0)?$', text,
                     re.M), text  # fmt: skip


def test_status_in_a_shell_after_the_readme_install_says_what_the_units_gate_says(
    make_node: Callable[..., Node],
) -> None:
    """Installed as the README says (cluster size, node name and container in config.toml, no
    setting in the unit): `status` in a shell names the node, level, grid and next start that
    the unit's waiting gate announced."""
    node = make_node(window=60, history=crash_history(time.time(), 2))
    pid = node.wait(node.waiting_gate, "the gate to wait for the level-2 slot")
    env = node.sd.environment(node.unit)
    assert not [k for k in env if k.startswith("AGENT_SUPERVISOR_")], env
    announced = next(e.doc for e in node.logged() if e.pid == pid and e.doc.get("waiting"))
    status = node.status()
    keys = ("agent", "node", "window_seconds", "backoff_level", "next_allowed_at", "grid")
    assert {k: status[k] for k in keys} == {k: announced[k] for k in keys}
    readme = readme_config("1")
    assert (status["node"], status["cluster_size"]) == (readme["node_name"], readme["cluster_size"])
    assert (status["allowed"], status["backoff_level"], status["grid"]) == (False, 2, "window")


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
    assert any(e.doc.get("event") == "daemon.stopped" for e in node.logged())


# --- the harness itself --------------------------------------------------------------------------


def test_the_harness_leaves_the_host_alone(tmp_path: Path) -> None:
    """Boot, write /etc/agent-supervisor inside, power off: the host's /tmp, /etc, units, host
    name, global sysctls and mounts are as they were, and the test's cgroup is gone."""
    try:
        systemdutil.check_requirements()
    except systemdutil.Unavailable as exc:
        skip_or_fail(str(exc), REQUIRE_ROOT_TESTS)
    canary = Path("/tmp") / f"{dockerutil.unique('canary')}"
    canary.write_text("still here\n")
    sysctls = ("kernel/core_pattern", "fs/file-max", "fs/nr_open", "kernel/hostname")
    before = {k: Path("/proc/sys", k).read_text() for k in sysctls}
    etc_units = sorted(os.listdir("/etc/systemd/system"))
    etc = sorted(os.listdir("/etc"))
    sd = systemdutil.NamespacedSystemd(tmp_path, [])
    try:
        sd.boot()
        # Inside: a /tmp of its own, systemd as PID 1 in a container, no unit of the host's,
        # an /etc whose writes stay inside.
        inside = sd.run(
            ["sh", "-ec", f"! test -e {canary}; cat /proc/1/comm; ls -A /etc/systemd/system;"
             " mkdir -p /etc/agent-supervisor; echo 'cluster_size = 1' >"
             " /etc/agent-supervisor/config.toml"]
        )  # fmt: skip
        assert inside.stdout.split() == ["systemd"]
        virt = sd.run(["systemd-detect-virt", "--container"], check=False).stdout.strip()
        assert virt == "container-other"
    finally:
        sd.close()
    try:
        assert canary.read_text() == "still here\n"
        assert {k: Path("/proc/sys", k).read_text() for k in sysctls} == before
        assert sorted(os.listdir("/etc/systemd/system")) == etc_units
        assert sorted(os.listdir("/etc")) == etc
        written = sd.files / "etc" / "upper" / "agent-supervisor" / "config.toml"
        assert written.read_text() == "cluster_size = 1\n"
        assert not sd.cgroup.exists()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert not [name for name in MOUNT_NAMES if f" {name} " in mounts]
    finally:
        canary.unlink()
