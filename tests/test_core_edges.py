"""The pure core at its edges: whole decisions asserted field by field at exact boundaries,
the probe's corner cases, and the state's transitions and file format, message by message.

Times are on a round grid: T0 is a multiple of the 20-minute window, and the node's slot offset
is a quarter, so its slots are T0 + 300 + k * 1200 and every expected number is written out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from supervisor.core.policy import (
    Decision,
    Policy,
    backoff_level,
    decide,
    probe_applies,
    probe_matters,
    remember,
    run_failed,
)
from supervisor.core.state import (
    MAX_TIMESTAMP,
    AgentState,
    OperatorFlag,
    Run,
    StateFormatError,
    from_document,
    iso,
    iso_seconds,
    parse_iso,
    to_document,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a multiple of W
W = 1200.0
SLOT = T0 + 300.0  # this node's slot in the window that starts at T0
AGENT = "cilium-agent"


def policy(**kw: Any) -> Policy:
    """A 1000-node policy, W = 20 min, slot offset 1/4 (slots at T0 + 300 + k * W)."""
    base = Policy(
        agent=AGENT, node="node-1", cluster_size=1000, window=W, offset=0.25, slot_mode="index"
    )
    return replace(base, **kw)


def expect(now: float, **kw: Any) -> Decision:
    """The Decision this module's policy gives at ``now``, with the fields that differ."""
    fields: dict[str, Any] = {
        "agent": AGENT,
        "node": "node-1",
        "cluster_size": 1000,
        "window_seconds": W,
        "backoff_level": 0,
        "next_allowed_at": None,
        "decided_at": now,
    }
    fields.update(kw)
    return Decision(**fields)


def crashes(*starts: float) -> AgentState:
    """Runs started at ``starts``, each failed 5 s later (exit 1)."""
    s = AgentState(AGENT)
    for t in starts:
        s = s.record_start(t).record_exit(t + 5, 1)
    return s


STABLE = AgentState(AGENT).record_start(T0 - 5000).record_exit(T0 - 4000, 1)  # level 0, long ago


# --- whole decisions, branch by branch -------------------------------------------------------


def test_first_start_decision() -> None:
    """No history: allowed at once, a start to record, level 0."""
    assert decide(policy(), AgentState(AGENT), T0) == expect(
        T0, allowed=True, reason="first start", start=True
    )


def test_refusal_within_the_window_names_the_slot_after_it() -> None:
    """Level 0, started 710 s ago: refused until the first slot at or after last + W."""
    s = AgentState(AGENT).record_start(T0).record_exit(T0 + 700, 0)
    assert decide(policy(), s, T0 + 710) == expect(
        T0 + 710,
        allowed=False,
        reason="started 11m50s ago, within the 20m window: next slot in 13m10s",
        next_allowed_at=T0 + 1500,
        event="gate.refused",
    )


def test_level_zero_is_allowed_at_exactly_one_window_after_the_last_start() -> None:
    """Invariant 2: at last + W exactly there is no start in the last window: allowed."""
    s = AgentState(AGENT).record_start(T0).record_exit(T0 + 700, 0)
    assert decide(policy(), s, T0 + W) == expect(
        T0 + W, allowed=True, reason="no start in the last window", start=True
    )
    assert not decide(policy(), s, T0 + W - 0.001).allowed


def test_a_run_lasting_exactly_stable_after_is_stable() -> None:
    """Invariant 1: a run that lasted exactly stable_after ends the count; a hair less fails."""
    s = crashes(T0 - 9000, T0 - 6000).record_start(T0).record_exit(T0 + 600, 1)
    assert backoff_level(s, 600.0) == 0
    assert decide(policy(), s, T0 + 700).backoff_level == 0
    short = crashes(T0 - 9000, T0 - 6000).record_start(T0).record_exit(T0 + 599.999, 1)
    assert backoff_level(short, 600.0) == 3


def test_backoff_refusal_at_level_one_says_one_failed_run() -> None:
    """Level 1: refused until the slot of window last + W, and the reason is singular."""
    assert decide(policy(), crashes(T0), T0 + 100) == expect(
        T0 + 100,
        allowed=False,
        reason=(
            "1 failed run in a row: backoff level 1 (x1), last start 1m40s ago: next slot in 23m20s"
        ),
        backoff_level=1,
        next_allowed_at=T0 + 1500,
        event="gate.refused",
    )


