"""Golden messages built with dnspython: every field and every transform."""

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
import dns.renderer
import dns.rrset
import pytest
from wire_support import (
    REASONS,
    OPT,
    check_padded,
    expected_stripped,
    expected_aged,
    expected_cache_key,
    expected_error,
    expected_truncated,
    from_wire,
    options_of,
    oracle_query,
    oracle_response,
    query_dict,
    response_dict,
    walk,
)

from dotproxy.errors import WireError

# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------

ESCAPED_NAME = dns.name.Name([b"a.b", b"x y", b"\x00\x7f\xff", b'"()\\;@$', b"Q~!", b"com", b""])
LONGEST_NAME = dns.name.Name([b"a" * 63, b"B" * 63, b"c" * 63, b"D" * 61, b""])  # 255 octets
assert len(LONGEST_NAME.to_wire()) == 255


def query(name, rdtype="A", *, id=0x1234, edns=None, do=False, payload=1232, options=None, flags=None, opcode=None, rdclass="IN"):
    if edns is None:
        assert not do and options is None
        q = dns.message.make_query(name, rdtype, rdclass, use_edns=False)
    else:
        q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, want_dnssec=do, payload=payload, options=options)
    q.id = id
    if flags is not None:
        q.flags = flags
    if opcode is not None:
        q.set_opcode(opcode)
    return q


def rr(name, ttl, rdtype, *texts):
    return dns.rrset.from_text(name, ttl, "IN", rdtype, *texts)


def one_per_record(rrset):
    """Split an RRset into one-record RRsets (dnspython would otherwise give all
    records the set's TTL)."""
    return [dns.rrset.from_rdata(rrset.name, rrset.ttl, rd) for rd in rrset]


def response(q, *, answer=(), authority=(), additional=(), rcode=0, aa=False, ra=True, ad=False, tc=False, compress=True, do=None):
    r = dns.message.make_response(q)
    if do is not None:
        r.use_edns(0, dns.flags.DO if do else 0, 1232)
    r.set_rcode(rcode)
    for bit, on in ((dns.flags.AA, aa), (dns.flags.RA, ra), (dns.flags.AD, ad), (dns.flags.TC, tc)):
        r.flags = (r.flags | bit) if on else (r.flags & ~bit)
    r.answer.extend(answer)
    r.authority.extend(authority)
    r.additional.extend(additional)
    if compress:
        return r.to_wire(max_size=65535)
    # no compression: render every name uncompressed
    assert r.edns < 0, "the uncompressed builder does not do EDNS"
    rend = dns.renderer.Renderer(r.id, r.flags, 65535)
    rend.compress = None  # render every name in full
    for rq in r.question:
        rend.add_question(rq.name, rq.rdtype, rq.rdclass)
    for sec, rrsets in ((dns.renderer.ANSWER, r.answer), (dns.renderer.AUTHORITY, r.authority), (dns.renderer.ADDITIONAL, r.additional)):
        for rs in rrsets:
            rend.add_rrset(sec, rs)
    rend.write_header()
    return rend.get_wire()


def soa(name="example.com.", ttl=900, minimum=300):
    return rr(name, ttl, "SOA", f"ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 {minimum}")


EX = "www.example.com."

# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------

GOLDEN_QUERIES = {
    "a": query(EX),
    "aaaa_mixed_case": query("WwW.ExAmPlE.CoM.", "AAAA", id=0),
    "root_ns": query(".", "NS", id=65535),
    "escaped_bytes": query(ESCAPED_NAME, "TXT"),
    "longest_name": query(LONGEST_NAME, "A"),
    "edns_do_cookie": query(EX, "A", edns=0, do=True, payload=4096, options=[dns.edns.GenericOption(10, bytes(range(8)))]),
    "edns_no_do": query(EX, "MX", edns=0, payload=512),
    "edns_version_1_options": query(
        "Example.ORG.",
        "SOA",
        edns=1,
        payload=65535,
        options=[dns.edns.GenericOption(3, b""), dns.edns.GenericOption(65001, b"\x01\x02"), dns.edns.GenericOption(12, b"\x00" * 7)],
    ),
    "cd_ad_no_rd": query(EX, "DS", flags=dns.flags.CD | dns.flags.AD),
    "all_flags_clear": query(EX, "A", flags=0),
    "class_chaos": query("version.bind.", "TXT", rdclass="CH"),
    "qtype_any": query(EX, "ANY"),
    "qtype_unknown": query(EX, 65280),
}


def _notify():
    q = query("example.com.", "SOA", opcode=dns.opcode.NOTIFY, flags=dns.flags.AA)
    q.answer.append(soa())
    return q


GOLDEN_QUERIES["notify_with_answer"] = _notify()
QUERY_WIRES = {k: v.to_wire() for k, v in GOLDEN_QUERIES.items()}


@pytest.mark.parametrize("name", sorted(QUERY_WIRES))
def test_parse_query_golden(wire, name):
    data = QUERY_WIRES[name]
    got = query_dict(wire.parse_query(data))
    assert got == oracle_query(data)


