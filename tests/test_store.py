"""The state store: atomic writes, quarantine, refusal of hostile paths, round trips."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import REQUIRE_ROOT_TESTS, run_cli, skip_or_fail
from histories import asked, ended, lost, started
from hypothesis import given, settings
from hypothesis import strategies as st

import supervisor.base.files as files_module
import supervisor.storage.store as store_module
from supervisor.base.errors import EXIT_STATE_IO, DiskFull, StateError
from supervisor.core.events import Ended
from supervisor.core.state import (
    MAX_RUNS,
    SCHEMA_VERSION,
    AgentState,
    Anchor,
    Ask,
    OperatorFlag,
    Run,
    from_document,
    iso,
    to_document,
)
from supervisor.gate.service import Cancelled, Gate
from supervisor.storage.config import load_config
from supervisor.storage.store import (
    JOURNAL_BYTES,
    MAX_STATE_BYTES,
    Loaded,
    StateStore,
    Transaction,
)

T0 = 1_800_000_000.0


def legacy(t: float) -> str:
    """The id a run of a schema-1 or -2 file gets: its start in microseconds, in hex."""
    return f"legacy-{round(t * 10**6):x}"


def locked(store: StateStore, agent: str, now: float) -> Transaction:
    """The agent's files as a transaction reads them under the lock (the Gate's first step),
    the block then left without writing (so a bad file moved aside is put back)."""
    with store.transaction(agent, now) as tx:
        return tx


def settled(store: StateStore, agent: str, now: float) -> Transaction:
    """The Gate's step on a bad file: read under the lock and, if the file was unusable, write
    the state of a lost history in its place (the bad file stays aside)."""
    with store.transaction(agent, now) as tx:
        if tx.lost is not None:
            where = tx.quarantined[-1]
            tx.write(lost(agent, now, f"state file moved aside to {where}: {tx.lost}"), now)
        return tx


def quiet_gate(state_dir: Path, now: float) -> Gate:
    """A Gate at ``now`` (wall clock only) for 10 nodes, asking no probe, no Docker and no
    certificate."""
    cfg = load_config(env={}, overrides={"cluster_size": 10}, state_dir=state_dir)
    return Gate(cfg, "cilium-agent", clock=lambda: now, probe=None, inspect=None, identity=None)


def test_directory_and_files_are_private(state_dir: Path) -> None:
    """The state directory is created 0700 and the state and lock files 0600."""
    store = StateStore(state_dir)
    with store.transaction("cilium-agent", T0) as tx:
        tx.write(started(tx.state, T0), T0)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "cilium-agent.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "cilium-agent.lock").stat().st_mode) == 0o600


def test_state_round_trips(state_dir: Path) -> None:
    """What is written reads back equal, under the lock and without it: every field of the
    runs (id, stop, replaces, container included), the hold, the override, the ask and the
    clock anchor."""
    store = StateStore(state_dir)
    s = AgentState(
        "cilium-agent",
        runs=(
            Run("r1", T0, "gate", T0 + 3, 137, "record-exit", stop="docker stop"),
            Run("r2", T0 + 2000, "force", T0 + 2100, 0, "docker", user="alice", reason="urgent"),
            Run(
                "r3",
                T0 + 4000,
                "docker",
                container="c0ffee",
                reason="started outside the gate",
            ),
            Run("r4", T0 + 4500, "gate", T0 + 4600, 1, "exec", replaces="r3"),
            Run("r5", T0 + 5000, "unknown", reason="lost"),
        ),
        hold=OperatorFlag("bob", "maint", T0, until=T0 + 60),
        override=OperatorFlag("carol", "rollout", T0 + 1, None),
        ask=Ask(T0 + 2, T0 + 1200, "control plane down"),
        anchor=Anchor("b00t-1d", T0 + 5000, 1234.5),
    )
    with store.transaction("cilium-agent", T0) as tx:
        tx.write(s, T0)
        assert tx.state == s
    assert locked(store, "cilium-agent", T0).state == s
    assert store.read("cilium-agent").state == s


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"garbage",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"schema": 99}',
        b'{"schema": 1, "agent": "other", "runs": []}',
        b'{"schema": 1, "agent": "cilium-agent", "runs": [{"started_at": "yesterday"}]}',
    ],
)
def test_corrupt_state_is_moved_aside_not_deleted(state_dir: Path, content: bytes) -> None:
    """Under the lock a state file that does not parse is renamed with a timestamp, bytes and
    all, and reported (``lost``, an empty state); the lost history written in the same
    transaction takes its place, and the next transaction finds that and nothing to move."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / "cilium-agent.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with store.transaction("cilium-agent", T0) as tx:
        assert tx.lost is not None and tx.state == AgentState("cilium-agent")
        (moved,) = map(Path, tx.quarantined)
        assert moved.name == "cilium-agent.json.corrupt-20270115T080000Z"
        assert moved.read_bytes() == content and not path.exists()
        gone = lost("cilium-agent", T0, f"state file moved aside to {moved}: {tx.lost}")
        tx.write(gone, T0)
    assert moved.read_bytes() == content
    again = locked(store, "cilium-agent", T0 + 5)
    assert again.state == gone and again.lost is None and again.quarantined == []
    assert store.quarantined_files("cilium-agent") == [str(moved)]


@pytest.mark.parametrize("raises", [False, True], ids=["nothing-written", "raised"])
def test_a_bad_file_that_nothing_replaced_is_put_back(state_dir: Path, raises: bool) -> None:
    """A transaction that moved a bad file aside and ends without writing (its caller raised,
    or wrote nothing) puts the file back with its bytes: no state file at all would read as a
    clean history (invariant 9), and the next caller finds the same problem."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / "cilium-agent.json"
    path.write_bytes(b"garbage")

    class Boom(Exception):
        """The caller's failure inside the transaction."""

    with contextlib.suppress(Boom), store.transaction("cilium-agent", T0) as tx:
        assert not path.exists() and len(tx.quarantined) == 1
        if raises:
            raise Boom
    assert path.read_bytes() == b"garbage"
    assert tx.quarantined == [] and store.quarantined_files("cilium-agent") == []
    with store.transaction("cilium-agent", T0 + 1) as again:
        assert again.lost == tx.lost == "Expecting value: line 1 column 1 (char 0)"


def test_an_operator_action_that_fails_after_the_quarantine_loses_no_history(
    state_dir: Path,
) -> None:
    """A ``hold`` refused after the lock (its audit log is a symlink) exits 74 and leaves the
    corrupt file where it was, so ``status`` still says the history is unknown (level 1),
    not "first start"."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / "cilium-agent.json"
    path.write_bytes(b"garbage")
    (state_dir / "audit.jsonl").symlink_to(state_dir / "elsewhere")
    args = ("--state-dir", str(state_dir), "--cluster-size", "10")
    r = run_cli("hold", "--reason", "maintenance", *args)
    assert r.code == 74 and "audit log" in r.stderr_lines[-1], r.stderr
    assert path.read_bytes() == b"garbage" and store.quarantined_files("cilium-agent") == []
    (state_dir / "audit.jsonl").unlink()
    status = json.loads(run_cli("status", "--json", *args).stdout)
    assert status["history_lost"] is True and status["backoff_level"] == 1
    assert status["reason"].startswith("history unknown (state file moved aside to ")


@pytest.mark.parametrize("content", [b"garbage", b'{"schema": 4, "agent": "cilium-agent"}'])
def test_a_lock_free_read_reports_a_bad_file_and_leaves_it(state_dir: Path, content: bytes) -> None:
    """read() reports an unusable file (``lost``, an empty state) without moving it, taking
    the lock or creating anything: the directory is exactly as it was."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / "cilium-agent.json"
    path.write_bytes(content)
    before = sorted(p.name for p in state_dir.iterdir())
    loaded = store.read("cilium-agent")
    assert loaded.lost is not None and loaded.state == AgentState("cilium-agent")
    assert (loaded.quarantined, loaded.locked) == ([], False)
    assert path.read_bytes() == content
    assert sorted(p.name for p in state_dir.iterdir()) == before == ["cilium-agent.json"]


