"""Real DNS clients (BIND's dig, Knot's kdig) against the engine's listeners, under asyncio and uvloop.

The clients run as subprocesses in a worker thread while the engine serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest
from engine_support import engine_env, txt_answer

from dotproxy.testing import ANSWER_A, Faults

DIG = shutil.which("dig")
KDIG = shutil.which("kdig")


def _client_args(tool: str, address, *extra: str) -> list[str]:
    host, port = address
    if tool == "dig":
        return [DIG, f"@{host}", "-p", str(port), "+tries=1", "+time=2", *extra]
    return [KDIG, f"@{host}", "-p", str(port), "+retry=0", "+timeout=2", *extra]


async def _run(args: list[str]) -> str:
    proc = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def _status(output: str) -> str:
    m = re.search(r"status: ([A-Z]+)", output)
    assert m, output
    return m.group(1)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_dig_and_kdig_get_the_upstream_answer(run, tool, transport):
    if (DIG if tool == "dig" else KDIG) is None:  # pragma: no cover
        pytest.skip(f"{tool} is not installed")

    async def main():
        async with engine_env() as env:
            extra = ["+tcp"] if transport == "tcp" else []
            out = await _run(_client_args(tool, env.address, *extra, "www.example.com", "A"))
            assert _status(out) == "NOERROR", out
            assert re.search(r"www\.example\.com\.\s+\d+\s+IN\s+A\s+" + re.escape(ANSWER_A), out), out
            out = await _run(_client_args(tool, env.address, *extra, "+short", "a.example.net", "A"))
            assert out.split() == [ANSWER_A], out
            assert env.up.stats.queries["dot"] == 2
            tcp_conns = 2 if transport == "tcp" else 0
            assert env.stats.queries == 2
            assert env.engine.stats.flows_opened == 1 + tcp_conns  # the UDP socket's flow + one per TCP connection

    run(main)


@pytest.mark.skipif(DIG is None, reason="dig is not installed")
def test_dig_retries_a_truncated_answer_over_tcp(run):
    async def main():
        async with engine_env(answer=txt_answer(40)) as env:
            # +ignore: dig keeps the truncated UDP answer
            out = await _run(_client_args("dig", env.address, "+ignore", "+noedns", "big.example", "TXT"))
            assert _status(out) == "NOERROR"
            assert re.search(r"flags:[a-z ]*\btc\b", out), out
            assert "ANSWER: 0" in out
            # default: dig sees TC=1 and asks again over TCP, getting all 40 records
            out = await _run(_client_args("dig", env.address, "+noedns", "big.example", "TXT"))
            assert _status(out) == "NOERROR"
            assert not re.search(r"flags:[a-z ]*\btc\b", out), out
            assert "ANSWER: 40" in out, out
            assert env.stats.truncated == 2

    run(main)


@pytest.mark.skipif(DIG is None, reason="dig is not installed")
def test_dig_sees_servfail_with_ede_22_from_a_stalled_upstream(run):
    async def main():
        async with engine_env(faults=Faults(stall=True), timeout=0.5) as env:
            out = await _run(_client_args("dig", env.address, "stalled.example", "A"))
            assert _status(out) == "SERVFAIL", out
            assert re.search(r"EDE: 22\b", out), out

    run(main)
