"""make_error's answers are accepted by a real resolver client: dig.

A loopback UDP server thread answers every query with
``make_error(q, SERVFAIL, ede=(23, "network error"))``. It answers a bounded
number of queries, with socket timeouts, and stops by itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading

import pytest


class ErrorServer:
    """A bounded UDP server on 127.0.0.1 answering with make_error."""

    def __init__(self, wire, rcode=2, ede=(23, "network error"), max_queries=4, lifetime=15.0):
        self.wire, self.rcode, self.ede = wire, rcode, ede
        self.max_queries = max_queries
        self.lifetime = lifetime
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: list[bytes] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dig-error-server", daemon=True)

    def _serve(self):
        import time

        deadline = time.monotonic() + self.lifetime
        try:
            while not self._stop.is_set() and len(self.queries) < self.max_queries and time.monotonic() < deadline:
                try:
                    data, peer = self.sock.recvfrom(4096)
                except socket.timeout:
                    continue
                self.queries.append(data)
                self.sock.sendto(self.wire.make_error(data, self.rcode, ede=self.ede), peer)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)
        finally:
            self.sock.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()


@pytest.fixture
def dig():
    path = shutil.which("dig")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("dig is not installed (Debian package dnsutils / bind9-dnsutils)", pytrace=False)
        pytest.skip("dig is not installed (apt-get install dnsutils)")
    return path


def _run_dig(dig, port, *extra):
    cmd = [dig, "@127.0.0.1", "-p", str(port), "example.com", "A", "+tries=1", "+time=2", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return r.returncode, r.stdout + r.stderr


def test_dig_servfail_with_ede(wire, dig):
    with ErrorServer(wire) as srv:
        rc, out = _run_dig(dig, srv.port)
    assert not srv.errors, srv.errors
    assert len(srv.queries) == 1, out
    assert rc == 0, out
    assert "status: SERVFAIL" in out, out
    assert "OPT PSEUDOSECTION" in out, out
    assert "EDE: 23" in out, out
    assert "network error" in out, out
    assert "udp: 1232" in out, out
    assert "QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1" in out, out
    assert ";example.com.\t\t\tIN\tA" in out, out
    for bad in ("WARNING", "Warning", "FORMERR", "malformed", "ID mismatch", "communications error"):
        assert bad not in out, out


def test_dig_noedns(wire, dig):
    with ErrorServer(wire) as srv:
        rc, out = _run_dig(dig, srv.port, "+noedns")
    assert not srv.errors, srv.errors
    assert rc == 0, out
    assert "status: SERVFAIL" in out, out
    assert "OPT PSEUDOSECTION" not in out and "EDE" not in out, out
    assert "QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 0" in out, out
    for bad in ("WARNING", "Warning", "FORMERR", "malformed", "ID mismatch", "communications error"):
        assert bad not in out, out


def test_dig_refused_dnssec_mixed_case(wire, dig):
    """Another rcode, the DO bit echoed, the question's case kept."""
    with ErrorServer(wire, rcode=5, ede=(18, "prohibited")) as srv:
        cmd = [dig, "@127.0.0.1", "-p", str(srv.port), "ExAmPlE.CoM", "AAAA", "+tries=1", "+time=2", "+dnssec", "+cd"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        out = r.stdout + r.stderr
    assert not srv.errors, srv.errors
    assert r.returncode == 0, out
    assert "status: REFUSED" in out, out
    assert "EDE: 18" in out and "prohibited" in out, out
    assert "flags: do;" in out, out
    assert ";ExAmPlE.CoM.\t\t\tIN\tAAAA" in out, out
    flags_line = next(l for l in out.splitlines() if l.startswith(";; flags:"))
    assert " qr" in flags_line and " ra" in flags_line and " cd" in flags_line and " rd" in flags_line, flags_line
    assert " aa" not in flags_line and " ad" not in flags_line and " tc" not in flags_line, flags_line
