"""The control-plane probe (invariant 11) against real servers on 127.0.0.1: HTTP(S) servers
with real certificates, and a real etcd for the kvstore's range POST.

Timings carry margins of several times (a slow answer sleeps 1.5 s against a max_latency of
0.3 s and a timeout of 5 s): the machine is a loaded 2-core box.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REQUIRE_ROOT_TESTS, skip_or_fail
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from probeservers import ETCD, Etcd, Relay, Talker, parse_response, split_request
from structlog.testing import capture_logs

from supervisor.base.log import get_logger
from supervisor.gate import probe as probe_module
from supervisor.gate.probe import (
    BROKEN_HINT,
    MAX_BODY,
    SKIPPED_HINT,
    ProbeReport,
    ProbeResult,
    check_url,
    classify_error,
    etcd_range_body,
    make_probe,
    prefix_end,
    probe_once,
)
from supervisor.storage.config import Config, IdentityConfig, ProbeConfig

NOW = dt.datetime.now(dt.UTC)
#: Generous bounds for answers that must be fast or slow: several times apart.
FAST = 1.0  # max_latency when the answer must be "ready"
SLOW_LIMIT = 0.3  # max_latency when the answer must be "loaded"
SLOW = 1.5  # how long a slow server sleeps
TIMEOUT = 5.0


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


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


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


def issue(
    ca: Issued,
    directory: Path,
    cn: str,
    *,
    server: bool,
    org: str | None = None,
    stem: str | None = None,
    names: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> Issued:
    """A leaf signed by ``ca``: a server certificate for ``names`` or a client certificate."""
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
            x509.SubjectAlternativeName([_san(n) for n in names]),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    return _write(directory, stem or ("server" if server else "client"), cert, key)


@dataclass(frozen=True)
class Pki:
    """The cluster CA, servers, the agent's certificate (and its renewal), and strangers."""

    ca: Issued
    server: Issued
    client: Issued
    renewed: Issued
    elsewhere: Issued  # a server certificate for another host name
    other_ca: Issued
    stranger: Issued  # a client certificate signed by other_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for this test module."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "cluster ca")
    other = make_ca(d, "other ca")
    return Pki(
        ca=ca,
        server=issue(ca, d, "kube-apiserver", server=True),
        client=issue(ca, d, "system:cilium-agent:node-1", server=False, org="cilium-agents"),
        renewed=issue(ca, d, "system:cilium-agent:node-1-renewed", server=False, stem="renewed"),
        elsewhere=issue(
            ca, d, "elsewhere", server=True, stem="elsewhere", names=("elsewhere.invalid",)
        ),
        other_ca=other,
        stranger=issue(other, d, "stranger", server=False, stem="stranger"),
    )


# --- real servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What a test server answers, and how slowly."""

    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # before the status line
    body_delay: float = 0.0  # between the headers and the body
    hang: bool = False  # never answers (until the test ends)
    close: bool = False  # closes the connection without an answer


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it; ``peer`` is the client certificate's CN."""

    method: str
    path: str
    body: bytes
    peer: str | None
    accept: str | None = None


@dataclass
class Server:
    """A running server on 127.0.0.1 and what it has seen."""

    base: str
    path: str
    requests: list[Seen]

    @property
    def url(self) -> str:
        return self.base + self.path


