"""A whole debug session on the real engine, with docker-compose 1.29 and Compose v2: mode 3 (the
shipped compose file, its gate and supervisor services) and mode 2 (the agent made by compose,
supervised by `agent-supervisor run --container` on the host). The operator's commands are the
README's lines ("Debugging the agent on a node"), as written, with the node's config.toml.

One session per mode and compose version: `debug start` (the agent stopped on purpose, the level
unchanged, the debug container running from the agent's image with its mounts, network,
privileges, environment, user and working directory and `sleep 10d`, `docker exec` into it
working, the daemon not restarting the agent, no run of the debug container in the history),
`status` during it, `debug start` again, `debug end` (debug container gone, hold released, agent
running, its start recorded as forced and audited, level unchanged), `debug end` again.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import clean_env, run_cli
from test_compose import (  # noqa: F401 - the fixture
    AGENT,
    CONFIG_TOML,
    Project,
    W,
    implementations,
    project,
    require_compose,
)
from test_compose_lifecycle import supervisor_running, wait_running
from test_debug import readme_workflow
from test_docker_facts import event_names, log_events, logs_since

from supervisor.containers.debug import DEBUG_LABEL, STOP_TEXT, debug_name
from supervisor.core.state import Run
from supervisor.storage.store import StateStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: What the daemon records for the same stop when it sees the kill and die first.
DAEMON_STOP = "docker stop/kill (SIGTERM)"
#: What the agent's compose service adds to the layout, so that "the same" shows: the
#: capability delve needs, an environment variable, a working directory.
AGENT_EXTRAS = (
    "    cap_add: [SYS_PTRACE]\n"
    "    working_dir: /tmp\n"
    "    environment: [DEBUG_MARKER=from-compose]\n"
)


@dataclass
class Node:
    """What the session needs of a node, whatever the mode."""

    client: Any
    container: str
    state_dir: Path
    config: Path
    config_map: Path
    #: The ids of the daemon's log events since a time.
    daemon_said: Callable[[float], list[str]]

    def host(self, *args: str) -> Any:
        """The host's agent-supervisor, as an operator runs it: the one config.toml."""
        return run_cli(*args, "--config", str(self.config), "--state-dir", str(self.state_dir))

    def readme(self, line: str) -> Any:
        """One of the README's `agent-supervisor ...` lines, as written."""
        argv = shlex.split(line, comments=True)
        assert argv[0] == "agent-supervisor", line
        return self.host(*argv[1:])

    def runs(self) -> tuple[Run, ...]:
        return StateStore(self.state_dir).read(AGENT).state.runs

    def status(self) -> dict[str, Any]:
        r = self.host("status", "--json")
        assert r.code == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def agent(self) -> Any:
        return self.client.containers.get(self.container)

    def running(self) -> bool:
        return bool(self.agent().attrs["State"]["Running"])


def same_container(agent: dict[str, Any], debug: dict[str, Any]) -> None:
    """The debug container is the agent's: image, mounts, network, privileges, capabilities,
    pid/ipc modes, environment, user, working directory; `sleep 10d` instead of the agent;
    restart "no"; the debug label and none of compose's."""

    def mounts(attrs: dict[str, Any]) -> list[tuple[Any, ...]]:
        keys = ("Type", "Name", "Source", "Destination", "RW")
        return sorted(tuple(m.get(k) for k in keys) for m in attrs["Mounts"])

    assert debug["State"]["Running"] is True
    assert debug["Image"] == agent["Image"]
    assert mounts(debug) == mounts(agent) and mounts(agent)
    host = ("NetworkMode", "Privileged", "CapAdd", "CapDrop", "PidMode", "IpcMode", "SecurityOpt")
    assert {k: debug["HostConfig"][k] for k in host} == {k: agent["HostConfig"][k] for k in host}
    assert {c.removeprefix("CAP_") for c in agent["HostConfig"]["CapAdd"]} == {"SYS_PTRACE"}
    config = ("Env", "User", "WorkingDir")
    assert {k: debug["Config"][k] for k in config} == {k: agent["Config"][k] for k in config}
    assert "DEBUG_MARKER=from-compose" in agent["Config"]["Env"]
    assert agent["Config"]["WorkingDir"] == "/tmp"
    assert debug["Config"]["Entrypoint"] == ["sleep", "10d"]
    assert debug["Config"]["Cmd"] is None
    assert debug["HostConfig"]["RestartPolicy"]["Name"] == "no"
    labels = debug["Config"]["Labels"]
    assert labels[DEBUG_LABEL] == AGENT
    assert [k for k in labels if k.startswith("com.docker.compose.")] == []
    assert any(k.startswith("com.docker.compose.") for k in agent["Config"]["Labels"])


