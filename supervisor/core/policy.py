"""The decision engine: a pure function of (policy, state, now, inputs) returning a frozen Decision.

Nothing here reads a file, a clock or the network: the gate, ``status``, the daemon and the
simulator all call :func:`decide` with the state they loaded, the time they chose and what they
learnt from Docker, the probe and the certificate, which is what makes the invariants of the
design testable with hypothesis and what lets ``simulate`` run the very code the gate runs. A
decision also says what it wants recorded (:attr:`Decision.events`); the caller applies those
with :func:`supervisor.core.events.apply` and persists them.

No event starts a fleet in the same instant (invariant 2). Every start that no operator forced
happens at a slot of the node, on one of two grids shared by the whole cluster:

- the *window* grid (period W): a crash loop, or a restart within W, waits for S, the node's
  first slot at or after ``last start + W * m``;
- the *admission* grid (period J): every other start (the first ever, a crash after a long
  stable run, a deliberate stop after W, a boot after a power loss, the end of a hold, or S
  passed while nobody asked) waits for the node's next admission slot at or after the moment
  the start was first asked for. That moment is a fact of the state (:class:`Ask`), so every
  caller gets the same slot; a lone node waits at most J, a fleet asking together arrives
  spread over J.

With a probe, a slot also needs its answer "ready" (invariant 11): "loaded" or "down" move the
start to the node's next slot on the same grid, so a fleet admits itself at about the rate the
control plane serves; "broken" is ignored (decided as if no probe were configured), and no
answer holds a start beyond ``W * max_multiplier`` after its slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from supervisor.base.catalog import EventId
from supervisor.core.answers import ProbeAnswer
from supervisor.core.durations import format_duration
from supervisor.core.events import Approved, Asked, Event
from supervisor.core.state import MICRO, AgentState, Ask, Via, iso, micro, micro_ceil, micro_units

#: Cap of the backoff multiplier ``m = 2**(k-1)`` (config ``max_multiplier``).
DEFAULT_MAX_MULTIPLIER: Final = 4
#: A run that lasted this long is stable and ends the backoff count (config ``stable_after``).
DEFAULT_STABLE_AFTER: Final = 600.0
#: J with a probe, as a fraction of W (config ``window.admission`` sets J itself). Without a
#: probe J is W: nothing else says what a fleet may cost the control plane. With one, the probe
#: paces the fleet to what the control plane serves, and J only bounds how long a lone node
#: waits and how often a waiting fleet asks; chosen by measurement (docs/fleet.md, simulate
#: --scenario crash-live): 1/12 keeps a 5,000-node crash on a live control plane within
#: N/C + J, and a lone crash waits J/2 on average (2m30s at 5,000 nodes).
ADMISSION_FRACTION_WITH_PROBE: Final = 1 / 12
#: A caller told to come back at T that has not come back by T + ASK_GRACE was not waiting:
#: its ask has lapsed, and the next ask is a first ask. A waiting gate comes back within
#: seconds (its Docker look, its probe and the lock are all bounded well below this), so only
#: a stopped gate lets an ask lapse; a fleet that stops its gates and starts them later then
#: starts at most ``N * ASK_GRACE / J`` nodes in that instant, the rest at their slots.
ASK_GRACE: Final = 30.0
#: A 2xx answer of the probe slower than this is "loaded" (config ``probe.max_latency``): the
#: probe admits while the control plane's queue is shorter than its capacity times this, which
#: ``simulate --scenario crash-live`` measures (0.5 s misses the 40-minute bound at 5,000 nodes
#: and 219 resyncs a minute; 1 s meets it; 2 s lets the queue grow past what a resync waits).
DEFAULT_MAX_LATENCY: Final = 1.0
#: How soon a gate that could not ask Docker asks again.
DOCKER_RETRY: Final = 5.0

Grid = Literal["window", "admission"]
#: What the caller saw of the agent's container. None: no container configured (nothing to
#: ask). "running": it runs (nothing to start). "replacing": it runs, and the caller is about to
#: replace it (compose recreates it for an upgrade): a start like any other. "pending": a start
#: was approved within ``docker.grace`` and Docker has not made it yet. "stopped": it exists
#: (or will be created) and does not run. "unknown": Docker did not answer.
DockerView = Literal["running", "replacing", "pending", "stopped", "unknown"]


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """The jitter window: ``clamp(base + per_node * cluster_size, min, max)`` seconds, and J.

    The defaults reproduce the published figures: 1000 nodes -> 20 min, 5000 -> 60 min.
    ``admission`` is J as configured (``window.admission``), None for the default.
    """

    base: float = 600.0
    per_node: float = 0.6
    min: float = 60.0
    max: float = 86400.0
    admission: float | None = None


def window_seconds(window: WindowConfig, cluster_size: int) -> float:
    """The jitter window W for a cluster: ``clamp(base + per_node * cluster_size, min, max)``.

    Why it grows with the cluster: the control plane can absorb a roughly fixed number of full
    resyncs per minute, and in a storm every node wants one. Spreading N nodes' starts over a
    window proportional to N keeps the start rate N/W near that budget whatever the fleet size
    (defaults: 1000 nodes -> 20 min, 5000 nodes -> 60 min, about 83 starts a minute).
    """
    raw = window.base + window.per_node * cluster_size
    return float(min(max(raw, window.min), window.max))


def admission_seconds(window: WindowConfig, w: float, *, probe: bool) -> float:
    """J, the admission grid's period: ``window.admission`` if set, else W without a probe and
    :data:`ADMISSION_FRACTION_WITH_PROBE` of W with one; never longer than W."""
    if window.admission is not None:
        return min(window.admission, w)
    return w * ADMISSION_FRACTION_WITH_PROBE if probe else w


def multiplier(level: int, max_multiplier: int) -> int:
    """Backoff multiplier ``m = min(2**(k-1), max_multiplier)``, at least 1.

    Clamped before exponentiation so that a huge level cannot overflow (stamina's lesson).
    """
    if level <= 1:
        return 1
    if level - 1 >= max_multiplier.bit_length():
        return max_multiplier
    return min(1 << (level - 1), max_multiplier)


def backoff_level(state: AgentState, stable_after: float, *, running: bool = False) -> int:
    """k: the number of consecutive most recent runs that failed (invariant 1).

    ``running``: Docker says the agent is running (or its approved start is on its way), so the
    latest run, if its end is open, is in progress (neither failed nor stable) and is skipped.

    Newest first, each run is one of:

    - neutral, skipped: superseded by a start an operator let through (``--force``, override),
      by an approved replacement of its container (a compose upgrade stopped it on purpose),
      or by a start seen in Docker that no gate approved while its own end is unknown (whoever
      started the container outside the gate also ended this run); or stopped on purpose
      (exit 0, SIGTERM, SIGINT, a stop signal someone sent) before ``stable_after``;
    - failed, counted: its end was never reported (no record-exit, no Docker State), or it
      ended on its own (non-zero exit, another signal) before ``stable_after``;
    - stable, which ends the count: it lasted ``stable_after``.

    An end nobody reported is not a duration: taking the next start as the end would make
    every run of a crash loop with no exit reports look as long as its wait, hence stable.
    """
    level = 0
    runs = state.runs
    newest = len(runs) - 1
    if running and runs and runs[-1].ended_at is None:
        newest -= 1
    for i in range(newest, -1, -1):
        run = runs[i]
        after = runs[i + 1] if i + 1 < len(runs) else None
        superseded = after is not None and (
            after.operator
            or after.replaces == run.id
            or (after.via == "docker" and run.ended_at is None)
        )
        if superseded:
            continue
        if run.ended_at is None:
            level += 1
            continue
        if run.ended_at - run.started_at >= stable_after:
            break
        if not run.stopped_on_purpose:
            level += 1
    return level


def next_grid_slot(not_before: float, period: float, offset: float) -> float:
    """The node's first slot at or after ``not_before`` on the grid of ``period`` seconds.

    The grid is counted in whole microseconds from the Unix epoch: slot e is
    ``e * P + floor(offset * P)`` with ``P`` the period in microseconds, so every node of a
    cluster shares one grid (N nodes with evenly spread offsets make a flat start rate), the
    answer depends only on the inputs (invariant 3), and it is exact: integer arithmetic, no
    float rounding that could turn a time exactly on a slot into the next one (a gate that
    wakes at its slot is allowed there), and a slot survives the state file's microseconds.
    """
    p = max(1, round(period * MICRO))
    shift = math.floor(offset * p)
    nb = micro_units(not_before)
    e = -((shift - nb) // p)  # ceil((nb - shift) / p), in integers
    return (e * p + shift) / MICRO


def slot_after(now: float, period: float, offset: float) -> float:
    """The node's first slot strictly after ``now`` (a refusal at a slot names the next one)."""
    nxt = next_grid_slot(now, period, offset)
    return nxt if nxt > now else next_grid_slot(now + period * 0.5, period, offset)


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything :func:`decide` needs from the configuration, resolved for one agent."""

    agent: str
    node: str
    cluster_size: int
    window: float
    offset: float
    slot_mode: str
    stable_after: float = DEFAULT_STABLE_AFTER
    max_multiplier: int = DEFAULT_MAX_MULTIPLIER
    probe_configured: bool = False
    #: J: the admission grid's period (with a working probe, when no probe is configured, or
    #: as configured); 0 means W.
    admission: float = 0.0
    #: J was configured (``window.admission``), so a broken probe does not change it.
    admission_explicit: bool = False

    @property
    def admission_period(self) -> float:
        """J as configured, W when unset."""
        return self.admission if self.admission > 0 else self.window

    def admission_for(self, probe: ProbeAnswer | None) -> float:
        """J for this decision: a broken probe is decided as if no probe were configured."""
        if probe == "broken" and not self.admission_explicit:
            return self.window
        return self.admission_period


@dataclass(frozen=True, slots=True)
class Request:
    """What the caller asks for: a start named ``run_id``, forced or not, by whom and why."""

    run_id: str = ""
    force: bool = False
    user: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the caller learnt before deciding: the probe's answer (None: not asked, or no probe
    configured), Docker's view of the container (None: none configured) and the certificate's
    problems (empty: fine, or no identity configured)."""

    probe: ProbeAnswer | None = None
    docker: DockerView | None = None
    docker_why: str = ""
    identity: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer. ``next_allowed_at`` is None when allowed (or held indefinitely).

    ``events`` is what the decision wants recorded if the caller acts on it: the approved start
    (with its run id) or the ask a refusal leaves behind. ``start``: allowed and a start is to
    be made (False when the agent is already running or its approved start is on its way).
    ``grid``, ``slot_at`` and ``asked_at`` say which slot a start waits on and since when.
    ``needs_probe``: the slot has come and only the probe's answer is missing; the caller asks
    and decides again (never shown).
    """

    allowed: bool
    reason: str
    agent: str
    node: str
    cluster_size: int
    window_seconds: float
    backoff_level: int
    next_allowed_at: float | None
    forced: bool = False
    via: Via = "gate"
    event: EventId = EventId.GATE_ALLOWED
    decided_at: float | None = None
    start: bool = False
    run_id: str | None = None
    grid: Grid | None = None
    slot_at: float | None = None
    asked_at: float | None = None
    admission_seconds: float | None = None
    probe: ProbeAnswer | None = None
    needs_probe: bool = False
    events: tuple[Event, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The decision JSON of the contract, and what explains it."""

        def ts(t: float | None) -> str | None:
            return None if t is None else iso(t)

        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "agent": self.agent,
            "node": self.node,
            "cluster_size": self.cluster_size,
            "window_seconds": self.window_seconds,
            "backoff_level": self.backoff_level,
            "next_allowed_at": ts(self.next_allowed_at),
            "forced": self.forced,
            "decided_at": ts(self.decided_at),
            "run_id": self.run_id,
            "grid": self.grid,
            "slot_at": ts(self.slot_at),
            "asked_at": ts(self.asked_at),
            "admission_seconds": self.admission_seconds,
            "probe": self.probe,
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where a start that no operator forced waits: the node's slot, on which grid, since when."""

    asked_at: float
    slot: float
    grid: Grid
    period: float
    due: float
    why: str


def decide(
    policy: Policy,
    state: AgentState,
    now: float,
    request: Request = Request(),
    inputs: Inputs = Inputs(),
) -> Decision:
    """Decide whether the agent may start at ``now``: one answer whoever asks (invariant 0).

    The answer depends on nothing but the arguments. Order: an agent that is running already
    needs no start; an operator's ``--force`` wins over everything else; Docker not answering
    is no start (nothing is known); a bad identity refuses; a hold refuses; an approved start on
    its way needs no second one; an override allows; then the slot (invariants 2 and 3) and the
    probe (invariant 11).
    """
    now = micro(now)
    docker = inputs.docker
    level = backoff_level(
        state, policy.stable_after, running=docker in ("running", "replacing", "pending")
    )
    make = _Maker(policy, state, level, now, request, inputs)

    if docker == "running":
        return make(True, "already running", EventId.GATE_ALREADY_RUNNING, start=False)
    if request.force:
        who = f" by {request.user}" if request.user else ""
        return make(
            True,
            f"forced{who}: {request.reason or 'no reason given'}",
            EventId.GATE_FORCED,
            via="force",
            forced=True,
        )
    if docker == "unknown":
        return make(
            False,
            f"Docker did not answer ({inputs.docker_why or 'no answer'}): cannot tell whether "
            f"the agent runs, so no start; asking again in {format_duration(DOCKER_RETRY)}",
            EventId.GATE_DOCKER_UNKNOWN,
            nxt=micro(now + DOCKER_RETRY),
        )
    if inputs.identity:
        return make(
            False,
            "the agent's identity is not usable: " + "; ".join(inputs.identity),
            EventId.GATE_IDENTITY_REFUSED,
        )
    hold = state.hold
    if hold is not None and hold.active(now):
        until = f" until {iso(hold.until)}" if hold.until is not None else " until released"
        nxt = None
        if hold.until is not None:
            after = _plan(policy, state, now, level, policy.admission_period, floor=hold.until)
            nxt = max(hold.until, after.due)
        return make(False, f"held by {hold.user}{until}: {hold.reason}", EventId.GATE_HELD, nxt=nxt)
    if docker == "pending":
        last = state.last_run
        named = f" (run {last.id}, approved at {iso(last.started_at)})" if last else ""
        return make(
            True,
            f"a start approved within docker.grace is on its way{named}: nothing more to start",
            EventId.GATE_PENDING,
            start=False,
        )
    ovr = state.override
    if ovr is not None and ovr.active(now):
        until = f" until {iso(ovr.until)}" if ovr.until is not None else ""
        return make(
            True,
            f"override by {ovr.user}{until}: {ovr.reason}",
            EventId.GATE_OVERRIDE,
            via="override",
        )
    return _at_slot(policy, state, now, level, make)


def _at_slot(policy: Policy, state: AgentState, now: float, level: int, make: _Maker) -> Decision:
    """Invariants 2, 3 and 11: wait for the node's slot, then for the probe's "ready"."""
    probe = make.inputs.probe
    plan = _plan(policy, state, now, level, policy.admission_for(probe))
    if make.inputs.docker == "replacing" and plan.grid == "admission":
        plan = replace(
            plan,
            why="replacing the running agent (an upgrade): waiting for this node's admission slot",
        )
    if now < plan.due:
        return make.refused(plan, plan.due, plan.why)
    cap = plan.slot + policy.window * policy.max_multiplier
    if policy.probe_configured and now < cap:
        if probe is None:
            return make(
                False,
                "this node's slot has come: asking the control plane",
                EventId.GATE_PROBE_NEEDED,
                nxt=now,
                plan=plan,
                needs_probe=True,
            )
        if probe in ("loaded", "down"):
            nxt = min(slot_after(now, plan.period, policy.offset), micro_ceil(cap))
            return make.refused(
                plan,
                nxt,
                f"the control plane is {probe}: waiting for this node's next {plan.grid} slot",
                event=EventId.GATE_DEFERRED,
            )
    why = plan.why.replace("waiting for", "at")
    if policy.probe_configured and now >= cap:
        why += (
            f"; the probe has held this start {format_duration(now - plan.slot)} past its "
            f"slot, the most it may (W x max_multiplier): starting anyway"
        )
    elif probe == "broken":
        why += "; the probe is broken (see status): decided as if none were configured"
    return make(True, why, EventId.GATE_ALLOWED, plan=plan)


def _plan(
    policy: Policy,
    state: AgentState,
    now: float,
    level: int,
    admission: float,
    *,
    floor: float | None = None,
) -> _Plan:
    """The slot this start waits on (invariants 2 and 3).

    S is the node's first window slot at or after ``last + W*m``. The start was first asked
    for at the kept ask's time (or now), moved to the end of a hold or override that has ended
    (or ``floor``): if S has not passed then, the start waits for S; otherwise for the node's
    next admission slot at or after that moment. A refusal that named a later time (the
    probe's) keeps callers waiting for it. An ask that nobody came back for within
    :data:`ASK_GRACE` of its time has lapsed: this ask is a first ask.
    """
    w = policy.window
    last = latest_start(state, now)
    m = multiplier(level, policy.max_multiplier)
    s = None if last is None else next_grid_slot(last + w * m, w, policy.offset)
    kept = state.ask
    asked = kept.at if kept is not None else now
    for flag in (state.hold, state.override):
        if flag is not None and flag.until is not None and flag.until <= now:
            asked = max(asked, flag.until)
    if floor is not None:
        asked = max(asked, floor)
    told = kept.until if kept is not None and kept.at == asked else None
    plan = _target(policy, state, level, s, asked, told, admission)
    if kept is not None and floor is None and now > plan.due + ASK_GRACE:
        plan = _target(policy, state, level, s, now, None, admission)
    return plan


def _target(
    policy: Policy,
    state: AgentState,
    level: int,
    s: float | None,
    asked: float,
    told: float | None,
    admission: float,
) -> _Plan:
    """The plan for a start first asked for at ``asked``."""
    if s is not None and s >= asked:
        m = multiplier(level, policy.max_multiplier)
        head = (
            f"history unknown ({_lost_why(state)})"
            if state.history_lost
            else f"{level} failed run{'s' if level != 1 else ''} in a row"
            if level
            else "started within the window"
        )
        why = f"{head}: backoff level {level} (x{m}): waiting for this node's window slot"
        slot, grid, period = s, "window", policy.window
    else:
        why = f"{_admission_kind(state)}: waiting for this node's admission slot"
        slot, grid = next_grid_slot(asked, admission, policy.offset), "admission"
        period = admission
    due = slot if told is None else max(slot, told)
    return _Plan(asked, slot, grid, period, due, why)  # type: ignore[arg-type]


def _admission_kind(state: AgentState) -> str:
    """Why a start goes to the admission grid, in the operator's words."""
    last = state.last_run
    if last is None:
        return "first start"
    if state.history_lost:
        return f"history unknown ({_lost_why(state)})"
    if last.ended_at is None:
        return "start after a run whose end is unknown (a reboot, a power loss)"
    if last.stopped_on_purpose:
        return "start after a deliberate stop"
    return "start after a quiet period"


def _lost_why(state: AgentState) -> str:
    last = state.last_run
    return (last.reason if last is not None else None) or "the state file was unreadable"


class _Maker:
    """Builds the decisions of one call of :func:`decide` (the fields they all share)."""

    def __init__(
        self,
        policy: Policy,
        state: AgentState,
        level: int,
        now: float,
        request: Request,
        inputs: Inputs,
    ) -> None:
        self.policy = policy
        self.state = state
        self.level = level
        self.now = now
        self.request = request
        self.inputs = inputs

    def __call__(
        self,
        allowed: bool,
        why: str,
        event: EventId,
        *,
        nxt: float | None = None,
        via: Via = "gate",
        forced: bool = False,
        start: bool = True,
        plan: _Plan | None = None,
        needs_probe: bool = False,
        events: tuple[Event, ...] = (),
    ) -> Decision:
        p, req = self.policy, self.request
        starting = allowed and start
        if starting:
            last = self.state.last_run
            replaces = None
            if self.inputs.docker == "replacing" and last is not None and last.ended_at is None:
                replaces = last.id
            events = (
                Approved(
                    self.now,
                    req.run_id,
                    via=via,
                    user=req.user,
                    reason=req.reason if forced else None,
                    replaces=replaces,
                ),
            )
        return Decision(
            allowed=allowed,
            reason=why,
            agent=p.agent,
            node=p.node,
            cluster_size=p.cluster_size,
            window_seconds=p.window,
            backoff_level=self.level,
            next_allowed_at=None if allowed else nxt,
            forced=forced,
            via=via,
            event=event,
            decided_at=self.now,
            start=starting,
            run_id=req.run_id if starting else None,
            grid=None if plan is None else plan.grid,
            slot_at=None if plan is None else plan.slot,
            asked_at=None if plan is None else plan.asked_at,
            admission_seconds=p.admission_for(self.inputs.probe),
            probe=self.inputs.probe,
            needs_probe=needs_probe,
            events=events,
        )

    def refused(
        self, plan: _Plan, nxt: float, why: str, *, event: EventId = EventId.GATE_REFUSED
    ) -> Decision:
        """A refusal until ``nxt``, and the ask it leaves behind for every later caller."""
        ask = Ask(plan.asked_at, nxt, why)
        return self(
            False,
            f"{why} in {format_duration(nxt - self.now)}",
            event,
            nxt=nxt,
            plan=plan,
            events=(Asked(ask),),
        )


def latest_start(state: AgentState, now: float) -> float | None:
    """The latest recorded start, a future one (the clock stepped back) counted as ``now``.

    The latest, not the last appended: with concurrent callers or a clock step, runs are not
    always appended in time order, and the window counts from the latest.
    """
    if not state.runs:
        return None
    return min(max(r.started_at for r in state.runs), now)
