"""The agent's identity: certificate checks, CSR, kubeconfig and APF rendering.

Every scenario of the issue runs against certificates made by ``cryptography`` *and* by the
``openssl`` command (see certgen), and the kubeconfig is proven with a real mutual-TLS handshake
on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import certgen
import pytest
import yaml
from certgen import BACKENDS, DAY, Backend, issue
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

import supervisor.node.identity as identity_module
from supervisor.base.errors import ConfigError, UsageError
from supervisor.node.apf import ApfSettings, render_apf
from supervisor.node.credentials import (
    KUBECONFIG_MARKER,
    check_server_url,
    k8s_object_name,
    make_csr,
    render_kubeconfig,
    write_kubeconfig,
)
from supervisor.node.identity import (
    CertReport,
    check_identity,
    identity_message,
    render_user,
)
from supervisor.storage.config import IdentityConfig

NODE = "node-1"
USER = "system:cilium-agent:node-1"
NOW = float(int(time.time()))


def ident(issued: certgen.Issued, **kw: object) -> IdentityConfig:
    """The [identity] table for issued files."""
    return IdentityConfig(cert=str(issued.cert), key=str(issued.key), ca=str(issued.ca), **kw)  # type: ignore[arg-type]


def only_problem(report: CertReport) -> str:
    """The single problem of a report (fails if there are more or none)."""
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


# --- the issue's scenarios, with both backends -------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_certificate_passes(tmp_path: Path, backend: Backend) -> None:
    """A current client certificate for this node's user and group, 0600 key and CA, is ok."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER)
    report = check_identity(ident(iss), NODE, NOW)
    assert report.ok and report.problems == () and report.warnings == ()
    assert report.subject is not None and f"CN={USER}" in report.subject
    assert "O=cilium-agents" in report.subject
    assert report.not_after is not None and abs(report.not_after - (NOW + 90 * DAY)) < 2
    assert report.seconds_left is not None and abs(report.seconds_left - 90 * DAY) < 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_expired_certificate_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A certificate past notAfter is one problem naming the file and the expiry."""
    iss = issue(
        backend, tmp_path, now=NOW, cn=USER, not_before=NOW - 30 * DAY, not_after=NOW - 2 * DAY
    )
    report = check_identity(ident(iss), NODE, NOW)
    problem = only_problem(report)
    assert problem.startswith(f"{iss.cert}: expired at ") and "2d ago" in problem
    assert report.seconds_left is not None and report.seconds_left < 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_not_yet_valid_certificate_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A certificate before notBefore is one problem that hints at the clock."""
    iss = issue(
        backend, tmp_path, now=NOW, cn=USER, not_before=NOW + 3 * 3600, not_after=NOW + 30 * DAY
    )
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert problem.startswith(f"{iss.cert}: not valid before ") and "clock" in problem


