"""Planning the window: the smallest W under a start budget, its configuration, its cost; and
checking a real fleet's names (``plan --nodes-file``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from conftest import clean_env, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from test_slots_fleets import FLEETS, cloud_names, plain_names, rack_names
from typer.testing import CliRunner, Result

from supervisor.base.errors import UsageError
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
    """Simulating the planned window, the busiest minute of the recovery stays under R.

    The plan sizes the grids for a start budget alone: J = W here. (With the default J = W/12
    and a probe, the probe's answer paces admissions to what the control plane serves: a
    simulation without a capacity has nothing to push back, see test_simulate.)
    """
    p = plan(2000, 60, slots=slots)  # type: ignore[arg-type]
    result = simulate(
        Scenario(nodes=2000, outage=p.window / 2),
        Fleet(window=p.window, slots=slots, admission=p.window),  # type: ignore[arg-type]
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


# --- plan --nodes-file: a real fleet's names ------------------------------------------------


@pytest.fixture
def no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGENT_SUPERVISOR_* variable of the test's environment reaches the command."""
    for key in [k for k in os.environ if k.startswith("AGENT_SUPERVISOR_")]:
        monkeypatch.delenv(key)


def write_names(tmp_path: Path, names: list[str]) -> str:
    """A nodes file, one name a line, with a comment and a blank line as operators write them."""
    path = tmp_path / "nodes.txt"
    path.write_text("# the fleet\n\n" + "\n".join(names) + "\n")
    return str(path)


def plan_check(*args: str, stdin: str | None = None) -> Result:
    """Run ``plan`` in-process; the result with its exit code and output."""
    return CliRunner().invoke(fleet_app(), ["plan", *args], input=stdin)


@pytest.mark.usefixtures("no_env_config")
@pytest.mark.parametrize(
    ("fleet", "slots", "code"),
    [
        ("rack", "hash", 0),
        ("rack", "index", 0),
        ("rack", "address", 78),
        ("cloud", "hash", 0),
        ("cloud", "index", 0),
        ("cloud", "address", 0),
        ("plain", "hash", 0),
        ("plain", "address", 78),
        ("fqdn", "hash", 0),
        ("fqdn", "address", 78),
    ],
)
def test_nodes_file_checks_each_fleet(tmp_path: Path, fleet: str, slots: str, code: int) -> None:
    """plan --nodes-file checks 5000 real names: distinct slots and the busiest minute within the
    target, or exit 78 with one line when the mode gives the names no slot."""
    path = write_names(tmp_path, FLEETS[fleet](5000))
    res = plan_check("--nodes-file", path, "--slots", slots)
    assert res.exit_code == code, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == f"fleet      5000 names in {path}, agent cilium-agent, {slots} slots"
    assert "N/W = 83.3 starts/min" in lines[1]
    if code == 0:
        assert lines[2] == "  slots    5000 distinct, at most 1 node on one instant"
        assert lines[3].endswith(": within") and len(lines) == 4
    else:
        assert lines[-1].startswith("  refused: 5000 of 5000 names get no slot with address slots")
        assert "set node_id" in lines[-1]


@pytest.mark.usefixtures("no_env_config")
def test_nodes_file_json(tmp_path: Path) -> None:
    """--json puts the check under "fleet", with the counts, the target and the problems."""
    path = write_names(tmp_path, cloud_names(5000))
    res = plan_check("--nodes-file", path, "--slots", "address", "--json")
    assert res.exit_code == 0, res.output
    fleet = json.loads(res.stdout)["fleet"]
    assert fleet["nodes"] == fleet["placed"] == fleet["distinct_slots"] == 5000
    assert fleet["most_on_one_instant"] == 1
    assert fleet["window_seconds"] == 3600.0 and fleet["mean_starts_per_minute"] == 83.333
    assert fleet["busiest_minute"] <= fleet["target_starts_per_minute"] == 112.5
    assert fleet["within_target"] is True and fleet["ok"] is True and fleet["problems"] == []
    refused = plan_check("--nodes-file", write_names(tmp_path, rack_names(5000)), "--json")
    assert refused.exit_code == 0  # the configured mode, auto: hash
    assert json.loads(refused.stdout)["fleet"]["slots"] == "hash"
    res = plan_check("--nodes-file", path, "--json", "--set", "slot_mode=address")
    assert json.loads(res.stdout)["fleet"]["slot_mode"] == "address"
    res = plan_check(
        "--nodes-file", write_names(tmp_path, rack_names(5000)), "--json", "--slots", "address"
    )
    assert res.exit_code == 78
    doc = json.loads(res.stdout)["fleet"]
    assert doc["placed"] == 0 and doc["ok"] is False
    assert [p["kind"] for p in doc["problems"]] == ["no_slot"]


