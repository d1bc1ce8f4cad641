"""sans-IO client side of DNS-over-HTTPS (RFC 8484) on one HTTP/2 connection, built on ``h2``.

:class:`DohClient` turns queries into HTTP/2 requests (POST, or GET with
``?dns=``; message ID 0 on the wire as RFC 8484 asks, the client's restored on
the answer), keeps within the server's SETTINGS_MAX_CONCURRENT_STREAMS by
queueing, honours flow control both ways, resets cancelled streams
(RST_STREAM CANCEL), and on GOAWAY hands back the queries the server did not
process so they can move to a new connection. Bytes and ``now`` in, events out,
bytes to write pulled with :meth:`data_to_send`; no I/O, no clock.

``h2`` runs with header validation and normalisation off: the headers we send
are constants we built, and the ones we read are checked here, where it matters.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from dotproxy import wire
from dotproxy.errors import BadResponse, UpstreamError, UpstreamRefused, WireError
from dotproxy.proto.answers import AnswerReceived, answers, for_client, question_of

CONTENT_TYPE = b"application/dns-message"
_MAX_DNS_MESSAGE = 0xFFFF  # a longer answer body is not DNS: stop reading it


class _H2Connection(h2.connection.H2Connection):
    """``h2`` with two changes, both measured or specified:

    * h2 closes its state machine on GOAWAY and then rejects the frames of the
      streams the server still finishes (RFC 9113 section 6.8 says those
      complete). Stay open: :class:`DohClient` opens no stream after a GOAWAY.
    * h2 counts open streams by walking every stream it holds, once per new
      stream: O(n^2) for a burst, a fifth of the client's CPU at 500 in flight.
      :class:`DohClient` knows the count; h2's own walk, which also forgets
      closed streams, runs every ``_SWEEP_EVERY`` new streams.
    """

    _SWEEP_EVERY = 128
    _since_sweep = 0
    open_count = 0  # maintained by DohClient

    @property
    def open_outbound_streams(self) -> int:
        self._since_sweep += 1
        if self._since_sweep >= self._SWEEP_EVERY:
            self._since_sweep = 0
            return h2.connection.H2Connection.open_outbound_streams.fget(self)
        return self.open_count

    def _receive_goaway_frame(self, frame):
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if state is h2.connection.ConnectionState.CLIENT_OPEN:
            self.state_machine.state = state
        return frames, events

# Before the server's SETTINGS arrive, assume the RFC 7540 recommended minimum.
_DEFAULT_STREAM_LIMIT = 100


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


@dataclass(slots=True)
class _Request:
    query_id: int
    client_id: int
    question: tuple
    strip_opt: bool
    headers: list
    body: bytes  # what remains to send
    sent_at: float
    stream_id: int | None = None
    status: bytes | None = None
    content_type: bytes | None = None
    chunks: list | None = None
    received: int = 0
    failed: bool = False


class DohClient:
    """Protocol state of one DoH/2 client connection."""

    def __init__(self, *, authority: str, path: str = "/dns-query", method: str = "POST",
                 pad_block: int | None = 128, max_streams: int = 200, upstream: str | None = None) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self._h2 = _H2Connection(config=config)
        self._h2.initiate_connection()
        self._h2.update_settings({
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
        })
        self._h2.increment_flow_control_window(1 << 24)  # the connection window: answers are small, many
        self._upstream = upstream
        self._method = method.encode()
        self._path = path.encode()
        self._pad_block = pad_block
        self._max_streams = max_streams
        self._base_headers = [
            (b":method", self._method),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
        ]
        self._next_query_id = 1
        self._requests: dict[int, _Request] = {}  # query ID -> request (queued or open)
        self._streams: dict[int, _Request] = {}  # stream ID -> open request
        self._queue: deque[_Request] = deque()
        self._blocked: list[_Request] = []  # open, body waiting for flow-control window
        self._pings: dict[bytes, float] = {}
        self._settings_seen = False
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
        if not self._settings_seen:
            return min(_DEFAULT_STREAM_LIMIT, self._max_streams)
        return min(self._h2.remote_settings.max_concurrent_streams, self._max_streams)

    @property
    def accepting(self) -> bool:
        return not self.going_away and not self.broken

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
            headers = self._base_headers + [
                (b":path", self._path + b"?dns=" + dns),
                (b"accept", CONTENT_TYPE),
            ]
            body = b""
        else:
            headers = self._base_headers + [
                (b":path", self._path),
                (b"accept", CONTENT_TYPE),
                (b"content-type", CONTENT_TYPE),
                (b"content-length", str(len(out)).encode()),
            ]
            body = out
        query_id = self._next_query_id
        self._next_query_id += 1
        request = _Request(query_id, query.id, question_of(query),
                           self._pad_block is not None and query.edns is None, headers, body, now)
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
        self._reset(request.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._open_streams()

    def ping(self, now: float) -> None:
        opaque = int(now * 1e6).to_bytes(8, "big", signed=False)
        self._pings[opaque] = now
        self._h2.ping(opaque)

    def close(self) -> None:
        """Say goodbye (GOAWAY); the caller closes the transport after sending."""
        if not self.broken:
            self._h2.close_connection()

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def connection_lost(self) -> list[int]:
        lost = list(self._requests)
        self._requests.clear()
        self._streams.clear()
        self._queue.clear()
        self._blocked.clear()
        return lost

    # -------------------------------------------------------------- input from the network

    def receive_data(self, data: bytes, now: float) -> list:
        self.last_received = now
        out: list = []
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.broken = True
            out.append(ConnectionBroken(f"HTTP/2 protocol error from the server: {e}", self.connection_lost()))
            return out
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                request = self._streams.get(event.stream_id)
                if request is not None and not request.failed:
                    request.received += len(event.data)
                    if request.received > _MAX_DNS_MESSAGE:
                        self._fail(request, BadResponse("answer body longer than any DNS message",
                                                        upstream=self._upstream), out)
                        self._reset(event.stream_id, h2.errors.ErrorCodes.CANCEL)
                    else:
                        request.chunks.append(event.data)
            elif kind is h2.events.ResponseReceived:
                request = self._streams.get(event.stream_id)
                if request is not None:
                    for name, value in event.headers:
                        if name == b":status":
                            request.status = value
                        elif name == b"content-type":
                            request.content_type = value
                    self._check_head(request, now, event.headers, out)
            elif kind is h2.events.StreamEnded:
                request = self._streams.pop(event.stream_id, None)
                if request is not None:
                    if request.body:  # answered before we finished asking: end our half too
                        request.body = b""
                        self._reset(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    self._complete(request, now, out)
                self._open_streams()
            elif kind is h2.events.StreamReset:
                request = self._streams.pop(event.stream_id, None)
                if request is not None and self._requests.pop(request.query_id, None) is not None:
                    refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                    out.append(QueryFailed(request.query_id, UpstreamRefused(
                        f"server reset the stream ({_code_name(event.error_code)})", upstream=self._upstream),
                        retry=refused))
                self._open_streams()
            elif kind is h2.events.ConnectionTerminated:
                self.going_away = True
                last = event.last_stream_id if event.last_stream_id is not None else 0
                unprocessed = [r.query_id for r in self._queue]
                self._queue.clear()
                for stream_id, request in list(self._streams.items()):
                    if stream_id > last:
                        del self._streams[stream_id]
                        unprocessed.append(request.query_id)
                for query_id in unprocessed:
                    self._requests.pop(query_id, None)
                out.append(GoAwayReceived(unprocessed, event.error_code))
            elif kind is h2.events.RemoteSettingsChanged:
                self._settings_seen = True
                self._send_blocked(out)  # a larger INITIAL_WINDOW_SIZE opens every stream's window
                self._open_streams()
            elif kind is h2.events.WindowUpdated:
                self._send_blocked(out)
            elif kind is h2.events.PingAckReceived:
                sent = self._pings.pop(event.ping_data, None)
                if sent is not None:
                    out.append(PingAcknowledged(now - sent))
        return out

    # -------------------------------------------------------------- internals

    def _open_streams(self) -> None:
        if not self.accepting:
            return
        limit = self.stream_limit
        h2c = self._h2
        streams = self._streams
        while self._queue and len(streams) < limit:
            request = self._queue.popleft()
            stream_id = h2c.get_next_available_stream_id()
            request.stream_id = stream_id
            request.chunks = []
            h2c.open_count = len(streams)
            streams[stream_id] = request
            h2c.send_headers(stream_id, request.headers, end_stream=not request.body)
            if request.body:
                self._send_body(request)

    def _send_body(self, request: _Request) -> None:
        """Send as much of the body as flow control allows; the rest waits for window."""
        h2c = self._h2
        stream_id = request.stream_id
        while request.body:
            size = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size, len(request.body))
            if size <= 0:
                self._blocked.append(request)
                return
            chunk, request.body = request.body[:size], request.body[size:]
            h2c.send_data(stream_id, chunk, end_stream=not request.body)

    def _send_blocked(self, out: list) -> None:
        blocked, self._blocked = self._blocked, []
        for request in blocked:
            if request.stream_id in self._streams and request.body and not request.failed:
                try:
                    self._send_body(request)
                except h2.exceptions.H2Error as e:  # the stream ended meanwhile
                    self._fail(request, BadResponse(f"could not finish the request: {e}",
                                                    upstream=self._upstream), out)

    def _reset(self, stream_id: int, code) -> None:
        self._streams.pop(stream_id, None)
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            pass  # it ended on its own meanwhile

    def _fail(self, request: _Request, error: UpstreamError, out: list) -> None:
        request.failed = True
        if self._requests.pop(request.query_id, None) is not None:
            out.append(QueryFailed(request.query_id, error))

    def _check_head(self, request: _Request, now: float, headers, out: list) -> None:
        if request.status != b"200":
            retry_after = None
            for name, value in headers:
                if name == b"retry-after":
                    try:
                        retry_after = float(value)
                    except ValueError:
                        pass
            status = (request.status or b"?").decode("ascii", "replace")
            self._fail(request, UpstreamRefused(f"HTTP status {status}", upstream=self._upstream,
                                                status=int(status) if status.isdigit() else None,
                                                retry_after=retry_after), out)
        elif request.content_type is None or request.content_type.split(b";")[0].strip().lower() != CONTENT_TYPE:
            self._fail(request, BadResponse(f"answer has content-type {request.content_type!r}, "
                                            f"not application/dns-message", upstream=self._upstream), out)

    def _complete(self, request: _Request, now: float, out: list) -> None:
        if request.failed:
            return
        if self._requests.pop(request.query_id, None) is None:
            self.late_answers += 1
            return
        body = b"".join(request.chunks)
        try:
            info = wire.scan_response(body)
        except WireError as e:
            out.append(QueryFailed(request.query_id, BadResponse(f"malformed answer: {e.reason}",
                                                                 upstream=self._upstream)))
            return
        if not answers(info, request.question):
            out.append(QueryFailed(request.query_id, BadResponse("answer is for another question",
                                                                 upstream=self._upstream)))
            return
        out.append(AnswerReceived(request.query_id, for_client(body, request.client_id, request.strip_opt),
                                  now - request.sent_at))


def _code_name(code) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)
