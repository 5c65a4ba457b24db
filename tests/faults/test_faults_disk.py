"""Disk faults: a full tmpfs and a read-only remount under every command that writes, and the
journal that keeps a run's end when the state file cannot take it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import run_cli

from supervisor.storage.store import JOURNAL_BYTES, StateStore

AGENT = "cilium-agent"
SIZE = ("--cluster-size", "100")
OPERATORS = [
    ("hold", "--reason", "maintenance"),
    ("override", "--reason", "rollout"),
    ("release",),
    ("reset", "--reason", "start over"),
]
WRITERS = [
    ("gate", "--force", "--reason", "after the fault"),
    ("record-exit", "--code", "1"),
    *OPERATORS,
]


def cli(sd: Path, *args: str) -> tuple[int, str, str, list[str]]:
    """Run a command on the state directory ``sd`` for 100 nodes."""
    r = run_cli(*args, "--state-dir", str(sd), *SIZE)
    return r.code, r.stdout, r.stderr, r.stderr_lines


def seeded(state_dir: Path) -> tuple[str, bytes]:
    """Record one (forced) start; return its run id and the state file's bytes."""
    r = run_cli(
        "gate", "--json", "--force", "--reason", "seed", "--state-dir", str(state_dir), *SIZE
    )
    assert r.code == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    assert isinstance(run_id, str) and run_id
    return run_id, (state_dir / f"{AGENT}.json").read_bytes()


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


