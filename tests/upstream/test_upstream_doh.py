"""The pooled DNS-over-HTTPS/2 upstream (RFC 8484) against the fault-injecting test upstream.

Real loopback sockets, under asyncio and uvloop; the loop's exception handler must
never be called; ``client()`` checks that ``aclose()`` leaves nothing behind.
"""

from __future__ import annotations

import asyncio

import pytest
from upstream_support import (
    OPT_PADDING,
    Recorder,
    after,
    check_answer,
    client,
    has_opt,
    make_query,
    now,
    serve,
    wait_until,
)

from dotproxy import wire
from dotproxy.errors import (
    BadResponse,
    ConnectionFailed,
    TLSVerificationFailed,
    UpstreamRefused,
    UpstreamTimeout,
)
from dotproxy.testing import Faults


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_post_and_get_padded_id_zero(run, method):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            async with client(server, "doh", method=method) as up:
                qs = [make_query("www.example", id=0x7777), make_query("e.example", "AAAA", id=3, edns=True)]
                answers = [await up.query(q, deadline=after(3)) for q in qs]
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert not has_opt(answers[0]) and has_opt(answers[1])
            assert server.stats.queries["doh"] == 2 and server.stats.http_errors_sent == 0
            for m in rec.queries:
                assert wire.parse_query(m).id == 0  # RFC 8484 4.1
                assert len(m) % 128 == 0
                assert OPT_PADDING in [code for code, _ in wire.parse_query(m).edns.options]

    run(body)


def test_wrong_ca_and_pins(run, tmp_path):
    from dotproxy.testing import make_certificates

    other = make_certificates(tmp_path)

    async def body():
        async with serve() as server:
            async with client(server, "doh", ca_file=other.ca_file) as up:
                with pytest.raises(TLSVerificationFailed):
                    await up.query(make_query(), deadline=after(3))
            async with client(server, "doh", url=f"https://127.0.0.1:{server.doh_address[1]}/dns-query#bad.test") as up:
                with pytest.raises(TLSVerificationFailed):
                    await up.query(make_query(), deadline=after(3))
            async with client(server, "doh", spki_pins=["B" * 43 + "="]) as up:
                with pytest.raises(TLSVerificationFailed):
                    await up.query(make_query(), deadline=after(3))
            async with client(server, "doh", spki_pins=[server.spki_pin]) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(3)), q)
            assert server.stats.queries["doh"] == 1

    run(body)


def test_server_without_h2_alpn_is_refused(run):
    async def body():
        async with serve() as server:
            # The DoT listener offers ALPN "dot" only: no HTTP/2 there.
            url = f"https://127.0.0.1:{server.dot_address[1]}/dns-query#{server.tls_name}"
            async with client(server, "doh", url=url) as up:
                with pytest.raises(ConnectionFailed) as info:
                    await up.query(make_query(), deadline=after(3))
                assert "h2" in str(info.value) or "HTTP/2" in str(info.value)

    run(body)


def test_many_queries_multiplexed_on_one_connection(run):
    async def body():
        async with serve(faults=Faults(latency=0.01, jitter=0.05)) as server:
            async with client(server, "doh", pool_size=1, max_outstanding=1000) as up:
                qs = [make_query(f"m{i}.example", id=i % 5) for i in range(1000)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert up.stats.dials == 1 and server.stats.connections_accepted["doh"] == 1
                assert server.stats.doh_streams == 1000

    run(body, timeout=30)


def test_stream_limit_queues_the_rest(run):
    async def body():
        async with serve(faults=Faults(max_concurrent_streams=5, latency=0.005)) as server:
            async with client(server, "doh", pool_size=1) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)  # the server's SETTINGS are known now
                qs = [make_query(f"s{i}.example") for i in range(200)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert server.stats.doh_streams_refused == 0  # the client kept within the limit
                assert server.stats.doh_streams == 201
                assert up.stats.dials == 1

    run(body)


def test_max_outstanding_caps_open_streams(run):
    async def body():
        rec = Recorder()
        rec.delay = 0.03
        async with serve(answer=rec) as server:
            async with client(server, "doh", pool_size=1, max_outstanding=10) as up:
                qs = [make_query(f"m{i}.example") for i in range(100)]
                for q, a in zip(qs, await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))):
                    check_answer(a, q)
                assert rec.max_inflight == 10
                assert up.stats.dials == 1 and server.stats.doh_streams_refused == 0

    run(body)


