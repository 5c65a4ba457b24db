"""Does the control plane serve, and how fast? One request per URL, four answers (invariant 11).

The gate asks this before a start that the probe could change. The answer
(:data:`~supervisor.core.answers.ProbeAnswer`) is one of:

* ``"ready"``: a 2xx within ``probe.max_latency``, measured from before the connection to after
  the (bounded) body is read: admit the start at its slot;
* ``"loaded"``: HTTP 429, or a 2xx slower than ``probe.max_latency``: the control plane serves,
  but queues or sheds; a full resync now would add to the queue, so the start waits;
* ``"down"``: refused, reset, timed out (one deadline of ``probe.timeout`` per URL, across name
  resolution, connection, TLS, request and answer), 408 or 5xx, or a resolver that does not
  answer now (``EAI_AGAIN``: DNS is down, the name is not wrong);
* ``"broken"``: the probe's own configuration cannot succeed: an unknown host name, a TLS
  verification failure, an unreadable or mismatched client certificate or key, 401/403, a
  redirect (a wrong URL), 404 or any other 4xx, a malformed answer, a URL that is not http(s).
  Waiting would not change it, so it is loud (``probe.broken``, an error) and the gate decides
  as if no probe were configured: a wrong URL or CA pushed to every node cannot hold the fleet.

What to point it at: where the agents' resync queues, so that it queues (or is rejected) where
they are.

* kube-apiserver: a plain GET of a small list, e.g.
  ``https://apiserver:6443/apis/cilium.io/v2/ciliumnodes?limit=1`` or
  ``/api/v1/namespaces/kube-system/pods?limit=1``. TLS verifies the server with ``identity.ca``
  and presents the agent's own client certificate, so API Priority and Fairness classifies the
  probe under the agents' FlowSchema and queues it, or rejects it with 429, exactly as it would
  the agents. Not ``/readyz``, ``/livez`` or ``/healthz``: the ``probes`` FlowSchema that
  kube-apiserver installs sends those to the ``exempt`` priority level, which is never queued
  nor rejected, so they answer fast while the agents' lists wait; they tell "down" from "up"
  and nothing about load.
* etcd (the kvstore): its JSON gateway takes POST. A URL whose path ends in ``/v3/kv/range``
  (or ``/v3beta/kv/range``, ``/v3alpha/kv/range``) is sent as a POST whose body is built from
  the query: ``.../v3/kv/range?key=cilium/state/identities/v1/&prefix=true`` asks for one key
  of that prefix, keys only (:func:`etcd_range_body`). It is a linearizable read (etcd's
  default), so it needs the leader and waits behind what etcd is serving. The same
  ``identity`` is presented to every https URL: an etcd that wants another client
  certificate answers with a TLS alert, which is "broken".

A 2xx from an etcd range URL or a Kubernetes API path (``/api/...``, ``/apis/...``) must be a
JSON object (for etcd, with a ``"header"`` object), or the URL does not lead where it should (a
proxy's login page, a wrong port): "broken". Other URLs are not parsed.

Several URLs are asked in order; the first "down" or "loaded" decides and ends the round (an
outage costs one timeout, not one per URL); "broken" URLs are reported and skipped; if every URL
asked was broken the answer is "broken", else "ready".

And always:

* one request per URL per decision, never a retry loop: the caller decides when to ask again;
* one bounded deadline per URL, so a hanging control plane (or DNS) cannot hang the gate;
* the TLS context is built for every probe, so a certificate renewed while a gate waits is the
  one presented;
* it never raises, and it reports the URL (credentials redacted) and why in one line, never key
  material.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes, urlsplit

from supervisor.base.catalog import EventId
from supervisor.base.log import get_logger
from supervisor.core.answers import ProbeAnswer
from supervisor.storage.config import Config, IdentityConfig

#: The most of a body read (and, for a JSON answer, parsed): the probe asks for small lists.
MAX_BODY: Final = 64 * 1024
#: Characters of a failing answer's body kept in ``why`` (``/readyz?verbose`` says what is down).
BODY_SNIPPET: Final = 200
USER_AGENT: Final = "agent-supervisor-probe"
#: Paths of etcd's JSON gateway that range over keys (the gateway's prefix moved with versions).
ETCD_RANGE_PATHS: Final = ("/v3/kv/range", "/v3beta/kv/range", "/v3alpha/kv/range")

#: The log event of each answer (a stable id per answer, for log pipelines to count).
EVENTS: Final[Mapping[ProbeAnswer, EventId]] = {
    "ready": EventId.PROBE_READY,
    "loaded": EventId.PROBE_LOADED,
    "down": EventId.PROBE_DOWN,
    "broken": EventId.PROBE_BROKEN,
}
#: What the gate does about a "broken" answer, said where it is logged.
BROKEN_HINT: Final = "the gate decides as if no probe were configured"
#: ... and about a broken URL among others that answered.
SKIPPED_HINT: Final = "this URL is skipped; the other URLs decide"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One URL's answer; ``why`` says what it saw in one line, ``latency`` is in seconds."""

    url: str  # credentials redacted
    answer: ProbeAnswer
    status: int | None = None
    latency: float | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """The whole probe's answer, with each URL asked, in order."""

    answer: ProbeAnswer
    results: tuple[ProbeResult, ...]

    @property
    def deciding(self) -> ProbeResult | None:
        """The result that gave the answer: the one that stopped the round ("down",
        "loaded"), the last "ready" one, or the first of all-"broken" ones."""
        if self.answer == "broken":
            return self.results[0] if self.results else None
        return next((r for r in reversed(self.results) if r.answer == self.answer), None)

    @property
    def broken(self) -> tuple[ProbeResult, ...]:
        """The URLs whose configuration cannot succeed, whatever the answer (to report)."""
        return tuple(r for r in self.results if r.answer == "broken")

    @property
    def why(self) -> str:
        """The deciding result's why, for logs and status."""
        deciding = self.deciding
        return deciding.why if deciding is not None else "no URL was asked"


