"""The fused operations of the forwarding path: each equals the composition it replaces,
on both implementations, for valid messages, broken ones and random bytes.

``frame_query(q, id, block, keepalive=k)`` is a DNS-over-stream frame of
``set_id(pad(q, block, keepalive=k), id)`` (unpadded where pad() refuses: padding walks
the query as it arrived, as parse_query read it), and
``set_id(m, id, strip_opt=True)`` is ``strip_opt(set_id(m, id))``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import queries, responses

from dotproxy.errors import WireError

messages = st.one_of(queries(), responses())
ids = st.integers(0, 65535)
blocks = st.one_of(st.none(), st.sampled_from([1, 2, 12, 128, 468]), st.integers(1, 70000))


def _outcome(fn, *args, **kwargs):
    """The value, or the exception's type and reason/message: what a caller can tell apart."""
    try:
        return "ok", fn(*args, **kwargs)
    except WireError as e:
        return "WireError", e.reason
    except ValueError as e:
        return "ValueError", str(e)


def _frame_by_composition(wire, query: bytes, new_id: int, block, keepalive: bool) -> bytes:
    out = query
    if block is not None:
        try:
            out = wire.pad(out, block, keepalive=keepalive)
        except ValueError:  # WireError included: such a message goes unpadded
            pass
    out = wire.set_id(out, new_id)
    return struct.pack("!H", len(out)) + out


@given(data=messages, new_id=ids, block=blocks, keepalive=st.booleans())
def test_frame_query_is_the_framed_padded_query(wire, data, new_id, block, keepalive):
    frame = wire.frame_query(data, new_id, block, keepalive=keepalive)
    assert frame == _frame_by_composition(wire, data, new_id, block, keepalive)
    assert struct.unpack_from("!H", frame)[0] == len(frame) - 2
    assert frame[2:4] == struct.pack("!H", new_id)


@given(data=st.binary(max_size=300), new_id=ids, block=blocks, keepalive=st.booleans())
def test_frame_query_on_any_bytes_matches_the_other_implementation(both, data, new_id, block, keepalive):
    c, py = both
    assert _outcome(c.frame_query, data, new_id, block, keepalive=keepalive) == \
        _outcome(py.frame_query, data, new_id, block, keepalive=keepalive)


@given(data=messages, new_id=ids)
def test_set_id_with_strip_opt_is_strip_opt_of_set_id(wire, data, new_id):
    assert wire.set_id(data, new_id, strip_opt=True) == wire.strip_opt(wire.set_id(data, new_id))
    assert wire.set_id(data, new_id, strip_opt=False) == wire.set_id(data, new_id)


@given(data=st.binary(max_size=300), new_id=ids, strip=st.booleans())
def test_set_id_on_any_bytes_matches_the_other_implementation(both, data, new_id, strip):
    c, py = both
    assert _outcome(c.set_id, data, new_id, strip_opt=strip) == _outcome(py.set_id, data, new_id, strip_opt=strip)


def test_frame_query_errors(wire):
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    with pytest.raises(WireError) as e:
        wire.frame_query(query[:11], 1)
    assert e.value.reason == "short header"
    for bad_id in (-1, 65536):
        with pytest.raises(ValueError, match="out of range"):
            wire.frame_query(query, bad_id)
    with pytest.raises(ValueError, match="must be positive"):
        wire.frame_query(query, 1, 0)
    with pytest.raises(ValueError, match="too long for a stream frame"):
        wire.frame_query(query + bytes(65536), 1)  # trailing data: unpadded, and too long to frame
    assert wire.frame_query(bytearray(query), 7) == wire.frame_query(query, 7)  # any bytes-like


def test_frame_query_leaves_a_query_unpadded_where_padding_cannot_fit(wire):
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    big = query[:11] + b"\x01" + query[12:] + b"\x00\x00\x10\x00\x01\x00\x00\x00\x00" + struct.pack("!H", 65400) + bytes(65400)
    frame = wire.frame_query(big, 9, 128)  # a record of 65,400 bytes: padded to 128 it would pass 65,535
    assert frame[4:] == big[2:] and frame[2:4] == b"\x00\x09"


def test_set_id_strips_with_the_new_id_in_place(wire):
    """Found by the DoH fuzzer: a compression pointer to offset 1 (the ID's low byte) reads as the root
    name while the ID is 0 and as a broken label once the client's ID is back: stripping the OPT walks
    the message as the client will see it, so this answer is malformed, whatever it was upstream."""
    message = (bytes.fromhex("0000 8180 0001 0001 0000 0001") + b"\x02f0\x07example\x00" + bytes.fromhex("0001 0001")
               + b"\xc0\x01" + bytes.fromhex("0001 0001 0000012c 0004 c0000201")  # owner: pointer to offset 1
               + bytes.fromhex("00 0029 1000 00000000 0000"))  # OPT
    wire.scan_response(message)  # valid as it came
    assert wire.set_id(message, 0, strip_opt=True) == wire.strip_opt(message)
    with pytest.raises(WireError):
        wire.set_id(message, 0x22FF, strip_opt=True)
    assert wire.set_id(message, 0x22FF)[:2] == b"\x22\xff"  # without stripping nothing is walked


@given(data=messages, code=st.sampled_from([0, 3, 8, 10, 11, 12, 15, 65001]))
def test_edns_option_is_the_first_option_with_that_code(wire, data, code):
    try:
        edns = (wire.parse_query(data) if not data[2] & 0x80 else wire.scan_response(data)).edns
    except WireError:
        return
    if edns is None:
        return
    first = edns.option(code)  # before .options is read: the C core reads the message itself
    assert first == next((value for c, value in edns.options if c == code), None)
    assert edns.option(code) == first  # and after


def test_frame_query_pads_the_query_as_it_arrived(wire):
    """A name that points into the header (offset 0: the ID's high byte) reads differently under
    another ID: padding walks the query as the client sent it, the ID is replaced afterwards."""
    query = (bytes.fromhex("0000 0100 0001 0000 0000 0001") + b"\x03www\x07example\x00" + bytes.fromhex("0001 0001")
             + b"\xc0\x00" + bytes.fromhex("0001 0001 00000000 0004 c0000201"))  # owner: a pointer to offset 0
    wire.parse_query(query)  # valid as it came: with ID 0, offset 0 reads as the root
    frame = wire.frame_query(query, 0x1234, 128)
    assert len(frame) == 2 + 128
    assert frame == struct.pack("!H", 128) + wire.set_id(wire.pad(query, 128), 0x1234)
