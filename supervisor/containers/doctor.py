"""``doctor``: what in a compose deployment would bypass or break the gate, and how to fix it.

It reads the compose files as compose does (:mod:`supervisor.containers.compose`) and checks
the gated service (``cilium-agent``) and the supervisor's own services against what the gate
needs:

- *bypass*: anything that starts the agent without asking the gate (a restart policy other than
  "no", a gate that is not a ``service_completed_successfully`` dependency, a gate whose state
  does not persist or is not the supervisor's);
- *break*: anything that keeps the gate or the agent from working (no cluster size, no
  certificate, no config directory, the files the agent's options name missing from its
  mounts or from this host, no Docker socket for the supervisor);
- the Python environment: another package installed under the import name ``supervisor``
  (supervisord's) in the environment of agent-supervisor itself;
- a forgotten debug session of this node (the state directory and Docker are asked): one
  whose debug container is gone or stopped (the agent stays down and held for nothing), one
  older than a day, or a debug container that no session owns.

The agent's option files are read when they are on this host (doctor runs on the node): the
files they name (``k8s-kubeconfig-path`` and the certificates in the kubeconfig,
``kvstore-opt``'s ``etcd.config`` and the certificates in it) must be mounted in the agent's
container and exist on the host, or the agent crash-loops however well it is gated.

Every problem comes with its fix; what was checked and found fine is listed too. Exit 0 when
clean, 1 with problems, 78 when the file cannot be read as a compose file.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from supervisor.containers.compose import (
    DOCKER_SOCKET,
    MIGRATE_OVERRIDE,
    Compose,
    Mount,
    Role,
    agent_service,
    argv,
    as_mapping,
    covering,
    depends_condition,
    mounts,
    option,
    restart_policy,
    roles,
    variables_used,
)
from supervisor.containers.recreate import COMPOSE_MOUNT
from supervisor.storage.config import DEFAULT_CONFIG_PATH, Config

#: Targets that look like the agent's Kubernetes credentials when the kubeconfig path is
#: unknown (not etcd's secrets: those do not authenticate the agent to kube-apiserver).
_CREDENTIALS: Final = re.compile(r"kube|pki|cert|tls", re.IGNORECASE)
#: An option file larger than this is not an option (and is not read).
_MAX_OPTION_BYTES: Final = 64 * 1024
#: Files supervisord's ``supervisor`` package has and this project's never will.
_SUPERVISORD_MODULES: Final = ("supervisord.py", "supervisorctl.py")

Mode = Literal["compose", "systemd", "daemon"]
MODES: Final = ("compose", "systemd", "daemon")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that would bypass or break the gate, and its fix."""

    check: str
    service: str | None
    problem: str
    fix: str

    def to_json(self) -> dict[str, Any]:
        """For ``doctor --json``."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Report:
    """What doctor found: the problems, what it checked and found fine, and notes."""

    problems: tuple[Problem, ...] = ()
    fine: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class _Findings:
    """The checks' accumulator (one per :func:`examine`)."""

    problems: list[Problem] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)

    def problem(self, check: str, service: str | None, problem: str, fix: str) -> None:
        self.problems.append(Problem(check, service, problem, fix))


def _migrate_hint(compose: Compose) -> str:
    return f"agent-supervisor migrate --compose-file {compose.path} writes it as an override"


# --- the agent ------------------------------------------------------------------------------------


def _check_restart(f: _Findings, name: str, svc: Mapping[str, Any]) -> None:
    policy = restart_policy(svc)
    if policy == "no":
        f.fine.append(f'{name} has restart: "no": only the supervisor restarts it')
        return
    f.problem(
        "restart-policy",
        name,
        f"restart: {policy} on {name}: Docker restarts the agent inside the engine, "
        "behind the gate's back, on its own schedule (100 ms doubling to 1 min) in a storm",
        f'set restart: "no" on {name} (and no deploy.restart_policy); the supervisor '
        "restarts it through the gate",
    )


def _read_options(directory: Path) -> dict[str, str]:
    """The option files of ``directory``: file name -> content (stripped)."""
    out: dict[str, str] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            if entry.stat().st_size <= _MAX_OPTION_BYTES:
                out[entry.name] = entry.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
    return out


