"""``doctor``: what in a compose deployment would bypass or break the gate, and how to fix it.

It reads a compose file the way docker-compose does (``.env`` beside it, ``${VAR:-default}``
interpolation, ``docker-compose.override.yml`` when the file has a default name) and checks the
gated service (``cilium-agent``) and the supervisor's own services against what the gate needs:

- *bypass*: anything that starts the agent without asking the gate (a restart policy other than
  "no", a gate that is not a ``service_completed_successfully`` dependency, a gate whose state
  does not persist or is not the supervisor's);
- *break*: anything that keeps the gate or the agent from working (no cluster size, no
  certificate, no config directory, no Docker socket for the supervisor).

Every problem comes with its fix. Exit 0 when clean, 1 with problems, 78 when the file cannot
be read as a compose file. PyYAML is imported lazily (only this command needs it).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from supervisor.base.errors import ConfigError
from supervisor.storage.config import Config

DEFAULT_SERVICE: Final = "cilium-agent"
DEFAULT_STATE_DIR: Final = "/var/lib/agent-supervisor"
DEFAULT_CONFIG_FILE: Final = "/etc/agent-supervisor/config.toml"
DOCKER_SOCKET: Final = "/var/run/docker.sock"
#: Files compose reads by default; only beside one of these is an override file merged in.
DEFAULT_FILES: Final = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES: Final = (
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)
MAX_COMPOSE_BYTES: Final = 4 * 1024 * 1024
#: Targets that look like the agent's Kubernetes credentials when the kubeconfig path is
#: unknown (not etcd's secrets: those do not authenticate the agent to kube-apiserver).
_CREDENTIALS: Final = re.compile(r"kube|pki|cert|tls", re.IGNORECASE)
_VAR: Final = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_VAR_EXPR: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)

Mode = Literal["compose", "systemd", "daemon"]
MODES: Final = ("compose", "systemd", "daemon")


# --- reading a compose file ----------------------------------------------------------------------


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
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
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
        name, op, arg = parsed.group(1), parsed.group(2), parsed.group(3) or ""
        val = env.get(name)
        if op is None:
            return val or ""
        empty_counts = op.startswith(":")
        missing = val is None or (empty_counts and val == "")
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

    return _VAR.sub(sub, value)


def _interpolate_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [_interpolate_tree(v, env, where) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env, f"{where}.{k}") for k, v in node.items()}
    return node


def _parse_yaml(path: Path) -> Any:
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_COMPOSE_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a compose file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: compose file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a compose file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read compose file: {exc.strerror}") from None
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
    """A compose file as compose would see it (interpolated, override merged)."""

    path: Path
    services: Mapping[str, Mapping[str, Any]]
    name: str | None = None
    dotenv: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    override: Path | None = None

    @property
    def directory(self) -> Path:
        """The project directory: relative paths in the file are relative to it."""
        return self.path.resolve().parent


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


def load_compose(path: str | Path, env: Mapping[str, str] | None = None) -> Compose:
    """Read ``path`` as compose would; ConfigError (78) naming the file when it cannot."""
    path = Path(path)
    environ = os.environ if env is None else env
    dotenv = read_dotenv(path.resolve().parent / ".env")
    merged_env = {**dotenv, **environ}
    doc = _parse_yaml(path)
    services = _services(doc, path)
    override = None
    if path.name in DEFAULT_FILES:
        for candidate in OVERRIDE_FILES:
            if (path.parent / candidate).is_file():
                override = path.parent / candidate
                break
    if override is not None:
        for name, svc in _services(_parse_yaml(override), override).items():
            services[name] = merge_service(services.get(name, {}), svc)
    services = {
        name: _interpolate_tree(svc, merged_env, f"{path}: services.{name}")
        for name, svc in services.items()
    }
    raw_name = doc.get("name") if isinstance(doc, dict) else None
    return Compose(
        path=path,
        services=services,
        name=interpolate(raw_name, merged_env, f"{path}: name")
        if isinstance(raw_name, str)
        else None,
        dotenv=dotenv,
        env=merged_env,
        override=override,
    )


def merge_service(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Compose's override merge, as far as doctor needs it: volumes by target, environment and
    depends_on by key, everything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if key == "volumes" and isinstance(value, list) and isinstance(out.get(key), list):
            by_target = {_volume_target(v): v for v in out[key]}
            by_target.update({_volume_target(v): v for v in value})
            out[key] = list(by_target.values())
        elif key in ("environment", "depends_on") and key in out:
            merged = _as_mapping(out[key])
            merged.update(_as_mapping(value))
            out[key] = merged
        else:
            out[key] = value
    return out


def _as_mapping(value: Any) -> dict[str, Any]:
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


def mounts(svc: Mapping[str, Any], base: Path) -> list[Mount]:
    """The service's volumes, host paths made absolute (relative to the project directory)."""
    out: list[Mount] = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            kind = str(v.get("type", "volume"))
            src = v.get("source")
            target = str(v.get("target", ""))
            ro = bool(v.get("read_only", False))
            if kind == "bind" and src:
                out.append(Mount(target, _host_path(str(src), base), "bind", ro))
            elif kind == "tmpfs":
                out.append(Mount(target, None, "tmpfs", ro))
            else:
                out.append(
                    Mount(target, str(src) if src else None, "volume" if src else "anonymous", ro)
                )
            continue
        parts = str(v).split(":")
        if len(parts) == 1:
            out.append(Mount(parts[0], None, "anonymous"))
            continue
        src, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else ""
        ro = "ro" in mode.split(",")
        if src.startswith(("/", ".", "~")):
            out.append(Mount(target, _host_path(src, base), "bind", ro))
        else:
            out.append(Mount(target, src, "volume", ro))
    for t in _as_list(svc.get("tmpfs")):
        out.append(Mount(str(t).split(":")[0], None, "tmpfs"))
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


