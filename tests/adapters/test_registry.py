"""Which halves of each channel a process builds: senders everywhere, inbound halves only where events
are taken (gateways). A worker serves no channel routes and opens no Stream-mode connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from adapters.api import ApiInbound, ApiSender
from adapters.dingtalk.inbound import DingtalkInbound
from adapters.dingtalk.sender import DingtalkSender
from adapters.registry import build_channels
from adapters.wecom import WecomInbound, WecomSender
from bot.config import Config
from bot.services import Role, Services
from tests.adapters.dingtalk.dingtalk_fake import APP_KEY, APP_SECRET, FakeDingTalk
from tests.adapters.wecom.fake_wecom import new_aes_key
from tests.conftest import make_config, start_server

MINE = {"api": (ApiInbound, ApiSender), "wecom": (WecomInbound, WecomSender),
        "dingtalk": (DingtalkInbound, DingtalkSender)}


@pytest.fixture
def every_channel(fake_dingtalk: FakeDingTalk) -> Callable[..., Config]:
    def build(overrides: dict[str, Any] | None = None) -> Config:
        return make_config({
            "dingtalk.app_key": APP_KEY, "dingtalk.app_secret": APP_SECRET, "dingtalk.api_base": fake_dingtalk.url,
            "dingtalk.mode": "stream", "dingtalk.stream_backoff_s": 0.01,
            "wecom.corp_id": "ww0123456789abcdef", "wecom.token": "t", "wecom.aes_key": new_aes_key(),
            "wecom.secret": "s", "wecom.agent_id": 1000002, "wecom.aibot_token": "a",
            "wecom.aibot_aes_key": new_aes_key(), "wecom.robot_key": "k",
            **(overrides or {}),
        })

    return build


@pytest.mark.parametrize(("role", "inbound"), [("worker", False), ("gateway", True), ("all", True)])
async def test_each_role_builds_its_halves(every_channel: Callable[..., Config], role: Role, inbound: bool) -> None:
    services = Services(every_channel(), role=role)
    try:
        channels = {c.name: c for c in build_channels(services) if c.name in MINE}
        assert set(channels) == set(MINE)
        for name, (inbound_type, sender_type) in MINE.items():
            assert isinstance(channels[name].sender, sender_type)
            if inbound:
                assert isinstance(channels[name].inbound, inbound_type)
            else:
                assert channels[name].inbound is None
        assert len(services.notifiers) == 1  # the WeCom group robot hears of handoffs from whoever runs the turn
    finally:
        await services.close()


async def test_a_worker_serves_no_channel_routes_and_opens_no_stream(
    every_channel: Callable[..., Config], fake_dingtalk: FakeDingTalk
) -> None:
    config = every_channel({"dingtalk.mode": "stream"})
    server = await start_server(config, Services(config, role="worker"))
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/chat", "/wecom/callback", "/wecom/aibot/callback", "/dingtalk/callback"):
                async with s.post(server.make_url(path), data="{}") as r:
                    assert r.status == 404, path
            async with s.get(server.make_url("/healthz")) as r:
                assert r.status == 200
        assert fake_dingtalk.opens == []  # the Stream connection belongs to gateways
    finally:
        await server.close()


async def test_a_gateway_opens_the_stream(every_channel: Callable[..., Config], fake_dingtalk: FakeDingTalk) -> None:
    """The counterpart of the test above, so that one cannot pass for a stream that never opens anyway."""
    config = every_channel()
    server = await start_server(config, Services(config, role="gateway"))
    try:
        await fake_dingtalk.wait_for(lambda: len(fake_dingtalk.opens) >= 1)
    finally:
        await server.close()
