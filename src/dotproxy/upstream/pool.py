"""The connection pool shared by DoT, TCP and DoH upstreams.

A pool keeps up to ``pool_size`` connections and sends each query on the least
loaded one, up to ``max_outstanding`` per connection; it dials single-flight (a
cold burst makes one handshake per connection it needs), backs off with jitter
after failed dials, and owns its dialling tasks.

A connection can die without knowing it (the server or a NAT dropped it, the
machine slept, a Wi-Fi roam). Such a connection either fails at once (EOF, RST)
or stays silent. Silence is watched two ways: a query sent on a connection that
was quiet for ``quiet_after`` asks for a sign of life at once (a probe), and a
busy connection that has heard nothing for the liveness bound (adaptive, from
the upstream's RTT) is probed then; a probe unanswered within the bound retires
the connection. Either way the unanswered queries on it are re-sent on another
connection within their deadlines, up to ``max_resends`` times each; a query the
server answered (even with an error) is never re-sent.

Some servers close a connection after so many queries with more pipelined behind
(a per-connection query limit, or worse: the rest are lost in a reset). When busy
connections end twice under queries after about k answers, later connections are
given k queries each (the budget) and then retire politely while a successor is
dialled; a network change forgets it.

An in-order server (dnsdist's default) answers a probe only after the slow answer
ahead of it, so silence after a probe proves little while another connection to
the same server, open all along, keeps answering: such a connection is drained
(no new queries, its own stay) rather than replaced.

A query that another upstream could take (``fallback``) never waits on a dial
longer than the dial bound (about three handshake times, 1 s while none was
measured): past it, and at once while this upstream's dials are failing or slow,
it is handed back so that the caller asks the next upstream; the dial goes on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from dotproxy import wire
from dotproxy.config import UpstreamURL
from dotproxy.errors import ConnectionFailed, TLSVerificationFailed, UpstreamError, UpstreamTimeout
from dotproxy.io.tls import ResumingContext, check_pins, describe_tls_error
from dotproxy.tasks import TaskOwner
from dotproxy.upstream.base import AnswerSink, Backoff, Callback, Upstream, UpstreamOptions
from dotproxy.upstream.deadlines import DeadlineEntry, Deadlines
from dotproxy.udpbatch import quickack

log = logging.getLogger("dotproxy.upstream")


#: The fewest queries a connection is given when the server is found to close connections after so many.
MIN_BUDGET = 10

#: While no handshake time is measured: the longest a query with a fallback waits on a dial.
DIAL_WAIT_UNKNOWN = 1.0
#: The shortest dial bound, whatever the measured handshakes (a loaded machine's scheduling jitter).
DIAL_WAIT_MIN = 0.1
#: A timer may fire a little early (uvloop rounds to milliseconds).
_EARLY = 0.001


class Resend(Exception):
    """Internal: the query did not get an answer on its connection and may be sent on another.

    ``free``: the server provably never processed it (GOAWAY, REFUSED_STREAM), so
    the move does not use up the query's one retry. ``refused``: the server turned it
    away (REFUSED_STREAM, overload): such free moves are capped, GOAWAY moves are not
    (each is a connection ending; the deadline bounds them).
    """

    def __init__(self, reason: str, *, free: bool = False, refused: bool = False) -> None:
        super().__init__(reason)
        self.free = free
        self.refused = refused


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP, or already gone
            pass


#: Linux only (macOS and Windows have no such option: there this is a no-op).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class PooledConnection:
    """The transport glue shared by pooled connections (an asyncio protocol): writes
    batched per loop iteration, idle close, the liveness check of reused connections.

    Subclasses hold a sans-IO core (``self.core``) with ``send_query``/``cancel``/
    ``receive_data``/``data_to_send``/``connection_lost``/``last_received`` and turn
    its events into results for ``self.waiters``.
    """

    def __init__(self, pool: PooledUpstream, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[int, Ticket] = {}  # query ID on this connection -> its ticket
        self.ready = False
        self.draining = False  # takes no new queries; closes when its last one is answered
        self.closed = loop.create_future()
        self.last_activity = loop.time()
        self.idle_timeout = pool.options.idle_timeout
        self._flush_scheduled = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._liveness_handle: asyncio.TimerHandle | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._liveness_armed_at = 0.0
        self._watchdog_handle: asyncio.TimerHandle | None = None
        self._watch_from = 0.0  # when the watchdog started counting silence
        self.end_reason: str | None = None  # why we ended it; None: the server or the network did
        self.sent = 0  # queries sent on it (probes included: the server counts them too)
        self.started_at = 0.0  # when its handshake completed
        self.answers = 0  # answers received on it (none: a connection that dies at once, or never worked)
        self._close_started = False
        self._fd = -1  # the socket's, for TCP_QUICKACK where the system has it
        self._ack_due = False  # a read left answers outstanding: acknowledge it this iteration

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        set_nodelay(transport)
        sock = transport.get_extra_info("socket")
        if _TCP_QUICKACK is not None and sock is not None:
            self._fd = sock.fileno()

    def read_done(self) -> None:
        """Called after each read: make sure it is acknowledged in this loop iteration
        when more answers are expected.

        A server that does not set TCP_NODELAY (unbound, for one) holds an answer while
        an earlier segment of its is unacknowledged (Nagle), and Linux delays our ACK by
        up to 40 ms (interactive mode) when we have nothing to send. Measured against the
        rig's unbound: two queries in one write (our per-iteration batching does that),
        the second answer came 43 ms late, every time. A query written in this iteration
        carries the ACK anyway (the loaded case); otherwise :meth:`_flush` sends it bare.
        """
        if self.waiters and self._fd >= 0:
            self._ack_due = True
            self.schedule_flush()

    def ack_now(self) -> None:
        """Acknowledge what was read at once, not after the delayed-ACK timer
        (TCP_QUICKACK is not sticky: the kernel goes back to delayed ACKs). A C call on the
        fd: the loop's socket object would build a Python socket per call."""
        if self._fd >= 0 and self.transport is not None and not self.transport.is_closing():
            try:
                quickack(self._fd)
            except OSError:  # not TCP after all: stop trying
                self._fd = -1

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        """The server reads slower than we write: queries wait in the transport's buffer
        (bounded by max_outstanding per connection)."""

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        self._fd = -1  # closed: its number may be reused
        for handle in (self._idle_handle, self._liveness_handle, self._close_handle, self._watchdog_handle):
            if handle is not None:
                handle.cancel()
        self._watchdog_handle = None
        self.core.connection_lost()
        waiters, self.waiters = self.waiters, {}
        reason = self.end_reason
        if reason is None or (reason == "budget" and waiters):  # ended under queries: not by us
            reason = "reset" if exc is not None else "by_server"
        self.pool._ended(self, reason, len(waiters), exc)
        if reason == "reset":
            detail = f"connection lost: {exc}"
        elif reason == "by_server":
            detail = "connection closed by the server"
        else:
            detail = f"connection ended ({reason.replace('_', ' ')})"
        if not self.closed.done():
            self.closed.set_result(None)
        # Out of the pool first: its re-sends must not find it still taking room (and drop an idle one for it).
        self.pool._forget(self)
        if waiters:
            self.pool._resend_all(list(waiters.values()), detail)

    def end_as(self, reason: str) -> None:
        """Say why this connection is being ended (the first reason given stands)."""
        if self.end_reason is None:
            self.end_reason = reason

    # ------------------------------------------------------------ the pool's side

    def start(self) -> None:
        """The handshake is done: take queries, watch idleness."""
        self.ready = True
        self.last_activity = self.started_at = self.loop.time()
        self._idle_handle = self.loop.call_at(self.last_activity + self.idle_timeout, self._idle_check)

    @property
    def load(self) -> int:
        return len(self.waiters)

    def usable(self) -> bool:
        """Whether it takes new queries (a method, not a property: C dispatch when compiled)."""
        return self.ready and not self.draining

    def submit(self, ticket: Ticket, now: float) -> int:
        """Send ``ticket``'s query on this connection (``now``: the loop's time); return its query ID here."""
        if self._liveness_handle is None and now - self.last_heard() > self.pool._quiet_after:
            self._arm_liveness(now)
        if self._watchdog_handle is None:
            self._arm_watchdog(now)
        query_id = self.send_query(ticket, now)
        self.waiters[query_id] = ticket
        self.schedule_flush()
        return query_id

    def send_query(self, ticket: Ticket, now: float) -> int:
        """Hand the query to the core; return its query ID on this connection. (A hook: a
        compiled subclass calls its own core's method in C.)"""
        return self.core.send_query(ticket.data, now, ticket.query)

    def withdraw(self, query_id: int) -> None:
        """The ticket gave up (cancelled, or past its deadline): orphan its ID / reset its stream."""
        if self.waiters.pop(query_id, None) is None:
            return
        self.core.cancel(query_id)
        self.schedule_flush()
        self.cancelled()
        if self.draining and not self.waiters:
            self.close()
        else:
            self.pool._pump()  # a slot is free

    def probe(self, now: float) -> None:
        """Hook: ask the server for a sign of life (DoH sends a PING)."""

    def cancelled(self) -> None:
        """Hook: a query was cancelled."""

    def answered(self, now: float) -> None:
        """Book-keeping after a read that completed queries."""
        self.last_activity = now
        pool = self.pool
        if self.draining and not self.waiters:
            self.close()
        else:
            pool._pump()

    def resolve(self, query_id: int, data: bytes) -> None:
        self.answers += 1
        if self.answers == 1:  # a real answer (not a GOAWAY or an HTTP error): it works
            self.pool._served(self)
        ticket = self.waiters.pop(query_id, None)
        if ticket is not None:
            ticket.answered(data)

    def reject(self, query_id: int, error: BaseException) -> None:
        ticket = self.waiters.pop(query_id, None)
        if ticket is not None:
            ticket.failed(error)

    def retire(self) -> None:
        """Take no new queries; close once the in-flight ones are answered.

        It leaves the pool at once: a replacement may be dialled while it drains."""
        self.draining = True
        self.pool._closing_started(self)
        if not self.waiters and self.transport is not None:
            self.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def suspect(self, now: float) -> None:
        """The path may have gone (a wake, a network change): an idle connection is dropped
        without a word to a server that may be unreachable; a busy one takes no new queries and
        must show a sign of life within the liveness bound, or its queries move once."""
        if self._close_started:
            return
        if self.end_reason is None or self.end_reason == "budget":
            self.end_reason = "network_change"
        if not self.waiters:
            self.ready = False
            self.pool._closing_started(self)
            self.abort()
            return
        if not self.draining:
            self.retire()
        # Whatever it said before the change proves nothing about the path now: check afresh.
        if self._liveness_handle is not None:
            self._liveness_handle.cancel()
        self._arm_liveness(now)
        self.schedule_flush()

    def _arm_liveness(self, now: float) -> None:
        """Ask for a sign of life; silence past the liveness bound retires this connection."""
        self._liveness_armed_at = now
        self._liveness_handle = self.loop.call_at(now + self.pool.liveness_bound(), self._liveness_check)
        self.pool.stats.probes += 1
        self.sent += 1
        self.probe(now)

    def _arm_watchdog(self, now: float) -> None:
        """Watch a busy connection for silence (a timer per connection, re-armed about once per
        liveness bound while it is busy: nothing per query)."""
        self._watch_from = now
        self._watchdog_handle = self.loop.call_at(now + self._watch_step(self.pool.liveness_bound()),
                                                  self._watchdog)

    def _watch_step(self, bound: float) -> float:
        """How long the watchdog sleeps at most: the bound shrinks as the RTT gets measured (it is
        the largest until then), and a sleep chosen from a stale bound would overshoot it."""
        step = self.pool.options.liveness_min
        return bound if bound < step else step

    def _watchdog(self) -> None:
        """A busy connection that heard nothing for the liveness bound is asked for a sign of life.

        Silence alone proves nothing (every answer on it may be slow: a cold recursion); the
        probe does: the server answers it at once if it and the path are alive."""
        self._watchdog_handle = None
        if not self.waiters or self._close_started or self.transport is None or self.transport.is_closing():
            return  # the next query re-arms it
        now = self.loop.time()
        bound = self.pool.liveness_bound()
        quiet_since = self.last_heard()
        if quiet_since < self._watch_from:
            quiet_since = self._watch_from
        if self._liveness_handle is not None:  # a probe is out: its check decides
            due = now + bound
        elif now - quiet_since >= bound - _EARLY:
            log.debug("%s: nothing heard for %.2fs with %d queries outstanding: probing", self.pool.name,
                      now - quiet_since, len(self.waiters))
            self._arm_liveness(now)
            self.schedule_flush()
            due = now + bound
        else:
            due = quiet_since + bound
        step = now + self._watch_step(bound)
        self._watchdog_handle = self.loop.call_at(due if due < step else step, self._watchdog)

    # ------------------------------------------------------------ timers and writes

    def last_heard(self) -> float:
        last = self.core.last_received
        return self.last_activity if last is None else max(last, self.last_activity)

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and not self.transport.is_closing() and self.write_pending():
            self._ack_due = False  # its segment carries the ACK of what we read
        elif self._ack_due:
            self._ack_due = False
            if self.waiters:
                self.ack_now()

    def write_pending(self) -> bool:
        """Write what the core has queued, in one write; return whether there was anything."""
        data = self.core.data_to_send()
        if data:
            self.transport.write(data)
            return True
        return False

    def _idle_check(self) -> None:
        self._idle_handle = None
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        due = self.last_activity + self.idle_timeout
        if self.waiters or now < due:
            self._idle_handle = self.loop.call_at(max(due, now + 0.05), self._idle_check)
            return
        self.end_as("idle")
        self.close()

    def shorten_idle_timeout(self, timeout: float) -> None:
        if timeout >= self.idle_timeout:
            return
        self.idle_timeout = timeout
        if self._idle_handle is not None and not self._close_started:
            self._idle_handle.cancel()
            self._idle_handle = self.loop.call_at(self.last_activity + timeout, self._idle_check)

    #: How long a closing TLS connection may wait for the server's close_notify.
    CLOSE_GRACE = 1.0

    def close(self) -> None:
        """Close politely, leaving the pool at once: a TLS close waits for the peer's
        close_notify (asyncio and uvloop: up to 30 s), which a dead path never sends,
        and must not hold a pool slot meanwhile. Aborted after ``CLOSE_GRACE``."""
        if self._close_started:
            return
        self._close_started = True
        self.ready = False
        self.pool._closing_started(self)
        self.say_goodbye()
        self.transport.close()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._close_handle = self.loop.call_later(self.CLOSE_GRACE, self.abort)

    def say_goodbye(self) -> None:
        """Hook: what to send before closing (DoH: GOAWAY)."""

    def _liveness_check(self) -> None:
        self._liveness_handle = None
        last = self.core.last_received
        if last is not None and last >= self._liveness_armed_at:
            return  # it spoke
        # Silent even if every query on it was cancelled meanwhile (a hedging caller
        # moved on): it was asked and did not answer, so later queries must not go there.
        now = self.loop.time()
        if self.waiters and self.last_heard() >= self._watch_from and self.pool._heard_beside(self, now):
            # The server answers on a connection that was open all along this one's silence: the path
            # works, so this one is more likely stuck behind a slow answer at an in-order server (a
            # probe cannot overtake it there) than dead. Its queries stay; it takes no new ones.
            log.info("%s: a busy connection stayed silent for %.2fs after a probe while another answers: "
                     "draining it (%d queries wait on it)", self.pool.name, now - self._liveness_armed_at,
                     len(self.waiters))
            self.pool.stats.drained_stuck += 1
            if not self.draining:
                self.end_as("stuck")
                self.retire()
            return
        self.pool.stats.liveness_failures += 1
        log.info("%s: a connection stayed silent for %.2fs after a probe: replacing it (%d queries move)",
                 self.pool.name, now - self._liveness_armed_at, len(self.waiters))
        self.end_reason = "silence"  # whatever was said before: it is silence that ends it
        self.ready = False
        self.abort()


