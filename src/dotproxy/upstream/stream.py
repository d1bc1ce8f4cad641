"""Pooled, pipelined DNS-over-TLS (RFC 7858) and DNS-over-TCP (RFC 7766) upstreams.

Many queries are in flight per connection and answered in any order; all the
queries queued in one loop iteration leave in one socket write of two TLS records
(see :meth:`StreamConnection.write_pending`).
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
        """Every query queued in this loop iteration, in one socket write of two TLS records:
        all of them but the last, then the last alone (asyncio's and uvloop's TLS transports
        make a record per item of ``writelines`` and send them together).

        Why not one record: dnsdist 1.7 serves a DoT connection one query at a time (N with
        ``maxInFlight``). Reading the first query makes OpenSSL decrypt the whole record, the
        other queries wait in OpenSSL's buffer, and after answering dnsdist waits for the
        *socket* to become readable, never for what OpenSSL already holds: with nothing more
        sent, they stay unread until its read timeout (2 s) closes the connection
        (``tcpClientTimeouts``; later dnsdist reads after each answer). A record that follows
        keeps the socket readable until the buffer is drained (OpenSSL reads one record at a
        time), and the last query, alone in it, leaves nothing buffered behind. A record per
        query would do the same at an OpenSSL record each: ~7% fewer queries per CPU-second
        against unbound at concurrency 500 (docs/interop.md).
        """
        frames = self._stream.frames_to_send()
        if not frames:
            return False
        if len(frames) > 2:
            last = frames.pop()
            frames = [b"".join(frames), last]
        self.transport.writelines(frames)
        return True

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
