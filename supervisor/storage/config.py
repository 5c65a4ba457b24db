"""Configuration: one TOML file, ``AGENT_SUPERVISOR_*`` environment variables, the command line.

Precedence: command line > environment > file > defaults. Everything is validated once, here,
into frozen typed objects; every error names where the value came from (the file, the
environment variable or the command line), the key and the value, and exits 78.

Why a schema table rather than ad-hoc ``dict.get`` calls: the same table drives the file parser,
the environment mapping (``window.per_node`` <-> ``AGENT_SUPERVISOR_WINDOW_PER_NODE``), the
``--set`` flag and the unknown-key check, so a key cannot be accepted in one place and not another.

Unknown ``AGENT_SUPERVISOR_*`` environment variables are errors too, as unknown keys in the file
are: a misspelled variable that is silently ignored leaves a node running with a setting its
operator believes is changed. The few such names that are legitimately not keys are listed in
:data:`ENV_NOT_KEYS`. The check looks at names only: an unknown variable is an error whatever
its value, empty included (a misspelled name is as much a typo with an empty value as with any).
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from supervisor.base.errors import ConfigError
from supervisor.core.durations import DurationError, parse_duration
from supervisor.core.options import OPTION_NAME_RULE, is_option_name
from supervisor.core.policy import (
    DEFAULT_MAX_LATENCY,
    DEFAULT_MAX_MULTIPLIER,
    DEFAULT_STABLE_AFTER,
    Policy,
    WindowConfig,
    admission_seconds,
    window_seconds,
)
from supervisor.core.slots import SLOT_MODE_SETTINGS, SlotError, slot_offset

DEFAULT_CONFIG_PATH: Final = Path("/etc/agent-supervisor/config.toml")
DEFAULT_STATE_DIR: Final = Path("/var/lib/agent-supervisor")
#: Where ``config render`` writes the agent's option files by default.
DEFAULT_AGENT_CONFIG_DIR: Final = "/etc/cilium/config-map"
_T = TypeVar("_T")
ENV_PREFIX: Final = "AGENT_SUPERVISOR_"
ENV_CONFIG: Final = "AGENT_SUPERVISOR_CONFIG"
#: A config file larger than this is not a config file (a log pointed at by mistake).
MAX_CONFIG_BYTES: Final = 1024 * 1024
#: Largest cluster we accept: well beyond any real fleet, small enough to keep arithmetic sane.
MAX_CLUSTER_SIZE: Final = 10_000_000
#: ``docker.grace``: how long an approved start may wait for Docker to start the container.
DEFAULT_DOCKER_GRACE: Final = 120.0

#: ``AGENT_SUPERVISOR_*`` names that are not configuration keys but legitimately appear in the
#: environment of agent-supervisor; every other unknown one exits 78. Each is set, exported or
#: read by something in this repository, and can reach us because an operator exports the
#: compose settings in the shell that also runs ``agent-supervisor``, or because the test suite
#: runs the CLI in-process and in child processes with the CI's environment. (The state
#: directory's ``AGENT_SUPERVISOR_STATE_DIR`` is not here: it is the ``state_dir`` key's.)
ENV_NOT_KEYS: Final[tuple[str, ...]] = (
    # The config file itself (--config): read by load_config before there are keys.
    ENV_CONFIG,
    # compose/.env: the supervisor's image (docker-compose.yml interpolates it).
    "AGENT_SUPERVISOR_IMAGE",
    # compose/.env: the base image compose/Dockerfile builds from.
    "AGENT_SUPERVISOR_BASE_IMAGE",
    # compose/.env: the host directory mounted as /etc/agent-supervisor.
    "AGENT_SUPERVISOR_CONFIG_DIR",
    # The approved run's id: in the agent's environment (gate -- COMMAND) and, through
    # systemd's EnvironmentFile=, in ExecStopPost's record-exit, which takes it as --run-id.
    "AGENT_SUPERVISOR_RUN_ID",
    # Test-suite switches: .ci/run exports them so that skips become failures; the in-process
    # CLI tests (typer's CliRunner) and every child process inherit them.
    "AGENT_SUPERVISOR_REQUIRE_DOCKER",
    "AGENT_SUPERVISOR_REQUIRE_ROOT_TESTS",
    # tests/dockerutil.py: the Debian mirror for the test image build.
    "AGENT_SUPERVISOR_DEBIAN_MIRROR",
    # tests/faults/test_faults_load.py: how long the load test runs.
    "AGENT_SUPERVISOR_LOAD_SECONDS",
)

_NODE_NAME: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


class _Invalid(ValueError):
    """A value failed validation; the text says what was expected."""


# --- value parsers: each takes a TOML value or an environment string -------------------------


def _int(minimum: int, maximum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise _Invalid("expected a whole number")
        if isinstance(value, str):
            try:
                value = int(value.strip(), 10)
            except ValueError:
                raise _Invalid("expected a whole number") from None
        if not isinstance(value, int):
            raise _Invalid("expected a whole number")
        if value < minimum:
            raise _Invalid(f"must be at least {minimum}")
        if value > maximum:
            raise _Invalid(f"must be at most {maximum}")
        return value

    return parse


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise _Invalid(str(exc)) from None


#: The longest window (and any of its bounds) and stable_after we accept: a month. With
#: max_multiplier at most 1024, the longest backoff then stays within a century, so every time
#: the gate computes can be written down (a 10-year window at x1024 overflowed the calendar).
MAX_WINDOW: Final = 30 * 86400.0


def _bounded(low: float, high: float, *, positive: bool = True) -> Callable[[object], float]:
    """A duration in ``[low, high]`` (``positive``: and longer than zero)."""

    def parse(value: object) -> float:
        seconds = _duration(value)
        if positive and seconds <= 0:
            raise _Invalid("must be longer than 0s")
        if seconds < low:
            raise _Invalid(f"must be at least {_human(low)}")
        if seconds > high:
            raise _Invalid(f"must be at most {_human(high)}")
        return seconds

    return parse


def _human(seconds: float) -> str:
    from supervisor.core.durations import format_duration

    return format_duration(seconds)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    if "\x00" in value or "\n" in value:
        raise _Invalid("must be one line of text")
    if len(value) > 4096:
        raise _Invalid("is longer than 4096 characters")
    return value


def _path(value: object) -> str:
    text = _text(value).strip()
    if not text:
        raise _Invalid("expected a path")
    return text


def _node_name(value: object) -> str:
    text = _text(value).strip()
    if not _NODE_NAME.fullmatch(text):
        raise _Invalid("expected a host name (letters, digits, '.', '_', '-')")
    return text


def _url_list(value: object) -> tuple[str, ...]:
    items: list[object]
    if isinstance(value, str):
        items = [v for v in (p.strip() for p in value.split(",")) if v]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise _Invalid("expected a list of URLs")
    urls = []
    for item in items:
        url = _text(item).strip()
        if not (url.startswith("https://") or url.startswith("http://")):
            raise _Invalid(f"{url!r} is not an http(s) URL")
        urls.append(url)
    return tuple(urls)


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).strip()
        if text not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class _Key:
    path: str
    parse: Callable[[object], Any]
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.path.replace(".", "_").upper()


#: Every key of the configuration file. The README's reference is written from this table.
KEYS: Final[tuple[_Key, ...]] = (
    _Key("cluster_size", _int(1, MAX_CLUSTER_SIZE), "number of nodes in the cluster (required)"),
    _Key("node_name", _node_name, "this node's name (default: the host name)"),
    _Key("state_dir", _path, "state directory (default /var/lib/agent-supervisor)"),
    _Key("max_multiplier", _int(1, 1024), "cap of the backoff multiplier 2**(k-1) (default 4)"),
    _Key(
        "stable_after",
        _bounded(1.0, MAX_WINDOW),
        "a run this long resets the backoff level (default 10m; 1s to 30d)",
    ),
    _Key("slot_mode", _choice(*SLOT_MODE_SETTINGS), "slot offsets (default auto)"),
    _Key("slot_index", _int(0, MAX_CLUSTER_SIZE), "this node's ordinal for exact slots"),
    _Key("slot_count", _int(1, MAX_CLUSTER_SIZE), "number of ordinals for exact slots"),
    _Key(
        "node_id",
        _int(0, 2**63 - 1),
        "integer node id for address slots (default: the IPv4 address in the node name)",
    ),
    _Key("metrics_file", _path, "Prometheus textfile to write after every decision"),
    _Key("operators_group", _text, "Unix group whose members may run operator commands"),
    _Key("agent_config_dir", _path, "where `config render` writes the agent's options"),
    _Key(
        "window.base",
        _bounded(0.0, MAX_WINDOW, positive=False),
        "fixed part of the jitter window (default 10m; at most 30d)",
    ),
    _Key(
        "window.per_node",
        _bounded(0.0, 3600.0, positive=False),
        "window growth per node (default 0.6s; at most 1h)",
    ),
    _Key("window.min", _bounded(0.0, MAX_WINDOW), "lower bound of the window (default 1m)"),
    _Key("window.max", _bounded(0.0, MAX_WINDOW), "upper bound of the window (default 24h)"),
    _Key(
        "window.admission",
        _bounded(0.0, MAX_WINDOW),
        "period J of the admission grid (default: the window without a probe, a fraction of "
        "it with one)",
    ),
    _Key(
        "probe.urls",
        _url_list,
        "control-plane URLs the probe asks (docs/configuration.md#the-probe)",
    ),
    _Key(
        "probe.timeout",
        _bounded(0.0, 300.0),
        "timeout of one probe request (default 2s; at most 5m)",
    ),
    _Key(
        "probe.max_latency",
        _bounded(0.0, 300.0),
        "a 2xx slower than this is 'loaded', not 'ready' (default 1s)",
    ),
    _Key("identity.cert", _path, "agent client certificate (PEM)"),
    _Key("identity.key", _path, "agent private key (PEM)"),
    _Key("identity.ca", _path, "CA bundle that signed the certificate and the apiserver"),
    _Key("identity.user", _text, "expected CN (default system:cilium-agent:{node_name})"),
    _Key("identity.group", _text, "expected O (default cilium-agents)"),
    _Key("identity.renew_before", _duration, "warn when the certificate expires within (7d)"),
    _Key("identity.server", _text, "kube-apiserver URL for `kubeconfig render`"),
    _Key(
        "docker.container",
        _text,
        "the agent's container: Docker's State says which starts happened, how runs ended and "
        "whether the agent runs",
    ),
    _Key(
        "docker.grace",
        _bounded(0.0, 86400.0),
        "how long an approved start may wait for Docker to start the container before the "
        "approval is withdrawn (default 2m)",
    ),
)
_BY_PATH: Final = {k.path: k for k in KEYS}
_BY_ENV: Final = {k.env: k for k in KEYS}
#: Every ``AGENT_SUPERVISOR_*`` name we accept: the keys' and the few that are not keys.
_KNOWN_ENV: Final = frozenset(_BY_ENV) | frozenset(ENV_NOT_KEYS)
#: Tables whose content is free-form: the agent's own options.
_FREE_TABLES: Final = ("agent",)


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """Control-plane probes; no URLs means the gate never probes."""

    urls: tuple[str, ...] = ()
    timeout: float = 2.0
    #: A 2xx answer slower than this is "loaded": the control plane queues (invariant 11).
    max_latency: float = DEFAULT_MAX_LATENCY


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """The agent's client certificate, key and CA, and who the certificate must name."""

    cert: str
    key: str
    ca: str | None = None
    user: str = "system:cilium-agent:{node_name}"
    group: str = "cilium-agents"
    renew_before: float = 7 * 86400.0
    server: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration. ``sources`` says where each set key came from."""

    cluster_size: int | None = None
    node_name: str = "localhost"
    state_dir: Path = DEFAULT_STATE_DIR
    max_multiplier: int = DEFAULT_MAX_MULTIPLIER
    stable_after: float = DEFAULT_STABLE_AFTER
    slot_mode: str = "auto"
    slot_index: int | None = None
    slot_count: int | None = None
    node_id: int | None = None
    metrics_file: str | None = None
    operators_group: str | None = None
    agent_config_dir: str = DEFAULT_AGENT_CONFIG_DIR
    window: WindowConfig = field(default_factory=WindowConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    identity: IdentityConfig | None = None
    docker_container: str | None = None
    docker_grace: float = DEFAULT_DOCKER_GRACE
    agent: Mapping[str, str] = field(default_factory=dict)
    config_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def require_cluster_size(self) -> int:
        """The cluster size, or a :class:`ConfigError` that says how to set it."""
        if self.cluster_size is None:
            where = self.config_file or DEFAULT_CONFIG_PATH
            raise ConfigError(
                f"cluster_size is not set: add 'cluster_size = N' to {where}, "
                "or set AGENT_SUPERVISOR_CLUSTER_SIZE=N, or pass --cluster-size N"
            )
        return self.cluster_size

    def policy(self, agent: str) -> Policy:
        """The decision policy of ``agent`` on this node (ConfigError without a cluster size)."""
        size = self.require_cluster_size()
        try:
            offset, mode = slot_offset(
                self.slot_mode,
                node=self.node_name,
                agent=agent,
                slot_index=self.slot_index,
                slot_count=self.slot_count,
                node_id=self.node_id,
            )
        except SlotError as exc:
            raise ConfigError(f"{self.source_of('slot_mode')}: {exc}") from None
        w = window_seconds(self.window, size)
        probe = bool(self.probe.urls)
        explicit = self.window.admission
        if explicit is not None and explicit > w:
            raise ConfigError(
                f"{self.source_of('window.admission')}: window.admission = {explicit:g}s is "
                f"longer than the window ({w:g}s for {size} nodes): the admission grid's "
                "period is at most W"
            )
        return Policy(
            agent=agent,
            node=self.node_name,
            cluster_size=size,
            window=w,
            offset=offset,
            slot_mode=mode,
            stable_after=self.stable_after,
            max_multiplier=self.max_multiplier,
            probe_configured=probe,
            admission=admission_seconds(self.window, w, probe=probe),
            admission_explicit=explicit is not None,
        )

    def source_of(self, key: str) -> str:
        """Where ``key`` was set (file, environment variable, command line) or 'default'."""
        return self.sources.get(key, "default")


def _agent_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return " ".join(str(v) for v in value)
    raise _Invalid("expected a string, number, boolean or list of strings")


def _flatten(data: Mapping[str, Any], source: str) -> tuple[dict[str, object], dict[str, str]]:
    """Split a parsed TOML document into known keys and the free-form [agent] table."""
    flat: dict[str, object] = {}
    agent: dict[str, str] = {}
    for name, value in data.items():
        if name in _FREE_TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{name}] must be a table, got {value!r}")
            for opt, optval in value.items():
                if not is_option_name(opt):
                    raise ConfigError(f"{source}: agent.{opt}: {OPTION_NAME_RULE}")
                try:
                    agent[opt] = _agent_value(optval)
                except _Invalid as exc:
                    raise ConfigError(f"{source}: agent.{opt} = {optval!r}: {exc}") from None
            continue
        if isinstance(value, dict):
            for sub, subval in value.items():
                flat[f"{name}.{sub}"] = subval
        else:
            flat[name] = value
    return flat, agent


def _check_known(key: str, source: str) -> _Key:
    spec = _BY_PATH.get(key)
    if spec is None:
        table = key.split(".", maxsplit=1)[0] + "." if "." in key else ""
        near = sorted(k.path for k in KEYS if table and k.path.startswith(table)) or sorted(
            k.path for k in KEYS if "." not in k.path
        )
        raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(near)})")
    return spec


def _check_environment(env: Mapping[str, str]) -> None:
    """Refuse an ``AGENT_SUPERVISOR_*`` variable that is neither a key's nor in ENV_NOT_KEYS.

    The first unknown name in sorted order is reported, so the answer does not depend on the
    order of the environment. The suggestion compares the names without the common prefix,
    which would otherwise make every name look close to every other.
    """
    unknown = sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in _KNOWN_ENV)
    if not unknown:
        return
    name = unknown[0]
    shown = name if name.isprintable() and " " not in name else repr(name)
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in _KNOWN_ENV)
    near = difflib.get_close_matches(name.removeprefix(ENV_PREFIX).upper(), suffixes, n=1)
    hint = f" (did you mean {ENV_PREFIX}{near[0]}?)" if near else ""
    raise ConfigError(f"environment {shown}: unknown setting{hint}")


def _read_file(path: Path, *, named: bool) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{path}: config file not found") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: config file is not a regular file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file is {st.st_size} bytes, larger than 1 MiB")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None


def default_node_name() -> str:
    """The host name, without a domain, as Kubernetes names bare-metal nodes by default."""
    return socket.gethostname().split(".")[0] or "localhost"


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    state_dir: str | Path | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path`` is ``--config`` (None: ``AGENT_SUPERVISOR_CONFIG``, then the default file, whose
    absence is not an error). ``overrides`` are command-line values by dotted key, which beat
    the environment, which beats the file. ``state_dir`` is ``--state-dir``.
    """
    env = os.environ if env is None else env
    named = path is not None or bool(env.get(ENV_CONFIG))
    file_path = Path(path) if path is not None else Path(env.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH)
    data = _read_file(file_path, named=named)
    source = str(file_path)
    flat, agent = _flatten(data, source)

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for key, raw in flat.items():
        spec = _check_known(key, source)
        values[key] = _convert(spec, raw, source)
        sources[key] = source
    _check_environment(env)
    for name, raw in env.items():
        env_spec = _BY_ENV.get(name)
        if env_spec is None:
            continue  # not ours, or one of ENV_NOT_KEYS
        where = f"environment {name}"
        values[env_spec.path] = _convert(env_spec, raw, where)
        sources[env_spec.path] = where
    for key, raw in (overrides or {}).items():
        where = "command line"
        spec = _check_known(key, where)
        values[key] = _convert(spec, raw, where)
        sources[key] = where
    if state_dir is not None:
        values["state_dir"] = _convert(_BY_PATH["state_dir"], str(state_dir), "--state-dir")
        sources["state_dir"] = "command line"
    return _build(values, agent, sources, file_path if data or named else None)


