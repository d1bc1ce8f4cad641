# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The C wire core: the per-packet DNS path.

Mirrors ``_wire_py.py`` function for function: same signatures, same values, same
``WireError`` reasons. Every read is bounds-checked against the message length by
hand (the directives above turn Cython's own checks off), so change the two
files together and run the shared corpus.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Check, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcmp, memcpy, memset

from dotproxy.errors import WireError

cdef extern from *:
    """
    #define DP_NO_TTL 0xFFFFFFFFu  /* "none seen": above any effective TTL */
    #define DP_MAX_TTL 0x7FFFFFFFu
    """
    const uint32_t NO_TTL "DP_NO_TTL"
    const uint32_t MAX_TTL "DP_MAX_TTL"

cdef enum:
    TYPE_SOA = 6
    TYPE_OPT = 41
    OPT_KEEPALIVE = 11
    OPT_PADDING = 12
    OPT_EDE = 15
    RCODE_NOERROR = 0
    RCODE_NXDOMAIN = 3
    EDNS_UDP_SIZE = 1232  # what we advertise in OPT records we write (DNS flag day 2020)
    SECTION_ADDITIONAL = 3


# Byte classes for presentation text, as dnspython writes names:
# 0 = literal, 1 = backslash + the byte, 2 = \DDD.
cdef uint8_t BYTE_CLASS[256]


cdef void _init_byte_class():
    cdef int b
    for b in range(256):
        if b in b'"().;\\@$':
            BYTE_CLASS[b] = 1
        elif 0x21 <= b <= 0x7E:
            BYTE_CLASS[b] = 0
        else:
            BYTE_CLASS[b] = 2


_init_byte_class()


cdef class Edns:
    """The EDNS(0) OPT record of a message."""

    def __init__(self, int udp_size, bint do, int version, list options):
        self.udp_size = udp_size
        self.do = do
        self.version = version
        self._options = options

    @property
    def options(self):
        # Built on first use from the message: a forwarder rarely reads them (an answer's
        # padding alone would be a copy of hundreds of bytes per answer).
        if self._options is None:
            self._options = _opt_options(<const uint8_t*>PyBytes_AS_STRING(self._message), self._rdata, self._rdend)
            self._message = None
        return self._options

    def option(self, int code):
        """The value of the first option with this code, or None."""
        cdef const uint8_t* p
        cdef Py_ssize_t off, length
        if self._options is not None:
            for c, value in self._options:
                if c == code:
                    return value
            return None
        p = <const uint8_t*>PyBytes_AS_STRING(self._message)
        off = self._rdata
        while off < self._rdend:  # checked by _check_opt when the message was read
            length = _u16(p + off + 2)
            if _u16(p + off) == code:
                return PyBytes_FromStringAndSize(<const char*>p + off + 4, length)
            off += 4 + length
        return None

    def __repr__(self):
        return (
            f"Edns(udp_size={self.udp_size}, do={self.do}, "
            f"version={self.version}, options={self.options!r})"
        )


cdef class Query:
    """What the forwarder needs to know of a query, read in one pass."""

    @property
    def qname(self):
        # Built on first use: the forwarding path needs only qname_wire.
        if self.qname_wire is None:
            raise ValueError("a Query comes from parse_query(), not from Query()")
        if self._qname is None:
            self._qname = _name_text(self.qname_wire)
        return self._qname

    def __repr__(self):
        return (
            f"Query(id={self.id}, qname={self.qname!r}, qtype={self.qtype}, "
            f"qclass={self.qclass}, rd={self.rd}, cd={self.cd}, ad={self.ad}, "
            f"opcode={self.opcode}, edns={self.edns!r})"
        )


cdef class ResponseInfo:
    """What the forwarder needs to know of a response, read in one pass."""

    @property
    def qname(self):
        # Built on first use, as Query's: forwarding compares qname_wire only.
        if self._qname is None and self.qname_wire is not None:
            self._qname = _name_text(self.qname_wire)
        return self._qname

    def __repr__(self):
        return (
            f"ResponseInfo(id={self.id}, rcode={self.rcode}, qname={self.qname!r}, "
            f"qtype={self.qtype}, counts=({self.qdcount}, {self.ancount}, "
            f"{self.nscount}, {self.arcount}), tc={self.tc}, min_ttl={self.min_ttl})"
        )


# ------------------------------------------------------------------ helpers


cdef inline uint16_t _u16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t _u32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void _put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef int _fail(str reason) except -1:
    raise WireError(reason)


cdef bytes _as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    return bytes(memoryview(data))  # any bytes-like object; never bytes(int)


# -------------------------------------------------------------------- names


# Whether a walk notes a name that points into the ID (offset 0 or 1: it reads differently
# once the ID is replaced). Only match_answer() needs to know: the walks take a Tracker*,
# and Cython makes each of them twice from the one source, the Untracked copy without the
# test, so scan_response and the other walks run the code they ran before.
cdef struct Untracked:
    bint into_id  # never written


cdef struct Tracked:
    bint into_id


ctypedef fused Tracker:
    Untracked
    Tracked


cdef Untracked* UNTRACKED = NULL


cdef Py_ssize_t _walk_name(const uint8_t* p, Py_ssize_t n, Py_ssize_t off, uint8_t* out, Tracker* track) except -1:
    """Validate the name at ``off`` and return the offset after it.

    With ``out`` (room for 255 octets) also copy its uncompressed, lower-cased wire
    form there. A ``Tracked`` walk sets ``track.into_id`` when a compression pointer
    lands on offset 0 or 1. The rules are ``_wire_py._read_name``'s.
    """
    cdef Py_ssize_t limit = off
    cdef Py_ssize_t end = -1
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t nxt, target, i
    cdef uint8_t length, c
    while True:
        if off >= n:
            return _fail("name runs past the end")
        length = p[off]
        if length == 0:
            if out != NULL:
                out[total] = 0
            return off + 1 if end < 0 else end
        if length < 0x40:
            nxt = off + 1 + length
            if nxt > n:
                return _fail("name runs past the end")
            if total + length + 1 > 254:  # the root octet still has to fit in 255
                return _fail("name too long")
            if out != NULL:
                out[total] = length
                for i in range(length):
                    c = p[off + 1 + i]
                    if 0x41 <= c <= 0x5A:
                        c += 0x20
                    out[total + 1 + i] = c
            total += length + 1
            off = nxt
        elif length >= 0xC0:
            if off + 1 >= n:
                return _fail("name runs past the end")
            target = ((length & 0x3F) << 8) | p[off + 1]
            if target >= limit:
                return _fail("bad compression pointer")
            if Tracker is Tracked:
                if target < 2:
                    track.into_id = True
            if end < 0:
                end = off + 2
            limit = target
            off = target
        else:
            return _fail("label too long")


cdef str _name_text(bytes wire):
    """Presentation text of an uncompressed wire name, no trailing dot, "." for the root."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(wire)
    cdef char buf[1024]  # 255 octets, at most 4 characters each
    cdef Py_ssize_t o = 0
    cdef Py_ssize_t off = 0
    cdef uint8_t length, c, k
    cdef int i
    if p[0] == 0:
        return "."
    length = p[0]
    while length:
        if o:
            buf[o] = b'.'
            o += 1
        for i in range(length):
            c = p[off + 1 + i]
            k = BYTE_CLASS[c]
            if k == 0:
                buf[o] = c
                o += 1
            elif k == 1:
                buf[o] = b'\\'
                buf[o + 1] = c
                o += 2
            else:
                buf[o] = b'\\'
                buf[o + 1] = 0x30 + c // 100
                buf[o + 2] = 0x30 + (c // 10) % 10
                buf[o + 3] = 0x30 + c % 10
                o += 4
        off += length + 1
        length = p[off]
    return PyUnicode_DecodeASCII(buf, o, NULL)


# ------------------------------------------------------------------ records


cdef struct RR:
    uint16_t rtype
    uint16_t rclass
    uint32_t ttl
    Py_ssize_t start
    Py_ssize_t rdata
    Py_ssize_t end


cdef Py_ssize_t _read_rr(const uint8_t* p, Py_ssize_t n, Py_ssize_t off, int section, bint opt_seen, RR* rr,
                         Tracker* track) except -1:
    """Check the record at ``off``, fill ``rr``, return the offset after it (``track`` as
    ``_walk_name``'s, for the owner name)."""
    rr.start = off
    off = _walk_name(p, n, off, NULL, track)
    if off + 10 > n:
        return _fail("record runs past the end")
    rr.rtype = _u16(p + off)
    rr.rclass = _u16(p + off + 2)
    rr.ttl = _u32(p + off + 4)
    rr.rdata = off + 10
    rr.end = rr.rdata + _u16(p + off + 8)
    if rr.end > n:
        return _fail("record runs past the end")
    if rr.rtype == TYPE_OPT and (section != SECTION_ADDITIONAL or opt_seen or p[rr.start] != 0):
        return _fail("bad OPT")
    return rr.end


cdef int _check_opt(const uint8_t* p, Py_ssize_t off, Py_ssize_t end) except -1:
    while off < end:
        if off + 4 > end:
            return _fail("bad OPT")
        off += 4 + _u16(p + off + 2)
        if off > end:
            return _fail("bad OPT")
    return 0


cdef list _opt_options(const uint8_t* p, Py_ssize_t off, Py_ssize_t end):
    cdef list options = []
    cdef Py_ssize_t length
    _check_opt(p, off, end)
    while off < end:
        length = _u16(p + off + 2)
        options.append((_u16(p + off), PyBytes_FromStringAndSize(<const char*>p + off + 4, length)))
        off += 4 + length
    return options


cdef Edns _make_edns(bytes message, RR* rr):
    """The Edns of an OPT record whose options ``_check_opt`` has accepted."""
    cdef Edns edns = Edns.__new__(Edns)
    edns.udp_size = rr.rclass
    edns.do = (rr.ttl & 0x8000) != 0
    edns.version = (rr.ttl >> 16) & 0xFF
    edns._message = message  # options are read from it on first use
    edns._rdata = rr.rdata
    edns._rdend = rr.end
    return edns


cdef Py_ssize_t _skip_questions(const uint8_t* p, Py_ssize_t n, Py_ssize_t off, int count) except -1:
    cdef int i
    for i in range(count):
        off = _walk_name(p, n, off, NULL, UNTRACKED) + 4
        if off > n:
            return _fail("record runs past the end")
    return off


cdef inline uint32_t _soa_minimum(const uint8_t* p, Py_ssize_t n, RR* rr) except? 0xFFFFFFFF:
    cdef Py_ssize_t off = _walk_name(p, n, rr.rdata, NULL, UNTRACKED)  # MNAME
    off = _walk_name(p, n, off, NULL, UNTRACKED)  # RNAME
    if off + 20 != rr.end:
        _fail("bad SOA")
    return _u32(p + rr.end - 4)


cdef struct Layout:
    Py_ssize_t qend       # offset after the question section
    Py_ssize_t nrecords
    Py_ssize_t opt_index  # -1 without OPT
    uint16_t last_type    # type of the last record
    RR opt


cdef int _walk_message(const uint8_t* p, Py_ssize_t n, Layout* lay, uint8_t* aged, uint32_t seconds) except -1:
    """Bounds-check a whole message and find its OPT; with ``aged`` (a copy of the
    message) also lower every other TTL there by ``seconds``."""
    cdef RR rr
    cdef int section, count, i
    cdef uint32_t ttl
    cdef Py_ssize_t off
    if n < 12:
        return _fail("short header")
    off = _skip_questions(p, n, 12, _u16(p + 4))
    lay.qend = off
    lay.nrecords = 0
    lay.opt_index = -1
    for section in range(1, 4):
        count = _u16(p + 4 + 2 * section)
        for i in range(count):
            off = _read_rr(p, n, off, section, lay.opt_index >= 0, &rr, UNTRACKED)
            if rr.rtype == TYPE_OPT:
                _check_opt(p, rr.rdata, rr.end)
                lay.opt_index = lay.nrecords
                lay.opt = rr
            elif aged != NULL:
                ttl = rr.ttl
                ttl = 0 if ttl > MAX_TTL or ttl <= seconds else ttl - seconds
                _put32(aged + rr.rdata - 6, ttl)
            lay.last_type = rr.rtype
            lay.nrecords += 1
    if off != n:
        return _fail("trailing data")
    return 0


# ---------------------------------------------------------------------- API


cpdef parse_query(data):
    """Read a query; see ``dotproxy.wire`` for the contract."""
    cdef bytes b = _as_bytes(data)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef uint8_t name[256]
    cdef Py_ssize_t off, name_len
    cdef int section, count, i
    cdef RR rr
    cdef object edns = None
    cdef Query q
    if n < 12:
        _fail("short header")
    if p[2] & 0x80:
        _fail("not a query")
    if _u16(p + 4) != 1:
        _fail("QDCOUNT is not 1")
    off = _walk_name(p, n, 12, name, UNTRACKED)
    if off + 4 > n:
        _fail("record runs past the end")
    q = Query.__new__(Query)
    q.qtype = _u16(p + off)
    q.qclass = _u16(p + off + 2)
    off += 4
    for section in range(1, 4):
        count = _u16(p + 4 + 2 * section)
        for i in range(count):
            off = _read_rr(p, n, off, section, edns is not None, &rr, UNTRACKED)
            if rr.rtype == TYPE_OPT:
                _check_opt(p, rr.rdata, rr.end)
                edns = _make_edns(b, &rr)
    if off != n:
        _fail("trailing data")
    name_len = _name_len(name)
    q.id = _u16(p)
    q.opcode = (p[2] >> 3) & 0xF
    q.rd = p[2] & 0x01
    q.ad = (p[3] & 0x20) != 0
    q.cd = (p[3] & 0x10) != 0
    q.qname_wire = PyBytes_FromStringAndSize(<const char*>name, name_len)
    q.edns = edns
    return q


cdef struct Scan:
    int qdcount
    int ancount
    int qtype          # of the question; 0 when QDCOUNT is 0
    int qclass
    int rcode          # extended by the OPT's upper bits
    uint32_t min_ttl   # NO_TTL: nothing to cache
    bint has_opt
    bint opt_last      # the OPT is the message's last record (strip_opt can cut it off)
    RR opt


cdef int _scan(const uint8_t* p, Py_ssize_t n, Scan* s, uint8_t* name, Tracker* track) except -1:
    """Check a response with scan_response()'s rules, in one walk, and fill ``s``; the
    question's lower-cased name goes to ``name`` (room for 255 octets) when QDCOUNT is 1.

    scan_response() and match_answer() share it, so they accept and refuse the same bytes
    with the same reasons. A ``Tracked`` scan notes the names that set_id(strip_opt=True)
    walks again (question and owners) when they point into the ID, not those inside an
    SOA, which it skips.
    """
    cdef Py_ssize_t off = 12
    cdef int section, count, i
    cdef uint32_t ttl, minimum
    cdef uint32_t min_answer = NO_TTL
    cdef uint32_t min_authority = NO_TTL
    cdef uint32_t negative = NO_TTL
    cdef uint32_t result = NO_TTL
    cdef int rcode
    cdef bint has_opt = False
    cdef bint opt_last = False
    cdef RR rr
    memset(s, 0, sizeof(Scan))  # what the message lacks reads as 0 (and the C compiler sees it set)
    if n < 12:
        return _fail("short header")
    if not p[2] & 0x80:
        return _fail("not a response")
    s.qdcount = _u16(p + 4)
    s.ancount = _u16(p + 6)
    if s.qdcount > 1:
        return _fail("QDCOUNT above 1")
    if s.qdcount:
        off = _walk_name(p, n, 12, name, track)
        if off + 4 > n:
            return _fail("record runs past the end")
        s.qtype = _u16(p + off)
        s.qclass = _u16(p + off + 2)
        off += 4
    rcode = p[3] & 0xF
    for section in range(1, 4):
        count = _u16(p + 4 + 2 * section)
        for i in range(count):
            off = _read_rr(p, n, off, section, has_opt, &rr, track)
            if rr.rtype == TYPE_OPT:
                _check_opt(p, rr.rdata, rr.end)  # here, not later: the first broken record names the error
                has_opt = True
                opt_last = True
                s.opt = rr
                rcode |= (rr.ttl >> 24) << 4
                continue
            opt_last = False
            ttl = 0 if rr.ttl > MAX_TTL else rr.ttl
            if section == 1:
                if ttl < min_answer:
                    min_answer = ttl
            elif section == 2:
                if ttl < min_authority:
                    min_authority = ttl
                if rr.rtype == TYPE_SOA:
                    minimum = _soa_minimum(p, n, &rr)
                    if minimum > MAX_TTL:
                        minimum = 0
                    if minimum < ttl:
                        ttl = minimum
                    if ttl < negative:
                        negative = ttl
    if off != n:
        return _fail("trailing data")
    if rcode == RCODE_NOERROR and s.ancount:
        result = min_answer if min_answer < min_authority else min_authority
    elif rcode == RCODE_NXDOMAIN or rcode == RCODE_NOERROR:
        if negative != NO_TTL:
            result = negative if negative < min_answer else min_answer
    s.rcode = rcode
    s.has_opt = has_opt
    s.opt_last = opt_last
    s.min_ttl = result
    return 0


cpdef scan_response(data):
    """Read a response; see ``dotproxy.wire`` for the contract."""
    cdef bytes b = _as_bytes(data)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef uint8_t name[256]
    cdef Scan s
    cdef ResponseInfo info
    info = ResponseInfo.__new__(ResponseInfo)  # before the walk, as before _scan: a few per cent faster
    _scan(p, n, &s, name, UNTRACKED)
    if s.qdcount:
        info.qname_wire = PyBytes_FromStringAndSize(<const char*>name, _name_len(name))
        info.qtype = s.qtype
        info.qclass = s.qclass
    if s.has_opt:
        info.edns = _make_edns(b, &s.opt)
    info.id = _u16(p)
    info.rcode = s.rcode
    info.tc = (p[2] & 0x02) != 0
    info.aa = (p[2] & 0x04) != 0
    info.ra = (p[3] & 0x80) != 0
    info.ad = (p[3] & 0x20) != 0
    info.qdcount = s.qdcount
    info.ancount = s.ancount
    info.nscount = _u16(p + 8)
    info.arcount = _u16(p + 10)
    info.min_ttl = None if s.min_ttl == NO_TTL else s.min_ttl
    return info


cdef inline Py_ssize_t _name_len(const uint8_t* name) noexcept:
    """Length of an uncompressed wire name (as ``_walk_name`` copies it)."""
    cdef Py_ssize_t name_len = 1
    while name[name_len - 1] != 0:
        name_len += name[name_len - 1] + 1
    return name_len


cdef class AnswerMatch:
    """What match_answer() found besides the answer; one object, reused for every answer."""

    def __cinit__(self):
        self.keepalive = -1

    def __init__(self):  # __cinit__ alone would take any arguments and ignore them
        pass

    def __repr__(self):
        return f"AnswerMatch(keepalive={self.keepalive})"


cdef int _keepalive(const uint8_t* p, RR* opt) noexcept:
    """The first edns-tcp-keepalive option's value (units of 100 ms), -1 unless it has 2 bytes."""
    cdef Py_ssize_t off = opt.rdata
    cdef Py_ssize_t length
    while off < opt.end:  # checked by _check_opt during the walk
        length = _u16(p + off + 2)
        if _u16(p + off) == OPT_KEEPALIVE:
            return _u16(p + off + 4) if length == 2 else -1
        off += 4 + length
    return -1


cpdef match_answer(message, Py_ssize_t start, Py_ssize_t end, Query query, bint strip_opt, AnswerMatch match):
    """The answer in ``message[start:end]`` as the client of ``query`` must see it, or None
    when it does not answer ``query``; see ``dotproxy.wire``.

    One walk, and on success one allocation: the answer returned.
    """
    cdef const uint8_t* p
    cdef Py_ssize_t size, n, name_len
    cdef uint8_t name[256]
    cdef Scan s
    cdef Tracked track
    cdef bytes out
    cdef uint8_t* w
    cdef uint16_t new_id
    if query is None or match is None:
        raise TypeError("match_answer() needs a Query and an AnswerMatch, not None")
    match.keepalive = -1
    if PyBytes_Check(message):
        p = <const uint8_t*>PyBytes_AS_STRING(message)
        size = PyBytes_GET_SIZE(message)
    elif PyByteArray_Check(message):
        p = <const uint8_t*>PyByteArray_AS_STRING(message)
        size = PyByteArray_GET_SIZE(message)
    else:
        raise TypeError(f"match_answer() needs bytes or bytearray, not {type(message).__name__}")
    if not 0 <= start <= end <= size:
        raise ValueError(f"no message at [{start}:{end}] of {size} bytes")
    if query.qname_wire is None:
        raise ValueError("a Query comes from parse_query(), not from Query()")
    # From here no Python code runs while ``p`` points into the buffer (a bytearray could
    # move): bytes objects are not tracked by the GC, so allocating one runs no finalizer.
    p += start
    n = end - start
    track.into_id = False
    _scan(p, n, &s, name, &track)
    # answers(): it repeats the question (the name in any case), or it is an error without one.
    if s.qdcount:
        if s.qtype != query.qtype or s.qclass != query.qclass:
            return None
        name_len = _name_len(name)
        if name_len != PyBytes_GET_SIZE(query.qname_wire):
            return None
        if memcmp(name, PyBytes_AS_STRING(query.qname_wire), name_len):
            return None
    elif s.rcode == RCODE_NOERROR:
        return None
    new_id = <uint16_t>query.id
    if strip_opt and track.into_id and new_id != _u16(p):
        # A name reads the ID: set_id walks the answer again with the client's ID in place
        # (it may read as another name, or as none). Rare enough to take set_id's own path.
        out = PyBytes_FromStringAndSize(<const char*>p, n)
        _put16(<uint8_t*>PyBytes_AS_STRING(out), new_id)
        out = _strip_opt(out)
    elif strip_opt and s.opt_last:
        # set_id's walk would read the same bytes as ours and find the same records: cut the
        # OPT off here, as _strip_opt() does.
        out = PyBytes_FromStringAndSize(NULL, s.opt.start)
        w = <uint8_t*>PyBytes_AS_STRING(out)
        memcpy(w, p, s.opt.start)
        _put16(w, new_id)
        _put16(w + 10, _u16(p + 10) - 1)
    else:
        # No OPT, or records after it (a TSIG signs it): set_id leaves it in.
        out = PyBytes_FromStringAndSize(<const char*>p, n)
        _put16(<uint8_t*>PyBytes_AS_STRING(out), new_id)
    if s.has_opt:
        match.keepalive = _keepalive(p, &s.opt)
    return out


cpdef bytes set_id(data, id, bint strip_opt=False):
    """The message with its ID replaced by ``id``; with ``strip_opt``, also without its
    OPT record, as :func:`strip_opt` (one copy for both: an answer on its way to a client)."""
    cdef bytes b = _as_bytes(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef uint16_t new_id = _header_and_id(n, id)
    cdef bytes out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), n)
    _put16(<uint8_t*>PyBytes_AS_STRING(out), new_id)
    if strip_opt:
        # Walked with the new ID in place: a compression pointer into the header reads it.
        return _strip_opt(out)
    return out


def age_ttls(data, seconds):
    """Every RR TTL except OPT's lowered by ``seconds``, floored at 0."""
    cdef bytes b = _as_bytes(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Layout lay
    cdef bytes out
    cdef uint32_t by
    seconds = PyNumber_Index(seconds)
    if seconds < 0:
        raise ValueError(f"cannot age TTLs by a negative time: {seconds}")
    by = 0xFFFFFFFF if seconds > 0xFFFFFFFF else seconds  # any TTL is gone by then
    out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), n)
    _walk_message(<const uint8_t*>PyBytes_AS_STRING(b), n, &lay, <uint8_t*>PyBytes_AS_STRING(out), by)
    return out


