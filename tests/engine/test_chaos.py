"""The chaos suite: thousands of host flows torn down at random moments, against a slow, faulty upstream.

Flows are opened with ``engine.open_flow("udp"|"tcp", deliver)`` (as an embedding host
does), each sends 1-3 queries with unique names (TCP ones length-prefixed and fed in
chunks split at random byte boundaries) and is then torn down at one of these moments:

``before``         closed before its first query (the queries are fed after: a no-op)
``after_receive``  closed right after its last ``receive()``, in the same loop iteration
``in_flight``      closed once its first query reached the upstream, before the answer
``in_deliver``     closed from inside its own deliver callback, on its k-th answer
``never``          stays open: it must get exactly one answer per query

against one :class:`TestUpstream` with latency and jitter, over its DoT or its DoH URL,
cleanly ("clean") or with faults ("faults": drop, garbage, wrong_id, close_after; DoH
also goaway_after; "streams": DoH with max_concurrent_streams on top). A seeded
:class:`random.Random` draws the whole plan (kinds, fates, names, IDs, chunking, pauses,
delays) up front, so a failure reproduces with ``DOTPROXY_CHAOS_SEED=<seed>`` (timing
aside; ``DOTPROXY_CHAOS_FLOWS`` sets the flows per case); every assertion message names
the seed. A short variant has the host's deliver raise ("flow is not connected") on some
flows: only those close.

Checked: no deliver call after a flow's close (a global sequence number orders every
deliver call and every close, the engine's own closes at ``stop()`` included); every
answer a flow gets is a valid DNS response to one of its queries (ID and question),
to the endpoint it came from, never twice — NOERROR with 192.0.2.1, or SERVFAIL where
faults are on; flows that stay open get all their answers; queries fed to a closed flow
never reach the upstream; ``Admission.in_flight`` is back to 0; ``engine.flows`` is 0
after ``stop()``; no task or descriptor is left (``engine_env``); the loop's exception
handler was never called (``run``). Under asyncio and uvloop.

Found and fixed: the test upstream's DoH server failed on a refused stream that the client
reset in the same write (test_doh_stream_over_the_server_limit_reset_in_the_same_write).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import pytest
from engine_support import check_answer, engine_env, frame, make_query, wait_until

from dotproxy import wire
from dotproxy.testing import ANSWER_A, Faults, default_answer

SEED = int(os.environ.get("DOTPROXY_CHAOS_SEED", "7853"))
FLOWS = int(os.environ.get("DOTPROXY_CHAOS_FLOWS", "1000"))  # per case; 4 cases per loop kind
MAX_ACTIVE = 250  # flows being driven at once
MAX_NEVER = 150  # flows that stay open to the end (idle once answered), on top of those

FATES = ("before", "after_receive", "in_flight", "in_deliver", "never")
FATE_WEIGHTS = (10, 15, 25, 20, 30)

LATENCY = 0.01
JITTER = 0.03


def _faults(scheme: str, mode: str) -> Faults:
    f = Faults(latency=LATENCY, jitter=JITTER)
    if mode in ("faults", "streams"):
        f.drop = 0.02
        f.garbage = 0.02
        f.wrong_id = 0.02
        f.close_after = 120 if scheme == "dot" else 400
        if scheme == "doh":
            f.goaway_after = 150
    if mode == "streams":
        f.max_concurrent_streams = 40
    return f


CASES = [
    pytest.param("dot", "clean", id="dot-clean"),
    pytest.param("dot", "faults", id="dot-faults"),
    pytest.param("doh", "clean", id="doh-clean"),
    pytest.param("doh", "faults", id="doh-faults"),
    pytest.param("doh", "streams", id="doh-streams"),
]


# --------------------------------------------------------------------------- the plan


@dataclass
class FlowPlan:
    """What one flow does, all drawn from the seed before anything runs."""

    index: int
    kind: str
    fate: str
    queries: list[bytes]
    names: list[str]
    endpoints: list  # UDP: the endpoint of each query; TCP: Nones
    feed: list[tuple[bytes, object, float | None]]  # (data, endpoint, pause after: None none, 0.0 a yield, >0 sleep)
    close_on: int = 0  # in_deliver: close on this delivery (1-based)
    close_delay: float = 0.0  # in_flight: after the first query reached the upstream

    # ---- what happened
    flow: object = None
    deliveries: list[tuple[int, bytes, object]] = field(default_factory=list)  # (seq, bytes, endpoint)
    closed_seq: int | None = None
    closing: bool = False  # we asked for the close (or engine.stop() did)
    late: list[int] = field(default_factory=list)  # deliver seqs after the close
    problems: list[str] = field(default_factory=list)
    seen: asyncio.Event | None = None
    done: asyncio.Event | None = None
    answers_expected: int = 0
    received: int = 0  # DNS messages delivered (TCP: complete frames)
    tcp_buf: bytearray = field(default_factory=bytearray)


def _endpoint(rng: random.Random):
    if rng.random() < 0.5:
        return (f"192.0.2.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))
    return (f"2001:db8::{rng.randrange(1, 0xFFFF):x}", rng.randrange(1024, 65536), 0, 0)


def _pause(rng: random.Random) -> float | None:
    r = rng.random()
    if r < 0.4:
        return None  # the next piece in the same loop iteration
    if r < 0.8:
        return 0.0
    return rng.uniform(0.0005, 0.004)


def make_plan(rng: random.Random, count: int, tag: str, max_never: int = MAX_NEVER) -> list[FlowPlan]:
    plans = []
    never = 0
    for i in range(count):
        kind = rng.choice(("udp", "tcp"))
        fate = rng.choices(FATES, FATE_WEIGHTS)[0]
        if fate == "never":
            if never == max_never:
                fate = rng.choice(FATES[:-1])
            else:
                never += 1
        n = rng.randint(1, 3)
        ids = rng.sample(range(0x10000), n)  # distinct within the flow
        names = [f"f{i}-q{j}.{tag}.example" for j in range(n)]
        queries = [make_query(names[j], id=ids[j], edns=rng.random() < 0.5) for j in range(n)]
        if kind == "udp":
            endpoints = [_endpoint(rng) for _ in range(n)]
            feed = [(q, ep, _pause(rng)) for q, ep in zip(queries, endpoints)]
        else:
            endpoints = [None] * n
            stream = b"".join(frame(q) for q in queries)
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, min(6, len(stream) - 1))))
            bounds = [0, *cuts, len(stream)]
            feed = [(stream[a:b], None, _pause(rng)) for a, b in zip(bounds, bounds[1:])]
        plans.append(FlowPlan(i, kind, fate, queries, names, endpoints, feed,
                              close_on=rng.randint(1, n), close_delay=rng.uniform(0.0, 0.8 * LATENCY)))
    return plans


# --------------------------------------------------------------------------- judging answers


def _messages(plan: FlowPlan) -> list[tuple[bytes, object]] | str:
    """The DNS messages a flow was given (TCP: unframed), each with its endpoint."""
    if plan.kind == "udp":
        return [(data, ep) for _, data, ep in plan.deliveries]
    stream = b"".join(data for _, data, _ in plan.deliveries)
    out = []
    while stream:
        if len(stream) < 2 or len(stream) < 2 + int.from_bytes(stream[:2], "big"):
            return f"a partial TCP message at the end of its deliveries: {stream[:40].hex()}"
        n = int.from_bytes(stream[:2], "big")
        out.append((stream[2 : 2 + n], None))
        stream = stream[2 + n :]
    return out


def judge(plan: FlowPlan, allow_servfail: bool) -> tuple[list[str], int, int]:
    """Problems with the answers ``plan``'s flow got; also (NOERROR count, SERVFAIL count)."""
    problems = []
    msgs = _messages(plan)
    if isinstance(msgs, str):
        return [msgs], 0, 0
    by_key = {}
    for j, q in enumerate(plan.queries):
        m = dns.message.from_wire(q)
        by_key[(m.id, plan.names[j])] = (j, m)
    answered: set[int] = set()
    ok = servfail = 0
    for data, ep in msgs:
        try:
            r = dns.message.from_wire(data)
        except Exception as e:  # noqa: BLE001 - any parse failure is the finding
            problems.append(f"unparsable answer {data[:48].hex()}: {e!r}")
            continue
        name = r.question[0].name.to_text(omit_final_dot=True).lower() if r.question else None
        hit = by_key.get((r.id, name))
        if hit is None:
            problems.append(f"an answer to no query of this flow: id {r.id} question {r.question}")
            continue
        j, q = hit
        if j in answered:
            problems.append(f"query {j} ({plan.names[j]}) answered twice")
        answered.add(j)
        if not r.flags & dns.flags.QR:
            problems.append(f"answer to {plan.names[j]} has QR clear")
        if r.question != q.question:
            problems.append(f"answer to {plan.names[j]} has question {r.question}")
        if plan.kind == "udp" and ep != plan.endpoints[j]:
            problems.append(f"answer to {plan.names[j]} went to {ep}, not {plan.endpoints[j]}")
        rcode = r.rcode()
        if rcode == dns.rcode.NOERROR:
            addresses = [rd.address for rrset in r.answer for rd in rrset]
            if addresses != [ANSWER_A]:
                problems.append(f"answer to {plan.names[j]}: NOERROR with {addresses}")
            ok += 1
        elif rcode == dns.rcode.SERVFAIL and allow_servfail:
            if r.answer:
                problems.append(f"SERVFAIL to {plan.names[j]} carries answers")
            servfail += 1
        else:
            problems.append(f"answer to {plan.names[j]}: {dns.rcode.to_text(rcode)}")
    return problems, ok, servfail


