"""Helpers of the node tests: the one-line error check of a CLI run, and a writer killed with
SIGKILL at random moments."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator, Sequence

from conftest import Result, clean_env


def one_error_line(result: Result, code: int, *needles: str) -> str:
    """Assert exit ``code`` and exactly one stderr line, the error, containing ``needles``."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("agent-supervisor: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def killed_at_random(
    argv: Sequence[str], *, rounds: int, seed: int, max_delay: float
) -> Iterator[int]:
    """Run ``argv`` ``rounds`` times: wait for its ``ready`` line, let it work for a random
    while (up to ``max_delay`` seconds), SIGKILL it, and yield the round for the caller to
    look at what the killed process left."""
    rng = random.Random(seed)
    for n in range(rounds):
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env()
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            proc.stdout.close()
            time.sleep(rng.uniform(0, max_delay))
        finally:
            proc.kill()
            proc.wait(10)
        yield n
