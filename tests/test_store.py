"""The state store: atomic writes, quarantine, refusal of hostile paths, round trips."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.base.errors import StateError
from supervisor.core.state import (
    SCHEMA_VERSION,
    AgentState,
    OperatorFlag,
    from_document,
    to_document,
)
from supervisor.storage.store import StateStore

T0 = 1_800_000_000.0


def test_directory_and_files_are_private(state_dir: Path) -> None:
    """The state directory is created 0700 and the state and lock files 0600."""
    store = StateStore(state_dir)
    with store.transaction("cilium-agent", T0) as tx:
        tx.write(tx.state.record_start(T0), T0)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "cilium-agent.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "cilium-agent.lock").stat().st_mode) == 0o600


def test_state_round_trips(state_dir: Path) -> None:
    """What is written reads back equal, hold and override included."""
    store = StateStore(state_dir)
    s = (
        AgentState("cilium-agent")
        .record_start(T0)
        .record_exit(T0 + 3, 137)
        .record_start(T0 + 2000, via="force", user="alice", reason="urgent")
        .with_hold(OperatorFlag("bob", "maint", T0, until=T0 + 60))
    )
    with store.transaction("cilium-agent", T0) as tx:
        tx.write(s, T0)
    assert store.read("cilium-agent", T0).state == s


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
    """A state file that does not parse is renamed with a timestamp, and the history-lost
    state (one run started when the problem was found, its end unknown) is written in its place.
    """
    store = StateStore(state_dir)
    store.prepare()
    (state_dir / "cilium-agent.json").write_bytes(content)
    (state_dir / "cilium-agent.json").chmod(0o600)
    tx = store.read("cilium-agent", T0)
    assert len(tx.quarantined) == 1
    moved = Path(tx.quarantined[0])
    assert moved.read_bytes() == content
    assert moved.name.startswith("cilium-agent.json.corrupt-")
    (run,) = tx.state.runs
    assert (run.started_at, run.via, run.ended_at) == (T0, "unknown", None)
    assert run.reason is not None and str(moved) in run.reason
    again = store.read("cilium-agent", T0 + 5)
    assert again.state == tx.state and again.quarantined == []
    assert store.quarantined_files("cilium-agent") == [str(moved)]


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
        pytest.skip("needs root to chown")
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
        tx.write(tx.state.record_start(T0), T0)
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
            big = big.record_start(T0 + 5000 + i, reason="x" * 400)
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


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            timestamps,
            st.floats(0, 1e5),
            st.one_of(st.none(), st.integers(-1, 255)),
            st.sampled_from(["gate", "force", "override"]),
        ),
        max_size=60,
    )
)
def test_document_round_trip_property(runs: list[tuple[float, float, int | None, str]]) -> None:
    """Any state serializes to a document that parses back to the same state (to 1 µs)."""
    s = AgentState("a")
    for start, dur, code, via in runs:
        s = s.record_start(start, via=via)  # type: ignore[arg-type]
        if code is not None:
            s = s.record_exit(start + dur, code)
    doc = json.loads(json.dumps(to_document(s, T0)))
    assert doc["schema"] == SCHEMA_VERSION
    back = from_document(doc, "a")
    assert len(back.runs) == len(s.runs)
    for a, b in zip(back.runs, s.runs, strict=True):
        assert abs(a.started_at - b.started_at) < 1e-5 and a.exit_code == b.exit_code


def test_cancelled_gate_records_nothing(state_dir: Path) -> None:
    """A gate cancelled (SIGTERM) while deciding raises Cancelled and records no start."""
    from supervisor.gate.service import Cancelled, Gate
    from supervisor.storage.config import load_config

    cfg = load_config(env={}, overrides={"cluster_size": 10}, state_dir=state_dir)
    with pytest.raises(Cancelled):
        Gate(cfg, "cilium-agent").decide(now=T0, cancelled=lambda: True)
    assert StateStore(state_dir).read("cilium-agent").state.runs == ()
