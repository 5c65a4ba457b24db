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
the old directory aside, which the next render puts back before it does anything else (under the
render lock; see :func:`_recover_locked`).

Only what the render manages is replaced: the stability defaults and the ``[agent]`` table. An
option file already in the directory that the render does not produce (an option of the node's
hand-written layout not yet imported with ``config import``) is *unmanaged*: it is carried into
the new directory as it is (hard-linked, same bytes) unless the render is asked to ``prune``,
so a render never deletes an option nobody asked it to delete.

Temp, old and lock entries are siblings of the directory, never inside it: the agent would read
anything inside as an option. A container that bind-mounts the directory keeps the old (now
deleted) directory until it restarts, because a bind mount pins the inode, not the path; the
agent reads ``--config-dir`` only at start anyway, so new options take effect at its next start,
which the gate paces. No agent changes configuration mid-run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from supervisor.base.catalog import EventId
from supervisor.base.errors import ConfigError, StateError
from supervisor.base.files import fsync_dir, held_lock, write_new
from supervisor.base.log import get_logger
from supervisor.core.options import OPTION_NAME_RULE, is_option_name
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
    """What a render did (or, for ``config diff``, would do) to the directory.

    ``kept`` are the unmanaged options (in the directory, not produced by the render) left as
    they are; ``removed`` are those a pruning render deletes (never both for one option).
    """

    output: Path
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    written: bool = False
    changes: tuple[Change, ...] = field(default=(), compare=False)
    kept: tuple[str, ...] = ()

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
            "kept": list(self.kept),
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
    for name, value in options.items():
        _check_option(name, value, where)
    _check_cluster_id(options, where)
    _check_kubeconfig(options, where)
    if options.get("labels", "").strip():
        return ()
    return (
        "agent.labels is not set: every distinct set of pod labels becomes a security "
        "identity, and identities are 16-bit; list the identity-relevant label prefixes",
    )


def _check_option(name: str, value: str, where: str) -> None:
    """The name is the agent's, the value fits in a file the agent reads as text."""
    if not is_option_name(name):
        raise ConfigError(f"{where}: agent.{name}: {OPTION_NAME_RULE}")
    if "\x00" in value:
        raise ConfigError(f"{where}: agent.{name} = {value!r}: contains a NUL character")
    if len(value.encode()) > MAX_OPTION_BYTES:
        raise ConfigError(f"{where}: agent.{name}: value is larger than 1 MiB")


def _check_cluster_id(options: Mapping[str, str], where: str) -> None:
    """``cluster-id`` in range for ``max-connected-clusters``, with a ``cluster-name`` the
    agent accepts beside it (it refuses to start otherwise)."""
    max_clusters = options.get("max-connected-clusters", "255").strip()
    if max_clusters not in ("255", "511"):
        raise ConfigError(
            f"{where}: agent.max-connected-clusters = {max_clusters!r}: must be 255 or 511"
        )
    if "cluster-id" not in options:
        return
    raw = options["cluster-id"]
    limit = int(max_clusters)
    try:
        cluster_id = int(raw.strip(), 10)
    except ValueError:
        cluster_id = -1
    if not 0 <= cluster_id <= limit:
        raise ConfigError(f"{where}: agent.cluster-id = {raw!r}: must be a whole number 0..{limit}")
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


def _check_kubeconfig(options: Mapping[str, str], where: str) -> None:
    """The agent exits at once without its kubeconfig: the path must be a file here."""
    if "k8s-kubeconfig-path" not in options:
        return
    raw = options["k8s-kubeconfig-path"]
    path = Path(raw.strip())
    if not raw.strip() or not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(
            f"{where}: agent.k8s-kubeconfig-path = {raw!r}: {what} (write one "
            "with `agent-supervisor kubeconfig render --out PATH`)"
        )


# --- reading and comparing ---------------------------------------------------------------------


def _target(output: Path) -> Path:
    """The directory to replace: a symlink at ``output`` is followed, so an operator's own
    symlink layout survives (the link keeps pointing at the same, now replaced, path)."""
    return Path(os.path.realpath(output))


