"""Sleep, wake and network changes: no lost query, no reconnect storm, no error noise.

A provider is told ``sleep()`` before the machine sleeps and ``wake()`` after (dark wakes
come every ~15 minutes); ``network_changed()`` when the default path moves. Meanwhile its
pooled upstream connections may have died: the server closed them (FIN, seen only now), or
a NAT dropped their mapping (silence). The engine must treat its connections as suspect:
idle ones are dropped without dialling, busy ones drain under a liveness check, and the
next query dials one fresh connection, resuming its TLS session.

* sleep → the server drops its connections (closes them, or goes silent) → wake, and a dark
  wake or a network change with a silent idle connection: the events alone dial nothing,
  the first query after them is answered NOERROR with at most one retry, on one fresh
  connection that resumed its TLS session, and nothing is logged at WARNING or above.
  (``TestUpstream.close_all_connections()`` is the server dropping its connections,
  ``Faults.idle_close`` the server's own idle timeout, ``blackhole_all_connections()`` a NAT
  mapping dropped while asleep.)
* 100 sleep/wake cycles with a query between (every tenth with the server closing its
  connections while asleep): every query answered NOERROR with at most one retry each,
  connections open never above ``pool_size``, at most one dial per cycle, the server left
  with at most ``pool_size`` connections, no WARNING or ERROR logged, and at most a few
  INFO lines per cycle.
* ``network_changed()`` while the queries in flight sit on a connection whose path died (the
  server went silent): the connection fails its liveness check, its queries move once to one
  fresh connection, all answered NOERROR, nothing logged at WARNING or above.
* ``network_changed()`` or ``wake()`` in the middle of a burst of 300 queries held by a
  slow upstream, then 100 more: all 400 answered NOERROR, exactly once, and the queries
  after the event went out on a freshly dialled connection.

Over DoT and DoH; the cheaper cases under uvloop and plain asyncio.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from host_support import ask, check_answer, frame, make_query, unframe, upstream_stats, wait_until


def _url(upstream, scheme: str) -> str:
    return upstream.dot_url if scheme == "dot" else upstream.doh_url


def _no_warnings(logs) -> None:
    noisy = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in logs.at_least(logging.WARNING)]
    assert not noisy, f"logged at WARNING or above: {noisy}"


def _dials_stay(et, dials: int, seconds: float = 0.3) -> None:
    """For ``seconds``, the engine dials nothing (nothing positive to wait for: a bounded look)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = upstream_stats(et)["dials"]
        assert now == dials, f"{now - dials} dial(s) with no query to send"
        time.sleep(0.01)


# --------------------------------------------------------------------------- one event, then a query


