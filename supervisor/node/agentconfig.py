"""The agent's node-local config directory: one file per option, replaced as a whole.

cilium-agent's ``--config-dir`` reads every entry of a directory as an option: the file name is
the option, the content (whitespace-trimmed) its value. In the reference layout (no ConfigMap,
no DaemonSet) that directory is the agent's entire configuration, so ``config render`` writes it
from the ``[agent]`` table, plus the stability options that keep a large fleet out of restart
storms, and replaces it atomically: an agent that starts during a render, or after a crash
mid-render, reads either the whole old or the whole new configuration, never a mix.

How the swap works (and why): the new directory is built as a sibling, fsynced, then exchanged
with the old one by ``renameat2(RENAME_EXCHANGE)``. One syscall swaps both names, so the path
always holds a complete directory, and it works where the path is a plain directory (as in the
reference layout), which a symlink flip cannot replace atomically the first time. The old
directory, now under the temp name, is deleted afterwards; a crash before that leaves only a
stale sibling, removed by the next render. Unchanged options are hard-linked into the new
directory, so they keep their inode, mtime and bytes. Where RENAME_EXCHANGE is unsupported
(not Linux, or a filesystem without it) the fallback renames the old directory aside and the new
one in: between those two renames the path is missing for an instant, and a crash there leaves
the old directory aside, which :func:`recover` (run first by every render) puts back.

Temp, old and lock entries are siblings of the directory, never inside it: the agent would read
anything inside as an option. A container that bind-mounts the directory keeps the old (now
deleted) directory until it restarts, because a bind mount pins the inode, not the path; the
agent reads ``--config-dir`` only at start anyway, so new options take effect at its next start,
which the gate paces. No agent changes configuration mid-run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from supervisor.base.errors import ConfigError, StateError
from supervisor.base.files import fsync_dir
from supervisor.base.log import get_logger
from supervisor.storage.config import Config

#: Stability options and the values large production fleets settled on; ``[agent]`` overrides.
#: Each keeps an agent alive (instead of exiting and restarting into a full resync) while the
#: control plane is slow or down.
STABILITY_DEFAULTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # Listing all identities from the kvstore at start takes minutes in a large cluster under
        # load; the short default makes the agent give up, exit, and retry from scratch.
        "allocator-list-timeout": "3h",
        # A lease shorter than an etcd outage expires during it, and the agent's keys (identities,
        # endpoints) vanish and must all be re-created at once when etcd returns.
        "kvstore-lease-ttl": "86400s",
        # Initial cache sync against an overloaded apiserver can take many minutes; timing out
        # makes the agent exit and start the same LIST again.
        "k8s-sync-timeout": "600s",
        # A slow apiserver answer is not a dead connection; a short heartbeat timeout turns latency
        # into reconnect storms.
        "k8s-heartbeat-timeout": "60s",
    }
)
#: cilium-agent's option names: lower-case words joined by single dashes.
OPTION_NAME: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
#: An option file larger than this is not an option (and we refuse to replace a directory
#: holding one: the output path is probably wrong).
MAX_OPTION_BYTES: Final = 1024 * 1024
#: How long a render waits for another render of the same directory.
LOCK_TIMEOUT: Final = 30.0

_RENDER_TAG: Final = ".render-"
_OLD_TAG: Final = ".old-"

Action = Literal["added", "changed", "removed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One option a render adds, changes or removes (values as the agent reads them)."""

    option: str
    action: Action
    old: str | None = None
    new: str | None = None


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What a render did (or, for ``config diff``, would do) to the directory."""

    output: Path
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    written: bool = False
    changes: tuple[Change, ...] = field(default=(), compare=False)

    @property
    def any_change(self) -> bool:
        """True when the directory's content differs (or would differ) from the render."""
        return bool(self.added or self.changed or self.removed)

    def to_json(self, *, values: bool = False) -> dict[str, Any]:
        """The result for ``--json``; ``values`` adds old and new values of each change."""
        doc: dict[str, Any] = {
            "output": str(self.output),
            "written": self.written,
            "added": list(self.added),
            "changed": list(self.changed),
            "removed": list(self.removed),
            "unchanged": list(self.unchanged),
            "warnings": list(self.warnings),
        }
        if values:
            doc["changes"] = [
                {"option": c.option, "action": c.action, "old": c.old, "new": c.new}
                for c in self.changes
            ]
        return doc


# --- what to write -----------------------------------------------------------------------------


def agent_options(config: Config) -> tuple[dict[str, str], tuple[str, ...]]:
    """The options to render (stability defaults, then ``[agent]``), validated; and warnings.

    Raises :class:`ConfigError` naming the key and the value for anything the agent would
    refuse at start (and then crash-loop on): better one clear exit 78 on the node.
    """
    options = dict(STABILITY_DEFAULTS)
    options.update(config.agent)
    where = str(config.config_file) if config.config_file is not None else "config"
    return options, validate_options(options, where)


