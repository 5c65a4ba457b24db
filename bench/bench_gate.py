"""Whole-process time of ``agent-supervisor gate --no-wait`` (warm state, refused decision).

Runs the gate and the floor ``python -c pass`` interleaved, side by side, so both see the same
machine load, and prints the medians with the command that produced them. With ``--against
REV``, also the gate of another commit (checked out in a temporary git worktree), interleaved
with this one: the A/B of a change's start-up cost.

    python bench/bench_gate.py [--runs 40] [--against e157fcc]
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall time of one run of ``cmd`` in seconds."""
    t = time.perf_counter()
    subprocess.run(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return time.perf_counter() - t


def warm_gate(checkout: Path, env: dict[str, str], state: str) -> list[str]:
    """The gate command of ``checkout``, byte-compiled (as pip installs it), with its state
    warm: asked until it refuses (a first start waits for its admission slot; an older
    commit allowed a first start at once and refuses the next)."""
    compileall = [sys.executable, "-m", "compileall", "-q", "supervisor"]
    subprocess.run(compileall, cwd=checkout, check=True)
    # `python -m supervisor` from the checkout itself: A and B start the same way.
    gate = [sys.executable, "-m", "supervisor", "gate", "--no-wait", "--state-dir", state]
    codes = [
        subprocess.run(gate, env=env, cwd=checkout, capture_output=True, check=False).returncode
        for _ in range(3)
    ]
    assert codes[-1] == 75, (checkout, codes)
    return gate


def main() -> None:
    """Measure and print the medians."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--against", metavar="REV", help="also measure this commit's gate (A/B)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    env["AGENT_SUPERVISOR_CLUSTER_SIZE"] = "5000"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    try:
        cmds = {"gate": (warm_gate(REPO, env, str(tmp / "state-new")), REPO)}
        if args.against:
            other = tmp / "other"
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(other), args.against],
                cwd=REPO,
                check=True,
            )
            cmds[args.against] = (warm_gate(other, env, str(tmp / "state-old")), other)
        cmds["floor"] = ([sys.executable, "-c", "pass"], REPO)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for i in range(args.runs + 3):  # the first 3 rounds warm the page cache
            for name, (cmd, cwd) in cmds.items():
                t = timed(cmd, env, cwd)
                if i >= 3:
                    times[name].append(t)
    finally:
        if args.against:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tmp / "other")],
                cwd=REPO,
                check=False,
                capture_output=True,
            )
        shutil.rmtree(tmp, ignore_errors=True)
    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    p90 = {name: statistics.quantiles(v, n=10)[-1] * 1000 for name, v in times.items()}
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d} on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), {args.runs} runs each, interleaved"
    )
    against = f" --against {args.against}" if args.against else ""
    print(f"# command: python bench/bench_gate.py --runs {args.runs}{against}")
    print(
        f"gate --no-wait, this checkout ({head}; refused, warm state): "
        f"median {med['gate']:.1f} ms (p90 {p90['gate']:.1f} ms)"
    )
    if args.against:
        a = med[args.against]
        print(
            f"gate --no-wait, {args.against}: median {a:.1f} ms (p90 {p90[args.against]:.1f} ms)"
            f"; this checkout minus it: {med['gate'] - a:+.1f} ms"
        )
    print(f"python -c pass (floor): median {med['floor']:.1f} ms")
    print(f"gate overhead above the floor: {med['gate'] - med['floor']:.1f} ms")


if __name__ == "__main__":
    main()