def test_stream_limit_cold_burst_loses_nothing(run):
    async def body():
        async with serve(faults=Faults(max_concurrent_streams=5)) as server:
            async with client(server, "doh") as up:
                qs = [make_query(f"s{i}.example") for i in range(200)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert up.stats.failures == 0

    run(body)


def test_cancel_resets_the_stream(run):
    async def body():
        async with serve(faults=Faults(latency=0.2)) as server:
            async with client(server, "doh", pool_size=1) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                task = asyncio.create_task(up.query(make_query("c.example"), deadline=after(5)))
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query("t.example"), deadline=after(0.05))
                # Both streams were reset: their answers found no stream to go to.
                await wait_until(lambda: server.stats.replies_discarded == 2, timeout=2.0)
                check_answer(await up.query(q, deadline=after(2)), q)
                assert up.stats.dials == 1 and server.stats.connections_accepted["doh"] == 1

    run(body)


@pytest.mark.parametrize("before", [True, False])
def test_goaway_mid_burst_loses_no_query(run, before):
    async def body():
        faults = Faults(goaway_after=60, goaway_before_answers=before, jitter=0.01)
        async with serve(faults=faults) as server:
            async with client(server, "doh") as up:
                qs = [make_query(f"g{i}.example", id=i) for i in range(300)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert server.stats.goaways_sent >= 4
                assert up.stats.dials >= 5
                assert up.stats.failures == 0

    run(body)


def test_goaway_moves_unprocessed_queries_at_once(run):
    """GOAWAY: the queries the server did not process go to a new connection right away, even
    with pool_size=1; they do not wait for the answers still due on the draining one."""

    async def body():
        async with serve(faults=Faults(latency=0.4)) as server:
            async with client(server, "doh", pool_size=1) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                server.faults.goaway_after = 1  # read when a connection opens
                await server.close_all_connections()
                await wait_until(lambda: up.connections == 0)
                start = now()
                took = []

                async def one(q):
                    a = await up.query(q, deadline=after(3))
                    took.append(now() - start)
                    return a

                qs = [make_query(f"u{i}.example") for i in range(2)]
                for q, a in zip(qs, await asyncio.gather(*(one(q) for q in qs))):
                    check_answer(a, q)
                # One processed (0.4 s), one moved to a fresh connection and answered there (0.4 s more
                # at most, not after the first one's answer).
                assert max(took) < 0.7, took
                assert server.stats.goaways_sent >= 1 and up.stats.failures == 0

    run(body)


def test_close_after_mid_burst_loses_nothing(run):
    async def body():
        async with serve(faults=Faults(close_after=150, jitter=0.02)) as server:
            async with client(server, "doh", pool_size=1, max_outstanding=1000) as up:
                qs = [make_query(f"ca{i}.example") for i in range(250)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(5)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert up.stats.dials == 2 and up.stats.retries >= 1

    run(body)


def test_ping_keeps_a_slow_but_alive_connection(run):
    """A reused, quiet connection is PINGed: a server that acks at once but answers slowly is not retired."""

    async def body():
        async with serve() as server:
            async with client(server, "doh", quiet_after=0.1, liveness_min=0.1, liveness_max=0.2) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                await asyncio.sleep(0.15)
                server.faults.latency = 0.6
                start = now()
                check_answer(await up.query(q, deadline=after(2)), q)
                assert 0.55 <= now() - start < 1.0
                assert up.stats.liveness_failures == 0 and up.stats.retries == 0 and up.stats.dials == 1

    run(body)


def test_blackholed_idle_connection_is_replaced(run):
    async def body():
        async with serve() as server:
            async with client(server, "doh") as up:
                q = make_query()
                for _ in range(3):
                    check_answer(await up.query(q, deadline=after(2)), q)
                server.blackhole_all_connections()
                await asyncio.sleep(up.options.quiet_after + 0.1)
                start = now()
                check_answer(await up.query(q, deadline=after(2.5)), q)
                assert now() - start < 1.5
                assert up.stats.liveness_failures == 1 and up.stats.retries == 1
                assert server.stats.connections_accepted["doh"] == 2
            await server.close_all_connections(timeout=0.2)

    run(body)


def test_idle_connection_is_closed_with_goaway(run):
    async def body():
        async with serve() as server:
            async with client(server, "doh", idle_timeout=0.3) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                took = await wait_until(lambda: server.stats.connections_open == 0, timeout=2.0)
                assert took >= 0.2
                assert server.stats.connections_closed_by_server == 0
                check_answer(await up.query(q, deadline=after(2)), q)
                assert up.stats.dials == 2

    run(body)


def test_server_closed_connection_then_query(run):
    async def body():
        async with serve() as server:
            async with client(server, "doh") as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                await server.close_all_connections()
                start = now()
                check_answer(await up.query(q, deadline=after(2.5)), q)
                assert now() - start < 1.0
                assert server.stats.tls_resumed == 1 and up.stats.resumed == 1

    run(body)


@pytest.mark.parametrize("status", [500, 404, 400])
def test_http_error_status_is_refused_per_query(run, status):
    async def body():
        async with serve(faults=Faults(http_status=status)) as server:
            async with client(server, "doh") as up:
                for i in range(2):
                    start = now()
                    with pytest.raises(UpstreamRefused) as info:
                        await up.query(make_query(), deadline=after(2))
                    assert info.value.status == status
                    assert str(status) in str(info.value)
                    assert now() - start < 0.5
                    assert server.stats.queries["doh"] == i + 1  # no refusal on our side for these
                server.faults.http_status = None
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)

    run(body)


@pytest.mark.parametrize("status", [429, 503])
def test_429_makes_the_upstream_refuse_for_retry_after(run, status):
    async def body():
        async with serve(faults=Faults(http_status=status)) as server:  # with retry-after: 1
            async with client(server, "doh") as up:
                with pytest.raises(UpstreamRefused) as info:
                    await up.query(make_query(), deadline=after(2))
                assert info.value.status == status
                assert info.value.retry_after == 1.0
                refused_at = now()
                server.faults.http_status = None
                for _ in range(3):
                    start = now()
                    with pytest.raises(UpstreamRefused) as info:
                        await up.query(make_query(), deadline=after(2))
                    assert now() - start < 0.05  # fail fast, without asking
                    assert 0 < info.value.retry_after <= 1.0
                assert server.stats.queries["doh"] == 1
                if status == 503:
                    return  # the same path; the wait for Retry-After is checked once, with 429
                await asyncio.sleep(0.5)
                with pytest.raises(UpstreamRefused):
                    await up.query(make_query(), deadline=after(2))
                await asyncio.sleep(max(0.0, refused_at + 1.05 - now()))
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                assert server.stats.queries["doh"] == 2

    run(body)


def test_garbage_answer_is_a_bad_response_at_once(run):
    async def body():
        async with serve(faults=Faults(garbage=1.0)) as server:
            async with client(server, "doh") as up:
                start = now()
                with pytest.raises(BadResponse):
                    await up.query(make_query(), deadline=after(2))
                assert now() - start < 0.5
                server.faults.garbage = 0.0
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)

    run(body)


def test_stalled_doh_deadline(run):
    async def body():
        async with serve(faults=Faults(stall=True)) as server:
            async with client(server, "doh") as up:
                start = now()
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query(), deadline=after(0.4))
                assert 0.38 <= now() - start < 0.6
                server.faults.stall = False
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)

    run(body)
