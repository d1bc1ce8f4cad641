"""The DoH side of the test upstream: RFC 8484 over HTTP/2 (ALPN "h2"), built on ``h2``.

``POST /dns-query`` with ``content-type: application/dns-message`` (else 415), or
``GET /dns-query?dns=<base64url without padding>`` (bad base64 or no ``dns``: 400);
other paths 404, other methods 405. Answers are 200 with
``content-type: application/dns-message``, ``content-length`` and
``cache-control: max-age=<min TTL>`` (0 when the answer has none).

Flow control: received DATA is acknowledged as soon as it is read, and response
bodies are sent no faster than the client's stream and connection windows allow
(the rest waits for WINDOW_UPDATE or a SETTINGS change).

Streams over the advertised SETTINGS_MAX_CONCURRENT_STREAMS are refused with
RST_STREAM(REFUSED_STREAM) rather than failing the whole connection (h2 itself is
told a huge limit so that it never does the latter). ``goaway_after`` sends its
GOAWAY as a raw frame, because h2 refuses to send anything on a connection after
its own ``close_connection()`` while the answers to streams up to
``last_stream_id`` still have to go out. (Note for clients built on h2: an h2
*client* raises ProtocolError on any frame after a GOAWAY it received, although
RFC 9113 section 6.8 lets the server finish the streams up to last_stream_id;
``Faults.goaway_before_answers = False`` sends the GOAWAY after those answers.)
"""

from __future__ import annotations

import base64
import binascii
import random
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from dotproxy.testing._base import Connection, log
from dotproxy.wire import WireError, scan_response

if TYPE_CHECKING:  # pragma: no cover
    from dotproxy.testing.server import TestUpstream

#: SETTINGS_MAX_CONCURRENT_STREAMS advertised when ``Faults.max_concurrent_streams`` is None.
DEFAULT_MAX_CONCURRENT_STREAMS = 1000
MAX_HEADER_LIST_SIZE = 1 << 16
MAX_DNS_MESSAGE = 0xFFFF
_H2_UNLIMITED = 2**31 - 1

