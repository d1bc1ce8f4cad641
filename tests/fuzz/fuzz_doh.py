#!/usr/bin/env python3
"""Atheris harness: the DoH client's HTTP/2 and HPACK input path (dotproxy.proto.doh.DohClient.receive_data).

    python tests/fuzz/fuzz_doh.py [CORPUS_DIR ...] -max_total_time=20 -runs=N

Each input is what a server sends on a connection where the client has three
queries open. The first byte says where to cut it into reads; the rest is the
byte stream. The harness fails (libFuzzer reports a crash) when anything raises
out of receive_data, when an event is not one of DohClient's, when the client
reports an error of its own (a ConnectionBroken whose reason is "HTTP/2 client
error": a bug, caught by the last-resort handler), when queries leak (not
answered, failed or handed back, yet no longer outstanding), or when the client
as built (Cython, C types from doh.pxd) and its Python source disagree on any
event or on what is left outstanding. The source is what atheris instruments
(compiled code gives it no coverage), so the search is guided by the twin and
every input is checked on both.

``--seeds DIR`` writes a few valid server byte streams into DIR and exits.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

import dns.message  # noqa: E402

from dotproxy import wire  # noqa: E402
from dotproxy.testing import default_answer  # noqa: E402

QUERIES = [dns.message.make_query(f"f{i}.example", "A", id=0x5A5A + i).to_wire() for i in range(3)]  # fixed IDs: reproducible


def _twins() -> dict:
    """``dotproxy.proto.{http2,hpack_lite,doh}`` loaded from their .py files, beside the modules
    the package imported (the extensions, where built). While they load, the source modules
    stand in for the built ones, so the twin DohClient decodes with the twin HPACK decoder."""
    import importlib.util

    import dotproxy.proto.doh  # noqa: F401 (as built, first)

    package = sys.modules["dotproxy.proto"]
    saved, twins = {}, {}
    try:
        for leaf in ("http2", "hpack_lite", "doh"):
            name = f"dotproxy.proto.{leaf}"
            spec = importlib.util.spec_from_file_location(name, os.path.join(SRC, "dotproxy", "proto", leaf + ".py"))
            module = importlib.util.module_from_spec(spec)
            saved.setdefault(name, sys.modules[name])
            # Both ways in: ``import dotproxy.proto.x`` reads sys.modules, ``from dotproxy.proto import x``
            # the package's attribute.
            sys.modules[name] = module
            setattr(package, leaf, module)
            spec.loader.exec_module(module)
            twins[leaf] = module
    finally:
        sys.modules.update(saved)
        for name, module in saved.items():
            setattr(package, name.rpartition(".")[2], module)
    for leaf, module in twins.items():
        assert module.__file__.endswith(".py"), module.__file__
    assert twins["doh"].h is twins["http2"] and twins["doh"].Decoder is twins["hpack_lite"].Decoder
    return twins


_TWINS: dict = {}


def _client(doh=None):
    from dotproxy.proto import http2 as h

    if doh is None:
        import dotproxy.proto.doh as doh
    c = doh.DohClient(authority="dns.test")
    c.receive_data(h.settings_frame({}), 0.0)
    ids = [c.send_query(q, 0.0) for q in QUERIES]
    c.data_to_send()
    return c, ids


def seeds() -> list[bytes]:
    from hpack import Encoder

    from dotproxy.proto import http2 as h

    out = []
    for huffman in (False, True):
        enc = Encoder()
        data = h.settings_frame({h.MAX_CONCURRENT_STREAMS: 2, h.INITIAL_WINDOW_SIZE: 1000})
        for i, q in enumerate(QUERIES):
            sid = 2 * i + 1
            body = default_answer(wire.pad(wire.set_id(q, 0), 128))
            block = enc.encode([(b":status", b"200"), (b"content-type", b"application/dns-message"),
                                (b"content-length", str(len(body)).encode())], huffman=huffman)
            data += h.frame(h.HEADERS, 0, sid, block[:3]) + h.frame(h.CONTINUATION, h.END_HEADERS, sid, block[3:])
            data += h.frame(h.DATA, h.PADDED, sid, b"\x02" + body[:9] + b"\x00\x00")
            data += h.frame(h.DATA, h.END_STREAM, sid, body[9:])
        data += h.ping_frame(b"12345678") + h.window_update_frame(0, 10) + h.rst_stream_frame(1, 7)
        out.append(b"\x07" + data + h.goaway_frame(3, 0))
    return out


def _summary(ev) -> tuple:
    """What must be the same whichever implementation made ``ev`` (classes differ by module)."""
    kind = type(ev).__name__
    if kind == "AnswerReceived":
        return (kind, ev.query_id, ev.data)
    if kind == "QueryFailed":
        return (kind, ev.query_id, type(ev.error).__name__, ev.error.detail, ev.retry)
    if kind == "GoAwayReceived":
        return (kind, list(ev.unprocessed), int(ev.error_code))
    if kind == "ConnectionBroken":
        return (kind, ev.reason, list(ev.query_ids))
    if kind == "PingAcknowledged":
        return (kind,)
    raise AssertionError(f"unknown event {ev!r}")


def _run(data: bytes, doh=None) -> list:
    """Feed the input to a fresh client; check it; return the events' summaries and what is left."""
    cut = data[0] or 1
    stream = data[1:]
    c, ids = _client(doh)
    settled = set()
    seen = []
    for i in range(0, len(stream), cut):
        for ev in c.receive_data(stream[i : i + cut], 1.0):
            summary = _summary(ev)
            seen.append(summary)
            kind = summary[0]
            if kind == "ConnectionBroken":
                if ev.reason.startswith("HTTP/2 client error"):
                    raise AssertionError(f"the client failed on its own: {ev.reason}")
                settled.update(ev.query_ids)
            elif kind == "GoAwayReceived":
                settled.update(ev.unprocessed)
            elif kind in ("AnswerReceived", "QueryFailed"):
                settled.add(ev.query_id)
        seen.append(("sent", c.data_to_send()))
    if c.outstanding + len(settled) != len(ids):
        raise AssertionError(f"{len(ids)} queries, {len(settled)} settled, {c.outstanding} outstanding")
    seen.append(("outstanding", c.outstanding, c.accepting))
    return seen


