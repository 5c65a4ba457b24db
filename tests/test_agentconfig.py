"""``config render`` / ``config diff``: the agent's config directory, replaced as a whole.

The starting point is a directory in the reference layout's format (ctripcloud/cilium-compose
``mount/config-map/``: one file per option, hand-written, with trailing newlines).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import textwrap
from pathlib import Path

import pytest
from harness import killed_at_random

from supervisor.base.errors import ConfigError, StateError
from supervisor.node import agentconfig
from supervisor.node.agentconfig import (
    STABILITY_DEFAULTS,
    plan,
    plan_options,
    render,
    render_options,
    validate_options,
)
from supervisor.storage.config import Config, load_config

#: A node's config-map directory as operators write it by hand (trailing newlines included).
REFERENCE: dict[str, bytes] = {
    "identity-allocation-mode": b"kvstore\n",
    "k8s-kubeconfig-path": b"/etc/kubernetes/kubelet.kubeconfig\n",
    "kvstore-opt": b'{"etcd.config": "/var/lib/etcd-config/etcd.config"}\n',
    "prometheus-serve-addr": b":9090\n",
    "sidecar-istio-proxy-image": b"cilium/istio_proxy\n",
}


def make_reference(tmp_path: Path) -> Path:
    """``mount/config-map`` with the reference files, as a hand-made directory."""
    cm = tmp_path / "mount" / "config-map"
    cm.mkdir(parents=True)
    for name, data in REFERENCE.items():
        (cm / name).write_bytes(data)
    return cm


def read_dir(path: Path) -> dict[str, bytes]:
    """Every entry of a directory and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def newest_aside(path: Path) -> Path:
    """The directory the fallback swap moved aside last (its name carries time_ns)."""
    return sorted(path.parent.glob(f".{path.name}.old-*"))[-1]


def siblings(path: Path) -> list[str]:
    """Entries next to ``path`` other than itself and the render lock."""
    return sorted(
        p.name for p in path.parent.iterdir() if p.name not in (path.name, f".{path.name}.lock")
    )


def write_config(tmp_path: Path, body: str) -> Config:
    """Load a config file with ``body`` (TOML)."""
    f = tmp_path / "config.toml"
    f.write_text(textwrap.dedent(body))
    return load_config(f, env={})


def reference_config(tmp_path: Path, cm: Path) -> Config:
    """The reference options moved into [agent], with some changed, one dropped, some added."""
    kubeconfig = tmp_path / "agent.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    return write_config(
        tmp_path,
        f"""
        agent_config_dir = "{cm}"
        [agent]
        identity-allocation-mode = "kvstore"
        kvstore-opt = '{{"etcd.config": "/var/lib/etcd-config/etcd.config"}}'
        prometheus-serve-addr = ":9962"
        k8s-kubeconfig-path = "{kubeconfig}"
        cluster-name = "prod-1"
        cluster-id = 7
        labels = ["k8s:io.kubernetes.pod.namespace", "k8s:app"]
        k8s-sync-timeout = "900s"
    """,
    )


# --- render against the reference layout -------------------------------------------------------


def test_render_over_the_reference_layout(tmp_path: Path) -> None:
    """Unchanged options keep inode, mtime and bytes; changed ones are rewritten; with prune,
    options not in [agent] go."""
    cm = make_reference(tmp_path)
    cfg = reference_config(tmp_path, cm)
    before = {n: (cm / n).stat() for n in REFERENCE}
    result = render(cfg, prune=True)
    assert result.written
    assert result.unchanged == ("identity-allocation-mode", "kvstore-opt")
    assert result.changed == ("k8s-kubeconfig-path", "prometheus-serve-addr")
    assert result.removed == ("sidecar-istio-proxy-image",)
    assert result.added == (
        "allocator-list-timeout",
        "cluster-id",
        "cluster-name",
        "k8s-heartbeat-timeout",
        "k8s-sync-timeout",
        "kvstore-lease-ttl",
        "labels",
    )
    after = read_dir(cm)
    for name in ("identity-allocation-mode", "kvstore-opt"):
        st = (cm / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
        assert after[name] == REFERENCE[name]
    assert "sidecar-istio-proxy-image" not in after
    assert after["prometheus-serve-addr"] == b":9962"
    assert after["k8s-kubeconfig-path"] == str(tmp_path / "agent.kubeconfig").encode()
    assert after["labels"] == b"k8s:io.kubernetes.pod.namespace k8s:app"
    assert after["cluster-id"] == b"7" and after["cluster-name"] == b"prod-1"
    assert after["k8s-sync-timeout"] == b"900s"  # configured value beats the default
    assert after["allocator-list-timeout"] == b"3h"
    assert after["kvstore-lease-ttl"] == b"86400s"
    assert after["k8s-heartbeat-timeout"] == b"60s"
    assert siblings(cm) == []


def test_second_render_changes_nothing(tmp_path: Path) -> None:
    """Rendering the same configuration again writes nothing: the directory keeps its inode."""
    cm = make_reference(tmp_path)
    cfg = reference_config(tmp_path, cm)
    render(cfg, prune=True)
    dir_ino = cm.stat().st_ino
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cm.iterdir()}
    again = render(cfg, prune=True)
    assert not again.written and not again.any_change
    assert again.unchanged == tuple(sorted(files))
    assert cm.stat().st_ino == dir_ino
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cm.iterdir()} == files


