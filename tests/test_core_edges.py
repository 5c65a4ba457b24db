"""The pure core at its edges: whole decisions asserted field by field at exact boundaries, every
event's transition, the clocks, and the state's file format, message by message.

Times are on a round grid: T0 is a multiple of the 20-minute window, and the node's slot offset
is a quarter, so its window (and, without a probe, admission) slots are T0 + 300 + k * 1200,
its admission slots with a probe (J = 100 s) T0 + 25 + k * 100, and every expected number is
written out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest
from histories import OUTSIDE_CONTAINER, clamp_future, deferred, ended, held, overridden, started

from supervisor.base.clock import Now
from supervisor.core.events import (
    Approved,
    Asked,
    Bound,
    Ended,
    Event,
    FlagSet,
    Lost,
    Outside,
    Released,
    Reset,
    Withdrawn,
    apply,
)
from supervisor.core.policy import (
    DOCKER_RETRY,
    Decision,
    Inputs,
    Policy,
    Request,
    backoff_level,
    decide,
    next_grid_slot,
    slot_after,
)
from supervisor.core.state import (
    MAX_TIMESTAMP,
    AgentState,
    Anchor,
    Ask,
    DebugSession,
    OperatorFlag,
    Run,
    StateFormatError,
    from_document,
    iso,
    iso_seconds,
    micro_ceil,
    parse_iso,
    rebase,
    to_document,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a multiple of W
W = 1200.0
SLOT = T0 + 300.0  # this node's slot in the window that starts at T0
AGENT = "cilium-agent"
RID = "r1"


def policy(**kw: Any) -> Policy:
    """A 1000-node policy, W = J = 20 min, slot offset 1/4 (slots at T0 + 300 + k * W)."""
    base = Policy(
        agent=AGENT,
        node="node-1",
        cluster_size=1000,
        window=W,
        offset=0.25,
        slot_mode="index",
        admission=W,
    )
    return replace(base, **kw)


def probe_policy() -> Policy:
    """The same node with a probe (J = 100 s: admission slots at T0 + 25 + k * 100)."""
    return policy(probe_configured=True, admission=100.0)


def ask(
    s: AgentState,
    now: float,
    p: Policy | None = None,
    *,
    force: bool = False,
    user: str | None = None,
    reason: str | None = None,
    **inputs: Any,
) -> Decision:
    """The decision at ``now`` (run id ``r1`` for a start)."""
    return decide(
        p or policy(), s, now, Request(RID, force=force, user=user, reason=reason), Inputs(**inputs)
    )


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
        "admission_seconds": W,
    }
    fields.update(kw)
    return Decision(**fields)


def refused(now: float, until: float, why: str, asked: float, slot: float, **kw: Any) -> Decision:
    """A refusal until ``until`` that leaves its ask behind."""
    left = kw.pop("left")
    return expect(
        now,
        allowed=False,
        reason=f"{why} in {left}",
        next_allowed_at=until,
        event=kw.pop("event", "gate.refused"),
        slot_at=slot,
        asked_at=asked,
        events=(Asked(Ask(asked, until, kw.pop("told", why))),),
        **kw,
    )


def allowed(now: float, why: str, **kw: Any) -> Decision:
    """An allowed start named ``r1``, recorded by its Approved event."""
    via = kw.pop("via", "gate")
    approved = kw.pop("approved", Approved(now, RID, via=via))
    return expect(
        now,
        allowed=True,
        reason=why,
        start=True,
        run_id=RID,
        via=via,
        events=(approved,),
        **kw,
    )


def crashes(*starts: float) -> AgentState:
    """Runs started at ``starts``, each failed 5 s later (exit 1)."""
    s = AgentState(AGENT)
    for t in starts:
        s = ended(started(s, t), t + 5, 1)
    return s


STABLE = ended(started(AgentState(AGENT), T0 - 50000), T0 - 4000, 1)  # level 0, long ago
FIRST = "first start: waiting for this node's admission slot"
QUIET = "start after a quiet period: waiting for this node's admission slot"


# --- whole decisions, branch by branch -----------------------------------------------------------


def test_a_first_start_waits_for_the_nodes_admission_slot() -> None:
    """Invariant 2: no history: refused until the admission slot at or after the first ask,
    which the refusal leaves in the state; there it is allowed."""
    assert ask(AgentState(AGENT), T0) == refused(
        T0, SLOT, FIRST, T0, SLOT, grid="admission", left="5m"
    )
    s = apply(AgentState(AGENT), Asked(Ask(T0, SLOT, FIRST)))
    assert ask(s, SLOT) == allowed(
        SLOT,
        "first start: at this node's admission slot",
        grid="admission",
        slot_at=SLOT,
        asked_at=T0,
    )
    assert ask(s, SLOT - 0.000001).next_allowed_at == SLOT


def test_a_restart_within_the_window_waits_for_s_on_the_window_grid() -> None:
    """Level 0, started 710 s ago and asked now: S (first slot at or after last + W) is ahead."""
    s = ended(started(AgentState(AGENT), T0), T0 + 700, 0)
    why = "started within the window: backoff level 0 (x1): waiting for this node's window slot"
    assert ask(s, T0 + 710) == refused(
        T0 + 710, T0 + 1500, why, T0 + 710, T0 + 1500, grid="window", left="13m10s"
    )


def test_level_zero_asked_exactly_at_s_starts_there() -> None:
    """Invariant 2: asked exactly at S, S has not passed: the start is S's, allowed at once."""
    s = ended(started(AgentState(AGENT), T0), T0 + 700, 0)
    d = ask(s, T0 + 1500)
    assert d.allowed and d.grid == "window" and d.slot_at == T0 + 1500
    assert d.reason == (
        "started within the window: backoff level 0 (x1): at this node's window slot"
    )


