"""Configuration values as frozen dataclasses: upstream URLs first.

Upstream URLs (what ``--upstream`` and ``dotproxy.upstream.connect`` take):

==========================================  ===========================================
``tls://9.9.9.9:853#dns.quad9.net``         DoT; the fragment is the TLS auth name (SNI
                                            and certificate name), default the host
``https://dns.google/dns-query``            DoH over HTTP/2; ``#name`` overrides the
                                            auth name as for ``tls://``
``udp://127.0.0.1:53``, ``tcp://[::1]:53``  plain DNS (split DNS, comparisons)
==========================================  ===========================================

IPv6 literals go in brackets. Default ports: 853, 443, 53.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from dotproxy.errors import ConfigError

DEFAULT_PORTS = {"tls": 853, "https": 443, "udp": 53, "tcp": 53}


@dataclass(frozen=True, slots=True)
class UpstreamURL:
    """A parsed upstream URL."""

    scheme: str  # "tls", "https", "udp" or "tcp"
    host: str  # address or host name to connect to (IPv6 without brackets)
    port: int
    auth_name: str | None  # TLS: the name to verify and send as SNI; None for plain transports
    path: str  # DoH: the request path ("/dns-query"); "" otherwise
    url: str  # as given

    @property
    def host_is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def authority(self) -> str:
        """``host[:port]`` as an HTTP ``:authority`` (the auth name stands in for an address)."""
        name = self.auth_name or self.host
        if ":" in name:
            name = f"[{name}]"
        return name if self.port == DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_upstream_url(url: str, *, where: str | None = None) -> UpstreamURL:
    """Parse an upstream URL; a :class:`ConfigError` says what is wrong with it."""
    where = where or "upstream"
    if not isinstance(url, str) or not url:
        raise ConfigError(f"expected an upstream URL such as tls://9.9.9.9:853#dns.quad9.net, got {url!r}", where=where)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:  # an unclosed IPv6 bracket, for one
        raise ConfigError(f"{url!r}: not a valid URL ({e})", where=where) from e
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigError(
            f"{url!r}: unsupported scheme {parts.scheme!r}; use tls://, https://, udp:// or tcp://", where=where
        )
    if not host:
        raise ConfigError(f"{url!r}: no host", where=where)
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as e:
        raise ConfigError(f"{url!r}: bad port ({e})", where=where) from e
    if parts.port == 0:
        raise ConfigError(f"{url!r}: port 0 is not a port an upstream listens on", where=where)
    if parts.username or parts.password:
        raise ConfigError(f"{url!r}: credentials in an upstream URL are not supported", where=where)
    fragment = parts.fragment or None
    if scheme in ("udp", "tcp"):
        if fragment or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"{url!r}: a {scheme}:// upstream takes only host and port", where=where)
        auth_name = None
        path = ""
    else:
        auth_name = fragment or host
        if scheme == "https":
            path = parts.path or "/dns-query"
            if parts.query:
                raise ConfigError(f"{url!r}: put no query string in a DoH URL", where=where)
        else:
            if parts.path not in ("", "/") or parts.query:
                raise ConfigError(f"{url!r}: a tls:// upstream takes host, port and #auth-name only", where=where)
            path = ""
    return UpstreamURL(scheme=scheme, host=host, port=port, auth_name=auth_name, path=path, url=url)