def test_diff_writes_nothing_and_shows_values(tmp_path: Path) -> None:
    """``plan`` reports the same changes a render would make, with values, and writes nothing."""
    cm = make_reference(tmp_path)
    cfg = reference_config(tmp_path, cm)
    stats = {p.name: p.stat().st_mtime_ns for p in cm.iterdir()}
    result = plan(cfg, prune=True)
    assert not result.written and result.any_change
    assert result.changed == ("k8s-kubeconfig-path", "prometheus-serve-addr")
    assert {p.name: p.stat().st_mtime_ns for p in cm.iterdir()} == stats
    assert read_dir(cm) == REFERENCE
    changes = {c["option"]: c for c in result.to_json(values=True)["changes"]}
    assert changes["prometheus-serve-addr"] == {
        "option": "prometheus-serve-addr",
        "action": "changed",
        "old": ":9090",
        "new": ":9962",
    }
    assert changes["sidecar-istio-proxy-image"]["action"] == "removed"
    assert changes["labels"]["old"] is None


def test_diff_of_a_missing_directory_adds_everything(tmp_path: Path) -> None:
    """Diffing against a directory that does not exist lists every option as added, creates none."""
    result = plan_options({"b": "2", "a": "1"}, tmp_path / "none")
    assert result.added == ("a", "b") and not result.written
    assert not (tmp_path / "none").exists()


def test_render_creates_a_missing_directory_with_defaults(tmp_path: Path) -> None:
    """With an empty [agent] the directory holds exactly the stability defaults, no newline."""
    out = tmp_path / "etc" / "cilium" / "config-map"
    result = render(Config(agent={"labels": "k8s:app"}), out)
    assert result.written and result.removed == () and result.changed == ()
    expected = {k: v.encode() for k, v in STABILITY_DEFAULTS.items()} | {"labels": b"k8s:app"}
    assert read_dir(out) == expected
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())


def test_changed_file_keeps_its_mode(tmp_path: Path) -> None:
    """An option file the operator made 0600 stays 0600 when its value changes."""
    out = tmp_path / "cm"
    render_options({"a": "1", "b": "x"}, out)
    (out / "a").chmod(0o600)
    render_options({"a": "2", "b": "x"}, out)
    assert (out / "a").read_bytes() == b"2" and (out / "a").stat().st_mode & 0o777 == 0o600


def test_symlinked_output_stays_a_symlink(tmp_path: Path) -> None:
    """An operator's symlink at the output path keeps pointing at the (replaced) directory."""
    real = tmp_path / "real"
    render_options({"a": "1"}, real)
    link = tmp_path / "link"
    link.symlink_to(real)
    render_options({"b": "2"}, link, prune=True)
    assert link.is_symlink() and read_dir(link) == {"b": b"2"}


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "match"),
    [
        (
            'cluster-id = 256\ncluster-name = "c"',
            "agent.cluster-id = '256': must be a whole number 0..255",
        ),
        ('cluster-id = "one"\ncluster-name = "c"', "agent.cluster-id = 'one'"),
        ("cluster-id = -1\ncluster-name = 'c'", "agent.cluster-id = '-1'"),
        ("cluster-id = 3", "agent.cluster-id = '3' is set but agent.cluster-name is not"),
        ("cluster-id = 3\ncluster-name = 'default'", "agent.cluster-name = 'default' cannot"),
        ("max-connected-clusters = 300", "agent.max-connected-clusters = '300'"),
        (
            "k8s-kubeconfig-path = '/nonexistent/kubeconfig'",
            "agent.k8s-kubeconfig-path = '/nonexistent/kubeconfig': does not exist",
        ),
    ],
)
def test_invalid_options_name_file_key_and_value(tmp_path: Path, agent: str, match: str) -> None:
    """Options the agent would refuse raise ConfigError naming the file, key and value."""
    cfg = write_config(tmp_path, f"[agent]\n{agent}\n")
    with pytest.raises(ConfigError) as info:
        render(cfg, tmp_path / "cm")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'config.toml'}: ") and match in msg and "\n" not in msg
    assert info.value.exit_code == 78
    assert not (tmp_path / "cm").exists()


