"""The DingTalk group robot notifier against a loopback robot endpoint that checks
the 加签 signature by the documented formula."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.dingtalk.robot import GroupRobotError, GroupRobotNotifier
from bot.config import Config
from bot.state.keys import Keys
from bot.state.kv import RedisKV
from bot.state.shared import WindowGate
from tests.conftest import make_config, start_server

SECRET = "SEC0123456789abcdef"


class FakeRobot:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.errcode = 0
        app = web.Application()
        app.router.add_post("/robot/send", self.send)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def webhook(self) -> str:
        return str(self.server.make_url("/robot/send")) + "?access_token=tok123"

    async def send(self, request: web.Request) -> web.Response:
        ts, sign = request.query.get("timestamp", ""), request.query.get("sign", "")
        expected = base64.b64encode(
            hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest()
        ).decode()
        if request.query.get("access_token") != "tok123" or sign != expected:
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        self.received.append(await request.json())
        return web.json_response({"errcode": self.errcode, "errmsg": "ok"})


@pytest.fixture
async def robot() -> AsyncIterator[FakeRobot]:
    fake = FakeRobot()
    await fake.server.start_server()
    yield fake
    await fake.server.close()


async def test_notice_is_signed_markdown(robot: FakeRobot, redis_client: aioredis.Redis, key_prefix: str) -> None:
    kv, keys = RedisKV(redis_client), Keys(key_prefix)
    async with aiohttp.ClientSession() as http:
        notifier = GroupRobotNotifier(lambda: http, WindowGate(kv, keys.rate, 20), robot.webhook, SECRET)
        await notifier.notify("转人工", "客户 张三 需要人工客服：订单 YD2405120001 退款")
        assert robot.received == [{
            "msgtype": "markdown",
            "markdown": {"title": "转人工", "text": "#### 转人工\n\n客户 张三 需要人工客服：订单 YD2405120001 退款"},
        }]
        wrong = GroupRobotNotifier(lambda: http, WindowGate(kv, keys.rate, 20), robot.webhook, "SECwrong")
        with pytest.raises(GroupRobotError, match="310000"):
            await wrong.notify("转人工", "x")


async def test_a_handoff_reaches_the_dingtalk_group(robot: FakeRobot, redis_config: Config) -> None:
    config = make_config({
        "state.url": redis_config.state.url,
        "state.key_prefix": redis_config.state.key_prefix,
        "dingtalk.notify_webhook": robot.webhook,
        "dingtalk.notify_secret": SECRET,
    })
    server = await start_server(config)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/chat"), json={"query": "转人工", "user_id": "李四"}) as r:
                assert r.status == 200
        for _ in range(100):
            if robot.received:
                break
            await asyncio.sleep(0.05)
        assert len(robot.received) == 1
        assert "李四" in robot.received[0]["markdown"]["text"]
    finally:
        await server.close()
