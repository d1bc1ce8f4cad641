"""The engine's core promise over real loopback sockets: every query gets exactly one answer in time.

The upstream's answer with the client's ID, or SERVFAIL with an RFC 8914 EDE saying why
(22: the deadline passed, 23: the upstream could not be reached); FORMERR for a query
whose header is readable but which is not a valid query; nothing for less than a header;
UDP answers truncated (TC=1) to the client's size; REFUSED at once past max_in_flight.
Every test runs under asyncio and uvloop (``run`` fixture).
"""

from __future__ import annotations

import asyncio
import random
import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from engine_support import (
    EDE_NETWORK,
    EDE_TIMEOUT,
    check_answer,
    check_error,
    ede_codes,
    engine_env,
    frame,
    make_query,
    now,
    rcode_of,
    read_frame,
    refusing_port,
    tcp_client,
    txt_answer,
    udp_client,
    wait_until,
)

from dotproxy.testing import Faults

QUIET = 0.25  # how long "no (further) answer" is waited for


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("scheme", ["dot", "doh", "tcp", "udp"])
def test_udp_and_tcp_queries_get_the_upstream_answer_with_the_client_id(run, scheme):
    async def main():
        async with engine_env(scheme=scheme) as env:
            async with udp_client(env.address) as c:
                for i, (edns, rdtype) in enumerate([(False, "A"), (True, "A"), (True, "AAAA"), (False, "MX")]):
                    q = make_query(f"host{i}.example", rdtype, id=0x1000 + i, edns=edns)
                    a = await c.ask(q)
                    r = check_answer(a, q)
                    # no OPT to a client that sent none (RFC 6891 section 7), one to a client that did
                    assert (r.edns >= 0) == edns
                await asyncio.sleep(QUIET)
                assert len(c.received) == 4  # exactly one answer each
            async with tcp_client(env.address) as (reader, writer):
                q = make_query("tcp.example", id=0xBEEF)
                writer.write(frame(q))
                check_answer(await read_frame(reader), q)
            assert env.up.stats.queries[scheme] == 5
            assert env.stats.answered == 5 and env.stats.servfail == 0

    run(main)


def test_many_concurrent_queries_each_answered_once_with_its_own_id(run):
    async def main():
        async with engine_env(faults=Faults(latency=0.01, jitter=0.1)) as env:
            async with udp_client(env.address) as c:
                queries = {}
                for i in range(60):
                    q = make_query(f"n{i}.example", id=i + 1)
                    queries[i + 1] = q
                    c.send(q)
                answers = await c.wait_for(60, timeout=5)
                await asyncio.sleep(QUIET)
                assert len(c.received) == 60
                by_id = {dns.message.from_wire(a).id: a for a in answers}
                assert sorted(by_id) == sorted(queries)
                for qid, a in by_id.items():
                    check_answer(a, queries[qid])

    run(main)


def test_lost_upstream_answers_still_give_every_query_exactly_one_answer(run):
    async def main():
        async with engine_env(faults=Faults(drop=0.4), timeout=0.3) as env:
            async with udp_client(env.address) as c:
                queries = {i: make_query(f"d{i}.example", id=i, edns=True) for i in range(1, 31)}
                for q in queries.values():
                    c.send(q)
                answers = await c.wait_for(30, timeout=3)
                await asyncio.sleep(QUIET)
                assert len(c.received) == 30
                outcomes = {"ok": 0, "timeout": 0}
                for a in answers:
                    m = dns.message.from_wire(a)
                    if m.rcode() == dns.rcode.NOERROR:
                        check_answer(a, queries[m.id])
                        outcomes["ok"] += 1
                    else:
                        check_error(a, queries[m.id], dns.rcode.SERVFAIL, EDE_TIMEOUT)
                        outcomes["timeout"] += 1
                assert sorted(dns.message.from_wire(a).id for a in answers) == sorted(queries)
                assert outcomes["timeout"] == env.up.stats.queries_dropped > 0
                assert env.stats.servfail == outcomes["timeout"]

    run(main)


