"""match_answer(): the DoT answer path in one call, on both implementations.

It must equal the composition it replaces in ``proto/dot.py``: ``scan_response``, the
question compared as ``proto/answers.answers()`` compares it, then
``set_id(..., strip_opt=...)`` — the same bytes, the same ``WireError`` reason, the same
``None`` — and report the answer's edns-tcp-keepalive as ``info.edns.option(11)`` would.
Checked against that composition and, for answers dnspython builds, against values
worked out here without the code under test.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import dns.edns
import dns.message
import dns.name
import dns.rrset
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_golden import GOLDEN_RESPONSES
from wire_strategies import any_names, mutate, names, qclasses, qtypes, records
from wire_support import REASONS, expected_stripped, options_of, walk

from dotproxy import _wire_py
from dotproxy.errors import WireError

ids = st.integers(0, 65535)
CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "corpus")


# ------------------------------------------------------------------ the composition


def _answers(info, query) -> bool:
    """proto/answers.answers(), written out: the question repeated, or an error without one."""
    if info.qdcount:
        return (info.qname_wire, info.qtype, info.qclass) == (query.qname_wire, query.qtype, query.qclass)
    return info.rcode != 0


def composed(mod, message, start, end, query, strip):
    """What StreamClient._answer did before: ``(outcome, keepalive)``."""
    data = bytes(message[start:end])
    try:
        info = mod.scan_response(data)
        if not _answers(info, query):
            return ("none", None), -1
        out = mod.set_id(data, query.id, strip_opt=strip)
    except WireError as e:
        return ("WireError", e.reason), -1
    keepalive = -1
    if info.edns is not None:
        value = info.edns.option(11)
        if value is not None and len(value) == 2:
            keepalive = struct.unpack("!H", value)[0]
    return ("ok", out), keepalive


def matched(mod, message, start, end, query, strip, match=None):
    """match_answer's ``(outcome, keepalive)``, with a match object that held a stale value."""
    if match is None:
        match = mod.AnswerMatch()
    match.keepalive = 12345  # whatever the last answer left: every call must reset it
    try:
        out = mod.match_answer(message, start, end, query, strip, match)
    except WireError as e:
        assert e.reason in REASONS, e.reason
        return ("WireError", e.reason), match.keepalive
    if out is None:
        return ("none", None), match.keepalive
    assert type(out) is bytes
    return ("ok", out), match.keepalive


def check(mod, message, query, strip, start=0, end=None):
    """match_answer equals the composition; returns its outcome."""
    end = len(message) if end is None else end
    got = matched(mod, message, start, end, query, strip)
    assert got == composed(mod, message, start, end, query, strip)
    return got


def make_query(mod, qname_wire: bytes, qtype=1, qclass=1, qid=0x4242):
    """A Query of ``mod`` asking this question (any case: parse_query lowers it)."""
    wire = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname_wire + struct.pack("!HH", qtype, qclass)
    return mod.parse_query(wire)


def query_of_answer(mod, data: bytes, qid: int):
    """A query whose question is the answer's own (read by the twin), or a fixed one."""
    try:
        info = _wire_py.scan_response(data)
    except WireError:
        info = None
    if info is None or not info.qdcount:
        return make_query(mod, b"\x03www\x07example\x03com\x00", qid=qid)
    return make_query(mod, info.qname_wire, info.qtype, info.qclass, qid=qid)


# ------------------------------------------------------------------ answers built with dnspython


def _recase(name: dns.name.Name, flips: int) -> dns.name.Name:
    """The name with the case of some ASCII letters flipped (as a 0x20-randomising resolver echoes it)."""
    out, i = [], 0
    for label in name.labels:
        b = bytearray(label)
        for j, c in enumerate(b):
            if (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) and flips >> (i % 30) & 1:
                b[j] = c ^ 0x20
            i += 1
        out.append(bytes(b))
    return dns.name.Name(out)


