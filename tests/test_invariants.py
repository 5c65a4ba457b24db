"""The invariants 0-12 of DESIGN.md, each as a pair: never earlier than the contract allows,
and never later (a gate that refuses for ever fails every pair).

Pure tests call :func:`decide` and apply its events as the Gate does; gate tests drive
:class:`Gate` on a real state directory with an injected clock and sleep, so a waiting gate is
tested without waiting; process tests run the real CLI. Expected times come from
:func:`oracle_slot`, written out here with exact fractions, never from the code under test, and
the times asked at are those the code itself produced (a gate wakes exactly at its slot).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import structlog
from conftest import run_cli
from histories import crash_loop, ended, held, overridden, started
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.answers import ProbeAnswer
from supervisor.core.events import Released, apply, apply_all
from supervisor.core.policy import (
    ASK_GRACE,
    Decision,
    Inputs,
    Policy,
    Request,
    backoff_level,
    decide,
    multiplier,
)
from supervisor.core.slots import hash_offset, index_offset
from supervisor.core.state import AgentState, OperatorFlag
from supervisor.gate.service import Gate
from supervisor.storage.config import load_config

T0 = 1_800_000_000.0
W = 1200.0
#: J with a probe at this W (W / 12).
JP = 100.0
AGENT = "cilium-agent"
DAY = 86400.0


def policy(node: str = "node-1", **kw: object) -> Policy:
    """A 1000-node policy (W = 20 min, J = W: no probe) with the node's hash slot."""
    base = Policy(
        agent=AGENT,
        node=node,
        cluster_size=1000,
        window=W,
        offset=hash_offset(node, AGENT),
        slot_mode="hash",
        admission=W,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def probe_policy(node: str = "node-1", **kw: object) -> Policy:
    """The same node with a probe configured (J = W / 12)."""
    return policy(node, probe_configured=True, admission=JP, **kw)


def oracle_slot(not_before: float, period: float, offset: float) -> float:
    """The contract's slot, written out: the grid of ``period`` in whole microseconds from the
    epoch, shifted by ``floor(offset * P)``; the first of its points at or after
    ``not_before`` (times are the floats ``u / 10**6`` of whole microseconds ``u``)."""
    p = round(period * 10**6)
    shift = math.floor(offset * p)
    u = math.ceil(Fraction(not_before) * 10**6)
    while (u - 1) / 10**6 >= not_before:  # the float of u - 1 microseconds is not earlier
        u -= 1
    k = 0
    while k * p + shift < u:
        k += max(1, (u - shift - k * p) // p)
    while (k - 1) * p + shift >= u:
        k -= 1
    return (k * p + shift) / 10**6


def ask(
    p: Policy,
    s: AgentState,
    now: float,
    probe: ProbeAnswer | None = None,
    **inputs: object,
) -> tuple[Decision, AgentState]:
    """One gate decision at ``now``, its events applied as the Gate applies them (asking the
    probe, with the given answer, when the decision needs it)."""
    d = decide(p, s, now, Request(run_id=f"run-{now:.6f}"), Inputs(**inputs))  # type: ignore[arg-type]
    if d.needs_probe:
        assert probe is not None, "the decision needs a probe answer"
        d = decide(p, s, now, Request(run_id=f"run-{now:.6f}"), Inputs(probe=probe, **inputs))  # type: ignore[arg-type]
    return d, apply_all(s, d.events)


def wait_until_allowed(
    p: Policy, s: AgentState, now: float, probe: ProbeAnswer | None = None, limit: int = 50
) -> tuple[float, AgentState, list[Decision]]:
    """A waiting gate: ask at ``now``, then at each time a refusal names, until allowed."""
    seen = []
    for _ in range(limit):
        d, s = ask(p, s, now, probe)
        seen.append(d)
        if d.allowed:
            return now, s, seen
        assert d.next_allowed_at is not None and d.next_allowed_at > now, d
        now = d.next_allowed_at
    raise AssertionError(f"refused {limit} times: {seen[-1].reason}")


def stable(t: float = T0, code: int | None = 1, took: float = 3 * DAY) -> AgentState:
    """An agent that ran ``took`` from ``t`` and then ended with ``code`` (None: unreported)."""
    s = started(AgentState(AGENT), t)
    return s if code is None else ended(s, t + took, code)


# --- runs: what hypothesis draws -----------------------------------------------------------------

_ends = st.sampled_from(["crash", "crash", "clean", "term", "kill", "unreported", "stable"])
_vias = st.sampled_from(["gate", "gate", "gate", "force", "override", "docker"])
_history = st.lists(st.tuples(st.floats(min_value=1, max_value=5 * W), _vias, _ends), max_size=10)


def build(history: list[tuple[float, str, str]], start: float = T0) -> AgentState:
    """A state from (gap before the start, via, how the run ended) triples."""
    s = AgentState(AGENT)
    t = start
    for gap, via, end in history:
        t += gap
        s = started(s, t, via=via)  # type: ignore[arg-type]
        if end == "unreported":
            continue
        took = 700.0 if end == "stable" else 5.0
        code = {"crash": 1, "clean": 0, "term": 143, "kill": 137, "stable": 1}[end]
        s = ended(s, t + took, code)
        t += took
    return s


def expected_start(p: Policy, s: AgentState, asked_at: float, j: float) -> float:
    """Where the contract puts the next start of an agent first asked for at ``asked_at``:
    S when S is still ahead then (a crash loop, a restart within W), else the node's next
    admission slot (invariants 2 and 3)."""
    if not s.runs:
        return oracle_slot(asked_at, j, p.offset)
    last = max(r.started_at for r in s.runs)
    m = multiplier(backoff_level(s, p.stable_after), p.max_multiplier)
    big_s = oracle_slot(last + W * m, W, p.offset)
    return big_s if big_s >= asked_at else oracle_slot(asked_at, j, p.offset)


# --- invariant 0: one answer whoever asks --------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_history, st.floats(min_value=0, max_value=8 * W), st.floats(min_value=0, max_value=1))
def test_a_fresh_caller_gets_the_waiting_gates_answer_and_the_start_comes_then(
    history: list[tuple[float, str, str]], after: float, later: float
) -> None:
    """Invariant 0: whoever asks between a refusal and the time it named (a fresh gate after a
    reboot, a restarted daemon, status) gets that very time; at that time the start comes."""
    p = policy()
    s = build(history)
    last = max((r.started_at for r in s.runs), default=T0)
    first = last + after
    d, s = ask(p, s, first)
    if d.allowed:
        return
    nxt = d.next_allowed_at
    assert nxt is not None and nxt > first
    fresh_at = first + later * (nxt - first)
    if fresh_at < nxt:
        fresh, _ = ask(p, s, fresh_at)
        assert not fresh.allowed and fresh.next_allowed_at == nxt
        assert fresh.backoff_level == d.backoff_level and fresh.slot_at == d.slot_at
    allowed, _ = ask(p, s, nxt)
    assert allowed.allowed and allowed.start


def test_status_and_gate_give_the_same_answer(tmp_path: Path) -> None:
    """Invariant 0: `status --json` and a fresh `gate --json` name the same next start."""
    sd = str(tmp_path / "state")
    args = ("--state-dir", sd, "--cluster-size", "1000", "--node-name", "node-7")
    first = json.loads(run_cli("gate", "--json", *args).stdout)
    assert first["allowed"] is False and first["grid"] == "admission"
    status = json.loads(run_cli("status", "--json", *args).stdout)
    again = run_cli("gate", "--json", *args)
    assert again.code == 75
    d = json.loads(again.stdout)
    assert d["next_allowed_at"] == status["next_allowed_at"] == first["next_allowed_at"]
    assert d["asked_at"] == status["asked_at"] == first["asked_at"]


# --- the wait loop, on a fake clock --------------------------------------------------------------


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


def _gate(tmp_path: Path, ft: FakeTime, node: str = "node-1", **overrides: object) -> Gate:
    cfg = load_config(
        env={},
        overrides={"cluster_size": 1000, "node_name": node, **overrides},
        state_dir=tmp_path / "state",
    )
    return Gate(cfg, AGENT, clock=ft.clock, probe=None, inspect=None, identity=None)


def _write(gate: Gate, state: AgentState, now: float) -> None:
    with gate.store.transaction(AGENT, now) as tx:
        tx.write(replace(state, agent=AGENT), now)


def test_wait_sleeps_until_the_slot_exactly(tmp_path: Path) -> None:
    """The wait polls once per poll and its last sleep ends exactly at the slot, where the
    start is allowed and recorded with its run id."""
    ft = FakeTime(T0 + 50)
    gate = _gate(tmp_path, ft)
    _write(gate, crash_loop(1, T0, W), T0 + 50)
    slot = oracle_slot(T0 + W, W, gate.policy.offset)
    result = gate.wait(sleep=ft.sleep, poll=100.0)
    d = result.decision
    assert d.allowed and result.recorded and d.decided_at == slot and d.grid == "window"
    whole, rest = divmod(slot - (T0 + 50), 100.0)
    assert ft.sleeps == [100.0] * int(whole) + ([round(rest, 6)] if rest > 1e-6 else [])
    last = gate.store.read(AGENT).state.last_run
    assert last is not None and last.id == d.run_id and last.started_at == slot


def test_hold_then_release_does_not_release_a_waiting_gate_before_its_slot(
    tmp_path: Path,
) -> None:
    """Invariants 0 and 8: a release wakes a waiting gate only into what the state allows;
    the events say each change once."""
    ft = FakeTime(T0 + 10 * W)
    gate = _gate(tmp_path, ft)
    _write(gate, crash_loop(3, T0, W), ft.now)
    last = T0 + 20 * W
    slot = oracle_slot(last + W * multiplier(3, 4), W, gate.policy.offset)
    ft.now = last + 60

    def hold() -> None:
        state = gate.store.read(AGENT).state
        _write(gate, held(state, OperatorFlag("op", "incident", ft.now)), ft.now)

    def release() -> None:
        state = gate.store.read(AGENT).state
        _write(gate, apply(state, Released()), ft.now)

    ft.at = {last + 120: hold, last + 600: release}
    with structlog.testing.capture_logs() as logs:
        result = gate.wait(sleep=ft.sleep, poll=30.0)
    assert result.decision.allowed and result.decision.decided_at == slot
    events = [(e["event"], e.get("waiting")) for e in logs]
    assert events == [
        ("gate.refused", True),
        ("gate.held", True),
        ("gate.refused", True),
        ("gate.allowed", None),
    ]


# --- invariant 1: what counts as a failed run ----------------------------------------------------


def test_operator_starts_and_deliberate_stops_do_not_raise_the_level() -> None:
    """Invariant 1: forced and override starts, TERM/INT/exit-0 stops and a stop someone sent
    are neutral; a SIGKILL nobody sent is a failure."""
    s = crash_loop(1, T0, W)  # one real failure: level 1
    t = T0 + 5 * W
    for via in ("override", "override", "force", "force"):
        s = ended(started(s, t, via=via), t + 3, 1)
        t += 100
    # Each operator start made the run before it neutral; the last one failed on its own.
    assert backoff_level(s, 600) == 1
    for code in (143, 130, 0):
        s = ended(started(s, t), t + 3, code)
        t += 100
        assert backoff_level(s, 600) == 1
    stopped = ended(started(s, t), t + 3, 137, "docker", stop="docker stop (SIGTERM, then SIGKILL)")
    assert backoff_level(stopped, 600) == 1
    assert backoff_level(ended(started(s, t), t + 3, 137), 600) == 2


def test_a_replaced_run_is_neutral() -> None:
    """Invariant 1: a run whose container an approved replacement (an upgrade) superseded was
    stopped on purpose, whatever its end looks like."""
    s = started(crash_loop(1, T0, W), T0 + 5 * W, run_id="old")
    s = started(s, T0 + 5 * W + 60, run_id="new", replaces="old")
    assert backoff_level(s, 600, running=True) == 1
    plain = started(started(crash_loop(1, T0, W), T0 + 5 * W), T0 + 5 * W + 60)
    assert backoff_level(plain, 600, running=True) == 2


def test_a_crash_loop_without_exit_reports_climbs_like_one_with_reports() -> None:
    """Invariant 1: an end nobody reported is a failure, so levels climb 0 to 5 either way,
    and each wait is W*m to the node's slot, never later."""
    for reported in (True, False):
        p = policy()
        s = stable(T0, 0, took=W)
        now = T0 + 3 * DAY
        levels: list[int] = []
        for _ in range(6):
            now, s, seen = wait_until_allowed(p, s, now)
            d = seen[-1]
            levels.append(d.backoff_level)
            if d.backoff_level >= 1:
                last = s.runs[-2].started_at
                m = multiplier(d.backoff_level, 4)
                assert now == oracle_slot(last + W * m, W, p.offset)
            if reported:
                s = ended(s, now + 5, 1)
            now += 30
        assert levels == [0, 1, 2, 3, 4, 5]


def test_a_run_docker_says_is_running_is_in_progress_not_failed() -> None:
    """Invariant 1: while Docker says the agent runs, its open run does not raise the level."""
    s = started(crash_loop(2, T0, W), T0 + 30 * W)
    d, after = ask(policy(), s, T0 + 40 * W, docker="running")
    assert d.allowed and not d.start and d.reason == "already running" and after is s
    assert d.backoff_level == 2
    assert ask(policy(), s, T0 + 40 * W)[0].backoff_level == 3


def test_a_run_that_lasted_stable_after_ends_the_count() -> None:
    """Invariant 1: a reported run of stable_after or longer resets the level to 0."""
    s = ended(started(crash_loop(3, T0, W), T0 + 40 * W), T0 + 40 * W + 600, 1)
    assert backoff_level(s, 600) == 0
    assert backoff_level(s, 601) == 4


# --- invariant 2: no event starts a fleet at once ------------------------------------------------


FLEET = [f"node-{i:04d}" for i in range(400)]


@pytest.mark.parametrize(
    ("event", "state"),
    [
        ("stable agents crash together", stable(T0, 1)),
        ("a fleet-wide deliberate restart", stable(T0, 143)),
        ("a boot after a power loss", stable(T0, None)),
        ("the first start ever", AgentState(AGENT)),
    ],
)
def test_a_fleet_event_on_a_live_control_plane_starts_nobody_at_once(
    event: str, state: AgentState
) -> None:
    """Invariant 2: a whole fleet asking in one instant (4,781 of 5,000 failed when all
    started together) is admitted at each node's admission slot, spread over J; none later."""
    now = T0 + 3 * DAY + 7200
    starts = []
    for node in FLEET:
        p = policy(node)
        d, s = ask(p, state, now)
        assert not d.allowed or d.next_allowed_at is None
        at, s, _ = wait_until_allowed(p, s, now)
        assert at == oracle_slot(now, W, p.offset), event
        assert s.last_run is not None and s.last_run.started_at == at
        starts.append(at)
    assert max(starts) < now + W
    busiest = max(sum(1 for t in starts if m * 60 <= t - now < m * 60 + 60) for m in range(20))
    assert busiest <= 3 * len(FLEET) / (W / 60)  # ~N/W a minute, never the whole fleet


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_history, st.booleans()), min_size=40, max_size=40),
    st.floats(min_value=0, max_value=4 * W),
    st.sampled_from([W, JP]),
)
def test_a_fleet_asking_at_one_instant_is_spread_over_its_grids(
    fleet: list[tuple[list[tuple[float, str, str]], bool]], after: float, j: float
) -> None:
    """Invariant 2, both halves, for any histories: with exact slots (index i/N) each node
    starts exactly where the contract puts it (S if still ahead, else its admission slot), so
    no J-long interval holds more than N admissions and no J/8 more than N/8 + 1 per grid."""
    n = len(fleet)
    histories = [build(h) for h, _ in fleet]
    now = max((r.started_at for s in histories for r in s.runs), default=T0) + after
    admitted: list[float] = []
    in_window: list[float] = []
    for i, (s, _) in enumerate(zip(histories, fleet, strict=True)):
        p = policy(f"n{i}", offset=index_offset(i, n), slot_mode="index", admission=j)
        at, after_state, seen = wait_until_allowed(p, s, now)
        assert at == expected_start(p, s, now, j)
        (admitted if seen[-1].grid == "admission" else in_window).append(at)
        assert after_state.ask is None
    for starts, period in ((admitted, j), (in_window, W)):
        starts.sort()
        width = period / 8
        for k, t in enumerate(starts):
            inside = sum(1 for u in starts[k:] if u < t + width)
            assert inside <= n / 8 + 1