def _check_options(
    f: _Findings, name: str, ms: Sequence[Mount], config_dir: str | None
) -> dict[str, str]:
    """The agent's ``--config-dir`` is mounted; its option files, when they are on this host."""
    if config_dir is None:
        return {}
    mount = covering(ms, config_dir)
    if mount is None:
        f.problem(
            "agent-config-dir",
            name,
            f"{name} reads its options from --config-dir={config_dir}, which is not "
            "mounted: the agent starts without its configuration and fails",
            f"mount the node's option directory there read-only, e.g. "
            f"/etc/cilium/config-map:{config_dir}:ro (agent-supervisor config render "
            "writes it)",
        )
        return {}
    host = mount.host_path(config_dir)
    if host is None or not host.is_dir():
        return {}
    options = _read_options(host)
    n = len(options)
    f.fine.append(
        f"{name} reads {n} option file{'s' if n != 1 else ''} from {host} (at {config_dir})"
    )
    return options


@dataclass(frozen=True, slots=True)
class _Needed:
    """A file the agent needs, at ``path`` inside its container."""

    check: str
    label: str
    path: str
    consequence: str
    mount_fix: str


def _check_file(f: _Findings, name: str, ms: Sequence[Mount], need: _Needed) -> Path | None:
    """``need`` is mounted in the agent and, for a bind mount, exists on this host.

    Returns the file on the host when it is there."""
    mount = covering(ms, need.path)
    if mount is None:
        f.problem(
            need.check,
            name,
            f"{name}'s {need.label} is not mounted: {need.consequence}",
            need.mount_fix,
        )
        return None
    host = mount.host_path(need.path)
    if host is None:
        return None
    if not host.is_file():
        f.problem(
            need.check,
            name,
            f"{name}'s {need.label} is {host} on this host, which does not exist: "
            f"{need.consequence}",
            f"put the file at {host} (copy it from where the node kept it before), or mount "
            f"the directory that holds it at {PurePosixPath(need.path).parent}",
        )
        return None
    f.fine.append(f"{name}'s {need.label} is {host} on this host")
    return host


