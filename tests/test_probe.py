"""The control-plane probe against real HTTP(S) servers on 127.0.0.1 with real certificates."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from structlog.testing import capture_logs

from supervisor.base.log import get_logger
from supervisor.gate.probe import check_url, make_probe, probe_once
from supervisor.gate.service import Gate
from supervisor.storage.config import Config, IdentityConfig, ProbeConfig
from supervisor.storage.store import StateStore

NOW = dt.datetime.now(dt.UTC)


# --- a small certificate authority ----------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as objects and as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Issued(cert, key, cert_path, key_path)


def make_ca(directory: Path, cn: str) -> Issued:
    """A self-signed CA valid around now."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(directory, cn.replace(" ", "-"), cert, key)


def issue(ca: Issued, directory: Path, cn: str, *, server: bool, org: str | None = None) -> Issued:
    """A leaf signed by ``ca``: a server certificate for 127.0.0.1 or a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    stem = "server" if server else "client"
    return _write(directory, stem, cert, key)


@dataclass(frozen=True)
class Pki:
    """The cluster CA, a server and an agent certificate, and an unrelated CA."""

    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for this test module."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "cluster ca")
    return Pki(
        ca=ca,
        server=issue(ca, d, "kube-apiserver", server=True),
        client=issue(ca, d, "system:cilium-agent:node-1", server=False, org="cilium-agents"),
        other_ca=make_ca(d, "other ca"),
    )


# --- real servers ---------------------------------------------------------------------------


@dataclass
class Server:
    """A running server on 127.0.0.1 and what it has seen."""

    url: str
    requests: list[tuple[str, str | None]]
    release: threading.Event


def serve(behaviour: str, tls: ssl.SSLContext | None) -> Iterator[Server]:
    """Serve ``/readyz``: ``ok`` 200, ``fail`` 500, ``redirect`` 302, ``hang`` never answers."""
    seen: list[tuple[str, str | None]] = []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = None
            if isinstance(self.connection, ssl.SSLSocket):
                der = self.connection.getpeercert(binary_form=True)
                if der:
                    cert = x509.load_der_x509_certificate(der)
                    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
                    peer = str(cn)
            seen.append((self.path, peer))
            if behaviour == "hang":
                release.wait(10)
                return
            code, body = {
                "ok": (200, b"ok"),
                "fail": (500, b"[-]etcd failed\n"),
                "redirect": (302, b""),
            }[behaviour]
            self.send_response(code)
            if code == 302:
                self.send_header("Location", "/livez")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    scheme = "http"
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(f"{scheme}://127.0.0.1:{httpd.server_address[1]}/readyz", seen, release)
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def server_tls(pki: Pki, *, require_client: bool) -> ssl.SSLContext:
    """The apiserver side: its certificate, and (optionally) client certificates required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca.cert_path)
    return ctx


ServerFactory = Callable[..., Server]


@pytest.fixture
def start_server(pki: Pki) -> Iterator[ServerFactory]:
    """Start servers for one test and stop them all after it."""
    gens: list[Iterator[Server]] = []

    def start(behaviour: str = "ok", *, https: bool = True, require_client: bool = True) -> Server:
        gen = serve(behaviour, server_tls(pki, require_client=require_client) if https else None)
        gens.append(gen)
        return next(gen)

    yield start
    for gen in gens:
        for _ in gen:
            pass


def identity(pki: Pki, ca: Issued | None = None) -> IdentityConfig:
    """The agent's identity: its client certificate and key, and the CA to trust."""
    return IdentityConfig(
        cert=str(pki.client.cert_path),
        key=str(pki.client.key_path),
        ca=str((ca or pki.ca).cert_path),
    )


def config(*urls: str, ident: IdentityConfig | None = None, timeout: float = 2.0) -> Config:
    """A configuration with a probe on ``urls``."""
    return Config(
        cluster_size=100,
        node_name="node-1",
        probe=ProbeConfig(urls=urls, timeout=timeout),
        identity=ident,
    )


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The structured events logged during the test."""
    get_logger()  # configure first: a first configure inside capture_logs would undo it
    with capture_logs() as captured:
        yield captured


# --- tests ----------------------------------------------------------------------------------


def test_no_urls_no_probe() -> None:
    """Without probe.urls there is no probe: the gate behaves as it always did."""
    assert make_probe(Config(cluster_size=3)) is None


def test_healthy_over_mtls_presents_the_agents_certificate(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A 2xx over TLS verified with identity.ca is healthy; the server sees the agent's CN."""
    srv = start_server("ok")
    probe = make_probe(config(srv.url, ident=identity(pki)))
    assert probe is not None
    assert probe() is True
    assert srv.requests == [("/readyz", "system:cilium-agent:node-1")]
    assert [(e["event"], e["log_level"]) for e in logs] == [("probe.healthy", "info")]
    assert logs[0]["urls"] == [srv.url]


