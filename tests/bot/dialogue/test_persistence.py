"""Per-user dialogue state in Redis: it survives a server restart, expires
when idle, and concurrent messages from one user lose no update."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import redis.asyncio as aioredis

from bot.app import SERVICES_KEY
from bot.config import Config
from bot.state.keys import Keys
from bot.types import ConversationRef, Event, EventKind
from tests.conftest import make_config, start_server

from .helpers import chat

ORDER = "YD2405120001"


def _config(redis_config: Config, **more: object) -> Config:
    return make_config({"state.url": redis_config.state.url, "state.key_prefix": redis_config.state.key_prefix,
                        **more})


async def test_state_survives_a_server_restart(
    http: aiohttp.ClientSession, redis_config: Config, redis_client: aioredis.Redis
) -> None:
    first = await start_server(redis_config)
    try:
        asked = await chat(http, first, "mia").say("我要退款")
        assert "订单号" in asked["answer"]
    finally:
        await first.close()

    second = await start_server(redis_config)  # a new process: nothing in memory
    try:
        done = await chat(http, second, "mia").say(ORDER)
        assert ORDER in done["answer"] and "退货退款" in done["answer"]
    finally:
        await second.close()
    key = Keys(redis_config.state.key_prefix).state("api::mia")
    assert 0 < await redis_client.pttl(key) <= redis_config.state.idle_ttl_s * 1000


async def test_an_idle_conversation_restarts_at_the_entry_node(
    http: aiohttp.ClientSession, redis_config: Config, redis_client: aioredis.Redis
) -> None:
    server = await start_server(redis_config)
    try:
        nina = chat(http, server, "nina")
        await nina.say("我要退款")
        key = Keys(redis_config.state.key_prefix).state("api::nina")
        stored = json.loads(await redis_client.hget(key, "d"))
        stored["updated_at"] -= redis_config.state.idle_ttl_s + 1  # as if it had sat idle past the TTL
        await redis_client.hset(key, "d", json.dumps(stored, ensure_ascii=False))

        out = await nina.say(ORDER)  # no longer an answer to the order-number question
        assert "退货退款" not in out["answer"]
        stored = json.loads(await redis_client.hget(key, "d"))
        assert stored["node"] == "answer" and stored["slots"] == {}  # routed from the entry node afresh
        assert [h[0] for h in stored["history"]] == ["user", "assistant"]
    finally:
        await server.close()


async def test_concurrent_messages_from_one_user_on_two_servers_lose_no_update(
    http: aiohttp.ClientSession, redis_config: Config
) -> None:
    """Two gateway processes answer one customer at once: compare-and-set makes
    the loser of each race run its turn again, so every message is kept."""
    config = _config(redis_config, **{"state.history_turns": 100})
    servers = [await start_server(config) for _ in range(2)]
    questions = ["如何重置密码?", "怎么开发票", "退款多久到账", "运费怎么算", "如何注册账号？", "积分怎么用"] * 2
    try:
        outs = await asyncio.gather(*(chat(http, servers[i % 2], "olga").say(q) for i, q in enumerate(questions)))
        state = await servers[0].app[SERVICES_KEY].store.load("api::olga")
    finally:
        for s in servers:
            await s.close()
    assert state.version == len(questions)
    users = [t.text for t in state.history if t.role == "user"]
    assert sorted(users) == sorted(questions)
    answer_of = {q: o["answer"] for q, o in zip(questions, outs, strict=True)}
    pairs = list(zip(state.history[::2], state.history[1::2], strict=True))
    assert all(u.role == "user" and a.role == "assistant" and a.text == answer_of[u.text] for u, a in pairs)


async def test_messages_accepted_together_are_answered_in_order(
    http: aiohttp.ClientSession, redis_config: Config
) -> None:
    server = await start_server(redis_config)
    try:
        services = server.app[SERVICES_KEY]
        ref = ConversationRef(channel="api", conversation_id="pat", user_id="pat")
        # Accepted back to back, before the first is answered: the second must see the first's state.
        for i, text in enumerate(["我要退款", ORDER]):
            assert await services.hub.accept(Event(id=f"pat-{i}", kind=EventKind.MESSAGE, ref=ref, text=text))
        assert await services.hub.drain(10)
        state = await services.store.load(ref.key)
    finally:
        await server.close()
    first, second = [t.text for t in state.history if t.role == "assistant"]
    assert "请发送订单号" in first
    assert ORDER in second
