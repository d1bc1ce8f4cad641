"""Upstream throughput: dotproxy's pooled DoT / DoH upstreams vs dnspython, and against real servers.

    python bench/upstream_throughput.py [--queries 20000] [--concurrency 500] [--baseline-queries 2000]
        [--targets test|interop|unbound-dot,unbound-doh,kresd-dot,dnsdist-dot,dnsdist-doh]
        [--against OTHER/src [--rounds 3]] [--json FILE]

Targets (``--targets``, comma-separated; default ``test``):

* ``test``: ``python -m dotproxy.testing`` in its own process (the other CPU core), on
  loopback; rows ``dotproxy DoT`` / ``dotproxy DoH`` and dnspython's baselines:
  ``dns.asyncquery.tls`` / ``dns.asyncquery.https`` called once per query, each call on a
  connection of its own, as its documentation shows. The verdict is the ratio of
  throughputs measured in this same run (issue 3's target: DoT >= 20x).
* ``unbound-dot``, ``unbound-doh``, ``kresd-dot``, ``dnsdist-dot``, ``dnsdist-doh``
  (``interop``: all five): the real servers of tests/interop/interop_servers.py, started
  here on loopback (dnsdist and kresd forward to that unbound) and stopped at the end.

Each dotproxy row sends unique names at a fixed concurrency through ``upstream.query``;
figures are queries, answered, lost (by kind: an exception, or an answer with the wrong ID,
an error rcode or no record), throughput, latency p50/p99, TLS handshakes per 1,000 queries,
queries per client CPU-second, and the pool's counters of the run (retries, connections
closed by the server / for silence / at the learnt budget, probes).

``--against OTHER/src``: every dotproxy row is measured ``--rounds`` times with this build
and with OTHER's (a child process running this very script with ``PYTHONPATH`` set to the
build's ``src``, so its compiled modules load), alternating which goes first, against the
same servers; the report gives medians and ours/theirs ratios, the per-round figures, and
the ``dotproxy.__file__`` each side imported.

Exit status: 1 if DoT is under the target ratio to dnspython (``test``), if any query to a
real server was lost by this build, or if a measurement failed; else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import dns.asyncquery
import dns.message

from dotproxy import upstream
from dotproxy.io.loop import loop_factory

from bench_support import start_test_upstream, stop_test_upstream

TARGET_DOT = 20.0
TEST_ZONE = "bench.test"
INTEROP_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "interop"
#: target -> (server kind, transport)
INTEROP_TARGETS = {
    "unbound-dot": ("unbound", "dot"),
    "unbound-doh": ("unbound", "doh"),
    "kresd-dot": ("kresd", "dot"),
    "dnsdist-dot": ("dnsdist", "dot"),
    "dnsdist-doh": ("dnsdist", "doh"),
}
TARGET_NAMES = ("test", *INTEROP_TARGETS)
#: The pool counters a row shows (``None`` when a build does not count them).
POOL_KEYS = ("retries", "closed_by_server", "closed_silence", "closed_budget", "probes")
RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def queries(prefix: str, count: int, zone: str = TEST_ZONE) -> list[bytes]:
    return [dns.message.make_query(f"n{i}.{prefix}.{zone}", "A", use_edns=0).to_wire() for i in range(count)]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def answer_problem(query: bytes, answer: bytes) -> str | None:
    """Why ``answer`` does not answer ``query`` (a few header bytes: cheap next to a query's cost)."""
    if len(answer) < 12:
        return "short answer"
    if answer[:2] != query[:2]:
        return "wrong ID"
    if not answer[2] & 0x80:
        return "QR not set"
    if answer[3] & 0x0F:
        return f"rcode {RCODES.get(answer[3] & 0x0F, answer[3] & 0x0F)}"
    if answer[6:8] == b"\0\0":
        return "no answer record"
    return None


def error_kind(e: BaseException) -> str:
    detail = str(e).split(": ", 1)[-1][:60]
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


async def run(send, wires: list[bytes], concurrency: int, check: bool = False) -> dict:
    """Send every query through ``send`` with at most ``concurrency`` in flight. ``check``: the
    answer (bytes) must answer its query, or the query counts as lost."""
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    latencies: list[float] = []
    errors = 0
    lost: collections.Counter = collections.Counter()
    it = iter(wires)

    async def worker():
        nonlocal errors
        for data in it:
            start = clock()
            try:
                answer = await send(data)
            except Exception as e:  # counted: a benchmark reports failures, it does not stop on them
                errors += 1
                lost[error_kind(e)] += 1
            else:
                if check and (problem := answer_problem(data, answer)) is not None:
                    lost[f"bad answer: {problem}"] += 1
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
        "queries": len(wires), "answered": done, "lost": len(wires) - done, "lost_by_kind": dict(lost),
        "errors": errors, "seconds": wall,
        "qps": done / wall if wall else 0.0,
        "p50_ms": percentile(latencies, 50) * 1e3 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1e3 if latencies else None,
        "per_cpu_second": done / cpu if cpu else None,
    }


