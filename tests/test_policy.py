"""The decision engine: window size, backoff, slots, hold/override, and invariants 1-6."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor.core.policy import (
    Policy,
    WindowConfig,
    backoff_level,
    decide,
    multiplier,
    next_grid_slot,
    window_seconds,
)
from supervisor.core.slots import hash_offset, index_offset
from supervisor.core.state import AgentState, OperatorFlag, from_document, to_document
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
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def crashed_runs(n: int, start: float, run_seconds: float = 5.0, gap: float = 1300.0) -> AgentState:
    """State with ``n`` short runs, ``gap`` apart, each ended after ``run_seconds``."""
    s = AgentState("cilium-agent")
    for i in range(n):
        t = start + i * gap
        s = s.record_start(t).record_exit(t + run_seconds, 1)
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


def test_first_start_is_allowed() -> None:
    """An agent with no history starts at once."""
    d = decide(policy(), AgentState("cilium-agent"), T0)
    assert d.allowed and d.reason == "first start" and d.next_allowed_at is None


def test_restart_within_window_is_refused_until_slot() -> None:
    """A second start inside W is refused and told the node's slot in the next window."""
    p = policy(window=1200.0, offset=0.25)
    s = AgentState("cilium-agent").record_start(T0)
    d = decide(p, s, T0 + 10)
    assert not d.allowed
    assert d.next_allowed_at is not None
    assert T0 + 1200 <= d.next_allowed_at < T0 + 2400
    assert math.isclose((d.next_allowed_at - 0.25 * 1200) % 1200, 0, abs_tol=1e-6) or math.isclose(
        (d.next_allowed_at - 0.25 * 1200) % 1200, 1200, abs_tol=1e-6
    )


def test_level_counts_consecutive_unstable_runs() -> None:
    """Each short run raises the level; a stable run stops the count."""
    s = crashed_runs(3, T0)
    assert backoff_level(s, 600) == 3
    long_run = AgentState("cilium-agent").record_start(T0).record_exit(T0 + 700, 0)
    s2 = long_run
    for i in range(2):
        t = T0 + 2000 + i * 1300
        s2 = s2.record_start(t).record_exit(t + 1, 1)
    assert backoff_level(s2, 600) == 2


def test_stable_run_resets_backoff_to_one_window() -> None:
    """After a run that lasted stable_after, the next refusal waits one window, not more."""
    p = policy(window=1200.0, stable_after=600.0)
    s = crashed_runs(4, T0)
    last = T0 + 3 * 1300
    s = s.record_start(last + 1300).record_exit(last + 1300 + 700, 1)  # crashed after 700 s
    d = decide(p, s, last + 1300 + 700)
    assert d.backoff_level == 0
    assert d.next_allowed_at is not None
    assert last + 1300 + 1200 <= d.next_allowed_at < last + 1300 + 2400


def test_hold_blocks_and_force_wins() -> None:
    """A hold refuses even a first start; --force allows through it and says so."""
    s = AgentState("cilium-agent").with_hold(OperatorFlag("alice", "maintenance", T0))
    d = decide(policy(), s, T0 + 5)
    assert not d.allowed and "held by alice" in d.reason and d.next_allowed_at is None
    f = decide(policy(), s, T0 + 5, force=True, reason="urgent", user="bob")
    assert f.allowed and f.forced and "bob" in f.reason and "urgent" in f.reason


def test_timed_hold_reports_its_end() -> None:
    """A hold with an end reports the later of its end and the normal next slot."""
    s = AgentState("cilium-agent").with_hold(OperatorFlag("alice", "m", T0, until=T0 + 60))
    d = decide(policy(), s, T0 + 5)
    assert d.next_allowed_at == T0 + 60
    assert decide(policy(), s, T0 + 61).allowed


def test_override_allows_until_expiry() -> None:
    """An override lets every start through until it expires, then the window applies."""
    s = AgentState("cilium-agent").record_start(T0)
    s = s.with_override(OperatorFlag("bob", "fix rollout", T0, until=T0 + 300))
    d = decide(policy(), s, T0 + 10)
    assert d.allowed and d.via == "override" and not d.forced
    s = s.record_start(T0 + 10, via="override")
    assert not decide(policy(), s, T0 + 301).allowed


def test_future_start_counts_as_now() -> None:
    """A recorded start in the future (clock stepped back) blocks no longer than a backoff."""
    p = policy(window=1200.0)
    s = AgentState("cilium-agent").record_start(T0 + 86400)  # clock later stepped back a day
    d = decide(p, s, T0)
    assert not d.allowed and d.next_allowed_at is not None
    assert T0 + 1200 <= d.next_allowed_at < T0 + 2400


def test_window_counts_from_the_latest_start_not_the_last_appended() -> None:
    """Regression: runs appended out of time order (a stale clock read) must not open the gate.

    Found by the load fault test: a caller that read the clock before waiting for the lock
    appended an older start after a newer one, and the window was counted from the older.
    """
    p = policy(window=1200.0)
    s = AgentState("cilium-agent").record_start(T0 + 1000).record_start(T0)
    d = decide(p, s, T0 + 1300)
    assert not d.allowed and d.next_allowed_at is not None
    assert d.next_allowed_at >= T0 + 1000 + 1200