def serve(reply: Reply, path: str, tls: ssl.SSLContext | None) -> Iterator[Server]:
    """Answer every request with ``reply``; stop when the generator is closed."""
    seen: list[Seen] = []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            peer = None
            if isinstance(self.connection, ssl.SSLSocket):
                der = self.connection.getpeercert(binary_form=True)
                if der:
                    cert = x509.load_der_x509_certificate(der)
                    peer = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append(Seen(self.command, self.path, body, peer, self.headers.get("Accept")))
            if reply.hang:
                release.wait(30)
                return
            if reply.close:
                return  # HTTP/1.0: the connection closes, nothing was said
            if reply.delay:
                release.wait(reply.delay)
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.body_delay:
                release.wait(reply.body_delay)
            self.wfile.write(reply.body)

        do_GET = do_POST = answer

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
        yield Server(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", path, seen)
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def server_tls(
    pki: Pki, *, require_client: bool, cert: Issued | None = None, tls12: bool = False
) -> ssl.SSLContext:
    """The apiserver side: its certificate, and (optionally) client certificates required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert = cert or pki.server
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca.cert_path)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


ServerFactory = Callable[..., Server]


@pytest.fixture
def start_server(pki: Pki) -> Iterator[ServerFactory]:
    """Start servers for one test and stop them all after it."""
    gens: list[Iterator[Server]] = []

    def start(
        reply: Reply | None = None,
        *,
        path: str = "/readyz",
        https: bool = True,
        require_client: bool = True,
        cert: Issued | None = None,
        tls12: bool = False,
    ) -> Server:
        tls = (
            server_tls(pki, require_client=require_client, cert=cert, tls12=tls12)
            if https
            else None
        )
        gen = serve(reply or Reply(), path, tls)
        gens.append(gen)
        return next(gen)

    yield start
    for gen in gens:
        for _ in gen:
            pass


def identity(pki: Pki, ca: Issued | None = None, client: Issued | None = None) -> IdentityConfig:
    """The agent's identity: its client certificate and key, and the CA to trust."""
    client = client or pki.client
    return IdentityConfig(
        cert=str(client.cert_path), key=str(client.key_path), ca=str((ca or pki.ca).cert_path)
    )


def config(
    *urls: str,
    ident: IdentityConfig | None = None,
    timeout: float = TIMEOUT,
    max_latency: float = FAST,
) -> Config:
    """A configuration with a probe on ``urls``."""
    return Config(
        cluster_size=100,
        node_name="node-1",
        probe=ProbeConfig(urls=urls, timeout=timeout, max_latency=max_latency),
        identity=ident,
    )


def check(url: str, ident: IdentityConfig | None = None, **kw: float) -> ProbeResult:
    """check_url with the test defaults (timeout 5 s, max_latency 1 s) unless given; every
    result says why in one non-empty line."""
    result = check_url(
        url, kw.get("timeout", TIMEOUT), ident, max_latency=kw.get("max_latency", FAST)
    )
    assert result.why and result.why == " ".join(result.why.split())
    return result


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The structured events logged during the test."""
    get_logger()  # configure first: a first configure inside capture_logs would undo it
    with capture_logs() as captured:
        yield captured


def events(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    """(event, level) of each captured log event."""
    return [(e["event"], e["log_level"]) for e in logs]


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections are refused, and no
    one else can take it while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture
def talker() -> Iterator[Callable[[bytes], Talker]]:
    """Start raw TCP servers that answer fixed bytes, and stop them after the test."""
    started: list[Talker] = []

    def start(answer: bytes) -> Talker:
        started.append(Talker(answer))
        return started[-1]

    yield start
    for t in started:
        t.close()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full, as an overloaded
    server's: the kernel drops further SYNs, so a connection attempt hangs."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            fillers.append(s)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
        time.sleep(0.2)  # the handshakes of the fillers complete (loopback)
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


# --- ready, loaded, and latency ---------------------------------------------------------------


def test_no_urls_no_probe() -> None:
    """Without probe.urls there is no probe: the gate behaves as it always did."""
    assert make_probe(Config(cluster_size=3)) is None


def test_ready_over_mtls_presents_the_agents_certificate(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A fast 2xx over TLS verified with identity.ca is ready; the server sees the agent's CN."""
    srv = start_server()
    probe = make_probe(config(srv.url, ident=identity(pki)))
    assert probe is not None
    report = probe()
    assert report.answer == "ready"
    [result] = report.results
    assert (result.url, result.status) == (srv.url, 200)
    assert result.latency is not None and 0 < result.latency < FAST
    assert report.why == result.why == f"HTTP 200 in {result.latency:.3f} s"
    assert srv.requests == [Seen("GET", "/readyz", b"", "system:cilium-agent:node-1", "*/*")]
    assert events(logs) == [("probe.ready", "info")]
    assert logs[0]["urls"] == [srv.url]
    assert logs[0]["latency"] == result.latency


def test_renewed_certificate_is_presented_on_the_next_probe(
    pki: Pki, start_server: ServerFactory, tmp_path: Path
) -> None:
    """The TLS context is built per probe: a certificate renewed in place is the one sent."""
    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    shutil.copy(pki.client.cert_path, cert)
    shutil.copy(pki.client.key_path, key)
    ident = IdentityConfig(cert=str(cert), key=str(key), ca=str(pki.ca.cert_path))
    srv = start_server()
    probe = make_probe(config(srv.url, ident=ident))
    assert probe is not None
    assert probe().answer == "ready"
    shutil.copy(pki.renewed.cert_path, cert)
    shutil.copy(pki.renewed.key_path, key)
    assert probe().answer == "ready"
    assert [s.peer for s in srv.requests] == [
        "system:cilium-agent:node-1",
        "system:cilium-agent:node-1-renewed",
    ]


def test_slow_2xx_is_loaded(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A 2xx slower than max_latency (but within the timeout) is loaded, logged as a warning."""
    srv = start_server(Reply(delay=SLOW))
    probe = make_probe(config(srv.url, ident=identity(pki), max_latency=SLOW_LIMIT))
    assert probe is not None
    report = probe()
    assert report.answer == "loaded"
    [result] = report.results
    assert result.status == 200
    assert result.latency is not None and SLOW <= result.latency < TIMEOUT
    assert result.why.endswith("slower than probe.max_latency 0.3 s")
    assert events(logs) == [("probe.loaded", "warning")]
    assert logs[0]["url"] == srv.url
    assert (logs[0]["status"], logs[0]["latency"], logs[0]["why"]) == (
        200,
        result.latency,
        result.why,
    )


def test_the_same_answer_fast_is_ready(pki: Pki, start_server: ServerFactory) -> None:
    """The same server without the sleep answers within max_latency: ready, not loaded."""
    srv = start_server(Reply())
    result = check(srv.url, identity(pki))
    assert result.answer == "ready"
    assert result.latency is not None and result.latency < FAST


def test_latency_runs_until_the_body_is_read(pki: Pki, start_server: ServerFactory) -> None:
    """Headers at once but the body after a known sleep: the latency includes the sleep."""
    srv = start_server(Reply(body_delay=SLOW))
    result = check(srv.url, identity(pki), max_latency=SLOW_LIMIT)
    assert result.answer == "loaded"
    assert result.latency is not None and SLOW <= result.latency < TIMEOUT


def test_429_is_loaded_and_says_when_to_retry(pki: Pki, start_server: ServerFactory) -> None:
    """API Priority and Fairness rejects with 429: loaded, with its Retry-After and message."""
    body = b'{"kind":"Status","message":"Too many requests, please try again later.","code":429}'
    srv = start_server(
        Reply(429, body, headers=(("Retry-After", "1"),)),
        path="/apis/cilium.io/v2/ciliumnodes?limit=1",
    )
    result = check(srv.url, identity(pki))
    assert (result.answer, result.status) == ("loaded", 429)
    assert result.why.startswith("HTTP 429 Too Many Requests (Retry-After 1): ")
    assert "Too many requests, please try again later." in result.why
    assert srv.requests[0].path == "/apis/cilium.io/v2/ciliumnodes?limit=1"
    assert srv.requests[0].accept == "application/json"


# --- down -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 504, 408])
def test_5xx_and_408_are_down(pki: Pki, start_server: ServerFactory, status: int) -> None:
    """A 5xx (the apiserver cannot reach etcd) or 408 is down, with the status and the body."""
    srv = start_server(Reply(status, b"[-]etcd failed\n"))
    result = check(srv.url, identity(pki))
    assert (result.answer, result.status) == ("down", status)
    assert result.why.startswith(f"HTTP {status} ")
    assert result.why.endswith(": [-]etcd failed")


def test_connection_refused_is_down(refused_port: int) -> None:
    """Nothing listening is down; the reason is the system's."""
    result = check(f"http://127.0.0.1:{refused_port}/readyz")
    assert (result.answer, result.status, result.why) == ("down", None, "Connection refused")


def test_connection_closed_without_an_answer_is_down(start_server: ServerFactory) -> None:
    """A server that closes the connection without answering is down."""
    srv = start_server(Reply(close=True), https=False)
    result = check(srv.url)
    assert result.answer == "down"
    assert result.why == "the server closed the connection without an answer"
    assert len(srv.requests) == 1


def test_hanging_server_is_down_once_the_timeout_has_passed(
    pki: Pki, start_server: ServerFactory
) -> None:
    """A server that never answers is down after probe.timeout, not later."""
    srv = start_server(Reply(hang=True))
    began = time.monotonic()
    result = check_url(srv.url, 0.5, identity(pki), max_latency=0.2)
    assert time.monotonic() - began < 0.5 * 6
    assert (result.answer, result.status) == ("down", None)
    assert result.why == "timed out after 0.5 s waiting for the answer"
    assert result.latency is not None and result.latency >= 0.5
    assert [s.peer for s in srv.requests] == ["system:cilium-agent:node-1"]


def test_one_deadline_covers_every_stage(pki: Pki, start_server: ServerFactory) -> None:
    """Headers after 2.5 s, then a body that never comes: down at the one 3 s deadline, not
    after a fresh timeout for the body (5.5 s)."""
    srv = start_server(Reply(delay=2.5, body_delay=30))
    began = time.monotonic()
    result = check_url(srv.url, 3.0, identity(pki), max_latency=1.0)
    took = time.monotonic() - began
    assert result.answer == "down"
    assert result.why == "timed out after 3 s reading the answer"
    assert 3.0 <= took < 4.5


def test_a_listener_that_never_accepts_is_down_after_the_timeout(full_backlog: int) -> None:
    """A full accept queue (an overloaded server) leaves the connection hanging: down."""
    result = check_url(f"http://127.0.0.1:{full_backlog}/readyz", 1.0, max_latency=0.5)
    assert (result.answer, result.why) == ("down", "timed out after 1 s connecting")


def test_the_status_decides_even_if_the_error_body_stalls(start_server: ServerFactory) -> None:
    """A 503 whose body never comes is down with its status, not a timeout."""
    srv = start_server(Reply(503, b"etcd down", body_delay=30), https=False)
    result = check_url(srv.url, 1.0, max_latency=0.5)
    assert (result.answer, result.status) == ("down", 503)
    assert result.why == "HTTP 503 Service Unavailable"


# --- broken ------------------------------------------------------------------------------------


def test_wrong_ca_is_broken(pki: Pki, start_server: ServerFactory) -> None:
    """A server whose certificate does not chain to identity.ca is not trusted: broken."""
    srv = start_server()
    result = check(srv.url, identity(pki, ca=pki.other_ca))
    assert (result.answer, result.status) == ("broken", None)
    assert result.why.startswith("TLS verification failed: ")
    assert "certificate" in result.why  # OpenSSL's words vary with the chain it saw
    assert srv.requests == []


def test_wrong_host_name_is_broken(pki: Pki, start_server: ServerFactory) -> None:
    """A server certificate issued by the right CA for another name is broken, not trusted."""
    srv = start_server(cert=pki.elsewhere)
    result = check(srv.url, identity(pki))
    assert result.answer == "broken"
    assert result.why.startswith("TLS verification failed: ")
    assert "mismatch" in result.why and "127.0.0.1" in result.why
    assert srv.requests == []


def test_client_certificate_the_server_rejects_is_broken(
    pki: Pki, start_server: ServerFactory
) -> None:
    """A client certificate the server does not trust (etcd's client-cert-auth) is broken."""
    # TLS 1.2: the server checks the client certificate within the handshake, so its alert
    # reaches the client there. (Under TLS 1.3 it comes after the handshake, racing the
    # request; kube-apiserver itself answers 401 instead, which is tested below.)
    srv = start_server(tls12=True)
    result = check(srv.url, identity(pki, client=pki.stranger))
    assert result.answer == "broken"
    assert result.why.startswith("TLS: [SSL: ")
    assert "alert unknown ca" in result.why
    assert result.why.endswith("; the server rejects the client certificate (identity.cert)")
    assert srv.requests == []


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "the server does not accept the probe's credentials (identity.cert)"),
        (403, "the probe's identity may not read this URL (RBAC)"),
        (404, "no such path on this server"),
        (400, "the server rejects the request"),
    ],
)
def test_401_403_404_and_other_4xx_are_broken(
    pki: Pki, start_server: ServerFactory, status: int, hint: str
) -> None:
    """Unauthorised, forbidden, no such path, a bad request: waiting cannot fix it: broken."""
    srv = start_server(Reply(status, b'{"kind":"Status"}'), path="/api/v1/pods?limit=1")
    result = check(srv.url, identity(pki))
    assert (result.answer, result.status) == ("broken", status)
    assert result.why.startswith(f"HTTP {status} ")
    assert result.why.endswith(f"; {hint}")