#: The gate's probe: one round over the configured URLs.
Probe = Callable[[], ProbeReport]


class _Broken(Exception):
    """The probe's own configuration cannot succeed; the message says why."""


# --- the request -----------------------------------------------------------------------------


def prefix_end(key: bytes) -> bytes:
    """The end of the range of every key that starts with ``key`` (etcd's GetPrefixRangeEnd).

    The last byte that is not 0xff is incremented and what follows it dropped; a key of only
    0xff bytes has no such end, and etcd's answer is ``b"\\x00"``: every key from ``key`` on.
    """
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def etcd_range_body(query: str) -> bytes:
    """The JSON body of an etcd range request, from a URL's query (``key``, ``prefix``).

    ``key=cilium/state/identities/v1/&prefix=true`` asks for the first key under that prefix:
    ``{"key": b64(key), "range_end": b64(prefix_end(key)), "limit": 1, "keys_only": true}``.
    Keys are percent-decoded to bytes. Raises ValueError without a key, or for an unknown
    parameter (a typo such as ``perfix`` would silently ask for one key instead of a prefix).
    """
    params: dict[str, bytes] = {}
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if name not in ("key", "prefix"):
            raise ValueError(f"etcd range: unknown query parameter {name!r} (use key, prefix)")
        params[name] = unquote_to_bytes(value.replace("+", " "))
    key = params.get("key", b"")
    if not key:
        raise ValueError("etcd range: no key in the query (add ?key=PREFIX&prefix=true)")
    flag = params.get("prefix", b"false").decode("ascii", "replace").lower()
    if flag not in ("true", "false", "1", "0"):
        raise ValueError(f"etcd range: prefix={flag!r} is neither true nor false")
    body: dict[str, Any] = {"key": base64.b64encode(key).decode("ascii")}
    if flag in ("true", "1"):
        body["range_end"] = base64.b64encode(prefix_end(key)).decode("ascii")
    body.update(limit=1, keys_only=True)
    return json.dumps(body, separators=(",", ":")).encode()


