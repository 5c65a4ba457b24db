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
a timestamp, never deleted, never overwritten, and reported (:attr:`Loaded.lost`): the Gate
replaces it with the state of a lost history in the same locked operation (unknown history is
not a clean history, so the next start waits for the node's slot: invariant 9). If that state
cannot be written, or the locked operation ends without writing it (an error, a cancelled
gate), the bad file is put back, so nothing is lost.

The store computes nothing: it hands the Gate what the files hold (:class:`Loaded`) and writes
what the Gate gives it. Reading needs no lock (every write is an atomic rename, so a reader sees
a whole file, old or new): :meth:`StateStore.read` works on a read-only state directory, for
``status`` and for the Gate's quick look before it asks the probe.

The journal (``<agent>.journal``): a file of :data:`JOURNAL_BYTES` allocated while there is
space, rewritten in place when the state file cannot be (a full disk), so that an end reported
then is not lost: the next writer applies it (invariant 12's "the next writer learns it from a
journal of its own, not from a guess").
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

from supervisor.base.catalog import EventId
from supervisor.base.errors import DiskFull, StateError
from supervisor.base.files import atomic_write, fsync_dir, held_lock, temp_prefix
from supervisor.base.log import get_logger
from supervisor.core.events import Ended
from supervisor.core.state import (
    AgentState,
    StateFormatError,
    from_document,
    iso,
    parse_iso,
    to_document,
)

#: A state file larger than this is not ours. 50 runs are a few kilobytes, but a longer valid
#: history (an older version, an operator's edit) is read and trimmed, not moved aside.
MAX_STATE_BYTES: Final = 16 * 1024 * 1024
#: Size of the journal file, allocated while there is space and rewritten in place.
JOURNAL_BYTES: Final = 4096
#: How long a command waits for another process holding the agent's lock.
LOCK_TIMEOUT: Final = 10.0
AUDIT_FILE: Final = "audit.jsonl"


def _stamp(now: float | None) -> str:
    """``now`` (the current time when None, as gmtime(3) takes it) for a file name."""
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
class Loaded:
    """What the files hold for one agent, before the Gate makes a state of it.

    ``lost``: the state file was unreadable (moved aside to ``quarantined[-1]``, or, for a
    lock-free read, left in place): why. ``pending``: ends the journal holds (written when the
    state file could not be), oldest first. ``locked``: read under the agent's lock.
    """

    agent: str
    state: AgentState
    lost: str | None = None
    quarantined: list[str] = field(default_factory=list)
    pending: tuple[Ended, ...] = ()
    locked: bool = True


@dataclass
class Transaction(Loaded):
    """The agent's files read under its lock; :meth:`write` replaces the state atomically."""

    store: StateStore | None = None

    def write(self, state: AgentState, now: float) -> None:
        """Durably replace the agent's state (StateError if it cannot); the journal's ends,
        now in the state, are cleared. A bad file moved aside by this transaction is put back
        if the write fails, so that nothing is lost."""
        assert self.store is not None
        try:
            self.store.write_state(state, now)
        except StateError:
            if self.lost is not None and self.quarantined:
                self.store.restore(self.quarantined[-1], self.agent)
                self.quarantined.pop()
            raise
        self.state, self.lost = state, None
        if self.pending:
            self.store.clear_journal(self.agent)
            self.pending = ()


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

    # --- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, agent: str, now: float | None = None) -> Iterator[Transaction]:
        """Lock the agent's state, read it (moving a bad file aside), yield a Transaction.

        A bad file that no successful :meth:`Transaction.write` replaced by the end of the
        block is put back where it was."""
        self.prepare()
        lock_path = self.lock_path(agent)
        # Check the state file before creating anything: a hostile entry is refused with the
        # directory exactly as we found it. _load checks it again under the lock.
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
            state, lost = self._load(agent)
            quarantined = []
            if lost is not None:
                quarantined.append(self._quarantine(self.state_path(agent), now, lost))
            tx = Transaction(
                agent, state, lost, quarantined, self.journal(agent), locked=True, store=self
            )
            try:
                yield tx
            finally:
                if tx.lost is not None and tx.quarantined:
                    # Nothing replaced the bad file (the caller raised, was cancelled, or wrote
                    # nothing): put it back. Left aside, it would leave no state file at all,
                    # and an absent file reads as a clean history (invariant 9).
                    self.restore(tx.quarantined.pop(), agent)

    def read(self, agent: str) -> Loaded:
        """The agent's files as they are, without the lock and without changing anything.

        Safe without the lock: a writer replaces the file by an atomic rename, so this sees a
        whole file, old or new. A bad file is reported (``lost``) and left where it is: the
        next writer moves it aside. Works on a read-only state directory.
        """
        d = self.directory
        try:
            st = d.stat()
        except FileNotFoundError:
            return Loaded(agent, AgentState(agent), locked=False)
        except OSError as exc:
            raise StateError(f"cannot use state directory {d}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {d} is not a directory")
        state, lost = self._load(agent)
        return Loaded(agent, state, lost, pending=self.journal(agent), locked=False)

    # --- reading ----------------------------------------------------------------------------

    def _load(self, agent: str) -> tuple[AgentState, str | None]:
        """The state file's state, or an empty state and why the file is unusable."""
        path = self.state_path(agent)
        st = self._check_entry(path, "state file")
        if st is None:
            return AgentState(agent), None
        if st.st_size > MAX_STATE_BYTES:
            return AgentState(agent), f"{st.st_size} bytes, larger than {MAX_STATE_BYTES}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                raw = _read_all(fd, MAX_STATE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
            return from_document(doc, agent), None
        except (
            UnicodeDecodeError,
            json.JSONDecodeError,
            StateFormatError,
            RecursionError,
            ValueError,
            OverflowError,
        ) as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return AgentState(agent), why

    def _quarantine(self, path: Path, now: float | None, why: str) -> str:
        """Move a bad state file aside (never delete it) and say where it went."""
        stamp = _stamp(now)
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while os.path.lexists(target):
            target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
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
            EventId.STATE_QUARANTINED,
            path=str(path),
            moved_to=str(target),
            why=why,
            effect="history unknown: the next start waits for this node's slot",
        )
        return str(target)

    def restore(self, moved: str, agent: str) -> None:
        """Put a file moved aside back (its replacement could not be written)."""
        with contextlib.suppress(OSError):
            os.rename(moved, self.state_path(agent))
            fsync_dir(self.directory)

    def quarantined_files(self, agent: str) -> list[str]:
        """The agent's state files moved aside so far (oldest first), for ``status``."""
        prefix = f"{agent}.json.corrupt-"
        try:
            names = sorted(e.name for e in os.scandir(self.directory) if e.name.startswith(prefix))
        except OSError:
            return []
        return [str(self.directory / n) for n in names]

    # --- the journal --------------------------------------------------------------------------

    def journal_path(self, agent: str) -> Path:
        """The agent's journal: ends that could not be written to the state file."""
        return self.directory / f"{agent}.journal"

    def journal(self, agent: str) -> tuple[Ended, ...]:
        """The ends the journal holds, oldest first (an unreadable journal holds none)."""
        path = self.journal_path(agent)
        try:
            if self._check_entry(path, "journal") is None:
                return ()
            # O_NOFOLLOW and O_NONBLOCK, as for the state file: a symlink or a FIFO swapped in
            # after the check is neither followed nor waited on (under the lock, for ever).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                raw = _read_all(fd, JOURNAL_BYTES * 2).strip()
            finally:
                os.close(fd)
        except OSError:  # StateError (a hostile entry) is an OSError too
            return ()
        if not raw:
            return ()
        try:
            docs = json.loads(raw.decode("utf-8"))
            return tuple(_ended_from(d) for d in docs)
        except (ValueError, TypeError, KeyError, StateFormatError) as exc:
            self.log.error(EventId.STATE_JOURNAL_UNREADABLE, path=str(path), why=str(exc)[:200])
            return ()

    def journal_end(self, agent: str, end: Ended) -> None:
        """Keep an end in the journal (the state file could not take it): rewritten in place,
        in blocks allocated while there was space. StateError if there is no journal or no
        room left in it."""
        path = self.journal_path(agent)
        if self._check_entry(path, "journal") is None:
            raise StateError(f"no journal at {path} to keep the end in")
        docs = [_ended_doc(e) for e in (*self.journal(agent), end)]
        body = json.dumps(docs, sort_keys=True).encode()
        if len(body) > JOURNAL_BYTES:
            raise StateError(f"journal {path} is full ({len(docs) - 1} ends kept)")
        self._overwrite(path, body.ljust(JOURNAL_BYTES))

    def clear_journal(self, agent: str) -> None:
        """Empty the journal (its ends are in the state now), in place."""
        path = self.journal_path(agent)
        with contextlib.suppress(OSError):
            if self._check_entry(path, "journal") is not None:
                self._overwrite(path, b" " * JOURNAL_BYTES)

    def ensure_journal(self, agent: str) -> None:
        """Allocate the journal while there is space (after every successful state write)."""
        path = self.journal_path(agent)
        with contextlib.suppress(OSError):
            if self._check_entry(path, "journal") is None:
                atomic_write(path, b" " * JOURNAL_BYTES, mode=0o600, overwrite=False)

    def _overwrite(self, path: Path, data: bytes) -> None:
        try:
            # O_NONBLOCK: a FIFO swapped in after the check fails (ENXIO) instead of blocking.
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot write journal {path}: {exc.strerror}") from None

    # --- writing ----------------------------------------------------------------------------

    def write_state(self, state: AgentState, now: float) -> None:
        """Atomically replace the agent's state file (and allocate its journal if missing)."""
        body = json.dumps(to_document(state, now), sort_keys=True, indent=1) + "\n"
        self._atomic_write(self.state_path(state.agent), body.encode())
        self.ensure_journal(state.agent)

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
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"cannot write state file {path}: no space left on device") from None
            raise StateError(f"cannot write state file {path}: {exc.strerror or exc}") from None

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
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for raw in lines[-n:]:
            # ValueError: not JSON, not UTF-8; RecursionError: nested deeper than json can.
            with contextlib.suppress(ValueError, RecursionError):
                doc = json.loads(raw)
                if isinstance(doc, dict):
                    out.append(doc)
        return out


def _read_all(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``fd`` (``read(2)`` may return less than asked)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _ended_doc(e: Ended) -> dict[str, Any]:
    return {
        "at": iso(e.at),
        "exit_code": e.exit_code,
        "source": e.source,
        "run_id": e.run_id,
        "stop": e.stop,
    }


def _ended_from(doc: Any) -> Ended:
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    code = doc.get("exit_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise TypeError(f"exit_code {code!r}")
    source = doc.get("source")
    if source not in ("record-exit", "docker", "exec"):
        raise TypeError(f"source {source!r}")
    run_id, stop = doc.get("run_id"), doc.get("stop")
    return Ended(
        parse_iso(doc["at"], "journal.at"),
        code,
        source,
        None if run_id is None else str(run_id),
        None if stop is None else str(stop),
    )
