"""Histories for tests, built with the core's own events (:func:`supervisor.core.events.apply`).

Tests describe a history as "started at t, ended at t + 5 with exit 1"; these helpers turn
that into the events the Gate would apply, so that every state a test decides on is one the
shipped transitions can produce.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Final

from supervisor.core.events import Approved, Asked, Ended, FlagSet, Lost, Outside, Withdrawn, apply
from supervisor.core.state import AgentState, Ask, EndSource, OperatorFlag, Run, Via, clamp_future

__all__ = ["clamp_future"]

#: The container a test's outside (``via: docker``) start ran in.
OUTSIDE_CONTAINER: Final = "c0ffee000000"
_ids = itertools.count(1)


def new_id() -> str:
    """A run id unique in this test session."""
    return f"t{next(_ids)}"


def started(
    s: AgentState,
    t: float,
    via: Via = "gate",
    user: str | None = None,
    reason: str | None = None,
    *,
    run_id: str | None = None,
    replaces: str | None = None,
) -> AgentState:
    """A start at ``t``: approved (gate, force, override), seen in Docker, or a placeholder."""
    rid = run_id or new_id()
    if via == "docker":
        return apply(s, Outside(t, rid, OUTSIDE_CONTAINER))
    if via == "unknown":
        return replace(s, runs=(*s.runs, Run(rid, t, via="unknown", reason=reason)), ask=None)
    return apply(s, Approved(t, rid, via=via, user=user, reason=reason, replaces=replaces))


def ended(
    s: AgentState,
    t: float,
    code: int | None,
    source: EndSource = "record-exit",
    *,
    run_id: str | None = None,
    stop: str | None = None,
) -> AgentState:
    """The latest run (or ``run_id``) ended at ``t`` with ``code``."""
    return apply(s, Ended(t, code, source, run_id, stop))


def held(s: AgentState, flag: OperatorFlag | None) -> AgentState:
    """A hold set (or cleared with None)."""
    if flag is None:
        return replace(s, hold=None)
    return apply(s, FlagSet("hold", flag))


def overridden(s: AgentState, flag: OperatorFlag | None) -> AgentState:
    """An override set (or cleared with None)."""
    if flag is None:
        return replace(s, override=None)
    return apply(s, FlagSet("override", flag))


def deferred(s: AgentState, flag: OperatorFlag | None) -> AgentState:
    """A probe's deferral, as schema 2 kept it: asked at ``set_at``, told to come at ``until``."""
    if flag is None:
        return replace(s, ask=None)
    return apply(s, Asked(Ask(flag.set_at, flag.until, "probe")))


def asked(s: AgentState, at: float, until: float | None = None, why: str = "") -> AgentState:
    """A start first asked for at ``at`` (and told to come back at ``until``)."""
    return apply(s, Asked(Ask(at, until, why)))


def withdrawn(s: AgentState) -> AgentState:
    """The latest run withdrawn (an approval no start followed)."""
    last = s.last_run
    assert last is not None
    return apply(s, Withdrawn(last.id))


def lost(agent: str, now: float, why: str) -> AgentState:
    """The state of a lost history: one placeholder run at ``now``."""
    return apply(AgentState(agent), Lost(now, new_id(), why))


def crash_loop(n: int, start: float, window: float, *, reported: bool = True) -> AgentState:
    """``n`` runs, ``10 * window`` apart, that each failed 5 s after starting."""
    s = AgentState("cilium-agent")
    for i in range(n):
        t = start + i * 10 * window
        s = started(s, t)
        if reported:
            s = ended(s, t + 5, 1)
    return s
