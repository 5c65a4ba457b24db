"""Fleet commands: ``simulate`` (what a restart storm looks like) and ``plan`` (the window).

Parse, call, print: the work is in :mod:`supervisor.fleet.simulate` and
:mod:`supervisor.fleet.plan`.
``cli.py`` adds these commands with :func:`register`; errors are :class:`UsageError` and
:class:`ConfigError`, which the entry point turns into one line and an exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from supervisor.base.catalog import EventId
from supervisor.base.errors import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEMS, UsageError
from supervisor.base.log import get_logger
from supervisor.cli.common import (
    AgentOpt,
    JsonOpt,
    Settings,
    check_agent,
    duration_option,
    emit_json,
    with_settings,
)
from supervisor.core.policy import window_seconds
from supervisor.core.slots import SlotMode
from supervisor.fleet.scenarios import DEFAULT_OUTAGE, DESCRIPTIONS, LIVE, ScenarioKind

if TYPE_CHECKING:
    from supervisor.fleet.plan import FleetCheck, Plan, Problem
    from supervisor.fleet.simulate import SimulationResult
    from supervisor.storage.config import Config

# The simulator and the planner are imported inside the commands: registering the commands
# runs on every gate call, and importing them there cost about 25 ms. The literals come from
# light modules.

#: Largest simulated fleet: beyond any real cluster, and about a minute of work here.
MAX_NODES = 1_000_000
#: When ``restart-all`` restarts every supervisor if ``--at`` is not given.
DEFAULT_RESTART_AT = "45m"
#: A configured duration, which some settings leave unset (None: the simulator's default).
_Configured = TypeVar("_Configured", float, float | None)

NodesOpt = Annotated[
    int,
    typer.Option("--nodes", min=1, max=MAX_NODES, help="number of nodes in the fleet"),
]
SlotsOpt = Annotated[
    SlotMode,
    typer.Option(
        "--slots",
        help="slot offsets: hash (default), index (exact ordinals), address (IPv4 block)",
    ),
]


@with_settings(state=False, cluster=False, node=False)
def simulate_command(
    nodes: NodesOpt = 5000,
    scenario: Annotated[
        ScenarioKind,
        typer.Option(
            "--scenario",
            help="; ".join(f"{name}: {what}" for name, what in DESCRIPTIONS.items()),
        ),
    ] = "outage",
    outage: Annotated[
        str | None,
        typer.Option(
            "--outage",
            help="how long the control plane is down from 0 (default 30m; rolling: 0s; "
            "power-loss: how long the power is off, default 2h; crash-live, restart and "
            "lone-crash keep the control plane up)",
            show_default=False,
        ),
    ] = None,
    fail_after: Annotated[
        str,
        typer.Option("--fail-after", help="a start while the control plane is down fails after"),
    ] = "60s",
    boot_spread: Annotated[
        str,
        typer.Option("--boot-spread", help="boot-storm, power-loss: nodes boot within this time"),
    ] = "60s",
    interval: Annotated[
        str, typer.Option("--interval", help="rolling: time between two nodes' restarts")
    ] = "1s",
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="restart-all: when every node's supervisor is restarted (default 45m)",
            show_default=False,
        ),
    ] = None,
    slots: SlotsOpt = "hash",
    unused_addresses: Annotated[
        float,
        typer.Option(
            "--unused-addresses",
            min=0.0,
            max=0.99,
            help="with --slots address: fraction of the block's addresses unused, at random",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="seed of every random choice")] = 1,
    capacity: Annotated[
        float | None,
        typer.Option(
            "--capacity",
            min=0.001,
            help="full resyncs a minute the control plane works through once up, in order: "
            "a start whose resync is not done within --fail-after fails (default: unlimited)",
            show_default=False,
        ),
    ] = None,
    horizon: Annotated[
        str | None,
        typer.Option(
            "--horizon",
            help="simulate until (default: far past any recovery; with --capacity, an hour "
            "past the outage and the longest backoff)",
            show_default=False,
        ),
    ] = None,
    admission: Annotated[
        str | None,
        typer.Option(
            "--admission",
            help="J, the admission grid's period (window.admission; default: W without a "
            "probe, a fraction of W with one)",
            show_default=False,
        ),
    ] = None,
    max_latency: Annotated[
        str | None,
        typer.Option(
            "--max-latency",
            help="probe.max_latency: the probe says 'loaded' when a request would wait longer "
            "behind the resyncs queued at the control plane (default from the configuration)",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="write starts per minute per policy to this PNG (needs the 'plot' extra)",
            show_default=False,
        ),
    ] = None,
    *,
    settings: Settings,
) -> None:
    """Simulate a fleet restart under agent-supervisor and today's alternatives.

    Runs the gate's real decision engine for every virtual node, beside models of Docker
    restart: always, kubelet CrashLoopBackOff, systemd Restart=always and full-jitter backoff,
    and counts the starts the control plane has to serve. The window, stable_after and
    max_multiplier come from the configuration (--config, --set window.base=..., ...).
    With --capacity the control plane is overloaded by a storm: the table says per policy
    whether and when the fleet recovered. The probe of agent-supervisor+probe asks the same
    queue: "loaded" when its request would wait longer than --max-latency.
    """
    from supervisor.fleet.simulate import Fleet, Scenario, simulate

    _check_scenario_options(scenario, outage=outage, at=at, plot=plot)
    cfg = settings.load(cluster_size=nodes)
    outage_text = outage if outage is not None else DEFAULT_OUTAGE[scenario]
    try:
        sc = Scenario(
            kind=scenario,
            nodes=nodes,
            outage=duration_option(outage_text, "--outage"),
            fail_after=duration_option(fail_after, "--fail-after"),
            boot_spread=duration_option(boot_spread, "--boot-spread"),
            rolling_interval=duration_option(interval, "--interval"),
            restart_at=duration_option(at if at is not None else DEFAULT_RESTART_AT, "--at"),
            capacity=capacity,
        )
        fleet = Fleet(
            window=window_seconds(cfg.window, nodes),
            slots=slots,
            unused_addresses=unused_addresses,
            stable_after=cfg.stable_after,
            max_multiplier=cfg.max_multiplier,
            admission=_duration_or(admission, "--admission", cfg.window.admission),
            max_latency=_duration_or(max_latency, "--max-latency", cfg.probe.max_latency),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if unused_addresses and slots != "address":
        raise UsageError("--unused-addresses goes with --slots address")
    until = None if horizon is None else duration_option(horizon, "--horizon")
    if until is not None and until <= 0:
        raise UsageError(f"--horizon {horizon!r}: must be positive")
    result = simulate(sc, fleet, seed=seed, horizon=until)
    if plot is not None:
        _write_plot(result, plot)
    _print_simulation(result, json_out=json_out, plot=plot)


def _check_scenario_options(
    kind: ScenarioKind, *, outage: str | None, at: str | None, plot: Path | None
) -> None:
    """Usage errors of options that do not go with the scenario, before the configuration is
    read; a missing matplotlib is said before the simulation, not after a minute of work."""
    from supervisor.fleet.simulate import PlotUnavailableError, require_matplotlib

    if plot is not None:
        try:
            require_matplotlib()
        except PlotUnavailableError as exc:
            raise UsageError(str(exc)) from None
    if at is not None and kind != "restart-all":
        raise UsageError("--at goes with --scenario restart-all")
    if outage is not None and kind in LIVE:
        raise UsageError(f"--outage does not go with --scenario {kind}: the control plane stays up")


def _duration_or(text: str | None, option: str, configured: _Configured) -> _Configured:
    """The duration ``option`` gives, else the configured one (None: the simulator's default):
    the simulated gates are the configured gates unless an option says otherwise."""
    return configured if text is None else duration_option(text, option)


def _write_plot(result: SimulationResult, plot: Path) -> None:
    """Write the PNG of ``--plot`` and log where; a file that cannot be written is a usage
    error naming it."""
    from supervisor.fleet.simulate import PlotUnavailableError, write_plot

    try:
        write_plot(result, plot)
    except PlotUnavailableError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--plot {str(plot)!r}: {exc.strerror or exc}") from None
    get_logger().info(EventId.SIMULATE_PLOT_WRITTEN, path=str(plot))


def _print_simulation(result: SimulationResult, *, json_out: bool, plot: Path | None) -> None:
    """The result as JSON, or as the table (without the sparklines when a plot was written)."""
    from supervisor.fleet.simulate import render_table

    if json_out:
        emit_json(result.to_json())
        return
    table = render_table(result)
    if plot is not None:
        # The picture replaces the sparklines: keep the table, say where the plot is.
        table = table.split("\n\nstarts per minute", 1)[0] + f"\n\nplot: {plot}\n"
    sys.stdout.write(table)


@with_settings(state=False, cluster=False, node=False)
def plan_command(
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes",
            min=1,
            max=MAX_NODES,
            help="number of nodes in the fleet (or --nodes-file)",
            show_default=False,
        ),
    ] = None,
    max_start_rate: Annotated[
        float | None,
        typer.Option(
            "--max-start-rate",
            min=1.0,
            help="most agent starts a minute the control plane should see, fleet-wide "
            "(needed unless --nodes-file is given)",
            show_default=False,
        ),
    ] = None,
    nodes_file: Annotated[
        str | None,
        typer.Option(
            "--nodes-file",
            help="check the fleet's real node names, one a line ('-' reads stdin): every "
            "node's slot as its gate computes it, the busiest minute against the slot mode's "
            "target. Exit 78 when the mode cannot give every node its own slot, 1 when the "
            "busiest minute is over the target (a warning only for hash slots)",
            show_default=False,
        ),
    ] = None,
    slots: Annotated[
        SlotMode | None,
        typer.Option(
            "--slots",
            help="slot offsets: hash, index (exact ordinals), address (IPv4 block) [default: "
            "hash; with --nodes-file, the configured slot_mode]",
            show_default=False,
        ),
    ] = None,
    agent: AgentOpt = "cilium-agent",
    outage: Annotated[
        str, typer.Option("--outage", help="the outage to state the recovery time for")
    ] = "30m",
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """The window configuration that keeps the fleet under a start rate, and its recovery time;
    with --nodes-file, what the slot mode makes of the fleet's real names.

    Compares with the current configuration (--config, --set): whether it is within budget.
    The check uses the configured window for cluster_size (else the number of names) and
    slot_mode (--slots overrides it); exact slots take the names' order as the ordinals.
    """
    from supervisor.fleet.plan import plan as make_plan
    from supervisor.fleet.plan import used_mode

    _check_plan_options(nodes, nodes_file, max_start_rate)
    check_agent(agent)
    names, repeats = ((), 0) if nodes_file is None else _read_names(nodes_file)
    cfg = settings.load(cluster_size=nodes)
    size = len(names) or nodes or 1
    setting = _slot_setting(slots, cfg, checking=nodes_file is not None)
    ordinals = cfg.slot_index is not None and cfg.slot_count is not None
    mode = used_mode(setting, ordinals=ordinals)
    p = check = None
    try:
        if max_start_rate is not None:
            p = make_plan(
                size,
                max_start_rate,
                slots=mode,
                current=cfg.window,
                outage=duration_option(outage, "--outage"),
            )
        if nodes_file is not None:
            check = _check_names(
                names,
                repeats,
                setting,
                cfg,
                p,
                agent=agent,
                size=size,
                ordinals=ordinals,
                nodes_file=nodes_file,
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _print_plan(p, check, json_out=json_out)
    if check is not None:
        raise typer.Exit(_check_exit_code(check.problems))


def _check_plan_options(
    nodes: int | None, nodes_file: str | None, max_start_rate: float | None
) -> None:
    """Either the fleet's size or its names, and a rate unless only the names are checked."""
    # typer's own usage errors, not ours: they exit 2 with the usage however plan is invoked,
    # as the missing options did when --nodes and --max-start-rate were both required.
    if nodes is not None and nodes_file is not None:
        raise typer.BadParameter("give --nodes or --nodes-file, not both", param_hint="'--nodes'")
    if nodes is None and nodes_file is None:
        raise typer.BadParameter(
            "give the fleet's size, or its names with --nodes-file", param_hint="'--nodes'"
        )
    if nodes_file is None and max_start_rate is None:
        raise typer.BadParameter(
            "needed to size a window (or check a fleet's names with --nodes-file)",
            param_hint="'--max-start-rate'",
        )


def _slot_setting(slots: SlotMode | None, cfg: Config, *, checking: bool) -> str:
    """The slot mode setting: --slots, else what the command is about. Without a file the
    sizing keeps its old default (hash); a fleet check is of the mode the fleet's gates use, so
    it defaults to the configured slot_mode."""
    return slots or (cfg.slot_mode if checking else "hash")


def _check_names(
    names: tuple[str, ...],
    repeats: int,
    setting: str,
    cfg: Config,
    p: Plan | None,
    *,
    agent: str,
    size: int,
    ordinals: bool,
    nodes_file: str,
) -> FleetCheck:
    """The fleet check of ``--nodes-file``: in the window the fleet's gates compute (for the
    configured cluster_size, else the number of names), against the plan's budget if any."""
    from supervisor.fleet.plan import check_fleet

    return check_fleet(
        names,
        setting,
        agent=agent,
        window=window_seconds(cfg.window, cfg.cluster_size or size),
        slot_count=cfg.slot_count,
        ordinals=ordinals,
        cluster_size=cfg.cluster_size,
        repeats=repeats,
        source="stdin" if nodes_file == "-" else nodes_file,
        budget=None if p is None else (p.max_start_rate, p.window),
    )


def _print_plan(p: Plan | None, check: FleetCheck | None, *, json_out: bool) -> None:
    """The plan, then the fleet check: one JSON document (the check as its ``fleet``), or the
    two texts one after the other; flushed before the exit code ends the process."""
    from supervisor.fleet.plan import render_check, render_plan

    if json_out:
        doc = {} if p is None else p.to_json()
        if check is not None:
            doc["fleet"] = check.to_json()
        emit_json(doc)
    else:
        text = "" if p is None else render_plan(p)
        if check is not None:
            text += render_check(check)
        sys.stdout.write(text)
    sys.stdout.flush()


def _read_names(path: str) -> tuple[tuple[str, ...], int]:
    """The names of ``--nodes-file`` (``-`` is stdin) and how many repeats; a usage error names
    the file and why."""
    from supervisor.fleet.plan import parse_node_names

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--nodes-file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--nodes-file {path!r}: not UTF-8 text ({exc.reason})") from None
    try:
        names, repeats = parse_node_names(text)
    except ValueError as exc:
        raise UsageError(f"--nodes-file {path!r}: {exc}") from None
    if len(names) > MAX_NODES:
        raise UsageError(f"--nodes-file {path!r}: {len(names)} names, at most {MAX_NODES}")
    return names, repeats


def _check_exit_code(problems: Iterable[Problem]) -> int:
    """78 when the mode cannot slot every node, 1 when over its target, else 0 (warnings)."""
    severities = {p.severity for p in problems}
    if "refused" in severities:
        return EXIT_CONFIG
    return EXIT_PROBLEMS if "over" in severities else EXIT_OK


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``plan`` to the command line."""
    app.command("simulate")(simulate_command)
    app.command("plan")(plan_command)
