"""DNS wire format on the per-packet path: the façade over the C core and its Python twin.

Import from here, never from ``_wire`` or ``_wire_py`` directly. The façade picks
the compiled core (``dotproxy._wire``) and falls back to the pure-Python twin
(``dotproxy._wire_py``) when the extension is missing or when the environment says
``DOTPROXY_PURE_PYTHON=1``. :data:`IMPLEMENTATION` says which was picked
(``"c"`` or ``"py"``). Both implementations have the same signatures, return
equal values and raise the same :class:`dotproxy.errors.WireError` reasons; the
test corpus runs against both.

The API
-------
``parse_query(data) -> Query``
    A query: QR clear, QDCOUNT == 1. ``Query`` has ``id``, ``opcode``, ``rd``,
    ``cd``, ``ad`` (bools), ``qname`` (lower-case presentation text, no trailing
    dot, ``"."`` for the root, special bytes escaped as dnspython does),
    ``qname_wire`` (lower-cased uncompressed wire form), ``qtype``, ``qclass`` and
    ``edns``: ``None`` or an ``Edns`` with ``udp_size``, ``do``, ``version``,
    ``options`` (a list of ``(code, bytes)``) and ``option(code)`` (the first
    option's value with that code, or ``None``; the C core reads it from the
    message without building ``options``). Every record after the question is
    walked and bounds-checked; an OPT may only appear once, in the additional
    section, owned by the root.

``scan_response(data) -> ResponseInfo``
    A response: QR set, QDCOUNT 0 or 1. ``ResponseInfo`` has ``id``, ``rcode``
    (extended when an OPT is present), ``tc``, ``aa``, ``ra``, ``ad``, ``qname``,
    ``qname_wire``, ``qtype``, ``qclass`` (``None`` when QDCOUNT is 0), the four
    section counts, ``edns`` (as in ``Query``) and ``min_ttl``: the TTL a cache should use, or ``None`` when there is
    nothing to cache. NOERROR with answers: the minimum TTL over answer and
    authority records. NXDOMAIN, or NOERROR without answers (NODATA): the RFC 2308
    negative TTL, min(SOA TTL, SOA MINIMUM) over the authority SOAs, lowered by
    any answer TTL (a CNAME chain); ``None`` without an SOA. Any other rcode:
    ``None``. TTLs above 2**31-1 count as 0 (RFC 2181 section 8). An authority
    SOA must be well formed (MNAME, RNAME, then exactly 20 bytes), else
    ``WireError("bad SOA")``: a cache never takes a TTL from a broken record.

``match_answer(message, start, end, query, strip_opt, match) -> bytes | None``
    The DoT answer path in one walk. The answer is ``message[start:end]``
    (``message`` bytes or bytearray, a connection's read buffer; no length
    prefix; ``ValueError`` unless ``0 <= start <= end <= len(message)``),
    checked as ``scan_response()`` checks it (same ``WireError``). ``None`` when it
    does not answer ``query`` (a ``Query`` from ``parse_query``): it must repeat
    the question (``qname_wire`` in any case, ``qtype``, ``qclass``) or, with
    QDCOUNT 0, carry an rcode (extended) other than NOERROR. Otherwise exactly
    what ``set_id(message[start:end], query.id, strip_opt=strip_opt)`` returns or
    raises. ``match`` is an ``AnswerMatch`` (``AnswerMatch()``, one reused for
    every answer): each call sets its ``keepalive`` to -1 first and, when it
    returns bytes, to the value of the answer's first edns-tcp-keepalive option
    (RFC 7828, units of 100 ms) if that option has exactly 2 bytes. The C core
    allocates nothing but the answer it returns; compiled modules ``cimport`` it
    from ``dotproxy._wire``.

``set_id(data, id, strip_opt=False) -> bytes``
    The message with its ID replaced; with ``strip_opt``, also as ``strip_opt()``
    returns it (one copy: an answer on its way to a client that sent no EDNS).
    The strip walks the message with the new ID in place.

``frame_query(query, id, pad_block=None, keepalive=False) -> bytes``
    The query as one DNS-over-stream frame (RFC 7766): the two-octet length, then
    the message with its ID replaced by ``id`` and, with ``pad_block``, padded as
    ``pad(query, pad_block, keepalive=keepalive)`` pads it (the query walked as it
    arrived, then its ID replaced). Where padding cannot be done (it would pass 65535
    bytes, ARCOUNT is full) the message goes unpadded.
    ``WireError("short header")`` below 12 bytes; ``ValueError`` for an ID out of
    range, a block below 1, or a message over 65535 bytes.

``age_ttls(data, seconds) -> bytes``
    Every RR TTL except OPT's lowered by ``seconds``, floored at 0.

``cache_key(query) -> bytes``
    ``qname_wire + qtype(2) + qclass(2) + flags(1)`` where flags bit 0 is DO and
    bit 1 is CD; ``query`` is a ``Query`` or the query's bytes.

``make_error(query, rcode, *, ede=None) -> bytes``
    An error answer (FORMERR, SERVFAIL, NXDOMAIN, REFUSED, ...) for ``query``
    bytes: ID, opcode, RD, CD and the question echoed, RA set; an OPT (our UDP
    size, the client's DO bit) when the query had one, carrying an RFC 8914
    Extended DNS Error when ``ede=(info_code, text)``. Only a readable header is
    needed: an unparsable question gives a header-only answer (QDCOUNT 0).

``truncate(response, max_size) -> bytes``
    The response unchanged when it fits; otherwise header, question and OPT
    only, with TC set (OPT dropped too if even that does not fit).

``pad(query, block=128, *, keepalive=False) -> bytes``
    RFC 7830 / RFC 8467 block padding: the message length becomes a multiple of
    ``block`` through an EDNS(0) Padding option (an OPT is added when absent;
    an existing Padding option is replaced). ``keepalive`` also asks for the
    server's idle timeout with an empty RFC 7828 edns-tcp-keepalive option. A
    message with records after its OPT (a TSIG) is returned unchanged.

``strip_opt(data) -> bytes``
    The message without its OPT record: the answer to a client that sent no
    EDNS when we added one upstream (unchanged when records follow the OPT).

``set_id``, ``frame_query``, ``parse_query``, ``scan_response`` and ``match_answer``
are ``cpdef`` in the C core: compiled modules call them as C functions (their
arguments may be passed by keyword from Python, but are not keyword-only: Cython
cannot declare that for a ``cpdef`` function).

Malformed input raises :class:`dotproxy.errors.WireError` and nothing else. Its
``reason`` is one of: "short header", "not a query", "not a response",
"QDCOUNT is not 1", "QDCOUNT above 1", "name runs past the end", "label too
long", "name too long", "bad compression pointer", "record runs past the end",
"bad OPT", "bad SOA", "trailing data".
"""

