"""The Gate service's answers, whole: results, log events, audit lines and the files it writes.

These tests pin what test_gate_service.py checks only in part (each was written against a
mutant of supervisor/gate/service.py that the other tests let through): every field of a log
event (log pipelines count them), every field of a result, and what lands on disk. They use
the same real store on ``tmp_path`` and the same fakes for the clock, the probe, Docker and
the certificate (imported from test_gate_service.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from histories import asked, started
from structlog.testing import capture_logs
from test_gate_service import (
    AGENT,
    OP,
    T0,
    Clock,
    W,
    gate,
    on_disk,
    report,
    running,
    write,
)

import supervisor.gate.inspect as inspect_module
import supervisor.gate.probe as probe_module
import supervisor.node.identity as identity_module
from supervisor.base.clock import Now, read_now
from supervisor.base.errors import ConfigError, DiskFull, NotPermitted, StateError
from supervisor.core.container import ContainerInfo
from supervisor.core.events import Ended
from supervisor.core.state import (
    AgentState,
    Anchor,
    Ask,
    DebugSession,
    OperatorFlag,
    Run,
    iso,
    micro,
)
from supervisor.gate.operators import Operator
from supervisor.gate.probe import ProbeReport
from supervisor.gate.service import (
    Cancelled,
    EndResult,
    Gate,
    Look,
    OperatorResult,
    docker_inspector_for,
    identity_check_for,
    make_probe_for,
    new_run_id,
    state_signature,
)
from supervisor.node.identity import CertReport
from supervisor.storage.config import load_config
from supervisor.storage.store import StateStore

#: A run id as the gate makes it at T0: the start's UTC time and six hex digits.
RUN_ID_AT_T0 = re.compile(r"20270115T080000Z-[0-9a-f]{6}")
STATE = f"{AGENT}.json"
FULL = "cannot write state file {path}: no space left on device"


def state_file(tmp_path: Path) -> Path:
    """The agent's state file under ``tmp_path/state``."""
    return tmp_path / "state" / STATE


