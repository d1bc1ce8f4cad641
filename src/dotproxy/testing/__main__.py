"""Run a :class:`~dotproxy.testing.TestUpstream` in its own process.

    python -m dotproxy.testing [--host 127.0.0.1] [--latency S] [--drop P] ...

Prints ONE json line on stdout when ready (addresses, URLs, ``ca_file``,
``tls_name``, ``spki_pin``, ``pid``) and serves until SIGINT/SIGTERM, until stdin
closes (so a parent that dies or closes the pipe takes the server with it; pass
``--ignore-stdin`` when starting it with stdin at /dev/null) or until
``--max-seconds`` have passed (default one hour). On the way out it prints the
counters as one json line on stderr. Loopback addresses only. Uses uvloop when it
is installed, unless ``--no-uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys
import threading

from dotproxy.io.loop import loop_factory
from dotproxy.testing.faults import Faults
from dotproxy.testing.server import TestUpstream

MAX_SECONDS_LIMIT = 7 * 24 * 3600


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a probability is between 0 and 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError("seconds between 0 and 3600")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError("a count of at least 1")
    return value


def _status(text: str) -> int:
    value = int(text)
    if not 200 <= value <= 599:
        raise argparse.ArgumentTypeError("an HTTP status between 200 and 599")
    return value


def _loopback(text: str) -> str:
    host = "127.0.0.1" if text == "localhost" else text
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"loopback addresses only, not {text!r}")
    return host


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dotproxy.testing",
        description="A fault-injecting DNS upstream (UDP, TCP, DoT, DoH/2) on loopback.",
    )
    p.add_argument("--host", type=_loopback, default="127.0.0.1", help="127.0.0.1 (default) or ::1")
    p.add_argument("--latency", type=_seconds, default=0.0, help="seconds before each answer")
    p.add_argument("--jitter", type=_seconds, default=0.0, help="uniform extra 0..J seconds")
    p.add_argument("--reorder", action="store_true", help="send each batch of stream replies reversed")
    p.add_argument("--drop", type=_probability, default=0.0, help="probability a query is never answered")
    p.add_argument("--wrong-id", type=_probability, default=0.0, help="probability of a reply with a wrong ID")
    p.add_argument("--garbage", type=_probability, default=0.0, help="probability of a random-bytes reply")
    p.add_argument("--stall", action="store_true", help="accept, finish TLS, never answer")
    p.add_argument("--close-after", type=_count, default=None, help="close stream connections after N replies")
    p.add_argument("--idle-close", type=_seconds, default=None, help="close stream connections idle for S seconds")
    p.add_argument("--tls-fail", action="store_true", help="fail every TLS handshake")
    p.add_argument("--goaway-after", type=_count, default=None, help="DoH: GOAWAY after N streams per connection")
    p.add_argument("--max-concurrent-streams", type=_count, default=None, help="DoH SETTINGS_MAX_CONCURRENT_STREAMS")
    p.add_argument("--http-status", type=_status, default=None, help="DoH: answer requests with this status")
    p.add_argument("--http-status-rate", type=_probability, default=1.0, help="probability of --http-status")
    p.add_argument("--truncate-udp", action="store_true", help="UDP replies carry TC=1 and no records")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument("--ignore-stdin", action="store_true", help="do not stop when stdin closes")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long (default 3600)")
    return p


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(
        latency=args.latency,
        jitter=args.jitter,
        reorder=args.reorder,
        drop=args.drop,
        wrong_id=args.wrong_id,
        garbage=args.garbage,
        stall=args.stall,
        close_after=args.close_after,
        idle_close=args.idle_close,
        tls_fail=args.tls_fail,
        goaway_after=args.goaway_after,
        max_concurrent_streams=args.max_concurrent_streams,
        http_status=args.http_status,
        http_status_rate=args.http_status_rate,
        truncate_udp=args.truncate_udp,
    )


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches end of file (a daemon thread: reads block)."""
    try:
        stream = sys.stdin.buffer
        while stream.read1(65536):
            pass
    except (OSError, ValueError, AttributeError):
        pass
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:  # the loop is already closed
        pass


async def serve(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    async with TestUpstream(faults=faults_from_args(args), host=args.host) as up:
        info = up.describe()
        info["pid"] = os.getpid()
        info["loop"] = type(loop).__module__.split(".")[0]
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        if not args.ignore_stdin:
            threading.Thread(target=_watch_stdin, args=(loop, stop), name="stdin-watch", daemon=True).start()
        try:
            await asyncio.wait_for(stop.wait(), min(max(args.max_seconds, 0.0), MAX_SECONDS_LIMIT))
        except asyncio.TimeoutError:
            pass
        return up.stats.snapshot()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory(not args.no_uvloop)) as runner:
        stats = runner.run(serve(args))
    sys.stderr.write(json.dumps({"stats": stats}) + "\n")
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
