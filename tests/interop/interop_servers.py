"""Real DNS servers on loopback for the interop tests: unbound, dnsdist, kresd.

Each ``start_*`` function starts one server in its own directory, on free ports of
127.0.0.1, with a certificate from a private CA (SANs ``DNS:localhost``, ``IP:127.0.0.1``),
waits (bounded) until it answers a real query over each of its transports, and returns a
:class:`Server`: the URLs dotproxy takes, the CA file, the PID, ``counters()`` and
``stop()``. Nothing leaves loopback: unbound answers every name under :data:`ZONE` from
local data (a redirect zone), and dnsdist and kresd forward to that unbound.

A missing binary raises :class:`MissingBinary` (the fixtures turn it into a failure
naming the Debian package), a server that does not come up :class:`ServerStartError`
with the tail of its log.

Debian 12 builds used: unbound 1.17.1 (``--with-libnghttp2``: DoH), dnsdist 1.7.3
(``dns-over-tls(openssl) dns-over-https(DOH)``), kresd 5.6.0.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

LOOPBACK = "127.0.0.1"
ZONE = "interop.test"
ANSWER_A = "192.0.2.1"  # TEST-NET-1: every name under ZONE resolves to it
TLS_NAME = "localhost"  # the name clients verify (a SAN of the server certificate)
DOH_PATH = "/dns-query"
START_TIMEOUT = 20.0  # seconds a server gets to answer its first query on every transport
INSTALL_HINT = "apt-get install dnsdist knot-resolver unbound"
PACKAGES = {"unbound": "unbound", "unbound-control": "unbound", "unbound-checkconf": "unbound", "dnsdist": "dnsdist", "kresd": "knot-resolver"}


class MissingBinary(Exception):
    """A server binary is not installed."""


class ServerStartError(Exception):
    """A server did not start, or did not answer in time (the message carries its log tail)."""


def require_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        raise MissingBinary(f"{name} is not installed (Debian package {PACKAGES.get(name, name)}): "
                            f"{INSTALL_HINT}")
    return path


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (and not handed out before in this process)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((LOOPBACK, 0))
            port = t.getsockname()[1]
            if port in _handed_out:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServerStartError("no free port pair on 127.0.0.1")


@dataclass(frozen=True)
class Certs:
    directory: str
    ca_file: str
    cert_file: str
    key_file: str


def make_certs(directory: str) -> Certs:
    """A private CA and a server certificate for localhost / 127.0.0.1 (dotproxy.testing.certs)."""
    from dotproxy.testing.certs import make_certificates

    c = make_certificates(directory, tls_name=TLS_NAME, days=7)
    return Certs(directory=directory, ca_file=c.ca_file, cert_file=c.cert_file, key_file=c.key_file)


# ------------------------------------------------------------------ processes


def _die_with_parent() -> None:  # preexec: SIGTERM the server if the test process dies
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


class Proc:
    """A server process (its own session), output to a log file, stopped by its PID."""

    def __init__(self, name: str, argv: list[str], cwd: str, env: dict | None = None) -> None:
        self.name = name
        self.logpath = os.path.join(cwd, f"{name}.log")
        self._log = open(self.logpath, "wb")
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.logpath, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (this PID only)."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
        if not self._log.closed:
            self._log.close()


# ------------------------------------------------------------------ checks (blocking, bounded)


def _query(name: str) -> dns.message.Message:
    return dns.message.make_query(name, "A")


def _check_answer(q: dns.message.Message, r: dns.message.Message) -> None:
    if r.rcode() != dns.rcode.NOERROR:
        raise AssertionError(f"rcode {dns.rcode.to_text(r.rcode())}")
    if r.question != q.question:
        raise AssertionError(f"question {r.question} for {q.question}")
    if not any(rr.rdtype == dns.rdatatype.A and any(a.address == ANSWER_A for a in rr) for rr in r.answer):
        raise AssertionError(f"no A {ANSWER_A} in {r.answer}")


def client_context(ca_file: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def check_udp(port: int, name: str, timeout: float = 1.0) -> None:
    q = _query(name)
    _check_answer(q, dns.query.udp(q, LOOPBACK, port=port, timeout=timeout))


def check_tcp(port: int, name: str, timeout: float = 1.0) -> None:
    q = _query(name)
    _check_answer(q, dns.query.tcp(q, LOOPBACK, port=port, timeout=timeout))


def check_dot(port: int, ca_file: str, name: str, timeout: float = 2.0) -> None:
    q = _query(name)
    r = dns.query.tls(q, LOOPBACK, port=port, timeout=timeout, ssl_context=client_context(ca_file),
                      server_hostname=TLS_NAME)
    _check_answer(q, r)


def doh_h2_post(port: int, path: str, ca_file: str, wire: bytes, timeout: float = 2.0) -> bytes:
    """One DoH POST over HTTP/2 (the ``h2`` library, blocking); returns the response body."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = client_context(ca_file, alpn=["h2"])
    deadline = time.monotonic() + timeout
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=TLS_NAME) as s:
            if s.selected_alpn_protocol() != "h2":
                raise AssertionError(f"ALPN {s.selected_alpn_protocol()!r}, not h2")
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", f"{TLS_NAME}:{port}"),
                                    (":path", path), ("accept", "application/dns-message"),
                                    ("content-type", "application/dns-message"),
                                    ("content-length", str(len(wire)))])
            conn.send_data(sid, wire, end_stream=True)
            s.sendall(conn.data_to_send())
            status, body = None, b""
            while True:
                s.settimeout(max(0.05, deadline - time.monotonic()))
                data = s.recv(65536)
                if not data:
                    raise AssertionError("connection closed before the response")
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        status = dict(ev.headers).get(b":status")
                    elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                        body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        if status != b"200":
                            raise AssertionError(f"HTTP status {status!r}")
                        return body
                    elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise AssertionError(f"DoH: {ev}")
                out = conn.data_to_send()
                if out:
                    s.sendall(out)


