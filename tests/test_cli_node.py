"""The node commands as operators run them: ``python -m supervisor`` in a real process.

Every failure must be one line on stderr (``agent-supervisor: error: ...``) with the documented
exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import certgen
import pytest
import yaml
from conftest import Result, clean_env, run_cli
from harness import one_error_line

NODE = "node-1"
USER = f"system:cilium-agent:{NODE}"


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m supervisor ARGS`` as a real process."""
    return run_cli(*args, env=env)


def write_config(tmp_path: Path, body: str) -> Path:
    """A config file in ``tmp_path`` with ``body`` (TOML)."""
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def issued(tmp_path: Path) -> certgen.Issued:
    """A valid CA, client certificate and 0600 key for this node."""
    import time

    return certgen.issue("cryptography", tmp_path / "pki", now=time.time(), cn=USER)


def identity_config(tmp_path: Path, iss: certgen.Issued, extra: str = "") -> Path:
    """A config file with an [identity] table for ``iss``."""
    return write_config(
        tmp_path,
        f"""
        cluster_size = 10
        node_name = "{NODE}"
        [identity]
        cert = "{iss.cert}"
        key = "{iss.key}"
        ca = "{iss.ca}"
        {extra}
    """,
    )


# --- config render / diff ------------------------------------------------------------------------


def reference_dir(tmp_path: Path) -> Path:
    """A reference-layout config-map directory (hand-made, trailing newlines)."""
    cm = tmp_path / "mount" / "config-map"
    cm.mkdir(parents=True)
    (cm / "identity-allocation-mode").write_bytes(b"kvstore\n")
    (cm / "prometheus-serve-addr").write_bytes(b":9090\n")
    (cm / "sidecar-istio-proxy-image").write_bytes(b"cilium/istio_proxy\n")
    return cm


def agent_config(tmp_path: Path, cm: Path, extra: str = "") -> Path:
    """A config whose [agent] table keeps one option, changes one and drops one."""
    return write_config(
        tmp_path,
        f"""
        agent_config_dir = "{cm}"
        [agent]
        identity-allocation-mode = "kvstore"
        prometheus-serve-addr = ":9962"
        labels = "k8s:app"
        {extra}
    """,
    )


def test_config_render_and_diff(tmp_path: Path) -> None:
    """diff --prune shows the changes and writes nothing; render --prune applies them; diff is
    then clean."""
    cm = reference_dir(tmp_path)
    cfg = agent_config(tmp_path, cm)
    ino = (cm / "identity-allocation-mode").stat().st_ino
    diff = cli("config", "diff", "--config", str(cfg), "--exit-code", "--prune")
    assert diff.code == 1, diff.stderr
    assert f"{cm}: a render would add 5, change 1, remove 1 (unchanged 1)" in diff.stdout
    assert "~ prometheus-serve-addr: ':9090' -> ':9962'" in diff.stdout
    assert "- sidecar-istio-proxy-image (was 'cilium/istio_proxy')" in diff.stdout
    assert (cm / "sidecar-istio-proxy-image").exists()

    done = cli("config", "render", "--config", str(cfg), "--prune")
    assert done.code == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{cm}: added 5, changed 1, removed 1, unchanged 1"
    assert "+ allocator-list-timeout = '3h'" in done.stdout
    assert (cm / "prometheus-serve-addr").read_bytes() == b":9962"
    assert not (cm / "sidecar-istio-proxy-image").exists()
    assert (cm / "identity-allocation-mode").stat().st_ino == ino

    clean = cli("config", "diff", "--config", str(cfg), "--exit-code")
    assert clean.code == 0 and clean.stdout == f"{cm}: up to date (7 options)\n"


def test_config_render_json_and_output_option(tmp_path: Path) -> None:
    """--output overrides agent_config_dir and --json prints one object with the changes."""
    cfg = write_config(tmp_path, "[agent]\nlabels = 'k8s:app'\ncluster-name = 'c'\n")
    out = tmp_path / "out"
    res = cli("config", "render", "--config", str(cfg), "--output", str(out), "--json")
    assert res.code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["written"] is True and doc["output"] == str(out) and doc["warnings"] == []
    assert doc["added"] == sorted(os.listdir(out))
    assert {c["option"] for c in doc["changes"]} == set(doc["added"])


