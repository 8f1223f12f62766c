"""Throwaway TLS material for the end-to-end tests (never used outside tests).

``make_certs(directory)`` writes, with the ``cryptography`` package:

- ``fake-ca.pem`` / ``fake-ca-key.pem``: a self-signed CA, CN "pouch throwaway test CA";
- ``fake-leaf.pem`` / ``fake-leaf-key.pem``: a server certificate signed by it, with SANs
  ``api.openai.com``, ``api.anthropic.com``, ``generativelanguage.googleapis.com``,
  ``other.test``, ``localhost`` and ``IP:127.0.0.1``
  (``fake-leaf.pem`` holds the leaf followed by the CA, i.e. the full chain).

mitmproxy is told to trust ``fake-ca.pem`` for upstream connections
(``ssl_verify_upstream_trusted_ca``); a client that trusts *only* ``fake-ca.pem`` can
therefore tell an untouched tunnel (issuer = this CA) from an intercepted one
(issuer = the mitmproxy CA).

Run as a script to write the files: ``python certs.py DIR``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CN = "pouch throwaway test CA"
LEAF_DNS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com", "other.test", "localhost",
            "openrouter.ai", "api.deepseek.com", "api.groq.com", "api.mistral.ai", "pouchtest.openai.azure.com",
            "pouchtest.cognitiveservices.azure.com")
LEAF_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class Certs:
    directory: Path
    ca_cert: Path      # PEM, the CA certificate alone (what clients/mitmproxy trust)
    ca_key: Path
    leaf_cert: Path    # PEM, leaf + CA chain (what the fake server presents)
    leaf_key: Path


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_certs(directory: str | Path) -> Certs:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    not_before = now - _dt.timedelta(days=1)
    not_after = now + _dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, CA_CN),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pouch tests"),
    ])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in LEAF_DNS] + [x509.IPAddress(ipaddress.ip_address(i)) for i in LEAF_IPS]
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LEAF_DNS[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    certs = Certs(
        directory=d,
        ca_cert=d / "fake-ca.pem",
        ca_key=d / "fake-ca-key.pem",
        leaf_cert=d / "fake-leaf.pem",
        leaf_key=d / "fake-leaf-key.pem",
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    certs.ca_cert.write_bytes(ca_pem)
    certs.leaf_cert.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _write_key(certs.ca_key, ca_key)
    _write_key(certs.leaf_key, leaf_key)
    return certs


if __name__ == "__main__":  # pragma: no cover
    c = make_certs(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(c)
