"""Task ownership and the stream-connection machinery shared by TCP, DoT and DoH.

Every task the test upstream starts comes from its :class:`dotproxy.tasks.TaskOwner`
(cancelled and awaited by ``TestUpstream.aclose()``) and is also registered with the connection or
UDP endpoint it works for, which cancels it when it closes. Timer handles are owned
the same way. Nothing here raises out of an asyncio callback: unexpected errors are
logged, counted in ``stats.internal_errors`` and end only the connection concerned.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from dotproxy.testing.server import TestUpstream

log = logging.getLogger("dotproxy.testing")


class Owner:
    """Something that owns timer handles and tasks started for its queries."""

    _server: TestUpstream
    _loop: asyncio.AbstractEventLoop

    def _init_owner(self, server: TestUpstream) -> None:
        self._server = server
        self._loop = server._loop
        self._pending: set[Any] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        tasks = self._server._tasks
        if tasks.closed:  # the server is closing: this work is not wanted any more
            coro.close()
            return
        task = tasks.spawn(coro)
        if not task.done():
            self._pending.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, item: Any) -> None:
        self._pending.discard(item)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            self._pending.discard(handle)
            try:
                callback(*args)
            except Exception as exc:  # never let it reach the loop's exception handler
                self._server._internal_error(exc)

        handle = self._loop.call_later(delay, fire)
        self._pending.add(handle)

    def cancel_pending(self) -> None:
        pending, self._pending = self._pending, set()
        for item in pending:
            item.cancel()


class Connection(Owner, asyncio.Protocol):
    """One accepted stream connection (plain, or TLS run here over memory BIOs), server side.

    TLS is done with :meth:`ssl.SSLContext.wrap_bio` rather than ``loop.start_tls``
    so that it behaves the same under asyncio and uvloop (uvloop starts reading
    right after ``connection_made`` whatever the protocol asked, which loses the
    ClientHello to ``start_tls``), so that every socket is ours from accept on
    (a half-finished handshake is closed by ``aclose()``), and so that a close is
    close_notify + FIN at once rather than a wait for the peer's close_notify.

    Subclasses implement ``_feed(data)`` (parse client bytes, call ``_query``),
    ``_send_reply(ctx, response) -> bool`` and may hook ``_on_ready`` and ``_no_reply``;
    they write with ``_write``.
    """

    kind = "tcp"

    def __init__(self, server: TestUpstream, ssl_context=None) -> None:
        self._init_owner(server)
        self._stats = server.stats
        self._ssl_context = ssl_context
        self._raw: asyncio.Transport | None = None
        self._sslobj = None
        self._incoming = None
        self._outgoing = None
        self._handshake_handle: asyncio.TimerHandle | None = None
        self.ready = False
        self.closing = False
        self.lost = False
        self.blackholed = False
        self._eof = False
        self._write_paused = False
        self._corked = False
        self._wbuf: list[bytes] = []
        self._inflight = 0
        self._replies = 0
        self._last_query = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._batch: list | None = None
        self._batch_handle: asyncio.TimerHandle | None = None
        self.lost_future: asyncio.Future = self._loop.create_future()
        self._deliver_plain = partial(self._deliver, None)

    @property
    def ssl_object(self):
        """The server side :class:`ssl.SSLObject` (``None`` on plain TCP)."""
        return self._sslobj

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._raw = transport
        if not self._server._register(self):
            transport.abort()
            return
        if self._ssl_context is None:
            self._ready()
            return
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        try:
            self._sslobj = self._ssl_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        except Exception as exc:
            self._server._internal_error(exc)
            self.abort()
            return
        timeout = self._server.handshake_timeout
        if timeout is not None:
            self._handshake_handle = self._loop.call_later(timeout, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.lost or self.blackholed:
            return
        # Replies produced while handling one read go out in one write (one TLS record).
        self._corked = True
        try:
            if self._sslobj is None:
                self._feed(data)
            else:
                self._tls_received(data)
            self._uncork()
        except Exception as exc:
            self._server._internal_error(exc)
            self.abort()
        finally:
            self._corked = False

    def eof_received(self):
        self._eof = True
        if self.blackholed:
            return True
        if self._sslobj is None and self.ready and (self._inflight > 0 or self._batch):
            return True  # answer what was asked, then close (RFC 7766 section 6.2.3)
        self.closing = True  # the transport closes itself: no more writes
        return False

    def connection_lost(self, exc) -> None:
        self._on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # ------------------------------------------------------------ TLS

    def _tls_received(self, data: bytes) -> None:
        self._incoming.write(data)
        sslobj = self._sslobj
        if not self.ready:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush_tls()
                return
            except (ssl.SSLError, OSError, ValueError) as exc:
                self._handshake_failed(exc)
                return
            self._handshake_done()
            if self.closing or self.lost or self.blackholed:
                return
        chunks = []
        eof = False
        while True:
            try:
                chunk = sslobj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify
                eof = True
                break
            except (ssl.SSLError, OSError, ValueError) as exc:
                log.debug("TLS error on %s: %r", self.kind, exc)
                self._stats.protocol_errors += 1
                self.abort()
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        self._flush_tls()
        if chunks:
            self._feed(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof:
            self.close(by_server=False)

    def _handshake_done(self) -> None:
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
            self._handshake_handle = None
        stats = self._stats
        stats.tls_handshakes += 1
        if self._sslobj.session_reused:
            stats.tls_resumed += 1
        self._flush_tls()  # the last handshake flight and the session tickets
        self._ready()

    def _handshake_failed(self, exc: BaseException) -> None:
        log.debug("TLS handshake failed on %s: %r", self.kind, exc)
        self._stats.tls_handshake_failures += 1
        self._flush_tls()  # the alert
        self.closing = True
        self._cancel_all()
        self._raw.close()

    def _handshake_timed_out(self) -> None:
        self._handshake_handle = None
        if self.ready or self.closing or self.lost:
            return
        self._stats.tls_handshake_failures += 1
        self.abort()

    def _flush_tls(self) -> None:
        data = self._outgoing.read()
        if data and not self.lost:
            self._raw.write(data)

    def _write(self, data: bytes) -> None:
        """Send application bytes (encrypted on TLS connections)."""
        if self.closing or self.lost or self.blackholed:
            return
        if self._corked:
            self._wbuf.append(data)
        else:
            self._write_now(data)

    def _uncork(self) -> None:
        self._corked = False
        if self._wbuf:
            data = self._wbuf[0] if len(self._wbuf) == 1 else b"".join(self._wbuf)
            self._wbuf.clear()
            if not (self.lost or self.blackholed):
                self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self._sslobj is None:
            self._raw.write(data)
        else:
            self._sslobj.write(data)
            self._flush_tls()

    # ------------------------------------------------------------ life cycle

    def _ready(self) -> None:
        self.ready = True
        self._last_query = self._loop.time()
        self._arm_idle()
        self._on_ready()

    def _on_ready(self) -> None:
        """Hook: the connection (TLS handshake included) is ready."""

    def _on_lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        self._cancel_all()
        self._server._unregister(self)
        if not self.lost_future.done():
            self.lost_future.set_result(None)

    def _cancel_all(self) -> None:
        self.cancel_pending()
        for name in ("_idle_handle", "_batch_handle", "_handshake_handle"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)
        if self._batch:
            self._stats.replies_discarded += len(self._batch)
        self._batch = None

    def _update_reading(self) -> None:
        raw = self._raw
        if raw is None or self.lost or self.closing:
            return
        try:
            if self._write_paused or self.blackholed:
                raw.pause_reading()
            else:
                raw.resume_reading()
        except Exception:  # a transport closing underneath us
            pass

    def close(self, *, by_server: bool = True) -> None:
        """Close gracefully: pending writes are flushed, then (TLS close_notify and) FIN."""
        if self.closing or self.lost:
            return
        if by_server:
            self._stats.connections_closed_by_server += 1
        self._uncork()  # replies written before the close go out before it
        self.closing = True
        self._cancel_all()
        if self._sslobj is not None and self.ready:
            try:
                self._sslobj.unwrap()  # queues close_notify, then wants the peer's
            except (ssl.SSLError, OSError, ValueError):
                pass
            self._flush_tls()
        self._raw.close()

    def abort(self) -> None:
        """Close at once (RST when data is pending)."""
        self.closing = True
        self._wbuf.clear()
        self._cancel_all()
        if self._raw is not None:
            try:
                self._raw.abort()
            except Exception:
                pass

    def blackhole(self) -> None:
        """Go silent: stop reading, never write or close (until aclose or close_all_connections)."""
        if self.blackholed or self.closing or self.lost:
            return
        self.blackholed = True
        self._stats.connections_blackholed += 1
        self._wbuf.clear()
        self._cancel_all()
        self._inflight = 0
        self._update_reading()

    # ------------------------------------------------------------ idle close

    def _arm_idle(self) -> None:
        timeout = self._server.faults.idle_close
        if timeout is None or self.closing or self.lost or self.blackholed:
            return
        self._idle_handle = self._loop.call_at(self._last_query + timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_handle = None
        timeout = self._server.faults.idle_close
        if timeout is None or self.closing or self.lost or self.blackholed:
            return
        if self._loop.time() - self._last_query >= timeout - 0.001:
            self.close()
        else:
            self._arm_idle()

    # ------------------------------------------------------------ queries and replies

    def _query(self, query: bytes, ctx: Any = None) -> None:
        self._inflight += 1
        self._last_query = self._loop.time()
        if self._idle_handle is None:
            self._arm_idle()
        deliver = self._deliver_plain if ctx is None else partial(self._deliver, ctx)
        self._server._dispatch(query, self.kind, deliver, self)

    def _deliver(self, ctx: Any, response: bytes | None) -> None:
        if self._inflight > 0:
            self._inflight -= 1
        if self.closing or self.lost or self.blackholed:
            if response is not None:
                self._stats.replies_discarded += 1
            return
        if response is None:
            self._no_reply(ctx)
            self._maybe_close_at_eof()
            return
        faults = self._server.faults
        if faults.reorder:
            if self._batch is None:
                self._batch = []
                self._batch_handle = self._loop.call_later(faults.reorder_window, self._flush_batch)
            self._batch.append((ctx, response))
            return
        if self._send_reply(ctx, response):
            self._replied()
        else:
            self._maybe_close_at_eof()

    def _flush_batch(self) -> None:
        self._batch_handle = None
        batch, self._batch = self._batch, None
        if not batch:
            return
        self._corked = True
        try:
            batch.reverse()
            for i, (ctx, response) in enumerate(batch):
                if self.closing or self.lost or self.blackholed:
                    self._stats.replies_discarded += len(batch) - i
                    return
                if self._send_reply(ctx, response):
                    self._replied()
            self._uncork()
            self._maybe_close_at_eof()
        except Exception as exc:
            self._server._internal_error(exc)
            self.abort()
        finally:
            self._corked = False

    def _replied(self) -> None:
        self._replies += 1
        stats = self._stats
        stats.replies_sent += 1
        stats.replies[self.kind] += 1
        limit = self._server.faults.close_after
        if limit is not None and self._replies >= limit:
            self.close()
        else:
            self._maybe_close_at_eof()

    def _maybe_close_at_eof(self) -> None:
        if self._eof and self._inflight <= 0 and not self._batch and not self.closing:
            self.close(by_server=False)

    def _no_reply(self, ctx: Any) -> None:
        """Hook: the query sent with ``ctx`` will never be answered."""

    # ------------------------------------------------------------ to implement

    def _feed(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _send_reply(self, ctx: Any, response: bytes) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class DNSStreamConnection(Connection):
    """DNS over TCP (RFC 7766) or over TLS (RFC 7858): 2-byte length framing, pipelined."""

    def __init__(self, server: TestUpstream, kind: str, ssl_context=None) -> None:
        super().__init__(server, ssl_context)
        self.kind = kind
        self._buf = bytearray()
        self._seq = 0  # queries numbered as they arrive (``in_order``)
        self._next_out = 0  # the number of the next reply to write (``in_order``)
        self._held: dict[int, bytes] = {}  # replies ready before an earlier one (``in_order``)

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        n = len(buf)
        off = 0
        while n - off >= 2:
            length = (buf[off] << 8) | buf[off + 1]
            end = off + 2 + length
            if end > n:
                break
            if length == 0:
                self._stats.protocol_errors += 1
            elif self._server.faults.in_order:
                self._seq += 1
                self._query(bytes(buf[off + 2 : end]), self._seq)
            else:
                self._query(bytes(buf[off + 2 : end]))
            off = end
            if self.closing or self.lost or self.blackholed:
                off = n
                break
        if off:
            del buf[:off]

    def _send_reply(self, ctx: Any, response: bytes) -> bool:
        if len(response) > 0xFFFF:
            self._stats.answer_errors += 1
            if ctx is not None:
                self._in_order(ctx, b"")
            return False
        frame = len(response).to_bytes(2, "big") + response
        if ctx is None:
            self._write(frame)
        else:
            self._in_order(ctx, frame)
        return True

    def _no_reply(self, ctx: Any) -> None:
        if ctx is not None:
            self._in_order(ctx, b"")

    def _in_order(self, seq: int, frame: bytes) -> None:
        """Write the replies that are ready and have no earlier one still pending (b"": none)."""
        self._held[seq] = frame
        while self._next_out + 1 in self._held:
            self._next_out += 1
            frame = self._held.pop(self._next_out)
            if frame:
                self._write(frame)
