"""Every stop recorded as what it was, whoever stops (invariant 12), under the daemon, on the
real engine.

The daemon (`agent-supervisor run --container`) watches the container's `kill` and `die`
events: a die after a stop signal is a stop made on purpose (neutral, not restarted), a signal
that stops nothing (`docker kill -s WINCH`) is not a stop, and a container removed right after
its die still has its end recorded. The host's `status` of a healthy agent under the daemon
(deployment mode 2) says running at level 0. The agent is the busybox stand-in of dockerutil;
what happened is read back from the state file, the daemon's log and `docker events`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import clean_env, run_cli
from test_docker_daemon import (
    AGENT,
    WINDOW,
    DaemonLog,
    _create,
    _run_args,
    _running,
    _sigterm,
)

from supervisor.storage.store import StateStore

#: The stop text the daemon records for a stop signal sent through Docker.
STOPPED_BY_TERM = "docker stop/kill (SIGTERM)"


def _exited(client: Any, name: str) -> bool:
    c = client.containers.get(name)
    return bool(c.attrs["State"]["Status"] == "exited")


def _gone(client: Any, name: str) -> bool:
    return not client.containers.list(all=True, filters={"name": f"^{name}$"})


def _level(state: Path, container: str) -> dict[str, Any]:
    """`status --json` as the host's operator runs it, Docker asked about ``container``."""
    r = run_cli(
        "status",
        "--json",
        *WINDOW,
        "--state-dir",
        str(state),
        env=clean_env(AGENT_SUPERVISOR_DOCKER_CONTAINER=container),
    )
    assert r.code == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


