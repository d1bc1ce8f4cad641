"""The pooled, pipelined DNS-over-TLS upstream (RFC 7858) against the fault-injecting test upstream.

Real loopback sockets, under asyncio and uvloop; the loop's exception handler must
never be called; ``client()`` checks that ``aclose()`` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl

import dns.message
import pytest
from upstream_support import (
    OPT_KEEPALIVE,
    OPT_PADDING,
    Recorder,
    after,
    check_answer,
    client,
    gather_outcomes,
    has_opt,
    keepalive_answer,
    make_query,
    no_leaks,
    now,
    refusing_port,
    serve,
    wait_until,
)

from dotproxy import wire
from dotproxy.errors import (
    ConnectionFailed,
    TLSVerificationFailed,
    UpstreamError,
    UpstreamTimeout,
)
from dotproxy.io.tls import client_context
from dotproxy.testing import Faults, make_certificates
from dotproxy.testing.answer import default_answer
from dotproxy.upstream import connect
from dotproxy.upstream import pool as pool_module
from dotproxy.upstream.base import Backoff


def causes(exc: BaseException) -> list[BaseException]:
    out = []
    while exc.__cause__ is not None:
        exc = exc.__cause__
        out.append(exc)
    return out


def dot_port(server) -> int:
    return server.dot_address[1]


# --------------------------------------------------------------------------- TLS


def test_client_context_is_tls12_or_later_and_verifies():
    ctx = client_context()
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_wrong_ca_fails_verification(run, tmp_path):
    other = make_certificates(tmp_path)

    async def body():
        async with serve() as server:
            async with client(server, "dot", ca_file=other.ca_file) as up:
                with pytest.raises(TLSVerificationFailed) as info:
                    await up.query(make_query(), deadline=after(3))
                assert "certificate" in str(info.value)
                assert up.stats.handshakes == 0 and up.stats.dial_failures == 1
                # While backing off, the next query fails fast with the same kind of error.
                start = now()
                with pytest.raises(TLSVerificationFailed):
                    await up.query(make_query(), deadline=after(3))
                assert now() - start < 0.1
                assert up.stats.dials == 1
            assert server.stats.queries_total == 0

    run(body)


def test_verification_is_on_by_default(run):
    async def body():
        async with serve() as server:
            # No CA file: the system store does not know the test CA.
            async with client(server, "dot", ca_file=None) as up:
                with pytest.raises(TLSVerificationFailed):
                    await up.query(make_query(), deadline=after(3))
            assert server.stats.queries_total == 0

    run(body)


def test_wrong_auth_name_fails_verification(run):
    async def body():
        async with serve() as server:
            url = f"tls://127.0.0.1:{dot_port(server)}#wrong.test"
            async with client(server, url=url) as up:
                with pytest.raises(TLSVerificationFailed):
                    await up.query(make_query(), deadline=after(3))
            assert server.stats.queries_total == 0

    run(body)


def test_auth_name_defaults_to_the_address(run):
    async def body():
        async with serve() as server:
            # The certificate has IP:127.0.0.1 among its names.
            async with client(server, url=f"tls://127.0.0.1:{dot_port(server)}") as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(3)), q)

    run(body)


def test_verify_false_works_and_warns(run, caplog):
    async def body():
        async with serve() as server:
            with caplog.at_level(logging.WARNING):
                async with client(server, url=f"tls://127.0.0.1:{dot_port(server)}#wrong.test", ca_file=None,
                                  verify=False) as up:
                    q = make_query()
                    check_answer(await up.query(q, deadline=after(3)), q)

    run(body)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "verif" in r.getMessage().lower()]
    assert warnings, caplog.records


def test_spki_pins(run):
    async def body():
        async with serve() as server:
            async with client(server, spki_pins=[server.spki_pin]) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(3)), q)
            async with client(server, spki_pins=server.spki_pin) as up:  # a single pin as a string
                check_answer(await up.query(q, deadline=after(3)), q)
            wrong = "A" * 43 + "="
            async with client(server, spki_pins=[wrong]) as up:
                with pytest.raises(TLSVerificationFailed) as info:
                    await up.query(q, deadline=after(3))
                assert "pin" in str(info.value)
                assert up.stats.handshakes == 0
            async with client(server, spki_pins=[wrong, server.spki_pin]) as up:  # any pin matching is enough
                check_answer(await up.query(q, deadline=after(3)), q)
            # Pin-only trust (no CA, no name check): the pin is still enforced.
            url = f"tls://127.0.0.1:{dot_port(server)}#not-the-name.test"
            async with client(server, url=url, ca_file=None, verify=False, spki_pins=[server.spki_pin]) as up:
                check_answer(await up.query(q, deadline=after(3)), q)
            async with client(server, url=url, ca_file=None, verify=False, spki_pins=[wrong]) as up:
                with pytest.raises(TLSVerificationFailed):
                    await up.query(q, deadline=after(3))
            assert server.stats.queries["dot"] == 4

    run(body)


def test_tls_handshake_failure_is_connection_failed_quickly(run):
    async def body():
        async with serve(faults=Faults(tls_fail=True)) as server:
            async with client(server) as up:
                start = now()
                with pytest.raises(ConnectionFailed) as info:
                    await up.query(make_query(), deadline=after(3))
                assert now() - start < 1.0
                assert not isinstance(info.value, TLSVerificationFailed)
                assert server.stats.tls_fail_injected == 1

    run(body)


def test_silent_server_times_out_the_handshake(run):
    """A server that accepts TCP and never answers the ClientHello: ConnectionFailed after connect_timeout."""

    async def body():
        accepted: list[asyncio.Transport] = []

        class Silent(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.append(transport)

        async with serve() as server:
            silent = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
            port = silent.sockets[0].getsockname()[1]
            try:
                async with no_leaks(server):
                    up = connect(f"tls://127.0.0.1:{port}#dns.test", ca_file=server.ca_file, connect_timeout=0.3)
                    try:
                        start = now()
                        with pytest.raises(ConnectionFailed) as info:
                            await up.query(make_query(), deadline=after(3))
                        assert 0.25 <= now() - start < 1.0
                        assert "timed out" in str(info.value) or "handshake" in str(info.value)
                    finally:
                        await up.aclose()
                    for t in accepted:
                        t.close()
            finally:
                silent.close()
                await silent.wait_closed()

    run(body)


def test_deadline_during_a_slow_dial_and_aclose_cancels_the_dial(run):
    """The query's deadline wins over connect_timeout; aclose() stops the dial in progress."""

    async def body():
        accepted: list[asyncio.Transport] = []

        class Silent(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.append(transport)

        async with serve() as server:
            silent = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
            port = silent.sockets[0].getsockname()[1]
            try:
                async with no_leaks(server):
                    up = connect(f"tls://127.0.0.1:{port}#dns.test", ca_file=server.ca_file, connect_timeout=5)
                    try:
                        start = now()
                        with pytest.raises(UpstreamTimeout):
                            await up.query(make_query(), deadline=after(0.3))
                        assert now() - start < 0.5
                        assert up.stats.dials == 1 and up.stats.dial_failures == 0  # still dialling
                    finally:
                        start = now()
                        await up.aclose()
                        assert now() - start < 0.5
                    for t in accepted:
                        t.close()
            finally:
                silent.close()
                await silent.wait_closed()

    run(body)


def test_tls12_server(run):
    async def body():
        async with serve() as server:
            for ctx in server._ssl_contexts:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            async with client(server) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                (conn,) = up._conns
                assert conn.transport.get_extra_info("ssl_object").version() == "TLSv1.2"
                await server.close_all_connections()
                await wait_until(lambda: up.connections == 0)
                check_answer(await up.query(q, deadline=after(2)), q)
                assert server.stats.tls_resumed == 1 and up.stats.resumed == 1

    run(body)


# --------------------------------------------------------------------------- pipelining


def test_thousand_concurrent_queries_on_one_connection_out_of_order(run):
    async def body():
        async with serve(faults=Faults(latency=0.01, jitter=0.08)) as server:
            async with client(server, pool_size=1, max_outstanding=1000) as up:
                rng = random.Random(1)
                qs = [make_query(f"q{i}.pipeline.example", "A" if i % 3 else "AAAA", id=rng.choice((0, 1, 7, i)))
                      for i in range(1000)]
                order: list[int] = []

                async def one(i):
                    a = await up.query(qs[i], deadline=after(10))
                    order.append(i)
                    return a

                answers = await asyncio.gather(*(one(i) for i in range(1000)))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert order != sorted(order)  # they really came back out of order
                assert up.stats.dials == 1 and up.stats.handshakes == 1
                assert server.stats.connections_accepted["dot"] == 1
                assert server.stats.queries["dot"] == 1000
                assert up.stats.unexpected_answers == 0 and up.stats.late_answers == 0
                assert up.stats.retries == 0

    run(body, timeout=30)


def split_frames(data: bytes) -> list[bytes]:
    """Split 2-octet-length framed messages; the data must end at a frame's end."""
    out, off = [], 0
    while off < len(data):
        length = int.from_bytes(data[off:off + 2], "big")
        out.append(data[off + 2:off + 2 + length])
        off += 2 + length
    assert off == len(data), "a partial frame"
    return out


def test_queries_of_one_iteration_leave_in_one_write_the_last_in_a_record_of_its_own(run):
    """One ``writelines`` call (one socket write) per loop iteration, of two items (TLS records):
    every query but the last, then the last alone, so that the socket stays readable while a
    server that reads one query at a time (dnsdist 1.7) has queries of ours buffered in OpenSSL
    (see StreamConnection.write_pending)."""

    async def body():
        async with serve() as server:
            async with client(server, pool_size=1) as up:
                q = make_query()
                await up.query(q, deadline=after(2))
                (conn,) = up._conns
                writes: list[int] = []
                real = conn.transport

                class Counting:
                    def write(self, data):
                        raise AssertionError("a stream connection writes with writelines")

                    def writelines(self, frames):
                        writes.append([len(split_frames(item)) for item in frames])
                        real.writelines(frames)

                    def __getattr__(self, name):
                        return getattr(real, name)

                conn.transport = Counting()
                qs = [make_query(f"b{i}.example") for i in range(100)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(3)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert writes == [[99, 1]], writes
                conn.transport = real

    run(body)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_every_read_is_acknowledged_at_once(run):
    # A server with Nagle on holds the rest of an answer until its first segment is ACKed;
    # the client must not sit on that ACK for the delayed-ACK timer (up to 40 ms).
    async def body():
        async with serve(faults=Faults(jitter=0.1)) as server:
            async with client(server, pool_size=1) as up:
                await up.query(make_query(), deadline=after(2))
                (conn,) = up._conns
                assert conn._fd == conn.transport.get_extra_info("socket").fileno()
                real = pool_module.quickack
                calls: list[int] = []

                def recording(fd):
                    calls.append(fd)
                    real(fd)

                pool_module.quickack = recording
                try:
                    # One query: no answer is held behind it, nothing to acknowledge early.
                    q = make_query("ack.example")
                    check_answer(await up.query(q, deadline=after(2)), q)
                    assert conn._fd not in calls
                    # Several in one write, answered at scattered times: a read that leaves some
                    # outstanding is acknowledged at once (nothing else is written then).
                    qs = [make_query(f"ack{i}.example") for i in range(5)]
                    answers = await asyncio.gather(*(up.query(q, deadline=after(2)) for q in qs))
                    for q, a in zip(qs, answers):
                        check_answer(a, q)
                    assert conn._fd in calls
                finally:
                    pool_module.quickack = real

    run(body)


def test_cancelled_query_late_answer_is_dropped_and_its_id_not_reused(run):
    """A query is cancelled while the server sits on it; newer queries are sent while its ID is
    orphaned (the allocator is even pointed at that ID); the late answer arrives among theirs."""

    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            rec.server = server
            async with client(server, pool_size=1) as up:
                await up.query(make_query("warm.example"), deadline=after(2))
                (conn,) = up._conns
                rec.hold = {"slow", "held0", "held1", "held2", "held3", "held4"}
                task = asyncio.create_task(up.query(make_query("slow.example", id=0x5151), deadline=after(5)))
                await wait_until(lambda: "slow" in rec.labels(), what="the server got the slow query")
                (orphan,) = conn.core.pending_ids()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert conn.core.orphans == 1 and conn.core.outstanding == 0
                conn.core._next_id = orphan  # the next allocation starts right at the orphaned ID
                qs = [make_query(f"held{i}.example", id=0x5151) for i in range(5)]
                tasks = [asyncio.create_task(up.query(q, deadline=after(5))) for q in qs]
                await wait_until(lambda: len(rec.queries) == 7, what="the server got the new queries")
                assert orphan not in conn.core.pending_ids()
                assert orphan not in [wire.parse_query(m).id for m in rec.queries[2:]]
                rec.release()  # the late answer and the new ones, all at once
                answers = await asyncio.gather(*tasks)
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                await wait_until(lambda: up.stats.late_answers == 1, what="the late answer is counted")
                assert up.stats.unexpected_answers == 0
                assert conn.core.orphans == 0
                assert up.stats.dials == 1

    run(body)


def test_timed_out_query_late_answer_is_dropped(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            async with client(server, pool_size=1) as up:
                rec.hold = {"slow"}
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query("slow.example"), deadline=after(0.2))
                q = make_query("fast.example")
                check_answer(await up.query(q, deadline=after(2)), q)
                rec.release()
                await wait_until(lambda: up.stats.late_answers == 1)
                check_answer(await up.query(q, deadline=after(2)), q)
                assert up.stats.unexpected_answers == 0 and up.stats.dials == 1

    run(body)


def test_too_many_orphans_retire_the_connection(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            async with client(server, pool_size=1, max_orphans=3) as up:
                rec.hold = {"h"}
                for _ in range(4):
                    with pytest.raises(UpstreamTimeout):
                        await up.query(make_query("h.example"), deadline=after(0.05))
                q = make_query("next.example")
                check_answer(await up.query(q, deadline=after(2)), q)
                assert up.stats.dials == 2  # the orphan-laden connection was retired
                await wait_until(lambda: server.stats.connections_open == 1, what="the old connection closed")
                rec.release()

    run(body)


# --------------------------------------------------------------------------- pool


def test_cold_burst_dials_single_flight(run):
    async def body():
        async with serve(faults=Faults(latency=0.05)) as server:
            async with client(server) as up:  # pool_size 2 by default
                qs = [make_query(f"c{i}.example") for i in range(500)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert up.stats.dials == 2 and up.stats.handshakes == 2 and up.stats.dial_failures == 0
                assert server.stats.tls_handshakes == 2
                assert server.stats.connections_accepted["dot"] == 2
                assert up.stats.connections_open == 2 and up.connections == 2

    run(body)


def test_cold_burst_pool_of_one(run):
    async def body():
        async with serve() as server:
            async with client(server, pool_size=1, max_outstanding=600) as up:
                qs = [make_query(f"c{i}.example") for i in range(500)]
                for q, a in zip(qs, await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))):
                    check_answer(a, q)
                assert up.stats.dials == up.stats.handshakes == server.stats.tls_handshakes == 1

    run(body)


def test_least_outstanding_connection_is_chosen(run):
    async def body():
        async with serve(faults=Faults(latency=0.5)) as server:
            async with client(server, pool_size=2, spread_at=1) as up:
                first = [asyncio.create_task(up.query(make_query(f"a{i}.example"), deadline=after(5)))
                         for i in range(10)]
                await wait_until(lambda: up.connections == 2, what="the second connection")
                assert [c.load for c in up._conns] == [10, 0]
                second = [asyncio.create_task(up.query(make_query(f"b{i}.example"), deadline=after(5)))
                          for i in range(10)]
                await asyncio.sleep(0)
                await wait_until(lambda: sum(c.load for c in up._conns) == 20)
                assert [c.load for c in up._conns] == [10, 10]
                for a in await asyncio.gather(*first, *second):
                    assert isinstance(a, bytes)

    run(body)


def test_max_outstanding_caps_a_connection(run):
    async def body():
        rec = Recorder()
        rec.delay = 0.03
        async with serve(answer=rec) as server:
            async with client(server, pool_size=1, max_outstanding=10) as up:
                qs = [make_query(f"m{i}.example") for i in range(100)]
                for q, a in zip(qs, await asyncio.gather(*(up.query(q, deadline=after(10)) for q in qs))):
                    check_answer(a, q)
                assert rec.max_inflight == 10
                assert up.stats.dials == 1

    run(body)


def test_tls_session_resumption_on_reconnect(run):
    async def body():
        async with serve() as server:
            async with client(server) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                await server.close_all_connections()
                await wait_until(lambda: up.connections == 0, what="the client saw the close")
                check_answer(await up.query(q, deadline=after(2)), q)
                assert server.stats.tls_handshakes == 2
                assert server.stats.tls_resumed == 1
                assert up.stats.handshakes == 2 and up.stats.resumed == 1

    run(body)


def test_dial_backoff_fails_fast_with_jitter(run):
    async def body():
        async with serve() as server:
            with refusing_port() as port:
                async with client(server, url=f"tls://127.0.0.1:{port}#dns.test", backoff_min=0.2) as up:
                    start = now()
                    with pytest.raises(ConnectionFailed) as info:
                        await up.query(make_query(), deadline=after(3))
                    assert now() - start < 0.5
                    assert "127.0.0.1" in str(info.value)
                    # Backing off: the same error at once, without a dial.
                    for _ in range(3):
                        start = now()
                        with pytest.raises(ConnectionFailed) as info:
                            await up.query(make_query(), deadline=after(3))
                        assert now() - start < 0.05
                        assert "next attempt" in str(info.value)
                    assert up.stats.dials == 1 and up.stats.dial_failures == 1
                    await asyncio.sleep(0.32)  # the first back-off is 0.2 s * uniform(0.5, 1.5)
                    with pytest.raises(ConnectionFailed):
                        await up.query(make_query(), deadline=after(3))
                    assert up.stats.dials == 2 and up.stats.dial_failures == 2

    run(body)


def test_backoff_is_jittered_exponential_and_capped():
    delays = []
    for _ in range(50):
        b = Backoff(0.2, 1.0)
        err = ConnectionFailed("x")
        seq = []
        for _ in range(6):
            b.failed(100.0, err)
            seq.append(b.until - 100.0)
        delays.append(seq)
        assert b.blocking(100.0) is err and b.blocking(100.0 + 2.0) is None
        b.succeeded()
        assert b.blocking(100.0) is None
    for seq in delays:
        for n, d in enumerate(seq):
            nominal = min(1.0, 0.2 * 2**n)
            assert 0.5 * nominal <= d <= 1.5 * nominal
    assert len({round(seq[0], 6) for seq in delays}) > 10  # jittered


def test_idle_connection_is_closed_by_the_client(run):
    async def body():
        async with serve() as server:
            async with client(server, idle_timeout=0.3) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                took = await wait_until(lambda: server.stats.connections_open == 0, timeout=2.0)
                assert took >= 0.2
                assert server.stats.connections_closed_by_server == 0  # the client closed it
                assert up.connections == 0 and up.stats.connections_open == 0
                check_answer(await up.query(q, deadline=after(2)), q)
                assert up.stats.dials == 2 and up.stats.retries == 0

    run(body)


def test_rfc7828_keepalive_is_asked_for_and_honoured(run):
    async def body():
        rec = Recorder()
        async with serve(answer=keepalive_answer(3)) as server:  # the server says: 0.3 s
            async with client(server) as up:  # idle_timeout 30 s by default
                q = make_query()
                a = await up.query(q, deadline=after(2))
                check_answer(a, q)
                assert not has_opt(a)  # the keepalive OPT was ours, not the client's
                took = await wait_until(lambda: server.stats.connections_open == 0, timeout=1.2,
                                        what="the client closed the connection the server keeps for 0.3 s")
                assert took >= 0.15
                assert server.stats.connections_closed_by_server == 0
        async with serve(answer=rec) as server:
            async with client(server) as up:
                await up.query(make_query(), deadline=after(2))
            options = wire.parse_query(rec.queries[0]).edns.options
            assert dict(options).get(OPT_KEEPALIVE) == b""

    run(body)


def test_queries_are_padded_and_the_added_opt_is_stripped(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            async with client(server) as up:
                plain = make_query("www.example")
                with_edns = make_query("www.example", edns=True)
                long_name = make_query("a" * 60 + "." + "b" * 60 + ".example")
                a1 = await up.query(plain, deadline=after(2))
                a2 = await up.query(with_edns, deadline=after(2))
                a3 = await up.query(long_name, deadline=after(2))
                check_answer(a1, plain)
                check_answer(a2, with_edns)
                check_answer(a3, long_name)
                assert not has_opt(a1) and not has_opt(a3)  # the client sent no EDNS: none back
                assert has_opt(a2)
            assert len(rec.queries) == 3
            for m in rec.queries:
                assert len(m) % 128 == 0, len(m)
                assert OPT_PADDING in [code for code, _ in wire.parse_query(m).edns.options]
            assert len(rec.queries[2]) == 256

    run(body)


def test_padding_can_be_turned_off(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            async with client(server, pad_block=None, keepalive=False) as up:
                q = make_query("www.example", id=99)
                check_answer(await up.query(q, deadline=after(2)), q)
            assert dns.message.from_wire(rec.queries[0]).edns < 0  # sent as the client wrote it

    run(body)


# --------------------------------------------------------------------------- dead connections


def test_eof_under_a_query_costs_one_transparent_retry(run):
    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            rec.server = server
            async with client(server) as up:
                await up.query(make_query("warm.example"), deadline=after(2))
                rec.close_on = {"die"}
                q = make_query("die.example")
                start = now()
                check_answer(await up.query(q, deadline=after(2.5)), q)
                assert now() - start < 1.0
                assert up.stats.retries == 1 and rec.labels().count("die") == 2
                assert server.stats.connections_accepted["dot"] == 2

    run(body)


def test_a_query_that_kills_every_connection_is_an_error_after_three_resends_not_a_loop(run):
    """Re-sends are capped at ``max_resends`` (3); connections that die before answering
    anything back off the re-dialling (the query waits), not the query."""

    async def body():
        rec = Recorder()
        async with serve(answer=rec) as server:
            rec.server = server
            async with client(server) as up:
                await up.query(make_query("warm.example"), deadline=after(2))
                rec.close_on = {"die"}
                rec.close_times = None
                start = now()
                with pytest.raises(ConnectionFailed):
                    await up.query(make_query("die.example"), deadline=after(3.5))
                # Re-dials held back 0.1-0.3 s, then 0.2-0.6 s: the query waits, it does not fail.
                assert 0.25 <= now() - start < 2.0
                assert up.stats.retries == 3 and rec.labels().count("die") == 4
                assert up.stats.closed_by_server == 4
                q = make_query("fine.example")
                check_answer(await up.query(q, deadline=after(2)), q)

    run(body)


def test_server_closed_idle_connection_then_query(run):
    async def body():
        async with serve() as server:
            async with client(server) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                await server.close_all_connections()
                start = now()
                check_answer(await up.query(q, deadline=after(2.5)), q)
                assert now() - start < 1.0
                assert up.stats.retries <= 1 and up.stats.failures == 0

    run(body)


def test_blackholed_idle_connection_with_liveness_defaults(run):
    """The server (a NAT) silently drops an idle connection; the next query answers well within 2.5 s."""

    async def body():
        async with serve() as server:
            async with client(server) as up:
                q = make_query()
                for _ in range(3):
                    check_answer(await up.query(q, deadline=after(2)), q)
                server.blackhole_all_connections()
                await asyncio.sleep(up.options.quiet_after + 0.1)
                start = now()
                check_answer(await up.query(q, deadline=after(2.5)), q)
                assert now() - start < 1.5
                assert up.stats.liveness_failures == 1 and up.stats.retries == 1
                assert server.stats.connections_accepted["dot"] == 2
            await server.close_all_connections(timeout=0.2)

    run(body)


def test_blackholed_busy_connection(run):
    """The path dies while queries flow; every query still answers within its 2.5 s deadline."""

    async def body():
        async with serve() as server:
            async with client(server, quiet_after=0.3) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                tasks = []
                for i in range(35):
                    if i == 10:
                        server.blackhole_all_connections()
                    q = make_query(f"busy{i}.example")
                    tasks.append((q, now(), asyncio.create_task(up.query(q, deadline=after(2.5)))))
                    await asyncio.sleep(0.03)
                for q, sent, task in tasks:
                    check_answer(await task, q)
                assert up.stats.liveness_failures == 1
                assert up.stats.failures == 0 and up.stats.timeouts == 0
            await server.close_all_connections(timeout=0.2)

    run(body)


def test_blackholed_connection_with_small_liveness_bound(run):
    async def body():
        async with serve() as server:
            async with client(server, quiet_after=0.1, liveness_min=0.05, liveness_max=0.2) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                server.blackhole_all_connections()
                await asyncio.sleep(0.15)
                start = now()
                qs = [make_query(f"bh{i}.example") for i in range(20)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(2)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert now() - start < 0.8
                assert up.stats.liveness_failures == 1 and up.stats.retries == 20

    run(body)


def test_stalled_upstream_deadline_and_connection_retired(run):
    async def body():
        async with serve(faults=Faults(stall=True)) as server:
            async with client(server, quiet_after=0.1, liveness_max=0.3) as up:
                start = now()
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query("s1.example"), deadline=after(0.4))
                assert 0.38 <= now() - start < 0.6
                await asyncio.sleep(0.15)
                start = now()
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query("s2.example"), deadline=after(0.7))
                assert 0.68 <= now() - start < 0.9
                # The silent connection was found dead and replaced.
                assert up.stats.liveness_failures == 1
                assert server.stats.connections_accepted["dot"] == 2
                await wait_until(lambda: server.stats.connections_open == 1, what="the old connection closed")
                assert up.stats.timeouts == 2

    run(body)


def test_close_after_mid_burst_loses_nothing(run):
    async def body():
        async with serve(faults=Faults(close_after=150, latency=0.01, jitter=0.02)) as server:
            async with client(server, pool_size=1, max_outstanding=1000) as up:
                qs = [make_query(f"ca{i}.example") for i in range(250)]
                answers = await asyncio.gather(*(up.query(q, deadline=after(5)) for q in qs))
                for q, a in zip(qs, answers):
                    check_answer(a, q)
                assert up.stats.retries == 100
                assert up.stats.dials == 2

    run(body)


# --------------------------------------------------------------------------- bad answers


@pytest.mark.parametrize("fault", ["wrong_id", "garbage"])
def test_bad_replies_are_dropped_and_counted(run, fault):
    async def body():
        async with serve(faults=Faults(**{fault: 1.0})) as server:
            async with client(server) as up:
                start = now()
                with pytest.raises(UpstreamTimeout):
                    await up.query(make_query(), deadline=after(0.3))
                assert now() - start < 0.5
                sent = server.stats.wrong_ids_sent if fault == "wrong_id" else server.stats.garbage_sent
                assert sent == 1
                assert up.stats.unexpected_answers == 1 and up.stats.answers == 0

    run(body)


def test_wrong_ids_among_many_never_deliver_a_wrong_answer(run):
    async def body():
        async with serve(faults=Faults(wrong_id=0.3, jitter=0.01)) as server:
            # No silence probe before the deadlines (its answer may get a wrong ID too).
            async with client(server, pool_size=1, max_outstanding=500, liveness_min=1.0) as up:
                qs = [make_query(f"w{i}.example", id=i % 4) for i in range(300)]
                outcomes = await gather_outcomes(up.query(q, deadline=after(0.8)) for q in qs)
                answered = 0
                for q, o in zip(qs, outcomes):
                    if isinstance(o, bytes):
                        check_answer(o, q)
                        answered += 1
                    else:
                        assert isinstance(o, UpstreamTimeout), o
                wrong = server.stats.wrong_ids_sent
                assert 0 < wrong < 300
                assert answered == 300 - wrong
                assert up.stats.unexpected_answers + up.stats.late_answers == wrong
                assert up.stats.probes == 0

    run(body)


def test_dial_errors_wrap_their_cause_and_name_the_upstream(run, tmp_path):
    """House rule 9: foreign errors are wrapped ``from e``; an UpstreamError names its upstream."""
    other = make_certificates(tmp_path)

    async def body():
        with refusing_port() as port:
            async with serve() as server:
                async with client(server, url=f"tcp://127.0.0.1:{port}", name="lan") as up:
                    assert up.name == "lan"
                    with pytest.raises(ConnectionFailed) as info:
                        await up.query(make_query(), deadline=after(1))
                    assert str(info.value).startswith("lan: ")
                    assert info.value.upstream == "lan"
                    assert any(isinstance(c, OSError) and not isinstance(c, UpstreamError)
                               for c in causes(info.value)), causes(info.value)
                async with client(server, ca_file=other.ca_file, name="dot-test") as up:
                    with pytest.raises(TLSVerificationFailed) as info:
                        await up.query(make_query(), deadline=after(1))
                    assert info.value.upstream == "dot-test"
                    assert any(isinstance(c, ssl.SSLCertVerificationError) for c in causes(info.value))

    run(body)


def test_slow_answer_on_a_reused_connection_is_not_taken_for_death(run):
    """DoT has no PING: a reused, quiet connection is probed with ". NS" beside the query,
    so an answer slower than the silence bound (a cold recursion) does not retire a live
    connection or send the query twice."""

    async def body():
        async def answer(query: bytes):
            if b"\x04slow" in query:
                await asyncio.sleep(0.6)
            return default_answer(query)

        async with serve(answer=answer) as server:
            async with client(server, "dot", quiet_after=0.2, liveness_min=0.3, liveness_max=0.3) as up:
                q = make_query()
                check_answer(await up.query(q, deadline=after(2)), q)
                await asyncio.sleep(0.3)
                slow = make_query("slow.example")
                start = now()
                check_answer(await up.query(slow, deadline=after(3)), slow)
                assert 0.55 <= now() - start < 0.95
                assert up.stats.liveness_failures == 0 and up.stats.retries == 0
                # q, slow and the probes: one as the quiet connection is reused, then one from the
                # busy connection's watchdog each time nothing came for the bound (0.3 s; the last
                # may race the slow answer at 0.6 s).
                assert 2 <= up.stats.probes <= 3
                assert up.stats.dials == 1
                await wait_until(lambda: server.stats.queries["dot"] == 2 + up.stats.probes, 0.5,
                                 "the server saw the queries and probes, nothing else")
            await server.close_all_connections(timeout=0.2)

    run(body)
