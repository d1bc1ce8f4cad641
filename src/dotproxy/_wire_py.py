"""Pure-Python twin of the C wire core ``dotproxy._wire``.

Same signatures, same values, same :class:`WireError` reasons: the test corpus
runs against both. The algorithm is written once here in plain Python and
mirrored line for line in ``_wire.pyx``; change them together.

Parsing rules shared by both (dnspython's, made explicit):

* a compression pointer must point strictly before the start of the name it is
  in, and every further pointer strictly before the previous target, so a
  pointer chain always ends and never leaves the message;
* label length bytes 0x40..0xBF are rejected, names above 255 octets too;
* every record is bounds-checked, an OPT may appear once, in the additional
  section, owned by the root, and its options must fill its RDATA exactly;
* bytes after the last record are an error.
"""

from __future__ import annotations

from operator import index
from struct import Struct

from dotproxy.errors import WireError

_U16 = Struct("!H")
_U32 = Struct("!I")
_COUNTS = Struct("!HHHH")
_RR_FIXED = Struct("!HHIH")  # type, class, ttl, rdlength
_QTAIL = Struct("!HH")
_KEY_TAIL = Struct("!HHB")
_OPT_FIXED = Struct("!HHIH")

TYPE_SOA = 6
TYPE_OPT = 41
_SIGNATURE_TYPES = (24, 250)  # SIG(0), TSIG: they must stay last
OPT_KEEPALIVE = 11
OPT_PADDING = 12
OPT_EDE = 15
RCODE_NOERROR = 0
RCODE_NXDOMAIN = 3
#: The UDP payload size we advertise in OPT records we write (DNS flag day 2020).
EDNS_UDP_SIZE = 1232
_MAX_TTL = 0x7FFFFFFF
_SECTION_ADDITIONAL = 3

# Presentation text of each byte inside a label, as dnspython writes it.
_SPECIAL = b'"().;\\@$'
_BYTE_TEXT = tuple(
    "\\" + chr(b) if b in _SPECIAL else chr(b) if 0x21 <= b <= 0x7E else "\\%03d" % b
    for b in range(256)
)
# Bytes that need no escaping; a label made only of these decodes as ASCII.
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in _SPECIAL)


class Edns:
    """The EDNS(0) OPT record of a message."""

    __slots__ = ("udp_size", "do", "version", "options")

    def __init__(self, udp_size: int, do: bool, version: int, options: list) -> None:
        self.udp_size = udp_size
        self.do = do
        self.version = version
        self.options = options

    def option(self, code: int) -> bytes | None:
        """The value of the first option with this code, or None."""
        for c, value in self.options:
            if c == code:
                return value
        return None

    def __repr__(self) -> str:
        return (
            f"Edns(udp_size={self.udp_size}, do={self.do}, "
            f"version={self.version}, options={self.options!r})"
        )


class Query:
    """What the forwarder needs to know of a query, read in one pass."""

    __slots__ = ("id", "opcode", "rd", "cd", "ad", "qname", "qname_wire", "qtype", "qclass", "edns")

    def __repr__(self) -> str:
        return (
            f"Query(id={self.id}, qname={self.qname!r}, qtype={self.qtype}, "
            f"qclass={self.qclass}, rd={self.rd}, cd={self.cd}, ad={self.ad}, "
            f"opcode={self.opcode}, edns={self.edns!r})"
        )


class ResponseInfo:
    """What the forwarder needs to know of a response, read in one pass."""

    __slots__ = (
        "id", "rcode", "tc", "aa", "ra", "ad", "qname", "qname_wire", "qtype", "qclass",
        "qdcount", "ancount", "nscount", "arcount", "min_ttl", "edns",
    )

    def __repr__(self) -> str:
        return (
            f"ResponseInfo(id={self.id}, rcode={self.rcode}, qname={self.qname!r}, "
            f"qtype={self.qtype}, counts=({self.qdcount}, {self.ancount}, "
            f"{self.nscount}, {self.arcount}), tc={self.tc}, min_ttl={self.min_ttl})"
        )


# --------------------------------------------------------------------------- names


