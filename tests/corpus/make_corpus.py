#!/usr/bin/env python3
"""Regenerate the DNS packet corpus deterministically.

    python tests/corpus/make_corpus.py [OUTDIR]

writes ``OUTDIR/malformed/*.bin`` and ``OUTDIR/golden/*.bin`` (OUTDIR defaults to
this file's folder). Every packet is built byte by byte here, with no
dependency but the standard library, so the files never change with a
library's version.

A malformed file is named ``TARGET--REASON--WHAT.bin``:

* ``TARGET``: ``query`` (``parse_query`` must reject it), ``response``
  (``scan_response`` must) or ``any`` (both must);
* ``REASON``: the expected ``WireError.reason`` with ``_`` for spaces;
  ``name_or_record_runs_past_the_end`` where the spec allows either of those
  two, ``unspecified`` where it does not say;
* ``WHAT``: what is wrong, in a few words.

Each file has exactly one thing wrong with it.
"""

from __future__ import annotations

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

A, NS, CNAME, SOA, TXT, AAAA, OPT = 1, 2, 5, 6, 16, 28, 41
IN = 1


def header(id=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", id, flags, qd, an, ns, ar)


def name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(l)]) + l for l in labels) + b"\x00"


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def question(qname: bytes, qtype=A, qclass=IN) -> bytes:
    return qname + struct.pack("!HH", qtype, qclass)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass=IN, rdlen=None) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata) if rdlen is None else rdlen) + rdata


def option(code: int, data: bytes, length=None) -> bytes:
    return struct.pack("!HH", code, len(data) if length is None else length) + data


def opt(rdata=b"", udp=1232, ttl=0, owner=b"\x00", rdlen=None) -> bytes:
    return rr(owner, OPT, ttl, rdata, rclass=udp, rdlen=rdlen)


def soa_rdata(minimum=300) -> bytes:
    return name(b"ns1", b"example", b"com") + name(b"hostmaster", b"example", b"com") + struct.pack(
        "!IIIII", 2024010101, 7200, 3600, 1209600, minimum
    )


QNAME = name(b"www", b"example", b"com")  # at offset 12 in every message below
QUESTION = question(QNAME)
Q_END = 12 + len(QUESTION)  # first byte after the question
QUERY = header() + QUESTION
QUERY_FLAGS = 0x0100  # RD
RESP_FLAGS = 0x8180  # QR RD RA
ANSWER_A = rr(ptr(12), A, 300, bytes([192, 0, 2, 1]))
RESPONSE = header(flags=RESP_FLAGS, an=1) + QUESTION + ANSWER_A
COOKIE = option(10, bytes(range(8)))


def _long_name(total: int) -> bytes:
    """An uncompressed name of exactly ``total`` octets (root included)."""
    labels = []
    left = total - 1
    while left:
        n = min(63, left - 1)
        labels.append(b"x" * n)
        left -= n + 1
    out = name(*labels)
    assert len(out) == total, (len(out), total)
    return out