def test_parse_query_field_values(wire):
    """A few expected values spelled out, so the oracle itself is checked."""
    q = wire.parse_query(QUERY_WIRES["aaaa_mixed_case"])
    assert (q.id, q.qname, q.qtype, q.qclass, q.opcode, q.rd, q.cd, q.ad) == (0, "www.example.com", 28, 1, 0, True, False, False)
    assert q.qname_wire == b"\x03www\x07example\x03com\x00"
    assert q.edns is None
    root = wire.parse_query(QUERY_WIRES["root_ns"])
    assert (root.qname, root.qname_wire, root.id, root.qtype) == (".", b"\x00", 65535, 2)
    esc = wire.parse_query(QUERY_WIRES["escaped_bytes"])
    assert esc.qname == 'a\\.b.x\\032y.\\000\\127\\255.\\"\\(\\)\\\\\\;\\@\\$.q~!.com'
    assert esc.qname_wire == ESCAPED_NAME.to_wire().lower()
    e = wire.parse_query(QUERY_WIRES["edns_do_cookie"]).edns
    assert (e.udp_size, e.do, e.version) == (4096, True, 0)
    assert [(c, bytes(d)) for c, d in e.options] == [(10, bytes(range(8)))]
    e1 = wire.parse_query(QUERY_WIRES["edns_version_1_options"]).edns
    assert (e1.udp_size, e1.do, e1.version) == (65535, False, 1)
    assert [(c, bytes(d)) for c, d in e1.options] == [(3, b""), (65001, b"\x01\x02"), (12, b"\x00" * 7)]
    cd = wire.parse_query(QUERY_WIRES["cd_ad_no_rd"])
    assert (cd.rd, cd.cd, cd.ad) == (False, True, True)
    ch = wire.parse_query(QUERY_WIRES["class_chaos"])
    assert ch.qclass == 3
    n = wire.parse_query(QUERY_WIRES["notify_with_answer"])
    assert n.opcode == 4


def test_parse_query_accepts_bytes_like(wire):
    data = QUERY_WIRES["a"]
    for variant in (bytearray(data), memoryview(data)):
        try:
            got = wire.parse_query(variant)
        except TypeError:
            pytest.skip("only bytes accepted")  # the spec only promises bytes
        assert query_dict(got) == oracle_query(data)


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------

Q = query(EX)
QE = query(EX, edns=0, do=True, payload=4096)


def _many(n, base_ttl):
    out = []
    for i in range(n):
        out.append(rr(EX, base_ttl + (i * 37) % 1000, "A", f"10.0.{i // 256}.{i % 256}"))
    return out


GOLDEN_RESPONSES = {
    "a": response(Q, answer=[rr(EX, 300, "A", "192.0.2.1")]),
    "aaaa": response(query(EX, "AAAA"), answer=[rr(EX, 120, "AAAA", "2001:db8::1")], authority=[rr("example.com.", 3600, "NS", "ns1.example.com.")]),
    "cname_chain": response(
        Q,
        answer=[
            rr(EX, 300, "CNAME", "a.example.net."),
            rr("a.example.net.", 60, "CNAME", "b.example.org."),
            rr("b.example.org.", 3600, "A", "192.0.2.7"),
        ],
        authority=[rr("example.org.", 30, "NS", "ns.example.org.")],
        additional=[rr("ns.example.org.", 5, "A", "192.0.2.53")],  # additional: not counted
    ),
    "cname_chain_uncompressed": response(
        Q,
        answer=[rr(EX, 300, "CNAME", "a.example.net."), rr("a.example.net.", 60, "A", "192.0.2.7")],
        compress=False,
    ),
    "nxdomain_soa": response(Q, rcode=3, authority=[soa(ttl=900, minimum=300)], aa=True),
    "nxdomain_soa_ttl_lower": response(Q, rcode=3, authority=[soa(ttl=100, minimum=300)]),
    "nxdomain_cname_soa": response(
        Q, rcode=3, answer=[rr(EX, 50, "CNAME", "gone.example.net.")], authority=[soa("example.net.", ttl=900, minimum=600)]
    ),
    "nxdomain_two_soas": response(Q, rcode=3, authority=[soa(ttl=900, minimum=700), soa("com.", ttl=800, minimum=900)]),
    "nxdomain_no_soa": response(Q, rcode=3, authority=[rr("example.com.", 60, "NS", "ns1.example.com.")]),
    "nodata_soa": response(query(EX, "AAAA"), authority=[rr("example.com.", 20, "NS", "ns1.example.com."), soa(ttl=3600, minimum=3600)]),
    "nodata_no_soa": response(query(EX, "AAAA")),
    "servfail": response(Q, rcode=2),
    "refused_with_records": response(Q, rcode=5, answer=[rr(EX, 300, "A", "192.0.2.1")], authority=[soa()]),
    "formerr": response(Q, rcode=1),
    "edns_do": response(QE, answer=[rr(EX, 300, "A", "192.0.2.1")], ad=True, do=True),
    "edns_do_nxdomain": response(QE, rcode=3, authority=[soa(ttl=90, minimum=3600)], do=True),
    "many_8": response(Q, answer=_many(8, 100)),
    "many_100": response(Q, answer=_many(100, 50), authority=[rr("example.com.", 5000, "NS", "ns1.example.com.")]),
    "mixed_case": response(query("WwW.ExAmPlE.cOm.", "A"), answer=[rr("WwW.ExAmPlE.cOm.", 77, "A", "192.0.2.1")]),
    "root": response(query(".", "NS"), answer=[rr(".", 518400, "NS", "a.root-servers.net.")]),
    "escaped": response(query(ESCAPED_NAME, "TXT"), answer=[rr(ESCAPED_NAME, 10, "TXT", '"hello" "world"')]),
    "longest_name": response(query(LONGEST_NAME), answer=[rr(LONGEST_NAME, 42, "A", "192.0.2.1")]),
    "mx_txt_ns": response(
        query(EX, "MX"),
        answer=[rr(EX, 400, "MX", "10 mail.example.com."), rr(EX, 401, "TXT", '"v=spf1 -all"')],
        authority=[rr("example.com.", 399, "NS", "ns1.example.com.")],
    ),
    "ttl_top_bit_answer": response(Q, answer=[rr(EX, 2**31, "A", "192.0.2.1"), rr(EX, 300, "A", "192.0.2.2")]),
    "ttl_max_minus": response(Q, answer=[rr(EX, 2**31 - 1, "A", "192.0.2.1")]),
    "ttl_all_ones": response(Q, answer=[rr(EX, 2**32 - 1, "A", "192.0.2.1")]),
    "soa_minimum_top_bit": response(Q, rcode=3, authority=[soa(ttl=900, minimum=2**32 - 1)]),
    "soa_ttl_top_bit": response(Q, rcode=3, authority=[soa(ttl=2**31 + 5, minimum=60)]),
    "tc_aa": response(Q, tc=True, aa=True, ra=False),
}


