"""The CLI as operators and units run it: real processes, a real state directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import QUICK_ADMISSION, Result, clean_env, run_cli

SIZE = ("--cluster-size", "5000")


def ts(text: str) -> float:
    """ISO 8601 -> epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def gate(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``gate --json`` against ``state_dir``."""
    return run_cli("gate", "--json", "--state-dir", str(state_dir), *args, env=env)


def first(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """The agent's first start through the real gate: ``gate --wait`` on a short admission
    grid (a first start waits for the node's admission slot)."""
    return run_cli(
        "gate", "--wait", "--json", "--state-dir", str(state_dir), *QUICK_ADMISSION, *args, env=env
    )


def state_doc(state_dir: Path) -> dict[str, object]:
    """The agent's state file, parsed."""
    doc = json.loads((state_dir / "cilium-agent.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_a_first_start_waits_for_its_admission_slot_and_re_asking_names_the_same(
    state_dir: Path,
) -> None:
    """Invariant 2 through the console script: a first start with W = 3600 is refused (75)
    until the node's admission slot, within J = W of the ask; asking again names the same slot
    and the same ask, which the state keeps."""
    env = clean_env(AGENT_SUPERVISOR_CLUSTER_SIZE="5000")
    exe = shutil.which("agent-supervisor")
    assert exe, "the console script is installed"
    cmd = [exe, "gate", "--json", "--state-dir", str(state_dir)]
    first_ask = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert first_ask.returncode == 75, first_ask.stderr
    d1 = json.loads(first_ask.stdout)
    assert d1["allowed"] is False and d1["window_seconds"] == 3600
    assert set(d1) >= {
        "allowed",
        "reason",
        "agent",
        "node",
        "cluster_size",
        "window_seconds",
        "backoff_level",
        "next_allowed_at",
        "forced",
        "run_id",
        "grid",
        "asked_at",
    }
    asked = ts(d1["asked_at"])
    assert d1["grid"] == "admission" and asked <= ts(d1["next_allowed_at"]) < asked + 3600
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 75
    d2 = json.loads(second.stdout)
    assert (d2["next_allowed_at"], d2["asked_at"]) == (d1["next_allowed_at"], d1["asked_at"])
    assert state_doc(state_dir)["ask"]["until"] == d1["next_allowed_at"]  # type: ignore[index]


def test_python_dash_m_is_the_same_program(state_dir: Path) -> None:
    """``python -m supervisor`` gates like the console script, and names the run it allows."""
    r = first(state_dir, *SIZE)
    d = json.loads(r.stdout)
    assert r.code == 0 and d["allowed"] and d["run_id"]
    assert state_doc(state_dir)["runs"][-1]["id"] == d["run_id"]  # type: ignore[index]


def test_missing_cluster_size_exits_78_and_says_how(state_dir: Path) -> None:
    """Without cluster_size the gate exits 78 with one line saying how to set it."""
    r = gate(state_dir)
    assert r.code == 78
    assert r.stderr_lines == [
        "agent-supervisor: error: cluster_size is not set: add 'cluster_size = N' to "
        "/etc/agent-supervisor/config.toml, or set AGENT_SUPERVISOR_CLUSTER_SIZE=N, "
        "or pass --cluster-size N"
    ]
    assert not state_dir.exists() or not (state_dir / "cilium-agent.json").exists()


def test_bad_agent_name_is_a_usage_error(state_dir: Path) -> None:
    """Agent names that could escape the state directory exit 2."""
    r = gate(state_dir, *SIZE, "--agent", "../etc")
    assert r.code == 2 and "agent names are [a-z0-9._-]+" in r.stderr


def test_gate_execs_the_command_in_place(state_dir: Path, tmp_path: Path) -> None:
    """Once allowed the gate execs the command: same PID, its exit code is the process's, and
    the run's id in its environment (AGENT_SUPERVISOR_RUN_ID) is the one recorded."""
    out = tmp_path / "pid"
    code = (
        f"import os; open({str(out)!r}, 'w').write("
        "str(os.getpid()) + ' ' + os.environ['AGENT_SUPERVISOR_RUN_ID']); raise SystemExit(3)"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "gate",
            "--wait",
            "--state-dir",
            str(state_dir),
            *SIZE,
            *QUICK_ADMISSION,
            "--",
            sys.executable,
            "-c",
            code,
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.communicate(timeout=60)
    assert proc.returncode == 3
    pid, run_id = out.read_text().split()
    assert int(pid) == proc.pid
    runs = state_doc(state_dir)["runs"]
    assert isinstance(runs, list) and len(runs) == 1 and runs[0]["id"] == run_id


def test_exec_of_missing_command_records_the_end(state_dir: Path) -> None:
    """A command that cannot be exec'd is reported in one line and its run is closed."""
    r = run_cli(
        "gate",
        "--wait",
        "--state-dir",
        str(state_dir),
        *SIZE,
        *QUICK_ADMISSION,
        "--",
        "/nonexistent/agent",
    )
    assert r.code == 127 and r.stderr_lines == [
        "agent-supervisor: error: cannot exec '/nonexistent/agent': No such file or directory"
    ]
    runs = state_doc(state_dir)["runs"]
    assert isinstance(runs, list) and runs[-1]["exit_code"] == 127


def test_force_is_recorded_with_user_and_reason(state_dir: Path) -> None:
    """--force allows inside the window and records who and why, in state and audit log."""
    assert first(state_dir, *SIZE).code == 0
    r = gate(state_dir, *SIZE, "--force", "--reason", "hotfix rollout")
    assert r.code == 0
    d = json.loads(r.stdout)
    assert d["forced"] is True and "hotfix rollout" in d["reason"]
    run = state_doc(state_dir)["runs"][-1]  # type: ignore[index]
    assert run["via"] == "force" and run["reason"] == "hotfix rollout" and run["user"]
    audit = [json.loads(x) for x in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["command"] == "gate --force" and audit[-1]["reason"] == "hotfix rollout"
    assert any('"event": "gate.forced"' in ln for ln in r.stderr.splitlines())


def test_reason_without_force_is_a_usage_error(state_dir: Path) -> None:
    """--reason alone would be silently ignored, so it is refused."""
    assert gate(state_dir, *SIZE, "--reason", "x").code == 2


def test_hold_blocks_release_unblocks(state_dir: Path) -> None:
    """A hold refuses even a first start; release lets it through; both are audited."""
    assert run_cli("hold", "--reason", "kernel upgrade", "--state-dir", str(state_dir)).code == 0
    r = gate(state_dir, *SIZE)
    assert r.code == 75 and "held by" in json.loads(r.stdout)["reason"]
    assert run_cli("release", "--state-dir", str(state_dir)).code == 0
    assert first(state_dir, *SIZE).code == 0
    commands = [
        json.loads(x)["command"] for x in (state_dir / "audit.jsonl").read_text().splitlines()
    ]
    assert commands == ["hold", "release"]


def test_override_lets_starts_through(state_dir: Path) -> None:
    """During an override every start is allowed; they are marked as operator starts."""
    assert first(state_dir, *SIZE).code == 0
    assert (
        run_cli(
            "override", "--for", "10m", "--reason", "testing", "--state-dir", str(state_dir)
        ).code
        == 0
    )
    for _ in range(2):
        assert gate(state_dir, *SIZE).code == 0
    vias = [r["via"] for r in state_doc(state_dir)["runs"]]  # type: ignore[attr-defined]
    assert vias == ["gate", "override", "override"]


def test_operator_commands_require_a_reason(state_dir: Path) -> None:
    """override and hold without --reason exit 2 and change nothing."""
    assert run_cli("override", "--state-dir", str(state_dir)).code == 2
    assert run_cli("hold", "--state-dir", str(state_dir)).code == 2
    assert not (state_dir / "cilium-agent.json").exists()


def test_record_exit_and_stable_reset(state_dir: Path) -> None:
    """A run that lasted stable_after resets the level; a short one raises it."""
    fast = ("--set", "stable_after=2s", "--set", "window.base=1h")
    assert first(state_dir, *SIZE, *fast).code == 0
    r = run_cli("record-exit", "--code", "1", "--state-dir", str(state_dir))
    assert r.code == 0 and "recorded exit 1" in r.stdout
    d = json.loads(gate(state_dir, *SIZE, *fast).stdout)
    assert d["backoff_level"] == 1
    assert (
        run_cli("override", "--for", "1h", "--reason", "t", "--state-dir", str(state_dir)).code == 0
    )
    assert gate(state_dir, *SIZE, *fast).code == 0
    assert run_cli("release", "--state-dir", str(state_dir)).code == 0
    time.sleep(2.1)  # the run lasts longer than stable_after (not a timing assertion)
    assert run_cli("record-exit", "--code", "TERM", "--state-dir", str(state_dir)).code == 0
    d = json.loads(gate(state_dir, *SIZE, *fast).stdout)
    assert d["allowed"] is False and d["backoff_level"] == 0
    last = state_doc(state_dir)["runs"][-1]  # type: ignore[index]
    assert last["exit_code"] == 128 + signal.SIGTERM and last["end_source"] == "record-exit"


@pytest.mark.parametrize(
    ("code", "stored"), [("0", 0), ("137", 137), ("KILL", 137), ("SIGSEGV", 139)]
)
def test_record_exit_accepts_systemd_exit_status(
    state_dir: Path, code: str, stored: int | None
) -> None:
    """$EXIT_STATUS may be a number or a signal name; both are recorded."""
    assert first(state_dir, *SIZE).code == 0
    assert run_cli("record-exit", "--code", code, "--state-dir", str(state_dir)).code == 0
    assert state_doc(state_dir)["runs"][-1]["exit_code"] == stored  # type: ignore[index]


def test_record_exit_without_a_status_records_nothing(state_dir: Path) -> None:
    """Invariant 12: systemd's empty $EXIT_STATUS (the agent never ran) records nothing."""
    assert first(state_dir, *SIZE).code == 0
    before = state_doc(state_dir)["runs"]
    r = run_cli("record-exit", "--code=", "--state-dir", str(state_dir))
    assert r.code == 0 and "nothing recorded" in r.stdout
    assert state_doc(state_dir)["runs"] == before


def test_record_exit_closes_only_the_run_it_names(state_dir: Path) -> None:
    """Invariant 12: a report for another run, or a second one, changes nothing."""
    d = json.loads(first(state_dir, *SIZE).stdout)
    sd = ("--state-dir", str(state_dir))
    other = run_cli("record-exit", "--code", "0", "--run-id", "not-this-one", *sd)
    assert other.code == 0 and "not in the history" in other.stdout
    assert state_doc(state_dir)["runs"][-1]["ended_at"] is None  # type: ignore[index]
    ok = run_cli("record-exit", "--code", "1", "--run-id", d["run_id"], *sd)
    assert ok.code == 0 and f"run {d['run_id']}" in ok.stdout
    again = run_cli("record-exit", "--code", "0", "--run-id", d["run_id"], *sd)
    assert again.code == 0 and "ended already" in again.stdout
    assert state_doc(state_dir)["runs"][-1]["exit_code"] == 1  # type: ignore[index]


def test_record_exit_rejects_garbage(state_dir: Path) -> None:
    """An exit status that is neither a number nor a signal name exits 2 in one line."""
    r = run_cli("record-exit", "--code", "banana", "--state-dir", str(state_dir))
    assert r.code == 2 and len(r.stderr_lines) == 1


def test_reset_keeps_a_backup(state_dir: Path) -> None:
    """reset empties the history and keeps the old file beside it."""
    assert first(state_dir, *SIZE).code == 0
    before = (state_dir / "cilium-agent.json").read_text()
    r = run_cli("reset", "--reason", "fresh start", "--state-dir", str(state_dir))
    assert r.code == 0 and "backup at" in r.stdout
    backups = list(state_dir.glob("cilium-agent.json.reset-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    assert state_doc(state_dir)["runs"] == []
    assert first(state_dir, *SIZE).code == 0


def test_status_json_explains_the_decision(state_dir: Path) -> None:
    """status --json has the decision plus slot, runs, hold and override, and writes nothing."""
    assert first(state_dir, *SIZE).code == 0
    before = (state_dir / "cilium-agent.json").read_bytes()
    r = run_cli("status", "--json", "--state-dir", str(state_dir), *SIZE)
    assert r.code == 0
    doc = json.loads(r.stdout)
    assert doc["allowed"] is False and doc["window_seconds"] == 3600
    assert doc["slot"]["mode"] == "hash" and 0 <= doc["slot"]["offset_seconds"] < 3600
    assert len(doc["runs"]) == 1 and doc["hold"] is None and doc["override"] is None
    assert (state_dir / "cilium-agent.json").read_bytes() == before
    human = run_cli("status", "--state-dir", str(state_dir), *SIZE)
    assert human.code == 0 and "NOT NOW" in human.stdout and "window       1h" in human.stdout


def test_window_command_prints_window_and_rate() -> None:
    """window --cluster-size prints W and the start rate it implies."""
    r = run_cli("window", "--cluster-size", "1000", "--json")
    assert json.loads(r.stdout) == {
        "cluster_size": 1000,
        "window_seconds": 1200.0,
        "starts_per_minute": 50.0,
        "seconds_between_starts": 1.2,
    }
    assert "20m" in run_cli("window", "--cluster-size", "1000").stdout


def test_wait_wakes_on_override(state_dir: Path) -> None:
    """A waiting gate notices an override within about a second and starts."""
    assert first(state_dir, *SIZE).code == 0
    proc = _waiting_gate(state_dir, "--json")
    assert run_cli("override", "--reason", "go", "--state-dir", str(state_dir)).code == 0
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and json.loads(out)["allowed"] is True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_wait_ends_on_signal_without_recording(state_dir: Path, sig: signal.Signals) -> None:
    """SIGTERM/SIGINT end a wait at once with exit 75, and no start is recorded (the ask the
    refusal left stays: a fresh gate waits for the same slot)."""
    assert first(state_dir, *SIZE).code == 0
    before = state_doc(state_dir)["runs"]
    proc = _waiting_gate(state_dir)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75
    assert "Traceback" not in err and "gate.wait_interrupted" in err
    assert state_doc(state_dir)["runs"] == before
    assert state_doc(state_dir)["ask"] is not None


def test_wait_allows_at_the_slot(state_dir: Path) -> None:
    """With a one-second window a waiting gate is allowed at its slot and records it."""
    small = (
        "--cluster-size",
        "1",
        "--set",
        "window.base=1s",
        "--set",
        "window.per_node=0",
        "--set",
        "window.min=1s",
        "--set",
        "slot_index=0",
        "--set",
        "slot_count=1",
    )
    assert first(state_dir, *small).code == 0
    r = run_cli("gate", "--wait", "--json", "--state-dir", str(state_dir), *small)
    assert r.code == 0 and json.loads(r.stdout)["allowed"] is True
    runs = state_doc(state_dir)["runs"]
    assert isinstance(runs, list) and len(runs) == 2
    assert ts(runs[1]["started_at"]) - ts(runs[0]["started_at"]) >= 1.0


def test_unwritable_state_refuses_but_force_allows(small_tmpfs: Path) -> None:
    """If the start cannot be recorded the gate exits 74; --force still allows, loudly."""
    sd = small_tmpfs / "state"
    sd.mkdir(mode=0o700)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    r = gate(sd, *SIZE)
    assert r.code == 74 and len(r.stderr_lines) == 1
    assert "cannot" in r.stderr_lines[0] and str(sd) in r.stderr_lines[0]
    f = gate(sd, *SIZE, "--force", "--reason", "disk is broken, start anyway")
    assert f.code == 0 and json.loads(f.stdout)["forced"] is True
    assert "gate.forced_unrecorded" in f.stderr


def test_non_operator_is_refused_with_77(tmp_path: Path, nobody: int) -> None:
    """An unprivileged user who does not own the state may not hold, override or force.

    The state directory sits where that user can reach it but not read it, as
    /var/lib/agent-supervisor does (regression: click's path check answered 2, not 77).
    """
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="as-77-", dir="/tmp"))
    base.chmod(0o711)
    sd = base / "state"
    assert first(sd, *SIZE).code == 0
    before = (sd / "cilium-agent.json").read_bytes()
    for args in (
        ["hold", "--reason", "x"],
        ["override", "--reason", "x"],
        ["release"],
        ["reset"],
        ["gate", "--force", "--reason", "x", *SIZE],
    ):
        r = run_cli(
            *args,
            "--state-dir",
            str(sd),
            user=nobody,
            group=nobody,
            cwd="/",
            env=clean_env(HOME="/nonexistent"),
        )
        assert r.code == 77, (args, r.stderr)
        assert "not permitted for user" in r.stderr_lines[0]
    assert (sd / "cilium-agent.json").read_bytes() == before
    shutil.rmtree(base)


def _waiting_gate(state_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """A ``gate --wait`` process that has been refused and is now waiting."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "gate",
            "--wait",
            *extra,
            "--state-dir",
            str(state_dir),
            *SIZE,
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_log(proc, "gate.refused")
    return proc


def _wait_for_log(proc: subprocess.Popen[str], event: str) -> None:
    """Read the process's stderr until a structured log line with ``event`` appears."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if f'"event": "{event}"' in line:
            return
    proc.kill()
    raise AssertionError(f"{event} never logged")


def test_gate_path_imports_nothing_heavy() -> None:
    """Importing the CLI loads none of docker, cryptography, yaml, http.client, the simulator
    or rich: each would add tens of milliseconds to every gate call."""
    code = (
        "import sys, supervisor.cli.app\n"
        "heavy = ['docker', 'cryptography', 'yaml', 'http.client',\n"
        "         'supervisor.fleet.simulate', 'supervisor.fleet.plan',\n"
        "         'supervisor.node.identity', 'prometheus_client', 'rich']\n"
        "print(','.join(m for m in heavy if sys.modules.get(m) is not None))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True
    )
    assert r.stdout.strip() == ""


def test_wait_shows_a_countdown_on_a_terminal(state_dir: Path) -> None:
    """On a terminal a waiting gate shows a countdown and readable (not JSON) log lines."""
    import pty

    assert first(state_dir, *SIZE).code == 0
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "gate",
            "--wait",
            "--state-dir",
            str(state_dir),
            *SIZE,
        ],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"waiting: next start in" not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(leader, 4096)
            except OSError:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "\rwaiting: next start in" in text
    assert "gate.refused" in text and '"event"' not in text
    assert proc.returncode == 75


def test_operators_group_applies_to_sudo_users(state_dir: Path) -> None:
    """With operators_group set, root through sudo counts as the sudo user: outsiders get 77."""
    if os.geteuid() != 0:
        from conftest import REQUIRE_ROOT_TESTS, skip_or_fail

        skip_or_fail("sudo semantics need root", REQUIRE_ROOT_TESTS)
    group = ("--set", "operators_group=nogroup")  # nobody's primary group
    outsider = run_cli(
        "hold",
        "--reason",
        "x",
        "--state-dir",
        str(state_dir),
        "--set",
        "operators_group=root",
        env=clean_env(SUDO_USER="nobody"),
    )
    assert outsider.code == 77 and "nobody (through sudo)" in outsider.stderr_lines[0]
    member = run_cli(
        "hold",
        "--reason",
        "x",
        "--state-dir",
        str(state_dir),
        *group,
        env=clean_env(SUDO_USER="nobody"),
    )
    assert member.code == 0, member.stderr
    audit = json.loads((state_dir / "audit.jsonl").read_text().splitlines()[-1])
    assert audit["user"] == "root (sudo by nobody)"


def test_forced_start_goes_ahead_when_the_audit_log_is_broken(
    state_dir: Path, tmp_path: Path
) -> None:
    """Regression: an unwritable audit log must not stop a recorded forced start."""
    state_dir.mkdir(mode=0o700)
    (state_dir / "audit.jsonl").symlink_to(tmp_path / "elsewhere")
    r = run_cli(
        "gate",
        "--force",
        "--reason",
        "x",
        "--state-dir",
        str(state_dir),
        *SIZE,
        "--",
        sys.executable,
        "-c",
        "print('AGENT-RAN')",
    )
    assert r.code == 0 and "AGENT-RAN" in r.stdout and "audit.write_failed" in r.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_operator_action_with_broken_audit_log_changes_nothing(
    state_dir: Path, tmp_path: Path
) -> None:
    """Regression: a hold that cannot be audited is refused (74) before the state changes."""
    assert first(state_dir, *SIZE).code == 0
    before = (state_dir / "cilium-agent.json").read_bytes()
    (state_dir / "audit.jsonl").symlink_to(tmp_path / "elsewhere")
    r = run_cli("hold", "--reason", "x", "--state-dir", str(state_dir))
    assert r.code == 74 and "audit log" in r.stderr_lines[0]
    assert (state_dir / "cilium-agent.json").read_bytes() == before


def test_override_for_zero_is_refused(state_dir: Path) -> None:
    """Regression: --for 0s was silently a one-hour override; it is a usage error."""
    r = run_cli("override", "--for", "0s", "--reason", "x", "--state-dir", str(state_dir))
    assert r.code == 2 and "must be longer than zero" in r.stderr_lines[0]


def test_set_state_dir_beats_the_environment(tmp_path: Path) -> None:
    """Regression: --set state_dir (command line) wins over AGENT_SUPERVISOR_STATE_DIR."""
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_cli(
        "gate",
        "--wait",
        *SIZE,
        *QUICK_ADMISSION,
        "--set",
        f"state_dir={b}",
        env=clean_env(AGENT_SUPERVISOR_STATE_DIR=str(a)),
    )
    assert r.code == 0 and (b / "cilium-agent.json").exists() and not a.exists()


@pytest.mark.parametrize("code", ["99999", "-1", "256", "1.5", "SIGNOPE"])
def test_record_exit_refuses_codes_no_process_can_have(state_dir: Path, code: str) -> None:
    """An exit status is 0-255 or a signal name: anything else is one usage line (2)."""
    assert first(state_dir, *SIZE).code == 0
    before = (state_dir / "cilium-agent.json").read_bytes()
    r = run_cli("record-exit", f"--code={code}", "--state-dir", str(state_dir))
    assert r.code == 2 and len(r.stderr_lines) == 1 and "--code" in r.stderr_lines[0]
    assert (state_dir / "cilium-agent.json").read_bytes() == before


def test_status_says_an_override_under_a_hold_has_no_effect(state_dir: Path) -> None:
    """An override hidden behind a hold is listed as having no effect, in text and JSON."""
    sd = ("--state-dir", str(state_dir))
    assert run_cli("override", "--reason", "test start", *sd).code == 0
    assert run_cli("hold", "--reason", "incident", *sd).code == 0
    text = run_cli("status", *sd, *SIZE).stdout
    assert "(no effect while the hold is in force)" in text
    doc = json.loads(run_cli("status", "--json", *sd, *SIZE).stdout)
    assert doc["override"]["in_effect"] is False and doc["hold"]["reason"] == "incident"
    assert run_cli("release", *sd).code == 0
    after = run_cli("status", *sd, *SIZE).stdout
    assert "audit:" in after and "None" not in after


def test_version_is_the_installed_distributions() -> None:
    """--version prints the version of the installed distribution, agent-start-gate."""
    from importlib.metadata import version

    r = run_cli("--version")
    assert r.code == 0
    assert (
        r.stdout
        == f"agent-supervisor {version('agent-start-gate')} (distribution agent-start-gate)\n"
    )


@pytest.mark.parametrize(
    "command",
    [("apf", "render"), ("certs", "csr"), ("config", "import"), ("kubeconfig", "render")],
)
def test_commands_list_only_the_options_they_use(command: tuple[str, ...]) -> None:
    """Issue 17: commands that keep no state and size no window have no --state-dir and no
    --cluster-size (a user must not wonder what they would change)."""
    r = run_cli(*command, "--help", env=clean_env(COLUMNS="200"))
    assert r.code == 0 and "--config" in r.stdout and "--set" in r.stdout
    assert "--state-dir" not in r.stdout and "--cluster-size" not in r.stdout


def test_help_says_what_a_hold_without_for_does_and_shows_examples() -> None:
    """`hold --help` says the default is until released, and each operator command's help
    ends with examples."""
    r = run_cli("hold", "--help", env=clean_env(COLUMNS="200"))
    assert "default: until released" in r.stdout and "Examples:" in r.stdout
    hot = run_cli("gate", "--help", env=clean_env(COLUMNS="200"))
    assert "Examples:" in hot.stdout and "--env-file" in hot.stdout


def test_help_flows_each_paragraph_of_a_docstring() -> None:
    """--help shows a docstring's paragraphs as flowing text (no line broken where the source
    was), for the hot commands' own app and for the groups alike; examples stay as written."""
    from supervisor.cli.app import reflowed

    assert reflowed(
        "First line\n    goes on.\n\n    Second\n    paragraph.\n\n      kept  as\n      is"
    ) == ("First line goes on.\n\nSecond paragraph.\n\n  kept  as\n  is")
    env = {**clean_env(), "COLUMNS": "300"}
    debug = run_cli("debug", "start", "--help", env=env)
    assert debug.code == 0
    assert "has the agent container's mounts, network, privileges, capabilities" in debug.stdout
    gate = run_cli("gate", "--help", env=env)
    assert gate.code == 0
    assert "77 not permitted. The approved run's id is in the decision JSON" in gate.stdout
