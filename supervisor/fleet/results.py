"""What a simulation measured, per policy, and its ``simulate --json`` form."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.fleet.world import BIN_SECONDS, Fleet, Scenario


@dataclass(frozen=True, slots=True)
class Waits:
    """How long nodes waited for their first start after their scenario began (a crash, a
    restart, a boot): the median, the 90th percentile and the longest, in seconds."""

    median: float
    p90: float
    max: float

    @classmethod
    def of(cls, waits: Sequence[tuple[float, int]]) -> Waits | None:
        """From (wait, nodes) pairs; None when no node started."""
        ranked = sorted(waits)
        total = sum(w for _, w in ranked)
        if total == 0:
            return None

        def quantile(q: float) -> float:
            # The smallest wait that at least q of the nodes waited no longer than.
            need = max(1, math.ceil(q * total))
            seen = 0
            for wait, weight in ranked:
                seen += weight
                if seen >= need:
                    return wait
            return ranked[-1][0]  # pragma: no cover - the loop reaches total

        return cls(quantile(0.5), quantile(0.9), ranked[-1][0])

    def to_json(self) -> dict[str, float]:
        """The ``first_start_wait_seconds`` object of ``simulate --json``."""
        return {
            "median": round(self.median, 3),
            "p90": round(self.p90, 3),
            "max": round(self.max, 3),
        }


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
    #: Starts that did not make their agent healthy (during the outage, or on the capacity).
    failed: int = 0
    #: Probe requests the policy's gates made (invariant 11), and per minute.
    probes: int = 0
    probes_per_minute: tuple[int, ...] = ()
    #: How long nodes waited for their first start after their scenario began.
    waits: Waits | None = None
    #: J, the admission grid's period, for the gate's policies (None for the alternatives).
    admission: float | None = None

    @property
    def recovered(self) -> bool:
        """Whether every node was healthy by the end of the simulation."""
        return self.never_healthy == 0 and self.all_healthy_at is not None

    @property
    def peak_starts_per_minute(self) -> int:
        """Starts in the busiest minute."""
        return max(self.starts_per_minute, default=0)

    @property
    def peak_probes_per_minute(self) -> int:
        """Probe requests in the busiest minute."""
        return max(self.probes_per_minute, default=0)

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
        restart = self.restart_minute
        sc = self.scenario
        doc: dict[str, Any] = {
            "scenario": sc.kind,
            "nodes": sc.nodes,
            "trials": sc.nodes if sc.trials else None,
            "window_seconds": self.fleet.window,
            "max_latency_seconds": self.fleet.max_latency,
            "outage_seconds": sc.outage,
            "fail_after_seconds": sc.fail_after,
            "restart_at_seconds": None if restart is None else sc.restart_at,
            "slots": self.fleet.slots,
            "unused_addresses": self.fleet.unused_addresses,
            "seed": self.seed,
            "policies": {o.name: self._policy_json(o) for o in self.policies},
        }
        if sc.capacity is not None:
            doc["capacity_per_minute"] = sc.capacity
            doc["horizon_seconds"] = self.horizon
            for o in self.policies:
                doc["policies"][o.name].update(
                    {
                        "recovered": o.recovered,
                        "starts_after_outage": o.starts_after_outage,
                        "starts_after_outage_per_node": round(o.starts_after_outage / sc.nodes, 3),
                        "failed_on_capacity": o.overloaded,
                    }
                )
        return doc

    def _policy_json(self, o: PolicyOutcome) -> dict[str, Any]:
        restart = self.restart_minute
        return {
            "total_starts": o.total_starts,
            "failed_starts": o.failed,
            "peak_starts_per_minute": o.peak_starts_per_minute,
            "peak_starts_per_minute_after_first_minute": o.peak_after(1),
            "peak_starts_per_minute_from_restart": (
                None if restart is None else o.peak_after(restart)
            ),
            "ideal_starts_per_minute": round(self.ideal_starts_per_minute, 3),
            "all_healthy_at_seconds": (
                None if o.all_healthy_at is None else round(o.all_healthy_at, 3)
            ),
            "never_healthy": o.never_healthy,
            "admission_seconds": o.admission,
            "probe_requests": o.probes,
            "peak_probe_requests_per_minute": o.peak_probes_per_minute,
            "first_start_wait_seconds": None if o.waits is None else o.waits.to_json(),
        }