def test_redirect_is_broken_and_names_the_target_without_credentials(
    start_server: ServerFactory,
) -> None:
    """A 301 is not followed (a redirect means a wrong URL): broken, naming where it leads."""
    srv = start_server(
        Reply(301, b"", headers=(("Location", "http://who:pw-123@elsewhere.invalid/readyz"),)),
        https=False,
    )
    result = check(srv.url)
    assert (result.answer, result.status) == ("broken", 301)
    assert result.why == (
        "HTTP 301 Moved Permanently to http://***@elsewhere.invalid/readyz; "
        "a redirect means a wrong URL"
    )
    assert len(srv.requests) == 1


def test_https_url_on_a_plain_http_port_is_broken(
    pki: Pki, talker: Callable[[bytes], Talker]
) -> None:
    """An https URL on a plain-HTTP port (Go's 400 to a TLS hello) is broken, with a hint."""
    plain = talker(
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    )
    result = check(f"https://127.0.0.1:{plain.port}/readyz", identity(pki))
    assert result.answer == "broken"
    assert "WRONG_VERSION_NUMBER" in result.why
    assert result.why.endswith("; is this port TLS? (an https URL for a plain http port)")


def test_a_server_that_does_not_speak_http_is_broken(talker: Callable[[bytes], Talker]) -> None:
    """A URL that leads to another protocol (an SSH banner) is a malformed answer: broken."""
    ssh = talker(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    result = check(f"http://127.0.0.1:{ssh.port}/readyz")
    assert result.answer == "broken"
    assert result.why.startswith("malformed answer: BadStatusLine: ")
    assert ssh.connections == 1


def test_unknown_host_is_broken() -> None:
    """A host name that does not resolve (``.invalid`` never does) is broken, not down.

    Costs one DNS query to the configured resolver; no connection is made anywhere.
    """
    result = check("https://apiserver.invalid:6443/readyz")
    assert (result.answer, result.status) == ("broken", None)
    assert result.why.startswith("unknown host apiserver.invalid: ")


def test_a_resolver_that_does_not_answer_is_down_not_broken() -> None:
    """A temporary resolver failure (EAI_AGAIN) is DNS down, not a wrong name: down."""
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert classify_error(again, "apiserver") == (
        "down",
        "cannot resolve apiserver now: Temporary failure in name resolution",
    )
    assert classify_error(unknown, "apiserver") == (
        "broken",
        "unknown host apiserver: Name or service not known",
    )


def test_a_host_name_is_resolved(pki: Pki, start_server: ServerFactory) -> None:
    """``localhost`` (a name, resolved within the deadline) reaches the server on 127.0.0.1."""
    srv = start_server()
    port = srv.base.rsplit(":", 1)[1]
    result = check(f"https://localhost:{port}/readyz", identity(pki))
    assert result.answer == "ready"
    assert len(srv.requests) == 1


def test_missing_key_is_broken_naming_the_files(
    pki: Pki, start_server: ServerFactory, tmp_path: Path
) -> None:
    """An unreadable key makes the probe broken with the paths, never an exception."""
    srv = start_server()
    bad = replace(identity(pki), key=str(tmp_path / "missing.key"))
    result = check(srv.url, bad)
    assert (result.answer, result.status, result.latency) == ("broken", None, None)
    assert result.why.startswith(
        f"identity.cert {pki.client.cert_path} / identity.key {tmp_path / 'missing.key'}: "
    )
    assert "No such file or directory" in result.why
    assert srv.requests == []


def test_key_that_does_not_match_the_certificate_is_broken(
    pki: Pki, start_server: ServerFactory
) -> None:
    """Another certificate's key is broken, and says so without a byte of either key."""
    srv = start_server()
    bad = replace(identity(pki), key=str(pki.stranger.key_path))
    result = check(srv.url, bad)
    assert result.answer == "broken"
    assert "KEY_VALUES_MISMATCH" in result.why
    assert result.why.endswith("(unreadable, or the key does not match the certificate)")
    assert "BEGIN" not in result.why
    assert srv.requests == []


def test_garbage_key_is_broken_without_its_content(pki: Pki, tmp_path: Path) -> None:
    """A key file that is not a key is broken; its content never reaches ``why``."""
    key = tmp_path / "agent.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nSECRET-MATERIAL\n-----END PRIVATE KEY-----\n")
    result = check("https://127.0.0.1:9/readyz", replace(identity(pki), key=str(key)))
    assert result.answer == "broken"
    assert str(key) in result.why
    assert "SECRET" not in result.why and "BEGIN" not in result.why


