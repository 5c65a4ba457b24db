"""Helpers for the tests that run against a real Docker engine.

Images are built locally (there is no registry here) and cached by a tag derived from their
content, so a rerun of the suite builds nothing:

- the stand-in agent: ``FROM scratch`` with Debian's static ``/bin/busybox`` and a shell script
  named ``cilium-agent`` whose run time and exit code the test chooses (environment variables
  ``STANDIN_RUN_SECONDS``/``STANDIN_EXIT_CODE``, or files of those names in ``--config-dir``);
- the supervisor's own image, built with ``compose/Dockerfile`` from a local base image: a
  minimal Debian made with ``debootstrap`` (python3 and python3-venv) and ``docker import``.

Also here: bounded waiting, reading ``docker events`` back from the engine, and Docker engines
of a test's own (:class:`PrivateDockerd`) for the tests that stop or restart an engine: those
never touch an engine they did not start, the machine's included.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from supervisor.base.files import held_lock

REPO: Final = Path(__file__).resolve().parent.parent
BUSYBOX: Final = Path("/bin/busybox")
DEBIAN_MIRROR: Final = os.environ.get(
    "AGENT_SUPERVISOR_DEBIAN_MIRROR", "http://deb.debian.org/debian"
)
BASE_TAG: Final = "agent-supervisor-base:bookworm-python3"
#: Every container, image and compose project these tests make carries this prefix.
PREFIX: Final = "as-test"

T = TypeVar("T")

STANDIN_SCRIPT: Final = r"""#!/bin/sh
# Stand-in for cilium-agent: runs for a while, then exits with a code, as the test says.
# STANDIN_RUN_SECONDS / STANDIN_EXIT_CODE from the environment, else the files
# standin-run-seconds / standin-exit-code in --config-dir. No run time: run until TERM.
dir=/tmp/cilium/config-map
for arg in "$@"; do
  case "$arg" in --config-dir=*) dir="${arg#--config-dir=}" ;; esac
done
secs="${STANDIN_RUN_SECONDS:-}"
code="${STANDIN_EXIT_CODE:-}"
[ -z "$secs" ] && [ -r "$dir/standin-run-seconds" ] && secs="$(cat "$dir/standin-run-seconds")"
[ -z "$code" ] && [ -r "$dir/standin-exit-code" ] && code="$(cat "$dir/standin-exit-code")"
echo "stand-in cilium-agent: up (run ${secs:-until TERM}, then exit ${code:-0})"
trap 'echo "stand-in cilium-agent: terminated"; exit 143' TERM INT
if [ -n "$secs" ]; then
  sleep "$secs" & wait $!
else
  while :; do sleep 3600 & wait $!; done
