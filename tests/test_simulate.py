"""The fleet simulator: anchor policies' documented delays, the gate's fleet targets, the
storms of issue 15 (a crash on a live control plane, a deliberate restart, a power loss, a
lone crash), the probe modelled from the control plane's queue, the CLI.

Bounds come in pairs (STYLE.md 12): never earlier or faster than the contract allows (the
start rate, the slot), and never later (every node healthy by its bound): a gate that refuses
for ever fails every test below that a gate that starts at once would pass, and the reverse.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import typer
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from supervisor.base.errors import UsageError
from supervisor.cli.fleet import register
from supervisor.core.events import Approved, Ended, apply
from supervisor.core.policy import (
    ADMISSION_FRACTION_WITH_PROBE,
    WindowConfig,
    next_grid_slot,
    window_seconds,
)
from supervisor.core.slots import SlotMode, index_offset
from supervisor.core.state import MICRO, AgentState
from supervisor.fleet.plan import plan
from supervisor.fleet.simulate import (
    DEFAULT_EPOCH,
    PLOT_HINT,
    POLICY_NAMES,
    ControlPlane,
    Fleet,
    GateModel,
    PolicyOutcome,
    Scenario,
    SimulationResult,
    Trigger,
    TriggerKind,
    gate_policies,
    node_offsets,
    render_table,
    run_model,
    simulate,
    sparkline,
)

#: The issue's fleet (5000 nodes, 60-minute window, 30-minute outage) scaled down to 1000
#: nodes with the same start budget N/W (83.3 a minute): W = 12 min, outage = W/2.
N, W, OUTAGE, FAIL = 1000, 720.0, 360.0, 60.0
GATES = ("agent-supervisor", "agent-supervisor+probe")
PROBE = "agent-supervisor+probe"


def one_node(policy: str, outage: float, fail_after: float, **kw: object) -> PolicyOutcome:
    """Simulate one node through an outage under ``policy``, keeping every start time."""
    result = simulate(
        Scenario(nodes=1, outage=outage, fail_after=fail_after),
        Fleet(window=kw.pop("window", 3600.0), slots="index"),  # type: ignore[arg-type]
        policies=(policy,),
        record_starts=True,
        **kw,  # type: ignore[arg-type]
    )
    return result.policies[0]


def delays(starts: tuple[float, ...], fail_after: float) -> list[float]:
    """The wait before each start: from the crash at 0, then from each failed run's end."""
    ends = [0.0] + [s + fail_after for s in starts[:-1]]
    return [round(s - e, 4) for s, e in zip(starts, ends, strict=True)]


def starts_by_node(o: PolicyOutcome) -> dict[int, list[float]]:
    """Each node's start times, in order, from an outcome simulated with record_starts."""
    out: dict[int, list[float]] = {}
    for node, t in zip(o.start_nodes, o.start_times, strict=True):
        out.setdefault(node, []).append(t)
    return out


def grid_at(t: float, period: float, offset: float) -> float:
    """The node's first slot at or after the wall-clock time ``t``, written out from the
    contract: slot e is ``e * P + floor(offset * P)`` microseconds from the Unix epoch, ``P``
    the period in whole microseconds (exact fractions, not the code under test)."""
    p = round(Fraction(period) * MICRO)
    shift = math.floor(offset * p)
    e = math.ceil((Fraction(t) * MICRO - shift) / p)
    return float(Fraction(e * p + shift, MICRO))


def grid(t: float, period: float, offset: float) -> float:
    """:func:`grid_at` in virtual time: seconds from DEFAULT_EPOCH."""
    return grid_at(DEFAULT_EPOCH + t, period, offset) - DEFAULT_EPOCH


# --- anchor models on one node --------------------------------------------------------------


def test_docker_doubles_from_100ms_to_one_minute() -> None:
    """Docker: 100 ms, doubling after each short run, capped at 1 minute."""
    o = one_node("docker-always", outage=600.0, fail_after=1.0)
    assert delays(o.start_times, 1.0)[:12] == [
        0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0, 60.0,
    ]  # fmt: skip


def test_docker_resets_after_a_10s_run() -> None:
    """Docker: a run of 10 s resets the delay, so every restart waits 100 ms."""
    o = one_node("docker-always", outage=300.0, fail_after=10.0)
    assert set(delays(o.start_times, 10.0)) == {0.1}
    assert len(o.start_times) == 31  # 30 begin before the outage ends (and fail), 1 after


def test_kubelet_crashloop_backoff() -> None:
    """kubelet: the first restart at once, then 10 s doubling, capped at 300 s."""
    o = one_node("kubelet", outage=3000.0, fail_after=60.0)
    assert delays(o.start_times, 60.0)[:9] == [
        0.0,
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        300.0,
        300.0,
        300.0,
    ]


def test_kubelet_resets_after_ten_minutes_running() -> None:
    """kubelet: a container that ran 10 minutes restarts at once again."""
    o = one_node("kubelet", outage=1900.0, fail_after=600.0)
    assert delays(o.start_times, 600.0) == [0.0] * 5  # 0, 600, 1200, 1800 fail; 2400 is up


def test_systemd_restarts_after_100ms() -> None:
    """systemd: Restart=always with RestartSec=100ms and runs too long to hit the limit."""
    o = one_node("systemd", outage=600.0, fail_after=60.0)
    assert set(delays(o.start_times, 60.0)) == {0.1}
    assert o.never_healthy == 0


def test_systemd_start_limit_leaves_the_unit_failed() -> None:
    """systemd: a sixth start within 10 s is refused and the unit stays down for good."""
    o = one_node("systemd", outage=600.0, fail_after=1.0)
    assert delays(o.start_times, 1.0) == [0.1] * 5
    assert o.never_healthy == 1
    assert o.all_healthy_at is None


def test_systemd_start_limit_window_restarts_after_10s() -> None:
    """systemd: starts 2.1 s apart never make six in one 10 s window, so it keeps going."""
    o = one_node("systemd", outage=60.0, fail_after=2.0)
    assert o.never_healthy == 0
    assert o.total_starts == 30  # 0.1 + 2.1 k below 60 s for k = 0..28, then healthy


class TopOfRange(random.Random):
    """An RNG whose uniform(a, b) is always b: full jitter's ceilings become visible."""

    def uniform(self, a: float, b: float) -> float:
        """The top of the range."""
        return b


def test_full_jitter_ceilings_double_from_1s_to_300s() -> None:
    """Full jitter: sleep uniform(0, min(300, 1 * 2**attempt)), attempt 0 first."""
    o = one_node("full-jitter", outage=3000.0, fail_after=60.0, rng=TopOfRange())
    assert delays(o.start_times, 60.0)[:11] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip


def test_full_jitter_sleeps_within_its_ceiling() -> None:
    """Full jitter: every sleep lies in [0, ceiling] and a seed repeats the same sleeps."""
    o = one_node("full-jitter", outage=3000.0, fail_after=60.0, rng=random.Random(5))
    for k, d in enumerate(delays(o.start_times, 60.0)):
        assert 0.0 <= d <= min(300.0, 2.0**k)
    again = one_node("full-jitter", outage=3000.0, fail_after=60.0, rng=random.Random(5))
    assert again.start_times == o.start_times


# --- the gate on one node -------------------------------------------------------------------


