"""The simulated world: what happens to the fleet, how its gates are configured, and the
control plane every start and every probe request goes to.

The control plane is deliberately small. It is down during ``[0, outage)`` and up afterwards.
With a ``capacity`` C (full resyncs a minute), every start once it is up is a full resync put
in a first-come queue that is worked through C a minute; the start's client waits
``fail_after`` seconds: a resync worked through by then is served (the agent is healthy from
that moment), one that is not fails. Served or not, a resync stays in the queue: a real etcd
completes every Range request, also those whose client has given up (``bench/lab/`` counts
them in etcd's own metrics). That is what makes a storm metastable: a fleet that restarts
together puts more in the queue each round than is worked through in one wait.

The probe (invariant 11) asks the same queue. Its request is small, so it adds nothing to the
queue, but it waits behind the resyncs in front of it: the answer is "down" while the control
plane is down, "loaded" when that wait (the queue's length over C) exceeds
``probe.max_latency``, and "ready" otherwise (always "ready" once up without a capacity: an
unlimited control plane never queues). This is the feedback that lets a fleet admit itself
at about the rate the control plane serves.
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass
from typing import Final, Literal

from supervisor.core.answers import ProbeAnswer
from supervisor.core.policy import (
    DEFAULT_MAX_LATENCY,
    DEFAULT_MAX_MULTIPLIER,
    DEFAULT_STABLE_AFTER,
    WindowConfig,
    admission_seconds,
)
from supervisor.core.slots import SLOT_MODES, SlotMode, slot_offset
from supervisor.fleet.scenarios import LIVE, SCENARIOS, ScenarioKind

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
#: How long every agent has run, stable, when a scenario begins (the ``restart`` scenario's
#: "exit 143 after running 3 days"). Longer when the window is so long that three days would
#: still be within the longest backoff: the history then says nothing but "stable, long ago".
LONG_RUN: Final = 3 * 86400.0

#: What begins a node's scenario: its agent crashes (exit 1), is restarted on purpose (exit
#: 143, SIGTERM as ``systemctl restart`` reports it), or its node boots (the last run's end is
#: unknown, as after a power loss).
TriggerKind = Literal["crash", "boot", "restart"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """What happens to the fleet, in seconds of the virtual clock from t=0.

    The kinds (:data:`~supervisor.fleet.scenarios.DESCRIPTIONS`): ``crash-live``, ``outage``,
    ``restart-all`` and ``lone-crash`` begin with every agent crashing at 0 (``restart-all``
    also restarts every node's supervisor at ``restart_at``: whatever it was waiting for is
    forgotten, the agents keep running; ``lone-crash`` runs every node as a trial of its own,
    on a control plane nobody else uses). ``restart`` stops and starts every agent at 0 on
    purpose; ``rolling`` does so one node after the other, ``rolling_interval`` apart.
    ``boot-storm`` boots every node at a random time in ``[0, boot_spread)``, ``power-loss``
    in ``[outage, outage + boot_spread)``; the agents' last runs end without any record.

    The control plane is down during ``[0, outage)``. In ``crash-live``, ``restart`` and
    ``lone-crash`` (:data:`~supervisor.fleet.scenarios.LIVE`) it stays up: their ``outage``
    is 0 whatever is given. ``capacity`` (full resyncs a minute, None for unlimited): once
    up, the control plane works through this many a minute, in order, and a start whose
    resync is not done within ``fail_after`` fails (see :mod:`supervisor.fleet.world`).
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
        if self.kind in LIVE:
            object.__setattr__(self, "outage", 0.0)

    @property
    def trials(self) -> bool:
        """Every node is a trial of its own (``lone-crash``): nodes share no control plane."""
        return self.kind == "lone-crash"