def test_backoff_refusal_at_level_two_waits_two_windows() -> None:
    """Level 2: m = 2, refused until the slot of window last + 2W, reason in the plural."""
    assert decide(policy(), crashes(T0 - 5000, T0), T0 + 100) == expect(
        T0 + 100,
        allowed=False,
        reason=(
            "2 failed runs in a row: backoff level 2 (x2), last start 1m40s ago: "
            "next slot in 43m20s"
        ),
        backoff_level=2,
        next_allowed_at=T0 + 2700,
        event="gate.refused",
    )


def test_backoff_allows_at_exactly_the_slot() -> None:
    """Invariant 3: allowed from S exactly (not a window later), refused a millisecond before."""
    s = crashes(T0 - 5000, T0)
    assert decide(policy(), s, T0 + 2700) == expect(
        T0 + 2700,
        allowed=True,
        reason="backoff level 2 (x2): this node's slot has come",
        backoff_level=2,
        start=True,
    )
    assert decide(policy(), s, T0 + 2699.999).next_allowed_at == T0 + 2700


@pytest.mark.parametrize(
    ("why", "head"),
    [
        ("moved aside to /x: bad", "history unknown (moved aside to /x: bad)"),
        (None, "history unknown (the state file was unreadable)"),
    ],
)
def test_lost_history_refusal_says_so(why: str | None, head: str) -> None:
    """Invariant 9: after a lost history the refusal says the history is unknown, and why."""
    s = AgentState(AGENT, runs=(Run(T0, "unknown", reason=why),))
    assert decide(policy(), s, T0 + 100) == expect(
        T0 + 100,
        allowed=False,
        reason=f"{head}: backoff level 1 (x1), last start 1m40s ago: next slot in 23m20s",
        backoff_level=1,
        next_allowed_at=T0 + 1500,
        event="gate.refused",
    )


def test_an_indefinite_hold_refuses_with_no_next_time() -> None:
    """A hold without an end refuses even a first start and names no time."""
    s = AgentState(AGENT).with_hold(OperatorFlag("alice", "maintenance", T0))
    assert decide(policy(), s, T0 + 5) == expect(
        T0 + 5,
        allowed=False,
        reason="held by alice until released: maintenance",
        event="gate.held",
    )


def test_a_timed_hold_over_an_allowed_start_reports_its_end() -> None:
    """A timed hold where the window would allow reports the hold's end."""
    s = AgentState(AGENT).with_hold(OperatorFlag("alice", "m", T0, until=T0 + 60))
    assert decide(policy(), s, T0 + 5) == expect(
        T0 + 5,
        allowed=False,
        reason="held by alice until 2027-01-15T08:01:00.000000Z: m",
        next_allowed_at=T0 + 60,
        event="gate.held",
    )


@pytest.mark.parametrize(("until", "reported"), [(T0 + 600, T0 + 1500), (T0 + 2000, T0 + 2000)])
def test_a_timed_hold_over_a_backoff_refusal_reports_the_later_time(
    until: float, reported: float
) -> None:
    """A hold ending before the backoff slot reports the slot; one ending after reports its end."""
    s = crashes(T0).with_hold(OperatorFlag("alice", "m", T0, until=until))
    d = decide(policy(), s, T0 + 100)
    assert (d.allowed, d.event, d.next_allowed_at, d.backoff_level) == (
        False,
        "gate.held",
        reported,
        1,
    )


def test_a_flag_at_exactly_until_has_expired() -> None:
    """A hold or override is in force strictly before ``until``: at ``until`` it is over."""
    flag = OperatorFlag("alice", "m", T0, until=T0 + 60)
    assert flag.active(T0 + 59.999) and not flag.active(T0 + 60)
    assert OperatorFlag("alice", "m", T0).active(T0 + 10**9)
    held = AgentState(AGENT).with_hold(flag)
    assert decide(policy(), held, T0 + 60).allowed
    overridden = crashes(T0).with_override(flag)
    assert decide(policy(), overridden, T0 + 59.999).allowed
    assert not decide(policy(), overridden, T0 + 60).allowed


