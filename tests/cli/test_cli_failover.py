"""``dotproxy serve`` with a first upstream whose dial hangs (TCP connects, TLS never completes:
port 853 black-holed by a firewall or a captive portal) and a second that answers: every query
is answered NOERROR by the second, none waits longer than the dial bound (1 s while no handshake
was measured), and once the first dial is known to be slow none waits on it at all."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from cli_support import DOTPROXY, Serve, free_port

pytestmark = pytest.mark.skipif(DOTPROXY is None, reason="the dotproxy command is not on PATH")


def test_a_first_upstream_whose_tls_never_completes_costs_at_most_the_dial_bound(upstream):
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.1", 0))
    dead.listen(64)  # never accepted: the kernel completes TCP handshakes, nobody ever speaks TLS
    try:
        port = free_port()
        with Serve("--listen", f"127.0.0.1:{port}", "--upstream", f"tls://127.0.0.1:{dead.getsockname()[1]}#dns.test",
                   "--upstream", upstream["dot_url"], "--ca-file", upstream["ca_file"]) as serve:
            serve.wait_for_log(r"listening on 127\.0\.0\.1:\d+")
            took = []
            for i in range(12):
                q = dns.message.make_query(f"f{i}.example.com", "A")
                start = time.monotonic()
                r = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
                took.append(time.monotonic() - start)
                assert r.rcode() == dns.rcode.NOERROR, (i, r, serve.log)
                assert [rd.address for rrset in r.answer for rd in rrset] == ["192.0.2.1"]
                time.sleep(0.25)
            assert max(took) < 1.3, (took, serve.log)
            # The first waits out the dial bound; from then on the hanging dial is skipped at once
            # (it goes on in the background, then fails and backs off; later dials are skipped too).
            assert all(t < 0.3 for t in took[2:]), (took, serve.log)
            assert "Traceback" not in serve.log
    finally:
        dead.close()