def _with_opt_rcode(q, rcode):
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return r.to_wire()


def _no_question():
    r = dns.message.make_response(Q)
    r.question = []
    r.set_rcode(1)
    return r.to_wire()


GOLDEN_RESPONSES["badvers"] = _with_opt_rcode(QE, dns.rcode.BADVERS)
GOLDEN_RESPONSES["badcookie"] = _with_opt_rcode(QE, dns.rcode.BADCOOKIE)
GOLDEN_RESPONSES["no_question"] = _no_question()


def _ttl_rrsets():
    # TTLs differing per record within one RRset
    return response(Q, answer=[*one_per_record(rr(EX, 10, "A", "192.0.2.1", "192.0.2.2")), rr(EX, 9, "A", "192.0.2.3")])


GOLDEN_RESPONSES["per_record_ttls"] = _ttl_rrsets()


@pytest.mark.parametrize("name", sorted(GOLDEN_RESPONSES))
def test_scan_response_golden(wire, name):
    data = GOLDEN_RESPONSES[name]
    assert response_dict(wire.scan_response(data)) == oracle_response(data)


EXPECTED_MIN_TTL = {
    "a": 300,
    "cname_chain": 30,
    "cname_chain_uncompressed": 60,
    "nxdomain_soa": 300,
    "nxdomain_soa_ttl_lower": 100,
    "nxdomain_cname_soa": 50,
    "nxdomain_two_soas": 700,
    "nxdomain_no_soa": None,
    "nodata_soa": 3600,
    "nodata_no_soa": None,
    "servfail": None,
    "refused_with_records": None,
    "formerr": None,
    "edns_do_nxdomain": 90,
    "many_8": 100,
    "many_100": 50,
    "ttl_top_bit_answer": 0,
    "ttl_max_minus": 2**31 - 1,
    "ttl_all_ones": 0,
    "soa_minimum_top_bit": 0,
    "soa_ttl_top_bit": 0,
    "badvers": None,
    "badcookie": None,
    "no_question": None,
    "per_record_ttls": 9,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MIN_TTL))
def test_min_ttl_spelled_out(wire, name):
    assert wire.scan_response(GOLDEN_RESPONSES[name]).min_ttl == EXPECTED_MIN_TTL[name]