def test_symlinked_state_file_is_refused(state_dir: Path, tmp_path: Path) -> None:
    """A state file that is a symlink is refused and nothing is written through it."""
    store = StateStore(state_dir)
    store.prepare()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state_dir / "cilium-agent.json").symlink_to(victim)
    with pytest.raises(StateError, match="symlink"), store.transaction("cilium-agent", T0):
        pass
    assert victim.read_text() == "precious"


def test_symlinked_lock_is_refused(state_dir: Path, tmp_path: Path) -> None:
    """A lock file that is a symlink is refused before it is opened (it would be truncated)."""
    store = StateStore(state_dir)
    store.prepare()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state_dir / "cilium-agent.lock").symlink_to(victim)
    with (
        pytest.raises(StateError, match=r"lock file .* symlink"),
        store.transaction("cilium-agent"),
    ):
        pass
    assert victim.read_text() == "precious"


def test_fifo_in_place_of_state_is_refused(state_dir: Path) -> None:
    """A FIFO where the state file should be is refused without opening it (no hang)."""
    store = StateStore(state_dir)
    store.prepare()
    os.mkfifo(state_dir / "cilium-agent.json", 0o600)
    with pytest.raises(StateError, match="FIFO"), store.transaction("cilium-agent"):
        pass


def test_group_writable_directory_is_refused(state_dir: Path) -> None:
    """A state directory writable by group or others is refused and says how to fix it."""
    state_dir.mkdir(mode=0o700)
    state_dir.chmod(0o775)
    with pytest.raises(StateError, match=r"writable by group or others .*chmod 700"):
        StateStore(state_dir).prepare()


def test_state_owned_by_another_user_is_refused(state_dir: Path) -> None:
    """A state file owned by another user is refused (only meaningful as root)."""
    if os.geteuid() != 0:
        skip_or_fail("chown needs root", REQUIRE_ROOT_TESTS)
    store = StateStore(state_dir)
    store.prepare()
    p = state_dir / "cilium-agent.json"
    p.write_text("{}")
    os.chown(p, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"), store.transaction("cilium-agent"):
        pass


def test_disk_full_leaves_old_state_and_no_temp(small_tmpfs: Path) -> None:
    """On a full disk the write fails with StateError, the old state is intact, no temp remains."""
    state_dir = small_tmpfs / "state"
    store = StateStore(state_dir)
    with store.transaction("cilium-agent", T0) as tx:
        tx.write(started(tx.state, T0), T0)
    before = (state_dir / "cilium-agent.json").read_bytes()
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with (
        pytest.raises(StateError, match="no space left"),
        store.transaction("cilium-agent", T0) as tx,
    ):
        big = tx.state
        for i in range(40):
            big = started(big, T0 + 5000 + i, reason="x" * 400)
        tx.write(big, T0 + 5000)
    assert (state_dir / "cilium-agent.json").read_bytes() == before
    assert [p.name for p in state_dir.iterdir() if ".tmp-" in p.name] == []


def test_stale_temp_files_are_cleaned_under_the_lock(state_dir: Path) -> None:
    """Temp files left by a writer killed mid-write are removed by the next transaction."""
    store = StateStore(state_dir)
    store.prepare()
    stale = state_dir / ".cilium-agent.json.tmp-1-deadbeef"
    stale.write_text("{")
    with store.transaction("cilium-agent"):
        pass
    assert not stale.exists()


def test_audit_log_appends_json_lines(state_dir: Path) -> None:
    """Operator actions append one JSON object per line, and the tail reads back."""
    store = StateStore(state_dir)
    store.prepare()
    for i in range(3):
        store.audit(T0 + i, user="alice", uid=1000, command="hold", reason=f"r{i}")
    tail = store.audit_tail(2)
    assert [e["reason"] for e in tail] == ["r1", "r2"]
    lines = (state_dir / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["command"] for x in lines] == ["hold"] * 3


timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
texts = st.text(max_size=40)
flags = st.one_of(
    st.none(),
    st.builds(
        OperatorFlag,
        user=st.text(min_size=1, max_size=20),
        reason=texts,
        set_at=timestamps,
        until=st.one_of(st.none(), timestamps),
    ),
)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    """A run with every field drawn: any via, an end or none, any int32 exit code."""
    started = draw(timestamps)
    ended = draw(st.one_of(st.none(), st.floats(0, 1e5).map(lambda d: started + d)))
    return Run(
        id=draw(st.text(min_size=1, max_size=100)),
        started_at=started,
        via=draw(st.sampled_from(["gate", "force", "override", "docker", "unknown"])),
        ended_at=ended,
        exit_code=draw(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))),
        end_source=draw(st.sampled_from([None, "record-exit", "docker", "exec"])),
        stop=draw(st.one_of(st.none(), texts)),
        replaces=draw(st.one_of(st.none(), st.text(min_size=1, max_size=100))),
        container=draw(st.one_of(st.none(), st.text(max_size=100))),
        user=draw(st.one_of(st.none(), texts)),
        reason=draw(st.one_of(st.none(), texts)),
    )


def assert_same_state(back: AgentState, s: AgentState) -> None:
    """Every field equal, times to the microsecond the file keeps."""

    def close(a: float | None, b: float | None) -> bool:
        return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-5)

    assert back.agent == s.agent and len(back.runs) == len(s.runs)
    for a, b in zip(back.runs, s.runs, strict=True):
        assert close(a.started_at, b.started_at) and close(a.ended_at, b.ended_at)
        same = replace(a, started_at=0.0, ended_at=None) == replace(
            b, started_at=0.0, ended_at=None
        )
        assert same
    assert (back.ask is None) == (s.ask is None)
    if back.ask is not None and s.ask is not None:
        assert close(back.ask.at, s.ask.at) and close(back.ask.until, s.ask.until)
        assert back.ask.why == s.ask.why
    assert back.anchor == s.anchor or (
        back.anchor is not None
        and s.anchor is not None
        and close(back.anchor.wall, s.anchor.wall)
        and abs(back.anchor.boot - s.anchor.boot) < 1e-5
    )
    for fa, fb in [(back.hold, s.hold), (back.override, s.override)]:
        assert (fa is None) == (fb is None)
        if fa is not None and fb is not None:
            assert (fa.user, fa.reason) == (fb.user, fb.reason)
            assert close(fa.set_at, fb.set_at) and close(fa.until, fb.until)


