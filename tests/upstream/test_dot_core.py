"""The sans-IO DNS-over-stream client core (dotproxy.proto.dot.StreamClient), fed bytes directly.

No sockets and no loop: queries in, framed bytes out; framed answers in, events out.
"""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.message
import dns.rcode
import pytest
from upstream_support import OPT_KEEPALIVE, OPT_PADDING, check_answer, has_opt, make_query

from dotproxy import wire
from dotproxy.errors import SERVFAIL, WireError
from dotproxy.proto.dot import (
    AnswerReceived,
    KeepaliveReceived,
    LateAnswerDropped,
    StreamClient,
    UnexpectedAnswerDropped,
)
from dotproxy.testing import default_answer


def frames(data: bytes) -> list[bytes]:
    """Split a stream of 2-octet-length framed messages."""
    out = []
    off = 0
    while off < len(data):
        (length,) = struct.unpack_from("!H", data, off)
        out.append(data[off + 2 : off + 2 + length])
        off += 2 + length
    assert off == len(data), "a partial frame was written"
    return out


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def serve(sent: bytes) -> dict[int, bytes]:
    """What a server would answer to every framed query in ``sent``: wire ID -> answer bytes."""
    out = {}
    for q in frames(sent):
        out[wire.parse_query(q).id] = default_answer(q)
    return out


def answers(events) -> list[AnswerReceived]:
    return [e for e in events if type(e) is AnswerReceived]


# --------------------------------------------------------------------------- sending


def test_send_frames_pads_and_assigns_ids():
    c = StreamClient()
    qs = [make_query(f"n{i}.example", id=0x4242) for i in range(3)]
    ids = [c.send_query(q, 1.0) for q in qs]
    assert len(set(ids)) == 3  # one connection-unique ID each, whatever the client IDs
    assert c.outstanding == 3
    out = c.data_to_send()
    assert c.data_to_send() == b""  # pulled once
    sent = frames(out)
    assert [wire.parse_query(m).id for m in sent] == ids
    for m, q in zip(sent, qs):
        assert len(m) % 128 == 0  # RFC 8467 block padding
        parsed = wire.parse_query(m)
        assert parsed.qname_wire == wire.parse_query(q).qname_wire
        codes = [code for code, _ in parsed.edns.options]
        assert OPT_PADDING in codes and OPT_KEEPALIVE in codes
        assert dict(parsed.edns.options)[OPT_KEEPALIVE] == b""  # the client form: no timeout


def test_no_padding_no_keepalive_sends_the_query_as_is():
    c = StreamClient(pad_block=None, keepalive=False)
    q = make_query("plain.example", id=7)
    qid = c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    assert m == wire.set_id(q, qid)
    # The answer keeps whatever the server sent (no OPT was added, none is stripped).
    ans = default_answer(m)
    (ev,) = c.receive_data(frame(ans), 0.1)
    assert ev.data == wire.set_id(ans, 7)


def test_padding_custom_block():
    c = StreamClient(pad_block=468, keepalive=False)
    c.send_query(make_query("x.example"), 0.0)
    (m,) = frames(c.data_to_send())
    assert len(m) % 468 == 0
    assert OPT_KEEPALIVE not in [code for code, _ in wire.parse_query(m).edns.options]


def test_malformed_query_raises_wire_error_and_sends_nothing():
    c = StreamClient()
    for bad in (b"", b"\x00" * 5, make_query()[:-3], bytes(dns.message.make_response(
            dns.message.make_query("x.example", "A")).to_wire())):
        with pytest.raises(WireError):
            c.send_query(bad, 0.0)
    assert c.outstanding == 0
    assert c.data_to_send() == b""


def test_all_queries_of_one_pull_go_in_one_write():
    c = StreamClient()
    for i in range(50):
        c.send_query(make_query(f"b{i}.example"), 0.0)
    assert len(frames(c.data_to_send())) == 50


