"""What etcd serves (C), and what the probe's small range costs while it serves (``max_latency``).

C is measured as before: full resyncs back to back by 1, 2, 4 (and 8) clients, threads of the
lab running the agent's own code, each level for a few seconds; C is the best rate at which no
resync exceeded the agents' timeout, and the measure stops at the first level where one did.

Beside each level (and with nothing in flight: level 0) a node's process asks the gate's probe
(:mod:`sampler`: the gate's own code, a limit-1, keys-only range POSTed to etcd's gateway, at
the gates' niceness) a few times a second. Measured here (2 shared cores, etcd 3.4, 20,000
keys of 1 KiB): 6 ms with nothing in flight, 13 ms with one resync, 50 ms with two, 100 to
190 ms with four, 230 to 410 ms with eight; past that it grows no more (p50 about 400 ms, p90
1 s with 12 or 16 in flight: etcd's two cores are saturated, and a small request waits its
turn among the resyncs' goroutines, not behind them). gRPC latency is no queue length, so the
gate's default of 1 s (chosen on ``simulate``'s FIFO queue) would say "ready" to a fleet of 200
resyncing at once, and admit it whole.

``max_latency`` is therefore chosen from this run's own figures, and from the fleet's asking
rate:

- ``k*``: the most resyncs in flight at which every resync still ended within half the agents'
  timeout, and at most twice the cores (4 here when the box is quiet, 2 when others load it):
  past 2 a core etcd is saturated, serves no more (measured: 287/min with 4, 320 with 8; 262
  and 226; 141 and 186) and the probe's latency levels off, so it cannot tell 8 in flight from
  16, and a threshold there would admit a fleet whole;
- ``q``: the share of the fleet's asks that etcd can serve, ``(C/60) / (N/2J)``: a gate waiting
  on the admission grid asks once per J, so a fleet asks (waiting)/J times a second, N/J at the
  crash and none at the end, N/2J on average (8.3 a second for 200 agents, J = 12 s); etcd
  completes C/60 resyncs a second (about 3 to 4); clamped to 5 % .. 50 %;
- ``max_latency`` = the probe's ``q``-quantile of latency at ``k*`` (about p40 at 200 agents),
  and at least 1.5 x its p90 with nothing in flight (an idle etcd must be "ready").

Why: the latency of one small request is noisy (at 4 in flight, 4 ms to 210 ms: it is fast
when it falls between two resyncs), and a fleet asking several times a second admits on every
lucky answer. With ``q`` at ``k*``, the waiting fleet finds etcd "ready" about as often as it
completes a resync while ``k*`` are in flight, less often beyond: it settles near ``k*``, where
etcd's throughput is at C and a resync ends within half the timeout, the other half being the
margin for the first burst (the agents admitted in the half second before their load shows)
and for lucky answers. Measured at 200 agents: ``q`` against all N waiting (p19, 18 ms) kept 2
in flight and took 125 s where N/C was 65 s; the median (p50, 97 ms) let 10 and more in flight
at the crash, and starts failed.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from . import agent
from .base import PREFIX, SAMPLER, child_env, log, now, on_a_node

#: How often the sampler asks while a level runs (a few hundred requests in all: nothing to
#: etcd, and enough for a median per level).
PROBE_EVERY: Final = 0.2
#: The least ``max_latency`` (and the idle p90 assumed when none was measured); the most is half
#: ``probe.timeout`` (a slow answer must be seen as slow, not as a timeout).
MIN_LATENCY: Final = 0.005
#: Bounds of ``q``, the share of a fleet's asks that etcd can serve.
MIN_SHARE: Final = 0.05
MAX_SHARE: Final = 0.5


@dataclass(frozen=True)
class Level:
    """Closed-loop full resyncs by ``clients`` clients at once, and the probe beside them."""

    clients: int
    per_minute: float
    p50: float
    worst: float
    served: int
    timeouts: int
    #: The probe's latencies (seconds, sorted) while these resyncs were in flight.
    probe_latencies: tuple[float, ...] = ()

    @property
    def probe_p50(self) -> float | None:
        """The probe's median latency at this level."""
        return quantile(self.probe_latencies, 0.5)

    @property
    def probe_p90(self) -> float | None:
        """The probe's p90 latency at this level."""
        return quantile(self.probe_latencies, 0.9)


@dataclass(frozen=True)
class Capacity:
    """What etcd serves: the best rate of full resyncs at which none timed out, and the probe's
    latency beside each level (level 0: nothing in flight)."""

    per_minute: float
    single_seconds: float
    levels: tuple[Level, ...]
    idle: Level

    def describe(self) -> str:
        """One line for the report's header."""
        levels = ", ".join(
            f"{lv.clients}: {lv.per_minute:.0f}/min p50 {lv.p50:.2f} s worst {lv.worst:.2f} s"
            + (f" ({lv.timeouts} timed out)" if lv.timeouts else "")
            + f", probe {_ms(lv.probe_p50)} (p90 {_ms(lv.probe_p90)})"
            for lv in self.levels
        )
        return (
            f"{self.per_minute:.0f} full resyncs/min (one alone: {self.single_seconds:.2f} s; "
            f"probe with nothing in flight {_ms(self.idle.probe_p50)} (p90 "
            f"{_ms(self.idle.probe_p90)}); by clients at once: {levels})"
        )


