"""The deployment commands: ``run`` (the Docker-watching daemon), ``doctor`` and ``migrate``.

:func:`register` adds them to the main app; errors are raised as :class:`SupervisorError`
subclasses and become one line and an exit code in :func:`supervisor.cli.app.main`, like every
other command's.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from supervisor.base import errors
from supervisor.base.errors import SupervisorError, UsageError
from supervisor.cli.common import (
    AgentOpt,
    JsonOpt,
    Settings,
    check_agent,
    config_path,
    emit_json,
    with_settings,
)

if TYPE_CHECKING:
    from supervisor.containers.doctor import Mode
    from supervisor.storage.config import Config

ContainerOpt = Annotated[
    str | None,
    typer.Option(
        "--container",
        help="the agent's container (name or id) [default: docker.container from the config]",
        show_default=False,
    ),
]
ComposeFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--compose-file",
        help="find the container by this compose file's labels",
        show_default=False,
    ),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(
        "--service", help="the agent's compose service [default: cilium-agent]", show_default=False
    ),
]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project-name",
        help="compose project name [default: as compose picks it]",
        show_default=False,
    ),
]


@with_settings()
def run_command(
    container: ContainerOpt = None,
    compose_file: ComposeFileOpt = None,
    service: ServiceOpt = None,
    project_name: ProjectOpt = None,
    agent: AgentOpt = "cilium-agent",
    *,
    settings: Settings,
) -> None:
    """Supervise the agent's container: on every exit record it, wait for the gate, start it.

    The container's restart policy must be "no" (exit 78 otherwise). SIGTERM/SIGINT stop the
    supervisor and leave the agent running. Docker being absent or restarting is waited out.
    """
    from supervisor.containers import daemon as docker_watch
    from supervisor.containers.compose import DEFAULT_SERVICE, Target, compose_target

    agent = check_agent(agent)
    if container is not None and compose_file is not None:
        raise UsageError("give either --container or --compose-file, not both")
    if (service is not None or project_name is not None) and compose_file is None:
        raise UsageError("--service and --project-name go with --compose-file")
    cfg = settings.load()
    cfg.require_cluster_size()
    if compose_file is not None:
        target = compose_target(compose_file, service or DEFAULT_SERVICE, project_name)
    else:
        name = container or cfg.docker_container
        if not name:
            raise UsageError(
                "run needs the agent's container: --container NAME, or --compose-file F "
                "[--service S], or docker.container in the config"
            )
        target = Target.by_name(name)
    raise typer.Exit(docker_watch.run(cfg, agent, target))


ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="how the agent is gated: compose (gate service + supervisor service), "
        "systemd (cilium-agent.service), daemon (agent-supervisor.service on the host)",
    ),
]


def _check_mode(mode: str) -> Mode:
    from supervisor.containers import doctor

    if mode not in doctor.MODES:
        raise UsageError(f"--mode {mode!r}: expected one of {', '.join(doctor.MODES)}")
    return mode  # type: ignore[return-value]


@with_settings()
def doctor_command(
    compose_files: Annotated[
        list[Path],
        typer.Option(
            "--compose-file",
            help="the compose file to check; repeat it for the files compose merges "
            "(-f a -f b), e.g. the original and the override migrate wrote",
            show_default=False,
        ),
    ],
    service: ServiceOpt = None,
    mode: ModeOpt = "compose",
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """List what in a compose deployment would bypass or break the gate, each with its fix.

    Also what it checked and found fine, and whether another package (supervisord's)
    uses the import name 'supervisor' in this Python environment.
    Exit 0 clean, 1 problems, 78 when a file is not a readable compose file.
    """
    from supervisor.containers import compose as compose_model
    from supervisor.containers import doctor

    checked_mode = _check_mode(mode)
    cfg = settings.load()
    compose = compose_model.load_compose(compose_files[0], extra=compose_files[1:])
    name = compose_model.agent_service(compose, service)
    report = doctor.examine(compose, name, mode=checked_mode, cfg=cfg)
    shadow = doctor.shadowing()
    problems = ([shadow] if shadow is not None else []) + list(report.problems)
    if json_out:
        doc = {
            "compose_file": str(compose_files[0]),
            "compose_files": [str(p) for p in compose.files],
            "service": name,
            "mode": mode,
            "ok": not problems,
            "problems": [p.to_json() for p in problems],
            "checked": list(report.fine),
            "notes": list(report.notes),
        }
        emit_json(doc)
    else:
        sys.stdout.write(doctor.render(compose, name, mode, problems, report.fine, report.notes))
    sys.stdout.flush()
    raise typer.Exit(errors.EXIT_PROBLEMS if problems else errors.EXIT_OK)


@with_settings(cluster=False, node=False)
def migrate_command(
    compose_file: Annotated[
        Path,
        typer.Option(
            "--compose-file", help="the node's compose file (never edited)", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="where to write the override (default: docker-compose.agent-supervisor.yml "
            "beside the compose file)",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the diff and the commands, write nothing")
    ] = False,
    mode: ModeOpt = "compose",
    service: ServiceOpt = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="the supervisor's image, built from compose/Dockerfile (default: "
            "agent-supervisor:VERSION, the tag compose/.env uses)",
            show_default=False,
        ),
    ] = None,
    agent: AgentOpt = "cilium-agent",
    cluster_size: Annotated[
        int | None,
        typer.Option(
            "--cluster-size",
            help="number of nodes, written to the config file when it has none",
            show_default=False,
        ),
    ] = None,
    *,
    settings: Settings,
) -> None:
    """Gate an existing compose deployment without losing anything of it.

    Writes an override beside the compose file, which is never edited: the agent's
    restart "no", and in compose mode the gate service it waits for and the supervisor.
    Every service, image, entrypoint, environment variable and mount of the original stays.
    Prints a diff of what compose runs before and after, and the commands to run next.
    Running it again changes nothing. Exit 0 done, 78 bad input, 2 usage.
    The cluster size must be in the config file, which the host and the containers read:
    --cluster-size N writes it there. The agent's container (docker.container) is written
    there too, so that the host's status sees the agent as the gate does.
    """
    from supervisor.containers import migrate

    checked_mode = _check_mode(mode)
    agent = check_agent(agent)
    config_file = config_path(settings.config)
    cfg = _load_maybe_missing(config_file, settings)
    wanted = migrate.Settings(
        mode=checked_mode,
        agent=agent,
        service=service,
        image=image or migrate.DEFAULT_IMAGE,
        state_dir=cfg.state_dir.absolute(),
        config_file=config_file.absolute(),
        identity_dirs=migrate.identity_dirs(cfg),
    )
    plan = migrate.plan(compose_file, wanted, out)
    warnings = [*plan.notes, *migrate.environment_only(cfg)]
    size = _cluster_size_step(config_file, cluster_size, dry_run, warnings)
    container = migrate.docker_container_step(config_file, plan.container)
    for w in warnings:
        sys.stderr.write(f"agent-supervisor: warning: {w}\n")
    sys.stdout.write(plan.diff() or "no change to what compose runs\n")
    if dry_run:
        verb = "would write" if plan.changed else "up to date:"
        lines = [f"dry run: {verb} {plan.out}"]
        if size is not None:
            lines.append(f"dry run: would add cluster_size = {size} to {config_file}")
        if container is not None:
            lines.append(f"dry run: would add docker.container = {container} to {config_file}")
    else:
        lines = []
        if size is not None:
            migrate.record_cluster_size(config_file, size)
            lines.append(f"added cluster_size = {size} to {config_file}")
        if container is not None:
            migrate.record_docker_container(config_file, container)
            lines.append(f"added docker.container = {container} to {config_file}")
        lines.append(f"wrote {plan.out}" if migrate.write(plan) else f"up to date: {plan.out}")
    sys.stdout.write("\n".join(["", *lines, *plan.commands()]) + "\n")
    sys.stdout.flush()


def _load_maybe_missing(path: Path, settings: Settings) -> Config:
    """The configuration of ``path``, or the environment's and defaults alone when ``path``
    does not exist yet (migrate --cluster-size creates it)."""
    import tempfile

    if path.exists():
        return replace(settings, config=str(path)).load()
    with tempfile.NamedTemporaryFile(suffix=".toml") as empty:
        return replace(settings, config=empty.name).load()


def _cluster_size_step(
    path: Path, explicit: int | None, dry_run: bool, warnings: list[str]
) -> int | None:
    """The size to write, if any; without one a real run refuses (78), a dry run warns."""
    from supervisor.containers import migrate

    if explicit is not None and explicit < 1:
        raise UsageError(f"--cluster-size {explicit}: must be at least 1")
    try:
        size = migrate.cluster_size_step(path, explicit)
    except SupervisorError as exc:
        if not dry_run:
            raise
        warnings.append(str(exc))
        return None
    return size


def register(app: typer.Typer) -> None:
    """Add ``run``, ``doctor`` and ``migrate`` to ``app``."""
    app.command("run")(run_command)
    app.command("doctor")(doctor_command)
    app.command("migrate")(migrate_command)
