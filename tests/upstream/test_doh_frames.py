"""The HTTP/2 frame layer of the DoH client (dotproxy.proto.doh, dotproxy.proto.http2), byte by byte.

The server here is hand-written frames: golden layouts in, and the client's own
frames parsed back out. Whatever the server sends, receive_data returns events;
a broken protocol is a ConnectionBroken event, never an exception.
"""

from __future__ import annotations

import base64
import struct
import subprocess
import sys

import dns.edns
import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from upstream_support import check_answer, make_query

from dotproxy import wire
from dotproxy.proto import http2 as h
from dotproxy.proto.doh import (
    AnswerReceived,
    ConnectionBroken,
    DohClient,
    GoAwayReceived,
    PingAcknowledged,
    QueryFailed,
)
from dotproxy.proto.hpack_lite import Decoder, encode_indexed, encode_literal
from dotproxy.testing import default_answer

CT = b"application/dns-message"
EVENTS = (AnswerReceived, ConnectionBroken, GoAwayReceived, PingAcknowledged, QueryFailed)


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame in ``data`` (the preface stripped)."""
    if data.startswith(h.PREFACE):
        data = data[len(h.PREFACE):]
    out, pos = [], 0
    while pos < len(data):
        lt, flags, sid = h.FRAME_HEADER.unpack_from(data, pos)
        out.append((lt & 0xFF, flags, sid & 0x7FFFFFFF, data[pos + 9 : pos + 9 + (lt >> 8)]))
        pos += 9 + (lt >> 8)
    assert pos == len(data)
    return out


def ready(**kw) -> DohClient:
    kw.setdefault("authority", "dns.test")
    c = DohClient(**kw)
    assert c.receive_data(h.settings_frame({}), 0.0) == []
    c.data_to_send()
    return c


def response_block(status: bytes = b"200", ctype: bytes | None = CT, extra=()) -> bytes:
    block = encode_indexed(8) if status == b"200" else encode_literal(8, status)
    if ctype is not None:
        block += encode_literal(31, ctype)
    return block + b"".join(encode_literal(n, v) for n, v in extra)


def answer_for(query: bytes) -> bytes:
    return default_answer(wire.pad(wire.set_id(query, 0), 128))


def one_query(c: DohClient, name: str = "f.example") -> tuple[int, bytes]:
    q = make_query(name, id=0x2222)
    qid = c.send_query(q, 0.0)
    c.data_to_send()
    return qid, q


# --------------------------------------------------------------------------- what we send


def test_preface_settings_and_connection_window():
    c = DohClient(authority="dns.test")
    data = c.data_to_send()
    assert data.startswith(h.PREFACE)
    (settings_type, flags, sid, payload), (wu_type, _, wu_sid, wu) = parse_frames(data)
    assert (settings_type, flags, sid) == (h.SETTINGS, 0, 0)
    values = dict(struct.unpack(">HI", payload[i : i + 6]) for i in range(0, len(payload), 6))
    assert values[h.ENABLE_PUSH] == 0 and values[h.INITIAL_WINDOW_SIZE] == 1 << 20
    assert h.MAX_CONCURRENT_STREAMS not in values  # a client has no streams for the server to open
    assert (wu_type, wu_sid, struct.unpack(">I", wu)[0]) == (h.WINDOW_UPDATE, 0, 1 << 24)
    c.receive_data(h.settings_frame({h.MAX_CONCURRENT_STREAMS: 7}), 0.0)
    assert parse_frames(c.data_to_send()) == [(h.SETTINGS, h.ACK, 0, b"")]
    assert c.stream_limit == 7


def test_request_headers_are_literals_the_server_table_never_sees():
    c = ready(authority="dns.example:8443", path="/q")
    c.send_query(make_query("a.example"), 0.0)
    c.send_query(make_query("b.example"), 0.0)
    frames = parse_frames(c.data_to_send())
    assert [(t, f, s) for t, f, s, _ in frames] == [
        (h.HEADERS, h.END_HEADERS, 1), (h.DATA, h.END_STREAM, 1),
        (h.HEADERS, h.END_HEADERS, 3), (h.DATA, h.END_STREAM, 3)]
    server = Decoder()
    for _, _, _, block in frames[::2]:
        headers = dict(server.decode(block))
        assert headers == {b":method": b"POST", b":scheme": b"https", b":authority": b"dns.example:8443",
                           b":path": b"/q", b"accept": CT, b"content-type": CT, b"content-length": b"128"}
        assert server.table() == []


def test_large_get_request_goes_out_as_headers_and_continuations():
    c = ready(method="GET")
    q = dns.message.make_query("big.example", "A", use_edns=0,
                               options=[dns.edns.GenericOption(65001, b"x" * 30000)]).to_wire(max_size=65535)
    c.send_query(q, 0.0)
    frames = parse_frames(c.data_to_send())
    assert [t for t, *_ in frames] == [h.HEADERS, h.CONTINUATION, h.CONTINUATION]
    assert [f for _, f, *_ in frames] == [h.END_STREAM, 0, h.END_HEADERS]
    assert all(len(p) <= 16384 for *_, p in frames)
    path = dict(Decoder().decode(b"".join(p for *_, p in frames)))[b":path"]
    sent = base64.urlsafe_b64decode(path.split(b"?dns=")[1] + b"==")
    assert wire.parse_query(sent).qname == "big.example"


def test_server_max_frame_size_lets_bodies_go_in_bigger_frames():
    c = ready()
    c.receive_data(h.settings_frame({h.MAX_FRAME_SIZE: 1 << 15}) + h.window_update_frame(0, 1 << 20), 0.0)
    c.data_to_send()
    q = dns.message.make_query("big.example", "A", use_edns=0,
                               options=[dns.edns.GenericOption(65001, b"x" * 20000)]).to_wire(max_size=65535)
    c.send_query(q, 0.0)
    frames = parse_frames(c.data_to_send())
    assert [(t, f, len(p)) for t, f, _, p in frames][1:] == [(h.DATA, h.END_STREAM, len(wire.pad(q, 128)))]


def test_initial_window_changes_apply_to_open_streams_and_the_connection_window_blocks_too():
    c = ready()
    c.receive_data(h.settings_frame({h.INITIAL_WINDOW_SIZE: 10}), 0.0)
    c.data_to_send()
    c.send_query(make_query("w.example"), 0.0)
    assert [(t, len(p) if t == h.DATA else f) for t, f, _, p in parse_frames(c.data_to_send())] == [
        (h.HEADERS, h.END_HEADERS), (h.DATA, 10)]
    c.receive_data(h.settings_frame({h.INITIAL_WINDOW_SIZE: 0}), 0.0)  # the stream's window: -10
    assert [t for t, *_ in parse_frames(c.data_to_send())] == [h.SETTINGS]
    c.receive_data(h.window_update_frame(1, 15), 0.0)  # 5: still short of the 118 bytes left
    assert [(t, len(p)) for t, _, _, p in parse_frames(c.data_to_send())] == [(h.DATA, 5)]
    c.receive_data(h.settings_frame({h.INITIAL_WINDOW_SIZE: 1000}), 0.0)
    assert [(t, f, len(p)) for t, f, _, p in parse_frames(c.data_to_send())] == [
        (h.SETTINGS, h.ACK, 0), (h.DATA, h.END_STREAM, 113)]
    # The connection's own window (65,535 until the server adds to it) holds bodies back as well.
    c = ready()
    c.receive_data(h.settings_frame({h.MAX_FRAME_SIZE: 1 << 15}), 0.0)
    big = [dns.message.make_query(f"b{i}.example", "A", use_edns=0,
                                  options=[dns.edns.GenericOption(65001, b"x" * 30000)]).to_wire(max_size=65535) for i in range(3)]
    for q in big:
        c.send_query(q, 0.0)
    sent = sum(len(p) for t, _, _, p in parse_frames(c.data_to_send()) if t == h.DATA)
    assert sent == 65535
    c.receive_data(h.window_update_frame(0, 1 << 20), 0.0)
    frames = parse_frames(c.data_to_send())
    assert sent + sum(len(p) for t, _, _, p in frames if t == h.DATA) == sum(len(wire.pad(q, 128)) for q in big)
    assert [s for t, f, s, _ in frames if t == h.DATA and f & h.END_STREAM] == [5]  # 1 and 3 fitted in 65,535


# --------------------------------------------------------------------------- what we read


@pytest.mark.parametrize("split", [False, True])
def test_padded_headers_continuations_and_padded_data(split):
    c = ready()
    qid, q = one_query(c)
    block = response_block(extra=[(b"server", b"x" * 40)])
    body = answer_for(q)
    pad = 7
    head = bytes([pad]) + b"\x00\x00\x00\x00\x10" + block[:5] + b"\x00" * pad  # PADDED, PRIORITY, 5 bytes of block
    data = (h.frame(h.HEADERS, h.PADDED | h.PRIORITY_FLAG, 1, head)
            + h.frame(h.CONTINUATION, 0, 1, block[5:20])
            + h.frame(h.CONTINUATION, h.END_HEADERS, 1, block[20:])
            + h.frame(h.DATA, h.PADDED, 1, b"\x03" + body[:10] + b"\x00\x00\x00")
            + h.frame(0xFA, 0xFF, 1, b"unknown frame types are ignored")
            + h.frame(h.DATA, h.PADDED | h.END_STREAM, 1, b"\x00" + body[10:]))
    if split:
        events = []
        for i in range(len(data)):
            events += c.receive_data(data[i : i + 1], 1.0)
    else:
        events = c.receive_data(data, 1.0)
    (ev,) = events
    assert type(ev) is AnswerReceived and ev.query_id == qid
    check_answer(ev.data, q)


def test_informational_heads_and_trailers_are_skipped():
    c = ready()
    qid, q = one_query(c)
    data = (h.frame(h.HEADERS, h.END_HEADERS, 1, encode_literal(8, b"103"))
            + h.frame(h.HEADERS, h.END_HEADERS, 1, response_block())
            + h.frame(h.DATA, 0, 1, answer_for(q))
            + h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 1, encode_literal(b"x-trailer", b"1")))
    (ev,) = c.receive_data(data, 1.0)
    assert type(ev) is AnswerReceived
    check_answer(ev.data, q)


def test_data_before_headers_fails_the_query_only():
    c = ready()
    qid, q = one_query(c)
    (ev,) = c.receive_data(h.frame(h.DATA, h.END_STREAM, 1, answer_for(q)), 1.0)
    assert type(ev) is QueryFailed and ev.query_id == qid and not ev.retry
    assert parse_frames(c.data_to_send()) == [(h.RST_STREAM, 0, 1, struct.pack(">I", h.ErrorCode.PROTOCOL_ERROR))]
    assert c.accepting


def test_server_ping_is_answered_and_frames_for_closed_streams_ignored():
    c = ready()
    qid, q = one_query(c)
    c.cancel(qid)
    assert parse_frames(c.data_to_send()) == [(h.RST_STREAM, 0, 1, struct.pack(">I", h.ErrorCode.CANCEL))]
    late = (h.frame(h.HEADERS, h.END_HEADERS, 1, response_block()) + h.frame(h.DATA, h.END_STREAM, 1, b"late")
            + h.frame(h.WINDOW_UPDATE, 0, 1, struct.pack(">I", 5)) + h.rst_stream_frame(1, 0)
            + h.ping_frame(b"12345678"))
    assert c.receive_data(late, 1.0) == []
    assert parse_frames(c.data_to_send()) == [(h.PING, h.ACK, 0, b"12345678")]


def test_connection_receive_window_is_replenished_in_large_steps():
    c = ready()
    qid, q = one_query(c)
    c.cancel(qid)
    c.data_to_send()
    chunk = h.frame(h.DATA, 0, 1, b"\x00" * 16384)
    for _ in range(255):
        c.receive_data(chunk, 1.0)
    assert c.data_to_send() == b""  # under 4 MiB: nothing yet
    c.receive_data(chunk + chunk, 1.0)
    assert parse_frames(c.data_to_send()) == [(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 256 * 16384))]


def test_partial_frames_wait_for_the_rest():
    c = ready()
    qid, q = one_query(c)
    data = h.frame(h.HEADERS, h.END_HEADERS, 1, response_block()) + h.frame(h.DATA, h.END_STREAM, 1, answer_for(q))
    assert c.receive_data(data[:5], 0.0) == []
    assert c.receive_data(data[5:20], 0.0) == []
    (ev,) = c.receive_data(data[20:], 0.0)
    assert type(ev) is AnswerReceived


# --------------------------------------------------------------------------- broken servers


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


MALFORMED = {
    "frame longer than our max frame size": struct.pack(">IBI", 16385 << 8 | h.DATA, 0, 1),
    "DATA on stream 0": h.frame(h.DATA, 0, 0, b"abcd"),
    "DATA padding as long as the frame": h.frame(h.DATA, h.PADDED, 1, b"\x04abc"),
    "DATA padded but empty": h.frame(h.DATA, h.PADDED, 1, b""),
    "HEADERS padding longer than the frame": h.frame(h.HEADERS, h.PADDED | h.END_HEADERS, 1, b"\x09\x88"),
    "HEADERS priority longer than the frame": h.frame(h.HEADERS, h.PRIORITY_FLAG | h.END_HEADERS, 1, b"\x00\x00"),
    "HEADERS on an even stream": h.frame(h.HEADERS, h.END_HEADERS, 2, b"\x88"),
    "HEADERS on a stream never opened": h.frame(h.HEADERS, h.END_HEADERS, 5, b"\x88"),
    "HEADERS with a bad HPACK block": h.frame(h.HEADERS, h.END_HEADERS, 1, b"\x80"),
    "CONTINUATION without HEADERS": h.frame(h.CONTINUATION, h.END_HEADERS, 1, b"\x88"),
    "CONTINUATION on another stream": h.frame(h.HEADERS, 0, 1, b"\x88") + h.frame(h.CONTINUATION, h.END_HEADERS, 3, b""),
    "header block interrupted": h.frame(h.HEADERS, 0, 1, b"\x88") + h.ping_frame(b"12345678"),
    "SETTINGS on a stream": h.frame(h.SETTINGS, 0, 1, b""),
    "SETTINGS of 5 bytes": h.frame(h.SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00"),
    "SETTINGS ACK with a payload": h.frame(h.SETTINGS, h.ACK, 0, b"\x00\x03\x00\x00\x00\x01"),
    "ENABLE_PUSH 1 from a server": h.settings_frame({h.ENABLE_PUSH: 1}),
    "MAX_FRAME_SIZE below 16384": h.settings_frame({h.MAX_FRAME_SIZE: 100}),
    "INITIAL_WINDOW_SIZE above 2^31-1": h.settings_frame({h.INITIAL_WINDOW_SIZE: 1 << 31}),
    "stream window overflow": h.frame(h.WINDOW_UPDATE, 0, 1, _u32(0x7FFFFFFF)),
    "connection window overflow": h.frame(h.WINDOW_UPDATE, 0, 0, _u32(0x7FFFFFFF)),
    "WINDOW_UPDATE of 0": h.frame(h.WINDOW_UPDATE, 0, 0, _u32(0)),
    "WINDOW_UPDATE of 3 bytes": h.frame(h.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
    "RST_STREAM of 3 bytes": h.frame(h.RST_STREAM, 0, 1, b"\x00\x00\x08"),
    "RST_STREAM on stream 0": h.frame(h.RST_STREAM, 0, 0, _u32(8)),
    "PING of 7 bytes": h.frame(h.PING, 0, 0, b"1234567"),
    "PING on a stream": h.frame(h.PING, 0, 1, b"12345678"),
    "GOAWAY of 4 bytes": h.frame(h.GOAWAY, 0, 0, _u32(0)),
    "GOAWAY on a stream": h.frame(h.GOAWAY, 0, 1, _u32(0) + _u32(0)),
    "PRIORITY of 4 bytes": h.frame(h.PRIORITY, 0, 1, _u32(0)),
    "PUSH_PROMISE with push disabled": h.frame(h.PUSH_PROMISE, h.END_HEADERS, 1, _u32(2) + b"\x82"),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_protocol_errors_break_the_connection(data):
    c = ready()
    qids = [c.send_query(make_query(f"m{i}.example"), 0.0) for i in range(2)]
    c.data_to_send()
    events = c.receive_data(data, 1.0)
    (ev,) = [e for e in events if type(e) is ConnectionBroken]
    assert sorted(ev.query_ids) == sorted(qids)
    assert not c.accepting and c.outstanding == 0
    assert [t for t, *_ in parse_frames(c.data_to_send())][-1] == h.GOAWAY
    assert c.receive_data(h.ping_frame(b"12345678"), 2.0) == []  # a broken connection reads nothing more


@pytest.mark.parametrize("first", [h.ping_frame(b"12345678"), h.frame(h.HEADERS, h.END_HEADERS, 1, b"\x88")],
                         ids=["PING", "HEADERS"])
def test_first_frame_must_be_settings(first):
    c = DohClient(authority="dns.test")
    qid = c.send_query(make_query(), 0.0)
    (ev,) = c.receive_data(first, 0.0)
    assert type(ev) is ConnectionBroken and ev.query_ids == [qid]


def test_events_before_the_error_are_kept():
    c = ready()
    qid, q = one_query(c)
    data = (h.frame(h.HEADERS, h.END_HEADERS, 1, response_block()) + h.frame(h.DATA, h.END_STREAM, 1, answer_for(q))
            + MALFORMED["PING of 7 bytes"])
    answer, broken = c.receive_data(data, 1.0)
    assert type(answer) is AnswerReceived and type(broken) is ConnectionBroken and broken.query_ids == []


def test_proto_doh_does_not_import_h2():
    code = "import sys, dotproxy.proto.doh; sys.exit('h2' in sys.modules or 'hpack' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- fuzz

def _valid_server_bytes(c: DohClient) -> bytes:
    qs = [make_query(f"z{i}.example") for i in range(3)]
    for q in qs:
        c.send_query(q, 0.0)
    c.data_to_send()
    out = b""
    for i, q in enumerate(qs):
        sid = 2 * i + 1
        out += h.frame(h.HEADERS, h.END_HEADERS, sid, response_block()) + h.frame(h.DATA, h.END_STREAM, sid,
                                                                                    answer_for(q))
    return out + h.ping_frame(b"abcdefgh") + h.goaway_frame(5, 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 10))
def test_garbage_never_raises(garbage, cut):
    c = ready()
    c.send_query(make_query("z.example"), 0.0)
    for i in range(0, len(garbage), max(1, cut)):
        for ev in c.receive_data(garbage[i : i + max(1, cut)], 1.0):
            assert isinstance(ev, EVENTS)
            assert not (type(ev) is ConnectionBroken and ev.reason.startswith("HTTP/2 client error")), ev
    c.data_to_send()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_server_output_never_raises(data):
    c = ready()
    stream = bytearray(_valid_server_bytes(c))
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    events = c.receive_data(bytes(stream), 1.0)
    assert all(isinstance(ev, EVENTS) for ev in events)
    broken = [ev for ev in events if type(ev) is ConnectionBroken]
    assert len(broken) <= 1 and (not broken or events[-1] is broken[0])
    assert not (broken and broken[0].reason.startswith("HTTP/2 client error")), broken  # a bug of ours


def test_an_error_head_frees_its_stream_for_a_queued_query():
    c = ready()
    c.receive_data(h.settings_frame({h.MAX_CONCURRENT_STREAMS: 1}), 0.0)
    c.data_to_send()
    a = c.send_query(make_query("a.example"), 0.0)
    qb = make_query("b.example")
    b = c.send_query(qb, 0.0)
    assert [s for t, _, s, _ in parse_frames(c.data_to_send()) if t == h.HEADERS] == [1]
    (ev,) = c.receive_data(h.frame(h.HEADERS, h.END_HEADERS, 1, response_block(b"500", None)), 1.0)
    assert type(ev) is QueryFailed and ev.query_id == a and ev.error.status == 500
    frames = parse_frames(c.data_to_send())  # the server may stream its error page for ever: we stop it
    assert frames[0] == (h.RST_STREAM, 0, 1, struct.pack(">I", h.ErrorCode.CANCEL))
    assert [s for t, _, s, _ in frames if t == h.HEADERS] == [3]
    data = bytearray(h.frame(h.DATA, 0, 1, b"<html>") + h.frame(h.HEADERS, h.END_HEADERS, 3, response_block())
                     + h.frame(h.DATA, h.END_STREAM, 3, answer_for(qb)))
    (ev,) = c.receive_data(data, 1.0)  # a bytearray works as well as bytes
    assert type(ev) is AnswerReceived and ev.query_id == b


def test_an_answer_valid_only_with_id_0_is_a_bad_response_not_an_exception():
    """Found by tests/fuzz/fuzz_doh.py: a compression pointer into the header (offset 1, the ID's low byte) reads
    as the root name while the ID is 0, so scan_response accepts the answer; once the client's ID is back in
    place, stripping the OPT the client never sent walks that name and raises WireError."""
    c = ready()
    q = make_query("f0.example", id=0x22FF)
    assert wire.parse_query(q).edns is None
    qid = c.send_query(q, 0.0)
    c.data_to_send()
    body = bytearray(answer_for(q))
    at = body.index(b"\xc0\x0c", 12)
    body[at : at + 2] = b"\xc0\x01"  # the answer's owner name: a pointer to offset 1
    wire.scan_response(bytes(body))  # fine with ID 0
    data = h.frame(h.HEADERS, h.END_HEADERS, 1, response_block()) + h.frame(h.DATA, h.END_STREAM, 1, bytes(body))
    (ev,) = c.receive_data(data, 1.0)
    assert type(ev) is QueryFailed and ev.query_id == qid and "malformed answer" in str(ev.error)
    assert c.accepting


def test_close_says_goaway_once_and_opens_nothing_after():
    c = ready()
    c.close()
    c.close()
    assert parse_frames(c.data_to_send()) == [(h.GOAWAY, 0, 0, struct.pack(">II", 0, 0))]
    assert not c.accepting
    c.send_query(make_query("late.example"), 0.0)
    assert c.data_to_send() == b""


# --------------------------------------------------------------------------- after the review


def test_a_changed_header_table_size_is_acknowledged_first_in_our_next_block_only():
    """RFC 7541 section 4.2; nghttp2 servers fail the next request with COMPRESSION_ERROR otherwise."""
    c = ready()
    c.receive_data(h.settings_frame({h.HEADER_TABLE_SIZE: 0}), 0.0)
    c.data_to_send()
    c.send_query(make_query("a.example"), 0.0)
    c.send_query(make_query("b.example"), 0.0)
    blocks = [p for t, _, _, p in parse_frames(c.data_to_send()) if t == h.HEADERS]
    assert blocks[0][:1] == b"\x20" and blocks[1][:1] != b"\x20"
    server = Decoder()
    server.decode(blocks[0])  # a size update to 0, then the usual literals: valid HPACK
    assert server.max_table_size == 0


def test_a_flood_of_empty_continuation_frames_breaks_the_connection():
    c = ready()
    qid, _ = one_query(c)
    events = c.receive_data(h.frame(h.HEADERS, 0, 1, encode_indexed(8)), 0.0)
    for _ in range(200):
        events += c.receive_data(h.frame(h.CONTINUATION, 0, 1, b""), 0.0)
    assert [type(e) for e in events] == [ConnectionBroken]
    assert events[0].query_ids == [qid]


def test_a_body_shorter_than_its_content_length_is_a_bad_response():
    c = ready()
    qid, q = one_query(c)
    body = answer_for(q)
    head = response_block(extra=[(28, str(len(body) + 7).encode())])  # 28: content-length
    events = c.receive_data(h.frame(h.HEADERS, h.END_HEADERS, 1, head) + h.frame(h.DATA, h.END_STREAM, 1, body), 0.0)
    assert [type(e) for e in events] == [QueryFailed]
    assert "content-length" in events[0].error.detail


def test_running_out_of_stream_ids_hands_the_queued_queries_back():
    c = ready()
    c._next_stream_id = h.MAX_STREAM_ID  # the last one
    first, _ = one_query(c)
    second, _ = one_query(c, "g.example")
    assert not c.accepting
    events = c.receive_data(h.ping_frame(b"12345678", ack=False), 0.0)
    assert [(type(e), getattr(e, "unprocessed", None)) for e in events] == [(GoAwayReceived, [second])]
    assert c.outstanding == 1  # the first is still on its stream


def test_only_small_huffman_strings_and_blocks_are_cached():
    """A hostile server must not park megabytes in the decoder's caches."""
    d = Decoder()
    d.decode(encode_indexed(8) + encode_literal(31, b"x" * 5000, huffman=True))
    assert d._strings == {} and d._blocks == {}
    d.decode(encode_indexed(8) + encode_literal(31, CT, huffman=True))
    assert len(d._strings) == 1 and len(d._blocks) == 1