asks = st.one_of(
    st.none(),
    st.builds(Ask, at=timestamps, until=st.one_of(st.none(), timestamps), why=texts),
)
anchors = st.one_of(
    st.none(),
    st.builds(
        Anchor,
        boot_id=st.text(min_size=1, max_size=100),
        wall=timestamps,
        boot=st.floats(0, 1e9),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(runs(), max_size=50), flags, flags, asks, anchors)
def test_document_round_trip_property(
    history: list[Run],
    hold: OperatorFlag | None,
    override: OperatorFlag | None,
    ask: Ask | None,
    anchor: Anchor | None,
) -> None:
    """Any state serializes to a document that parses back to the same state: every field of
    every run, of the hold, the override, the ask and the clock anchor (times to 1 µs)."""
    s = AgentState("a", tuple(history), hold=hold, override=override, ask=ask, anchor=anchor)
    doc = json.loads(json.dumps(to_document(s, T0)))
    assert doc["schema"] == SCHEMA_VERSION
    assert_same_state(from_document(doc, "a"), s)


@pytest.mark.parametrize("before", [None, b"garbage"], ids=["empty", "corrupt"])
def test_cancelled_gate_records_nothing(state_dir: Path, before: bytes | None) -> None:
    """A gate cancelled (SIGTERM) while deciding raises Cancelled and records no start; a
    corrupt state file it moved aside is back in place, bytes and all (nothing replaced it)."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / "cilium-agent.json"
    if before is not None:
        path.write_bytes(before)
    with pytest.raises(Cancelled):
        quiet_gate(state_dir, T0).decide(force=True, cancelled=lambda: True)
    if before is None:
        assert not path.exists() and store.read("cilium-agent").state.runs == ()
    else:
        assert path.read_bytes() == before and store.quarantined_files("cilium-agent") == []
    uncancelled = quiet_gate(state_dir, T0).decide(force=True)
    assert uncancelled.recorded and store.read("cilium-agent").state.runs[-1].via == "force"


# --- exact messages, exit 74 ---------------------------------------------------------------------

AGENT = "cilium-agent"


def refused(excinfo: pytest.ExceptionInfo[StateError], message: str) -> None:
    """The StateError says exactly ``message`` and maps to exit 74 (EX_IOERR)."""
    assert str(excinfo.value) == message
    assert excinfo.value.exit_code == EXIT_STATE_IO == 74


def private_dir(path: Path) -> Path:
    """``path`` created as a private (0700) state directory."""
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


def test_a_missing_directory_is_not_created_when_asked_not_to(state_dir: Path) -> None:
    """prepare(create=False) on a missing directory fails and creates nothing."""
    with pytest.raises(StateError) as excinfo:
        StateStore(state_dir).prepare(create=False)
    refused(excinfo, f"state directory {state_dir} does not exist")
    assert not state_dir.exists()


def test_missing_parents_of_the_state_directory_are_created(tmp_path: Path) -> None:
    """A state directory several levels below an existing one is created, itself 0700."""
    deep = tmp_path / "a" / "b" / "state"
    StateStore(deep).prepare()
    assert deep.is_dir() and stat.S_IMODE(deep.stat().st_mode) == 0o700


def test_a_directory_that_cannot_be_created_is_an_io_error() -> None:
    """mkdir failing (here: inside /proc) is a StateError naming the directory and why."""
    d = Path(f"/proc/agent-supervisor-test-{os.getpid()}/state")
    with pytest.raises(StateError) as excinfo:
        StateStore(d).prepare()
    refused(excinfo, f"cannot create state directory {d}: No such file or directory")


def test_a_directory_below_a_file_cannot_be_used(tmp_path: Path) -> None:
    """A state directory whose parent is a regular file is an I/O error, not a traceback."""
    (tmp_path / "file").write_text("x")
    d = tmp_path / "file" / "state"
    with pytest.raises(StateError) as excinfo:
        StateStore(d).prepare()
    refused(excinfo, f"cannot use state directory {d}: Not a directory")


def test_a_state_directory_that_is_a_file_is_refused(state_dir: Path) -> None:
    """A regular file where the state directory should be is refused."""
    state_dir.write_text("x")
    with pytest.raises(StateError) as excinfo:
        StateStore(state_dir).prepare()
    refused(excinfo, f"state directory {state_dir} is not a directory")


@pytest.mark.parametrize("mode", [0o775, 0o770, 0o702, 0o720, 0o722])
def test_a_directory_writable_by_group_or_others_is_refused(state_dir: Path, mode: int) -> None:
    """Write permission for the group, for others only, or both: refused, with the fix."""
    private_dir(state_dir).chmod(mode)
    with pytest.raises(StateError) as excinfo:
        StateStore(state_dir).prepare()
    refused(
        excinfo,
        f"state directory {state_dir} is writable by group or others (mode {mode:04o}); "
        f"run: chmod 700 {state_dir}",
    )


@pytest.mark.parametrize("mode", [0o700, 0o711, 0o750, 0o755])
def test_a_directory_others_can_only_read_or_search_is_accepted(state_dir: Path, mode: int) -> None:
    """Read and search bits for group and others are no threat: such a directory is used."""
    private_dir(state_dir).chmod(mode)
    store = StateStore(state_dir)
    with store.transaction(AGENT, T0) as tx:
        tx.write(started(tx.state, T0, run_id="r1"), T0)
    assert locked(store, AGENT, T0).state.runs == (Run("r1", T0),)


def test_a_state_directory_owned_by_another_user_is_refused(state_dir: Path) -> None:
    """A directory someone else owns could be swapped under us: refused, naming both uids."""
    if os.geteuid() != 0:
        skip_or_fail("chown needs root", REQUIRE_ROOT_TESTS)
    private_dir(state_dir)
    os.chown(state_dir, 65534, 65534)
    with pytest.raises(StateError) as excinfo:
        StateStore(state_dir).prepare()
    refused(
        excinfo,
        f"state directory {state_dir} is owned by uid 65534, not by this user (uid 0); "
        "refusing to use it",
    )


def _make(kind: str, path: Path) -> None:
    """Put a ``kind`` of entry at ``path``."""
    if kind == "a symlink":
        path.symlink_to(path.parent / "elsewhere")
    elif kind == "a FIFO":
        os.mkfifo(path, 0o600)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "a socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        if os.geteuid() != 0:
            skip_or_fail("mknod needs root", REQUIRE_ROOT_TESTS)
        kind_bit = stat.S_IFCHR if kind == "a character device" else stat.S_IFBLK
        os.mknod(path, kind_bit | 0o600, os.makedev(1, 3))


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("a symlink", "a symlink"),
        ("a FIFO", "a FIFO"),
        ("a directory", "a directory"),
        ("a socket", "a socket"),
        ("a character device", "a device"),
        ("a block device", "a device"),
    ],
)
@pytest.mark.parametrize("name", ["cilium-agent.json", "cilium-agent.lock"])
def test_an_entry_that_is_not_a_regular_file_is_refused(
    state_dir: Path, kind: str, said: str, name: str
) -> None:
    """Whatever stands where the state or lock file should be, the message says what it is."""
    store = StateStore(private_dir(state_dir))
    _make(kind, state_dir / name)
    what = "state file" if name.endswith(".json") else "lock file"
    with pytest.raises(StateError) as excinfo, store.transaction(AGENT, T0):
        pass
    refused(excinfo, f"{what} {state_dir / name} is {said}; refusing to read or write through it")


def test_a_state_path_that_cannot_be_examined_is_an_io_error(state_dir: Path) -> None:
    """lstat failing (here: a name too long for the file system) is a StateError."""
    store = StateStore(state_dir)
    agent = "a" * 300
    with pytest.raises(StateError) as excinfo, store.transaction(agent, T0):
        pass
    refused(excinfo, f"cannot stat state file {state_dir / (agent + '.json')}: File name too long")


# --- the lock ---------------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
os.close(fd)
"""


def test_a_lock_held_by_another_process_times_out_with_exit_74(state_dir: Path) -> None:
    """While another process holds the agent's lock, a store with a short lock_timeout gives up
    with a StateError naming the lock and the timeout, and changes nothing; once the holder
    lets go the same store goes ahead."""
    store = StateStore(state_dir, lock_timeout=0.2)
    with store.transaction(AGENT, T0) as tx:
        tx.write(started(tx.state, T0), T0)
    before = (state_dir / f"{AGENT}.json").read_bytes()
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir / f"{AGENT}.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            began = time.monotonic()
            with pytest.raises(StateError) as excinfo, store.transaction(AGENT, T0 + 5) as tx:
                tx.write(started(tx.state, T0 + 5), T0 + 5)
            waited = time.monotonic() - began
            assert 0.2 <= waited < 10  # gave up after its own timeout, not the default 10 s
            refused(
                excinfo,
                f"cannot lock {state_dir / (AGENT + '.lock')}: held by another process for 0.2s",
            )
            assert (state_dir / f"{AGENT}.json").read_bytes() == before
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
    assert holder.returncode == 0
    with store.transaction(AGENT, T0 + 5) as tx:
        tx.write(started(tx.state, T0 + 5), T0 + 5)
    assert [r.started_at for r in locked(store, AGENT, T0 + 5).state.runs] == [T0, T0 + 5]


def test_a_symlink_planted_while_waiting_for_the_lock_is_refused(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file is checked again under the lock: a symlink put in its place after the
    first look, while the caller waited for the lock, is refused and nothing is read through it."""
    import fcntl

    store = StateStore(state_dir)
    store.prepare()
    victim = tmp_path / "victim.json"
    victim.write_text('{"schema": 2, "agent": "cilium-agent", "runs": []}')
    real = fcntl.flock

    def planting_flock(fd: int, operation: int) -> None:
        (state_dir / f"{AGENT}.json").symlink_to(victim)
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", planting_flock)
    with pytest.raises(StateError) as excinfo:
        locked(store, AGENT, T0)
    refused(
        excinfo,
        f"state file {state_dir / (AGENT + '.json')} is a symlink; "
        "refusing to read or write through it",
    )


def test_a_symlink_planted_before_a_write_is_refused(state_dir: Path, tmp_path: Path) -> None:
    """A symlink put in place of the state file during a transaction is not written through."""
    store = StateStore(state_dir)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    with pytest.raises(StateError) as excinfo, store.transaction(AGENT, T0) as tx:
        (state_dir / f"{AGENT}.json").symlink_to(victim)
        tx.write(started(tx.state, T0), T0)
    refused(
        excinfo,
        f"state file {state_dir / (AGENT + '.json')} is a symlink; "
        "refusing to read or write through it",
    )
    assert victim.read_text() == "precious"


def lying_lstat(monkeypatch: pytest.MonkeyPatch, path: Path, decoy: Path) -> None:
    """Make lstat of ``path`` describe ``decoy``: the entry changes between check and open."""
    real = os.lstat

    def fake(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real(decoy if Path(p) == path else p, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", fake)


def test_a_symlink_swapped_in_after_the_check_is_not_followed(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file is opened O_NOFOLLOW: a symlink swapped in after lstat is refused."""
    store = StateStore(state_dir)
    store.prepare()
    decoy = state_dir / "decoy"
    decoy.write_text("{}")
    target = tmp_path / "target.json"
    target.write_text('{"schema": 2, "agent": "cilium-agent", "runs": []}')
    path = state_dir / f"{AGENT}.json"
    path.symlink_to(target)
    lying_lstat(monkeypatch, path, decoy)
    with pytest.raises(StateError) as excinfo:
        locked(store, AGENT, T0)
    refused(excinfo, f"cannot read state file {path}: Too many levels of symbolic links")


@pytest.mark.parametrize("how", ["transaction", "read"])
def test_a_fifo_swapped_in_after_the_check_does_not_hang(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The state file is opened O_NONBLOCK, under the lock and without it: a FIFO swapped in
    after lstat reads as empty (an unusable file) instead of blocking the gate forever."""
    store = StateStore(state_dir)
    store.prepare()
    decoy = state_dir / "decoy"
    decoy.write_text("{}")
    path = state_dir / f"{AGENT}.json"
    os.mkfifo(path, 0o600)
    lying_lstat(monkeypatch, path, decoy)
    done: list[Loaded] = []

    def call() -> None:
        done.append(locked(store, AGENT, T0) if how == "transaction" else store.read(AGENT))

    reader = threading.Thread(target=call)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked open return
        reader.join(10)
        pytest.fail("opening a FIFO in place of the state file blocked")
    assert len(done) == 1 and done[0].state == AgentState(AGENT)
    assert done[0].lost == "Expecting value: line 1 column 1 (char 0)"


def test_a_temp_name_taken_by_a_symlink_is_not_written_through(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is created O_EXCL | O_NOFOLLOW: a symlink squatting on its name is refused
    and its target is untouched."""
    store = StateStore(state_dir)
    store.prepare()
    monkeypatch.setattr(os, "urandom", lambda n: bytes(range(n)))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state_dir / f".{AGENT}.json.tmp-{os.getpid()}-00010203").symlink_to(victim)
    with pytest.raises(StateError) as excinfo:
        store.write_state(started(AgentState(AGENT), T0), T0)
    refused(excinfo, f"cannot write state file {state_dir / (AGENT + '.json')}: File exists")
    assert victim.read_text() == "precious"
    assert not (state_dir / f"{AGENT}.json").exists()


# --- writes: fsync, errors, format ------------------------------------------------------------


def test_a_write_is_fsynced_then_renamed_then_the_directory_fsynced(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability in order: fsync of the temp file, os.replace onto the state file, fsync of the
    directory; then the journal is allocated the same way but linked (never replacing one); a
    quarantine's rename is followed by a directory fsync too; the audit log is fsynced after
    each append."""
    store = StateStore(state_dir)
    store.prepare()
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_link = os.link
    real_fsync_dir = files_module.fsync_dir

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    def rename(src: Any, dst: Any) -> None:
        events.append(("rename", Path(src).name, Path(dst).name))
        real_rename(src, dst)

    def fsync_dir(path: Any) -> None:
        events.append(("fsync_dir", str(path)))
        real_fsync_dir(path)

    def link(src: Any, dst: Any) -> None:
        events.append(("link", Path(src).name, Path(dst).name))
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(store_module, "fsync_dir", fsync_dir)
    monkeypatch.setattr(files_module, "fsync_dir", fsync_dir)
    store.write_state(started(AgentState(AGENT), T0), T0)
    store.audit(T0, user="alice", command="hold")
    tmp, jtmp = events[0][1], events[3][1]
    assert re.fullmatch(rf"\.{AGENT}\.json\.tmp-{os.getpid()}-[0-9a-f]{{8}}", tmp)
    assert re.fullmatch(rf"\.{AGENT}\.journal\.tmp-{os.getpid()}-[0-9a-f]{{8}}", jtmp)
    assert events == [
        ("fsync", tmp),
        ("replace", tmp, f"{AGENT}.json"),
        ("fsync_dir", str(state_dir)),
        ("fsync", jtmp),
        ("link", jtmp, f"{AGENT}.journal"),
        ("fsync_dir", str(state_dir)),
        ("fsync", "audit.jsonl"),
    ]
    events.clear()
    (state_dir / f"{AGENT}.json").write_bytes(b"garbage")
    settled(store, AGENT, T0)
    tmp = events[2][1]
    assert events == [
        ("rename", f"{AGENT}.json", f"{AGENT}.json.corrupt-20270115T080000Z"),
        ("fsync_dir", str(state_dir)),
        ("fsync", tmp),
        ("replace", tmp, f"{AGENT}.json"),
        ("fsync_dir", str(state_dir)),
    ]


def test_the_state_file_is_sorted_indented_json(state_dir: Path) -> None:
    """The file is JSON with sorted keys, one-space indent and a final newline (diffable):
    schema 3 with every run's id, the ask, and the clock anchor (boot clock to 1 µs)."""
    store = StateStore(state_dir)
    store.prepare()
    s = ended(started(AgentState(AGENT), T0, user="alice", run_id="r1"), T0 + 5, 1)
    s = replace(asked(s, T0 + 6, T0 + 600, "first start"), anchor=Anchor("b00t", T0, 12.3456789))
    store.write_state(s, T0 + 10)
    assert (state_dir / f"{AGENT}.json").read_text() == (
        "{\n"
        ' "agent": "cilium-agent",\n'
        ' "ask": {\n'
        '  "at": "2027-01-15T08:00:06.000000Z",\n'
        '  "until": "2027-01-15T08:10:00.000000Z",\n'
        '  "why": "first start"\n'
        " },\n"
        ' "clock": {\n'
        '  "boot": 12.345679,\n'
        '  "boot_id": "b00t",\n'
        '  "wall": "2027-01-15T08:00:00.000000Z"\n'
        " },\n"
        ' "debug": null,\n'
        ' "hold": null,\n'
        ' "override": null,\n'
        ' "runs": [\n'
        "  {\n"
        '   "container": null,\n'
        '   "end_source": "record-exit",\n'
        '   "ended_at": "2027-01-15T08:00:05.000000Z",\n'
        '   "exit_code": 1,\n'
        '   "id": "r1",\n'
        '   "reason": null,\n'
        '   "replaces": null,\n'
        '   "started_at": "2027-01-15T08:00:00.000000Z",\n'
        '   "stop": null,\n'
        '   "user": "alice",\n'
        '   "via": "gate"\n'
        "  }\n"
        " ],\n"
        ' "schema": 3,\n'
        ' "updated_at": "2027-01-15T08:00:10.000000Z"\n'
        "}\n"
    )


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError(errno.EIO, "Input/output error"), "Input/output error"),
        (OSError("replace refused"), "replace refused"),
    ],
)
def test_a_failed_write_leaves_the_old_state_and_no_temp(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, why: str
) -> None:
    """A write that fails is a StateError saying why (ENOSPC in words); the old file is intact
    and the temp file is gone."""
    store = StateStore(state_dir)
    with store.transaction(AGENT, T0) as tx:
        tx.write(started(tx.state, T0), T0)
    before = (state_dir / f"{AGENT}.json").read_bytes()

    def fail(*_: object) -> None:
        raise error

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StateError) as excinfo:
        store.write_state(started(AgentState(AGENT), T0 + 5000), T0 + 5000)
    refused(excinfo, f"cannot write state file {state_dir / (AGENT + '.json')}: {why}")
    assert (state_dir / f"{AGENT}.json").read_bytes() == before
    assert [p.name for p in state_dir.iterdir() if ".tmp-" in p.name] == []