# --------------------------------------------------------------------------- the chaos


async def _feed(plan: FlowPlan) -> None:
    for data, endpoint, pause in plan.feed:
        plan.flow.receive(data, endpoint)
        if pause is None:
            continue
        await asyncio.sleep(pause)


def _close(plan: FlowPlan) -> None:
    plan.closing = True
    plan.flow.close()


def _hooks(plan: FlowPlan, seq, stopping: list[bool]):
    """The deliver and on_close callbacks of ``plan``'s flow."""

    def deliver(data, endpoint=None) -> None:
        s = next(seq)
        plan.deliveries.append((s, bytes(data), endpoint))
        if plan.closed_seq is not None:
            plan.late.append(s)
            return
        if plan.kind == "udp":
            plan.received += 1
        else:
            buf = plan.tcp_buf
            buf += data
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                del buf[: 2 + int.from_bytes(buf[:2], "big")]
                plan.received += 1
        if plan.fate == "in_deliver" and plan.received == plan.close_on:
            _close(plan)  # while this very answer is being delivered
        if plan.received >= plan.answers_expected:
            plan.done.set()

    def on_close(flow) -> None:
        if plan.closed_seq is not None:
            plan.problems.append("on_close called twice")
            return
        plan.closed_seq = next(seq)
        if not plan.closing and not stopping[0]:
            plan.problems.append(f"closed by the engine before stop() (fate {plan.fate}, "
                                 f"{len(plan.deliveries)} deliveries)")
        plan.done.set()

    return deliver, on_close


