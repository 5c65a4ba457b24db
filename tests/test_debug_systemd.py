"""A whole debug session in mode 1, under a real systemd (PID 1 of private namespaces, the
harness of test_systemd_real): the shipped cilium-agent.service installed as the README says,
the operator's commands the README's lines ("Debugging the agent on a node") run in a shell of
the node, the unit found by itself.

`debug start` stops the unit (ExecStopPost records 143 for the run it names: a stop on purpose,
the level unchanged) and the unit stays stopped while the debug container runs; `debug end`
starts the unit, whose own gate lets it through at once: with `docker.container` in config.toml
it sees the forced start as "pending" (and the run's end is then told by Docker); without it,
through the short override `debug end` sets and releases.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_debug import readme_workflow
from test_debug_docker import AGENT_EXTRAS, same_container
from test_systemd_real import AGENT, LATE, TIMEOUT, Node, make_node  # noqa: F401 - the fixture

from supervisor.containers.debug import FALLBACK_OVERRIDE, debug_name

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def with_extras(node: Node) -> None:
    """The node's compose file with the agent's extras (a capability, an environment variable,
    a working directory), so that "the same" shows in the debug container."""
    path = node.compose / "docker-compose.yml"
    text = path.read_text()
    assert "  cilium-agent:\n" in text
    path.write_text(text.replace("  cilium-agent:\n", "  cilium-agent:\n" + AGENT_EXTRAS))


def readme(node: Node, line: str, *extra: str) -> Any:
    """One of the README's `agent-supervisor ...` lines in the node's shell, as written (and
    ``extra`` options)."""
    argv = shlex.split(line, comments=True)
    assert argv[0] == "agent-supervisor", line
    return node.shell(*argv[1:], *extra)


@pytest.mark.parametrize("docker_tells", [True, False], ids=["docker-container", "no-container"])
def test_a_debug_session_under_systemd(
    make_node: Callable[..., Node],  # noqa: F811 - the fixture imported above
    docker_tells: bool,
) -> None:
    """Mode 1: `debug start` stops the unit on purpose, which stays stopped while the debug
    container (the agent's mounts, network, privileges, `sleep 10d`) runs; `debug end` removes
    it and starts the unit at once, its gate letting the forced start through (pending) or,
    without docker.container, the override of `debug end`; each command again is harmless."""
    settings: dict[str, Any] = {} if docker_tells else {"docker": None}
    node = make_node(window=3.0, admission=1.0, settings=settings, prepare=with_extras)
    start_line, _, end_line = readme_workflow()
    extra = () if docker_tells else ("--container", node.container)
    debug = debug_name(node.container)
    node.wait(lambda: node.running() and node.runs(), "the agent to run")
    (first,) = node.runs()
    restarts = node.prop("NRestarts")
    # What status says of a running agent: 0, or 1 where Docker is not asked (an open run with
    # no end reported is counted until its end is known).
    level = node.status()["backoff_level"]
    assert (level, node.level()) == (0 if docker_tells else 1, 0)
    (node.config_map / "marker").write_text("the agent's config directory\n")

    # debug start: the unit stopped on purpose, found by itself.
    t0 = time.time()
    started = readme(node, start_line, *extra)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"stopped by systemctl stop {node.unit}" in started.stdout, started.stdout
    assert f"\n  docker exec -it {debug} sh\n" in started.stdout
    assert node.prop("ActiveState") == "inactive"
    (stopped,) = node.runs()
    assert stopped.id == first.id
    assert (stopped.exit_code, stopped.end_source) == (143, "record-exit"), stopped
    assert stopped.stopped_on_purpose
    assert node.ended_by_exec_stop_post(first.id)["exit_code"] == 143
    box = node.client.containers.get(debug)
    same_container(node.client.containers.get(node.container).attrs, box.attrs)
    out = box.exec_run(["sh", "-c", "cat /tmp/cilium/config-map/marker; echo $DEBUG_MARKER"])
    assert out.output.decode().split("\n")[:2] == ["the agent's config directory", "from-compose"]
    status = node.status()
    assert (status["backoff_level"], status["debug"]["container"]) == (0, debug)
    assert status["running"] is (False if docker_tells else None)  # None: Docker not asked

    # The unit stays stopped: more than a window, no restart, nothing recorded.
    time.sleep(max(0.0, t0 + 3.0 + LATE - time.time()))
    assert (node.prop("ActiveState"), node.prop("NRestarts")) == ("inactive", restarts)
    assert not node.running()
    assert node.runs() == (stopped,)
    again = readme(node, start_line, *extra)
    assert again.returncode == 0, again.stderr
    assert "in progress since" in again.stdout and "was not running" in again.stdout
    assert node.client.containers.get(debug).id == box.id
    human = node.operator("status")
    assert f"shell: docker exec -it {debug} sh" in human, human

    # debug end: the unit started at once, through its own gate.
    t1 = time.time()
    ended = readme(node, end_line)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert f"removed debug container {debug}" in ended.stdout
    assert not node.client.containers.list(all=True, filters={"name": f"^{debug}$"})
    node.wait(lambda: node.running() and len(node.runs()) == 2, "the agent to run again")
    assert node.prop("ActiveState") == "active"
    _, run = node.runs()
    assert t1 <= run.started_at <= t1 + 30
    gate = [
        e.doc for e in node.logged() if e.at >= t1 and str(e.doc.get("event")).startswith("gate.")
    ]
    status = node.status()
    audit = [e["command"] for e in status["audit"]]
    if docker_tells:
        assert (run.via, run.reason) == ("force", "debug session ended: INC-42: found it")
        assert [e["event"] for e in gate] == ["gate.pending"], gate
        assert node.main_run_id() is None  # the unit's gate approved nothing itself
        assert audit[-3:] == ["debug start", "gate --force", "debug end"]
    else:
        assert run.via == "override"
        assert [e["event"] for e in gate] == ["gate.override"], gate
        assert node.main_run_id() == run.id
        assert audit[-4:] == ["debug start", "debug end", "override", "release"]
        assert status["override"] is None
        assert FALLBACK_OVERRIDE <= 300
    assert (status["backoff_level"], status["hold"], status["debug"]) == (level, None, None)
    assert node.level() == 0
    twice = readme(node, end_line)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == f"no debug session of {AGENT} in progress: nothing to end\n"
    assert len(node.runs()) == 2

    # The run debug end started ends as any other: systemctl stop, 143, recorded for it (by
    # ExecStopPost's record-exit, through Docker's word when it names no run).
    node.sd.systemctl("stop", node.unit, timeout=TIMEOUT)
    *_, last = node.runs()
    told = "docker" if docker_tells else "record-exit"
    assert (last.id, last.exit_code, last.end_source) == (run.id, 143, told)
    assert node.level() == 0
