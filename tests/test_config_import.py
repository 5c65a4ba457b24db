"""``config import DIR``: a node's existing option directory taken into the ``[agent]`` table.

The directory is the reference layout's ``mount/config-map/`` (its 26 files, see
reference_config_map), the commands run as operators run them (``python -m supervisor`` in a
real process), and the proof is in the files: a render of the imported table writes every file
back byte for byte.
"""

from __future__ import annotations

import os
import stat
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import clean_env, run_cli
from harness import one_error_line
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_config_map import config_map, read_dir

from supervisor.base.errors import ConfigError
from supervisor.node.agentconfig import STABILITY_DEFAULTS
from supervisor.node.configimport import Imported, agent_table, prepare, toml_string, write_into
from supervisor.storage.config import load_config


def write_config(tmp_path: Path, body: str) -> Path:
    """A config file in ``tmp_path`` with ``body`` (TOML)."""
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(body))
    return path


# --- the reference layout, round trip -------------------------------------------------------------


def test_import_of_the_reference_directory_round_trips_through_render(tmp_path: Path) -> None:
    """All 26 options imported with --write come back byte for byte from a render into a new
    directory, beside the four stability defaults and nothing else."""
    cm, files = config_map(tmp_path)
    cfg = write_config(tmp_path, "cluster_size = 10\n")
    res = run_cli("config", "import", str(cm), "--write", "--config", str(cfg))
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"{cfg}: added 26 options to [agent] from {cm}",
        f"note: agent_config_dir is /etc/cilium/config-map: if the agent reads {cm}, "
        f'set agent_config_dir = "{cm}" so that config render writes there',
    ]
    out = tmp_path / "rendered"
    done = run_cli("config", "render", "--config", str(cfg), "--output", str(out))
    assert done.code == 0, done.stderr
    assert read_dir(out) == files | {k: v.encode() for k, v in STABILITY_DEFAULTS.items()}


def test_render_in_place_after_import_keeps_every_file(tmp_path: Path) -> None:
    """Rendering the imported table into the original directory adds the stability defaults
    and leaves each of the 26 files as it was (same inode, same bytes), none unmanaged."""
    cm, files = config_map(tmp_path)
    cfg = write_config(tmp_path, f'cluster_size = 10\nagent_config_dir = "{cm}"\n')
    assert run_cli("config", "import", str(cm), "--write", "--config", str(cfg)).code == 0
    inodes = {p.name: p.stat().st_ino for p in cm.iterdir()}
    done = run_cli("config", "render", "--config", str(cfg), "--prune")
    assert done.code == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{cm}: added 4, changed 0, removed 0, unchanged 26"
    assert read_dir(cm) == files | {k: v.encode() for k, v in STABILITY_DEFAULTS.items()}
    assert {n: (cm / n).stat().st_ino for n in files} == inodes


def test_printed_table_loads_back_as_the_exact_file_texts(tmp_path: Path) -> None:
    """Without --write the command prints an [agent] table which, as a config file, holds
    every option with its file's exact text (the trailing newline as \\n)."""
    cm, files = config_map(tmp_path)
    res = run_cli("config", "import", str(cm), "--config", str(write_config(tmp_path, "")))
    assert res.code == 0, res.stderr
    assert 'tunnel = "disabled\\n"\n' in res.stdout
    assert 'kvstore-opt = "{\\"etcd.config\\": \\"/var/lib/etcd-config/etcd.config\\"}\\n"\n' in (
        res.stdout
    )
    assert "warning: agent.labels is not set" in res.stderr
    table = tmp_path / "table.toml"
    table.write_text(res.stdout)
    loaded = load_config(table, env={})
    assert {k: v.encode() for k, v in loaded.agent.items()} == files


# --- values a TOML string must carry exactly ------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "\n",
        "no newline",
        "two\nlines\n",
        "crlf\r\nline\r\n",
        'quotes " and \\ backslash',
        "tab\tand\fform\bfeed",
        "control \x01\x1f and del \x7f",
        "unicode é ✓ 漢字\n",
        "  padded  \n\n",
        "'''\"\"\"",
    ],
)
def test_special_values_survive_byte_for_byte(tmp_path: Path, value: str) -> None:
    """Multi-line values, CRLF, quotes, control characters and Unicode parse back exactly."""
    cm = tmp_path / "cm"
    cm.mkdir()
    (cm / "opt").write_bytes(value.encode())
    res = run_cli("config", "import", str(cm), "--config", str(write_config(tmp_path, "")))
    assert res.code == 0, res.stderr
    assert tomllib.loads(res.stdout)["agent"] == {"opt": value}


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")))
def test_toml_string_is_exact_for_any_text(value: str) -> None:
    """Every text without NUL, as a TOML basic string, parses back to itself."""
    assert tomllib.loads(f"v = {toml_string(value)}\n")["v"] == value