def check_doh(port: int, ca_file: str, name: str, path: str = DOH_PATH, timeout: float = 2.0) -> None:
    q = _query(name)
    _check_answer(q, dns.message.from_wire(doh_h2_post(port, path, ca_file, q.to_wire(), timeout)))


def wait_answering(proc: Proc, checks: dict, timeout: float = START_TIMEOUT) -> None:
    """Poll every check until each passed once; ServerStartError (with the log tail) after ``timeout``."""
    end = time.monotonic() + timeout
    pending = dict(checks)
    errors: dict[str, str] = {}
    while pending:
        if not proc.alive():
            raise ServerStartError(f"{proc.name} (pid {proc.pid}) exited with status {proc.popen.returncode} "
                                   f"before answering; log tail:\n{proc.log_tail()}")
        for what, check in list(pending.items()):
            try:
                check(f"ready-{random.randrange(1 << 30)}.{ZONE}")
            except Exception as e:  # noqa: BLE001  (anything: not ready yet)
                errors[what] = f"{type(e).__name__}: {e}"
            else:
                del pending[what]
                errors.pop(what, None)
        if not pending:
            return
        if time.monotonic() > end:
            raise ServerStartError(f"{proc.name} (pid {proc.pid}) did not answer within {timeout:.0f}s: {errors}; "
                                   f"log tail:\n{proc.log_tail()}")
        time.sleep(0.1)


# ------------------------------------------------------------------ servers


@dataclass
class Server:
    """A running server: what a test needs of it."""

    kind: str  # "unbound", "dnsdist", "kresd"
    proc: Proc
    workdir: str
    ca_file: str
    urls: dict[str, str]  # transport ("dot", "doh", "udp", "tcp") -> dotproxy upstream URL
    ports: dict[str, int]
    config_file: str
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def dot_url(self) -> str:
        return self.urls["dot"]

    @property
    def doh_url(self) -> str:
        return self.urls["doh"]

    def counters(self) -> dict:
        """The server's own counters (best effort: ``{"error": ...}`` when they cannot be read)."""
        try:
            return _COUNTERS[self.kind](self)
        except Exception as e:  # noqa: BLE001
            return {"error": f"{type(e).__name__}: {e}"}

    def log_tail(self, lines: int = 25) -> str:
        return self.proc.log_tail(lines)

    def stop(self) -> None:
        self.proc.stop()

    def __repr__(self) -> str:
        return f"<{self.kind} pid={self.pid} {self.urls}>"


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _started(kind: str, proc: Proc, checks: dict, **kw) -> Server:
    try:
        wait_answering(proc, checks)
    except BaseException:
        proc.stop()
        raise
    return Server(kind=kind, proc=proc, **kw)


