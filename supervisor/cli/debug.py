"""``debug start`` and ``debug end``: debugging the agent on the node, one command each.

The work is :mod:`supervisor.containers.debug`'s; this module parses, calls, prints. Exit
codes: 0 done (a session already in progress, or none to end, included); 1 Docker or systemd
did not do what was needed (the message says what, and what state the node is in); 2 usage
(no container known, a bad entrypoint, another entrypoint than the running session's); 74
state I/O; 77 not permitted; 78 configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

import typer

from supervisor.base.errors import UsageError
from supervisor.cli.common import AgentOpt, Settings, check_agent, graft_options, with_settings
from supervisor.cli.deploy import ContainerOpt
from supervisor.core.durations import format_duration
from supervisor.core.state import Run, iso_seconds

if TYPE_CHECKING:
    from supervisor.containers.debug import Workflow

app = typer.Typer(
    name="debug",
    help="Debug the agent on the node: hold the gate, stop the agent on purpose and run a debug "
    "container of its image (debug start); remove it and start the agent at once (debug end).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXAMPLES: Final = {
    "start": "Examples:\n\n"
    '  agent-supervisor debug start --reason "INC-42: identities leak"\n\n'
    '  agent-supervisor debug start --entrypoint "sleep 2h" --reason "INC-42"\n\n'
    "  agent-supervisor debug start --unit cilium-agent.service   (mode 1, another unit name)",
    "end": 'Example:\n\n  agent-supervisor debug end --reason "INC-42: found it"',
}

EntrypointOpt = Annotated[
    str | None,
    typer.Option(
        "--entrypoint",
        help="the debug container's command, shell words (default: sleep 10d)",
        show_default=False,
    ),
]
UnitOpt = Annotated[
    str | None,
    typer.Option(
        "--unit",
        help="the systemd unit that runs the agent (mode 1); default <agent>.service when "
        "systemd has it enabled or active",
        show_default=False,
    ),
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="why (recorded and logged)")]


def _reason(reason: str | None) -> str | None:
    if reason is not None and (not reason.strip() or "\n" in reason or len(reason) > 500):
        raise UsageError("--reason must be one line of 1 to 500 characters")
    return reason


def _unit(unit: str | None) -> str | None:
    if unit is not None and (not unit or not all(c.isalnum() or c in ":_.@-\\" for c in unit)):
        raise UsageError(f"--unit {unit!r}: not a systemd unit name")
    return unit


def _agent_opt(agent: str) -> str:
    return "" if agent == "cilium-agent" else f" --agent {agent}"


def _run_line(run: Run | None) -> str:
    if run is None:
        return "no run of the agent was open"
    end = "end not recorded" if run.ended_at is None else f"exit {run.exit_code}"
    how = f", {run.stop}" if run.stop else ""
    neutral = "stopped on purpose" if run.stopped_on_purpose else "NOT recorded as on purpose"
    return f"run {run.id} {end}{how}: {neutral}, the backoff level is unchanged"


@dataclass(frozen=True, slots=True)
class _Target:
    """The options that name the agent a debug command is about."""

    agent: str = "cilium-agent"
    container: str | None = None
    unit: str | None = None

    def workflow(self, settings: Settings) -> Workflow:
        """The debug workflow for this agent, with the command's configuration."""
        from supervisor.containers.debug import Workflow
        from supervisor.gate.operators import current_operator

        agent = check_agent(self.agent)
        return Workflow(
            settings.load(),
            agent,
            current_operator(),
            container=self.container,
            unit=_unit(self.unit),
        )


