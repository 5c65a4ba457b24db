"""`agent-supervisor doctor`: a deployment in the reference layout is flagged, the shipped one
is clean, each problem is found on its own with its fix, and a bad file is one line and 78."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dockerutil
import pytest
import yaml
from conftest import clean_env

from supervisor.base.errors import ConfigError
from supervisor.containers.compose import (
    interpolate,
    load_compose,
    mounts,
    read_dotenv,
    restart_policy,
)
from supervisor.containers.doctor import diagnose
from supervisor.storage.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "compose" / "docker-compose.yml"

#: A node in the layout of ctripcloud/cilium-compose: the agent restarted by Docker itself,
#: no gate, no supervisor, the option files in ./mount/config-map.
REFERENCE = """\
version: '2'
services:
  cilium-init:
    image: registry.example/cloud-network/cilium:v1.16.5
    container_name: cilium-init
    network_mode: "host"
    privileged: true
    entrypoint: /init-container.sh
    volumes:
      - /sys/fs/bpf:/sys/fs/bpf
      - /var/run/cilium:/var/run/cilium
  cilium-install-cni:
    image: registry.example/cloud-network/cilium:v1.16.5
    container_name: cilium-install-cni
    network_mode: "host"
    privileged: true
    entrypoint: /cni-install.sh
    volumes:
      - /opt/cni/bin:/host/opt/cni/bin
      - /etc/cni/net.d:/host/etc/cni/net.d
  cilium-agent:
    image: registry.example/cloud-network/cilium:v1.16.5
    container_name: cilium-agent
    restart: always
    entrypoint: cilium-agent --config-dir=/tmp/cilium/config-map
    network_mode: "host"
    privileged: true
    volumes:
      - /etc/kubernetes:/etc/kubernetes:ro
      - ./mount/config-map:/tmp/cilium/config-map:ro
      - /var/run/cilium:/var/run/cilium
      - /sys/fs/bpf:/sys/fs/bpf
      - /var/run/docker.sock:/var/run/docker.sock:ro
    depends_on:
      - "cilium-init"
      - "cilium-install-cni"