def test_config_render_warns_without_labels(tmp_path: Path) -> None:
    """Without labels the render succeeds and prints the warning."""
    cfg = write_config(tmp_path, "[agent]\ncluster-name = 'c'\n")
    res = cli("config", "render", "--config", str(cfg), "--output", str(tmp_path / "cm"))
    assert res.code == 0 and "warning: agent.labels is not set" in res.stdout


@pytest.mark.parametrize(
    ("agent", "needle"),
    [
        (
            "cluster-id = 300\ncluster-name = 'c'",
            "agent.cluster-id = '300': must be a whole number",
        ),
        ("cluster-id = 3", "agent.cluster-name is not"),
        ("k8s-kubeconfig-path = '/nonexistent'", "agent.k8s-kubeconfig-path = '/nonexistent'"),
        ("Bad_Name = 1", "agent.Bad_Name"),
    ],
)
def test_config_render_invalid_is_one_line_78(tmp_path: Path, agent: str, needle: str) -> None:
    """Invalid agent options exit 78 with one line naming the file and the key."""
    cfg = write_config(tmp_path, f"[agent]\n{agent}\n")
    res = cli("config", "render", "--config", str(cfg), "--output", str(tmp_path / "cm"))
    one_error_line(res, 78, str(cfg), needle)
    assert not (tmp_path / "cm").exists()


def test_config_render_refuses_a_foreign_directory(tmp_path: Path) -> None:
    """Rendering into a directory with non-option entries exits 78 and deletes nothing."""
    target = tmp_path / "etc"
    target.mkdir()
    (target / "passwd").write_text("root:x:0:0\n")
    (target / "hosts.d").mkdir()
    cfg = write_config(tmp_path, "[agent]\nlabels = 'x'\n")
    res = cli("config", "render", "--config", str(cfg), "--output", str(target))
    one_error_line(res, 78, "which is not an agent option file")
    assert (target / "passwd").read_text() == "root:x:0:0\n"


def test_config_render_with_set_and_environment(tmp_path: Path) -> None:
    """The config file may come from AGENT_SUPERVISOR_CONFIG and the directory from --set."""
    cfg = write_config(tmp_path, "[agent]\nlabels = 'x'\n")
    out = tmp_path / "from-set"
    res = cli(
        "config",
        "render",
        "--set",
        f"agent_config_dir={out}",
        env=clean_env(AGENT_SUPERVISOR_CONFIG=str(cfg)),
    )
    assert res.code == 0, res.stderr
    assert (out / "labels").read_bytes() == b"x"


# --- certs ---------------------------------------------------------------------------------------


def test_certs_check_ok(tmp_path: Path, issued: certgen.Issued) -> None:
    """A valid identity exits 0 and prints the subject, the expiry and "ok"."""
    res = cli("certs", "check", "--config", str(identity_config(tmp_path, issued)))
    assert res.code == 0, res.stderr
    assert f"certificate  {issued.cert}" in res.stdout
    assert "result       ok" in res.stdout and "89d left" in res.stdout
    doc = json.loads(
        cli("certs", "check", "--json", "--config", str(identity_config(tmp_path, issued))).stdout
    )
    assert doc["ok"] is True and doc["problems"] == [] and doc["not_after"].endswith("Z")


