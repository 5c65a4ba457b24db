"""Planning the window: which configuration keeps a fleet under a start budget, and what it costs;
and checking a real fleet's names against the slot mode it uses.

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

Address slots are only that good over the right addresses, and sizing with ``--slots address``
assumes a contiguous block. Measured with the default windows: a block with a fifth of it
unused at random, 1.10 x N/W; the first hosts of every rack's subnet (U hosts in each of R
consecutive /24s, /25s or /26s, 22,506 shapes of 500 to 12,000 nodes), at most 1.17; addresses
picked at random in a /16 (a cloud VPC), like hashes (1.26 for 5000); and a few regular strides
alias, worse than hashes (every 842nd address: 4.6 x N/W in one minute).
:func:`check_fleet` therefore takes the fleet's real names, computes every node's offset with
the gate's own :func:`~supervisor.core.slots.slot_offset`, and measures the busiest minute
against the mode's target (:func:`peak_target`):

* ``index``: at most :data:`INDEX_TARGET` x N/W (or the mean rounded up, for small means);
* ``hash`` and ``address``: at most :data:`HASH_TARGET` x N/W, or, for a fleet so small that
  chance alone exceeds that in more than one fleet of 20, the estimate of :func:`expected_peak`
  for hashes. Address slots are promised no better than hashes, because whether they are
  depends on the addresses, which is exactly what the check measures.

The busiest minute is counted in the minutes of one window from its start (``[60k, 60k + 60)``
seconds), as :mod:`supervisor.fleet.simulate` counts them and :func:`expected_peak` estimates
them; every window of the grid repeats the same offsets.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final, Literal

from supervisor.core.durations import MAX_SECONDS, format_duration
from supervisor.core.policy import WindowConfig, window_seconds
from supervisor.core.slots import SLOT_MODE_SETTINGS, SLOT_MODES, SlotMode, slot_offset

#: Starts by which a minute of the window may exceed its share for address slots over a
#: contiguous block (at most 3.5 measured for blocks of 10 to 30,000 ids; it grows like log N).
#: Sizing with ``--slots address`` assumes such a block; real addresses may spread worse, which
#: :func:`check_fleet` measures (and holds to the hashes' target).
ADDRESS_EXCESS: Final = 4.0
#: The chance the busiest minute of hashed slots may exceed the estimate.
HASH_EXCEED_PROBABILITY: Final = 0.05
#: The busiest minute exact slots may see, as a multiple of the mean N/W (issue 15).
INDEX_TARGET: Final = 1.05
#: The busiest minute hashed (and address) slots may see, as a multiple of N/W: about the
#: 95th percentile of the busiest minute of random offsets at 5,000 to 10,000 nodes with the
#: default windows (measured 1.34 to 1.36), so a fleet exceeds it by chance about once in 20.
HASH_TARGET: Final = 1.35
#: How far the configured cluster_size may be from the number of names before the check says
#: so: fleets grow and shrink between edits of the configuration, a tenth is not a typo.
CLUSTER_SIZE_TOLERANCE: Final = 0.1


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


# --- checking a fleet's names ------------------------------------------------------------

#: How bad a problem of a fleet check is: ``refused``, the mode cannot give every node its own
#: slot (the gate would exit 78 on those nodes, or put them on one instant); ``over``, the busiest
#: minute is over the target (or the budget) where the mode promised it, so it is the names, not
#: chance; ``warning``, worth knowing, nothing is wrong with the configuration.
Severity = Literal["refused", "over", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One line of a fleet check: how bad, a stable kind, and what to do."""

    severity: Severity
    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        """The problem in ``plan --nodes-file --json``."""
        return {"severity": self.severity, "kind": self.kind, "message": self.message}


def peak_target(slots: SlotMode, nodes: int, window: float) -> float:
    """The most starts one minute of the window should see for ``nodes`` with this slot mode.

    ``index``: :data:`INDEX_TARGET` x N/W, or the mean rounded up where that is more (exact slots
    W/N apart put at most that into a minute). ``hash`` and ``address``: :data:`HASH_TARGET` x
    N/W, or where chance alone exceeds that in more than one fleet of 20 (small fleets, whose
    minutes hold few starts) the estimate :func:`expected_peak` gives for hashes.
    """
    mean = nodes * 60.0 / window
    if slots == "index":
        return max(INDEX_TARGET * mean, float(math.ceil(mean - 1e-9)))
    return max(HASH_TARGET * mean, expected_peak(nodes, window, "hash"))


