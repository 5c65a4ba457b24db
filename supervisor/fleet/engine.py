"""The engine: every node's events on one virtual clock, and :func:`simulate`, which runs each
policy through a scenario.

Why event-driven: a tick loop at the 100 ms resolution Docker needs would cost 36,000 ticks an
hour for every node. Here each node only has events when something happens to it (its scenario
begins, its policy attempts a start, its agent exits), kept in one heap ordered by virtual
time, so 100,000 nodes take seconds. Policies whose timing is deterministic (Docker, kubelet,
systemd) are simulated once per group of nodes that are triggered at the same moment (a
weight), since such nodes cannot diverge (``restart-all`` restarts every node at one instant,
which keeps a group a group); per-node randomness (full jitter) and per-node slots (the gate)
are simulated per node. With a capacity the nodes interact through the control plane's queue,
so no two nodes are simulated as one group; the engine stays exact.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from supervisor.core.policy import DEFAULT_MAX_LATENCY
from supervisor.fleet.models import (
    ANCHORS,
    POLICY_NAMES,
    FullJitterModel,
    GateModel,
    Model,
    SimulationError,
    gate_policies,
    settled_state,
)
from supervisor.fleet.results import PolicyOutcome, SimulationResult, Waits
from supervisor.fleet.world import (
    BIN_SECONDS,
    CAPACITY_HORIZON_MARGIN,
    DEFAULT_EPOCH,
    ControlPlane,
    Fleet,
    Scenario,
    Trigger,
    node_offsets,
    triggers,
)

_ATTEMPT: Final = 0
_EXIT: Final = 1
_BEGIN: Final = 2
_RESTART: Final = 3
#: A node's next event: (virtual time, kind).
_Next = tuple[float, int]


class _Engine:
    """One policy's run: the heap of every node's next event and what was counted.

    Every node has at most one event in the heap (its next one), which is what makes the
    restart of every supervisor simple: it replaces the pending attempt of every node that is
    waiting, so no node can run two chains of attempts (:meth:`restart_all`).
    """

    def __init__(
        self,
        model: Model,
        trigs: Sequence[Trigger],
        weights: Sequence[int],
        scenario: Scenario,
        plane: ControlPlane,
        *,
        epoch: float,
        record_starts: bool,
    ) -> None:
        self.model = model
        self.trigs = trigs
        self.weights = weights
        self.nodes = scenario.nodes
        self.fail_after = scenario.fail_after
        self.plane = plane
        self.epoch = epoch
        self.record = record_starts
        self.heap: list[tuple[float, int, int, int]] = [
            (epoch + trig.at, i, i, _BEGIN) for i, trig in enumerate(trigs)
        ]
        self.seq = len(self.heap)
        self.started = [0.0] * len(trigs)
        #: Each node's first start, in seconds after its scenario began (inf: not yet).
        self.first = [math.inf] * len(trigs)
        # Nodes whose policy will never start the agent again (systemd's start limit): down,
        # with nothing in the heap, unlike a healthy node. Only a restart can bring them back.
        self.gave_up: set[int] = set()
        self.bins: list[int] = []
        self.times: list[float] = []
        self.nodes_started: list[int] = []
        self.total = self.after = self.overloaded = self.failed = self.healthy = 0
        self.last_healthy = -math.inf

    def run(self, end: float, restart_at: float | None) -> None:
        """Process events up to ``end``; every supervisor restarts at ``restart_at`` (absolute),
        before anything else happens at that instant."""
        heap = self.heap
        if restart_at is not None:
            # Sequence -1: first of everything at that instant, so an attempt the old process
            # had planned for that very instant is the new process's to make.
            heap.append((restart_at, -1, -1, _RESTART))
        heapq.heapify(heap)
        step = self.step
        while heap:
            t, _, node, event = heap[0]
            if t > end:
                break
            if event == _RESTART:
                heapq.heappop(heap)
                self.restart_all(t)
                continue
            # The top entry is replaced by the node's next event: one sift, not a pop and a push.
            nxt = step(node, t, event)
            if nxt is None:
                heapq.heappop(heap)
            else:
                self.seq += 1
                heapq.heapreplace(heap, (nxt[0], self.seq, node, nxt[1]))

    def step(self, node: int, t: float, event: int) -> _Next | None:
        """Step ``node`` at ``t`` until it has to wait: its next event, or None when it is
        healthy or its policy gave up. What happens at the same instant (a gate asked right
        after an exit) needs no trip through the heap."""
        model = self.model
        while True:
            if event == _ATTEMPT:
                nxt = model.attempt(node, t)
                if nxt is not None and nxt <= t:
                    return self.start(node, t)
            elif event == _EXIT:
                nxt = model.exited(node, t, t - self.started[node])
            else:
                nxt = model.begin(node, t, self.trigs[node].kind)
            if nxt is None:
                self.gave_up.add(node)
                return None
            if nxt > t:
                return nxt, _ATTEMPT
            event = _ATTEMPT

    def start(self, node: int, t: float) -> _Next | None:
        """The agent starts at ``t``: counted, then served (healthy, None) or failed (its exit
        ``fail_after`` later). Once the control plane is up a start is a full resync in its
        queue; a weighted start is served whole or not at all."""
        w = self.weights[node]
        self.total += w
        since = t - self.epoch
        b = int(since // BIN_SECONDS)
        bins = self.bins
        if b >= len(bins):
            bins.extend([0] * (b + 1 - len(bins)))
        bins[b] += w
        if self.first[node] == math.inf:
            self.first[node] = max(0.0, since - self.trigs[node].at)
        if self.record:
            self.times.append(since)
            self.nodes_started.append(node)
        done = None
        if t >= self.plane.up_at:
            self.after += w
            done = self.plane.resync(node, t, w, self.fail_after)
            if done is None:
                self.overloaded += w
        if done is None:
            self.failed += w
            self.started[node] = t
            return t + self.fail_after, _EXIT
        self.healthy += w
        self.last_healthy = max(self.last_healthy, done)
        return None

    def restart_all(self, t: float) -> None:
        """Restart every node's supervisor at ``t``, in place on the heap.

        A node is waiting when its pending event is an attempt (or its policy gave up): that
        attempt is dropped, the cancellation of the old process's wait, and the new process's
        attempt takes its place. A node whose agent runs (a pending exit, or healthy) or whose
        scenario has not begun keeps its event; its policy still forgets its memory.
        """
        pending = {entry[2]: entry for entry in self.heap}
        kept: list[tuple[float, int, int, int]] = []
        for node in range(len(self.trigs)):
            entry = pending.get(node)
            waiting = node in self.gave_up if entry is None else entry[3] == _ATTEMPT
            nxt = self.model.supervisor_restarted(node, t, waiting)
            if not waiting:
                if entry is not None:
                    kept.append(entry)
                continue
            self.gave_up.discard(node)
            if nxt is None:
                self.gave_up.add(node)
                continue
            if nxt < t:
                raise SimulationError(f"node {node}: restarted at {t}, asked to attempt at {nxt}")
            self.seq += 1
            kept.append((nxt, self.seq, node, _ATTEMPT))
        self.heap[:] = kept
        heapq.heapify(self.heap)

    def outcome(self, name: str, admission: float | None) -> PolicyOutcome:
        """What was counted, as the outcome of the policy ``name``."""
        never = self.nodes - self.healthy
        waits = [(f, w) for f, w in zip(self.first, self.weights, strict=True) if f != math.inf]
        return PolicyOutcome(
            name=name,
            total_starts=self.total,
            starts_per_minute=tuple(self.bins),
            all_healthy_at=None if never or not self.healthy else self.last_healthy - self.epoch,
            never_healthy=never,
            start_times=tuple(self.times),
            start_nodes=tuple(self.nodes_started),
            starts_after_outage=self.after,
            overloaded=self.overloaded,
            failed=self.failed,
            probes=self.plane.probes,
            probes_per_minute=tuple(self.plane.probe_bins),
            waits=Waits.of(waits),
            admission=admission,
        )


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
    plane: ControlPlane | None = None,
    admission: float | None = None,
) -> PolicyOutcome:
    """Drive one policy through the scenario; ``weights[i]`` real nodes behave as node i.

    One heap of (time, sequence, node, event) on the virtual clock: a node's scenario begins,
    its policy attempts a start, or its agent fails ``fail_after`` after a start that was not
    served (made while the control plane was down, or not worked through by ``plane`` in
    time: see :mod:`supervisor.fleet.world`). ``plane`` (default: the scenario's, probed with
    the default ``max_latency``) is the one the model's probe asks. ``horizon`` (seconds from
    t=0) bounds the run; nodes not healthy by then count as never healthy. ``restart_at``
    (seconds from t=0): every node's supervisor process is restarted then. ``admission`` is
    reported as the policy's J.
    """
    if plane is None:
        plane = ControlPlane(
            epoch + scenario.outage,
            scenario.capacity,
            DEFAULT_MAX_LATENCY,
            epoch=epoch,
            isolated=scenario.trials,
        )
    engine = _Engine(
        model, trigs, weights, scenario, plane, epoch=epoch, record_starts=record_starts
    )
    engine.run(epoch + horizon, None if restart_at is None else epoch + restart_at)
    return engine.outcome(name, admission)


def _group(trigs: Sequence[Trigger]) -> tuple[list[Trigger], list[int]]:
    """Nodes triggered alike behave alike under a deterministic policy: one entry each."""
    counts: dict[Trigger, int] = {}
    for trig in trigs:
        counts[trig] = counts.get(trig, 0) + 1
    return list(counts), list(counts.values())


@dataclass(frozen=True, slots=True)
class _Setup:
    """What every policy of one :func:`simulate` call shares."""

    scenario: Scenario
    fleet: Fleet
    trigs: Sequence[Trigger]
    offsets: Sequence[tuple[str, float]]
    rng: random.Random
    epoch: float
    horizon: float
    record_starts: bool
    restart_at: float | None

    def run(self, name: str) -> PolicyOutcome:
        """One policy through the scenario, against a control plane of its own."""
        plane = ControlPlane.of(self.scenario, self.fleet, self.epoch)
        trigs, weights, model, admission = self.model(name, plane)
        return run_model(
            name,
            model,
            trigs,
            weights,
            self.scenario,
            epoch=self.epoch,
            horizon=self.horizon,
            record_starts=self.record_starts,
            restart_at=self.restart_at,
            plane=plane,
            admission=admission,
        )

    def model(
        self, name: str, plane: ControlPlane
    ) -> tuple[Sequence[Trigger], Sequence[int], Model, float | None]:
        """The policy ``name``'s model, the nodes it is simulated for with their weights, and
        its J (the gate's only)."""
        n = self.scenario.nodes
        singles = [1] * n
        if name.startswith("agent-supervisor"):
            probe = name.endswith("+probe")
            policies = gate_policies(self.fleet, self.offsets, probe)
            states = [settled_state(self.fleet, self.epoch)] * n
            gate = GateModel(policies, states, plane)
            return self.trigs, singles, gate, self.fleet.admission_for(probe)
        if name == "full-jitter":
            return self.trigs, singles, FullJitterModel(n, self.rng), None
        anchor = ANCHORS[name]
        # With a capacity, nodes of a group may be served or not as they come: no groups.
        if not self.record_starts and self.scenario.capacity is None:
            grouped, weights = _group(self.trigs)
            return grouped, weights, anchor(len(grouped)), None
        return self.trigs, singles, anchor(n), None


def default_horizon(
    scenario: Scenario, fleet: Fleet, trigs: Sequence[Trigger], restart_at: float | None
) -> float:
    """Far beyond any recovery: the last trigger (or restart) and the outage, then the longest
    backoff a few times over, and a day more (an hour with a capacity, where a storm that
    never recovers would otherwise run a day)."""
    last = max(t.at for t in trigs)
    if restart_at is not None:
        last = max(last, restart_at)
    margin = 86400.0 if scenario.capacity is None else CAPACITY_HORIZON_MARGIN
    return last + scenario.outage + (fleet.max_multiplier + 3) * fleet.window + margin


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
    t=0) ends the simulation; by default far beyond any recovery (:func:`default_horizon`).
    """
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r} (known: {', '.join(POLICY_NAMES)})")
    if horizon is not None and not (math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon = {horizon!r}: expected a positive duration")
    given_rng = rng
    rng = rng if rng is not None else random.Random(seed)  # noqa: S311 - not cryptography
    gated = any(p.startswith("agent-") for p in policies)
    offsets = node_offsets(fleet, scenario.nodes, rng) if gated else []
    trigs = triggers(scenario, rng)
    restart_at = scenario.restart_at if scenario.kind == "restart-all" else None
    if horizon is None:
        horizon = default_horizon(scenario, fleet, trigs, restart_at)
    setup = _Setup(scenario, fleet, trigs, offsets, rng, epoch, horizon, record_starts, restart_at)
    outcomes = tuple(setup.run(name) for name in policies)
    return SimulationResult(scenario, fleet, seed if given_rng is None else None, outcomes, horizon)
