"""sans-IO client side of a DNS stream connection: DoT (RFC 7858) and plain TCP (RFC 7766).

One :class:`StreamClient` is one connection's protocol state: it frames queries
(two-octet length), gives each a connection-unique message ID, pads them
(RFC 8467) and asks for edns-tcp-keepalive (RFC 7828), matches answers arriving
in any order to their queries, restores the client's ID and checks the question.
It does no I/O and reads no clock: bytes and ``now`` in, events out, bytes to
write pulled with :meth:`data_to_send` (the h2 way).

Cancelled queries leave their ID *orphaned* — reserved until the late answer
arrives (then dropped and counted) or the connection ends — so a late answer can
never be taken for a newer query's.
"""

from __future__ import annotations

from dataclasses import dataclass

from dotproxy import wire
from dotproxy.errors import WireError
from dotproxy.wire import frame_query, match_answer, parse_query, scan_response
from dotproxy.proto.answers import AnswerReceived, answer_received

_U16_MAX = 0x10000
_MIN_ROOM = 4096  # input room get_buffer() gives when the caller has no size in mind
# ". IN NS": every resolver answers it at once from its root priming; a probe asks it.
_PROBE = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x00\x00\x02\x00\x01"  # ID 0, RD, ". IN NS"


# ----------------------------------------------------------------- events (past tense)


@dataclass(slots=True)
class LateAnswerDropped:
    """An answer to a cancelled query arrived and was dropped."""

    query_id: int


@dataclass(slots=True)
class UnexpectedAnswerDropped:
    """A message that answers nothing we asked: unknown ID, wrong question, or unparsable."""

    wire_id: int | None
    reason: str


@dataclass(slots=True)
class KeepaliveReceived:
    """The server's RFC 7828 idle timeout, in seconds (0: close as soon as idle): on the first
    answer that carries it, and again whenever it changes (servers repeat it in every answer)."""

    timeout: float


class _Pending:
    """What an answer needs from its query (built by :meth:`StreamClient.send_query`)."""

    __slots__ = ("query", "strip_opt", "sent_at")
    # query: the client's query, parsed: its ID and the question the answer must repeat.
    # strip_opt: we added the OPT (padding, keepalive), so the client gets none back.


