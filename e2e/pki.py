"""Certificates and the admin kubeconfig for a local control plane, made in-process.

Like envtest's tiny CA: ECDSA P-256 keys, one CA that signs the apiserver's serving certificate
(for `localhost`, 127.0.0.1 and the `kubernetes` Service's ClusterIP) and the admin client
certificate (`O=system:masters`, so RBAC lets it do anything), plus the service-account key
pair. Everything is valid for a week; a control plane lives minutes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=7)


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the files `make_pki` writes into `dir`."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_serving_cert(ca: Pki, directory: Path, name: str) -> None:
    """`tls.crt`/`tls.key` in `directory` for a local server at 127.0.0.1 and localhost, signed by
    the CA (so the CA's certificate is its caBundle, e.g. for URL webhooks)."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.ca_key}: expected the harness's ECDSA CA key")
    key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    now = datetime.datetime.now(datetime.UTC)
    cert = _cert(
        _name(name), key, ca_cert.subject, ca_key, now, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(_pem_key(key))
    (directory / "tls.key").chmod(0o600)


def make_pki(directory: Path, service_ip: str, now: datetime.datetime | None = None) -> Pki:
    """Write the CA, serving, admin and service-account keys into `directory`."""
    now = now or datetime.datetime.now(datetime.UTC)
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)

    ca_key = _key()
    ca_name = _name("sbs-e2e-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, now, ca=True)

    serving_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
    ]
    serving = _cert(
        _name("kube-apiserver"), serving_key, ca_name, ca_key, now,
        usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans,
    )  # fmt: skip

    admin_key = _key()
    admin = _cert(
        _name("admin", "system:masters"), admin_key, ca_name, ca_key, now,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )  # fmt: skip

    sa_key = _key()
    pem = serialization.Encoding.PEM
    writes = {
        pki.ca_crt: ca.public_bytes(pem),
        pki.ca_key: _pem_key(ca_key),
        pki.apiserver_crt: serving.public_bytes(pem),
        pki.apiserver_key: _pem_key(serving_key),
        pki.admin_crt: admin.public_bytes(pem),
        pki.admin_key: _pem_key(admin_key),
        pki.sa_key: _pem_key(sa_key),
        pki.sa_pub: sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for path, data in writes.items():
        path.write_bytes(data)
        if path.name.endswith(".key"):
            path.chmod(0o600)
    return pki


def kubeconfig(pki: Pki, server: str, name: str = "sbs-e2e") -> str:
    """An admin kubeconfig with embedded certificates (JSON, which is also YAML)."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_crt)}}
        ],
        "users": [
            {
                "name": f"{name}-admin",
                "user": {
                    "client-certificate-data": b64(pki.admin_crt),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": name,
    }
    return json.dumps(config, indent=2) + "\n"