def _walk_name(data: bytes, off: int, labels: list | None) -> int:
    """Validate the name at ``off`` and return the offset after it; with ``labels``, also
    append its uncompressed wire form there, label by label (the C core's ``out`` buffer)."""
    n = len(data)
    limit = off  # a pointer must land strictly before this
    total = 0
    end = -1
    while True:
        if off >= n:
            raise WireError("name runs past the end")
        length = data[off]
        if length == 0:
            if labels is not None:
                labels.append(b"\x00")
            return off + 1 if end < 0 else end
        if length < 0x40:
            nxt = off + 1 + length
            if nxt > n:
                raise WireError("name runs past the end")
            total += length + 1
            if total > 254:  # the root octet still has to fit in 255
                raise WireError("name too long")
            if labels is not None:
                labels.append(data[off:nxt])
            off = nxt
        elif length >= 0xC0:
            if off + 1 >= n:
                raise WireError("name runs past the end")
            target = ((length & 0x3F) << 8) | data[off + 1]
            if target >= limit:
                raise WireError("bad compression pointer")
            if end < 0:
                end = off + 2
            limit = target
            off = target
        else:
            raise WireError("label too long")


def _read_name(data: bytes, off: int) -> tuple[bytes, int]:
    """The uncompressed wire form of the name at ``off``, and the offset after it."""
    labels: list = []
    end = _walk_name(data, off, labels)
    return b"".join(labels), end


def _skip_name(data: bytes, off: int) -> int:
    return _walk_name(data, off, None)


def _name_text(wire: bytes) -> str:
    """Presentation text of an uncompressed wire name, no trailing dot, ``"."`` for the root."""
    if len(wire) == 1:
        return "."
    parts = []
    off = 0
    length = wire[0]
    while length:
        label = wire[off + 1 : off + 1 + length]
        if label.translate(None, _PLAIN):
            parts.append("".join([_BYTE_TEXT[b] for b in label]))
        else:
            parts.append(label.decode("ascii"))
        off += length + 1
        length = wire[off]
    return ".".join(parts)


# ------------------------------------------------------------------------- records


def _as_bytes(data) -> bytes:
    if type(data) is bytes:
        return data
    return bytes(memoryview(data))  # any bytes-like object; never bytes(int)


def _check_header(data: bytes) -> None:
    if len(data) < 12:
        raise WireError("short header")


def _skip_questions(data: bytes, off: int, count: int) -> int:
    n = len(data)
    for _ in range(count):
        off = _skip_name(data, off) + 4
        if off > n:
            raise WireError("record runs past the end")
    return off


def _parse_opt(data: bytes, start: int, end: int) -> list:
    options = []
    off = start
    while off < end:
        if off + 4 > end:
            raise WireError("bad OPT")
        code, length = _QTAIL.unpack_from(data, off)
        off += 4
        if off + length > end:
            raise WireError("bad OPT")
        options.append((code, data[off : off + length]))
        off += length
    return options


def _record_header(data: bytes, off: int, section: int, opt_seen: bool) -> tuple[int, int, int, int, int]:
    """Check the record at ``off``: return (type, class, ttl, rdata offset, rdata end)."""
    owner = off
    off = _skip_name(data, off)
    if off + 10 > len(data):
        raise WireError("record runs past the end")
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, off)
    rdata = off + 10
    rend = rdata + rdlen
    if rend > len(data):
        raise WireError("record runs past the end")
    if rtype == TYPE_OPT and (section != _SECTION_ADDITIONAL or opt_seen or data[owner] != 0):
        raise WireError("bad OPT")
    return rtype, rclass, ttl, rdata, rend


def _soa_minimum(data: bytes, rdata: int, rend: int) -> int:
    off = _skip_name(data, _skip_name(data, rdata))  # MNAME, RNAME
    if off + 20 != rend:
        raise WireError("bad SOA")
    return _U32.unpack_from(data, rend - 4)[0]


# ------------------------------------------------------------------------ the API


def parse_query(data: bytes) -> Query:
    """Read a query; see ``dotproxy.wire`` for the contract."""
    data = _as_bytes(data)
    _check_header(data)
    ident, flags = _QTAIL.unpack_from(data, 0)
    if flags & 0x8000:
        raise WireError("not a query")
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(data, 4)
    if qdcount != 1:
        raise WireError("QDCOUNT is not 1")
    qname_wire, off = _read_name(data, 12)
    if off + 4 > len(data):
        raise WireError("record runs past the end")
    qtype, qclass = _QTAIL.unpack_from(data, off)
    off += 4
    edns = None
    section = 1
    for count in (ancount, nscount, arcount):
        for _ in range(count):
            rtype, rclass, ttl, rdata, off = _record_header(data, off, section, edns is not None)
            if rtype == TYPE_OPT:
                edns = Edns(rclass, bool(ttl & 0x8000), (ttl >> 16) & 0xFF, _parse_opt(data, rdata, off))
        section += 1
    if off != len(data):
        raise WireError("trailing data")
    q = Query()
    q.id = ident
    q.opcode = (flags >> 11) & 0xF
    q.rd = bool(flags & 0x0100)
    q.ad = bool(flags & 0x0020)
    q.cd = bool(flags & 0x0010)
    q.qname_wire = qname_wire.lower()
    q.qname = _name_text(q.qname_wire)
    q.qtype = qtype
    q.qclass = qclass
    q.edns = edns
    return q


