"""What every upstream promises, whatever its transport (DoT, DoH, TCP, UDP), over real loopback sockets.

Every test runs under asyncio and uvloop (``run``), fails if the loop's exception
handler is called, and checks (``client``) that ``aclose()`` leaves no task and
no file descriptor of the client behind.
"""

from __future__ import annotations

import asyncio

import pytest
from upstream_support import (
    Recorder,
    after,
    check_answer,
    client,
    fds,
    gather_outcomes,
    make_query,
    no_leaks,
    now,
    refusing_port,
    serve,
    server_fds,
    serve_udp_and_tcp,
)

from dotproxy.errors import ConnectionFailed, UpstreamError, UpstreamTimeout, WireError
from dotproxy.testing import Faults
from dotproxy.upstream import Upstream, connect

SCHEMES = ["dot", "doh", "tcp", "udp"]
TRANSPORT = {"dot": "dot", "doh": "doh", "tcp": "tcp", "udp": "udp"}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_connect_does_not_dial_then_query_answers_with_the_callers_id(run, scheme):
    async def body():
        async with serve() as server:
            fds_before = fds()
            async with client(server, scheme) as up:
                assert isinstance(up, Upstream)
                await asyncio.sleep(0.05)
                assert server.stats.queries_total == 0
                assert sum(server.stats.connections_accepted.values()) == 0
                assert up.stats.dials == 0
                assert fds() - fds_before == set()  # not even a UDP socket yet
                for qid in (0, 1, 0xFFFF, 0x1234):
                    q = make_query("www.example", "AAAA" if qid % 2 else "A", id=qid)
                    check_answer(await up.query(q, deadline=after(3)), q)
                assert server.stats.queries[TRANSPORT[scheme]] == 4
                assert up.stats.queries == 4 and up.stats.answers == 4 and up.stats.failures == 0
                if scheme != "udp":
                    assert up.stats.dials == 1
                    assert server.stats.connections_accepted[scheme] == 1

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_connect_outside_a_running_loop(run, scheme):
    """connect() is a plain call: made before any loop runs, the upstream works on the loop that uses it."""
    with refusing_port() as port:
        url = {"dot": f"tls://127.0.0.1:{port}#dns.test", "doh": f"https://127.0.0.1:{port}/dns-query",
               "tcp": f"tcp://127.0.0.1:{port}", "udp": f"udp://127.0.0.1:{port}"}[scheme]
        up = connect(url, verify=False) if scheme in ("dot", "doh") else connect(url)

        async def body():
            try:
                with pytest.raises(UpstreamError):
                    await up.query(make_query(), deadline=after(0.3))
            finally:
                await up.aclose()

        run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_query_without_deadline_uses_the_timeout_option(run, scheme):
    async def body():
        async with serve(faults=Faults(stall=True)) as server:
            async with client(server, scheme, timeout=0.3) as up:
                start = now()
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query())
                assert 0.27 <= now() - start < 0.6
                assert up.stats.timeouts == 1

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_stalled_upstream_honours_the_deadline(run, scheme):
    async def body():
        async with serve(faults=Faults(stall=True)) as server:
            async with client(server, scheme) as up:
                for deadline in (0.3,):
                    start = now()
                    with pytest.raises(UpstreamTimeout) as info:
                        await up.query(make_query(), deadline=start + deadline)
                    elapsed = now() - start
                    assert deadline - 0.02 <= elapsed < deadline + 0.2, elapsed
                    assert isinstance(info.value, UpstreamError) and isinstance(info.value, TimeoutError)
                assert up.stats.timeouts == 1

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deadline_already_past(run, scheme):
    async def body():
        async with serve() as server:
            async with client(server, scheme) as up:
                start = now()
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query(), deadline=start - 1)
                assert now() - start < 0.1

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_malformed_query_is_a_wire_error_and_dials_nothing(run, scheme):
    async def body():
        async with serve() as server:
            async with client(server, scheme) as up:
                bad = [b"", b"\x00\x01\x02", make_query()[:-2], make_query() + b"\x00"]
                for data in bad:
                    with pytest.raises(WireError):
                        await up.query(data, deadline=after(1))
                await asyncio.sleep(0.02)
                assert up.stats.dials == 0
                assert server.stats.queries_total == 0
                assert sum(server.stats.connections_accepted.values()) == 0

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_query_after_aclose_fails_and_aclose_is_idempotent(run, scheme):
    async def body():
        async with serve() as server:
            async with client(server, scheme) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                await up.aclose()
                with pytest.raises(ConnectionFailed):
                    await up.query(q, deadline=after(2))
                await up.aclose()
            assert server.stats.queries_total == 1

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_aclose_with_queries_in_flight_and_waiting(run, scheme):
    """Queries in flight (and, on pooled transports, waiting for room) end promptly with an UpstreamError."""

    async def body():
        async with serve(faults=Faults(latency=2.0)) as server:
            async with no_leaks(server):
                up = connect(getattr(server, f"{scheme}_url"),
                             ca_file=server.ca_file if scheme in ("dot", "doh") else None,
                             pool_size=1, max_outstanding=5)
                tasks = [asyncio.create_task(up.query(make_query(f"f{i}.example"), deadline=after(5)))
                         for i in range(12)]
                await asyncio.sleep(0.2)
                assert not any(t.done() for t in tasks)
                start = now()
                await up.aclose()
                outcomes = await asyncio.wait_for(gather_outcomes(tasks), 1.0)
                assert now() - start < 1.0
                for o in outcomes:
                    assert isinstance(o, UpstreamError), o

    run(body)