def test_gate_starts_a_crash_at_its_admission_slot_then_waits_for_its_window_slot() -> None:
    """Without a probe (J = W): the crash after a long run starts at the node's admission
    slot, here t=0; that start fails in the outage and the next waits for its window slot."""
    o = one_node("agent-supervisor", outage=1800.0, fail_after=60.0)
    first = grid(0.0, 3600.0, index_offset(0, 1))
    assert first == 0.0
    slot = next_grid_slot(DEFAULT_EPOCH + 3600.0, 3600.0, index_offset(0, 1)) - DEFAULT_EPOCH
    assert o.start_times == (first, slot)
    assert o.all_healthy_at == slot
    assert o.probes == 0


def test_gate_with_probe_asks_at_each_admission_slot_and_starts_at_the_first_after_the_outage() -> (
    None
):
    """With a probe: no start while the control plane is down; the probe is asked once per
    admission slot (J = W/12) and the start comes at the first slot after the outage."""
    window, outage = 1000.0, 2950.0
    o = one_node(PROBE, outage=outage, fail_after=60.0, window=window)
    j = window * ADMISSION_FRACTION_WITH_PROBE
    assert o.admission == pytest.approx(j)
    slots = [grid(0.0, j, 0.0)]
    while slots[-1] < outage:
        slots.append(grid(slots[-1] + j / 2, j, 0.0))
    assert o.start_times == pytest.approx((slots[-1],), abs=1e-5)
    assert o.probes == len(slots)
    assert o.total_starts == 1


def test_probe_holds_a_start_at_most_w_times_max_multiplier_past_its_slot() -> None:
    """Invariant 11: an outage longer than W x max_multiplier cannot hold a start for ever:
    each node starts W x 4 after its admission slot (and fails), then at the first window
    slot with the control plane back."""
    n, window, outage = 200, 120.0, 5 * 120.0 + 30
    fleet = Fleet(window=window, slots="index")
    result = simulate(
        Scenario(nodes=n, outage=outage, fail_after=FAIL),
        fleet,
        policies=(PROBE,),
        record_starts=True,
    )
    o = result.policies[0]
    j = fleet.admission_for(True)
    for node, times in starts_by_node(o).items():
        held = grid(0.0, j, index_offset(node, n)) + window * fleet.max_multiplier
        assert times[0] == pytest.approx(held, abs=1e-5), node
        assert len(times) == 2 and outage <= times[1] < outage + window, node
    assert o.total_starts == 2 * n
    assert o.recovered and o.all_healthy_at is not None and o.all_healthy_at < outage + window


# --- the slot targets of the issue, at 1000 nodes -------------------------------------------

TARGETS = [
    pytest.param("index", 0.0, 1.05, id="index"),
    pytest.param("address", 0.0, 1.05, id="address-contiguous"),
    pytest.param("address", 0.2, 1.20, id="address-fifth-unused"),
    pytest.param("hash", 0.0, 1.35, id="hash"),
]


@pytest.fixture(scope="module")
def fleets() -> dict[tuple[str, float], SimulationResult]:
    """Our two policies over the scaled fleet with J = W (the grid's own spread), once per
    slot mode."""
    return {
        (slots, unused): simulate(
            Scenario(nodes=N, outage=OUTAGE, fail_after=FAIL),
            Fleet(window=W, slots=slots, unused_addresses=unused, admission=W),  # type: ignore[arg-type]
            policies=GATES,
            seed=11,
        )
        for slots, unused in [("index", 0.0), ("address", 0.0), ("address", 0.2), ("hash", 0.0)]
    }


@pytest.mark.parametrize(("slots", "unused", "bound"), TARGETS)
def test_fleet_targets_with_probe(
    fleets: dict[tuple[str, float], SimulationResult], slots: str, unused: float, bound: float
) -> None:
    """With a probe: N starts, healthy by outage + W + 1 min, peak within the slot target."""
    result = fleets[(slots, unused)]
    o = result.outcome(PROBE)
    assert result.ideal_starts_per_minute == pytest.approx(N / W * 60)
    assert o.total_starts == N
    assert o.all_healthy_at is not None and o.all_healthy_at <= OUTAGE + W + 60
    assert o.peak_starts_per_minute <= bound * result.ideal_starts_per_minute


@pytest.mark.parametrize(("slots", "unused", "bound"), TARGETS)
def test_fleet_targets_without_probe(
    fleets: dict[tuple[str, float], SimulationResult], slots: str, unused: float, bound: float
) -> None:
    """Without a probe: no wave at all (invariant 2: the crash waits for the node's admission
    slot), the peak within the slot target from the first minute on, and one more start only
    for the nodes whose slot fell in the outage."""
    result = fleets[(slots, unused)]
    o = result.outcome("agent-supervisor")
    assert o.peak_starts_per_minute <= bound * result.ideal_starts_per_minute
    assert N < o.total_starts <= N + 1.1 * N * OUTAGE / W
    assert o.never_healthy == 0
    assert o.all_healthy_at is not None and o.all_healthy_at <= OUTAGE + W + 60


def test_issue_figures_for_the_alternatives() -> None:
    """5000 nodes, 30 min outage, 60 s to fail: Docker 155k, kubelet 50k, jitter ~77k."""
    result = simulate(
        Scenario(nodes=5000, outage=1800.0, fail_after=60.0),
        Fleet(window=3600.0),
        policies=("docker-always", "kubelet", "systemd", "full-jitter"),
        seed=1,
    )
    docker, kubelet, systemd, jitter = result.policies
    assert docker.total_starts == 155_000
    assert docker.peak_starts_per_minute == 5000
    assert kubelet.total_starts == 50_000
    assert sorted(set(kubelet.starts_per_minute)) == [0, 5000]  # synchronized waves
    assert systemd.total_starts == 155_000
    assert 65_000 <= jitter.total_starts <= 85_000


# --- issue 15: no event starts a fleet at once ----------------------------------------------


def capacity_for(n: int) -> float:
    """The issue's control plane (219 full resyncs a minute at 5,000 nodes, the lab's etcd),
    scaled with the fleet so that N/C stays 22.8 minutes."""
    return 219.0 * n / 5000


def window_for(n: int) -> float:
    """W from the default configuration (1000 nodes: 20 min, 5000: 60, 10000: 110)."""
    return window_seconds(WindowConfig(), n)


@pytest.fixture(scope="module")
def crash_live() -> dict[int, SimulationResult]:
    """crash-live at the issue's capacity: both gates at 5,000 nodes, the probe's at 1,000
    and 10,000 (a second each)."""
    return {
        n: simulate(
            Scenario(kind="crash-live", nodes=n, capacity=capacity_for(n)),
            Fleet(window=window_for(n)),
            policies=GATES if n == 5000 else (PROBE,),
        )
        for n in (1000, 5000, 10000)
    }


@pytest.mark.parametrize("n", [1000, 5000, 10000])
def test_crash_on_a_live_control_plane_with_a_probe(
    crash_live: dict[int, SimulationResult], n: int
) -> None:
    """Every agent crashing at once while the control plane serves 219 resyncs a minute per
    5,000 nodes: with a probe at most 1.1 N starts, under 5% failed, all healthy within 40
    minutes; admitted at about the rate it serves (never a wave above it), and the probe
    asked about once per J per waiting node."""
    result = crash_live[n]
    o = result.outcome(PROBE)
    assert result.scenario.outage == 0.0
    assert o.total_starts <= 1.1 * n
    assert o.failed < 0.05 * o.total_starts
    assert o.recovered and o.all_healthy_at is not None and o.all_healthy_at <= 40 * 60
    assert o.peak_starts_per_minute <= 1.1 * capacity_for(n)
    j = window_for(n) * ADMISSION_FRACTION_WITH_PROBE
    assert o.admission == pytest.approx(j)
    assert 0 < o.peak_probes_per_minute <= 1.35 * n / j * 60