async def _drive(engine, plan: FlowPlan, seq, stopping, wait_bound: float, slots: asyncio.Semaphore) -> None:
    try:
        deliver, on_close = _hooks(plan, seq, stopping)
        plan.flow = engine.open_flow(plan.kind, deliver, name=f"chaos {plan.index}", on_close=on_close,
                                     metadata={"plan": plan.index})
        if plan.fate == "before":
            _close(plan)
            await _feed(plan)  # a closed flow takes nothing
            return
        await _feed(plan)
        if plan.fate == "after_receive":
            _close(plan)
            return
        if plan.fate == "in_flight":
            try:
                async with asyncio.timeout(LATENCY + JITTER + 0.5):
                    await plan.seen.wait()  # its first query reached the upstream (unless dropped)
            except TimeoutError:
                pass
            await asyncio.sleep(plan.close_delay)  # < the upstream's least latency: still in flight
            _close(plan)
            return
        try:
            async with asyncio.timeout(wait_bound):
                await plan.done.wait()
        except TimeoutError:
            plan.problems.append(f"fate {plan.fate}: {len(plan.deliveries)} deliveries of "
                                 f"{plan.answers_expected} after {wait_bound}s")
    finally:
        slots.release()


def _describe(plan: FlowPlan) -> str:
    return (f"flow {plan.index} ({plan.kind}, {plan.fate}, {len(plan.queries)} queries, close_on {plan.close_on}, "
            f"{len(plan.deliveries)} deliveries, closed_seq {plan.closed_seq}, "
            f"delivery seqs {[s for s, _, _ in plan.deliveries]})")


