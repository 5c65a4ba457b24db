"""What the control plane sees when a whole fleet restarts: a simulation on a virtual clock.

``simulate`` runs N virtual nodes through a scenario (a control-plane outage, a boot storm, a
rolling restart, every supervisor restarted in the middle of an outage) under six restart
policies and counts the starts the control plane has to serve, minute by minute. Our two
policies run the real decision engine, :func:`supervisor.policy.decide`, the very function the
gate calls, on an in-memory :class:`~supervisor.state.AgentState` per node (no files): the
figures are those of the code that ships, not of a model of it. The four others are models of
today's alternatives, each reproducing its documented delays exactly (the constants below say
where they come from).

The model of the world is deliberately small. The control plane is down during
``[0, outage)`` and healthy afterwards; an agent started while it is down fails (exits 1) after
``fail_after`` seconds, one started once it is up becomes healthy at once and stays so. Nodes
do not interact, so the figures are exact consequences of each policy's timing, not of a load
model one could argue with.

Overload feedback (``capacity`` C, full resyncs a minute; off by default): every start once
the control plane is up is a full resync, queued at the control plane, which works through
C a minute, first come first served. Its client waits ``fail_after`` seconds: a start whose
resync is worked through by then is served (the agent is healthy from that moment); one
that is not fails ``fail_after`` after it was made, like a start during the outage. Served
or not, a resync stays in the queue: a real etcd completes every Range request, also those
whose client has given up (``bench/lab.py`` counts them in etcd's own metrics). That is the
whole feedback, and it is what makes a storm metastable: a fleet that restarts together puts
more in the queue each round than is worked through in one wait (more than twice
``C * fail_after / 60`` at once), so nothing is served again and the queue only grows;
below that, a few are served each round. Neither a sliding minute nor minute bins: a minute
hides what the lab shows, 20 agents resyncing at once from an etcd that serves 115 a minute
all timing out after 5 s and never recovering, although 20 is far below 115 (20 is more
than twice the 9.6 it serves in 5 s). The nodes then interact (through the control plane
only), so no two nodes are simulated as one group; the engine stays exact.

Why event-driven: a tick loop at the 100 ms resolution Docker needs would cost 36,000 ticks an
hour for every node. Here each node only has events when something happens to it (a trigger,
an attempt to start, an exit), kept in one heap ordered by virtual time, so 100,000 nodes take
seconds. Policies whose timing is deterministic (Docker, kubelet, systemd) are simulated once
per group of nodes that are triggered at the same moment (a weight), since such nodes cannot
diverge (``restart-all`` restarts every node at one instant, which keeps a group a group);
per-node randomness (full jitter) and per-node slots (the gate) are simulated per node.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from supervisor.core.policy import (
    DEFAULT_MAX_MULTIPLIER,
    DEFAULT_STABLE_AFTER,
    Policy,
    decide,
    remember,
)
from supervisor.core.slots import SLOT_MODES, SlotMode, slot_offset
from supervisor.core.state import AgentState
from supervisor.fleet.scenarios import SCENARIOS, ScenarioKind

TriggerKind = Literal["crash", "boot", "restart"]
#: Every policy simulated, in the order of the table. Ours first.
POLICY_NAMES: Final = (
    "agent-supervisor",
    "agent-supervisor+probe",
    "docker-always",
    "kubelet",
    "systemd",
    "full-jitter",
)
#: The virtual wall clock at t=0 (2026-11-29T00:00:00Z). The gate's slots lie on a grid counted
#: from the Unix epoch, so t=0 must be a real time; any other works as well.
DEFAULT_EPOCH: Final = 1_795_910_400.0
AGENT: Final = "cilium-agent"
#: First address of the simulated fleet's block for ``--slots address``.
FIRST_ADDRESS: Final = int(ipaddress.IPv4Address("10.0.0.0"))
#: Width of the bins the rates are counted in.
BIN_SECONDS: Final = 60.0
#: The span ``capacity`` is given for: full resyncs the control plane serves a minute.
CAPACITY_SPAN: Final = 60.0
#: With ``capacity``, how far past the outage and the longest backoff the default horizon
#: reaches: a storm that never recovers is simulated up to it (one day without capacity).
CAPACITY_HORIZON_MARGIN: Final = 3600.0

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


@dataclass(frozen=True, slots=True)
class Scenario:
    """What happens to the fleet, in seconds of the virtual clock from t=0.

    ``outage``: every agent crashes at 0. ``boot-storm``: every node loses power and boots at a
    random time in ``[0, boot_spread)``; the agents' last runs end without any record (as after
    a power loss). ``rolling``: an operator restarts the agents one after the other,
    ``rolling_interval`` apart (a clean exit 0, as in an upgrade). ``restart-all``: the
    ``outage`` scenario, and at ``restart_at`` every node's supervisor process is restarted at
    the same instant (a fleet-wide upgrade of the supervisor, or every node's management plane
    restarted): whatever it was waiting for is forgotten, the agents keep running. In all four
    the control plane is down during ``[0, outage)``.

    ``capacity`` (full resyncs a minute, None for unlimited): once up, the control plane works
    through this many a minute, in order, and a start whose resync is not done within
    ``fail_after`` fails; see the module's docstring.
    """

    kind: ScenarioKind = "outage"
    nodes: int = 5000
    outage: float = 1800.0
    fail_after: float = 60.0
    boot_spread: float = 60.0
    rolling_interval: float = 1.0
    restart_at: float = 2700.0
    capacity: float | None = None

    def __post_init__(self) -> None:
        if self.capacity is not None and not (math.isfinite(self.capacity) and self.capacity > 0):
            raise ValueError(
                f"capacity = {self.capacity!r}: expected a positive number of full resyncs a minute"
            )
        if self.kind not in SCENARIOS:
            raise ValueError(f"scenario {self.kind!r} is not one of {', '.join(SCENARIOS)}")
        if self.nodes < 1:
            raise ValueError(f"nodes = {self.nodes}: at least one node")
        for name in ("outage", "fail_after", "boot_spread", "rolling_interval", "restart_at"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} = {value!r}: expected a finite duration >= 0")
        if self.fail_after <= 0:
            raise ValueError(f"fail_after = {self.fail_after!r}: must be positive")


@dataclass(frozen=True, slots=True)
class Fleet:
    """How the fleet's gates are configured: the window and where each node's slot lies.

    ``unused_addresses`` (with ``slots="address"``) is the fraction of the address block left
    unused, chosen at random: N nodes are drawn from a block of ``N / (1 - unused)`` addresses.
    """

    window: float
    slots: SlotMode = "hash"
    unused_addresses: float = 0.0
    stable_after: float = DEFAULT_STABLE_AFTER
    max_multiplier: int = DEFAULT_MAX_MULTIPLIER

    def __post_init__(self) -> None:
        if not math.isfinite(self.window) or self.window <= 0:
            raise ValueError(f"window = {self.window!r}: must be positive")
        if self.slots not in SLOT_MODES:
            raise ValueError(f"slots {self.slots!r} is not one of {', '.join(SLOT_MODES)}")
        if not 0 <= self.unused_addresses < 1:
            raise ValueError(f"unused_addresses = {self.unused_addresses!r}: expected [0, 1)")


@dataclass(frozen=True, slots=True)
class Trigger:
    """What happens to one node at the start of the scenario."""

    at: float
    kind: TriggerKind


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """What one policy made the control plane serve."""

    name: str
    total_starts: int
    starts_per_minute: tuple[int, ...]
    all_healthy_at: float | None
    never_healthy: int
    start_times: tuple[float, ...] = ()
    #: With ``start_times``: which node made each start (its index in the fleet).
    start_nodes: tuple[int, ...] = ()
    #: Starts made once the control plane was up: each a full resync it had to serve.
    starts_after_outage: int = 0
    #: Of those, the ones that failed because the control plane was over its capacity.
    overloaded: int = 0

    @property
    def recovered(self) -> bool:
        """Whether every node was healthy by the end of the simulation."""
        return self.never_healthy == 0 and self.all_healthy_at is not None

    @property
    def peak_starts_per_minute(self) -> int:
        """Starts in the busiest minute."""
        return max(self.starts_per_minute, default=0)

    def peak_after(self, minutes: int) -> int:
        """Starts in the busiest minute after the first ``minutes`` (the immediate wave)."""
        return max(self.starts_per_minute[minutes:], default=0)


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Every policy's outcome for one scenario and fleet."""

    scenario: Scenario
    fleet: Fleet
    seed: int | None
    policies: tuple[PolicyOutcome, ...]
    #: Seconds from t=0 the simulation ran for: a node not healthy by then never was.
    horizon: float = math.inf

    @property
    def ideal_starts_per_minute(self) -> float:
        """The start budget N/W per minute: what a perfectly spread window achieves."""
        return self.scenario.nodes / self.fleet.window * BIN_SECONDS

    @property
    def restart_minute(self) -> int | None:
        """``restart-all``: the minute the supervisors are restarted in (from t=0), else None."""
        if self.scenario.kind != "restart-all":
            return None
        return int(self.scenario.restart_at // BIN_SECONDS)

    def outcome(self, name: str) -> PolicyOutcome:
        """The outcome of the policy ``name``."""
        for o in self.policies:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The ``simulate --json`` object (the capacity keys only when a capacity is set)."""
        ideal = round(self.ideal_starts_per_minute, 3)
        restart = self.restart_minute
        doc: dict[str, Any] = {
            "scenario": self.scenario.kind,
            "nodes": self.scenario.nodes,
            "window_seconds": self.fleet.window,
            "outage_seconds": self.scenario.outage,
            "fail_after_seconds": self.scenario.fail_after,
            "restart_at_seconds": None if restart is None else self.scenario.restart_at,
            "slots": self.fleet.slots,
            "unused_addresses": self.fleet.unused_addresses,
            "seed": self.seed,
            "policies": {
                o.name: {
                    "total_starts": o.total_starts,
                    "peak_starts_per_minute": o.peak_starts_per_minute,
                    "peak_starts_per_minute_after_first_minute": o.peak_after(1),
                    "peak_starts_per_minute_from_restart": (
                        None if restart is None else o.peak_after(restart)
                    ),
                    "ideal_starts_per_minute": ideal,
                    "all_healthy_at_seconds": (
                        None if o.all_healthy_at is None else round(o.all_healthy_at, 3)
                    ),
                    "never_healthy": o.never_healthy,
                }
                for o in self.policies
            },
        }
        capacity = self.scenario.capacity
        if capacity is not None:
            doc["capacity_per_minute"] = capacity
            doc["horizon_seconds"] = self.horizon
            for o in self.policies:
                doc["policies"][o.name].update(
                    {
                        "recovered": o.recovered,
                        "starts_after_outage": o.starts_after_outage,
                        "starts_after_outage_per_node": round(
                            o.starts_after_outage / self.scenario.nodes, 3
                        ),
                        "failed_on_capacity": o.overloaded,
                    }
                )
        return doc


# --- the fleet ----------------------------------------------------------------------------


def node_offsets(fleet: Fleet, nodes: int, rng: random.Random) -> list[tuple[str, float]]:
    """(node name, slot offset) for every node, through the same ``slot_offset`` as the gate.

    ``hash``: names ``node-00000``...; ``index``: ordinals 0..N-1 of N; ``address``: the nodes'
    names are their IPv4 addresses in a block from 10.0.0.0, contiguous or with a fraction of
    the addresses unused at random.
    """
    width = len(str(nodes - 1))
    if fleet.slots == "index":
        out = []
        for i in range(nodes):
            off, _ = slot_offset("index", node="", agent=AGENT, slot_index=i, slot_count=nodes)
            out.append((f"node-{i:0{width}d}", off))
        return out
    if fleet.slots == "address":
        block = max(nodes, math.ceil(nodes / (1.0 - fleet.unused_addresses)))
        ids = range(nodes) if block == nodes else sorted(rng.sample(range(block), nodes))
        names = [str(ipaddress.IPv4Address(FIRST_ADDRESS + i)) for i in ids]
        return [(n, slot_offset("address", node=n, agent=AGENT)[0]) for n in names]
    names = [f"node-{i:0{width}d}" for i in range(nodes)]
    return [(n, slot_offset("hash", node=n, agent=AGENT)[0]) for n in names]


def triggers(scenario: Scenario, rng: random.Random) -> list[Trigger]:
    """When each node's scenario begins, and how."""
    n = scenario.nodes
    if scenario.kind in ("outage", "restart-all"):
        return [Trigger(0.0, "crash")] * n
    if scenario.kind == "boot-storm":
        return [Trigger(rng.uniform(0.0, scenario.boot_spread), "boot") for _ in range(n)]
    return [Trigger(i * scenario.rolling_interval, "restart") for i in range(n)]


# --- policies -----------------------------------------------------------------------------


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


class GateModel:
    """agent-supervisor: the real :func:`decide` on an in-memory state per node.

    As in daemon mode (or systemd's ``ExecStopPost=record-exit`` + ``ExecStartPre=gate
    --wait``): an exit is recorded with its code, then the gate decides at once; a refusal
    waits until ``next_allowed_at`` and decides again. With ``probe``, every decision is told
    whether the control plane is up at that moment (the gate asks only when it matters, and
    decide only reads the answer then, so the decisions are the same).
    """

    deterministic = False

    def __init__(self, policies: Sequence[Policy], since: float, probe: bool, up_at: float):
        self.policies = policies
        # One long, stable run that began well before t=0: nothing in the last window.
        fresh = AgentState(AGENT).record_start(since)
        self.states: list[AgentState] = [fresh] * len(policies)
        self.probe = probe
        self.up_at = up_at

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """A crash records exit 1, a deliberate restart exit 0, a power loss nothing."""
        if kind != "boot":
            self.states[node] = self.states[node].record_exit(t, 1 if kind == "crash" else 0)
        return t

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """Record the failed run and ask the gate at once."""
        self.states[node] = self.states[node].record_exit(t, 1)
        return t

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """A fresh gate asks at once; the state file survives, only the pending wait is lost.

        Invariant 0 is what this tests: the fresh gate must give the waiting gate's answer.
        """
        return t if waiting else None

    def attempt(self, node: int, t: float) -> float | None:
        """One gate decision; an allowed start is recorded as the gate records it."""
        state = self.states[node]
        healthy = (t >= self.up_at) if self.probe else None
        d = decide(self.policies[node], state, t, control_plane_healthy=healthy)
        if d.allowed:
            self.states[node] = state.record_start(t)
            return t
        self.states[node] = remember(state, d)
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
_ANCHORS: Final[dict[str, type[DockerModel | KubeletModel | SystemdModel]]] = {
    "docker-always": DockerModel,
    "kubelet": KubeletModel,
    "systemd": SystemdModel,
}

# --- the engine ---------------------------------------------------------------------------

_ATTEMPT: Final = 0
_EXIT: Final = 1
_BEGIN: Final = 2
_RESTART: Final = 3


def run_model(
    name: str,
    model: Model,
    trigs: Sequence[Trigger],
    weights: Sequence[int],
    scenario: Scenario,
    *,
    epoch: float,
    horizon: float,
    record_starts: bool = False,
    restart_at: float | None = None,
) -> PolicyOutcome:
    """Drive one policy through the scenario; ``weights[i]`` real nodes behave as node i.

    One heap of (time, sequence, node, event) on the virtual clock: a node's scenario begins,
    its policy attempts a start, or its agent fails ``fail_after`` after a start made while
    the control plane was down. With ``scenario.capacity``, a start once the control plane is
    up joins its queue, and fails so too when the queue would not be worked through to it
    within ``fail_after`` (a weighted start is served whole or not at all); a served one is
    healthy once it is worked through. ``horizon`` (seconds from t=0) bounds the run; nodes
    not healthy by then count as never healthy. ``restart_at`` (seconds from t=0): every node's
    supervisor process is restarted then, before anything else happens at that instant.

    Every node has at most one event in the heap (its next one), which is what makes the
    restart simple: the restart replaces the pending attempt of every node that is waiting,
    so no node can run two chains of attempts (see :func:`_restart_all`).
    """
    up_at = epoch + scenario.outage
    fail_after = scenario.fail_after
    capacity = scenario.capacity
    # The control plane's queue: full resyncs asked for and not yet worked through, as of
    # ``queued_at``; it works through ``rate`` a second, first come first served.
    rate = math.inf if capacity is None else capacity / CAPACITY_SPAN
    queue = 0.0
    queued_at = -math.inf
    end = epoch + horizon
    heap: list[tuple[float, int, int, int]] = [
        (epoch + trig.at, i, i, _BEGIN) for i, trig in enumerate(trigs)
    ]
    if restart_at is not None:
        # Sequence -1: first of everything at that instant, so an attempt the old process had
        # planned for that very instant is the new process's to make.
        heap.append((epoch + restart_at, -1, -1, _RESTART))
    heapq.heapify(heap)
    seq = len(heap)
    started = [0.0] * len(trigs)
    # Nodes whose policy will never start the agent again (systemd's start limit): down, with
    # nothing in the heap, unlike a healthy node. Only a restart can bring them back.
    gave_up: set[int] = set()
    bins: list[int] = []
    times: list[float] = []
    nodes_started: list[int] = []
    total = 0
    after = 0
    overloaded = 0
    healthy = 0
    last_healthy = -math.inf
    while heap:
        t, _, node, event = heap[0]
        if t > end:
            break
        if event == _RESTART:
            heapq.heappop(heap)
            seq = _restart_all(model, heap, len(trigs), gave_up, t, seq)
            continue
        # Step this node until it has to wait; what happens at the same instant (a gate asked
        # right after an exit) needs no trip through the heap. The top entry is then replaced
        # by the node's next event, one sift instead of a pop and a push.
        wake: float | None = None
        while True:
            if event == _ATTEMPT:
                nxt = model.attempt(node, t)
                if nxt is not None and nxt <= t:
                    w = weights[node]
                    total += w
                    b = int((t - epoch) // BIN_SECONDS)
                    if b >= len(bins):
                        bins.extend([0] * (b + 1 - len(bins)))
                    bins[b] += w
                    if record_starts:
                        times.append(t - epoch)
                        nodes_started.append(node)
                    served = t >= up_at
                    done = t
                    if served:
                        after += w
                    if served and capacity is not None:
                        # This resync is done once the queue ahead of it and itself are
                        # worked through; its client waits fail_after for that. Served or
                        # not, it joins the queue: the control plane works through it anyway.
                        queue = max(0.0, queue - (t - queued_at) * rate) + w
                        queued_at = t
                        done = t + queue / rate
                        served = done <= t + fail_after
                        if not served:
                            overloaded += w
                    if served:
                        healthy += w
                        last_healthy = max(last_healthy, done)
                    else:
                        started[node] = t
                        wake, event = t + fail_after, _EXIT
                    break
            elif event == _EXIT:
                nxt = model.exited(node, t, t - started[node])
            else:
                nxt = model.begin(node, t, trigs[node].kind)
            if nxt is None:
                gave_up.add(node)
                break
            if nxt > t:
                wake, event = nxt, _ATTEMPT
                break
            event = _ATTEMPT
        if wake is None:
            heapq.heappop(heap)
        else:
            seq += 1
            heapq.heapreplace(heap, (wake, seq, node, event))
    never = scenario.nodes - healthy
    return PolicyOutcome(
        name=name,
        total_starts=total,
        starts_per_minute=tuple(bins),
        all_healthy_at=None if never or not healthy else last_healthy - epoch,
        never_healthy=never,
        start_times=tuple(times),
        start_nodes=tuple(nodes_started),
        starts_after_outage=after,
        overloaded=overloaded,
    )


def _restart_all(
    model: Model,
    heap: list[tuple[float, int, int, int]],
    nodes: int,
    gave_up: set[int],
    t: float,
    seq: int,
) -> int:
    """Restart every node's supervisor at ``t``, in place on ``heap``; returns the sequence.

    A node is waiting when its pending event is an attempt (or its policy gave up): that
    attempt is dropped, the cancellation of the old process's wait, and the new process's
    attempt takes its place. A node whose agent runs (a pending exit, or healthy) or whose
    scenario has not begun keeps its event; its policy still forgets its memory.
    """
    pending = {entry[2]: entry for entry in heap}
    kept: list[tuple[float, int, int, int]] = []
    for node in range(nodes):
        entry = pending.get(node)
        waiting = node in gave_up if entry is None else entry[3] == _ATTEMPT
        nxt = model.supervisor_restarted(node, t, waiting)
        if not waiting:
            if entry is not None:
                kept.append(entry)
            continue
        gave_up.discard(node)
        if nxt is None:
            gave_up.add(node)
            continue
        if nxt < t:
            raise SimulationError(f"node {node}: restarted at {t}, asked to attempt at {nxt}")
        seq += 1
        kept.append((nxt, seq, node, _ATTEMPT))
    heap[:] = kept
    heapq.heapify(heap)
    return seq


def _group(trigs: Sequence[Trigger]) -> tuple[list[Trigger], list[int]]:
    """Nodes triggered alike behave alike under a deterministic policy: one entry each."""
    counts: dict[Trigger, int] = {}
    for trig in trigs:
        counts[trig] = counts.get(trig, 0) + 1
    return list(counts), list(counts.values())


def simulate(
    scenario: Scenario,
    fleet: Fleet,
    *,
    rng: random.Random | None = None,
    seed: int | None = 1,
    epoch: float = DEFAULT_EPOCH,
    policies: Sequence[str] = POLICY_NAMES,
    record_starts: bool = False,
    horizon: float | None = None,
) -> SimulationResult:
    """Run every policy in ``policies`` through ``scenario`` for ``fleet``.

    Randomness (boot times, unused addresses, full jitter) comes from ``rng`` (default
    ``random.Random(seed)``), the virtual clock starts at ``epoch``: the same arguments give
    the same result. ``record_starts`` keeps every start time and node (for tests on a few
    nodes; it simulates the deterministic policies node by node). ``horizon`` (seconds from
    t=0) ends the simulation; by default far beyond any recovery: a day past the outage and
    the longest backoff, or with a capacity (where a storm may never end) an hour.
    """
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r} (known: {', '.join(POLICY_NAMES)})")
    given_rng = rng
    rng = rng if rng is not None else random.Random(seed)  # noqa: S311 - not cryptography
    n = scenario.nodes
    w = fleet.window
    offsets = node_offsets(fleet, n, rng) if any(p.startswith("agent-") for p in policies) else []
    trigs = triggers(scenario, rng)
    restart_at = scenario.restart_at if scenario.kind == "restart-all" else None
    last_trigger = max(t.at for t in trigs)
    last_event = last_trigger if restart_at is None else max(last_trigger, restart_at)
    if horizon is None:
        # Far beyond any recovery: the outage, then the longest backoff a few times over.
        margin = 86400.0 if scenario.capacity is None else CAPACITY_HORIZON_MARGIN
        horizon = last_event + scenario.outage + (fleet.max_multiplier + 3) * w + margin
    elif not math.isfinite(horizon) or horizon <= 0:
        raise ValueError(f"horizon = {horizon!r}: expected a positive duration")
    grouped, weights = _group(trigs)
    singles = [1] * n
    outcomes = []
    for name in policies:
        model: Model
        node_trigs: Sequence[Trigger] = trigs
        node_weights: Sequence[int] = singles
        if name.startswith("agent-supervisor"):
            probe = name.endswith("+probe")
            base = Policy(
                agent=AGENT,
                node="",
                cluster_size=n,
                window=w,
                offset=0.0,
                slot_mode=fleet.slots,
                stable_after=fleet.stable_after,
                max_multiplier=fleet.max_multiplier,
                probe_configured=probe,
            )
            pols = [_with_slot(base, node, off) for node, off in offsets]
            since = epoch - (w * fleet.max_multiplier + fleet.stable_after + 86400.0)
            model = GateModel(pols, since, probe, epoch + scenario.outage)
        elif name == "full-jitter":
            model = FullJitterModel(n, rng)
        else:
            anchor = _ANCHORS[name]
            # With a capacity, nodes of a group may be served or not as they come: no groups.
            if anchor.deterministic and not record_starts and scenario.capacity is None:
                node_trigs, node_weights = grouped, weights
            model = anchor(len(node_trigs))
        outcomes.append(
            run_model(
                name,
                model,
                node_trigs,
                node_weights,
                scenario,
                epoch=epoch,
                horizon=horizon,
                record_starts=record_starts,
                restart_at=restart_at,
            )
        )
    return SimulationResult(
        scenario, fleet, seed if given_rng is None else None, tuple(outcomes), horizon
    )


def _with_slot(base: Policy, node: str, offset: float) -> Policy:
    """``base`` for one node (the constructor directly: ``replace`` is slower per node)."""
    return Policy(
        agent=base.agent,
        node=node,
        cluster_size=base.cluster_size,
        window=base.window,
        offset=offset,
        slot_mode=base.slot_mode,
        stable_after=base.stable_after,
        max_multiplier=base.max_multiplier,
        probe_configured=base.probe_configured,
    )


# --- presentation -------------------------------------------------------------------------

_BARS: Final = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int], width: int = 60, length: int | None = None) -> str:
    """``values`` (starts per minute) as ``width`` block characters, scaled to their peak.

    Each character covers ``length / width`` minutes and shows the busiest of them, so a
    one-minute wave is never averaged away; an empty stretch is a blank.
    """
    length = len(values) if length is None else length
    if length <= 0 or width <= 0:
        return ""
    peak = max(values, default=0)
    out = []
    for c in range(width):
        lo = c * length // width
        hi = max(lo + 1, (c + 1) * length // width)
        v = max(values[lo:hi], default=0)
        if v <= 0 or peak <= 0:
            out.append(" ")
        else:
            out.append(_BARS[min(len(_BARS) - 1, (v * len(_BARS) - 1) // peak)])
    return "".join(out)


def _hm(seconds: float | None) -> str:
    if seconds is None:
        return "never (some nodes)"
    minutes = seconds / 60
    return f"{int(minutes // 60)}h{int(minutes % 60):02d}m ({seconds:,.0f} s)"


def _recovery(result: SimulationResult, o: PolicyOutcome) -> str:
    """When every node was healthy; with a capacity, "not by" the horizon when it never was."""
    if result.scenario.capacity is None or o.recovered:
        return _hm(o.all_healthy_at) + (f", {o.never_healthy} never" if o.never_healthy else "")
    return f"not by {_hm(result.horizon)}: {o.never_healthy:,} nodes not healthy"


def render_table(result: SimulationResult, *, width: int = 60) -> str:
    """The default output: one row per policy, then a sparkline per policy.

    With a capacity, two columns more: the starts made once the control plane was up (each a
    full resync it had to serve, per node) and how many of them failed on the capacity.
    """
    sc, fl = result.scenario, result.fleet
    ideal = result.ideal_starts_per_minute
    restart = result.restart_minute
    cap = sc.capacity
    head = (
        f"{sc.kind}: {sc.nodes} nodes, window {_hm(fl.window)}, ideal {ideal:.1f} starts/min "
        f"(N/W); control plane down {sc.outage:g} s, a start while it is down fails after "
        f"{sc.fail_after:g} s; slots {fl.slots}"
        + (f" ({fl.unused_addresses:.0%} of addresses unused)" if fl.unused_addresses else "")
        + (
            ""
            if restart is None
            else f"; every supervisor restarted at {sc.restart_at:g} s (minute {restart})"
        )
        + (
            ""
            if cap is None
            else f"; the control plane works through {cap:g} full resyncs/min in order, "
            f"and a start whose resync is not done within {sc.fail_after:g} s fails "
            f"(served or not, it is worked through); simulated until {_hm(result.horizon)}"
        )
    )
    rows = [
        head,
        "",
        f"{'policy':<24}{'starts':>10}{'x N':>7}{'peak/min':>10}{'x ideal':>9}"
        f"{'after 1st min':>15}"
        + ("" if restart is None else f"{'from restart':>14}{'x ideal':>9}")
        + ("" if cap is None else f"{'after outage':>14}{'x N':>8}{'failed':>12}")
        + "  all healthy at",
    ]
    for o in result.policies:
        rows.append(
            f"{o.name:<24}{o.total_starts:>10,}{o.total_starts / sc.nodes:>7.2f}"
            f"{o.peak_starts_per_minute:>10,}{o.peak_starts_per_minute / ideal:>9.2f}"
            f"{o.peak_after(1):>15,}"
            + (
                ""
                if restart is None
                else f"{o.peak_after(restart):>14,}{o.peak_after(restart) / ideal:>9.2f}"
            )
            + (
                ""
                if cap is None
                else f"{o.starts_after_outage:>14,}{o.starts_after_outage / sc.nodes:>8.2f}"
                f"{o.overloaded:>12,}"
            )
            + f"  {_recovery(result, o)}"
        )
    length = max((len(o.starts_per_minute) for o in result.policies), default=0)
    rows += [
        "",
        f"starts per minute, 0 to {length} min ({length / width:.1f} min a column), "
        "each row scaled to its own peak:",
    ]
    for o in result.policies:
        rows.append(f"{o.name:<24}|{sparkline(o.starts_per_minute, width, length)}|")
    return "\n".join(rows) + "\n"


class PlotUnavailableError(ImportError):
    """``--plot`` needs matplotlib, an optional extra."""


PLOT_HINT: Final = "--plot needs matplotlib: pip install 'agent-supervisor[plot]'"


def require_matplotlib() -> None:
    """Fail early, in one line, when ``--plot`` cannot work."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(PLOT_HINT) from None


def write_plot(result: SimulationResult, path: Path) -> None:
    """Draw starts per minute over time for every policy into a PNG (matplotlib, Agg)."""
    try:
        from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found, unused-ignore]
            FigureCanvasAgg,
        )
        from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise PlotUnavailableError(PLOT_HINT) from None
    sc, fl = result.scenario, result.fleet
    fig = Figure(figsize=(11, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Docker and systemd coincide in an outage (every run outlasts Docker's 10 s reset):
    # distinct dashes keep both visible; ours are drawn thick and on top.
    styles = {"docker-always": (0, (6, 3)), "systemd": (0, (1, 2)), "kubelet": "-"}
    for o in result.policies:
        ours = o.name.startswith("agent-")
        ax.step(
            list(range(len(o.starts_per_minute) + 1)),
            [*o.starts_per_minute, 0],
            where="post",
            linewidth=2.4 if ours else 1.3,
            linestyle=styles.get(o.name, "-"),
            zorder=3 if ours else 2,
            label=f"{o.name}: {o.total_starts:,} starts, peak {o.peak_starts_per_minute:,}/min",
        )
    ax.axhline(
        result.ideal_starts_per_minute,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"N/W = {result.ideal_starts_per_minute:.1f}/min (the start budget)",
    )
    if sc.capacity is not None:
        ax.axhline(
            sc.capacity,
            color="red",
            linestyle=":",
            linewidth=1.2,
            label=f"capacity: {sc.capacity:g} full resyncs/min",
        )
    if sc.outage > 0:
        ax.axvspan(0, sc.outage / 60, color="red", alpha=0.08, label="control plane down")
    if result.restart_minute is not None:
        ax.axvline(
            sc.restart_at / 60, color="grey", linewidth=1, label="every supervisor restarted"
        )
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(0, sc.nodes * 2)
    ax.set_xlim(left=0)
    ax.set_xlabel("minutes since t=0")
    ax.set_ylabel("agent starts per minute, fleet-wide (log scale)")
    ax.set_title(
        f"{sc.kind}: {sc.nodes:,} nodes, W = {fl.window / 60:g} min, outage "
        f"{sc.outage / 60:g} min, start fails after {sc.fail_after:g} s, slots {fl.slots}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path))
