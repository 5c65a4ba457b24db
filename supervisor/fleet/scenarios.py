"""The scenarios ``simulate`` knows, in a module light enough for the CLI's start-up path.

``supervisor.fleet.simulate`` is imported only when a simulation runs; the ``simulate``
command's options are typed with these names on every start of the program.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

#: ``outage``: every agent crashes at once; ``boot-storm``: every node boots within a spread;
#: ``rolling``: agents restarted one by one; ``restart-all``: the outage, and every supervisor
#: restarted at the same instant in the middle of it.
ScenarioKind = Literal["outage", "boot-storm", "rolling", "restart-all"]
SCENARIOS: Final[tuple[ScenarioKind, ...]] = get_args(ScenarioKind)
