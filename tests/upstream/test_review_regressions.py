"""Regressions found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio

import dns.edns
import dns.message
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from upstream_support import after, check_answer, client, make_query, now, serve

from dotproxy import upstream
from dotproxy.errors import BadResponse, ConnectionFailed
from dotproxy.proto.doh import DohClient, QueryFailed
from dotproxy.testing import Faults


def _server() -> h2.connection.H2Connection:
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    srv.initiate_connection()
    return srv


@pytest.mark.parametrize("first, later", [
    (None, None),  # default 64 KiB windows: the 20 KB body needs no WINDOW_UPDATE
    ({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}),
], ids=["default-window", "window-opened-by-settings"])
def test_doh_request_body_is_sent_whole_as_the_window_allows(first, later):
    srv = _server()
    if first:
        srv.update_settings(first)
    c = DohClient(authority="x")
    q = dns.message.make_query("example.com", "A", use_edns=0,
                               options=[dns.edns.GenericOption(65001, b"x" * 20000)]).to_wire(max_size=65535)
    c.receive_data(srv.data_to_send(), 0.0)
    c.send_query(q, 0.0)
    body, ended = 0, False
    for _ in range(3):
        for e in srv.receive_data(c.data_to_send()):
            if isinstance(e, h2.events.DataReceived):
                body += len(e.data)
            ended = ended or isinstance(e, h2.events.StreamEnded)
        if later:
            srv.update_settings(later)
            later = None
        c.receive_data(srv.data_to_send(), 0.1)
    assert ended and body >= len(q)


def test_doh_answer_body_is_capped_at_one_dns_message():
    srv = _server()
    c = DohClient(authority="x")
    c.receive_data(srv.data_to_send(), 0.0)
    qid = c.send_query(dns.message.make_query("example.com", "A").to_wire(), 0.0)
    srv.receive_data(c.data_to_send())
    srv.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/dns-message")])
    failed = []
    for _ in range(8):  # 8 x 16 KiB > 65,535 bytes, never END_STREAM
        try:
            srv.increment_flow_control_window(16384)
            srv.increment_flow_control_window(16384, 1)
            srv.send_data(1, b"\0" * 16384)
        except h2.exceptions.StreamClosedError:
            break  # the client reset the stream: it stopped reading
        failed += [e for e in c.receive_data(srv.data_to_send(), 0.1) if isinstance(e, QueryFailed)]
        srv.receive_data(c.data_to_send())
    assert [f.query_id for f in failed] == [qid] and isinstance(failed[0].error, BadResponse)
    assert c.outstanding == 0


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_a_cancelled_query_frees_its_slot_for_a_waiting_one(run, scheme):
    async def body():
        async with serve(faults=Faults(stall=True)) as server:
            async with client(server, scheme, pool_size=1, max_outstanding=1) as up:
                a = asyncio.ensure_future(up.query(make_query("a.example"), deadline=after(3)))
                await asyncio.sleep(0.3)  # A in flight: the pool is full
                server.faults.stall = False
                q = make_query("b.example")
                b = asyncio.ensure_future(up.query(q, deadline=after(3)))
                await asyncio.sleep(0.05)
                a.cancel()
                start = now()
                check_answer(await b, q)
                assert now() - start < 0.5
                with pytest.raises(asyncio.CancelledError):
                    await a
            await server.close_all_connections(timeout=0.2)

    run(body)


def test_udp_socket_opened_during_aclose_does_not_outlive_it(run):
    async def body():
        async with serve() as server:
            up = upstream.connect(server.udp_url)
            task = asyncio.ensure_future(up.query(make_query(), deadline=after(2)))
            await asyncio.sleep(0)  # the query is opening the socket
            await up.aclose()
            with pytest.raises(ConnectionFailed):
                await task
            assert up._transport is None and not up._pending

    run(body)