@pytest.mark.parametrize(
    ("until", "reason"),
    [
        (T0 + 300, "override by bob until 2027-01-15T08:05:00.000000Z: fix rollout"),
        (None, "override by bob: fix rollout"),
    ],
)
def test_an_override_lets_a_backed_off_start_through(until: float | None, reason: str) -> None:
    """An active override allows through the backoff, as an override start."""
    s = crashes(T0).with_override(OperatorFlag("bob", "fix rollout", T0, until=until))
    assert decide(policy(), s, T0 + 10) == expect(
        T0 + 10,
        allowed=True,
        reason=reason,
        backoff_level=1,
        via="override",
        event="gate.override",
        start=True,
    )


@pytest.mark.parametrize(
    ("user", "why", "reason"),
    [
        ("bob", "urgent", "forced by bob: urgent"),
        (None, None, "forced: no reason given"),
        ("", "", "forced: no reason given"),
    ],
)
def test_force_wins_over_a_hold(user: str | None, why: str | None, reason: str) -> None:
    """--force allows through a hold and the backoff, says who and why, and is recorded forced."""
    s = crashes(T0).with_hold(OperatorFlag("alice", "maintenance", T0))
    assert decide(policy(), s, T0 + 10, force=True, user=user, reason=why) == expect(
        T0 + 10,
        allowed=True,
        reason=reason,
        backoff_level=1,
        forced=True,
        via="force",
        event="gate.forced",
        start=True,
    )


def test_already_running_allows_and_starts_nothing() -> None:
    """Invariant 7: a running container is allowed with nothing to start, even when held."""
    s = crashes(T0).record_start(T0 + 2000).with_hold(OperatorFlag("alice", "m", T0))
    assert decide(policy(), s, T0 + 2100, running=True, force=True) == expect(
        T0 + 2100,
        allowed=True,
        reason="already running",
        backoff_level=1,
        event="gate.already_running",
        start=False,
    )


# --- the probe ------------------------------------------------------------------------------


def test_a_probe_deferral_in_the_state_refuses_until_its_end() -> None:
    """A deferral kept in the state refuses every caller until its end, then allows."""
    flag = OperatorFlag("probe", "control plane unhealthy", T0 + 10, T0 + 1500)
    s = STABLE.with_deferral(flag)
    assert decide(policy(), s, T0 + 100) == expect(
        T0 + 100,
        allowed=False,
        reason=(
            "deferred at 2027-01-15T08:00:10.000000Z by the control-plane probe: "
            "waiting for this node's slot in 23m20s"
        ),
        next_allowed_at=T0 + 1500,
        event="gate.refused",
    )
    assert decide(policy(), s, T0 + 1500).allowed
    assert decide(policy(), STABLE.with_deferral(replace(flag, until=None)), T0 + 100).allowed


def test_an_unhealthy_probe_after_a_failed_run_defers_to_the_next_slot() -> None:
    """With the slot long past, an unhealthy control plane defers to this node's next slot."""
    p = policy(probe_configured=True)
    s = crashes(T0 - 5000)
    assert decide(p, s, T0 + 100, control_plane_healthy=False) == expect(
        T0 + 100,
        allowed=False,
        reason="control plane unhealthy after a failed run: waiting for this node's slot in 3m20s",
        backoff_level=1,
        next_allowed_at=SLOT,
        event="gate.refused",
        deferred=True,
    )


def test_an_unhealthy_probe_asked_exactly_at_the_slot_defers_a_whole_window() -> None:
    """Asked exactly at its slot, the refusal names the next slot, one window later, not now."""
    p = policy(probe_configured=True)
    d = decide(p, crashes(T0 - 5000), SLOT, control_plane_healthy=False)
    assert (d.allowed, d.deferred, d.next_allowed_at) == (False, True, SLOT + W)
    assert d.reason.endswith("waiting for this node's slot in 20m")


@pytest.mark.parametrize("code", [0, 143, 130])
def test_a_short_run_stopped_on_purpose_is_not_a_failure_for_the_probe(code: int) -> None:
    """A run that ended with exit 0 (or TERM/INT: systemctl restart, docker stop) before
    stable_after did not fail (invariant 1): an unhealthy probe does not delay the next start."""
    p = policy(probe_configured=True)
    s = AgentState(AGENT).record_start(T0 - 5000).record_exit(T0 - 4990, code)
    assert decide(p, s, T0, control_plane_healthy=False) == expect(
        T0, allowed=True, reason="no start in the last window", start=True
    )
    assert not probe_matters(p, s, T0)


