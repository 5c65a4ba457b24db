"""What the lab prints: a table per scenario, the crash-live target, ``simulate`` beside it
(same N, D, C, W and timeouts), and the whole run as JSON."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisor.core.policy import WindowConfig, admission_seconds

from .base import PROBED, SIMULATE_POLICY, LabError, child_env, secs
from .etcd import ETCD_TOP_BUCKET
from .fleet import Setup
from .scenarios import bound_for
from .summary import PolicyResult

#: The bounds of issue 15 for the crash on a live etcd, under the gate with a probe.
TARGET_FULL_PER_AGENT: Final = 1.2
TARGET_FACTOR: Final = 1.5

HEADLINES: Final = {
    "outage": "outage: etcd stopped for D = {outage:g} s, then started again on the same data; "
    "times from its stop, figures after its return",
    "crash-live": "crash-live: every agent killed (SIGKILL) in the same instant, etcd up "
    "throughout; times and figures from the crash",
}


def admission(window: float, *, probe: bool) -> float:
    """J, as the gate computes it for the lab's window (``window.admission`` is not set)."""
    config = WindowConfig(base=window, per_node=0.0, min=1.0)
    return admission_seconds(config, window, probe=probe)


def _s(x: float | None, unit: str = " s", digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def _p99(x: float | None) -> str:
    """etcd's histogram ends at 10 s: a p99 there is beyond it."""
    if x is None:
        return "-"
    return f">={x:.0f} s" if x >= ETCD_TOP_BUCKET else f"{x:.2f} s"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _per(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def healthy_text(r: PolicyResult) -> str:
    """When every agent was healthy again, or until when it was not."""
    if r.all_healthy_at is None:
        return f"not by {r.observed_until:.0f} s (the end of the watch)"
    late = "" if r.recovered else f" (after the {r.bound:.0f} s bound)"
    return f"{r.all_healthy_at:.0f} s{late}"


def render_table(results: Sequence[PolicyResult]) -> str:
    """One row per policy: what etcd served after recovery, and when the fleet was healthy.

    ``down``: how long etcd was down, until it answered again (D and its start; "-" in
    crash-live); ``starts``: agent processes started after recovery, ``failed``: those whose
    resync failed (timed out, refused, cut); ``resyncs``: full resyncs the agents sent;
    ``etcd Range``: Range requests etcd handled (served, or abandoned by their client), ``probe``:
    the gates' probe requests among them (small ranges), ``full/agent``: the rest per agent,
    the full resyncs etcd served (the issue's figure); ``peak/10s``: the busiest 10 s of
    resyncs sent; ``etcd p99``: of its gRPC Range handling time (its histogram ends at 10 s);
    ``CPU s``: etcd's CPU time after recovery (none when it died on the way); ``MiB``: etcd's
    peak memory; ``died``: how often it died of its memory cap and was started again;
    ``box``: the machine's cores busy on average during the watch, the lab's and everyone
    else's (2.00: saturated, and what the box's other users take is not etcd's).
    """
    head = (
        f"{'policy':<24}{'down':>6}{'starts':>8}{'failed':>8}{'resyncs':>9}{'etcd Range':>12}"
        f"{'probe':>7}{'full/agent':>12}{'peak/10s':>10}{'etcd p99':>10}{'client p99':>12}"
        f"{'MiB sent':>10}{'CPU s':>7}{'MiB':>7}{'died':>5}{'box':>6}  all healthy at"
    )
    rows = [head]
    for r in results:
        down = f"{r.etcd_healthy_at:>5.0f}s" if r.scenario == "outage" else f"{'-':>6}"
        rows.append(
            f"{r.policy:<24}{down}{r.starts:>8,}{r.failed:>8,}{r.requests:>9,}"
            f"{_num(r.etcd_handled):>12}{r.probe_requests:>7,}{_per(r.full_per_agent):>12}"
            f"{r.peak_requests_per_10s:>10}{_p99(r.etcd_p99):>10}"
            f"{_s(r.client_p99, ' s', 2):>12}"
            f"{_mib(r.etcd_sent_bytes):>10}{_num(r.etcd_cpu_seconds):>7}"
            f"{_num(r.etcd_peak_rss_mib):>7}{r.etcd_deaths:>5}{_per(r.box_busy_cores):>6}"
            f"  {healthy_text(r)}"
        )
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class Target:
    """Issue 15's bound for the crash on a live etcd, and whether the probed gate met it."""

    n_over_c: float
    admission: float
    seconds: float
    full_per_agent: float | None
    all_healthy_at: float | None

    @property
    def met(self) -> bool:
        """At most 1.2 full resyncs per agent, and every agent healthy within the bound."""
        return (
            self.full_per_agent is not None
            and self.full_per_agent <= TARGET_FULL_PER_AGENT
            and self.all_healthy_at is not None
            and self.all_healthy_at <= self.seconds
        )


def crash_target(
    results: Sequence[PolicyResult], setup: Setup, capacity: float | None
) -> Target | None:
    """The target of the probed gate's crash-live row; None without it or without C."""
    row = next((r for r in results if r.scenario == "crash-live" and r.policy in PROBED), None)
    if row is None or capacity is None or capacity <= 0:
        return None
    n_over_c = setup.agents / capacity * 60.0
    j = admission(setup.window, probe=True)
    return Target(
        n_over_c=n_over_c,
        admission=j,
        seconds=TARGET_FACTOR * max(n_over_c, j),
        full_per_agent=row.full_per_agent,
        all_healthy_at=row.all_healthy_at,
    )


def render_target(target: Target) -> str:
    """One line: the bound, the figures, met or not."""
    full = _per(target.full_per_agent)
    healthy = _s(target.all_healthy_at, " s", 0)
    return (
        f"# target (issue 15): agent-supervisor+probe at most {TARGET_FULL_PER_AGENT:g} full "
        f"resyncs per agent and all healthy within {TARGET_FACTOR:g} x max(N/C, J) = "
        f"{TARGET_FACTOR:g} x max({target.n_over_c:.0f} s, {target.admission:.0f} s) = "
        f"{target.seconds:.0f} s: {full} per agent, healthy at {healthy}: "
        f"{'met' if target.met else 'NOT met'}\n"
    )


# --- simulate beside the lab -----------------------------------------------------------------


def simulate_args(setup: Setup, scenario: str, capacity: float) -> list[str]:
    """``agent-supervisor simulate``'s arguments for the lab's N, D, C, W and timeouts."""
    args = ["simulate", "--nodes", str(setup.agents), "--scenario", scenario]
    if scenario == "outage":
        args += ["--outage", secs(setup.outage)]
    args += ["--fail-after", secs(setup.timeout), "--capacity", f"{capacity:.0f}"]
    args += ["--horizon", secs(bound_for(scenario, setup))]
    return [
        *args,
        "--slots",
        setup.slots,
        "--set",
        f"window.base={secs(setup.window)}",
        "--set",
        "window.per_node=0s",
        "--set",
        "window.min=1s",
        "--set",
        f"stable_after={secs(setup.stable_after)}",
    ]


def simulate_alongside(
    cli: Sequence[str], setup: Setup, scenario: str, capacity: float
) -> tuple[str, dict[str, Any]]:
    """``simulate`` for one scenario: the command as a user would type it, and its JSON."""
    args = simulate_args(setup, scenario, capacity)
    out = subprocess.run(
        [*cli, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=child_env(),
    )
    if out.returncode != 0:
        raise LabError(f"simulate: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return shlex.join(["agent-supervisor", *args]), json.loads(out.stdout)


def render_comparison(results: Sequence[PolicyResult], sim: dict[str, Any]) -> str:
    """The lab beside ``simulate``: full resyncs per agent (the agents' requests; simulate's
    starts), failed starts, probe requests, and when all were healthy."""
    rows = [
        f"{'policy (simulate)':<50}{'resyncs/agent lab':>18}{'sim':>8}{'failed lab':>12}"
        f"{'sim':>8}{'probe lab':>11}{'sim':>8}{'all healthy lab':>17}{'sim':>10}"
    ]
    for r in results:
        name = SIMULATE_POLICY[r.policy]
        o = sim["policies"].get(name)
        if o is None:
            continue
        sim_at = o.get("all_healthy_at_seconds")
        sim_healthy = f"{sim_at:.0f} s" if o.get("recovered") and sim_at is not None else "not"
        lab_healthy = f"{r.all_healthy_at:.0f} s" if r.recovered and r.all_healthy_at else "not"
        rows.append(
            f"{r.policy + ' (' + name + ')':<50}{r.requests_per_agent:>18.2f}"
            f"{o['starts_after_outage_per_node']:>8.2f}{r.failed:>12,}{o['failed_starts']:>8,}"
            f"{r.probe_requests:>11,}{o.get('probe_requests', 0):>8,}"
            f"{lab_healthy:>17}{sim_healthy:>10}"
        )
    return "\n".join(rows) + "\n"


def finite(value: object) -> object:
    """``value`` with every infinite or NaN float as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