def test_a_run_lasting_exactly_stable_after_is_stable() -> None:
    """Invariant 1: a run that lasted exactly stable_after ends the count; a hair less fails."""
    s = ended(started(crashes(T0 - 9000, T0 - 6000), T0), T0 + 600, 1)
    assert backoff_level(s, 600.0) == 0
    assert ask(s, T0 + 700).backoff_level == 0
    short = ended(started(crashes(T0 - 9000, T0 - 6000), T0), T0 + 599.999, 1)
    assert backoff_level(short, 600.0) == 3


def test_backoff_refusal_at_level_one_says_one_failed_run() -> None:
    """Level 1: refused until the slot at or after last + W, and the reason is singular."""
    why = "1 failed run in a row: backoff level 1 (x1): waiting for this node's window slot"
    assert ask(crashes(T0), T0 + 100) == refused(
        T0 + 100, T0 + 1500, why, T0 + 100, T0 + 1500, grid="window", left="23m20s", backoff_level=1
    )


def test_backoff_refusal_at_level_two_waits_two_windows() -> None:
    """Level 2: m = 2, refused until the slot at or after last + 2W, reason in the plural."""
    why = "2 failed runs in a row: backoff level 2 (x2): waiting for this node's window slot"
    assert ask(crashes(T0 - 5000, T0), T0 + 100) == refused(
        T0 + 100, T0 + 2700, why, T0 + 100, T0 + 2700, grid="window", left="43m20s", backoff_level=2
    )


def test_backoff_allows_at_exactly_the_slot() -> None:
    """Invariant 3: allowed at S exactly (not a window later), refused a microsecond before."""
    s = apply(crashes(T0 - 5000, T0), Asked(Ask(T0 + 100, T0 + 2700, "x")))
    assert ask(s, T0 + 2700) == allowed(
        T0 + 2700,
        "2 failed runs in a row: backoff level 2 (x2): at this node's window slot",
        backoff_level=2,
        grid="window",
        slot_at=T0 + 2700,
        asked_at=T0 + 100,
    )
    assert ask(s, T0 + 2699.999999).next_allowed_at == T0 + 2700


@pytest.mark.parametrize(
    ("why", "head"),
    [
        ("moved aside to /x: bad", "history unknown (moved aside to /x: bad)"),
        (None, "history unknown (the state file was unreadable)"),
    ],
)
def test_lost_history_refusal_says_so(why: str | None, head: str) -> None:
    """Invariant 9: after a lost history the refusal says the history is unknown, and why."""
    s = AgentState(AGENT, runs=(Run("lost", T0, "unknown", reason=why),))
    told = f"{head}: backoff level 1 (x1): waiting for this node's window slot"
    assert ask(s, T0 + 100) == refused(
        T0 + 100,
        T0 + 1500,
        told,
        T0 + 100,
        T0 + 1500,
        grid="window",
        left="23m20s",
        backoff_level=1,
    )


def test_an_indefinite_hold_refuses_with_no_next_time_and_leaves_no_ask() -> None:
    """A hold without an end refuses even a first start and names no time."""
    s = held(AgentState(AGENT), OperatorFlag("alice", "maintenance", T0))
    assert ask(s, T0 + 5) == expect(
        T0 + 5,
        allowed=False,
        reason="held by alice until released: maintenance",
        event="gate.held",
    )


@pytest.mark.parametrize(
    ("state", "until", "reported"),
    [
        (AgentState(AGENT), T0 + 160, SLOT),  # first start: the admission slot after the hold
        (crashes(T0), T0 + 600, T0 + 1500),  # S is after the hold's end: S
        (crashes(T0), T0 + 2000, T0 + 2700),  # S passed during the hold: the admission slot
    ],
)
def test_a_timed_hold_reports_the_start_after_its_end(
    state: AgentState, until: float, reported: float
) -> None:
    """Invariant 2: the end of a hold is a new first ask: the refusal names the slot that
    start will wait for (S if it has not passed by then, else the admission slot)."""
    s = held(state, OperatorFlag("alice", "m", T0, until=until))
    d = ask(s, T0 + 100)
    assert (d.allowed, d.event, d.next_allowed_at, d.events) == (False, "gate.held", reported, ())
    assert d.reason == f"held by alice until {iso(until)}: m"


