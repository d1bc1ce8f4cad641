"""The malformed-packet corpus (tests/corpus/malformed): WireError, and only
WireError, with the reason the file name gives, identically in both
implementations. Also the corpus is in sync with its generator."""

from __future__ import annotations

import filecmp
import os
import struct
import subprocess
import sys

import dns.exception
import dns.message
import pytest
from wire_support import REASONS, expected_error, outcome, oracle_query, oracle_response, query_dict, response_dict

from dotproxy.errors import WireError

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(TESTS, "corpus")
MALFORMED = os.path.join(CORPUS, "malformed")
GOLDEN = os.path.join(CORPUS, "golden")

RUNS_PAST = {"name runs past the end", "record runs past the end"}
# Defects in the structure of the message (as opposed to its direction or counts):
# make_error cannot echo anything of such a query but its header.
# Reasons about the message's structure, which every walking function checks. "bad SOA" is
# about one record's content, which only scan_response reads (for the negative TTL).
STRUCTURAL = REASONS - {"short header", "not a query", "not a response", "QDCOUNT is not 1", "QDCOUNT above 1",
                        "bad SOA"}


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".bin"))


def _read(folder, f):
    with open(os.path.join(folder, f), "rb") as fh:
        return fh.read()


def _expect(fname):
    target, slug, _what = fname[:-4].split("--")
    if slug == "name_or_record_runs_past_the_end":
        allowed = RUNS_PAST
    elif slug == "unspecified":
        allowed = REASONS
    else:
        allowed = {slug.replace("_", " ")}
        assert allowed <= REASONS, f"corpus file {fname} names an unknown reason"
    return target, allowed


MALFORMED_FILES = _files(MALFORMED)
GOLDEN_FILES = _files(GOLDEN)


def test_corpus_is_there():
    assert len(MALFORMED_FILES) >= 60
    covered = set()
    for f in MALFORMED_FILES:
        allowed = _expect(f)[1]
        if len(allowed) == 1:
            covered |= allowed
    assert covered == REASONS - {"name runs past the end"}, REASONS - covered
    assert any(_expect(f)[1] == RUNS_PAST for f in MALFORMED_FILES)


