"""The gate and status with an [identity]: refuse a bad certificate (78), never leak secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import certgen
from conftest import QUICK_ADMISSION, clean_env, run_cli

NODE = "node-7"
USER = f"system:cilium-agent:{NODE}"


def config(tmp_path: Path, issued: certgen.Issued) -> Path:
    """A config file naming the issued certificate, key and CA."""
    p = tmp_path / "config.toml"
    p.write_text(
        f'cluster_size = 100\nnode_name = "{NODE}"\n'
        f'[identity]\ncert = "{issued.cert}"\nkey = "{issued.key}"\nca = "{issued.ca}"\n'
    )
    return p


def test_good_identity_lets_the_gate_decide(tmp_path: Path) -> None:
    """With a valid certificate for this node the gate decides as usual."""
    issued = certgen.issue("cryptography", tmp_path / "pki", now=time.time(), cn=USER)
    r = run_cli(
        "gate",
        "--wait",
        "--json",
        "--config",
        str(config(tmp_path, issued)),
        "--state-dir",
        str(tmp_path / "s"),
        *QUICK_ADMISSION,
    )
    assert r.code == 0 and json.loads(r.stdout)["allowed"] is True


def test_bad_identity_refuses_with_78_unless_forced(tmp_path: Path) -> None:
    """A certificate for another node exits 78 naming the problem; --force still starts."""
    issued = certgen.issue(
        "openssl", tmp_path / "pki", now=time.time(), cn="system:cilium-agent:other-node"
    )
    cfg = config(tmp_path, issued)
    r = run_cli("gate", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert r.code == 78 and len(r.stderr_lines) == 1
    assert "bad agent identity" in r.stderr_lines[0] and "other-node" in r.stderr_lines[0]
    assert not (tmp_path / "s" / "cilium-agent.json").exists()
    f = run_cli(
        "gate",
        "--force",
        "--reason",
        "cert rotation in progress",
        "--config",
        str(cfg),
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert f.code == 0


def test_status_shows_certificate_state(tmp_path: Path) -> None:
    """status reports the certificate's validity and days left."""
    issued = certgen.issue("cryptography", tmp_path / "pki", now=time.time(), cn=USER)
    r = run_cli(
        "status",
        "--json",
        "--config",
        str(config(tmp_path, issued)),
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert r.code == 0
    ident = json.loads(r.stdout)["identity"]
    assert ident["ok"] is True and 88 * 86400 < ident["seconds_left"] <= 90 * 86400
    human = run_cli(
        "status", "--config", str(config(tmp_path, issued)), "--state-dir", str(tmp_path / "s")
    )
    assert "certificate  ok" in human.stdout


def test_no_key_material_certificate_or_environment_in_logs(tmp_path: Path) -> None:
    """No log line of any command carries key material, a whole certificate or the environment."""
    issued = certgen.issue(
        "cryptography", tmp_path / "pki", now=time.time(), cn=USER, key_mode=0o644
    )
    cfg = config(tmp_path, issued)
    canary = "canary-7f3a9c-secret-value"
    env = clean_env(SOME_TOKEN=canary)
    key_body = issued.key.read_text().splitlines()[1]
    cert_body = issued.cert.read_text().splitlines()[1]
    outputs = []
    for args in (
        ["gate"],
        ["gate", "--force", "--reason", "x"],
        ["status"],
        ["certs", "check"],
        ["certs", "check", "--json"],
        ["hold", "--reason", "y"],
    ):
        r = run_cli(*args, "--config", str(cfg), "--state-dir", str(tmp_path / "s"), env=env)
        outputs.append(r.stderr)
    logs = "\n".join(outputs)
    assert "key file" in logs or "group or others" in logs or "0644" in logs  # the problem is named
    for secret in ("PRIVATE KEY", "BEGIN CERTIFICATE", key_body, cert_body, canary):
        assert secret not in logs