def test_a_flag_at_exactly_until_has_expired() -> None:
    """A hold or override is in force strictly before ``until``: at ``until`` it is over."""
    flag = OperatorFlag("alice", "m", T0, until=T0 + 60)
    assert flag.active(T0 + 59.999) and not flag.active(T0 + 60)
    assert OperatorFlag("alice", "m", T0).active(T0 + 10**9)
    on_hold = held(AgentState(AGENT), flag)
    assert ask(on_hold, T0 + 60).event == "gate.refused"
    with_override = overridden(crashes(T0), flag)
    assert ask(with_override, T0 + 59.999).allowed
    assert not ask(with_override, T0 + 60).allowed


@pytest.mark.parametrize(
    ("until", "reason"),
    [
        (T0 + 300, "override by bob until 2027-01-15T08:05:00.000000Z: fix rollout"),
        (None, "override by bob: fix rollout"),
    ],
)
def test_an_override_lets_a_backed_off_start_through(until: float | None, reason: str) -> None:
    """An active override allows through the backoff, as an override start."""
    s = overridden(crashes(T0), OperatorFlag("bob", "fix rollout", T0, until=until))
    assert ask(s, T0 + 10) == allowed(
        T0 + 10, reason, backoff_level=1, via="override", event="gate.override"
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
    s = held(crashes(T0), OperatorFlag("alice", "maintenance", T0))
    d = ask(s, T0 + 10, force=True, user=user, reason=why, docker="unknown", identity=("bad",))
    assert d == allowed(
        T0 + 10,
        reason,
        backoff_level=1,
        forced=True,
        via="force",
        event="gate.forced",
        approved=Approved(T0 + 10, RID, via="force", user=user, reason=why),
    )


def test_already_running_allows_and_starts_nothing() -> None:
    """Invariant 7: a running container is allowed with nothing to start or record."""
    s = held(started(crashes(T0), T0 + 2000), OperatorFlag("alice", "m", T0))
    assert ask(s, T0 + 2100, docker="running", force=True) == expect(
        T0 + 2100,
        allowed=True,
        reason="already running",
        backoff_level=1,
        event="gate.already_running",
    )


def test_docker_not_answering_is_no_start_and_no_record() -> None:
    """Invariant 7: Docker did not answer: refused (nothing is known), asked again soon."""
    assert ask(STABLE, T0, docker="unknown", docker_why="timed out") == expect(
        T0,
        allowed=False,
        reason="Docker did not answer (timed out): cannot tell whether the agent runs, so no "
        "start; asking again in 5s",
        next_allowed_at=T0 + DOCKER_RETRY,
        event="gate.docker_unknown",
    )


def test_a_bad_identity_refuses_with_its_problems() -> None:
    """A bad certificate refuses the start (78 in the CLI) and names each problem."""
    d = ask(STABLE, T0, identity=("expired", "key mismatch"))
    assert d == expect(
        T0,
        allowed=False,
        reason="the agent's identity is not usable: expired; key mismatch",
        event="gate.identity_refused",
    )


def test_an_approved_start_on_its_way_needs_no_second_one() -> None:
    """Invariant 7: an approval within docker.grace that Docker has not followed yet: allowed,
    nothing more to start (a re-run `compose up` or the daemon start the same container)."""
    s = started(STABLE, T0, run_id="a1")
    assert ask(s, T0 + 10, docker="pending") == expect(
        T0 + 10,
        allowed=True,
        reason="a start approved within docker.grace is on its way (run a1, approved at "
        "2027-01-15T08:00:00.000000Z): nothing more to start",
        event="gate.pending",
    )


def test_a_replacement_of_the_running_container_is_a_start_that_names_what_it_replaces() -> None:
    """Invariant 7: `compose up -d` with a new image replaces the running agent only through
    the gate: the start waits for its slot and names the run it replaces."""
    s = started(STABLE, T0 - 3000, run_id="old")
    s = apply(s, Asked(Ask(T0 - 10, SLOT, QUIET)))
    d = ask(s, SLOT, docker="replacing")
    assert d.allowed and d.events == (Approved(SLOT, RID, replaces="old"),)
    assert ask(s, SLOT - 1, docker="replacing").next_allowed_at == SLOT
    assert ask(s, SLOT, docker="running").event == "gate.already_running"


# --- the probe (invariant 11) --------------------------------------------------------------------


def test_the_probe_is_asked_only_when_the_slot_has_come() -> None:
    """A decision that would allow at a slot needs the probe's answer; one before it does not."""
    p = probe_policy()
    s = apply(STABLE, Asked(Ask(T0, T0 + 25, QUIET)))
    assert not ask(s, T0 + 10, p).needs_probe
    d = ask(s, T0 + 25, p)
    assert (d.needs_probe, d.allowed, d.next_allowed_at, d.events) == (True, False, T0 + 25, ())
    assert not ask(s, T0 + 25).needs_probe  # no probe configured


@pytest.mark.parametrize("answer", ["loaded", "down"])
def test_loaded_or_down_at_the_slot_defers_to_the_next_admission_slot(answer: str) -> None:
    """Invariant 11: "loaded" or "down" at the admission slot: the node's next one, J later."""
    p = probe_policy()
    s = apply(STABLE, Asked(Ask(T0, T0 + 25, QUIET)))
    d = ask(s, T0 + 25, p, probe=answer)
    why = f"the control plane is {answer}: waiting for this node's next admission slot"
    assert d == refused(
        T0 + 25,
        T0 + 125,
        why,
        T0,
        T0 + 25,
        grid="admission",
        left="1m40s",
        event="gate.deferred",
        admission_seconds=100.0,
        probe=answer,
    )


def test_ready_at_the_slot_admits() -> None:
    """Invariant 11: "ready" at the admission slot admits."""
    p = probe_policy()
    s = apply(STABLE, Asked(Ask(T0, T0 + 25, QUIET)))
    assert ask(s, T0 + 25, p, probe="ready") == allowed(
        T0 + 25,
        "start after a quiet period: at this node's admission slot",
        grid="admission",
        slot_at=T0 + 25,
        asked_at=T0,
        admission_seconds=100.0,
        probe="ready",
    )


def test_a_broken_probe_waits_for_the_window_grid_then_starts() -> None:
    """Invariant 11: "broken" is decided as if no probe were configured: J is W."""
    p = probe_policy()
    s = apply(STABLE, Asked(Ask(T0, T0 + 25, QUIET)))
    d = ask(s, T0 + 25, p, probe="broken")
    assert (d.allowed, d.next_allowed_at, d.admission_seconds) == (False, SLOT, W)
    s = apply(s, d.events[0])
    d = ask(s, SLOT, p, probe="broken")
    assert d.allowed and d.reason.endswith(
        "; the probe is broken (see status): decided as if none were configured"
    )


def test_an_explicit_admission_period_is_kept_when_the_probe_is_broken() -> None:
    """window.admission set by the operator: a broken probe does not change J."""
    p = replace(probe_policy(), admission_explicit=True)
    s = apply(STABLE, Asked(Ask(T0, T0 + 25, QUIET)))
    assert ask(s, T0 + 25, p, probe="broken").allowed


def test_no_probe_answer_holds_a_start_past_the_cap() -> None:
    """Invariant 11: at slot + W * max_multiplier the start comes whatever the probe says;
    the last deferral before the cap names the cap itself."""
    p = probe_policy()
    cap = T0 + 25 + W * 4
    # Told at each deferral to come back one slot later; the last time before the cap:
    s = apply(STABLE, Asked(Ask(T0, cap - 100, QUIET)))
    last = ask(s, cap - 100, p, probe="down")
    assert last.next_allowed_at == cap
    d = ask(apply(s, last.events[0]), cap, p, probe="down")
    assert d.allowed and "the probe has held this start 1h20m past its slot" in d.reason


def test_a_probe_down_at_a_window_slot_moves_to_the_next_window_slot() -> None:
    """Invariant 3: in a crash loop the probe's deferral stays on the window grid."""
    p = probe_policy()
    s = apply(crashes(T0), Asked(Ask(T0 + 10, T0 + 1500, "x")))
    d = ask(s, T0 + 1500, p, probe="down")
    assert (d.grid, d.next_allowed_at) == ("window", T0 + 2700)


def test_slot_after_is_strictly_later() -> None:
    """A deferral asked exactly at a slot names the next one, never the same instant."""
    assert slot_after(SLOT, W, 0.25) == SLOT + W
    assert slot_after(SLOT - 1, W, 0.25) == SLOT
    assert next_grid_slot(SLOT, W, 0.25) == SLOT


# --- the backoff level ---------------------------------------------------------------------------


def test_an_open_last_run_counts_unless_docker_says_it_runs() -> None:
    """Without ``running`` an open last run is a failure; with it, it is in progress."""
    s = started(crashes(T0 - 30000, T0 - 20000, T0 - 10000), T0)
    assert backoff_level(s, 600.0) == 4
    assert backoff_level(s, 600.0, running=True) == 3
    done = crashes(T0 - 30000, T0 - 20000, T0 - 10000)
    assert backoff_level(done, 600.0, running=True) == 3


def test_a_docker_start_makes_an_unreported_run_before_it_neutral() -> None:
    """A run whose end is unknown, superseded by a start seen in Docker, is neutral; a run
    whose failure was reported, or whose end Docker dated, still counts."""
    unreported = started(started(AgentState(AGENT), T0), T0 + 2000, via="docker")
    assert backoff_level(unreported, 600.0, running=True) == 0
    reported = started(crashes(T0), T0 + 2000, via="docker")
    assert backoff_level(reported, 600.0, running=True) == 1
    dated = started(ended(started(AgentState(AGENT), T0), T0 + 2, None), T0 + 7, via="docker")
    assert backoff_level(dated, 600.0, running=True) == 1


def test_a_run_superseded_by_an_operator_is_skipped_not_the_end_of_the_count() -> None:
    """Failures before a run superseded by --force still count."""
    s = started(crashes(T0, T0 + 2000), T0 + 4000)
    s = ended(started(s, T0 + 4100, via="force"), T0 + 4105, 1)
    assert backoff_level(s, 600.0) == 3


def test_decision_json_is_the_contract() -> None:
    """to_json gives the contract's keys and what explains the decision, times in ISO UTC."""
    d = ask(crashes(T0), T0 + 100)
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
        "run_id": None,
        "grid": "window",
        "slot_at": "2027-01-15T08:25:00.000000Z",
        "asked_at": "2027-01-15T08:01:40.000000Z",
        "admission_seconds": W,
        "probe": None,
    }
    ok = ask(apply(AgentState(AGENT), Asked(Ask(T0, SLOT, FIRST))), SLOT).to_json()
    assert (ok["run_id"], ok["next_allowed_at"], ok["allowed"]) == (RID, None, True)
    bare = replace(ask(AgentState(AGENT), T0), decided_at=None).to_json()
    assert bare["decided_at"] is None


