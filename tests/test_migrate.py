"""`agent-supervisor migrate`: a node in the reference layout (ctripcloud/cilium-compose) is
gated without losing anything of it.

The node is a copy of the reference (tests/referencelayout.py): its compose file, 26 option
files, etcd configuration and secrets, and a stand-in image with the node's entrypoints. migrate
writes an override beside the untouched original; the tests check the merged deployment keeps
every service, image, entrypoint, environment variable and mount, that running migrate again
changes nothing, that the cluster size has one home (config.toml) that the host's `status`
reads, and, against the real engine with Compose v2 and docker-compose 1.29, that the agent
starts through the gate with everything of the original.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerutil
import pytest
import referencelayout
import yaml
from conftest import Result, clean_env, run_cli
from referencelayout import Layout
from test_compose import implementations, require_compose, service_container

import supervisor
from supervisor.containers import migrate
from supervisor.containers.compose import MIGRATE_OVERRIDE, load_compose
from supervisor.storage.store import StateStore

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "compose" / "docker-compose.yml"
NODE_IMAGE = f"registry.example/cloud-network/cilium:{referencelayout.DATED_TAG}"
CONFIG_TOML = """\
node_name = "as-test-node"

[window]
base = "3s"
per_node = "0s"
min = "1s"
"""


@dataclass(frozen=True)
class Host:
    """The host's agent-supervisor files: config.toml (no cluster size yet) and the state."""

    config: Path
    state: Path

    def args(self) -> list[str]:
        return ["--config", str(self.config), "--state-dir", str(self.state)]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A config directory and a state directory of the test's own."""
    etc = tmp_path / "etc-agent-supervisor"
    etc.mkdir()
    (etc / "config.toml").write_text(CONFIG_TOML)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return Host(etc / "config.toml", state)


@pytest.fixture
def node(tmp_path: Path) -> Layout:
    """A node in the reference layout (not run: the image is the node's registry's)."""
    return referencelayout.build(tmp_path / "cilium-compose", NODE_IMAGE, "")


def migrate_cli(node: Layout, host: Host, *extra: str) -> Result:
    """`agent-supervisor migrate` on the node, with the host's files."""
    return run_cli("migrate", "--compose-file", str(node.compose_file), *host.args(), *extra)


