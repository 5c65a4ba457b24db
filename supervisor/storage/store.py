"""The state store: the only module that touches the state directory.

One JSON file per agent (``<agent>.json``), a lock file beside it (``<agent>.lock``), an audit
log (``audit.jsonl``). Every read-modify-write holds the lock; every write is a temp file in the
same directory, fsync, ``os.replace``, fsync of the directory, so that a crash at any moment
leaves either the old or the new file, never a torn one (rename within one directory is atomic
on POSIX file systems, and the directory fsync makes the rename itself durable).

Hostile or broken inputs are refused rather than followed: a state file or lock that is a
symlink (a write would go through it to wherever it points), a FIFO (an open would block
forever), a file owned by another user, or a directory writable by group or others (anyone in
the group could swap the file under us). A state file that does not parse is moved aside with
a timestamp, never deleted, never overwritten, and replaced by the state of a lost history
(:meth:`AgentState.history_lost`): unknown history is not a clean history, so the next start
waits for the node's slot (invariant 9).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor.base.errors import StateError
from supervisor.base.files import atomic_write, fsync_dir, held_lock, temp_prefix
from supervisor.base.log import get_logger
from supervisor.core.state import AgentState, StateFormatError, from_document, iso, to_document

#: A state file larger than this is not ours (50 runs are a few kilobytes).
MAX_STATE_BYTES: Final = 1024 * 1024
#: How long a command waits for another process holding the agent's lock.
LOCK_TIMEOUT: Final = 10.0
AUDIT_FILE: Final = "audit.jsonl"


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _describe(mode: int) -> str:
    kinds = {
        stat.S_IFLNK: "a symlink",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFDIR: "a directory",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a device",
        stat.S_IFBLK: "a device",
    }
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


@dataclass
class Transaction:
    """The agent's state read under its lock; :meth:`write` replaces it atomically."""

    store: StateStore
    agent: str
    state: AgentState
    quarantined: list[str] = field(default_factory=list)

    def write(self, state: AgentState, now: float) -> None:
        """Durably replace the agent's state (StateError if it cannot)."""
        self.store.write_state(state, now)
        self.state = state