# --- transitions: every event --------------------------------------------------------------------


EMPTY = AgentState(AGENT)
SESSION = DebugSession("cilium-agent-debug", "cilium:v1", "sleep 10d", "alice", "delve", T0)
ONE = AgentState(AGENT, runs=(Run("a", T0),), ask=Ask(T0 - 5, T0, "x"))


@pytest.mark.parametrize(
    ("before", "event", "after"),
    [
        (
            ONE,
            Approved(T0 + 20, "b", via="force", user="alice", reason="hotfix", replaces="a"),
            AgentState(
                AGENT,
                runs=(
                    Run("a", T0),
                    Run("b", T0 + 20, "force", user="alice", reason="hotfix", replaces="a"),
                ),
            ),
        ),
        (
            ONE,
            Outside(T0 + 30, "d", "c1"),
            AgentState(
                AGENT,
                runs=(
                    Run("a", T0),
                    Run("d", T0 + 30, "docker", container="c1", reason="started outside the gate"),
                ),
            ),
        ),
        (ONE, Bound("a", "c1"), replace(ONE, runs=(Run("a", T0, container="c1"),))),
        (ONE, Bound("zz", "c1"), ONE),
        (
            ONE,
            Ended(T0 - 5, 137, "docker", stop="docker stop"),
            replace(
                ONE,
                runs=(
                    Run(
                        "a", T0, ended_at=T0, exit_code=137, end_source="docker", stop="docker stop"
                    ),
                ),
            ),
        ),
        (ONE, Ended(T0 + 5, 1, run_id="other"), ONE),
        (EMPTY, Ended(T0, 1), EMPTY),
        (ONE, Withdrawn("a"), replace(ONE, runs=())),
        (ONE, Withdrawn("b"), ONE),
        (ONE, Asked(Ask(T0 - 5, T0, "x")), ONE),
        (ONE, Asked(Ask(T0, T0 + 9, "y")), replace(ONE, ask=Ask(T0, T0 + 9, "y"))),
        (
            EMPTY,
            FlagSet("hold", OperatorFlag("a", "h", T0)),
            AgentState(AGENT, hold=OperatorFlag("a", "h", T0)),
        ),
        (
            EMPTY,
            FlagSet("override", OperatorFlag("a", "o", T0, T0 + 1)),
            AgentState(AGENT, override=OperatorFlag("a", "o", T0, T0 + 1)),
        ),
        (
            replace(ONE, hold=OperatorFlag("a", "h", T0)),
            Released(),
            AgentState(AGENT, runs=ONE.runs),
        ),
        (EMPTY, Released(), EMPTY),
        (
            replace(ONE, anchor=Anchor("b", T0, 5.0)),
            Reset(),
            AgentState(AGENT, anchor=Anchor("b", T0, 5.0)),
        ),
        (
            ONE,
            Lost(T0 + 1, "l", "why"),
            AgentState(AGENT, runs=(Run("l", T0 + 1, "unknown", reason="why"),)),
        ),
    ],
)
def test_apply_each_event(before: AgentState, event: Event, after: AgentState) -> None:
    """Each event's transition, whole; an event that changes nothing returns the same object."""
    got = apply(before, event)
    assert got == after
    if after == before:
        assert got is before


