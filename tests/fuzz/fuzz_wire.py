#!/usr/bin/env python3
"""Atheris harness: both implementations of the DNS packet core, side by side.

    python tests/fuzz/fuzz_wire.py [CORPUS_DIR ...] -max_total_time=20 -runs=N

Every input goes to every function (``match_answer`` asks the input's own question) of ``dotproxy._wire`` (C) and
``dotproxy._wire_py`` (the twin, instrumented for coverage). The harness fails
(libFuzzer reports a crash and exits non-zero) when the two implementations
disagree (a different value, or a different WireError reason), or when either
raises anything but WireError.

The first input byte picks the numeric arguments (seconds, max_size, block,
rcode, id); the rest is the message. libFuzzer writes new inputs into the first
CORPUS_DIR: give it a scratch copy, not tests/corpus.
"""

from __future__ import annotations

import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

with atheris.instrument_imports():
    from dotproxy import _wire_py
    from dotproxy.errors import WireError

try:
    from dotproxy import _wire as _wire_c
except ImportError as err:  # pragma: no cover - the harness needs both
    sys.stderr.write(f"fuzz_wire: dotproxy._wire cannot be imported ({err!r}); build it with: pip install -e .\n")
    sys.exit(2)

SECONDS = (0, 1, 300, 2**31, 2**32 + 1)
SIZES = (12, 13, 29, 64, 512, 1232, 65535)
BLOCKS = (1, 2, 7, 128, 468)
RCODES = (0, 1, 2, 3, 5, 15, 16, 23, 4095)
EDES = (None, (23, "network error"), (0, ""), (65535, "é✓"))


def _edns(e):
    return None if e is None else (e.udp_size, e.do, e.version, [(c, bytes(d)) for c, d in e.options])


def _plain(value):
    if isinstance(value, bytes):
        return value
    if value is None or type(value) is int:
        return value
    if type(value) is tuple:
        return tuple(_plain(v) for v in value)
    kind = type(value).__name__
    if kind == "Query":
        return (
            kind,
            value.id,
            value.opcode,
            value.rd,
            value.cd,
            value.ad,
            value.qname,
            value.qname_wire,
            value.qtype,
            value.qclass,
            _edns(value.edns),
        )
    if kind == "ResponseInfo":
        return (
            kind,
            value.id,
            value.rcode,
            value.tc,
            value.aa,
            value.ra,
            value.ad,
            value.qname,
            value.qname_wire,
            value.qtype,
            value.qclass,
            value.qdcount,
            value.ancount,
            value.nscount,
            value.arcount,
            value.min_ttl,
            _edns(value.edns),
        )
    raise AssertionError(f"unexpected result type {type(value)!r}")


def _run(label, fn, args, kwargs):
    try:
        return ("ok", _plain(fn(*args, **kwargs)))
    except WireError as e:
        if not isinstance(e.reason, str) or not e.reason:
            raise AssertionError(f"{label}: WireError without a reason") from e
        return ("WireError", e.reason)
    except ValueError as e:
        # only for the argument checks the spec names (rcode > 15 without an OPT)
        if label == "make_error":
            return ("ValueError", None)
        raise AssertionError(f"{label} raised {type(e).__name__}: {e!r}") from e
    except Exception as e:
        raise AssertionError(f"{label} raised {type(e).__name__}: {e!r}") from e


_FIXED_QUERY = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")


def _match(mod, data, knob):
    """match_answer() against the query that asks the input's own question (the input with QR
    cleared, when that parses), so that an answer gets past the question to set_id."""
    try:
        query = mod.parse_query(data[:2] + bytes([data[2] & 0x7F]) + data[3:] if len(data) > 2 else data)
    except WireError:
        query = mod.parse_query(_FIXED_QUERY)
    query = mod.parse_query(bytes([knob, knob ^ 0x5A]) + _query_bytes(query))
    match = mod.AnswerMatch()
    return mod.match_answer(data, 0, len(data), query, bool(knob & 0x40), match), match.keepalive


def _query_bytes(query) -> bytes:
    """The query asking ``query``'s question, without its ID."""
    qtail = bytes([query.qtype >> 8, query.qtype & 0xFF, query.qclass >> 8, query.qclass & 0xFF])
    return b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + query.qname_wire + qtail


def _calls(mod, data, knob):
    seconds = SECONDS[knob % len(SECONDS)]
    size = SIZES[(knob >> 3) % len(SIZES)]
    block = BLOCKS[(knob >> 2) % len(BLOCKS)]
    rcode = RCODES[(knob >> 4) % len(RCODES)]
    ede = EDES[(knob >> 1) % len(EDES)]
    new_id = knob * 257
    yield "parse_query", mod.parse_query, (data,), {}
    yield "scan_response", mod.scan_response, (data,), {}
    yield "cache_key", mod.cache_key, (data,), {}
    yield "set_id", mod.set_id, (data, new_id), {}
    yield "age_ttls", mod.age_ttls, (data, seconds), {}
    yield "make_error", mod.make_error, (data, rcode), {"ede": ede}
    yield "truncate", mod.truncate, (data, size), {}
    yield "pad", mod.pad, (data, block), {"keepalive": bool(knob & 0x80)}
    yield "strip_opt", mod.strip_opt, (data,), {}
    yield "match_answer", _match, (mod, data, knob), {}


def TestOneInput(buf: bytes) -> None:
    if not buf:
        return
    knob, data = buf[0], bytes(buf[1:])
    for (label, fc, args_c, kw_c), (_, fp, args_p, kw_p) in zip(_calls(_wire_c, data, knob), _calls(_wire_py, data, knob)):
        oc = _run(label, fc, args_c, kw_c)
        op = _run(label, fp, args_p, kw_p)
        if oc != op:
            raise AssertionError(f"{label} disagrees on {data.hex()} (knob {knob}): c={oc!r} py={op!r}")
        if label == "parse_query" and oc[0] == "ok":
            # a parsed query gives its cache key from the Query object too
            assert _run("cache_key(Query)", _wire_c.cache_key, (_wire_c.parse_query(data),), {}) == _run(
                "cache_key(Query)", _wire_py.cache_key, (_wire_py.parse_query(data),), {}
            )
        if label == "make_error" and oc[0] == "ok":
            assert oc[1][:2] == data[:2] and oc[1][2] & 0x80, "make_error lost the ID or QR"


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
