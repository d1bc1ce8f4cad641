"""Builds the C wire core, the batched UDP syscalls (Linux) and the per-query path (plain
Python modules compiled with the types of their .pxd files, see dotproxy/compiled.py);
everything else is declared in pyproject.toml.

Set DOTPROXY_NO_EXTENSION=1 to install without compiling (the pure-Python twins run).
"""

import os
import runpy
import sys

from setuptools import Extension, setup

# The per-query path's modules (one list, in the package; it imports only the standard library).
COMPILED_MODULES = runpy.run_path("src/dotproxy/compiled.py")["COMPILED_MODULES"]

extensions = []
if os.environ.get("DOTPROXY_NO_EXTENSION", "") in ("", "0"):
    from Cython.Build import cythonize

    modules = [Extension("dotproxy._wire", ["src/dotproxy/_wire.pyx"], extra_compile_args=["-O2"])]
    if sys.platform.startswith("linux"):
        # recvmmsg/sendmmsg for the UDP listener; optional: a failed build leaves the Python twin.
        modules.append(Extension("dotproxy._udpbatch", ["src/dotproxy/_udpbatch.pyx"], extra_compile_args=["-O2"],
                                 define_macros=[("_GNU_SOURCE", None)], optional=True))
    # The per-query path: plain Python modules that Cython compiles with the C types their .pxd
    # files declare. The .py files are their own Python twins (DOTPROXY_PURE_PYTHON=1 runs them).
    for module in COMPILED_MODULES:
        path = "src/" + module.replace(".", "/") + ".py"
        modules.append(Extension(module, [path], extra_compile_args=["-O2"], optional=True))
    extensions = cythonize(modules, compiler_directives={"language_level": "3", "annotation_typing": False})

setup(ext_modules=extensions)
