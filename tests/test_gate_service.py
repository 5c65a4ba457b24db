"""The Gate service in process: one lock per operation, the inputs it gathers, what it writes.

A real state directory and the real store; the clock is a fake (tenacity's lesson), and the
probe, Docker's look and the certificate are injected callables: the real probe, engine and
certificates are tested in test_probe.py, the docker tests and test_identity.py. These tests pin
what the service does with their answers, whole events and whole files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from histories import ended, started
from structlog.testing import capture_logs

from supervisor.base.errors import StateError
from supervisor.core.container import ContainerInfo
from supervisor.core.state import AgentState, Ask, OperatorFlag
from supervisor.gate.operators import Operator
from supervisor.gate.probe import ProbeReport, ProbeResult
from supervisor.gate.service import Gate, Look, new_run_id, publish_metrics
from supervisor.node.identity import CertReport
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

T0 = 1_800_000_000.0
AGENT = "cilium-agent"
W = 1200.0
OP = Operator("alice", 1000)


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gate(
    tmp_path: Path,
    clock: Clock,
    *,
    probe: Callable[[], ProbeReport] | None = None,
    inspect: Callable[[], ContainerInfo | None] | None = None,
    identity: Callable[[float], CertReport | None] | None = None,
    **overrides: object,
) -> Gate:
    """A 1000-node gate for node-1 (W = J = 20 min without a probe) on ``tmp_path/state``."""
    values: dict[str, object] = {"cluster_size": 1000, "node_name": "node-1", **overrides}
    if probe is not None:
        values.setdefault("probe.urls", "http://127.0.0.1:9/readyz")
    cfg = load_config(env={}, overrides=values, state_dir=tmp_path / "state")
    return Gate(
        cfg, AGENT, clock=clock, probe=probe, inspect=inspect, identity=identity, operator=OP
    )


def write(g: Gate, state: AgentState) -> None:
    """Put ``state`` in the agent's file (as an earlier gate would have)."""
    with g.store.transaction(AGENT, g.clock()) as tx:
        tx.write(state, g.clock())


def on_disk(g: Gate) -> AgentState:
    """The agent's state as the file holds it."""
    return g.store.read(AGENT).state


def report(answer: str) -> ProbeReport:
    """A probe answer with one URL."""
    return ProbeReport(answer, (ProbeResult("http://x/readyz", answer, 200, 0.01, answer),))  # type: ignore[arg-type]


def running(started_at: float, cid: str = "c" * 64) -> ContainerInfo:
    """A running container started at ``started_at``."""
    return ContainerInfo(cid, "cilium-agent", True, "running", 0, started_at, None, "no", False)


# --- deciding ------------------------------------------------------------------------------------


def test_a_refusal_keeps_its_ask_and_a_fresh_gate_reads_it(tmp_path: Path) -> None:
    """The first ask is written under the lock; another Gate object gets the same slot."""
    clock = Clock(T0)
    a = gate(tmp_path, clock)
    d = a.decide().decision
    assert not d.allowed and d.grid == "admission" and d.next_allowed_at is not None
    kept = on_disk(a).ask
    assert kept == Ask(T0, d.next_allowed_at, d.reason.rsplit(" in ", 1)[0])
    clock.now = T0 + 30
    b = gate(tmp_path, clock)
    assert b.decide().decision.next_allowed_at == d.next_allowed_at