def test_crash_on_a_live_control_plane_without_a_probe() -> None:
    """Without a probe (J = W, 2,000 nodes, W = 40 min): at most 1.1 N starts, none failed,
    all healthy within W plus one slot; no wave (the busiest minute within the hash target)."""
    result = simulate(
        Scenario(kind="crash-live", nodes=2000, capacity=capacity_for(2000)),
        Fleet(window=window_for(2000)),
        policies=("agent-supervisor",),
    )
    o = result.policies[0]
    w = result.fleet.window
    assert o.total_starts <= 1.1 * 2000 and o.failed == 0
    assert o.all_healthy_at is not None and o.all_healthy_at <= w + 60
    assert o.peak_starts_per_minute <= 1.35 * result.ideal_starts_per_minute
    assert o.admission == w and o.probes == 0


def test_crash_live_at_full_size_without_a_probe(crash_live: dict[int, SimulationResult]) -> None:
    """The issue's own figures without a probe: 5,000 starts, none failed, healthy by W + 1 min."""
    o = crash_live[5000].outcome("agent-supervisor")
    assert (o.total_starts, o.failed) == (5000, 0)
    assert o.all_healthy_at is not None and o.all_healthy_at <= 3600 + 60


def test_without_a_probe_the_window_must_cover_n_over_c() -> None:
    """At 1,000 nodes the default W (20 min) is shorter than N/C (22.8 min): the gate without
    a probe overloads the control plane; with W from ``plan`` for that capacity it does not."""
    n, cap = 1000, capacity_for(1000)
    sc = Scenario(kind="crash-live", nodes=n, capacity=cap)
    short = simulate(sc, Fleet(window=window_for(n)), policies=("agent-supervisor",))
    assert short.policies[0].failed > 0.2 * n
    w = plan(n, cap, slots="hash").window
    planned = simulate(sc, Fleet(window=w), policies=("agent-supervisor",)).policies[0]
    assert (planned.total_starts, planned.failed) == (n, 0)
    assert planned.all_healthy_at is not None and planned.all_healthy_at <= w + 60


