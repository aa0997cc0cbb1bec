"""Hostile DingTalk Stream-mode frames, over a real WebSocket from the loopback fake gateway.

A frame that cannot be read is ACKed when it names a ``messageId`` (400
unreadable, 404 unknown topic or type), dropped otherwise; nothing kills the
connection (``ws_connections`` stays 1) and nothing of the frame's content
reaches the log. Each attack is followed by a genuine robot message that is
still ACKed 200 and answered.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from bot.services import Services
from tests.adapters.dingtalk.dingtalk_fake import FakeDingTalk, robot_message
from tests.conftest import start_server

TOPIC = "/v1.0/im/bot/messages/get"


@pytest.fixture
async def stream_hub(dingtalk_config: Callable[..., Config], fake_dingtalk: FakeDingTalk) -> AsyncIterator[Services]:
    config = dingtalk_config({"dingtalk.mode": "stream", "dingtalk.stream_backoff_s": 0.01,
                              "dingtalk.stream_backoff_max_s": 0.05})
    services = Services(config)
    server: TestServer = await start_server(config, services)
    await fake_dingtalk.wait_for(lambda: fake_dingtalk.ws_connections == 1)
    yield services
    await server.close()


def acks_for(fake: FakeDingTalk, message_id: str) -> list[dict[str, Any]]:
    return [a for a in fake.acks if isinstance(a.get("headers"), dict) and a["headers"].get("messageId") == message_id]


def callback(data: Any, *, headers: Any = None, kind: Any = "CALLBACK") -> tuple[dict[str, Any], str]:
    """A CALLBACK frame; ``data`` is put in as given (DingTalk sends a JSON string)."""
    message_id = uuid.uuid4().hex
    frame_headers = {"topic": TOPIC, "messageId": message_id, "contentType": "application/json",
                     "time": str(int(time.time() * 1000)), "appId": "a"} if headers is None else headers
    return {"specVersion": "1.0", "type": kind, "headers": frame_headers, "data": data}, message_id


async def ack_code(fake: FakeDingTalk, frame: dict[str, Any], message_id: str) -> int:
    fake.frames.put_nowait(frame)
    await fake.wait_for(lambda: bool(acks_for(fake, message_id)))
    (ack,) = acks_for(fake, message_id)
    return int(ack["code"])


async def still_serving(services: Services, fake: FakeDingTalk, msg_id: str) -> None:
    """A genuine message after the attack: ACK 200, answered, on the same connection."""
    assert await services.hub.drain(30)  # whatever the attack left in flight is answered first
    before = len(fake.webhook_calls) + len(fake.robot_sends)
    message_id = fake.push_callback(robot_message(f"good-{msg_id}", "如何重置密码？", webhook=fake.webhook()))
    await fake.wait_for(lambda: bool(acks_for(fake, message_id)))
    assert acks_for(fake, message_id)[0]["code"] == 200
    assert await services.hub.drain(30)
    assert len(fake.webhook_calls) + len(fake.robot_sends) == before + 1
    assert fake.ws_connections == 1  # never dropped


# ------------------------------------------------------------------ frames that are not frames
@pytest.mark.parametrize("raw", [
    "not json",
    "[" * 5000 + "]" * 5000,
    '{"type": "CALLBACK", "data": ' + "[" * 5000 + "]" * 5000 + "}",
    "[1, 2]",
    '"CALLBACK"',
    "",
    b"\xff\xfe\x00binary",
    '{"type": "CALLBACK", "headers": {"messageId": "x"}',
])
async def test_frame_that_is_not_a_json_object_is_ignored_and_the_connection_kept(
    stream_hub: Services, fake_dingtalk: FakeDingTalk, raw: str | bytes
) -> None:
    fake_dingtalk.frames.put_nowait(raw)
    await still_serving(stream_hub, fake_dingtalk, "a1")


@pytest.mark.parametrize("headers", [None, "x", [1], {"messageId": 5, "topic": TOPIC}, {"messageId": "x" * 300}])
async def test_frame_without_a_readable_message_id_is_dropped(
    stream_hub: Services, fake_dingtalk: FakeDingTalk, headers: Any
) -> None:
    frame, _ = callback(json.dumps(robot_message("a2", webhook=fake_dingtalk.webhook())))
    frame["headers"] = headers
    fake_dingtalk.frames.put_nowait(frame)
    await still_serving(stream_hub, fake_dingtalk, "a2")
    assert len(fake_dingtalk.webhook_calls) == 1  # only the good one was answered


async def test_readable_message_without_a_message_id_is_still_answered(
    stream_hub: Services, fake_dingtalk: FakeDingTalk
) -> None:
    frame, _ = callback(json.dumps(robot_message("a3", webhook=fake_dingtalk.webhook())), headers={"topic": TOPIC})
    fake_dingtalk.frames.put_nowait(frame)
    await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.webhook_calls) == 1)  # its ACK cannot name it; it is kept
    await still_serving(stream_hub, fake_dingtalk, "a3")


# ------------------------------------------------------------------ callbacks whose data is bad
@pytest.mark.parametrize("data", [
    "{not json",
    "[" * 5000 + "]" * 5000,
    '{"msgId": "m", "text": ' + "[" * 40 + "]" * 40 + "}",
    '["a list"]',
    '"a string"',
    {"msgId": "an object, not a JSON string"},
    12345,
    '{"msgId": NaN}',
])
async def test_callback_with_unreadable_data_is_acked_400(
    stream_hub: Services, fake_dingtalk: FakeDingTalk, data: Any
) -> None:
    frame, message_id = callback(data)
    assert await ack_code(fake_dingtalk, frame, message_id) == 400
    await still_serving(stream_hub, fake_dingtalk, "b1")


@pytest.mark.parametrize("fields", [
    {"msgId": None},
    {"msgId": True},
    {"conversationId": {"id": 1}},
    {"conversationType": "3"},
    {"msgId": "m" * 600},
])
async def test_callback_message_that_cannot_be_answered_is_acked_400(
    stream_hub: Services, fake_dingtalk: FakeDingTalk, fields: dict[str, Any]
) -> None:
    frame, message_id = callback(json.dumps({**robot_message("b2", webhook=fake_dingtalk.webhook()), **fields}))
    assert await ack_code(fake_dingtalk, frame, message_id) == 400
    await still_serving(stream_hub, fake_dingtalk, "b2")


@pytest.mark.parametrize("header", [{"time": "²"}, {"time": "9" * 5000}, {"eventBornTime": "x"}, {"extra": [1]}])
async def test_odd_headers_that_routing_does_not_need_do_not_lose_the_message(
    stream_hub: Services, fake_dingtalk: FakeDingTalk, header: dict[str, Any]
) -> None:
    frame, message_id = callback(json.dumps(robot_message("b3", webhook=fake_dingtalk.webhook())))
    frame["headers"].update(header)
    assert await ack_code(fake_dingtalk, frame, message_id) == 200
    await still_serving(stream_hub, fake_dingtalk, "b3")
    assert len(fake_dingtalk.webhook_calls) == 2


async def test_lone_surrogates_are_replaced_and_the_message_answered(
    stream_hub: Services, fake_dingtalk: FakeDingTalk
) -> None:
    message = robot_message("b4\ud800", "如何重置密码？\udc00", webhook=fake_dingtalk.webhook(), senderNick="\ud83d")
    frame, message_id = callback(json.dumps(message))  # "\ud800" escapes: what a JSON encoder may send
    assert await ack_code(fake_dingtalk, frame, message_id) == 200
    assert await stream_hub.hub.drain(30)
    state = await stream_hub.store.load("dingtalk:dingcorp1:cidSingle-manager4521")
    assert [t.text for t in state.history][:1] == ["如何重置密码？\ufffd"]
    await still_serving(stream_hub, fake_dingtalk, "b4")


async def test_numbers_where_strings_belong_are_taken_as_digits(
    stream_hub: Services, fake_dingtalk: FakeDingTalk
) -> None:
    message = {**robot_message("x", webhook=fake_dingtalk.webhook()), "msgId": 4242, "conversationType": 1,
               "sessionWebhookExpiredTime": "²"}
    frame, message_id = callback(json.dumps(message))
    assert await ack_code(fake_dingtalk, frame, message_id) == 200
    await still_serving(stream_hub, fake_dingtalk, "b5")


# ------------------------------------------------------------------ topics and types
async def test_unknown_callback_topic_is_acked_404(stream_hub: Services, fake_dingtalk: FakeDingTalk) -> None:
    frame, message_id = callback("{}")
    frame["headers"]["topic"] = "/v1.0/card/instances/callback"
    assert await ack_code(fake_dingtalk, frame, message_id) == 404
    await still_serving(stream_hub, fake_dingtalk, "c1")


@pytest.mark.parametrize("kind", ["MYSTERY", 7, None, ["CALLBACK"]])
async def test_unknown_frame_type_is_acked_404(stream_hub: Services, fake_dingtalk: FakeDingTalk, kind: Any) -> None:
    frame, message_id = callback("{}", kind=kind)
    assert await ack_code(fake_dingtalk, frame, message_id) == 404
    await still_serving(stream_hub, fake_dingtalk, "c2")


async def test_event_frame_is_acked_not_implemented(stream_hub: Services, fake_dingtalk: FakeDingTalk) -> None:
    frame, message_id = callback('{"a": 1}', kind="EVENT")
    frame["headers"].update({"eventType": "chat_update", "eventBornTime": "²"})
    assert await ack_code(fake_dingtalk, frame, message_id) == 404
    await still_serving(stream_hub, fake_dingtalk, "c3")


async def test_system_frame_with_bad_data_is_acked_400(stream_hub: Services, fake_dingtalk: FakeDingTalk) -> None:
    frame, message_id = callback("{bad", kind="SYSTEM")
    frame["headers"]["topic"] = "ping"
    assert await ack_code(fake_dingtalk, frame, message_id) == 400
    await still_serving(stream_hub, fake_dingtalk, "c4")


async def test_refused_frames_never_reach_the_log(
    stream_hub: Services, fake_dingtalk: FakeDingTalk, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "机密13800138000"
    caplog.set_level(logging.DEBUG)
    bad = [
        callback(json.dumps({**robot_message("d1"), "msgId": None, "text": {"content": marker}}))[0],
        callback(json.dumps({**robot_message("d2"), "conversationType": marker}))[0],
        callback("{" + marker)[0],
        callback(json.dumps({"text": marker}), kind=marker)[0],
        callback(json.dumps({"text": marker}), headers={"topic": marker, "messageId": "d5"})[0],
        {"type": "CALLBACK", "headers": {"messageId": marker * 30}, "data": marker},
    ]
    for frame in bad:
        fake_dingtalk.frames.put_nowait(frame)
    fake_dingtalk.frames.put_nowait(marker)
    await still_serving(stream_hub, fake_dingtalk, "d9")
    assert marker not in caplog.text
