"""p50/p99 decision time under load: 200 concurrent callers on one agent for 30 s.

8 processes x 25 threads call the gate (90%) and operator actions (10%) through the real store
(real flock, real fsync) and the same load generator as tests/faults/test_faults_load.py.

    python bench/bench_load.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "faults"))

from loadgen import percentile, run_load


def main() -> None:
    """Run the load and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = run_load(Path(d) / "state", procs=8, threads=25, seconds=args.seconds)
    gates = [r["ms"] for r in results if r["kind"] == "gate"]
    ops = [r["ms"] for r in results if r["kind"] == "op"]
    print(
        f"# {datetime.now(UTC):%Y-%m-%d} on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()})"
    )
    print(f"# command: python bench/bench_load.py --seconds {args.seconds:g}")
    print(
        f"200 concurrent callers, {args.seconds:g} s: {len(gates)} gate decisions "
        f"({len(gates) / args.seconds:.0f}/s), {len(ops)} operator actions"
    )
    print(
        f"decision time (lock wait + read + decide + fsync'd write): "
        f"p50 {percentile(gates, 50):.1f} ms, p99 {percentile(gates, 99):.1f} ms, "
        f"max {max(gates):.1f} ms"
    )


if __name__ == "__main__":
    main()