def test_the_probe_is_not_asked_inside_the_window_after_a_failed_run() -> None:
    """probe_matters is False while the backoff refuses anyway, True once the slot has come,
    and False without a probe configured."""
    s = crashes(T0)
    p = policy(probe_configured=True)
    assert not probe_matters(p, s, T0 + 100)
    assert not probe_matters(p, s, T0 + 1499.999)
    assert probe_matters(p, s, T0 + 1500)
    assert not probe_matters(policy(), s, T0 + 1500)
    clean = AgentState(AGENT).record_start(T0 - 5000).record_exit(T0 - 4000, 0)
    assert not probe_matters(p, clean, T0)  # the last run was stable and clean: nothing failed


@pytest.mark.parametrize(
    ("took", "code", "failed"),
    [
        (None, None, True),  # end never reported
        (5.0, 1, True),
        (5.0, None, True),  # ended early, code unknown
        (700.0, 1, True),  # a non-zero exit is a failure for the probe, however long it ran
        (5.0, 0, False),
        (5.0, 143, False),
        (5.0, 130, False),
        (700.0, 143, False),
        (5.0, 137, True),
        (599.999, None, True),
        (600.0, None, False),  # exactly stable_after
        (700.0, None, False),
        (700.0, 0, False),
    ],
)
def test_run_failed_for_the_probe(took: float | None, code: int | None, failed: bool) -> None:
    """A run failed for the probe when its end is unknown, its exit non-zero, or it ended
    before stable_after other than on purpose."""
    s = AgentState(AGENT).record_start(T0)
    if took is not None:
        s = s.record_exit(T0 + took, code)
    run = s.runs[-1]
    assert run_failed(run, 600.0) is failed


def test_probe_applies_in_a_crash_loop_or_after_a_failed_run() -> None:
    """The probe applies at level >= 1 even after a deliberate stop, after a failed run at
    level 0, and never without runs."""
    assert not probe_applies(AgentState(AGENT), 0, 600.0)
    clean_after_crash = crashes(T0).record_start(T0 + 2000).record_exit(T0 + 2005, 0)
    assert backoff_level(clean_after_crash, 600.0) == 1
    assert probe_applies(clean_after_crash, 1, 600.0)
    clean = AgentState(AGENT).record_start(T0).record_exit(T0 + 5, 0)
    assert not probe_applies(clean, 0, 600.0)
    assert probe_applies(STABLE, 0, 600.0)  # stable but exited 1


def test_remember_keeps_only_a_probe_deferral() -> None:
    """A probe refusal leaves the deferral in the state; other answers leave the state as it is."""
    p = policy(probe_configured=True)
    s = crashes(T0 - 5000)
    deferred = decide(p, s, T0 + 100, control_plane_healthy=False)
    assert remember(s, deferred).deferral == OperatorFlag(
        "probe", "control plane unhealthy", T0 + 100, SLOT
    )
    refused = decide(p, crashes(T0), T0 + 100)
    assert refused.next_allowed_at is not None and not refused.deferred
    assert remember(s, refused) is s
    assert remember(s, decide(p, s, T0 + 100)) is s
    assert remember(s, replace(deferred, decided_at=None)) is s
    assert remember(s, replace(deferred, next_allowed_at=None)) is s


# --- the backoff level -----------------------------------------------------------------------


def test_an_open_last_run_counts_unless_docker_says_it_runs() -> None:
    """Without ``running`` an open last run is a failure; with it, it is in progress."""
    s = crashes(T0 - 30000, T0 - 20000, T0 - 10000).record_start(T0)
    assert backoff_level(s, 600.0) == 4
    assert backoff_level(s, 600.0, running=True) == 3
    ended = crashes(T0 - 30000, T0 - 20000, T0 - 10000)
    assert backoff_level(ended, 600.0, running=True) == 3


def test_a_docker_start_makes_an_unreported_run_before_it_neutral() -> None:
    """A run whose end is unknown, superseded by a start seen in Docker, is neutral; a run
    whose failure was reported still counts."""
    unreported = AgentState(AGENT).record_start(T0).record_start(T0 + 2000, via="docker")
    assert backoff_level(unreported, 600.0, running=True) == 0
    reported = crashes(T0).record_start(T0 + 2000, via="docker")
    assert backoff_level(reported, 600.0, running=True) == 1


def test_a_run_superseded_by_an_operator_is_skipped_not_the_end_of_the_count() -> None:
    """Failures before a run superseded by --force still count."""
    s = crashes(T0, T0 + 2000).record_start(T0 + 4000)
    s = s.record_start(T0 + 4100, via="force").record_exit(T0 + 4105, 1)
    assert backoff_level(s, 600.0) == 3


