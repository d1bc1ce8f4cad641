"""``TestUpstream``: an in-process, fault-injecting DNS upstream on loopback.

One object serves, each on its own ephemeral port of ``host`` (127.0.0.1 by
default, or ::1): plain UDP, plain TCP (RFC 7766), DoT (RFC 7858) and DoH over
HTTP/2 (RFC 8484), all from the running asyncio loop (default loop or uvloop)::

    async with TestUpstream(faults=Faults(latency=0.05)) as up:
        ...  # query up.udp_address, up.dot_url, up.doh_url, trusting up.ca_file
        up.faults.drop = 0.5          # knobs may change while it runs
        await up.close_all_connections()
        assert up.stats.queries["dot"] == 3

``answer(query_bytes)`` may return bytes, ``None`` (no answer) or an awaitable
of those; the default, :func:`dotproxy.testing.answer.default_answer`, is built
from byte templates and sustains tens of thousands of queries per second.

Every task the server starts is owned by it and cancelled and awaited in
:meth:`TestUpstream.aclose`, after which no socket, task or temporary file of it
remains.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import random
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Union

from dotproxy.errors import SERVFAIL
from dotproxy.tasks import TaskOwner
from dotproxy.testing._base import DNSStreamConnection, Owner, log
from dotproxy.testing._doh import DoHConnection
from dotproxy.testing.answer import default_answer, garbage, truncated_udp, wrong_id
from dotproxy.testing.certs import (
    DOH_ALPN,
    DOT_ALPN,
    Certificates,
    client_ssl_context,
    make_certificates,
    server_ssl_context,
)
from dotproxy.testing.faults import Faults, Stats
from dotproxy.wire import WireError, make_error, parse_query, truncate

__all__ = ["AnswerFunction", "TestUpstream"]

AnswerResult = Union[bytes, None]
AnswerFunction = Callable[[bytes], Union[AnswerResult, Awaitable[AnswerResult]]]

_MIN_UDP = 512
_ROOT_NS_QUESTION = b"\x00\x00\x02\x00\x01"  # ". IN NS", right after the header


def _servfail(query: bytes) -> bytes | None:
    try:
        return make_error(query, SERVFAIL)
    except (WireError, ValueError):
        return None


class _UDPEndpoint(Owner, asyncio.DatagramProtocol):
    kind = "udp"

    def __init__(self, server: TestUpstream) -> None:
        self._init_owner(server)
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if self.closed:
            return
        try:
            self._server._dispatch(data, "udp", partial(self._deliver, data, addr), self)
        except Exception as exc:
            self._server._internal_error(exc)

    def _deliver(self, query: bytes, addr, response: bytes | None) -> None:
        if response is None:
            return
        if self.closed or self.transport is None:
            self._server.stats.replies_discarded += 1
            return
        stats = self._server.stats
        if len(response) > _MIN_UDP:
            limit = _MIN_UDP
            try:
                edns = parse_query(query).edns
                if edns is not None:
                    limit = max(_MIN_UDP, edns.udp_size)
            except WireError:
                pass
            if len(response) > limit:
                try:
                    response = truncate(response, limit)
                except (WireError, ValueError):
                    stats.answer_errors += 1
                    return
                stats.truncated_sent += 1
        self.transport.sendto(response, addr)
        stats.replies_sent += 1
        stats.replies["udp"] += 1

    def error_received(self, exc) -> None:  # ICMP port unreachable and the like
        pass

    def connection_lost(self, exc) -> None:
        self.closed = True


class TestUpstream:
    """A fault-injecting DNS upstream serving UDP, TCP, DoT and DoH on loopback.

    ``answer``: ``query bytes -> bytes | None | Awaitable[bytes | None]`` (default
    :func:`~dotproxy.testing.answer.default_answer`). ``faults``: a :class:`Faults`
    (default: all off), mutable while running. ``host``: the address to listen on,
    ``"127.0.0.1"`` or ``"::1"`` (any loopback address; nothing else is allowed).
    ``certificates``: reuse certificates from :func:`make_certificates` instead of
    making fresh ones in a temporary directory (removed by :meth:`aclose`).
    ``handshake_timeout`` bounds a TLS handshake (half-finished TLS clients are
    dropped after it).
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(
        self,
        answer: AnswerFunction | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        *,
        certificates: Certificates | None = None,
        handshake_timeout: float | None = 10.0,
    ) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"TestUpstream listens on loopback only, not {host!r}")
        self.host = host
        self.answer: AnswerFunction = answer if answer is not None else default_answer
        self.faults: Faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.handshake_timeout = handshake_timeout
        #: The last exception raised by the answer function (its query got SERVFAIL).
        self.last_answer_error: BaseException | None = None
        self._certs = certificates
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks = TaskOwner("test upstream", on_error=self._internal_error)
        self._conns: set = set()
        self._udp: _UDPEndpoint | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._ssl_contexts: list[ssl.SSLContext] = []
        self._addresses: dict[str, tuple[str, int]] = {}
        self._state = "new"  # new -> running -> closed

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> TestUpstream:
        """Bind every listener on an ephemeral port; idempotent while running."""
        if self._state == "running":
            return self
        if self._state == "closed":
            raise RuntimeError("a TestUpstream cannot be restarted after aclose()")
        self._loop = asyncio.get_running_loop()
        self._state = "running"
        try:
            if self._certs is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="dotproxy-testing-")
                self._certs = make_certificates(self._tmpdir.name)
            dot_ctx = server_ssl_context(self._certs, DOT_ALPN)
            doh_ctx = server_ssl_context(self._certs, DOH_ALPN)
            for ctx in (dot_ctx, doh_ctx):
                ctx.sni_callback = self._sni_callback
                self._ssl_contexts.append(ctx)
            loop = self._loop
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            factories = {
                "tcp": lambda: DNSStreamConnection(self, "tcp"),
                "dot": lambda: DNSStreamConnection(self, "dot", dot_ctx),
                "doh": lambda: DoHConnection(self, doh_ctx),
            }
            for kind, factory in factories.items():
                srv = await loop.create_server(factory, self.host, 0, family=family, backlog=1024)
                self._servers[kind] = srv
                self._addresses[kind] = srv.sockets[0].getsockname()[:2]
            await self._bind_udp(family)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _bind_udp(self, family: int) -> None:
        """UDP on the TCP port's number, as a real DNS server has it, so that a client's
        TC=1 retry over TCP reaches the same server; TCP is re-bound if that UDP port is taken."""
        loop = self._loop
        for _attempt in range(20):
            port = self._addresses["tcp"][1]
            try:
                self._udp_transport, self._udp = await loop.create_datagram_endpoint(
                    lambda: _UDPEndpoint(self), local_addr=(self.host, port), family=family
                )
            except OSError:
                srv = self._servers.pop("tcp")
                srv.close()
                await srv.wait_closed()
                srv = await loop.create_server(lambda: DNSStreamConnection(self, "tcp"), self.host, 0,
                                               family=family, backlog=1024)
                self._servers["tcp"] = srv
                self._addresses["tcp"] = srv.sockets[0].getsockname()[:2]
                continue
            self._addresses["udp"] = self._udp_transport.get_extra_info("sockname")[:2]
            return
        raise OSError("no port free for both UDP and TCP on " + self.host)

    async def aclose(self) -> None:
        """Stop listening, drop every connection, cancel and await every task, remove the certificates."""
        if self._state == "closed":
            return
        self._state = "closed"
        for srv in self._servers.values():
            srv.close()
        if self._udp is not None:
            self._udp.closed = True
            self._udp.cancel_pending()
        if self._udp_transport is not None:
            self._udp_transport.close()
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        await self._tasks.aclose()
        waiters = [c.lost_future for c in conns if not c.lost_future.done()]
        if waiters:
            await asyncio.wait(waiters, timeout=2.0)
        for conn in list(self._conns):  # never reported lost: forget them anyway
            conn._on_lost()
        for srv in self._servers.values():
            try:
                await asyncio.wait_for(srv.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: PERF203
                pass
        for _ in range(4):  # transports close their sockets on the next iterations
            await asyncio.sleep(0)
        for ctx in self._ssl_contexts:
            ctx.sni_callback = None  # break the context <-> server cycle
        self._ssl_contexts.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> TestUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ addresses

    def _address(self, kind: str) -> tuple[str, int]:
        try:
            return self._addresses[kind]
        except KeyError:
            raise RuntimeError("TestUpstream is not started") from None

    @property
    def udp_address(self) -> tuple[str, int]:
        return self._address("udp")

    @property
    def tcp_address(self) -> tuple[str, int]:
        return self._address("tcp")

    @property
    def dot_address(self) -> tuple[str, int]:
        return self._address("dot")

    @property
    def doh_address(self) -> tuple[str, int]:
        return self._address("doh")

    def _hostport(self, kind: str) -> str:
        host, port = self._address(kind)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def udp_url(self) -> str:
        return f"udp://{self._hostport('udp')}"

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self._hostport('tcp')}"

    @property
    def dot_url(self) -> str:
        return f"tls://{self._hostport('dot')}#{self.tls_name}"

    @property
    def doh_url(self) -> str:
        return f"https://{self._hostport('doh')}/dns-query"

    @property
    def certificates(self) -> Certificates:
        if self._certs is None:
            raise RuntimeError("TestUpstream is not started")
        return self._certs

    @property
    def ca_file(self) -> str:
        return self.certificates.ca_file

    @property
    def tls_name(self) -> str:
        return self.certificates.tls_name if self._certs is not None else "dns.test"

    @property
    def spki_pin(self) -> str:
        return self.certificates.spki_pin

    def client_ssl_context(self, alpn=None) -> ssl.SSLContext:
        """A client context trusting only this server's CA (``alpn=["h2"]`` for DoH)."""
        return client_ssl_context(self.certificates, alpn)

    def describe(self) -> dict:
        """Addresses, URLs and trust material as a JSON-ready dict."""
        return {
            "udp_address": list(self.udp_address),
            "tcp_address": list(self.tcp_address),
            "dot_address": list(self.dot_address),
            "doh_address": list(self.doh_address),
            "udp_url": self.udp_url,
            "tcp_url": self.tcp_url,
            "dot_url": self.dot_url,
            "doh_url": self.doh_url,
            "ca_file": self.ca_file,
            "tls_name": self.tls_name,
            "spki_pin": self.spki_pin,
        }

    # ------------------------------------------------------------------ connections

    @property
    def connections(self) -> int:
        """Stream connections open now (same as ``stats.connections_open``)."""
        return len(self._conns)

    async def close_all_connections(self, timeout: float = 1.0) -> None:
        """Close every open TCP/DoT/DoH connection (FIN; TLS sends close_notify first).

        Blackholed connections and TLS handshakes in progress are closed too; DoH
        connections get no GOAWAY (an abrupt close, as after a server restart).
        Waits up to ``timeout`` for them to be gone, then aborts the stragglers.
        The listeners stay open.
        """
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        waiters = [c.lost_future for c in conns if not c.lost_future.done()]
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
        late = [c for c in conns if not c.lost]
        for conn in late:
            conn.abort()
        waiters = [c.lost_future for c in late if not c.lost_future.done()]
        if waiters:
            await asyncio.wait(waiters, timeout=1.0)

    def blackhole_all_connections(self) -> None:
        """Make every open connection silent: nothing read, answered, written or closed.

        Simulates a NAT mapping dropped while a laptop slept. Connections opened
        afterwards behave normally; :meth:`close_all_connections` and
        :meth:`aclose` still end the silent ones.
        """
        for conn in list(self._conns):
            conn.blackhole()

    # ------------------------------------------------------------------ internals

    def _register(self, conn) -> bool:
        if self._state != "running":
            return False
        self._conns.add(conn)
        self.stats.connections_accepted[conn.kind] += 1
        self.stats.connections_open += 1
        return True

    def _unregister(self, conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self.stats.connections_open -= 1

    def _internal_error(self, exc: BaseException) -> None:
        self.stats.internal_errors += 1
        log.error("dotproxy.testing: internal error", exc_info=exc)

    def _sni_callback(self, ssl_object, server_name, context):
        if self.faults.tls_fail:
            self.stats.tls_fail_injected += 1
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    def _call_answer(self, query: bytes):
        try:
            return self.answer(query)
        except Exception as exc:
            return self._answer_failed(query, exc)

    def _answer_failed(self, query: bytes, exc: BaseException) -> bytes | None:
        self.stats.answer_errors += 1
        self.last_answer_error = exc
        log.warning("dotproxy.testing: the answer function raised %r", exc)
        return _servfail(query)

    def _dispatch(self, query: bytes, kind: str, deliver: Callable[[bytes | None], None], owner: Owner) -> None:
        """Apply the per-query faults and, in time, hand ``deliver`` the reply (or ``None``)."""
        stats = self.stats
        faults = self.faults
        stats.queries[kind] += 1
        if faults.answer_probes and query[12:17] == _ROOT_NS_QUESTION:
            stats.probes_answered += 1
            delay = 0.0
        elif faults.stall or (faults.drop and random.random() < faults.drop):
            stats.queries_dropped += 1
            deliver(None)
            return
        else:
            delay = faults.latency
            if faults.jitter:
                delay += random.uniform(0.0, faults.jitter)
        result = self._call_answer(query)
        if result is not None and not isinstance(result, bytes):
            if isinstance(result, (bytearray, memoryview)):
                result = bytes(result)
            elif inspect.isawaitable(result):
                owner.spawn(self._finish_later(query, kind, result, delay, deliver))
                return
            else:
                result = self._answer_failed(query, TypeError(f"answer returned {type(result).__name__}"))
        if delay > 0:
            owner.call_later(delay, self._finish, kind, result, deliver)
        else:
            self._finish(kind, result, deliver)

    async def _finish_later(self, query: bytes, kind: str, awaitable, delay: float, deliver) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = self._answer_failed(query, exc)
        if result is not None and not isinstance(result, bytes):
            if isinstance(result, (bytearray, memoryview)):
                result = bytes(result)
            else:
                result = self._answer_failed(query, TypeError(f"answer returned {type(result).__name__}"))
        if delay > 0:
            await asyncio.sleep(delay)
        self._finish(kind, result, deliver)

    def _finish(self, kind: str, result: bytes | None, deliver) -> None:
        stats = self.stats
        if result is None:
            stats.queries_dropped += 1
            deliver(None)
            return
        faults = self.faults
        if kind == "udp" and faults.truncate_udp:
            result = truncated_udp(result)
            stats.truncated_sent += 1
        if faults.garbage and random.random() < faults.garbage:
            result = garbage()
            stats.garbage_sent += 1
        elif faults.wrong_id and random.random() < faults.wrong_id:
            result = wrong_id(result)
            stats.wrong_ids_sent += 1
        deliver(result)