def test_unreadable_ca_is_broken(pki: Pki, tmp_path: Path) -> None:
    """A CA file that cannot be read is broken, naming it."""
    result = check(
        "https://127.0.0.1:9/readyz",
        identity(pki, ca=replace(pki.ca, cert_path=tmp_path / "no-ca.crt")),
    )
    assert result.answer == "broken"
    assert result.why.startswith(f"identity.ca {tmp_path / 'no-ca.crt'}: ")


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Sign in</body></html>", b"[]", b'{"kind": "CiliumNodeList", "items"'],
)
def test_malformed_answer_on_an_api_path_is_broken(
    pki: Pki, start_server: ServerFactory, body: bytes
) -> None:
    """A 2xx on a Kubernetes API path that is not a JSON object (a proxy's page) is broken."""
    srv = start_server(Reply(200, body), path="/apis/cilium.io/v2/ciliumnodes?limit=1")
    result = check(srv.url, identity(pki))
    assert (result.answer, result.status) == ("broken", 200)
    assert result.why.startswith("malformed answer: expected a JSON object, got ")


def test_json_list_on_an_api_path_is_ready(pki: Pki, start_server: ServerFactory) -> None:
    """A small list from the apiserver is ready, asked as JSON with the query kept."""
    body = json.dumps({"kind": "PodList", "apiVersion": "v1", "items": [{}]}).encode()
    srv = start_server(Reply(200, body), path="/api/v1/namespaces/kube-system/pods?limit=1")
    result = check(srv.url, identity(pki))
    assert (result.answer, result.status) == ("ready", 200)
    assert srv.requests == [
        Seen(
            "GET",
            "/api/v1/namespaces/kube-system/pods?limit=1",
            b"",
            "system:cilium-agent:node-1",
            "application/json",
        )
    ]