@dataclass(frozen=True)
class Threshold:
    """The probe's ``max_latency`` and what it was chosen from (see the module docstring)."""

    in_flight: int
    share: float
    max_latency: float
    #: The floor: 1.5 x the probe's p90 with nothing in flight.
    floor: float

    def describe(self, agents: int, admission: float, capacity: float) -> str:
        """One line for the report's header."""
        return (
            f"probe.max_latency = {self.max_latency * 1000:.0f} ms: the probe's "
            f"p{self.share * 100:.0f} with k* = {self.in_flight} resyncs in flight (the most at "
            f"which each ended within half the timeout), q = (C/60)/(N/2J) = "
            f"{capacity / 60:.1f}/{agents / 2 / admission:.1f} a second"
            + (
                "; raised to the floor, 1.5 x the idle p90"
                if self.max_latency == self.floor
                else ""
            )
        )


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f} ms"


def closed_loop(port: int, timeout: float, clients: int, seconds: float) -> Level:
    """``clients`` threads doing full resyncs back to back for ``seconds``."""
    durations: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    end = now() + seconds

    def worker() -> None:
        while now() < end:
            began = now()
            try:
                agent.resync("127.0.0.1", port, PREFIX.encode(), timeout, 2.0)
            except agent.Failed as exc:
                with lock:
                    failures.append(str(exc))
                continue
            with lock:
                durations.append(now() - began)

    began = now()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30.0)
    wall = now() - began
    durations.sort()
    return Level(
        clients=clients,
        per_minute=len(durations) / wall * 60.0,
        p50=durations[len(durations) // 2] if durations else math.inf,
        worst=durations[-1] if durations else math.inf,
        served=len(durations),
        timeouts=len(failures),
    )


async def sample_probe(url: str, seconds: float, timeout: float) -> list[float]:
    """The probe's latencies over ``seconds`` (a node's process: see :mod:`sampler`); answers
    that timed out count as ``timeout``. Forked from the event loop's (main) thread."""
    argv = [sys.executable, "-P", str(SAMPLER), url, f"{PROBE_EVERY:g}", f"{seconds:g}"]
    proc = await asyncio.create_subprocess_exec(
        *on_a_node([*argv, f"{timeout:g}"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + timeout + 30.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    latencies: list[float] = []
    for line in out.decode(errors="replace").splitlines():
        answer, _, rest = line.partition(" ")
        value = rest.split(" ", 1)[0]
        if answer == "ready" and value != "-":
            latencies.append(float(value))
        elif answer in ("down", "loaded"):
            latencies.append(timeout)
    return latencies


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile of ``values`` (nearest rank), None for nothing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def admission_share(per_minute: float, admission: float, agents: int) -> float:
    """``q = (C/60) / (N/2J)``: the share of a waiting fleet's asks etcd can serve (N/2 gates
    waiting, on average over the recovery), clamped."""
    share = (per_minute / 60.0) / (agents / 2 / admission)
    return min(max(share, MIN_SHARE), MAX_SHARE)


def choose_max_latency(
    capacity: Capacity,
    timeout: float,
    probe_timeout: float,
    share: float,
    most: int = 2 * (os.cpu_count() or 1),
) -> Threshold:
    """``max_latency`` from the measured levels (see the module's docstring); ``k*`` is at
    most ``most`` (twice the cores)."""
    levels = capacity.levels
    fine = [
        lv
        for lv in levels
        if lv.timeouts == 0
        and lv.worst <= timeout / 2
        and lv.probe_latencies
        and lv.clients <= most
    ]
    level = max(fine, key=lambda lv: lv.clients) if fine else min(levels, key=lambda lv: lv.clients)
    floor = 1.5 * (capacity.idle.probe_p90 or MIN_LATENCY)
    chosen = quantile(level.probe_latencies, share) or floor
    latency = min(max(chosen, floor, MIN_LATENCY), probe_timeout / 2)
    return Threshold(level.clients, share, round(latency, 4), round(floor, 4))


async def measure(
    port: int,
    timeout: float,
    probe_url: str,
    probe_timeout: float,
    clients: Sequence[int] = (1, 2, 4, 8),
    seconds: float = 10.0,
) -> Capacity:
    """Full resyncs back to back by 1, 2, 4, 8 clients for ``seconds`` each, the probe asked
    beside them; stops at the first level where a resync timed out."""
    idle_probes = await sample_probe(probe_url, seconds / 2, probe_timeout)
    idle = Level(0, 0.0, 0.0, 0.0, 0, 0, tuple(sorted(idle_probes)))
    log(f"probe: nothing in flight: p50 {_ms(idle.probe_p50)}, p90 {_ms(idle.probe_p90)}")
    levels: list[Level] = []
    for k in clients:
        loop = asyncio.create_task(asyncio.to_thread(closed_loop, port, timeout, k, seconds))
        # The probe starts once the resyncs are under way, and ends before they do.
        await asyncio.sleep(min(1.0, seconds / 5))
        probes = await sample_probe(probe_url, seconds * 0.7, probe_timeout)
        level = replace(await loop, probe_latencies=tuple(sorted(probes)))
        levels.append(level)
        log(
            f"capacity: {k} client(s): {level.per_minute:.0f} full resyncs/min, "
            f"p50 {level.p50:.2f} s, worst {level.worst:.2f} s, {level.timeouts} failed; "
            f"probe p50 {_ms(level.probe_p50)}, p90 {_ms(level.probe_p90)}"
        )
        if level.timeouts:
            break
    good = [lv for lv in levels if lv.timeouts == 0 and lv.served > 0]
    best = max(good or levels, key=lambda lv: lv.per_minute)
    return Capacity(
        per_minute=best.per_minute,
        single_seconds=levels[0].p50,
        levels=tuple(levels),
        idle=idle,
    )
