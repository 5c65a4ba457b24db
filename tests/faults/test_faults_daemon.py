"""The daemon under faults, against the real Docker engine: recreated containers, a state
directory that turns read-only, and SIGKILL at random moments."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import clean_env
from test_docker_daemon import AGENT, WINDOW, DaemonLog

from supervisor.storage.store import StateStore


def create(client: Any, image: str, name: str, **env: str) -> Any:
    """A stand-in agent container with restart policy "no" and no network."""
    return client.containers.create(
        image,
        name=name,
        environment=env,
        network_mode="none",
        restart_policy={"Name": "no"},
        stop_signal="SIGTERM",
    )


def run_argv(name: str, state: Path) -> list[str]:
    """The daemon's command line for container ``name``."""
    return dockerutil.cli_argv("run", "--container", name, *WINDOW, "--state-dir", str(state))


def started_at(client: Any, name: str) -> str:
    """Docker's StartedAt of the container now holding ``name`` ('' when absent)."""
    try:
        return str(client.containers.get(name).attrs["State"]["StartedAt"])
    except Exception:
        return ""


@pytest.mark.docker
def test_container_removed_and_recreated_is_followed(docker_client: Any, tmp_path: Path) -> None:
    """After compose removes, recreates and starts the container, the daemon supervises the new
    one: its start is recorded, and when it crashes the daemon restarts it through the gate."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("recreate")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    create(docker_client, image, name)  # runs until stopped
    sup = DaemonLog(log, state)
    try:
        with dockerutil.process(run_argv(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(
                lambda: "daemon.container_started" in sup.names(), 30, "the first start"
            )
            docker_client.containers.get(name).remove(force=True)  # compose: stop, rm
            new = create(
                docker_client, image, name, STANDIN_RUN_SECONDS="1", STANDIN_EXIT_CODE="1"
            )  # compose: create ...
            new.start()  # ... and start (compose's own start, after its gate service)
            first = started_at(docker_client, name)
            dockerutil.wait_for(
                lambda: started_at(docker_client, name) not in ("", first),
                30,
                "the daemon to restart the crashed new container",
            )
            assert proc.poll() is None  # still supervising
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    finally:
        dockerutil.remove_containers(docker_client, name)
    runs = sup.runs()
    assert [r.via for r in runs][-2:] == ["docker", "gate"]  # outside-the-gate start, then gated
    assert runs[-2].exit_code == 1 and runs[-2].end_source == "docker"
    assert runs[-1].started_at - runs[-2].started_at >= 3.0 - 1e-6  # the window held


@pytest.mark.docker
def test_read_only_state_dir_leaves_the_agent_and_recovers(
    docker_client: Any, small_tmpfs: Path
) -> None:
    """With the state read-only the daemon touches nothing and reports; once writable it resumes."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("readonly")
    state, log = small_tmpfs / "state", small_tmpfs.parent / "daemon.log"
    create(docker_client, image, name, STANDIN_RUN_SECONDS="4", STANDIN_EXIT_CODE="1")
    sup = DaemonLog(log, state)
    remounted = False
    try:
        with dockerutil.process(run_argv(name, state), clean_env(), log) as proc:
            dockerutil.wait_for(
                lambda: "daemon.container_started" in sup.names(), 30, "the first start"
            )
            subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
            remounted = True
            before = (state / f"{AGENT}.json").read_bytes()
            # The stand-in exits after 4 s; the daemon cannot record it, so it must not start
            # the agent again (an unrecorded start would escape the window) and must say why.
            dockerutil.wait_for(
                lambda: "daemon.state_error" in sup.names(),
                30,
                "the daemon to report the read-only state",
            )
            assert not docker_client.containers.get(name).attrs["State"]["Running"]
            assert (state / f"{AGENT}.json").read_bytes() == before
            assert proc.poll() is None
            first_start = started_at(docker_client, name)
            subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
            remounted = False
            dockerutil.wait_for(
                lambda: started_at(docker_client, name) != first_start,
                60,
                "the daemon to resume and restart the agent",
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    finally:
        if remounted:
            subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=False)
        dockerutil.remove_containers(docker_client, name)
    runs = sup.runs()
    assert len(runs) >= 2 and runs[0].exit_code == 1


@pytest.mark.docker
def test_daemon_killed_at_random_moments_keeps_the_state(
    docker_client: Any, tmp_path: Path
) -> None:
    """15 SIGKILLs of the daemon while it supervises a crash loop: the state always reads back."""
    image = dockerutil.standin_image(docker_client)
    name = dockerutil.unique("kill9")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    create(docker_client, image, name, STANDIN_RUN_SECONDS="0.5", STANDIN_EXIT_CODE="1")
    rng = random.Random(9)
    try:
        for _ in range(15):
            with dockerutil.process(run_argv(name, state), clean_env(), log) as proc:
                time.sleep(rng.uniform(0.3, 2.5))
                proc.kill()
                proc.wait(timeout=15)
            if (state / f"{AGENT}.json").exists():
                tx = StateStore(state).read(AGENT)
                assert tx.quarantined == []
    finally:
        dockerutil.remove_containers(docker_client, name)
    tx = StateStore(state).read(AGENT)
    assert tx.quarantined == [] and tx.state.runs
    assert not list(state.glob(".*.tmp-*"))
    starts = [r.started_at for r in tx.state.runs if r.via == "gate"]
    assert all(b - a >= 3.0 - 1e-6 for a, b in itertools.pairwise(starts))