def tree_digest(root: Path) -> str:
    """One hash of every file's path and bytes under ``root`` (the override excluded)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MIGRATE_OVERRIDE:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# --- what migrate writes -------------------------------------------------------------------------


def test_migrate_writes_an_override_and_never_edits_the_original(node: Layout, host: Host) -> None:
    """The override goes beside the original, which stays byte for byte (options included);
    the diff shows the restart policy and the gate, and the start command uses both files."""
    before = tree_digest(node.root)
    r = migrate_cli(node, host, "--cluster-size", "1")
    assert (r.code, r.stderr_lines) == (0, [])
    assert tree_digest(node.root) == before
    override = node.root / MIGRATE_OVERRIDE
    assert override.read_text().startswith(migrate.MARKER)
    assert "-    restart: always\n" in r.stdout
    assert "+    restart: 'no'\n" in r.stdout
    assert "+      gate:\n+        condition: service_completed_successfully\n" in r.stdout
    assert "+  gate:\n" in r.stdout and "+  supervisor:\n" in r.stdout
    assert f"wrote {override}" in r.stdout
    assert (
        f"start:  cd {node.root} && docker compose -f docker-compose.yaml "
        f"-f {MIGRATE_OVERRIDE} up -d"
    ) in r.stdout.splitlines()


def test_the_migrated_deployment_keeps_everything_of_the_original(node: Layout, host: Host) -> None:
    """Merged as compose merges it, every service keeps its image, entrypoint, environment
    and mounts; the agent changes only its restart policy and gains the gate dependency."""
    assert migrate_cli(node, host, "--cluster-size", "1").code == 0
    before = load_compose(node.compose_file, env={})
    after = load_compose(node.compose_file, env={}, extra=[node.root / MIGRATE_OVERRIDE])
    assert set(after.services) == {*referencelayout.SERVICES, "gate", "supervisor"}
    for name in ("cilium-init", "cilium-install-cni"):
        assert after.services[name] == before.services[name]
    agent_before = dict(before.services["cilium-agent"])
    agent_after = dict(after.services["cilium-agent"])
    assert agent_before.pop("restart") == "always"
    assert agent_after.pop("restart") == "no"
    assert agent_before.pop("depends_on") == ["cilium-init", "cilium-install-cni"]
    assert agent_after.pop("depends_on") == {
        "cilium-init": None,
        "cilium-install-cni": None,
        "gate": {"condition": "service_completed_successfully"},
        "supervisor": {"condition": "service_started"},
    }
    assert agent_after == agent_before
    assert agent_after["image"] == NODE_IMAGE
    gate = after.services["gate"]
    assert gate["command"] == ["gate", "--wait", "--agent", "cilium-agent"]
    # The gate reads the files where the project directory is mounted, and COMPOSE_FILE from
    # `up`'s shell (the reference uses no variables); docker.container is in config.toml.
    assert gate["environment"] == ["COMPOSE_FILE", "COMPOSE_PATH_SEPARATOR"]
    assert gate["volumes"] == [
        f"{host.state}:/var/lib/agent-supervisor",
        f"{host.config.parent}:/etc/agent-supervisor:ro",
        "/var/run/docker.sock:/var/run/docker.sock",
        f"{node.root}:/run/agent-supervisor/compose:ro",
    ]
    supervisor_svc = after.services["supervisor"]
    assert supervisor_svc["command"] == [
        "run",
        "--agent",
        "cilium-agent",
        "--container",
        "cilium-agent",
    ]
    assert "depends_on" not in supervisor_svc


def test_running_migrate_again_changes_nothing(node: Layout, host: Host) -> None:
    """A second run finds its own file up to date and leaves it alone (same inode, same
    time), with the same diff and commands."""
    first = migrate_cli(node, host, "--cluster-size", "1")
    override = node.root / MIGRATE_OVERRIDE
    st = override.stat()
    config = host.config.read_text()
    second = migrate_cli(node, host)
    assert (second.code, second.stderr_lines) == (0, [])
    assert f"up to date: {override}" in second.stdout
    assert (override.stat().st_ino, override.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert host.config.read_text() == config
    assert second.stdout.replace(f"up to date: {override}", "") == first.stdout.replace(
        f"added cluster_size = 1 to {host.config}\n"
        f"added docker.container = cilium-agent to {host.config}\nwrote {override}",
        "",
    )


def test_dry_run_writes_nothing(node: Layout, host: Host) -> None:
    """--dry-run prints the diff and what it would write, and writes neither file."""
    config = host.config.read_text()
    r = migrate_cli(node, host, "--cluster-size", "5", "--dry-run")
    assert (r.code, r.stderr_lines) == (0, [])
    assert "+    restart: 'no'\n" in r.stdout
    assert f"dry run: would write {node.root / MIGRATE_OVERRIDE}" in r.stdout
    assert f"dry run: would add cluster_size = 5 to {host.config}" in r.stdout
    assert not (node.root / MIGRATE_OVERRIDE).exists()
    assert host.config.read_text() == config


# --- the cluster size: one place -----------------------------------------------------------------


def test_without_a_cluster_size_migrate_refuses_and_says_how(node: Layout, host: Host) -> None:
    """No cluster_size in config.toml and no --cluster-size: exit 78, one line saying how to
    set it, nothing written (an AGENT_SUPERVISOR_CLUSTER_SIZE in this shell does not count:
    the containers would not see it)."""
    env = clean_env(AGENT_SUPERVISOR_CLUSTER_SIZE="5")
    r = run_cli("migrate", "--compose-file", str(node.compose_file), *host.args(), env=env)
    assert r.code == 78
    assert len(r.stderr_lines) == 1
    assert f"cluster_size is not set in {host.config}" in r.stderr_lines[0]
    assert "--cluster-size N" in r.stderr_lines[0]
    assert not (node.root / MIGRATE_OVERRIDE).exists()
    dry = migrate_cli(node, host, "--dry-run")
    assert dry.code == 0
    assert [ln for ln in dry.stderr_lines if "cluster_size is not set" in ln]


def test_cluster_size_is_written_where_the_host_and_the_containers_read_it(
    node: Layout, host: Host
) -> None:
    """--cluster-size lands in config.toml (every other line kept), so the host's `status`
    works with no flag and no .env; a different size later is refused, not overwritten."""
    assert migrate_cli(node, host, "--cluster-size", "7").code == 0
    text = host.config.read_text()
    assert text.startswith("cluster_size = 7")
    assert CONFIG_TOML in text
    status = run_cli("status", "--json", *host.args())
    assert status.code == 0, status.stderr
    assert json.loads(status.stdout)["cluster_size"] == 7
    r = migrate_cli(node, host, "--cluster-size", "8")
    assert r.code == 78
    assert len(r.stderr_lines) == 1
    assert "cluster_size = 7, but --cluster-size says 8" in r.stderr_lines[0]


def test_the_agents_container_is_written_where_the_host_reads_it(node: Layout, host: Host) -> None:
    """migrate writes docker.container (the agent's container) into config.toml, in a new
    [docker] table at the end or under the one the file has (every other line kept), so the
    host's `status` asks Docker about the same container as the gate; another container name
    there is refused, not overwritten."""
    assert migrate_cli(node, host, "--cluster-size", "1").code == 0
    text = host.config.read_text()
    assert text.endswith('\n[docker]\ncontainer = "cilium-agent"  # written by agent-supervisor '
                         "migrate\n")  # fmt: skip
    assert tomllib.loads(text)["docker"] == {"container": "cilium-agent"}
    status = run_cli("status", "--json", *host.args())
    assert status.code == 0, status.stderr
    assert json.loads(status.stdout)["docker"] is not None  # Docker was asked

    host.config.write_text('cluster_size = 1\n[docker]\ngrace = "90s"\n[window]\nbase = "3s"\n')
    (node.root / MIGRATE_OVERRIDE).unlink()
    assert migrate_cli(node, host).code == 0
    doc = tomllib.loads(host.config.read_text())
    assert doc["docker"] == {"grace": "90s", "container": "cilium-agent"}
    assert doc["window"] == {"base": "3s"}

    host.config.write_text('cluster_size = 1\n[docker]\ncontainer = "other"\n')
    r = migrate_cli(node, host)
    assert r.code == 78
    assert "docker.container = 'other', but the agent's container" in r.stderr_lines[0]


def test_the_gate_gets_every_variable_the_agents_definition_uses(node: Layout, host: Host) -> None:
    """An agent whose image and mounts come from variables: the gate service passes each one
    through, so that it reads the agent's definition as this `up` does."""
    text = node.compose_file.read_text().replace(
        f"image: {NODE_IMAGE}\n    container_name: cilium-agent",
        "image: ${CILIUM_IMAGE:-quay.io/cilium/cilium:v1.16.5}\n    container_name: cilium-agent",
    )
    text = text.replace("./mount/config-map:", "${CILIUM_CONFIG_DIR:-./mount/config-map}:")
    node.compose_file.write_text(text)
    assert migrate_cli(node, host, "--cluster-size", "1").code == 0
    override = yaml.safe_load((node.root / MIGRATE_OVERRIDE).read_text())
    env = override["services"]["gate"]["environment"]
    assert env == ["COMPOSE_FILE", "COMPOSE_PATH_SEPARATOR", "CILIUM_CONFIG_DIR", "CILIUM_IMAGE"]


def test_a_missing_config_file_is_created_with_the_cluster_size(
    node: Layout, tmp_path: Path
) -> None:
    """A node without config.toml yet: --cluster-size creates it."""
    host = Host(tmp_path / "new-etc" / "config.toml", tmp_path / "state")
    assert migrate_cli(node, host, "--cluster-size", "3").code == 0
    assert host.config.read_text().startswith("cluster_size = 3")


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "extra", "code", "text"),
    [
        (None, [], 78, "compose file not found"),
        ("services:\n  web:\n    image: x\n", [], 78, "no service named 'cilium-agent'"),
        ("services: [unclosed\n", [], 78, "not valid YAML"),
        ("REFERENCE", ["--mode", "k8s"], 2, "--mode 'k8s'"),
        ("REFERENCE", ["--service", "nope"], 78, "no service 'nope'"),
        ("REFERENCE", ["--out", "FOREIGN"], 78, "was not written by agent-supervisor migrate"),
        ("REFERENCE", ["--out", "ORIGINAL"], 78, "is one of the compose files"),
        ("SHIPPED", [], 78, "already runs agent-supervisor (services gate, supervisor)"),
    ],
    ids=["missing", "no-agent", "yaml", "mode", "service", "foreign-out", "out-is-input", "gated"],
)
def test_bad_input_is_one_line(
    content: str | None, extra: list[str], code: int, text: str, node: Layout, host: Host
) -> None:
    """Missing file, no agent service, a YAML error, a file that already has its gate, an
    output migrate did not write: one line and 78 (2 for usage), and nothing written."""
    host.config.write_text("cluster_size = 1\n")
    compose = node.compose_file
    if content is None:
        compose = node.root / "missing.yaml"
    elif content == "SHIPPED":
        compose = SHIPPED
    elif content != "REFERENCE":
        compose.write_text(content)
    foreign = node.root / "mine.yml"
    foreign.write_text("services: {}\n")
    subst = {"FOREIGN": str(foreign), "ORIGINAL": str(node.compose_file)}
    args = [subst.get(a, a) for a in extra]
    r = run_cli("migrate", "--compose-file", str(compose), *host.args(), *args)
    assert r.code == code
    assert r.stdout == ""
    assert len(r.stderr_lines) == 1, r.stderr
    assert text in r.stderr_lines[0]
    assert not (node.root / MIGRATE_OVERRIDE).exists()
    assert not (REPO / "compose" / MIGRATE_OVERRIDE).exists()


