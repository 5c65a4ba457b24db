"""The figures of one fleet, from its agents' event lines, its gates' probe requests and etcd's
own counters.

Times are seconds from the event (t0: etcd stopped, or every agent killed). "After recovery"
is from the moment etcd was started again (the outage), or from the crash itself (etcd stayed
up). Full resyncs served by etcd are its Range requests handled after recovery (served, or
abandoned by their client) less the probe's own small ranges, which the gates' logs count.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from .base import BIN, rounded
from .fleet import Fleet
from .metrics import (
    ZERO,
    Sample,
    bucket_delta,
    counter_totals,
    histogram_total,
    quantile,
    started_per_bin,
)

#: The probe's answers that etcd gave (a 2xx): the requests it handled.
ANSWERED: Final = ("ready", "loaded")


@dataclass(frozen=True)
class PolicyResult:
    """What one fleet made etcd serve after the event, and when it was healthy again."""

    scenario: str
    policy: str
    agents: int
    setup_seconds: float
    setup_failures: int
    #: From the fleet's last set-up start to the event: how long it had been running.
    ran_before_event: float
    #: Agents killed at once (crash-live); 0 for the outage.
    killed: int
    etcd_restarted_at: float
    etcd_healthy_at: float
    bound: float
    observed_until: float
    #: Agents' side, after recovery: processes started, full resyncs sent, served, failed.
    starts: int
    requests: int
    synced: int
    failed: int
    peak_requests_per_10s: int
    client_p99: float | None
    #: etcd's side (/metrics), after recovery.
    etcd_started: float | None
    etcd_handled: float | None
    etcd_ok: float | None
    etcd_sent_bytes: float | None
    etcd_peak_per_10s: float | None
    etcd_p99: float | None
    #: CPU seconds etcd used from recovery to the end of the run (None when it died).
    etcd_cpu_seconds: float | None
    #: The gates' probe requests after recovery, by answer; and since the event (an outage's
    #: "down" answers included).
    probe_requests: int
    probe_answers: dict[str, int]
    probe_requests_since_event: int
    all_healthy_at: float | None
    recovered: bool
    gate_errors: int
    timeline: dict[str, list[float | None]] = field(default_factory=dict)
    #: How often etcd died (out of its memory) after the event and was started again, and when.
    etcd_deaths: int = 0
    etcd_died_at: list[float] = field(default_factory=list)
    #: The most memory etcd held during the run (its VmHWM, MiB).
    etcd_peak_rss_mib: float | None = None
    #: Cores of the machine busy on average during the watch (the lab's and everyone else's).
    box_busy_cores: float | None = None
    #: (seconds from the event, agents healthy from then on) at every change, from the event
    #: (its first point: how many were healthy then) to the end of the watch.
    health: list[tuple[float, int]] = field(default_factory=list)

    @property
    def requests_per_agent(self) -> float:
        """Full resyncs the agents sent after recovery, per agent."""
        return self.requests / self.agents

    @property
    def probe_answered(self) -> int:
        """The probe requests etcd answered ("ready" or "loaded": a 2xx), after recovery; a
        "down" was refused while etcd was not listening yet (or timed out)."""
        return sum(self.probe_answers.get(a, 0) for a in ANSWERED)

    @property
    def etcd_full(self) -> float | None:
        """Full resyncs etcd handled after recovery: its Range requests less the probe's."""
        if self.etcd_handled is None:
            return None
        return max(self.etcd_handled - self.probe_answered, 0.0)

    @property
    def full_per_agent(self) -> float | None:
        """:attr:`etcd_full` per agent: the figure of the issue's bound (1.2 under the gate)."""
        full = self.etcd_full
        return None if full is None else full / self.agents


def health_changes(
    events: Sequence[tuple[float, int, str, str]], n: int
) -> list[tuple[float, int]]:
    """(time, agents healthy from then on) at every change, replaying the event lines.

    Healthy: the agent's current process has synced and its watch is up (``lost`` until
    ``watching`` again, or until the process exits).
    """
    synced = [False] * n
    healthy = [False] * n
    count = 0
    out: list[tuple[float, int]] = []
    for t, i, kind, _ in sorted(events):
        if kind == "synced":
            synced[i] = True
            new = True
        elif kind == "watching":
            new = synced[i]
        elif kind == "lost":
            new = False
        elif kind == "exit":
            synced[i] = new = False
        else:
            continue
        if new != healthy[i]:
            healthy[i] = new
            count += 1 if new else -1
            out.append((t, count))
    return out