def validate_options(options: Mapping[str, str], where: str = "config") -> tuple[str, ...]:
    """Check what is knowable on the node; return warnings, raise ConfigError on errors."""
    warnings: list[str] = []
    for name, value in options.items():
        if not OPTION_NAME.fullmatch(name) or len(name) > 200:
            raise ConfigError(
                f"{where}: agent.{name}: option names are the agent's kebab-case "
                "names (e.g. cluster-name, k8s-kubeconfig-path)"
            )
        if "\x00" in value:
            raise ConfigError(f"{where}: agent.{name} = {value!r}: contains a NUL character")
        if len(value.encode()) > MAX_OPTION_BYTES:
            raise ConfigError(f"{where}: agent.{name}: value is larger than 1 MiB")
    max_clusters = options.get("max-connected-clusters", "255").strip()
    if max_clusters not in ("255", "511"):
        raise ConfigError(
            f"{where}: agent.max-connected-clusters = {max_clusters!r}: must be 255 or 511"
        )
    if "cluster-id" in options:
        raw = options["cluster-id"]
        limit = int(max_clusters)
        try:
            cluster_id = int(raw.strip(), 10)
        except ValueError:
            cluster_id = -1
        if not 0 <= cluster_id <= limit:
            raise ConfigError(
                f"{where}: agent.cluster-id = {raw!r}: must be a whole number 0..{limit}"
            )
        cluster_name = options.get("cluster-name", "").strip()
        if not cluster_name:
            raise ConfigError(
                f"{where}: agent.cluster-id = {raw!r} is set but agent.cluster-name "
                "is not: set cluster-name too"
            )
        if cluster_id != 0 and cluster_name == "default":
            raise ConfigError(
                f"{where}: agent.cluster-name = 'default' cannot be used with "
                f"agent.cluster-id = {raw!r} (the agent refuses to start)"
            )
    if not options.get("labels", "").strip():
        warnings.append(
            "agent.labels is not set: every distinct set of pod labels becomes a security "
            "identity, and identities are 16-bit; list the identity-relevant label prefixes"
        )
    if "k8s-kubeconfig-path" in options:
        raw = options["k8s-kubeconfig-path"]
        path = Path(raw.strip())
        if not raw.strip() or not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(
                f"{where}: agent.k8s-kubeconfig-path = {raw!r}: {what} (write one "
                "with `agent-supervisor kubeconfig render --out PATH`)"
            )
    return tuple(warnings)


# --- reading and comparing ---------------------------------------------------------------------


def _target(output: Path) -> Path:
    """The directory to replace: a symlink at ``output`` is followed, so an operator's own
    symlink layout survives (the link keeps pointing at the same, now replaced, path)."""
    return Path(os.path.realpath(output))


def _read_current(target: Path) -> dict[str, bytes] | None:
    """The options in the directory now (None when it does not exist).

    Refuses a directory holding anything that is not an option file: rendering into the wrong
    path (``--output /etc``) must fail, not delete what is there.
    """
    try:
        st = target.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{target}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{target}: exists and is not a directory (agent_config_dir or --output)")
    current: dict[str, bytes] = {}
    try:
        names = sorted(os.listdir(target))
    except OSError as exc:
        raise StateError(f"{target}: cannot list: {exc.strerror or exc}") from None
    for name in names:
        path = target / name
        try:
            est = path.stat()
        except OSError:
            est = None
        if (
            not OPTION_NAME.fullmatch(name)
            or est is None
            or not stat.S_ISREG(est.st_mode)
            or est.st_size > MAX_OPTION_BYTES
        ):
            raise ConfigError(
                f"{target}: holds {name!r}, which is not an agent option file; "
                "refusing to replace this directory (is the output path right?)"
            )
        try:
            current[name] = path.read_bytes()
        except OSError as exc:
            raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return current


def _same(old: bytes, new: str) -> bool:
    """Equal as the agent reads them: it trims surrounding whitespace from every file."""
    return old.strip() == new.encode().strip()


def _shown(old: bytes) -> str:
    return old.decode("utf-8", "replace").strip()


def _diff(
    options: Mapping[str, str],
    current: Mapping[str, bytes] | None,
    output: Path,
    warnings: tuple[str, ...],
) -> RenderResult:
    have = current or {}
    added, changed, unchanged, changes = [], [], [], []
    for name in sorted(options):
        new = options[name]
        if name not in have:
            added.append(name)
            changes.append(Change(name, "added", None, new))
        elif _same(have[name], new):
            unchanged.append(name)
        else:
            changed.append(name)
            changes.append(Change(name, "changed", _shown(have[name]), new))
    removed = [n for n in sorted(have) if n not in options]
    changes += [Change(n, "removed", _shown(have[n]), None) for n in removed]
    return RenderResult(
        output=output,
        added=tuple(added),
        changed=tuple(changed),
        removed=tuple(removed),
        unchanged=tuple(unchanged),
        warnings=warnings,
        changes=tuple(changes),
    )


# --- public entry points -----------------------------------------------------------------------


def plan(config: Config, output: Path | None = None) -> RenderResult:
    """What ``config render`` would change, without writing (``config diff``)."""
    options, warnings = agent_options(config)
    return plan_options(options, Path(output or config.agent_config_dir), warnings)


