"""Will ``docker compose up`` recreate the agent? The compose gate service's look at Docker.

An upgrade is a start like any other (invariant 7): ``CILIUM_IMAGE=...:2 docker compose up -d``
must replace the running agent only at the node's slot. The two compose implementations order
an upgrade differently, and the layout (``compose/docker-compose.yml``, and what ``migrate``
writes) serves both:

- Compose v2 recreates first: it stops and removes the old container and creates the new one
  before it starts anything, then starts the gate service and waits for it. The gate sees a
  new container that never ran; the supervisor service records the old run's stop (kill, then
  die: stopped on purpose); the new container starts when the gate allows it.
- docker-compose 1.29 runs the gate service first, while the old container still runs, and
  recreates the agent only once the gate exits 0. A gate that says "already running" would
  let it through ungated. So the gate must know that this ``up`` is about to replace the
  container: it compares the running container with what compose would create for the agent's
  service (:func:`differences`) and, if they differ, asks for a start that replaces the
  running run (``Look(replacing=True)``): it waits for the node's slot, the old container
  running meanwhile, and the approval names the run it replaces.

What the gate reads: the project directory, mounted read-only at :data:`COMPOSE_MOUNT` in the
gate service (its presence is what makes a ``gate`` the compose hook: ``status`` and the
systemd unit's gate never compare); the compose files named by ``COMPOSE_FILE`` (the gate's
environment or the project's ``.env``), else the ones compose recorded on the running
container (``com.docker.compose.project.config_files``), relative paths taken from the
container's ``com.docker.compose.project.working_dir``; the variables the files use, passed
through in the gate service's ``environment:`` (``- CILIUM_IMAGE``), and the project's
``.env``; and the image the agent's reference now names.

Why compare rather than compute compose's ``config-hash`` label: each implementation hashes
its own normalized model of the service (1.29 a JSON dump of its processed options and the
image id, v2 compose-go's Go structure), so a hash computed here would match one version of
one implementation at best, and a mismatch would make every re-run ``up -d`` wait for a slot.
The comparison instead reads what Docker records of the container, which both implementations
create alike: image reference and id, entrypoint, command, environment (env_file included),
mounts, tmpfs, privileged, network mode, restart policy, labels, user, working directory,
capabilities, pid and ipc modes, stop signal, read-only root, tty. A change to anything else
(``depends_on``, logging, healthcheck, resources) is a recreation 1.29 makes that the gate
cannot foresee: Docker's start is then recorded as started outside the gate (``via: docker``,
logged ``docker.started_outside_gate``) and counts. The errors go the cheap way: a false
"replacing" costs a wait for the slot and an approval withdrawn after ``docker.grace``; a false
"running" lets a recreation through ungated. When the gate cannot read the files at all it
says so (``docker.recreate_unknown``, an error) and answers as before ("already running"):
``doctor`` names the missing mount.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from supervisor.base.catalog import EventId
from supervisor.base.errors import ConfigError, one_line
from supervisor.base.log import get_logger
from supervisor.containers import COMPOSE_MOUNT
from supervisor.containers.compose import (
    PROJECT_LABEL,
    SERVICE_LABEL,
    as_mapping,
    environment,
    load_compose,
    mounts,
    read_dotenv,
    restart_policy,
    tokens,
)
from supervisor.core.container import ContainerInfo
from supervisor.gate.service import Inspect, Look
from supervisor.storage.config import Config

WORKING_DIR_LABEL: Final = "com.docker.compose.project.working_dir"
CONFIG_FILES_LABEL: Final = "com.docker.compose.project.config_files"
#: Labels of their own that compose and Docker Desktop put on containers (not the service's).
_OWN_LABELS: Final = ("com.docker.compose.", "desktop.docker.io/")
_SIMPLE_NETWORK_MODES: Final = ("host", "none", "bridge")


class CannotTell(Exception):
    """The gate cannot tell what compose would create (a file it cannot read, a container
    compose did not make); the message says why."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether ``up`` would recreate the running container: ``replacing`` None when the gate
    cannot tell; ``why``: the differences, or why it cannot tell."""

    replacing: bool | None
    why: tuple[str, ...] = ()


# --- what compose would create, against what runs -----------------------------------------------


def normal_ref(ref: str) -> str:
    """An image reference as one spelling: ``busybox`` = ``docker.io/library/busybox:latest``."""
    ref = ref.strip()
    name, _, digest = ref.partition("@")
    if ":" not in name.rsplit("/", 1)[-1] and not digest:
        name += ":latest"
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    name = name.removeprefix("library/")
    return f"{name}@{digest}" if digest else name


def _signal(value: object) -> str:
    text = str(value or "").strip().upper()
    if not text:
        return ""
    if text.isdigit():
        import signal as signals

        try:
            return signals.Signals(int(text)).name
        except ValueError:
            return text
    return text if text.startswith("SIG") else "SIG" + text


def _caps(value: Any) -> list[str]:
    out = set()
    for cap in value or []:
        text = str(cap).strip().upper()
        out.add(text if text == "ALL" or text.startswith("CAP_") else "CAP_" + text)
    return sorted(out)


def _env_dict(entries: Any) -> dict[str, str]:
    """``KEY=VALUE`` entries as a mapping; docker-compose 1.29's ``affinity:container==<old
    id>`` (a scheduling hint it adds to a recreated container) is not the service's."""
    out: dict[str, str] = {}
    for entry in entries or []:
        key, sep, value = str(entry).partition("=")
        if sep and not key.startswith("affinity:"):
            out[key] = value
    return out


