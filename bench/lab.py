"""A fleet in one box against a real etcd: what a restart storm does to it, and what the gate does.

``simulate`` counts what each restart policy asks of the control plane on a model that has no
overload feedback. This lab asks a real one: an etcd of its own (Debian's ``etcd-server`` 3.4,
cilium's kvstore) filled with a cilium-like keyspace, N stand-in agents that each do a full
resync at start and then watch, supervised four ways, and an outage of D seconds. Per policy:

- ``restart-loop``: restart at once (Docker's ``restart: always`` without its delays, or
  systemd ``Restart=always``; ``simulate`` calls it ``systemd``);
- ``kubelet``: CrashLoopBackOff, the first restart at once, then 10 s doubling to 5 min;
- ``agent-supervisor``: each agent behind a state directory of its own, as a node runs it:
  ``agent-supervisor gate --wait -- <agent>``, then ``agent-supervisor record-exit --code N``
  when it exits, real processes; a node name per agent, so the hashed slots spread;
- ``agent-supervisor+probe``: the same with ``[probe] urls`` at etcd's ``/health``.

How it goes: fill etcd (timed); measure what it can serve (closed-loop full resyncs at 1, 2, 4
clients: the capacity C is the best rate at which no resync exceeded the client timeout); pick
the window W: production's ratio (5000 nodes / 60 min: N/W = 83/min, W = 144 s for N = 200), or
``agent-supervisor plan --nodes N --max-start-rate C*budget`` if that is longer (so N/W is what
etcd serves, as production's is what its control plane serves); then for
each policy: start the agents, paced so that start-up is no storm, wait until each agent's
first run is older than the window and ``stable_after`` (a long-running fleet), stop etcd for D,
start it again on the same data, and watch until every agent is healthy or a bound passes
(default D + 2W + 60 s). Each fleet has an etcd of its own, on a copy of the filled data (its
counters start at zero; ``--nested`` runs the next fleets while one settles and is down).
What is reported comes from etcd's own ``/metrics`` (Range requests started and handled per
gRPC code, bytes sent, the Range latency histogram: ``--metrics extensive``), from /proc (its
CPU time and peak memory) and from the agents' event lines (requests, resyncs served and
failed, health).

etcd may allocate ``--etcd-memory`` (4.5 GiB) beyond its 11.5 GiB of mapped address space
(``RLIMIT_AS``): a storm makes it hold every full resync in flight at once (about 90 MiB each
here), and past the cap the Go runtime dies, as an OOM kill would end it; the lab then starts
it again after 2 s, as its unit would, and counts it. The cap keeps a storm of 200 from taking
the memory of a machine other people share; the crash loop is what an unbounded etcd would
reach too, later.

Why stand-in agents are processes of ``bench/lab_agent.py`` (stdlib only, ``python -I -S``)
talking HTTP/1.0 to etcd's v3 JSON gateway: 200 agents share 2 cores with etcd, so an idle agent
must cost nothing (it blocks in ``recv`` on its watch) and a start must cost little (about 30 ms;
etcdctl would cost a Go start and its output formatting per resync). The restart loop and
kubelet are coroutines of this process (they cost nothing, as on a node they are another
process's work); the gate is the real CLI, a process per agent (about 150 ms of CPU per call,
30 MB per waiting gate), as on a node. Agents and gates run at nice 10: on a fleet they run on
other machines than etcd, so here they take the CPU etcd leaves.

Safety: etcd listens on 127.0.0.1 only, on ports the OS picked free, with its data in a
temporary directory; every process the lab starts is stopped by its own pid (and dies with the
lab: ``setpriv --pdeathsig``), never by name; every wait is bounded.

    python bench/lab.py                      # N=200, D=60 s, every policy; bench/lab-200.png
    python bench/lab.py --agents 20 --outage 30 --policies restart-loop,agent-supervisor+probe
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
AGENT: Final = BENCH / "lab_agent.py"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import lab_agent  # noqa: E402 - a sibling script, importable once its directory is on the path

POLICIES: Final = ("restart-loop", "kubelet", "agent-supervisor", "agent-supervisor+probe")
GATED: Final = frozenset({"agent-supervisor", "agent-supervisor+probe"})
#: The ``simulate`` policy that restarts as each lab policy does (for the comparison).
SIMULATE_POLICY: Final = {
    "restart-loop": "systemd",
    "kubelet": "kubelet",
    "agent-supervisor": "agent-supervisor",
    "agent-supervisor+probe": "agent-supervisor+probe",
}
PREFIX: Final = "cilium/state/"
#: etcd's default ``--max-txn-ops``: puts per transaction while filling.
TXN_OPS: Final = 128
# kubelet's CrashLoopBackOff (pkg/kubelet: 10 s doubling to 300 s, reset after 10 min).
KUBELET_INITIAL: Final = 10.0
KUBELET_MAX: Final = 300.0
KUBELET_RESET_AFTER: Final = 600.0
#: Width of the bins of the rates ("peak requests per 10 s") and of the plot.
BIN: Final = 10.0
#: Production's start budget N/W: 5000 nodes in the default 60-minute window.
PRODUCTION_RATE: Final = 5000 / 60.0
#: The share of the measured capacity ``plan`` gets as its start rate. ``plan`` keeps the
#: busiest minute under the rate, but a resync fails within its client timeout (5 s): hashed
#: slots bunch within a minute, and a bunch beyond what etcd serves in 5 s times out whole.
#: ``simulate --capacity`` puts 200 agents at 110/min at about 1.03 resyncs each with 0.7,
#: 1.4 with 1.0.
BUDGET: Final = 0.7
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
#: The niceness of every agent, gate and record-exit (etcd and the lab run at 0).
NODE_NICE: Final = 10
#: How often etcd's /metrics is read.
SCRAPE_EVERY: Final = 2.0


class LabError(RuntimeError):
    """The lab cannot go on (etcd does not start, agents never become healthy, ...)."""


def secs(seconds: float) -> str:
    """A duration as the CLI takes it (``171.5s``; never ``1e+03s``)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def now() -> float:
    """The lab's clock (monotonic seconds)."""
    return time.monotonic()


def log(*words: object) -> None:
    """Progress on stderr; the table goes to stdout."""
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    sys.stderr.write(f"[lab {stamp}] " + " ".join(str(w) for w in words) + "\n")
    sys.stderr.flush()


