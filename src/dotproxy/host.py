"""The embedding API: the engine on its own loop thread, driven from any thread.

An embedding host (a macOS NEDNSProxyProvider, a test harness) lives on its own
threads and queues, not on our loop. It talks to :class:`EngineThread`::

    engine = EngineThread(upstreams=["tls://9.9.9.9:853#dns.quad9.net"])
    engine.start()                                   # idempotent; returns when ready
    flow = engine.open_flow("udp", on_response, metadata="com.example.app")
    flow.send(datagram, endpoint)                    # from any thread
    flow.close()                                     # at any moment
    engine.sleep(); engine.wake(); engine.network_changed()
    engine.stop(reason=2)                            # returns when everything is gone

Every method is safe from any thread and never blocks on DNS. Requests travel to
the engine's thread through one FIFO inbox (so a flow's sends keep their order
after its open), woken once per batch. ``on_response`` is called on the engine's
thread: ``(data, endpoint)`` for UDP, ``(data)`` for TCP (length-prefixed
messages). If it raises — the host's write failed, "flow is not connected" —
that flow is closed and nothing else notices.

Once ``FlowHandle.close()`` has returned, that flow's ``on_response`` is never
called again: a delivery runs under the handle's lock, and ``close()`` takes it.
(So ``close()`` waits for a delivery in progress on the engine's thread; do not
call it while holding a lock your ``on_response`` needs. Closing from inside
``on_response`` is fine.) After close, the engine drops its reference to
``on_response``: it never keeps a host object alive.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, fields

from dotproxy.engine import Engine, EngineConfig
from dotproxy.errors import ConfigError
from dotproxy.flows.flow import FlowGone
from dotproxy.io.loop import loop_factory
from dotproxy.querylog import QuerySubscriber

log = logging.getLogger("dotproxy.host")

_ENGINE_OPTIONS = {f.name for f in fields(EngineConfig)} - {"upstreams", "ca_file"}


class FlowHandle:
    """The host's handle on one flow. ``send`` and ``close`` are safe from any thread."""

    __slots__ = ("kind", "metadata", "_run", "_on_response", "_lock", "_closed", "_flow", "id")

    def __init__(self, run: _Running | None, kind: str, on_response: Callable, metadata: object,
                 flow_id: int) -> None:
        self.kind = kind
        self.metadata = metadata
        self.id = flow_id
        self._run = run
        self._on_response: Callable | None = on_response
        self._lock = threading.RLock()  # held during a delivery; close() takes it
        self._closed = run is None
        self._flow = None  # the engine's Flow, set on the engine's thread

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, data: bytes, endpoint=None) -> None:
        """A datagram (UDP, with the endpoint it came from) or stream bytes in any chunking (TCP)."""
        run = self._run
        if not self._closed and run is not None:
            run.post_send(self, bytes(data), endpoint)

    def close(self) -> None:
        """From now on ``on_response`` is never called for this flow; its queries are cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._on_response = None
            run = self._run
        if run is not None:
            run.post(_CLOSE, self)

    # ------------------------------------------------------------ the engine's thread

    def _deliver(self, *args) -> None:
        with self._lock:
            callback = self._on_response
            if callback is None:
                raise FlowGone  # closed by the host, its close still on the way: end the flow now
            callback(*args)  # raising closes the flow (the Flow catches it)

    def _flow_closed(self, flow) -> None:
        # The engine closed it (failed write, stop): make the handle say so too, and let go of
        # the engine, so that a host keeping old handles does not keep a stopped engine alive.
        with self._lock:
            self._closed = True
            self._on_response = None
            run, self._run = self._run, None
        self._flow = None
        if run is not None:
            run.handles.discard(self)

    def __repr__(self) -> str:
        return f"<FlowHandle {self.kind} #{self.id}{' closed' if self._closed else ''}>"


_OPEN, _SEND, _CLOSE, _CALL = range(4)


class _Running:
    """One engine lifetime: its thread, its loop, its inbox. Made by ``start()``, ended by ``stop()``."""

    def __init__(self, config: EngineConfig, *, use_uvloop: bool, query_log: QuerySubscriber | None) -> None:
        self.config = config
        self.use_uvloop = use_uvloop
        self.query_log = query_log
        self.engine: Engine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.handles: set[FlowHandle] = set()  # open on the engine (engine thread only)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="dotproxy-engine", daemon=True)
        self._inbox: collections.deque = collections.deque()
        self._inbox_lock = threading.Lock()
        self._accepting = False
        self._wakeup_pending = False
        self._stop_event: asyncio.Event | None = None
        self._stop_timeout = 5.0
        # Sends waiting for the engine's thread, at most: past it a host floods faster than the
        # engine reads, and memory must not pay for it (UDP: dropped; TCP: that flow is closed).
        self.max_waiting = config.max_in_flight
        self.dropped_sends = 0

    # ------------------------------------------------------------ any thread

    def post(self, *op) -> bool:
        """Queue ``op`` for the engine's thread; False once the engine no longer takes requests."""
        with self._inbox_lock:
            if not self._accepting:
                return False
            self._inbox.append(op)
            if not self._wakeup_pending:
                self._wakeup_pending = True
                # Under the lock: once stop() has closed the door, the loop may close too.
                self.loop.call_soon_threadsafe(self._drain)
        return True

    def post_send(self, handle: FlowHandle, data: bytes, endpoint) -> None:
        if len(self._inbox) >= self.max_waiting:
            self.dropped_sends += 1
            if handle.kind == "tcp":  # a gap in a stream corrupts every message after it
                handle.close()
            return
        self.post(_SEND, handle, data, endpoint)

    def request_stop(self, timeout: float) -> None:
        with self._inbox_lock:
            if not self._accepting:
                return
            self._accepting = False
            self._stop_timeout = timeout
        self.loop.call_soon_threadsafe(self._stop_event.set)

    # ------------------------------------------------------------ the engine's thread

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory(self.use_uvloop)) as runner:
                runner.run(self._serve())
        except BaseException as e:  # the thread must not die silently: start() reports it
            if not self.ready.is_set():
                self.error = e
            else:
                log.exception("the engine thread failed")
        finally:
            self.ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self.engine = Engine(self.config, query_log=self.query_log)
        await self.engine.start()
        with self._inbox_lock:
            self._accepting = True
        self.ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._shutdown()

    def _drain(self) -> None:
        inbox = self._inbox
        with self._inbox_lock:
            self._wakeup_pending = False
        # A bounded batch per call: a flooding host must not starve the loop.
        for _ in range(len(inbox)):
            op = inbox.popleft()
            try:
                self._dispatch(op)
            except Exception:  # a bug in one request must not cost the others
                log.exception("handling a host request failed")
        with self._inbox_lock:
            if inbox and not self._wakeup_pending:
                self._wakeup_pending = True
                self.loop.call_soon(self._drain)

    def _dispatch(self, op: tuple) -> None:
        kind = op[0]
        if kind == _SEND:
            flow = op[1]._flow
            if flow is not None:
                flow.receive(op[2], op[3])
        elif kind == _OPEN:
            handle = op[1]
            if handle._closed:  # closed before the engine saw it open
                handle._flow_closed(None)
                return
            handle._flow = self.engine.open_flow(handle.kind, handle._deliver, name=f"host {handle.kind} flow "
                                                 f"#{handle.id}", on_close=handle._flow_closed,
                                                 metadata=handle.metadata)
            self.handles.add(handle)
        elif kind == _CLOSE:
            flow = op[1]._flow
            if flow is not None:
                flow.close()
        else:  # _CALL
            op[1]()

    async def _shutdown(self) -> None:
        # Requests that arrived before the door closed: closes count, the rest are moot.
        while self._inbox:
            op = self._inbox.popleft()
            if op[0] == _OPEN:
                op[1]._flow_closed(None)
            elif op[0] == _CLOSE:
                self._dispatch(op)
        for handle in list(self.handles):  # nothing reaches a host callback from here on
            handle._flow_closed(None)
        try:
            async with asyncio.timeout(self._stop_timeout):
                await self.engine.stop()
        except TimeoutError:
            log.error("stopping took longer than %.1fs: abandoning what is left", self._stop_timeout)