def test_frames_to_send_gives_one_framed_message_per_item_probes_included():
    """What the connection hands a TLS transport's writelines (see StreamConnection.write_pending)."""
    c = StreamClient()
    c.send_probe(0.0)
    for i in range(3):
        c.send_query(make_query(f"r{i}.example"), 0.0)
    out = c.frames_to_send()
    assert len(out) == 4 and all(frames(item) == [item[2:]] for item in out)
    assert c.frames_to_send() == [] and c.data_to_send() == b""  # pulled once


# --------------------------------------------------------------------------- answers


def test_answer_restores_the_client_id_and_strips_the_added_opt():
    c = StreamClient()
    q = make_query("www.example", id=0xBEEF)
    qid = c.send_query(q, 10.0)
    (m,) = frames(c.data_to_send())
    ans = default_answer(m)
    assert has_opt(ans)  # the server echoes EDNS because we added it
    (ev,) = c.receive_data(frame(ans), 10.25)
    assert type(ev) is AnswerReceived and ev.query_id == qid
    assert ev.rtt == pytest.approx(0.25)
    check_answer(ev.data, q)
    assert not has_opt(ev.data)  # the client sent no EDNS: it gets none back
    assert c.outstanding == 0 and c.answered == 1


def test_answer_keeps_opt_when_the_client_sent_one():
    c = StreamClient()
    q = make_query("www.example", id=1, edns=True, do=True)
    c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    (ev,) = c.receive_data(frame(default_answer(m)), 0.0)
    check_answer(ev.data, q)
    assert has_opt(ev.data)


def test_answers_out_of_order_match_their_queries():
    c = StreamClient()
    qs = {}
    for i in range(200):
        q = make_query(f"q{i}.example", "A" if i % 2 else "AAAA", id=i % 3)  # client IDs collide on purpose
        qs[c.send_query(q, 0.0)] = q
    replies = serve(c.data_to_send())
    order = list(replies)
    random.Random(7).shuffle(order)
    got = {}
    for wid in order:
        for ev in c.receive_data(frame(replies[wid]), 1.0):
            assert type(ev) is AnswerReceived
            got[ev.query_id] = ev.data
    assert got.keys() == qs.keys()
    for qid, data in got.items():
        check_answer(data, qs[qid])


def test_framing_split_at_every_byte():
    c = StreamClient()
    qs = {}
    for i in range(3):
        q = make_query(f"split{i}.example", id=100 + i)
        qs[c.send_query(q, 0.0)] = q
    replies = serve(c.data_to_send())
    stream = b"".join(frame(r) for r in replies.values())
    # Every split point of the concatenated stream into two reads.
    for cut in range(len(stream) + 1):
        fresh = StreamClient()
        fresh_qs = {}
        for q in qs.values():
            fresh_qs[fresh.send_query(q, 0.0)] = q
        fresh.data_to_send()
        evs = fresh.receive_data(stream[:cut], 0.0) + fresh.receive_data(stream[cut:], 0.0)
        assert [e.query_id for e in answers(evs)] == list(replies), cut
        for e in evs:
            check_answer(e.data, fresh_qs[e.query_id])
    # And one byte per read.
    evs = []
    for b in stream:
        evs += c.receive_data(bytes([b]), 0.0)
    assert sorted(e.query_id for e in answers(evs)) == sorted(qs)
    assert len(evs) == 3


def test_zero_copy_input_in_random_chunks_matches_receive_data():
    # get_buffer/buffer_updated (uvloop writes TLS records straight into the core's buffer):
    # random read sizes, random room asked for, a view held across the next get_buffer.
    rng = random.Random(7)
    c = StreamClient()
    qs = {}
    for i in range(40):
        q = make_query(f"zc{i}.example", id=i)
        qs[c.send_query(q, 0.0)] = q
    replies = serve(c.data_to_send())
    stream = b"".join(frame(r) for r in replies.values())
    got = []
    off = 0
    held = None
    while off < len(stream):
        size = rng.choice([1, 2, 3, 50, 300, 4096])
        room = c.get_buffer(rng.choice([-1, 0, 1, size, 65536]))
        n = min(size, len(room), len(stream) - off)
        room[:n] = stream[off : off + n]
        off += n
        got += c.buffer_updated(n, 1.0)
        held = room  # a reader may keep its view: the next get_buffer must not resize under it
    del held
    assert [e.query_id for e in answers(got)] == list(replies)
    for e in answers(got):
        check_answer(e.data, qs[e.query_id])
    assert c.outstanding == 0


