"""The scenarios ``simulate`` knows, in a module light enough for the CLI's start-up path.

``supervisor.fleet.simulate`` is imported only when a simulation runs; the ``simulate``
command's options are typed with these names on every start of the program.

Every scenario begins at t=0 with a fleet whose agents have run, stable, for days
(:data:`supervisor.fleet.world.LONG_RUN`). The storms of issue 15 come first: they start with
the control plane *up*, which is when a fleet that restarts together hurts most.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

ScenarioKind = Literal[
    "crash-live",
    "restart",
    "power-loss",
    "lone-crash",
    "outage",
    "boot-storm",
    "rolling",
    "restart-all",
]
SCENARIOS: Final[tuple[ScenarioKind, ...]] = get_args(ScenarioKind)

#: What each scenario does (``simulate --help`` lists these).
DESCRIPTIONS: Final[dict[ScenarioKind, str]] = {
    "crash-live": "every agent crashes at 0 while the control plane stays up (a bad policy "
    "push, a bug every agent hits, a short etcd blip)",
    "restart": "every agent is stopped and started at 0 on purpose, exit 143 after 3 days "
    "(salt '*' systemctl restart cilium-agent)",
    "power-loss": "every node loses power at 0 and boots after --outage (default 2h), within "
    "--boot-spread; the last runs' ends are unknown",
    "lone-crash": "one node crashes alone on a healthy, idle control plane: every node name "
    "is one independent trial, and the table gives the median, p90 and max wait",
    "outage": "every agent crashes at 0 and the control plane is down for --outage",
    "boot-storm": "every node boots within --boot-spread while the control plane is down",
    "rolling": "agents restarted one by one on purpose, --interval apart",
    "restart-all": "outage, and every node's supervisor restarted at --at",
}

#: Scenarios in which the control plane stays up throughout: ``--outage`` does not go with
#: them (a :class:`~supervisor.fleet.world.Scenario` of these kinds has ``outage = 0``).
LIVE: Final[tuple[ScenarioKind, ...]] = ("crash-live", "restart", "lone-crash")

#: ``--outage`` when it is not given: how long the control plane is down from 0 (for
#: ``power-loss``, how long the power is off: the control plane is back when the nodes boot).
DEFAULT_OUTAGE: Final[dict[ScenarioKind, str]] = {
    "crash-live": "0s",
    "restart": "0s",
    "power-loss": "2h",
    "lone-crash": "0s",
    "outage": "30m",
    "boot-storm": "30m",
    "rolling": "0s",
    "restart-all": "30m",
}
