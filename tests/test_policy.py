"""The decision engine: window size, backoff, slots, hold/override, and invariants 1-6."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import pytest
from histories import ended, started
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor.core.events import apply_all
from supervisor.core.policy import (
    Decision,
    Policy,
    Request,
    WindowConfig,
    decide,
    multiplier,
    next_grid_slot,
    window_seconds,
)
from supervisor.core.slots import hash_offset, index_offset
from supervisor.core.state import AgentState, from_document, to_document
from supervisor.storage.config import load_config

T0 = 1_800_000_000.0  # a fixed wall-clock time in 2027


def policy(window: float = 1200.0, offset: float = 0.25, **kw: object) -> Policy:
    """A policy with a round window and a known slot offset."""
    base = Policy(
        agent="cilium-agent",
        node="node-1",
        cluster_size=1000,
        window=window,
        offset=offset,
        slot_mode="index",
        admission=window,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def gate(p: Policy, s: AgentState, now: float, force: bool = False) -> tuple[Decision, AgentState]:
    """One decision with its events applied, as the Gate records it."""
    d = decide(p, s, now, Request(run_id=f"r{now}", force=force))
    return d, apply_all(s, d.events)


def crashed_runs(n: int, start: float, run_seconds: float = 5.0, gap: float = 1300.0) -> AgentState:
    """State with ``n`` short runs, ``gap`` apart, each ended after ``run_seconds``."""
    s = AgentState("cilium-agent")
    for i in range(n):
        t = start + i * gap
        s = ended(started(s, t), t + run_seconds, 1)
    return s


def test_default_window_reproduces_published_figures() -> None:
    """Defaults give 1000 nodes -> 20 minutes and 5000 nodes -> 60 minutes."""
    w = WindowConfig()
    assert window_seconds(w, 1000) == 1200.0
    assert window_seconds(w, 5000) == 3600.0


def test_window_is_clamped() -> None:
    """The window never leaves [min, max], whatever the cluster size."""
    w = WindowConfig(base=0, per_node=1, min=100, max=500)
    assert window_seconds(w, 1) == 100
    assert window_seconds(w, 300) == 300
    assert window_seconds(w, 10_000) == 500


def test_multiplier_doubles_and_caps() -> None:
    """m = min(2**(k-1), max_multiplier), 1 for k <= 1, no overflow for huge k."""
    assert [multiplier(k, 4) for k in range(6)] == [1, 1, 2, 4, 4, 4]
    assert multiplier(10**9, 8) == 8


def test_window_counts_from_the_latest_start_not_the_last_appended() -> None:
    """Regression: runs appended out of time order (a stale clock read) must not open the gate.

    Found by the load fault test: a caller that read the clock before waiting for the lock
    appended an older start after a newer one, and the window was counted from the older.
    """
    p = policy(window=1200.0)
    s = started(started(AgentState("cilium-agent"), T0 + 1000), T0)
    d = decide(p, s, T0 + 1300)
    assert not d.allowed and d.next_allowed_at is not None
    assert d.next_allowed_at >= T0 + 1000 + 1200


def test_index_slots_are_exact() -> None:
    """slot_index/slot_count places node i exactly i/count into every window."""
    assert index_offset(3, 12) == 0.25
    for i in range(10):
        slot = next_grid_slot(T0, 1000.0, index_offset(i, 10))
        assert math.isclose(slot % 1000.0, (i * 100.0) % 1000.0, abs_tol=1e-6)


def test_policy_from_config_uses_index_slots_when_configured() -> None:
    """Configured ordinals win over the hash in auto mode."""
    cfg = load_config(
        env={
            "AGENT_SUPERVISOR_CLUSTER_SIZE": "1000",
            "AGENT_SUPERVISOR_SLOT_INDEX": "7",
            "AGENT_SUPERVISOR_SLOT_COUNT": "1000",
        }
    )
    p = cfg.policy("cilium-agent")
    assert p.slot_mode == "index" and p.offset == 0.007 and p.window == 1200.0


def test_hash_slots_spread_over_the_window() -> None:
    """Hash offsets of 4000 nodes fill each tenth of the window within 15% of even."""
    counts = [0] * 10
    for i in range(4000):
        counts[int(hash_offset(f"node-{i}", "cilium-agent") * 10)] += 1
    assert min(counts) > 340 and max(counts) < 460


# --- properties ---------------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.floats(min_value=0.5, max_value=4000.0),  # time since the previous call
        st.sampled_from(["gate", "gate", "gate", "force", "exit0", "exit1"]),
    ),
    min_size=1,
    max_size=60,
)
#: A call sequence, a window, a slot offset and a multiplier cap: the invariants' inputs.
_given_cases = given(
    events,
    st.floats(min_value=60, max_value=3600),
    st.floats(min_value=0, max_value=0.999),
    st.integers(min_value=1, max_value=16),
)


def invariant_cases(test: Callable[..., None]) -> Callable[..., None]:
    """Run ``test`` as a hypothesis property over call sequences and policies."""
    wrapped: Callable[..., None] = settings(max_examples=300, deadline=None)(_given_cases(test))
    return wrapped


@invariant_cases
def test_at_most_one_gated_start_per_window(
    evs: list[tuple[float, str]], window: float, offset: float, max_mult: int
) -> None:
    """Invariant 4: gated starts are at least W apart, whatever the calls, forced starts and
    exits in between."""
    p = policy(window=window, offset=offset, max_multiplier=max_mult)
    s = AgentState("cilium-agent")
    now = T0
    gated: list[float] = []
    for dt, what in evs:
        now += dt
        if what.startswith("exit"):
            s = ended(s, now, int(what[-1]))
            continue
        d, s = gate(p, s, now, force=(what == "force"))
        if d.start and not d.forced:
            gated.append(now)
    assert all(b - a >= window for a, b in itertools.pairwise(gated))


def exact_slot(not_before: float, window: float, offset: float) -> float:
    """The first grid time ``e*W + floor(offset*W in µs)`` at or after ``not_before``, in exact
    arithmetic (as the float of that whole microsecond): an oracle written independently of
    :func:`next_grid_slot`."""
    w = round(Fraction(window) * 10**6)
    shift = math.floor(offset * w)
    u = math.ceil(Fraction(not_before) * 10**6)
    while (u - 1) / 10**6 >= not_before:
        u -= 1
    return float(Fraction(math.ceil(Fraction(u - shift, w)) * w + shift, 10**6))


@invariant_cases
def test_refusals_are_deterministic_and_at_their_slot(
    evs: list[tuple[float, str]], window: float, offset: float, max_mult: int
) -> None:
    """Invariants 2, 3, 5: a refusal names S (the first slot at or after last + W*m) when S
    had not passed at the first ask, else the admission slot at or after that ask; the start
    comes exactly there; and a fresh caller that reads the same state back from its file gets
    the very same answer."""
    p = policy(window=window, offset=offset, max_multiplier=max_mult)
    s = AgentState("cilium-agent")
    now = T0
    for dt, what in evs:
        now += dt
        if what.startswith("exit"):
            s = ended(s, now, int(what[-1]))
            continue
        d = decide(p, s, now, Request(run_id="x"))
        fresh = from_document(json.loads(json.dumps(to_document(s, now))), s.agent)
        assert decide(p, fresh, now, Request(run_id="x")) == d
        if d.allowed:
            s = apply_all(s, d.events)
            continue
        asked = d.asked_at
        assert asked is not None and d.next_allowed_at is not None
        last = max((r.started_at for r in s.runs), default=None)
        m = multiplier(d.backoff_level, max_mult)
        big_s = None if last is None else exact_slot(last + window * m, window, offset)
        if big_s is not None and big_s >= asked:
            assert d.grid == "window" and d.next_allowed_at == big_s
        else:
            assert d.grid == "admission"
            assert d.next_allowed_at == exact_slot(asked, window, offset)
        s = apply_all(s, d.events)
        assert gate(p, s, d.next_allowed_at)[0].allowed


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.floats(min_value=60, max_value=7200))
def test_index_slots_are_evenly_spaced(count: int, window: float) -> None:
    """Invariant 4: with ordinals, the nodes' next slots are exactly W/count apart."""
    slots = sorted(next_grid_slot(T0, window, index_offset(i, count)) for i in range(count))
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    # Whole microseconds: each gap is W/count to within one microsecond.
    assert all(abs(g - window / count) <= 1.5e-6 for g in gaps)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0, max_value=4e9),
    st.floats(min_value=1, max_value=1e5),
    st.floats(min_value=0, max_value=0.999999),
)
@example(965442166.7, 3.3, 1 / 3)  # float rounding once put e*W + offset*W a hair before t
def test_grid_slot_is_first_at_or_after(t: float, window: float, offset: float) -> None:
    """The grid slot is the exact oracle's: at or after the asked time, less than one window
    later, never the slot after the right one, and a whole microsecond."""
    slot = next_grid_slot(t, window, offset)
    assert t <= slot and slot == exact_slot(t, window, offset)
    assert slot - t <= round(window * 10**6) / 10**6  # the period in whole microseconds
    assert next_grid_slot(slot, window, offset) == slot


