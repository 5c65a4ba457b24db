"""The revised invariants 0-10 of DESIGN.md, one test (or property) each, on the real code.

Pure tests call :func:`decide` and the state transitions; gate tests drive :class:`Gate` on a
real state directory with an injected clock and sleep (tenacity's ``sleep=list.append``), so a
waiting gate is tested without waiting; process tests run the real CLI.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.policy import Policy, backoff_level, decide, multiplier, next_grid_slot
from supervisor.core.slots import hash_offset
from supervisor.core.state import AgentState, OperatorFlag, Run
from supervisor.gate.service import Gate
from supervisor.storage.config import load_config

T0 = 1_800_000_000.0
W = 1200.0
AGENT = "cilium-agent"


def policy(node: str = "node-1", **kw: object) -> Policy:
    """A 1000-node policy (W = 20 min) with the node's hash slot."""
    base = Policy(
        agent=AGENT,
        node=node,
        cluster_size=1000,
        window=W,
        offset=hash_offset(node, AGENT),
        slot_mode="hash",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def crash_loop(n: int, start: float = T0, *, reported: bool = True) -> AgentState:
    """``n`` runs that each failed 5 s after starting; the end reported or not."""
    s = AgentState(AGENT)
    for i in range(n):
        t = start + i * 10 * W
        s = s.record_start(t)
        if reported:
            s = s.record_exit(t + 5, 1)
    return s


# --- runs: what hypothesis draws -----------------------------------------------------------------

_ends = st.sampled_from(["crash", "crash", "clean", "term", "kill", "unreported", "stable"])
_vias = st.sampled_from(["gate", "gate", "gate", "force", "override", "docker"])
_history = st.lists(st.tuples(st.floats(min_value=1, max_value=5 * W), _vias, _ends), max_size=12)


def build(history: list[tuple[float, str, str]], start: float = T0) -> AgentState:
    """A state from (gap before the start, via, how the run ended) triples."""
    s = AgentState(AGENT)
    t = start
    for gap, via, end in history:
        t += gap
        s = s.record_start(t, via=via)  # type: ignore[arg-type]
        if end == "unreported":
            continue
        took = 700.0 if end == "stable" else 5.0
        code = {"crash": 1, "clean": 0, "term": 143, "kill": 137, "stable": 1}[end]
        s = s.record_exit(t + took, code)
        t += took
    return s


# --- invariant 0: one answer whoever asks ---------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_history, st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_a_fresh_decision_before_s_gets_the_waiting_gates_answer(
    history: list[tuple[float, str, str]], first: float, later: float
) -> None:
    """Invariant 0: a gate asked at any time before S (after a reboot, a restart, a re-run)
    is refused with the very next_allowed_at the gate that has been waiting since holds.

    At level 0 invariant 2 allows any caller once W has passed since the last start, so there
    the property holds before last + W (the one place where the design itself lets a fresh
    caller start before the slot a refusal named; see README, "How it behaves").
    """
    p = policy()
    s = build(history)
    last = max((r.started_at for r in s.runs), default=T0)
    asked = last + first * 6 * W
    waiting = decide(p, s, asked)
    if waiting.allowed:
        return
    nxt = waiting.next_allowed_at
    assert nxt is not None and nxt > asked
    fresh_at = asked + later * (nxt - asked)
    if waiting.backoff_level == 0 and waiting.event == "gate.refused":
        fresh_at = min(fresh_at, last + W - 1e-3)
    if fresh_at < nxt:
        fresh = decide(p, s, fresh_at)
        assert not fresh.allowed and fresh.next_allowed_at == nxt
        assert fresh.backoff_level == waiting.backoff_level
    assert decide(p, s, nxt).allowed


def test_forty_nodes_at_level_two_asked_after_w_are_all_refused() -> None:
    """Invariant 3: 40 nodes at level >= 2 asked in the same second, W + 5 s after their last
    start, are all refused, each until its own slot in window last + 2W (no wave)."""
    last = T0 + 10 * W + 10
    now = last + W + 5
    answers = []
    for i in range(40):
        p = policy(f"node-{i:03d}")
        s = crash_loop(2).record_start(last).record_exit(last + 5, 1)
        d = decide(p, s, now)
        assert d.backoff_level == 3 and not d.allowed, d.reason
        assert d.next_allowed_at is not None and d.next_allowed_at >= last + 2 * W
        answers.append(d.next_allowed_at)
    assert len(set(answers)) > 30  # spread over the window, not one instant