# --- unbound: the authority for ZONE (plain, DoT, DoH)


def unbound_conf(workdir: str, certs: Certs, plain: int, dot: int, doh: int, threads: int = 1) -> str:
    lines = [
        "server:",
        '  username: ""', '  chroot: ""', f'  directory: "{workdir}"', '  pidfile: ""',
        "  use-syslog: no", '  logfile: ""', "  verbosity: 1", "  log-time-ascii: yes",
        f"  num-threads: {threads}",
        f"  interface: {LOOPBACK}@{plain}", f"  interface: {LOOPBACK}@{dot}", f"  interface: {LOOPBACK}@{doh}",
        f"  tls-port: {dot}", f"  https-port: {doh}", f'  http-endpoint: "{DOH_PATH}"',
        f'  tls-service-key: "{certs.key_file}"', f'  tls-service-pem: "{certs.cert_file}"',
        "  incoming-num-tcp: 1000", "  num-queries-per-thread: 4096", "  http-max-streams: 100",
        "  edns-tcp-keepalive: yes", "  tcp-idle-timeout: 30000",
        # dnsdist's DoH and kresd forward over UDP: a burst of 500 overflows the default 208 KiB
        # receive buffer (UdpRcvbufErrors, then 502 / SERVFAIL); unbound forces a larger one as root.
        "  so-rcvbuf: 8m", "  so-sndbuf: 4m",
        "  access-control: 127.0.0.0/8 allow", "  do-ip6: no", "  do-not-query-localhost: no",
        '  module-config: "iterator"',
        "  statistics-cumulative: yes", "  extended-statistics: yes",
        # Everything is answered from local data: nothing ever goes out.
        '  local-zone: "." static',
        f'  local-zone: "{ZONE}." redirect',  # any *.ZONE -> ANSWER_A
        f'  local-data: "{ZONE}. 300 IN A {ANSWER_A}"',
        "remote-control:", "  control-enable: yes",
        f'  control-interface: "{workdir}/unbound.ctl"', "  control-use-cert: no",
    ]
    path = os.path.join(workdir, "unbound.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_unbound(workdir: str, certs: Certs, threads: int = 1) -> Server:
    binary = require_binary("unbound")
    _mkdir(workdir)
    ports = {"plain": free_port(), "dot": free_port(), "doh": free_port()}
    conf = unbound_conf(workdir, certs, ports["plain"], ports["dot"], ports["doh"], threads)
    check = subprocess.run([require_binary("unbound-checkconf"), conf], capture_output=True, text=True)
    if check.returncode:
        raise ServerStartError(f"unbound-checkconf {conf}: {check.stdout}{check.stderr}")
    proc = Proc("unbound", [binary, "-d", "-c", conf], cwd=workdir)
    checks = {
        "udp": lambda n: check_udp(ports["plain"], n),
        "tcp": lambda n: check_tcp(ports["plain"], n),
        "dot": lambda n: check_dot(ports["dot"], certs.ca_file, n),
        "doh": lambda n: check_doh(ports["doh"], certs.ca_file, n),
    }
    urls = {
        "udp": f"udp://{LOOPBACK}:{ports['plain']}", "tcp": f"tcp://{LOOPBACK}:{ports['plain']}",
        "dot": f"tls://{LOOPBACK}:{ports['dot']}#{TLS_NAME}",
        "doh": f"https://{LOOPBACK}:{ports['doh']}{DOH_PATH}#{TLS_NAME}",
    }
    return _started("unbound", proc, checks, workdir=workdir, ca_file=certs.ca_file, urls=urls, ports=ports,
                    config_file=conf)


def _unbound_counters(server: Server) -> dict:
    out = subprocess.run([require_binary("unbound-control"), "-c", server.config_file, "stats_noreset"],
                         capture_output=True, text=True, timeout=10)
    if out.returncode:
        return {"error": out.stderr.strip() or out.stdout.strip()}
    stats = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(("total.", "num.query.tls", "num.query.https", "num.query.tcp", "mem.http",
                           "num.answer.rcode", "tcpusage")):
            try:
                stats[key] = float(value) if "." in value else int(value)
            except ValueError:
                stats[key] = value
    return stats


# --- dnsdist: DoT + DoH frontends -> unbound (plain)


def dnsdist_conf(workdir: str, certs: Certs, backend_port: int, dot: int, doh: int, web: int, api_key: str, *,
                 tls_options: dict | None = None, doh_options: dict | None = None, extra_lua: str = "") -> str:
    def lua_table(opts: dict | None) -> str:
        items = []
        for k, v in (opts or {}).items():
            items.append(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}")
        return "{" + ", ".join(items) + "}"

    tls_opts = {"provider": "openssl", **(tls_options or {})}
    lines = [
        'setSecurityPollSuffix("")',  # no security-poll DNS lookups
        f'newServer({{address="{LOOPBACK}:{backend_port}", name="unbound", healthCheckMode="up"}})',
        f'addTLSLocal("{LOOPBACK}:{dot}", "{certs.cert_file}", "{certs.key_file}", {lua_table(tls_opts)})',
        f'addDOHLocal("{LOOPBACK}:{doh}", "{certs.cert_file}", "{certs.key_file}", "{DOH_PATH}", '
        f'{lua_table(doh_options)})',
        f'webserver("{LOOPBACK}:{web}")',
        f'setWebserverConfig({{apiKey="{api_key}", password="{api_key}", acl="127.0.0.0/8"}})',
        extra_lua,
    ]
    path = os.path.join(workdir, "dnsdist.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_dnsdist(workdir: str, certs: Certs, backend_port: int, *, tls_options: dict | None = None,
                  doh_options: dict | None = None, extra_lua: str = "") -> Server:
    """dnsdist with ``addTLSLocal`` (``tls_options``: e.g. ``{"maxInFlight": 100}``) and ``addDOHLocal``
    frontends before unbound's plain port; its web server/API on a loopback port."""
    binary = require_binary("dnsdist")
    _mkdir(workdir)
    ports = {"dot": free_port(), "doh": free_port(), "web": free_port()}
    api_key = f"interop-{random.randrange(1 << 40):x}"
    conf = dnsdist_conf(workdir, certs, backend_port, ports["dot"], ports["doh"], ports["web"], api_key,
                        tls_options=tls_options, doh_options=doh_options, extra_lua=extra_lua)
    check = subprocess.run([binary, "--check-config", "-C", conf], capture_output=True, text=True, timeout=30)
    if check.returncode:
        raise ServerStartError(f"dnsdist --check-config {conf}: {check.stdout}{check.stderr}")
    proc = Proc("dnsdist", [binary, "-C", conf, "--supervised", "--disable-syslog"], cwd=workdir)

    def web_check(_name: str) -> None:
        _dnsdist_api(ports["web"], api_key, "/api/v1/servers/localhost")

    checks = {
        "dot": lambda n: check_dot(ports["dot"], certs.ca_file, n),
        "doh": lambda n: check_doh(ports["doh"], certs.ca_file, n),
        "web": web_check,
    }
    urls = {
        "dot": f"tls://{LOOPBACK}:{ports['dot']}#{TLS_NAME}",
        "doh": f"https://{LOOPBACK}:{ports['doh']}{DOH_PATH}#{TLS_NAME}",
    }
    return _started("dnsdist", proc, checks, workdir=workdir, ca_file=certs.ca_file, urls=urls, ports=ports,
                    config_file=conf, extra={"api_key": api_key, "web": f"http://{LOOPBACK}:{ports['web']}"})


def _dnsdist_api(port: int, api_key: str, path: str) -> dict:
    req = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}", headers={"X-API-Key": api_key})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy: loopback only
    with opener.open(req, timeout=3) as r:
        return json.loads(r.read())


