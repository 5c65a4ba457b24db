"""The shipped compose/docker-compose.yml, run by real docker-compose 1.29 and Compose v2.

The file is used as shipped, copied into a node's project directory, with only what a node sets
anyway: variables (images, directories, the agent's container name) and a second compose file
beside it that moves the fixed host mounts (/sys/fs/bpf, /run/xtables.lock, ...) into the
test's directory, merged by target as compose merges volumes. The agent is the busybox
stand-in, the supervisor image is built from compose/Dockerfile; the gate's configuration (a 3 s
window) is the mounted config.toml, which also names the agent's container for the host.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import REQUIRE_DOCKER, clean_env, run_cli

from supervisor.storage.store import StateStore

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "compose" / "docker-compose.yml"
AGENT = "cilium-agent"
W = 3.0
CONFIG_TOML = """\
cluster_size = 1
node_name = "as-test-node"

[window]
base = "3s"
per_node = "0s"
min = "1s"

[docker]
container = "{container}"
"""
#: The shipped file's fixed host paths, each moved under the test's directory.
HOST_MOUNTS = {
    "cilium-init": ["/sys/fs/bpf", "/var/run/cilium", "/lib/modules", "/run/xtables.lock"],
    "cilium-install-cni": ["/host/opt/cni/bin", "/host/etc/cni/net.d"],
    "cilium-agent": [
        "/var/run/cilium",
        "/sys/fs/bpf",
        "/host/opt/cni/bin",
        "/host/etc/cni/net.d",
        "/lib/modules",
        "/run/xtables.lock",
    ],
}


def implementations() -> list[Any]:
    """docker-compose 1.29 and Compose v2, each skipped (or failed under CI) when missing."""
    return [
        pytest.param(["docker-compose"], id="compose-1.29"),
        pytest.param(["docker", "compose"], id="compose-v2"),
    ]


def _available(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    proc = subprocess.run([*cmd, "version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def require_compose(cmd: list[str]) -> None:
    """Skip (or fail under CI) when this compose implementation is missing."""
    if _available(cmd) is None:
        msg = f"{' '.join(cmd)} is not installed"
        if REQUIRE_DOCKER:
            pytest.fail(msg + " (.ci/docker.sh installs both)")
        pytest.skip(msg)


def service_container(client: Any, project: str, service: str) -> Any | None:
    """A compose service's container, or None.

    list() inspects each container it found, and compose may remove one in between
    (regression: a flaky NotFound in CI): ignore_removed skips those.
    """
    found = client.containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={project}",
                f"com.docker.compose.service={service}",
            ]
        },
        ignore_removed=True,
    )
    return found[0] if found else None


@dataclass
class Project:
    """One compose project of the shipped file, in its own directory and name."""

    cmd: list[str]
    name: str
    root: Path
    env: dict[str, str]
    override: Path
    container: str

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def directory(self) -> Path:
        """The node's project directory: the shipped file and the test's override."""
        return self.override.parent

    @property
    def config(self) -> Path:
        """The one config.toml the containers mount and the host's commands read."""
        return self.root / "etc" / "config.toml"

    def argv(self, *args: str) -> list[str]:
        files = ["-f", str(self.directory / "docker-compose.yml"), "-f", str(self.override)]
        return [*self.cmd, "-p", self.name, *files, *args]

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, **env},
        )

    def service(self, client: Any, service: str) -> Any | None:
        """The service's container, or None."""
        return service_container(client, self.name, service)

    def runs(self) -> Any:
        return StateStore(self.state_dir).read(AGENT).state.runs

    def cli(self, *args: str) -> Any:
        return run_cli(*args, "--state-dir", str(self.state_dir), "--cluster-size", "1")

    def host(self, *args: str) -> Any:
        """The host's agent-supervisor, as an operator runs it: the one config.toml."""
        return run_cli(*args, "--config", str(self.config), "--state-dir", str(self.state_dir))


