"""dotproxy: an asyncio DNS forwarding engine, plain DNS in, DNS-over-TLS and DNS-over-HTTPS/2 out."""

from dotproxy import compiled as _compiled

__version__ = "0.1.0"

if _compiled.PURE_PYTHON:  # the per-query modules from their .py, not their compiled twins
    _compiled.install_source_finder()
