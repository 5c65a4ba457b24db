"""The gate service: the one owner of an agent's history on this node.

:class:`Gate` is built once per agent from the configuration. The CLI ``gate`` (with and without
``--wait``), ``status``, ``record-exit``, the operator commands and the daemon all go through it,
and it is the only code that writes the state: every change is an event of
:mod:`supervisor.core.events`, applied with the core's pure ``apply`` and persisted here, one
lock per operation. So every mode reads the same state, reconciles it with Docker the same way,
makes the same decision (:func:`~supervisor.core.policy.decide`, a pure function) and emits the
same ``gate.*`` events, metrics and audit records.

What a decision needs from the world is gathered *before* the lock: the container's State
(Docker can hang for seconds), the probe's answer (only when it can matter: a lock-free look at
the state says so), the certificate. Under the lock the state is read once, brought up to date
(a lost history, the journal's ends, the clocks, Docker's facts), decided on, and written once.
A slow control plane or Docker never holds up ``record-exit`` or an operator.

Clock and sleep are parameters (tenacity's lesson): tests drive :meth:`Gate.wait` with a fake
clock and assert the exact sleeps.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from supervisor.base.catalog import EventId
from supervisor.base.clock import Now, read_now
from supervisor.base.errors import DiskFull, StateError, one_line
from supervisor.base.log import get_logger
from supervisor.core.answers import ProbeAnswer
from supervisor.core.container import ContainerInfo, reconcile
from supervisor.core.events import (
    DebugEnded,
    DebugStarted,
    Ended,
    Event,
    FlagSet,
    Lost,
    Rebased,
    Released,
    Reset,
    apply,
    apply_all,
)
from supervisor.core.policy import Decision, DockerView, Inputs, Policy, Request, decide
from supervisor.core.state import AgentState, DebugSession, OperatorFlag, Run, iso, micro
from supervisor.gate.operators import Operator, authorize
from supervisor.storage.config import Config
from supervisor.storage.store import Loaded, StateStore, Transaction

if TYPE_CHECKING:
    from supervisor.gate.probe import ProbeReport
    from supervisor.node.identity import CertReport

#: The event each operator action logs.
OPERATOR_EVENTS: Final = {
    "hold": EventId.OPERATOR_HOLD,
    "override": EventId.OPERATOR_OVERRIDE,
    "release": EventId.OPERATOR_RELEASE,
    "reset": EventId.OPERATOR_RESET,
    "debug start": EventId.OPERATOR_DEBUG_START,
    "debug end": EventId.OPERATOR_DEBUG_END,
}
#: How often a waiting gate looks at the state file for an operator's action.
POLL_SECONDS: Final = 1.0

#: Asks the control plane (only called when its answer can change the decision).
Probe = Callable[[], "ProbeReport"]
#: Inspects the agent's container: its State, or None when there is no such container, or a
#: whole Look (the compose hook's, which also says whether `up` is about to replace it).
#: Raises whatever Docker raises when it cannot answer.
Inspect = Callable[[], "ContainerInfo | Look | None"]
#: Checks the agent's certificate at a wall-clock time; None when no identity is configured.
IdentityCheck = Callable[[float], "CertReport | None"]


class Cancelled(Exception):
    """The caller was asked to stop (SIGTERM) before an allowed start was recorded."""


@dataclass(frozen=True, slots=True)
class Look:
    """What the caller saw of the agent's container before the lock.

    ``looked`` False: nothing was asked (no container configured, or the caller named the run
    and needs no Docker). ``info`` None after a look: no such container (yet). ``unknown``:
    Docker did not answer, and why. ``replacing``: the caller is about to replace the running
    container (a compose upgrade): a start like any other.
    """

    looked: bool = False
    info: ContainerInfo | None = None
    unknown: str | None = None
    replacing: bool = False


#: Nothing asked of Docker.
NO_LOOK: Final = Look()


@dataclass(frozen=True, slots=True)
class GateResult:
    """A decision and what happened around it."""

    decision: Decision
    quarantined: tuple[str, ...] = ()
    recorded: bool = False
    state: AgentState | None = field(default=None, compare=False)
    probe: ProbeReport | None = None
    #: Docker's view for the decision (None: no container configured).
    docker: DockerView | None = None
    certificate: CertReport | None = None
    #: The state directory could not be locked (read-only): read without the lock.
    read_only: str | None = None


@dataclass(frozen=True, slots=True)
class EndResult:
    """What a reported end did: ``recorded`` (in the state or the journal) or why not."""

    recorded: bool
    why: str
    run_id: str | None = None
    seconds: float | None = None
    journaled: bool = False


@dataclass(frozen=True, slots=True)
class OperatorResult:
    """What an operator action changed."""

    state: AgentState
    dropped: tuple[str, ...] = ()
    backup: str | None = None


class _Default:
    """Marker: build the probe, the Docker inspector or the identity check from the config."""


DEFAULT: Final = _Default()


def new_run_id(now: float) -> str:
    """A run id operators can read: the start's UTC time and a random tag."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