def _verify(plans: list[FlowPlan], ctx: str, faulty: bool, upstream_saw: set[str]) -> tuple[dict, int, int]:
    """Every flow's record against its plan; returns (flows per fate, NOERROR answers, SERVFAIL answers)."""
    problems = []
    ok = servfail = 0
    counts = dict.fromkeys(FATES, 0)
    for p in plans:
        counts[p.fate] += 1
        found = list(p.problems)
        if p.late:
            found.append(f"{len(p.late)} deliver call(s) after close (seqs {p.late})")
        if p.closed_seq is None:
            found.append("never closed")
        elif any(s > p.closed_seq for s, _, _ in p.deliveries):
            found.append("a delivery ordered after the close")
        bad, n_ok, n_sf = judge(p, allow_servfail=faulty)
        found += bad
        ok += n_ok
        servfail += n_sf
        if p.fate == "never" and p.received != len(p.queries):
            found.append(f"stayed open, sent {len(p.queries)} queries, got {p.received} answers")
        if p.fate == "in_deliver" and p.received != p.close_on:
            found.append(f"closed on answer {p.close_on} but got {p.received}")
        if p.fate == "before":
            if p.deliveries:
                found.append("closed before its first query, yet got deliveries")
            seen = upstream_saw.intersection(p.names)
            if seen:
                found.append(f"closed before its first query, yet the upstream saw {sorted(seen)}")
        if found:
            problems.append(f"{_describe(p)}: {'; '.join(found)}")
    assert not problems, f"{ctx}: {len(problems)} flows went wrong, e.g.:\n" + "\n".join(problems[:10])
    assert all(counts.values()), (ctx, counts)
    return counts, ok, servfail


@pytest.mark.parametrize(("scheme", "mode"), CASES)
def test_chaos_flows_torn_down_at_random_moments(run, loop_kind, scheme, mode):
    seed = SEED
    ctx = f"seed {seed} (DOTPROXY_CHAOS_SEED={seed}), {scheme}, {mode}, {loop_kind}"
    rng = random.Random(f"{seed}/{scheme}/{mode}/{loop_kind}")
    plans = make_plan(rng, FLOWS, tag=f"s{seed}")
    by_name = {name: p for p in plans for name in p.names}
    faulty = mode != "clean"
    timeout = 1.0 if faulty else 2.0
    upstream_saw: set[str] = set()
    verified: list[dict] = []

    def answer(query: bytes):
        try:
            name = wire.parse_query(query).qname
        except wire.WireError:
            name = None
        plan = by_name.get(name)
        if plan is not None:
            upstream_saw.add(name)
            plan.seen.set()
        return default_answer(query)

    async def main():
        seq = itertools.count()
        stopping = [False]
        for p in plans:
            p.seen = asyncio.Event()
            p.done = asyncio.Event()
            p.answers_expected = p.close_on if p.fate == "in_deliver" else len(p.queries)
        # engine_env: on the way out, no task and no descriptor of the engine left, engine.flows == 0,
        # and no internal error in the test upstream.
        async with engine_env(listen=False, scheme=scheme, faults=_faults(scheme, mode), answer=answer,
                              timeout=timeout) as env:
            engine = env.engine
            slots = asyncio.Semaphore(MAX_ACTIVE)
            async with asyncio.TaskGroup() as tg:
                for p in plans:
                    await slots.acquire()
                    tg.create_task(_drive(engine, p, seq, stopping, timeout + 3.0, slots))

            # Everything settled: the flows left open are answered and idle, nothing is in flight.
            never = [p for p in plans if p.fate == "never"]
            assert engine._admission.in_flight == 0, f"{ctx}: {engine._admission.in_flight} still admitted"
            assert engine.flows == len(never), f"{ctx}: {engine.flows} flows open, expected {len(never)}"
            assert all(p.flow.in_flight == 0 for p in plans), ctx
            stats = engine.stats
            assert stats.write_failures == 0, (ctx, stats)

            stopping[0] = True
            await engine.stop()
            await asyncio.sleep(LATENCY + JITTER + 0.05)  # past any late upstream answer
            assert engine.flows == 0, f"{ctx}: {engine.flows} flows after stop()"
            assert engine._admission.in_flight == 0, f"{ctx}: {engine._admission.in_flight} admitted after stop()"
            assert stats.flows_opened == stats.flows_closed == len(plans), (ctx, stats)

            counts, ok, servfail = _verify(plans, ctx, faulty, upstream_saw)
            up = env.up.stats
            assert stats.cancelled > 0, (ctx, stats)
            assert ok > 0, ctx
            if faulty:
                assert servfail > 0, f"{ctx}: faults on, yet no SERVFAIL"
                assert up.garbage_sent and up.wrong_ids_sent and up.queries_dropped, (ctx, up)
                assert up.connections_closed_by_server > 0, (ctx, up)
                if mode == "streams":
                    assert up.doh_streams_refused > 0, (ctx, up)
            else:
                assert servfail == 0, ctx
            verified.append({"flows": len(plans), "fates": counts, "noerror": ok, "servfail": servfail,
                             "cancelled": stats.cancelled})

    run(main, timeout=120)


