"""Starts are facts (invariant 7): the history reconciled with the container's State, event by
event, at the edges of docker.grace (pure: the engine's own behaviour is in the docker tests)."""

from __future__ import annotations

import pytest
from histories import ended, started

from supervisor.core.container import (
    SAME_RUN_SLACK,
    ContainerInfo,
    Reconciled,
    docker_run_id,
    reconcile,
)
from supervisor.core.events import Bound, Ended, Outside, Withdrawn, apply_all
from supervisor.core.state import AgentState

T0 = 1_800_000_000.0
GRACE = 120.0
AGENT = "cilium-agent"
CID = "0123456789abcdef" * 4


def info(
    started_at: float | None,
    finished_at: float | None = None,
    *,
    running: bool = False,
    code: int | None = 0,
    cid: str = CID,
) -> ContainerInfo:
    """The container's State as Docker reports it."""
    return ContainerInfo(
        id=cid,
        name="cilium-agent",
        running=running,
        status="running" if running else "exited",
        exit_code=code,
        started_at=started_at,
        finished_at=finished_at,
        restart_policy="no",
        auto_remove=False,
    )


APPROVED = started(AgentState(AGENT), T0, run_id="a1")


def test_a_start_that_followed_its_approval_is_bound_to_the_container() -> None:
    """Compose starts the container seconds after the approval: one run, in that container."""
    got = reconcile(APPROVED, info(T0 + 2, running=True), T0 + 3, GRACE)
    assert got == Reconciled((Bound("a1", CID),), "running", "running")
    again = apply_all(APPROVED, got.events)
    assert reconcile(again, info(T0 + 2, running=True), T0 + 9, GRACE).events == ()


def test_an_exit_docker_saw_ends_the_run_with_its_code_and_time() -> None:
    """The container exited: the run ends at FinishedAt with ExitCode, once."""
    got = reconcile(APPROVED, info(T0 + 2, T0 + 700, code=3), T0 + 800, GRACE)
    assert got.events == (Bound("a1", CID), Ended(T0 + 700, 3, "docker", "a1"))
    assert got.outcome == "exited" and got.view == "stopped"
    after = apply_all(APPROVED, got.events)
    assert reconcile(after, info(T0 + 2, T0 + 700, code=3), T0 + 900, GRACE).events == ()


def test_an_approval_waits_the_grace_then_is_withdrawn() -> None:
    """No start followed: "pending" within docker.grace, withdrawn just after it."""
    before = info(T0 - 5000, T0 - 4000)
    within = reconcile(APPROVED, before, T0 + GRACE, GRACE)
    assert (within.events, within.view) == ((), "pending")
    after = reconcile(APPROVED, before, T0 + GRACE + 0.001, GRACE)
    assert after == Reconciled((Withdrawn("a1"),), "stopped", "withdrawn")
    missing = reconcile(APPROVED, None, T0 + GRACE + 0.001, GRACE)
    assert missing.events == (Withdrawn("a1"),)
    assert reconcile(APPROVED, None, T0 + 10, GRACE).view == "pending"


@pytest.mark.parametrize("d", [T0 - SAME_RUN_SLACK, T0 + GRACE])
def test_the_edges_of_the_grace_still_follow_the_approval(d: float) -> None:
    """A start at the approval minus the slack, or exactly the grace after, is its start."""
    got = reconcile(APPROVED, info(d, running=True), d + 1, GRACE)
    assert got.events == (Bound("a1", CID),)


def test_a_start_after_the_grace_is_a_start_outside_the_gate() -> None:
    """A start later than the grace: the approval is withdrawn, the real start counts."""
    d = T0 + GRACE + 0.5
    got = reconcile(APPROVED, info(d, running=True), d + 1, GRACE)
    rid = docker_run_id(CID, d)
    assert got.events == (Withdrawn("a1"), Outside(d, rid, CID))
    assert (got.outcome, got.view) == ("outside", "running")


def test_two_real_starts_within_the_grace_are_both_facts() -> None:
    """Issue 16: an approved start, a crash 2 s later, a `docker start` by hand 5 s later, and
    nothing reconciling in between: the crash (Docker kept its FinishedAt) and the ungated
    start are both in the history, and the crash counts."""
    crash, again = T0 + 3, T0 + 8
    got = reconcile(APPROVED, info(again, crash, running=True), again + 1, GRACE)
    rid = docker_run_id(CID, again)
    assert got.events == (Ended(crash, None, "docker", "a1"), Outside(again, rid, CID))
    s = apply_all(APPROVED, got.events)
    assert [(r.id, r.ended_at, r.via) for r in s.runs] == [
        ("a1", crash, "gate"),
        (rid, None, "docker"),
    ]


def test_a_restart_of_a_bound_container_ends_the_earlier_run_at_finished_at() -> None:
    """A run bound to the container, then `docker restart` by hand: the earlier run ended at
    FinishedAt, the restart is a start of its own."""
    s = apply_all(APPROVED, (Bound("a1", CID),))
    d = T0 + 3600
    got = reconcile(s, info(d, d - 2, running=True), d + 1, GRACE)
    assert got.events == (
        Ended(d - 2, None, "docker", "a1"),
        Outside(d, docker_run_id(CID, d), CID),
    )


def test_a_recreated_container_is_not_the_approved_runs_container() -> None:
    """A run bound to one container; Docker now shows another (compose recreated it): a new
    start, not the old run."""
    s = apply_all(APPROVED, (Bound("a1", CID),))
    other = "f" * 64
    got = reconcile(s, info(T0 + 30, running=True, cid=other), T0 + 31, GRACE)
    assert got.events[-1] == Outside(T0 + 30, docker_run_id(other, T0 + 30), other)


def test_an_old_start_is_no_news() -> None:
    """Docker's latest start is older than the latest run: nothing to add."""
    s = ended(started(AgentState(AGENT), T0, run_id="a1"), T0 + 9, 0)
    got = reconcile(s, info(T0 - 9000, T0 - 8000), T0 + 20, GRACE)
    assert got == Reconciled((), "stopped", "unchanged")


def test_a_container_that_never_started_only_lets_the_grace_speak() -> None:
    """StartedAt of a created, never started container is no start at all."""
    assert reconcile(APPROVED, info(None), T0 + 5, GRACE).view == "pending"
    assert reconcile(APPROVED, info(None), T0 + GRACE + 1, GRACE).events == (Withdrawn("a1"),)