def test_a_second_end_changes_nothing_and_no_end_comes_before_its_start() -> None:
    """An end before the start is the start; a second report for an ended run changes nothing."""
    s = ended(started(AgentState(AGENT), T0, run_id="a"), T0 - 5, 137, source="docker")
    assert s.runs == (Run("a", T0, ended_at=T0, exit_code=137, end_source="docker"),)
    assert ended(s, T0 + 100, 0) is s


def test_the_history_keeps_its_newest_runs() -> None:
    """A start beyond MAX_RUNS drops the oldest run."""
    from supervisor.core.state import MAX_RUNS

    s = AgentState(AGENT)
    for i in range(MAX_RUNS + 3):
        s = started(s, T0 + i, run_id=f"r{i}")
    assert len(s.runs) == MAX_RUNS and s.runs[0].id == "r3" and s.runs[-1].id == f"r{MAX_RUNS + 2}"


# --- the clocks (invariant 8) --------------------------------------------------------------------


BOOT = "9b1c"


def at_boot(state: AgentState, wall: float, boot: float) -> AgentState:
    """``state`` as written in this boot when the clocks read (wall, boot)."""
    return replace(state, anchor=Anchor(BOOT, wall, boot))


def test_a_forward_jump_of_the_wall_clock_moves_this_boots_facts_with_it() -> None:
    """A day's jump of the wall clock moves facts written in this boot by a day: a crash loop
    waits as long as before, a two-hour hold still has its hours left."""
    s = held(crashes(T0), OperatorFlag("op", "m", T0 + 10, T0 + 10 + 7200))
    s = at_boot(s, T0 + 20, 1000.0)
    day = 86400.0
    moved = rebase(s, Now(T0 + 320 + day, 1300.0, BOOT))
    assert [r.started_at for r in moved.runs] == [T0 + day]
    assert moved.hold == OperatorFlag("op", "m", T0 + 10 + day, T0 + 10 + 7200 + day)
    assert moved.anchor == Anchor(BOOT, T0 + 320 + day, 1300.0)
    d = ask(moved, T0 + 320 + day)
    assert d.event == "gate.held" and d.next_allowed_at is not None
    assert d.next_allowed_at >= T0 + 10 + 7200 + day