def test_doh_stream_over_the_server_limit_reset_in_the_same_write(run):
    """The chaos case "doh-streams", made deterministic: a flow closed in the same loop
    iteration as its queries go on a fresh DoH connection sends HEADERS, DATA and
    RST_STREAM(CANCEL) of each stream in one write; the server (max 2 streams) must
    refuse the third or ignore it, not fail. Nothing is delivered to the closed flow."""

    async def main():
        async with engine_env(listen=False, scheme="doh",
                              faults=Faults(latency=0.3, max_concurrent_streams=2)) as env:
            engine = env.engine
            upstream = engine.upstreams[0]
            got = []
            flow = engine.open_flow("udp", lambda data, endpoint: got.append(data))
            for i in range(3):
                flow.receive(make_query(f"r{i}.limit.example", id=i), ("192.0.2.1", 53))
            # The pool dials; once the handshake is done it opens the three streams at once
            # (the server's SETTINGS are not in yet) and flushes them on the next loop
            # iteration. This watcher runs every iteration and closes the flow in between.
            loop = asyncio.get_running_loop()
            placed = loop.create_future()

            def watch() -> None:
                if upstream._conns and upstream._conns[0].waiters:
                    assert upstream._conns[0]._flush_scheduled  # not written yet
                    flow.close()
                    placed.set_result(None)
                else:
                    loop.call_soon(watch)

            loop.call_soon(watch)
            async with asyncio.timeout(5):
                await placed
            await wait_until(lambda: env.up.stats.doh_streams >= 3, what="the streams at the server")
            await asyncio.sleep(0.4)  # past the upstream's latency
            assert got == []
            assert engine._admission.in_flight == 0
            # the connection still serves
            other = []
            flow2 = engine.open_flow("udp", lambda data, endpoint: other.append(data))
            q = make_query("after.limit.example", id=7)
            flow2.receive(q, ("192.0.2.1", 53))
            await wait_until(lambda: other, what="an answer after the reset streams")
            check_answer(other[0], q)

    run(main, timeout=30)


# --------------------------------------------------------------------------- failing deliveries


