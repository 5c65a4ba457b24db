"""The pure core at the edges the mutation run found unpinned: the clocks' frame exactly at its
bounds, the transitions of every event with whole values, the events' own equality and hash,
the state file's messages field by field, and J as the configuration gives it.

Times are on the round grid of ``test_core_edges``: T0 is a multiple of the 20-minute window.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from histories import ended, started

from supervisor.base.catalog import EventId
from supervisor.base.clock import Now
from supervisor.core.events import (
    Approved,
    Asked,
    DebugEnded,
    DebugStarted,
    FlagSet,
    Lost,
    Released,
    Reset,
    apply,
)
from supervisor.core.policy import (
    Decision,
    Inputs,
    Policy,
    Request,
    WindowConfig,
    admission_seconds,
    decide,
    next_grid_slot,
)
from supervisor.core.slots import SlotError, hash_offset, node_id_from_name, slot_offset
from supervisor.core.state import (
    MICRO,
    AgentState,
    Anchor,
    Ask,
    DebugSession,
    OperatorFlag,
    Run,
    StateFormatError,
    clamp_future,
    from_document,
    micro_units,
    rebase,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
AGENT = "cilium-agent"
BOOT = "9b1c"
HOUR = 3600.0
SESSION = DebugSession("cilium-agent-debug", "cilium:v1", "sleep 10d", "alice", "delve", T0)


# --- the clocks: rebase and clamp_future at their bounds ------------------------------------------


def this_boot(state: AgentState) -> AgentState:
    """``state`` written in boot BOOT when the wall clock read T0 + 20 and the boot clock 100 s:
    the boot began at T0 - 80, and facts from T0 - 81 on (a second of tolerance) are this boot's."""
    return replace(state, anchor=Anchor(BOOT, T0 + 20, 100.0))


def test_a_wall_clock_jump_moves_every_fact_of_this_boot_from_its_first_second() -> None:
    """An hour's jump moves runs, hold, override and ask written at or after the boot (its
    first second included) by the hour, whole, and leaves what came before the boot alone."""
    s = AgentState(
        AGENT,
        runs=(
            Run("before", T0 - 82, ended_at=T0 - 81.5, exit_code=1, end_source="record-exit"),
            Run("edge", T0 - 81, ended_at=T0 - 50, exit_code=1, end_source="record-exit"),
            Run("open", T0 + 10),
        ),
        hold=OperatorFlag("op", "h", T0 - 81, T0 + 7200),
        override=OperatorFlag("op", "o", T0 + 5, T0 + 100),
        ask=Ask(T0 - 81, T0 + 1200, "waiting"),
    )
    moved = rebase(this_boot(s), Now(T0 + 30 + HOUR, 110.0, BOOT))
    assert moved == AgentState(
        AGENT,
        runs=(
            Run("before", T0 - 82, ended_at=T0 - 81.5, exit_code=1, end_source="record-exit"),
            Run(
                "edge",
                T0 - 81 + HOUR,
                ended_at=T0 - 50 + HOUR,
                exit_code=1,
                end_source="record-exit",
            ),
            Run("open", T0 + 10 + HOUR),
        ),
        hold=OperatorFlag("op", "h", T0 - 81 + HOUR, T0 + 7200 + HOUR),
        override=OperatorFlag("op", "o", T0 + 5 + HOUR, T0 + 100 + HOUR),
        ask=Ask(T0 - 81 + HOUR, T0 + 1200 + HOUR, "waiting"),
        anchor=Anchor(BOOT, T0 + 30 + HOUR, 110.0),
    )


def test_facts_from_before_the_boot_stay_where_they_are() -> None:
    """A hold, an override and an ask set a second and more before the boot do not move."""
    s = AgentState(
        AGENT,
        hold=OperatorFlag("op", "h", T0 - 82, T0 + 7200),
        override=OperatorFlag("op", "o", T0 - 82, None),
        ask=Ask(T0 - 82, None, "waiting"),
    )
    moved = rebase(this_boot(s), Now(T0 + 30 + HOUR, 110.0, BOOT))
    assert moved == replace(s, anchor=Anchor(BOOT, T0 + 30 + HOUR, 110.0))


def test_a_step_of_exactly_the_tolerance_moves_the_facts() -> None:
    """Clocks that drifted apart by exactly STEP_TOLERANCE (1 s) were stepped: the facts move."""
    s = this_boot(started(AgentState(AGENT), T0, run_id="r1"))
    moved = rebase(s, Now(T0 + 31, 110.0, BOOT))
    assert moved == AgentState(
        AGENT, runs=(Run("r1", T0 + 1),), anchor=Anchor(BOOT, T0 + 31, 110.0)
    )


