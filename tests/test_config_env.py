"""AGENT_SUPERVISOR_* variables: an unknown one exits 78 in one line, the known ones all work.

Misspelled names are built from ENV_PREFIX at run time, so that the scan of the repository
below (every AGENT_SUPERVISOR_* name in it must be known) does not find them here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import clean_env, run_cli

from supervisor.base.errors import ConfigError
from supervisor.storage.config import ENV_CONFIG, ENV_NOT_KEYS, ENV_PREFIX, KEYS, load_config

REPO = Path(__file__).resolve().parent.parent
SIZE_ENV = {ENV_PREFIX + "CLUSTER_SIZE": "5000"}
NAME = re.compile(r"AGENT_SUPERVISOR_[A-Z0-9_]+")
#: What the repository is made of (build and cache directories are not scanned).
SCANNED = (
    "README.md",
    "pyproject.toml",
    ".ci",
    "compose",
    "systemd",
    "supervisor",
    "tests",
    "bench",
)
SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of ``directory`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def repo_names(*, skip: Path | None = None) -> set[str]:
    """Every AGENT_SUPERVISOR_* name written in the repository's files (except ``skip``)."""
    names: set[str] = set()
    for top in SCANNED:
        root = REPO / top
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if SKIPPED_DIRS & set(path.relative_to(REPO).parts) or path == skip:
                continue
            names.update(NAME.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names


@pytest.mark.parametrize(
    "args",
    [
        ("gate",),
        ("gate", "--wait"),
        ("status",),
        ("record-exit", "--code", "1"),
        ("hold", "--reason", "x"),
    ],
    ids=" ".join,
)
def test_misspelled_variable_exits_78_in_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    """A misspelled variable exits 78 naming it and the near name, and the state is untouched."""
    sd = tmp_path / "state"
    # A first start waits for its admission slot (75) and leaves its ask in the state.
    assert run_cli("gate", "--state-dir", str(sd), env=clean_env(**SIZE_ENV)).code == 75
    before = snapshot(sd)
    typo = ENV_PREFIX + "CLUSTERSIZE"
    r = run_cli(*args, "--state-dir", str(sd), env=clean_env(**{typo: "5000"}))
    assert r.code == 78, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr_lines == [
        f"agent-supervisor: error: environment {typo}: unknown setting "
        f"(did you mean {ENV_PREFIX}CLUSTER_SIZE?)"
    ]
    assert snapshot(sd) == before


def test_unknown_variable_without_a_near_name_has_no_suggestion() -> None:
    """An unknown name close to no known one is reported without a guess."""
    with pytest.raises(ConfigError) as info:
        load_config(env={ENV_PREFIX + "XYZZY": "1"})
    assert str(info.value) == f"environment {ENV_PREFIX}XYZZY: unknown setting"


@pytest.mark.parametrize(
    ("suffix", "meant"),
    [
        ("WINDOW_BASES", "WINDOW_BASE"),
        ("window_per_node", "WINDOW_PER_NODE"),
        ("NODENAME", "NODE_NAME"),
        ("STATEDIR", "STATE_DIR"),
        ("CONFG", "CONFIG"),
        ("DOCKER_GRACE_PERIOD", "DOCKER_GRACE"),
    ],
)
def test_suggestion_is_the_closest_known_variable(suffix: str, meant: str) -> None:
    """The suggestion is the closest key variable or allow-listed name, whatever the case."""
    with pytest.raises(ConfigError, match=rf"\(did you mean {ENV_PREFIX}{meant}\?\)$"):
        load_config(env={ENV_PREFIX + suffix: "1"})


def test_empty_unknown_variable_is_still_an_error() -> None:
    """An unknown variable is refused by its name: an empty value is no excuse."""
    with pytest.raises(ConfigError, match=rf"^environment {ENV_PREFIX}NODENAME: unknown setting"):
        load_config(env={ENV_PREFIX + "NODENAME": ""})


def test_first_unknown_variable_in_name_order_is_reported() -> None:
    """With several unknown variables the answer does not depend on the environment's order."""
    names = [ENV_PREFIX + "ZZZ", ENV_PREFIX + "AAA", ENV_PREFIX + "MMM"]
    for order in (names, names[::-1]):
        with pytest.raises(ConfigError, match=rf"^environment {ENV_PREFIX}AAA: "):
            load_config(env=dict.fromkeys(order, "1"))


def test_only_names_with_the_prefix_are_checked() -> None:
    """Other programs' variables are not ours to judge; only the AGENT_SUPERVISOR_ prefix is."""
    others = {ENV_PREFIX.rstrip("_") + "X": "1", "MY_" + ENV_PREFIX + "X": "1"}
    cfg = load_config(env={**others, **SIZE_ENV})
    assert cfg.cluster_size == 5000


@pytest.mark.parametrize("name", [n for n in ENV_NOT_KEYS if n != ENV_CONFIG])
def test_allow_listed_variable_still_works(tmp_path: Path, name: str) -> None:
    """Each name that is not a key (compose settings, test switches, the run id) lets the gate
    decide (a first start: 75, waiting for its admission slot) instead of exiting 78."""
    sd = tmp_path / "state"
    r = run_cli("gate", "--state-dir", str(sd), env=clean_env(**SIZE_ENV, **{name: "1"}))
    assert r.code == 75 and "admission slot" in r.stdout, r.stderr
    assert (sd / "cilium-agent.json").exists()


def test_config_variable_still_names_the_file(tmp_path: Path) -> None:
    """AGENT_SUPERVISOR_CONFIG, not a key itself, still names the config file to read."""
    cfg = tmp_path / "config.toml"
    cfg.write_text("cluster_size = 5000\n")
    sd = tmp_path / "state"
    r = run_cli("gate", "--state-dir", str(sd), env=clean_env(AGENT_SUPERVISOR_CONFIG=str(cfg)))
    assert r.code == 75 and "admission slot" in r.stdout, r.stderr


def test_state_dir_variable_still_names_the_state_directory(tmp_path: Path) -> None:
    """AGENT_SUPERVISOR_STATE_DIR is the state_dir key's variable and still moves the state."""
    sd = tmp_path / "elsewhere"
    r = run_cli("gate", env=clean_env(**SIZE_ENV, AGENT_SUPERVISOR_STATE_DIR=str(sd)))
    assert r.code == 75 and "admission slot" in r.stdout, r.stderr
    assert (sd / "cilium-agent.json").exists()


def test_allow_listed_variables_may_be_empty() -> None:
    """The names that are not keys are never read as settings, so empty values are fine too."""
    env = {n: "" for n in ENV_NOT_KEYS if n != ENV_CONFIG}
    assert load_config(env={**env, **SIZE_ENV}).cluster_size == 5000


def test_ci_switches_in_this_process_do_not_trip_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switches .ci/run exports reach in-process CLI calls through os.environ: accepted."""
    monkeypatch.setenv("AGENT_SUPERVISOR_REQUIRE_DOCKER", "1")
    monkeypatch.setenv("AGENT_SUPERVISOR_REQUIRE_ROOT_TESTS", "1")
    cfg = tmp_path / "config.toml"
    cfg.write_text("cluster_size = 7\n")
    assert load_config(cfg).cluster_size == 7  # env=None: os.environ, as the CLI reads it


def test_allow_list_is_not_a_second_list_of_keys() -> None:
    """No allow-listed name is also a key's variable, and every name has the prefix."""
    assert not set(ENV_NOT_KEYS) & {k.env for k in KEYS}
    assert all(n.startswith(ENV_PREFIX) for n in ENV_NOT_KEYS)
    assert len(set(ENV_NOT_KEYS)) == len(ENV_NOT_KEYS)


def test_every_name_in_the_repository_is_known() -> None:
    """Each AGENT_SUPERVISOR_* name written anywhere here is a key's or allow-listed, and each
    allow-listed name is still used outside config.py (regression: a new test switch or compose
    setting must be added to ENV_NOT_KEYS, or every command would exit 78 where it is set)."""
    known = {k.env for k in KEYS} | set(ENV_NOT_KEYS)
    assert repo_names() - known == set()
    used = repo_names(skip=REPO / "supervisor" / "config.py")
    assert set(ENV_NOT_KEYS) - used == set()
