"""``dotproxy serve`` as a real process: it answers dig, says where it listens and forwards,
exits 0 on SIGTERM and SIGINT, and turns every configuration mistake into exit status 2 with
a message that names the mistake (and never a traceback)."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from cli_support import DIG, DOTPROXY, Serve, dig, free_port, run_serve

pytestmark = [
    pytest.mark.skipif(DOTPROXY is None, reason="the dotproxy command is not on PATH"),
    pytest.mark.skipif(DIG is None, reason="dig is not installed"),
]

LISTENING = r"listening on 127\.0\.0\.1:(\d+)"


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- serving


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_dig_logs_its_addresses_and_exits_0_on_a_signal(upstream, sig):
    port = free_port()
    with Serve("--listen", f"127.0.0.1:{port}", "--upstream", upstream["dot_url"],
               "--ca-file", upstream["ca_file"]) as serve:
        m = serve.wait_for_log(LISTENING)
        assert int(m.group(1)) == port
        log = serve.log
        assert "UDP and TCP" in log
        assert upstream["dot_url"] in log, log  # where it forwards
        udp = dig(port, "+short", "www.example.com", "A")
        assert udp.returncode == 0 and udp.stdout.split() == ["192.0.2.1"], (udp.stdout, udp.stderr, serve.log)
        tcp = dig(port, "+tcp", "+short", "tcp.example.com", "A")
        assert tcp.returncode == 0 and tcp.stdout.split() == ["192.0.2.1"], (tcp.stdout, tcp.stderr, serve.log)
        start = time.monotonic()
        serve.signal(sig)
        rc = serve.wait(timeout=10)
        elapsed = time.monotonic() - start
        assert rc == 0, (rc, serve.log)
        assert elapsed < 3.0, elapsed  # nothing in flight: it does not sit out the whole grace
        assert "Traceback" not in serve.log, serve.log
        assert re.search(r"served 2 queries in [\d.]+s \([\d.]+ q/s\): 2 answered", serve.log), serve.log


def test_progress_lines_and_the_query_log(upstream):
    port = free_port()
    with Serve("--listen", f"127.0.0.1:{port}", "--upstream", upstream["dot_url"], "--ca-file", upstream["ca_file"],
               "--progress", "0.3", "--log-queries") as serve:
        serve.wait_for_log(LISTENING)
        for i in range(3):
            assert dig(port, "+short", f"p{i}.example.com", "A").stdout.split() == ["192.0.2.1"], serve.log
        m = serve.wait_for_log(r"(\d+) q/s: (\d+) queries, (\d+) answered, 0 SERVFAIL, 0 in flight, "
                               r"latency p50 [\d.]+ ms p99 [\d.]+ ms")
        assert int(m.group(2)) >= 1, serve.log
        assert re.search(r"udp p2\.example\.com 1 rcode=0 answers=1 [\d.]+ms upstream=\S+ answered", serve.log), \
            serve.log
        serve.wait_for_log(r"0 q/s: 0 queries")  # an idle interval says so
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0, serve.log
        assert re.search(r"served 3 queries in", serve.log), serve.log


def test_serve_with_a_doh_upstream_and_two_upstreams(upstream):
    port = free_port()
    dead = f"tls://127.0.0.1:{free_port()}#dns.test"  # nothing listens there: failover to DoH
    with Serve("--listen", f"127.0.0.1:{port}", "--upstream", dead, "--upstream", upstream["doh_url"],
               "--ca-file", upstream["ca_file"]) as serve:
        serve.wait_for_log(LISTENING)
        assert dead in serve.log and upstream["doh_url"] in serve.log
        out = dig(port, "+short", "doh.example.com", "A")
        assert out.stdout.split() == ["192.0.2.1"], (out.stdout, serve.log)
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0, serve.log


def test_config_file_sets_listen_upstreams_ca_file_and_timeout(upstream, tmp_path):
    port = free_port()
    cfg = tmp_path / "dotproxy.toml"
    cfg.write_text(
        f"listen = {_toml_string(f'127.0.0.1:{port}')}\n"
        f"upstreams = [{_toml_string(upstream['dot_url'])}]\n"
        f"ca_file = {_toml_string(upstream['ca_file'])}\n"
        "timeout = 1.5\n"
        "shutdown_grace = 0.5\n"
        "[upstream_options]\n"
        "pool_size = 1\n"
    )
    with Serve("--config", str(cfg)) as serve:
        m = serve.wait_for_log(LISTENING)
        assert int(m.group(1)) == port
        assert upstream["dot_url"] in serve.log
        out = dig(port, "+short", "config.example.com", "A")
        assert out.stdout.split() == ["192.0.2.1"], (out.stdout, serve.log)
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0, serve.log


def test_config_file_timeout_is_the_query_deadline(stalled_upstream, tmp_path):
    """With a silent upstream, the file's timeout (0.5 s, not the default 4 s) ends the query:
    SERVFAIL with EDE 22, well within dig's 2 s."""
    port = free_port()
    cfg = tmp_path / "dotproxy.toml"
    cfg.write_text(
        f"listen = {_toml_string(f'127.0.0.1:{port}')}\n"
        f"upstreams = [{_toml_string(stalled_upstream['dot_url'])}]\n"
        f"ca_file = {_toml_string(stalled_upstream['ca_file'])}\n"
        "timeout = 0.5\n"
    )
    with Serve("--config", str(cfg)) as serve:
        serve.wait_for_log(LISTENING)
        start = time.monotonic()
        out = dig(port, "stalled.example.com", "A")
        elapsed = time.monotonic() - start
        assert "status: SERVFAIL" in out.stdout, (out.stdout, serve.log)
        assert re.search(r"EDE: 22\b", out.stdout), out.stdout
        assert elapsed < 1.5, elapsed
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0, serve.log