def _load_structured(path: Path) -> Any:
    """A YAML (or JSON) file on this host, None when it cannot be read as one."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None


def _kubeconfig_files(doc: Any, kubeconfig: str) -> list[tuple[str, str]]:
    """(what, path) of the certificate files a kubeconfig names (not its inline data)."""
    if not isinstance(doc, dict):
        return []
    found: list[tuple[str, str]] = []
    for section, inner, keys in (
        ("users", "user", ("client-certificate", "client-key")),
        ("clusters", "cluster", ("certificate-authority",)),
    ):
        for entry in doc.get(section) or []:
            body = entry.get(inner) if isinstance(entry, dict) else None
            for key in keys:
                value = body.get(key) if isinstance(body, dict) else None
                if isinstance(value, str) and value:
                    path = PurePosixPath(kubeconfig).parent / value
                    found.append((key, str(path)))
    return found


def _check_credentials(
    f: _Findings,
    name: str,
    ms: Sequence[Mount],
    options: Mapping[str, str],
    cfg: Config | None,
) -> None:
    kubeconfig = options.get("k8s-kubeconfig-path") or (
        cfg.agent.get("k8s-kubeconfig-path") if cfg is not None else None
    )
    if kubeconfig:
        consequence = "the agent cannot authenticate to kube-apiserver and fails at every start"
        host = _check_file(
            f,
            name,
            ms,
            _Needed(
                "agent-credentials",
                f"kubeconfig {kubeconfig} (k8s-kubeconfig-path)",
                kubeconfig,
                consequence,
                f"mount the directory of {kubeconfig}, with the agent's client certificate and "
                "key, read-only (e.g. /etc/cilium/pki:/etc/cilium/pki:ro)",
            ),
        )
        if host is not None:
            for what, path in _kubeconfig_files(_load_structured(host), kubeconfig):
                need = _Needed(
                    "agent-credentials",
                    f"{what} {path} (in {kubeconfig})",
                    path,
                    consequence,
                    f"mount {PurePosixPath(path).parent} read-only in {name}",
                )
                _check_file(f, name, ms, need)
    elif not any(_CREDENTIALS.search(m.target) for m in ms if m.kind == "bind"):
        f.problem(
            "agent-credentials",
            name,
            f"{name} mounts no kubeconfig or certificate directory: the agent has no identity "
            "of its own to authenticate to kube-apiserver with",
            "mount the agent's own kubeconfig, client certificate and key read-only, e.g. "
            "/etc/cilium/pki:/etc/cilium/pki:ro, and point k8s-kubeconfig-path at it",
        )


def _etcd_config_path(options: Mapping[str, str]) -> str | None:
    """``etcd.config`` of the ``kvstore-opt`` option (JSON), when the kvstore is etcd."""
    raw = options.get("kvstore-opt")
    if not raw or options.get("kvstore", "etcd") != "etcd":
        return None
    try:
        opts = json.loads(raw)
    except ValueError:
        return None
    value = opts.get("etcd.config") if isinstance(opts, dict) else None
    return value if isinstance(value, str) and value else None


def _check_etcd(f: _Findings, name: str, ms: Sequence[Mount], options: Mapping[str, str]) -> None:
    """The etcd configuration ``kvstore-opt`` names, and the certificates it names."""
    path = _etcd_config_path(options)
    if path is None:
        return
    consequence = "the agent cannot reach its kvstore and crash-loops"
    host = _check_file(
        f,
        name,
        ms,
        _Needed(
            "agent-etcd",
            f"etcd configuration {path} (kvstore-opt)",
            path,
            consequence,
            f"mount the node's etcd configuration directory at {PurePosixPath(path).parent} "
            "read-only (in the reference layout ./mount/var/lib/etcd-config)",
        ),
    )
    doc = _load_structured(host) if host is not None else None
    if not isinstance(doc, dict):
        return
    for key in ("trusted-ca-file", "ca-file", "cert-file", "key-file"):
        value = doc.get(key)
        if isinstance(value, str) and value:
            need = _Needed(
                "agent-etcd",
                f"etcd {key} {value} (in {path})",
                value,
                consequence,
                f"mount the node's etcd secrets directory at {PurePosixPath(value).parent} "
                "read-only (in the reference layout ./mount/var/lib/etcd-secrets)",
            )
            _check_file(f, name, ms, need)


def _check_agent(
    f: _Findings, compose: Compose, name: str, svc: Mapping[str, Any], cfg: Config | None
) -> None:
    _check_restart(f, name, svc)
    ms = mounts(svc, compose.directory)
    options = _check_options(f, name, ms, option(argv(svc), "--config-dir"))
    _check_credentials(f, name, ms, options, cfg)
    _check_etcd(f, name, ms, options)


# --- the gate -------------------------------------------------------------------------------------


def file_cluster_size(path: Path) -> int | None:
    """``cluster_size`` as written in a configuration file itself (None: not there, or the
    file is unreadable: loading it says why)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = data.get("cluster_size")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def file_docker_container(path: Path) -> str | None:
    """``docker.container`` as written in a configuration file itself (None: not there, or
    the file is unreadable)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    docker = data.get("docker")
    value = docker.get("container") if isinstance(docker, dict) else None
    return value if isinstance(value, str) and value else None


def _gate_snippet(compose: Compose, service: str) -> str:
    return (
        f"add a gate service running 'agent-supervisor gate --wait' (see compose/"
        f"docker-compose.yml) and to {service}: depends_on: {{gate: {{condition: "
        f"service_completed_successfully}}}}, with the host's state directory "
        f"(/var/lib/agent-supervisor) and /etc/agent-supervisor mounted in the gate; "
        f"{_migrate_hint(compose)}"
    )


def _wiring_fix(agent: str, gate: str) -> str:
    return (
        f"in {agent}: depends_on: {{{gate}: {{condition: "
        "service_completed_successfully}} (docker-compose >= 1.29 or Compose v2)"
    )


def _check_gate_wiring(
    f: _Findings, name: str, svc: Mapping[str, Any], gates: Sequence[Role]
) -> list[Role]:
    """The gates the agent waits for (``service_completed_successfully``)."""
    wired = [g for g in gates if depends_condition(svc, g.name) is not None]
    good = [g for g in wired if depends_condition(svc, g.name) == "service_completed_successfully"]
    if good:
        f.fine.append(f"{name} starts only after {good[0].name} allows it")
    elif wired:
        g = wired[0]
        f.problem(
            "gate-not-wired",
            name,
            f"{name} depends on {g.name} with condition "
            f"{depends_condition(svc, g.name)}: compose starts the agent as soon as the "
            "gate container starts, not when the gate allows",
            _wiring_fix(name, g.name),
        )
    else:
        g = gates[0]
        f.problem(
            "gate-not-wired",
            name,
            f"{name} does not depend on the gate service {g.name}: compose starts it "
            "without waiting for the gate",
            _wiring_fix(name, g.name),
        )
    return good


def _check_gate_credentials(f: _Findings, g: Role, cfg: Config | None) -> None:
    if cfg is None or cfg.identity is None:
        return
    for what, path in (
        ("certificate", cfg.identity.cert),
        ("key", cfg.identity.key),
        ("CA", cfg.identity.ca),
    ):
        if path and covering(g.mounts, path) is None:
            f.problem(
                "gate-credentials",
                g.name,
                f"the gate checks the agent's {what} {path} (identity in the "
                f"config), which is not mounted in {g.name}: the gate refuses "
                "(exit 78) and the agent never starts",
                f"mount {PurePosixPath(path).parent} read-only in {g.name} at the same path",
            )


def _check_gate(
    f: _Findings,
    compose: Compose,
    name: str,
    svc: Mapping[str, Any],
    gates: Sequence[Role],
    cfg: Config | None,
) -> None:
    if not gates:
        f.problem(
            "gate-missing",
            name,
            f"no service runs 'agent-supervisor gate': 'docker compose up' starts {name} "
            "without asking the gate",
            _gate_snippet(compose, name),
        )
        return
    good = _check_gate_wiring(f, name, svc, gates)
    for g in good or gates[:1]:
        _check_role_basics(f, g, "gate", cfg)
        _check_gate_credentials(f, g, cfg)
        _check_gate_project(f, compose, name, g)
        _check_docker_container(f, g, cfg)


def _check_gate_project(f: _Findings, compose: Compose, name: str, g: Role) -> None:
    """The gate reads the project's files and gets the variables the agent's definition uses:
    what it needs to see that an `up -d` is about to replace the running agent."""
    mount = next((m for m in g.mounts if m.target == COMPOSE_MOUNT), None)
    fix_mount = (
        f"mount the project directory read-only in {g.name}: - .:{COMPOSE_MOUNT}:ro "
        f"({_migrate_hint(compose)})"
    )
    why = (
        f"with docker-compose 1.29, an `up -d` with a new image or configuration recreates the "
        f"running {name} right after the gate said 'already running': an upgrade starts it "
        "outside the gate, every node at once"
    )
    if mount is None:
        f.problem(
            "gate-project-files",
            g.name,
            f"the gate service {g.name} cannot read the project's compose files (nothing "
            f"mounted at {COMPOSE_MOUNT}): {why}",
            fix_mount,
        )
        return
    if mount.kind == "bind" and mount.source != os.path.normpath(compose.directory):
        f.problem(
            "gate-project-files",
            g.name,
            f"the gate service {g.name} mounts {mount.source} at {COMPOSE_MOUNT}, not the "
            f"project directory {compose.directory}: {why}",
            fix_mount,
        )
        return
    passed = set(as_mapping(compose.services[g.name].get("environment")))
    used = variables_used(compose.files, name)
    missing = [
        v for v in used if v not in passed and not v.startswith(("AGENT_SUPERVISOR_", "COMPOSE_"))
    ]
    if missing:
        f.problem(
            "gate-variables",
            g.name,
            f"{name}'s definition uses {', '.join(missing)}, which {g.name} does not get: set "
            f"in the shell of `up -d` (an upgrade: CILIUM_IMAGE=... up -d), they change what "
            "compose creates without the gate seeing it",
            f"pass them through in {g.name}'s environment: " + ", ".join(f"- {v}" for v in missing),
        )
        return
    f.fine.append(f"{g.name} reads the project's files: an upgrade waits for the node's slot")


def _check_docker_container(f: _Findings, g: Role, cfg: Config | None) -> None:
    """docker.container in the one config.toml, not only in the gate's environment."""
    in_env = g.env.get("AGENT_SUPERVISOR_DOCKER_CONTAINER")
    if cfg is None or not in_env or cfg.docker_container:
        return
    where = cfg.config_file or DEFAULT_CONFIG_PATH
    f.problem(
        "docker-container",
        g.name,
        f"the agent's container ({in_env}) is set only in {g.name}'s environment "
        f"(AGENT_SUPERVISOR_DOCKER_CONTAINER): status on this host does not ask Docker, and "
        "says a healthy running agent failed (level 1)",
        f'add to {where}: [docker] container = "{in_env}" (migrate writes it)',
    )


