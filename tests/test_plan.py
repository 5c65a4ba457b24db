"""Planning the window: the smallest W under a start budget, its configuration, its cost."""

from __future__ import annotations

import json

import pytest
import typer
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from supervisor.cli.fleet import register
from supervisor.core.policy import WindowConfig, window_seconds
from supervisor.fleet.plan import expected_peak, needed_window, plan, render_plan
from supervisor.fleet.simulate import Fleet, Scenario, simulate
from supervisor.storage.config import load_config


def test_exact_slots_need_exactly_n_over_r() -> None:
    """With ordinals, 5000 nodes at 100 starts a minute need W = 50 minutes, 0.6 s a node."""
    p = plan(5000, 100, slots="index")
    assert p.window == 3000.0
    assert p.per_node == 0.6
    assert dict(p.settings) == {"window.base": "0s", "window.per_node": "0.6s"}
    assert p.mean_starts_per_minute == 100.0
    assert p.peak_starts_per_minute == 100.0


def test_hash_slots_need_room_for_the_busiest_minute() -> None:
    """Hashed slots scatter, so the plan's window is longer than N/R and its peak is R."""
    exact = plan(5000, 100, slots="index")
    hashed = plan(5000, 100, slots="hash")
    address = plan(5000, 100, slots="address")
    assert exact.window < address.window < hashed.window
    assert hashed.peak_starts_per_minute <= 100
    assert hashed.mean_starts_per_minute < 80


def test_settings_round_trip_through_the_configuration() -> None:
    """The recommended keys, set in the environment, give the planned window for N nodes."""
    p = plan(5000, 100, slots="hash")
    env = {"AGENT_SUPERVISOR_CLUSTER_SIZE": "5000", **p.to_json()["environment"]}
    cfg = load_config(None, env=env)
    assert window_seconds(cfg.window, 5000) == pytest.approx(p.window)


def test_huge_fleet_raises_window_max() -> None:
    """When W must exceed window.max (24h by default) the plan raises it, and it loads."""
    p = plan(100_000, 50, slots="index")
    keys = dict(p.settings)
    assert p.window > 86400
    assert "window.max" in keys
    cfg = load_config(
        None, env={"AGENT_SUPERVISOR_CLUSTER_SIZE": "100000", **p.to_json()["environment"]}
    )
    assert window_seconds(cfg.window, 100_000) == pytest.approx(p.window)


def test_recovery_time_follows_the_window() -> None:
    """With a probe recovery is outage + W; without, 2W when the outage ends within W."""
    p = plan(5000, 100, slots="index", outage=1800.0)
    assert p.recovery_with_probe == 1800.0 + 3000.0
    assert p.recovery_without_probe == 6000.0
    assert plan(5000, 100, slots="index", outage=4000.0).recovery_without_probe is None


def test_current_configuration_verdict() -> None:
    """The defaults put 5000 hashed nodes over 100 a minute, exact slots within it."""
    assert (
        plan(5000, 100, slots="hash", current=WindowConfig()).to_json()["current_within_budget"]
        is False
    )
    assert (
        plan(5000, 100, slots="index", current=WindowConfig()).to_json()["current_within_budget"]
        is True
    )


@pytest.mark.parametrize("slots", ["index", "address", "hash"])
def test_simulated_fleet_stays_under_the_planned_rate(slots: str) -> None:
    """Simulating the planned window, the busiest minute of the recovery stays under R."""
    p = plan(2000, 60, slots=slots)  # type: ignore[arg-type]
    result = simulate(
        Scenario(nodes=2000, outage=p.window / 2),
        Fleet(window=p.window, slots=slots),  # type: ignore[arg-type]
        policies=("agent-supervisor+probe",),
    )
    o = result.policies[0]
    assert o.peak_starts_per_minute <= 60
    assert o.all_healthy_at is not None and o.all_healthy_at <= p.recovery_with_probe


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=200_000),
    st.floats(min_value=1, max_value=5000),
    st.sampled_from(["index", "address", "hash"]),
)
def test_planned_window_keeps_mean_and_peak_under_r(nodes: int, rate: float, slots: str) -> None:
    """For any fleet and budget, the planned W keeps both the mean and the peak under R, or
    the budget is refused because no window up to ten years meets it."""
    try:
        w = needed_window(nodes, rate, slots)  # type: ignore[arg-type]
    except ValueError as exc:
        # Regression (found by hypothesis in CI): 82,126 nodes at 1/min with hash slots. A
        # busiest minute of hashed starts holds two starts long before the mean gets that low.
        assert "no window up to ten years" in str(exc) and slots == "hash"
        return
    assert nodes * 60 / w <= rate + 1e-9 or w == 60.0
    assert expected_peak(nodes, w, slots) <= max(rate, nodes * 60 / w)  # type: ignore[arg-type]


def test_bad_input_is_refused() -> None:
    """A rate below one a minute, or no nodes, is an error naming the value."""
    with pytest.raises(ValueError, match="max start rate"):
        plan(10, 0.5)
    with pytest.raises(ValueError, match="nodes"):
        plan(0, 10)


def test_render_names_configuration_and_recovery() -> None:
    """The text says the window, the TOML keys, the environment and both recovery times."""
    text = render_plan(plan(5000, 100, slots="index"))
    assert 'per_node = "0.6s"' in text
    assert "AGENT_SUPERVISOR_WINDOW_PER_NODE=0.6s" in text
    assert "outage end + 50m" in text
    assert "1h40m after the crash" in text


def fleet_app() -> typer.Typer:
    """A fresh app with only the fleet commands."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Root."""

    register(app)
    return app


def test_cli_plan_json() -> None:
    """plan --json prints the window, the settings and the recovery times."""
    res = CliRunner().invoke(
        fleet_app(),
        ["plan", "--nodes", "5000", "--max-start-rate", "100", "--slots", "index", "--json"],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["window_seconds"] == 3000.0
    assert doc["settings"] == {"window.base": "0s", "window.per_node": "0.6s"}
    assert doc["recovery_with_probe_seconds"] == 4800.0


def test_cli_plan_requires_the_rate() -> None:
    """Without --max-start-rate plan is a usage error."""
    res = CliRunner().invoke(fleet_app(), ["plan", "--nodes", "5000"])
    assert res.exit_code == 2


def test_plan_as_a_process() -> None:
    """agent-supervisor plan runs as a real process and prints the plan."""
    res = run_cli("plan", "--nodes", "1000", "--max-start-rate", "50")
    assert res.code == 0, res.stderr
    assert "window" in res.stdout and "recovery" in res.stdout
