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
from supervisor.core.events import Bound, Ended, Event, Outside, Withdrawn, apply
from supervisor.core.policy import DockerView
from supervisor.core.state import AgentState, Run

#: Tolerance between the start the gate recorded and Docker's StartedAt of the same run
#: (clock granularity; Docker's stamp comes a little after the record).
SAME_RUN_SLACK: Final = 1.0
#: Default of ``docker.grace``: how long an approval may wait for Docker's start.
DEFAULT_GRACE: Final = 120.0

#: Docker's RFC 3339 time: seconds, an optional fraction (nanoseconds), "Z" or an offset.
_DOCKER_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


def parse_docker_time(text: object) -> float | None:
    """Docker's RFC 3339 time with nanoseconds -> seconds since the epoch; None for "never".

    Docker writes ``0001-01-01T00:00:00Z`` for a time that has not happened (a container that
    never started). Python 3.11's ``fromisoformat`` reads "Z" and a fraction of any length,
    keeping the microseconds (nanoseconds are cut, not rounded); the pattern keeps out the
    other ISO 8601 forms it would read too (a date alone, no time zone, week dates).
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("0001-01-01") or _DOCKER_TIME.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:  # the pattern checks digits, not ranges: a month 13, a 25th hour
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


def docker_run_id(container: str, started_at: float) -> str:
    """The id of a run that Docker shows and no gate approved: the same for every caller."""
    return f"docker-{container[:12]}-{round(started_at * 1_000_000):x}"


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What Docker's State adds to the history (:func:`reconcile`), and what it says now.

    ``view``: Docker's view for the decision ("running", "pending": an approval within the
    grace that Docker has not followed yet, or "stopped"). ``outcome``: the most telling of
    the events, for the log.
    """

    events: tuple[Event, ...]
    view: DockerView
    outcome: Outcome


def _covers(run: Run, container: str, d: float, grace: float) -> bool:
    """Whether Docker's start ``d`` of ``container`` is ``run``'s own start: an approval is
    followed within the grace, a start seen in Docker is itself; never after the run's
    reported end, never in another container than the one the run ran in."""
    if run.container is not None and run.container != container:
        return False
    until = run.started_at + (grace if run.approved else SAME_RUN_SLACK)
    if run.ended_at is not None:
        until = min(until, run.ended_at)
    return run.started_at - SAME_RUN_SLACK <= d <= until


def reconcile(
    state: AgentState, info: ContainerInfo | None, now: float, grace: float = DEFAULT_GRACE
) -> Reconciled:
    """Bring the history in line with the container's State (pure; invariant 7).

    Docker's StartedAt ``d`` is the latest run's own start when that run covers it
    (:func:`_covers`): the gate approves, then compose or the daemon starts the container
    within ``grace``. Then:

    - running: the run is bound to the container ("running");
    - not running: the run ended at FinishedAt with ExitCode ("exited");
    - a FinishedAt between the approval and ``d`` while running: the approved run started,
      ended there (how, Docker no longer says) and ``d`` is a second start.

    A ``d`` that no run covers is a real start that no gate approved: it is added as
    ``via: docker`` and counts ("outside"); an approval still open before it that Docker did not
    follow is withdrawn first, and one that Docker did follow ended at FinishedAt if Docker
    says when. An open approval that no start followed within ``grace`` is withdrawn
    ("withdrawn"); within the grace it stands ("pending"): the start may be on its way.
    ``info`` None: the container does not exist (yet); only the grace can speak.
    """
    events: list[Event] = []
    last = state.last_run
    d = None if info is None else info.started_at
    # Docker's starts up to the latest start the history knew are no news, even if the
    # approval that made it the latest is withdrawn now.
    known = None if last is None else last.started_at
    if last is not None and _unfollowed(last, info, d, now, grace):
        events.append(Withdrawn(last.id))
        state = apply(state, events[-1])
        last = state.last_run
    if info is None or d is None:
        return _done(events, _pending(last, now, grace), "withdrawn" if events else None)
    if last is not None and _covers(last, info.id, d, grace):
        return _own_start(last, events, info, d, now, grace)
    if (last is None or d > last.started_at) and (known is None or d > known):
        return _new_start(last, events, info, d)
    # Docker's latest start is older than the latest run: nothing of it is news.
    view = "running" if info.running else _pending(last, now, grace)
    return _done(events, view, "withdrawn" if events else None)


def _own_start(
    last: Run,
    events: list[Event],
    info: ContainerInfo,
    d: float,
    now: float,
    grace: float,
) -> Reconciled:
    """Docker's start ``d`` is the latest run's own: bind it, end it, or see a second start."""
    f = info.finished_at
    if info.running and f is not None and last.started_at <= f < d:
        # Started, ended at f, started again at d: two starts since the approval. (No slack
        # before the approval: the approved run ends after its own start, which follows the
        # record; an f just before it is the previous run's end.)
        if last.ended_at is None:
            events.append(Ended(f, None, "docker", last.id))
        return _outside(events, info, d)
    if info.running:
        if last.ended_at is None and last.container != info.id:
            events.append(Bound(last.id, info.id))
        return _done(events, "running", "running" if last.ended_at is None else None)
    if last.ended_at is None and f is not None and f >= d:
        events.append(Bound(last.id, info.id))
        events.append(Ended(f, info.exit_code, "docker", last.id))
        return _done(events, "stopped", "exited")
    return _done(events, _pending(last, now, grace), "withdrawn" if events else None)


def _new_start(last: Run | None, events: list[Event], info: ContainerInfo, d: float) -> Reconciled:
    """A start no run covers: the open run bound to the container ended at FinishedAt when
    Docker says so, and ``d`` is a start outside the gate."""
    f = info.finished_at
    bound_open = last is not None and last.ended_at is None and last.container is not None
    if bound_open and last is not None and f is not None and last.started_at <= f < d:
        events.append(Ended(f, None, "docker", last.id))
    return _outside(events, info, d)


def _unfollowed(
    last: Run, info: ContainerInfo | None, d: float | None, now: float, grace: float
) -> bool:
    """An open approval that Docker's start did not follow within the grace, the grace over."""
    if last.ended_at is not None or not last.approved or last.container is not None:
        return False
    if now - last.started_at <= grace:
        return False
    followed = (
        info is not None
        and d is not None
        and last.started_at - SAME_RUN_SLACK <= d <= last.started_at + grace
    )
    return not followed


def _pending(last: Run | None, now: float, grace: float) -> DockerView:
    """ "pending" for an open approval Docker has not followed yet (within the grace)."""
    if (
        last is not None
        and last.ended_at is None
        and last.approved
        and last.container is None
        and now - last.started_at <= grace
    ):
        return "pending"
    return "stopped"


def _outside(events: list[Event], info: ContainerInfo, d: float) -> Reconciled:
    """Docker's start ``d`` that no gate approved: added, and ended if Docker says so."""
    run_id = docker_run_id(info.id, d)
    events.append(Outside(d, run_id, info.id))
    f = info.finished_at
    if not info.running and f is not None and f >= d:
        events.append(Ended(f, info.exit_code, "docker", run_id))
    return _done(events, "running" if info.running else "stopped", "outside")


def _done(events: list[Event], view: DockerView, outcome: Outcome | None) -> Reconciled:
    return Reconciled(tuple(events), view, outcome or "unchanged")