def binned(times: Sequence[float], t0: float, bins: int) -> list[int]:
    """How many of ``times`` fall into each :data:`BIN` from ``t0``."""
    counts = [0] * bins
    for t in times:
        k = int((t - t0) // BIN)
        if 0 <= k < bins:
            counts[k] += 1
    return counts


def summarize(
    fleet: Fleet,
    *,
    setup_seconds: float,
    setup_failures: int,
    ran_before_event: float,
    killed: int,
    t0: float,
    up_began: float,
    up_at: float,
    end: float,
    etcd_cpu: float | None,
    baseline: Sample | None,
    bound: float,
) -> PolicyResult:
    """The figures of one fleet after its event (see the module's docstring).

    ``baseline``: etcd's counters at ``up_began`` (None: a fresh etcd, whose counters begin at
    zero).
    """
    n = fleet.setup.agents
    base = ZERO if baseline is None else baseline
    bins = math.ceil((end - t0) / BIN) + 1
    after = [e for e in fleet.events if up_began <= e[0] <= end]
    requests = binned([e[0] for e in after if e[2] == "request"], t0, bins)
    first_bin = int((up_began - t0) // BIN)
    # Client-side resync times: from a request to its agent's synced, failed or exit line.
    sent: dict[int, float] = {}
    took: list[float] = []
    for t, i, kind, _ in fleet.events:
        if kind == "request":
            sent[i] = t
        elif kind in ("synced", "failed", "exit") and i in sent:
            began = sent.pop(i)
            if began >= up_began:
                took.append(t - began)
    took.sort()
    client_p99 = took[max(0, math.ceil(0.99 * len(took)) - 1)] if took else None
    post = [s for s in fleet.samples if up_began <= s.t <= end]
    totals = counter_totals(post, base)
    hist = histogram_total(post, base)
    etcd_bins = started_per_bin(post, up_began if baseline is None else base.t, t0, bins, base)
    # The timeline for the plots, per bin from the event.
    changes = health_changes(fleet.events, n)
    healthy: list[float | None] = []
    j, count = 0, 0
    for k in range(bins):
        edge = t0 + (k + 1) * BIN
        # The teardown's exits come after ``end``: not part of the run.
        while j < len(changes) and changes[j][0] < min(edge, end):
            count = changes[j][1]
            j += 1
        healthy.append(float(count) if edge <= end + BIN else None)
    p99: list[float | None] = [None] * bins
    for before, later in itertools.pairwise(fleet.samples):
        k = int((later.t - t0) // BIN)
        if later.t >= t0 and 0 <= k < bins:
            q = quantile(0.99, bucket_delta(later.buckets, before.buckets))
            if q is not None:
                p99[k] = max(q, p99[k] or 0.0)
    until_t0 = [c for t, c in changes if t < t0]
    health = [(0.0, until_t0[-1] if until_t0 else 0)]
    health += [(round(t - t0, 3), c) for t, c in changes if t0 <= t <= end]
    first_all = next((t for t, c in changes if c == n and t >= up_began), None)
    all_healthy_at = None if first_all is None else first_all - t0
    probes_after = [a for t, a in fleet.probes if up_began <= t <= end]
    in_run = [e for e in fleet.events if t0 <= e[0] <= end]
    return PolicyResult(
        scenario=fleet.scenario,
        policy=fleet.policy,
        agents=n,
        setup_seconds=round(setup_seconds, 1),
        setup_failures=setup_failures,
        ran_before_event=round(ran_before_event, 1),
        killed=killed,
        etcd_restarted_at=round(up_began - t0, 2),
        etcd_healthy_at=round(up_at - t0, 2),
        bound=bound,
        observed_until=round(end - t0, 1),
        starts=sum(1 for e in after if e[2] == "start"),
        requests=sum(requests),
        synced=sum(1 for e in after if e[2] == "synced"),
        failed=sum(1 for e in after if e[2] == "failed"),
        peak_requests_per_10s=max(requests[first_bin:], default=0),
        client_p99=rounded(client_p99),
        etcd_started=None if totals is None else totals.started,
        etcd_handled=None if totals is None else totals.handled,
        etcd_ok=None if totals is None else totals.ok,
        etcd_sent_bytes=None if totals is None else totals.sent_bytes,
        etcd_peak_per_10s=rounded(max(etcd_bins[first_bin:], default=None), 1)
        if totals is not None
        else None,
        etcd_p99=rounded(quantile(0.99, hist)),
        etcd_cpu_seconds=rounded(etcd_cpu, 1),
        probe_requests=len(probes_after),
        probe_answers=dict(sorted(Counter(probes_after).items())),
        probe_requests_since_event=sum(1 for t, _ in fleet.probes if t0 <= t <= end),
        all_healthy_at=rounded(all_healthy_at, 1),
        recovered=all_healthy_at is not None and all_healthy_at <= bound,
        gate_errors=fleet.gate_errors,
        health=health,
        timeline={
            "t": [k * BIN for k in range(bins)],
            "starts": [
                float(c) for c in binned([e[0] for e in in_run if e[2] == "start"], t0, bins)
            ],
            "requests": [float(c) for c in requests],
            "synced": [
                float(c) for c in binned([e[0] for e in after if e[2] == "synced"], t0, bins)
            ],
            "failed": [
                float(c) for c in binned([e[0] for e in after if e[2] == "failed"], t0, bins)
            ],
            "etcd_range": [round(x, 1) for x in etcd_bins],
            "probes": [float(c) for c in binned([t for t, _ in fleet.probes], t0, bins)],
            "probes_answered": [
                float(c) for c in binned([t for t, a in fleet.probes if a in ANSWERED], t0, bins)
            ],
            "healthy": healthy,
            "etcd_p99": p99,
        },
    )
