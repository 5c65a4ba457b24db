"""The Gate's structured events and metrics, whole: what log pipelines and alerts count.

``Gate._announce`` (the ``gate.*`` event of each decision, the audit line of a forced start),
``Gate._log_reconciled`` (the ``docker.*`` facts) and :func:`publish_metrics` (the textfile)
are contract (docs/metrics-and-logs.md): a renamed key, a changed value or level breaks a
pipeline. So these tests drive the real Gate on a real state directory with the injected fakes
of test_gate_service.py, capture every event and assert the whole list, and read the textfile
the gate wrote with prometheus_client's parser and assert every sample.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from histories import ended, held, overridden, started
from structlog.testing import capture_logs
from test_gate_service import AGENT, T0, Clock, gate, on_disk, report, running, write

from supervisor.core.container import ContainerInfo
from supervisor.core.state import AgentState, OperatorFlag, iso
from supervisor.gate.probe import ProbeReport, ProbeResult
from supervisor.gate.service import Gate, GateResult, Look, publish_metrics
from supervisor.node.identity import CertReport

#: The labels every gauge of the agent carries.
A = '{agent="cilium-agent"}'


class Ticking(Clock):
    """A wall clock that moves on by ``tick`` after each reading: the decision's own time and a
    later reading of the clock differ."""

    def __init__(self, now: float, tick: float = 0.25) -> None:
        super().__init__(now)
        self.tick = tick

    def __call__(self) -> float:
        now = self.now
        self.now += self.tick
        return now


def samples(path: Path) -> dict[str, float]:
    """Every sample of the textfile, as ``name{label="value",...}`` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name.removeprefix('agent_supervisor_')}{{{labels}}}"] = s.value
    return out


def base_gauges(
    *, level: float = 0.0, next_at: float = 0.0, decided: float, lost: float = 0.0
) -> dict[str, float]:
    """The gauges every locked decision publishes (no hold, no override, no ended run)."""
    return {
        "backoff_level" + A: level,
        "window_seconds" + A: 1200.0,
        "next_allowed_timestamp_seconds" + A: next_at,
        "last_decision_timestamp_seconds" + A: decided,
        "hold_active" + A: 0.0,
        "override_active" + A: 0.0,
        "history_lost" + A: lost,
    }


def starts(decision: str, n: float = 1.0) -> dict[str, float]:
    """The starts counter of one outcome."""
    return {f'starts_total{{agent="cilium-agent",decision="{decision}"}}': n}


def audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """The audit log, parsed."""
    text = (tmp_path / "state" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def container(
    running_: bool, started_at: float, finished_at: float | None, code: int | None = 0
) -> ContainerInfo:
    """The agent's container, named differently from the agent so the two keys differ."""
    status = "running" if running_ else "exited"
    return ContainerInfo(
        "d" * 64, "cilium", running_, status, code, started_at, finished_at, "no", False
    )


# --- _announce: the gate.* event of each decision ------------------------------------------------


def test_a_refusal_and_the_start_at_its_slot_log_their_whole_events(tmp_path: Path) -> None:
    """A first ask logs gate.refused (info, the slot as ISO time, the grid, nothing recorded);
    at the slot gate.allowed (info, recorded, with the run id), and nothing else."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    with capture_logs() as logs:
        first = g.decide().decision
        assert first.next_allowed_at is not None
        clock.now = first.next_allowed_at
        second = g.decide().decision
    assert logs == [
        {
            "event": "gate.refused",
            "log_level": "info",
            "agent": AGENT,
            "node": "node-1",
            "reason": first.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": iso(first.next_allowed_at),
            "recorded": False,
            "grid": "admission",
        },
        {
            "event": "gate.allowed",
            "log_level": "info",
            "agent": AGENT,
            "node": "node-1",
            "reason": "first start: at this node's admission slot",
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": None,
            "recorded": True,
            "run_id": second.run_id,
            "grid": "admission",
        },
    ]
    assert first.reason.startswith("first start: waiting for this node's admission slot in ")
    assert second.run_id is not None and not (tmp_path / "state" / "audit.jsonl").exists()


def test_a_forced_start_logs_a_warning_with_the_user_and_audits_it(tmp_path: Path) -> None:
    """gate --force logs gate.forced as a warning naming the user, and appends one audit line
    (the decision's time, user, uid, command, agent, reason, run id) and metrics at the
    decision's own time, not a later reading of the clock."""
    prom = tmp_path / "a.prom"
    clock = Ticking(T0 + 0.5)
    g = gate(tmp_path, clock, metrics_file=str(prom))
    write(g, ended(started(AgentState(AGENT), T0 - 100, run_id="a1"), T0 - 90, 1))
    with capture_logs() as logs:
        result = g.decide(force=True, reason="kernel fixed")
    d = result.decision
    assert d.decided_at is not None and d.run_id is not None and result.recorded
    assert d.decided_at != clock.now
    assert logs == [
        {
            "event": "gate.forced",
            "log_level": "warning",
            "user": "alice",
            "agent": AGENT,
            "node": "node-1",
            "reason": "forced by alice: kernel fixed",
            "window_seconds": 1200.0,
            "backoff_level": 1,
            "next_allowed_at": None,
            "recorded": True,
            "run_id": d.run_id,
        }
    ]
    assert audit_lines(tmp_path) == [
        {
            "time": iso(d.decided_at),
            "user": "alice",
            "uid": 1000,
            "command": "gate --force",
            "agent": AGENT,
            "reason": "kernel fixed",
            "run_id": d.run_id,
        }
    ]
    assert samples(prom) == {
        **base_gauges(level=1.0, decided=d.decided_at),
        "last_exit_code" + A: 1.0,
        **starts("forced"),
    }


def test_a_forced_start_without_a_known_operator_logs_and_audits_no_user(tmp_path: Path) -> None:
    """With no operator (a caller that did not say who), the event's user and the audit line's
    user and uid are null, and the start still goes ahead."""
    g = gate(tmp_path, Clock(T0))
    g.operator = None
    with capture_logs() as logs:
        result = g.decide(force=True, reason="r")
    d = result.decision
    assert logs == [
        {
            "event": "gate.forced",
            "log_level": "warning",
            "user": None,
            "agent": AGENT,
            "node": "node-1",
            "reason": d.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": None,
            "recorded": True,
            "run_id": d.run_id,
        }
    ]
    assert audit_lines(tmp_path) == [
        {
            "time": iso(T0),
            "user": None,
            "uid": None,
            "command": "gate --force",
            "agent": AGENT,
            "reason": "r",
            "run_id": d.run_id,
        }
    ]


def test_a_forced_start_that_was_not_recorded_is_not_audited(tmp_path: Path) -> None:
    """A forced start on a broken state directory logs gate.forced_unrecorded and gate.forced
    (recorded false) and audits nothing: an audit there would fail and log audit.write_failed."""
    (tmp_path / "state").write_text("not a directory")
    g = gate(tmp_path, Clock(T0))
    with capture_logs() as logs:
        result = g.decide(force=True, reason="disk is broken")
    d = result.decision
    assert not result.recorded and d.run_id is not None
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("gate.forced_unrecorded", "error"),
        ("gate.forced", "warning"),
    ]
    assert logs[1] == {
        "event": "gate.forced",
        "log_level": "warning",
        "user": "alice",
        "agent": AGENT,
        "node": "node-1",
        "reason": "forced by alice: disk is broken",
        "window_seconds": 1200.0,
        "backoff_level": 0,
        "next_allowed_at": None,
        "recorded": False,
        "run_id": d.run_id,
    }


def test_an_audit_that_cannot_be_written_logs_why_and_the_start_stands(tmp_path: Path) -> None:
    """The audit log is a directory: the recorded forced start stands and audit.write_failed
    (error) names the agent and the store's reason."""
    g = gate(tmp_path, Clock(T0))
    g.store.prepare()
    audit = tmp_path / "state" / "audit.jsonl"
    audit.mkdir()
    with capture_logs() as logs:
        result = g.decide(force=True, reason="r")
    assert result.recorded and on_disk(g).runs[-1].id == result.decision.run_id
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("gate.forced", "warning"),
        ("audit.write_failed", "error"),
    ]
    assert logs[1] == {
        "event": "audit.write_failed",
        "log_level": "error",
        "agent": AGENT,
        "why": f"audit log {audit} is a directory; refusing to read or write through it",
    }