def busiest_minute(offsets: Sequence[float], window: float) -> int:
    """The most offsets in one minute of a window of ``window`` seconds, counted from its start.

    Minute k holds the offsets in ``[60k, 60k + 60)`` seconds; a last, shorter minute counts as
    one.
    """
    if not offsets:
        return 0
    bins = max(1, math.ceil(window / 60.0 - 1e-9))
    counts = Counter(min(int(o * window // 60.0), bins - 1) for o in offsets)
    return max(counts.values())


def parse_node_names(text: str) -> tuple[tuple[str, ...], int]:
    """The node names of a nodes file, in order and each once, and how many repeats there were.

    One name a line; blank lines and lines starting with ``#`` are skipped. A line with more than
    one word is a :class:`ValueError` naming the line: a name holds no blanks, and a second column
    (an ordinal, an address) would be silently ignored.
    """
    names: dict[str, None] = {}
    repeats = 0
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 1:
            raise ValueError(f"line {number}: {line.strip()!r}: one node name a line")
        if words[0] in names:
            repeats += 1
        names[words[0]] = None
    if not names:
        raise ValueError("no node names in it (one name a line)")
    return tuple(names), repeats


@dataclass(frozen=True, slots=True)
class FleetCheck:
    """What a slot mode does with a fleet's real names: ``plan --nodes-file``."""

    source: str
    nodes: int
    setting: str
    slots: SlotMode
    agent: str
    window: float
    cluster_size: int
    cluster_size_configured: bool
    placed: int
    distinct_slots: int
    most_on_one_instant: int
    busiest_minute: int
    target: float
    problems: tuple[Problem, ...]
    max_start_rate: float | None = None
    planned_window: float | None = None
    planned_busiest_minute: int | None = None

    @property
    def mean_starts_per_minute(self) -> float:
        """N/W a minute: every named node starting once in the window."""
        return self.nodes * 60.0 / self.window

    @property
    def within_target(self) -> bool:
        """Whether the busiest minute is at most the mode's target (false when no node has a
        slot: there is nothing to be within it)."""
        return self.placed > 0 and self.busiest_minute <= self.target + 1e-9

    @property
    def ok(self) -> bool:
        """No problem but warnings: the mode works for these names as promised."""
        return all(p.severity == "warning" for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        """The ``fleet`` object of ``plan --nodes-file --json``."""
        mean = self.mean_starts_per_minute
        doc: dict[str, Any] = {
            "source": self.source,
            "nodes": self.nodes,
            "agent": self.agent,
            "slot_mode": self.setting,
            "slots": self.slots,
            "window_seconds": self.window,
            "cluster_size": self.cluster_size,
            "cluster_size_configured": self.cluster_size_configured,
            "mean_starts_per_minute": round(mean, 3),
            "placed": self.placed,
            "distinct_slots": self.distinct_slots,
            "most_on_one_instant": self.most_on_one_instant,
            "busiest_minute": self.busiest_minute,
            "busiest_minute_x_mean": round(self.busiest_minute / mean, 3),
            "target_starts_per_minute": round(self.target, 3),
            "target_x_mean": round(self.target / mean, 3),
            "within_target": self.within_target,
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
        }
        if self.max_start_rate is not None:
            doc["max_start_rate"] = self.max_start_rate
            doc["planned_window_seconds"] = self.planned_window
            doc["planned_busiest_minute"] = self.planned_busiest_minute
        return doc


def check_fleet(
    names: Sequence[str],
    setting: str,
    *,
    agent: str,
    window: float,
    slot_count: int | None = None,
    ordinals: bool = False,
    cluster_size: int | None = None,
    repeats: int = 0,
    source: str = "",
    budget: tuple[float, float] | None = None,
) -> FleetCheck:
    """Compute every node's slot as its gate would, and measure what the fleet makes of it.

    ``setting`` is the ``slot_mode`` (``auto``, ``hash``, ``index``, ``address``); the offsets
    come from :func:`~supervisor.core.slots.slot_offset` itself. Exact slots need an ordinal per
    node, which a list of names does not give: the check uses the names' order, 0 to N-1, of
    ``slot_count`` (the configured one, else N). ``auto`` is ``index`` when ``ordinals`` says the
    configuration has ``slot_index``/``slot_count``, else ``hash``, as on the nodes. A node the
    mode gives no slot (``address`` and no IPv4 address in the name) is a ``refused`` problem,
    as are two names on one instant; a busiest minute over :func:`peak_target` is ``over`` for
    index and address slots, where it follows from the names, and a ``warning`` for hashed
    slots, which land over it by chance in about one fleet of 20. ``budget`` is
    ``(max_start_rate, planned_window)``: the busiest minute of these names in the planned
    window is measured against the rate the same way.
    """
    n = len(names)
    if n < 1:
        raise ValueError("no node names to check")
    if window <= 0:
        raise ValueError(f"window {window!r}: must be positive")
    if setting not in SLOT_MODE_SETTINGS:
        raise ValueError(f"slot_mode {setting!r} is not one of {', '.join(SLOT_MODE_SETTINGS)}")
    placed = _place(
        names, setting, used_mode(setting, ordinals=ordinals), agent=agent, slot_count=slot_count
    )
    on_instant = Counter(placed.offsets.values())
    most = max(on_instant.values(), default=0)
    values = list(placed.offsets.values())
    busiest = busiest_minute(values, window)
    target = peak_target(placed.slots, n, window)
    rate, planned = budget if budget is not None else (None, None)
    planned_busiest = None if planned is None else busiest_minute(values, planned)
    size = cluster_size or n
    found = (
        _no_slot(placed),
        _shared_slot(placed, on_instant, most),
        _over_target(placed, busiest, target, window),
        _over_budget(placed, budget, planned_busiest),
        _repeated_names(repeats),
        _cluster_size_off(size, n, window),
    )
    return FleetCheck(
        source=source,
        nodes=n,
        setting=setting,
        slots=placed.slots,
        agent=agent,
        window=window,
        cluster_size=size,
        cluster_size_configured=cluster_size is not None,
        placed=len(placed.offsets),
        distinct_slots=len(on_instant),
        most_on_one_instant=most,
        busiest_minute=busiest,
        target=target,
        problems=tuple(p for p in found if p is not None),
        max_start_rate=rate,
        planned_window=planned,
        planned_busiest_minute=planned_busiest,
    )


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where the slot mode puts a fleet's names: each placed name's offset, and the names it
    refuses with the first refusal's message. ``count``: the slot_count of exact slots."""

    slots: SlotMode
    nodes: int
    count: int | None
    offsets: dict[str, float]
    refused: tuple[str, ...]
    first_error: str

    @property
    def label(self) -> str:
        """The slot mode as the problems name it."""
        return f"{self.slots} slots"


def _place(
    names: Sequence[str], setting: str, slots: SlotMode, *, agent: str, slot_count: int | None
) -> _Placement:
    """Every name's offset from :func:`~supervisor.core.slots.slot_offset` itself, so that the
    check measures what the gates will do, not a model of it; exact slots take the names'
    order as the ordinals, of ``slot_count`` (else N), since a list of names has no other."""
    n = len(names)
    by_index = slots == "index"
    count = (slot_count or n) if by_index else None
    offsets: dict[str, float] = {}
    refused: list[str] = []
    first_error = ""
    for i, name in enumerate(names):
        try:
            offsets[name], _ = slot_offset(
                setting,
                node=name,
                agent=agent,
                slot_index=i if by_index else None,
                slot_count=count,
            )
        except ValueError as exc:  # SlotError, or an ordinal beyond slot_count
            refused.append(name)
            first_error = first_error or str(exc)
    return _Placement(slots, n, count, offsets, tuple(refused), first_error)


def _no_slot(placed: _Placement) -> Problem | None:
    """``refused``: names the mode gives no slot (their gates would exit 78), with the likely
    cause when slot_count is less than the names."""
    if not placed.refused:
        return None
    n, count = placed.nodes, placed.count
    hint = ""
    if placed.slots == "index" and count is not None and count < n:
        hint = f" (slot_count = {count} is less than the {n} names)"
    return Problem(
        "refused",
        "no_slot",
        f"{len(placed.refused)} of {n} names get no slot with {placed.label}{hint}; the first: "
        f"{placed.first_error}",
    )


def _shared_slot(placed: _Placement, on_instant: Counter[float], most: int) -> Problem | None:
    """``refused``: names on one start instant, which start together whatever the window;
    names two of them, since their ids are what is not unique."""
    if most <= 1:
        return None
    crowded = max(on_instant, key=lambda o: on_instant[o])
    group = [name for name, o in placed.offsets.items() if o == crowded]
    shared = sum(c for c in on_instant.values() if c > 1)
    return Problem(
        "refused",
        "shared_slot",
        f"{shared} of {placed.nodes} names share a start instant with another name with "
        f"{placed.label} (up to {most} on one, e.g. {group[0]!r} and {group[1]!r}): their ids "
        "are not unique; set node_id per node, or use slot_mode = index or hash",
    )


def _is_over(placed: _Placement, busiest: int, limit: float) -> bool:
    """Whether the busiest minute is over ``limit``; never for a fleet with no slot at all
    (that is :func:`_no_slot`'s problem)."""
    return bool(placed.offsets and busiest > limit + 1e-9)


def _over_target(placed: _Placement, busiest: int, target: float, window: float) -> Problem | None:
    """The busiest minute against the mode's target (:func:`peak_target`)."""
    if not _is_over(placed, busiest, target):
        return None
    n = placed.nodes
    mean = n * 60.0 / window
    return _over(placed.slots, "over_target", busiest, mean, target, "the target", placed.count, n)


def _over_budget(
    placed: _Placement, budget: tuple[float, float] | None, busiest: int | None
) -> Problem | None:
    """The busiest minute of these names in the planned window, against the budget's rate:
    the plan's promise, held to the real names."""
    if budget is None or busiest is None or not _is_over(placed, busiest, budget[0]):
        return None
    rate, planned = budget
    what = f"the budget in the planned {format_duration(planned)} window"
    n = placed.nodes
    mean = n * 60.0 / planned
    return _over(placed.slots, "over_budget", busiest, mean, rate, what, placed.count, n)


def _repeated_names(repeats: int) -> Problem | None:
    """A ``warning``: a name listed twice is one node, counted once."""
    if not repeats:
        return None
    return Problem("warning", "repeated_names", f"{repeats} repeated names, each counted once")


def _cluster_size_off(size: int, n: int, window: float) -> Problem | None:
    """A ``warning`` when cluster_size is further from the number of names than
    :data:`CLUSTER_SIZE_TOLERANCE`: the gates size their window for cluster_size."""
    if abs(size - n) <= CLUSTER_SIZE_TOLERANCE * n:
        return None
    return Problem(
        "warning",
        "cluster_size",
        f"cluster_size = {size} but {n} names: the gates' window "
        f"({format_duration(window)}) is sized for {size} nodes; set cluster_size to "
        "the fleet's size",
    )


def used_mode(setting: str, *, ordinals: bool) -> SlotMode:
    """The mode a ``slot_mode`` setting gives the fleet's gates: ``auto`` is ``index`` where the
    configuration has ordinals (``slot_index``/``slot_count``), else ``hash``."""
    if setting == "index" or (setting == "auto" and ordinals):
        return "index"
    return next((m for m in SLOT_MODES if m == setting), "hash")


def _over(
    slots: SlotMode,
    kind: str,
    busiest: int,
    mean: float,
    limit: float,
    what: str,
    count: int | None,
    nodes: int,
) -> Problem:
    """A busiest minute over a limit: a warning for hashed slots (chance), else ``over``."""
    text = (
        f"busiest minute {busiest} starts ({busiest / mean:.2f} x N/W) with {slots} slots, "
        f"over {what} of {limit:.1f} ({limit / mean:.2f} x N/W)"
    )
    if slots == "hash":
        return Problem(
            "warning",
            kind,
            f"{text}: these names' hashes landed unevenly, as about one fleet in 20 does; exact "
            "slots (slot_mode = index) or a longer window remove it",
        )
    if slots == "index":
        fix = (
            f"slot_count = {count} for {nodes} names: set slot_count to the fleet's size"
            if count is not None and count != nodes
            else "the ordinals are not 0 to N-1 of N"
        )
        return Problem("over", kind, f"{text}: {fix}")
    return Problem(
        "over",
        kind,
        f"{text}: these addresses are sparse or strided, not a dense block; use slot_mode = "
        "index (slot_index and slot_count), or hash",
    )


def render_check(c: FleetCheck) -> str:
    """The text of ``plan --nodes-file``: the fleet's slots, its busiest minute, its problems."""
    mean = c.mean_starts_per_minute
    setting = "" if c.setting == c.slots else f" (slot_mode = {c.setting})"
    source = f" in {c.source}" if c.source else ""
    sized = (
        f"cluster_size {c.cluster_size}"
        if c.cluster_size_configured
        else f"for the {c.cluster_size} names; cluster_size is not set"
    )
    out = [
        f"fleet      {c.nodes} names{source}, agent {c.agent}, {c.slots} slots{setting}",
        f"  window   {format_duration(c.window)} ({c.window:g} s, {sized}): "
        f"N/W = {mean:.1f} starts/min",
    ]
    if c.placed:
        unplaced = "" if c.placed == c.nodes else f" ({c.nodes - c.placed} names without one)"
        out.append(
            f"  slots    {c.distinct_slots} distinct{unplaced}, at most {c.most_on_one_instant} "
            f"{'node' if c.most_on_one_instant == 1 else 'nodes'} on one instant"
        )
        verdict = "within" if c.within_target else "OVER"
        out.append(
            f"  busiest  minute {c.busiest_minute} starts, {c.busiest_minute / mean:.2f} x N/W; "
            f"target at most {c.target:.1f} ({c.target / mean:.2f} x N/W): {verdict}"
        )
        if c.max_start_rate is not None and c.planned_window is not None:
            pb = c.planned_busiest_minute or 0
            out.append(
                f"  budget   planned window {format_duration(c.planned_window)}: busiest minute "
                f"{pb}, budget {c.max_start_rate:g}: "
                f"{'within' if pb <= c.max_start_rate + 1e-9 else 'OVER'}"
            )
    else:
        out.append(f"  slots    none: no name gets a slot with {c.slots} slots")
    out.extend(f"  {p.severity}: {p.message}" for p in c.problems)
    return "\n".join(out) + "\n"