def test_corpus_in_sync_with_generator(tmp_path):
    r = subprocess.run(
        [sys.executable, os.path.join(CORPUS, "make_corpus.py"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    for sub in ("malformed", "golden"):
        fresh = _files(tmp_path / sub)
        assert fresh == _files(os.path.join(CORPUS, sub)), f"run tests/corpus/make_corpus.py: {sub}/ is stale"
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / sub, os.path.join(CORPUS, sub), fresh, shallow=False)
        assert not mismatch and not errors, f"run tests/corpus/make_corpus.py: {mismatch + errors} differ"


@pytest.mark.parametrize("fname", [f for f in MALFORMED_FILES if "--not_a_" not in f and "--QDCOUNT" not in f])
def test_dnspython_rejects_structural_defects(fname):
    """The corpus is really malformed: dnspython refuses every structural defect too."""
    data = _read(MALFORMED, fname)
    with pytest.raises((dns.exception.DNSException, ValueError, IndexError, struct.error)):
        dns.message.from_wire(data)


@pytest.mark.parametrize("fname", MALFORMED_FILES)
def test_malformed_raises(wire, fname):
    data = _read(MALFORMED, fname)
    target, allowed = _expect(fname)
    funcs = {"query": [wire.parse_query, wire.cache_key], "response": [wire.scan_response]}
    if target == "any":
        chosen = funcs["query"] + funcs["response"]
    else:
        chosen = funcs[target]
    for fn in chosen:
        with pytest.raises(WireError) as ei:
            fn(data)
        assert isinstance(ei.value, ValueError)
        assert ei.value.reason in allowed, f"{fn.__name__}({fname}): reason {ei.value.reason!r}, expected one of {sorted(allowed)}"


def _all_calls(wire):
    return [
        ("parse_query", wire.parse_query, ()),
        ("scan_response", wire.scan_response, ()),
        ("cache_key", wire.cache_key, ()),
        ("set_id", wire.set_id, (0xBEEF,)),
        ("age_ttls", wire.age_ttls, (0,)),
        ("age_ttls", wire.age_ttls, (30,)),
        ("make_error", wire.make_error, (2,)),
        ("make_error+ede", lambda d: wire.make_error(d, 2, ede=(23, "network error")), ()),
        ("truncate", wire.truncate, (12,)),
        ("truncate", wire.truncate, (40,)),
        ("truncate", wire.truncate, (65535,)),
        ("pad", wire.pad, (128,)),
        ("pad", wire.pad, (1,)),
        ("pad+keepalive", lambda d: wire.pad(d, 128, keepalive=True), ()),
        ("strip_opt", wire.strip_opt, ()),
    ]


@pytest.mark.parametrize("fname", MALFORMED_FILES)
def test_every_function_raises_only_wire_error(wire, fname):
    data = _read(MALFORMED, fname)
    for label, fn, args in _all_calls(wire):
        try:
            fn(data, *args)
        except WireError as e:
            assert e.reason in REASONS, f"{label}({fname}): unknown reason {e.reason!r}"
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{label}({fname}) raised {type(e).__name__}: {e!r}, not WireError")


@pytest.mark.parametrize("fname", MALFORMED_FILES)
def test_walking_functions_reject(wire, fname):
    """age_ttls walks every record and pad every record of a query: they reject
    what the scanners reject. (Whether they also check the OPT rules is not
    specified, so "bad OPT" files are left out.)"""
    data = _read(MALFORMED, fname)
    target, allowed = _expect(fname)
    if target == "any":
        for args in ((0,), (30,)):
            with pytest.raises(WireError):
                wire.age_ttls(data, *args)
        with pytest.raises(WireError):
            wire.pad(data, 128)
        return
    kind, reason = outcome(wire.parse_query if target == "query" else wire.scan_response, data)
    assert kind == "WireError"
    if reason in STRUCTURAL - {"bad OPT"}:
        with pytest.raises(WireError) as ei:
            wire.age_ttls(data, 30)
        assert ei.value.reason in STRUCTURAL
        if target == "query":
            with pytest.raises(WireError) as ei:
                wire.pad(data, 128)
            assert ei.value.reason in STRUCTURAL


@pytest.mark.parametrize("fname", [f for f in MALFORMED_FILES if f.startswith("query--")])
def test_make_error_on_malformed_query(wire, fname):
    data = _read(MALFORMED, fname)
    _, reason = outcome(wire.parse_query, data)
    if reason in STRUCTURAL:
        for ede in (None, (23, "network error")):
            out = wire.make_error(data, 1, ede=ede)
            assert out == expected_error(data, 1, parsable=False), fname
            m = dns.message.from_wire(out)
            assert m.question == [] and m.edns == -1 and m.rcode() == 1
    else:
        # not a query / QDCOUNT: not specified beyond "a valid message with the ID"
        try:
            out = wire.make_error(data, 1)
        except WireError:
            return
        assert out[:2] == data[:2]
        assert out[2] & 0x80  # QR


@pytest.mark.parametrize("fname", MALFORMED_FILES)
def test_malformed_agreement(both, fname):
    data = _read(MALFORMED, fname)
    c, py = both
    for (label, fc, args), (_, fp, _) in zip(_all_calls(c), _all_calls(py)):
        assert outcome(fc, data, *args) == outcome(fp, data, *args), (label, fname)


# --------------------------------------------------------------------------
# Each byte prefix of a corpus file: never anything but WireError
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fname", MALFORMED_FILES + GOLDEN_FILES)
def test_prefixes_only_wire_error(wire, fname):
    golden = "--" not in fname
    data = _read(GOLDEN if golden else MALFORMED, fname)
    for n in range(len(data)):
        if golden:  # a proper prefix of a valid message is never valid
            scanner = wire.parse_query if fname.startswith("query") else wire.scan_response
            with pytest.raises(WireError):
                scanner(data[:n])
        for label, fn, args in _all_calls(wire):
            try:
                fn(data[:n], *args)
            except WireError:
                pass
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{label}({fname}[:{n}]) raised {type(e).__name__}: {e!r}")


# --------------------------------------------------------------------------
# The golden corpus
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fname", GOLDEN_FILES)
def test_golden_corpus(wire, fname):
    data = _read(GOLDEN, fname)
    if fname.startswith("query"):
        assert query_dict(wire.parse_query(data)) == oracle_query(data)
        with pytest.raises(WireError) as ei:
            wire.scan_response(data)
        assert ei.value.reason == "not a response"
    else:
        assert response_dict(wire.scan_response(data)) == oracle_response(data)
        with pytest.raises(WireError) as ei:
            wire.parse_query(data)
        assert ei.value.reason == "not a query"


EXPECTED_GOLDEN = {
    "response_a.bin": {"min_ttl": 300, "qname": "www.example.com", "rcode": 0},
    "response_cname_chain_nxdomain.bin": {"min_ttl": 50, "rcode": 3},
    "response_nodata_soa.bin": {"min_ttl": 120, "rcode": 0, "ancount": 0},
    "response_ttl_top_bit.bin": {"min_ttl": 0},
    "response_no_question_formerr.bin": {"qname": None, "qtype": None, "qclass": None, "qdcount": 0, "rcode": 1, "min_ttl": None},
    "response_badvers.bin": {"rcode": 16, "min_ttl": None},
    "response_pointer_chain.bin": {"min_ttl": 10, "ancount": 2},
}


@pytest.mark.parametrize("fname", sorted(EXPECTED_GOLDEN))
def test_golden_corpus_values(wire, fname):
    got = response_dict(wire.scan_response(_read(GOLDEN, fname)))
    assert {k: got[k] for k in EXPECTED_GOLDEN[fname]} == EXPECTED_GOLDEN[fname]


def test_golden_corpus_query_values(wire):
    q = wire.parse_query(_read(GOLDEN, "query_odd_bytes.bin"))
    assert q.qname == 'a\\.b.x\\032y.\\000\\127\\255.\\"\\(\\)\\\\\\;\\@\\$.com'
    assert (q.rd, q.cd) == (True, True)
    q = wire.parse_query(_read(GOLDEN, "query_mixed_case_aaaa.bin"))
    assert (q.qname, q.qname_wire, q.id) == ("www.example.com", b"\x03www\x07example\x03com\x00", 0xFFFF)
    q = wire.parse_query(_read(GOLDEN, "query_edns_do_cookie_padding.bin"))
    assert (q.edns.udp_size, q.edns.do, q.edns.version) == (4096, True, 0)
    assert [(c, bytes(d)) for c, d in q.edns.options] == [(10, bytes(range(8))), (12, bytes(20))]
    assert wire.parse_query(_read(GOLDEN, "query_edns_version_1.bin")).edns.version == 1
    q = wire.parse_query(_read(GOLDEN, "query_root_ns.bin"))
    assert (q.qname, q.qname_wire, q.rd) == (".", b"\x00", False)
    assert len(wire.parse_query(_read(GOLDEN, "query_longest_name.bin")).qname_wire) == 255