def test_buffer_updated_beyond_the_room_given_is_refused():
    c = StreamClient()
    room = c.get_buffer(10)
    with pytest.raises(ValueError):
        c.buffer_updated(len(room) + 1, 0.0)
    with pytest.raises(ValueError):
        c.buffer_updated(-1, 0.0)


def test_last_received_is_the_time_of_the_last_read():
    c = StreamClient()
    assert c.last_received is None
    c.send_query(make_query(), 1.0)
    c.receive_data(b"\x00", 2.5)  # even a partial frame is a sign of life
    assert c.last_received == 2.5


# --------------------------------------------------------------------------- IDs


def test_ids_skip_those_in_use_and_wrap():
    c = StreamClient(first_id=0xFFFE)
    a = c.send_query(make_query("a.example"), 0.0)
    b = c.send_query(make_query("b.example"), 0.0)
    d = c.send_query(make_query("d.example"), 0.0)
    assert (a, b, d) == (0xFFFE, 0xFFFF, 0)
    # Answer b: its ID becomes free again; a and d are still in use.
    replies = serve(c.data_to_send())
    (ev,) = c.receive_data(frame(replies[b]), 0.0)
    assert ev.query_id == b
    q = make_query("fill.example")
    parsed = wire.parse_query(q)
    fill = [c.send_query(q, 0.0, parsed) for _ in range(0xFFFD)]
    assert fill == list(range(1, 0xFFFE))
    # Wrapped around: 0xFFFE (a) is in use and skipped, 0xFFFF (b, answered) is free, then 0 (d) is in use.
    assert c.send_query(q, 0.0, parsed) == 0xFFFF
    assert c.outstanding == 0x10000
    with pytest.raises(OverflowError):
        c.send_query(q, 0.0, parsed)


def test_a_probe_id_is_held_until_its_answer_and_every_id_is_free_after_connection_lost():
    c = StreamClient(first_id=7)
    probe = c.send_probe(0.0)
    assert probe == 7
    c._next_id = 7
    assert c.send_query(make_query("p.example"), 0.0) == 8  # the probe's ID is skipped
    probe_answer = default_answer(frames(c.data_to_send())[0])
    assert c.receive_data(frame(probe_answer), 0.0) == []  # dropped quietly
    c._next_id = 7
    assert c.send_query(make_query("q.example"), 0.0) == 7  # free again
    c.connection_lost()
    c._next_id = 7
    assert c.send_query(make_query("r.example"), 0.0) == 7
    c._next_id = 8
    assert c.send_query(make_query("s.example"), 0.0) == 8


def test_orphaned_id_is_never_reused_until_its_late_answer():
    """Cancel a query, then wrap the whole ID space: its ID is skipped; the late answer is dropped."""
    c = StreamClient(first_id=5)
    q = make_query("cancelled.example", id=1)
    orphan = c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    late = default_answer(m)
    c.cancel(orphan)
    assert c.outstanding == 0 and c.orphans == 1
    # Fill every other ID: 65535 queries in flight, wrapping past 0xFFFF.
    q2 = make_query("other.example")
    parsed = wire.parse_query(q2)
    ids = set()
    for _ in range(0xFFFF):
        ids.add(c.send_query(q2, 0.0, parsed))
    assert orphan not in ids and len(ids) == 0xFFFF
    assert set(c.pending_ids()) == ids
    with pytest.raises(OverflowError):
        c.send_query(q2, 0.0, parsed)
    c.data_to_send()
    # The late answer to the cancelled query arrives: dropped, counted, and it frees its ID.
    evs = c.receive_data(frame(late), 1.0)
    assert evs == [LateAnswerDropped(orphan)]
    assert c.late_answers == 1 and c.orphans == 0 and c.unexpected_answers == 0
    assert c.send_query(q2, 0.0, parsed) == orphan  # the only free ID