@pytest.mark.parametrize("kind", ["restart", "power-loss"])
def test_a_fleet_wide_restart_or_power_loss_is_spread(kind: str) -> None:
    """A fleet-wide deliberate restart (exit 143 after 3 days) and a boot after a 2 h power
    loss (the last runs' ends unknown) go to the admission grid as a crash does: with a
    probe 1.00 N starts, none failed, healthy within 40 minutes of the event; without one
    healthy within W plus one slot."""
    n = 2000
    result = simulate(
        Scenario(kind=kind, nodes=n, outage=7200.0, capacity=capacity_for(n)),  # type: ignore[arg-type]
        Fleet(window=window_for(n)),
        policies=GATES,
    )
    boot = 7200.0 if kind == "power-loss" else 0.0
    event = boot + result.scenario.boot_spread if kind == "power-loss" else 0.0
    assert result.scenario.outage == (7200.0 if kind == "power-loss" else 0.0)
    probe, plain = result.outcome(PROBE), result.outcome("agent-supervisor")
    for o in (probe, plain):
        assert (o.total_starts, o.failed) == (n, 0), o.name
        assert sum(o.starts_per_minute[: int(boot // 60)]) == 0, o.name
    assert probe.all_healthy_at is not None and probe.all_healthy_at <= event + 40 * 60
    assert plain.all_healthy_at is not None
    assert plain.all_healthy_at <= event + result.fleet.window + 60


def test_outage_and_restart_all_do_not_regress_with_a_probe() -> None:
    """The control plane down 30 minutes, 5,000 nodes, 219 resyncs a minute: with a probe
    1.00 N starts and healthy by D + W; restarting every supervisor at 45 minutes, in the
    middle of the admission, changes nothing (invariant 0)."""
    sc = Scenario(nodes=5000, outage=1800.0, capacity=219.0)
    fleet = Fleet(window=3600.0)
    plain = simulate(sc, fleet, policies=(PROBE,)).policies[0]
    assert (plain.total_starts, plain.failed, plain.overloaded) == (5000, 0, 0)
    assert plain.all_healthy_at is not None and plain.all_healthy_at <= 1800 + 3600
    assert sum(plain.starts_per_minute[:30]) == 0
    again = simulate(replace(sc, kind="restart-all", restart_at=2700.0), fleet, policies=(PROBE,))
    assert sum(again.policies[0].starts_per_minute[45:]) > 0
    assert again.policies[0] == plain


@pytest.mark.parametrize("n", [1000, 5000, 10000])
def test_a_lone_crash_starts_within_j(n: int) -> None:
    """One long-running agent crashing alone on a healthy, idle control plane, tried for every
    node name: it starts within J, J/2 on median (spread evenly over J, never at once), with
    one probe request; without a probe within W."""
    result = simulate(
        Scenario(kind="lone-crash", nodes=n, capacity=capacity_for(n)),
        Fleet(window=window_for(n)),
        policies=GATES,
    )
    for o in result.policies:
        assert o.admission is not None and o.waits is not None
        j = o.admission
        assert 0 <= o.waits.max < j, o.name
        assert abs(o.waits.median - j / 2) <= 0.05 * j, o.name
        assert o.waits.p90 >= 0.85 * j, o.name
        assert (o.total_starts, o.failed) == (n, 0), o.name
    assert result.outcome(PROBE).probes == n
    assert result.outcome(PROBE).admission == pytest.approx(
        window_for(n) * ADMISSION_FRACTION_WITH_PROBE
    )
    assert result.outcome("agent-supervisor").admission == window_for(n)


def test_lone_crash_trials_share_no_control_plane() -> None:
    """A lone crash is a trial of its own: a capacity far below the fleet changes no wait,
    where the same nodes crashing together (crash-live) queue behind each other."""
    sc = Scenario(kind="lone-crash", nodes=300, capacity=1.0)
    fleet = Fleet(window=600.0)
    alone = simulate(sc, fleet, policies=(PROBE,)).policies[0]
    ample = simulate(replace(sc, capacity=None), fleet, policies=(PROBE,)).policies[0]
    assert alone.waits == ample.waits and alone.failed == 0
    together = simulate(replace(sc, kind="crash-live"), fleet, policies=(PROBE,)).policies[0]
    assert together.waits is not None and alone.waits is not None
    assert together.waits.max > 10 * alone.waits.max


def test_probe_answers_from_the_queue() -> None:
    """The probe says "down" before the control plane is up, "loaded" when its wait behind
    the queued resyncs exceeds max_latency, "ready" otherwise and always without a capacity;
    its own request adds nothing to the queue."""
    plane = ControlPlane(100.0, 60.0, 2.0, epoch=0.0)  # one resync a second
    assert plane.probe(0, 99.0) == "down"
    assert plane.probe(0, 100.0) == "ready"
    assert plane.resync(0, 100.0, 3, fail_after=60.0) == 103.0
    assert plane.probe(0, 100.0) == "loaded"  # 3 s behind the queue
    assert plane.probe(0, 101.0) == "ready"  # 2 s: not more than max_latency
    assert plane.backlog(0, 101.0) == 2.0
    assert plane.resync(0, 101.0, 70, fail_after=60.0) is None  # 72 s: its client gave up
    assert plane.backlog(0, 101.0) == 72.0  # worked through anyway
    assert (plane.probes, plane.probe_bins) == (4, [0, 4])
    free = ControlPlane(0.0, None, 1.0, epoch=0.0)
    assert free.resync(0, 5.0, 10**6, fail_after=1.0) == 5.0
    assert free.probe(0, 5.0) == "ready"


# --- a fleet asking at one instant, whatever its histories ----------------------------------

#: The property's window: small, so that hypothesis's examples stay fast.
PW = 600.0
_ENDS = ("crash", "clean", "term", "kill", "unreported", "stable")
_CODES = {"crash": 1, "clean": 0, "term": 143, "kill": 137, "stable": 1}
_runs = st.lists(
    st.tuples(st.floats(min_value=1.0, max_value=3 * PW), st.sampled_from(_ENDS)),
    min_size=1,
    max_size=4,
)


def history(
    runs: list[tuple[float, str]], before: float, t0: float
) -> tuple[AgentState, float, int]:
    """The state of (gap, end) runs laid out so that the last event is ``before`` seconds
    before ``t0``, through the core's events; with the latest start and the backoff level the
    contract gives it (invariant 1, counted here from the draw, not by the code under test)."""
    times = []
    t = 0.0
    for gap, end in runs:
        t += gap
        start = t
        if end != "unreported":
            t += 700.0 if end == "stable" else 5.0
        times.append((start, t, end))
    shift = t0 - before - t
    state = AgentState("cilium-agent")
    for i, (start, stop, end) in enumerate(times):
        state = apply(state, Approved(start + shift, f"r{i}"))
        if end != "unreported":
            state = apply(state, Ended(stop + shift, _CODES[end]))
    level = 0
    for _, _, end in reversed(times):
        if end == "stable":
            break
        if end in ("crash", "kill", "unreported"):
            level += 1
    return state, times[-1][0] + shift, level


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(_runs, st.floats(min_value=0.0, max_value=2 * PW)), min_size=1, max_size=40),
    st.floats(min_value=0.0, max_value=PW),
    st.booleans(),
)
def test_a_fleet_asking_at_one_instant_is_spread_over_j(
    fleet_histories: list[tuple[list[tuple[float, str]], float]], at: float, probe: bool
) -> None:
    """Whatever the histories (crashes, clean stops, TERM, kills, unreported ends, stable
    runs), a fleet asking at one instant gets no more than about N/J admissions a unit of
    time plus the window grid's N/W (safety), and every node starts at the latest at its
    bound: its window slot S if S is still ahead, else within J (liveness)."""
    n = len(fleet_histories)
    t0 = DEFAULT_EPOCH + at
    fleet = Fleet(window=PW, slots="index")
    offsets = node_offsets(fleet, n, random.Random(0))
    drawn = [history(runs, before, t0) for runs, before in fleet_histories]
    plane = ControlPlane(t0, None, fleet.max_latency, epoch=t0)
    gate = GateModel(gate_policies(fleet, offsets, probe), [s for s, _, _ in drawn], plane)
    o = run_model(
        "gate",
        gate,
        [Trigger(0.0, "boot")] * n,
        [1] * n,
        Scenario(kind="crash-live", nodes=n),
        epoch=t0,
        horizon=12 * PW,
        record_starts=True,
        plane=plane,
    )
    j = fleet.admission_for(probe)
    by_node = starts_by_node(o)
    assert sorted(by_node) == list(range(n))  # liveness: every node started
    for node, (_, last, level) in enumerate(drawn):
        (start,) = by_node[node]
        off = index_offset(node, n)
        m = min(2 ** (level - 1), fleet.max_multiplier) if level > 1 else 1
        big_s = grid_at(last + PW * m, PW, off) - t0
        if big_s > 1e-6:
            assert start == pytest.approx(big_s, abs=1e-5), (node, level)
        else:
            assert 0.0 <= start < j, node
            assert start == pytest.approx(grid_at(t0, j, off) - t0, abs=1e-5), node
    times = sorted(o.start_times)
    for length in (j / 8, j / 2, j):
        most = n * length / j + n * length / PW + 2
        for i, t in enumerate(times):
            inside = sum(1 for u in times[i:] if u < t + length)
            assert inside <= most, (length, t)


# --- scenarios ------------------------------------------------------------------------------


def test_rolling_restart_waits_for_each_nodes_admission_slot() -> None:
    """A rolling restart on a healthy control plane: the alternatives start each agent at
    once; the gate starts it at the node's admission slot, within J of its restart."""
    result = simulate(
        Scenario(kind="rolling", nodes=300, outage=0.0, rolling_interval=2.0),
        Fleet(window=W),
        record_starts=True,
    )
    for o in result.policies:
        assert (o.total_starts, o.failed) == (300, 0), o.name
        by_node = starts_by_node(o)
        if o.admission is None:
            assert all(by_node[i] == [i * 2.0] for i in range(300)), o.name
            continue
        waits = [by_node[i][0] - i * 2.0 for i in range(300)]
        assert all(0 <= w < o.admission for w in waits), o.name
        assert max(waits) > 0.8 * o.admission, o.name


def test_boot_storm_recovers_everyone_and_is_seeded() -> None:
    """A boot storm ends with every node healthy; the same seed gives the same figures."""
    sc = Scenario(kind="boot-storm", nodes=300, outage=OUTAGE, boot_spread=60.0)
    first = simulate(sc, Fleet(window=W), seed=3)
    assert all(o.never_healthy == 0 for o in first.policies)
    assert first.outcome(PROBE).total_starts == 300
    # Without a probe, only the nodes whose admission slot fell in the outage start twice.
    assert 300 < first.outcome("agent-supervisor").total_starts <= 300 * (1 + 1.2 * OUTAGE / W)
    assert simulate(sc, Fleet(window=W), seed=3) == first
    assert simulate(sc, Fleet(window=W), seed=4) != first


def test_live_scenarios_keep_the_control_plane_up() -> None:
    """crash-live, restart and lone-crash have no outage whatever is given; the others keep it."""
    for kind in ("crash-live", "restart", "lone-crash"):
        assert Scenario(kind=kind, outage=600.0).outage == 0.0
    assert Scenario(kind="power-loss", outage=600.0).outage == 600.0


def test_result_json_shape() -> None:
    """--json has nodes, window, outage and, per policy, the figures of the issues."""
    doc = simulate(Scenario(nodes=50, outage=120.0), Fleet(window=300.0)).to_json()
    assert (doc["nodes"], doc["window_seconds"], doc["outage_seconds"]) == (50, 300.0, 120.0)
    assert (doc["trials"], doc["max_latency_seconds"]) == (None, 1.0)
    assert list(doc["policies"]) == list(POLICY_NAMES)
    for figures in doc["policies"].values():
        assert {
            "total_starts",
            "failed_starts",
            "peak_starts_per_minute",
            "ideal_starts_per_minute",
            "all_healthy_at_seconds",
            "admission_seconds",
            "probe_requests",
            "peak_probe_requests_per_minute",
            "first_start_wait_seconds",
        } <= set(figures)
        assert figures["ideal_starts_per_minute"] == 10.0
    gate = doc["policies"][PROBE]
    assert gate["admission_seconds"] == pytest.approx(300.0 * ADMISSION_FRACTION_WITH_PROBE)
    assert gate["probe_requests"] > 50
    assert set(gate["first_start_wait_seconds"]) == {"median", "p90", "max"}
    assert doc["policies"]["systemd"]["admission_seconds"] is None


def test_bad_scenario_values_are_refused() -> None:
    """Negative durations, no nodes, J longer than W and unknown policies are errors naming
    the value."""
    with pytest.raises(ValueError, match="outage"):
        Scenario(outage=-1.0)
    with pytest.raises(ValueError, match="nodes"):
        Scenario(nodes=0)
    with pytest.raises(ValueError, match="admission = 700"):
        Fleet(window=600.0, admission=700.0)
    with pytest.raises(ValueError, match="max_latency"):
        Fleet(window=600.0, max_latency=0.0)
    with pytest.raises(ValueError, match="unknown policy 'pm2'"):
        simulate(Scenario(nodes=1), Fleet(window=60.0), policies=("pm2",))


# --- restart-all: every node's supervisor restarted in the middle of a crash loop -----------

#: Production's start budget (5000 nodes in 60 min, 83.3 a minute) at 2000 nodes: W = 24 min,
#: and J = W (the grid's own spread). The control plane is down 2 h; at 70 min every node
#: has failed twice (at its admission slot in [0, 24) min, then at its window slot in
#: [24, 48) min) and waits at backoff level 2 for its slot in [72, 96) min, 22 to 46 min
#: after its last start: most are more than W past it.
RN, RW, ROUTAGE, RAT = 2000, 1440.0, 7200.0, 4200.0


def restarted_at(sc: Scenario, at: float) -> Scenario:
    """The outage scenario ``sc`` with every node's supervisor restarted at ``at``."""
    return replace(sc, kind="restart-all", restart_at=at)


@pytest.fixture(scope="module")
def restarts() -> dict[str, SimulationResult]:
    """Our two policies through restart-all at the production ratio, once per slot mode."""
    return {
        slots: simulate(
            Scenario(kind="restart-all", nodes=RN, outage=ROUTAGE, restart_at=RAT),
            Fleet(window=RW, slots=slots, admission=RW),
            policies=GATES,
        )
        for slots in ("index", "hash")
    }


@pytest.mark.parametrize(
    ("slots", "bound"),
    [pytest.param("index", 1.05, id="index"), pytest.param("hash", 1.35, id="hash")],
)
@pytest.mark.parametrize("policy", GATES)
def test_restart_all_keeps_the_slot_targets(
    restarts: dict[str, SimulationResult], slots: str, bound: float, policy: str
) -> None:
    """Restarting every supervisor at once makes no wave: the busiest minute from then on
    stays within the slot mode's target (invariant 3: no start before the slot, whoever asks)."""
    result = restarts[slots]
    minute = result.restart_minute
    assert minute == 70
    o = result.outcome(policy)
    assert o.peak_after(minute) <= bound * result.ideal_starts_per_minute
    assert o.never_healthy == 0


@pytest.mark.parametrize("policy", GATES)
def test_restart_all_keeps_starts_a_window_apart(policy: str) -> None:
    """Across the restart, no node's gate lets two starts through within one window (inv. 4)."""
    w = 600.0
    result = simulate(
        Scenario(kind="restart-all", nodes=40, outage=3600.0, restart_at=1700.0),
        Fleet(window=w, slots="index"),
        policies=(policy,),
        record_starts=True,
    )
    by_node = starts_by_node(result.policies[0])
    assert len(by_node) == 40
    for node, times in by_node.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= w for g in gaps), (node, times)


