"""Shared fixtures for the dotproxy test suite.

``wire`` runs a test once per implementation of the DNS packet core: ``"c"``
(``dotproxy._wire``, the compiled extension) and ``"py"`` (``dotproxy._wire_py``,
the pure-Python twin). A missing extension is a failure, not a skip: build it
with ``pip install -e .``. ``both`` gives the two modules together for tests
that check the implementations agree.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
SRC = os.path.join(ROOT, "src")

# Make the package importable from a plain checkout (no install) and the test
# helpers importable whatever pytest import mode is configured.
try:
    import dotproxy  # noqa: F401
except ImportError:
    sys.path.insert(0, SRC)
for _p in (os.path.join(TESTS_DIR, "wire"),):
    if _p not in sys.path:
        sys.path.insert(0, _p)

MODULES = {"c": "dotproxy._wire", "py": "dotproxy._wire_py"}

BUILD_HINT = (
    "the compiled DNS core dotproxy._wire cannot be imported ({err!r}); "
    "build the extension with: pip install -e ."
)


def load_impl(which: str):
    """The implementation module for ``"c"`` or ``"py"``; fails the test if absent."""
    try:
        return importlib.import_module(MODULES[which])
    except ImportError as err:
        if which == "c":
            pytest.fail(BUILD_HINT.format(err=err), pytrace=False)
        pytest.fail(f"the pure-Python twin dotproxy._wire_py cannot be imported: {err!r}", pytrace=False)


@pytest.fixture(params=["c", "py"])
def wire(request):
    """The implementation module under test, once per implementation."""
    return load_impl(request.param)


@pytest.fixture
def both():
    """``(c_module, py_module)`` for agreement checks."""
    return load_impl("c"), load_impl("py")


@pytest.fixture(scope="session")
def repo_root() -> str:
    return ROOT


@pytest.fixture(scope="session")
def src_dir() -> str:
    return SRC


def pytest_configure(config):
    # Hypothesis profiles: bounded so the whole suite stays fast.
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover
        return
    settings.register_profile(
        "dotproxy",
        deadline=None,
        max_examples=int(os.environ.get("DOTPROXY_HYPOTHESIS_EXAMPLES", "200")),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,  # the wire modules are the same for every example
        ],
        derandomize=bool(os.environ.get("CI")),
        database=None,
    )
    settings.load_profile("dotproxy")
