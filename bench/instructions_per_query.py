"""User-space instructions per query of ``dotproxy serve``, counted by callgrind: a figure that does
not move with the machine.

    python3 bench/instructions_per_query.py [--rate 50] [--seconds 10] [--upstream dot|doh]
                                            [--against OTHER_SRC_DIR]

On a shared virtual machine the CPU time of the same build moves by 30-40% between runs minutes
apart (README: the rig), which hides any change worth less than that. Valgrind's callgrind counts
the instructions the process executes in user space (the interpreter, uvloop, OpenSSL, our
extensions), the same count for the same work whatever else the machine does: a change to the
per-query path shows here as a repeatable number. What it does not see: the kernel's share (system
calls, loopback delivery, wake-ups), cache misses, and anything that depends on timing (under
valgrind the engine runs ~50x slower, so the rate must stay low enough that queries do not queue:
the default is 50 queries/s, one at a time, the regime of a laptop's resolver).

The engine forwards to ``python -m dotproxy.testing`` (its own process, not under valgrind) over
DoT or DoH; a paced client sends unique names over UDP. Counters are zeroed after a warm-up and
dumped after the load (``callgrind_control``), so start-up is not counted. ``--against DIR`` runs
the same measurement for the package in DIR (another checkout's ``src``, built in place) and
prints the ratio: both in the same session, alternating.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from bench_support import free_port, start_test_upstream, stop_test_upstream

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes((len(p),)) + p.encode() for p in name.split("."))
    return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"


def ask(sock: socket.socket, port: int, name: str, qid: int, timeout: float) -> bool:
    sock.sendto(query(name, qid), ("127.0.0.1", port))
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if data[:2] == qid.to_bytes(2, "big"):
                return True
    except TimeoutError:
        return False


def control(command: str, pid: int) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)


def measure(src: str, upstream_url: str, ca_file: str, rate: float, seconds: float) -> tuple[int, int]:
    """(answered queries, user-space instructions) of one run of the package in ``src``."""
    port = free_port()
    state = tempfile.mkdtemp(prefix="dotproxy-cg-")
    env = {**os.environ, "PYTHONPATH": src}
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={state}/cg.%p", sys.executable, "-m", "dotproxy",
            "serve", "--listen", f"127.0.0.1:{port}", "--upstream", upstream_url, "--ca-file", ca_file, "--no-cache",
            "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            deadline = time.monotonic() + 180
            while not ask(sock, port, "warm-up.example", 1, 1.0):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the engine did not start under valgrind")
            for i in range(20):  # dial, resume, first answers: not what a query costs
                ask(sock, port, f"w{i}.warm.example", 2 + i, 2.0)
            control("-z", proc.pid)
            answered = 0
            n = int(rate * seconds)
            start = time.monotonic()
            for i in range(n):
                due = start + i / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                answered += ask(sock, port, f"n{i}.{os.getpid()}.example", 100 + i % 60000, 2.0)
            control("-d", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    dumps = [p for p in glob.glob(os.path.join(state, "cg.*")) if re.search(r"\.\d+\.\d+$", p)]
    if not dumps:
        raise SystemExit("callgrind wrote no dump")
    with open(sorted(dumps)[0]) as f:
        total = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
    shutil.rmtree(state, ignore_errors=True)
    return answered, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="queries per second, one at a time (default 50)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--upstream", choices=("dot", "doh"), default="dot")
    ap.add_argument("--against", metavar="SRC_DIR", help="another build's src directory, measured alternately")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (Debian: apt-get install valgrind)")
    upstream, up = start_test_upstream(max_seconds=3600)
    try:
        url = up["dot_url"] if a.upstream == "dot" else up["doh_url"]
        builds = [("this build", SRC)] + ([("against", os.path.abspath(a.against))] if a.against else [])
        figures: dict[str, list[float]] = {label: [] for label, _ in builds}
        for _ in range(a.rounds):
            for label, src in builds:
                answered, total = measure(src, url, up["ca_file"], a.rate, a.seconds)
                if not answered:
                    raise SystemExit(f"{label}: no query was answered")
                figures[label].append(total / answered)
                print(f"{label} ({src}): {answered} answered, {total:,} instructions, "
                      f"{total / answered:,.0f} per query", flush=True)
        if a.against:
            mine, theirs = min(figures["this build"]), min(figures["against"])
            print(f"this build / against: {mine / theirs:.3f} (instructions per query, {a.upstream.upper()}, "
                  f"{a.rate:g} queries/s)")
    finally:
        stop_test_upstream(upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