def test_late_answer_cannot_be_taken_for_a_newer_query():
    c = StreamClient(first_id=9)
    old = c.send_query(make_query("old.example", id=11), 0.0)
    (m_old,) = frames(c.data_to_send())
    c.cancel(old)
    c.cancel(old)  # twice: harmless
    new_q = make_query("new.example", id=22)
    new = c.send_query(new_q, 0.0)
    assert new != old
    (m_new,) = frames(c.data_to_send())
    evs = c.receive_data(frame(default_answer(m_old)), 0.1)
    assert evs == [LateAnswerDropped(old)]
    (ev,) = c.receive_data(frame(default_answer(m_new)), 0.2)
    assert ev.query_id == new
    check_answer(ev.data, new_q)


def test_cancel_of_unknown_id_is_a_no_op():
    c = StreamClient()
    c.cancel(1234)
    assert c.orphans == 0


def test_connection_lost_returns_unanswered_and_forgets_orphans():
    c = StreamClient()
    a = c.send_query(make_query("a.example"), 0.0)
    b = c.send_query(make_query("b.example"), 0.0)
    c.cancel(a)
    c.receive_data(b"\x00\x10abc", 0.0)  # a partial frame
    assert sorted(c.connection_lost()) == [b]
    assert c.outstanding == 0 and c.orphans == 0
    assert c.data_to_send() == b""


# --------------------------------------------------------------------------- unexpected answers


def test_unknown_id_is_dropped_and_counted():
    c = StreamClient(first_id=100)
    q = make_query("a.example", id=5)
    qid = c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    ans = default_answer(m)
    evs = c.receive_data(frame(wire.set_id(ans, 4321)), 0.0)
    assert evs == [UnexpectedAnswerDropped(4321, "no query has this ID")]
    assert c.unexpected_answers == 1 and c.outstanding == 1
    (ev,) = c.receive_data(frame(ans), 0.0)  # the real one still gets through
    assert ev.query_id == qid
    check_answer(ev.data, q)


def test_answer_to_another_question_is_dropped_and_the_query_keeps_waiting():
    c = StreamClient()
    q = make_query("asked.example", id=77)
    qid = c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    other = default_answer(wire.set_id(make_query("other.example", edns=True), qid))
    other_type = default_answer(wire.set_id(make_query("asked.example", "AAAA", edns=True), qid))
    for wrong in (other, other_type):
        (ev,) = c.receive_data(frame(wrong), 0.0)
        assert type(ev) is UnexpectedAnswerDropped and ev.wire_id == qid
        assert "question" in ev.reason
    assert c.unexpected_answers == 2 and c.outstanding == 1
    (ev,) = c.receive_data(frame(default_answer(m)), 0.0)
    check_answer(ev.data, q)


def test_question_match_is_case_insensitive():
    c = StreamClient()
    q = make_query("MiXeD.Example", id=3)
    c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    ans = default_answer(m)
    upper = ans.replace(b"\x05mixed", b"\x05MIXED").replace(b"\x05MiXeD", b"\x05MIXED")
    (ev,) = c.receive_data(frame(upper), 0.0)
    assert type(ev) is AnswerReceived


def test_no_question_noerror_is_dropped_but_an_error_without_question_is_delivered():
    c = StreamClient(pad_block=None, keepalive=False)
    q = make_query("a.example", id=9)
    qid = c.send_query(q, 0.0)
    c.data_to_send()
    header_only_noerror = struct.pack("!HHHHHH", qid, 0x8180, 0, 0, 0, 0)
    (ev,) = c.receive_data(frame(header_only_noerror), 0.0)
    assert type(ev) is UnexpectedAnswerDropped
    header_only_servfail = struct.pack("!HHHHHH", qid, 0x8180 | SERVFAIL, 0, 0, 0, 0)
    (ev,) = c.receive_data(frame(header_only_servfail), 0.0)
    assert type(ev) is AnswerReceived
    r = dns.message.from_wire(ev.data)
    assert r.id == 9 and r.rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("junk", [b"", b"\x00", b"\xff" * 11, b"\x12\x34\x81\x80" + b"\x00\x01" + b"\x00" * 6 + b"\x07"])
