"""The container's State as the core reads it, at the edges mutation testing found unpinned:
Docker's times, the inspect document, the refusal messages, the ids of ungated runs, and the
corners of reconcile (an exit seen with a start outside the gate, a lost history's placeholder,
the exact boundaries of the slack, the grace and FinishedAt)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from histories import ended, started
from test_reconcile import AGENT, APPROVED, CID, GRACE, T0, info

from supervisor.base.errors import ConfigError
from supervisor.core.container import (
    SAME_RUN_SLACK,
    ContainerInfo,
    Reconciled,
    check_supervisable,
    docker_run_id,
    parse_docker_time,
    reconcile,
)
from supervisor.core.events import Approved, Bound, Ended, Lost, Outside, Withdrawn, apply_all
from supervisor.core.state import AgentState


def utc(day: int, hour: int, minute: int, second: int, micro: int = 0) -> float:
    """Seconds since the epoch of a UTC wall-clock time in November 2026."""
    return datetime(2026, 11, day, hour, minute, second, micro, tzinfo=UTC).timestamp()


# --- Docker's times ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T01:02:03.123456789Z", utc(29, 1, 2, 3, 123456)),
        ("2026-11-29T01:02:03.9999999Z", utc(29, 1, 2, 3, 999999)),
        ("2026-11-29T01:02:03.5Z", utc(29, 1, 2, 3, 500000)),
        ("2026-11-29T01:02:03Z", utc(29, 1, 2, 3)),
        ("2026-11-29T02:02:03.25+01:00", utc(29, 1, 2, 3, 250000)),
        ("2026-11-28T22:32:03-02:30", utc(29, 1, 2, 3)),
        (" 2026-11-29T01:02:03.000001Z\n", utc(29, 1, 2, 3, 1)),
    ],
)
def test_docker_times_keep_microseconds_and_their_offset(text: str, expected: float) -> None:
    """Nanoseconds are cut to microseconds (not rounded), a short fraction is a fraction, and
    an offset moves the instant."""
    assert parse_docker_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        5,
        b"2026-11-29T01:02:03Z",
        "",
        "0001-01-01T00:00:00Z",
        " 0001-01-01T00:00:00Z",
        "2026-11-29",
        "2026-11-29T01:02:03",
        "2026-11-29T01:02:03.Z",
        "2026-13-29T01:02:03Z",
        "2026-11-29T25:02:03Z",
        "yesterday",
    ],
)
def test_what_is_not_a_docker_time_is_never(text: object) -> None:
    """Not a string, Docker's zero time, another ISO 8601 form, or a time out of range: None."""
    assert parse_docker_time(text) is None


# --- the inspect document ------------------------------------------------------------------------


def test_the_inspect_document_gives_every_field() -> None:
    """Every field comes from its own key: id, name without the slash, state, times, policy."""
    attrs: dict[str, Any] = {
        "Id": CID,
        "Name": "/cilium-agent",
        "State": {
            "Running": False,
            "Status": "exited",
            "ExitCode": 137,
            "StartedAt": "2026-11-29T01:02:03.5Z",
            "FinishedAt": "2026-11-29T01:12:03.25Z",
        },
        "HostConfig": {"RestartPolicy": {"Name": "on-failure"}, "AutoRemove": True},
    }
    assert ContainerInfo.from_attrs(attrs) == ContainerInfo(
        id=CID,
        name="cilium-agent",
        running=False,
        status="exited",
        exit_code=137,
        started_at=utc(29, 1, 2, 3, 500000),
        finished_at=utc(29, 1, 12, 3, 250000),
        restart_policy="on-failure",
        auto_remove=True,
    )
    running = {**attrs, "State": {**attrs["State"], "Running": True, "Status": "running"}}
    assert ContainerInfo.from_attrs(running).running is True


@pytest.mark.parametrize(
    ("name", "expected"), [("/XX-agent", "XX-agent"), ("/agent/", "agent/"), ("agent", "agent")]
)
def test_only_the_leading_slash_is_cut_from_the_name(name: str, expected: str) -> None:
    """Docker's "/name" loses its slash, and nothing else of the name."""
    assert ContainerInfo.from_attrs({"Name": name}).name == expected