def test_status_and_gate_give_the_same_answer(tmp_path: Path) -> None:
    """Invariant 0: `status --json` and a fresh `gate --json` name the same next start."""
    sd = str(tmp_path / "state")
    args = ("--state-dir", sd, "--cluster-size", "1000", "--node-name", "node-7")
    assert run_cli("gate", *args).code == 0
    assert run_cli("record-exit", "--code", "1", *args).code == 0
    status = json.loads(run_cli("status", "--json", *args).stdout)
    gate = run_cli("gate", "--json", *args)
    assert gate.code == 75
    d = json.loads(gate.stdout)
    assert d["next_allowed_at"] == status["next_allowed_at"] is not None
    assert d["backoff_level"] == status["backoff_level"] == 1


# --- the wait loop, on a fake clock -------------------------------------------------------------


class FakeTime:
    """A clock that only moves when the gate sleeps; every sleep is recorded."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.at: dict[float, object] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        for when in sorted(self.at):
            if when <= self.now:
                action = self.at.pop(when)
                assert callable(action)
                action()


def _gate(tmp_path: Path, ft: FakeTime, node: str = "node-1") -> Gate:
    cfg = load_config(
        env={},
        overrides={"cluster_size": 1000, "node_name": node},
        state_dir=tmp_path / "state",
    )
    return Gate(cfg, AGENT, clock=ft.clock, probe=None, inspect=None)


def _write(gate: Gate, state: AgentState, now: float) -> None:
    with gate.store.transaction(AGENT, now) as tx:
        tx.write(replace(state, agent=AGENT), now)


def test_wait_sleeps_until_the_slot_exactly(tmp_path: Path) -> None:
    """The wait polls once a second and its last sleep ends exactly at next_allowed_at."""
    ft = FakeTime(T0 + 50)
    gate = _gate(tmp_path, ft)
    _write(gate, crash_loop(1, T0), T0 + 50)
    s = gate.store.read(AGENT).state
    slot = next_grid_slot(T0 + W, W, gate.policy.offset)
    result = gate.wait(sleep=ft.sleep, poll=100.0)
    assert result.decision.allowed and result.recorded
    whole, rest = divmod(slot - (T0 + 50), 100.0)
    assert ft.sleeps == [100.0] * int(whole) + ([round(rest, 6)] if rest > 1e-6 else [])
    assert gate.store.read(AGENT).state.runs[:-1] == s.runs


def test_hold_then_release_does_not_release_a_waiting_gate_before_its_slot(
    tmp_path: Path,
) -> None:
    """Invariants 0 and 8: a release wakes a waiting gate only into what the state allows."""
    ft = FakeTime(T0 + 10 * W)
    gate = _gate(tmp_path, ft)
    _write(gate, crash_loop(3, T0), ft.now)
    last = T0 + 20 * W
    slot = next_grid_slot(last + W * multiplier(3, 4), W, gate.policy.offset)
    ft.now = last + 60

    def hold() -> None:
        state = gate.store.read(AGENT).state
        _write(gate, state.with_hold(OperatorFlag("op", "incident", ft.now)), ft.now)

    def release() -> None:
        state = gate.store.read(AGENT).state
        _write(gate, state.with_hold(None), ft.now)

    ft.at = {last + 120: hold, last + 600: release}
    import structlog

    with structlog.testing.capture_logs() as logs:
        result = gate.wait(sleep=ft.sleep, poll=30.0)
    assert result.decision.allowed and result.decision.decided_at == pytest.approx(slot)
    events = [(e["event"], e.get("waiting")) for e in logs]
    assert events == [
        ("gate.refused", True),
        ("gate.held", True),
        ("gate.refused", True),
        ("gate.allowed", None),
    ]


# --- invariant 1: what counts as a failed run -----------------------------------------------------


def test_operator_starts_and_deliberate_stops_do_not_raise_the_level() -> None:
    """Invariant 1: forced and override starts, and TERM/INT/exit-0 stops, are neutral."""
    s = crash_loop(1)  # one real failure: level 1
    t = T0 + 5 * W
    for via in ("override", "override", "force", "force"):
        s = s.record_start(t, via=via).record_exit(t + 3, 1)
        t += 100
    # Each operator start made the run before it neutral; the last one failed on its own.
    assert backoff_level(s, 600) == 1
    for code in (143, 130, 0):
        s = s.record_start(t).record_exit(t + 3, code)
        t += 100
        assert backoff_level(s, 600) == 1
    assert backoff_level(s.record_start(t).record_exit(t + 3, 137), 600) == 2


def test_a_crash_loop_without_exit_reports_climbs_like_one_with_reports() -> None:
    """Invariant 1: an end nobody reported is a failure, so levels climb 1, 2, 3, 4, 5."""
    for reported in (True, False):
        p = policy()
        s = AgentState(AGENT)
        now = T0
        levels: list[int] = []
        for _ in range(6):
            d = decide(p, s, now)
            if not d.allowed:
                assert d.next_allowed_at is not None
                # The wait is W*m to the slot of window last + W*m: never one window only.
                m = multiplier(d.backoff_level, 4)
                gap = d.next_allowed_at - s.runs[-1].started_at
                assert W * m <= gap < W * m + W
                now = d.next_allowed_at
                d = decide(p, s, now)
            assert d.allowed
            levels.append(d.backoff_level)
            s = s.record_start(now)
            if reported:
                s = s.record_exit(now + 5, 1)
            now += 30
        assert levels == [0, 1, 2, 3, 4, 5]


def test_a_run_docker_says_is_running_is_in_progress_not_failed() -> None:
    """Invariant 1: while Docker says the agent runs, its open run does not raise the level."""
    s = crash_loop(2).record_start(T0 + 30 * W)
    d = decide(policy(), s, T0 + 40 * W, running=True)
    assert d.allowed and not d.start and d.reason == "already running"
    assert d.backoff_level == 2
    assert decide(policy(), s, T0 + 40 * W).backoff_level == 3


def test_a_run_that_lasted_stable_after_ends_the_count() -> None:
    """Invariant 1: a reported run of stable_after or longer resets the level to 0."""
    s = crash_loop(3).record_start(T0 + 40 * W).record_exit(T0 + 40 * W + 600, 1)
    assert backoff_level(s, 600) == 0
    assert backoff_level(s, 601) == 4


# --- invariant 2: a single crash, an upgrade, a reboot are never delayed ----------------------


def test_a_single_crash_after_a_stable_run_restarts_at_once() -> None:
    """Invariant 2: k = 0 and no start in the last W: allowed at once, probe or not."""
    s = AgentState(AGENT).record_start(T0).record_exit(T0 + 3 * W, 1)
    d = decide(policy(), s, T0 + 3 * W + 1)
    assert d.allowed and d.backoff_level == 0


def test_a_reboot_after_days_of_running_is_not_delayed() -> None:
    """Invariant 3: an unreported end is a failure (k = 1), but S lies days in the past."""
    s = AgentState(AGENT).record_start(T0)
    d = decide(policy(), s, T0 + 3 * 86400)
    assert d.allowed and d.backoff_level == 1


# --- invariant 8: a clock step cannot stretch a hold or an override ----------------------------


def test_a_flag_set_in_the_future_is_pinned_to_its_duration() -> None:
    """Invariant 8: an override set a day ahead lasts its hour from when it is first seen."""
    day = 86400.0
    s = AgentState(AGENT).with_override(OperatorFlag("op", "x", T0 + day, T0 + day + 3600))
    s = s.with_hold(OperatorFlag("op", "y", T0 + day, T0 + day + 7200))
    pinned = s.clamp_future(T0)
    assert pinned.override == OperatorFlag("op", "x", T0, T0 + 3600)
    assert pinned.hold == OperatorFlag("op", "y", T0, T0 + 7200)
    assert pinned.clamp_future(T0 + 10) is pinned  # pinned once, then left alone
    forever = AgentState(AGENT).with_hold(OperatorFlag("op", "z", T0 + day))
    assert forever.clamp_future(T0).hold == OperatorFlag("op", "z", T0)


# --- invariant 9: unknown history is not a clean history -----------------------------------------


def test_force_and_reset_skip_the_wait_of_a_lost_history(tmp_path: Path) -> None:
    """Invariant 9: after a corrupt file only --force or reset let the next start through."""
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    args = ("--state-dir", str(sd), "--cluster-size", "1000")
    (sd / "cilium-agent.json").write_text('{"schema": 99}')
    assert run_cli("gate", *args).code == 75
    status = json.loads(run_cli("status", "--json", *args).stdout)
    assert status["history_lost"] is True and len(status["quarantined"]) == 1
    assert run_cli("gate", "--force", "--reason", "checked the node", *args).code == 0
    (sd / "cilium-agent.json").write_text("garbage")
    assert run_cli("gate", *args).code == 75
    assert run_cli("reset", "--reason", "checked", *args).code == 0
    assert run_cli("gate", *args).code == 0
    assert sorted(p.read_bytes() for p in sd.glob("cilium-agent.json.corrupt-*")) == [
        b"garbage",
        b'{"schema": 99}',
    ]


def test_a_schema_1_file_is_read_and_its_inferred_ends_become_unknown() -> None:
    """Version 1 took the next start as the end of an unreported run: read as unknown."""
    from supervisor.core.state import from_document

    doc = {
        "schema": 1,
        "agent": AGENT,
        "runs": [
            {
                "started_at": "2027-01-15T08:00:00Z",
                "ended_at": "2027-01-15T09:00:00Z",
                "end_source": "inferred",
            },
            {"started_at": "2027-01-15T09:00:00Z", "via": "force"},
        ],
    }
    s = from_document(doc, AGENT)
    assert [(r.ended_at, r.end_source, r.via) for r in s.runs] == [
        (None, None, "gate"),
        (None, None, "force"),
    ]


def test_a_run_is_kept_whole_through_the_file() -> None:
    """Every field of a run, hold and override survives a write and a read."""
    from supervisor.core.state import from_document, to_document

    s = AgentState(
        AGENT,
        runs=(
            Run(T0, "docker", T0 + 5, 143, "docker", None, "started outside the gate"),
            Run(T0 + 10, "force", None, None, None, "alice", "hotfix"),
            Run(T0 + 20, "unknown", T0 + 30, 1, "record-exit", None, "lost"),
        ),
        hold=OperatorFlag("bob", "incident", T0, T0 + 60),
        override=OperatorFlag("carol", "test", T0 + 1, None),
    )
    assert from_document(json.loads(json.dumps(to_document(s, T0 + 40))), AGENT) == s


def test_the_probe_is_asked_when_the_slot_comes_between_the_look_and_the_lock(
    tmp_path: Path,
) -> None:
    """Regression: the quick look before the lock ran just before S, the locked decision
    just after; the decision must still hear the probe, not allow without it."""
    calls: list[str] = []
    cfg = load_config(
        env={},
        overrides={
            "cluster_size": 1000,
            "node_name": "node-1",
            "probe.urls": "http://127.0.0.1:9/",
        },
        state_dir=tmp_path / "state",
    )

    def probe() -> bool:
        calls.append("probe")
        return False

    gate = Gate(cfg, AGENT, probe=probe, inspect=None)
    _write(gate, crash_loop(1, T0), T0 + 10)
    slot = next_grid_slot(T0 + W, W, gate.policy.offset)
    times = iter([slot - 0.5, slot + 0.1, slot + 0.2])
    gate.clock = lambda: next(times)
    result = gate.decide()
    assert calls == ["probe"]
    assert not result.decision.allowed and result.decision.deferred
    state = gate.store.read(AGENT).state
    assert state.deferral is not None and state.deferral.until == result.decision.next_allowed_at


def test_a_probe_deferral_is_a_fact_for_every_later_caller() -> None:
    """Invariant 0 with a probe: the slot a probe refusal named holds for a fresh caller,
    even when the control plane answers again before it."""
    from supervisor.core.policy import remember

    p = policy(probe_configured=True)
    s = AgentState(AGENT).record_start(T0).record_exit(T0 + 3 * W, 1)
    down = decide(p, s, T0 + 3 * W + 1, control_plane_healthy=False)
    assert down.deferred and down.next_allowed_at is not None
    s = remember(s, down)
    up = decide(p, s, T0 + 3 * W + 2, control_plane_healthy=True)
    assert not up.allowed and up.next_allowed_at == down.next_allowed_at
    assert decide(p, s, down.next_allowed_at, control_plane_healthy=True).allowed