def malformed() -> dict[str, bytes]:
    m: dict[str, bytes] = {}

    # ---- header ----------------------------------------------------------
    m["any--short_header--empty"] = b""
    m["any--short_header--1_byte"] = b"\x12"
    m["any--short_header--11_bytes"] = QUERY[:11]

    # ---- direction and QDCOUNT ------------------------------------------------
    m["query--not_a_query--qr_set"] = header(flags=0x8100) + QUESTION
    m["query--not_a_query--full_response"] = RESPONSE
    m["query--QDCOUNT_is_not_1--qdcount_0"] = header(qd=0)
    m["query--QDCOUNT_is_not_1--qdcount_2"] = header(qd=2) + QUESTION + question(name(b"example", b"org"))
    m["response--not_a_response--qr_clear"] = QUERY
    m["response--not_a_response--qr_clear_with_answer"] = header(an=1) + QUESTION + ANSWER_A
    m["response--QDCOUNT_above_1--qdcount_2"] = header(flags=RESP_FLAGS, qd=2) + QUESTION + question(name(b"example", b"org"))

    # ---- labels ---------------------------------------------------------------
    m["query--label_too_long--0x40_in_question"] = header() + question(b"\x40" + b"a" * 64 + b"\x00")
    m["query--label_too_long--0x80_in_question"] = header() + question(b"\x03www\x80" + b"\x00")
    m["query--label_too_long--0xbf_first_label"] = header() + question(b"\xbf" + b"\x00" * 4)
    m["response--label_too_long--0x40_in_answer_owner"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        b"\x40" + b"a" * 64 + b"\x00", A, 300, bytes(4)
    )
    m["response--label_too_long--0x7f_in_authority_owner"] = header(flags=RESP_FLAGS, ns=1) + QUESTION + rr(
        b"\x01a\x7f" + b"b" * 127 + b"\x00", NS, 300, QNAME
    )
    m["query--label_too_long--0x41_in_additional_owner"] = header(ar=1) + QUESTION + rr(b"\x41" + b"c" * 65 + b"\x00", A, 1, bytes(4))

    # ---- name length ------------------------------------------------------
    m["query--name_too_long--256_octets"] = header() + question(_long_name(256))
    m["query--name_too_long--321_octets"] = header() + question(name(*[b"y" * 63] * 5))
    m["response--name_too_long--256_octets_in_question"] = header(flags=RESP_FLAGS) + question(_long_name(256))
    q200 = question(_long_name(200))
    m["response--name_too_long--pointer_makes_261"] = header(flags=RESP_FLAGS, an=1) + q200 + rr(
        b"\x3c" + b"p" * 60 + ptr(12), A, 300, bytes(4)
    )
    m["query--name_too_long--pointer_makes_261"] = header(an=1) + q200 + rr(b"\x3c" + b"p" * 60 + ptr(12), A, 300, bytes(4))
    # a chain of pointers, each step legal, growing the name past 255 octets
    q65 = question(b"\x3f" + b"q" * 63 + b"\x00")  # 65 octets
    msg = bytearray(header(flags=RESP_FLAGS, an=3) + q65)
    prev = 12
    for _ in range(3):
        here = len(msg)
        msg += rr(b"\x3f" + b"r" * 63 + ptr(prev), A, 300, bytes(4))
        prev = here
    m["response--name_too_long--pointer_chain_257"] = bytes(msg)

    # ---- compression pointers ---------------------------------------------
    m["query--bad_compression_pointer--question_points_to_itself"] = header() + question(ptr(12))
    m["query--bad_compression_pointer--question_points_forward"] = header() + question(ptr(20)) + b"\x01a\x00"
    m["query--bad_compression_pointer--question_points_outside"] = header() + question(ptr(0x3FFF))
    m["query--bad_compression_pointer--question_label_then_self"] = header() + question(b"\x01a" + ptr(12))
    off = Q_END
    m["response--bad_compression_pointer--owner_points_to_itself"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        ptr(off), A, 300, bytes(4)
    )
    m["response--bad_compression_pointer--owner_label_then_self"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        b"\x01a" + ptr(off), A, 300, bytes(4)
    )
    # owner points into its own (later) rdata, where a good name sits
    m["response--bad_compression_pointer--owner_points_forward"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        ptr(off + 2 + 10), CNAME, 300, name(b"a")
    )
    m["response--bad_compression_pointer--points_past_end"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        ptr(Q_END + 16), A, 300, bytes(4)
    )
    m["response--bad_compression_pointer--points_0x3fff"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        ptr(0x3FFF), A, 300, bytes(4)
    )
    # RR1 (opaque CNAME rdata at T) holds a pointer to RR2's owner; RR2's owner
    # points back to T: a loop that only the "each pointer strictly before the
    # previous target" rule catches.
    rr1_rdata_at = Q_END + 2 + 10
    rr2_at = rr1_rdata_at + 2
    m["response--bad_compression_pointer--loop_via_rdata"] = header(flags=RESP_FLAGS, an=2) + QUESTION + rr(
        ptr(12), CNAME, 300, ptr(rr2_at)
    ) + rr(ptr(rr1_rdata_at), A, 300, bytes(4))
    # RR2's owner -> T1 (before it): label "a", then a pointer to T1+4 (after T1)
    t1 = Q_END + 2 + 10
    rr1_rdata = b"\x01a" + ptr(t1 + 4) + b"\x01b\x00"
    m["response--bad_compression_pointer--chain_not_decreasing"] = header(flags=RESP_FLAGS, an=2) + QUESTION + rr(
        ptr(12), TXT, 300, rr1_rdata
    ) + rr(ptr(t1), A, 300, bytes(4))
    # two owners pointing at each other
    p1 = Q_END
    p2 = p1 + 2 + 10 + 4
    m["response--bad_compression_pointer--mutual_loop"] = header(flags=RESP_FLAGS, an=2) + QUESTION + rr(
        ptr(p2), A, 300, bytes(4)
    ) + rr(ptr(p1), A, 300, bytes(4))
    m["query--bad_compression_pointer--additional_owner_forward"] = header(ar=1) + QUESTION + rr(
        ptr(Q_END + 2 + 10), A, 1, b"\x00\x00\x00\x00"
    )

    # ---- running past the end -------------------------------------------------
    m["query--name_or_record_runs_past_the_end--no_question_bytes"] = header()
    m["query--name_or_record_runs_past_the_end--label_cut"] = header() + b"\x03ww"
    m["query--name_or_record_runs_past_the_end--no_root_label"] = header() + b"\x03www\x07example\x03com"
    m["query--name_or_record_runs_past_the_end--pointer_cut"] = header() + b"\x03www\xc0"
    m["query--record_runs_past_the_end--question_without_type"] = header() + QNAME
    m["query--record_runs_past_the_end--question_cut_in_type"] = header() + QNAME + b"\x00"
    m["query--record_runs_past_the_end--question_cut_in_class"] = header() + QNAME + b"\x00\x01\x00"
    m["response--record_runs_past_the_end--question_cut_in_class"] = header(flags=RESP_FLAGS) + QNAME + b"\x00\x01\x00"
    m["response--record_runs_past_the_end--rdlength_past_end"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        ptr(12), A, 300, bytes(4), rdlen=10
    )
    m["response--record_runs_past_the_end--rdlength_one_too_many"] = header(flags=RESP_FLAGS, an=1) + QUESTION + rr(
        ptr(12), A, 300, bytes(4), rdlen=5
    )
    m["response--record_runs_past_the_end--rr_header_cut"] = header(flags=RESP_FLAGS, an=1) + QUESTION + ptr(12) + b"\x00\x01\x00\x01\x00"
    m["response--record_runs_past_the_end--rr_without_rdlength"] = header(flags=RESP_FLAGS, an=1) + QUESTION + ptr(12) + b"\x00\x01\x00\x01\x00\x00\x01\x2c"
    m["query--unspecified--opt_rdlength_past_end"] = header(ar=1) + QUESTION + opt(COOKIE, rdlen=len(COOKIE) + 1)
    m["response--name_or_record_runs_past_the_end--ancount_too_big"] = header(flags=RESP_FLAGS, an=2) + QUESTION + ANSWER_A
    m["response--name_or_record_runs_past_the_end--nscount_without_records"] = header(flags=RESP_FLAGS, an=1, ns=1) + QUESTION + ANSWER_A
    m["query--name_or_record_runs_past_the_end--arcount_without_opt"] = header(ar=1) + QUESTION
    m["response--name_or_record_runs_past_the_end--owner_cut"] = header(flags=RESP_FLAGS, an=1) + QUESTION + b"\x05abc"

    # ---- OPT ------------------------------------------------------------------
    for kind, base_flags in (("query", QUERY_FLAGS), ("response", RESP_FLAGS)):
        m[f"{kind}--bad_OPT--opt_in_answer"] = header(flags=base_flags, an=1) + QUESTION + opt()
        m[f"{kind}--bad_OPT--opt_in_authority"] = header(flags=base_flags, ns=1) + QUESTION + opt()
        m[f"{kind}--bad_OPT--two_opts"] = header(flags=base_flags, ar=2) + QUESTION + opt() + opt()
        m[f"{kind}--bad_OPT--two_opts_apart"] = header(flags=base_flags, ar=3) + QUESTION + opt() + rr(ptr(12), A, 5, bytes(4)) + opt(COOKIE)
        m[f"{kind}--bad_OPT--owner_not_root"] = header(flags=base_flags, ar=1) + QUESTION + opt(owner=name(b"a"))
        m[f"{kind}--bad_OPT--owner_is_question_name"] = header(flags=base_flags, ar=1) + QUESTION + opt(owner=ptr(12))
        m[f"{kind}--bad_OPT--option_overruns_rdata"] = header(flags=base_flags, ar=1) + QUESTION + opt(option(10, bytes(6), length=8))
        m[f"{kind}--bad_OPT--option_header_cut"] = header(flags=base_flags, ar=1) + QUESTION + opt(b"\x00\x0a")
        m[f"{kind}--bad_OPT--option_header_cut_3"] = header(flags=base_flags, ar=1) + QUESTION + opt(COOKIE + b"\x00\x0c\x00")
        m[f"{kind}--bad_OPT--spare_byte_after_options"] = header(flags=base_flags, ar=1) + QUESTION + opt(option(12, b"") + b"\x00")
        m[f"{kind}--bad_OPT--second_option_overruns"] = header(flags=base_flags, ar=1) + QUESTION + opt(COOKIE + option(12, bytes(3), length=4))
    m["response--bad_OPT--opt_in_answer_of_nxdomain"] = header(flags=RESP_FLAGS | 3, an=1, ns=1) + QUESTION + opt() + rr(
        name(b"example", b"com"), SOA, 60, soa_rdata()
    )

    # ---- trailing data -------------------------------------------------------
    m["query--trailing_data--one_zero_byte"] = QUERY + b"\x00"
    m["query--trailing_data--after_opt"] = header(ar=1) + QUESTION + opt(COOKIE) + b"\xff\xff"
    m["query--trailing_data--qdcount_1_but_two_questions"] = QUERY + QUESTION
    m["response--trailing_data--junk_after_answer"] = RESPONSE + b"junk"
    m["response--trailing_data--record_not_counted"] = RESPONSE + ANSWER_A
    m["response--trailing_data--after_header_qdcount_0"] = header(flags=RESP_FLAGS, qd=0) + b"\x00"

    # ---- bad SOA: a negative TTL is taken only from a well-formed SOA -------
    nx = RESP_FLAGS | 3
    m["response--bad_SOA--only_minimum"] = header(flags=nx, ns=1) + QUESTION + rr(ptr(16), SOA, 900, struct.pack("!I", 66))
    m["response--bad_SOA--one_name_short"] = header(flags=nx, ns=1) + QUESTION + rr(
        ptr(16), SOA, 900, b"\x00" + struct.pack("!5I", 1, 2, 3, 4, 66))
    m["response--bad_SOA--four_bytes_too_many"] = header(flags=nx, ns=1) + QUESTION + rr(
        ptr(16), SOA, 900, soa_rdata(60) + struct.pack("!I", 66))
    return m