class Ticket(DeadlineEntry):
    """One query's way through a pool, without a task, a future or a timer of its own.

    Placed on a connection (or queued until one has room), moved to a fresh
    connection if its own ends under it (up to the pool's ``max_resends`` times), and
    finished exactly once: answered,
    failed, past its deadline, or cancelled. Cancelling (or the deadline) withdraws
    it from its connection, which orphans the DoT ID or resets the DoH stream.
    """

    __slots__ = ("pool", "data", "query", "callback", "conn", "query_id", "resends", "moves", "fallback", "done")

    @staticmethod
    def start(pool: PooledUpstream, data: bytes, query: wire.Query, deadline: float, callback: Callback,
              fallback: bool) -> Ticket:
        """A ticket for a query, in its pool's deadlines."""
        # Built field by field, without __init__: one Python-level call less per query
        # when compiled (argument parsing), and DeadlineEntry's fields are set here too.
        ticket = Ticket.__new__(Ticket)
        ticket.deadline = deadline
        ticket._prev = ticket._next = None
        ticket._listed = False
        ticket.pool = pool
        ticket.data = data
        ticket.query = query
        ticket.callback = callback
        ticket.conn = None
        ticket.query_id = -1
        ticket.resends = 0  # re-sent after a connection ended under it
        ticket.moves = 0  # free moves after REFUSED_STREAM (the server turned it away unseen)
        ticket.fallback = fallback  # another upstream can take it: it does not wait long on a dial
        ticket.done = False
        pool._deadlines.add(ticket)
        return ticket

    @property
    def upstream(self) -> str:
        """The name of the upstream asked (for the query log)."""
        return self.pool.name

    def cancel(self) -> None:
        """Give up: nothing is delivered, the connection forgets the query."""
        if self.done:
            return
        self.done = True
        self.pool._deadlines.remove(self)
        self.callback = None  # nothing is delivered; see _finish
        self._withdraw()

    # ------------------------------------------------------------ from the pool and connections

    def answered(self, answer: bytes) -> None:
        self.conn = None
        self.pool.stats.answers += 1
        self._finish(answer, None)

    def failed(self, error: BaseException) -> None:
        self.conn = None
        if self.done:
            return
        if isinstance(error, Resend):
            self.pool._resend(self, error)
        else:
            self.pool.stats.failures += 1
            self._finish(None, error)

    def expired(self) -> None:
        if self.done:
            return
        self._withdraw()
        self.pool.stats.timeouts += 1
        self._finish(None, UpstreamTimeout("no answer before the deadline", upstream=self.pool.name))

    def _withdraw(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.withdraw(self.query_id)
        else:
            self.pool._queue.pop(self, None)

    def _finish(self, answer: bytes | None, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.pool._deadlines.remove(self)
        # The caller usually holds this ticket (to cancel it) and the callback holds the
        # caller: let go of the callback so that no reference cycle outlives the query.
        callback, self.callback = self.callback, None
        try:
            if isinstance(callback, AnswerSink):
                sink = callback  # typed when compiled: a C call
                sink.resolved(answer, error)
            else:
                callback(answer, error)
        except Exception:  # the caller's bug must not break the connection that delivered this
            log.exception("%s: an answer callback failed", self.pool.name)


class PooledUpstream(Upstream):
    """An upstream served by a pool of :class:`PooledConnection` to one server
    (subclasses name theirs: ``connection_class``)."""

    #: A server that keeps refusing streams (overloaded) gets a query this many times at most.
    MAX_REFUSED_MOVES = 3

    def __init__(self, url: UpstreamURL, options: UpstreamOptions, *, tls: ResumingContext | None) -> None:
        super().__init__(url, options)
        self.tls = tls
        self._pins = frozenset(options.spki_pins)
        self._conns: list[PooledConnection] = []
        self._closing: set[PooledConnection] = set()  # left the pool, transport not yet gone
        self._dial_task: asyncio.Task | None = None  # the one dial under way (single-flight)
        self._queue: dict[Ticket, None] = {}  # waiting for a connection with room, oldest first
        self._backoff = Backoff(options.backoff_min, options.backoff_max)
        # Read on every query: kept as plain numbers (C fields when compiled).
        self._quiet_after = options.quiet_after
        self._max_outstanding = options.max_outstanding
        self._spread_at = options.spread_at
        self._pool_size = options.pool_size
        self._max_resends = options.max_resends
        # A dial never outlasts a query's deadline: waiting on it past that serves nobody.
        self._connect_timeout = min(options.connect_timeout, options.timeout)
        self._dial_time = -1.0  # smoothed duration of successful dials (TCP + TLS), seconds; -1: none yet
        self._dial_started = 0.0
        self._dial_slow = False  # the dial under way has outlasted the dial bound
        self._dial_watch: asyncio.TimerHandle | None = None
        # Connections that ended under queries before answering any: the server takes connections and
        # drops them. Re-dialling is backed off (the queries wait, within their deadlines), not the queries.
        self._redial = Backoff(options.backoff_min, options.backoff_max)
        self._redial_handle: asyncio.TimerHandle | None = None
        self._budget = 0  # queries per connection before it retires (0: no limit known)
        self._budget_seen = 0  # answers before the last close that looked like a limit (0: none yet)
        self._tasks = TaskOwner(f"upstream {self.name}")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None  # every ticket not yet finished, made with the loop

    # ------------------------------------------------------------ public API

    def submit(self, data: bytes, *, callback: Callback, deadline: float | None = None,
               query: wire.Query | None = None, fallback: bool = False) -> Ticket:
        """Ask without awaiting: ``callback(answer, None)`` or ``callback(None, error)`` is
        called exactly once, unless the returned ticket is cancelled first.

        ``fallback``: the caller has another upstream to ask, so the query is not kept waiting
        on a dial past the dial bound (it fails with :class:`ConnectionFailed` instead)."""
        deadline = self._deadline(deadline)
        if query is None:
            query = wire.parse_query(data)
        return self.submit_parsed(data, query, deadline, callback, -1.0, fallback)

    def submit_parsed(self, data: bytes, query: wire.Query, deadline: float, callback: Callback,
                      now: float = -1.0, fallback: bool = False) -> Ticket | None:
        """:meth:`submit` for a caller that parsed the query and knows its deadline (a flow, on
        every query): all arguments given, and a closed upstream says so through ``callback``.
        ``now``: the loop's time, if the caller has just read it (one clock read less per query)."""
        if self._closed:
            callback(None, ConnectionFailed("upstream is closed", upstream=self.name))
            return None
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self._deadlines = Deadlines(self.loop)
        self.stats.queries += 1
        ticket = Ticket.start(self, data, query, deadline, callback, fallback)
        self._place(ticket, self.loop.time() if now < 0 else now)
        return ticket

    async def query(self, data: bytes, *, deadline: float | None = None) -> bytes:
        fut = asyncio.get_running_loop().create_future()

        def done(answer: bytes | None, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(answer)

        ticket = self.submit(data, callback=done, deadline=deadline)
        try:
            return await fut
        except asyncio.CancelledError:
            ticket.cancel()
            raise

    async def aclose(self) -> None:
        """Close every connection and stop dialling; returns when no socket is left."""
        self._closed = True
        self._stop_dial_watch()
        if self._redial_handle is not None:
            self._redial_handle.cancel()
            self._redial_handle = None
        await self._tasks.aclose()
        conns = list(self._conns) + list(self._closing)
        for conn in conns:
            conn.end_as("shutdown")
            conn.abort()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=2.0)
        self._pump()  # queued tickets fail: the upstream is closed
        if self._deadlines is not None and not self._deadlines.count:
            self._deadlines.close()  # no timer outlives the pool

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def _dialing(self) -> bool:
        return self._dial_task is not None

    def quiesce(self) -> list[asyncio.Future]:
        idle = [conn for conn in self._conns if not conn.waiters]
        for conn in idle:
            conn.end_as("idle")
            conn.close()
        return [conn.closed for conn in idle]

    def network_changed(self) -> None:
        # Dial failures on the old path say nothing about the new one, and a dial under way
        # may be stuck on it: cancel it, so that queued queries dial afresh at once.
        self._backoff.succeeded()
        self._redial.succeeded()
        self._budget = self._budget_seen = 0  # the new path may lead to another server
        self._stop_dial_watch()
        if self._dial_task is not None and not self._dial_task.done():
            self._dial_task.cancel()
            self._dial_task = None
        if self.loop is None:
            return  # never used: nothing open
        now = self.loop.time()
        for conn in list(self._conns) + [c for c in self._closing if c.draining]:
            conn.suspect(now)
        self._pump()

    # ------------------------------------------------------------ choosing and dialling

    def _pick(self, fresh: bool, now: float) -> PooledConnection | None:
        """The least loaded usable connection with room; with ``fresh``, only one heard from lately."""
        best = None
        best_load = 0
        quiet_after = self._quiet_after
        for conn in self._conns:
            load = len(conn.waiters)
            if (best is None or load < best_load) and conn.usable() and load < self.capacity(conn):
                if fresh and now - conn.last_heard() > quiet_after:
                    continue
                best = conn
                best_load = load
        return best

    def _make_room(self) -> None:
        """A retry needs a fresh connection and the pool is full of quiet ones: drop the quietest idle one."""
        idle = [c for c in self._conns if not c.waiters]
        if idle:
            quietest = min(idle, key=lambda c: c.last_heard())
            quietest.end_as("idle")
            quietest.abort()

    def capacity(self, conn: PooledConnection) -> int:
        return self._max_outstanding

    def refusing(self, now: float) -> UpstreamError | None:
        """Hook: an error to fail new queries with at once (DoH after a 429)."""
        return None

    def _blocked(self, now: float) -> UpstreamError | None:
        """Why no query can be placed now, if something says so: closed, refusing, or backing off."""
        if self._closed:
            return ConnectionFailed("upstream is closed", upstream=self.name)
        error = self.refusing(now)
        if error is not None:
            return error
        error = self._backoff.blocking(now)
        if error is not None:
            rebuilt = type(error)(f"{error.detail} (next attempt in {self._backoff.until - now:.1f}s)",
                                  upstream=self.name)
            rebuilt.__cause__ = error
            return rebuilt
        return None

    def _place(self, ticket: Ticket, now: float) -> None:
        """Put ``ticket`` on the best connection, or in the queue (dialling if there is room)."""
        if self._queue:  # first come, first placed
            if ticket.fallback and self._unready(now):
                self._hand_back(ticket, now)
                return
            self._queue[ticket] = None
            self._pump()
            return
        if self._closed or (error := self.refusing(now)) is not None:
            ticket.failed(ConnectionFailed("upstream is closed", upstream=self.name) if self._closed else error)
            return
        conn = self._pick(ticket.resends > 0, now)
        if conn is not None:
            self._submit_on(conn, ticket, now)
            return
        self._queue[ticket] = None
        self._pump()

    def _submit_on(self, conn: PooledConnection, ticket: Ticket, now: float) -> None:
        if (len(conn.waiters) + 1 >= self._spread_at and len(self._conns) < self._pool_size
                and self._dial_task is None and self._backoff.blocking(now) is None):
            self._dial()  # this one is getting busy: open another beside it
        try:
            ticket.query_id = conn.submit(ticket, now)
        except Exception as e:  # the connection cannot take it (no ID left): a failure of this query only
            ticket.failed(ConnectionFailed(f"cannot send on this connection: {e}", upstream=self.name))
            return
        ticket.conn = conn
        conn.sent += 1
        if self._budget and conn.sent >= self._budget:
            conn.end_as("budget")  # the server would close it with the next ones unanswered
            conn.retire()
            if self._dial_task is None and len(self._conns) < self._pool_size and self._backoff.blocking(now) is None:
                self._dial()  # its successor, before a query has to wait for one

    def _pump(self) -> None:
        """Place queued tickets while connections have room; dial, or fail them, when none has."""
        queue = self._queue
        while queue:
            ticket = next(iter(queue))
            now = self.loop.time() if self.loop is not None else 0.0
            conn = self._pick(ticket.resends > 0, now)
            if conn is None:
                error = self._blocked(now)
                if error is not None:
                    tickets = list(queue)
                    queue.clear()
                    for t in tickets:
                        t.failed(error)
                    return
                room = len(self._conns) < self._pool_size and not self._dialing
                if ticket.resends > 0 and not room and not self._dialing:
                    self._make_room()
                elif room:
                    self._dial_when_due(now)
                if ticket.fallback and self._unready(now):
                    # Waiting here would be waiting on a dial that is failing, slow or held back:
                    # the next upstream takes it now (the dial goes on).
                    del queue[ticket]
                    self._hand_back(ticket, now)
                    continue
                return
            del queue[ticket]
            self._submit_on(conn, ticket, now)

    def _unready(self, now: float) -> bool:
        """Whether a query that needs a new connection here would wait on a dial that is failing
        (the last one failed), slow (past the dial bound) or held back (connections die at once)."""
        return self._dial_slow or self._backoff.failures > 0 or now < self._redial.until

    def _hand_back(self, ticket: Ticket, now: float) -> None:
        """Give a waiting query with a fallback back to its caller, with an error that says why."""
        self.stats.dial_waits_abandoned += 1
        if self._backoff.failures > 0 and self._backoff.error is not None:
            detail = f"not connected (the last dial failed: {self._backoff.error.detail})"
        elif now < self._redial.until:
            detail = "not connected (connections keep ending before answering; re-dialling is backed off)"
        else:
            detail = f"not connected within {self.dial_bound():.2f}s (still dialling)"
        ticket.failed(ConnectionFailed(detail, upstream=self.name))

    def dial_bound(self) -> float:
        """How long a query with a fallback may wait on a dial: about three handshake times."""
        if self._dial_time < 0:
            return DIAL_WAIT_UNKNOWN
        return max(DIAL_WAIT_MIN, 3.0 * self._dial_time)

    def _resend(self, ticket: Ticket, reason: Resend) -> None:
        free = reason.free and not (reason.refused and ticket.moves >= self.MAX_REFUSED_MOVES)
        if self._closed or (not free and ticket.resends >= self._max_resends):
            error = ConnectionFailed(reason.args[0], upstream=self.name)
            error.__cause__ = reason
            self.stats.failures += 1
            ticket._finish(None, error)
            return
        if not free:
            ticket.resends += 1
        elif reason.refused:
            ticket.moves += 1
        self.stats.retries += 1
        self._place(ticket, self.loop.time())

    def _resend_all(self, tickets: list, detail: str) -> None:
        """The queries of a connection that ended unanswered: re-sent (or failed, past the cap)
        before the queries queued after them, which have waited less (a re-send that always
        queued last would land in the part of the next connection that a server closing after N
        queries never answers)."""
        queue = self._queue
        later = list(queue)
        queue.clear()
        for ticket in tickets:
            ticket.failed(Resend(detail))
        for ticket in later:
            if not ticket.done:  # one of the re-sent queries' callers may have cancelled it
                queue[ticket] = None
        if later:
            self._pump()

    def _dial_when_due(self, now: float) -> None:
        """Dial now, or when re-dialling is no longer held back (queued queries wait for it)."""
        if now >= self._redial.until:
            self._dial()
        elif self._redial_handle is None:
            self._redial_handle = self.loop.call_at(self._redial.until, self._redial_due)

    def _redial_due(self) -> None:
        self._redial_handle = None
        self._pump()

    def _dial(self) -> None:
        self._dial_task = self._tasks.spawn(self._connect(), name=f"dial {self.name}")
        self._dial_started = self.loop.time()
        self._dial_slow = False
        if self._dial_watch is not None:
            self._dial_watch.cancel()
        self._dial_watch = self.loop.call_at(self._dial_started + self.dial_bound(), self._dial_overdue)

    def _dial_overdue(self) -> None:
        """The dial under way outlasted the dial bound: queries with a fallback stop waiting on it."""
        self._dial_watch = None
        if self._dial_task is None or self._closed:
            return
        self._dial_slow = True
        now = self.loop.time()
        for ticket in [t for t in self._queue if t.fallback]:
            # A caller's callback (run by an earlier hand-back) may have cancelled this one meanwhile.
            if self._queue.pop(ticket, 0) is None and not ticket.done:
                self._hand_back(ticket, now)

    def _stop_dial_watch(self) -> None:
        self._dial_slow = False
        if self._dial_watch is not None:
            self._dial_watch.cancel()
            self._dial_watch = None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.stats.dials += 1
        conn = self.connection_class(self, loop)
        url = self.url
        timeout = self._connect_timeout
        started = loop.time()
        try:
            try:
                async with asyncio.timeout(timeout):
                    transport, _ = await loop.create_connection(
                        lambda: conn, url.host, url.port,
                        ssl=self.tls,
                        server_hostname=url.auth_name if self.tls is not None else None,
                        ssl_handshake_timeout=timeout if self.tls is not None else None,
                    )
            except TimeoutError as e:
                raise ConnectionFailed(f"connecting timed out after {timeout:g}s", upstream=self.name) from e
            except ssl.SSLCertVerificationError as e:
                raise TLSVerificationFailed(describe_tls_error(e), upstream=self.name) from e
            except ssl.SSLError as e:
                raise ConnectionFailed(describe_tls_error(e), upstream=self.name) from e
            except OSError as e:
                raise ConnectionFailed(f"cannot connect to {url.host}:{url.port}: {e.strerror or e}",
                                       upstream=self.name) from e
            if self.tls is not None:
                ssl_object = transport.get_extra_info("ssl_object")
                try:
                    check_pins(ssl_object, self._pins, self.name)
                    self.check_session(transport)
                except UpstreamError:
                    transport.abort()
                    raise
                self.stats.handshakes += 1
                if ssl_object.session_reused:
                    self.stats.resumed += 1
            if self._closed:
                transport.abort()
                return
            took = loop.time() - started
            self._dial_time = took if self._dial_time < 0 else 0.75 * self._dial_time + 0.25 * took
            conn.start()
            self._conns.append(conn)
            self.stats.connections_open += 1
            self._backoff.succeeded()
        except UpstreamError as e:
            self.stats.dial_failures += 1
            self._backoff.failed(loop.time(), e)
            log.warning("%s", e)
        finally:
            if self._dial_task is asyncio.current_task():  # not a dial cancelled by a network change
                self._dial_task = None
                self._stop_dial_watch()
                self._pump()

    def check_session(self, transport: asyncio.Transport) -> None:
        """Hook: check the negotiated session (DoH: ALPN must be h2)."""

    def _closing_started(self, conn: PooledConnection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
            self._closing.add(conn)
            self.stats.connections_open -= 1  # it serves no new query from now on
            self._pump()

    def _heard_beside(self, conn: PooledConnection, now: float) -> bool:
        """Whether another connection, open since before ``conn`` went quiet, was heard within the
        liveness bound: the path to the server and the server work."""
        quiet_since = conn.last_heard()
        bound = self.liveness_bound()
        for other in self._conns:
            if other is not conn and 0 < other.started_at <= quiet_since and now - other.last_heard() < bound:
                return True
        return False

    def _served(self, conn: PooledConnection) -> None:
        """``conn`` answered its first query: it works (keep its TLS session for resumption)."""
        self._redial.succeeded()
        if self.tls is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.tls.remember(ssl_object)

    def _ended(self, conn: PooledConnection, reason: str, unanswered: int, exc: Exception | None) -> None:
        """``conn`` is gone: count why, and hold back re-dialling if connections die before serving."""
        stats = self.stats
        setattr(stats, "closed_" + reason, getattr(stats, "closed_" + reason) + 1)
        if exc is not None:
            log.debug("%s: connection ended (%s: %s) with %d unanswered", self.name, reason, exc, unanswered)
        else:
            log.debug("%s: connection ended (%s) with %d unanswered", self.name, reason, unanswered)
        now = self.loop.time()
        if not conn.answers and ((unanswered and reason in ("by_server", "reset", "silence", "broken"))
                                 or reason == "goaway"):
            self._redial.failed(now, ConnectionFailed(f"connection ended ({reason}) before an answer",
                                                      upstream=self.name))
        if (unanswered and conn.answers and reason in ("by_server", "reset")
                and now - conn.last_activity < self._quiet_after):  # busy: not an idle close racing a query
            self._learn_budget(conn.answers, unanswered)

    def _learn_budget(self, answers: int, unanswered: int) -> None:
        """A busy connection ended under queries after ``answers`` answers. Twice at about the same
        count is a per-connection limit: from then on each connection gets that many queries, and
        retires (a successor dialled) before the server would close it under more. Once is not
        (a restart, a reset, a close that had another cause)."""
        seen, self._budget_seen = self._budget_seen, answers
        if not seen or abs(answers - seen) * 8 > seen:
            return
        budget = min(answers, seen)
        if budget < MIN_BUDGET:
            budget = MIN_BUDGET
        if self._budget == 0 or budget < self._budget:
            log.info("%s: the server closes connections after about %d answers with queries unanswered "
                     "(%d this time): %d queries per connection from now on", self.name, answers, unanswered,
                     budget)
            self._budget = budget

    def _forget(self, conn: PooledConnection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
            self.stats.connections_open -= 1
        else:
            self._closing.discard(conn)
        self._pump()
