"""The command line: parse, call, print, exit. The only place errors become exit codes."""

from __future__ import annotations

import inspect
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, NoReturn

import typer

from supervisor.base import errors
from supervisor.base.catalog import EventId
from supervisor.base.errors import SupervisorError, UsageError, one_line
from supervisor.base.log import configure, get_logger
from supervisor.cli.common import (
    AgentOpt,
    JsonOpt,
    MetricsOpt,
    Settings,
    check_agent,
    duration_option,
    emit_json,
    with_settings,
)
from supervisor.containers import COMPOSE_MOUNT
from supervisor.core.durations import format_duration
from supervisor.core.policy import Decision, Policy, next_grid_slot, window_seconds
from supervisor.core.state import (
    AgentState,
    OperatorFlag,
    Run,
    ask_document,
    debug_document,
    flag_document,
    iso,
    iso_seconds,
)
from supervisor.gate.operators import Operator, authorize, current_operator
from supervisor.gate.service import (
    DEFAULT,
    Cancelled,
    Gate,
    GateResult,
    Inspect,
    OperatorResult,
)
from supervisor.storage.config import Config

app = typer.Typer(
    name="agent-supervisor",
    help="Gate every start of a node agent (cilium-agent) so that no event (an outage, a "
    "fleet-wide crash or restart) turns into a restart storm.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("agent-start-gate")
        except PackageNotFoundError:  # a checkout on the path, not installed
            installed = "unknown (not installed)"
        sys.stdout.write(f"agent-supervisor {installed} (distribution agent-start-gate)\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Gate every start of a node agent so that no event turns into a restart storm."""


#: Examples shown under each command's --help (typer keeps an epilog's blank lines).
EXAMPLES: Final[dict[str, str]] = {
    "gate": "Examples:\n\n"
    "  agent-supervisor gate --json    (may it start now? 0 yes, 75 not now)\n\n"
    "  agent-supervisor gate --wait -- cilium-agent --config-dir=/etc/cilium\n\n"
    '  agent-supervisor gate --force --reason "apiserver is back"',
    "status": "Examples:\n\n  agent-supervisor status\n\n"
    "  agent-supervisor status --json | jq .next_allowed_at",
    "override": 'Example:\n\n  agent-supervisor override --for 30m --reason "rollout CHG-42"',
    "hold": 'Examples:\n\n  agent-supervisor hold --reason "kernel upgrade"\n\n'
    '  agent-supervisor hold --for 2h --reason "etcd maintenance"',
    "release": 'Example:\n\n  agent-supervisor release --reason "maintenance done"',
    "reset": 'Example:\n\n  agent-supervisor reset --reason "node reinstalled"',
    "record-exit": "Example (systemd ExecStopPost=):\n\n"
    "  agent-supervisor record-exit --code=${EXIT_STATUS} --run-id=${AGENT_SUPERVISOR_RUN_ID}",
}


class _Interrupted(Exception):
    """SIGTERM or SIGINT arrived while the gate was waiting."""


def _countdown(d: Decision, now: float) -> None:
    """A one-line countdown on a terminal; logs carry the announcements (``gate.waiting``)."""
    if not sys.stderr.isatty():
        return
    target = d.next_allowed_at
    left = "until released" if target is None else f"in {format_duration(max(0, target - now))}"
    sys.stderr.write(f"\rwaiting: next start {left} ({d.reason})\x1b[K")
    sys.stderr.flush()


@app.command(epilog=EXAMPLES["gate"])
@with_settings()
def gate(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="after --: the command to exec once allowed", show_default=False),
    ] = None,
    agent: AgentOpt = "cilium-agent",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="block until allowed")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="operator override: allow this start whatever the backoff or a hold says",
        ),
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="why (with --force)")] = None,
    json_out: JsonOpt = False,
    env_file: Annotated[
        str | None,
        typer.Option(
            "--env-file",
            help="write AGENT_SUPERVISOR_RUN_ID=<id> of an approved start to this file "
            "(systemd EnvironmentFile=); emptied first on every call",
            show_default=False,
        ),
    ] = None,
    metrics_file: MetricsOpt = None,
    *,
    settings: Settings,
) -> None:
    """Decide whether the agent may start now; record the start before saying yes.

    Exit 0 allowed, 75 not now, 78 configuration or identity, 74 state I/O, 77 not permitted.
    The approved run's id is in the decision JSON and, for COMMAND, in its environment
    (AGENT_SUPERVISOR_RUN_ID); --env-file writes it for systemd's EnvironmentFile=.
    """
    agent = check_agent(agent)
    cfg = settings.load(*_with_metrics(metrics_file))
    if reason is not None and not force:
        raise UsageError("--reason goes with --force (operator actions have their own commands)")
    op = current_operator()
    service = _gate_service(cfg, agent, op)
    if env_file is not None:
        _write_env_file(env_file, None)  # a stale id must never close another run
    if force:
        _authorize_force(op, cfg)
    result = _wait(service, force, reason) if wait else service.decide(force=force, reason=reason)
    d = result.decision
    if d.event == EventId.GATE_IDENTITY_REFUSED:
        _refuse_identity(result)
    if env_file is not None and d.run_id is not None:
        _write_env_file(env_file, d.run_id)
    if json_out:
        emit_json(d.to_json())
    elif not command:
        run = f" (run {d.run_id})" if d.run_id else ""
        sys.stdout.write(("allowed: " if d.allowed else "not now: ") + d.reason + run + "\n")
    if not d.allowed:
        raise typer.Exit(errors.EXIT_NOT_NOW)
    if command and not d.start:
        sys.stderr.write(f"agent-supervisor: {d.reason}: not running {command[0]!r}\n")
        return
    if command:
        _exec(command, service, d.run_id)


