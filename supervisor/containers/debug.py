"""The debug workflow: ``debug start`` and ``debug end``, the gate's way, in every mode.

Operators debug the agent on the node: the agent's container with another entrypoint (a long
sleep), ``docker exec`` into it, the agent run under delve. By hand that fights the gate: a
``docker start`` of the debug container is recorded as a start, a ``docker stop`` of a sleep
that ignores SIGTERM ends in 137 (a failure), and after ``release`` the agent waits for its
slot. These two commands do it with the gate instead.

``debug start``
    1. authorises the operator and records the session with a hold until released, in their
       name, in one locked change (:meth:`Gate.debug_started`): from then on no gated start
       happens, whoever asks (the daemon, ``compose up``, a reboot of a mode-1 node);
    2. stops the agent on purpose and records it as such: ``docker stop`` (modes 2 and 3;
       the daemon sees the same kill and die and records the same neutral end, whichever of
       the two comes first; it never restarts a container stopped on purpose, and the hold
       stands anyway), or ``systemctl stop UNIT`` (mode 1: ExecStopPost records 143 for the
       run it names; a stopped unit stays stopped, Restart= restarts only what exits on its
       own). What nobody recorded is recorded from Docker's State, ``stop="debug start"``;
    3. runs the debug container from the agent container's image (by id: the very image)
       with its HostConfig (binds, volumes, tmpfs, network, privileges, capabilities,
       devices, pid/ipc mode, security options...), its environment, user and working
       directory, the given entrypoint, restart "no", no healthcheck, and none of compose's
       ``com.docker.compose.*`` labels, so that neither compose nor a daemon that finds the
       agent by those labels ever takes it for the agent.

``debug end``
    removes the debug container, records a forced start (:meth:`Gate.decide`, audited, with
    the reason "debug session ended: ..."), ends the session and releases the hold
    (:meth:`Gate.debug_ended`), then starts the agent at once: ``docker start`` (the daemon
    sees the start and binds the forced run to it), or ``systemctl start UNIT``, whose own
    gate sees the forced approval as "pending" (Docker has not started it yet) and lets the
    unit through. The forced start is recorded while the hold still stands, so a gate that
    wakes up on the release finds a start on its way rather than a slot to wait for.

Why ``debug-<agent container>`` and not ``<agent container>-debug``: Docker's event filter
``container=NAME`` matches names by prefix, so a daemon that watches ``cilium-agent`` by name
would receive every event of ``cilium-agent-debug`` (and the run its ``die`` might be taken
for); no name filter of the agent's matches ``debug-cilium-agent``. The gate's own look is an
inspect by exact name, so the history never sees the debug container at all.

The mode: ``--unit NAME``, else the unit the debug container's label names (``debug end``),
else ``<agent>.service`` (the shipped ``cilium-agent.service``) when systemd has it loaded
and enabled or active: mode 1. Otherwise the agent is a container that Docker modes start
(``docker.container``, or ``--container``). Mode 1 without ``docker.container`` in the
configuration (the container named by ``--container`` only): the unit's gate cannot see
Docker, hence cannot see the forced start as pending; ``debug end`` then lets the unit's gate
through with a short override (:data:`FALLBACK_OVERRIDE`, audited as every override), released
as soon as the unit has started.

Re-running either command is safe: ``debug start`` with a session in progress stops the agent
again if someone started it, and starts or recreates the debug container if it is gone;
``debug end`` with no session removes a debug container left behind and says so (exit 0).
Docker is imported inside the functions that use it.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from supervisor.base.catalog import EventId
from supervisor.base.errors import EXIT_PROBLEMS, SupervisorError, UsageError, one_line
from supervisor.base.log import get_logger
from supervisor.core.container import SAME_RUN_SLACK, ContainerInfo
from supervisor.core.policy import Decision
from supervisor.core.state import AgentState, DebugSession, Run
from supervisor.gate.inspect import (
    connect_from_env,
    get_container,
    inspect_container,
    labelled_containers,
)
from supervisor.gate.operators import Operator
from supervisor.gate.service import Gate
from supervisor.storage.config import Config

#: The label every debug container carries: the agent it debugs.
DEBUG_LABEL: Final = "io.agent-supervisor.debug"
#: The agent's container the debug container was made from (``debug end`` starts it).
AGENT_CONTAINER_LABEL: Final = "io.agent-supervisor.agent-container"
#: The systemd unit that runs the agent (mode 1), for ``debug end``.
UNIT_LABEL: Final = "io.agent-supervisor.unit"
#: The state directory of the session: ``doctor`` looks only at this node's debug containers.
STATE_DIR_LABEL: Final = "io.agent-supervisor.state-dir"
#: Labels of compose's own: a container with them would be taken for a service's.
COMPOSE_LABELS: Final = "com.docker.compose."
#: The debug container's entrypoint unless one is given: long enough for a day's work.
DEFAULT_ENTRYPOINT: Final = "sleep 10d"
#: A debug session older than this is probably forgotten (``doctor`` says so).
FORGOTTEN_AFTER: Final = 86400.0
#: The override that lets a mode-1 unit's gate through when it cannot see Docker.
FALLBACK_OVERRIDE: Final = 120.0
#: Seconds a Docker API call may take (a stop adds the container's own stop timeout).
DOCKER_TIMEOUT: Final = 60.0
#: Seconds ``systemctl stop|start`` may take: the unit's TimeoutStopSec (60 s), ExecStopPost,
#: and at start the gate (at once here), the helpers and compose creating the container.
SYSTEMCTL_TIMEOUT: Final = 300.0
#: What a run stopped by ``debug start`` records as its stop (``Run.stop``).
STOP_TEXT: Final = "debug start"
#: The ``UnitFileState`` and ``ActiveState`` values that make a unit the agent's (mode 1).
_ENABLED: Final = ("enabled", "enabled-runtime", "linked", "linked-runtime")
_ACTIVE: Final = ("active", "activating", "reloading", "deactivating")
#: An agent's name, as its state file is named.
_AGENT: Final = re.compile(r"[a-z0-9._-]+")

#: Runs ``systemctl ARGS`` with a timeout (seconds); injected by tests of the plumbing.
Systemctl = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


class DebugError(SupervisorError):
    """Docker or systemd did not do what the debug workflow needed; the message says what,
    and what state the node is left in."""

    exit_code = EXIT_PROBLEMS


def run_systemctl(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``systemctl ARGS``, its output captured."""
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def debug_name(container: str) -> str:
    """The debug container's name for the agent's container ``container``."""
    return f"debug-{container}"


