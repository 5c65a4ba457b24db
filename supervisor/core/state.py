"""The per-agent state: a history of runs and the operator's hold and override.

Pure values and pure transitions; :mod:`supervisor.storage.store` is the only module that reads or
writes the file. Times are seconds since the Unix epoch (UTC) in memory and ISO 8601 UTC
strings on disk, so that an operator reading the file sees wall-clock times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

#: Version 2: a run's end is a fact or unknown, never inferred from the next start; runs may be
#: starts seen in Docker (``via: docker``) or the placeholder for a lost history (``unknown``).
#: Version 1 files are read (an inferred end becomes unknown) and written back as version 2.
SCHEMA_VERSION: Final = 2
_READABLE_SCHEMAS: Final = (1, 2)
#: Runs kept in the history: far more than the backoff needs (the multiplier saturates after a
#: few levels), enough for an operator to see a day of a crash loop.
MAX_RUNS: Final = 50
#: The range of times a state file may hold: 1970-01-01 to 9000-01-01 (UTC).
MIN_TIMESTAMP: Final = 0.0
MAX_TIMESTAMP: Final = 221845392000.0

#: Who let a run start: the gate; an operator (``force``, ``override``); nobody we asked
#: (``docker``: a real start seen in the container's State, e.g. ``docker start`` or a container
#: recreated by compose); or ``unknown``: the placeholder put in when the history was lost (a
#: corrupt state file), so that unknown history is never taken for a clean one (invariant 9).
Via = Literal["gate", "force", "override", "docker", "unknown"]
#: Who reported the end of a run. There is no inferred end: an end nobody reported is unknown.
EndSource = Literal["record-exit", "docker"]
_VIAS: Final = ("gate", "force", "override", "docker", "unknown")
_END_SOURCES: Final = ("record-exit", "docker")
#: Operator-let-through starts: they neither count against the window (invariant 4) nor make
#: the run they supersede a failure (invariant 1).
OPERATOR_VIAS: Final = ("force", "override")
#: Exit codes of a run stopped on purpose: 0, and SIGINT/SIGTERM as a shell reports them
#: (128 + 2, 128 + 15): ``systemctl stop|restart``, ``docker stop``, Ctrl-C.
STOPPED_ON_PURPOSE: Final = (0, 130, 143)


class StateFormatError(ValueError):
    """The state document is not a valid state of this schema; the text says what is wrong."""


def iso(ts: float) -> str:
    """Seconds since the epoch -> ``2026-11-29T01:02:03.456789Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_seconds(ts: float) -> str:
    """Seconds since the epoch -> ``2026-11-29T01:02:03Z`` (whole seconds, for humans)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: object, what: str) -> float:
    """ISO 8601 with a time zone -> seconds since the epoch, or StateFormatError."""
    if not isinstance(text, str) or len(text) > 40:
        raise StateFormatError(f"{what} is not a timestamp: {text!r}")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise StateFormatError(f"{what} is not a timestamp: {text!r}") from None
    if dt.tzinfo is None:
        raise StateFormatError(f"{what} has no time zone: {text!r}")
    ts = dt.timestamp()
    # Outside these bounds a time cannot be written back (datetime covers years 1-9999 only,
    # before time zones), and no real start lies there: the file is corrupt.
    if not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:
        raise StateFormatError(f"{what} is out of range: {text!r}")
    return ts


@dataclass(frozen=True, slots=True)
class Run:
    """One start of the agent and, once known, its end."""

    started_at: float
    via: Via = "gate"
    ended_at: float | None = None
    exit_code: int | None = None
    end_source: EndSource | None = None
    user: str | None = None
    reason: str | None = None

    def duration(self, now: float) -> float:
        """How long the run lasted, or has lasted so far if its end is unknown (for display)."""
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)

    @property
    def operator(self) -> bool:
        """True when an operator let this start through (``--force`` or an override)."""
        return self.via in OPERATOR_VIAS

    @property
    def stopped_on_purpose(self) -> bool:
        """The run's reported end was a deliberate stop (exit 0, SIGTERM, SIGINT)."""
        return self.ended_at is not None and self.exit_code in STOPPED_ON_PURPOSE