def test_an_allowed_start_is_recorded_with_its_run_id_before_the_answer(tmp_path: Path) -> None:
    """At the slot the start is recorded (run id, time) and the ask cleared."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    result = g.decide()
    d = result.decision
    assert d.allowed and result.recorded and d.run_id
    s = on_disk(g)
    assert [(r.id, r.started_at, r.via) for r in s.runs] == [(d.run_id, nxt, "gate")]
    assert s.ask is None


def test_status_records_no_ask_and_no_start(tmp_path: Path) -> None:
    """record=False: the same decision, nothing written (no file at all here)."""
    g = gate(tmp_path, Clock(T0))
    result = g.decide(record=False)
    assert not result.decision.allowed and result.decision.grid == "admission"
    assert not (tmp_path / "state" / f"{AGENT}.json").exists()


def test_the_probe_is_asked_only_at_the_slot_and_once(tmp_path: Path) -> None:
    """Before the slot no request; at the slot exactly one; its answer is in the result."""
    asked: list[str] = []

    def probe() -> ProbeReport:
        asked.append("probe")
        return report("ready")

    clock = Clock(T0)
    g = gate(tmp_path, clock, probe=probe)
    d = g.decide().decision
    assert asked == [] and d.next_allowed_at is not None
    clock.now = d.next_allowed_at
    result = g.decide()
    assert asked == ["probe"] and result.decision.allowed
    assert result.probe is not None and result.probe.answer == "ready"


def test_the_probe_is_asked_when_the_slot_comes_between_the_look_and_the_lock(
    tmp_path: Path,
) -> None:
    """The lock-free look ran a microsecond before the slot, the locked decision at it: the
    decision says it needs the probe, the lock is released, the probe asked, the lock taken
    again, and the answer decides."""
    asked: list[str] = []

    def probe() -> ProbeReport:
        asked.append("probe")
        return report("down")

    clock = Clock(T0)
    g = gate(tmp_path, clock, probe=probe)
    slot = g.decide().decision.next_allowed_at
    assert slot is not None
    times = iter([slot - 0.000001, slot, slot, slot])
    g.clock = lambda: next(times)
    d = g.decide().decision
    assert asked == ["probe"] and not d.allowed and d.event == "gate.deferred"
    assert on_disk(g).ask is not None and on_disk(g).ask.until == d.next_allowed_at  # type: ignore[union-attr]


def test_docker_not_answering_is_no_start_and_nothing_written(tmp_path: Path) -> None:
    """Invariant 7: an inspect that raises is "unknown": refused, asked again in 5 s, no ask,
    and a warning naming why."""

    def hangs() -> ContainerInfo | None:
        raise TimeoutError("Docker did not answer within 3s")

    g = gate(tmp_path, Clock(T0), inspect=hangs)
    write(g, started(AgentState(AGENT), T0 - 7200))
    before = (tmp_path / "state" / f"{AGENT}.json").read_bytes()
    with capture_logs() as logs:
        d = g.decide().decision
    assert d.event == "gate.docker_unknown" and d.next_allowed_at == T0 + 5
    assert "Docker did not answer within 3s" in d.reason
    assert (tmp_path / "state" / f"{AGENT}.json").read_bytes() == before
    assert {"event": "docker.unavailable", "log_level": "warning"}.items() <= logs[0].items()


def test_a_running_container_is_already_running_and_its_run_is_bound(tmp_path: Path) -> None:
    """Invariant 7: Docker says the approved run runs: exit 0, nothing to start, the run
    bound to its container."""
    clock = Clock(T0 + 60)
    g = gate(tmp_path, clock, inspect=lambda: running(T0 + 1))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    result = g.decide()
    assert result.decision.event == "gate.already_running" and not result.recorded
    assert result.docker == "running"
    assert on_disk(g).runs[0].container == "c" * 64


def test_a_bad_certificate_refuses_at_the_moment_of_the_decision(tmp_path: Path) -> None:
    """The certificate is checked at each decision (not once before a long wait): a bad one
    refuses even at the slot, a good one is published with the result."""
    good = CertReport(True, seconds_left=86400.0 * 30)
    bad = CertReport(False, problems=("certificate expired",))
    current = {"report": good}
    clock = Clock(T0)
    g = gate(tmp_path, clock, identity=lambda _at: current["report"])
    d = g.decide().decision
    assert d.event == "gate.refused" and d.next_allowed_at is not None
    current["report"] = bad
    clock.now = d.next_allowed_at
    refused = g.decide()
    assert refused.decision.event == "gate.identity_refused" and not refused.recorded
    assert refused.certificate is bad and "certificate expired" in refused.decision.reason
    current["report"] = good
    assert g.decide().decision.allowed


def test_a_forced_start_on_a_broken_state_directory_goes_ahead_loudly(tmp_path: Path) -> None:
    """A start that cannot be recorded is refused (74) unless forced; forced, it is allowed
    and logged as unrecorded."""
    (tmp_path / "state").write_text("not a directory")
    g = gate(tmp_path, Clock(T0))
    with pytest.raises(StateError):
        g.decide()
    with capture_logs() as logs:
        result = g.decide(force=True, reason="disk is broken")
    assert result.decision.allowed and result.decision.forced and not result.recorded
    assert logs[0]["event"] == "gate.forced_unrecorded"


def test_status_reads_a_state_directory_it_cannot_lock(small_tmpfs: Path) -> None:
    """record=False on a read-only file system (no lock can be taken): the state is read
    without the lock and the result says so; a gate (record=True) still fails with 74."""
    import subprocess

    g = gate(small_tmpfs, Clock(T0))
    write(g, ended(started(AgentState(AGENT), T0 - 100), T0 - 95, 1))
    (small_tmpfs / "state" / f"{AGENT}.lock").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    result = gate(small_tmpfs, Clock(T0)).decide(record=False)
    assert result.decision.backoff_level == 1
    assert result.read_only is not None and "cannot lock" in result.read_only
    with pytest.raises(StateError):
        gate(small_tmpfs, Clock(T0)).decide()


def test_a_lost_history_is_written_with_its_placeholder_at_once(tmp_path: Path) -> None:
    """Invariant 9: a corrupt file is moved aside and the placeholder written in the same
    locked operation: every later caller sees the lost history, not a first start."""
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / f"{AGENT}.json").write_text("garbage")
    g = gate(tmp_path, Clock(T0))
    result = g.decide()
    assert result.decision.backoff_level == 1 and len(result.quarantined) == 1
    assert on_disk(g).history_lost
    assert result.decision.next_allowed_at is not None and result.decision.grid == "window"


# --- ends, operators, observe --------------------------------------------------------------------


def test_report_end_closes_the_run_it_names_and_nothing_else(tmp_path: Path) -> None:
    """Invariant 12: no status records nothing; another run's id changes nothing; the named
    run is closed once, with how long it ran."""
    clock = Clock(T0 + 30)
    g = gate(tmp_path, clock)
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    assert g.report_end(None).recorded is False
    other = g.report_end(0, run_id="zz")
    assert (other.recorded, other.why) == (False, "run zz is not in the history")
    done = g.report_end(143, run_id="a1")
    assert (done.recorded, done.run_id, done.seconds) == (True, "a1", 30.0)
    again = g.report_end(1, run_id="a1")
    assert (again.recorded, again.why) == (False, "run a1 has ended already")
    assert on_disk(g).runs[0].exit_code == 143


def test_report_end_with_a_stop_marks_it_on_purpose(tmp_path: Path) -> None:
    """A stop someone sent (the daemon saw `docker stop`) is recorded with the end, so a 137
    after SIGTERM then SIGKILL is a deliberate stop."""
    g = gate(tmp_path, Clock(T0 + 30))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    assert g.report_end(137, source="docker", stop="docker stop (SIGTERM)").recorded
    run = on_disk(g).runs[0]
    assert (run.exit_code, run.end_source, run.stop) == (137, "docker", "docker stop (SIGTERM)")
    assert run.stopped_on_purpose


def test_operator_actions_are_applied_audited_and_a_reset_names_the_hold_it_drops(
    tmp_path: Path,
) -> None:
    """hold, override, release and reset change the state under the lock and append one audit
    line each; reset says which hold it dropped and keeps a backup."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    g.hold(3600.0, "kernel upgrade")
    assert on_disk(g).hold == OperatorFlag("alice", "kernel upgrade", T0, T0 + 3600)
    clock.now = T0 + 10
    g.override(None, "test")
    done = g.reset("start over")
    assert done.dropped == (
        "hold by alice until 2027-01-15T09:00:00.000000Z: kernel upgrade",
        "override by alice until released: test",
    )
    assert done.backup is not None and Path(done.backup).exists()
    assert on_disk(g) == AgentState(AGENT, anchor=on_disk(g).anchor)
    audit = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["command"], a["user"]) for a in audit] == [
        ("hold", "alice"),
        ("override", "alice"),
        ("reset", "alice"),
    ]
    assert audit[-1]["dropped"] == list(done.dropped)


