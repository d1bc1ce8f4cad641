"""What every upstream shares: options, statistics, deadlines, dial backoff, waiting for capacity."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, fields

from dotproxy.config import UpstreamURL
from dotproxy import wire
from dotproxy.errors import ConfigError, ConnectionFailed, UpstreamError, UpstreamTimeout
from dotproxy.tasks import TaskOwner

#: ``callback(answer, None)`` or ``callback(None, error)``: how ``submit`` reports, exactly once.
Callback = Callable[[bytes | None, BaseException | None], None]


class AnswerSink:
    """A callback as an object: ``resolved(answer, None)`` or ``resolved(None, error)``.

    Any :data:`Callback` will do; a subclass of this one (a flow's query) is called as
    a C method by the compiled pool, where a plain callable costs a Python call per answer.
    """

    __slots__ = ()

    def resolved(self, answer: bytes | None, error: BaseException | None) -> None:
        raise NotImplementedError

    def __call__(self, answer: bytes | None, error: BaseException | None) -> None:
        self.resolved(answer, error)


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Tunables of one upstream; ``connect(url, **options)`` takes these names."""

    timeout: float = 4.0  # deadline of a query that was given none, seconds from now
    pool_size: int = 2  # connections at most (DoT, TCP, DoH)
    max_outstanding: int = 200  # queries in flight on one connection (DoH: also capped by the server)
    spread_at: int = 32  # open another connection when the least loaded one has this many in flight
    idle_timeout: float = 30.0  # close a connection idle this long (servers close at 30-60 s)
    connect_timeout: float = 4.0  # TCP + TLS handshake; never longer than ``timeout`` (a query's deadline)
    verify: bool = True  # verify the server certificate (off only when asked, with a warning)
    spki_pins: tuple[str, ...] = ()  # base64 SHA-256 SPKI pins of the server certificate
    pad_block: int | None = 128  # RFC 8467 query padding on encrypted transports; None: off
    keepalive: bool = True  # ask for RFC 7828 edns-tcp-keepalive on stream connections
    quiet_after: float = 1.0  # a connection silent this long is checked for life on its next query
    liveness_min: float = 0.4  # bounds of the adaptive silence limit for such a connection
    liveness_max: float = 2.0  # (a busy connection silent this long is probed the same way)
    max_resends: int = 3  # re-sends of a query whose connection ended before it was answered
    backoff_min: float = 0.2  # dial failures: jittered exponential backoff
    backoff_max: float = 30.0
    max_orphans: int = 1000  # cancelled-but-unanswered IDs before a connection is retired
    method: str = "POST"  # DoH request method: POST or GET
    udp_retry: float = 1.0  # UDP: resend after this long without an answer
    name: str | None = None  # label in logs and errors (default: the URL)

    @classmethod
    def from_kwargs(cls, options: dict, *, where: str) -> UpstreamOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown upstream option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                              where=where)
        if "spki_pins" in options:
            pins = options["spki_pins"]
            if isinstance(pins, str):
                pins = (pins,)
            if not isinstance(pins, (list, tuple)) or not all(isinstance(p, str) for p in pins):
                raise ConfigError("spki_pins must be a list of base64 SHA-256 pins", where=where)
            options = {**options, "spki_pins": tuple(pins)}
        for f in fields(cls):
            if f.name in options and f.name != "spki_pins":
                _check_type(f.name, options[f.name], f.default, where)
        opts = cls(**options)
        if opts.pool_size < 1 or opts.max_outstanding < 1:
            raise ConfigError("pool_size and max_outstanding must be at least 1", where=where)
        if opts.pool_size > 1024 or not 1 <= opts.spread_at <= 0xFFFF:
            raise ConfigError("pool_size must be 1..1024 and spread_at 1..65535", where=where)
        if opts.max_outstanding + opts.max_orphans >= 0xFFFF:
            raise ConfigError("max_outstanding + max_orphans must stay below 65535: a connection has "
                              "65536 message IDs", where=where)
        if opts.method not in ("POST", "GET"):
            raise ConfigError(f"method must be POST or GET, not {opts.method!r}", where=where)
        if opts.pad_block is not None and not 1 <= opts.pad_block <= 1024:
            raise ConfigError(f"pad_block must be 1..1024 (RFC 8467 suggests 128) or None, not {opts.pad_block}",
                              where=where)
        if opts.timeout <= 0 or opts.connect_timeout <= 0 or opts.idle_timeout <= 0:
            raise ConfigError("timeouts must be positive", where=where)
        if opts.liveness_min <= 0 or opts.liveness_max <= 0 or opts.quiet_after <= 0:
            raise ConfigError("liveness_min, liveness_max and quiet_after must be positive", where=where)
        if not 0 < opts.backoff_min <= opts.backoff_max:
            raise ConfigError("backoff_min must be positive and at most backoff_max", where=where)
        if not 0 <= opts.max_resends <= 100:
            raise ConfigError(f"max_resends must be 0..100, not {opts.max_resends}", where=where)
        return opts


_OPTIONAL = {"pad_block": int, "name": str}  # options that may also be None


