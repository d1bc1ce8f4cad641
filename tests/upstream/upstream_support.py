"""Helpers of the upstream tests: queries, answer checks, recording answer functions, leak checks."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from leaks import assert_nothing_left, fds, server_fds  # noqa: F401  (re-exported)
from loop_fixtures import after, now, wait_until  # noqa: F401  (re-exported)

from dotproxy.testing import ANSWER_A, ANSWER_AAAA, TcpRelay, TestUpstream, default_answer

OPT_PADDING = 12
OPT_KEEPALIVE = 11


def make_query(name: str = "example.com", rdtype: str = "A", *, id: int | None = None,  # noqa: A002
               edns: bool = False, do: bool = False) -> bytes:
    """Query bytes (no EDNS unless asked) with the given or a random ID."""
    msg = dns.message.make_query(name, rdtype, use_edns=0 if (edns or do) else None, want_dnssec=do)
    if id is not None:
        msg.id = id
    return msg.to_wire()


def check_answer(answer: bytes, query: bytes) -> dns.message.Message:
    """Assert ``answer`` answers ``query``: same ID, same question, NOERROR, the test upstream's data."""
    assert isinstance(answer, bytes)
    q = dns.message.from_wire(query)
    r = dns.message.from_wire(answer)
    assert r.id == q.id, (r.id, q.id)
    assert r.flags & dns.flags.QR
    assert [(rr.name, rr.rdtype, rr.rdclass) for rr in r.question] == [
        (rr.name, rr.rdtype, rr.rdclass) for rr in q.question
    ]
    assert r.rcode() == dns.rcode.NOERROR
    rdtype = q.question[0].rdtype
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        expected = ANSWER_A if rdtype == dns.rdatatype.A else ANSWER_AAAA
        assert [rd.address for rrset in r.answer for rd in rrset] == [expected]
    return r


def has_opt(message: bytes) -> bool:
    return dns.message.from_wire(message).edns >= 0


class Recorder:
    """An answer function that records every query the server received, then answers as the default does.

    ``hold``: queries whose first label is in it wait until :meth:`release` (an async answer).
    ``close_on``: queries whose first label is in it make the server close every connection instead of
    answering (at most ``close_times`` times; None: always).
    ``drop_once``: the first query with such a first label gets no answer.
    ``delay``: every other answer comes after this many seconds; ``max_inflight`` counts the overlap.
    """

    def __init__(self) -> None:
        self.queries: list[bytes] = []
        self.hold: set[str] = set()
        self._gate: asyncio.Event | None = None
        self.close_on: set[str] = set()
        self.close_times: int | None = 1
        self.drop_once: set[str] = set()
        self._dropped: set[str] = set()
        self.closed = 0
        self.server: TestUpstream | None = None
        self.inflight = 0
        self.max_inflight = 0
        self.delay = 0.0

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    def labels(self) -> list[str]:
        return [dns.message.from_wire(q).question[0].name.labels[0].decode() for q in self.queries]

    def __call__(self, query: bytes):
        self.queries.append(query)
        try:
            first = dns.message.from_wire(query).question[0].name.labels[0].decode()
        except Exception:
            first = ""
        if first in self.close_on and (self.close_times is None or self.closed < self.close_times):
            self.closed += 1
            asyncio.get_running_loop().call_soon(self._close_all)
            return None
        if first in self.drop_once and first not in self._dropped:
            self._dropped.add(first)
            return None
        if first in self.hold:
            if self._gate is None:
                self._gate = asyncio.Event()
            return self._held(query, self._gate)
        if self.delay:
            return self._delayed(query)
        return default_answer(query)

    def _close_all(self) -> None:
        # close_all_connections is a coroutine; its first step (the closes) runs at once.
        self.server._tasks.spawn(self.server.close_all_connections())

    async def _held(self, query: bytes, gate: asyncio.Event) -> bytes | None:
        await gate.wait()
        return default_answer(query)

    async def _delayed(self, query: bytes) -> bytes | None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
        return default_answer(query)