def test_scan_response_field_values(wire):
    r = wire.scan_response(GOLDEN_RESPONSES["cname_chain"])
    assert (r.qname, r.qtype, r.qclass, r.rcode) == ("www.example.com", 1, 1, 0)
    assert (r.qdcount, r.ancount, r.nscount, r.arcount) == (1, 3, 1, 1)
    assert (r.tc, r.aa, r.ra, r.ad) == (False, False, True, False)
    b = wire.scan_response(GOLDEN_RESPONSES["badvers"])
    assert b.rcode == 16 and b.arcount == 1
    assert wire.scan_response(GOLDEN_RESPONSES["badcookie"]).rcode == 23
    m = wire.scan_response(GOLDEN_RESPONSES["mixed_case"])
    assert m.qname == "www.example.com"
    n = wire.scan_response(GOLDEN_RESPONSES["no_question"])
    assert (n.qname, n.qtype, n.qclass, n.qdcount, n.rcode) == (None, None, None, 0, 1)
    t = wire.scan_response(GOLDEN_RESPONSES["tc_aa"])
    assert (t.tc, t.aa, t.ra, t.ad) == (True, True, False, False)
    assert wire.scan_response(GOLDEN_RESPONSES["edns_do"]).ad is True
    assert wire.scan_response(GOLDEN_RESPONSES["many_100"]).ancount == 100
    assert wire.scan_response(GOLDEN_RESPONSES["root"]).qname == "."


def test_compression_really_used():
    """The golden set has both compressed and uncompressed names (checks the builders)."""
    answer = [rr(EX, 300, "CNAME", "a.example.net."), rr("a.example.net.", 60, "A", "192.0.2.7")]
    compressed = response(Q, answer=answer)
    plain = GOLDEN_RESPONSES["cname_chain_uncompressed"]
    assert from_wire(compressed) == from_wire(plain)
    assert len(compressed) < len(plain)
    w = walk(plain)
    assert all(plain[rr.owner_end - 1] == 0 for rr in w.rrs)  # owners end in a root label, no pointer


# --------------------------------------------------------------------------
# set_id
# --------------------------------------------------------------------------

ALL_WIRES = {**{"q_" + k: v for k, v in QUERY_WIRES.items()}, **{"r_" + k: v for k, v in GOLDEN_RESPONSES.items()}}


@pytest.mark.parametrize("name", sorted(ALL_WIRES))
@pytest.mark.parametrize("new_id", [0, 1, 0xABCD, 65535])
def test_set_id(wire, name, new_id):
    data = ALL_WIRES[name]
    out = wire.set_id(data, new_id)
    assert isinstance(out, bytes)
    assert out == struct.pack("!H", new_id) + data[2:]
    assert from_wire(out).id == new_id


# --------------------------------------------------------------------------
# age_ttls
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_WIRES))
@pytest.mark.parametrize("seconds", [0, 1, 59, 300, 2**31, 2**32 + 7])
def test_age_ttls(wire, name, seconds):
    data = ALL_WIRES[name]
    out = wire.age_ttls(data, seconds)
    assert isinstance(out, bytes)
    assert out == expected_aged(data, seconds)


def test_age_ttls_zero_is_identity(wire):
    for name, data in ALL_WIRES.items():
        if any(rr.ttl > 2**31 - 1 and rr.rtype != OPT for rr in walk(data).rrs):
            continue  # such a TTL is rewritten to 0 (it counts as 0)
        assert wire.age_ttls(data, 0) == data, name


def test_age_ttls_with_dnspython(wire):
    data = GOLDEN_RESPONSES["cname_chain"]
    before = from_wire(data)
    after = from_wire(wire.age_ttls(data, 40))
    sections = lambda m: [rs.ttl for rs in m.answer + m.authority + m.additional]  # noqa: E731
    assert sections(after) == [max(t - 40, 0) for t in sections(before)]
    assert [rs.ttl for rs in after.answer] == [260, 20, 3560]


def test_age_ttls_leaves_opt_alone(wire):
    data = GOLDEN_RESPONSES["edns_do_nxdomain"]
    before = from_wire(data)
    out = wire.age_ttls(data, 100000)
    after = from_wire(out)
    assert after.ednsflags == before.ednsflags and after.ednsflags & dns.flags.DO
    assert after.payload == before.payload
    assert after.authority[0].ttl == 0
    bv = GOLDEN_RESPONSES["badvers"]
    assert from_wire(wire.age_ttls(bv, 5)).rcode() == dns.rcode.BADVERS
    assert wire.age_ttls(bv, 5) == bv


@pytest.mark.parametrize("seconds", [-1, -(2**31), -(2**32), -(2**63), -(2**64) - 1])
def test_age_ttls_negative(wire, seconds):
    with pytest.raises(ValueError):
        wire.age_ttls(GOLDEN_RESPONSES["a"], seconds)


# --------------------------------------------------------------------------
# cache_key
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(QUERY_WIRES))
def test_cache_key_golden(wire, name):
    data = QUERY_WIRES[name]
    key = wire.cache_key(data)
    assert isinstance(key, bytes)
    assert key == expected_cache_key(data)
    assert wire.cache_key(wire.parse_query(data)) == key


def _key(wire, *args, **kwargs):
    return wire.cache_key(query(*args, **kwargs).to_wire())


