"""The supervisor daemon: Docker restarts nothing, the gate decides, the daemon starts.

``agent-supervisor run --container NAME`` (or ``--compose-file F --service S``) watches the
agent's container through the Docker SDK. On every exit it records how the run ended, waits for
the gate (the very :class:`~supervisor.gate.service.Gate` of ``gate --wait``, with the same events,
metrics and answers, so the start is recorded before the container is started), then starts the
container again. At launch it starts a container that is not running, through the same gate.

Why the agent's restart policy must be "no": Docker's ``restart: always`` restarts the container
inside the engine, where no hook runs; in a control-plane outage every node would restart its
agent on Docker's own schedule (100 ms, doubling, at most a minute apart), which is the storm.
The daemon refuses such a container (exit 78) rather than pretend to supervise it.

Inputs, never callbacks: the daemon inspects the container itself, through its own connection,
and hands the Gate what it saw (:class:`~supervisor.gate.service.Look`); the Gate never calls
back into the daemon.

Why events *and* inspection: events say *when* to look and *who* stopped the agent; the
container's State says *what is*. Every event, every reconnect and a periodic tick lead to one
reconcile of the state with the container's State, so a missed or repeated event changes
nothing, and a Docker restart (which kills the agent while nobody listens) is seen on reconnect.
What only the events tell (invariant 12):

- a ``kill`` with a stop signal (TERM, INT, KILL, QUIT, or the container's own StopSignal)
  followed by the ``die`` is a stop made on purpose (``docker stop``, ``docker kill``,
  ``compose stop|down``, a compose recreation): the end is recorded with who stopped it, so a
  ``docker stop`` that had to SIGKILL (137) is neutral, not a failure; and the daemon does not
  start that container again until someone else does;
- a ``kill`` with any other signal (``docker kill -s WINCH``) is not a stop: a later exit is
  the agent's own, and is restarted through the gate;
- the ``die`` carries the exit code and the time, so a container removed right after it
  (``compose down``, a recreation) still has its end recorded, for the run that ran in it.

Events the engine still holds are replayed when a connection opens (since the latest run's
start, or the last event this daemon saw), so a daemon that was restarted or recreated while
the agent stopped (a compose upgrade of both) still learns how the run ended. On SIGTERM the
events already received are recorded first (a short drain), then the daemon exits and leaves
the agent as it is.

Threads: the event stream blocks in a socket read, so a reader thread per connection turns
events into messages on a :class:`queue.SimpleQueue`; the main thread does everything else.
``SimpleQueue.put`` is reentrant, which is what lets the SIGTERM handler post its stop message
safely from inside any blocking call of the main thread.

Docker is imported lazily, inside functions: the gate's import path must not pay for it.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, Literal

from supervisor.base.catalog import EventId
from supervisor.base.errors import StateError, one_line
from supervisor.base.log import get_logger
from supervisor.containers.compose import Target
from supervisor.core.container import SAME_RUN_SLACK, ContainerInfo, check_supervisable
from supervisor.core.state import AgentState, Run
from supervisor.gate.inspect import connect_from_env
from supervisor.gate.service import Gate, GateResult, Look
from supervisor.storage.config import Config

#: How often a daemon refused by a bad identity looks at the certificate again.
IDENTITY_RECHECK_SECONDS: Final = 60.0

#: Container events that can change what the daemon should do. ``kill`` comes before the
#: ``die`` of ``docker stop``/``docker kill``/``compose stop``: it says who stopped the agent.
#: ``rename``: Compose v2 creates a recreated container under a temporary name, then renames it.
WATCHED_EVENTS: Final = ("create", "start", "kill", "die", "destroy", "rename")
#: Signals that stop a container on purpose whoever sends them (``docker stop`` sends the
#: container's StopSignal, then KILL after its timeout; Ctrl-C is INT). The container's own
#: StopSignal counts too.
STOP_SIGNALS: Final = frozenset({"SIGTERM", "SIGINT", "SIGKILL", "SIGQUIT"})
#: Seconds one Docker API call may take (the event stream itself has no timeout).
API_TIMEOUT: Final = 10.0
#: Reconnect backoff: first wait, and the cap (doubling in between).
RECONNECT_FIRST: Final = 0.5
RECONNECT_MAX: Final = 30.0
#: A connection that lasted this long was healthy: the next failure starts the backoff over.
HEALTHY_AFTER: Final = 30.0
#: Look at the container this often even without events (belt and braces).
RESYNC_SECONDS: Final = 60.0
#: A ``die`` this soon after a stop signal was the signal's doing (``docker stop -t`` longer
#: than this is not a stop the daemon can attribute).
KILL_WINDOW: Final = 300.0
#: On SIGTERM: record the events already received until none came for DRAIN_QUIET seconds,
#: at most DRAIN_MAX seconds.
DRAIN_QUIET: Final = 0.5
DRAIN_MAX: Final = 3.0
#: Events older than this are not replayed (the engine keeps only its latest ones anyway).
REPLAY_MAX: Final = 86400.0

_SIGNAL_NUMBERS: Final = {int(s): s.name for s in signal.Signals}


def event_filters(target: Target) -> dict[str, Any]:
    """Filters for the event stream: the target's events that matter, nothing else."""
    filters: dict[str, Any] = {"type": "container", "event": list(WATCHED_EVENTS)}
    if target.container is not None:
        filters["container"] = target.container
    else:
        filters["label"] = target.labels()
    return filters