def _check_state_mount(f: _Findings, role: Role, verb: str, cfg: Config | None) -> None:
    state_dir = role.state_dir()
    mount = covering(role.mounts, state_dir)
    if mount is None or mount.kind in ("anonymous", "tmpfs"):
        f.problem(
            "state-dir",
            role.name,
            f"the {verb}'s state directory {state_dir} is not mounted from the host in "
            f"{role.name}: it starts empty in every new container, so every start looks like "
            "the first and is allowed",
            f"mount the host's state directory there: /var/lib/agent-supervisor:{state_dir}",
        )
    elif mount.read_only:
        f.problem(
            "state-dir",
            role.name,
            f"the {verb}'s state directory {state_dir} is mounted read-only in {role.name}: "
            "the gate cannot record a start and refuses every one (exit 74)",
            f"mount {state_dir} read-write",
        )
    elif (
        cfg is not None and mount.kind == "bind" and mount.source != os.path.normpath(cfg.state_dir)
    ):
        f.problem(
            "state-dir",
            role.name,
            f"the {verb} in {role.name} keeps its state in {mount.source} on the host, but "
            f"agent-supervisor on this host uses {cfg.state_dir}: status, override and hold "
            "here would not reach it",
            f"use one directory: mount {cfg.state_dir} at {state_dir}, or set "
            f"AGENT_SUPERVISOR_STATE_DIR={mount.source} for the host's commands",
        )
    else:
        f.fine.append(f"{role.name} keeps its state in {mount.source} on the host")