def scan_response(data: bytes) -> ResponseInfo:
    """Read a response; see ``dotproxy.wire`` for the contract."""
    data = _as_bytes(data)
    _check_header(data)
    ident, flags = _QTAIL.unpack_from(data, 0)
    if not flags & 0x8000:
        raise WireError("not a response")
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(data, 4)
    if qdcount > 1:
        raise WireError("QDCOUNT above 1")
    off = 12
    qname = qname_wire = qtype = qclass = edns = None
    if qdcount:
        qname_wire, off = _read_name(data, 12)
        if off + 4 > len(data):
            raise WireError("record runs past the end")
        qtype, qclass = _QTAIL.unpack_from(data, off)
        off += 4
        qname_wire = qname_wire.lower()
        qname = _name_text(qname_wire)
    rcode = flags & 0xF
    opt_seen = False
    min_answer = min_authority = negative = None
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            rtype, rclass, ttl, rdata, off = _record_header(data, off, section, opt_seen)
            if rtype == TYPE_OPT:
                opt_seen = True
                rcode |= (ttl >> 24) << 4
                edns = Edns(rclass, bool(ttl & 0x8000), (ttl >> 16) & 0xFF, _parse_opt(data, rdata, off))
                continue
            if ttl > _MAX_TTL:
                ttl = 0
            if section == 1:
                if min_answer is None or ttl < min_answer:
                    min_answer = ttl
            elif section == 2:
                if min_authority is None or ttl < min_authority:
                    min_authority = ttl
                if rtype == TYPE_SOA:
                    minimum = _soa_minimum(data, rdata, off)
                    if minimum > _MAX_TTL:
                        minimum = 0
                    if minimum < ttl:
                        ttl = minimum
                    if negative is None or ttl < negative:
                        negative = ttl
    if off != len(data):
        raise WireError("trailing data")
    min_ttl = None
    if rcode == RCODE_NOERROR and ancount:
        min_ttl = min_answer if min_authority is None or min_answer < min_authority else min_authority
    elif rcode == RCODE_NXDOMAIN or rcode == RCODE_NOERROR:
        if negative is not None:
            min_ttl = negative if min_answer is None or negative < min_answer else min_answer
    info = ResponseInfo()
    info.id = ident
    info.rcode = rcode
    info.tc = bool(flags & 0x0200)
    info.aa = bool(flags & 0x0400)
    info.ra = bool(flags & 0x0080)
    info.ad = bool(flags & 0x0020)
    info.qname = qname
    info.qname_wire = qname_wire
    info.qtype = qtype
    info.qclass = qclass
    info.qdcount = qdcount
    info.ancount = ancount
    info.nscount = nscount
    info.arcount = arcount
    info.min_ttl = min_ttl
    info.edns = edns
    return info


class AnswerMatch:
    """What match_answer() found besides the answer; one object, reused for every answer."""

    __slots__ = ("keepalive",)

    def __init__(self) -> None:
        self.keepalive = -1  # edns-tcp-keepalive in units of 100 ms, or -1

    def __repr__(self) -> str:
        return f"AnswerMatch(keepalive={self.keepalive})"


def match_answer(message, start: int, end: int, query: Query, strip_opt: bool, match: AnswerMatch) -> bytes | None:
    """The answer in ``message[start:end]`` as the client of ``query`` must see it, or None
    when it does not answer ``query``; see ``dotproxy.wire``.

    The composition it stands for: scan_response(), the question compared, set_id().
    """
    if not isinstance(query, Query) or not isinstance(match, AnswerMatch):
        raise TypeError("match_answer() needs a Query and an AnswerMatch")
    match.keepalive = -1
    if not isinstance(message, (bytes, bytearray)):
        raise TypeError(f"match_answer() needs bytes or bytearray, not {type(message).__name__}")
    start = index(start)
    end = index(end)
    if not 0 <= start <= end <= len(message):
        raise ValueError(f"no message at [{start}:{end}] of {len(message)} bytes")
    try:
        question = (query.qname_wire, query.qtype, query.qclass)
    except AttributeError:
        raise ValueError("a Query comes from parse_query(), not from Query()") from None
    data = bytes(message[start:end])
    info = scan_response(data)
    # answers(): it repeats the question (the name in any case), or it is an error without one.
    if info.qdcount:
        if (info.qname_wire, info.qtype, info.qclass) != question:
            return None
    elif info.rcode == RCODE_NOERROR:
        return None
    out = set_id(data, query.id, strip_opt=strip_opt)
    if info.edns is not None:
        value = info.edns.option(OPT_KEEPALIVE)
        if value is not None and len(value) == 2:
            match.keepalive = _U16.unpack(value)[0]
    return out