def signal_name(value: object) -> str | None:
    """A signal as Docker writes it (``15``, ``TERM``, ``SIGTERM``, ``SIGRTMIN+3``) ->
    ``SIGTERM``-style; None when there is none."""
    text = str(value or "").strip().upper()
    if not text:
        return None
    if text.isdigit():
        return _SIGNAL_NUMBERS.get(int(text), f"signal {text}")
    return text if text.startswith("SIG") else "SIG" + text


def stop_text(signame: str) -> str:
    """How a run stopped on purpose through Docker is recorded (``Run.stop``)."""
    return f"docker stop/kill ({signame})"


def docker_timestamp(t: float) -> str:
    """Seconds -> the ``since``/``until`` of Docker's events API: ``seconds.nanoseconds``
    (the part after the dot is read as a count of nanoseconds, not as a fraction)."""
    us = round(t * 1_000_000)  # a float holds microseconds of today's times exactly, not ns
    return f"{us // 1_000_000}.{us % 1_000_000 * 1000:09d}"


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """One event of the agent's container, as the daemon reads it."""

    action: str
    container: str
    at: float | None
    exit_code: int | None = None
    signal: str | None = None

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> ContainerEvent:
        """From the SDK's decoded event (``Action``, ``id``, ``Actor.Attributes``, ``timeNano``)."""
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        nano, seconds = event.get("timeNano"), event.get("time")
        at = None
        if isinstance(nano, int | float) and nano:
            at = nano / 1e9
        elif isinstance(seconds, int | float) and seconds:
            at = float(seconds)
        code = attrs.get("exitCode")
        return cls(
            action=str(event.get("Action") or event.get("status") or ""),
            container=str(event.get("id") or actor.get("ID") or ""),
            at=at,
            exit_code=int(code) if isinstance(code, str | int) and str(code).isdigit() else None,
            signal=signal_name(attrs.get("signal")),
        )


# --- the daemon ----------------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM or SIGINT: stop supervising."""


class _Disconnected(Exception):
    """Docker went away (or never answered)."""


class _Resync(Exception):
    """The container changed while we waited: look at it again."""


@dataclass(frozen=True, slots=True)
class _Msg:
    session: int
    kind: Literal["event", "closed", "stop"]
    payload: Any = None


