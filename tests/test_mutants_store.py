"""The state store and the file helpers at the edges the mutation run found unpinned: exact
sizes, the bytes of the journal, what a lock-free read returns, what a failed write puts back,
and the syscalls' flags and modes while a file or a lock is being made.

Real files in ``tmp_path``; a syscall is replaced only to make a race or a failure happen at
a chosen moment (a file that grows between its size check and its read, a lock file removed
between two opens, an fchmod that fails).
"""

from __future__ import annotations

import calendar
import errno
import json
import os
import stat
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from histories import started

from supervisor.base import files
from supervisor.base.errors import DiskFull, StateError
from supervisor.core.events import Ended
from supervisor.core.state import AgentState, iso
from supervisor.storage import store as store_module
from supervisor.storage.store import (
    JOURNAL_BYTES,
    MAX_STATE_BYTES,
    Loaded,
    StateStore,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
AGENT = "cilium-agent"
EMPTY = b'{"schema": 2, "agent": "cilium-agent", "runs": []}'
ONE_RUN = (
    b'{"schema": 3, "agent": "cilium-agent", "runs": '
    b'[{"id": "r1", "started_at": "2027-01-15T08:00:00Z"}]}'
)


def ready(state_dir: Path) -> StateStore:
    """A store on a freshly created private state directory."""
    store = StateStore(state_dir)
    store.prepare()
    return store


def padded(body: bytes, size: int) -> bytes:
    """``body`` after enough leading blanks to make ``size`` bytes (its last byte stays last)."""
    return b" " * (size - len(body)) + body


def unreadable_journal(store: StateStore, content: bytes) -> list[MutableMapping[str, Any]]:
    """The log events of reading a journal holding ``content`` (which must read as no end)."""
    store.journal_path(AGENT).write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        assert store.journal(AGENT) == ()
    return logs


def journal_log(store: StateStore, why: str) -> list[dict[str, Any]]:
    """The one event an unreadable journal logs."""
    return [
        {
            "event": "state.journal_unreadable",
            "log_level": "error",
            "path": str(store.journal_path(AGENT)),
            "why": why,
        }
    ]


# --- the directory ----------------------------------------------------------------------------


def test_a_new_state_directory_is_private_from_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state directory is created 0700 (the chmod after it only undoes a umask), so it is
    never open to others, not even before that chmod."""
    d = tmp_path / "state"
    modes: list[int] = []
    real = os.chmod

    def chmod(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        modes.append(stat.S_IMODE(os.stat(path).st_mode))
        real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    old = os.umask(0)
    try:
        StateStore(d).prepare()
    finally:
        os.umask(old)
    assert modes == [0o700] and stat.S_IMODE(d.stat().st_mode) == 0o700


# --- reading the state file ------------------------------------------------------------------


def test_describe_names_a_file_type_it_has_no_word_for() -> None:
    """A file type outside the table (none that Linux reports) reads "not a regular file"."""
    assert store_module._describe(0) == "not a regular file"
    assert store_module._describe(stat.S_IFSOCK) == "a socket"


def test_a_read_without_a_directory_is_the_empty_unlocked_state(tmp_path: Path) -> None:
    """read() of a state directory that does not exist is the whole empty value, unlocked."""
    store = StateStore(tmp_path / "missing")
    assert store.read(AGENT) == Loaded(AGENT, AgentState(AGENT), locked=False)
    assert not (tmp_path / "missing").exists()


def test_a_read_of_a_state_file_is_the_whole_unlocked_value(state_dir: Path) -> None:
    """read() of a valid file names the agent, holds its state and no journal, unlocked."""
    store = ready(state_dir)
    (state_dir / f"{AGENT}.json").write_bytes(ONE_RUN)
    assert store.read(AGENT) == Loaded(
        AGENT, started(AgentState(AGENT), T0, run_id="r1"), locked=False
    )


def test_a_read_below_a_file_is_one_io_error_line(tmp_path: Path) -> None:
    """A state directory below a regular file cannot be examined: StateError naming it and why."""
    (tmp_path / "file").write_text("")
    d = tmp_path / "file" / "state"
    with pytest.raises(StateError) as excinfo:
        StateStore(d).read(AGENT)
    assert str(excinfo.value) == f"cannot use state directory {d}: Not a directory"


def test_a_state_file_of_exactly_the_limit_is_read_whole(state_dir: Path) -> None:
    """A valid file of exactly MAX_STATE_BYTES whose last byte closes the JSON is read to its
    last byte and is not lost; one byte more is lost for its size, unread."""
    store = ready(state_dir)
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(padded(ONE_RUN, MAX_STATE_BYTES))
    assert store.read(AGENT) == Loaded(
        AGENT, started(AgentState(AGENT), T0, run_id="r1"), locked=False
    )
    path.write_bytes(padded(ONE_RUN, MAX_STATE_BYTES + 1))
    assert store.read(AGENT) == Loaded(
        AGENT, AgentState(AGENT), "16777217 bytes, larger than 16777216", locked=False
    )


def test_a_state_file_that_grows_past_the_limit_after_its_check_is_read_no_further(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file swapped for a bigger one between the size check and the read is read to
    MAX_STATE_BYTES + 1 bytes only: cut there, it is not JSON, and the state is lost."""
    store = ready(state_dir)
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(padded(EMPTY, MAX_STATE_BYTES + 2))
    decoy = state_dir / "decoy"
    decoy.write_bytes(EMPTY)
    real = os.lstat
    monkeypatch.setattr(
        os, "lstat", lambda p, *a, **k: real(decoy if Path(p) == path else p, *a, **k)
    )
    loaded = store.read(AGENT)
    assert (loaded.state, loaded.locked) == (AgentState(AGENT), False)
    assert loaded.lost == "Expecting ',' delimiter: line 1 column 16777218 (char 16777217)"


# --- a failed write in a transaction ----------------------------------------------------------


def no_space(*_: object) -> None:
    """os.replace on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_puts_the_bad_file_back_before_the_block_ends(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails after a quarantine puts the bad file back at once, so the rest of the
    block (a journal of the end, say) already finds it in place."""
    store = ready(state_dir)
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(b"garbage")
    with store.transaction(AGENT, T0) as tx:
        monkeypatch.setattr(os, "replace", no_space)
        with pytest.raises(DiskFull):
            tx.write(started(AgentState(AGENT), T0), T0)
        assert path.read_bytes() == b"garbage"
        assert tx.quarantined == [] and store.quarantined_files(AGENT) == []
        assert tx.lost == "Expecting value: line 1 column 1 (char 0)"


def test_a_failed_second_write_keeps_the_first_and_the_bad_file_aside(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a write replaced the bad file, a later failed write in the same transaction puts
    nothing back: the state written stays, and the bad bytes stay aside."""
    store = ready(state_dir)
    path = state_dir / f"{AGENT}.json"
    path.write_bytes(b"garbage")
    first = started(AgentState(AGENT), T0, run_id="r1")
    with store.transaction(AGENT, T0) as tx:
        tx.write(first, T0)
        written = path.read_bytes()
        monkeypatch.setattr(os, "replace", no_space)
        with pytest.raises(DiskFull):
            tx.write(started(first, T0 + 1, run_id="r2"), T0 + 1)
        assert path.read_bytes() == written
    moved = state_dir / f"{AGENT}.json.corrupt-20270115T080000Z"
    assert store.quarantined_files(AGENT) == [str(moved)] and moved.read_bytes() == b"garbage"
    assert store.read(AGENT).state == first


# --- the journal --------------------------------------------------------------------------------


def test_journal_end_writes_sorted_json_padded_after_it(state_dir: Path) -> None:
    """The journal is the ends as sorted JSON, then blanks to JOURNAL_BYTES (in place)."""
    store = ready(state_dir)
    store.write_state(AgentState(AGENT), T0)
    store.journal_end(AGENT, Ended(T0, 1, "record-exit", "r1"))
    body = (
        b'[{"at": "2027-01-15T08:00:00.000000Z", "exit_code": 1, "run_id": "r1", '
        b'"source": "record-exit", "stop": null}]'
    )
    assert store.journal_path(AGENT).read_bytes() == body + b" " * (JOURNAL_BYTES - len(body))


def test_journal_end_fills_the_journal_to_its_last_byte_and_no_further(state_dir: Path) -> None:
    """An end whose JSON is exactly JOURNAL_BYTES is kept; one byte more is "full"."""
    store = ready(state_dir)
    store.write_state(AgentState(AGENT), T0)
    path = store.journal_path(AGENT)

    def end(stop_len: int) -> Ended:
        return Ended(T0, 1, "record-exit", "r1", "x" * stop_len)

    base = len(json.dumps([store_module._ended_doc(end(0))], sort_keys=True))
    store.journal_end(AGENT, end(JOURNAL_BYTES - base))
    assert len(path.read_bytes().rstrip()) == JOURNAL_BYTES
    assert store.journal(AGENT) == (end(JOURNAL_BYTES - base),)
    store.clear_journal(AGENT)
    with pytest.raises(StateError) as excinfo:
        store.journal_end(AGENT, end(JOURNAL_BYTES - base + 1))
    assert str(excinfo.value) == f"journal {path} is full (0 ends kept)"
    assert path.read_bytes() == b" " * JOURNAL_BYTES


def test_a_journal_is_read_to_twice_its_size_and_no_further(state_dir: Path) -> None:
    """A journal of exactly 2 * JOURNAL_BYTES is read whole; one byte longer, it is cut there
    (not ours, not JSON): unreadable, logged, no end."""
    store = ready(state_dir)
    doc = [{"at": iso(T0), "exit_code": 1, "source": "record-exit", "run_id": "r1", "stop": None}]
    body = json.dumps(doc).encode()
    store.journal_path(AGENT).write_bytes(padded(body, 2 * JOURNAL_BYTES))
    assert store.journal(AGENT) == (Ended(T0, 1, "record-exit", "r1"),)
    logs = unreadable_journal(store, padded(body, 2 * JOURNAL_BYTES + 1))
    cut = len(body) - 1
    assert logs == journal_log(
        store, f"Expecting ',' delimiter: line 1 column {cut + 1} (char {cut})"
    )


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ([1], "not an object"),
        ([{"at": "2027-01-15T08:00:00Z", "exit_code": "1", "source": "exec"}], "exit_code '1'"),
        ([{"at": "2027-01-15T08:00:00Z", "exit_code": 1, "source": "guess"}], "source 'guess'"),
        (
            [{"at": "x" * 300, "exit_code": 1, "source": "exec"}],
            ("journal.at is not a timestamp: '" + "x" * 300)[:200],
        ),
    ],
    ids=["not-an-object", "text-exit-code", "unknown-source", "long-reason"],
)
def test_an_unreadable_journal_logs_why_in_200_characters(
    state_dir: Path, doc: list[Any], why: str
) -> None:
    """A journal entry that is not an end is logged as state.journal_unreadable with the first
    200 characters of what is wrong, and the journal reads as no end."""
    store = ready(state_dir)
    assert unreadable_journal(store, json.dumps(doc).encode()) == journal_log(store, why)


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_clearing_or_allocating_a_hostile_journal_is_no_error(
    state_dir: Path, tmp_path: Path, kind: str
) -> None:
    """A journal that is a symlink or a directory is neither cleared nor replaced, and neither
    call raises: the state is written already, the journal is only a spare."""
    store = ready(state_dir)
    path = store.journal_path(AGENT)
    target = tmp_path / "target"
    target.write_bytes(b"theirs")
    if kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    store.clear_journal(AGENT)
    store.ensure_journal(AGENT)
    assert path.is_symlink() == (kind == "symlink") and path.is_dir() == (kind == "directory")
    assert target.read_bytes() == b"theirs"


# --- the audit log --------------------------------------------------------------------------------


def test_the_audit_tail_skips_a_line_nested_deeper_than_json_reads(state_dir: Path) -> None:
    """A line of 20,000 open brackets (json's RecursionError) is skipped like a torn line, not
    a traceback of ``status``."""
    store = ready(state_dir)
    store.audit(T0, action="hold", user="root")
    with (state_dir / "audit.jsonl").open("ab") as fh:
        fh.write(b"[" * 20_000 + b"\n\xff\n")
    store.audit(T0 + 1, action="release", user="root")
    assert store.audit_tail() == [
        {"action": "hold", "time": "2027-01-15T08:00:00.000000Z", "user": "root"},
        {"action": "release", "time": "2027-01-15T08:00:01.000000Z", "user": "root"},
    ]


# --- files: flags and modes while a file or a lock is made ------------------------------------


def test_write_new_holds_a_close_on_exec_descriptor_while_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file being written is not inherited by a command started meanwhile (O_CLOEXEC)."""
    seen: list[bool] = []
    real = os.write

    def write(fd: int, data: Any) -> int:
        seen.append(os.get_inheritable(fd))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    files.write_new(tmp_path / "f", b"data")
    assert seen == [False] and (tmp_path / "f").read_bytes() == b"data"


def test_a_new_lock_file_is_never_more_open_than_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock file is created with its mode already (the umask may only narrow it), so it is
    never readable by others, not even before its fchmod."""
    modes: list[int] = []
    real = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    old = os.umask(0)
    try:
        with files.held_lock(tmp_path / "a.lock", timeout=0, mode=0o600, busy="b", failed="f"):
            pass
    finally:
        os.umask(old)
    assert modes == [0o600]


def test_a_lock_file_removed_between_the_two_opens_is_created_after_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exists at the exclusive create, gone at the plain open (someone removed it): the lock
    file is created on the next try and the lock taken."""
    path = tmp_path / "a.lock"
    calls: list[str] = []
    real = os.open

    def racing_open(p: Any, flags: int, *args: Any) -> int:
        if Path(p) == path and len(calls) < 2:
            calls.append("excl" if flags & os.O_EXCL else "plain")
            raise (FileExistsError if flags & os.O_EXCL else FileNotFoundError)(p)
        return real(p, flags, *args)

    monkeypatch.setattr(os, "open", racing_open)
    with files.held_lock(path, timeout=0, mode=0o600, busy="b", failed="f"):
        assert calls == ["excl", "plain"] and path.exists()


def test_a_lock_file_whose_fchmod_fails_is_closed_and_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fchmod that fails closes the new descriptor and is StateError(failed: why)."""
    path = tmp_path / "a.lock"

    def fchmod(fd: int, mode: int) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fchmod", fchmod)
    with (
        pytest.raises(StateError) as excinfo,
        files.held_lock(path, timeout=0, mode=0o600, busy="b", failed="f"),
    ):
        pass
    assert str(excinfo.value) == "f: Operation not permitted"
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_state_file_rejected_without_words_is_named_by_the_errors_type(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parser error with an empty message still says what it was (its type), not nothing."""
    store = ready(state_dir)
    store.state_path(AGENT).write_bytes(ONE_RUN)

    def silent(doc: object, agent: str) -> AgentState:
        raise ValueError()

    monkeypatch.setattr(store_module, "from_document", silent)
    assert store.read(AGENT).lost == "ValueError"


def test_a_bad_file_moved_aside_with_no_time_given_is_stamped_with_the_clocks(
    state_dir: Path,
) -> None:
    """A transaction opened without ``now`` moves a bad file aside under the wall clock's
    time (and puts it back when nothing replaced it)."""
    store = ready(state_dir)
    store.state_path(AGENT).write_bytes(b"{")
    before = time.time()
    with store.transaction(AGENT) as tx:
        (where,) = tx.quarantined
    after = time.time()
    stamp = Path(where).name.removeprefix(store.state_path(AGENT).name + ".corrupt-")
    at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    assert int(before) <= at <= after
    assert store.state_path(AGENT).read_bytes() == b"{"