async def bench_dotproxy(url: str, ca_file: str, wires: list[bytes], concurrency: int,
                         warm: bytes | None = None) -> dict:
    async with upstream.connect(url, ca_file=ca_file) as up:
        warm_error = None
        try:  # dial outside the timed run, as a running forwarder would be
            await up.query(warm if warm is not None else queries("warm", 1)[0])
        except Exception as e:  # the run shows what follows
            warm_error = error_kind(e)
        handshakes = up.stats.handshakes
        before = up.stats.as_dict()
        result = await run(lambda d: up.query(d), wires, concurrency, check=True)
        after = up.stats.as_dict()
        result["handshakes_per_1000"] = (up.stats.handshakes - handshakes) * 1000 / max(1, result["answered"])
        result["connections"] = up.stats.dials
        result["resumed"] = up.stats.resumed
        result["pool"] = {k: after[k] - before[k] if k in after else None for k in POOL_KEYS}
        result["stats"] = after
        if warm_error:
            result["warm_error"] = warm_error
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


# ------------------------------------------------------------------ what is measured, and where


def dotproxy_src() -> str:
    """The ``src`` directory this process imported dotproxy from."""
    import dotproxy

    return str(pathlib.Path(dotproxy.__file__).resolve().parents[1])


def build_info() -> dict:
    """Which dotproxy this process runs: its ``__file__`` and whether the pool is compiled."""
    import dotproxy
    import dotproxy.upstream.pool as pool

    return {"dotproxy_file": dotproxy.__file__, "pool_file": pool.__file__}


def measure_row(runner: asyncio.Runner, spec: dict, args) -> dict:
    """One dotproxy row in this process. ``spec``: row, url, ca_file, zone, prefix."""
    wires = queries(spec["prefix"], args.queries, spec["zone"])
    warm = queries(spec["prefix"] + "-warm", 1, spec["zone"])[0]
    result = runner.run(bench_dotproxy(spec["url"], spec["ca_file"], wires, args.concurrency, warm))
    result.update(build_info())
    return result


