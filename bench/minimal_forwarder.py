"""The efficiency baseline: the least a UDP -> DoT forwarder can do in Python.

    python3 bench/minimal_forwarder.py --listen 127.0.0.1:5300 --upstream 127.0.0.1:853 --ca-file CA [--tls-name N]

One uvloop UDP socket in, one pipelined TLS connection out, IDs remapped, writes
batched per loop iteration — and nothing else: no deadlines, no cancellation, no
flows, no failover, no metrics, no validation. dotproxy does all of that; the
engine issue asks it to stay as cheap per query as this. ``bench/engine_cpu.py``
runs both in the same session and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import struct

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiting: dict[int, tuple[int, tuple]] = {}  # our ID -> (client ID, client address)
        self.next_id = 0
        self.out: list[bytes] = []
        self.client: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, data: bytes, addr) -> None:
        self.next_id = (self.next_id + 1) & 0xFFFF
        self.waiting[self.next_id] = (data[:2], addr)
        self.out.append(struct.pack("!HH", len(data), self.next_id) + data[2:])
        if len(self.out) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        off = 0
        while len(buf) - off >= 2:
            n = (buf[off] << 8) | buf[off + 1]
            if len(buf) - off - 2 < n:
                break
            msg = bytes(buf[off + 2:off + 2 + n])
            off += 2 + n
            entry = self.waiting.pop((msg[0] << 8) | msg[1], None)
            if entry is not None:
                self.client.sendto(entry[0] + msg[2:], entry[1])
        del buf[:off]


class Listener(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def connection_made(self, transport) -> None:
        self.upstream.client = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) >= 12:
            self.upstream.send(data, addr)


async def main(args) -> None:
    loop = asyncio.get_running_loop()
    host, port = args.upstream.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=args.ca_file)
    upstream = Upstream()
    await loop.create_connection(lambda: upstream, host, int(port), ssl=ctx, server_hostname=args.tls_name)
    lhost, lport = args.listen.rsplit(":", 1)
    await loop.create_datagram_endpoint(lambda: Listener(upstream), local_addr=(lhost, int(lport)))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--tls-name", default="localhost")
    uvloop.run(main(p.parse_args()))