keepalive_options = st.one_of(
    st.integers(0, 65535).map(lambda v: dns.edns.GenericOption(11, struct.pack("!H", v))),
    st.sampled_from([b"", b"\x01", b"\x00\x01\x02"]).map(lambda d: dns.edns.GenericOption(11, d)),  # not 2 bytes
)
other_options = st.one_of(
    st.builds(lambda n: dns.edns.GenericOption(12, bytes(n)), st.integers(0, 60)),  # padding
    st.builds(lambda d: dns.edns.GenericOption(10, d), st.binary(min_size=8, max_size=24)),  # cookie
    st.builds(lambda c, d: dns.edns.GenericOption(c, d), st.sampled_from([3, 65001]), st.binary(max_size=8)),
)
answer_options = st.lists(st.one_of(keepalive_options, other_options), max_size=4)

# A record after the OPT: dnspython always writes the OPT last, so it is appended by hand.
TSIG_LIKE = b"\x03key\x00" + struct.pack("!HHIH", 250, 255, 0, 6) + b"\x00\x01\x02\x03\x04\x05"


@st.composite
def answer_cases(draw):
    """``(query wire, answer wire, answers)``: an answer dnspython writes, with whether it
    answers the query (the question repeated in any case, or an error without one)."""
    name = draw(any_names)
    qtype = draw(qtypes)
    qclass = draw(st.one_of(st.just(1), st.just(1), qclasses))
    q = dns.message.make_query(name, qtype, qclass, use_edns=0 if draw(st.booleans()) else None)
    q.id = draw(ids)
    r = dns.message.make_response(q)
    r.use_edns(None)
    answers = True
    kind = draw(st.sampled_from(["same", "same", "same", "recased", "other name", "other type", "other class",
                                 "no question"]))
    if kind == "recased":
        r.question = [dns.rrset.RRset(_recase(name, draw(st.integers(1, 2**30))), qclass, qtype)]
    elif kind == "other name":
        other = draw(names)
        answers = other.to_wire().lower() == name.to_wire().lower()
        r.question = [dns.rrset.RRset(other, qclass, qtype)]
    elif kind == "other type":
        other = draw(qtypes)
        answers = other == qtype
        r.question = [dns.rrset.RRset(name, qclass, other)]
    elif kind == "other class":
        other = draw(qclasses)
        answers = other == qclass
        r.question = [dns.rrset.RRset(name, other, qtype)]
    elif kind == "no question":
        r.question = []
    edns = draw(st.booleans())
    if edns:
        r.use_edns(0, options=draw(answer_options))
    rcode = draw(st.sampled_from([0, 0, 0, 3, 3, 2, 5, 1, 4] + ([16, 23] if edns else [])))
    r.set_rcode(rcode)
    if kind == "no question":
        answers = rcode != 0
    pool = st.sampled_from([name, _recase(name, 0x5555)] + draw(st.lists(names, max_size=2)))
    r.answer.extend(draw(st.lists(records(pool), max_size=4)))
    if rcode == 3 or draw(st.booleans()):
        r.authority.extend(draw(st.lists(records(pool, st.just(6)), min_size=1, max_size=2)))
    r.additional.extend(draw(st.lists(records(pool), max_size=2)))
    wire = r.to_wire(max_size=65535)
    if draw(st.integers(0, 4)) == 0:
        arcount = struct.unpack_from("!H", wire, 10)[0]
        wire = wire[:10] + struct.pack("!H", arcount + 1) + wire[12:] + TSIG_LIKE
    return q.to_wire(), wire, answers


def first_keepalive(answer: bytes) -> int:
    """The spec's keepalive, from wire_support's own walker: the first option 11, if 2 bytes."""
    for code, value in options_of(answer) or []:
        if code == 11:
            return struct.unpack("!H", value)[0] if len(value) == 2 else -1
    return -1


