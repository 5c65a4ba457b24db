"""The decision engine: a pure function of (policy, state, now) returning a frozen Decision.

Nothing here reads a file, a clock or the network: the CLI, the daemon and the simulator all
call :func:`decide` with the state they loaded and the time they chose, which is what makes the
invariants of the design testable with hypothesis and what lets ``simulate`` run the very code
the gate runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from supervisor.core.durations import format_duration
from supervisor.core.state import AgentState, OperatorFlag, Run, Via, iso

#: Cap of the backoff multiplier ``m = 2**(k-1)`` (config ``max_multiplier``).
DEFAULT_MAX_MULTIPLIER: Final = 4
#: A run that lasted this long is stable and ends the backoff count (config ``stable_after``).
DEFAULT_STABLE_AFTER: Final = 600.0


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """The jitter window: ``clamp(base + per_node * cluster_size, min, max)`` seconds.

    The defaults reproduce the published figures: 1000 nodes -> 20 min, 5000 -> 60 min.
    """

    base: float = 600.0
    per_node: float = 0.6
    min: float = 60.0
    max: float = 86400.0


def window_seconds(window: WindowConfig, cluster_size: int) -> float:
    """The jitter window W for a cluster: ``clamp(base + per_node * cluster_size, min, max)``.

    Why it grows with the cluster: the control plane can absorb a roughly fixed number of full
    resyncs per minute, and in a storm every node wants one. Spreading N nodes' starts over a
    window proportional to N keeps the start rate N/W near that budget whatever the fleet size
    (defaults: 1000 nodes -> 20 min, 5000 nodes -> 60 min, about 83 starts a minute).
    """
    raw = window.base + window.per_node * cluster_size
    return float(min(max(raw, window.min), window.max))


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

    ``running``: Docker says the agent is running, so the latest run, if its end is open, is
    in progress (neither failed nor stable) and is skipped.

    Newest first, each run is one of:

    - neutral, skipped: superseded by a start an operator let through (``--force``, override),
      or superseded by a start seen in Docker that no gate approved while its own end is
      unknown (whoever started the container outside the gate also ended this run); or
      stopped on purpose (exit 0, SIGTERM, SIGINT) before ``stable_after``;
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
            after.operator or (after.via == "docker" and run.ended_at is None)
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


def next_grid_slot(not_before: float, window: float, offset: float) -> float:
    """The first time ``e*W + offset*W`` (whole e, from the Unix epoch) at or after not_before.

    Every node of a cluster shares one grid, so N nodes with evenly spread offsets make a flat
    start rate, and the answer depends only on the inputs (invariant 3).
    """
    shift = offset * window
    # The epsilon keeps float error from turning a time exactly on a slot into the next one
    # (slot + W is the excluded end of invariant 3's interval); the check below covers the
    # other side.
    e = math.ceil((not_before - shift) / window - 1e-9)
    slot = e * window + shift
    # Float rounding may land a hair before not_before; step one window on if so.
    if slot < not_before:
        slot += window
    return slot


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


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer. ``next_allowed_at`` is None when allowed (or held indefinitely)."""

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
    event: str = "gate.allowed"
    decided_at: float | None = None
    #: Allowed and a start is to be made (and recorded): False when refused, and when the
    #: agent is already running (nothing to start, nothing to record).
    start: bool = False
    #: Refused because the probe said the control plane is unhealthy: the caller keeps the
    #: deferral in the state (:meth:`AgentState.with_deferral`), so every later caller waits
    #: for the same slot.
    deferred: bool = False

    def to_json(self) -> dict[str, Any]:
        """The decision JSON of the contract."""
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "agent": self.agent,
            "node": self.node,
            "cluster_size": self.cluster_size,
            "window_seconds": self.window_seconds,
            "backoff_level": self.backoff_level,
            "next_allowed_at": None if self.next_allowed_at is None else iso(self.next_allowed_at),
            "forced": self.forced,
            "decided_at": None if self.decided_at is None else iso(self.decided_at),
        }


def decide(
    policy: Policy,
    state: AgentState,
    now: float,
    *,
    force: bool = False,
    reason: str | None = None,
    user: str | None = None,
    control_plane_healthy: bool | None = None,
    running: bool = False,
) -> Decision:
    """Decide whether the agent may start at ``now``: one answer whoever asks (invariant 0).

    The answer depends on nothing but the arguments. Order: an agent that is ``running``
    already (Docker says so) needs no start; an operator's ``--force`` wins; then a hold
    refuses; then an override allows; then the window and the backoff (invariants 2 and 3).
    ``control_plane_healthy`` is None when no probe ran (see :func:`probe_matters`).
    """
    level = backoff_level(state, policy.stable_after, running=running)

    def make(
        allowed: bool,
        why: str,
        nxt: float | None,
        event: str,
        via: Via = "gate",
        forced: bool = False,
        start: bool = True,
        deferred: bool = False,
    ) -> Decision:
        return Decision(
            allowed=allowed,
            reason=why,
            agent=policy.agent,
            node=policy.node,
            cluster_size=policy.cluster_size,
            window_seconds=policy.window,
            backoff_level=level,
            next_allowed_at=None if allowed else nxt,
            forced=forced,
            via=via,
            event=event,
            decided_at=now,
            start=allowed and start,
            deferred=deferred,
        )

    if running:
        return make(True, "already running", None, "gate.already_running", start=False)
    if force:
        who = f" by {user}" if user else ""
        return make(
            True,
            f"forced{who}: {reason or 'no reason given'}",
            None,
            "gate.forced",
            via="force",
            forced=True,
        )

    normal = _window_decision(policy, state, now, level, control_plane_healthy)
    hold = state.hold
    if hold is not None and hold.active(now):
        until = f" until {iso(hold.until)}" if hold.until is not None else " until released"
        nxt: float | None = None
        if hold.until is not None:
            nxt = hold.until if normal.allowed else max(hold.until, normal.next_allowed_at or 0.0)
        return make(False, f"held by {hold.user}{until}: {hold.reason}", nxt, "gate.held")
    ovr = state.override
    if ovr is not None and ovr.active(now):
        until = f" until {iso(ovr.until)}" if ovr.until is not None else ""
        return make(
            True,
            f"override by {ovr.user}{until}: {ovr.reason}",
            None,
            "gate.override",
            via="override",
        )
    return make(
        normal.allowed,
        normal.reason,
        normal.next_allowed_at,
        normal.event,
        deferred=normal.deferred,
    )


