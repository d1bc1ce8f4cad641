"""Memory of an embedded engine: idle, and busy with many flows and queries in flight.

    python3 bench/embed_memory.py [--flows 1000] [--in-flight 10] [--transport dot|doh] [--json out.json]

Resident set size (RSS, what the OS charges the process; an iOS extension's limit
counts a similar figure) of this process at each step: the interpreter with
dotproxy imported, an idle started engine, after a warm-up burst (connections and
TLS sessions up), with ``--flows`` host flows each holding ``--in-flight`` queries
in flight (the upstream delays its answers), and after those flows closed. The
upstream is ``python -m dotproxy.testing`` in its own process, so its memory is
not counted. Prints a table; figures differ by platform (glibc vs macOS malloc),
so read them as orders of magnitude and deltas.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

import dns.message

from bench_support import start_test_upstream, stop_test_upstream


def rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes, and only the peak
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", type=int, default=1000)
    p.add_argument("--in-flight", type=int, default=10, help="queries in flight per flow")
    p.add_argument("--transport", choices=("dot", "doh"), default="dot")
    p.add_argument("--json")
    args = p.parse_args()

    from dotproxy.host import EngineThread

    figures: list[tuple[str, float]] = [("python + dotproxy imported", rss_mib())]
    latency = 2.0  # long enough to hold every query in flight while measuring
    proc, up = start_test_upstream("--latency", str(latency), max_seconds=300)
    try:
        engine = EngineThread(upstreams=[up[f"{args.transport}_url"]], ca_file=up["ca_file"], timeout=8.0,
                              max_in_flight=args.flows * args.in_flight + 1000,
                              upstream_options={"max_outstanding": 5000})
        engine.start()
        time.sleep(0.2)
        figures.append(("engine started, idle (no connection yet)", rss_mib()))

        answered = threading.Semaphore(0)

        def on_response(data, endpoint):
            answered.release()

        warm = engine.open_flow("udp", on_response)
        for i in range(200):
            warm.send(dns.message.make_query(f"w{i}.example", "A").to_wire(), ("10.0.0.1", 1))
        for _ in range(200):
            if not answered.acquire(timeout=10):
                raise SystemExit("the warm-up burst was not answered")
        warm.close()
        figures.append(("after a 200-query burst (connections and TLS up)", rss_mib()))

        handles = [engine.open_flow("udp", on_response, metadata=f"app{i}") for i in range(args.flows)]
        for n, h in enumerate(handles):
            for j in range(args.in_flight):
                h.send(dns.message.make_query(f"f{n}-{j}.example", "A").to_wire(), ("10.0.0.2", 5000 + j))
        deadline = time.monotonic() + latency / 2
        want = args.flows * args.in_flight
        while engine.stats()["in_flight"] < want and time.monotonic() < deadline:
            time.sleep(0.02)
        in_flight = engine.stats()["in_flight"]
        figures.append((f"{args.flows} flows, {in_flight} queries in flight", rss_mib()))
        for h in handles:
            h.close()
        time.sleep(0.5)
        figures.append(("those flows closed (queries cancelled)", rss_mib()))
        engine.stop()
        figures.append(("engine stopped", rss_mib()))
    finally:
        stop_test_upstream(proc, 5)

    base = figures[0][1]
    print(f"RSS, {args.transport}, {sys.platform}, pid {os.getpid()}")
    for label, mib in figures:
        print(f"  {mib:7.1f} MiB  (+{mib - base:5.1f})  {label}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"step": label, "rss_mib": mib} for label, mib in figures], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