@pytest.mark.parametrize(
    ("t", "window", "offset", "slot"),
    [
        (T0 + 300.0, 1200.0, 0.25, T0 + 300.0),  # exactly on a slot: that slot, not the next
        (T0 + 300.001, 1200.0, 0.25, T0 + 1500.0),
        (T0 + 299.999, 1200.0, 0.25, T0 + 300.0),
        (T0, 1200.0, 0.0, T0),
        (T0 + 0.1 + 0.2, 0.3, 0.0, T0 + 0.3),  # float noise around a slot does not skip it
        (0.0, 60.0, 0.5, 30.0),
    ],
)
def test_grid_slot_exact_values(t: float, window: float, offset: float, slot: float) -> None:
    """Written-out slots: a time exactly on a slot is that slot; a hair after, the next one."""
    assert next_grid_slot(t, window, offset) == pytest.approx(slot, abs=1e-6)


@pytest.mark.parametrize(("k", "m"), [(0, 1), (1, 2), (2, 4), (3, 4), (4, 4), (5, 4), (40, 4)])
def test_refusal_at_each_level_waits_w_times_m(k: int, m: int) -> None:
    """After k earlier failures and a new start (level k + 1) the next start is in the window
    last + W*m, m = min(2**k, 4) written out: 1, 2, 4, 4, ... (level 1 waits one window)."""
    p = policy(window=1000.0, offset=0.0, max_multiplier=4)
    s = crashed_runs(k, T0 - 10 * 86400, gap=2000) if k else AgentState("cilium-agent")
    s = started(s, T0)
    d = decide(p, s, T0 + 1, Request(run_id="x"))
    assert d.backoff_level == k + 1
    assert d.next_allowed_at == T0 + 1000 * m
