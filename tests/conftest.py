"""Shared fixtures: a CLI runner that starts real processes, and the Docker engine gate.

Integration tests that need Docker use the ``docker_client`` fixture: on a laptop without an
engine they skip; with ``AGENT_SUPERVISOR_REQUIRE_DOCKER=1`` (set by CI) the skip becomes a
failure, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REQUIRE_DOCKER = os.environ.get("AGENT_SUPERVISOR_REQUIRE_DOCKER") == "1"
#: CI runs as root and sets this: tests that need root (tmpfs, other users) must not skip.
REQUIRE_ROOT_TESTS = os.environ.get("AGENT_SUPERVISOR_REQUIRE_ROOT_TESTS") == "1"
NOBODY = 65534


def skip_or_fail(msg: str, strict: bool) -> None:
    """Skip on a laptop; fail where CI demands that every test runs."""
    if strict:
        pytest.fail(msg + " (CI requires this test to run)")
    pytest.skip(msg)


@dataclass(frozen=True)
class Result:
    """A finished CLI process."""

    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        """Non-empty stderr lines that are not structured log lines."""
        return [ln for ln in self.stderr.splitlines() if ln.strip() and not ln.startswith("{")]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any AGENT_SUPERVISOR_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    **kwargs: Any,
) -> Result:
    """Run ``python -m supervisor ARGS`` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else clean_env(),
        timeout=timeout,
        check=False,
        **kwargs,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh, not yet existing state directory."""
    return tmp_path / "state"


@pytest.fixture
def docker_client() -> Iterator[Any]:
    """A Docker SDK client for a running engine; skip (or fail under CI) without one."""
    from supervisor.docker_watch import connect_from_env

    try:
        # Probes the socket itself first: the SDK leaks the socket of a failed connect, which
        # pytest (warnings as errors) turns into a failure on a machine without Docker.
        client = connect_from_env(30)
        client.ping()
    except Exception as exc:
        msg = f"no Docker engine: {exc}"
        if REQUIRE_DOCKER:
            pytest.fail(msg + " (AGENT_SUPERVISOR_REQUIRE_DOCKER=1)")
        pytest.skip(msg)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a disk that really fills up."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root", REQUIRE_ROOT_TESTS)
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def nobody() -> int:
    """The uid of an unprivileged user that can still run this Python (root only)."""
    if os.geteuid() != 0:
        skip_or_fail("switching to another user needs root", REQUIRE_ROOT_TESTS)
    probe = subprocess.run(
        [sys.executable, "-c", "import supervisor.cli"],
        user=NOBODY,
        group=NOBODY,
        cwd="/",
        capture_output=True,
        check=False,
        env=clean_env(HOME="/nonexistent"),
    )
    if probe.returncode != 0:
        skip_or_fail(
            f"user {NOBODY} cannot run {sys.executable} (is /root 0700? "
            ".ci/run makes it traversable)",
            REQUIRE_ROOT_TESTS,
        )
    return NOBODY