@given(case=answer_cases(), new_id=ids, strip=st.booleans())
def test_dnspython_answers(wire, case, new_id, strip):
    query_wire, answer, answers = case
    query = wire.parse_query(struct.pack("!H", new_id) + query_wire[2:])
    got = check(wire, answer, query, strip)
    if not answers:
        assert got == (("none", None), -1)
        return
    with_id = struct.pack("!H", new_id) + answer[2:]
    assert got == (("ok", expected_stripped(with_id) if strip else with_id), first_keepalive(answer))


@given(case=answer_cases(), new_id=ids, strip=st.booleans(),
       before=st.binary(max_size=40), after=st.binary(max_size=40), as_bytearray=st.booleans())
def test_inside_a_larger_buffer(wire, case, new_id, strip, before, after, as_bytearray):
    """The read buffer holds other frames around the answer: only [start:end] is read."""
    query_wire, answer, _answers_it = case
    query = wire.parse_query(struct.pack("!H", new_id) + query_wire[2:])
    buf = before + answer + after
    if as_bytearray:
        buf = bytearray(buf)
    got = check(wire, buf, query, strip, len(before), len(before) + len(answer))
    assert got == matched(wire, answer, 0, len(answer), query, strip)


@settings(max_examples=100)
@given(case=answer_cases(), new_id=ids, strip=st.booleans())
def test_one_match_object_for_many_answers(wire, case, new_id, strip):
    """The keepalive of an answer never leaks into the next call's."""
    query_wire, answer, _answers_it = case
    query = wire.parse_query(struct.pack("!H", new_id) + query_wire[2:])
    match = wire.AnswerMatch()
    with_keepalive = _answer_with_options(dns.edns.GenericOption(11, b"\x01\x2c"))
    q300 = make_query(wire, b"\x03www\x07example\x03com\x00", qid=new_id)
    assert wire.match_answer(with_keepalive, 0, len(with_keepalive), q300, strip, match) is not None
    assert match.keepalive == 300
    expected = composed(wire, answer, 0, len(answer), query, strip)
    got = matched(wire, answer, 0, len(answer), query, strip, match)
    assert got == expected


# ------------------------------------------------------------------ the golden corpus


def _golden():
    folder = os.path.join(CORPUS, "golden")
    return sorted(f for f in os.listdir(folder) if f.startswith("response"))


@pytest.mark.parametrize("name", _golden())
@pytest.mark.parametrize("strip", [False, True])
def test_golden_responses(wire, name, strip):
    with open(os.path.join(CORPUS, "golden", name), "rb") as f:
        answer = f.read()
    info = wire.scan_response(answer)
    query = query_of_answer(wire, answer, 0xBEEF)
    got = check(wire, answer, query, strip)
    if info.qdcount or info.rcode:
        assert got[0][0] == "ok" and got[0][1][:2] == b"\xbe\xef"
    other = make_query(wire, b"\x07example\x03net\x00", qid=1)
    assert check(wire, answer, other, strip)[0][0] == ("ok" if not info.qdcount and info.rcode else "none")


@pytest.mark.parametrize("name", sorted(GOLDEN_RESPONSES))
@pytest.mark.parametrize("strip", [False, True])
def test_golden_responses_of_test_golden(wire, name, strip):
    answer = GOLDEN_RESPONSES[name]
    info = wire.scan_response(answer)
    got = check(wire, answer, query_of_answer(wire, answer, 0x0102), strip)
    if info.qdcount or info.rcode:
        with_id = b"\x01\x02" + answer[2:]
        assert got == (("ok", expected_stripped(with_id) if strip else with_id), first_keepalive(answer))
    else:
        assert got == (("none", None), -1)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(CORPUS, "malformed"))))
def test_malformed_corpus(wire, name):
    with open(os.path.join(CORPUS, "malformed", name), "rb") as f:
        data = f.read()
    query = query_of_answer(wire, data, 7)
    for strip in (False, True):
        got = check(wire, data, query, strip)
        if name.startswith("response--") or name.startswith("any--"):
            assert got[0][0] == "WireError" and got[1] == -1


