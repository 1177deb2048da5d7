"""Certificates and kubeconfig for the local control plane."""

import ipaddress
import tempfile

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sbs.e2e import kube, pki


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_serving_cert_covers_loopback_and_the_service_ip(tmp_path):
    keys = pki.make_pki(tmp_path, service_ip="127.96.0.1")
    cert = load(keys.apiserver_crt)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.96.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_admin_is_a_system_master_signed_by_the_ca(tmp_path):
    keys = pki.make_pki(tmp_path, service_ip="127.96.0.1")
    admin, ca = load(keys.admin_crt), load(keys.ca_crt)
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    admin.verify_directly_issued_by(ca)
    assert (keys.admin_key.stat().st_mode & 0o777) == 0o600


def test_kubeconfig_round_trips_through_the_client(tmp_path):
    keys = pki.make_pki(tmp_path / "pki", service_ip="127.96.0.1")
    path = tmp_path / "kubeconfig"
    path.write_text(pki.kubeconfig(keys, "https://127.0.0.1:6443", name="t"))
    config = yaml.safe_load(path.read_text())
    assert config["current-context"] == "t"
    client = kube.Kube.from_kubeconfig(path)
    assert (client.host, client.port) == ("127.0.0.1", 6443)


def test_kubeconfig_secrets_are_not_left_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    keys = pki.make_pki(tmp_path / "pki", service_ip="127.96.0.1")
    path = tmp_path / "kubeconfig"
    path.write_text(pki.kubeconfig(keys, "https://127.0.0.1:6443"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    kube.Kube.from_kubeconfig(path)
    assert list((tmp_path / "tmp").iterdir()) == []
