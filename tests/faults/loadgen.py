"""Load generator shared by the load fault test and ``bench/bench_load.py``.

``procs`` worker processes with ``threads`` threads each hammer one agent's state with gate
decisions and operator actions for ``seconds``, through the real store (real flock, real
files). Each worker writes its observations to a JSON file; :func:`run_load` gathers them.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from supervisor.core.state import OperatorFlag
from supervisor.gate.operators import Operator
from supervisor.gate.service import Gate
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

AGENT = "cilium-agent"
WINDOW = 2.0


def _config(state_dir: Path) -> Any:
    return load_config(
        env={},
        state_dir=state_dir,
        overrides={
            "cluster_size": 1,
            "window.base": "2s",
            "window.per_node": "0",
            "window.min": "1s",
            "slot_index": 0,
            "slot_count": 1,
        },
    )


def _worker(state_dir: str, out: str, threads: int, seconds: float, seed: int) -> None:
    cfg = _config(Path(state_dir))
    store = StateStore(Path(state_dir), lock_timeout=60)
    op = Operator("loadgen", 0)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        mine: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            roll = rng.random()
            t0 = time.perf_counter()
            now = time.time()
            if roll < 0.90:
                r = Gate(cfg, AGENT, store=store, operator=op).decide()
                now = r.decision.decided_at or now
                mine.append(
                    {
                        "kind": "gate",
                        "allowed": r.decision.allowed,
                        "via": r.decision.via,
                        "at": now,
                        "ms": (time.perf_counter() - t0) * 1000,
                    }
                )
                continue
            with store.transaction(AGENT) as tx:
                now = time.time()
                s = tx.state
                if roll < 0.95:
                    s = s.record_exit(now, rng.choice([0, 1, 137]))
                elif roll < 0.96:
                    s = s.with_hold(OperatorFlag("loadgen", "load", now, now + 0.3))
                elif roll < 0.962:
                    s = s.with_override(OperatorFlag("loadgen", "load", now, now + 0.1))
                else:
                    s = s.with_hold(None).with_override(None)
                tx.write(s, now)
            mine.append({"kind": "op", "ms": (time.perf_counter() - t0) * 1000})
            time.sleep(rng.uniform(0, 0.01))
        with lock:
            results.extend(mine)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    Path(out).write_text(json.dumps(results))


def run_load(
    state_dir: Path, *, procs: int = 8, threads: int = 25, seconds: float = 30.0
) -> list[dict[str, Any]]:
    """Run the load and return every observation of every worker."""
    StateStore(state_dir).prepare()
    ctx = multiprocessing.get_context("spawn")
    outs = [state_dir.parent / f"load-{i}.json" for i in range(procs)]
    ps = [
        ctx.Process(target=_worker, args=(str(state_dir), str(o), threads, seconds, i))
        for i, o in enumerate(outs)
    ]
    for p in ps:
        p.start()
    for p in ps:
        p.join(timeout=seconds + 300)
        if p.exitcode != 0:
            raise RuntimeError(f"load worker exited {p.exitcode}")
    results: list[dict[str, Any]] = []
    for o in outs:
        results.extend(json.loads(o.read_text()))
    return results


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


if __name__ == "__main__":  # pragma: no cover - manual use
    print(len(run_load(Path(sys.argv[1]), seconds=float(sys.argv[2]))))
