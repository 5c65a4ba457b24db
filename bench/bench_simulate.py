"""Wall time of ``agent-supervisor simulate`` for 10,000 and 100,000 nodes (targets 5 s, 60 s).

Each size runs as a whole process (``python -m supervisor simulate --nodes N --json``); the
output gives the exact command and the figures.

    python bench/bench_simulate.py [--sizes 10000 100000] [--scenario outage] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.fleet.scenarios import SCENARIOS

TARGETS = {10_000: 5.0, 100_000: 60.0}


def run_process(nodes: int, scenario: str) -> tuple[float, dict[str, object]]:
    """One whole-process run; returns the wall time and the JSON it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    cmd = [sys.executable, "-m", "supervisor", "simulate", "--nodes", str(nodes)]
    cmd += ["--scenario", scenario, "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, json.loads(proc.stdout)


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--scenario", default="outage", choices=list(SCENARIOS))
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    how = "whole process"
    print(f"# bench_simulate {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} on {platform.node()}")
    print(f"# python {platform.python_version()}, {os.cpu_count()} CPUs, {how}")
    print(
        f"# command: python bench/bench_simulate.py --sizes {' '.join(map(str, args.sizes))} "
        f"--scenario {args.scenario} --runs {args.runs}"
    )
    for nodes in args.sizes:
        times = []
        doc: dict[str, object] = {}
        for _ in range(args.runs):
            elapsed, doc = run_process(nodes, args.scenario)
            times.append(elapsed)
        wall = statistics.median(times)
        target = TARGETS.get(nodes)
        verdict = (
            ""
            if target is None
            else f" (target {target:g} s: " + ("met)" if wall <= target else "MISSED)")
        )
        equivalent = (
            f"python -m supervisor simulate --nodes {nodes} --scenario {args.scenario} --json"
        )
        policies = doc.get("policies", {})
        assert isinstance(policies, dict)
        starts = sum(int(p["total_starts"]) for p in policies.values())
        print(
            f"{nodes:>7} nodes: {wall:6.2f} s wall{verdict}; {starts:,} simulated starts; "
            f"= {equivalent}"
        )


if __name__ == "__main__":
    main()
