"""Shared fixtures: a CLI runner that starts real processes, and the Docker engine gate.

Integration tests that need Docker use the ``docker_client`` fixture: on a laptop without an
engine they skip; with ``AGENT_SUPERVISOR_REQUIRE_DOCKER=1`` (set by CI) the skip becomes a
failure, so CI can never pass by silently skipping them.

Tests that stop, restart or kill an engine use ``private_dockerd``, an engine of their own, and
never the one in ``docker_client``: that one is the machine's, and other people's tests use it.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dockerutil import PrivateDockerd

REPO = Path(__file__).resolve().parent.parent

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


#: A short admission grid for tests whose subject is not the first start: a first start waits
#: for the node's admission slot (invariant 2), at most J, which this makes 300 ms.
QUICK_ADMISSION = ("--set", "window.admission=300ms")


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
    """Run ``python -m supervisor ARGS`` as a real process.

    With ``user`` (and ``group``), root runs it as that user through :func:`as_user`, which
    works wherever this Python is installed (pyenv under a 0700 /root included).
    """
    argv = [sys.executable, "-m", "supervisor", *args]
    if "user" in kwargs and os.geteuid() == 0:
        user = kwargs.pop("user")
        group = kwargs.pop("group", None)
        extra = kwargs.pop("extra_groups", None)
        argv = as_user(argv, user, group, extra)
    proc = subprocess.run(
        argv,
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
    from supervisor.gate.inspect import connect_from_env

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
    import dockerutil

    recorder = dockerutil.RECORDERS[id(client)] = dockerutil.Recorder(client)
    try:
        yield client
    finally:
        del dockerutil.RECORDERS[id(client)]
        recorder.close()
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


# --- running this Python as another user ---------------------------------------------------------


def _searchable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) may search the directory ``path``."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _on_the_way(path: str) -> set[str]:
    """Every entry that a lookup of ``path`` passes, each named in its real directory (a
    symlink as such, and then where it leads), "/" excluded."""
    out: set[str] = set()
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        prefix = os.path.join(*parts[:i])
        if not os.path.lexists(prefix):
            break
        parent = os.path.realpath(os.path.dirname(prefix))
        out.add(os.path.join(parent, os.path.basename(prefix)))
        real = os.path.realpath(prefix)
        out.update(p for p in (real, *map(str, Path(real).parents)) if p != "/")
    return out


@functools.cache
def _covers(uid: int, gid: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Directories on the way to this Python that ``uid`` may not search, shallowest first,
    each with the entries that must show through: every path the interpreter needs (itself,
    its prefixes, sys.path, this repository for the editable install) and every directory on
    the way to one. A prefix that cannot be searched itself shows all its entries."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(REPO)}
    wanted = {os.path.realpath(r) for r in roots if os.path.isdir(r)}
    needed: set[str] = set()
    for path in (sys.executable, *roots, *(p for p in sys.path if p)):
        needed.update(_on_the_way(os.path.abspath(path)))
    shown: dict[str, set[str]] = {}
    for path in needed:
        parent = os.path.dirname(path)
        if not _searchable(parent, uid, gid):
            shown.setdefault(parent, set()).add(os.path.basename(path))
        if path in wanted and not _searchable(path, uid, gid):
            shown.setdefault(path, set()).update(os.listdir(path))
    return tuple(
        (d, tuple(sorted(shown[d]))) for d in sorted(shown, key=lambda d: (d.count("/"), d))
    )


@functools.cache
def _reach_script(uid: int, gid: int) -> str | None:
    """bash, run as root in a mount namespace of its own, that makes this Python reachable for
    ``uid`` and then runs its arguments; None when nothing is in the way.

    Each directory in the way gets a tmpfs of mode 0755 over it that holds just the entries
    that must show through: each a bind mount of the original, reached through a descriptor
    opened before the tmpfs hid it (``--no-canonicalize``: mount would otherwise resolve
    /proc/self/fd/N to its path, which now names the empty stand-in), symlinks copied as such.
    The paths stay the same (the interpreter's RUNPATH and a venv's pyvenv.cfg are absolute);
    the user still cannot list what is not needed; and nothing changes outside the namespace,
    which ends with the process.
    """
    covers = _covers(uid, gid)
    if not covers:
        return None
    q = shlex.quote
    lines = ["set -e"]
    fd = 10
    for directory, entries in covers:
        opened: list[tuple[str, int, bool]] = []
        links: list[tuple[str, str]] = []
        for name in entries:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                links.append((path, os.readlink(path)))
            elif os.path.isdir(path) or os.path.isfile(path):  # never a FIFO or a socket
                lines.append(f"exec {fd}<{q(path)}")
                opened.append((path, fd, os.path.isdir(path)))
                fd += 1
        lines.append(f"mount -t tmpfs -o mode=0755,size=1m as-test-reach {q(directory)}")
        lines.extend(f"ln -s {q(target)} {q(path)}" for path, target in links)
        for path, n, is_dir in opened:
            lines.append(f"mkdir {q(path)}" if is_dir else f": >{q(path)}")
            lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{n} {q(path)}")
            lines.append(f"exec {n}<&-")
    lines.append('exec "$@"')
    return "\n".join(lines)


def _uid(user: int | str) -> int:
    return user if isinstance(user, int) else pwd.getpwnam(user).pw_uid


def _gid(group: int | str) -> int:
    return group if isinstance(group, int) else grp.getgrnam(group).gr_gid


def as_user(
    argv: Sequence[str],
    user: int | str,
    group: int | str | None = None,
    extra_groups: Sequence[int | str] | None = None,
) -> list[str]:
    """``argv`` (this Python's) run by root as ``user``, ``group`` (default: the user's) and
    ``extra_groups`` only (default none; subprocess's ``user=`` would keep root's).

    ``setpriv`` drops the privileges; where this Python lies behind a directory the user may
    not search (pyenv under a 0700 /root), ``unshare`` first gives the process a mount
    namespace in which the way is open (:func:`_reach_script`): nothing on the machine is
    chmod-ed, and nothing outlives the process.
    """
    uid = _uid(user)
    gid = _gid(group) if group is not None else pwd.getpwuid(uid).pw_gid
    groups = (
        [f"--groups={','.join(str(_gid(g)) for g in extra_groups)}"]
        if extra_groups
        else ["--clear-groups"]
    )
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", *groups, "--", *argv]
    script = _reach_script(uid, gid)
    if script is None:
        return drop
    namespace = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*namespace, "bash", "-c", script, "bash", *drop]


@pytest.fixture
def nobody() -> int:
    """The uid of an unprivileged user that can run this Python through ``run_cli(...,
    user=nobody)`` (root only; see :func:`as_user`)."""
    if os.geteuid() != 0:
        skip_or_fail("switching to another user needs root", REQUIRE_ROOT_TESTS)
    missing = [tool for tool in ("setpriv", "unshare", "bash") if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"running as another user needs {', '.join(missing)}", REQUIRE_ROOT_TESTS)
    probe = subprocess.run(
        as_user([sys.executable, "-c", "import supervisor.cli.app"], NOBODY),
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(HOME="/nonexistent"),
    )
    if probe.returncode != 0:
        skip_or_fail(
            f"user {NOBODY} cannot run {sys.executable} even through as_user: "
            f"{probe.stderr.strip()[-500:]}",
            REQUIRE_ROOT_TESTS,
        )
    return NOBODY


# --- Docker engines of a test's own --------------------------------------------------------------


def _own_dockerd(name: str) -> PrivateDockerd:
    """A started engine of the test's own; skip (or fail under CI) where none can start."""
    import dockerutil

    if os.geteuid() != 0:
        skip_or_fail("starting a Docker engine of the test's own needs root", REQUIRE_DOCKER)
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        skip_or_fail("dockerd and docker are not installed", REQUIRE_DOCKER)
    engine = dockerutil.PrivateDockerd(name)
    try:
        engine.start()
    except BaseException:
        engine.close()
        raise
    return engine


@pytest.fixture(scope="module")
def _module_dockerd() -> Iterator[PrivateDockerd]:
    """The engine behind ``private_dockerd``: one per module, stopped by its own pid at the end."""
    engine = _own_dockerd("engine")
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def private_dockerd(_module_dockerd: PrivateDockerd) -> PrivateDockerd:
    """A Docker engine of this module's own, running (root only): for tests that stop, restart
    or kill an engine. Point the client at it (``.client()``, ``DOCKER_HOST=.host``) and build
    the images there (it starts empty). Shared by the module's tests; a test that left it
    stopped gets it started again for the next."""
    if not _module_dockerd.answers():
        _module_dockerd.restart()
    return _module_dockerd


@pytest.fixture
def bystander_dockerd() -> Iterator[PrivateDockerd]:
    """A second engine, on its own socket ``bystander.sock``, that the test must leave alone:
    whatever the test stops or restarts, this one is to keep its pid and keep answering."""
    engine = _own_dockerd("bystander")
    try:
        yield engine
    finally:
        engine.close()