fi
exit "${code:-0}"
"""
INIT_SCRIPT: Final = '#!/bin/sh\necho "stand-in $0: done"\nexit 0\n'
STANDIN_DOCKERFILE: Final = """FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["cilium-agent", "--config-dir=/tmp/cilium/config-map"]
"""


def unique(kind: str) -> str:
    """A name no other test uses: ``as-test-<kind>-<random>``."""
    return f"{PREFIX}-{kind}-{uuid.uuid4().hex[:8]}"


def wait_for(
    predicate: Callable[[], T | bool | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --- building images -----------------------------------------------------------------------------


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def _image_exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


#: Builds that failed in this test run, by tag: fail the next test at once with the same
#: message instead of building again.
_FAILED_BUILDS: dict[str, str] = {}


def _build(client: Any, context: bytes, tag: str, **kwargs: Any) -> None:
    """Build from an in-memory tar context; a failure shows the build's own output.

    ``forcerm``: the intermediate containers go even when a step fails.
    """
    import docker.errors

    if tag in _FAILED_BUILDS:
        raise AssertionError(_FAILED_BUILDS[tag])
    try:
        client.images.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            **kwargs,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        _FAILED_BUILDS[tag] = f"building {tag} failed: {exc.msg}\n{log[-3000:]}"
        raise AssertionError(_FAILED_BUILDS[tag]) from None


def standin_image(client: Any) -> str:
    """The stand-in agent image (built once, cached by content)."""
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256(
        busybox + STANDIN_SCRIPT.encode() + INIT_SCRIPT.encode() + STANDIN_DOCKERFILE.encode()
    ).hexdigest()[:12]
    tag = f"{PREFIX}-standin:{digest}"
    if _image_exists(client, tag):
        return tag
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_file(tar, "Dockerfile", STANDIN_DOCKERFILE.encode())
        for d in ("rootfs", "rootfs/bin", "rootfs/usr", "rootfs/usr/bin", "rootfs/etc"):
            _add_dir(tar, d)
        _add_dir(tar, "rootfs/tmp", 0o1777)
        _add_file(tar, "rootfs/bin/busybox", busybox, 0o755)
        for applet in applets:
            if applet != "busybox" and re.fullmatch(r"[A-Za-z0-9._\[\]-]+", applet):
                _add_symlink(tar, f"rootfs/bin/{applet}", "busybox")
        _add_file(tar, "rootfs/usr/bin/cilium-agent", STANDIN_SCRIPT.encode(), 0o755)
        _add_file(tar, "rootfs/init-container.sh", INIT_SCRIPT.encode(), 0o755)
        _add_file(tar, "rootfs/install-plugin.sh", INIT_SCRIPT.encode(), 0o755)
        _add_file(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
    _build(client, buf.getvalue(), tag, network_mode="none")
    return tag


def base_image(client: Any) -> str:
    """A minimal Debian with python3 and venv, made by the documented recipe
    (``compose/local-base.sh``: debootstrap and ``docker import``; cached by tag)."""
    if _image_exists(client, BASE_TAG):
        return BASE_TAG
    with held_lock(
        os.path.join(tempfile.gettempdir(), "agent-supervisor-base-image.lock"),
        timeout=1800,
        mode=0o600,
        busy="another test process has been building the base image for 30 minutes",
        failed="cannot lock the base image build",
    ):
        if _image_exists(client, BASE_TAG):
            return BASE_TAG
        if shutil.which("debootstrap") is None:
            raise AssertionError("debootstrap is not installed (apt-get install debootstrap)")
        proc = subprocess.run(
            [str(REPO / "compose" / "local-base.sh"), BASE_TAG, DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"compose/local-base.sh failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                f"\n{proc.stderr[-2000:]}"
            )
    return BASE_TAG


def wheelhouse() -> Path:
    """Wheels of the project's dependencies, fetched by the host's pip (cached by the list).

    The image is built with ``--no-index`` from these: the build then needs no network, and
    does not depend on the base image trusting whatever proxy stands between us and PyPI.
    """
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [*deps, "setuptools>=68", "wheel"]
    key = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"agent-supervisor-wheels-{key}"
    if (target / ".complete").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(target),
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux_2_28_x86_64",
            *wanted,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(f"pip download failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    (target / ".complete").touch()
    return target


def _source_files() -> list[tuple[str, bytes]]:
    """What the supervisor image is built from, as (path in context, content)."""
    files: list[tuple[str, bytes]] = []
    for wheel in sorted(wheelhouse().glob("*.whl")):
        files.append((f"compose/wheels/{wheel.name}", wheel.read_bytes()))
    for path in sorted((REPO / "supervisor").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            files.append((str(path.relative_to(REPO)), path.read_bytes()))
    files.append(("pyproject.toml", (REPO / "pyproject.toml").read_bytes()))
    readme = REPO / "README.md"
    files.append(("README.md", readme.read_bytes() if readme.exists() else b"agent-supervisor\n"))
    files.append(("compose/Dockerfile", (REPO / "compose" / "Dockerfile").read_bytes()))
    return files


def supervisor_image(client: Any) -> str:
    """The supervisor's image from compose/Dockerfile on the local base (cached by content)."""
    base = base_image(client)
    files = _source_files()
    h = hashlib.sha256(client.images.get(base).id.encode())
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    tag = f"{PREFIX}-supervisor:{h.hexdigest()[:12]}"
    if _image_exists(client, tag):
        return tag
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files:
            _add_file(tar, name, data)
    # Everything comes from the context (--no-index): the build needs no network at all.
    _build(
        client,
        buf.getvalue(),
        tag,
        dockerfile="compose/Dockerfile",
        buildargs={"BASE_IMAGE": base, "PIP_EXTRA_ARGS": "--no-index"},
        network_mode="none",
    )
    _remove_older(client, f"{PREFIX}-supervisor", keep=tag)
    return tag


def _remove_older(client: Any, repository: str, keep: str, age: float = 3600.0) -> None:
    """Drop images of earlier source versions made more than ``age`` seconds ago (a test run
    in parallel may still use a recent one; an image a container uses stays anyway)."""
    import docker.errors

    for image in client.images.list(name=repository):
        created = _parse_created(image.attrs.get("Created", ""))
        if keep in image.tags or created is None or time.time() - created < age:
            continue
        for old in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(old)


def _parse_created(text: str) -> float | None:
    from supervisor.core.container import parse_docker_time

    return parse_docker_time(text)