def entrypoint_argv(text: str) -> list[str]:
    """``--entrypoint "dlv exec ..."`` as the argv Docker runs (shell words); UsageError when
    it is empty or does not parse."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--entrypoint {text!r}: {exc}") from None
    if not argv:
        raise UsageError("--entrypoint must name a command, e.g. 'sleep 10d'")
    return argv


def _bind_target(bind: str) -> str:
    """The container path of a ``HostConfig.Binds`` entry (``src:dst[:mode]``)."""
    parts = bind.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def create_args(
    attrs: Mapping[str, Any],
    *,
    name: str,
    entrypoint: Sequence[str],
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The arguments of ``APIClient.create_container`` for the debug container of the agent's
    container ``attrs`` (its inspect document): pure.

    The HostConfig is the agent's as Docker recorded it (binds, mounts, tmpfs, network and
    pid/ipc modes, privileges, capabilities, devices, security options, resources), with
    restart "no" and no auto-removal; the volumes the image declared (anonymous volumes,
    which no HostConfig names) are mounted as the agent has them, so the data is the same.
    The environment, user and working directory are the agent's; the image is the agent's
    by id; compose's labels are dropped and ``labels`` added; the healthcheck is off (a
    sleep is not the agent and would only be reported unhealthy).
    """
    host = _debug_host_config(attrs)
    config: Mapping[str, Any] = attrs.get("Config") or {}
    return {
        "image": attrs["Image"],
        "name": name,
        "entrypoint": list(entrypoint),
        "environment": list(config.get("Env") or []),
        "user": config.get("User") or "",
        "working_dir": config.get("WorkingDir") or None,
        "labels": {**_kept_labels(config), **labels},
        "host_config": host,
        "healthcheck": {"Test": ["NONE"]},
    }