def cache_key(query):
    """Cache key of a query: lower-cased name, type, class and the DO and CD bits."""
    cdef Query q
    cdef Py_ssize_t name_len
    cdef bytes out
    cdef uint8_t* o
    if type(query) is Query:
        q = <Query>query
        if q.qname_wire is None:
            raise ValueError("a Query comes from parse_query(), not from Query()")
    else:
        q = parse_query(query)
    name_len = PyBytes_GET_SIZE(q.qname_wire)
    out = PyBytes_FromStringAndSize(NULL, name_len + 5)
    o = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(o, PyBytes_AS_STRING(q.qname_wire), name_len)
    _put16(o + name_len, q.qtype)
    _put16(o + name_len + 2, q.qclass)
    o[name_len + 4] = (1 if q.edns is not None and (<Edns>q.edns).do else 0) | (2 if q.cd else 0)
    return out


cdef Py_ssize_t _put_opt(uint8_t* o, int rcode, bint do, Py_ssize_t rdlen) noexcept:
    """Write an OPT record header (owner, type, class, TTL, RDLENGTH); return its size."""
    o[0] = 0
    _put16(o + 1, TYPE_OPT)
    _put16(o + 3, EDNS_UDP_SIZE)
    _put32(o + 5, (<uint32_t>((rcode >> 4) & 0xFF) << 24) | (0x8000 if do else 0))
    _put16(o + 9, rdlen)
    return 11