@pytest.fixture(params=implementations())
def project(
    request: pytest.FixtureRequest, docker_client: Any, tmp_path: Path
) -> Iterator[Project]:
    """The shipped compose file, ready to `up`, torn down (containers removed) afterwards.

    The second compose file moves the fixed host mounts into the test's directory and turns
    privileged off (this sandbox refuses privileged containers); nothing else is changed.
    """
    cmd: list[str] = request.param
    require_compose(cmd)
    standin = dockerutil.standin_image(docker_client)
    supervisor = dockerutil.supervisor_image(docker_client)
    root = tmp_path
    name = dockerutil.unique("compose")
    container = f"{name}-agent"
    dirs = {}
    for d in ("state", "etc", "config-map", "pki", "etcd-config", "etcd-secrets", "node"):
        dirs[d] = root / d
        dirs[d].mkdir(mode=0o700)
    (dirs["etc"] / "config.toml").write_text(CONFIG_TOML.format(container=container))
    shutil.copyfile(SHIPPED, dirs["node"] / "docker-compose.yml")
    host = root / "host"
    lines = ["services:"]
    for service, targets in HOST_MOUNTS.items():
        lines.append(f"  {service}:")
        # This sandbox refuses privileged containers ("unable to apply caps"); the busybox
        # stand-in needs no privilege anyway.
        lines.append("    privileged: false")
        lines.append("    volumes:")
        for target in targets:
            source = host / service / target.strip("/").replace("/", "_")
            if target.endswith(".lock"):
                source.parent.mkdir(parents=True, exist_ok=True)
                source.touch()
            else:
                source.mkdir(parents=True, exist_ok=True)
            lines.append(f"      - {source}:{target}")
    override = dirs["node"] / "test-override.yml"
    override.write_text("\n".join(lines) + "\n")
    env = clean_env(
        AGENT_SUPERVISOR_IMAGE=supervisor,
        CILIUM_IMAGE=standin,
        CILIUM_CONTAINER_NAME=container,
        AGENT_SUPERVISOR_STATE_DIR=str(dirs["state"]),
        AGENT_SUPERVISOR_CONFIG_DIR=str(dirs["etc"]),
        CILIUM_CONFIG_DIR=str(dirs["config-map"]),
        CILIUM_PKI_DIR=str(dirs["pki"]),
        CILIUM_ETCD_CONFIG_DIR=str(dirs["etcd-config"]),
        CILIUM_ETCD_SECRETS_DIR=str(dirs["etcd-secrets"]),
    )
    proj = Project(cmd, name, root, env, override, container)
    try:
        yield proj
    finally:
        proj.run("down", "-t", "1", timeout=120)
        dockerutil.remove_project(docker_client, name)
        dockerutil.remove_containers(docker_client, container)


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill a compose process that is still running, and close its pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def _running(c: Any) -> bool:
    c.reload()
    return bool(c.attrs["State"]["Running"])


@pytest.mark.docker
def test_up_waits_for_the_gate_and_starts_the_agent_when_it_allows(
    project: Project, docker_client: Any
) -> None:
    """While the gate refuses (a hold), `up` starts nothing but the supervisor, which runs
    before the agent; once released, the agent starts once, after its start was recorded (by
    the gate service, or by the supervisor, which waited for the same slot), and `up` exits
    0."""
    held = project.cli("hold", "--reason", "test: keep it down")
    assert held.code == 0, held.stderr
    t0 = time.time()
    up = project.popen("up", "-d")
    try:
        gate = dockerutil.wait_for(
            lambda: (g := project.service(docker_client, "gate")) is not None and _running(g) and g,
            timeout=60,
            what="the gate container to be waiting",
        )
        supervisor = dockerutil.wait_for(
            lambda: (
                (s := project.service(docker_client, "supervisor")) is not None
                and _running(s)
                and s
            ),
            timeout=30,
            what="the supervisor service, started before the agent",
        )
        # The gate waits; for a while, the agent is not started.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            agent = project.service(docker_client, AGENT)
            assert agent is None or not _running(agent)
            assert up.poll() is None, up.communicate()[0]
            time.sleep(0.5)
        assert project.runs() == ()
        t_release = time.time()
        released = project.cli("release", "--reason", "test: go")
        assert released.code == 0, released.stderr
        out, _ = up.communicate(timeout=60)
        assert up.returncode == 0, out
    finally:
        _reap(up)
    agent = project.service(docker_client, AGENT)
    assert agent is not None and _running(agent)
    assert agent.name == project.container
    gate.reload()
    assert gate.attrs["State"]["ExitCode"] == 0
    t_end = time.time()
    agent_started = dockerutil.starts(docker_client, t0, t_end, project.container)
    assert len(agent_started) == 1
    assert t_release <= agent_started[0]
    runs = project.runs()
    assert len(runs) == 1
    assert runs[0].via == "gate"
    assert t_release <= runs[0].started_at <= agent_started[0]
    supervisor.reload()
    assert _running(supervisor)
    assert supervisor.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert agent.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"


