"""The one atomic-write helper (``supervisor.base.files``) that the state store, ``certs csr``,
``kubeconfig render``, ``config render`` and ``config import --write`` write through.

Real files in ``tmp_path``, real processes killed with SIGKILL; the syscalls that make the
write durable (the file's fsync before the rename, the directory's after) are recorded and
asserted in order.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pytest
from harness import killed_at_random

from supervisor.base import files
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