def test_a_backward_step_moves_this_boots_facts_back() -> None:
    """A step back of an hour moves facts of this boot back by the hour (nothing in the future)."""
    s = at_boot(crashes(T0), T0 + 20, 1000.0)
    moved = rebase(s, Now(T0 + 30 - 3600, 1010.0, BOOT))
    assert [(r.started_at, r.ended_at) for r in moved.runs] == [(T0 - 3600, T0 + 5 - 3600)]


def test_facts_of_an_earlier_boot_keep_their_wall_times_and_the_future_is_pinned() -> None:
    """Another boot: no boot clock to place the facts; those ahead of now are pinned."""
    s = replace(crashes(T0), anchor=Anchor("old", T0 + 20, 99999.0))
    again = rebase(s, Now(T0 + 100, 50.0, BOOT))
    assert again.runs == s.runs and again.anchor == Anchor(BOOT, T0 + 100, 50.0)
    back = rebase(s, Now(T0 - 100, 50.0, BOOT))
    assert [(r.started_at, r.ended_at) for r in back.runs] == [(T0 - 100, T0 - 100)]


def test_facts_from_before_this_boot_do_not_move_with_a_step() -> None:
    """Only facts at or after the boot's own start move; a run from before the boot stays."""
    old = started(AgentState(AGENT), T0 - 5000, run_id="before-boot")
    s = at_boot(started(old, T0 + 10, run_id="this-boot"), T0 + 20, 100.0)  # booted at T0 - 80
    moved = rebase(s, Now(T0 + 30 + 3600, 110.0, BOOT))
    assert [r.started_at for r in moved.runs] == [T0 - 5000, T0 + 10 + 3600]


def test_no_step_no_change() -> None:
    """Clocks that moved together (within a second): the same state, not rewritten."""
    s = at_boot(crashes(T0), T0 + 20, 1000.0)
    assert rebase(s, Now(T0 + 520.4, 1500.0, BOOT)) is s
    plain = crashes(T0)
    assert rebase(plain, Now(T0 + 10)) is plain


def test_clamp_future_pins_runs_flags_and_ask_to_now() -> None:
    """Invariant 8: runs, hold, override and ask set after now are pinned to now, flags keeping
    their length; a run that only ended in the future is pinned too."""
    now = T0
    s = AgentState(
        AGENT,
        runs=(
            Run("a", now - 100, ended_at=now + 50, exit_code=1, end_source="record-exit"),
            Run("b", now + 500, ended_at=now + 900, exit_code=0, end_source="docker"),
            Run("c", now + 1000),
        ),
        hold=OperatorFlag("a", "h", now + 100, now + 160),
        override=OperatorFlag("b", "o", now + 100, None),
        ask=Ask(now + 200, now + 1400, "x"),
    )
    assert clamp_future(s, now) == AgentState(
        AGENT,
        runs=(
            Run("a", now - 100, ended_at=now, exit_code=1, end_source="record-exit"),
            Run("b", now, ended_at=now, exit_code=0, end_source="docker"),
            Run("c", now),
        ),
        hold=OperatorFlag("a", "h", now, now + 60),
        override=OperatorFlag("b", "o", now, None),
        ask=Ask(now, None, "x"),
    )