def set_id(data: bytes, id: int, strip_opt: bool = False) -> bytes:  # noqa: A002 - the API's name
    """The message with its ID replaced by ``id``; with ``strip_opt``, also without its
    OPT record, as :func:`strip_opt`."""
    data = _as_bytes(data)
    out = _U16.pack(_header_and_id(data, id)) + data[2:]
    return _strip_opt(out) if strip_opt else out


def frame_query(query: bytes, id: int, pad_block: int | None = None, keepalive: bool = False) -> bytes:  # noqa: A002
    """The query as one DNS-over-stream frame: see ``dotproxy.wire``."""
    query = _as_bytes(query)
    new_id = _header_and_id(query, id)
    out = query
    if pad_block is not None:
        block = index(pad_block)
        if block < 1:
            raise ValueError(f"padding block must be positive: {block}")
        try:
            out = pad(query, block, keepalive=keepalive)
        except ValueError:  # no room to pad (or not a message pad() can walk): it goes unpadded
            out = query
    if len(out) > 0xFFFF:
        raise ValueError(f"message too long for a stream frame: {len(out)} bytes")
    return _U16.pack(len(out)) + _U16.pack(new_id) + out[2:]


def _header_and_id(data: bytes, id) -> int:  # noqa: A002 - the API's name
    """Check ``data`` has a header and ``id`` is a DNS message ID; return the ID."""
    _check_header(data)
    id = index(id)  # noqa: A001
    if not 0 <= id <= 0xFFFF:
        raise ValueError(f"DNS message ID out of range: {id}")
    return id


def _walk_records(data: bytes) -> tuple[int, list]:
    """Bounds-check a whole message: (end of questions, [(type, ttl offset, start, end)] of each RR)."""
    _check_header(data)
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(data, 4)
    off = _skip_questions(data, 12, qdcount)
    qend = off
    records = []
    opt_seen = False
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            start = off
            rtype, _rclass, _ttl, rdata, off = _record_header(data, off, section, opt_seen)
            if rtype == TYPE_OPT:
                opt_seen = True
                _parse_opt(data, rdata, off)
            records.append((rtype, rdata - 6, start, off))
    if off != len(data):
        raise WireError("trailing data")
    return qend, records


def age_ttls(data: bytes, seconds: int) -> bytes:
    """Every RR TTL except OPT's lowered by ``seconds``, floored at 0."""
    data = _as_bytes(data)
    seconds = index(seconds)
    if seconds < 0:
        raise ValueError(f"cannot age TTLs by a negative time: {seconds}")
    _qend, records = _walk_records(data)
    out = bytearray(data)
    for rtype, ttl_off, _start, _end in records:
        if rtype == TYPE_OPT:
            continue
        ttl = _U32.unpack_from(data, ttl_off)[0]
        ttl = 0 if ttl > _MAX_TTL or ttl <= seconds else ttl - seconds
        _U32.pack_into(out, ttl_off, ttl)
    return bytes(out)


def cache_key(query) -> bytes:
    """Cache key of a query: lower-cased name, type, class and the DO and CD bits."""
    if not isinstance(query, Query):
        query = parse_query(query)
    flags = (1 if query.edns is not None and query.edns.do else 0) | (2 if query.cd else 0)
    return query.qname_wire + _KEY_TAIL.pack(query.qtype, query.qclass, flags)


def _opt_record(rcode: int, do: bool, rdata: bytes) -> bytes:
    ttl = ((rcode >> 4) & 0xFF) << 24 | (0x8000 if do else 0)
    return b"\x00" + _OPT_FIXED.pack(TYPE_OPT, EDNS_UDP_SIZE, ttl, len(rdata)) + rdata


