"""The restart policies the simulator compares: the gate itself, and models of today's
alternatives.

:class:`GateModel` is not a model: it runs the real decision engine,
:func:`supervisor.core.policy.decide`, on an in-memory
:class:`~supervisor.core.state.AgentState` per node, and every change of that state is one of
the core's events (:mod:`supervisor.core.events`) applied with
:func:`~supervisor.core.events.apply`: the start a decision approves, the ask a refusal leaves
behind, the end of a run. The figures are those of the code that ships, not of a model of it.

The four others are models of Docker ``restart: always``, kubelet's CrashLoopBackOff, systemd
``Restart=always`` and AWS full-jitter backoff, each reproducing its documented delays exactly
(the constants below say where they come from).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final, Protocol

from supervisor.core.events import Approved, Ended, apply, apply_all
from supervisor.core.policy import Inputs, Policy, Request, decide
from supervisor.core.state import AgentState
from supervisor.fleet.world import AGENT, LONG_RUN, ControlPlane, Fleet, TriggerKind

#: Every policy simulated, in the order of the table. Ours first.
POLICY_NAMES: Final = (
    "agent-supervisor",
    "agent-supervisor+probe",
    "docker-always",
    "kubelet",
    "systemd",
    "full-jitter",
)
#: The exit codes a trigger records: a crash, and a stop on purpose (SIGTERM, 128 + 15, as
#: ``systemctl restart`` reports it).
CRASH_EXIT: Final = 1
TERM_EXIT: Final = 143

# Docker's restart manager (moby ``restartmanager``): the first delay is 100 ms, each further
# restart doubles it up to one minute, and a run of at least 10 s resets it.
DOCKER_FIRST_DELAY: Final = 0.1
DOCKER_MAX_DELAY: Final = 60.0
DOCKER_RESET_AFTER: Final = 10.0
# kubelet's CrashLoopBackOff: the first restart is immediate (no back-off entry yet), then 10 s
# doubling up to 300 s; a container that ran for 10 minutes starts over.
KUBELET_INITIAL: Final = 10.0
KUBELET_MAX: Final = 300.0
KUBELET_RESET_AFTER: Final = 600.0
# systemd ``Restart=always``, ``RestartSec=100ms`` with the default start rate limit: more than
# ``StartLimitBurst=5`` starts within ``StartLimitIntervalSec=10s`` (a window opened by the first
# start after the previous window ran out, as systemd's ratelimit does) and the unit enters the
# failed state (result ``start-limit-hit``). ``Restart=`` does not apply to it: it stays down
# until an operator runs ``systemctl reset-failed``/``start``, so such a node never recovers
# here and is counted in ``never_healthy``.
SYSTEMD_RESTART_SEC: Final = 0.1
SYSTEMD_START_LIMIT_INTERVAL: Final = 10.0
SYSTEMD_START_LIMIT_BURST: Final = 5
# AWS "Exponential Backoff And Jitter", full jitter: sleep uniform(0, min(cap, base * 2**attempt))
# with attempt 0 for the first retry; a run as long as the gate's stable_after default (10 min)
# counts as a success and starts the attempts over.
JITTER_BASE: Final = 1.0
JITTER_CAP: Final = 300.0
JITTER_RESET_AFTER: Final = 600.0


class SimulationError(RuntimeError):
    """The simulation cannot go on (a policy asked to be woken in the past)."""


class Model(Protocol):
    """A restart policy as the engine drives it; times are absolute (virtual wall clock).

    Each method returns when to attempt a start next (``attempt`` returns its own ``t`` to
    start now), or None for never.
    """

    deterministic: bool

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """The node's scenario begins at ``t``."""
        ...

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """The agent failed (exit 1) at ``t`` after running ``ran`` seconds."""
        ...

    def attempt(self, node: int, t: float) -> float | None:
        """The policy considers starting the agent at ``t``."""
        ...

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """The node's supervisor process is restarted at ``t``: it forgets what it kept in memory.

        ``waiting``: the agent is not running (the old process was waiting to start it, or had
        given up); the answer is when the new process attempts a start. A running agent is
        left alone and the answer is ignored.
        """
        ...


