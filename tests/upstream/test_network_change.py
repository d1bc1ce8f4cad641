"""``network_changed()`` at the upstream: nothing on the old path may hold a query hostage.

A :class:`~dotproxy.testing.TcpRelay` stands between client and test upstream as the network
path does: it can *black-hole* the connections open so far (nothing forwarded either way, as
after a Wi-Fi switch) and new ones (TCP accepted, nothing forwarded: a dial stuck on a path
that is going away). After ``network_changed()``:
a dial under way is abandoned and queued queries dial afresh at once; a busy connection
is checked afresh even if it spoke shortly before; a UDP upstream sends new queries from
a new socket even when the old one was busy. Under asyncio and uvloop.
"""

from __future__ import annotations

import asyncio

import pytest

from upstream_support import check_answer, client, make_query, now, serve, through_relay

from dotproxy.testing import Faults


@pytest.mark.parametrize("scheme", ["dot", "doh"])
def test_a_dial_stuck_on_the_old_path_is_abandoned_and_queued_queries_dial_afresh(run, scheme):
    async def main():
        async with serve() as up, through_relay(up, scheme, connect_timeout=5.0) as (c, path):
            path.blackhole_new = True
            q = make_query("stuck.example", id=7)
            asked = now()
            task = asyncio.ensure_future(c.query(q, deadline=asked + 4.0))
            await asyncio.sleep(0.3)  # the dial is stuck in its TLS handshake
            path.blackhole_new = False
            c.network_changed()
            check_answer(await task, q)
            assert now() - asked < 1.5  # not the 5 s connect timeout, nor the 4 s deadline
            assert c.stats.dial_failures == 0  # an abandoned dial is no failure: no backoff

    run(main)


def test_a_busy_connection_that_spoke_just_before_the_change_is_still_checked_afresh(run):
    async def main():
        options = dict(quiet_after=0.05, liveness_min=1.0, liveness_max=1.0)
        async with serve(faults=Faults(latency=0.2)) as up, through_relay(up, "dot", **options) as (c, path):
            await c.query(make_query("warm.example"), deadline=now() + 3)
            await asyncio.sleep(0.1)  # quiet: the next query arms the liveness check
            await c.query(make_query("q1.example"), deadline=now() + 3)  # spoke after arming
            q2 = make_query("q2.example", id=2)
            task = asyncio.ensure_future(c.query(q2, deadline=now() + 3))
            await asyncio.sleep(0.01)
            path.blackhole()
            changed = now()
            c.network_changed()
            check_answer(await task, q2)
            assert now() - changed < 1.0 + 0.2 + 0.8  # the liveness bound, the latency, slack
            assert c.stats.liveness_failures == 1 and c.stats.retries == 1

    run(main)


def test_udp_queries_after_a_change_use_a_new_socket_even_when_the_old_one_was_busy(run):
    async def main():
        async with serve(faults=Faults(latency=0.2)) as up:
            async with client(up, "udp") as c:
                await c.query(make_query("a.example"), deadline=now() + 2)
                old = c._transport.get_extra_info("sockname")
                q = make_query("busy.example", id=3)
                busy = asyncio.ensure_future(c.query(q, deadline=now() + 2))
                await asyncio.sleep(0.05)
                c.network_changed()
                later = [make_query(f"c{i}.example", id=10 + i) for i in range(3)]
                answers = await asyncio.gather(*(c.query(m, deadline=now() + 2) for m in later))
                for m, a in zip(later, answers):
                    check_answer(a, m)
                check_answer(await busy, q)  # the old socket served its own query to the end
                assert c._transport.get_extra_info("sockname") != old

    run(main)
