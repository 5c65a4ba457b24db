"""Crash consistency: gates killed with SIGKILL at random moments never corrupt the state."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from conftest import clean_env

from supervisor.storage.store import StateStore

# A 1 ms window: every gate that gets the lock records a start, so kills land in writes.
TINY = [
    "--cluster-size",
    "1",
    "--set",
    "window.base=0",
    "--set",
    "window.per_node=0",
    "--set",
    "window.min=1ms",
]


def test_100_kill9_rounds_leave_readable_state_with_every_reported_start(
    state_dir: Path,
) -> None:
    """After 100 SIGKILLs at random moments the state reads back and holds every reported start."""
    rng = random.Random(20261129)
    reported: list[str] = []
    cmd = [
        sys.executable,
        "-m",
        "supervisor",
        "gate",
        "--json",
        "--state-dir",
        str(state_dir),
        *TINY,
    ]
    # Calibrate: how long does a whole gate process take here? Kills are spread around that,
    # so they land before, during and after the locked read-decide-write.
    t = time.monotonic()
    subprocess.run(cmd, env=clean_env(), capture_output=True, check=True)
    full = time.monotonic() - t
    killed = 0
    for _ in range(100):
        p = subprocess.Popen(
            cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        time.sleep(rng.uniform(0.5 * full, 1.1 * full))
        p.kill()
        out, _ = p.communicate(timeout=30)
        killed += p.returncode == -9
        if out.strip():
            d = json.loads(out)
            if d["allowed"]:
                reported.append(d["decided_at"])
    assert killed >= 20 and reported, (killed, len(reported))  # the kills really raced the gate
    tx = StateStore(state_dir).read("cilium-agent")
    assert tx.quarantined == []
    doc = json.loads((state_dir / "cilium-agent.json").read_text())
    history = [r["started_at"] for r in doc["runs"]]
    # The history keeps the newest 50 starts; every reported start at least that new is there.
    oldest = min(history) if history else "9999"
    missing = [t for t in reported if t >= oldest and t not in history]
    assert missing == []
    # The next gate cleans any temp file a killed writer left and records normally.
    r = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, check=False)
    assert r.returncode == 0
    assert not list(state_dir.glob(".cilium-agent.json.tmp-*"))
