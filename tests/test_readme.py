"""The README's examples run as written: the Commands block line by line, in a scratch dir."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"


def commands_block() -> list[str]:
    """The shell lines of the first ```sh block after 'Examples. The gate needs'."""
    text = README.read_text()
    start = text.index("Examples. The gate needs the cluster size")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_every_commands_example_runs_as_written(tmp_path: Path) -> None:
    """After the block's own export line, each example exits as its comment says (0 or 75)."""
    lines = commands_block()
    assert lines[0].startswith("export ")
    env = clean_env()
    for assignment in shlex.split(lines[0])[1:]:
        key, value = assignment.split("=", 1)
        env[key] = value
    codes = []
    for line in lines[1:]:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "agent-supervisor", line
        p = subprocess.run(
            [sys.executable, "-m", "supervisor", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert "Traceback" not in p.stderr, (line, p.stderr)
        expected = 75 if "exit 75" in line else 0
        assert p.returncode == expected, (line, p.returncode, p.stderr)
        codes.append(p.returncode)
        if argv[1:] == ["status", "--json"]:
            assert json.loads(p.stdout)["agent"] == "cilium-agent"
    assert codes.count(75) == 1 and len(codes) == len(lines) - 1


def test_window_example_output_is_what_the_tool_prints(tmp_path: Path) -> None:
    """The window line quoted in the README is the tool's own output."""
    env = clean_env()
    env["AGENT_SUPERVISOR_CLUSTER_SIZE"] = "1000"
    p = subprocess.run(
        [sys.executable, "-m", "supervisor", "window"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    quoted = " ".join(p.stdout.split())
    assert quoted in " ".join(README.read_text().replace("`", "").split())


def test_the_decision_json_example_is_node_17s_own_slot() -> None:
    """The README's decision JSON names the slot that node's hash gives, one to two W out."""
    from datetime import datetime

    from supervisor.core.slots import hash_offset

    text = README.read_text()
    start = text.index("```json\n", text.index("### Decision JSON"))
    doc = json.loads(text[start + 8 : text.index("```", start + 8)])
    w = doc["window_seconds"]
    nxt = datetime.fromisoformat(doc["next_allowed_at"]).timestamp()
    at = datetime.fromisoformat(doc["decided_at"]).timestamp()
    phase = (nxt - hash_offset(doc["node"], doc["agent"]) * w) / w
    assert abs(phase - round(phase)) < 1e-6
    assert at + w <= nxt < at + 2 * w


def test_no_readme_line_installs_the_taken_pypi_name() -> None:
    """'agent-supervisor' on PyPI is someone else's project: no command installs it."""
    text = README.read_text()
    installed: list[str] = []
    for line in text.splitlines():
        for command in re.split(r"&&|;|\|", line.strip("` ")):
            words = command.split()
            if any(w.endswith("pip") for w in words) and "install" in words:
                installed += words[words.index("install") + 1 :]
    assert installed, "the README has install commands"
    taken = [w for w in installed if re.fullmatch(r"agent-supervisor([=<>~!\[].*)?", w)]
    assert taken == []
    assert "agent-start-gate" in installed
