"""Whole-process time of ``agent-supervisor gate --no-wait`` (warm state, refused decision).

Runs the gate and the floor ``python -c pass`` interleaved, side by side, so both see the same
machine load, and prints the medians with the command that produced them.

    python bench/bench_gate.py [--runs 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run of ``cmd`` in seconds."""
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def main() -> None:
    """Measure and print the medians."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    exe = shutil.which("agent-supervisor") or sys.exit("agent-supervisor is not installed")
    # An installed package has its bytecode compiled (pip does it at install time); an editable
    # checkout under PYTHONDONTWRITEBYTECODE=1 would compile every module on every run.
    import supervisor

    pkg = os.path.dirname(supervisor.__file__)
    subprocess.run([sys.executable, "-m", "compileall", "-q", pkg], check=True)
    state = tempfile.mkdtemp(prefix="bench-gate-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    env["AGENT_SUPERVISOR_CLUSTER_SIZE"] = "5000"
    gate = [exe, "gate", "--no-wait", "--state-dir", state]
    floor = [sys.executable, "-c", "pass"]
    first = subprocess.run(gate, env=env, capture_output=True, check=False)
    # The warm state: a first start asked for (it waits for this node's admission slot).
    assert first.returncode == 75, first.stderr
    assert subprocess.run(gate, env=env, capture_output=True, check=False).returncode == 75
    for _ in range(3):  # warm the page cache
        timed(gate, env)
        timed(floor, env)
    g: list[float] = []
    f: list[float] = []
    for _ in range(args.runs):
        g.append(timed(gate, env))
        f.append(timed(floor, env))
    shutil.rmtree(state, ignore_errors=True)
    gm, fm = statistics.median(g) * 1000, statistics.median(f) * 1000
    print(
        f"# {datetime.now(UTC):%Y-%m-%d} on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), {args.runs} runs each, interleaved"
    )
    print(
        f"# command: python bench/bench_gate.py --runs {args.runs} "
        "(package byte-compiled first, as pip installs it)"
    )
    print(
        f"gate --no-wait (refused, warm state): median {gm:.1f} ms  "
        f"(p90 {statistics.quantiles(g, n=10)[-1] * 1000:.1f} ms)"
    )
    print(f"python -c pass (floor):               median {fm:.1f} ms")
    print(f"gate overhead above the floor:        {gm - fm:.1f} ms")


if __name__ == "__main__":
    main()