def make_error(query, rcode_value, *, ede=None):
    """An error answer to ``query`` with ``rcode``; see ``dotproxy.wire``."""
    cdef bytes b = _as_bytes(query)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Layout lay
    cdef bint has_question = False
    cdef bint has_opt = False
    cdef bint do = False
    cdef Py_ssize_t qlen = 0, size, o
    cdef bytes extra = b""
    cdef int info_code = 0
    cdef bytes out
    cdef uint8_t* w
    cdef int rcode
    if n < 12:
        _fail("short header")
    rcode_value = PyNumber_Index(rcode_value)
    if not 0 <= rcode_value <= 0xFFF:
        raise ValueError(f"rcode out of range: {rcode_value}")
    rcode = rcode_value
    try:
        _walk_message(p, n, &lay, NULL, 0)
    except WireError:
        pass
    else:
        if _u16(p + 4) == 1:
            has_question = True
            qlen = lay.qend - 12
            has_opt = lay.opt_index >= 0
            if has_opt:
                do = (p[lay.opt.rdata - 4] & 0x80) != 0
    if not has_opt and rcode > 0xF:
        raise ValueError(f"rcode {rcode} needs EDNS, and the query has none")
    if has_opt and ede is not None:
        info_value, text = ede
        info_value = PyNumber_Index(info_value)
        extra = text.encode("utf-8")
        if not 0 <= info_value <= 0xFFFF:
            raise ValueError(f"EDE info code out of range: {info_value}")
        if 12 + qlen + 11 + 6 + len(extra) > 0xFFFF:
            raise ValueError("EDE text too long for a DNS message")
        info_code = info_value
    size = 12 + qlen
    if has_opt:
        size += 11 + (6 + len(extra) if ede is not None else 0)
    out = PyBytes_FromStringAndSize(NULL, size)
    w = <uint8_t*>PyBytes_AS_STRING(out)
    memset(w, 0, 12)
    w[0] = p[0]
    w[1] = p[1]
    w[2] = (p[2] & 0x79) | 0x80  # opcode and RD kept, QR set, AA and TC clear
    w[3] = 0x80 | (p[3] & 0x10) | (rcode & 0xF)  # RA, CD kept
    w[5] = 1 if has_question else 0
    w[11] = 1 if has_opt else 0
    memcpy(w + 12, p + 12, qlen)
    if has_opt:
        o = 12 + qlen
        o += _put_opt(w + o, rcode, do, size - o - 11)
        if ede is not None:
            _put16(w + o, OPT_EDE)
            _put16(w + o + 2, 2 + len(extra))
            _put16(w + o + 4, info_code)
            memcpy(w + o + 6, PyBytes_AS_STRING(extra), len(extra))
    return out