def test_certs_check_problems_exit_78(tmp_path: Path, issued: certgen.Issued) -> None:
    """A bad identity exits 78: problems on stdout, one error line naming the first on stderr."""
    issued.key.chmod(0o644)
    cfg = identity_config(tmp_path, issued)
    res = cli("certs", "check", "--config", str(cfg), "--node-name", "node-2")
    one_error_line(res, 78, "bad agent identity:", "subject CN", "(and 1 more)")
    assert "result       BAD (2 problems)" in res.stdout
    assert f"problem: {issued.key}: mode 0644" in res.stdout
    res_json = cli("certs", "check", "--json", "--config", str(cfg))
    one_error_line(res_json, 78, "mode 0644")
    doc = json.loads(res_json.stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 1


def test_certs_check_warning_exits_0(tmp_path: Path, issued: certgen.Issued) -> None:
    """A certificate within renew_before is reported as a warning with exit 0."""
    cfg = identity_config(tmp_path, issued, 'renew_before = "100d"')
    res = cli("certs", "check", "--config", str(cfg))
    assert res.code == 0 and "warning: " in res.stdout and "within renew_before" in res.stdout


def test_certs_check_without_identity_is_78(tmp_path: Path) -> None:
    """Without an [identity] table certs check says how to configure one."""
    cfg = write_config(tmp_path, "cluster_size = 3\n")
    one_error_line(cli("certs", "check", "--config", str(cfg)), 78, "no [identity] configured")


def test_certs_check_via_set(tmp_path: Path, issued: certgen.Issued) -> None:
    """--set identity.* configures the identity without a config file."""
    res = cli(
        "certs",
        "check",
        "--node-name",
        NODE,
        "--set",
        f"identity.cert={issued.cert}",
        "--set",
        f"identity.key={issued.key}",
        "--set",
        f"identity.ca={issued.ca}",
        env=clean_env(AGENT_SUPERVISOR_CONFIG=str(write_config(tmp_path, ""))),
    )
    assert res.code == 0, res.stderr


def test_certs_csr_then_check_after_signing(tmp_path: Path) -> None:
    """certs csr makes a 0600 key and a CSR; a second run without --force exits 2."""
    cfg = write_config(
        tmp_path, f'node_name = "{NODE}"\n[identity]\ncert = "c"\nkey = "k"\ngroup = "agents"\n'
    )
    out = tmp_path / "new"
    res = cli("certs", "csr", "--out", str(out), "--config", str(cfg), "--json")
    assert res.code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["subject"] == f"CN={USER},O=agents"
    assert (out / "cilium-agent.key").stat().st_mode & 0o777 == 0o600
    manifest = yaml.safe_load((out / "cilium-agent.csr.yaml").read_text())
    assert manifest["metadata"]["name"] == f"cilium-agent-{NODE}"
    key_before = (out / "cilium-agent.key").read_bytes()
    again = cli("certs", "csr", "--out", str(out), "--config", str(cfg))
    one_error_line(again, 2, "already exists (pass --force")
    assert (out / "cilium-agent.key").read_bytes() == key_before
    forced = cli(
        "certs",
        "csr",
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--force",
        "--key-type",
        "rsa",
        "--rsa-bits",
        "2048",
        "--expiration",
        "30d",
    )
    assert forced.code == 0, forced.stderr
    assert (out / "cilium-agent.key").read_bytes() != key_before
    assert "key       " in forced.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--key-type", "dsa"), "--key-type 'dsa'"),
        (("--rsa-bits", "1024", "--key-type", "rsa"), "--rsa-bits 1024"),
        (("--expiration", "5m"), "at least 10m"),
        (("--expiration", "soon"), "--expiration"),
    ],
)
def test_certs_csr_bad_options_exit_2(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    """Bad csr options are usage errors (exit 2) and write nothing."""
    cfg = write_config(tmp_path, "")
    res = cli("certs", "csr", "--out", str(tmp_path / "o"), "--config", str(cfg), *args)
    one_error_line(res, 2, needle)
    assert not (tmp_path / "o").exists()


# --- kubeconfig and apf --------------------------------------------------------------------------


def test_kubeconfig_render_to_file_and_stdout(tmp_path: Path, issued: certgen.Issued) -> None:
    """kubeconfig render writes the agent's kubeconfig; --server overrides identity.server."""
    cfg = identity_config(tmp_path, issued, 'server = "https://10.0.0.1:6443"')
    out = tmp_path / "agent.kubeconfig"
    res = cli("kubeconfig", "render", "--config", str(cfg), "--out", str(out))
    assert res.code == 0, res.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["clusters"][0]["cluster"] == {
        "server": "https://10.0.0.1:6443",
        "certificate-authority": str(issued.ca),
    }
    assert doc["users"][0] == {
        "name": USER,
        "user": {"client-certificate": str(issued.cert), "client-key": str(issued.key)},
    }
    printed = cli("kubeconfig", "render", "--config", str(cfg), "--server", "https://lb:443")
    assert printed.code == 0
    assert yaml.safe_load(printed.stdout)["clusters"][0]["cluster"]["server"] == "https://lb:443"
    # The rendered file can then be the agent's k8s-kubeconfig-path.
    agent_cfg = write_config(tmp_path, f"[agent]\nlabels='x'\nk8s-kubeconfig-path = '{out}'\n")
    assert (
        cli("config", "render", "--config", str(agent_cfg), "--output", str(tmp_path / "cm")).code
        == 0
    )


def test_kubeconfig_render_errors(tmp_path: Path, issued: certgen.Issued) -> None:
    """No server is 78, an http server is 78, a foreign file is 2; each one line."""
    cfg = identity_config(tmp_path, issued)
    one_error_line(
        cli("kubeconfig", "render", "--config", str(cfg)), 78, "apiserver URL is not set"
    )
    one_error_line(
        cli("kubeconfig", "render", "--config", str(cfg), "--server", "http://x"),
        78,
        "--server = 'http://x'",
    )
    kubelet = tmp_path / "kubelet.kubeconfig"
    kubelet.write_text("apiVersion: v1\n")
    one_error_line(
        cli(
            "kubeconfig",
            "render",
            "--config",
            str(cfg),
            "--server",
            "https://x",
            "--out",
            str(kubelet),
        ),
        2,
        "was not written by kubeconfig render",
    )
    assert kubelet.read_text() == "apiVersion: v1\n"


def test_apf_render(tmp_path: Path, issued: certgen.Issued) -> None:
    """apf render prints both objects for the configured group with the given queueing values."""
    cfg = identity_config(tmp_path, issued, 'group = "net-agents"')
    res = cli(
        "apf",
        "render",
        "--config",
        str(cfg),
        "--queues",
        "64",
        "--hand-size",
        "4",
        "--shares",
        "30",
        "--queue-length-limit",
        "25",
    )
    assert res.code == 0, res.stderr
    plc, fs = list(yaml.safe_load_all(res.stdout))
    assert plc["spec"]["limited"]["limitResponse"]["queuing"] == {
        "queues": 64,
        "handSize": 4,
        "queueLengthLimit": 25,
    }
    assert plc["spec"]["limited"]["nominalConcurrencyShares"] == 30
    assert fs["spec"]["rules"][0]["subjects"][0]["group"]["name"] == "net-agents"
    out = tmp_path / "apf.yaml"
    assert cli("apf", "render", "--config", str(cfg), "--out", str(out)).code == 0
    assert list(yaml.safe_load_all(out.read_text()))[1]["kind"] == "FlowSchema"
    one_error_line(
        cli("apf", "render", "--config", str(cfg), "--queues", "4", "--hand-size", "8"),
        2,
        "--hand-size 8",
    )


# --- the gate refuses a bad identity -------------------------------------------------------------


def test_gate_refuses_a_bad_identity_unless_forced(tmp_path: Path, issued: certgen.Issued) -> None:
    """The gate exits 78 naming the identity problem, records nothing; --force lets it through."""
    issued.key.chmod(0o640)
    cfg = identity_config(tmp_path, issued)
    state = tmp_path / "state"
    res = cli("gate", "--config", str(cfg), "--state-dir", str(state))
    assert res.code == 78, res.stderr
    assert len(res.stderr_lines) == 1 and "Traceback" not in res.stderr
    assert "mode 0640" in res.stderr_lines[0]
    forced = cli(
        "gate", "--config", str(cfg), "--state-dir", str(state), "--force", "--reason", "test"
    )
    assert forced.code == 0, forced.stderr
    issued.key.chmod(0o600)
    fresh = cli("gate", "--config", str(cfg), "--state-dir", str(tmp_path / "state2"))
    assert fresh.code == 75 and "admission slot" in fresh.stdout, fresh.stderr
