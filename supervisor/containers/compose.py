"""Compose files as compose reads them, and the container a compose service names.

One model of a compose deployment for every command that reads one (``doctor``, ``migrate``,
``run --compose-file``):

- the loader: YAML, the ``.env`` beside the file, compose's ``${VAR}``, ``${VAR:-default}``,
  ``${VAR:?error}`` interpolation, several files merged in order (``-f a -f b``), and
  ``docker-compose.override.yml`` when the one file given has a default name, as compose does;
- what a service does: its mounts, its argv, its environment, its restart policy, its
  dependencies, whether it runs agent-supervisor (:class:`Role`);
- which container a service is: the project name as compose picks it, and the lookup by
  compose's labels (:class:`Target`).

Bad input is a :class:`ConfigError` (exit 78) naming the file. PyYAML and the Docker SDK are
imported lazily: the gate's import path pays for neither.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from supervisor.base.errors import ConfigError, UsageError
from supervisor.storage.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR

#: The agent's service when ``--service`` does not say.
DEFAULT_SERVICE: Final = "cilium-agent"
#: Files compose reads by default; only beside one of these is an override file merged in.
DEFAULT_FILES: Final = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES: Final = (
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)
#: The override file ``migrate`` writes beside a compose file (never a name compose reads on
#: its own: it takes effect only with ``-f original -f override``).
MIGRATE_OVERRIDE: Final = "docker-compose.agent-supervisor.yml"
MAX_COMPOSE_BYTES: Final = 4 * 1024 * 1024
DOCKER_SOCKET: Final = "/var/run/docker.sock"

PROJECT_LABEL: Final = "com.docker.compose.project"
SERVICE_LABEL: Final = "com.docker.compose.service"
ONEOFF_LABEL: Final = "com.docker.compose.oneoff"
NUMBER_LABEL: Final = "com.docker.compose.container-number"

_VAR: Final = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_VAR_EXPR: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTAINER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


# --- reading compose files -----------------------------------------------------------------------


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (comments, blank lines, quotes, ``export``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if value[:1] in ("'", '"') and (end := value.find(value[0], 1)) > 0:
            value = value[1:end]  # a quoted value, maybe followed by a comment
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if _ENV_NAME.fullmatch(key):
            out[key] = value
    return out


def interpolate(value: str, env: Mapping[str, str], where: str) -> str:
    """Compose's variable substitution: ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}``, ``${VAR:+alt}``, ``${VAR+alt}`` and ``$$``.

    An unset variable without a default is empty, as compose makes it (with a warning);
    a required one (``?``) that is missing is an error, as it is for compose.
    """

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        expr = m.group(2) if m.group(2) is not None else m.group(3)
        parsed = _VAR_EXPR.fullmatch(expr)
        if parsed is None:
            raise ConfigError(f"{where}: invalid interpolation format {m.group(0)!r}")
        return _substitute(parsed.group(1), parsed.group(2), parsed.group(3) or "", env, where)

    return _VAR.sub(sub, value)


def _substitute(name: str, op: str | None, arg: str, env: Mapping[str, str], where: str) -> str:
    """One ``${name<op>arg}``: ``-`` default, ``+`` alternative, ``?`` required; a leading
    ``:`` makes an empty value count as missing."""
    val = env.get(name)
    if op is None:
        return val or ""
    missing = val is None or (op.startswith(":") and val == "")
    kind = op[-1]
    if kind == "-":
        return arg if missing else str(val)
    if kind == "+":
        return "" if missing else arg
    if missing:
        raise ConfigError(
            f"{where}: required variable {name} is not set"
            + (f": {arg}" if arg else "")
            + " (set it in the environment or in .env)"
        )
    return str(val)


def _interpolate_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [_interpolate_tree(v, env, where) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env, f"{where}.{k}") for k, v in node.items()}
    return node


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_COMPOSE_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a compose file")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: compose file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a compose file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read compose file: {exc.strerror}") from None


def _parse_yaml(path: Path) -> Any:
    """The YAML of ``path``; ConfigError naming the line of a syntax error."""
    import yaml

    text = _read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML: {exc.problem or exc.context}{at}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


@dataclass(frozen=True, slots=True)
class Compose:
    """A compose deployment as compose would see it (interpolated, files merged in order)."""

    path: Path
    services: Mapping[str, Mapping[str, Any]]
    name: str | None = None
    dotenv: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    override: Path | None = None
    #: Every file read, in merge order: ``path``, the default override, then the extra ones.
    files: tuple[Path, ...] = ()
    #: The project directory as the host knows it, when the files are read from elsewhere (the
    #: gate service reads them where the project directory is mounted).
    project_dir: Path | None = None

    @property
    def directory(self) -> Path:
        """The project directory: relative paths in the files are relative to it."""
        return self.project_dir if self.project_dir is not None else self.path.resolve().parent


def _services(doc: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a compose file (the top level is not a mapping)")
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        raise ConfigError(
            f"{path}: not a compose file with services (no 'services:' mapping; the "
            "version 1 format is not supported)"
        )
    for name, svc in services.items():
        if not isinstance(svc, dict):
            raise ConfigError(f"{path}: service {name!r} is not a mapping")
    return {str(k): dict(v) for k, v in services.items()}


def _default_override(path: Path) -> Path | None:
    """The override file compose merges into ``path`` when ``path`` is the one file given."""
    if path.name not in DEFAULT_FILES:
        return None
    return next(
        (path.parent / c for c in OVERRIDE_FILES if (path.parent / c).is_file()),
        None,
    )


def load_compose(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str | Path] = (),
    *,
    default_override: bool = True,
    project_dir: Path | None = None,
    only: str | None = None,
) -> Compose:
    """Read ``path`` (then ``extra``, merged in order, as ``-f path -f extra...``) as compose
    would; ConfigError (78) naming the file when it cannot.

    With ``extra`` files, as with several ``-f``, compose reads no default override file; nor
    without ``default_override`` (the files are named, as by ``-f`` or ``COMPOSE_FILE``).
    ``project_dir``: the project directory as the host knows it, when the files are read from
    another place (a mount). ``only``: interpolate and keep that one service (a variable the
    others require need not be set).
    """
    path = Path(path)
    environ = os.environ if env is None else env
    dotenv = read_dotenv(path.resolve().parent / ".env")
    merged_env = {**dotenv, **environ}
    doc = _parse_yaml(path)
    services = _services(doc, path)
    override = None if extra or not default_override else _default_override(path)
    files = [path] + ([override] if override is not None else []) + [Path(p) for p in extra]
    for more in files[1:]:
        for name, svc in _services(_parse_yaml(more), more).items():
            services[name] = merge_service(services.get(name, {}), svc)
    services = {
        name: _interpolate_tree(svc, merged_env, f"{path}: services.{name}")
        for name, svc in services.items()
        if only is None or name == only
    }
    raw_name = doc.get("name")
    return Compose(
        path=path,
        services=services,
        name=interpolate(raw_name, merged_env, f"{path}: name")
        if isinstance(raw_name, str)
        else None,
        dotenv=dotenv,
        env=merged_env,
        override=override,
        files=tuple(files),
        project_dir=project_dir,
    )


def variables_used(files: Sequence[Path], service: str) -> list[str]:
    """The variables (``${VAR}``, ``$VAR``) that ``service``'s definition uses in ``files``,
    before interpolation, sorted."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for m in _VAR.finditer(node):
                expr = m.group(2) if m.group(2) is not None else m.group(3)
                parsed = _VAR_EXPR.fullmatch(expr or "")
                if parsed is not None:
                    found.add(parsed.group(1))
                    walk(parsed.group(3) or "")
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    for path in files:
        doc = _parse_yaml(path)
        services = doc.get("services") if isinstance(doc, dict) else None
        if isinstance(services, dict):
            walk(services.get(service))
    return sorted(found)


