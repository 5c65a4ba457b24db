"""Engines that tests and CI stop or restart are their own; any other engine keeps running.

A bystander engine (its own socket, pid file and data root, started by the fixture) stands for
the machine's engine or another user's: whatever is stopped or restarted here, it keeps its pid
and keeps answering. The restart under the daemon itself is in test_docker_daemon.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import dockerutil
import pytest
from conftest import clean_env

CI_SCRIPT = dockerutil.REPO / ".ci" / "docker.sh"


def ci_env(tmp_path: Path, docker_host: str, **extra: str) -> dict[str, str]:
    """The environment for .ci/docker.sh: no installation, its pid file and log in tmp_path."""
    return clean_env(
        DOCKER_HOST=docker_host,
        DOCKER_CI_PIDFILE=str(tmp_path / "ci-dockerd.pid"),
        DOCKER_CI_LOG=str(tmp_path / "ci-dockerd.log"),
        DOCKER_CI_INSTALL="0",
        DOCKER_CI_WAIT="30",
        **extra,
    )


def ci(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``bash .ci/docker.sh COMMAND``."""
    return subprocess.run(
        ["bash", str(CI_SCRIPT), command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.docker
def test_restarting_an_own_engine_leaves_a_bystander_running(
    private_dockerd: dockerutil.PrivateDockerd, bystander_dockerd: dockerutil.PrivateDockerd
) -> None:
    """A restart of the test's own engine is a new dockerd on the same socket; the bystander
    keeps its pid and answers."""
    bystander = bystander_dockerd.pid
    before = private_dockerd.pid
    stopped = private_dockerd.stop()
    assert not dockerutil.process_running(before)
    started = private_dockerd.start()
    assert private_dockerd.pid != before
    assert private_dockerd.answers()
    dockerutil.assert_untouched(bystander_dockerd, bystander)
    print(f"\nown engine: stopped in {stopped:.2f}s, started in {started:.2f}s")


@pytest.mark.docker
def test_ci_script_uses_an_engine_it_did_not_start_and_leaves_it_running(
    bystander_dockerd: dockerutil.PrivateDockerd, tmp_path: Path
) -> None:
    """docker_ci_start finds an engine answering: it starts none and records no pid, and
    docker_ci_stop (the trap of .ci/run) leaves that engine running."""
    bystander = bystander_dockerd.pid
    env = ci_env(tmp_path, bystander_dockerd.host)
    script = 'source "$1" && pid="$(docker_ci_start)" && echo "started=$pid" && docker_ci_stop'
    r = subprocess.run(
        ["bash", "-c", script, "bash", str(CI_SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "started="
    assert "already answers" in r.stderr
    assert not (tmp_path / "ci-dockerd.pid").exists()
    assert not (tmp_path / "ci-dockerd.log").exists()  # no dockerd was started
    dockerutil.assert_untouched(bystander_dockerd, bystander)


@pytest.mark.docker
@pytest.mark.slow
def test_ci_script_stops_the_engine_it_started_and_no_other(
    bystander_dockerd: dockerutil.PrivateDockerd, tmp_path: Path
) -> None:
    """`docker.sh start` with nothing answering starts dockerd and records its pid; `stop`
    stops that dockerd, removes the record, and the bystander keeps running."""
    bystander = bystander_dockerd.pid
    # The layout of an engine of the test's own, started by the script instead of by Python.
    layout = dockerutil.PrivateDockerd("ci")
    env = ci_env(tmp_path, layout.host, DOCKER_CI_DOCKERD_ARGS=" ".join(layout.argv[1:]))
    pidfile = tmp_path / "ci-dockerd.pid"
    pid = 0
    try:
        started = ci("start", env)
        assert started.returncode == 0, started.stderr
        pid = int(started.stdout.strip())
        assert pidfile.read_text().strip() == str(pid)
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
        assert layout.answers()
        stopped = ci("stop", env)
        assert stopped.returncode == 0, stopped.stderr
        assert not dockerutil.process_running(pid)
        assert not pidfile.exists()
        assert not layout.answers()
        dockerutil.assert_untouched(bystander_dockerd, bystander)
    finally:
        # The script's dockerd is this test's own: if the script left it running, stop it.
        if pid and dockerutil.process_running(pid):
            os.kill(pid, signal.SIGTERM)
            dockerutil.wait_for(lambda: not dockerutil.process_running(pid), 60, "dockerd")
        layout.close()


def test_ci_script_never_stops_a_recorded_pid_that_is_no_dockerd(tmp_path: Path) -> None:
    """A stale record whose pid now names another process (pid reuse) is dropped, and that
    process is left alone."""
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            env = ci_env(tmp_path, f"unix://{tmp_path}/none.sock")
            (tmp_path / "ci-dockerd.pid").write_text(f"{other.pid}\n")
            r = ci("stop", env)
            assert r.returncode == 0, r.stderr
            assert other.poll() is None
            assert not (tmp_path / "ci-dockerd.pid").exists()
        finally:
            other.kill()