# --------------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize("scheme", ["dot", "doh", "udp"])
def test_stalled_upstream_gives_servfail_ede_22_at_the_deadline(run, scheme):
    async def main():
        async with engine_env(faults=Faults(stall=True), timeout=0.4, scheme=scheme) as env:
            async with udp_client(env.address) as c, tcp_client(env.address) as (reader, writer):
                q_edns = make_query("stalled.example", id=1, edns=True)
                q_plain = make_query("stalled2.example", id=2)
                q_tcp = make_query("stalled3.example", id=3, edns=True)
                start = now()
                c.send(q_edns)
                c.send(q_plain)
                writer.write(frame(q_tcp))
                answers = await c.wait_for(2, timeout=2)
                a_tcp = await read_frame(reader, timeout=2)
                for t in c.times:
                    assert 0.35 <= t - start <= 0.8, t - start
                assert now() - start <= 0.8
                by_id = {dns.message.from_wire(a).id: a for a in answers}
                check_error(by_id[1], q_edns, dns.rcode.SERVFAIL, EDE_TIMEOUT)
                # without EDNS: SERVFAIL, and no OPT (so no EDE) to a client that sent none
                r = check_error(by_id[2], q_plain, dns.rcode.SERVFAIL)
                assert r.edns < 0
                check_error(a_tcp, q_tcp, dns.rcode.SERVFAIL, EDE_TIMEOUT)
                await asyncio.sleep(QUIET)
                assert len(c.received) == 2
            assert env.stats.servfail == 3

    run(main)


@pytest.mark.parametrize("scheme", ["tls", "https"])
def test_unreachable_upstream_gives_servfail_ede_23_quickly(run, scheme):
    async def main():
        with refusing_port() as port:
            url = f"tls://127.0.0.1:{port}#dns.test" if scheme == "tls" else f"https://127.0.0.1:{port}/dns-query"
            async with engine_env(upstreams=lambda up: (url,), timeout=3.0) as env:
                async with udp_client(env.address) as c:
                    for i in range(3):  # the first dials, the later ones meet the dial backoff: all fast
                        q = make_query(f"closed{i}.example", edns=True)
                        start = now()
                        a = await c.ask(q, timeout=3)
                        assert now() - start < 1.0
                        r = check_error(a, q, dns.rcode.SERVFAIL, EDE_NETWORK)
                        assert r.question == dns.message.from_wire(q).question
                assert env.stats.servfail == 3

    run(main)


def test_failover_to_the_second_upstream_when_the_first_is_unreachable(run):
    async def main():
        with refusing_port() as port:
            dead = f"tls://127.0.0.1:{port}#dns.test"
            async with engine_env(upstreams=lambda up: (dead, up.dot_url), timeout=3.0) as env:
                async with udp_client(env.address) as c:
                    for i in range(5):
                        q = make_query(f"fo{i}.example", edns=i % 2 == 0)
                        start = now()
                        check_answer(await c.ask(q), q)
                        assert now() - start < 1.0
                assert env.up.stats.queries["dot"] == 5
                assert env.engine.upstreams[0].stats.dial_failures >= 1
                assert env.stats.servfail == 0

    run(main)


# --------------------------------------------------------------------------- malformed queries


