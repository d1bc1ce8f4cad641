"""Upstream throughput: dotproxy's pooled DoT / DoH upstreams vs dnspython used the straightforward way.

    python bench/upstream_throughput.py [--queries 20000] [--concurrency 500] [--baseline-queries 2000]

The upstream is ``python -m dotproxy.testing`` in its own process (the other CPU
core), on loopback. Each contender sends unique names at a fixed concurrency;
figures are throughput, latency p50/p99, TLS handshakes per 1,000 queries and
queries per client CPU-second, and the verdict is the ratio of throughputs
measured in this same run (issue 3's target: DoT >= 20x). dnspython's baseline
is ``dns.asyncquery.tls`` / ``dns.asyncquery.https`` called once per query, each
call on a connection of its own, as its documentation shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time

import dns.asyncquery
import dns.message

from dotproxy import upstream
from dotproxy.io.loop import loop_factory

from bench_support import start_test_upstream, stop_test_upstream

TARGET_DOT = 20.0


def queries(prefix: str, count: int) -> list[bytes]:
    return [dns.message.make_query(f"n{i}.{prefix}.bench.test", "A", use_edns=0).to_wire() for i in range(count)]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run(send, wires: list[bytes], concurrency: int) -> dict:
    """Send every query through ``send`` with at most ``concurrency`` in flight."""
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    latencies: list[float] = []
    errors = 0
    it = iter(wires)

    async def worker():
        nonlocal errors
        for data in it:
            start = clock()
            try:
                await send(data)
            except Exception:  # counted: a benchmark reports failures, it does not stop on them
                errors += 1
            else:
                latencies.append(clock() - start)

    cpu = time.process_time()
    wall = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    done = len(latencies)
    return {
        "queries": len(wires), "answered": done, "errors": errors, "seconds": wall,
        "qps": done / wall if wall else 0.0,
        "p50_ms": percentile(latencies, 50) * 1e3 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1e3 if latencies else None,
        "per_cpu_second": done / cpu if cpu else None,
    }


async def bench_dotproxy(url: str, ca_file: str, wires: list[bytes], concurrency: int) -> dict:
    async with upstream.connect(url, ca_file=ca_file) as up:
        await up.query(queries("warm", 1)[0])  # dial outside the timed run, as a running forwarder would be
        handshakes = up.stats.handshakes
        result = await run(lambda d: up.query(d), wires, concurrency)
        result["handshakes_per_1000"] = (up.stats.handshakes - handshakes) * 1000 / max(1, result["answered"])
        result["connections"] = up.stats.dials
        result["resumed"] = up.stats.resumed
    return result


async def bench_dnspython_dot(info: dict, wires: list[bytes], concurrency: int) -> dict:
    host, port = info["dot_address"]
    ctx = ssl.create_default_context(cafile=info["ca_file"])

    async def send(data: bytes):
        await dns.asyncquery.tls(dns.message.from_wire(data), host, port=port, ssl_context=ctx,
                                 server_hostname=info["tls_name"], timeout=10)

    result = await run(send, wires, concurrency)
    result["handshakes_per_1000"] = 1000.0  # one connection per call, by construction
    return result


async def bench_dnspython_doh(info: dict, wires: list[bytes], concurrency: int) -> dict | None:
    import dns._features

    if not dns._features.have("doh"):  # pip install -e ".[bench]" brings dnspython[doh]
        return None

    async def send(data: bytes):
        await dns.asyncquery.https(dns.message.from_wire(data), info["doh_url"], verify=info["ca_file"],
                                   http_version=dns.asyncquery.HTTPVersion.H2, timeout=10)

    result = await run(send, wires, concurrency)
    result["handshakes_per_1000"] = 1000.0
    return result


def show(name: str, r: dict | None) -> None:
    if r is None:
        print(f"  {name:<22} skipped (dnspython's DoH extra missing: pip install -e '.[bench]')")
        return
    print(f"  {name:<22} {r['qps']:>9.0f} q/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
          f"{r['handshakes_per_1000']:7.1f} handshakes/1k  {r['per_cpu_second'] or 0:>8.0f} q/CPU-s  "
          f"errors {r['errors']}")


async def main_async(args) -> int:
    proc, info = start_test_upstream()
    try:
        print(f"test upstream pid {info.get('pid')} on loopback; {args.queries} queries at concurrency "
              f"{args.concurrency} (baselines: {args.baseline_queries})")
        results = {}
        results["dotproxy DoT"] = await bench_dotproxy(info["dot_url"], info["ca_file"],
                                                       queries("dot", args.queries), args.concurrency)
        results["dnspython tls()"] = await bench_dnspython_dot(info, queries("pydot", args.baseline_queries),
                                                               args.concurrency)
        results["dotproxy DoH"] = await bench_dotproxy(info["doh_url"], info["ca_file"],
                                                       queries("doh", args.queries), args.concurrency)
        results["dnspython https()"] = await bench_dnspython_doh(info, queries("pydoh", args.baseline_queries),
                                                                 args.concurrency)
    finally:
        stop_test_upstream(proc)
    print()
    for name, r in results.items():
        show(name, r)
    dot_ratio = results["dotproxy DoT"]["qps"] / results["dnspython tls()"]["qps"]
    print()
    print(f"{'PASS' if dot_ratio >= TARGET_DOT else 'MISS'}  DoT: {dot_ratio:.1f}x dnspython's tls() "
          f"(target >= {TARGET_DOT:g}x)")
    if results["dnspython https()"]:
        print(f"      DoH: {results['dotproxy DoH']['qps'] / results['dnspython https()']['qps']:.1f}x "
              f"dnspython's https()")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if dot_ratio >= TARGET_DOT else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--baseline-queries", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--json")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args()
    with asyncio.Runner(loop_factory=loop_factory(not args.no_uvloop)) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
