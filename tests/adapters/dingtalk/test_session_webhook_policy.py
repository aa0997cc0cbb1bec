"""A sessionWebhook comes inside the callback, so it is an attacker's URL until proven otherwise: only
allowed hosts (https, 443; a listed loopback fake in tests) are called, redirects are never followed, and
an answer that may mean "delivered" is never followed by a second send through the OpenAPI.

Real loopback servers throughout: the fake DingTalk (OpenAPI + webhooks) and a "trap" standing for any
other server, which records every request that reaches it."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.dingtalk.api import DingtalkApi, DingtalkError, DingtalkMaybeSent, Target
from bot.config import Config
from bot.outbound import http_timeout
from bot.state.keys import Keys
from bot.state.kv import RedisKV
from tests.adapters.dingtalk.dingtalk_fake import FakeDingTalk
from tests.fakes.trap import Trap

FRESH = 2**62  # sessionWebhookExpiredTime far in the future


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    t = await Trap().start()
    yield t
    await t.close()


@pytest.fixture
async def api(dingtalk_config: Callable[..., Config], redis_client: aioredis.Redis,
              key_prefix: str) -> AsyncIterator[DingtalkApi]:
    """The API with the production-shaped session timeout, made small."""
    async with aiohttp.ClientSession(timeout=http_timeout(0.5)) as session:
        yield DingtalkApi(dingtalk_config().dingtalk, lambda: session, RedisKV(redis_client), Keys(key_prefix))


def target(webhook: str) -> Target:
    return Target("cidS", False, staff_id="u1", webhook=webhook, webhook_expires_ms=FRESH)


async def still_serves(api: DingtalkApi, fake: FakeDingTalk) -> None:
    """After each attack a genuine webhook reply still goes out by the webhook."""
    assert await api.send(target(fake.webhook("ok")), "正常回复", markdown=False) == "webhook"
    assert fake.webhook_calls[-1] == ("ok", {"msgtype": "text", "text": {"content": "正常回复"},
                                             "at": {"isAtAll": False}})


def sent_by_openapi(fake: FakeDingTalk) -> list[str]:
    return [json.loads(b["msgParam"])["content"] for _, b in fake.robot_sends]


async def test_webhook_on_an_unlisted_host_is_never_called(api: DingtalkApi, fake_dingtalk: FakeDingTalk,
                                                           trap: Trap, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert await api.send(target(trap.url("steal", host="localhost")), "答案", markdown=False) == "openapi"
    assert trap.calls == []  # not one request reached it
    assert sent_by_openapi(fake_dingtalk) == ["答案"]  # the platform's own route answered instead
    assert "'localhost'" in caplog.text and "SESSIONSECRET" not in caplog.text and "/steal" not in caplog.text
    await still_serves(api, fake_dingtalk)


@pytest.mark.parametrize(
    "webhook",
    [
        "http://oapi.dingtalk.com/robot/sendBySession?session=x",  # listed host, plain http
        "https://oapi.dingtalk.com:8443/robot/sendBySession?session=x",  # listed host, not 443
        "https://user:pw@oapi.dingtalk.com/robot/sendBySession",  # user-info
        "https://oapi.dingtalk.com\\@evil.example.com/x",  # parser differential
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "https://oapi.dingtalk.com/x\ud800",  # a lone surrogate
    ],
)
async def test_webhook_outside_https_443_on_a_listed_host_goes_by_the_openapi(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, webhook: str
) -> None:
    assert await api.send(target(webhook), "答案", markdown=False) == "openapi"
    assert sent_by_openapi(fake_dingtalk) == ["答案"]
    await still_serves(api, fake_dingtalk)


async def test_webhook_redirect_is_not_followed(api: DingtalkApi, fake_dingtalk: FakeDingTalk, trap: Trap) -> None:
    """The listed loopback host answers 302 to a server of the attacker's: the reply must not go there."""
    other = await Trap().start()
    try:
        trap.elsewhere = other.url("collect")
        assert await api.send(target(trap.url("redirect")), "答案", markdown=False) == "openapi"
        assert trap.calls == ["redirect"] and other.calls == []  # asked once, never followed
        assert sent_by_openapi(fake_dingtalk) == ["答案"]  # a 3xx delivered nothing: the OpenAPI answers
        await still_serves(api, fake_dingtalk)
    finally:
        await other.close()


async def test_webhook_200_that_is_not_json_is_a_failed_send_not_a_resend(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, trap: Trap
) -> None:
    with pytest.raises(DingtalkMaybeSent) as err:
        await api.send(target(trap.url("text")), "只发一次", markdown=False)
    assert "SESSIONSECRET" not in str(err.value)
    assert trap.calls == ["text"]
    assert fake_dingtalk.robot_sends == []  # not sent a second time by another route
    await still_serves(api, fake_dingtalk)


async def test_webhook_error_page_is_not_delivered_so_the_openapi_answers(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, trap: Trap
) -> None:
    assert await api.send(target(trap.url("html502")), "答案", markdown=False) == "openapi"
    assert sent_by_openapi(fake_dingtalk) == ["答案"]
    await still_serves(api, fake_dingtalk)


async def test_webhook_that_hangs_fails_with_a_timeout_and_is_not_resent(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, trap: Trap
) -> None:
    with pytest.raises(DingtalkMaybeSent, match="TimeoutError"):
        await api.send(target(trap.url("hang")), "只发一次", markdown=False)
    assert fake_dingtalk.robot_sends == []
    trap.release.set()
    await still_serves(api, fake_dingtalk)


async def test_webhook_unreachable_goes_by_the_openapi_without_the_url_in_the_error(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, caplog: pytest.LogCaptureFixture
) -> None:
    closed = "http://127.0.0.1:9/robot/sendBySession?session=SESSIONSECRET"  # discard port: refused
    assert await api.send(target(closed), "答案", markdown=False) == "openapi"
    assert "SESSIONSECRET" not in caplog.text
    with pytest.raises(DingtalkError) as err:
        await api._webhook(api.webhooks.check(closed), {"msgtype": "text", "text": {"content": "x"}})
    assert "SESSIONSECRET" not in str(err.value) and err.value.__cause__ is None
    await still_serves(api, fake_dingtalk)