from __future__ import annotations

from dotproxy import compiled as _compiled
from dotproxy.errors import WireError

if _compiled.PURE_PYTHON:  # read once, when dotproxy was imported: every module agrees
    from dotproxy import _wire_py as _impl

    IMPLEMENTATION = "py"
else:
    try:
        from dotproxy import _wire as _impl
    except ImportError:  # the extension was not built: run on the twin
        from dotproxy import _wire_py as _impl

        IMPLEMENTATION = "py"
    else:
        IMPLEMENTATION = "c"

Query = _impl.Query
Edns = _impl.Edns
ResponseInfo = _impl.ResponseInfo
AnswerMatch = _impl.AnswerMatch
parse_query = _impl.parse_query
scan_response = _impl.scan_response
match_answer = _impl.match_answer
set_id = _impl.set_id
frame_query = _impl.frame_query
age_ttls = _impl.age_ttls
cache_key = _impl.cache_key
make_error = _impl.make_error
truncate = _impl.truncate
pad = _impl.pad
strip_opt = _impl.strip_opt

#: EDNS(0) option codes and the Extended DNS Error info codes the engine uses.
OPT_KEEPALIVE = 11
OPT_PADDING = 12
OPT_EDE = 15

__all__ = [
    "IMPLEMENTATION",
    "AnswerMatch",
    "Edns",
    "Query",
    "ResponseInfo",
    "WireError",
    "age_ttls",
    "cache_key",
    "frame_query",
    "make_error",
    "match_answer",
    "pad",
    "parse_query",
    "scan_response",
    "set_id",
    "strip_opt",
    "truncate",
]
