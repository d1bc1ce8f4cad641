"""bench/upstream_throughput.py: targets, lost-query accounting, the ours/theirs summary, the child path."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))  # it imports bench_support by name
_spec = importlib.util.spec_from_file_location("upstream_throughput", _BENCH / "upstream_throughput.py")
ut = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ut)


def test_targets():
    assert ut.parse_targets("test") == ["test"]
    assert ut.parse_targets("interop,test") == [*ut.INTEROP_TARGETS, "test"]
    assert ut.parse_targets("unbound-dot, unbound-dot,interop") == list(ut.INTEROP_TARGETS)
    with pytest.raises(SystemExit, match="unknown target 'bind-dot'"):
        ut.parse_targets("bind-dot")


def _answer(query: bytes, flags: bytes = b"\x81\x80", ancount: bytes = b"\0\1") -> bytes:
    return query[:2] + flags + query[4:6] + ancount + query[8:]


def test_answer_problems():
    q = ut.queries("x", 1)[0]
    assert ut.answer_problem(q, _answer(q)) is None
    assert ut.answer_problem(q, bytes([q[0] ^ 1]) + _answer(q)[1:]) == "wrong ID"
    assert ut.answer_problem(q, _answer(q, flags=b"\x01\x80")) == "QR not set"
    assert ut.answer_problem(q, _answer(q, flags=b"\x81\x82")) == "rcode SERVFAIL"
    assert ut.answer_problem(q, _answer(q, ancount=b"\0\0")) == "no answer record"
    assert ut.answer_problem(q, b"\0") == "short answer"


def test_run_counts_lost_by_kind():
    import asyncio

    wires = ut.queries("r", 6)

    async def send(data: bytes) -> bytes:
        i = wires.index(data)
        if i == 0:
            raise TimeoutError("upstream x: no answer")
        return _answer(data, flags=b"\x81\x82") if i == 1 else _answer(data)

    r = asyncio.run(ut.run(send, wires, 3, check=True))
    assert (r["queries"], r["answered"], r["lost"], r["errors"]) == (6, 4, 2, 1)
    assert r["lost_by_kind"] == {"TimeoutError: no answer": 1, "bad answer: rcode SERVFAIL": 1}


def test_summary_medians_and_sums():
    def run(qps, lost, retries):
        return {"queries": 100, "qps": qps, "p50_ms": 1.0, "p99_ms": 2.0, "per_cpu_second": qps * 2,
                "handshakes_per_1000": 0.1, "lost": lost, "lost_by_kind": {"k": lost} if lost else {},
                "pool": {k: (retries if k == "retries" else None) for k in ut.POOL_KEYS},
                "dotproxy_file": "/x/src/dotproxy/__init__.py", "pool_file": "pool.so"}

    s = ut.summarize([run(100, 0, 1), run(300, 2, 2), run(200, 1, 0), {"failed": "child exit 1"}])
    assert s["qps"] == 200 and s["per_cpu_second"] == 400 and s["qps_rounds"] == [100, 300, 200]
    assert s["lost"] == 3 and s["lost_by_kind"] == {"k": 3} and s["queries"] == 300
    assert s["pool"]["retries"] == 3 and s["pool"]["probes"] is None  # a build that does not count them
    assert s["failed"] == ["child exit 1"]


def test_child_row_and_comparison(tmp_path):
    """The whole path on the test upstream, tiny: each row measured in children of both 'builds'
    (here this one twice), JSON with both sides and the file each imported."""
    src = str(pathlib.Path(ut.dotproxy_src()))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(_BENCH / "upstream_throughput.py"), "--queries", "40",
                           "--baseline-queries", "10", "--concurrency", "10", "--rounds", "1",
                           "--against", src, "--json", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "child theirs dotproxy.__file__ " + src in proc.stdout
    data = json.loads(out.read_text())
    for row in ("dotproxy DoT", "dotproxy DoH"):
        for side in ("ours", "theirs"):
            s = data["compared"][row][side]
            assert s["lost"] == 0 and s["queries"] == 40 and s["dotproxy_file"].startswith(src)
        assert data["compared"][row]["ratio_qps"] > 0
    assert data["dnspython tls()"]["answered"] == 10
