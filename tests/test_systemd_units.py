"""The shipped systemd units: `systemd-analyze verify`, the contract's directives, and the
exact commands the unit runs, run as processes (systemd is installed but not PID 1 here, so the
unit's Restart=always loop is played by the test, command line by command line, with its
RuntimeDirectory= and EnvironmentFile= as systemd handles them: see test_systemd_real.py for
systemd itself)."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import REQUIRE_DOCKER, clean_env, skip_or_fail

from supervisor.storage.store import StateStore

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
AGENT_UNIT = UNITS / "cilium-agent.service"
DAEMON_UNIT = UNITS / "agent-supervisor.service"
INSTALLED_AT = "/usr/local/bin/agent-supervisor"
AGENT = "cilium-agent"
W = 3.0
#: The node's settings for these tests (on a node they are in /etc/agent-supervisor/config.toml):
#: a 3 s window whatever the cluster size (base 3s, nothing per node).
TEST_SETTINGS = {
    "AGENT_SUPERVISOR_CLUSTER_SIZE": "1000",
    "AGENT_SUPERVISOR_NODE_NAME": "node-1",
    "AGENT_SUPERVISOR_WINDOW_BASE": "3s",
    "AGENT_SUPERVISOR_WINDOW_PER_NODE": "0s",
    "AGENT_SUPERVISOR_WINDOW_MIN": "1s",
}
#: The unit's run id file, relative to systemd's %t (/run for the system manager).
RUN_ENV = "agent-supervisor/cilium-agent/run.env"


def parse_unit(*paths: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> values (in order; keys may repeat), drop-ins applied after."""
    out: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                out.setdefault(section, {})
                continue
            key, _, value = line.partition("=")
            out.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return out


def unit_environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """The unit's Environment= assignments (later ones win, as in systemd)."""
    env: dict[str, str] = {}
    for item in unit["Service"].get("Environment", []):
        for word in shlex.split(item):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def command(line: str, runtime: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """An Exec line as the process systemd starts: ``%t`` is ``runtime``, ``${VAR}`` the
    value in ``env`` (the unit's environment and EnvironmentFile=, plus $EXIT_STATUS for
    ExecStopPost=) or empty when unset, as systemd expands them inside their word;
    agent-supervisor runs from this checkout."""
    words = shlex.split(line.lstrip("-+!@:").replace("%t", str(runtime)))
    values = env or {}
    words = [re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), ""), w) for w in words]
    if words[0] == INSTALLED_AT:
        return [sys.executable, "-m", "supervisor", *words[1:]]
    return words


def environment_file(runtime: Path) -> dict[str, str]:
    """The unit's ``EnvironmentFile=-%t/...``: its assignments, or none if it is missing."""
    path = runtime / RUN_ENV
    if not path.exists():
        return {}
    pairs = (ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)
    return {k.strip(): v.strip() for k, v in pairs}


def runtime_directory(runtime: Path) -> None:
    """What systemd does for RuntimeDirectory= before a start: the directory, afresh."""
    unit = parse_unit(AGENT_UNIT)
    (directory,) = unit["Service"]["RuntimeDirectory"]
    path = runtime / directory
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def need(tool: str) -> str:
    """The path of a tool the test needs; skip (or fail where CI requires it) without."""
    path = shutil.which(tool)
    if path is None:
        skip_or_fail(f"{tool} is not installed", REQUIRE_DOCKER)
    assert path is not None
    return path


# --- systemd-analyze verify ----------------------------------------------------------------------


