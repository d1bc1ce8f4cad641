"""Batched UDP syscalls for the UDP listener: the façade over ``_udpbatch`` (recvmmsg/sendmmsg, Linux)
and its Python twin ``_udpbatch_py`` (recvfrom/sendto loops).

:data:`IMPLEMENTATION` is ``"c"`` when the extension is built, else ``"py"``; :data:`AVAILABLE`
says whether the listener should use the batched path (only with the extension: the twin exists
for tests and for the house rule, it is slower than the event loop's own datagram transport).
``DOTPROXY_NO_UDPBATCH=1`` turns the batched listener off.

See ``_udpbatch.pyx`` for ``recv_many`` / ``send_many``; endpoints are raw sockaddr bytes,
opaque to flows; :func:`endpoint_to_tuple` / :func:`tuple_to_endpoint` convert. ``quickack(fd)``
(TCP_QUICKACK, for the pooled TCP upstreams) lives here too: the module holds the socket calls
the event loops do not make cheaply.
"""

from __future__ import annotations

import os

from dotproxy import compiled as _compiled
from dotproxy._udpbatch_py import endpoint_to_tuple, tuple_to_endpoint  # noqa: F401

try:
    if _compiled.PURE_PYTHON:
        raise ImportError("pure Python asked for")
    from dotproxy._udpbatch import MAX_BATCH, quickack, recv_many, send_many  # type: ignore[import-not-found]

    IMPLEMENTATION = "c"
except ImportError:
    from dotproxy._udpbatch_py import MAX_BATCH, quickack, recv_many, send_many  # noqa: F401

    IMPLEMENTATION = "py"

AVAILABLE = IMPLEMENTATION == "c" and os.environ.get("DOTPROXY_NO_UDPBATCH", "") in ("", "0")
