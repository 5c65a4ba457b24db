"""``config render`` over a node's existing option directory deletes nothing it does not manage.

The directory is the reference layout's ``mount/config-map/`` (26 files); the configuration
manages two of them, as the README's example ``[agent]`` table does. Before this rule a render
deleted the other 24 (kvstore, kvstore-opt, identity-allocation-mode, tunnel, ...).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli
from harness import killed_at_random
from reference_config_map import config_map, read_dir

from supervisor.node import agentconfig
from supervisor.node.agentconfig import STABILITY_DEFAULTS, plan_options, render_options

DEFAULTS = {k: v.encode() for k, v in STABILITY_DEFAULTS.items()}
#: The two options the configuration manages, one the same as the file, one changed.
MANAGED = ("cluster-name", "tunnel")


def managed_config(tmp_path: Path, cm: Path) -> Path:
    """A config file whose [agent] table manages cluster-name (unchanged) and tunnel (changed)."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            agent_config_dir = "{cm}"
            [agent]
            cluster-name = "default"
            tunnel = "vxlan"
            """
        )
    )
    return cfg


def test_render_without_prune_keeps_unmanaged_options(tmp_path: Path) -> None:
    """The 24 options not in [agent] keep their bytes and inodes, and the output lists them."""
    cm, files = config_map(tmp_path)
    cfg = managed_config(tmp_path, cm)
    unmanaged = sorted(set(files) - set(MANAGED))
    inodes = {n: (cm / n).stat().st_ino for n in unmanaged}
    res = run_cli("config", "render", "--config", str(cfg))
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{cm}: added 4, changed 1, removed 0, unchanged 1, 24 unmanaged kept"
    assert [line for line in lines if line.startswith("= ")] == [
        f"= {n} (unmanaged: kept as it is)" for n in unmanaged
    ]
    assert "note: 24 option files are not in [agent]; they are kept as they are: " in res.stdout
    after = read_dir(cm)
    assert {n: after[n] for n in unmanaged} == {n: files[n] for n in unmanaged}
    assert {n: (cm / n).stat().st_ino for n in unmanaged} == inodes
    assert after == files | DEFAULTS | {"tunnel": b"vxlan"}


def test_second_render_with_unmanaged_options_writes_nothing(tmp_path: Path) -> None:
    """Kept options are no change: rendering again leaves the directory's inode alone."""
    cm, _ = config_map(tmp_path)
    cfg = managed_config(tmp_path, cm)
    assert run_cli("config", "render", "--config", str(cfg)).code == 0
    ino = cm.stat().st_ino
    again = run_cli("config", "render", "--config", str(cfg), "--json")
    assert again.code == 0, again.stderr
    assert '"written": false' in again.stdout and '"removed": []' in again.stdout
    assert cm.stat().st_ino == ino


def test_prune_removes_exactly_the_unmanaged_options(tmp_path: Path) -> None:
    """--prune deletes the 24 options not in [agent], lists each with its old value, and keeps
    every managed one."""
    cm, files = config_map(tmp_path)
    cfg = managed_config(tmp_path, cm)
    unmanaged = sorted(set(files) - set(MANAGED))
    res = run_cli("config", "render", "--config", str(cfg), "--prune")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{cm}: added 4, changed 1, removed 24, unchanged 1"
    assert [line.split(" ")[1] for line in lines if line.startswith("- ")] == unmanaged
    assert "- kvstore (was 'etcd')" in lines
    assert read_dir(cm) == DEFAULTS | {"cluster-name": b"default\n", "tunnel": b"vxlan"}


def test_diff_shows_what_is_kept_and_what_prune_would_remove(tmp_path: Path) -> None:
    """config diff lists the kept options, diff --prune lists them as removals; neither writes."""
    cm, files = config_map(tmp_path)
    cfg = managed_config(tmp_path, cm)
    keep = run_cli("config", "diff", "--config", str(cfg))
    assert keep.code == 0, keep.stderr
    assert keep.stdout.splitlines()[0] == (
        f"{cm}: a render would add 4, change 1, remove 0 (unchanged 1), keep 24 unmanaged"
    )
    assert "= kvstore-opt (unmanaged: kept as it is)" in keep.stdout
    prune = run_cli("config", "diff", "--config", str(cfg), "--prune", "--exit-code")
    assert prune.code == 1
    assert prune.stdout.splitlines()[0] == (
        f"{cm}: a render would add 4, change 1, remove 24 (unchanged 1)"
    )
    assert '- kvstore-opt (was \'{"etcd.config": "/var/lib/etcd-config/etcd.config"}\')' in (
        prune.stdout
    )
    assert read_dir(cm) == files


def test_plan_reports_kept_and_removed_apart(tmp_path: Path) -> None:
    """A plan without prune has the unmanaged options in kept; with prune in removed."""
    cm, files = config_map(tmp_path)
    keep = plan_options({"tunnel": "disabled"}, cm)
    assert keep.kept == tuple(sorted(set(files) - {"tunnel"})) and keep.removed == ()
    assert not keep.any_change and keep.to_json()["kept"] == list(keep.kept)
    prune = plan_options({"tunnel": "disabled"}, cm, prune=True)
    assert prune.removed == keep.kept and prune.kept == () and prune.any_change


_LOOP = """
import itertools, sys
from pathlib import Path
from supervisor.node import agentconfig
out, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "fallback":
    agentconfig._exchange = lambda a, b: False
print("ready", flush=True)
for i in itertools.count():
    agentconfig.render_options({"tunnel": "vxlan" if i % 2 else "geneve"}, out)
"""


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_kill_9_mid_render_never_loses_an_unmanaged_option(tmp_path: Path, mode: str) -> None:
    """SIGKILL at random moments of renders that keep unmanaged options: the directory (or, in
    the fallback's window, the one aside that the next render puts back) always holds every
    unmanaged file byte for byte, and a whole value of the managed one."""
    cm, files = config_map(tmp_path)
    script = tmp_path / "loop.py"
    script.write_text(_LOOP)
    argv = [sys.executable, str(script), str(cm), mode]
    for _ in killed_at_random(argv, rounds=10, seed=7, max_delay=0.08):
        where = cm if cm.exists() else sorted(cm.parent.glob(".config-map.old-*"))[-1]
        state = read_dir(where)
        assert {n: state[n] for n in files if n != "tunnel"} == {
            n: v for n, v in files.items() if n != "tunnel"
        }
        assert state["tunnel"] in (files["tunnel"], b"vxlan", b"geneve")
    render_options({"tunnel": "vxlan"}, cm)
    assert read_dir(cm) == files | {"tunnel": b"vxlan"}
    assert sorted(p.name for p in cm.parent.iterdir()) == [".config-map.lock", "config-map"]


def test_unmanaged_file_that_cannot_be_linked_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where hard links fail (EXDEV, EPERM) a kept option is copied with its bytes and mode."""
    import errno
    import os

    cm, files = config_map(tmp_path)
    (cm / "debug").chmod(0o600)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    result = agentconfig.render_options({"tunnel": "vxlan"}, cm)
    assert result.written and "debug" in result.kept
    assert read_dir(cm) == files | {"tunnel": b"vxlan"}
    assert (cm / "debug").stat().st_mode & 0o777 == 0o600
