"""Plain UDP upstream (split DNS to a local resolver, comparisons), with TC -> TCP retry.

One connected UDP socket carries every query; each gets a random, unused
message ID, and an answer must come from the server's address with the query's
ID and question. A query is resent every ``udp_retry`` seconds until its
deadline; a truncated answer (TC=1) is asked again over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from dotproxy import wire
from dotproxy.config import UpstreamURL
from dotproxy.errors import ConnectionFailed, UpstreamError, WireError
from dotproxy.proto.answers import answers, question_of
from dotproxy.upstream.base import Upstream, UpstreamOptions
from dotproxy.upstream.stream import StreamUpstream

log = logging.getLogger("dotproxy.upstream")


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, upstream: UdpUpstream) -> None:
        self.upstream = upstream
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.users = 0  # queries sending on this socket
        self.retired = False  # after a network change: closed when its last query is done

    def connection_made(self, transport) -> None:
        self.transport = transport

    def release(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            self.transport.close()

    def datagram_received(self, data: bytes, addr) -> None:
        self.upstream._received(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.upstream.name, exc)
        if isinstance(exc, ConnectionRefusedError):  # ICMP port unreachable: nobody serves DNS there
            self.upstream._refused(exc)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.upstream._lost(self)


class UdpUpstream(Upstream):
    def __init__(self, url: UpstreamURL, options: UpstreamOptions) -> None:
        super().__init__(url, options)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Datagrams | None = None
        self._retired: set[_Datagrams] = set()  # closed after a network change, not yet gone
        self._open_lock = asyncio.Lock()
        self._recent: dict[int, None] = {}  # insertion-ordered: oldest first
        # wire ID -> (future, client ID, (qname_wire, qtype, qclass))
        self._pending: dict[int, tuple[asyncio.Future, int, tuple]] = {}
        tcp_url = UpstreamURL("tcp", url.host, url.port, None, "", f"tcp://{url.authority}")
        self._tcp = StreamUpstream(tcp_url, options, tls=None)

    async def query(self, data: bytes, *, deadline: float | None = None) -> bytes:
        deadline = self._deadline(deadline)
        parsed = wire.parse_query(data)
        self.stats.queries += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                protocol = await self._open()
                transport = protocol.transport
                # Unpredictable IDs: on one socket they are the only defence against off-path spoofing.
                # Not one in flight, nor (while there is room) one whose late answer may still come.
                if len(self._pending) >= 0xFFFF:
                    raise ConnectionFailed("every DNS message ID is in use", upstream=self.name)
                avoid_recent = len(self._pending) + len(self._recent) < 0xC000
                wire_id = secrets.randbits(16)
                while wire_id in self._pending or (avoid_recent and wire_id in self._recent):
                    wire_id = secrets.randbits(16)
                fut = loop.create_future()
                if self._closed:
                    raise ConnectionFailed("upstream is closed", upstream=self.name)
                self._pending[wire_id] = (fut, parsed.id, question_of(parsed))
                out = wire.set_id(data, wire_id)
                sends = 0
                protocol.users += 1
                try:
                    while True:
                        transport.sendto(out)
                        sends += 1
                        sent = loop.time()
                        done, _ = await asyncio.wait([fut], timeout=self.options.udp_retry)
                        if done:
                            break
                finally:
                    self._pending.pop(wire_id, None)
                    self._finished(wire_id)
                    protocol.release()
                answer = fut.result()
                if sends == 1:  # Karn: a resent query's answer times neither send
                    self._observe_rtt(loop.time() - sent)
                if wire.scan_response(answer).tc:
                    answer = await self._tcp.query(data, deadline=deadline)
                else:
                    answer = wire.set_id(answer, parsed.id)
                self.stats.answers += 1
                return answer
        except UpstreamError:
            self.stats.failures += 1
            raise
        except TimeoutError as e:
            raise self._timed_out() from e

    async def _open(self) -> _Datagrams:
        async with self._open_lock:  # one socket, however many queries arrive at once
            if self._transport is None:
                try:
                    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
                        lambda: _Datagrams(self), remote_addr=(self.url.host, self.url.port))
                except OSError as e:
                    raise ConnectionFailed(f"cannot open a UDP socket to {self.url.authority}: {e}",
                                           upstream=self.name) from e
                if self._closed:  # aclose() ran while the socket was being opened
                    transport.close()
                    raise ConnectionFailed("upstream is closed", upstream=self.name)
                self._transport, self._protocol = transport, protocol
            return self._protocol

    def _received(self, data: bytes) -> None:
        try:
            info = wire.scan_response(data)
        except WireError:
            self.stats.unexpected_answers += 1
            return
        entry = self._pending.get(info.id)
        if entry is None:
            if info.id in self._recent:
                self.stats.late_answers += 1
            else:
                self.stats.unexpected_answers += 1
            return
        fut, _client_id, question = entry
        if not answers(info, question):
            self.stats.unexpected_answers += 1
            return
        if not fut.done():
            fut.set_result(data)

    def _refused(self, exc: Exception) -> None:
        """The socket is connected to the server alone: a refusal is about every query on it."""
        for fut, _cid, _q in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(ConnectionFailed(f"{self.url.authority} refused: {exc}", upstream=self.name))

    #: Finished query IDs remembered to tell a late answer from a stray one.
    RECENT_IDS = 4096

    def _finished(self, wire_id: int) -> None:
        self._recent[wire_id] = None
        if len(self._recent) > self.RECENT_IDS:
            del self._recent[next(iter(self._recent))]

    def _lost(self, protocol: _Datagrams) -> None:
        if protocol is self._protocol:  # not an older socket, closed after a network change
            self._transport = self._protocol = None

    def quiesce(self) -> list[asyncio.Future]:
        return self._tcp.quiesce()

    def network_changed(self) -> None:
        # The socket's source address belongs to the old path: new queries open a new socket;
        # the old one serves the queries already on it (answers are matched by ID whichever
        # socket they arrive on) and closes after the last of them.
        protocol = self._protocol
        if protocol is not None:
            self._transport = self._protocol = None
            protocol.retired = True
            self._retired.add(protocol)
            protocol.closed.add_done_callback(lambda _: self._retired.discard(protocol))
            if protocol.users == 0:
                protocol.transport.close()
        self._tcp.network_changed()

    async def aclose(self) -> None:
        self._closed = True
        await self._close_submitted()
        async with self._open_lock:  # a socket being opened now is closed by its opener
            pass
        for fut, _cid, _q in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionFailed("upstream closed", upstream=self.name))
                fut.exception()
        for protocol in list(self._retired):
            protocol.transport.close()
        closing = [p.closed for p in self._retired]
        if self._transport is not None:
            self._transport.close()
            closing.append(self._protocol.closed)
        if closing:
            await asyncio.wait(closing, timeout=1.0)
        await self._tcp.aclose()