def test_a_restart_within_w_waits_for_s_and_a_deliberate_stop_after_w_is_admitted() -> None:
    """Invariant 2: S still ahead when first asked (a restart within W) -> S, on the window
    grid; S passed (a deliberate stop after a day) -> the admission grid."""
    p = policy()
    s = ended(started(AgentState(AGENT), T0), T0 + 300, 143)
    d, s2 = ask(p, s, T0 + 301)
    big_s = oracle_slot(T0 + W, W, p.offset)
    assert (d.grid, d.next_allowed_at, d.backoff_level) == ("window", big_s, 0)
    assert ask(p, s2, big_s)[0].allowed
    late = ended(started(AgentState(AGENT), T0), T0 + DAY, 143)
    d, _ = ask(p, late, T0 + DAY + 1)
    assert (d.grid, d.next_allowed_at) == ("admission", oracle_slot(T0 + DAY + 1, W, p.offset))


def test_s_passed_while_nobody_asked_goes_to_the_admission_grid() -> None:
    """Invariant 2: a crash loop first asked after its S (the gate was down) waits for its
    admission slot from that ask, not the old S (in the past) nor a later window slot."""
    p = policy()
    s = crash_loop(1, T0, W)
    late = T0 + 5 * W + 17
    d, _ = ask(p, s, late)
    assert d.grid == "admission" and d.backoff_level == 1
    assert d.next_allowed_at == oracle_slot(late, W, p.offset) or d.allowed