def with_override(
    compose: Compose, path: Path, services: Mapping[str, Mapping[str, Any]]
) -> Compose:
    """``compose`` with one more file merged last (``-f ... -f path``), given as its services
    (already plain values: nothing left to interpolate)."""
    merged = {name: dict(svc) for name, svc in compose.services.items()}
    for name, svc in services.items():
        merged[name] = merge_service(merged.get(name, {}), svc)
    return replace(compose, services=merged, files=(*compose.files, path))


def merge_service(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Compose's override merge, as far as doctor and migrate need it: volumes by target,
    environment and depends_on by key, everything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if key == "volumes" and isinstance(value, list) and isinstance(out.get(key), list):
            by_target = {_volume_target(v): v for v in out[key]}
            by_target.update({_volume_target(v): v for v in value})
            out[key] = list(by_target.values())
        elif key in ("environment", "depends_on") and key in out:
            merged = as_mapping(out[key])
            merged.update(as_mapping(value))
            out[key] = merged
        else:
            out[key] = value
    return out


def as_mapping(value: Any) -> dict[str, Any]:
    """A list of ``KEY=VALUE`` (or of names) as a mapping; a mapping as it is."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        text = str(item)
        key, sep, val = text.partition("=")
        out[key] = val if sep else None
    return out


# --- what a service does -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mount:
    """One volume of a service: what appears at ``target`` inside the container."""

    target: str
    source: str | None
    kind: Literal["bind", "volume", "tmpfs", "anonymous"]
    read_only: bool = False

    def covers(self, path: str) -> bool:
        """Whether ``path`` (inside the container) lies on this mount."""
        t = PurePosixPath(self.target)
        p = PurePosixPath(path)
        return p == t or t in p.parents

    def host_path(self, path: str) -> Path | None:
        """Where ``path`` (inside the container, on this mount) is on the host; None when
        the mount is not a bind mount of a host path."""
        if self.kind != "bind" or not self.source:
            return None
        rel = PurePosixPath(path).relative_to(PurePosixPath(self.target))
        return Path(self.source) / rel


def _volume_target(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("target", ""))
    parts = str(v).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def _host_path(source: str, base: Path) -> str:
    if source.startswith("~"):
        source = os.path.expanduser(source)
    path = Path(source)
    if not path.is_absolute():
        path = base / path
    return os.path.normpath(path)


def _long_mount(v: Mapping[str, Any], base: Path) -> Mount:
    kind = str(v.get("type", "volume"))
    src = v.get("source")
    target = str(v.get("target", ""))
    ro = bool(v.get("read_only", False))
    if kind == "bind" and src:
        return Mount(target, _host_path(str(src), base), "bind", ro)
    if kind == "tmpfs":
        return Mount(target, None, "tmpfs", ro)
    return Mount(target, str(src) if src else None, "volume" if src else "anonymous", ro)


def _short_mount(v: str, base: Path) -> Mount:
    parts = v.split(":")
    if len(parts) == 1:
        return Mount(parts[0], None, "anonymous")
    src, target = parts[0], parts[1]
    mode = parts[2] if len(parts) > 2 else ""
    ro = "ro" in mode.split(",")
    if src.startswith(("/", ".", "~")):
        return Mount(target, _host_path(src, base), "bind", ro)
    return Mount(target, src, "volume", ro)


def mounts(svc: Mapping[str, Any], base: Path) -> list[Mount]:
    """The service's volumes, host paths made absolute (relative to the project directory)."""
    out = [
        _long_mount(v, base) if isinstance(v, dict) else _short_mount(str(v), base)
        for v in svc.get("volumes") or []
    ]
    out += [Mount(str(t).split(":")[0], None, "tmpfs") for t in _as_list(svc.get("tmpfs"))]
    return out


def covering(ms: Sequence[Mount], path: str) -> Mount | None:
    """The mount that ``path`` lies on (the deepest one), or None."""
    hits = [m for m in ms if m.covers(path)]
    return max(hits, key=lambda m: len(m.target)) if hits else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def tokens(value: Any) -> list[str]:
    """An entrypoint or command as compose passes it: a string split shell-like, a list as
    it is."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError:
            return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def argv(svc: Mapping[str, Any]) -> list[str]:
    """entrypoint + command, as tokens (compose splits strings shell-like)."""
    return tokens(svc.get("entrypoint")) + tokens(svc.get("command"))


def supervisor_args(svc: Mapping[str, Any]) -> list[str] | None:
    """The agent-supervisor arguments a service runs, or None if it does not run it."""
    words = argv(svc)
    for i, tok in enumerate(words):
        if PurePosixPath(tok).name == "agent-supervisor":
            return words[i + 1 :]
        if tok == "-m" and words[i + 1 : i + 2] == ["supervisor"]:
            return words[i + 2 :]
    if "agent-supervisor" in str(svc.get("image", "")) and svc.get("entrypoint") is None:
        return tokens(svc.get("command"))
    return None


def subcommand(args: Sequence[str]) -> str | None:
    """The first word that is not an option."""
    return next((a for a in args if not a.startswith("-")), None)


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` (the last one wins)."""
    found = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith(name + "="):
            found = a.split("=", 1)[1]
    return found


def environment(svc: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The service's environment; a bare ``NAME`` passes the value through from compose's."""
    out: dict[str, str] = {}
    for key, val in as_mapping(svc.get("environment")).items():
        if val is None:
            if key in env:
                out[key] = env[key]
        else:
            out[key] = str(val)
    return out


def restart_policy(svc: Mapping[str, Any]) -> str:
    """The restart policy Docker will apply ("no" when none)."""
    value = svc.get("restart")
    if value is False or value is None:
        deploy = svc.get("deploy")
        policy = deploy.get("restart_policy") if isinstance(deploy, dict) else None
        if isinstance(policy, dict):
            cond = str(policy.get("condition", "any"))
            return {"any": "always", "on-failure": "on-failure"}.get(cond, "no")
        return "no"
    return str(value).strip().strip("\"'") or "no"


def depends_condition(svc: Mapping[str, Any], other: str) -> str | None:
    """How ``svc`` depends on ``other``: its condition, "service_started" for the list form,
    None when it does not."""
    deps = svc.get("depends_on")
    if isinstance(deps, list):
        return "service_started" if other in [str(d) for d in deps] else None
    if isinstance(deps, dict) and other in deps:
        spec = deps[other]
        if isinstance(spec, dict):
            return str(spec.get("condition", "service_started"))
        return "service_started"
    return None


def agent_service(compose: Compose, service: str | None) -> str:
    """The gated service: ``--service``, else ``cilium-agent``, else the one running it."""
    if service is not None:
        if service not in compose.services:
            raise ConfigError(
                f"{compose.path}: no service {service!r} (services: "
                f"{', '.join(sorted(compose.services))})"
            )
        return service
    if DEFAULT_SERVICE in compose.services:
        return DEFAULT_SERVICE
    runs_agent = [
        n
        for n, s in compose.services.items()
        if any(PurePosixPath(t).name == "cilium-agent" for t in argv(s)[:1])
    ]
    if len(runs_agent) == 1:
        return runs_agent[0]
    raise ConfigError(
        f"{compose.path}: no service named {DEFAULT_SERVICE!r}; say which service is the "
        f"agent with --service (services: {', '.join(sorted(compose.services))})"
    )


@dataclass(frozen=True, slots=True)
class Role:
    """A service that runs agent-supervisor, and what it sees."""

    name: str
    args: list[str]
    env: dict[str, str]
    mounts: list[Mount]

    def state_dir(self) -> str:
        """The state directory inside the container."""
        return os.path.normpath(
            option(self.args, "--state-dir")
            or self.env.get("AGENT_SUPERVISOR_STATE_DIR")
            or str(DEFAULT_STATE_DIR)
        )

    def config_file(self) -> str:
        """The configuration file inside the container."""
        return (
            option(self.args, "--config")
            or self.env.get("AGENT_SUPERVISOR_CONFIG")
            or str(DEFAULT_CONFIG_PATH)
        )


def roles(compose: Compose, which: str) -> list[Role]:
    """The services that run ``agent-supervisor <which>`` (``gate``, ``run``), in file order."""
    out = []
    for name, svc in compose.services.items():
        args = supervisor_args(svc)
        if args is not None and subcommand(args) == which:
            out.append(
                Role(name, args, environment(svc, compose.env), mounts(svc, compose.directory))
            )
    return out


# --- which container a service is ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """The container to supervise: by name (or id), or by compose project and service."""

    container: str | None = None
    project: str | None = None
    service: str | None = None

    @classmethod
    def by_name(cls, name: str) -> Target:
        """A container by name or id; UsageError for something that cannot be one."""
        if not _CONTAINER_NAME.fullmatch(name):
            raise UsageError(
                f"--container {name!r}: not a container name or id ([A-Za-z0-9][A-Za-z0-9_.-]*)"
            )
        return cls(container=name)

    def describe(self) -> str:
        """For logs and messages."""
        if self.container is not None:
            return f"container {self.container}"
        return f"service {self.service} of compose project {self.project}"

    def labels(self) -> list[str]:
        """The label filters of the service's containers (by project and service)."""
        return [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={self.service}"]

    def find(self, client: Any) -> Any | None:
        """The container object (inspected), or None when there is none.

        By compose labels: the service's container with the lowest number, never a one-off
        ``compose run`` container.
        """
        from supervisor.gate.inspect import get_container, labelled_containers

        if self.container is not None:
            return get_container(client, self.container)
        found = [
            c
            for c in labelled_containers(client, self.labels())
            if (c.labels or {}).get(ONEOFF_LABEL, "False") != "True"
        ]
        if not found:
            return None
        return min(found, key=lambda c: _int_or((c.labels or {}).get(NUMBER_LABEL), 1))


def _int_or(text: object, default: int) -> int:
    try:
        return int(str(text))
    except ValueError:
        return default


def compose_project_name(compose_file: Path, explicit: str | None = None) -> str:
    """The project name compose would use for ``compose_file``.

    Same precedence as compose: ``-p``, then ``COMPOSE_PROJECT_NAME`` (environment, then the
    ``.env`` beside the file), then the file's top-level ``name:``, then the directory's name,
    lower-cased with everything but ``[a-z0-9_-]`` removed.
    """
    if explicit:
        return _normalize_project(explicit)
    compose = load_compose(compose_file)
    env_name = os.environ.get("COMPOSE_PROJECT_NAME") or compose.dotenv.get("COMPOSE_PROJECT_NAME")
    if env_name:
        return _normalize_project(env_name)
    if compose.name:
        return _normalize_project(compose.name)
    return _normalize_project(compose.path.resolve().parent.name)


def _normalize_project(name: str) -> str:
    return re.sub(r"[^-_a-z0-9]", "", name.lower()).lstrip("-_")


def compose_target(compose_file: Path, service: str, project: str | None = None) -> Target:
    """The target for a compose file's service; ConfigError (78) if the file or service is bad."""
    compose = load_compose(compose_file)
    if service not in compose.services:
        raise ConfigError(
            f"{compose_file}: no service {service!r} (services: "
            f"{', '.join(sorted(compose.services)) or 'none'})"
        )
    name = compose_project_name(compose_file, project)
    if not name:
        raise ConfigError(
            f"{compose_file}: cannot tell the compose project name; pass --project-name"
        )
    return Target(project=name, service=service)


__all__ = [
    "DEFAULT_SERVICE",
    "DOCKER_SOCKET",
    "MIGRATE_OVERRIDE",
    "Compose",
    "Mount",
    "Role",
    "Target",
    "agent_service",
    "argv",
    "as_mapping",
    "compose_project_name",
    "compose_target",
    "covering",
    "depends_condition",
    "environment",
    "interpolate",
    "load_compose",
    "merge_service",
    "mounts",
    "option",
    "read_dotenv",
    "restart_policy",
    "roles",
    "subcommand",
    "supervisor_args",
    "tokens",
    "variables_used",
    "with_override",
]
