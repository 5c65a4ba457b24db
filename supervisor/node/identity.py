"""The agent's own identity, as the gate checks it before every start: its client certificate,
key and CA (``certs check``, ``status``, the gate's refusal with exit 78).

Why the gate cares: each agent authenticates to kube-apiserver as its own user
(``system:cilium-agent:<node>``) in a common group, so that API Priority and Fairness can queue
agents per user. An agent started with an expired certificate, a key that does not match, or a
certificate naming another node does not fail gently: it crash-loops on 401s and every restart is
a full resync. Checking on the node, before the start, turns that into one clear line and exit 78.

Everything here reads files and never raises on bad ones: a missing, unreadable or broken file is
a *problem* in the :class:`CertReport`, with a sentence that names the file. ``cryptography`` is
imported inside the functions that need it: the gate imports this module (lazily) only when
``[identity]`` is configured, and ``status``, ``certs check`` and the CLI's import of this
module must not pay for it otherwise. Making credentials (key, CSR, kubeconfig) is
:mod:`supervisor.node.credentials`; the cluster's APF objects are :mod:`supervisor.node.apf`.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from supervisor.base.errors import one_line
from supervisor.core.durations import format_duration
from supervisor.core.state import iso_seconds
from supervisor.storage.config import IdentityConfig

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

#: A PEM file larger than this is not a certificate or a key (a log or a core pointed at by
#: mistake); reading it whole would only cost memory.
MAX_PEM_BYTES: Final = 1024 * 1024

_PROCESSING = re.compile(r"\s*\(encountered processing <Certificate\(.*?\)>\)")


def render_user(template: str, node_name: str) -> str:
    """The user name this node's certificate must carry, e.g. ``system:cilium-agent:node-7``.

    ``str.replace`` rather than ``str.format``: a template with other braces must not turn into
    a KeyError at gate time.
    """
    return template.replace("{node_name}", node_name)


@dataclass(frozen=True, slots=True)
class CertReport:
    """What ``certs check`` found: problems refuse a start (exit 78), warnings do not."""

    ok: bool
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: When the certificate expires (seconds since the epoch), if it could be read.
    not_after: float | None = None
    #: ``not_after - now``; negative once expired.
    seconds_left: float | None = None
    #: The certificate's subject as RFC 4514 text (``CN=...,O=...``).
    subject: str | None = None

    @property
    def days_left(self) -> int | None:
        """Whole days until expiry (floor; negative once expired), for status lines."""
        if self.seconds_left is None:
            return None
        return math.floor(self.seconds_left / 86400)

    def summary(self) -> str:
        """One line for ``status``: ok/BAD, expiry and days left, first problem."""
        head = "ok" if self.ok else "BAD"
        if self.not_after is not None:
            head += f", expires {iso_seconds(self.not_after)} ({self.days_left}d left)"
        extra = self.problems[:1] or self.warnings[:1]
        return head + "".join(f": {p}" for p in extra)

    def to_json(self) -> dict[str, Any]:
        """The report as ``certs check --json`` and ``status --json`` print it."""
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "not_after": None if self.not_after is None else iso_seconds(self.not_after),
            "seconds_left": None if self.seconds_left is None else round(self.seconds_left, 3),
            "days_left": self.days_left,
            "subject": self.subject,
        }


def check_identity(identity: IdentityConfig, node_name: str, now: float) -> CertReport:
    """Check the agent's certificate, key and CA as the apiserver and the gate need them.

    Never raises for anything a file can contain: each check appends one sentence naming the
    file, and independent checks all run, so one report lists everything to fix.
    """
    problems: list[str] = []
    warnings: list[str] = []
    facts: dict[str, Any] = {}
    try:
        _run_checks(identity, node_name, now, problems, warnings, facts)
    except Exception as exc:  # noqa: BLE001 - the gate must get a report, never a traceback
        problems.append(f"{identity.cert}: cannot be checked: {one_line(exc)}")
    return CertReport(
        ok=not problems,
        problems=tuple(problems),
        warnings=tuple(warnings),
        not_after=facts.get("not_after"),
        seconds_left=facts.get("seconds_left"),
        subject=facts.get("subject"),
    )


def _run_checks(
    identity: IdentityConfig,
    node_name: str,
    now: float,
    problems: list[str],
    warnings: list[str],
    facts: dict[str, Any],
) -> None:
    cert_path, key_path = identity.cert, identity.key
    certs = _load_certs(cert_path, "certificate", problems)
    leaf = certs[0] if certs else None
    if leaf is not None:
        not_before = leaf.not_valid_before_utc.timestamp()
        not_after = leaf.not_valid_after_utc.timestamp()
        facts["not_after"] = not_after
        facts["seconds_left"] = not_after - now
        facts["subject"] = leaf.subject.rfc4514_string()
        _check_validity(leaf, cert_path, now, identity.renew_before, problems, warnings)
        _check_subject(
            leaf, cert_path, render_user(identity.user, node_name), identity.group, problems
        )
        _check_usage(leaf, cert_path, problems, warnings)
        if identity.ca:
            at = min(max(now, not_before), not_after)
            _check_chain(leaf, certs[1:], cert_path, identity.ca, now, at, problems)
    key = _load_key(key_path, problems)
    if leaf is not None and key is not None and not _key_matches(leaf, key):
        problems.append(
            f"{key_path}: the private key does not match the certificate "
            f"{cert_path} (a key of another certificate)"
        )


def identity_message(report: CertReport) -> str:
    """The one-line error for a bad identity: first problem plus a count of the rest."""
    first = report.problems[0] if report.problems else "identity check failed"
    more = len(report.problems) - 1
    return f"bad agent identity: {first}" + (f" (and {more} more)" if more > 0 else "")


# --- reading files -----------------------------------------------------------------------------


def _read_pem(path: str, what: str, problems: list[str]) -> bytes | None:
    """The file's bytes, or None with a problem. O_NONBLOCK and the regular-file check keep a
    FIFO or a device at the path from hanging the gate (open(2) on a FIFO waits for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        problems.append(f"{path}: {what} file not found")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read the {what}: {exc.strerror or exc}")
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            problems.append(f"{path}: {what} path is a directory, not a file")
            return None
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{path}: {what} path is not a regular file")
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        problems.append(f"{path}: cannot read the {what}: {exc.strerror or exc}")
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_PEM_BYTES:
        problems.append(f"{path}: larger than 1 MiB, not a PEM {what}")
        return None
    return data


def _load_certs(path: str, what: str, problems: list[str]) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first; [] (with a problem) when there is none."""
    data = _read_pem(path, what, problems)
    if data is None:
        return []
    if b"-----BEGIN CERTIFICATE-----" not in data:
        problems.append(f"{path}: not a PEM {what} (no BEGIN CERTIFICATE block)")
        return []
    from cryptography import x509

    try:
        return list(x509.load_pem_x509_certificates(data))
    except Exception as exc:  # noqa: BLE001 - any parser error is a broken file, never a crash
        problems.append(f"{path}: broken PEM {what}: {one_line(exc)}")
        return []


def _load_key(path: str, problems: list[str]) -> PrivateKeyTypes | None:
    data = _read_pem(path, "private key", problems)
    if data is None:
        return None
    if b"PRIVATE KEY-----" not in data:
        problems.append(f"{path}: not a PEM private key (no BEGIN PRIVATE KEY block)")
        return None
    # Only a file that holds key material is judged by who may read it.
    _check_key_file(path, problems)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        problems.append(f"{path}: the private key is encrypted; the agent needs it unencrypted")
    except Exception as exc:  # noqa: BLE001 - any parser error is a broken file, never a crash
        problems.append(f"{path}: broken PEM private key: {one_line(exc)}")
    return None


def _check_key_file(path: str, problems: list[str]) -> None:
    """The key must be private to the user who runs the agent (and this supervisor).

    ``stat`` follows symlinks on purpose: Kubernetes-style secret mounts are symlinks, and what
    matters is who can open the key itself.
    """
    try:
        st = Path(path).stat()
    except OSError:
        return  # _read_pem already said why
    if not stat.S_ISREG(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        who = []
        if mode & 0o044:
            who.append("read")
        if mode & 0o022:
            who.append("write")
        if mode & 0o011:
            who.append("execute")
        problems.append(
            f"{path}: mode {mode:04o} lets group or others {'/'.join(who)} the "
            f"private key (chmod 600 {path})"
        )
    euid = os.geteuid()
    if st.st_uid != euid:
        problems.append(
            f"{path}: the private key is owned by uid {st.st_uid}, not by the user "
            f"running agent-supervisor (uid {euid})"
        )


# --- checks on the certificate -----------------------------------------------------------------


def _check_validity(
    leaf: x509.Certificate,
    path: str,
    now: float,
    renew_before: float,
    problems: list[str],
    warnings: list[str],
) -> None:
    not_before = leaf.not_valid_before_utc.timestamp()
    not_after = leaf.not_valid_after_utc.timestamp()
    if now < not_before:
        problems.append(
            f"{path}: not valid before {iso_seconds(not_before)} (in "
            f"{format_duration(not_before - now)}; is the clock right?)"
        )
    if now > not_after:
        problems.append(
            f"{path}: expired at {iso_seconds(not_after)} ({format_duration(now - not_after)} ago)"
        )
    elif not_after - now <= renew_before:
        warnings.append(
            f"{path}: expires at {iso_seconds(not_after)}, in "
            f"{format_duration(not_after - now)}, within renew_before "
            f"({format_duration(renew_before)}): renew it"
        )


def _check_subject(
    leaf: x509.Certificate, path: str, user: str, group: str, problems: list[str]
) -> None:
    """Kubernetes takes the user name from the CN and the groups from every O."""
    from cryptography.x509.oid import NameOID

    cns = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [user]:
        got = ", ".join(repr(c) for c in cns) or "none"
        problems.append(f"{path}: subject CN is {got}, expected {user!r} (identity.user)")
    orgs = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if group not in orgs:
        got = ", ".join(repr(o) for o in orgs) or "none"
        problems.append(
            f"{path}: subject O is {got}, expected one O = {group!r} "
            "(identity.group; Kubernetes reads groups from O)"
        )


def _check_usage(
    leaf: x509.Certificate, path: str, problems: list[str], warnings: list[str]
) -> None:
    """clientAuth must be allowed. No extendedKeyUsage at all means "any" (RFC 5280, and Go's
    crypto/x509 in the apiserver accepts it), so that is only a warning."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        warnings.append(
            f"{path}: no extendedKeyUsage; accepted as any usage, but a client "
            "certificate should say clientAuth"
        )
        return
    except Exception as exc:  # noqa: BLE001 - a malformed extension is a problem, not a crash
        problems.append(f"{path}: unreadable extensions: {one_line(exc)}")
        return
    usages = list(eku)
    if (
        ExtendedKeyUsageOID.CLIENT_AUTH in usages
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
    ):
        return
    names = ", ".join(getattr(u, "_name", u.dotted_string) for u in usages) or "none"
    problems.append(
        f"{path}: extendedKeyUsage ({names}) lacks clientAuth; the apiserver "
        "refuses it as a client certificate"
    )