def test_the_first_ask_is_a_fact_and_lapses_when_nobody_comes_for_it() -> None:
    """Invariant 2: the first ask is kept, so a fresh caller gets the same admission slot; a
    slot nobody came for within ASK_GRACE is gone, and the next ask is a first ask."""
    p = policy()
    s0 = stable(T0, 1)
    first = T0 + 4 * DAY
    d1, s1 = ask(p, s0, first)
    slot = oracle_slot(first, W, p.offset)
    assert not d1.allowed and d1.next_allowed_at == slot and s1.ask is not None
    d2, _ = ask(p, s1, first + 30)
    assert d2.next_allowed_at == slot and d2.asked_at == first
    assert ask(p, s1, slot + ASK_GRACE)[0].allowed
    lapsed_at = slot + ASK_GRACE + 1
    d3, _ = ask(p, s1, lapsed_at)
    assert not d3.allowed and d3.asked_at == lapsed_at
    assert d3.next_allowed_at == oracle_slot(lapsed_at, W, p.offset)


def test_a_release_and_the_end_of_a_hold_are_new_first_asks() -> None:
    """Invariant 2: after a release, or when a timed hold ends, the start waits for the node's
    admission slot counted from that moment, not from the ask before the hold."""
    p = policy()
    first = T0 + 4 * DAY
    _, s = ask(p, stable(T0, 1), first)
    hold_end = first + 3 * W + 11
    s = held(s, OperatorFlag("op", "maintenance", first + 10, hold_end))
    d, _ = ask(p, s, first + 20)
    assert d.event == "gate.held" and d.next_allowed_at == oracle_slot(hold_end, W, p.offset)
    d, _ = ask(p, s, hold_end)
    assert not d.allowed and d.next_allowed_at == oracle_slot(hold_end, W, p.offset)
    released = apply(s, Released())
    assert released.ask is None and released.hold is None
    d, _ = ask(p, released, hold_end + 5)
    assert d.asked_at == hold_end + 5