# ------------------------------------------------------------------ random bytes and mutations


#: The differential suite's mutations, plus names pointing into the ID (match_answer's slow path).
_MUTATIONS = ("set", "flip", "insert", "delete", "pointer", "id pointer", "count", "length")


@st.composite
def mutated_answers(draw):
    """``(query wire, mutated answer)``: the query asks the unmutated answer's question."""
    query_wire, answer, _answers_it = draw(answer_cases())
    return query_wire, mutate(draw, answer, _MUTATIONS, max_count=3)


def agree(c, py, data: bytes, qid: int, strip: bool, query_wire: bytes | None = None):
    """Both implementations give what their compositions give, and the same as each other."""
    results = []
    for mod in (c, py):
        query = mod.parse_query(query_wire) if query_wire is not None else query_of_answer(mod, data, qid)
        results.append(check(mod, data, query, strip))
    assert results[0] == results[1], data.hex()
    return results[0]


@settings(max_examples=400)
@given(case=mutated_answers(), qid=ids, strip=st.booleans())
def test_mutated_answers_agree(both, case, qid, strip):
    query_wire, data = case
    agree(*both, data, qid, strip, struct.pack("!H", qid) + query_wire[2:])
    agree(*both, data, qid, strip)  # asked the question the mutated answer has, if any


@st.composite
def answers_pointing_into_the_id(draw):
    """``(query wire, answer)``: a dnspython answer whose question name or one owner name
    became a compression pointer to offset 0 or 1, under an ID that reads as the root there
    (the answer is valid as it comes, unless that name was pointed at by another)."""
    query_wire, answer, _answers_it = draw(answer_cases())
    w = walk(answer)
    spans = [(start, end - 4) for start, end in w.questions]  # question names (type and class after)
    spans += [(rr.start, rr.owner_end) for rr in w.rrs if rr.rtype != 41]
    assume(spans)
    start, end = draw(st.sampled_from(spans[-3:]))
    target = draw(st.integers(0, 1))
    other = draw(st.integers(0, 255))
    new_id = struct.pack("!BB", 0, other) if target == 0 else struct.pack("!BB", other, 0)
    return query_wire, new_id + answer[2:start] + struct.pack("!H", 0xC000 | target) + answer[end:]


@settings(max_examples=300)
@given(case=answers_pointing_into_the_id(), qid=ids, strip=st.booleans())
def test_answers_pointing_into_the_id_agree(both, case, qid, strip):
    """The one case where set_id(strip_opt=True) walks the answer differently: the C core must
    take set_id's path, not the layout of its own walk."""
    query_wire, data = case
    agree(*both, data, qid, strip, struct.pack("!H", qid) + query_wire[2:])
    agree(*both, data, qid, strip)  # its own question: it reaches set_id


@settings(max_examples=300)
@given(data=st.binary(max_size=300), qid=ids, strip=st.booleans())
def test_random_bytes_agree(both, data, qid, strip):
    agree(*both, data, qid, strip)


@settings(max_examples=300)
@given(
    head=st.tuples(ids, st.integers(0x8000, 0xFFFF), st.integers(0, 2), st.integers(0, 3), st.integers(0, 3),
                   st.integers(0, 3)),
    body=st.binary(max_size=200),
    qid=ids,
    strip=st.booleans(),
)
def test_random_body_agree(both, head, body, qid, strip):
    """Random bytes behind a response header with small counts get further into the walk."""
    agree(*both, struct.pack("!HHHHHH", *head) + body, qid, strip)


# ------------------------------------------------------------------ hand-made answers

EXAMPLE = b"\x03www\x07example\x03com\x00"
A_RECORD = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])


def _opt(*options: tuple, rcode_high=0) -> bytes:
    rdata = b"".join(struct.pack("!HH", c, len(d)) + d for c, d in options)
    return b"\x00" + struct.pack("!HHIH", 41, 1232, rcode_high << 24, len(rdata)) + rdata


