"""Standalone UDP and TCP listeners: sockets in, flows out.

One UDP socket is one flow (many endpoints); each TCP connection is a flow of its
own, closed when the client goes, when it stays idle, or when the engine stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from dotproxy import udpbatch
from dotproxy.flows.flow import DatagramSink, Flow

log = logging.getLogger("dotproxy.listeners")

FlowFactory = Callable[..., Flow]  # (kind, deliver, name=...) -> Flow


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, open_flow: FlowFactory, name: str) -> None:
        self._open_flow = open_flow
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.flow: Flow | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.flow = self._open_flow("udp", self._sendto, name=self.name)

    def _sendto(self, data: bytes, endpoint) -> None:
        self.transport.sendto(data, endpoint)

    def datagram_received(self, data: bytes, addr) -> None:
        self.flow.receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier answer: that client is gone; the socket serves the others.
        log.debug("%s: %s", self.name, exc)

    def connection_lost(self, exc) -> None:
        if self.flow is not None:
            self.flow.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Stop serving: the socket closes, then ``connection_lost`` closes the flow."""
        if self.transport is not None:
            self.transport.close()


# DOTPROXY_UDPBATCH_DIRECT=1: send the first answer of a loop iteration at once (uvloop clock ticks).
# Rig: CPU at 2,000/s back to the DatagramProtocol listener's, but ~8% less QPS per CPU-second at max.
_DIRECT = os.environ.get("DOTPROXY_UDPBATCH_DIRECT", "0") not in ("", "0")


class BatchUdpListener(DatagramSink):
    """The UDP listener on batched syscalls (Linux): recvmmsg when the socket is readable, and the
    answers of one loop iteration in one sendmmsg (flushed by ``call_soon``), except an answer that
    leaves its flow with no query in flight: no other answer can join it, so it goes at once.

    Endpoints handed to the flow are raw sockaddr bytes (opaque to it). A full socket buffer keeps
    the unsent answers and waits for writability; any other send error drops that one answer.
    """

    # Batches read per readable callback before giving the loop back. One: the queries of a batch
    # leave upstream and the answers that came meanwhile go out before more are read. Rig, DoT at
    # max load, against kresd in the same runs: with 4, p99 6.0-8.2 ms (kresd 6.5-7.8) and 1.5-2.1x
    # kresd's queries per CPU-second; with 1, p99 4.4-6.5 ms (kresd 7.2-7.5) and 2.2-2.3x.
    _READS_PER_WAKEUP = 1

    def __init__(self, open_flow: FlowFactory, name: str, sock: socket.socket) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self._fd = sock.fileno()
        self._out: list[tuple[bytes, bytes]] = []
        self._flush_pending = False
        self._writing = False  # waiting for writability
        self._closing = False
        self._reading = False  # answers made while a batch is read (FORMERR, REFUSED) wait for the batch
        self.send_errors = 0
        self.recv_errors = 0
        self.closed = self.loop.create_future()
        self._time = self.loop.time
        self._last_direct = -1.0
        self.flow = open_flow("udp", self, name=name)  # a DatagramSink: the flow calls send()
        self.loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        recv_many = udpbatch.recv_many
        flow = self.flow
        # An engine's flow is called as a C method when compiled; anything else that
        # open_flow returned (a test's double) through Python.
        engine_flow = flow if type(flow) is Flow else None
        self._reading = True
        try:
            for _ in range(self._READS_PER_WAKEUP):
                try:
                    batch = recv_many(self.sock, udpbatch.MAX_BATCH)
                except OSError as e:
                    self.recv_errors += 1
                    log.debug("%s: %s", self.name, e)
                    return
                for data, endpoint in batch:
                    if engine_flow is not None:
                        engine_flow.receive(data, endpoint)
                    else:
                        flow.receive(data, endpoint)
                    if self._closing:
                        return
                if len(batch) < udpbatch.MAX_BATCH:
                    return
        finally:
            self._reading = False

    def send(self, data: bytes, endpoint) -> None:
        if self._closing:
            raise ConnectionError("the UDP listener is closed")
        if type(endpoint) is not bytes:
            endpoint = udpbatch.tuple_to_endpoint(endpoint)
        if not self._out and not self._writing and not self._reading and self._at_once():
            try:
                if udpbatch.send_many(self.sock, [(data, endpoint)]):
                    return
            except OSError as e:
                self.send_errors += 1
                log.debug("%s: %s", self.name, e)
                return
        self._out.append((data, endpoint))
        if not self._flush_pending and not self._writing:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _at_once(self) -> bool:
        """Whether an answer with none queued before it should go now rather than wait for this loop
        iteration's others: when its flow has nothing else in flight (most answers at low rates; the
        call_soon and its loop pass it saves were 6% of the engine's user-space instructions per query,
        bench/instructions_per_query.py), or, with DOTPROXY_UDPBATCH_DIRECT=1, whenever the loop's
        clock has ticked since the last one."""
        flow = self.flow
        if type(flow) is Flow:
            engine_flow = flow  # typed when compiled: its count is read in C
            if engine_flow._count == 0:
                return True
        if _DIRECT:
            now = self._time()
            if now != self._last_direct:
                self._last_direct = now
                return True
        return False

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        send_many = udpbatch.send_many
        while out:
            try:
                n = send_many(self.sock, out)
            except OSError as e:  # this answer cannot go (a bad or unreachable endpoint): the others can
                self.send_errors += 1
                log.debug("%s: %s", self.name, e)
                n = 1
            if n == 0:  # the socket buffer is full: carry on when it drains
                if not self._writing and not self._closing:
                    self._writing = True
                    self.loop.add_writer(self._fd, self._writable)
                return
            del out[:n]
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self._fd)

    def _writable(self) -> None:
        self._flush()

    def close(self) -> None:
        """Send what is queued (best effort), stop reading, close the socket and the flow."""
        if self._closing:
            return
        self.loop.remove_reader(self._fd)
        if self._out:
            self._flush()
        self._closing = True
        if self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()
        self.flow.close()
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(None)


