"""Load: 200 concurrent gate callers and operator actions on one agent for 30 seconds."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from filelock import FileLock
from loadgen import AGENT, WINDOW, percentile, run_load

from supervisor.storage.store import StateStore

SECONDS = float(os.environ.get("AGENT_SUPERVISOR_LOAD_SECONDS", "30"))


def test_200_concurrent_callers_keep_the_invariants(tmp_path: Path) -> None:
    """Under 200 concurrent callers gated starts stay a window apart and nothing is left behind."""
    sd = tmp_path / "state"
    results = run_load(sd, procs=8, threads=25, seconds=SECONDS)
    gates = [r for r in results if r["kind"] == "gate"]
    assert len(gates) > 200 and any(r["kind"] == "op" for r in results)
    gated = sorted(r["at"] for r in gates if r["allowed"] and r["via"] == "gate")
    assert len(gated) >= 2
    gaps = [b - a for a, b in itertools.pairwise(gated)]
    assert min(gaps) >= WINDOW - 1e-6
    # No lock left behind: it can be taken at once; no temp file remains; the state reads.
    with FileLock(str(sd / f"{AGENT}.lock"), timeout=0):
        pass
    assert not list(sd.glob(".*.tmp-*"))
    tx = StateStore(sd).read(AGENT)
    assert tx.quarantined == [] and tx.state.runs
    lat = [r["ms"] for r in gates]
    print(
        f"\n{len(gates)} decisions, p50 {percentile(lat, 50):.1f} ms, "
        f"p99 {percentile(lat, 99):.1f} ms"
    )
