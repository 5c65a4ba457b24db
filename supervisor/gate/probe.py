"""Is the control plane up? One short GET per configured URL, asked only when it matters.

The gate asks this after a failed run, once the window has passed (``gate._probe_matters``):
if the apiserver's ``/readyz`` (or the kvstore's health endpoint) does not answer 2xx, a start
would only add a full resync to a control plane that is already down and then fail, so the gate
waits for the node's next slot and asks again there. Hence the rules here:

* one request per URL per decision, never a retry loop: the caller decides when to ask again;
* a bounded time (``probe.timeout`` for each stage of the request), so a hanging apiserver
  cannot hang the gate;
* any doubt is "unhealthy" (timeouts, refused connections, TLS failures, 3xx, 4xx, 5xx): the
  cost of a wrong "unhealthy" is one slot of patience, the cost of a wrong "healthy" is a
  wasted start during an outage;
* TLS verifies the server with ``identity.ca`` and presents the agent's own client certificate,
  so the probe is authorised (and rate-limited by API Priority and Fairness) as the agent is.
  The context is built for every probe so that a certificate renewed while a gate waits is
  the one presented;
* it never raises, and it logs the URL and why, never key material.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from supervisor.base.log import get_logger
from supervisor.storage.config import Config, IdentityConfig

#: Bytes of a failing answer's body kept for the log (``/readyz?verbose`` says what is down).
BODY_SNIPPET: Final = 200
USER_AGENT: Final = "agent-supervisor-probe"

Probe = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The answer of one URL: healthy only for a 2xx; ``why`` says what went wrong."""

    url: str
    healthy: bool
    status: int | None = None
    why: str = ""


def _no_password() -> bytes:
    # An encrypted key must fail loudly, not make OpenSSL prompt on the gate's terminal.
    return b""


def tls_context(identity: IdentityConfig | None) -> ssl.SSLContext:
    """Verify the server (with ``identity.ca`` when set) and present the agent's certificate."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=identity.ca if identity is not None else None
    )
    if identity is not None:
        ctx.load_cert_chain(identity.cert, identity.key, password=_no_password)
    return ctx


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, ConnectionError | OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def check_url(
    url: str,
    timeout: float,
    identity: IdentityConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """One GET of ``url``; never raises. Redirects are not followed (a 3xx is unhealthy)."""
    conn: http.client.HTTPConnection | None = None
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return ProbeResult(url, False, None, "not an http(s) URL")
        deadline = clock() + timeout
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if parts.scheme == "https":
            try:
                ctx = tls_context(identity)
            except (OSError, ssl.SSLError) as exc:
                files = "" if identity is None else f" ({identity.cert}, {identity.key})"
                return ProbeResult(url, False, None, f"identity{files}: {_describe(exc, timeout)}")
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        conn.connect()
        # Each stage gets what is left of the one timeout, so a slow handshake plus a slow
        # answer cannot add up to several timeouts.
        _remaining(conn, deadline, clock, timeout)
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        _remaining(conn, deadline, clock, timeout)
        resp = conn.getresponse()
        status = resp.status
        if 200 <= status < 300:
            return ProbeResult(url, True, status)
        _remaining(conn, deadline, clock, timeout)
        body = resp.read(BODY_SNIPPET).decode("utf-8", "replace").strip()
        why = f"HTTP {status} {resp.reason}".strip()
        if body:
            why += ": " + " ".join(body.split())[:BODY_SNIPPET]
        return ProbeResult(url, False, status, why)
    except Exception as exc:  # noqa: BLE001 - any failure to get a 2xx is "unhealthy"
        return ProbeResult(url, False, None, _describe(exc, timeout))
    finally:
        if conn is not None:
            conn.close()


def _remaining(
    conn: http.client.HTTPConnection, deadline: float, clock: Callable[[], float], timeout: float
) -> None:
    left = deadline - clock()
    if left <= 0:
        raise TimeoutError(f"timed out after {timeout:g} s")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def probe_once(
    urls: tuple[str, ...], timeout: float, identity: IdentityConfig | None = None
) -> tuple[ProbeResult, ...]:
    """Ask the URLs in order, stopping at the first that is not healthy (it decides)."""
    results = []
    for url in urls:
        result = check_url(url, timeout, identity)
        results.append(result)
        if not result.healthy:
            break
    return tuple(results)


def redact(url: str) -> str:
    """The URL without user:password@ (credentials never go into a log line)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def make_probe(cfg: Config) -> Probe | None:
    """The gate's probe for this configuration, or None when no ``probe.urls`` are set.

    The probe returns True only if every URL answers 2xx, logs ``probe.healthy`` or
    ``probe.unhealthy`` (with the URL and why), and never raises.
    """
    urls = cfg.probe.urls
    if not urls:
        return None
    timeout = cfg.probe.timeout
    identity = cfg.identity

    def probe() -> bool:
        try:
            results = probe_once(urls, timeout, identity)
        except Exception as exc:  # noqa: BLE001 - a probe must never take the gate down
            get_logger().warning(
                "probe.unhealthy", url=redact(urls[0]), why=_describe(exc, timeout)
            )
            return False
        bad = next((r for r in results if not r.healthy), None)
        if bad is None:
            get_logger().info("probe.healthy", urls=[redact(u) for u in urls])
            return True
        get_logger().warning("probe.unhealthy", url=redact(bad.url), status=bad.status, why=bad.why)
        return False

    return probe