class StreamClient:
    """Protocol state of one DNS-over-stream client connection."""

    def __init__(self, *, pad_block: int | None = 128, keepalive: bool = True, first_id: int = 0) -> None:
        self._pad_block = pad_block
        self._keepalive = keepalive
        self._next_id = first_id & 0xFFFF
        self._pending: dict[int, _Pending] = {}
        self._orphans: set[int] = set()
        self._probes: set[int] = set()
        # Bit n set: ID n is pending, orphaned or a probe's (the allocator reads this, not three maps).
        self._used = bytearray(_U16_MAX // 8)
        self._out: list[bytes] = []
        self._rbuf = bytearray()  # input; [0:_rlen]: bytes of an incomplete message
        self._rlen = 0
        self.last_received: float | None = None
        self._keepalive_units = -1  # the server's last edns-tcp-keepalive value (none yet)
        self._match = wire.AnswerMatch()  # match_answer's notes on the answer it last matched
        self.late_answers = 0
        self.unexpected_answers = 0
        self.answered = 0

    # -------------------------------------------------------------- state

    @property
    def outstanding(self) -> int:
        """Queries sent and not yet answered or cancelled."""
        return len(self._pending)

    @property
    def orphans(self) -> int:
        """IDs held back because their query was cancelled before its answer came."""
        return len(self._orphans)

    def pending_ids(self) -> list[int]:
        return list(self._pending)

    # -------------------------------------------------------------- input from the user

    def send_query(self, data: bytes, now: float, query: wire.Query | None = None) -> int:
        """Queue ``data`` (a query, any ID) for sending; return its query ID on this connection.

        Raises :class:`WireError` for a malformed query and :class:`OverflowError`
        when every message ID is in use.
        """
        if query is None:
            query = parse_query(data)
        query_id = self._allocate_id()
        frame = frame_query(data, query_id, self._pad_block or None, keepalive=self._keepalive)
        pending = _Pending.__new__(_Pending)  # no __init__ call: cheaper per query when compiled
        pending.query = query
        pending.strip_opt = self._pad_block is not None and query.edns is None
        pending.sent_at = now
        self._pending[query_id] = pending
        self._reserve(query_id)
        self._out.append(frame)
        return query_id

    def send_probe(self, now: float) -> int:
        """Queue a query whose only purpose is an answer: proof that the connection is alive
        (DoT has no PING). Its answer is dropped quietly."""
        query_id = self._allocate_id()
        self._probes.add(query_id)
        self._reserve(query_id)
        self._out.append(frame_query(_PROBE, query_id, self._pad_block or None, keepalive=self._keepalive))
        return query_id

    def _allocate_id(self) -> int:
        if len(self._pending) + len(self._orphans) + len(self._probes) >= _U16_MAX:
            raise OverflowError("every DNS message ID of this connection is in use")
        used = self._used
        n = self._next_id
        while used[n >> 3] & (1 << (n & 7)):
            n = (n + 1) & 0xFFFF
        self._next_id = (n + 1) & 0xFFFF
        return n  # compiled: boxed once here, then a dict key in the core and the connection

    def cancel(self, query_id: int) -> None:
        """Give up on a query: its ID stays reserved until its answer arrives or the connection ends."""
        if self._pending.pop(query_id, None) is not None:
            self._orphans.add(query_id)

    def data_to_send(self) -> bytes:
        """Every byte queued since the last call, as one write."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def frames_to_send(self) -> list[bytes]:
        """The messages queued since the last call, one framed DNS message each (for a TLS
        transport's ``writelines``: one record per message)."""
        out = self._out
        if out:
            self._out = []
        return out

    def connection_lost(self) -> list[int]:
        """The connection ended: forget everything; return the query IDs that got no answer."""
        lost = list(self._pending)
        self._pending.clear()
        self._orphans.clear()
        self._probes.clear()
        self._used = bytearray(_U16_MAX // 8)
        self._out.clear()
        self._rlen = 0
        return lost

    # -------------------------------------------------------------- input from the network

    def receive_data(self, data: bytes, now: float) -> list:
        """Feed bytes read from the connection; return the events they complete."""
        n = len(data)
        self.get_buffer(n)[:n] = data
        return self.buffer_updated(n, now)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Zero-copy input (the read half of an asyncio BufferedProtocol): room for at least
        ``sizehint`` bytes (some, if it is not positive) after the bytes of an incomplete
        message; write into it, then call :meth:`buffer_updated`."""
        room = sizehint if sizehint > 0 else _MIN_ROOM
        if len(self._rbuf) - self._rlen < room:
            # A new buffer, not a resize: a view of the old one may still be held.
            grown = bytearray(max(self._rlen + room, 2 * len(self._rbuf)))
            grown[: self._rlen] = self._rbuf[: self._rlen]
            self._rbuf = grown
        return memoryview(self._rbuf)[self._rlen :]

    def buffer_updated(self, nbytes: int, now: float) -> list:
        """``nbytes`` were written at the start of the room :meth:`get_buffer` gave: return the
        events the messages they complete make."""
        buf = self._rbuf
        n = self._rlen + nbytes
        if nbytes < 0 or n > len(buf):
            raise ValueError(f"{nbytes} bytes do not fit the room get_buffer() gave")
        self.last_received = now
        events: list = []
        off = 0
        while n - off >= 2:
            length = (buf[off] << 8) | buf[off + 1]
            end = off + 2 + length
            if end > n:
                break
            self._answer(buf, off + 2, end, now, events)
            off = end
        rest = n - off
        if rest and off:
            buf[:rest] = buf[off:n]  # the incomplete message to the front (same size: no resize)
        self._rlen = rest
        return events

    def _answer(self, data: bytearray, start: int, end: int, now: float, events: list) -> None:
        """The message ``data[start:end]``: an answer to a query of ours, or something to drop."""
        pending = None
        if end - start >= 12:
            wire_id = (data[start] << 8) | data[start + 1]
            pending = self._pending.get(wire_id)
        if pending is None:
            self._unmatched(bytes(data[start:end]), events)
            return
        try:
            # One walk: checked as scan_response checks, the question compared, the client's
            # ID restored and our OPT taken off.
            answer = match_answer(data, start, end, pending.query, pending.strip_opt, self._match)
        except WireError as e:
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(wire_id, f"malformed answer: {e.reason}"))
            return
        if answer is None:
            # Not the answer to this query: keep waiting for the real one.
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(wire_id, "answer is for another question"))
            return
        del self._pending[wire_id]
        self._release(wire_id)
        self.answered += 1
        units = self._match.keepalive  # units of 100 ms; -1: the answer said nothing
        if units >= 0 and self._keepalive and units != self._keepalive_units:
            self._keepalive_units = units
            events.append(KeepaliveReceived(units / 10))
        events.append(answer_received(wire_id, answer, now - pending.sent_at))

    def _reserve(self, query_id: int) -> None:
        """``query_id`` is in use (pending, then maybe orphaned; or a probe's) until released."""
        n = query_id
        self._used[n >> 3] |= 1 << (n & 7)

    def _release(self, query_id: int) -> None:
        """``query_id`` is free again."""
        n = query_id
        self._used[n >> 3] &= ~(1 << (n & 7)) & 0xFF

    def _unmatched(self, message: bytes, events: list) -> None:
        """A message whose ID is no query's in flight: malformed, late, a probe's, or unknown."""
        try:
            wire_id = scan_response(message).id
        except WireError as e:
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(None, f"malformed answer: {e.reason}"))
            return
        if wire_id in self._orphans:
            self._orphans.discard(wire_id)
            self._release(wire_id)
            self.late_answers += 1
            events.append(LateAnswerDropped(wire_id))
        elif wire_id in self._probes:
            self._probes.discard(wire_id)
            self._release(wire_id)
        else:
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(wire_id, "no query has this ID"))
