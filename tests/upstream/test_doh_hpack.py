"""HPACK for the DoH client (dotproxy.proto.hpack_lite): RFC 7541's own examples, malformed blocks, and a
differential test against the ``hpack`` package's encoder and decoder."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotproxy.proto import hpack_lite
from dotproxy.proto.hpack_lite import Decoder, HpackError, encode_indexed, encode_integer, encode_literal

# RFC 7541 appendix C.4: requests with Huffman coding, one connection (default table of 4,096 bytes).
C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
     [(b":authority", b"www.example.com")], 57),
    ("828684be5886a8eb10649cbf",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
      (b"cache-control", b"no-cache")],
     [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
     [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"), (b":authority", b"www.example.com"),
      (b"custom-key", b"custom-value")],
     [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 164),
]

DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"

# Appendix C.6: responses with Huffman coding, a 256-byte table, entries evicted on the way.
C6 = [
    ("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8"
     "e9ae82ae43d3",
     [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOCATION)],
     [(b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private"), (b":status", b"302")], 222),
    ("4883640effc1c0bf",
     [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOCATION)],
     [(b":status", b"307"), (b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private")], 222),
    ("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b"
     "3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
     [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2), (b"location", LOCATION),
      (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)],
     [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)], 215),
]


@pytest.mark.parametrize("examples, table_size", [(C4, 4096), (C6, 256)], ids=["C.4", "C.6"])
def test_rfc7541_examples(examples, table_size):
    d = Decoder(max_table_size=table_size)
    for block, headers, table, size in examples:
        assert list(d.decode(bytes.fromhex(block))) == headers
        assert d.table() == table
        assert d.table_size == size


def test_rfc7541_examples_a_cached_block_goes_stale_when_the_table_moves():
    d = Decoder(max_table_size=256)
    d.decode(bytes.fromhex(C6[0][0]))
    refs = bytes.fromhex("c1c0bf")  # indices 65, 64, 63: nothing but references, so the block is cached
    assert list(d.decode(refs)) == [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1)]
    assert list(d.decode(refs)) == [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1)]
    for block, *_ in C6[1:]:
        d.decode(bytes.fromhex(block))
    with pytest.raises(HpackError):  # the table now holds three entries: index 65 is gone
        d.decode(refs)
    assert list(d.decode(bytes.fromhex("bebfc0"))) == [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"),
                                                        (b"date", DATE2)]


def test_block_cache_follows_the_table():
    d = Decoder()
    ref = encode_indexed(62)  # the newest dynamic entry
    insert_a = b"\x40" + hpack_lite.encode_string(b"x-a") + hpack_lite.encode_string(b"1")
    insert_b = b"\x40" + hpack_lite.encode_string(b"x-b") + hpack_lite.encode_string(b"2")
    d.decode(insert_a)
    assert d.decode(ref) == ((b"x-a", b"1"),)
    assert d.decode(ref) == ((b"x-a", b"1"),)  # served from the cache
    d.decode(insert_b)
    assert d.decode(ref) == ((b"x-b", b"2"),)  # not the stale cached answer


@pytest.mark.parametrize("value, prefix, wire", [
    (10, 5, "0a"), (1337, 5, "1f9a0a"), (42, 8, "2a"),  # RFC 7541 C.1
    (30, 5, "1e"), (31, 5, "1f00"), (127, 7, "7f00"), (128, 7, "7f01"),
])
def test_integers(value, prefix, wire):
    assert encode_integer(value, prefix).hex() == wire
    # Decoded inside a literal-without-indexing name index (4-bit prefix) is awkward; use the 7-bit string length.
    if prefix == 7:
        block = b"\x00\x01a" + encode_integer(value, 7) + b"v" * value
        assert Decoder().decode(block) == ((b"a", b"v" * value),)


@pytest.mark.parametrize("block, reason", [
    ("80", "index 0"),
    ("be", "dynamic index into an empty table"),
    ("ff80808080808001", "integer too large"),
    ("ff", "ends inside an integer"),
    ("0f", "ends inside an integer (4-bit prefix)"),
    ("00", "ends before a name"),
    ("0003ab", "name runs past the end"),
    ("000161", "ends before a value"),
    ("00016105", "value runs past the end"),
    ("88" + "3f e1 1f".replace(" ", ""), "table size update after a field"),
    ("3fe21f", "table size update above the limit"),  # 4097
    ("00016181ff", "Huffman padding longer than 7 bits"),
    ("00016181fe", "Huffman padding not all ones"),
    ("000161" + "84ffffffff", "EOS in a Huffman string"),
])
def test_malformed_blocks(block, reason):
    with pytest.raises(HpackError):
        Decoder().decode(bytes.fromhex(block))


def test_table_size_update_evicts_and_an_oversized_entry_empties_the_table():
    d = Decoder()
    d.decode(b"\x40" + hpack_lite.encode_string(b"x-a") + hpack_lite.encode_string(b"1"))
    assert d.table_size == 36
    d.decode(bytes.fromhex("3f11") + encode_indexed(2))  # size update to 48, then :method GET
    assert d.max_table_size == 48 and d.table() == [(b"x-a", b"1")]
    d.decode(bytes.fromhex("20"))  # size 0: everything goes
    assert d.table() == [] and d.table_size == 0
    d.decode(bytes.fromhex("3f11"))
    d.decode(b"\x40" + hpack_lite.encode_string(b"x-long") + hpack_lite.encode_string(b"y" * 20))  # 58 > 48
    assert d.table() == [] and d.table_size == 0


def test_header_list_limit():
    d = Decoder(max_header_list_size=100)
    with pytest.raises(HpackError):
        d.decode(encode_literal(b"n", b"x" * 40) * 2)  # 2 * (1 + 40 + 32) = 146 > 100
    assert Decoder(max_header_list_size=100).decode(encode_literal(b"n", b"x" * 40)) == ((b"n", b"x" * 40),)


@given(st.binary(max_size=64))
def test_huffman_round_trip(data):
    assert hpack_lite.huffman_decode(hpack_lite.huffman_encode(data)) == data
    assert hpack_lite.huffman_encode(data) == hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(data)


_names = st.one_of(st.sampled_from([b":status", b"content-type", b"content-length", b"date", b"server",
                                    b"cache-control", b"retry-after", b"x-custom"]),
                   st.binary(min_size=1, max_size=12).map(lambda b: b.lower()))
_values = st.one_of(st.sampled_from([b"200", b"application/dns-message", b"56", b"private", b""]),
                    st.binary(max_size=40))
_header_lists = st.lists(st.tuples(_names, _values), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_header_lists, st.booleans(), st.sampled_from([None, 0, 64, 256, 4096]),
                          st.booleans()), min_size=1, max_size=12))
def test_differential_against_the_hpack_package(blocks):
    """A connection's worth of header blocks from ``hpack.Encoder`` (indexing, Huffman, size updates, sensitive
    fields never indexed): our decoder and ``hpack.Decoder`` agree on every block and on the table."""
    enc = hpack.Encoder()
    ours = Decoder()
    theirs = hpack.Decoder()
    for headers, huffman, new_size, repeat in blocks:
        if new_size is not None:
            enc.header_table_size = new_size
        fields = [hpack.NeverIndexedHeaderTuple(n, v) if n == b"x-custom" else (n, v) for n, v in headers]
        block = enc.encode(fields, huffman=huffman)
        expected = theirs.decode(block, raw=True)
        assert list(ours.decode(block)) == expected == [(n, v) for n, v in headers]
        assert ours.table() == list(theirs.header_table.dynamic_entries)
        if repeat:  # the same bytes again: the block cache must answer as a fresh decode would
            block = enc.encode(fields, huffman=huffman)
            assert list(ours.decode(block)) == theirs.decode(block, raw=True)


@settings(max_examples=200, deadline=None)
@given(_header_lists, st.booleans())
def test_differential_our_literals_into_both_decoders(headers, huffman):
    block = b"".join(encode_literal(n, v, huffman) for n, v in headers)
    assert list(Decoder().decode(block)) == hpack.Decoder().decode(block, raw=True) == headers


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_only_hpack_error(block):
    try:
        Decoder().decode(block)
    except HpackError:
        pass
