"""Options shared by every command, and the one way a command loads its configuration.

Every command takes the same ``--config``, ``--state-dir``, ``--cluster-size``, ``--node-name``
and ``--set KEY=VALUE`` options, so an operator never has to remember which command takes which.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Final

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
        help="TOML config file [env AGENT_SUPERVISOR_CONFIG; "
        "default /etc/agent-supervisor/config.toml]",
        show_default=False,
    ),
]
StateDirOpt = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        help="state directory [env AGENT_SUPERVISOR_STATE_DIR; default /var/lib/agent-supervisor]",
        show_default=False,
    ),
]
ClusterSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--cluster-size",
        help="number of nodes [env AGENT_SUPERVISOR_CLUSTER_SIZE]",
        show_default=False,
    ),
]
NodeNameOpt = Annotated[
    str | None,
    typer.Option("--node-name", help="this node's name [default: host name]", show_default=False),
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
        help="Prometheus textfile to update [config metrics_file]",
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