def _key_matches(leaf: x509.Certificate, key: PrivateKeyTypes) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        ours = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        theirs = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except Exception:  # noqa: BLE001 - an unsupported key type cannot match
        return False
    return ours == theirs


def _check_chain(
    leaf: x509.Certificate,
    extra: Sequence[x509.Certificate],
    path: str,
    ca_path: str,
    now: float,
    at: float,
    problems: list[str],
) -> None:
    """The certificate must chain to the CA the apiserver trusts.

    First the direct issuer, by hand, for a precise sentence (no CA of that name; a CA of that
    name whose key did not sign it; the CA itself expired). Then full path validation with
    cryptography's verifier, which also covers intermediates (from the certificate file after
    the leaf, as kubeconfigs carry them) and CA constraints. The verifier runs at ``at``, the
    check time clamped into the leaf's own validity, so an expired leaf is reported once (by
    the validity check) rather than twice.
    """
    before = len(problems)
    cas = _load_certs(ca_path, "CA certificate", problems)
    if not cas:
        return
    pool = list(cas) + list(extra)
    issuers = [c for c in pool if c.subject == leaf.issuer]
    issuer_name = leaf.issuer.rfc4514_string() or "an empty name"
    if not issuers:
        problems.append(
            f"{path}: issued by {issuer_name!r}, which is not in {ca_path} (signed by another CA)"
        )
        return
    signer = next((c for c in issuers if _signed_by(leaf, c)), None)
    if signer is None:
        problems.append(
            f"{path}: signature does not verify with the key of {issuer_name!r} in "
            f"{ca_path} (signed by another CA of the same name)"
        )
        return
    name = signer.subject.rfc4514_string()
    if now > signer.not_valid_after_utc.timestamp():
        problems.append(
            f"{ca_path}: CA certificate {name!r} expired at "
            f"{iso_seconds(signer.not_valid_after_utc.timestamp())}"
        )
    elif now < signer.not_valid_before_utc.timestamp():
        problems.append(
            f"{ca_path}: CA certificate {name!r} is not valid before "
            f"{iso_seconds(signer.not_valid_before_utc.timestamp())}"
        )
    if len(problems) == before:
        error = _verify_path(leaf, extra, cas, at)
        if error is not None:
            problems.append(f"{path}: chain does not verify against {ca_path}: {error}")


