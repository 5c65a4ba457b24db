"""Load generator shared by the load fault test and ``bench/bench_load.py``.

``procs`` worker processes with ``threads`` threads each hammer one agent's state with gate
decisions and reported ends for ``seconds`` while an operator holds, overrides and releases,
all through the Gate (the one writer of the state) and the real store (real flock, real
files). Each worker writes its
observations to a JSON file; :func:`run_load` gathers them.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from supervisor.gate.operators import Operator
from supervisor.gate.service import Gate
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

AGENT = "cilium-agent"
WINDOW = 2.0
#: Seconds between two operator actions (one worker's extra thread makes them).
OPERATOR_EVERY = 2.5


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
                        "run_id": r.decision.run_id,
                        "recorded": r.recorded,
                        "at": now,
                        "ms": (time.perf_counter() - t0) * 1000,
                    }
                )
                continue
            # The other writer of a node, through the same Gate: an end reported.
            Gate(cfg, AGENT, store=store, operator=op).report_end(rng.choice([0, 1, 137]))
            mine.append({"kind": "op", "ms": (time.perf_counter() - t0) * 1000})
            time.sleep(rng.uniform(0, 0.01))
        with lock:
            results.extend(mine)

    def operator() -> None:
        # The operator's hold, override and release in turn, at a fixed pace whatever the
        # machine's speed: a hold in force at every slot, or a release (a new first ask)
        # before every slot, would leave no gated start to check.
        mine: list[dict[str, Any]] = []
        actions = itertools.cycle(("hold", "override", "release"))
        while time.monotonic() + OPERATOR_EVERY < deadline:
            time.sleep(OPERATOR_EVERY)
            t0 = time.perf_counter()
            gate = Gate(cfg, AGENT, store=store, operator=op)
            action = next(actions)
            if action == "hold":
                gate.hold(0.3, "load")
            elif action == "override":
                gate.override(0.1, "load")
            else:
                gate.release("load")
            mine.append({"kind": "op", "ms": (time.perf_counter() - t0) * 1000})
        with lock:
            results.extend(mine)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    if seed == 0:
        ts.append(threading.Thread(target=operator))
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
