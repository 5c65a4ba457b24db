"""The events the lab puts each fleet through, and the schedule that runs the fleets.

A fleet (one policy, N agents, an etcd of its own on a copy of the filled data) goes through:

1. set-up: its agents start, at most ``parallel`` resyncing at once (a fleet that grew, not a
   storm; a gated agent's first start is forced, see :mod:`fleet`);
2. settle: it runs untouched, long enough to be a long-running fleet: under the gate until every
   agent's first run is older than ``stable_after`` and its window slot S has passed (2W + 5 s
   from the last start: S is the node's first W-grid slot at or after ``start + W``), so the
   next start is one after a long stable run; 3 s otherwise;
3. the event, one of :data:`~.base.SCENARIOS`:

   - ``outage``: etcd is stopped for exactly D, then started again on the same data;
   - ``crash-live``: every agent is killed (SIGKILL) in the same instant while etcd stays up
     (a bad policy push, a bug every agent hits, ``salt '*' systemctl restart``);

4. recovery: watched until every agent has been healthy for ``quiet`` seconds, or the bound
   (default: D + 2W + 60 s from the event, D = 0 for crash-live), or ``observe`` seconds
   after etcd is back.

The :class:`Stage` keeps the measurements apart: phases 1, 3 and 4 (and the teardown) hold
one lock, so no two fleets are ever set up or measured at once; a fleet's settle holds
nothing. Run one by one (the default) a fleet lives alone from set-up to teardown; ``--nested``
lets several fleets live at once, so the next fleets set up and are measured while the
previous ones settle (idle agents, blocked on their watches, cost nothing): the same figures,
in far less time, and every fleet still gets an outage of exactly D and a full watch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from .base import GATED, LabError, busy_cores, cpu_ticks, log, now, rounded
from .etcd import ETCD_MAX_RESTARTS, ETCD_RESTART_DELAY, Etcd
from .fleet import Fleet, Setup
from .summary import PolicyResult, summarize
from .supervisors import Spawner

#: How long past S (2W after the last start) a gated fleet settles before its event.
SETTLE_MARGIN: Final = 5.0
#: How long a fleet that no gate supervises settles.
SETTLE_UNGATED: Final = 3.0


def bound_for(scenario: str, setup: Setup) -> float:
    """Recovered means every agent healthy within this long of the event."""
    if setup.bound is not None:
        return setup.bound
    down = setup.outage if scenario == "outage" else 0.0
    return down + 2 * setup.window + 60.0


def settle_for(policy: str, setup: Setup) -> float:
    """How long a fleet runs untouched between its last set-up start and its event."""
    if setup.settle is not None:
        return setup.settle
    if policy in GATED:
        return max(2 * setup.window, setup.stable_after) + SETTLE_MARGIN
    return SETTLE_UNGATED


class Stage:
    """Which fleet may do what, when: one fleet at a time sets up or is measured (``busy``),
    at most ``alive`` fleets exist at once (their agents running)."""

    def __init__(self, alive: int) -> None:
        self.busy = asyncio.Lock()
        self.alive = asyncio.Semaphore(max(1, alive))


async def run_fleet(
    setup: Setup, scenario: str, policy: str, etcd: Etcd, stage: Stage, spawner: Spawner
) -> PolicyResult:
    """One fleet through set-up, settle, its event and recovery (see the module docstring)."""
    async with stage.alive:
        fleet = Fleet(setup, scenario, policy, etcd, spawner)
        tasks: list[asyncio.Task[None]] = []
        scraper: asyncio.Task[None] | None = None
        try:
            async with stage.busy:
                scraper, last_start, setup_seconds = await _set_up(fleet, tasks)
            setup_failures = sum(1 for e in fleet.events if e[2] == "failed")
            settle = settle_for(policy, setup)
            log(
                f"{fleet.name}: {setup.agents} agents healthy after {setup_seconds:.0f} s; "
                f"settling {settle:.0f} s"
            )
            await asyncio.sleep(max(0.0, last_start + settle - now()))
            async with stage.busy:
                try:
                    return await _event_and_recovery(
                        fleet, scenario, last_start, setup_seconds, setup_failures
                    )
                finally:
                    await _stop(fleet, tasks, scraper)
        finally:
            await _stop(fleet, tasks, scraper)


async def _set_up(
    fleet: Fleet, tasks: list[asyncio.Task[None]]
) -> tuple[asyncio.Task[None], float, float]:
    """Start etcd and the agents, paced; (the scraper, the last start, the seconds it took)."""
    setup, n = fleet.setup, fleet.setup.agents
    log(f"{fleet.name}: starting {n} agents")
    began = now()
    if not fleet.etcd.running:
        await fleet.etcd.astart()
    scraper = asyncio.create_task(fleet.scrape_loop())
    # Bounded: each start waits at most the set-up budget.
    budget = n * (setup.timeout + 2.0) / setup.parallel + 120.0
    deadline = began + budget
    last_start = now()
    for i in range(n):
        try:
            await asyncio.wait_for(fleet.pace.acquire(), max(deadline - now(), 0.1))
        except TimeoutError:
            raise LabError(f"{fleet.name}: set-up took longer than {budget:.0f} s") from None
        last_start = now()
        tasks.append(asyncio.create_task(fleet.supervise(i)))
    while fleet.n_healthy < n and now() < deadline:
        await asyncio.sleep(0.2)
    if fleet.n_healthy < n:
        raise LabError(f"{fleet.name}: {n - fleet.n_healthy} agents not healthy after set-up")
    # An agent whose set-up resync failed started again later: the settle counts from the
    # latest start of any agent.
    starts = [t for t, _, kind, _ in fleet.events if kind == "start"]
    return scraper, max([last_start, *starts]), now() - began


async def _event_and_recovery(
    fleet: Fleet, scenario: str, last_start: float, setup_seconds: float, setup_failures: int
) -> PolicyResult:
    """The event, then the watch until recovered or the bound; the fleet's figures."""
    setup, etcd = fleet.setup, fleet.etcd
    bound = bound_for(scenario, setup)
    killed = 0
    baseline = None
    t0 = now()
    ran_before = t0 - last_start
    if scenario == "outage":
        await etcd.astop()
        log(f"{fleet.name}: etcd stopped for {setup.outage:g} s")
        await asyncio.sleep(max(0.0, t0 + setup.outage - now()))
        up_began = now()
        await etcd.astart()
        up_at = now()
        log(f"{fleet.name}: etcd back after {up_at - t0:.1f} s; watching until {bound:.0f} s")
    elif scenario == "crash-live":
        baseline = await fleet.read_metrics()
        if baseline is None:
            raise LabError(f"{fleet.name}: etcd's /metrics does not answer before the crash")
        t0 = up_began = up_at = now()
        killed = fleet.kill_agents()
        log(f"{fleet.name}: {killed} agents killed at once; watching until {bound:.0f} s")
    else:
        raise LabError(f"unknown scenario {scenario!r}")
    cpu_up = etcd.cpu_seconds()
    ticks_up = cpu_ticks()
    deaths: list[float] = []
    peak = 0.0
    until = t0 + bound
    if setup.observe is not None:
        until = min(until, up_at + setup.observe)
    while now() < until:
        since = fleet.all_healthy_since
        if since is not None and since >= up_began and now() - since >= setup.quiet:
            break
        code = etcd.died
        if code is not None:
            # The storm killed it (out of memory): down again, and started again as its
            # unit would, which the agents meet as one more outage.
            peak = max(peak, fleet.etcd_peak or 0.0)
            deaths.append(now())
            log(f"{fleet.name}: etcd died (exit {code}) at {now() - t0:.0f} s; restarting it")
            if len(deaths) > ETCD_MAX_RESTARTS:
                break
            etcd.proc = None
            await asyncio.sleep(ETCD_RESTART_DELAY)
            await etcd.astart()
            continue
        await asyncio.sleep(0.2)
    final = await fleet.read_metrics()
    end = final.t if final is not None else now()
    cpu_end = etcd.cpu_seconds()
    box = busy_cores(ticks_up, cpu_ticks())
    cpu = None if cpu_up is None or cpu_end is None or deaths else cpu_end - cpu_up
    peak = max(peak, fleet.etcd_peak or 0.0)
    result = summarize(
        fleet,
        setup_seconds=setup_seconds,
        setup_failures=setup_failures,
        ran_before_event=ran_before,
        killed=killed,
        t0=t0,
        up_began=up_began,
        up_at=up_at,
        end=end,
        etcd_cpu=cpu,
        baseline=baseline,
        bound=bound,
    )
    log(
        f"{fleet.name}: {result.requests} resyncs after recovery, all healthy at "
        f"{result.all_healthy_at} s, recovered: {result.recovered}"
    )
    return replace(
        result,
        etcd_deaths=len(deaths),
        etcd_died_at=[round(t - t0, 1) for t in deaths],
        etcd_peak_rss_mib=round(peak / 2**20) if peak else None,
        box_busy_cores=rounded(box, 2),
    )


