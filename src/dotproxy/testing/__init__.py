"""An in-process, fault-injecting DNS upstream for tests, benchmarks and demos.

:class:`TestUpstream` serves plain UDP, plain TCP (RFC 7766), DoT (RFC 7858) and
DoH over HTTP/2 (RFC 8484) on loopback ephemeral ports, from the running asyncio
loop (default or uvloop), with certificates from a throw-away CA::

    from dotproxy.testing import Faults, TestUpstream

    async with TestUpstream(faults=Faults(latency=0.02)) as up:
        up.dot_url      # "tls://127.0.0.1:PORT#dns.test", trust up.ca_file
        up.doh_url      # "https://127.0.0.1:PORT/dns-query"
        up.faults.drop = 0.3
        up.stats.queries["doh"]

``python -m dotproxy.testing`` runs one in its own process (see ``__main__``).
:class:`TcpRelay` goes between a client and a server and can make the path go
silent while both sockets stay open.
"""

from dotproxy.testing.answer import (
    ANSWER_A,
    ANSWER_AAAA,
    ANSWER_TTL,
    NXDOMAIN_ZONE,
    SOA_MINIMUM,
    default_answer,
)
from dotproxy.testing.certs import (
    TLS_NAME,
    Certificates,
    client_ssl_context,
    make_certificates,
    server_ssl_context,
)
from dotproxy.testing.faults import TRANSPORTS, Faults, Stats
from dotproxy.testing.relay import RelayStats, TcpRelay
from dotproxy.testing.server import AnswerFunction, TestUpstream

__all__ = [
    "ANSWER_A",
    "ANSWER_AAAA",
    "ANSWER_TTL",
    "NXDOMAIN_ZONE",
    "SOA_MINIMUM",
    "TLS_NAME",
    "TRANSPORTS",
    "AnswerFunction",
    "Certificates",
    "Faults",
    "RelayStats",
    "Stats",
    "TcpRelay",
    "TestUpstream",
    "client_ssl_context",
    "default_answer",
    "make_certificates",
    "server_ssl_context",
]
