"""Fixtures of the host-API tests.

``upstream``: the session's :class:`~host_support.UpstreamThread` (one test upstream on its
own thread and loop), with its faults turned off and its counters zeroed before each test
and, after it, checked for internal errors and for loop exceptions. ``engines``: makes
:class:`~dotproxy.host.EngineThread` objects (DoT to the test upstream unless told) and stops
whatever a failing test left running, so that one failure does not leak threads into the
next test. ``use_uvloop``: ``True``/``False``, for the tests cheap enough to run under both loops.
``dotproxy_logs``: every record of the ``dotproxy`` and ``asyncio`` loggers, from any thread;
a test fails if one is at ERROR or above (an exception in a loop callback, a bug logged).

Every test is bounded: the tests bound their own waits, and a watchdog (SIGALRM) fails a
test still running after ``WATCHDOG`` seconds, with every thread's stack (a ``stop()`` or
``close()`` that never returns would otherwise hang the suite).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import tempfile
import threading

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # the suite's own support module

from host_support import UpstreamThread, warm_up_loops  # noqa: E402


WATCHDOG = 120.0


@pytest.fixture(autouse=True)
def _watchdog():
    """Fail a test still running after WATCHDOG seconds, with every thread's stack (SIGALRM interrupts
    the main thread's blocking calls; the threads it waited for stay behind, as daemons)."""

    def hung(signum, frame):
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
            f.seek(0)
            stacks = f.read()
        pytest.fail(f"still running after {WATCHDOG:.0f}s (the watchdog); every thread's stack:\n{stacks}")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def _upstream_thread():
    warm_up_loops()
    up = UpstreamThread().start()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def upstream(_upstream_thread):
    up = _upstream_thread
    up.reset()
    yield up
    up.close_all_connections()  # blackholed ones included: they would stay open for the session
    errors = up.call(lambda: (up.up.stats.internal_errors, up.up.last_answer_error))
    loop_errors = list(up.loop_errors)
    up.loop_errors.clear()
    up.reset()
    assert errors[0] == 0, f"the test upstream had internal errors: {errors}"
    assert loop_errors == [], f"the test upstream's loop reported exceptions: {loop_errors}"


@pytest.fixture(params=[True, False], ids=["uvloop", "asyncio"])
def use_uvloop(request) -> bool:
    return request.param


class Records(logging.Handler):
    """Every record of the watched loggers, whatever thread logged it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def at_least(self, level: int, logger: str = "") -> list[logging.LogRecord]:
        with self._lock_records:
            return [r for r in self.records if r.levelno >= level and r.name.startswith(logger)]

    def exactly(self, level: int, logger: str = "") -> list[logging.LogRecord]:
        with self._lock_records:
            return [r for r in self.records if r.levelno == level and r.name.startswith(logger)]

    def clear(self) -> None:
        with self._lock_records:
            self.records.clear()


@pytest.fixture(autouse=True)
def dotproxy_logs():
    """Records of ``dotproxy.*`` (from INFO up) and ``asyncio`` (WARNING up); none may be an ERROR."""
    handler = Records()
    watched = {"dotproxy": logging.INFO, "asyncio": logging.WARNING}
    saved = {}
    for name, level in watched.items():
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for name in watched:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(saved[name])
    errors = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in handler.at_least(logging.ERROR)]
    assert not errors, f"errors were logged: {errors}"


@pytest.fixture
def engines(upstream):
    """``engines(**options)``: an EngineThread forwarding to the test upstream (DoT unless ``upstreams``
    is given); any still running at the end of the test (it failed half-way) is stopped."""
    from dotproxy.host import EngineThread

    made = []

    def make(**options):
        options.setdefault("upstreams", [upstream.dot_url])
        options.setdefault("ca_file", upstream.ca_file)
        et = EngineThread(**options)
        made.append(et)
        return et

    yield make
    for et in made:
        if et.running:
            et.stop(timeout=5.0)