def status(sd: Path) -> dict[str, object]:
    """``status --json``, which must succeed."""
    code, out, err, _ = cli(sd, "status", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("args", OPERATORS, ids=[w[0] for w in OPERATORS])
def test_disk_full_gives_74_and_keeps_state(small_tmpfs: Path, args: tuple[str, ...]) -> None:
    """On a full disk each operator command exits 74 in one line saying so; the old state and
    the audit log are intact and no temp file is left."""
    sd = small_tmpfs / "state"
    _, before = seeded(sd)
    audit = (sd / "audit.jsonl").read_bytes()
    fill(small_tmpfs)
    code, _, err, lines = cli(sd, *args)
    assert code == 74, err
    assert len(lines) == 1 and "Traceback" not in err
    assert "no space left on device" in lines[0] and str(sd) in lines[0]
    assert (sd / f"{AGENT}.json").read_bytes() == before
    assert (sd / "audit.jsonl").read_bytes() == audit
    assert leftovers(sd) == []


@pytest.mark.parametrize(
    ("next_writer", "expected"),
    [
        (("status", "--json"), 0),
        (("gate",), 75),  # a restart within the window waits for the node's window slot
        (("record-exit", "--code", "1"), 0),
    ],
    ids=["status", "gate", "record-exit"],
)
def test_disk_full_record_exit_keeps_the_end_in_the_journal(
    small_tmpfs: Path, next_writer: tuple[str, ...], expected: int
) -> None:
    """Issue 16: on a really full disk ``record-exit --code 143`` exits 0 and says the end is
    kept in the journal (the state file is unchanged), and once space is back the next writer,
    whichever it is, applies it: the run ended 143, stopped on purpose, so the level stays 0
    (a lost end would count as a failure, level 1), the journal is empty again, and a second
    report for that run changes nothing."""
    sd = small_tmpfs / "state"
    run_id, before = seeded(sd)
    assert (sd / f"{AGENT}.journal").stat().st_size == JOURNAL_BYTES  # allocated with room
    fill(small_tmpfs)
    code, out, err, _ = cli(sd, "record-exit", "--code", "143", "--run-id", run_id)
    assert code == 0, err
    assert out.startswith(f"recorded exit 143 of run {run_id} after ")
    assert out.rstrip().endswith(
        "in the journal (the state file is full; the next writer applies it)"
    )
    assert (sd / f"{AGENT}.json").read_bytes() == before
    (kept,) = StateStore(sd).read(AGENT).pending
    assert (kept.exit_code, kept.run_id) == (143, run_id)
    assert leftovers(sd) == []
    (small_tmpfs / "filler").unlink()
    code, out, err, _ = cli(sd, *next_writer)
    assert code == expected, err
    if next_writer[0] == "gate":
        assert out.startswith("not now: started within the window: backoff level 0 (x1)")
    if next_writer[0] == "record-exit":
        assert out == f"run {run_id} has ended already; nothing recorded\n"
    loaded = StateStore(sd).read(AGENT)
    assert loaded.pending == () and loaded.lost is None
    (run,) = loaded.state.runs
    assert (run.id, run.exit_code, run.ended_at) == (run_id, 143, kept.at)
    doc = status(sd)
    assert doc["backoff_level"] == 0
    runs = doc["runs"]
    assert isinstance(runs, list) and [(r["id"], r["exit_code"]) for r in runs] == [(run_id, 143)]


def test_disk_full_with_a_record_exit_that_has_no_journal_gives_74(small_tmpfs: Path) -> None:
    """Where no journal was allocated (a state written by an older version), an end on a
    full disk cannot be kept: 74 in one line, the state file unchanged."""
    sd = small_tmpfs / "state"
    run_id, before = seeded(sd)
    (sd / f"{AGENT}.journal").unlink()
    fill(small_tmpfs)
    code, _, err, lines = cli(sd, "record-exit", "--code", "143", "--run-id", run_id)
    assert code == 74, err
    assert len(lines) == 1 and f"no journal at {sd / (AGENT + '.journal')}" in lines[0]
    assert (sd / f"{AGENT}.json").read_bytes() == before


def test_disk_full_gate_refuses_unforced_and_allows_forced(small_tmpfs: Path) -> None:
    """A gate whose slot has come but that cannot record the start refuses with 74 (no start
    that is not on disk); --force starts anyway and says it went unrecorded."""
    sd = small_tmpfs / "state"
    j = ("--set", "window.admission=1s")
    code, out, err, _ = cli(sd, "gate", "--json", *j)
    assert code == 75, err  # a first start is told its admission slot, at most 1 s away
    slot = datetime.fromisoformat(json.loads(out)["next_allowed_at"]).timestamp()
    assert 0 < slot - time.time() <= 1.0
    fill(small_tmpfs)
    time.sleep(max(0.0, slot - time.time()) + 0.05)
    code, _, err, lines = cli(sd, "gate", *j)
    assert code == 74, err
    assert len(lines) == 1 and "no space left on device" in lines[0]
    code, out, err, _ = cli(sd, "gate", "--json", "--force", "--reason", "disk full", *j)
    assert code == 0 and json.loads(out)["forced"] is True
    assert "gate.forced_unrecorded" in err
    assert StateStore(sd).read(AGENT).state.runs == ()
    assert leftovers(sd) == []


@pytest.mark.parametrize("args", WRITERS, ids=[w[0] for w in WRITERS])
def test_read_only_remount_gives_74_and_keeps_state(
    small_tmpfs: Path, args: tuple[str, ...]
) -> None:
    """After a read-only remount each writing command exits 74 naming the state directory (a
    forced gate still starts, unrecorded); nothing changes."""
    sd = small_tmpfs / "state"
    _, before = seeded(sd)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code, _, err, lines = cli(sd, *args)
    if args[0] == "gate":
        assert code == 0 and "gate.forced_unrecorded" in err
    else:
        assert code == 74, err
        assert len(lines) == 1 and "Traceback" not in err
        assert str(sd) in lines[0]
    assert (sd / f"{AGENT}.json").read_bytes() == before
    assert leftovers(sd) == []


@pytest.mark.parametrize("corrupt", [False, True], ids=["valid", "corrupt"])
def test_status_on_a_read_only_state_directory_reads_without_the_lock(
    small_tmpfs: Path, corrupt: bool
) -> None:
    """Issue 16: ``status`` on a read-only state directory exits 0 and says it read without
    the lock (naming the lock); it shows the runs, or a corrupt file as a lost history that
    it leaves in place, and writes nothing."""
    sd = small_tmpfs / "state"
    run_id, _ = seeded(sd)
    if corrupt:
        (sd / f"{AGENT}.json").write_bytes(b"garbage")
    listing = {p.name: p.read_bytes() for p in sd.iterdir()}
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    doc = status(sd)
    read_only = doc["read_only"]
    assert isinstance(read_only, str) and f"cannot lock {sd / (AGENT + '.lock')}" in read_only
    runs = doc["runs"]
    assert isinstance(runs, list)
    if corrupt:
        assert doc["history_lost"] is True and doc["backoff_level"] == 1
        assert [r["via"] for r in runs] == ["unknown"]
    else:
        assert doc["history_lost"] is False
        assert [(r["id"], r["via"]) for r in runs] == [(run_id, "force")]
    code, out, err, _ = cli(sd, "status")
    assert code == 0, err
    assert f"NOTE: read without the lock (cannot lock {sd / (AGENT + '.lock')}" in out
    assert {p.name: p.read_bytes() for p in sd.iterdir()} == listing