def one_input(data: bytes) -> None:
    if not data:
        return
    if not _TWINS:
        _TWINS.update(_twins())
    built = _run(data)
    source = _run(data, _TWINS["doh"])
    if built != source:
        at = next(i for i, (a, b) in enumerate(zip(built + [None], source + [None])) if a != b)
        raise AssertionError(f"the built client and its source disagree at step {at}: "
                             f"{built[at] if at < len(built) else None!r} != {source[at] if at < len(source) else None!r}")


def _functions(value) -> list:
    """The Python functions of a module-level function or class (methods, properties, static and
    class methods), for atheris to instrument."""
    if hasattr(value, "__code__"):
        return [value]
    if not isinstance(value, type):
        return []
    found = []
    for attr in vars(value).values():
        if isinstance(attr, property):
            found += [f for f in (attr.fget, attr.fset, attr.fdel) if f is not None]
        elif isinstance(attr, (staticmethod, classmethod)):
            found.append(attr.__func__)
        elif hasattr(attr, "__code__"):
            found.append(attr)
    return [f for f in found if hasattr(f, "__code__")]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        for i, s in enumerate(seeds()):
            with open(os.path.join(sys.argv[2], f"seed{i}"), "wb") as f:
                f.write(s)
        return
    import atheris

    import dotproxy.proto.doh
    from dotproxy import compiled

    if dotproxy.proto.doh.__file__.endswith(".py") and not compiled.PURE_PYTHON:
        # Built against itself the comparison would prove nothing: build first (pip install -e .).
        raise SystemExit(f"the DoH core is not built: {dotproxy.proto.doh.__file__}")
    _TWINS.update(_twins())
    for module in _TWINS.values():  # coverage from the source twins (the extensions give none)
        for value in vars(module).values():
            if getattr(value, "__module__", None) != module.__name__:
                continue
            for func in _functions(value):
                atheris.instrument_func(func)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