def test_cache_key_properties(wire):
    base = _key(wire, EX)
    assert base == b"\x03www\x07example\x03com\x00" + struct.pack("!HHB", 1, 1, 0)
    # case, ID and RD do not matter
    assert _key(wire, "WWW.Example.COM.") == base
    assert _key(wire, EX, id=999) == base
    assert _key(wire, EX, flags=0) == base
    assert _key(wire, EX, flags=dns.flags.AD | dns.flags.RD) == base
    # EDNS without DO, payload and options do not matter
    assert _key(wire, EX, edns=0, payload=4096, options=[dns.edns.GenericOption(10, b"12345678")]) == base
    # DO, CD, qtype, qclass and the name do
    do = _key(wire, EX, edns=0, do=True)
    cd = _key(wire, EX, flags=dns.flags.RD | dns.flags.CD)
    both = _key(wire, EX, edns=0, do=True, flags=dns.flags.RD | dns.flags.CD)
    assert do[-1] == 1 and cd[-1] == 2 and both[-1] == 3
    assert len({base, do, cd, both}) == 4
    assert _key(wire, EX, "AAAA") != base
    assert _key(wire, EX, rdclass="CH") != base
    assert _key(wire, "www.example.org.") != base
    # label boundaries matter even when the text would collide
    assert _key(wire, dns.name.Name([b"a.b", b""])) != _key(wire, "a.b.")


# --------------------------------------------------------------------------
# make_error
# --------------------------------------------------------------------------


def _ede(m):
    return [o for o in m.options if o.otype == dns.edns.OptionType.EDE]


@pytest.mark.parametrize("name", sorted(QUERY_WIRES))
@pytest.mark.parametrize("rcode", [1, 2, 3, 5])
def test_make_error_golden(wire, name, rcode):
    data = QUERY_WIRES[name]
    out = wire.make_error(data, rcode)
    assert out == expected_error(data, rcode)
    m = from_wire(out)
    q = from_wire(data)
    assert m.id == q.id and m.rcode() == rcode
    assert m.flags & dns.flags.QR and m.flags & dns.flags.RA
    assert not m.flags & (dns.flags.AA | dns.flags.TC | dns.flags.AD)
    assert (m.flags & dns.flags.RD) == (q.flags & dns.flags.RD)
    assert (m.flags & dns.flags.CD) == (q.flags & dns.flags.CD)
    assert m.opcode() == q.opcode()
    # the question as sent, case preserved
    assert [(x.name.labels, x.rdtype, x.rdclass) for x in m.question] == [(x.name.labels, x.rdtype, x.rdclass) for x in q.question]
    assert not m.answer and not m.authority
    assert (m.edns >= 0) == (q.edns >= 0)
    if q.edns >= 0:
        assert m.payload == 1232 and m.edns == 0
        assert (m.ednsflags & dns.flags.DO) == (q.ednsflags & dns.flags.DO)
        assert list(m.options) == []


@pytest.mark.parametrize("text", ["network error", "", "résolution ✓"])
def test_make_error_ede(wire, text):
    data = QUERY_WIRES["edns_do_cookie"]
    out = wire.make_error(data, 2, ede=(23, text))
    assert out == expected_error(data, 2, (23, text))
    m = from_wire(out)
    assert m.rcode() == dns.rcode.SERVFAIL
    assert m.ednsflags & dns.flags.DO
    (e,) = _ede(m)
    assert e.code == 23
    assert (e.text or "") == text


def test_make_error_ede_dropped_without_opt(wire):
    data = QUERY_WIRES["a"]
    out = wire.make_error(data, 2, ede=(23, "network error"))
    assert out == expected_error(data, 2)
    m = from_wire(out)
    assert m.edns == -1 and m.rcode() == 2


def test_make_error_extended_rcode(wire):
    data = QUERY_WIRES["edns_no_do"]
    out = wire.make_error(data, dns.rcode.BADVERS, ede=(0, "v"))
    assert out == expected_error(data, 16, (0, "v"))
    m = from_wire(out)
    assert m.rcode() == dns.rcode.BADVERS
    assert not m.ednsflags & dns.flags.DO
    with pytest.raises(ValueError):
        wire.make_error(QUERY_WIRES["a"], dns.rcode.BADVERS)


def test_make_error_rcode_15_without_opt(wire):
    data = QUERY_WIRES["a"]
    assert from_wire(wire.make_error(data, 15)).rcode() == 15


def test_make_error_header_only(wire):
    # a readable header, then garbage
    data = QUERY_WIRES["edns_do_cookie"][:12] + b"\xff\xff\xff"
    out = wire.make_error(data, 1, ede=(0, "x"))
    assert out == expected_error(data, 1, parsable=False)
    m = from_wire(out)
    assert m.question == [] and m.edns == -1 and m.rcode() == 1 and m.id == 0x1234
    # exactly a header
    hdr = QUERY_WIRES["a"][:12]
    out = wire.make_error(hdr, 2)
    assert out[:2] == hdr[:2] and len(out) == 12
    assert struct.unpack("!4H", out[4:]) == (0, 0, 0, 0)


def test_make_error_question_echoed_but_rest_broken(wire):
    # a good question followed by a broken OPT: header-only answer
    good = QUERY_WIRES["edns_do_cookie"]
    broken = good[:-1]
    out = wire.make_error(broken, 2)
    assert out == expected_error(broken, 2, parsable=False)


