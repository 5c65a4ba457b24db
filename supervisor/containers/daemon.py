"""The supervisor daemon: Docker restarts nothing, the gate decides, the daemon starts.

``agent-supervisor run --container NAME`` (or ``--compose-file F --service S``) watches the
agent's container through the Docker SDK. On every exit it records how the run ended (exit code,
StartedAt and FinishedAt from the container's State), waits for the gate (the very
:class:`~supervisor.gate.Gate` of ``gate --wait``, with the same events, metrics and answers,
so the start is recorded before the container is started), then starts the container again.
At launch it starts a container that is not running, through the same gate.

Why the agent's restart policy must be "no": Docker's ``restart: always`` restarts the container
inside the engine, where no hook runs; in a control-plane outage every node would restart its
agent on Docker's own schedule (100 ms, doubling, at most a minute apart), which is the storm.
The daemon refuses such a container (exit 78) rather than pretend to supervise it.

Why events *and* inspection: events say *when* to look, the container's State says *what is*.
Every event, every reconnect and a periodic tick lead to one :func:`reconcile` of the state file
with the container's State, so a missed or repeated event changes nothing, and a Docker restart
(which kills the agent while nobody listens) is seen on reconnect.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, Literal

from supervisor.base.errors import StateError, one_line
from supervisor.base.log import get_logger
from supervisor.containers.compose import Target
from supervisor.core.container import ContainerInfo, check_supervisable
from supervisor.gate.inspect import connect_from_env
from supervisor.gate.service import Gate
from supervisor.storage.config import Config

#: How often a daemon refused by a bad identity looks at the certificate again.
IDENTITY_RECHECK_SECONDS: Final = 60.0

#: Container events that can change what the daemon should do. ``kill`` comes before the
#: ``die`` of ``docker stop``/``docker kill``/``compose stop``: an operator's stop, not a crash.
WATCHED_EVENTS: Final = ("create", "start", "kill", "die", "destroy")
#: Seconds one Docker API call may take (the event stream itself has no timeout).
API_TIMEOUT: Final = 10.0
#: Reconnect backoff: first wait, and the cap (doubling in between).
RECONNECT_FIRST: Final = 0.5
RECONNECT_MAX: Final = 30.0
#: A connection that lasted this long was healthy: the next failure starts the backoff over.
HEALTHY_AFTER: Final = 30.0
#: Look at the container this often even without events (belt and braces).
RESYNC_SECONDS: Final = 60.0
#: A ``die`` this soon after a ``kill`` was the kill's doing.
KILL_WINDOW: Final = 300.0


def event_filters(target: Target) -> dict[str, Any]:
    """Filters for the event stream: the target's events that matter, nothing else."""
    filters: dict[str, Any] = {"type": "container", "event": list(WATCHED_EVENTS)}
    if target.container is not None:
        filters["container"] = target.container
    else:
        filters["label"] = target.labels()
    return filters


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
        # The same gate service as `gate --wait`; it asks Docker through this daemon's own
        # connection, so "already running" and reconcile see what the daemon sees.
        self.gate = Gate(
            cfg, agent, clock=None if clock is time.time else clock, inspect=self._inspect
        )
        self.policy = self.gate.policy
        self.store = self.gate.store
        self._client: Any = None
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
        self._kills: dict[str, float] = {}
        self._stopped_by_operator: set[str] = set()
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
            "daemon.started",
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
                self.log.info(
                    "daemon.stopped", agent=self.agent, signal=str(stop), container="left as it is"
                )
                return 0
            except (_Disconnected, StateError) as exc:
                if self.monotonic() - began >= HEALTHY_AFTER:
                    delay = RECONNECT_FIRST
                failures += 1
                event = (
                    "daemon.state_error"
                    if isinstance(exc, StateError)
                    else ("daemon.docker_unavailable")
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
                    self.log.info(
                        "daemon.stopped",
                        agent=self.agent,
                        signal=str(stop),
                        container="left as it is",
                    )
                    return 0
                delay = min(delay * 2, self.reconnect_max)

    def _pause(self, seconds: float) -> None:
        """Sleep between reconnects; only a stop request cuts it short."""
        deadline = self.monotonic() + seconds
        while (left := deadline - self.monotonic()) > 0:
            msg = self._receive(left)
            if msg is not None and msg.kind == "stop":
                raise _Stop(str(msg.payload))

    def _session(self, *, reconnect: bool) -> None:
        """One connection to Docker: listen first, then look, then follow the events."""
        self._session_id += 1
        sid = self._session_id
        errors = _docker_errors()
        try:
            client = self._connect_fn(self.api_timeout)
        except errors as exc:
            raise _Disconnected(one_line(exc, 500)) from None
        self._client = client
        try:
            try:
                stream = client.events(decode=True, filters=event_filters(self.target))
            except errors as exc:
                raise _Disconnected(one_line(exc, 500)) from None
            reader = threading.Thread(
                target=self._read_events, args=(stream, sid), name="docker-events", daemon=True
            )
            reader.start()
            try:
                if reconnect:
                    self.log.info("daemon.reconnected", agent=self.agent)
                # A new connection may follow a Docker restart, which stops containers with
                # kill events that are no operator's: forget them (Docker's "always" would
                # restart a stopped container after a daemon restart too).
                self._kills.clear()
                self._stopped_by_operator.clear()
                self._look(client, start=True)
                while True:
                    msg = self._next(sid, self.resync_seconds)
                    if msg is None:
                        self._look(client, start=True)
                        continue
                    self._on_event(client, msg.payload)
            finally:
                with contextlib.suppress(Exception):
                    stream.close()
                reader.join(timeout=5)
        finally:
            self._client = None
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

    def _call(self, fn: Callable[[], Any]) -> Any:
        """One Docker API call; transport failures become _Disconnected, API errors pass."""
        import docker.errors

        try:
            return fn()
        except docker.errors.APIError:
            raise
        except _docker_errors() as exc:
            raise _Disconnected(one_line(exc, 500)) from None

    # --- reacting to the container ----------------------------------------------------------

    def _note(self, event: Mapping[str, Any]) -> str:
        """Remember kills; a die soon after a kill is an operator's stop. Returns the action."""
        action = str(event.get("Action") or event.get("status") or "")
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        now = self.monotonic()
        if action == "kill":
            self._kills[cid] = now
        elif action == "die":
            killed = self._kills.pop(cid, None)
            if killed is not None and now - killed <= KILL_WINDOW:
                self._stopped_by_operator.add(cid)
        elif action == "start":
            self._stopped_by_operator.discard(cid)
        return action

    def _on_event(self, client: Any, event: Mapping[str, Any]) -> None:
        action = self._note(event)
        if action in ("die", "start"):
            self._look(client, start=True)
        elif action in ("create", "destroy"):
            self._look(client, start=False)

    def _look(self, client: Any, *, start: bool) -> None:
        """Reconcile with the container's State; start it through the gate if it is down."""
        import docker.errors

        while True:
            try:
                container = self._call(lambda: self.target.find(client))
            except docker.errors.APIError as exc:
                # Docker answered, but not with the container: treat it like a lost
                # connection (log, wait, look again) rather than stop supervising.
                raise _Disconnected(
                    f"Docker answered with an error: {one_line(exc, 500)}"
                ) from None
            if container is None:
                if not self._missing_logged:
                    self.log.warning(
                        "daemon.container_missing",
                        agent=self.agent,
                        target=self.target.describe(),
                        hint="waiting for it to be created",
                    )
                    self._missing_logged = True
                return
            self._missing_logged = False
            info = ContainerInfo.from_attrs(container.attrs)
            check_supervisable(info)
            self._record(info)
            if info.running or not start:
                return
            if info.id in self._stopped_by_operator:
                self.log.info(
                    "daemon.stopped_by_operator",
                    agent=self.agent,
                    container=info.name,
                    hint="not restarting it until it is started again "
                    "(docker start) or the supervisor restarts",
                )
                return
            if not self._gated_start(client, info):
                return

    def _record(self, info: ContainerInfo) -> None:
        """Reconcile the state with what the container says (the gate's own reconcile)."""
        self.gate.observe(info)

    def _inspect(self) -> ContainerInfo | None:
        """The gate's view of the container, through this session's connection."""
        if self._client is None:
            return None
        client = self._client
        container = self._call(lambda: self.target.find(client))
        return None if container is None else ContainerInfo.from_attrs(container.attrs)

    def _sleep(self, seconds: float) -> None:
        """The gate wait's sleep: wakes for a stop, a lost connection, or a container change."""
        deadline = self.monotonic() + max(seconds, 0.0)
        while (left := deadline - self.monotonic()) > 0:
            msg = self._next(self._session_id, left)
            if msg is None:
                return
            if self._note(msg.payload) in ("start", "die", "create", "destroy"):
                raise _Resync

    def _gated_start(self, client: Any, info: ContainerInfo) -> bool:
        """Wait for the gate (which records the start), then start. True: look again."""
        try:
            result = self.gate.wait(sleep=self._sleep)
        except _Resync:
            return True
        import docker.errors

        d = result.decision
        if d.event == "gate.identity_refused":
            # Never start an agent that would fail to authenticate; look again in a minute or
            # as soon as the container changes (an operator's --force goes through `gate`).
            self.log.error("daemon.identity_refused", agent=self.agent, error=d.reason)
            with contextlib.suppress(_Resync):
                self._sleep(IDENTITY_RECHECK_SECONDS)
            return True
        if not d.start:
            return True  # started meanwhile (outside the gate): look again, nothing to do
        try:
            self._call(lambda: client.api.start(info.id))
        except docker.errors.NotFound:
            self.log.warning(
                "daemon.start_failed",
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
                "daemon.start_failed",
                agent=self.agent,
                container=info.name,
                error=one_line(exc, 500),
            )
            return True
        self.log.info(
            "daemon.container_started",
            agent=self.agent,
            container=info.name,
            reason=d.reason,
            via=d.via,
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
    "ContainerInfo",
    "Daemon",
    "Target",
    "check_supervisable",
    "run",
]