def test_decision_json_is_the_contract() -> None:
    """to_json gives exactly the contract's keys, times in ISO 8601 UTC."""
    d = decide(policy(), crashes(T0), T0 + 100)
    assert d.to_json() == {
        "allowed": False,
        "reason": d.reason,
        "agent": AGENT,
        "node": "node-1",
        "cluster_size": 1000,
        "window_seconds": W,
        "backoff_level": 1,
        "next_allowed_at": "2027-01-15T08:25:00.000000Z",
        "forced": False,
        "decided_at": "2027-01-15T08:01:40.000000Z",
    }
    bare = replace(decide(policy(), AgentState(AGENT), T0), decided_at=None)
    assert bare.to_json()["next_allowed_at"] is None and bare.to_json()["decided_at"] is None


# --- the state: transitions ------------------------------------------------------------------


@pytest.fixture
def new_york() -> Iterator[None]:
    """The process's local time zone is New York for the test (UTC must not depend on it)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("new_york")
def test_times_are_written_in_utc_whatever_the_local_zone() -> None:
    """iso and iso_seconds render UTC with a Z, not local time."""
    assert iso(T0 + 1.5) == "2027-01-15T08:00:01.500000Z"
    assert iso_seconds(T0 + 1.5) == "2027-01-15T08:00:01Z"
    assert iso_seconds(0.0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("end", "now", "seconds"),
    [(T0 + 30, T0 + 1000, 30.0), (None, T0 + 1000, 1000.0), (None, T0 - 5, 0.0)],
)
def test_run_duration(end: float | None, now: float, seconds: float) -> None:
    """A run lasts to its end, an open one to now, and never less than zero."""
    assert Run(T0, ended_at=end).duration(now) == seconds


def test_record_start_keeps_who_and_why_and_clears_the_deferral() -> None:
    """A start records via, user and reason, and clears the probe's deferral."""
    s = AgentState(AGENT).with_deferral(OperatorFlag("probe", "x", T0, T0 + 10))
    s = s.record_start(T0 + 20, via="force", user="alice", reason="hotfix")
    assert s == AgentState(AGENT, runs=(Run(T0 + 20, "force", user="alice", reason="hotfix"),))


def test_record_exit_records_the_source_once_and_never_before_the_start() -> None:
    """The end, code and source are kept; an end before the start is the start; a second
    report changes nothing."""
    s = AgentState(AGENT).record_start(T0).record_exit(T0 - 5, 137, source="docker")
    assert s.runs == (Run(T0, ended_at=T0, exit_code=137, end_source="docker"),)
    assert s.record_exit(T0 + 100, 0) is s
    assert AgentState(AGENT).record_exit(T0, 1) == AgentState(AGENT)


def test_without_last_run_withdraws_only_the_last() -> None:
    """Withdrawing an approval removes exactly the latest run."""
    s = crashes(T0, T0 + 2000, T0 + 4000)
    assert s.without_last_run().runs == s.runs[:2]
    assert s.without_last_run().agent == AGENT


def test_clamp_future_pins_runs_and_flags_to_now() -> None:
    """Invariant 8: runs, hold, override and deferral set after now are pinned to now, flags
    keeping their length; a run that only ended in the future is pinned too."""
    now = T0
    s = AgentState(
        AGENT,
        runs=(
            Run(now - 100, ended_at=now + 50, exit_code=1, end_source="record-exit"),
            Run(now + 500, ended_at=now + 900, exit_code=0, end_source="docker"),
            Run(now + 1000),
        ),
        hold=OperatorFlag("a", "h", now + 100, now + 160),
        override=OperatorFlag("b", "o", now + 100, None),
        deferral=OperatorFlag("probe", "d", now + 200, now + 1400),
    )
    assert s.clamp_future(now) == AgentState(
        AGENT,
        runs=(
            Run(now - 100, ended_at=now, exit_code=1, end_source="record-exit"),
            Run(now, ended_at=now, exit_code=0, end_source="docker"),
            Run(now),
        ),
        hold=OperatorFlag("a", "h", now, now + 60),
        override=OperatorFlag("b", "o", now, None),
        deferral=OperatorFlag("probe", "d", now, now + 1200),
    )
    only_end = AgentState(AGENT, runs=(Run(now - 100, ended_at=now + 50),))
    assert only_end.clamp_future(now).runs == (Run(now - 100, ended_at=now),)
    only_deferral = AgentState(AGENT, deferral=OperatorFlag("probe", "d", now + 1, now + 2))
    assert only_deferral.clamp_future(now).deferral == OperatorFlag("probe", "d", now, now + 1)


