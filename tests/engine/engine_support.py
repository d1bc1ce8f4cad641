"""Helpers of the engine tests: an engine in front of a test upstream, real loopback clients, checks.

``engine_env(...)`` starts a :class:`TestUpstream`, an :class:`Engine` forwarding to it
(DoT by default) and, unless ``listen=False``, the engine's UDP and TCP listeners on a
free loopback port. On the way out it stops the engine and checks that no task and no
file descriptor the engine made is left (the test upstream's own sockets excluded),
and that the test upstream saw no internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dotproxy.engine import Engine, EngineConfig
from dns_checks import check_answer  # noqa: F401  (re-exported)
from leaks import assert_nothing_left, fds, server_fds  # noqa: F401  (re-exported)
from loop_fixtures import now, wait_until  # noqa: F401  (re-exported)

from dotproxy.testing import TestUpstream, default_answer

EDE_TIMEOUT = 22  # RFC 8914 "No Reachable Authority": the deadline passed
EDE_NETWORK = 23  # RFC 8914 "Network Error": the upstream could not be reached

URL_ATTR = {"dot": "dot_url", "doh": "doh_url", "tcp": "tcp_url", "udp": "udp_url"}


# --------------------------------------------------------------------------- messages


def make_query(name: str = "example.com", rdtype: str = "A", *, id: int | None = None,  # noqa: A002
               edns: bool = False, payload: int = 1232) -> bytes:
    """Query bytes (no EDNS unless asked) with the given or a random ID."""
    if edns:
        msg = dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
    else:
        msg = dns.message.make_query(name, rdtype, use_edns=False)
    if id is not None:
        msg.id = id
    return msg.to_wire()


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def ede_codes(m: dns.message.Message) -> list[int]:
    return [o.code for o in m.options if o.otype == dns.edns.EDE]


def check_error(answer: bytes, query: bytes, rcode: int, ede: int | None = None) -> dns.message.Message:
    """``answer`` is an error answer to ``query`` with ``rcode`` (and, when given, that EDE code)."""
    q = dns.message.from_wire(query)
    r = dns.message.from_wire(answer)
    assert r.id == q.id, (r.id, q.id)
    assert r.flags & dns.flags.QR
    assert r.rcode() == rcode, (dns.rcode.to_text(r.rcode()), dns.rcode.to_text(rcode))
    assert not r.answer
    if ede is not None:
        assert ede_codes(r) == [ede], r.options
    return r


def rcode_of(answer: bytes) -> int:
    """The 4-bit header rcode (no parsing beyond the header: works on FORMERR answers to junk too)."""
    return answer[3] & 0x0F


def txt_answer(count: int, size: int = 30):
    """An answer function: names starting with ``big`` get ``count`` TXT strings of ``size`` bytes."""

    def answer(query: bytes):
        q = dns.message.from_wire(query)
        name = q.question[0].name
        if name.labels and name.labels[0].startswith(b"big"):
            r = dns.message.make_response(q)
            rrset = dns.rrset.from_text_list(
                name, 300, dns.rdataclass.IN, dns.rdatatype.TXT,
                [f'"{i:04d}{"x" * (size - 4)}"' for i in range(count)],
            )
            r.answer.append(rrset)
            return r.to_wire(max_size=65535)
        return default_answer(query)

    return answer


# --------------------------------------------------------------------------- leaks


async def check_no_leaks(tasks_before: set, fds_before: set[str], server: TestUpstream | None,
                         settle: float = 1.0) -> None:
    await assert_nothing_left(tasks_before, fds_before, server, settle=settle, after="engine.stop()")


# --------------------------------------------------------------------------- the engine under test


@dataclass
class Env:
    up: TestUpstream
    engine: Engine
    address: tuple[str, int] | None

    @property
    def stats(self):
        return self.engine.stats


@contextlib.asynccontextmanager
async def engine_env(*, faults=None, answer=None, listen: bool = True, scheme: str = "dot",
                     upstreams=None, stop_grace: float = 0.0, **config):
    """A test upstream and an engine forwarding to it; afterwards: no task, no fd of the engine left.

    ``upstreams``: a function ``up -> tuple of URLs`` (default: the test upstream's ``scheme`` URL).
    ``config``: further :class:`EngineConfig` fields.
    """
    async with TestUpstream(answer=answer, faults=faults) as up:
        tasks_before = asyncio.all_tasks()
        fds_before = fds()
        urls = tuple(upstreams(up)) if upstreams is not None else (getattr(up, URL_ATTR[scheme]),)
        engine = Engine(EngineConfig(upstreams=urls, ca_file=up.ca_file, **config))
        ok = False
        try:
            await engine.start()
            address = await engine.listen("127.0.0.1", 0) if listen else None
            yield Env(up, engine, address)
            ok = True
        finally:
            await engine.stop(grace=stop_grace)
        if ok:
            await check_no_leaks(tasks_before, fds_before, up)
            assert engine.flows == 0, engine.flows
    assert up.stats.internal_errors == 0, up.last_answer_error


# --------------------------------------------------------------------------- clients


class _UdpClientProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, float]] = []
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((data, self.loop.time()))
        self.changed.set()

    def error_received(self, exc) -> None:  # pragma: no cover - loopback
        pass


class UdpClient:
    """A UDP client socket: send queries, collect every datagram that comes back."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _UdpClientProtocol) -> None:
        self.transport = transport
        self.protocol = protocol

    @property
    def received(self) -> list[bytes]:
        return [d for d, _ in self.protocol.received]

    @property
    def times(self) -> list[float]:
        return [t for _, t in self.protocol.received]

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[bytes]:
        """Wait until ``count`` datagrams arrived in all; fail after ``timeout``."""
        async with asyncio.timeout(timeout):
            while len(self.protocol.received) < count:
                self.protocol.changed.clear()
                await self.protocol.changed.wait()
        return self.received

    async def ask(self, data: bytes, timeout: float = 3.0) -> bytes:
        before = len(self.protocol.received)
        self.send(data)
        return (await self.wait_for(before + 1, timeout))[before]


@contextlib.asynccontextmanager
async def udp_client(address: tuple[str, int]):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_UdpClientProtocol, remote_addr=address)
    try:
        yield UdpClient(transport, protocol)
    finally:
        transport.close()
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def tcp_client(address: tuple[str, int], nodelay: bool = True):
    reader, writer = await asyncio.open_connection(*address)
    if nodelay:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_frame(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(2)
        return await reader.readexactly(struct.unpack("!H", header)[0])


async def read_eof(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything until the server closes (reset counts as closed); fails after ``timeout``."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""






@contextlib.contextmanager
def refusing_port():
    """A loopback TCP port bound but not listening: connecting to it is refused at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()
