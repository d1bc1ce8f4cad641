"""What the load scripts share: the test upstream in a process of its own, a free port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys


def start_test_upstream(*args: str, max_seconds: int = 900) -> tuple[subprocess.Popen, dict]:
    """``python -m dotproxy.testing ARGS`` in its own process (the other CPU); returns it and the
    addresses it printed. It exits when its stdin closes (or after ``max_seconds``)."""
    proc = subprocess.Popen([sys.executable, "-m", "dotproxy.testing", "--max-seconds", str(max_seconds), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the test upstream did not start")
    return proc, json.loads(line)


def stop_test_upstream(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Close its stdin (it exits), and kill it if it has not gone within ``timeout`` seconds."""
    proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A loopback port free for both UDP and TCP (a forwarder listens on both)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:  # the engine listens on TCP too
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port