def _failing_on(plan: FlowPlan, deliver, error: BaseException):
    """``deliver`` (the recorder) that raises ``error`` on the plan's ``close_on``-th answer."""

    def failing(data, endpoint=None) -> None:
        deliver(data, endpoint)
        if plan.closed_seq is None and plan.received == plan.close_on:
            raise error

    return failing


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_chaos_failing_deliver_closes_only_its_own_flows(run, loop_kind, scheme):
    """Some hosts' writes fail ("flow is not connected") on a random answer: those flows
    close there, with nothing delivered after; every other flow keeps being answered."""
    seed = SEED
    ctx = f"seed {seed} (DOTPROXY_CHAOS_SEED={seed}), {scheme}, failing deliver, {loop_kind}"
    rng = random.Random(f"{seed}/{scheme}/failing/{loop_kind}")
    plans = make_plan(rng, 300, tag=f"d{seed}", max_never=300)
    for p in plans:
        p.fate = "never"  # only the failing writes close flows here
    failing = {p.index for p in plans if rng.random() < 0.35}
    errors = (ConnectionError("flow is not connected"), OSError(57, "Socket is not connected"),
              RuntimeError("host bug"))
    raises = {i: rng.choice(errors) for i in failing}
    extra = {p.index: make_query(f"f{p.index}-more.d{seed}.example", id=rng.randrange(0x10000)) for p in plans}

    async def main():
        seq = itertools.count()
        stopping = [False]
        async with engine_env(listen=False, scheme=scheme, faults=Faults(latency=LATENCY, jitter=JITTER)) as env:
            engine = env.engine
            for p in plans:
                p.done = asyncio.Event()
                p.answers_expected = p.close_on if p.index in failing else len(p.queries)
                deliver, on_close = _hooks(p, seq, stopping)
                if p.index in failing:
                    deliver = _failing_on(p, deliver, raises[p.index])
                p.flow = engine.open_flow(p.kind, deliver, name=f"chaos {p.index}", on_close=on_close)
                p.closing = p.index in failing  # the engine closes these, and only these
            for p in plans:
                for data, endpoint, _ in p.feed:
                    p.flow.receive(data, endpoint)
            async with asyncio.timeout(10):
                for p in plans:
                    await p.done.wait()
            healthy = [p for p in plans if p.index not in failing]
            assert all(p.flow.closed for p in plans if p.index in failing), ctx
            assert not any(p.flow.closed for p in healthy), ctx
            assert engine.flows == len(healthy), (ctx, engine.flows, len(healthy))
            assert engine.stats.write_failures == len(failing), (ctx, engine.stats)

            # the others keep being answered, and the closed ones take nothing more
            for p in plans:
                q = extra[p.index]
                p.queries.append(q)
                p.names.append(f"f{p.index}-more.d{seed}.example")
                ep = ("192.0.2.99", 5300 + p.index) if p.kind == "udp" else None
                p.endpoints.append(ep)
                if p.index not in failing:
                    p.answers_expected += 1
                    p.done.clear()
                data = q if p.kind == "udp" else frame(q)
                cut = rng.randrange(1, len(data))
                p.flow.receive(data[:cut] if p.kind == "tcp" else data, ep)
                if p.kind == "tcp":
                    await asyncio.sleep(0)
                    p.flow.receive(data[cut:])
            async with asyncio.timeout(10):
                for p in healthy:
                    await p.done.wait()
            await asyncio.sleep(LATENCY + JITTER + 0.05)
            assert engine._admission.in_flight == 0, (ctx, engine._admission.in_flight)
            stopping[0] = True
            await engine.stop()
            assert engine.flows == 0, ctx
            assert engine._admission.in_flight == 0, ctx

        problems = []
        for p in plans:
            found = list(p.problems)
            if p.late:
                found.append(f"{len(p.late)} deliver call(s) after close (seqs {p.late})")
            bad, _, _ = judge(p, allow_servfail=False)
            found += bad
            msgs = _messages(p)
            got = len(msgs) if not isinstance(msgs, str) else -1
            want = p.close_on if p.index in failing else len(p.queries)
            if got != want:
                found.append(f"{got} answers, expected {want}")
            if p.index in failing and (p.closed_seq is None or p.closed_seq < p.deliveries[-1][0]):
                found.append("not closed by its failing delivery")
            if found:
                problems.append(f"{_describe(p)} failing={p.index in failing}: {'; '.join(found)}")
        assert not problems, f"{ctx}: {len(problems)} flows went wrong, e.g.:\n" + "\n".join(problems[:10])

    run(main, timeout=60)
