"""The default answer of the test upstream, built with byte templates (no dnspython per query).

:func:`default_answer` turns a query into a response:

* header: ID, opcode, RD and CD echoed; QR and RA set; AA clear;
* the question copied as it was sent;
* class IN type A: one A ``192.0.2.1``, TTL 300; type AAAA: one AAAA ``2001:db8::1``, TTL 300;
* any other type or class: NOERROR/NODATA with an SOA in the authority section (TTL 300, MINIMUM 60);
* names at or under ``nxdomain.test``: NXDOMAIN with the SOA of ``nxdomain.test``;
* an OPT (UDP size 1232, the client's DO bit) when the query had one; EDNS version > 0 gets BADVERS;
* an unparsable query with a readable header gets FORMERR, a non-zero opcode NOTIMP; anything
  shorter than a header, or a message with QR set, gets no answer (``None``).

Answers are cached by the query's bytes after the ID, so a repeated question costs a dict
look-up and one concatenation.
"""

from __future__ import annotations

import os
import random
import struct

from dotproxy.errors import FORMERR, NOTIMP, NXDOMAIN
from dotproxy.wire import WireError, make_error, parse_query, set_id, truncate

__all__ = [
    "ANSWER_A",
    "ANSWER_AAAA",
    "ANSWER_TTL",
    "NXDOMAIN_ZONE",
    "SOA_MINIMUM",
    "default_answer",
    "garbage",
    "truncated_udp",
    "wrong_id",
]

ANSWER_A = "192.0.2.1"
ANSWER_AAAA = "2001:db8::1"
ANSWER_TTL = 300
SOA_MINIMUM = 60
NXDOMAIN_ZONE = "nxdomain.test"

_TYPE_A = 1
_TYPE_SOA = 6
_TYPE_AAAA = 28
_TYPE_OPT = 41
_CLASS_IN = 1
_BADVERS = 16
_EDNS_UDP_SIZE = 1232

_RR = struct.Struct(">HHIH")  # type, class, ttl, rdlength (after the owner name)
_COUNTS = struct.Struct(">HHHH")

_A_RR = b"\xc0\x0c" + _RR.pack(_TYPE_A, _CLASS_IN, ANSWER_TTL, 4) + bytes((192, 0, 2, 1))
_AAAA_RR = (
    b"\xc0\x0c"
    + _RR.pack(_TYPE_AAAA, _CLASS_IN, ANSWER_TTL, 16)
    + bytes.fromhex("20010db8000000000000000000000001")
)
# SOA RDATA: ns.test. hostmaster.test. 1 3600 600 86400 60
_SOA_RDATA = b"\x02ns\x04test\x00" + b"\x0ahostmaster\x04test\x00" + struct.pack(">IIIII", 1, 3600, 600, 86400, SOA_MINIMUM)
_NX_SUFFIX = b"\x08nxdomain\x04test\x00"
_OPT_RR = b"\x00" + _RR.pack(_TYPE_OPT, _EDNS_UDP_SIZE, 0, 0)
_OPT_RR_DO = b"\x00" + _RR.pack(_TYPE_OPT, _EDNS_UDP_SIZE, 0x8000, 0)

_cache: dict[bytes, bytes] = {}
_CACHE_MAX = 8192


def _soa_rr(owner_offset: int, qclass: int) -> bytes:
    return (
        bytes((0xC0 | (owner_offset >> 8), owner_offset & 0xFF))
        + _RR.pack(_TYPE_SOA, qclass, ANSWER_TTL, len(_SOA_RDATA))
        + _SOA_RDATA
    )


def _label_start(name_wire: bytes, offset: int) -> bool:
    """Whether a label of the uncompressed ``name_wire`` starts at ``offset``."""
    i = 0
    while i < offset:
        i += name_wire[i] + 1
    return i == offset


def _build(query: bytes) -> bytes | None:
    try:
        q = parse_query(query)
    except WireError:
        if len(query) >= 12 and not query[2] & 0x80:
            try:
                return make_error(query, FORMERR)
            except (WireError, ValueError):
                return None
        return None
    if q.opcode != 0:
        return make_error(query, NOTIMP)
    if q.edns is not None and q.edns.version != 0:
        return make_error(query, _BADVERS)
    qname_wire = q.qname_wire
    name_end = 12 + len(qname_wire)
    if query[12:name_end].lower() != qname_wire:
        # A compression pointer in the question: legal to parse, rude to send.
        return make_error(query, FORMERR)
    question = query[12 : name_end + 4]

    rcode = 0
    answer = b""
    authority = b""
    if qname_wire.endswith(_NX_SUFFIX) and _label_start(qname_wire, len(qname_wire) - len(_NX_SUFFIX)):
        rcode = NXDOMAIN
        authority = _soa_rr(name_end - len(_NX_SUFFIX), q.qclass)
    elif q.qclass == _CLASS_IN and q.qtype == _TYPE_A:
        answer = _A_RR
    elif q.qclass == _CLASS_IN and q.qtype == _TYPE_AAAA:
        answer = _AAAA_RR
    else:
        authority = _soa_rr(12, q.qclass)

    if q.edns is None:
        opt = b""
    else:
        opt = _OPT_RR_DO if q.edns.do else _OPT_RR
    flags = bytes(((query[2] & 0x79) | 0x80, 0x80 | (query[3] & 0x10) | rcode))
    counts = _COUNTS.pack(1, 1 if answer else 0, 1 if authority else 0, 1 if opt else 0)
    return query[:2] + flags + counts + question + answer + authority + opt


def default_answer(query: bytes) -> bytes | None:
    """The built-in answer to ``query`` (see the module docstring); ``None``: no answer."""
    tail = query[2:]
    cached = _cache.get(tail)
    if cached is not None:
        return query[:2] + cached
    response = _build(query)
    if response is not None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[tail] = response[2:]
    return response


def wrong_id(response: bytes) -> bytes:
    """``response`` with an ID that differs from its own."""
    if len(response) < 2:
        return response
    old = (response[0] << 8) | response[1]
    return set_id(response, old ^ random.randint(1, 0xFFFF)) if len(response) >= 12 else (
        bytes((response[0] ^ 0x5A, response[1])) + response[2:]
    )


def garbage() -> bytes:
    """Random bytes that are not a DNS message (1 to 64 of them)."""
    return os.urandom(random.randint(1, 64))


def truncated_udp(response: bytes) -> bytes:
    """``response`` with TC set and no records but the question (and OPT when it fits)."""
    if len(response) < 12:
        return response
    if _COUNTS.unpack_from(response, 4)[1:3] != (0, 0):
        try:
            return truncate(response, len(response) - 1)
        except (WireError, ValueError):
            pass
    return response[:2] + bytes((response[2] | 0x02, response[3])) + response[4:]