def test_clamp_future_leaves_a_state_at_now_alone() -> None:
    """Times exactly at now are not in the future: the very same state comes back."""
    s = AgentState(
        AGENT,
        runs=(Run("a", T0 - 10, ended_at=T0), Run("b", T0)),
        hold=OperatorFlag("a", "h", T0, T0 + 60),
        ask=Ask(T0, T0 + 5),
    )
    assert clamp_future(s, T0) is s


def test_a_flag_with_no_length_set_in_the_future_is_pinned_expired() -> None:
    """A flag whose end is not after its start stays without length when pinned."""
    s = overridden(AgentState(AGENT), OperatorFlag("b", "o", T0 + 100, T0 + 50))
    assert clamp_future(s, T0).override == OperatorFlag("b", "o", T0, T0)


def test_a_deferral_of_schema_2_reads_as_an_ask() -> None:
    """A version-2 probe deferral is an ask: asked at set_at, told to come at until."""
    s = deferred(AgentState(AGENT), OperatorFlag("probe", "d", T0, T0 + 300))
    assert s.ask == Ask(T0, T0 + 300, "probe")


# --- the state: the file format ------------------------------------------------------------------


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
    assert Run("a", T0, ended_at=end).duration(now) == seconds


def test_a_slot_survives_the_file_exactly() -> None:
    """Every slot the grid gives is a whole microsecond: written and read back, the same float
    (so a gate waking at the time a refusal named, read from the file, is allowed)."""
    for i in range(2000):
        t = T0 + i * 7.123457
        slot = next_grid_slot(t, 1200.6 + i, (i * 0.6180339887) % 1)
        assert parse_iso(iso(slot), "t") == slot == micro_ceil(slot)
        assert next_grid_slot(slot, 1200.6 + i, (i * 0.6180339887) % 1) == slot


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
    """A valid schema-3 run document with ``kw`` changed."""
    doc: dict[str, object] = {"id": "a", "started_at": "2027-01-15T08:00:00Z", "via": "gate"}
    doc.update(kw)
    return doc


def state_doc(*runs: object, schema: object = 3, **kw: object) -> dict[str, object]:
    """A valid state document of ``runs`` with ``kw`` changed."""
    doc: dict[str, object] = {"schema": schema, "agent": AGENT, "runs": list(runs)}
    doc.update(kw)
    return doc


FLAG = {"user": "alice", "reason": "m", "set_at": "2027-01-15T08:00:00Z", "until": None}
CLOCK = {"boot_id": "b", "wall": "2027-01-15T08:00:00Z", "boot": 5.0}


def without(doc: Mapping[str, object], key: str) -> dict[str, object]:
    """``doc`` without ``key``."""
    return {k: v for k, v in doc.items() if k != key}