def _gate_service(cfg: Config, agent: str, op: Operator) -> Gate:
    """The Gate for this call; a missing cluster_size is exit 78 here, before anything else.

    In the compose gate service (the project mounted at :data:`COMPOSE_MOUNT`), the look also
    says whether this ``up`` is about to replace the running agent: an upgrade is a start like
    any other. Only there is the compose model imported (the gate's start-up pays for it only
    where it is used).
    """
    hook: Inspect | None = None
    if cfg.docker_container and os.path.isdir(COMPOSE_MOUNT):
        from supervisor.containers.recreate import hook_inspector

        hook = hook_inspector(cfg)
    service = Gate(cfg, agent, operator=op, inspect=hook or DEFAULT)
    service.policy  # noqa: B018 - cluster_size missing -> 78 before anything else
    return service


def _authorize_force(op: Operator, cfg: Config) -> None:
    """``gate --force`` is an operator action: refused (exit 77, logged) to anyone else."""
    try:
        authorize(
            op,
            "gate --force",
            cfg.state_dir,
            cfg.operators_group,
            source=cfg.source_of("operators_group"),
        )
    except errors.NotPermitted:
        get_logger().warning(EventId.OPERATOR_REFUSED, action="gate --force", user=op.display)
        raise


def _refuse_identity(result: GateResult) -> NoReturn:
    """Exit 78 with what is wrong with the agent's certificate, in one line."""
    cert = result.certificate
    if cert is not None:
        from supervisor.node.identity import identity_message

        raise errors.IdentityError(identity_message(cert))
    raise errors.IdentityError(result.decision.reason)


def _write_env_file(path: str, run_id: str | None) -> None:
    """``--env-file``: the approved run's id for systemd (``EnvironmentFile=``), written whole;
    emptied first on every call, so that a refused or killed gate leaves no stale id."""
    from supervisor.base.files import atomic_write

    body = "" if run_id is None else f"AGENT_SUPERVISOR_RUN_ID={run_id}\n"
    try:
        atomic_write(path, body.encode(), mode=0o644)
    except OSError as exc:
        raise errors.StateError(f"cannot write --env-file {path}: {exc.strerror or exc}") from None


def _with_metrics(metrics_file: str | None) -> list[str]:
    return [f"metrics_file={metrics_file}"] if metrics_file else []


