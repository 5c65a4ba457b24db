"""The lab's command line: fill, measure, plan, run every fleet, report.

python bench/lab                          # N=200, both scenarios, every policy, one by one
python bench/lab --nested                 # the same, fleets set up while others settle
python bench/lab --agents 20 --fleets crash-live,outage:restart-loop
python -m bench.lab --help                # the same program, from the repository's root
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from .base import BENCH, POLICIES, PREFIX, SCENARIOS, LabError, child_env, log, supervisor_cli
from .capacity import Capacity, Threshold, admission_share, choose_max_latency, measure
from .etcd import ETCD_MEMORY, Etcd
from .fleet import Setup
from .keyspace import fill
from .plot import write_crash_plot, write_outage_plot
from .report import (
    HEADLINES,
    admission,
    crash_target,
    finite,
    render_comparison,
    render_table,
    render_target,
    simulate_alongside,
)
from .scenarios import bound_for, fleets_at_once, run_all
from .summary import PolicyResult
from .supervisors import MODES, make_spawner

#: Production's start budget N/W: 5000 nodes in the default 60-minute window.
PRODUCTION_RATE: Final = 5000 / 60.0
#: The share of the measured capacity ``plan`` gets as its start rate. ``plan`` keeps the
#: busiest minute under the rate, but a resync fails within its client timeout (5 s): hashed
#: slots bunch within a minute, and a bunch beyond what etcd serves in 5 s times out whole.
#: ``simulate --capacity`` puts 200 agents at 110/min at about 1.03 resyncs each with 0.7,
#: 1.4 with 1.0.
BUDGET: Final = 0.7
#: The gate's ``probe.timeout`` default (one deadline per request).
PROBE_TIMEOUT: Final = 2.0


def parse_fleets(
    spec: str, scenarios: Sequence[str], policies: Sequence[str]
) -> list[tuple[str, str]]:
    """``--fleets``: ``SCENARIO`` (every policy of ``--policies``) or ``SCENARIO:POLICY``,
    comma-separated; without it every scenario of ``--scenarios`` with every policy."""
    if not spec:
        return [(s, p) for s in scenarios for p in policies]
    out: list[tuple[str, str]] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        scenario, _, policy = item.partition(":")
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        if policy and policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
        for p in [policy] if policy else policies:
            if (scenario, p) not in out:
                out.append((scenario, p))
    return sorted(out, key=lambda f: SCENARIOS.index(f[0]))


def parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog=prog,
        # --plot must not quietly mean --plot-dir: a run of 20 minutes would end in a traceback.
        allow_abbrev=False,
        description="A fleet in one box against a real etcd: what a restart storm does to it, "
        "and what the gate does (bench/lab/__init__.py says how).",
    )
    ap.add_argument("--agents", type=int, default=200, help="N stand-in agents (default 200)")
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default both)",
    )
    ap.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}"
    )
    ap.add_argument(
        "--fleets",
        default="",
        help="instead of --scenarios x --policies: SCENARIO or SCENARIO:POLICY, comma-separated "
        "(e.g. crash-live,outage:restart-loop)",
    )
    ap.add_argument("--outage", type=float, default=60.0, help="D: seconds etcd is down")
    ap.add_argument("--keys", type=int, default=20_000, help="keys under cilium/state/")
    ap.add_argument("--value-size", type=int, default=1024, help="bytes per value")
    ap.add_argument("--timeout", type=float, default=5.0, help="an agent's resync timeout")
    ap.add_argument(
        "--unreachable", type=float, default=5.0, help="an agent exits when etcd is away this long"
    )
    ap.add_argument(
        "--capacity",
        default="auto",
        help="full resyncs/min etcd serves: auto (measure), a number, or none (with --window "
        "and --max-latency)",
    )
    ap.add_argument(
        "--calibrate-seconds",
        type=float,
        default=10.0,
        help="how long each level of the capacity measure runs (default 10)",
    )
    ap.add_argument(
        "--max-latency",
        default="auto",
        help="the probe's probe.max_latency: auto (chosen from the measure, see "
        "bench/lab/capacity.py) or seconds",
    )
    ap.add_argument(
        "--probe-timeout",
        type=float,
        default=PROBE_TIMEOUT,
        help=f"the probe's probe.timeout (default {PROBE_TIMEOUT:g} s, the gate's)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=BUDGET,
        help=f"the share of the capacity the window is planned for (default {BUDGET:g})",
    )
    ap.add_argument(
        "--window",
        type=float,
        default=None,
        help="W in seconds (default: production's N/W, or plan's for the capacity if longer)",
    )
    ap.add_argument("--slots", choices=("hash", "index"), default="hash")
    ap.add_argument(
        "--stable-after",
        type=float,
        default=None,
        help="the gate's stable_after (default: 30 s, or W/6 if longer: production's 10m/60m)",
    )
    ap.add_argument(
        "--bound",
        type=float,
        default=None,
        help="recovered within this long of the event (default D + 2W + 60 s; D = 0 for "
        "crash-live)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds between a fleet's last start and its event (default: 2W + 5 s under "
        "the gate, so each agent's window slot has passed; 3 s otherwise)",
    )
    ap.add_argument("--quiet", type=float, default=10.0, help="healthy this long ends the watch")
    ap.add_argument("--parallel", type=int, default=2, help="agents resyncing at once at set-up")
    ap.add_argument(
        "--plot-dir",
        default=str(BENCH),
        help="where lab-N.png (outage) and lab-crash-live-N.png go (default bench/)",
    )
    ap.add_argument("--no-plot", action="store_true", help="no plot")
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    ap.add_argument("--no-simulate", action="store_true", help="skip simulate's comparison")
    ap.add_argument(
        "--nested",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="K",
        help="let fleets live at once (K of them; all without K), each set up and measured "
        "alone while the others settle: faster, the same figures",
    )
    ap.add_argument(
        "--observe",
        type=float,
        default=None,
        help="watch at most this long after recovery began (etcd back, or the crash; "
        "default: until the bound)",
    )
    ap.add_argument(
        "--supervisors",
        choices=MODES,
        default="warm",
        help="how each agent-supervisor call starts: warm (a fork of an interpreter that has "
        "imported the CLI: what a node pays beyond its start-up, default) or cold (a process "
        "per call, as systemd runs it)",
    )
    ap.add_argument("--etcd", default="etcd", help="the etcd binary")
    ap.add_argument(
        "--etcd-memory",
        type=float,
        default=ETCD_MEMORY / 2**30,
        help="GiB etcd may allocate before it dies as if OOM-killed (and is started again)",
    )
    ap.add_argument("--workdir", default=None, help="keep the run's files here")
    args = ap.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if unknown or not policies or not scenarios:
        ap.error(f"--scenarios/--policies: unknown {unknown} (known: {SCENARIOS}, {POLICIES})")
    try:
        args.fleet_list = parse_fleets(args.fleets, scenarios, policies)
    except ValueError as exc:
        ap.error(f"--fleets: {exc}")
    if not args.fleet_list:
        ap.error("--fleets: no fleet")
    if args.agents < 1 or args.outage < 0 or args.keys < 1 or args.timeout <= 0:
        ap.error("--agents, --keys and --timeout must be positive, --outage >= 0")
    if args.capacity == "none" and args.window is None:
        ap.error("--capacity none needs --window")
    if args.max_latency == "auto":
        args.max_latency_value = None
        if args.capacity != "auto":
            ap.error(
                "--max-latency auto is chosen from the measure: with --capacity given, "
                "give --max-latency too"
            )
    else:
        try:
            args.max_latency_value = float(args.max_latency)
        except ValueError:
            ap.error(f"--max-latency: {args.max_latency!r} is neither auto nor seconds")
        if not 0 < args.max_latency_value < args.probe_timeout:
            ap.error("--max-latency must be positive and below --probe-timeout")
    return args


def plan_window(cli: Sequence[str], agents: int, rate: float, slots: str) -> tuple[float, str]:
    """``agent-supervisor plan`` for the measured capacity: the window, and the command."""
    argv = [*cli, "plan", "--nodes", str(agents), "--max-start-rate", f"{rate:.0f}"]
    argv += ["--slots", slots, "--json"]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=child_env()
    )
    if out.returncode != 0:
        raise LabError(f"{shlex.join(argv)}: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    doc = json.loads(out.stdout)
    shown = ["agent-supervisor", *argv[len(cli) :]]
    return float(doc["window_seconds"]), shlex.join(shown)


def main(argv: Sequence[str] | None = None, prog: str = "python bench/lab") -> int:
    """Run the lab; 0 when it ran (whatever the policies did), 1 when it could not."""
    args = parse_args(argv, prog)
    binary = shutil.which(args.etcd)
    if binary is None:
        print(f"lab: no etcd binary {args.etcd!r} (apt-get install etcd-server)", file=sys.stderr)
        return 1
    command = shlex.join([*prog.split(), *(sys.argv[1:] if argv is None else argv)])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="agent-supervisor-lab-")) if own else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    etcds = [Etcd(workdir / "etcd-0-seed", binary, args.etcd_memory * 2**30)]
    try:
        return asyncio.run(lab(args, etcds, workdir, command, date))
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("lab: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        for etcd in etcds:
            etcd.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


async def lab(
    args: argparse.Namespace, etcds: list[Etcd], workdir: Path, command: str, date: str
) -> int:
    """Everything after the arguments: fill, measure, plan, run each fleet, report.

    ``etcds`` holds the seed etcd; every etcd made here is added, so the caller stops them all.
    """
    seed = etcds[0]
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        # SIGTERM ends the lab as Ctrl-C does: through every finally, every process stopped
        # by its pid.
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    cli = supervisor_cli()
    version = seed.version()
    header: list[str] = []

    def note(line: str) -> None:
        header.append(f"# {line}")
        log(line)

    note(
        f"lab {date} on {platform.node()}: {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {version}"
    )
    note(f"command: {command}")
    await seed.astart()
    filled = await asyncio.to_thread(fill, seed.url, args.keys, args.value_size)
    size = filled.bytes / 2**20
    note(
        f"keyspace: {filled.keys:,} keys under {PREFIX} ({size:.1f} MiB), filled in "
        f"{filled.seconds:.1f} s"
    )
    capacity: Capacity | None = None
    cap_value: float | None = None
    max_latency = args.max_latency_value
    shown = seed.range_url(PREFIX).replace(str(seed.client_port), "PORT")
    probe = f"{shown} (POST, limit 1, keys only)"
    if args.capacity == "auto":
        capacity = await measure(
            seed.client_port,
            args.timeout,
            seed.range_url(PREFIX),
            args.probe_timeout,
            seconds=args.calibrate_seconds,
        )
        cap_value = capacity.per_minute
        note(
            f"capacity: C = {capacity.describe()}; each level {args.calibrate_seconds:g} s, "
            f"within the {args.timeout:g} s timeout"
        )
    elif args.capacity != "none":
        cap_value = float(args.capacity)
        note(f"capacity: C = {cap_value:.0f} full resyncs/min (given)")
    if args.window is not None:
        window = float(args.window)
        window_line = f"window: W = {window:g} s (given)"
    else:
        # Production's ratio, or longer when what etcd serves here needs it: the capacity of
        # a shared 2-core box swings with its load (110 to 330 a minute measured), and a
        # window planned at an idle moment would overload it at a busy one.
        assert cap_value is not None
        planned, plan_cmd = plan_window(cli, args.agents, cap_value * args.budget, args.slots)
        production = round(args.agents / PRODUCTION_RATE * 60.0, 1)
        window = max(planned, production)
        window_line = (
            f"window: W = {window:g} s, the longer of production's ratio ({production:g} s) "
            f"and `{plan_cmd}` ({planned:g} s)"
        )
    j_probe, j_none = admission(window, probe=True), admission(window, probe=False)
    note(
        f"{window_line}; N/W = {args.agents / window * 60:.1f}/min (production: 5000 nodes / "
        f"60 min = {PRODUCTION_RATE:.1f}/min); J = {j_none:g} s without a probe, {j_probe:g} s "
        "with one (the gate's defaults)"
    )
    threshold: Threshold | None = None
    if max_latency is not None:
        note(f"probe: {probe}; probe.max_latency = {max_latency * 1000:.0f} ms (given)")
    elif capacity is not None:
        share = admission_share(capacity.per_minute, j_probe, args.agents)
        threshold = choose_max_latency(capacity, args.timeout, args.probe_timeout, share)
        max_latency = threshold.max_latency
        note(f"probe: {probe}; {threshold.describe(args.agents, j_probe, capacity.per_minute)}")
    else:
        raise LabError("no probe.max_latency (give --max-latency)")
    stable = args.stable_after if args.stable_after is not None else max(30.0, window / 6.0)
    config_file = workdir / "empty-config.toml"
    config_file.write_text("")
    setup = Setup(
        agents=args.agents,
        outage=args.outage,
        timeout=args.timeout,
        unreachable=args.unreachable,
        window=window,
        slots=args.slots,
        stable_after=stable,
        bound=args.bound,
        observe=args.observe,
        settle=args.settle,
        quiet=args.quiet,
        parallel=max(1, args.parallel),
        workdir=workdir,
        config_file=config_file,
        cli=tuple(cli),
        max_latency=max_latency,
        probe_timeout=args.probe_timeout,
    )
    alive = fleets_at_once(args.nested, len(args.fleet_list))
    nested = " (--nested: each set up and measured alone while others settle)"
    note(
        f"{args.agents} agents, resync timeout {args.timeout:g} s, an agent exits after "
        f"{args.unreachable:g} s without etcd; slots {args.slots}, stable_after {stable:g} s; "
        f"{len(args.fleet_list)} fleets, {alive} at once" + (nested if alive > 1 else "")
    )
    note(
        f"supervisors: {args.supervisors} ("
        + (
            "each agent-supervisor call a fork of an interpreter that imported the CLI: the "
            "CLI's own code, without the 150 ms of imports a node pays on its own core"
            if args.supervisors == "warm"
            else "each agent-supervisor call a process of its own, imports included"
        )
        + ")"
    )
    await seed.astop()
    fleets: list[tuple[str, str, Etcd]] = []
    for k, (scenario, policy) in enumerate(args.fleet_list):
        # Each fleet its own etcd on a copy of the filled data: the same keyspace, counters
        # of its own, and (--nested) one that stays up or down while another is measured.
        etcd = seed.copy_to(workdir / f"etcd-{k + 1}-{scenario}-{policy}")
        etcds.append(etcd)
        fleets.append((scenario, policy, etcd))
    errlog = (workdir / "forkserver.stderr.log").open("ab")
    spawner = await make_spawner(args.supervisors, cli, errlog)
    try:
        results = await run_all(setup, fleets, alive, spawner)
    finally:
        await spawner.close()
        errlog.close()
    out = ["\n".join(header), ""]
    sims: dict[str, tuple[str, dict[str, Any]]] = {}
    plots: dict[str, str] = {}
    for scenario in SCENARIOS:
        rows = [r for r in results if r.scenario == scenario]
        if not rows:
            continue
        bound = bound_for(scenario, setup)
        out += [
            f"## {HEADLINES[scenario].format(outage=args.outage)}; recovered = every agent "
            f"healthy within {bound:.0f} s",
            render_table(rows),
        ]
        target = crash_target(rows, setup, cap_value) if scenario == "crash-live" else None
        if target is not None:
            out.append(render_target(target))
        if cap_value is not None and not args.no_simulate:
            sim_cmd, sim = simulate_alongside(cli, setup, scenario, cap_value)
            sims[scenario] = (sim_cmd, sim)
            out += [f"# simulate beside it: {sim_cmd}", render_comparison(rows, sim)]
        if not args.no_plot:
            plot = _plot(args, scenario, rows, setup, filled.keys, size, cap_value, date, command)
            if plot is not None:
                plots[scenario] = plot
                out.append(f"plot: {plot}\n")
    sys.stdout.write("\n".join(out))
    if args.json:
        doc = _json_doc(setup, results, capacity, cap_value, sims, plots)
        doc.update(
            threshold=None if threshold is None else asdict(threshold),
            date=date,
            command=command,
            host=platform.node(),
            cpus=os.cpu_count(),
            etcd=version,
            fill=asdict(filled),
        )
        Path(args.json).write_text(json.dumps(finite(doc), indent=1, default=str) + "\n")
    return 0


def _plot(
    args: argparse.Namespace,
    scenario: str,
    rows: Sequence[PolicyResult],
    setup: Setup,
    keys: int,
    size: float,
    capacity: float | None,
    date: str,
    command: str,
) -> str | None:
    """The scenario's plot (see :mod:`plot`); its path, or None without matplotlib."""
    name = f"lab-{args.agents}.png" if scenario == "outage" else f"lab-crash-live-{args.agents}.png"
    path = Path(args.plot_dir) / name
    cap = "-" if capacity is None else f"{capacity:.0f}"
    what = f"etcd down {args.outage:g} s" if scenario == "outage" else "every agent killed at once"
    title = (
        f"lab, {scenario}: {args.agents} agents, {keys:,} keys ({size:.0f} MiB), {what}, "
        f"W = {setup.window:g} s, C = {cap}/min; {date}"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if scenario == "outage":
            write_outage_plot(rows, path, title, command, args.outage)
        else:
            target = crash_target(rows, setup, capacity)
            n_over_c = None if capacity is None else setup.agents / capacity * 60.0
            write_crash_plot(
                rows, path, title, command, n_over_c, None if target is None else target.seconds
            )
    except ImportError:
        log("plot: not written (pip install matplotlib, the 'plot' extra)")
        return None
    except OSError as exc:
        # The figures are printed and saved as JSON whatever becomes of the picture.
        log(f"plot: not written to {path}: {exc.strerror or exc}")
        return None
    return str(path)


def _json_doc(
    setup: Setup,
    results: Sequence[PolicyResult],
    capacity: Capacity | None,
    cap_value: float | None,
    sims: dict[str, tuple[str, dict[str, Any]]],
    plots: dict[str, str],
) -> dict[str, Any]:
    """Every figure of the run, as one JSON document (the caller adds where and when)."""
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        rows = [r for r in results if r.scenario == scenario]
        if not rows:
            continue
        target = crash_target(rows, setup, cap_value) if scenario == "crash-live" else None
        sim = sims.get(scenario)
        scenarios[scenario] = {
            "bound": bound_for(scenario, setup),
            "policies": {
                r.policy: {
                    **asdict(r),
                    "requests_per_agent": r.requests_per_agent,
                    "etcd_full": r.etcd_full,
                    "full_per_agent": r.full_per_agent,
                }
                for r in rows
            },
            "target": None if target is None else {**asdict(target), "met": target.met},
            "simulate_command": None if sim is None else sim[0],
            "simulate": None if sim is None else sim[1],
            "plot": plots.get(scenario),
        }
    return {
        "capacity": None if capacity is None else asdict(capacity),
        "capacity_per_minute": cap_value,
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(setup).items()},
        "admission": {
            "probe": admission(setup.window, probe=True),
            "no_probe": admission(setup.window, probe=False),
        },
        "scenarios": scenarios,
    }
