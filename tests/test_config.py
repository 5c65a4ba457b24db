"""Configuration: precedence, defaults, and one clear error naming file, key and value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import clean_env, run_cli
from hypothesis import given
from hypothesis import strategies as st

from supervisor.base.errors import ConfigError
from supervisor.cli.common import load
from supervisor.core.durations import DurationError, format_duration, parse_duration
from supervisor.storage.config import DEFAULT_DOCKER_GRACE, KEYS, load_config


def write(tmp_path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("20m", 1200),
        ("3h", 10800),
        ("1d", 86400),
        ("1h30m", 5400),
        (45, 45),
        (0.6, 0.6),
        ("0.6s", 0.6),
        ("90", 90),
    ],
)
def test_durations_parse(text: object, seconds: float) -> None:
    """Durations with a unit, compound durations and bare numbers are seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["", "10x", "-5s", "s", "1e999", "nan", True, [1], "20 minutes", "99999999d"]
)
def test_bad_durations_are_refused(bad: object) -> None:
    """Unparsable, negative, infinite and absurd durations raise DurationError."""
    with pytest.raises(DurationError):
        parse_duration(bad)


@given(st.floats(min_value=1, max_value=10 * 86400))
def test_format_duration_round_trips_to_the_second(seconds: float) -> None:
    """A formatted duration parses back to the same whole number of seconds (within 1 s)."""
    assert abs(parse_duration(format_duration(seconds)) - seconds) <= 1.0


def test_missing_default_file_is_not_an_error(tmp_path: Path) -> None:
    """Without a file, the defaults apply and cluster_size is unset."""
    cfg = load_config(env={})
    assert cfg.cluster_size is None
    assert cfg.window.base == 600 and cfg.window.per_node == 0.6
    with pytest.raises(
        ConfigError, match=r"cluster_size is not set.*AGENT_SUPERVISOR_CLUSTER_SIZE"
    ):
        cfg.require_cluster_size()


def test_named_missing_file_is_an_error(tmp_path: Path) -> None:
    """A config file named on the command line or in the environment must exist."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(env={"AGENT_SUPERVISOR_CONFIG": str(tmp_path / "nope.toml")})


def test_precedence_command_line_then_environment_then_file(tmp_path: Path) -> None:
    """The command line beats the environment, which beats the file."""
    p = write(tmp_path, 'cluster_size = 10\nnode_name = "file"\n[window]\nbase = "1m"\n')
    env = {"AGENT_SUPERVISOR_CLUSTER_SIZE": "20", "AGENT_SUPERVISOR_WINDOW_BASE": "2m"}
    cfg = load_config(p, env=env, overrides={"cluster_size": 30})
    assert cfg.cluster_size == 30 and cfg.window.base == 120 and cfg.node_name == "file"
    assert cfg.source_of("cluster_size") == "command line"
    assert cfg.source_of("window.base") == "environment AGENT_SUPERVISOR_WINDOW_BASE"
    assert cfg.source_of("node_name") == str(p)


def test_every_key_has_an_environment_variable() -> None:
    """Each key maps to AGENT_SUPERVISOR_<KEY> with '_' for '.'."""
    envs = {k.path: k.env for k in KEYS}
    assert envs["window.per_node"] == "AGENT_SUPERVISOR_WINDOW_PER_NODE"
    assert envs["cluster_size"] == "AGENT_SUPERVISOR_CLUSTER_SIZE"
    assert len(set(envs.values())) == len(envs)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cluster_size = -1", "cluster_size = -1: must be at least 1"),
        ("cluster_size = 0", "cluster_size = 0"),
        ('cluster_size = "many"', "cluster_size = 'many': expected a whole number"),
        ("cluster_size = 1.5", "expected a whole number"),
        ("cluster_size = true", "expected a whole number"),
        ("cluster_size = 99999999999", "must be at most"),
        ("clustersize = 5", "unknown key 'clustersize'"),
        ('[window]\nbse = "1m"', "unknown key 'window.bse' (known: window.admission, window.base"),
        ('[window]\nbase = "10x"', "window.base = '10x'"),
        ('[window]\nmin = "2h"\nmax = "1h"', "window.min"),
        ('[window]\nmax = "0"', "window.max = '0': must be longer than 0s"),
        ("slot_index = 3", "slot_index and slot_count go together"),
        ("slot_index = 3\nslot_count = 3", "must be below slot_count"),
        ('node_name = "bad name!"', "node_name = 'bad name!'"),
        ('[probe]\nurls = ["ftp://x"]', "is not an http(s) URL"),
        ('[identity]\ncert = "/c.pem"', "needs key"),
        ("[agent]\nCluster_Name = 'x'", "kebab-case"),
        ("[agent]\ncluster-name = {a = 1}", "agent.cluster-name"),
        ("cluster_size = ", "not valid TOML"),
        ("agent = 5", "[agent] must be a table"),
        # Bounds (issue 16): a config that loads must give times the calendar can hold, and
        # a backoff that is not silently off.
        ('[window]\nbase = "3650d"\nmax = "3650d"', "window.base = '3650d': must be at most 30d"),
        ('[window]\nmax = "31d"', "window.max = '31d': must be at most 30d"),
        ('stable_after = "0"', "stable_after = '0': must be longer than 0s"),
        ('stable_after = "500ms"', "stable_after = '500ms': must be at least 1s"),
        ("max_multiplier = 1025", "max_multiplier = 1025: must be at most 1024"),
        ('[window]\nadmission = "0s"', "window.admission = '0s': must be longer than 0s"),
        ('[docker]\ngrace = "2d"', "docker.grace = '2d': must be at most 1d"),
        (
            '[probe]\ntimeout = "1s"\nmax_latency = "1s"',
            "probe.max_latency = 1s must be shorter than probe.timeout = 1s",
        ),
    ],
)
def test_bad_config_names_file_key_and_value(tmp_path: Path, text: str, needle: str) -> None:
    """Each bad file gives one ConfigError line naming the file and what is wrong."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p, env={})
    msg = str(info.value)
    assert str(p) in msg and needle in msg and "\n" not in msg