"""


def doctor_cli(*args: str, cwd: Path | None = None) -> Any:
    """`agent-supervisor doctor ARGS` as a process."""
    proc = subprocess.run(
        dockerutil.cli_argv("doctor", *args),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
        cwd=cwd,
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    return proc.returncode, proc.stdout, errors


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """A node directory in the reference layout, with its option files and the kubeconfig
    they name (doctor looks for it on the host: here in the test's directory, not /etc)."""
    node = tmp_path / "cilium-compose"
    (node / "mount" / "config-map").mkdir(parents=True)
    (node / "mount" / "config-map" / "k8s-kubeconfig-path").write_text(
        "/etc/kubernetes/kubelet.kubeconfig\n"
    )
    kube = node / "host" / "etc" / "kubernetes"
    kube.mkdir(parents=True)
    (kube / "kubelet.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    text = REFERENCE.replace("- /etc/kubernetes:", f"- {kube}:")
    (node / "docker-compose.yaml").write_text(text)
    return node / "docker-compose.yaml"


def host_cfg(tmp_path: Path, **overrides: object) -> Config:
    """The host's configuration as doctor sees it: defaults, and the agent's container
    (docker.container, which the shipped layout's gate gets from its environment), unless
    told otherwise (None: not set)."""
    empty = tmp_path / "host-config.toml"
    empty.touch()
    settings: dict[str, object] = {"docker.container": "cilium-agent", **overrides}
    return load_config(
        empty, env={}, overrides={k: v for k, v in settings.items() if v is not None}
    )


def checks(problems: list[Any]) -> list[str]:
    """The check ids of a list of problems, in order."""
    return [p.check for p in problems]


# --- the two files the issue names --------------------------------------------------------------


def test_reference_layout_is_flagged_with_fixes(reference: Path) -> None:
    """The reference layout: restart: always, no gate, no supervisor; each with a fix."""
    code, out, errors = doctor_cli("--compose-file", str(reference))
    assert code == 1
    assert errors == []
    assert "3 problems that would bypass or break the gate" in out
    assert "[restart-policy] restart: always on cilium-agent" in out
    assert "[gate-missing]" in out
    assert "[supervisor-missing]" in out
    assert out.count("   fix: ") == 3
    assert 'set restart: "no" on cilium-agent' in out
    assert "service_completed_successfully" in out


def test_reference_layout_as_json(reference: Path) -> None:
    """--json gives the same problems as objects, each with its fix."""
    code, out, _ = doctor_cli("--compose-file", str(reference), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["service"] == "cilium-agent"
    assert [p["check"] for p in doc["problems"]] == [
        "restart-policy",
        "gate-missing",
        "supervisor-missing",
    ]
    assert all(p["fix"] for p in doc["problems"])


def test_shipped_compose_file_is_clean() -> None:
    """The shipped compose/docker-compose.yml (with its .env), on a host whose config names
    the agent's container, has no problem: exit 0."""
    code, out, errors = doctor_cli(
        "--compose-file", str(SHIPPED), "--set", "docker.container=cilium-agent"
    )
    assert (code, errors) == (0, [])
    assert out.strip().endswith("no problems found")


def test_reference_layout_under_systemd_needs_only_restart_no(reference: Path) -> None:
    """Under the systemd unit only the agent's restart policy is wrong in the reference."""
    code, out, _ = doctor_cli("--compose-file", str(reference), "--mode", "systemd")
    assert code == 1
    assert "1 problem that would bypass" in out
    assert "[restart-policy]" in out


# --- each problem on its own ----------------------------------------------------------------------


Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        node = doc["services"]
        for k in keys:
            node = node[k]
        node[last] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        node = doc["services"]
        for k in keys:
            node = node[k]
        del node[last]

    return edit


def _drop_volume(service: str, target: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        vols = doc["services"][service]["volumes"]
        doc["services"][service]["volumes"] = [v for v in vols if f":{target}" not in v]

    return edit


def _map_volume(service: str, target: str, fn: Callable[[str], str]) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        vols = doc["services"][service]["volumes"]
        doc["services"][service]["volumes"] = [fn(v) if f":{target}" in v else v for v in vols]

    return edit


def _drop_env(service: str, name: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        env = doc["services"][service]["environment"]
        doc["services"][service]["environment"] = [e for e in env if e.split("=")[0] != name]

    return edit


def _both(*edits: Edit) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        for e in edits:
            e(doc)

    return edit


CASES: list[tuple[str, Edit, str, str]] = [
    ("restart-always", _set("cilium-agent.restart", "always"), "restart-policy",
     "restart: always on cilium-agent"),
    ("restart-unless-stopped", _set("cilium-agent.restart", "unless-stopped"), "restart-policy",
     "restart: unless-stopped"),
    ("deploy-restart-policy",
     _both(_drop("cilium-agent.restart"),
           _set("cilium-agent.deploy", {"restart_policy": {"condition": "any"}})),
     "restart-policy", "restart: always on cilium-agent"),
    ("gate-started-only", _set("cilium-agent.depends_on.gate", {"condition": "service_started"}),
     "gate-not-wired", "as soon as the gate container starts"),
    ("gate-not-a-dependency", _drop("cilium-agent.depends_on.gate"), "gate-not-wired",
     "does not depend on the gate service gate"),
    ("no-gate-service", _both(_drop("cilium-agent.depends_on.gate"), _drop("gate")),
     "gate-missing", "starts cilium-agent without asking the gate"),
    ("gate-without-state", _drop_volume("gate", "/var/lib/agent-supervisor"), "state-dir",
     "every start looks like the first"),
    ("gate-state-read-only",
     _map_volume("gate", "/var/lib/agent-supervisor", lambda v: v + ":ro"), "state-dir",
     "mounted read-only"),
    ("gate-without-config", _drop_volume("gate", "/etc/agent-supervisor:ro"), "cluster-size",
     "gets no cluster size"),
    ("agent-without-options", _drop_volume("cilium-agent", "/tmp/cilium/config-map:ro"),
     "agent-config-dir", "--config-dir=/tmp/cilium/config-map, which is not mounted"),
    ("agent-without-credentials", _drop_volume("cilium-agent", "/etc/cilium/pki:ro"),
     "agent-credentials", "mounts no kubeconfig or certificate directory"),
    ("no-supervisor", _drop("supervisor"), "supervisor-missing",
     "nothing restarts cilium-agent after it exits"),
    ("supervisor-without-socket", _drop_volume("supervisor", "/var/run/docker.sock"),
     "docker-socket", "does not mount the Docker socket"),
    ("supervisor-not-restarted", _set("supervisor.restart", "no"), "supervisor-restart",
     "nothing restarts the agent after its next exit"),
    ("supervisor-watches-another",
     _set("supervisor.command", ["run", "--container", "other-agent"]), "supervisor-target",
     "watches container 'other-agent'"),
    ("supervisor-own-state",
     _map_volume("supervisor", "/var/lib/agent-supervisor",
                 lambda v: "/srv/other-state:/var/lib/agent-supervisor"),
     "state-dir", "neither sees the other's starts"),
    ("agent-not-after-supervisor", _drop("cilium-agent.depends_on.supervisor"),
     "supervisor-order", "the deliberate stop of cilium-agent is never recorded"),
    ("supervisor-after-agent",
     _both(_drop("cilium-agent.depends_on.supervisor"),
           _set("supervisor.depends_on", {"cilium-agent": {"condition": "service_started"}})),
     "supervisor-order", "supervisor depends on cilium-agent: compose stops supervisor first"),
    ("supervisor-waits-for-gate",
     _set("supervisor.depends_on", {"gate": {"condition": "service_completed_successfully"}}),
     "supervisor-order", "when the gate is interrupted"),
    ("gate-without-project", _drop_volume("gate", "/run/agent-supervisor/compose:ro"),
     "gate-project-files", "cannot read the project's compose files"),
    ("gate-with-another-project",
     _map_volume("gate", "/run/agent-supervisor/compose:ro",
                 lambda v: "/srv/elsewhere:/run/agent-supervisor/compose:ro"),
     "gate-project-files", "mounts /srv/elsewhere at /run/agent-supervisor/compose"),
    ("gate-without-variables", _drop_env("gate", "CILIUM_IMAGE"), "gate-variables",
     "uses CILIUM_IMAGE, which gate does not get"),
]  # fmt: skip


def _shipped_doc() -> dict[str, Any]:
    doc = yaml.safe_load(SHIPPED.read_text())
    assert isinstance(doc, dict)
    return doc


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "docker-compose.yml") -> Path:
    d = tmp_path / "node"
    d.mkdir(exist_ok=True)
    shutil.copy(REPO / "compose" / ".env", d / ".env")
    path = d / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("case", "edit", "check", "text"), CASES, ids=[c[0] for c in CASES])
def test_each_problem_is_found_alone_with_its_fix(
    case: str, edit: Edit, check: str, text: str, tmp_path: Path
) -> None:
    """One change to the shipped file gives exactly the one problem it causes, with a fix."""
    doc = copy.deepcopy(_shipped_doc())
    edit(doc)
    compose = load_compose(_write(tmp_path, doc), env={})
    problems = diagnose(compose, cfg=host_cfg(tmp_path))
    assert checks(problems) == [check], problems
    assert text in problems[0].problem
    assert problems[0].fix


def test_the_shipped_file_is_clean_by_the_api(tmp_path: Path) -> None:
    """The unchanged shipped document is clean: the cases above start from a clean base."""
    compose = load_compose(_write(tmp_path, _shipped_doc()), env={})
    assert diagnose(compose, cfg=host_cfg(tmp_path)) == []


def test_override_file_beside_is_merged(tmp_path: Path) -> None:
    """docker-compose.override.yml re-adding restart: always (compose merges it) is caught."""
    path = _write(tmp_path, _shipped_doc())
    (path.parent / "docker-compose.override.yml").write_text(
        "services:\n  cilium-agent:\n    restart: always\n"
    )
    compose = load_compose(path, env={})
    assert compose.override is not None
    assert checks(diagnose(compose, cfg=host_cfg(tmp_path))) == ["restart-policy"]


def test_kubeconfig_from_the_option_files_must_be_mounted(reference: Path, tmp_path: Path) -> None:
    """k8s-kubeconfig-path read from the node's option files must lie on an agent mount."""
    (reference.parent / "mount" / "config-map" / "k8s-kubeconfig-path").write_text(
        "/etc/cilium/agent.kubeconfig\n"
    )
    problems = diagnose(load_compose(reference, env={}), mode="systemd", cfg=host_cfg(tmp_path))
    assert checks(problems) == ["restart-policy", "agent-credentials"]
    assert "/etc/cilium/agent.kubeconfig" in problems[1].problem


def test_gate_must_see_the_certificate_it_checks(tmp_path: Path) -> None:
    """With identity in the host's config, the gate needs the certificate mounted."""
    cfg = host_cfg(
        tmp_path,
        **{"identity.cert": "/etc/kubernetes/pki/agent.crt", "identity.key": "/etc/cilium/pki/k"},
    )
    compose = load_compose(_write(tmp_path, _shipped_doc()), env={})
    problems = diagnose(compose, cfg=cfg)
    assert checks(problems) == ["gate-credentials"]
    assert "/etc/kubernetes/pki/agent.crt" in problems[0].problem


def test_the_agents_container_must_be_in_the_hosts_config(tmp_path: Path) -> None:
    """docker.container only in the gate's environment: the host's status cannot ask Docker
    (and calls a healthy agent failed); the fix is the one config.toml."""
    compose = load_compose(_write(tmp_path, _shipped_doc()), env={})
    problems = diagnose(compose, cfg=host_cfg(tmp_path, **{"docker.container": None}))
    assert checks(problems) == ["docker-container"]
    assert "set only in gate's environment" in problems[0].problem
    assert '[docker] container = "cilium-agent"' in problems[0].fix


def test_host_state_dir_must_be_the_gates(tmp_path: Path) -> None:
    """Operators' commands on the host must use the directory the containers mount."""
    compose = load_compose(_write(tmp_path, _shipped_doc()), env={})
    problems = diagnose(compose, cfg=host_cfg(tmp_path, state_dir="/srv/elsewhere"))
    assert checks(problems) == ["state-dir"]
    assert "would not reach it" in problems[0].problem


def test_systemd_mode_flags_a_second_supervisor(tmp_path: Path) -> None:
    """Under the systemd unit, a supervisor service in the file would double the restarts."""
    compose = load_compose(_write(tmp_path, _shipped_doc()), env={})
    assert checks(diagnose(compose, mode="systemd", cfg=host_cfg(tmp_path))) == ["two-supervisors"]
    assert checks(diagnose(compose, mode="daemon", cfg=host_cfg(tmp_path))) == ["two-supervisors"]


def test_environment_values_come_from_dotenv(tmp_path: Path) -> None:
    """.env beside the file feeds interpolation and pass-through environment entries."""
    path = _write(tmp_path, _shipped_doc())
    (path.parent / ".env").write_text(
        'AGENT_SUPERVISOR_STATE_DIR="/srv/state" # comment\n'
        "export AGENT_SUPERVISOR_CLUSTER_SIZE=7\n"
    )
    compose = load_compose(path, env={})
    gate = compose.services["gate"]
    assert any(m.source == "/srv/state" for m in mounts(gate, compose.directory))
    assert compose.env["AGENT_SUPERVISOR_CLUSTER_SIZE"] == "7"


# --- reading compose files ---------------------------------------------------------------------


def test_interpolation_follows_compose() -> None:
    """$VAR, ${VAR}, defaults with and without ':', alternatives and $$ work as in compose."""
    env = {"A": "a", "E": ""}
    assert interpolate("$A-${A}", env, "f") == "a-a"
    assert interpolate("${E:-d} ${E-d} ${U-d} ${U:-d}", env, "f") == "d  d d"
    assert interpolate("${A:+x}${E:+x}${E+y}", env, "f") == "xy"
    assert interpolate("$$A costs $$5", env, "f") == "$A costs $5"
    assert interpolate("${U}", env, "f") == ""
    with pytest.raises(ConfigError, match="required variable U is not set: set U"):
        interpolate("${U:?set U}", env, "f")
    with pytest.raises(ConfigError, match="required variable E"):
        interpolate("${E:?}", env, "f")
    assert interpolate("${E?}", env, "f") == ""


def test_dotenv_parsing(tmp_path: Path) -> None:
    """Comments, blank lines, quotes and `export` in .env are read as compose reads them."""
    f = tmp_path / ".env"
    f.write_text("# c\n\nA=1\nexport B='two words'\nC=\"x\"\nD=3 # note\nbad line\n")
    assert read_dotenv(f) == {"A": "1", "B": "two words", "C": "x", "D": "3"}
    assert read_dotenv(tmp_path / "missing") == {}


def test_restart_policy_reading() -> None:
    """No restart key is "no"; YAML's unquoted no is "no"; deploy conditions map to Docker's."""
    assert restart_policy({}) == "no"
    assert restart_policy({"restart": False}) == "no"
    assert restart_policy({"restart": '"no"'}) == "no"
    assert restart_policy({"restart": "on-failure:3"}) == "on-failure:3"
    assert restart_policy({"deploy": {"restart_policy": {"condition": "on-failure"}}}) == (
        "on-failure"
    )
    assert restart_policy({"deploy": {"restart_policy": {"condition": "none"}}}) == "no"


def test_long_volume_syntax_is_understood(tmp_path: Path) -> None:
    """Long-form volumes (type/source/target/read_only) count like the short ones."""
    svc = {
        "volumes": [
            {"type": "bind", "source": "./state", "target": "/var/lib/agent-supervisor"},
            {"type": "volume", "source": "named", "target": "/data", "read_only": True},
            {"type": "tmpfs", "target": "/tmp"},
            "/anon",
        ]
    }
    ms = mounts(svc, tmp_path)
    assert [(m.kind, m.source, m.read_only) for m in ms] == [
        ("bind", str(tmp_path / "state"), False),
        ("volume", "named", True),
        ("tmpfs", None, False),
        ("anonymous", None, False),
    ]


# --- bad input: one line, exit 78 (or 2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("services: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level is not a mapping"),
        ("version: '2'\n", "no 'services:' mapping"),
        ("services:\n  a: 3\n", "service 'a' is not a mapping"),
        ("services:\n  a:\n    image: ${IMG:?set IMG}\n", "required variable IMG is not set"),
        ("\xff\xfe", "not UTF-8 text"),
    ],
    ids=["yaml", "list", "no-services", "bad-service", "required-variable", "binary"],
)
def test_invalid_compose_file_is_one_line_78(content: str, text: str, tmp_path: Path) -> None:
    """A file compose could not use: exit 78 and one line naming the file and the fault."""
    f = tmp_path / "docker-compose.yml"
    f.write_bytes(content.encode("latin-1"))
    code, out, errors = doctor_cli("--compose-file", str(f))
    assert code == 78
    assert out == ""
    assert len(errors) == 1
    assert str(f) in errors[0]
    assert text in errors[0]


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error says where it is."""
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  a:\n    image: x\n   bad: [\n")
    code, _, errors = doctor_cli("--compose-file", str(f))
    assert code == 78
    assert "at line" in errors[0]


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--compose-file", "/nonexistent/compose.yml"], 78, "compose file not found"),
        (["--compose-file", "/"], 78, "is a directory"),
        (["--compose-file", str(SHIPPED), "--service", "nope"], 78, "no service 'nope'"),
        (["--compose-file", str(SHIPPED), "--mode", "k8s"], 2, "--mode 'k8s'"),
    ],
    ids=["missing", "directory", "unknown-service", "bad-mode"],
)
def test_bad_arguments_are_one_line(args: list[str], code: int, text: str) -> None:
    """Missing file, a directory, an unknown service, an unknown mode: one line each."""
    rc, out, errors = doctor_cli(*args)
    assert rc == code
    assert out == ""
    assert len(errors) == 1
    assert text in errors[0]


def test_service_is_found_by_its_command(tmp_path: Path) -> None:
    """Without a service named cilium-agent, the one running cilium-agent is the agent."""
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  agent:\n    image: x\n    entrypoint: cilium-agent --debug\n")
    problems = diagnose(load_compose(f, env={}), mode="systemd", cfg=host_cfg(tmp_path))
    assert checks(problems) == ["agent-credentials"]
    assert problems[0].service == "agent"


# --- the Python environment: is `supervisor` ours? ----------------------------------------------


def _dist_info(site: Path, name: str, version: str, entry_points: str) -> None:
    """A minimal installed distribution providing the top-level package ``supervisor``."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text("supervisor\n")
    (info / "entry_points.txt").write_text(entry_points)
    (info / "RECORD").write_text("supervisor/__init__.py,,\n")


SUPERVISORD_ENTRY_POINTS = "[console_scripts]\nsupervisord = supervisor.supervisord:main\n"
OUR_ENTRY_POINTS = "[console_scripts]\nagent-supervisor = supervisor.cli.app:main\n"


def test_supervisord_in_the_same_environment_is_named_with_the_fix(tmp_path: Path) -> None:
    """supervisord's distribution beside ours, both providing `supervisor`: one problem line
    naming it, with the fix (a virtual environment of its own)."""
    from importlib import metadata

    from supervisor.containers.doctor import shadowing

    site = tmp_path / "site-packages"
    _dist_info(site, "agent-start-gate", "0.1.0", OUR_ENTRY_POINTS)
    _dist_info(site, "supervisor", "4.2.5", SUPERVISORD_ENTRY_POINTS)
    problem = shadowing(metadata.distributions(path=[str(site)]), tmp_path / "pkg")
    assert problem is not None
    assert problem.check == "supervisor-shadowed"
    assert f"supervisor 4.2.5 ({site})" in problem.problem
    assert "\n" not in problem.problem + problem.fix
    assert "python3 -m venv /opt/agent-supervisor" in problem.fix


def test_supervisord_modules_in_our_package_directory_are_named(tmp_path: Path) -> None:
    """supervisord installed over our package directory (its modules in it): named too."""
    from importlib import metadata

    from supervisor.containers.doctor import shadowing

    site = tmp_path / "site-packages"
    _dist_info(site, "agent-start-gate", "0.1.0", OUR_ENTRY_POINTS)
    (site / "supervisor").mkdir()
    (site / "supervisor" / "supervisord.py").write_text("")
    problem = shadowing(metadata.distributions(path=[str(site)]), site / "supervisor")
    assert problem is not None
    assert "supervisord.py" in problem.problem


def test_this_project_alone_is_not_a_problem(tmp_path: Path) -> None:
    """Our own distribution, and this very environment, shadow nothing."""
    from importlib import metadata

    from supervisor.containers.doctor import shadowing

    site = tmp_path / "site-packages"
    _dist_info(site, "agent-start-gate", "0.1.0", OUR_ENTRY_POINTS)
    assert shadowing(metadata.distributions(path=[str(site)]), tmp_path / "pkg") is None
    assert shadowing() is None


def test_report_lists_what_is_fine_before_the_verdict(reference: Path) -> None:
    """The text report starts with what doctor checked and found fine (the agent's options
    and kubeconfig here), then its notes (no probe configured), then the problems, each with
    its fix."""
    code, out, _ = doctor_cli("--compose-file", str(reference))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ok: cilium-agent reads 1 option file from ")
    assert lines[1].startswith("ok: cilium-agent's kubeconfig /etc/kubernetes/kubelet.kubeconfig")
    assert lines[2].startswith("note: no control-plane probe is configured")
    assert lines[3].endswith("3 problems that would bypass or break the gate")


def test_cluster_size_only_in_dotenv_is_a_problem_for_the_host(tmp_path: Path) -> None:
    """The gate's size from .env while this host has none: the host's status and operator
    commands would exit 78; the fix is the one config.toml both read."""
    path = _write(tmp_path, _shipped_doc())
    with (path.parent / ".env").open("a") as env:
        env.write("AGENT_SUPERVISOR_CLUSTER_SIZE=1000\n")
    problems = diagnose(load_compose(path, env={}), cfg=host_cfg(tmp_path))
    assert checks(problems) == ["cluster-size"]
    assert "status, override and hold here exit 78" in problems[0].problem
    assert "config.toml" in problems[0].fix
    assert diagnose(load_compose(path, env={}), cfg=host_cfg(tmp_path, cluster_size=1000)) == []


def test_mounted_config_without_cluster_size_is_a_problem(tmp_path: Path) -> None:
    """The gate's config.toml on this host sets no cluster_size: the gate would exit 78."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.toml").write_text('node_name = "n1"\n')
    path = _write(tmp_path, _shipped_doc())
    with (path.parent / ".env").open("a") as env:
        env.write(f"AGENT_SUPERVISOR_CONFIG_DIR={etc}\n")
    problems = diagnose(load_compose(path, env={}), cfg=host_cfg(tmp_path))
    assert checks(problems) == ["cluster-size", "cluster-size"]
    assert all("sets no cluster_size" in p.problem for p in problems)
    (etc / "config.toml").write_text("cluster_size = 3\n")
    assert diagnose(load_compose(path, env={}), cfg=host_cfg(tmp_path)) == []


def test_the_shipped_file_is_for_compose_mode_only(tmp_path: Path) -> None:
    """The README's files per mode: the shipped file is clean in compose mode; under systemd
    or the host's daemon its supervisor service is one restarter too many, and without its
    gate and supervisor services (mode 1 and 2's file) it is clean there."""
    compose = load_compose(_write(tmp_path, _shipped_doc()), env={})
    assert diagnose(compose, mode="compose", cfg=host_cfg(tmp_path)) == []
    assert checks(diagnose(compose, mode="systemd", cfg=host_cfg(tmp_path))) == ["two-supervisors"]
    assert checks(diagnose(compose, mode="daemon", cfg=host_cfg(tmp_path))) == ["two-supervisors"]
    doc = _shipped_doc()
    del doc["services"]["gate"], doc["services"]["supervisor"]
    del doc["services"]["cilium-agent"]["depends_on"]["gate"]
    plain = load_compose(_write(tmp_path, doc), env={})
    assert diagnose(plain, mode="systemd", cfg=host_cfg(tmp_path)) == []
    assert diagnose(plain, mode="daemon", cfg=host_cfg(tmp_path)) == []


@pytest.mark.parametrize(
    ("urls", "note"),
    [
        ((), "no control-plane probe is configured"),
        (("https://10.0.0.1:6443/readyz",), "exempt from API Priority and Fairness"),
        (("https://10.0.0.1:6443/apis/cilium.io/v2/ciliumnodes?limit=1",), None),
        (("https://10.0.0.1:2379/v3/kv/range?key=cilium/&prefix=true",), None),
    ],
)
def test_doctor_warns_about_a_probe_that_is_missing_or_cannot_see_load(
    urls: tuple[str, ...], note: str | None
) -> None:
    """Issue 15: doctor warns when no probe is configured, or when it asks /readyz (exempt
    from APF: never "loaded"); a list under the agents' FlowSchema or an etcd range is fine."""
    from supervisor.containers.doctor import probe_notes
    from supervisor.storage.config import Config, ProbeConfig

    notes = probe_notes(Config(cluster_size=10, probe=ProbeConfig(urls=urls)))
    if note is None:
        assert notes == ()
    else:
        assert len(notes) == 1 and note in notes[0]
    assert probe_notes(None) == ()


@pytest.mark.parametrize(("status", "broken"), [(403, True), (200, False), (503, False)])
def test_doctor_asks_the_probe_and_names_a_broken_one(
    tmp_path: Path, status: int, broken: bool
) -> None:
    """Invariant 11: doctor asks the probe once against a real server; a broken answer (403:
    credentials) is a problem with its fix, an answer (ready, or down: the control plane, not
    the probe) is fine."""
    import http.server
    import threading

    from supervisor.containers.doctor import examine
    from supervisor.storage.config import Config, ProbeConfig

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
        cfg = Config(cluster_size=10, probe=ProbeConfig(urls=(url,)), state_dir=tmp_path / "s")
        report = examine(load_compose(_write(tmp_path, _shipped_doc()), env={}), cfg=cfg)
    finally:
        server.shutdown()
        server.server_close()
    problems = [p for p in report.problems if p.check == "probe-broken"]
    assert bool(problems) is broken
    if broken:
        assert "HTTP 403" in problems[0].problem and "identity.ca" in problems[0].fix
    else:
        assert any(url in line for line in report.fine)
