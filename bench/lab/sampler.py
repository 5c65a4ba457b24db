"""Ask the gate's probe again and again, one line per answer: what ``probe.max_latency`` is
chosen from (:mod:`capacity`).

The lab runs it as a node's process (nice 10, as every gate), so what it measures is what a
waiting gate measures on this box: the same code (``supervisor.gate.probe.probe_once``), the
same request (a limit-1, keys-only range POSTed to etcd's JSON gateway), the same scheduling.

    python bench/lab/sampler.py URL EVERY SECONDS TIMEOUT
    ready 0.012 200
"""

from __future__ import annotations

import sys
import time

from supervisor.gate.probe import probe_once


def main(argv: list[str]) -> int:
    """Probe ``URL`` every ``EVERY`` seconds for ``SECONDS``; print answer, latency, status."""
    url, every, seconds, timeout = argv[0], float(argv[1]), float(argv[2]), float(argv[3])
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        # max_latency just below the timeout: every answer within it is "ready", so the
        # latency itself is what is printed and compared.
        report = probe_once([url], timeout, None, max_latency=timeout * 0.999)
        r = report.results[0]
        latency = "-" if r.latency is None else f"{r.latency:.4f}"
        sys.stdout.write(f"{r.answer} {latency} {r.status or '-'}\n")
        sys.stdout.flush()
        time.sleep(every)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