#: The frontend counters the DoT investigation reads.
DNSDIST_FRONTEND_KEYS = (
    "queries", "responses", "tcpCurrentConnections", "tcpMaxConcurrentConnections", "tcpClientTimeouts",
    "tcpDiedReadingQuery", "tcpDiedSendingResponse", "tcpGaveUp", "tcpDownstreamTimeouts",
    "tcpAvgQueriesPerConnection", "tcpAvgConnectionDuration", "tlsNewSessions", "tlsResumptions",
)


def _dnsdist_counters(server: Server) -> dict:
    """Per frontend (keyed ``"<type> <address>"``) counters, the backend's, and a few globals."""
    data = _dnsdist_api(server.ports["web"], server.extra["api_key"], "/api/v1/servers/localhost")
    out: dict = {}
    for fe in data.get("frontends", []):
        if fe.get("udp"):
            continue
        out[f"{fe.get('type')} {fe.get('address')}"] = {k: fe[k] for k in DNSDIST_FRONTEND_KEYS if k in fe}
    for be in data.get("servers", []):
        out[f"backend {be.get('name')}"] = {k: be[k] for k in ("queries", "responses", "drops", "tcpDiedSendingQuery",
                                                                 "tcpDiedReadingResponse", "tcpGaveUp",
                                                                 "tcpReadTimeouts", "tcpWriteTimeouts",
                                                                 "tcpCurrentConnections", "tcpReusedConnections",
                                                                 "tcpNewConnections") if k in be}
    stats = _dnsdist_api(server.ports["web"], server.extra["api_key"], "/jsonstat?command=stats")
    out["global"] = {k: stats[k] for k in ("queries", "responses", "downstream-timeouts", "downstream-send-errors",
                                           "servfail-responses", "tcp-query-pipe-full", "doh-query-pipe-full",
                                           "doh-response-pipe-full") if k in stats}
    return out