def test_a_bad_identity_and_an_unanswering_docker_are_errors(tmp_path: Path) -> None:
    """gate.identity_refused and gate.docker_unknown are logged at error level, whole."""
    bad = CertReport(False, problems=("certificate expired",))
    g = gate(tmp_path / "a", Clock(T0), identity=lambda _at: bad)
    with capture_logs() as logs:
        d = g.decide().decision
    assert logs == [
        {
            "event": "gate.identity_refused",
            "log_level": "error",
            "agent": AGENT,
            "node": "node-1",
            "reason": d.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": None,
            "recorded": False,
        }
    ]
    assert "certificate expired" in d.reason

    def hangs() -> ContainerInfo | None:
        raise TimeoutError("no answer")

    h = gate(tmp_path / "b", Clock(T0), inspect=hangs)
    with capture_logs() as logs:
        u = h.decide().decision
    assert logs == [
        {
            "event": "docker.unavailable",
            "log_level": "warning",
            "agent": AGENT,
            "error": "no answer",
        },
        {
            "event": "gate.docker_unknown",
            "log_level": "error",
            "agent": AGENT,
            "node": "node-1",
            "reason": u.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": iso(T0 + 5),
            "recorded": False,
        },
    ]


def test_a_hold_and_an_override_are_logged_as_info(tmp_path: Path) -> None:
    """A hold refuses with gate.held (info, no user: nobody forced); an override lets the
    start through with gate.override (info, recorded, run id) and audits nothing."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    write(g, held(AgentState(AGENT), OperatorFlag("bob", "upgrade", T0 - 10, T0 + 3600)))
    with capture_logs() as logs:
        d = g.decide().decision
    assert logs == [
        {
            "event": "gate.held",
            "log_level": "info",
            "agent": AGENT,
            "node": "node-1",
            "reason": d.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": iso(d.next_allowed_at or 0.0),
            "recorded": False,
        }
    ]
    assert d.next_allowed_at is not None and d.next_allowed_at >= T0 + 3600
    write(g, overridden(AgentState(AGENT), OperatorFlag("bob", "test", T0 - 10, T0 + 3600)))
    with capture_logs() as logs:
        o = g.decide().decision
    assert logs == [
        {
            "event": "gate.override",
            "log_level": "info",
            "agent": AGENT,
            "node": "node-1",
            "reason": o.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": None,
            "recorded": True,
            "run_id": o.run_id,
        }
    ]
    assert o.run_id is not None and not (tmp_path / "state" / "audit.jsonl").exists()


def test_the_probe_answer_is_in_the_event(tmp_path: Path) -> None:
    """At the slot the probe's answer is a field of the event: "loaded" defers, "ready" lets
    the start through."""
    answers = iter(["loaded", "ready"])
    clock = Clock(T0)
    g = gate(tmp_path, clock, probe=lambda: report(next(answers)))
    slot = g.decide().decision.next_allowed_at
    assert slot is not None
    clock.now = slot
    with capture_logs() as logs:
        deferred = g.decide().decision
        assert deferred.next_allowed_at is not None
        clock.now = deferred.next_allowed_at
        allowed = g.decide().decision
    assert logs == [
        {
            "event": "gate.deferred",
            "log_level": "info",
            "agent": AGENT,
            "node": "node-1",
            "reason": deferred.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": iso(deferred.next_allowed_at),
            "recorded": False,
            "grid": deferred.grid,
            "probe": "loaded",
        },
        {
            "event": "gate.allowed",
            "log_level": "info",
            "agent": AGENT,
            "node": "node-1",
            "reason": allowed.reason,
            "window_seconds": 1200.0,
            "backoff_level": 0,
            "next_allowed_at": None,
            "recorded": True,
            "run_id": allowed.run_id,
            "grid": allowed.grid,
            "probe": "ready",
        },
    ]
    assert deferred.grid is not None and allowed.grid is not None


def test_a_waiting_gate_marks_its_refusal_waiting_and_not_its_start(tmp_path: Path) -> None:
    """--wait logs the refusal once with waiting true, then the start without it."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    with capture_logs() as logs:
        result = g.wait(sleep=sleep, poll=10_000.0)
    d = result.decision
    assert len(sleeps) == 1 and d.allowed
    assert [e.get("waiting") for e in logs] == [True, None]
    assert logs[0] == {
        "event": "gate.refused",
        "log_level": "info",
        "agent": AGENT,
        "node": "node-1",
        "reason": logs[0]["reason"],
        "window_seconds": 1200.0,
        "backoff_level": 0,
        "next_allowed_at": iso(T0 + sleeps[0]),
        "recorded": False,
        "grid": "admission",
        "waiting": True,
    }
    assert logs[0]["reason"].startswith("first start: waiting for this node's admission slot")
    assert logs[1]["event"] == "gate.allowed" and logs[1]["run_id"] == d.run_id