BAD_DOCUMENTS: list[tuple[object, str]] = [
    ([], "the state is not a JSON object"),
    ({"schema": 4, "agent": AGENT}, "schema version is 4, this version reads 1, 2, 3"),
    ({"schema": True, "agent": AGENT}, "schema version is True, this version reads 1, 2, 3"),
    ({"schema": "2", "agent": AGENT}, "schema version is '2', this version reads 1, 2, 3"),
    ({"schema": 3, "agent": "x" * 5}, f"the state is for agent 'xxxxx', not {AGENT!r}"),
    ({"schema": 3, "agent": AGENT, "runs": {}}, "runs is not a list"),
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
    (state_doc({"id": "a", "via": "gate"}), "runs[0] has no 'started_at'"),
    (state_doc(without(run_doc(), "id")), "runs[0] has no 'id'"),
    (state_doc(run_doc(id="")), "runs[0].id is empty"),
    (state_doc(run_doc(id="x" * 101)), "runs[0].id is not text"),
    (state_doc(run_doc(started_at="x")), "runs[0].started_at is not a timestamp: 'x'"),
    (state_doc(run_doc(ended_at="x")), "runs[0].ended_at is not a timestamp: 'x'"),
    (state_doc(run_doc(user=5)), "runs[0].user is not text"),
    (state_doc(run_doc(stop=5)), "runs[0].stop is not text"),
    (state_doc(run_doc(reason="r" * 4097)), "runs[0].reason is not text"),
    (state_doc(hold="x"), "hold is not an object"),
    (state_doc(hold={**FLAG, "user": 7}), "hold.user is not text"),
    (state_doc(hold=without(FLAG, "user")), "hold has no 'user'"),
    (state_doc(override=without(FLAG, "reason")), "override has no 'reason'"),
    (state_doc(override={**FLAG, "reason": 1}), "override.reason is not text"),
    (state_doc(hold={**FLAG, "until": "x"}), "hold.until is not a timestamp: 'x'"),
    (state_doc(ask="x"), "ask is not an object"),
    (state_doc(ask={"until": None}), "ask has no 'at'"),
    (state_doc(ask={"at": "x"}), "ask.at is not a timestamp: 'x'"),
    (state_doc(clock="x"), "clock is not an object"),
    (state_doc(clock={**CLOCK, "boot": "5"}), "clock.boot is '5'"),
    (state_doc(clock={**CLOCK, "boot_id": ""}), "clock.boot_id is empty"),
    (state_doc(clock=without(CLOCK, "wall")), "clock has no 'wall'"),
    (state_doc(deferral=without(FLAG, "set_at"), schema=2), "deferral has no 'set_at'"),
    (state_doc(debug="x"), "debug is not an object"),
    (state_doc(debug={"container": "c"}), "debug has no 'image'"),
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
            run_doc(id="b", exit_code=2**31 - 1, reason="r" * 4096, via="override"),
            hold={**FLAG, "user": None, "reason": None},
        ),
        AGENT,
    )
    assert [r.exit_code for r in s.runs] == [-(2**31), 2**31 - 1]
    assert s.hold == OperatorFlag("unknown", "", T0)
    assert from_document({"schema": 3, "agent": AGENT}, AGENT) == AgentState(AGENT)


def test_a_schema_1_run_keeps_a_reported_end_and_gets_an_id() -> None:
    """Only an inferred end of a version-1 file is dropped; a reported one is a fact. Runs of
    older files get an id from their start."""
    doc = state_doc(
        without(
            run_doc(ended_at="2027-01-15T08:00:05Z", exit_code=1, end_source="record-exit"), "id"
        ),
        without(
            run_doc(via="override", ended_at="2027-01-15T09:00:00Z", end_source="inferred"), "id"
        ),
        schema=1,
    )
    assert from_document(doc, AGENT).runs == (
        Run("legacy-6651728988000", T0, ended_at=T0 + 5, exit_code=1, end_source="record-exit"),
        Run("legacy-6651728988000", T0, via="override"),
    )


def test_to_document_is_the_file_format() -> None:
    """The document written to disk has exactly these keys and values, and reads back whole."""
    s = AgentState(
        AGENT,
        runs=(
            Run("a", T0, "force", T0 + 5, 1, "record-exit", None, None, None, "alice", "hotfix"),
            Run("b", T0 + 9, "gate", T0 + 10, 137, "docker", "docker stop", "a", "c1"),
        ),
        hold=OperatorFlag("bob", "incident", T0, T0 + 60),
        ask=Ask(T0 + 20, T0 + 300, "why"),
        anchor=Anchor("boot", T0 + 30, 12.5),
        debug=SESSION,
    )
    doc = to_document(s, T0 + 40)
    assert doc == {
        "schema": 3,
        "agent": AGENT,
        "updated_at": "2027-01-15T08:00:40.000000Z",
        "clock": {"boot_id": "boot", "wall": "2027-01-15T08:00:30.000000Z", "boot": 12.5},
        "hold": {
            "user": "bob",
            "reason": "incident",
            "set_at": "2027-01-15T08:00:00.000000Z",
            "until": "2027-01-15T08:01:00.000000Z",
        },
        "override": None,
        "ask": {
            "at": "2027-01-15T08:00:20.000000Z",
            "until": "2027-01-15T08:05:00.000000Z",
            "why": "why",
        },
        "debug": {
            "container": "cilium-agent-debug",
            "image": "cilium:v1",
            "entrypoint": "sleep 10d",
            "user": "alice",
            "reason": "delve",
            "started_at": "2027-01-15T08:00:00.000000Z",
        },
        "runs": [
            {
                "id": "a",
                "started_at": "2027-01-15T08:00:00.000000Z",
                "via": "force",
                "ended_at": "2027-01-15T08:00:05.000000Z",
                "exit_code": 1,
                "end_source": "record-exit",
                "stop": None,
                "replaces": None,
                "container": None,
                "user": "alice",
                "reason": "hotfix",
            },
            {
                "id": "b",
                "started_at": "2027-01-15T08:00:09.000000Z",
                "via": "gate",
                "ended_at": "2027-01-15T08:00:10.000000Z",
                "exit_code": 137,
                "end_source": "docker",
                "stop": "docker stop",
                "replaces": "a",
                "container": "c1",
                "user": None,
                "reason": None,
            },
        ],
    }
    assert from_document(doc, AGENT) == s
    assert OUTSIDE_CONTAINER  # the helper's container id is a real-looking one
