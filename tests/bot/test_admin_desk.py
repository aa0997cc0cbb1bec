"""The admin API's agent calls go through the console's desk: the inbox sees a reply and a release made there,
and erasure takes the inbox row too."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis

from bot.app import SERVICES_KEY
from bot.config import Config
from tests.bot.dialogue.helpers import ADMIN_TOKEN, Admin, chat
from tests.conftest import make_config, start_server

ALWAYS_OPEN = {f"handoff.hours.{day}": "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


async def test_admin_reply_and_release_update_the_console(
    http: aiohttp.ClientSession, redis_config: Config, redis_client: aioredis.Redis
) -> None:
    config = make_config({"state.url": redis_config.state.url, "state.key_prefix": redis_config.state.key_prefix,
                          "admin.token": ADMIN_TOKEN, **ALWAYS_OPEN})
    server = await start_server(config)
    try:
        desk = server.app[SERVICES_KEY].desk
        admin = Admin(http, server)
        nina, omar = chat(http, server, "nina"), chat(http, server, "omar")
        await nina.say("转人工")
        [row] = await desk.waiting()
        assert (row.key, row.reason, row.unread) == ("api::nina", "requested", 1)

        body = {"channel": "api", "user_id": "nina", "text": "您好，我来帮您", "agent": "小李"}
        status, out = await admin.request("POST", "/api/agent/reply", body)
        assert status == 200 and out == {"delivered": True, "handed_off": True, "key": "api::nina"}
        [row] = await desk.waiting()
        assert row.unread == 0 and row.taken_by is None  # the admin token does not take it for anyone
        _, state = await admin.state("nina")
        assert state["history"][-1]["meta"] == {"agent": "小李"}

        # an agent stepping in before any handoff puts the conversation on the board
        await omar.say("你好")
        status, _ = await admin.request("POST", "/api/agent/reply", {"channel": "api", "user_id": "omar",
                                                                     "text": "我来帮您查一下"})
        assert status == 200
        assert {r.key: r.reason for r in await desk.waiting()} == {"api::nina": "requested", "api::omar": "agent"}

        await desk.take("api::nina", "alice")
        status, out = await admin.request("POST", "/api/agent/release", {"channel": "api", "user_id": "nina"})
        assert status == 200 and out["released"] is True  # the admin token releases what an agent holds
        assert [r.key for r in await desk.waiting()] == ["api::omar"]
        status, out = await admin.request("POST", "/api/agent/release", {"channel": "api", "user_id": "nina"})
        assert status == 200 and out["released"] is False

        status, _ = await admin.request("DELETE", "/api/admin/conversations/api/omar")
        assert status == 200
        assert await desk.waiting() == []
    finally:
        await server.close()