def _answer_with_options(*options, qid=0x1234) -> bytes:
    rdata = b"".join(struct.pack("!HH", o.otype, len(o.data)) + o.data for o in options)
    return (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 1) + EXAMPLE + b"\x00\x01\x00\x01" + A_RECORD
            + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(rdata)) + rdata)


def _pointer_answer(target: int, *, qid=0x0000, opt=True, tsig=False) -> bytes:
    """An answer whose A record's owner is a compression pointer to ``target`` (0 or 1: the
    ID), valid while the ID there reads as the root name."""
    ar = int(opt) + int(tsig)
    return (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, ar) + b"\x02f0" + EXAMPLE[4:] + b"\x00\x01\x00\x01"
            + struct.pack("!H", 0xC000 | target) + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
            + (_opt() if opt else b"") + (TSIG_LIKE if tsig else b""))


F0_EXAMPLE = b"\x02f0" + EXAMPLE[4:]


@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize("opt,tsig", [(True, False), (False, False), (True, True)])
def test_pointer_into_the_id(wire, target, opt, tsig):
    """A name pointing at the ID reads as the root while the ID is 0 and as something else once the
    client's ID is in place: with strip_opt the answer is walked again as the client sees it."""
    answer = _pointer_answer(target, opt=opt, tsig=tsig)
    wire.scan_response(answer)  # valid as it came
    # An ID with 0 at the target still reads as the root: walked again, the answer passes.
    keeps = 0x0037 if target == 0 else 0x3700
    for new_id in (0, keeps):
        query = make_query(wire, F0_EXAMPLE, qid=new_id)
        stripped = check(wire, answer, query, True)
        with_id = struct.pack("!H", new_id) + answer[2:]
        assert stripped == (("ok", expected_stripped(with_id)), -1)
        assert check(wire, answer, query, False) == (("ok", with_id), -1)
    # An ID that turns the target into a pointer that goes nowhere: only the strip walks it, and
    # then it is malformed, with or without an OPT to strip.
    breaks = (0xFF22, 0xC000) if target == 0 else (0x22FF, 0x00C0)
    for new_id in breaks:
        query = make_query(wire, F0_EXAMPLE, qid=new_id)
        assert check(wire, answer, query, False) == (("ok", struct.pack("!H", new_id) + answer[2:]), -1)
        assert check(wire, answer, query, True) == (("WireError", "bad compression pointer"), -1)
    # Any other ID: whatever the walk again makes of it, the composition's outcome.
    for new_id in (0x0101, 0x0500, 0x0005, 0x3F3F, 0x4000, 0x8080, 0xFFFF):
        check(wire, answer, make_query(wire, F0_EXAMPLE, qid=new_id), True)


def test_pointer_into_the_id_from_the_question(wire):
    """The question itself may be the pointer (to offset 1: the root while the low ID byte is 0)."""
    answer = struct.pack("!HHHHHH", 0x0100, 0x8183, 1, 0, 0, 1) + b"\xc0\x01\x00\x01\x00\x01" + _opt()
    assert wire.scan_response(answer).qname_wire == b"\x00"
    stripped = answer[2:10] + b"\x00\x00" + answer[12:-11]
    query = make_query(wire, b"\x00", qid=0x01FF)  # offset 1: a pointer to 0x3F81
    assert check(wire, answer, query, False) == (("ok", b"\x01\xff" + answer[2:]), -1)
    assert check(wire, answer, query, True) == (("WireError", "bad compression pointer"), -1)
    query = make_query(wire, b"\x00", qid=0x0105)  # offset 1: a 5-octet label, then ANCOUNT's 0 ends it
    assert check(wire, answer, query, True) == (("ok", b"\x01\x05" + stripped), -1)
    query = make_query(wire, b"\x00", qid=0x0900)
    assert check(wire, answer, query, True) == (("ok", b"\x09\x00" + stripped), -1)


