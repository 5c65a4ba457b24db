"""The lab's pictures (matplotlib, Agg; the ``plot`` extra).

- ``bench/lab-<N>.png``, the outage: full resyncs sent per 10 s, healthy agents and etcd's
  Range p99 per 10 s, per policy, from etcd's stop;
- ``bench/lab-crash-live-<N>.png``, the crash on a live etcd: agent starts and full resyncs
  served per minute (10 s bins), and healthy agents, per policy, from the crash; the lines N/C
  (all agents served at etcd's capacity) and 1.5 x max(N/C, J) (the probed gate's bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import BIN, GATED
from .summary import PolicyResult


def _figure(rows: int) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found, unused-ignore]
        FigureCanvasAgg,
    )
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    fig = Figure(figsize=(11, 3.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 1, sharex=True)


def _style(r: PolicyResult) -> dict[str, Any]:
    ours = r.policy in GATED
    return {"linewidth": 2.2 if ours else 1.3, "zorder": 3 if ours else 2}


def _values(tl: dict[str, list[float | None]], key: str) -> list[float]:
    return [float(v or 0.0) for v in tl.get(key, [])]


def _gaps(tl: dict[str, list[float | None]], key: str) -> list[float]:
    # None (no read, or after the run) is a gap in the line, not a zero.
    return [math.nan if v is None else float(v) for v in tl.get(key, [])]


def _health(ax: Any, r: PolicyResult, style: dict[str, Any]) -> Any:
    """Agents healthy, as a step at every change, from the event to the end of the watch."""
    points = r.health or [(0.0, 0)]
    xs = [t for t, _ in points] + [r.observed_until]
    ys = [float(c) for _, c in points] + [float(points[-1][1])]
    (line,) = ax.step(xs, ys, where="post", **style)
    return line


def _finish(fig: Any, axes: Any, title: str, footer: str, path: Path) -> None:
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(title, fontsize="medium")
    fig.text(0.01, 0.005, footer, fontsize="x-small", family="monospace")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(str(path))


def write_outage_plot(
    results: Sequence[PolicyResult], path: Path, title: str, footer: str, outage: float
) -> None:
    """Requests, healthy agents and etcd's Range p99 per 10 s, per policy."""
    fig, axes = _figure(3)
    for r in results:
        tl = r.timeline
        xs = [float(t or 0.0) for t in tl["t"]]
        style = _style(r)
        reqs = _values(tl, "requests")
        axes[0].step([*xs, xs[-1] + BIN], [*reqs, 0.0], where="post", label=r.policy, **style)
        line = _health(axes[1], r, style)
        axes[2].plot([x + BIN / 2 for x in xs], _gaps(tl, "etcd_p99"), marker=".", **style)
        for t in r.etcd_died_at:
            for ax in axes:
                ax.axvline(t, color=line.get_color(), linestyle=":", linewidth=1.0, alpha=0.8)
    for ax in axes:
        ax.axvspan(0, outage, color="red", alpha=0.08)
    axes[0].set_yscale("symlog", linthresh=10)
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("full resyncs sent per 10 s")
    axes[0].legend(loc="upper right", fontsize="small")
    axes[1].set_ylabel("agents healthy (synced, watching)")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("etcd Range p99 per 10 s (s)")
    axes[2].set_xlabel(
        "seconds since etcd was stopped (shaded: down for D; dotted: etcd died of its memory cap)"
    )
    _finish(fig, axes, title, footer, path)


def write_crash_plot(
    results: Sequence[PolicyResult],
    path: Path,
    title: str,
    footer: str,
    n_over_c: float | None,
    target: float | None,
) -> None:
    """Starts and full resyncs served per minute, and healthy agents, per policy."""
    fig, axes = _figure(3)
    per_minute = 60.0 / BIN
    for r in results:
        tl = r.timeline
        xs = [float(t or 0.0) for t in tl["t"]]
        style = _style(r)
        starts = [v * per_minute for v in _values(tl, "starts")]
        # Full resyncs etcd handled: its Range requests less the probe's, per bin.
        probes = _values(tl, "probes")
        answered = _values(tl, "probes_answered")
        rng = _values(tl, "etcd_range")
        served = [
            max(a - (answered[k] if k < len(answered) else 0.0), 0.0) * per_minute
            for k, a in enumerate(rng)
        ]
        (line,) = axes[0].step(
            [*xs, xs[-1] + BIN], [*starts, 0.0], where="post", label=r.policy, **style
        )
        axes[1].step([*xs, xs[-1] + BIN], [*served, 0.0], where="post", **style)
        if r.policy in GATED and any(probes):
            axes[1].step(
                [*xs, xs[-1] + BIN],
                [*(p * per_minute for p in probes), 0.0],
                where="post",
                color=line.get_color(),
                linestyle=":",
                linewidth=1.0,
                label=f"{r.policy}: probe requests",
            )
        _health(axes[2], r, style)
        for t in r.etcd_died_at:
            for ax in axes:
                ax.axvline(t, color=line.get_color(), linestyle=":", linewidth=1.0, alpha=0.8)
    for ax in axes:
        if n_over_c is not None:
            ax.axvline(n_over_c, color="grey", linestyle="--", linewidth=1.0)
        if target is not None:
            ax.axvline(target, color="black", linestyle="--", linewidth=1.0)
    axes[0].set_yscale("symlog", linthresh=100)
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("agent starts per minute (10 s bins)")
    axes[0].legend(loc="upper right", fontsize="small")
    axes[1].set_yscale("symlog", linthresh=100)
    axes[1].set_ylim(bottom=0)
    axes[1].set_ylabel("full resyncs etcd handled per minute")
    if any(ln.get_label().endswith("probe requests") for ln in axes[1].get_lines()):
        axes[1].legend(loc="upper right", fontsize="small")
    axes[2].set_ylabel("agents healthy (synced, watching)")
    axes[2].set_xlabel(
        "seconds since every agent was killed (grey: N/C; black: 1.5 x max(N/C, J), the "
        "probed gate's bound; dotted: etcd died of its memory cap)"
    )
    _finish(fig, axes, title, footer, path)
