"""dotproxy.config.parse_upstream_url and dotproxy.upstream.UpstreamOptions.from_kwargs.

Good URLs parse to the documented defaults; bad ones raise ConfigError (never a
bare ValueError from urllib) with a message that names the URL and the problem.
"""

from __future__ import annotations

import dataclasses

import pytest

from dotproxy.config import DEFAULT_PORTS, UpstreamURL, parse_upstream_url
from dotproxy.errors import ConfigError, DotproxyError
from dotproxy.upstream import UpstreamOptions, connect

# --------------------------------------------------------------------------- good URLs


@pytest.mark.parametrize(
    "url, scheme, host, port, auth_name, path",
    [
        ("tls://9.9.9.9:853#dns.quad9.net", "tls", "9.9.9.9", 853, "dns.quad9.net", ""),
        ("tls://9.9.9.9#dns.quad9.net", "tls", "9.9.9.9", 853, "dns.quad9.net", ""),
        ("tls://9.9.9.9", "tls", "9.9.9.9", 853, "9.9.9.9", ""),
        ("tls://dns.quad9.net:8853", "tls", "dns.quad9.net", 8853, "dns.quad9.net", ""),
        ("tls://1.1.1.1/#one.one.one.one", "tls", "1.1.1.1", 853, "one.one.one.one", ""),
        ("https://dns.google/dns-query", "https", "dns.google", 443, "dns.google", "/dns-query"),
        ("https://dns.google", "https", "dns.google", 443, "dns.google", "/dns-query"),
        ("https://1.1.1.1:8443/custom/path#cloudflare-dns.com", "https", "1.1.1.1", 8443,
         "cloudflare-dns.com", "/custom/path"),
        ("udp://127.0.0.1", "udp", "127.0.0.1", 53, None, ""),
        ("udp://127.0.0.1:5353", "udp", "127.0.0.1", 5353, None, ""),
        ("tcp://10.0.0.1:53", "tcp", "10.0.0.1", 53, None, ""),
        ("tcp://resolver.lan/", "tcp", "resolver.lan", 53, None, ""),
        # IPv6 literals in brackets; the host comes back without them.
        ("tcp://[::1]:5353", "tcp", "::1", 5353, None, ""),
        ("udp://[2001:db8::53]", "udp", "2001:db8::53", 53, None, ""),
        ("tls://[2620:fe::fe]:853#dns.quad9.net", "tls", "2620:fe::fe", 853, "dns.quad9.net", ""),
        ("tls://[2620:fe::fe]", "tls", "2620:fe::fe", 853, "2620:fe::fe", ""),
        ("https://[2001:4860:4860::8888]/dns-query", "https", "2001:4860:4860::8888", 443,
         "2001:4860:4860::8888", "/dns-query"),
        # The scheme is case-insensitive.
        ("TLS://9.9.9.9#dns.quad9.net", "tls", "9.9.9.9", 853, "dns.quad9.net", ""),
        ("HTTPS://dns.google/dns-query", "https", "dns.google", 443, "dns.google", "/dns-query"),
    ],
)
def test_good_urls(url, scheme, host, port, auth_name, path):
    u = parse_upstream_url(url)
    assert isinstance(u, UpstreamURL)
    assert (u.scheme, u.host, u.port, u.auth_name, u.path) == (scheme, host, port, auth_name, path)
    assert u.url == url and str(u) == url


def test_default_ports():
    assert DEFAULT_PORTS == {"tls": 853, "https": 443, "udp": 53, "tcp": 53}
    for scheme, port in DEFAULT_PORTS.items():
        assert parse_upstream_url(f"{scheme}://192.0.2.53").port == port


def test_url_is_frozen():
    u = parse_upstream_url("tls://9.9.9.9#dns.quad9.net")
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "url, authority",
    [
        ("https://dns.google/dns-query", "dns.google"),
        ("https://dns.google:8443/dns-query", "dns.google:8443"),
        ("https://8.8.8.8/dns-query#dns.google", "dns.google"),  # the auth name stands in for the address
        ("https://8.8.8.8:444/dns-query#dns.google", "dns.google:444"),
        ("https://[2001:db8::1]/dns-query", "[2001:db8::1]"),
        ("https://[2001:db8::1]:8443/dns-query", "[2001:db8::1]:8443"),
        ("tcp://[::1]:53", "[::1]"),
        ("tcp://[::1]:5353", "[::1]:5353"),
        ("udp://127.0.0.1:5353", "127.0.0.1:5353"),
    ],
)
def test_authority(url, authority):
    assert parse_upstream_url(url).authority == authority