def test_make_error_short(wire):
    for n in range(12):
        with pytest.raises(WireError) as ei:
            wire.make_error(QUERY_WIRES["a"][:n], 2)
        assert ei.value.reason == "short header"


# --------------------------------------------------------------------------
# truncate
# --------------------------------------------------------------------------


def _sizes(data):
    w = walk(data)
    qend = w.questions[-1][1] if w.questions else 12
    opt = w.opt()
    optlen = (opt.end - opt.start) if opt else 0
    return sorted({len(data), len(data) - 1, qend + optlen, qend + optlen - 1, qend, qend - 1, 12, 13, 100, 512})


TRUNC_CASES = [
    (name, size)
    for name in ("many_100", "many_8", "edns_do", "edns_do_nxdomain", "cname_chain", "longest_name", "no_question", "badvers")
    for size in _sizes(GOLDEN_RESPONSES[name])
    if size >= 12
]


@pytest.mark.parametrize(("name", "size"), TRUNC_CASES)
def test_truncate(wire, name, size):
    data = GOLDEN_RESPONSES[name]
    out = wire.truncate(data, size)
    assert isinstance(out, bytes)
    assert out == expected_truncated(data, size)
    assert len(out) <= size
    if len(data) <= size:
        assert out == data
        return
    m = from_wire(out)
    orig = from_wire(data)
    assert m.flags & dns.flags.TC
    assert m.id == orig.id
    if m.edns >= 0:
        assert m.rcode() == orig.rcode()
    assert not m.answer and not m.authority
    assert m.question == orig.question or m.question == []


def test_truncate_keeps_opt(wire):
    data = GOLDEN_RESPONSES["many_100"]
    data_e = response(QE, answer=_many(100, 50), do=True)
    out = wire.truncate(data_e, 512)
    m = from_wire(out)
    assert m.flags & dns.flags.TC and m.edns == 0 and m.ednsflags & dns.flags.DO
    assert [q.name for q in m.question] == [dns.name.from_text(EX)]
    assert len(out) < 512
    out2 = wire.truncate(data, 512)
    assert from_wire(out2).edns == -1
    assert wire.truncate(data, 65535) == data


def test_truncate_too_small(wire):
    for size in (-1, 0, 11):
        with pytest.raises(ValueError):
            wire.truncate(GOLDEN_RESPONSES["a"], size)


# --------------------------------------------------------------------------
# pad
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(QUERY_WIRES))
@pytest.mark.parametrize("block", [128, 1, 2, 7, 64, 468, 512])
def test_pad(wire, name, block):
    data = QUERY_WIRES[name]
    out = wire.pad(data, block)
    check_padded(data, out, block)
    # it is still the same query
    before, after = query_dict(wire.parse_query(data)), query_dict(wire.parse_query(out))
    assert after["edns"] is not None
    for k in before:
        if k != "edns":
            assert after[k] == before[k], k
    if before["edns"] is not None:
        assert {k: v for k, v in after["edns"].items() if k != "options"} == {k: v for k, v in before["edns"].items() if k != "options"}


def test_pad_default_block(wire):
    out = wire.pad(QUERY_WIRES["a"])
    check_padded(QUERY_WIRES["a"], out, 128)
    assert len(out) == 128


def test_pad_adds_opt(wire):
    data = QUERY_WIRES["a"]
    out = wire.pad(data)
    m = from_wire(out)
    assert m.edns == 0 and m.payload == 1232 and not m.ednsflags & dns.flags.DO
    assert struct.unpack_from("!H", out, 10)[0] == struct.unpack_from("!H", data, 10)[0] + 1


def test_pad_replaces_padding_and_keeps_options(wire):
    data = QUERY_WIRES["edns_version_1_options"]
    assert (12, b"\x00" * 7) in options_of(data)
    out = wire.pad(data, 128)
    check_padded(data, out, 128)
    opts = options_of(out)
    assert [c for c, _ in opts].count(12) == 1
    assert [o for o in opts if o[0] != 12] == [(3, b""), (65001, b"\x01\x02")]
    # padding an already padded message again is stable
    assert len(wire.pad(out, 128)) == len(out)
    check_padded(out, wire.pad(out, 128), 128)


def test_pad_keeps_cookie_and_do(wire):
    data = QUERY_WIRES["edns_do_cookie"]
    out = wire.pad(data, 468)
    m = from_wire(out)
    assert m.ednsflags & dns.flags.DO and m.payload == 4096
    assert [o.otype for o in m.options if o.otype != 12] == [dns.edns.OptionType.COOKIE]


@pytest.mark.parametrize("name", sorted(QUERY_WIRES))
@pytest.mark.parametrize("block", [1, 128, 468])
def test_pad_keepalive(wire, name, block):
    data = QUERY_WIRES[name]
    out = wire.pad(data, block, keepalive=True)
    check_padded(data, out, block, keepalive=True)
    m = from_wire(out)
    assert [o.otype for o in m.options].count(11) == 1