def test_pointer_into_the_id_inside_an_soa_is_not_walked_again(wire):
    """set_id's strip skips RDATA: an SOA's MNAME pointing at the ID does not break the answer."""
    soa = b"\xc0\x01\x00" + struct.pack("!IIIII", 1, 2, 3, 4, 60)  # MNAME -> offset 1 (the root while 0), RNAME root
    answer = (struct.pack("!HHHHHH", 0x0000, 0x8183, 1, 0, 1, 1) + EXAMPLE + b"\x00\x01\x00\x01"
              + b"\xc0\x10" + struct.pack("!HHIH", 6, 1, 900, len(soa)) + soa + _opt())
    assert wire.scan_response(answer).min_ttl == 60
    query = make_query(wire, EXAMPLE, qid=0x22FF)
    with_id = b"\x22\xff" + answer[2:]
    assert check(wire, answer, query, True) == (("ok", with_id[:10] + b"\x00\x00" + with_id[12:-11]), -1)


def test_hostile_answers(wire):
    query = make_query(wire, EXAMPLE, qid=0x0A0B)
    header = struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 0, 1, 0)
    question = EXAMPLE + b"\x00\x01\x00\x01"
    cases = {
        "bad SOA": header + question + b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 900, 21) + b"\x00\x00" + bytes(19),
        "trailing data": struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + question + A_RECORD + b"\x00",
        "QDCOUNT above 1": struct.pack("!HHHHHH", 0x1234, 0x8180, 2, 0, 0, 0) + question * 2,
        "not a response": struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question,
        "short header": b"\x12\x34\x81\x80",
        "bad OPT": struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 0, 0, 1) + question  # an option past the RDATA
        + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 5) + b"\x00\x0b\x00\x02\x00",
        "bad compression pointer": struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + question + b"\xc0\x30"
        + A_RECORD[2:],
        "record runs past the end": struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + question + A_RECORD[:-1],
    }
    for reason, answer in cases.items():
        for strip in (False, True):
            assert check(wire, answer, query, strip) == (("WireError", reason), -1), reason


def test_keepalive_values(wire):
    q = make_query(wire, EXAMPLE, qid=0x5555)
    cases = [
        ([(11, b"\x01\x2c")], 300),
        ([(11, b"\x00\x00")], 0),
        ([(11, b"\xff\xff")], 65535),
        ([(12, bytes(20)), (11, b"\x00\x64")], 100),
        ([(11, b"")], -1),  # a client's request form: no value
        ([(11, b"\x00\x01\x02")], -1),
        ([(11, b""), (11, b"\x00\x64")], -1),  # the first one counts, as Edns.option(11) reads it
        ([(11, b"\x00\x64"), (11, b"\x00\x65")], 100),
        ([(10, bytes(16))], -1),
        ([], -1),
    ]
    for options, expected in cases:
        answer = (struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 1) + EXAMPLE + b"\x00\x01\x00\x01" + A_RECORD
                  + _opt(*options))
        for strip in (False, True):
            assert check(wire, answer, q, strip)[1] == expected, options
        # Behind a TSIG too: the OPT stays in, the keepalive is still read.
        signed = answer[:10] + b"\x00\x02" + answer[12:] + TSIG_LIKE
        assert check(wire, signed, q, True) == (("ok", b"\x55\x55" + signed[2:]), expected)
    plain = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + EXAMPLE + b"\x00\x01\x00\x01" + A_RECORD
    assert check(wire, plain, q, True) == (("ok", b"\x55\x55" + plain[2:]), -1)


