"""Outbound DingTalk calls against the loopback fake, with the real Redis KV."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.dingtalk.api import (
    DingtalkApi,
    DingtalkError,
    DingtalkMaybeSent,
    Target,
    has_markdown,
    markdown_title,
    webhook_allowed,
    webhook_payload,
)
from bot.config import Config
from bot.state.keys import Keys
from bot.state.kv import RedisKV
from tests.adapters.dingtalk.dingtalk_fake import APP_KEY, FakeDingTalk
from tests.fakes.clock import FakeClock

HOSTS = ["oapi.dingtalk.com", "api.dingtalk.com", "127.0.0.1"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://oapi.dingtalk.com/robot/sendBySession?session=1", True),
        ("https://API.dingtalk.com/x", True),
        ("http://oapi.dingtalk.com/robot/sendBySession", False),  # DingTalk's own hosts only over https
        ("https://evil.example.com/robot", False),
        ("https://oapi.dingtalk.com.evil.example.com/x", False),
        ("https://oapi.dingtalk.com@evil.example.com/x", False),  # userinfo trick
        ("http://127.0.0.1:8080/webhook", True),  # loopback may be plain http (tests)
        ("http://localhost:8080/webhook", False),  # loopback, but not listed
        ("ftp://oapi.dingtalk.com/x", False),
        ("https://oapi.dingtalk.com:99999/x", False),
        ("not a url", False),
        ("", False),
    ],
)
def test_webhook_host_allow_list(url: str, allowed: bool) -> None:
    assert webhook_allowed(url, HOSTS) is allowed


@pytest.mark.parametrize(
    ("text", "markdown"),
    [
        ("您好，订单已经发货。", False),
        ("价格是 3*4=12 元", False),
        ("## 退货流程\n1. 申请售后", True),
        ("步骤：\n- 打开订单\n- 点击退款", True),
        ("请注意 **七天内** 申请", True),
        ("详见[帮助中心](https://help.example.com)", True),
    ],
)
def test_markdown_is_recognised(text: str, markdown: bool) -> None:
    assert has_markdown(text) is markdown


def test_markdown_title_is_the_first_plain_line() -> None:
    assert markdown_title("## 退货流程\n1. 申请") == "退货流程"
    assert markdown_title("   \n") == "客服回复"
    assert markdown_title("退款会在 **1-3 个工作日** 内退回") == "退款会在 1-3 个工作日 内退回"
    assert markdown_title("- 详见[帮助中心](https://h.example.com)") == "详见帮助中心"


def test_group_replies_mention_the_sender_in_text_and_at() -> None:
    target = Target("cidG", True, staff_id="u1", nick="张三")
    text = webhook_payload(target, "您好", markdown=False)
    assert text["msgtype"] == "text"
    assert text["text"]["content"] == "@u1 您好"
    assert text["at"]["atUserIds"] == ["u1"]
    md = webhook_payload(target, "## 标题\n内容", markdown=True)
    assert md["msgtype"] == "markdown" and md["markdown"]["text"].startswith("@u1")
    assert md["markdown"]["title"] == "标题" and md["at"]["atUserIds"] == ["u1"]
    single = webhook_payload(Target("cidS", False, staff_id="u1"), "您好", markdown=False)
    assert single["text"]["content"] == "您好" and "atUserIds" not in single["at"]


def _paced_api(config: Config, redis_client: aioredis.Redis, key_prefix: str, clock: FakeClock) -> DingtalkApi:
    def no_http() -> aiohttp.ClientSession:
        raise AssertionError("waiting for the send rate makes no HTTP call")

    kv = RedisKV(redis_client)
    return DingtalkApi(config.dingtalk, no_http, kv, Keys(key_prefix), clock=clock, sleep=clock.sleep)


async def test_send_rate_queues_past_the_limit_and_never_drops(
    dingtalk_config: Callable[..., Config], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    clock = FakeClock(start=600.0 + 45.0)  # 15 s before the next minute
    api = _paced_api(dingtalk_config({"dingtalk.send_rate_per_min": 2}), redis_client, key_prefix, clock)
    passed: list[float] = []

    async def send() -> None:
        await api.wait_send_rate()
        passed.append(clock())

    await asyncio.gather(*(send() for _ in range(5)))
    assert len(passed) == 5  # every reply went out
    assert passed == [645.0, 645.0, 660.0, 660.0, 720.0]  # two per minute, in order
    assert clock.sleeps == [15.0, 60.0]
    assert await redis_client.get(Keys(key_prefix).rate(f"dingtalk:{APP_KEY}:11")) == "3"  # one budget per robot


async def test_send_rate_is_shared_between_processes(
    dingtalk_config: Callable[..., Config], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    clock = FakeClock(start=1200.0)
    config = dingtalk_config({"dingtalk.send_rate_per_min": 3})
    apis = [_paced_api(config, redis_client, key_prefix, clock) for _ in range(2)]
    for api in apis:
        await api.wait_send_rate()
    await apis[0].wait_send_rate()
    assert clock.sleeps == []
    await apis[1].wait_send_rate()  # the fourth send of the minute, from the other "process"
    assert clock.sleeps == [60.0]


@pytest.fixture
async def api(
    dingtalk_config: Callable[..., Config], redis_client: aioredis.Redis, key_prefix: str
) -> AsyncIterator[DingtalkApi]:
    cfg = dingtalk_config().dingtalk
    session = aiohttp.ClientSession()
    yield DingtalkApi(cfg, lambda: session, RedisKV(redis_client), Keys(key_prefix))
    await session.close()


async def test_the_token_is_fetched_once_and_shared(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    target = Target("cidG", True, staff_id="u1")
    await asyncio.gather(*(api.send(target, f"通知{i}", markdown=False) for i in range(8)))
    assert len(fake_dingtalk.token_requests) == 1
    assert len(fake_dingtalk.robot_sends) == 8
    key = Keys(key_prefix).token(f"dingtalk:{APP_KEY}")
    assert await redis_client.get(key) == "tok-0"
    assert 0 < await redis_client.ttl(key) <= 7200 - 300


async def test_a_refused_token_is_refreshed_once(api: DingtalkApi, fake_dingtalk: FakeDingTalk) -> None:
    target = Target("cidS", False, staff_id="u1")
    await api.send(target, "第一条", markdown=False)
    fake_dingtalk.token = "tok-1"  # DingTalk revoked the cached token
    await api.send(target, "第二条", markdown=False)
    assert len(fake_dingtalk.token_requests) == 2
    assert [json.loads(b["msgParam"])["content"] for _, b in fake_dingtalk.robot_sends] == ["第一条", "第二条"]


async def test_openapi_messages_for_single_and_group(api: DingtalkApi, fake_dingtalk: FakeDingTalk) -> None:
    assert await api.send(Target("cidS", False, staff_id="u1"), "您好", markdown=False) == "openapi"
    assert await api.send(Target("cidG", True, staff_id="u1"), "## 标题\n正文", markdown=True) == "openapi"
    (single_path, single), (group_path, group) = fake_dingtalk.robot_sends
    assert single_path == "/v1.0/robot/oToMessages/batchSend"
    assert single["userIds"] == ["u1"] and single["robotCode"] == APP_KEY and single["msgKey"] == "sampleText"
    assert group_path == "/v1.0/robot/groupMessages/send"
    assert group["openConversationId"] == "cidG" and group["msgKey"] == "sampleMarkdown"
    assert json.loads(group["msgParam"]) == {"title": "标题", "text": "## 标题\n正文"}


async def test_webhook_routes(api: DingtalkApi, fake_dingtalk: FakeDingTalk) -> None:
    fresh = 2**62  # sessionWebhookExpiredTime far in the future
    ok = Target("cidS", False, staff_id="u1", webhook=fake_dingtalk.webhook("ok"), webhook_expires_ms=fresh)
    assert await api.send(ok, "走 webhook", markdown=False) == "webhook"
    expired = Target("cidS", False, staff_id="u1", webhook=fake_dingtalk.webhook("old"), webhook_expires_ms=1)
    assert await api.send(expired, "过期", markdown=False) == "openapi"
    foreign = Target("cidS", False, staff_id="u1",
                     webhook=fake_dingtalk.webhook("x").replace("127.0.0.1", "localhost"), webhook_expires_ms=fresh)
    assert await api.send(foreign, "不可信", markdown=False) == "openapi"
    broken = Target("cidS", False, staff_id="u1", webhook=fake_dingtalk.webhook("broken"), webhook_expires_ms=fresh)
    assert await api.send(broken, "失败转 OpenAPI", markdown=False) == "openapi"
    assert [name for name, _ in fake_dingtalk.webhook_calls] == ["ok", "broken"]  # localhost was never called
    sent = [json.loads(b["msgParam"])["content"] for _, b in fake_dingtalk.robot_sends]
    assert sent == ["过期", "不可信", "失败转 OpenAPI"]


async def test_a_refresh_stuck_in_another_process_ends_in_a_dingtalk_error(
    api: DingtalkApi, fake_dingtalk: FakeDingTalk, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await redis_client.set(Keys(key_prefix).lock(f"dingtalk-token:{APP_KEY}"), "other-process", ex=60)
    api.tokens.wait_s = 0.2
    with pytest.raises(DingtalkError, match="another process"):
        await api.send(Target("cidS", False, staff_id="u1"), "您好", markdown=False)
    assert fake_dingtalk.token_requests == [] and fake_dingtalk.robot_sends == []


async def test_a_webhook_reply_that_times_out_is_not_sent_again(
    dingtalk_config: Callable[..., Config], redis_client: aioredis.Redis, key_prefix: str, fake_dingtalk: FakeDingTalk
) -> None:
    """DingTalk may have shown a reply whose answer never came back; the OpenAPI
    must not send it a second time."""
    fake_dingtalk.webhook_gate = asyncio.Event()  # the webhook hangs
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        api = DingtalkApi(dingtalk_config().dingtalk, lambda: session, RedisKV(redis_client), Keys(key_prefix))
        target = Target("cidS", False, staff_id="u1", webhook=fake_dingtalk.webhook("slow"), webhook_expires_ms=2**62)
        with pytest.raises(DingtalkMaybeSent):
            await api.send(target, "只发一次", markdown=False)
    fake_dingtalk.webhook_gate.set()
    assert fake_dingtalk.robot_sends == []
