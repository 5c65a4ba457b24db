"""``migrate``: gate a node's existing compose deployment, keeping everything it has.

The node's compose file (the reference layout of ctripcloud/cilium-compose, or any other) is
never edited. Beside it goes an override file, ``docker-compose.agent-supervisor.yml``, that
compose merges with the original (``docker compose -f original -f override up -d``). Why an
override rather than a new complete file: what the override does not name, compose takes from
the original as it is, so every service, image (the node's own dated tag, never a newer one),
entrypoint (``/cni-install.sh`` stays), environment variable and mount is kept by
construction, and an upgrade of the original later needs no second edit. The override holds
only what the gate needs:

- the agent's ``restart: "no"`` (Docker's own restarts bypass any hook);
- in ``compose`` mode (deployment mode 3) the ``gate`` service (``gate --wait``, the host's
  state and configuration directories, and the project directory read-only at
  ``/run/agent-supervisor/compose`` with ``COMPOSE_FILE`` and every variable the agent's
  definition uses passed through, so that it sees when an ``up -d`` is about to replace the
  running agent) with the agent's ``depends_on: service_completed_successfully``, and the
  ``supervisor`` service (``run --container``) that owns later restarts and records every
  stop: the agent depends on it (``service_started``), so compose starts it first and stops
  it last, and it waits for no gate;
- a ``container_name`` for the agent only when it has none (the gate and the supervisor find
  the container by name).

The cluster size and the agent's container (``docker.container``) come from one place, the
configuration file (default ``/etc/agent-supervisor/config.toml``), which the host's commands
read and the containers mount read-only: migrate writes both there. The plan is a value
(:class:`Migration`): its text, its diff and its commands are computed without touching
anything; :func:`write` writes the file (atomically, and only when it changed, so running
migrate again changes nothing).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from supervisor.base.errors import ConfigError, StateError
from supervisor.base.files import atomic_write
from supervisor.containers.compose import (
    DOCKER_SOCKET,
    MIGRATE_OVERRIDE,
    Compose,
    agent_service,
    as_mapping,
    depends_condition,
    load_compose,
    restart_policy,
    roles,
    variables_used,
    with_override,
)
from supervisor.containers.doctor import Mode, file_cluster_size, file_docker_container
from supervisor.containers.recreate import COMPOSE_MOUNT
from supervisor.storage.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, Config

#: The supervisor image's tag: the README's build command and compose/.env use the same.
DEFAULT_IMAGE: Final = "agent-supervisor:0.1.0"
GATE_SERVICE: Final = "gate"
DAEMON_SERVICE: Final = "supervisor"
#: Where the state and configuration directories are inside the supervisor's containers.
STATE_TARGET: Final = str(DEFAULT_STATE_DIR)
CONFIG_TARGET: Final = str(DEFAULT_CONFIG_PATH.parent)
#: The first line of every file migrate writes: migrate overwrites only a file that has it.
MARKER: Final = "# Written by agent-supervisor migrate"


@dataclass(frozen=True, slots=True)
class Settings:
    """What the override must say beyond the compose file: the mode, the agent's state name,
    the supervisor's image, and the host's state directory and configuration file."""

    mode: Mode = "compose"
    agent: str = "cilium-agent"
    service: str | None = None
    image: str = DEFAULT_IMAGE
    state_dir: Path = DEFAULT_STATE_DIR
    config_file: Path = DEFAULT_CONFIG_PATH
    identity_dirs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Migration:
    """The plan: the deployment before and after, and the override file that makes it."""

    before: Compose
    after: Compose
    service: str
    container: str
    out: Path
    text: str
    existing: str | None
    settings: Settings
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether writing would change the file (False when migrate already wrote this)."""
        return self.existing != self.text

    @property
    def files(self) -> tuple[Path, ...]:
        """The ``-f`` files of the migrated deployment, in order."""
        return self.after.files

    def diff(self) -> str:
        """A unified diff of what compose runs, before and after (services, normalized)."""
        before = render_config(self.before).splitlines(keepends=True)
        after = render_config(self.after).splitlines(keepends=True)
        names = " + ".join(p.name for p in self.after.files)
        return "".join(
            difflib.unified_diff(
                before,
                after,
                fromfile=f"{self.before.path} (what compose runs now)",
                tofile=f"{names} (after migrate)",
            )
        )

    def commands(self) -> list[str]:
        """What to run next, for the mode: check, start, keep using both files, undo."""
        cd = f"cd {shlex.quote(str(self.before.directory))} && "
        both = " ".join(f"-f {shlex.quote(self._rel(p))}" for p in self.files)
        old = " ".join(f"-f {shlex.quote(self._rel(p))}" for p in self.before.files)
        check = " ".join(f"--compose-file {shlex.quote(str(p.absolute()))}" for p in self.files)
        env_file = self.before.directory / ".env"
        compose_file = ":".join(self._rel(p) for p in self.files)
        mode = self.settings.mode
        lines = [f"check:  agent-supervisor doctor {check} --mode {mode}"]
        if mode == "compose":
            lines += [
                f"start:  {cd}docker compose {both} up -d",
                f"        (docker-compose 1.29: {cd}docker-compose {both} up -d)",
            ]
        elif mode == "systemd":
            lines.append("start:  systemctl restart cilium-agent.service (with COMPOSE_FILE below)")
        else:
            lines += [
                f"now:    docker update --restart=no {self.container}",
                f"start:  agent-supervisor run --agent {self.settings.agent} "
                f"--container {self.container} (or agent-supervisor.service)",
            ]
        lines.append(
            f"always: COMPOSE_FILE={compose_file} in {env_file}, so that a plain "
            "'docker compose up' (and the systemd unit) uses both files"
        )
        if mode == "compose":
            lines.append(f"undo:   {cd}docker compose {old} up -d --remove-orphans")
        else:
            policy = restart_policy(self.before.services[self.service])
            lines.append(
                f"undo:   docker update --restart={policy} {self.container}, and drop COMPOSE_FILE"
            )
        return lines

    def _rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.before.directory))
        except ValueError:
            return str(path.resolve())


