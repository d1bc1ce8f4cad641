"""TLS client contexts for upstreams: verification on by default, SPKI pins, session resumption."""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dotproxy.errors import ConfigError, TLSVerificationFailed

log = logging.getLogger("dotproxy.tls")


class _DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose ``read``, ``write`` and ``pending`` are the C object's own methods.

    uvloop and asyncio call ``read`` once per TLS record (an answer, on DoT) and ``write``
    once per flush; ``ssl.py``'s wrappers only forward the arguments but cost a Python
    frame each (profile at max load: ~2% of the proxy's CPU). Same signatures, same
    results: the wrappers add nothing else.
    """

    @classmethod
    def _create(cls, *args, **kwargs):
        self = super()._create(*args, **kwargs)
        c = self._sslobj
        self.read = c.read
        self.write = c.write
        self.pending = c.pending
        return self


class ResumingContext(ssl.SSLContext):
    """A client context that offers its upstream's last TLS session on every new connection.

    asyncio and uvloop create the TLS object through ``wrap_bio`` with no way to
    pass a session, so the context supplies it: one context per upstream, its
    ``session`` updated from each connection once the server's ticket has come.
    """

    session: ssl.SSLSession | None = None
    sslobject_class = _DirectSSLObject

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session or self.session)

    def remember(self, ssl_object) -> None:
        """Keep ``ssl_object``'s session for the next connection, if it can resume one."""
        try:
            session = ssl_object.session
        except (AttributeError, ValueError):
            return
        if session is not None and (session.has_ticket or ssl_object.version() != "TLSv1.3"):
            self.session = session


def client_context(*, ca_file: str | None = None, verify: bool = True, alpn: list[str] | None = None,
                   where: str = "upstream") -> ResumingContext:
    """A TLS 1.2+ client context; verification against ``ca_file`` or the system store unless ``verify`` is off."""
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        try:
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load CA file {ca_file!r}: {e}", where=where) from e
    else:
        log.warning("%s: TLS certificate verification is OFF: anyone on the path can read and forge answers", where)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def spki_pin(der_certificate: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a DER certificate, as stubby and RFC 7469 pins are written."""
    cert = x509.load_der_x509_certificate(der_certificate)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def check_pins(ssl_object, pins: frozenset[str], upstream: str) -> None:
    """Raise :class:`TLSVerificationFailed` unless the server certificate's SPKI is pinned."""
    if not pins:
        return
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise TLSVerificationFailed("server sent no certificate to check the SPKI pins against", upstream=upstream)
    pin = spki_pin(der)
    if pin not in pins:
        raise TLSVerificationFailed(f"certificate SPKI {pin} matches none of the pins", upstream=upstream)


def describe_tls_error(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {e.verify_message or e.reason}"
    return f"TLS handshake failed: {e}"
