"""The outbound URL policy (platform-supplied reply URLs) and the explicit outbound timeout."""

from __future__ import annotations

import aiohttp
import pytest

from bot.config import Config
from bot.outbound import HTTP_TIMEOUT, OutboundPolicy, OutboundRefused, host_of, http_timeout
from tests.conftest import make_config

DINGTALK = OutboundPolicy.of(["oapi.dingtalk.com", "api.dingtalk.com"])
WITH_FAKE = OutboundPolicy.of(["qyapi.weixin.qq.com", "127.0.0.1", "http://10.1.2.3:8080"])


@pytest.mark.parametrize(
    "url",
    [
        "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
        "https://OAPI.DingTalk.com/robot/sendBySession",  # host names are case-insensitive
        "https://oapi.dingtalk.com:443/robot/sendBySession",
        "https://api.dingtalk.com/v1.0/x",
    ],
)
def test_listed_host_over_https_on_443_is_allowed(url: str) -> None:
    assert DINGTALK.check(url).raw_host in ("oapi.dingtalk.com", "api.dingtalk.com")


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://oapi.dingtalk.com/robot/sendBySession", "oapi.dingtalk.com"),  # plain http
        ("https://oapi.dingtalk.com:8443/robot/sendBySession", "oapi.dingtalk.com"),  # another port
        ("https://oapi.dingtalk.com:80/robot/sendBySession", "oapi.dingtalk.com"),
        ("https://evil.example.com/robot", "evil.example.com"),
        ("https://oapi.dingtalk.com.evil.example.com/x", "oapi.dingtalk.com.evil.example.com"),
        ("https://oapi.dingtalk.com@evil.example.com/x", "evil.example.com"),  # user-info trick
        ("https://user:pw@oapi.dingtalk.com/x", "oapi.dingtalk.com"),  # user-info on an allowed host
        ("https://127.0.0.1/x", "127.0.0.1"),  # loopback, not listed
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),  # cloud metadata
        ("https://[::1]/x", "::1"),
        ("https://0x7f000001/x", "0x7f000001"),
        ("ftp://oapi.dingtalk.com/x", "oapi.dingtalk.com"),
        ("file:///etc/passwd", "?"),
    ],
)
def test_a_url_outside_the_policy_is_refused_naming_only_the_host(url: str, host: str) -> None:
    with pytest.raises(OutboundRefused) as err:
        DINGTALK.check(url)
    assert err.value.host == host
    assert "robot" not in str(err.value) and "pw" not in str(err.value)  # never the path or the credentials


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "/robot/sendBySession",  # relative
        "https://oapi.dingtalk.com:99999/x",  # port out of range
        "https://oapi.dingtalk.com\\@evil.example.com/x",  # backslash: parsers disagree on the host
        "https://oapi.dingtalk.com /x",  # whitespace
        " https://oapi.dingtalk.com/x",
        "https://oapi.dingtalk.com\r\nHost: evil/x",  # header injection
        "https://oapi.dingtalk.com\x00.evil.example.com/x",
        "https://оapi.dingtalk.com/x",  # Cyrillic о: a look-alike host
        "https://oapi.dingtalk.com\ud800/x",  # a lone surrogate
    ],
)
def test_unparseable_or_ambiguous_urls_are_refused(url: str) -> None:
    with pytest.raises(OutboundRefused):
        DINGTALK.check(url)
    assert DINGTALK.allows(url) is False


def test_a_listed_loopback_host_may_be_any_port_for_a_local_fake() -> None:
    assert WITH_FAKE.allows("http://127.0.0.1:41234/cgi-bin/aibot/response?response_code=x")
    assert WITH_FAKE.allows("https://127.0.0.1:8443/x")
    assert not WITH_FAKE.allows("http://localhost:41234/x")  # only what is listed


def test_an_origin_entry_allows_exactly_its_scheme_host_and_port() -> None:
    assert WITH_FAKE.allows("http://10.1.2.3:8080/relay")
    assert not WITH_FAKE.allows("http://10.1.2.3:8081/relay")
    assert not WITH_FAKE.allows("https://10.1.2.3:8080/relay")
    assert not WITH_FAKE.allows("https://10.1.2.3/relay")


def test_the_default_policy_allows_nothing() -> None:
    assert not OutboundPolicy().allows("https://oapi.dingtalk.com/x")


def test_a_malformed_origin_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="must be http"):
        OutboundPolicy.of(["ftp://files.example.com"])


def test_host_of_never_returns_more_than_the_host() -> None:
    assert host_of("https://oapi.dingtalk.com/robot/sendBySession?session=secret") == "oapi.dingtalk.com"
    assert host_of("https://u:pw@h.example.com/x") == "h.example.com"
    assert host_of("garbage\x00") == "?"
    assert host_of("") == "?"


def test_every_part_of_an_outbound_call_has_a_bound() -> None:
    for timeout in (HTTP_TIMEOUT, http_timeout(0.5)):
        assert None not in (timeout.total, timeout.connect, timeout.sock_connect, timeout.sock_read)
    assert http_timeout(0.5).total == 0.5 and http_timeout(0.5).sock_read == 0.5


async def test_the_shared_session_uses_the_configured_timeout() -> None:
    from bot.services import Services

    config: Config = make_config({"server.outbound_timeout_s": "2.5", "dialogue.enabled": "false"})
    services = Services(config)
    try:
        session = services.http
        assert isinstance(session, aiohttp.ClientSession)
        assert session.timeout == http_timeout(2.5)
    finally:
        await services.close()