# --- invariant 3: a crash loop waits for S, whoever asks -----------------------------------------


def test_forty_nodes_at_level_three_asked_after_w_are_all_refused() -> None:
    """Invariant 3: 40 nodes at level 3 asked in the same second, W + 5 s after their last
    start, are all refused until their own slot at or after last + 4W (no wave), and start
    exactly there."""
    last = T0 + 10 * W + 10
    now = last + W + 5
    answers = []
    for i in range(40):
        p = policy(f"node-{i:03d}")
        s = ended(started(crash_loop(2, T0, W), last), last + 5, 1)
        d, s = ask(p, s, now)
        assert d.backoff_level == 3 and not d.allowed and d.grid == "window", d.reason
        assert d.next_allowed_at == oracle_slot(last + 4 * W, W, p.offset)
        assert ask(p, s, d.next_allowed_at)[0].allowed
        answers.append(d.next_allowed_at)
    assert len(set(answers)) > 30  # spread over the window, not one instant


def test_a_probe_down_at_s_moves_a_crash_loop_to_its_next_window_slot() -> None:
    """Invariant 3 with a probe: "down" or "loaded" at S -> the node's next window slot."""
    p = probe_policy()
    s = crash_loop(1, T0, W)
    big_s = oracle_slot(T0 + W, W, p.offset)
    for answer in ("down", "loaded"):
        d, s2 = ask(p, s, big_s, answer)
        assert not d.allowed and d.next_allowed_at == big_s + W and d.grid == "window"
        assert s2.ask is not None and s2.ask.until == big_s + W
        assert ask(p, s2, big_s + W, "ready")[0].allowed


