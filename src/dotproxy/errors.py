"""The one exception tree of dotproxy.

Every error dotproxy raises on purpose is a :class:`DotproxyError`. Classes say
declaratively what they mean on the wire (``rcode``) so that the layer which
answers a client can turn any of them into the right DNS error response without
a table of special cases. Foreign errors are wrapped ``from e`` at layer
boundaries.
"""

from __future__ import annotations

# RFC 1035 / RFC 6895 response codes used by the error tree.
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5


class DotproxyError(Exception):
    """Base of every error dotproxy raises on purpose."""

    #: The DNS response code a client gets when this error ends its query.
    rcode: int = SERVFAIL


class WireError(DotproxyError, ValueError):
    """A DNS message could not be parsed: it is malformed or truncated.

    ``reason`` is a short, stable, human-readable phrase such as
    ``"short header"`` or ``"compression pointer loop"``.
    """

    rcode = FORMERR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(DotproxyError, ValueError):
    """A configuration value (a URL, an option, a file) is wrong.

    ``where`` names the file, key or argument; the message says what is wrong
    with it and, where it helps, what would be right.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


# RFC 8914 Extended DNS Error info codes the upstream errors map to.
EDE_OTHER = 0
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23


class UpstreamError(DotproxyError):
    """A query could not be answered by an upstream.

    ``ede`` is the RFC 8914 info code a client's SERVFAIL carries; ``upstream``
    names the upstream (its URL or label) when known.
    """

    rcode = SERVFAIL
    ede: int = EDE_NETWORK_ERROR

    def __init__(self, message: str, *, upstream: str | None = None) -> None:
        super().__init__(f"{upstream}: {message}" if upstream else message)
        self.upstream = upstream
        self.detail = message  # without the upstream's name


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No answer arrived before the query's deadline."""

    ede = EDE_NO_REACHABLE_AUTHORITY


class ConnectionFailed(UpstreamError, ConnectionError):
    """The upstream could not be reached, or the connection broke."""


class TLSVerificationFailed(ConnectionFailed):
    """The upstream's certificate (name, chain or SPKI pin) did not verify."""


class BadResponse(UpstreamError):
    """The upstream answered with something that is not a valid answer to the query."""


class UpstreamRefused(UpstreamError):
    """The upstream declined the query (an HTTP error status such as 429, or overload)."""

    def __init__(self, message: str, *, upstream: str | None = None, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, upstream=upstream)
        self.status = status  # the HTTP status, when there was one
        self.retry_after = retry_after
