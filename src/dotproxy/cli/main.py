"""``dotproxy`` commands.

    dotproxy serve [--listen HOST:PORT] [--upstream URL ...] [--ca-file PEM] [--no-cache] [--config FILE]

A config file (TOML) may set the same things; flags win over the file::

    listen = "127.0.0.1:5353"
    upstreams = ["tls://9.9.9.9:853#dns.quad9.net", "https://dns.google/dns-query"]
    ca_file = "/etc/ssl/certs/ca-certificates.crt"
    cache = true
    timeout = 4.0
    [upstream_options]
    pool_size = 2
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import signal
import sys
import tomllib
from dataclasses import fields

from dotproxy.engine import DEFAULT_UPSTREAMS, Engine, EngineConfig
from dotproxy.errors import ConfigError
from dotproxy import compiled, querylog
from dotproxy.io.loop import loop_factory, loop_name
from dotproxy.querylog import QueryRecord

log = logging.getLogger("dotproxy")

DEFAULT_LISTEN = "127.0.0.1:5353"
_FILE_KEYS = {"listen", "upstreams", "ca_file", "cache", "timeout", "max_in_flight", "tcp_idle_timeout",
              "tcp_max_connections", "tcp_max_pipeline", "upstream_options", "shutdown_grace"}


def parse_listen(text: str, where: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"expected HOST:PORT (e.g. 127.0.0.1:5353 or [::1]:5353), got {text!r}", where=where)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError as e:
        raise ConfigError(f"{host!r} is not an IP address", where=where) from e
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad port {port!r}", where=where)
    return host, int(port)


def load_config_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", where=path) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", where=path) from e
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FILE_KEYS))}",
                          where=path)
    types = {"listen": str, "ca_file": str, "cache": bool, "timeout": (int, float), "max_in_flight": int,
             "tcp_idle_timeout": (int, float), "tcp_max_connections": int, "tcp_max_pipeline": int,
             "upstream_options": dict, "shutdown_grace": (int, float)}
    for key, want in types.items():
        if key in data and (not isinstance(data[key], want) or (want is int and isinstance(data[key], bool))):
            raise ConfigError(f"wrong type {type(data[key]).__name__}", where=f"{path}: {key}")
    if "upstreams" in data and (not isinstance(data["upstreams"], list)
                                or not all(isinstance(u, str) for u in data["upstreams"])):
        raise ConfigError("must be a list of URL strings", where=f"{path}: upstreams")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dotproxy", description="DNS forwarder: plain DNS in, DoT/DoH out.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="forward UDP/TCP DNS on a local address to encrypted upstreams")
    serve.add_argument("--listen", help=f"HOST:PORT for UDP and TCP (default {DEFAULT_LISTEN}; "
                                        "a non-loopback address has to be asked for here)")
    serve.add_argument("--upstream", action="append", dest="upstreams", metavar="URL",
                       help="tls://HOST[:PORT][#NAME], https://HOST/PATH, udp://, tcp:// (repeatable; "
                            f"default: {' '.join(DEFAULT_UPSTREAMS)})")
    serve.add_argument("--ca-file", help="CA bundle to verify upstream certificates (default: system store)")
    serve.add_argument("--no-cache", action="store_true", help="answer every query from upstream")
    serve.add_argument("--config", help="TOML config file (flags override it)")
    serve.add_argument("--timeout", type=float, help="seconds each query may take (default 4)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-queries", action="store_true", help="log one line per query (qname, rcode, latency)")
    serve.add_argument("--progress", type=float, default=0.0, metavar="SECONDS",
                       help="print queries/s, outcomes and latency percentiles every SECONDS (default: off)")
    return parser


def engine_config(args: argparse.Namespace) -> tuple[EngineConfig, tuple[str, int], float]:
    data = load_config_file(args.config) if args.config else {}
    where = args.config or "flags"
    listen = parse_listen(args.listen) if args.listen else parse_listen(data.get("listen", DEFAULT_LISTEN),
                                                                       where=f"{where}: listen")
    values = {k: v for k, v in data.items() if k in {f.name for f in fields(EngineConfig)}}
    if "upstreams" in values:
        values["upstreams"] = tuple(values["upstreams"])
    if args.upstreams:
        values["upstreams"] = tuple(args.upstreams)
    if args.ca_file:
        values["ca_file"] = args.ca_file
    if args.no_cache:
        values["cache"] = False
    if args.timeout is not None:
        values["timeout"] = args.timeout
    try:
        config = EngineConfig(**values)
    except ConfigError as e:
        raise ConfigError(str(e), where=where) from e
    grace = float(data.get("shutdown_grace", 2.0))
    if grace < 0:
        raise ConfigError(f"must be 0 or more, not {grace}", where=f"{where}: shutdown_grace")
    return config, listen, grace


#: Net allocations of GC-tracked objects before a youngest-generation collection (CPython: 700).
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Keep the cycle collector off the hot path of a serving process (not the library's call:
    an embedding host owns its process's collector).

    Nothing a query makes is cyclic (tests/engine/test_engine_garbage.py), so reference
    counting frees it; but with CPython's default threshold (700) a collection still ran
    every few hundred queries under load, found only the live in-flight objects, promoted
    them, and every ~1 s a full collection (5-10 ms, measured with gc.callbacks) stopped the
    loop. With 20,000 the in-flight objects of a loaded forwarder (about 14 per query) no
    longer trigger collections; cycles that do happen (error paths) are still collected.
    ``gc.freeze()`` leaves what startup made (modules, config, TLS contexts) out of every
    later collection.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


#: glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MALLOC_MMAP_THRESHOLD = 4 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20


def tune_malloc() -> bool:
    """Keep glibc's malloc from giving memory back to the system on every TLS read (serving
    processes only, as tune_gc; returns whether it applied: glibc only).

    uvloop reads TLS records into a fresh 256 KiB buffer per SSL_read (CPython's
    SSLObject.read(n) allocates n bytes, then shrinks them). With glibc's dynamic thresholds
    the heap top around such buffers was trimmed and regrown, page faults and all, again and
    again: with a DoH upstream, whose small HTTP/2 frames make many records, half the
    process's CPU went there (py-spy: 55% in SSLObject.read). Fixed thresholds (allocations
    under 4 MiB from the heap; trim only past 64 MiB free) doubled DoH throughput on the
    rig (21k -> 42k queries/s) and left DoT as it was. Memory is still reused, not held per
    query: the heap stays at its peak, as with any long-running server.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # only glibc has it (not musl, not macOS)
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))



