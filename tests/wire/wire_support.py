"""Oracles and builders shared by the wire tests.

Expected values come from dnspython (``dns.message.from_wire``) and from a tiny
independent walker over *valid* messages (``walk``), never from the code under
test.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype

from dotproxy.errors import WireError

TTL_CAP = 2**31 - 1
SOA = 6
OPT = 41

#: Every WireError reason the spec knows.
REASONS = frozenset(
    {
        "short header",
        "not a query",
        "not a response",
        "QDCOUNT is not 1",
        "QDCOUNT above 1",
        "name runs past the end",
        "label too long",
        "name too long",
        "bad compression pointer",
        "record runs past the end",
        "bad OPT",
        "trailing data",
        "bad SOA",
    }
)

QUERY_ATTRS = ("id", "opcode", "rd", "cd", "ad", "qname", "qname_wire", "qtype", "qclass")
EDNS_ATTRS = ("udp_size", "do", "version", "options")
RESPONSE_ATTRS = (
    "id",
    "rcode",
    "tc",
    "aa",
    "ra",
    "ad",
    "qname",
    "qname_wire",
    "qtype",
    "qclass",
    "qdcount",
    "ancount",
    "nscount",
    "arcount",
    "min_ttl",
)


def cap(ttl: int) -> int:
    """RFC 2181 section 8: a TTL with the top bit set counts as 0."""
    return 0 if ttl > TTL_CAP else ttl


# --------------------------------------------------------------------------
# Turning results into comparable plain data
# --------------------------------------------------------------------------


def _check_types(obj, ints=(), bools=(), optional_ints=()):
    for a in ints:
        v = getattr(obj, a)
        assert type(v) is int, f"{type(obj).__name__}.{a} is {type(v).__name__}, not int"
    for a in optional_ints:
        v = getattr(obj, a)
        assert v is None or type(v) is int, f"{type(obj).__name__}.{a} is {type(v).__name__}, not int or None"
    for a in bools:
        v = getattr(obj, a)
        assert type(v) is bool, f"{type(obj).__name__}.{a} is {type(v).__name__}, not bool"


def edns_tuple(e):
    if e is None:
        return None
    _check_types(e, ints=("udp_size", "version"), bools=("do",))
    assert type(e.options) is list, f"Edns.options is {type(e.options).__name__}, not list"
    for opt in e.options:
        assert type(opt) is tuple and len(opt) == 2, f"option {opt!r} is not a (code, data) tuple"
        assert type(opt[0]) is int and type(opt[1]) is bytes, f"option {opt!r} is not (int, bytes)"
    return {
        "udp_size": e.udp_size,
        "do": e.do,
        "version": e.version,
        "options": [(int(c), bytes(d)) for c, d in e.options],
    }


def query_dict(q) -> dict:
    _check_types(q, ints=("id", "opcode", "qtype", "qclass"), bools=("rd", "cd", "ad"))
    assert type(q.qname) is str and type(q.qname_wire) is bytes
    d = {a: getattr(q, a) for a in QUERY_ATTRS}
    d["edns"] = edns_tuple(q.edns)
    return d


def response_dict(r) -> dict:
    _check_types(
        r,
        ints=("id", "rcode", "qdcount", "ancount", "nscount", "arcount"),
        bools=("tc", "aa", "ra", "ad"),
        optional_ints=("qtype", "qclass", "min_ttl"),
    )
    assert r.qname is None or type(r.qname) is str
    assert r.qname_wire is None or type(r.qname_wire) is bytes
    d = {a: getattr(r, a) for a in RESPONSE_ATTRS}
    d["edns"] = edns_tuple(r.edns)
    return d


def plain(value):
    """A comparable form of any API result."""
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value))
    kind = type(value).__name__
    if kind == "Query":
        return ("query", query_dict(value))
    if kind == "ResponseInfo":
        return ("response", response_dict(value))
    return ("other", repr(value))


def outcome(fn, *args, **kwargs):
    """``("ok", plain value)`` or ``("WireError", reason)``; anything else propagates."""
    try:
        value = fn(*args, **kwargs)
    except WireError as e:
        assert isinstance(e.reason, str) and e.reason, f"WireError without a reason: {e!r}"
        assert str(e) == e.reason or e.reason in str(e)
        return ("WireError", e.reason)
    return ("ok", plain(value))


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------

_ESCAPED = b'"().;\\@$'


def label_text(label: bytes) -> str:
    out = []
    for c in label:
        if c in _ESCAPED:
            out.append("\\" + chr(c))
        elif 0x20 < c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


def lower_name(name: dns.name.Name) -> dns.name.Name:
    """The name with its labels lower-cased bytewise (ASCII A-Z only)."""
    return dns.name.Name([bytes(l).lower() for l in name.labels])


def expected_qname(name: dns.name.Name) -> str:
    """The spec's qname text, via dnspython on the bytewise-lowered name."""
    text = lower_name(name).to_text(omit_final_dot=True)
    return text


