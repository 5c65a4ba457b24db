"""Crash consistency: gates killed with SIGKILL at every point of their work never corrupt the
state.

The kills are placed, not timed: the gate runs in a child that reports each file-system call it
is about to make (open, read, write, fsync, rename, flock, ...) through a pipe and waits for the
test's go-ahead; the test SIGKILLs it while it waits at the chosen call. Between two such calls
the process touches no file, so a kill before each of them covers every state the disk can be
left in, and every round's kill lands, however loaded the machine (a timed kill once landed in
13 of 100 rounds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

from supervisor.storage.store import StateStore

AGENT = "cilium-agent"
# A 1 ms window (and admission period): every other gate records a start, the others an ask,
# so every gate writes the state.
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
#: The gate, with every file-system call it makes announced on fd REPORT and held until a byte
#: arrives on fd GO (its own reads and writes of the two pipes use the unhooked calls).
CHILD = """
import fcntl, os, sys
report, go = int(sys.argv[1]), int(sys.argv[2])
import supervisor.base.files as files
import supervisor.storage.store as store
from supervisor.cli.app import main

write, read = os.write, os.read

def hooked(owner, name):
    real = getattr(owner, name)
    def call(*args, **kwargs):
        write(report, name.encode() + b"\\n")
        if read(go, 1) != b"g":
            os._exit(99)
        return real(*args, **kwargs)
    setattr(owner, name, call)

for name in ("open", "read", "write", "pwrite", "fsync", "replace", "rename", "link",
             "unlink", "close"):
    hooked(os, name)
hooked(fcntl, "flock")
hooked(files, "fsync_dir")
store.fsync_dir = files.fsync_dir
main(sys.argv[3:])
"""
ROUNDS = 100


def gate_until(state_dir: Path, kill_at: int | None) -> tuple[int, list[str], str]:
    """Run ``gate --json`` as the CHILD, letting it through each call until the ``kill_at``-th
    (1-based), where it is SIGKILLed while it waits; None lets it finish. Returns its exit
    status, the calls it reached, and its stdout."""
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    argv = [sys.executable, "-c", CHILD, str(report_w), str(go_r)]
    proc = subprocess.Popen(
        [*argv, "gate", "--json", "--state-dir", str(state_dir), *TINY],
        pass_fds=(report_w, go_r),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    os.close(report_w)
    os.close(go_r)
    reached: list[str] = []
    try:
        with os.fdopen(report_r, "rb") as reports:
            for line in reports:  # ends when the child exits
                reached.append(line.decode().strip())
                if len(reached) == kill_at:
                    proc.kill()
                    break
                os.write(go_w, b"g")
    finally:
        os.close(go_w)
        out, _ = proc.communicate(timeout=60)
    return proc.returncode, reached, out


def assert_readable(state_dir: Path) -> list[str]:
    """The state file parses whole (nothing lost, nothing quarantined, no pending end); its
    runs' start times as the file writes them."""
    loaded = StateStore(state_dir).read(AGENT)
    assert (loaded.lost, loaded.pending) == (None, ())
    assert StateStore(state_dir).quarantined_files(AGENT) == []
    path = state_dir / f"{AGENT}.json"
    if not path.exists():
        return []
    return [r["started_at"] for r in json.loads(path.read_text())["runs"]]


def test_100_kill9_rounds_leave_readable_state_with_every_reported_start(
    state_dir: Path,
) -> None:
    """100 gates SIGKILLed, each at a different call of its work in turn (before the lock,
    under it, between the temp file's write, fsync and rename and the directory's fsync):
    after every kill the state reads back whole, and it holds every start a gate reported;
    the next gate cleans what a killed writer left and records normally."""
    code, calls, _ = gate_until(state_dir, None)  # the first ask: every call a gate makes
    assert code == 75 and {"flock", "write", "fsync", "replace", "fsync_dir"} <= set(calls)
    span = len(calls)
    reported: list[str] = []
    killed_at: list[str] = []
    for n in range(ROUNDS):
        for _attempt in range(3):
            k = 1 + n % span
            code, calls, out = gate_until(state_dir, k)
            if code == -9:
                break
            # This gate's work was shorter (a refusal with nothing new to write): it finished,
            # and the next attempt picks a call within what it made.
            assert code in (0, 75), out
            span = len(calls)
        assert code == -9 and len(calls) == k, (n, code, calls)
        killed_at.append(calls[-1])
        history = assert_readable(state_dir)
        if n % 4 == 3:
            code, _, out = gate_until(state_dir, None)
            decision = json.loads(out)
            if decision["allowed"]:
                reported.append(decision["decided_at"])
            history = assert_readable(state_dir)
            # The history keeps the newest 50 starts; every reported start that new is there.
            oldest = min(history, default="9999")
            assert [t for t in reported if t >= oldest and t not in history] == []
    # Kills landed between every step of the atomic write, and under the lock.
    assert {"flock", "open", "read", "write", "fsync", "replace", "fsync_dir", "close"} <= set(
        killed_at
    )
    assert reported
    # The next gate cleans any temp file a killed writer left and records normally.
    for _ in range(3):
        code, _, out = gate_until(state_dir, None)
        if code == 0:
            break
    assert code == 0, out
    assert json.loads(out)["decided_at"] in assert_readable(state_dir)
    assert not list(state_dir.glob(f".{AGENT}.json.tmp-*"))