def test_large_json_answer_is_read_only_in_part(pki: Pki, start_server: ServerFactory) -> None:
    """A list larger than MAX_BODY is read to MAX_BODY and judged by its start: ready."""
    body = json.dumps({"kind": "PodList", "items": ["x" * (2 * MAX_BODY)]}).encode()
    srv = start_server(Reply(200, body), path="/api/v1/pods?limit=1")
    assert check(srv.url, identity(pki)).answer == "ready"


def test_readyz_text_is_not_parsed(start_server: ServerFactory) -> None:
    """``/readyz`` answering plain ``ok`` is ready: only API and etcd paths must be JSON."""
    srv = start_server(Reply(200, b"ok"), https=False)
    result = check(srv.url)
    assert (result.answer, result.status) == ("ready", 200)
    assert srv.requests == [Seen("GET", "/readyz", b"", None, "*/*")]


def test_urls_that_are_not_http_are_broken() -> None:
    """ftp, a missing host or an impossible port is broken, and never raises."""
    assert check("ftp://127.0.0.1/readyz") == ProbeResult(
        "ftp://127.0.0.1/readyz", "broken", why="not an http(s) URL"
    )
    assert check("https:///readyz").why == "not an http(s) URL"
    bad_port = check("https://127.0.0.1:99999/readyz")
    assert bad_port.answer == "broken"
    assert bad_port.why.startswith("not a valid URL: ")