def _convert(spec: _Key, raw: object, where: str) -> object:
    try:
        return spec.parse(raw)
    except _Invalid as exc:
        raise ConfigError(f"{where}: {spec.path} = {raw!r}: {exc}") from None


def _build(
    values: Mapping[str, object],
    agent: Mapping[str, str],
    sources: Mapping[str, str],
    config_file: Path | None,
) -> Config:
    """The typed configuration from validated values; checks that span several keys.

    Each value was parsed by its key's parser, so its type is known; what is left to check
    here is how keys go together (window bounds, slot index and count, identity files).
    """

    def where(key: str) -> str:
        return sources.get(key, "defaults")

    slot_mode, slot_index, slot_count = _slots(values, where)
    node_name = _opt(values, "node_name", str) or default_node_name()
    node_id = _opt(values, "node_id", int)
    return Config(
        cluster_size=_opt(values, "cluster_size", int),
        node_name=node_name,
        state_dir=Path(_get(values, "state_dir", str, str(DEFAULT_STATE_DIR))),
        max_multiplier=_get(values, "max_multiplier", int, DEFAULT_MAX_MULTIPLIER),
        stable_after=_get(values, "stable_after", float, DEFAULT_STABLE_AFTER),
        slot_mode=slot_mode,
        slot_index=slot_index,
        slot_count=slot_count,
        node_id=node_id,
        metrics_file=_opt(values, "metrics_file", str),
        operators_group=_opt(values, "operators_group", str),
        agent_config_dir=_get(values, "agent_config_dir", str, DEFAULT_AGENT_CONFIG_DIR),
        window=_window(values, where),
        probe=_probe(values, where),
        identity=_identity(values, where),
        docker_container=_opt(values, "docker.container", str),
        docker_grace=_get(values, "docker.grace", float, DEFAULT_DOCKER_GRACE),
        agent=dict(agent),
        config_file=config_file,
        sources=dict(sources),
    )