def test_a_boot_clock_that_did_not_advance_still_places_the_facts() -> None:
    """Same boot, the boot clock reading what it read (no time passed on it) and the wall clock
    an hour on: the wall clock jumped, and the facts move with it."""
    s = this_boot(started(AgentState(AGENT), T0, run_id="r1"))
    moved = rebase(s, Now(T0 + 20 + HOUR, 100.0, BOOT))
    assert moved == AgentState(
        AGENT, runs=(Run("r1", T0 + HOUR),), anchor=Anchor(BOOT, T0 + 20 + HOUR, 100.0)
    )


def test_another_boot_whose_clock_reads_later_places_nothing() -> None:
    """An anchor of another boot, even one whose boot clock read less than now's, cannot place
    the facts: their wall times stay, and the anchor is renewed."""
    # The run began after the old anchor's boot (T0 + 9): were the boot clocks compared across
    # boots, it would move by (80 - 4990) s.
    s = replace(
        started(AgentState(AGENT), T0 + 15, run_id="r1"), anchor=Anchor("old", T0 + 20, 10.0)
    )
    again = rebase(s, Now(T0 + 100, 5000.0, BOOT))
    assert again == replace(s, anchor=Anchor(BOOT, T0 + 100, 5000.0))


def test_a_first_anchor_is_written_with_the_facts_as_they_are() -> None:
    """A state without an anchor gets one at the first reading of both clocks; nothing moves."""
    s = started(AgentState(AGENT), T0, run_id="r1")
    assert rebase(s, Now(T0 + 100, 5000.0, BOOT)) == replace(
        s, anchor=Anchor(BOOT, T0 + 100, 5000.0)
    )


@pytest.mark.parametrize(
    "now",
    [Now(T0 + 100, 5000.0, None), Now(T0 + 100, None, BOOT)],
    ids=["no-boot-id", "no-boot-clock"],
)
def test_half_a_boot_clock_is_no_boot_clock(now: Now) -> None:
    """A boot clock without a boot id, or an id without a clock, writes no anchor: the very same
    state comes back (nothing to write)."""
    s = started(AgentState(AGENT), T0, run_id="r1")
    assert rebase(s, now) is s


def test_a_state_with_no_fact_needs_no_anchor() -> None:
    """An empty state comes back as it is (no anchor, nothing to write); a state holding only
    a hold is placed by the boot clock like any fact."""
    empty = AgentState(AGENT)
    assert rebase(empty, Now(T0, 5000.0, BOOT)) is empty
    flag = OperatorFlag("op", "h", T0, T0 + 600)
    s = this_boot(AgentState(AGENT, hold=flag))
    assert rebase(s, Now(T0 + 30 + HOUR, 110.0, BOOT)) == AgentState(
        AGENT,
        hold=OperatorFlag("op", "h", T0 + HOUR, T0 + 600 + HOUR),
        anchor=Anchor(BOOT, T0 + 30 + HOUR, 110.0),
    )


def test_clamp_future_pins_a_run_that_only_ended_in_the_future() -> None:
    """A run started before now whose end lies after now (the clock stepped back since) ends
    at now."""
    s = ended(started(AgentState(AGENT), T0 - 100, run_id="r1"), T0 + 50, 1)
    assert clamp_future(s, T0) == AgentState(
        AGENT, runs=(Run("r1", T0 - 100, ended_at=T0, exit_code=1, end_source="record-exit"),)
    )


def test_clamp_future_of_an_open_run_in_the_first_second_of_the_epoch_changes_nothing() -> None:
    """An open run is not in the future because its end is unknown: the same state, even at
    0.5 s after the epoch."""
    s = started(AgentState(AGENT), 0.2, run_id="r1")
    assert clamp_future(s, 0.5) is s


def test_clamp_future_leaves_a_flag_set_at_now_as_it_is() -> None:
    """A hold set exactly at now is not in the future: not pinned, whatever its expiry says
    (here one before it, from a hand-edited file)."""
    s = AgentState(AGENT, hold=OperatorFlag("op", "h", T0, T0 - 10))
    assert clamp_future(s, T0) is s


# --- events: transitions and identity -----------------------------------------------------------


