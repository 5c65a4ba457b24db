"""How a simulation is shown: the table with its sparklines, and the plot (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from supervisor.fleet.results import PolicyOutcome, SimulationResult

_BARS: Final = "▁▂▃▄▅▆▇█"
#: The distribution's name is not the import name: ``agent-supervisor`` on PyPI is an
#: unrelated project (DESIGN.md, Names), so the hint names ours.
PLOT_HINT: Final = "--plot needs matplotlib: pip install 'agent-start-gate[plot]'"


class PlotUnavailableError(ImportError):
    """``--plot`` needs matplotlib, an optional extra."""


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


def _short(seconds: float) -> str:
    """``2m30s``, ``1h05m``, ``12.5s``: a duration in a table cell."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _recovery(result: SimulationResult, o: PolicyOutcome) -> str:
    """When every node was healthy; with a capacity, "not by" the horizon when it never was."""
    if result.scenario.capacity is None or o.recovered:
        return _hm(o.all_healthy_at) + (f", {o.never_healthy} never" if o.never_healthy else "")
    return f"not by {_hm(result.horizon)}: {o.never_healthy:,} nodes not healthy"


def _admission(result: SimulationResult) -> str:
    """J of the gate's policies, as the head line says it."""
    fl = result.fleet
    plain, probed = fl.admission_for(False), fl.admission_for(True)
    if plain == probed:
        return f"admission grid J = {_short(plain)}"
    return f"admission grid J = {_short(plain)} without a probe, {_short(probed)} with one"


