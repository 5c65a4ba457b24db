"""Running the gate: load state under the lock, decide, durably record an allowed start.

:func:`gate_once` is one decision; :func:`wait_until_allowed` is the ``--wait`` loop. Both take
the clock and sleep as parameters (tenacity's lesson), so tests drive them with fake time and
the daemon reuses them unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from supervisor.config import Config
from supervisor.errors import StateError
from supervisor.log import get_logger
from supervisor.operators import Operator
from supervisor.policy import Decision, Policy, decide, probe_matters
from supervisor.state import AgentState, iso
from supervisor.store import StateStore

#: How often a waiting gate looks at the state file for an operator's action.
POLL_SECONDS: Final = 1.0

#: Learns how the last run ended from outside (Docker) when no record-exit came.
EndHook = Callable[[AgentState], AgentState]
#: Asks the control plane whether it is healthy (True/False); only called when it matters.
Probe = Callable[[], bool]


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


def gate_once(
    cfg: Config,
    store: StateStore,
    agent: str,
    now: float | None = None,
    *,
    clock: Callable[[], float] = time.time,
    force: bool = False,
    reason: str | None = None,
    operator: Operator | None = None,
    end_hook: EndHook | None = None,
    probe: Probe | None = None,
    record: bool = True,
    cancelled: Callable[[], bool] | None = None,
) -> GateResult:
    """Decide once; if allowed and ``record``, write the start before returning.

    A start that cannot be recorded is not allowed (StateError, exit 74), except a forced one,
    which goes ahead loudly: the operator asked for it and a full disk must not keep the
    network down.

    ``now`` None (the normal case) reads ``clock`` after the lock is taken: a time read before
    waiting for the lock would be stale by the wait, and starts would be recorded out of order.
    """
    policy = Policy.from_config(cfg, agent)
    log = get_logger()
    user = operator.display if operator else None
    # The probe is a network request (up to probe.timeout per URL): ask it before taking the
    # lock for the decision, so a slow control plane never holds up record-exit or operators.
    # A quick locked look says whether the answer can matter; the decision re-checks it.
    healthy: bool | None = None
    if probe is not None and not force:
        peek = store.read(agent).state
        at = clock() if now is None else now
        if probe_matters(policy, peek.clamp_future(at), at):
            healthy = probe()
    try:
        tx_cm = store.transaction(agent, now)
        tx = tx_cm.__enter__()
    except StateError:
        if not force:
            raise
        log.error("gate.forced_unrecorded", agent=agent, why="state unavailable")
        at = clock() if now is None else now
        d = decide(policy, AgentState(agent), at, force=True, reason=reason, user=user)
        return GateResult(d)
    try:
        if now is None:
            now = clock()
        state = tx.state
        if end_hook is not None:
            state = end_hook(state)
        clamped = state.clamp_future(now)
        if clamped is not state:
            log.warning(
                "state.clock_stepped_back",
                agent=agent,
                latest_start=iso(max(r.started_at for r in state.runs)),
                now=iso(now),
            )
            state = clamped
        if healthy is not None and not probe_matters(policy, state, now):
            healthy = None  # the state changed meanwhile (an exit, a start): no longer asked
        d = decide(
            policy, state, now, force=force, reason=reason, user=user, control_plane_healthy=healthy
        )
        recorded = False
        if d.allowed and record and cancelled is not None and cancelled():
            # SIGTERM arrived while deciding (a probe can take seconds): record nothing.
            raise Cancelled
        if d.allowed and record:
            new = state.record_start(
                now,
                via=d.via,
                user=user,
                reason=reason if d.forced else None,
            )
            try:
                tx.write(new, now)
                recorded = True
                state = new
            except StateError as exc:
                if not d.forced:
                    raise
                log.error("gate.forced_unrecorded", agent=agent, why=str(exc))
        elif state is not tx.state:
            # Docker told us how the last run ended: keep it, but a failure to write it must
            # not turn a refusal into an I/O error.
            try:
                tx.write(state, now)
            except StateError as exc:
                log.warning("state.write_failed", agent=agent, why=str(exc))
        return GateResult(d, tuple(tx.quarantined), recorded, state, healthy)
    finally:
        tx_cm.__exit__(None, None, None)


def state_signature(store: StateStore, agent: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the state file: changes when anyone writes it."""
    try:
        st = os.stat(store.state_path(agent), follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def wait_until_allowed(
    decide_now: Callable[[], GateResult],
    signature: Callable[[], object],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[Decision, float], None] | None = None,
    poll: float = POLL_SECONDS,
) -> GateResult:
    """Re-decide until allowed: at the announced time, or as soon as the state file changes.

    Between decisions only the state file's signature is polled (once per ``poll``), so an
    operator's override or release is seen within about a second, and a control-plane probe
    is made once per decision, never in a loop.
    """
    while True:
        result = decide_now()
        if result.decision.allowed:
            return result
        seen = signature()
        target = result.decision.next_allowed_at
        while True:
            now = clock()
            if target is not None and now >= target:
                break
            if on_wait is not None:
                on_wait(result.decision, now)
            remaining = poll if target is None else min(poll, target - now)
            sleep(max(remaining, 0.0))
            if signature() != seen:
                break


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
    from supervisor.metrics import Snapshot, update_metrics

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
        ended = [r for r in state.runs if r.exit_code is not None]
        if ended:
            gauges["last_exit_code"] = float(ended[-1].exit_code or 0)
    if result.probe_healthy is not None:
        gauges["probe_healthy"] = float(result.probe_healthy)
    if cert_seconds_left is not None:
        gauges["certificate_expiry_seconds"] = cert_seconds_left
    outcome: str = (
        "forced"
        if d.forced
        else d.via
        if d.via == "override"
        else ("allowed" if d.allowed else "refused")
    )
    counters = {("starts", outcome): 1.0} if count else {}
    update_metrics(cfg.metrics_file, cfg.state_dir, Snapshot(d.agent, gauges, counters))


def check_identity(cfg: Config, now: float) -> float | None:
    """Refuse (IdentityError, exit 78) a bad agent identity; return the seconds it has left.

    None when no ``[identity]`` is configured. The cryptography import happens only then.
    """
    if cfg.identity is None:
        return None
    from supervisor.errors import IdentityError
    from supervisor.identity import check_identity as check
    from supervisor.identity import identity_message

    report = check(cfg.identity, cfg.node_name, now)
    log = get_logger()
    for warning in report.warnings:
        log.warning("identity.warning", problem=warning)
    if not report.ok:
        log.error("gate.identity_refused", problems=list(report.problems))
        raise IdentityError(identity_message(report))
    return report.seconds_left


def docker_end_hook_for(cfg: Config, agent: str) -> EndHook | None:
    """Docker's record of the last run when ``docker.container`` is set, else None.

    docker_watch (and the docker SDK behind it) is imported only then: not on the plain gate.
    """
    if not cfg.docker_container:
        return None
    from supervisor.docker_watch import docker_end_hook

    return docker_end_hook(cfg, agent)


def make_probe_for(cfg: Config) -> Probe | None:
    """The control-plane probe, or None; http.client and ssl are imported only when needed."""
    if not cfg.probe.urls:
        return None
    from supervisor.probe import make_probe

    return make_probe(cfg)