def _signed_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError all mean "no"
        return False
    return True


def _verify_path(
    leaf: x509.Certificate,
    extra: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate],
    at: float,
) -> str | None:
    """Full path validation; None when it verifies (or this cryptography cannot check it).

    The extension policies are relaxed on purpose: the WebPKI defaults demand what fleet and
    kubeadm CAs routinely omit (an authorityKeyIdentifier on the leaf, a SAN), and the
    apiserver (Go's crypto/x509) does not ask for them either. Issuers must still be CAs.
    """
    try:
        from cryptography import x509
        from cryptography.x509.verification import (
            Criticality,
            ExtensionPolicy,
            PolicyBuilder,
            Store,
            VerificationError,
        )
    except ImportError:  # cryptography < 45: the direct-issuer check above has to do
        return None
    try:
        ca_policy = ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, Criticality.AGNOSTIC, None
        )
        verifier = (
            PolicyBuilder()
            .store(Store(list(cas)))
            .time(datetime.fromtimestamp(at, UTC))
            .extension_policies(ca_policy=ca_policy, ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        verifier.verify(leaf, list(extra))
    except VerificationError as exc:
        return _PROCESSING.sub("", one_line(exc)).removeprefix("validation failed: ")
    except Exception as exc:  # noqa: BLE001 - an unusable CA bundle is a problem, not a crash
        return one_line(exc)
    return None
