#!/usr/bin/env python3
"""Atheris harness: the DoH client's HTTP/2 and HPACK input path (dotproxy.proto.doh.DohClient.receive_data).

    python tests/fuzz/fuzz_doh.py [CORPUS_DIR ...] -max_total_time=20 -runs=N

Each input is what a server sends on a connection where the client has three
queries open. The first byte says where to cut it into reads; the rest is the
byte stream. The harness fails (libFuzzer reports a crash) when anything raises
out of receive_data, when an event is not one of DohClient's, when the client
reports an error of its own (a ConnectionBroken whose reason is "HTTP/2 client
error": a bug, caught by the last-resort handler), or when queries leak (not
answered, failed or handed back, yet no longer outstanding).

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


def _client():
    from dotproxy.proto import http2 as h
    from dotproxy.proto.doh import DohClient

    c = DohClient(authority="dns.test")
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


def one_input(data: bytes) -> None:
    from dotproxy.proto.doh import AnswerReceived, ConnectionBroken, GoAwayReceived, PingAcknowledged, QueryFailed

    if not data:
        return
    cut = data[0] or 1
    stream = data[1:]
    c, ids = _client()
    settled = set()
    for i in range(0, len(stream), cut):
        for ev in c.receive_data(stream[i : i + cut], 1.0):
            kind = type(ev)
            if kind is ConnectionBroken:
                if ev.reason.startswith("HTTP/2 client error"):
                    raise AssertionError(f"the client failed on its own: {ev.reason}")
                settled.update(ev.query_ids)
            elif kind is GoAwayReceived:
                settled.update(ev.unprocessed)
            elif kind in (AnswerReceived, QueryFailed):
                settled.add(ev.query_id)
            elif kind is not PingAcknowledged:
                raise AssertionError(f"unknown event {ev!r}")
        c.data_to_send()
    if c.outstanding + len(settled) != len(ids):
        raise AssertionError(f"{len(ids)} queries, {len(settled)} settled, {c.outstanding} outstanding")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        for i, s in enumerate(seeds()):
            with open(os.path.join(sys.argv[2], f"seed{i}"), "wb") as f:
                f.write(s)
        return
    import atheris

    with atheris.instrument_imports():
        import dotproxy.proto.doh  # noqa: F401
        import dotproxy.proto.hpack_lite  # noqa: F401
        import dotproxy.proto.http2  # noqa: F401
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
