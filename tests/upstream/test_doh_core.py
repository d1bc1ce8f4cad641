"""The sans-IO DoH/2 client core (dotproxy.proto.doh.DohClient) against an in-memory ``h2`` server.

Bytes go back and forth between the two state machines in this process: no
sockets, no loop. The server side is plain ``h2`` (a real HTTP/2 implementation),
driven by each test.
"""

from __future__ import annotations

import base64

import dns.message
import dns.rrset
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from upstream_support import OPT_PADDING, check_answer, has_opt, make_query

from dotproxy import wire
from dotproxy.errors import BadResponse, UpstreamRefused, WireError
from dotproxy.proto.doh import (
    AnswerReceived,
    ConnectionBroken,
    DohClient,
    GoAwayReceived,
    PingAcknowledged,
    QueryFailed,
)
from dotproxy.testing import default_answer

CT = b"application/dns-message"


class Server:
    """The server end: plain h2 with requests collected per stream."""

    def __init__(self, max_concurrent_streams: int | None = None, initial_window: int | None = None) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        values = {}
        if max_concurrent_streams is not None:
            values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
        if initial_window is not None:
            values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = initial_window
        if values:
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=values)
        self.h2.initiate_connection()
        self.requests: dict[int, dict] = {}  # stream id -> {"headers", "body", "ended"}
        self.resets: dict[int, int] = {}  # stream id -> error code
        self.pings = 0
        self.events: list = []

    def receive(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            self.events.append(ev)
            if isinstance(ev, h2.events.RequestReceived):
                self.requests[ev.stream_id] = {"headers": dict(ev.headers), "body": b"", "ended": False}
            elif isinstance(ev, h2.events.DataReceived):
                self.requests[ev.stream_id]["body"] += ev.data
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.requests[ev.stream_id]["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.PingReceived):
                self.pings += 1

    def ended(self) -> list[int]:
        """Streams whose request is complete and not yet answered or reset."""
        return [sid for sid, r in self.requests.items() if r["ended"] and sid not in self.resets
                and not r.get("answered")]

    def query_of(self, sid: int) -> bytes:
        r = self.requests[sid]
        if r["headers"][b":method"] == b"GET":
            path = r["headers"][b":path"]
            param = path.split(b"?dns=", 1)[1]
            return base64.urlsafe_b64decode(param + b"=" * (-len(param) % 4))
        return r["body"]

    def respond(self, sid: int, body: bytes | None = None, *, status: bytes = b"200", ctype: bytes | None = CT,
                extra=()) -> None:
        if body is None:
            body = default_answer(self.query_of(sid))
        headers = [(b":status", status)]
        if ctype is not None:
            headers.append((b"content-type", ctype))
        headers.append((b"content-length", str(len(body)).encode()))
        headers.extend(extra)
        self.h2.send_headers(sid, headers, end_stream=not body)
        if body:
            # Frames of at most the peer's max frame size.
            size = self.h2.max_outbound_frame_size
            for i in range(0, len(body), size):
                self.h2.send_data(sid, body[i : i + size], end_stream=i + size >= len(body))
        self.requests[sid]["answered"] = True


class Pair:
    def __init__(self, server: Server | None = None, **client_kw) -> None:
        client_kw.setdefault("authority", "dns.test")
        self.client = DohClient(**client_kw)
        self.server = server or Server()
        self.now = 0.0
        self.events: list = []

    def to_server(self) -> None:
        data = self.client.data_to_send()
        if data:
            self.server.receive(data)

    def to_client(self, split: bool = False) -> list:
        data = self.server.h2.data_to_send()
        if not data:
            return []
        if split:
            evs = []
            for i in range(len(data)):
                evs += self.client.receive_data(data[i : i + 1], self.now)
        else:
            evs = self.client.receive_data(data, self.now)
        self.events += evs
        return evs

    def pump(self, rounds: int = 4) -> list:
        evs = []
        for _ in range(rounds):
            self.to_server()
            evs += self.to_client()
        self.to_server()
        return evs

    def handshake(self) -> None:
        self.pump()


def of(kind, events):
    return [e for e in events if type(e) is kind]


# --------------------------------------------------------------------------- requests


def test_post_request_shape_and_answer():
    p = Pair(authority="dns.example:8443", path="/custom-query")
    p.handshake()
    q = make_query("www.example", id=0xABCD)
    qid = p.client.send_query(q, 1.0)
    p.to_server()
    (sid,) = p.server.ended()
    headers = p.server.requests[sid]["headers"]
    assert headers[b":method"] == b"POST"
    assert headers[b":scheme"] == b"https"
    assert headers[b":authority"] == b"dns.example:8443"
    assert headers[b":path"] == b"/custom-query"
    assert headers[b"content-type"] == CT
    assert headers[b"accept"] == CT
    body = p.server.requests[sid]["body"]
    assert int(headers[b"content-length"]) == len(body)
    assert wire.parse_query(body).id == 0  # RFC 8484 section 4.1: ID 0 on the wire
    assert len(body) % 128 == 0  # RFC 8467 padding
    assert OPT_PADDING in [code for code, _ in wire.parse_query(body).edns.options]
    p.server.respond(sid)
    p.now = 1.5
    (ev,) = p.to_client()
    assert type(ev) is AnswerReceived and ev.query_id == qid
    assert ev.rtt == pytest.approx(0.5)
    check_answer(ev.data, q)  # the client's ID is back
    assert not has_opt(ev.data)  # we added the OPT, the client gets none
    assert p.client.outstanding == 0


def test_get_request_shape():
    p = Pair(method="GET")
    p.handshake()
    q = make_query("get.example", id=0x1111, edns=True)
    p.client.send_query(q, 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    r = p.server.requests[sid]
    assert r["headers"][b":method"] == b"GET"
    assert r["body"] == b""
    path = r["headers"][b":path"]
    assert path.startswith(b"/dns-query?dns=")
    param = path.split(b"?dns=")[1]
    assert b"=" not in param and b"+" not in param and b"/" not in param  # base64url, no padding
    sent = base64.urlsafe_b64decode(param + b"=" * (-len(param) % 4))
    assert wire.parse_query(sent).id == 0 and len(sent) % 128 == 0
    p.server.respond(sid)
    (ev,) = p.to_client()
    check_answer(ev.data, q)
    assert has_opt(ev.data)  # the client asked with EDNS: it keeps its OPT


def test_no_padding():
    p = Pair(pad_block=None)
    p.handshake()
    q = make_query("np.example", id=5)
    p.client.send_query(q, 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    assert p.server.requests[sid]["body"] == wire.set_id(q, 0)


def test_malformed_query_raises():
    p = Pair()
    with pytest.raises(WireError):
        p.client.send_query(b"\x00\x01", 0.0)
    assert p.client.outstanding == 0


def test_answers_out_of_order_and_split_at_every_byte():
    p = Pair()
    p.handshake()
    qs = {}
    for i in range(6):
        q = make_query(f"o{i}.example", id=i % 2)
        qs[p.client.send_query(q, 0.0)] = q
    p.to_server()
    sids = p.server.ended()
    assert len(sids) == 6
    for sid in reversed(sids):
        p.server.respond(sid)
    evs = p.to_client(split=True)
    got = of(AnswerReceived, evs)
    assert len(got) == 6 and len(evs) == 6
    assert [e.query_id for e in got] == list(reversed(list(qs)))
    for e in got:
        check_answer(e.data, qs[e.query_id])


def test_large_answer_in_many_data_frames():
    p = Pair()
    p.handshake()
    q = make_query("big.example", "TXT", id=3)
    p.client.send_query(q, 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    resp = dns.message.make_response(dns.message.from_wire(p.server.query_of(sid)))
    rrset = dns.rrset.from_text("big.example.", 60, "IN", "TXT", *[f'"{i:04d}' + "x" * 200 + '"' for i in range(160)])
    resp.answer.append(rrset)
    body = resp.to_wire(max_size=65535)
    assert len(body) > 2 * 16384
    p.server.respond(sid, body)
    evs = p.pump()
    (ev,) = of(AnswerReceived, evs)
    r = check_answer(ev.data, q)
    assert len(r.answer[0]) == 160


# --------------------------------------------------------------------------- stream limits, flow control


def test_streams_limited_by_server_setting_then_queued():
    p = Pair(Server(max_concurrent_streams=3))
    p.handshake()
    assert p.client.stream_limit == 3
    qs = {}
    for i in range(10):
        q = make_query(f"l{i}.example")
        qs[p.client.send_query(q, 0.0)] = q
    p.to_server()
    assert len(p.server.requests) == 3  # the rest wait in the client's queue
    assert p.client.outstanding == 10
    answered = {}
    for _ in range(10):
        open_now = p.server.ended()
        assert 1 <= len(open_now) <= 3
        p.server.respond(open_now[0])
        for e in of(AnswerReceived, p.to_client()):
            answered[e.query_id] = e.data
        p.to_server()
        assert sum(1 for r in p.server.requests.values() if not r.get("answered")) <= 3
    assert answered.keys() == qs.keys()
    for qid, data in answered.items():
        check_answer(data, qs[qid])


def test_own_max_streams_caps_too():
    p = Pair(max_streams=2)
    p.handshake()
    for i in range(5):
        p.client.send_query(make_query(f"m{i}.example"), 0.0)
    p.to_server()
    assert len(p.server.requests) == 2


def test_default_limit_before_server_settings():
    p = Pair(max_streams=500)
    assert p.client.stream_limit == 100  # RFC 9113's recommended minimum, until SETTINGS come
    for i in range(150):
        p.client.send_query(make_query(f"d{i}.example"), 0.0)
    p.to_server()
    assert len(p.server.requests) == 100


def test_request_body_waits_for_flow_control_window():
    p = Pair(Server(initial_window=40))
    p.handshake()
    q = make_query("fc.example", id=8)
    p.client.send_query(q, 0.0)
    p.to_server()
    (sid,) = p.server.requests
    r = p.server.requests[sid]
    assert len(r["body"]) == 40 and not r["ended"]
    p.server.h2.increment_flow_control_window(1000, stream_id=sid)
    p.pump()
    assert r["ended"] and len(r["body"]) == 128
    assert wire.parse_query(r["body"]).qname == "fc.example"
    p.server.respond(sid)
    (ev,) = of(AnswerReceived, p.pump())
    check_answer(ev.data, q)


# --------------------------------------------------------------------------- cancel, errors


def test_cancel_open_stream_sends_rst_stream_cancel():
    p = Pair()
    p.handshake()
    a = p.client.send_query(make_query("a.example"), 0.0)
    qb = make_query("b.example", id=2)
    b = p.client.send_query(qb, 0.0)
    p.to_server()
    sid_a, sid_b = p.server.ended()
    p.client.cancel(a)
    p.client.cancel(a)  # twice: harmless
    p.to_server()
    assert p.server.resets == {sid_a: h2.errors.ErrorCodes.CANCEL}
    p.server.respond(sid_b)
    (ev,) = p.to_client()
    assert ev.query_id == b
    check_answer(ev.data, qb)
    assert p.client.outstanding == 0


def test_cancel_queued_query_never_opens_a_stream():
    p = Pair(Server(max_concurrent_streams=1))
    p.handshake()
    a = p.client.send_query(make_query("a.example"), 0.0)
    b = p.client.send_query(make_query("b.example"), 0.0)
    p.to_server()
    p.client.cancel(b)
    (sid,) = p.server.ended()
    p.server.respond(sid)
    evs = p.pump()
    assert [e.query_id for e in of(AnswerReceived, evs)] == [a]
    assert len(p.server.requests) == 1 and p.server.resets == {}
    assert p.client.outstanding == 0


def test_answer_racing_a_cancel_is_not_delivered():
    p = Pair()
    p.handshake()
    a = p.client.send_query(make_query("a.example"), 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    p.server.respond(sid)  # the answer is on its way...
    p.client.cancel(a)  # ...when the client gives up
    evs = p.to_client()
    assert of(AnswerReceived, evs) == [] and of(ConnectionBroken, evs) == []
    p.to_server()
    q = make_query("next.example")
    n = p.client.send_query(q, 0.0)
    p.to_server()
    (sid2,) = p.server.ended()
    p.server.respond(sid2)
    (ev,) = of(AnswerReceived, p.to_client())
    assert ev.query_id == n
    check_answer(ev.data, q)


@pytest.mark.parametrize("status, retry_after, expected_retry_after", [
    (b"429", b"7", 7.0), (b"503", b"2.5", 2.5), (b"500", None, None), (b"404", None, None)])
def test_http_error_status(status, retry_after, expected_retry_after):
    p = Pair()
    p.handshake()
    qid = p.client.send_query(make_query("s.example"), 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    extra = [(b"retry-after", retry_after)] if retry_after else []
    p.server.respond(sid, b"", status=status, ctype=None, extra=extra)
    (ev,) = p.to_client()
    assert type(ev) is QueryFailed and ev.query_id == qid and not ev.retry
    assert isinstance(ev.error, UpstreamRefused)
    assert ev.error.status == int(status)
    assert ev.error.retry_after == expected_retry_after
    assert status.decode() in str(ev.error)
    assert p.client.outstanding == 0


@pytest.mark.parametrize("ctype", [None, b"text/html", b"application/dns-json", b"application/octet-stream"])
def test_wrong_content_type_is_bad_response(ctype):
    p = Pair()
    p.handshake()
    qid = p.client.send_query(make_query("ct.example"), 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    p.server.respond(sid, ctype=ctype)
    evs = p.to_client()
    assert [type(e) for e in evs] == [QueryFailed]
    assert evs[0].query_id == qid and isinstance(evs[0].error, BadResponse)
    assert "content-type" in str(evs[0].error)


@pytest.mark.parametrize("ctype", [b"application/dns-message; charset=binary", b"Application/DNS-Message"])
def test_content_type_parameters_and_case_are_accepted(ctype):
    p = Pair()
    p.handshake()
    q = make_query("ct.example")
    p.client.send_query(q, 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    p.server.respond(sid, ctype=ctype)
    (ev,) = p.to_client()
    check_answer(ev.data, q)


def test_bad_bodies_are_bad_responses():
    p = Pair()
    p.handshake()
    ids = [p.client.send_query(make_query(f"x{i}.example"), 0.0) for i in range(3)]
    p.to_server()
    s0, s1, s2 = p.server.ended()
    p.server.respond(s0, b"\x00\x01garbage")
    other = default_answer(wire.set_id(make_query("other.example", edns=True), 0))
    p.server.respond(s1, other)
    noq = bytes.fromhex("000081800000000000000000")  # NOERROR, no question
    p.server.respond(s2, noq)
    evs = p.to_client()
    assert [type(e) for e in evs] == [QueryFailed] * 3
    assert [e.query_id for e in evs] == ids
    assert all(isinstance(e.error, BadResponse) for e in evs)
    assert "another question" in str(evs[1].error)


def test_refused_stream_is_retryable():
    p = Pair()
    p.handshake()
    qid = p.client.send_query(make_query("r.example"), 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    p.server.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    (ev,) = p.to_client()
    assert type(ev) is QueryFailed and ev.query_id == qid and ev.retry is True


def test_other_reset_is_a_final_failure():
    p = Pair()
    p.handshake()
    qid = p.client.send_query(make_query("r.example"), 0.0)
    p.to_server()
    (sid,) = p.server.ended()
    p.server.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
    (ev,) = p.to_client()
    assert type(ev) is QueryFailed and ev.query_id == qid and ev.retry is False
    assert "INTERNAL_ERROR" in str(ev.error)


# --------------------------------------------------------------------------- GOAWAY, PING, breakage


@pytest.mark.parametrize("answers_first", [False, True])
def test_goaway_hands_back_unprocessed_and_finishes_the_rest(answers_first):
    p = Pair(Server(max_concurrent_streams=4))
    p.handshake()
    qs = {}
    for i in range(6):
        q = make_query(f"g{i}.example")
        qs[p.client.send_query(q, 0.0)] = q
    p.to_server()
    sids = sorted(p.server.requests)
    assert len(sids) == 4
    ids = list(qs)
    keep = sids[:2]  # the server processes the first two streams only
    if answers_first:
        for sid in keep:
            p.server.respond(sid)
    p.server.h2.close_connection(last_stream_id=keep[-1])
    evs = p.to_client()
    (goaway,) = of(GoAwayReceived, evs)
    assert sorted(goaway.unprocessed) == sorted(ids[2:])  # streams 3 and 4, and the two still queued
    assert not p.client.accepting
    if not answers_first:
        # RFC 9113 6.8: streams up to last_stream_id still complete after the GOAWAY.
        # h2 refuses to send anything after its own close_connection(): write raw frames.
        raw = _raw_answers(p, keep)
        evs = p.client.receive_data(raw, 0.0)
    got = of(AnswerReceived, evs)
    assert sorted(e.query_id for e in got) == sorted(ids[:2])
    for e in got:
        check_answer(e.data, qs[e.query_id])
    assert p.client.outstanding == 0
    # No stream is opened after a GOAWAY.
    p.client.data_to_send()  # WINDOW_UPDATEs for the answers
    p.client.send_query(make_query("late.example"), 0.0)
    assert p.client.data_to_send() == b""


def _raw_answers(p: Pair, sids: list[int]) -> bytes:
    """HEADERS + DATA frames answering ``sids``, encoded with the server's HPACK state bypassed."""
    from hpack import Encoder
    from hyperframe.frame import DataFrame, HeadersFrame

    enc = Encoder()
    # The client's decoder has seen the server's earlier header blocks; use only literal, non-indexed
    # representations so no dynamic-table state is needed.
    out = b""
    for sid in sids:
        body = default_answer(p.server.query_of(sid))
        block = enc.encode([(b":status", b"200"), (b"content-type", CT),
                            (b"content-length", str(len(body)).encode())], huffman=False)
        hf = HeadersFrame(sid)
        hf.data = block
        hf.flags.add("END_HEADERS")
        df = DataFrame(sid)
        df.data = body
        df.flags.add("END_STREAM")
        out += hf.serialize() + df.serialize()
    return out


def test_ping_acknowledged_with_rtt():
    p = Pair()
    p.handshake()
    p.client.ping(2.0)
    p.to_server()
    assert p.server.pings == 1
    p.now = 2.125
    (ev,) = of(PingAcknowledged, p.to_client())
    assert ev.rtt == pytest.approx(0.125)


def test_protocol_error_breaks_the_connection_and_fails_everything():
    p = Pair()
    p.handshake()
    ids = [p.client.send_query(make_query(f"p{i}.example"), 0.0) for i in range(3)]
    p.to_server()
    # A DATA frame on stream 0 is a connection error.
    evs = p.client.receive_data(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd", 0.0)
    (ev,) = of(ConnectionBroken, evs)
    assert sorted(ev.query_ids) == sorted(ids)
    assert not p.client.accepting and p.client.outstanding == 0


def test_connection_lost_returns_everything_outstanding():
    p = Pair(Server(max_concurrent_streams=1))
    p.handshake()
    ids = [p.client.send_query(make_query(f"c{i}.example"), 0.0) for i in range(3)]
    p.to_server()
    assert sorted(p.client.connection_lost()) == sorted(ids)
    assert p.client.outstanding == 0


def test_close_sends_goaway():
    p = Pair()
    p.handshake()
    p.client.close()
    p.to_server()
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in p.server.events)


def test_last_received():
    p = Pair()
    assert p.client.last_received is None
    p.now = 3.0
    p.handshake()
    assert p.client.last_received == 3.0