def test_released_clears_the_hold_the_override_and_the_ask() -> None:
    """release clears all three operator facts at once, and keeps the history."""
    s = AgentState(
        AGENT,
        runs=(Run("r1", T0),),
        hold=OperatorFlag("op", "h", T0),
        override=OperatorFlag("op", "o", T0),
        ask=Ask(T0, T0 + 5, "x"),
    )
    assert apply(s, Released()) == AgentState(AGENT, runs=(Run("r1", T0),))


def test_a_debug_session_begins_and_ends() -> None:
    """DebugStarted records the session; DebugEnded clears it, and without one changes nothing."""
    s = AgentState(AGENT, runs=(Run("r1", T0),))
    begun = apply(s, DebugStarted(SESSION))
    assert begun == AgentState(AGENT, runs=(Run("r1", T0),), debug=SESSION)
    assert apply(begun, DebugEnded()) == s
    assert apply(s, DebugEnded()) is s


def test_a_lost_history_keeps_the_clock_anchor() -> None:
    """Lost replaces the history by its placeholder and keeps the anchor (the boot clock still
    places the placeholder)."""
    anchor = Anchor(BOOT, T0, 100.0)
    s = AgentState(AGENT, runs=(Run("r1", T0 - 5),), anchor=anchor)
    assert apply(s, Lost(T0, "x1", "garbage")) == AgentState(
        AGENT, runs=(Run("x1", T0, via="unknown", reason="garbage"),), anchor=anchor
    )


def test_events_are_equal_only_within_their_type() -> None:
    """Two empty events of different types are neither == nor equal by !=; same type and values
    are == and not !=; equal events hash alike and those two apart."""
    reset, released = Reset(), Released()
    assert (reset == released, reset != released) == (False, True)  # type: ignore[comparison-overlap]
    a, b = Approved(T0, "r1"), Approved(T0, "r1")
    assert (a == b, a != b) == (True, False)
    assert (a == Approved(T0, "r2"), a != Approved(T0, "r2")) == (False, True)
    assert hash(a) == hash(b) and hash(reset) != hash(released)
    assert len({Reset(), Released(), Reset()}) == 2


# --- the state file, field by field ---------------------------------------------------------------

CLOCK = {"boot_id": "b", "wall": "2027-01-15T08:00:00Z", "boot": 5.0}
FLAG = {"user": "alice", "reason": "m", "set_at": "2027-01-15T08:00:00Z", "until": None}
DEBUG = {
    "container": "c",
    "image": "i",
    "entrypoint": "e",
    "user": "u",
    "reason": "r",
    "started_at": "2027-01-15T08:00:00Z",
}


def doc(*runs: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """A schema-3 state document of ``runs`` and ``kw``."""
    return {"schema": 3, "agent": AGENT, "runs": list(runs), **kw}


def run(**kw: Any) -> dict[str, Any]:
    """A valid run document with ``kw`` changed."""
    return {"id": "a", "started_at": "2027-01-15T08:00:00Z", **kw}


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    """``d`` without ``key``."""
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (doc(clock=without(CLOCK, "boot_id")), "clock has no 'boot_id'"),
        (doc(clock={**CLOCK, "boot_id": "b" * 101}), "clock.boot_id is not text"),
        (doc(clock={**CLOCK, "boot_id": 5}), "clock.boot_id is not text"),
        (doc(clock={**CLOCK, "wall": "x"}), "clock.wall is not a timestamp: 'x'"),
        (
            doc(ask={"at": "2027-01-15T08:00:00Z", "until": "x"}),
            "ask.until is not a timestamp: 'x'",
        ),
        (doc(ask={"at": "2027-01-15T08:00:00Z", "why": 5}), "ask.why is not text"),
        (doc(hold={**FLAG, "set_at": "x"}), "hold.set_at is not a timestamp: 'x'"),
        (doc(debug={**DEBUG, "container": None}), "debug.container is empty"),
        (doc(debug={**DEBUG, "image": 5}), "debug.image is not text"),
        (doc(debug=without(DEBUG, "started_at")), "debug has no 'started_at'"),
        (doc(debug={**DEBUG, "started_at": "x"}), "debug.started_at is not a timestamp: 'x'"),
        (doc(run(replaces="x" * 101)), "runs[0].replaces is not text"),
        (doc(run(replaces=5)), "runs[0].replaces is not text"),
        (doc(run(container="x" * 101)), "runs[0].container is not text"),
        (doc(run(container=5)), "runs[0].container is not text"),
    ],
)
def test_each_bad_field_is_named_in_the_reason(document: dict[str, Any], message: str) -> None:
    """A bad field of the clock, the debug session or a run is refused with a reason naming
    that field (the quarantine reason an operator reads)."""
    with pytest.raises(StateFormatError) as excinfo:
        from_document(document, AGENT)
    assert str(excinfo.value) == message


