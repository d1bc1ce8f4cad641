"""Play the host: a make-believe NEDNSProxyProvider driving dotproxy from its own threads.

    python3 examples/embed_host.py [--flows 2000] [--threads 4] [--write-failure-rate 0.02] [--seconds 20]

What a provider on macOS does, in miniature: the system hands it flows on its own
queues; for each it opens an engine flow, reads datagrams completion-handler style
(like ``NEAppProxyUDPFlow.readDatagrams``) and hands them over; answers come back on
the engine's thread and are written with ``writeDatagrams``, which now and then
fails ("flow is not connected"); flows are torn down by the "system" whenever it
likes, queries in flight or not. The machine sleeps and wakes once, and changes
network once. An in-process test upstream (DoT on loopback, with latency) stands in
for the real resolver. At the end it prints what happened and checks the promises:
no answer after a close, every flow the system kept open answered, nothing left.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.rcode

from dotproxy.host import EngineThread
from dotproxy.testing import Faults, TestUpstream


class FlowNotConnected(Exception):
    """What NEAppProxyFlow's write completion handler reports for a torn-down flow."""


class SystemUDPFlow:
    """Stands in for NEAppProxyUDPFlow: datagrams to read, a write that can fail, a teardown."""

    def __init__(self, datagrams: list[tuple[bytes, tuple]], failure_rate: float, rng: random.Random) -> None:
        self._pending = list(datagrams)
        self._failure_rate = failure_rate
        self._rng = rng
        self.lock = threading.Lock()
        self.torn_down = False  # set by the "system", at any moment
        self.written: list[bytes] = []
        self.writes_after_teardown = 0

    def read_datagrams(self, completion) -> None:
        """Calls ``completion(datagrams, endpoints, error)``, as the real one does, here at once."""
        with self.lock:
            batch, self._pending = self._pending[:2], self._pending[2:]
        completion([d for d, _ in batch], [e for _, e in batch], None)

    def write_datagrams(self, datagrams: list[bytes], endpoints: list) -> None:
        with self.lock:
            if self.torn_down:
                self.writes_after_teardown += 1
                raise FlowNotConnected("flow is not connected")
            if self._rng.random() < self._failure_rate:
                self.torn_down = True
                raise FlowNotConnected("flow is not connected")
            self.written.extend(datagrams)


class Provider:
    """The host side: what a Swift NEDNSProxyProvider subclass would do, written in Python."""

    def __init__(self, engine: EngineThread) -> None:
        self.engine = engine
        self.callbacks_after_close = 0

    def handle_new_flow(self, flow: SystemUDPFlow, metadata: str):
        closed = threading.Event()

        def on_response(data: bytes, endpoint) -> None:  # on the engine's thread
            if closed.is_set():
                self.callbacks_after_close += 1
            flow.write_datagrams([data], [endpoint])  # raising closes this flow in the engine

        handle = self.engine.open_flow("udp", on_response, metadata=metadata)

        def got(datagrams, endpoints, error) -> None:
            if error is not None or not datagrams:
                return
            for data, endpoint in zip(datagrams, endpoints):
                handle.send(data, endpoint)
            flow.read_datagrams(got)

        flow.read_datagrams(got)

        def teardown() -> None:  # the system drops the flow
            with flow.lock:
                flow.torn_down = True
            handle.close()
            closed.set()

        return handle, teardown


def serve_upstream(ready: threading.Event, box: dict, latency: float) -> None:
    async def main() -> None:
        async with TestUpstream(faults=Faults(latency=latency, jitter=latency)) as up:
            box.update(up=up, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--queries-per-flow", type=int, default=3)
    parser.add_argument("--write-failure-rate", type=float, default=0.02)
    parser.add_argument("--teardown-rate", type=float, default=0.2, help="share of flows the system tears down")
    parser.add_argument("--latency", type=float, default=0.05, help="upstream latency (+ jitter as much), s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    ready, box = threading.Event(), {}
    upstream_thread = threading.Thread(target=serve_upstream, args=(ready, box, args.latency), name="upstream")
    upstream_thread.start()
    ready.wait()
    up = box["up"]
    threads_before = {t.ident for t in threading.enumerate()}

    engine = EngineThread(upstreams=[up.dot_url], ca_file=up.ca_file, timeout=4.0)
    started = time.monotonic()
    engine.start()
    provider = Provider(engine)
    print(f"engine started in {1000 * (time.monotonic() - started):.0f} ms, forwarding to {up.dot_url}")

    def one_flow(i: int):
        rng = random.Random(args.seed * 100003 + i)
        queries = []
        for j in range(args.queries_per_flow):
            q = dns.message.make_query(f"q{i}-{j}.example", "A")
            queries.append((q.to_wire(), ("10.0.0.2", 50000 + j)))
        flow = SystemUDPFlow(queries, args.write_failure_rate, rng)
        _handle, teardown = provider.handle_new_flow(flow, metadata=f"com.example.app{i % 7}")
        torn = rng.random() < args.teardown_rate
        if torn:
            time.sleep(rng.uniform(0, 2 * args.latency))  # mid-flight, most likely
            teardown()
        return flow, queries, torn

    with ThreadPoolExecutor(args.threads, thread_name_prefix="host") as pool:
        first = list(pool.map(one_flow, range(args.flows // 2)))
        engine.sleep()
        engine.wake()
        engine.network_changed()
        second = list(pool.map(one_flow, range(args.flows // 2, args.flows)))
    results = first + second

    deadline = time.monotonic() + 10
    kept = [(f, q) for f, q, torn in results if not torn and not f.torn_down]
    while time.monotonic() < deadline and any(len(f.written) < len(q) and not f.torn_down for f, q in kept):
        time.sleep(0.05)
    stats = engine.stats()
    engine.stop(reason="example done")
    stopped_threads = {t.ident for t in threading.enumerate()} - threads_before

    unanswered = 0
    for flow, queries in kept:
        if flow.torn_down:  # a write failed meanwhile: the system would tear it down
            continue
        ids = sorted(dns.message.from_wire(w).id for w in flow.written)
        asked = sorted(dns.message.from_wire(q).id for q, _ in queries)
        unanswered += ids != asked
        for w in flow.written:
            assert dns.message.from_wire(w).rcode() == dns.rcode.NOERROR
    write_failures = sum(1 for f, _q, torn in results if f.torn_down and not torn)
    upstream = stats["upstreams"][0]
    print(f"flows {args.flows} on {args.threads} host threads: {sum(t for *_, t in results)} torn down by the "
          f"system, {write_failures} ended by a failed write")
    print(f"queries {stats['queries']}: answered {stats['answered']}, cancelled by a close {stats['cancelled']}, "
          f"servfail {stats['servfail']}; upstream dials {upstream['dials']}, TLS resumed {upstream['resumed']}")
    print(f"callbacks after close(): {provider.callbacks_after_close}; writes refused by a torn-down flow before "
          f"its close(): "
          f"{sum(f.writes_after_teardown for f, *_ in results)}; open flows unanswered: {unanswered}; "
          f"engine threads left after stop(): {len(stopped_threads)}")
    box["loop"].call_soon_threadsafe(box["stop"].set)
    upstream_thread.join()
    ok = provider.callbacks_after_close == 0 and unanswered == 0 and not stopped_threads
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