@pytest.mark.usefixtures("no_env_config")
def test_nodes_file_defaults_to_the_configured_slot_mode(tmp_path: Path) -> None:
    """Without --slots the check is of the configured slot_mode: address refuses rack names."""
    path = write_names(tmp_path, rack_names(1000))
    res = plan_check("--nodes-file", path, "--set", "slot_mode=address")
    assert res.exit_code == 78
    assert "address slots" in res.stdout.splitlines()[0]
    assert (
        plan_check("--nodes-file", path)
        .stdout.splitlines()[0]
        .endswith("hash slots (slot_mode = auto)")
    )


@pytest.mark.usefixtures("no_env_config")
def test_nodes_file_with_a_budget_sizes_and_measures(tmp_path: Path) -> None:
    """With --max-start-rate the plan is for the names in the file, and the check measures their
    busiest minute in the planned window against the budget."""
    path = write_names(tmp_path, plain_names(5000))
    res = plan_check("--nodes-file", path, "--max-start-rate", "100", "--slots", "hash", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["nodes"] == 5000 and doc["slots"] == "hash"
    assert doc["fleet"]["planned_window_seconds"] == doc["window_seconds"]
    assert doc["fleet"]["planned_busiest_minute"] <= 100
    text = plan_check("--nodes-file", path, "--max-start-rate", "100").stdout
    assert "configure  [window]" in text and "  budget   planned window" in text


@pytest.mark.usefixtures("no_env_config")
def test_nodes_file_exit_codes_follow_the_problems(tmp_path: Path) -> None:
    """Over the target by the addresses exits 1; a hash over it by chance warns and exits 0."""
    stride = [f"10.{(842 * k) >> 16}.{((842 * k) >> 8) & 255}.{842 * k & 255}" for k in range(5000)]
    res = plan_check("--nodes-file", write_names(tmp_path, stride), "--slots", "address")
    assert res.exit_code == 1
    assert res.stdout.splitlines()[-1].startswith("  over: busiest minute")
    res = plan_check(
        "--nodes-file", write_names(tmp_path, plain_names(1000)), "--agent", "agent-13"
    )
    assert res.exit_code == 0
    assert res.stdout.splitlines()[-1].startswith("  warning: busiest minute")


@pytest.mark.usefixtures("no_env_config")
def test_nodes_file_warns_of_a_wrong_cluster_size(tmp_path: Path) -> None:
    """The window is the gates' (cluster_size 4000: 50 min), and 5000 names say it is wrong."""
    path = write_names(tmp_path, plain_names(5000))
    res = plan_check("--nodes-file", path, "--set", "cluster_size=4000", "--json")
    assert res.exit_code == 0
    fleet = json.loads(res.stdout)["fleet"]
    assert fleet["window_seconds"] == 3000.0 and fleet["cluster_size_configured"] is True
    assert [p["kind"] for p in fleet["problems"]] == ["cluster_size"]


@pytest.mark.usefixtures("no_env_config")
def test_nodes_file_from_stdin_and_bad_files(tmp_path: Path) -> None:
    """'-' reads stdin; a line of two words, a missing file and --nodes beside it are refused."""
    res = plan_check("--nodes-file", "-", "--slots", "index", stdin="a\nb\nc\n")
    assert res.exit_code == 0 and "3 names in stdin" in res.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("node-1\nnode-2 7\n")
    res = plan_check("--nodes-file", str(bad))
    assert isinstance(res.exception, UsageError)
    assert "line 2: 'node-2 7': one node name a line" in str(res.exception)
    res = plan_check("--nodes-file", str(tmp_path / "missing.txt"))
    assert isinstance(res.exception, UsageError) and "No such file" in str(res.exception)
    assert plan_check("--nodes-file", str(bad), "--nodes", "5").exit_code == 2
    assert plan_check("--max-start-rate", "5").exit_code == 2


def test_nodes_file_as_a_process(tmp_path: Path) -> None:
    """agent-supervisor plan --nodes-file exits 78 for rack names in address mode, with the
    reason on stdout and no traceback."""
    path = write_names(tmp_path, rack_names(200))
    res = run_cli("plan", "--nodes-file", path, "--slots", "address", env=clean_env())
    assert res.code == 78, res.stderr
    assert "refused: 200 of 200 names get no slot" in res.stdout
    assert "Traceback" not in res.stderr