@pytest.mark.docker
def test_interrupted_gate_fails_up_and_never_starts_the_agent(
    project: Project, docker_client: Any
) -> None:
    """Stopping a waiting gate (SIGTERM) makes `up` fail; the agent is never started and no
    start is recorded."""
    assert project.cli("hold", "--reason", "test: keep it down").code == 0
    t0 = time.time()
    up = project.popen("up", "-d")
    try:
        gate = dockerutil.wait_for(
            lambda: (g := project.service(docker_client, "gate")) is not None and _running(g) and g,
            timeout=60,
            what="the gate container to be waiting",
        )
        time.sleep(1)
        gate.stop(timeout=10)
        out, _ = up.communicate(timeout=60)
    finally:
        _reap(up)
    assert up.returncode != 0, out
    gate.reload()
    assert gate.attrs["State"]["ExitCode"] == 75
    assert dockerutil.starts(docker_client, t0, time.time(), project.container) == []
    agent = project.service(docker_client, AGENT)
    assert agent is None or not _running(agent)
    assert project.runs() == ()


@pytest.mark.docker
@pytest.mark.slow
def test_crash_loop_under_compose_starts_at_most_once_per_window(
    project: Project, docker_client: Any
) -> None:
    """A stand-in that exits 1 after 1 s: the gate allows the first start, the supervisor
    service records each exit and restarts it at most once per window."""
    config_map = project.root / "config-map"
    (config_map / "standin-run-seconds").write_text("1\n")
    (config_map / "standin-exit-code").write_text("1\n")
    t0 = time.time()
    up = project.run("up", "-d")
    assert up.returncode == 0, up.stdout + up.stderr
    dockerutil.wait_for(
        lambda: len(dockerutil.starts(docker_client, t0, time.time(), project.container)) >= 3,
        timeout=40,
        what="three starts of the agent",
        interval=0.5,
    )
    t_end = time.time()
    starts = dockerutil.starts(docker_client, t0, t_end, project.container)
    sup = project.service(docker_client, "supervisor")
    assert sup is not None and _running(sup), "the supervisor service died"
    assert all(b - a >= W - 0.5 for a, b in itertools.pairwise(starts)), starts
    runs = project.runs()
    assert len(runs) >= len(starts)
    assert all(r.via == "gate" for r in runs)
    ended = [r for r in runs if r.ended_at is not None]
    assert len(ended) >= 2
    assert all(r.exit_code == 1 and r.end_source == "docker" for r in ended)
    recorded = [r.started_at for r in runs]
    # Every engine start follows a recorded start: the gate said yes before each one.
    for s in starts:
        assert any(0 <= s - r <= 3.0 for r in recorded), (s, recorded)


def test_every_env_setting_is_used_by_the_compose_file() -> None:
    """Each variable of compose/.env is one the compose file uses (no dead settings)."""
    text = SHIPPED.read_text()
    env_lines = (REPO / "compose" / ".env").read_text().splitlines()
    names = {
        ln.lstrip("#").split("=", 1)[0].strip()
        for ln in env_lines
        if "=" in ln and ln.lstrip("#").split("=", 1)[0].strip().isupper()
    }
    assert names >= {"AGENT_SUPERVISOR_CLUSTER_SIZE", "AGENT_SUPERVISOR_NODE_NAME",
                     "AGENT_SUPERVISOR_STATE_DIR"}  # fmt: skip
    for name in names:
        assert name in text, f"{name} in .env is not used by docker-compose.yml"


def test_shipped_file_keeps_the_agent_restart_policy_no() -> None:
    """The agent's restart policy is "no" and its start waits for the gate to complete."""
    import yaml

    doc = yaml.safe_load(SHIPPED.read_text())
    agent = doc["services"]["cilium-agent"]
    assert agent["restart"] == "no"
    assert agent["depends_on"]["gate"] == {"condition": "service_completed_successfully"}
    # The supervisor starts before the agent and stops after it, and waits for no gate.
    assert agent["depends_on"]["supervisor"] == {"condition": "service_started"}
    assert "depends_on" not in doc["services"]["supervisor"]
    # The gate reads the project's files, and gets the variables the agent's definition uses.
    gate = doc["services"]["gate"]
    assert ".:/run/agent-supervisor/compose:ro" in gate["volumes"]
    used = set(re.findall(r"\$\{([A-Z_]+)", yaml.safe_dump(agent)))
    assert used <= set(gate["environment"]), used - set(gate["environment"])
    assert agent["entrypoint"] == "cilium-agent --config-dir=/tmp/cilium/config-map"
    assert agent["network_mode"] == "host"
    assert agent["privileged"] is True
    assert doc["services"]["gate"]["command"][:2] == ["gate", "--wait"]
    assert doc["services"]["supervisor"]["command"][0] == "run"
    assert "version" not in doc


@pytest.mark.parametrize("cmd", implementations())
def test_compose_accepts_the_shipped_file(cmd: list[str], tmp_path: Path) -> None:
    """`config` of both compose implementations accepts the file with the shipped .env."""
    require_compose(cmd)
    proc = subprocess.run(
        [*cmd, "-f", str(SHIPPED), "config"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "service_completed_successfully" in proc.stdout