def truncate(response, max_size_value):
    """Fit ``response`` into ``max_size`` bytes, setting TC when anything is dropped."""
    cdef bytes b = _as_bytes(response)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Layout lay
    cdef Py_ssize_t qend, opt_len = 0
    cdef int qdcount
    cdef bytes out
    cdef uint8_t* w
    cdef Py_ssize_t max_size
    max_size_value = PyNumber_Index(max_size_value)
    if max_size_value < 12:
        raise ValueError(f"no DNS message fits in {max_size_value} bytes")
    if n <= max_size_value:
        return b
    max_size = max_size_value  # below n here, so it fits
    _walk_message(p, n, &lay, NULL, 0)
    qend = lay.qend
    qdcount = _u16(p + 4)
    if lay.opt_index >= 0:
        opt_len = lay.opt.end - lay.opt.start
    if qend + opt_len > max_size:
        opt_len = 0
    if qend > max_size:
        qend = 12
        qdcount = 0
    out = PyBytes_FromStringAndSize(NULL, qend + opt_len)
    w = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(w, p, qend)
    w[2] |= 0x02
    _put16(w + 4, qdcount)
    _put16(w + 6, 0)
    _put16(w + 8, 0)
    _put16(w + 10, 1 if opt_len else 0)
    if opt_len:
        memcpy(w + qend, p + lay.opt.start, opt_len)
    return out


