"""The gate service: one place where every mode asks whether the agent may start.

:class:`Gate` is built once per agent from the configuration; the CLI ``gate`` (with and
without ``--wait``), ``status``, the operator commands and the daemon all ask it, so every
mode reads the same state, reconciles it with Docker the same way, makes the same decision
(:func:`~supervisor.policy.decide`, a pure function of the state and the clock) and emits the
same ``gate.*`` events, metrics and audit records. A change to gate behaviour is made here once.

Clock and sleep are parameters (tenacity's lesson): tests drive :meth:`Gate.wait` with a fake
clock and assert the exact sleeps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from supervisor.base.errors import StateError, one_line
from supervisor.base.log import get_logger
from supervisor.core.container import ContainerInfo, reconcile
from supervisor.core.policy import Decision, decide, probe_matters, remember
from supervisor.core.state import AgentState, iso
from supervisor.gate.operators import Operator
from supervisor.storage.config import Config
from supervisor.storage.store import StateStore, Transaction

#: How often a waiting gate looks at the state file for an operator's action.
POLL_SECONDS: Final = 1.0

#: Asks the control plane whether it is healthy (True/False); only called when it matters.
Probe = Callable[[], bool]
#: Inspects the agent's container: its State, or None when there is no such container.
#: Raises whatever Docker raises when it cannot answer.
Inspect = Callable[[], ContainerInfo | None]


class Cancelled(Exception):
    """The caller was asked to stop (SIGTERM) before an allowed start was recorded."""


@dataclass(frozen=True, slots=True)
class GateResult:
    """A decision and what happened around it."""

    decision: Decision
    quarantined: tuple[str, ...] = ()
    recorded: bool = False
    state: AgentState | None = field(default=None, compare=False)
    probe_healthy: bool | None = None


@dataclass(frozen=True, slots=True)
class _Ask:
    """What one decision was asked for (see :meth:`Gate.decide`)."""

    force: bool
    reason: str | None
    record: bool
    cancelled: Callable[[], bool] | None
    asked: bool  # the probe was asked (or need not be: a forced start)


class _Default:
    """Marker: build the probe or the Docker inspector from the configuration."""


DEFAULT: Final = _Default()


class Gate:
    """One agent's gate on this node. Cheap to build; holds no lock between calls."""

    def __init__(
        self,
        cfg: Config,
        agent: str,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        probe: Probe | _Default | None = DEFAULT,
        inspect: Inspect | _Default | None = DEFAULT,
        operator: Operator | None = None,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.policy = cfg.policy(agent)  # cluster_size missing -> 78 first
        self.store = store if store is not None else StateStore(cfg.state_dir)
        self.clock = clock
        self.probe: Probe | None = make_probe_for(cfg) if isinstance(probe, _Default) else probe
        self.inspect: Inspect | None = (
            docker_inspector_for(cfg) if isinstance(inspect, _Default) else inspect
        )
        self.operator = operator
        #: Seconds the agent's certificate has left, for the metrics (set by the caller).
        self.cert_seconds_left: float | None = None
        self.log = get_logger()

    # --- one decision -----------------------------------------------------------------------

    def decide(
        self,
        *,
        force: bool = False,
        reason: str | None = None,
        record: bool = True,
        cancelled: Callable[[], bool] | None = None,
        now: float | None = None,
        announce: bool = True,
    ) -> GateResult:
        """Load the state under the lock, reconcile it with Docker, decide, record, say so.

        With ``record`` (the gate) an allowed start is durably recorded before this returns,
        and (``announce``) the ``gate.*`` event is logged, the metrics are updated and a forced
        start is audited. Without ``record`` (``status``, operator commands) nothing is
        recorded, no event is logged and only the metrics' gauges are refreshed. A waiting
        gate decides with ``announce`` False and announces what changed itself.

        A start that cannot be recorded is not allowed (StateError, exit 74), except a forced
        one, which goes ahead loudly: the operator asked for it and a full disk must not keep
        the network down.

        ``now`` None (the normal case) reads the clock after the lock is taken: a time read
        before waiting for the lock would be stale by the wait, and starts would be recorded
        out of order. The probe and Docker are asked before the lock is taken (each can take
        seconds), so a slow control plane or Docker never holds up record-exit or operators.
        """
        info = self._inspect()
        asked = False
        while True:
            healthy = None if force else self._probe_if_it_matters(info, now, always=asked)
            ask = _Ask(force, reason, record, cancelled, asked or force)
            result = self._decide_locked(ask, info, healthy, now)
            if result is not None:
                break
            asked = True  # the slot came between the look and the lock: ask, then decide
        if announce and record:
            self._announce(result, reason)
        elif announce:
            at = result.decision.decided_at or self.clock()
            publish_metrics(self.cfg, result, at, count=False)
        return result

    def _decide_locked(
        self, ask: _Ask, info: ContainerInfo | None, healthy: bool | None, now: float | None
    ) -> GateResult | None:
        """The locked part of :meth:`decide`; None when the probe matters but was not asked
        (the quick look before the lock said it did not), so the caller asks and comes back."""
        user = self.operator.display if self.operator else None
        try:
            tx_cm = self.store.transaction(self.agent, now)
            tx = tx_cm.__enter__()
        except StateError:
            if not ask.force:
                raise
            self.log.error("gate.forced_unrecorded", agent=self.agent, why="state unavailable")
            at = self.clock() if now is None else now
            d = decide(
                self.policy, AgentState(self.agent), at, force=True, reason=ask.reason, user=user
            )
            return GateResult(d)
        try:
            at = self.clock() if now is None else now
            return self._decide_in(tx, ask, info, healthy, at, user)
        finally:
            tx_cm.__exit__(None, None, None)

    def _decide_in(
        self,
        tx: Transaction,
        ask: _Ask,
        info: ContainerInfo | None,
        healthy: bool | None,
        now: float,
        user: str | None,
    ) -> GateResult | None:
        """The decision on the locked state; see :meth:`_decide_locked`."""
        state = self._observed(tx.state, info, now)
        matters = self.probe is not None and probe_matters(self.policy, state, now)
        if healthy is None and matters and not ask.asked:
            return None
        healthy = healthy if matters else None  # the state may have changed meanwhile
        d = decide(
            self.policy,
            state,
            now,
            force=ask.force,
            reason=ask.reason,
            user=user,
            control_plane_healthy=healthy,
            running=info is not None and info.running,
        )
        recorded = False
        if d.start and ask.record:
            if ask.cancelled is not None and ask.cancelled():
                # SIGTERM arrived while deciding (a probe can take seconds): record nothing.
                raise Cancelled
            recorded, state = self._record_start(tx, state, d, user, ask.reason)
        else:
            # What Docker, the clock or the probe told us is kept: a probe's "not now"
            # becomes a fact of the state, so every later caller waits for the same slot.
            state = remember(state, d)
            if state is not tx.state:
                self._keep(tx, state, now)
        return GateResult(d, tuple(tx.quarantined), recorded, state, healthy)

    def _record_start(
        self,
        tx: Transaction,
        state: AgentState,
        d: Decision,
        user: str | None,
        reason: str | None,
    ) -> tuple[bool, AgentState]:
        """Durably record the allowed start; a forced one goes ahead loudly if it cannot be."""
        now = d.decided_at if d.decided_at is not None else self.clock()
        new = state.record_start(now, via=d.via, user=user, reason=reason if d.forced else None)
        try:
            tx.write(new, now)
        except StateError as exc:
            if not d.forced:
                raise
            self.log.error("gate.forced_unrecorded", agent=self.agent, why=str(exc))
            return False, state
        return True, new

    def _keep(self, tx: Transaction, state: AgentState, now: float) -> None:
        """Write what Docker, the clock or the probe told us; a failure to write it must not
        turn a refusal into an I/O error."""
        try:
            tx.write(state, now)
        except StateError as exc:
            self.log.warning("state.write_failed", agent=self.agent, why=str(exc))

    def _probe_if_it_matters(
        self, info: ContainerInfo | None, now: float | None, *, always: bool = False
    ) -> bool | None:
        """Ask the control plane only when its answer can change the decision.

        A quick locked look at the state says whether it can (``always``: do not look, ask);
        the decision checks it again.
        """
        if self.probe is None or (info is not None and info.running):
            return None
        if always:
            return self.probe()
        at = self.clock() if now is None else now
        peek = self.store.read(self.agent, now).state
        if info is not None:
            peek = reconcile(peek, info, at, self.cfg.docker_grace)[0]
        return self.probe() if probe_matters(self.policy, peek.clamp_future(at), at) else None

    def _inspect(self) -> ContainerInfo | None:
        """The container's State; None when not configured, missing, or Docker is away."""
        if self.inspect is None:
            return None
        try:
            info = self.inspect()
        except Exception as exc:  # noqa: BLE001 - whatever Docker does, the gate must answer
            self.log.warning("docker.unavailable", agent=self.agent, error=one_line(exc, 500))
            return None
        if info is None:
            self.log.info("docker.container_missing", agent=self.agent)
        return info

    def _observed(self, state: AgentState, info: ContainerInfo | None, now: float) -> AgentState:
        """The state with Docker's facts and a clock step applied (logged, not yet written)."""
        if info is not None:
            state = self._reconciled(state, info, now)
        clamped = state.clamp_future(now)
        if clamped is not state:
            self.log.warning("state.clock_stepped_back", agent=self.agent, now=iso(now))
        return clamped

    def _reconciled(self, state: AgentState, info: ContainerInfo, now: float) -> AgentState:
        new, outcome = reconcile(state, info, now, self.cfg.docker_grace)
        last = new.last_run
        fields: dict[str, Any] = {"agent": self.agent, "container": info.name}
        if outcome == "exited" and last is not None:
            self.log.info(
                "docker.run_ended",
                **fields,
                exit_code=last.exit_code,
                seconds=round(last.duration(now), 3),
            )
        elif outcome == "outside" and last is not None:
            self.log.warning(
                "docker.started_outside_gate", **fields, started_at=iso(last.started_at)
            )
        elif outcome == "withdrawn":
            withdrawn = state.runs[len(new.runs)] if len(state.runs) > len(new.runs) else None
            self.log.warning(
                "docker.approval_withdrawn",
                **fields,
                approved_at=None if withdrawn is None else iso(withdrawn.started_at),
                why=f"no start followed within {self.cfg.docker_grace:g}s",
            )
        return new

    def observe(self, info: ContainerInfo) -> AgentState:
        """Reconcile the state file with the container's State now (the daemon, on events)."""
        with self.store.transaction(self.agent) as tx:
            now = self.clock()
            new = self._observed(tx.state, info, now)
            if new is not tx.state:
                tx.write(new, now)
            return new

    # --- waiting ----------------------------------------------------------------------------

    def wait(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[Decision, float], None] | None = None,
        force: bool = False,
        reason: str | None = None,
        cancelled: Callable[[], bool] | None = None,
        poll: float = POLL_SECONDS,
    ) -> GateResult:
        """Re-decide until allowed: at the announced time, or as soon as the state file changes.

        Between decisions only the state file's signature is polled (once per ``poll``), so an
        operator's override or release is seen within about a second; the re-decision is the
        same pure decision every caller gets, so a release wakes a waiting gate only into what
        the state allows. A probe is made once per decision, never in a loop. Each new answer
        (another time, level or reason) is announced once, with its own event id
        (``gate.refused``, ``gate.held``) and ``waiting: true``.
        """
        announced: tuple[str, float | None, int] | None = None
        while True:
            result = self.decide(force=force, reason=reason, cancelled=cancelled, announce=False)
            d = result.decision
            if d.allowed:
                self._announce(result, reason)
                return result
            key = (d.event, d.next_allowed_at, d.backoff_level)
            if key != announced:
                announced = key
                self._announce(result, reason, waiting=True)
            seen = state_signature(self.store, self.agent)
            target = d.next_allowed_at
            while True:
                now = self.clock()
                if target is not None and now >= target:
                    break
                if on_wait is not None:
                    on_wait(d, now)
                sleep(max(poll if target is None else min(poll, target - now), 0.0))
                if state_signature(self.store, self.agent) != seen:
                    break

    # --- saying so --------------------------------------------------------------------------

    def _announce(self, result: GateResult, reason: str | None, *, waiting: bool = False) -> None:
        """The decision's event, its metrics, and the audit line of a recorded forced start."""
        d = result.decision
        fields: dict[str, Any] = {
            "agent": d.agent,
            "node": d.node,
            "reason": d.reason,
            "window_seconds": d.window_seconds,
            "backoff_level": d.backoff_level,
            "next_allowed_at": None if d.next_allowed_at is None else iso(d.next_allowed_at),
            "recorded": result.recorded,
        }
        if waiting:
            fields["waiting"] = True
        if d.forced:
            self.log.warning(
                d.event, user=self.operator.display if self.operator else None, **fields
            )
        else:
            self.log.info(d.event, **fields)
        publish_metrics(
            self.cfg, result, d.decided_at or self.clock(), cert_seconds_left=self.cert_seconds_left
        )
        if d.forced and result.recorded:
            # The start is recorded and will happen: an audit failure must not stop it now.
            op = self.operator
            try:
                self.store.audit(
                    d.decided_at or self.clock(),
                    user=op.display if op else None,
                    uid=op.uid if op else None,
                    command="gate --force",
                    agent=self.agent,
                    reason=reason,
                )
            except StateError as exc:
                self.log.error("audit.write_failed", agent=self.agent, why=str(exc))