def open_batch_udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (the family the address asks for)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                               flags=socket.AI_NUMERICHOST if _numeric(host) else 0)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _numeric(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


class TcpConnection(asyncio.Protocol):
    """One client TCP connection: a flow, an idle timer, and back-pressure on a busy pipeline."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._paused = False  # too many queries in flight
        self._write_paused = False  # the client does not read its answers
        self._eof = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        listener = self.listener
        if len(listener.connections) >= listener.max_connections:
            listener.refused += 1
            transport.abort()
            return
        listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.flow = listener.open_flow("tcp", self._write, name=f"{listener.name} {peer}",
                                       on_close=self._flow_closed)
        self._idle_handle = self.loop.call_at(self.last_activity + listener.idle_timeout, self._idle_check)

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("client connection is closed")
        self.transport.write(data)
        self.last_activity = self.loop.time()
        self._after_answer()

    def _after_answer(self) -> None:
        flow = self.flow
        if self._paused and flow.in_flight <= self.listener.max_pipeline // 2:
            self._paused = False
            if not self._write_paused:
                self.transport.resume_reading()
        if self._eof and flow.in_flight == 0:  # that was the last answer the client waits for
            self.loop.call_soon(self._close_if_done)

    def _close_if_done(self) -> None:
        if self.flow is not None and self.flow.in_flight == 0 and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.flow.receive(data)
        if not self._paused and self.flow.in_flight >= self.listener.max_pipeline:
            self._paused = True  # the client pipelines faster than upstreams answer: stop reading
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        # The client reads slower than it asks: stop reading its queries until it catches up.
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._paused:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        # The client has sent all it will (RFC 7766 section 6.2.4): answer what it asked, then close.
        self._eof = True
        if self.flow is None or self.flow.in_flight == 0:
            return False
        return True

    def _idle_check(self) -> None:
        self._idle_handle = None
        if self.transport is None or self.transport.is_closing():
            return
        due = self.last_activity + self.listener.idle_timeout
        if self.flow.in_flight or self.loop.time() < due:
            self._idle_handle = self.loop.call_at(max(due, self.loop.time() + 0.1), self._idle_check)
            return
        self.transport.close()

    def _flow_closed(self, flow: Flow) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self.listener.connections.discard(self)
        if self.flow is not None:
            self.flow.close()  # the client left: its queries are cancelled, nothing more is written


class TcpListener:
    """A TCP server whose connections are flows."""

    def __init__(self, open_flow: FlowFactory, name: str, *, idle_timeout: float = 10.0,
                 max_connections: int = 1000, max_pipeline: int = 100) -> None:
        self.open_flow = open_flow
        self.name = name
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pipeline = max_pipeline
        self.connections: set[TcpConnection] = set()
        self.refused = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: TcpConnection(self), host, port, reuse_address=True, backlog=1024)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def aclose(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()
        # connection_lost runs soon after abort(): let it.
        for _ in range(3):
            if not self.connections:
                break
            await asyncio.sleep(0)
