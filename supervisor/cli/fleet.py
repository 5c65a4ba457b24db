"""Fleet commands: ``simulate`` (what a restart storm looks like) and ``plan`` (the window).

Parse, call, print: the work is in :mod:`supervisor.fleet.simulate` and
:mod:`supervisor.fleet.plan`.
``cli.py`` adds these commands with :func:`register`; errors are :class:`UsageError` and
:class:`ConfigError`, which the entry point turns into one line and an exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from supervisor.base.errors import UsageError
from supervisor.base.log import get_logger
from supervisor.cli.common import ConfigOpt, JsonOpt, SetOpt, duration_option, emit_json, load
from supervisor.core.policy import window_seconds
from supervisor.core.slots import SlotMode
from supervisor.fleet.scenarios import ScenarioKind

# The simulator and the planner are imported inside the commands: registering the commands
# runs on every gate call, and importing them there cost about 25 ms. The literals come from
# light modules.

#: Largest simulated fleet: beyond any real cluster, and about a minute of work here.
MAX_NODES = 1_000_000
#: The outage a scenario assumes when ``--outage`` is not given.
DEFAULT_OUTAGE = {"outage": "30m", "boot-storm": "30m", "rolling": "0s", "restart-all": "30m"}
#: When ``restart-all`` restarts every supervisor if ``--at`` is not given.
DEFAULT_RESTART_AT = "45m"

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


def simulate_command(
    nodes: NodesOpt = 5000,
    scenario: Annotated[
        ScenarioKind,
        typer.Option(
            "--scenario",
            help="outage: everything crashes at 0; boot-storm: every node boots within "
            "--boot-spread; rolling: agents restarted one by one, --interval apart; "
            "restart-all: outage, and every node's supervisor restarted at --at",
        ),
    ] = "outage",
    outage: Annotated[
        str | None,
        typer.Option(
            "--outage",
            help="how long the control plane is down from 0 (default 30m; rolling: 0s)",
            show_default=False,
        ),
    ] = None,
    fail_after: Annotated[
        str,
        typer.Option("--fail-after", help="a start while the control plane is down fails after"),
    ] = "60s",
    boot_spread: Annotated[
        str, typer.Option("--boot-spread", help="boot-storm: nodes boot within this time")
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
    json_out: JsonOpt = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="write starts per minute per policy to this PNG (needs the 'plot' extra)",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Simulate a fleet restart under agent-supervisor and today's alternatives.

    Runs the gate's real decision engine for every virtual node, beside models of Docker
    restart: always, kubelet CrashLoopBackOff, systemd Restart=always and full-jitter backoff,
    and counts the starts the control plane has to serve. The window, stable_after and
    max_multiplier come from the configuration (--config, --set window.base=..., ...).
    With --capacity the control plane is overloaded by a storm: the table says per policy
    whether and when the fleet recovered.
    """
    from supervisor.fleet.simulate import (
        Fleet,
        PlotUnavailableError,
        Scenario,
        render_table,
        require_matplotlib,
        simulate,
        write_plot,
    )

    kind = scenario
    if plot is not None:
        try:
            require_matplotlib()
        except PlotUnavailableError as exc:
            raise UsageError(str(exc)) from None
    if at is not None and kind != "restart-all":
        raise UsageError("--at goes with --scenario restart-all")
    cfg = load(config, None, nodes, None, sets)
    outage_text = outage if outage is not None else DEFAULT_OUTAGE[kind]
    try:
        sc = Scenario(
            kind=kind,
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
        try:
            write_plot(result, plot)
        except PlotUnavailableError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"--plot {str(plot)!r}: {exc.strerror or exc}") from None
        get_logger().info("simulate.plot_written", path=str(plot))
    if json_out:
        emit_json(result.to_json())
        return
    table = render_table(result)
    if plot is not None:
        # The picture replaces the sparklines: keep the table, say where the plot is.
        table = table.split("\n\nstarts per minute", 1)[0] + f"\n\nplot: {plot}\n"
    sys.stdout.write(table)


def plan_command(
    nodes: NodesOpt,
    max_start_rate: Annotated[
        float,
        typer.Option(
            "--max-start-rate",
            min=1.0,
            help="most agent starts a minute the control plane should see, fleet-wide",
        ),
    ],
    slots: SlotsOpt = "hash",
    outage: Annotated[
        str, typer.Option("--outage", help="the outage to state the recovery time for")
    ] = "30m",
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """The window configuration that keeps the fleet under a start rate, and its recovery time.

    Compares with the current configuration (--config, --set): whether it is within budget.
    """
    from supervisor.fleet.plan import plan as make_plan
    from supervisor.fleet.plan import render_plan

    cfg = load(config, None, nodes, None, sets)
    try:
        p = make_plan(
            nodes,
            max_start_rate,
            slots=slots,
            current=cfg.window,
            outage=duration_option(outage, "--outage"),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if json_out:
        emit_json(p.to_json())
    else:
        sys.stdout.write(render_plan(p))


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``plan`` to the command line."""
    app.command("simulate")(simulate_command)
    app.command("plan")(plan_command)