def _check_role_basics(f: _Findings, role: Role, what: str, cfg: Config | None) -> None:
    _check_state_mount(f, role, "gate" if what == "gate" else "supervisor", cfg)
    _check_cluster_size(f, role, cfg)


def _check_cluster_size(f: _Findings, role: Role, cfg: Config | None) -> None:
    """The role has a cluster size, from the one place the host's commands read too."""
    if option(role.args, "--cluster-size") or role.env.get("AGENT_SUPERVISOR_CLUSTER_SIZE"):
        if cfg is not None and cfg.cluster_size is None:
            where = cfg.config_file or DEFAULT_CONFIG_PATH
            f.problem(
                "cluster-size",
                role.name,
                f"{role.name} gets its cluster size from its command line or environment "
                "(.env), which agent-supervisor on this host does not see: status, override "
                "and hold here exit 78",
                f"put 'cluster_size = N' in {where} (mounted read-only in {role.name}) and drop "
                "AGENT_SUPERVISOR_CLUSTER_SIZE from .env: one place for both",
            )
        return
    config_file = role.config_file()
    mount = covering(role.mounts, config_file)
    if mount is None:
        f.problem(
            "cluster-size",
            role.name,
            f"{role.name} gets no cluster size (no AGENT_SUPERVISOR_CLUSTER_SIZE, no "
            f"--cluster-size, and {config_file} is not mounted): the gate exits 78 and "
            "the agent never starts",
            "mount /etc/agent-supervisor read-only, with 'cluster_size = N' in its "
            "config.toml (the host's commands read the same file)",
        )
        return
    host = mount.host_path(config_file)
    if host is not None and host.is_file() and file_cluster_size(host) is None:
        f.problem(
            "cluster-size",
            role.name,
            f"{role.name} reads {config_file} ({host} on this host), which sets no "
            "cluster_size: the gate exits 78 and the agent never starts",
            f"add 'cluster_size = N' to {host} (agent-supervisor migrate --cluster-size N does)",
        )
    elif host is not None and host.is_file():
        f.fine.append(f"{role.name} reads the cluster size from {host}")


# --- the supervisor daemon ------------------------------------------------------------------------


def _check_docker_socket(f: _Findings, d: Role) -> None:
    docker_host = d.env.get("DOCKER_HOST", "")
    if docker_host.startswith(("tcp://", "ssh://")):
        return
    socket_path = docker_host.removeprefix("unix://") or DOCKER_SOCKET
    if covering(d.mounts, socket_path) is not None:
        f.fine.append(f"{d.name} reaches Docker at {socket_path}")
        return
    f.problem(
        "docker-socket",
        d.name,
        f"{d.name} does not mount the Docker socket {socket_path}: the supervisor "
        "cannot see or start the agent",
        f"mount {DOCKER_SOCKET}:{DOCKER_SOCKET} in {d.name}",
    )


def _check_supervisor_restart(f: _Findings, compose: Compose, d: Role) -> None:
    policy = restart_policy(compose.services[d.name])
    if policy not in ("no", "on-failure"):
        return
    f.problem(
        "supervisor-restart",
        d.name,
        f"{d.name} has restart: {policy}: if the "
        "supervisor stops, nothing restarts the agent after its next exit",
        f"set restart: unless-stopped on {d.name} (the supervisor, unlike the agent, "
        "may be restarted by Docker: it starts nothing ungated)",
    )