@pytest.mark.docker
def test_docker_stop_that_ends_in_sigkill_is_a_deliberate_stop(
    docker_client: Any, tmp_path: Path
) -> None:
    """`docker stop` of a container whose PID 1 ignores SIGTERM ends in SIGKILL after the
    timeout (exit 137): the daemon records a stop made on purpose, the level stays 0, and it
    does not start the container again."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("stop137")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    # `sleep` as PID 1 has no handler for TERM, and the kernel ignores it for PID 1.
    docker_client.containers.create(
        image,
        name=name,
        entrypoint=["sleep", "3600"],
        network_mode="none",
        restart_policy={"Name": "no"},
        stop_signal="SIGTERM",
    )
    sup = DaemonLog(log, state)
    try:
        with dockerutil.process(_run_args(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(
                lambda: "daemon.container_started" in sup.names(), 30, "the first start"
            )
            dockerutil.wait_for(lambda: _running(docker_client, name), 10, "the agent to run")
            docker_client.containers.get(name).stop(timeout=1)
            dockerutil.wait_for(
                lambda: "daemon.stopped_by_operator" in sup.names(),
                30,
                "the daemon to see the stop",
            )
            (run,) = sup.runs()
            assert (run.exit_code, run.stop, run.end_source) == (137, STOPPED_BY_TERM, "docker")
            doc = _level(state, name)
            assert (doc["backoff_level"], doc["running"]) == (0, False)
            assert proc.poll() is None
            assert _sigterm(proc) == 0
        assert _exited(docker_client, name)
        assert len(sup.runs()) == 1
    finally:
        dockerutil.remove_containers(docker_client, name)


@pytest.mark.docker
@pytest.mark.slow
def test_a_signal_that_stops_nothing_then_a_crash_is_restarted(
    docker_client: Any, tmp_path: Path
) -> None:
    """`docker kill -s WINCH` is not a stop: the agent keeps running, and when it crashes
    (exit 1) later the daemon records a failure and restarts it through the gate."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("winch")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    _create(docker_client, image, name, STANDIN_RUN_SECONDS="15", STANDIN_EXIT_CODE="1")
    sup = DaemonLog(log, state)
    try:
        t0 = time.time()
        with dockerutil.process(_run_args(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(lambda: _running(docker_client, name), 30, "the first start")
            docker_client.containers.get(name).kill(signal="SIGWINCH")
            time.sleep(1)
            assert _running(docker_client, name), "WINCH stopped the stand-in"
            dockerutil.wait_for(
                lambda: len(dockerutil.starts(docker_client, t0, time.time(), name)) >= 2,
                60,
                "the restart after the crash",
                interval=0.5,
            )
            assert _sigterm(proc) == 0
        first, second = sup.runs()[:2]
        assert (first.exit_code, first.stop, first.stopped_on_purpose) == (1, None, False)
        assert second.via == "gate"
        assert "daemon.stopped_by_operator" not in sup.names()
        kills = [
            e for e in dockerutil.events(docker_client, t0, time.time(), name) if e.action == "die"
        ]
        assert kills and kills[0].exit_code == 1
    finally:
        dockerutil.remove_containers(docker_client, name)


@pytest.mark.docker
def test_a_container_removed_at_its_stop_still_has_its_end_recorded(
    docker_client: Any, tmp_path: Path
) -> None:
    """`docker rm -f` (SIGKILL, then the container is gone before the daemon can look at it):
    the run's end is recorded from the die event, as a stop made on purpose."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("removed")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    _create(docker_client, image, name)
    sup = DaemonLog(log, state)
    try:
        with dockerutil.process(_run_args(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(lambda: _running(docker_client, name), 30, "the first start")
            dockerutil.wait_for(lambda: sup.runs() and sup.runs()[0].container, 10, "the bind")
            docker_client.containers.get(name).remove(force=True)
            dockerutil.wait_for(lambda: _gone(docker_client, name), 10, "the removal")
            dockerutil.wait_for(
                lambda: sup.runs()[0].ended_at is not None, 20, "the end to be recorded"
            )
            assert _sigterm(proc) == 0
        (run,) = sup.runs()
        assert (run.exit_code, run.stop) == (137, "docker stop/kill (SIGKILL)")
        assert run.stopped_on_purpose
    finally:
        dockerutil.remove_containers(docker_client, name)


@pytest.mark.docker
def test_status_of_a_healthy_agent_under_the_daemon_says_running_at_level_0(
    docker_client: Any, tmp_path: Path
) -> None:
    """Mode 2: with docker.container in the one config.toml, the host's `status --json` of
    the agent the daemon started says running at level 0, and so does the backoff_level
    metric."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("healthy")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    metrics = tmp_path / "metrics.prom"
    config = tmp_path / "config.toml"
    config.write_text(
        'cluster_size = 1\nnode_name = "as-test-node"\n'
        f'metrics_file = "{metrics}"\n'
        '[window]\nbase = "3s"\nper_node = "0s"\nmin = "1s"\n'
        f'[docker]\ncontainer = "{name}"\n'
    )
    host = ["--config", str(config), "--state-dir", str(state)]
    _create(docker_client, image, name)
    sup = DaemonLog(log, state)
    try:
        argv = dockerutil.cli_argv("run", *host)
        with dockerutil.process(argv, clean_env(), log) as proc:
            dockerutil.wait_for(lambda: _running(docker_client, name), 30, "the first start")
            dockerutil.wait_for(lambda: sup.runs() and sup.runs()[0].container, 10, "the bind")
            r = run_cli("status", "--json", *host)
            assert r.code == 0, r.stderr
            doc = json.loads(r.stdout)
            assert (doc["running"], doc["backoff_level"], doc["reason"]) == (
                True,
                0,
                "already running",
            )
            gauge = f'agent_supervisor_backoff_level{{agent="{AGENT}"}} 0.0'
            assert gauge in metrics.read_text().splitlines()
            assert _sigterm(proc) == 0
        assert _running(docker_client, name)
        assert len(StateStore(state).read(AGENT).state.runs) == 1
    finally:
        dockerutil.remove_containers(docker_client, name)


@pytest.mark.docker
def test_a_stop_made_while_no_daemon_ran_is_learnt_from_the_engines_events(
    docker_client: Any, tmp_path: Path
) -> None:
    """The supervisor is down (being recreated) when the agent is stopped with `docker stop`
    (137: its PID 1 ignores SIGTERM): the next daemon replays the engine's events, records a
    stop made on purpose, and does not start the stopped agent again."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("replay")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    docker_client.containers.create(
        image,
        name=name,
        entrypoint=["sleep", "3600"],
        network_mode="none",
        restart_policy={"Name": "no"},
        stop_signal="SIGTERM",
    )
    sup = DaemonLog(log, state)
    try:
        with dockerutil.process(_run_args(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(lambda: _running(docker_client, name), 30, "the first start")
            dockerutil.wait_for(lambda: sup.runs() and sup.runs()[0].container, 10, "the bind")
            assert _sigterm(proc) == 0
        docker_client.containers.get(name).stop(timeout=1)
        assert _exited(docker_client, name)
        assert sup.runs()[0].ended_at is None  # nobody recorded it yet
        with dockerutil.process(_run_args(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(
                lambda: "daemon.stopped_by_operator" in sup.names(), 30, "the daemon's look"
            )
            assert _sigterm(proc) == 0
        (run,) = sup.runs()
        assert (run.exit_code, run.stop, run.end_source) == (137, STOPPED_BY_TERM, "docker")
        assert _exited(docker_client, name)
    finally:
        dockerutil.remove_containers(docker_client, name)
