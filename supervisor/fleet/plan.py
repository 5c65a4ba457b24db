"""Planning the window: which configuration keeps a fleet under a start budget, and what it costs.

The control plane can absorb about R full resyncs a minute; N agents restarting once each in a
window W make ``N / W`` starts a unit of time on average, so ``W >= N / R``. The cost of a longer
window is recovery time: with a control-plane probe every agent is healthy by the end of the
outage plus W; without one, the first restarts go through at once (a wave of N) and the last
agent is healthy about 2W after the crash. :func:`plan` finds the smallest W that keeps the
*busiest* minute (not just the average) under R for the fleet's slot mode, and says how to
configure it.

Why the slot mode matters: exact slots (``slot_index``/``slot_count``) put ``N / W`` starts
into every minute to within one; address slots over a contiguous block to within about four;
hashed slots scatter like random jitter, so their busiest minute exceeds the mean by a few
standard deviations of a Poisson count (``sqrt(N / W)``), which a window has to leave room for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final

from supervisor.core.durations import MAX_SECONDS, format_duration
from supervisor.core.policy import WindowConfig, window_seconds
from supervisor.core.slots import SLOT_MODES, SlotMode

#: Starts by which a minute of the window may exceed its share for address slots over a
#: contiguous block (at most 3.5 measured for blocks of 10 to 30,000 ids; it grows like log N).
ADDRESS_EXCESS: Final = 4.0
#: The chance the busiest minute of hashed slots may exceed the estimate.
HASH_EXCEED_PROBABILITY: Final = 0.05


def expected_peak(nodes: int, window: float, slots: SlotMode) -> float:
    """The busiest minute's starts when N nodes start once each in a window of W seconds.

    ``index``: the ceiling of the mean (slots are exactly W/N apart). ``address``: the mean
    plus :data:`ADDRESS_EXCESS`. ``hash``: a Poisson count per minute, normal approximation,
    with the quantile that no minute of the window exceeds with probability
    :data:`HASH_EXCEED_PROBABILITY` (a union bound over the window's minutes).
    """
    mean = nodes * 60.0 / window
    if slots == "index":
        return float(math.ceil(mean - 1e-9))
    if slots == "address":
        # The three-gap theorem also keeps any two of N slots 0.4 W / N apart, so a minute
        # holds at most floor(2.5 x its share) + 1: the tighter bound for sparse minutes.
        return min(float(nodes), mean + ADDRESS_EXCESS, math.floor(2.5 * mean) + 1.0)
    minutes = max(1.0, window / 60.0)
    z = NormalDist().inv_cdf(1.0 - HASH_EXCEED_PROBABILITY / minutes)
    return min(float(nodes), mean + z * math.sqrt(mean))


@dataclass(frozen=True, slots=True)
class Plan:
    """A window that keeps ``nodes`` under ``max_start_rate`` starts a minute, and its cost."""

    nodes: int
    max_start_rate: float
    slots: SlotMode
    outage: float
    window: float
    per_node: float
    settings: tuple[tuple[str, str], ...]
    current_window: float

    @property
    def mean_starts_per_minute(self) -> float:
        """N/W a minute."""
        return self.nodes * 60.0 / self.window

    @property
    def peak_starts_per_minute(self) -> float:
        """The busiest minute to expect with this window and slot mode."""
        return expected_peak(self.nodes, self.window, self.slots)

    @property
    def current_peak(self) -> float:
        """The busiest minute of the current configuration."""
        return expected_peak(self.nodes, self.current_window, self.slots)

    @property
    def recovery_with_probe(self) -> float:
        """Seconds from the crash until every agent is healthy, with a probe: outage + W."""
        return self.outage + self.window

    @property
    def recovery_without_probe(self) -> float | None:
        """Without a probe: 2W when the outage ends within the first window, else unknown."""
        return 2 * self.window if self.outage <= self.window else None

    def to_json(self) -> dict[str, Any]:
        """The ``plan --json`` object."""
        return {
            "nodes": self.nodes,
            "max_start_rate": self.max_start_rate,
            "slots": self.slots,
            "window_seconds": self.window,
            "mean_starts_per_minute": round(self.mean_starts_per_minute, 3),
            "peak_starts_per_minute": round(self.peak_starts_per_minute, 3),
            "settings": dict(self.settings),
            "environment": {_env(k): v for k, v in self.settings},
            "outage_seconds": self.outage,
            "recovery_with_probe_seconds": self.recovery_with_probe,
            "recovery_without_probe_seconds": self.recovery_without_probe,
            "first_wave_without_probe": self.nodes,
            "current_window_seconds": self.current_window,
            "current_peak_starts_per_minute": round(self.current_peak, 3),
            "current_within_budget": self.current_peak <= self.max_start_rate,
        }


def _env(key: str) -> str:
    return "AGENT_SUPERVISOR_" + key.replace(".", "_").upper()


def needed_window(nodes: int, max_start_rate: float, slots: SlotMode) -> float:
    """The smallest W (whole seconds) whose busiest minute stays at or under the rate."""
    if nodes < 1:
        raise ValueError(f"nodes = {nodes}: at least one node")
    if not math.isfinite(max_start_rate) or max_start_rate < 1:
        # A minute with a start in it has at least one: a budget below one is not a budget.
        raise ValueError(f"max start rate {max_start_rate!r}: must be at least 1 a minute")
    if slots not in SLOT_MODES:
        raise ValueError(f"slots {slots!r} is not one of {', '.join(SLOT_MODES)}")
    if max_start_rate >= nodes:
        return 60.0  # the whole fleet fits into one minute
    lo = 60.0 * nodes / max_start_rate  # the mean alone needs this much
    hi = lo * 2
    while expected_peak(nodes, hi, slots) > max_start_rate:
        hi *= 2
        if hi > MAX_SECONDS:
            raise ValueError(
                f"no window up to ten years keeps {nodes} nodes with {slots} slots under "
                f"{max_start_rate:g} starts a minute"
            )
    # The peak falls as W grows (monotone up to the slowly growing quantile): bisect.
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_peak(nodes, mid, slots) > max_start_rate:
            lo = mid
        else:
            hi = mid
    w = float(math.ceil(hi - 1e-6))
    while expected_peak(nodes, w, slots) > max_start_rate:  # rounding landed on a step's edge
        w += 1.0
    return w


def plan(
    nodes: int,
    max_start_rate: float,
    *,
    slots: SlotMode = "hash",
    current: WindowConfig | None = None,
    outage: float = 1800.0,
) -> Plan:
    """The window configuration for ``nodes`` under ``max_start_rate`` starts a minute.

    The recommendation scales with the cluster: ``window.base = 0`` and
    ``window.per_node = W / N`` (rounded up to the millisecond), so a growing fleet keeps the
    same rate without a new plan; ``window.max`` is raised when it would cut W short and
    ``window.min`` lowered when it would stretch W.
    """
    current = current or WindowConfig()
    w = needed_window(nodes, max_start_rate, slots)
    per_node = math.ceil(w / nodes * 1000) / 1000
    effective = per_node * nodes
    settings: list[tuple[str, str]] = [
        ("window.base", "0s"),
        ("window.per_node", f"{per_node:g}s"),
    ]
    if current.max < effective:
        settings.append(("window.max", format_duration(math.ceil(effective))))
    if current.min > effective:
        settings.append(("window.min", f"{max(1, math.floor(effective)):d}s"))
    window = max(effective, 0.001)
    return Plan(
        nodes=nodes,
        max_start_rate=max_start_rate,
        slots=slots,
        outage=outage,
        window=window,
        per_node=per_node,
        settings=tuple(settings),
        current_window=window_seconds(current, nodes),
    )


def render_plan(p: Plan) -> str:
    """The default output of ``plan``: the window, how to configure it, what recovery costs."""
    toml = ", ".join(f'{k.split(".", 1)[1]} = "{v}"' for k, v in p.settings)
    env = " ".join(f"{_env(k)}={v}" for k, v in p.settings)
    w = format_duration(p.window)
    out = [
        f"{p.nodes} nodes, at most {p.max_start_rate:g} starts/min, {p.slots} slots:",
        f"  window     {w} ({p.window:g} s): {p.mean_starts_per_minute:.1f} starts/min on "
        f"average, busiest minute about {p.peak_starts_per_minute:.0f}",
        f"  configure  [window] {toml}",
        f"             or {env}",
        "             (W = per_node x cluster_size: a growing fleet keeps the same rate)",
        f"  recovery   with a probe ([probe] urls): every agent healthy by outage end + {w} "
        f"({format_duration(p.recovery_with_probe)} after a {format_duration(p.outage)} "
        f"outage), {p.nodes} starts in all",
    ]
    if p.recovery_without_probe is not None:
        out.append(
            f"             without a probe: a first wave of {p.nodes} starts at once, every "
            f"agent healthy {format_duration(p.recovery_without_probe)} after the crash, "
            f"about {2 * p.nodes} starts"
        )
    else:
        out.append(
            f"             without a probe: a first wave of {p.nodes} starts at once; the "
            "outage outlasts the window, so failed starts back off further "
            "(run `agent-supervisor simulate` for the figures)"
        )
    verdict = "within" if p.current_peak <= p.max_start_rate else "OVER"
    out.append(
        f"  now        the current configuration gives {format_duration(p.current_window)}: "
        f"{p.nodes * 60 / p.current_window:.1f} starts/min, busiest minute about "
        f"{p.current_peak:.0f} ({verdict} the budget)"
    )
    return "\n".join(out) + "\n"