@pytest.mark.parametrize(
    "url, is_address",
    [("tls://9.9.9.9", True), ("tls://[::1]", True), ("tls://dns.quad9.net", False), ("https://dns.google", False)],
)
def test_host_is_address(url, is_address):
    assert parse_upstream_url(url).host_is_address is is_address


# --------------------------------------------------------------------------- bad URLs


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://9.9.9.9", ["ftp://9.9.9.9", "scheme", "'ftp'", "tls://"]),
        ("quic://9.9.9.9", ["scheme", "'quic'"]),
        ("http://dns.google/dns-query", ["scheme", "'http'"]),
        ("9.9.9.9", ["scheme"]),
        ("9.9.9.9:853", ["scheme"]),
        ("tls://", ["no host"]),
        ("https:///dns-query", ["no host"]),
        ("tls://9.9.9.9:99999", ["port"]),
        ("tls://9.9.9.9:65536", ["port"]),
        ("tls://9.9.9.9:abc", ["port"]),
        ("tls://9.9.9.9:-1", ["port"]),
        ("udp://9.9.9.9:53:53", ["port"]),
        ("tcp://127.0.0.1:53#name", ["tcp://", "host and port"]),
        ("udp://127.0.0.1/path", ["udp://", "host and port"]),
        ("udp://127.0.0.1?x=1", ["udp://"]),
        ("tls://9.9.9.9/dns-query", ["tls://", "auth-name"]),
        ("tls://9.9.9.9?x=1", ["tls://"]),
        ("https://dns.google/dns-query?dns=AAAB", ["query string"]),
        ("tls://user:secret@9.9.9.9", ["credentials"]),
        ("https://user@dns.google/dns-query", ["credentials"]),
    ],
)
def test_bad_urls(url, words):
    with pytest.raises(ConfigError) as info:
        parse_upstream_url(url)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("value", ["", None, 853, b"tls://9.9.9.9"])
def test_not_a_url(value):
    with pytest.raises(ConfigError, match="expected an upstream URL"):
        parse_upstream_url(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["tls://[::1", "tls://[::1:853#dns.test", "https://[2001:db8::1/dns-query"])
def test_unclosed_ipv6_bracket_is_a_config_error(url):
    # urllib raises a bare ValueError("Invalid IPv6 URL"): it must become a ConfigError naming the URL.
    with pytest.raises(ConfigError) as info:
        parse_upstream_url(url)
    assert url in str(info.value)


@pytest.mark.parametrize("url", ["tls://::1:853", "udp://2001:db8::1"])
def test_unbracketed_ipv6_is_a_config_error(url):
    with pytest.raises(ConfigError) as info:
        parse_upstream_url(url)
    assert url in str(info.value)


@pytest.mark.parametrize("url", ["tls://9.9.9.9:0", "udp://127.0.0.1:0", "https://dns.google:0/dns-query"])
def test_port_zero_is_refused(url):
    # Port 0 cannot be connected to; it must not silently become the default port.
    with pytest.raises(ConfigError, match="port"):
        parse_upstream_url(url)


def test_where_prefixes_the_message():
    with pytest.raises(ConfigError) as info:
        parse_upstream_url("ftp://x", where="config.toml: upstreams[2]")
    assert str(info.value).startswith("config.toml: upstreams[2]: ")
    assert info.value.where == "config.toml: upstreams[2]"
    with pytest.raises(ConfigError) as info:
        parse_upstream_url("ftp://x")
    assert info.value.where == "upstream"


def test_config_error_is_a_value_error_and_a_dotproxy_error():
    with pytest.raises(ConfigError) as info:
        parse_upstream_url("ftp://x")
    assert isinstance(info.value, ValueError) and isinstance(info.value, DotproxyError)


# --------------------------------------------------------------------------- options


