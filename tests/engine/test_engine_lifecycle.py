"""Sleep, wake, network changes and noticed suspensions, at the engine; and the query log.

What a laptop does to a forwarder: it sleeps with connections open, the servers (or a
NAT) drop them meanwhile, it wakes on another network. The engine must then neither
storm (``wake()`` and ``network_changed()`` dial nothing by themselves) nor lose a
query (the first one after a wake dials a fresh connection, resuming TLS; queries in
flight on a suspect connection finish there or move once). Suspensions nobody
announces are noticed through a clock that counts sleep — here a fake one, moved by
the test. Under asyncio and uvloop, DoT and DoH.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from engine_support import check_answer, check_error, engine_env, make_query, now, wait_until

from dotproxy.errors import SERVFAIL
from dotproxy.flows.flow import FlowGone
from dotproxy.io.suspend import SuspendWatch, suspended_so_far
from dotproxy.querylog import QueryRecord, SafeSubscriber
from dotproxy.testing import Faults

SCHEMES = ["dot", "doh"]


class Answers:
    """A UDP deliver callback collecting answers by their query ID."""

    def __init__(self) -> None:
        self.by_id: dict[int, bytes] = {}
        self.changed = asyncio.Event()

    def __call__(self, data: bytes, endpoint) -> None:
        self.by_id[int.from_bytes(data[:2], "big")] = data
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 4.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.by_id) < count:
                self.changed.clear()
                await self.changed.wait()


async def ask(flow, answers: Answers, count: int, *, first_id: int = 0, timeout: float = 4.0) -> list[bytes]:
    queries = [make_query(f"n{first_id + i}.example", id=first_id + i) for i in range(count)]
    for q in queries:
        flow.receive(q, ("192.0.2.7", 5353))
    await answers.wait_for(first_id + count, timeout)  # IDs run from 0 in these tests
    for q in queries:
        check_answer(answers.by_id[int.from_bytes(q[:2], "big")], q)
    return queries


def upstream_stats(env):
    return env.engine.upstreams[0].stats


@pytest.mark.parametrize("scheme", SCHEMES)
def test_wake_dials_nothing_and_the_next_query_resumes_tls_on_a_fresh_connection(run, scheme):
    async def main():
        async with engine_env(listen=False, scheme=scheme) as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            await ask(flow, answers, 3)
            stats = upstream_stats(env)
            assert (stats.dials, stats.connections_open) == (1, 1)
            env.engine.sleep()
            env.engine.wake()
            # The idle connection is gone, and nothing replaced it.
            await wait_until(lambda: env.up.connections == 0, timeout=2.0)
            await asyncio.sleep(0.2)
            assert (stats.dials, stats.connections_open) == (1, 0)
            await ask(flow, answers, 3, first_id=3)
            assert (stats.dials, stats.handshakes, stats.resumed) == (2, 2, 1)
            assert stats.retries == 0 and stats.failures == 0

    run(main)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_servers_dropping_connections_during_sleep_cost_no_query_and_no_warning(run, scheme, caplog):
    async def main():
        async with engine_env(listen=False, scheme=scheme) as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            await ask(flow, answers, 2)
            env.engine.sleep()
            await env.up.close_all_connections()
            env.engine.wake()
            await ask(flow, answers, 2, first_id=2)
            assert upstream_stats(env).retries <= 1

    with caplog.at_level(logging.INFO, logger="dotproxy"):
        run(main)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sleep_closes_idle_connections_politely_and_leaves_busy_ones(run, scheme):
    async def main():
        async with engine_env(listen=False, scheme=scheme, faults=Faults(latency=0.3)) as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            for i in range(5):
                flow.receive(make_query(f"n{i}.example", id=i), None)
            await wait_until(lambda: upstream_stats(env).connections_open == 1, timeout=2.0)
            env.engine.sleep()  # busy: stays, and answers
            await answers.wait_for(5)
            assert upstream_stats(env).connections_open == 1
            env.engine.sleep()  # idle now: closed
            await wait_until(lambda: env.up.connections == 0, timeout=2.0)
            assert upstream_stats(env).connections_open == 0

    run(main)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_network_change_mid_burst_loses_nothing(run, scheme):
    async def main():
        async with engine_env(listen=False, scheme=scheme, faults=Faults(latency=0.2, jitter=0.2)) as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            queries = [make_query(f"n{i}.example", id=i) for i in range(300)]
            for q in queries[:150]:
                flow.receive(q, None)
            await asyncio.sleep(0.05)
            env.engine.network_changed()
            for q in queries[150:]:
                flow.receive(q, None)
            await answers.wait_for(300)
            for q in queries:
                check_answer(answers.by_id[int.from_bytes(q[:2], "big")], q)
            stats = upstream_stats(env)
            assert stats.failures == 0 and stats.timeouts == 0
            # The pool's connections for the burst, then as many fresh ones for the new path; no more.
            assert stats.dials <= 2 * env.engine.upstreams[0].options.pool_size

    run(main)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_busy_connection_dead_after_a_network_change_moves_its_queries_once(run, scheme):
    async def main():
        async with engine_env(listen=False, scheme=scheme, faults=Faults(latency=0.3)) as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            queries = [make_query(f"n{i}.example", id=i) for i in range(20)]
            for q in queries:
                flow.receive(q, None)
            await wait_until(lambda: upstream_stats(env).connections_open == 1, timeout=2.0)
            await asyncio.sleep(0.05)  # the queries are on the wire
            env.up.blackhole_all_connections()  # the old path swallows everything
            env.engine.network_changed()
            t0 = now()
            await answers.wait_for(20, timeout=3.5)
            for q in queries:
                check_answer(answers.by_id[int.from_bytes(q[:2], "big")], q)
            stats = upstream_stats(env)
            assert stats.liveness_failures == 1 and stats.retries == 20
            assert now() - t0 < 2.0 + 0.3 + 1.0  # the liveness bound, the latency, slack

    run(main)


def test_network_change_reopens_an_idle_udp_upstream_socket(run):
    async def main():
        async with engine_env(listen=False, scheme="udp") as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            await ask(flow, answers, 2)
            up = env.engine.upstreams[0]
            old = up._transport
            env.engine.network_changed()
            await ask(flow, answers, 2, first_id=2)
            assert up._transport is not None and up._transport is not old

    run(main)


# --------------------------------------------------------------------------- suspensions nobody announced


class FakeSuspendClock:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unannounced_suspension_is_noticed_and_handled_as_a_wake(run, scheme, caplog):
    async def main():
        async with engine_env(listen=False, scheme=scheme) as env:
            # The engine of engine_env reads the real clock; swap in a fake one before it looks again.
            clock = FakeSuspendClock()
            engine = env.engine
            engine._suspended_clock = clock
            engine._suspend_watch = SuspendWatch(clock())
            answers = Answers()
            flow = engine.open_flow("udp", answers)
            await ask(flow, answers, 2)
            clock.value += 3600.0  # an hour asleep
            await wait_until(lambda: engine.lifecycle.suspensions == 1, timeout=3.0)
            assert engine.lifecycle.suspended_seconds == pytest.approx(3600.0)
            await wait_until(lambda: env.up.connections == 0, timeout=2.0)
            await ask(flow, answers, 2, first_id=2)
            stats = upstream_stats(env)
            assert (stats.dials, stats.resumed) == (2, 1)

    with caplog.at_level(logging.INFO, logger="dotproxy"):
        run(main, timeout=20)
    lines = [r.getMessage() for r in caplog.records if "suspended" in r.getMessage()]
    assert len(lines) == 1 and "3600.0s" in lines[0]


def test_suspend_watch_reports_gaps_above_its_threshold_once():
    watch = SuspendWatch(10.0, threshold=1.0)
    assert watch.observe(10.2) == 0.0  # jitter
    assert watch.observe(15.2) == pytest.approx(5.0)
    assert watch.observe(15.2) == 0.0  # reported once
    assert watch.observe(15.9) == 0.0


def test_the_real_suspension_clock_reads_and_moves_no_faster_than_time():
    a = suspended_so_far()
    b = suspended_so_far()
    assert isinstance(a, float) and abs(b - a) < 0.5


def test_sleep_wake_cycles_keep_connections_and_dials_bounded(run, caplog):
    async def main():
        async with engine_env(listen=False, scheme="dot") as env:
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            for cycle in range(30):
                await ask(flow, answers, 2, first_id=2 * cycle)
                env.engine.sleep()
                env.engine.wake()
            stats = upstream_stats(env)
            assert stats.dials == 30 and stats.connections_open <= 1
            assert stats.failures == stats.timeouts == stats.retries == 0

    with caplog.at_level(logging.INFO, logger="dotproxy"):
        run(main, timeout=30)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


# --------------------------------------------------------------------------- the query log


def test_the_query_log_sees_each_answer_with_its_flow_metadata(run):
    async def main():
        records: list[QueryRecord] = []
        async with engine_env(listen=False, scheme="dot") as env:
            env.engine.query_log = records.append
            answers = Answers()
            flow = env.engine.open_flow("udp", answers, metadata={"app": "com.example.mail"})
            await ask(flow, answers, 3)
            flow.receive(b"\x00\x07\x01", None)  # not even a header: dropped, no record
            flow.receive(make_query("n9.example", id=9)[:14], None)  # header readable: FORMERR
            await answers.wait_for(4)
            check_error(answers.by_id[9], make_query("n9.example", id=9), 1)
        assert [r.outcome for r in records] == ["answered"] * 3 + ["formerr"]
        first = records[0]
        assert (first.qname, first.qtype, first.rcode, first.answers) == ("n0.example", 1, 0, 1)
        assert first.metadata == {"app": "com.example.mail"} and first.transport == "udp"
        assert first.upstream == env.engine.upstreams[0].name and 0 < first.latency < 1
        assert records[3].qname is None and records[3].rcode == 1

    run(main)


def test_a_failing_query_log_costs_no_answer(run, caplog):
    async def main():
        def broken(record):
            raise RuntimeError("subscriber bug")

        async with engine_env(listen=False, scheme="dot") as env:
            env.engine.query_log = SafeSubscriber(broken)
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            await ask(flow, answers, 5)
            assert env.engine.query_log.failures == 5

    with caplog.at_level(logging.ERROR, logger="dotproxy"):
        run(main)
    assert sum("subscriber failed" in r.getMessage() for r in caplog.records) == 1  # then only counted


def test_timeout_outcome_names_the_upstream_that_failed(run):
    async def main():
        records: list[QueryRecord] = []
        async with engine_env(listen=False, scheme="dot", faults=Faults(stall=True), timeout=0.5) as env:
            env.engine.query_log = records.append
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            q = make_query("n1.example", id=1)
            flow.receive(q, None)
            await answers.wait_for(1, timeout=2.0)
            check_error(answers.by_id[1], q, SERVFAIL)
        assert [(r.outcome, r.upstream) for r in records] == [("timeout", env.engine.upstreams[0].name)]
        assert records[0].latency == pytest.approx(0.5, abs=0.2)

    run(main)


def test_a_failure_inside_submit_still_names_the_upstream(run):
    """The second query meets the dial backoff: it fails before the flow holds its handle."""

    async def main():
        records: list[QueryRecord] = []
        dead = "tls://127.0.0.1:9#dns.test"  # nothing listens on the discard port
        async with engine_env(listen=False, upstreams=lambda up: (dead,)) as env:
            env.engine.query_log = records.append
            answers = Answers()
            flow = env.engine.open_flow("udp", answers)
            for i in range(2):
                flow.receive(make_query(f"n{i}.example", id=i), None)
                await answers.wait_for(i + 1, timeout=2.0)
        assert [(r.outcome, r.upstream, r.rcode) for r in records] == [("servfail", dead, SERVFAIL)] * 2

    run(main)


def test_a_delivery_refused_as_flow_gone_closes_the_flow_quietly(run):
    """An embedding host's close() can be on its way while an answer is delivered: the
    handle refuses it with FlowGone; the flow ends, counted neither answered nor failed."""

    async def main():
        records: list[QueryRecord] = []
        async with engine_env(listen=False) as env:
            env.engine.query_log = records.append

            def gone(data, endpoint):
                raise FlowGone

            flow = env.engine.open_flow("udp", gone)
            flow.receive(make_query("n1.example", id=1), None)
            await wait_until(lambda: flow.closed, timeout=2.0)
            stats = env.engine.stats
            assert (stats.answered, stats.write_failures, stats.flows_closed) == (0, 0, 1)
        assert records == []

    run(main)
