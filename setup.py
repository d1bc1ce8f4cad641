"""Builds the C wire core; everything else is declared in pyproject.toml.

Set DOTPROXY_NO_EXTENSION=1 to install without compiling (the pure-Python twin runs).
"""

import os

from setuptools import Extension, setup

extensions = []
if os.environ.get("DOTPROXY_NO_EXTENSION", "") in ("", "0"):
    from Cython.Build import cythonize

    extensions = cythonize(
        [Extension("dotproxy._wire", ["src/dotproxy/_wire.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=extensions)