# --- _log_reconciled: Docker's facts --------------------------------------------------------------


def decide_with(
    tmp_path: Path, state: AgentState, now: float, inspect: Callable[[], Any], **overrides: Any
) -> tuple[Gate, GateResult, list[MutableMapping[str, Any]]]:
    """A gate on ``state`` at ``now`` asks Docker through ``inspect``: its result and events."""
    g = gate(tmp_path, Clock(now), inspect=inspect, **overrides)
    write(g, state)
    with capture_logs() as logs:
        result = g.decide()
    return g, result, logs


def test_docker_ending_the_open_run_logs_its_exit_and_duration(tmp_path: Path) -> None:
    """docker.run_ended (info): the agent, the container's name, the run, its exit code and
    how long it ran to the millisecond."""
    s = started(AgentState(AGENT), T0, run_id="a1")
    exited = container(False, T0 + 1, T0 + 700.123456, 3)
    _, result, logs = decide_with(tmp_path, s, T0 + 800, lambda: exited)
    assert logs[0] == {
        "event": "docker.run_ended",
        "log_level": "info",
        "agent": AGENT,
        "container": "cilium",
        "run_id": "a1",
        "exit_code": 3,
        "seconds": 700.123,
    }
    assert [e["event"] for e in logs] == ["docker.run_ended", "gate.refused"]
    assert result.docker == "stopped"


def test_a_start_outside_the_gate_logs_a_warning_with_its_start(tmp_path: Path) -> None:
    """docker.started_outside_gate (warning): the run added for Docker's start and when."""
    s = ended(started(AgentState(AGENT), T0 - 9000, run_id="a0"), T0 - 8000, 0)
    g, _, logs = decide_with(tmp_path, s, T0, lambda: container(True, T0 - 10.25, None))
    added = on_disk(g).runs[-1]
    assert added.via == "docker" and added.id != "a0"
    assert logs[0] == {
        "event": "docker.started_outside_gate",
        "log_level": "warning",
        "agent": AGENT,
        "container": "cilium",
        "run_id": added.id,
        "started_at": "2027-01-15T07:59:49.750000Z",
    }
    assert [e["event"] for e in logs] == ["docker.started_outside_gate", "gate.already_running"]


def test_an_approval_no_start_followed_is_withdrawn_loudly(tmp_path: Path) -> None:
    """docker.approval_withdrawn (warning): the withdrawn run (not an earlier one), when it
    was approved, and the grace; the container's name only when there is a container."""
    s = ended(started(AgentState(AGENT), T0 - 9000, run_id="a0"), T0 - 8000, 0)
    s = started(s, T0, run_id="a1")
    _, _, logs = decide_with(tmp_path / "a", s, T0 + 200, lambda: None, **{"docker.grace": "90.5s"})
    assert logs[:2] == [
        {"event": "docker.container_missing", "log_level": "info", "agent": AGENT},
        {
            "event": "docker.approval_withdrawn",
            "log_level": "warning",
            "agent": AGENT,
            "run_id": "a1",
            "approved_at": "2027-01-15T08:00:00.000000Z",
            "why": "no start followed within 90.5s",
        },
    ]
    old = container(False, T0 - 5000, T0 - 4000)
    _, _, logs = decide_with(tmp_path / "b", s, T0 + 200, lambda: old)
    assert logs[0] == {
        "event": "docker.approval_withdrawn",
        "log_level": "warning",
        "agent": AGENT,
        "container": "cilium",
        "run_id": "a1",
        "approved_at": "2027-01-15T08:00:00.000000Z",
        "why": "no start followed within 120s",
    }
    assert [e["event"] for e in logs] == ["docker.approval_withdrawn", "gate.refused"]