class Gate:
    """One agent's gate on this node. Cheap to build; holds no lock between calls."""

    def __init__(
        self,
        cfg: Config,
        agent: str,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] | None = None,
        boot: Callable[[], Now] | None = None,
        probe: Probe | _Default | None = DEFAULT,
        inspect: Inspect | _Default | None = DEFAULT,
        identity: IdentityCheck | _Default | None = DEFAULT,
        operator: Operator | None = None,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.store = store if store is not None else StateStore(cfg.state_dir)
        # A test's fake wall clock has no boot clock to go with it; the real one does.
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        self._boot = boot if boot is not None else (read_now if clock is None else None)
        self.probe: Probe | None = make_probe_for(cfg) if isinstance(probe, _Default) else probe
        self.inspect: Inspect | None = (
            docker_inspector_for(cfg) if isinstance(inspect, _Default) else inspect
        )
        self.identity: IdentityCheck | None = (
            identity_check_for(cfg) if isinstance(identity, _Default) else identity
        )
        self.operator = operator
        self.log = get_logger()

    @functools.cached_property
    def policy(self) -> Policy:
        """The decision policy (ConfigError, exit 78, without a cluster size). Only a probe that
        can be asked can be waited for."""
        policy = self.cfg.policy(self.agent)
        return replace(policy, probe_configured=self.probe is not None)

    def now(self) -> Now:
        """The clocks, read together (the boot clock only with the real wall clock), the wall
        clock to the microsecond the state keeps: a fact recorded "now" is never after now."""
        if self._boot is not None:
            read = self._boot()
            return Now(micro(read.wall), read.boot, read.boot_id)
        return Now(micro(self.clock()))

    # --- what the world says (before the lock) ----------------------------------------------

    def look(self) -> Look:
        """The container's State; "unknown" (with why) when Docker does not answer."""
        if self.inspect is None:
            return NO_LOOK
        try:
            info = self.inspect()
        except Exception as exc:  # noqa: BLE001 - whatever Docker does, the gate must answer
            why = one_line(exc, 300)
            self.log.warning(EventId.DOCKER_UNAVAILABLE, agent=self.agent, error=why)
            return Look(True, unknown=why)
        if isinstance(info, Look):
            return info
        if info is None:
            self.log.info(EventId.DOCKER_CONTAINER_MISSING, agent=self.agent)
        return Look(True, info)

    def certificate(self, at: float) -> CertReport | None:
        """The certificate's report at ``at`` (None: no identity configured)."""
        if self.identity is None:
            return None
        report = self.identity(at)
        if report is not None:
            for warning in report.warnings:
                self.log.warning(EventId.IDENTITY_WARNING, agent=self.agent, problem=warning)
        return report

    def _ask_probe(self) -> ProbeReport:
        """The probe's answer; only asked when a probe is configured (only then can a
        decision need it)."""
        assert self.probe is not None
        return self.probe()

    # --- one decision -----------------------------------------------------------------------

    def decide(
        self,
        *,
        force: bool = False,
        reason: str | None = None,
        record: bool = True,
        cancelled: Callable[[], bool] | None = None,
        look: Look | None = None,
        announce: bool = True,
    ) -> GateResult:
        """Gather the inputs, then under one lock: bring the state up to date, decide, record.

        With ``record`` (the gate) an allowed start is durably recorded before this returns,
        with the ask a refusal leaves behind, and (``announce``) the ``gate.*`` event is logged,
        the metrics are updated and a forced start is audited. Without ``record`` (``status``)
        only what Docker and the clocks said is kept; nothing is asked or started, no event is
        logged, only the metrics' gauges are refreshed. A waiting gate decides with
        ``announce`` False and announces what changed itself.

        A start that cannot be recorded is not allowed (StateError, exit 74), except a forced
        one, which goes ahead loudly: the operator asked for it and a full disk must not keep
        the network down.

        The probe is asked only when its answer can matter: a lock-free look at the state says
        so. If the slot came between that look and the lock, the decision under the lock says
        it needs the probe (:attr:`Decision.needs_probe`): the lock is released, the probe
        asked, and the decision made again.
        """
        look = look if look is not None else self.look()
        cert = None if force else self.certificate(self.clock())
        problems = () if cert is None or cert.ok else tuple(cert.problems)

        def locked(report: ProbeReport | None) -> GateResult:
            return self._locked(force, reason, record, cancelled, look, problems, report, cert)

        report = None
        if not force and self.probe is not None and self._probe_matters(look, problems):
            report = self._ask_probe()
        result = locked(report)
        if result.decision.needs_probe:
            # The slot came between the look and the lock. A decision with the probe's answer
            # never needs it again: one more is the last.
            result = locked(self._ask_probe())
        if announce and record:
            self._announce(result, reason)
        elif announce:
            publish_metrics(
                self.cfg, result, result.decision.decided_at or self.clock(), count=False
            )
        return result

    def _probe_matters(self, look: Look, problems: Sequence[str]) -> bool:
        """A lock-free look: would the decision, without the probe, need its answer now?"""
        loaded = self.store.read(self.agent)
        now = self.now()
        state = self._brought_up(loaded, now, log=False)
        state, view = self._docker(state, look, now.wall, log=False)
        d = decide(
            self.policy,
            state,
            now.wall,  # if the slot comes while the lock is taken, the decision says so
            inputs=Inputs(docker=view, identity=tuple(problems)),
        )
        return d.needs_probe

    def _locked(
        self,
        force: bool,
        reason: str | None,
        record: bool,
        cancelled: Callable[[], bool] | None,
        look: Look,
        problems: Sequence[str],
        report: ProbeReport | None,
        cert: CertReport | None,
    ) -> GateResult:
        """The decision on the locked state (see :meth:`decide`)."""
        user = self.operator.display if self.operator else None
        read_only = None
        tx_cm: Any = self.store.transaction(self.agent, self.clock())
        try:
            tx: Loaded = tx_cm.__enter__()
        except StateError as exc:
            if force:
                self.log.error(EventId.GATE_FORCED_UNRECORDED, agent=self.agent, why=one_line(exc))
                at = self.now().wall
                d = decide(
                    self.policy,
                    AgentState(self.agent),
                    at,
                    Request(new_run_id(at), force=True, user=user, reason=reason),
                )
                return GateResult(d)  # forced: no certificate was asked for
            if record:
                raise
            # status on a state directory it cannot lock (read-only): read without the lock.
            tx_cm, tx, read_only = None, self.store.read(self.agent), one_line(exc)
        try:
            now = self.now()
            state = self._brought_up(tx, now)
            state, view = self._docker(state, look, now.wall)
            d = decide(
                self.policy,
                state,
                now.wall,
                Request(new_run_id(now.wall), force=force, user=user, reason=reason),
                Inputs(
                    probe=None if report is None else report.answer,
                    docker=view,
                    docker_why=look.unknown or "",
                    identity=tuple(problems),
                ),
            )
            recorded = False
            # Without the lock (status on a read-only directory) nothing is written.
            if isinstance(tx, Transaction):
                if record and not d.needs_probe:
                    if d.start and cancelled is not None and cancelled():
                        # SIGTERM arrived while deciding (a probe can take seconds): record
                        # nothing.
                        raise Cancelled
                    new = apply_all(state, d.events)
                    recorded = self._save(tx, new, now, must=d.start, forced=d.forced)
                    state = new if (recorded or not d.start) else state
                else:
                    self._save(tx, state, now)
            return GateResult(
                d,
                tuple(tx.quarantined),
                recorded and d.start,
                state,
                report,
                view,
                cert,
                read_only,
            )
        finally:
            if tx_cm is not None:
                tx_cm.__exit__(None, None, None)

    def _save(
        self,
        tx: Transaction,
        state: AgentState,
        now: Now,
        *,
        must: bool = False,
        forced: bool = False,
    ) -> bool:
        """Write ``state`` if it changed; True when it is on disk. A start (``must``) that
        cannot be recorded raises (74), unless forced; anything else that cannot be written
        (Docker's facts, an ask) is logged: a failure to keep it must not turn a refusal into an
        I/O error."""
        if state is tx.state and tx.lost is None:
            return True
        try:
            tx.write(_anchored(state, now), now.wall)
        except StateError as exc:
            if must and not forced:
                raise
            event = EventId.GATE_FORCED_UNRECORDED if must else EventId.STATE_WRITE_FAILED
            self.log.error(event, agent=self.agent, why=one_line(exc))
            return False
        return True

    def _brought_up(self, loaded: Loaded, now: Now, *, log: bool = True) -> AgentState:
        """The state as the files hold it, brought up to date: a lost history, the journal's
        ends, and the clocks (invariants 8, 9 and 12)."""
        state = loaded.state
        if loaded.lost is not None:
            # Read without the lock (a peek, status on a read-only directory), a bad file is
            # left where it is: the next writer moves it aside.
            where = (
                f"moved aside to {loaded.quarantined[-1]}"
                if loaded.quarantined
                else "unreadable, left in place"
            )
            why = f"state file {where}: {loaded.lost}"
            state = apply(state, Lost(now.wall, new_run_id(now.wall), why))
        if loaded.pending:
            state = apply_all(state, loaded.pending)
            if log:
                self.log.warning(
                    EventId.STATE_JOURNAL_APPLIED, agent=self.agent, ends=len(loaded.pending)
                )
        rebased = apply(state, Rebased(now))
        if log and rebased.runs != state.runs:
            self.log.warning(EventId.STATE_CLOCK_STEPPED, agent=self.agent, now=iso(now.wall))
        return rebased

    def _docker(
        self, state: AgentState, look: Look, now: float, *, log: bool = True
    ) -> tuple[AgentState, DockerView | None]:
        """The state with Docker's facts (invariant 7), and Docker's view for the decision."""
        if look.unknown is not None:
            return state, "unknown"
        if not look.looked:
            return state, None
        rec = reconcile(state, look.info, now, self.cfg.docker_grace)
        new = apply_all(state, rec.events)
        if log:
            self._log_reconciled(state, new, rec.outcome, look.info)
        view: DockerView = rec.view
        if look.replacing and view == "running":
            view = "replacing"
        return new, view

    def _log_reconciled(
        self, old: AgentState, new: AgentState, outcome: str, info: ContainerInfo | None
    ) -> None:
        fields: dict[str, Any] = {"agent": self.agent}
        if info is not None:
            fields["container"] = info.name
        last = new.last_run
        # Only an end the history kept: Docker's exit of a lost history's placeholder binds the
        # container and ends nothing (invariant 9), so there is no end to report.
        if outcome == "exited" and last is not None and last.ended_at is not None:
            self.log.info(
                EventId.DOCKER_RUN_ENDED,
                **fields,
                run_id=last.id,
                exit_code=last.exit_code,
                seconds=round(last.ended_at - last.started_at, 3),
            )
        elif outcome == "outside" and last is not None:
            self.log.warning(
                EventId.DOCKER_STARTED_OUTSIDE_GATE,
                **fields,
                run_id=last.id,
                started_at=iso(last.started_at),
            )
        elif outcome == "withdrawn":
            # The run the withdrawal removed, compared whole: a history may repeat an id.
            gone = [r for r in old.runs if r not in new.runs]
            self.log.warning(
                EventId.DOCKER_APPROVAL_WITHDRAWN,
                **fields,
                run_id=gone[0].id,
                approved_at=iso(gone[0].started_at),
                why=f"no start followed within {self.cfg.docker_grace:g}s",
            )

    # --- what happened to a run -------------------------------------------------------------

    def report_end(
        self,
        exit_code: int | None,
        *,
        run_id: str | None = None,
        source: str = "record-exit",
        stop: str | None = None,
        at: float | None = None,
        look: Look | None = None,
    ) -> EndResult:
        """A run ended (``record-exit``, a failed exec, the daemon's Docker events).

        A report with no exit status records nothing (systemd runs ``ExecStopPost`` after a
        failed ``ExecStartPre``, when the agent never ran). ``run_id`` names the run to close
        (invariant 12); without one, Docker tells when it can (``docker.container``), else the
        open latest run is closed. A report for a run that is not open changes nothing. When the
        state cannot be written for want of space, the end goes to the journal, and the next
        writer applies it.
        """
        if exit_code is None:
            why = "no exit status: the agent never ran (nothing recorded)"
            self.log.info(EventId.RUN_EXIT_IGNORED, agent=self.agent, run_id=run_id, why=why)
            return EndResult(False, why, run_id)
        look = look if look is not None else (self.look() if run_id is None else NO_LOOK)
        with self.store.transaction(self.agent, self.clock()) as tx:
            now = self.now()
            state, _ = self._docker(self._brought_up(tx, now), look, now.wall)
            end = Ended(
                micro(now.wall if at is None else at),
                exit_code,
                source,  # type: ignore[arg-type]
                run_id,
                stop,
            )
            target = state.last_run if run_id is None else state.run(run_id)
            new = apply(state, end)
            if new is state:
                self._save(tx, state, now)
                why = _not_closed(target, run_id)
                self.log.info(
                    EventId.RUN_EXIT_IGNORED,
                    agent=self.agent,
                    run_id=run_id,
                    exit_code=exit_code,
                    why=why,
                )
                return EndResult(False, why, run_id)
            assert target is not None
            seconds = max(0.0, end.at - target.started_at)
            try:
                tx.write(_anchored(new, now), now.wall)
            except DiskFull as exc:
                # Named, so that it can only ever close this run when it is applied.
                self.store.journal_end(self.agent, end._replace(run_id=target.id))
                self.log.error(
                    EventId.STATE_JOURNALED, agent=self.agent, run_id=target.id, why=one_line(exc)
                )
                return EndResult(True, "kept in the journal", target.id, seconds, journaled=True)
        self.log.info(
            EventId.RUN_EXITED,
            agent=self.agent,
            run_id=target.id,
            exit_code=exit_code,
            seconds=round(seconds, 3),
            source=source,
            stop=stop,
        )
        return EndResult(True, "recorded", target.id, seconds)

    def observe(self, info: ContainerInfo | None) -> AgentState:
        """Reconcile the state file with the container's State now (the daemon, on events)."""
        with self.store.transaction(self.agent, self.clock()) as tx:
            now = self.now()
            state, _ = self._docker(self._brought_up(tx, now), Look(True, info), now.wall)
            self._save(tx, state, now)
            return state

    # --- operators --------------------------------------------------------------------------

    def authorize(self, action: str) -> None:
        """Refuse ``action`` (77, or 78 for a group the node lacks) to anyone who may not take
        it, before anything changes; every refusal is logged as ``operator.refused``."""
        op = self.operator
        assert op is not None
        try:
            authorize(
                op,
                action,
                self.cfg.state_dir,
                self.cfg.operators_group,
                source=self.cfg.source_of("operators_group"),
            )
        except Exception:
            self.log.warning(
                EventId.OPERATOR_REFUSED, action=action, agent=self.agent, user=op.display
            )
            raise

    def operator_action(
        self,
        action: str,
        reason: str | None,
        events: Callable[[float], Sequence[Event]],
        *,
        backup: bool = False,
        **extra: Any,
    ) -> OperatorResult:
        """An operator's decision (hold, override, release, reset): authorised, applied under
        the lock, audited, logged. ``events`` builds the events from the time."""
        self.authorize(action)
        op = self.operator
        assert op is not None
        with self.store.transaction(self.agent, self.clock()) as tx:
            now = self.now()
            self.store.check_audit()  # refuse before changing anything if it cannot be audited
            state = self._brought_up(tx, now)
            dropped = _flags_dropped(state, now.wall) if action == "reset" else ()
            saved = self.store.backup(self.agent, now.wall) if backup else None
            new = apply_all(state, events(now.wall))
            tx.write(_anchored(new, now), now.wall)
            fields = {**extra, "dropped": list(dropped)} if dropped else extra
            try:
                self.store.audit(
                    now.wall,
                    user=op.display,
                    uid=op.uid,
                    command=action,
                    agent=self.agent,
                    reason=reason,
                    **fields,
                )
            except StateError as exc:
                # The change is made and durable; say so, and that the audit line is missing.
                self.log.error(
                    EventId.AUDIT_WRITE_FAILED, agent=self.agent, action=action, why=str(exc)
                )
        self.log.info(
            OPERATOR_EVENTS[action], agent=self.agent, user=op.display, reason=reason, **fields
        )
        if self.cfg.metrics_file and self.cfg.cluster_size is not None:
            # Refresh the gauges (hold_active, next start); no probe, no Docker: an operator's
            # command must not wait on either.
            quiet = Gate(
                self.cfg, self.agent, store=self.store, probe=None, inspect=None, identity=None
            )
            quiet.decide(record=False)
        return OperatorResult(new, dropped, saved)

    def hold(self, seconds: float | None, reason: str) -> OperatorResult:
        """Block every start but a forced one, for ``seconds`` or until released."""
        return self._flag("hold", seconds, reason)

    def override(self, seconds: float | None, reason: str) -> OperatorResult:
        """Let every start through, for ``seconds`` or until released."""
        return self._flag("override", seconds, reason)

    def _flag(self, kind: str, seconds: float | None, reason: str) -> OperatorResult:
        assert self.operator is not None  # as operator_action: an action has an operator
        user = self.operator.display

        def events(now: float) -> Sequence[Event]:
            until = None if seconds is None else micro(now + seconds)
            return (FlagSet(kind, OperatorFlag(user, reason, micro(now), until)),)  # type: ignore[arg-type]

        return self.operator_action(kind, reason, events, seconds=seconds)

    def release(self, reason: str | None) -> OperatorResult:
        """Clear the hold and the override; the next ask is a first ask."""
        return self.operator_action("release", reason, lambda _n: (Released(),))

    def debug_started(self, session: DebugSession) -> OperatorResult:
        """A debug session began: the hold that keeps every gated start away for its length
        (until released) and the session itself, in one locked change, audited."""

        def events(now: float) -> Sequence[Event]:
            why = f"debug session in {session.container}: {session.reason}"
            flag = OperatorFlag(session.user, why, micro(now))  # until released
            return (FlagSet("hold", flag), DebugStarted(replace(session, started_at=micro(now))))

        return self.operator_action(
            "debug start", session.reason, events, container=session.container
        )

    def debug_ended(self, reason: str | None) -> OperatorResult:
        """The debug session ended: the session cleared and the hold released (the caller
        then starts the agent as an audited operator start)."""
        return self.operator_action("debug end", reason, lambda _n: (DebugEnded(), Released()))

    def reset(self, reason: str | None) -> OperatorResult:
        """Forget the history (a backup of the file is kept); names the flags it drops."""
        return self.operator_action("reset", reason, lambda _n: (Reset(),), backup=True)

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
        look: Callable[[], Look] | None = None,
    ) -> GateResult:
        """Re-decide until allowed (or refused for good: a bad identity): at the announced
        time, or as soon as the state file changes.

        Between decisions only the state file's signature is polled (once per ``poll``), so an
        operator's override or release is seen within about a second; the re-decision is the
        same pure decision every caller gets, so a release wakes a waiting gate only into what
        the state allows. The probe, Docker and the certificate are asked once per decision,
        never in a loop. Each new answer (another time, level or reason) is announced once,
        with its own event id (``gate.refused``, ``gate.held``, ...) and ``waiting: true``.
        """
        announced: tuple[str, float | None, int] | None = None
        while True:
            result = self.decide(
                force=force,
                reason=reason,
                cancelled=cancelled,
                announce=False,
                look=None if look is None else look(),
            )
            d = result.decision
            if d.allowed or d.event == EventId.GATE_IDENTITY_REFUSED:
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
        if d.run_id is not None:
            fields["run_id"] = d.run_id
        if d.grid is not None:
            fields["grid"] = d.grid
        if d.probe is not None:
            fields["probe"] = d.probe
        if waiting:
            fields["waiting"] = True
        if d.forced:
            self.log.warning(
                d.event, user=self.operator.display if self.operator else None, **fields
            )
        elif d.event in (EventId.GATE_IDENTITY_REFUSED, EventId.GATE_DOCKER_UNKNOWN):
            self.log.error(d.event, **fields)
        else:
            self.log.info(d.event, **fields)
        publish_metrics(self.cfg, result, d.decided_at or self.clock())
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
                    run_id=d.run_id,
                )
            except StateError as exc:
                self.log.error(EventId.AUDIT_WRITE_FAILED, agent=self.agent, why=str(exc))


