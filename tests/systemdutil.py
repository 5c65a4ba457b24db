"""systemd as PID 1 of private namespaces: the shipped units run by a real systemd.

This machine is shared, and a systemd that boots against it does damage: it runs
systemd-tmpfiles over /tmp, starts the services of multi-user.target, writes sysctls, sets the
host name, and at power-off swaps off, unmounts and detaches loop devices. So systemd runs only
inside namespaces of its own and sees only what the test gives it:

- new PID, mount, UTS, IPC, network and cgroup namespaces (``unshare``), and ``mount
  --make-rprivate /`` first, so that no mount or unmount in there reaches the host;
- ``container=`` in PID 1's environment: systemd then knows it is a container's init and skips
  what only a machine's init does (kernel modules, security policies, the clock, printk, making
  / shared, and at power-off swapoff, real unmounts, loop and DM detaching);
- fresh tmpfs on /tmp, /var/tmp and /run before systemd starts (booting over the host's /tmp
  would empty it for every other process), and on /etc/systemd/system and /var/log/journal: the
  host's enabled units, local units and drop-ins stay unseen, and the units under test are
  installed there as the README says (``cp``, ``systemctl enable --now``) without touching the
  host's; /proc/sys and /sys read-only (even in a container systemd bumps fs.file-max and
  fs.nr_open, which are global);
- /etc as an overlay whose upper layer is the test's (``files / "etc"``): the host's files show
  through, and whatever is written there (the README's ``/etc/agent-supervisor/config.toml``,
  which the units and a shell in the namespace read) stays the test's;
- a cgroup of its own (``as-test-sd-...`` in the cgroup2 hierarchy) that the cgroup namespace
  makes its root: systemd can neither see nor kill anything in another cgroup, so two of these
  tests on one machine cannot stop each other's units;
- a boot target of the test's own (``--unit=``) that wants the journal and nothing else (never
  multi-user.target or default.target: the test starts the units under test itself), a
  ``DefaultDependencies=no`` drop-in on every unit under test (sysinit.target's units, such as
  sysusers, remount-fs and sysctl, must not run against the host), and no generators
  (``SYSTEMD_GENERATOR_PATH`` names an empty directory);
- a stand-in ``docker.service`` (the agent's unit Requires= it, and the vendor unit would start
  a second dockerd on the machine's /var/lib/docker) and the engine the test already uses,
  through its socket bind-mounted at /run/docker.sock: never started, stopped or restarted here;
- the test's own directory (``tmp_path``) at the same path inside, so that compose files, the
  state directory and Docker's volume sources name the same files on both sides; an overlay on
  /usr/local/bin that adds ``agent-supervisor``, a link to this Python's console script (the
  editable install of this checkout) as the README's install makes it; /dev/console is a file
  of the test's.

It is driven from outside with ``nsenter -t PID -m -p systemctl ...`` and ``journalctl``, and
:meth:`NamespacedSystemd.close` powers it off whatever happened: it stops the units under test,
runs ``systemctl poweroff``, waits, and if PID 1 is still there kills it (SIGKILL to a PID
namespace's init ends every process in it), then removes the cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

SYSTEMD: Final = Path("/lib/systemd/systemd")
#: The target the namespace's systemd boots.
TARGET: Final = "as-test.target"
#: Tools the harness runs (util-linux, systemd).
TOOLS: Final = ("unshare", "nsenter", "setpriv", "mount", "systemctl", "journalctl")
#: systemd's own default PATH for services, given to PID 1 and to what runs in the namespace.
PID1_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DOCKER_STANDIN: Final = """\
# Stand-in for docker.service: the engine is the test's, reached through the socket that the
# harness bind-mounts at /run/docker.sock. The vendor unit would start a second dockerd.
[Unit]
Description=Stand-in for docker.service (the test's engine, through its socket)
DefaultDependencies=no

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
"""

#: The namespace's journal lives in its /run only, and reads nothing of the host's kernel log.
JOURNALD_CONF: Final = """\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToWall=no
ForwardToConsole=no
ForwardToKMsg=no
"""

NO_DEFAULT_DEPENDENCIES: Final = """\
# The test harness's: in a private namespace, sysinit.target's units must not run.
[Unit]
DefaultDependencies=no
"""


class Unavailable(Exception):
    """systemd cannot run as PID 1 of private namespaces here (the message says why)."""


def cgroup2_root() -> Path:
    """Where the cgroup2 hierarchy is mounted: /sys/fs/cgroup (unified) or its unified/
    (hybrid); :class:`Unavailable` without one."""
    fstypes: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstypes[fields[4]] = fields[fields.index("-") + 1]
    for where in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if fstypes.get(where) == "cgroup2":
            return Path(where)
    raise Unavailable("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")


def check_requirements() -> None:
    """Raise :class:`Unavailable` unless this machine can run the harness."""
    if os.geteuid() != 0:
        raise Unavailable("running systemd in private namespaces needs root")
    if not SYSTEMD.is_file():
        raise Unavailable(f"{SYSTEMD} is not installed (Debian package systemd)")
    missing = [tool for tool in TOOLS if not any(
        Path(d, tool).is_file() for d in PID1_PATH.split(":")
    )]  # fmt: skip
    if missing:
        raise Unavailable(f"missing {', '.join(missing)} (Debian packages util-linux, systemd)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise Unavailable("the kernel has no overlay file system (for /usr/local/bin)")
    cgroup2_root()


def docker_socket() -> Path:
    """The engine's Unix socket, as the tests' Docker client finds it (DOCKER_HOST or default)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise Unavailable(f"DOCKER_HOST={host}: only a Unix socket can be given to the namespace")
    return Path(os.path.realpath(host.removeprefix("unix://")))


#: The directories the namespace gets fresh tmpfs on: whatever lives there must be carried.
HIDDEN: Final = (Path("/tmp"), Path("/var/tmp"), Path("/run"))


def carried_paths(base: Path) -> list[str]:
    """``base``, and this checkout and the imported package's root when they live where the
    namespace mounts fresh tmpfs (a CI clone under /tmp): visible inside at the same paths."""
    import supervisor

    candidates = [
        base.resolve(),
        Path(__file__).resolve().parent.parent,
        Path(supervisor.__file__).resolve().parent.parent,
    ]
    out: list[Path] = []
    for path in candidates:
        hidden = any(path.is_relative_to(h) for h in HIDDEN)
        covered = any(path.is_relative_to(o) or o.is_relative_to(path) for o in out)
        if hidden and not covered:
            out.append(path)
    return [str(p) for p in out]


def boot_scripts(base: Path, files: Path, socket: Path | None, cgroup: Path) -> tuple[str, str]:
    """The host side (join the cgroup, unshare) and the namespace side (mounts, exec systemd).
    ``socket``: the Docker engine's, or None for none."""
    q = shlex.quote
    journal = ["mount -t tmpfs -o mode=2755 as-test-journal /var/log/journal"]
    carried = carried_paths(base)
    staged = files / "docker.sock"
    inner = [
        "set -eu",
        "mount --make-rprivate /",
        *([f"mount --bind {q(str(socket))} {q(str(staged))}"] if socket else []),
        # A fresh /run first; the test's directory (and the checkout, when it lives under
        # /tmp, /var/tmp or /run, as a CI clone may) waits there while /tmp and /var/tmp get
        # theirs, then moves back to its own path.
        "mount -t tmpfs -o mode=0755,nosuid,nodev as-test-run /run",
        *(
            line
            for i, path in enumerate(carried)
            for line in (
                f"mkdir /run/as-test-stage-{i}",
                f"mount --rbind {q(path)} /run/as-test-stage-{i}",
            )
        ),
        "mount -t tmpfs -o mode=1777,nosuid,nodev as-test-tmp /tmp",
        "mount -t tmpfs -o mode=1777,nosuid,nodev as-test-var-tmp /var/tmp",
        *(
            line
            for i, path in enumerate(carried)
            for line in (
                f"mkdir -p {q(path)}",
                f"mount --move /run/as-test-stage-{i} {q(path)}",
                f"rmdir /run/as-test-stage-{i}",
            )
        ),
        *(
            [": >/run/docker.sock", f"mount --bind {q(str(staged))} /run/docker.sock"]
            if socket
            else []
        ),
        "mkdir -p /run/systemd/system /run/systemd/journald.conf.d",
        f"mount --bind {q(str(files / 'units'))} /run/systemd/system",
        f"cp {q(str(files / 'journald.conf'))} /run/systemd/journald.conf.d/as-test.conf",
        # /etc of the namespace's own: the host's below, the test's directory above (the lower
        # directory is looked up before the mount covers it).
        f"mount -t overlay -o lowerdir=/etc,upperdir={q(str(files / 'etc' / 'upper'))},"
        f"workdir={q(str(files / 'etc' / 'work'))} as-test-etc /etc",
        "mount -t tmpfs -o mode=0755 as-test-etc-units /etc/systemd/system",
        *(journal if Path("/var/log/journal").is_dir() else []),
        f"mount -t overlay -o lowerdir={q(str(files / 'bin'))}:/usr/local/bin as-test-bin"
        " /usr/local/bin",
        f"mount --bind {q(str(files / 'console.log'))} /dev/console",
        "mount --bind /proc/sys /proc/sys",
        "mount -o remount,bind,ro /proc/sys",
        "mount -o remount,bind,ro /sys",
        # In the cgroup namespace, this mount's root is the cgroup made for this test.
        "mount -t cgroup2 -o nosuid,nodev,noexec as-test-cgroup /sys/fs/cgroup",
        "exec env -i container=agent-supervisor-test"
        f" PATH={PID1_PATH}"
        f" SYSTEMD_GENERATOR_PATH={q(str(files / 'empty'))}"
        f" SYSTEMD_ENVIRONMENT_GENERATOR_PATH={q(str(files / 'empty'))}"
        f" {SYSTEMD} --system --unit={TARGET} --show-status=no",
    ]
    outer = [
        "set -eu",
        # Join the test's cgroup first: unshare --cgroup makes the current cgroup the root.
        f"echo $$ >{q(str(cgroup / 'cgroup.procs'))}",
        # --kill-child: if unshare dies (it dies with the test: setpriv --pdeathsig), the
        # namespace's PID 1 gets SIGKILL, which ends every process of the namespace.
        "exec unshare --pid --fork --kill-child=SIGKILL --mount --mount-proc --uts --ipc --net"
        ' --cgroup --propagation private -- /bin/bash -c "$1"',
    ]
    return "\n".join(outer), "\n".join(inner)


class NamespacedSystemd:
    """A systemd of the test's own, PID 1 of private namespaces (see the module docstring).

    ``base`` is the test's directory (``tmp_path``), visible inside at the same path; the
    harness keeps its files in ``base / "systemd"``. ``units`` are the units under test: each
    gets the ``DefaultDependencies=no`` drop-in, and :meth:`close` stops them before powering
    off. Add drop-ins with :meth:`drop_in` before :meth:`boot`; install and start the units
    after it, with :meth:`run` (``cp``, ``systemctl enable --now``).
    """

    def __init__(self, base: Path, units: Sequence[str]) -> None:
        check_requirements()
        self.base = base
        self.units = tuple(units)
        self.files = base / "systemd"
        self.units_dir = self.files / "units"
        self.console = self.files / "console.log"
        self.boot_log = self.files / "boot.log"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._cgroup = cgroup2_root() / f"as-test-sd-{uuid.uuid4().hex[:8]}"
        dirs = (self.units_dir, self.files / "bin", self.files / "empty")
        for d in (*dirs, self.files / "etc" / "upper", self.files / "etc" / "work"):
            d.mkdir(parents=True, exist_ok=True)
        (self.files / "docker.sock").touch()
        self.console.touch()
        (self.files / "journald.conf").write_text(JOURNALD_CONF)
        # /usr/local/bin/agent-supervisor, linked to this Python's console script as the
        # README's install links it (or a wrapper where the script is elsewhere).
        link = self.files / "bin" / "agent-supervisor"
        script = Path(sys.executable).with_name("agent-supervisor")
        if script.is_file():
            link.symlink_to(script)
        else:
            link.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m supervisor "$@"\n')
            link.chmod(0o755)
        (self.units_dir / "docker.service").write_text(DOCKER_STANDIN)
        (self.units_dir / TARGET).write_text(
            "[Unit]\nDescription=agent-supervisor tests: the journal, nothing else\n"
            # No ordering after what it wants: the boot is over while a gate may still wait.
            "DefaultDependencies=no\nWants=systemd-journald.service\n"
        )
        for unit in self.units:
            self.drop_in(unit, "00-as-test-namespace.conf", NO_DEFAULT_DEPENDENCIES)

    def drop_in(self, unit: str, name: str, text: str) -> Path:
        """A drop-in in the namespace's /run/systemd/system/UNIT.d/: it applies on top of the
        unit wherever the unit is installed (/etc/systemd/system included)."""
        d = self.units_dir / f"{unit}.d"
        d.mkdir(exist_ok=True)
        path = d / name
        path.write_text(text)
        return path

    # --- life cycle ------------------------------------------------------------------------------

    def boot(self, timeout: float = 60.0) -> None:
        """Start systemd and wait until its target is active."""
        try:
            socket: Path | None = docker_socket()
        except Unavailable:
            socket = None  # a test that needs the engine checks docker_socket() itself
        if socket is not None and not socket.exists():
            socket = None
        outer, inner = boot_scripts(self.base, self.files, socket, self._cgroup)
        self._cgroup.mkdir()
        with open(self.boot_log, "ab") as log:
            self._proc = subprocess.Popen(
                # Killed with the test process (a SIGKILL-ed pytest leaves no systemd behind).
                ["setpriv", "--pdeathsig", "KILL", "--", "/bin/bash", "-c", outer, "boot", inner],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        self.pid = self._until(self._find_pid1, deadline, "systemd to become PID 1")
        self._until(self._booted, deadline, f"systemd to reach {TARGET}")

    def _until(self, probe: Callable[[], int | None], deadline: float, what: str) -> int:
        while True:
            value = probe()
            if value:
                return value
            if self._proc is not None and self._proc.poll() is not None:
                raise AssertionError(
                    f"the namespace ended while waiting for {what}:\n{self.logs()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.1)

    def _find_pid1(self) -> int | None:
        """The host PID of the namespace's PID 1 (unshare's only child), once it is systemd."""
        assert self._proc is not None
        me = self._proc.pid
        try:
            pid = int(Path(f"/proc/{me}/task/{me}/children").read_text().split()[0])
            exe = os.path.realpath(f"/proc/{pid}/exe")
        except (OSError, ValueError, IndexError):
            return None
        return pid if exe == os.path.realpath(SYSTEMD) else None

    def _booted(self) -> int | None:
        """1 once the boot target is active. (Not ``is-system-running``: that says "starting"
        while any job of the boot transaction is queued, and a gate may rightly wait an hour.)"""
        state = self.systemctl("is-active", TARGET, check=False, timeout=10).stdout.strip()
        if state == "failed":
            raise AssertionError(f"{TARGET} failed:\n{self.logs()}")
        return 1 if state == "active" else None

    def close(self, timeout: float = 60.0) -> None:
        """Stop the units under test, power off, wait; SIGKILL PID 1 if it is still there
        (which ends every process of the namespace); remove the cgroup. Safe to call twice,
        and after a failed boot."""
        proc = self._proc
        if proc is not None and proc.poll() is None and self.pid is not None:
            with contextlib.suppress(Exception):
                self.systemctl("stop", *self.units, check=False, timeout=timeout)
            with contextlib.suppress(Exception):
                self.systemctl("--no-block", "poweroff", check=False, timeout=30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        if proc is not None and proc.poll() is None:
            for pid in (self.pid, proc.pid):
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self._proc = None
        self._remove_cgroup()

    def _remove_cgroup(self, timeout: float = 10.0) -> None:
        """The test's cgroup and what systemd made in it, deepest first (a cgroup whose last
        process just died may refuse rmdir for a moment)."""
        deadline = time.monotonic() + timeout
        while self._cgroup.exists():
            for root, _dirs, _files in sorted(
                os.walk(self._cgroup), key=lambda entry: entry[0].count("/"), reverse=True
            ):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)

    @property
    def cgroup(self) -> Path:
        """The test's cgroup on the host (gone after :meth:`close`)."""
        return self._cgroup

    def __enter__(self) -> NamespacedSystemd:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- driving it ------------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace's mount and PID namespaces (``nsenter -m -p``)."""
        assert self.pid is not None, "not booted"
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": PID1_PATH, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` against the namespace's systemd."""
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """Properties of a unit, as ``systemctl show`` gives them."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def environment(self, unit: str) -> dict[str, str]:
        """The unit's Environment= as systemd merged it from the file and its drop-ins."""
        raw = self.show(unit, "Environment")["Environment"]
        return dict(word.split("=", 1) for word in shlex.split(raw))

    def journal_entries(self, unit: str) -> list[dict[str, str]]:
        """The unit's journal entries in order (``journalctl -o json``): ``MESSAGE``, ``_PID``
        (a PID of the namespace, as ``systemctl show`` gives them), ``__REALTIME_TIMESTAMP``
        (microseconds since the epoch); an entry whose message is not text is left out."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", "-u", unit], check=False).stdout
        entries = []
        for line in out.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("MESSAGE"), str):
                entries.append(entry)
        return entries

    def journal(self, unit: str | None = None) -> str:
        """The namespace's journal (of one unit), with microsecond timestamps."""
        argv = ["journalctl", "--no-pager", "-o", "short-precise"]
        return self.run([*argv, *(["-u", unit] if unit else [])], check=False).stdout

    def logs(self) -> str:
        """What to show when something fails: the boot log, the console, the journal."""
        parts = [f"--- boot log\n{_tail(self.boot_log)}", f"--- console\n{_tail(self.console)}"]
        if self.pid is not None and self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(Exception):
                parts.append("--- journal\n" + self.journal()[-8000:])
        return "\n".join(parts)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""