def read_option_files(
    directory: Path, not_a_directory: str, refusal: Callable[[Path, str], Exception]
) -> dict[str, bytes] | None:
    """Every option file of ``directory`` and its bytes; None when the directory does not exist.

    Raises ``ConfigError("<directory>: <not_a_directory>")`` when the path is something else,
    ``refusal(path, why)`` for the first entry that is not an option file (a name the agent
    would not read as its option, anything but a regular file, more than 1 MiB; a symlink to a
    regular file counts as one, as the agent follows it), and :class:`StateError` (exit 74)
    when the directory or a file cannot be read.
    """
    try:
        st = directory.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{directory}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{directory}: {not_a_directory}")
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise StateError(f"{directory}: cannot list: {exc.strerror or exc}") from None
    found: dict[str, bytes] = {}
    for name in names:
        path = directory / name
        why = _not_an_option(path)
        if why is not None:
            raise refusal(path, why)
        try:
            found[name] = path.read_bytes()
        except OSError as exc:
            raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return found


def _not_an_option(path: Path) -> str | None:
    """Why the directory entry ``path`` is not an option file, or None when it is one."""
    if not is_option_name(path.name):
        return OPTION_NAME_RULE
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size > MAX_OPTION_BYTES:
        return "larger than 1 MiB"
    return None


def _read_current(target: Path) -> dict[str, bytes] | None:
    """The options in the directory now (None when it does not exist).

    Refuses a directory holding anything that is not an option file: rendering into the wrong
    path (``--output /etc``) must fail, not delete what is there.
    """
    return read_option_files(
        target, "exists and is not a directory (agent_config_dir or --output)", _foreign
    )


def _foreign(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{path.parent}: holds {path.name!r}, which is not an agent option file; "
        "refusing to replace this directory (is the output path right?)"
    )


def same_as_read(old: bytes, new: str) -> bool:
    """Equal as the agent reads them: it trims surrounding whitespace from every file."""
    return old.strip() == new.encode().strip()


def _shown(old: bytes) -> str:
    return old.decode("utf-8", "replace").strip()


def _diff(
    options: Mapping[str, str],
    current: Mapping[str, bytes] | None,
    output: Path,
    warnings: tuple[str, ...],
    prune: bool,
) -> RenderResult:
    have = current or {}
    added, changed, unchanged, changes = [], [], [], []
    for name in sorted(options):
        new = options[name]
        if name not in have:
            added.append(name)
            changes.append(Change(name, "added", None, new))
        elif same_as_read(have[name], new):
            unchanged.append(name)
        else:
            changed.append(name)
            changes.append(Change(name, "changed", _shown(have[name]), new))
    unmanaged = tuple(n for n in sorted(have) if n not in options)
    removed = unmanaged if prune else ()
    changes += [Change(n, "removed", _shown(have[n]), None) for n in removed]
    return RenderResult(
        output=output,
        added=tuple(added),
        changed=tuple(changed),
        removed=removed,
        unchanged=tuple(unchanged),
        warnings=warnings,
        changes=tuple(changes),
        kept=() if prune else unmanaged,
    )


# --- public entry points -----------------------------------------------------------------------


def plan(config: Config, output: Path | None = None, *, prune: bool = False) -> RenderResult:
    """What ``config render`` would change, without writing (``config diff``)."""
    options, warnings = agent_options(config)
    return plan_options(options, Path(output or config.agent_config_dir), warnings, prune=prune)


def render(config: Config, output: Path | None = None, *, prune: bool = False) -> RenderResult:
    """Write the agent's config directory from the configuration (``config render``)."""
    options, warnings = agent_options(config)
    return render_options(options, Path(output or config.agent_config_dir), warnings, prune=prune)


def plan_options(
    options: Mapping[str, str],
    output: Path,
    warnings: tuple[str, ...] = (),
    *,
    prune: bool = False,
) -> RenderResult:
    """The diff between ``options`` and the directory at ``output``; writes nothing."""
    return _diff(options, _read_current(_target(output)), output, warnings, prune)


