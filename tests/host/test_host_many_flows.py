"""Ten thousand flows from four host threads, closed at random moments while their queries are in flight.

This is what the embedding API exists for: a provider's host code runs on its own threads
(completion handlers of NEAppProxyUDPFlow and friends), opens a flow per client
conversation, hands over its datagrams or stream bytes, and tears flows down whenever the
system says so, including while the engine is delivering an answer; now and then the
host's write fails ("flow is not connected") and ``on_response`` raises.

Four host threads drive ``FLOWS`` flows (UDP and TCP, 1-3 queries each with unique names,
TCP bytes cut at random places) against a test upstream with latency and jitter, in
batches of ``BATCH`` per thread. A seeded :class:`random.Random` draws each flow's plan up
front (``DOTPROXY_HOST_SEED`` reproduces one, timing aside): its fate

``open``       stays open until answered; then closed by the host, or left open for ``stop()``
``in_flight``  closed by the host at a random moment within the upstream's answer time
``at_once``    closed by the host right after its sends
``before``     closed before its sends (which are then no-ops)
``inside``     closed by its own ``on_response``, on the first answer

and whether its ``on_response`` raises (parametrised: 1%, 50%, 100% of flows).

Checked: no ``on_response`` call begins or is still running after the ``close()`` that
closed its flow returned (a per-flow flag set right after ``close()`` returns, or after
``stop()`` returns, read by the callback on its way out); a flow whose ``on_response``
raised gets no further call and its handle says closed; a flow closed from inside gets no
further call; every answer delivered is a NOERROR answer to one of the flow's own queries
(dnspython: ID, question, the test upstream's record), never twice, UDP answers to the
endpoint the query came with; every flow that stayed open got all its answers; nothing is
left in flight; the engine's open flows are exactly those the host left open; after
``stop()`` no thread, descriptor, task or loop of the engine is left.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from host_support import Baseline, answer_problem, frame, join_all, make_query, unframe, wait_until

SEED = int(os.environ.get("DOTPROXY_HOST_SEED", "5417"))
FLOWS = int(os.environ.get("DOTPROXY_HOST_FLOWS", "10000"))
THREADS = 4
BATCH = 100  # flows one host thread has going at once
LATENCY, JITTER = 0.01, 0.04  # the upstream answers 10-50 ms after a query arrives

FATES = ("open", "in_flight", "at_once", "before", "inside")
FATE_WEIGHTS = (40, 30, 10, 5, 15)
KEEP_OPEN = 0.5  # of the "open" flows, those left open for stop()


class FlowRun:
    """One flow's plan, and what happened to it. Its instances are the flows' ``on_response``."""

    def __init__(self, index: int, rng: random.Random, raise_rate: float, tag: str) -> None:
        self.index = index
        self.kind = "udp" if rng.random() < 0.7 else "tcp"
        self.fate = rng.choices(FATES, FATE_WEIGHTS)[0]
        self.raises = rng.random() < raise_rate
        self.keep_open = self.fate == "open" and rng.random() < KEEP_OPEN
        self.close_delay = rng.uniform(0.0, 2 * (LATENCY + JITTER))
        ids = rng.sample(range(65536), rng.choices((1, 2, 3), (60, 30, 10))[0])
        self.queries = {qid: make_query(f"f{index}q{k}.{tag}.example", rng.choice((1, 1, 28)), id=qid)
                        for k, qid in enumerate(ids)}
        self.endpoints = {qid: (f"192.0.2.{rng.randrange(1, 255)}", rng.randrange(1024, 65536)) for qid in ids}
        stream = b"".join(frame(q) for q in self.queries.values())
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(0, 4)))
        self.chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        self.settled_signal: threading.Condition | None = None
        # ---- what happened
        self.handle = None
        self.closed = False  # close() (the host's, outside on_response) or stop() has returned
        self.calls = 0
        self.late = 0  # calls that began, or were still running, after that
        self.after_raise = 0  # calls after one that raised
        self.raised = False
        self.closed_inside = False
        self.messages: list[tuple[bytes, object]] = []
        self.buffer = bytearray()
        self.settled = False

    # ---- the engine's thread

    def __call__(self, *args) -> None:
        late = self.closed
        self.calls += 1
        if self.raised:
            self.after_raise += 1
        if self.kind == "udp":
            data, endpoint = args
            self.messages.append((bytes(data), endpoint))
        else:
            self.buffer.extend(args[0])
            self.messages.extend((m, None) for m in unframe(self.buffer))
        closing_here = False
        if self.fate == "inside" and not self.closed_inside:
            self.handle.close()  # from inside on_response: no deadlock, no later call
            self.closed_inside = closing_here = True
        if not self.settled and self._answered_enough():
            self.settled = True
            with self.settled_signal:
                self.settled_signal.notify_all()
        if late or (self.closed and not closing_here):
            self.late += 1
        if self.raises:
            self.raised = True
            raise ConnectionError("flow is not connected")

    def _answered_enough(self) -> bool:
        if self.raises or self.fate == "inside":
            return self.calls >= 1
        return len(self.messages) >= len(self.queries)

    # ---- the host's threads

    def waits_for_answers(self) -> bool:
        return self.fate in ("open", "inside")

    def send_all(self) -> None:
        if self.kind == "udp":
            for qid, q in self.queries.items():
                self.handle.send(q, self.endpoints[qid])
        else:
            for chunk in self.chunks:
                self.handle.send(chunk)

    def close(self) -> None:
        self.handle.close()
        self.closed = True

    # ---- afterwards

    def problems(self) -> list[str]:
        out = []
        if self.late:
            out.append(f"{self.late} call(s) after close() returned")
        if self.after_raise:
            out.append(f"{self.after_raise} call(s) after on_response raised")
        if self.fate == "inside" and self.calls > 1:
            out.append(f"{self.calls} calls, though it closed itself in the first")
        if self.fate == "before" and self.calls:
            out.append(f"{self.calls} call(s) to a flow closed before its sends")
        if self.buffer:
            out.append(f"{len(self.buffer)} bytes of an incomplete TCP answer")
        seen = set()
        for data, endpoint in self.messages:
            qid = int.from_bytes(data[:2], "big")
            if qid not in self.queries:
                out.append(f"an answer with ID {qid}, not one of its queries")
                continue
            if qid in seen:
                out.append(f"query {qid} answered twice")
            seen.add(qid)
            problem = answer_problem(data, self.queries[qid])
            if problem:
                out.append(f"query {qid}: {problem}")
            if self.kind == "udp" and endpoint != self.endpoints[qid]:
                out.append(f"query {qid} answered to {endpoint!r}, not {self.endpoints[qid]!r}")
        if self.fate == "open":
            if self.raises and self.calls != 1:
                out.append(f"stayed open with a raising on_response: {self.calls} calls, not 1")
            if not self.raises and seen != set(self.queries):
                out.append(f"stayed open: {len(seen)} of {len(self.queries)} queries answered")
        if self.raised and not self.handle.closed:
            out.append("on_response raised, yet the handle does not say closed")
        return out


def host_thread(et, runs: list[FlowRun], signal: threading.Condition, deadline: float, stuck: list) -> None:
    """One host thread: its flows in batches of BATCH, closes at their planned moments."""
    for start in range(0, len(runs), BATCH):
        batch = runs[start : start + BATCH]
        t0 = time.monotonic()
        timed = []
        for run in batch:
            run.handle = et.open_flow(run.kind, run, metadata=run.index)
            if run.fate == "before":
                run.close()
                run.send_all()
                continue
            run.send_all()
            if run.fate == "at_once":
                run.close()
            elif run.fate == "in_flight":
                timed.append(run)
        for run in sorted(timed, key=lambda r: r.close_delay):
            pause = t0 + run.close_delay - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the workload's random close moment, not a synchronisation
            run.close()
        waiting = [r for r in batch if r.waits_for_answers()]
        with signal:
            ok = signal.wait_for(lambda: all(r.settled for r in waiting) or bool(stuck),
                                 timeout=max(0.0, deadline - time.monotonic()))
        if not ok:
            stuck.append(f"{threading.current_thread().name}: batch at {start} not answered by the deadline")
        if stuck:
            return
        for run in batch:
            if run.fate == "open" and not run.keep_open:
                run.close()


@pytest.mark.parametrize(("scheme", "raise_rate"), [
    pytest.param("dot", 0.01, id="dot-raise-1%"),
    pytest.param("doh", 0.5, id="doh-raise-50%"),
    pytest.param("dot", 1.0, id="dot-raise-100%"),
])
def test_ten_thousand_flows_from_four_threads_closed_at_random_moments(upstream, engines, scheme, raise_rate):
    rng = random.Random(f"{SEED}-{scheme}-{raise_rate}")
    tag = f"{scheme}{int(raise_rate * 100)}"
    runs = [FlowRun(i, rng, raise_rate, tag) for i in range(FLOWS)]
    signals = [threading.Condition() for _ in range(THREADS)]
    for run in runs:
        run.settled_signal = signals[run.index % THREADS]
    upstream.set_faults(latency=LATENCY, jitter=JITTER)
    url = upstream.dot_url if scheme == "dot" else upstream.doh_url
    et = engines(upstreams=[url], timeout=20.0)
    base = Baseline(upstream)
    et.start()

    started = time.monotonic()
    stuck: list[str] = []
    deadline = started + 60.0
    hosts = [threading.Thread(target=host_thread, name=f"host-{i}",
                              args=(et, runs[i::THREADS], signals[i], deadline, stuck)) for i in range(THREADS)]
    for t in hosts:
        t.start()
    join_all(hosts, 70.0)
    driven = time.monotonic() - started
    context = f"seed {SEED}, {scheme}, on_response raising for {raise_rate:.0%}"
    assert not stuck, f"{context}: {stuck}"

    kept_open = sum(1 for r in runs if r.keep_open and not r.raises)
    wait_until(lambda: et.stats()["in_flight"] == 0, timeout=5.0, what=f"{context}: nothing left in flight")
    wait_until(lambda: et.stats()["flows"] == kept_open, timeout=5.0,
               what=f"{context}: the engine's open flows are the {kept_open} the host left open")
    s = et.stats()
    assert s["flows_opened"] <= FLOWS, s
    assert s["servfail"] == 0 and s["refused_overload"] == 0 and s["formerr"] == 0, s

    et.stop(timeout=5.0)
    for run in runs:
        run.closed = True
    assert not et.running
    base.check(f"stop() ({context})")

    problems = {}
    for run in runs:
        found = run.problems()
        if found:
            problems[f"flow {run.index} ({run.kind}, {run.fate}{', raising' if run.raises else ''})"] = found
    counts = {fate: sum(1 for r in runs if r.fate == fate) for fate in FATES}
    assert not problems, (f"{context}: {len(problems)} flows went wrong (fates {counts}); the first ones: "
                          f"{dict(list(problems.items())[:10])}")
    # The closes really fell among the answers: some flows closed in flight had an answer first, some not.
    in_flight = [r for r in runs if r.fate == "in_flight"]
    answered_first = sum(1 for r in in_flight if r.calls)
    assert 0 < answered_first < len(in_flight), f"{context}: {answered_first} of {len(in_flight)}"
    assert driven < 60.0, f"{context}: driving the flows took {driven:.1f}s"
    print(f"{context}: {FLOWS} flows driven in {driven:.1f}s; {answered_first} of {len(in_flight)} closed in "
          f"flight had an answer first")
