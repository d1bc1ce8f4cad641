"""The embedding API, call by call: what a host (an NEDNSProxyProvider wrapper) relies on.

``EngineThread`` runs the engine on a loop thread of its own; the host calls it from its
threads. Checked here, each under uvloop and plain asyncio where it costs little:

* construction: a bad option is a ``ConfigError`` at once, and nothing is started;
* ``start()``: idempotent, ready when it returns (a query sent at once is answered), one
  loop thread whether called once, twice, or from four threads at the same moment;
  ``stop()`` from two threads at once, and twice, is fine;
* ``open_flow``: UDP answers come back with the endpoint given to ``send``, TCP answers
  length-prefixed whatever the chunking of the query bytes (here: one byte per ``send``),
  ``on_response`` runs on the engine's thread, on the loop asked for (``use_uvloop``);
  a bad kind is a ``ValueError``;
* failure isolation: a flow whose ``on_response`` raises is closed (its later sends are not
  even queries), the others keep being answered;
* ``close()``: from inside ``on_response`` it stops the flow's other answers; from another
  thread while a delivery is in progress it returns only after that delivery finished;
* ``stop()`` from inside ``on_response`` is a ``RuntimeError`` (it would wait for itself);
* after ``stop()`` (or before ``start()``): ``open_flow`` gives a closed handle, ``send`` and
  ``close`` are no-ops, ``sleep``/``wake``/``network_changed`` return at once;
* the engine keeps no host object (callback, metadata) alive once its flow is closed,
  and ``stop(reason)`` logs the reason;
* ``query_log``: one record per answered query, on the engine's thread, carrying the
  flow's metadata, the question, the rcode and the upstream;
* ``stats()``: the flow counters, open flows, queries in flight, and each upstream's counters.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref

import pytest
from host_support import (
    Baseline,
    ask,
    check_answer,
    frame,
    join_all,
    make_query,
    unframe,
    upstream_stats,
    wait_until,
)

from dotproxy.errors import ConfigError
from dotproxy.host import EngineThread, FlowHandle
from dotproxy.io.loop import loop_name

# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("options", [
    pytest.param({"upstreams": ["ftp://192.0.2.1"]}, id="bad-url"),
    pytest.param({"upstreams": []}, id="no-upstream"),
    pytest.param({"timeout": 0}, id="timeout-zero"),
    pytest.param({"max_in_flight": 0}, id="max-in-flight-zero"),
    pytest.param({"tcp_max_pipeline": 0}, id="tcp-pipeline-zero"),
    pytest.param({"upstream_options": {"pool_size": 0}}, id="pool-size-zero"),
    pytest.param({"upstream_options": {"no_such_option": 1}}, id="unknown-upstream-option"),
    pytest.param({"upstream_options": {"idle_timeout": "long"}}, id="mistyped-upstream-option"),
    pytest.param({"no_such_option": 1}, id="unknown-option"),
])
def test_a_bad_option_is_a_config_error_at_construction_and_starts_nothing(upstream, options):
    base = Baseline(upstream)
    options = {"upstreams": [upstream.dot_url], "ca_file": upstream.ca_file, **options}
    with pytest.raises(ConfigError):
        EngineThread(**options)
    base.check("a failed construction", deep=False)


def test_construction_starts_nothing_and_stop_before_start_is_harmless(upstream, engines):
    base = Baseline(upstream)
    et = engines()
    assert not et.running
    base.check("construction", deep=False)
    for call in (et.sleep, et.wake, et.network_changed, et.stop):
        started = time.monotonic()
        call()
        assert time.monotonic() - started < 1.0, call
    assert not et.running
    base.check("lifecycle calls on an engine never started", deep=False)


# --------------------------------------------------------------------------- start and stop


def test_start_twice_is_one_engine_ready_at_once(upstream, engines, use_uvloop):
    base = Baseline(upstream)
    et = engines(use_uvloop=use_uvloop)
    et.start()
    assert et.running
    threads = set(threading.enumerate()) - base.threads
    assert threads, "start() returned, yet no engine thread runs"
    et.start()  # a no-op
    assert et.running
    assert set(threading.enumerate()) - base.threads == threads, "a second start() made more threads"
    q = make_query("twice.example", id=0x1234)
    check_answer(ask(et, q), q)  # ready: the first query, sent right after start(), is answered
    et.stop()
    assert not et.running
    base.check()
    et.stop()  # a second stop() is a no-op
    assert not et.running
    base.check("a second stop()")


def test_start_from_four_threads_at_once_is_one_engine_and_stop_from_two_at_once_waits_for_both(
        upstream, engines, use_uvloop):
    # How many threads one engine has, learnt from a sequential start.
    base = Baseline(upstream)
    probe = engines(use_uvloop=use_uvloop)
    probe.start()
    per_engine = len(set(threading.enumerate()) - base.threads)
    probe.stop()
    base.check("the probe engine's stop()")

    et = engines(use_uvloop=use_uvloop)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    returned_running: list[bool] = []

    def starter() -> None:
        try:
            barrier.wait(5.0)
            et.start()
            returned_running.append(et.running)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    starters = [threading.Thread(target=starter, name=f"starter-{i}") for i in range(4)]
    for t in starters:
        t.start()
    join_all(starters, 10.0, "start() calls")
    assert errors == []
    assert returned_running == [True] * 4, "start() returned before the engine was running"
    made = set(threading.enumerate()) - base.threads
    assert len(made) == per_engine, f"four concurrent start() calls made {len(made)} threads: {made}"
    q = make_query("concurrent.example", id=7)
    check_answer(ask(et, q), q)

    engine_threads = list(made)
    barrier = threading.Barrier(2)
    seen_on_return: list[tuple] = []

    def stopper() -> None:
        try:
            barrier.wait(5.0)
            et.stop(timeout=5.0)
            # Whichever stop() returns, the engine's threads and descriptors are gone by then.
            alive = [t.name for t in engine_threads if t.is_alive()]
            seen_on_return.append((alive, base.leaked_fds()))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    stoppers = [threading.Thread(target=stopper, name=f"stopper-{i}") for i in range(2)]
    for t in stoppers:
        t.start()
    join_all(stoppers, 10.0, "stop() calls")
    assert errors == []
    assert seen_on_return == [([], {}), ([], {})], f"a stop() returned with something left: {seen_on_return}"
    assert not et.running
    base.check()


# --------------------------------------------------------------------------- flows


def test_udp_answers_come_back_on_the_engine_thread_to_the_endpoint_given(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    calls: list[tuple] = []
    all_in = threading.Event()

    def on_response(data, endpoint):
        calls.append((bytes(data), endpoint, threading.get_ident(), loop_name(asyncio.get_running_loop())))
        if len(calls) == 3:
            all_in.set()

    flow = et.open_flow("udp", on_response)
    assert isinstance(flow, FlowHandle) and not flow.closed
    queries = {
        1: (make_query("one.example", id=1), ("192.0.2.10", 5000)),
        2: (make_query("two.example", 28, id=2), ("2001:db8::10", 6000, 0, 0)),
        3: (make_query("three.example", id=3), "an endpoint is whatever the host passes"),
    }
    for q, endpoint in queries.values():
        flow.send(q, endpoint)
    assert all_in.wait(5.0), f"{len(calls)} of 3 answers"
    for data, endpoint, ident, loop in calls:
        qid = int.from_bytes(data[:2], "big")
        query, sent_to = queries[qid]
        check_answer(data, query)
        assert endpoint == sent_to
        assert ident != threading.get_ident(), "on_response ran on the host's thread"
        assert loop == ("uvloop" if use_uvloop else "asyncio")
    assert len({c[2] for c in calls}) == 1, "on_response ran on more than one thread"

    s = et.stats()
    assert s["flows"] == 1 and s["in_flight"] == 0
    assert s["queries"] == 3 and s["answered"] == 3 and s["flows_opened"] == 1 and s["flows_closed"] == 0
    up = s["upstreams"][0]
    assert up["answers"] == 3 and up["dials"] == 1 and up["connections_open"] == 1
    flow.close()
    assert flow.closed
    assert wait_until(lambda: et.stats()["flows"] == 0, what="the engine forgets a closed flow") >= 0
    assert et.stats()["flows_closed"] == 1
    et.stop()


def test_tcp_flow_fed_one_byte_at_a_time_gets_framed_answers(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    stream = bytearray()
    answers: list[bytes] = []
    both = threading.Event()

    def on_response(data):
        stream.extend(data)
        answers.extend(unframe(stream))
        if len(answers) >= 2:
            both.set()

    flow = et.open_flow("tcp", on_response)
    q1 = make_query("first.pipelined.example", id=0xA1)
    q2 = make_query("second.pipelined.example", 28, id=0xA2)
    for byte in frame(q1) + frame(q2):
        flow.send(bytes([byte]))
    assert both.wait(5.0), f"{len(answers)} of 2 answers"
    assert stream == b"", "bytes beyond the two framed answers"
    by_id = {int.from_bytes(a[:2], "big"): a for a in answers}
    assert sorted(by_id) == [0xA1, 0xA2] and len(answers) == 2
    check_answer(by_id[0xA1], q1)
    check_answer(by_id[0xA2], q2)
    flow.close()
    et.stop()


def test_open_flow_with_a_bad_kind_is_a_value_error(engines):
    et = engines()
    et.start()
    for kind in ("dot", "UDP", "", None):
        with pytest.raises(ValueError):
            et.open_flow(kind, lambda *a: None)
    assert et.stats()["flows"] == 0
    et.stop()


def test_a_flow_whose_on_response_raises_is_closed_and_the_others_keep_being_answered(upstream, engines,
                                                                                       use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    failing_calls: list[bytes] = []
    first = threading.Event()

    def failing(data, endpoint):
        failing_calls.append(data)
        first.set()
        raise ConnectionError("flow is not connected")

    bad = et.open_flow("udp", failing)
    good_udp: list[bytes] = []
    good_tcp = bytearray()
    udp_flow = et.open_flow("udp", lambda data, endpoint: good_udp.append(data))
    tcp_flow = et.open_flow("tcp", lambda data: good_tcp.extend(data))

    q = make_query("fails.example", id=1)
    bad.send(q, ("192.0.2.1", 1))
    assert first.wait(5.0)
    wait_until(lambda: bad.closed, what="the flow whose on_response raised is closed")
    wait_until(lambda: et.stats()["flows"] == 2, what="the engine forgot the failed flow")
    queries_before = et.stats()["queries"]
    bad.send(make_query("fails.again.example", id=2), ("192.0.2.1", 1))  # a no-op: it is closed
    for i in range(20):
        udp_flow.send(make_query(f"u{i}.example", id=100 + i), ("192.0.2.2", 2))
        tcp_flow.send(frame(make_query(f"t{i}.example", id=200 + i)))
    wait_until(lambda: len(good_udp) == 20 and len(unframe(bytearray(good_tcp))) == 20, timeout=5.0,
               what="the other flows' 40 answers")
    for data in good_udp:
        i = int.from_bytes(data[:2], "big") - 100
        check_answer(data, make_query(f"u{i}.example", id=100 + i))
    for data in unframe(bytearray(good_tcp)):
        i = int.from_bytes(data[:2], "big") - 200
        check_answer(data, make_query(f"t{i}.example", id=200 + i))
    s = et.stats()
    assert s["queries"] == queries_before + 40, "a send on the closed flow became a query"
    assert s["write_failures"] == 1
    assert len(failing_calls) == 1
    check_answer(failing_calls[0], q)
    assert not udp_flow.closed and not tcp_flow.closed
    et.stop()
    assert len(failing_calls) == 1


def test_close_from_inside_on_response_stops_the_flows_other_answers(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    upstream.set_faults(latency=0.02, jitter=0.05)  # the answers come at different times
    calls: list[bytes] = []
    closed_inside = threading.Event()
    handle: list[FlowHandle] = []

    def on_response(data):
        calls.append(data)
        handle[0].close()  # from the engine's thread, inside the delivery: must not deadlock
        closed_inside.set()

    handle.append(et.open_flow("tcp", on_response))
    handle[0].send(b"".join(frame(make_query(f"q{i}.close-inside.example", id=i)) for i in range(10)))
    assert closed_inside.wait(5.0)
    assert handle[0].closed
    # Another flow's ten answers arrive after the latest the closed flow's could have.
    check = []
    other_done = threading.Event()

    def other_response(data, endpoint):
        check.append(data)
        if len(check) == 10:
            other_done.set()

    other = et.open_flow("udp", other_response)
    for i in range(10):
        other.send(make_query(f"o{i}.example", id=i), None)
    assert other_done.wait(5.0)
    wait_until(lambda: et.stats()["in_flight"] == 0, what="nothing in flight")
    assert len(calls) == 1, f"{len(calls)} deliveries to a flow closed in its first one"
    et.stop()


def test_close_returns_only_after_a_delivery_in_progress_has_finished(upstream, engines):
    et = engines()
    et.start()
    entered = threading.Event()
    release = threading.Event()
    finished = []

    def on_response(data, endpoint):
        entered.set()
        release.wait(5.0)  # the host's write is slow
        finished.append(True)

    flow = et.open_flow("udp", on_response)
    flow.send(make_query("slow.write.example", id=9), None)
    assert entered.wait(5.0)
    seen_at_return: list[bool] = []
    closer = threading.Thread(target=lambda: (flow.close(), seen_at_return.append(bool(finished))),
                              name="closer")
    closer.start()
    closer.join(0.3)  # a close() that does not wait returns here, with the delivery still running
    early = not closer.is_alive()
    release.set()
    closer.join(5.0)
    assert not closer.is_alive(), "close() did not return once the delivery finished"
    assert seen_at_return == [True], (
        f"close() returned while on_response was still running (returned early: {early})")
    assert flow.closed
    et.stop()


def test_stop_from_inside_on_response_is_a_runtime_error_and_the_engine_runs_on(upstream, engines,
                                                                                use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    raised: list[BaseException | None] = []
    done = threading.Event()

    def on_response(data, endpoint):
        try:
            et.stop(timeout=1.0)
        except BaseException as e:  # noqa: BLE001 - what it was is the point
            raised.append(e)
        else:
            raised.append(None)
        done.set()

    flow = et.open_flow("udp", on_response)
    flow.send(make_query("stop.inside.example", id=3), None)
    assert done.wait(5.0)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert et.running
    q = make_query("still.running.example", id=4)
    check_answer(ask(et, q), q)
    et.stop()
    assert not et.running


def test_stop_from_inside_on_response_while_the_host_is_stopping_too_is_an_error_not_a_deadlock(upstream,
                                                                                               engines):
    """The host stops the provider while a delivery (say, a failed write that makes it give up) calls stop()
    as well: the delivery's stop() must raise at once, and the host's stop() must return."""
    et = engines()
    et.start()
    entered = threading.Event()
    raised: list[BaseException | None] = []

    def on_response(data, endpoint):
        entered.set()
        # Wait (bounded) until the host's stop() has begun: the engine no longer says it runs.
        end = time.monotonic() + 3.0
        while et.running and time.monotonic() < end:
            time.sleep(0.002)
        try:
            et.stop(timeout=1.0)
        except BaseException as e:  # noqa: BLE001 - what it was is the point
            raised.append(e)
        else:
            raised.append(None)

    flow = et.open_flow("udp", on_response)
    flow.send(make_query("stop.both.example", id=5), None)
    assert entered.wait(5.0)
    # The host's stop() on a thread of its own, so that a deadlock fails the test instead of hanging it.
    host_stop = threading.Thread(target=et.stop, kwargs={"timeout": 1.0}, name="host-stop", daemon=True)
    host_stop.start()
    host_stop.join(6.0)
    assert not host_stop.is_alive(), (
        f"the host's stop() has not returned after 6 s (on_response's own stop() call: {raised or 'still blocked'})")
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert not et.running


def test_the_engine_keeps_no_host_object_alive_once_a_flow_is_closed(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()

    class Host:
        """What a host hands over: a callback bound to its own flow object, and metadata."""

        def __init__(self) -> None:
            self.got = threading.Event()

        def on_response(self, data, endpoint=None) -> None:
            self.got.set()

    class App:
        pass

    refs = []
    for kind in ("udp", "tcp"):
        host, app = Host(), App()
        handle = et.open_flow(kind, host.on_response, metadata=app)
        q = make_query(f"{kind}.weak.example", id=1)
        if kind == "udp":
            handle.send(q, None)
        else:
            handle.send(frame(q))
        assert host.got.wait(5.0)
        handle.close()
        refs += [weakref.ref(host), weakref.ref(app)]
        del host, app, handle
    wait_until(lambda: et.stats()["flows"] == 0, what="the closed flows forgotten")
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"kept alive by the running engine after close(): {alive}"
    et.stop()


def test_stop_logs_its_reason(upstream, engines, dotproxy_logs):
    et = engines()
    et.start()
    et.stop(reason=3)  # NEProviderStopReason.userInitiated, say
    lines = [r.getMessage() for r in dotproxy_logs.at_least(logging.INFO, "dotproxy")]
    assert any("3" in line and "stop" in line.lower() for line in lines), lines


# --------------------------------------------------------------------------- stopped and not started


def test_after_stop_handles_are_closed_and_every_call_is_a_harmless_no_op(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    calls: list = []
    udp = et.open_flow("udp", lambda *a: calls.append(a))
    tcp = et.open_flow("tcp", lambda *a: calls.append(a))
    q = make_query("before.stop.example", id=1)
    udp.send(q, None)
    wait_until(lambda: len(calls) == 1, what="the answer before stop()")
    et.stop()
    assert udp.closed and tcp.closed, "the flows of a stopped engine are closed"
    base = Baseline(upstream)
    udp.send(make_query("after.stop.example", id=2), None)
    tcp.send(frame(make_query("after.stop.example", id=3)))
    udp.close()
    tcp.close()
    late = et.open_flow("udp", lambda *a: calls.append(a))
    assert isinstance(late, FlowHandle) and late.closed
    late.send(make_query("late.example", id=4), None)
    late.close()
    for call in (et.sleep, et.wake, et.network_changed):
        started = time.monotonic()
        call()
        assert time.monotonic() - started < 1.0, call
    assert not et.running
    assert len(calls) == 1
    base.check("calls on a stopped engine", deep=False)


def test_open_flow_before_start_returns_a_closed_handle(upstream, engines):
    et = engines()
    calls: list = []
    handle = et.open_flow("udp", lambda *a: calls.append(a))
    assert handle.closed
    handle.send(make_query("not.started.example", id=1), None)
    handle.close()
    et.start()
    assert handle.closed, "a handle given before start() came to life"
    q = make_query("started.example", id=2)
    check_answer(ask(et, q), q)
    et.stop()
    assert calls == []


# --------------------------------------------------------------------------- the query log


def test_query_log_gets_one_record_per_answered_query_with_the_flows_metadata(upstream, engines, use_uvloop):
    records: list[tuple] = []

    def query_log(record):
        records.append((record, threading.get_ident()))

    et = engines(use_uvloop=use_uvloop, query_log=query_log)
    et.start()
    delivered_on: list[int] = []
    app = {"signing_identifier": "com.example.mail"}
    other_app = ("com.example.browser", 501)
    udp = et.open_flow("udp", lambda d, e: delivered_on.append(threading.get_ident()), metadata=app)
    tcp = et.open_flow("tcp", lambda d: delivered_on.append(threading.get_ident()), metadata=other_app)
    udp.send(make_query("Mail.Example.COM", id=1), ("192.0.2.1", 1))
    udp.send(make_query("imap.example.com", 28, id=2), ("192.0.2.1", 1))
    tcp.send(frame(make_query("www.example.org", id=3)))
    wait_until(lambda: len(records) == 3, what="three query log records")
    # One more answered query as a sync point: no record comes twice.
    q = make_query("sync.example", id=4)
    check_answer(ask(et, q, metadata="sync"), q)
    wait_until(lambda: len(records) == 4, what="the fourth record")
    assert len(records) == 4

    by_name = {r.qname.rstrip(".").lower(): (r, ident) for r, ident in records}
    assert set(by_name) == {"mail.example.com", "imap.example.com", "www.example.org", "sync.example"}
    engine_thread = delivered_on[0]
    for name, meta, qtype in (("mail.example.com", app, 1), ("imap.example.com", app, 28),
                              ("www.example.org", other_app, 1), ("sync.example", "sync", 1)):
        r, ident = by_name[name]
        assert r.metadata is meta or r.metadata == meta, (name, r.metadata)
        assert r.qtype == qtype
        assert r.rcode == 0
        assert isinstance(r.outcome, str) and r.outcome
        assert isinstance(r.latency, float) and 0.0 <= r.latency < 5.0
        assert isinstance(r.upstream, str) and r.upstream
        assert ident == engine_thread, "the query log was called off the engine's thread"
    assert by_name["mail.example.com"][0].metadata is app, "the metadata object itself reaches the log"
    et.stop()


def test_stats_snapshot_has_the_flow_counters_and_each_upstreams(upstream, engines):
    et = engines(upstreams=[upstream.dot_url, upstream.doh_url])
    et.start()
    for i in range(5):
        q = make_query(f"s{i}.example", id=i)
        check_answer(ask(et, q, kind="tcp" if i % 2 else "udp"), q)
    # close() returns at once; the engine's side of the close follows on its thread.
    wait_until(lambda: et.stats()["flows"] == 0, what="the five closed flows forgotten")
    s = et.stats()
    for key in ("queries", "answered", "servfail", "formerr", "refused_overload", "cancelled", "write_failures",
                "flows_opened", "flows_closed", "flows", "in_flight", "upstreams"):
        assert key in s, key
    assert s["queries"] == 5 and s["answered"] == 5 and s["servfail"] == 0
    assert s["flows_opened"] == 5 and s["flows_closed"] == 5 and s["in_flight"] == 0
    assert len(s["upstreams"]) == 2
    first, second = s["upstreams"]
    for key in ("dials", "handshakes", "resumed", "connections_open", "answers", "failures", "timeouts",
                "retries", "liveness_failures"):
        assert key in first and key in second, key
    assert first["answers"] == 5 and first["dials"] == 1 and first["handshakes"] == 1
    assert second["answers"] == 0 and second["dials"] == 0, "the second upstream was asked though the first answered"
    assert upstream_stats(et, 0)["connections_open"] == 1
    et.stop()


# --------------------------------------------------------------------------- after the review


def test_sleep_returns_when_idle_connections_are_closed(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    et.start()
    ask(et, make_query("warm.example"))
    assert upstream_stats(et)["connections_open"] == 1
    et.sleep()  # what the system's completion handler is called after
    assert upstream_stats(et)["connections_open"] == 0
    assert et.stats()["sleeps"] == 1
    wait_until(lambda: upstream.connections() == 0, what="the server saw the close")


def test_a_closed_handle_lets_go_of_the_engine(upstream, engines):
    et = engines()
    et.start()
    handle = et.open_flow("udp", lambda data, endpoint: None)
    handle.close()
    wait_until(lambda: et.stats()["flows"] == 0, what="the engine closed the flow")
    et.stop()
    assert handle._run is None and handle._flow is None


def test_a_host_flooding_sends_faster_than_the_engine_reads_is_bounded(upstream, engines):
    et = engines(max_in_flight=50)  # also the bound on sends waiting for the engine's thread
    et.start()
    got = []
    block = threading.Event()

    def slow(data, endpoint):  # holds the engine's thread: sends pile up meanwhile
        got.append(data)
        block.wait(5)

    udp = et.open_flow("udp", slow)
    tcp = et.open_flow("tcp", lambda data: None)
    udp.send(make_query("first.example"), ("192.0.2.1", 53))
    wait_until(lambda: got, what="the engine thread is held")
    for i in range(500):
        udp.send(make_query(f"f{i}.example"), ("192.0.2.1", 53))
    tcp.send(frame(make_query("t.example")))
    block.set()
    stats = et.stats()
    assert stats["dropped_sends"] >= 450
    assert tcp.closed  # a stream with a gap is no stream: that flow ends