def gate_policies(fleet: Fleet, offsets: Sequence[tuple[str, float]], probe: bool) -> list[Policy]:
    """Each node's policy, exactly as ``Config.policy()`` builds it from the same settings:
    the window, J (``fleet.admission`` or the core's default for a gate with or without a
    probe), and whether a probe is configured."""
    n = len(offsets)
    admission = fleet.admission_for(probe)
    return [
        Policy(
            agent=AGENT,
            node=node,
            cluster_size=n,
            window=fleet.window,
            offset=offset,
            slot_mode=fleet.slots,
            stable_after=fleet.stable_after,
            max_multiplier=fleet.max_multiplier,
            probe_configured=probe,
            admission=admission,
            admission_explicit=fleet.admission is not None,
        )
        for node, offset in offsets
    ]


def settled_state(fleet: Fleet, epoch: float) -> AgentState:
    """An agent that has run, stable, for :data:`LONG_RUN` (or longer than the longest
    backoff, if that is longer): the history every scenario begins with."""
    longest = fleet.window * fleet.max_multiplier + fleet.stable_after + 86400.0
    return apply(AgentState(AGENT), Approved(epoch - max(LONG_RUN, longest), "sim-0"))


class GateModel:
    """agent-supervisor: the real :func:`decide` on an in-memory state per node.

    As in daemon mode (or systemd's ``ExecStopPost=record-exit`` + ``ExecStartPre=gate
    --wait``): an exit is recorded with its code (:class:`~supervisor.core.events.Ended`),
    then the gate decides at once; a refusal waits until ``next_allowed_at`` and decides
    again. When a decision needs the probe (its slot has come), the gate asks ``plane`` and
    decides again with the answer, as the gate service does. Whatever a decision wants
    recorded (the approved start, the ask a refusal leaves behind) is applied to the state
    with :func:`~supervisor.core.events.apply_all`; nothing else changes it.
    """

    deterministic = False

    def __init__(
        self, policies: Sequence[Policy], states: Sequence[AgentState], plane: ControlPlane
    ) -> None:
        if len(policies) != len(states):
            raise ValueError(f"{len(policies)} policies for {len(states)} states")
        self.policies = policies
        self.states: list[AgentState] = list(states)
        self.plane = plane
        self.count = 0

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """A crash records exit 1, a deliberate restart exit 143, a boot nothing (the end of
        the run the power loss cut is unknown); then the gate is asked at once."""
        if kind != "boot":
            end = Ended(t, CRASH_EXIT if kind == "crash" else TERM_EXIT)
            self.states[node] = apply(self.states[node], end)
        return t

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """Record the failed run and ask the gate at once."""
        self.states[node] = apply(self.states[node], Ended(t, CRASH_EXIT))
        return t

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """A fresh gate asks at once; the state survives, only the pending wait is lost.

        Invariant 0 is what this tests: the fresh gate must give the waiting gate's answer.
        """
        return t if waiting else None

    def attempt(self, node: int, t: float) -> float | None:
        """One gate decision (two when it needs the probe), its events applied."""
        policy, state = self.policies[node], self.states[node]
        self.count += 1
        request = Request(run_id=f"sim-{self.count}")
        d = decide(policy, state, t, request)
        if d.needs_probe:
            d = decide(policy, state, t, request, Inputs(probe=self.plane.probe(node, t)))
        self.states[node] = apply_all(state, d.events)
        if d.allowed:
            return t
        nxt = d.next_allowed_at
        if nxt is not None and nxt <= t:
            raise SimulationError(f"node {node}: refused at {t} until {nxt}, not later")
        return nxt


class DockerModel:
    """Docker ``restart: always``: 100 ms doubling to 1 min; a 10 s run resets it.

    The restart policy lives in the engine, so "the supervisor restarted" is dockerd
    restarted, taken here with ``live-restore`` (running containers keep running, as the
    scenario requires): on start-up the engine starts every ``always`` container that is not
    running, at once, under a new restart manager (delay back to 100 ms). Without
    ``live-restore`` it would also stop and restart the running ones: a larger wave still.
    """

    deterministic = True

    def __init__(self, nodes: int) -> None:
        self.delay = [0.0] * nodes

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """A crash goes through the restart manager; boot and deliberate restarts start now."""
        return self.exited(node, t, math.inf) if kind == "crash" else t

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """The restart manager's timeout, exactly as moby computes it."""
        d = 0.0 if ran >= DOCKER_RESET_AFTER else self.delay[node]
        if d == 0.0:
            d = DOCKER_FIRST_DELAY
        elif d < DOCKER_MAX_DELAY:
            d *= 2
        d = min(d, DOCKER_MAX_DELAY)
        self.delay[node] = d
        return t + d

    def attempt(self, node: int, t: float) -> float | None:
        """Docker always starts when the delay has run out."""
        return t

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """dockerd restarted: a new restart manager, a container not running started now."""
        self.delay[node] = 0.0
        return t if waiting else None


