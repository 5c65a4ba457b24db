"""The one atomic-write helper (``supervisor.base.files``) that the state store, ``certs csr``,
``kubeconfig render``, ``config render`` and ``config import --write`` write through.

Real files in ``tmp_path``, real processes killed with SIGKILL; the syscalls that make the
write durable (the file's fsync before the rename, the directory's after) are recorded and
asserted in order.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import killed_at_random

from supervisor.base import files
from supervisor.base.errors import StateError
from supervisor.base.files import TEMP_TAG, atomic_write, temp_prefix, write_new


def leftovers(directory: Path) -> list[str]:
    """Temp files of the helper left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if TEMP_TAG in p.name)


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def test_replaces_the_file_whole_with_the_exact_mode(tmp_path: Path) -> None:
    """The new bytes replace the old file (a new inode), with exactly ``mode`` whatever the
    umask, and no temp file is left."""
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    old_ino = path.stat().st_ino
    old_umask = os.umask(0o077)
    try:
        atomic_write(path, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new" and path.stat().st_ino != old_ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == []


def test_default_mode_is_0600(tmp_path: Path) -> None:
    """Without ``mode`` the file is private to its owner, under a permissive umask too."""
    old_umask = os.umask(0)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) writing fewer bytes than asked is continued until everything is written."""
    real_write = os.write
    sizes: list[int] = []

    def short(fd: int, data: bytes | memoryview) -> int:
        sizes.append(real_write(fd, bytes(data[:7])))
        return sizes[-1]

    data = bytes(range(256)) * 4
    monkeypatch.setattr(os, "write", short)
    atomic_write(tmp_path / "f", data)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == data
    assert sum(sizes) == len(data) and len(sizes) == -(-len(data) // 7)


def test_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data reaches the disk before the new name points at it, and the rename is made
    durable by an fsync of the directory: the exact order of the three calls."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "f", b"x")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert Path(calls[0][1]).name.startswith(temp_prefix("f"))
    assert calls[1][1] == str(tmp_path / "f") and calls[2][1] == str(tmp_path)


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failure_unlinks_the_temp_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """ENOSPC at any step before the rename raises it, leaves the old file's bytes, no temp
    file, and no open descriptor."""
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def enospc(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = open_fds()
    monkeypatch.setattr(os, failing, enospc)
    with pytest.raises(OSError) as info:
        atomic_write(path, b"new")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []
    assert open_fds() == before


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    """A hundred writes, replacing and not, leave as many descriptors open as before."""
    before = open_fds()
    for i in range(50):
        atomic_write(tmp_path / "f", str(i).encode())
        with pytest.raises(FileExistsError):
            atomic_write(tmp_path / "f", b"x", overwrite=False)
    assert open_fds() == before


def test_without_overwrite_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    """overwrite=False raises FileExistsError for an existing file and leaves it as it was;
    a new file is linked into place with its mode."""
    path = tmp_path / "key"
    path.write_bytes(b"live key")
    with pytest.raises(FileExistsError):
        atomic_write(path, b"new key", overwrite=False)
    assert path.read_bytes() == b"live key" and leftovers(tmp_path) == []
    atomic_write(tmp_path / "new", b"k", mode=0o600, overwrite=False)
    assert (tmp_path / "new").read_bytes() == b"k" and (tmp_path / "new").stat().st_nlink == 1
    assert leftovers(tmp_path) == []


def test_a_symlink_at_the_path_is_replaced_not_followed(tmp_path: Path) -> None:
    """A symlink planted at the path is replaced by the file; its target is never written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "f"
    link.symlink_to(victim)
    atomic_write(link, b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"


def test_write_new_refuses_an_existing_path_and_a_symlink(tmp_path: Path) -> None:
    """write_new creates a new file only: an existing file or a dangling symlink is refused
    (O_EXCL), and nothing is written through the link."""
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        write_new(tmp_path / "f", b"y")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        write_new(tmp_path / "link", b"y")
    assert (tmp_path / "f").read_bytes() == b"x" and not (tmp_path / "target").exists()


def test_fsync_dir_closes_its_descriptor(tmp_path: Path) -> None:
    """fsync_dir opens the directory only for the fsync."""
    before = open_fds()
    for _ in range(20):
        files.fsync_dir(tmp_path)
    assert open_fds() == before


_LOOP = """
import itertools, sys
from supervisor.base.files import atomic_write
path = sys.argv[1]
A, B = b"a" * 300_000, b"b" * 200_000
atomic_write(path, A)
print("ready", flush=True)
for i in itertools.count():
    atomic_write(path, B if i % 2 == 0 else A)
"""


def test_kill_9_mid_write_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    """SIGKILL at random moments of a write loop: the file always holds all of one version."""
    script = tmp_path / "loop.py"
    script.write_text(_LOOP)
    target = tmp_path / "d" / "f"
    target.parent.mkdir()
    argv = [sys.executable, str(script), str(target)]
    for _ in killed_at_random(argv, rounds=10, seed=11, max_delay=0.05):
        assert target.read_bytes() in (b"a" * 300_000, b"b" * 200_000)


# --- held_lock: flock(2) on a lock file that stays in place ------------------------------------

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _holder(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real other process holding an exclusive flock on ``path`` until its stdin closes
    (or it is killed); killed and reaped on the way out whatever happened."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            yield proc
        finally:
            proc.kill()


def _lock(path: Path, timeout: float = 0.0, mode: int = 0o600) -> Any:
    return files.held_lock(path, timeout=timeout, mode=mode, busy="busy", failed="failed")


def test_held_lock_creates_the_file_with_its_exact_mode_and_leaves_it_in_place(
    tmp_path: Path,
) -> None:
    """A new lock file gets the mode asked for whatever the umask, is exclusively locked inside
    the block (another descriptor cannot take it) and stays in place, unlocked, after it."""
    path = tmp_path / "a.lock"
    old = os.umask(0o077)
    try:
        with _lock(path, mode=0o644):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
            fd = os.open(path, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
    finally:
        os.umask(old)
    assert path.exists()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: taken at once
    finally:
        os.close(fd)


def test_held_lock_keeps_the_mode_of_an_existing_lock_file(tmp_path: Path) -> None:
    """An existing lock file (an operator's chmod) keeps its mode: only a file we create is set."""
    path = tmp_path / "a.lock"
    path.write_bytes(b"")
    path.chmod(0o640)
    with _lock(path, mode=0o600):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_held_lock_waits_for_a_holder_then_gives_up_with_busy(tmp_path: Path) -> None:
    """While another process holds the lock the caller retries until its timeout, then raises
    StateError(busy) without running the block; once the holder lets go it goes ahead."""
    path = tmp_path / "a.lock"
    ran = []
    with _holder(path) as holder:
        began = time.monotonic()
        with pytest.raises(StateError) as excinfo, _lock(path, timeout=0.3):
            ran.append(1)
        assert time.monotonic() - began >= 0.3  # it waited its timeout, not less
        assert str(excinfo.value) == "busy" and excinfo.value.exit_code == 74 and not ran
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    with _lock(path, timeout=0.0):
        ran.append(2)
    assert ran == [2]


def test_held_lock_is_taken_as_soon_as_the_holder_is_killed(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves no lock behind: the waiter gets it within its
    timeout (flock dies with its process; nothing to clean up)."""
    path = tmp_path / "a.lock"
    with _holder(path) as holder:
        killer = threading.Timer(0.2, holder.kill)
        killer.start()
        try:
            with _lock(path, timeout=60):
                assert holder.wait(timeout=30) == -signal.SIGKILL
        finally:
            killer.cancel()


def test_held_lock_refuses_a_symlink_at_the_lock_path(tmp_path: Path) -> None:
    """A symlink planted at the lock's name is not followed (O_NOFOLLOW): one StateError line
    naming what failed, and the target is neither created nor touched."""
    path = tmp_path / "a.lock"
    victim = tmp_path / "victim"
    path.symlink_to(victim)
    with pytest.raises(StateError) as excinfo, _lock(path):
        pass
    assert str(excinfo.value).startswith("failed: ") and "\n" not in str(excinfo.value)
    assert not victim.exists()


def test_held_lock_reports_a_directory_it_cannot_write(tmp_path: Path) -> None:
    """A lock file that cannot be created (no such directory) is StateError(failed: why)."""
    with pytest.raises(StateError) as excinfo, _lock(tmp_path / "missing" / "a.lock"):
        pass
    assert str(excinfo.value) == "failed: No such file or directory"


def _descriptors_of(path: Path) -> list[int]:
    """This process's open descriptors of ``path`` (read from /proc/self/fd)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # listdir's own descriptor, gone by now
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                out.append(int(fd))
    return out


def test_held_lock_closes_its_descriptor_and_is_not_inherited(tmp_path: Path) -> None:
    """The lock's descriptor is close-on-exec inside the block (a command the gate runs does
    not keep the lock) and closed after it, even when the block raises."""
    path = tmp_path / "a.lock"
    with pytest.raises(RuntimeError), _lock(path):
        fds = _descriptors_of(path)
        assert len(fds) == 1 and not os.get_inheritable(fds[0])
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        raise RuntimeError("the block failed")
    assert _descriptors_of(path) == []