# --- processes of the lab's own --------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now, chosen by the kernel (bound together)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def dies_with_lab(argv: Sequence[str], sig: str = "TERM") -> list[str]:
    """``argv`` run so that it gets ``sig`` when the lab dies, however it dies.

    ``setpriv --pdeathsig`` sets the parent-death signal and execs: it survives the gate's exec
    of the agent, so nothing the lab started can outlive it (the signal follows the death of
    the thread that forked, so the lab forks from its main thread only).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", sig, "--", *argv] if setpriv else list(argv)


def on_a_node(argv: Sequence[str], sig: str = "TERM") -> list[str]:
    """``argv`` as a node's process: it dies with the lab, and runs at nice :data:`NODE_NICE`.

    On a real fleet the agents and their supervisors run on other machines than etcd; here
    they share two cores with it. At a lower priority they take what etcd leaves, so etcd
    serves about as it would on a machine of its own, whatever the policy costs on the nodes
    (200 gates deciding at the crash, or 200 agents starting every 5 s).
    """
    return dies_with_lab(["nice", "-n", str(NODE_NICE), *argv], sig)


def child_env() -> dict[str, str]:
    """The environment of every child: no AGENT_SUPERVISOR_* or ETCD* setting leaks in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_SUPERVISOR_", "ETCD", "ETCDCTL"))
    }


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
        """What the gate's probe asks."""
        return self.url + "/health"

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


# --- the keyspace -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fill:
    """What was written into etcd before the lab, and how long it took."""

    keys: int
    bytes: int
    seconds: float


