"""Hypothesis: both implementations against dnspython, and against each other
on prefixes, mutations and random bytes."""

from __future__ import annotations

import struct

import pytest
from wire_strategies import mutate, queries, responses
from wire_support import (
    check_padded,
    expected_aged,
    expected_cache_key,
    expected_error,
    expected_stripped,
    expected_truncated,
    from_wire,
    oracle_query,
    oracle_response,
    REASONS,
    outcome,
    query_dict,
    response_dict,
    walk,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from dotproxy.errors import WireError

messages = st.one_of(queries(), responses())


# --------------------------------------------------------------------------
# Every field against dnspython
# --------------------------------------------------------------------------


@given(data=queries())
def test_parse_query_vs_dnspython(wire, data):
    assert query_dict(wire.parse_query(data)) == oracle_query(data)
    with pytest.raises(WireError) as ei:
        wire.scan_response(data)
    assert ei.value.reason == "not a response"


@given(data=responses())
def test_scan_response_vs_dnspython(wire, data):
    assert response_dict(wire.scan_response(data)) == oracle_response(data)
    with pytest.raises(WireError) as ei:
        wire.parse_query(data)
    assert ei.value.reason == "not a query"


# --------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------


@given(data=messages, seconds=st.one_of(st.integers(0, 100000), st.integers(0, 2**32 + 5)), new_id=st.integers(0, 65535))
def test_age_ttls_and_set_id(wire, data, seconds, new_id):
    out = wire.age_ttls(data, seconds)
    assert out == expected_aged(data, seconds)
    if seconds == 0 and all(rr.ttl <= 2**31 - 1 for rr in walk(data).rrs):
        assert out == data
    assert wire.set_id(data, new_id) == struct.pack("!H", new_id) + data[2:]


@settings(max_examples=50)
@given(data=messages, seconds=st.integers(-(2**40), -1))
def test_age_ttls_negative(wire, data, seconds):
    with pytest.raises(ValueError):
        wire.age_ttls(data, seconds)


@given(data=queries())
def test_cache_key(wire, data):
    key = wire.cache_key(data)
    assert key == expected_cache_key(data)
    assert wire.cache_key(wire.parse_query(data)) == key
    # the ID and RD never matter
    flipped = bytearray(wire.set_id(data, (struct.unpack_from("!H", data)[0] + 1) & 0xFFFF))
    flipped[2] ^= 0x01  # RD
    assert wire.cache_key(bytes(flipped)) == key


eds = st.one_of(st.none(), st.tuples(st.integers(0, 65535), st.text(st.characters(codec="utf-8"), max_size=30)))


@given(data=queries(), rcode=st.integers(0, 15), ede=eds)
def test_make_error(wire, data, rcode, ede):
    out = wire.make_error(data, rcode, ede=ede)
    assert out == expected_error(data, rcode, ede)
    m = from_wire(out)
    assert m.rcode() == rcode and m.id == struct.unpack_from("!H", data)[0]


@given(data=queries(), rcode=st.integers(16, 4095), ede=eds)
def test_make_error_extended(wire, data, rcode, ede):
    has_opt = walk(data).opt() is not None
    if has_opt:
        out = wire.make_error(data, rcode, ede=ede)
        assert out == expected_error(data, rcode, ede)
        assert from_wire(out).rcode() == rcode
    else:
        with pytest.raises(ValueError):
            wire.make_error(data, rcode, ede=ede)


@given(data=responses(), slack=st.integers(-700, 20), absolute=st.integers(12, 700), use_abs=st.booleans())
def test_truncate(wire, data, slack, absolute, use_abs):
    size = absolute if use_abs else max(12, len(data) + slack)
    out = wire.truncate(data, size)
    assert out == expected_truncated(data, size)
    assert len(out) <= size
    from_wire(out)  # dnspython can read it


@given(data=queries(), block=st.one_of(st.sampled_from([1, 2, 128, 468]), st.integers(1, 600)), keepalive=st.booleans())
def test_pad(wire, data, block, keepalive):
    if keepalive:
        check_padded(data, wire.pad(data, block, keepalive=True), block, keepalive=True)
    else:
        check_padded(data, wire.pad(data, block), block)


@given(data=messages)
def test_strip_opt(wire, data):
    out = wire.strip_opt(data)
    assert out == expected_stripped(data)
    assert from_wire(out).edns == -1


# --------------------------------------------------------------------------
# Prefixes: a proper prefix of a valid message is never valid
# --------------------------------------------------------------------------


def calls(mod):
    return [
        ("parse_query", mod.parse_query, ()),
        ("scan_response", mod.scan_response, ()),
        ("cache_key", mod.cache_key, ()),
        ("set_id", mod.set_id, (0x4242,)),
        ("age_ttls", mod.age_ttls, (100,)),
        ("make_error", mod.make_error, (2,)),
        ("make_error+ede", lambda d: mod.make_error(d, 2, ede=(23, "network error")), ()),
        ("truncate", mod.truncate, (60,)),
        ("truncate", mod.truncate, (512,)),
        ("pad", mod.pad, (128,)),
        ("pad+keepalive", lambda d: mod.pad(d, 7, keepalive=True), ()),
        ("strip_opt", mod.strip_opt, ()),
    ]


def agree(c, py, data):
    """Both implementations give the same value or the same WireError reason for
    every function, and raise nothing else."""
    results = {}
    for (label, fc, args), (_, fp, _) in zip(calls(c), calls(py)):
        oc = outcome(fc, data, *args)
        op = outcome(fp, data, *args)
        assert oc == op, f"{label}({data.hex()}): c={oc!r} py={op!r}"
        if oc[0] == "WireError":
            assert oc[1] in REASONS, f"{label}({data.hex()}): reason {oc[1]!r} is not one of the spec's"
        results[label] = oc
    return results


@given(data=messages)
def test_every_prefix_is_rejected(both, data):
    c, py = both
    scanner = "scan_response" if data[2] & 0x80 else "parse_query"
    for n in range(len(data)):
        prefix = data[:n]
        oc = outcome(getattr(c, scanner), prefix)
        op = outcome(getattr(py, scanner), prefix)
        assert oc[0] == "WireError", f"{scanner}({prefix.hex()}) accepted a proper prefix"
        assert oc == op, f"{scanner}({prefix.hex()}): c={oc!r} py={op!r}"
        assert oc[1] in REASONS
        if n < 12:
            assert oc[1] == "short header"
        for mod in (c, py):
            assert outcome(mod.age_ttls, prefix, 1)[0] == "WireError", f"age_ttls({prefix.hex()}) accepted a proper prefix"


@given(data=messages, cuts=st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
def test_prefix_agreement_all_functions(both, data, cuts):
    c, py = both
    for cut in cuts:
        agree(c, py, data[: cut % len(data)])


# --------------------------------------------------------------------------
# Random and mutated input: same outcome in both, only WireError
# --------------------------------------------------------------------------


@given(data=st.binary(max_size=400))
def test_random_bytes_agree(both, data):
    agree(*both, data)


@given(
    head=st.tuples(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    body=st.binary(max_size=200),
)
def test_random_body_agree(both, head, body):
    """Random bytes behind a header with small counts get further into the parsers."""
    agree(*both, struct.pack("!HHHHHH", *head) + body)


@st.composite
def mutated(draw):
    return mutate(draw, draw(messages))


@settings(max_examples=400)
@given(data=mutated())
def test_mutated_agree(both, data):
    agree(*both, data)


@given(data=mutated())
def test_mutated_accepted_queries_are_consistent(both, data):
    """Whatever parse_query accepts, cache_key agrees with it."""
    c, py = both
    for mod in (c, py):
        try:
            q = mod.parse_query(data)
        except WireError:
            continue
        d = query_dict(q)
        flags = (1 if d["edns"] and d["edns"]["do"] else 0) | (2 if d["cd"] else 0)
        assert mod.cache_key(data) == d["qname_wire"] + struct.pack("!HHB", d["qtype"], d["qclass"], flags)
        assert d["qname_wire"] == d["qname_wire"].lower()
        assert len(d["qname_wire"]) <= 255 and d["qname_wire"].endswith(b"\x00")
