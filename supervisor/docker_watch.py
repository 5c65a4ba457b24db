"""The supervisor daemon: Docker restarts nothing, the gate decides, the daemon starts.

``agent-supervisor run --container NAME`` (or ``--compose-file F --service S``) watches the
agent's container through the Docker SDK. On every exit it records how the run ended (exit code,
StartedAt and FinishedAt from the container's State), waits for the gate (the very
:func:`~supervisor.gate.gate_once` and :func:`~supervisor.gate.wait_until_allowed` of
``gate --wait``, so the start is recorded before the container is started), then starts the
container again. At launch it starts a container that is not running, through the same gate.

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
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal

from supervisor.config import Config
from supervisor.errors import ConfigError, IdentityError, StateError, UsageError, one_line
from supervisor.gate import (
    EndHook,
    GateResult,
    check_identity,
    gate_once,
    make_probe_for,
    publish_metrics,
    state_signature,
    wait_until_allowed,
)
from supervisor.log import get_logger
from supervisor.policy import Decision, Policy
from supervisor.state import AgentState, iso
from supervisor.store import StateStore

#: How often a daemon refused by a bad identity looks at the certificate again.
IDENTITY_RECHECK_SECONDS: Final = 60.0

PROJECT_LABEL: Final = "com.docker.compose.project"
SERVICE_LABEL: Final = "com.docker.compose.service"
ONEOFF_LABEL: Final = "com.docker.compose.oneoff"
NUMBER_LABEL: Final = "com.docker.compose.container-number"
#: Container events that can change what the daemon should do. ``kill`` comes before the
#: ``die`` of ``docker stop``/``docker kill``/``compose stop``: an operator's stop, not a crash.
WATCHED_EVENTS: Final = ("create", "start", "kill", "die", "destroy")
#: Seconds one Docker API call may take (the event stream itself has no timeout).
API_TIMEOUT: Final = 10.0
#: Seconds the gate's end hook gives Docker before it decides without it.
HOOK_TIMEOUT: Final = 3.0
#: Reconnect backoff: first wait, and the cap (doubling in between).
RECONNECT_FIRST: Final = 0.5
RECONNECT_MAX: Final = 30.0
#: A connection that lasted this long was healthy: the next failure starts the backoff over.
HEALTHY_AFTER: Final = 30.0
#: Look at the container this often even without events (belt and braces).
RESYNC_SECONDS: Final = 60.0
#: Tolerance between the start the gate recorded and Docker's StartedAt of the same run
#: (clock granularity; Docker's stamp comes a little after the record).
SAME_RUN_SLACK: Final = 1.0
#: A ``die`` this soon after a ``kill`` was the kill's doing.
KILL_WINDOW: Final = 300.0

_CONTAINER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_DOCKER_TIME: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


# --- pure parts: the container's State, and reconciling the state file with it -------------------


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


Outcome = Literal["running", "outside", "exited", "unstarted", "unchanged"]


def reconcile(
    state: AgentState, info: ContainerInfo, *, learn_unstarted: bool = True
) -> tuple[AgentState, Outcome]:
    """Bring the state file in line with the container's State (pure).

    - running, and the last run is open: the same run ("running");
    - running, but no open run: someone started it outside the gate (``docker start``); it is
      recorded as an operator's start at Docker's StartedAt ("outside"), so the backoff and the
      window see it;
    - not running, and the last run is open: the run ended; when the container ran since the
      recorded start, with Docker's FinishedAt and ExitCode ("exited"); when it did not (the
      start failed), as a run that ended where it began ("unstarted"; only if
      ``learn_unstarted``: the gate's hook may run before compose has started it).
    """
    last = state.last_run
    if info.running:
        if last is not None and last.ended_at is None:
            return state, "running"
        started = info.started_at
        if started is None or (last is not None and started < (last.ended_at or 0.0) - 1e-6):
            return state, "unchanged"
        new = state.record_start(started, via="force", reason="started outside the gate")
        return new, "outside"
    if last is None or last.ended_at is not None:
        return state, "unchanged"
    ran = info.started_at is not None and info.started_at >= last.started_at - SAME_RUN_SLACK
    if ran:
        ended = info.finished_at if info.finished_at is not None else last.started_at
        return state.record_exit(ended, info.exit_code, source="docker"), "exited"
    if not learn_unstarted:
        return state, "unchanged"
    return state.record_exit(last.started_at, info.exit_code, source="docker"), "unstarted"


# --- what to watch -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """The container to supervise: by name (or id), or by compose project and service."""

    container: str | None = None
    project: str | None = None
    service: str | None = None

    @classmethod
    def by_name(cls, name: str) -> Target:
        """A container by name or id; UsageError for something that cannot be one."""
        if not _CONTAINER_NAME.fullmatch(name):
            raise UsageError(
                f"--container {name!r}: not a container name or id ([A-Za-z0-9][A-Za-z0-9_.-]*)"
            )
        return cls(container=name)

    def describe(self) -> str:
        """For logs and messages."""
        if self.container is not None:
            return f"container {self.container}"
        return f"service {self.service} of compose project {self.project}"

    def event_filters(self) -> dict[str, Any]:
        """Filters for the event stream: this container's events that matter, nothing else."""
        filters: dict[str, Any] = {"type": "container", "event": list(WATCHED_EVENTS)}
        if self.container is not None:
            filters["container"] = self.container
        else:
            filters["label"] = [
                f"{PROJECT_LABEL}={self.project}",
                f"{SERVICE_LABEL}={self.service}",
            ]
        return filters

    def find(self, client: Any) -> Any | None:
        """The container object (inspected), or None when there is none."""
        import docker.errors

        if self.container is not None:
            try:
                return client.containers.get(self.container)
            except docker.errors.NotFound:
                return None
        found = [
            c
            for c in client.containers.list(
                all=True,
                filters={"label": self.event_filters()["label"]},
                ignore_removed=True,
            )
            if (c.labels or {}).get(ONEOFF_LABEL, "False") != "True"
        ]
        if not found:
            return None
        return min(found, key=lambda c: _int_or((c.labels or {}).get(NUMBER_LABEL), 1))


def _int_or(text: object, default: int) -> int:
    try:
        return int(str(text))
    except ValueError:
        return default


def compose_project_name(compose_file: Path, explicit: str | None = None) -> str:
    """The project name compose would use for ``compose_file``.

    Same precedence as compose: ``-p``, then ``COMPOSE_PROJECT_NAME`` (environment, then the
    ``.env`` beside the file), then the file's top-level ``name:``, then the directory's name,
    lower-cased with everything but ``[a-z0-9_-]`` removed.
    """
    from supervisor.doctor import load_compose

    if explicit:
        return _normalize_project(explicit)
    compose = load_compose(compose_file)
    env_name = os.environ.get("COMPOSE_PROJECT_NAME") or compose.dotenv.get("COMPOSE_PROJECT_NAME")
    if env_name:
        return _normalize_project(env_name)
    if compose.name:
        return _normalize_project(compose.name)
    return _normalize_project(compose.path.resolve().parent.name)


def _normalize_project(name: str) -> str:
    return re.sub(r"[^-_a-z0-9]", "", name.lower()).lstrip("-_")


def compose_target(compose_file: Path, service: str, project: str | None = None) -> Target:
    """The target for a compose file's service; ConfigError (78) if the file or service is bad."""
    from supervisor.doctor import load_compose

    compose = load_compose(compose_file)
    if service not in compose.services:
        raise ConfigError(
            f"{compose_file}: no service {service!r} (services: "
            f"{', '.join(sorted(compose.services)) or 'none'})"
        )
    name = compose_project_name(compose_file, project)
    if not name:
        raise ConfigError(
            f"{compose_file}: cannot tell the compose project name; pass --project-name"
        )
    return Target(project=name, service=service)


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


def _unix_socket(docker_host: str | None) -> str | None:
    """The socket path of a unix DOCKER_HOST (the default one when unset), else None."""
    if not docker_host:
        return "/var/run/docker.sock"
    if docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://") or None
    return None


def connect_from_env(timeout: float) -> Any:
    """A client for DOCKER_HOST, or DockerException when nothing answers there.

    A unix socket is tried first with a socket of our own, closed whatever happens: the SDK
    leaks the socket of a failed connect, one per reconnect attempt while Docker is down.
    """
    import socket

    import docker
    import docker.errors

    path = _unix_socket(os.environ.get("DOCKER_HOST"))
    if path is not None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(timeout)
            probe.connect(path)
        except OSError as exc:
            raise docker.errors.DockerException(
                f"cannot connect to Docker at unix://{path}: {exc.strerror or exc}"
            ) from None
        finally:
            probe.close()
    return docker.from_env(timeout=timeout)


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
        self.policy = Policy.from_config(cfg, agent)
        self.store = StateStore(cfg.state_dir)
        self._probe = make_probe_for(cfg)
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
        self._announced: tuple[float | None, str] | None = None

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
        try:
            try:
                stream = client.events(decode=True, filters=self.target.event_filters())
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
        now = self.clock()
        with self.store.transaction(self.agent, now) as tx:
            new, outcome = reconcile(tx.state, info)
            if new is not tx.state:
                tx.write(new, now)
        last = new.last_run
        if outcome in ("exited", "unstarted") and last is not None:
            self.log.info(
                "daemon.run_ended",
                agent=self.agent,
                container=info.name,
                exit_code=last.exit_code,
                seconds=round(last.duration(now), 3),
                ran=outcome == "exited",
                source="docker",
            )
        elif outcome == "outside" and last is not None:
            self.log.warning(
                "daemon.started_outside_gate",
                agent=self.agent,
                container=info.name,
                started_at=iso(last.started_at),
            )

    def _sleep(self, seconds: float) -> None:
        """The gate wait's sleep: wakes for a stop, a lost connection, or a container change."""
        deadline = self.monotonic() + max(seconds, 0.0)
        while (left := deadline - self.monotonic()) > 0:
            msg = self._next(self._session_id, left)
            if msg is None:
                return
            if self._note(msg.payload) in ("start", "die", "create", "destroy"):
                raise _Resync

    def _on_wait(self, d: Decision, _now: float) -> None:
        key = (d.next_allowed_at, d.reason)
        if key != self._announced:
            self._announced = key
            self.log.info(
                "daemon.waiting",
                agent=self.agent,
                reason=d.reason,
                backoff_level=d.backoff_level,
                next_allowed_at=None if d.next_allowed_at is None else iso(d.next_allowed_at),
            )

    def _gated_start(self, client: Any, info: ContainerInfo) -> bool:
        """Wait for the gate (which records the start), then start. True: look again."""

        def decide_now() -> GateResult:
            return gate_once(
                self.cfg,
                self.store,
                self.agent,
                clock=self.clock,
                record=True,
                probe=self._probe,
            )

        self._announced = None
        try:
            check_identity(self.cfg, self.clock())
        except IdentityError as exc:
            # Never start an agent that would fail to authenticate; look again in a minute or
            # as soon as the container changes (an operator's --force goes through `gate`).
            self.log.error("daemon.identity_refused", agent=self.agent, error=str(exc))
            with contextlib.suppress(_Resync):
                self._sleep(IDENTITY_RECHECK_SECONDS)
            return True
        try:
            result = wait_until_allowed(
                decide_now,
                lambda: state_signature(self.store, self.agent),
                clock=self.clock,
                sleep=self._sleep,
                on_wait=self._on_wait,
            )
        except _Resync:
            return True
        import docker.errors

        d = result.decision
        publish_metrics(self.cfg, result, self.clock())
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
            # The start is recorded and did not happen: the next look records it as a run
            # that ended where it began, and the next start waits for the gate like any other.
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


# --- the gate's end hook -------------------------------------------------------------------------


def inspect_container(name: str, timeout: float = HOOK_TIMEOUT) -> ContainerInfo | None:
    """``docker inspect NAME`` as a :class:`ContainerInfo`; None when there is no such one."""
    import docker.errors

    client = connect_from_env(timeout)
    try:
        return ContainerInfo.from_attrs(client.containers.get(name).attrs)
    except docker.errors.NotFound:
        return None
    finally:
        client.close()


def docker_end_hook(
    cfg: Config,
    agent: str,
    inspect: Callable[[str], ContainerInfo | None] = inspect_container,
) -> EndHook | None:
    """When ``docker.container`` is set: learn the end of the latest run from Docker.

    Where no ``record-exit`` came (compose mode without the daemon), the gate asks Docker how
    the open run ended, so a run that lasted ``stable_after`` resets the backoff. Docker is only
    asked when a run is open, and a Docker that does not answer changes nothing: the hook logs
    and returns the state as it was, and the gate decides as it would without it.
    """
    name = cfg.docker_container
    if not name:
        return None

    def hook(state: AgentState) -> AgentState:
        last = state.last_run
        if last is None or last.ended_at is not None:
            return state
        log = get_logger()
        try:
            info = inspect(name)
        except Exception as exc:  # noqa: BLE001 - whatever Docker does, the gate must answer
            log.warning("docker.unavailable", agent=agent, container=name, error=one_line(exc, 500))
            return state
        if info is None:
            log.info("docker.container_missing", agent=agent, container=name)
            return state
        new, outcome = reconcile(state, info, learn_unstarted=False)
        if outcome == "exited" and new.last_run is not None:
            run_ = new.last_run
            log.info(
                "docker.run_ended",
                agent=agent,
                container=name,
                exit_code=run_.exit_code,
                seconds=round(run_.duration(run_.ended_at or 0.0), 3),
            )
            return new
        return state

    return hook


__all__ = [
    "ContainerInfo",
    "Daemon",
    "Target",
    "check_supervisable",
    "compose_target",
    "docker_end_hook",
    "parse_docker_time",
    "reconcile",
    "run",
]
