"""The per-query path runs compiled, and its Python twins (the same .py files) still work.

``dotproxy.compiled`` lists the modules Cython compiles from their own source (with the C
types of their .pxd files). A missing extension is a failure, not a skip: build them with
``pip install -e .``. ``DOTPROXY_PURE_PYTHON=1`` loads every one of them from source; the
engine's chaos, flow and DoT tests then run again on the twins, in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dotproxy import compiled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Run again on the Python twins: teardown at every point, answers and errors, DoT framing,
#: DoH/2 frames and HPACK, connections that end or go silent under queries.
TWIN_SUITE = (
    "tests/engine/test_chaos.py",
    "tests/engine/test_engine_flows.py",
    "tests/engine/test_engine_garbage.py",
    "tests/upstream/test_dot_core.py",
    "tests/upstream/test_deadlines.py",
    "tests/upstream/test_connection_loss.py",
    "tests/interop/test_interop.py::test_bursts_then_silence",
    "tests/upstream/test_doh_core.py",
    "tests/upstream/test_doh_frames.py",
    "tests/upstream/test_doh_hpack.py",
)


def _child(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(compiled.PURE_PYTHON, reason="DOTPROXY_PURE_PYTHON=1 asks for the twins")
def test_every_module_of_the_per_query_path_is_compiled():
    found = compiled.implementations()
    assert set(found) == set(compiled.COMPILED_MODULES)
    assert all(kind == "c" for kind in found.values()), f"not built (pip install -e .): {found}"
    assert compiled.summary() == "compiled"


def test_setup_builds_exactly_the_listed_modules():
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert "compiled.py" in f.read()  # setup.py reads the list from the package: one list
    for name in compiled.COMPILED_MODULES:
        base = os.path.join(ROOT, "src", *name.split("."))
        assert os.path.exists(base + ".py") and os.path.exists(base + ".pxd"), name


def test_pure_python_loads_every_module_from_source():
    out = _child("import json, dotproxy.engine, dotproxy.compiled as c; "
                 "import dotproxy.flows.flow as f; "
                 "print(json.dumps([c.implementations(), c.summary(), f.__file__]))",
                 DOTPROXY_PURE_PYTHON="1")
    found, summary, flow_file = json.loads(out)
    assert set(found.values()) == {"py"}, found
    assert summary == "pure Python"
    assert flow_file.endswith("flow.py")


def test_the_python_twins_pass_the_engine_suite():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TWIN_SUITE],
        cwd=ROOT, capture_output=True, text=True, timeout=420, env={**os.environ, "DOTPROXY_PURE_PYTHON": "1"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