def test_a_write_into_a_vanished_directory_is_an_io_error(tmp_path: Path) -> None:
    """Writing where the directory no longer exists is a StateError, not a traceback."""
    d = tmp_path / "gone"
    with pytest.raises(StateError) as excinfo:
        StateStore(d).write_state(AgentState(AGENT), T0)
    refused(excinfo, f"cannot write state file {d / (AGENT + '.json')}: No such file or directory")


def test_a_transaction_keeps_what_it_wrote(state_dir: Path) -> None:
    """After tx.write the transaction's state is the state written."""
    store = StateStore(state_dir)
    with store.transaction(AGENT, T0) as tx:
        new = started(tx.state, T0)
        tx.write(new, T0)
        assert tx.state == new


# --- reading: sizes, hand-written files -----------------------------------------------------------


def test_a_state_file_of_exactly_the_size_limit_is_read(state_dir: Path) -> None:
    """A valid file of exactly MAX_STATE_BYTES (leading blanks) is read whole, not quarantined."""
    store = StateStore(state_dir)
    store.prepare()
    body = b'{"schema": 2, "agent": "cilium-agent", "runs": []}'
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(b" " * (MAX_STATE_BYTES - len(body)) + body)
    tx = locked(store, AGENT, T0)
    assert tx.quarantined == [] and tx.state == AgentState(AGENT)