def test_which_answers_answer(wire):
    question = EXAMPLE + b"\x00\x01\x00\x01"
    q = make_query(wire, b"\x03WwW\x07EXAMPLE\x03com\x00", qid=0x0102)
    assert q.qname_wire == EXAMPLE

    def answer(flags, qd, body, ar=0):
        return struct.pack("!HHHHHH", 0x1234, flags, qd, 0, 0, ar) + body

    cases = [
        (answer(0x8180, 1, b"\x03WWW\x07ExAmPlE\x03COM\x00\x00\x01\x00\x01"), True),  # any case
        (answer(0x8180, 1, question), True),
        (answer(0x8180, 1, EXAMPLE + b"\x00\x1c\x00\x01"), False),  # AAAA
        (answer(0x8180, 1, EXAMPLE + b"\x00\x01\x00\x03"), False),  # CH
        (answer(0x8180, 1, b"\x03www\x07example\x03net\x00\x00\x01\x00\x01"), False),
        (answer(0x8180, 1, b"\x02ww\x07example\x03com\x00\x00\x01\x00\x01"), False),  # shorter
        (answer(0x8180, 1, b"\x03www\x07example\x03com\x02uk\x00\x00\x01\x00\x01"), False),  # longer
        (answer(0x8180, 0, b""), False),  # NOERROR without the question
        (answer(0x8181, 0, b""), True),  # FORMERR without it
        (answer(0x8185, 0, b""), True),  # REFUSED
        (answer(0x8180, 0, _opt(rcode_high=1), ar=1), True),  # BADVERS (16): extended by the OPT
        (answer(0x8180, 0, _opt(rcode_high=0), ar=1), False),
    ]
    for data, answers in cases:
        for strip in (False, True):
            got = check(wire, data, q, strip)
            assert (got[0][0] == "ok") is answers and (got[0][0] == "none") is (not answers), data.hex()
            if answers:
                expected = b"\x01\x02" + data[2:]
                if strip and data[11] == 1:
                    expected = expected[:10] + b"\x00\x00" + expected[12:-11]
                assert got[0][1] == expected


# ------------------------------------------------------------------ arguments


def test_bounds_and_types(wire):
    answer = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + EXAMPLE + b"\x00\x01\x00\x01" + A_RECORD
    q = make_query(wire, EXAMPLE, qid=9)
    m = wire.AnswerMatch()
    assert m.keepalive == -1
    buf = bytearray(b"\xff" * 5 + answer + b"\xee" * 3)
    assert wire.match_answer(buf, 5, 5 + len(answer), q, False, m) == b"\x00\x09" + answer[2:]
    for start, end in ((-1, len(answer)), (0, len(answer) + 1), (3, 2), (len(buf) + 1, len(buf) + 1)):
        m.keepalive = 7
        with pytest.raises(ValueError):
            wire.match_answer(answer, start, end, q, False, m)
        assert m.keepalive == -1
    with pytest.raises(WireError) as e:
        wire.match_answer(buf, 5, 5, q, False, m)  # empty: nothing but a short header
    assert e.value.reason == "short header"
    with pytest.raises(WireError) as e:
        wire.match_answer(buf, 0, len(buf), q, False, m)  # garbage around it
    assert e.value.reason in REASONS
    for bad in (memoryview(answer), answer.hex(), None, 5):
        with pytest.raises(TypeError):
            wire.match_answer(bad, 0, len(answer), q, False, m)
    with pytest.raises(TypeError):
        wire.match_answer(answer, 0, len(answer), None, False, m)
    with pytest.raises(TypeError):
        wire.match_answer(answer, 0, len(answer), q, False, None)
    with pytest.raises(TypeError):
        wire.match_answer(answer, 0.0, len(answer), q, False, m)
    with pytest.raises(ValueError, match="parse_query"):
        wire.match_answer(answer, 0, len(answer), wire.Query(), False, m)
    with pytest.raises(TypeError):
        wire.AnswerMatch(1)
    assert repr(wire.AnswerMatch()) == "AnswerMatch(keepalive=-1)"


