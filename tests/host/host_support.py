"""Helpers of the host-API tests: a test upstream on its own thread, queries, answers, leak checks.

The engine under test (:class:`dotproxy.host.EngineThread`) runs its loop on a thread of its
own; the test upstream must not share it, so :class:`UpstreamThread` runs one
:class:`TestUpstream` on another thread and loop for the whole session, and the tests (plain,
synchronous functions, as a host is) drive both from the main thread and from host threads
they start. Knobs and counters of the upstream are read and changed on its own loop
(:meth:`UpstreamThread.call`), never across threads.

``Baseline`` snapshots the threads (Python's and the OS's), the file descriptors and the
event loops of the process; ``Baseline.check()`` says what the engine left behind after
``stop()``: a thread, a descriptor (the test upstream's side of connections excluded), a
pending asyncio task or an open event loop (the test upstream's own excluded).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import struct
import threading
import time

from dotproxy.io.loop import loop_factory
from dotproxy.testing import TestUpstream
from dns_checks import check_answer  # noqa: F401  (re-exported)
from leaks import fds, server_fds
from loop_fixtures import warm_up

# --------------------------------------------------------------------------- waiting


def wait_until(predicate, timeout: float = 3.0, what: str = "condition", interval: float = 0.002) -> float:
    """Poll ``predicate`` (on this thread) until true; return the time it took; fail after ``timeout``
    (``what`` says what was awaited; a callable is asked at the failure, for the state then)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what() if callable(what) else what}: not true after {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start


def join_all(threads: list[threading.Thread], timeout: float, what: str = "host threads") -> None:
    """Join every thread within ``timeout`` seconds in all; fail (naming the stragglers) otherwise."""
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"{what} still running after {timeout}s: {alive}"


# --------------------------------------------------------------------------- messages


def qname_wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"


def make_query(name: str, qtype: int = 1, *, id: int = 0) -> bytes:  # noqa: A002
    """A plain query (RD set, no EDNS) built by hand: fast enough for ten thousand of them."""
    return struct.pack("!HHHHHH", id, 0x0100, 1, 0, 0, 0) + qname_wire(name) + struct.pack("!HH", qtype, 1)


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def unframe(buffer: bytearray) -> list[bytes]:
    """Take every complete length-prefixed message off the front of ``buffer``."""
    out = []
    while len(buffer) >= 2:
        n = (buffer[0] << 8) | buffer[1]
        if len(buffer) < 2 + n:
            break
        out.append(bytes(buffer[2 : 2 + n]))
        del buffer[: 2 + n]
    return out


def answer_problem(answer: bytes, query: bytes) -> str | None:
    """``check_answer`` as a value: None when fine, else what is wrong."""
    try:
        check_answer(answer, query)
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------- the test upstream's thread


class UpstreamThread:
    """A :class:`TestUpstream` serving from its own loop (uvloop) on its own thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.up: TestUpstream | None = None
        self.loop_errors: list = []
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-upstream", daemon=True)

    # ---- life cycle

    def start(self) -> UpstreamThread:
        self._thread.start()
        if not self._ready.wait(15.0):
            raise RuntimeError("the test upstream did not start within 15 s")
        if self._failed is not None:
            raise RuntimeError("the test upstream failed to start") from self._failed
        self.dot_url = self.up.dot_url
        self.doh_url = self.up.doh_url
        self.udp_url = self.up.udp_url
        self.tcp_url = self.up.tcp_url
        self.ca_file = self.up.ca_file
        return self

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
                self.loop = runner.get_loop()
                self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
                runner.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._failed = e
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with TestUpstream() as up:
            self.up = up
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # ---- on its loop

    def call(self, fn, *args, timeout: float = 5.0):
        """``fn(*args)`` on the upstream's loop (awaited if it returns an awaitable); its result."""

        async def wrapper():
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def set_faults(self, **faults) -> None:
        def apply() -> None:
            for name, value in faults.items():
                if not hasattr(self.up.faults, name):
                    raise AttributeError(f"no fault named {name}")
                setattr(self.up.faults, name, value)

        self.call(apply)

    def reset(self) -> None:
        """Faults off, counters zeroed (between tests)."""

        def apply() -> None:
            self.up.faults.reset()
            self.up.stats.reset()
            self.up.last_answer_error = None

        self.call(apply)

    def stats(self) -> dict:
        return self.call(self.up.stats.snapshot)

    def queries(self) -> int:
        return self.call(lambda: self.up.stats.queries_total)

    def connections(self) -> int:
        """Stream connections the server has open now."""
        return self.call(lambda: self.up.connections)

    def close_all_connections(self) -> None:
        """The server closes every client connection (FIN; TLS close_notify first)."""
        self.call(self.up.close_all_connections)

    def blackhole_all_connections(self) -> None:
        """Every open connection goes silent (a NAT mapping dropped while the client slept)."""
        self.call(self.up.blackhole_all_connections)

    def server_fds(self) -> set[str]:
        return self.call(server_fds, self.up)


def warm_up_loops() -> None:
    """Make what event loops create once per process exist before any baseline.

    uvloop opens a pipe pair for the whole process with its first loop, and libuv starts its
    thread pool on the first address resolution; neither belongs to one engine."""

    for use_uvloop in (True, False):
        def main(use_uvloop=use_uvloop) -> None:
            with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
                runner.run(warm_up())

        t = threading.Thread(target=main, name="warm-up")
        t.start()
        t.join(10.0)


# --------------------------------------------------------------------------- leaks


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def describe_fds(numbers) -> dict[str, str]:
    out = {}
    for fd in sorted(numbers, key=int):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            out[fd] = "?"
    return out


def pending_tasks(exclude_loop) -> list:
    """asyncio tasks not done, on any loop but ``exclude_loop`` (found through the garbage collector)."""
    gc.collect()
    return [o for o in gc.get_objects()
            if isinstance(o, asyncio.Task) and not o.done() and o.get_loop() is not exclude_loop]


def open_loops(exclude_loop) -> list:
    gc.collect()
    return [o for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and o is not exclude_loop and not o.is_closed()]


def _server_socket_inodes(ports: set[int]) -> set[str]:
    """Inodes of the TCP sockets whose local port is one of ``ports``: the test upstream's side."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(parts[9])
    return inodes


class Baseline:
    """What the process has before an engine starts; ``check()`` reports what is left after ``stop()``.

    Descriptors of the test upstream's accepted connections are not the engine's: they close
    when the upstream's loop sees the engine's close, which may be a moment after ``stop()``.
    They are told apart by their local port (one of the upstream's listening ports)."""

    def __init__(self, upstream: UpstreamThread) -> None:
        self.upstream = upstream
        self.threads = set(threading.enumerate())
        self.os_threads = os_threads()
        self.fds = fds()
        # Kept, not copied by id: tasks and loops alive before (a previous test's hung engine) are not ours.
        self.tasks = pending_tasks(upstream.loop)
        self.loops = open_loops(upstream.loop)
        self._ports = {int(url.rsplit(":", 1)[1].split("/")[0].split("#")[0])
                       for url in (upstream.dot_url, upstream.doh_url, upstream.tcp_url)}

    def leaked_fds(self) -> dict[str, str]:
        """Descriptors opened since, the test upstream's excluded: number -> what it is."""
        links = {}
        for fd in fds() - self.fds:
            try:
                links[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
        server = {f"socket:[{inode}]" for inode in _server_socket_inodes(self._ports)}
        leaked = {}
        for fd, link in links.items():
            if link in server:
                continue
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != link:
                    continue  # closed and reused meanwhile
            except OSError:
                continue
            leaked[fd] = link
        return leaked

    def leftovers(self, *, deep: bool = True) -> dict:
        """Threads, descriptors (and, when ``deep``, pending tasks and open loops) made since."""
        out = {}
        threads = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
        if threads:
            out["threads"] = [t.name for t in threads]
        # A joined thread's OS thread ends a moment after join() returns: give it that moment.
        end = time.monotonic() + 1.0
        while os_threads() > self.os_threads + len(threads) and time.monotonic() < end:
            time.sleep(0.002)
        if os_threads() > self.os_threads + len(threads):
            out["os_threads"] = (self.os_threads, os_threads())
        leaked = self.leaked_fds()
        if leaked:
            out["fds"] = leaked
        if deep:
            tasks = [t for t in pending_tasks(self.upstream.loop) if not any(t is b for b in self.tasks)]
            if tasks:
                out["tasks"] = [repr(t) for t in tasks[:10]]
            loops = [lp for lp in open_loops(self.upstream.loop) if not any(lp is b for b in self.loops)]
            if loops:
                out["loops"] = [repr(loop) for loop in loops]
        return out

    def check(self, after: str = "stop()", *, deep: bool = True) -> None:
        """Nothing left, right now (``stop()`` returns only when everything is gone)."""
        left = self.leftovers(deep=deep)
        assert not left, f"left after {after}: {left}"


# --------------------------------------------------------------------------- engine helpers


def upstream_stats(et, index: int = 0) -> dict:
    """The counters of the engine's ``index``-th upstream, from ``et.stats()``."""
    return et.stats()["upstreams"][index]


def ask(et, query: bytes, *, kind: str = "udp", timeout: float = 5.0, metadata=None) -> bytes:
    """One query through a fresh flow of ``et``, from this thread; the answer (TCP: unframed)."""
    got: list[bytes] = []
    done = threading.Event()
    buffer = bytearray()

    if kind == "udp":
        def on_response(data, endpoint):
            got.append(bytes(data))
            done.set()
    else:
        def on_response(data):
            buffer.extend(data)
            got.extend(unframe(buffer))
            if got:
                done.set()

    handle = et.open_flow(kind, on_response, metadata=metadata)
    try:
        handle.send(query if kind == "udp" else frame(query), ("192.0.2.53", 53) if kind == "udp" else None)
        assert done.wait(timeout), f"no answer to a {kind} query within {timeout}s"
    finally:
        handle.close()
    assert len(got) == 1, got
    return got[0]