def _docker_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "Docker is not there" (an APIError means it answered: not these)."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class Daemon:
    """One supervised container. :meth:`run` returns 0 when asked to stop."""

    def __init__(
        self,
        cfg: Config,
        agent: str,
        target: Target,
        *,
        connect: Callable[[float], Any] = connect_from_env,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        receive: Callable[[float | None], _Msg | None] | None = None,
        api_timeout: float = API_TIMEOUT,
        reconnect_max: float = RECONNECT_MAX,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.target = target
        # The same gate service as `gate --wait`, given what this daemon saw of the container
        # (no inspector of its own: it never calls back into the daemon).
        self.gate = Gate(cfg, agent, clock=None if clock is time.time else clock, inspect=None)
        self.policy = self.gate.policy
        self.store = self.gate.store
        self.inbox: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self._connect_fn = connect
        self.clock = clock
        self.monotonic = monotonic
        self._receive = receive or self._receive_from_inbox
        self.api_timeout = api_timeout
        self.reconnect_max = reconnect_max
        self.resync_seconds = resync_seconds
        self.log = get_logger()
        self._session_id = 0
        #: Container id -> (event time, signal) of a stop signal sent to it and not yet died.
        self._stopping: dict[str, tuple[float | None, str]] = {}
        #: Containers that died of a stop signal: not started again until someone else does.
        self._stopped: set[str] = set()
        #: Container id -> the time of its latest start event (to match a die to its run).
        self._started: dict[str, float] = {}
        #: Container id -> its configured StopSignal (from inspection).
        self._stop_signals: dict[str, str] = {}
        #: The time of the latest event handled: a new connection replays from there.
        self._last_event: float | None = None
        self._missing_logged = False

    # --- messages ---------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        """Ask the daemon to stop; safe from a signal handler (SimpleQueue.put is reentrant)."""
        self.inbox.put(_Msg(-1, "stop", why))

    def _receive_from_inbox(self, timeout: float | None) -> _Msg | None:
        try:
            return self.inbox.get(timeout=None if timeout is None else max(timeout, 0.0))
        except queue.Empty:
            return None

    def _next(self, session: int, timeout: float | None) -> _Msg | None:
        """The next message of this session, None on timeout; raises on stop or disconnect."""
        deadline = None if timeout is None else self.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - self.monotonic())
            msg = self._receive(left)
            if msg is None:
                return None
            if msg.kind == "stop":
                raise _Stop(str(msg.payload))
            if msg.session != session:
                continue  # left over from an earlier connection
            if msg.kind == "closed":
                raise _Disconnected(str(msg.payload))
            return msg

    # --- the outer loop: connect, supervise, reconnect --------------------------------------

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; reconnect to Docker with a bounded backoff."""
        self.log.info(
            EventId.DAEMON_STARTED,
            agent=self.agent,
            target=self.target.describe(),
            node=self.policy.node,
            window_seconds=self.policy.window,
            state_dir=str(self.cfg.state_dir),
        )
        delay = RECONNECT_FIRST
        failures = 0
        while True:
            began = self.monotonic()
            try:
                self._session(reconnect=failures > 0)
            except _Stop as stop:
                return self._stopped_log(stop)
            except (_Disconnected, StateError) as exc:
                if self.monotonic() - began >= HEALTHY_AFTER:
                    delay = RECONNECT_FIRST
                failures += 1
                event = (
                    EventId.DAEMON_STATE_ERROR
                    if isinstance(exc, StateError)
                    else (EventId.DAEMON_DOCKER_UNAVAILABLE)
                )
                self.log.warning(
                    event,
                    agent=self.agent,
                    error=str(exc) or type(exc).__name__,
                    retry_in=round(delay, 3),
                    attempt=failures,
                )
                try:
                    self._pause(delay)
                except _Stop as stop:
                    return self._stopped_log(stop)
                delay = min(delay * 2, self.reconnect_max)

    def _stopped_log(self, stop: _Stop) -> int:
        self.log.info(
            EventId.DAEMON_STOPPED, agent=self.agent, signal=str(stop), container="left as it is"
        )
        return 0

    def _pause(self, seconds: float) -> None:
        """Sleep between reconnects; only a stop request cuts it short."""
        deadline = self.monotonic() + seconds
        while (left := deadline - self.monotonic()) > 0:
            msg = self._receive(left)
            if msg is not None and msg.kind == "stop":
                raise _Stop(str(msg.payload))

    def _session(self, *, reconnect: bool) -> None:
        """One connection to Docker: listen first, replay what the engine still holds, then
        look, then follow the events."""
        self._session_id += 1
        sid = self._session_id
        errors = _docker_errors()
        try:
            client = self._connect_fn(self.api_timeout)
        except errors as exc:
            raise _Disconnected(one_line(exc, 500)) from None
        try:
            now = self.clock()
            filters = event_filters(self.target)
            try:
                stream = client.events(decode=True, filters=filters, since=docker_timestamp(now))
            except errors as exc:
                raise _Disconnected(one_line(exc, 500)) from None
            reader = threading.Thread(
                target=self._read_events, args=(stream, sid), name="docker-events", daemon=True
            )
            reader.start()
            try:
                if reconnect:
                    self.log.info(EventId.DAEMON_RECONNECTED, agent=self.agent)
                # What was learnt on an earlier connection may be stale (a Docker restart
                # stops containers while nobody listens, and its kills are no operator's):
                # forget it, and learn again from the events the engine still holds.
                self._stopping.clear()
                self._stopped.clear()
                self._replay(client, filters, now)
                self._look(client, start=True)
                while True:
                    msg = self._next(sid, self.resync_seconds)
                    if msg is None:
                        self._look(client, start=True)
                        continue
                    self._on_event(client, msg.payload)
            except _Stop:
                self._drain(sid)
                raise
            finally:
                with contextlib.suppress(Exception):
                    stream.close()
                reader.join(timeout=5)
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def _read_events(self, stream: Any, session: int) -> None:
        why = "the Docker event stream ended"
        caught: tuple[type[BaseException], ...] = (*_docker_errors(), ValueError)
        try:
            for event in stream:
                if isinstance(event, dict):
                    self.inbox.put(_Msg(session, "event", event))
        except caught as exc:
            why = one_line(exc, 500)
        finally:
            self.inbox.put(_Msg(session, "closed", why))

    def _replay(self, client: Any, filters: Mapping[str, Any], until: float) -> None:
        """Record what the engine's event log says happened since the latest run started (or
        since the last event this daemon handled), before looking: a die that nobody was
        listening for still ends its run, as what it was."""
        since = self._replay_since(until)
        if since is None:
            return
        past = self._call(
            lambda: client.events(
                decode=True,
                filters=dict(filters),
                since=docker_timestamp(since),
                until=docker_timestamp(until),
            )
        )
        try:
            events: Iterable[Any] = self._call(lambda: list(past))
        finally:
            with contextlib.suppress(Exception):
                past.close()
        for event in events:
            if isinstance(event, dict):
                self._record(event)

    def _replay_since(self, now: float) -> float | None:
        if self._last_event is not None:
            since = self._last_event
        else:
            last = self.store.read(self.agent).state.last_run
            if last is None:
                return None
            since = last.started_at - SAME_RUN_SLACK
        return max(since, now - REPLAY_MAX) if since < now else None

    def _drain(self, session: int) -> None:
        """SIGTERM: record the events already received (``compose down`` stops the agent, then
        this daemon), until none came for a moment; start nothing."""
        deadline = self.monotonic() + DRAIN_MAX
        quiet = self.monotonic() + DRAIN_QUIET
        while (now := self.monotonic()) < min(deadline, quiet):
            msg = self._receive(min(deadline, quiet) - now)
            if msg is None:
                return
            if msg.session != session:
                continue  # another stop request, or a leftover
            if msg.kind == "closed":
                return
            try:
                self._record(msg.payload)
            except (StateError, _Disconnected) as exc:
                self.log.warning(EventId.DAEMON_DRAIN_FAILED, agent=self.agent, error=str(exc))
                return
            quiet = self.monotonic() + DRAIN_QUIET

    def _call(self, fn: Callable[[], Any]) -> Any:
        """One Docker API call; transport failures become _Disconnected, API errors pass."""
        import docker.errors

        try:
            return fn()
        except docker.errors.APIError:
            raise
        except _docker_errors() as exc:
            raise _Disconnected(one_line(exc, 500)) from None

    # --- what the events say ----------------------------------------------------------------

    def _record(self, payload: Mapping[str, Any]) -> str:
        """Learn from one event (who stopped what) and record a run's end; returns the action.
        Records only: starts nothing, never asks the gate."""
        ev = ContainerEvent.parse(payload)
        if ev.at is not None:
            self._last_event = ev.at if self._last_event is None else max(self._last_event, ev.at)
        cid = ev.container
        if ev.action == "kill":
            if ev.signal is not None and self._stops(cid, ev.signal):
                self._stopping.setdefault(cid, (ev.at, ev.signal))
        elif ev.action == "start":
            if ev.at is not None:
                self._started[cid] = ev.at
            self._stopped.discard(cid)
            self._stopping.pop(cid, None)
        elif ev.action == "die":
            stop = self._stop_for(cid, ev)
            if stop is not None:
                self._stopped.add(cid)
            self._record_end(cid, ev, stop)
        return ev.action

    def _stops(self, cid: str, signame: str) -> bool:
        """Whether ``signame`` stops the container on purpose."""
        return signame in STOP_SIGNALS or signame == self._stop_signals.get(cid)

    def _stop_for(self, cid: str, die: ContainerEvent) -> str | None:
        """The stop signal this die followed, as ``Run.stop`` text; None for an exit of the
        agent's own (or after a signal that stops nothing, ``docker kill -s WINCH``)."""
        sent = self._stopping.pop(cid, None)
        if sent is None:
            return None
        at, signame = sent
        if at is not None and die.at is not None and die.at - at > KILL_WINDOW:
            return None
        return stop_text(signame)

    def _record_end(self, cid: str, die: ContainerEvent, stop: str | None) -> None:
        """The run that ran in container ``cid`` ended as the die says (exit code, time): even
        if the container is gone the next moment (``compose down``, a recreation)."""
        if die.exit_code is None:
            return
        run = self._run_in(self.store.read(self.agent).state, cid)
        if run is None or run.ended_at is not None:
            return  # no run of ours ran in it (yet): the look's reconcile says what Docker says
        self.gate.report_end(
            die.exit_code, run_id=run.id, source="docker", stop=stop, at=die.at, look=Look()
        )

    def _run_in(self, state: AgentState, cid: str) -> Run | None:
        """The run that ran in container ``cid``: bound to it, or the approved start that its
        start followed within ``docker.grace`` (not bound yet)."""
        for run in reversed(state.runs):
            if run.container == cid:
                return run
        last = state.last_run
        began = self._started.get(cid)
        if (
            last is not None
            and last.container is None
            and last.approved
            and began is not None
            and last.started_at - SAME_RUN_SLACK <= began <= last.started_at + self.cfg.docker_grace
        ):
            return last
        return None

    # --- reacting to the container ----------------------------------------------------------

    def _on_event(self, client: Any, event: Mapping[str, Any]) -> None:
        action = self._record(event)
        if action in ("die", "start"):
            self._look(client, start=True)
        elif action in ("create", "destroy", "rename"):
            self._look(client, start=False)

    def _find(self, client: Any) -> ContainerInfo | None:
        """The container as Docker reports it now (None: there is none)."""
        import docker.errors

        try:
            container = self._call(lambda: self.target.find(client))
        except docker.errors.APIError as exc:
            # Docker answered, but not with the container: treat it like a lost
            # connection (log, wait, look again) rather than stop supervising.
            raise _Disconnected(f"Docker answered with an error: {one_line(exc, 500)}") from None
        if container is None:
            return None
        attrs = container.attrs
        info = ContainerInfo.from_attrs(attrs)
        configured = signal_name((attrs.get("Config") or {}).get("StopSignal"))
        if configured is not None:
            self._stop_signals[info.id] = configured
        return info

    def _look(self, client: Any, *, start: bool) -> None:
        """Reconcile with the container's State; start it through the gate if it is down."""
        while True:
            info = self._find(client)
            if info is None:
                if not self._missing_logged:
                    self.log.warning(
                        EventId.DAEMON_CONTAINER_MISSING,
                        agent=self.agent,
                        target=self.target.describe(),
                        hint="waiting for it to be created (docker compose up -d)",
                    )
                    self._missing_logged = True
                self.gate.observe(None)
                return
            self._missing_logged = False
            check_supervisable(info)
            self.gate.observe(info)
            if info.running or not start:
                return
            if info.id in self._stopped:
                self.log.info(
                    EventId.DAEMON_STOPPED_BY_OPERATOR,
                    agent=self.agent,
                    container=info.name,
                    hint="stopped on purpose: not restarting it until it is started again "
                    "(docker start, compose up) or the supervisor restarts",
                )
                return
            if not self._gated_start(client, info):
                return

    def _sleep(self, seconds: float) -> None:
        """The gate wait's sleep: wakes for a stop, a lost connection, or a container change."""
        deadline = self.monotonic() + max(seconds, 0.0)
        while (left := deadline - self.monotonic()) > 0:
            msg = self._next(self._session_id, left)
            if msg is None:
                return
            if self._record(msg.payload) in ("start", "die", "create", "destroy", "rename"):
                raise _Resync

    def _gated_start(self, client: Any, info: ContainerInfo) -> bool:
        """Wait for the gate (which records the start), then start. True: look again."""
        seen = {"info": info}

        def look() -> Look:
            found = self._find(client)
            if found is None:
                raise _Resync  # removed while we waited: look again from the start
            seen["info"] = found
            return Look(True, found)

        try:
            result = self.gate.wait(sleep=self._sleep, look=look)
        except _Resync:
            return True
        d = result.decision
        if d.event == EventId.GATE_IDENTITY_REFUSED:
            # Never start an agent that would fail to authenticate; look again in a minute or
            # as soon as the container changes (an operator's --force goes through `gate`).
            self.log.error(EventId.DAEMON_IDENTITY_REFUSED, agent=self.agent, error=d.reason)
            with contextlib.suppress(_Resync):
                self._sleep(IDENTITY_RECHECK_SECONDS)
            return True
        if not d.start:
            if d.event == EventId.GATE_PENDING:
                self._await_pending(result)
            return True  # running already, or a start on its way: look again
        return self._start(client, seen["info"], result)

    def _await_pending(self, result: GateResult) -> None:
        """An approved start is on its way (compose's, after its gate service): wait for the
        container to change, at most until the approval's grace is over."""
        last = None if result.state is None else result.state.last_run
        left = self.resync_seconds
        if last is not None:
            left = min(left, last.started_at + self.cfg.docker_grace - self.clock() + 1.0)
        with contextlib.suppress(_Resync):
            self._sleep(max(left, 0.1))

    def _start(self, client: Any, info: ContainerInfo, result: GateResult) -> bool:
        """Start the container the gate approved a start of. True: look again."""
        import docker.errors

        d = result.decision
        try:
            self._call(lambda: client.api.start(info.id))
        except docker.errors.NotFound:
            self.log.warning(
                EventId.DAEMON_START_FAILED,
                agent=self.agent,
                container=info.name,
                error="the container was removed",
            )
            return True
        except docker.errors.APIError as exc:
            # The start is recorded and did not happen: the approval stands for docker.grace
            # (the window holds meanwhile) and is then withdrawn by reconcile, like any
            # approval that no real start followed.
            self.log.error(
                EventId.DAEMON_START_FAILED,
                agent=self.agent,
                container=info.name,
                error=one_line(exc, 500),
            )
            return True
        self.log.info(
            EventId.DAEMON_CONTAINER_STARTED,
            agent=self.agent,
            container=info.name,
            reason=d.reason,
            via=d.via,
            run_id=d.run_id,
            backoff_level=d.backoff_level,
            recorded=result.recorded,
        )
        return False


def run(cfg: Config, agent: str, target: Target) -> int:
    """The ``run`` command: supervise until SIGTERM/SIGINT, which leave the agent running."""
    daemon = Daemon(cfg, agent, target)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return daemon.run()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


__all__ = [
    "ContainerEvent",
    "ContainerInfo",
    "Daemon",
    "Target",
    "check_supervisable",
    "docker_timestamp",
    "run",
    "signal_name",
    "stop_text",
]