def whole_session(node: Node) -> None:
    """The README's workflow on ``node``, whose agent runs (see the module)."""
    start_line, exec_line, end_line = readme_workflow()
    client, name = node.client, node.container
    debug = debug_name(name)
    (node.config_map / "marker").write_text("the agent's config directory\n")
    before = node.runs()
    agent_id = node.agent().id
    assert before and before[-1].ended_at is None
    assert node.status()["backoff_level"] == 0

    # debug start
    t0 = time.time()
    started = node.readme(start_line)
    assert started.code == 0, started.stderr
    printed = shlex.join(shlex.split(exec_line, comments=True)).replace(debug_name(AGENT), debug)
    assert f"\n  {printed}\n" in started.stdout, started.stdout
    assert "dlv exec" in started.stdout
    assert not node.running()
    runs = node.runs()
    assert [r.id for r in runs] == [r.id for r in before]
    stopped = runs[-1]
    assert (stopped.exit_code, stopped.end_source) == (143, "docker"), stopped
    assert stopped.stop in (STOP_TEXT, DAEMON_STOP) and stopped.stopped_on_purpose, stopped
    box = client.containers.get(debug)
    same_container(node.agent().attrs, box.attrs)
    out = box.exec_run(["sh", "-c", "cat /tmp/cilium/config-map/marker; echo $DEBUG_MARKER; pwd"])
    assert out.exit_code == 0, out.output
    assert out.output.decode().split("\n")[:3] == [
        "the agent's config directory", "from-compose", "/tmp"
    ]  # fmt: skip
    doc = node.status()
    assert (doc["backoff_level"], doc["allowed"], doc["running"]) == (0, False, False)
    assert doc["hold"] is not None and debug in doc["hold"]["reason"]
    assert (doc["debug"]["container"], doc["debug"]["entrypoint"]) == (debug, "sleep 10d")
    assert [e["command"] for e in doc["audit"]][-1:] == ["debug start"]

    # Nothing restarts the agent: more than a window passes, the daemon saw a deliberate stop.
    time.sleep(max(0.0, t0 + W + 3 - time.time()))
    assert not node.running()
    assert dockerutil.starts(client, t0, time.time(), name) == []
    assert node.runs() == runs
    assert "daemon.stopped_by_operator" in node.daemon_said(t0)
    assert "daemon.container_started" not in node.daemon_said(t0)

    # debug start again: the same session, the same container, nothing recorded.
    again = node.readme(start_line)
    assert again.code == 0, again.stderr
    assert f"debug session of {AGENT} in progress since" in again.stdout
    assert "was not running" in again.stdout
    assert client.containers.get(debug).id == box.id
    assert node.runs() == runs
    human = node.host("status")
    assert human.code == 0, human.stderr
    lines = human.stdout.splitlines()
    (i,) = [i for i, ln in enumerate(lines) if ln.startswith("debug        by ")]
    assert f"shell: docker exec -it {debug} sh" in lines[i + 1], human.stdout
    assert "end: agent-supervisor debug end" in lines[i + 1]

    # debug end
    t1 = time.time()
    ended = node.readme(end_line)
    assert ended.code == 0, ended.stderr
    assert f"removed debug container {debug}" in ended.stdout
    assert "a forced start" in ended.stdout, ended.stdout
    assert not client.containers.list(all=True, filters={"name": f"^{debug}$"})
    bound = dockerutil.wait_for(
        lambda: node.running() and (r := node.runs())[-1].container == agent_id and r,
        60,
        "the agent to run, its forced run bound to it",
        interval=0.2,
    )
    *_, last = bound
    assert len(bound) == len(before) + 1
    assert (last.via, last.user) == ("force", "root")
    assert last.reason == "debug session ended: INC-42: found it"
    assert {r.container for r in bound} == {agent_id}, "a run of the debug container"
    starts = dockerutil.starts(client, t0, time.time(), name)
    assert len(starts) == 1 and t1 <= starts[0], starts
    assert last.started_at <= starts[0]
    doc = node.status()
    assert (doc["backoff_level"], doc["running"], doc["hold"], doc["debug"]) == (
        0,
        True,
        None,
        None,
    )
    audit = [(e["command"], e.get("reason")) for e in doc["audit"]][-3:]
    assert audit == [
        ("debug start", "INC-42: identities leak"),
        ("gate --force", "debug session ended: INC-42: found it"),
        ("debug end", "INC-42: found it"),
    ]
    assert "daemon.container_started" not in node.daemon_said(t0)

    # debug end again: nothing to end, nothing changed.
    twice = node.readme(end_line)
    assert twice.code == 0, twice.stderr
    assert twice.stdout == f"no debug session of {AGENT} in progress: nothing to end\n"
    assert node.runs() == bound
    assert node.running()