def test_a_state_file_over_the_size_limit_is_quarantined(state_dir: Path) -> None:
    """One byte over MAX_STATE_BYTES (16 MiB): moved aside unread, and the reason says the
    size."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.json"
    body = b'{"schema": 2, "agent": "cilium-agent", "runs": []}'
    path.write_bytes(b" " * (MAX_STATE_BYTES + 1 - len(body)) + body)
    assert MAX_STATE_BYTES == 16 * 1024 * 1024
    with store.transaction(AGENT, T0) as tx:
        moved = state_dir / f"{AGENT}.json.corrupt-20270115T080000Z"
        assert tx.quarantined == [str(moved)] and tx.state == AgentState(AGENT)
        assert tx.lost == "16777217 bytes, larger than 16777216"
        assert moved.stat().st_size == MAX_STATE_BYTES + 1


def test_a_valid_history_of_6000_runs_is_trimmed_not_quarantined(state_dir: Path) -> None:
    """Issue 16: a valid history of 6,000 runs (1.8 MB here, over the old 1 MiB limit) is read
    as its newest MAX_RUNS runs, under the lock and without it, and nothing is moved aside:
    the gate decides on that history (50 failed runs in a row), not on a lost one, and its
    next write leaves a file of 50 runs."""
    store = StateStore(state_dir)
    store.prepare()
    history = tuple(
        Run(f"r{i}", T0 + i * 60, "gate", T0 + i * 60 + 5, 1, "record-exit") for i in range(6000)
    )
    path = state_dir / f"{AGENT}.json"
    store.write_state(AgentState(AGENT, history), T0)
    assert 1024 * 1024 < path.stat().st_size < MAX_STATE_BYTES
    kept = AgentState(AGENT, history[-MAX_RUNS:])
    loaded = store.read(AGENT)
    assert (loaded.state, loaded.lost) == (kept, None)
    with store.transaction(AGENT, T0) as tx:
        assert (tx.state, tx.lost, tx.quarantined) == (kept, None, [])
    now = history[-1].ended_at or 0.0
    result = quiet_gate(state_dir, now).decide()
    d = result.decision
    assert result.quarantined == () and store.quarantined_files(AGENT) == []
    assert not d.allowed and d.backoff_level == MAX_RUNS
    assert d.reason.startswith(f"{MAX_RUNS} failed runs in a row")
    doc = json.loads(path.read_text())
    assert [r["id"] for r in doc["runs"]] == [r.id for r in kept.runs]


SCHEMA_1 = """{
  "schema": 1,
  "agent": "cilium-agent",
  "updated_at": "2027-01-15T09:00:00Z",
  "hold": {"user": "alice", "reason": "maintenance", "set_at": "2027-01-15T08:30:00Z",
           "until": "2027-01-15T10:00:00+00:00"},
  "override": null,
  "runs": [
    {"started_at": "2027-01-15T08:00:00Z", "ended_at": "2027-01-15T08:00:05Z",
     "exit_code": 1, "end_source": "record-exit"},
    {"started_at": "2027-01-15T08:20:00Z", "ended_at": "2027-01-15T08:40:00Z",
     "end_source": "inferred"},
    {"started_at": "2027-01-15T08:40:00Z", "via": "force", "user": "bob", "reason": "hotfix"}
  ]
}
"""

SCHEMA_2 = """{
 "agent": "cilium-agent",
 "deferral": {"reason": "control plane unhealthy", "set_at": "2027-01-15T08:41:00.000000Z",
              "until": "2027-01-15T09:05:00.000000Z", "user": "probe"},
 "hold": null,
 "override": {"reason": "rollout", "set_at": "2027-01-15T08:00:00.000000Z", "until": null,
              "user": "carol"},
 "runs": [
  {"end_source": "docker", "ended_at": "2027-01-15T08:00:05.500000Z", "exit_code": 137,
   "reason": "started outside the gate", "started_at": "2027-01-15T08:00:00.000000Z",
   "user": null, "via": "docker"},
  {"end_source": null, "ended_at": null, "exit_code": null, "reason": "lost",
   "started_at": "2027-01-15T08:40:00.000000Z", "user": null, "via": "unknown"}
 ],
 "schema": 2,
 "updated_at": "2027-01-15T08:41:00.000000Z"
}
"""


SCHEMA_3 = """{
 "agent": "cilium-agent",
 "ask": {"at": "2027-01-15T08:41:00Z", "until": null, "why": ""},
 "clock": {"boot": 93.5, "boot_id": "6b1c0d1e", "wall": "2027-01-15T08:41:00Z"},
 "hold": null,
 "override": null,
 "runs": [
  {"container": "c0ffee", "end_source": "docker", "ended_at": "2027-01-15T08:20:00Z",
   "exit_code": 137, "id": "20270115T080000Z-a1b2c3", "reason": null, "replaces": null,
   "started_at": "2027-01-15T08:00:00Z", "stop": "docker stop", "user": null, "via": "gate"},
  {"id": "20270115T082000Z-d4e5f6", "started_at": "2027-01-15T08:20:00.5Z",
   "replaces": "20270115T080000Z-a1b2c3"}
 ],
 "schema": 3,
 "updated_at": "2027-01-15T08:41:00Z"
}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SCHEMA_1,
            AgentState(
                AGENT,
                runs=(
                    Run(legacy(T0), T0, ended_at=T0 + 5, exit_code=1, end_source="record-exit"),
                    Run(legacy(T0 + 1200), T0 + 1200),
                    Run(legacy(T0 + 2400), T0 + 2400, via="force", user="bob", reason="hotfix"),
                ),
                hold=OperatorFlag("alice", "maintenance", T0 + 1800, T0 + 7200),
            ),
        ),
        (
            SCHEMA_2,
            AgentState(
                AGENT,
                runs=(
                    Run(
                        legacy(T0),
                        T0,
                        "docker",
                        T0 + 5.5,
                        137,
                        "docker",
                        reason="started outside the gate",
                    ),
                    Run(legacy(T0 + 2400), T0 + 2400, "unknown", reason="lost"),
                ),
                override=OperatorFlag("carol", "rollout", T0),
                ask=Ask(T0 + 2460, T0 + 3900, "probe"),
            ),
        ),
        (
            SCHEMA_3,
            AgentState(
                AGENT,
                runs=(
                    Run(
                        "20270115T080000Z-a1b2c3",
                        T0,
                        "gate",
                        T0 + 1200,
                        137,
                        "docker",
                        stop="docker stop",
                        container="c0ffee",
                    ),
                    Run(
                        "20270115T082000Z-d4e5f6",
                        T0 + 1200.5,
                        replaces="20270115T080000Z-a1b2c3",
                    ),
                ),
                ask=Ask(T0 + 2460),
                anchor=Anchor("6b1c0d1e", T0 + 2460, 93.5),
            ),
        ),
    ],
    ids=["schema-1", "schema-2", "schema-3"],
)
def test_a_hand_written_state_file_is_read_exactly(
    state_dir: Path, text: str, expected: AgentState
) -> None:
    """A valid file as an operator or an older version wrote it reads as exactly this state
    (schema 1: an inferred end becomes unknown; schemas 1 and 2: runs get legacy ids and a
    deferral becomes the probe's ask) and is not quarantined."""
    store = StateStore(state_dir)
    store.prepare()
    (state_dir / f"{AGENT}.json").write_text(text)
    tx = locked(store, AGENT, T0 + 3000)
    assert tx.quarantined == [] and store.quarantined_files(AGENT) == []
    assert tx.state == expected


