"""recv_many/send_many (dotproxy.udpbatch): the recvmmsg/sendmmsg extension and its Python twin run the
same tests; then the batched UDP listener's back-pressure path (a full socket buffer) under both loops."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dotproxy import _udpbatch_py, udpbatch
from dotproxy.listeners.sockets import BatchUdpListener

try:
    from dotproxy import _udpbatch as _udpbatch_c
except ImportError:  # pragma: no cover - not Linux, or the extension is not built
    _udpbatch_c = None

IMPLS = [pytest.param(_udpbatch_py, id="py"),
         pytest.param(_udpbatch_c, id="c", marks=pytest.mark.skipif(_udpbatch_c is None, reason="not built"))]


def _pair(family: int, host: str):
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind((host, 0))
        s.setblocking(False)
    return a, b


def _wait_readable(sock, timeout: float = 2.0) -> None:
    import select

    assert select.select([sock], [], [], timeout)[0], "nothing arrived"


def _recv_all(impl, sock, expected: int) -> list:
    got = []
    while len(got) < expected:
        _wait_readable(sock)
        got += impl.recv_many(sock, impl.MAX_BATCH)
    return got


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["ipv4", "ipv6"])
def pair(request):
    family, host = request.param
    try:
        a, b = _pair(family, host)
    except OSError:  # pragma: no cover
        pytest.skip(f"{host} unavailable")
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_round_trip_and_endpoints(impl, pair):
    a, b = pair
    assert impl.recv_many(a, 64) == []  # nothing waits: no error, no wait
    b.sendto(b"query-1", a.getsockname())
    b.sendto(b"query-2", a.getsockname())
    got = _recv_all(impl, a, 2)
    assert [d for d, _ in got] == [b"query-1", b"query-2"]
    endpoint = got[0][1]
    assert endpoint == _udpbatch_py.tuple_to_endpoint(b.getsockname())
    assert _udpbatch_py.endpoint_to_tuple(endpoint)[:2] == b.getsockname()[:2]
    assert impl.send_many(a, [(b"answer-1", endpoint), (b"answer-2", endpoint)]) == 2
    assert [d for d, _ in _recv_all(impl, b, 2)] == [b"answer-1", b"answer-2"]


@pytest.mark.parametrize("impl", IMPLS)
def test_max_and_more_than_one_batch(impl, pair):
    a, b = pair
    endpoint = _udpbatch_py.tuple_to_endpoint(a.getsockname())
    items = [(b"m%03d" % i, endpoint) for i in range(150)]  # > 64: the extension sends in chunks
    assert impl.send_many(b, items) == 150
    _wait_readable(a)
    first = impl.recv_many(a, 3)
    assert [d for d, _ in first] == [b"m000", b"m001", b"m002"]
    rest = _recv_all(impl, a, 147)
    assert [d for d, _ in first + rest] == [d for d, _ in items]
    assert len(impl.recv_many(a, 1000)) == 0  # max above MAX_BATCH is clamped, not an error
    assert impl.recv_many(a, 0) == []


@pytest.mark.parametrize("impl", IMPLS)
def test_large_datagrams_are_never_truncated(impl, pair):
    a, b = pair
    big = bytes(range(256)) * 250 + b"end"  # 64,003 bytes
    endpoint = _udpbatch_py.tuple_to_endpoint(a.getsockname())
    assert impl.send_many(b, [(big, endpoint), (b"small", endpoint)]) == 2
    got = _recv_all(impl, a, 2)
    assert [d for d, _ in got] == [big, b"small"]


@pytest.mark.parametrize("impl", IMPLS)
def test_errors(impl, pair):
    a, b = pair
    good = _udpbatch_py.tuple_to_endpoint(a.getsockname())
    with pytest.raises(TypeError):
        impl.send_many(b, [(b"x", a.getsockname())])  # endpoints are sockaddr bytes, not tuples
    bad = b"\x02\x00"  # too short for any address
    with pytest.raises(OSError):
        impl.send_many(b, [(b"x", bad), (b"y", good)])
    assert impl.send_many(b, [(b"y", good), (b"x", bad), (b"z", good)]) == 1  # stops before the bad one
    assert [d for d, _ in _recv_all(impl, a, 1)] == [b"y"]
    assert impl.send_many(b, []) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_full_buffer_returns_how_many_went(impl):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # a peer that does not read fills up
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        items = [(b"z" * 100, b"")] * 2000  # b"": the connected peer
        sent = impl.send_many(b, items)
        assert 0 < sent < 2000
        assert impl.send_many(b, items[sent:]) == 0  # still full: nothing goes, no error
        got = impl.recv_many(a, 10)
        assert [d for d, _ in got] == [b"z" * 100] * 10 and got[0][1] == b""
        assert impl.send_many(b, items[sent:]) > 0  # room again


def test_facade():
    assert udpbatch.IMPLEMENTATION in ("c", "py")
    assert udpbatch.AVAILABLE == (udpbatch.IMPLEMENTATION == "c") or not udpbatch.AVAILABLE
    assert udpbatch.endpoint_to_tuple(udpbatch.tuple_to_endpoint(("::1", 53))) == ("::1", 53, 0, 0)
    assert udpbatch.endpoint_to_tuple(udpbatch.tuple_to_endpoint(("127.0.0.1", 53))) == ("127.0.0.1", 53)


class _Flow:
    def __init__(self, deliver) -> None:
        self.deliver = deliver
        self.received: list = []
        self.closed = False

    def receive(self, data, endpoint) -> None:
        self.received.append((data, endpoint))
        self.deliver(b"answer:" + data, endpoint)  # answer at once, as FORMERR or REFUSED do

    def close(self) -> None:
        self.closed = True


def test_listener_waits_for_writability_when_the_buffer_is_full(run):
    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        b.setblocking(False)
        flows = []

        def open_flow(kind, deliver, name):
            flows.append(_Flow(deliver))
            return flows[-1]

        listener = BatchUdpListener(open_flow, "test", a)
        flow = flows[0]
        for i in range(2000):  # more answers than the peer's queue holds
            flow.deliver(b"%04d" % i, b"")
        await asyncio.sleep(0.05)
        assert listener._writing and listener._out  # some wait for the peer to read
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(got) < 2000 and loop.time() < deadline:
            try:
                got.append(b.recv(100))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert got == [b"%04d" % i for i in range(2000)]  # all of them, in order
        await asyncio.sleep(0.01)
        assert not listener._writing and not listener._out
        b.send(b"q")  # and the reading side works
        while not flow.received:
            await asyncio.sleep(0.001)
        assert flow.received == [(b"q", b"")]
        listener.close()
        assert flow.closed and listener.closed.done() and a.fileno() == -1
        with pytest.raises(ConnectionError):
            flow.deliver(b"late", b"")
        b.close()

    run(main)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
@pytest.mark.parametrize("impl", IMPLS)
def test_quickack_sets_the_option_on_a_tcp_socket_and_refuses_others(impl):
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        peer, _ = server.accept()
        with peer:
            peer.sendall(b"x")
            assert tcp.recv(1) == b"x"
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            impl.quickack(tcp.fileno())
            assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
            assert tcp.fileno() >= 0  # borrowed, not closed
        with pytest.raises(OSError):
            impl.quickack(udp.fileno())


class _HeldResolver:
    """Holds each query's answer callback until the test answers it (an engine flow's resolver)."""

    def __init__(self) -> None:
        self.pending = []

    def __call__(self, data, query, deadline, sink):
        self.pending.append((data, sink))
        return self

    def cancel(self) -> None:
        pass

    def answer(self, i: int = 0) -> None:
        data, sink = self.pending.pop(i)
        sink.resolved(data[:2] + b"\x81\x80" + data[4:], None)  # the query echoed as a NOERROR answer


def test_listener_sends_at_once_an_answer_that_leaves_nothing_in_flight(run):
    import dns.message

    from dotproxy.flows.flow import Admission, Flow, FlowStats

    async def main():
        a, b = _pair(socket.AF_INET, "127.0.0.1")
        resolver = _HeldResolver()
        listener = BatchUdpListener(
            lambda kind, deliver, name: Flow(kind, resolver, deliver, timeout=4.0, admission=Admission(100),
                                             stats=FlowStats(), name=name), "test", a)
        queries = [dns.message.make_query(f"q{i}.example", "A", id=i).to_wire() for i in range(3)]

        def readable_now() -> list:
            got = []
            while True:
                try:
                    got.append(b.recv(512))
                except BlockingIOError:
                    return got

        for q in queries[:2]:
            b.sendto(q, a.getsockname())
        while len(resolver.pending) < 2:
            await asyncio.sleep(0.001)
        resolver.answer()  # one still in flight: this answer waits for the loop iteration's others
        assert readable_now() == [] and len(listener._out) == 1
        resolver.answer()  # joins it: one sendmmsg when the loop runs its callbacks
        assert readable_now() == []
        await asyncio.sleep(0.01)
        assert [m[:2] for m in readable_now()] == [b"\x00\x00", b"\x00\x01"]

        b.sendto(queries[2], a.getsockname())
        while not resolver.pending:
            await asyncio.sleep(0.001)
        resolver.answer()  # nothing else in flight: it goes before this call returns
        assert [m[:2] for m in readable_now()] == [b"\x00\x02"] and not listener._out

        # Answers made while a batch is read (FORMERR here) wait for the batch, whatever is in flight.
        listener.loop.remove_reader(listener._fd)
        for i in range(3):
            b.sendto(b"\x00%c\x01\x00\x00\x02" % i + b"\x00" * 6, a.getsockname())  # QDCOUNT 2: FORMERR
        _wait_readable(a)
        listener._readable()
        assert len(listener._out) == 3 and readable_now() == []
        await asyncio.sleep(0.01)
        assert sorted(m[:2] for m in readable_now()) == [b"\x00\x00", b"\x00\x01", b"\x00\x02"]
        listener.close()
        b.close()

    run(main)