def _get(values: Mapping[str, object], key: str, kind: type[_T], default: _T) -> _T:
    """``values[key]`` (already parsed by its key's parser, so of type ``kind``) or default."""
    value = _opt(values, key, kind)
    return default if value is None else value


def _opt(values: Mapping[str, object], key: str, kind: type[_T]) -> _T | None:
    """``values[key]`` as ``kind``, or None when unset (ints are taken where floats go)."""
    value = values.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):  # a parser returned another type: a bug, not bad input
        raise TypeError(f"{key}: parsed to {type(value).__name__}, expected {kind.__name__}")
    return value


def _window(values: Mapping[str, object], where: Callable[[str], str]) -> WindowConfig:
    """The window's bounds, each positive and min <= max."""
    w = WindowConfig()
    window = WindowConfig(
        base=_get(values, "window.base", float, w.base),
        per_node=_get(values, "window.per_node", float, w.per_node),
        min=_get(values, "window.min", float, w.min),
        max=_get(values, "window.max", float, w.max),
        admission=_opt(values, "window.admission", float),
    )
    if window.max <= 0:
        raise ConfigError(f"{where('window.max')}: window.max = {window.max}s must be positive")
    if window.min > window.max:
        key = "window.max" if "window.max" in values else "window.min"
        raise ConfigError(
            f"{where(key)}: window.min = {window.min}s is larger than window.max = {window.max}s"
        )
    if window.min <= 0:
        raise ConfigError(f"{where('window.min')}: window.min = {window.min}s must be positive")
    return window