def test_bad_environment_value_names_the_variable() -> None:
    """A bad environment value names the variable, the key and the value."""
    with pytest.raises(
        ConfigError,
        match=r"environment AGENT_SUPERVISOR_WINDOW_PER_NODE: "
        r"window.per_node = 'fast'",
    ):
        load_config(env={"AGENT_SUPERVISOR_WINDOW_PER_NODE": "fast"})


def test_agent_table_is_kept_as_strings(tmp_path: Path) -> None:
    """The free-form [agent] table becomes option -> text."""
    p = write(tmp_path, "[agent]\ncluster-id = 7\nenable-ipv6 = false\nlabels = ['a', 'b']\n")
    cfg = load_config(p, env={})
    assert dict(cfg.agent) == {"cluster-id": "7", "enable-ipv6": "false", "labels": "a b"}


def test_binary_and_huge_files_are_refused(tmp_path: Path) -> None:
    """Non-UTF-8 and oversized files give a ConfigError, not a crash."""
    p = tmp_path / "c.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p, env={})
    p.write_bytes(b"# " + b"x" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(p, env={})
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path, env={})


def test_docker_grace_defaults_to_two_minutes() -> None:
    """Without docker.grace an approved start may wait 2 minutes for Docker to start it."""
    cfg = load_config(env={})
    assert cfg.docker_grace == DEFAULT_DOCKER_GRACE == 120.0
    assert cfg.source_of("docker.grace") == "default"


def test_docker_grace_from_file_environment_and_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker.grace is read from [docker] in the file, the environment and --set, in that order."""
    p = write(tmp_path, '[docker]\ncontainer = "cilium-agent"\ngrace = "90s"\n')
    from_file = load_config(p, env={})
    assert from_file.docker_grace == 90.0 and from_file.source_of("docker.grace") == str(p)
    env = {"AGENT_SUPERVISOR_DOCKER_GRACE": "3m"}
    from_env = load_config(p, env=env)
    assert from_env.docker_grace == 180.0
    assert from_env.source_of("docker.grace") == "environment AGENT_SUPERVISOR_DOCKER_GRACE"
    for name in [k for k in os.environ if k.startswith("AGENT_SUPERVISOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AGENT_SUPERVISOR_DOCKER_GRACE", "3m")
    from_set = load(config=p, sets=["docker.grace=45s"])  # what the CLI does with --set
    assert from_set.docker_grace == 45.0 and from_set.source_of("docker.grace") == "command line"
    assert from_set.docker_container == "cilium-agent"


@pytest.mark.parametrize("where", ["file", "environment", "--set"])
@pytest.mark.parametrize(("value", "needle"), [("0", "must be longer than 0s"), ("soon", "")])
def test_bad_docker_grace_exits_78_in_one_line(
    tmp_path: Path, where: str, value: str, needle: str
) -> None:
    """docker.grace of 0 or garbage, from any source, exits 78 with one line naming it."""
    cfg = write(tmp_path, f"cluster_size = 5\n[docker]\ngrace = {value!r}\n")
    args = ["gate", "--state-dir", str(tmp_path / "state")]
    env = clean_env()
    if where == "file":
        args += ["--config", str(cfg)]
    elif where == "environment":
        env["AGENT_SUPERVISOR_DOCKER_GRACE"] = value
        args += ["--cluster-size", "5"]
    else:
        args += ["--cluster-size", "5", "--set", f"docker.grace={value}"]
    r = run_cli(*args, env=env)
    assert r.code == 78, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr_lines) == 1, r.stderr
    line = r.stderr_lines[0]
    assert f"docker.grace = {value!r}: {needle}" in line
    source = {"file": str(cfg), "environment": "AGENT_SUPERVISOR_DOCKER_GRACE"}
    assert source.get(where, "command line") in line
    assert not (tmp_path / "state").exists()


def test_an_admission_period_longer_than_the_window_is_refused(tmp_path: Path) -> None:
    """window.admission is at most W: a longer J is refused when the policy is built (78)."""
    p = write(tmp_path, 'cluster_size = 1000\n[window]\nadmission = "2h"')
    cfg = load_config(p, env={})
    with pytest.raises(ConfigError) as info:
        cfg.policy("cilium-agent")
    assert str(info.value) == (
        f"{p}: window.admission = 7200s is longer than the window (1200s for 1000 nodes): "
        "the admission grid's period is at most W"
    )


@pytest.mark.parametrize(
    ("text", "admission", "explicit"),
    [
        ("cluster_size = 5000", 3600.0, False),
        ('cluster_size = 5000\n[probe]\nurls = ["https://a:6443/x"]', 300.0, False),
        ('cluster_size = 5000\n[window]\nadmission = "10m"', 600.0, True),
    ],
)
def test_the_admission_period_defaults_to_w_without_a_probe_and_a_fraction_with_one(
    tmp_path: Path, text: str, admission: float, explicit: bool
) -> None:
    """J is W without a probe, W/12 with one, and what the operator set when set."""
    p = load_config(write(tmp_path, text), env={}).policy("cilium-agent")
    assert (p.admission, p.admission_explicit) == (admission, explicit)