def test_malformed_answers_are_dropped_and_the_stream_stays_in_sync(junk):
    c = StreamClient()
    q = make_query("a.example", id=1)
    c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    evs = c.receive_data(frame(junk) + frame(default_answer(m)), 0.0)
    assert type(evs[0]) is UnexpectedAnswerDropped and evs[0].wire_id is None
    assert type(evs[1]) is AnswerReceived
    check_answer(evs[1].data, q)
    assert c.unexpected_answers == 1


def test_a_query_sent_as_an_answer_is_dropped():
    c = StreamClient()
    qid = c.send_query(make_query("a.example"), 0.0)
    c.data_to_send()
    (ev,) = c.receive_data(frame(make_query("a.example", id=qid)), 0.0)  # QR clear
    assert type(ev) is UnexpectedAnswerDropped
    assert c.outstanding == 1


# --------------------------------------------------------------------------- keepalive


def _with_keepalive(answer: bytes, units: int) -> bytes:
    m = dns.message.from_wire(answer)
    m.use_edns(0, options=[dns.edns.GenericOption(OPT_KEEPALIVE, units.to_bytes(2, "big"))])
    return m.to_wire()


def test_keepalive_event():
    c = StreamClient()
    q = make_query("k.example", id=2)
    c.send_query(q, 0.0)
    (m,) = frames(c.data_to_send())
    evs = c.receive_data(frame(_with_keepalive(default_answer(m), 75)), 0.0)
    assert KeepaliveReceived(7.5) in evs
    (ans,) = answers(evs)
    check_answer(ans.data, q)
    assert not has_opt(ans.data)


def test_keepalive_zero_means_close_when_idle():
    c = StreamClient()
    c.send_query(make_query("k.example"), 0.0)
    (m,) = frames(c.data_to_send())
    evs = c.receive_data(frame(_with_keepalive(default_answer(m), 0)), 0.0)
    assert KeepaliveReceived(0.0) in evs


def test_keepalive_ignored_when_not_asked():
    c = StreamClient(keepalive=False)
    c.send_query(make_query("k.example"), 0.0)
    (m,) = frames(c.data_to_send())
    evs = c.receive_data(frame(_with_keepalive(default_answer(m), 75)), 0.0)
    assert [type(e) for e in evs] == [AnswerReceived]


def test_answer_valid_only_with_our_wire_id_is_dropped_not_raised():
    """A compression pointer into the header (offset 1, the ID's low byte) reads as the root name while the ID is
    the wire ID 0, so scan_response accepts the answer; with the client's ID back, stripping the OPT walks the name
    and raised WireError out of receive_data (the same bug the DoH fuzz harness found in the DoH core)."""
    c = StreamClient()
    q = make_query("f0.example", id=0x22FF)
    wire_id = c.send_query(q, 0.0)
    (sent,) = frames(c.data_to_send())
    assert wire_id & 0xFF < 64  # the pointer reads a root label (0) or a short label while the ID is ours
    body = bytearray(default_answer(sent))
    at = body.index(b"\xc0\x0c", 12)
    body[at : at + 2] = b"\xc0\x01"
    wire.scan_response(bytes(body))
    events = c.receive_data(frame(bytes(body)), 1.0)
    assert [type(e) for e in events] == [UnexpectedAnswerDropped] and "malformed" in events[0].reason
    assert c.outstanding == 1  # still waiting for a real answer


def test_keepalive_event_comes_once_per_value():
    """Servers repeat their timeout in every answer: the event comes on the first and on a change."""
    c = StreamClient()
    got = []
    for units in (75, 75, 75, 20, 20):
        c.send_query(make_query("k.example"), 0.0)
        (m,) = frames(c.data_to_send())
        got += [e.timeout for e in c.receive_data(frame(_with_keepalive(default_answer(m), units)), 0.0)
                if isinstance(e, KeepaliveReceived)]
    assert got == [7.5, 2.0]