def test_observe_records_what_docker_says(tmp_path: Path) -> None:
    """The daemon's observe: Docker's exit of the approved run is recorded at once."""
    g = gate(tmp_path, Clock(T0 + 800))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    exited = ContainerInfo(
        "c" * 64, "cilium-agent", False, "exited", 3, T0 + 1, T0 + 700, "no", False
    )
    state = g.observe(exited)
    assert state.runs[0].exit_code == 3 and on_disk(g).runs[0].ended_at == T0 + 700


def test_the_wait_ends_on_a_bad_identity_instead_of_waiting_for_ever(tmp_path: Path) -> None:
    """A waiting gate whose certificate goes bad returns the refusal (the CLI exits 78)."""
    bad = CertReport(False, problems=("key does not match",))
    g = gate(tmp_path, Clock(T0), identity=lambda _at: bad)
    result = g.wait(sleep=lambda _s: pytest.fail("a refusal for identity must not wait"))
    assert result.decision.event == "gate.identity_refused"


def test_look_passes_a_whole_look_through(tmp_path: Path) -> None:
    """An inspector that already knows more (the compose hook: a replacement) hands its Look
    to the decision as it is."""
    look = Look(True, running(T0 - 10), replacing=True)
    g = gate(tmp_path, Clock(T0), inspect=lambda: look)  # type: ignore[arg-type,return-value]
    assert g.look() is look


