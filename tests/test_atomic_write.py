"""The atomic write under the state store (and every other file the supervisor replaces):
modes whatever the umask, no-overwrite creation, directory fsync, and errors not hidden."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.base.files import atomic_write, fsync_dir, write_new


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 0 for the test, so that a file's mode is exactly what the code asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("no_umask")
def test_atomic_write_gives_the_mode_asked_and_0600_by_default(tmp_path: Path) -> None:
    """The file gets exactly the mode asked, 0600 when none is given, whatever the umask."""
    atomic_write(tmp_path / "secret", b"key")
    atomic_write(tmp_path / "public", b"cert", mode=0o644)
    write_new(tmp_path / "new", b"x")
    assert (mode_of(tmp_path / "secret"), mode_of(tmp_path / "public")) == (0o600, 0o644)
    assert mode_of(tmp_path / "new") == 0o600
    assert (tmp_path / "public").read_bytes() == b"cert"


@pytest.mark.usefixtures("no_umask")
def test_the_temp_file_is_private_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until it is complete the temp file is 0600, even for a file that ends up 0644: a key
    is never readable by others, not even for a moment."""
    modes: list[int] = []
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    atomic_write(tmp_path / "public", b"cert", mode=0o644)
    monkeypatch.undo()
    assert modes == [0o600] and mode_of(tmp_path / "public") == 0o644


def test_no_overwrite_creates_once_and_never_clobbers(tmp_path: Path) -> None:
    """overwrite=False creates the file; a second writer gets FileExistsError, the first
    content stays, and no temp file is left."""
    target = tmp_path / "f"
    atomic_write(target, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    """fsync_dir opens O_DIRECTORY: given a regular file it fails instead of fsyncing it."""
    (tmp_path / "f").write_text("x")
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")


def test_a_failed_write_whose_cleanup_fails_still_reports_the_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial file's removal failing does not replace the error that caused it."""

    def fail(*_: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", fail)
    monkeypatch.setattr(os, "unlink", fail)
    with pytest.raises(OSError) as excinfo:
        write_new(tmp_path / "f", b"data")
    assert excinfo.value.errno == errno.EIO and type(excinfo.value) is OSError
