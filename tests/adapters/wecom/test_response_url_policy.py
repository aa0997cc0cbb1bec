"""The AI bot's response_url comes inside the callback: a proactive reply (an agent's answer) goes there only
when it points at WeCom (https, 443), the configured ``wecom.api_base`` origin (the loopback fake here) or a
host in ``wecom.response_url_hosts``; redirects are never followed; an answer that may mean "delivered" is not
repeated. The AI bot has no other route, so every refusal is a failed send, reported, and the next genuine
reply still goes out. Real loopback servers: the fake WeCom, and a trap standing for any other server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.wecom.aibot import AibotSender
from adapters.wecom.api import CallPolicy, WecomApiError
from adapters.wecom.sender import response_url_policy
from bot.outbound import http_timeout
from bot.replybus import LocalBus
from bot.state.keys import Keys
from bot.state.kv import RedisKV
from bot.types import ConversationRef, Reply
from tests.conftest import make_config
from tests.fakes.trap import Trap

from .fake_wecom import FakeWecom

REF = ConversationRef(channel="wecom", conversation_id="lisi", user_id="lisi", tenant="aibot")
TEXT = "我是人工客服小王，正在为您处理。"

Build = Callable[..., AibotSender]


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    t = await Trap().start()
    yield t
    await t.close()


@pytest.fixture
async def aibot(fake_wecom: FakeWecom, redis_client: aioredis.Redis, key_prefix: str) -> AsyncIterator[Build]:
    """A sender as a worker builds it, with the production-shaped session timeout made small."""
    async with aiohttp.ClientSession(timeout=http_timeout(0.5)) as session:
        def build(overrides: dict[str, Any] | None = None) -> AibotSender:
            cfg = make_config({"wecom.api_base": fake_wecom.url, **(overrides or {})}).wecom
            policy = CallPolicy(lambda: session, retries=2, backoff_s=0.01)
            return AibotSender(RedisKV(redis_client), Keys(key_prefix), policy, stream_ttl_s=60, bus=LocalBus(),
                               response_urls=response_url_policy(cfg))

        yield build


async def reply_via(sender: AibotSender, url: str) -> None:
    """What the gateway does on a callback (keep its response_url), then an agent's proactive reply."""
    await sender.kv.set(sender.keys.wecom_response_url(REF.key), url, 60)
    await sender.send_proactive(Reply(REF, TEXT, source="agent"))


async def still_serves(sender: AibotSender, fake: FakeWecom, code: str = "good") -> None:
    await reply_via(sender, f"{fake.url}/cgi-bin/aibot/response?response_code={code}")
    assert fake.responses[-1].params == {"response_code": code}
    assert fake.responses[-1].body == {"msgtype": "markdown", "markdown": {"content": TEXT}}


async def test_response_url_on_an_unlisted_host_is_never_called(
    aibot: Build, fake_wecom: FakeWecom, trap: Trap, caplog: pytest.LogCaptureFixture
) -> None:
    sender = aibot()
    with pytest.raises(WecomApiError, match="refused") as err:
        await reply_via(sender, trap.url("steal", query="response_code=SECRETCODE"))
    assert trap.calls == []  # not one request reached it
    assert "SECRETCODE" not in str(err.value) and "SECRETCODE" not in caplog.text
    assert "127.0.0.1" in caplog.text and "/steal" not in caplog.text  # the log names the host only
    await still_serves(sender, fake_wecom)


@pytest.mark.parametrize(
    "url",
    [
        "http://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=x",  # WeCom's host, plain http
        "https://qyapi.weixin.qq.com:8443/cgi-bin/aibot/response?response_code=x",  # not 443
        "https://u:p@qyapi.weixin.qq.com/cgi-bin/aibot/response",  # user-info
        "https://qyapi.weixin.qq.com.evil.example.com/cgi-bin/aibot/response",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/x",  # loopback, but not the configured fake
        "not a url",
    ],
)
async def test_response_url_outside_the_policy_is_a_failed_send(aibot: Build, fake_wecom: FakeWecom,
                                                                  url: str) -> None:
    sender = aibot()
    with pytest.raises(WecomApiError, match="refused"):
        await reply_via(sender, url)
    assert fake_wecom.responses == []
    assert await sender.kv.get(sender.keys.wecom_response_url(REF.key)) is None  # one-shot: dropped, not kept
    await still_serves(sender, fake_wecom)


async def test_response_url_redirect_is_not_followed(aibot: Build, fake_wecom: FakeWecom, trap: Trap) -> None:
    """An allowed host (listed for this private deployment) answers 302 to elsewhere: not followed."""
    sender = aibot({"wecom.response_url_hosts": "[qyapi.weixin.qq.com, 127.0.0.1]"})
    other = await Trap().start()
    try:
        trap.elsewhere = other.url("collect")
        with pytest.raises(WecomApiError, match="302"):
            await reply_via(sender, trap.url("redirect"))
        assert trap.calls == ["redirect"] and other.calls == []
        await still_serves(sender, fake_wecom)
    finally:
        await other.close()


async def test_response_url_200_that_is_not_json_is_not_sent_again(aibot: Build, fake_wecom: FakeWecom,
                                                                    trap: Trap) -> None:
    sender = aibot({"wecom.response_url_hosts": "[127.0.0.1]"})
    with pytest.raises(WecomApiError, match="may have been delivered"):
        await reply_via(sender, trap.url("text"))
    assert trap.calls == ["text"]  # once: retrying could show the customer the answer twice
    await still_serves(sender, fake_wecom)


async def test_response_url_that_hangs_fails_with_a_timeout(aibot: Build, fake_wecom: FakeWecom,
                                                            trap: Trap) -> None:
    sender = aibot({"wecom.response_url_hosts": "[127.0.0.1]"})
    with pytest.raises(WecomApiError, match="TimeoutError"):
        await reply_via(sender, trap.url("hang"))
    assert trap.calls == ["hang"]  # not retried: the request went out
    trap.release.set()
    await still_serves(sender, fake_wecom)


async def test_the_default_allows_wecom_alone(aibot: Build) -> None:
    policy = response_url_policy(make_config().wecom)
    assert policy.allows("https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=x")
    assert not policy.allows("http://127.0.0.1:8080/cgi-bin/aibot/response")
    assert not policy.allows("https://open.weixin.qq.com/x")


async def test_a_refused_response_url_is_logged_at_warning(aibot: Build, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.wecom.aibot")
    with pytest.raises(WecomApiError):
        await reply_via(aibot(), "https://evil.example.com/cgi-bin/aibot/response?response_code=SECRET")
    assert "'evil.example.com'" in caplog.text and "SECRET" not in caplog.text