def test_clamp_future_leaves_a_state_at_now_alone() -> None:
    """Times exactly at now are not in the future: the very same state comes back."""
    s = AgentState(
        AGENT,
        runs=(Run(T0 - 10, ended_at=T0), Run(T0)),
        hold=OperatorFlag("a", "h", T0, T0 + 60),
    )
    assert s.clamp_future(T0) is s


def test_a_flag_with_no_length_set_in_the_future_is_pinned_expired() -> None:
    """A flag whose end is not after its start stays without length when pinned."""
    s = AgentState(AGENT).with_override(OperatorFlag("b", "o", T0 + 100, T0 + 50))
    assert s.clamp_future(T0).override == OperatorFlag("b", "o", T0, T0)


# --- the state: the file format --------------------------------------------------------------


def test_parse_iso_bounds_are_inclusive() -> None:
    """The first and last times a file may hold parse; a moment outside either does not."""
    assert parse_iso("1970-01-01T00:00:00Z", "t") == 0.0
    assert parse_iso("9000-01-01T00:00:00Z", "t") == MAX_TIMESTAMP
    assert parse_iso("2027-01-15T08:00:00.12345678901234+00:00", "t") == pytest.approx(
        T0 + 0.123457
    )
    for text, message in [
        ("1969-12-31T23:59:59.999999Z", "t is out of range: '1969-12-31T23:59:59.999999Z'"),
        ("9000-01-01T00:00:01Z", "t is out of range: '9000-01-01T00:00:01Z'"),
        (
            "2027-01-15T08:00:00.123456789012345+00:00",
            "t is not a timestamp: '2027-01-15T08:00:00.123456789012345+00:00'",
        ),
        (12345, "t is not a timestamp: 12345"),
        (None, "t is not a timestamp: None"),
        ("yesterday", "t is not a timestamp: 'yesterday'"),
        ("2027-01-15T08:00:00", "t has no time zone: '2027-01-15T08:00:00'"),
    ]:
        with pytest.raises(StateFormatError) as excinfo:
            parse_iso(text, "t")
        assert str(excinfo.value) == message


def run_doc(**kw: object) -> dict[str, object]:
    """A valid schema-2 run document with ``kw`` changed."""
    doc: dict[str, object] = {"started_at": "2027-01-15T08:00:00Z", "via": "gate"}
    doc.update(kw)
    return doc


def state_doc(*runs: object, schema: object = 2, **kw: object) -> dict[str, object]:
    """A valid state document of ``runs`` with ``kw`` changed."""
    doc: dict[str, object] = {"schema": schema, "agent": AGENT, "runs": list(runs)}
    doc.update(kw)
    return doc


FLAG = {"user": "alice", "reason": "m", "set_at": "2027-01-15T08:00:00Z", "until": None}


def without(key: str) -> dict[str, object]:
    """A valid flag document without ``key``."""
    return {k: v for k, v in FLAG.items() if k != key}