class StateStore:
    """Reads and writes agent state in one directory."""

    def __init__(self, directory: Path, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout
        self.log = get_logger()

    # --- paths and checks -------------------------------------------------------------------

    def state_path(self, agent: str) -> Path:
        """Where the agent's state lives."""
        return self.directory / f"{agent}.json"

    def lock_path(self, agent: str) -> Path:
        """The lock file guarding the agent's state."""
        return self.directory / f"{agent}.lock"

    def prepare(self, *, create: bool = True) -> None:
        """Create the directory 0700 if missing; refuse one that others could tamper with."""
        d = self.directory
        try:
            st = d.stat()
        except FileNotFoundError:
            if not create:
                raise StateError(f"state directory {d} does not exist") from None
            try:
                d.parent.mkdir(parents=True, exist_ok=True)
                d.mkdir(mode=0o700)
                os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask
            except FileExistsError:
                pass
            except OSError as exc:
                raise StateError(f"cannot create state directory {d}: {exc.strerror}") from None
            st = d.stat()
        except OSError as exc:
            raise StateError(f"cannot use state directory {d}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {d} is not a directory")
        if st.st_uid != os.geteuid():
            raise StateError(
                f"state directory {d} is owned by uid {st.st_uid}, not by this user "
                f"(uid {os.geteuid()}); refusing to use it"
            )
        if st.st_mode & 0o022:
            raise StateError(
                f"state directory {d} is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {d}"
            )

    def _check_entry(self, path: Path, what: str) -> os.stat_result | None:
        """lstat ``path``; None if absent; StateError if it is anything but our regular file."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot stat {what} {path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise StateError(
                f"{what} {path} is {_describe(st.st_mode)}; refusing to read or write through it"
            )
        if st.st_uid != os.geteuid():
            raise StateError(
                f"{what} {path} is owned by uid {st.st_uid}, not by this user "
                f"(uid {os.geteuid()}); refusing to use it"
            )
        return st

    # --- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, agent: str, now: float | None = None) -> Iterator[Transaction]:
        """Lock the agent's state, read it, and yield a :class:`Transaction`."""
        self.prepare()
        lock_path = self.lock_path(agent)
        # Check the state file before creating anything: a hostile entry is refused with the
        # directory exactly as we found it. _read checks it again under the lock.
        self._check_entry(self.state_path(agent), "state file")
        self._check_entry(lock_path, "lock file")
        with held_lock(
            lock_path,
            timeout=self.lock_timeout,
            mode=0o600,
            busy=f"cannot lock {lock_path}: held by another process for {self.lock_timeout:g}s",
            failed=f"cannot lock {lock_path}",
        ):
            self._remove_stale_temps(agent)
            state, quarantined = self._read(agent, time.time() if now is None else now)
            yield Transaction(self, agent, state, quarantined)

    def read(self, agent: str, now: float | None = None) -> Transaction:
        """Read the agent's state under its lock (quarantining a corrupt file)."""
        with self.transaction(agent, now) as tx:
            return tx

    # --- reading ----------------------------------------------------------------------------

    def _read(self, agent: str, now: float) -> tuple[AgentState, list[str]]:
        path = self.state_path(agent)
        st = self._check_entry(path, "state file")
        if st is None:
            return AgentState(agent=agent), []
        if st.st_size > MAX_STATE_BYTES:
            return self._lost(
                agent, path, now, f"{st.st_size} bytes, larger than {MAX_STATE_BYTES}"
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                raw = os.read(fd, MAX_STATE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
            return from_document(doc, agent), []
        except (
            UnicodeDecodeError,
            json.JSONDecodeError,
            StateFormatError,
            RecursionError,
            ValueError,
            OverflowError,
        ) as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return self._lost(agent, path, now, why)

    def _lost(self, agent: str, path: Path, now: float, why: str) -> tuple[AgentState, list[str]]:
        """Move the bad file aside and write the state of a lost history in its place.

        Written at once, under the lock: every later caller must see "history lost at T", not
        a missing file (a first start). If it cannot be written the bad file is put back, so
        nothing is lost and the next caller finds the same problem (StateError, exit 74).
        """
        moved = self._quarantine(path, now, why)
        state = AgentState.history_lost(agent, now, f"state file moved aside to {moved}: {why}")
        try:
            self.write_state(state, now)
        except StateError:
            with contextlib.suppress(OSError):
                os.rename(moved, path)
                fsync_dir(self.directory)
            raise
        return state, [moved]

    def _quarantine(self, path: Path, now: float, why: str) -> str:
        """Move a bad state file aside (never delete it) and say where it went."""
        target = path.with_name(f"{path.name}.corrupt-{_stamp(now)}")
        n = 1
        while os.path.lexists(target):
            target = path.with_name(f"{path.name}.corrupt-{_stamp(now)}.{n}")
            n += 1
        try:
            # Under the agent's lock, and the name was checked free just above: the rename
            # cannot replace an earlier quarantined file.
            os.rename(path, target)
            fsync_dir(self.directory)
        except OSError as exc:
            raise StateError(
                f"state file {path} is corrupt ({why}) and cannot be moved aside: {exc.strerror}"
            ) from None
        self.log.error(
            "state.quarantined",
            path=str(path),
            moved_to=str(target),
            why=why,
            effect="history unknown: the next start waits for this node's slot",
        )
        return str(target)

    def quarantined_files(self, agent: str) -> list[str]:
        """The agent's state files moved aside so far (oldest first), for ``status``."""
        prefix = f"{agent}.json.corrupt-"
        try:
            names = sorted(e.name for e in os.scandir(self.directory) if e.name.startswith(prefix))
        except OSError:
            return []
        return [str(self.directory / n) for n in names]

    # --- writing ----------------------------------------------------------------------------

    def write_state(self, state: AgentState, now: float) -> None:
        """Atomically replace the agent's state file."""
        body = json.dumps(to_document(state, now), sort_keys=True, indent=1) + "\n"
        self._atomic_write(self.state_path(state.agent), body.encode())

    def backup(self, agent: str, now: float) -> str | None:
        """Copy the agent's state file aside (for ``reset``); None when there is none."""
        path = self.state_path(agent)
        if self._check_entry(path, "state file") is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
        target = path.with_name(f"{path.name}.reset-{_stamp(now)}")
        self._atomic_write(target, data)
        return str(target)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` (0600): a temp file in the state directory, fsync,
        ``os.replace``, fsync of the directory (:func:`supervisor.base.files.atomic_write`).

        The entry is checked first, so a hostile one (a symlink, a FIFO, another user's file) is
        refused with the directory as found, as everywhere in this module; an ``OSError`` is
        one :class:`StateError` line (exit 74) and a full disk says so in plain words.
        """
        self._check_entry(path, "state file")
        try:
            atomic_write(path, data, mode=0o600)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.ENOSPC:
                why = "no space left on device"
            raise StateError(f"cannot write state file {path}: {why}") from None

    def _remove_stale_temps(self, agent: str) -> None:
        """Temp files of writers killed mid-write; we hold the lock, so none is in use."""
        prefix = temp_prefix(self.state_path(agent).name)
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    # --- audit log --------------------------------------------------------------------------

    def check_audit(self) -> None:
        """StateError if the audit log is anything but our regular file (before a change)."""
        self._check_entry(self.directory / AUDIT_FILE, "audit log")

    def audit(self, now: float, **fields: Any) -> None:
        """Append one operator action to the audit log (JSON lines, fsynced)."""
        path = self.directory / AUDIT_FILE
        self._check_entry(path, "audit log")
        line = json.dumps({"time": iso(now), **fields}, sort_keys=True) + "\n"
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot append to audit log {path}: {exc.strerror}") from None

    def audit_tail(self, n: int = 10) -> list[dict[str, Any]]:
        """The last ``n`` audit entries that parse (a torn last line is skipped)."""
        path = self.directory / AUDIT_FILE
        try:
            if self._check_entry(path, "audit log") is None:
                return []
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                lines = fh.read().splitlines()
        except (OSError, StateError):
            return []
        out: list[dict[str, Any]] = []
        for raw in lines[-n:]:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                doc = json.loads(raw)
                if isinstance(doc, dict):
                    out.append(doc)
        return out