@pytest.mark.parametrize("backend", BACKENDS)
def test_expiring_within_renew_before_is_a_warning(tmp_path: Path, backend: Backend) -> None:
    """A certificate that expires within renew_before stays ok but carries a warning."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER, not_after=NOW + 2 * DAY)
    report = check_identity(ident(iss), NODE, NOW)
    assert report.ok and report.problems == ()
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith(f"{iss.cert}: expires at ")
    assert "within renew_before (7d)" in report.warnings[0]
    assert check_identity(ident(iss, renew_before=DAY), NODE, NOW).warnings == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_cn_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A certificate of another node's user is refused, naming both user names."""
    iss = issue(backend, tmp_path, now=NOW, cn="system:cilium-agent:node-2")
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert "subject CN is 'system:cilium-agent:node-2'" in problem
    assert f"expected '{USER}'" in problem and problem.startswith(str(iss.cert))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_o_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A certificate whose O is not the agents' group is refused, naming the group."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER, orgs=("system:nodes",))
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert "subject O is 'system:nodes'" in problem and "'cilium-agents'" in problem


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_client_auth_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A server-only certificate (extendedKeyUsage serverAuth) cannot be a client certificate."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER, usage="serverAuth")
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert "serverAuth" in problem and "lacks clientAuth" in problem


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_extended_key_usage_is_only_a_warning(tmp_path: Path, backend: Backend) -> None:
    """Without any extendedKeyUsage the apiserver accepts the certificate, so it is a warning."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER, usage="none")
    report = check_identity(ident(iss), NODE, NOW)
    assert report.ok and len(report.warnings) == 1 and "clientAuth" in report.warnings[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_of_another_certificate_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A key that belongs to a different certificate does not match."""
    mine = issue(backend, tmp_path / "a", now=NOW, cn=USER)
    other = issue(backend, tmp_path / "b", now=NOW, cn=USER)
    cfg = IdentityConfig(cert=str(mine.cert), key=str(other.key), ca=str(mine.ca))
    problem = only_problem(check_identity(cfg, NODE, NOW))
    assert problem.startswith(f"{other.key}: the private key does not match the certificate")


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_mode_0644_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A key readable by group and others is refused, with the chmod that fixes it."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER, key_mode=0o644)
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert f"{iss.key}: mode 0644 lets group or others read" in problem
    assert f"chmod 600 {iss.key}" in problem


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_pem_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A certificate file cut in the middle is reported as broken PEM, not raised."""
    iss = issue(backend, tmp_path, now=NOW, cn=USER)
    lines = iss.cert.read_bytes().splitlines()
    iss.cert.write_bytes(b"\n".join([*lines[:4], lines[-1]]) + b"\n")
    report = check_identity(ident(iss), NODE, NOW)
    assert only_problem(report).startswith(f"{iss.cert}: broken PEM certificate")
    assert report.not_after is None and report.subject is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_ca_that_did_not_sign_it_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A CA of the same name but another key did not sign the certificate."""
    mine = issue(backend, tmp_path / "a", now=NOW, cn=USER)
    impostor = issue(backend, tmp_path / "b", now=NOW, cn=USER)
    cfg = IdentityConfig(cert=str(mine.cert), key=str(mine.key), ca=str(impostor.ca))
    problem = only_problem(check_identity(cfg, NODE, NOW))
    assert problem.startswith(f"{mine.cert}: signature does not verify with the key of")
    assert str(impostor.ca) in problem


@pytest.mark.parametrize("backend", BACKENDS)
def test_ca_of_another_name_is_a_problem(tmp_path: Path, backend: Backend) -> None:
    """A CA bundle without the certificate's issuer says which issuer is missing."""
    mine = issue(backend, tmp_path / "a", now=NOW, cn=USER)
    other = issue(backend, tmp_path / "b", now=NOW, cn=USER, ca_name="other-ca")
    cfg = IdentityConfig(cert=str(mine.cert), key=str(mine.key), ca=str(other.ca))
    problem = only_problem(check_identity(cfg, NODE, NOW))
    assert "issued by 'CN=test-ca', which is not in" in problem


# --- more about the checks ---------------------------------------------------------------------


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    """Independent problems (CN, O, key mode, expiry) all appear in one report."""
    iss = issue(
        "cryptography",
        tmp_path,
        now=NOW,
        cn="someone",
        orgs=("x",),
        not_after=NOW - DAY,
        key_mode=0o640,
    )
    report = check_identity(ident(iss), NODE, NOW)
    kinds = ["expired at", "subject CN", "subject O", "mode 0640"]
    assert len(report.problems) == 4
    assert all(any(k in p for p in report.problems) for k in kinds)


def test_missing_files_are_problems_not_exceptions(tmp_path: Path) -> None:
    """Missing certificate, key and CA each give a sentence naming the path."""
    cfg = IdentityConfig(
        cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"), ca=str(tmp_path / "ca.pem")
    )
    report = check_identity(cfg, NODE, NOW)
    assert report.problems == (
        f"{tmp_path / 'c.pem'}: certificate file not found",
        f"{tmp_path / 'k.pem'}: private key file not found",
    )
    assert report.to_json()["not_after"] is None


GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "header only": b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    "bad base64 key": b"-----BEGIN PRIVATE KEY-----\nzz==zz\n-----END PRIVATE KEY-----\n",
    "huge": b"A" * (1024 * 1024 + 10),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_files_never_raise(tmp_path: Path, name: str) -> None:
    """Whatever the files hold, check_identity returns a report with problems."""
    data = GARBAGE[name]
    for f in ("c.pem", "k.pem", "ca.pem"):
        certgen.write(tmp_path / f, data, 0o600)
    cfg = IdentityConfig(
        cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"), ca=str(tmp_path / "ca.pem")
    )
    report = check_identity(cfg, NODE, NOW)
    assert not report.ok and len(report.problems) == 2
    assert all(p.startswith(str(tmp_path)) for p in report.problems)
    json.dumps(report.to_json())


@settings(max_examples=60, deadline=None)
@given(cert=st.binary(max_size=1500), key=st.binary(max_size=1500), armour=st.booleans())
def test_arbitrary_bytes_never_raise(cert: bytes, key: bytes, armour: bool) -> None:
    """Any bytes, bare or inside PEM armour, give a report with problems, never an exception."""
    if armour:
        cert = (
            b"-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(cert)
            + b"-----END CERTIFICATE-----\n"
        )
        key = (
            b"-----BEGIN PRIVATE KEY-----\n"
            + base64.encodebytes(key)
            + b"-----END PRIVATE KEY-----\n"
        )
    with tempfile.TemporaryDirectory() as d:
        paths = [
            certgen.write(Path(d) / n, data, 0o600)
            for n, data in (("c.pem", cert), ("k.pem", key), ("ca.pem", cert))
        ]
        cfg = IdentityConfig(cert=str(paths[0]), key=str(paths[1]), ca=str(paths[2]))
        report = check_identity(cfg, NODE, NOW)
    assert not report.ok and report.problems
    assert all("\n" not in p for p in report.problems)