@pytest.mark.parametrize("slots", ["index", "hash"])
def test_restart_all_during_the_outage_changes_no_start(slots: SlotMode) -> None:
    """A restart during the outage changes nothing: every node starts exactly when it would
    have without it, so the total is the outage scenario's too (invariant 0)."""
    fleet = Fleet(window=600.0, slots=slots)
    sc = Scenario(nodes=60, outage=3600.0)
    plain = simulate(sc, fleet, policies=GATES, record_starts=True)
    for at in (45.0, 900.0, 1700.0, 3000.0):
        restarted = simulate(
            restarted_at(sc, at),
            fleet,
            policies=GATES,
            record_starts=True,
        )
        for name in GATES:
            before, after = plain.outcome(name), restarted.outcome(name)
            assert after.total_starts == before.total_starts, (name, at)
            assert starts_by_node(after) == starts_by_node(before), (name, at)


@pytest.mark.parametrize(
    "capacity", [pytest.param(None, id="J=W"), pytest.param(219.0 * 400 / 5000, id="capacity")]
)
def test_restart_all_after_recovery_changes_nothing_for_gated_nodes(
    capacity: float | None,
) -> None:
    """After the control plane is back, a restart of every supervisor moves no start: the ask
    and the probe's deferral are kept in the state, so a fresh gate waits for the same slot
    (regression: a wave of 3/4 of the fleet in the restart's minute). With J = W the fleet is
    still spreading over W then; with the default J and a capacity it is still being
    admitted at the rate the control plane serves."""
    fleet = Fleet(window=3600.0, slots="index", admission=3600.0 if capacity is None else None)
    sc = Scenario(nodes=400, outage=1800.0, capacity=capacity)
    plain = simulate(sc, fleet, policies=GATES)
    restarted = simulate(restarted_at(sc, 2700.0), fleet, policies=GATES)
    probe = restarted.outcome(PROBE)
    assert sum(probe.starts_per_minute[45:]) > 0  # the restart comes in the middle
    for name in GATES:
        assert restarted.outcome(name) == plain.outcome(name), name
    if capacity is None:
        assert probe.starts_per_minute[45] <= math.ceil(1.05 * sc.nodes / fleet.window * 60)
    else:
        assert probe.starts_per_minute[45] <= 1.1 * capacity


def test_restart_all_resets_the_alternatives_memory() -> None:
    """kubelet and full jitter forget their back-off and start the waiting agents at once;
    Docker and systemd nodes, running at that instant, are left alone."""
    sc = Scenario(nodes=300, outage=1800.0)
    others = ("docker-always", "kubelet", "systemd", "full-jitter")
    plain = simulate(sc, Fleet(window=W), policies=others)
    restarted = simulate(restarted_at(sc, 1100.0), Fleet(window=W), policies=others)
    minute = restarted.restart_minute
    assert minute == 18
    for name in ("docker-always", "systemd"):
        assert restarted.outcome(name) == plain.outcome(name), name
    # kubelet: every node is in a 300 s back-off then (its start at about 16 min failed); the
    # new kubelet starts them all at once, then again a minute later (the first restart after
    # a new entry is immediate), where the old one would have waited.
    kubelet, before = restarted.outcome("kubelet"), plain.outcome("kubelet")
    assert before.starts_per_minute[minute : minute + 2] == (0, 0)
    assert kubelet.starts_per_minute[minute : minute + 2] == (300, 300)
    assert kubelet.total_starts > before.total_starts
    # Full jitter: nearly every node sleeps (up to 300 s between 60 s runs) and starts now.
    jitter = restarted.outcome("full-jitter")
    assert jitter.starts_per_minute[minute] >= 290 > 2 * plain.outcome("full-jitter").peak_after(10)


