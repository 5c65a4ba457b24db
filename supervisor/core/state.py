"""The per-agent state: a history of runs, the operator's flags, the pending ask, the clock anchor.

Pure values. They change only through :func:`supervisor.core.events.apply`, and
:mod:`supervisor.storage.store` is the only module that reads or writes the file. Times are
seconds since the Unix epoch (UTC) in memory, and ISO 8601 UTC strings with microseconds on
disk, so that an operator reading the file sees wall-clock times.

Every time the core computes or keeps is a whole number of microseconds (:func:`micro`,
:func:`micro_ceil`): a time survives the round trip through the file exactly, so the time a
refusal names is the very time the next caller reads back, and a gate that wakes at it is
allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

from supervisor.base.clock import Now

#: Version 3: every run has an id; a start's first ask is kept (``ask``, which replaces the
#: probe's ``deferral``); the clock anchor. Versions 1 and 2 are read and written back as 3.
SCHEMA_VERSION: Final = 3
_READABLE_SCHEMAS: Final = (1, 2, 3)
#: Runs kept in the history: far more than the backoff needs (the multiplier saturates after a
#: few levels), enough for an operator to see a day of a crash loop. A longer history read
#: from a file is trimmed to these, not refused.
MAX_RUNS: Final = 50
#: The range of times a state file may hold: 1970-01-01 to 9000-01-01 (UTC).
MIN_TIMESTAMP: Final = 0.0
MAX_TIMESTAMP: Final = 221845392000.0
#: A wall clock that moved this much against the boot clock was stepped (NTP slews far less).
STEP_TOLERANCE: Final = 1.0

#: Who let a run start: the gate; an operator (``force``, ``override``); nobody we asked
#: (``docker``: a real start seen in the container's State, e.g. ``docker start`` or a container
#: recreated by compose); or ``unknown``: the placeholder put in when the history was lost (a
#: corrupt state file), so that unknown history is never taken for a clean one (invariant 9).
Via = Literal["gate", "force", "override", "docker", "unknown"]
#: Who reported the end of a run. There is no inferred end: an end nobody reported is unknown.
EndSource = Literal["record-exit", "docker", "exec"]
_VIAS: Final = ("gate", "force", "override", "docker", "unknown")
_END_SOURCES: Final = ("record-exit", "docker", "exec")
#: Operator-let-through starts: they neither count against the window (invariant 4) nor make
#: the run they supersede a failure (invariant 1).
OPERATOR_VIAS: Final = ("force", "override")
#: Starts that someone approved (as opposed to one only seen in Docker, or a placeholder).
APPROVED_VIAS: Final = ("gate", "force", "override")
#: Exit codes of a run stopped on purpose: 0, and SIGINT/SIGTERM as a shell reports them
#: (128 + 2, 128 + 15): ``systemctl stop|restart``, ``docker stop``, Ctrl-C.
STOPPED_ON_PURPOSE: Final = (0, 130, 143)


class StateFormatError(ValueError):
    """The state document is not a valid state of this schema; the text says what is wrong."""


#: Microseconds in a second: the resolution of every time the state keeps.
MICRO: Final = 1_000_000


def micro(ts: float) -> float:
    """``ts`` to the nearest microsecond: the value the state file gives back for it."""
    return round(ts, 6)


def micro_units(ts: float) -> int:
    """The earliest whole microsecond at or after ``ts``, counted from the epoch: the
    smallest ``u`` with ``u / MICRO >= ts`` (so a time that is a whole microsecond is itself)."""
    us = math.floor(ts * MICRO)
    while us / MICRO < ts:
        us += 1
    while (us - 1) / MICRO >= ts:
        us -= 1
    return us


def micro_ceil(ts: float) -> float:
    """The earliest whole microsecond at or after ``ts`` (a slot never moves earlier)."""
    return micro_units(ts) / MICRO


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
    """One start of the agent and, once known, its end.

    ``id`` names the run (invariant 12): the gate that approves a start gives it, the agent's
    environment carries it, and a report of an end closes only the run it names.
    ``stop`` says who stopped the run on purpose when its exit status alone does not (a
    ``docker stop`` that ended in SIGKILL, a ``compose down``); ``replaces`` names the run an
    approved replacement (a compose upgrade) supersedes; ``container`` is the Docker
    container the run ran in, once Docker showed its start.
    """

    id: str
    started_at: float
    via: Via = "gate"
    ended_at: float | None = None
    exit_code: int | None = None
    end_source: EndSource | None = None
    stop: str | None = None
    replaces: str | None = None
    container: str | None = None
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
    def approved(self) -> bool:
        """True when someone approved this start (the gate or an operator)."""
        return self.via in APPROVED_VIAS

    @property
    def stopped_on_purpose(self) -> bool:
        """The run's reported end was a deliberate stop: exit 0, SIGTERM, SIGINT, or a stop
        signal someone sent (``stop``)."""
        return self.ended_at is not None and (
            self.exit_code in STOPPED_ON_PURPOSE or self.stop is not None
        )


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
class Ask:
    """A start asked for and not yet made (invariant 2): when it was first asked for, and the
    latest time a refusal told the caller to come back (its slot, or the probe's deferral).

    Kept in the state so that every caller, whoever it is and whenever it starts (a fresh gate
    after a reboot, a restarted daemon, ``status``), gets the same slot. Cleared by a start, a
    ``release`` and a ``reset``.
    """

    at: float
    until: float | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class DebugSession:
    """An operator's debug session: the agent stopped on purpose and held, and a debug
    container of its image (same mounts, network, privileges) running another entrypoint for
    the operator to ``docker exec`` into. The history ignores that container."""

    container: str
    image: str
    entrypoint: str
    user: str
    reason: str
    started_at: float


@dataclass(frozen=True, slots=True)
class Anchor:
    """The wall clock read ``wall`` when the boot clock of boot ``boot_id`` read ``boot``: the
    frame the state's times are written in (invariant 8)."""

    boot_id: str
    wall: float
    boot: float


@dataclass(frozen=True, slots=True)
class AgentState:
    """Everything the gate knows about one agent on this node."""

    agent: str
    runs: tuple[Run, ...] = ()
    hold: OperatorFlag | None = None
    override: OperatorFlag | None = None
    ask: Ask | None = None
    anchor: Anchor | None = None
    debug: DebugSession | None = None

    @property
    def last_run(self) -> Run | None:
        """The most recent run, if any."""
        return self.runs[-1] if self.runs else None

    def run(self, run_id: str) -> Run | None:
        """The run named ``run_id``, if the history holds it."""
        return next((r for r in reversed(self.runs) if r.id == run_id), None)

    @property
    def history_lost(self) -> bool:
        """The history was lost (a corrupt file) and nothing has run since."""
        last = self.last_run
        return last is not None and last.via == "unknown"


# --- clocks: pin the future, follow the boot clock -----------------------------------------------


def _pin_flag(flag: OperatorFlag | None, now: float) -> OperatorFlag | None:
    """A flag set after ``now`` (the clock stepped back) moved to ``now``, keeping its length."""
    if flag is None or flag.set_at <= now:
        return flag
    until = None if flag.until is None else micro(now + max(0.0, flag.until - flag.set_at))
    return replace(flag, set_at=now, until=until)


def clamp_future(state: AgentState, now: float) -> AgentState:
    """Pin what a clock step back left in the future to ``now``; ``state`` if nothing is.

    Runs: times after ``now`` become ``now``. Hold and override: one set in the future is moved
    to ``now`` with the duration the operator gave, so its expiry is at most that duration away
    (invariant 8): a step back of a day must not keep a one-hour override for 25 hours. An ask
    in the future is asked ``now``. Only for facts the boot clock cannot place (another boot);
    :func:`rebase` places the others exactly.
    """
    runs_ahead = any(r.started_at > now or (r.ended_at or 0.0) > now for r in state.runs)
    hold, override = _pin_flag(state.hold, now), _pin_flag(state.override, now)
    ask = state.ask
    if ask is not None and ask.at > now:
        ask = Ask(now, None, ask.why)
    if not runs_ahead and (hold, override, ask) == (state.hold, state.override, state.ask):
        return state
    runs = tuple(
        replace(
            r,
            started_at=min(r.started_at, now),
            ended_at=None if r.ended_at is None else min(r.ended_at, now),
        )
        for r in state.runs
    )
    return replace(state, runs=runs, hold=hold, override=override, ask=ask)


def rebase(state: AgentState, now: Now) -> AgentState:
    """The state in the frame of the wall clock as it reads ``now`` (invariant 8).

    Facts written in this boot are placed by the boot clock: if the wall clock was stepped by
    ``delta`` since the state was last written (the anchor), each such time moves by ``delta``,
    so that "ten minutes ago" stays ten minutes ago, forward jumps included. Facts from an
    earlier boot cannot be placed that way; those left in the future are pinned to now
    (:func:`clamp_future`). The anchor is renewed only when it changes something, so a state
    that needs nothing is returned as it is (and not written again).
    """
    if now.boot is None or now.boot_id is None:
        return clamp_future(state, now.wall)
    if not state.runs and (state.hold, state.override, state.ask) == (None, None, None):
        return state  # no fact to place: no anchor needed (and nothing to write)
    fresh = Anchor(now.boot_id, now.wall, now.boot)
    a = state.anchor
    if a is None or a.boot_id != now.boot_id or now.boot < a.boot:
        # Another boot (or a boot clock that ran backwards, which no real one does): the boot
        # clock cannot place these facts.
        return replace(clamp_future(state, now.wall), anchor=fresh)
    delta = (now.wall - a.wall) - (now.boot - a.boot)
    if abs(delta) < STEP_TOLERANCE:
        return clamp_future(state, now.wall)
    booted = a.wall - a.boot - STEP_TOLERANCE

    def move(t: float) -> float:
        return micro(t + delta) if t >= booted else t

    def move_opt(t: float | None) -> float | None:
        return None if t is None else move(t)

    def move_flag(f: OperatorFlag | None) -> OperatorFlag | None:
        if f is None or f.set_at < booted:
            return f
        return replace(f, set_at=move(f.set_at), until=move_opt(f.until))

    ask = state.ask
    if ask is not None and ask.at >= booted:
        ask = Ask(move(ask.at), move_opt(ask.until), ask.why)
    moved = replace(
        state,
        runs=tuple(
            replace(r, started_at=move(r.started_at), ended_at=move_opt(r.ended_at))
            for r in state.runs
        ),
        hold=move_flag(state.hold),
        override=move_flag(state.override),
        ask=ask,
        anchor=fresh,
    )
    return clamp_future(moved, now.wall)


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


def ask_document(ask: Ask | None) -> dict[str, Any] | None:
    """The pending ask as the state file (and ``status --json``) writes it."""
    if ask is None:
        return None
    return {"at": iso(ask.at), "until": _opt_ts(ask.until), "why": ask.why}


def debug_document(d: DebugSession | None) -> dict[str, Any] | None:
    """A debug session as the state file (and ``status --json``) writes it."""
    if d is None:
        return None
    return {
        "container": d.container,
        "image": d.image,
        "entrypoint": d.entrypoint,
        "user": d.user,
        "reason": d.reason,
        "started_at": iso(d.started_at),
    }


def run_document(r: Run) -> dict[str, Any]:
    """One run as the state file writes it."""
    return {
        "id": r.id,
        "started_at": iso(r.started_at),
        "via": r.via,
        "ended_at": _opt_ts(r.ended_at),
        "exit_code": r.exit_code,
        "end_source": r.end_source,
        "stop": r.stop,
        "replaces": r.replaces,
        "container": r.container,
        "user": r.user,
        "reason": r.reason,
    }


def to_document(state: AgentState, now: float) -> dict[str, Any]:
    """The JSON document written to disk."""
    a = state.anchor
    return {
        "schema": SCHEMA_VERSION,
        "agent": state.agent,
        "updated_at": iso(now),
        "clock": None
        if a is None
        else {"boot_id": a.boot_id, "wall": iso(a.wall), "boot": round(a.boot, 6)},
        "hold": flag_document(state.hold),
        "override": flag_document(state.override),
        "ask": ask_document(state.ask),
        "debug": debug_document(state.debug),
        "runs": [run_document(r) for r in state.runs],
    }


def _field(doc: dict[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise StateFormatError(f"{what} has no {key!r}")
    return doc[key]


def _opt_text(value: object, what: str, limit: int = 4096) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
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


def _ask(value: object, what: str) -> Ask | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateFormatError(f"{what} is not an object")
    until = value.get("until")
    return Ask(
        at=parse_iso(_field(value, "at", what), f"{what}.at"),
        until=None if until is None else parse_iso(until, f"{what}.until"),
        why=_opt_text(value.get("why"), f"{what}.why") or "",
    )


def _debug(value: object) -> DebugSession | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateFormatError("debug is not an object")

    def text(key: str) -> str:
        got = _opt_text(_field(value, key, "debug"), f"debug.{key}")
        if got is None:
            raise StateFormatError(f"debug.{key} is empty")
        return got

    return DebugSession(
        container=text("container"),
        image=text("image"),
        entrypoint=text("entrypoint"),
        user=text("user"),
        reason=text("reason"),
        started_at=parse_iso(_field(value, "started_at", "debug"), "debug.started_at"),
    )


def _anchor(value: object) -> Anchor | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateFormatError("clock is not an object")
    boot = value.get("boot")
    if isinstance(boot, bool) or not isinstance(boot, int | float) or not math.isfinite(boot):
        raise StateFormatError(f"clock.boot is {boot!r}")
    ident = _opt_text(_field(value, "boot_id", "clock"), "clock.boot_id", 100)
    if not ident:
        raise StateFormatError("clock.boot_id is empty")
    return Anchor(ident, parse_iso(_field(value, "wall", "clock"), "clock.wall"), float(boot))


def legacy_run_id(started_at: float) -> str:
    """The id of a run read from a file written before runs had ids (schema 1 and 2)."""
    return f"legacy-{round(started_at * 1_000_000):x}"


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
    started = parse_iso(_field(value, "started_at", what), f"{what}.started_at")
    if schema >= 3:
        run_id = _opt_text(_field(value, "id", what), f"{what}.id", 100)
        if not run_id:
            raise StateFormatError(f"{what}.id is empty")
    else:
        run_id = legacy_run_id(started)
    return Run(
        id=run_id,
        started_at=started,
        via=via,
        ended_at=None if ended is None else parse_iso(ended, f"{what}.ended_at"),
        exit_code=code,
        end_source=source,
        stop=_opt_text(value.get("stop"), f"{what}.stop"),
        replaces=_opt_text(value.get("replaces"), f"{what}.replaces", 100),
        container=_opt_text(value.get("container"), f"{what}.container", 100),
        user=_opt_text(value.get("user"), f"{what}.user"),
        reason=_opt_text(value.get("reason"), f"{what}.reason"),
    )


def from_document(doc: object, agent: str) -> AgentState:
    """Validate a parsed JSON document into an :class:`AgentState`, or StateFormatError.

    A history longer than :data:`MAX_RUNS` is a valid history: its newest runs are kept.
    """
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
    debug = None
    if schema >= 3:
        ask = _ask(doc.get("ask"), "ask")
        anchor = _anchor(doc.get("clock"))
        debug = _debug(doc.get("debug"))
    else:
        # Version 2 kept a probe's deferral: the start was asked for at set_at and told to
        # come back at until.
        deferral = _flag(doc.get("deferral"), "deferral")
        ask = None if deferral is None else Ask(deferral.set_at, deferral.until, "probe")
        anchor = None
    return AgentState(
        agent=agent,
        runs=parsed,
        hold=_flag(doc.get("hold"), "hold"),
        override=_flag(doc.get("override"), "override"),
        ask=ask,
        anchor=anchor,
        debug=debug,
    )