# --- quarantine ---------------------------------------------------------------------------------


def test_quarantine_names_are_stamped_and_never_reused(state_dir: Path) -> None:
    """Three corrupt files found within one second go to .corrupt-<stamp>, .1 and .2, each with
    its own bytes, and each is logged as state.quarantined with where it went and why."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.json"
    stamp = "20270115T080000Z"
    names = [f"{AGENT}.json.corrupt-{stamp}", f"{AGENT}.json.corrupt-{stamp}.1"]
    names.append(f"{AGENT}.json.corrupt-{stamp}.2")
    with structlog.testing.capture_logs() as logs:
        for i, now in enumerate([T0, T0 + 0.3, T0 + 0.9]):
            path.write_bytes(b"bad %d" % i)
            tx = settled(store, AGENT, now)
            assert tx.quarantined == [str(state_dir / names[i])]
    assert [(state_dir / n).read_bytes() for n in names] == [b"bad 0", b"bad 1", b"bad 2"]
    assert store.quarantined_files(AGENT) == [str(state_dir / n) for n in names]
    assert logs == [
        {
            "event": "state.quarantined",
            "log_level": "error",
            "path": str(path),
            "moved_to": str(state_dir / n),
            "why": "Expecting value: line 1 column 1 (char 0)",
            "effect": "history unknown: the next start waits for this node's slot",
        }
        for n in names
    ]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"\xff", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (
            b'{"schema": 4, "agent": "cilium-agent"}',
            "schema version is 4, this version reads 1, 2, 3",
        ),
        (
            b'{"schema": 3, "agent": "cilium-agent", "runs": [{"started_at": "2027-01-15T08Z"}]}',
            "runs[0] has no 'id'",
        ),
        (
            b'{"schema": 2, "agent": "' + b"x" * 300 + b'"}',
            ("the state is for agent '" + "x" * 300)[:200],
        ),
    ],
    ids=["json", "utf-8", "newer-schema", "run-without-id", "long-reason"],
)
def test_the_quarantine_reason_is_the_first_200_characters_of_the_error(
    state_dir: Path, content: bytes, why: str
) -> None:
    """Why a file is unusable is the first line of the error, cut at 200 characters, and the
    Gate's lost-history run says where the file went and that why."""
    store = StateStore(state_dir)
    store.prepare()
    (state_dir / f"{AGENT}.json").write_bytes(content)
    assert store.read(AGENT).lost == why
    result = quiet_gate(state_dir, T0).decide(record=False)
    (moved,) = store.quarantined_files(AGENT)
    assert result.quarantined == (moved,) and Path(moved).read_bytes() == content
    assert result.state is not None
    (run,) = result.state.runs
    assert (run.started_at, run.via, run.ended_at) == (T0, "unknown", None)
    assert run.reason == f"state file moved aside to {moved}: {why}"
    assert store.read(AGENT).state.runs == (run,)