def test_cluster_id_up_to_511_with_max_connected_clusters(tmp_path: Path) -> None:
    """cluster-id may go to 511 when max-connected-clusters is 511."""
    warnings = validate_options(
        {
            "cluster-id": "300",
            "cluster-name": "c",
            "max-connected-clusters": "511",
            "labels": "k8s:app",
        }
    )
    assert warnings == ()


def test_kubeconfig_path_must_be_a_file(tmp_path: Path) -> None:
    """A directory at k8s-kubeconfig-path is refused."""
    with pytest.raises(ConfigError, match="is not a file"):
        validate_options({"k8s-kubeconfig-path": str(tmp_path)})


def test_missing_labels_is_a_warning(tmp_path: Path) -> None:
    """Without ``labels`` the render succeeds and warns about the 16-bit identity space."""
    result = render(Config(), tmp_path / "cm")
    assert result.written and len(result.warnings) == 1
    assert "agent.labels is not set" in result.warnings[0] and "16-bit" in result.warnings[0]


@pytest.mark.parametrize("name", ["Cluster-Name", "cluster_name", "-x", "x-", "a--b", "a.b"])
def test_option_names_must_be_kebab_case(name: str) -> None:
    """Names that are not the agent's kebab-case names are refused."""
    with pytest.raises(ConfigError, match=f"agent.{name}: option names are the agent's kebab"):
        validate_options({name: "1"}, "f.toml")


def test_config_file_rejects_snake_case_option(tmp_path: Path) -> None:
    """An [agent] key in snake_case fails at load with exit 78."""
    with pytest.raises(ConfigError, match=r"agent\.cluster_name"):
        write_config(tmp_path, "[agent]\ncluster_name = 'x'\n")


# --- refusing to replace the wrong directory ----------------------------------------------------


@pytest.mark.parametrize("intruder", ["README.md", ".hidden", "subdir"])
def test_directory_with_foreign_entries_is_not_replaced(tmp_path: Path, intruder: str) -> None:
    """A directory holding anything but option files (``--output /etc``) is left alone."""
    cm = make_reference(tmp_path)
    if intruder == "subdir":
        (cm / intruder).mkdir()
    else:
        (cm / intruder).write_text("x")
    with pytest.raises(ConfigError, match=f"holds '{intruder}', which is not an agent option"):
        render_options({"a": "1"}, cm)
    assert (cm / intruder).exists() and (cm / "kvstore-opt").read_bytes() == REFERENCE[
        "kvstore-opt"
    ]


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """An output path that is a regular file is a configuration error."""
    f = tmp_path / "cm"
    f.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        render_options({"a": "1"}, f)
    assert f.read_text() == "x"


# --- crashes and failures ------------------------------------------------------------------------


def test_failure_while_writing_leaves_the_old_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write error mid-render (disk full) raises StateError; the old directory is untouched."""
    cm = make_reference(tmp_path)
    inodes = {p.name: p.stat().st_ino for p in cm.iterdir()}
    real_populate = agentconfig._populate

    def half(tmp: Path, target: Path, options: dict[str, str], unchanged: set[str]) -> None:
        real_populate(tmp, target, dict(list(options.items())[:2]), unchanged)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agentconfig, "_populate", half)
    with pytest.raises(StateError, match="render failed, directory left as it was: No space"):
        render_options({"a": "1", "b": "2", "c": "3"}, cm)
    assert read_dir(cm) == REFERENCE
    assert {p.name: p.stat().st_ino for p in cm.iterdir()} == inodes
    assert siblings(cm) == []


def test_failed_exchange_leaves_the_old_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the swap itself fails (a mount point: EBUSY) the old directory stays, no temp is left."""
    cm = make_reference(tmp_path)

    def busy(a: Path, b: Path) -> bool:
        raise OSError(errno.EBUSY, "Device or resource busy", str(b))

    monkeypatch.setattr(agentconfig, "_exchange", busy)
    with pytest.raises(StateError, match="Device or resource busy"):
        render_options({"a": "1"}, cm)
    assert read_dir(cm) == REFERENCE and siblings(cm) == []