def keyspace(total: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
    """cilium's kvstore layout, ``total`` keys with values of about ``value_size`` bytes.

    Identities by id and by labels (30 % and 20 %), endpoint IPs (45 %) and nodes (5 %) under
    ``cilium/state/``: what an agent lists when it resyncs. The padding makes every value
    about the same size, so the cost of a resync is set by ``total * value_size``.
    """
    n_id = max(1, total * 3 // 10)
    n_value = total * 2 // 10
    n_node = max(1, total // 20)
    n_ip = max(0, total - n_id - n_value - n_node)

    def pad(doc: dict[str, object]) -> bytes:
        raw = json.dumps(doc, separators=(",", ":"))
        doc["padding"] = "x" * max(0, value_size - len(raw) - 14)
        return json.dumps(doc, separators=(",", ":")).encode()

    def labels(i: int) -> str:
        return (
            f"k8s:app=app-{i};k8s:io.kubernetes.pod.namespace=ns-{i % 97};"
            "k8s:io.cilium.k8s.policy.cluster=default;"
        )

    def ip(i: int) -> str:
        return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"

    for i in range(n_id):
        key = f"{PREFIX}identities/v1/id/{256 + i}"
        yield key.encode(), pad({"labels": labels(i)})
    for i in range(n_value):
        key = f"{PREFIX}identities/v1/value/{labels(i % n_id)}/{ip(i % n_node)}"
        yield key.encode(), pad({"id": 256 + i % n_id})
    for i in range(n_ip):
        key = f"{PREFIX}ip/v1/default/{ip(65536 + i)}"
        doc = {
            "IP": ip(65536 + i),
            "ID": 256 + i % n_id,
            "Key": 0,
            "HostIP": f"192.168.{(i // n_node) % 256}.{i % n_node % 256}",
            "K8sNamespace": f"ns-{i % 97}",
            "K8sPodName": f"pod-{i}",
        }
        yield key.encode(), pad(doc)
    for i in range(n_node):
        key = f"{PREFIX}nodes/v1/default/node-{i:05d}"
        doc = {
            "Name": f"node-{i:05d}",
            "Cluster": "default",
            "IPAddresses": [{"Type": "InternalIP", "IP": f"192.168.{i // 256}.{i % 256}"}],
        }
        yield key.encode(), pad(doc)


def fill(url: str, total: int, value_size: int) -> Fill:
    """Write the keyspace through the JSON gateway, :data:`TXN_OPS` puts a transaction."""
    began = now()
    written = 0
    ops: list[dict[str, object]] = []

    def flush() -> None:
        body = json.dumps({"success": ops}).encode()
        req = urllib.request.Request(url + "/v3/kv/txn", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        if not answer.get("succeeded", False):
            raise LabError(f"filling etcd: a transaction failed: {str(answer)[:200]}")
        ops.clear()

    for key, value in keyspace(total, value_size):
        put = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
        ops.append({"request_put": put})
        written += len(key) + len(value)
        if len(ops) == TXN_OPS:
            flush()
    if ops:
        flush()
    return Fill(total, written, now() - began)


# --- etcd's /metrics ------------------------------------------------------------------------

_LINE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One read of etcd's /metrics: Range requests (gRPC, the JSON gateway included)."""

    t: float
    started: float
    handled: float
    ok: float
    sent_bytes: float
    #: The Range handling-time histogram: (upper bound, cumulative count), +Inf last.
    buckets: tuple[tuple[float, float], ...]


def parse_metrics(text: str, t: float) -> Sample:
    """The Range counters, bytes sent and the Range latency histogram from /metrics text."""
    started = handled = ok = sent = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        name, raw, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "etcd_network_client_grpc_sent_bytes_total":
            sent = value
            continue
        labels = dict(_LABEL.findall(raw))
        if labels.get("grpc_method") != "Range":
            continue
        if name == "grpc_server_started_total":
            started += value
        elif name == "grpc_server_handled_total":
            handled += value
            if labels.get("grpc_code") == "OK":
                ok += value
        elif name == "grpc_server_handling_seconds_bucket":
            le = labels.get("le", "+Inf")
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value
    return Sample(t, started, handled, ok, sent, tuple(sorted(buckets.items())))


def scrape(url: str, t: float, timeout: float = 2.0) -> Sample | None:
    """One read of /metrics; None when etcd does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse_metrics(r.read().decode(errors="replace"), t)
    except (OSError, ValueError, http.client.HTTPException):
        return None


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets; None when there is no count.

    A rank in the +Inf bucket answers the highest finite bound (the truth is above it).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lo_bound
            share = (rank - lo_count) / (count - lo_count) if count > lo_count else 1.0
            return lo_bound + (bound - lo_bound) * share
        lo_bound, lo_count = bound, count
    return lo_bound


def bucket_delta(
    later: Sequence[tuple[float, float]], earlier: Sequence[tuple[float, float]]
) -> tuple[tuple[float, float], ...]:
    """The histogram of what happened between two reads (a reset: ``later`` alone)."""
    before = dict(earlier)
    if any(count < before.get(bound, 0.0) for bound, count in later):
        return tuple(later)
    return tuple((bound, count - before.get(bound, 0.0)) for bound, count in later)


# --- what etcd can serve ----------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """Closed-loop full resyncs by ``clients`` clients at once."""

    clients: int
    per_minute: float
    p50: float
    worst: float
    served: int
    timeouts: int


@dataclass(frozen=True)
class Capacity:
    """What etcd serves: the best rate of full resyncs at which none timed out."""

    per_minute: float
    single_seconds: float
    levels: tuple[Level, ...]


def closed_loop(port: int, timeout: float, clients: int, seconds: float) -> Level:
    """``clients`` threads doing full resyncs back to back for ``seconds``."""
    durations: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    end = now() + seconds

    def worker() -> None:
        while now() < end:
            began = now()
            try:
                lab_agent.resync("127.0.0.1", port, PREFIX.encode(), timeout, 2.0)
            except lab_agent.Failed as exc:
                with lock:
                    failures.append(str(exc))
                continue
            with lock:
                durations.append(now() - began)

    began = now()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30.0)
    wall = now() - began
    durations.sort()
    return Level(
        clients=clients,
        per_minute=len(durations) / wall * 60.0,
        p50=durations[len(durations) // 2] if durations else math.inf,
        worst=durations[-1] if durations else math.inf,
        served=len(durations),
        timeouts=len(failures),
    )


def measure_capacity(
    port: int, timeout: float, clients: Sequence[int] = (1, 2, 4), seconds: float = 10.0
) -> Capacity:
    """Full resyncs back to back by 1, 2, 4 clients for ``seconds`` each (threads of this
    process, the agent's own code); stops at the first level where one timed out."""
    levels: list[Level] = []
    for k in clients:
        level = closed_loop(port, timeout, k, seconds)
        levels.append(level)
        log(
            f"capacity: {k} client(s): {level.per_minute:.0f} full resyncs/min, "
            f"p50 {level.p50:.2f} s, worst {level.worst:.2f} s, {level.timeouts} failed"
        )
        if level.timeouts:
            break
    good = [lv for lv in levels if lv.timeouts == 0 and lv.served > 0]
    best = max(good or levels, key=lambda lv: lv.per_minute)
    return Capacity(best.per_minute, levels[0].p50, tuple(levels))


# --- the fleet under one policy ---------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """Everything that stays the same across the policies of one lab run."""

    agents: int
    outage: float
    timeout: float
    unreachable: float
    window: float
    slots: str
    stable_after: float
    bound: float
    observe: float | None
    settle: float | None
    quiet: float
    parallel: int
    workdir: Path
    config_file: Path
    cli: tuple[str, ...]


@dataclass(frozen=True)
class PolicyResult:
    """What one policy made etcd serve, and when the fleet was healthy again.

    Times are seconds from the moment etcd was stopped; "after recovery" is from the moment
    it was started again.
    """

    policy: str
    agents: int
    setup_seconds: float
    setup_failures: int
    etcd_restarted_at: float
    etcd_healthy_at: float
    bound: float
    observed_until: float
    #: Agents' side, after recovery: processes started, full resyncs sent, served, failed.
    starts: int
    requests: int
    synced: int
    failed: int
    peak_requests_per_10s: int
    client_p99: float | None
    #: etcd's side (/metrics), since it was started again.
    etcd_started: float | None
    etcd_handled: float | None
    etcd_ok: float | None
    etcd_sent_bytes: float | None
    etcd_peak_per_10s: float | None
    etcd_p99: float | None
    #: CPU seconds etcd used from its restart to the end of the run.
    etcd_cpu_seconds: float | None
    all_healthy_at: float | None
    recovered: bool
    gate_errors: int
    timeline: dict[str, list[float | None]] = field(default_factory=dict)
    #: How often etcd died (out of its memory) after the outage and was started again, and when.
    etcd_deaths: int = 0
    etcd_died_at: list[float] = field(default_factory=list)
    #: The most memory etcd held during the run (its VmHWM, MiB).
    etcd_peak_rss_mib: float | None = None

    @property
    def requests_per_agent(self) -> float:
        """Full resyncs the agents sent after recovery, per agent."""
        return self.requests / self.agents

    @property
    def served_per_agent(self) -> float | None:
        """Range requests etcd handled (served or abandoned) after recovery, per agent."""
        return None if self.etcd_handled is None else self.etcd_handled / self.agents


class Fleet:
    """N agents under one restart policy, and the event lines they printed."""

    def __init__(self, setup: Setup, policy: str, etcd: Etcd) -> None:
        self.setup = setup
        self.policy = policy
        self.etcd = etcd
        n = setup.agents
        self.events: list[tuple[float, int, str, str]] = []
        self.samples: list[Sample] = []
        #: etcd's VmHWM at the latest read (it starts over when etcd is started again).
        self.etcd_peak: float | None = None
        self.synced = [False] * n
        self.healthy = [False] * n
        self.n_healthy = 0
        self.all_healthy_since: float | None = None
        self.paced = [False] * n
        self.pace = asyncio.Semaphore(setup.parallel)
        self.stop = asyncio.Event()
        self.procs: set[asyncio.subprocess.Process] = set()
        self.gate_errors = 0
        self.errlog = (setup.workdir / f"{policy}.stderr.log").open("ab")
        self.state_root = setup.workdir / f"state-{policy}"

    # -- bookkeeping

    def set_healthy(self, i: int, healthy: bool, t: float) -> None:
        """Agent ``i`` is (or is no longer) synced and watching."""
        if self.healthy[i] == healthy:
            return
        self.healthy[i] = healthy
        self.n_healthy += 1 if healthy else -1
        if self.n_healthy == self.setup.agents:
            self.all_healthy_since = t
        elif not healthy:
            self.all_healthy_since = None

    def paced_once(self, i: int) -> None:
        """Agent ``i``'s first start is over (synced, failed or gone): the next may start."""
        if not self.paced[i]:
            self.paced[i] = True
            self.pace.release()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the fleet is stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(seconds, 0.0))

    # -- command lines

    def agent_argv(self) -> list[str]:
        """The stand-in agent."""
        s = self.setup
        return [
            sys.executable,
            "-I",
            "-S",
            str(AGENT),
            "--port",
            str(self.etcd.client_port),
            "--prefix",
            PREFIX,
            "--timeout",
            f"{s.timeout:g}",
            "--unreachable",
            f"{s.unreachable:g}",
        ]

    def gate_options(self, i: int) -> list[str]:
        """The options every agent-supervisor call of agent ``i`` gets: its own state."""
        s = self.setup
        opts = [
            "--config",
            str(s.config_file),
            "--state-dir",
            str(self.state_root / f"agent-{i:03d}"),
            "--cluster-size",
            str(s.agents),
            "--node-name",
            f"lab-{i:03d}",
            "--set",
            f"window.base={secs(s.window)}",
            "--set",
            "window.per_node=0s",
            "--set",
            "window.min=1s",
            "--set",
            f"stable_after={secs(s.stable_after)}",
        ]
        if s.slots == "index":
            opts += ["--set", f"slot_index={i}", "--set", f"slot_count={s.agents}"]
        if self.policy.endswith("+probe"):
            opts += ["--set", f"probe.urls={self.etcd.health_url}"]
        return opts

    def argv(self, i: int) -> list[str]:
        """What the node's supervisor runs for agent ``i``."""
        if self.policy in GATED:
            gate = [*self.setup.cli, "gate", "--wait", *self.gate_options(i), "--"]
            return on_a_node([*gate, *self.agent_argv()])
        return on_a_node(self.agent_argv(), "KILL")

    # -- supervision

    async def run_once(self, i: int) -> tuple[int, bool]:
        """Run agent ``i`` once (through the gate when gated); its exit code and whether the
        agent itself ran (a gate that fails exits without starting it)."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(i),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            env=child_env(),
        )
        self.procs.add(proc)
        ran = False
        try:
            assert proc.stdout is not None
            while True:  # until EOF: the agent exits, or teardown stops it
                line = await proc.stdout.readline()
                if not line:
                    break
                t = now()
                kind, _, rest = line.decode(errors="replace").strip().partition(" ")
                self.events.append((t, i, kind, rest))
                if kind == "start":
                    ran = True
                elif kind == "synced":
                    self.synced[i] = True
                    self.set_healthy(i, True, t)
                    self.paced_once(i)
                elif kind == "watching" and self.synced[i]:
                    self.set_healthy(i, True, t)
                elif kind == "lost":
                    self.set_healthy(i, False, t)
                elif kind == "failed":
                    self.paced_once(i)
            code = await proc.wait()
        finally:
            self.procs.discard(proc)
        t = now()
        self.synced[i] = False
        self.set_healthy(i, False, t)
        self.paced_once(i)
        self.events.append((t, i, "exit", str(code)))
        return code, ran

    async def record_exit(self, i: int, code: int) -> None:
        """``agent-supervisor record-exit``, as systemd's ExecStopPost= or the daemon does."""
        text = str(code) if code >= 0 else signal.Signals(-code).name.removeprefix("SIG")
        proc = await asyncio.create_subprocess_exec(
            *on_a_node([*self.setup.cli, "record-exit", "--code", text, *self.gate_options(i)]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.errlog,
            env=child_env(),
        )
        self.procs.add(proc)
        try:
            await proc.wait()
        finally:
            self.procs.discard(proc)

    async def supervise(self, i: int) -> None:
        """Agent ``i``'s node: start it, and on every exit decide when it runs again."""
        backoff: float | None = None
        while not self.stop.is_set():
            began = now()
            code, ran = await self.run_once(i)
            if self.stop.is_set():
                return
            if self.policy in GATED:
                if not ran:
                    # The gate refused to run at all (configuration, state I/O): say so, and
                    # do not spin; the lab fails if this is more than a fluke.
                    self.gate_errors += 1
                    if self.gate_errors > 3 * self.setup.agents:
                        raise LabError(
                            f"the gate keeps failing (exit {code}): see {self.errlog.name}"
                        )
                    await self.sleep(1.0)
                    continue
                await self.record_exit(i, code)
            elif self.policy == "kubelet":
                ran_for = now() - began
                if backoff is None or ran_for >= KUBELET_RESET_AFTER:
                    backoff, delay = KUBELET_INITIAL, 0.0
                else:
                    backoff, delay = min(backoff * 2, KUBELET_MAX), backoff
                await self.sleep(delay)
            # restart-loop: at once.

    async def scrape_loop(self) -> None:
        """Read etcd's /metrics every :data:`SCRAPE_EVERY` seconds until stopped."""
        while not self.stop.is_set():
            t = now()
            sample = await asyncio.to_thread(scrape, self.etcd.metrics_url, t)
            if sample is not None:
                self.samples.append(sample)
            rss = self.etcd.peak_rss()
            if rss is not None:
                self.etcd_peak = max(self.etcd_peak or 0.0, rss)
            await self.sleep(SCRAPE_EVERY - (now() - t))

    async def teardown(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Stop every process of this fleet by its pid (TERM, then KILL), then the tasks."""
        self.stop.set()
        deadline = now() + 15.0
        for proc in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        while self.procs and now() < deadline:
            await asyncio.sleep(0.1)
        for proc in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        done, pending = await asyncio.wait(tasks, timeout=15.0) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        self.errlog.close()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise LabError(f"{self.policy}: {task.exception()}")


Inner = Callable[[], Coroutine[Any, Any, list["PolicyResult"]]]


async def run_policy(
    setup: Setup, etcd: Etcd, policy: str, inner: Inner | None = None
) -> list[PolicyResult]:
    """Start the fleet under ``policy``, stop etcd for D, start it again, watch it recover.

    ``inner`` (``--nested``) runs the next fleets, each against an etcd of its own, while this
    one settles and is down, when its agents idle (on their watches, or waiting in the gate)
    and cost nothing: this etcd comes back only once they are done, so no two fleets are ever
    measured at once, and this fleet's outage lasts as long as they take (at least D).
    Returns this policy's result, then the inner ones'.
    """
    fleet = Fleet(setup, policy, etcd)
    n = setup.agents
    if not etcd.running:
        await etcd.astart()
    tasks: list[asyncio.Task[None]] = []
    scraper = asyncio.create_task(fleet.scrape_loop())
    t0 = up_began = up_at = end = math.nan
    setup_seconds, setup_failures = math.nan, 0
    cpu_up: float | None = None
    cpu_end: float | None = None
    deaths: list[tuple[float, int]] = []
    peak = 0.0
    inner_task: asyncio.Task[list[PolicyResult]] | None = None
    inner_results: list[PolicyResult] = []
    setup_began = now()
    try:
        # 1. Start the agents, at most ``parallel`` resyncing at once: a fleet that grew, not
        # a storm. Bounded: each start waits at most the setup budget.
        budget = n * (setup.timeout + 2.0) / setup.parallel + 2 * setup.window + 120.0
        setup_deadline = setup_began + budget
        last_start = now()
        for i in range(n):
            left = setup_deadline - now()
            try:
                await asyncio.wait_for(fleet.pace.acquire(), max(left, 0.1))
            except TimeoutError:
                raise LabError(f"{policy}: setup took longer than {budget:.0f} s") from None
            last_start = now()
            tasks.append(asyncio.create_task(fleet.supervise(i)))
        while fleet.n_healthy < n and now() < setup_deadline:
            await asyncio.sleep(0.2)
        if fleet.n_healthy < n:
            raise LabError(f"{policy}: {n - fleet.n_healthy} agents not healthy after setup")
        setup_seconds = now() - setup_began
        setup_failures = sum(1 for e in fleet.events if e[2] == "failed")
        # 2. A long-running fleet: under the gate, each agent's first run must be older than
        # the window and stable_after, as production's runs of days are.
        settle = setup.settle
        if settle is None:
            settle = max(setup.window, setup.stable_after) + 2.0 if policy in GATED else 3.0
        log(f"{policy}: {n} agents healthy after {setup_seconds:.0f} s; settling {settle:.0f} s")
        if inner is not None:
            inner_task = asyncio.create_task(inner())
        await asyncio.sleep(max(0.0, last_start + settle - now()))
        # 3. The outage.
        t0 = now()
        await etcd.astop()
        log(f"{policy}: etcd stopped for {setup.outage:g} s")
        await asyncio.sleep(max(0.0, t0 + setup.outage - now()))
        if inner_task is not None:
            inner_results = await inner_task
        up_began = now()
        await etcd.astart()
        up_at = now()
        cpu_up = etcd.cpu_seconds()
        log(f"{policy}: etcd back after {up_at - t0:.1f} s; watching until {setup.bound:.0f} s")
        # 4. Recovery: until every agent has been healthy for ``quiet`` seconds, or the bound
        # (or ``observe`` seconds from etcd's return).
        until = t0 + setup.bound
        if setup.observe is not None:
            until = min(until, up_at + setup.observe)
        while now() < until:
            since = fleet.all_healthy_since
            if since is not None and since >= up_began and now() - since >= setup.quiet:
                break
            code = etcd.died
            if code is not None:
                # The storm killed it (out of memory): down again, and started again as its
                # unit would, which the agents meet as one more outage.
                peak = max(peak, fleet.etcd_peak or 0.0)
                deaths.append((now(), code))
                log(f"{policy}: etcd died (exit {code}) at {now() - t0:.0f} s; restarting it")
                if len(deaths) > ETCD_MAX_RESTARTS:
                    break
                etcd.proc = None
                await asyncio.sleep(ETCD_RESTART_DELAY)
                await etcd.astart()
                continue
            await asyncio.sleep(0.2)
        end = now()
        cpu_end = etcd.cpu_seconds()
    finally:
        if inner_task is not None and not inner_task.done():
            inner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inner_task
        await fleet.teardown(tasks)
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
        await etcd.astop()
    cpu = None if cpu_up is None or cpu_end is None or deaths else cpu_end - cpu_up
    peak = max(peak, fleet.etcd_peak or 0.0)
    result = summarize(fleet, setup, setup_seconds, setup_failures, t0, up_began, up_at, end, cpu)
    result = replace(
        result,
        etcd_deaths=len(deaths),
        etcd_died_at=[round(t - t0, 1) for t, _ in deaths],
        etcd_peak_rss_mib=round(peak / 2**20) if peak else None,
    )
    return [result, *inner_results]


async def run_all(
    setup: Setup, fleets: Sequence[tuple[str, Etcd]], nested: bool
) -> list[PolicyResult]:
    """Every policy, one after the other, or (``nested``) each inside the previous one's settle
    and outage (see :func:`run_policy`): the CI-sized test runs so, to take half the time."""
    if not fleets:
        return []
    if not nested:
        results: list[PolicyResult] = []
        for policy, etcd in fleets:
            log(f"{policy}: starting {setup.agents} agents")
            results += await run_policy(setup, etcd, policy)
        return results
    (policy, etcd), rest = fleets[0], fleets[1:]
    log(f"{policy}: starting {setup.agents} agents")

    async def inner() -> list[PolicyResult]:
        return await run_all(setup, rest, nested=True)

    return await run_policy(setup, etcd, policy, inner if rest else None)


def health_changes(
    events: Sequence[tuple[float, int, str, str]], n: int
) -> list[tuple[float, int]]:
    """(time, agents healthy from then on) at every change, replaying the event lines.

    Healthy: the agent's current process has synced and its watch is up (``lost`` until
    ``watching`` again, or until the process exits).
    """
    synced = [False] * n
    healthy = [False] * n
    count = 0
    out: list[tuple[float, int]] = []
    for t, i, kind, _ in sorted(events):
        if kind == "synced":
            synced[i] = True
            new = True
        elif kind == "watching":
            new = synced[i]
        elif kind == "lost":
            new = False
        elif kind == "exit":
            synced[i] = new = False
        else:
            continue
        if new != healthy[i]:
            healthy[i] = new
            count += 1 if new else -1
            out.append((t, count))
    return out


def binned(times: Sequence[float], t0: float, bins: int) -> list[int]:
    """How many of ``times`` fall into each :data:`BIN` from ``t0``."""
    counts = [0] * bins
    for t in times:
        k = int((t - t0) // BIN)
        if 0 <= k < bins:
            counts[k] += 1
    return counts


def counter_totals(samples: Sequence[Sample]) -> Sample | None:
    """The counters' increase over ``samples`` (all of them read after etcd was started
    again, whose counters began at zero), across later restarts: a counter that went down
    was reset by a new etcd process and counts from zero again. None without a read."""
    if not samples:
        return None
    total = {"started": 0.0, "handled": 0.0, "ok": 0.0, "sent_bytes": 0.0}
    prev = dict.fromkeys(total, 0.0)
    for s in samples:
        for name in total:
            value = float(getattr(s, name))
            total[name] += value - prev[name] if value >= prev[name] else value
            prev[name] = value
    return Sample(samples[-1].t, buckets=(), **total)


def histogram_total(samples: Sequence[Sample]) -> tuple[tuple[float, float], ...]:
    """The Range latency histogram over ``samples``, summed across etcd restarts."""
    total: dict[float, float] = {}
    prev: tuple[tuple[float, float], ...] = ()
    for s in samples:
        for bound, count in bucket_delta(s.buckets, prev):
            total[bound] = total.get(bound, 0.0) + count
        prev = s.buckets
    return tuple(sorted(total.items()))


def etcd_rate_peak(samples: Sequence[Sample], since: float, t0: float, bins: int) -> float | None:
    """The busiest :data:`BIN` of Range requests etcd started (its own counter), each read's
    increase spread evenly over the time since the previous read."""
    if not samples:
        return None
    per_bin = [0.0] * bins
    prev_t, prev_count = since, 0.0
    for s in samples:
        span = max(s.t - prev_t, 1e-9)
        grown = s.started - prev_count if s.started >= prev_count else s.started
        rate = grown / span
        a = prev_t
        while a < s.t:
            k = math.floor((a - t0) / BIN)
            b = min(s.t, t0 + (k + 1) * BIN)
            if 0 <= k < bins:
                per_bin[k] += rate * (b - a)
            a = b
        prev_t, prev_count = s.t, s.started
    return max(per_bin)


def summarize(
    fleet: Fleet,
    setup: Setup,
    setup_seconds: float,
    setup_failures: int,
    t0: float,
    up_began: float,
    up_at: float,
    end: float,
    etcd_cpu: float | None,
) -> PolicyResult:
    """The figures of one policy from its agents' event lines and etcd's reads.

    "After recovery" is from the moment etcd was started again (``up_began``); etcd's
    counters are those of the process started then, which began at zero.
    """
    n = setup.agents
    bins = math.ceil((end - t0) / BIN) + 1
    after = [e for e in fleet.events if up_began <= e[0] <= end]
    requests = binned([e[0] for e in after if e[2] == "request"], t0, bins)
    first_bin = int((up_began - t0) // BIN)
    # Client-side resync times: from a request to its agent's synced, failed or exit line.
    sent: dict[int, float] = {}
    took: list[float] = []
    for t, i, kind, _ in fleet.events:
        if kind == "request":
            sent[i] = t
        elif kind in ("synced", "failed", "exit") and i in sent:
            began = sent.pop(i)
            if began >= up_began:
                took.append(t - began)
    took.sort()
    client_p99 = took[max(0, math.ceil(0.99 * len(took)) - 1)] if took else None
    post = [s for s in fleet.samples if s.t >= up_began]
    totals = counter_totals(post)
    hist = histogram_total(post)
    # The timeline for the plot, per bin from the outage's start.
    changes = health_changes(fleet.events, n)
    healthy: list[float | None] = []
    j, count = 0, 0
    for k in range(bins):
        edge = t0 + (k + 1) * BIN
        # The teardown's exits come after ``end``: not part of the run.
        while j < len(changes) and changes[j][0] < min(edge, end):
            count = changes[j][1]
            j += 1
        healthy.append(float(count) if edge <= end + BIN else None)
    p99: list[float | None] = [None] * bins
    for before, later in itertools.pairwise(fleet.samples):
        k = int((later.t - t0) // BIN)
        if later.t >= t0 and 0 <= k < bins:
            q = quantile(0.99, bucket_delta(later.buckets, before.buckets))
            if q is not None:
                p99[k] = max(q, p99[k] or 0.0)
    first_all = next((t for t, c in changes if c == n and t >= up_began), None)
    all_healthy_at = None if first_all is None else first_all - t0
    starts = [e[0] for e in fleet.events if e[2] == "start"]
    return PolicyResult(
        policy=fleet.policy,
        agents=n,
        setup_seconds=round(setup_seconds, 1),
        setup_failures=setup_failures,
        etcd_restarted_at=round(up_began - t0, 2),
        etcd_healthy_at=round(up_at - t0, 2),
        bound=setup.bound,
        observed_until=round(end - t0, 1),
        starts=sum(1 for e in after if e[2] == "start"),
        requests=sum(requests),
        synced=sum(1 for e in after if e[2] == "synced"),
        # Resyncs that reached etcd and failed (a timeout, an error), not attempts to reach it.
        failed=sum(1 for e in after if e[2] == "failed" and not e[3].startswith("unreachable")),
        peak_requests_per_10s=max(requests[first_bin:], default=0),
        client_p99=_round(client_p99),
        etcd_started=None if totals is None else totals.started,
        etcd_handled=None if totals is None else totals.handled,
        etcd_ok=None if totals is None else totals.ok,
        etcd_sent_bytes=None if totals is None else totals.sent_bytes,
        etcd_peak_per_10s=_round(etcd_rate_peak(post, up_began, t0, bins), 1),
        etcd_p99=_round(quantile(0.99, hist)),
        etcd_cpu_seconds=_round(etcd_cpu, 1),
        all_healthy_at=_round(all_healthy_at, 1),
        recovered=all_healthy_at is not None and all_healthy_at <= setup.bound,
        gate_errors=fleet.gate_errors,
        timeline={
            "t": [k * BIN for k in range(bins)],
            "starts": [float(c) for c in binned(starts, t0, bins)],
            "requests": [float(c) for c in requests],
            "healthy": healthy,
            "etcd_p99": p99,
        },
    )


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


# --- choosing the window ---------------------------------------------------------------------


def plan_window(cli: Sequence[str], agents: int, rate: float, slots: str) -> tuple[float, str]:
    """``agent-supervisor plan`` for the measured capacity: the window, and the command."""
    argv = [*cli, "plan", "--nodes", str(agents), "--max-start-rate", f"{rate:.0f}"]
    argv += ["--slots", slots, "--json"]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=child_env()
    )
    if out.returncode != 0:
        raise LabError(f"{shlex.join(argv)}: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    doc = json.loads(out.stdout)
    shown = ["agent-supervisor", *argv[len(cli) :]]
    return float(doc["window_seconds"]), shlex.join(shown)


def supervisor_cli() -> tuple[str, ...]:
    """The installed console script, or this Python's ``-m supervisor``."""
    script = shutil.which("agent-supervisor")
    return (script,) if script else (sys.executable, "-m", "supervisor")


# --- simulate beside the lab ---------------------------------------------------------------------


def simulate_alongside(
    cli: Sequence[str], setup: Setup, capacity: float
) -> tuple[str, dict[str, Any]]:
    """``agent-supervisor simulate`` with the lab's N, D, C, W and timeouts: the command and
    its JSON."""
    args = [
        "simulate",
        "--nodes",
        str(setup.agents),
        "--outage",
        secs(setup.outage),
        "--fail-after",
        secs(setup.timeout),
        "--capacity",
        f"{capacity:.0f}",
        "--horizon",
        secs(setup.bound),
        "--slots",
        setup.slots,
        "--set",
        f"window.base={secs(setup.window)}",
        "--set",
        "window.per_node=0s",
        "--set",
        "window.min=1s",
        "--set",
        f"stable_after={secs(setup.stable_after)}",
    ]
    out = subprocess.run(
        [*cli, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=child_env(),
    )
    if out.returncode != 0:
        raise LabError(f"simulate: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return shlex.join(["agent-supervisor", *args]), json.loads(out.stdout)


# --- output ---------------------------------------------------------------------------------------


def _s(x: float | None, unit: str = " s", digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def render_table(results: Sequence[PolicyResult]) -> str:
    """One row per policy: what etcd served after recovery, and when the fleet was healthy.

    ``down``: how long etcd was down, until it answered again (D and its start, longer under
    ``--nested`` for the outer fleets);
    ``resyncs``: full resyncs the agents sent after it was back; ``etcd Range``: Range
    requests etcd handled (served or abandoned by their client), ``OK`` those it completed;
    ``failed``: resyncs sent that timed out or failed; ``etcd p99``: of its gRPC Range handling
    time (its histogram ends at 10 s); ``CPU s``: etcd's CPU time after it was
    back (none when it died on the way); ``MiB``: etcd's peak memory; ``died``: how often it
    died of its memory cap and was started again; times are from the moment etcd went down.
    """
    head = (
        f"{'policy':<24}{'down':>6}{'resyncs':>9}{'/agent':>8}{'etcd Range':>12}{'/agent':>8}"
        f"{'OK':>7}{'peak/10s':>10}{'etcd p99':>10}{'client p99':>12}{'failed':>8}"
        f"{'MiB sent':>10}{'CPU s':>7}{'MiB':>7}{'died':>5}  all healthy at"
    )
    rows = [head]
    for r in results:
        if r.all_healthy_at is None:
            healthy = f"not by {r.observed_until:.0f} s (the end of the run)"
        else:
            healthy = f"{r.all_healthy_at:.0f} s" + (
                "" if r.recovered else f" (after the {r.bound:.0f} s bound)"
            )
        rows.append(
            f"{r.policy:<24}{r.etcd_healthy_at:>5.0f}s{r.requests:>9,}"
            f"{r.requests_per_agent:>8.2f}"
            f"{_num(r.etcd_handled):>12}{_per(r.served_per_agent):>8}{_num(r.etcd_ok):>7}"
            f"{r.peak_requests_per_10s:>10}{_p99(r.etcd_p99):>10}"
            f"{_s(r.client_p99, ' s', 2):>12}{r.failed:>8,}"
            f"{_mib(r.etcd_sent_bytes):>10}{_num(r.etcd_cpu_seconds):>7}"
            f"{_num(r.etcd_peak_rss_mib):>7}{r.etcd_deaths:>5}  {healthy}"
        )
    return "\n".join(rows) + "\n"


def _p99(x: float | None) -> str:
    """etcd's histogram ends at 10 s: a p99 there is beyond it."""
    if x is None:
        return "-"
    return f">={x:.0f} s" if x >= ETCD_TOP_BUCKET else f"{x:.2f} s"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _per(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def render_comparison(results: Sequence[PolicyResult], sim: dict[str, Any]) -> str:
    """The lab beside ``simulate`` on the same N, D, C and W."""
    rows = [
        f"{'policy (simulate)':<42}{'resyncs/agent lab':>18}{'simulate':>10}"
        f"{'all healthy at lab':>20}{'simulate':>12}"
    ]
    for r in results:
        name = SIMULATE_POLICY[r.policy]
        o = sim["policies"].get(name)
        if o is None:
            continue
        sim_healthy = f"{o['all_healthy_at_seconds']:.0f} s" if o.get("recovered") else "not within"
        lab_healthy = (
            f"{r.all_healthy_at:.0f} s" if r.recovered and r.all_healthy_at else "not within"
        )
        rows.append(
            f"{r.policy + ' (' + name + ')':<42}{r.requests_per_agent:>18.2f}"
            f"{o['starts_after_outage_per_node']:>10.2f}{lab_healthy:>20}{sim_healthy:>12}"
        )
    return "\n".join(rows) + "\n"


def write_plot(
    results: Sequence[PolicyResult], path: Path, title: str, footer: str, outage: float
) -> None:
    """Requests, healthy agents and etcd's Range p99 per 10 s, per policy (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found, unused-ignore]
        FigureCanvasAgg,
    )
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    fig = Figure(figsize=(11, 10), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    for r in results:
        tl = r.timeline
        xs = [float(t or 0.0) for t in tl["t"]]
        ours = r.policy in GATED
        style = {"linewidth": 2.2 if ours else 1.3, "zorder": 3 if ours else 2}
        reqs = [float(v or 0.0) for v in tl["requests"]]
        axes[0].step([*xs, xs[-1] + BIN], [*reqs, 0.0], where="post", label=f"{r.policy}", **style)
        # None (no read, or after the run) is a gap in the line, not a zero.
        hy = [math.nan if v is None else float(v) for v in tl["healthy"]]
        (line,) = axes[1].plot([x + BIN for x in xs], hy, **style)
        py = [math.nan if v is None else float(v) for v in tl["etcd_p99"]]
        axes[2].plot([x + BIN / 2 for x in xs], py, marker=".", **style)
        for t in r.etcd_died_at:
            for ax in axes:
                ax.axvline(t, color=line.get_color(), linestyle=":", linewidth=1.0, alpha=0.8)
    for ax in axes:
        ax.axvspan(0, outage, color="red", alpha=0.08)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=10)
    axes[0].set_ylabel("full resyncs sent per 10 s")
    axes[0].legend(loc="upper right", fontsize="small")
    axes[1].set_ylabel("agents healthy (synced, watching)")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("etcd Range p99 per 10 s (s)")
    axes[2].set_xlabel(
        "seconds since etcd was stopped (shaded: down for D; dotted: etcd died of its memory cap)"
    )
    axes[0].set_title(title, fontsize="medium")
    fig.text(0.01, 0.005, footer, fontsize="x-small", family="monospace")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(str(path))


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=200, help="N stand-in agents (default 200)")
    ap.add_argument("--outage", type=float, default=60.0, help="D: seconds etcd is down")
    ap.add_argument("--keys", type=int, default=20_000, help="keys under cilium/state/")
    ap.add_argument("--value-size", type=int, default=1024, help="bytes per value")
    ap.add_argument("--timeout", type=float, default=5.0, help="an agent's resync timeout")
    ap.add_argument(
        "--unreachable", type=float, default=5.0, help="an agent exits when etcd is away this long"
    )
    ap.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}"
    )
    ap.add_argument(
        "--capacity",
        default="auto",
        help="full resyncs/min etcd serves: auto (measure), a number, or none (with --window)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=BUDGET,
        help=f"the share of the capacity the window is planned for (default {BUDGET:g})",
    )
    ap.add_argument(
        "--window",
        type=float,
        default=None,
        help="W in seconds (default: production's N/W, or plan's for the capacity if longer)",
    )
    ap.add_argument("--slots", choices=("hash", "index"), default="hash")
    ap.add_argument(
        "--stable-after",
        type=float,
        default=None,
        help="the gate's stable_after (default: 30 s, or W/6 if longer: production's 10m/60m)",
    )
    ap.add_argument(
        "--bound", type=float, default=None, help="recovered within (default D + 2W + 60 s)"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds between the last start and the outage (default: max(W, stable_after) "
        "under the gate: a long-running fleet)",
    )
    ap.add_argument("--quiet", type=float, default=10.0, help="healthy this long ends the run")
    ap.add_argument("--parallel", type=int, default=2, help="agents resyncing at once at setup")
    ap.add_argument("--plot", default=None, help="PNG path (default bench/lab-N.png)")
    ap.add_argument("--no-plot", action="store_true", help="no plot")
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    ap.add_argument("--no-simulate", action="store_true", help="skip simulate's comparison")
    ap.add_argument(
        "--nested",
        action="store_true",
        help="run each next fleet while the previous one settles and is down (its etcd "
        "stays down until they are done; no two fleets are measured at once): faster",
    )
    ap.add_argument(
        "--observe",
        type=float,
        default=None,
        help="watch at most this long after etcd is back (default: until the bound)",
    )
    ap.add_argument("--etcd", default="etcd", help="the etcd binary")
    ap.add_argument(
        "--etcd-memory",
        type=float,
        default=ETCD_MEMORY / 2**30,
        help="GiB etcd may allocate before it dies as if OOM-killed (and is started again)",
    )
    ap.add_argument("--workdir", default=None, help="keep the run's files here")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        ap.error(f"--policies: unknown {unknown} (known: {', '.join(POLICIES)})")
    args.policy_list = policies
    if args.agents < 1 or args.outage < 0 or args.keys < 1 or args.timeout <= 0:
        ap.error("--agents, --keys and --timeout must be positive, --outage >= 0")
    if args.capacity == "none" and args.window is None:
        ap.error("--capacity none needs --window")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the lab; 0 when it ran (whatever the policies did), 1 when it could not."""
    args = parse_args(argv)
    binary = shutil.which(args.etcd)
    if binary is None:
        print(f"lab: no etcd binary {args.etcd!r} (apt-get install etcd-server)", file=sys.stderr)
        return 1
    command = shlex.join(["python", "bench/lab.py", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="agent-supervisor-lab-")) if own else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    etcds = [Etcd(workdir / "etcd-0-seed", binary, args.etcd_memory * 2**30)]
    try:
        return asyncio.run(lab(args, etcds, workdir, command, date))
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("lab: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        for etcd in etcds:
            etcd.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


async def lab(
    args: argparse.Namespace, etcds: list[Etcd], workdir: Path, command: str, date: str
) -> int:
    """Everything after the arguments: fill, measure, plan, run each policy, report.

    ``etcds`` holds the seed etcd; every etcd made here is added, so the caller stops them all.
    """
    seed = etcds[0]
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        # SIGTERM ends the lab as Ctrl-C does: through every finally, etcd stopped by its pid.
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    cli = supervisor_cli()
    version = seed.version()
    header = [
        f"# lab {date} on {platform.node()}: {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {version}",
        f"# command: {command}",
    ]
    for line in header:
        log(line.removeprefix("# "))
    await seed.astart()
    filled = await asyncio.to_thread(fill, seed.url, args.keys, args.value_size)
    size = filled.bytes / 2**20
    header.append(
        f"# keyspace: {filled.keys:,} keys under {PREFIX} ({size:.1f} MiB), filled in "
        f"{filled.seconds:.1f} s"
    )
    log(header[-1].removeprefix("# "))
    capacity: Capacity | None = None
    cap_value: float | None = None
    if args.capacity == "auto":
        capacity = await asyncio.to_thread(measure_capacity, seed.client_port, args.timeout)
        cap_value = capacity.per_minute
        levels = ", ".join(
            f"{lv.clients}: {lv.per_minute:.0f}/min p50 {lv.p50:.2f} s"
            + (f" ({lv.timeouts} timed out)" if lv.timeouts else "")
            for lv in capacity.levels
        )
        header.append(
            f"# capacity: {cap_value:.0f} full resyncs/min within the {args.timeout:g} s "
            f"timeout (one alone: {capacity.single_seconds:.2f} s; by clients at once: {levels})"
        )
    elif args.capacity != "none":
        cap_value = float(args.capacity)
        header.append(f"# capacity: {cap_value:.0f} full resyncs/min (given)")
    if args.capacity != "none":
        log(header[-1].removeprefix("# "))
    if args.window is not None:
        window = float(args.window)
        header.append(f"# window: W = {window:g} s (given)")
    else:
        # Production's ratio, or longer when what etcd serves here needs it: the capacity of
        # a shared 2-core box swings with its load (110 to 330 a minute measured), and a
        # window planned at an idle moment would overload it at a busy one.
        assert cap_value is not None
        planned, plan_cmd = plan_window(cli, args.agents, cap_value * args.budget, args.slots)
        production = round(args.agents / PRODUCTION_RATE * 60.0, 1)
        window = max(planned, production)
        header.append(
            f"# window: W = {window:g} s, the longer of production's ratio ({production:g} s) "
            f"and `{plan_cmd}` ({planned:g} s)"
        )
    header[-1] += (
        f"; N/W = {args.agents / window * 60:.1f}/min (production: 5000 nodes / 60 min = "
        f"{PRODUCTION_RATE:.1f}/min)"
    )
    stable = args.stable_after if args.stable_after is not None else max(30.0, window / 6.0)
    bound = args.bound if args.bound is not None else args.outage + 2 * window + 60.0
    config_file = workdir / "empty-config.toml"
    config_file.write_text("")
    setup = Setup(
        agents=args.agents,
        outage=args.outage,
        timeout=args.timeout,
        unreachable=args.unreachable,
        window=window,
        slots=args.slots,
        stable_after=stable,
        bound=bound,
        observe=args.observe,
        settle=args.settle,
        quiet=args.quiet,
        parallel=max(1, args.parallel),
        workdir=workdir,
        config_file=config_file,
        cli=tuple(cli),
    )
    header.append(
        f"# {args.agents} agents, outage D = {args.outage:g} s, resync timeout "
        f"{args.timeout:g} s, an agent exits after {args.unreachable:g} s without etcd; "
        f"slots {args.slots}, stable_after {stable:g} s; recovered = every agent healthy "
        f"within {bound:.0f} s of the outage's start"
    )
    log(header[-2].removeprefix("# "))
    await seed.astop()
    fleets: list[tuple[str, Etcd]] = []
    for k, policy in enumerate(args.policy_list):
        # Each fleet its own etcd on a copy of the filled data: the same keyspace, counters
        # of its own, and (--nested) one that stays up or down while another is measured.
        etcd = seed.copy_to(workdir / f"etcd-{k + 1}-{policy}")
        etcds.append(etcd)
        fleets.append((policy, etcd))
    results = await run_all(setup, fleets, args.nested)
    for r in results:
        log(
            f"{r.policy}: {r.requests} resyncs after recovery, all healthy at "
            f"{r.all_healthy_at} s, recovered: {r.recovered}"
        )
    out = ["\n".join(header), "", render_table(results)]
    sim_cmd: str | None = None
    sim: dict[str, Any] | None = None
    if cap_value is not None and not args.no_simulate:
        sim_cmd, sim = simulate_alongside(cli, setup, cap_value)
        out += [f"# simulate beside it: {sim_cmd}", render_comparison(results, sim)]
    plot_path: Path | None = None
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else BENCH / f"lab-{args.agents}.png"
        title = (
            f"lab: {args.agents} agents, {filled.keys:,} keys ({size:.0f} MiB), etcd down "
            f"{args.outage:g} s, W = {window:g} s, C = {_num(cap_value)}/min; {date}"
        )
        try:
            write_plot(results, plot_path, title, command, args.outage)
            out.append(f"plot: {plot_path}")
        except ImportError:
            out.append("plot: not written (pip install matplotlib, the 'plot' extra)")
            plot_path = None
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        doc = {
            "date": date,
            "command": command,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "etcd": version,
            "fill": asdict(filled),
            "capacity": None if capacity is None else asdict(capacity),
            "capacity_per_minute": cap_value,
            "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(setup).items()},
            "policies": {
                r.policy: {
                    **asdict(r),
                    "requests_per_agent": r.requests_per_agent,
                    "served_per_agent": r.served_per_agent,
                }
                for r in results
            },
            "simulate_command": sim_cmd,
            "simulate": sim,
            "plot": None if plot_path is None else str(plot_path),
        }
        Path(args.json).write_text(json.dumps(_finite(doc), indent=1, default=str) + "\n")
    return 0


def _finite(value: object) -> object:
    """``value`` with every infinite or NaN float as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