def test_default_image_is_the_one_the_build_command_tags() -> None:
    """migrate's default image is this version's tag, the one compose/.env names."""
    version = supervisor.__version__
    assert "agent-supervisor:" + version == migrate.DEFAULT_IMAGE
    env = (REPO / "compose" / ".env").read_text().splitlines()
    assert f"AGENT_SUPERVISOR_IMAGE={migrate.DEFAULT_IMAGE}" in env


# --- the other modes, and doctor before and after ------------------------------------------------


@pytest.mark.parametrize("mode", ["systemd", "daemon"])
def test_systemd_and_daemon_modes_only_stop_dockers_restarts(
    mode: str, node: Layout, host: Host
) -> None:
    """Under systemd or the host's daemon the override only sets restart "no" (no gate or
    supervisor service: the unit or the daemon is that), and doctor in that mode is clean."""
    r = migrate_cli(node, host, "--cluster-size", "1", "--mode", mode)
    assert r.code == 0, r.stderr
    override = node.root / MIGRATE_OVERRIDE
    assert yaml.safe_load(override.read_text()) == {"services": {"cilium-agent": {"restart": "no"}}}
    check = run_cli(
        "doctor",
        "--compose-file", str(node.compose_file),
        "--compose-file", str(override),
        "--mode", mode,
        *host.args(),
    )  # fmt: skip
    assert check.code == 0, check.stdout