def test_unexpected_errors_become_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a bug inside a check yields a report naming the certificate, not a traceback."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER)

    def boom(*args: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(identity_module, "_check_subject", boom)
    report = check_identity(ident(iss), NODE, NOW)
    assert report.problems == (f"{iss.cert}: cannot be checked: unexpected",)


def test_directory_and_swapped_files_are_problems(tmp_path: Path) -> None:
    """A directory as certificate and a certificate as key are named as such."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER)
    cfg = IdentityConfig(cert=str(tmp_path), key=str(iss.cert), ca=str(iss.ca))
    report = check_identity(cfg, NODE, NOW)
    assert report.problems == (
        f"{tmp_path}: certificate path is a directory, not a file",
        f"{iss.cert}: not a PEM private key (no BEGIN PRIVATE KEY block)",
    )


def test_fifo_and_device_do_not_hang(tmp_path: Path) -> None:
    """A FIFO or a device at the certificate path is a problem, not a blocked gate."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cfg = IdentityConfig(cert=str(fifo), key="/dev/zero")
    assert check_identity(cfg, NODE, NOW).problems == (
        f"{fifo}: certificate path is not a regular file",
        "/dev/zero: private key path is not a regular file",
    )


def test_encrypted_key_is_a_problem(tmp_path: Path) -> None:
    """A passphrase-protected key cannot be used by the agent."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER)
    key = serialization.load_pem_private_key(iss.key.read_bytes(), None)
    iss.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert problem == f"{iss.key}: the private key is encrypted; the agent needs it unencrypted"


def test_group_writable_key_is_a_problem(tmp_path: Path) -> None:
    """A key others may write (0620) is refused too: they could swap the identity."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER, key_mode=0o620)
    assert "mode 0620 lets group or others write" in only_problem(
        check_identity(ident(iss), NODE, NOW)
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_key_owned_by_another_user_is_a_problem(tmp_path: Path) -> None:
    """A key owned by someone other than the running user is refused."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER)
    os.chown(iss.key, 65534, -1)
    problem = only_problem(check_identity(ident(iss), NODE, NOW))
    assert problem == (
        f"{iss.key}: the private key is owned by uid 65534, not by the user "
        f"running agent-supervisor (uid {os.geteuid()})"
    )


def test_expired_ca_is_a_problem(tmp_path: Path) -> None:
    """A certificate whose CA has expired is refused, naming the CA file."""
    ca = certgen.make_ca(not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    leaf = certgen.make_cert(ca, cn=USER, not_before=NOW - 2 * DAY, not_after=NOW + 30 * DAY)
    cert = certgen.write(tmp_path / "c.pem", leaf.cert_pem)
    key = certgen.write(tmp_path / "k.pem", leaf.key_pem, 0o600)
    ca_path = certgen.write(tmp_path / "ca.pem", ca.cert_pem)
    cfg = IdentityConfig(cert=str(cert), key=str(key), ca=str(ca_path))
    problem = only_problem(check_identity(cfg, NODE, NOW))
    assert problem.startswith(f"{ca_path}: CA certificate 'CN=test-ca' expired at")


def test_intermediate_in_certificate_file_verifies(tmp_path: Path) -> None:
    """Leaf + intermediate in the certificate file chain to the root in the CA file."""
    root = certgen.make_ca("root", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    inter_pair = certgen.make_cert(
        root,
        cn="intermediate",
        orgs=(),
        not_before=NOW - DAY,
        not_after=NOW + 800 * DAY,
        usage="none",
        is_ca=True,
    )
    leaf = certgen.make_cert(inter_pair, cn=USER, not_before=NOW - DAY, not_after=NOW + 30 * DAY)
    key = certgen.write(tmp_path / "k.pem", leaf.key_pem, 0o600)
    ca_path = certgen.write(tmp_path / "ca.pem", root.cert_pem)
    chain = certgen.write(tmp_path / "chain.pem", leaf.cert_pem + inter_pair.cert_pem)
    alone = certgen.write(tmp_path / "alone.pem", leaf.cert_pem)
    ok = check_identity(IdentityConfig(str(chain), str(key), str(ca_path)), NODE, NOW)
    assert ok.ok, ok.problems
    bad = check_identity(IdentityConfig(str(alone), str(key), str(ca_path)), NODE, NOW)
    assert "issued by 'CN=intermediate', which is not in" in only_problem(bad)


def test_leaf_signed_by_a_non_ca_fails_path_validation(tmp_path: Path) -> None:
    """A certificate "issued" by a CA-less certificate in the bundle fails full validation."""
    fake_ca = certgen.make_cert(
        certgen.make_ca(not_before=NOW - DAY, not_after=NOW + DAY * 9),
        cn="not-a-ca",
        orgs=(),
        not_before=NOW - DAY,
        not_after=NOW + 90 * DAY,
        usage="none",
    )
    leaf = certgen.make_cert(fake_ca, cn=USER, not_before=NOW - DAY, not_after=NOW + 30 * DAY)
    cert = certgen.write(tmp_path / "c.pem", leaf.cert_pem)
    key = certgen.write(tmp_path / "k.pem", leaf.key_pem, 0o600)
    ca_path = certgen.write(tmp_path / "ca.pem", fake_ca.cert_pem)
    problem = only_problem(
        check_identity(IdentityConfig(str(cert), str(key), str(ca_path)), NODE, NOW)
    )
    assert problem.startswith(f"{cert}: chain does not verify against {ca_path}:")


def test_bundle_with_several_cas_and_rsa_key(tmp_path: Path) -> None:
    """An RSA client key and a CA bundle holding other CAs first still verify."""
    ca = certgen.make_ca(not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    other = certgen.make_ca("other", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    leaf = certgen.make_cert(
        ca,
        cn=USER,
        orgs=("extra", "cilium-agents"),
        not_before=NOW - DAY,
        not_after=NOW + 30 * DAY,
        key=certgen.new_key("rsa"),
    )
    cert = certgen.write(tmp_path / "c.pem", leaf.cert_pem)
    key = certgen.write(tmp_path / "k.pem", leaf.key_pem, 0o600)
    bundle = certgen.write(tmp_path / "ca.pem", other.cert_pem + ca.cert_pem)
    report = check_identity(IdentityConfig(str(cert), str(key), str(bundle)), NODE, NOW)
    assert report.ok, report.problems


def test_without_ca_the_chain_is_not_checked(tmp_path: Path) -> None:
    """With no identity.ca the other checks still run and pass."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER)
    report = check_identity(IdentityConfig(cert=str(iss.cert), key=str(iss.key)), NODE, NOW)
    assert report.ok and report.problems == ()


def test_user_template_and_group_are_configurable(tmp_path: Path) -> None:
    """identity.user and identity.group decide what CN and O must be."""
    iss = issue("cryptography", tmp_path, now=NOW, cn="agent-node-1", orgs=("net",))
    cfg = ident(iss, user="agent-{node_name}", group="net")
    assert check_identity(cfg, NODE, NOW).ok
    assert render_user("x{other}-{node_name}", "n") == "x{other}-n"


def test_report_json_shape(tmp_path: Path) -> None:
    """to_json has the documented keys, an ISO 8601 UTC not_after and whole days left."""
    iss = issue("cryptography", tmp_path, now=NOW, cn=USER, not_after=NOW + 10 * DAY + 60)
    doc = check_identity(ident(iss), NODE, NOW).to_json()
    assert set(doc) == {
        "ok",
        "problems",
        "warnings",
        "not_after",
        "seconds_left",
        "days_left",
        "subject",
    }
    assert doc["ok"] is True and doc["problems"] == [] and doc["days_left"] == 10
    assert doc["not_after"].endswith("Z") and doc["seconds_left"] == pytest.approx(
        10 * DAY + 60, abs=1
    )
    assert json.loads(json.dumps(doc)) == doc


def test_identity_message_is_one_line(tmp_path: Path) -> None:
    """The gate's refusal line names the first problem and counts the rest, on one line."""
    iss = issue("cryptography", tmp_path, now=NOW, cn="x", orgs=("y",))
    msg = identity_message(check_identity(ident(iss), NODE, NOW))
    assert "\n" not in msg and msg.startswith("bad agent identity: ")
    assert msg.endswith("(and 1 more)")
    good = issue("cryptography", tmp_path / "g", now=NOW, cn=USER)
    assert check_identity(ident(good), NODE, NOW).ok
    assert identity_message(CertReport(ok=False)) == "bad agent identity: identity check failed"


def test_importing_stays_light() -> None:
    """Importing the node modules and cli.node loads neither cryptography nor yaml."""
    code = (
        "import sys, supervisor.node.identity, supervisor.node.agentconfig, supervisor.cli.node, "
        "supervisor.node.credentials, supervisor.node.apf, supervisor.node.configimport; "
        "bad = [m for m in ('cryptography', 'yaml') if m in sys.modules]; "
        "sys.exit(','.join(bad) or None)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# --- CSR -----------------------------------------------------------------------------------------


def test_make_csr_writes_private_key_csr_and_manifest(tmp_path: Path) -> None:
    """A new EC key (0600), a CSR with CN=user and O=group, and a Kubernetes CSR manifest."""
    files = make_csr(
        tmp_path / "pki",
        user=USER,
        group="cilium-agents",
        node_name="Node_1",
        expiration_seconds=86400,
    )
    st = files.key.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(files.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == USER
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "cilium-agents"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == key.public_key().public_bytes(serialization.Encoding.DER, spki)
    manifest = yaml.safe_load(files.manifest.read_text())
    assert manifest["kind"] == "CertificateSigningRequest"
    assert manifest["metadata"]["name"] == "cilium-agent-node-1"
    assert manifest["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client"
    assert manifest["spec"]["usages"] == ["digital signature", "client auth"]
    assert manifest["spec"]["expirationSeconds"] == 86400
    assert base64.b64decode(manifest["spec"]["request"]) == files.csr.read_bytes()
    assert sorted(p.name for p in files.key.parent.iterdir()) == [
        "cilium-agent.csr",
        "cilium-agent.csr.yaml",
        "cilium-agent.key",
    ]


def test_make_csr_rsa(tmp_path: Path) -> None:
    """--key-type rsa makes an RSA key of the asked size and adds key encipherment."""
    files = make_csr(tmp_path, user=USER, group="g", node_name=NODE, key_type="rsa", rsa_bits=2048)
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert "key encipherment" in yaml.safe_load(files.manifest.read_text())["spec"]["usages"]


def test_make_csr_never_replaces_a_key_unasked(tmp_path: Path) -> None:
    """An existing key stays byte-identical unless overwrite is asked for."""
    first = make_csr(tmp_path, user=USER, group="g", node_name=NODE)
    before = first.key.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        make_csr(tmp_path, user=USER, group="g", node_name=NODE)
    assert first.key.read_bytes() == before
    second = make_csr(tmp_path, user=USER, group="g", node_name=NODE, overwrite=True)
    assert second.key.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_csr_signed_by_the_ca_passes_the_check(tmp_path: Path, backend: Backend) -> None:
    """A CSR from make_csr, signed by a CA (library or openssl ca), yields a valid identity."""
    files = make_csr(tmp_path / "pki", user=USER, group="cilium-agents", node_name=NODE)
    if backend == "cryptography":
        ca = certgen.make_ca(not_before=NOW - DAY, not_after=NOW + 900 * DAY)
        csr = x509.load_pem_x509_csr(files.csr.read_bytes())
        eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        # Sign the CSR's own subject, public key and requested usage, as a fleet PKI would.
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.fromtimestamp(NOW - DAY, UTC))
            .not_valid_after(datetime.fromtimestamp(NOW + 30 * DAY, UTC))
            .add_extension(eku, critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        cert_path = certgen.write(
            tmp_path / "cert.pem", cert.public_bytes(serialization.Encoding.PEM)
        )
        ca_path = certgen.write(tmp_path / "ca.pem", ca.cert_pem)
    else:
        ossl = certgen.OpenSSL(tmp_path / "openssl")
        ca_files = ossl.ca("test-ca", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
        subprocess.run(
            ["openssl", "req", "-verify", "-noout", "-in", str(files.csr)],
            check=True,
            capture_output=True,
        )
        cert_path = tmp_path / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                str(ca_files[0]),
                "-keyfile",
                str(ca_files[1]),
                "-in",
                str(files.csr),
                "-out",
                str(cert_path),
                "-days",
                "30",
                "-extensions",
                "v3_clientAuth",
                "-notext",
                "-preserveDN",
            ],
            cwd=ossl.dir,
            check=True,
            capture_output=True,
        )
        ca_path = ca_files[0]
    cfg = IdentityConfig(cert=str(cert_path), key=str(files.key), ca=str(ca_path))
    report = check_identity(cfg, NODE, time.time())
    assert report.ok, report.problems


def test_k8s_object_name() -> None:
    """Free text becomes a valid DNS subdomain name."""
    assert k8s_object_name("Cilium-Agent-Node_7.") == "cilium-agent-node-7"
    assert k8s_object_name("___") == "agent"


# --- kubeconfig and a real mutual-TLS handshake ------------------------------------------------


def test_render_kubeconfig_paths_are_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubeconfig names server, CA, cert and key with absolute paths and the agent's user."""
    monkeypatch.chdir(tmp_path)
    cfg = IdentityConfig(cert="pki/c.pem", key="pki/k.pem", ca="pki/ca.pem")
    doc = yaml.safe_load(render_kubeconfig(cfg, NODE, "https://10.0.0.1:6443"))
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]
    assert cluster == {
        "server": "https://10.0.0.1:6443",
        "certificate-authority": str(tmp_path / "pki/ca.pem"),
    }
    assert user == {
        "name": USER,
        "user": {
            "client-certificate": str(tmp_path / "pki/c.pem"),
            "client-key": str(tmp_path / "pki/k.pem"),
        },
    }
    assert doc["current-context"] == doc["contexts"][0]["name"]
    no_ca = yaml.safe_load(render_kubeconfig(IdentityConfig("c", "k"), NODE, "https://h"))
    assert "certificate-authority" not in no_ca["clusters"][0]["cluster"]


def test_write_kubeconfig_only_replaces_its_own_files(tmp_path: Path) -> None:
    """A foreign kubeconfig (the kubelet's) is never replaced without --force; ours is."""
    kubelet = tmp_path / "kubelet.kubeconfig"
    kubelet.write_text("apiVersion: v1\nkind: Config\n")
    text = render_kubeconfig(IdentityConfig("c", "k"), NODE, "https://h")
    with pytest.raises(UsageError, match="was not written by kubeconfig render"):
        write_kubeconfig(kubelet, text, force=False)
    assert kubelet.read_text() == "apiVersion: v1\nkind: Config\n"
    ours = tmp_path / "agent.kubeconfig"
    write_kubeconfig(ours, text, force=False)
    write_kubeconfig(ours, text.replace("https://h", "https://g"), force=False)
    assert "https://g" in ours.read_text() and ours.read_text().startswith(KUBECONFIG_MARKER)
    assert ours.stat().st_mode & 0o777 == 0o600
    write_kubeconfig(kubelet, text, force=True)
    assert kubelet.read_text() == text


@pytest.mark.parametrize("url", ["http://h:6443", "h:6443", "https://", "https://a b", ""])
def test_server_url_must_be_https(url: str) -> None:
    """Only https:// URLs are accepted for the apiserver, named in the error."""
    with pytest.raises(ConfigError, match="--server"):
        check_server_url(url, "--server")


def _tls_server(ca: Path, cert: Path, key: Path) -> tuple[int, list[str], threading.Thread]:
    """A one-connection TLS server on loopback that requires a client certificate.

    It answers the client's CN, and records "accepted:<CN>" or "refused:<error>".
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    results: list[str] = []

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    peer: Any = tls.getpeercert()
                    cn = next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")
                    tls.sendall(cn.encode())
                    results.append(f"accepted:{cn}")
            except (ssl.SSLError, OSError) as exc:
                results.append(f"refused:{exc}")
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], results, thread


def _tls_client(kubeconfig: Path) -> bytes:
    """Connect as the kubeconfig says (server, CA, client cert and key) and read the answer."""
    doc = yaml.safe_load(kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    host, port = cluster["server"].removeprefix("https://").rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        return tls.recv(200)


def test_mutual_tls_accepts_the_rendered_kubeconfig_and_rejects_a_bad_one(tmp_path: Path) -> None:
    """A loopback server requiring client certificates accepts the agent's, refuses a rogue's."""
    now = time.time()
    ca = certgen.make_ca(not_before=now - DAY, not_after=now + 900 * DAY)
    server = certgen.make_cert(
        ca,
        cn="apiserver",
        orgs=(),
        not_before=now - DAY,
        not_after=now + 30 * DAY,
        usage="serverAuth",
        san_ips=("127.0.0.1",),
    )
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_path = certgen.write(pki / "ca.pem", ca.cert_pem)
    srv_cert = certgen.write(pki / "srv.pem", server.cert_pem)
    srv_key = certgen.write(pki / "srv.key", server.key_pem, 0o600)
    good = certgen.make_cert(ca, cn=USER, not_before=now - DAY, not_after=now + 30 * DAY)
    certgen.write(pki / "agent.pem", good.cert_pem)
    certgen.write(pki / "agent.key", good.key_pem, 0o600)
    identity = IdentityConfig(
        cert=str(pki / "agent.pem"), key=str(pki / "agent.key"), ca=str(ca_path)
    )
    assert check_identity(identity, NODE, now).ok

    port, results, thread = _tls_server(ca_path, srv_cert, srv_key)
    kubeconfig = tmp_path / "agent.kubeconfig"
    write_kubeconfig(
        kubeconfig, render_kubeconfig(identity, NODE, f"https://127.0.0.1:{port}"), force=False
    )
    assert _tls_client(kubeconfig) == USER.encode()
    thread.join(10)
    assert results == [f"accepted:{USER}"]

    rogue_ca = certgen.make_ca(not_before=now - DAY, not_after=now + 900 * DAY)
    rogue = certgen.make_cert(rogue_ca, cn=USER, not_before=now - DAY, not_after=now + 30 * DAY)
    certgen.write(pki / "agent.pem", rogue.cert_pem)
    certgen.write(pki / "agent.key", rogue.key_pem, 0o600)
    assert not check_identity(identity, NODE, now).ok
    port, results, thread = _tls_server(ca_path, srv_cert, srv_key)
    write_kubeconfig(
        kubeconfig, render_kubeconfig(identity, NODE, f"https://127.0.0.1:{port}"), force=False
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        if not _tls_client(kubeconfig):
            raise ConnectionResetError("server closed the connection")
    thread.join(10)
    assert len(results) == 1 and results[0].startswith("refused:")


# --- APF -----------------------------------------------------------------------------------------


def test_apf_render_objects() -> None:
    """The YAML holds a Limited priority level with the queueing values and a ByUser FlowSchema."""
    text = render_apf(
        ApfSettings(
            group="agents",
            queues=64,
            hand_size=8,
            queue_length_limit=20,
            nominal_concurrency_shares=15,
            matching_precedence=900,
        )
    )
    assert text.startswith("# API Priority and Fairness")
    plc, fs = list(yaml.safe_load_all(text))
    assert plc["apiVersion"] == fs["apiVersion"] == "flowcontrol.apiserver.k8s.io/v1"
    assert plc["kind"] == "PriorityLevelConfiguration" and plc["spec"]["type"] == "Limited"
    limited = plc["spec"]["limited"]
    assert limited["nominalConcurrencyShares"] == 15
    assert limited["limitResponse"] == {
        "type": "Queue",
        "queuing": {"queues": 64, "handSize": 8, "queueLengthLimit": 20},
    }
    assert fs["kind"] == "FlowSchema"
    spec = fs["spec"]
    assert spec["priorityLevelConfiguration"] == {"name": plc["metadata"]["name"]}
    assert spec["distinguisherMethod"] == {"type": "ByUser"}
    assert spec["matchingPrecedence"] == 900
    assert spec["rules"][0]["subjects"] == [{"kind": "Group", "group": {"name": "agents"}}]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (ApfSettings(queues=4, hand_size=5), "--hand-size 5: must be 1..queues"),
        (ApfSettings(queues=512, hand_size=8), "60 bits of entropy"),
        (ApfSettings(queues=0), "--queues 0"),
        (ApfSettings(matching_precedence=1), "--matching-precedence 1"),
        (ApfSettings(queue_length_limit=0), "--queue-length-limit 0"),
        (ApfSettings(lendable_percent=101), "--lendable-percent 101"),
        (ApfSettings(name="Bad Name"), "--name 'Bad Name'"),
    ],
)
def test_apf_values_the_apiserver_would_reject_are_refused(
    settings: ApfSettings, match: str
) -> None:
    """Queueing values outside the apiserver's validation fail here, naming the option."""
    with pytest.raises(UsageError, match=match):
        render_apf(settings)
