"""A node's life under compose (deployment mode 3), on the real engine with docker-compose
1.29 and Compose v2: the shipped compose file, as test_compose.py runs it.

- `down` then `up -d`, again and again: each `down` is a stop made on purpose, recorded by the
  supervisor (which compose stops after the agent), so the level stays 0 (invariant 12).
- An upgrade (`CILIUM_IMAGE=...:2 up -d`) and a rollback: no start of the agent that the gate
  did not approve at a slot, and the old run recorded as stopped on purpose or as replaced
  (invariant 7). docker-compose 1.29 recreates after the gate, which sees that the running
  agent is about to be replaced; Compose v2 recreates before it, and the new container waits.
- The gate container killed while it waits: `up` fails and nothing is recorded; with Compose v2
  (which created the agent's container first) the supervisor starts it through the gate, with
  1.29 (which had not) it reports the container missing.
- The host's `status --json` of a healthy agent says running at level 0.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import dockerutil
import pytest
from test_compose import AGENT, Project, W, _reap, _running, project  # noqa: F401
from test_docker_facts import event_names, log_events, logs_since

from supervisor.core.state import Run

#: How long an approved start may take to reach the engine in these tests (compose's own
#: work after the gate exits): far below docker.grace (2 min).
FOLLOW = 30.0


def wait_running(proj: Project, client: Any) -> Any:
    """The agent's container once it runs and its run is bound to it (the supervisor saw it)."""

    def bound() -> Any:
        c = proj.service(client, AGENT)
        if c is None or not _running(c):
            return None
        runs = proj.runs()
        return c if runs and runs[-1].container == c.id else None

    return dockerutil.wait_for(bound, 60, "the agent to run, its run bound to it", interval=0.2)


def supervisor_running(proj: Project, client: Any) -> Any:
    """The supervisor service's container, once it runs."""
    return dockerutil.wait_for(
        lambda: (s := proj.service(client, "supervisor")) is not None and _running(s) and s,
        30,
        "the supervisor service",
    )


def decisions(proj: Project, client: Any, since: float) -> list[dict[str, Any]]:
    """The gate.* events the gate service and the supervisor logged since ``since``."""
    out = []
    for service in ("gate", "supervisor"):
        c = proj.service(client, service)
        if c is not None:
            out += [
                e
                for e in log_events(logs_since(c, since))
                if str(e.get("event", "")).startswith("gate.")
            ]
    return out


def approved_at_a_slot(proj: Project, client: Any, since: float, run: Run) -> dict[str, Any]:
    """The decision that approved ``run``: allowed and recorded at this node's slot."""
    (d,) = [e for e in decisions(proj, client, since) if e.get("run_id") == run.id]
    assert d["event"] == "gate.allowed" and d["recorded"] is True, d
    assert "slot" in d["reason"], d
    return d


def assert_every_start_gated(proj: Project, client: Any, t0: float) -> None:
    """Every engine start of the agent since ``t0`` followed an approval of the gate (its run,
    via gate, recorded before it), and no run was added as started outside the gate."""
    starts = dockerutil.starts(client, t0, time.time(), proj.container)
    runs = [r for r in proj.runs() if r.started_at >= t0 - 1]
    assert [r.via for r in runs] == ["gate"] * len(runs), runs
    assert len(starts) == len(runs), (starts, runs)
    for s, r in zip(starts, runs, strict=True):
        assert r.started_at <= s <= r.started_at + FOLLOW, (s, r)


@pytest.fixture
def second_tag(docker_client: Any) -> Iterator[str]:
    """The stand-in agent image under a second tag (the "new version"), removed afterwards."""
    import docker.errors

    image = docker_client.images.get(dockerutil.standin_image(docker_client))
    repo, tag = f"{dockerutil.PREFIX}-standin", dockerutil.unique("v2").rsplit("-", 1)[-1]
    image.tag(repo, tag)
    try:
        yield f"{repo}:{tag}"
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(f"{repo}:{tag}")


