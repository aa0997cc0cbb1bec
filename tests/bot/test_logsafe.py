"""bot/logsafe.py: what of a URL, a config or a log record may be shown.

Each test is one way a secret tries to get out; the assertion is that it does
not, and that what helps an operator (scheme, host, port, path) is still there.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from bot.logsafe import (
    REDACTED,
    SecretFilter,
    install_secret_filter,
    mask_config,
    redact_url,
    redact_webhook,
    scrub,
    secrets_of,
    url_path,
)

PASSWORD = "Pa55-w0rd-redis"
TOKEN = "tok-9f8e7d6c5b4a"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@cache.internal:6380/0", "redis://***@cache.internal:6380/0"),
        (f"redis://user:{PASSWORD}@cache.internal/0?password={PASSWORD}&db=1", "redis://***@cache.internal/0?***"),
        (f"amqp://kefu:{PASSWORD}@mq:5672/vhost", "amqp://***@mq:5672/vhost"),
        (f"https://qyapi.weixin.qq.com/cgi-bin/message/send?access_token={TOKEN}",
         "https://qyapi.weixin.qq.com/cgi-bin/message/send?***"),
        (f"http://[::1]:8000/v1?key={TOKEN}#{TOKEN}", "http://[::1]:8000/v1?***"),
    ],
)
def test_redact_url_drops_userinfo_query_and_fragment(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert PASSWORD not in redact_url(url) and TOKEN not in redact_url(url)


@pytest.mark.parametrize("url", ["http://[::1", "not a url", "", "redis://h:99999999/0"])
def test_redact_url_of_garbage_is_redacted_not_raised(url: str) -> None:
    assert redact_url(url) == REDACTED


def test_url_path_of_a_failed_call_has_no_query() -> None:
    assert url_path(f"https://api.dingtalk.com/v1.0/robot/groupMessages/send?access_token={TOKEN}") \
        == "/v1.0/robot/groupMessages/send"


@pytest.mark.parametrize(
    "url",
    [
        f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}",
        f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={TOKEN}",
        f"https://hooks.example.com/services/T000/B000/{TOKEN}",
        f"https://user:{PASSWORD}@hooks.example.com/{TOKEN}",
    ],
)
def test_redact_webhook_shows_only_scheme_and_host(url: str) -> None:
    shown = redact_webhook(url)
    assert shown.startswith("https://") and shown.endswith(".com")
    assert TOKEN not in shown and PASSWORD not in shown and "/" not in shown.removeprefix("https://")


def test_redact_webhook_of_garbage_is_redacted() -> None:
    assert redact_webhook("http://[::1") == REDACTED
    assert redact_webhook("/relative/only") == REDACTED


def _dumped() -> dict[str, object]:
    return {
        "state": {"url": f"redis://:{PASSWORD}@cache:6379/0?password={PASSWORD}&socket_timeout=5",
                  "key_prefix": "kefu"},
        "queue": {"url": f"amqp://kefu:{PASSWORD}@mq:5672/"},
        "api": {"keys": ["api-key-one-111", "api-key-two-222"]},
        "wecom": {"secret": "corp-secret-333", "token": "cbToken444", "aes_key": "A" * 43, "agent_id": 1000002,
                  "apps": {"sales": {"secret": "sales-secret-555", "token": "salesTok666", "agent_id": 7}}},
        "engine": {"max_new_tokens": 256, "context_tokens": 2048, "openai": {"api_key": "sk-engine-777"}},
        "dingtalk": {"notify_webhook": f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}",
                     "webhook_hosts": ["oapi.dingtalk.com"], "card_content_key": "content"},
        "dialogue": {"handoff_webhook_url": "https://hooks.example.com/services/T0/B0/SlackPathSecret888"},
        "web": {"session_secret": "", "token_ttl_s": 86400},
    }


def test_mask_config_hides_secrets_at_any_depth_and_keeps_the_rest() -> None:
    masked = mask_config(_dumped())
    text = repr(masked)
    for secret in secrets_of(_dumped()):
        assert secret not in text
    assert masked["wecom"]["apps"]["sales"] == {"secret": REDACTED, "token": REDACTED, "agent_id": 7}
    assert masked["api"]["keys"] == [REDACTED, REDACTED]
    assert masked["state"]["url"] == f"redis://***@cache:6379/0?password={REDACTED}&socket_timeout=5"
    assert masked["queue"]["url"] == "amqp://***@mq:5672/"
    assert masked["dingtalk"]["notify_webhook"] == "https://oapi.dingtalk.com"
    assert masked["dialogue"]["handoff_webhook_url"] == "https://hooks.example.com"
    # not secrets: counts, prefixes, host lists, template names, empty values
    assert masked["state"]["key_prefix"] == "kefu"
    assert masked["engine"]["max_new_tokens"] == 256 and masked["wecom"]["agent_id"] == 1000002
    assert masked["dingtalk"]["webhook_hosts"] == ["oapi.dingtalk.com"]
    assert masked["dingtalk"]["card_content_key"] == "content"
    assert masked["web"] == {"session_secret": "", "token_ttl_s": 86400}


def test_secrets_of_finds_values_url_credentials_and_webhook_path_tokens() -> None:
    found = secrets_of(_dumped())
    for expected in (PASSWORD, TOKEN, "api-key-one-111", "corp-secret-333", "cbToken444", "A" * 43,
                     "sales-secret-555", "salesTok666", "sk-engine-777", "SlackPathSecret888"):
        assert expected in found
    assert base64.b64encode(b"corp-secret-333").decode() in found
    for ordinary in ("kefu", "oapi.dingtalk.com", "content", "cache", "services"):
        assert ordinary not in found


def test_secrets_of_adds_url_encoded_and_base64_spellings() -> None:
    found = secrets_of({"wecom": {"secret": "p@ss/w+rd 1"}})
    assert {"p@ss/w+rd 1", urllib.parse.quote("p@ss/w+rd 1", safe=""), urllib.parse.quote_plus("p@ss/w+rd 1"),
            base64.b64encode(b"p@ss/w+rd 1").decode()} <= found


def test_secrets_of_ignores_short_values_that_would_blank_words() -> None:
    assert secrets_of({"admin": {"token": "dev"}}) == set()


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"POST https://qyapi.weixin.qq.com/cgi-bin/message/send?access_token={TOKEN} failed", TOKEN),
        (f"url='http://127.0.0.1:1/cgi-bin/gettoken?corpid=ww1&corpsecret={PASSWORD}'", PASSWORD),
        (f"redis://default:{PASSWORD}@cache:6379/0", PASSWORD),
        (f"https://oapi.dingtalk.com/robot/sendBySession?session={TOKEN}", TOKEN),
        (f"headers={{'Authorization': 'Bearer {TOKEN}'}}", TOKEN),
        (f"<CIMultiDict('x-acs-dingtalk-access-token': '{TOKEN}')>", TOKEN),
        (f"wss://wss-open-connection.dingtalk.com/connect?ticket={TOKEN}", TOKEN),
        (f"https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code={TOKEN}", TOKEN),
    ],
)
def test_scrub_removes_credential_shaped_text_nobody_configured(text: str, leak: str) -> None:
    assert leak not in scrub(text)


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_filter_blanks_a_configured_secret_in_message_args_and_exception() -> None:
    secret = "corp-secret-333"
    flt = SecretFilter({secret})
    try:
        raise RuntimeError(f"failed with {secret}")
    except RuntimeError as exc:
        record = _record("calling with %s and %r", secret, {"k": secret}, exc=exc)
    assert flt.filter(record)
    formatted = logging.Formatter().format(record)
    assert secret not in formatted
    assert "calling with ***" in formatted and "RuntimeError" in formatted


def test_filter_blanks_the_url_in_an_aiohttp_error_traceback() -> None:
    """str(ClientResponseError) is the full URL with its access_token; a chained cause shows it too."""
    url = f"http://127.0.0.1:1/cgi-bin/message/send?access_token={TOKEN}"
    info = aiohttp.RequestInfo(url=URL(url), method="POST", headers=CIMultiDictProxy(CIMultiDict()),
                               real_url=URL(url))
    try:
        try:
            raise aiohttp.ClientResponseError(info, (), status=500)
        except aiohttp.ClientResponseError as inner:
            raise ValueError("send failed") from inner
    except ValueError as exc:
        record = _record("delivery failed", exc=exc)
    SecretFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert TOKEN not in formatted and "ClientResponseError" in formatted


def test_filter_survives_args_that_do_not_format() -> None:
    record = _record("two %s %s", "only-one-secret-arg")
    assert SecretFilter({"only-one-secret-arg"}).filter(record)
    assert "only-one-secret-arg" not in logging.Formatter().format(record)


def test_filter_blanks_the_longest_secret_first() -> None:
    record = _record("%s", "abcdef-and-more")
    SecretFilter({"abcdef", "abcdef-and-more"}).filter(record)
    assert record.getMessage() == REDACTED


def test_installed_filter_covers_records_of_every_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_logsafe.root")
    handler = caplog.handler
    logger.addHandler(handler)
    flt = install_secret_filter({"installed-secret-1"}, logger)
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("test_logsafe.root.child").warning("leaking %s", "installed-secret-1")
        assert "installed-secret-1" not in caplog.text and "leaking ***" in caplog.text
    finally:
        logger.removeHandler(handler)
        handler.removeFilter(flt)


def test_mask_config_leaves_prose_that_mentions_a_url_readable() -> None:
    prompt = "你是客服。帮助页面：https://shop.example.com/help?id=3 ，不要编造。"
    assert mask_config({"engine": {"system_prompt": prompt}}) == {"engine": {"system_prompt": prompt}}
    leaky = f"see https://h.example.com/x?access_token={TOKEN} now"
    assert TOKEN not in repr(mask_config({"engine": {"system_prompt": leaky}}))


async def test_malformed_request_line_is_logged_without_its_query(caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp refuses bytes no handler sees and would log the raw request line, token and all."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from bot.logsafe import install_malformed_request_filter
    from tests.adapters.rawhttp import raw_request

    install_malformed_request_filter()
    app = web.Application()
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/ok", ok)
    server = TestServer(app)
    await server.start_server()
    try:
        caplog.set_level(logging.DEBUG)
        status, _ = await raw_request(server, "GET", b"/ok?access_token=LEAKME123456",
                                      headers=[(b"X-Bad", b"a\x01b\x00c")])
        assert status == 400
        status, _ = await raw_request(server, "GET", b"/ok")
        assert status == 200  # still serving
    finally:
        await server.close()
    server_records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server_records, "aiohttp logged nothing about the refused request"
    assert all(r.levelno <= logging.INFO and r.exc_info is None for r in server_records)
    assert "LEAKME123456" not in caplog.text