def _doctor_json(*files: Path, host: Host) -> Any:
    args = [a for f in files for a in ("--compose-file", str(f))]
    r = run_cli("doctor", *args, "--json", *host.args())
    assert r.stderr_lines == []
    return r.code, json.loads(r.stdout)


def test_doctor_on_the_reference_layout_names_every_problem_and_what_is_fine(
    node: Layout, host: Host
) -> None:
    """On the reference: the restart policy, no gate, no supervisor, each with a fix that
    names migrate; and the agent's option files, kubeconfig with its certificates, etcd
    configuration and secrets are each found mounted and on the host."""
    code, doc = _doctor_json(node.compose_file, host=host)
    assert code == 1
    assert [p["check"] for p in doc["problems"]] == [
        "restart-policy",
        "gate-missing",
        "supervisor-missing",
    ]
    assert all(p["fix"] for p in doc["problems"])
    assert "agent-supervisor migrate" in doc["problems"][1]["fix"]
    checked = "\n".join(doc["checked"])
    assert f"reads 26 option files from {node.config_map}" in checked
    for needed in (
        "/etc/kubernetes/kubelet.kubeconfig",
        "/etc/kubernetes/pki/kubelet-client.crt",
        "/etc/kubernetes/pki/kubelet-client.key",
        "/etc/kubernetes/pki/ca.crt",
        "/var/lib/etcd-config/etcd.config",
        "/var/lib/etcd-secrets/etcd-client-ca.crt",
        "/var/lib/etcd-secrets/etcd-client.crt",
        "/var/lib/etcd-secrets/etcd-client.key",
    ):
        assert needed in checked, needed


