"""A hostile state directory: every writing command refuses it and writes nothing through it;
``status`` reads what it safely can (without the lock) and says why, or refuses too."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REQUIRE_ROOT_TESTS, run_cli, skip_or_fail

WRITERS = [
    ("gate", "--cluster-size", "100"),
    ("record-exit", "--code", "0"),
    ("hold", "--reason", "x"),
    ("reset",),
]


def symlinked_state(sd: Path, outside: Path) -> None:
    """The state file is a symlink to a file elsewhere."""
    (sd / "cilium-agent.json").symlink_to(outside)


def symlinked_lock(sd: Path, outside: Path) -> None:
    """The lock file is a symlink to a file elsewhere (opening it would truncate the target)."""
    (sd / "cilium-agent.lock").symlink_to(outside)


def fifo_state(sd: Path, _outside: Path) -> None:
    """A FIFO in place of the state file (opening it would block forever)."""
    os.mkfifo(sd / "cilium-agent.json", 0o600)


def group_writable(sd: Path, _outside: Path) -> None:
    """The state directory is writable by its group."""
    sd.chmod(0o770)


def others_writable(sd: Path, _outside: Path) -> None:
    """The state directory is writable by others only (not by its group)."""
    sd.chmod(0o702)


def foreign_owner(sd: Path, _outside: Path) -> None:
    """The state file belongs to another user."""
    p = sd / "cilium-agent.json"
    p.write_text("{}")
    os.chown(p, 65534, 65534)


def foreign_directory(sd: Path, _outside: Path) -> None:
    """The state directory belongs to another user."""
    os.chown(sd, 65534, 65534)


SETUPS: list[tuple[Callable[[Path, Path], None], str]] = [
    (symlinked_state, "symlink"),
    (symlinked_lock, "symlink"),
    (fifo_state, "FIFO"),
    (group_writable, "writable by group or others"),
    (others_writable, "writable by group or others"),
    (foreign_owner, "owned by uid 65534"),
    (foreign_directory, "owned by uid 65534"),
]


def hostile(tmp_path: Path, setup: Callable[[Path, Path], None]) -> tuple[Path, Path]:
    """A state directory prepared by ``setup`` (root only for chown), and a file outside it."""
    if os.geteuid() != 0 and setup in (foreign_owner, foreign_directory):
        skip_or_fail("chown needs root", REQUIRE_ROOT_TESTS)
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    outside = tmp_path / "precious"
    outside.write_text("do not touch")
    setup(sd, outside)
    return sd, outside


@pytest.mark.parametrize(("setup", "needle"), SETUPS, ids=[s[0].__name__ for s in SETUPS])
@pytest.mark.parametrize("args", WRITERS, ids=[c[0] for c in WRITERS])
def test_hostile_state_dir_is_refused(
    tmp_path: Path, setup: Callable[[Path, Path], None], needle: str, args: tuple[str, ...]
) -> None:
    """Each hostile layout makes every writing command exit 74 with one line saying why, and
    nothing is written."""
    sd, outside = hostile(tmp_path, setup)
    listing = sorted(p.name for p in sd.iterdir())
    r = run_cli(*args, "--state-dir", str(sd), timeout=30)
    assert r.code == 74, r.stderr
    assert len(r.stderr_lines) == 1 and needle in r.stderr_lines[0]
    assert "Traceback" not in r.stderr
    assert outside.read_text() == "do not touch"
    assert sorted(p.name for p in sd.iterdir()) == listing


#: Layouts where the state file itself cannot be opened safely: ``status`` refuses them too.
UNREADABLE = (symlinked_state, fifo_state, foreign_owner)


@pytest.mark.parametrize(("setup", "needle"), SETUPS, ids=[s[0].__name__ for s in SETUPS])
def test_status_reads_what_it_safely_can(
    tmp_path: Path, setup: Callable[[Path, Path], None], needle: str
) -> None:
    """``status`` on a layout it cannot lock (a hostile lock file or directory) reads the state
    without the lock, exits 0 and says why in its NOTE line, while a state file it cannot open
    safely (a symlink, a FIFO, another user's) is 74 in one line, and nothing is written."""
    sd, outside = hostile(tmp_path, setup)
    listing = sorted(p.name for p in sd.iterdir())
    r = run_cli("status", "--cluster-size", "100", "--state-dir", str(sd), timeout=30)
    assert "Traceback" not in r.stderr
    if setup in UNREADABLE:
        assert r.code == 74, r.stderr
        assert len(r.stderr_lines) == 1 and needle in r.stderr_lines[0]
    else:
        assert r.code == 0, r.stderr
        (note,) = [ln for ln in r.stdout.splitlines() if ln.startswith("NOTE: ")]
        assert note.startswith("NOTE: read without the lock (") and needle in note
        assert "last runs:   none" in r.stdout
    assert outside.read_text() == "do not touch"
    assert sorted(p.name for p in sd.iterdir()) == listing
