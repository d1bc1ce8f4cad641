"""Fault knobs and counters of the test upstream.

Both are plain dataclasses. :class:`Faults` is read live: a test may change any
field while the server runs and the next query (or connection, for the fields
read at connection start) sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["TRANSPORTS", "Faults", "Stats"]

#: The transports the upstream serves, as used in :class:`Stats` keys.
TRANSPORTS = ("udp", "tcp", "dot", "doh")
STREAM_TRANSPORTS = ("tcp", "dot", "doh")


@dataclass
class Faults:
    """What should go wrong; everything is off by default.

    Per query (all transports unless noted):

    * ``latency`` + uniform(0, ``jitter``) seconds before each answer. Queries are
      answered concurrently, so different delays reorder the replies of pipelined
      queries.
    * ``drop``: probability a query is never answered.
    * ``wrong_id``: probability the reply carries another ID.
    * ``garbage``: probability the reply is 1-64 random bytes (framed on streams,
      a 200 body on DoH).
    * ``stall``: nothing is ever answered (connections are still accepted and TLS
      handshakes still finish).
    * ``truncate_udp``: UDP replies have TC=1 and no records but the question.
    * ``answer_probes``: queries for ". IN NS" (what a DoT client asks to learn that a
      connection is alive; a resolver answers it from its root priming) are answered at
      once, whatever ``latency``, ``jitter``, ``stall`` and ``drop`` say: a server that is
      slow but alive.

    Stream connections (TCP, DoT, DoH):

    * ``reorder``: replies are held for ``reorder_window`` seconds and each batch is
      written in reverse order (DoH: the streams of a batch are answered in reverse).
    * ``close_after``: the server closes the connection (FIN) after writing N replies.
    * ``in_order`` (TCP, DoT): replies leave in the order their queries came, as from a
      server that serves a connection one query at a time (dnsdist's DoT default): a slow
      answer holds back every later one, a probe's included.
    * ``idle_close``: the server closes the connection (FIN) after T seconds without
      a query (read when a connection opens and at each query).
      On DoH both closes are a bare TLS close, without GOAWAY (``goaway_after`` is
      the graceful one).

    TLS (DoT and DoH):

    * ``tls_fail``: handshakes fail (the server aborts with a handshake_failure alert).

    DoH:

    * ``goaway_after``: after N requests on a connection the server sends GOAWAY
      (NO_ERROR, last_stream_id = the N-th stream), answers streams up to it, leaves
      later ones unprocessed, and closes once the answers are written. With
      ``goaway_before_answers`` (the default, as servers shutting down gracefully do)
      the GOAWAY goes out at once, before the answers to streams up to it; without,
      right after the last of them.
    * ``max_concurrent_streams``: SETTINGS_MAX_CONCURRENT_STREAMS advertised by new
      connections (``None``: 1000). Streams beyond it are refused (RST_STREAM
      REFUSED_STREAM).
    * ``http_status``: with probability ``http_status_rate`` a request is answered
      with this status and no body (429 and 503 carry ``retry-after: 1``).
    """

    latency: float = 0.0
    jitter: float = 0.0
    reorder: bool = False
    reorder_window: float = 0.005
    drop: float = 0.0
    wrong_id: float = 0.0
    garbage: float = 0.0
    stall: bool = False
    close_after: int | None = None
    idle_close: float | None = None
    tls_fail: bool = False
    goaway_after: int | None = None
    goaway_before_answers: bool = True
    max_concurrent_streams: int | None = None
    http_status: int | None = None
    http_status_rate: float = 1.0
    truncate_udp: bool = False
    answer_probes: bool = False
    in_order: bool = False

    def reset(self) -> None:
        """Turn every fault off again."""
        for f in fields(self):
            setattr(self, f.name, f.default)


def _per_transport() -> dict[str, int]:
    return dict.fromkeys(TRANSPORTS, 0)


def _per_stream_transport() -> dict[str, int]:
    return dict.fromkeys(STREAM_TRANSPORTS, 0)


@dataclass
class Stats:
    """Counters of a :class:`~dotproxy.testing.TestUpstream` (read them, or :meth:`reset`).

    ``queries``                DNS messages received, per transport ("udp", "tcp", "dot", "doh")
    ``replies``                DNS replies written, per transport
    ``replies_sent``           DNS replies written, all transports (including wrong-ID, garbage and TC ones)
    ``queries_dropped``        queries that got no reply: ``drop``, ``stall``, an answer of ``None``
    ``replies_discarded``      replies ready after their connection closed, blackholed or their stream reset
    ``wrong_ids_sent``         replies sent with a wrong ID
    ``garbage_sent``           replies replaced by random bytes
    ``truncated_sent``         UDP replies sent with TC=1 (``truncate_udp`` or too large)
    ``answer_errors``          exceptions raised by the answer function (the query gets SERVFAIL)
    ``probes_answered``        ". IN NS" queries answered at once by ``answer_probes``
    ``connections_accepted``   per stream transport ("tcp", "dot", "doh")
    ``connections_open``       stream connections open now (TLS handshakes in progress included)
    ``connections_closed_by_server``  FINs the server chose to send (close_after, idle_close,
                               goaway_after, close_all_connections, protocol errors)
    ``connections_blackholed`` connections made silent by ``blackhole_all_connections``
    ``tls_handshakes``         TLS handshakes completed (DoT and DoH)
    ``tls_resumed``            of which resumed a session (server ``ssl_object.session_reused``)
    ``tls_handshake_failures`` handshakes that failed or timed out (injected ones included)
    ``tls_fail_injected``      handshakes failed on purpose by ``tls_fail``
    ``doh_streams``            HTTP/2 requests (streams opened by clients)
    ``doh_streams_refused``    streams reset with REFUSED_STREAM (over ``max_concurrent_streams``)
    ``doh_streams_unprocessed`` streams opened after our GOAWAY, never answered
    ``goaways_sent``           GOAWAY frames sent (``goaway_after``, protocol errors)
    ``http_errors_sent``       non-200 HTTP responses (400, 404, 405, 413, 415, injected ``http_status``, 505)
    ``protocol_errors``        malformed client input (zero-length frames, HTTP/2 protocol errors)
    ``internal_errors``        unexpected exceptions inside the server (should stay 0)
    """

    queries: dict[str, int] = field(default_factory=_per_transport)
    replies: dict[str, int] = field(default_factory=_per_transport)
    replies_sent: int = 0
    queries_dropped: int = 0
    replies_discarded: int = 0
    wrong_ids_sent: int = 0
    garbage_sent: int = 0
    truncated_sent: int = 0
    answer_errors: int = 0
    probes_answered: int = 0
    connections_accepted: dict[str, int] = field(default_factory=_per_stream_transport)
    connections_open: int = 0
    connections_closed_by_server: int = 0
    connections_blackholed: int = 0
    tls_handshakes: int = 0
    tls_resumed: int = 0
    tls_handshake_failures: int = 0
    tls_fail_injected: int = 0
    doh_streams: int = 0
    doh_streams_refused: int = 0
    doh_streams_unprocessed: int = 0
    goaways_sent: int = 0
    http_errors_sent: int = 0
    protocol_errors: int = 0
    internal_errors: int = 0

    @property
    def queries_total(self) -> int:
        return sum(self.queries.values())

    def snapshot(self) -> dict:
        """A JSON-ready copy of every counter."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = dict(v) if isinstance(v, dict) else v
        return out

    def reset(self) -> None:
        """Zero every counter except ``connections_open`` (a gauge)."""
        open_now = self.connections_open
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                for k in v:
                    v[k] = 0
            else:
                setattr(self, f.name, 0)
        self.connections_open = open_now