def test_ids_of_100_characters_are_read() -> None:
    """A boot id, a replaced run and a container of 100 characters, the most a file holds."""
    s = from_document(
        doc(run(replaces="r" * 100, container="c" * 100), clock={**CLOCK, "boot_id": "b" * 100}),
        AGENT,
    )
    assert s == AgentState(
        AGENT,
        runs=(Run("a", T0, replaces="r" * 100, container="c" * 100),),
        anchor=Anchor("b" * 100, T0, 5.0),
    )


# --- slots and J ----------------------------------------------------------------------------------


def test_the_hash_offset_is_the_first_8_bytes_of_the_digest_as_a_fraction() -> None:
    """SHA-256 of "node-1\\0cilium-agent" begins 5899f99e78ea4f73: the offset is that / 2**64."""
    assert hash_offset("node-1", AGENT) == 0x5899F99E78EA4F73 / 2**64 == 0.3460994731803251


def test_an_address_node_name_is_its_address() -> None:
    """A node named by a bare IPv4 address has that address as its id."""
    assert node_id_from_name("10.1.2.3") == 167838211
    assert node_id_from_name("255.255.255.255") == 2**32 - 1


def test_a_node_without_an_address_is_told_every_way_out() -> None:
    """slot_mode = address without an address in the name or a node_id: the whole message."""
    with pytest.raises(SlotError) as excinfo:
        slot_offset("address", node="bm-dc2-rack07-u12", agent=AGENT)
    assert str(excinfo.value) == (
        "slot_mode = address: node name 'bm-dc2-rack07-u12' holds no IPv4 address; set node_id "
        "to a number unique to this node (its position in the fleet, 0 to N-1, or its IPv4 "
        "address as an integer: 10.1.2.3 is 167838211), or use slot_mode = index (with "
        "slot_index and slot_count) or slot_mode = hash"
    )


@pytest.mark.parametrize(
    ("window", "probe", "j"),
    [
        (WindowConfig(admission=300.0), False, 300.0),
        (WindowConfig(admission=300.0), True, 300.0),
        (WindowConfig(admission=5000.0), False, 1200.0),
        (WindowConfig(), True, 100.0),
        (WindowConfig(), False, 1200.0),
    ],
)
def test_j_is_as_configured_at_most_w_else_w_or_a_twelfth_with_a_probe(
    window: WindowConfig, probe: bool, j: float
) -> None:
    """J: window.admission capped at W; unset, W without a probe and W/12 with one."""
    assert admission_seconds(window, 1200.0, probe=probe) == j


# --- decisions, whole, on the branches the run found unpinned ------------------------------------

W = 1200.0
RID = "r1"
FIRST = "first start: waiting for this node's admission slot"


def policy(**kw: Any) -> Policy:
    """A 1000-node policy, W = J = 20 min, slot offset 1/4: slots at T0 + 300 + k * W; with
    ``probe_configured`` and ``admission=100``, admission slots at T0 + 25 + k * 100."""
    return Policy(
        agent=AGENT,
        node="node-1",
        cluster_size=1000,
        window=W,
        offset=0.25,
        slot_mode="index",
        **{"admission": W, **kw},
    )


def decide_at(
    s: AgentState, now: float, p: Policy | None = None, request: Request | None = None, **kw: Any
) -> Decision:
    """The decision at ``now`` for a start named ``r1`` (``kw``: the Inputs)."""
    return decide(p or policy(), s, now, request or Request(RID), Inputs(**kw))


def expect(now: float, **kw: Any) -> Decision:
    """The Decision of this module's policy at ``now``, with the fields that differ."""
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
    return Decision(**{**fields, **kw})


def waiting(now: float, until: float, why: str, left: str, asked: float, **kw: Any) -> Decision:
    """A refusal at ``now`` until the slot ``until`` first asked for at ``asked``."""
    return expect(
        now,
        allowed=False,
        reason=f"{why} in {left}",
        next_allowed_at=until,
        event=EventId.GATE_REFUSED,
        grid=kw.pop("grid", "admission"),
        slot_at=until,
        asked_at=asked,
        events=(Asked(Ask(asked, until, why)),),
        **kw,
    )