def test_credentials_in_the_url_are_redacted(
    start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A password written into a URL never reaches a result or a log line."""
    srv = start_server(Reply(503, b"down"), https=False)
    url = srv.url.replace("http://", "http://probe:s3cret-pw@")
    probe = make_probe(config(url))
    assert probe is not None
    report = probe()
    assert report.answer == "down"
    assert report.results[0].url == srv.url.replace("http://", "http://***@")
    assert "s3cret-pw" not in repr(report) and "s3cret-pw" not in repr(logs)
    assert logs[0]["url"] == report.results[0].url


# --- etcd: the range POST ------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("key", "end"),
    [
        (b"cilium/state/identities/v1/", b"cilium/state/identities/v10"),
        (b"a", b"b"),
        (b"ab\xfe", b"ab\xff"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\x01\xff", b"\x02"),
        (b"\xff", b"\x00"),
        (b"\xff\xff", b"\x00"),
    ],
)
def test_prefix_end_is_etcds(key: bytes, end: bytes) -> None:
    """The range end increments the last byte below 0xff and drops what follows, as
    clientv3.GetPrefixRangeEnd; all-0xff keys range to the end of the keyspace (0x00)."""
    assert prefix_end(key) == end


def test_range_body_for_a_prefix() -> None:
    """key + prefix=true asks for one key of the prefix, keys only."""
    body = json.loads(etcd_range_body("key=cilium/state/identities/v1/&prefix=true"))
    assert body == {
        "key": b64(b"cilium/state/identities/v1/"),
        "range_end": b64(b"cilium/state/identities/v10"),
        "limit": 1,
        "keys_only": True,
    }


def test_range_body_for_one_key_and_percent_encoded_bytes() -> None:
    """Without prefix there is no range end; percent-encoded bytes (0xff) are the key's."""
    assert json.loads(etcd_range_body("key=cilium/heartbeat")) == {
        "key": b64(b"cilium/heartbeat"),
        "limit": 1,
        "keys_only": True,
    }
    assert json.loads(etcd_range_body("key=a%FF&prefix=1"))["range_end"] == b64(b"b")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "etcd range: no key in the query (add ?key=PREFIX&prefix=true)"),
        ("key=&prefix=true", "etcd range: no key in the query (add ?key=PREFIX&prefix=true)"),
        ("key=a&perfix=true", "etcd range: unknown query parameter 'perfix' (use key, prefix)"),
        ("key=a&prefix=yes", "etcd range: prefix='yes' is neither true nor false"),
    ],
)
def test_range_body_refuses_what_it_cannot_ask(query: str, message: str) -> None:
    """No key, an unknown parameter (a typo) or a prefix that is not a boolean: ValueError."""
    with pytest.raises(ValueError) as raised:
        etcd_range_body(query)
    assert str(raised.value) == message


def test_range_url_without_a_key_is_broken_and_asks_nothing(start_server: ServerFactory) -> None:
    """An etcd range URL without ?key= is broken, and says so, before any request."""
    srv = start_server(path="/v3/kv/range", https=False)
    result = check(srv.url)
    assert (result.answer, result.status) == ("broken", None)
    assert result.why == "etcd range: no key in the query (add ?key=PREFIX&prefix=true)"
    assert srv.requests == []