def measure_child(spec: dict, src: str, args) -> dict:
    """One dotproxy row in a child process running this script with ``PYTHONPATH=src``."""
    argv = [sys.executable, os.path.abspath(__file__), "--child-spec", json.dumps(spec),
            "--queries", str(args.queries), "--concurrency", str(args.concurrency)]
    if args.no_uvloop:
        argv.append("--no-uvloop")
    env = {**os.environ, "PYTHONPATH": src, "PYTHONHASHSEED": "0"}
    try:
        # subprocess.run kills this child (by its PID) on a timeout or Ctrl-C.
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.queries / 200 + 60)
    except subprocess.TimeoutExpired:
        return {"failed": f"child timed out ({spec['row']}, {src})"}
    if out.returncode or not out.stdout.strip():
        return {"failed": f"child exit {out.returncode} ({spec['row']}, {src}): {out.stderr.strip()[-600:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(args) -> int:
    spec = json.loads(args.child_spec)
    with asyncio.Runner(loop_factory=loop_factory(not args.no_uvloop)) as runner:
        result = measure_row(runner, spec, args)
    print(json.dumps(result))
    return 0


class Servers:
    """The real servers the chosen targets need (tests/interop/interop_servers.py), each stopped by
    its PID in :meth:`stop`, which is safe to call at any point of starting them."""

    def __init__(self, kinds: set[str]) -> None:
        self.kinds = kinds
        self.started: dict = {}
        self.workdir = None

    def start(self) -> None:
        if str(INTEROP_DIR) not in sys.path:
            sys.path.insert(0, str(INTEROP_DIR))
        import interop_servers as servers

        self.workdir = tempfile.mkdtemp(prefix="dotproxy-bench-")
        certs = servers.make_certs(os.path.join(self.workdir, "certs"))
        unbound = self.started["unbound"] = servers.start_unbound(os.path.join(self.workdir, "unbound"), certs)
        backend = unbound.ports["plain"]
        if "dnsdist" in self.kinds:
            self.started["dnsdist"] = servers.start_dnsdist(os.path.join(self.workdir, "dnsdist"), certs, backend)
        if "kresd" in self.kinds:
            self.started["kresd"] = servers.start_kresd(os.path.join(self.workdir, "kresd"), certs, backend)

    def stop(self) -> None:
        for server in reversed(list(self.started.values())):
            server.stop()
        self.started.clear()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# ------------------------------------------------------------------ the report


def _f(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def show(name: str, r: dict | None) -> None:
    if r is None:
        print(f"  {name:<22} skipped (dnspython's DoH extra missing: pip install -e '.[bench]')")
        return
    if "failed" in r:
        print(f"  {name:<22} FAILED: {r['failed']}")
        return
    line = (f"  {name:<22} {r['qps']:>9.0f} q/s  p50 {_f(r['p50_ms'], '7.2f', '      -')} ms  "
            f"p99 {_f(r['p99_ms'], '7.2f', '      -')} ms  {r['handshakes_per_1000']:7.1f} handshakes/1k  "
            f"{r['per_cpu_second'] or 0:>8.0f} q/CPU-s  {r['answered']}/{r['queries']} answered, "
            f"lost {r.get('lost', r['errors'])}")
    if "pool" in r:
        line += "  " + " ".join(f"{k} {_f(v, 'd')}" for k, v in r["pool"].items())
    print(line)
    for kind, n in sorted(r.get("lost_by_kind", {}).items(), key=lambda kv: -kv[1]):
        print(f"  {'':<22}   lost {n}: {kind}")
    if r.get("warm_error"):
        print(f"  {'':<22}   warm-up query failed: {r['warm_error']}")


def _median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    """Medians of a side's rounds; lost and pool counters summed."""
    ok = [r for r in runs if "failed" not in r]
    out = {"rounds": len(runs), "failed": [r["failed"] for r in runs if "failed" in r],
           "qps_rounds": [round(r["qps"]) for r in ok]}
    for key in ("qps", "p50_ms", "p99_ms", "per_cpu_second", "handshakes_per_1000"):
        out[key] = _median(ok, key)
    out["queries"] = sum(r["queries"] for r in ok)
    out["lost"] = sum(r["lost"] for r in ok)
    kinds: collections.Counter = collections.Counter()
    for r in ok:
        kinds.update(r["lost_by_kind"])
    out["lost_by_kind"] = dict(kinds)
    out["pool"] = {k: (None if any(r["pool"].get(k) is None for r in ok) else sum(r["pool"][k] for r in ok))
                   for k in POOL_KEYS} if ok else {}
    if ok:
        out["dotproxy_file"] = ok[0]["dotproxy_file"]
        out["pool_file"] = ok[0]["pool_file"]
    return out


def show_compared(name: str, ours: dict, theirs: dict) -> None:
    def ratio(key):
        a, b = ours.get(key), theirs.get(key)
        return a / b if a and b else None

    print(f"  {name:<22} q/s {_f(ours['qps'], '>8.0f')} vs {_f(theirs['qps'], '>8.0f')}  "
          f"ratio {_f(ratio('qps'), '.3f')}   q/CPU-s {_f(ours['per_cpu_second'], '>7.0f')} vs "
          f"{_f(theirs['per_cpu_second'], '>7.0f')}  ratio {_f(ratio('per_cpu_second'), '.3f')}")
    for side, s in (("ours", ours), ("theirs", theirs)):
        rounds = s["qps_rounds"]
        spread = (max(rounds) - min(rounds)) / s["qps"] * 100 if rounds and s["qps"] else None
        print(f"  {'':<22}   {side:<6} rounds {s['qps_rounds']} (spread {_f(spread, '.1f')}%)  "
              f"p50 {_f(s['p50_ms'], '.2f')} ms  p99 {_f(s['p99_ms'], '.2f')} ms  "
              f"handshakes/1k {_f(s['handshakes_per_1000'], '.1f')}  lost {s['lost']}/{s['queries']}  "
              + " ".join(f"{k} {_f(v, 'd')}" for k, v in s["pool"].items()))
        for kind, n in sorted(s["lost_by_kind"].items(), key=lambda kv: -kv[1]):
            print(f"  {'':<22}     lost {n}: {kind}")
        for failure in s["failed"]:
            print(f"  {'':<22}     FAILED: {failure}")


def parse_targets(text: str) -> list[str]:
    out: list[str] = []
    for t in (x.strip() for x in text.split(",")):
        names = list(INTEROP_TARGETS) if t == "interop" else [t] if t else []
        for n in names:
            if n not in TARGET_NAMES:
                raise SystemExit(f"--targets: unknown target {n!r} (known: interop, {', '.join(TARGET_NAMES)})")
            if n not in out:
                out.append(n)
    if not out:
        raise SystemExit("--targets: none given")
    return out


def main_run(args) -> int:
    targets = parse_targets(args.targets)
    interop = [t for t in targets if t != "test"]
    against = os.path.abspath(args.against) if args.against else None
    if against and not os.path.isdir(os.path.join(against, "dotproxy")):
        raise SystemExit(f"--against {args.against}: no dotproxy package there (give a checkout's src directory)")
    ours_src = dotproxy_src()
    results: dict = {}
    compared: dict = {}
    specs: list[dict] = []
    proc = None
    servers = Servers({INTEROP_TARGETS[t][0] for t in interop})
    status = 0
    with asyncio.Runner(loop_factory=loop_factory(not args.no_uvloop)) as runner:
        try:
            if "test" in targets:
                proc, info = start_test_upstream()
                print(f"test upstream pid {info.get('pid')} on loopback")
                for transport, url in (("DoT", info["dot_url"]), ("DoH", info["doh_url"])):
                    specs.append({"row": f"dotproxy {transport}", "target": "test", "url": url,
                                  "ca_file": info["ca_file"], "zone": TEST_ZONE, "prefix": transport.lower()})
            if interop:
                servers.start()
                print("servers on loopback: " + ", ".join(f"{k} pid {s.pid}" for k, s in servers.started.items()))
                for t in interop:
                    kind, transport = INTEROP_TARGETS[t]
                    server = servers.started[kind]
                    import interop_servers

                    specs.append({"row": f"dotproxy {t}", "target": t, "url": server.urls[transport],
                                  "ca_file": server.ca_file, "zone": interop_servers.ZONE,
                                  "prefix": t.replace("-", "")})
            print(f"{args.queries} queries at concurrency {args.concurrency} per dotproxy row"
                  + (f" (baselines: {args.baseline_queries})" if "test" in targets else "")
                  + (f"; {args.rounds} rounds against {against}, alternating" if against else ""))
            if not against:
                for spec in specs:
                    results[spec["row"]] = measure_row(runner, spec, args)
            else:
                runs: dict = {spec["row"]: {"ours": [], "theirs": []} for spec in specs}
                for rnd in range(args.rounds):
                    sides = [("ours", ours_src), ("theirs", against)]
                    if rnd % 2:
                        sides.reverse()
                    for spec in specs:
                        for side, src in sides:
                            s = {**spec, "prefix": f"{spec['prefix']}-{side}{rnd}"}
                            r = measure_child(s, src, args)
                            runs[spec["row"]][side].append(r)
                            print(f"    round {rnd + 1} {spec['row']:<22} {side:<6} "
                                  + (f"{r['qps']:>8.0f} q/s, lost {r['lost']}" if "failed" not in r
                                     else "FAILED"), flush=True)
                for row, sides_runs in runs.items():
                    compared[row] = {side: summarize(rs) for side, rs in sides_runs.items()}
                    compared[row]["runs"] = sides_runs
                    compared[row]["ratio_qps"] = (compared[row]["ours"]["qps"] / compared[row]["theirs"]["qps"]
                                                  if compared[row]["ours"]["qps"] and compared[row]["theirs"]["qps"]
                                                  else None)
            if "test" in targets:
                results["dnspython tls()"] = runner.run(bench_dnspython_dot(
                    info, queries("pydot", args.baseline_queries), args.concurrency))
                results["dnspython https()"] = runner.run(bench_dnspython_doh(
                    info, queries("pydoh", args.baseline_queries), args.concurrency))
            for spec in specs:  # the servers' own counters when this build lost queries
                r = results.get(spec["row"]) or (compared.get(spec["row"], {}).get("ours"))
                if r and r.get("lost") and spec["target"] != "test":
                    kind = INTEROP_TARGETS[spec["target"]][0]
                    r["server_counters"] = servers.started[kind].counters()
        finally:
            servers.stop()
            if proc is not None:
                stop_test_upstream(proc)

    print()
    print(f"ours: {build_info()['dotproxy_file']}")
    if against:
        def imported(side: str, key: str):
            return next((c[side][key] for c in compared.values() if c[side].get(key)), None)

        theirs_file = imported("theirs", "dotproxy_file")
        for side in ("ours", "theirs"):
            print(f"  child {side:<6} dotproxy.__file__ {imported(side, 'dotproxy_file')}  "
                  f"(pool: {os.path.basename(imported(side, 'pool_file') or '-')})")
        if theirs_file and not os.path.abspath(theirs_file).startswith(against + os.sep):
            print(f"  WRONG BUILD: the 'theirs' child imported {theirs_file}, not from {against}")
            status = 1
        print("  ours vs theirs (medians of rounds; ratio = ours / theirs)")
        for row, c in compared.items():
            show_compared(row, c["ours"], c["theirs"])
            if c["ours"]["failed"] or c["theirs"]["failed"]:
                status = 1
    print()
    for name, r in results.items():
        show(name, r)
    if "test" in targets:
        dot = results.get("dotproxy DoT") or compared["dotproxy DoT"]["ours"]
        doh = results.get("dotproxy DoH") or compared["dotproxy DoH"]["ours"]
        dot_ratio = (dot["qps"] or 0.0) / results["dnspython tls()"]["qps"]
        print()
        print(f"{'PASS' if dot_ratio >= TARGET_DOT else 'MISS'}  DoT: {dot_ratio:.1f}x dnspython's tls() "
              f"(target >= {TARGET_DOT:g}x)")
        if results["dnspython https()"]:
            print(f"      DoH: {(doh['qps'] or 0.0) / results['dnspython https()']['qps']:.1f}x "
                  f"dnspython's https()")
        if dot_ratio < TARGET_DOT:
            status = 1
    for spec in specs:
        r = results.get(spec["row"]) or compared[spec["row"]]["ours"]
        if "failed" in r and isinstance(r["failed"], str):
            status = 1
        elif spec["target"] != "test" and r.get("lost"):
            print(f"LOST  {spec['row']}: {r['lost']} queries lost by this build")
            status = 1
    if args.json:
        with open(args.json, "w") as f:
            out = dict(results)
            if compared:
                out["compared"] = compared
                out["builds"] = {"ours": ours_src, "theirs": against}
            json.dump(out, f, indent=2)
    return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--baseline-queries", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--targets", default="test",
                   help="comma-separated: test, unbound-dot, unbound-doh, kresd-dot, dnsdist-dot, dnsdist-doh; "
                        "interop = the five real servers (default: test)")
    p.add_argument("--against", metavar="SRC",
                   help="another build's src directory: each dotproxy row is also measured with it, in a child "
                        "process, alternating, for --rounds rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--child-spec", help=argparse.SUPPRESS)  # one row in this process, JSON on stdout
    args = p.parse_args()
    if args.child_spec:
        return child_main(args)
    signal.signal(signal.SIGTERM, _terminated)  # a kill stops the servers too, as Ctrl-C does
    return main_run(args)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