def _kind(path: str) -> str:
    """How the answer is read: ``etcd`` (a range), ``kube`` (an API path), or ``plain``."""
    if path.endswith(ETCD_RANGE_PATHS):
        return "etcd"
    if path in ("/api", "/apis") or path.startswith(("/api/", "/apis/")):
        return "kube"
    return "plain"


def _no_password() -> bytes:
    # An encrypted key must fail loudly, not make OpenSSL prompt on the gate's terminal.
    return b""


def tls_context(identity: IdentityConfig | None) -> ssl.SSLContext:
    """Verify the server (with ``identity.ca`` when set) and present the agent's certificate.

    Raises :class:`_Broken` naming the file that cannot be used (never its content).
    """
    ca = identity.ca if identity is not None else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise _Broken(f"identity.ca {ca}: {_describe(exc)}") from None
    if identity is not None:
        try:
            ctx.load_cert_chain(identity.cert, identity.key, password=_no_password)
        except (OSError, ssl.SSLError) as exc:
            raise _Broken(
                f"identity.cert {identity.cert} / identity.key {identity.key}: "
                f"{_describe(exc)} (unreadable, or the key does not match the certificate)"
            ) from None
    return ctx


# --- one URL ---------------------------------------------------------------------------------


class _Deadline:
    """What is left of one URL's ``timeout``, and which stage is running (for ``why``)."""

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.start = clock()
        self.at = self.start + timeout
        self.stage = "starting"

    def left(self, stage: str) -> float:
        """Enter ``stage``; raise TimeoutError if no time is left for it."""
        self.stage = stage
        left = self.at - self.clock()
        if left <= 0:
            raise TimeoutError
        return left

    def arm(self, sock: socket.socket, stage: str) -> None:
        """Give ``sock``'s next blocking calls what is left, so stages cannot add up."""
        sock.settimeout(self.left(stage))

    def elapsed(self) -> float:
        return self.clock() - self.start


def _resolve(host: str, port: int, deadline: _Deadline) -> list[Any]:
    """``getaddrinfo`` within the deadline. A literal address needs no lookup; a name is
    resolved on a daemon thread, because getaddrinfo has no timeout of its own and a resolver
    that does not answer would hold the gate for the resolver's retries (5 s each, several)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=lookup, name="probe-resolve", daemon=True)
    thread.start()
    thread.join(deadline.left("resolving the host name"))
    if not box:
        raise TimeoutError
    if isinstance(box[0], BaseException):
        raise box[0]
    return list(box[0])


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first address of ``host`` that accepts, within the deadline."""
    error: OSError = ConnectionError(f"no address for {host}")
    for family, kind, proto, _, addr in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            deadline.arm(sock, "connecting")
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
        else:
            return sock
    raise error


def _read_body(
    resp: http.client.HTTPResponse, sock: socket.socket, deadline: _Deadline, limit: int
) -> bytes:
    """At most ``limit`` bytes of the body, each read bounded by what is left of the deadline
    (``read`` would wait for all of them with a fresh timeout per chunk)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        deadline.arm(sock, "reading the answer")
        chunk = resp.read1(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _one_line(text: str, limit: int = BODY_SNIPPET) -> str:
    return " ".join(text.split())[:limit]


def _describe(exc: BaseException) -> str:
    """An exception in one line, without a traceback (and never file content)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc.reason)
    if isinstance(exc, ssl.SSLError):
        # "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1006)": the source
        # line of the C module says nothing to an operator.
        text = str(exc.strerror or exc.reason or exc)
        return _one_line(text.partition(" (_ssl.c:")[0])
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def classify_error(exc: BaseException, host: str) -> tuple[ProbeAnswer, str]:
    """What an exception while asking means: "down" if the control plane (or the path to it)
    may answer later, "broken" if the probe's configuration cannot succeed."""
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_AGAIN:
            # The resolver did not answer: DNS is down, not the name wrong.
            return "down", f"cannot resolve {host} now: {_describe(exc)}"
        return "broken", f"unknown host {host}: {_describe(exc)}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "broken", f"TLS verification failed: {_describe(exc)}"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "down", f"TLS: the server closed the connection ({_describe(exc)})"
    if isinstance(exc, ssl.SSLError):
        # An alert from the server (it rejects the client certificate), or no common protocol
        # (an https URL on a plain port): configuration either way.
        reason = str(exc.reason or "")
        hint = ""
        if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            hint = "; the server rejects the client certificate (identity.cert)"
        elif reason == "WRONG_VERSION_NUMBER":
            hint = "; is this port TLS? (an https URL for a plain http port)"
        return "broken", f"TLS: {_describe(exc)}{hint}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "down", "the server closed the connection without an answer"
    if isinstance(exc, http.client.IncompleteRead):
        return "down", "the answer was cut short"
    if isinstance(exc, http.client.HTTPException):
        return "broken", f"malformed answer: {_describe(exc)}"
    if isinstance(exc, OSError):
        # Refused, reset, unreachable: the server or the network may come back.
        return "down", _describe(exc) or type(exc).__name__
    return "broken", f"the probe failed: {_describe(exc)}"