@contextlib.asynccontextmanager
async def no_leaks(server: TestUpstream | None = None, settle: float = 1.0):
    """Around a client's whole life: afterwards no new task and no new descriptor of the client remains.

    Measured after the server started (its own sockets are excluded, and so are the
    server ends of connections, which the test upstream owns).
    """
    tasks_before = asyncio.all_tasks()
    fds_before = fds()
    yield
    await assert_nothing_left(tasks_before, fds_before, server, settle=settle, after="aclose()")


@contextlib.asynccontextmanager
async def serve(*args, **kwargs):
    """A started TestUpstream; afterwards, no internal error of it."""
    up = TestUpstream(*args, **kwargs)
    await up.start()
    try:
        yield up
    finally:
        await up.aclose()
    assert up.stats.internal_errors == 0, up.last_answer_error


@contextlib.contextmanager
def refusing_port():
    """A loopback TCP port bound but not listening: connecting to it is refused at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


async def gather_outcomes(coros) -> list:
    """Results or exceptions, in order (never raises a query's own error)."""
    return await asyncio.gather(*coros, return_exceptions=True)


def keepalive_answer(timeout_units: int):
    """An answer function adding an RFC 7828 edns-tcp-keepalive option (units of 100 ms) to every answer."""

    def answer(query: bytes) -> bytes | None:
        response = default_answer(query)
        if response is None:
            return None
        m = dns.message.from_wire(response)
        q = dns.message.from_wire(query)
        if q.edns < 0:
            return response
        m.use_edns(0, options=[dns.edns.GenericOption(OPT_KEEPALIVE, timeout_units.to_bytes(2, "big"))])
        return m.to_wire()

    return answer


# --------------------------------------------------------------------------- clients

URL_ATTR = {"dot": "dot_url", "doh": "doh_url", "tcp": "tcp_url", "udp": "udp_url"}
_DEFAULT = object()


@contextlib.asynccontextmanager
async def client(server: TestUpstream, scheme: str = "dot", *, url: str | None = None, ca_file=_DEFAULT,
                 **options):
    """``connect()`` to ``server``; ``aclose()`` afterwards, then check that nothing of the client is left."""
    from dotproxy.upstream import connect

    if url is None:
        url = getattr(server, URL_ATTR[scheme])
    if ca_file is _DEFAULT:
        ca_file = server.ca_file if url.startswith(("tls:", "https:")) else None
    async with no_leaks(server):
        up = connect(url, ca_file=ca_file, **options)
        try:
            yield up
        finally:
            await up.aclose()

@contextlib.asynccontextmanager
async def through_relay(server: TestUpstream, scheme: str, **options):
    """A pooled client of ``server`` whose every connection passes a
    :class:`~dotproxy.testing.TcpRelay` (a path that can go silent): yields ``(client, relay)``;
    afterwards nothing of either is left."""
    from dotproxy.upstream import connect

    target = server.dot_address if scheme == "dot" else server.doh_address
    async with no_leaks(server):
        async with TcpRelay(target) as relay:
            url = (f"tls://127.0.0.1:{relay.port}#dns.test" if scheme == "dot"
                   else f"https://127.0.0.1:{relay.port}/dns-query")
            up = connect(url, ca_file=server.ca_file, **options)
            try:
                yield up, relay
            finally:
                await up.aclose()


class _TCPConnectionsAccepted:
    """``relayed[0]``: the TCP connections the test upstream accepted (its UDP and TCP share a port)."""

    def __init__(self, server: TestUpstream) -> None:
        self._server = server

    def __getitem__(self, index: int) -> int:
        assert index == 0
        return self._server.stats.connections_accepted["tcp"]


@contextlib.asynccontextmanager
async def serve_udp_and_tcp(*args, **kwargs):
    """A started TestUpstream whose TCP listens on its UDP port's number, as a real
    resolver's does, so a UDP upstream's TC=1 retry over TCP reaches it: yields
    ``(server, tcp_connections)``; ``tcp_connections[0]`` counts TCP connections accepted."""
    async with serve(*args, **kwargs) as server:
        assert server.tcp_address[1] == server.udp_address[1]
        yield server, _TCPConnectionsAccepted(server)
