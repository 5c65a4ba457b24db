"""The clocks a decision reads: the wall clock, and the boot clock that no wall clock step moves.

Why two clocks (invariant 8): the slots are a wall-clock grid shared by the fleet, so decisions
are made in wall time; but the wall clock can be stepped (an operator's ``date -s``, an NTP
server that was wrong, a VM restored from a snapshot), and a fact written before the step
would then look older or newer than it is: a forward jump of a day makes a crash loop's last
start look a day old (the agent starts at once), a hold for two hours look expired. Linux's
``CLOCK_BOOTTIME`` counts from boot, includes suspend, and is never stepped; facts written in
this boot (same ``/proc/sys/kernel/random/boot_id``) are measured on it
(:func:`supervisor.core.state.rebase`). Facts from an earlier boot have no such reference and
keep their wall times.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Final

BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of the clocks: wall seconds since the epoch and, when known, the boot clock.

    ``boot`` and ``boot_id`` are None where there is no boot clock to trust: a virtual clock
    (``simulate``), a test's fake clock, a system without ``CLOCK_BOOTTIME``.
    """

    wall: float
    boot: float | None = None
    boot_id: str | None = None


@functools.cache
def boot_id() -> str | None:
    """This boot's id (a UUID the kernel draws at boot), or None where there is none."""
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as fh:
            return fh.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def read_now() -> Now:
    """The wall clock and the boot clock, read together (the boot clock only where it exists)."""
    ident = boot_id()
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if ident is None or clock is None:
        return Now(time.time())
    boot = time.clock_gettime(clock)
    return Now(time.time(), boot, ident)