# --- kresd: DoT -> unbound (plain)


def kresd_conf(workdir: str, certs: Certs, backend_port: int, dot: int) -> str:
    conf = f"""-- no traffic other than to the forwarder: drop modules that talk to the root / check time
modules.unload('ta_signal_query')
modules.unload('priming')
modules.unload('detect_time_skew')
modules.unload('detect_time_jump')
trust_anchors.remove('.')
-- as the rig's peers/kresd.sh: the default TCP pipeline limit (100) is raised
net.tcp_pipeline(1024)
net.tls('{certs.cert_file}', '{certs.key_file}')
net.listen('{LOOPBACK}', {dot}, {{ kind = 'tls' }})
cache.open(1 * MB, 'lmdb://{workdir}/cache')
policy.add(policy.all(policy.FLAGS({{'NO_CACHE'}})))
policy.add(policy.all(policy.FORWARD({{'{LOOPBACK}@{backend_port}'}})))
"""
    path = os.path.join(workdir, "kresd.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def start_kresd(workdir: str, certs: Certs, backend_port: int) -> Server:
    binary = require_binary("kresd")
    _mkdir(workdir)
    _mkdir(os.path.join(workdir, "cache"))
    ports = {"dot": free_port()}
    conf = kresd_conf(workdir, certs, backend_port, ports["dot"])
    proc = Proc("kresd", [binary, "-n", "-c", conf, workdir], cwd=workdir)
    checks = {"dot": lambda n: check_dot(ports["dot"], certs.ca_file, n)}
    urls = {"dot": f"tls://{LOOPBACK}:{ports['dot']}#{TLS_NAME}"}
    return _started("kresd", proc, checks, workdir=workdir, ca_file=certs.ca_file, urls=urls, ports=ports,
                    config_file=conf)


def _kresd_counters(server: Server) -> dict:
    """``worker.stats()`` through kresd's control socket (``<rundir>/control/<pid>``, text mode)."""
    path = os.path.join(server.workdir, "control", str(server.pid))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(path)
        s.sendall(b"tojson(worker.stats())\n")
        buf = b""
        while not buf.rstrip().endswith(b">") or buf.count(b"{") == 0:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    text = buf.decode(errors="replace")
    start, end = text.find("{"), text.rfind("}")
    try:
        return json.loads(text[start:end + 1])
    except ValueError:
        return {"raw": text}


_COUNTERS = {"unbound": _unbound_counters, "dnsdist": _dnsdist_counters, "kresd": _kresd_counters}
