"""POST /dingtalk/callback end to end: the real hub server, Redis, and a loopback fake DingTalk."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from adapters.dingtalk.parse import parse_message
from bot.config import Config
from bot.services import Services
from bot.types import ConversationRef, Reply
from tests.adapters.dingtalk.dingtalk_fake import LIVENESS_S, FakeDingTalk, robot_message, signed_headers
from tests.conftest import start_server

HOUR_MS = 3600 * 1000


class Hub:
    """The running server plus its services, so tests can wait for every turn to finish."""

    def __init__(self, server: TestServer, services: Services) -> None:
        self.server = server
        self.services = services

    async def post(self, body: bytes | str | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
        data = json.dumps(body, ensure_ascii=False) if isinstance(body, dict) else body
        headers = signed_headers() if headers is None else headers
        async with aiohttp.ClientSession() as s, s.post(
            self.server.make_url("/dingtalk/callback"), data=data, headers=headers
        ) as r:
            return r.status, await r.text()

    async def settle(self) -> None:
        assert await self.services.hub.drain(LIVENESS_S)


@pytest.fixture
async def start_hub(dingtalk_config: Callable[..., Config]) -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(overrides: dict[str, Any] | None = None) -> Hub:
        config = dingtalk_config(overrides)
        services = Services(config)
        server = await start_server(config, services)
        servers.append(server)
        return Hub(server, services)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def hub(start_hub: Callable[..., Any]) -> Hub:
    return await start_hub()


async def test_one_reply_per_message_under_redelivery(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    message = robot_message("msgRESET01", "如何重置密码？", webhook=fake_dingtalk.webhook("s1"))
    for _ in range(3):  # DingTalk redelivers the same msgId
        status, _ = await hub.post(message)
        assert status == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) >= 1)
    await hub.settle()
    assert len(fake_dingtalk.webhook_calls) == 1
    name, payload = fake_dingtalk.webhook_calls[0]
    assert name == "s1" and payload["msgtype"] == "text"
    assert "忘记密码" in payload["text"]["content"]
    assert fake_dingtalk.robot_sends == [] and fake_dingtalk.token_requests == []


async def test_group_replies_mention_the_sender(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    message = robot_message("msgGROUP01", "发票怎么开", group=True, webhook=fake_dingtalk.webhook("g1"),
                            staff_id="wangwu88")
    assert (await hub.post(message))[0] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 1)
    _, payload = fake_dingtalk.webhook_calls[0]
    body = payload["text"]["content"] if payload["msgtype"] == "text" else payload["markdown"]["text"]
    assert body.startswith("@wangwu88")
    assert payload["at"]["atUserIds"] == ["wangwu88"]
    assert "发票" in body


async def test_expired_session_webhook_goes_through_the_openapi(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    expired = int(time.time() * 1000) - 1000
    single = robot_message("msgOLD01", "如何重置密码", webhook=fake_dingtalk.webhook("old"), expires_ms=expired)
    group = robot_message("msgOLD02", "如何重置密码", group=True, webhook=fake_dingtalk.webhook("old"),
                          expires_ms=expired)
    assert (await hub.post(single))[0] == 200
    assert (await hub.post(group))[0] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.robot_sends) == 2)
    await hub.settle()
    assert fake_dingtalk.webhook_calls == []
    paths = sorted(path for path, _ in fake_dingtalk.robot_sends)
    assert paths == ["/v1.0/robot/groupMessages/send", "/v1.0/robot/oToMessages/batchSend"]
    for path, body in fake_dingtalk.robot_sends:
        assert "忘记密码" in json.loads(body["msgParam"])["content"]
        if path.endswith("batchSend"):
            assert body["userIds"] == ["manager4521"]
        else:
            assert body["openConversationId"] == "cidGroup123=="
    assert len(fake_dingtalk.token_requests) == 1


async def test_a_webhook_outside_the_allowed_hosts_is_never_called(
    hub: Hub, fake_dingtalk: FakeDingTalk, caplog: pytest.LogCaptureFixture
) -> None:
    # the fake would record a call: localhost reaches it, but only 127.0.0.1 is allowed
    forged = fake_dingtalk.webhook("forged").replace("127.0.0.1", "localhost")
    assert (await hub.post(robot_message("msgFORGE1", "如何重置密码", webhook=forged)))[0] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.robot_sends) == 1)
    await hub.settle()
    assert fake_dingtalk.webhook_calls == []
    assert "not in dingtalk.webhook_hosts" in caplog.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"timestamp": str(int(time.time() * 1000))}, 401),
        ({**signed_headers(), "sign": signed_headers(secret="wrong")["sign"]}, 401),
        (signed_headers(secret="wrong"), 401),
        (signed_headers(int(time.time() * 1000) - 2 * HOUR_MS), 403),
        (signed_headers(int(time.time() * 1000) + 2 * HOUR_MS), 403),
    ],
)
async def test_bad_signatures_are_refused_and_nothing_is_sent(
    hub: Hub, fake_dingtalk: FakeDingTalk, headers: dict[str, str], status: int
) -> None:
    got, body = await hub.post(robot_message("msgSIGN01", webhook=fake_dingtalk.webhook()), headers=headers)
    assert got == status
    assert json.loads(body)["error"] in ("invalid_signature", "stale_timestamp")
    await hub.settle()
    assert await hub.services.hub.pending() == 0
    assert fake_dingtalk.webhook_calls == [] and fake_dingtalk.robot_sends == []
    # the same message, properly signed, is still answered: a refused request used up nothing
    assert (await hub.post(robot_message("msgSIGN01", webhook=fake_dingtalk.webhook())))[0] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 1)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"msgtype": "text", "text": {"content": "hi"}}', "invalid_message"),
        ('{"msgId": "m", "conversationId": "c", "senderId": "s", "conversationType": "9"}', "invalid_message"),
    ],
)
async def test_invalid_bodies_are_400(hub: Hub, fake_dingtalk: FakeDingTalk, body: str, code: str) -> None:
    status, text = await hub.post(body)
    assert (status, json.loads(text)["error"]) == (400, code)
    await hub.settle()
    assert fake_dingtalk.webhook_calls == []


async def test_unknown_msgtype_gets_a_polite_not_supported_reply(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    message = robot_message("msgCARD01", msgtype="interactiveCard", webhook=fake_dingtalk.webhook(),
                            content={"cardTemplateId": "x"})
    assert (await hub.post(message))[0] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 1)
    assert "暂不支持该类型的消息" in fake_dingtalk.webhook_calls[0][1]["text"]["content"]


async def test_pictures_and_voice(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    picture = robot_message("msgPIC01", msgtype="picture", webhook=fake_dingtalk.webhook("pic"),
                            content={"downloadCode": "dc"})
    voice = robot_message("msgVOICE1", msgtype="audio", webhook=fake_dingtalk.webhook("voice"), staff_id="u2",
                          content={"downloadCode": "dc2", "duration": 2, "recognition": "忘记密码了怎么办"})
    assert (await hub.post(picture))[0] == 200
    assert (await hub.post(voice))[0] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 2)
    replies = {name: payload["text"]["content"] for name, payload in fake_dingtalk.webhook_calls}
    assert "图片" in replies["pic"]
    assert "忘记密码" in replies["voice"]


async def test_overload_answers_503_and_the_retry_is_answered(
    start_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    hub = await start_hub({"hub.max_pending": 1})
    fake_dingtalk.webhook_gate = asyncio.Event()  # DingTalk is slow: the first answer stays pending
    first = robot_message("msgBUSY01", "如何重置密码", webhook=fake_dingtalk.webhook("a"))
    second = robot_message("msgBUSY02", "发票怎么开", webhook=fake_dingtalk.webhook("b"), staff_id="u2")
    assert (await hub.post(first))[0] == 200
    status, body = await hub.post(second)
    assert (status, json.loads(body)["error"]) == (503, "overloaded")
    fake_dingtalk.webhook_gate.set()
    await hub.settle()
    assert (await hub.post(second))[0] == 200  # DingTalk's retry is not mistaken for a duplicate
    await hub.settle()
    assert sorted(name for name, _ in fake_dingtalk.webhook_calls) == ["a", "b"]


async def test_route_is_absent_in_stream_mode(start_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk) -> None:
    fake_dingtalk.open_failures = 10**6  # keep the stream client from connecting; not under test here
    hub = await start_hub({"dingtalk.mode": "stream", "dingtalk.stream_backoff_s": 5})
    status, _ = await hub.post(robot_message("msgX", webhook=fake_dingtalk.webhook()))
    assert status == 404


async def test_proactive_messages_go_through_the_openapi(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    """An agent's answer later on (no event): the hub's sink for the channel sends it."""
    sink = hub.services.hub.sink("dingtalk")
    single = ConversationRef("dingtalk", "cidSingle-u9", "u9", tenant="dingcorp1")
    group = ConversationRef("dingtalk", "cidGroup123==", "u9", tenant="dingcorp1", is_group=True)
    await sink.deliver(None, [Reply(single, "人工客服：已为您补发。", source="agent"),
                              Reply(group, "人工客服：已处理。", source="agent")])
    (p1, b1), (p2, b2) = fake_dingtalk.robot_sends
    assert (p1, b1["userIds"], json.loads(b1["msgParam"])["content"]) == (
        "/v1.0/robot/oToMessages/batchSend", ["u9"], "人工客服：已为您补发。")
    assert (p2, b2["openConversationId"]) == ("/v1.0/robot/groupMessages/send", "cidGroup123==")


async def test_suggestions_are_listed_in_the_reply(hub: Hub, fake_dingtalk: FakeDingTalk) -> None:
    message = robot_message("msgSUGG01", webhook=fake_dingtalk.webhook())
    event = parse_message(message)
    reply = Reply(event.ref, "您是想问以下问题吗？", quick_replies=("如何重置密码？", "如何开发票？"),
                  in_reply_to=event.id, source="unknown")
    await hub.services.hub.sink("dingtalk").deliver(event, [reply])
    (_, payload), = fake_dingtalk.webhook_calls
    content = payload["markdown"]["text"] if payload["msgtype"] == "markdown" else payload["text"]["content"]
    assert content == "您是想问以下问题吗？\n1. 如何重置密码？\n2. 如何开发票？"
