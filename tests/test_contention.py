"""Real contention: many gate processes at once on one agent whose slot has come."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from conftest import clean_env, run_cli

from supervisor.core.state import iso

# J = 1 s: the first gate is told a slot at most a second away (invariant 2), so the test
# need not wait a window for the moment every caller would be allowed.
ARGS = ["--json", "--cluster-size", "5000", "--set", "window.admission=1s"]


def test_32_concurrent_gates_allow_exactly_one(state_dir: Path, tmp_path: Path) -> None:
    """A first gate asks and is told its admission slot; at that slot 32 processes run ``gate
    --no-wait`` at the same moment, each of which alone would be allowed: exactly one exits 0,
    its start is the one run recorded, and the 31 others are refused for a window."""
    go = tmp_path / "go"
    # Each process imports everything and says so, then waits for the same file to appear,
    # so the 32 decisions really race for the lock instead of being serialized by start-up.
    script = (
        "import os, sys, time\n"
        "from supervisor.cli.app import main\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        "main(sys.argv[1:])\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, "gate", "--state-dir", str(state_dir), *ARGS],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(32)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        first = run_cli("gate", "--state-dir", str(state_dir), *ARGS)
        assert first.code == 75, first.stderr
        slot = datetime.fromisoformat(json.loads(first.stdout)["next_allowed_at"]).timestamp()
        assert slot - time.time() <= 1.0
        time.sleep(max(0.0, slot - time.time()))
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.communicate()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0] + [75] * 31, [err for _, err in results if "Traceback" in err]
    decisions = [json.loads(out.splitlines()[-1]) for out, _ in results]
    (allowed,) = [d for d in decisions if d["allowed"]]
    assert allowed["decided_at"] >= iso(slot)
    doc = json.loads((state_dir / "cilium-agent.json").read_text())
    assert [(r["id"], r["started_at"]) for r in doc["runs"]] == [
        (allowed["run_id"], allowed["decided_at"])
    ]
    window_later = datetime.fromisoformat(allowed["decided_at"]).timestamp() + 3600
    for d in decisions:
        if not d["allowed"]:
            assert datetime.fromisoformat(d["next_allowed_at"]).timestamp() >= window_later