@dataclass(frozen=True, slots=True)
class _Normal:
    allowed: bool
    reason: str
    next_allowed_at: float | None
    event: str
    deferred: bool = False


def _window_decision(
    policy: Policy, state: AgentState, now: float, level: int, healthy: bool | None
) -> _Normal:
    """Invariants 2 and 3: the window at level 0, the slot of window ``last + W*m`` above it."""
    w = policy.window
    last_start = latest_start(state, now)
    if last_start is None:
        return _Normal(True, "first start", None, "gate.allowed")
    lost = _lost_history(state)
    if level == 0:
        if now - last_start < w:
            nxt = next_grid_slot(last_start + w, w, policy.offset)
            return _Normal(
                False,
                f"started {format_duration(now - last_start)} ago, within the "
                f"{format_duration(w)} window: next slot in {format_duration(nxt - now)}",
                nxt,
                "gate.refused",
            )
        why = "no start in the last window"
    else:
        m = multiplier(level, policy.max_multiplier)
        slot = next_grid_slot(last_start + w * m, w, policy.offset)
        if now < slot:
            head = (
                f"history unknown ({lost})"
                if lost
                else f"{level} failed run{'s' if level > 1 else ''} in a row"
            )
            return _Normal(
                False,
                f"{head}: backoff level {level} (x{m}), last start "
                f"{format_duration(now - last_start)} ago: next slot in "
                f"{format_duration(slot - now)}",
                slot,
                "gate.refused",
            )
        why = f"backoff level {level} (x{m}): this node's slot has come"
    deferral = state.deferral
    if deferral is not None and deferral.until is not None and now < deferral.until:
        return _Normal(
            False,
            f"deferred at {iso(deferral.set_at)} by the control-plane probe: waiting for "
            f"this node's slot in {format_duration(deferral.until - now)}",
            deferral.until,
            "gate.refused",
        )
    if healthy is False and probe_applies(state, level, policy.stable_after):
        nxt = next_grid_slot(now, w, policy.offset)
        if nxt <= now:
            # Asked exactly at this node's slot (a waiting gate wakes there): the slot is
            # this very refusal, so the next one is a window on. A refusal must name a
            # later time, or a virtual clock (simulate) would re-ask forever.
            nxt += w
        return _Normal(
            False,
            "control plane unhealthy after a failed run: waiting for this node's slot "
            f"in {format_duration(nxt - now)}",
            nxt,
            "gate.refused",
            deferred=True,
        )
    return _Normal(True, why, None, "gate.allowed")


def _lost_history(state: AgentState) -> str | None:
    """The reason of the placeholder run, when the history was lost and nothing ran since."""
    last = state.last_run
    if last is not None and last.via == "unknown":
        return last.reason or "the state file was unreadable"
    return None


def remember(state: AgentState, d: Decision) -> AgentState:
    """The state a refusal leaves behind: a probe's deferral is kept, so the next caller,
    whoever it is, waits for the same slot (invariant 0); other refusals change nothing."""
    if not d.deferred or d.next_allowed_at is None or d.decided_at is None:
        return state
    flag = OperatorFlag("probe", "control plane unhealthy", d.decided_at, d.next_allowed_at)
    return state.with_deferral(flag)


def run_failed(run: Run, stable_after: float) -> bool:
    """Whether a run counts as failed for the control-plane probe.

    Failed: its end was never reported (no record-exit, no Docker State: a node crash or a
    power loss, exactly when the control plane may be down too, and one probe request is
    cheap), or it exited non-zero, or it ended before ``stable_after``. Never a run stopped on
    purpose (exit 0, TERM, INT: an upgrade, ``systemctl restart``), which invariant 2 never
    delays, probe or not.
    """
    if run.ended_at is None:
        return True
    if run.stopped_on_purpose:
        return False
    if run.exit_code is not None and run.exit_code != 0:
        return True
    return run.ended_at - run.started_at < stable_after


def probe_applies(state: AgentState, level: int, stable_after: float) -> bool:
    """Whether a probe that says "unhealthy" refuses: in a crash loop, or after a failed run."""
    last = state.last_run
    return last is not None and (level >= 1 or run_failed(last, stable_after))


def latest_start(state: AgentState, now: float) -> float | None:
    """The latest recorded start, a future one (the clock stepped back) counted as ``now``.

    The latest, not the last appended: with concurrent callers or a clock step, runs are not
    always appended in time order, and the window counts from the latest.
    """
    if not state.runs:
        return None
    return min(max(r.started_at for r in state.runs), now)


def probe_matters(policy: Policy, state: AgentState, now: float) -> bool:
    """Whether a probe's answer could change the decision: only when it would otherwise allow.

    The same test the decision makes, without the probe: nothing to ask when no probe is
    configured, when the window or the slot has not come, or when no run failed.
    """
    if not policy.probe_configured:
        return False
    level = backoff_level(state, policy.stable_after)
    if not probe_applies(state, level, policy.stable_after):
        return False
    return _window_decision(policy, state, now, level, None).allowed
