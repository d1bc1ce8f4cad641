"""Starting and stopping the engine as a provider's host does: often, and with flows open.

The system starts and stops a DNS proxy provider for logout, sleep and configuration
changes, so one process sees many engine lifetimes: 200 ``start()``/``stop()`` cycles of one
``EngineThread`` (a query answered in some of them) must leave no thread, descriptor, task
or event loop behind, each ``stop()`` and the whole run within a bound.

``stop()`` with 500 flows open (UDP flows idle after their answer, UDP and TCP flows with a
query in flight to an upstream too slow to answer before the stop, TCP flows holding half a
message) returns within its timeout, delivers nothing to any ``on_response`` after it
returns (nor anything but an answer to the flow's own query before), closes every handle,
and leaves nothing behind. Under uvloop and plain asyncio, over DoT and DoH.
"""

from __future__ import annotations

import threading
import time

import pytest
from host_support import (
    Baseline,
    ask,
    check_answer,
    frame,
    make_query,
    os_threads,
    unframe,
    upstream_stats,
    wait_until,
)

CYCLES = 200
QUERY_EVERY = 20  # a query in every 20th cycle: the others only start and stop


def test_two_hundred_start_stop_cycles_leave_nothing_behind(upstream, engines, use_uvloop):
    et = engines(use_uvloop=use_uvloop)
    base = Baseline(upstream)
    started = time.monotonic()
    slowest_stop = 0.0
    for cycle in range(CYCLES):
        et.start()
        assert et.running, cycle
        if cycle % QUERY_EVERY == 0:
            q = make_query(f"c{cycle}.cycles.example", id=cycle)
            check_answer(ask(et, q, kind="tcp" if cycle % (2 * QUERY_EVERY) else "udp"), q)
            assert upstream_stats(et)["dials"] == 1, "a fresh engine dials afresh"
        t0 = time.monotonic()
        et.stop(timeout=2.0)
        slowest_stop = max(slowest_stop, time.monotonic() - t0)
        assert not et.running, cycle
        # Cheap checks every cycle (thread objects, descriptors); the deep ones at the end.
        grown = [t.name for t in threading.enumerate() if t not in base.threads]
        assert not grown, f"cycle {cycle}: threads left after stop(): {grown}"
        leaked = base.leaked_fds()
        assert not leaked, f"cycle {cycle}: descriptors left after stop(): {leaked}"
    elapsed = time.monotonic() - started
    base.check(f"{CYCLES} start/stop cycles")
    assert os_threads() <= base.os_threads, (base.os_threads, os_threads())
    assert slowest_stop < 2.0, f"the slowest stop() took {slowest_stop:.2f}s"
    assert elapsed < 30.0, f"{CYCLES} cycles took {elapsed:.1f}s"


class Recorder:
    """One flow's callback: what it was given, and whether it came after ``stop()`` returned."""

    def __init__(self, kind: str, queries: dict[int, bytes]) -> None:
        self.kind = kind
        self.queries = queries  # id -> query bytes
        self.messages: list[bytes] = []
        self.buffer = bytearray()
        self.stopped = False  # set once stop() has returned
        self.late = 0
        self.handle = None

    def __call__(self, data, endpoint=None) -> None:
        if self.kind == "udp":
            self.messages.append(bytes(data))
        else:
            self.buffer.extend(data)
            self.messages.extend(unframe(self.buffer))
        # Looked at on the way out: a call that began after stop() returned, or was still running
        # when it returned, sees the flag.
        if self.stopped:
            self.late += 1


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_stop_with_500_open_flows_returns_within_its_timeout_and_leaves_nothing(upstream, engines, use_uvloop,
                                                                                  scheme):
    url = upstream.dot_url if scheme == "dot" else upstream.doh_url
    et = engines(upstreams=[url], use_uvloop=use_uvloop, timeout=30.0)
    base = Baseline(upstream)
    et.start()
    flows: list[Recorder] = []

    def open_flow(kind: str, queries: dict[int, bytes]) -> Recorder:
        rec = Recorder(kind, queries)
        rec.handle = et.open_flow(kind, rec)
        flows.append(rec)
        return rec

    # 200 UDP flows answered, then idle.
    for i in range(200):
        q = make_query(f"idle{i}.stop.example", id=i)
        rec = open_flow("udp", {i: q})
        rec.handle.send(q, ("192.0.2.1", 1000 + i))
    wait_until(lambda: all(len(r.messages) == 1 for r in flows), timeout=10.0, what="200 idle flows answered")
    for rec in flows:
        check_answer(rec.messages[0], rec.queries[int.from_bytes(rec.messages[0][:2], "big")])

    # 250 flows with a query the upstream holds far longer than the stop may take.
    upstream.set_faults(latency=20.0)
    queries_before = upstream.queries()
    for i in range(150):
        q = make_query(f"flight{i}.stop.example", id=1000 + i)
        open_flow("udp", {1000 + i: q}).handle.send(q, ("192.0.2.2", 2000 + i))
    for i in range(100):
        q = make_query(f"tcpflight{i}.stop.example", id=3000 + i)
        rec = open_flow("tcp", {3000 + i: q})
        data = frame(q)
        rec.handle.send(data[:5])
        rec.handle.send(data[5:])
    # 50 TCP flows holding half a message.
    for i in range(50):
        q = make_query(f"half{i}.stop.example", id=5000 + i)
        open_flow("tcp", {5000 + i: q}).handle.send(frame(q)[: len(q) // 2])
    assert len(flows) == 500
    # At least: a connection quiet for a while before the burst is checked for life, and a server this
    # slow fails the check, so its queries may have been sent again on a fresh connection.
    wait_until(lambda: upstream.queries() - queries_before >= 250, timeout=10.0,
               what=lambda: f"the 250 queries in flight reached the upstream ({upstream.queries() - queries_before} "
                            f"did; engine: {et.stats()}; upstream: {upstream.stats()})")
    s = et.stats()
    assert s["flows"] == 500 and s["in_flight"] == 250, (s["flows"], s["in_flight"])

    timeout = 2.0
    t0 = time.monotonic()
    et.stop(reason=2, timeout=timeout)
    took = time.monotonic() - t0
    for rec in flows:
        rec.stopped = True
    assert took < timeout, f"stop() took {took:.2f}s with a timeout of {timeout}s"
    assert not et.running
    base.check("stop() with 500 open flows")  # the engine's thread is gone: nothing can be delivered now
    for rec in flows:
        assert rec.late == 0, "a delivery after stop() returned"
        assert rec.handle.closed
        for m in rec.messages:  # whatever came before stop() answers the flow's own query
            qid = int.from_bytes(m[:2], "big")
            assert qid in rec.queries, qid
            if qid < 1000:
                check_answer(m, rec.queries[qid])
    # The handles are inert now.
    for rec in flows[:10] + flows[-10:]:
        rec.handle.send(b"\x00\x01junk")
        rec.handle.close()
    base.check("sends and closes on the handles of a stopped engine", deep=False)