def test_doctor_is_clean_on_the_migrated_deployment(node: Layout, host: Host) -> None:
    """The original plus migrate's override: no problem; the original alone points at it."""
    assert migrate_cli(node, host, "--cluster-size", "1").code == 0
    code, doc = _doctor_json(node.compose_file, node.root / MIGRATE_OVERRIDE, host=host)
    assert (code, doc["problems"]) == (0, [])
    _, alone = _doctor_json(node.compose_file, host=host)
    assert alone["notes"] and MIGRATE_OVERRIDE in alone["notes"][0]


def test_doctor_finds_what_replacing_the_file_left_behind(node: Layout, host: Host) -> None:
    """The old README's migration (the shipped file, only the options copied): doctor names
    the etcd configuration the agent would crash-loop on and the kubeconfig it cannot see."""
    host.config.write_text(
        "cluster_size = 1\n" + CONFIG_TOML + '\n[docker]\ncontainer = "cilium-agent"\n'
    )
    (node.root / "replaced").mkdir()
    replaced = node.root / "replaced" / "docker-compose.yml"
    replaced.write_text(SHIPPED.read_text())
    (node.root / "replaced" / ".env").write_text(
        f"AGENT_SUPERVISOR_STATE_DIR={host.state}\n"
        f"AGENT_SUPERVISOR_CONFIG_DIR={host.config.parent}\n"
        f"CILIUM_CONFIG_DIR={node.config_map}\n"
        f"CILIUM_ETCD_CONFIG_DIR={node.root / 'empty-etcd-config'}\n"
        f"CILIUM_ETCD_SECRETS_DIR={node.root / 'empty-etcd-secrets'}\n"
    )
    code, doc = _doctor_json(replaced, host=host)
    assert code == 1
    problems = {p["check"]: p["problem"] for p in doc["problems"]}
    assert set(problems) == {"agent-credentials", "agent-etcd"}
    assert (
        "/etc/kubernetes/kubelet.kubeconfig (k8s-kubeconfig-path) is not mounted"
        in (problems["agent-credentials"])
    )
    assert (
        f"{node.root / 'empty-etcd-config' / 'etcd.config'} on this host" in problems["agent-etcd"]
    )