def render_options(
    options: Mapping[str, str],
    output: Path,
    warnings: tuple[str, ...] = (),
    *,
    prune: bool = False,
) -> RenderResult:
    """Make the directory at ``output`` hold ``options``, atomically.

    Option files already there that ``options`` does not name are kept as they are, or
    deleted with ``prune``. Nothing is written when nothing changed. Raises
    :class:`ConfigError` for a wrong output path, :class:`StateError` (exit 74) for I/O
    errors; in both cases the directory is untouched.
    """
    target = _target(output)
    with _lock(target):
        _recover_locked(target)
        current = _read_current(target)
        result = _diff(options, current, output, warnings, prune)
        if current is not None and not result.any_change:
            return result
        _replace(target, options, set(result.unchanged) | set(result.kept), current is not None)
    get_logger().info(
        EventId.CONFIG_RENDERED,
        output=str(output),
        added=len(result.added),
        changed=len(result.changed),
        removed=len(result.removed),
        unchanged=len(result.unchanged),
        kept=len(result.kept),
    )
    return dataclasses.replace(result, written=True)


# --- the swap ----------------------------------------------------------------------------------


def _replace(target: Path, options: Mapping[str, str], link: set[str], exists: bool) -> None:
    """Build the new directory beside ``target`` and swap it in; the old one is deleted after.

    ``link`` names the files carried over from the old directory as they are (unchanged and
    unmanaged options); every other option of ``options`` is written. Called under the lock.
    """
    try:
        old_mode = stat.S_IMODE(target.stat().st_mode) if exists else 0o755
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_RENDER_TAG}", dir=target.parent))
    except OSError as exc:
        raise StateError(f"{target.parent}: cannot write there: {exc.strerror or exc}") from None
    try:
        _populate(tmp, target, options, link)
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


def _populate(tmp: Path, target: Path, options: Mapping[str, str], link: Collection[str]) -> None:
    """Fill the new directory: files named in ``link`` are hard links to the old directory's
    (a hard link keeps inode, mtime and bytes: an unchanged option is the same file); every
    other option is a new file, with the mode of the file it replaces (0644 when new).

    The new files are written whole and fsynced (:func:`~supervisor.base.files.write_new`),
    not renamed one by one: the whole directory is what is swapped in atomically.
    """
    for name in sorted(set(options) | set(link)):
        if name in link:
            _carry_over(target / name, tmp / name)
            continue
        try:
            mode = stat.S_IMODE((target / name).stat().st_mode)
        except OSError:
            mode = 0o644
        write_new(tmp / name, options[name].encode(), mode=mode)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link ``old`` at ``new``, or copy it (bytes, mode, times) where links cannot be."""
    try:
        os.link(old, new, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP):
            raise
        shutil.copy2(old, new, follow_symlinks=False)


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
    # ``aside``; the next render renames it back (_recover_locked) before anything else.
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
    """Finish what a killed render left, under the lock: put the old directory back if the
    path is missing (a kill between the fallback's two renames), and delete stale temp and
    old directories. Returns the path restored from, if any."""
    prefix = f".{target.name}"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return None
    olds = sorted(target.parent / n for n in names if n.startswith(prefix + _OLD_TAG))
    temps = [target.parent / n for n in names if n.startswith(prefix + _RENDER_TAG)]
    restored = None
    if olds and not os.path.lexists(target):
        newest = olds.pop()  # names carry time_ns: the last one is the latest aside
        os.rename(newest, target)
        restored = str(newest)
        get_logger().warning(EventId.CONFIG_RECOVERED, output=str(target), restored_from=restored)
    for stale in olds + temps:
        shutil.rmtree(stale, ignore_errors=True)
    if restored is not None or olds or temps:
        fsync_dir(target.parent)
    return restored


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Serialize renders of one directory: a second render would delete the first one's temp
    directory as a stale leftover. The lock file is a sibling, never inside the directory (the
    agent would read it as an option); see :func:`~supervisor.base.files.held_lock`."""
    failed = f"{target.parent}: cannot write there"
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise StateError(f"{failed}: {exc.strerror or exc}") from None
    with held_lock(
        target.parent / f".{target.name}.lock",
        timeout=LOCK_TIMEOUT,
        mode=0o644,
        busy=f"{target}: another render holds the lock for more than {LOCK_TIMEOUT:g}s",
        failed=failed,
    ):
        yield