async def _stop(
    fleet: Fleet, tasks: Sequence[asyncio.Task[None]], scraper: asyncio.Task[None] | None
) -> None:
    """Every process of the fleet, its scraper and its etcd, stopped (by pid); idempotent."""
    try:
        await fleet.teardown(tasks)
    finally:
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        await fleet.etcd.astop()


async def run_all(
    setup: Setup, fleets: Sequence[tuple[str, str, Etcd]], alive: int, spawner: Spawner
) -> list[PolicyResult]:
    """Every fleet (scenario, policy, its etcd), at most ``alive`` living at once (1: one by
    one); the results in the order given. A failure stops every fleet (a task group)."""
    stage = Stage(alive)
    # The longest settles first: their agents idle while the next fleets set up and are
    # measured (a stable sort keeps the given order otherwise).
    order = sorted(range(len(fleets)), key=lambda k: -settle_for(fleets[k][1], setup))
    tasks: dict[int, asyncio.Task[PolicyResult]] = {}
    async with asyncio.TaskGroup() as group:
        for k in order:
            scenario, policy, etcd = fleets[k]
            tasks[k] = group.create_task(run_fleet(setup, scenario, policy, etcd, stage, spawner))
            # Let it queue for the stage before the next one does (the lock is fair).
            await asyncio.sleep(0)
    return [tasks[k].result() for k in range(len(fleets))]


def fleets_at_once(nested: int | None, count: int) -> int:
    """How many fleets may live at once: 1 without ``--nested``, all of them with it (or K)."""
    if nested is None:
        return 1
    return count if nested <= 0 else min(nested, count)