def state_signature(store: StateStore, agent: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the state file: changes when anyone writes it."""
    try:
        st = os.stat(store.state_path(agent), follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def publish_metrics(
    cfg: Config,
    result: GateResult,
    now: float,
    *,
    count: bool = True,
    cert_seconds_left: float | None = None,
) -> None:
    """Write the decision to ``metrics_file`` if configured; never fails the caller.

    ``count`` is False for callers that only refresh gauges (``status``, operator commands) so
    that the starts counter counts gate decisions only.
    """
    if not cfg.metrics_file:
        return
    from supervisor.gate.metrics import Snapshot, update_metrics

    d = result.decision
    state = result.state
    gauges: dict[str, float] = {
        "backoff_level": d.backoff_level,
        "window_seconds": d.window_seconds,
        "next_allowed_timestamp_seconds": d.next_allowed_at or 0.0,
        "last_decision_timestamp_seconds": now,
    }
    if state is not None:
        gauges["hold_active"] = float(state.hold is not None and state.hold.active(now))
        gauges["override_active"] = float(state.override is not None and state.override.active(now))
        gauges["history_lost"] = float(
            state.last_run is not None and state.last_run.via == "unknown"
        )
        ended = [r for r in state.runs if r.exit_code is not None]
        if ended:
            gauges["last_exit_code"] = float(ended[-1].exit_code or 0)
    if result.probe_healthy is not None:
        gauges["probe_healthy"] = float(result.probe_healthy)
    if cert_seconds_left is not None:
        gauges["certificate_expiry_seconds"] = cert_seconds_left
    counters: dict[tuple[str, str], float] = {}
    if count:
        counters[("starts", _outcome(d))] = 1.0
    update_metrics(cfg.metrics_file, cfg.state_dir, Snapshot(d.agent, gauges, counters))


def _outcome(d: Decision) -> str:
    if d.forced:
        return "forced"
    if d.via == "override":
        return "override"
    if d.allowed and not d.start:
        return "running"
    return "allowed" if d.allowed else "refused"


def check_identity(cfg: Config, now: float) -> float | None:
    """Refuse (IdentityError, exit 78) a bad agent identity; return the seconds it has left.

    None when no ``[identity]`` is configured. The cryptography import happens only then.
    """
    if cfg.identity is None:
        return None
    from supervisor.base.errors import IdentityError
    from supervisor.node.identity import check_identity as check
    from supervisor.node.identity import identity_message

    report = check(cfg.identity, cfg.node_name, now)
    log = get_logger()
    for warning in report.warnings:
        log.warning("identity.warning", problem=warning)
    if not report.ok:
        log.error("gate.identity_refused", problems=list(report.problems))
        raise IdentityError(identity_message(report))
    return report.seconds_left


def docker_inspector_for(cfg: Config) -> Inspect | None:
    """Inspect ``docker.container`` when it is set, else None (the SDK is imported on use)."""
    name = cfg.docker_container
    if not name:
        return None

    def inspect() -> ContainerInfo | None:
        from supervisor.gate.inspect import inspect_container

        return inspect_container(name)

    return inspect


def make_probe_for(cfg: Config) -> Probe | None:
    """The control-plane probe, or None; http.client and ssl are imported only when needed."""
    if not cfg.probe.urls:
        return None
    from supervisor.gate.probe import make_probe

    return make_probe(cfg)