def test_restart_all_brings_back_systemd_units_failed_on_the_start_limit() -> None:
    """A unit failed on systemd's start limit stays down in an outage; the restart starts it."""
    sc = Scenario(nodes=10, outage=60.0, fail_after=1.0)
    plain = simulate(sc, Fleet(window=W), policies=("systemd",))
    assert plain.policies[0].never_healthy == 10
    restarted = simulate(
        restarted_at(sc, 600.0),
        Fleet(window=W),
        policies=("systemd",),
        record_starts=True,
    )
    o = restarted.policies[0]
    assert o.never_healthy == 0
    assert o.all_healthy_at == 600.0
    assert o.total_starts == plain.policies[0].total_starts + 10


def test_restart_all_groups_identical_nodes_as_before() -> None:
    """Deterministic policies simulated once per group give the node-by-node figures."""
    sc = Scenario(kind="restart-all", nodes=200, outage=1800.0, restart_at=1000.0)
    anchors = ("docker-always", "kubelet", "systemd")
    grouped = simulate(sc, Fleet(window=W), policies=anchors)
    single = simulate(sc, Fleet(window=W), policies=anchors, record_starts=True)
    for g, s in zip(grouped.policies, single.policies, strict=True):
        assert (g.total_starts, g.starts_per_minute, g.all_healthy_at, g.never_healthy) == (
            s.total_starts,
            s.starts_per_minute,
            s.all_healthy_at,
            s.never_healthy,
        ), g.name


class Waiter:
    """A policy that waits 1000 s after every failure and logs what the engine asks of it."""

    deterministic = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def begin(self, node: int, t: float, kind: TriggerKind) -> float | None:
        """The crash: wait 1000 s."""
        self.calls.append(("begin", t - DEFAULT_EPOCH))
        return t + 1000.0

    def exited(self, node: int, t: float, ran: float) -> float | None:
        """A failed run: wait 1000 s."""
        self.calls.append(("exited", t - DEFAULT_EPOCH))
        return t + 1000.0

    def attempt(self, node: int, t: float) -> float | None:
        """Start when asked."""
        self.calls.append(("attempt", t - DEFAULT_EPOCH))
        return t

    def supervisor_restarted(self, node: int, t: float, waiting: bool) -> float | None:
        """The new process attempts 100 s after its start."""
        self.calls.append(("restart" if waiting else "restart-running", t - DEFAULT_EPOCH))
        return t + 100.0


def test_restart_cancels_the_old_process_pending_attempt() -> None:
    """The old process's planned attempt never happens after the restart: one chain per node."""
    model = Waiter()
    out = run_model(
        "waiter",
        model,
        [Trigger(0.0, "crash")],
        [1],
        Scenario(kind="restart-all", nodes=1, outage=5000.0, fail_after=60.0),
        epoch=DEFAULT_EPOCH,
        horizon=10_000.0,
        record_starts=True,
        restart_at=500.0,
    )
    # Crash at 0 -> attempt planned at 1000 (cancelled); restart at 500 -> attempt at 600,
    # fails at 660 -> attempt at 1660, fails at 1720 -> ... until the control plane is up.
    assert model.calls[:6] == [
        ("begin", 0.0),
        ("restart", 500.0),
        ("attempt", 600.0),
        ("exited", 660.0),
        ("attempt", 1660.0),
        ("exited", 1720.0),
    ]
    assert out.start_times[:3] == (600.0, 1660.0, 2720.0)
    assert ("attempt", 1000.0) not in model.calls
    assert out.total_starts == len(out.start_times) == 6  # 600 ... 4840 fail; 5900 is up
    assert out.failed == 5
    # A restart while the agent runs changes nothing for the engine.
    model = Waiter()
    run_model(
        "waiter",
        model,
        [Trigger(0.0, "crash")],
        [1],
        Scenario(kind="restart-all", nodes=1, outage=5000.0, fail_after=60.0),
        epoch=DEFAULT_EPOCH,
        horizon=10_000.0,
        restart_at=1030.0,
    )
    assert ("restart-running", 1030.0) in model.calls
    assert [c for c in model.calls if c[0] == "attempt"][:2] == [
        ("attempt", 1000.0),
        ("attempt", 2060.0),
    ]


# --- overload feedback: --capacity ---------------------------------------------------------

#: The scaled fleet of the targets above against a control plane that works through 150 full
#: resyncs a minute: above the gate's busiest minute without a probe (107 with hashed slots),
#: far below a wave of the whole fleet.
CAPACITY = 150.0


@pytest.fixture(scope="module")
def overloaded() -> SimulationResult:
    """Every policy through the scaled outage with a capacity below the storm."""
    return simulate(
        Scenario(nodes=N, outage=OUTAGE, fail_after=FAIL, capacity=CAPACITY),
        Fleet(window=W),
        seed=11,
    )


def test_no_capacity_is_todays_model() -> None:
    """Without a capacity nothing changes: no capacity keys, and the same starts and
    recoveries as with a capacity no storm comes near."""
    sc = Scenario(nodes=300, outage=600.0, fail_after=FAIL)
    plain = simulate(sc, Fleet(window=W), seed=2)
    doc = plain.to_json()
    assert "capacity_per_minute" not in doc
    assert all("recovered" not in p for p in doc["policies"].values())
    ample = simulate(replace(sc, capacity=1e9), Fleet(window=W), seed=2, horizon=plain.horizon)
    for a, b in zip(plain.policies, ample.policies, strict=True):
        assert (a.total_starts, a.starts_per_minute) == (b.total_starts, b.starts_per_minute)
        assert a.never_healthy == b.never_healthy == 0
        assert a.all_healthy_at == pytest.approx(b.all_healthy_at)
        assert b.overloaded == 0


def test_restart_loops_never_recover_below_capacity(overloaded: SimulationResult) -> None:
    """Docker and systemd restart the whole fleet in waves far beyond what is worked through
    in one wait: nothing is served after the first, the queue only grows, the fleet never
    recovers within the horizon."""
    for name in ("docker-always", "systemd"):
        o = overloaded.outcome(name)
        assert not o.recovered, name
        assert o.all_healthy_at is None, name
        assert o.never_healthy >= 0.8 * N, name
        assert o.overloaded >= 50 * N, name
    assert overloaded.horizon >= OUTAGE + 7 * W + 3600


def test_kubelet_recovers_late_below_capacity(overloaded: SimulationResult) -> None:
    """kubelet's waves are 5 minutes apart at most: the queue drains between them, so a few
    hundred are served per wave and the fleet recovers, hours after the gate, with ten times
    the resyncs."""
    kubelet = overloaded.outcome("kubelet")
    gate = overloaded.outcome(PROBE)
    assert kubelet.recovered and gate.recovered
    assert kubelet.all_healthy_at is not None and gate.all_healthy_at is not None
    assert kubelet.all_healthy_at >= gate.all_healthy_at + 3600
    assert kubelet.starts_after_outage >= 5 * gate.starts_after_outage