#: What an inspect document that says nothing gives.
NOTHING = ContainerInfo("", "", False, "", None, None, None, "no", False)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"State": None, "HostConfig": None},
        {"HostConfig": {"RestartPolicy": None}},
        {"HostConfig": {"RestartPolicy": {"Name": ""}}},
        {"HostConfig": {"RestartPolicy": {"Name": None}}},
    ],
)
def test_an_inspect_document_that_says_nothing_gives_empty_fields(attrs: dict[str, Any]) -> None:
    """Missing or null parts are empty strings, not running, no times, and restart policy "no"."""
    assert ContainerInfo.from_attrs(attrs) == NOTHING


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (255, 255), (True, None), ("3", None)])
def test_an_exit_code_is_an_integer_or_unknown(code: object, expected: int | None) -> None:
    """ExitCode is kept when it is an integer; a bool or a string is no exit code."""
    assert ContainerInfo.from_attrs({"State": {"ExitCode": code}}).exit_code == expected


# --- containers the daemon cannot gate -----------------------------------------------------------


def _with(policy: str, auto_remove: bool = False) -> ContainerInfo:
    """A created container named "agent" with a restart policy and a --rm setting."""
    return ContainerInfo(CID, "agent", False, "created", None, None, None, policy, auto_remove)


@pytest.mark.parametrize("policy", ["", "no"])
def test_no_restart_policy_is_supervisable(policy: str) -> None:
    """Restart policy "no", or the empty name old engines write, passes the check."""
    check_supervisable(_with(policy))  # no ConfigError


def test_a_restart_policy_is_refused_with_the_fix() -> None:
    """A restart policy other than "no": one line naming the container, the policy and the fix."""
    with pytest.raises(ConfigError) as exc:
        check_supervisable(_with("unless-stopped"))
    assert str(exc.value) == (
        "container agent: restart policy is 'unless-stopped', not \"no\": Docker would restart "
        "it inside the engine, behind the gate's back; run 'docker update --restart=no agent' "
        '(compose: restart: "no")'
    )


def test_an_auto_removed_container_is_refused_with_the_fix() -> None:
    """A --rm container: one line naming the container, why, and how to create it instead."""
    with pytest.raises(ConfigError) as exc:
        check_supervisable(_with("no", auto_remove=True))
    assert str(exc.value) == (
        "container agent is removed when it exits (--rm), so it could not be started again; "
        "create it without --rm"
    )


# --- the runs Docker shows and no gate approved --------------------------------------------------


def test_an_ungated_runs_id_is_the_short_container_id_and_the_start_in_microseconds() -> None:
    """The id names the container's first 12 characters and its start in hex microseconds."""
    assert docker_run_id(CID, 1_800_000_000.25) == "docker-0123456789ab-66517289c5090"


def test_a_start_on_an_empty_history_counts() -> None:
    """No history yet and a running container: its start is added as a start outside the gate."""
    got = reconcile(AgentState(AGENT), info(T0, running=True), T0 + 5, GRACE)
    assert got == Reconciled((Outside(T0, docker_run_id(CID, T0), CID),), "running", "outside")


@pytest.mark.parametrize("finished", [T0 + 700, T0])
def test_an_ungated_start_that_exited_ends_there(finished: float) -> None:
    """A start outside the gate that Docker shows exited (even in the instant it started) ends
    at FinishedAt with ExitCode."""
    rid = docker_run_id(CID, T0)
    got = reconcile(AgentState(AGENT), info(T0, finished, code=137), T0 + 800, GRACE)
    assert got == Reconciled(
        (Outside(T0, rid, CID), Ended(finished, 137, "docker", rid)), "stopped", "outside"
    )


def test_an_ungated_start_with_no_finished_at_stays_open() -> None:
    """A stopped container whose FinishedAt Docker does not give: the start counts, no end."""
    got = reconcile(AgentState(AGENT), info(T0, None), T0 + 800, GRACE)
    assert got == Reconciled((Outside(T0, docker_run_id(CID, T0), CID),), "stopped", "outside")


# --- approvals and the grace ---------------------------------------------------------------------


def test_a_missing_container_withdraws_an_approval_after_the_grace() -> None:
    """No container: the approval is "pending" within the grace and withdrawn after it."""
    within = reconcile(APPROVED, None, T0 + GRACE, GRACE)
    assert within == Reconciled((), "pending", "unchanged")
    after = reconcile(APPROVED, None, T0 + GRACE + 0.001, GRACE)
    assert after == Reconciled((Withdrawn("a1"),), "stopped", "withdrawn")


