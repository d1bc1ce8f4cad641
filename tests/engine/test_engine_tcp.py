"""The engine's TCP listener (RFC 7766) over real loopback connections, under asyncio and uvloop.

Any chunking (one byte at a time), pipelined queries answered out of order and matched by
ID, a half-close answered before the server closes, idle connections closed, connections
beyond the cap refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import dns.flags
import dns.message
import dns.rcode
import pytest
from engine_support import (
    check_answer,
    engine_env,
    frame,
    make_query,
    now,
    read_eof,
    read_frame,
    tcp_client,
    txt_answer,
    udp_client,
    wait_until,
)

from dotproxy.testing import Faults


def test_query_delivered_one_byte_at_a_time_is_answered(run):
    async def main():
        async with engine_env() as env:
            async with tcp_client(env.address) as (reader, writer):
                queries = [make_query("bytewise.example", id=0x0A0A), make_query("second.example", id=0x0B0B)]
                data = b"".join(frame(q) for q in queries)
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.002)
                    if i < len(frame(queries[0])) - 1:
                        assert env.up.stats.queries["dot"] == 0, "a query went upstream before it was whole"
                got = {}
                for _ in queries:
                    a = await read_frame(reader)
                    got[dns.message.from_wire(a).id] = a
                for q in queries:
                    check_answer(got[dns.message.from_wire(q).id], q)
                # a message split across writes at the length prefix, too
                q = make_query("split.example", id=0x0C0C)
                f = frame(q)
                writer.write(f[:1])
                await asyncio.sleep(0.02)
                writer.write(f[1:5])
                await asyncio.sleep(0.02)
                writer.write(f[5:])
                check_answer(await read_frame(reader), q)

    run(main)


def test_pipelined_queries_are_answered_out_of_order_and_matched_by_id(run):
    async def main():
        async with engine_env(faults=Faults(latency=0.01, jitter=0.3)) as env:
            async with tcp_client(env.address) as (reader, writer):
                queries = {i: make_query(f"pipe{i}.example", id=i, edns=i % 2 == 0) for i in range(1, 31)}
                writer.write(b"".join(frame(q) for q in queries.values()))  # one write
                order = []
                for _ in queries:
                    a = await read_frame(reader, timeout=3)
                    m = dns.message.from_wire(a)
                    check_answer(a, queries[m.id])
                    order.append(m.id)
                assert sorted(order) == sorted(queries)  # each exactly once
                # with 0..300 ms of jitter upstream, waiting for each in turn would be in order
                assert order != sorted(order), "answers came back in query order: not concurrent"
                with contextlib.suppress(TimeoutError):
                    extra = await asyncio.wait_for(reader.read(1), 0.2)
                    assert extra == b"", extra

    run(main)


def test_a_long_pipeline_in_one_write_is_answered_whole(run):
    async def main():
        async with engine_env(faults=Faults(jitter=0.02)) as env:
            async with tcp_client(env.address) as (reader, writer):
                queries = {i: make_query(f"long{i}.example", id=i) for i in range(500)}
                writer.write(b"".join(frame(q) for q in queries.values()))
                seen = []
                for _ in queries:
                    a = await read_frame(reader, timeout=3)
                    m = dns.message.from_wire(a)
                    check_answer(a, queries[m.id])
                    seen.append(m.id)
                assert sorted(seen) == sorted(queries)

    run(main)


def test_half_close_after_the_queries_still_gets_every_answer_then_the_server_closes(run):
    async def main():
        async with engine_env(faults=Faults(latency=0.2, jitter=0.1)) as env:
            async with tcp_client(env.address) as (reader, writer):
                queries = {i: make_query(f"hc{i}.example", id=i) for i in range(1, 6)}
                writer.write(b"".join(frame(q) for q in queries.values()))
                writer.write_eof()  # the client has sent all it will (RFC 7766 section 6.2.4)
                got = []
                for _ in queries:
                    a = await read_frame(reader, timeout=3)
                    m = dns.message.from_wire(a)
                    check_answer(a, queries[m.id])
                    got.append(m.id)
                assert sorted(got) == sorted(queries)
                start = now()
                assert await read_eof(reader, timeout=2) == b""  # and then the server closes
                assert now() - start < 1.0
            await wait_until(lambda: env.engine.flows == 1, what="the connection's flow closed")
            assert env.stats.cancelled == 0

    run(main)


def test_half_close_with_nothing_pending_closes_at_once(run):
    async def main():
        async with engine_env() as env:
            async with tcp_client(env.address) as (reader, writer):
                q = make_query("once.example", id=7)
                writer.write(frame(q))
                check_answer(await read_frame(reader), q)
                writer.write_eof()
                assert await read_eof(reader, timeout=1) == b""

    run(main)


def test_idle_tcp_connections_are_closed_after_the_idle_timeout(run):
    async def main():
        async with engine_env(tcp_idle_timeout=0.2) as env:
            # a connection that asked once, then said nothing
            async with tcp_client(env.address) as (reader, writer):
                q = make_query("idle.example", id=1)
                writer.write(frame(q))
                check_answer(await read_frame(reader), q)
                start = now()
                assert await read_eof(reader, timeout=2) == b""
                assert 0.15 <= now() - start <= 0.8, now() - start
            # a connection that never sent anything
            async with tcp_client(env.address) as (reader, writer):
                start = now()
                assert await read_eof(reader, timeout=2) == b""
                assert 0.15 <= now() - start <= 0.8, now() - start
            # activity keeps it open: a query every 0.1 s for 0.4 s
            async with tcp_client(env.address) as (reader, writer):
                for i in range(4):
                    q = make_query(f"busy{i}.example", id=10 + i)
                    writer.write(frame(q))
                    check_answer(await read_frame(reader), q)
                    await asyncio.sleep(0.1)
                assert not reader.at_eof()

    run(main)


def test_a_query_slower_than_the_idle_timeout_is_still_answered(run):
    """A connection waiting for an answer is not idle."""

    async def main():
        async with engine_env(faults=Faults(latency=0.6), tcp_idle_timeout=0.2, timeout=2.0) as env:
            async with tcp_client(env.address) as (reader, writer):
                q = make_query("slow.example", id=3)
                writer.write(frame(q))
                check_answer(await read_frame(reader, timeout=2), q)
                start = now()
                assert await read_eof(reader, timeout=2) == b""  # idle afterwards: closed
                assert now() - start <= 0.8

    run(main)


async def _refused(address) -> bool:
    """Whether a new connection to ``address`` is closed by the server without an answer."""
    try:
        reader, writer = await asyncio.open_connection(*address)
    except ConnectionError:
        return True
    try:
        try:
            writer.write(frame(make_query("refused.example", id=99)))
            await writer.drain()
        except ConnectionError:
            return True
        try:
            data = await asyncio.wait_for(reader.read(), 1.0)
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return data == b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def test_connections_beyond_tcp_max_connections_are_refused(run):
    async def main():
        async with engine_env(tcp_max_connections=2) as env:
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(tcp_client(env.address)) for _ in range(2)]
                for i, (reader, writer) in enumerate(clients):
                    q = make_query(f"c{i}.example", id=i + 1)
                    writer.write(frame(q))
                    check_answer(await read_frame(reader), q)
                assert await _refused(env.address)
                assert await _refused(env.address)
                # the two admitted connections still work
                for i, (reader, writer) in enumerate(clients):
                    q = make_query(f"again{i}.example", id=i + 10)
                    writer.write(frame(q))
                    check_answer(await read_frame(reader), q)
                # one leaves: a new connection is served again
                reader, writer = clients[0]
                writer.close()
                await writer.wait_closed()
                await wait_until(lambda: env.engine.flows == 2, what="the closed connection's flow gone")
                async with tcp_client(env.address) as (reader, writer):
                    q = make_query("new.example", id=77)
                    writer.write(frame(q))
                    check_answer(await read_frame(reader), q)

    run(main)


def test_client_that_leaves_mid_query_cancels_its_queries(run):
    """A TCP client resetting its connection with a query in flight: nothing is written, the query is cancelled."""

    async def main():
        async with engine_env(faults=Faults(latency=0.3)) as env:
            async with tcp_client(env.address) as (reader, writer):
                writer.write(frame(make_query("gone.example", id=5)))
                await wait_until(lambda: env.up.stats.queries["dot"] == 1)
                # leave with a reset (a FIN alone would be a half-close, still to be answered)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            await wait_until(lambda: env.stats.cancelled == 1, what="the query cancelled")
            await wait_until(lambda: env.engine.upstreams[0].stats.late_answers == 1, timeout=1.0,
                             what="the late answer dropped upstream")
            assert env.stats.answered == 0
            assert env.stats.servfail == 0

    run(main)


def test_tcp_answers_are_never_truncated(run):
    async def main():
        async with engine_env(answer=txt_answer(40)) as env:
            async with tcp_client(env.address) as (reader, writer):
                q = dns.message.make_query("big.example", "TXT", use_edns=False)
                writer.write(frame(q.to_wire()))
                r = dns.message.from_wire(await read_frame(reader))
                assert r.id == q.id and r.rcode() == dns.rcode.NOERROR
                assert not r.flags & dns.flags.TC
                assert sum(len(rrset) for rrset in r.answer) == 40
            assert env.stats.truncated == 0

    run(main)



@pytest.mark.parametrize("pipeline", [
    1, 2, 4,
])
def test_tcp_max_pipeline_pauses_reading_but_every_query_is_answered(run, pipeline):
    async def main():
        async with engine_env(faults=Faults(latency=0.02, jitter=0.03), tcp_max_pipeline=pipeline) as env:
            async with tcp_client(env.address) as (reader, writer):
                # one after the other
                for i in range(3):
                    q = make_query(f"seq{i}.example", id=i + 1)
                    writer.write(frame(q))
                    check_answer(await read_frame(reader, timeout=0.7), q)
                # a burst, one message per write
                queries = {i: make_query(f"burst{i}.example", id=i) for i in range(100, 130)}
                for q in queries.values():
                    writer.write(frame(q))
                    await asyncio.sleep(0.001)
                seen = set()
                for _ in queries:
                    a = await read_frame(reader, timeout=1.5)
                    m = dns.message.from_wire(a)
                    check_answer(a, queries[m.id])
                    seen.add(m.id)
                assert seen == set(queries)

    run(main)


def test_listen_on_ipv6_loopback(run):
    if not socket.has_ipv6:  # pragma: no cover
        pytest.skip("no IPv6")

    async def main():
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:  # pragma: no cover
            pytest.skip("no ::1")
        async with engine_env(listen=False) as env:
            host, port = await env.engine.listen("::1", 0)
            assert host == "::1" and port > 0
            async with udp_client((host, port)) as c:
                q = make_query("v6.example", id=6)
                check_answer(await c.ask(q), q)
            async with tcp_client((host, port)) as (reader, writer):
                q = make_query("v6tcp.example", id=7)
                writer.write(frame(q))
                check_answer(await read_frame(reader), q)

    run(main)


def test_listen_on_a_busy_port_is_a_config_error_and_leaves_nothing(run):
    async def main():
        from dotproxy.errors import ConfigError

        async with engine_env() as env:
            # the engine's own port: both TCP and UDP are taken
            with pytest.raises(ConfigError, match="cannot listen"):
                await env.engine.listen(*env.address)
            # only the UDP port taken: the TCP listener it opened first is closed again
            busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for _ in range(20):
                    busy.bind(("127.0.0.1", 0))
                    port = busy.getsockname()[1]
                    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        t.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        busy.close()
                        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    finally:
                        t.close()
                with pytest.raises(ConfigError, match="UDP"):
                    await env.engine.listen("127.0.0.1", port)
                with pytest.raises(OSError):
                    await asyncio.open_connection("127.0.0.1", port)
            finally:
                busy.close()
            # the first listener still serves
            async with udp_client(env.address) as c:
                q = make_query("still.example", id=8)
                check_answer(await c.ask(q), q)

    run(main)