# --- invariant 4: at most one gated start per window ---------------------------------------------


@settings(max_examples=200, deadline=None)
@given(_history, st.lists(st.floats(min_value=0, max_value=3 * W), min_size=1, max_size=25))
def test_at_most_one_gated_start_per_window(
    history: list[tuple[float, str, str]], gaps: list[float]
) -> None:
    """Invariant 4: asked at any times, gated starts are at least W apart (operator starts not
    counted), and each comes exactly at a time a refusal named or an ask found due."""
    p = policy()
    s = build(history)
    now = max((r.started_at for r in s.runs), default=T0)
    gated: list[float] = []
    for gap in gaps:
        now += gap
        d, s = ask(p, s, now)
        if d.start:
            gated.append(now)
            s = ended(s, now + 5, 1)
    prior = [r.started_at for r in build(history).runs if not r.operator]
    for a, b in zip(sorted(prior[-1:] + gated), sorted(prior[-1:] + gated)[1:], strict=False):
        assert b - a >= W - 1e-6


# --- invariant 8: clock steps --------------------------------------------------------------------


def test_a_flag_set_in_the_future_is_pinned_to_its_duration() -> None:
    """Invariant 8: an override set a day ahead (another boot) lasts its hour from when it is
    first seen; a hold until released stays until released."""
    from histories import clamp_future

    s = overridden(AgentState(AGENT), OperatorFlag("op", "x", T0 + DAY, T0 + DAY + 3600))
    s = held(s, OperatorFlag("op", "y", T0 + DAY, T0 + DAY + 7200))
    pinned = clamp_future(s, T0)
    assert pinned.override == OperatorFlag("op", "x", T0, T0 + 3600)
    assert pinned.hold == OperatorFlag("op", "y", T0, T0 + 7200)
    assert clamp_future(pinned, T0 + 10) is pinned  # pinned once, then left alone
    forever = held(AgentState(AGENT), OperatorFlag("op", "z", T0 + DAY))
    assert clamp_future(forever, T0).hold == OperatorFlag("op", "z", T0)


