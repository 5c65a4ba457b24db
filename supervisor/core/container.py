"""The agent's container as Docker reports it, and the history reconciled with it.

Pure: the State as a value (:class:`ContainerInfo`) and :func:`reconcile`. The Docker calls
that fetch it are :mod:`supervisor.gate.inspect`.

Why reconcile (invariant 7): the state file holds what the gate approved; Docker holds what
happened. An approval that no real start followed (an interrupted ``compose up``, a start
that failed) must not take a slot, and a real start that no gate approved (compose recreated
the container, someone ran ``docker start``) must count, or the backoff would be computed
from fiction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from supervisor.base.errors import ConfigError
from supervisor.core.state import AgentState, Run

#: Tolerance between the start the gate recorded and Docker's StartedAt of the same run
#: (clock granularity; Docker's stamp comes a little after the record).
SAME_RUN_SLACK: Final = 1.0
#: Default of ``docker.grace``: how long an approval may wait for Docker's start.
DEFAULT_GRACE: Final = 120.0

_DOCKER_TIME: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def parse_docker_time(text: object) -> float | None:
    """Docker's RFC 3339 time with nanoseconds -> seconds since the epoch; None for "never".

    Docker writes ``0001-01-01T00:00:00Z`` for a time that has not happened (a container that
    never started); Python's ``fromisoformat`` takes at most microseconds, hence the trimming.
    """
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    m = _DOCKER_TIME.fullmatch(text.strip())
    if m is None:
        return None
    frac = (m.group(2) or "")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}").timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the daemon needs from ``docker inspect``."""

    id: str
    name: str
    running: bool
    status: str
    exit_code: int | None
    started_at: float | None
    finished_at: float | None
    restart_policy: str
    auto_remove: bool

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> ContainerInfo:
        """Parse the inspect document (``container.attrs``)."""
        st = attrs.get("State") or {}
        host = attrs.get("HostConfig") or {}
        policy = (host.get("RestartPolicy") or {}).get("Name") or "no"
        code = st.get("ExitCode")
        return cls(
            id=str(attrs.get("Id", "")),
            name=str(attrs.get("Name", "")).lstrip("/"),
            running=bool(st.get("Running")),
            status=str(st.get("Status", "")),
            exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            started_at=parse_docker_time(st.get("StartedAt")),
            finished_at=parse_docker_time(st.get("FinishedAt")),
            restart_policy=str(policy),
            auto_remove=bool(host.get("AutoRemove")),
        )


def check_supervisable(info: ContainerInfo) -> None:
    """Refuse (ConfigError, exit 78) a container the daemon cannot gate."""
    if info.restart_policy not in ("", "no"):
        raise ConfigError(
            f'container {info.name}: restart policy is {info.restart_policy!r}, not "no": '
            "Docker would restart it inside the engine, behind the gate's back; "
            f"run 'docker update --restart=no {info.name}' (compose: restart: \"no\")"
        )
    if info.auto_remove:
        raise ConfigError(
            f"container {info.name} is removed when it exits (--rm), so it could not be "
            "started again; create it without --rm"
        )


Outcome = Literal["running", "outside", "exited", "pending", "withdrawn", "unchanged"]


def _approval(run_via: str) -> bool:
    return run_via in ("gate", "force", "override")


def reconcile(
    state: AgentState, info: ContainerInfo, now: float, grace: float = DEFAULT_GRACE
) -> tuple[AgentState, Outcome]:
    """Bring the history in line with the container's State (pure; invariant 7).

    Docker's StartedAt ``d`` belongs to the latest run when it lies within
    ``[start - SAME_RUN_SLACK, start + grace]`` of an approval (the gate approves, then compose
    or the daemon starts the container), or within the slack of a start seen earlier.

    - A ``d`` later than that: a real start that no gate approved; it is added as
      ``via: docker`` and counts ("outside"). An approval still open before it, that this
      start did not follow within the grace, is withdrawn first.
    - An open approval that no start followed within ``grace`` is withdrawn ("withdrawn");
      within the grace it stands ("pending"): the start may be on its way.
    - Not running, and ``d`` is the latest run's: the run ended at FinishedAt with ExitCode
      ("exited"). Running, and ``d`` is the latest run's: "running".
    """
    d = info.started_at
    state, outcome = _withdraw_unfollowed(state, d, now, grace)
    last = state.last_run
    if d is not None and (last is None or d > _covers_until(last, grace)):
        state = state.record_start(d, via="docker", reason="started outside the gate")
        return _ended(state, info), "outside"
    if last is None or d is None or d < last.started_at - SAME_RUN_SLACK:
        return state, _pending_or(outcome, last)
    if info.running:
        return state, "running" if last.ended_at is None else outcome
    new = _ended(state, info)
    return new, "exited" if new is not state else outcome


def _withdraw_unfollowed(
    state: AgentState, d: float | None, now: float, grace: float
) -> tuple[AgentState, Outcome]:
    """The state without its latest run if that is an open approval that Docker's start
    ``d`` did not follow within the grace, and the grace is over."""
    last = state.last_run
    if last is None or last.ended_at is not None or not _approval(last.via):
        return state, "unchanged"
    followed = d is not None and last.started_at - SAME_RUN_SLACK <= d <= last.started_at + grace
    if followed or now - last.started_at <= grace:
        return state, "unchanged"
    return state.without_last_run(), "withdrawn"


def _pending_or(outcome: Outcome, last: Run | None) -> Outcome:
    """ "pending" for an open approval that Docker has not followed yet (within the grace)."""
    if outcome == "unchanged" and last is not None and last.ended_at is None:
        return "pending" if _approval(last.via) else "unchanged"
    return outcome


def _covers_until(run: Run, grace: float) -> float:
    """The latest Docker start that is still this run's: an approval is followed within the
    grace, a start seen in Docker is itself; never after the run's own reported end."""
    until = run.started_at + (grace if _approval(run.via) else SAME_RUN_SLACK)
    return until if run.ended_at is None else min(until, run.ended_at)


def _ended(state: AgentState, info: ContainerInfo) -> AgentState:
    """The latest run ended as Docker says, if the container is down and the run is open."""
    last = state.last_run
    if info.running or last is None or last.ended_at is not None:
        return state
    end = info.finished_at
    if end is None or end < (info.started_at or 0.0):
        return state  # Docker has not written the end yet (or never will): leave it unknown
    return state.record_exit(end, info.exit_code, source="docker")
