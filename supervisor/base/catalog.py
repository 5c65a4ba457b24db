"""Every structured log event, in one catalog: the event id, its usual level, what it means.

Log pipelines count and alert on these ids, so they are part of the contract: a new event is
added here (and to the docs' list, which a test compares with this one), an id never changes
its meaning, and no code logs an event that is not here (a test scans every call). stamina
keeps its instrumentation names in one place the same way.

The ids are :class:`str` values (a :class:`~enum.StrEnum`), so a JSON log line carries the
plain id: ``"event": "gate.allowed"``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

Level = Literal["debug", "info", "warning", "error"]


class EventId(StrEnum):
    """The id of a structured log event (the ``event`` key of each JSON log line)."""

    # The gate's decisions (also the Decision's ``event``).
    GATE_ALLOWED = "gate.allowed"
    GATE_REFUSED = "gate.refused"
    GATE_DEFERRED = "gate.deferred"
    GATE_HELD = "gate.held"
    GATE_OVERRIDE = "gate.override"
    GATE_FORCED = "gate.forced"
    GATE_ALREADY_RUNNING = "gate.already_running"
    GATE_PENDING = "gate.pending"
    GATE_DOCKER_UNKNOWN = "gate.docker_unknown"
    GATE_IDENTITY_REFUSED = "gate.identity_refused"
    GATE_PROBE_NEEDED = "gate.probe_needed"
    GATE_FORCED_UNRECORDED = "gate.forced_unrecorded"
    GATE_WAIT_INTERRUPTED = "gate.wait_interrupted"
    # Runs.
    RUN_EXITED = "run.exited"
    RUN_EXIT_IGNORED = "run.exit_ignored"
    # The state file.
    STATE_QUARANTINED = "state.quarantined"
    STATE_CLOCK_STEPPED = "state.clock_stepped"
    STATE_WRITE_FAILED = "state.write_failed"
    STATE_JOURNALED = "state.journaled"
    STATE_JOURNAL_APPLIED = "state.journal_applied"
    STATE_JOURNAL_UNREADABLE = "state.journal_unreadable"
    # Docker's facts.
    DOCKER_UNAVAILABLE = "docker.unavailable"
    DOCKER_CONTAINER_MISSING = "docker.container_missing"
    DOCKER_RUN_ENDED = "docker.run_ended"
    DOCKER_STARTED_OUTSIDE_GATE = "docker.started_outside_gate"
    DOCKER_APPROVAL_WITHDRAWN = "docker.approval_withdrawn"
    DOCKER_RECREATE_EXPECTED = "docker.recreate_expected"
    DOCKER_RECREATE_UNKNOWN = "docker.recreate_unknown"
    # The control-plane probe.
    PROBE_READY = "probe.ready"
    PROBE_LOADED = "probe.loaded"
    PROBE_DOWN = "probe.down"
    PROBE_BROKEN = "probe.broken"
    # The certificate.
    IDENTITY_WARNING = "identity.warning"
    IDENTITY_REFUSED = "identity.refused"
    # Operators.
    OPERATOR_HOLD = "operator.hold"
    OPERATOR_OVERRIDE = "operator.override"
    OPERATOR_RELEASE = "operator.release"
    OPERATOR_RESET = "operator.reset"
    OPERATOR_DEBUG_START = "operator.debug_start"
    OPERATOR_DEBUG_END = "operator.debug_end"
    OPERATOR_REFUSED = "operator.refused"
    AUDIT_WRITE_FAILED = "audit.write_failed"
    # The debug workflow (debug start, debug end).
    DEBUG_AGENT_STOPPED = "debug.agent_stopped"
    DEBUG_CONTAINER_RUNNING = "debug.container_running"
    DEBUG_CONTAINER_REMOVED = "debug.container_removed"
    DEBUG_AGENT_STARTED = "debug.agent_started"
    DEBUG_NO_SESSION = "debug.no_session"
    # The daemon (mode 2).
    DAEMON_STARTED = "daemon.started"
    DAEMON_STOPPED = "daemon.stopped"
    DAEMON_RECONNECTED = "daemon.reconnected"
    DAEMON_DOCKER_UNAVAILABLE = "daemon.docker_unavailable"
    DAEMON_STATE_ERROR = "daemon.state_error"
    DAEMON_CONTAINER_MISSING = "daemon.container_missing"
    DAEMON_CONTAINER_STARTED = "daemon.container_started"
    DAEMON_START_FAILED = "daemon.start_failed"
    DAEMON_STOPPED_BY_OPERATOR = "daemon.stopped_by_operator"
    DAEMON_IDENTITY_REFUSED = "daemon.identity_refused"
    DAEMON_DRAIN_FAILED = "daemon.drain_failed"
    # Node tools and the rest.
    CONFIG_RENDERED = "config.rendered"
    CONFIG_RECOVERED = "config.recovered"
    CONFIG_IMPORTED = "config.imported"
    CERTS_CSR_WRITTEN = "certs.csr_written"
    KUBECONFIG_WRITTEN = "kubeconfig.written"
    METRICS_WRITE_FAILED = "metrics.write_failed"
    METRICS_UNPARSABLE = "metrics.unparsable"
    SIMULATE_PLOT_WRITTEN = "simulate.plot_written"
    CLI_ERROR = "cli.error"


#: Each event's usual level and what it means, for operators (docs/metrics-and-logs.md lists
#: exactly these; tests/test_catalog.py checks both ways).
MEANING: Final[dict[EventId, tuple[Level, str]]] = {
    EventId.GATE_ALLOWED: ("info", "a start allowed at its slot and recorded (with its run id)"),
    EventId.GATE_REFUSED: ("info", "not now: the start waits for the slot it names"),
    EventId.GATE_DEFERRED: (
        "info",
        "the probe said loaded or down at the slot: the start waits for the node's next slot",
    ),
    EventId.GATE_HELD: ("info", "an operator's hold refuses the start"),
    EventId.GATE_OVERRIDE: ("info", "an operator's override let the start through"),
    EventId.GATE_FORCED: ("warning", "gate --force let the start through (audited)"),
    EventId.GATE_ALREADY_RUNNING: ("info", "Docker says the agent runs: nothing to start"),
    EventId.GATE_PENDING: ("info", "an approved start is on its way: nothing more to start"),
    EventId.GATE_DOCKER_UNKNOWN: (
        "error",
        "Docker did not answer: no start (nothing is known), asked again in 5 s",
    ),
    EventId.GATE_IDENTITY_REFUSED: ("error", "the agent's certificate is not usable (exit 78)"),
    EventId.GATE_PROBE_NEEDED: ("debug", "the slot has come: the probe is asked (internal)"),
    EventId.GATE_FORCED_UNRECORDED: (
        "error",
        "a forced start that could not be recorded (the state is unavailable) goes ahead",
    ),
    EventId.GATE_WAIT_INTERRUPTED: ("info", "SIGTERM/SIGINT ended a wait: nothing recorded"),
    EventId.RUN_EXITED: ("info", "the end of a run was recorded (record-exit, Docker, exec)"),
    EventId.RUN_EXIT_IGNORED: (
        "info",
        "a report of an end changed nothing (no status, another run, ended already)",
    ),
    EventId.STATE_QUARANTINED: (
        "error",
        "a bad state file was moved aside: history unknown, the next start waits for its slot",
    ),
    EventId.STATE_CLOCK_STEPPED: (
        "warning",
        "the wall clock was stepped: this boot's facts follow the boot clock, the rest pinned",
    ),
    EventId.STATE_WRITE_FAILED: (
        "error",
        "what Docker, the clock or an ask said could not be kept (a refusal stands)",
    ),
    EventId.STATE_JOURNALED: (
        "error",
        "the state file could not be written (disk full): the end is kept in the journal",
    ),
    EventId.STATE_JOURNAL_APPLIED: ("warning", "ends kept in the journal were applied"),
    EventId.STATE_JOURNAL_UNREADABLE: ("error", "the journal could not be read (ignored)"),
    EventId.DOCKER_UNAVAILABLE: ("warning", "Docker did not answer the gate's inspect"),
    EventId.DOCKER_CONTAINER_MISSING: ("info", "the agent's container does not exist (yet)"),
    EventId.DOCKER_RUN_ENDED: ("info", "Docker's State ended the open run (exit code, time)"),
    EventId.DOCKER_STARTED_OUTSIDE_GATE: (
        "warning",
        "a real start that no gate approved (docker start, a recreation): recorded, counts",
    ),
    EventId.DOCKER_APPROVAL_WITHDRAWN: (
        "warning",
        "an approval that no real start followed within docker.grace was withdrawn",
    ),
    EventId.DOCKER_RECREATE_EXPECTED: (
        "info",
        "compose is about to replace the running agent (an upgrade): a start like any other",
    ),
    EventId.DOCKER_RECREATE_UNKNOWN: (
        "warning",
        "the gate could not tell whether compose will replace the agent",
    ),
    EventId.PROBE_READY: ("info", "the control plane answered within probe.max_latency"),
    EventId.PROBE_LOADED: ("warning", "429, or an answer slower than probe.max_latency"),
    EventId.PROBE_DOWN: ("warning", "refused, timed out or 5xx"),
    EventId.PROBE_BROKEN: (
        "error",
        "the probe's own configuration cannot succeed: decided as if it were not configured",
    ),
    EventId.IDENTITY_WARNING: ("warning", "the certificate expires soon, or a similar warning"),
    EventId.IDENTITY_REFUSED: ("error", "the certificate check found problems"),
    EventId.OPERATOR_HOLD: ("info", "an operator set a hold"),
    EventId.OPERATOR_OVERRIDE: ("info", "an operator set an override"),
    EventId.OPERATOR_RELEASE: ("info", "an operator cleared the hold and the override"),
    EventId.OPERATOR_RESET: ("info", "an operator forgot the history (backup kept)"),
    EventId.OPERATOR_DEBUG_START: (
        "info",
        "a debug session began: the agent stopped on purpose and held, a debug container runs",
    ),
    EventId.OPERATOR_DEBUG_END: (
        "info",
        "the debug session ended: debug container removed, hold released, the agent started",
    ),
    EventId.OPERATOR_REFUSED: ("warning", "an operator action by someone who may not (77)"),
    EventId.AUDIT_WRITE_FAILED: ("error", "an audit line could not be written"),
    EventId.DEBUG_AGENT_STOPPED: (
        "info",
        "debug start stopped the agent on purpose (docker stop, or systemctl stop of its unit)",
    ),
    EventId.DEBUG_CONTAINER_RUNNING: (
        "info",
        "the debug container runs (created, or started again): the history ignores it",
    ),
    EventId.DEBUG_CONTAINER_REMOVED: ("info", "debug end removed a debug container"),
    EventId.DEBUG_AGENT_STARTED: (
        "info",
        "debug end started the agent at once (docker start, or systemctl start of its unit)",
    ),
    EventId.DEBUG_NO_SESSION: ("info", "debug end found no debug session: nothing to end"),
    EventId.DAEMON_STARTED: ("info", "the daemon started supervising"),
    EventId.DAEMON_STOPPED: ("info", "the daemon stopped (the agent is left as it is)"),
    EventId.DAEMON_RECONNECTED: ("info", "the daemon is connected to Docker again"),
    EventId.DAEMON_DOCKER_UNAVAILABLE: ("warning", "Docker went away: retried with backoff"),
    EventId.DAEMON_STATE_ERROR: ("warning", "the state could not be used: retried"),
    EventId.DAEMON_CONTAINER_MISSING: ("warning", "the agent's container does not exist"),
    EventId.DAEMON_CONTAINER_STARTED: ("info", "the daemon started the agent (gated)"),
    EventId.DAEMON_START_FAILED: ("error", "Docker refused to start the agent"),
    EventId.DAEMON_STOPPED_BY_OPERATOR: (
        "info",
        "the agent was stopped on purpose: not restarted until started again",
    ),
    EventId.DAEMON_IDENTITY_REFUSED: (
        "error",
        "the certificate is not usable: no start, checked again within a minute",
    ),
    EventId.DAEMON_DRAIN_FAILED: ("warning", "events received before a stop could not be read"),
    EventId.CONFIG_RENDERED: ("info", "config render wrote the agent's config directory"),
    EventId.CONFIG_RECOVERED: ("warning", "config render finished an interrupted render"),
    EventId.CONFIG_IMPORTED: ("info", "config import --write added options to [agent]"),
    EventId.CERTS_CSR_WRITTEN: ("info", "certs csr wrote a key and a CSR"),
    EventId.KUBECONFIG_WRITTEN: ("info", "kubeconfig render wrote a kubeconfig"),
    EventId.METRICS_WRITE_FAILED: ("warning", "the metrics file could not be written"),
    EventId.METRICS_UNPARSABLE: ("warning", "the metrics file did not parse: rewritten"),
    EventId.SIMULATE_PLOT_WRITTEN: ("info", "simulate --plot wrote its PNG"),
    EventId.CLI_ERROR: ("debug", "a command ended with an error (the one line on stderr)"),
}
