"""Fixtures of the command-line tests: test upstreams in their own processes, free ports, a ``dotproxy serve``.

``upstream`` (module scope) is ``python -m dotproxy.testing`` in a subprocess: its JSON line
(``dot_url``, ``doh_url``, ``ca_file``, ...) as a dict. ``stalled_upstream`` is one that
never answers. Every process a test starts is ended by the test (or its fixture) by pid.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def _start_upstream(*extra: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dotproxy.testing", "--ignore-stdin", "--max-seconds", "60", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout=15):
            proc.kill()
            proc.wait()
            raise AssertionError("the test upstream printed nothing in 15 s")
        line = proc.stdout.readline()
    finally:
        sel.close()
    if not line:
        proc.wait(5)
        raise AssertionError(f"the test upstream failed to start: {proc.stderr.read()!r}")
    return proc, json.loads(line)


def _stop_upstream(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def upstream():
    proc, info = _start_upstream()
    try:
        yield info
    finally:
        _stop_upstream(proc)


@pytest.fixture(scope="module")
def stalled_upstream():
    proc, info = _start_upstream("--stall")
    try:
        yield info
    finally:
        _stop_upstream(proc)