def _argv(svc: Mapping[str, Any], image: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The entrypoint and command Docker records: the service's, else the image's (Docker
    drops the image's command when the entrypoint is set and the command is not)."""
    ep = tokens(svc["entrypoint"]) if svc.get("entrypoint") is not None else None
    cmd = tokens(svc["command"]) if svc.get("command") is not None else None
    if not ep:
        if not cmd:
            cmd = list(image.get("Cmd") or [])
        if ep is None:
            ep = list(image.get("Entrypoint") or [])
    return ep or [], cmd or []


def _env_files(svc: Mapping[str, Any], read: Callable[[Path], Path]) -> dict[str, str]:
    """The variables of the service's ``env_file``s, in order (a later file wins)."""
    out: dict[str, str] = {}
    value = svc.get("env_file")
    entries = value if isinstance(value, list) else [value] if value else []
    for entry in entries:
        path, required = entry, True
        if isinstance(entry, dict):
            path, required = entry.get("path"), bool(entry.get("required", True))
        where = read(Path(str(path)))
        if where.is_file():
            out.update(read_dotenv(where))
        elif required:
            raise CannotTell(f"env_file {path} is not readable here")
    return out


def _mounts(svc: Mapping[str, Any], directory: Path, image: Mapping[str, Any]) -> list[Any]:
    """The service's volumes as Docker lists them (``Mounts``), the image's own included."""
    out: list[Any] = []
    targets = set()
    for m in mounts({"volumes": svc.get("volumes") or []}, directory):
        targets.add(m.target)
        if m.kind == "bind":
            out.append(("bind", m.source, m.target, not m.read_only))
        elif m.kind == "tmpfs":
            out.append(("tmpfs", m.target))
        else:
            out.append(("volume", m.target, not m.read_only))
    for target in image.get("Volumes") or {}:
        if target not in targets:
            out.append(("volume", target, True))
    return sorted(out, key=repr)


def _actual_mounts(container: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for m in container.get("Mounts") or []:
        kind = m.get("Type")
        if kind == "bind":
            out.append(("bind", os.path.normpath(str(m.get("Source"))), m.get("Destination"),
                        bool(m.get("RW"))))  # fmt: skip
        elif kind == "tmpfs":
            out.append(("tmpfs", m.get("Destination")))
        else:
            out.append(("volume", m.get("Destination"), bool(m.get("RW"))))
    return sorted(out, key=repr)


#: One comparison: what, what compose would create, what Docker recorded of the container.
_Pair = tuple[str, object, object]


def differences(
    svc: Mapping[str, Any],
    *,
    directory: Path,
    container: Mapping[str, Any],
    image: Mapping[str, Any] | None,
    env: Mapping[str, str],
    read: Callable[[Path], Path] = lambda p: p,
) -> list[str]:
    """What compose would create for ``svc`` (interpolated) that differs from the running
    ``container`` (its inspect document), each as ``what: now -> then``; empty when compose
    would keep it. ``image``: the inspect document of the image the service's reference names
    now (None: not on this node, compose would pull it). ``directory``: the project directory
    (relative host paths); ``read``: where a host path of the project can be read here."""
    ref = svc.get("image")
    if ref is not None and image is None:
        # Nothing else can be compared with an image this node does not have.
        pulled = f"image {ref}: not on this node (compose pulls it)"
        return [*_differing(_image_pairs(ref, container, None)), pulled]
    icfg = (image or {}).get("Config") or {}
    return _differing(
        [
            *_image_pairs(ref, container, image),
            *_process_pairs(svc, container, icfg, env, read),
            *_host_pairs(svc, container, icfg, directory),
            *_identity_pairs(svc, container, icfg),
            *_isolation_pairs(svc, container, icfg),
        ]
    )


def _differing(pairs: Iterable[_Pair]) -> list[str]:
    """The comparisons that differ, each as ``what: now -> then``, in the order given."""
    return [f"{what}: {have!r} -> {want!r}" for what, want, have in pairs if want != have]


def _image_pairs(
    ref: object, container: Mapping[str, Any], image: Mapping[str, Any] | None
) -> list[_Pair]:
    """The image reference, one spelling each side, and the image's id when it is on this
    node: a reference that names another image now (a tag moved) is a recreation too."""
    if ref is None:
        return []
    cfg = container.get("Config") or {}
    pairs: list[_Pair] = [("image", normal_ref(str(ref)), normal_ref(str(cfg.get("Image") or "")))]
    if image is not None:
        pairs.append(("image id", image.get("Id"), container.get("Image")))
    return pairs


def _process_pairs(
    svc: Mapping[str, Any],
    container: Mapping[str, Any],
    icfg: Mapping[str, Any],
    env: Mapping[str, str],
    read: Callable[[Path], Path],
) -> list[_Pair]:
    """What the agent runs: entrypoint, command and environment, each the service's over the
    image's, as Docker records them (the image's own variables and the env_files included)."""
    cfg = container.get("Config") or {}
    ep, cmd = _argv(svc, icfg)
    want_env = {**_env_dict(icfg.get("Env")), **_env_files(svc, read), **environment(svc, env)}
    return [
        ("entrypoint", ep, list(cfg.get("Entrypoint") or [])),
        ("command", cmd, list(cfg.get("Cmd") or [])),
        ("environment", want_env, _env_dict(cfg.get("Env"))),
    ]


def _host_pairs(
    svc: Mapping[str, Any], container: Mapping[str, Any], icfg: Mapping[str, Any], directory: Path
) -> list[_Pair]:
    """What the agent sees of the node: volumes, tmpfs, privileges, network mode, restart.
    The network mode only when it is one Docker records as written (``host``, ``none``,
    ``bridge``): a project network or ``service:...`` is recorded as compose resolved it."""
    host = container.get("HostConfig") or {}
    tmpfs = [str(t).split(":")[0] for t in _listed(svc.get("tmpfs"))]
    pairs: list[_Pair] = [
        ("volumes", _mounts(svc, directory, icfg), _actual_mounts(container)),
        ("tmpfs", sorted(tmpfs), sorted((host.get("Tmpfs") or {}).keys())),
        ("privileged", bool(svc.get("privileged")), bool(host.get("Privileged"))),
    ]
    mode = svc.get("network_mode")
    if isinstance(mode, str) and mode in _SIMPLE_NETWORK_MODES:
        pairs.append(("network_mode", mode, host.get("NetworkMode")))
    policy = (host.get("RestartPolicy") or {}).get("Name") or "no"
    pairs.append(("restart", restart_policy(svc).split(":")[0], policy))
    return pairs


def _identity_pairs(
    svc: Mapping[str, Any], container: Mapping[str, Any], icfg: Mapping[str, Any]
) -> list[_Pair]:
    """Labels, user and working directory, the service's over the image's; the labels
    compose and Docker Desktop add of their own (:data:`_OWN_LABELS`) are not the service's."""
    cfg = container.get("Config") or {}
    labels = {**(icfg.get("Labels") or {}), **_labels(svc.get("labels"))}
    have = {k: v for k, v in (cfg.get("Labels") or {}).items() if not k.startswith(_OWN_LABELS)}
    return [
        ("labels", labels, have),
        ("user", str(svc.get("user") or icfg.get("User") or ""), cfg.get("User") or ""),
        (
            "working_dir",
            str(svc.get("working_dir") or icfg.get("WorkingDir") or ""),
            cfg.get("WorkingDir") or "",
        ),
    ]


def _isolation_pairs(
    svc: Mapping[str, Any], container: Mapping[str, Any], icfg: Mapping[str, Any]
) -> list[_Pair]:
    """Capabilities, pid and ipc modes, stop signal, read-only root, tty and stdin. The pid
    and ipc modes only when the service sets them: Docker's default depends on the daemon's
    configuration (``private`` or ``shareable`` ipc), which the files do not say."""
    cfg = container.get("Config") or {}
    host = container.get("HostConfig") or {}
    pairs: list[_Pair] = [
        ("cap_add", _caps(svc.get("cap_add")), _caps(host.get("CapAdd"))),
        ("cap_drop", _caps(svc.get("cap_drop")), _caps(host.get("CapDrop"))),
    ]
    for key, field in (("pid", "PidMode"), ("ipc", "IpcMode")):
        if svc.get(key) is not None:
            pairs.append((key, str(svc[key]), host.get(field) or ""))
    stop_signal = _signal(svc.get("stop_signal") or icfg.get("StopSignal"))
    return [
        *pairs,
        ("stop_signal", stop_signal, _signal(cfg.get("StopSignal"))),
        ("read_only", bool(svc.get("read_only")), bool(host.get("ReadonlyRootfs"))),
        ("tty", bool(svc.get("tty")), bool(cfg.get("Tty"))),
        ("stdin_open", bool(svc.get("stdin_open")), bool(cfg.get("OpenStdin"))),
    ]


def _labels(value: Any) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in as_mapping(value).items()}


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# --- reading the project where the gate service sees it ------------------------------------------


@dataclass(frozen=True, slots=True)
class Project:
    """The compose project of a running container, as the gate service can read it."""

    mount: Path
    working_dir: Path

    def read(self, path: Path) -> Path:
        """Where the host's ``path`` (relative: to the project directory) can be read here:
        under the mount when it lies in the project directory, else at the same path."""
        host = path if path.is_absolute() else self.working_dir / path
        host = Path(os.path.normpath(host))
        try:
            rel = host.relative_to(self.working_dir)
        except ValueError:
            return host
        return self.mount / rel

    def files(self, labels: Mapping[str, str], environ: Mapping[str, str]) -> list[Path]:
        """The compose files ``up`` reads: COMPOSE_FILE (this environment, then the project's
        ``.env``), else the ones compose recorded on the container."""
        env = {**read_dotenv(self.mount / ".env"), **environ}
        named = env.get("COMPOSE_FILE")
        if named:
            parts = named.split(env.get("COMPOSE_PATH_SEPARATOR") or os.pathsep)
        else:
            parts = (labels.get(CONFIG_FILES_LABEL) or "").split(",")
        paths = [Path(p.strip()) for p in parts if p.strip()]
        if not paths:
            raise CannotTell("compose recorded no files on the container and COMPOSE_FILE is unset")
        out = []
        for p in paths:
            here = self.read(p)
            if not here.is_file():
                raise CannotTell(
                    f"compose file {p} is not readable in the gate service (mount the project "
                    f"directory {self.working_dir} at {self.mount}, read-only)"
                )
            out.append(here)
        return out


def verdict(
    container: Mapping[str, Any],
    image_of: Callable[[str], Mapping[str, Any] | None],
    *,
    mount: Path,
    environ: Mapping[str, str],
) -> Verdict:
    """Whether ``up`` with the project's files as they are now would recreate ``container``
    (its inspect document). ``image_of``: the inspect document of an image reference on this
    node, None when there is none."""
    try:
        found = _compare(container, image_of, mount, environ)
    except (CannotTell, ConfigError) as exc:
        return Verdict(None, (one_line(exc, 500),))
    return Verdict(bool(found), tuple(found))


def _compare(
    container: Mapping[str, Any],
    image_of: Callable[[str], Mapping[str, Any] | None],
    mount: Path,
    environ: Mapping[str, str],
) -> list[str]:
    labels = (container.get("Config") or {}).get("Labels") or {}
    project, service = labels.get(PROJECT_LABEL), labels.get(SERVICE_LABEL)
    working_dir = labels.get(WORKING_DIR_LABEL)
    if not (project and service and working_dir):
        raise CannotTell("the container was not created by compose (no compose labels)")
    where = Project(mount, Path(working_dir))
    files = where.files(labels, environ)
    compose = load_compose(
        files[0],
        env=environ,
        extra=files[1:],
        default_override=False,
        project_dir=where.working_dir,
        only=service,
    )
    svc = compose.services.get(service)
    if svc is None:
        raise CannotTell(f"the compose files have no service {service!r} any more")
    ref = svc.get("image")
    return differences(
        svc,
        directory=where.working_dir,
        container=container,
        image=image_of(str(ref)) if ref is not None else None,
        env=compose.env,
        read=where.read,
    )


# --- the gate's inspector -----------------------------------------------------------------------


def hook_inspector(cfg: Config, mount: str = COMPOSE_MOUNT) -> Inspect | None:
    """The compose gate service's inspector: the container's State and whether ``up`` is
    about to replace it. None where this is not the compose hook (no project mounted at
    ``mount``) or no container is configured: the gate's usual inspector then."""
    name = cfg.docker_container
    if not name or not os.path.isdir(mount):
        return None
    said: dict[str, Any] = {}

    def inspect() -> ContainerInfo | Look | None:
        import docker.errors

        from supervisor.gate.inspect import (
            HOOK_TIMEOUT,
            connect_from_env,
            get_container,
            image_attrs,
        )

        client = connect_from_env(HOOK_TIMEOUT)
        try:
            container = get_container(client, name)
            if container is None:
                return None
            attrs = container.attrs
            info = ContainerInfo.from_attrs(attrs)
            if not info.running:
                return Look(True, info)
            try:
                found = verdict(
                    attrs,
                    lambda ref: image_attrs(client, ref),
                    mount=Path(mount),
                    environ=os.environ,
                )
            except (docker.errors.DockerException, OSError):
                raise  # Docker did not answer: the gate's "unknown"
            except Exception as exc:  # noqa: BLE001 - a file it cannot make sense of must not stall `up`
                found = Verdict(None, (f"cannot compare: {one_line(exc, 300)}",))
        finally:
            client.close()
        _say(found, info, said)
        return Look(True, info, replacing=bool(found.replacing))

    return inspect


def _say(found: Verdict, info: ContainerInfo, said: dict[str, Any]) -> None:
    """Log the verdict when it changes (a waiting gate looks again at every decision)."""
    if said.get("last") == found:
        return
    said["last"] = found
    log = get_logger()
    if found.replacing is None:
        log.error(
            EventId.DOCKER_RECREATE_UNKNOWN,
            container=info.name,
            why=found.why[0] if found.why else "",
            hint="cannot tell whether this `up` recreates the running agent: answering "
            "'already running'; an upgrade would start it outside the gate",
        )
    elif found.replacing:
        log.warning(
            EventId.DOCKER_RECREATE_EXPECTED,
            container=info.name,
            differences=list(found.why[:10]),
            hint="this `up` replaces the running agent: a start like any other, at the node's slot",
        )


__all__ = [
    "COMPOSE_MOUNT",
    "CannotTell",
    "Project",
    "Verdict",
    "differences",
    "hook_inspector",
    "normal_ref",
    "verdict",
]
