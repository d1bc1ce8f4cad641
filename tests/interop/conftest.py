"""Fixtures of the interop tests: real unbound, dnsdist and kresd on loopback (interop_servers.py).

The servers start once per session (``unbound_server``, ``dnsdist_server``, ``kresd_server``;
dnsdist and kresd forward to that unbound); ``interop_launcher`` starts extra, differently
configured ones for one test and stops them after it. A missing binary fails the test with
the Debian package to install; it does not skip. ``run`` is tests/loop_fixtures.py's.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # the suite's own support module

import interop_servers as servers  # noqa: E402
from loop_fixtures import loop_kind, run  # noqa: E402,F401  (fixtures, registered by import)


def _start(fn, *args, **kwargs) -> servers.Server:
    try:
        return fn(*args, **kwargs)
    except servers.MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    except servers.ServerStartError as e:
        pytest.fail(f"{fn.__name__}: {e}", pytrace=False)


@pytest.fixture(scope="session")
def interop_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("interop"))


@pytest.fixture(scope="session")
def interop_certs(interop_dir) -> servers.Certs:
    return servers.make_certs(os.path.join(interop_dir, "certs"))


@pytest.fixture(scope="session")
def unbound_server(interop_dir, interop_certs):
    server = _start(servers.start_unbound, os.path.join(interop_dir, "unbound"), interop_certs)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def session_launcher(interop_dir, interop_certs, unbound_server):
    """Starts the forwarders shared by the whole session; stops them at its end."""
    launcher = Launcher(interop_dir, interop_certs, unbound_server)
    yield launcher
    launcher.stop()


@pytest.fixture(scope="session")
def dnsdist_server(session_launcher):
    """dnsdist 1.7 as Debian ships it: addTLSLocal/addDOHLocal with default options (in-order DoT)."""
    return session_launcher.dnsdist()


@pytest.fixture(scope="session")
def kresd_server(session_launcher):
    return session_launcher.kresd()


class Launcher:
    """Starts servers for one test (``launcher.dnsdist(tls_options={"maxInFlight": 100})``)."""

    def __init__(self, base: str, certs: servers.Certs, backend: servers.Server) -> None:
        self.base = base
        self.certs = certs
        self.backend = backend
        self.started: list[servers.Server] = []

    def _dir(self, kind: str) -> str:
        return os.path.join(self.base, f"{kind}-{len(self.started)}")

    def dnsdist(self, **options) -> servers.Server:
        server = _start(servers.start_dnsdist, self._dir("dnsdist"), self.certs, self.backend.ports["plain"],
                        **options)
        self.started.append(server)
        return server

    def kresd(self) -> servers.Server:
        server = _start(servers.start_kresd, self._dir("kresd"), self.certs, self.backend.ports["plain"])
        self.started.append(server)
        return server

    def unbound(self, **options) -> servers.Server:
        server = _start(servers.start_unbound, self._dir("unbound"), self.certs, **options)
        self.started.append(server)
        return server

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture
def interop_launcher(tmp_path, interop_certs, unbound_server):
    launcher = Launcher(str(tmp_path), interop_certs, unbound_server)
    yield launcher
    launcher.stop()
