"""Disk faults: a full tmpfs and a read-only remount under every command that writes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

WRITERS = [
    ("gate", "--force", "--reason", "after the fault"),
    ("record-exit", "--code", "1"),
    ("hold", "--reason", "maintenance"),
    ("override", "--reason", "rollout"),
    ("release",),
    ("reset", "--reason", "start over"),
]


def seeded(state_dir: Path) -> bytes:
    """Record one start and return the state file's bytes."""
    r = run_cli("gate", "--state-dir", str(state_dir), "--cluster-size", "100")
    assert r.code == 0, r.stderr
    return (state_dir / "cilium-agent.json").read_bytes()


def fill(mnt: Path) -> None:
    """Fill the file system until writes fail."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def leftovers(state_dir: Path) -> list[str]:
    """Temp files a failed write could have left behind."""
    return [p.name for p in state_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("args", WRITERS[1:], ids=[w[0] for w in WRITERS[1:]])
def test_disk_full_gives_74_and_keeps_state(small_tmpfs: Path, args: tuple[str, ...]) -> None:
    """On a full disk each writing command exits 74 in one line; the old state is intact."""
    sd = small_tmpfs / "state"
    before = seeded(sd)
    fill(small_tmpfs)
    r = run_cli(*args, "--state-dir", str(sd), "--cluster-size", "100")
    assert r.code == 74, r.stderr
    assert len(r.stderr_lines) == 1 and "Traceback" not in r.stderr
    assert "no space left on device" in r.stderr_lines[0]
    assert (sd / "cilium-agent.json").read_bytes() == before
    assert leftovers(sd) == []


def test_disk_full_gate_refuses_unforced_and_allows_forced(small_tmpfs: Path) -> None:
    """A gate that cannot record refuses with 74; --force starts anyway and says so."""
    sd = small_tmpfs / "state"
    sd.mkdir(mode=0o700)
    fill(small_tmpfs)
    r = run_cli("gate", "--state-dir", str(sd), "--cluster-size", "100")
    assert r.code == 74 and "no space left on device" in r.stderr_lines[0]
    f = run_cli(
        "gate",
        "--json",
        "--force",
        "--reason",
        "disk full",
        "--state-dir",
        str(sd),
        "--cluster-size",
        "100",
    )
    assert f.code == 0 and json.loads(f.stdout)["forced"] is True
    assert "gate.forced_unrecorded" in f.stderr
    assert leftovers(sd) == []


@pytest.mark.parametrize("args", WRITERS, ids=[w[0] for w in WRITERS])
def test_read_only_remount_gives_74_and_keeps_state(
    small_tmpfs: Path, args: tuple[str, ...]
) -> None:
    """After a read-only remount each writing command exits 74 (a forced gate still starts)."""
    sd = small_tmpfs / "state"
    before = seeded(sd)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    r = run_cli(*args, "--state-dir", str(sd), "--cluster-size", "100")
    if args[0] == "gate":
        assert r.code == 0 and "gate.forced_unrecorded" in r.stderr
    else:
        assert r.code == 74, r.stderr
        assert len(r.stderr_lines) == 1 and "Traceback" not in r.stderr
        assert str(sd) in r.stderr_lines[0]
    assert (sd / "cilium-agent.json").read_bytes() == before
    assert leftovers(sd) == []