BAD_DOCUMENTS: list[tuple[object, str]] = [
    ([], "the state is not a JSON object"),
    ({"schema": 3, "agent": AGENT}, "schema version is 3, this version reads 1, 2"),
    ({"schema": True, "agent": AGENT}, "schema version is True, this version reads 1, 2"),
    ({"schema": "2", "agent": AGENT}, "schema version is '2', this version reads 1, 2"),
    ({"schema": 2, "agent": "x" * 5}, f"the state is for agent 'xxxxx', not {AGENT!r}"),
    ({"schema": 2, "agent": AGENT, "runs": {}}, "runs is not a list"),
    (state_doc(run_doc(), "x"), "runs[1] is not an object"),
    (state_doc(run_doc(), run_doc(via="bogus")), "runs[1].via is 'bogus'"),
    (state_doc(run_doc(via="docker"), schema=1), "runs[0].via is 'docker'"),
    (state_doc(run_doc(via="unknown"), schema=1), "runs[0].via is 'unknown'"),
    (state_doc(run_doc(end_source="inferred")), "runs[0].end_source is 'inferred'"),
    (state_doc(run_doc(exit_code=True)), "runs[0].exit_code is True"),
    (state_doc(run_doc(exit_code=1.0)), "runs[0].exit_code is 1.0"),
    (state_doc(run_doc(exit_code="1")), "runs[0].exit_code is '1'"),
    (state_doc(run_doc(exit_code=2**31)), "runs[0].exit_code is 2147483648"),
    (state_doc(run_doc(exit_code=-(2**31) - 1)), "runs[0].exit_code is -2147483649"),
    (state_doc({"via": "gate"}), "runs[0] has no 'started_at'"),
    (state_doc(run_doc(started_at="x")), "runs[0].started_at is not a timestamp: 'x'"),
    (state_doc(run_doc(ended_at="x")), "runs[0].ended_at is not a timestamp: 'x'"),
    (state_doc(run_doc(user=5)), "runs[0].user is not text"),
    (state_doc(run_doc(reason="r" * 4097)), "runs[0].reason is not text"),
    (state_doc(hold="x"), "hold is not an object"),
    (state_doc(hold={**FLAG, "user": 7}), "hold.user is not text"),
    (state_doc(hold=without("user")), "hold has no 'user'"),
    (state_doc(override=without("reason")), "override has no 'reason'"),
    (state_doc(override={**FLAG, "reason": 1}), "override.reason is not text"),
    (state_doc(deferral=without("set_at")), "deferral has no 'set_at'"),
    (state_doc(deferral={**FLAG, "set_at": "x"}), "deferral.set_at is not a timestamp: 'x'"),
    (state_doc(hold={**FLAG, "until": "x"}), "hold.until is not a timestamp: 'x'"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_DOCUMENTS)
def test_bad_state_documents_are_refused_with_the_reason(doc: object, message: str) -> None:
    """Each invalid document raises StateFormatError whose text names the field and the value
    (the text becomes the quarantine reason an operator reads)."""
    with pytest.raises(StateFormatError) as excinfo:
        from_document(doc, AGENT)
    assert str(excinfo.value) == message


def test_edge_values_of_a_state_document_are_accepted() -> None:
    """Exit codes at both ends of int32, 4096-character texts, a missing runs list, and null
    user and reason of a flag are valid."""
    s = from_document(
        state_doc(
            run_doc(exit_code=-(2**31), user="u" * 4096),
            run_doc(exit_code=2**31 - 1, reason="r" * 4096, via="override"),
            hold={**FLAG, "user": None, "reason": None},
        ),
        AGENT,
    )
    assert [r.exit_code for r in s.runs] == [-(2**31), 2**31 - 1]
    assert s.hold == OperatorFlag("unknown", "", T0)
    assert from_document({"schema": 2, "agent": AGENT}, AGENT) == AgentState(AGENT)


def test_a_schema_1_run_keeps_a_reported_end() -> None:
    """Only an inferred end of a version-1 file is dropped; a reported one is a fact."""
    doc = state_doc(
        run_doc(ended_at="2027-01-15T08:00:05Z", exit_code=1, end_source="record-exit"),
        run_doc(via="override"),
        schema=1,
    )
    assert from_document(doc, AGENT).runs == (
        Run(T0, ended_at=T0 + 5, exit_code=1, end_source="record-exit"),
        Run(T0, via="override"),
    )


def test_to_document_is_the_file_format() -> None:
    """The document written to disk has exactly these keys and values."""
    s = AgentState(
        AGENT,
        runs=(Run(T0, "force", T0 + 5, 1, "record-exit", "alice", "hotfix"),),
        hold=OperatorFlag("bob", "incident", T0, T0 + 60),
    )
    assert to_document(s, T0 + 10) == {
        "schema": 2,
        "agent": AGENT,
        "updated_at": "2027-01-15T08:00:10.000000Z",
        "hold": {
            "user": "bob",
            "reason": "incident",
            "set_at": "2027-01-15T08:00:00.000000Z",
            "until": "2027-01-15T08:01:00.000000Z",
        },
        "deferral": None,
        "override": None,
        "runs": [
            {
                "started_at": "2027-01-15T08:00:00.000000Z",
                "via": "force",
                "ended_at": "2027-01-15T08:00:05.000000Z",
                "exit_code": 1,
                "end_source": "record-exit",
                "user": "alice",
                "reason": "hotfix",
            }
        ],
    }