def _debug_host_config(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's HostConfig (a copy: ``attrs`` is left as it is) with restart "no" and no
    auto-removal, and the image's volumes added to its mounts.

    Docker must not restart the debug container on its own (the agent's policy would bring a
    second container with the agent's mounts and privileges back after a reboot), nor remove
    it when its entrypoint exits: ``debug start`` run again starts it again, and ``debug end``
    and ``doctor`` find it by its labels.
    """
    host: dict[str, Any] = copy.deepcopy(dict(attrs.get("HostConfig") or {}))
    host["RestartPolicy"] = {"Name": "no", "MaximumRetryCount": 0}
    host["AutoRemove"] = False
    mounts: list[dict[str, Any]] = list(host.get("Mounts") or [])
    mounts += _image_volumes(attrs, host, mounts)
    if mounts:
        host["Mounts"] = mounts
    return host


def _image_volumes(
    attrs: Mapping[str, Any], host: Mapping[str, Any], mounts: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The named volumes the agent has mounted where neither a bind nor a mount of ``host``
    does: the image's anonymous volumes, which no HostConfig names, so that the debug
    container gets the agent's data rather than new empty volumes. One mount a target."""
    taken = {_bind_target(b) for b in host.get("Binds") or []}
    taken |= {str(m.get("Target")) for m in mounts}
    added: list[dict[str, Any]] = []
    for m in attrs.get("Mounts") or []:
        target = str(m.get("Destination") or "")
        if m.get("Type") == "volume" and m.get("Name") and target and target not in taken:
            added.append(
                {
                    "Type": "volume",
                    "Source": m["Name"],
                    "Target": target,
                    "ReadOnly": not m.get("RW", True),
                }
            )
            taken.add(target)
    return added


def _kept_labels(config: Mapping[str, Any]) -> dict[str, str]:
    """The agent's labels but compose's own (:data:`COMPOSE_LABELS`): with them, compose and
    a daemon that finds the agent by them would take the debug container for the agent."""
    return {
        str(k): str(v)
        for k, v in (config.get("Labels") or {}).items()
        if not str(k).startswith(COMPOSE_LABELS)
    }


def agent_command(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The agent's own command line (entrypoint and command), for the delve hint."""
    config: Mapping[str, Any] = attrs.get("Config") or {}
    return tuple(str(w) for w in [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])


def find_unit(agent: str, systemctl: Systemctl = run_systemctl) -> str | None:
    """``<agent>.service`` (the shipped unit's name) when systemd has it loaded and enabled or
    active: the agent is run by it (mode 1). None without systemd, or without such a unit."""
    unit = f"{agent}.service"
    try:
        shown = systemctl(["show", unit, "--property=LoadState,ActiveState,UnitFileState"], 10.0)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return None
    if props.get("UnitFileState") in _ENABLED or props.get("ActiveState") in _ACTIVE:
        return unit
    return None


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stopped:
    """How ``debug start`` stopped the agent, and its run as the history now has it."""

    how: str
    run: Run | None


@dataclass(frozen=True, slots=True)
class Started:
    """What ``debug start`` did. ``resumed``: a session was in progress already. ``what``:
    what happened to the debug container ("created", "started again", "running")."""

    agent: str
    session: DebugSession
    resumed: bool
    stopped: Stopped | None
    what: str
    unit: str | None
    agent_container: str
    agent_command: tuple[str, ...]

    @property
    def exec_line(self) -> str:
        """The operator's way in."""
        return f"docker exec -it {self.session.container} sh"


@dataclass(frozen=True, slots=True)
class Ended:
    """What ``debug end`` did. ``session`` None: there was none to end."""

    agent: str
    session: DebugSession | None
    removed: tuple[str, ...] = ()
    how: str = ""
    decision: Decision | None = None
    run: Run | None = None
    via: str = ""
    lasted: float = 0.0


# --- the workflow ----------------------------------------------------------------------------


class Workflow:
    """``debug start`` and ``debug end`` for one agent, as ``operator``.

    ``container``: the agent's container given on the command line (default
    ``docker.container``); ``unit``: the systemd unit given on the command line (default: the
    debug container's label, then :func:`find_unit`). Docker and systemctl are parameters.
    """

    def __init__(
        self,
        cfg: Config,
        agent: str,
        operator: Operator,
        *,
        container: str | None = None,
        unit: str | None = None,
        connect: Callable[[float], Any] = connect_from_env,
        systemctl: Systemctl = run_systemctl,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.operator = operator
        self.container = container
        self.unit = unit
        self.connect = connect
        self.systemctl = systemctl
        self.log = get_logger()
        # The operator's gate: no probe, no Docker, no certificate (as every operator command).
        self.gate = Gate(cfg, agent, probe=None, inspect=None, identity=None, operator=operator)

    # --- debug start ------------------------------------------------------------------------

    def start(self, entrypoint: str | None, reason: str) -> Started:
        """Hold, stop the agent on purpose, run the debug container (see the module)."""
        self.gate.policy  # noqa: B018 - no cluster size: 78 before anything changes
        self.gate.authorize("debug start")
        wanted = entrypoint if entrypoint is not None else DEFAULT_ENTRYPOINT
        entrypoint_argv(wanted)
        name = self._agent_container()
        unit = self.unit or find_unit(self.agent, self.systemctl)
        client = self._client()
        try:
            agent_c = get_container(client, name)
            if agent_c is None:
                raise DebugError(
                    f"no container {name!r}: the agent's container must exist to be debugged "
                    "(docker.container in config.toml, or --container)"
                )
            agent_name = str(agent_c.name)
            session = self.gate.store.read(self.agent).state.debug
            debug = session.container if session is not None else debug_name(agent_name)
            self._check_ours(get_container(client, debug), debug)
            resumed = session is not None
            if session is None:
                image = str((agent_c.attrs.get("Config") or {}).get("Image") or agent_c.image.id)
                made = DebugSession(debug, image, wanted, self.operator.display, reason, 0.0)
                session = self.gate.debug_started(made).state.debug
                assert session is not None
            elif entrypoint is not None and entrypoint != session.entrypoint:
                raise UsageError(
                    f"a debug session of {self.agent} is in progress with entrypoint "
                    f"{session.entrypoint!r} (by {session.user}): end it first "
                    "(agent-supervisor debug end) to start one with another"
                )
            stopped = self._stop_agent(client, agent_c, unit)
            what = self._run_debug(client, agent_c, session, unit)
            return Started(
                self.agent,
                session,
                resumed,
                stopped,
                what,
                unit,
                agent_name,
                agent_command(agent_c.attrs),
            )
        finally:
            client.close()

    def _stop_agent(self, client: Any, agent_c: Any, unit: str | None) -> Stopped | None:
        """Stop the agent on purpose (the unit, then whatever still runs); record the end that
        nobody recorded. None: it was not running."""
        hows = []
        began = self.gate.clock()
        if unit is not None:
            active = self._unit_state(unit)
            self._systemctl("stop", unit)
            if active in _ACTIVE:
                hows.append(f"systemctl stop {unit}")
        agent_c.reload()
        if (agent_c.attrs.get("State") or {}).get("Running"):
            timeout = (agent_c.attrs.get("Config") or {}).get("StopTimeout")
            seconds = int(timeout) if isinstance(timeout, int) and timeout >= 0 else 10
            try:
                agent_c.stop(timeout=seconds)
            except Exception as exc:  # noqa: BLE001 - the SDK's errors, whatever they are
                raise DebugError(
                    f"docker stop {agent_c.name} failed: {one_line(exc, 300)} (the session is "
                    "recorded and the gate held: run debug start again, or debug end)"
                ) from None
            hows.append("docker stop")
            agent_c.reload()
        if not hows:
            return None
        run = self._record_stop(ContainerInfo.from_attrs(agent_c.attrs), began)
        how = " and ".join(hows)
        self.log.info(
            EventId.DEBUG_AGENT_STOPPED,
            agent=self.agent,
            container=agent_c.name,
            how=how,
            run_id=None if run is None else run.id,
            exit_code=None if run is None else run.exit_code,
            stop=None if run is None else run.stop,
        )
        return Stopped(how, run)

    def _record_stop(self, info: ContainerInfo, began: float) -> Run | None:
        """The run the stop ended, as recorded: by ExecStopPost or the daemon already, else
        from Docker's State now, as stopped by ``debug start``. None: it ended no run (a unit
        stopped while its gate waited)."""
        last = self.gate.store.read(self.agent).state.last_run
        if last is None:
            return None
        if last.ended_at is not None:
            return last if last.ended_at >= began - SAME_RUN_SLACK else None
        fits = (
            last.container in (None, info.id)
            and info.exit_code is not None
            and info.finished_at is not None
            and info.finished_at >= last.started_at - SAME_RUN_SLACK
        )
        if fits:
            self.gate.report_end(
                info.exit_code,
                run_id=last.id,
                source="docker",
                stop=STOP_TEXT,
                at=info.finished_at,
            )
        return self.gate.store.read(self.agent).state.run(last.id)

    def _run_debug(self, client: Any, agent_c: Any, session: DebugSession, unit: str | None) -> str:
        """The debug container running: created, started again, or left running."""
        import docker.errors

        found = get_container(client, session.container)
        try:
            if found is not None:
                if (found.attrs.get("State") or {}).get("Running"):
                    return "running"
                found.start()
                what = "started again"
            else:
                labels = {
                    DEBUG_LABEL: self.agent,
                    AGENT_CONTAINER_LABEL: str(agent_c.name),
                    STATE_DIR_LABEL: str(Path(self.cfg.state_dir).absolute()),
                    **({UNIT_LABEL: unit} if unit is not None else {}),
                }
                args = create_args(
                    agent_c.attrs,
                    name=session.container,
                    entrypoint=entrypoint_argv(session.entrypoint),
                    labels=labels,
                )
                try:
                    made = client.api.create_container(**args)["Id"]
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # 409: made by a debug start run at the same time
                        raise
                    made = session.container
                client.api.start(made)
                what = "created"
        except docker.errors.APIError as exc:
            raise DebugError(
                f"the debug container {session.container} could not be run: "
                f"{one_line(exc, 400)} (the agent is stopped and held: fix it and run debug "
                "start again, or debug end)"
            ) from None
        self.log.info(
            EventId.DEBUG_CONTAINER_RUNNING,
            agent=self.agent,
            container=session.container,
            image=session.image,
            entrypoint=session.entrypoint,
            what=what,
        )
        return what

    # --- debug end --------------------------------------------------------------------------

    def end(self, reason: str | None) -> Ended:
        """Remove the debug container, record a forced start, end the session and release,
        start the agent (see the module)."""
        self.gate.policy  # noqa: B018 - no cluster size: 78 before anything changes
        self.gate.authorize("debug end")
        session = self.gate.store.read(self.agent).state.debug
        if session is None:
            return self._no_session()
        client = self._client()
        try:
            leftovers = self._debug_containers(client, session)
            labels: dict[str, str] = {}
            for c in leftovers:
                labels = {**(c.labels or {}), **labels}
            unit = self.unit or labels.get(UNIT_LABEL) or find_unit(self.agent, self.systemctl)
            container = (
                self.container or self.cfg.docker_container or labels.get(AGENT_CONTAINER_LABEL)
            )
            if unit is None and container is None:
                raise UsageError(
                    "debug end needs the agent's container to start it: --container NAME, or "
                    "docker.container in config.toml (or --unit for a systemd unit)"
                )
            removed = self._remove(client, leftovers)
            why = f"debug session ended: {reason or 'no reason given'}"
            lasted = max(0.0, self.gate.clock() - session.started_at)
            if unit is None:
                assert container is not None
                decision = self._force(container, why)
                self.gate.debug_ended(reason)
                how = self._docker_start(client, container, decision)
                via = "force"
            elif self.cfg.docker_container:
                decision = self._force(self.cfg.docker_container, why)
                self.gate.debug_ended(reason)
                self._systemctl("start", unit)
                how, via = f"systemctl start {unit}", "force"
            else:
                decision = None
                self.gate.debug_ended(reason)
                self.gate.override(FALLBACK_OVERRIDE, why)
                try:
                    self._systemctl("start", unit)
                finally:
                    self._end_fallback(why)
                how, via = f"systemctl start {unit} (through a short override)", "override"
        finally:
            client.close()
        run = self.gate.store.read(self.agent).state.last_run
        self.log.info(
            EventId.DEBUG_AGENT_STARTED,
            agent=self.agent,
            how=how,
            via=via,
            run_id=None if run is None else run.id,
        )
        return Ended(self.agent, session, removed, how, decision, run, via, lasted)

    def _no_session(self) -> Ended:
        """Nothing to end: a debug container left behind is removed, when Docker answers."""
        removed: tuple[str, ...] = ()
        try:
            client = self.connect(DOCKER_TIMEOUT)
        except Exception:  # noqa: BLE001 - no session, nothing to end either way
            client = None
        if client is not None:
            try:
                removed = self._remove(client, self._debug_containers(client, None))
            finally:
                client.close()
        self.log.info(EventId.DEBUG_NO_SESSION, agent=self.agent, removed=list(removed))
        return Ended(self.agent, None, removed)

    def _force(self, container: str, why: str) -> Decision:
        """The forced start, recorded and audited (``gate --force``), Docker asked whether the
        agent runs already (then nothing is recorded)."""

        def inspect() -> ContainerInfo | None:
            return inspect_container(container)

        forced = Gate(
            self.cfg,
            self.agent,
            store=self.gate.store,
            probe=None,
            identity=None,
            inspect=inspect,
            operator=self.operator,
        )
        return forced.decide(force=True, reason=why).decision

    def _docker_start(self, client: Any, container: str, decision: Decision) -> str:
        """``docker start`` of the agent's container, unless it runs already."""
        import docker.errors

        if not decision.start:
            return ""
        try:
            client.api.start(container)
        except docker.errors.APIError as exc:
            raise DebugError(
                f"docker start {container} failed: {one_line(exc, 300)} (the session is "
                f"ended; the forced start {decision.run_id} is recorded and is withdrawn if "
                "Docker does not start the agent within docker.grace: start it with "
                f"docker start {container})"
            ) from None
        return f"docker start {container}"

    def _end_fallback(self, why: str) -> None:
        """Release the override of a mode-1 fallback, once the unit started, if it is still
        the one ``debug end`` set (an operator's own override is left alone)."""
        flag = self.gate.store.read(self.agent).state.override
        if flag is not None and flag.reason == why and flag.user == self.operator.display:
            self.gate.release("the unit started after the debug session")

    # --- Docker and systemd -----------------------------------------------------------------

    def _agent_container(self) -> str:
        name = self.container or self.cfg.docker_container
        if not name:
            raise UsageError(
                "debug start needs the agent's container: docker.container in config.toml, "
                "or --container NAME"
            )
        return name

    def _client(self) -> Any:
        try:
            return self.connect(DOCKER_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - whatever the SDK raises: one line
            raise DebugError(f"Docker did not answer: {one_line(exc, 300)}") from None

    def _check_ours(self, found: Any | None, name: str) -> None:
        if found is not None and (found.labels or {}).get(DEBUG_LABEL) != self.agent:
            raise DebugError(
                f"a container named {name} exists and is not the debug container of "
                f"{self.agent} (no label {DEBUG_LABEL}={self.agent}): remove or rename it"
            )

    def _debug_containers(self, client: Any, session: DebugSession | None) -> list[Any]:
        """The session's debug container, and any other of this agent and state directory."""
        found = {}
        if session is not None:
            c = get_container(client, session.container)
            if c is not None and (c.labels or {}).get(DEBUG_LABEL) == self.agent:
                found[c.id] = c
        labels = [
            f"{DEBUG_LABEL}={self.agent}",
            f"{STATE_DIR_LABEL}={Path(self.cfg.state_dir).absolute()}",
        ]
        for c in labelled_containers(client, labels):
            found.setdefault(c.id, c)
        return list(found.values())

    def _remove(self, client: Any, containers: Sequence[Any]) -> tuple[str, ...]:
        import docker.errors

        removed = []
        for c in containers:
            try:
                client.api.remove_container(c.id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise DebugError(
                    f"the debug container {c.name} could not be removed: {one_line(exc, 300)} "
                    "(nothing else was changed: run debug end again)"
                ) from None
            removed.append(str(c.name))
            self.log.info(EventId.DEBUG_CONTAINER_REMOVED, agent=self.agent, container=c.name)
        return tuple(removed)

    def _systemctl(self, verb: str, unit: str) -> None:
        try:
            done = self.systemctl([verb, unit], SYSTEMCTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DebugError(
                f"systemctl {verb} {unit} did not finish within {SYSTEMCTL_TIMEOUT:g}s: "
                f"see systemctl status {unit}"
            ) from None
        except OSError as exc:
            raise DebugError(f"systemctl {verb} {unit}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            said = one_line(Exception(done.stderr or done.stdout), 300)
            raise DebugError(f"systemctl {verb} {unit} exited {done.returncode}: {said}")

    def _unit_state(self, unit: str) -> str:
        try:
            done = self.systemctl(["show", unit, "--property=ActiveState"], 10.0)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip().removeprefix("ActiveState=")


# --- doctor ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forgotten:
    """A debug session (or container) that looks forgotten, and its fix."""

    agent: str
    problem: str
    fix: str


def _agents(state_dir: Path) -> list[str]:
    """The agents whose state files are in ``state_dir`` (``<agent>.json``)."""
    return sorted(
        p.stem for p in state_dir.glob("*.json") if p.is_file() and _AGENT.fullmatch(p.stem)
    )


def _ago(seconds: float) -> str:
    from supervisor.core.durations import format_duration

    return format_duration(max(0.0, seconds))


def forgotten(
    cfg: Config,
    now: float | None = None,
    *,
    connect: Callable[[float], Any] = connect_from_env,
    after: float = FORGOTTEN_AFTER,
) -> list[Forgotten]:
    """Debug sessions of this node that look forgotten: a session whose debug container is gone
    or not running (the agent stays stopped and held for nothing), one older than ``after``,
    and a debug container of this state directory with no session (left behind).

    Nothing when the state directory does not exist (no gate ever ran here). Docker is asked
    only when there is a state directory; a Docker that does not answer is a problem only when
    a session needs its word.
    """
    from supervisor.storage.store import StateStore

    now = time.time() if now is None else now
    state_dir = Path(cfg.state_dir)
    if not state_dir.is_dir():
        return []
    store = StateStore(state_dir)
    states: dict[str, AgentState] = {}
    for agent in _agents(state_dir):
        try:
            states[agent] = store.read(agent).state
        except SupervisorError:
            continue
    sessions = {a: s.debug for a, s in states.items() if s.debug is not None}
    try:
        client = connect(5.0)
    except Exception as exc:  # noqa: BLE001 - whatever the SDK raises
        why = one_line(exc, 200)
        return [
            Forgotten(
                a,
                f"a debug session of {a} is recorded, and Docker did not answer: {why}",
                "start Docker, then run doctor again",
            )
            for a in sessions
        ]
    try:
        out = [_session_problem(client, a, d, now, after) for a, d in sessions.items()]
        found = [f for f in out if f is not None]
        labels = [DEBUG_LABEL, f"{STATE_DIR_LABEL}={state_dir.absolute()}"]
        for c in labelled_containers(client, labels):
            agent = (c.labels or {}).get(DEBUG_LABEL, "")
            if agent in sessions and sessions[agent].container == c.name:
                continue
            found.append(
                Forgotten(
                    agent,
                    f"debug container {c.name} of {agent} is left behind: no debug session is "
                    "recorded for it (it runs with the agent's mounts and privileges)",
                    f"agent-supervisor debug end --agent {agent} (removes it), or "
                    f"docker rm -f {c.name}",
                )
            )
        return found
    finally:
        client.close()


def _session_problem(
    client: Any, agent: str, session: DebugSession, now: float, after: float
) -> Forgotten | None:

    from supervisor.core.container import parse_docker_time

    since = f"by {session.user} {_ago(now - session.started_at)} ago ({session.reason})"
    end = f"agent-supervisor debug end --agent {agent}"
    c = get_container(client, session.container)
    state = {} if c is None else (c.attrs.get("State") or {})
    if not state.get("Running"):
        what = "is gone" if c is None else f"is {state.get('Status') or 'not running'}"
        return Forgotten(
            agent,
            f"a debug session of {agent} began {since}, and its debug container "
            f"{session.container} {what}: the agent stays stopped and held for nothing",
            f"{end} (starts the agent), or agent-supervisor debug start --agent {agent} "
            "(runs the debug container again)",
        )
    started = parse_docker_time(state.get("StartedAt")) or session.started_at
    if now - min(started, now) > after or now - session.started_at > after:
        return Forgotten(
            agent,
            f"a debug session of {agent} began {since} and is still going: the agent has been "
            f"stopped since, with debug container {session.container} running",
            f"{end} when done (removes the debug container, starts the agent)",
        )
    return None
