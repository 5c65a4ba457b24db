"""The agent's credentials, made on the node for the operator: a new key and CSR (``certs
csr``), and a kubeconfig that points at the agent's certificate (``kubeconfig render``).

Files are written with :func:`write_file` (one atomic write: temp file, fsync, rename or link,
fsync of the directory), never over a file they must not replace: an existing key only with
``--force`` (the live key is often next door), a kubeconfig only when ``kubeconfig render``
wrote it (the reference layout points ``k8s-kubeconfig-path`` at the kubelet's own). Checking
what the files hold is :mod:`supervisor.node.identity`. ``cryptography`` and ``yaml`` are
imported inside the functions that need them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from supervisor.base.errors import ConfigError, StateError, UsageError
from supervisor.base.files import atomic_write
from supervisor.node.identity import render_user
from supervisor.storage.config import IdentityConfig

#: The Kubernetes signer for client certificates that kube-apiserver accepts.
K8S_CLIENT_SIGNER: Final = "kubernetes.io/kube-apiserver-client"
#: Marks files written by ``kubeconfig render`` so a later render may replace them, and nothing
#: else (the reference layout points ``k8s-kubeconfig-path`` at the kubelet's own kubeconfig).
KUBECONFIG_MARKER: Final = "# Written by agent-supervisor kubeconfig render"

KeyType = Literal["ec", "rsa"]
_DNS_LABEL = re.compile(r"[^a-z0-9.-]+")


def write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` (one :func:`atomic_write`).

    Without ``overwrite`` the file is linked into place (link(2) fails with EEXIST atomically,
    so two racing writers never clobber each other and a crash never leaves a half-written
    key). The temp file is 0600 until it is complete, so key material is never readable by
    others, not even for a moment. Raises :class:`UsageError` when the file exists and
    ``overwrite`` is false, :class:`StateError` (exit 74) on I/O errors.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise StateError(f"{path.parent}: cannot write there: {exc.strerror or exc}") from None
    try:
        atomic_write(path, data, mode=mode, overwrite=overwrite)
    except OSError as exc:
        if isinstance(exc, FileExistsError) and not overwrite:
            raise UsageError(f"{path} already exists (pass --force to replace it)") from None
        raise StateError(f"{path}: cannot write: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class CsrFiles:
    """Where ``certs csr`` wrote the new key, the CSR and the Kubernetes CSR manifest."""

    key: Path
    csr: Path
    manifest: Path
    subject: str

    def to_json(self) -> dict[str, Any]:
        """Paths and subject, for ``certs csr --json``."""
        return {
            "key": str(self.key),
            "csr": str(self.csr),
            "manifest": str(self.manifest),
            "subject": self.subject,
        }


def k8s_object_name(text: str) -> str:
    """A DNS-subdomain name for a Kubernetes object made from free text (a node name)."""
    name = _DNS_LABEL.sub("-", text.lower()).strip("-.")[:253].strip("-.")
    return name or "agent"


def make_csr(
    out_dir: Path,
    *,
    user: str,
    group: str,
    node_name: str,
    name: str = "cilium-agent",
    key_type: KeyType = "ec",
    rsa_bits: int = 3072,
    expiration_seconds: int | None = None,
    overwrite: bool = False,
) -> CsrFiles:
    """Make a new private key (0600) and a CSR with CN=user, O=group for this node.

    Writes ``<name>.key``, ``<name>.csr`` (PEM, for a fleet PKI such as cfssl or openssl ca) and
    ``<name>.csr.yaml`` (a ``certificates.k8s.io/v1`` CertificateSigningRequest for the signer
    ``kubernetes.io/kube-apiserver-client``). EC P-256 by default: small, fast handshakes, and
    accepted by every apiserver. Refuses to replace an existing key unless ``overwrite``: the
    live key is often next door, and losing it strands the running agent.
    """
    _check_request(key_type, rsa_bits, user, group)
    files = CsrFiles(
        key=out_dir / f"{name}.key",
        csr=out_dir / f"{name}.csr",
        manifest=out_dir / f"{name}.csr.yaml",
        subject="",
    )
    if not overwrite:
        for p in (files.key, files.csr, files.manifest):
            if p.exists() or p.is_symlink():
                raise UsageError(f"{p} already exists (pass --force to replace it)")
    key_pem, csr_pem, subject = _key_and_csr(key_type, rsa_bits, user, group)
    object_name = k8s_object_name(f"{name}-{node_name}")
    manifest = _csr_manifest(csr_pem, object_name, key_type, expiration_seconds)
    manifest_text = (
        f"# CSR for {user} (group {group}). Submit with: kubectl apply -f {files.manifest.name}\n"
        f"# then: kubectl certificate approve {object_name}\n" + manifest
    )
    # The key first: a crash after it leaves a key without a CSR (re-run with --force), never
    # a CSR whose key was lost.
    write_file(files.key, key_pem, mode=0o600, overwrite=overwrite)
    write_file(files.csr, csr_pem, mode=0o644, overwrite=overwrite)
    write_file(files.manifest, manifest_text.encode(), mode=0o644, overwrite=overwrite)
    return CsrFiles(key=files.key, csr=files.csr, manifest=files.manifest, subject=subject)


def _check_request(key_type: str, rsa_bits: int, user: str, group: str) -> None:
    """Usage errors for key parameters, a config error for an empty user or group."""
    if key_type not in ("ec", "rsa"):
        raise UsageError(f"--key-type {key_type!r}: expected ec or rsa")
    if key_type == "rsa" and rsa_bits not in (2048, 3072, 4096):
        raise UsageError(f"--rsa-bits {rsa_bits}: expected 2048, 3072 or 4096")
    if not user or not group:
        raise ConfigError(
            f"identity.user = {user!r}, identity.group = {group!r}: both must be "
            "non-empty to make a CSR"
        )


def _key_and_csr(
    key_type: KeyType, rsa_bits: int, user: str, group: str
) -> tuple[bytes, bytes, str]:
    """A new private key (PKCS#8 PEM), a CSR for it (PEM) asking for clientAuth, and the
    subject as RFC 4514 text."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, group),
            x509.NameAttribute(NameOID.COMMON_NAME, user),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM), subject.rfc4514_string()


