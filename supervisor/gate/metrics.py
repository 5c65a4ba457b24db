"""Prometheus metrics for the node_exporter textfile collector.

Every gate process lives for a fraction of a second, so counters cannot live in memory: the
metrics file itself is the store. Under a lock in the state directory we parse the previous file
with prometheus_client's own parser, add this decision, and write the whole file back with
``write_to_textfile`` (temp file beside it, rename), so a scrape never sees half a file. Series of
other agents in the same file are kept. A lost file only resets counters, which Prometheus'
``rate()`` handles.

Writing metrics must never change a decision: every failure is logged and swallowed by the
caller (:func:`update_metrics` returns False).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor.base.catalog import EventId
from supervisor.base.errors import StateError, one_line
from supervisor.base.files import held_lock
from supervisor.base.log import get_logger

PREFIX: Final = "agent_supervisor_"

#: name -> (type, help). Gauges are replaced per agent on each update; counters accumulate.
FAMILIES: Final[dict[str, tuple[str, str]]] = {
    "starts": (
        "counter",
        "Gate decisions by agent and outcome (allowed/refused/forced/override/running).",
    ),
    "backoff_level": ("gauge", "Consecutive runs that did not become stable."),
    "next_allowed_timestamp_seconds": ("gauge", "When the next start is allowed (0: now)."),
    "window_seconds": ("gauge", "The jitter window W for this cluster size."),
    "hold_active": ("gauge", "1 while an operator hold is in force."),
    "override_active": ("gauge", "1 while an operator override is in force."),
    "certificate_expiry_seconds": ("gauge", "Seconds until the agent's certificate expires."),
    "last_exit_code": ("gauge", "Exit code of the agent's last finished run."),
    "probe_healthy": ("gauge", "1 if the last control-plane probe said ready, 0 if not."),
    "probe_broken": (
        "gauge",
        "1 if a probe URL cannot succeed (broken: wrong host, CA, credentials, path); the "
        "gate then decides as if it were not configured.",
    ),
    "probe_latency_seconds": ("gauge", "How long the deciding probe request took."),
    "probe_answers": ("counter", "Probe answers by agent and answer (ready/loaded/down/broken)."),
    "agent_running": (
        "gauge",
        "1 while Docker says the agent's container runs (or its approved start is on its way).",
    ),
    "last_decision_timestamp_seconds": ("gauge", "When the gate last decided."),
    "history_lost": (
        "gauge",
        "1 while the agent's history is unknown (a bad state file was moved aside).",
    ),
}


#: The label that tells a counter's series apart (besides the agent).
COUNTER_LABELS: Final[dict[str, str]] = {"starts": "decision", "probe_answers": "answer"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one update says about one agent: gauges to set and counters to increment."""

    agent: str
    gauges: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[tuple[str, str], float] = field(default_factory=dict)


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _read(path: Path) -> Series:
    """Parse the previous file into {(family, labels): value}; a bad file counts as empty."""
    from prometheus_client.parser import text_string_to_metric_families

    series: Series = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return series
    try:
        for fam in text_string_to_metric_families(text):
            short = fam.name.removeprefix(PREFIX)
            if short not in FAMILIES:
                continue
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                series[(short, tuple(sorted(s.labels.items())))] = float(s.value)
    except (ValueError, TypeError, KeyError):
        get_logger().warning(EventId.METRICS_UNPARSABLE, path=str(path))
        return {}
    return series


def _merge(series: Series, snap: Snapshot) -> Series:
    out = {
        k: v
        for k, v in series.items()
        if FAMILIES[k[0]][0] == "counter" or dict(k[1]).get("agent") != snap.agent
    }
    for name, value in snap.gauges.items():
        out[(name, (("agent", snap.agent),))] = float(value)
    for (name, outcome), inc in snap.counters.items():
        label = COUNTER_LABELS[name]
        key = (name, tuple(sorted({"agent": snap.agent, label: outcome}.items())))
        out[key] = out.get(key, 0.0) + inc
    return out


class _Collector:
    def __init__(self, series: Series) -> None:
        self.series = series

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for short, (kind, doc) in FAMILIES.items():
            rows = [(dict(lbl), v) for (n, lbl), v in sorted(self.series.items()) if n == short]
            if not rows:
                continue
            names = sorted({k for labels, _ in rows for k in labels})
            fam: Any
            if kind == "counter":
                fam = CounterMetricFamily(PREFIX + short, doc, labels=names)
            else:
                fam = GaugeMetricFamily(PREFIX + short, doc, labels=names)
            for labels, value in rows:
                fam.add_metric([labels.get(n, "") for n in names], value)
            yield fam


def update_metrics(path: str | Path, lock_dir: Path, snap: Snapshot) -> bool:
    """Merge ``snap`` into the textfile at ``path``; False (and a log line) if that failed."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    target = Path(path)
    lock = lock_dir / "metrics.lock"
    try:
        with held_lock(
            lock,
            timeout=10,
            mode=0o600,
            busy=f"cannot lock {lock}: held by another process for 10s",
            failed=f"cannot lock {lock}",
        ):
            series = _merge(_read(target), snap)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(series))
            write_to_textfile(str(target), registry)
            with contextlib.suppress(OSError):
                os.chmod(target, 0o644)
    except (OSError, StateError) as exc:
        get_logger().warning(EventId.METRICS_WRITE_FAILED, path=str(target), why=one_line(exc))
        return False
    return True
