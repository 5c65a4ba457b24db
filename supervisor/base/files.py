"""File-system helpers shared by every module that writes files: one way to write a file whole
and durably, one way to replace one atomically, and one way to hold a lock file.

Why each step of :func:`atomic_write` is there (pip's ``adjacent_tmp_file`` and
``replace`` do the same): the temp file is in the same directory because ``rename(2)`` is atomic
only within one file system; it is created with ``O_EXCL`` (never an existing file, so never a
file someone planted) and ``O_NOFOLLOW`` (never through a symlink), and 0600 until it is
complete, so key material is not readable by others even for a moment; it is written in a loop
because ``write(2)`` may write less than asked; it is fsynced before the rename, or a crash
could leave the new name pointing at a file whose data never reached the disk; and the
directory is fsynced after, or the rename itself may not survive a power loss.

Callers keep their own policy: which paths they refuse, and how an ``OSError`` reads in their
error (the state store says "no space left on device", ``certs csr`` names the key file).

Locks are flock(2) on a lock file that stays in place (:func:`held_lock`): flock dies with
its process, so a killed holder never leaves the lock taken, and the file is never unlinked,
because unlinking a locked file would split later waiters across two inodes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from supervisor.base.errors import StateError

#: Marks a temp file of :func:`atomic_write`: ``.<name>.tmp-<pid>-<random>`` beside ``<name>``.
TEMP_TAG: Final = ".tmp-"


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename or link made in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_prefix(name: str) -> str:
    """The name prefix of :func:`atomic_write`'s temp files for a file called ``name``.

    A writer killed mid-write leaves such a file; whoever holds the file's lock may delete it.
    """
    return f".{name}{TEMP_TAG}"


def write_new(path: str | Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` (it must not exist), write all of ``data``, set ``mode``, fsync, close.

    The file is created 0600 and given ``mode`` only once it is complete (``fchmod``, so the
    umask does not change it). On any error the partial file is unlinked and the error raised.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def atomic_write(
    path: str | Path, data: bytes, *, mode: int = 0o600, overwrite: bool = True
) -> None:
    """Make ``path`` hold ``data`` with ``mode``: whole or not at all, even across a crash.

    A temp file in the same directory (:func:`write_new`), then ``os.replace`` (``overwrite``)
    or ``os.link`` (no overwrite: link(2) fails with EEXIST atomically, so two racing writers
    never clobber each other; raises :class:`FileExistsError`), then an fsync of the directory.
    On any error the temp file is unlinked and the ``OSError`` raised; the old file, if any, is
    untouched unless the rename happened (then only the directory fsync failed).
    """
    target = Path(path)
    tmp = target.with_name(f"{temp_prefix(target.name)}{os.getpid()}-{os.urandom(4).hex()}")
    try:
        write_new(tmp, data, mode=mode)
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
            os.unlink(tmp)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: How long a waiter sleeps between two tries of a held lock (filelock's default too).
LOCK_POLL: Final = 0.05


def _open_lock_file(path: str | Path, mode: int) -> int:
    """Open the lock file, creating it with ``mode`` if it is not there.

    ``O_NOFOLLOW``: a symlink planted at the lock's name is refused (ELOOP), not followed to
    a file of someone else's choosing. ``O_CLOEXEC``: a command the gate runs must not inherit
    the descriptor, and with it the lock, for as long as the agent runs. A file we create gets
    ``mode`` exactly (``fchmod``: the umask narrowed what ``open`` was given); an existing one
    keeps the mode it has."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    while True:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            try:
                return os.open(path, flags)
            except FileNotFoundError:  # removed between the two opens: create it after all
                continue
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd


@contextlib.contextmanager
def held_lock(
    path: str | Path, *, timeout: float, mode: int, busy: str, failed: str
) -> Iterator[None]:
    """Hold an exclusive flock(2) on ``path`` for the ``with`` block.

    Waits up to ``timeout`` seconds, then raises ``StateError(busy)``; an ``OSError`` (the lock
    file cannot be created, opened or locked) raises ``StateError(f"{failed}: {why}")``. Both
    are one line, exit 74.

    flock, not fcntl(2) record locks: a record lock is dropped when the process closes *any*
    descriptor of the file, and belongs to the process rather than to the descriptor. The lock
    is tried with ``LOCK_NB`` and retried every :data:`LOCK_POLL` seconds, because a blocking
    flock cannot time out. Closing the descriptor releases it; so does the death of the process,
    however it dies. Not reentrant: a second ``held_lock`` of the same file in the same process
    waits for the first (no code here nests them). This is what ``filelock.FileLock`` did for
    us before; filelock 4 costs 12 ms of imports on every gate call for one system call.
    """
    import fcntl
    import time

    try:
        fd = _open_lock_file(path, mode)
    except OSError as exc:
        raise StateError(f"{failed}: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # EWOULDBLOCK: another descriptor holds it
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StateError(busy) from None
                time.sleep(min(LOCK_POLL, left))
            except OSError as exc:  # ENOLCK, ENOSYS (a file system without flock), EBADF
                raise StateError(f"{failed}: {exc.strerror or exc}") from None
        yield
    finally:
        os.close(fd)
