"""Certificates and kubeconfig for the local control plane."""

import ast
import ipaddress
import os
import subprocess
import sys

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sbs.e2e import pki
from sbs.kube.blocking import Kube


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
    client = Kube.from_kubeconfig(path)
    assert client.server == "https://127.0.0.1:6443"


def test_kubeconfig_secrets_stay_private_and_are_not_left_on_disk(tmp_path):
    """Python's TLS reads client keys from files only: inlined kubeconfig secrets go to one private
    directory (0700, files 0600) while the process runs, and nothing is left once it exits."""
    keys = pki.make_pki(tmp_path / "pki", service_ip="127.96.0.1")
    path = tmp_path / "kubeconfig"
    path.write_text(pki.kubeconfig(keys, "https://127.0.0.1:6443"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = (
        "import os, stat, sys; from pathlib import Path; from sbs.kube.blocking import Kube;"
        "Kube.from_kubeconfig(sys.argv[1]); tmp = Path(sys.argv[2]);"
        "modes = [(str(p.relative_to(tmp)), oct(stat.S_IMODE(p.stat().st_mode))) for p in tmp.rglob('*')];"
        "print(sorted(modes))"
    )
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seen = ast.literal_eval(out)
    dirs = [mode for name, mode in seen if "/" not in name]
    files = [mode for name, mode in seen if "/" in name]
    assert dirs == ["0o700"] and files and set(files) == {"0o600"}, seen
    assert list(tmp.iterdir()) == []