@pytest.mark.parametrize("prefix", ["/v3", "/v3beta", "/v3alpha"])
def test_range_url_is_a_post_of_the_body(start_server: ServerFactory, prefix: str) -> None:
    """Every gateway version's range path is POSTed with the JSON body, its query dropped."""
    answer = b'{"header":{"revision":"7"},"count":"0"}'
    srv = start_server(
        Reply(200, answer), path=f"{prefix}/kv/range?key=k/&prefix=true", https=False
    )
    result = check(srv.url)
    assert result.answer == "ready"
    [seen] = srv.requests
    assert (seen.method, seen.path, seen.accept) == (
        "POST",
        f"{prefix}/kv/range",
        "application/json",
    )
    assert seen.body == etcd_range_body("key=k/&prefix=true")


@pytest.mark.parametrize("answer", [b'{"error":"x"}', b'{"header":"x"}', b"ok"])
def test_range_answer_without_a_header_is_broken(
    start_server: ServerFactory, answer: bytes
) -> None:
    """A 2xx to a range that is not etcd's (no header object) is a wrong URL: broken."""
    srv = start_server(Reply(200, answer), path="/v3/kv/range?key=k", https=False)
    result = check(srv.url)
    assert (result.answer, result.status) == ("broken", 200)
    assert result.why.startswith("malformed answer: expected a JSON object with a header")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """An etcd of this test's own on 127.0.0.1, stopped (by its pid) however the test ends."""
    if shutil.which(ETCD) is None:
        skip_or_fail("etcd is not installed (apt-get install etcd-server)", REQUIRE_ROOT_TESTS)
    server = Etcd(tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


IDENTITIES = b"cilium/state/identities/v1/"


def test_real_etcd_range_is_ready_and_was_a_post(etcd: Etcd) -> None:
    """Against a real etcd the range is a POST of the right body, answered ready: one key
    (keys only) of exactly the keys under the prefix."""
    inside = [IDENTITIES + b"id/1", IDENTITIES + b"id/2", IDENTITIES + b"id/3"]
    outside = [b"cilium/state/identities/v10", b"cilium/state/nodes/v1/node-1"]
    for key in inside + outside:
        etcd.put(key, b'{"labels":"x"}')
    relay = Relay(("127.0.0.1", etcd.client_port))
    relay.start()
    try:
        url = f"http://127.0.0.1:{relay.port}/v3/kv/range?key={IDENTITIES.decode()}&prefix=true"
        result = check(url)
    finally:
        relay.close()
    assert (result.answer, result.status) == ("ready", 200)
    line, headers, body = split_request(bytes(relay.sent))
    assert line == "POST /v3/kv/range HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "key": b64(IDENTITIES),
        "range_end": b64(b"cilium/state/identities/v10"),
        "limit": 1,
        "keys_only": True,
    }
    status, answer = parse_response(bytes(relay.received))
    doc = json.loads(answer)
    assert status == 200 and isinstance(doc["header"], dict)
    assert doc["count"] == "3"  # the range is exactly the prefix: v10 and nodes are outside
    assert [base64.b64decode(kv["key"]) for kv in doc["kvs"]] == [inside[0]]
    assert "value" not in doc["kvs"][0]


def test_real_etcd_stopped_is_down(etcd: Etcd) -> None:
    """The same range against an etcd that was stopped is down (refused), not broken."""
    url = f"{etcd.url}/v3/kv/range?key={IDENTITIES.decode()}&prefix=true"
    assert check(url).answer == "ready"
    etcd.stop()
    result = check(url)
    assert (result.answer, result.why) == ("down", "Connection refused")


# --- several URLs ------------------------------------------------------------------------------


def test_all_ready_is_ready(pki: Pki, start_server: ServerFactory) -> None:
    """Every URL ready is ready, and every URL was asked once."""
    a, b = start_server(), start_server()
    report = probe_once((a.url, b.url), TIMEOUT, identity(pki), max_latency=FAST)
    assert report.answer == "ready"
    assert [r.answer for r in report.results] == ["ready", "ready"]
    assert report.why == report.results[1].why
    assert (len(a.requests), len(b.requests)) == (1, 1)


def test_first_down_decides_and_stops_the_round(pki: Pki, start_server: ServerFactory) -> None:
    """After the first down URL the others are not asked: an outage costs one request."""
    ok, bad, later = start_server(), start_server(Reply(503, b"")), start_server()
    report = probe_once((ok.url, bad.url, later.url), TIMEOUT, identity(pki), max_latency=FAST)
    assert report.answer == "down"
    assert [r.answer for r in report.results] == ["ready", "down"]
    assert report.why == report.results[1].why
    assert later.requests == []


def test_first_loaded_decides_and_stops_the_round(pki: Pki, start_server: ServerFactory) -> None:
    """A loaded URL decides as a down one does; the later (down) URL is not asked."""
    busy, dead = start_server(Reply(429, b"")), start_server(Reply(503, b""))
    report = probe_once((busy.url, dead.url), TIMEOUT, identity(pki), max_latency=FAST)
    assert report.answer == "loaded"
    assert [r.answer for r in report.results] == ["loaded"]
    assert dead.requests == []