def pad(query, block_value=128, *, bint keepalive=False):
    """RFC 7830 padding to a multiple of ``block`` bytes; see ``dotproxy.wire``."""
    cdef bytes b = _as_bytes(query)
    cdef bytes out = _padded(b, _block(block_value), keepalive, 0)
    return b if out is None else out


cpdef bytes frame_query(query, id, pad_block=None, bint keepalive=False):
    """The query as one DNS-over-stream frame: see ``dotproxy.wire``."""
    cdef bytes b = _as_bytes(query)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef bytes out = None
    cdef uint8_t* w
    cdef Py_ssize_t block
    cdef uint16_t new_id = _header_and_id(n, id)
    if pad_block is not None:
        block = _block(pad_block)
        try:
            out = _padded(b, block, keepalive, 2)
        except ValueError:  # no room to pad (or not a message pad() can walk): it goes unpadded
            out = None
    if out is None:
        if n > 0xFFFF:
            raise ValueError(f"message too long for a stream frame: {n} bytes")
        out = PyBytes_FromStringAndSize(NULL, n + 2)
        memcpy(<uint8_t*>PyBytes_AS_STRING(out) + 2, PyBytes_AS_STRING(b), n)
    w = <uint8_t*>PyBytes_AS_STRING(out)
    _put16(w, <uint16_t>(PyBytes_GET_SIZE(out) - 2))
    _put16(w + 2, new_id)
    return out


