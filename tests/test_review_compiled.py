"""Regressions from the review of the compiled per-query path (C integers, one pure-Python switch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dotproxy.engine import EngineConfig
from dotproxy.errors import ConfigError
from dotproxy.upstream.base import Backoff, UpstreamOptions
from dotproxy.errors import ConnectionFailed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value", [1e6, float("inf"), True, 10**20, 0, "5"])
@pytest.mark.parametrize("name", ["max_in_flight", "tcp_max_connections", "tcp_max_pipeline"])
def test_counts_the_engine_keeps_as_c_integers_are_checked_with_the_config(name, value):
    with pytest.raises(ConfigError) as e:
        EngineConfig(upstreams=("tls://127.0.0.1:853#localhost",), **{name: value})
    assert e.value.where == name


@pytest.mark.parametrize("options", [{"pool_size": 2**63}, {"pool_size": 1025}, {"spread_at": 2**63}, {"spread_at": 0}])
def test_pool_counts_are_bounded(options):
    with pytest.raises(ConfigError):
        UpstreamOptions.from_kwargs(options, where="upstream")


def test_backoff_survives_any_number_of_failures():
    backoff = Backoff(0.2, 30.0)
    error = ConnectionFailed("refused", upstream="u")
    for i in range(2000):
        backoff.failed(float(i), error)
    assert backoff.until <= 1999 + 30.0 * 1.5 and backoff.blocking(1999.0) is error


def test_the_pure_python_switch_is_read_once_when_dotproxy_is_imported():
    """Set after ``import dotproxy``, the variable changes nothing: the wire core and the compiled
    modules must agree (a compiled flow cannot take the twin's Query)."""
    code = ("import os, dotproxy; os.environ['DOTPROXY_PURE_PYTHON'] = '1'; "
            "import dotproxy.engine, dotproxy.wire as w, dotproxy.compiled as c; "
            "print(w.IMPLEMENTATION, c.summary())")
    env = {k: v for k, v in os.environ.items() if k != "DOTPROXY_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "c" and "compiled" in out.stdout