def _slots(
    values: Mapping[str, object], where: Callable[[str], str]
) -> tuple[str, int | None, int | None]:
    """slot_mode, slot_index, slot_count: index and count go together, index < count."""
    slot_index = _opt(values, "slot_index", int)
    slot_count = _opt(values, "slot_count", int)
    if (slot_index is None) != (slot_count is None):
        key = "slot_count" if slot_count is None else "slot_index"
        raise ConfigError(
            f"{where('slot_index' if slot_index is not None else 'slot_count')}: "
            f"slot_index and slot_count go together ({key} is not set)"
        )
    if slot_index is not None and slot_count is not None and slot_index >= slot_count:
        raise ConfigError(
            f"{where('slot_index')}: slot_index = {slot_index} must be below "
            f"slot_count = {slot_count}"
        )
    slot_mode = _get(values, "slot_mode", str, "auto")
    if slot_mode == "index" and slot_index is None:
        raise ConfigError(
            f"{where('slot_mode')}: slot_mode = 'index' needs slot_index and slot_count"
        )
    return slot_mode, slot_index, slot_count


def _probe(values: Mapping[str, object], where: Callable[[str], str]) -> ProbeConfig:
    """The control-plane probe: URLs (maybe none) and a positive timeout."""
    urls = values.get("probe.urls", ())
    assert isinstance(urls, tuple)  # the URL list parser returns a tuple of str
    probe = ProbeConfig(
        urls=tuple(str(u) for u in urls),
        timeout=_get(values, "probe.timeout", float, ProbeConfig().timeout),
        max_latency=_get(values, "probe.max_latency", float, ProbeConfig().max_latency),
    )
    if probe.timeout <= 0:
        raise ConfigError(f"{where('probe.timeout')}: probe.timeout must be positive")
    if probe.max_latency >= probe.timeout:
        key = "probe.max_latency" if "probe.max_latency" in values else "probe.timeout"
        raise ConfigError(
            f"{where(key)}: probe.max_latency = {probe.max_latency:g}s must be shorter than "
            f"probe.timeout = {probe.timeout:g}s (a slow answer must be seen as slow, not as "
            "a timeout)"
        )
    return probe


def _identity(values: Mapping[str, object], where: Callable[[str], str]) -> IdentityConfig | None:
    """[identity], or None when no identity key is set; cert and key are required."""
    keys = [k for k in values if k.startswith("identity.")]
    if not keys:
        return None
    for required in ("identity.cert", "identity.key"):
        if required not in values:
            raise ConfigError(
                f"{where(keys[0])}: [identity] needs {required.split('.')[1]} "
                f"({required} is not set)"
            )
    d = IdentityConfig(cert="", key="")
    return IdentityConfig(
        cert=_get(values, "identity.cert", str, ""),
        key=_get(values, "identity.key", str, ""),
        ca=_opt(values, "identity.ca", str),
        user=_get(values, "identity.user", str, d.user),
        group=_get(values, "identity.group", str, d.group),
        renew_before=_get(values, "identity.renew_before", float, d.renew_before),
        server=_opt(values, "identity.server", str),
    )


def parse_assignment(text: str) -> tuple[str, str]:
    """Split a ``--set key=value`` argument; the key must be a known dotted key."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command line: --set {text!r}: expected KEY=VALUE")
    _check_known(key, "command line")
    return key, value