def test_http_500_is_unhealthy_and_says_why(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A 500 is unhealthy; the log names the URL, the status and the body's first words."""
    srv = start_server("fail")
    probe = make_probe(config(srv.url, ident=identity(pki)))
    assert probe is not None
    assert probe() is False
    assert [e["event"] for e in logs] == ["probe.unhealthy"]
    assert logs[0]["url"] == srv.url
    assert logs[0]["status"] == 500
    assert logs[0]["why"] == "HTTP 500 Internal Server Error: [-]etcd failed"


def test_hanging_server_is_unhealthy_within_the_timeout(
    pki: Pki, start_server: ServerFactory
) -> None:
    """A server that never answers is unhealthy once probe.timeout has passed, not later."""
    srv = start_server("hang")
    result = check_url(srv.url, 0.3, identity(pki))
    assert not result.healthy
    assert result.why == "timed out after 0.3 s"
    assert srv.requests == [("/readyz", "system:cilium-agent:node-1")]


def test_wrong_ca_is_unhealthy(pki: Pki, start_server: ServerFactory) -> None:
    """A server whose certificate does not chain to identity.ca is not trusted: unhealthy."""
    srv = start_server("ok")
    result = check_url(srv.url, 2.0, identity(pki, ca=pki.other_ca))
    assert not result.healthy
    assert result.why.startswith("TLS: ")
    assert "certificate" in result.why
    assert srv.requests == []


def test_missing_client_certificate_is_unhealthy(pki: Pki, start_server: ServerFactory) -> None:
    """Without [identity] the server that requires a client certificate refuses: unhealthy."""
    srv = start_server("ok")
    result = check_url(srv.url, 2.0, None)
    assert not result.healthy
    assert srv.requests == []


def test_unreadable_identity_is_unhealthy_naming_the_files(pki: Pki, tmp_path: Path) -> None:
    """A missing key file makes the probe unhealthy with the paths, never an exception."""
    bad = replace(identity(pki), key=str(tmp_path / "missing.key"))
    result = check_url("https://127.0.0.1:9/readyz", 1.0, bad)
    assert not result.healthy
    assert str(tmp_path / "missing.key") in result.why
    assert "BEGIN" not in result.why


def test_connection_refused_is_unhealthy(start_server: ServerFactory) -> None:
    """Nothing listening is unhealthy; the reason is the system's."""
    srv = start_server("ok", https=False)
    port = srv.url.split(":")[2].split("/")[0]
    srv.release.set()
    result = check_url(f"http://127.0.0.1:{int(port) ^ 1}/readyz", 1.0)
    assert not result.healthy
    assert result.why


def test_every_url_must_be_healthy_and_the_first_failure_stops(
    pki: Pki, start_server: ServerFactory
) -> None:
    """All URLs 2xx is healthy; after the first failing URL the others are not asked."""
    ok, bad, later = start_server("ok"), start_server("fail"), start_server("ok")
    ident = identity(pki)
    assert all(r.healthy for r in probe_once((ok.url, later.url), 2.0, ident))
    results = probe_once((ok.url, bad.url, later.url), 2.0, ident)
    assert [r.healthy for r in results] == [True, False]
    assert len(later.requests) == 1  # only from the first, all-healthy probe


def test_plain_http_redirects_and_other_schemes(start_server: ServerFactory) -> None:
    """Plain http works; a redirect is not followed (unhealthy); ftp is unhealthy, not an error."""
    srv = start_server("ok", https=False)
    assert check_url(srv.url, 1.0).healthy
    moved = start_server("redirect", https=False)
    result = check_url(moved.url, 1.0)
    assert (result.healthy, result.status) == (False, 302)
    assert moved.requests == [("/readyz", None)]
    assert check_url("ftp://127.0.0.1/readyz", 1.0).why == "not an http(s) URL"


def test_gate_refuses_after_a_failed_run_while_the_probe_says_down(
    pki: Pki, start_server: ServerFactory, tmp_path: Path
) -> None:
    """Wired into the gate: a failed run plus an unhealthy control plane waits for the slot."""
    srv = start_server("fail")
    cfg = replace(config(srv.url, ident=identity(pki)), state_dir=tmp_path / "state")
    store = StateStore(cfg.state_dir)
    now = time.time()
    with store.transaction("cilium-agent", now - 7200) as tx:
        tx.write(tx.state.record_start(now - 7200).record_exit(now - 7100, 1), now - 7100)
    gate = Gate(cfg, "cilium-agent", store=store, probe=make_probe(cfg), inspect=None)
    result = gate.decide(now=now)
    assert not result.decision.allowed
    assert result.decision.next_allowed_at is not None
    assert now < result.decision.next_allowed_at <= now + result.decision.window_seconds
    assert len(srv.requests) == 1
