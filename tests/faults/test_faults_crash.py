"""Crash consistency: 500 SIGKILLs at random moments across the gate and operator commands."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from conftest import clean_env

from supervisor.storage.store import StateStore

# A 1 ms window so that plain gates write too.
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
MIX = [
    ["gate", "--json", *TINY],
    ["gate", "--json", *TINY],
    ["gate", "--json", "--force", "--reason", "crash test", *TINY],
    ["record-exit", "--code", "1"],
    ["hold", "--for", "1ms", "--reason", "crash test"],
    ["override", "--for", "1ms", "--reason", "crash test"],
    ["release"],
]
# Import everything, say so, then wait for a go file: kills then land in the command's work,
# not in the interpreter's start-up.
PRELUDE = (
    "import os, sys, time\n"
    "from supervisor.cli.app import main\n"
    "print('ready', flush=True)\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.001)\n"
    "main(sys.argv[2:])\n"
)
ROUNDS = 500
PARALLEL = 4


def test_500_kill9_rounds_across_commands(tmp_path: Path) -> None:
    """After 500 kills the state reads back whole (nothing lost, quarantined or pending), audit
    lines parse, every reported start is recorded, and the next locked operation cleans the
    temp files killed writers left."""
    sd = tmp_path / "state"
    rng = random.Random(500)
    reported: list[str] = []
    killed = 0
    for batch in range(ROUNDS // PARALLEL):
        go = tmp_path / f"go-{batch}"
        procs = []
        for _ in range(PARALLEL):
            args = rng.choice(MIX)
            p = subprocess.Popen(
                [sys.executable, "-c", PRELUDE, str(go), *args, "--state-dir", str(sd)],
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            procs.append(p)
        go.touch()
        for p in procs:
            time.sleep(rng.uniform(0, 0.03))
            p.kill()
        for p in procs:
            out, _ = p.communicate(timeout=30)
            killed += p.returncode == -9
            for line in out.splitlines():
                if line.startswith("{"):
                    d = json.loads(line)
                    if d.get("allowed"):
                        reported.append(d["decided_at"])
    assert killed >= ROUNDS // 3, killed  # most kills landed while the command was working
    store = StateStore(sd)
    loaded = store.read("cilium-agent")
    assert (loaded.lost, loaded.pending) == (None, ()) and reported
    assert store.quarantined_files("cilium-agent") == []
    history = {r.started_at for r in loaded.state.runs}
    doc = json.loads((sd / "cilium-agent.json").read_text())
    hist_iso = {r["started_at"] for r in doc["runs"]}
    oldest = min(r["started_at"] for r in doc["runs"])
    assert [t for t in reported if t >= oldest and t not in hist_iso] == []
    assert len(history) == len(doc["runs"])
    for line in (sd / "audit.jsonl").read_text().splitlines():
        assert json.loads(line)["command"]  # every audit line is whole
    with store.transaction("cilium-agent") as tx:  # the next locked operation cleans leftovers
        assert tx.lost is None
    assert not list(sd.glob(".*.tmp-*"))