def test_flags_override_the_config_file(upstream, tmp_path):
    file_port, flag_port = free_port(), free_port()
    cfg = tmp_path / "dotproxy.toml"
    cfg.write_text(
        f"listen = {_toml_string(f'127.0.0.1:{file_port}')}\n"
        'upstreams = ["tls://127.0.0.1:1#nowhere.test"]\n'
    )
    with Serve("--config", str(cfg), "--listen", f"127.0.0.1:{flag_port}", "--upstream", upstream["dot_url"],
               "--ca-file", upstream["ca_file"]) as serve:
        m = serve.wait_for_log(LISTENING)
        assert int(m.group(1)) == flag_port
        assert "nowhere.test" not in serve.log
        out = dig(flag_port, "+short", "flags.example.com", "A")
        assert out.stdout.split() == ["192.0.2.1"], (out.stdout, serve.log)
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0, serve.log


# --------------------------------------------------------------------------- configuration errors


def _check_config_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.parametrize(("listen", "needle"), [
    ("nonsense", "nonsense"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1:99999", "99999"),
    ("127.0.0.1:port", "port"),
    ("localhost:5353", "localhost"),
    ("[::1:5353", "::1"),
])
def test_bad_listen_exits_2_and_names_it(listen, needle):
    _check_config_error(run_serve("--listen", listen, "--upstream", "tls://127.0.0.1:853#x.test"),
                        "--listen", needle)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "tls://", "tls://127.0.0.1:0#x.test", "not a url",
                                 "https://127.0.0.1/dns-query?dns=x"])
def test_bad_upstream_url_exits_2_and_names_it(url):
    port = free_port()
    result = run_serve("--listen", f"127.0.0.1:{port}", "--upstream", url)
    _check_config_error(result, url)


def test_unknown_toml_key_names_the_file_and_the_key(tmp_path):
    cfg = tmp_path / "typo.toml"
    cfg.write_text('listen = "127.0.0.1:5399"\nupstreems = ["tls://127.0.0.1:853#x.test"]\n')
    _check_config_error(run_serve("--config", str(cfg)), str(cfg), "upstreems")


@pytest.mark.parametrize(("line", "key"), [
    ('timeout = "fast"', "timeout"),
    ("listen = 5353", "listen"),
    ('upstreams = "tls://127.0.0.1:853#x.test"', "upstreams"),
    ("upstreams = [1, 2]", "upstreams"),
    ('cache = "yes"', "cache"),
    ("max_in_flight = 1.5", "max_in_flight"),
    ("ca_file = 7", "ca_file"),
])
def test_wrong_type_in_toml_names_the_file_and_the_key(tmp_path, line, key):
    cfg = tmp_path / "types.toml"
    cfg.write_text(line + "\n")
    _check_config_error(run_serve("--config", str(cfg)), str(cfg), key)


@pytest.mark.parametrize(("line", "needle"), [
    ("timeout = -1", "timeout"),
    ("max_in_flight = 0", "max_in_flight"),
    ("upstreams = []", "upstream"),
    ('listen = "127.0.0.1:70000"', "70000"),
    ('upstreams = ["gopher://127.0.0.1"]', "gopher://127.0.0.1"),
    ("[upstream_options]\npool_sise = 2", "pool_sise"),
])
def test_bad_values_in_toml_exit_2_and_name_the_problem(tmp_path, line, needle):
    cfg = tmp_path / "values.toml"
    cfg.write_text(line + "\n")
    _check_config_error(run_serve("--config", str(cfg)), needle)


