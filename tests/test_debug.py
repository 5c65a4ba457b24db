"""The debug workflow's edges (issue 17): what `debug start` and `debug end` refuse before they
change anything, `debug end` with no session, the debug container's definition, `doctor` on a
forgotten session, and the README's section. The whole sessions, on the real engine and under
systemd, are in test_debug_docker.py and test_debug_systemd.py.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import clean_env, run_cli

from supervisor.containers.compose import load_compose
from supervisor.containers.debug import (
    DEBUG_LABEL,
    STATE_DIR_LABEL,
    create_args,
    debug_name,
    entrypoint_argv,
    find_unit,
    forgotten,
)
from supervisor.containers.doctor import examine
from supervisor.core.state import AgentState, DebugSession
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
AGENT = "cilium-agent"
SECTION = "## Debugging the agent on a node"

#: The inspect document of an agent container as Compose v2 made it (the parts that matter).
AGENT_ATTRS: dict[str, Any] = {
    "Id": "b7e67ad20e4f" + "0" * 52,
    "Name": "/cilium-agent",
    "Image": "sha256:" + "1" * 64,
    "Config": {
        "Image": "quay.io/cilium/cilium:v1.16.5",
        "Entrypoint": ["cilium-agent", "--config-dir=/tmp/cilium/config-map"],
        "Cmd": None,
        "Env": ["FOO=bar", "PATH=/usr/bin:/bin"],
        "User": "0:0",
        "WorkingDir": "/home/cilium",
        "Labels": {
            "com.docker.compose.project": "cilium",
            "com.docker.compose.service": "cilium-agent",
            "io.cilium.version": "1.16.5",
        },
        "Healthcheck": {"Test": ["CMD", "cilium-health"]},
    },
    "HostConfig": {
        "Binds": ["/etc/cilium/config-map:/tmp/cilium/config-map:ro", "/sys/fs/bpf:/sys/fs/bpf"],
        "NetworkMode": "host",
        "Privileged": True,
        "CapAdd": ["CAP_SYS_PTRACE"],
        "PidMode": "host",
        "IpcMode": "private",
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        "AutoRemove": False,
    },
    "Mounts": [
        {"Type": "bind", "Source": "/etc/cilium/config-map", "Destination":
         "/tmp/cilium/config-map", "RW": False},
        {"Type": "bind", "Source": "/sys/fs/bpf", "Destination": "/sys/fs/bpf", "RW": True},
        {"Type": "volume", "Name": "5f3a", "Source": "/var/lib/docker/volumes/5f3a/_data",
         "Destination": "/var/run/cilium", "RW": True},
    ],
}  # fmt: skip


def test_the_debug_container_is_the_agents_with_another_entrypoint_and_no_compose_labels() -> None:
    """The definition: the agent's image by id, its HostConfig (binds, network, privileges,
    capabilities, pid/ipc mode) with restart "no", its anonymous volume mounted again, its
    environment, user and working directory, the given entrypoint, no healthcheck, compose's
    labels dropped and the debug label added."""
    args = create_args(
        AGENT_ATTRS,
        name="debug-cilium-agent",
        entrypoint=["sleep", "10d"],
        labels={DEBUG_LABEL: AGENT},
    )
    host = args["host_config"]
    assert args["image"] == AGENT_ATTRS["Image"]
    assert (args["name"], args["entrypoint"]) == ("debug-cilium-agent", ["sleep", "10d"])
    assert (args["environment"], args["user"], args["working_dir"]) == (
        ["FOO=bar", "PATH=/usr/bin:/bin"], "0:0", "/home/cilium"
    )  # fmt: skip
    assert args["labels"] == {"io.cilium.version": "1.16.5", DEBUG_LABEL: AGENT}
    assert args["healthcheck"] == {"Test": ["NONE"]}
    assert host["Binds"] == AGENT_ATTRS["HostConfig"]["Binds"]
    assert host["Mounts"] == [
        {"Type": "volume", "Source": "5f3a", "Target": "/var/run/cilium", "ReadOnly": False}
    ]
    kept = ("NetworkMode", "Privileged", "CapAdd", "PidMode", "IpcMode")
    assert {k: host[k] for k in kept} == {k: AGENT_ATTRS["HostConfig"][k] for k in kept}
    assert host["RestartPolicy"]["Name"] == "no"
    assert AGENT_ATTRS["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"  # not changed


def test_names_and_entrypoints() -> None:
    """The debug container is `debug-<agent container>` (no name filter of the agent's matches
    it: Docker's event filter matches names by prefix); the entrypoint is shell words, and an
    empty or unparsable one is a usage error."""
    assert debug_name("cilium-agent") == "debug-cilium-agent"
    assert not debug_name("cilium-agent").startswith("cilium-agent")
    assert entrypoint_argv("dlv exec '/usr/bin/cilium-agent' --") == [
        "dlv", "exec", "/usr/bin/cilium-agent", "--"
    ]  # fmt: skip
    for bad in ("", "   ", "sleep 'unclosed"):
        with pytest.raises(Exception, match="--entrypoint") as info:
            entrypoint_argv(bad)
        assert getattr(info.value, "exit_code", None) == 2


def test_the_unit_is_found_only_when_systemd_has_it_enabled_or_active() -> None:
    """`<agent>.service` is the agent's unit when loaded and enabled or active; not without
    systemd, not when not found, not when loaded but disabled and inactive."""
    import subprocess

    def answer(out: str, code: int = 0) -> Any:
        def systemctl(args: Any, timeout: float) -> subprocess.CompletedProcess[str]:
            assert list(args)[:2] == ["show", "cilium-agent.service"]
            return subprocess.CompletedProcess(list(args), code, out, "")

        return systemctl

    def no_systemctl(args: Any, timeout: float) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("systemctl")

    enabled = "LoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\n"
    active = "LoadState=loaded\nActiveState=activating\nUnitFileState=disabled\n"
    idle = "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n"
    missing = "LoadState=not-found\nActiveState=inactive\nUnitFileState=\n"
    assert find_unit(AGENT, answer(enabled)) == "cilium-agent.service"
    assert find_unit(AGENT, answer(active)) == "cilium-agent.service"
    assert find_unit(AGENT, answer(idle)) is None
    assert find_unit(AGENT, answer(missing)) is None
    assert find_unit(AGENT, answer("", 1)) is None
    assert find_unit(AGENT, no_systemctl) is None


# --- the commands, as real processes -------------------------------------------------------------


def _cli(state: Path, *args: str, **kwargs: Any) -> Any:
    return run_cli("debug", *args, "--state-dir", str(state), "--cluster-size", "1", **kwargs)


def test_debug_start_refuses_before_it_changes_anything(tmp_path: Path) -> None:
    """No container known (2), a bad entrypoint (2), a container that does not exist (1): each
    says why, and no session, hold or audit line is recorded."""
    state = tmp_path / "state"
    none = _cli(state, "start")
    assert none.code == 2, none.stderr
    assert "needs the agent's container" in none.stderr
    bad = _cli(state, "start", "--container", "x", "--entrypoint", "  ")
    assert bad.code == 2 and "--entrypoint" in bad.stderr, bad.stderr
    missing = _cli(state, "start", "--container", dockerutil.unique("nothing"))
    assert missing.code == 1, missing.stderr
    assert "no container" in missing.stderr or "Docker did not answer" in missing.stderr
    assert not (state / f"{AGENT}.json").exists()
    assert StateStore(state).audit_tail() == []


def test_an_operator_who_may_not_is_refused_with_77(tmp_path: Path, nobody: int) -> None:
    """`debug start` and `debug end` by a user who is not an operator: 77, nothing recorded."""
    state = tmp_path / "state"
    for args in (("start", "--container", "cilium-agent"), ("end",)):
        r = _cli(state, *args, user=nobody, cwd="/", env=clean_env(HOME="/nonexistent"))
        assert r.code == 77, (args, r.stderr)
        assert "not permitted" in r.stderr
    assert not (state / f"{AGENT}.json").exists()


@pytest.mark.docker
def test_debug_end_without_a_session_says_so_and_exits_0(
    tmp_path: Path, docker_client: Any
) -> None:
    """With no session `debug end` says so and exits 0, again and again, and changes nothing;
    a debug container of this state directory left behind is removed."""
    state = tmp_path / "state"
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("leftover")
    labels = {DEBUG_LABEL: AGENT, STATE_DIR_LABEL: str(state.absolute())}
    docker_client.containers.create(
        image, name=name, entrypoint=["sleep", "60"], network_mode="none", labels=labels
    )
    try:
        first = _cli(state, "end")
        again = _cli(state, "end", "--reason", "just in case")
    finally:
        dockerutil.remove_containers(docker_client, name)
    assert (first.code, again.code) == (0, 0), first.stderr + again.stderr
    assert first.stdout == (
        f"removed debug container {name}\nno debug session of {AGENT} in progress: nothing to end\n"
    )
    assert again.stdout == f"no debug session of {AGENT} in progress: nothing to end\n"
    assert not (state / f"{AGENT}.json").exists()


# --- doctor --------------------------------------------------------------------------------------


@pytest.fixture
def sleeper(docker_client: Any) -> Iterator[Any]:
    """Make sleeping containers of the stand-in image (``make(name, labels)``); all removed."""
    image = dockerutil.standin_image(docker_client)
    made: list[str] = []

    def make(labels: dict[str, str]) -> Any:
        name = dockerutil.unique("debug")
        made.append(name)
        c = docker_client.containers.create(
            image, name=name, entrypoint=["sleep", "600"], network_mode="none", labels=labels
        )
        c.start()
        return c

    try:
        yield make
    finally:
        dockerutil.remove_containers(docker_client, *made)


@pytest.mark.docker
def test_doctor_names_a_forgotten_debug_session_with_its_fix(tmp_path: Path, sleeper: Any) -> None:
    """doctor: a session whose debug container is gone (the agent stays down for nothing), one
    older than a day, and a debug container of this node that no session owns; each with its
    fix. A session of today with its container running is no problem."""
    state = tmp_path / "state"
    (tmp_path / "none.toml").touch()
    cfg = load_config(tmp_path / "none.toml", env={}, state_dir=state)
    now = time.time()
    ours = {STATE_DIR_LABEL: str(state.absolute())}
    running = sleeper({DEBUG_LABEL: "agent-a", **ours})
    orphan = sleeper({DEBUG_LABEL: "agent-c", **ours})
    sleeper({DEBUG_LABEL: "agent-c", STATE_DIR_LABEL: "/elsewhere"})  # another node's
    store = StateStore(state)
    for agent, container in (("agent-a", running.name), ("agent-b", dockerutil.unique("gone"))):
        session = DebugSession(container, "img", "sleep 10d", "alice", "INC-7", now - 60)
        with store.transaction(agent) as tx:
            tx.write(AgentState(agent, debug=session), now)
    found = forgotten(cfg, now)
    assert [(f.agent, f.fix.split(" (")[0].split(", or")[0]) for f in found] == [
        ("agent-b", "agent-supervisor debug end --agent agent-b"),
        ("agent-c", "agent-supervisor debug end --agent agent-c"),
    ]
    assert "is gone: the agent stays stopped and held for nothing" in found[0].problem
    assert f"docker rm -f {orphan.name}" in found[1].fix
    later = forgotten(cfg, now + 2 * 86400)
    assert [f.agent for f in later] == ["agent-a", "agent-b", "agent-c"]
    assert "still going" in later[0].problem
    report = examine(load_compose(REPO / "compose" / "docker-compose.yml", env={}), cfg=cfg)
    debug = [p for p in report.problems if p.check == "debug-session"]
    assert [p.service for p in debug] == ["agent-b", "agent-c"]


def test_doctor_looks_for_no_session_where_no_gate_ever_ran(tmp_path: Path) -> None:
    """No state directory: nothing to find, and Docker is not asked."""

    def connect(_timeout: float) -> Any:
        raise AssertionError("Docker was asked")

    (tmp_path / "none.toml").touch()
    cfg = load_config(tmp_path / "none.toml", env={}, state_dir=tmp_path / "never")
    assert forgotten(cfg, connect=connect) == []


# --- the README ----------------------------------------------------------------------------------


def readme_workflow() -> list[str]:
    """The command lines of the README's section "Debugging the agent on a node"."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    block = re.search(r"```sh\n(.*?)```", text[start : end if end != -1 else len(text)], re.S)
    assert block is not None, "the section has no sh block"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_the_readme_shows_the_workflow_one_command_each() -> None:
    """The README's section: debug start, the docker exec line `debug start` prints, debug end,
    every command one that exists."""
    lines = readme_workflow()
    argvs = [shlex.split(line, comments=True) for line in lines]
    assert [a[:3] for a in argvs] == [
        ["agent-supervisor", "debug", "start"],
        ["docker", "exec", "-it"],
        ["agent-supervisor", "debug", "end"],
    ]
    assert argvs[1][3:] == [debug_name(AGENT), "sh"]
    for argv in (argvs[0], argvs[2]):
        r = run_cli(*argv[1:3], "--help")
        assert r.code == 0, r.stderr
        assert all(o.split("=")[0] in r.stdout for o in argv[3:] if o.startswith("--"))
