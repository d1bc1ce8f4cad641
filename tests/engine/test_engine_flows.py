"""Flows handed over by an embedding host, cancellation, failure isolation, and stopping the engine.

``engine.open_flow(kind, deliver)`` then ``flow.receive(data, endpoint)``; the answers come
back through ``deliver``. Closing a flow stops every delivery and cancels what its queries
started; a failing delivery closes that flow only; ``engine.stop(grace)`` answers what is in
flight within ``grace`` and leaves no task and no descriptor. Under asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib

import dns.message
import dns.rcode
import pytest
from engine_support import (
    check_answer,
    check_error,
    check_no_leaks,
    engine_env,
    fds,
    frame,
    make_query,
    now,
    read_eof,
    read_frame,
    tcp_client,
    udp_client,
    wait_until,
)

from dotproxy.engine import Engine, EngineConfig
from dotproxy.testing import Faults, TestUpstream


class Deliveries:
    """A deliver callback that records what it is given (and may be told to fail)."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def __call__(self, *args) -> None:
        self.calls.append(args)
        if self.fail is not None:
            raise self.fail

    @property
    def messages(self) -> list[bytes]:
        return [c[0] for c in self.calls]


def _unframe(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        n = int.from_bytes(stream[:2], "big")
        out.append(stream[2 : 2 + n])
        stream = stream[2 + n :]
    return out


# --------------------------------------------------------------------------- flows


def test_udp_flow_answers_go_back_to_the_endpoint_they_came_from(run):
    async def main():
        async with engine_env(listen=False) as env:
            got = Deliveries()
            closed = []
            flow = env.engine.open_flow("udp", got, metadata={"app": "com.example.browser"}, on_close=closed.append)
            assert env.engine.flows == 1 and flow.metadata == {"app": "com.example.browser"}
            q1 = make_query("one.example", id=1)
            q2 = make_query("two.example", "AAAA", id=2, edns=True)
            flow.receive(q1, ("192.0.2.10", 5000))
            flow.receive(q2, ("2001:db8::10", 6000, 0, 0))
            await wait_until(lambda: len(got.calls) == 2)
            by_id = {dns.message.from_wire(m).id: (m, ep) for m, ep in got.calls}
            check_answer(by_id[1][0], q1)
            assert by_id[1][1] == ("192.0.2.10", 5000)
            check_answer(by_id[2][0], q2)
            assert by_id[2][1] == ("2001:db8::10", 6000, 0, 0)
            assert flow.in_flight == 0
            assert closed == []
            flow.close()
            flow.close()
            assert closed == [flow]  # once
            assert env.engine.flows == 0

    run(main)


def test_tcp_flow_takes_stream_bytes_in_any_chunking_and_delivers_framed_answers(run):
    async def main():
        async with engine_env(listen=False, faults=Faults(jitter=0.05)) as env:
            got = Deliveries()
            flow = env.engine.open_flow("tcp", got)
            queries = {i: make_query(f"s{i}.example", id=i) for i in range(1, 6)}
            stream = b"".join(frame(q) for q in queries.values())
            for chunk in (stream[:1], stream[1:7], stream[7:40], stream[40:]):
                flow.receive(chunk)
                await asyncio.sleep(0)
            await wait_until(lambda: len(got.calls) == 5)
            assert all(len(c) == 1 for c in got.calls)  # a TCP deliver gets the bytes only
            answers = _unframe(b"".join(got.messages))
            assert len(answers) == 5
            for a in answers:
                check_answer(a, queries[dns.message.from_wire(a).id])
            await flow.aclose()

    run(main)


def test_open_flow_rejects_an_unknown_kind(run):
    async def main():
        async with engine_env(listen=False) as env:
            with pytest.raises(ValueError):
                env.engine.open_flow("sctp", Deliveries())
            assert env.engine.flows == 0

    run(main)


@pytest.mark.parametrize(("kind", "scheme"), [("udp", "dot"), ("tcp", "dot"), ("udp", "tcp"), ("udp", "udp")])
def test_closing_a_flow_with_a_query_in_flight_cancels_it_and_delivers_nothing(run, kind, scheme):
    async def main():
        async with engine_env(listen=False, faults=Faults(latency=0.3), scheme=scheme) as env:
            tasks_before = asyncio.all_tasks()
            got = Deliveries()
            flow = env.engine.open_flow(kind, got)
            q = make_query("cancel.example", id=9)
            flow.receive(q if kind == "udp" else frame(q), ("192.0.2.1", 53))
            await wait_until(lambda: env.up.stats.queries[scheme] == 1, what="the query upstream")
            assert flow.in_flight == 1
            flow.close()
            assert flow.closed
            assert env.engine.flows == 0
            # the upstream's answer arrives 0.3 s after the query: late, dropped and counted by the upstream
            upstream = env.engine.upstreams[0]
            await wait_until(lambda: upstream.stats.late_answers == 1, timeout=1.5, what="the late answer dropped")
            await asyncio.sleep(0.05)
            assert got.calls == []
            assert env.stats.cancelled == 1
            assert flow.in_flight == 0
            # no task of the query is left
            await check_no_leaks(tasks_before, fds(), env.up, settle=0.5)
            # the closed flow's handle is inert
            flow.receive(q if kind == "udp" else frame(q), ("192.0.2.1", 53))
            await asyncio.sleep(0.05)
            assert got.calls == [] and env.up.stats.queries[scheme] == 1
            # the connection is still good for others
            other = Deliveries()
            flow2 = env.engine.open_flow("udp", other)
            env.up.faults.latency = 0.0
            q2 = make_query("after.example", id=10)
            flow2.receive(q2, ("192.0.2.2", 53))
            await wait_until(lambda: len(other.calls) == 1)
            check_answer(other.messages[0], q2)
            if scheme != "udp":
                assert upstream.stats.dials == 1  # the connection that carried the cancelled query serves on
            flow2.close()

    run(main)


def test_aclose_returns_when_the_flow_tasks_are_gone(run):
    async def main():
        async with engine_env(listen=False, faults=Faults(latency=1.0)) as env:
            tasks_before = asyncio.all_tasks()
            got = Deliveries()
            flow = env.engine.open_flow("udp", got)
            for i in range(5):
                flow.receive(make_query(f"a{i}.example", id=i), ("192.0.2.1", 53))
            await asyncio.sleep(0.05)
            assert flow.in_flight == 5
            start = now()
            await flow.aclose()
            assert now() - start < 0.2
            assert {t for t in asyncio.all_tasks() - tasks_before if not t.done()} == set()
            assert flow.in_flight == 0 and env.stats.cancelled == 5
            assert got.calls == []

    run(main)


def test_a_failing_deliver_closes_only_its_own_flow(run):
    async def main():
        async with engine_env(listen=False, faults=Faults(latency=0.05, jitter=0.1)) as env:
            broken = Deliveries(fail=ConnectionError("flow is not connected"))
            healthy = Deliveries()
            a = env.engine.open_flow("udp", broken, name="broken")
            b = env.engine.open_flow("tcp", healthy, name="healthy")
            qa = [make_query(f"a{i}.example", id=100 + i) for i in range(5)]
            qb = [make_query(f"b{i}.example", id=200 + i) for i in range(5)]
            for x, y in zip(qa, qb):
                a.receive(x, ("192.0.2.1", 1))
                b.receive(frame(y))
            await wait_until(lambda: a.closed, what="the broken flow closed")
            await wait_until(lambda: len(healthy.calls) == 5, what="the healthy flow answered")
            assert len(broken.calls) == 1  # one failed write, then nothing more for that flow
            answers = _unframe(b"".join(healthy.messages))
            for ans in answers:
                check_answer(ans, qb[dns.message.from_wire(ans).id - 200])
            assert not b.closed
            assert env.stats.write_failures == 1
            assert env.engine.flows == 1
            # the healthy flow keeps being answered afterwards
            q = make_query("later.example", id=300)
            b.receive(frame(q))
            await wait_until(lambda: len(healthy.calls) == 6)
            check_answer(_unframe(healthy.messages[-1])[0], q)
            await asyncio.sleep(0.2)
            assert len(broken.calls) == 1
            await b.aclose()

    run(main)


def test_a_deliver_raising_any_exception_never_reaches_other_flows(run):
    """Whatever the host's callback raises, sibling flows' queries in flight are not cancelled."""

    async def main():
        async with engine_env(listen=False) as env:
            env.up.faults.latency = 0.2
            others = [Deliveries() for _ in range(3)]
            flows = [env.engine.open_flow("udp", d) for d in others]
            for i, f in enumerate(flows):
                f.receive(make_query(f"o{i}.example", id=i), ("192.0.2.1", 1))
            await asyncio.sleep(0.05)
            env.up.faults.latency = 0.0
            for exc in (RuntimeError("host bug"), OSError("write failed"), ValueError("bad")):
                bad = env.engine.open_flow("udp", Deliveries(fail=exc))
                bad.receive(make_query("bad.example", id=77), ("192.0.2.1", 2))
                await wait_until(lambda bad=bad: bad.closed)
            assert all(f.in_flight == 1 for f in flows), [f.in_flight for f in flows]
            await wait_until(lambda: all(len(d.calls) == 1 for d in others), what="siblings answered")
            for i, d in enumerate(others):
                check_answer(d.messages[0], make_query(f"o{i}.example", id=i))
            assert env.stats.cancelled == 0
            for f in flows:
                f.close()

    run(main)


def test_a_deliver_that_closes_its_own_flow_is_fine(run):
    async def main():
        async with engine_env(listen=False) as env:
            box = {}

            def deliver(data, endpoint):
                box.setdefault("calls", []).append(data)
                box["flow"].close()

            flow = env.engine.open_flow("udp", deliver)
            box["flow"] = flow
            for i in range(3):
                flow.receive(make_query(f"c{i}.example", id=i), ("192.0.2.1", 1))
            await wait_until(lambda: flow.closed)
            await asyncio.sleep(0.1)
            assert len(box["calls"]) == 1
            assert flow.in_flight == 0

    run(main)


def test_upstream_failure_in_one_flow_is_a_servfail_for_that_query_only(run):
    async def main():
        async with engine_env(listen=False, faults=Faults(latency=0.3), timeout=0.5) as env:
            got = Deliveries()
            flow = env.engine.open_flow("udp", got)
            q_slow = make_query("slow.example", id=1, edns=True)
            flow.receive(q_slow, ("192.0.2.1", 1))
            await asyncio.sleep(0.05)
            env.up.faults.stall = True  # from now on: no answers
            q_lost = make_query("lost.example", id=2, edns=True)
            flow.receive(q_lost, ("192.0.2.1", 1))
            await wait_until(lambda: len(got.calls) == 2, timeout=2)
            by_id = {dns.message.from_wire(m).id: m for m in got.messages}
            check_answer(by_id[1], q_slow)
            check_error(by_id[2], q_lost, dns.rcode.SERVFAIL, 22)
            assert not flow.closed
            flow.close()

    run(main)


# --------------------------------------------------------------------------- stopping


def test_stop_with_grace_answers_what_is_in_flight_and_leaves_nothing(run):
    async def main():
        async with TestUpstream(faults=Faults(latency=0.3)) as up:
            tasks_before = asyncio.all_tasks()
            fds_before = fds()
            engine = Engine(EngineConfig(upstreams=(up.dot_url,), ca_file=up.ca_file))
            address = await engine.listen("127.0.0.1", 0)
            got = Deliveries()
            flow = engine.open_flow("udp", got)
            qf = make_query("flow.example", id=1)
            flow.receive(qf, ("192.0.2.1", 1))
            async with udp_client(address) as c, tcp_client(address) as (reader, writer):
                qu = make_query("udp.example", id=2)
                qt = make_query("tcp.example", id=3)
                c.send(qu)
                writer.write(frame(qt))
                await wait_until(lambda: up.stats.queries["dot"] == 3, what="3 queries upstream")
                start = now()
                await engine.stop(grace=2.0)
                elapsed = now() - start
                assert elapsed < 1.0, elapsed  # returns once they are answered, not after the whole grace
                check_answer(got.messages[0], qf)
                check_answer((await c.wait_for(1))[0], qu)
                check_answer(await read_frame(reader), qt)
                assert await read_eof(reader, timeout=1) == b""  # the TCP connection is closed
            assert engine.flows == 0
            await check_no_leaks(tasks_before, fds_before, up)
            # nothing listens any more
            with pytest.raises(OSError):
                await asyncio.open_connection(*address)
            with pytest.raises(RuntimeError):
                engine.open_flow("udp", Deliveries())
            await engine.stop()  # twice is fine
        assert up.stats.internal_errors == 0

    run(main)


def test_stop_cancels_what_outlives_the_grace_and_delivers_nothing_after(run):
    async def main():
        async with TestUpstream(faults=Faults(latency=0.6)) as up:
            tasks_before = asyncio.all_tasks()
            fds_before = fds()
            engine = Engine(EngineConfig(upstreams=(up.dot_url,), ca_file=up.ca_file))
            address = await engine.listen("127.0.0.1", 0)
            got = Deliveries()
            flow = engine.open_flow("udp", got)
            flow.receive(make_query("slow.example", id=1), ("192.0.2.1", 1))
            async with tcp_client(address) as (reader, writer):
                writer.write(frame(make_query("slow-tcp.example", id=2)))
                await wait_until(lambda: up.stats.queries["dot"] == 2)
                start = now()
                await engine.stop(grace=0.2)
                assert 0.15 <= now() - start < 0.8
                assert await read_eof(reader, timeout=1) == b""
            await check_no_leaks(tasks_before, fds_before, up)
            await asyncio.sleep(0.5)  # past the upstream's answer: nothing arrives
            assert got.calls == []
            assert engine.stats.cancelled == 2

    run(main)


def test_stop_without_grace_returns_at_once_and_leaves_nothing(run):
    async def main():
        async with TestUpstream(faults=Faults(stall=True)) as up:
            tasks_before = asyncio.all_tasks()
            fds_before = fds()
            engine = Engine(EngineConfig(upstreams=(up.dot_url, up.doh_url), ca_file=up.ca_file))
            address = await engine.listen("127.0.0.1", 0)
            flows = [engine.open_flow("udp", Deliveries()) for _ in range(20)]
            for i, f in enumerate(flows):
                f.receive(make_query(f"s{i}.example", id=i), ("192.0.2.1", 1))
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(5):
                    reader, writer = await stack.enter_async_context(tcp_client(address))
                    writer.write(frame(make_query("x.example")))
                await wait_until(lambda: up.stats.queries["dot"] == 25)
                start = now()
                await engine.stop()
                assert now() - start < 0.5
            await check_no_leaks(tasks_before, fds_before, up)
            assert engine.flows == 0
            assert all(f.closed for f in flows)

    run(main)


def test_stop_of_an_engine_that_never_listened(run):
    async def main():
        async with TestUpstream() as up:
            tasks_before = asyncio.all_tasks()
            fds_before = fds()
            engine = Engine(EngineConfig(upstreams=(up.dot_url,), ca_file=up.ca_file))
            got = Deliveries()
            flow = engine.open_flow("udp", got)
            q = make_query("e.example", id=5)
            flow.receive(q, ("192.0.2.1", 1))
            await wait_until(lambda: got.calls)
            check_answer(got.messages[0], q)
            await engine.stop(grace=1.0)
            await check_no_leaks(tasks_before, fds_before, up)

    run(main)


def test_start_is_idempotent(run):
    async def main():
        async with TestUpstream() as up:
            engine = Engine(EngineConfig(upstreams=(up.dot_url,), ca_file=up.ca_file))
            try:
                await engine.start()
                await engine.start()
                address = await engine.listen("127.0.0.1", 0)
                async with udp_client(address) as c:
                    q = make_query("started.example", id=1)
                    check_answer(await c.ask(q), q)
            finally:
                await engine.stop()
            with pytest.raises(RuntimeError):
                await engine.start()  # a stopped engine is not restarted

    run(main)


def test_closing_a_flow_right_after_receive_releases_its_queries(run):
    async def main():
        async with engine_env(listen=False, max_in_flight=2) as env:
            flow = env.engine.open_flow("udp", Deliveries())
            flow.receive(make_query("a.example", id=1), ("192.0.2.1", 1))
            flow.receive(make_query("b.example", id=2), ("192.0.2.1", 1))
            flow.close()  # same tick: the query tasks have not started yet
            await asyncio.sleep(0.1)
            got = Deliveries()
            flow2 = env.engine.open_flow("udp", got)
            q = make_query("c.example", id=3)
            flow2.receive(q, ("192.0.2.1", 1))
            await wait_until(lambda: got.calls)
            flow2.close()
            assert flow.in_flight == 0
            check_answer(got.messages[0], q)  # not REFUSED: nothing is in flight any more
            assert env.stats.cancelled == 2

    run(main)


def test_a_concurrent_second_stop_returns_only_when_everything_is_gone(run):
    async def main():
        async with TestUpstream(faults=Faults(latency=0.3)) as up:
            tasks_before = asyncio.all_tasks()
            engine = Engine(EngineConfig(upstreams=(up.dot_url,), ca_file=up.ca_file))
            await engine.listen("127.0.0.1", 0)
            got = Deliveries()
            flow = engine.open_flow("udp", got)
            flow.receive(make_query("slow.example", id=1), ("192.0.2.1", 1))
            await wait_until(lambda: up.stats.queries["dot"] == 1)
            first = asyncio.create_task(engine.stop(grace=2.0))
            await asyncio.sleep(0.01)
            try:
                await engine.stop()
                # returned: the first stop is finished too, the query answered, nothing left
                assert got.calls, "stop() returned before the in-flight query was answered"
                assert engine.flows == 0
                leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()} - {first}
                assert leftover == set(), leftover
            finally:
                await first

    run(main)


def test_listen_after_stop_is_refused_and_opens_nothing(run):
    async def main():
        async with TestUpstream() as up:
            fds_before = fds()
            engine = Engine(EngineConfig(upstreams=(up.dot_url,), ca_file=up.ca_file))
            await engine.stop()
            try:
                with pytest.raises(RuntimeError):
                    await engine.listen("127.0.0.1", 0)
                await asyncio.sleep(0.05)
                assert fds() - fds_before == set()
            finally:
                # whatever it opened: close it so the loop shuts down cleanly
                for udp in engine._udp:
                    udp.close()
                for tcp in engine._tcp:
                    await tcp.aclose()
                await asyncio.sleep(0.01)

    run(main)
