"""Hostile requests to ``POST /dingtalk/callback`` (HTTP mode).

The ``timestamp``/``sign`` headers are checked first (401 wrong or missing, 403
stale, 400 repeated or not UTF-8); only then is the body read, under the shared
JSON limits, with lone surrogates replaced because a signed message is
DingTalk's and must not be lost. Every answer is JSON; each attack is followed
by a genuine signed message that is still answered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from bot.services import Services
from tests.adapters.dingtalk.dingtalk_fake import FakeDingTalk, documented_sign, robot_message, signed_headers
from tests.adapters.rawhttp import error_of, raw_request
from tests.conftest import start_server

PATH = b"/dingtalk/callback"


class Hub:
    def __init__(self, server: TestServer, services: Services, fake: FakeDingTalk) -> None:
        self.server = server
        self.services = services
        self.fake = fake

    async def post(self, body: bytes | dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None,
                   ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        if headers is None:
            headers = [(k.encode(), v.encode()) for k, v in signed_headers().items()]
        return await raw_request(self.server, "POST", PATH, headers, data)

    async def replies(self) -> int:
        assert await self.services.hub.drain(30)
        return len(self.fake.webhook_calls) + len(self.fake.robot_sends)

    async def still_serving(self, msg_id: str) -> None:
        """A genuine signed message after the attack is accepted and answered."""
        before = await self.replies()
        status, _ = await self.post(robot_message(f"good-{msg_id}", "如何重置密码？", webhook=self.fake.webhook()))
        assert status == 200
        assert await self.replies() == before + 1


@pytest.fixture
async def hub(dingtalk_config: Callable[..., Config], fake_dingtalk: FakeDingTalk) -> AsyncIterator[Hub]:
    config = dingtalk_config()
    services = Services(config)
    server = await start_server(config, services)
    yield Hub(server, services, fake_dingtalk)
    await server.close()


def headers_with(**values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Content-Type", b"application/json")] + [(k.encode(), v) for k, v in values.items()]


def now_ms() -> str:
    return str(int(time.time() * 1000))


# ------------------------------------------------------------------ the signature headers
async def test_sign_header_not_utf8_is_400(hub: Hub) -> None:
    status, payload = await hub.post(robot_message("a1"), headers_with(timestamp=now_ms().encode(),
                                                                        sign=b"\xff\xfe" + b"A" * 42))
    assert (status, error_of(payload)["error"]) == (400, "invalid_sign")
    await hub.still_serving("a1")


async def test_timestamp_header_not_utf8_is_400(hub: Hub) -> None:
    ts = now_ms()
    status, payload = await hub.post(robot_message("a2"), headers_with(timestamp=ts.encode() + b"\xed\xa0\x80",
                                                                        sign=documented_sign(ts).encode()))
    assert (status, error_of(payload)["error"]) == (400, "invalid_timestamp")
    await hub.still_serving("a2")


async def test_sign_header_given_twice_is_400(hub: Hub) -> None:
    ts = now_ms()
    headers = [*headers_with(timestamp=ts.encode(), sign=documented_sign(ts).encode()), (b"sign", b"forged")]
    status, payload = await hub.post(robot_message("a3"), headers)
    assert (status, error_of(payload)["error"]) == (400, "duplicate_sign")
    await hub.still_serving("a3")


async def test_missing_or_wrong_sign_is_401(hub: Hub) -> None:
    ts = now_ms()
    for headers in (headers_with(timestamp=ts.encode()), headers_with(sign=documented_sign(ts).encode()),
                    headers_with(timestamp=ts.encode(), sign=documented_sign(ts, "other-secret").encode()),
                    headers_with(timestamp=ts.encode(), sign=b"x" * 5000)):
        status, payload = await hub.post(robot_message("a4"), headers)
        assert status in (400, 401) and error_of(payload)["error"] in ("invalid_signature", "invalid_sign")
    await hub.still_serving("a4")


@pytest.mark.parametrize("timestamp", ["²", "١٧٠٠٠٠٠٠٠٠٠٠٠", "-1700000000000", "9" * 17, "1e12", "0x1f", " "])
async def test_signed_timestamp_that_is_not_milliseconds_is_401(hub: Hub, timestamp: str) -> None:
    # signed correctly over the odd timestamp, so only the timestamp check can refuse it
    headers = headers_with(timestamp=timestamp.encode(), sign=documented_sign(timestamp).encode())
    status, payload = await hub.post(robot_message("a5"), headers)
    assert (status, error_of(payload)["error"]) == (401, "invalid_signature")
    await hub.still_serving("a5")


@pytest.mark.parametrize("timestamp", ["1", "9" * 16])
async def test_signed_timestamp_far_from_now_is_403(hub: Hub, timestamp: str) -> None:
    headers = headers_with(timestamp=timestamp.encode(), sign=documented_sign(timestamp).encode())
    status, payload = await hub.post(robot_message("a6"), headers)
    assert (status, error_of(payload)["error"]) == (403, "stale_timestamp")
    await hub.still_serving("a6")


# ------------------------------------------------------------------ the signed body
@pytest.mark.parametrize("body", [
    b"[" * 5000 + b"]" * 5000,
    b'{"msgId": "m", "text": ' + b"[" * 40 + b"]" * 40 + b"}",
    b"\xff\xfe{}",
    b'{"msgId": "m"',
    b"[]",
    b"",
    b'{"msgId": NaN}',
])
async def test_signed_body_that_is_not_a_json_object_is_400(hub: Hub, body: bytes) -> None:
    status, payload = await hub.post(body)
    assert (status, error_of(payload)["error"]) == (400, "invalid_json")
    await hub.still_serving("b1")


@pytest.mark.parametrize("fields", [
    {"msgId": True},
    {"msgId": 1.5},
    {"msgId": {"id": "m"}},
    {"msgId": 10**30},
    {"msgId": "m" * 600},
    {"conversationId": ["c"]},
    {"conversationType": "secret-value-3"},
    {"senderId": None, "senderStaffId": None},
])
async def test_signed_message_with_fields_of_the_wrong_kind_is_400(hub: Hub, fields: dict[str, Any]) -> None:
    status, payload = await hub.post({**robot_message("b2", webhook=hub.fake.webhook()), **fields})
    error = error_of(payload)
    assert status == 400 and error["error"] in ("invalid_message", "invalid_json")
    assert "secret-value" not in payload.decode()  # the field is named, its value never echoed
    await hub.still_serving("b2")


async def test_signed_lone_surrogates_are_replaced_and_the_message_answered(hub: Hub) -> None:
    body = json.dumps(robot_message("b3\ud800", "如何重置密码？\udc00", webhook=hub.fake.webhook(),
                                    senderNick="张\ud83d"))  # ensure_ascii: escapes, valid UTF-8
    status, _ = await hub.post(body.encode())
    assert status == 200
    assert await hub.replies() == 1
    state = await hub.services.store.load("dingtalk:dingcorp1:cidSingle-manager4521")
    assert [t.text for t in state.history][:1] == ["如何重置密码？\ufffd"]
    await hub.still_serving("b3")


async def test_signed_numbers_where_strings_belong_are_taken_as_digits(hub: Hub) -> None:
    message = {**robot_message("b4", webhook=hub.fake.webhook()), "msgId": 123456789, "conversationType": 1,
               "senderStaffId": 10086}
    status, _ = await hub.post(message)
    assert status == 200
    assert await hub.replies() == 1
    await hub.still_serving("b4")


@pytest.mark.parametrize("expiry", ["²", "9" * 5000, -5, 10**30, "soon", True, None])
async def test_signed_odd_webhook_expiry_is_still_answered(hub: Hub, expiry: Any) -> None:
    status, _ = await hub.post(robot_message("b5", webhook=hub.fake.webhook(), sessionWebhookExpiredTime=expiry))
    assert status == 200
    assert await hub.replies() == 1
    await hub.still_serving("b5")


@pytest.mark.parametrize("fields", [
    {"msgtype": "hologram"},
    {"msgtype": 7},
    {"text": "not an object"},
    {"text": {"content": 12}},
    {"msgtype": "richText", "content": {"richText": "x"}},
    {"msgtype": "richText", "content": {"richText": [1, "x", {"text": 5}]}},
    {"msgtype": "picture", "content": ["x"]},
    {"atUsers": "everyone"},
    {"atUsers": [1, {"dingtalkId": 5}]},
    {"senderNick": {"n": 1}, "conversationTitle": 5},
    {"sessionWebhook": 5},
])
async def test_signed_odd_content_is_answered_not_refused(hub: Hub, fields: dict[str, Any]) -> None:
    status, _ = await hub.post({**robot_message("b6", webhook=hub.fake.webhook()), **fields})
    assert status == 200
    assert await hub.replies() == 1  # at least the polite "please type words" reply
    await hub.still_serving("b6")


async def test_body_over_the_limit_is_413(hub: Hub) -> None:
    status, payload = await hub.post(robot_message("b7", "长" * 40_000, webhook=hub.fake.webhook()))
    assert (status, error_of(payload)["error"]) == (413, "body_too_large")
    await hub.still_serving("b7")


async def test_refusals_never_log_the_payload(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    marker = "机密13800138000"
    caplog.set_level(logging.DEBUG)
    await hub.post(robot_message("c1", conversationType=marker))
    await hub.post(robot_message(marker * 100))
    await hub.post(('{"msgId": "' + marker + '", "x": ' + "[" * 40 + "]" * 40 + "}").encode())
    ts = now_ms()
    await hub.post(robot_message("c2"), headers_with(timestamp=ts.encode(), sign=marker.encode()))
    assert await hub.replies() == 0
    assert marker not in caplog.text
    await hub.still_serving("c1")