def corrupt(tmp_path: Path) -> Path:
    """A state file that does not parse (invariant 9)."""
    (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
    path = state_file(tmp_path)
    path.write_text("garbage")
    return path


def audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """The audit log, one dict per line."""
    text = (tmp_path / "state" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@contextmanager
def disk_full(g: Gate) -> Iterator[list[str]]:
    """Every state write of ``g``'s store fails as on a full disk; yields the paths tried."""
    tried: list[str] = []

    def refuse(state: AgentState, _now: float) -> None:
        path = str(g.store.state_path(state.agent))
        tried.append(path)
        raise DiskFull(FULL.format(path=path))

    setattr(g.store, "write_state", refuse)
    try:
        yield tried
    finally:
        del g.store.write_state


def never(what: str) -> Callable[..., Any]:
    """A callable that fails the test if anything calls it."""

    def called(*_args: Any, **_kwargs: Any) -> Any:
        pytest.fail(f"{what} must not be called")

    return called


def metrics(path: Path) -> dict[str, float]:
    """A Prometheus text file as {name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            values[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return values


def quarantined_name(tmp_path: Path, stamp: str) -> str:
    """Where the store moves a bad state file aside at ``stamp`` (the gate's clock)."""
    return str(tmp_path / "state" / f"{STATE}.corrupt-{stamp}")


# --- report_end ----------------------------------------------------------------------------------


def test_an_end_without_exit_status_records_nothing_and_says_why(tmp_path: Path) -> None:
    """No exit status (ExecStopPost after a failed ExecStartPre): nothing written, one event."""
    g = gate(tmp_path, Clock(T0 + 30))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    before = state_file(tmp_path).read_bytes()
    why = "no exit status: the agent never ran (nothing recorded)"
    with capture_logs() as logs:
        done = g.report_end(None, run_id="a1")
    assert done == EndResult(False, why, "a1")
    assert logs == [
        {
            "event": "run.exit_ignored",
            "log_level": "info",
            "agent": AGENT,
            "run_id": "a1",
            "why": why,
        }
    ]
    assert state_file(tmp_path).read_bytes() == before


def test_an_end_for_a_run_not_in_the_history_changes_nothing(tmp_path: Path) -> None:
    """A report naming another run: the result and the event say which and why."""
    g = gate(tmp_path, Clock(T0 + 30))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    with capture_logs() as logs:
        done = g.report_end(1, run_id="zz")
    assert done == EndResult(False, "run zz is not in the history", "zz")
    assert logs == [
        {
            "event": "run.exit_ignored",
            "log_level": "info",
            "agent": AGENT,
            "run_id": "zz",
            "exit_code": 1,
            "why": "run zz is not in the history",
        }
    ]
    assert on_disk(g).runs == (Run("a1", T0),)


def test_an_end_with_no_run_in_progress_says_so(tmp_path: Path) -> None:
    """An empty history and no run id: nothing to close."""
    g = gate(tmp_path, Clock(T0))
    assert g.report_end(0) == EndResult(False, "no run in progress", None)


def test_an_end_on_a_lost_history_writes_the_placeholder_and_closes_nothing(
    tmp_path: Path,
) -> None:
    """Invariant 9: the bad file is moved aside (named by the gate's clock), the placeholder
    written in the same operation, and the placeholder is no run anyone can close."""
    corrupt(tmp_path)
    g = gate(tmp_path, Clock(T0 + 30))
    why = "the history is unknown (a bad state file was moved aside): no run to close"
    with capture_logs() as logs:
        done = g.report_end(1)
    assert done == EndResult(False, why, None)
    moved = quarantined_name(tmp_path, "20270115T080030Z")
    assert Path(moved).read_text() == "garbage"
    [placeholder] = on_disk(g).runs
    assert re.fullmatch(r"20270115T080030Z-[0-9a-f]{6}", placeholder.id)
    bad = "Expecting value: line 1 column 1 (char 0)"
    assert placeholder == Run(
        placeholder.id, T0 + 30, "unknown", reason=f"state file moved aside to {moved}: {bad}"
    )
    assert [e["event"] for e in logs] == ["state.quarantined", "run.exit_ignored"]
    assert logs[1] == {
        "event": "run.exit_ignored",
        "log_level": "info",
        "agent": AGENT,
        "run_id": None,
        "exit_code": 1,
        "why": why,
    }


def test_an_end_that_changes_nothing_is_still_an_answer_when_the_disk_is_full(
    tmp_path: Path,
) -> None:
    """The placeholder of a lost history cannot be written: logged, the bad file put back,
    and the report answered (not an I/O error)."""
    corrupt(tmp_path)
    g = gate(tmp_path, Clock(T0 + 30))
    with disk_full(g) as tried, capture_logs() as logs:
        done = g.report_end(1)
    assert done.recorded is False
    assert tried == [str(state_file(tmp_path))]
    assert state_file(tmp_path).read_text() == "garbage"
    assert logs[1] == {
        "event": "state.write_failed",
        "log_level": "error",
        "agent": AGENT,
        "why": FULL.format(path=state_file(tmp_path)),
    }
    assert [e["event"] for e in logs] == [
        "state.quarantined",
        "state.write_failed",
        "run.exit_ignored",
    ]


def test_a_recorded_end_names_the_run_its_length_source_and_stop(tmp_path: Path) -> None:
    """The end is written at now (to the microsecond), and the event carries every field,
    the length rounded to milliseconds."""
    now = T0 + 30.1234567
    g = gate(tmp_path, Clock(now))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    with capture_logs() as logs:
        done = g.report_end(143, run_id="a1", source="docker", stop="docker stop (SIGTERM)")
    assert done == EndResult(True, "recorded", "a1", micro(now) - T0)
    assert logs == [
        {
            "event": "run.exited",
            "log_level": "info",
            "agent": AGENT,
            "run_id": "a1",
            "exit_code": 143,
            "seconds": 30.123,
            "source": "docker",
            "stop": "docker stop (SIGTERM)",
        }
    ]
    assert on_disk(g).runs == (
        Run(
            "a1",
            T0,
            ended_at=micro(now),
            exit_code=143,
            end_source="docker",
            stop="docker stop (SIGTERM)",
        ),
    )


def test_an_end_at_a_given_time_is_recorded_then(tmp_path: Path) -> None:
    """``at`` (Docker's FinishedAt) is the end, not the clock; a run of half a second lasted
    half a second."""
    g = gate(tmp_path, Clock(T0 + 30))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    done = g.report_end(1, run_id="a1", source="docker", at=T0 + 0.5)
    assert done == EndResult(True, "recorded", "a1", 0.5)
    assert on_disk(g).runs[0].ended_at == T0 + 0.5


@pytest.mark.parametrize("boot", [False, True], ids=["fake-clock", "boot-clock"])
def test_an_end_dated_after_now_is_written_at_now(tmp_path: Path, boot: bool) -> None:
    """Invariant 8: a time after now (Docker's clock, a step back) is pinned to now when it is
    written, with the boot clock as without it; the result keeps the length reported."""
    clock = Clock(T0 + 30)
    g = gate(tmp_path, clock)
    if boot:
        g._boot = lambda: Now(clock.now, 1000.0 + clock.now - T0, "boot-1")
    g.hold(None, "x")  # a fact, so that the state has its clock anchor from now on
    write(g, started(on_disk(g), T0, run_id="a1"))
    done = g.report_end(1, run_id="a1", source="docker", at=T0 + 40)
    assert done == EndResult(True, "recorded", "a1", 40.0)
    s = on_disk(g)
    assert s.runs[0].ended_at == T0 + 30
    assert s.anchor == (Anchor("boot-1", T0 + 30, 1030.0) if boot else None)


def test_an_end_the_disk_cannot_take_goes_to_the_journal_and_the_next_writer_applies_it(
    tmp_path: Path,
) -> None:
    """A full disk: the end, named after the run it closes, is kept in the journal; the next
    gate applies it and says so."""
    clock = Clock(T0 + 30)
    g = gate(tmp_path, clock)
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    with disk_full(g), capture_logs() as logs:
        done = g.report_end(1)
    assert done == EndResult(True, "kept in the journal", "a1", 30.0, journaled=True)
    assert logs == [
        {
            "event": "state.journaled",
            "log_level": "error",
            "agent": AGENT,
            "run_id": "a1",
            "why": FULL.format(path=state_file(tmp_path)),
        }
    ]
    assert g.store.journal(AGENT) == (Ended(T0 + 30, 1, "record-exit", "a1"),)
    assert on_disk(g).runs == (Run("a1", T0),)
    clock.now = T0 + 60
    with capture_logs() as logs:
        g.decide()
    assert logs[0] == {
        "event": "state.journal_applied",
        "log_level": "warning",
        "agent": AGENT,
        "ends": 1,
    }
    assert on_disk(g).runs == (
        Run("a1", T0, ended_at=T0 + 30, exit_code=1, end_source="record-exit"),
    )
    assert g.store.journal(AGENT) == ()


def test_an_end_without_a_run_id_asks_docker_first(tmp_path: Path) -> None:
    """No run id and a container configured: Docker is asked (here: no container, so the
    approval that no start followed within the grace is withdrawn, and nothing is open)."""
    looks: list[str] = []

    def inspect() -> ContainerInfo | None:
        looks.append("look")
        return None

    g = gate(tmp_path, Clock(T0 + 600), inspect=inspect)
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    with capture_logs() as logs:
        done = g.report_end(1)
    assert looks == ["look"]
    assert done == EndResult(False, "no run in progress", None)
    assert on_disk(g).runs == ()
    assert [e["event"] for e in logs] == [
        "docker.container_missing",
        "docker.approval_withdrawn",
        "run.exit_ignored",
    ]


def test_an_end_with_a_run_id_or_a_look_given_does_not_ask_docker(tmp_path: Path) -> None:
    """A named run needs no Docker; a caller's own look is used as it is."""
    g = gate(tmp_path, Clock(T0 + 30), inspect=never("Docker"))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    write(g, started(on_disk(g), T0 + 1, run_id="a2"))
    assert g.report_end(1, run_id="a1").recorded
    assert g.report_end(1, look=Look()).run_id == "a2"


# --- observe -------------------------------------------------------------------------------------


def test_observe_records_and_logs_what_docker_says(tmp_path: Path) -> None:
    """The daemon's observe: the run's end from Docker's State, logged with its container."""
    g = gate(tmp_path, Clock(T0 + 800))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    exited = ContainerInfo(
        "c" * 64, "cilium-agent", False, "exited", 3, T0 + 1, T0 + 700, "no", False
    )
    with capture_logs() as logs:
        g.observe(exited)
    assert logs == [
        {
            "event": "docker.run_ended",
            "log_level": "info",
            "agent": AGENT,
            "container": "cilium-agent",
            "run_id": "a1",
            "exit_code": 3,
            "seconds": 700.0,
        }
    ]


def test_observe_on_a_lost_history_answers_when_the_disk_is_full(tmp_path: Path) -> None:
    """The bad file is moved aside under the gate's clock; a placeholder that cannot be
    written is logged, not raised, and the bad file put back."""
    corrupt(tmp_path)
    g = gate(tmp_path, Clock(T0 + 30))
    with disk_full(g), capture_logs() as logs:
        state = g.observe(None)
    assert state.history_lost
    assert [e["event"] for e in logs] == ["state.quarantined", "state.write_failed"]
    assert logs[0]["moved_to"] == quarantined_name(tmp_path, "20270115T080030Z")
    assert state_file(tmp_path).read_text() == "garbage"


# --- deciding: the inputs ------------------------------------------------------------------------


def test_a_look_given_is_used_and_docker_not_asked(tmp_path: Path) -> None:
    """The caller's look (the compose hook's) decides; the inspector is not called."""
    g = gate(tmp_path, Clock(T0 + 60), inspect=never("Docker"))
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    result = g.decide(look=Look(True, running(T0 + 1)))
    assert result.decision.event == "gate.already_running" and result.docker == "running"


def test_a_replacing_look_is_a_start_at_the_admission_slot(tmp_path: Path) -> None:
    """A running container that the caller is about to replace (a compose upgrade): Docker's
    view is "replacing", and the start waits for the node's admission slot."""
    g = gate(tmp_path, Clock(T0))
    write(g, started(AgentState(AGENT), T0 - 7200, run_id="a1"))
    result = g.decide(look=Look(True, running(T0 - 7199), replacing=True))
    d = result.decision
    assert result.docker == "replacing" and d.event == "gate.refused" and d.grid == "admission"
    assert d.reason.startswith(
        "replacing the running agent (an upgrade): waiting for this node's admission slot in "
    )


def test_docker_without_a_reason_is_no_answer(tmp_path: Path) -> None:
    """A look that says Docker did not answer, with no reason given, says "no answer"."""
    g = gate(tmp_path, Clock(T0))
    d = g.decide(look=Look(True, unknown="")).decision
    assert d.event == "gate.docker_unknown"
    assert d.reason == (
        "Docker did not answer (no answer): cannot tell whether the agent runs, so no start; "
        "asking again in 5s"
    )


def test_an_approval_docker_did_not_follow_within_the_configured_grace_is_withdrawn(
    tmp_path: Path,
) -> None:
    """``docker.grace`` 30s: an approval 60 s old with no container is withdrawn (the default
    grace of 2m would still wait for it); status writes Docker's facts and logs them."""
    grace: dict[str, Any] = {"docker.grace": "30s"}
    g = gate(tmp_path, Clock(T0 + 60), inspect=lambda: None, **grace)
    write(g, started(AgentState(AGENT), T0, run_id="a1"))
    with capture_logs() as logs:
        g.decide(record=False)
    assert on_disk(g).runs == ()
    assert logs == [
        {"event": "docker.container_missing", "log_level": "info", "agent": AGENT},
        {
            "event": "docker.approval_withdrawn",
            "log_level": "warning",
            "agent": AGENT,
            "run_id": "a1",
            "approved_at": iso(T0),
            "why": "no start followed within 30s",
        },
    ]


def test_a_forced_start_asks_no_certificate(tmp_path: Path) -> None:
    """--force skips the identity check: not asked, none in the result."""
    g = gate(tmp_path, Clock(T0), identity=never("the certificate check"))
    result = g.decide(force=True, reason="kernel debug")
    assert result.decision.forced and result.certificate is None


def test_a_forced_start_is_recorded_with_who_and_why_and_audited(tmp_path: Path) -> None:
    """The run carries the operator and the reason, its id the start's time; the audit line
    names the command, the reason and the run."""
    g = gate(tmp_path, Clock(T0))
    result = g.decide(force=True, reason="kernel debug")
    d = result.decision
    assert d.run_id is not None and RUN_ID_AT_T0.fullmatch(d.run_id)
    assert (d.reason, result.recorded, result.read_only) == (
        "forced by alice: kernel debug",
        True,
        None,
    )
    assert on_disk(g).runs == (Run(d.run_id, T0, "force", user="alice", reason="kernel debug"),)
    assert result.state == on_disk(g)
    assert audit_lines(tmp_path) == [
        {
            "time": iso(T0),
            "user": "alice",
            "uid": 1000,
            "command": "gate --force",
            "agent": AGENT,
            "reason": "kernel debug",
            "run_id": d.run_id,
        }
    ]


def test_a_forced_start_on_an_unusable_state_directory_says_why(tmp_path: Path) -> None:
    """The state cannot be locked: the forced start goes ahead, unrecorded, named and logged
    with why."""
    (tmp_path / "state").write_text("not a directory")
    g = gate(tmp_path, Clock(T0))
    with capture_logs() as logs:
        result = g.decide(force=True, reason="disk is broken")
    d = result.decision
    assert d.run_id is not None and RUN_ID_AT_T0.fullmatch(d.run_id)
    assert (d.allowed, d.forced, d.reason, result.recorded, result.certificate) == (
        True,
        True,
        "forced by alice: disk is broken",
        False,
        None,
    )
    assert logs[0] == {
        "event": "gate.forced_unrecorded",
        "log_level": "error",
        "agent": AGENT,
        "why": f"state directory {tmp_path / 'state'} is not a directory",
    }


def test_the_probe_is_asked_again_when_the_slot_comes_while_the_lock_is_taken(
    tmp_path: Path,
) -> None:
    """The lock-free look a microsecond before the slot: no probe; the decision under the lock,
    at the slot, needs it: asked once, and its answer decides (deferred, the ask written)."""
    asked: list[str] = []

    def probe() -> ProbeReport:
        asked.append("probe")
        return report("down")

    clock = Clock(T0)
    g = gate(tmp_path, clock, probe=probe)
    slot = g.decide().decision.next_allowed_at
    assert slot is not None and asked == []
    real = g.store.transaction

    def at_the_slot(agent: str, now: float | None = None) -> Any:
        clock.now = slot
        return real(agent, now)

    setattr(g.store, "transaction", at_the_slot)
    clock.now = slot - 0.000001
    result = g.decide()
    d = result.decision
    assert asked == ["probe"]
    assert (d.event, d.allowed, d.needs_probe, result.probe) == (
        "gate.deferred",
        False,
        False,
        report("down"),
    )
    ask = on_disk(g).ask
    assert ask is not None and ask.until == d.next_allowed_at


def test_a_start_asked_while_the_probe_answered_is_still_cancelled(tmp_path: Path) -> None:
    """SIGTERM during the probe asked after the lock-free look: the start the probe allowed
    is not recorded."""
    slot = the_admission_slot(tmp_path)
    clock = Clock(slot - 0.000001)
    g = gate(tmp_path, clock, probe=lambda: report("ready"))
    real = g.store.transaction

    def at_the_slot(agent: str, now: float | None = None) -> Any:
        clock.now = slot
        return real(agent, now)

    setattr(g.store, "transaction", at_the_slot)
    with pytest.raises(Cancelled):
        g.decide(cancelled=lambda: True)
    assert on_disk(g).runs == ()


def test_status_publishes_gauges_at_the_decision_time_and_counts_nothing(tmp_path: Path) -> None:
    """status refreshes the gauges, stamped with the decision's time (to the microsecond), and
    leaves the starts counter alone."""
    prom = tmp_path / "a.prom"
    now = T0 + 0.1234567
    g = gate(tmp_path, Clock(now), metrics_file=str(prom))
    g.store.prepare()
    g.decide(record=False)
    values = metrics(prom)
    assert values['agent_supervisor_last_decision_timestamp_seconds{"agent": "cilium-agent"}'] == (
        micro(now)
    )
    assert not [k for k in values if k.startswith("agent_supervisor_starts")]


# --- deciding: the probe only when it can matter -------------------------------------------------


def the_admission_slot(tmp_path: Path) -> float:
    """This node's first admission slot with a probe, asked for at T0 (in a scratch dir)."""
    g = gate(tmp_path / "scratch", Clock(T0), probe=never("the probe"))
    slot = g.decide(record=False).decision.next_allowed_at
    assert slot is not None
    return slot


def test_the_probe_is_not_asked_while_held_at_the_slot(tmp_path: Path) -> None:
    """A hold refuses whatever the control plane says: at the admission slot no probe."""
    slot = the_admission_slot(tmp_path)
    g = gate(tmp_path, Clock(slot), probe=never("the probe"))
    g.hold(None, "maintenance")
    assert g.decide().decision.event == "gate.held"


def test_the_probe_is_not_asked_for_a_bad_certificate_at_the_slot(tmp_path: Path) -> None:
    """At the slot with a bad certificate the start is refused anyway: no probe."""
    clock = Clock(T0)
    bad = CertReport(False, problems=("certificate expired",))
    g = gate(tmp_path, clock, probe=never("the probe"))
    slot = g.decide().decision.next_allowed_at
    assert slot is not None
    clock.now = slot
    g.identity = lambda _at: bad
    assert g.decide().decision.event == "gate.identity_refused"


def test_the_probe_is_not_asked_when_the_agent_runs(tmp_path: Path) -> None:
    """At an admission slot, the history alone would need the probe (its run's end is not
    known), but Docker says the run goes on: already running, no probe."""
    slot = the_admission_slot(tmp_path)
    g = gate(tmp_path, Clock(slot), probe=never("the probe"))
    write(g, started(AgentState(AGENT), slot - 7200, run_id="a1"))
    g.inspect = lambda: running(slot - 7199)
    result = g.decide()
    assert result.decision.event == "gate.already_running"
    assert on_disk(g).runs == (Run("a1", slot - 7200, container="c" * 64),)


def test_the_lock_free_look_logs_nothing(tmp_path: Path) -> None:
    """With a probe, the state is looked at twice (before and under the lock): the journal's
    end, a clock step and Docker's news are logged once."""
    clock = Clock(T0)
    g = gate(tmp_path, clock, probe=lambda: report("ready"))
    s = started(AgentState(AGENT), T0 - 4000, run_id="a1")
    s = started(s, T0 + 100, run_id="a2")  # in the future: the clock stepped back
    write(g, s)
    g.store.journal_end(AGENT, Ended(T0 - 3990, 1, "record-exit", "a1"))
    exited = ContainerInfo("c" * 64, "cilium-agent", False, "exited", 3, T0 - 1, T0, "no", False)
    g.inspect = lambda: exited
    with capture_logs() as logs:
        g.decide()
    assert logs[:3] == [
        {"event": "state.journal_applied", "log_level": "warning", "agent": AGENT, "ends": 1},
        {"event": "state.clock_stepped", "log_level": "warning", "agent": AGENT, "now": iso(T0)},
        {
            "event": "docker.run_ended",
            "log_level": "info",
            "agent": AGENT,
            "container": "cilium-agent",
            "run_id": "a2",
            "exit_code": 3,
            "seconds": 0.0,
        },
    ]
    assert [e["event"] for e in logs[3:]] == ["gate.refused"]


# --- deciding: what is written, and what is not --------------------------------------------------


def test_a_lost_history_is_moved_aside_under_the_gates_clock(tmp_path: Path) -> None:
    """The quarantined file is named by the gate's clock (a fake one here), and the result
    names it."""
    corrupt(tmp_path)
    result = gate(tmp_path, Clock(T0 + 30)).decide()
    assert result.quarantined == (quarantined_name(tmp_path, "20270115T080030Z"),)


def test_status_records_nothing_at_the_slot(tmp_path: Path) -> None:
    """At the slot status says "allowed" but no start is recorded (recorded is False, not
    merely falsy), and the state was read under the lock (read_only is None)."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    result = g.decide(record=False)
    assert result.decision.allowed and result.decision.start
    assert result.recorded is False and result.read_only is None
    assert on_disk(g).runs == ()


def test_an_allowed_start_returns_the_state_it_recorded(tmp_path: Path) -> None:
    """The result's state is the recorded one: the new run, the ask cleared."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    result = g.decide()
    assert result.recorded is True
    assert result.state == on_disk(g)
    assert result.state is not None and result.state.runs[-1].id == result.decision.run_id


def test_a_start_that_cannot_be_recorded_is_refused_with_74(tmp_path: Path) -> None:
    """Invariant 10: at the slot, a full disk is a StateError (exit 74), not a start."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    with disk_full(g), pytest.raises(StateError, match="no space left on device"):
        g.decide()
    assert on_disk(g).runs == ()


def test_a_forced_start_that_cannot_be_recorded_goes_ahead_loudly(tmp_path: Path) -> None:
    """Forced on a full disk: allowed, not recorded, logged as such; the result's state is
    the one on disk (no run)."""
    g = gate(tmp_path, Clock(T0))
    write(g, asked(AgentState(AGENT), T0 - 10))
    before = on_disk(g)
    with disk_full(g), capture_logs() as logs:
        result = g.decide(force=True, reason="now")
    assert result.decision.allowed and result.decision.forced
    assert result.recorded is False
    assert result.state == before
    assert logs[0] == {
        "event": "gate.forced_unrecorded",
        "log_level": "error",
        "agent": AGENT,
        "why": FULL.format(path=state_file(tmp_path)),
    }
    assert [e["event"] for e in logs] == ["gate.forced_unrecorded", "gate.forced"]


def test_a_refusal_whose_ask_cannot_be_written_is_still_a_refusal(tmp_path: Path) -> None:
    """A full disk does not turn a refusal into an I/O error: logged, and the result's state
    holds the ask the decision made."""
    g = gate(tmp_path, Clock(T0))
    with disk_full(g), capture_logs() as logs:
        result = g.decide()
    d = result.decision
    assert not d.allowed and result.recorded is False
    assert result.state is not None
    assert result.state.ask == Ask(T0, d.next_allowed_at, d.reason.rsplit(" in ", 1)[0])
    assert logs[0] == {
        "event": "state.write_failed",
        "log_level": "error",
        "agent": AGENT,
        "why": FULL.format(path=state_file(tmp_path)),
    }


def test_status_on_a_lost_history_answers_when_the_disk_is_full(tmp_path: Path) -> None:
    """status cannot write the placeholder: logged, answered, the bad file put back."""
    corrupt(tmp_path)
    g = gate(tmp_path, Clock(T0))
    with disk_full(g), capture_logs() as logs:
        result = g.decide(record=False)
    assert result.decision.backoff_level == 1
    assert [e["event"] for e in logs] == ["state.quarantined", "state.write_failed"]
    assert state_file(tmp_path).read_text() == "garbage"


def test_status_reads_a_state_directory_it_cannot_lock_and_says_the_file_was_left(
    tmp_path: Path,
) -> None:
    """A lock that cannot be taken (a symlink): status reads without the lock, says why, and
    a bad state file is left where it is, as the placeholder's reason says."""
    path = corrupt(tmp_path)
    lock = tmp_path / "state" / f"{AGENT}.lock"
    lock.symlink_to(tmp_path / "elsewhere")
    result = gate(tmp_path, Clock(T0)).decide(record=False)
    assert result.read_only == (
        f"lock file {lock} is a symlink; refusing to read or write through it"
    )
    assert result.state is not None
    [placeholder] = result.state.runs
    assert placeholder.reason == (
        "state file unreadable, left in place: Expecting value: line 1 column 1 (char 0)"
    )
    assert RUN_ID_AT_T0.fullmatch(placeholder.id)
    assert path.read_text() == "garbage" and result.quarantined == ()


def test_a_fact_written_with_the_boot_clock_gets_its_anchor(tmp_path: Path) -> None:
    """Invariant 8: the first fact of an empty state is written with the clock anchor of
    this boot, so that a later step of the wall clock can be measured."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    g._boot = lambda: Now(clock.now, 500.0, "boot-1")
    g.decide()
    assert on_disk(g).anchor == Anchor("boot-1", T0, 500.0)


# --- waiting -------------------------------------------------------------------------------------


class Waiter:
    """A fake sleep that moves the clock, and a certificate check that counts decisions; both
    stop a wait that would never end."""

    def __init__(self, clock: Clock, limit: int = 20) -> None:
        self.clock = clock
        self.limit = limit
        self.sleeps: list[float] = []
        self.checks: list[float] = []
        self.after_sleep: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of the fake clock."""
        assert len(self.sleeps) < self.limit, f"still sleeping after {self.sleeps}"
        self.sleeps.append(seconds)
        self.clock.now += seconds
        self.after_sleep()

    def identity(self, at: float) -> CertReport:
        """A good certificate, checked once per decision."""
        assert len(self.checks) < self.limit, f"still deciding after {self.checks}"
        self.checks.append(at)
        return CertReport(True)


def test_a_waiting_gate_sleeps_to_the_slot_exactly_and_decides_twice(tmp_path: Path) -> None:
    """Polls of ``poll`` seconds, the last one shortened to the slot; the caller is told at
    each poll; the certificate is checked once per decision (two), never per poll; the
    refusal is announced once, as waiting, then the start."""
    clock = Clock(T0)
    w = Waiter(clock)
    g = gate(tmp_path, clock, identity=w.identity)
    told: list[tuple[str, float | None, float]] = []
    with capture_logs() as logs:
        result = g.wait(
            sleep=w.sleep,
            poll=41.5,
            on_wait=lambda d, now: told.append((d.event, d.next_allowed_at, now)),
        )
    nxt = result.decision.decided_at
    assert nxt is not None and result.decision.allowed and result.recorded
    assert 0 < nxt - (T0 + 415) < 1  # the last sleep is shorter than a second
    assert w.sleeps == [41.5] * 10 + [nxt - (T0 + 415)]
    assert told == [("gate.refused", nxt, T0 + i * 41.5) for i in range(11)]
    assert w.checks == [T0, nxt]
    assert [(e["event"], e.get("waiting")) for e in logs] == [
        ("gate.refused", True),
        ("gate.allowed", None),
    ]


def test_a_write_to_the_state_wakes_the_waiting_gate_which_announces_only_news(
    tmp_path: Path,
) -> None:
    """Someone writes the state during the wait: the gate decides again at once; the same
    answer is not announced twice."""
    clock = Clock(T0)
    w = Waiter(clock)
    g = gate(tmp_path, clock, identity=w.identity)
    w.after_sleep = lambda: write(g, on_disk(g)) if len(w.sleeps) == 1 else None
    with capture_logs() as logs:
        result = g.wait(sleep=w.sleep, poll=100.0)
    nxt = result.decision.decided_at
    assert nxt is not None and result.decision.allowed
    assert w.checks == [T0, T0 + 100, nxt]
    assert [e["event"] for e in logs] == ["gate.refused", "gate.allowed"]


def test_a_forced_wait_starts_at_once_and_is_audited_with_its_reason(tmp_path: Path) -> None:
    """wait --force: no sleep, a forced start, the audit line with the reason."""
    g = gate(tmp_path, Clock(T0))
    result = g.wait(sleep=never("sleep"), force=True, reason="now please")
    assert result.decision.forced and result.decision.reason == "forced by alice: now please"
    assert audit_lines(tmp_path)[-1]["reason"] == "now please"


def test_a_wait_cancelled_at_the_slot_records_nothing(tmp_path: Path) -> None:
    """SIGTERM before the start is recorded: Cancelled, and no run."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    with pytest.raises(Cancelled):
        g.wait(sleep=never("sleep"), cancelled=lambda: True)
    assert on_disk(g).runs == ()


def test_a_waiting_gate_decides_on_the_callers_look(tmp_path: Path) -> None:
    """wait(look=...): each decision uses the caller's look (here: the agent runs)."""
    g = gate(tmp_path, Clock(T0), inspect=never("Docker"))
    result = g.wait(sleep=never("sleep"), look=lambda: Look(True, running(T0 - 5)))
    assert result.decision.event == "gate.already_running"


# --- the world before the lock: Docker, the certificate, the clocks ------------------------------


def test_docker_not_answering_is_an_unknown_look_with_a_short_why(tmp_path: Path) -> None:
    """An inspector that raises: the look is "unknown" with the first 300 characters of why,
    and a warning says so."""

    def fails() -> ContainerInfo | None:
        raise RuntimeError("x" * 400)

    g = gate(tmp_path, Clock(T0), inspect=fails)
    with capture_logs() as logs:
        look = g.look()
    assert look == Look(True, unknown="x" * 300)
    assert logs == [
        {"event": "docker.unavailable", "log_level": "warning", "agent": AGENT, "error": "x" * 300}
    ]


def test_a_missing_container_is_said_and_a_present_one_is_not(tmp_path: Path) -> None:
    """No such container: a looked-at None and an info event; a container: its State, quietly."""
    info = running(T0 - 5)
    found: list[ContainerInfo | None] = [None, info]
    g = gate(tmp_path, Clock(T0), inspect=lambda: found.pop(0))
    with capture_logs() as logs:
        assert g.look() == Look(True, None)
        assert g.look() == Look(True, info)
    assert logs == [{"event": "docker.container_missing", "log_level": "info", "agent": AGENT}]


def test_a_certificate_is_checked_at_the_time_given_and_its_warnings_logged(
    tmp_path: Path,
) -> None:
    """Each warning of the report is one event; no identity configured is None."""
    checked: list[float] = []
    warned = CertReport(True, warnings=("expires in 3 days",))

    def identity(at: float) -> CertReport:
        checked.append(at)
        return warned

    g = gate(tmp_path, Clock(T0), identity=identity)
    with capture_logs() as logs:
        assert g.certificate(T0 + 5) is warned
    assert checked == [T0 + 5]
    assert logs == [
        {
            "event": "identity.warning",
            "log_level": "warning",
            "agent": AGENT,
            "problem": "expires in 3 days",
        }
    ]
    assert gate(tmp_path, Clock(T0), identity=lambda _at: None).certificate(T0) is None


def test_now_reads_the_boot_clock_with_the_wall_clock(tmp_path: Path) -> None:
    """With a boot clock: its reading, the wall clock to the microsecond; without: the
    test's wall clock alone."""
    clock = Clock(T0 + 0.1234567)
    g = gate(tmp_path, clock)
    assert g.now() == Now(micro(T0 + 0.1234567))
    cfg = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    b = Gate(cfg, AGENT, clock=clock, boot=lambda: Now(T0 + 0.1234567, 12.5, "boot-1"))
    assert b.now() == Now(micro(T0 + 0.1234567), 12.5, "boot-1")


def test_a_gate_without_a_clock_uses_the_real_clocks(tmp_path: Path) -> None:
    """No clock given: the wall clock and this boot's clock (where the system has one)."""
    cfg = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    g = Gate(cfg, AGENT, probe=None, inspect=None, identity=None)
    real = read_now()
    now = g.now()
    assert g.clock is time.time
    assert (now.boot_id, now.boot is None) == (real.boot_id, real.boot is None)
    assert abs(now.wall - real.wall) < 60


def test_a_gate_built_from_the_config_has_what_it_configures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without probe URLs, a container or an identity: none of them; with them: a probe, an
    inspector of that container and a check of that identity."""
    bare = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    g = Gate(bare, AGENT, clock=Clock(T0))
    assert (g.probe, g.inspect, g.identity) == (None, None, None)
    calls: list[tuple[Any, ...]] = []

    def make_probe(cfg: Any) -> Callable[[], None]:
        calls.append(("make_probe", cfg.probe.urls))
        return lambda: calls.append(("probe",))

    monkeypatch.setattr(probe_module, "make_probe", make_probe)
    monkeypatch.setattr(
        inspect_module, "inspect_container", lambda name: calls.append(("inspect", name))
    )

    def check_identity(ident: Any, node: str, at: float) -> CertReport:
        calls.append(("identity", ident.cert, node, at))
        return CertReport(True)

    monkeypatch.setattr(identity_module, "check_identity", check_identity)
    cfg = load_config(
        env={},
        overrides={
            "cluster_size": 10,
            "node_name": "node-1",
            "probe.urls": "http://127.0.0.1:9/readyz",
            "docker.container": "agent-c",
            "identity.cert": str(tmp_path / "c.pem"),
            "identity.key": str(tmp_path / "k.pem"),
        },
        state_dir=tmp_path / "state",
    )
    g = Gate(cfg, AGENT, clock=Clock(T0))
    assert g.probe is not None and g.inspect is not None and g.identity is not None
    g.probe()
    g.inspect()
    g.identity(T0)
    assert calls == [
        ("make_probe", ("http://127.0.0.1:9/readyz",)),
        ("probe",),
        ("inspect", "agent-c"),
        ("identity", str(tmp_path / "c.pem"), "node-1", T0),
    ]


# --- operators -----------------------------------------------------------------------------------


def test_a_hold_is_applied_logged_and_audited_whole(tmp_path: Path) -> None:
    """hold: the flag set (over an earlier one, which a hold does not name as dropped), no
    backup, one event and one audit line with every field."""
    g = gate(tmp_path, Clock(T0))
    g.hold(None, "first")
    with capture_logs() as logs:
        done = g.hold(3600.0, "kernel upgrade")
    flag = OperatorFlag("alice", "kernel upgrade", T0, T0 + 3600)
    assert done == OperatorResult(AgentState(AGENT, hold=flag), (), None)
    assert on_disk(g) == done.state
    assert logs == [
        {
            "event": "operator.hold",
            "log_level": "info",
            "agent": AGENT,
            "user": "alice",
            "reason": "kernel upgrade",
            "seconds": 3600.0,
        }
    ]
    assert audit_lines(tmp_path)[-1] == {
        "time": iso(T0),
        "user": "alice",
        "uid": 1000,
        "command": "hold",
        "agent": AGENT,
        "reason": "kernel upgrade",
        "seconds": 3600.0,
    }
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if ".reset-" in p.name) == []


def test_an_override_lasts_the_time_given(tmp_path: Path) -> None:
    """override --for 60s: until now + 60 s."""
    g = gate(tmp_path, Clock(T0))
    assert g.override(60.0, "test").state.override == OperatorFlag("alice", "test", T0, T0 + 60)


def test_a_release_clears_the_flags_and_the_ask_and_is_logged_and_audited(
    tmp_path: Path,
) -> None:
    """release: hold, override and ask gone; one event and one audit line."""
    g = gate(tmp_path, Clock(T0))
    g.decide()
    g.hold(None, "x")
    with capture_logs() as logs:
        done = g.release("done")
    assert done == OperatorResult(AgentState(AGENT), (), None)
    assert on_disk(g) == AgentState(AGENT)
    assert logs == [
        {
            "event": "operator.release",
            "log_level": "info",
            "agent": AGENT,
            "user": "alice",
            "reason": "done",
        }
    ]
    assert audit_lines(tmp_path)[-1] == {
        "time": iso(T0),
        "user": "alice",
        "uid": 1000,
        "command": "release",
        "agent": AGENT,
        "reason": "done",
    }


def test_a_reset_names_what_it_drops_and_where_the_backup_is(tmp_path: Path) -> None:
    """reset: the backup named by the gate's clock, the dropped flags in the result, the event
    and the audit line, with the operator's reason."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    g.hold(3600.0, "kernel upgrade")
    clock.now = T0 + 10
    with capture_logs() as logs:
        done = g.reset("start over")
    dropped = ("hold by alice until 2027-01-15T09:00:00.000000Z: kernel upgrade",)
    backup = str(tmp_path / "state" / f"{STATE}.reset-20270115T080010Z")
    assert done == OperatorResult(AgentState(AGENT), dropped, backup)
    assert logs == [
        {
            "event": "operator.reset",
            "log_level": "info",
            "agent": AGENT,
            "user": "alice",
            "reason": "start over",
            "dropped": list(dropped),
        }
    ]
    assert audit_lines(tmp_path)[-1]["reason"] == "start over"


def test_a_reset_with_no_flag_in_force_drops_nothing(tmp_path: Path) -> None:
    """Nothing held or overridden (an expired hold included): nothing named as dropped, no
    ``dropped`` field at all."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    g.hold(60.0, "short")
    clock.now = T0 + 120
    with capture_logs() as logs:
        done = g.reset(None)
    assert done.dropped == ()
    assert "dropped" not in logs[0] and "dropped" not in audit_lines(tmp_path)[-1]


def test_a_debug_session_holds_the_agent_and_its_end_releases_it(tmp_path: Path) -> None:
    """debug start: a hold until released naming the session, and the session (started now);
    debug end: both gone; each logged and audited with its reason (and the container)."""
    clock = Clock(T0)
    g = gate(tmp_path, clock)
    session = DebugSession("dbg-1", "cilium:v1", "sleep infinity", "bob", "look at bpf", 0.0)
    with capture_logs() as logs:
        done = g.debug_started(session)
    hold = OperatorFlag("bob", "debug session in dbg-1: look at bpf", T0, None)
    assert done == OperatorResult(
        AgentState(AGENT, hold=hold, debug=replace(session, started_at=T0)), (), None
    )
    assert on_disk(g) == done.state
    assert logs == [
        {
            "event": "operator.debug_start",
            "log_level": "info",
            "agent": AGENT,
            "user": "alice",
            "reason": "look at bpf",
            "container": "dbg-1",
        }
    ]
    assert audit_lines(tmp_path)[-1] == {
        "time": iso(T0),
        "user": "alice",
        "uid": 1000,
        "command": "debug start",
        "agent": AGENT,
        "reason": "look at bpf",
        "container": "dbg-1",
    }
    clock.now = T0 + 60
    with capture_logs() as logs:
        done = g.debug_ended("found it")
    assert done == OperatorResult(AgentState(AGENT), (), None)
    assert logs == [
        {
            "event": "operator.debug_end",
            "log_level": "info",
            "agent": AGENT,
            "user": "alice",
            "reason": "found it",
        }
    ]
    assert audit_lines(tmp_path)[-1]["command"] == "debug end"


def test_an_operator_action_moves_a_bad_file_aside_under_the_gates_clock(
    tmp_path: Path,
) -> None:
    """A corrupt state file met by an operator: moved aside, named by the gate's clock."""
    corrupt(tmp_path)
    g = gate(tmp_path, Clock(T0 + 30))
    with capture_logs() as logs:
        g.hold(None, "x")
    assert logs[0]["moved_to"] == quarantined_name(tmp_path, "20270115T080030Z")
    assert on_disk(g).history_lost


def test_an_audit_line_that_cannot_be_written_is_logged_after_the_change(
    tmp_path: Path,
) -> None:
    """The change is made and durable; the missing audit line is an error event."""
    g = gate(tmp_path, Clock(T0))
    why = f"cannot append to audit log {tmp_path / 'state' / 'audit.jsonl'}: Read-only file system"

    def fails(_now: float, **_fields: Any) -> None:
        raise StateError(why)

    g.store.prepare()
    setattr(g.store, "audit", fails)
    with capture_logs() as logs:
        g.hold(None, "x")
    assert on_disk(g).hold == OperatorFlag("alice", "x", T0, None)
    assert logs[0] == {
        "event": "audit.write_failed",
        "log_level": "error",
        "agent": AGENT,
        "action": "hold",
        "why": why,
    }
    assert [e["event"] for e in logs] == ["audit.write_failed", "operator.hold"]


def root_only() -> None:
    """These tests change who the process is."""
    from conftest import REQUIRE_ROOT_TESTS, skip_or_fail

    if os.geteuid() != 0:
        skip_or_fail("needs root", REQUIRE_ROOT_TESTS)


def test_a_sudoer_outside_the_operators_group_is_refused_and_logged(tmp_path: Path) -> None:
    """Root through sudo by someone not in ``operators_group``: refused (77) naming the
    action, the user and the group; nothing written."""
    root_only()
    g = gate(tmp_path, Clock(T0), operators_group="root")
    g.operator = Operator("root", 0, sudo_user="no-such-user-xyz")
    with capture_logs() as logs, pytest.raises(NotPermitted) as refused:
        g.hold(None, "x")
    assert str(refused.value) == (
        "hold: not permitted for no-such-user-xyz (through sudo); only members of group 'root' "
        "may do this"
    )
    assert logs == [
        {
            "event": "operator.refused",
            "log_level": "warning",
            "action": "hold",
            "agent": AGENT,
            "user": "root (sudo by no-such-user-xyz)",
        }
    ]
    assert not state_file(tmp_path).exists()


def test_an_operators_group_that_does_not_exist_names_where_it_was_set(tmp_path: Path) -> None:
    """A group missing on the node is a configuration error (78) saying where it was set."""
    root_only()
    g = gate(tmp_path, Clock(T0), operators_group="no-such-group-xyz")
    g.operator = Operator("root", 0, sudo_user="alice")
    with pytest.raises(ConfigError) as bad:
        g.release(None)
    assert str(bad.value) == (
        "command line: operators_group 'no-such-group-xyz': no such group on this node"
    )


def test_an_operator_who_is_not_root_nor_the_owner_is_refused(tmp_path: Path) -> None:
    """Another user, no operators group: only root may act (the state directory is asked who
    owns it)."""
    root_only()
    g = gate(tmp_path, Clock(T0))
    g.store.prepare()
    os.seteuid(65534)
    try:
        with pytest.raises(NotPermitted) as refused:
            g.hold(None, "x")
    finally:
        os.seteuid(0)
    assert (
        str(refused.value) == "hold: not permitted for user alice (uid 1000); only root may do this"
    )


def test_an_operator_action_refreshes_the_gauges_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a metrics file, the gauges follow the action (from the gate's own store), asking
    no probe, no Docker and no certificate, recording no ask and counting no start."""
    for module, name in (
        (probe_module, "make_probe"),
        (inspect_module, "inspect_container"),
        (identity_module, "check_identity"),
    ):
        monkeypatch.setattr(module, name, never(name))
    prom = tmp_path / "a.prom"
    cfg = load_config(
        env={},
        overrides={
            "cluster_size": 1000,
            "node_name": "node-1",
            "metrics_file": str(prom),
            "probe.urls": "http://127.0.0.1:9/readyz",
            "docker.container": "agent-c",
            "identity.cert": str(tmp_path / "c.pem"),
            "identity.key": str(tmp_path / "k.pem"),
        },
        state_dir=tmp_path / "state",
    )
    store = StateStore(tmp_path / "elsewhere")
    g = Gate(
        cfg,
        AGENT,
        store=store,
        clock=Clock(T0),
        probe=never("the probe"),
        inspect=never("Docker"),
        identity=never("the certificate check"),
        operator=OP,
    )
    (tmp_path / "state").mkdir(mode=0o700)
    with capture_logs() as logs:
        g.hold(None, "x")
    assert [e["event"] for e in logs] == ["operator.hold"]
    values = metrics(prom)
    assert values['agent_supervisor_hold_active{"agent": "cilium-agent"}'] == 1.0
    assert not [k for k in values if k.startswith("agent_supervisor_starts")]
    assert store.read(AGENT).state.ask is None


# --- module functions ----------------------------------------------------------------------------


def test_the_identity_check_reports_and_logs_a_bad_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check built from ``[identity]`` passes the identity, the node and the time, and
    logs the problems of a bad report (a good one quietly); no ``[identity]``, no check."""
    bare = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    assert identity_check_for(bare) is None
    reports = [CertReport(False, problems=("certificate expired",)), CertReport(True)]
    seen: list[tuple[str, str, float]] = []

    def check_identity(ident: Any, node: str, at: float) -> CertReport:
        seen.append((ident.cert, node, at))
        return reports.pop(0)

    monkeypatch.setattr(identity_module, "check_identity", check_identity)
    cfg = load_config(
        env={},
        overrides={
            "cluster_size": 10,
            "node_name": "node-1",
            "identity.cert": "/c.pem",
            "identity.key": "/k.pem",
        },
        state_dir=tmp_path / "state",
    )
    check = identity_check_for(cfg)
    assert check is not None
    with capture_logs() as logs:
        assert check(T0) == CertReport(False, problems=("certificate expired",))
        assert check(T0 + 1) == CertReport(True)
    assert seen == [("/c.pem", "node-1", T0), ("/c.pem", "node-1", T0 + 1)]
    assert logs == [
        {"event": "identity.refused", "log_level": "error", "problems": ["certificate expired"]}
    ]


def test_the_docker_inspector_asks_for_the_configured_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docker.container`` set: an inspector of that name; unset: none."""
    bare = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    assert docker_inspector_for(bare) is None
    info = running(T0)
    monkeypatch.setattr(inspect_module, "inspect_container", {"agent-c": info}.get)
    cfg = load_config(
        env={},
        overrides={"cluster_size": 10, "docker.container": "agent-c"},
        state_dir=tmp_path / "state",
    )
    inspect = docker_inspector_for(cfg)
    assert inspect is not None and inspect() is info


def test_the_probe_is_made_only_from_urls(tmp_path: Path) -> None:
    """No ``probe.urls``: no probe; URLs: the probe of :mod:`supervisor.gate.probe`."""
    bare = load_config(env={}, overrides={"cluster_size": 10}, state_dir=tmp_path / "state")
    assert make_probe_for(bare) is None
    cfg = load_config(
        env={},
        overrides={"cluster_size": 10, "probe.urls": "http://127.0.0.1:9/readyz"},
        state_dir=tmp_path / "state",
    )
    assert callable(make_probe_for(cfg))


def test_a_run_id_is_the_start_time_and_six_hex_digits() -> None:
    """``20270115T080000Z-0a1b2c``: readable, and unique enough on one node."""
    a, b = new_run_id(T0), new_run_id(T0)
    assert RUN_ID_AT_T0.fullmatch(a) and RUN_ID_AT_T0.fullmatch(b) and a != b


def test_the_state_signature_is_the_entrys_own_and_none_without_one(tmp_path: Path) -> None:
    """(inode, size, mtime) of the state file entry itself: a symlink is not followed (the
    store refuses to go through one), and no entry is None."""
    store = StateStore(tmp_path)
    assert state_signature(store, AGENT) is None
    target = tmp_path / "target.json"
    target.write_text("{}" * 100)
    store.state_path(AGENT).symlink_to(target)
    st = os.lstat(store.state_path(AGENT))
    assert state_signature(store, AGENT) == (st.st_ino, st.st_size, st.st_mtime_ns)
    target.unlink()
    assert state_signature(store, AGENT) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_the_starts_counter_names_each_kind_of_decision(tmp_path: Path) -> None:
    """Refused, allowed, forced, override and already running are counted apart."""
    prom = tmp_path / "a.prom"
    clock = Clock(T0)
    g = gate(tmp_path, clock, metrics_file=str(prom))
    nxt = g.decide().decision.next_allowed_at
    assert nxt is not None
    clock.now = nxt
    assert g.decide().decision.allowed
    clock.now = nxt + W
    assert g.decide(force=True, reason="r").decision.forced
    clock.now = nxt + 2 * W
    g.override(None, "o")
    assert g.decide().decision.via == "override"
    for late in (5, 6):  # two of these, so that swapping "allowed" and "running" shows
        clock.now = nxt + 2 * W + late
        assert g.decide(look=Look(True, running(nxt + 2 * W + 1))).decision.start is False
    values = metrics(prom)
    counted = {k: v for k, v in values.items() if k.startswith("agent_supervisor_starts_total")}
    assert counted == {
        f'agent_supervisor_starts_total{{"agent": "cilium-agent", "decision": "{kind}"}}': n
        for kind, n in (
            ("allowed", 1.0),
            ("forced", 1.0),
            ("override", 1.0),
            ("refused", 1.0),
            ("running", 2.0),
        )
    }
