"""operators_group naming no group on the node: 78 where the group decides, nothing elsewhere."""

from __future__ import annotations

import grp
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QUICK_ADMISSION, REQUIRE_ROOT_TESTS, clean_env, run_cli, skip_or_fail

from supervisor.base.errors import ConfigError, NotPermitted
from supervisor.gate.operators import Operator, authorize

SIZE = ("--cluster-size", "5000")
OPERATOR_ACTIONS = (
    ("hold", "--reason", "x"),
    ("override", "--reason", "x"),
    ("release",),
    ("reset",),
    ("gate", "--force", "--reason", "x", *SIZE),
)


@pytest.fixture
def missing_group() -> str:
    """The name of a group that does not exist on this machine."""
    for n in range(100):
        name = f"as-test-no-such-group-{n}"
        try:
            grp.getgrnam(name)
        except KeyError:
            return name
    raise AssertionError("every candidate group name exists")


@pytest.fixture
def reachable_state() -> Iterator[Path]:
    """A state directory, with one start recorded, that another user can reach but not read."""
    base = Path(tempfile.mkdtemp(prefix="as-78-", dir="/tmp"))
    base.chmod(0o711)
    sd = base / "state"
    assert run_cli("gate", "--wait", "--state-dir", str(sd), *SIZE, *QUICK_ADMISSION).code == 0
    try:
        yield sd
    finally:
        shutil.rmtree(base)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of ``directory`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def no_sudo_env(**extra: str) -> dict[str, str]:
    """A clean environment without SUDO_USER (the tests may themselves run under sudo)."""
    env = clean_env(**extra)
    env.pop("SUDO_USER", None)
    return env


def need_root() -> None:
    """Skip (or fail under CI) unless this test runs as root."""
    if os.geteuid() != 0:
        skip_or_fail("running commands as root needs root", REQUIRE_ROOT_TESTS)


def expected_line(group: str, source: str = "command line") -> str:
    """The one error line a missing operators_group gives, naming where it was set."""
    return (
        f"agent-supervisor: error: {source}: operators_group {group!r}: no such group on this node"
    )


# --- authorize() itself: which checks need the group ------------------------------------------


def test_missing_group_is_a_config_error_for_a_non_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_group: str
) -> None:
    """A user who does not own the state is judged by the group, so a missing one is 78."""
    uid = tmp_path.stat().st_uid + 1
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    with pytest.raises(ConfigError) as info:
        authorize(Operator("alice", uid), "hold", tmp_path, missing_group)
    assert str(info.value) == f"operators_group {missing_group!r}: no such group on this node"
    assert info.value.exit_code == 78


def test_missing_group_message_names_where_the_key_was_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_group: str
) -> None:
    """With ``source`` the message starts with where operators_group was set."""
    uid = tmp_path.stat().st_uid + 1
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    with pytest.raises(ConfigError, match=r"^/etc/a\.toml: operators_group '"):
        authorize(Operator("alice", uid), "hold", tmp_path, missing_group, source="/etc/a.toml")


def test_missing_group_is_a_config_error_for_root_through_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_group: str
) -> None:
    """Root through sudo by a user is judged by the group, so a missing one is 78."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ConfigError, match="no such group on this node"):
        authorize(Operator("root", 0, sudo_user="alice"), "override", tmp_path, missing_group)


@pytest.mark.parametrize("sudo_user", [None, "root"])
def test_root_without_sudo_needs_no_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_group: str, sudo_user: str | None
) -> None:
    """Root itself (or sudo by root) is allowed whatever operators_group names."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    authorize(Operator("root", 0, sudo_user=sudo_user), "hold", tmp_path, missing_group)


def test_owner_of_the_state_needs_no_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_group: str
) -> None:
    """The owner of the state directory is allowed whatever operators_group names."""
    uid = tmp_path.stat().st_uid
    if uid == 0:  # root owns it: give it to someone else, who then acts
        uid = 4242
        os.chown(tmp_path, uid, -1)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    authorize(Operator("owner", uid), "hold", tmp_path, missing_group)


def test_no_group_configured_still_refuses_with_77(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without operators_group a non-owner is still refused with NotPermitted (77)."""
    uid = tmp_path.stat().st_uid + 1
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    with pytest.raises(NotPermitted):
        authorize(Operator("alice", uid), "hold", tmp_path, None)


# --- the CLI as operators run it --------------------------------------------------------------


def test_missing_group_exits_78_for_a_non_operator(
    reachable_state: Path, nobody: int, missing_group: str
) -> None:
    """An unprivileged user's hold, override, release, reset and --force exit 78 naming the
    group, without a traceback and without touching the state."""
    sd = reachable_state
    before = snapshot(sd)
    for args in OPERATOR_ACTIONS:
        r = run_cli(
            *args,
            "--state-dir",
            str(sd),
            "--set",
            f"operators_group={missing_group}",
            user=nobody,
            group=nobody,
            cwd="/",
            env=no_sudo_env(HOME="/nonexistent"),
        )
        assert r.code == 78, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr_lines == [expected_line(missing_group)], args
    assert snapshot(sd) == before


def test_missing_group_exits_78_for_root_through_sudo(state_dir: Path, missing_group: str) -> None:
    """Root through sudo (SUDO_USER set) is judged by the group: a missing one exits 78."""
    need_root()
    quick = (*SIZE, *QUICK_ADMISSION)
    assert run_cli("gate", "--wait", "--state-dir", str(state_dir), *quick).code == 0
    before = snapshot(state_dir)
    for args in OPERATOR_ACTIONS:
        r = run_cli(
            *args,
            "--state-dir",
            str(state_dir),
            "--set",
            f"operators_group={missing_group}",
            env=clean_env(SUDO_USER="nobody"),
        )
        assert r.code == 78, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr_lines == [expected_line(missing_group)], args
    assert snapshot(state_dir) == before


@pytest.mark.parametrize("sudo_user", [None, "root"])
def test_root_needs_no_group_through_the_cli(
    state_dir: Path, missing_group: str, sudo_user: str | None
) -> None:
    """Root, not through sudo by another user, holds and releases whatever operators_group names."""
    need_root()
    env = no_sudo_env() if sudo_user is None else clean_env(SUDO_USER=sudo_user)
    group = ("--set", f"operators_group={missing_group}")
    hold = run_cli("hold", "--reason", "x", "--state-dir", str(state_dir), *group, env=env)
    assert hold.code == 0, hold.stderr
    release = run_cli("release", "--state-dir", str(state_dir), *group, env=env)
    assert release.code == 0, release.stderr


@pytest.mark.parametrize("sudo_user", [None, "nobody"])
def test_plain_gate_ignores_a_missing_operators_group(
    state_dir: Path, missing_group: str, sudo_user: str | None
) -> None:
    """The plain gate never asks who is calling, so a missing group changes nothing: 0, then 75."""
    env = no_sudo_env(AGENT_SUPERVISOR_OPERATORS_GROUP=missing_group)
    if sudo_user:
        env["SUDO_USER"] = sudo_user
    quick = (*SIZE, *QUICK_ADMISSION)
    first = run_cli("gate", "--wait", "--json", "--state-dir", str(state_dir), *quick, env=env)
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["allowed"] is True
    second = run_cli("gate", "--json", "--state-dir", str(state_dir), *SIZE, env=env)
    assert second.code == 75, second.stderr
    assert json.loads(second.stdout)["allowed"] is False
    assert second.stderr_lines == []