def _check_type(name: str, value, default, where: str) -> None:
    want = _OPTIONAL.get(name) or type(default)
    if value is None and name in _OPTIONAL:
        return
    ok = (isinstance(value, want) and not (want is int and isinstance(value, bool))) or (
        want is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{name} must be {want.__name__}, not {type(value).__name__} {value!r}", where=where)


class UpstreamStats:
    """Counters of one upstream, for tests, benchmarks and metrics (C integers when compiled)."""

    __slots__ = _STAT_NAMES = (
        "queries",
        "answers",
        "timeouts",
        "failures",
        "retries",  # transparent re-sends after a connection ended under a query
        "dials",
        "dial_failures",
        "handshakes",  # TLS handshakes completed
        "resumed",  # of which resumed a session
        "connections_open",
        "late_answers",  # answers to cancelled queries, dropped
        "unexpected_answers",  # unknown ID, wrong question, unparsable: dropped
        "liveness_failures",  # connections found dead by silence (reused, or busy and unanswering)
        "probes",  # signs of life asked for (DoT: ". NS"; DoH: PING)
        "dial_waits_abandoned",  # queries passed on to the next upstream while a dial went on
        "drained_stuck",  # silent connections drained, not replaced, as another one answered (in-order server)
        # Why connections ended (one count each; see PooledConnection.end_as and connection_lost):
        "closed_idle",  # idle too long: we closed it
        "closed_by_server",  # EOF or TLS close_notify from the server
        "closed_reset",  # an error on the socket (RST, ...)
        "closed_silence",  # silent past the liveness bound: retired
        "closed_stuck",  # silent after a probe while another connection answered: drained, then closed
        "closed_goaway",  # HTTP/2 GOAWAY
        "closed_network_change",  # suspect after a wake or network change
        "closed_orphans",  # too many cancelled queries never answered
        "closed_broken",  # the server broke the protocol
        "closed_budget",  # sent as many queries as the server allows a connection, then closed by us
        "closed_shutdown",  # the upstream was closed
    )

    def __init__(self) -> None:
        for name in UpstreamStats._STAT_NAMES:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in UpstreamStats._STAT_NAMES}

    def __repr__(self) -> str:
        return "UpstreamStats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


class Upstream:
    """An upstream resolver: ``await query(wire, deadline=...)`` and ``await aclose()``.

    ``deadline`` is absolute, on the running loop's ``loop.time()`` clock; the
    reply carries the caller's ID. Errors are :class:`dotproxy.errors.UpstreamError`
    subclasses (a malformed query raises :class:`dotproxy.errors.WireError`).
    """

    def __init__(self, url: UpstreamURL, options: UpstreamOptions) -> None:
        self.url = url
        self.options = options
        self.name = options.name or url.url
        self.stats = UpstreamStats()
        self._closed = False
        self._submitted: TaskOwner | None = None  # tasks of the default submit()
        # Smoothed RTT and its variation (RFC 6298 style), seconds; None until measured.
        self.srtt: float | None = None
        self.rttvar = 0.0

    async def query(self, data: bytes, *, deadline: float | None = None) -> bytes:
        raise NotImplementedError

    def submit(self, data: bytes, *, callback: Callback, deadline: float | None = None,
               query: wire.Query | None = None, fallback: bool = False):
        """Ask without awaiting; returns a handle with ``cancel()``. ``callback`` is called
        exactly once unless the handle is cancelled first. This default runs :meth:`query`
        as a task this upstream owns; pooled upstreams do it with no task at all.

        ``fallback``: the caller can ask another upstream, so the query need not wait on a
        connection being made (pooled upstreams hand it back after the dial bound)."""
        if self._submitted is None:
            self._submitted = TaskOwner(f"upstream {self.name}")

        async def ask() -> None:
            try:
                answer = await self.query(data, deadline=deadline)
            except UpstreamError as e:
                callback(None, e)
            else:
                callback(answer, None)

        return self._submitted.spawn(ask(), name=f"query {self.name}")

    async def aclose(self) -> None:
        raise NotImplementedError

    def quiesce(self) -> list[asyncio.Future]:
        """The machine is about to sleep: let go of idle connections while the path still works.

        Returns futures done when those connections are closed."""
        return []

    def network_changed(self) -> None:
        """The machine woke or its network path changed: what is open may be dead. Dials nothing;
        the next query opens what it needs."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -------------------------------------------------------------- shared helpers

    def _deadline(self, deadline: float | None) -> float:
        if self._closed:
            raise ConnectionFailed("upstream is closed", upstream=self.name)
        loop = asyncio.get_running_loop()
        return loop.time() + self.options.timeout if deadline is None else deadline

    async def _close_submitted(self) -> None:
        if self._submitted is not None:
            await self._submitted.aclose()

    def _timed_out(self) -> UpstreamTimeout:
        self.stats.timeouts += 1
        return UpstreamTimeout("no answer before the deadline", upstream=self.name)

    def _observe_rtt(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            srtt = self.srtt  # a C double when compiled: one float object per answer, not five
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(srtt - rtt)
            self.srtt = 0.875 * srtt + 0.125 * rtt

    def liveness_bound(self) -> float:
        """How long a reused, previously silent connection may stay silent before it counts as dead."""
        o = self.options
        if self.srtt is None:
            return o.liveness_max
        return min(o.liveness_max, max(o.liveness_min, 2 * (self.srtt + 4 * self.rttvar)))


class Backoff:
    """Jittered exponential backoff after dial failures."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.failures = 0
        self.until = 0.0
        self.error: UpstreamError | None = None

    def failed(self, now: float, error: UpstreamError) -> None:
        self.failures += 1
        # The exponent is capped: 2.0 ** 1024 overflows a float (after 1025 failures in a row).
        delay = min(self.maximum, self.minimum * 2.0 ** min(self.failures - 1, 64))
        self.until = now + delay * random.uniform(0.5, 1.5)
        self.error = error

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0
        self.error = None

    def blocking(self, now: float) -> UpstreamError | None:
        """The error to fail fast with while backing off, else None."""
        return self.error if self.error is not None and now < self.until else None
