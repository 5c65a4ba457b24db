"""The gate's start-up: what a gate call imports (its cost is paid on every start of the agent;
``bench/bench_gate.py --against REV`` measures it, this pins what it must never pull in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core.events import Bound, DebugEnded, Released, Reset, Withdrawn

PROBE = """
import json, sys
from supervisor.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\nMODULES " + json.dumps([code, sorted(sys.modules)]) + "\\n")
"""

#: What the gate of a node with the embedded default never needs: the Docker SDK and YAML
#: (the compose model), the other command groups, the lock library it replaced with flock(2),
#: rich (typer's pretty help), the metrics and certificate libraries.
NEVER: tuple[str, ...] = (
    "docker",
    "yaml",
    "filelock",
    "rich",
    "prometheus_client",
    "cryptography",
    "supervisor.containers.compose",
    "supervisor.containers.recreate",
    "supervisor.cli.node",
    "supervisor.cli.fleet",
    "supervisor.cli.deploy",
    "supervisor.cli.debug",
    "supervisor.fleet.simulate",
)


def gate_modules(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """The exit code of ``agent-supervisor gate ARGS`` run in a fresh interpreter, and every
    module it had imported by the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    config = tmp_path / "config.toml"
    config.write_text(f'cluster_size = 5000\nstate_dir = "{tmp_path / "state"}"\n')
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "gate", "--no-wait", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    line = proc.stderr.rsplit("MODULES ", 1)[-1]
    code, modules = json.loads(line)
    return code, modules


@pytest.mark.parametrize("args", [(), ("--json",)])
def test_a_gate_call_imports_none_of_what_it_does_not_use(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A gate call (refused: a first start waits for its admission slot) imports no Docker SDK,
    no YAML, no compose model, no other command group, no filelock, rich or metrics library."""
    code, modules = gate_modules(tmp_path, *args)
    assert code == 75
    assert "supervisor.gate.service" in modules  # it did run the gate
    pulled = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NEVER)]
    assert pulled == []


def test_the_full_program_still_has_every_group() -> None:
    """Keeping the groups out of a gate call does not drop them from the program: --help of the
    whole program lists them."""
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0
    for group in ("node", "debug", "doctor", "simulate", "plan", "config", "certs"):
        assert f" {group} " in proc.stdout, group


def equal(a: object, b: object) -> bool:
    return a == b


def test_events_are_equal_only_within_one_type() -> None:
    """Events are named tuples, but two of different types never compare or hash equal, even
    with the same values (or none)."""
    assert Reset() == Reset() and Withdrawn("r1") == Withdrawn("r1")
    assert not equal(Reset(), Released()) and not equal(Released(), DebugEnded())
    assert not equal(Withdrawn("r1"), ("r1",)) and not equal(Withdrawn("r1"), Bound("r1", "c"))
    assert len({Reset(), Released(), DebugEnded(), Reset()}) == 3
    assert Withdrawn("r1") != Withdrawn("r2")
