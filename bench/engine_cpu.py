"""CPU per query of the engine against the minimal forwarder, measured in the same session.

    python3 bench/engine_cpu.py [--rate 8000] [--seconds 5] [--rounds 3] [--profile DIR]

UDP -> DoT with unique names (no cache could help): dnsperf sends at a fixed
rate to ``dotproxy serve`` and to ``bench/minimal_forwarder.py`` (the least a
Python forwarder can do, see its docstring) in turn, each forwarding to
``python -m dotproxy.testing`` in its own process. Each forwarder's CPU time
(user + system, from /proc) is read around the run: the figure is CPU
microseconds per answered query, and the ratio engine / minimal. Rounds
alternate the two; medians are printed. Also prints each run's latency
percentiles from ``dnsperf -v``. A quick, local A/B tool: the rig
(../shared/rig) remains the place for claims against other forwarders.
``--profile DIR`` records the engine with py-spy (if installed) into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench_support import free_port, start_test_upstream, stop_test_upstream

HERE = os.path.dirname(os.path.abspath(__file__))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime




def answers(port: int, timeout: float = 20.0) -> bool:
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x07example\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            try:
                if s.recv(4096)[:2] == b"\x12\x34":
                    return True
            except OSError:
                time.sleep(0.1)
    return False


def forwarder_argv(kind: str, port: int, up: dict) -> list[str]:
    if kind == "engine":
        return [sys.executable, "-m", "dotproxy", "serve", "--listen", f"127.0.0.1:{port}", "--upstream",
                up["dot_url"], "--ca-file", up["ca_file"], "--no-cache", "--log-level", "warning"]
    host, dot_port = up["dot_address"]
    return [sys.executable, os.path.join(HERE, "minimal_forwarder.py"), "--listen", f"127.0.0.1:{port}",
            "--upstream", f"{host}:{dot_port}", "--ca-file", up["ca_file"], "--tls-name", up["tls_name"]]


def run_dnsperf(port: int, names: str, seconds: float, rate: int, out_path: str) -> dict:
    argv = ["dnsperf", "-v", "-s", "127.0.0.1", "-p", str(port), "-d", names, "-l", str(seconds),
            "-c", "20", "-q", "500", "-Q", str(rate), "-t", "5"]
    with open(out_path, "wb") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.DEVNULL, timeout=seconds + 60, check=False)
    latencies, summary = [], []
    with open(out_path, "rb") as f:
        for line in f:
            if line.startswith(b"> ") and not line.startswith((b"> T ", b"> I ")):
                try:
                    latencies.append(float(line.rsplit(None, 1)[1]))
                except (ValueError, IndexError):
                    pass
            elif not line.startswith(b"> "):
                summary.append(line.decode(errors="replace"))
    os.unlink(out_path)
    text = "".join(summary)
    completed = int(m.group(1)) if (m := re.search(r"Queries completed:\s+(\d+)", text)) else 0
    lost = int(m.group(1)) if (m := re.search(r"Queries lost:\s+(\d+)", text)) else 0
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else float("nan")

    return {"completed": completed, "lost": lost, "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9)}


def measure(kind: str, up: dict, names: str, args, state: str, profile_to: str | None) -> dict:
    port = free_port()
    argv = forwarder_argv(kind, port, up)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    spy = None
    try:
        if not answers(port):
            raise SystemExit(f"{kind} did not answer: {proc.stderr.read(2000).decode(errors='replace')}")
        if profile_to is not None:
            spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", profile_to,
                                    "-p", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before = cpu_seconds(proc.pid)
        result = run_dnsperf(port, names, args.seconds, args.rate, os.path.join(state, f"{kind}.out"))
        used = cpu_seconds(proc.pid) - before
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result["cpu_us_per_query"] = 1e6 * used / max(1, result["completed"])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=8000, help="queries per second (fixed, dnsperf -Q)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", metavar="DIR", help="py-spy raw profiles of the engine's runs into DIR")
    p.add_argument("--json")
    args = p.parse_args()
    if shutil.which("dnsperf") is None:
        raise SystemExit("dnsperf is needed (Debian: apt-get install dnsperf)")
    state = tempfile.mkdtemp(prefix="engine-cpu-")
    names = os.path.join(state, "names.txt")
    upstream, up = start_test_upstream(max_seconds=1800)
    results: dict[str, list[dict]] = {"minimal": [], "engine": []}
    try:
        for r in range(args.rounds):
            with open(names, "w") as f:  # fresh names every round
                n = int(args.rate * args.seconds * 1.3)
                f.write("".join(f"r{r}n{i}.bench.test A\n" for i in range(n)))
            for kind in ("minimal", "engine") if r % 2 == 0 else ("engine", "minimal"):
                profile_to = None
                if args.profile and kind == "engine":
                    os.makedirs(args.profile, exist_ok=True)
                    profile_to = os.path.join(args.profile, f"engine-{r}.txt")
                res = measure(kind, up, names, args, state, profile_to)
                results[kind].append(res)
                print(f"round {r} {kind:8s} {res['cpu_us_per_query']:6.1f} us CPU/query  p50 {res['p50_ms']:.2f} ms"
                      f"  p99 {res['p99_ms']:.2f} ms  p99.9 {res['p999_ms']:.2f} ms  lost {res['lost']}", flush=True)
    finally:
        stop_test_upstream(upstream)
        shutil.rmtree(state, ignore_errors=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    engine, minimal = med("engine", "cpu_us_per_query"), med("minimal", "cpu_us_per_query")
    print(f"median CPU per query at {args.rate}/s: engine {engine:.1f} us, minimal forwarder {minimal:.1f} us: "
          f"engine costs {engine / minimal:.2f}x the minimal forwarder")
    print(f"median p99: engine {med('engine', 'p99_ms'):.2f} ms, minimal {med('minimal', 'p99_ms'):.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rate": args.rate, "results": results, "ratio": engine / minimal}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
