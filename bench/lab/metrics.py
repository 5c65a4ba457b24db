"""etcd's own ``/metrics``: Range requests started and handled (per gRPC code), bytes sent, and
the Range latency histogram (``--metrics extensive``), read every few seconds.

Counters grow from a *baseline*: zero for an etcd started at the moment the figures begin (the
outage: etcd comes back with fresh counters), or the read taken just before the event (a crash
of the agents on a live etcd). A counter that goes down was reset by a new etcd process (it died
of its memory cap and was started again) and counts from zero again.
"""

from __future__ import annotations

import http.client
import math
import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .base import BIN

_LINE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_COUNTERS: Final = ("started", "handled", "ok", "sent_bytes")

Buckets = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Sample:
    """One read of etcd's /metrics: Range requests (gRPC, the JSON gateway included)."""

    t: float
    started: float
    handled: float
    ok: float
    sent_bytes: float
    #: The Range handling-time histogram: (upper bound, cumulative count), +Inf last.
    buckets: Buckets


#: Counters of an etcd that has served nothing yet.
ZERO: Final = Sample(0.0, 0.0, 0.0, 0.0, 0.0, ())


def parse_metrics(text: str, t: float) -> Sample:
    """The Range counters, bytes sent and the Range latency histogram from /metrics text."""
    started = handled = ok = sent = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        name, raw, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "etcd_network_client_grpc_sent_bytes_total":
            sent = value
            continue
        labels = dict(_LABEL.findall(raw))
        if labels.get("grpc_method") != "Range":
            continue
        if name == "grpc_server_started_total":
            started += value
        elif name == "grpc_server_handled_total":
            handled += value
            if labels.get("grpc_code") == "OK":
                ok += value
        elif name == "grpc_server_handling_seconds_bucket":
            le = labels.get("le", "+Inf")
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value
    return Sample(t, started, handled, ok, sent, tuple(sorted(buckets.items())))


def scrape(url: str, t: float, timeout: float = 2.0) -> Sample | None:
    """One read of /metrics; None when etcd does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse_metrics(r.read().decode(errors="replace"), t)
    except (OSError, ValueError, http.client.HTTPException):
        return None


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets; None when there is no count.

    A rank in the +Inf bucket answers the highest finite bound (the truth is above it).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lo_bound
            share = (rank - lo_count) / (count - lo_count) if count > lo_count else 1.0
            return lo_bound + (bound - lo_bound) * share
        lo_bound, lo_count = bound, count
    return lo_bound


def bucket_delta(
    later: Sequence[tuple[float, float]], earlier: Sequence[tuple[float, float]]
) -> Buckets:
    """The histogram of what happened between two reads (a reset: ``later`` alone)."""
    before = dict(earlier)
    if any(count < before.get(bound, 0.0) for bound, count in later):
        return tuple(later)
    return tuple((bound, count - before.get(bound, 0.0)) for bound, count in later)


def counter_totals(samples: Sequence[Sample], baseline: Sample = ZERO) -> Sample | None:
    """The counters' increase over ``samples`` since ``baseline``, across etcd restarts (a
    counter that went down counts from zero again). None without a read."""
    if not samples:
        return None
    total = dict.fromkeys(_COUNTERS, 0.0)
    prev = {name: float(getattr(baseline, name)) for name in _COUNTERS}
    for s in samples:
        for name in _COUNTERS:
            value = float(getattr(s, name))
            total[name] += value - prev[name] if value >= prev[name] else value
            prev[name] = value
    return Sample(samples[-1].t, buckets=(), **total)


def histogram_total(samples: Sequence[Sample], baseline: Sample = ZERO) -> Buckets:
    """The Range latency histogram over ``samples`` since ``baseline``, across restarts."""
    total: dict[float, float] = {}
    prev = baseline.buckets
    for s in samples:
        for bound, count in bucket_delta(s.buckets, prev):
            total[bound] = total.get(bound, 0.0) + count
        prev = s.buckets
    return tuple(sorted(total.items()))


def started_per_bin(
    samples: Sequence[Sample], since: float, t0: float, bins: int, baseline: Sample = ZERO
) -> list[float]:
    """Range requests etcd started (its own counter) per :data:`BIN` from ``t0``, each read's
    increase spread evenly over the time since the previous read (the first from ``since``)."""
    per_bin = [0.0] * bins
    prev_t, prev_count = since, baseline.started
    for s in samples:
        span = max(s.t - prev_t, 1e-9)
        grown = s.started - prev_count if s.started >= prev_count else s.started
        rate = grown / span
        a = prev_t
        while a < s.t:
            k = math.floor((a - t0) / BIN)
            b = min(s.t, t0 + (k + 1) * BIN)
            if 0 <= k < bins:
                per_bin[k] += rate * (b - a)
            a = b
        prev_t, prev_count = s.t, s.started
    return per_bin