def test_a_withdrawal_names_its_run_when_the_history_repeats_an_id(tmp_path: Path) -> None:
    """A history that holds an ended run and an open approval under one id (the store reads
    it): the withdrawal names the approval and when it was made, not null."""
    s = ended(started(AgentState(AGENT), T0 - 5000, run_id="x"), T0 - 4000, 1)
    s = started(s, T0, run_id="x")
    g, _, logs = decide_with(tmp_path, s, T0 + 300, lambda: None)
    assert [(r.id, r.started_at) for r in on_disk(g).runs] == [("x", T0 - 5000)]
    assert logs[1] == {
        "event": "docker.approval_withdrawn",
        "log_level": "warning",
        "agent": AGENT,
        "run_id": "x",
        "approved_at": "2027-01-15T08:00:00.000000Z",
        "why": "no start followed within 120s",
    }


def test_dockers_exit_of_a_lost_historys_placeholder_reports_no_end(tmp_path: Path) -> None:
    """Invariant 9: the placeholder of a lost history is bound to the container that exited but
    never ended, so no docker.run_ended (with a null exit code and 0 s) is logged."""
    s = started(AgentState(AGENT), T0, via="unknown", run_id="lost1", reason="moved aside")
    exited = container(False, T0, T0 + 30, 1)
    g, _, logs = decide_with(tmp_path, s, T0 + 60, lambda: exited)
    run = on_disk(g).runs[-1]
    assert (run.id, run.container, run.ended_at) == ("lost1", "d" * 64, None)
    assert [e["event"] for e in logs] == ["gate.refused"]


def test_a_bound_or_pending_run_logs_no_docker_fact(tmp_path: Path) -> None:
    """Docker running the approved run, or an approval within the grace, is no news: only the
    gate's own event (and the missing container) is logged."""
    s = started(AgentState(AGENT), T0, run_id="a1")
    _, result, logs = decide_with(tmp_path / "a", s, T0 + 60, lambda: running(T0 + 1))
    assert [e["event"] for e in logs] == ["gate.already_running"] and result.docker == "running"
    _, result, logs = decide_with(tmp_path / "b", s, T0 + 60, lambda: None)
    assert [e["event"] for e in logs] == ["docker.container_missing", "gate.pending"]
    assert result.docker == "pending"


# --- publish_metrics: the textfile ---------------------------------------------------------------


def test_each_decision_adds_to_the_starts_counter_and_sets_the_gauges(tmp_path: Path) -> None:
    """A refusal, the start at the slot and a forced start: one count each by outcome, the
    gauges of the latest decision (next allowed 0 once allowed), no Docker, probe or
    certificate series when none is configured."""
    prom = tmp_path / "a.prom"
    clock = Clock(T0)
    g = gate(tmp_path, clock, metrics_file=str(prom))
    first = g.decide().decision
    assert first.next_allowed_at is not None
    assert samples(prom) == {
        **base_gauges(next_at=first.next_allowed_at, decided=T0),
        **starts("refused"),
    }
    clock.now = first.next_allowed_at
    g.decide()
    g.decide(force=True, reason="again")
    assert samples(prom) == {
        **base_gauges(level=1.0, decided=first.next_allowed_at),
        **starts("refused"),
        **starts("allowed"),
        **starts("forced"),
    }


