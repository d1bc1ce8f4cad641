"""Pooled, pipelined DNS-over-TLS (RFC 7858) and DNS-over-TCP (RFC 7766) upstreams.

Many queries are in flight per connection and answered in any order; all the
queries queued in one loop iteration leave in one socket write, one TLS record
per query (see :meth:`StreamConnection.write_pending`).
"""

from __future__ import annotations

import logging

from dotproxy.proto.dot import (
    AnswerReceived,
    KeepaliveReceived,
    LateAnswerDropped,
    StreamClient,
    UnexpectedAnswerDropped,
)
from dotproxy.upstream.pool import PooledConnection, PooledUpstream

log = logging.getLogger("dotproxy.upstream")


class StreamConnection(PooledConnection):
    """One DoT or TCP connection around a sans-IO :class:`StreamClient`."""

    def __init__(self, pool: StreamUpstream, loop) -> None:
        super().__init__(pool, loop)
        encrypted = pool.tls is not None
        o = pool.options
        self.core = self._stream = StreamClient(pad_block=o.pad_block if encrypted else None,
                                                keepalive=o.keepalive and encrypted)

    def send_query(self, ticket, now: float) -> int:
        return self._stream.send_query(ticket.data, now, ticket.query)  # typed when compiled: a C call

    def write_pending(self) -> bool:
        """One TLS record per DNS message, all of them in one socket write (asyncio's and uvloop's
        TLS transports make a record per item of ``writelines`` and send them together).

        dnsdist 1.7 serves a DoT connection one query at a time: it reads the first query of a
        record (OpenSSL decrypts the whole record), answers it, then waits for the *socket* to
        become readable again, never for what OpenSSL already holds; the other queries of that
        record stay unread until its read timeout (2 s) closes the connection, counted as
        ``tcpClientTimeouts`` (later dnsdist reads after each answer). Measured against
        Debian's 1.7.3: 20 queries in one record, 1 answer and a close; a record each, 20 answers
        (docs/interop.md).
        """
        frames = self._stream.frames_to_send()
        if frames:
            self.transport.writelines(frames)
            return True
        return False

    # Reads: uvloop hands TLS records straight into the core's buffer (get_buffer and
    # buffer_updated, the BufferedProtocol pair); asyncio's loops call data_received.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._stream.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        now = self.loop.time()
        self._handle(self._stream.buffer_updated(nbytes, now), now)

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._handle(self._stream.receive_data(data, now), now)

    def _handle(self, events: list, now: float) -> None:
        pool = self.pool
        stats = pool.stats
        answered = False
        for event in events:
            kind = type(event)
            if kind is AnswerReceived:
                answered = True
                answer = event  # typed when compiled: its fields are read in C
                self.resolve(answer.query_id, answer.data)
                pool._observe_rtt(answer.rtt)
            elif kind is LateAnswerDropped:
                stats.late_answers += 1
            elif kind is UnexpectedAnswerDropped:
                stats.unexpected_answers += 1
                log.debug("%s: dropped an answer: %s", pool.name, event.reason)
            elif kind is KeepaliveReceived:
                # The server closes idle connections after this: close a little before it does.
                self.shorten_idle_timeout(min(pool.options.idle_timeout, event.timeout * 0.9))
        if answered:
            self.answered(now)
        self.read_done()

    def probe(self, now: float) -> None:
        self.core.send_probe(now)

    def cancelled(self) -> None:
        if self.core.orphans > self.pool.options.max_orphans:
            self.end_as("orphans")
            self.retire()


class StreamUpstream(PooledUpstream):
    """A pool of pipelined DoT (``tls`` given) or plain TCP (``tls=None``) connections to one server."""

    connection_class = StreamConnection