@pytest.mark.parametrize("d", [T0 - SAME_RUN_SLACK, T0 + 0.5, T0 + GRACE])
def test_a_start_within_the_slack_and_the_grace_follows_even_when_seen_late(d: float) -> None:
    """Reconciled long after the grace, a start between the approval minus the slack and the
    grace after it is still the approval's own start."""
    got = reconcile(APPROVED, info(d, running=True), T0 + 1000, GRACE)
    assert got == Reconciled((Bound("a1", CID),), "running", "running")


def test_a_stopped_container_with_no_finished_at_leaves_the_approval_pending() -> None:
    """Docker shows the start but neither a run nor an end: within the grace the approval
    stands, and nothing is recorded."""
    got = reconcile(APPROVED, info(T0 + 2, None), T0 + 10, GRACE)
    assert got == Reconciled((), "pending", "unchanged")


def test_a_withdrawn_approval_lets_the_run_before_it_speak() -> None:
    """An approved run crashed unreconciled, then a forced start that compose never followed:
    the forced one is withdrawn and the earlier run ends at Docker's FinishedAt."""
    s = apply_all(AgentState(AGENT), (Approved(T0, "r0"), Approved(T0 + 60, "a1", via="force")))
    got = reconcile(s, info(T0 + 2, T0 + 40, code=1), T0 + 300, GRACE)
    assert got == Reconciled(
        (Withdrawn("a1"), Bound("r0", CID), Ended(T0 + 40, 1, "docker", "r0")), "stopped", "exited"
    )


def test_a_withdrawal_with_the_earlier_run_ended_says_withdrawn() -> None:
    """An ended run covers Docker's start and a later approval is not followed: the only news
    is the withdrawal."""
    s = ended(started(AgentState(AGENT), T0, run_id="r0"), T0 + 50, 1)
    s = started(s, T0 + 60, run_id="a1")
    got = reconcile(s, info(T0 + 2, T0 + 50, code=1), T0 + 300, GRACE)
    assert got == Reconciled((Withdrawn("a1"),), "stopped", "withdrawn")


def test_a_withdrawal_with_the_earlier_run_running_says_running() -> None:
    """A bound run is running and a later approval is not followed: withdrawn, and the running
    container is the earlier run's."""
    s = apply_all(
        AgentState(AGENT), (Approved(T0, "r0"), Bound("r0", CID), Approved(T0 + 60, "a1"))
    )
    got = reconcile(s, info(T0 + 2, running=True), T0 + 300, GRACE)
    assert got == Reconciled((Withdrawn("a1"),), "running", "running")


# --- runs whose end was reported ------------------------------------------------------------------

#: An approved run that Docker started, whose exit record-exit reported.
REPORTED = ended(APPROVED, T0 + 50, 1)


def test_a_reported_end_and_docker_agreeing_is_no_news() -> None:
    """record-exit ended the run, Docker shows the same start and its exit: nothing changes."""
    got = reconcile(REPORTED, info(T0 + 2, T0 + 49.5, code=1), T0 + 60, GRACE)
    assert got == Reconciled((), "stopped", "unchanged")


def test_a_run_whose_end_was_reported_is_never_withdrawn() -> None:
    """Long after the grace, with only an older start in Docker, an ended approval stays."""
    got = reconcile(REPORTED, info(T0 - 5000, T0 - 4000), T0 + 1000, GRACE)
    assert got == Reconciled((), "stopped", "unchanged")


def test_a_reported_end_while_docker_runs_the_container_changes_nothing() -> None:
    """The run's end was reported but Docker shows its start still running: no event, and the
    outcome is not "running" (no run was bound)."""
    got = reconcile(REPORTED, info(T0 + 2, running=True), T0 + 60, GRACE)
    assert got == Reconciled((), "running", "unchanged")


def test_a_later_start_after_a_reported_end_is_only_a_start() -> None:
    """A start after the run's reported end: added as a start outside the gate, and Docker's
    FinishedAt (the end already reported) adds no second end."""
    d = T0 + 600
    got = reconcile(REPORTED, info(d, T0 + 50, running=True), d + 1, GRACE)
    assert got == Reconciled((Outside(d, docker_run_id(CID, d), CID),), "running", "outside")