def test_option_defaults():
    o = UpstreamOptions.from_kwargs({}, where="t")
    assert o == UpstreamOptions()
    assert o.pool_size == 2
    assert o.max_outstanding >= 1
    assert o.verify is True
    assert o.spki_pins == ()
    assert o.pad_block == 128
    assert o.keepalive is True
    assert o.method == "POST"
    assert o.timeout > 0 and o.connect_timeout > 0 and o.idle_timeout > 0
    assert 0 < o.liveness_min <= o.liveness_max
    assert 0 < o.backoff_min <= o.backoff_max
    assert o.name is None


def test_options_are_frozen():
    o = UpstreamOptions.from_kwargs({"pool_size": 3}, where="t")
    assert o.pool_size == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.pool_size = 4  # type: ignore[misc]


def test_known_options_pass_through():
    o = UpstreamOptions.from_kwargs(
        {"pool_size": 4, "max_outstanding": 1000, "idle_timeout": 5.0, "verify": False, "pad_block": None,
         "method": "GET", "name": "quad9", "liveness_max": 0.5},
        where="t",
    )
    assert (o.pool_size, o.max_outstanding, o.idle_timeout, o.verify, o.pad_block, o.method, o.name,
            o.liveness_max) == (4, 1000, 5.0, False, None, "GET", "quad9", 0.5)


def test_unknown_option_is_named():
    with pytest.raises(ConfigError) as info:
        UpstreamOptions.from_kwargs({"poolsize": 3}, where="upstream tls://x")
    message = str(info.value)
    assert "poolsize" in message
    assert "unknown" in message
    assert "pool_size" in message  # the known names are listed, so the typo is easy to spot
    assert message.startswith("upstream tls://x: ")


def test_several_unknown_options_are_all_named():
    with pytest.raises(ConfigError) as info:
        UpstreamOptions.from_kwargs({"zeta": 1, "alpha": 2, "pool_size": 1}, where="t")
    assert "alpha" in str(info.value) and "zeta" in str(info.value)


def test_spki_pins_accept_a_string_or_a_list():
    pin = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    assert UpstreamOptions.from_kwargs({"spki_pins": pin}, where="t").spki_pins == (pin,)
    assert UpstreamOptions.from_kwargs({"spki_pins": [pin, pin[::-1]]}, where="t").spki_pins == (pin, pin[::-1])


@pytest.mark.parametrize(
    "options, words",
    [
        ({"pool_size": 0}, ["pool_size"]),
        ({"max_outstanding": 0}, ["max_outstanding"]),
        ({"method": "PUT"}, ["method", "'PUT'"]),
        ({"timeout": 0}, ["timeout"]),
        ({"connect_timeout": -1}, ["timeout"]),
        ({"idle_timeout": 0}, ["timeout"]),
    ],
)
def test_bad_option_values(options, words):
    with pytest.raises(ConfigError) as info:
        UpstreamOptions.from_kwargs(options, where="t")
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- through connect()


def test_connect_rejects_unknown_option_and_bad_url():
    with pytest.raises(ConfigError, match="bogus_knob"):
        connect("tcp://127.0.0.1:53", bogus_knob=1)
    with pytest.raises(ConfigError, match="scheme"):
        connect("ftp://127.0.0.1")
    with pytest.raises(ConfigError, match="port"):
        connect("tls://127.0.0.1:70000")


def test_connect_rejects_a_missing_ca_file(tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="CA file"):
        connect("tls://127.0.0.1:853#dns.test", ca_file=missing)
    with pytest.raises(ConfigError, match="CA file"):
        connect("https://127.0.0.1:443/dns-query", ca_file=missing)


@pytest.mark.parametrize("options, words", [
    ({"liveness_min": 0.0}, "liveness_min"),  # a zero bound would re-arm the silence watchdog without pause
    ({"liveness_max": -1.0}, "liveness_max"),
    ({"quiet_after": 0.0}, "quiet_after"),
    ({"backoff_min": 0.0}, "backoff_min"),
    ({"backoff_min": 5.0, "backoff_max": 1.0}, "backoff_max"),
    ({"max_resends": -1}, "max_resends"),
    ({"max_resends": 101}, "max_resends"),
])
def test_timer_and_resend_options_out_of_range_are_refused(options, words):
    with pytest.raises(ConfigError, match=words):
        UpstreamOptions.from_kwargs(options, where="t")


def test_the_connect_timeout_default_is_within_the_query_deadline_default():
    o = UpstreamOptions()
    assert o.connect_timeout <= o.timeout and o.max_resends == 3
