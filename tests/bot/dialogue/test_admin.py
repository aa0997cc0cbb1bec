"""The admin and agent API: off without a token, bearer auth, state view,
erasure of everything stored about a user, and input errors."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

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