def _check_supervisor_target(f: _Findings, name: str, svc: Mapping[str, Any], d: Role) -> None:
    watched = option(d.args, "--container")
    wanted = svc.get("container_name")
    service = option(d.args, "--service")
    if watched is None:
        if service not in (None, name):
            f.problem(
                "supervisor-target",
                d.name,
                f"{d.name} watches service {service!r}, not {name}",
                f"run 'agent-supervisor run ... --service {name}'",
            )
    elif wanted is None:
        f.problem(
            "supervisor-target",
            d.name,
            f"{d.name} watches container {watched!r}, but {name} has no container_name, "
            "so its container is named by the project and may not match",
            f"set container_name: {watched} on {name}",
        )
    elif watched != wanted:
        f.problem(
            "supervisor-target",
            d.name,
            f"{d.name} watches container {watched!r}, but {name}'s container is "
            f"{wanted!r}: the agent is never restarted",
            f"run 'agent-supervisor run --container {wanted}'",
        )


def _check_order(
    f: _Findings,
    compose: Compose,
    name: str,
    svc: Mapping[str, Any],
    d: Role,
    gates: Sequence[Role],
) -> None:
    """The agent depends on the supervisor, which depends on neither the agent nor a gate."""
    dsvc = compose.services[d.name]
    after = depends_condition(dsvc, name) is not None
    if depends_condition(svc, d.name) is None or after:
        wrong = (
            f"{d.name} depends on {name}: compose stops {d.name} first at `down`"
            if after
            else f"{name} does not depend on {d.name}: compose stops {d.name} first at `down` "
            f"(or together with {name})"
        )
        f.problem(
            "supervisor-order",
            d.name,
            f"{wrong}, so the deliberate stop of {name} is never recorded and counts as a "
            "failure; every `down` and `up` raises the backoff level",
            f"in {name}: depends_on: {{{d.name}: {{condition: service_started}}}}, and no "
            f"depends_on on {name} in {d.name} (compose then starts {d.name} first and stops "
            "it last)",
        )
    else:
        f.fine.append(f"{d.name} starts before {name} and stops after it")
    waits = [g.name for g in gates if depends_condition(dsvc, g.name) is not None]
    if waits:
        f.problem(
            "supervisor-order",
            d.name,
            f"{d.name} depends on the gate service {waits[0]}: when the gate is interrupted "
            f"(killed while it waits), {d.name} never starts and nothing starts {name}",
            f"remove {waits[0]} from {d.name}'s depends_on",
        )


def _check_shared_state(f: _Findings, d: Role, gates: Sequence[Role]) -> None:
    d_mount = covering(d.mounts, d.state_dir())
    for g in gates:
        g_mount = covering(g.mounts, g.state_dir())
        if (
            g_mount is not None
            and d_mount is not None
            and g_mount.kind == d_mount.kind
            and g_mount.kind in ("bind", "volume")
            and g_mount.source != d_mount.source
        ):
            f.problem(
                "state-dir",
                d.name,
                f"the gate ({g.name}) keeps its state in {g_mount.source} and the supervisor "
                f"({d.name}) in {d_mount.source}: neither sees the other's starts, so starts "
                "are allowed twice as often",
                f"mount the same host directory in both ({g_mount.source})",
            )


def _check_daemon(
    f: _Findings,
    compose: Compose,
    name: str,
    svc: Mapping[str, Any],
    daemons: Sequence[Role],
    gates: Sequence[Role],
) -> None:
    if not daemons:
        f.problem(
            "supervisor-missing",
            name,
            f"no service runs 'agent-supervisor run': with restart: \"no\", nothing restarts "
            f"{name} after it exits",
            f"add a supervisor service running 'agent-supervisor run --container "
            f"{svc.get('container_name') or name}' with the Docker socket and the state "
            f"directory mounted (see compose/docker-compose.yml); {_migrate_hint(compose)}",
        )
        return
    if len(daemons) > 1:
        f.problem(
            "two-supervisors",
            daemons[1].name,
            f"services {', '.join(d.name for d in daemons)} all run 'agent-supervisor run': "
            "each would restart the agent",
            "keep one supervisor service",
        )
    d = daemons[0]
    _check_role_basics(f, d, "run", None)
    _check_docker_socket(f, d)
    _check_supervisor_restart(f, compose, d)
    _check_supervisor_target(f, name, svc, d)
    _check_order(f, compose, name, svc, d, gates)
    _check_shared_state(f, d, gates)


