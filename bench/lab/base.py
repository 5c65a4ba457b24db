"""What every part of the lab shares: its constants, its error, its clock and log, and how it
starts a process so that nothing outlives it."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
BENCH: Final = HERE.parent
REPO: Final = BENCH.parent
#: The stand-in agent, run as a script (stdlib only, ``python -I -S``).
AGENT: Final = HERE / "agent.py"
#: The probe sampler, run as a script at the nodes' niceness (see :mod:`.capacity`).
SAMPLER: Final = HERE / "sampler.py"
#: The fork server of warm ``agent-supervisor`` calls (see :mod:`.supervisors`).
FORKSERVER: Final = HERE / "forkserver.py"

POLICIES: Final = ("restart-loop", "kubelet", "agent-supervisor", "agent-supervisor+probe")
GATED: Final = frozenset({"agent-supervisor", "agent-supervisor+probe"})
PROBED: Final = frozenset({"agent-supervisor+probe"})
#: The ``simulate`` policy that restarts as each lab policy does (for the comparison).
SIMULATE_POLICY: Final = {
    "restart-loop": "systemd",
    "kubelet": "kubelet",
    "agent-supervisor": "agent-supervisor",
    "agent-supervisor+probe": "agent-supervisor+probe",
}
#: The lab's scenarios, in the order they run: etcd down for D, and every agent killed at once
#: while etcd stays up.
SCENARIOS: Final = ("outage", "crash-live")
PREFIX: Final = "cilium/state/"
#: Width of the bins of the rates ("peak requests per 10 s") and of the plots.
BIN: Final = 10.0
#: The niceness every agent, gate, record-exit and probe sampler starts at (etcd and the lab
#: run at 0): the nodes' start-up takes what etcd leaves.
NODE_NICE: Final = 10
#: The niceness an agent reads its resync at, once started (``agent.py --nice``; needs root):
#: on a node it has a core of its own. Measured at nice 10 on this shared box: 159 of 200
#: resyncs timed out at 1.3 starts a second while etcd's own p99 stayed under 1 s, starved by
#: other people's processes at nice 0, not by etcd.
AGENT_NICE: Final = 0


class LabError(RuntimeError):
    """The lab cannot go on (etcd does not start, agents never become healthy, ...)."""


def secs(seconds: float) -> str:
    """A duration as the CLI takes it (``171.5s``; never ``1e+03s``)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def now() -> float:
    """The lab's clock (monotonic seconds)."""
    return time.monotonic()


def log(*words: object) -> None:
    """Progress on stderr; the tables go to stdout."""
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    sys.stderr.write(f"[lab {stamp}] " + " ".join(str(w) for w in words) + "\n")
    sys.stderr.flush()


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


def supervisor_cli() -> tuple[str, ...]:
    """The installed console script, or this Python's ``-m supervisor``."""
    script = shutil.which("agent-supervisor")
    return (script,) if script else (sys.executable, "-m", "supervisor")


def rounded(x: float | None, digits: int = 3) -> float | None:
    """``x`` rounded, None kept."""
    return None if x is None else round(x, digits)


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) CPU ticks of the machine so far, from /proc/stat (idle includes iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """How many cores of the machine were busy on average between two :func:`cpu_ticks`:
    the lab's and everyone else's (the box is shared)."""
    total = after[0] - before[0]
    if total <= 0:
        return None
    return (total - (after[1] - before[1])) / total * (os.cpu_count() or 1)
