"""Throw-away certificates for the test upstream, made with ``cryptography``.

:func:`make_certificates` writes a private CA (ECDSA P-256) and a server
certificate signed by it into a directory, as PEM files. The server certificate
carries the subject alternative names ``DNS:dns.test``, ``DNS:localhost``,
``IP:127.0.0.1`` and ``IP:::1``, so a client may verify it by name
(``dns.test``, the name in ``tls://127.0.0.1:853#dns.test``) or by address.

:func:`server_ssl_context` builds the server side :class:`ssl.SSLContext`
(TLS 1.2 and later; session tickets and the session cache left on so clients can
resume), :func:`client_ssl_context` a client context trusting only the CA.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The name the server certificate is issued to (and the one clients verify).
TLS_NAME = "dns.test"

#: ALPN offered by the DoH listener, and by the DoT listener (RFC 7858 has none;
#: "dot" is registered for DNS-over-TLS).
DOH_ALPN = ("h2", "http/1.1")
DOT_ALPN = ("dot",)

__all__ = [
    "DOH_ALPN",
    "DOT_ALPN",
    "TLS_NAME",
    "Certificates",
    "client_ssl_context",
    "make_certificates",
    "server_ssl_context",
    "spki_pin",
]


@dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files written by :func:`make_certificates`."""

    directory: str
    #: The CA certificate: what a client trusts (``cafile``).
    ca_file: str
    #: The CA private key (kept so more certificates could be signed).
    ca_key_file: str
    #: The server certificate (leaf only; the CA is the trust anchor).
    cert_file: str
    #: The server private key.
    key_file: str
    #: The name in the server certificate that clients verify.
    tls_name: str
    #: base64(sha256(SubjectPublicKeyInfo DER)) of the server key, as stubby and
    #: RFC 7858 section 4.2 pin it.
    spki_pin: str


def spki_pin(cert: x509.Certificate) -> str:
    """The RFC 7469 / RFC 7858 pin of a certificate's public key."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def _write(path: str, data: bytes, private: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certificates(directory: str | os.PathLike, *, tls_name: str = TLS_NAME, days: int = 30) -> Certificates:
    """Create a CA and a server certificate for ``tls_name`` under ``directory``.

    The server certificate's SANs are ``tls_name``, ``localhost``, ``127.0.0.1``
    and ``::1``. Keys are ECDSA P-256; certificates are valid from one hour ago
    for ``days`` days.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dotproxy test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans = [
        x509.DNSName(tls_name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tls_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
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
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    nokey = serialization.NoEncryption()
    paths = {
        "ca_file": os.path.join(directory, "ca.pem"),
        "ca_key_file": os.path.join(directory, "ca.key"),
        "cert_file": os.path.join(directory, "server.pem"),
        "key_file": os.path.join(directory, "server.key"),
    }
    _write(paths["ca_file"], ca_cert.public_bytes(pem))
    _write(paths["ca_key_file"], ca_key.private_bytes(pem, pkcs8, nokey), private=True)
    _write(paths["cert_file"], cert.public_bytes(pem))
    _write(paths["key_file"], key.private_bytes(pem, pkcs8, nokey), private=True)
    return Certificates(directory=directory, tls_name=tls_name, spki_pin=spki_pin(cert), **paths)


def server_ssl_context(certs: Certificates, alpn: Sequence[str] | None = DOH_ALPN) -> ssl.SSLContext:
    """The server side context: TLS 1.2+, the server certificate, ``alpn`` offered.

    Pass ``alpn=DOH_ALPN`` (``["h2", "http/1.1"]``) for DoH, ``DOT_ALPN`` or
    ``None`` for DoT. Session tickets and the server session cache stay enabled,
    so clients can resume.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certs.cert_file, certs.key_file)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_ssl_context(certs_or_ca_file: Certificates | str, alpn: Sequence[str] | None = None) -> ssl.SSLContext:
    """A client context that trusts only the test CA (hostname checking on)."""
    ca_file = certs_or_ca_file.ca_file if isinstance(certs_or_ca_file, Certificates) else certs_or_ca_file
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
