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
from dotproxy.wire import parse_query, scan_response
from dotproxy.proto.answers import AnswerReceived, answers, for_client, question_of

_U16_MAX = 0x10000
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
    """What an answer needs from its query."""

    __slots__ = ("client_id", "question", "strip_opt", "sent_at")

    def __init__(self, client_id: int, question: tuple, strip_opt: bool, sent_at: float) -> None:
        self.client_id = client_id
        self.question = question  # (qname_wire, qtype, qclass) of the query, lower-cased
        self.strip_opt = strip_opt  # we added the OPT: the client gets none back
        self.sent_at = sent_at


class StreamClient:
    """Protocol state of one DNS-over-stream client connection."""

    def __init__(self, *, pad_block: int | None = 128, keepalive: bool = True, first_id: int = 0) -> None:
        self._pad_block = pad_block
        self._keepalive = keepalive
        self._next_id = first_id & 0xFFFF
        self._pending: dict[int, _Pending] = {}
        self._orphans: set[int] = set()
        self._probes: set[int] = set()
        self._out: list[bytes] = []
        self._in = bytearray()
        self.last_received: float | None = None
        self._keepalive_units = -1  # the server's last edns-tcp-keepalive value (none yet)
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
        frame = wire.frame_query(data, query_id, self._pad_block or None, keepalive=self._keepalive)
        self._pending[query_id] = _Pending(
            query.id,
            question_of(query),
            self._pad_block is not None and query.edns is None,
            now,
        )
        self._out.append(frame)
        return query_id

    def send_probe(self, now: float) -> int:
        """Queue a query whose only purpose is an answer: proof that the connection is alive
        (DoT has no PING). Its answer is dropped quietly."""
        query_id = self._allocate_id()
        self._probes.add(query_id)
        self._out.append(wire.frame_query(_PROBE, query_id, self._pad_block or None, keepalive=self._keepalive))
        return query_id

    def _allocate_id(self) -> int:
        if len(self._pending) + len(self._orphans) + len(self._probes) >= _U16_MAX:
            raise OverflowError("every DNS message ID of this connection is in use")
        query_id = self._next_id
        while query_id in self._pending or query_id in self._orphans or query_id in self._probes:
            query_id = (query_id + 1) & 0xFFFF
        self._next_id = (query_id + 1) & 0xFFFF
        return query_id

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

    def connection_lost(self) -> list[int]:
        """The connection ended: forget everything; return the query IDs that got no answer."""
        lost = list(self._pending)
        self._pending.clear()
        self._orphans.clear()
        self._probes.clear()
        self._out.clear()
        self._in.clear()
        return lost

    # -------------------------------------------------------------- input from the network

    def receive_data(self, data: bytes, now: float) -> list:
        """Feed bytes read from the connection; return the events they complete."""
        self.last_received = now
        buf = self._in
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        events: list = []
        off = 0
        n = len(data)
        while n - off >= 2:
            length = (data[off] << 8) | data[off + 1]
            end = off + 2 + length
            if end > n:
                break
            self._answer(data[off + 2 : end], now, events)
            off = end
        if off < n:
            buf += data[off:]
        return events

    def _answer(self, message: bytes, now: float, events: list) -> None:
        try:
            info = scan_response(message)
        except WireError as e:
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(None, f"malformed answer: {e.reason}"))
            return
        wire_id = info.id
        pending = self._pending.get(wire_id)
        if pending is None:
            if wire_id in self._orphans:
                self._orphans.discard(wire_id)
                self.late_answers += 1
                events.append(LateAnswerDropped(wire_id))
            elif wire_id in self._probes:
                self._probes.discard(wire_id)
            else:
                self.unexpected_answers += 1
                events.append(UnexpectedAnswerDropped(wire_id, "no query has this ID"))
            return
        if not answers(info, pending.question):
            # Not the answer to this query: keep waiting for the real one.
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(wire_id, "answer is for another question"))
            return
        try:
            data = for_client(message, pending.client_id, pending.strip_opt)  # walks records scan_response skips
        except WireError as e:  # e.g. a compression pointer into the header, fine only while the ID was ours
            self.unexpected_answers += 1
            events.append(UnexpectedAnswerDropped(wire_id, f"malformed answer: {e.reason}"))
            return
        del self._pending[wire_id]
        self.answered += 1
        if info.edns is not None and self._keepalive:
            value = info.edns.option(wire.OPT_KEEPALIVE)
            if value is not None and len(value) == 2:  # units of 100 ms
                units = (value[0] << 8) | value[1]
                if units != self._keepalive_units:
                    self._keepalive_units = units
                    events.append(KeepaliveReceived(units / 10))
        events.append(AnswerReceived(wire_id, data, now - pending.sent_at))