def test_invalid_toml_names_the_file(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("listen = [\n")
    _check_config_error(run_serve("--config", str(cfg)), str(cfg))


def test_unreadable_config_file_exits_2_and_names_it(tmp_path):
    missing = tmp_path / "missing.toml"
    _check_config_error(run_serve("--config", str(missing)), str(missing))
    _check_config_error(run_serve("--config", str(tmp_path)), str(tmp_path))  # a directory


def test_listen_on_a_busy_port_exits_2(upstream):
    port = free_port()
    with Serve("--listen", f"127.0.0.1:{port}", "--upstream", upstream["dot_url"],
               "--ca-file", upstream["ca_file"]) as first:
        first.wait_for_log(LISTENING)
        result = run_serve("--listen", f"127.0.0.1:{port}", "--upstream", upstream["dot_url"],
                           "--ca-file", upstream["ca_file"])
        _check_config_error(result, f"127.0.0.1:{port}", "cannot listen")
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0


def test_missing_ca_file_exits_2_and_names_it(tmp_path, upstream):
    missing = str(tmp_path / "no-ca.pem")
    result = run_serve("--listen", f"127.0.0.1:{free_port()}", "--upstream", upstream["dot_url"],
                       "--ca-file", missing)
    _check_config_error(result, missing)


def test_listen_on_port_0_logs_the_port_it_got(upstream):
    with Serve("--listen", "127.0.0.1:0", "--upstream", upstream["dot_url"], "--ca-file", upstream["ca_file"]) as serve:
        port = int(serve.wait_for_log(LISTENING).group(1))
        assert port != 0
        out = dig(port, "+short", "zero.example.com", "A")
        assert out.stdout.split() == ["192.0.2.1"], (out.stdout, serve.log)
        out = dig(port, "+tcp", "+short", "zero.example.com", "A")
        assert out.stdout.split() == ["192.0.2.1"], (out.stdout, serve.log)
        serve.signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0, serve.log


@pytest.mark.parametrize("line", ['pool_size = "2"', 'timeout = "1"'])
def test_wrong_type_in_upstream_options_names_the_file_and_the_key(tmp_path, line):
    cfg = tmp_path / "options.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nupstreams = ["tls://127.0.0.1:853#x.test"]\n'
                   f"[upstream_options]\n{line}\n")
    _check_config_error(run_serve("--config", str(cfg), timeout=3), str(cfg), line.split()[0])


def test_unknown_key_in_upstream_options_names_the_file(tmp_path):
    cfg = tmp_path / "options.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nupstreams = ["tls://127.0.0.1:853#x.test"]\n'
                   "[upstream_options]\npool_sise = 2\n")
    _check_config_error(run_serve("--config", str(cfg), timeout=3), str(cfg), "pool_sise")


@pytest.mark.parametrize("line", ["tcp_idle_timeout = -1", "tcp_max_connections = -1", "tcp_max_pipeline = -1",
                                  "shutdown_grace = -1"])
def test_out_of_range_values_in_toml_exit_2_and_name_the_key(tmp_path, line):
    cfg = tmp_path / "range.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nupstreams = ["tls://127.0.0.1:853#x.test"]\n' + line + "\n")
    _check_config_error(run_serve("--config", str(cfg), timeout=0.8), line.split()[0])


def test_sigterm_with_a_query_in_flight_exits_0_after_the_grace(stalled_upstream, tmp_path):
    port = free_port()
    cfg = tmp_path / "grace.toml"
    cfg.write_text(
        f"listen = {_toml_string(f'127.0.0.1:{port}')}\n"
        f"upstreams = [{_toml_string(stalled_upstream['dot_url'])}]\n"
        f"ca_file = {_toml_string(stalled_upstream['ca_file'])}\n"
        "timeout = 5\n"
        "shutdown_grace = 0.3\n"
    )
    with Serve("--config", str(cfg)) as serve:
        serve.wait_for_log(LISTENING)
        client = subprocess.Popen([DIG, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", "inflight.example"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)  # the query is with the (silent) upstream now
            start = time.monotonic()
            serve.signal(signal.SIGTERM)
            rc = serve.wait(timeout=10)
            elapsed = time.monotonic() - start
            assert rc == 0, serve.log
            assert 0.25 <= elapsed < 1.5, elapsed  # the grace, not the query's 5 s deadline
            assert "in-flight queries get 0.3s" in serve.log, serve.log
            assert re.search(r"served 1 queries in [\d.]+s \([\d.]+ q/s\): 0 answered", serve.log), serve.log
        finally:
            if client.poll() is None:
                client.kill()
            client.communicate(timeout=5)