class EngineThread:
    """The engine on its own loop thread (uvloop where installed); every method is thread-safe.

    ``options`` are :class:`EngineConfig` fields (``timeout``, ``max_in_flight``,
    ``upstream_options``, ...), plus ``use_uvloop`` (default True) and
    ``query_log`` (called on the engine's thread with a :class:`QueryRecord` per answer).
    """

    def __init__(self, *, upstreams: list[str], ca_file: str | None = None, **options) -> None:
        self._use_uvloop = bool(options.pop("use_uvloop", True))
        self._query_log = options.pop("query_log", None)
        if self._query_log is not None and not callable(self._query_log):
            raise ConfigError("must be callable", where="query_log")
        unknown = sorted(set(options) - _ENGINE_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(_ENGINE_OPTIONS | {'use_uvloop', 'query_log'}))}",
                              where="EngineThread")
        if isinstance(upstreams, str):
            raise ConfigError("upstreams is a list of URLs, not one string", where="upstreams")
        self.config = EngineConfig(upstreams=tuple(upstreams), ca_file=ca_file, **options)
        self._lifecycle = threading.Lock()  # start() and stop() one at a time
        self._run: _Running | None = None
        # Engine threads of this object until joined: stop() clears _run before its thread is gone,
        # and a stop() or start() from on_response meanwhile must still know where it runs.
        self._threads: set[threading.Thread] = set()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ lifetime

    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        """Start the engine and return when it is ready; a no-op while it runs."""
        if self._on_engine_thread():
            return  # running, or stopping: either way not startable from inside the engine
        with self._lifecycle:
            if self._run is not None:
                return
            run = _Running(self.config, use_uvloop=self._use_uvloop, query_log=self._query_log)
            self._threads.add(run.thread)
            run.thread.start()
            run.ready.wait()
            if run.error is not None:
                run.thread.join()
                self._threads.discard(run.thread)
                raise run.error
            self._run = run
            log.info("engine started: forwarding to %s", ", ".join(self.config.upstreams))

    def stop(self, reason: object = None, timeout: float = 5.0) -> None:
        """Stop and return only when every socket, task and the engine's thread are gone.

        Nothing reaches any ``on_response`` after this returns. ``reason`` (for example
        NEProviderStopReason's number) goes to the log. ``start()`` afterwards makes a fresh engine."""
        if self._on_engine_thread():
            raise RuntimeError("stop() from the engine's own thread (inside on_response) would wait for itself")
        with self._lifecycle:
            run, self._run = self._run, None
            if run is None:
                return
            log.info("engine stopping (reason: %s)", reason)
            run.request_stop(timeout)
            run.thread.join(timeout + 1.0)
            if run.thread.is_alive():
                log.warning("the engine thread is still finishing %.1fs after stop(); waiting for it", timeout + 1.0)
                run.thread.join()
            self._threads.discard(run.thread)
            log.info("engine stopped")

    def __enter__(self) -> EngineThread:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _on_engine_thread(self) -> bool:
        return threading.current_thread() in self._threads

    # ------------------------------------------------------------ flows

    def open_flow(self, kind: str, on_response: Callable, *, metadata: object = None) -> FlowHandle:
        """A new flow. On an engine that is not running, the handle comes back already closed."""
        if kind not in ("udp", "tcp"):
            raise ValueError(f"a flow is 'udp' or 'tcp', not {kind!r}")
        if not callable(on_response):
            raise TypeError("on_response must be callable")
        run = self._run
        handle = FlowHandle(run, kind, on_response, metadata, next(self._ids))
        if run is None or not run.post(_OPEN, handle):
            handle._closed = True
            handle._on_response = None
        return handle

    # ------------------------------------------------------------ lifecycle events

    def sleep(self, timeout: float = 2.0) -> None:
        """The machine is about to sleep (NEProvider.sleep): idle connections are closed politely.

        Returns when they are closed, or after ``timeout`` seconds: call the system's
        completion handler after this returns."""
        closed = threading.Event()

        def quiesce(engine: Engine) -> None:
            asyncio.gather(*engine.sleep()).add_done_callback(lambda _: closed.set())

        if self._call(quiesce) and not self._on_engine_thread():
            closed.wait(timeout)

    def wake(self) -> None:
        """The machine woke (NEProvider.wake): connections are suspect, redialled when next needed."""
        self._call(lambda engine: engine.wake())

    def network_changed(self) -> None:
        """The default path changed: connections are suspect, redialled when next needed."""
        self._call(lambda engine: engine.network_changed())

    def _call(self, fn: Callable[[Engine], None]) -> bool:
        run = self._run
        return run is not None and run.post(_CALL, lambda: fn(run.engine))

    # ------------------------------------------------------------ observing

    def stats(self) -> dict:
        """A snapshot of the counters (read without stopping the engine; each value is current)."""
        run = self._run
        if run is None or run.engine is None:
            return {"running": False}
        engine = run.engine
        snapshot = {"running": True, **engine.stats.as_dict(), "flows": engine.flows,
                    "in_flight": engine.in_flight, "dropped_sends": run.dropped_sends, **asdict(engine.lifecycle)}
        snapshot["upstreams"] = [{"name": up.name, **up.stats.as_dict()} for up in list(engine.upstreams)]
        return snapshot
