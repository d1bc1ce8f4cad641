"""Builds the C wire core; everything else is declared in pyproject.toml.

Set DOTPROXY_NO_EXTENSION=1 to install without compiling (the pure-Python twin runs).
"""

import os
import sys

from setuptools import Extension, setup

extensions = []
if os.environ.get("DOTPROXY_NO_EXTENSION", "") in ("", "0"):
    from Cython.Build import cythonize

    modules = [Extension("dotproxy._wire", ["src/dotproxy/_wire.pyx"], extra_compile_args=["-O2"])]
    if sys.platform.startswith("linux"):
        # recvmmsg/sendmmsg for the UDP listener; optional: a failed build leaves the Python twin.
        modules.append(Extension("dotproxy._udpbatch", ["src/dotproxy/_udpbatch.pyx"], extra_compile_args=["-O2"],
                                 define_macros=[("_GNU_SOURCE", None)], optional=True))
    extensions = cythonize(modules, compiler_directives={"language_level": "3"})

setup(ext_modules=extensions)