def test_the_other_implementations_objects_are_refused(both):
    c, py = both
    answer = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + EXAMPLE + b"\x00\x01\x00\x01" + A_RECORD
    for mod, other in ((c, py), (py, c)):
        with pytest.raises(TypeError):
            mod.match_answer(answer, 0, len(answer), make_query(other, EXAMPLE), False, mod.AnswerMatch())
        with pytest.raises(TypeError):
            mod.match_answer(answer, 0, len(answer), make_query(mod, EXAMPLE), False, other.AnswerMatch())


# ------------------------------------------------------------------ set_id and frame_query, cpdef


def test_set_id_and_frame_query_take_their_flags_by_position_or_keyword(wire):
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    answer = _pointer_answer(1, qid=0)
    assert wire.set_id(answer, 0x0900, True) == wire.set_id(answer, 0x0900, strip_opt=True) == \
        wire.strip_opt(wire.set_id(answer, 0x0900))
    assert wire.set_id(answer, 5, False) == wire.set_id(answer, 5) == b"\x00\x05" + answer[2:]
    assert wire.frame_query(query, 9, 128, True) == wire.frame_query(query, 9, 128, keepalive=True)
    assert wire.frame_query(query, 9, 128, True) != wire.frame_query(query, 9, 128)
    assert wire.frame_query(query, 9, pad_block=None, keepalive=True) == wire.frame_query(query, 9)
    assert wire.frame_query(query=query, id=9) == struct.pack("!H", len(query)) + b"\x00\x09" + query[2:]
    with pytest.raises(TypeError):
        wire.set_id(answer, 5, True, True)
    with pytest.raises(TypeError):
        wire.frame_query(query, 9, 128, True, 1)


PROBE = '''
from dotproxy._wire cimport AnswerMatch, Query, frame_query, match_answer, parse_query, set_id


def run(bytes answer, bytes query_wire, bint strip):
    cdef Query query = parse_query(query_wire)
    cdef AnswerMatch match = AnswerMatch()
    out = match_answer(answer, 0, len(answer), query, strip, match)
    return (out, match.keepalive, set_id(answer, 7), set_id(answer, 7, True),
            frame_query(query_wire, 9), frame_query(query_wire, 9, 128, True))
'''


def test_a_compiled_module_calls_them_as_c_functions(tmp_path, src_dir):
    """What proto/dot.py compiled will do: cimport them from _wire.pxd and call them in C."""
    pytest.importorskip("Cython")
    import dotproxy._wire as c

    (tmp_path / "cimport_probe.pyx").write_text(PROBE)
    (tmp_path / "setup.py").write_text(
        "from setuptools import Extension, setup\nfrom Cython.Build import cythonize\n"
        f"setup(ext_modules=cythonize([Extension('cimport_probe', ['cimport_probe.pyx'])], include_path=[{src_dir!r}],"
        " compiler_directives={'language_level': '3'}))\n"
    )
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    generated = (tmp_path / "cimport_probe.c").read_text()
    for name in ("match_answer", "set_id", "frame_query", "parse_query"):
        assert f"__pyx_f_8dotproxy_5_wire_{name}(" in generated, f"{name} is not called as a C function"
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    answer = _answer_with_options(dns.edns.GenericOption(11, b"\x00\x64"))
    code = f"import cimport_probe; print(cimport_probe.run({answer!r}, {query!r}, True))"
    path = (str(tmp_path), src_dir, os.environ.get("PYTHONPATH", ""))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    env.pop("DOTPROXY_PURE_PYTHON", None)
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env=env)
    assert ran.returncode == 0, ran.stderr
    match = c.AnswerMatch()
    expected = (c.match_answer(answer, 0, len(answer), c.parse_query(query), True, match), match.keepalive,
                c.set_id(answer, 7), c.set_id(answer, 7, strip_opt=True), c.frame_query(query, 9),
                c.frame_query(query, 9, 128, keepalive=True))
    assert expected[0] == b"\x12\x34" + answer[2:10] + b"\x00\x00" + answer[12:-17] and expected[1] == 100
    assert ran.stdout.strip() == repr(expected)
