"""A flow: one client conversation, and the owner of every query it starts.

A UDP flow carries datagrams from possibly several endpoints, each answer going
back to the endpoint its query came from; a TCP flow carries RFC 7766 stream
bytes in any chunking (two-octet length framing, pipelined queries answered out
of order). Every query gets exactly one answer before its deadline — the
upstream's, or SERVFAIL with an RFC 8914 Extended DNS Error saying why — unless
the flow closes first: then nothing more is delivered, and everything its
queries started (upstream queries, so DoT IDs are orphaned and DoH streams
reset) is cancelled. A failing delivery (the client is gone) closes this flow
only; nothing that happens in one flow reaches another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dotproxy import wire
from dotproxy.wire import parse_query
from dotproxy.errors import FORMERR, REFUSED, SERVFAIL, UpstreamError, UpstreamTimeout, WireError
from dotproxy.querylog import QueryRecord
from dotproxy.upstream.base import AnswerSink
from dotproxy.upstream.pool import PooledUpstream

log = logging.getLogger("dotproxy.flows")

#: resolve(query bytes, parsed query, absolute deadline, callback) -> a handle with cancel();
#: callback(answer, None) or callback(None, error) comes exactly once unless cancelled first.
Resolver = Callable[..., object]

# RFC 8914 info codes the flow itself uses.
EDE_OTHER = 0
EDE_NOT_READY = 14

#: Without EDNS a UDP answer must fit 512 bytes; with EDNS, the client's size, but never
#: above what survives the path without fragments (DNS flag day 2020).
_UDP_PLAIN = 512
_UDP_EDNS_CAP = 1232


class FlowGone(Exception):
    """What a deliver callback raises when its consumer has already closed the flow
    (an embedding host's close() on its way to the engine): the flow closes quietly."""


class FlowStats:
    """Counters shared by the flows of one engine (C integers when compiled: several per query)."""

    __slots__ = _STAT_NAMES = (
        "queries",
        "answered",
        "servfail",
        "formerr",
        "refused_overload",
        "dropped_unreadable",  # not even a header: no answer possible
        "truncated",
        "cancelled",  # queries whose flow closed before their answer
        "write_failures",
        "flows_opened",
        "flows_closed",
    )

    def __init__(self) -> None:
        for name in FlowStats._STAT_NAMES:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FlowStats._STAT_NAMES}

    def __repr__(self) -> str:
        return "FlowStats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


class DatagramSink:
    """Where a UDP flow's answers go, as an object: ``send(answer, endpoint)``.

    A flow's ``deliver`` may be any callable; a subclass of this one (the batched UDP
    listener) is called as a C method by a compiled flow, a callable through Python."""

    __slots__ = ()

    def send(self, data: bytes, endpoint) -> None:
        raise NotImplementedError

    def __call__(self, data: bytes, endpoint) -> None:
        self.send(data, endpoint)


