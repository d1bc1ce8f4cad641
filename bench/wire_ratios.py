"""Packet-core benchmark: the C core vs its Python twin vs dnspython, measured in one run.

    python bench/wire_ratios.py [--repeat 15] [--json out.json]

Each operation is timed for all three contenders in interleaved rounds (so a
noisy neighbour hurts all of them alike); the figure per contender is the median
of the rounds, and the verdicts are ratios of medians. Exits 1 when a target of
issue 2 is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from dotproxy import _wire_py

try:
    from dotproxy import _wire as _wire_c
except ImportError:  # pragma: no cover - reported below
    _wire_c = None

# (operation, contender C / twin must beat, minimum ratio)
TARGETS = [
    ("parse_query", "c", 50.0),
    ("scan_response", "c", 100.0),
    ("parse_query", "py", 3.0),
    ("scan_response", "py", 3.0),
]


def typical_query() -> bytes:
    """A stub's query: EDNS(0), DO clear, a cookie, mixed case, as a browser's resolver sends it."""
    q = dns.message.make_query(
        "WwW.Example.COM", "A", use_edns=0, payload=1232,
        options=[dns.edns.GenericOption(10, bytes(range(8)))],
    )
    q.id = 0x1234
    return q.to_wire()


def eight_answer_response(query: bytes) -> bytes:
    """The response a CDN name gets: 8 A records, compressed, with OPT."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    for i in range(8):
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", f"192.0.2.{i + 1}"))
    return r.to_wire()


def dnspython_age(data: bytes, seconds: int) -> bytes:
    m = dns.message.from_wire(data)
    for section in (m.answer, m.authority, m.additional):
        for rrset in section:
            rrset.ttl = max(rrset.ttl - seconds, 0)
    return m.to_wire()


def dnspython_error(data: bytes) -> bytes:
    m = dns.message.make_response(dns.message.from_wire(data))
    m.set_rcode(dns.rcode.SERVFAIL)
    return m.to_wire()


def dnspython_pad(data: bytes) -> bytes:
    m = dns.message.from_wire(data)
    m.use_edns(0, payload=1232, options=m.options, pad=128)
    return m.to_wire()


def operations(query: bytes, response: bytes) -> dict:
    """name -> {contender: zero-argument callable}."""
    ops = {
        "parse_query": {"dnspython": lambda: dns.message.from_wire(query)},
        "scan_response": {"dnspython": lambda: dns.message.from_wire(response)},
        "age_ttls": {"dnspython": lambda: dnspython_age(response, 60)},
        "make_error": {"dnspython": lambda: dnspython_error(query)},
        "pad": {"dnspython": lambda: dnspython_pad(query)},
    }
    for name, mod in (("c", _wire_c), ("py", _wire_py)):
        if mod is None:
            continue
        ops["parse_query"][name] = lambda mod=mod: mod.parse_query(query)
        ops["scan_response"][name] = lambda mod=mod: mod.scan_response(response)
        ops["age_ttls"][name] = lambda mod=mod: mod.age_ttls(response, 60)
        ops["make_error"][name] = lambda mod=mod: mod.make_error(query, 2)
        ops["pad"][name] = lambda mod=mod: mod.pad(query)
    return ops


def per_call(fn, budget: float = 0.02) -> float:
    """Seconds per call of ``fn``, from a loop of about ``budget`` seconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / number
        number *= 2 if elapsed * 4 > budget else 8


def measure(ops: dict, repeat: int) -> dict:
    results = {}
    for op, contenders in ops.items():
        samples = {name: [] for name in contenders}
        for _ in range(repeat):
            for name, fn in contenders.items():
                samples[name].append(per_call(fn))
        results[op] = {name: statistics.median(s) for name, s in samples.items()}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="interleaved rounds per operation")
    parser.add_argument("--json", help="also write the medians and ratios here")
    args = parser.parse_args(argv)

    query = typical_query()
    response = eight_answer_response(query)
    print(f"dotproxy packet core benchmark — python {sys.version.split()[0]}, "
          f"C core {'built' if _wire_c else 'MISSING'}, pid {os.getpid()}")
    print(f"query {len(query)} B (EDNS, cookie); response {len(response)} B (8 A records)")
    print(f"median of {args.repeat} interleaved rounds; ratio = dnspython time / contender time\n")
    results = measure(operations(query, response), args.repeat)

    print(f"{'operation':<15}{'C':>11}{'twin':>11}{'dnspython':>12}{'C ×':>9}{'twin ×':>9}")
    for op, t in results.items():
        base = t["dnspython"]
        c = t.get("c")
        print(f"{op:<15}{c * 1e6 if c else float('nan'):>9.3f}µs{t['py'] * 1e6:>9.2f}µs"
              f"{base * 1e6:>10.1f}µs{base / c if c else float('nan'):>8.0f}×{base / t['py']:>8.1f}×")

    print()
    failed = 0
    for op, who, want in TARGETS:
        t = results[op]
        if who not in t:
            print(f"MISS  {op:<14} {who}: not built")
            failed += 1
            continue
        ratio = t["dnspython"] / t[who]
        ok = ratio >= want
        failed += not ok
        label = "C core" if who == "c" else "Python twin"
        print(f"{'PASS' if ok else 'MISS'}  {op:<14} {label:<12} {ratio:7.1f}× dnspython (target ≥ {want:g}×)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds_per_call": results, "targets": TARGETS}, f, indent=2)
    print(f"\n{'all targets met' if not failed else f'{failed} target(s) missed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