# --- the plan -----------------------------------------------------------------------------------


def _agent_changes(name: str, svc: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    changes: dict[str, Any] = {"restart": "no"}
    deploy = svc.get("deploy")
    if isinstance(deploy, dict) and isinstance(deploy.get("restart_policy"), dict):
        changes["deploy"] = {**deploy, "restart_policy": {"condition": "none"}}
    if not svc.get("container_name"):
        changes["container_name"] = name
    if settings.mode == "compose":
        changes["depends_on"] = {
            GATE_SERVICE: {"condition": "service_completed_successfully"},
            # Started first and stopped last: it records every stop of the agent, `down`'s too.
            DAEMON_SERVICE: {"condition": "service_started"},
        }
    return changes


def _supervisor_volumes(settings: Settings) -> list[str]:
    """The state directory (read-write), the configuration and identity (read-only), Docker."""
    volumes = [
        f"{settings.state_dir}:{STATE_TARGET}",
        f"{settings.config_file.parent}:{CONFIG_TARGET}:ro",
    ]
    volumes += [f"{d}:{d}:ro" for d in settings.identity_dirs]
    return [*volumes, f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"]


def _supervisor_environment(settings: Settings) -> dict[str, str]:
    """Only what config.toml cannot say (where it is). The agent's container is
    ``docker.container`` there, which the host's commands read too."""
    env: dict[str, str] = {}
    if settings.config_file.name != DEFAULT_CONFIG_PATH.name:
        env["AGENT_SUPERVISOR_CONFIG"] = f"{CONFIG_TARGET}/{settings.config_file.name}"
    return env


@dataclass(frozen=True, slots=True)
class Project:
    """What the gate service needs to see what ``up`` is about to create: the project
    directory (its files and .env) and the variables the agent's definition uses."""

    directory: Path
    variables: tuple[str, ...]


def _gate(settings: Settings, project: Project) -> dict[str, Any]:
    env = [f"{k}={v}" for k, v in _supervisor_environment(settings).items()]
    # Passed through from the shell of `docker compose up` (set there, they reach the gate):
    # the files it reads when COMPOSE_FILE names them (else the gate takes the ones compose
    # recorded on the running agent), and the variables the agent's definition uses.
    env += ["COMPOSE_FILE", "COMPOSE_PATH_SEPARATOR", *project.variables]
    return {
        "image": settings.image,
        "command": ["gate", "--wait", "--agent", settings.agent],
        "network_mode": "host",
        "restart": "no",
        "environment": env,
        "volumes": [*_supervisor_volumes(settings), f"{project.directory}:{COMPOSE_MOUNT}:ro"],
    }


def _daemon(settings: Settings, container: str) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": settings.image,
        "command": ["run", "--agent", settings.agent, "--container", container],
        "network_mode": "host",
        # The daemon itself may be restarted by Docker: it never starts the agent ungated.
        # It depends on nothing (the gate least of all): the agent depends on it.
        "restart": "unless-stopped",
        "volumes": _supervisor_volumes(settings),
    }
    env = _supervisor_environment(settings)
    if env:
        svc["environment"] = env
    return svc


def override_services(
    name: str, svc: Mapping[str, Any], settings: Settings, project: Project
) -> dict[str, dict[str, Any]]:
    """The services of the override file for agent service ``name`` of the original."""
    container = str(svc.get("container_name") or name)
    services = {name: _agent_changes(name, svc, settings)}
    if settings.mode == "compose":
        services[GATE_SERVICE] = _gate(settings, project)
        services[DAEMON_SERVICE] = _daemon(settings, container)
    return services


def _project(before: Compose, name: str, out: Path) -> tuple[Project, tuple[str, ...]]:
    """The gate's view of the project, and notes on what it cannot see."""
    directory = before.directory
    notes = []
    for path in (*before.files, out):
        if directory not in path.resolve().parents:
            notes.append(
                f"{path} is outside the project directory {directory}: the gate service cannot "
                "read it, and cannot tell when `up -d` is about to replace the running agent"
            )
    used = variables_used(before.files, name)
    passed = tuple(v for v in used if not v.startswith(("AGENT_SUPERVISOR_", "COMPOSE_")))
    skipped = [v for v in used if v.startswith("AGENT_SUPERVISOR_")]
    if skipped:
        notes.append(
            f"{name} uses {', '.join(skipped)}, which the gate service cannot be given (its "
            "own settings have that prefix): it compares the agent with their defaults"
        )
    return Project(directory, passed), tuple(notes)


def _header(before: Compose, out: Path, settings: Settings) -> str:
    original = before.path.name
    files = " ".join(f"-f {p.name}" for p in (*before.files, out))
    return (
        f"{MARKER} (mode {settings.mode}) for {original}; running it again\n"
        f"# rewrites this file. {original} is unchanged: every service, image, entrypoint,\n"
        "# environment variable and mount comes from it; this file changes only what the gate\n"
        f"# needs. Use both: docker compose {files} up -d\n"
    )


def render_override(before: Compose, out: Path, services: Mapping[str, Any], s: Settings) -> str:
    """The override file's text (stable: the same plan gives the same bytes)."""
    import yaml

    body = yaml.safe_dump(
        {"services": dict(services)}, sort_keys=False, default_flow_style=False, width=1000
    )
    return _header(before, out, s) + body


def _check_original(before: Compose, name: str, out: Path) -> None:
    """Refuse what migrate must not touch: a deployment already running agent-supervisor,
    service names the override would take over, an output that is one of the inputs."""
    present = [r.name for r in (*roles(before, "gate"), *roles(before, "run"))]
    if present:
        raise ConfigError(
            f"{before.path}: already runs agent-supervisor (services {', '.join(present)}); "
            f"check it with: agent-supervisor doctor --compose-file {before.path}"
        )
    taken = [s for s in (GATE_SERVICE, DAEMON_SERVICE) if s in before.services]
    if taken:
        raise ConfigError(
            f"{before.path}: has a service named {taken[0]!r} that is not agent-supervisor's; "
            "rename it before migrating"
        )
    if any(out.resolve() == p.resolve() for p in before.files):
        raise ConfigError(f"--out {out}: is one of the compose files migrate reads")
    if name in (GATE_SERVICE, DAEMON_SERVICE):
        raise ConfigError(f"{before.path}: the agent's service may not be named {name!r}")


def _existing(out: Path) -> str | None:
    try:
        text = out.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--out {out}: cannot read it: {exc}") from None
    if not text.startswith(MARKER):
        raise ConfigError(
            f"--out {out}: exists and was not written by agent-supervisor migrate; move it "
            "away or give another --out"
        )
    return text


def plan(
    compose_file: str | Path,
    settings: Settings,
    out: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Migration:
    """What migrating ``compose_file`` means; ConfigError (78) for what migrate cannot do."""
    before = load_compose(compose_file, env=env)
    name = agent_service(before, settings.service)
    out = out if out is not None else before.directory / MIGRATE_OVERRIDE
    _check_original(before, name, out)
    existing = _existing(out)
    svc = before.services[name]
    project, notes = _project(before, name, out)
    services = override_services(name, svc, settings, project)
    if settings.mode != "compose":
        notes = ()
    if not svc.get("container_name"):
        notes += (
            f"{name} has no container_name: the override names its container {name!r} "
            "(the gate and the supervisor find it by name)",
        )
    return Migration(
        before=before,
        after=with_override(before, out.resolve(), services),
        service=name,
        container=str(svc.get("container_name") or name),
        out=out,
        text=render_override(before, out, services, settings),
        existing=existing,
        settings=settings,
        notes=notes,
    )


def write(migration: Migration) -> bool:
    """Write the override file (atomically); False when it was already up to date."""
    if not migration.changed:
        return False
    _write_file(migration.out, migration.text)
    return True


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` whole (0644 by default: compose and operators read it)."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, text.encode(), mode=mode)
    except OSError as exc:
        raise StateError(f"{path}: cannot write: {exc.strerror or exc}") from None


# --- the diff -----------------------------------------------------------------------------------


def _normal(svc: Mapping[str, Any]) -> dict[str, Any]:
    """A service in one canonical form, so that a diff shows changes, not spellings."""
    out = dict(svc)
    if "depends_on" in out:
        keys = sorted(str(d) for d in out["depends_on"])
        out["depends_on"] = {k: {"condition": depends_condition(svc, k)} for k in keys}
    if "environment" in out:
        out["environment"] = as_mapping(out["environment"])
    if "restart" in out:
        out["restart"] = restart_policy(svc)
    return out


def render_config(compose: Compose) -> str:
    """The deployment's services as YAML, keys sorted, one canonical form."""
    import yaml

    services = {name: _normal(svc) for name, svc in sorted(compose.services.items())}
    return yaml.safe_dump(
        {"services": services}, sort_keys=True, default_flow_style=False, width=1000
    )


# --- the cluster size: one place ----------------------------------------------------------------


def cluster_size_step(path: Path, explicit: int | None) -> int | None:
    """The size migrate must write to ``path`` (None: nothing to write); ConfigError when the
    file does not say it and nobody gave it, or when the file and ``--cluster-size`` differ.

    The file is the one place: the host's commands read it by default and the gate and
    supervisor containers mount it. An ``AGENT_SUPERVISOR_CLUSTER_SIZE`` in this shell
    reaches neither the containers nor the next login shell, so it does not count.
    """
    in_file = file_cluster_size(path)
    if explicit is None:
        if in_file is None:
            raise ConfigError(
                f"cluster_size is not set in {path}, which the host's commands and the gate and "
                "supervisor containers share: add 'cluster_size = N' there, or pass "
                "--cluster-size N and migrate writes it there"
            )
        return None
    if in_file is not None and in_file != explicit:
        raise ConfigError(
            f"{path}: cluster_size = {in_file}, but --cluster-size says {explicit}: change it "
            f"in {path}, the one place the host and the containers read"
        )
    return None if in_file == explicit else explicit


def _config_text(path: Path) -> tuple[Path, int, str]:
    """The file a config path names (symlinks followed), its mode and its text: 0644 and empty
    when it does not exist yet; StateError (one line) when it cannot be read."""
    target = Path(os.path.realpath(path))
    try:
        return target, stat.S_IMODE(target.stat().st_mode), target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return target, 0o644, ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: cannot read: {exc}") from None


def record_cluster_size(path: Path, size: int) -> None:
    """Add ``cluster_size = size`` at the top of ``path`` (created 0644 if missing), every
    other byte and the file's mode kept (a top-level key must come before the first table).
    A symlinked config file is written where it points."""
    target, mode, old = _config_text(path)
    line = f"cluster_size = {size}  # written by agent-supervisor migrate\n"
    _write_file(target, line + old, mode)


def docker_container_step(path: Path, container: str) -> str | None:
    """The ``docker.container`` migrate must write to ``path`` (None: it says so already);
    ConfigError when the file names another container."""
    in_file = file_docker_container(path)
    if in_file is None:
        return container
    if in_file != container:
        raise ConfigError(
            f"{path}: docker.container = {in_file!r}, but the agent's container in the compose "
            f"file is {container!r}: change it in {path}, the one place the host and the "
            "containers read"
        )
    return None


def record_docker_container(path: Path, container: str) -> None:
    """Add ``container = "<container>"`` to the ``[docker]`` table of ``path`` (a new table
    at the end when there is none), every other byte and the file's mode kept."""
    target, mode, old = _config_text(path)
    line = f"container = {json.dumps(container)}  # written by agent-supervisor migrate\n"
    header = re.search(r"^[ \t]*\[[ \t]*docker[ \t]*\][ \t]*(#.*)?$", old, re.MULTILINE)
    if header is not None:
        at = header.end() + 1 if header.end() < len(old) else len(old)
        text = old[:at] + ("" if old[:at].endswith("\n") else "\n") + line + old[at:]
    else:
        text = old + ("" if not old or old.endswith("\n") else "\n") + "\n[docker]\n" + line
    _write_file(target, text, mode)


def environment_only(cfg: Config) -> list[str]:
    """Keys set by ``AGENT_SUPERVISOR_*`` variables of this shell: the containers miss them."""
    return sorted(
        f"{key} comes from {src}, which the gate and supervisor containers do not see"
        for key, src in cfg.sources.items()
        if src.startswith("environment")
    )


def identity_dirs(cfg: Config) -> tuple[str, ...]:
    """Directories of the certificate, key and CA the gate checks (mounted at the same path)."""
    if cfg.identity is None:
        return ()
    paths = (cfg.identity.cert, cfg.identity.key, cfg.identity.ca)
    return tuple(sorted({str(Path(p).parent) for p in paths if p}))


__all__ = [
    "DEFAULT_IMAGE",
    "MARKER",
    "Migration",
    "Settings",
    "cluster_size_step",
    "docker_container_step",
    "environment_only",
    "identity_dirs",
    "plan",
    "record_cluster_size",
    "record_docker_container",
    "render_config",
    "write",
]