class KubeletModel:
    """kubelet CrashLoopBackOff: immediate, then 10 s doubling to 300 s; 10 min resets."""

    deterministic = True

    def __init__(self, nodes: int) -> None:
        self.backoff: list[float | None] = [None] * nodes

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """A crash after a long run restarts at once; boot and restarts start now."""
        return self.exited(node, t, math.inf) if kind == "crash" else t

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """No back-off entry (or an old one): now; else the entry, which then doubles."""
        current = self.backoff[node]
        if current is None or ran >= KUBELET_RESET_AFTER:
            self.backoff[node] = KUBELET_INITIAL
            return t
        self.backoff[node] = min(current * 2, KUBELET_MAX)
        return t + current

    def attempt(self, node: int, t: float) -> float | None:
        """The kubelet starts the container when the back-off has run out."""
        return t

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """The back-off entries live in the kubelet's memory: a restarted one has none.

        A container in CrashLoopBackOff is started at once (the new entry starts at 10 s), and
        a running one that fails later restarts at once too, as after its first crash.
        """
        self.backoff[node] = None
        return self.exited(node, t, math.inf) if waiting else None


class SystemdModel:
    """systemd ``Restart=always``, ``RestartSec=100ms``, at most 5 starts in 10 s.

    systemd is PID 1: it restarts with the node (``daemon-reexec`` carries the units' states
    over). The scenario's restart is taken as the unit's bookkeeping started anew, as at boot
    (the unit is enabled), with a running agent left alone: the start-rate counter and a
    pending ``RestartSec`` are lost, and a unit that is not running (waiting, or failed on the
    start limit) is started at once.
    """

    deterministic = True

    def __init__(self, nodes: int) -> None:
        self.window_start = [-math.inf] * nodes
        self.count = [0] * nodes

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """A crash restarts after RestartSec; boot and ``systemctl restart`` start now."""
        return t + SYSTEMD_RESTART_SEC if kind == "crash" else t

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """``Restart=always``: again after ``RestartSec``."""
        return t + SYSTEMD_RESTART_SEC

    def attempt(self, node: int, t: float) -> float | None:
        """The start rate limit: past the burst the unit fails and stays down (None)."""
        if t - self.window_start[node] > SYSTEMD_START_LIMIT_INTERVAL:
            self.window_start[node] = t
            self.count[node] = 1
            return t
        self.count[node] += 1
        return t if self.count[node] <= SYSTEMD_START_LIMIT_BURST else None

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """A new start-rate window and counter; a unit not running is started now."""
        self.window_start[node] = -math.inf
        self.count[node] = 0
        return t if waiting else None


class FullJitterModel:
    """AWS full jitter: sleep uniform(0, min(300 s, 1 s * 2**attempt)) before each retry."""

    deterministic = False

    def __init__(self, nodes: int, rng: random.Random) -> None:
        self.attempts = [0] * nodes
        self.rng = rng

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """A crash is the first failure; boot and deliberate restarts start now."""
        return self.exited(node, t, math.inf) if kind == "crash" else t

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """Draw the sleep from the attempt count since the last long run."""
        if ran >= JITTER_RESET_AFTER:
            self.attempts[node] = 0
        k = self.attempts[node]
        self.attempts[node] = k + 1
        ceiling = min(JITTER_CAP, JITTER_BASE * 2.0 ** min(k, 60))
        return t + self.rng.uniform(0.0, ceiling)

    def attempt(self, node: int, t: float) -> float | None:
        """The retry loop starts the agent when the sleep is over."""
        return t

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """The attempt count lives in the retry loop's memory: a new loop starts the agent now."""
        self.attempts[node] = 0
        return t if waiting else None


#: The anchor models whose timing depends on nothing but the node's own history.
ANCHORS: Final[dict[str, type[DockerModel | KubeletModel | SystemdModel]]] = {
    "docker-always": DockerModel,
    "kubelet": KubeletModel,
    "systemd": SystemdModel,
}
