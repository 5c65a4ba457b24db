"""A corpus of broken config and state files: the documented exit code, one line, nothing lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli

GOOD_STATE = {
    "schema": 1,
    "agent": "cilium-agent",
    "updated_at": "2026-11-29T00:00:00.000000Z",
    "hold": None,
    "override": None,
    "runs": [
        {
            "started_at": "2026-11-29T00:00:00.000000Z",
            "via": "gate",
            "ended_at": None,
            "exit_code": None,
            "end_source": None,
            "user": None,
            "reason": None,
        }
    ],
}

BAD_CONFIGS: list[tuple[str, bytes, str]] = [
    ("garbage", b"\x00\x01\x02 not toml at all", "not"),
    ("binary", b"\xff\xfe\xfd", "not UTF-8"),
    ("truncated table", b"[window\nbase = '1m'", "not valid TOML"),
    ("unterminated string", b'node_name = "abc', "not valid TOML"),
    ("negative size", b"cluster_size = -5", "cluster_size = -5"),
    ("zero size", b"cluster_size = 0", "cluster_size = 0"),
    ("string size", b'cluster_size = "5000"\nnode_name = 1', "node_name = 1"),
    ("float size", b"cluster_size = 5000.5", "cluster_size = 5000.5"),
    ("huge size", b"cluster_size = 99999999999999", "must be at most"),
    ("unknown key", b"cluster_size = 5\nwindow_base = '1m'", "unknown key 'window_base'"),
    ("unknown table key", b"cluster_size = 5\n[window]\nbase_ = 1", "unknown key 'window.base_'"),
    ("bad duration", b"cluster_size = 5\n[window]\nbase = '10 mins'", "window.base = '10 mins'"),
    ("negative duration", b"cluster_size = 5\n[window]\nper_node = -1", "window.per_node = -1"),
    ("huge duration", b"cluster_size = 5\nstable_after = '99999999d'", "stable_after"),
    ("inf duration", b"cluster_size = 5\n[window]\nbase = inf", "window.base = inf"),
    ("nan duration", b"cluster_size = 5\n[window]\nbase = nan", "window.base = nan"),
    ("min over max", b"cluster_size = 5\n[window]\nmin = '2h'\nmax = '1h'", "window.min"),
    ("zero window", b"cluster_size = 5\n[window]\nmin = 0", "window.min"),
    ("lonely slot index", b"cluster_size = 5\nslot_index = 1", "slot_count"),
    ("slot out of range", b"cluster_size = 5\nslot_index = 9\nslot_count = 3", "slot_index = 9"),
    ("table as value", b"cluster_size = 5\nmax_multiplier = {a = 1}", "max_multiplier"),
    ("list as size", b"cluster_size = [1, 2]", "cluster_size = [1, 2]"),
    ("bool multiplier", b"cluster_size = 5\nmax_multiplier = true", "max_multiplier = True"),
    ("deep nesting", b"a = " + b"[" * 5000 + b"]" * 5000, "config.toml"),
    ("empty node name", b'cluster_size = 5\nnode_name = ""', "node_name = ''"),
]


@pytest.mark.parametrize(
    ("name", "content", "needle"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_exits_78_in_one_line(
    tmp_path: Path, name: str, content: bytes, needle: str
) -> None:
    """Each broken config exits 78 with one line naming the file, and the state is untouched."""
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(content)
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    state = json.dumps(GOOD_STATE).encode()
    (sd / "cilium-agent.json").write_bytes(state)
    r = run_cli("gate", "--config", str(cfg), "--state-dir", str(sd))
    assert r.code == 78, (name, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr_lines) == 1, r.stderr
    assert str(cfg) in r.stderr_lines[0] and needle in r.stderr_lines[0]
    assert (sd / "cilium-agent.json").read_bytes() == state


def test_empty_config_file_only_lacks_cluster_size(tmp_path: Path) -> None:
    """An empty file is valid TOML: the gate says cluster_size is missing and how to set it."""
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b"")
    r = run_cli("gate", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert r.code == 78 and "cluster_size is not set" in r.stderr_lines[0]


BAD_STATES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\x00garbage\xff"),
    ("truncated", json.dumps(GOOD_STATE).encode()[:40]),
    ("array", b"[1, 2, 3]"),
    ("newer schema", json.dumps({**GOOD_STATE, "schema": 3}).encode()),
    ("no schema", json.dumps({k: v for k, v in GOOD_STATE.items() if k != "schema"}).encode()),
    ("other agent", json.dumps({**GOOD_STATE, "agent": "kube-proxy"}).encode()),
    ("runs not a list", json.dumps({**GOOD_STATE, "runs": "many"}).encode()),
    ("bad timestamp", json.dumps({**GOOD_STATE, "runs": [{"started_at": "noon"}]}).encode()),
    (
        "naive timestamp",
        json.dumps({**GOOD_STATE, "runs": [{"started_at": "2026-11-29T00:00:00"}]}).encode(),
    ),
    (
        "bad exit code",
        json.dumps(
            {**GOOD_STATE, "runs": [{"started_at": "2026-11-29T00:00:00Z", "exit_code": "1"}]}
        ).encode(),
    ),
    (
        "huge exit code",
        json.dumps(
            {**GOOD_STATE, "runs": [{"started_at": "2026-11-29T00:00:00Z", "exit_code": 10**30}]}
        ).encode(),
    ),
    (
        "bad via",
        json.dumps(
            {**GOOD_STATE, "runs": [{"started_at": "2026-11-29T00:00:00Z", "via": "magic"}]}
        ).encode(),
    ),
    ("bad hold", json.dumps({**GOOD_STATE, "hold": "yes"}).encode()),
    ("deep nesting", b"[" * 100000 + b"]" * 100000),
    ("too large", b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'),
    (
        "year 10000",
        json.dumps({**GOOD_STATE, "runs": [{"started_at": "10000-01-01T00:00:00Z"}]}).encode(),
    ),
    (  # regression: parsed, then crashed every command when written back
        "year 1 east of UTC",
        json.dumps({**GOOD_STATE, "runs": [{"started_at": "0001-01-01T00:00:00+14:00"}]}).encode(),
    ),
    (
        "year 9999 west of UTC",
        json.dumps({**GOOD_STATE, "runs": [{"started_at": "9999-12-31T23:59:59-14:00"}]}).encode(),
    ),
]


@pytest.mark.parametrize(("name", "content"), BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_corrupt_state_is_quarantined_and_gate_decides(
    tmp_path: Path, name: str, content: bytes
) -> None:
    """A corrupt state file is moved aside byte for byte and the gate waits for its slot
    (invariant 9): unknown history is level 1 from the moment it was found, never a first start.
    """
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    (sd / "cilium-agent.json").write_bytes(content)
    r = run_cli("gate", "--json", "--cluster-size", "100", "--state-dir", str(sd))
    assert r.code == 75, (name, r.stderr)
    d = json.loads(r.stdout)
    assert d["allowed"] is False and d["backoff_level"] == 1
    assert d["reason"].startswith("history unknown (state file moved aside to ")
    assert "Traceback" not in r.stderr and r.stderr_lines == []
    events = [json.loads(ln)["event"] for ln in r.stderr.splitlines() if ln.startswith("{")]
    assert events == ["state.quarantined", "gate.refused"]
    moved = list(sd.glob("cilium-agent.json.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == content
    again = run_cli("gate", "--json", "--cluster-size", "100", "--state-dir", str(sd))
    assert again.code == 75 and json.loads(again.stdout)["next_allowed_at"] == d["next_allowed_at"]
    assert list(sd.glob("cilium-agent.json.corrupt-*")) == moved


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_state_path_of_wrong_kind_exits_74(tmp_path: Path, kind: str) -> None:
    """A directory, FIFO or symlink in place of the state file exits 74 in one line."""
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    p = sd / "cilium-agent.json"
    if kind == "directory":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    else:
        p.symlink_to(tmp_path / "elsewhere")
    r = run_cli("gate", "--cluster-size", "100", "--state-dir", str(sd))
    assert r.code == 74 and len(r.stderr_lines) == 1 and "Traceback" not in r.stderr
    assert str(p) in r.stderr_lines[0]
    assert not (tmp_path / "elsewhere").exists()