class Admission:
    """The engine-wide cap on queries in flight: past it, queries are refused at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def admit(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


class _FlowQuery(AnswerSink):
    """One query of a flow: what its answer needs, and the handle that cancels it.

    It is also the resolver's callback (an :class:`AnswerSink`: a C call from a compiled
    pool): one object per query, no closure."""

    __slots__ = ("flow", "data", "query", "endpoint", "deadline", "handle", "prev", "next", "listed")
    # prev/next/listed: its place in the flow's list of queries in flight (no hashing per query).

    def resolved(self, answer: bytes | None, error: BaseException | None) -> None:
        self.flow._resolved(self, answer, error)


class Flow:
    """One client conversation (``kind`` "udp" or "tcp") and the owner of its queries in flight."""

    def __init__(self, kind: str, resolve: Resolver, deliver: Callable, *, timeout: float, admission: Admission,
                 stats: FlowStats, name: str = "flow", on_close: Callable[[Flow], None] | None = None,
                 metadata: object = None, query_log: Callable[[QueryRecord], None] | None = None) -> None:
        if kind not in ("udp", "tcp"):
            raise ValueError(f"a flow is 'udp' or 'tcp', not {kind!r}")
        self.kind = kind
        self.name = name
        self.metadata = metadata
        self._resolve = resolve
        # A lone pool's submit_parsed (the engine's choice with one upstream) is called on
        # the pool itself: a C call per query when compiled, not a bound-method call.
        owner = getattr(resolve, "__self__", None)
        self._pool = owner if isinstance(owner, PooledUpstream) and resolve == owner.submit_parsed else None
        self._deliver = deliver
        self._sink = deliver if isinstance(deliver, DatagramSink) else None
        self._timeout = timeout
        self._admission = admission
        self._stats = stats
        self._on_close = on_close
        self._query_log = query_log  # None: no records are built at all
        # Queries in flight: a doubly linked list through the queries, oldest first.
        self._first: _FlowQuery | None = None
        self._last: _FlowQuery | None = None
        self._count = 0
        self._time = asyncio.get_running_loop().time
        self._idle: asyncio.Future | None = None  # set when the last query in flight is answered
        self._buffer = bytearray()  # TCP: bytes of an incomplete message
        self.closed = False
        stats.flows_opened += 1

    @property
    def in_flight(self) -> int:
        """Queries accepted and not yet answered (or cancelled)."""
        return self._count

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, endpoint=None) -> None:
        """A datagram (UDP) or stream bytes in any chunking (TCP). A no-op once closed."""
        if self.closed:
            return
        if self.kind == "udp":
            self._query(data if type(data) is bytes else bytes(data), endpoint)
            return
        buf = self._buffer
        buf += data
        off = 0
        n = len(buf)
        while n - off >= 2:
            length = (buf[off] << 8) | buf[off + 1]
            if n - off - 2 < length:
                break
            self._query(bytes(buf[off + 2 : off + 2 + length]), endpoint)
            off += 2 + length
            if self.closed:
                return
        del buf[:off]

    def _query(self, data: bytes, endpoint) -> None:
        stats = self._stats
        stats.queries += 1
        try:
            query = parse_query(data)
        except WireError:
            self._answer_error(data, FORMERR, endpoint)
            return
        if not self._admission.admit():
            stats.refused_overload += 1
            self._send(wire.make_error(data, REFUSED, ede=(EDE_NOT_READY, "overloaded")), endpoint, query,
                       "refused")
            return
        now = self._time()
        deadline = now + self._timeout
        # Built field by field (no __init__ call: cheaper per query when compiled).
        pending = _FlowQuery.__new__(_FlowQuery)
        pending.flow = self
        pending.data = data
        pending.query = query
        pending.endpoint = endpoint
        pending.deadline = deadline
        pending.handle = None
        pending.next = None
        pending.prev = last = self._last
        if last is None:
            self._first = pending
        else:
            last.next = pending
        self._last = pending
        pending.listed = True
        self._count += 1
        try:
            if self._pool is not None:
                handle = self._pool.submit_parsed(data, query, deadline, pending, now)  # a C call when compiled
            else:
                handle = self._resolve(data, query, deadline, pending)
        except Exception as e:  # a bug must cost this query a SERVFAIL, not the flow or the engine
            log.exception("%s: resolving failed", self.name)
            self._resolved(pending, None, e)
            return
        if pending.listed:  # not answered at once
            pending.handle = handle

    def _answer_error(self, data: bytes, rcode: int, endpoint) -> None:
        try:
            answer = wire.make_error(data, rcode)
        except WireError:  # not even a header: nobody to answer
            self._stats.dropped_unreadable += 1
            return
        self._stats.formerr += rcode == FORMERR
        self._send(answer, endpoint, None, "formerr")

    def _resolved(self, pending: _FlowQuery, answer: bytes | None, error: BaseException | None) -> None:
        if not pending.listed:
            return  # the flow closed first: nothing is delivered
        prev, nxt = pending.prev, pending.next
        if prev is None:
            self._first = nxt
        else:
            prev.next = nxt
        if nxt is None:
            self._last = prev
        else:
            nxt.prev = prev
        pending.prev = pending.next = None
        pending.listed = False
        self._count -= 1
        handle, pending.handle = pending.handle, None
        data, query, endpoint = pending.data, pending.query, pending.endpoint
        self._admission.release()
        outcome = "answered"
        if error is not None:
            outcome = "timeout" if isinstance(error, UpstreamTimeout) else "servfail"
            self._stats.servfail += 1
            if isinstance(error, UpstreamError):
                answer = wire.make_error(data, SERVFAIL, ede=(error.ede, error.detail[:200]))
            else:
                log.error("%s: resolving failed: %r", self.name, error)
                answer = wire.make_error(data, SERVFAIL, ede=(EDE_OTHER, f"internal error: {type(error).__name__}"))
        if self._query_log is None:
            self._send(answer, endpoint, query)
        else:
            # A failure inside submit() comes before the flow holds the handle: the error names the upstream.
            upstream = getattr(handle, "upstream", None) or getattr(error, "upstream", None)
            self._send(answer, endpoint, query, outcome, pending.deadline - self._timeout, upstream)
        if not self._count and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    # ------------------------------------------------------------ output

    def _send(self, answer: bytes, endpoint, query: wire.Query | None, outcome: str = "answered",
              started: float | None = None, upstream: str | None = None) -> None:
        if self.closed:
            return
        if self.kind == "udp":
            if query is not None:
                edns = query.edns
                limit = _UDP_PLAIN if edns is None else max(_UDP_PLAIN, min(edns.udp_size, _UDP_EDNS_CAP))
                if len(answer) > limit:
                    answer = wire.truncate(answer, limit)
                    self._stats.truncated += 1
                    outcome = "truncated"
            message = answer
        else:
            message = len(answer).to_bytes(2, "big") + answer
        try:
            if self._sink is not None:
                self._sink.send(message, endpoint)  # a C call when compiled
            elif self.kind == "udp":
                self._deliver(message, endpoint)
            else:
                self._deliver(message)
        except FlowGone:
            self.close()
            return
        except Exception as e:  # the client is gone ("flow is not connected"): this flow ends, nothing else
            self._stats.write_failures += 1
            log.debug("%s: delivery failed (%s): closing the flow", self.name, e)
            self.close()
            return
        self._stats.answered += 1
        if self._query_log is not None:
            self._record(answer, query, outcome, started, upstream)

    def _record(self, answer: bytes, query: wire.Query | None, outcome: str, started: float | None,
                upstream: str | None) -> None:
        latency = 0.0 if started is None else max(0.0, self._time() - started)
        try:
            rcode = wire.scan_response(answer).rcode  # extended by the OPT record's upper bits
        except WireError:  # an error answer to an unreadable query: the header says enough
            rcode = answer[3] & 0x0F
        self._query_log(QueryRecord(
            qname=None if query is None else query.qname, qtype=None if query is None else query.qtype,
            rcode=rcode, answers=(answer[6] << 8) | answer[7], outcome=outcome, latency=latency,
            upstream=upstream, transport=self.kind, metadata=self.metadata))

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """From now on nothing is delivered; every query in flight is cancelled, at once."""
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        pending = self._first
        self._first = self._last = None
        self._count = 0
        while pending is not None:
            nxt = pending.next
            pending.prev = pending.next = None
            pending.listed = False
            self._admission.release()
            self._stats.cancelled += 1
            handle, pending.handle = pending.handle, None
            if handle is not None:
                handle.cancel()
            pending = nxt
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        self._stats.flows_closed += 1
        if self._on_close is not None:
            self._on_close(self)

    async def aclose(self) -> None:
        """Close. (Queries are callbacks, not tasks: nothing is left to wait for.)"""
        self.close()

    async def drain(self, timeout: float) -> None:
        """Let the queries in flight finish for up to ``timeout`` seconds, then close."""
        if self._count and not self.closed:
            self._idle = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._idle], timeout=timeout)
        self.close()