def test_fallback_swap_renders_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RENAME_EXCHANGE the rename-aside fallback gives the same result."""
    cm = make_reference(tmp_path)
    monkeypatch.setattr(agentconfig, "_exchange", lambda a, b: False)
    ino = (cm / "kvstore-opt").stat().st_ino
    result = render_options(
        {"kvstore-opt": REFERENCE["kvstore-opt"].decode(), "x": "1"}, cm, prune=True
    )
    assert result.removed == tuple(sorted(set(REFERENCE) - {"kvstore-opt"}))
    assert read_dir(cm) == {"kvstore-opt": REFERENCE["kvstore-opt"], "x": b"1"}
    assert (cm / "kvstore-opt").stat().st_ino == ino and siblings(cm) == []


def test_fallback_second_rename_failure_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If moving the new directory in fails, the old one is renamed back before raising."""
    cm = make_reference(tmp_path)
    monkeypatch.setattr(agentconfig, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if ".render-" in str(src):
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(StateError, match="Input/output error"):
        render_options({"a": "1"}, cm)
    assert read_dir(cm) == REFERENCE and siblings(cm) == []


def test_render_after_a_crash_between_the_fallback_renames(tmp_path: Path) -> None:
    """A crash with the old directory aside and the path missing is undone by the next render
    before it compares: the same options are then found up to date, and nothing is left."""
    cm = make_reference(tmp_path)
    aside = cm.with_name(".config-map.old-1700000000000000000-42")
    os.rename(cm, aside)
    partial = cm.with_name(".config-map.render-abc")
    partial.mkdir()
    (partial / "a").write_text("1")
    assert not cm.exists()
    result = render_options({k: v.decode() for k, v in REFERENCE.items()}, cm)
    assert not result.written and result.unchanged == tuple(sorted(REFERENCE))
    assert read_dir(cm) == REFERENCE and siblings(cm) == []


def test_leftover_from_a_crash_after_the_exchange_is_removed(tmp_path: Path) -> None:
    """The old directory left under a temp name by a crash after the swap is deleted next time."""
    cm = make_reference(tmp_path)
    stale = cm.with_name(".config-map.render-xyz")
    stale.mkdir()
    (stale / "old").write_text("1")
    render_options(dict((k, v.decode()) for k, v in REFERENCE.items()), cm)
    assert read_dir(cm) == REFERENCE and siblings(cm) == []


def test_concurrent_render_waits_for_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A render while another holds the lock gives up after the timeout with StateError."""
    out = tmp_path / "cm"
    render_options({"a": "1"}, out)
    monkeypatch.setattr(agentconfig, "LOCK_TIMEOUT", 0.2)
    fd = os.open(tmp_path / ".cm.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StateError, match="another render holds the lock"):
            render_options({"a": "2"}, out)
    finally:
        os.close(fd)
    assert read_dir(out) == {"a": b"1"}


_LOOP = """
import itertools, sys
from pathlib import Path
from supervisor.node import agentconfig
out, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "fallback":
    agentconfig._exchange = lambda a, b: False
A = {f"opt-{i}": f"a{i}" for i in range(200)}
B = {f"opt-{i}": (f"b{i}" if i % 2 else f"a{i}") for i in range(100, 300)}
agentconfig.render_options(A, out, prune=True)
print("ready", flush=True)
for i in itertools.count():
    agentconfig.render_options(B if i % 2 == 0 else A, out, prune=True)
"""
_A = {f"opt-{i}": f"a{i}".encode() for i in range(200)}
_B = {f"opt-{i}": (f"b{i}" if i % 2 else f"a{i}").encode() for i in range(100, 300)}


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_kill_9_mid_render_leaves_a_whole_directory(tmp_path: Path, mode: str) -> None:
    """SIGKILL at random moments of a render loop always leaves all of A or all of B.

    With RENAME_EXCHANGE that holds at every instant; with the fallback, for the directory the
    next render puts back first (the newest one aside) while the path is missing.
    """
    script = tmp_path / "loop.py"
    script.write_text(_LOOP)
    out = tmp_path / "node" / "cm"
    out.parent.mkdir()
    argv = [sys.executable, str(script), str(out), mode]
    for _ in killed_at_random(argv, rounds=12, seed=4, max_delay=0.08):
        state = read_dir(out if mode == "exchange" or out.exists() else newest_aside(out))
        assert state in (_A, _B), sorted(state)[:3]
    render_options({k: v.decode() for k, v in _A.items()}, out, prune=True)
    assert read_dir(out) == _A and siblings(out) == []