@dataclass(frozen=True, slots=True)
class OperatorFlag:
    """A hold or an override: who set it, why, when, and until when (None: until released)."""

    user: str
    reason: str
    set_at: float
    until: float | None = None

    def active(self, now: float) -> bool:
        """Whether the flag is in force at ``now``."""
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class AgentState:
    """Everything the gate knows about one agent on this node."""

    agent: str
    runs: tuple[Run, ...] = ()
    hold: OperatorFlag | None = None
    override: OperatorFlag | None = None
    #: A start the control-plane probe deferred to this node's slot (``user`` "probe"): kept
    #: in the state, so that a fresh gate (after a reboot, a restart of every supervisor)
    #: waits for the same slot instead of starting with the whole fleet when the control
    #: plane answers again. Cleared by the next recorded start.
    deferral: OperatorFlag | None = None

    @property
    def last_run(self) -> Run | None:
        """The most recent run, if any."""
        return self.runs[-1] if self.runs else None

    def record_start(
        self, now: float, *, via: Via = "gate", user: str | None = None, reason: str | None = None
    ) -> AgentState:
        """A new run begins at ``now``.

        An earlier run whose end nobody reported keeps an unknown end: taking the next start as
        its end would make every run of a crash loop look as long as its wait, hence stable.
        """
        runs = (*self.runs, Run(started_at=now, via=via, user=user, reason=reason))
        return replace(self, runs=runs[-MAX_RUNS:], deferral=None)

    def without_last_run(self) -> AgentState:
        """The latest run withdrawn: an approval that no real start followed (invariant 7)."""
        return replace(self, runs=self.runs[:-1])

    @classmethod
    def history_lost(cls, agent: str, now: float, why: str) -> AgentState:
        """The state after the history was lost: one run started ``now``, its end unknown.

        Unknown history is not a clean history (invariant 9): the agent is treated as at
        backoff level 1 from the moment the problem was found, so the next start waits for the
        node's slot instead of joining a fleet-wide wave (a downgrade across the fleet would
        otherwise quarantine every node's file and let every agent start at once).
        """
        return cls(agent=agent, runs=(Run(started_at=now, via="unknown", reason=why),))

    def record_exit(
        self, ended_at: float, exit_code: int | None, *, source: EndSource = "record-exit"
    ) -> AgentState:
        """The latest run ended. A second report for an ended run changes nothing."""
        last = self.last_run
        if last is None or last.ended_at is not None:
            return self
        run = replace(
            last, ended_at=max(ended_at, last.started_at), exit_code=exit_code, end_source=source
        )
        return replace(self, runs=(*self.runs[:-1], run))

    def clamp_future(self, now: float) -> AgentState:
        """Pin what a clock step back left in the future to ``now``; self if nothing is.

        Runs: times after ``now`` become ``now``. Hold and override: one set in the future is
        moved to ``now`` with the duration the operator gave, so its expiry is at most that
        duration away (invariant 8): a step back of a day must not keep a one-hour override
        for 25 hours. Persisted by the gate, so everything counts from when the step was first
        seen: kept only in memory, a start a day ahead would look like "just now" on every
        call, and the agent would wait out the whole step instead of one backoff.
        """
        runs_ahead = any(r.started_at > now or (r.ended_at or 0.0) > now for r in self.runs)
        hold, override = _pin_flag(self.hold, now), _pin_flag(self.override, now)
        deferral = _pin_flag(self.deferral, now)
        flags_pinned = (hold, override, deferral) != (self.hold, self.override, self.deferral)
        if not runs_ahead and not flags_pinned:
            return self
        runs = tuple(
            replace(
                r,
                started_at=min(r.started_at, now),
                ended_at=None if r.ended_at is None else min(r.ended_at, now),
            )
            for r in self.runs
        )
        return replace(self, runs=runs, hold=hold, override=override, deferral=deferral)

    def with_deferral(self, flag: OperatorFlag | None) -> AgentState:
        """Set or clear the probe's deferral."""
        return replace(self, deferral=flag)

    def with_hold(self, flag: OperatorFlag | None) -> AgentState:
        """Set or clear the hold."""
        return replace(self, hold=flag)

    def with_override(self, flag: OperatorFlag | None) -> AgentState:
        """Set or clear the override."""
        return replace(self, override=flag)


def _pin_flag(flag: OperatorFlag | None, now: float) -> OperatorFlag | None:
    """A flag set after ``now`` (the clock stepped back) moved to ``now``, keeping its length."""
    if flag is None or flag.set_at <= now:
        return flag
    until = None if flag.until is None else now + max(0.0, flag.until - flag.set_at)
    return replace(flag, set_at=now, until=until)