def test_gate_recovers_at_outage_plus_window_below_capacity(
    overloaded: SimulationResult,
) -> None:
    """The gate with a probe admits the fleet at about the rate the control plane serves:
    one served resync per node, every node healthy by D + W (a minute more for hashed slots),
    nothing refused by the capacity; without a probe it spreads over W and recovers too."""
    o = overloaded.outcome(PROBE)
    assert o.recovered
    assert o.all_healthy_at is not None and o.all_healthy_at <= OUTAGE + W + 60
    assert (o.starts_after_outage, o.overloaded) == (N, 0)
    assert o.peak_starts_per_minute <= 1.1 * CAPACITY
    plain = overloaded.outcome("agent-supervisor")
    assert plain.recovered and plain.overloaded == 0


def test_gate_with_the_planned_window_recovers_at_outage_plus_n_over_c() -> None:
    """With W from ``plan`` for the capacity (exact slots: W = N/C), the gate with a probe
    recovers by D + N/C and at most one admission period more, and no start is refused."""
    nodes, capacity, outage = 500, 100.0, 600.0
    window = plan(nodes, capacity, slots="index").window
    assert window == nodes * 60 / capacity
    fleet = Fleet(window=window, slots="index")
    result = simulate(
        Scenario(nodes=nodes, outage=outage, fail_after=FAIL, capacity=capacity),
        fleet,
        policies=(PROBE, "systemd"),
    )
    gate, loop = result.policies
    assert gate.all_healthy_at is not None
    n_over_c = nodes * 60 / capacity
    assert (
        outage + n_over_c - 60
        <= gate.all_healthy_at
        <= outage + n_over_c + fleet.admission_for(True)
    )
    assert gate.overloaded == 0
    assert not loop.recovered


def test_a_burst_beyond_twice_one_wait_never_recovers() -> None:
    """The lab's finding: 20 agents resyncing at once from an etcd that works through 115 a
    minute (9.6 in a 5 s wait) time out, and the restart loop keeps it so, although 20 is far
    below 115; the gate's 20 starts over a minute are all served."""
    result = simulate(
        Scenario(nodes=20, outage=30.0, fail_after=5.0, capacity=115.0),
        Fleet(window=60.0, slots="index", stable_after=30.0),
        policies=("systemd", PROBE),
        horizon=210.0,
    )
    loop, gate = result.policies
    assert not loop.recovered
    assert loop.starts_after_outage >= 10 * 20
    assert gate.recovered and (gate.starts_after_outage, gate.overloaded) == (20, 0)


def test_abandoned_resyncs_are_worked_through() -> None:
    """A resync whose client gave up still costs the control plane: a wave just under twice
    what it serves in one wait recovers (each round leaves room for a few), one just over it
    never does (each round leaves more than it serves)."""
    sc = Scenario(nodes=19, outage=60.0, fail_after=5.0, capacity=120.0)  # 10 a wait
    under = simulate(sc, Fleet(window=600.0), policies=("systemd",), horizon=900.0)
    assert under.policies[0].recovered
    assert under.policies[0].overloaded > 0
    over = simulate(
        replace(sc, nodes=21), Fleet(window=600.0), policies=("systemd",), horizon=900.0
    )
    assert not over.policies[0].recovered
    assert over.policies[0].never_healthy == 21 - 10


def test_capacity_must_be_positive() -> None:
    """A capacity of zero, below zero or not a number is refused, naming the value."""
    for bad in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="capacity"):
            Scenario(capacity=bad)
    with pytest.raises(ValueError, match="horizon"):
        simulate(Scenario(nodes=1), Fleet(window=60.0), horizon=0.0)


def test_capacity_json_and_table_say_whether_and_when(overloaded: SimulationResult) -> None:
    """--json gives the capacity, the horizon and per policy whether it recovered; the table
    says "not by" the horizon for a fleet that did not, and what the probe cost."""
    doc = overloaded.to_json()
    assert doc["capacity_per_minute"] == CAPACITY
    assert doc["horizon_seconds"] == overloaded.horizon
    gate = doc["policies"][PROBE]
    assert (gate["recovered"], gate["failed_on_capacity"], gate["failed_starts"]) == (True, 0, 0)
    assert gate["starts_after_outage_per_node"] == 1.0
    assert doc["policies"]["systemd"]["recovered"] is False
    lines = render_table(overloaded).splitlines()
    assert "works through 150 full resyncs/min" in lines[0]
    assert "admission grid J = 12m00s without a probe, " in lines[0]
    assert "after outage" in lines[2]
    row = next(ln for ln in lines if ln.startswith("systemd "))
    never = overloaded.outcome("systemd").never_healthy
    assert f"not by {table_hm(overloaded.horizon)}: {never:,} nodes not healthy" in row
    probes = overloaded.outcome(PROBE).probes
    assert any(ln.strip().startswith(f"{PROBE}: {probes:,} probe requests") for ln in lines)


def table_hm(seconds: float) -> str:
    """The table's "0h30m (1,800 s)" form."""
    minutes = seconds / 60
    return f"{int(minutes // 60)}h{int(minutes % 60):02d}m ({seconds:,.0f} s)"


