"""sans-IO client side of DNS-over-HTTPS (RFC 8484) on one HTTP/2 connection.

:class:`DohClient` turns queries into HTTP/2 requests (POST, or GET with
``?dns=``; message ID 0 on the wire as RFC 8484 asks, the client's restored on
the answer), keeps within the server's SETTINGS_MAX_CONCURRENT_STREAMS by
queueing, honours flow control both ways, resets cancelled streams
(RST_STREAM CANCEL), and on GOAWAY hands back the queries the server did not
process so they can move to a new connection. Bytes and ``now`` in, events out,
bytes to write pulled with :meth:`data_to_send`; no I/O, no clock.

The HTTP/2 layer is our own, and holds only what a DoH client uses: the frame
parser is below, the frame layouts are in :mod:`dotproxy.proto.http2`, HPACK in
:mod:`dotproxy.proto.hpack_lite`. Requests are one pre-encoded header block per
connection plus the per-request fields, written as literals without indexing so
the server's HPACK table is never ours to track; responses go through a full
HPACK decoder. Anything the server does that RFC 9113 calls a connection error
becomes :class:`ConnectionBroken`; nothing raises out of :meth:`receive_data`.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass

from dotproxy import wire
from dotproxy.errors import BadResponse, UpstreamError, UpstreamRefused, WireError
from dotproxy.proto import http2 as h
from dotproxy.proto.answers import AnswerReceived, answer_received, answers, for_client, question_of  # noqa: F401 (AnswerReceived: for upstream.doh)
from dotproxy.proto.hpack_lite import Decoder, HpackError, encode_indexed, encode_literal, static_index
from dotproxy.proto.http2 import ErrorCode, H2ProtocolError

CONTENT_TYPE = b"application/dns-message"
_MAX_DNS_MESSAGE = 0xFFFF  # a longer answer body is not DNS: stop reading it

# Before the server's SETTINGS arrive, assume the RFC 7540 recommended minimum.
_DEFAULT_STREAM_LIMIT = 100

# What we tell the server. Each stream may receive 1 MiB, far more than an answer body
# (capped at 64 KiB, then reset), so stream windows never need replenishing; the
# connection window is 16 MiB more than the default and topped up in large steps.
_STREAM_WINDOW = 1 << 20
_CONNECTION_WINDOW_BOOST = 1 << 24
_CONNECTION_WINDOW = h.DEFAULT_WINDOW + _CONNECTION_WINDOW_BOOST
_REPLENISH_AT = 1 << 22
_MAX_HEADER_LIST = 65536
_MAX_HEADER_BLOCK = 1 << 18  # HEADERS + CONTINUATION bytes we are willing to buffer
_MAX_CONTINUATIONS = 64  # CONTINUATION frames of one header block (empty ones would cost nothing else)
#: A dynamic table size update to 0, first in the next request block after the server's
#: SETTINGS_HEADER_TABLE_SIZE changed (RFC 7541 section 4.2; nghttp2 insists). Always legal:
#: we never index anything, so our side of the table is empty whatever its size.
_TABLE_SIZE_UPDATE = b"\x20"

_OUR_SETTINGS = h.settings_frame({
    h.ENABLE_PUSH: 0,
    h.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
    h.MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST,
})
_PREFACE = h.PREFACE + _OUR_SETTINGS + h.window_update_frame(0, _CONNECTION_WINDOW_BOOST)
_SETTINGS_ACK = h.frame(h.SETTINGS, h.ACK, 0)

_pack_header = h.FRAME_HEADER.pack
_U32 = h._U32
_U32x2 = h._U32x2
_SETTING = h._SETTING

# The numbers the per-frame paths compare against, as module names of their own (C integers
# when compiled: no attribute look-up on ``h`` per frame).
_DATA = h.DATA
_HEADERS = h.HEADERS
_PRIORITY = h.PRIORITY
_RST_STREAM = h.RST_STREAM
_SETTINGS = h.SETTINGS
_PUSH_PROMISE = h.PUSH_PROMISE
_PING = h.PING
_GOAWAY = h.GOAWAY
_WINDOW_UPDATE = h.WINDOW_UPDATE
_CONTINUATION = h.CONTINUATION
_END_STREAM = h.END_STREAM
_END_HEADERS = h.END_HEADERS
_PADDED = h.PADDED
_PRIORITY_FLAG = h.PRIORITY_FLAG
_MAX_FRAME = h.DEFAULT_MAX_FRAME_SIZE


# ----------------------------------------------------------------- events (past tense)


@dataclass(slots=True)
class QueryFailed:
    """The server answered ``query_id`` with an error (HTTP status, reset, bad body)."""

    query_id: int
    error: UpstreamError
    retry: bool = False  # the server did not process it (REFUSED_STREAM): safe to send again


@dataclass(slots=True)
class GoAwayReceived:
    """The server is closing: ``unprocessed`` queries never reached it and may be sent elsewhere."""

    unprocessed: list[int]
    error_code: int


@dataclass(slots=True)
class PingAcknowledged:
    rtt: float


@dataclass(slots=True)
class ConnectionBroken:
    """The peer broke the HTTP/2 protocol: the connection is unusable; every query on it failed."""

    reason: str
    query_ids: list[int]


class _Request:
    """One query's HTTP/2 request: queued, then a stream, until its answer or failure."""

    __slots__ = ("query_id", "client_id", "question", "strip_opt", "block", "body", "sent_at", "stream_id",
                 "send_window", "status", "content_type", "content_length", "chunks", "received", "failed")
    # block: the request's HPACK header block; body: what remains to send.
    # status: the final (non-1xx) status once its HEADERS arrived; content_length: as that head declared it.