@pytest.mark.docker
@pytest.mark.slow
def test_down_then_up_again_and_again_keeps_the_level_at_0(
    project: Project,  # noqa: F811 - the fixture imported above
    docker_client: Any,
) -> None:
    """`down` then `up -d` three times, each more than W after the start: every `down` is
    recorded by the supervisor as a stop made on purpose, and every `up` starts at level 0, at
    the node's slot."""
    t0 = time.time()
    first = project.run("up", "-d")
    assert first.returncode == 0, first.stdout + first.stderr
    wait_running(project, docker_client)
    for attempt in range(3):
        started = project.runs()[-1].started_at
        time.sleep(max(0.0, started + W + 0.5 - time.time()))
        down = project.run("down", "-t", "10")
        assert down.returncode == 0, down.stdout + down.stderr
        stopped = project.runs()[-1]
        assert stopped.ended_at is not None, f"down #{attempt + 1}: the stop was not recorded"
        assert (stopped.exit_code, stopped.end_source) == (143, "docker"), stopped
        assert stopped.stop is not None and stopped.stopped_on_purpose, stopped
        status = project.host("status", "--json")
        assert status.code == 0, status.stderr
        assert json.loads(status.stdout)["backoff_level"] == 0
        since = time.time()
        up = project.run("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_running(project, docker_client)
        new = project.runs()[-1]
        d = approved_at_a_slot(project, docker_client, since, new)
        assert d["backoff_level"] == 0, d
    assert_every_start_gated(project, docker_client, t0)
    assert len(project.runs()) == 4


@pytest.mark.docker
@pytest.mark.slow
def test_an_upgrade_and_a_rollback_start_only_through_the_gate(
    project: Project,  # noqa: F811 - the fixture imported above
    docker_client: Any,
    second_tag: str,
) -> None:
    """`CILIUM_IMAGE=<new tag> up -d`, then back to the old tag: each replaces the agent with
    a start the gate approved at the node's slot, never an ungated one; the old run is recorded
    as stopped on purpose (v2 stops it before the gate runs) or as replaced (1.29 stops it after,
    having kept it running while the gate waited); the same `up -d` again starts nothing."""
    t0 = time.time()
    first = project.run("up", "-d")
    assert first.returncode == 0, first.stdout + first.stderr
    wait_running(project, docker_client)
    supervisor_running(project, docker_client)
    original = project.env["CILIUM_IMAGE"]
    for image in (second_tag, original):
        old = project.runs()[-1]
        old_container = project.service(docker_client, AGENT)
        assert old_container is not None
        since = time.time()
        up = project.run("up", "-d", CILIUM_IMAGE=image)
        assert up.returncode == 0, up.stdout + up.stderr
        agent = wait_running(project, docker_client)
        assert agent.id != old_container.id
        assert agent.attrs["Config"]["Image"] == image
        *_, before, new = dockerutil.wait_for(
            lambda: (r := project.runs()) and r[-2].ended_at is not None and r,
            30,
            "the old run's end to be recorded",
        )
        assert before.id == old.id
        approved_at_a_slot(project, docker_client, since, new)
        old_died = [
            e.time
            for e in dockerutil.events(docker_client, since, time.time(), project.container)
            if e.action == "die"
        ]
        assert len(old_died) == 1
        assert before.stopped_on_purpose, before
        if project.cmd == ["docker-compose"]:
            # 1.29: the gate saw the replacement coming; the old agent ran until it said yes.
            assert new.replaces == old.id, new
            assert old_died[0] >= new.started_at
            gate = project.service(docker_client, "gate")
            assert gate is not None
            assert "docker.recreate_expected" in event_names(logs_since(gate, since))
        else:
            # v2: the old agent was stopped (and the stop recorded) before the gate ran.
            assert old_died[0] <= new.started_at
        # The same `up -d` again changes nothing: the new agent is what the files say.
        again = time.time()
        rerun = project.run("up", "-d", CILIUM_IMAGE=image)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert wait_running(project, docker_client).id == agent.id
        assert project.runs()[-1] == new
        said: list[str] = [e["event"] for e in decisions(project, docker_client, again)]
        assert said == ["gate.already_running"], said
    assert_every_start_gated(project, docker_client, t0)
    assert len(project.runs()) == 3


@pytest.mark.docker
def test_a_gate_killed_while_it_waits_leaves_a_node_that_recovers_where_it_can(
    project: Project,  # noqa: F811 - the fixture imported above
    docker_client: Any,
) -> None:
    """`docker kill` of the waiting gate: `up` fails and nothing is recorded; the supervisor
    runs (it waits for no gate). Compose v2 had created the agent's container: once the hold
    is released the supervisor starts it through the gate. docker-compose 1.29 had not: the
    supervisor says the container is missing, and starts nothing."""
    assert project.cli("hold", "--reason", "test: keep it down").code == 0
    t0 = time.time()
    up = project.popen("up", "-d")
    try:
        gate = dockerutil.wait_for(
            lambda: (g := project.service(docker_client, "gate")) is not None and _running(g) and g,
            timeout=60,
            what="the gate container to be waiting",
        )
        sup = supervisor_running(project, docker_client)
        gate.kill()
        out, _ = up.communicate(timeout=60)
    finally:
        _reap(up)
    assert up.returncode != 0, out
    assert project.runs() == ()
    assert project.cli("release", "--reason", "test: go").code == 0
    if project.cmd == ["docker-compose"]:
        assert project.service(docker_client, AGENT) is None
        dockerutil.wait_for(
            lambda: "daemon.container_missing" in event_names(logs_since(sup, t0)),
            30,
            "the supervisor to report the missing container",
        )
        assert project.runs() == ()
        return
    agent = wait_running(project, docker_client)
    (run,) = project.runs()
    assert run.via == "gate" and run.container == agent.id
    assert_every_start_gated(project, docker_client, t0)
    assert "daemon.container_started" in event_names(logs_since(sup, t0))


@pytest.mark.docker
def test_status_of_a_healthy_agent_under_compose_says_running_at_level_0(
    project: Project,  # noqa: F811 - the fixture imported above
    docker_client: Any,
) -> None:
    """Mode 3: the host's `status --json`, reading the one config.toml (which names the agent's
    container), says running at level 0 for the agent `up -d` started, and so does the
    backoff_level metric."""
    up = project.run("up", "-d")
    assert up.returncode == 0, up.stdout + up.stderr
    wait_running(project, docker_client)
    metrics = project.root / "metrics.prom"
    status = project.host("status", "--json", "--set", f"metrics_file={metrics}")
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert (doc["running"], doc["backoff_level"], doc["reason"]) == (True, 0, "already running")
    assert f'agent_supervisor_backoff_level{{agent="{AGENT}"}} 0.0' in metrics.read_text()
