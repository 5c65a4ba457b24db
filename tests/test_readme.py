"""The README's examples run as written: the Commands block line by line, in a scratch dir."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"
BEHAVIOUR = README.parent / "docs" / "behaviour.md"
#: The README and every page of the docs.
DOC_FILES = [README, *sorted((README.parent / "docs").glob("*.md"))]


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
    """The decision JSON in docs/behaviour.md is a first start: it names the admission slot
    node-17's hash gives (J = W without a probe), within one J of the ask, and is exactly what
    the gate answers at that time."""
    from datetime import datetime

    from supervisor.core.policy import Policy, Request, decide
    from supervisor.core.slots import hash_offset
    from supervisor.core.state import AgentState

    text = BEHAVIOUR.read_text()
    start = text.index("```json\n", text.index("## Decision JSON"))
    doc = json.loads(text[start + 8 : text.index("```", start + 8)])
    w = doc["window_seconds"]
    at = datetime.fromisoformat(doc["decided_at"]).timestamp()
    policy = Policy(
        doc["agent"],
        doc["node"],
        doc["cluster_size"],
        w,
        hash_offset(doc["node"], doc["agent"]),
        "hash",
        admission=doc["admission_seconds"],
    )
    d = decide(policy, AgentState(doc["agent"]), at, Request(run_id="x"))
    assert d.to_json() == doc
    nxt = datetime.fromisoformat(doc["next_allowed_at"]).timestamp()
    assert at <= nxt < at + doc["admission_seconds"]


def test_no_readme_line_installs_the_taken_pypi_name() -> None:
    """'agent-supervisor' on PyPI is someone else's project: no command in the README or the
    docs installs it, and the docs install agent-start-gate."""
    text = "\n".join(p.read_text() for p in DOC_FILES)
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


def shown_commands() -> list[tuple[str, list[str]]]:
    """Every ``agent-supervisor ...`` command the README or the docs show: a line of a code
    block (a ``$ `` prompt and ``\\`` continuations taken away, a command after ``&&`` too) or
    an inline code span, as (page, argv)."""
    out = []
    for page in DOC_FILES:
        text = page.read_text()
        shown = []
        for block in re.findall(r"```(?:sh|console|bash)?\n(.*?)```", text, re.S):
            for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
                shown += [part.strip().removeprefix("$ ") for part in raw.split("&&")]
        shown += re.findall(r"(?<!`)`(agent-supervisor [^`]+)`", text)
        for line in shown:
            if line.startswith("agent-supervisor "):
                out.append((page.name, shlex.split(line, comments=True)))
    return out


def test_every_command_the_docs_show_is_one_the_cli_takes() -> None:
    """Each command line in the README and the docs names a real (sub)command, and every
    option it uses is one that command takes (the examples block above also runs them)."""
    import typer

    from supervisor.cli.app import full_app

    root = typer.main.get_command(full_app())
    shown = shown_commands()
    assert len(shown) > 40
    wrong = []
    for page, argv in shown:
        cmd: Any = root  # typer's own (vendored) click: duck-typed
        words = argv[1:]
        while hasattr(cmd, "get_command") and words and not words[0].startswith("-"):
            sub = cmd.get_command(cmd.context_class(cmd), words[0])
            if sub is None:
                wrong.append(f"{page}: {' '.join(argv)}: no command {words[0]!r}")
                break
            cmd, words = sub, words[1:]
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
        for word in words:
            if word == "--":
                break
            name = word.split("=", 1)[0]
            if name.startswith("--") and name not in known:
                wrong.append(f"{page}: {' '.join(argv)}: {cmd.name} has no {name}")
    assert wrong == []
