"""``TcpRelay``: a TCP relay on loopback that can make a path go silent.

Put between a client and a server, it forwards bytes both ways until told to
:meth:`~TcpRelay.blackhole` the connections open at that moment: from then on
everything they carry is dropped, in both directions, while both sockets stay
open — what a lost NAT mapping, an unannounced Wi-Fi roam or a middlebox does to
a long-lived connection. Connections made later are forwarded as usual, unless
``blackhole_new`` is set: then they are accepted (the TCP handshake completes)
and nothing ever reaches the server — a port black-holed by a firewall or a
captive portal, where a TLS handshake never completes. ``target=None`` makes
such a dead end on its own::

    async with TcpRelay(("127.0.0.1", server_port)) as relay:
        url = f"tls://127.0.0.1:{relay.port}#dns.test"
        ...
        relay.blackhole()           # the open connections go silent both ways

Every task and socket is owned by the relay and gone after :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dotproxy.tasks import TaskOwner

__all__ = ["RelayStats", "TcpRelay"]


@dataclass
class RelayStats:
    accepted: int = 0  # client connections accepted
    forwarded: int = 0  # bytes passed on, both directions
    dropped: int = 0  # bytes swallowed by black-holed connections, both directions
    blackholed: int = 0  # connections made silent (by blackhole(), or accepted while blackhole_new)


class _Side(asyncio.Protocol):
    """One socket of a relayed pair; what it reads goes to its peer."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.pair.carry(self, data)

    def eof_received(self) -> bool:
        self.pair.ended(self)
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.pair.ended(self)


class _Pair:
    """A client connection and, once made, its connection to the target."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.client = _Side(self)
        self.server: _Side | None = None
        self.pending: list[bytes] = []  # client bytes read before the server side was connected
        self.silent = False
        self.closed = False

    def carry(self, side: _Side, data: bytes) -> None:
        stats = self.relay.stats
        if self.silent or self.closed:
            stats.dropped += len(data)
            return
        if side is self.client:
            peer = self.server
            if peer is None or peer.transport is None:
                self.pending.append(data)
                return
        else:
            peer = self.client
        if peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)
            stats.forwarded += len(data)

    def connected(self, server: _Side) -> None:
        self.server = server
        pending, self.pending = self.pending, []
        for data in pending:
            self.carry(self.client, data)

    def blackhole(self) -> None:
        if not self.silent and not self.closed:
            self.silent = True
            self.pending.clear()
            self.relay.stats.blackholed += 1

    def ended(self, side: _Side) -> None:
        """One side closed: a working path carries the close on; a black-holed one does not."""
        if self.silent and not self.relay._closing:
            return
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.relay._pairs.discard(self)
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.close()


class TcpRelay:
    """A TCP relay from ``host``:``port`` (ephemeral by default) to ``target``; see the module docstring."""

    __test__ = False

    def __init__(self, target: tuple[str, int] | None, host: str = "127.0.0.1", port: int = 0, *,
                 blackhole_new: bool = False) -> None:
        self.target = target
        self.host = host
        self._port = port
        self.blackhole_new = blackhole_new or target is None
        self.stats = RelayStats()
        self._pairs: set[_Pair] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks = TaskOwner("tcp relay")
        self._closing = False

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server is not None else self._port

    @property
    def connections(self) -> int:
        """Client connections open now (black-holed ones included)."""
        return len(self._pairs)

    async def start(self) -> TcpRelay:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, self.host, self._port)
        return self

    def blackhole(self) -> int:
        """Drop everything the connections open now carry, both ways, from now on; return how many."""
        pairs = [p for p in self._pairs if not p.silent]
        for pair in pairs:
            pair.blackhole()
        return len(pairs)

    def _accepted(self) -> _Side:
        pair = _Pair(self)
        self._pairs.add(pair)
        self.stats.accepted += 1
        if self.blackhole_new or self._closing:
            pair.blackhole()
        else:
            self._tasks.spawn(self._connect(pair), name="relay connect")
        return pair.client

    async def _connect(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        server = _Side(pair)
        try:
            await loop.create_connection(lambda: server, *self.target)
        except OSError:
            pair.close()
            return
        if pair.closed:
            server.transport.close()
            return
        pair.connected(server)

    async def aclose(self) -> None:
        """Stop accepting, close every relayed connection (black-holed ones too)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        await self._tasks.aclose()
        closing = []
        for pair in list(self._pairs):
            for side in (pair.client, pair.server):
                if side is not None and side.transport is not None:
                    closing.append(side)
            pair.close()
        if self._server is not None:
            await self._server.wait_closed()
        # Transports close their sockets on a later loop iteration (bounded: 1 s).
        for _ in range(100):
            if not any(side.transport is not None for side in closing):
                break
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> TcpRelay:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
