"""CPU per query of the sans-IO protocol cores, this build against their own source, in one run.

    python3 bench/protocol_cores.py [--queries 20000] [--batch 50] [--rounds 5]

The rig and the load scripts measure whole processes, where sleeping and waking (the
kernel's share, and on a virtual machine the hypervisor's) moves figures by 10-30% between
runs; this measures only the per-query code of the cores, with no socket and no loop, so
a change to a core shows its effect here first. For each core:

* **DoH** (:class:`dotproxy.proto.doh.DohClient`): ``send_query`` for a batch of queries,
  ``data_to_send``, then ``receive_data`` of the server's HEADERS and DATA frames for the
  batch (recorded once from an ``h2`` server, then replayed into a fresh client: the same
  inputs give the same frames, so the replay is exact);
* **DoT** (:class:`dotproxy.proto.dot.StreamClient`): the same with length-prefixed answers.

Each figure runs in a child process: ``compiled`` imports the package as built (the
extensions where they exist), ``source`` loads the modules of :mod:`dotproxy.compiled`
from their ``.py`` files (the wire core stays C in both). Medians of ``--rounds``
interleaved rounds, in microseconds per query, and the ratio source / compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _queries(n: int) -> list[bytes]:
    import dns.message

    out = []
    for i in range(n):
        q = dns.message.make_query(f"n{i:07d}.bench.example.", "A")
        q.id = i & 0xFFFF
        out.append(q.to_wire())
    return out


def _answer(query: bytes, wire_id: int) -> bytes:
    from dotproxy.testing.answer import default_answer
    from dotproxy.wire import set_id

    return set_id(default_answer(query), wire_id)


def record_doh(queries: list[bytes], batch: int) -> list[bytes]:
    """What an h2 server sends back, batch by batch, to a fresh DohClient asking ``queries``."""
    import h2.config
    import h2.connection
    import h2.events

    from dotproxy.proto.doh import DohClient

    client = DohClient(authority="localhost", path="/dns-query")
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    replies = []
    bodies: dict[int, bytearray] = {}

    def serve(data: bytes) -> bytes:
        for event in server.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                body = _answer(bytes(bodies.pop(event.stream_id)), 0)
                server.send_headers(event.stream_id, [(b":status", b"200"),
                                                      (b"content-type", b"application/dns-message"),
                                                      (b"content-length", str(len(body)).encode())])
                server.send_data(event.stream_id, body, end_stream=True)
        return server.data_to_send()

    replies.append(serve(client.data_to_send()))  # the prefaces and SETTINGS
    client.receive_data(replies[0], 0.0)
    for start in range(0, len(queries), batch):
        for q in queries[start:start + batch]:
            client.send_query(q, 0.0)
        reply = serve(client.data_to_send())
        events = client.receive_data(reply, 0.0)
        assert len(events) == len(queries[start:start + batch]), events
        replies.append(reply)
    return replies


def record_dot(queries: list[bytes], batch: int) -> list[bytes]:
    from dotproxy.proto.dot import StreamClient

    client = StreamClient(pad_block=128, keepalive=True)
    replies = []
    for start in range(0, len(queries), batch):
        ids = [client.send_query(q, 0.0) for q in queries[start:start + batch]]
        client.data_to_send()
        reply = b"".join(len(a).to_bytes(2, "big") + a
                         for a in (_answer(q, i) for q, i in zip(queries[start:start + batch], ids)))
        assert len(client.receive_data(reply, 0.0)) == len(ids)
        replies.append(reply)
    return replies


def measure(core: str, n: int, batch: int) -> float:
    """Microseconds of CPU per query, replaying the recorded exchange into a fresh client."""
    import time

    from dotproxy.wire import parse_query

    queries = _queries(n)
    parsed = [parse_query(q) for q in queries]
    if core == "doh":
        from dotproxy.proto.doh import DohClient

        replies = record_doh(queries, batch)
        client = DohClient(authority="localhost", path="/dns-query")
        client.data_to_send()
        client.receive_data(replies[0], 0.0)
        replies = replies[1:]
    else:
        from dotproxy.proto.dot import StreamClient

        replies = record_dot(queries, batch)
        client = StreamClient(pad_block=128, keepalive=True)
    send, receive, drain = client.send_query, client.receive_data, client.data_to_send
    answered = 0
    t0 = time.process_time()
    for k, start in enumerate(range(0, n, batch)):
        for i in range(start, min(start + batch, n)):
            send(queries[i], 1.0, parsed[i])
        drain()
        answered += len(receive(replies[k], 1.0))
    elapsed = time.process_time() - t0
    assert answered == n, (answered, n)
    return elapsed / n * 1e6


def _child(kind: str, core: str, n: int, batch: int) -> float:
    code = ("import sys, json; sys.path.insert(0, %r); "
            "import dotproxy.compiled as c; %s"
            "import protocol_cores as p; print(json.dumps(p.measure(%r, %d, %d)))"
            % (os.path.join(ROOT, "bench"), "c.install_source_finder(); " if kind == "source" else "",
               core, n, batch))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cores", default="doh,dot")
    a = ap.parse_args()
    print(f"{a.queries} queries in batches of {a.batch}; medians of {a.rounds} interleaved rounds (us of CPU per query)")
    for core in a.cores.split(","):
        runs: dict[str, list[float]] = {"compiled": [], "source": []}
        for _ in range(a.rounds):
            for kind in runs:
                runs[kind].append(_child(kind, core, a.queries, a.batch))
        c, s = statistics.median(runs["compiled"]), statistics.median(runs["source"])
        print(f"{core}: this build {c:.2f} us/query, its source {s:.2f} us/query: {s / c:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