def _csr_manifest(
    csr_pem: bytes, object_name: str, key_type: KeyType, expiration_seconds: int | None
) -> str:
    """The Kubernetes CertificateSigningRequest for ``csr_pem``, as YAML."""
    import yaml

    usages = ["digital signature", "client auth"]
    if key_type == "rsa":
        usages.insert(1, "key encipherment")
    spec: dict[str, Any] = {
        "request": base64.b64encode(csr_pem).decode("ascii"),
        "signerName": K8S_CLIENT_SIGNER,
        "usages": usages,
    }
    if expiration_seconds is not None:
        spec["expirationSeconds"] = expiration_seconds
    manifest = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": object_name},
        "spec": spec,
    }
    return yaml.safe_dump(manifest, sort_keys=False)


def check_server_url(server: str, where: str) -> str:
    """The apiserver URL must be https: a client certificate is pointless over plain HTTP."""
    text = server.strip()
    if not re.fullmatch(r"https://[^\s/?#]+(:\d+)?(/[^\s]*)?", text):
        raise ConfigError(f"{where} = {server!r}: expected an https:// URL of the apiserver")
    return text


def render_kubeconfig(
    identity: IdentityConfig,
    node_name: str,
    server: str,
    *,
    cluster: str = "kubernetes",
) -> str:
    """A kubeconfig for this agent: the apiserver, the CA, and the agent's cert and key *paths*.

    Paths, not embedded data, so that renewing the certificate needs no new kubeconfig. They are
    made absolute: client-go resolves relative paths against the kubeconfig's own directory,
    not against the directory the supervisor was started in.
    """
    import yaml

    user = render_user(identity.user, node_name)
    cluster_entry: dict[str, Any] = {"server": server}
    if identity.ca:
        cluster_entry["certificate-authority"] = str(Path(identity.ca).absolute())
    context = f"{user}@{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": cluster_entry}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(Path(identity.cert).absolute()),
                    "client-key": str(Path(identity.key).absolute()),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return (
        f"{KUBECONFIG_MARKER} for {user}.\n"
        f"# Point the agent's k8s-kubeconfig-path at this file.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )


def write_kubeconfig(path: Path, text: str, *, force: bool) -> None:
    """Write a rendered kubeconfig, replacing only one that ``kubeconfig render`` wrote.

    Why the guard: the reference layout's ``k8s-kubeconfig-path`` is the kubelet's kubeconfig;
    overwriting it by mistake would take the kubelet down with the agent.
    """
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file")
    if path.exists() and not force:
        try:
            with path.open("rb") as f:
                head = f.read(len(KUBECONFIG_MARKER))
        except OSError as exc:
            raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if head != KUBECONFIG_MARKER.encode():
            raise UsageError(
                f"{path} exists and was not written by kubeconfig render "
                "(pass --force to replace it)"
            )
    write_file(path, text.encode(), mode=0o600, overwrite=True)
