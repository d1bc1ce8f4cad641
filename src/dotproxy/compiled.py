"""The per-query path, compiled: which modules run as C, and the switch back to their Python.

The modules in :data:`COMPILED_MODULES` are plain Python that Cython compiles when the
package is built, with the C types their ``.pxd`` files declare (``setup.py``; the build
is optional: where it fails, the ``.py`` runs). Each ``.py`` is its own Python twin: with
``DOTPROXY_PURE_PYTHON=1`` in the environment before ``dotproxy`` is imported, they are
loaded from source even where the extensions exist (as ``dotproxy.wire`` then picks
``_wire_py``). :func:`implementations` says what is loaded.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

#: Keep in step with setup.py's list.
COMPILED_MODULES = (
    "dotproxy.upstream.deadlines",
    "dotproxy.upstream.base",
    "dotproxy.upstream.pool",
    "dotproxy.upstream.stream",
    "dotproxy.proto.answers",
    "dotproxy.proto.dot",
    "dotproxy.flows.flow",
    "dotproxy.listeners.sockets",
    "dotproxy.proto.http2",
    "dotproxy.proto.hpack_lite",
    "dotproxy.proto.doh",
    "dotproxy.upstream.doh",
)

PURE_PYTHON = os.environ.get("DOTPROXY_PURE_PYTHON", "") not in ("", "0")


class _SourceFinder:
    """A meta path finder that loads the compiled modules from their .py files."""

    _loader_details = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)

    def find_spec(self, name: str, path, target=None):
        if name not in COMPILED_MODULES or not path:
            return None
        leaf = name.rpartition(".")[2]
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, self._loader_details).find_spec(name)
            if spec is not None and spec.origin and spec.origin.endswith(leaf + ".py"):
                return spec
        return None


def install_source_finder() -> None:
    """Load the compiled modules from source from now on (no effect on ones already imported)."""
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def implementations() -> dict[str, str]:
    """Each module of :data:`COMPILED_MODULES` -> ``"c"`` (the extension) or ``"py"`` (source),
    as imported now or as an import would pick it."""
    found = {}
    for name in COMPILED_MODULES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else ""
        found[name] = "py" if origin.endswith(".py") else "c"
    return found


def summary() -> str:
    """``"compiled"``, ``"pure Python"`` or ``"partly compiled (N of M)"``, for logs."""
    kinds = list(implementations().values())
    if all(k == "c" for k in kinds):
        return "compiled"
    if all(k == "py" for k in kinds):
        return "pure Python"
    return f"partly compiled ({kinds.count('c')} of {len(kinds)} modules)"
