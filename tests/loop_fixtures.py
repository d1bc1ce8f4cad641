"""The ``run`` fixture shared by the suites that drive a real event loop.

``run(async_fn, timeout=...)`` runs a test coroutine once under asyncio and once
under uvloop (the fixture is parametrised), on a fresh loop whose exception
handler records every call: a test fails if the handler was called at all
("Task exception was never retrieved", an exception in a callback, ...).
Everything is bounded by ``timeout``. A suite's conftest imports the fixtures.
"""

from __future__ import annotations

import asyncio
import gc

import pytest


from dotproxy.io.loop import loop_factory

LOOPS = ["asyncio", "uvloop"]


async def warm_up() -> None:
    # uvloop opens a /dev/null descriptor per loop on its first server or
    # connection; make it exist before any file descriptor snapshot.
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    transport.close()
    srv.close()
    await srv.wait_closed()
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture(params=LOOPS)
def loop_kind(request) -> str:
    if request.param == "uvloop" and loop_factory(True) is None:  # pragma: no cover
        pytest.skip("uvloop is not installed")
    return request.param


@pytest.fixture
def run(loop_kind):
    """``run(async_fn, timeout=20)``: run it on a fresh loop of the parametrised kind, strictly."""
    factory = loop_factory(loop_kind == "uvloop")

    def _run(fn, timeout: float = 20.0):
        errors: list = []

        async def bounded():
            async with asyncio.timeout(timeout):
                return await fn()

        with asyncio.Runner(loop_factory=factory) as runner:
            loop = runner.get_loop()
            assert (loop_kind == "uvloop") == type(loop).__module__.startswith("uvloop")
            loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
            runner.run(warm_up())
            result = runner.run(bounded())
            gc.collect()
            runner.run(asyncio.sleep(0))
        gc.collect()
        assert errors == [], f"the loop's exception handler was called: {errors!r}"
        return result

    return _run


def after(seconds: float) -> float:
    """An absolute deadline ``seconds`` from now on the running loop's clock."""
    return asyncio.get_running_loop().time() + seconds


def now() -> float:
    return asyncio.get_running_loop().time()


async def wait_until(predicate, timeout: float = 2.0, what: str = "condition") -> float:
    """Poll ``predicate`` every 5 ms; return the time it took; fail after ``timeout``."""
    start = now()
    while not predicate():
        if now() - start > timeout:
            raise AssertionError(f"{what}: not true after {timeout}s")
        await asyncio.sleep(0.005)
    return now() - start