def golden() -> dict[str, bytes]:
    g: dict[str, bytes] = {}
    g["query_a"] = QUERY
    g["query_root_ns"] = header(id=0, flags=0) + question(b"\x00", NS)
    g["query_mixed_case_aaaa"] = header(id=0xFFFF) + question(name(b"WwW", b"ExAmPlE", b"CoM"), AAAA)
    g["query_odd_bytes"] = header(flags=0x0110) + question(name(b"a.b", b"x y", b"\x00\x7f\xff", b'"()\\;@$', b"com"), TXT)
    g["query_longest_name"] = header() + question(_long_name(255))
    g["query_edns_do_cookie_padding"] = header(ar=1) + QUESTION + opt(COOKIE + option(12, bytes(20)), udp=4096, ttl=0x8000)
    g["query_edns_version_1"] = header(ar=1) + QUESTION + opt(b"", udp=512, ttl=0x00010000)
    g["response_a"] = RESPONSE
    g["response_cname_chain_nxdomain"] = header(flags=RESP_FLAGS | 3, an=1, ns=1) + QUESTION + rr(
        ptr(12), CNAME, 50, name(b"gone", b"example", b"net")
    ) + rr(name(b"example", b"net"), SOA, 900, soa_rdata(600))
    g["response_nodata_soa"] = header(flags=RESP_FLAGS, ns=1) + QUESTION + rr(ptr(16), SOA, 3600, soa_rdata(120))
    g["response_ttl_top_bit"] = header(flags=RESP_FLAGS, an=2) + QUESTION + rr(ptr(12), A, 2**31, bytes(4)) + rr(ptr(12), A, 99, bytes(4))
    g["response_no_question_formerr"] = header(flags=RESP_FLAGS | 1, qd=0, ar=1) + opt()
    g["response_badvers"] = header(flags=RESP_FLAGS, ar=1) + QUESTION + opt(ttl=0x01000000)
    # pointers to pointers, each strictly before the last
    g["response_pointer_chain"] = header(flags=RESP_FLAGS, an=2) + QUESTION + rr(
        b"\x01a" + ptr(12), CNAME, 10, b"\x01b" + ptr(Q_END)
    ) + rr(b"\x01b" + ptr(Q_END), A, 20, bytes(4))
    return g


def write(outdir: str) -> list[str]:
    written = []
    for sub, packets in (("malformed", malformed()), ("golden", golden())):
        d = os.path.join(outdir, sub)
        os.makedirs(d, exist_ok=True)
        for stale in os.listdir(d):
            if stale.endswith(".bin") and stale[:-4] not in packets:
                os.remove(os.path.join(d, stale))
        for key, data in sorted(packets.items()):
            path = os.path.join(d, key + ".bin")
            with open(path, "wb") as f:
                f.write(data)
            written.append(path)
    return written


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    paths = write(out)
    print(f"wrote {len(paths)} files under {out}")
