"""Hypothesis strategies that build valid DNS messages with dnspython."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import strategies as st

import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA

IN = dns.rdataclass.IN

# Letters of both cases, digits, the bytes dnspython escapes with a backslash and
# a few that it writes as \DDD.
_ALPHABET = b"abcxyzABCXYZ019-_" + b'"().;\\@$' + b" \x00\x7f\x80\xff\x1f~!"

labels = st.one_of(
    st.binary(min_size=1, max_size=10).map(lambda b: bytes(_ALPHABET[x % len(_ALPHABET)] for x in b)),
    st.sampled_from([b"www", b"Example", b"COM", b"org", b"a", b"xn--bcher-kva", b"_tcp"]),
    st.binary(min_size=1, max_size=63),
)


def _fits(ls) -> bool:
    return sum(len(l) + 1 for l in ls) + 1 <= 255


names = st.lists(labels, min_size=0, max_size=8).filter(_fits).map(lambda ls: dns.name.Name(ls + [b""]))

# A longer name sometimes: near the 255-octet limit.
long_names = st.lists(st.binary(min_size=50, max_size=63), min_size=3, max_size=4).filter(_fits).map(
    lambda ls: dns.name.Name(ls + [b""])
)

any_names = st.one_of(names, names, names, long_names)

_SPECIAL_OPTIONS = {8, 10, 15, 18, 22, 23, 24, 25}  # dnspython parses these itself

qtypes = st.one_of(
    st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 46, 48, 64, 65, 255, 257]),
    st.integers(0, 65535).filter(lambda t: t != 41),
)
qclasses = st.one_of(st.just(1), st.just(1), st.just(1), st.sampled_from([3, 4, 254, 255]), st.integers(0, 65535))

generic_options = st.builds(
    lambda c, d: dns.edns.GenericOption(c, d),
    st.integers(0, 65535).filter(lambda c: c not in _SPECIAL_OPTIONS),
    st.binary(max_size=40),
)
cookie_options = st.builds(
    lambda client, server: dns.edns.GenericOption(10, client + server),
    st.binary(min_size=8, max_size=8),
    st.one_of(st.just(b""), st.binary(min_size=8, max_size=32)),
)
padding_options = st.builds(lambda n: dns.edns.GenericOption(12, b"\x00" * n), st.integers(0, 100))
options = st.lists(st.one_of(generic_options, cookie_options, padding_options), max_size=4)

edns_params = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "version": st.one_of(st.just(0), st.integers(0, 255)),
            "payload": st.one_of(st.sampled_from([512, 1232, 4096, 65535]), st.integers(0, 65535)),
            "do": st.booleans(),
            "options": options,
        }
    ),
)

ttls = st.one_of(
    st.integers(0, 86400),
    st.sampled_from([0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0)))


@st.composite
def rdatas(draw, rdtype, pool):
    if rdtype == 1:
        return dns.rdtypes.IN.A.A(IN, 1, draw(ipv4))
    if rdtype == 28:
        b = draw(st.binary(min_size=16, max_size=16))
        import ipaddress

        return dns.rdtypes.IN.AAAA.AAAA(IN, 28, str(ipaddress.IPv6Address(b)))
    if rdtype == 5:
        return dns.rdtypes.ANY.CNAME.CNAME(IN, 5, draw(pool))
    if rdtype == 2:
        return dns.rdtypes.ANY.NS.NS(IN, 2, draw(pool))
    if rdtype == 15:
        return dns.rdtypes.ANY.MX.MX(IN, 15, draw(st.integers(0, 65535)), draw(pool))
    if rdtype == 16:
        strings = draw(st.lists(st.binary(max_size=30), min_size=1, max_size=3))
        return dns.rdtypes.ANY.TXT.TXT(IN, 16, strings)
    if rdtype == 6:
        return dns.rdtypes.ANY.SOA.SOA(
            IN,
            6,
            draw(pool),
            draw(pool),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            draw(ttls),
        )
    raise AssertionError(rdtype)


rdtypes = st.sampled_from([1, 28, 5, 2, 15, 16, 6])


@st.composite
def records(draw, pool, rdtype_strategy=rdtypes):
    """An RRset holding one record (so every record keeps its own TTL)."""
    owner = draw(pool)
    rdtype = draw(rdtype_strategy)
    rd = draw(rdatas(rdtype, pool))
    rs = dns.rrset.RRset(owner, IN, rdtype)
    rs.update_ttl(0)
    rs.add(rd)
    rs.ttl = draw(ttls)
    return rs


def _apply_edns(msg, params):
    if params is not None:
        msg.use_edns(params["version"], dns.flags.DO if params["do"] else 0, params["payload"], options=params["options"])
    else:
        msg.use_edns(None)


@st.composite
def queries(draw, allow_records=True):
    """Wire bytes of a valid query (QR clear, QDCOUNT 1)."""
    name = draw(any_names)
    q = dns.message.make_query(name, draw(qtypes), draw(qclasses), use_edns=None)
    q.id = draw(st.integers(0, 65535))
    flags = 0
    for f, p in ((dns.flags.RD, st.booleans()), (dns.flags.CD, st.booleans()), (dns.flags.AD, st.booleans())):
        if draw(p):
            flags |= f
    q.flags = flags
    q.set_opcode(draw(st.sampled_from([0, 0, 0, 1, 2, 4, 6, 15])))
    _apply_edns(q, draw(edns_params))
    if allow_records and draw(st.integers(0, 5)) == 0:
        pool = st.one_of(st.just(name), names)
        for section in (q.answer, q.authority, q.additional):
            section.extend(draw(st.lists(records(pool), max_size=2)))
    return q.to_wire(max_size=65535)


@st.composite
def responses(draw):
    """Wire bytes of a valid, compressed response (QR set, QDCOUNT 0 or 1)."""
    qname = draw(any_names)
    q = dns.message.make_query(qname, draw(qtypes), draw(st.one_of(st.just(1), qclasses)), use_edns=None)
    q.id = draw(st.integers(0, 65535))
    r = dns.message.make_response(q)
    edns = draw(edns_params)
    _apply_edns(r, edns)
    if draw(st.integers(0, 9)) == 0:
        r.question = []
    extended = [16, 23] if edns is not None else []
    r.set_rcode(draw(st.sampled_from([0, 0, 0, 3, 3, 2, 5, 1, 4] + extended)))
    for f in (dns.flags.AA, dns.flags.TC, dns.flags.RA, dns.flags.AD, dns.flags.CD, dns.flags.RD):
        if draw(st.booleans()):
            r.flags |= f
        else:
            r.flags &= ~f
    # A small pool of owners so that compression has work to do.
    extra = draw(st.lists(names, max_size=3))
    pool = st.sampled_from([qname] + extra + [dns.name.Name([b"Sub"]) + qname if len(qname.to_wire()) < 250 else qname])
    r.answer.extend(draw(st.lists(records(pool), max_size=6)))
    r.authority.extend(draw(st.lists(records(pool), max_size=4)))
    if draw(st.booleans()):
        r.authority.extend(draw(st.lists(records(pool, st.just(6)), min_size=1, max_size=2)))
    r.additional.extend(draw(st.lists(records(pool), max_size=3)))
    return r.to_wire(max_size=65535)


#: Byte-level mutations of a valid message (weights by repetition); "id pointer" also points a name
#: at the ID bytes and sets an ID that reads as a label there.
MUTATIONS = ("set", "set", "flip", "insert", "delete", "pointer", "count", "length")


def mutate(draw, data: bytes, ops=MUTATIONS, max_count: int = 4) -> bytes:
    """``data`` with one to four mutations drawn from ``ops`` (section counts set to 0..``max_count``)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(ops))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "pointer" and len(data) > 2:
            data[pos : pos + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, len(data) + 2)))
        elif op == "id pointer" and len(data) > 14:
            data[pos : pos + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, 1)))
            data[0:2] = draw(st.sampled_from([b"\x00\x00", b"\x01\x00", b"\x00\x01", b"\x00\xc0"]))
        elif op == "count" and len(data) >= 12:
            i = draw(st.sampled_from([4, 6, 8, 10]))
            data[i : i + 2] = struct.pack("!H", draw(st.integers(0, max_count)))
        elif op == "length" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFF]))
    return bytes(data)