def _not_closed(target: Run | None, run_id: str | None) -> str:
    """Why a reported end changed nothing, in the operator's words."""
    if target is None:
        return "no run in progress" if run_id is None else f"run {run_id} is not in the history"
    if target.via == "unknown":
        return "the history is unknown (a bad state file was moved aside): no run to close"
    return f"run {target.id} has ended already"


def _anchored(state: AgentState, now: Now) -> AgentState:
    """The state as it is written, in the frame of ``now`` (invariant 8): with the clock anchor
    its new facts need (a state that had none gets one now), so that the boot clock can place
    them later, and no fact after now (a time Docker or a report gave, pinned as every reader
    would pin it), with the boot clock as without it. The state was brought up to date at this
    same ``now``, so nothing else moves."""
    return apply(state, Rebased(now))


def _flags_dropped(state: AgentState, now: float) -> tuple[str, ...]:
    """The hold and override in force that a reset drops, in the operator's words."""
    out = []
    for name, flag in (("hold", state.hold), ("override", state.override)):
        if flag is not None and flag.active(now):
            until = "released" if flag.until is None else iso(flag.until)
            out.append(f"{name} by {flag.user} until {until}: {flag.reason}")
    return tuple(out)


def state_signature(store: StateStore, agent: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the state file: changes when anyone writes it."""
    try:
        st = os.stat(store.state_path(agent), follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def publish_metrics(cfg: Config, result: GateResult, now: float, *, count: bool = True) -> None:
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
        gauges["history_lost"] = float(state.history_lost)
        ended = [r for r in state.runs if r.exit_code is not None]
        if ended:
            gauges["last_exit_code"] = float(ended[-1].exit_code or 0)
    if result.docker is not None and result.docker != "unknown":
        gauges["agent_running"] = float(result.docker in ("running", "replacing", "pending"))
    counters: dict[tuple[str, str], float] = {}
    if result.probe is not None:
        answer: ProbeAnswer = result.probe.answer
        gauges["probe_healthy"] = float(answer == "ready")
        gauges["probe_broken"] = float(bool(result.probe.broken))
        deciding = result.probe.deciding
        if deciding is not None and deciding.latency is not None:
            gauges["probe_latency_seconds"] = deciding.latency
        if count:
            counters[("probe_answers", answer)] = 1.0
    if result.certificate is not None and result.certificate.seconds_left is not None:
        gauges["certificate_expiry_seconds"] = result.certificate.seconds_left
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


def identity_check_for(cfg: Config) -> IdentityCheck | None:
    """The certificate check of ``[identity]``, or None (cryptography is imported on use)."""
    identity = cfg.identity
    if identity is None:
        return None

    def check(at: float) -> CertReport:
        from supervisor.node.identity import check_identity

        report = check_identity(identity, cfg.node_name, at)
        if not report.ok:
            get_logger().error(EventId.IDENTITY_REFUSED, problems=list(report.problems))
        return report

    return check


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