def classify_status(status: int) -> tuple[ProbeAnswer, str]:
    """What a status other than 2xx means, with a hint at what to fix when "broken"."""
    if status == 429:
        return "loaded", "the server sheds load (API Priority and Fairness rejects with 429)"
    if status == 408 or 500 <= status < 600:
        return "down", ""
    if status == 401:
        return "broken", "the server does not accept the probe's credentials (identity.cert)"
    if status == 403:
        return "broken", "the probe's identity may not read this URL (RBAC)"
    if 300 <= status < 400:
        return "broken", "a redirect means a wrong URL"
    if status == 404:
        return "broken", "no such path on this server"
    if 400 <= status < 500:
        return "broken", "the server rejects the request"
    return "broken", "not an HTTP status the probe understands"


def _malformed(kind: str, body: bytes) -> str | None:
    """Why a 2xx body is not what the URL's kind promises, or None when it is."""
    if kind == "plain":
        return None
    expected = "a JSON object with a header" if kind == "etcd" else "a JSON object"
    if len(body) > MAX_BODY:
        # Too long to parse here (ask for a small list); check only that it starts as one.
        ok = body.lstrip().startswith(b"{")
        return None if ok else f"malformed answer: expected {expected}"
    try:
        doc = json.loads(body)
    except ValueError:
        snippet = _one_line(body.decode("utf-8", "replace"), 60)
        return f"malformed answer: expected {expected}, got {snippet!r}"
    if not isinstance(doc, dict):
        return f"malformed answer: expected {expected}, got JSON {type(doc).__name__}"
    if kind == "etcd" and not isinstance(doc.get("header"), dict):
        return f"malformed answer: expected {expected}, got keys {sorted(doc)[:5]}"
    return None


@dataclass(frozen=True, slots=True)
class _Request:
    """What to send for one URL, and how to read its answer (``kind``, :func:`_kind`)."""

    method: str
    path: str
    body: bytes | None
    headers: Mapping[str, str]
    host: str
    port: int
    https: bool
    kind: str


