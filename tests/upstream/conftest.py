"""Fixtures of the upstream tests: ``run`` (see tests/loop_fixtures.py)."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # the suite's own support module

from loop_fixtures import loop_kind, run  # noqa: E402,F401  (fixtures, registered by import)