def test_no_descriptor_or_task_left_after_a_busy_life(run):
    """All four transports, with faults, queries in flight at aclose(): nothing of the client remains."""

    async def body():
        rec = Recorder()
        rec.delay = 0.02
        async with serve_udp_and_tcp(answer=rec, faults=Faults(jitter=0.02, truncate_udp=True)) as (server, _):
            rec.server = server
            tasks_before = asyncio.all_tasks()
            fds_before = fds()
            ups = [
                connect(server.dot_url, ca_file=server.ca_file),
                connect(server.doh_url, ca_file=server.ca_file),
                connect(server.doh_url, ca_file=server.ca_file, method="GET"),
                connect(server.tcp_url),
                connect(server.udp_url),
            ]
            qs = [make_query(f"busy{i}.example") for i in range(60)]
            for up in ups:
                for q, a in zip(qs, await asyncio.gather(*(up.query(q, deadline=after(5)) for q in qs))):
                    check_answer(a, q)
            await server.close_all_connections()
            # Leave work in flight: a second burst, interrupted by aclose().
            server.faults.latency = 1.0
            tasks = [asyncio.create_task(up.query(q, deadline=after(5))) for up in ups for q in qs[:10]]
            await asyncio.sleep(0.1)
            await asyncio.gather(*(up.aclose() for up in ups))
            outcomes = await asyncio.wait_for(gather_outcomes(tasks), 2.0)
            assert all(isinstance(o, UpstreamError) for o in outcomes), outcomes
            end = now() + 2.0
            while True:
                await asyncio.sleep(0.01)
                leaked = fds() - fds_before - server_fds(server)
                extra = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
                if not leaked and not extra:
                    break
                assert now() < end, (leaked, extra)

    run(body)


@pytest.mark.parametrize("scheme, pool_size", [("dot", 1), ("doh", 1), ("dot", 2)])
def test_idle_close_on_a_dead_path_does_not_block_the_pool(run, scheme, pool_size):
    """The path died silently (blackhole), then the idle timer closed the pooled connections.

    A TLS close waits for the peer's close_notify (asyncio/uvloop: up to 30 s), which never
    comes; the closing connections must not keep the pool full meanwhile: the next query
    dials a fresh connection and is answered at once.
    """

    async def body():
        async with serve(faults=Faults(latency=0.05)) as server:
            async with client(server, scheme, pool_size=pool_size, spread_at=1, idle_timeout=0.2) as up:
                qs = [make_query(f"z{i}.example") for i in range(4)]
                for q, a in zip(qs, await asyncio.gather(*(up.query(q, deadline=after(2)) for q in qs))):
                    check_answer(a, q)
                assert up.connections == pool_size
                server.faults.latency = 0.0
                server.blackhole_all_connections()
                await asyncio.sleep(0.4)  # the idle timer has closed them
                start = now()
                q = make_query()
                check_answer(await up.query(q, deadline=after(1.0)), q)
                assert now() - start < 0.5
            await server.close_all_connections(timeout=0.2)

    run(body)


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_dead_connection_is_found_even_when_its_queries_are_cancelled(run, scheme):
    """A hedging caller cancels its query on this upstream when another upstream answers first.

    The connection died silently (blackhole). Each cancelled query leaves an
    unanswered question on it (an orphaned ID, a reset stream); silence past the
    liveness bound must retire the connection even though nobody waits any more,
    or every later hedged query is sent into the void, forever.
    """

    async def body():
        async with serve() as server:
            async with client(server, scheme, quiet_after=0.2, liveness_min=0.3, liveness_max=0.3) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                server.blackhole_all_connections()
                await asyncio.sleep(0.3)
                lost = 0
                for i in range(2):
                    hq = make_query(f"hedged{i}.example")
                    task = asyncio.create_task(up.query(hq, deadline=after(5)))
                    await asyncio.sleep(0.1)
                    if task.done():  # answered on a fresh connection within 0.1 s
                        check_answer(task.result(), hq)
                    else:
                        task.cancel()  # the other upstream won
                        with pytest.raises(asyncio.CancelledError):
                            await task
                        lost += 1
                    await asyncio.sleep(0.35)  # past the liveness bound
                assert up.stats.liveness_failures >= 1, "the silent connection is still in the pool"
                assert lost == 1  # only the first hedged query went into the void
                start = now()
                check_answer(await up.query(q, deadline=after(2.5)), q)
                assert now() - start < 0.25
            await server.close_all_connections(timeout=0.2)

    run(body)


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_server_idle_close_racing_queries_loses_none(run, scheme):
    """The server closes connections idle for 0.1 s while queries come about that often: FINs cross queries."""

    async def body():
        async with serve(faults=Faults(idle_close=0.1)) as server:
            async with client(server, scheme) as up:
                for i in range(10):
                    await asyncio.sleep(0.085 + 0.005 * (i % 7))
                    q = make_query(f"race{i}.example")
                    start = now()
                    check_answer(await up.query(q, deadline=after(2)), q)
                    assert now() - start < 0.3
                assert up.stats.failures == 0 and up.stats.retries <= 10
                assert up.stats.dials >= 2

    run(body)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_large_answer(run, scheme):
    """An answer of ~60 kB (many TLS records, several reads, several HTTP/2 DATA frames); UDP gets TC -> TCP."""

    def answer(query: bytes):
        import dns.message
        import dns.rrset

        qm = dns.message.from_wire(query)
        r = dns.message.make_response(qm)
        name = qm.question[0].name
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT",
                                            *[f'"{i:04d}' + "y" * 240 + '"' for i in range(240)]))
        return r.to_wire(max_size=65535)

    async def body():
        async with serve_udp_and_tcp(answer=answer) as (server, _):
            async with client(server, scheme) as up:
                q = make_query("big.example", "TXT", id=0x2222)
                a = await up.query(q, deadline=after(3))
                r = check_answer(a, q)
                assert len(a) > 50000 and len(r.answer[0]) == 240

    run(body)