@pytest.mark.parametrize("cmd", implementations())
def test_compose_accepts_the_migrated_files(cmd: list[str], node: Layout, host: Host) -> None:
    """`config` of both compose implementations merges the original (version '2') and the
    override, with the gate dependency and the node's image."""
    require_compose(cmd)
    assert migrate_cli(node, host, "--cluster-size", "1").code == 0
    proc = subprocess.run(
        [*cmd, "-f", "docker-compose.yaml", "-f", MIGRATE_OVERRIDE, "config"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=node.root,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(proc.stdout)["services"]
    agent = merged["cilium-agent"]
    assert agent["depends_on"]["gate"]["condition"] == "service_completed_successfully"
    assert agent["restart"] == "no"
    assert {merged[s]["image"] for s in referencelayout.SERVICES} == {NODE_IMAGE}


# --- against the real engine ---------------------------------------------------------------------


SANDBOX = """\
# This sandbox refuses privileged containers ("unable to apply caps"); the busybox stand-in
# needs no privilege. Nothing else of the node's file is changed.
services:
  cilium-init: {privileged: false}
  cilium-install-cni: {privileged: false}
  cilium-agent: {privileged: false}
"""


@pytest.fixture
def ref_image(docker_client: Any) -> Iterator[str]:
    """The node's stand-in image with a dated tag of this test's own, removed afterwards."""
    import docker.errors

    tag = referencelayout.standin_image(docker_client, referencelayout.image_tag())
    try:
        yield tag
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(tag)


ComposeRun = Callable[..., "subprocess.CompletedProcess[str]"]


@contextlib.contextmanager
def running(client: Any, cmd: list[str], node: Layout, sandbox: Path) -> Iterator[ComposeRun]:
    """``compose(*args)`` in the node's directory (its project); afterwards the project is
    taken down and every container of it removed, the reference's named ones included."""
    sandbox.write_text(SANDBOX)
    env = clean_env()

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, env=env, cwd=node.root,
            timeout=180, check=False,
        )  # fmt: skip

    try:
        yield compose
    finally:
        down = ["-f", "docker-compose.yaml", "-f", MIGRATE_OVERRIDE, "-f", str(sandbox)]
        compose(*down, "down", "-t", "1")
        dockerutil.remove_project(client, node.root.name)
        dockerutil.remove_containers(client, *(node.container(s) for s in referencelayout.SERVICES))


def _mounts(c: Any) -> set[tuple[str, str, bool]]:
    return {(m["Source"], m["Destination"], m["RW"]) for m in c.attrs["Mounts"]}


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("cmd", implementations())
def test_migrated_reference_layout_starts_the_agent_through_the_gate(
    cmd: list[str], docker_client: Any, ref_image: str, tmp_path: Path, host: Host
) -> None:
    """migrate, then `up -d` with the original and the override: the gate allows and records
    the start before the agent starts, and every container runs with the image, entrypoint,
    environment and mounts of the original; the agent sees all 26 option files, the etcd
    files and the kubeconfig; the supervisor watches it; the host's `status` reads the
    cluster size from config.toml."""
    require_compose(cmd)
    supervisor_image = dockerutil.supervisor_image(docker_client)
    project = dockerutil.unique("ref")
    node = referencelayout.build(tmp_path / project, ref_image, f"{project}-")
    r = migrate_cli(node, host, "--cluster-size", "1", "--image", supervisor_image)
    assert r.code == 0, r.stderr
    sandbox = node.root / "sandbox.yml"  # in the project directory: the gate reads it too
    with running(docker_client, cmd, node, sandbox) as compose:
        t0 = time.time()
        up = compose("-f", "docker-compose.yaml", "-f", MIGRATE_OVERRIDE, "-f", str(sandbox),
                     "up", "-d")  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        agent = docker_client.containers.get(node.container("cilium-agent"))
        assert agent.attrs["State"]["Running"]
        _check_started_through_the_gate(docker_client, project, node, host, agent, t0)
        _check_everything_of_the_original(docker_client, node, agent, ref_image)
        _check_the_supervisor_and_the_host(docker_client, project, node, host)


def _check_started_through_the_gate(
    client: Any, project: str, node: Layout, host: Host, agent: Any, t0: float
) -> None:
    gate = service_container(client, project, "gate")
    assert gate is not None
    assert gate.attrs["State"]["ExitCode"] == 0
    t_end = time.time()
    gate_died = [
        e.time for e in dockerutil.events(client, t0, t_end, gate.name) if e.action == "die"
    ]
    agent_started = dockerutil.starts(client, t0, t_end, agent.name)
    assert len(gate_died) == 1 and len(agent_started) == 1
    # One approval (the gate service's, or the supervisor's: both wait for the same slot),
    # recorded before the one start.
    runs = StateStore(host.state).read("cilium-agent").state.runs
    assert len(runs) == 1
    assert runs[0].via == "gate"
    assert t0 <= runs[0].started_at <= agent_started[0]
    assert agent.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"


def _check_everything_of_the_original(client: Any, node: Layout, agent: Any, image: str) -> None:
    for service in referencelayout.SERVICES:
        c = client.containers.get(node.container(service))
        assert c.attrs["Config"]["Image"] == image, service
        assert c.attrs["Config"]["Entrypoint"] == referencelayout.ENTRYPOINTS[service], service
        assert _mounts(c) == node.mounts(service), service
        assert c.attrs["HostConfig"]["NetworkMode"] == "host"
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        assert env.items() >= referencelayout.ENVIRONMENT.get(service, {}).items(), service
        if service != "cilium-agent":
            assert c.attrs["State"]["ExitCode"] == 0, service
    logs = client.containers.get(node.container("cilium-install-cni")).logs().decode()
    assert "stand-in /cni-install.sh: done" in logs

    def inside(*args: str) -> str:
        code, out = agent.exec_run(list(args))
        assert code == 0, (args, out)
        return str(out.decode())

    assert sorted(inside("ls", "/tmp/cilium/config-map").split()) == sorted(referencelayout.OPTIONS)
    for option, data in referencelayout.OPTIONS.items():
        assert inside("cat", f"/tmp/cilium/config-map/{option}") == data.decode(), option
    assert inside("ls", "/var/lib/etcd-config").split() == ["etcd.config"]
    assert len(inside("ls", "/var/lib/etcd-secrets").split()) == 3
    assert inside("cat", "/etc/kubernetes/kubelet.kubeconfig") == referencelayout.KUBECONFIG


def _check_the_supervisor_and_the_host(client: Any, project: str, node: Layout, host: Host) -> None:
    agent = node.container("cilium-agent")
    supervisor_c = dockerutil.wait_for(
        lambda: (
            (s := service_container(client, project, "supervisor")) is not None
            and (s.reload() or s.attrs["State"]["Running"])
            and s
        ),
        timeout=30,
        what="the supervisor service",
    )
    assert supervisor_c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert supervisor_c.attrs["Config"]["Cmd"] == [
        "run", "--agent", "cilium-agent", "--container", agent,
    ]  # fmt: skip
    # The host's operators: no --cluster-size, no .env, nothing in the environment; config.toml
    # names the agent's container, so `status` sees it running, at level 0.
    status = run_cli("status", "--json", *host.args())
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["cluster_size"] == 1
    assert len(doc["runs"]) == 1
    assert (doc["running"], doc["backoff_level"]) == (True, 0)


@pytest.mark.docker
@pytest.mark.slow
def test_migrating_a_running_node_keeps_it_running_and_gated(
    docker_client: Any, ref_image: str, tmp_path: Path, host: Host
) -> None:
    """The node runs the original (restart: always) when it is migrated: `up -d` with the
    override recreates the agent with restart "no" and everything else as before, the one
    start is recorded, and the supervisor owns the agent from then on."""
    cmd = ["docker", "compose"]
    require_compose(cmd)
    supervisor_image = dockerutil.supervisor_image(docker_client)
    project = dockerutil.unique("ref")
    node = referencelayout.build(tmp_path / project, ref_image, f"{project}-")
    sandbox = ["-f", str(node.root / "sandbox.yml")]
    original = ["-f", "docker-compose.yaml"]
    migrated = [*original, "-f", MIGRATE_OVERRIDE]
    with running(docker_client, cmd, node, node.root / "sandbox.yml") as compose:
        up = compose(*original, *sandbox, "up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        old = docker_client.containers.get(node.container("cilium-agent"))
        assert old.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
        r = migrate_cli(node, host, "--cluster-size", "1", "--image", supervisor_image)
        assert r.code == 0, r.stderr
        t0 = time.time()
        up = compose(*migrated, *sandbox, "up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        agent = docker_client.containers.get(node.container("cilium-agent"))
        assert agent.id != old.id
        assert agent.attrs["State"]["Running"]
        assert agent.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
        _check_everything_of_the_original(docker_client, node, agent, ref_image)
        _check_the_supervisor_and_the_host(docker_client, project, node, host)
        runs = StateStore(host.state).read("cilium-agent").state.runs
        assert len(runs) == 1
        started = dockerutil.starts(docker_client, t0, time.time(), agent.name)
        assert len(started) == 1
        assert runs[0].started_at <= started[0]
        assert runs[0].via == "gate"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("cmd", implementations())
def test_an_upgrade_of_the_migrated_node_starts_only_through_the_gate(
    cmd: list[str], docker_client: Any, ref_image: str, tmp_path: Path, host: Host
) -> None:
    """The node's compose file gets a new image tag (config management's upgrade), then
    `up -d`: the migrated gate service reads the project's files, so the new agent starts
    only with the gate's approval (none recorded as started outside the gate), the old run is
    recorded as stopped on purpose or as replaced, and a re-run `up -d` starts nothing."""
    require_compose(cmd)
    supervisor_image = dockerutil.supervisor_image(docker_client)
    project = dockerutil.unique("ref")
    node = referencelayout.build(tmp_path / project, ref_image, f"{project}-")
    assert migrate_cli(node, host, "--cluster-size", "1", "--image", supervisor_image).code == 0
    repo, _, old_tag = ref_image.rpartition(":")
    new_image = f"{repo}:{old_tag}-2"
    docker_client.images.get(ref_image).tag(repo, f"{old_tag}-2")
    files = ["-f", "docker-compose.yaml", "-f", MIGRATE_OVERRIDE, "-f", "sandbox.yml"]
    agent_name = node.container("cilium-agent")

    def runs() -> Any:
        return StateStore(host.state).read("cilium-agent").state.runs

    def bound() -> Any:
        c = docker_client.containers.get(agent_name)
        r = runs()
        return c.attrs["State"]["Running"] and r and r[-1].container == c.id and c

    try:
        with running(docker_client, cmd, node, node.root / "sandbox.yml") as compose:
            up = compose(*files, "up", "-d")
            assert up.returncode == 0, up.stdout + up.stderr
            old = dockerutil.wait_for(bound, 60, "the agent to run, its run bound")
            t0 = time.time()
            text = node.compose_file.read_text()
            node.compose_file.write_text(text.replace(f"image: {ref_image}", f"image: {new_image}"))
            up = compose(*files, "up", "-d")
            assert up.returncode == 0, up.stdout + up.stderr
            new = dockerutil.wait_for(bound, 60, "the new agent to run, its run bound")
            assert new.id != old.id and new.attrs["Config"]["Image"] == new_image
            before, after = dockerutil.wait_for(
                lambda: (r := runs()) and r[-2].ended_at is not None and r[-2:],
                30,
                "the old run's end",
            )
            assert [r.via for r in runs()] == ["gate", "gate"]
            assert before.stopped_on_purpose or after.replaces == before.id, (before, after)
            started = dockerutil.starts(docker_client, t0, time.time(), agent_name)
            assert len(started) == 1 and after.started_at <= started[0]
            again = compose(*files, "up", "-d")
            assert again.returncode == 0, again.stdout + again.stderr
            assert dockerutil.wait_for(bound, 60, "the agent").id == new.id
            assert len(runs()) == 2
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(new_image)
