"""Stream mode against a loopback fake gateway: connection-open over HTTP, frames over a
WebSocket, ACKs back, replies at the fake sessionWebhook, reconnects with backoff."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from bot.services import Services
from tests.adapters.dingtalk.dingtalk_fake import APP_KEY, APP_SECRET, LIVENESS_S, FakeDingTalk, robot_message
from tests.conftest import start_server


@pytest.fixture
async def start_stream_hub(dingtalk_config: Callable[..., Config]) -> AsyncIterator[Callable[..., Any]]:
    running: list[TestServer] = []

    async def start(overrides: dict[str, Any] | None = None) -> Services:
        config = dingtalk_config({"dingtalk.mode": "stream", "dingtalk.stream_backoff_s": 0.01,
                                  "dingtalk.stream_backoff_max_s": 0.05, **(overrides or {})})
        services = Services(config)
        running.append(await start_server(config, services))
        return services

    yield start
    for server in running:
        await server.close()


def acks_for(fake: FakeDingTalk, message_id: str) -> list[dict[str, Any]]:
    return [a for a in fake.acks if a["headers"].get("messageId") == message_id]


async def test_a_robot_message_is_acked_and_answered(
    start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    await start_stream_hub()
    await fake_dingtalk.wait_for(lambda: fake_dingtalk.ws_connections == 1)
    opened = fake_dingtalk.opens[0]
    assert (opened["clientId"], opened["clientSecret"]) == (APP_KEY, APP_SECRET)
    assert opened["subscriptions"] == [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}]

    frame_id = fake_dingtalk.push_callback(robot_message("msgSTREAM1", "如何重置密码", webhook=fake_dingtalk.webhook()))
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, frame_id)))
    (ack,) = acks_for(fake_dingtalk, frame_id)
    assert ack["code"] == 200
    assert json.loads(ack["data"]) == {"response": "OK"}
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 1)
    assert "忘记密码" in fake_dingtalk.webhook_calls[0][1]["text"]["content"]


async def test_redelivered_frames_are_acked_but_answered_once(
    start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    services = await start_stream_hub()
    message = robot_message("msgSTREAM2", "发票怎么开", group=True, webhook=fake_dingtalk.webhook())
    frames = [fake_dingtalk.push_callback(message) for _ in range(3)]
    await fake_dingtalk.wait_for(lambda: all(acks_for(fake_dingtalk, f) for f in frames))
    assert all(acks_for(fake_dingtalk, f)[0]["code"] == 200 for f in frames)
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) >= 1)
    assert await services.hub.drain(LIVENESS_S)
    assert len(fake_dingtalk.webhook_calls) == 1
    assert fake_dingtalk.webhook_calls[0][1]["at"]["atUserIds"] == ["manager4521"]


async def test_reconnects_after_failures_and_dropped_connections(
    start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    fake_dingtalk.open_failures = 2  # the gateway is down at first
    fake_dingtalk.close_after_acks = 1  # and later drops every connection after one message
    await start_stream_hub()
    await fake_dingtalk.wait_for(lambda: fake_dingtalk.ws_connections == 1)
    assert len(fake_dingtalk.opens) == 3
    first = fake_dingtalk.push_callback(robot_message("msgSTREAM3", "如何重置密码", webhook=fake_dingtalk.webhook("a")))
    await fake_dingtalk.wait_for(lambda: fake_dingtalk.ws_connections == 2)  # dropped, then back
    second = fake_dingtalk.push_callback(robot_message("msgSTREAM4", "发票怎么开", webhook=fake_dingtalk.webhook("b"),
                                                       staff_id="u2"))
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 2)
    assert acks_for(fake_dingtalk, first)[0]["code"] == acks_for(fake_dingtalk, second)[0]["code"] == 200
    assert sorted(name for name, _ in fake_dingtalk.webhook_calls) == ["a", "b"]


async def test_disconnect_request_makes_the_client_reconnect(
    start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    await start_stream_hub()
    await fake_dingtalk.wait_for(lambda: fake_dingtalk.ws_connections == 1)
    fake_dingtalk.frames.put_nowait({"specVersion": "1.0", "type": "SYSTEM", "data": "{}",
                                     "headers": {"topic": "disconnect", "messageId": "d1"}})
    await fake_dingtalk.wait_for(lambda: fake_dingtalk.ws_connections == 2)


async def test_keepalive_pings_are_answered(start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk) -> None:
    await start_stream_hub()
    headers = {"topic": "ping", "messageId": "p1", "contentType": "application/json"}
    fake_dingtalk.frames.put_nowait({"specVersion": "1.0", "type": "SYSTEM", "data": '{"opaque": "abc"}',
                                     "headers": headers})
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, "p1")))
    (ack,) = acks_for(fake_dingtalk, "p1")
    assert ack["code"] == 200 and json.loads(ack["data"]) == {"opaque": "abc"}


async def test_unreadable_messages_are_refused_and_garbage_is_survived(
    start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    await start_stream_hub()
    bad = robot_message("msgSTREAM5", webhook=fake_dingtalk.webhook())
    del bad["msgId"]
    bad_frame = fake_dingtalk.push_callback(bad)
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, bad_frame)))
    assert acks_for(fake_dingtalk, bad_frame)[0]["code"] == 400
    fake_dingtalk.frames.put_nowait({"type": "CALLBACK", "headers": {"topic": "/v1.0/other", "messageId": "o1"}})
    fake_dingtalk.frames.put_nowait({"type": "MYSTERY"})
    good = fake_dingtalk.push_callback(robot_message("msgSTREAM6", "如何重置密码", webhook=fake_dingtalk.webhook()))
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, good)))
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 1)
    assert fake_dingtalk.ws_connections == 1  # still the same connection


async def test_overload_is_acked_as_a_failure_so_dingtalk_redelivers(
    start_stream_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    services = await start_stream_hub({"hub.max_pending": 1})
    fake_dingtalk.webhook_gate = asyncio.Event()
    first = fake_dingtalk.push_callback(robot_message("msgBUSY1", "如何重置密码", webhook=fake_dingtalk.webhook("a")))
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, first)))
    message = robot_message("msgBUSY2", "发票怎么开", webhook=fake_dingtalk.webhook("b"), staff_id="u2")
    refused = fake_dingtalk.push_callback(message)
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, refused)))
    assert acks_for(fake_dingtalk, refused)[0]["code"] == 500
    fake_dingtalk.webhook_gate.set()
    assert await services.hub.drain(LIVENESS_S)
    again = fake_dingtalk.push_callback(message, message_id=uuid.uuid4().hex)
    await fake_dingtalk.wait_for(lambda: bool(acks_for(fake_dingtalk, again)))
    assert acks_for(fake_dingtalk, again)[0]["code"] == 200
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 2)
