"""Upstream resolvers: pooled DoT, multiplexed DoH/2, plain UDP and TCP, behind one interface.

    up = dotproxy.upstream.connect("tls://9.9.9.9:853#dns.quad9.net")
    answer = await up.query(wire_query, deadline=loop.time() + 2.0)
    await up.aclose()

``connect`` returns at once without dialling: the first query dials.
"""

from __future__ import annotations

from dotproxy.config import parse_upstream_url
from dotproxy.upstream.base import Upstream, UpstreamOptions, UpstreamStats

__all__ = ["Upstream", "UpstreamOptions", "UpstreamStats", "connect"]


def connect(url: str, *, ca_file: str | None = None, **options) -> Upstream:
    """An upstream for ``url`` (``tls://``, ``https://``, ``udp://``, ``tcp://``); see ``UpstreamOptions``."""
    parsed = parse_upstream_url(url)
    opts = UpstreamOptions.from_kwargs(options, where=f"upstream {url}")
    if parsed.scheme == "tls":
        from dotproxy.io.tls import client_context
        from dotproxy.upstream.stream import StreamUpstream

        return StreamUpstream(parsed, opts, tls=client_context(ca_file=ca_file, verify=opts.verify, where=url))
    if parsed.scheme == "tcp":
        from dotproxy.upstream.stream import StreamUpstream

        return StreamUpstream(parsed, opts, tls=None)
    if parsed.scheme == "udp":
        from dotproxy.upstream.udp import UdpUpstream

        return UdpUpstream(parsed, opts)
    from dotproxy.io.tls import client_context
    from dotproxy.upstream.doh import DohUpstream

    return DohUpstream(parsed, opts, tls=client_context(ca_file=ca_file, verify=opts.verify, alpn=["h2"], where=url))
