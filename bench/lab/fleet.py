"""N stand-in agents under one restart policy, as their nodes would supervise them.

- ``restart-loop``: restart at once (Docker's ``restart: always`` without its delays, or
  systemd ``Restart=always``; ``simulate`` calls it ``systemd``);
- ``kubelet``: CrashLoopBackOff, the first restart at once, then 10 s doubling to 5 min;
- ``agent-supervisor``: each agent behind a state directory of its own, as a node runs it:
  ``agent-supervisor gate --wait -- <agent>``, then ``agent-supervisor record-exit --code N``
  when it exits, real processes; a node name per agent, so the hashed slots spread;
- ``agent-supervisor+probe``: the same with ``[probe] urls`` at a limit-1 range on etcd
  (:meth:`Etcd.range_url`), and the ``probe.max_latency`` the lab chose (:mod:`capacity`).

The restart loop and kubelet are coroutines of the lab (they cost nothing, as on a node they
are another process's work); the gate is the real CLI, a process per call as on a node (forked
warm or started cold: :mod:`supervisors`), which execs the agent. A gated agent's first start,
when the lab sets the fleet up, is an operator's (``--force``): the fleet of the experiment
has been running for long, and how the gate admits a start is what the events measure, not
the set-up. The gate's log (stderr) is read as it comes: each ``probe.*`` event
is one probe request, counted apart from the agents' resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .base import (
    AGENT,
    AGENT_NICE,
    GATED,
    PREFIX,
    PROBED,
    LabError,
    child_env,
    now,
    on_a_node,
    secs,
)
from .etcd import Etcd
from .metrics import Sample, scrape
from .supervisors import Proc, Spawner, WarmProcess

# kubelet's CrashLoopBackOff (pkg/kubelet: 10 s doubling to 300 s, reset after 10 min).
KUBELET_INITIAL: Final = 10.0
KUBELET_MAX: Final = 300.0
KUBELET_RESET_AFTER: Final = 600.0
#: How often etcd's /metrics is read.
SCRAPE_EVERY: Final = 2.0
#: The reason a gated agent's set-up start gives (``--force --reason``).
SETUP_REASON: Final = "lab: the fleet has been running for long (set-up)"
#: The probe's answers, as the gate logs them (``supervisor/gate/probe.py`` EVENTS).
PROBE_EVENTS: Final = {
    "probe.ready": "ready",
    "probe.loaded": "loaded",
    "probe.down": "down",
    "probe.broken": "broken",
}


@dataclass(frozen=True)
class Setup:
    """Everything that stays the same across the fleets of one lab run."""

    agents: int
    outage: float
    timeout: float
    unreachable: float
    window: float
    slots: str
    stable_after: float
    #: Recovered within this long of the event (None: per scenario, see :mod:`scenarios`).
    bound: float | None
    observe: float | None
    settle: float | None
    quiet: float
    parallel: int
    workdir: Path
    config_file: Path
    cli: tuple[str, ...]
    #: ``probe.max_latency`` and ``probe.timeout`` of the probed gate.
    max_latency: float
    probe_timeout: float


class Fleet:
    """N agents under one restart policy, and the event lines they (and their gates) printed."""

    def __init__(
        self, setup: Setup, scenario: str, policy: str, etcd: Etcd, spawner: Spawner
    ) -> None:
        self.setup = setup
        self.spawner = spawner
        self.scenario = scenario
        self.policy = policy
        self.etcd = etcd
        self.name = f"{scenario}/{policy}"
        n = setup.agents
        #: (time, agent, kind, rest) per line of an agent, and "exit" when its process ended.
        self.events: list[tuple[float, int, str, str]] = []
        #: (time, answer) per probe request a gate made.
        self.probes: list[tuple[float, str]] = []
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
        self.procs: set[Proc] = set()
        #: Each agent's current process (the gate, which execs the agent) while it runs.
        self.current: dict[int, Proc] = {}
        self.started_once = [False] * n
        self.gate_errors = 0
        self.torn_down = False
        tag = f"{scenario}-{policy}"
        self.errlog = (setup.workdir / f"{tag}.stderr.log").open("ab")
        self.state_root = setup.workdir / f"state-{tag}"

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
            "--nice",
            str(AGENT_NICE),
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
        if self.policy in PROBED:
            opts += [
                "--set",
                f"probe.urls={self.etcd.range_url(PREFIX)}",
                "--set",
                f"probe.timeout={secs(s.probe_timeout)}",
                "--set",
                f"probe.max_latency={secs(s.max_latency)}",
            ]
        return opts

    def gate_args(self, i: int, forced: bool) -> list[str]:
        """``agent-supervisor``'s arguments that start agent ``i`` through the gate."""
        force = ["--force", "--reason", SETUP_REASON] if forced else []
        return ["gate", "--wait", *force, *self.gate_options(i), "--", *self.agent_argv()]

    async def start(self, i: int, forced: bool) -> Proc:
        """Agent ``i``'s process: through the gate (which execs it) when gated, else alone."""
        if self.policy in GATED:
            return await self.spawner.spawn(self.gate_args(i, forced), pipes=True)
        return await asyncio.create_subprocess_exec(
            *on_a_node(self.agent_argv(), "KILL"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )

    # -- supervision

    async def read_gate_log(self, stream: asyncio.StreamReader) -> None:
        """The gate's log lines (and nothing from the agent, which prints none): kept in the
        fleet's stderr log, and each probe request counted with its answer."""
        while True:
            line = await stream.readline()
            if not line:
                return
            self.errlog.write(line)
            if b'"probe.' not in line:
                continue
            t = now()
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                answer = PROBE_EVENTS.get(str(doc.get("event")))
                if answer is not None:
                    self.probes.append((t, answer))

    async def run_once(self, i: int, forced: bool) -> tuple[int, bool]:
        """Run agent ``i`` once (through the gate when gated); its exit code and whether the
        agent itself ran (a gate that fails exits without starting it)."""
        proc = await self.start(i, forced)
        self.procs.add(proc)
        self.current[i] = proc
        assert proc.stderr is not None
        gate_log = asyncio.create_task(self.read_gate_log(proc.stderr))
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate_log, 5.0)
        finally:
            gate_log.cancel()
            self.procs.discard(proc)
            if self.current.get(i) is proc:
                del self.current[i]
        t = now()
        self.synced[i] = False
        self.set_healthy(i, False, t)
        self.paced_once(i)
        self.events.append((t, i, "exit", str(code)))
        return code, ran

    async def record_exit(self, i: int, code: int) -> None:
        """``agent-supervisor record-exit``, as systemd's ExecStopPost= or the daemon does."""
        text = str(code) if code >= 0 else signal.Signals(-code).name.removeprefix("SIG")
        args = ["record-exit", "--code", text, *self.gate_options(i)]
        proc = await self.spawner.spawn(args, pipes=False, stderr=self.errlog)
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
            forced = self.policy in GATED and not self.started_once[i]
            code, ran = await self.run_once(i, forced)
            if ran:
                self.started_once[i] = True
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

    def kill_agents(self) -> int:
        """SIGKILL to every agent now running, in one go (the crash of the crash-live
        scenario); how many were signalled. Only processes this fleet started, by their pid."""
        running = [p for p in self.current.values() if p.returncode is None]
        warm = [p for p in running if isinstance(p, WarmProcess)]
        if warm:
            # One message to the fork server for all of them: the same instant.
            warm[0].server.signal(signal.SIGKILL, [p.rid for p in warm])
        for proc in running:
            if not isinstance(proc, WarmProcess):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        return len(running)

    async def read_metrics(self) -> Sample | None:
        """One read of etcd's /metrics now (kept with the others)."""
        t = now()
        sample = await asyncio.to_thread(scrape, self.etcd.metrics_url, t)
        if sample is not None:
            self.samples.append(sample)
        return sample

    async def scrape_loop(self) -> None:
        """Read etcd's /metrics every :data:`SCRAPE_EVERY` seconds until stopped."""
        while not self.stop.is_set():
            t = now()
            await self.read_metrics()
            rss = self.etcd.peak_rss()
            if rss is not None:
                self.etcd_peak = max(self.etcd_peak or 0.0, rss)
            await self.sleep(SCRAPE_EVERY - (now() - t))

    def write_events(self) -> None:
        """Every event line and probe answer, in time order, to ``<fleet>.events.tsv`` in the
        work directory (kept with ``--workdir``): monotonic time, agent, kind, the rest."""
        rows = [(t, str(i), kind, rest) for t, i, kind, rest in self.events]
        rows += [(t, "-", "probe", answer) for t, answer in self.probes]
        path = self.setup.workdir / f"{self.scenario}-{self.policy}.events.tsv"
        with path.open("w") as out:
            for t, i, kind, rest in sorted(rows):
                out.write(f"{t:.3f}\t{i}\t{kind}\t{rest}\n")

    async def teardown(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Stop every process of this fleet by its pid (TERM, then KILL), then the tasks; once."""
        if self.torn_down:
            return
        self.torn_down = True
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
        self.write_events()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise LabError(f"{self.name}: {task.exception()}")