def test_a_lost_history_found_after_its_window_slot_waits_for_an_admission_slot() -> None:
    """A lost history whose window slot S passed while nobody asked goes to the admission grid,
    and the refusal says the history is unknown and why."""
    s = apply(AgentState(AGENT), Lost(T0, "x1", "garbage"))
    why = "history unknown (garbage): waiting for this node's admission slot"
    assert decide_at(s, T0 + 3000) == waiting(
        T0 + 3000, T0 + 3900, why, "15m", T0 + 3000, backoff_level=1
    )


@pytest.mark.parametrize(
    ("code", "level", "kind"),
    [
        (None, 1, "start after a run whose end is unknown (a reboot, a power loss)"),
        (0, 0, "start after a deliberate stop"),
    ],
    ids=["end-unknown", "deliberate-stop"],
)
def test_a_start_long_after_the_last_run_names_how_that_run_ended(
    code: int | None, level: int, kind: str
) -> None:
    """A start long after a run whose end nobody reported, or that was stopped on purpose, waits
    for the admission slot and says which."""
    s = started(AgentState(AGENT), T0 - 50000, run_id="r0")
    if code is not None:
        s = ended(s, T0 - 49990, code)
    why = f"{kind}: waiting for this node's admission slot"
    assert decide_at(s, T0) == waiting(T0, T0 + 300, why, "5m", T0, backoff_level=level)


def test_replacing_the_running_agent_waits_for_its_admission_slot_and_names_the_run() -> None:
    """An upgrade replacing an agent that ran for long: its open run is in progress (level 0),
    the replacement waits for the admission slot saying so, and at the slot replaces that run."""
    s = started(AgentState(AGENT), T0 - 50000, run_id="r0")
    why = "replacing the running agent (an upgrade): waiting for this node's admission slot"
    assert decide_at(s, T0, docker="replacing") == waiting(T0, T0 + 300, why, "5m", T0)
    s = apply(s, Asked(Ask(T0, T0 + 300, why)))
    assert decide_at(s, T0 + 300, docker="replacing") == expect(
        T0 + 300,
        allowed=True,
        reason="replacing the running agent (an upgrade): at this node's admission slot",
        start=True,
        run_id=RID,
        grid="admission",
        slot_at=T0 + 300,
        asked_at=T0,
        events=(Approved(T0 + 300, RID, replaces="r0"),),
    )


def test_replacing_within_the_window_waits_for_the_window_slot_like_any_restart() -> None:
    """A replacement 100 s after the agent started waits for S on the window grid, and says so
    as any restart within the window does."""
    s = started(AgentState(AGENT), T0 - 100, run_id="r0")
    why = "started within the window: backoff level 0 (x1): waiting for this node's window slot"
    assert decide_at(s, T0, docker="replacing") == waiting(
        T0, T0 + 1500, why, "25m", T0, grid="window"
    )


def test_at_the_slot_with_a_probe_the_decision_asks_the_probe() -> None:
    """At the admission slot, with a probe and no answer yet: not allowed, come back now, with
    the probe asked; nothing to record."""
    p = policy(probe_configured=True, admission=100.0)
    assert decide_at(AgentState(AGENT), T0 + 25, p) == expect(
        T0 + 25,
        allowed=False,
        reason="this node's slot has come: asking the control plane",
        next_allowed_at=T0 + 25,
        event=EventId.GATE_PROBE_NEEDED,
        grid="admission",
        slot_at=T0 + 25,
        asked_at=T0 + 25,
        admission_seconds=100.0,
        needs_probe=True,
    )


def test_at_the_cap_the_start_comes_and_the_reason_says_both_halves() -> None:
    """A probe still "down" at slot + W * max_multiplier: allowed, and the reason is the slot's
    and then how long the probe held it."""
    p = policy(probe_configured=True, admission=100.0)
    s = apply(AgentState(AGENT), Asked(Ask(T0, T0 + 4825, "x")))
    assert decide_at(s, T0 + 4825, p, probe="down") == expect(
        T0 + 4825,
        allowed=True,
        reason="first start: at this node's admission slot; the probe has held this start "
        "1h20m past its slot, the most it may (W x max_multiplier): starting anyway",
        start=True,
        run_id=RID,
        grid="admission",
        slot_at=T0 + 25,
        asked_at=T0,
        admission_seconds=100.0,
        probe="down",
        events=(Approved(T0 + 4825, RID),),
    )