def _head(result: SimulationResult) -> str:
    """The line that says what was simulated."""
    sc, fl = result.scenario, result.fleet
    restart = result.restart_minute
    cap = sc.capacity
    if sc.trials:
        what = (
            f"lone-crash: one node of a {sc.nodes}-node fleet crashes after a long stable run "
            f"on a healthy, idle control plane; {sc.nodes:,} trials, one per node name"
        )
    elif sc.kind == "power-loss":
        what = (
            f"power-loss: {sc.nodes} nodes lose power at 0 and boot within "
            f"{sc.boot_spread:g} s from {sc.outage:g} s (the last runs' ends unknown); the "
            f"control plane is up when they boot"
        )
    elif sc.outage:
        what = (
            f"{sc.kind}: {sc.nodes} nodes; control plane down {sc.outage:g} s, a start while "
            f"it is down fails after {sc.fail_after:g} s"
        )
    else:
        what = f"{sc.kind}: {sc.nodes} nodes; control plane up throughout"
    return (
        what + f"; window {_hm(fl.window)}, ideal {result.ideal_starts_per_minute:.1f} starts/min "
        f"(N/W); {_admission(result)}; probe max latency {fl.max_latency:g} s; slots {fl.slots}"
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


def _fleet_rows(result: SimulationResult) -> list[str]:
    """The column heads and one row per policy: starts, rates, recovery."""
    sc = result.scenario
    ideal = result.ideal_starts_per_minute
    restart = result.restart_minute
    cap = sc.capacity
    rows = [
        f"{'policy':<24}{'starts':>10}{'x N':>7}{'peak/min':>10}{'x ideal':>9}"
        f"{'after 1st min':>15}"
        + ("" if restart is None else f"{'from restart':>14}{'x ideal':>9}")
        + ("" if cap is None else f"{'after outage':>14}{'x N':>8}{'failed':>12}")
        + "  all healthy at"
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
    return rows


def _trial_rows(result: SimulationResult) -> list[str]:
    """``lone-crash``: the column heads and one row per policy: the wait for the start."""
    rows = [
        f"{'policy':<24}{'median wait':>13}{'p90 wait':>11}{'max wait':>11}"
        f"{'starts/trial':>14}{'J':>9}"
    ]
    for o in result.policies:
        w = o.waits
        waits = (
            f"{'-':>13}{'-':>11}{'-':>11}"
            if w is None
            else f"{_short(w.median):>13}{_short(w.p90):>11}{_short(w.max):>11}"
        )
        j = "-" if o.admission is None else _short(o.admission)
        rows.append(f"{o.name:<24}{waits}{o.total_starts / result.scenario.nodes:>14.2f}{j:>9}")
    return rows


def _probe_rows(result: SimulationResult) -> list[str]:
    """What asking the probe cost the control plane, for the policies that asked it."""
    asked = [o for o in result.policies if o.probes]
    if not asked:
        return []
    n = result.scenario.nodes
    rows = ["", "probe requests (each a small request the control plane answers):"]
    for o in asked:
        if result.scenario.trials:
            rows.append(f"  {o.name}: {o.probes:,} probe requests, {o.probes / n:.2f} a trial")
            continue
        j = "" if o.admission is None else f" (N/J = {n / o.admission * 60:,.0f}/min)"
        rows.append(
            f"  {o.name}: {o.probes:,} probe requests, {o.probes / n:.2f} per node, peak "
            f"{o.peak_probes_per_minute:,}/min{j}"
        )
    return rows


def render_table(result: SimulationResult, *, width: int = 60) -> str:
    """The default output: one row per policy, the probe's cost, then a sparkline per policy.

    With a capacity, three columns more: the starts made once the control plane was up (each
    a full resync it had to serve, per node) and how many of them failed on the capacity.
    ``lone-crash`` shows the wait for the start instead (median, p90 and max over the trials),
    and its sparklines are the distribution of that wait.
    """
    rows = [_head(result), ""]
    rows += _trial_rows(result) if result.scenario.trials else _fleet_rows(result)
    rows += _probe_rows(result)
    length = max((len(o.starts_per_minute) for o in result.policies), default=0)
    what = "starts per minute of wait" if result.scenario.trials else "starts per minute"
    rows += [
        "",
        f"{what}, 0 to {length} min ({length / width:.1f} min a column), "
        "each row scaled to its own peak:",
    ]
    for o in result.policies:
        rows.append(f"{o.name:<24}|{sparkline(o.starts_per_minute, width, length)}|")
    return "\n".join(rows) + "\n"


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
    fig = Figure(figsize=(11, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw_policies(ax, result)
    _draw_marks(ax, result)
    sc, fl = result.scenario, result.fleet
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(0, sc.nodes * 2)
    ax.set_xlim(left=0)
    ax.set_xlabel("minutes since t=0" if not sc.trials else "minutes of wait")
    ax.set_ylabel("agent starts per minute, fleet-wide (log scale)")
    down = f"outage {sc.outage / 60:g} min" if sc.outage else "control plane up"
    cap = "" if sc.capacity is None else f", capacity {sc.capacity:g}/min"
    ax.set_title(
        f"{sc.kind}: {sc.nodes:,} nodes, W = {fl.window / 60:g} min, J = "
        f"{fl.admission_for(True) / 60:g} min with a probe, {down}{cap}, start fails after "
        f"{sc.fail_after:g} s, slots {fl.slots}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path))


def _draw_policies(ax: Any, result: SimulationResult) -> None:
    """One step line per policy (ours thick and on top), and the probe's requests per minute."""
    # Docker and systemd coincide in an outage (every run outlasts Docker's 10 s reset):
    # distinct dashes keep both visible.
    styles = {"docker-always": (0, (6, 3)), "systemd": (0, (1, 2)), "kubelet": "-"}
    for o in result.policies:
        ours = o.name.startswith("agent-")
        line = ax.step(
            list(range(len(o.starts_per_minute) + 1)),
            [*o.starts_per_minute, 0],
            where="post",
            linewidth=2.4 if ours else 1.3,
            linestyle=styles.get(o.name, "-"),
            zorder=3 if ours else 2,
            label=f"{o.name}: {o.total_starts:,} starts, peak {o.peak_starts_per_minute:,}/min",
        )
        if o.probes:
            ax.step(
                list(range(len(o.probes_per_minute) + 1)),
                [*o.probes_per_minute, 0],
                where="post",
                linewidth=0.9,
                linestyle=(0, (2, 2)),
                color=line[0].get_color(),
                zorder=2,
                label=f"{o.name}: probe requests, peak {o.peak_probes_per_minute:,}/min",
            )


def _draw_marks(ax: Any, result: SimulationResult) -> None:
    """The start budget, the capacity, the outage and the restart."""
    sc = result.scenario
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
        what = "power off" if sc.kind == "power-loss" else "control plane down"
        ax.axvspan(0, sc.outage / 60, color="red", alpha=0.08, label=what)
    if result.restart_minute is not None:
        ax.axvline(
            sc.restart_at / 60, color="grey", linewidth=1, label="every supervisor restarted"
        )