def test_run_ids_name_the_start_time_and_differ(tmp_path: Path) -> None:
    """A run id says when (UTC) and is unique: two at the same second differ."""
    a, b = new_run_id(T0), new_run_id(T0)
    assert a.startswith("20270115T080000Z-") and a != b


def test_metrics_publish_the_certificate_and_the_probe(tmp_path: Path) -> None:
    """A decision's metrics carry the certificate's seconds left and the probe's answer."""
    from prometheus_client.parser import text_string_to_metric_families

    prom = tmp_path / "a.prom"
    clock = Clock(T0)
    g = gate(
        tmp_path,
        clock,
        probe=lambda: report("loaded"),
        identity=lambda _at: CertReport(True, seconds_left=1234.0),
        metrics_file=str(prom),
    )
    g.store.prepare()
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    g.decide()
    values: dict[str, Any] = {}
    for fam in text_string_to_metric_families(prom.read_text()):
        for s in fam.samples:
            values[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    assert values['agent_supervisor_certificate_expiry_seconds{"agent": "cilium-agent"}'] == 1234.0
    assert values['agent_supervisor_probe_healthy{"agent": "cilium-agent"}'] == 0.0
    key = 'agent_supervisor_probe_answers_total{"agent": "cilium-agent", "answer": "loaded"}'
    assert values[key] == 1.0
    assert publish_metrics is not None


def test_a_state_store_is_shared_with_the_simulated_clock(tmp_path: Path) -> None:
    """The store given is the one used (operators and gates of one test share it)."""
    store = StateStore(tmp_path / "elsewhere")
    cfg = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    g = Gate(cfg, AGENT, store=store, clock=Clock(T0), probe=None, inspect=None, identity=None)
    g.decide()
    assert (tmp_path / "elsewhere" / f"{AGENT}.json").exists()