def test_a_corrupt_file_that_cannot_be_moved_aside_stays_and_is_an_io_error(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the rename fails the file stays where it was, untouched, and the error says why."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(b"garbage")

    def fail(*_: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(StateError) as excinfo:
        locked(store, AGENT, T0)
    refused(
        excinfo,
        f"state file {path} is corrupt (Expecting value: line 1 column 1 (char 0)) and cannot "
        "be moved aside: Read-only file system",
    )
    assert path.read_bytes() == b"garbage"


@pytest.mark.parametrize("put_back_fails", [False, True])
def test_a_lost_history_that_cannot_be_written_puts_the_file_back(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, put_back_fails: bool
) -> None:
    """If the history-lost state cannot be written, the corrupt file is put back (so the next
    caller finds the same problem) and the caller gets the write error (DiskFull for ENOSPC);
    if even that fails the write error is still what is reported, and the bytes stay aside."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(b"garbage")
    renames: list[str] = []
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        renames.append(Path(dst).name)
        if put_back_fails and len(renames) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    def no_space(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(DiskFull) as excinfo:
        settled(store, AGENT, T0)
    refused(excinfo, f"cannot write state file {path}: no space left on device")
    assert renames == [f"{AGENT}.json.corrupt-20270115T080000Z", f"{AGENT}.json"]
    if put_back_fails:
        assert [Path(q).read_bytes() for q in store.quarantined_files(AGENT)] == [b"garbage"]
    else:
        assert path.read_bytes() == b"garbage"
        assert store.quarantined_files(AGENT) == []


# --- backup, temp files, descriptors ------------------------------------------------------------


def test_backup_copies_the_state_file_aside(state_dir: Path) -> None:
    """reset's backup is a private copy named with the time; without a state there is none."""
    store = StateStore(state_dir)
    store.prepare()
    assert store.backup(AGENT, T0) is None
    store.write_state(started(AgentState(AGENT), T0), T0)
    target = store.backup(AGENT, T0 + 61)
    expected = state_dir / f"{AGENT}.json.reset-20270115T080101Z"
    assert target == str(expected)
    assert expected.read_bytes() == (state_dir / f"{AGENT}.json").read_bytes()
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600


def test_backup_refuses_a_hostile_or_unreadable_state(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backup refuses a symlinked state file, and a read failure is an I/O error."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.json"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError) as excinfo:
        store.backup(AGENT, T0)
    refused(excinfo, f"state file {path} is a symlink; refusing to read or write through it")
    path.unlink()
    path.mkdir()
    decoy = state_dir / "decoy"
    decoy.write_text("{}")
    lying_lstat(monkeypatch, path, decoy)
    with pytest.raises(StateError) as excinfo:
        store.backup(AGENT, T0)
    refused(excinfo, f"cannot read state file {path}: Is a directory")


def test_only_regular_stale_temp_files_are_removed(state_dir: Path, tmp_path: Path) -> None:
    """A symlink that looks like a temp file is not ours: it is left alone."""
    store = StateStore(state_dir)
    store.prepare()
    link = state_dir / f".{AGENT}.json.tmp-1-deadbeef"
    link.symlink_to(tmp_path / "target")
    (tmp_path / "target").write_text("x")
    stale = state_dir / f".{AGENT}.json.tmp-2-deadbeef"
    stale.write_text("{")
    with store.transaction(AGENT, T0):
        pass
    assert link.is_symlink() and not stale.exists()


@pytest.mark.parametrize("failing", ["unlink", "scandir"])
def test_a_stale_temp_that_cannot_be_removed_does_not_block(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Failing to list the directory or to remove a stale temp file is not an error: the
    transaction goes ahead."""
    store = StateStore(state_dir)
    store.prepare()
    (state_dir / f".{AGENT}.json.tmp-1-deadbeef").write_text("{")

    def fail(*_: object, **__: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, failing, fail)
    with store.transaction(AGENT, T0) as tx:
        tx.write(started(tx.state, T0, run_id="r1"), T0)
    monkeypatch.undo()
    assert locked(store, AGENT, T0).state.runs == (Run("r1", T0),)
    if failing == "scandir":
        monkeypatch.setattr(os, "scandir", fail)
        assert store.quarantined_files(AGENT) == []


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def test_no_descriptor_leaks_over_many_calls(state_dir: Path) -> None:
    """A long-running daemon reads and writes the state thousands of times: after 200 rounds of
    transaction, locked and lock-free read, journal, audit, tail, backup and a quarantine, the
    process has exactly the descriptors it had before."""
    store = StateStore(state_dir)
    store.prepare()
    locked(store, AGENT, T0)  # first use may import and configure things that keep a descriptor
    store.audit(T0, user="alice", command="hold")
    before = open_fds()
    for i in range(200):
        now = T0 + i
        with store.transaction(AGENT, now) as tx:
            tx.write(started(tx.state, now), now)
        locked(store, AGENT, now)
        store.read(AGENT)
        store.journal_end(AGENT, Ended(now, 1))
        store.journal(AGENT)
        store.audit(now, user="alice", command="hold")
        store.audit_tail()
        store.check_audit()
        if i % 50 == 0:
            store.backup(AGENT, now)
            (state_dir / f"{AGENT}.json").write_bytes(b"garbage")
            locked(store, AGENT, now)
    assert open_fds() == before


# --- the audit log ------------------------------------------------------------------------------


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 0 for the test, so that a file's mode is exactly what the code asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("no_umask")
def test_the_audit_log_is_private_sorted_json_lines(state_dir: Path) -> None:
    """Each operator action is one sorted JSON line with its time; the log is created 0600
    whatever the umask."""
    store = StateStore(state_dir)
    store.prepare()
    store.audit(T0, user="alice", uid=1000, command="hold", reason="r")
    store.check_audit()
    path = state_dir / "audit.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == (
        '{"command": "hold", "reason": "r", "time": "2027-01-15T08:00:00.000000Z", '
        '"uid": 1000, "user": "alice"}\n'
    )


def test_a_hostile_audit_log_is_refused(state_dir: Path, tmp_path: Path) -> None:
    """A symlinked audit log is refused before a change and by audit, and read as empty."""
    store = StateStore(state_dir)
    store.prepare()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state_dir / "audit.jsonl").symlink_to(victim)
    message = (
        f"audit log {state_dir / 'audit.jsonl'} is a symlink; refusing to read or write through it"
    )
    for call in (store.check_audit, lambda: store.audit(T0, user="alice")):
        with pytest.raises(StateError) as excinfo:
            call()
        refused(excinfo, message)
    assert store.audit_tail() == []
    assert victim.read_text() == "precious\n"


def test_an_audit_log_swapped_for_a_symlink_after_the_check_is_not_followed(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit log is opened O_NOFOLLOW: a symlink swapped in after lstat is not appended
    through."""
    store = StateStore(state_dir)
    store.prepare()
    decoy = state_dir / "decoy"
    decoy.write_text("")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = state_dir / "audit.jsonl"
    path.symlink_to(victim)
    lying_lstat(monkeypatch, path, decoy)
    with pytest.raises(StateError) as excinfo:
        store.audit(T0, user="alice")
    refused(excinfo, f"cannot append to audit log {path}: Too many levels of symbolic links")
    assert victim.read_text() == "precious\n"


def test_an_audit_append_that_fails_is_an_io_error(tmp_path: Path) -> None:
    """An append that cannot be made is a StateError naming the log and why."""
    d = tmp_path / "gone"
    with pytest.raises(StateError) as excinfo:
        StateStore(d).audit(T0, user="alice")
    refused(excinfo, f"cannot append to audit log {d / 'audit.jsonl'}: No such file or directory")


def test_audit_tail_returns_the_last_ten_entries_that_parse(state_dir: Path) -> None:
    """By default the last ten parseable entries, oldest first; torn, non-object and invalid
    UTF-8 lines are skipped, the first line of a small log included."""
    store = StateStore(state_dir)
    store.prepare()
    for i in range(12):
        store.audit(T0 + i, n=i)
    assert [e["n"] for e in store.audit_tail()] == list(range(2, 12))
    assert [e["n"] for e in store.audit_tail(100)] == list(range(12))
    with (state_dir / "audit.jsonl").open("ab") as fh:
        fh.write(b'[1]\n\xff\xfe\n{"n": 12}\n{"n": 13, "tor')
    assert [e["n"] for e in store.audit_tail(4)] == [12]
    assert [e["n"] for e in store.audit_tail(5)] == [11, 12]


@pytest.mark.parametrize(("size", "kept"), [(1024, 64), (1025, 63)])
def test_audit_tail_reads_only_the_last_64_kib(state_dir: Path, size: int, kept: int) -> None:
    """Only the last 64 KiB are read: with lines of ``size`` bytes that is ``kept`` whole lines
    (a line cut by the start of the window is dropped)."""
    store = StateStore(state_dir)
    store.prepare()
    stem = len(json.dumps({"n": 0, "pad": "", "time": iso(T0)}, sort_keys=True)) + 1
    for i in range(100):
        store.audit(T0, n=i % 10, pad="x" * (size - stem))
    assert (state_dir / "audit.jsonl").stat().st_size == 100 * size
    assert len(store.audit_tail(1000)) == kept


# --- reading without the lock ---------------------------------------------------------------------


def test_read_does_not_wait_for_the_lock(state_dir: Path) -> None:
    """While another process holds the agent's lock a transaction gives up after its timeout,
    but read() answers at once with the last state written, pending ends included."""
    store = StateStore(state_dir, lock_timeout=0.2)
    s = started(AgentState(AGENT), T0, run_id="r1")
    with store.transaction(AGENT, T0) as tx:
        tx.write(s, T0)
    end = Ended(T0 + 5, 143, "record-exit", "r1")
    store.journal_end(AGENT, end)
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir / f"{AGENT}.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            with pytest.raises(StateError, match="held by another process"):
                locked(store, AGENT, T0)
            loaded = store.read(AGENT)
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
    assert (loaded.state, loaded.pending, loaded.lost, loaded.locked) == (s, (end,), None, False)


def test_read_of_a_missing_or_wrong_directory(tmp_path: Path) -> None:
    """read() of a directory that does not exist is an empty state and creates nothing; a file
    where the directory should be is an I/O error."""
    d = tmp_path / "state"
    loaded = StateStore(d).read(AGENT)
    assert (loaded.state, loaded.lost, loaded.pending) == (AgentState(AGENT), None, ())
    assert not d.exists()
    d.write_text("x")
    with pytest.raises(StateError) as excinfo:
        StateStore(d).read(AGENT)
    refused(excinfo, f"state directory {d} is not a directory")


def test_a_read_only_state_directory_is_read_but_not_locked(small_tmpfs: Path) -> None:
    """On a read-only file system a transaction cannot take the lock (74, naming it), while
    read() gives the state and the journal's ends and changes nothing."""
    sd = small_tmpfs / "state"
    store = StateStore(sd)
    s = started(AgentState(AGENT), T0, run_id="r1")
    with store.transaction(AGENT, T0) as tx:
        tx.write(s, T0)
    end = Ended(T0 + 5, 143, "record-exit", "r1")
    store.journal_end(AGENT, end)
    before = {p.name: p.read_bytes() for p in sd.iterdir()}
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(StateError) as excinfo:
        locked(store, AGENT, T0 + 10)
    refused(excinfo, f"cannot lock {sd / (AGENT + '.lock')}: Read-only file system")
    loaded = store.read(AGENT)
    assert (loaded.state, loaded.pending, loaded.lost, loaded.locked) == (s, (end,), None, False)
    assert {p.name: p.read_bytes() for p in sd.iterdir()} == before


# --- the journal ----------------------------------------------------------------------------------


def test_the_journal_is_allocated_by_the_first_state_write(state_dir: Path) -> None:
    """A successful state write allocates the journal (JOURNAL_BYTES of blanks, 0600, no end)
    while there is space; later writes keep that very file."""
    store = StateStore(state_dir)
    store.prepare()
    journal = state_dir / f"{AGENT}.journal"
    assert store.journal(AGENT) == () and not journal.exists()
    store.write_state(started(AgentState(AGENT), T0), T0)
    assert journal.read_bytes() == b" " * JOURNAL_BYTES
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    inode = journal.stat().st_ino
    store.write_state(started(AgentState(AGENT), T0 + 1), T0 + 1)
    assert journal.stat().st_ino == inode and store.journal(AGENT) == ()


def test_journal_ends_are_pending_until_a_state_write_takes_them(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """journal_end rewrites the journal in place (same inode, same size) and the ends come back
    in order with every field, from journal() and as a transaction's ``pending``; a failed
    state write keeps them, a successful one clears the journal in place."""
    store = StateStore(state_dir)
    store.prepare()
    s = started(AgentState(AGENT), T0, run_id="r1")
    store.write_state(s, T0)
    journal = state_dir / f"{AGENT}.journal"
    inode = journal.stat().st_ino
    ends = (
        Ended(T0 + 5, 143, "record-exit", "r1"),
        Ended(T0 + 6.25, None, "docker", None, "docker stop"),
        Ended(T0 + 7, 127, "exec", "r2"),
    )
    for e in ends:
        store.journal_end(AGENT, e)
    assert store.journal(AGENT) == ends
    assert (journal.stat().st_ino, journal.stat().st_size) == (inode, JOURNAL_BYTES)

    def no_space(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with store.transaction(AGENT, T0 + 8) as tx:
        assert (tx.state, tx.pending) == (s, ends)
        with monkeypatch.context() as m:
            m.setattr(os, "replace", no_space)
            with pytest.raises(DiskFull):
                tx.write(ended(s, T0 + 5, 143), T0 + 8)
        assert store.journal(AGENT) == ends
        tx.write(ended(s, T0 + 5, 143), T0 + 8)
        assert tx.pending == ()
    assert store.journal(AGENT) == () and locked(store, AGENT, T0 + 9).pending == ()
    assert journal.stat().st_ino == inode and journal.read_bytes() == b" " * JOURNAL_BYTES


def test_journal_end_without_a_journal_or_room_is_an_io_error(state_dir: Path) -> None:
    """Without a journal, or with no room left in it, journal_end is a StateError naming the
    journal (and how many ends it keeps), and the ends already kept stay readable."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.journal"
    with pytest.raises(StateError) as excinfo:
        store.journal_end(AGENT, Ended(T0, 1))
    refused(excinfo, f"no journal at {path} to keep the end in")
    assert not path.exists()
    store.ensure_journal(AGENT)
    n = 0
    with pytest.raises(StateError) as excinfo:
        while n < 1000:
            store.journal_end(AGENT, Ended(T0 + n, 1, "record-exit", f"run-{n}"))
            n += 1
    refused(excinfo, f"journal {path} is full ({n} ends kept)")
    kept = store.journal(AGENT)
    assert n >= 10 and [e.run_id for e in kept] == [f"run-{i}" for i in range(n)]
    assert path.stat().st_size == JOURNAL_BYTES


def test_an_unreadable_or_hostile_journal_holds_no_end(state_dir: Path, tmp_path: Path) -> None:
    """A journal that does not parse gives no end and logs state.journal_unreadable; a
    symlinked journal is neither read nor written through (StateError)."""
    store = StateStore(state_dir)
    store.prepare()
    path = state_dir / f"{AGENT}.journal"
    path.write_bytes(b'[{"at": "yesterday", "source": "docker"}]'.ljust(JOURNAL_BYTES))
    with structlog.testing.capture_logs() as logs:
        assert store.journal(AGENT) == ()
    assert logs == [
        {
            "event": "state.journal_unreadable",
            "log_level": "error",
            "path": str(path),
            "why": "journal.at is not a timestamp: 'yesterday'",
        }
    ]
    path.unlink()
    victim = tmp_path / "victim"
    victim.write_text('[{"at": "2027-01-15T08:00:00Z", "source": "docker"}]')
    path.symlink_to(victim)
    assert store.journal(AGENT) == ()
    with pytest.raises(StateError) as excinfo:
        store.journal_end(AGENT, Ended(T0, 1))
    refused(excinfo, f"journal {path} is a symlink; refusing to read or write through it")
    assert victim.read_text() == '[{"at": "2027-01-15T08:00:00Z", "source": "docker"}]'


@pytest.mark.parametrize(
    ("kind", "why"),
    [("symlink", "Too many levels of symbolic links"), ("FIFO", "No such device or address")],
)
def test_a_journal_swapped_after_the_check_is_neither_followed_nor_waited_on(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, why: str
) -> None:
    """The journal is opened O_NOFOLLOW | O_NONBLOCK to read and to write: a symlink or a FIFO
    swapped in after lstat gives no end and a StateError, never a hang under the lock nor a
    read or write through the link."""
    store = StateStore(state_dir)
    store.prepare()
    decoy = state_dir / "decoy"
    decoy.write_bytes(b" " * JOURNAL_BYTES)
    victim = tmp_path / "victim"
    victim.write_text('[{"at": "2027-01-15T08:00:00Z", "source": "docker"}]')
    path = state_dir / f"{AGENT}.journal"
    if kind == "symlink":
        path.symlink_to(victim)
    else:
        os.mkfifo(path, 0o600)
    lying_lstat(monkeypatch, path, decoy)
    outcome: list[object] = []

    def use() -> None:
        outcome.append(store.journal(AGENT))
        try:
            store.journal_end(AGENT, Ended(T0, 1))
        except StateError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=use, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        # Let the blocked open return: a reader and a writer for the FIFO.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail(f"a {kind} swapped in for the journal blocked")
    assert outcome[0] == ()
    assert isinstance(outcome[1], StateError)
    assert str(outcome[1]) == f"cannot write journal {path}: {why}"
    assert victim.read_text() == '[{"at": "2027-01-15T08:00:00Z", "source": "docker"}]'


def test_on_a_full_disk_an_end_goes_to_the_journal(small_tmpfs: Path) -> None:
    """On a really full file system the state write fails with DiskFull and leaves the file
    as it was, while journal_end rewrites the blocks allocated earlier; once space is back the
    next transaction has the end pending and its write clears the journal."""
    sd = small_tmpfs / "state"
    store = StateStore(sd)
    s = started(AgentState(AGENT), T0, run_id="r1")
    with store.transaction(AGENT, T0) as tx:
        tx.write(s, T0)
    before = (sd / f"{AGENT}.json").read_bytes()
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 512):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    end = Ended(T0 + 5, 143, "record-exit", "r1")
    with store.transaction(AGENT, T0 + 5) as tx:
        with pytest.raises(DiskFull, match="no space left on device"):
            tx.write(ended(s, T0 + 5, 143, run_id="r1"), T0 + 5)
        store.journal_end(AGENT, end)
    assert (sd / f"{AGENT}.json").read_bytes() == before
    assert store.read(AGENT).pending == (end,)
    filler.unlink()
    with store.transaction(AGENT, T0 + 9) as tx:
        assert tx.pending == (end,)
        tx.write(ended(tx.state, T0 + 5, 143, run_id="r1"), T0 + 9)
    loaded = store.read(AGENT)
    assert loaded.pending == () and loaded.state == ended(s, T0 + 5, 143, run_id="r1")