def _wait(service: Gate, force: bool, reason: str | None) -> GateResult:
    """``gate --wait``: SIGTERM/SIGINT end the wait at once and record nothing (exit 75).

    A signal that arrives while sleeping interrupts the sleep; one that arrives while deciding
    is noted, and the decision records nothing (:class:`Cancelled`).
    """
    flags = {"sleeping": False, "stop": False}

    def handler(signum: int, _frame: Any) -> None:
        if flags["sleeping"]:
            raise _Interrupted(signal.Signals(signum).name)
        flags["stop"] = True

    def sleep(seconds: float) -> None:
        if flags["stop"]:
            raise _Interrupted("signal")
        flags["sleeping"] = True
        try:
            time.sleep(seconds)
        finally:
            flags["sleeping"] = False

    waited = {"shown": False}

    def on_wait(d: Decision, now: float) -> None:
        waited["shown"] = True
        _countdown(d, now)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return service.wait(
            sleep=sleep,
            on_wait=on_wait,
            force=force,
            reason=reason,
            cancelled=lambda: flags["stop"],
        )
    except (_Interrupted, Cancelled) as exc:
        get_logger().info(
            EventId.GATE_WAIT_INTERRUPTED, agent=service.agent, signal=str(exc) or "signal"
        )
        raise typer.Exit(errors.EXIT_NOT_NOW) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if waited["shown"] and sys.stderr.isatty():
            sys.stderr.write("\n")


def _exec(command: list[str], service: Gate, run_id: str | None) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ)
    if run_id is not None:
        env["AGENT_SUPERVISOR_RUN_ID"] = run_id
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        # The start was recorded but the agent never ran: record its end so it is not mistaken
        # for a run that is still going.
        service.report_end(errors.EXIT_EXEC, run_id=run_id, source="exec")
        raise errors.ExecError(f"cannot exec {command[0]!r}: {exc.strerror}") from None


