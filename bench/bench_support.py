"""What the load scripts share: the test upstream in a process of its own."""

from __future__ import annotations

import json
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
