"""A finished query leaves no reference cycle behind.

Every object a query makes must be freed by reference counting the moment the query
ends: cyclic garbage made per query feeds Python's cycle collector, whose pauses (up
to tens of milliseconds with thousands of queries in flight) are the forwarder's
tail latency. Runs under asyncio and uvloop (``run`` fixture).
"""

from __future__ import annotations

import asyncio
import collections
import gc

import pytest
from engine_support import check_answer, engine_env, make_query

N = 300


def _cyclic_garbage() -> collections.Counter:
    """Types of the objects the cycle collector finds unreachable now (left for inspection)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


@pytest.mark.parametrize("scheme", ["dot", "doh", "tcp", "udp"])
def test_answered_queries_leave_no_cyclic_garbage(run, scheme):
    async def main():
        async with engine_env(scheme=scheme, listen=False) as env:
            answers: asyncio.Queue = asyncio.Queue()
            flow = env.engine.open_flow("udp", lambda data, endpoint: answers.put_nowait(data))

            async def ask(count: int, tag: str) -> None:
                queries = [make_query(f"{tag}{i}.example", id=i) for i in range(count)]
                for q in queries:
                    flow.receive(q, ("192.0.2.9", 5))
                got = {}
                for _ in queries:
                    a = await asyncio.wait_for(answers.get(), 5)
                    got[int.from_bytes(a[:2], "big")] = a
                for i, q in enumerate(queries):
                    check_answer(got[i], q)

            await ask(20, "warm")  # dials, handshakes, first-use caches
            gc.collect()  # frees what came before (the loop fixture's warm-up transports are cycles)
            gc.disable()
            try:
                await ask(N, "q")
                garbage = _cyclic_garbage()
            finally:
                gc.enable()
            flow.close()
            ours = {k: n for k, n in garbage.items() if k.startswith(("dotproxy.", "uvloop.", "asyncio."))
                    and not k.startswith("dotproxy.testing")}
            # The test upstream lives in this process too: what it makes is not counted, but nothing
            # may scale with the number of queries.
            assert not ours, ours
            assert sum(garbage.values()) < N, garbage.most_common(10)

    run(main)
