"""Test certificates, made two independent ways: with ``cryptography`` and with ``openssl``.

Why two: a checker tested only against certificates from the library it parses with can share
that library's blind spots. ``issue(backend, ...)`` makes the same CA + client certificate with
either backend, so each scenario runs against both.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Backend = Literal["cryptography", "openssl"]
Usage = Literal["clientAuth", "serverAuth", "none"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
BACKENDS: tuple[Backend, ...] = ("cryptography", "openssl")
DAY = 86400.0


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, in memory."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class Issued:
    """Files on disk: a client certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def new_key(kind: Literal["ec", "rsa"] = "ec") -> PrivateKey:
    """A fresh key: EC P-256 (fast) or RSA 2048."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    name: str = "test-ca", *, not_before: float, not_after: float, key: PrivateKey | None = None
) -> Pair:
    """A self-signed CA certificate."""
    key = key or new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def make_cert(
    ca: Pair,
    *,
    cn: str,
    orgs: tuple[str, ...] = ("cilium-agents",),
    not_before: float,
    not_after: float,
    usage: Usage = "clientAuth",
    key: PrivateKey | None = None,
    san_ips: tuple[str, ...] = (),
    is_ca: bool = False,
) -> Pair:
    """A certificate signed by ``ca`` (a client certificate unless told otherwise)."""
    import ipaddress

    key = key or new_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if usage != "none":
        oid = (
            ExtendedKeyUsageOID.CLIENT_AUTH
            if usage == "clientAuth"
            else ExtendedKeyUsageOID.SERVER_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
    if san_ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in san_ips]),
            critical=False,
        )
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` with ``mode`` (chmod after, so the umask does not interfere)."""
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- openssl -----------------------------------------------------------------------------------

_CA_CONF = """\
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
[ policy_any ]
organizationName = optional
commonName = supplied
[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
[ v3_clientAuth ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[ v3_serverAuth ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
[ v3_none ]
basicConstraints = critical,CA:FALSE
"""


def _stamp(ts: float) -> str:
    return _utc(ts).strftime("%Y%m%d%H%M%SZ")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


class OpenSSL:
    """A throw-away ``openssl ca`` in ``workdir``: every certificate comes from the command."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "newcerts").mkdir(exist_ok=True)
        (workdir / "index.txt").touch()
        (workdir / "serial").write_text("1000\n")
        (workdir / "ca.cnf").write_text(_CA_CONF.format(dir=workdir))

    def _csr(self, stem: str, subj: str, key: Path | None) -> tuple[Path, Path]:
        csr = self.dir / f"{stem}.csr"
        if key is None:
            key = self.dir / f"{stem}.key"
            _run(
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(csr),
                "-subj",
                subj,
                cwd=self.dir,
            )
        else:
            _run("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subj, cwd=self.dir)
        return csr, key

    def ca(self, name: str, *, not_before: float, not_after: float) -> tuple[Path, Path]:
        """A self-signed CA (``openssl ca -selfsign``, which takes explicit dates)."""
        csr, key = self._csr(f"ca-{name}", f"/CN={name}", None)
        cert = self.dir / f"ca-{name}.pem"
        _run(
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            str(key),
            "-in",
            str(csr),
            "-out",
            str(cert),
            "-startdate",
            _stamp(not_before),
            "-enddate",
            _stamp(not_after),
            "-extensions",
            "v3_ca",
            "-notext",
            cwd=self.dir,
        )
        return cert, key

    def client(
        self,
        stem: str,
        ca: tuple[Path, Path],
        *,
        cn: str,
        orgs: tuple[str, ...],
        not_before: float,
        not_after: float,
        usage: Usage = "clientAuth",
        key: Path | None = None,
    ) -> tuple[Path, Path]:
        """A certificate for ``cn``/``orgs`` signed by ``ca``; returns (cert, key) paths."""
        subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        csr, key = self._csr(stem, subj, key)
        cert = self.dir / f"{stem}.pem"
        _run(
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            str(ca[0]),
            "-keyfile",
            str(ca[1]),
            "-in",
            str(csr),
            "-out",
            str(cert),
            "-startdate",
            _stamp(not_before),
            "-enddate",
            _stamp(not_after),
            "-extensions",
            f"v3_{usage}",
            "-notext",
            "-preserveDN",
            cwd=self.dir,
        )
        return cert, key


# --- one entry point for both backends -----------------------------------------------------------


def issue(
    backend: Backend,
    workdir: Path,
    *,
    now: float,
    cn: str,
    orgs: tuple[str, ...] = ("cilium-agents",),
    ca_name: str = "test-ca",
    not_before: float | None = None,
    not_after: float | None = None,
    usage: Usage = "clientAuth",
    key_mode: int = 0o600,
) -> Issued:
    """A CA and a client certificate from it, as files in ``workdir`` (made by ``backend``).

    Defaults: valid from a day ago for 90 days; the key file mode is ``key_mode``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    nb = now - DAY if not_before is None else not_before
    na = now + 90 * DAY if not_after is None else not_after
    ca_nb, ca_na = now - 30 * DAY, now + 3650 * DAY
    if backend == "cryptography":
        ca = make_ca(ca_name, not_before=ca_nb, not_after=ca_na)
        leaf = make_cert(ca, cn=cn, orgs=orgs, not_before=nb, not_after=na, usage=usage)
        ca_path = write(workdir / "ca.pem", ca.cert.public_bytes(serialization.Encoding.PEM))
        cert_path = write(workdir / "cert.pem", leaf.cert_pem)
        key_path = write(workdir / "key.pem", leaf.key_pem, key_mode)
        return Issued(cert_path, key_path, ca_path)
    ossl = OpenSSL(workdir / "openssl")
    ca_files = ossl.ca(ca_name, not_before=ca_nb, not_after=ca_na)
    cert, key = ossl.client(
        "client", ca_files, cn=cn, orgs=orgs, not_before=nb, not_after=na, usage=usage
    )
    key.chmod(key_mode)
    return Issued(cert, key, ca_files[0])