def render(config: Config, output: Path | None = None) -> RenderResult:
    """Write the agent's config directory from the configuration (``config render``)."""
    options, warnings = agent_options(config)
    return render_options(options, Path(output or config.agent_config_dir), warnings)


def plan_options(
    options: Mapping[str, str], output: Path, warnings: tuple[str, ...] = ()
) -> RenderResult:
    """The diff between ``options`` and the directory at ``output``; writes nothing."""
    return _diff(options, _read_current(_target(output)), output, warnings)


def render_options(
    options: Mapping[str, str], output: Path, warnings: tuple[str, ...] = ()
) -> RenderResult:
    """Make the directory at ``output`` hold exactly ``options``, atomically.

    Nothing is written when nothing changed. Raises :class:`ConfigError` for a wrong output
    path, :class:`StateError` (exit 74) for I/O errors; in both cases the directory is untouched.
    """
    target = _target(output)
    with _lock(target):
        _recover_locked(target)
        current = _read_current(target)
        result = _diff(options, current, output, warnings)
        if current is not None and not result.any_change:
            return result
        try:
            old_mode = stat.S_IMODE(target.stat().st_mode) if current is not None else 0o755
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_RENDER_TAG}", dir=target.parent))
        except OSError as exc:
            raise StateError(
                f"{target.parent}: cannot write there: {exc.strerror or exc}"
            ) from None
        try:
            _populate(tmp, target, options, set(result.unchanged))
            os.chmod(tmp, old_mode)
            fsync_dir(tmp)
            old = _swap_in(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StateError(
                f"{target}: render failed, directory left as it was: {exc.strerror or exc}"
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The new directory is in place; from here on only the old one is deleted.
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        try:
            fsync_dir(target.parent)
        except OSError as exc:
            raise StateError(
                f"{target}: rendered, but the rename may not survive a power "
                f"loss: fsync of {target.parent} failed: "
                f"{exc.strerror or exc}"
            ) from None
    get_logger().info(
        "config.rendered",
        output=str(output),
        added=len(result.added),
        changed=len(result.changed),
        removed=len(result.removed),
        unchanged=len(result.unchanged),
    )
    return RenderResult(
        output=result.output,
        added=result.added,
        changed=result.changed,
        removed=result.removed,
        unchanged=result.unchanged,
        warnings=result.warnings,
        written=True,
        changes=result.changes,
    )


def recover(output: Path) -> str | None:
    """Finish what a crashed render left: put an old directory back if the path is missing,
    and delete stale temp directories. Returns the path restored from, if any.

    Renders call this first; the gate may call it before starting the agent so that a crash in
    the fallback's one-instant window never starts the agent without its configuration.
    """
    target = _target(output)
    if not target.parent.is_dir():
        return None
    with _lock(target):
        return _recover_locked(target)


# --- the swap ----------------------------------------------------------------------------------


def _populate(tmp: Path, target: Path, options: Mapping[str, str], unchanged: set[str]) -> None:
    for name in sorted(options):
        if name in unchanged:
            # A hard link keeps inode, mtime and bytes: an unchanged option is the same file.
            try:
                os.link(target / name, tmp / name, follow_symlinks=False)
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP):
                    raise
            shutil.copy2(target / name, tmp / name, follow_symlinks=False)
            continue
        try:
            mode = stat.S_IMODE((target / name).stat().st_mode)
        except OSError:
            mode = 0o644
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.write(fd, options[name].encode())
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)


def _swap_in(new: Path, target: Path) -> Path | None:
    """Put directory ``new`` at ``target``; return where the old directory now is (or None)."""
    if not target.exists():
        os.rename(new, target)
        return None
    if _exchange(new, target):
        return new
    aside = target.with_name(f".{target.name}{_OLD_TAG}{time.time_ns()}-{os.getpid()}")
    os.rename(target, aside)
    # The fallback's window: a crash here leaves ``target`` missing and the old directory at
    # ``aside``; recover() renames it back before the next render does anything else.
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc: no wrapper
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _recover_locked(target: Path) -> str | None:
    prefix = f".{target.name}"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return None
    olds = sorted(target.parent / n for n in names if n.startswith(prefix + _OLD_TAG))
    temps = [target.parent / n for n in names if n.startswith(prefix + _RENDER_TAG)]
    restored = None
    if olds and not os.path.lexists(target):
        newest = olds[-1]  # names carry time_ns: the last one is the latest aside
        os.rename(newest, target)
        olds.remove(newest)
        restored = str(newest)
        get_logger().warning("config.recovered", output=str(target), restored_from=restored)
    for stale in olds + temps:
        shutil.rmtree(stale, ignore_errors=True)
    if restored is not None or olds or temps:
        fsync_dir(target.parent)
    return restored


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Serialize renders of one directory: a second render would delete the first one's temp
    directory as a stale leftover. The lock file is a sibling; flock dies with the process, so
    a killed render never leaves the directory locked."""
    import fcntl

    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(
            target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
    except OSError as exc:
        raise StateError(f"{target.parent}: cannot write there: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(
                        f"{target}: another render holds the lock for more than {LOCK_TIMEOUT:g}s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