def test_pad_keepalive_replaces_keepalive(wire):
    data = query(EX, edns=0, options=[dns.edns.GenericOption(11, b"\x00\x10"), dns.edns.GenericOption(3, b"")]).to_wire()
    out = wire.pad(data, 128, keepalive=True)
    check_padded(data, out, 128, keepalive=True)
    # without keepalive=True an existing keepalive option is just another option
    plain = wire.pad(data, 128)
    check_padded(data, plain, 128)
    assert (11, b"\x00\x10") in options_of(plain)


def test_pad_bad_block(wire):
    for block in (0, -1, -128):
        with pytest.raises(ValueError):
            wire.pad(QUERY_WIRES["a"], block)


# --------------------------------------------------------------------------
# strip_opt
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_WIRES))
def test_strip_opt(wire, name):
    data = ALL_WIRES[name]
    out = wire.strip_opt(data)
    assert out == expected_stripped(data)
    m, before = from_wire(out), from_wire(data)
    assert m.edns == -1
    assert [rs.to_text() for rs in m.answer + m.authority + m.additional] == [
        rs.to_text() for rs in before.answer + before.authority + before.additional
    ]
    assert m.flags == before.flags and m.question == before.question


def test_strip_opt_values(wire):
    data = GOLDEN_RESPONSES["edns_do"]
    out = wire.strip_opt(data)
    assert len(out) == len(data) - 11
    assert struct.unpack_from("!H", out, 10)[0] == 0
    assert wire.strip_opt(GOLDEN_RESPONSES["a"]) == GOLDEN_RESPONSES["a"]
    # the extended rcode lives in the OPT: BADVERS loses its upper bits
    assert wire.scan_response(wire.strip_opt(GOLDEN_RESPONSES["badvers"])).rcode == 0


# --------------------------------------------------------------------------
# The implementations agree on all golden messages
# --------------------------------------------------------------------------


def test_golden_agreement(both):
    from wire_support import outcome

    c, py = both
    for name, data in ALL_WIRES.items():
        for fn, args in (
            ("parse_query", ()),
            ("scan_response", ()),
            ("age_ttls", (17,)),
            ("cache_key", ()),
            ("make_error", (2,)),
            ("truncate", (100,)),
            ("pad", (128,)),
            ("set_id", (7,)),
            ("strip_opt", ()),
        ):
            assert outcome(getattr(c, fn), data, *args) == outcome(getattr(py, fn), data, *args), (name, fn)


# --------------------------------------------------------------------------
# Edges the spec decides
# --------------------------------------------------------------------------


def _hdr(flags, qd=1, an=0, ns=0, ar=0, id=0x0BAD):
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


QNAME_WIRE = b"\x03www\x07example\x03com\x00"
QUESTION = QNAME_WIRE + b"\x00\x01\x00\x01"


def test_question_pointer_into_header(wire):
    """A pointer only has to point before the name: into the header is legal
    (dnspython agrees). Offset 4 holds QDCOUNT's high byte, 0: the root."""
    data = _hdr(0x0100) + b"\xc0\x04" + b"\x00\x02\x00\x01"
    q = wire.parse_query(data)
    assert (q.qname, q.qname_wire, q.qtype) == (".", b"\x00", 2)
    assert query_dict(q) == oracle_query(data)


def test_owner_pointer_to_earlier_record(wire):
    # the second answer's owner points at the first answer's owner, which points at the question
    first = b"\x01a\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes(4)
    second = b"\xc0" + bytes([12 + len(QUESTION)]) + struct.pack("!HHIH", 1, 1, 20, 4) + bytes(4)
    data = _hdr(0x8180, an=2) + QUESTION + first + second
    info = wire.scan_response(data)
    assert info.min_ttl == 20 and info.ancount == 2
    assert response_dict(info) == oracle_response(data)


def _soa_response(rdata, ttl=900, rcode=3):
    return _hdr(0x8180 | rcode, ns=1) + QUESTION + b"\xc0\x10" + struct.pack("!HHIH", 6, 1, ttl, len(rdata)) + rdata


def test_soa_with_root_names(wire):
    rdata = b"\x00\x00" + struct.pack("!5I", 1, 2, 3, 4, 77)
    assert wire.scan_response(_soa_response(rdata)).min_ttl == 77
    assert wire.scan_response(_soa_response(rdata, ttl=5)).min_ttl == 5
    assert wire.scan_response(_soa_response(rdata, rcode=0)).min_ttl == 77  # NODATA


@pytest.mark.parametrize(
    "rdata",
    [
        struct.pack("!I", 66),  # only a MINIMUM
        b"\x00" + struct.pack("!5I", 1, 2, 3, 4, 66),  # one name short
        b"\x00\x00" + struct.pack("!5I", 1, 2, 3, 4, 9) + struct.pack("!I", 66),  # 4 bytes too many
    ],
    ids=["4_bytes", "one_name", "extra_bytes"],
)
def test_malformed_soa_is_rejected(wire, rdata):
    """A negative TTL is only taken from a well-formed SOA: MNAME, RNAME, then exactly 20 bytes."""
    with pytest.raises(WireError) as e:
        wire.scan_response(_soa_response(rdata))
    assert e.value.reason == "bad SOA"


