"""Options shared by the commands, and the one way a command loads its configuration.

The configuration options (``--config``, ``--state-dir``, ``--cluster-size``, ``--node-name``,
``--set KEY=VALUE``) are defined once here and given to each command by :func:`with_settings`,
which adds to the command's signature exactly the ones it uses (a command that keeps no state
has no ``--state-dir``) and hands the command one :class:`Settings` value.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import typer

from supervisor.base.errors import UsageError
from supervisor.core.durations import DurationError, parse_duration
from supervisor.storage.config import Config, load_config, parse_assignment

AGENT_NAME: Final = re.compile(r"[a-z0-9._-]+")

# Plain strings, not click Paths: click would check readability itself and answer a root-owned
# 0700 state directory with a usage error (2) instead of our own one-line refusal.
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="TOML config file (env AGENT_SUPERVISOR_CONFIG; "
        "default /etc/agent-supervisor/config.toml)",
        show_default=False,
    ),
]
StateDirOpt = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        help="state directory (env AGENT_SUPERVISOR_STATE_DIR; default /var/lib/agent-supervisor)",
        show_default=False,
    ),
]
ClusterSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--cluster-size",
        help="number of nodes (env AGENT_SUPERVISOR_CLUSTER_SIZE)",
        show_default=False,
    ),
]
NodeNameOpt = Annotated[
    str | None,
    typer.Option(
        "--node-name", help="this node's name (default: the host name)", show_default=False
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override any config key, e.g. --set window.base=5m", show_default=False
    ),
]
AgentOpt = Annotated[str, typer.Option("--agent", help="agent name; state is kept per agent")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
MetricsOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-file",
        help="Prometheus textfile to update (config metrics_file)",
        show_default=False,
    ),
]


def emit_json(obj: dict[str, Any]) -> None:
    """Print one JSON object on stdout (the command's answer; logs go to stderr)."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def duration_option(value: str, option: str) -> float:
    """Parse a duration given on the command line; a usage error (2) names the option."""
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise UsageError(f"{option} {value!r}: {exc}") from None


def check_agent(agent: str) -> str:
    """Agent names become file names: only ``[a-z0-9._-]+``, and not ``.`` or ``..``."""
    if not AGENT_NAME.fullmatch(agent) or agent in (".", "..") or len(agent) > 100:
        raise UsageError(f"--agent {agent!r}: agent names are [a-z0-9._-]+ (at most 100)")
    return agent


def config_path(config: str | None) -> Path:
    """The config file the host's commands read (and the containers mount): ``--config``,
    ``AGENT_SUPERVISOR_CONFIG``, or the default."""
    from supervisor.storage.config import DEFAULT_CONFIG_PATH, ENV_CONFIG

    return Path(config or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH)


def load(
    config: str | Path | None = None,
    state_dir: str | Path | None = None,
    cluster_size: int | None = None,
    node_name: str | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Load the configuration with the command line's overrides applied."""
    overrides: dict[str, object] = {}
    for item in sets or []:
        key, value = parse_assignment(item)
        overrides[key] = value
    if cluster_size is not None:
        overrides["cluster_size"] = cluster_size
    if node_name is not None:
        overrides["node_name"] = node_name
    return load_config(config, overrides=overrides, state_dir=state_dir)


@dataclass(frozen=True, slots=True)
class Settings:
    """What the configuration options of one command said (None: not given)."""

    config: str | None = None
    state_dir: str | None = None
    cluster_size: int | None = None
    node_name: str | None = None
    sets: tuple[str, ...] = ()

    def load(self, *more_sets: str, cluster_size: int | None = None) -> Config:
        """The configuration with these options (and ``more_sets``, and a cluster size the
        command has its own option for) applied."""
        sets = [*self.sets, *more_sets]
        size = cluster_size if cluster_size is not None else self.cluster_size
        return load(self.config, self.state_dir, size, self.node_name, sets)


#: Each configuration option as a keyword parameter a command's signature can carry.
_OPTIONS: Final = {
    "config": ConfigOpt,
    "state_dir": StateDirOpt,
    "cluster_size": ClusterSizeOpt,
    "node_name": NodeNameOpt,
    "sets": SetOpt,
}
_R = TypeVar("_R")


def graft_options(
    fn: Callable[..., _R],
    options: Mapping[str, tuple[Any, Any]],
    into: str,
    build: Callable[..., Any],
) -> Callable[..., _R]:
    """``fn`` with keyword options grafted onto its signature, handed to it as one argument.

    ``options`` maps each parameter name to its (typer ``Annotated`` type, default); ``fn``
    declares a keyword parameter ``into`` instead, and receives ``build(**given)``. typer sees
    the options as if written out; decorators of this kind stack.
    """
    # Evaluated now (the module's names are all defined when its decorators run): typer takes
    # a signature given as __signature__ as it is, strings and all.
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != into]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=opt)
        for name, (opt, default) in options.items()
    ]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> _R:
        given = {name: kwargs.pop(name, default) for name, (_, default) in options.items()}
        return fn(*args, **{into: build(**given)}, **kwargs)

    command.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*own, *added], return_annotation=sig.return_annotation
    )
    return command


def _settings(
    config: str | None = None,
    state_dir: str | None = None,
    cluster_size: int | None = None,
    node_name: str | None = None,
    sets: list[str] | None = None,
) -> Settings:
    return Settings(config, state_dir, cluster_size, node_name, tuple(sets or ()))


def with_settings(
    *, state: bool = True, cluster: bool = True, node: bool = True
) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Give a command the configuration options it uses, and a ``settings`` argument.

    ``--config`` and ``--set`` always; ``--state-dir`` with ``state``, ``--cluster-size`` with
    ``cluster``, ``--node-name`` with ``node``. The command declares a keyword parameter
    ``settings: Settings`` and its own options; typer sees the options as if written out.
    """
    chosen = ["config"]
    chosen += ["state_dir"] if state else []
    chosen += ["cluster_size"] if cluster else []
    chosen += ["node_name"] if node else []
    chosen += ["sets"]
    options = {name: (opt, None) for name, opt in _OPTIONS.items() if name in chosen}

    def decorate(fn: Callable[..., _R]) -> Callable[..., _R]:
        return graft_options(fn, options, "settings", _settings)

    return decorate