def _request(query_id: int, client_id: int, question: tuple, strip_opt: bool, block: bytes, body: bytes,
             sent_at: float) -> _Request:
    """A queued request, built field by field (one per query: no constructor call when compiled)."""
    request = _Request.__new__(_Request)
    request.query_id = query_id
    request.client_id = client_id
    request.question = question
    request.strip_opt = strip_opt
    request.block = block
    request.body = body
    request.sent_at = sent_at
    request.stream_id = None
    request.send_window = 0
    request.status = None
    request.content_type = None
    request.content_length = None
    request.chunks = None
    request.received = 0
    request.failed = False
    return request


class DohClient:
    """Protocol state of one DoH/2 client connection."""

    def __init__(self, *, authority: str, path: str = "/dns-query", method: str = "POST",
                 pad_block: int | None = 128, max_streams: int = 200, upstream: str | None = None) -> None:
        self._upstream = upstream
        self._method = method.encode()
        self._path = path.encode()
        self._pad_block = pad_block
        self._max_streams = max_streams
        # The header block: constant fields once per connection, the rest per request.
        method_index = static_index(b":method", self._method)
        self._block_head = (
            (encode_indexed(method_index) if method_index else encode_literal(2, self._method))
            + encode_indexed(static_index(b":scheme", b"https"))
            + encode_literal(1, authority.encode())
        )
        self._accept = encode_literal(static_index(b"accept"), CONTENT_TYPE)
        self._post_fields = (self._block_head + encode_literal(4, self._path) + self._accept
                             + encode_literal(static_index(b"content-type"), CONTENT_TYPE)
                             + encode_literal(static_index(b"content-length"), b"")[:-1])
        self._post_blocks: dict[int, bytes] = {}  # body length -> the request's header block
        self._out = bytearray(_PREFACE)
        self._inbuf = b""
        self._decoder = Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self._next_stream_id = 1
        self._send_window = h.DEFAULT_WINDOW  # the connection's, for our DATA
        self._recv_window = _CONNECTION_WINDOW  # the connection's, for the server's DATA
        self._recv_unacked = 0
        self._peer_initial_window = h.DEFAULT_WINDOW
        self._peer_max_frame = h.DEFAULT_MAX_FRAME_SIZE
        self._peer_max_streams: int | None = None
        self._continuing = 0  # a stream whose header block awaits CONTINUATION frames
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragments_count = 0
        self._fragments_end_stream = False
        self._table_size_update = False  # owed at the head of our next header block
        self._pending_events: list = []
        self._next_query_id = 1
        self._requests: dict[int, _Request] = {}  # query ID -> request (queued or open)
        self._streams: dict[int, _Request] = {}  # stream ID -> open request
        self._queue: deque[_Request] = deque()
        self._blocked: list[_Request] = []  # open, body waiting for flow-control window
        self._pings: dict[bytes, float] = {}
        self._settings_seen = False
        self._closed = False
        self.going_away = False
        self.broken = False
        self.last_received: float | None = None
        self.late_answers = 0

    # -------------------------------------------------------------- state

    @property
    def outstanding(self) -> int:
        return len(self._requests)

    @property
    def stream_limit(self) -> int:
        return self.current_stream_limit()

    def current_stream_limit(self) -> int:
        """:attr:`stream_limit` as a method (a C call from the compiled pool): the streams we
        may have open now, ours and the server's SETTINGS_MAX_CONCURRENT_STREAMS."""
        if not self._settings_seen:
            return min(_DEFAULT_STREAM_LIMIT, self._max_streams)
        if self._peer_max_streams is None:
            return self._max_streams
        return min(self._peer_max_streams, self._max_streams)

    @property
    def accepting(self) -> bool:
        """Whether new queries may be sent (not going away, broken or closed)."""
        return self.is_accepting()

    def is_accepting(self) -> bool:
        """:attr:`accepting` as a method (a C call from the compiled connection)."""
        return not self.going_away and not self.broken and not self._closed

    # -------------------------------------------------------------- input from the user

    def send_query(self, data: bytes, now: float, query: wire.Query | None = None) -> int:
        if query is None:
            query = wire.parse_query(data)
        out = wire.set_id(data, 0)
        if self._pad_block:
            try:
                out = wire.pad(out, self._pad_block)
            except ValueError:  # within a block of 64 KiB: it goes unpadded
                pass
        if self._method == b"GET":
            dns = base64.urlsafe_b64encode(out).rstrip(b"=")
            block = self._block_head + encode_literal(4, self._path + b"?dns=" + dns) + self._accept
            body = b""
        else:
            block = self._post_blocks.get(len(out))
            if block is None:
                length = b"%d" % len(out)
                block = self._post_fields + bytes((len(length),)) + length
                if len(self._post_blocks) < 256:
                    self._post_blocks[len(out)] = block
            body = out
        query_id = self._next_query_id
        self._next_query_id += 1
        request = _request(query_id, query.id, question_of(query), self._pad_block is not None and query.edns is None,
                           block, body, now)
        self._requests[query_id] = request
        self._queue.append(request)
        self._open_streams()
        return query_id

    def cancel(self, query_id: int) -> None:
        request = self._requests.pop(query_id, None)
        if request is None:
            return
        if request.stream_id is None:
            try:
                self._queue.remove(request)
            except ValueError:
                pass
            return
        request.failed = True
        if request.stream_id in self._streams:
            self._reset(request.stream_id, ErrorCode.CANCEL)
        self._open_streams()

    def ping(self, now: float) -> None:
        opaque = int(now * 1e6).to_bytes(8, "big", signed=False)
        self._pings[opaque] = now
        self._out += h.ping_frame(opaque)

    def close(self) -> None:
        """Say goodbye (GOAWAY); the caller closes the transport after sending."""
        if not self.broken and not self._closed:
            self._closed = True
            self._out += h.goaway_frame(0, ErrorCode.NO_ERROR)

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def connection_lost(self) -> list[int]:
        self._closed = True
        lost = list(self._requests)
        self._requests.clear()
        self._streams.clear()
        self._queue.clear()
        self._blocked.clear()
        return lost

    # -------------------------------------------------------------- input from the network

    def receive_data(self, data: bytes, now: float) -> list:
        self.last_received = now
        out, self._pending_events = self._pending_events, []  # events of our own making since the last read
        if self.broken:
            return out
        try:
            self._receive(data, now, out)
        except H2ProtocolError as e:
            self._break(e.code, f"HTTP/2 protocol error from the server: {e}", out)
        except HpackError as e:
            self._break(ErrorCode.COMPRESSION_ERROR, f"HTTP/2 protocol error from the server: HPACK: {e}", out)
        except Exception as e:  # a bug of ours must not escape into the transport's callback
            self._break(ErrorCode.INTERNAL_ERROR, f"HTTP/2 client error: {e!r}", out)
        return out

    def _break(self, code: ErrorCode, reason: str, out: list) -> None:
        self.broken = True
        self._out += h.goaway_frame(0, code)
        out.append(ConnectionBroken(reason, self.connection_lost()))

    def _receive(self, data: bytes, now: float, out: list) -> None:
        if type(data) is not bytes:  # header blocks are cache keys: hashable bytes only
            data = bytes(data)
        buf = self._inbuf + data if self._inbuf else data
        n = len(buf)
        pos = 0
        try:
            while n - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) | buf[pos + 8]
                if length > _MAX_FRAME:
                    raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = pos + 9 + length
                if end > n:
                    break
                payload = buf[pos + 9 : end]
                pos = end
                if self._continuing and ftype != _CONTINUATION:
                    raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "header block interrupted by another frame")
                if not self._settings_seen and ftype != _SETTINGS:
                    raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "the server's first frame is not SETTINGS")
                if ftype == _DATA:
                    self._on_data(sid, flags, payload, now, out)
                elif ftype == _HEADERS:
                    self._on_headers(sid, flags, payload, now, out)
                elif ftype == _WINDOW_UPDATE:
                    self._on_window_update(sid, payload, out)
                elif ftype == _SETTINGS:
                    self._on_settings(sid, flags, payload, out)
                elif ftype == _RST_STREAM:
                    self._on_rst_stream(sid, payload, out)
                elif ftype == _PING:
                    self._on_ping(sid, flags, payload, now, out)
                elif ftype == _GOAWAY:
                    self._on_goaway(sid, payload, out)
                elif ftype == _CONTINUATION:
                    self._on_continuation(sid, flags, payload, now, out)
                elif ftype == _PRIORITY:
                    if sid == 0:
                        raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
                    if length != 5:
                        raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY not 5 bytes")
                elif ftype == _PUSH_PROMISE:
                    raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
                # Unknown frame types are ignored (section 5.5).
        finally:
            self._inbuf = buf[pos:] if pos < n else b""

    # -------------------------------------------------------------- frames

    def _check_stream(self, sid: int, what: str) -> None:
        """A frame for a stream we do not have: fine if it was ours and closed, an error if never opened."""
        if sid == 0:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{what} on stream 0")
        if not sid & 1 or sid >= self._next_stream_id:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{what} on stream {sid}, which we never opened")

    def _on_data(self, sid: int, flags: int, payload: bytes, now: float, out: list) -> None:
        flow = len(payload)
        if flags & _PADDED:
            if not flow or payload[0] >= flow:
                raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA padding longer than the frame")
            payload = payload[1 : flow - payload[0]]
        self._recv_window -= flow
        if self._recv_window < 0:
            raise H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_unacked += flow
        if self._recv_unacked >= _REPLENISH_AT:
            self._out += h.window_update_frame(0, self._recv_unacked)
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        request = self._streams.get(sid)
        if request is None:
            self._check_stream(sid, "DATA")
            return
        if not request.failed:
            if request.status is None:
                self._fail(request, BadResponse("answer body before its headers", upstream=self._upstream), out)
                self._reset(sid, ErrorCode.PROTOCOL_ERROR)
                self._open_streams()
                return
            request.received += len(payload)
            if request.received > _MAX_DNS_MESSAGE:
                self._fail(request, BadResponse("answer body longer than any DNS message",
                                                upstream=self._upstream), out)
                self._reset(sid, ErrorCode.CANCEL)
                self._open_streams()
                return
            if payload:
                request.chunks.append(payload)
        if flags & _END_STREAM:
            self._end_stream(sid, now, out)

    def _on_headers(self, sid: int, flags: int, payload: bytes, now: float, out: list) -> None:
        if sid not in self._streams:
            self._check_stream(sid, "HEADERS")
        start, end = 0, len(payload)
        if flags & _PADDED:
            if not end:
                raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS padding longer than the frame")
            end -= payload[0]
            start = 1
        if flags & _PRIORITY_FLAG:
            start += 5
        if end < start:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS padding longer than the frame")
        if start or end != len(payload):
            payload = payload[start:end]
        if flags & _END_HEADERS:
            self._on_header_block(sid, payload, flags & _END_STREAM, now, out)
        else:
            self._continuing = sid
            self._fragments = [payload]
            self._fragments_size = len(payload)
            self._fragments_count = 0
            self._fragments_end_stream = bool(flags & _END_STREAM)

    def _on_continuation(self, sid: int, flags: int, payload: bytes, now: float, out: list) -> None:
        if not self._continuing or sid != self._continuing:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a HEADERS before it")
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        self._fragments_count += 1
        if self._fragments_size > _MAX_HEADER_BLOCK or self._fragments_count > _MAX_CONTINUATIONS:
            raise H2ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & h.END_HEADERS:
            block = b"".join(self._fragments)
            self._continuing = 0
            self._fragments = []
            self._on_header_block(sid, block, self._fragments_end_stream, now, out)

    def _on_header_block(self, sid: int, block: bytes, end_stream: int, now: float, out: list) -> None:
        headers = self._decoder.decode(block)  # always: the HPACK state must follow every block
        request = self._streams.get(sid)
        if request is not None and not request.failed and request.status is None:
            status = content_type = None
            for name, value in headers:
                if name == b":status":
                    status = value
                elif name == b"content-type":
                    content_type = value
                elif name == b"content-length":
                    request.content_length = int(value) if value.isdigit() else -1
            if status is None:
                self._fail(request, BadResponse("response without :status", upstream=self._upstream), out)
            elif status[:1] != b"1":  # 1xx heads are informational: the final one follows
                request.status = status
                request.content_type = content_type
                self._check_head(request, headers, out)
            if request.failed and not end_stream:  # nothing more to read here: free the stream's slot
                self._reset(sid, ErrorCode.CANCEL)
                self._open_streams()
                return
        # Otherwise: trailers, or a stream we gave up on.
        if end_stream:
            self._end_stream(sid, now, out)

    def _end_stream(self, sid: int, now: float, out: list) -> None:
        request = self._streams.pop(sid, None)
        if request is not None:
            if request.body:  # answered before we finished asking: end our half too
                request.body = b""
                self._reset(sid, ErrorCode.NO_ERROR)
            self._complete(request, now, out)
        self._open_streams()

    def _on_rst_stream(self, sid: int, payload: bytes, out: list) -> None:
        if len(payload) != 4:
            raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        request = self._streams.pop(sid, None)
        if request is None:
            self._check_stream(sid, "RST_STREAM")
            return
        (code,) = _U32.unpack(payload)
        if self._requests.pop(request.query_id, None) is not None:
            out.append(QueryFailed(request.query_id, UpstreamRefused(
                f"server reset the stream ({h.code_name(code)})", upstream=self._upstream),
                retry=code == ErrorCode.REFUSED_STREAM))
        self._open_streams()

    def _on_settings(self, sid: int, flags: int, payload: bytes, out: list) -> None:
        if sid:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & h.ACK:
            if payload:
                raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == h.MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == h.INITIAL_WINDOW_SIZE:
                if value > h.MAX_WINDOW:
                    raise H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE {value}")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for request in self._streams.values():  # section 6.9.2: open streams follow
                    request.send_window += delta
                    if request.send_window > h.MAX_WINDOW:
                        raise H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
            elif key == h.MAX_FRAME_SIZE:
                if not h.DEFAULT_MAX_FRAME_SIZE <= value <= 0xFFFFFF:
                    raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif key == h.ENABLE_PUSH:
                if value != 0:  # section 6.5.2: a server never sends 1
                    raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH {value} from a server")
            elif key == h.HEADER_TABLE_SIZE:
                # Our requests never use the server's table, but a change must still be
                # acknowledged in our next block, or nghttp2 servers fail it (COMPRESSION_ERROR).
                self._table_size_update = True
        self._out += _SETTINGS_ACK
        self._settings_seen = True
        self._send_blocked(out)  # a larger INITIAL_WINDOW_SIZE opens every stream's window
        self._open_streams()

    def _on_window_update(self, sid: int, payload: bytes, out: list) -> None:
        if len(payload) != 4:
            raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not increment:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if sid == 0:
            self._send_window += increment
            if self._send_window > h.MAX_WINDOW:
                raise H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            request = self._streams.get(sid)
            if request is None:
                self._check_stream(sid, "WINDOW_UPDATE")
                return
            request.send_window += increment
            if request.send_window > h.MAX_WINDOW:
                raise H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
        if self._blocked:
            self._send_blocked(out)

    def _on_ping(self, sid: int, flags: int, payload: bytes, now: float, out: list) -> None:
        if sid:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING not 8 bytes")
        if flags & h.ACK:
            sent = self._pings.pop(bytes(payload), None)
            if sent is not None:
                out.append(PingAcknowledged(now - sent))
        else:
            self._out += h.ping_frame(bytes(payload), ack=True)

    def _on_goaway(self, sid: int, payload: bytes, out: list) -> None:
        if sid:
            raise H2ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = _U32x2.unpack_from(payload)
        last &= 0x7FFFFFFF
        self.going_away = True
        # Section 6.8: streams above last_stream_id were not processed; the others complete.
        unprocessed = [r.query_id for r in self._queue]
        self._queue.clear()
        for stream_id, request in list(self._streams.items()):
            if stream_id > last:
                del self._streams[stream_id]
                if request.query_id in self._requests:
                    unprocessed.append(request.query_id)
        for query_id in unprocessed:
            self._requests.pop(query_id, None)
        out.append(GoAwayReceived(unprocessed, h.error_code(code)))

    # -------------------------------------------------------------- internals

    def _open_streams(self) -> None:
        if self.going_away or self.broken or self._closed:
            return
        queue = self._queue
        if not queue:
            return
        limit = self.current_stream_limit()
        streams = self._streams
        out = self._out
        while queue and len(streams) < limit:
            stream_id = self._next_stream_id
            if stream_id > h.MAX_STREAM_ID:
                # Out of stream IDs: as if the server had said GOAWAY, the queued queries move to
                # another connection (reported with the next read; open streams finish here).
                self.going_away = True
                stranded = [r.query_id for r in queue]
                queue.clear()
                for query_id in stranded:
                    del self._requests[query_id]
                self._pending_events.append(GoAwayReceived(stranded, ErrorCode.NO_ERROR))
                return
            self._next_stream_id = stream_id + 2
            request = queue.popleft()
            request.stream_id = stream_id
            request.chunks = []
            request.send_window = self._peer_initial_window
            streams[stream_id] = request
            block = request.block
            if self._table_size_update:
                self._table_size_update = False
                block = _TABLE_SIZE_UPDATE + block
            if len(block) <= self._peer_max_frame:
                out += _pack_header(len(block) << 8 | _HEADERS,
                                    _END_HEADERS if request.body else _END_HEADERS | _END_STREAM, stream_id)
                out += block
            else:
                out += h.headers_frames(stream_id, block, not request.body, self._peer_max_frame)
            if request.body:
                self._send_body(request)

    def _send_body(self, request: _Request) -> None:
        """Send as much of the body as flow control allows; the rest waits for window."""
        body = request.body
        stream_id = request.stream_id
        out = self._out
        while body:
            size = len(body)  # the least of it and the windows and the frame size (min() is a call)
            if self._send_window < size:
                size = self._send_window
            if request.send_window < size:
                size = request.send_window
            if self._peer_max_frame < size:
                size = self._peer_max_frame
            if size <= 0:
                request.body = body
                self._blocked.append(request)
                return
            if size < len(body):
                chunk, body = body[:size], body[size:]
            else:
                chunk, body = body, b""
            out += _pack_header(size << 8 | _DATA, 0 if body else _END_STREAM, stream_id)
            out += chunk
            self._send_window -= size
            request.send_window -= size
        request.body = b""

    def _send_blocked(self, out: list) -> None:
        if not self._blocked:
            return
        blocked, self._blocked = self._blocked, []
        for request in blocked:
            if request.stream_id in self._streams and request.body and not request.failed:
                self._send_body(request)

    def _reset(self, stream_id: int, code: int) -> None:
        self._streams.pop(stream_id, None)
        self._out += h.rst_stream_frame(stream_id, code)

    def _fail(self, request: _Request, error: UpstreamError, out: list) -> None:
        request.failed = True
        if self._requests.pop(request.query_id, None) is not None:
            out.append(QueryFailed(request.query_id, error))

    def _check_head(self, request: _Request, headers, out: list) -> None:
        if request.status != b"200":
            retry_after = None
            for name, value in headers:
                if name == b"retry-after":
                    try:
                        retry_after = float(value)
                    except ValueError:
                        pass
            status = request.status.decode("ascii", "replace")
            self._fail(request, UpstreamRefused(f"HTTP status {status}", upstream=self._upstream,
                                                status=int(status) if status.isdigit() else None,
                                                retry_after=retry_after), out)
        elif request.content_type is None or (
                request.content_type != CONTENT_TYPE
                and request.content_type.split(b";")[0].strip().lower() != CONTENT_TYPE):
            self._fail(request, BadResponse(f"answer has content-type {request.content_type!r}, "
                                            f"not application/dns-message", upstream=self._upstream), out)

    def _complete(self, request: _Request, now: float, out: list) -> None:
        if request.failed:
            return
        if self._requests.pop(request.query_id, None) is None:
            self.late_answers += 1
            return
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if request.content_length is not None and request.content_length != len(body):
            out.append(QueryFailed(request.query_id, BadResponse(
                f"body of {len(body)} bytes, content-length said {request.content_length}", upstream=self._upstream)))
            return
        try:
            info = wire.scan_response(body)
            if not answers(info, request.question):
                out.append(QueryFailed(request.query_id, BadResponse("answer is for another question",
                                                                     upstream=self._upstream)))
                return
            data = for_client(body, request.client_id, request.strip_opt)  # walks the records scan skips
        except WireError as e:
            out.append(QueryFailed(request.query_id, BadResponse(f"malformed answer: {e.reason}",
                                                                 upstream=self._upstream)))
            return
        out.append(answer_received(request.query_id, data, now - request.sent_at))
