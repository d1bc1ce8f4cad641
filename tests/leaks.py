"""Leak checks shared by the suites: no task and no file descriptor left behind."""

from __future__ import annotations

import asyncio
import os

from dotproxy.testing import TestUpstream


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def server_fds(server: TestUpstream) -> set[str]:
    """The descriptors of the test upstream's accepted connections (its business, not ours)."""
    out = set()
    for conn in list(server._conns):
        raw = getattr(conn, "_raw", None)
        if raw is None:
            continue
        sock = raw.get_extra_info("socket")
        if sock is not None:
            try:
                fd = sock.fileno()
            except (OSError, ValueError):
                continue
            if fd >= 0:
                out.add(str(fd))
    return out


async def assert_nothing_left(tasks_before: set, fds_before: set[str], server: TestUpstream | None,
                              *, settle: float = 1.0, after: str = "closing") -> None:
    """Wait up to ``settle`` seconds for every task and descriptor made since the baseline to go."""
    loop = asyncio.get_running_loop()
    end = loop.time() + settle
    while True:
        # Two iterations: transports close their sockets on the next loop iteration.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        leaked_fds = fds() - fds_before - (server_fds(server) if server is not None else set())
        leaked_tasks = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
        leaked_tasks.discard(asyncio.current_task())
        if not leaked_fds and not leaked_tasks:
            return
        if loop.time() > end:
            described = {}
            for fd in leaked_fds:
                try:
                    described[fd] = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    described[fd] = "?"
            raise AssertionError(f"left after {after}: fds {described}, tasks {leaked_tasks}")
        await asyncio.sleep(0.01)
