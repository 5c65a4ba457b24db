"""Load: 200 concurrent gate callers and operator actions on one agent for 30 seconds."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from loadgen import AGENT, WINDOW, percentile, run_load

from supervisor.base.files import held_lock
from supervisor.storage.store import StateStore

SECONDS = float(os.environ.get("AGENT_SUPERVISOR_LOAD_SECONDS", "30"))


def test_200_concurrent_callers_keep_the_invariants(tmp_path: Path) -> None:
    """Under 200 concurrent callers (gates, reported ends, holds, overrides, releases, all
    through the Gate) gated starts stay a window apart, each allowed start was recorded before
    it was answered and is in the history under its run id, and nothing is left behind."""
    sd = tmp_path / "state"
    results = run_load(sd, procs=8, threads=25, seconds=SECONDS)
    gates = [r for r in results if r["kind"] == "gate"]
    assert gates
    starts = [r for r in gates if r["allowed"] and r["run_id"] is not None]
    gated = sorted(r["at"] for r in starts if r["via"] == "gate")
    # What holds whatever the load (how many calls a busy 2-core machine completes varies):
    # gated starts happen (a first start waits at most J = W for its slot), and they are a
    # window apart (invariant 4).
    assert gated
    assert all(b - a >= WINDOW - 1e-6 for a, b in itertools.pairwise(gated))
    # No lock left behind: it can be taken at once; no temp file remains; the state reads.
    with held_lock(sd / f"{AGENT}.lock", timeout=0, mode=0o600, busy="held", failed="broken"):
        pass
    assert not list(sd.glob(".*.tmp-*"))
    loaded = StateStore(sd).read(AGENT)
    assert (loaded.lost, loaded.pending) == (None, ()) and loaded.state.runs
    assert StateStore(sd).quarantined_files(AGENT) == []
    # Every start allowed was recorded before it was answered: each one at or after the oldest
    # run the history still keeps is there, under its id and at its time.
    assert all(r["recorded"] for r in starts)
    oldest = loaded.state.runs[0].started_at
    for r in starts:
        if r["at"] >= oldest + 1e-5:
            run = loaded.state.run(r["run_id"])
            assert run is not None and abs(run.started_at - r["at"]) < 1e-5, r
    lat = [r["ms"] for r in gates]
    print(
        f"\n{len(gates)} decisions, {len(gated)} gated starts, p50 {percentile(lat, 50):.1f} ms, "
        f"p99 {percentile(lat, 99):.1f} ms"
    )