@dataclass(frozen=True, slots=True)
class Fleet:
    """How the fleet's gates are configured: the window, J, the probe, where slots lie.

    ``admission`` is ``window.admission`` (None: the core's default, W without a probe and a
    fraction of W with one, :func:`~supervisor.core.policy.admission_seconds`); at most W.
    ``max_latency`` is ``probe.max_latency``. ``unused_addresses`` (with
    ``slots="address"``) is the fraction of the address block left unused, chosen at random:
    N nodes are drawn from a block of ``N / (1 - unused)`` addresses.
    """

    window: float
    slots: SlotMode = "hash"
    unused_addresses: float = 0.0
    stable_after: float = DEFAULT_STABLE_AFTER
    max_multiplier: int = DEFAULT_MAX_MULTIPLIER
    admission: float | None = None
    max_latency: float = DEFAULT_MAX_LATENCY

    def __post_init__(self) -> None:
        if not math.isfinite(self.window) or self.window <= 0:
            raise ValueError(f"window = {self.window!r}: must be positive")
        if self.slots not in SLOT_MODES:
            raise ValueError(f"slots {self.slots!r} is not one of {', '.join(SLOT_MODES)}")
        if not 0 <= self.unused_addresses < 1:
            raise ValueError(f"unused_addresses = {self.unused_addresses!r}: expected [0, 1)")
        if self.admission is not None and not (
            math.isfinite(self.admission) and 0 < self.admission <= self.window
        ):
            raise ValueError(
                f"admission = {self.admission!r}: expected a positive duration at most the "
                f"window ({self.window:g} s)"
            )
        if not (math.isfinite(self.max_latency) and self.max_latency > 0):
            raise ValueError(f"max_latency = {self.max_latency!r}: must be positive")

    def admission_for(self, probe: bool) -> float:
        """J of a gate with or without a probe, as ``Config.policy()`` resolves it."""
        return admission_seconds(WindowConfig(admission=self.admission), self.window, probe=probe)


@dataclass(frozen=True, slots=True)
class Trigger:
    """What happens to one node at the start of the scenario."""

    at: float
    kind: TriggerKind


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
    kind = scenario.kind
    if kind in ("outage", "restart-all", "crash-live", "lone-crash"):
        return [Trigger(0.0, "crash")] * n
    if kind == "restart":
        return [Trigger(0.0, "restart")] * n
    if kind == "rolling":
        return [Trigger(i * scenario.rolling_interval, "restart") for i in range(n)]
    # boot-storm and power-loss: the nodes boot within the spread, after the power loss.
    first = scenario.outage if kind == "power-loss" else 0.0
    return [Trigger(first + rng.uniform(0.0, scenario.boot_spread), "boot") for _ in range(n)]


class ControlPlane:
    """The control plane as the fleet sees it: the resync queue and the probe's answer.

    Down until ``up_at`` (virtual wall clock). ``isolated``: every node has a queue of its own
    (``lone-crash``: each node is a trial on a control plane nobody else uses). Counts the
    probe requests it is asked, per minute from ``epoch``.
    """

    def __init__(
        self,
        up_at: float,
        capacity: float | None,
        max_latency: float,
        *,
        epoch: float,
        isolated: bool = False,
    ) -> None:
        self.up_at = up_at
        self.limited = capacity is not None
        self.rate = math.inf if capacity is None else capacity / CAPACITY_SPAN
        self.max_latency = max_latency
        self.epoch = epoch
        self.isolated = isolated
        # Per queue (one, or one per node): resyncs not yet worked through, as of a time.
        self._queues: dict[int, tuple[float, float]] = {}
        self.probes = 0
        self.probe_bins: list[int] = []

    @classmethod
    def of(cls, scenario: Scenario, fleet: Fleet, epoch: float) -> ControlPlane:
        """The control plane of ``scenario``, probed with ``fleet``'s ``max_latency``."""
        return cls(
            epoch + scenario.outage,
            scenario.capacity,
            fleet.max_latency,
            epoch=epoch,
            isolated=scenario.trials,
        )

    def backlog(self, node: int, t: float) -> float:
        """Resyncs in ``node``'s queue at ``t`` (worked through at ``rate`` since last seen)."""
        q, at = self._queues.get(node if self.isolated else 0, (0.0, t))
        return max(0.0, q - (t - at) * self.rate)

    def resync(self, node: int, t: float, weight: int, fail_after: float) -> float | None:
        """``weight`` starts at ``t`` (the control plane up) ask for a full resync each: when
        they are worked through (the agents are healthy), or None when their clients give up
        first. Served or not, they join the queue: the control plane works through them."""
        if not self.limited:
            return t
        q = self.backlog(node, t) + weight
        self._queues[node if self.isolated else 0] = (q, t)
        done = t + q / self.rate
        return done if done <= t + fail_after else None

    def probe(self, node: int, t: float) -> ProbeAnswer:
        """The probe's answer at ``t`` (invariant 11), counted as one request."""
        self.probes += 1
        b = int((t - self.epoch) // BIN_SECONDS)
        bins = self.probe_bins
        if b >= len(bins):
            bins.extend([0] * (b + 1 - len(bins)))
        bins[b] += 1
        if t < self.up_at:
            return "down"
        if not self.limited:
            return "ready"
        return "loaded" if self.backlog(node, t) / self.rate > self.max_latency else "ready"