def test_status_refreshes_the_gauges_and_counts_nothing(tmp_path: Path) -> None:
    """status (record False) publishes the gauges, the probe's included, and no counter: the
    starts and probe answers count gate decisions only."""
    prom = tmp_path / "a.prom"
    probe_report = ProbeReport("ready", (ProbeResult("http://x/readyz", "ready", 200, 0.02),))
    clock = Clock(T0)
    g = gate(tmp_path, clock, metrics_file=str(prom), probe=lambda: probe_report)
    write(g, ended(started(AgentState(AGENT), T0 - 100, run_id="a1"), T0 - 90, 1))
    d = g.decide(record=False).decision
    assert d.next_allowed_at is not None
    assert samples(prom) == {
        **base_gauges(level=1.0, next_at=d.next_allowed_at, decided=T0),
        "last_exit_code" + A: 1.0,
    }
    clock.now = d.next_allowed_at
    at_slot = g.decide(record=False)
    assert at_slot.probe is probe_report and at_slot.decision.allowed
    assert samples(prom) == {
        **base_gauges(level=1.0, decided=d.next_allowed_at),
        "last_exit_code" + A: 1.0,
        "probe_healthy" + A: 1.0,
        "probe_broken" + A: 0.0,
        "probe_latency_seconds" + A: 0.02,
    }


def test_the_state_gauges_say_hold_override_lost_history_and_the_last_exit(
    tmp_path: Path,
) -> None:
    """hold_active and override_active are 1 only while in force; last_exit_code is the
    latest ended run's code (0 included), not an open run's; history_lost is 1 after a bad
    state file."""
    now = T0 + 50
    s = ended(started(AgentState(AGENT), T0 - 900, run_id="r1"), T0 - 800, 7)
    s = ended(started(s, T0 - 700, run_id="r2"), T0 - 600, 0)
    s = started(s, T0 - 500, run_id="r3")
    s = held(s, OperatorFlag("bob", "upgrade", T0 - 10, T0 + 3600))
    s = overridden(s, OperatorFlag("bob", "test", T0 - 20, T0 + 40))
    g = gate(tmp_path / "a", Clock(now), metrics_file=str(tmp_path / "a.prom"))
    write(g, s)
    d = g.decide(record=False).decision
    got = samples(tmp_path / "a.prom")
    assert {k: got[k] for k in ("hold_active" + A, "override_active" + A)} == {
        "hold_active" + A: 1.0,
        "override_active" + A: 0.0,
    }
    assert got == {
        **base_gauges(level=float(d.backoff_level), next_at=d.next_allowed_at or 0.0, decided=now),
        "hold_active" + A: 1.0,
        "last_exit_code" + A: 0.0,
    }
    s2 = overridden(held(s, None), OperatorFlag("bob", "test", T0 - 20, None))
    s2 = ended(started(s2, T0 - 400, run_id="r4"), T0 - 300, 143, run_id="r4")
    g2 = gate(tmp_path / "b", Clock(now), metrics_file=str(tmp_path / "b.prom"))
    write(g2, s2)
    g2.decide(record=False)
    got = samples(tmp_path / "b.prom")
    assert (got["hold_active" + A], got["override_active" + A]) == (0.0, 1.0)
    assert got["last_exit_code" + A] == 143.0
    lost = tmp_path / "c"
    (lost / "state").mkdir(parents=True, mode=0o700)
    (lost / "state" / f"{AGENT}.json").write_text("garbage")
    g3 = gate(lost, Clock(now), metrics_file=str(tmp_path / "c.prom"))
    d3 = g3.decide().decision
    assert d3.next_allowed_at is not None
    assert samples(tmp_path / "c.prom") == {
        **base_gauges(level=1.0, next_at=d3.next_allowed_at, decided=now, lost=1.0),
        **starts("refused"),
    }