_CONTENT_TYPE = b"application/dns-message"
_HTTP1_REJECT = (
    b"HTTP/1.1 505 HTTP Version Not Supported\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)

_RequestReceived = h2.events.RequestReceived
_DataReceived = h2.events.DataReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_WindowUpdated = h2.events.WindowUpdated
_RemoteSettingsChanged = h2.events.RemoteSettingsChanged
_ConnectionTerminated = h2.events.ConnectionTerminated
_H2Error = (h2.exceptions.H2Error, ValueError, KeyError)


class _Stream:
    __slots__ = ("method", "path", "content_type", "body", "out", "out_off", "abandoned", "answering")

    def __init__(self, headers) -> None:
        self.method = self.path = self.content_type = None
        for name, value in headers:
            if name == b":method":
                self.method = value
            elif name == b":path":
                self.path = value
            elif name == b"content-type":
                self.content_type = value
        self.body = bytearray()
        self.out: bytes | None = None
        self.out_off = 0
        self.abandoned = False
        self.answering = False


def _decode_dns_param(query_string: bytes) -> bytes | None:
    value = None
    for part in query_string.split(b"&"):
        if part.startswith(b"dns="):
            value = part[4:]
            break
    if not value:
        return None
    if b"%" in value:
        from urllib.parse import unquote_to_bytes

        value = unquote_to_bytes(value)
    value = value.rstrip(b"=")
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


class DoHConnection(Connection):
    """One HTTP/2 connection of the DoH listener."""

    kind = "doh"

    def __init__(self, server: TestUpstream, ssl_context) -> None:
        super().__init__(server, ssl_context)
        self._h2: h2.connection.H2Connection | None = None
        self._http1 = False
        self._streams: dict[int, _Stream] = {}
        self._processed = 0
        self._goaway_last: int | None = None
        self._goaway_sent = False
        self._goaway_closing = False  # the GOAWAY is out: closing after GOAWAY_GRACE
        self._limit = DEFAULT_MAX_CONCURRENT_STREAMS

    # ------------------------------------------------------------ set-up

    def _on_ready(self) -> None:
        alpn = self._sslobj.selected_alpn_protocol() if self._sslobj is not None else None
        if alpn == "http/1.1":
            self._http1 = True
            return
        limit = self._server.faults.max_concurrent_streams
        self._limit = DEFAULT_MAX_CONCURRENT_STREAMS if limit is None else int(limit)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        codes = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={codes.MAX_CONCURRENT_STREAMS: self._limit, codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE},
        )
        conn.initiate_connection()
        # What h2 enforces: no limit, so that a client racing our SETTINGS gets
        # REFUSED_STREAM on the extra streams instead of a connection error.
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={codes.MAX_CONCURRENT_STREAMS: _H2_UNLIMITED, codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE},
        )
        self._h2 = conn
        self._flush()

    # ------------------------------------------------------------ input

    def _feed(self, data: bytes) -> None:
        if self._http1:
            self._stats.http_errors_sent += 1
            self._write(_HTTP1_REJECT)
            self.close()
            return
        conn = self._h2
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("DoH protocol error: %r", exc)
            self._stats.protocol_errors += 1
            self._stats.goaways_sent += 1  # h2 queued a GOAWAY with the error
            self._flush()
            self.close()
            return
        for i, ev in enumerate(events):
            t = type(ev)
            if t is _RequestReceived:
                self._on_request(ev)
            elif t is _DataReceived:
                self._on_data(ev)
            elif t is _StreamEnded:
                self._on_end(ev.stream_id)
            elif t is _StreamReset:
                self._streams.pop(ev.stream_id, None)
                self._maybe_finish_goaway()
            elif t is _WindowUpdated or t is _RemoteSettingsChanged:
                self._pump_all()
            elif t is _ConnectionTerminated:
                self._flush()
                self.close(by_server=False)
                return
            if self.closing or self.lost or self.blackholed:
                if self._goaway_last is not None:  # closed after GOAWAY: count what came too late
                    for later in events[i + 1 :]:
                        if type(later) is _RequestReceived:
                            self._stats.doh_streams += 1
                            self._stats.doh_streams_unprocessed += 1
                return
        self._flush()

    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        self._stats.doh_streams += 1
        if self._goaway_last is not None:
            self._stats.doh_streams_unprocessed += 1
            return
        if len(self._streams) >= self._limit:
            self._stats.doh_streams_refused += 1
            self._reset(sid, ErrorCodes.REFUSED_STREAM)  # the client may have reset it already
            return
        self._streams[sid] = _Stream(ev.headers)
        self._processed += 1
        after = self._server.faults.goaway_after
        if after is not None and self._processed >= after:
            self._send_goaway(sid)

    def _on_data(self, ev) -> None:
        sid = ev.stream_id
        if ev.flow_controlled_length:
            try:
                self._h2.acknowledge_received_data(ev.flow_controlled_length, sid)
            except _H2Error:
                pass
        st = self._streams.get(sid)
        if st is None or st.answering:
            return
        st.body += ev.data
        if len(st.body) > MAX_DNS_MESSAGE:
            self._respond_status(sid, 413)
            self._reset(sid, ErrorCodes.NO_ERROR)

    def _on_end(self, sid: int) -> None:
        st = self._streams.get(sid)
        if st is None or st.answering:
            return
        path, _, query_string = (st.path or b"").partition(b"?")
        if path != b"/dns-query":
            self._respond_status(sid, 404)
            return
        if st.method == b"POST":
            ctype = (st.content_type or b"").split(b";", 1)[0].strip().lower()
            if ctype != _CONTENT_TYPE:
                self._respond_status(sid, 415)
                return
            query = bytes(st.body)
        elif st.method == b"GET":
            query = _decode_dns_param(query_string)
        else:
            self._respond_status(sid, 405, ((b"allow", b"GET, POST"),))
            return
        if not query:
            self._respond_status(sid, 400)
            return
        faults = self._server.faults
        status = faults.http_status
        if status is not None and (faults.http_status_rate >= 1.0 or random.random() < faults.http_status_rate):
            self._stats.queries["doh"] += 1
            extra = ((b"retry-after", b"1"),) if status in (429, 503) else ()
            self._respond_status(sid, int(status), extra)
            return
        st.answering = True
        st.body = bytearray()
        self._query(query, sid)

    # ------------------------------------------------------------ output

    def _send_reply(self, sid: Any, response: bytes) -> bool:
        st = self._streams.get(sid)
        if st is None:  # reset by the client meanwhile
            self._stats.replies_discarded += 1
            return False
        try:
            info = scan_response(response)
            ttl = info.min_ttl or 0
        except WireError:
            ttl = 0
        headers = [
            (b":status", b"200"),
            (b"content-type", _CONTENT_TYPE),
            (b"content-length", str(len(response)).encode()),
            (b"cache-control", b"max-age=%d" % ttl),
        ]
        try:
            self._h2.send_headers(sid, headers, end_stream=not response)
        except _H2Error:
            self._streams.pop(sid, None)
            self._stats.replies_discarded += 1
            return False
        st.out = response
        st.out_off = 0
        if response:
            self._pump(sid, st)
        else:
            self._stream_done(sid)
        self._flush()
        return True

    def _pump(self, sid: int, st: _Stream) -> None:
        conn = self._h2
        data = st.out
        try:
            while st.out_off < len(data):
                size = min(
                    conn.local_flow_control_window(sid),
                    conn.max_outbound_frame_size,
                    len(data) - st.out_off,
                )
                if size <= 0:
                    return  # wait for WINDOW_UPDATE
                end = st.out_off + size
                conn.send_data(sid, data[st.out_off : end], end_stream=end == len(data))
                st.out_off = end
        except _H2Error:
            self._streams.pop(sid, None)
            self._maybe_finish_goaway()
            return
        self._stream_done(sid)

    def _pump_all(self) -> None:
        for sid, st in list(self._streams.items()):
            if st.out is not None and st.out_off < len(st.out):
                self._pump(sid, st)

    def _stream_done(self, sid: int) -> None:
        self._streams.pop(sid, None)
        self._maybe_finish_goaway()

    def _respond_status(self, sid: int, status: int, extra=()) -> None:
        self._stats.http_errors_sent += 1
        headers = [(b":status", str(status).encode()), (b"content-length", b"0"), *extra]
        self._streams.pop(sid, None)
        try:
            self._h2.send_headers(sid, headers, end_stream=True)
        except _H2Error:
            pass
        self._maybe_finish_goaway()
        self._flush()

    def _reset(self, sid: int, code: int) -> None:
        try:
            self._h2.reset_stream(sid, code)
        except _H2Error:
            pass

    def _no_reply(self, sid: Any) -> None:
        st = self._streams.get(sid)
        if st is not None:
            st.abandoned = True  # the stream stays open, unanswered
            self._maybe_finish_goaway()

    def _send_goaway(self, last_stream_id: int) -> None:
        self._goaway_last = last_stream_id
        if self._server.faults.goaway_before_answers:
            self._write_goaway()

    def _write_goaway(self) -> None:
        self._flush()  # h2's frames so far, then ours, at a frame boundary
        self._goaway_sent = True
        self._stats.goaways_sent += 1
        self._write(GoAwayFrame(0, last_stream_id=self._goaway_last, error_code=0).serialize())

    #: After its GOAWAY the server reads on this long before it closes (RFC 9113 section 6.8: frames
    #: in flight may still arrive). Closing at once, with the client's newest streams unread, sent an
    #: RST that could reach the client before the GOAWAY and the last answers did.
    GOAWAY_GRACE = 0.05

    def _maybe_finish_goaway(self) -> None:
        if self._goaway_last is None or self.closing or self.lost or self._goaway_closing:
            return
        for st in self._streams.values():
            if not st.abandoned:
                return
        self._flush()
        if not self._goaway_sent:
            self._write_goaway()
        self._goaway_closing = True
        self.call_later(self.GOAWAY_GRACE, self.close)

    def _flush(self) -> None:
        conn = self._h2
        if conn is None or self.closing or self.lost or self.blackholed:
            return
        data = conn.data_to_send()
        if data:
            self._write(data)