def _tokens(value: Any) -> list[str]:
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
    return _tokens(svc.get("entrypoint")) + _tokens(svc.get("command"))


def supervisor_args(svc: Mapping[str, Any]) -> list[str] | None:
    """The agent-supervisor arguments a service runs, or None if it does not run it."""
    tokens = argv(svc)
    for i, tok in enumerate(tokens):
        if PurePosixPath(tok).name == "agent-supervisor":
            return tokens[i + 1 :]
        if tok == "-m" and tokens[i + 1 : i + 2] == ["supervisor"]:
            return tokens[i + 2 :]
    if "agent-supervisor" in str(svc.get("image", "")) and svc.get("entrypoint") is None:
        return _tokens(svc.get("command"))
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
    for key, val in _as_mapping(svc.get("environment")).items():
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


# --- the checks ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that would bypass or break the gate, and its fix."""

    check: str
    service: str | None
    problem: str
    fix: str

    def to_json(self) -> dict[str, Any]:
        """For ``doctor --json``."""
        return {
            "check": self.check,
            "service": self.service,
            "problem": self.problem,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class _Role:
    """A service that runs agent-supervisor, and what it sees."""

    name: str
    args: list[str]
    env: dict[str, str]
    mounts: list[Mount]

    def state_dir(self) -> str:
        return os.path.normpath(
            option(self.args, "--state-dir")
            or self.env.get("AGENT_SUPERVISOR_STATE_DIR")
            or DEFAULT_STATE_DIR
        )

    def config_file(self) -> str:
        return (
            option(self.args, "--config")
            or self.env.get("AGENT_SUPERVISOR_CONFIG")
            or DEFAULT_CONFIG_FILE
        )


def pick_service(compose: Compose, service: str | None) -> str:
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


def _roles(compose: Compose, which: str) -> list[_Role]:
    out = []
    for name, svc in compose.services.items():
        args = supervisor_args(svc)
        if args is not None and subcommand(args) == which:
            out.append(
                _Role(name, args, environment(svc, compose.env), mounts(svc, compose.directory))
            )
    return out


def _has_cluster_size(role: _Role) -> bool:
    if option(role.args, "--cluster-size") or role.env.get("AGENT_SUPERVISOR_CLUSTER_SIZE"):
        return True
    return covering(role.mounts, role.config_file()) is not None


def _gate_snippet(service: str) -> str:
    return (
        f"add a gate service running 'agent-supervisor gate --wait' (see compose/"
        f"docker-compose.yml) and to {service}: depends_on: {{gate: {{condition: "
        f"service_completed_successfully}}}}"
    )


def diagnose(
    compose: Compose,
    service: str | None = None,
    *,
    mode: Mode = "compose",
    cfg: Config | None = None,
) -> list[Problem]:
    """Every problem of ``compose`` for gating ``service`` in ``mode``."""
    name = pick_service(compose, service)
    svc = compose.services[name]
    problems: list[Problem] = []
    problems += _check_agent(compose, name, svc, cfg)
    gates = _roles(compose, "gate")
    daemons = _roles(compose, "run")
    if mode == "compose":
        problems += _check_gate(compose, name, svc, gates, cfg)
        problems += _check_daemon(compose, name, svc, daemons, gates)
    elif mode == "daemon":
        if gates:
            problems += _check_gate(compose, name, svc, gates, cfg)
        for d in daemons:
            problems.append(
                Problem(
                    "two-supervisors",
                    d.name,
                    f"service {d.name} runs 'agent-supervisor run' but in daemon mode "
                    "agent-supervisor.service on the host supervises the agent: two supervisors "
                    "would each restart it",
                    f"remove service {d.name}, or use --mode compose and stop "
                    "agent-supervisor.service",
                )
            )
    else:  # systemd: cilium-agent.service gates every start; nothing in the file may restart
        for role, what in [(r, "gate") for r in gates] + [(r, "run") for r in daemons]:
            if what == "run":
                problems.append(
                    Problem(
                        "two-supervisors",
                        role.name,
                        f"service {role.name} runs 'agent-supervisor run', but under systemd the "
                        "unit (Restart=always, gated by ExecStartPre) owns restarts: both would "
                        "restart the agent",
                        f"remove service {role.name} (the unit runs 'up --no-deps {name}', so the "
                        "gate service is skipped there)",
                    )
                )
    return problems


def _check_agent(
    compose: Compose, name: str, svc: Mapping[str, Any], cfg: Config | None
) -> list[Problem]:
    problems: list[Problem] = []
    policy = restart_policy(svc)
    if policy != "no":
        problems.append(
            Problem(
                "restart-policy",
                name,
                f"restart: {policy} on {name}: Docker restarts the agent inside the engine, "
                "behind the gate's back, on its own schedule (100 ms doubling to 1 min) in a storm",
                f'set restart: "no" on {name} (and no deploy.restart_policy); the supervisor '
                "restarts it through the gate",
            )
        )
    ms = mounts(svc, compose.directory)
    tokens = argv(svc)
    config_dir = option(tokens, "--config-dir")
    if config_dir is not None:
        mount = covering(ms, config_dir)
        if mount is None:
            problems.append(
                Problem(
                    "agent-config-dir",
                    name,
                    f"{name} reads its options from --config-dir={config_dir}, which is not "
                    "mounted: the agent starts without its configuration and fails",
                    f"mount the node's option directory there read-only, e.g. "
                    f"/etc/cilium/config-map:{config_dir}:ro (agent-supervisor config render "
                    "writes it)",
                )
            )
    kubeconfig = _kubeconfig_path(ms, config_dir, cfg)
    if kubeconfig is not None:
        if covering(ms, kubeconfig) is None:
            problems.append(
                Problem(
                    "agent-credentials",
                    name,
                    f"{name}'s kubeconfig {kubeconfig} (k8s-kubeconfig-path) is not mounted: the "
                    "agent cannot authenticate to kube-apiserver and fails at every start",
                    f"mount the directory of {kubeconfig}, with the agent's client certificate and "
                    "key, read-only (e.g. /etc/cilium/pki:/etc/cilium/pki:ro)",
                )
            )
    elif not any(_CREDENTIALS.search(m.target) for m in ms if m.kind == "bind"):
        problems.append(
            Problem(
                "agent-credentials",
                name,
                f"{name} mounts no kubeconfig or certificate directory: the agent has no identity "
                "of its own to authenticate to kube-apiserver with",
                "mount the agent's own kubeconfig, client certificate and key read-only, e.g. "
                "/etc/cilium/pki:/etc/cilium/pki:ro, and point k8s-kubeconfig-path at it",
            )
        )
    return problems


def _kubeconfig_path(ms: Sequence[Mount], config_dir: str | None, cfg: Config | None) -> str | None:
    """k8s-kubeconfig-path from the option file on this host, else from [agent] config."""
    if config_dir is not None:
        mount = covering(ms, config_dir)
        if mount is not None and mount.kind == "bind" and mount.source:
            rel = PurePosixPath(config_dir).relative_to(PurePosixPath(mount.target))
            option_file = Path(mount.source) / rel / "k8s-kubeconfig-path"
            try:
                value = option_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                value = ""
            if value:
                return value
    if cfg is not None and cfg.agent.get("k8s-kubeconfig-path"):
        return cfg.agent["k8s-kubeconfig-path"]
    return None


def _check_gate(
    compose: Compose,
    name: str,
    svc: Mapping[str, Any],
    gates: list[_Role],
    cfg: Config | None,
) -> list[Problem]:
    problems: list[Problem] = []
    if not gates:
        return [
            Problem(
                "gate-missing",
                name,
                f"no service runs 'agent-supervisor gate': 'docker compose up' starts {name} "
                "without asking the gate",
                _gate_snippet(name),
            )
        ]
    wired = [g for g in gates if depends_condition(svc, g.name) is not None]
    good = [g for g in wired if depends_condition(svc, g.name) == "service_completed_successfully"]
    if not good:
        if wired:
            g = wired[0]
            problems.append(
                Problem(
                    "gate-not-wired",
                    name,
                    f"{name} depends on {g.name} with condition "
                    f"{depends_condition(svc, g.name)}: compose starts the agent as soon as the "
                    "gate container starts, not when the gate allows",
                    f"in {name}: depends_on: {{{g.name}: {{condition: "
                    "service_completed_successfully}} (docker-compose >= 1.29 or Compose v2)",
                )
            )
        else:
            g = gates[0]
            problems.append(
                Problem(
                    "gate-not-wired",
                    name,
                    f"{name} does not depend on the gate service {g.name}: compose starts it "
                    "without waiting for the gate",
                    f"in {name}: depends_on: {{{g.name}: {{condition: "
                    "service_completed_successfully}} (docker-compose >= 1.29 or Compose v2)",
                )
            )
    for g in good or gates[:1]:
        problems += _check_role_basics(g, "gate", cfg)
        if cfg is not None and cfg.identity is not None:
            for what, path in (
                ("certificate", cfg.identity.cert),
                ("key", cfg.identity.key),
                ("CA", cfg.identity.ca),
            ):
                if path and covering(g.mounts, path) is None:
                    problems.append(
                        Problem(
                            "gate-credentials",
                            g.name,
                            f"the gate checks the agent's {what} {path} (identity in the "
                            f"config), which is not mounted in {g.name}: the gate refuses "
                            "(exit 78) and the agent never starts",
                            f"mount {PurePosixPath(path).parent} read-only in {g.name} at the "
                            "same path",
                        )
                    )
    return problems


def _check_role_basics(role: _Role, what: str, cfg: Config | None) -> list[Problem]:
    problems: list[Problem] = []
    state_dir = role.state_dir()
    mount = covering(role.mounts, state_dir)
    verb = "gate" if what == "gate" else "supervisor"
    if mount is None or mount.kind in ("anonymous", "tmpfs"):
        problems.append(
            Problem(
                "state-dir",
                role.name,
                f"the {verb}'s state directory {state_dir} is not mounted from the host in "
                f"{role.name}: it starts empty in every new container, so every start looks like "
                "the first and is allowed",
                f"mount the host's state directory there: /var/lib/agent-supervisor:{state_dir}",
            )
        )
    elif mount.read_only:
        problems.append(
            Problem(
                "state-dir",
                role.name,
                f"the {verb}'s state directory {state_dir} is mounted read-only in {role.name}: "
                "the gate cannot record a start and refuses every one (exit 74)",
                f"mount {state_dir} read-write",
            )
        )
    elif (
        cfg is not None and mount.kind == "bind" and mount.source != os.path.normpath(cfg.state_dir)
    ):
        problems.append(
            Problem(
                "state-dir",
                role.name,
                f"the {verb} in {role.name} keeps its state in {mount.source} on the host, but "
                f"agent-supervisor on this host uses {cfg.state_dir}: status, override and hold "
                "here would not reach it",
                f"use one directory: mount {cfg.state_dir} at {state_dir}, or set "
                f"AGENT_SUPERVISOR_STATE_DIR={mount.source} for the host's commands",
            )
        )
    if not _has_cluster_size(role):
        problems.append(
            Problem(
                "cluster-size",
                role.name,
                f"{role.name} gets no cluster size (no AGENT_SUPERVISOR_CLUSTER_SIZE, no "
                f"--cluster-size, and {role.config_file()} is not mounted): the gate exits 78 and "
                "the agent never starts",
                "set AGENT_SUPERVISOR_CLUSTER_SIZE in .env and pass it through (environment: "
                "[AGENT_SUPERVISOR_CLUSTER_SIZE]), or mount /etc/agent-supervisor read-only",
            )
        )
    return problems


def _check_daemon(
    compose: Compose,
    name: str,
    svc: Mapping[str, Any],
    daemons: list[_Role],
    gates: list[_Role],
) -> list[Problem]:
    if not daemons:
        return [
            Problem(
                "supervisor-missing",
                name,
                f"no service runs 'agent-supervisor run': with restart: \"no\", nothing restarts "
                f"{name} after it exits",
                f"add a supervisor service running 'agent-supervisor run --container "
                f"{svc.get('container_name') or name}' with the Docker socket and the state "
                "directory mounted (see compose/docker-compose.yml)",
            )
        ]
    problems: list[Problem] = []
    if len(daemons) > 1:
        problems.append(
            Problem(
                "two-supervisors",
                daemons[1].name,
                f"services {', '.join(d.name for d in daemons)} all run 'agent-supervisor run': "
                "each would restart the agent",
                "keep one supervisor service",
            )
        )
    d = daemons[0]
    problems += _check_role_basics(d, "run", None)
    docker_host = d.env.get("DOCKER_HOST", "")
    if not docker_host.startswith(("tcp://", "ssh://")):
        socket_path = docker_host.removeprefix("unix://") or DOCKER_SOCKET
        if covering(d.mounts, socket_path) is None:
            problems.append(
                Problem(
                    "docker-socket",
                    d.name,
                    f"{d.name} does not mount the Docker socket {socket_path}: the supervisor "
                    "cannot see or start the agent",
                    f"mount {DOCKER_SOCKET}:{DOCKER_SOCKET} in {d.name}",
                )
            )
    if restart_policy(compose.services[d.name]) in ("no", "on-failure"):
        problems.append(
            Problem(
                "supervisor-restart",
                d.name,
                f"{d.name} has restart: {restart_policy(compose.services[d.name])}: if the "
                "supervisor stops, nothing restarts the agent after its next exit",
                f"set restart: unless-stopped on {d.name} (the supervisor, unlike the agent, "
                "may be restarted by Docker: it starts nothing ungated)",
            )
        )
    watched = option(d.args, "--container")
    wanted = svc.get("container_name")
    if watched is not None:
        if wanted is None:
            problems.append(
                Problem(
                    "supervisor-target",
                    d.name,
                    f"{d.name} watches container {watched!r}, but {name} has no container_name, "
                    "so its container is named by the project and may not match",
                    f"set container_name: {watched} on {name}",
                )
            )
        elif watched != wanted:
            problems.append(
                Problem(
                    "supervisor-target",
                    d.name,
                    f"{d.name} watches container {watched!r}, but {name}'s container is "
                    f"{wanted!r}: the agent is never restarted",
                    f"run 'agent-supervisor run --container {wanted}'",
                )
            )
    elif option(d.args, "--service") not in (None, name):
        problems.append(
            Problem(
                "supervisor-target",
                d.name,
                f"{d.name} watches service {option(d.args, '--service')!r}, not {name}",
                f"run 'agent-supervisor run ... --service {name}'",
            )
        )
    for g in gates:
        g_mount = covering(g.mounts, g.state_dir())
        d_mount = covering(d.mounts, d.state_dir())
        if (
            g_mount is not None
            and d_mount is not None
            and g_mount.kind == d_mount.kind
            and g_mount.kind in ("bind", "volume")
            and g_mount.source != d_mount.source
        ):
            problems.append(
                Problem(
                    "state-dir",
                    d.name,
                    f"the gate ({g.name}) keeps its state in {g_mount.source} and the supervisor "
                    f"({d.name}) in {d_mount.source}: neither sees the other's starts, so starts "
                    "are allowed twice as often",
                    f"mount the same host directory in both ({g_mount.source})",
                )
            )
    return problems


# --- rendering -----------------------------------------------------------------------------------


def render(compose: Compose, service: str, mode: str, problems: Sequence[Problem]) -> str:
    """The human report: one numbered problem per paragraph, each with its fix."""
    head = f"{compose.path}: service {service}, mode {mode}"
    if compose.override is not None:
        head += f" (with {compose.override.name})"
    if not problems:
        return f"{head}: no problems found\n"
    n = len(problems)
    lines = [f"{head}: {n} problem{'s' if n != 1 else ''} that would bypass or break the gate", ""]
    for i, p in enumerate(problems, 1):
        lines.append(f"{i}. [{p.check}] {p.problem}")
        lines.append(f"   fix: {p.fix}")
    return "\n".join(lines) + "\n"