# --- invariant 9: unknown history is not a clean history -----------------------------------------


def test_force_and_reset_skip_the_wait_of_a_lost_history(tmp_path: Path) -> None:
    """Invariant 9: after a corrupt file only --force or reset let the next start through
    sooner than the slot; the bad bytes are kept."""
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    args = ("--state-dir", str(sd), "--cluster-size", "1000")
    (sd / "cilium-agent.json").write_text('{"schema": 99}')
    r = run_cli("gate", "--json", *args)
    assert r.code == 75 and json.loads(r.stdout)["backoff_level"] == 1
    status = json.loads(run_cli("status", "--json", *args).stdout)
    assert status["history_lost"] is True and len(status["quarantined"]) == 1
    assert run_cli("gate", "--force", "--reason", "checked the node", *args).code == 0
    (sd / "cilium-agent.json").write_text("garbage")
    assert run_cli("gate", *args).code == 75
    assert run_cli("reset", "--reason", "checked", *args).code == 0
    assert sorted(p.read_bytes() for p in sd.glob("cilium-agent.json.corrupt-*")) == [
        b"garbage",
        b'{"schema": 99}',
    ]


# --- invariant 11: the probe ---------------------------------------------------------------------


def test_an_admission_slot_needs_ready_and_loaded_or_down_moves_it_one_period() -> None:
    """Invariant 11: at the admission slot only "ready" admits; "loaded" and "down" move the
    start to the node's next admission slot (J later), where "ready" admits."""
    p = probe_policy()
    first = T0 + 4 * DAY
    d, s = ask(p, stable(T0, 1), first)
    slot = oracle_slot(first, JP, p.offset)
    assert d.next_allowed_at == slot and d.admission_seconds == JP
    for answer in ("loaded", "down"):
        d2, s2 = ask(p, s, slot, answer)
        assert not d2.allowed and d2.next_allowed_at == slot + JP and d2.probe == answer
        assert ask(p, s2, slot + JP, "ready")[0].allowed
    assert ask(p, s, slot, "ready")[0].allowed