def test_broken_urls_are_skipped_and_reported(pki: Pki, start_server: ServerFactory) -> None:
    """A broken URL does not decide: the next one does, and the broken one is still reported."""
    wrong, ok = start_server(Reply(404, b"")), start_server()
    report = probe_once((wrong.url, ok.url), TIMEOUT, identity(pki), max_latency=FAST)
    assert report.answer == "ready"
    assert [r.answer for r in report.results] == ["broken", "ready"]
    assert report.broken == (report.results[0],)
    assert report.deciding == report.results[1]


def test_broken_then_down_is_down(pki: Pki, start_server: ServerFactory) -> None:
    """A broken URL before a down one: down."""
    forbidden, dead = start_server(Reply(403, b"")), start_server(Reply(500, b""))
    report = probe_once((forbidden.url, dead.url), TIMEOUT, identity(pki), max_latency=FAST)
    assert report.answer == "down"
    assert [r.answer for r in report.results] == ["broken", "down"]


def test_every_url_broken_is_broken(pki: Pki, start_server: ServerFactory) -> None:
    """When every URL asked is broken the answer is broken, and the first one says why."""
    a, b = start_server(Reply(401, b"")), start_server(Reply(404, b""))
    report = probe_once((a.url, b.url), TIMEOUT, identity(pki), max_latency=FAST)
    assert report.answer == "broken"
    assert [r.status for r in report.results] == [401, 404]
    assert report.why == report.results[0].why


def test_no_url_is_broken() -> None:
    """A round over no URL asked nothing: broken (the gate decides as without a probe)."""
    report = probe_once((), TIMEOUT, max_latency=FAST)
    assert report == ProbeReport("broken", ())
    assert report.why == "no URL was asked"


# --- the gate's probe: logs and never raising ---------------------------------------------------


def test_down_is_logged_as_a_warning(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A down round logs probe.down with the URL, the status, the latency and why."""
    srv = start_server(Reply(500, b"[-]etcd failed\n"))
    probe = make_probe(config(srv.url, ident=identity(pki)))
    assert probe is not None
    report = probe()
    assert report.answer == "down"
    assert events(logs) == [("probe.down", "warning")]
    r = report.results[0]
    assert {k: logs[0][k] for k in ("url", "status", "latency", "why")} == {
        "url": srv.url,
        "status": 500,
        "latency": r.latency,
        "why": "HTTP 500 Internal Server Error: [-]etcd failed",
    }


def test_broken_is_logged_as_an_error_with_what_the_gate_does(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A broken round logs probe.broken (error) per URL, saying the gate ignores the probe."""
    srv = start_server(Reply(403, b"forbidden"), path="/api/v1/pods?limit=1")
    probe = make_probe(config(srv.url, ident=identity(pki)))
    assert probe is not None
    report = probe()
    assert report.answer == "broken"
    assert events(logs) == [("probe.broken", "error")]
    assert {k: logs[0][k] for k in ("url", "status", "why", "hint")} == {
        "url": srv.url,
        "status": 403,
        "why": report.why,
        "hint": BROKEN_HINT,
    }
    assert BROKEN_HINT == "the gate decides as if no probe were configured"


def test_a_skipped_broken_url_is_logged_before_the_answer(
    pki: Pki, start_server: ServerFactory, logs: list[MutableMapping[str, Any]]
) -> None:
    """A broken URL among others is logged as broken (skipped), then the round's answer."""
    wrong, busy = start_server(Reply(404, b"")), start_server(Reply(429, b""))
    probe = make_probe(config(wrong.url, busy.url, ident=identity(pki)))
    assert probe is not None
    assert probe().answer == "loaded"
    assert events(logs) == [("probe.broken", "error"), ("probe.loaded", "warning")]
    assert (logs[0]["url"], logs[0]["hint"]) == (wrong.url, SKIPPED_HINT)
    assert logs[1]["url"] == busy.url


def test_the_probe_never_raises(
    monkeypatch: pytest.MonkeyPatch, logs: list[MutableMapping[str, Any]]
) -> None:
    """A failure inside the probe itself is a broken answer, logged, never an exception."""

    def explode(*args: object, **kwargs: object) -> ProbeReport:
        raise RuntimeError("bug")

    monkeypatch.setattr(probe_module, "probe_once", explode)
    probe = make_probe(config("http://u:pw@127.0.0.1:9/readyz"))
    assert probe is not None
    report = probe()
    assert report == ProbeReport(
        "broken",
        (
            ProbeResult(
                "http://***@127.0.0.1:9/readyz", "broken", why="the probe failed: RuntimeError: bug"
            ),
        ),
    )
    assert events(logs) == [("probe.broken", "error")]
