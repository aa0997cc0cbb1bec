"""Fixtures: the loopback fake WeCom API and a real hub server wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from bot.services import Services
from tests.conftest import make_config, start_server

from .fake_wecom import FakeWecom, Sender, new_aes_key

CORP_ID = "ww0123456789abcdef"
TOKEN = "kefuToken"
SECRET = "app-secret"
AGENT_ID = 1000002


@pytest.fixture
async def fake_wecom() -> AsyncIterator[FakeWecom]:
    fake = FakeWecom()
    fake.server = TestServer(fake.app(), host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    if fake.send_gate is not None:
        fake.send_gate.set()
    await fake.server.close()


@dataclass
class Hub:
    """A running kefu-hub with the WeCom channel, and how WeCom reaches it."""

    server: TestServer
    services: Services
    config: Config
    sender: Sender
    aibot: Sender
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def post_app(self, xml: str, path: str = "/wecom/callback", sender: Sender | None = None,
                       **kw: Any) -> aiohttp.ClientResponse:
        params, body = (sender or self.sender).app_post(xml, **kw)
        async with self.http.post(self.url(path), params=params, data=body.encode()) as resp:
            await resp.read()
            return resp

    async def post_aibot(self, msg: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        params, body = self.aibot.aibot_post(msg)
        async with self.http.post(self.url("/wecom/aibot/callback"), params=params, data=body.encode()) as resp:
            raw = await resp.read()
            if resp.status != 200 or not raw:
                return resp.status, None
            return resp.status, self.aibot.open_reply(await resp.json())

    async def settle(self) -> None:
        """Wait until every accepted message is answered."""
        assert await self.services.hub.drain(30)


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def wecom_hub(fake_wecom: FakeWecom, redis_url: str, key_prefix: str, redis_client) -> AsyncIterator[HubFactory]:
    """Start the whole app with state in the real Redis; overrides are dotted config keys (None: the default)."""
    del redis_client  # requested so the test's keys are removed afterwards
    started: list[Hub] = []
    session = aiohttp.ClientSession()

    async def start(overrides: dict[str, Any] | None = None) -> Hub:
        aes, aibot_aes = new_aes_key(), new_aes_key()
        values = {
            "state.url": redis_url, "state.key_prefix": key_prefix,
            "wecom.corp_id": CORP_ID, "wecom.token": TOKEN, "wecom.aes_key": aes, "wecom.secret": SECRET,
            "wecom.agent_id": AGENT_ID, "wecom.api_base": fake_wecom.url, "wecom.replay_window_s": 0,
            "wecom.retry_backoff_s": 0.01, "wecom.aibot_token": "aibotToken", "wecom.aibot_aes_key": aibot_aes,
        }
        values.update(overrides or {})
        config = make_config({k: v for k, v in values.items() if v is not None})  # None: keep the default
        services = Services(config)
        server = await start_server(config, services)
        hub = Hub(server, services, config, Sender(TOKEN, config.wecom.aes_key, CORP_ID),
                  Sender("aibotToken", config.wecom.aibot_aes_key, ""), session)
        started.append(hub)
        return hub

    yield start
    for hub in started:
        await hub.server.close()
    await session.close()