# --- containers and events -----------------------------------------------------------------------


def remove_containers(client: Any, *names: str) -> None:
    """Force-remove containers by name; absent ones are fine."""
    import docker.errors

    for name in names:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.containers.get(name).remove(force=True)


def remove_project(client: Any, project: str) -> None:
    """Force-remove every container of a compose project."""
    import docker.errors

    for c in client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}, ignore_removed=True
    ):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True)


@dataclass(frozen=True, slots=True)
class Event:
    """One container event as the engine reported it."""

    time: float
    action: str
    name: str
    exit_code: int | None = None


def _event(ev: dict[str, Any]) -> Event:
    attrs = ev.get("Actor", {}).get("Attributes", {})
    code = attrs.get("exitCode")
    return Event(
        ev.get("timeNano", 0) / 1e9 or float(ev.get("time", 0)),
        ev.get("Action", ev.get("status", "")),
        attrs.get("name", ""),
        int(code) if code is not None else None,
    )


class Recorder:
    """The engine's container start/die events, read live from the moment it starts.

    Replaying past events (``since``/``until``) reads the engine's ring buffer, which keeps only
    its last 256 events of every kind: under other traffic on the same engine (another test's
    containers, networks, volumes) the early events of a busy test are gone, and a test that
    counts starts undercounts. A live stream has no such limit. :meth:`sync` makes sure every
    event up to now has arrived: it creates and removes a uniquely named volume and waits until
    the stream has delivered that create (events arrive in the order the engine emits them).
    """

    def __init__(self, client: Any) -> None:
        self.since = time.time()
        self._lock = threading.Lock()
        self._seen: list[Event] = []
        self._marks: set[str] = set()
        self._stream = client.events(
            decode=True,
            filters={"type": ["container", "volume"], "event": ["start", "die", "create"]},
        )
        self._thread = threading.Thread(target=self._read, name="docker-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream closed under us: the end
            for ev in self._stream:
                with self._lock:
                    if ev.get("Type") == "volume":
                        self._marks.add(ev.get("Actor", {}).get("ID", ""))
                    elif ev.get("Action") in ("start", "die"):
                        self._seen.append(_event(ev))

    def sync(self, client: Any, timeout: float = 30.0) -> None:
        """Return once every event the engine emitted before this call has been read."""
        mark = unique("events-sync")
        client.volumes.create(name=mark)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with self._lock:
                    if mark in self._marks:
                        return
                time.sleep(0.01)
            raise AssertionError(f"the engine's event stream did not deliver {mark} in {timeout}s")
        finally:
            with contextlib.suppress(Exception):
                client.volumes.get(mark).remove(force=True)

    def events(self, since: float, until: float, name: str) -> list[Event]:
        with self._lock:
            return [
                e for e in self._seen if e.name == name and since - 0.001 <= e.time <= until + 0.001
            ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()
        self._thread.join(timeout=10)


#: Live recorders by client (the ``docker_client`` fixture starts one for its client).
RECORDERS: dict[int, Recorder] = {}


def events(client: Any, since: float, until: float, name: str) -> list[Event]:
    """The engine's own record of a container's start/die events in [since, until]: from the
    client's live :class:`Recorder` when one has been running since ``since``, else replayed
    from the engine (its last 256 events only)."""
    rec = RECORDERS.get(id(client))
    if rec is not None and rec.since <= since:
        rec.sync(client)
        return rec.events(since, until, name)
    stream = client.events(
        since=int(since) - 1,
        until=int(until) + 1,
        decode=True,
        filters={"type": "container", "container": name, "event": ["start", "die"]},
    )
    out: list[Event] = []
    try:
        for ev in stream:
            e = _event(ev)
            if since - 0.001 <= e.time <= until + 0.001:
                out.append(e)
    finally:
        stream.close()
    return out


def starts(client: Any, since: float, until: float, name: str) -> list[float]:
    """Times at which the engine started the container in [since, until]."""
    return [e.time for e in events(client, since, until, name) if e.action == "start"]


# --- the daemon under test -----------------------------------------------------------------------


def cli_argv(*args: str) -> list[str]:
    """argv of ``agent-supervisor ARGS`` (the module entry, as installed)."""
    return [sys.executable, "-m", "supervisor", *args]


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process with stdout+stderr to ``log``; kill it (by its pid) when done."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


# --- Docker engines of a test's own --------------------------------------------------------------


def _docker_answers(sock_path: str) -> bool:
    """GET /_ping on the engine's socket, with a socket of our own that is always closed
    (the SDK leaks one per failed connect, which pytest turns into an error)."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]
    except OSError:
        return False
    finally:
        s.close()


def process_running(pid: int) -> bool:
    """Whether ``pid`` names a process that has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class PrivateDockerd:
    """A Docker engine of the test's own, for tests that stop, restart or kill an engine.

    Everything it has is its own, under :attr:`root`: socket, pid file, data root, exec root
    (dockerd starts its own containerd there, with its own sockets and state), ``daemon.json``
    and trust key (else dockerd reads /etc/docker's), log. No bridge and no iptables rules:
    host networking or none only, and nothing of the machine's network is touched. It is
    stopped by the pid of the process started here, never looked up by name: another dockerd
    on the machine (the shared engine, someone else's test run) is none of its business.

    It starts empty: build or load the images a test needs into it (:meth:`client`).
    """

    def __init__(self, name: str = "engine") -> None:
        # Under /tmp, not pytest's tmp_path: a unix socket's path has at most 107 bytes, and
        # containerd's sockets sit three levels below the exec root.
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"as-dockerd-{name}-", dir="/tmp"))
        self.sock = self.root / f"{name}.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.log = self.root / "dockerd.log"
        self.config = self.root / "daemon.json"
        # deprecated-key-path has no command-line flag in 20.10; without it dockerd uses (and
        # would create) /etc/docker/key.json.
        self.config.write_text(
            json.dumps({"deprecated-key-path": str(self.root / "key.json")}) + "\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The DOCKER_HOST of this engine."""
        return f"unix://{self.sock}"

    @property
    def argv(self) -> list[str]:
        """How this engine is started (and started again)."""
        return [
            "dockerd",
            "--config-file", str(self.config),
            "-H", self.host,
            "--pidfile", str(self.pidfile),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--bridge=none",
            "--iptables=false",
        ]  # fmt: skip

    @property
    def pid(self) -> int:
        """The pid of the running dockerd started here."""
        if self._proc is None:
            raise AssertionError(f"dockerd {self.name} was not started")
        return self._proc.pid

    def alive(self) -> bool:
        """Whether the dockerd started here is still running."""
        return self._proc is not None and self._proc.poll() is None

    def answers(self) -> bool:
        """Whether the engine answers on its socket."""
        return _docker_answers(str(self.sock))

    def client(self, timeout: float = 30) -> Any:
        """A Docker SDK client for this engine (close it)."""
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def start(self, timeout: float = 60) -> float:
        """Start dockerd and wait until it answers; return how long that took (seconds)."""
        if self.alive():
            raise AssertionError(f"dockerd {self.name} is already running ({self.pid})")
        began = time.monotonic()
        with open(self.log, "ab") as out:
            # A session of its own: a Ctrl-C on the terminal reaches pytest, whose finalizer
            # stops the engine in order, not dockerd in the middle of a test.
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(
                    f"dockerd {self.name} exited ({self._proc.returncode}) while starting:\n{tail}"
                )
            return self.answers()

        wait_for(up, timeout, f"dockerd {self.name} to answer on {self.sock}", interval=0.05)
        return time.monotonic() - began

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM the dockerd started here (it stops its containers and its containerd) and
        wait for it; SIGKILL after ``timeout``. Return how long that took (seconds)."""
        began = time.monotonic()
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self._stop_containerd()
        return time.monotonic() - began

    def restart(self, timeout: float = 60) -> float:
        """Stop and start this engine as before; return how long it was away (seconds)."""
        return self.stop(timeout) + self.start(timeout)

    def _stop_containerd(self) -> None:
        """The containerd this dockerd started, if it outlived dockerd (a SIGKILL): known by
        its pid file in our exec root and its config path, never by its name."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.exec_root).encode() + b"/" not in cmdline or not process_running(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not process_running(pid), 30, "containerd to stop")
        if process_running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _mounts(self) -> list[str]:
        """Mount points under :attr:`root` (deepest first)."""
        out = []
        prefix = str(self.root) + "/"
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if point.startswith(prefix):
                out.append(point)
        return sorted(out, key=len, reverse=True)

    def close(self) -> None:
        """Stop the engine and remove its directory (unmounting what it may have left)."""
        self.stop()
        for point in self._mounts():
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def assert_untouched(engine: PrivateDockerd, pid: int) -> None:
    """``engine`` is the same process as before and answers ``docker info`` on its socket."""
    assert engine.pid == pid
    assert process_running(pid)
    info = subprocess.run(
        ["docker", "-H", engine.host, "info", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert info.returncode == 0 and info.stdout.strip(), info.stderr
