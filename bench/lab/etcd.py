"""An etcd of the lab's own: loopback only, free ports, its data in a directory of the run.

Debian's ``etcd-server`` 3.4, cilium's kvstore. It may allocate ``--etcd-memory`` (4.5 GiB)
beyond its 11.5 GiB of mapped address space (``RLIMIT_AS``): a storm makes it hold every full
resync in flight at once (about 90 MiB each here), and past the cap the Go runtime dies, as an
OOM kill would end it; the lab then starts it again after :data:`ETCD_RESTART_DELAY`, as its
unit would, and counts it. The cap keeps a storm of 200 from taking the memory of a machine
other people share; the crash loop is what an unbounded etcd would reach too, later.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import resource
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Final
from urllib.parse import quote

from .base import LabError, child_env, dies_with_lab, free_ports, now

#: etcd's address space before it serves anything: bbolt maps its file with a 10 GiB initial
#: size, and Go reserves about 1 GiB more (VmSize 11.1 GiB measured here).
ETCD_BASE_ADDRESS_SPACE: Final = 11.5 * 2**30
#: Default for ``--etcd-memory``: what etcd may allocate on top of that before it dies, as an
#: OOM kill would end it. 50 full resyncs of 20 MiB at once take 4.7 GiB here; 100 would take
#: twice that on a machine other people share.
ETCD_MEMORY: Final = 4.5 * 2**30
#: How long a dead etcd stays down before the lab starts it again, as its unit would.
ETCD_RESTART_DELAY: Final = 2.0
#: At most so many restarts of a dying etcd per run (then the run ends).
ETCD_MAX_RESTARTS: Final = 30
#: The highest finite bucket of etcd's gRPC latency histograms (Prometheus' defaults).
ETCD_TOP_BUCKET: Final = 10.0


class Etcd:
    """An etcd of the lab's own: loopback only, free ports, its data in ``workdir``.

    Only the process this object started is ever signalled, by its pid.
    """

    def __init__(self, directory: Path, binary: str, memory: float = ETCD_MEMORY) -> None:
        self.binary = binary
        self.memory = memory
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_path = directory / "etcd.log"
        directory.mkdir(parents=True, exist_ok=True)
        self.client_port, self.peer_port, self.metrics_port = free_ports(3)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL (the JSON gateway and /health)."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def health_url(self) -> str:
        """etcd's own health check (the lab's, not the probe's: it says nothing of load)."""
        return self.url + "/health"

    def range_url(self, prefix: str) -> str:
        """The probe's URL: a limit-1, keys-only range over ``prefix`` on the JSON gateway
        (the gate sends it as a POST, ``supervisor/gate/probe.py``): it waits where the
        agents' resyncs wait, behind what etcd is serving."""
        return f"{self.url}/v3/kv/range?key={quote(prefix, safe='/')}&prefix=true"

    @property
    def metrics_url(self) -> str:
        """/metrics on a listener of its own (a scrape does not queue behind the agents)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def argv(self) -> list[str]:
        """etcd's command line: one member, everything on 127.0.0.1."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name=lab",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=lab={peer}",
            "--initial-cluster-state=new",
            f"--listen-metrics-urls=http://127.0.0.1:{self.metrics_port}",
            "--metrics=extensive",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    @property
    def running(self) -> bool:
        """Whether the etcd this object started is still running."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def died(self) -> int | None:
        """The exit status of an etcd that ended without being stopped, else None."""
        return None if self.proc is None else self.proc.poll()

    def peak_rss(self) -> float | None:
        """The most memory etcd has held so far (VmHWM), in bytes; None if not running."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
        return None

    def launch(self) -> None:
        """Start etcd; returns at once (see :meth:`start`)."""
        if self.running:
            raise LabError("etcd is already running")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                dies_with_lab(self.argv()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=child_env(),
            )
        # A hard cap on what a storm can make etcd allocate: past it the Go runtime dies
        # ("out of memory"), as an OOM kill would end it, and the machine, which other people
        # share, is safe. Set on the running process (no preexec_fn: the lab has threads);
        # the limit survives setpriv's exec of etcd.
        limit = int(ETCD_BASE_ADDRESS_SPACE + self.memory)
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(self.proc.pid, resource.RLIMIT_AS, (limit, limit))

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether /health says true."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout) as r:
                return r.status == 200 and b'"true"' in r.read()
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def start(self, timeout: float = 60.0) -> float:
        """Start etcd and wait (bounded) until it is healthy; returns the seconds it took."""
        began = now()
        self.launch()
        deadline = began + timeout
        while now() < deadline:
            if not self.running:
                break
            if self.healthy():
                return now() - began
            time.sleep(0.1)
        self.stop()
        raise LabError(f"etcd did not become healthy within {timeout:g} s: {self.log_tail()}")

    async def astart(self, timeout: float = 60.0) -> float:
        """:meth:`start` without blocking the event loop (the fork stays on this thread)."""
        began = now()
        self.launch()
        deadline = began + timeout
        while now() < deadline:
            if not self.running:
                break
            if await asyncio.to_thread(self.healthy, 1.0):
                return now() - began
            await asyncio.sleep(0.1)
        await self.astop()
        raise LabError(f"etcd did not become healthy within {timeout:g} s: {self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to our etcd, SIGKILL if it lingers; nothing when it is not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    async def astop(self, timeout: float = 20.0) -> None:
        """:meth:`stop` without blocking the event loop."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = now() + timeout
            while proc.poll() is None and now() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) etcd has used so far, from /proc; None if not running."""
        proc = self.proc
        if proc is None:
            return None
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # utime and stime are fields 14 and 15 of stat(5); [1] after the name is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def copy_to(self, directory: Path) -> Etcd:
        """A new etcd (its own ports) on a copy of this one's data; this one must be stopped."""
        if self.running:
            raise LabError("copying the data of a running etcd")
        other = Etcd(directory, self.binary, self.memory)
        shutil.copytree(self.data_dir, other.data_dir)
        return other

    def log_tail(self, lines: int = 5) -> str:
        """The end of etcd's log, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def version(self) -> str:
        """``etcd --version``'s first line."""
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return (out.stdout.strip().splitlines() or ["etcd (version unknown)"])[0]
