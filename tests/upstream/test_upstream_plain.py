"""Plain DNS upstreams: UDP (with TC -> TCP) and pipelined TCP (RFC 7766), over real loopback sockets."""

from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import pytest
from upstream_support import (
    Recorder,
    after,
    check_answer,
    client,
    gather_outcomes,
    make_query,
    now,
    serve,
    serve_udp_and_tcp,
)

from dotproxy import wire
from dotproxy.errors import UpstreamTimeout
from dotproxy.testing import Faults, default_answer

# --------------------------------------------------------------------------- UDP


def test_udp_many_concurrent_queries(run):
    async def body():
        async with serve(faults=Faults(jitter=0.02)) as server:
            async with client(server, "udp") as up:
                qs = [make_query(f"u{i}.example", id=i % 3) for i in range(300)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(5)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert server.stats.queries["udp"] == 300

    run(body)


def test_udp_truncated_answer_is_asked_again_over_tcp(run):
    async def body():
        async with serve_udp_and_tcp(faults=Faults(truncate_udp=True)) as (server, relayed):
            async with client(server, "udp") as up:
                q = make_query("tc.example", id=0x4321)
                a = await up.query(q, deadline=after(3))
                r = check_answer(a, q)
                assert not r.flags & dns.flags.TC
                assert server.stats.truncated_sent == 1
                assert server.stats.queries["udp"] == 1 and server.stats.queries["tcp"] == 1
                assert relayed[0] == 1
                q2 = make_query("tc2.example", id=1)
                check_answer(await up.query(q2, deadline=after(3)), q2)
                assert relayed[0] == 1  # the TCP connection is pooled, not re-dialled

    run(body)


def test_udp_stats_count_answers_that_came_over_tcp(run):
    async def body():
        async with serve_udp_and_tcp(faults=Faults(truncate_udp=True)) as (server, _relayed):
            async with client(server, "udp") as up:
                for i in range(2):
                    q = make_query(f"tc{i}.example")
                    check_answer(await up.query(q, deadline=after(3)), q)
                assert up.stats.queries == 2 and up.stats.failures == 0
                assert up.stats.answers == 2

    run(body)


def test_udp_query_is_resent(run):
    async def body():
        rec = Recorder()
        rec.drop_once = {"lost"}
        async with serve(answer=rec) as server:
            async with client(server, "udp", udp_retry=0.1) as up:
                q = make_query("lost.example")
                start = now()
                check_answer(await up.query(q, deadline=after(2)), q)
                assert 0.09 <= now() - start < 0.5
                assert rec.labels() == ["lost", "lost"]
                ids = [wire.parse_query(m).id for m in rec.queries]
                assert ids[0] == ids[1]  # the same message again

    run(body)


@pytest.mark.parametrize("fault", ["wrong_id", "garbage"])
def test_udp_bad_replies_are_dropped_and_counted(run, fault):
    async def body():
        async with serve(faults=Faults(**{fault: 1.0})) as server:
            async with client(server, "udp") as up:
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query(), deadline=after(0.3))
                assert up.stats.answers == 0
                assert up.stats.unexpected_answers == 1

    run(body)


def test_udp_answer_to_another_question_is_dropped(run):
    async def body():
        def answer(query: bytes):
            # Right ID, wrong question.
            other = wire.set_id(make_query("other.example"), wire.parse_query(query).id)
            return default_answer(other)

        async with serve(answer=answer) as server:
            async with client(server, "udp") as up:
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query("asked.example"), deadline=after(0.3))
                assert up.stats.unexpected_answers == 1

    run(body)


def test_udp_uses_random_ids_and_restores_the_callers(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            async with client(server, "udp") as up:
                qs = [make_query(f"r{i}.example", id=0) for i in range(50)]
                for q, a in zip(qs, await asyncio.gather(*(up.query(q, deadline=after(2)) for q in qs))):
                    check_answer(a, q)
            ids = [wire.parse_query(m).id for m in rec.queries]
            assert len(set(ids)) == 50  # unique among the queries in flight, not the client's 0

    run(body)


# --------------------------------------------------------------------------- TCP


def test_tcp_pipelined_reordered(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec, faults=Faults(reorder=True, reorder_window=0.01)) as server:
            async with client(server, "tcp", pool_size=1, max_outstanding=500) as up:
                qs = [make_query(f"t{i}.example", id=7) for i in range(400)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(5)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert server.stats.connections_accepted["tcp"] == 1
                assert up.stats.unexpected_answers == 0
            # Plain TCP: no padding and no keepalive added, nothing to strip.
            for m in rec.queries:
                assert dns.message.from_wire(m).edns < 0

    run(body)


def test_tcp_close_after_mid_burst_loses_nothing(run):
    async def body():
        async with serve(faults=Faults(close_after=100, jitter=0.02)) as server:
            async with client(server, "tcp", pool_size=1, max_outstanding=500) as up:
                qs = [make_query(f"ca{i}.example") for i in range(180)]
                outcomes = await gather_outcomes(up.query(q, deadline=after(5)) for q in qs)
                for q, a in zip(qs, outcomes):
                    check_answer(a, q)
                assert up.stats.retries == 80 and up.stats.dials == 2

    run(body)
