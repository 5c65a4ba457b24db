"""The deployment commands: ``run`` (the Docker-watching daemon) and ``doctor``.

:func:`register` adds them to the main app; errors are raised as :class:`SupervisorError`
subclasses and become one line and an exit code in :func:`supervisor.cli.main`, like every
other command's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from supervisor.base import errors
from supervisor.base.errors import UsageError
from supervisor.cli.common import (
    AgentOpt,
    ClusterSizeOpt,
    ConfigOpt,
    JsonOpt,
    NodeNameOpt,
    SetOpt,
    StateDirOpt,
    check_agent,
    emit_json,
    load,
)

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


def run_command(
    container: ContainerOpt = None,
    compose_file: ComposeFileOpt = None,
    service: ServiceOpt = None,
    project_name: ProjectOpt = None,
    agent: AgentOpt = "cilium-agent",
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    cluster_size: ClusterSizeOpt = None,
    node_name: NodeNameOpt = None,
    sets: SetOpt = None,
) -> None:
    """Supervise the agent's container: on every exit record it, wait for the gate, start it.

    The container's restart policy must be "no" (exit 78 otherwise). SIGTERM/SIGINT stop the
    supervisor and leave the agent running. Docker being absent or restarting is waited out.
    """
    from supervisor.containers import daemon as docker_watch

    agent = check_agent(agent)
    if container is not None and compose_file is not None:
        raise UsageError("give either --container or --compose-file, not both")
    if (service is not None or project_name is not None) and compose_file is None:
        raise UsageError("--service and --project-name go with --compose-file")
    cfg = load(config, state_dir, cluster_size, node_name, sets)
    cfg.require_cluster_size()
    if compose_file is not None:
        target = docker_watch.compose_target(compose_file, service or "cilium-agent", project_name)
    else:
        name = container or cfg.docker_container
        if not name:
            raise UsageError(
                "run needs the agent's container: --container NAME, or --compose-file F "
                "[--service S], or docker.container in the config"
            )
        target = docker_watch.Target.by_name(name)
    raise typer.Exit(docker_watch.run(cfg, agent, target))


def doctor_command(
    compose_file: Annotated[
        Path, typer.Option("--compose-file", help="the compose file to check", show_default=False)
    ],
    service: ServiceOpt = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="how the agent is gated: compose (gate service + supervisor service), "
            "systemd (cilium-agent.service), daemon (agent-supervisor.service on the host)",
        ),
    ] = "compose",
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    cluster_size: ClusterSizeOpt = None,
    node_name: NodeNameOpt = None,
    sets: SetOpt = None,
) -> None:
    """List what in a compose deployment would bypass or break the gate, each with its fix.

    Exit 0 when clean, 1 when it found problems, 78 when the file is not a readable compose
    file.
    """
    from supervisor.containers import doctor

    if mode not in doctor.MODES:
        raise UsageError(f"--mode {mode!r}: expected one of {', '.join(doctor.MODES)}")
    cfg = load(config, state_dir, cluster_size, node_name, sets)
    compose = doctor.load_compose(compose_file)
    name = doctor.pick_service(compose, service)
    problems = doctor.diagnose(compose, name, mode=mode, cfg=cfg)  # type: ignore[arg-type]
    if json_out:
        doc = {
            "compose_file": str(compose_file),
            "service": name,
            "mode": mode,
            "ok": not problems,
            "problems": [p.to_json() for p in problems],
        }
        emit_json(doc)
    else:
        sys.stdout.write(doctor.render(compose, name, mode, problems))
    sys.stdout.flush()
    raise typer.Exit(errors.EXIT_PROBLEMS if problems else errors.EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``doctor`` to ``app``."""
    app.command("run")(run_command)
    app.command("doctor")(doctor_command)
