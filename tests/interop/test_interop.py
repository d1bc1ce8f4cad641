"""dotproxy's pooled DoT/DoH upstreams against real servers: dnsdist, kresd, unbound (loopback).

For each server and transport, and each concurrency, 20,000 unique queries go out through
``dotproxy.upstream.connect(url, ca_file=...)`` with exactly ``concurrency`` in flight (a
new one is submitted from the callback of each finished one), each with a deadline 4 s
after its send. Every one must come back NOERROR with its own question and the zone's
address. A failure says how many were lost and why, with the upstream's stats and the
server's own counters (dnsdist: its frontend counters).

Loops: the ``run`` fixture runs each case under asyncio and under uvloop (house rule 11).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import struct
import time

import dns.message
import dns.rcode
import pytest

import interop_servers as servers
from dotproxy import upstream

QUERIES = int(os.environ.get("INTEROP_QUERIES", "20000"))
DEADLINE = 4.0  # seconds from each query's send
CONCURRENCY = (10, 100, 500)
CHECK_EVERY = 50  # every n-th answer is also parsed in full by dnspython
SLOW = 1.0  # seconds: on loopback an answer this late means a stall (reported; asserted by the burst test)

CASES = {
    # name: (fixture, transport)
    "dnsdist-dot": ("dnsdist_server", "dot"),
    "dnsdist-doh": ("dnsdist_server", "doh"),
    "kresd-dot": ("kresd_server", "dot"),
    "unbound-dot": ("unbound_server", "dot"),
    "unbound-doh": ("unbound_server", "doh"),
}


def _qname_wire(labels: list[str]) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\0"


_ZONE_LABELS = servers.ZONE.split(".")
_ANSWER_RDATA = bytes(int(x) for x in servers.ANSWER_A.split("."))


def make_query(i: int, tag: str) -> tuple[bytes, bytes]:
    """A query for ``q<i>-<tag>.<ZONE> A`` (RD, no EDNS); returns it and its question section."""
    question = _qname_wire([f"q{i}-{tag}", *_ZONE_LABELS]) + b"\x00\x01\x00\x01"
    header = struct.pack("!HHHHHH", random.randrange(0x10000), 0x0100, 1, 0, 0, 0)
    return header + question, question


def answer_problem(query: bytes, question: bytes, answer: bytes, full: bool) -> str | None:
    """Why ``answer`` is not the right answer to ``query`` (None when it is)."""
    if len(answer) < 12 + len(question):
        return "short answer"
    qid, flags, qd, an = struct.unpack("!HHHH", answer[:8])
    if qid != struct.unpack("!H", query[:2])[0]:
        return "wrong ID"
    if not flags & 0x8000:
        return "QR not set"
    if flags & 0x000F != 0:
        return f"rcode {dns.rcode.to_text(flags & 0xF)}"
    if qd != 1 or answer[12:12 + len(question)] != question:
        return "wrong question"
    if an < 1 or _ANSWER_RDATA not in answer[12 + len(question):]:
        return "no answer record"
    if full:
        q = dns.message.from_wire(query)
        r = dns.message.from_wire(answer)
        if not q.is_response(r) or r.rcode() != dns.rcode.NOERROR:
            return "dnspython: not the response"
        if not any(a.address == servers.ANSWER_A for rrset in r.answer for a in rrset):
            return "dnspython: no A record"
    return None


class Result:
    def __init__(self) -> None:
        self.ok = 0
        self.problems: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.elapsed = 0.0
        self.stats: dict = {}
        self.slowest = 0.0  # seconds, of the answered queries
        self.slow = 0  # answered, but more than SLOW seconds after their send

    def answered(self, latency: float) -> None:
        self.ok += 1
        if latency > self.slowest:
            self.slowest = latency
        if latency > SLOW:
            self.slow += 1

    @property
    def lost(self) -> int:
        return sum(self.problems.values()) + sum(self.errors.values())

    def summary(self) -> str:
        rate = (self.ok + self.lost) / self.elapsed if self.elapsed else 0.0
        return (f"{self.ok} ok, {self.lost} lost in {self.elapsed:.1f}s ({rate:.0f}/s); "
                f"errors {dict(self.errors)}; bad answers {dict(self.problems)}; "
                f"slowest answer {self.slowest:.2f}s, {self.slow} slower than {SLOW}s")


async def drive(url: str, ca_file: str, *, total: int = QUERIES, concurrency: int = 100,
                deadline: float = DEADLINE, check_every: int = CHECK_EVERY, **options) -> Result:
    """Send ``total`` unique queries with exactly ``concurrency`` in flight; return what came back."""
    loop = asyncio.get_running_loop()
    result = Result()
    tag = f"{random.randrange(1 << 32):08x}"
    up = upstream.connect(url, ca_file=ca_file, **options)
    done = loop.create_future()
    state = {"next": 0, "finished": 0}

    def send() -> None:
        i = state["next"]
        state["next"] = i + 1
        query, question = make_query(i, tag)
        sent = loop.time()

        def callback(answer: bytes | None, error: BaseException | None) -> None:
            if error is not None:
                detail = str(error).split(": ", 1)[-1][:70]
                result.errors[f"{type(error).__name__}: {detail}"] += 1
            else:
                problem = answer_problem(query, question, answer, full=i % check_every == 0)
                if problem is None:
                    result.answered(loop.time() - sent)
                else:
                    result.problems[problem] += 1
            state["finished"] += 1
            if state["next"] < total:
                send()
            elif state["finished"] == total and not done.done():
                done.set_result(None)

        up.submit(query, callback=callback, deadline=sent + deadline)

    start = time.perf_counter()
    try:
        for _ in range(min(concurrency, total)):
            send()
        await done
    finally:
        result.elapsed = time.perf_counter() - start
        result.stats = up.stats.as_dict()
        await up.aclose()
    return result


@pytest.mark.parametrize("concurrency", CONCURRENCY)
@pytest.mark.parametrize("case", list(CASES))
def test_unique_queries_all_answered(case, concurrency, run, request):
    fixture, transport = CASES[case]
    server: servers.Server = request.getfixturevalue(fixture)
    url = server.urls[transport]
    before = server.counters() if server.kind == "dnsdist" else None
    # Budget: the whole burst plus the last deadline; a stalled server fails the test, not the run.
    result = run(lambda: drive(url, server.ca_file, concurrency=concurrency), timeout=QUERIES / 500 + 30)
    if result.lost:
        report = [f"{case} at concurrency {concurrency} ({url}): {result.summary()}",
                  f"upstream stats: {result.stats}"]
        if server.kind == "dnsdist":
            after = server.counters()
            report.append(f"dnsdist frontend counters (this case's deltas): {_deltas(before, after)}")
        else:
            report.append(f"{server.kind} counters: {server.counters()}")
        pytest.fail("\n".join(report), pytrace=False)


def _deltas(before: dict, after: dict) -> dict:
    out = {}
    for name, values in after.items():
        if not isinstance(values, dict):
            continue
        old = before.get(name, {}) if isinstance(before, dict) else {}
        # Counters as deltas; averages (tcpAvg*) as they stand after the case.
        changed = {k: (round(v, 2) if "Avg" in k else round(v - old.get(k, 0), 2)) for k, v in values.items()
                   if isinstance(v, (int, float)) and v != old.get(k, 0)}
        if changed:
            out[name] = changed
    return out


# ------------------------------------------------------------------ bursts then silence

BURST = 20  # queries submitted in one loop iteration (a page load): one socket write of two TLS records
BURSTS = 5
BURST_BOUND = 1.0  # seconds a burst may take on loopback (they take milliseconds when nothing stalls)


async def bursts(url: str, ca_file: str, *, size: int = BURST, rounds: int = BURSTS, **options) -> tuple[list, Result]:
    """``rounds`` bursts of ``size`` queries, each sent in one loop iteration and awaited before the
    next: after each burst the connection is silent. Stops after the first burst slower than
    BURST_BOUND. Returns each burst's duration and the combined result."""
    loop = asyncio.get_running_loop()
    result = Result()
    tag = f"{random.randrange(1 << 32):08x}"
    durations = []
    up = upstream.connect(url, ca_file=ca_file, **options)
    start = time.perf_counter()
    try:
        for r in range(rounds):
            queries = [make_query(r * size + i, tag) for i in range(size)]
            t0 = loop.time()
            answers = await asyncio.gather(*(up.query(q, deadline=t0 + DEADLINE) for q, _ in queries),
                                           return_exceptions=True)
            durations.append(round(loop.time() - t0, 3))
            for (query, question), answer in zip(queries, answers):
                if isinstance(answer, BaseException):
                    result.errors[f"{type(answer).__name__}: {str(answer).split(': ', 1)[-1][:70]}"] += 1
                elif (problem := answer_problem(query, question, answer, full=True)) is not None:
                    result.problems[problem] += 1
                else:
                    result.answered(durations[-1])
            if durations[-1] > BURST_BOUND:
                break
    finally:
        result.elapsed = time.perf_counter() - start
        result.stats = up.stats.as_dict()
        await up.aclose()
    return durations, result


