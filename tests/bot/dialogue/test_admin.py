"""The admin and agent API: off without a token, bearer auth, state view,
erasure of everything stored about a user, and input errors."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from adapters.web import WebSender
from adapters.web.feedback import MemoryFeedbackStore
from bot.app import SERVICES_KEY
from bot.config import Config
from bot.state.keys import Keys
from tests.conftest import make_config, start_server

from .helpers import ADMIN_TOKEN, Admin, chat


async def test_admin_api_is_off_without_a_token(http: aiohttp.ClientSession) -> None:
    server = await start_server(make_config())
    try:
        await chat(http, server, "quinn").say("你好")
        for method, path in (("GET", "/api/admin/conversations/api/quinn"), ("POST", "/api/agent/reply")):
            async with http.request(method, server.make_url(path), headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 404
    finally:
        await server.close()


async def test_a_wrong_or_missing_token_is_refused(http: aiohttp.ClientSession, server: TestServer) -> None:
    await chat(http, server, "rae").say("你好")
    status, body = await Admin(http, server, "wrong").state("rae")
    assert status == 401 and body["error"] == "unauthorized"
    async with http.get(server.make_url("/api/admin/conversations/api/rae")) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"


async def test_get_returns_the_state_and_404_for_strangers(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin
) -> None:
    await chat(http, server, "sam").say("我要退款")
    status, state = await admin.state("sam")
    assert status == 200
    assert state["key"] == "api::sam" and state["node"] == "refund_order" and state["handed_off"] is False
    assert state["data"]["lang"] == "zh" and state["data"]["ref"]["user_id"] == "sam"
    assert state["history"][0]["text"] == "我要退款"
    status, body = await admin.state("nobody")
    assert status == 404 and body["error"] == "not_found"


async def test_delete_erases_everything_stored_about_the_user(
    http: aiohttp.ClientSession, redis_config: Config, redis_client: aioredis.Redis
) -> None:
    config = make_config({"state.url": redis_config.state.url, "state.key_prefix": redis_config.state.key_prefix,
                          "admin.token": ADMIN_TOKEN})
    keys = Keys(config.state.key_prefix)
    server = await start_server(config)
    try:
        admin = Admin(http, server)
        await chat(http, server, "tess").say("我要退款")
        await chat(http, server, "uma").say("我要退款")
        # What other modules keep about tess: per-conversation keys, and keys listed in her erasure index.
        await redis_client.rpush(keys.feedback("api::tess"), "thumbs-down")
        cached = f"{config.state.key_prefix}:cache:tess-answer"
        await redis_client.set(cached, "x")
        await redis_client.sadd(keys.user_index("api", "tess"), cached)

        status, body = await admin.request("DELETE", "/api/admin/conversations/api/tess")
        assert status == 200 and body["erased"] == "api::tess" and body["deleted_keys"] == 3

        assert (await admin.state("tess"))[0] == 404
        left = [k async for k in redis_client.scan_iter(match=f"{config.state.key_prefix}:*")]
        assert not [k for k in left if "tess" in k]
        assert (await admin.state("uma"))[0] == 200  # nobody else's data
        again = await chat(http, server, "tess").say("我要退款")  # she can start afresh
        assert "订单号" in again["answer"]
    finally:
        await server.close()


class Visitor:
    """A web-widget visitor: a session, a question answered, a thumbs-down on the answer."""

    def __init__(self, http: aiohttp.ClientSession, server: TestServer) -> None:
        self.http = http
        self.server = server
        self.sid = self.token = self.client_id = ""

    @property
    def key(self) -> str:
        return f"web::{self.sid}"

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.server.make_url(path), json=body, headers=headers) as r:
            return r.status, await r.json()

    async def ask_and_rate(self, client_id: str) -> None:
        status, session = await self.call("POST", "/api/web/session", {})
        assert status == 200
        self.sid, self.token, self.client_id = session["session_id"], session["token"], client_id
        hub = self.server.app[SERVICES_KEY].hub
        status, _ = await self.call("POST", "/api/web/messages", {"text": "如何重置密码？", "client_id": client_id})
        assert status == 202
        await hub.drain(10)
        status, body = await self.call("POST", "/api/web/feedback", {"answer_id": client_id, "rating": "down"})
        assert status == 200, body
        await hub.drain(10)  # the feedback event's turn too, so nothing writes after the erasure


@pytest.mark.parametrize("mode", ["memory", "redis"])
async def test_delete_erases_a_web_visitor_entirely(
    http: aiohttp.ClientSession, redis_url: str, key_prefix: str, redis_client: aioredis.Redis, mode: str
) -> None:
    """State, the widget's event log (questions and answers), feedback votes and records, and the
    markers named after the session: nothing of the erased visitor remains, the other visitor keeps all."""
    overrides = {"admin.token": ADMIN_TOKEN, "web.session_secret": "test-secret-0123456789abcdef"}
    if mode == "redis":
        overrides |= {"state.url": redis_url, "state.key_prefix": key_prefix}
    server = await start_server(make_config(overrides))
    try:
        services = server.app[SERVICES_KEY]
        adapter = services.hub.sink("web")
        assert isinstance(adapter, WebSender)
        admin = Admin(http, server)
        gone, kept = Visitor(http, server), Visitor(http, server)
        await gone.ask_and_rate("gone-0001")
        await kept.ask_and_rate("kept-0001")
        for v in (gone, kept):
            assert (await admin.state(v.sid, "web"))[0] == 200
            assert len(await adapter.events.entries(v.sid)) > 3
            assert await adapter.feedback.ratings(v.key) == {v.client_id: "down"}
        if mode == "redis":
            named = [k async for k in redis_client.scan_iter(match=f"{key_prefix}:*{gone.sid}*")]
            assert any(":seen:" in k for k in named) and any(":rate:" in k for k in named)

        status, body = await admin.request("DELETE", f"/api/admin/conversations/web/{gone.sid}")
        assert status == 200 and body["erased"] == gone.key
        if mode == "redis":  # event log, votes, index, 2 dedup markers, rate counter; the feedback stream entry
            assert body["deleted_keys"] >= 6 and body["deleted_records"] == 1
        else:  # the event log, the feedback record and the votes, all in memory
            assert body["deleted_keys"] == 0 and body["deleted_records"] == 3

        assert (await admin.state(gone.sid, "web"))[0] == 404
        assert await adapter.events.entries(gone.sid) == []
        assert await adapter.feedback.ratings(gone.key) == {}
        if mode == "redis":
            assert not [k async for k in redis_client.scan_iter(match=f"{key_prefix}:*{gone.sid}*")]
            records = [f for _, f in await redis_client.xrange(services.keys.feedback_stream())]
        else:
            assert isinstance(adapter.feedback, MemoryFeedbackStore)
            records = [{"conversation": r.conversation, "question": r.question} for r in adapter.feedback.records]
        assert [r["conversation"] for r in records] == [kept.key]
        status, hist = await gone.call("GET", "/api/web/history")
        assert status == 200 and hist["messages"] == [] and hist["cursor"] == "0-0"

        # the other visitor keeps everything
        assert (await admin.state(kept.sid, "web"))[0] == 200
        assert len(await adapter.events.entries(kept.sid)) > 3
        assert await adapter.feedback.ratings(kept.key) == {"kept-0001": "down"}
        status, hist = await kept.call("GET", "/api/web/history")
        assert status == 200 and [m["role"] for m in hist["messages"]] == ["user", "assistant"]
        assert hist["messages"][1]["feedback"] == "down"
    finally:
        await server.close()


async def test_agent_api_rejects_bad_input(http: aiohttp.ClientSession, server: TestServer, admin: Admin) -> None:
    status, body = await admin.request("POST", "/api/agent/reply", {"channel": "api", "user_id": "vic"})
    assert status == 400 and body["error"] == "invalid_text"
    status, body = await admin.request("POST", "/api/agent/reply", {"channel": "fax", "user_id": "vic", "text": "hi"})
    assert status == 404 and body["error"] == "unknown_channel"
    status, body = await admin.request("POST", "/api/agent/reply", {"user_id": "vic", "text": "hi"})
    assert status == 400 and body["error"] == "invalid_channel"
    status, body = await admin.request("POST", "/api/agent/release", {"channel": "api", "user_id": "nobody"})
    assert status == 404
    async with http.post(server.make_url("/api/agent/reply"), data=b"{not json",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_json"


async def test_release_of_a_conversation_the_bot_has_changes_nothing(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin
) -> None:
    await chat(http, server, "wes").say("你好")
    status, body = await admin.request("POST", "/api/agent/release", {"channel": "api", "user_id": "wes"})
    assert status == 200 and body["released"] is False
    assert (await chat(http, server, "wes").say("你好"))["messages"] == []


async def test_an_agent_can_step_in_before_any_handoff(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin
) -> None:
    xena = chat(http, server, "xena")
    await xena.say("我的快递三天没动了")
    body = {"channel": "api", "user_id": "xena", "text": "我来帮您查一下", "agent": "小李"}
    assert (await admin.request("POST", "/api/agent/reply", body))[0] == 200
    out = await xena.say("好的")
    assert out["replies"] == [] and out["messages"][0]["text"] == "我来帮您查一下"
    _, state = await admin.state("xena")
    assert state["handed_off"] is True and state["history"][2]["meta"] == {"agent": "小李"}