def _verify(tmp_path: Path, edit: Any = None) -> subprocess.CompletedProcess[str]:
    """Verify copies of the units whose agent-supervisor path points at an executable stub.

    Only that path is changed: /usr/local/bin/agent-supervisor is where `pip install` puts
    the script on a node, not where this checkout runs from, and verify checks that every
    Exec path is executable. docker-compose and docker.service are the machine's own.
    """
    need("systemd-analyze")
    need("docker-compose")
    stub = tmp_path / "bin" / "agent-supervisor"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    shutil.copytree(UNITS, units)
    for unit in units.rglob("*.service"):
        text = unit.read_text().replace(INSTALLED_AT, str(stub))
        unit.write_text(edit(text) if edit and unit.name == AGENT_UNIT.name else text)
    return subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(units / AGENT_UNIT.name),
            str(units / DAEMON_UNIT.name),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Both units (with the drop-in beside the agent's) verify without one warning."""
    proc = _verify(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.stdout.strip() == ""


def test_verify_would_catch_a_bad_directive(tmp_path: Path) -> None:
    """The verify test can fail: a misspelt directive is reported."""
    proc = _verify(tmp_path, edit=lambda t: t.replace("Restart=always", "Restrat=always"))
    assert "Restrat" in proc.stderr


# --- what the units say --------------------------------------------------------------------------


def test_agent_unit_gates_every_start() -> None:
    """cilium-agent.service: gate --wait before (writing the run id for EnvironmentFile=),
    compose in the foreground, record-exit of that run after, systemd restarts always and never
    gives up, and never times the gate's wait out."""
    unit = parse_unit(AGENT_UNIT)
    svc, u = unit["Service"], unit["Unit"]
    env_file = f"%t/{RUN_ENV}"
    assert svc["ExecStartPre"][0] == (
        f"{INSTALLED_AT} gate --wait --agent cilium-agent --env-file={env_file}"
    )
    assert svc["RuntimeDirectory"] == [str(Path(RUN_ENV).parent)]
    assert svc["EnvironmentFile"] == [f"-{env_file}"]
    assert len(svc["ExecStart"]) == 1
    start = shlex.split(svc["ExecStart"][0])
    assert start[:3] == ["/usr/bin/docker-compose", "up", "--no-deps"]
    assert start[-3:] == ["--exit-code-from", "cilium-agent", "cilium-agent"]
    assert "-d" not in start and "--detach" not in start
    assert svc["ExecStopPost"] == [
        f"{INSTALLED_AT} record-exit --agent cilium-agent --code=${{EXIT_STATUS}}"
        " --run-id=${AGENT_SUPERVISOR_RUN_ID}"
    ]
    assert svc["Restart"] == ["always"]
    assert svc["TimeoutStartSec"] == ["infinity"]
    assert u["StartLimitIntervalSec"] == ["0"]
    assert "docker.service" in u["After"][0].split()
    assert u["Requires"] == ["docker.service"]


def test_daemon_unit_runs_the_supervisor() -> None:
    """agent-supervisor.service runs `run --container`, restarts always, waits out Docker."""
    unit = parse_unit(DAEMON_UNIT)
    svc, u = unit["Service"], unit["Unit"]
    assert shlex.split(svc["ExecStart"][0]) == [
        INSTALLED_AT, "run", "--agent", "cilium-agent", "--container", "cilium-agent",
    ]  # fmt: skip
    assert svc["Restart"] == ["always"]
    assert svc["KillSignal"] == ["SIGTERM"]
    assert u["StartLimitIntervalSec"] == ["0"]
    assert "docker.service" in u["After"][0].split()
    assert "docker.service" in u["Wants"][0].split()
    assert "Requires" not in u


def test_units_hold_no_setting_of_the_node() -> None:
    """No unit (and no shipped drop-in) sets an AGENT_SUPERVISOR_* variable: the node's settings
    live in /etc/agent-supervisor/config.toml alone, which the operator's shell reads too."""
    assert not list(UNITS.glob("*.d"))
    for path in (AGENT_UNIT, DAEMON_UNIT):
        assert unit_environment(parse_unit(path)) == {}, path
        assert "AGENT_SUPERVISOR_" not in path.read_text().replace("AGENT_SUPERVISOR_RUN_ID", "")


# --- the unit's commands as processes ------------------------------------------------------------


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of the unit's commands: the unit's own (none of the node's settings)
    and, for these tests, the node's settings as variables instead of a config.toml."""
    env = clean_env(**unit_environment(parse_unit(AGENT_UNIT)))
    env.update(TEST_SETTINGS, AGENT_SUPERVISOR_STATE_DIR=str(state_dir), **extra)
    return env


def _runs(state_dir: Path) -> tuple[Any, ...]:
    return StateStore(state_dir).read(AGENT).state.runs


def test_unit_commands_gate_and_record_as_processes(tmp_path: Path) -> None:
    """The unit's ExecStartPre gate and ExecStopPost record-exit, as systemd runs them: each
    start waits for its slot and writes its run id, $EXIT_STATUS numbers and signal names close
    the run the id names, SIGTERM ends a wait without a start and leaves no id, and an empty
    status, a second report and a late one for an old run record nothing."""
    unit = parse_unit(AGENT_UNIT)
    gate_line = unit["Service"]["ExecStartPre"][0]
    record_line = unit["Service"]["ExecStopPost"][0]
    state, runtime = tmp_path / "state", tmp_path / "run"
    env = _env(state)

    def run(line: str, status: str | None = None) -> subprocess.CompletedProcess[str]:
        values = {**env, **environment_file(runtime)}
        if status is not None:
            values["EXIT_STATUS"] = status
        return subprocess.run(command(line, runtime, values), capture_output=True, text=True,
                              env=env, timeout=60, check=False)  # fmt: skip

    runtime_directory(runtime)
    first = run(gate_line)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("allowed: first start")
    (one,) = _runs(state)
    assert environment_file(runtime) == {"AGENT_SUPERVISOR_RUN_ID": one.id}
    assert run(record_line, "1").returncode == 0
    assert _runs(state)[-1].exit_code == 1

    runtime_directory(runtime)
    second = run(gate_line)
    assert second.returncode == 0, second.stderr
    one, two = _runs(state)
    assert two.started_at - one.started_at >= W
    assert environment_file(runtime) == {"AGENT_SUPERVISOR_RUN_ID": two.id}
    assert run(record_line, "TERM").returncode == 0
    assert _runs(state)[-1].exit_code == 128 + signal.SIGTERM

    runtime_directory(runtime)
    (runtime / RUN_ENV).write_text(f"AGENT_SUPERVISOR_RUN_ID={two.id}\n")  # a stale id
    waiting = subprocess.Popen(command(gate_line, runtime, env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    dockerutil.wait_for(
        lambda: environment_file(runtime) == {} and waiting.poll() is None,
        30,
        "the waiting gate to empty the run id file",
    )
    waiting.send_signal(signal.SIGTERM)
    _out, _err = waiting.communicate(timeout=10)
    assert waiting.returncode == 75
    assert len(_runs(state)) == 2

    before = (state / f"{AGENT}.json").read_bytes()
    never = run(record_line, "")
    assert never.returncode == 0
    assert never.stdout.startswith("no exit status"), never.stdout
    assert never.stdout.endswith("nothing recorded\n")
    late = subprocess.run(
        command(record_line, runtime, {"EXIT_STATUS": "0", "AGENT_SUPERVISOR_RUN_ID": one.id}),
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert late.returncode == 0
    assert late.stdout == f"run {one.id} has ended already; nothing recorded\n"
    assert (state / f"{AGENT}.json").read_bytes() == before


# --- the Restart=always loop, played with real docker-compose ------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_systemd_restart_loop_starts_a_crashing_agent_at_most_once_per_window(
    docker_client: Any, tmp_path: Path
) -> None:
    """cilium-agent.service's command lines, looped as Restart=always does, against the shipped
    compose file and a stand-in that exits 1 after 1 s: one start per window at most, each
    exit recorded with compose's (the agent's) exit status."""
    need("docker-compose")
    standin = dockerutil.standin_image(docker_client)
    unit = parse_unit(AGENT_UNIT)
    svc = unit["Service"]
    runtime = tmp_path / "run"
    project = tmp_path / dockerutil.unique("sd")
    project.mkdir()
    shutil.copy(REPO / "compose" / "docker-compose.yml", project / "docker-compose.yml")
    container = f"{project.name}-agent"
    dirs = {}
    for d in ("state", "etc", "config-map", "pki", "e1", "e2", "host"):
        dirs[d] = tmp_path / d
        dirs[d].mkdir(mode=0o700)
    (dirs["config-map"] / "standin-run-seconds").write_text("1\n")
    (dirs["config-map"] / "standin-exit-code").write_text("1\n")
    (dirs["host"] / "xtables.lock").touch()
    (project / ".env").write_text(
        f"CILIUM_IMAGE={standin}\nCILIUM_CONTAINER_NAME={container}\n"
        f"CILIUM_CONFIG_DIR={dirs['config-map']}\nCILIUM_PKI_DIR={dirs['pki']}\n"
        f"CILIUM_ETCD_CONFIG_DIR={dirs['e1']}\nCILIUM_ETCD_SECRETS_DIR={dirs['e2']}\n"
    )
    h = dirs["host"]
    mounts = [f"{h}:/sys/fs/bpf", f"{h}:/var/run/cilium", f"{h}:/lib/modules",
              f"{h}/xtables.lock:/run/xtables.lock", f"{h}:/host/opt/cni/bin",
              f"{h}:/host/etc/cni/net.d"]  # fmt: skip
    override = ["services:"]
    for service in ("cilium-init", "cilium-install-cni", "cilium-agent"):
        # This sandbox refuses privileged containers; the stand-in needs no privilege.
        override += [f"  {service}:", "    privileged: false", "    volumes:"]
        override += [f"      - {m}" for m in mounts]
    # Compose reads docker-compose.override.yml beside the file, as it would on a node.
    (project / "docker-compose.override.yml").write_text("\n".join(override) + "\n")
    env = _env(dirs["state"])

    def run(line: str, status: str | None = None) -> int:
        values = {**env, **environment_file(runtime)}
        if status is not None:
            values["EXIT_STATUS"] = status
        # EnvironmentFile= is read before each command: the gate's id reaches compose too.
        proc = subprocess.run(command(line, runtime, values), cwd=project, env=values,
                              capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
        return proc.returncode

    t0 = time.time()
    codes: list[int] = []
    try:
        # At least 14 s and at least 3 activations (a loaded machine is slower, not fewer).
        while (time.time() - t0 < 14 or len(codes) < 3) and time.time() - t0 < 300:
            # One activation of the unit: its RuntimeDirectory= afresh, ExecStartPre= lines in
            # order, ExecStart=, then ExecStopPost= with $EXIT_STATUS and the run id; then
            # RestartSec= and again (Restart=always).
            runtime_directory(runtime)
            pre = [run(line) for line in svc["ExecStartPre"]]
            assert pre == [0] * len(pre)
            code = run(svc["ExecStart"][0])
            codes.append(code)
            assert run(svc["ExecStopPost"][0], str(code)) == 0
            time.sleep(float(svc["RestartSec"][0].removesuffix("s")))
        t_end = time.time()
        starts = dockerutil.starts(docker_client, t0, t_end, container)
    finally:
        subprocess.run(["docker-compose", "down", "-t", "1"], cwd=project, env=env,
                       capture_output=True, check=False, timeout=120)  # fmt: skip
        dockerutil.remove_project(docker_client, project.name)
        dockerutil.remove_containers(docker_client, container)
    runs = _runs(dirs["state"])
    assert codes and set(codes) == {1}
    assert len(starts) == len(codes) == len(runs) >= 3
    assert all(b - a >= W - 0.5 for a, b in itertools.pairwise(starts)), starts
    assert all(r.exit_code == 1 and r.end_source == "record-exit" for r in runs)
    assert all(r.via == "gate" for r in runs)
    for rec, engine in zip(runs, starts, strict=True):
        assert rec.started_at <= engine