def test_probe_unhealthy_after_failed_run_waits_for_slot() -> None:
    """With a probe saying the control plane is down, a restart after a failed run waits."""
    p = policy(window=1200.0, offset=0.5, probe_configured=True)
    s = crashed_runs(1, T0)
    d = decide(p, s, T0 + 5000, control_plane_healthy=False)
    assert not d.allowed and d.next_allowed_at is not None
    assert T0 + 5000 <= d.next_allowed_at < T0 + 5000 + 1200
    assert decide(p, s, T0 + 5000, control_plane_healthy=True).allowed
    assert decide(p, s, T0 + 5000).allowed  # no probe ran: invariant 1 as without a probe


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
    """Invariant 2: gated starts are at least W apart, whatever the calls and exits."""
    p = policy(window=window, offset=offset, max_multiplier=max_mult)
    s = AgentState("cilium-agent")
    now = T0
    gated: list[float] = []
    for dt, what in evs:
        now += dt
        if what.startswith("exit"):
            s = s.record_exit(now, int(what[-1]))
            continue
        d = decide(p, s, now, force=(what == "force"))
        if d.allowed:
            s = s.record_start(now, via=d.via)
            if not d.forced:
                gated.append(now)
    assert all(b - a >= window for a, b in itertools.pairwise(gated))


def exact_slot(not_before: float, window: float, offset: float) -> Fraction:
    """The first grid time ``e*W + offset*W`` at or after ``not_before``, in exact arithmetic:
    an oracle written independently of :func:`next_grid_slot` and free of float rounding."""
    w = Fraction(window)
    shift = Fraction(offset) * w
    return math.ceil((Fraction(not_before) - shift) / w) * w + shift


@invariant_cases
def test_refusals_are_deterministic_and_in_their_window(
    evs: list[tuple[float, str]], window: float, offset: float, max_mult: int
) -> None:
    """Invariants 2, 3, 5: allowed iff the window (k = 0) or the slot S (k >= 1) has come;
    a refusal names S, the first slot at or after last + W*m with m = min(2**(k-1), cap), and
    a fresh caller that reads the same state back from its file gets the very same answer."""
    p = policy(window=window, offset=offset, max_multiplier=max_mult)
    s = AgentState("cilium-agent")
    now_ms = int(T0) * 1000  # whole milliseconds, so the file keeps every time exactly
    for dt, what in evs:
        now_ms += round(dt * 1000)
        now = now_ms / 1000
        if what.startswith("exit"):
            s = s.record_exit(now, int(what[-1]))
            continue
        d = decide(p, s, now)
        fresh = from_document(json.loads(json.dumps(to_document(s, now))), s.agent)
        assert decide(p, fresh, now) == d
        last = max((r.started_at for r in s.runs), default=None)
        k = d.backoff_level
        m = min(2 ** (k - 1), max_mult) if k >= 1 else 1
        if last is None or (k == 0 and now - last >= window):
            assert d.allowed
            continue
        slot = exact_slot(last + window * m, window, offset)
        assert last + Fraction(window) * m <= slot < last + Fraction(window) * (m + 1)
        if abs(Fraction(now) - slot) > Fraction(1, 10**6):  # not within float error of S
            assert d.allowed == (now >= slot)
        if not d.allowed:
            assert d.next_allowed_at is not None
            assert abs(Fraction(d.next_allowed_at) - slot) <= Fraction(1, 10**5)
        else:
            s = s.record_start(now)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.floats(min_value=60, max_value=7200))
def test_index_slots_are_evenly_spaced(count: int, window: float) -> None:
    """Invariant 4: with ordinals, the nodes' next slots are exactly W/count apart."""
    slots = sorted(next_grid_slot(T0, window, index_offset(i, count)) for i in range(count))
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(math.isclose(g, window / count, rel_tol=1e-6, abs_tol=1e-6) for g in gaps)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=-1e9, max_value=4e9),
    st.floats(min_value=1, max_value=1e5),
    st.floats(min_value=0, max_value=0.999999),
)
@example(965442166.7, 3.3, 1 / 3)  # float rounding puts e*W + offset*W a hair before t
def test_grid_slot_is_first_at_or_after(t: float, window: float, offset: float) -> None:
    """The grid slot is on the grid, at or after the asked time, and, in exact arithmetic,
    less than one window later: never the slot after the right one."""
    slot = next_grid_slot(t, window, offset)
    assert t <= slot
    assert Fraction(slot) - Fraction(t) < Fraction(window)
    w, shift = Fraction(window), Fraction(offset) * Fraction(window)
    grid = w * round((Fraction(slot) - shift) / w) + shift  # the nearest grid time
    assert abs(Fraction(slot) - grid) <= 8 * Fraction(math.ulp(abs(t) + window))


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
    s = s.record_start(T0)
    d = decide(p, s, T0 + 1)
    assert d.backoff_level == k + 1
    assert d.next_allowed_at == T0 + 1000 * m