# --- serialization ------------------------------------------------------------------------


def _opt_ts(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def flag_document(flag: OperatorFlag | None) -> dict[str, Any] | None:
    """A hold or an override as the state file (and ``status --json``) writes it."""
    if flag is None:
        return None
    return {
        "user": flag.user,
        "reason": flag.reason,
        "set_at": iso(flag.set_at),
        "until": _opt_ts(flag.until),
    }


def to_document(state: AgentState, now: float) -> dict[str, Any]:
    """The JSON document written to disk."""
    return {
        "schema": SCHEMA_VERSION,
        "agent": state.agent,
        "updated_at": iso(now),
        "hold": flag_document(state.hold),
        "deferral": flag_document(state.deferral),
        "override": flag_document(state.override),
        "runs": [
            {
                "started_at": iso(r.started_at),
                "via": r.via,
                "ended_at": _opt_ts(r.ended_at),
                "exit_code": r.exit_code,
                "end_source": r.end_source,
                "user": r.user,
                "reason": r.reason,
            }
            for r in state.runs
        ],
    }


def _field(doc: dict[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise StateFormatError(f"{what} has no {key!r}")
    return doc[key]


def _opt_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise StateFormatError(f"{what} is not text")
    return value


def _flag(value: object, what: str) -> OperatorFlag | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateFormatError(f"{what} is not an object")
    until = value.get("until")
    return OperatorFlag(
        user=_opt_text(_field(value, "user", what), f"{what}.user") or "unknown",
        reason=_opt_text(_field(value, "reason", what), f"{what}.reason") or "",
        set_at=parse_iso(_field(value, "set_at", what), f"{what}.set_at"),
        until=None if until is None else parse_iso(until, f"{what}.until"),
    )


def _run(value: object, i: int, schema: int) -> Run:
    what = f"runs[{i}]"
    if not isinstance(value, dict):
        raise StateFormatError(f"{what} is not an object")
    via = value.get("via", "gate")
    if via not in (_VIAS if schema >= 2 else ("gate", "force", "override")):
        raise StateFormatError(f"{what}.via is {via!r}")
    source = value.get("end_source")
    ended = value.get("ended_at")
    if source == "inferred" and schema == 1:
        # Version 1 took the next start as the end of a run nobody reported: not a fact.
        source, ended = None, None
    if source is not None and source not in _END_SOURCES:
        raise StateFormatError(f"{what}.end_source is {source!r}")
    code = value.get("exit_code")
    if code is not None and (
        isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31
    ):
        raise StateFormatError(f"{what}.exit_code is {code!r}")
    return Run(
        started_at=parse_iso(_field(value, "started_at", what), f"{what}.started_at"),
        via=via,
        ended_at=None if ended is None else parse_iso(ended, f"{what}.ended_at"),
        exit_code=code,
        end_source=source,
        user=_opt_text(value.get("user"), f"{what}.user"),
        reason=_opt_text(value.get("reason"), f"{what}.reason"),
    )


def from_document(doc: object, agent: str) -> AgentState:
    """Validate a parsed JSON document into an :class:`AgentState`, or StateFormatError."""
    if not isinstance(doc, dict):
        raise StateFormatError("the state is not a JSON object")
    schema = doc.get("schema")
    if type(schema) is not int or schema not in _READABLE_SCHEMAS:
        raise StateFormatError(
            f"schema version is {schema!r}, this version reads "
            f"{', '.join(map(str, _READABLE_SCHEMAS))}"
        )
    if doc.get("agent") != agent:
        raise StateFormatError(f"the state is for agent {doc.get('agent')!r}, not {agent!r}")
    runs = doc.get("runs", [])
    if not isinstance(runs, list):
        raise StateFormatError("runs is not a list")
    parsed = tuple(_run(r, i, schema) for i, r in enumerate(runs[-MAX_RUNS:]))
    for r in parsed:
        if not all(math.isfinite(t) for t in (r.started_at, r.ended_at or 0.0)):
            raise StateFormatError("a run has a time that is not finite")
    return AgentState(
        agent=agent,
        runs=parsed,
        hold=_flag(doc.get("hold"), "hold"),
        override=_flag(doc.get("override"), "override"),
        deferral=_flag(doc.get("deferral"), "deferral"),
    )