def _header(qid: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return bytes([qid >> 8, qid & 0xFF, flags >> 8, flags & 0xFF, 0, qd, 0, an, 0, ns, 0, ar])


def test_malformed_queries_get_formerr_and_headerless_ones_nothing(run):
    async def main():
        async with engine_env() as env:
            valid = make_query("ok.example", id=0x4242)
            two_questions = bytearray(make_query("two.example", id=0x1111))
            two_questions[5] = 2  # QDCOUNT 2, one question present
            q2 = dns.message.make_query("a.example", "A")
            q2.id = 0x2222
            both = dns.message.make_query("b.example", "A")
            both.question.append(q2.question[0])
            both.id = 0x2223
            response_bit = bytearray(make_query("resp.example", id=0x3333))
            response_bit[2] |= 0x80
            cases = [
                (bytes(two_questions), 0x1111),
                (both.to_wire(), 0x2223),  # two real questions
                (_header(0x5555) + b"\xff\xff\xff", 0x5555),  # garbage after a valid header
                (make_query("trailing.example", id=0x6666) + b"junk", 0x6666),  # garbage after a valid query
                (bytes(response_bit), 0x3333),  # QR set: not a query
                (_header(0x7777), 0x7777),  # a header and no question
            ]
            async with udp_client(env.address) as c:
                for data, qid in cases:
                    a = await c.ask(data, timeout=2)
                    assert a[:2] == qid.to_bytes(2, "big"), (a[:2], qid)
                    assert a[2] & 0x80, "QR must be set"
                    assert rcode_of(a) == dns.rcode.FORMERR, (data, a)
                assert env.stats.formerr == len(cases)
                for short in (b"\x12", b"\x12\x34\x01\x00\x00\x01", bytes(11)):
                    c.send(short)
                # an empty datagram (asyncio's sendto drops empty data: a plain socket sends it)
                raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    raw.sendto(b"", env.address)
                finally:
                    raw.close()
                await wait_until(lambda: env.stats.dropped_unreadable == 4, what="4 unreadable datagrams")
                # the socket still serves: the valid query's answer is the only datagram that comes back
                check_answer(await c.ask(valid, timeout=2), valid)
                await asyncio.sleep(QUIET)
                assert len(c.received) == len(cases) + 1
                assert env.stats.dropped_unreadable == 4, env.stats
            assert env.up.stats.queries["dot"] == 1  # nothing malformed went upstream

    run(main)


def test_malformed_query_on_tcp_gets_formerr_and_the_connection_serves_on(run):
    async def main():
        async with engine_env() as env:
            async with tcp_client(env.address) as (reader, writer):
                bad = bytearray(make_query("two.example", id=0x1111))
                bad[5] = 2
                q1 = make_query("before.example", id=0x0101)
                q2 = make_query("after.example", id=0x0202)
                writer.write(frame(q1) + frame(bytes(bad)) + frame(q2))
                got = {}
                for _ in range(3):
                    a = await read_frame(reader)
                    got[int.from_bytes(a[:2], "big")] = a
                assert sorted(got) == [0x0101, 0x0202, 0x1111]
                assert rcode_of(got[0x1111]) == dns.rcode.FORMERR
                check_answer(got[0x0101], q1)
                check_answer(got[0x0202], q2)

    run(main)


# --------------------------------------------------------------------------- truncation


def test_udp_answers_are_truncated_to_the_client_size_and_tcp_gets_them_whole(run):
    async def main():
        # 20 TXT strings: 886 bytes (more than 512, less than 1232); 40: 1746 bytes
        async with engine_env(answer=txt_answer(20)) as env:
            host, port = env.address
            loop = asyncio.get_running_loop()

            def ask_udp(payload):
                q = dns.message.make_query("big.example", "TXT", use_edns=0 if payload else False,
                                           payload=payload or 512)
                return q, dns.query.udp(q, host, port=port, timeout=2, ignore_trailing=False)

            # without EDNS: 512 bytes at most -> TC=1, nothing but the question
            q, r = await loop.run_in_executor(None, ask_udp, None)
            assert r.id == q.id and r.flags & dns.flags.TC and r.rcode() == dns.rcode.NOERROR
            assert not r.answer and r.question == q.question
            assert len(r.to_wire()) <= 512
            # EDNS 600: still too small -> TC=1
            q, r = await loop.run_in_executor(None, ask_udp, 600)
            assert r.flags & dns.flags.TC and not r.answer
            # EDNS 1232: fits -> whole
            q, r = await loop.run_in_executor(None, ask_udp, 1232)
            assert not r.flags & dns.flags.TC
            assert sum(len(rrset) for rrset in r.answer) == 20
            # the client's retry over TCP gets the whole answer
            q = dns.message.make_query("big.example", "TXT", use_edns=False)
            r = await loop.run_in_executor(None, lambda: dns.query.tcp(q, host, port=port, timeout=2))
            assert r.id == q.id and not r.flags & dns.flags.TC
            assert sum(len(rrset) for rrset in r.answer) == 20
            assert env.stats.truncated == 2

    run(main)


def test_udp_answer_larger_than_the_edns_size_is_truncated_and_tcp_retry_gets_all_40(run):
    async def main():
        async with engine_env(answer=txt_answer(40)) as env:
            host, port = env.address
            loop = asyncio.get_running_loop()
            q = dns.message.make_query("big.example", "TXT", use_edns=0, payload=1232)
            r = await loop.run_in_executor(None, lambda: dns.query.udp(q, host, port=port, timeout=2))
            assert r.id == q.id and r.flags & dns.flags.TC and not r.answer
            assert r.edns >= 0  # the OPT survives truncation
            r = await loop.run_in_executor(None, lambda: dns.query.tcp(q, host, port=port, timeout=2))
            assert r.id == q.id and not r.flags & dns.flags.TC
            assert sorted(rd.strings[0][:4] for rrset in r.answer for rd in rrset) == [
                f"{i:04d}".encode() for i in range(40)]

    run(main)


# --------------------------------------------------------------------------- overload


def test_queries_beyond_max_in_flight_are_refused_at_once(run):
    async def main():
        async with engine_env(faults=Faults(latency=0.5), max_in_flight=3, timeout=3.0) as env:
            async with udp_client(env.address) as c:
                slow = [make_query(f"slow{i}.example", id=100 + i) for i in range(3)]
                for q in slow:
                    c.send(q)
                await wait_until(lambda: env.up.stats.queries["dot"] == 3, what="3 queries upstream")
                extra = [make_query(f"extra{i}.example", id=200 + i, edns=True) for i in range(4)]
                start = now()
                for q in extra:
                    c.send(q)
                refused = await c.wait_for(4, timeout=2)
                assert now() - start < 0.3
                by_id = {dns.message.from_wire(a).id: a for a in refused}
                assert sorted(by_id) == [200, 201, 202, 203]
                for q in extra:
                    r = check_error(by_id[dns.message.from_wire(q).id], q, dns.rcode.REFUSED)
                    assert r.question == dns.message.from_wire(q).question
                assert env.stats.refused_overload == 4
                answers = await c.wait_for(7, timeout=2)
                for a in answers[4:]:
                    m = dns.message.from_wire(a)
                    check_answer(a, slow[m.id - 100])
                # capacity comes back once they are answered
                q = make_query("later.example", id=300)
                env.up.faults.latency = 0.0
                check_answer(await c.ask(q), q)
                assert env.stats.refused_overload == 4
                assert env.up.stats.queries["dot"] == 4

    run(main)


def test_refused_answer_carries_an_ede_for_edns_clients(run):
    """REFUSED for overload says why (RFC 8914) when the client speaks EDNS."""

    async def main():
        async with engine_env(faults=Faults(latency=0.3), max_in_flight=1) as env:
            async with udp_client(env.address) as c:
                c.send(make_query("slow.example", id=1))
                await wait_until(lambda: env.up.stats.queries["dot"] == 1)
                q = make_query("refused.example", id=2, edns=True)
                r = dns.message.from_wire(await c.ask(q))
                assert r.rcode() == dns.rcode.REFUSED
                assert len(ede_codes(r)) == 1
                await c.wait_for(2, timeout=2)

    run(main)


def test_random_ids_and_names_round_trip(run):
    """Answers carry exactly the client's ID whatever it is (0 and 0xFFFF included)."""

    async def main():
        async with engine_env() as env:
            async with udp_client(env.address) as c:
                for qid in [0, 0xFFFF, *random.sample(range(1, 0xFFFF), 8)]:
                    q = make_query(f"id{qid}.example", id=qid)
                    check_answer(await c.ask(q), q)

    run(main)


def test_a_misbehaving_upstream_still_gives_every_query_exactly_one_answer(run):
    """Connections closed under queries, garbage and wrong IDs: each query gets one answer,
    the upstream's or SERVFAIL with an EDE (22 or 23), within its deadline."""

    async def main():
        async with engine_env(timeout=0.4) as env:
            async with udp_client(env.address) as c:
                phases = [dict(close_after=5, jitter=0.02), dict(garbage=0.2), dict(wrong_id=0.2)]
                total = 0
                for n, knobs in enumerate(phases):
                    env.up.faults = Faults(**knobs)
                    queries = {n * 100 + i: make_query(f"p{n}q{i}.example", id=n * 100 + i, edns=True)
                               for i in range(40)}
                    start = now()
                    for q in queries.values():
                        c.send(q)
                    total += len(queries)
                    answers = (await c.wait_for(total, timeout=2))[total - len(queries):]
                    assert now() - start < 0.4 + 0.3
                    assert sorted(dns.message.from_wire(a).id for a in answers) == sorted(queries), knobs
                    for a in answers:
                        m = dns.message.from_wire(a)
                        if m.rcode() == dns.rcode.NOERROR:
                            check_answer(a, queries[m.id])
                        else:
                            r = check_error(a, queries[m.id], dns.rcode.SERVFAIL)
                            assert ede_codes(r) in ([EDE_TIMEOUT], [EDE_NETWORK]), (knobs, r.options)
                await asyncio.sleep(QUIET)
                assert len(c.received) == total

    run(main)


def test_failover_when_the_first_upstream_refuses(run):
    """A DoH upstream answering HTTP 503 refuses: the query passes to the next upstream."""

    async def main():
        async with engine_env(faults=Faults(http_status=503), upstreams=lambda up: (up.doh_url, up.dot_url),
                              timeout=2.0) as env:
            async with udp_client(env.address) as c:
                for i in range(3):
                    q = make_query(f"refused{i}.example", id=i)
                    start = now()
                    check_answer(await c.ask(q), q)
                    assert now() - start < 1.0
            assert env.up.stats.queries["dot"] == 3
            assert env.up.stats.http_errors_sent >= 1
            assert env.stats.servfail == 0

    run(main)