def test_cli_simulate_capacity_and_horizon() -> None:
    """simulate --capacity --horizon: the JSON carries both; a bad value is a usage error."""
    res = CliRunner().invoke(
        fleet_app(),
        [
            *("simulate", "--nodes", "20", "--outage", "30s", "--fail-after", "5s"),
            *("--capacity", "115", "--horizon", "210s", "--slots", "index", "--json"),
            *("--set", "window.base=60s", "--set", "window.per_node=0s"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["capacity_per_minute"], doc["horizon_seconds"]) == (115.0, 210.0)
    assert doc["policies"]["systemd"]["recovered"] is False
    assert doc["policies"][PROBE]["recovered"] is True
    res = CliRunner().invoke(fleet_app(), ["simulate", "--nodes", "10", "--horizon", "never"])
    assert isinstance(res.exception, UsageError)
    assert "--horizon 'never'" in str(res.exception)
    res = CliRunner().invoke(fleet_app(), ["simulate", "--nodes", "10", "--capacity", "0"])
    assert res.exit_code == 2


# --- presentation ---------------------------------------------------------------------------


def test_sparkline_scales_to_the_peak_and_keeps_short_waves() -> None:
    """The peak is a full block, silence is blank, and a one-minute wave is not averaged away."""
    assert sparkline([0, 8, 4, 0], width=4) == " █▄ "
    line = sparkline([0] * 50 + [100] + [0] * 49 + [10] * 100, width=20)
    assert len(line) == 20
    assert line[5] == "█"
    assert line[0] == " "


def test_table_names_every_policy() -> None:
    """The default table has a row and a sparkline for every policy."""
    text = render_table(simulate(Scenario(nodes=20, outage=60.0), Fleet(window=120.0)))
    for name in POLICY_NAMES:
        rows = [ln for ln in text.splitlines() if ln.split("|")[0].split(" ")[0] == name]
        assert len(rows) == 2, name


def test_lone_crash_table_gives_the_waits() -> None:
    """lone-crash's table gives each policy's median, p90 and max wait and J."""
    result = simulate(Scenario(kind="lone-crash", nodes=100), Fleet(window=1200.0, admission=100.0))
    lines = render_table(result).splitlines()
    assert lines[0].startswith("lone-crash: one node of a 100-node fleet crashes")
    assert "100 trials" in lines[0]
    heads = ["policy", "median", "wait", "p90", "wait", "max", "wait", "starts/trial", "J"]
    assert lines[2].split() == heads
    gate = next(ln for ln in lines if ln.startswith(f"{PROBE} "))
    o = result.outcome(PROBE)
    assert o.waits is not None
    assert gate.split()[4:] == ["1.00", "1m40s"]
    assert f"{o.waits.median:.1f}s" in gate
    assert "starts per minute of wait" in render_table(result)


# --- the command line -----------------------------------------------------------------------


def fleet_app() -> typer.Typer:
    """A fresh app with only the fleet commands, as cli.py will register them."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Root."""

    register(app)
    return app


def test_cli_simulate_json(tmp_path: Path) -> None:
    """simulate --json prints one object; the window comes from the configuration."""
    res = CliRunner().invoke(
        fleet_app(),
        ["simulate", "--nodes", "100", "--json", "--config", str(tmp_path / "none.toml")],
    )
    assert res.exception is not None  # a named missing config file is an error
    res = CliRunner().invoke(
        fleet_app(),
        [
            *("simulate", "--nodes", "100", "--json", "--outage", "5m", "--slots", "index"),
            *("--set", "window.base=0s", "--set", "window.per_node=3s"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["window_seconds"] == 300.0
    assert doc["outage_seconds"] == 300.0
    assert doc["policies"][PROBE]["total_starts"] == 100
    assert doc["policies"][PROBE]["admission_seconds"] == pytest.approx(
        300.0 * ADMISSION_FRACTION_WITH_PROBE
    )


def test_cli_simulate_crash_live_json() -> None:
    """simulate --scenario crash-live --capacity --json: the control plane stays up, the gate
    with a probe is paced by it (no failed start), the restart loops are not."""
    res = CliRunner().invoke(
        fleet_app(),
        [
            *("simulate", "--scenario", "crash-live", "--nodes", "200", "--capacity", "8.76"),
            *("--horizon", "2h", "--json"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["scenario"], doc["outage_seconds"], doc["window_seconds"]) == (
        "crash-live",
        0.0,
        720.0,
    )
    gate = doc["policies"][PROBE]
    assert (gate["total_starts"], gate["failed_starts"], gate["recovered"]) == (200, 0, True)
    assert gate["all_healthy_at_seconds"] <= 40 * 60
    assert gate["probe_requests"] >= 200 and gate["admission_seconds"] == pytest.approx(
        720.0 * ADMISSION_FRACTION_WITH_PROBE
    )
    assert doc["policies"]["agent-supervisor"]["admission_seconds"] == 720.0
    assert doc["policies"]["systemd"]["recovered"] is False


def test_cli_admission_and_max_latency() -> None:
    """--admission sets J for both gates (as window.admission would), --max-latency the
    probe's threshold; J longer than W and --outage on a live scenario are usage errors."""
    res = CliRunner().invoke(
        fleet_app(),
        [
            *("simulate", "--scenario", "lone-crash", "--nodes", "50", "--json"),
            *("--admission", "2m", "--max-latency", "250ms"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["max_latency_seconds"] == 0.25
    assert doc["trials"] == 50
    for name in GATES:
        assert doc["policies"][name]["admission_seconds"] == 120.0
        assert doc["policies"][name]["first_start_wait_seconds"]["max"] < 120.0
    res = CliRunner().invoke(
        fleet_app(),
        ["simulate", "--nodes", "50", "--set", "window.admission=3m", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["policies"][PROBE]["admission_seconds"] == 180.0
    res = CliRunner().invoke(fleet_app(), ["simulate", "--nodes", "50", "--admission", "2h"])
    assert isinstance(res.exception, UsageError)
    assert "admission = 7200" in str(res.exception)
    res = CliRunner().invoke(
        fleet_app(), ["simulate", "--scenario", "crash-live", "--nodes", "10", "--outage", "5m"]
    )
    assert isinstance(res.exception, UsageError)
    assert "--outage does not go with --scenario crash-live" in str(res.exception)


def test_cli_simulate_restart_all_prints_the_table() -> None:
    """simulate --scenario restart-all --at 45m prints the table with the restart's column."""
    res = CliRunner().invoke(
        fleet_app(),
        ["simulate", "--scenario", "restart-all", "--at", "45m", "--nodes", "500"],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("restart-all: 500 nodes")
    assert "every supervisor restarted at 2700 s (minute 45)" in lines[0]
    assert "from restart" in lines[2]
    for name in POLICY_NAMES:
        assert sum(ln.split("|")[0].split(" ")[0] == name for ln in lines) == 2, name


def test_cli_simulate_restart_all_json_and_default_at() -> None:
    """--json says when the supervisors were restarted; --at defaults to 45 minutes."""
    res = CliRunner().invoke(
        fleet_app(), ["simulate", "--scenario", "restart-all", "--nodes", "50", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["scenario"], doc["restart_at_seconds"], doc["outage_seconds"]) == (
        "restart-all",
        2700.0,
        1800.0,
    )
    assert all(
        p["peak_starts_per_minute_from_restart"] is not None for p in doc["policies"].values()
    )


def test_cli_at_without_restart_all_is_a_usage_error() -> None:
    """--at only makes sense with --scenario restart-all."""
    res = CliRunner().invoke(fleet_app(), ["simulate", "--nodes", "10", "--at", "45m"])
    assert isinstance(res.exception, UsageError)
    assert "--at goes with --scenario restart-all" in str(res.exception)


def test_cli_simulate_bad_duration_is_a_usage_error() -> None:
    """An unparsable --outage is a usage error naming the option and the value."""
    res = CliRunner().invoke(fleet_app(), ["simulate", "--nodes", "10", "--outage", "soon"])
    assert isinstance(res.exception, UsageError)
    assert "--outage 'soon'" in str(res.exception)


def test_plot_hint_names_our_distribution() -> None:
    """The hint names the distribution, agent-start-gate: agent-supervisor on PyPI is an
    unrelated project (DESIGN.md, Names)."""
    assert PLOT_HINT == "--plot needs matplotlib: pip install 'agent-start-gate[plot]'"
    assert "agent-supervisor[" not in PLOT_HINT


def test_cli_plot_without_matplotlib_says_how_to_install(tmp_path: Path) -> None:
    """--plot without matplotlib is one clear error, before any simulation runs."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        res = CliRunner().invoke(
            fleet_app(), ["simulate", "--nodes", "10", "--plot", str(tmp_path / "p.png")]
        )
        assert isinstance(res.exception, UsageError)
        assert "pip install 'agent-start-gate[plot]'" in str(res.exception)
        return
    res = CliRunner().invoke(
        fleet_app(), ["simulate", "--nodes", "10", "--plot", str(tmp_path / "p.png")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot: " in res.stdout


def test_simulate_as_a_process() -> None:
    """agent-supervisor simulate --json runs as a real process and prints one object."""
    res = run_cli("simulate", "--nodes", "200", "--json", "--outage", "10m")
    assert res.code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["nodes"] == 200
    assert doc["policies"]["docker-always"]["total_starts"] > 200


def test_simulate_usage_error_as_a_process() -> None:
    """A bad option exits 2 with one line, never a traceback."""
    res = run_cli("simulate", "--nodes", "10", "--fail-after", "-5s")
    assert res.code == 2
    assert "Traceback" not in res.stderr
    assert res.stderr_lines == [
        "agent-supervisor: error: --fail-after '-5s': "
        "'-5s' is not a duration (use e.g. 500ms, 30s, 20m, 3h, 1d)"
    ]