def test_agent_running_follows_dockers_view(tmp_path: Path) -> None:
    """agent_running is 1 for running, replacing and pending, 0 for stopped, and absent when
    Docker did not answer."""
    s = started(AgentState(AGENT), T0, run_id="a1")
    views = {
        "running": (lambda: running(T0 + 1), 1.0),
        "replacing": (lambda: Look(True, running(T0 + 1), replacing=True), 1.0),
        "pending": (lambda: None, 1.0),
        "stopped": (lambda: container(False, T0 + 1, T0 + 30, 1), 0.0),
    }
    for view, (inspect, value) in views.items():
        prom = tmp_path / f"{view}.prom"
        _, result, _ = decide_with(tmp_path / view, s, T0 + 60, inspect, metrics_file=str(prom))
        assert result.docker == view
        assert samples(prom)["agent_running" + A] == value, view

    def hangs() -> ContainerInfo | None:
        raise TimeoutError("no answer")

    prom = tmp_path / "unknown.prom"
    _, result, _ = decide_with(tmp_path / "unknown", s, T0 + 60, hangs, metrics_file=str(prom))
    assert result.docker == "unknown"
    assert "agent_running" + A not in samples(prom)


def probed(tmp_path: Path, probe_report: ProbeReport, **overrides: Any) -> dict[str, float]:
    """The samples after the decision at the admission slot, the probe answering with
    ``probe_report``."""
    prom = tmp_path / "a.prom"
    clock = Clock(T0)
    g = gate(tmp_path, clock, probe=lambda: probe_report, metrics_file=str(prom), **overrides)
    slot = g.decide().decision.next_allowed_at
    assert slot is not None
    clock.now = slot
    result = g.decide()
    assert result.probe is probe_report
    return samples(prom)


def test_the_probe_series_say_its_answer_its_latency_and_a_broken_url(tmp_path: Path) -> None:
    """probe_healthy is 1 only for "ready", probe_broken 1 when any URL is broken, the
    deciding request's latency is published when known, and each answer is counted."""
    ready = ProbeReport(
        "ready",
        (
            ProbeResult("http://a/readyz", "broken", None, None, "401"),
            ProbeResult("http://b/readyz", "ready", 200, 0.125),
        ),
    )
    got = probed(tmp_path / "ready", ready)
    assert {k: v for k, v in got.items() if k.startswith("probe")} == {
        "probe_healthy" + A: 1.0,
        "probe_broken" + A: 1.0,
        "probe_latency_seconds" + A: 0.125,
        'probe_answers_total{agent="cilium-agent",answer="ready"}': 1.0,
    }
    down = ProbeReport("down", (ProbeResult("http://b/readyz", "down", None, None, "refused"),))
    got = probed(tmp_path / "down", down)
    assert {k: v for k, v in got.items() if k.startswith("probe")} == {
        "probe_healthy" + A: 0.0,
        "probe_broken" + A: 0.0,
        'probe_answers_total{agent="cilium-agent",answer="down"}': 1.0,
    }
    nothing = ProbeReport("ready", ())
    got = probed(tmp_path / "none", nothing)
    assert {k: v for k, v in got.items() if k.startswith("probe")} == {
        "probe_healthy" + A: 1.0,
        "probe_broken" + A: 0.0,
        'probe_answers_total{agent="cilium-agent",answer="ready"}': 1.0,
    }


def test_the_certificate_series_is_published_only_when_its_expiry_is_known(
    tmp_path: Path,
) -> None:
    """certificate_expiry_seconds is the report's seconds left, and absent when unknown."""
    known = CertReport(True, seconds_left=86400.5)
    g = gate(
        tmp_path / "a", Clock(T0), identity=lambda _at: known, metrics_file=str(tmp_path / "a.prom")
    )
    g.decide()
    assert samples(tmp_path / "a.prom")["certificate_expiry_seconds" + A] == 86400.5
    unknown = CertReport(True)
    h = gate(
        tmp_path / "b",
        Clock(T0),
        identity=lambda _at: unknown,
        metrics_file=str(tmp_path / "b.prom"),
    )
    d = h.decide().decision
    assert d.next_allowed_at is not None
    assert samples(tmp_path / "b.prom") == {
        **base_gauges(next_at=d.next_allowed_at, decided=T0),
        **starts("refused"),
    }


def test_publish_metrics_without_a_metrics_file_writes_nothing(tmp_path: Path) -> None:
    """No metrics_file: no file and no lock appear in the state directory."""
    g = gate(tmp_path, Clock(T0))
    result = g.decide()
    before = sorted(p.name for p in (tmp_path / "state").iterdir())
    publish_metrics(g.cfg, result, T0)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == before
    assert "metrics.lock" not in before