def make_error(query: bytes, rcode: int, *, ede=None) -> bytes:
    """An error answer to ``query`` with ``rcode``; see ``dotproxy.wire``."""
    query = _as_bytes(query)
    _check_header(query)
    rcode = index(rcode)
    if not 0 <= rcode <= 0xFFF:
        raise ValueError(f"rcode out of range: {rcode}")
    try:
        qend, records = _walk_records(query)
        if _COUNTS.unpack_from(query, 4)[0] != 1:
            raise WireError("QDCOUNT is not 1")
    except WireError:
        question = b""
        opt = None
    else:
        question = query[12:qend]
        opt = next((r for r in records if r[0] == TYPE_OPT), None)
    if opt is None and rcode > 0xF:
        raise ValueError(f"rcode {rcode} needs EDNS, and the query has none")
    flags = (query[2] & 0x79) | 0x80  # opcode and RD kept, QR set, AA and TC clear
    flags2 = 0x80 | (query[3] & 0x10) | (rcode & 0xF)  # RA, CD kept
    header = query[:2] + bytes((flags, flags2, 0, 1 if question else 0, 0, 0, 0, 0, 0, 1 if opt else 0))
    if opt is None:
        return header + question
    do = bool(query[opt[1] + 2] & 0x80)
    rdata = b""
    if ede is not None:
        info_code, text = ede
        info_code = index(info_code)
        extra = text.encode("utf-8")
        if not 0 <= info_code <= 0xFFFF:
            raise ValueError(f"EDE info code out of range: {info_code}")
        if 12 + len(question) + 11 + 6 + len(extra) > 0xFFFF:
            raise ValueError("EDE text too long for a DNS message")
        rdata = _QTAIL.pack(OPT_EDE, 2 + len(extra)) + _U16.pack(info_code) + extra
    return header + question + _opt_record(rcode, do, rdata)


def truncate(response: bytes, max_size: int) -> bytes:
    """Fit ``response`` into ``max_size`` bytes, setting TC when anything is dropped."""
    response = _as_bytes(response)
    max_size = index(max_size)
    if max_size < 12:
        raise ValueError(f"no DNS message fits in {max_size} bytes")
    if len(response) <= max_size:
        return response
    qend, records = _walk_records(response)
    opt = next((response[r[2] : r[3]] for r in records if r[0] == TYPE_OPT), b"")
    qdcount = _U16.unpack_from(response, 4)[0]
    if qend + len(opt) > max_size:
        opt = b""
    if qend > max_size:
        qend = 12
        qdcount = 0
    flags = bytes((response[2] | 0x02, response[3]))
    counts = _COUNTS.pack(qdcount, 0, 0, 1 if opt else 0)
    return response[:2] + flags + counts + response[12:qend] + opt


def pad(query: bytes, block: int = 128, *, keepalive: bool = False) -> bytes:
    """RFC 7830 padding to a multiple of ``block`` bytes; see ``dotproxy.wire``."""
    query = _as_bytes(query)
    block = index(block)
    if block < 1:
        raise ValueError(f"padding block must be positive: {block}")
    _qend, records = _walk_records(query)
    for position, (rtype, ttl_off, start, end) in enumerate(records):
        if rtype == TYPE_OPT:
            if position != len(records) - 1:
                # Records after the OPT (a TSIG) sign the bytes before them: leave the message alone.
                return query
            rdata = ttl_off + 6
            options = b"".join(
                _QTAIL.pack(code, len(value)) + value
                for code, value in _parse_opt(query, rdata, end)
                if code != OPT_PADDING and not (keepalive and code == OPT_KEEPALIVE)
            )
            head = query[:ttl_off + 4]
            arcount = None
            break
    else:
        if records and records[-1][0] in _SIGNATURE_TYPES:
            return query  # a TSIG or SIG(0) signs what is before it: an OPT after it would break it
        options = b""
        head = query + _opt_record(0, False, b"")[:-2]
        arcount = _U16.unpack_from(query, 10)[0] + 1
        if arcount > 0xFFFF:
            raise ValueError("no room for an OPT record: ARCOUNT is full")
    if keepalive:
        options += _QTAIL.pack(OPT_KEEPALIVE, 0)
    size = len(head) + 2 + len(options) + 4
    padding = -size % block
    if size + padding > 0xFFFF:
        raise ValueError("message too large to pad")
    rdata = options + _QTAIL.pack(OPT_PADDING, padding) + bytes(padding)
    out = head + _U16.pack(len(rdata)) + rdata
    if arcount is not None:
        out = out[:10] + _U16.pack(arcount) + out[12:]
    return out


def strip_opt(data: bytes) -> bytes:
    """The message without its OPT record (for a client that sent no EDNS).

    A message with records after its OPT (a TSIG) is returned unchanged: those
    records sign the bytes before them.
    """
    return _strip_opt(_as_bytes(data))


def _strip_opt(data: bytes) -> bytes:
    _qend, records = _walk_records(data)
    if not records or records[-1][0] != TYPE_OPT:
        return data
    _rtype, _ttl_off, start, _end = records[-1]
    arcount = _U16.unpack_from(data, 10)[0] - 1
    return data[:10] + _U16.pack(arcount) + data[12:start]