def expected_qname_wire(name: dns.name.Name) -> bytes:
    return b"".join(bytes([len(l)]) + bytes(l).lower() for l in name.labels)


# --------------------------------------------------------------------------
# An independent walker for valid messages
# --------------------------------------------------------------------------


@dataclass
class RR:
    section: int  # 1 answer, 2 authority, 3 additional
    start: int  # offset of the owner name
    owner_end: int  # offset just past the owner name
    rtype: int
    rclass: int
    ttl: int
    ttl_off: int
    rdata_off: int
    rdlen: int
    end: int

    def rdata(self, wire: bytes) -> bytes:
        return wire[self.rdata_off : self.rdata_off + self.rdlen]


@dataclass
class Walk:
    id: int
    flags: int
    counts: tuple
    questions: list = field(default_factory=list)  # (start, end) of each question
    rrs: list = field(default_factory=list)

    @property
    def question_bytes(self):
        return self.questions

    def opt(self):
        for rr in self.rrs:
            if rr.rtype == OPT:
                return rr
        return None


def _skip_name(wire: bytes, off: int) -> int:
    while True:
        n = wire[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def walk(wire: bytes) -> Walk:
    """Walk a message already known to be valid (e.g. made by dnspython)."""
    mid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", wire)
    w = Walk(mid, flags, (qd, an, ns, ar))
    off = 12
    for _ in range(qd):
        start = off
        off = _skip_name(wire, off) + 4
        w.questions.append((start, off))
    for section, count in ((1, an), (2, ns), (3, ar)):
        for _ in range(count):
            start = off
            owner_end = _skip_name(wire, off)
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", wire, owner_end)
            rdata_off = owner_end + 10
            end = rdata_off + rdlen
            w.rrs.append(RR(section, start, owner_end, rtype, rclass, ttl, owner_end + 4, rdata_off, rdlen, end))
            off = end
    assert off == len(wire), "walk() expects a well-formed message"
    return w


# --------------------------------------------------------------------------
# dnspython oracles
# --------------------------------------------------------------------------


def from_wire(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire, one_rr_per_rrset=True, ignore_trailing=False)


def _oracle_edns(m):
    if m.edns < 0:
        return None
    return {
        "udp_size": m.payload,
        "do": bool(m.ednsflags & dns.flags.DO),
        "version": m.edns,
        "options": [(int(o.otype), o.to_wire()) for o in m.options],
    }


def oracle_query(wire: bytes) -> dict:
    m = from_wire(wire)
    q = m.question[0]
    flags = m.flags
    edns = _oracle_edns(m)
    return {
        "id": m.id,
        "opcode": int(m.opcode()),
        "rd": bool(flags & dns.flags.RD),
        "cd": bool(flags & dns.flags.CD),
        "ad": bool(flags & dns.flags.AD),
        "qname": expected_qname(q.name),
        "qname_wire": expected_qname_wire(q.name),
        "qtype": int(q.rdtype),
        "qclass": int(q.rdclass),
        "edns": edns,
    }


def expected_min_ttl(rcode: int, answer_ttls, authority, ancount: int):
    """The spec's min_ttl.

    ``answer_ttls``: raw TTLs of answer records; ``authority``: list of
    ``(rtype, raw ttl, soa_minimum or None)``.
    """
    if rcode == 0 and ancount > 0:
        return min([cap(t) for t in answer_ttls] + [cap(t) for _, t, _ in authority])
    if rcode == 3 or (rcode == 0 and ancount == 0):
        soas = [min(cap(t), cap(mn)) for rt, t, mn in authority if rt == SOA]
        if not soas:
            return None
        return min(soas + [cap(t) for t in answer_ttls])
    return None


def oracle_response(wire: bytes) -> dict:
    m = from_wire(wire)
    w = walk(wire)
    qd, an, ns, ar = w.counts
    flags = m.flags
    if m.question:
        q = m.question[0]
        qname, qtype, qclass = expected_qname(q.name), int(q.rdtype), int(q.rdclass)
        qname_wire = expected_qname_wire(q.name)
    else:
        qname = qname_wire = qtype = qclass = None
    # TTLs: raw from the walker (dnspython already caps them on parsing, and merges
    # nothing here thanks to one_rr_per_rrset); cross-check the two views.
    answer = [rr for rr in w.rrs if rr.section == 1]
    auth = [rr for rr in w.rrs if rr.section == 2]
    assert [cap(rr.ttl) for rr in answer] == [rs.ttl for rs in m.answer]
    assert [cap(rr.ttl) for rr in auth] == [rs.ttl for rs in m.authority]
    authority = []
    for rr, rs in zip(auth, m.authority):
        mn = struct.unpack("!I", rr.rdata(wire)[-4:])[0] if rr.rtype == SOA else None
        if rr.rtype == SOA:
            assert mn == rs[0].minimum
        authority.append((rr.rtype, rr.ttl, mn))
    rcode = int(m.rcode())
    return {
        "id": m.id,
        "rcode": rcode,
        "tc": bool(flags & dns.flags.TC),
        "aa": bool(flags & dns.flags.AA),
        "ra": bool(flags & dns.flags.RA),
        "ad": bool(flags & dns.flags.AD),
        "qname": qname,
        "qname_wire": qname_wire,
        "qtype": qtype,
        "qclass": qclass,
        "qdcount": qd,
        "ancount": an,
        "nscount": ns,
        "arcount": ar,
        "min_ttl": expected_min_ttl(rcode, [rr.ttl for rr in answer], authority, an),
        "edns": _oracle_edns(m),
    }


def expected_aged(wire: bytes, seconds: int) -> bytes:
    out = bytearray(wire)
    for rr in walk(wire).rrs:
        if rr.rtype == OPT:
            continue
        struct.pack_into("!I", out, rr.ttl_off, max(cap(rr.ttl) - seconds, 0))
    return bytes(out)


def expected_cache_key(wire: bytes) -> bytes:
    exp = oracle_query(wire)
    flags = 0
    if exp["edns"] is not None and exp["edns"]["do"]:
        flags |= 1
    if exp["cd"]:
        flags |= 2
    return exp["qname_wire"] + struct.pack("!HHB", exp["qtype"], exp["qclass"], flags)


def expected_error(query: bytes, rcode: int, ede=None, *, parsable=True) -> bytes:
    """The exact make_error answer for a query (``parsable``: its question and
    records can be parsed, so question and OPT are echoed)."""
    mid, flags = struct.unpack_from("!HH", query)
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    cd = flags & 0x0010
    hflags = 0x8000 | (opcode << 11) | rd | 0x0080 | cd | (rcode & 0xF)
    if not parsable:
        return struct.pack("!HHHHHH", mid, hflags, 0, 0, 0, 0)
    w = walk(query)
    question = b"".join(query[s:e] for s, e in w.questions)
    opt = w.opt()
    if opt is None:
        return struct.pack("!HHHHHH", mid, hflags, len(w.questions), 0, 0, 0) + question
    do = opt.ttl & 0x8000
    rdata = b""
    if ede is not None:
        text = ede[1].encode("utf-8")
        rdata = struct.pack("!HHH", 15, 2 + len(text), ede[0]) + text
    opt_rr = b"\x00" + struct.pack("!HHIH", OPT, 1232, ((rcode >> 4) << 24) | do, len(rdata)) + rdata
    return struct.pack("!HHHHHH", mid, hflags, len(w.questions), 0, 0, 1) + question + opt_rr


def expected_truncated(resp: bytes, max_size: int) -> bytes:
    if len(resp) <= max_size:
        return resp
    w = walk(resp)
    mid, flags = w.id, w.flags | 0x0200
    question = b"".join(resp[s:e] for s, e in w.questions)
    opt = w.opt()
    if opt is not None:
        out = struct.pack("!HHHHHH", mid, flags, len(w.questions), 0, 0, 1) + question + resp[opt.start : opt.end]
        if len(out) <= max_size:
            return out
    out = struct.pack("!HHHHHH", mid, flags, len(w.questions), 0, 0, 0) + question
    if len(out) <= max_size:
        return out
    return struct.pack("!HHHHHH", mid, flags, 0, 0, 0, 0)


def strip_padding(wire: bytes, codes=(12,)) -> tuple[bytes, bool]:
    """The message with any option of ``codes`` removed (OPT kept), and whether it had an OPT."""
    w = walk(wire)
    opt = w.opt()
    if opt is None:
        return wire, False
    rdata = opt.rdata(wire)
    kept = b""
    i = 0
    while i < len(rdata):
        code, ln = struct.unpack_from("!HH", rdata, i)
        if code not in codes:
            kept += rdata[i : i + 4 + ln]
        i += 4 + ln
    new_opt = wire[opt.start : opt.rdata_off - 2] + struct.pack("!H", len(kept)) + kept
    return wire[: opt.start] + new_opt + wire[opt.end :], True


def expected_stripped(wire: bytes) -> bytes:
    """strip_opt: the message without its OPT record (unchanged without one, or
    when records follow it)."""
    w = walk(wire)
    opt = w.opt()
    if opt is None or opt is not w.rrs[-1]:
        return wire
    ar = w.counts[3] - 1
    return wire[:10] + struct.pack("!H", ar) + wire[12 : opt.start]


def opt_is_last(wire: bytes) -> bool:
    w = walk(wire)
    return w.opt() is None or w.opt() is w.rrs[-1]


def options_of(wire: bytes):
    opt = walk(wire).opt()
    if opt is None:
        return None
    rdata = opt.rdata(wire)
    out = []
    i = 0
    while i < len(rdata):
        code, ln = struct.unpack_from("!HH", rdata, i)
        out.append((code, rdata[i + 4 : i + 4 + ln]))
        i += 4 + ln
    assert i == len(rdata)
    return out


def check_padded(query: bytes, padded: bytes, block: int, keepalive: bool = False) -> None:
    """Everything the spec says about ``pad(query, block, keepalive=keepalive)``."""
    if not opt_is_last(query):
        assert padded == query, "a message with records after its OPT is returned unchanged"
        return
    stripped, had_opt = strip_padding(query, (12, 11) if keepalive else (12,))
    base = len(stripped) + 4 + (4 if keepalive else 0) + (0 if had_opt else 11)
    want_len = -(-base // block) * block
    assert len(padded) % block == 0, (len(padded), block)
    assert len(padded) == want_len, f"padded to {len(padded)}, smallest multiple of {block} is {want_len}"
    # dnspython accepts it
    m = from_wire(padded)
    assert m.edns == 0 or had_opt
    # header: unchanged but ARCOUNT
    assert padded[:10] == query[:10]
    ar_in = struct.unpack_from("!H", query, 10)[0]
    ar_out = struct.unpack_from("!H", padded, 10)[0]
    assert ar_out == ar_in + (0 if had_opt else 1)
    w_in, w_out = walk(stripped), walk(padded)
    # question and every non-OPT record byte-identical and in order
    assert [padded[s:e] for s, e in w_out.questions] == [stripped[s:e] for s, e in w_in.questions]
    non_opt = lambda w, data: [data[r.start : r.end] for r in w.rrs if r.rtype != OPT]  # noqa: E731
    assert non_opt(w_out, padded) == non_opt(w_in, stripped)
    opt_out = w_out.opt()
    assert opt_out is not None
    assert padded[opt_out.start] == 0  # root owner
    if had_opt:
        opt_in = w_in.opt()
        assert (opt_out.rclass, opt_out.ttl) == (opt_in.rclass, opt_in.ttl)
    else:
        assert opt_out.rclass == 1232 and opt_out.ttl == 0
        assert opt_out.section == 3 and opt_out.end == len(padded)
    opts = options_of(padded)
    pads = [d for c, d in opts if c == 12]
    assert len(pads) == 1, opts
    assert pads[0] == b"\x00" * len(pads[0])
    before = options_of(stripped) or []
    ignored = (12, 11) if keepalive else (12,)
    assert [o for o in opts if o[0] not in ignored] == before
    if keepalive:
        assert [o for o in opts if o[0] == 11] == [(11, b"")]
