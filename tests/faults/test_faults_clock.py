"""Clock steps of a day, forward and back, under faketime (real processes, a stepped wall clock).

``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves the boot clock alone, as a real step does (``date -s``,
an NTP server that was wrong): only the wall clock moves. Invariant 8: facts written in this
boot are measured on the boot clock, so a step either way neither shortens nor stretches a
wait, a hold or an override. (Facts of another boot, which the boot clock cannot place, are
pinned when first seen: the unit tests of ``rebase``/``clamp_future`` cover that.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import REQUIRE_ROOT_TESTS, clean_env, skip_or_fail

from supervisor.core.policy import multiplier

W = 1200.0  # 1000 nodes with the default window
DAY = 86400.0
SIZE = ("--cluster-size", "1000")


def cli_at(shift: str, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Any command with the wall clock stepped by ``shift`` (faketime syntax, e.g. '-1d')."""
    faketime = shutil.which("faketime")
    if faketime is None:
        skip_or_fail("faketime is not installed (Debian package faketime)", REQUIRE_ROOT_TESTS)
    assert faketime is not None
    cmd = [faketime, "-f", shift, sys.executable, "-m", "supervisor", *args]
    cmd += ["--state-dir", str(state_dir), *SIZE]
    env = clean_env(FAKETIME_DONT_FAKE_MONOTONIC="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=60)


def gate_at(shift: str, state_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    """``gate --json`` with the clock stepped by ``shift``."""
    p = cli_at(shift, state_dir, "gate", "--json", *args)
    assert p.returncode in (0, 75), p.stderr
    doc = json.loads(p.stdout)
    assert isinstance(doc, dict)
    return p.returncode, doc


def status_at(shift: str, state_dir: Path) -> dict[str, object]:
    """``status --json`` with the clock stepped by ``shift``."""
    p = cli_at(shift, state_dir, "status", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert isinstance(doc, dict)
    return doc


def ts(value: object) -> float:
    """ISO 8601 -> epoch seconds."""
    assert isinstance(value, str)
    return datetime.fromisoformat(value).timestamp()


def crashed(state_dir: Path) -> dict[str, object]:
    """A start (forced, at +0) that failed at once: level 1, refused until its window slot."""
    assert gate_at("+0", state_dir, "--force", "--reason", "clock test")[0] == 0
    assert cli_at("+0", state_dir, "record-exit", "--code", "1").returncode == 0
    code, d = gate_at("+0", state_dir)
    assert code == 75 and d["backoff_level"] == 1 and d["grid"] == "window"
    return d


@pytest.mark.parametrize("step", ["+1d", "-1d"])
def test_a_step_of_a_day_moves_a_crash_loops_slot_with_it(state_dir: Path, step: str) -> None:
    """Invariant 8: a day's step either way moves the slot by exactly the step: the wait left
    is the same (issue 16: a forward jump let a level-2 node start 51 minutes early)."""
    before = crashed(state_dir)
    code, after = gate_at(step, state_dir)
    shift = DAY if step.startswith("+") else -DAY
    assert code == 75 and after["backoff_level"] == 1
    assert ts(after["next_allowed_at"]) == pytest.approx(
        ts(before["next_allowed_at"]) + shift, abs=1.0
    )
    left = ts(after["next_allowed_at"]) - ts(after["decided_at"])
    assert left == pytest.approx(ts(before["next_allowed_at"]) - ts(before["decided_at"]), abs=5)


@pytest.mark.parametrize(
    ("command", "step"), [("hold", "+1d"), ("override", "+1d"), ("hold", "-1d")]
)
def test_a_step_neither_ends_nor_stretches_an_operator_flag(
    state_dir: Path, command: str, step: str
) -> None:
    """Invariant 8: `hold --for 4s` (or override) lasts 4 s of real time across a step of a
    day (issue 16: a hold for 2 h ended after 5 minutes when the clock jumped a day)."""
    p = cli_at("+0", state_dir, command, "--for", "4s", "--reason", "clock test")
    assert p.returncode == 0, p.stderr
    set_at = time.monotonic()
    seen = status_at(step, state_dir)
    flag = seen[command]
    assert isinstance(flag, dict)
    now = ts(seen["decided_at"])
    assert now < ts(flag["until"]) <= now + 4
    time.sleep(
        max(0.0, 4.5 - (time.monotonic() - set_at))
    )  # real time passes: not a timing assertion
    assert status_at(step, state_dir)[command] is None


@pytest.mark.parametrize("steps", [("-1d", "+0", "-1d"), ("+1d", "-1d", "+1d")])
def test_back_and_forth_never_asks_more_than_a_backoff(
    state_dir: Path, steps: tuple[str, ...]
) -> None:
    """Whatever the steps, no refusal asks for more than the normal backoff of its level, and
    none lets the agent start earlier than its slot (each refusal names a time ahead)."""
    crashed(state_dir)
    for shift in steps:
        code, d = gate_at(shift, state_dir)
        assert code == 75
        now = ts(d["decided_at"])
        level = d["backoff_level"]
        assert isinstance(level, int) and level == 1
        assert now < ts(d["next_allowed_at"]) < now + W * multiplier(level, 4) + W + 1


def test_a_start_recorded_ahead_in_this_boot_counts_from_when_it_was_made(
    state_dir: Path,
) -> None:
    """A start written with the clock two days ahead, read after the step back: it happened
    seconds ago (the boot clock says so), so the next start waits one window, not two days."""
    assert gate_at("+2d", state_dir, "--force", "--reason", "clock test")[0] == 0
    code, d = gate_at("+0", state_dir)
    assert code == 75 and d["grid"] == "window"
    wait = ts(d["next_allowed_at"]) - ts(d["decided_at"])
    assert W - 10 <= wait < 2 * W