@pytest.mark.parametrize("case", list(CASES))
def test_bursts_then_silence(case, run, request):
    """A burst of queries sent in one loop iteration, then nothing until they are answered: each
    burst answered in full, within BURST_BOUND (a stalled connection takes seconds)."""
    fixture, transport = CASES[case]
    server: servers.Server = request.getfixturevalue(fixture)
    url = server.urls[transport]
    before = server.counters() if server.kind == "dnsdist" else None
    durations, result = run(lambda: bursts(url, server.ca_file), timeout=BURSTS * (DEADLINE + 2) + 10)
    if result.lost or max(durations) > BURST_BOUND:
        report = [f"{case}, bursts of {BURST} ({url}): burst durations {durations}s (bound {BURST_BOUND}s); "
                  f"{result.summary()}", f"upstream stats: {result.stats}"]
        if server.kind == "dnsdist":
            report.append(f"dnsdist frontend counters (this case's deltas): {_deltas(before, server.counters())}")
        pytest.fail("\n".join(report), pytrace=False)


@pytest.mark.parametrize("options", [{"maxInFlight": 10}, {"maxInFlight": 100}], ids=["maxInFlight=10", "maxInFlight=100"])
def test_bursts_against_dnsdist_taking_n_queries_at_once(options, run, interop_launcher):
    """dnsdist with ``maxInFlight`` (out of order, N at once) and a 1 s read timeout: a burst of
    more queries than N still gets every answer at once (the burst's last query travels in a
    record of its own, which keeps the socket readable while the others wait in OpenSSL's
    buffer: see StreamConnection.write_pending)."""
    server = interop_launcher.dnsdist(tls_options=options, extra_lua="setTCPRecvTimeout(1)")
    before = server.counters()
    durations, result = run(lambda: bursts(server.urls["dot"], server.ca_file), timeout=BURSTS * (DEADLINE + 2) + 10)
    assert not result.lost and max(durations) <= BURST_BOUND, (durations, result.summary(), result.stats,
                                                                _deltas(before, server.counters()))
