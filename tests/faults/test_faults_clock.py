"""Clock steps of +-1 day between runs, under faketime (a real process with a shifted clock)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import REQUIRE_ROOT_TESTS, clean_env, skip_or_fail

from supervisor.core.policy import multiplier

W = 1200.0  # 1000 nodes with the default window
SIZE = ("--cluster-size", "1000")


def gate_at(shift: str, state_dir: Path) -> tuple[int, dict[str, object]]:
    """Run the gate with the clock shifted by ``shift`` (faketime syntax, e.g. '-1d')."""
    faketime = shutil.which("faketime")
    if faketime is None:
        skip_or_fail("faketime is not installed (Debian package faketime)", REQUIRE_ROOT_TESTS)
    assert faketime is not None
    cmd = [
        faketime,
        "-f",
        shift,
        sys.executable,
        "-m",
        "supervisor",
        "gate",
        "--json",
        "--state-dir",
        str(state_dir),
        *SIZE,
    ]
    p = subprocess.run(
        cmd, env=clean_env(), capture_output=True, text=True, check=False, timeout=60
    )
    assert p.returncode in (0, 75), p.stderr
    doc = json.loads(p.stdout)
    assert isinstance(doc, dict)
    return p.returncode, doc


def ts(value: object) -> float:
    """ISO 8601 -> epoch seconds."""
    assert isinstance(value, str)
    return datetime.fromisoformat(value).timestamp()


def test_clock_stepped_back_a_day_blocks_no_longer_than_a_backoff(state_dir: Path) -> None:
    """A start recorded 'tomorrow' counts as now: the wait is at most one normal backoff."""
    code, first = gate_at("+0", state_dir)
    assert code == 0
    code, back = gate_at("-1d", state_dir)
    assert code == 75
    now = ts(back["decided_at"])
    assert now < ts(first["decided_at"]) - 86000  # the clock really went back
    assert now + W <= ts(back["next_allowed_at"]) < now + 2 * W


def test_clock_stepped_forward_a_day_allows_once_then_windows_again(state_dir: Path) -> None:
    """After a day's jump the agent starts at once, and the next start waits its backoff again
    (two runs whose ends nobody reported: level 2, the slot of window start + 2W)."""
    assert gate_at("+0", state_dir)[0] == 0
    assert gate_at("+0", state_dir)[0] == 75
    code, fwd = gate_at("+1d", state_dir)
    assert code == 0
    code, again = gate_at("+1d", state_dir)
    assert code == 75
    start = ts(fwd["decided_at"])
    m = multiplier(int(str(again["backoff_level"])), 4)
    assert again["backoff_level"] == 2
    assert start + W * m <= ts(again["next_allowed_at"]) < start + W * m + W


@pytest.mark.parametrize("steps", [("-1d", "+0", "-1d"), ("+1d", "-1d", "+1d")])
def test_back_and_forth_never_allows_twice_in_a_window_of_one_clock(
    state_dir: Path, steps: tuple[str, ...]
) -> None:
    """Whatever the steps, no refusal asks for more than the normal backoff of its level."""
    for shift in steps:
        code, d = gate_at(shift, state_dir)
        if code == 75:
            now = ts(d["decided_at"])
            level = d["backoff_level"]
            assert isinstance(level, int) and level <= len(steps)
            assert ts(d["next_allowed_at"]) - now < W * multiplier(level, 4) + W + 1


def test_start_recorded_in_the_future_is_pinned_to_when_it_was_seen(state_dir: Path) -> None:
    """Regression: a start two days ahead blocks one backoff from when it was first seen,
    not until the clock catches up (the clamp is written back to the state)."""
    assert gate_at("+2d", state_dir)[0] == 0
    code, d = gate_at("+0", state_dir)
    assert code == 75
    wait = ts(d["next_allowed_at"]) - ts(d["decided_at"])
    assert W <= wait < 2 * W
    code, later = gate_at(f"+{int(wait) + 2}s", state_dir)
    assert code == 0, later


def cli_at(shift: str, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Any command with the clock shifted by ``shift`` (faketime syntax)."""
    faketime = shutil.which("faketime")
    if faketime is None:
        skip_or_fail("faketime is not installed (Debian package faketime)", REQUIRE_ROOT_TESTS)
    assert faketime is not None
    cmd = [faketime, "-f", shift, sys.executable, "-m", "supervisor", *args]
    cmd += ["--state-dir", str(state_dir), *SIZE]
    return subprocess.run(
        cmd, env=clean_env(), capture_output=True, text=True, check=False, timeout=60
    )


def flags_at(shift: str, state_dir: Path) -> dict[str, object]:
    """``status --json`` at ``shift``."""
    p = cli_at(shift, state_dir, "status", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(("command", "hours"), [("override", 1), ("hold", 2)])
def test_a_clock_step_back_cannot_stretch_an_operator_flag(
    state_dir: Path, command: str, hours: int
) -> None:
    """Invariant 8: a flag set a day ahead lasts its duration from when the step was first
    seen (status at +0 pins it), not 25 h: gone at its duration plus two minutes."""
    p = cli_at("+1d", state_dir, command, "--for", f"{hours}h", "--reason", "clock test")
    assert p.returncode == 0, p.stderr
    seen = flags_at("+0", state_dir)
    flag = seen[command]
    assert isinstance(flag, dict)
    now = ts(seen["decided_at"])
    assert now <= ts(flag["until"]) <= now + hours * 3600 + 5
    assert flags_at(f"+{hours * 60 - 2}m", state_dir)[command] is not None
    assert flags_at(f"+{hours * 60 + 2}m", state_dir)[command] is None