# --- a lost history's placeholder ----------------------------------------------------------------

LOST = apply_all(AgentState(AGENT), (Lost(T0, "lost", "corrupt state file"),))


def test_a_lost_historys_placeholder_is_never_withdrawn() -> None:
    """The placeholder of a lost history is no approval: the grace does not remove it."""
    assert reconcile(LOST, None, T0 + 1000, GRACE) == Reconciled((), "stopped", "unchanged")


def test_a_start_after_a_lost_history_is_a_start_of_its_own() -> None:
    """A container started seconds after the history was found lost is not the placeholder's
    start (only an approval waits the grace): it is added as a start outside the gate."""
    got = reconcile(LOST, info(T0 + 5, running=True), T0 + 6, GRACE)
    assert got == Reconciled(
        (Outside(T0 + 5, docker_run_id(CID, T0 + 5), CID),), "running", "outside"
    )


# --- the exact boundaries of FinishedAt ----------------------------------------------------------


def test_a_crash_at_the_approvals_instant_is_the_approved_runs_end() -> None:
    """A FinishedAt equal to the recorded approval, and a later start: the approved run ended
    there and the later start is a second one."""
    d = T0 + 8
    got = reconcile(APPROVED, info(d, T0, running=True), d + 1, GRACE)
    assert got == Reconciled(
        (Ended(T0, None, "docker", "a1"), Outside(d, docker_run_id(CID, d), CID)),
        "running",
        "outside",
    )


def test_a_finished_at_equal_to_the_running_start_is_no_second_start() -> None:
    """A running container whose FinishedAt is its StartedAt: one start, bound to the approval."""
    got = reconcile(APPROVED, info(T0 + 2, T0 + 2, running=True), T0 + 3, GRACE)
    assert got == Reconciled((Bound("a1", CID),), "running", "running")


def test_a_container_that_exited_the_instant_it_started_ends_the_approved_run() -> None:
    """StartedAt equal to FinishedAt (an exec failure, within a microsecond): the approved run
    started and ended there, with its exit code."""
    got = reconcile(APPROVED, info(T0 + 2, T0 + 2, code=127), T0 + 3, GRACE)
    assert got == Reconciled(
        (Bound("a1", CID), Ended(T0 + 2, 127, "docker", "a1")), "stopped", "exited"
    )


BOUND = apply_all(APPROVED, (Bound("a1", CID),))


def test_a_bound_run_ends_at_a_finished_at_equal_to_its_start() -> None:
    """A bound run, Docker's FinishedAt at the run's very start and a later start: the bound
    run ended at FinishedAt."""
    d = T0 + 3600
    got = reconcile(BOUND, info(d, T0, running=True), d + 1, GRACE)
    assert got.events == (Ended(T0, None, "docker", "a1"), Outside(d, docker_run_id(CID, d), CID))


def test_a_finished_at_equal_to_a_new_start_does_not_end_the_bound_run() -> None:
    """A bound run, and a new start whose FinishedAt is that start itself: only the start."""
    d = T0 + 3600
    got = reconcile(BOUND, info(d, d, running=True), d + 1, GRACE)
    assert got.events == (Outside(d, docker_run_id(CID, d), CID),)


def test_a_recreated_container_that_never_finished_adds_only_its_start() -> None:
    """A bound run, and a new container with no FinishedAt: its start, and no end for anyone."""
    other = "f" * 64
    got = reconcile(BOUND, info(T0 + 30, running=True, cid=other), T0 + 31, GRACE)
    assert got == Reconciled(
        (Outside(T0 + 30, docker_run_id(other, T0 + 30), other),), "running", "outside"
    )


def test_another_containers_start_at_a_known_start_is_no_news() -> None:
    """After the clock stepped back, an approval after a later-started bound run is withdrawn;
    another container's start at that bound run's very start is not a new start."""
    s = apply_all(
        AgentState(AGENT), (Approved(T0 + 200, "r0"), Bound("r0", CID), Approved(T0, "a1"))
    )
    other = "f" * 64
    got = reconcile(s, info(T0 + 200, running=True, cid=other), T0 + 300, GRACE)
    assert got == Reconciled((Withdrawn("a1"),), "running", "withdrawn")