SCENARIOS = {
    # name: (events before the upstream misbehaves, what the upstream does, events after)
    "server-idle-close-dark-wake": ((), "idle_close", ("wake",)),
    "sleep-server-closes-wake": (("sleep",), "close", ("wake",)),
    "sleep-path-silent-wake": (("sleep",), "blackhole", ("wake",)),
    "dark-wake-path-silent": ((), "blackhole", ("wake",)),
    "network-change-path-silent": ((), "blackhole", ("network_changed",)),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_the_first_query_after_a_wake_is_answered_on_one_fresh_resumed_connection(upstream, engines, use_uvloop,
                                                                                  dotproxy_logs, scheme, scenario):
    before, server_does, after = SCENARIOS[scenario]
    et = engines(upstreams=[_url(upstream, scheme)], use_uvloop=use_uvloop, upstream_options={"pool_size": 1})
    et.start()
    if server_does == "idle_close":
        upstream.set_faults(idle_close=0.2)  # armed when the connection opens
    q = make_query("before.sleep.example", id=1)
    check_answer(ask(et, q), q)
    s = upstream_stats(et)
    assert (s["dials"], s["handshakes"], s["connections_open"]) == (1, 1, 1), s
    assert upstream.connections() == 1

    for event in before:
        getattr(et, event)()
    if server_does == "close":
        upstream.close_all_connections()
    elif server_does == "blackhole":
        upstream.blackhole_all_connections()
    else:
        wait_until(lambda: upstream.connections() == 0, what="the server closed the idle connection")
        upstream.set_faults(idle_close=None)
    for event in after:
        started = time.monotonic()
        getattr(et, event)()
        assert time.monotonic() - started < 0.5, f"{event}() did not return promptly"

    # The idle connection is let go (closed while asleep, or dropped as suspect), and nothing is dialled.
    wait_until(lambda: upstream_stats(et)["connections_open"] == 0, timeout=3.0,
               what="the engine let its old, idle connection go")
    _dials_stay(et, 1)

    s0 = upstream_stats(et)
    q = make_query("after.wake.example", 28, id=2)
    started = time.monotonic()
    check_answer(ask(et, q, timeout=5.0), q)
    took = time.monotonic() - started
    s1 = upstream_stats(et)
    assert s1["retries"] - s0["retries"] <= 1, (s0, s1)
    assert s1["dials"] == 2 and s1["handshakes"] == 2, f"one fresh connection for the first query: {s1}"
    assert s1["resumed"] == 1, f"the fresh connection resumed the TLS session: {s1}"
    assert s1["connections_open"] == 1
    assert took < 3.0, f"the first query after the wake took {took:.2f}s"
    _no_warnings(dotproxy_logs)
    et.stop()


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_a_network_change_with_busy_connections_on_a_dead_path_moves_their_queries_once(upstream, engines,
                                                                                        dotproxy_logs, scheme):
    """The path died under queries in flight (the server went silent): after network_changed() the busy
    connection must show a sign of life within the liveness bound or its queries move, once, to a fresh
    connection; every one is answered NOERROR well before its deadline."""
    n, latency = 50, 0.2
    et = engines(upstreams=[_url(upstream, scheme)], timeout=10.0, upstream_options={"pool_size": 1})
    et.start()
    q = make_query("warm.example", id=0)
    check_answer(ask(et, q), q)  # an RTT measured: the liveness bound is its short end
    upstream.set_faults(latency=latency)
    got: dict[int, list[bytes]] = {}
    lock = threading.Lock()

    def on_response(data, endpoint):
        with lock:
            got.setdefault(int.from_bytes(data[:2], "big"), []).append(bytes(data))

    flow = et.open_flow("udp", on_response)
    queries = {qid: make_query(f"d{qid}.dead-path.example", id=qid) for qid in range(1, n + 1)}
    before = upstream.queries()
    for q in queries.values():
        flow.send(q, None)
    wait_until(lambda: upstream.queries() - before == n, what="the queries reached the server")
    upstream.blackhole_all_connections()  # their answers will never come on this connection
    s0 = upstream_stats(et)
    started = time.monotonic()
    et.network_changed()
    wait_until(lambda: len(got) == n, timeout=6.0, what=f"{n} answers after the path died (got {len(got)})")
    took = time.monotonic() - started
    for qid, answers in got.items():
        assert len(answers) == 1, f"query {qid} answered {len(answers)} times"
        check_answer(answers[0], queries[qid])
    s1 = upstream_stats(et)
    assert s1["liveness_failures"] - s0["liveness_failures"] >= 1, s1
    assert s1["retries"] - s0["retries"] == n, f"each query moved exactly once: {s0} -> {s1}"
    assert s1["dials"] - s0["dials"] == 1, f"one fresh connection: {s0} -> {s1}"
    assert s1["timeouts"] == 0 and s1["failures"] == 0, s1
    assert took < 4.0, f"the moved queries took {took:.2f}s"
    _no_warnings(dotproxy_logs)
    flow.close()
    et.stop()


# --------------------------------------------------------------------------- many cycles


CYCLE_CASES = [
    pytest.param("dot", True, id="dot-uvloop"),
    pytest.param("dot", False, id="dot-asyncio"),
    pytest.param("doh", True, id="doh-uvloop"),
]


@pytest.mark.parametrize(("scheme", "use_uvloop"), CYCLE_CASES)
def test_a_hundred_sleep_wake_cycles_keep_connections_dials_and_log_lines_bounded(upstream, engines,
                                                                                  dotproxy_logs, scheme,
                                                                                  use_uvloop):
    cycles = 100
    pool_size = 2
    et = engines(upstreams=[_url(upstream, scheme)], use_uvloop=use_uvloop,
                 upstream_options={"pool_size": pool_size})
    et.start()
    q = make_query("warm.example", id=0)
    check_answer(ask(et, q), q)
    dials_start = upstream_stats(et)["dials"]
    dotproxy_logs.clear()
    most_open = 0
    for cycle in range(cycles):
        et.sleep()
        if cycle % 10 == 5:
            upstream.close_all_connections()  # the server dropped us while we slept
        et.wake()
        before = upstream_stats(et)
        q = make_query(f"c{cycle}.cycle.example", 1 if cycle % 2 else 28, id=cycle + 1)
        check_answer(ask(et, q, kind="tcp" if cycle % 3 == 0 else "udp"), q)
        after = upstream_stats(et)
        assert after["retries"] - before["retries"] <= 1, (cycle, before, after)
        most_open = max(most_open, after["connections_open"])
        assert after["connections_open"] <= pool_size, (cycle, after)
    s = upstream_stats(et)
    dials = s["dials"] - dials_start
    assert dials <= cycles, f"{dials} dials in {cycles} cycles"
    assert s["failures"] == 0 and s["timeouts"] == 0, s
    wait_until(lambda: upstream.connections() <= pool_size, timeout=3.0,
               what=f"the server has at most {pool_size} of our connections")
    _no_warnings(dotproxy_logs)
    info = dotproxy_logs.exactly(logging.INFO, "dotproxy")
    assert len(info) <= 2 * cycles, f"{len(info)} INFO lines in {cycles} cycles: {[r.getMessage() for r in info[:5]]}"
    et.stop()


# --------------------------------------------------------------------------- mid-burst


@pytest.mark.parametrize("event", ["network_changed", "wake"])
@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_an_event_in_the_middle_of_a_burst_loses_nothing(upstream, engines, dotproxy_logs, scheme, event):
    burst, more, latency = 300, 100, 0.5
    et = engines(upstreams=[_url(upstream, scheme)], timeout=10.0)
    et.start()
    upstream.set_faults(latency=latency)

    lock = threading.Lock()
    answers: dict[int, list[bytes]] = {}
    queries: dict[int, bytes] = {}

    def record(data) -> None:
        qid = int.from_bytes(data[:2], "big")
        with lock:
            answers.setdefault(qid, []).append(bytes(data))

    def udp_response(data, endpoint):
        record(data)

    def tcp_response_for(buffer: bytearray):
        def on_response(data):
            buffer.extend(data)
            for m in unframe(buffer):
                record(m)
        return on_response

    flows = []
    for i in range(20):
        if i % 4 == 0:
            flows.append(("tcp", et.open_flow("tcp", tcp_response_for(bytearray()))))
        else:
            flows.append(("udp", et.open_flow("udp", udp_response)))

    def send(qid: int, name: str) -> None:
        q = make_query(name, id=qid)
        queries[qid] = q
        kind, handle = flows[qid % len(flows)]
        if kind == "tcp":
            handle.send(frame(q))
        else:
            handle.send(q, ("192.0.2.7", 7000 + qid % len(flows)))

    for qid in range(burst):
        send(qid, f"b{qid}.burst.example")
    wait_until(lambda: upstream.queries() == burst, timeout=5.0, what=f"the {burst} queries reached the upstream")
    dials_before = upstream_stats(et)["dials"]
    getattr(et, event)()
    in_flight = et.stats()["in_flight"]
    assert in_flight > 0, "the event came after the burst was answered, not in its middle"
    for qid in range(burst, burst + more):
        send(qid, f"m{qid}.after.example")
    wait_until(lambda: len(answers) == burst + more, timeout=8.0,
               what=f"{burst + more} queries answered (got {len(answers)})")
    wait_until(lambda: et.stats()["in_flight"] == 0, what="nothing in flight")
    for qid, got in answers.items():
        assert len(got) == 1, f"query {qid} answered {len(got)} times"
        check_answer(got[0], queries[qid])
    s = et.stats()
    assert s["servfail"] == 0 and s["answered"] == burst + more
    up = upstream_stats(et)
    assert up["dials"] > dials_before, "the queries after the event went out on a connection from before it"
    assert up["failures"] == 0 and up["timeouts"] == 0, up
    _no_warnings(dotproxy_logs)
    for _, handle in flows:
        handle.close()
    et.stop()
