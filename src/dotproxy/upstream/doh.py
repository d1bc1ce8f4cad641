"""Pooled DNS-over-HTTPS (RFC 8484) upstream over HTTP/2.

Each connection multiplexes many queries as streams, within the server's
SETTINGS_MAX_CONCURRENT_STREAMS (the rest wait in the connection's queue). A
GOAWAY moves the queries the server did not process to another connection
without using up their retry; a reused connection is PINGed with its first
query, so a dead one is found within the liveness bound. An HTTP 429 (or 503)
makes the upstream refuse new queries for the server's Retry-After, or a jittered
back-off, so a client can fall over to another upstream instead of piling on.
"""

from __future__ import annotations

import logging

from dotproxy.errors import BadResponse, ConnectionFailed, UpstreamError, UpstreamRefused
from dotproxy.proto.doh import (
    AnswerReceived,
    ConnectionBroken,
    DohClient,
    GoAwayReceived,
    PingAcknowledged,
    QueryFailed,
)
from dotproxy.upstream.pool import PooledConnection, PooledUpstream, Resend

log = logging.getLogger("dotproxy.upstream")


class DohConnection(PooledConnection):
    """One HTTP/2 connection around a sans-IO :class:`DohClient`."""

    def __init__(self, pool: DohUpstream, loop) -> None:
        super().__init__(pool, loop)
        o = pool.options
        self.core = self._doh = DohClient(authority=pool.url.authority, path=pool.url.path, method=o.method,
                                          pad_block=o.pad_block, max_streams=o.max_outstanding, upstream=pool.name)

    def send_query(self, ticket, now: float) -> int:
        return self._doh.send_query(ticket.data, now, ticket.query)  # typed when compiled: a C call

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.schedule_flush()  # the connection preface and our SETTINGS

    def usable(self) -> bool:
        return self.ready and not self.draining and self._doh.is_accepting()

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        pool = self.pool
        answered = False
        for event in self._doh.receive_data(data, now):
            kind = type(event)
            if kind is AnswerReceived:
                answered = True
                answer = event  # typed when compiled: its fields are read in C
                self.resolve(answer.query_id, answer.data)
                pool._observe_rtt(answer.rtt)
            elif kind is QueryFailed:
                answered = True
                if event.retry:
                    self.reject(event.query_id, Resend("server refused the stream", free=True, refused=True))
                else:
                    if isinstance(event.error, BadResponse):
                        pool.stats.unexpected_answers += 1
                    pool._failed_with(event.error, now)
                    self.reject(event.query_id, event.error)
            elif kind is GoAwayReceived:
                answered = True
                log.info("%s: server sent GOAWAY (code %s); moving %d unprocessed queries",
                         pool.name, event.error_code, len(event.unprocessed))
                for query_id in event.unprocessed:
                    self.reject(query_id, Resend("server sent GOAWAY", free=True))
                self.end_as("goaway")
                self.retire()
            elif kind is PingAcknowledged:
                pool._observe_rtt(event.rtt)
            elif kind is ConnectionBroken:
                log.warning("%s: %s", pool.name, event.reason)
                for query_id in event.query_ids:
                    self.reject(query_id, Resend(event.reason))
                self.end_as("broken")
                self.ready = False
                self.abort()
        self.schedule_flush()  # WINDOW_UPDATEs, PING ACKs, SETTINGS ACK
        if answered:
            self.answered(now)
        self.read_done()

    def probe(self, now: float) -> None:
        self.core.ping(now)

    def say_goodbye(self) -> None:
        self.core.close()
        self._flush()


class DohUpstream(PooledUpstream):
    """A pool of HTTP/2 connections to one DoH server."""

    connection_class = DohConnection

    def __init__(self, url, options, *, tls) -> None:
        super().__init__(url, options, tls=tls)
        self._refused_until = 0.0
        self._refusal: UpstreamError | None = None

    def capacity(self, conn: PooledConnection) -> int:
        core = conn.core  # typed when compiled: a C call below
        limit = core.current_stream_limit()
        if limit > self._max_outstanding:
            limit = self._max_outstanding
        # While another connection is on its way (or may be dialled), queries past the stream
        # limit wait in the pool, so that the new connection takes them when it is ready: in a
        # connection's own queue they would wait for its streams even with the other one idle
        # (found by a test: 50 of 250 queries stuck behind 20-second answers). Otherwise
        # allow a backlog of the same size in the connection's queue.
        if self._dial_task is not None or (
                len(self._conns) < self._pool_size and self._backoff.blocking(self.loop.time()) is None):
            return limit
        return 2 * limit

    def check_session(self, transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            raise ConnectionFailed(f"server did not agree to HTTP/2 (ALPN {ssl_object.selected_alpn_protocol()!r})",
                                   upstream=self.name)

    def refusing(self, now: float) -> UpstreamError | None:
        if now < self._refused_until:
            return UpstreamRefused(f"{self._refusal.detail}; not asking again for {self._refused_until - now:.1f}s",
                                   upstream=self.name, status=self._refusal.status,
                                   retry_after=self._refused_until - now)
        return None

    def _failed_with(self, error: UpstreamError, now: float) -> None:
        if isinstance(error, UpstreamRefused) and error.status in (429, 503):
            wait = error.retry_after if error.retry_after is not None else self.options.backoff_min
            self._refused_until = max(self._refused_until, now + min(wait, self.options.backoff_max))
            self._refusal = error