def _request(url: str) -> _Request:
    """The request for ``url``: a GET, or for an etcd range URL a POST of its query as JSON.

    Built before any connection, so that a URL that cannot succeed is "broken" at once, without
    spending the deadline; raises :class:`_Broken` saying why.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise _Broken(f"not a valid URL: {_describe(exc)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Broken("not an http(s) URL")
    path = parts.path or "/"
    kind = _kind(path)
    method, body = "GET", None
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if kind == "etcd":
        try:
            method, body = "POST", etcd_range_body(parts.query)
        except ValueError as exc:
            raise _Broken(str(exc)) from None
        headers.update({"Accept": "application/json", "Content-Type": "application/json"})
    else:
        if parts.query:
            path += "?" + parts.query
        if kind == "kube":
            headers["Accept"] = "application/json"
    https = parts.scheme == "https"
    return _Request(method, path, body, headers, parts.hostname, port, https, kind)


def _connection(
    req: _Request, ctx: ssl.SSLContext | None, sock: socket.socket
) -> http.client.HTTPConnection:
    """An HTTP(S) connection over ``sock``, which is connected (and wrapped) already within the
    deadline: http.client would otherwise connect again, with a timeout of its own."""
    if ctx is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            req.host, req.port, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(req.host, req.port)
    conn.sock = sock  # connected and armed: http.client uses it as it is
    return conn


def _answer_body(resp: http.client.HTTPResponse, sock: socket.socket, deadline: _Deadline) -> bytes:
    """The body as far as the answer needs it: a 2xx body whole (one byte more than
    :data:`MAX_BODY` says it is too long to parse), a failing one only for words in ``why``."""
    if 200 <= resp.status < 300:
        return _read_body(resp, sock, deadline, MAX_BODY + 1)
    # The status has decided; the body only adds words to ``why`` (best effort).
    try:
        return _read_body(resp, sock, deadline, 4 * BODY_SNIPPET)
    except (OSError, http.client.HTTPException):
        return b""


def _served(
    shown: str, kind: str, status: int, data: bytes, latency: float, max_latency: float
) -> ProbeResult:
    """A 2xx: "broken" when the body is not what the URL's kind promises (the URL leads
    elsewhere), "loaded" when slower than ``max_latency`` (the control plane queues), else
    "ready"."""
    took = f"HTTP {status} in {latency:.3f} s"
    bad = _malformed(kind, data)
    if bad is not None:
        return ProbeResult(shown, "broken", status, latency, bad)
    if latency > max_latency:
        why = f"{took}, slower than probe.max_latency {max_latency:g} s"
        return ProbeResult(shown, "loaded", status, latency, why)
    return ProbeResult(shown, "ready", status, latency, took)


def _refused_why(resp: http.client.HTTPResponse, data: bytes, hint: str) -> str:
    """A status other than 2xx in one line, with what helps to fix it: where a redirect leads
    (credentials redacted), the server's Retry-After, the start of the body (``/readyz?verbose``
    says what is down) and the hint of :func:`classify_status`."""
    why = f"HTTP {resp.status} {resp.reason}".strip()
    location = resp.getheader("Location")
    if location:
        why += f" to {_one_line(redact(location))}"
    retry = resp.getheader("Retry-After")
    if retry:
        why += f" (Retry-After {_one_line(retry, 20)})"
    snippet = _one_line(data[:BODY_SNIPPET].decode("utf-8", "replace"))
    if snippet:
        why += f": {snippet}"
    if hint:
        why += f"; {hint}"
    return why


def _failed(
    shown: str, exc: Exception, host: str, deadline: _Deadline | None, timeout: float
) -> ProbeResult:
    """An exception while asking, as an answer: a timeout says in which stage the deadline ran
    out (resolving, connecting, TLS, ...), which says where to look; anything else is what
    :func:`classify_error` makes of it."""
    spent = None if deadline is None else deadline.elapsed()
    if isinstance(exc, TimeoutError) and deadline is not None:
        why = f"timed out after {timeout:g} s {deadline.stage}"
        return ProbeResult(shown, "down", None, spent, why)
    answer, why = classify_error(exc, host)
    return ProbeResult(shown, answer, None, spent, why)


def check_url(
    url: str,
    timeout: float,
    identity: IdentityConfig | None = None,
    *,
    max_latency: float,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Ask ``url`` once and say what the answer means; never raises.

    One deadline of ``timeout`` seconds covers name resolution, connection, TLS, request and
    the answer. Redirects are not followed. The latency runs from before the connection to
    after the body (at most :data:`MAX_BODY`) is read.
    """
    shown = redact(url)
    deadline: _Deadline | None = None
    host = "?"
    conn: http.client.HTTPConnection | None = None
    sock: socket.socket | None = None
    resp: http.client.HTTPResponse | None = None
    try:
        req = _request(url)
        host = req.host
        ctx = tls_context(identity) if req.https else None

        deadline = _Deadline(timeout, clock)
        sock = _connect(host, req.port, deadline)
        if ctx is not None:
            deadline.arm(sock, "in the TLS handshake")
            sock = ctx.wrap_socket(sock, server_hostname=host)
        conn = _connection(req, ctx, sock)
        deadline.arm(sock, "sending the request")
        conn.request(req.method, req.path, body=req.body, headers=req.headers)
        deadline.arm(sock, "waiting for the answer")
        resp = conn.getresponse()
        data = _answer_body(resp, sock, deadline)
        latency = deadline.elapsed()
        if 200 <= resp.status < 300:
            return _served(shown, req.kind, resp.status, data, latency, max_latency)
        answer, hint = classify_status(resp.status)
        return ProbeResult(shown, answer, resp.status, latency, _refused_why(resp, data, hint))
    except _Broken as exc:
        return ProbeResult(shown, "broken", why=str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure is an answer, never an exception
        return _failed(shown, exc, host, deadline, timeout)
    finally:
        # The response holds the socket once http.client hands it over (Connection: close):
        # close all three, or the socket is left to the garbage collector.
        for closable in (resp, conn, sock):
            if closable is not None:
                closable.close()


# --- several URLs ----------------------------------------------------------------------------


def summarize(results: tuple[ProbeResult, ...]) -> ProbeAnswer:
    """The answer of a round: the first "down" or "loaded" decides; else "ready" if any URL
    was, and "broken" if every URL asked was (or none was asked)."""
    for result in results:
        if result.answer in ("down", "loaded"):
            return result.answer
    return "ready" if any(r.answer == "ready" for r in results) else "broken"


def probe_once(
    urls: Sequence[str],
    timeout: float,
    identity: IdentityConfig | None = None,
    *,
    max_latency: float,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeReport:
    """Ask the URLs in order; the first "down" or "loaded" ends the round and decides."""
    results: list[ProbeResult] = []
    for url in urls:
        result = check_url(url, timeout, identity, max_latency=max_latency, clock=clock)
        results.append(result)
        if result.answer in ("down", "loaded"):
            break
    done = tuple(results)
    return ProbeReport(summarize(done), done)


def redact(url: str) -> str:
    """The URL without user:password@ (credentials never go into a log line)."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url
        return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
    except ValueError:
        # Not even parsable: keep what follows the last "@", which cannot be a password.
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url


def log_report(report: ProbeReport) -> None:
    """Log a round: ``probe.broken`` (error) for each broken URL, then the answer's event."""
    log = get_logger()
    hint = BROKEN_HINT if report.answer == "broken" else SKIPPED_HINT
    for r in report.broken:
        log.error(EVENTS["broken"], url=r.url, status=r.status, why=r.why, hint=hint)
    if report.answer == "ready":
        latencies = [r.latency for r in report.results if r.answer == "ready"]
        log.info(
            EVENTS["ready"],
            urls=[r.url for r in report.results if r.answer == "ready"],
            latency=max((x for x in latencies if x is not None), default=None),
        )
    elif report.answer in ("loaded", "down"):
        r = report.results[-1]
        log.warning(EVENTS[report.answer], url=r.url, status=r.status, latency=r.latency, why=r.why)


def make_probe(cfg: Config) -> Probe | None:
    """The gate's probe for this configuration, or None when no ``probe.urls`` are set.

    Each call asks the URLs (:func:`probe_once`), logs the round (:func:`log_report`) and
    returns the :class:`ProbeReport`; it never raises: a failure of the probe itself is a
    "broken" answer.
    """
    urls = tuple(cfg.probe.urls)
    if not urls:
        return None
    timeout, max_latency, identity = cfg.probe.timeout, cfg.probe.max_latency, cfg.identity

    def probe() -> ProbeReport:
        try:
            report = probe_once(urls, timeout, identity, max_latency=max_latency)
        except Exception as exc:  # noqa: BLE001 - a probe must never take the gate down
            why = f"the probe failed: {_describe(exc)}"
            report = ProbeReport("broken", (ProbeResult(redact(urls[0]), "broken", why=why),))
        # A log that cannot be written changes nothing about the answer.
        with contextlib.suppress(Exception):
            log_report(report)
        return report

    return probe