# --- --write into an existing config file ---------------------------------------------------------


def test_write_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    """--write adds the new options to the existing [agent] table; every other line of the
    file, comments included, is kept in order, an option already set alike is left alone."""
    cm, files = config_map(tmp_path)
    original = textwrap.dedent(
        """\
        # fleet settings, do not remove
        cluster_size = 5000   # the whole fleet
        node_name = "node-17"

        [agent]  # the agent's own options
        tunnel = "disabled"
        labels = "k8s:app"

        [window]
        base = "10m"
        """
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text(original)
    cfg.chmod(0o600)
    res = run_cli("config", "import", str(cm), "--write", "--config", str(cfg))
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines()[0] == (
        f"{cfg}: added 25 options to [agent] from {cm} (1 already there)"
    )
    text = cfg.read_text()
    kept = [line for line in text.splitlines() if line in original.splitlines()]
    assert kept == original.splitlines()
    loaded = load_config(cfg, env={})
    assert loaded.cluster_size == 5000 and loaded.window.base == 600
    assert loaded.agent["tunnel"] == "disabled" and loaded.agent["labels"] == "k8s:app"
    assert {k: v.encode() for k, v in loaded.agent.items() if k not in ("tunnel", "labels")} == {
        k: v for k, v in files.items() if k != "tunnel"
    }
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []
    again = run_cli("config", "import", str(cm), "--write", "--config", str(cfg))
    assert again.code == 0 and cfg.read_text() == text
    assert (
        again.stdout.splitlines()[0]
        == f"{cfg}: added 0 options to [agent] from {cm} (26 already there)"
    )


@pytest.mark.parametrize("write", [True, False])
def test_a_conflicting_value_is_refused(tmp_path: Path, write: bool) -> None:
    """An option the config already sets to another value is one error line, exit 78, printed
    or written, and the config file is left as it was."""
    cm, _ = config_map(tmp_path)
    cfg = write_config(tmp_path, '[agent]\ntunnel = "vxlan"\n')
    before = cfg.read_bytes()
    extra = ("--write",) if write else ()
    res = run_cli("config", "import", str(cm), "--config", str(cfg), *extra)
    one_error_line(res, 78, f"{cm / 'tunnel'}: {cfg} already sets agent.tunnel = 'vxlan'")
    assert res.stdout == "" and cfg.read_bytes() == before


def test_printed_lines_go_under_an_existing_agent_table(tmp_path: Path) -> None:
    """With an [agent] table in the config, the print shows only the options it lacks, as
    lines for under its header; pasted there they give the same file as --write."""
    cm, _ = config_map(tmp_path)
    body = '[agent]\ntunnel = "disabled"\n\n[window]\nbase = "5m"\n'
    cfg = write_config(tmp_path, body)
    res = run_cli("config", "import", str(cm), "--config", str(cfg))
    assert res.code == 0, res.stderr
    assert res.stdout.startswith(f"# add under the [agent] table of {cfg}:\n")
    assert "[agent]" not in res.stdout.splitlines()[1:] and "tunnel =" not in res.stdout
    assert len([line for line in res.stdout.splitlines() if " = " in line]) == 25
    pasted = body.replace("[agent]\n", "[agent]\n" + res.stdout)
    assert run_cli("config", "import", str(cm), "--write", "--config", str(cfg)).code == 0
    assert tomllib.loads(pasted) == tomllib.loads(cfg.read_text())


def test_write_refuses_an_agent_table_it_cannot_extend(tmp_path: Path) -> None:
    """[agent] written as dotted keys has no header to add under: exit 78, file untouched."""
    cm, _ = config_map(tmp_path)
    cfg = write_config(tmp_path, 'agent.debug = "false"\n')
    before = cfg.read_bytes()
    res = run_cli("config", "import", str(cm), "--write", "--config", str(cfg))
    one_error_line(res, 78, f"{cfg}: [agent] is not one '[agent]' table header line")
    assert cfg.read_bytes() == before


def test_write_into_a_missing_file_creates_it(tmp_path: Path) -> None:
    """Adding to a config file that does not exist yet creates it (0644) holding the table."""
    cfg = tmp_path / "etc" / "agent-supervisor" / "config.toml"
    imported = Imported(tmp_path, {"tunnel": "disabled\n", "debug": "false\n"})
    addition = prepare(cfg, imported, {})
    assert not cfg.exists() and sorted(addition.added) == ["debug", "tunnel"]
    assert write_into(addition)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o644
    assert cfg.read_text() == agent_table(imported)
    assert load_config(cfg, env={}).agent == {"tunnel": "disabled\n", "debug": "false\n"}


def test_write_appends_a_table_after_a_file_without_newline(tmp_path: Path) -> None:
    """A file whose last line has no newline gets the table on lines of its own."""
    cfg = tmp_path / "config.toml"
    cfg.write_text("[window]\nbase = '5m'")
    assert write_into(prepare(cfg, Imported(tmp_path, {"debug": "false"}), {}))
    assert tomllib.loads(cfg.read_text()) == {"window": {"base": "5m"}, "agent": {"debug": "false"}}


# --- bad input ---------------------------------------------------------------------------------


def _entry(cm: Path, kind: str) -> Path:
    """Put one bad entry of ``kind`` in ``cm`` and return its path."""
    entries = {
        "readme": ("README.md", b"docs\n"),
        "snake": ("cluster_name", b"x\n"),
        "trailing-dash": ("foo-", b"x\n"),
        "hidden": (".hidden", b"x\n"),
        "latin1": ("cluster-name", b"caf\xe9\n"),
        "nul": ("cluster-name", b"a\x00b"),
        "huge": ("cluster-name", b"x" * (1024 * 1024 + 1)),
    }
    if kind == "subdir":
        (cm / "sub").mkdir()
        return cm / "sub"
    if kind == "fifo":
        os.mkfifo(cm / "pipe")
        return cm / "pipe"
    name, data = entries[kind]
    (cm / name).write_bytes(data)
    return cm / name


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("readme", "option names are the agent's kebab-case names"),
        ("snake", "option names are the agent's kebab-case names"),
        ("trailing-dash", "option names are the agent's kebab-case names"),
        ("hidden", "option names are the agent's kebab-case names"),
        ("subdir", "not a regular file"),
        ("fifo", "not a regular file"),
        ("latin1", "not UTF-8 text (byte 3), which a TOML string cannot carry"),
        ("nul", "contains a NUL byte"),
        ("huge", "larger than 1 MiB"),
    ],
)
def test_bad_entries_are_refused_naming_the_file(tmp_path: Path, kind: str, needle: str) -> None:
    """An entry the TOML table or the agent cannot carry: one line naming it, exit 78, and
    with --write the config file is left as it was."""
    cm = tmp_path / "cm"
    cm.mkdir()
    (cm / "debug").write_bytes(b"false\n")
    bad = _entry(cm, kind)
    cfg = write_config(tmp_path, "cluster_size = 3\n")
    for extra in ((), ("--write",)):
        res = run_cli("config", "import", str(cm), "--config", str(cfg), *extra)
        one_error_line(res, 78, f"{bad}: cannot import: {needle}")
        assert res.stdout == ""
    assert cfg.read_text() == "cluster_size = 3\n"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        ("missing", "no such directory"),
        ("file", "not a directory (expected one file per option)"),
        ("empty", "holds no option files; nothing to import"),
    ],
)
def test_bad_directory_is_one_line_78(tmp_path: Path, make: str, needle: str) -> None:
    """A missing path, a file, or an empty directory: one error line naming it, exit 78."""
    target = tmp_path / "cm"
    if make == "file":
        target.write_text("x")
    elif make == "empty":
        target.mkdir()
    res = run_cli("config", "import", str(target), "--config", str(write_config(tmp_path, "")))
    one_error_line(res, 78, f"{target}: {needle}")


def test_import_without_a_directory_is_usage_2(tmp_path: Path) -> None:
    """``config import`` without DIR is a usage error (exit 2)."""
    res = run_cli("config", "import", env=clean_env())
    assert res.code == 2 and "DIR" in res.stderr


def test_a_conflict_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """prepare raises ConfigError on a conflict, so no file is created."""
    cfg = tmp_path / "config.toml"
    with pytest.raises(ConfigError, match=r"already sets agent\.debug = 'true'"):
        prepare(cfg, Imported(tmp_path, {"debug": "false\n"}), {"debug": "true"})
    assert not cfg.exists()
