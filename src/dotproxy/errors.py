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