class Progress:
    """Every ``interval`` seconds, one line: queries/s, outcomes, in flight, latency percentiles."""

    def __init__(self, interval: float) -> None:
        self.engine: Engine | None = None
        self.interval = interval
        self.latencies: list[float] = []
        self._last = (0, 0, 0)
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._since = self._loop.time()

    def record(self, r: QueryRecord) -> None:
        self.latencies.append(r.latency)

    def start(self, engine: Engine) -> None:
        self.engine = engine
        self._since = self._loop.time()
        self._timer = self._loop.call_later(self.interval, self.report)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def report(self) -> None:
        now = self._loop.time()
        s = self.engine.stats
        queries, answered, servfail = s.queries - self._last[0], s.answered - self._last[1], s.servfail - self._last[2]
        self._last = (s.queries, s.answered, s.servfail)
        lat = sorted(self.latencies)
        self.latencies = []
        pct = "" if not lat else (f", latency p50 {lat[len(lat) // 2] * 1000:.2f} ms"
                                  f" p99 {lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000:.2f} ms")
        log.info("%.0f q/s: %d queries, %d answered, %d SERVFAIL, %d in flight%s", queries / (now - self._since),
                 queries, answered, servfail, self.engine.in_flight, pct)
        self._since = now
        self._timer = self._loop.call_later(self.interval, self.report)


async def serve(config: EngineConfig, listen: tuple[str, int], grace: float, *, log_queries: bool = False,
                progress: float = 0.0) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ticker = Progress(progress) if progress > 0 else None
    subscribers = [querylog.log_to(logging.getLogger("dotproxy.queries"))] if log_queries else []
    if ticker is not None:
        subscribers.append(ticker.record)
    engine = Engine(config, query_log=querylog.fan_out(subscribers))
    started = loop.time()
    if ticker is not None:
        ticker.start(engine)
    try:
        await engine.start()
        host, port = await engine.listen(*listen)
        if not ipaddress.ip_address(host).is_loopback:
            log.warning("listening on %s, which is not loopback: anyone who reaches it can use this resolver", host)
        cache = "not built yet, every query goes upstream" if config.cache else "off"
        log.info("dotproxy listening on %s:%d (UDP and TCP), forwarding to %s; cache %s; %s; per-query path %s",
                 host, port, ", ".join(config.upstreams), cache, loop_name(loop), compiled.summary())
        tune_gc()
        if not tune_malloc():
            log.debug("malloc not tuned (not glibc)")
        await stop.wait()
        log.info("shutting down: in-flight queries get %.1fs", grace)
    finally:
        if ticker is not None:
            ticker.stop()
        await engine.stop(grace=grace)
        s = engine.stats
        elapsed = loop.time() - started
        log.info("served %d queries in %.1fs (%.0f q/s): %d answered, %d SERVFAIL, %d FORMERR, %d refused (overload)",
                 s.queries, elapsed, s.queries / elapsed if elapsed > 0 else 0.0, s.answered, s.servfail, s.formerr,
                 s.refused_overload)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, listen, grace = engine_config(args)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(config, listen, grace, log_queries=args.log_queries, progress=args.progress))
    except ConfigError as e:
        print(f"dotproxy: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
