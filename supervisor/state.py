"""The per-agent state: a history of runs and the operator's hold and override.

Pure values and pure transitions; :mod:`supervisor.store` is the only module that reads or
writes the file. Times are seconds since the Unix epoch (UTC) in memory and ISO 8601 UTC
strings on disk, so that an operator reading the file sees wall-clock times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

SCHEMA_VERSION: Final = 1
#: Runs kept in the history: far more than the backoff needs (the multiplier saturates after a
#: few levels), enough for an operator to see a day of a crash loop.
MAX_RUNS: Final = 50
#: The range of times a state file may hold: 1970-01-01 to 9000-01-01 (UTC).
MIN_TIMESTAMP: Final = 0.0
MAX_TIMESTAMP: Final = 221845392000.0

Via = Literal["gate", "force", "override"]
EndSource = Literal["record-exit", "docker", "inferred"]
_VIAS: Final = ("gate", "force", "override")
_END_SOURCES: Final = ("record-exit", "docker", "inferred")


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
        """How long the run lasted, or has lasted so far if its end is unknown."""
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)

    @property
    def operator(self) -> bool:
        """True when an operator let this start through (``--force`` or an override)."""
        return self.via != "gate"


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

    @property
    def last_run(self) -> Run | None:
        """The most recent run, if any."""
        return self.runs[-1] if self.runs else None

    def record_start(
        self, now: float, *, via: Via = "gate", user: str | None = None, reason: str | None = None
    ) -> AgentState:
        """A new run begins at ``now``; an earlier run whose end is unknown ended at ``now``."""
        runs = list(self.runs)
        if runs and runs[-1].ended_at is None:
            runs[-1] = replace(
                runs[-1], ended_at=max(now, runs[-1].started_at), end_source="inferred"
            )
        runs.append(Run(started_at=now, via=via, user=user, reason=reason))
        return replace(self, runs=tuple(runs[-MAX_RUNS:]))

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
        """Times after ``now`` (the clock stepped back) become ``now``; self if there are none.

        Persisted by the gate, so the backoff counts from when the step was first seen: kept
        only in memory, a start a day ahead would look like "just now" on every call, and the
        agent would wait out the whole step instead of one backoff.
        """
        if not any(r.started_at > now or (r.ended_at or 0.0) > now for r in self.runs):
            return self
        runs = tuple(
            replace(
                r,
                started_at=min(r.started_at, now),
                ended_at=None if r.ended_at is None else min(r.ended_at, now),
            )
            for r in self.runs
        )
        return replace(self, runs=runs)

    def with_hold(self, flag: OperatorFlag | None) -> AgentState:
        """Set or clear the hold."""
        return replace(self, hold=flag)

    def with_override(self, flag: OperatorFlag | None) -> AgentState:
        """Set or clear the override."""
        return replace(self, override=flag)


# --- serialization ------------------------------------------------------------------------


def _opt_ts(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def _flag_doc(flag: OperatorFlag | None) -> dict[str, Any] | None:
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
        "hold": _flag_doc(state.hold),
        "override": _flag_doc(state.override),
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


def _run(value: object, i: int) -> Run:
    what = f"runs[{i}]"
    if not isinstance(value, dict):
        raise StateFormatError(f"{what} is not an object")
    via = value.get("via", "gate")
    if via not in _VIAS:
        raise StateFormatError(f"{what}.via is {via!r}")
    source = value.get("end_source")
    if source is not None and source not in _END_SOURCES:
        raise StateFormatError(f"{what}.end_source is {source!r}")
    code = value.get("exit_code")
    if code is not None and (
        isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31
    ):
        raise StateFormatError(f"{what}.exit_code is {code!r}")
    ended = value.get("ended_at")
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
    if schema != SCHEMA_VERSION:
        raise StateFormatError(f"schema version is {schema!r}, this version reads {SCHEMA_VERSION}")
    if doc.get("agent") != agent:
        raise StateFormatError(f"the state is for agent {doc.get('agent')!r}, not {agent!r}")
    runs = doc.get("runs", [])
    if not isinstance(runs, list):
        raise StateFormatError("runs is not a list")
    parsed = tuple(_run(r, i) for i, r in enumerate(runs[-MAX_RUNS:]))
    for r in parsed:
        if not all(math.isfinite(t) for t in (r.started_at, r.ended_at or 0.0)):
            raise StateFormatError("a run has a time that is not finite")
    return AgentState(
        agent=agent,
        runs=parsed,
        hold=_flag(doc.get("hold"), "hold"),
        override=_flag(doc.get("override"), "override"),
    )