def test_a_broken_probe_allows_at_the_window_period_slot_and_says_so() -> None:
    """A broken probe: J is W again, and the start at that slot says the probe was ignored."""
    p = policy(probe_configured=True, admission=100.0)
    assert decide_at(AgentState(AGENT), T0 + 300, p, probe="broken") == expect(
        T0 + 300,
        allowed=True,
        reason="first start: at this node's admission slot; the probe is broken (see status): "
        "decided as if none were configured",
        start=True,
        run_id=RID,
        grid="admission",
        slot_at=T0 + 300,
        asked_at=T0 + 300,
        probe="broken",
        events=(Approved(T0 + 300, RID),),
    )


def test_the_end_of_a_hold_is_a_new_first_ask_from_the_instant_it_ends() -> None:
    """A start asked for at T0 (slot T0 + 300), then held until T0 + 301: exactly at the hold's
    end the ask is a new one, and waits for the slot after it, not the one it missed."""
    s = apply(AgentState(AGENT), Asked(Ask(T0, T0 + 300, FIRST)))
    s = apply(s, FlagSet("hold", OperatorFlag("op", "h", T0 + 10, T0 + 301)))
    assert decide_at(s, T0 + 301) == waiting(T0 + 301, T0 + 1500, FIRST, "19m59s", T0 + 301)


def test_a_timed_hold_over_an_indefinite_override_names_the_slot_after_the_hold() -> None:
    """A hold until T0 + 600 wins over an override until released, and names the node's first
    admission slot after the hold's end."""
    s = apply(AgentState(AGENT), FlagSet("override", OperatorFlag("op", "o", T0)))
    s = apply(s, FlagSet("hold", OperatorFlag("op", "h", T0, T0 + 600)))
    assert decide_at(s, T0 + 10) == expect(
        T0 + 10,
        allowed=False,
        reason="held by op until 2027-01-15T08:10:00.000000Z: h",
        next_allowed_at=T0 + 1500,
        event=EventId.GATE_HELD,
    )


def test_a_pending_start_with_no_run_to_name_names_none() -> None:
    """Docker says an approved start is on its way and the history has no run: allowed, nothing
    to start, and no run named."""
    assert decide_at(AgentState(AGENT), T0, docker="pending") == expect(
        T0,
        allowed=True,
        reason="a start approved within docker.grace is on its way: nothing more to start",
        event=EventId.GATE_PENDING,
    )


def test_docker_not_answering_without_a_reason_says_no_answer() -> None:
    """Docker did not answer and the caller has no detail: the reason says "no answer"."""
    assert decide_at(AgentState(AGENT), T0, docker="unknown") == expect(
        T0,
        allowed=False,
        reason="Docker did not answer (no answer): cannot tell whether the agent runs, so no "
        "start; asking again in 5s",
        next_allowed_at=T0 + 5,
        event=EventId.GATE_DOCKER_UNKNOWN,
    )


def test_a_reason_is_recorded_only_with_force() -> None:
    """An override lets a start through that came with a reason but no --force: the approval
    records the user, not the reason (only a forced start's reason is kept)."""
    s = apply(AgentState(AGENT), FlagSet("override", OperatorFlag("op", "o", T0)))
    request = Request(RID, user="alice", reason="because")
    assert decide_at(s, T0, request=request) == expect(
        T0,
        allowed=True,
        reason="override by op: o",
        event=EventId.GATE_OVERRIDE,
        via="override",
        start=True,
        run_id=RID,
        events=(Approved(T0, RID, via="override", user="alice"),),
    )


# --- whole microseconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [0.3, T0, T0 + 1e-6, T0 + 0.1234565, 65042405417.26741, 93108147202.49133, 956429963442.2461],
)
def test_micro_units_is_the_least_whole_microsecond_at_or_after_the_time(ts: float) -> None:
    """The least ``u`` with ``u / MICRO >= ts``, also past 2**53 microseconds (the year 2255),
    where many microseconds read as one float and the first guess is too late by up to a
    hundred (the last three times, found by search)."""
    u = micro_units(ts)
    assert u / MICRO >= ts
    assert (u - 1) / MICRO < ts


def test_a_grid_of_one_microsecond_has_a_slot_at_every_microsecond() -> None:
    """The finest grid (window.min is any positive time): every whole microsecond is a slot."""
    assert next_grid_slot(1.000001, 1e-6, 0.0) == 1.000001
    assert next_grid_slot(1.0000005, 1e-6, 0.0) == 1.000001
