"""What the control plane sees when a whole fleet restarts: a simulation on a virtual clock.

``simulate`` runs N virtual nodes through a scenario (a crash on a live control plane, a
fleet-wide deliberate restart, a boot after a power loss, a lone crash, a control-plane
outage, a boot storm, a rolling restart, every supervisor restarted in the middle of an
outage; :mod:`supervisor.fleet.scenarios`) under six restart policies and counts the starts
the control plane has to serve, minute by minute, the probe requests it answers and when
every node is healthy. This module is the public entry (the CLI and the tests import from
here); the work is in four parts:

- :mod:`supervisor.fleet.world`: the scenario, the fleet's configuration, and the control
  plane: down during the outage, then a first-come queue of full resyncs worked through
  ``capacity`` a minute, which the probe asks ("loaded" when its wait behind the queue
  exceeds ``probe.max_latency``);
- :mod:`supervisor.fleet.models`: the policies. Ours run the real decision engine,
  :func:`supervisor.core.policy.decide`, the very function the gate calls, on an in-memory
  state per node changed only by the core's events: the figures are those of the code that
  ships. The four others model today's alternatives (Docker, kubelet, systemd, full jitter);
- :mod:`supervisor.fleet.engine`: the event-driven engine and :func:`simulate`;
- :mod:`supervisor.fleet.results` and :mod:`supervisor.fleet.render`: the outcome, its JSON,
  the table, the sparklines and the plot.
"""

from __future__ import annotations

from supervisor.fleet.engine import default_horizon, run_model, simulate
from supervisor.fleet.models import (
    POLICY_NAMES,
    GateModel,
    Model,
    SimulationError,
    gate_policies,
    settled_state,
)
from supervisor.fleet.render import (
    PLOT_HINT,
    PlotUnavailableError,
    render_table,
    require_matplotlib,
    sparkline,
    write_plot,
)
from supervisor.fleet.results import PolicyOutcome, SimulationResult, Waits
from supervisor.fleet.world import (
    DEFAULT_EPOCH,
    ControlPlane,
    Fleet,
    Scenario,
    Trigger,
    TriggerKind,
    node_offsets,
    triggers,
)

__all__ = [
    "DEFAULT_EPOCH",
    "PLOT_HINT",
    "POLICY_NAMES",
    "ControlPlane",
    "Fleet",
    "GateModel",
    "Model",
    "PlotUnavailableError",
    "PolicyOutcome",
    "Scenario",
    "SimulationError",
    "SimulationResult",
    "Trigger",
    "TriggerKind",
    "Waits",
    "default_horizon",
    "gate_policies",
    "node_offsets",
    "render_table",
    "require_matplotlib",
    "run_model",
    "settled_state",
    "simulate",
    "sparkline",
    "triggers",
    "write_plot",
]