def test_a_broken_probe_is_decided_as_if_none_were_configured() -> None:
    """Invariant 11: "broken" is ignored: J becomes W (what no probe gives), and at that slot
    the start comes, whatever the probe says next."""
    p = probe_policy()
    first = T0 + 4 * DAY
    d, s = ask(p, stable(T0, 1), first)
    d2, s2 = ask(p, s, d.next_allowed_at or 0, "broken")
    w_slot = oracle_slot(first, W, p.offset)
    if w_slot > (d.next_allowed_at or 0):
        assert not d2.allowed and d2.next_allowed_at == w_slot
        d3, _ = ask(p, s2, w_slot, "broken")
        assert d3.allowed
    else:
        assert d2.allowed


def test_a_probe_that_says_down_for_ever_cannot_hold_a_start_beyond_the_cap() -> None:
    """Invariant 11's liveness: a probe that is wrong fleet-wide ("down" at every ask) holds
    a start at most W * max_multiplier after its slot; there it starts."""
    p = probe_policy()
    first = T0 + 4 * DAY
    _, s = ask(p, stable(T0, 1), first)
    slot = oracle_slot(first, JP, p.offset)
    at, _, seen = wait_until_allowed(p, s, slot, "down", limit=200)
    cap = slot + W * p.max_multiplier
    assert at == math.ceil(cap * 1_000_000) / 1_000_000
    assert all(not d.allowed for d in seen[:-1]) and seen[-1].allowed


# --- invariant 12: run ids -----------------------------------------------------------------------


def test_an_approved_start_is_named_and_only_its_own_report_closes_it() -> None:
    """Invariant 12: the approval carries the run id; a report for another run, or a second
    report, changes nothing."""
    from supervisor.core.events import Ended

    p = policy()
    first = T0 + 4 * DAY
    d, s = ask(p, stable(T0, 1), first)
    at = d.next_allowed_at or 0
    ok, s = ask(p, s, at)
    assert ok.start and ok.run_id and s.last_run is not None and s.last_run.id == ok.run_id
    assert apply(s, Ended(at + 30, 0, run_id="another-run")) is s
    closed = apply(s, Ended(at + 40, 1, run_id=ok.run_id))
    assert closed.last_run is not None and closed.last_run.exit_code == 1
    assert apply(closed, Ended(at + 50, 0, run_id=ok.run_id)) is closed


def test_a_report_of_an_end_cannot_clear_a_lost_history() -> None:
    """Invariant 9: after a corrupt file, a record-exit (of the run from before) closes
    nothing: the placeholder keeps the agent at level 1 until --force or a reset."""
    from histories import lost

    from supervisor.core.events import Ended

    s = lost(AGENT, T0, "state file moved aside")
    assert apply(s, Ended(T0 + 5, 143)) is s
    assert backoff_level(s, 600) == 1