def _second_supervisors(f: _Findings, name: str, daemons: Sequence[Role], mode: Mode) -> None:
    """Under systemd or the host's daemon, a supervisor service in the file is one too many."""
    for d in daemons:
        if mode == "daemon":
            f.problem(
                "two-supervisors",
                d.name,
                f"service {d.name} runs 'agent-supervisor run' but in daemon mode "
                "agent-supervisor.service on the host supervises the agent: two supervisors "
                "would each restart it",
                f"remove service {d.name}, or use --mode compose and stop agent-supervisor.service",
            )
        else:
            f.problem(
                "two-supervisors",
                d.name,
                f"service {d.name} runs 'agent-supervisor run', but under systemd the "
                "unit (Restart=always, gated by ExecStartPre) owns restarts: both would "
                "restart the agent",
                f"remove service {d.name} (the unit runs 'up --no-deps {name}', so the "
                "gate service is skipped there)",
            )


# --- the whole deployment -------------------------------------------------------------------------


def examine(
    compose: Compose,
    service: str | None = None,
    *,
    mode: Mode = "compose",
    cfg: Config | None = None,
) -> Report:
    """Every problem of ``compose`` for gating ``service`` in ``mode``, and what is fine."""
    name = agent_service(compose, service)
    svc = compose.services[name]
    f = _Findings()
    _check_agent(f, compose, name, svc, cfg)
    gates = roles(compose, "gate")
    daemons = roles(compose, "run")
    if mode == "compose":
        _check_gate(f, compose, name, svc, gates, cfg)
        _check_daemon(f, compose, name, svc, daemons, gates)
    else:
        if mode == "daemon" and gates:
            _check_gate(f, compose, name, svc, gates, cfg)
        _second_supervisors(f, name, daemons, mode)
    if cfg is not None:
        _check_debug_sessions(f, cfg)
        _check_probe(f, cfg)
    return Report(tuple(f.problems), tuple(f.fine), (*_notes(compose), *probe_notes(cfg)))


def _check_probe(f: _Findings, cfg: Config) -> None:
    """Ask the control-plane probe once, as the gate would: a broken URL (an unknown host, a
    TLS or credentials failure, a wrong path) is a problem, since the gate then decides as if
    no probe were configured (invariant 11); a URL that answers is fine, whatever its load."""
    if not cfg.probe.urls:
        return
    from supervisor.gate.probe import probe_once

    report = probe_once(
        cfg.probe.urls, cfg.probe.timeout, cfg.identity, max_latency=cfg.probe.max_latency
    )
    for r in report.results:
        if r.answer == "broken":
            f.problem(
                "probe-broken",
                None,
                f"probe URL {r.url} cannot succeed ({r.why}): the gate decides as if no probe "
                "were configured",
                "fix probe.urls, the CA (identity.ca) or the client certificate "
                "(identity.cert/key) so that the URL answers 2xx (docs/configuration.md)",
            )
        else:
            f.fine.append(f"probe URL {r.url} answers ({r.answer}: {r.why or r.status})")


#: Paths that answer without queueing where the agents' resync queues (exempt from APF, or a
#: plain health check): a probe there sees "down" but never "loaded".
_LOAD_BLIND: Final = ("/readyz", "/livez", "/healthz", "/health")


def probe_notes(cfg: Config | None) -> tuple[str, ...]:
    """Warnings about the control-plane probe (invariant 11): none configured, or one that
    cannot see load."""
    if cfg is None:
        return ()
    if not cfg.probe.urls:
        return (
            "no control-plane probe is configured (probe.urls): a start is admitted "
            "at its slot whatever the control plane's load, and J is the whole window; point "
            "a probe at what the agents' resync uses (docs/configuration.md#the-probe)",
        )
    blind = [u for u in cfg.probe.urls if urlsplit(u).path.rstrip("/") in _LOAD_BLIND]
    return tuple(
        f"probe URL {u} answers without queueing where the agents do (/readyz is "
        "exempt from API Priority and Fairness): it sees 'down' but never 'loaded'; ask a "
        "small list under the agents' FlowSchema, or a range on etcd instead"
        for u in blind
    )