@app.command(epilog=EXAMPLES["status"])
@with_settings()
def status(
    agent: AgentOpt = "cilium-agent",
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """What the gate would say now, and why: window, slot, grid, level, runs, hold, override."""
    agent = check_agent(agent)
    cfg = settings.load()
    service = Gate(cfg, agent)
    policy, store = service.policy, service.store
    result = service.decide(record=False)
    state = result.state
    assert state is not None
    now = result.decision.decided_at or time.time()
    doc = _status_document(result, state, policy, now)
    doc["quarantined"] = store.quarantined_files(agent)
    doc["audit"] = store.audit_tail(5)
    if json_out:
        emit_json(doc)
        return
    lines = _status_lines(result, state, policy, now)
    sys.stdout.write("\n".join([*lines, *_status_footer(doc)]) + "\n")


def _active(flag: OperatorFlag | None, now: float) -> dict[str, Any] | None:
    """A hold or override as ``status --json`` shows it, or None if not in force."""
    return flag_document(flag) if flag is not None and flag.active(now) else None


def _status_document(
    result: GateResult, state: AgentState, policy: Policy, now: float
) -> dict[str, Any]:
    """``status --json``: the decision JSON and what explains it."""
    d = result.decision
    doc: dict[str, Any] = d.to_json()
    doc["running"] = None if result.docker in (None, "unknown") else result.docker == "running"
    doc["docker"] = result.docker
    doc["slot"] = {
        "mode": policy.slot_mode,
        "offset_seconds": round(policy.offset * policy.window, 3),
        "next_slot_at": iso(next_grid_slot(now, policy.window, policy.offset)),
        "next_admission_slot_at": iso(
            next_grid_slot(now, policy.admission_for(d.probe), policy.offset)
        ),
    }
    doc["runs"] = [
        {
            "id": r.id,
            "started_at": iso(r.started_at),
            "via": r.via,
            "ended_at": None if r.ended_at is None else iso(r.ended_at),
            "exit_code": r.exit_code,
            "seconds": None if r.ended_at is None else round(r.duration(now), 3),
            "end_source": r.end_source,
            "stop": r.stop,
        }
        for r in state.runs[-10:]
    ]
    doc["hold"] = _active(state.hold, now)
    doc["override"] = _active(state.override, now)
    if doc["override"] is not None:
        doc["override"]["in_effect"] = doc["hold"] is None
    doc["ask"] = ask_document(state.ask)
    doc["debug"] = debug_document(state.debug)
    doc["history_lost"] = state.history_lost
    doc["probe"] = (
        None if result.probe is None else {"answer": result.probe.answer, "why": result.probe.why}
    )
    doc["read_only"] = result.read_only
    if result.certificate is not None:
        doc["identity"] = result.certificate.to_json()
    return doc


def _status_lines(result: GateResult, state: AgentState, policy: Policy, now: float) -> list[str]:
    """The human form of ``status``: the decision, the flags, the last runs."""
    d = result.decision
    j = policy.admission_for(d.probe)
    out = [
        f"agent        {d.agent} on {d.node}",
        f"gate         {'ALLOWED' if d.allowed else 'NOT NOW'}: {d.reason}",
        f"window       {format_duration(d.window_seconds)} for {d.cluster_size} nodes "
        f"({d.cluster_size / d.window_seconds * 60:.1f} starts/min fleet-wide); "
        f"admission grid every {format_duration(j)}",
        f"slot         {policy.slot_mode}, {format_duration(policy.offset * policy.window)} "
        f"into each window, {format_duration(policy.offset * j)} into each admission period",
        f"backoff      level {d.backoff_level}",
    ]
    if result.docker is not None:
        out.append(f"container    {result.docker}")
    if d.next_allowed_at is not None:
        out.append(
            f"next start   {iso_seconds(d.next_allowed_at)} "
            f"(in {format_duration(d.next_allowed_at - now)}, {d.grid or 'operator'} grid)"
        )
    held = state.hold is not None and state.hold.active(now)
    for name, flag in (("hold", state.hold), ("override", state.override)):
        if flag is not None and flag.active(now):
            until = iso_seconds(flag.until) if flag.until is not None else "released"
            note = " (no effect while the hold is in force)" if name == "override" and held else ""
            out.append(f"{name:<12} by {flag.user} until {until}: {flag.reason}{note}")
    if state.debug is not None:
        dbg = state.debug
        also = "" if d.agent == "cilium-agent" else f" --agent {d.agent}"
        out += [
            f"debug        by {dbg.user} since {iso_seconds(dbg.started_at)} "
            f"({format_duration(now - dbg.started_at)} ago): {dbg.reason}",
            f"             shell: docker exec -it {dbg.container} sh ({dbg.entrypoint} runs "
            f"there); end: agent-supervisor debug end{also}",
        ]
    if state.ask is not None:
        out.append(
            f"asked        {iso_seconds(state.ask.at)} ({format_duration(now - state.ask.at)} ago)"
        )
    if result.probe is not None:
        out.append(f"probe        {result.probe.answer}: {result.probe.why}")
    if result.certificate is not None:
        out.append(f"certificate  {result.certificate.summary()}")
    if result.read_only is not None:
        out.append(f"NOTE: read without the lock ({result.read_only})")
    out.append("last runs:" if state.runs else "last runs:   none")
    out += [_run_line(r, now) for r in state.runs[-5:]]
    return out


def _run_line(r: Run, now: float) -> str:
    """One run in the human ``status``: start, how long, how it ended, who let it start."""
    if r.ended_at is None:
        end, took = "end ?", "?"
    else:
        code = r.exit_code if r.exit_code is not None else "?"
        end, took = f"exit {code}", format_duration(r.duration(now))
        if r.stop is not None:
            end += f" ({r.stop})"
    return f"  {iso_seconds(r.started_at)}  {took:>8}  {end:<10} via {r.via}  run {r.id}"


def _status_footer(doc: dict[str, Any]) -> list[str]:
    """The audit tail and the warnings of the human ``status``."""
    out = []
    for entry in doc["audit"]:
        why = entry.get("reason")
        out.append(
            f"audit: {entry.get('time')} {entry.get('user')} {entry.get('command')}"
            + (f": {why}" if why else "")
        )
    for q in doc["quarantined"]:
        out.append(f"WARNING: a bad state file was moved aside to {q}")
    if doc["history_lost"]:
        out.append(
            "WARNING: history unknown since the state file was moved aside: the next start "
            "waits for this node's slot (gate --force or reset to skip)"
        )
    return out


def _operator_gate(agent: str, cfg: Config) -> Gate:
    """The Gate an operator command acts through (no probe, no Docker, no certificate)."""
    return Gate(cfg, agent, probe=None, inspect=None, identity=None, operator=current_operator())


def _duration_opt(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    seconds = duration_option(value, name)
    if seconds <= 0:
        raise UsageError(f"{name} {value!r}: must be longer than zero")
    return seconds


HoldForOpt = Annotated[
    str | None,
    typer.Option(
        "--for", help="how long, e.g. 30m, 2h (default: until released)", show_default=False
    ),
]
OverrideForOpt = Annotated[
    str | None,
    typer.Option("--for", help="how long, e.g. 30m, 2h (default: 1h)", show_default=False),
]
ReasonReq = Annotated[str, typer.Option("--reason", help="why (recorded and logged)")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="why (recorded and logged)")]


def _check_reason(reason: str | None, required: bool) -> str | None:
    if reason is not None and (not reason.strip() or "\n" in reason or len(reason) > 500):
        raise UsageError("--reason must be one line of 1 to 500 characters")
    if required and reason is None:
        raise UsageError("--reason is required")
    return reason


def _flag_command(kind: str, for_opt: Any, default: float | None, doc: str) -> Callable[..., None]:
    """``override`` or ``hold``: the same options, one flag each (``default``: --for's)."""

    def command(
        reason: ReasonReq,
        for_: Any = None,
        agent: AgentOpt = "cilium-agent",
        *,
        settings: Settings,
    ) -> None:
        agent, cfg = check_agent(agent), settings.load()
        _check_reason(reason, True)
        given = _duration_opt(for_, "--for")
        seconds = default if given is None else given
        gate = _operator_gate(agent, cfg)
        (gate.override if kind == "override" else gate.hold)(seconds, reason)
        until = "until released" if seconds is None else f"for {format_duration(seconds)}"
        sys.stdout.write(f"{kind} set {until}: {reason}\n")

    command.__annotations__["for_"] = for_opt
    command.__doc__ = doc
    command.__name__ = kind
    return with_settings()(command)


override = app.command("override", epilog=EXAMPLES["override"])(
    _flag_command(
        "override",
        OverrideForOpt,
        3600.0,
        "Let every start through until it expires (default 1h), whatever the backoff says.",
    )
)
hold = app.command("hold", epilog=EXAMPLES["hold"])(
    _flag_command(
        "hold",
        HoldForOpt,
        None,
        "Block every start but a forced one, until released (or for --for).",
    )
)


def _history_command(
    name: str, doc: str, act: Callable[[Gate, str | None], None]
) -> Callable[..., None]:
    """``release`` or ``reset``: an optional --reason and --agent, one operator action each."""

    def command(
        reason: ReasonOpt = None,
        agent: AgentOpt = "cilium-agent",
        *,
        settings: Settings,
    ) -> None:
        agent, cfg = check_agent(agent), settings.load()
        _check_reason(reason, False)
        act(_operator_gate(agent, cfg), reason)

    command.__doc__ = doc
    command.__name__ = name
    return with_settings()(command)


def _release(gate: Gate, reason: str | None) -> None:
    gate.release(reason)
    sys.stdout.write("hold and override cleared; the next start is asked for afresh\n")


def _reset(gate: Gate, reason: str | None) -> None:
    done: OperatorResult = gate.reset(reason)
    for dropped in done.dropped:
        sys.stdout.write(f"dropped {dropped}\n")
    sys.stdout.write("state reset" + (f"; backup at {done.backup}" if done.backup else "") + "\n")


release = app.command("release", epilog=EXAMPLES["release"])(
    _history_command("release", "Clear the hold and the override.", _release)
)
reset = app.command("reset", epilog=EXAMPLES["reset"])(
    _history_command(
        "reset", "Forget the agent's history (a backup is kept beside the state file).", _reset
    )
)


_SIGNALS = {s.name: int(s) for s in signal.Signals}


def parse_exit_status(text: str) -> int | None:
    """An exit status as systemd's ``$EXIT_STATUS`` gives it: a number or a signal name.

    A run killed by a signal becomes 128 + the signal number, as a shell reports it; an empty
    value (the service never started) is an unknown code.
    """
    text = text.strip()
    if not text:
        return None
    try:
        code = int(text, 10)
    except ValueError:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name not in _SIGNALS:
            raise UsageError(f"--code {text!r}: expected an exit status or a signal name") from None
        return 128 + _SIGNALS[name]
    if not 0 <= code <= 255:
        raise UsageError(
            f"--code {text!r}: an exit status is 0 to 255 (or a signal name such as TERM)"
        )
    return code


@app.command("record-exit", epilog=EXAMPLES["record-exit"])
@with_settings()
def record_exit(
    code: Annotated[
        str, typer.Option("--code", help="exit status or signal name (systemd: $EXIT_STATUS)")
    ],
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="the run that ended (AGENT_SUPERVISOR_RUN_ID); an empty value names none",
            show_default=False,
        ),
    ] = None,
    agent: AgentOpt = "cilium-agent",
    *,
    settings: Settings,
) -> None:
    """Record the end of a run (systemd ExecStopPost=).

    An empty --code (the agent never ran) records nothing; a run that is not open, or another
    run than the one named, is left as it is.
    """
    agent, cfg = check_agent(agent), settings.load()
    exit_code = parse_exit_status(code)
    named = (run_id or "").strip() or None
    done = Gate(cfg, agent, probe=None, identity=None).report_end(exit_code, run_id=named)
    if not done.recorded:
        sys.stdout.write(f"{done.why}; nothing recorded\n")
        return
    took = format_duration(done.seconds or 0.0)
    where = " in the journal (the state file is full; the next writer applies it)"
    sys.stdout.write(
        f"recorded exit {exit_code} of run {done.run_id} after {took}"
        + (where if done.journaled else "")
        + "\n"
    )


