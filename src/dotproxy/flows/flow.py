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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dotproxy import wire
from dotproxy.errors import FORMERR, REFUSED, SERVFAIL, UpstreamError, WireError
from dotproxy.tasks import TaskOwner

log = logging.getLogger("dotproxy.flows")

#: resolve(query bytes, parsed query, absolute deadline) -> answer bytes; raises UpstreamError.
Resolver = Callable[[bytes, wire.Query, float], Awaitable[bytes]]

# RFC 8914 info codes the flow itself uses.
EDE_OTHER = 0
EDE_NOT_READY = 14

_MAX_TCP_MESSAGE = 0xFFFF
#: Without EDNS a UDP answer must fit 512 bytes; with EDNS, the client's size, but never
#: above what survives the path without fragments (DNS flag day 2020).
_UDP_PLAIN = 512
_UDP_EDNS_CAP = 1232


@dataclass(slots=True)
class FlowStats:
    """Counters shared by the flows of one engine."""

    queries: int = 0
    answered: int = 0
    servfail: int = 0
    formerr: int = 0
    refused_overload: int = 0
    dropped_unreadable: int = 0  # not even a header: no answer possible
    truncated: int = 0
    cancelled: int = 0  # queries whose flow closed before their answer
    write_failures: int = 0
    flows_opened: int = 0
    flows_closed: int = 0


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


class Flow:
    """One client conversation (``kind`` "udp" or "tcp") and the tasks of its queries."""

    def __init__(self, kind: str, resolve: Resolver, deliver: Callable, *, timeout: float, admission: Admission,
                 stats: FlowStats, name: str = "flow", on_close: Callable[[Flow], None] | None = None,
                 metadata: object = None) -> None:
        if kind not in ("udp", "tcp"):
            raise ValueError(f"a flow is 'udp' or 'tcp', not {kind!r}")
        self.kind = kind
        self.name = name
        self.metadata = metadata
        self._resolve = resolve
        self._deliver = deliver
        self._timeout = timeout
        self._admission = admission
        self._stats = stats
        self._on_close = on_close
        self._tasks = TaskOwner(name)
        self._buffer = bytearray()  # TCP: bytes of an incomplete message
        self._pending = 0
        self.closed = False
        stats.flows_opened += 1

    @property
    def in_flight(self) -> int:
        """Queries accepted and not yet answered (or cancelled)."""
        return self._pending

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, endpoint=None) -> None:
        """A datagram (UDP) or stream bytes in any chunking (TCP). A no-op once closed."""
        if self.closed:
            return
        if self.kind == "udp":
            self._query(bytes(data), endpoint)
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
            query = wire.parse_query(data)
        except WireError:
            self._answer_error(data, FORMERR, endpoint)
            return
        if not self._admission.admit():
            stats.refused_overload += 1
            self._send(wire.make_error(data, REFUSED, ede=(EDE_NOT_READY, "overloaded")), endpoint, query)
            return
        deadline = asyncio.get_running_loop().time() + self._timeout
        self._pending += 1
        try:
            self._tasks.spawn(self._answer(data, query, endpoint, deadline), name=self.name)
        except BaseException:
            self._pending -= 1
            self._admission.release()
            raise

    def _answer_error(self, data: bytes, rcode: int, endpoint) -> None:
        try:
            answer = wire.make_error(data, rcode)
        except WireError:  # not even a header: nobody to answer
            self._stats.dropped_unreadable += 1
            return
        self._stats.formerr += rcode == FORMERR
        self._send(answer, endpoint, None)

    async def _answer(self, data: bytes, query: wire.Query, endpoint, deadline: float) -> None:
        try:
            try:
                answer = await self._resolve(data, query, deadline)
            except UpstreamError as e:
                self._stats.servfail += 1
                answer = wire.make_error(data, SERVFAIL, ede=(e.ede, e.detail[:200]))
            except asyncio.CancelledError:
                self._stats.cancelled += 1
                raise
            except Exception as e:  # a bug must cost this query a SERVFAIL, not the flow or the engine
                log.exception("%s: resolving failed", self.name)
                self._stats.servfail += 1
                answer = wire.make_error(data, SERVFAIL, ede=(EDE_OTHER, f"internal error: {type(e).__name__}"))
            self._send(answer, endpoint, query)
        finally:
            self._pending -= 1
            self._admission.release()

    # ------------------------------------------------------------ output

    def _send(self, answer: bytes, endpoint, query: wire.Query | None) -> None:
        if self.closed:
            return
        if self.kind == "udp":
            if query is not None:
                limit = _UDP_PLAIN if query.edns is None else max(_UDP_PLAIN, min(query.edns.udp_size, _UDP_EDNS_CAP))
                if len(answer) > limit:
                    answer = wire.truncate(answer, limit)
                    self._stats.truncated += 1
            message = answer
        else:
            message = len(answer).to_bytes(2, "big") + answer
        self._stats.answered += 1
        try:
            if self.kind == "udp":
                self._deliver(message, endpoint)
            else:
                self._deliver(message)
        except Exception as e:  # the client is gone ("flow is not connected"): this flow ends, nothing else
            self._stats.write_failures += 1
            log.debug("%s: delivery failed (%s): closing the flow", self.name, e)
            self.close()

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """From now on nothing is delivered; every query in flight is cancelled (synchronously)."""
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        self._tasks.cancel_all()
        self._stats.flows_closed += 1
        if self._on_close is not None:
            self._on_close(self)

    async def aclose(self) -> None:
        """Close, and wait until every task this flow started has finished."""
        self.close()
        await self._tasks.aclose()

    async def drain(self, timeout: float) -> None:
        """Let the queries in flight finish for up to ``timeout`` seconds, then close."""
        await self._tasks.wait_idle(timeout)
        await self.aclose()
