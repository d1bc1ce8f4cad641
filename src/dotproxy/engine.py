"""The engine: the composition root that joins flows, listeners and upstreams.

    engine = Engine(EngineConfig(upstreams=["tls://9.9.9.9:853#dns.quad9.net"]))
    await engine.start()                      # upstreams ready (they dial on first use)
    await engine.listen("127.0.0.1", 5353)    # UDP + TCP listeners, optional
    flow = engine.open_flow("udp", deliver)   # or hand flows over from an embedding host
    ...
    await engine.stop(grace=2.0)              # in-flight queries get ``grace`` seconds

Upstreams are asked in order: the first that answers wins; a failing one (dial
error, refusal, connections that keep ending) passes the query to the next within
the same deadline, and so does one that would keep it waiting on a dial past the
dial bound (``PooledUpstream.dial_bound``).

Lifecycle: ``sleep()`` before the machine sleeps lets idle connections go;
``wake()`` and ``network_changed()`` make every open connection suspect (idle
ones dropped, busy ones drain under a liveness check) without dialling anything:
the next query dials, resuming its TLS session. A suspension nobody announced
is noticed by a clock that counts sleep (``dotproxy.io.suspend``), checked
every ``suspend_check`` seconds, and handled as a wake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dotproxy import upstream as upstreams_mod
from dotproxy import udpbatch, wire
from dotproxy.config import parse_upstream_url
from dotproxy.errors import ConfigError, UpstreamError, UpstreamTimeout
from dotproxy.flows.flow import Admission, Flow, FlowStats
from dotproxy.io.suspend import SuspendWatch, suspended_so_far
from dotproxy.listeners.sockets import BatchUdpListener, TcpListener, UdpListener, open_batch_udp_socket
from dotproxy.querylog import QuerySubscriber, SafeSubscriber
from dotproxy.upstream.base import UpstreamOptions
from dotproxy.upstream.pool import PooledUpstream

log = logging.getLogger("dotproxy.engine")

#: The bound on counts in the configuration (queries, connections): they are C integers.
_MAX_COUNT = 2**31 - 1

DEFAULT_UPSTREAMS = (
    "tls://9.9.9.9:853#dns.quad9.net",
    "tls://1.1.1.1:853#cloudflare-dns.com",
)


@dataclass(frozen=True)
class EngineConfig:
    upstreams: tuple[str, ...] = DEFAULT_UPSTREAMS
    ca_file: str | None = None
    cache: bool = True  # accepted now; meaningful once the cache exists
    timeout: float = 4.0  # each query's deadline, from its arrival
    max_in_flight: int = 20000  # queries in flight engine-wide before REFUSED
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    tcp_max_pipeline: int = 100
    upstream_options: dict = field(default_factory=dict)
    suspend_check: float = 1.0  # seconds between looks at the suspension clock

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("at least one upstream is needed", where="upstreams")
        if self.timeout <= 0:
            raise ConfigError(f"must be positive, not {self.timeout}", where="timeout")
        for name in ("max_in_flight", "tcp_max_connections", "tcp_max_pipeline"):
            value = getattr(self, name)
            if type(value) is not int:  # not a float, not a bool: the engine keeps these as C integers
                raise ConfigError(f"must be a whole number, not {type(value).__name__} {value!r}", where=name)
            if not 1 <= value <= _MAX_COUNT:
                raise ConfigError(f"must be 1..{_MAX_COUNT}, not {value}", where=name)
        if self.suspend_check <= 0:
            raise ConfigError(f"must be positive, not {self.suspend_check}", where="suspend_check")
        if self.tcp_idle_timeout <= 0:
            raise ConfigError(f"must be positive, not {self.tcp_idle_timeout}", where="tcp_idle_timeout")
        # Upstream URLs and options fail here, with the config, not when the engine starts.
        for url in self.upstreams:
            parse_upstream_url(url, where="upstreams")
        UpstreamOptions.from_kwargs(dict(self.upstream_options), where="upstream_options")


class _Resolution:
    """One query's walk through the upstreams: the next one is asked when one fails
    (dial error, refusal), never after a timeout (the deadline is spent)."""

    __slots__ = ("upstreams", "data", "query", "deadline", "callback", "index", "ticket", "done")

    def __init__(self, upstreams, data: bytes, query: wire.Query, deadline: float, callback) -> None:
        self.upstreams = upstreams
        self.data = data
        self.query = query
        self.deadline = deadline
        self.callback = callback
        self.index = -1
        self.ticket = None
        self.done = False

    @property
    def upstream(self) -> str | None:
        """The name of the upstream asked last."""
        return self.upstreams[self.index].name if self.index >= 0 else None

    def ask(self, index: int) -> None:
        self.index = index
        try:
            ticket = self.upstreams[index].submit(self.data, callback=self._answered, deadline=self.deadline,
                                                  query=self.query, fallback=index + 1 < len(self.upstreams))
        except UpstreamError as e:  # closed, or the like: as if it had answered so
            self._answered(None, e)
            return
        if self.index == index and not self.done:  # its callback may have moved on already
            self.ticket = ticket

    def _answered(self, answer: bytes | None, error: BaseException | None) -> None:
        if self.done:
            return
        if (isinstance(error, UpstreamError) and not isinstance(error, UpstreamTimeout)
                and self.index + 1 < len(self.upstreams)):
            self.ask(self.index + 1)
            return
        self.done = True
        # The ticket's callback is this resolution: drop both ends of that cycle (and the
        # flow's callback) so that a finished query is freed by reference counting alone.
        callback, self.callback, self.ticket = self.callback, None, None
        callback(answer, error)

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            ticket, self.ticket, self.callback = self.ticket, None, None
            if ticket is not None:
                ticket.cancel()


@dataclass(slots=True)
class LifecycleStats:
    sleeps: int = 0
    wakes: int = 0
    network_changes: int = 0
    suspensions: int = 0  # noticed by the suspension clock, not announced
    suspended_seconds: float = 0.0


class Engine:
    def __init__(self, config: EngineConfig, *, query_log: QuerySubscriber | None = None,
                 suspended_clock=suspended_so_far) -> None:
        self.config = config
        self.query_log = None if query_log is None else SafeSubscriber(query_log)
        # Built here so that a bad URL or option fails before anything listens.
        # A query's deadline is the engine's timeout: the upstreams' (and their dials') too, unless set.
        options = {"timeout": config.timeout, **config.upstream_options}
        self.upstreams = [upstreams_mod.connect(url, ca_file=config.ca_file, **options) for url in config.upstreams]
        self.stats = FlowStats()
        only = self.upstreams[0] if len(self.upstreams) == 1 else None
        self._only_pool = only if isinstance(only, PooledUpstream) else None
        self._admission = Admission(config.max_in_flight)
        self._flows: set[Flow] = set()
        self._udp: list[UdpListener | BatchUdpListener] = []
        self._tcp: list[TcpListener] = []
        self.addresses: list[tuple[str, int]] = []
        self._started = False
        self._stopped = False
        self._stop_done: asyncio.Future | None = None
        self.lifecycle = LifecycleStats()
        self._suspended_clock = suspended_clock
        self._suspend_watch: SuspendWatch | None = None
        self._suspend_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ resolving

    def resolve(self, data: bytes, query: wire.Query, deadline: float, callback) -> _Resolution:
        """Ask the upstreams in order; ``callback(answer, error)`` once, unless cancelled first.

        Returns a handle with ``cancel()`` and ``upstream`` (the name of the upstream asked). With
        one pooled upstream, flows ask its ``submit_parsed`` instead (see :meth:`open_flow`)."""
        resolution = _Resolution(self.upstreams, data, query, deadline, callback)
        resolution.ask(0)
        return resolution

    # ------------------------------------------------------------ flows

    def open_flow(self, kind: str, deliver: Callable, *, name: str | None = None,
                  on_close: Callable[[Flow], None] | None = None, metadata: object = None) -> Flow:
        if self._stopped:
            raise RuntimeError("the engine is stopped")

        def closed(flow: Flow) -> None:
            self._flows.discard(flow)
            if on_close is not None:
                on_close(flow)

        # One pooled upstream: nothing to fall back to, so flows ask it directly (its ticket is the handle).
        resolve = self.resolve if self._only_pool is None else self._only_pool.submit_parsed
        flow = Flow(kind, resolve, deliver, timeout=self.config.timeout, admission=self._admission,
                    stats=self.stats, name=name or f"{kind} flow", on_close=closed, metadata=metadata,
                    query_log=self.query_log)
        self._flows.add(flow)
        return flow

    @property
    def flows(self) -> int:
        return len(self._flows)

    @property
    def in_flight(self) -> int:
        """Queries admitted and not yet answered, engine-wide."""
        return self._admission.in_flight

    # ------------------------------------------------------------ listeners

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """UDP and TCP on ``host:port`` (port 0: one free port for both); returns the address bound."""
        if self._stopped:
            raise RuntimeError("the engine is stopped")
        loop = asyncio.get_running_loop()
        tcp = TcpListener(self.open_flow, f"tcp {host}:{port}", idle_timeout=self.config.tcp_idle_timeout,
                          max_connections=self.config.tcp_max_connections,
                          max_pipeline=self.config.tcp_max_pipeline)
        try:
            await tcp.start(host, port)
        except OSError as e:
            raise ConfigError(f"cannot listen on TCP {host}:{port}: {e.strerror or e}", where="listen") from e
        port = tcp.server.sockets[0].getsockname()[1]
        try:
            if udpbatch.AVAILABLE:  # recvmmsg/sendmmsg: one syscall per batch, not per datagram
                udp = BatchUdpListener(self.open_flow, f"udp {host}:{port}", open_batch_udp_socket(host, port))
            else:
                _, udp = await loop.create_datagram_endpoint(
                    lambda: UdpListener(self.open_flow, f"udp {host}:{port}"), local_addr=(host, port))
        except OSError as e:
            await tcp.aclose()
            raise ConfigError(f"cannot listen on UDP {host}:{port}: {e.strerror or e}", where="listen") from e
        self._tcp.append(tcp)
        self._udp.append(udp)
        self.addresses.append((host, port))
        return host, port

    # ------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Ready the engine; idempotent. Upstreams dial on their first query, not here."""
        if self._stopped:
            raise RuntimeError("a stopped engine does not start again: make a new one")
        if self._started:
            return
        self._started = True
        self._suspend_watch = SuspendWatch(self._suspended_clock())
        self._arm_suspension_check()

    # ------------------------------------------------------------ sleep, wake, network changes

    def sleep(self) -> list[asyncio.Future]:
        """The machine is about to sleep: idle upstream connections are closed politely now.

        Returns futures done when they are closed (bounded by the pool's close grace)."""
        if self._stopped:
            return []
        self.lifecycle.sleeps += 1
        log.debug("going to sleep")
        return [closed for up in self.upstreams for closed in up.quiesce()]

    def wake(self) -> None:
        """The machine woke: every open upstream connection is suspect. Nothing is dialled."""
        if self._stopped:
            return
        self.lifecycle.wakes += 1
        log.debug("awake")
        self._suspect_all()
        if self._suspend_watch is not None:  # an announced wake is not a second, unannounced one
            self._suspend_watch.observe(self._suspended_clock())

    def network_changed(self) -> None:
        """The network path changed: every open upstream connection is suspect. Nothing is dialled."""
        if self._stopped:
            return
        self.lifecycle.network_changes += 1
        log.debug("network changed")
        self._suspect_all()

    def _suspect_all(self) -> None:
        for up in self.upstreams:
            up.network_changed()

    def _check_suspension(self) -> None:
        self._suspend_timer = None
        if self._stopped:
            return
        try:
            slept = self._suspend_watch.observe(self._suspended_clock())
            if slept:
                self.lifecycle.suspensions += 1
                self.lifecycle.suspended_seconds += slept
                log.info("the machine was suspended for %.1fs: upstream connections are suspect", slept)
                self._suspect_all()
        finally:  # a failure above must not end the watch
            self._arm_suspension_check()

    def _arm_suspension_check(self) -> None:
        self._suspend_timer = asyncio.get_running_loop().call_later(self.config.suspend_check,
                                                                    self._check_suspension)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening, give in-flight queries ``grace`` seconds, then close everything.

        Every call returns only when everything is closed, a concurrent second one included."""
        if self._stop_done is not None:
            await asyncio.shield(self._stop_done)
            return
        self._stopped = True
        if self._suspend_timer is not None:
            self._suspend_timer.cancel()
            self._suspend_timer = None
        self._stop_done = asyncio.get_running_loop().create_future()
        try:
            await self._stop(grace)
        finally:
            self._stop_done.set_result(None)

    async def _stop(self, grace: float) -> None:
        for tcp in self._tcp:
            tcp.stop_accepting()
        flows = list(self._flows)
        if grace > 0 and flows:
            await asyncio.gather(*(flow.drain(grace) for flow in flows))
        else:
            await asyncio.gather(*(flow.aclose() for flow in flows))
        for udp in self._udp:
            udp.close()
        for tcp in self._tcp:
            await tcp.aclose()
        if self._udp:
            await asyncio.wait([u.closed for u in self._udp], timeout=1.0)
        await asyncio.gather(*(up.aclose() for up in self.upstreams))