def _with_target(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a debug command --agent, --container and --unit, as one ``target`` argument."""
    options = {
        "agent": (AgentOpt, "cilium-agent"),
        "container": (ContainerOpt, None),
        "unit": (UnitOpt, None),
    }
    return graft_options(fn, options, "target", _Target)


@app.command("start", epilog=EXAMPLES["start"])
@with_settings()
@_with_target
def start(
    entrypoint: EntrypointOpt = None,
    reason: ReasonOpt = None,
    *,
    target: _Target,
    settings: Settings,
) -> None:
    """Hold the gate, stop the agent on purpose, run a debug container of its image.

    The debug container (debug-<agent container>) has the agent container's mounts, network,
    privileges, capabilities, pid/ipc mode, environment, user and working directory, and the
    given entrypoint; the history ignores it. In mode 1 the unit is stopped (systemctl stop)
    and stays stopped. Running it again while the session lasts is safe: it puts the session
    back as it was (agent stopped, debug container running).

    Exit 0 done (or in progress already), 1 Docker or systemd failed (the message says what
    state the node is in), 2 usage, 74 state I/O, 77 not permitted, 78 configuration.
    """
    import shlex

    flow = target.workflow(settings)
    agent = flow.agent
    done = flow.start(entrypoint, _reason(reason) or "no reason given")
    s = done.session
    if done.resumed:
        took = format_duration(max(0.0, flow.gate.clock() - s.started_at))
        head = f"debug session of {agent} in progress since {iso_seconds(s.started_at)} ({took})"
    else:
        head = f"debug session of {agent} started"
    lines = [
        f"{head} by {s.user}: {s.reason}",
        "gate: held until `agent-supervisor debug end`: no start but a forced one",
    ]
    if done.stopped is None:
        lines.append(f"agent: {done.agent_container} was not running")
    else:
        stopped = _run_line(done.stopped.run)
        lines.append(f"agent: {done.agent_container} stopped by {done.stopped.how}; {stopped}")
    lines += [
        f"debug container: {s.container} ({done.what}), image {s.image}, entrypoint {s.entrypoint}"
        f"; the mounts, network and privileges of {done.agent_container}",
        "",
        f"  {done.exec_line}",
        "",
    ]
    command = done.agent_command
    if command:
        args = f" -- {shlex.join(command[1:])}" if command[1:] else ""
        delve = (
            f'dlv exec "$(command -v {shlex.quote(command[0])})" --headless --listen=:2345 '
            f"--api-version=2 --accept-multiclient{args}"
        )
        lines += ["in it, the agent under delve (delve in the image, or docker cp it in):", ""]
        lines += [f"  {delve}", ""]
    lines.append(
        "end it (removes the debug container, releases the hold, starts the agent at once, "
        f"audited): agent-supervisor debug end{_agent_opt(agent)}"
    )
    sys.stdout.write("\n".join(lines) + "\n")


@app.command("end", epilog=EXAMPLES["end"])
@with_settings()
@_with_target
def end(
    reason: ReasonOpt = None,
    *,
    target: _Target,
    settings: Settings,
) -> None:
    """Remove the debug container, release the hold, start the agent at once (forced, audited).

    In mode 1 the unit is started (systemctl start) and its own gate lets it through. With no
    session in progress it says so and exits 0 (a debug container left behind is removed).

    Exit 0 done (or nothing to end), 1 Docker or systemd failed (the message says what state
    the node is in), 2 usage, 74 state I/O, 77 not permitted, 78 configuration.
    """
    flow = target.workflow(settings)
    agent = flow.agent
    done = flow.end(_reason(reason))
    lines = [f"removed debug container {name}" for name in done.removed]
    if done.session is None:
        lines.append(f"no debug session of {agent} in progress: nothing to end")
        sys.stdout.write("\n".join(lines) + "\n")
        return
    lines.append(
        f"debug session of {agent} by {done.session.user} ended after "
        f"{format_duration(done.lasted)}: hold released"
    )
    run = done.run
    named = "" if run is None else f" (run {run.id}, via {run.via})"
    if done.decision is not None and not done.decision.start:
        also = f"; {done.how}" if done.how else ""
        lines.append(f"agent: not started by debug end: {done.decision.reason}{also}")
    elif done.via == "force":
        lines.append(f"agent: started at once by {done.how}, a forced start{named}, audited")
    else:
        lines.append(
            f"agent: started at once by {done.how}{named}; the override is released, audited"
        )
    sys.stdout.write("\n".join(lines) + "\n")


def register(main: typer.Typer) -> None:
    """Add the ``debug`` commands to ``main``."""
    main.add_typer(app, name="debug")