# --- mode 3: the shipped compose file --------------------------------------------------------


@pytest.fixture
def layout(project: Project, docker_client: Any) -> Iterator[Project]:  # noqa: F811
    """The shipped layout with the agent's extras, its debug container removed at the end."""
    text = project.override.read_text()
    assert "  cilium-agent:\n" in text
    project.override.write_text(
        text.replace("  cilium-agent:\n", "  cilium-agent:\n" + AGENT_EXTRAS)
    )
    try:
        yield project
    finally:
        dockerutil.remove_containers(docker_client, debug_name(project.container))


def test_a_debug_session_under_compose_and_its_supervisor(
    layout: Project, docker_client: Any
) -> None:
    """Mode 3 (gate and supervisor services): the README's debug workflow, whole (see the
    module)."""
    up = layout.run("up", "-d")
    assert up.returncode == 0, up.stdout + up.stderr
    wait_running(layout, docker_client)
    sup = supervisor_running(layout, docker_client)

    def daemon_said(since: float) -> list[str]:
        return event_names(logs_since(sup, since))

    node = Node(
        docker_client,
        layout.container,
        layout.state_dir,
        layout.config,
        layout.root / "config-map",
        daemon_said,
    )
    whole_session(node)


# --- mode 2: the daemon on the host ----------------------------------------------------------


def logged_since(log: Path, since: float) -> list[str]:
    """The ids of the events a process logged (JSON lines) at or after ``since``."""
    out = []
    for e in log_events(log.read_text(errors="replace")):
        stamp = datetime.fromisoformat(str(e.get("timestamp"))).timestamp()
        if stamp >= since:
            out.append(str(e.get("event", "")))
    return out


AGENT_ONLY = """\
services:
  cilium-agent:
    image: {image}
    container_name: {container}
    entrypoint: cilium-agent --config-dir=/tmp/cilium/config-map
    network_mode: "none"
    restart: "no"
{extras}    volumes:
      - {config_map}:/tmp/cilium/config-map:ro
      - {data}:/var/lib/cilium
"""


@pytest.mark.parametrize("cmd", implementations())
def test_a_debug_session_under_the_daemon(
    cmd: list[str], docker_client: Any, tmp_path: Path
) -> None:
    """Mode 2 (`run --container` on the host, the agent made by compose): the README's debug
    workflow, whole (see the module)."""
    require_compose(cmd)
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("debugd")
    container = f"{name}-agent"
    config_map, data, state = tmp_path / "config-map", tmp_path / "data", tmp_path / "state"
    for d in (config_map, data):
        d.mkdir()
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        AGENT_ONLY.format(
            image=image, container=container, extras=AGENT_EXTRAS, config_map=config_map, data=data
        )
    )
    config = tmp_path / "config.toml"
    # The layout's config.toml, and a short admission grid: the daemon's first start is not
    # this test's subject.
    quick = CONFIG_TOML.replace('min = "1s"\n', 'min = "1s"\nadmission = "300ms"\n')
    assert quick != CONFIG_TOML
    config.write_text(quick.format(container=container))
    log = tmp_path / "daemon.log"
    argv = dockerutil.cli_argv(
        "run", "--container", container, "--config", str(config), "--state-dir", str(state)
    )
    try:
        made = subprocess.run(
            [*cmd, "-p", name, "-f", str(compose), "up", "--no-start"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
            check=False,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        with dockerutil.process(argv, clean_env(), log) as daemon:
            node = Node(
                docker_client,
                container,
                state,
                config,
                config_map,
                lambda since: logged_since(log, since),
            )
            dockerutil.wait_for(
                lambda: node.running() and (r := node.runs()) and r[-1].container is not None,
                60,
                "the daemon to start the agent",
                interval=0.2,
            )
            whole_session(node)
            assert daemon.poll() is None
            names = event_names(log.read_text(errors="replace"))
            assert names.count("daemon.container_started") == 1
    finally:
        dockerutil.remove_containers(docker_client, debug_name(container), container)
        dockerutil.remove_project(docker_client, name)
