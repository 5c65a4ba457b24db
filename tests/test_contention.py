"""Real contention: many gate processes at once on one fresh agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import clean_env


def test_32_concurrent_gates_allow_exactly_one(state_dir: Path, tmp_path: Path) -> None:
    """32 processes run ``gate --no-wait`` at the same moment: exactly one exits 0."""
    go = tmp_path / "go"
    # Each process imports everything first, then waits for the same file to appear, so the
    # 32 decisions really race for the lock instead of being serialized by start-up time.
    script = (
        "import os, sys, time\n"
        "from supervisor.cli.app import main\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        "main(sys.argv[1:])\n"
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                "gate",
                "--json",
                "--state-dir",
                str(state_dir),
                "--cluster-size",
                "5000",
            ],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(32)
    ]
    go.touch()
    results = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0] + [75] * 31
    allowed = [json.loads(out) for code, out in results if code == 0]
    doc = json.loads((state_dir / "cilium-agent.json").read_text())
    assert len(doc["runs"]) == 1
    assert doc["runs"][0]["started_at"] == allowed[0]["decided_at"]