def _check_debug_sessions(f: _Findings, cfg: Config) -> None:
    """A forgotten debug session (``debug start`` without ``debug end``): its debug container
    gone or stopped, or older than a day; or a debug container with no session. Looked for
    only where the state directory exists (see :func:`supervisor.containers.debug.forgotten`)."""
    from supervisor.containers.debug import forgotten

    for found in forgotten(cfg):
        f.problem("debug-session", found.agent, found.problem, found.fix)


def diagnose(
    compose: Compose,
    service: str | None = None,
    *,
    mode: Mode = "compose",
    cfg: Config | None = None,
) -> list[Problem]:
    """Every problem of ``compose`` for gating ``service`` in ``mode``."""
    return list(examine(compose, service, mode=mode, cfg=cfg).problems)


def _notes(compose: Compose) -> tuple[str, ...]:
    beside = compose.directory / MIGRATE_OVERRIDE
    if beside.is_file() and all(p.resolve() != beside for p in compose.files):
        return (
            f"{MIGRATE_OVERRIDE} (written by migrate) is beside {compose.path.name} but not "
            f"checked: add --compose-file {beside} to check what compose runs with it",
        )
    return ()


# --- the Python environment -----------------------------------------------------------------------


def _provides_supervisor(dist: metadata.Distribution) -> bool:
    top = (dist.read_text("top_level.txt") or "").split()
    if "supervisor" in top:
        return True
    return any(PurePosixPath(str(p)).parts[:1] == ("supervisor",) for p in dist.files or ())


def _is_this_project(dist: metadata.Distribution) -> bool:
    return any(
        ep.group == "console_scripts" and ep.value.startswith("supervisor.cli")
        for ep in dist.entry_points
    )


def shadowing(
    dists: Iterable[metadata.Distribution] | None = None, package_dir: Path | None = None
) -> Problem | None:
    """A problem when something else uses the import name ``supervisor`` in this environment:
    another distribution provides it (supervisord's), or supervisord's modules sit in the
    package directory this code runs from (one installed over the other)."""
    if dists is None:
        dists = metadata.distributions()
    if package_dir is None:
        package_dir = Path(__file__).resolve().parent.parent
    others = sorted(
        {
            f"{d.metadata['Name']} {d.version} ({d.locate_file('')})"
            for d in dists
            if _provides_supervisor(d) and not _is_this_project(d)
        }
    )
    mixed = [m for m in _SUPERVISORD_MODULES if (package_dir / m).exists()]
    if not others and not mixed:
        return None
    what = (
        f"installed in the same Python environment: {', '.join(others)}"
        if others
        else f"its modules ({', '.join(mixed)}) are in {package_dir}"
    )
    return Problem(
        "supervisor-shadowed",
        None,
        f"the import package 'supervisor' of agent-supervisor is also supervisord's, and "
        f"supervisord's is {what}: one overwrites the other and either may break",
        "install agent-supervisor into a virtual environment of its own (python3 -m venv "
        "/opt/agent-supervisor; /opt/agent-supervisor/bin/pip install <its source directory "
        "or wheel>; ln -s /opt/agent-supervisor/bin/agent-supervisor /usr/local/bin/), and "
        "leave supervisord where it is",
    )


# --- rendering -----------------------------------------------------------------------------------


def render(
    compose: Compose,
    service: str,
    mode: str,
    problems: Sequence[Problem],
    fine: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The human report: what is fine, then one numbered problem per paragraph with its fix
    (the verdict line last when there is none)."""
    head = f"{compose.path}: service {service}, mode {mode}"
    if compose.override is not None:
        head += f" (with {compose.override.name})"
    extra = [p.name for p in compose.files[1:] if p != compose.override]
    if extra:
        head += f" (with {', '.join(extra)})"
    lines = [f"ok: {text}" for text in fine] + [f"note: {text}" for text in notes]
    if not problems:
        return "\n".join([*lines, f"{head}: no problems found"]) + "\n"
    n = len(problems)
    lines += [f"{head}: {n} problem{'s' if n != 1 else ''} that would bypass or break the gate", ""]
    for i, p in enumerate(problems, 1):
        lines.append(f"{i}. [{p.check}] {p.problem}")
        lines.append(f"   fix: {p.fix}")
    return "\n".join(lines) + "\n"


__all__ = [
    "MODES",
    "Mode",
    "Problem",
    "Report",
    "diagnose",
    "examine",
    "file_cluster_size",
    "file_docker_container",
    "render",
    "shadowing",
]
