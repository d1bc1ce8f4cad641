"""dotproxy.testing.TestUpstream: every transport, every fault knob, clean shutdown.

Every async test runs twice, under the default asyncio loop and under uvloop
(``run`` fixture), with a loop exception handler that fails the test on any
"Task exception was never retrieved"-style report. ``serve()`` starts an upstream
and, after ``aclose()``, checks that no task and no file descriptor is left.

Clients are real ones where they exist (dnspython's ``asyncquery.udp/.tcp/.tls``);
DoH uses the small raw HTTP/2 client below (dnspython's DoH needs httpx, which is
not a dependency).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import pathlib
import socket
import ssl
import struct
import subprocess
import sys
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from dotproxy.testing import (
    ANSWER_A,
    ANSWER_AAAA,
    Faults,
    TestUpstream,
    default_answer,
    make_certificates,
)
from dotproxy.testing.certs import server_ssl_context

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

LOOPS = ["asyncio", "uvloop"]
SHORT = 0.4  # how long "never answered" is waited for


# --------------------------------------------------------------------------- harness


@pytest.fixture(params=LOOPS)
def run(request):
    """``run(async_fn)``: run it on a fresh loop of the parametrised kind, strictly."""
    if request.param == "uvloop" and uvloop is None:  # pragma: no cover
        pytest.skip("uvloop is not installed")
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def _run(fn, timeout: float = 15.0):
        errors: list = []
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.get_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
            runner.run(_warm_up())
            runner.run(asyncio.wait_for(fn(), timeout))
            gc.collect()
            runner.run(asyncio.sleep(0))
        assert errors == [], errors

    return _run


async def _warm_up() -> None:
    # uvloop opens one /dev/null descriptor per loop on its first server; make
    # it exist before the fd snapshots.
    srv = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    srv.close()
    await srv.wait_closed()
    await asyncio.sleep(0)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def serve(*args, **kwargs):
    """A started TestUpstream; after it: no task, fd or open connection left."""
    tasks_before = asyncio.all_tasks()
    fds_before = _fds()
    up = TestUpstream(*args, **kwargs)
    await up.start()
    try:
        yield up
    finally:
        await up.aclose()
    assert up.stats.internal_errors == 0
    assert up.stats.connections_open == 0
    assert asyncio.all_tasks() == tasks_before
    assert _fds() - fds_before == set()


def query(name: str = "example.com", rdtype: str = "A", **kw) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)


def frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


async def read_frame(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(2), timeout)
    return await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), timeout)


@contextlib.asynccontextmanager
async def stream(up: TestUpstream, kind: str = "tcp"):
    """A raw TCP or DoT client connection: (reader, writer)."""
    if kind == "tcp":
        reader, writer = await asyncio.open_connection(*up.tcp_address)
    else:
        reader, writer = await asyncio.open_connection(
            *up.dot_address, ssl=up.client_ssl_context(), server_hostname=up.tls_name
        )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)


async def at_eof(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except (ConnectionError, ssl.SSLError):
        return True
    return data == b""


class UDPClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait(data)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, up: TestUpstream):
        transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
            cls, remote_addr=up.udp_address
        )
        proto.transport = transport
        try:
            yield proto
        finally:
            transport.close()
            await asyncio.sleep(0)

    async def ask(self, wire: bytes, timeout: float = 2.0) -> bytes:
        self.transport.sendto(wire)
        return await asyncio.wait_for(self.queue.get(), timeout)


class H2Client:
    """A small HTTP/2 client over TLS for the DoH tests (tolerates GOAWAY before answers)."""

    def __init__(self) -> None:
        self.responses: dict[int, asyncio.Future] = {}
        self.partial: dict[int, dict] = {}
        self.data_frame_sizes: list[int] = []
        self.goaway_last_stream_id: int | None = None
        self.remote_settings: dict = {}
        self.settings_seen = asyncio.Event()
        self.closed = asyncio.Event()
        self._buf = b""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, up: TestUpstream, initial_window: int | None = None, alpn=("h2",)):
        self = cls()
        self.up = up
        self.reader, self.writer = await asyncio.open_connection(
            *up.doh_address, ssl=up.client_ssl_context(alpn=list(alpn)), server_hostname=up.tls_name
        )
        self.alpn = self.writer.get_extra_info("ssl_object").selected_alpn_protocol()
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        if initial_window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True,
                initial_values={
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                },
            )
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        task = asyncio.create_task(self._read())  # owned here: cancelled and awaited below
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2.0)

    def _frames(self, data: bytes) -> bytes:
        """Split off GOAWAY frames (h2 would refuse every frame after one)."""
        self._buf += data
        out = []
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + length:
                break
            f, self._buf = self._buf[: 9 + length], self._buf[9 + length :]
            if f[3] == 0x7:
                self.goaway_last_stream_id = int.from_bytes(f[9:13], "big") & 0x7FFFFFFF
            else:
                out.append(f)
        return b"".join(out)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for ev in self.conn.receive_data(self._frames(data)):
                    self._event(ev)
                self.writer.write(self.conn.data_to_send())
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            for fut in self.responses.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
                    fut.exception()  # an unanswered request may legitimately go unread

    def _event(self, ev) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.remote_settings.update({k: v.new_value for k, v in ev.changed_settings.items()})
            self.settings_seen.set()
        elif isinstance(ev, h2.events.ResponseReceived):
            self.partial[ev.stream_id] = {"headers": dict(ev.headers), "body": b""}
        elif isinstance(ev, h2.events.DataReceived):
            self.data_frame_sizes.append(len(ev.data))
            self.partial[ev.stream_id]["body"] += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            fut = self.responses.get(ev.stream_id)
            if fut is not None and not fut.done():
                fut.set_result(self.partial.pop(ev.stream_id))
        elif isinstance(ev, h2.events.StreamReset):
            fut = self.responses.get(ev.stream_id)
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionResetError(f"stream reset: {ev.error_code!r}"))

    def send(self, method: str, path: str, body: bytes = b"", headers=()) -> asyncio.Future:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"https"),
            (b":authority", b"dns.test"),
            *headers,
        ]
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            self._send_body(sid, body)
        self.responses[sid] = asyncio.get_running_loop().create_future()
        return self.responses[sid]

    def _send_body(self, sid: int, body: bytes) -> None:
        # Small bodies: fits in the initial windows of the tests that use it.
        self.conn.send_data(sid, body, end_stream=True)

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def post(self, wire: bytes, ctype: bytes = b"application/dns-message") -> asyncio.Future:
        return self.send("POST", "/dns-query", wire, [(b"content-type", ctype)])

    def get(self, wire: bytes) -> asyncio.Future:
        b64 = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
        return self.send("GET", f"/dns-query?dns={b64}")

    async def ask(self, fut: asyncio.Future, timeout: float = 3.0) -> dict:
        self.flush()
        return await asyncio.wait_for(fut, timeout)


def a_addresses(msg: dns.message.Message) -> list[str]:
    return [rd.address for rrset in msg.answer for rd in rrset]


# --------------------------------------------------------------------------- default answer


def test_default_answer_shapes():
    q = query("Example.COM", "A", use_edns=0)
    q.flags |= dns.flags.CD
    r = dns.message.from_wire(default_answer(q.to_wire()))
    assert r.id == q.id and r.flags & dns.flags.QR and r.flags & dns.flags.RA and r.flags & dns.flags.RD
    assert r.flags & dns.flags.CD
    assert not r.flags & dns.flags.AA
    assert r.question[0].name == q.question[0].name
    assert r.answer[0].ttl == 300 and a_addresses(r) == [ANSWER_A]
    assert r.edns == 0 and r.payload == 1232

    r = dns.message.from_wire(default_answer(query("example.com", "AAAA", use_edns=False).to_wire()))
    assert a_addresses(r) == [ANSWER_AAAA] and r.edns == -1

    q = query("example.com", "MX", want_dnssec=True)
    r = dns.message.from_wire(default_answer(q.to_wire()))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    soa = r.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 300 and soa[0].minimum == 60
    assert r.ednsflags & dns.flags.DO

    for name in ("nxdomain.test", "a.b.NXDOMAIN.test"):
        r = dns.message.from_wire(default_answer(query(name, "A").to_wire()))
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
        assert r.authority[0].name == dns.name.from_text("nxdomain.test")
    r = dns.message.from_wire(default_answer(query("notnxdomain.test", "A").to_wire()))
    assert r.rcode() == dns.rcode.NOERROR and a_addresses(r) == [ANSWER_A]

    q = query("example.com", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(default_answer(q.to_wire())).rcode() == dns.rcode.NOTIMP

    # Unparsable with a header: FORMERR; no header, or a response: no answer.
    bad = query().to_wire()[:-3]
    assert dns.message.from_wire(default_answer(bad)).rcode() == dns.rcode.FORMERR
    assert default_answer(b"\x00\x01\x02") is None
    assert default_answer(dns.message.make_response(query()).to_wire()) is None

    # A repeated question (the cache) keeps each query's own ID.
    q1, q2 = query("cache.example"), query("cache.example")
    q2.id = (q1.id + 1) & 0xFFFF
    assert default_answer(q1.to_wire())[:2] == q1.to_wire()[:2]
    assert default_answer(q2.to_wire())[:2] == q2.to_wire()[:2]


def test_certificates(tmp_path):
    certs = make_certificates(tmp_path)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pathlib.Path(certs.cert_file).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"dns.test", "localhost"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert len(base64.b64decode(certs.spki_pin)) == 32
    ctx = server_ssl_context(certs)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_only_loopback():
    with pytest.raises(ValueError):
        TestUpstream(host="0.0.0.0")
    assert TestUpstream.__test__ is False


# --------------------------------------------------------------------------- transports


def test_every_transport_answers(run):
    async def body():
        async with serve() as up:
            assert up.udp_url == "udp://%s:%d" % up.udp_address
            assert up.tcp_url == "tcp://%s:%d" % up.tcp_address
            assert up.dot_url == "tls://%s:%d#dns.test" % up.dot_address
            assert up.doh_url == "https://%s:%d/dns-query" % up.doh_address
            assert up.tls_name == "dns.test" and os.path.exists(up.ca_file)
            host = up.host
            q = query(use_edns=0)
            r = await dns.asyncquery.udp(q, host, port=up.udp_address[1], timeout=2)
            assert a_addresses(r) == [ANSWER_A] and r.edns == 0
            r = await dns.asyncquery.tcp(query("example.com", "AAAA"), host, port=up.tcp_address[1], timeout=2)
            assert a_addresses(r) == [ANSWER_AAAA]
            ctx = up.client_ssl_context()
            r = await dns.asyncquery.tls(
                query("x.nxdomain.test"), host, port=up.dot_address[1], timeout=2,
                ssl_context=ctx, server_hostname=up.tls_name,
            )
            assert r.rcode() == dns.rcode.NXDOMAIN

            async with H2Client.open(up) as c:
                assert c.alpn == "h2"
                q = query()
                resp = await c.ask(c.post(q.to_wire()))
                assert resp["headers"][b":status"] == b"200"
                assert resp["headers"][b"content-type"] == b"application/dns-message"
                assert resp["headers"][b"cache-control"] == b"max-age=300"
                r = dns.message.from_wire(resp["body"])
                assert r.id == q.id and a_addresses(r) == [ANSWER_A]
                q = query("example.com", "TXT")
                q.id = 0  # RFC 8484 section 4.1
                resp = await c.ask(c.get(q.to_wire()))
                assert resp["headers"][b":status"] == b"200"
                assert resp["headers"][b"cache-control"] == b"max-age=60"  # NODATA: SOA minimum
                assert dns.message.from_wire(resp["body"]).authority[0].rdtype == dns.rdatatype.SOA

            s = up.stats
            assert s.queries == {"udp": 1, "tcp": 1, "dot": 1, "doh": 2}
            assert s.replies == {"udp": 1, "tcp": 1, "dot": 1, "doh": 2}
            assert s.replies_sent == 5
            assert s.connections_accepted == {"tcp": 1, "dot": 1, "doh": 1}
            assert s.tls_handshakes == 2 and s.doh_streams == 2
            assert s.snapshot()["queries"]["doh"] == 2
            json.dumps(s.snapshot())

    run(body)


def test_ipv6_loopback(run):
    if not socket.has_ipv6:  # pragma: no cover
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:  # pragma: no cover
        pytest.skip("no ::1")

    async def body():
        async with serve(host="::1") as up:
            assert up.doh_url.startswith("https://[::1]:")
            r = await dns.asyncquery.udp(query(), "::1", port=up.udp_address[1], timeout=2)
            assert a_addresses(r) == [ANSWER_A]
            r = await dns.asyncquery.tls(
                query(), "::1", port=up.dot_address[1], timeout=2,
                ssl_context=up.client_ssl_context(), server_hostname=up.tls_name,
            )
            assert a_addresses(r) == [ANSWER_A]

    run(body)


@pytest.mark.parametrize("kind", ["tcp", "dot"])
def test_stream_pipelining_and_partial_reads(run, kind):
    async def body():
        async with serve() as up, stream(up, kind) as (reader, writer):
            queries = [query(f"q{i}.example") for i in range(4)]
            data = b"".join(frame(q.to_wire()) for q in queries)
            for i in range(0, len(data), 7):  # a message split across many reads
                writer.write(data[i : i + 7])
                await writer.drain()
                await asyncio.sleep(0)
            ids = set()
            for _ in queries:
                r = dns.message.from_wire(await read_frame(reader))
                assert a_addresses(r) == [ANSWER_A]
                ids.add(r.id)
            assert ids == {q.id for q in queries}
            assert up.stats.queries[kind] == 4

    run(body)


def test_custom_answers_sync_async_none(run):
    async def answer(wire: bytes):
        q = dns.message.from_wire(wire)
        name = q.question[0].name.to_text()
        if name.startswith("none."):
            return None
        if name.startswith("boom."):
            raise RuntimeError("boom")
        if name.startswith("slow."):
            await asyncio.sleep(0.3)
        return default_answer(wire)

    async def body():
        async with serve(answer=answer) as up, stream(up) as (reader, writer):
            slow, fast, none, boom = (query(n) for n in ("slow.test", "fast.test", "none.test", "boom.test"))
            writer.write(b"".join(frame(q.to_wire()) for q in (slow, none, fast, boom)))
            first = dns.message.from_wire(await read_frame(reader))
            second = dns.message.from_wire(await read_frame(reader))
            third = dns.message.from_wire(await read_frame(reader))
            # Pipelined answers are not serialised behind the slow one.
            assert {first.id, second.id} == {fast.id, boom.id}
            assert third.id == slow.id
            boom_r = first if first.id == boom.id else second
            assert boom_r.rcode() == dns.rcode.SERVFAIL
            assert isinstance(up.last_answer_error, RuntimeError)
            s = up.stats
            assert s.answer_errors == 1 and s.queries_dropped == 1

            up.answer = lambda wire: default_answer(wire)  # plain function, swapped live
            writer.write(frame(query().to_wire()))
            assert a_addresses(dns.message.from_wire(await read_frame(reader))) == [ANSWER_A]

    run(body)


# --------------------------------------------------------------------------- per-query faults


def test_latency_is_per_query_and_concurrent(run):
    async def body():
        async with serve(faults=Faults(latency=0.2, jitter=0.05)) as up, stream(up) as (reader, writer):
            queries = [query(f"l{i}.example") for i in range(5)]
            t0 = time.monotonic()
            writer.write(b"".join(frame(q.to_wire()) for q in queries))
            for _ in queries:
                await read_frame(reader)
            elapsed = time.monotonic() - t0
            assert 0.19 <= elapsed < 0.2 * len(queries)  # delayed, but not one after another
            t0 = time.monotonic()
            await dns.asyncquery.udp(query(), up.host, port=up.udp_address[1], timeout=2)
            assert time.monotonic() - t0 >= 0.19

    run(body)


def test_reorder_reverses_batches(run):
    async def body():
        async with serve(faults=Faults(reorder=True)) as up, stream(up) as (reader, writer):
            queries = [query(f"r{i}.example") for i in range(4)]
            writer.write(b"".join(frame(q.to_wire()) for q in queries))
            got = [dns.message.from_wire(await read_frame(reader)).id for _ in queries]
            assert got == [q.id for q in reversed(queries)]

    run(body)


def test_drop_and_stall(run):
    async def body():
        async with serve(faults=Faults(drop=1.0)) as up:
            with pytest.raises(dns.exception.Timeout):
                await dns.asyncquery.udp(query(), up.host, port=up.udp_address[1], timeout=SHORT)
            assert up.stats.queries_dropped == 1 and up.stats.replies_sent == 0
            up.faults.drop = 0.0
            r = await dns.asyncquery.udp(query(), up.host, port=up.udp_address[1], timeout=2)
            assert a_addresses(r) == [ANSWER_A]

            up.faults.stall = True
            with pytest.raises(dns.exception.Timeout):
                await dns.asyncquery.tls(
                    query(), up.host, port=up.dot_address[1], timeout=SHORT,
                    ssl_context=up.client_ssl_context(), server_hostname=up.tls_name,
                )
            assert up.stats.tls_handshakes == 1  # the handshake did finish
            async with H2Client.open(up) as c:
                fut = c.post(query().to_wire())
                c.flush()
                await asyncio.wait_for(c.settings_seen.wait(), 2)
                await asyncio.sleep(0.1)
                assert not fut.done()
            assert up.stats.queries_dropped == 3

    run(body)


def test_wrong_id_and_garbage(run):
    async def body():
        async with serve(faults=Faults(wrong_id=1.0)) as up:
            q = query()
            async with UDPClient.open(up) as udp:
                reply = await udp.ask(q.to_wire())
                assert struct.unpack("!H", reply[:2])[0] != q.id
                assert dns.message.from_wire(reply).question[0].name == q.question[0].name
            async with stream(up) as (reader, writer):
                writer.write(frame(q.to_wire()))
                reply = await read_frame(reader)
                assert struct.unpack("!H", reply[:2])[0] != q.id
                up.faults.wrong_id = 0.0
                up.faults.garbage = 1.0
                writer.write(frame(q.to_wire()))
                reply = await read_frame(reader)  # still framed correctly
                assert 1 <= len(reply) <= 64
                with pytest.raises(dns.exception.DNSException):
                    r = dns.message.from_wire(reply)
                    assert r.id != q.id  # pragma: no cover - 2**-16 chance to parse
                    raise dns.exception.FormError
            assert up.stats.wrong_ids_sent == 2 and up.stats.garbage_sent == 1

    run(body)


def test_truncate_udp(run):
    async def body():
        async with serve(faults=Faults(truncate_udp=True)) as up:
            r = await dns.asyncquery.udp(query(use_edns=0), up.host, port=up.udp_address[1], timeout=2)
            assert r.flags & dns.flags.TC and not r.answer
            r = await dns.asyncquery.tcp(query(), up.host, port=up.tcp_address[1], timeout=2)
            assert not r.flags & dns.flags.TC and a_addresses(r) == [ANSWER_A]
            assert up.stats.truncated_sent == 1

    run(body)


# --------------------------------------------------------------------------- connection faults


@pytest.mark.parametrize("kind", ["tcp", "dot"])
def test_close_after(run, kind):
    async def body():
        async with serve(faults=Faults(close_after=2)) as up, stream(up, kind) as (reader, writer):
            writer.write(b"".join(frame(query(f"c{i}.example").to_wire()) for i in range(3)))
            await read_frame(reader)
            await read_frame(reader)
            assert await at_eof(reader)
            assert up.stats.connections_closed_by_server == 1
            assert up.stats.replies[kind] == 2

    run(body)


def test_idle_close(run):
    async def body():
        async with serve(faults=Faults(idle_close=0.2)) as up, stream(up) as (reader, writer):
            t0 = time.monotonic()
            await asyncio.sleep(0.1)
            writer.write(frame(query().to_wire()))
            await read_frame(reader)
            assert await at_eof(reader)
            assert time.monotonic() - t0 >= 0.28  # 0.1 + 0.2 after the query
            assert up.stats.connections_closed_by_server == 1

    run(body)


def test_tls_fail(run):
    async def body():
        async with serve(faults=Faults(tls_fail=True)) as up:
            with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
                await dns.asyncquery.tls(
                    query(), up.host, port=up.dot_address[1], timeout=2,
                    ssl_context=up.client_ssl_context(), server_hostname=up.tls_name,
                )
            with pytest.raises((ssl.SSLError, ConnectionError)):
                async with H2Client.open(up):
                    pass  # pragma: no cover
            assert up.stats.tls_fail_injected == 2
            assert up.stats.tls_handshake_failures == 2
            assert up.stats.tls_handshakes == 0
            up.faults.tls_fail = False
            r = await dns.asyncquery.tls(
                query(), up.host, port=up.dot_address[1], timeout=2,
                ssl_context=up.client_ssl_context(), server_hostname=up.tls_name,
            )
            assert a_addresses(r) == [ANSWER_A]

    run(body)


def test_tls_session_resumption(run):
    def two_connections(up: TestUpstream) -> list[bool]:
        ctx = up.client_ssl_context()
        session = None
        reused = []
        for _ in range(2):
            with socket.create_connection(up.dot_address, timeout=3) as raw:
                with ctx.wrap_socket(raw, server_hostname=up.tls_name, session=session) as s:
                    s.sendall(frame(query().to_wire()))
                    s.recv(2)  # reading makes TLS 1.3 tickets arrive
                    s.recv(512)
                    reused.append(s.session_reused)
                    session = s.session
        return reused

    async def body():
        async with serve() as up:
            reused = await asyncio.to_thread(two_connections, up)
            assert reused == [False, True]
            assert up.stats.tls_handshakes == 2 and up.stats.tls_resumed == 1
            await asyncio.sleep(0.05)  # the server sees the closes

    run(body)


def test_tcp_half_close_gets_its_answers(run):
    async def body():
        async with serve(faults=Faults(latency=0.1)) as up, stream(up) as (reader, writer):
            queries = [query(f"h{i}.example") for i in range(2)]
            writer.write(b"".join(frame(q.to_wire()) for q in queries))
            writer.write_eof()  # RFC 7766 6.2.3: the answers still come, then the close
            ids = {dns.message.from_wire(await read_frame(reader)).id for _ in queries}
            assert ids == {q.id for q in queries}
            assert await at_eof(reader)
            assert up.stats.connections_closed_by_server == 0

    run(body)


def test_faults_and_stats_reset():
    f = Faults(latency=1.0, stall=True, close_after=3, goaway_before_answers=False)
    f.reset()
    assert f == Faults()
    up = TestUpstream()
    up.stats.queries["udp"] = 5
    up.stats.tls_handshakes = 2
    up.stats.connections_open = 1
    up.stats.reset()
    assert up.stats.queries["udp"] == 0 and up.stats.tls_handshakes == 0
    assert up.stats.connections_open == 1  # a gauge, not a counter
    with pytest.raises(RuntimeError):
        up.udp_address  # noqa: B018 - not started


# --------------------------------------------------------------------------- DoH


def test_doh_http_errors(run):
    async def body():
        async with serve() as up, H2Client.open(up) as c:
            wire = query().to_wire()
            futs = {
                415: c.post(wire, ctype=b"application/json"),
                400: c.send("GET", "/dns-query?dns=@@@not-base64"),
                404: c.send("POST", "/resolve", wire, [(b"content-type", b"application/dns-message")]),
                405: c.send("PUT", "/dns-query", wire, [(b"content-type", b"application/dns-message")]),
            }
            missing = c.send("GET", "/dns-query?name=example.com")
            c.flush()
            for status, fut in futs.items():
                assert (await c.ask(fut))["headers"][b":status"] == str(status).encode()
            assert (await c.ask(missing))["headers"][b":status"] == b"400"
            assert up.stats.http_errors_sent == 5 and up.stats.queries["doh"] == 0
            # The connection is still good.
            resp = await c.ask(c.get(wire))
            assert resp["headers"][b":status"] == b"200"

    run(body)


def test_doh_http_status_fault(run):
    async def body():
        async with serve(faults=Faults(http_status=429)) as up, H2Client.open(up) as c:
            resp = await c.ask(c.post(query().to_wire()))
            assert resp["headers"][b":status"] == b"429"
            assert resp["headers"][b"retry-after"] == b"1"
            up.faults.http_status_rate = 0.0
            resp = await c.ask(c.post(query().to_wire()))
            assert resp["headers"][b":status"] == b"200"
            assert up.stats.http_errors_sent == 1

    run(body)


def test_doh_flow_control_and_many_streams(run):
    async def body():
        async with serve() as up, H2Client.open(up, initial_window=16) as c:
            # 300 padded POSTs: ~150 KB, more than the 64 KiB connection window,
            # so the server must acknowledge what it reads; each answer is ~70
            # bytes against a 16 byte stream window, so it must respect ours.
            queries = [query(f"s{i}.example", use_edns=0, pad=468) for i in range(300)]
            futs = []
            for q in queries:
                futs.append(c.post(q.to_wire()))
                c.flush()
                await asyncio.sleep(0)
            replies = await asyncio.wait_for(asyncio.gather(*futs), 10)
            for q, resp in zip(queries, replies):
                assert resp["headers"][b":status"] == b"200"
                r = dns.message.from_wire(resp["body"])
                assert r.id == q.id and a_addresses(r) == [ANSWER_A]
            assert max(c.data_frame_sizes) <= 16
            assert up.stats.doh_streams == 300 and up.stats.replies["doh"] == 300

    run(body)


def test_doh_max_concurrent_streams(run):
    async def body():
        slow = asyncio.Event()

        async def answer(wire):
            await slow.wait()
            return default_answer(wire)

        async with serve(answer=answer, faults=Faults(max_concurrent_streams=7)) as up, H2Client.open(up) as c:
            await asyncio.wait_for(c.settings_seen.wait(), 2)
            assert c.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
            # A client ignoring the limit gets REFUSED_STREAM, not a dead connection.
            c.conn.remote_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
            )
            futs = [c.post(query(f"m{i}.example").to_wire()) for i in range(9)]
            c.flush()
            done = await asyncio.wait_for(asyncio.gather(*futs[7:], return_exceptions=True), 2)
            assert all(isinstance(e, ConnectionResetError) for e in done)
            slow.set()
            for fut in futs[:7]:
                assert (await c.ask(fut))["headers"][b":status"] == b"200"
            assert up.stats.doh_streams_refused == 2

    run(body)


@pytest.mark.parametrize("before", [True, False])
def test_doh_goaway_after(run, before):
    async def body():
        faults = Faults(goaway_after=2, goaway_before_answers=before)
        async with serve(faults=faults) as up, H2Client.open(up) as c:
            futs = [c.post(query(f"g{i}.example").to_wire()) for i in range(3)]
            c.flush()
            r1 = await c.ask(futs[0])
            r2 = await c.ask(futs[1])
            assert r1["headers"][b":status"] == r2["headers"][b":status"] == b"200"
            await asyncio.wait_for(c.closed.wait(), 2)  # then the server closes
            assert c.goaway_last_stream_id == 3  # streams 1 and 3 processed
            with pytest.raises(ConnectionError):
                futs[2].result()  # stream 5 was never answered
            s = up.stats
            assert s.goaways_sent == 1 and s.doh_streams_unprocessed == 1
            assert s.connections_closed_by_server == 1 and s.replies["doh"] == 2

    run(body)


def test_doh_http11_alpn_is_rejected(run):
    async def body():
        async with serve() as up:
            reader, writer = await asyncio.open_connection(
                *up.doh_address, ssl=up.client_ssl_context(alpn=["http/1.1"]), server_hostname=up.tls_name
            )
            writer.write(b"GET /dns-query?dns=AAA HTTP/1.1\r\nhost: dns.test\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 2)
            assert data.startswith(b"HTTP/1.1 505")
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    run(body)


# --------------------------------------------------------------------------- connection control


def test_close_all_connections(run):
    async def body():
        async with serve() as up:
            async with stream(up, "tcp") as (tr, tw), stream(up, "dot") as (dr, dw), H2Client.open(up) as c:
                await c.ask(c.post(query().to_wire()))
                for w, r in ((tw, tr), (dw, dr)):
                    w.write(frame(query().to_wire()))
                    await read_frame(r)
                assert up.stats.connections_open == 3
                await up.close_all_connections()
                assert up.stats.connections_open == 0
                assert await at_eof(tr) and await at_eof(dr)
                await asyncio.wait_for(c.closed.wait(), 2)
                assert up.stats.connections_closed_by_server == 3
                # Still listening.
                r = await dns.asyncquery.tcp(query(), up.host, port=up.tcp_address[1], timeout=2)
                assert a_addresses(r) == [ANSWER_A]

    run(body)


def test_blackhole_all_connections(run):
    async def body():
        async with serve() as up:
            async with stream(up, "tcp") as (tr, tw), stream(up, "dot") as (dr, dw), H2Client.open(up) as c:
                await c.ask(c.post(query().to_wire()))
                up.blackhole_all_connections()
                assert up.stats.connections_blackholed == 3
                tw.write(frame(query().to_wire()))
                dw.write(frame(query().to_wire()))
                fut = c.post(query().to_wire())
                c.flush()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(tr.read(1), SHORT)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(dr.read(1), 0.05)
                assert not fut.done() and not c.closed.is_set()
                assert up.stats.connections_open == 3
                # New connections are served normally.
                r = await dns.asyncquery.tcp(query(), up.host, port=up.tcp_address[1], timeout=2)
                assert a_addresses(r) == [ANSWER_A]
            await asyncio.sleep(0.05)
            # The clients went away; the silent server side did not notice.
            assert up.stats.connections_open == 3
            await up.close_all_connections(timeout=0.2)
            assert up.stats.connections_open == 0

    run(body)


def test_hostile_clients_do_not_hurt(run):
    async def body():
        async with serve() as up:
            victims = []
            # Garbage and abrupt resets on every stream listener.
            for addr in (up.tcp_address, up.dot_address, up.doh_address):
                for payload in (os.urandom(3000), b"\x00\x00\x00\x05abc", b"\x16\x03\x01\x02\x00\x01"):
                    r, w = await asyncio.open_connection(*addr)
                    w.write(payload)
                    await w.drain()
                    victims.append(w)
            # A half-finished TLS handshake, left hanging.
            r, w = await asyncio.open_connection(*up.dot_address)
            w.write(b"\x16\x03\x01\x00\x40")
            victims.append(w)
            # HTTP/2 nonsense after a good handshake.
            r2, w2 = await asyncio.open_connection(
                *up.doh_address, ssl=up.client_ssl_context(alpn=["h2"]), server_hostname=up.tls_name
            )
            w2.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(200))
            victims.append(w2)
            # UDP garbage.
            async with UDPClient.open(up) as udp:
                udp.transport.sendto(os.urandom(5))
                udp.transport.sendto(os.urandom(300))
            await asyncio.sleep(0.05)
            for w in victims[:4]:  # RST
                sock = w.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            for w in victims:
                w.close()
            await asyncio.sleep(0.05)
            # Everyone else is served as before.
            r = await dns.asyncquery.tls(
                query(), up.host, port=up.dot_address[1], timeout=2,
                ssl_context=up.client_ssl_context(), server_hostname=up.tls_name,
            )
            assert a_addresses(r) == [ANSWER_A]
            async with H2Client.open(up) as c:
                assert (await c.ask(c.post(query().to_wire())))["headers"][b":status"] == b"200"
            for w in victims:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 1)
            assert up.stats.internal_errors == 0

    run(body)


def test_aclose_with_work_in_flight(run):
    async def body():
        tasks_before = asyncio.all_tasks()
        fds_before = _fds()

        async def answer(wire):
            await asyncio.sleep(30)
            return default_answer(wire)

        up = TestUpstream(answer=answer, faults=Faults(latency=5.0))
        async with up:
            r, w = await asyncio.open_connection(*up.dot_address)  # never finishes TLS
            async with stream(up, "tcp") as (tr, tw), H2Client.open(up) as c:
                tw.write(frame(query().to_wire()))
                c.post(query().to_wire())
                c.flush()
                async with UDPClient.open(up) as udp:
                    udp.transport.sendto(query().to_wire())
                    await asyncio.sleep(0.1)
                    assert len(up._tasks) >= 3
                    await up.aclose()  # with everything still pending
                assert await at_eof(tr)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        assert asyncio.all_tasks() == tasks_before
        assert _fds() - fds_before == set()
        assert up.stats.connections_open == 0
        with pytest.raises(RuntimeError):
            await up.start()

    run(body)


# --------------------------------------------------------------------------- the command


def test_main_runs_in_its_own_process():
    proc = subprocess.Popen(
        [sys.executable, "-m", "dotproxy.testing", "--latency", "0.01", "--max-seconds", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        info = json.loads(proc.stdout.readline())
        assert info["tls_name"] == "dns.test" and os.path.exists(info["ca_file"])
        assert info["doh_url"].startswith("https://127.0.0.1:")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        q = query()
        sock.sendto(q.to_wire(), tuple(info["udp_address"]))
        r = dns.message.from_wire(sock.recv(512))
        sock.close()
        assert r.id == q.id and a_addresses(r) == [ANSWER_A]
        proc.stdin.close()  # stdin closing stops it
        assert proc.wait(10) == 0
        stats = json.loads(proc.stderr.read().decode().strip().splitlines()[-1])["stats"]
        assert stats["queries"]["udp"] == 1
        assert not os.path.exists(info["ca_file"])
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    bad = subprocess.run(
        [sys.executable, "-m", "dotproxy.testing", "--host", "192.0.2.1"],
        capture_output=True, timeout=30,
    )
    assert bad.returncode != 0 and b"loopback" in bad.stderr