cdef int _header_and_id(Py_ssize_t n, object id) except -1:
    """Check a message of ``n`` bytes has a header and ``id`` is a DNS message ID; return the ID."""
    if n < 12:
        _fail("short header")
    id = PyNumber_Index(id)
    if not 0 <= id <= 0xFFFF:
        raise ValueError(f"DNS message ID out of range: {id}")
    return id


cdef Py_ssize_t _block(object block_value) except -1:
    block_value = PyNumber_Index(block_value)
    if block_value < 1:
        raise ValueError(f"padding block must be positive: {block_value}")
    return 0x20000 if block_value > 0x20000 else block_value  # past 65535 every block pads too far


cdef bytes _padded(bytes b, Py_ssize_t block, bint keepalive, Py_ssize_t prefix):
    """pad()'s result with ``prefix`` spare bytes in front; None where pad() leaves the message as it is."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Layout lay
    cdef Py_ssize_t head, off, length, kept, size, padding, o
    cdef bytes out
    cdef uint8_t* w
    cdef int arcount
    cdef int code
    cdef Py_ssize_t extra = 4 if keepalive else 0  # an empty edns-tcp-keepalive option
    _walk_message(p, n, &lay, NULL, 0)
    if lay.opt_index >= 0 and lay.opt_index != lay.nrecords - 1:
        # Records after the OPT (a TSIG) sign the bytes before them: leave the message alone.
        return None
    kept = 0
    if lay.opt_index >= 0:
        head = lay.opt.rdata - 2  # up to the OPT's RDLENGTH
        off = lay.opt.rdata
        while off < lay.opt.end:
            length = 4 + _u16(p + off + 2)
            code = _u16(p + off)
            if code != OPT_PADDING and not (keepalive and code == OPT_KEEPALIVE):
                kept += length
            off += length
        size = head + 2 + kept + extra + 4
    else:
        if lay.nrecords and lay.last_type in (24, 250):
            return None  # a TSIG or SIG(0) signs what is before it: an OPT after it would break it
        arcount = _u16(p + 10) + 1
        if arcount > 0xFFFF:
            raise ValueError("no room for an OPT record: ARCOUNT is full")
        head = n
        size = n + 11 + extra + 4
    padding = -size % block
    if padding < 0:
        padding += block
    if size + padding > 0xFFFF:
        raise ValueError("message too large to pad")
    out = PyBytes_FromStringAndSize(NULL, prefix + size + padding)
    w = <uint8_t*>PyBytes_AS_STRING(out) + prefix
    memcpy(w, p, head)
    if lay.opt_index >= 0:
        o = head + 2
        off = lay.opt.rdata
        while off < lay.opt.end:
            length = 4 + _u16(p + off + 2)
            code = _u16(p + off)
            if code != OPT_PADDING and not (keepalive and code == OPT_KEEPALIVE):
                memcpy(w + o, p + off, length)
                o += length
            off += length
        _put16(w + head, kept + extra + 4 + padding)
    else:
        _put16(w + 10, arcount)
        o = head + _put_opt(w + head, 0, False, extra + 4 + padding)
    if keepalive:
        _put16(w + o, OPT_KEEPALIVE)
        _put16(w + o + 2, 0)
        o += 4
    _put16(w + o, OPT_PADDING)
    _put16(w + o + 2, padding)
    memset(w + o + 4, 0, padding)
    return out


def strip_opt(data):
    """The message without its OPT record (for a client that sent no EDNS).

    A message with records after its OPT (a TSIG) is returned unchanged: those
    records sign the bytes before them.
    """
    return _strip_opt(_as_bytes(data))


cdef bytes _strip_opt(bytes b):
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Layout lay
    cdef bytes out
    cdef uint8_t* w
    _walk_message(p, n, &lay, NULL, 0)
    if lay.opt_index < 0 or lay.opt_index != lay.nrecords - 1:
        return b
    out = PyBytes_FromStringAndSize(NULL, lay.opt.start)
    w = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(w, p, lay.opt.start)
    _put16(w + 10, _u16(p + 10) - 1)
    return out