def test_pad_with_record_after_opt(wire):
    """Records after the OPT (a TSIG would sign what precedes it): unchanged."""
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    extra = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)
    data = _hdr(0x0100, ar=2) + QUESTION + opt + extra
    wire.parse_query(data)  # a valid query
    assert wire.pad(data, 128) == data
    assert wire.pad(data, 128, keepalive=True) == data
    assert wire.strip_opt(data) == data


def test_scan_response_opt_position_free(wire):
    opt = b"\x00" + struct.pack("!HHIH", 41, 4096, 0x01008000, 0)
    extra = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + bytes(4)
    data = _hdr(0x8180, an=1, ar=2) + QUESTION + extra + opt + extra
    info = wire.scan_response(data)
    assert info.rcode == 16 and info.min_ttl is None


# --------------------------------------------------------------------------
# Python ints of any size: same answers in both implementations
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [2**31 - 1, 2**32, 2**63 - 1, 2**63, 2**64 + 7, 10**30])
def test_age_ttls_huge(wire, seconds):
    data = GOLDEN_RESPONSES["cname_chain"]
    out = wire.age_ttls(data, seconds)
    assert out == expected_aged(data, seconds)
    assert all(rr.ttl == 0 for rr in walk(out).rrs if rr.rtype != OPT)


@pytest.mark.parametrize("size", [65535, 65536, 2**31, 2**63, 2**64])
def test_truncate_huge_limit(wire, size):
    data = GOLDEN_RESPONSES["many_100"]
    assert wire.truncate(data, size) == data


@pytest.mark.parametrize("size", [-(2**63) - 1, -(2**64)])
def test_truncate_huge_negative_limit(wire, size):
    with pytest.raises(ValueError):
        wire.truncate(GOLDEN_RESPONSES["a"], size)


@pytest.mark.parametrize("rcode", [16, 2**31, 2**64])
def test_make_error_big_rcode_without_opt(wire, rcode):
    with pytest.raises(ValueError):
        wire.make_error(QUERY_WIRES["a"], rcode)


@pytest.mark.parametrize("block", [-(2**64), 0])
def test_pad_huge_negative_block(wire, block):
    with pytest.raises(ValueError):
        wire.pad(QUERY_WIRES["a"], block)


def _kind(fn, *args):
    try:
        return ("ok", fn(*args))
    except ValueError as e:  # WireError included
        return ("ValueError", getattr(e, "reason", None))
    except Exception as e:  # noqa: BLE001
        return ("other", type(e).__name__)


@pytest.mark.parametrize("block", [65535, 65536, 2**31, 2**63, 2**64])
def test_pad_huge_block_agreement(both, block):
    """Not specified beyond "when it can be": both implementations do the same."""
    c, py = both
    data = QUERY_WIRES["edns_do_cookie"]
    kc, kp = _kind(c.pad, data, block), _kind(py.pad, data, block)
    assert kc == kp
    assert kc[0] != "other"


def test_pad_leaves_a_signed_query_without_opt_alone(wire):
    """An OPT appended after a TSIG would break the signature: such a query goes unpadded."""
    import dns.tsigkeyring

    keyring = dns.tsigkeyring.from_text({"k.": "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA="})
    q = dns.message.make_query("a.example", "A")
    q.use_tsig(keyring)
    data = q.to_wire()
    assert wire.pad(data) == data
    dns.message.from_wire(wire.pad(data), keyring=keyring)  # still verifies


@pytest.mark.parametrize("call", [
    lambda w, d: w.age_ttls(d, 1.5),
    lambda w, d: w.set_id(d, 1.0),
    lambda w, d: w.truncate(d, 20.5),
    lambda w, d: w.pad(d, 128.0),
    lambda w, d: w.make_error(d, 2.0),
], ids=["age_ttls", "set_id", "truncate", "pad", "make_error"])
def test_integer_arguments_refuse_floats_alike(wire, call):
    with pytest.raises(TypeError):
        call(wire, dns.message.make_query("a.example", "A").to_wire())


def test_make_error_checks_the_ede_fits(wire):
    data = dns.message.make_query("a.example", "A", use_edns=0).to_wire()
    with pytest.raises(ValueError):
        wire.make_error(data, 2, ede=(70000, "x"))
    with pytest.raises(ValueError):
        wire.make_error(data, 2, ede=(1, "x" * 70000))


def test_a_query_object_comes_from_parse_query(wire):
    with pytest.raises((ValueError, AttributeError, TypeError)):
        wire.Query().qname
    with pytest.raises((ValueError, AttributeError, TypeError)):
        wire.cache_key(wire.Query())
