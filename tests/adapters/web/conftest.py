"""Helpers for the web widget tests: a running hub, the web channel's two halves, an SSE reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from adapters.web import WebInbound, WebSender
from adapters.web.events import EventLog
from bot.app import SERVICES_KEY
from bot.config import ROOT, Config
from bot.services import Services
from tests.conftest import make_config, start_server

SECRET = "test-secret-0123456789abcdef"

# The real FAQ (the dialogue graph refers to its entries) plus entries only these tests ask for.
TEST_ENTRIES = [
    {
        "id": "test-widget-format",
        "category": "general",
        "question": "挂件格式演示",
        "paraphrases": ["挂件格式测试"],
        "answer": "请在登录页点击“忘记密码”，用绑定的**手机号或邮箱**收验证码。\n"
                  "- 手机号已停用：请联系人工客服\n- 详见 [帮助中心](https://help.yunduo.example/password)",
    },
    {
        "id": "test-markup",
        "category": "general",
        "question": "网页测试暗号是什么？",
        "paraphrases": ["网页测试暗号"],
        "answer": "暗号答案：<img src=x onerror=alert(1)> <script>window.__pwned=1</script> 结束",
    },
]


@pytest.fixture
def faq_path(tmp_path: Path) -> str:
    data = yaml.safe_load((ROOT / "config" / "faq.yaml").read_text(encoding="utf-8"))
    data["entries"] = [*data["entries"], *TEST_ENTRIES]
    path = tmp_path / "faq.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


@pytest.fixture(params=["memory", "redis"])
def store_overrides(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> dict[str, Any]:
    """Every API test runs against the in-process store and a real Redis."""
    if request.param == "memory":
        return {}
    return {"state.url": redis_url, "state.key_prefix": key_prefix}


@dataclass(frozen=True)
class Web:
    """A running server's web channel: the sender the hub delivers through and the inbound half serving routes."""

    services: Services
    sender: WebSender
    inbound: WebInbound

    @property
    def events(self) -> EventLog:
        assert self.inbound.events is self.sender.events  # one log, shared by both halves
        return self.sender.events


def web_parts(server: TestServer) -> Web:
    services = server.app[SERVICES_KEY]
    sender = services.hub.sink("web")
    assert isinstance(sender, WebSender)
    inbound = next(r.handler.__self__ for r in server.app.router.routes()  # type: ignore[attr-defined]
                   if r.resource is not None and r.resource.canonical == "/widget.js")
    assert isinstance(inbound, WebInbound)
    return Web(services, sender, inbound)


WebServerFactory = Callable[..., Awaitable[tuple[TestServer, Web]]]


@pytest.fixture
async def web_server(faq_path: str) -> AsyncIterator[WebServerFactory]:
    servers: list[TestServer] = []

    async def factory(overrides: dict[str, Any] | None = None) -> tuple[TestServer, Web]:
        cfg: Config = make_config({"faq.path": faq_path, "web.session_secret": SECRET, **(overrides or {})})
        server = await start_server(cfg)
        servers.append(server)
        return server, web_parts(server)

    yield factory
    for server in servers:
        await server.close()



async def new_session(http: aiohttp.ClientSession, server: TestServer) -> dict[str, Any]:
    async with http.post(server.make_url("/api/web/session"), json={}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def read_sse(resp: aiohttp.ClientResponse, count: int, *, within_s: float = 15) -> list[tuple[str, dict]]:
    """The next ``count`` SSE events as (id, data); the bound only stops a broken test from hanging."""
    events: list[tuple[str, dict]] = []
    event_id: str | None = None
    data: list[str] = []
    async with asyncio.timeout(within_s):
        while len(events) < count:
            raw = await resp.content.readline()
            if not raw:
                break
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    assert event_id is not None, "every event carries an id"
                    events.append((event_id, json.loads("\n".join(data))))
                event_id, data = None, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
    return events