@app.command()
@with_settings(state=False, node=False)
def window(
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """The jitter window for a cluster size, and the fleet-wide start rate it implies."""
    cfg = settings.load()
    size = cfg.require_cluster_size()
    w = window_seconds(cfg.window, size)
    rate = size / w * 60
    if json_out:
        emit_json(
            {
                "cluster_size": size,
                "window_seconds": w,
                "starts_per_minute": round(rate, 3),
                "seconds_between_starts": round(w / size, 3),
            }
        )
        return
    sys.stdout.write(
        f"cluster of {size} nodes: window {format_duration(w)} ({w:g} s); "
        f"at most {rate:.1f} starts/min fleet-wide (one every {w / size:.2f} s)\n"
    )


# Commands owned by other modules: node config and identity, fleet planning, deployments.
_groups_added = False


def full_app() -> typer.Typer:
    """The whole program: the top-level commands and every group (node, fleet, deploy, debug).

    The groups' modules are imported here, on first use, not when this module is: the hot
    commands (gate, record-exit), run on every start of the agent, never pay for them.
    """
    global _groups_added
    if not _groups_added:
        from supervisor.cli import debug, deploy, fleet, node

        for group in (node, fleet, deploy, debug):
            group.register(app)
        _reflow_help(app)
        _groups_added = True
    return app


def reflowed(doc: str | None) -> str | None:
    """A docstring as --help shows it: each paragraph one flowing line (typer 0.28 keeps the
    source's line breaks inside a paragraph), indented lines (examples) kept as they are."""
    if not doc:
        return doc
    out = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines = paragraph.splitlines()
        keep = any(line.startswith(" ") for line in lines)
        out.append(paragraph if keep else " ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _reflow_help(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its groups) its reflowed docstring as help."""
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = reflowed(info.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"agent-supervisor: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


#: The commands a node runs on every start of the agent (ExecStartPre=, ExecStopPost=).
_HOT: Final[dict[str, Callable[..., None]]] = {"gate": gate, "record-exit": record_exit}


def _app_for(args: list[str]) -> typer.Typer:
    """The app to run: for a hot command, an app with that command alone.

    Typer builds the click command of every registered command (reading their type hints) on
    each run, about 25 ms for the 18 commands here, paid on every gate call. A hot command gets
    an app of its own, with the same function and options; everything else (and --help of the
    whole program) gets the full app.
    """
    if not args or args[0] not in _HOT:
        return full_app()
    hot = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    hot.callback()(_no_callback)  # keep the command name as a subcommand
    command: Callable[..., None] = _HOT[args[0]]
    hot.command(args[0], help=reflowed(command.__doc__), epilog=EXAMPLES[args[0]])(command)
    return hot


def _no_callback() -> None:
    """agent-supervisor: gate every start of a node agent."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``agent-supervisor`` console script."""
    configure()
    args = sys.argv[1:] if argv is None else argv
    try:
        _app_for(args)(args=args, prog_name="agent-supervisor")
    except SupervisorError as exc:
        msg = one_line(exc)
        get_logger().debug(EventId.CLI_ERROR, error=msg, exit_code=exc.exit_code)
        _fail(msg, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes one line
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (please report this)",
            errors.EXIT_INTERNAL,
        )
