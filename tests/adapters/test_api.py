"""POST /chat and the health endpoints on a real server."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.api import OUTBOX_MAX, OUTBOX_TTL_S
from bot.app import SERVICES_KEY
from bot.config import Config
from bot.services import Services
from bot.state.keys import Keys
from bot.types import ConversationRef, Reply
from tests.conftest import make_config, start_server


async def post(server, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/chat"), data=body, headers=headers) as r:
        return r.status, await r.json()


async def test_chat_answers_the_design_example_from_the_faq(memory_config: Config) -> None:
    server = await start_server(memory_config)
    try:
        status, body = await post(server, '{"query": "如何重置密码?"}')
        assert status == 200
        assert "忘记密码" in body["answer"]
        assert body["source"] == "faq"
        assert body["user_id"]
    finally:
        await server.close()


async def test_same_user_id_continues_the_conversation(redis_config: Config) -> None:
    """Multi-turn across a restart: the state lives in Redis, not the process."""
    server = await start_server(redis_config)
    try:
        status, first = await post(server, '{"query": "发票怎么开", "user_id": "张三"}')
        assert status == 200
    finally:
        await server.close()
    server = await start_server(redis_config)
    try:
        status, second = await post(server, '{"query": "退款多久到账", "user_id": "张三"}')
        assert status == 200 and second["user_id"] == "张三"
        services = server.app[SERVICES_KEY]
        state = await services.store.load("api::张三")
        texts = [t.text for t in state.history]
        assert "发票怎么开" in texts and "退款多久到账" in texts
        assert first["answer"] in texts and second["answer"] in texts
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_json"),
        ("{}", 400, "invalid_query"),
        ('{"query": 42}', 400, "invalid_query"),
        ('{"query": "  "}', 400, "invalid_query"),
        ('{"query": "hi", "context": 1}', 400, "invalid_context"),
        ('{"query": "hi", "user_id": ["x"]}', 400, "invalid_user_id"),
        (b"\xff\xfe", 400, "invalid_json"),
        ('{"query": "' + "长" * 30000 + '"}', 413, "body_too_large"),
    ],
)
async def test_bad_requests_get_json_errors(memory_config: Config, body: str, status: int, code: str) -> None:
    server = await start_server(memory_config)
    try:
        got, payload = await post(server, body)
        assert (got, payload["error"]) == (status, code)
        # the server is still fine afterwards
        ok, answer = await post(server, '{"query": "如何重置密码"}')
        assert ok == 200 and answer["answer"]
    finally:
        await server.close()


async def test_unknown_route_and_wrong_method_are_json_and_counted(memory_config: Config) -> None:
    server = await start_server(memory_config)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/nope")) as r:
                assert r.status == 404 and (await r.json())["error"] == "not_found"
            async with s.get(server.make_url("/chat")) as r:
                assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
            async with s.post(server.make_url("/chat"), data="{") as r:
                assert r.status == 400
            async with s.get(server.make_url("/metrics")) as r:
                text = await r.text()
        assert 'kefu_http_errors_total{reason="not_found",route="unmatched",status="404"} 1.0' in text
        assert 'kefu_http_errors_total{reason="invalid_json",route="/chat",status="400"} 1.0' in text
    finally:
        await server.close()


async def test_api_keys_require_bearer_auth() -> None:
    server = await start_server(make_config({"api.keys": "[secret-1, secret-2]"}))
    try:
        status, body = await post(server, '{"query": "如何重置密码"}')
        assert status == 401 and body["error"] == "unauthorized"
        status, _ = await post(server, '{"query": "如何重置密码"}', {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _ = await post(server, '{"query": "如何重置密码"}', {"Authorization": "Bearer sécret"})
        assert status == 401  # a non-ASCII key is refused, not a 500
        status, body = await post(server, '{"query": "如何重置密码"}', {"Authorization": "Bearer secret-2"})
        assert status == 200 and body["answer"]
    finally:
        await server.close()


async def test_health_and_readiness(memory_config: Config) -> None:
    server = await start_server(memory_config)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/healthz")) as r:
                assert r.status == 200
            async with s.get(server.make_url("/readyz")) as r:
                assert r.status == 200 and (await r.json())["engine"] == "faq"
    finally:
        await server.close()


async def test_readiness_fails_when_redis_is_unreachable() -> None:
    config = make_config({"state.url": "redis://127.0.0.1:1/0"})
    server = await start_server(config, Services(config))
    try:
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/readyz")) as r:
            assert r.status == 503
            assert (await r.json())["state"] == "unreachable"
        # nothing can be accepted safely: 503 so the client retries, never a 500
        status, body = await post(server, '{"query": "如何重置密码"}')
        assert status == 503 and body["error"] == "unavailable"
    finally:
        await server.close()


ADMIN = {"Authorization": "Bearer api-test-admin-token"}


async def agent_reply(server, user_id: str, text: str) -> int:
    body = {"channel": "api", "user_id": user_id, "text": text}
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/api/agent/reply"), json=body,
                                                    headers=ADMIN) as r:
        return r.status


async def test_an_agent_reply_reaches_the_next_request_on_any_gateway(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    """The agent answers through one gateway's admin API; the customer's next /chat lands on another."""
    config = make_config({"state.url": redis_url, "state.key_prefix": key_prefix,
                          "admin.token": ADMIN["Authorization"].split()[1]})
    one, two = await start_server(config), await start_server(config)
    try:
        assert (await post(one, '{"query": "我的快递三天没动了", "user_id": "李四"}'))[0] == 200
        assert await agent_reply(one, "李四", "您好，我是人工客服小王，正在为您查询。") == 200
        key = Keys(key_prefix).api_outbox("api::李四")
        assert await redis_client.llen(key) == 1
        assert 0 < await redis_client.pttl(key) <= OUTBOX_TTL_S * 1000
        assert key in Keys(key_prefix).conversation_keys("api::李四")  # erased with the conversation

        status, body = await post(two, '{"query": "好的，谢谢", "user_id": "李四"}')
        assert status == 200
        assert body["messages"] == [{"text": "您好，我是人工客服小王，正在为您查询。", "source": "agent",
                                     "quick_replies": [], "markdown": False}]
        status, body = await post(one, '{"query": "还在吗", "user_id": "李四"}')
        assert status == 200 and body["messages"] == []  # delivered once, by whichever gateway came first
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("state", ["memory", "redis"])
async def test_the_outbox_is_bounded_and_erased_with_the_conversation(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis, state: str
) -> None:
    overrides = {"admin.token": ADMIN["Authorization"].split()[1]}
    if state == "redis":
        overrides |= {"state.url": redis_url, "state.key_prefix": key_prefix}
    server = await start_server(make_config(overrides))
    try:
        sender = server.app[SERVICES_KEY].hub.sink("api")
        ref = ConversationRef("api", "王五", "王五")
        await sender.deliver(None, [Reply(ref, f"第{i}条", source="agent") for i in range(OUTBOX_MAX + 10)])
        status, body = await post(server, '{"query": "你好", "user_id": "王五"}')
        assert status == 200
        assert [m["text"] for m in body["messages"]] == [f"第{i}条" for i in range(10, OUTBOX_MAX + 10)]

        await sender.deliver(None, [Reply(ref, "稍后回复您", source="agent")])
        async with aiohttp.ClientSession() as s, s.delete(
            server.make_url("/api/admin/conversations/api/王五"), headers=ADMIN
        ) as r:
            erased = await r.json()
        if state == "redis":
            assert erased["deleted_keys"] == 1  # the outbox list
        else:
            assert erased["deleted_records"] == 1  # the one waiting reply, in this process's memory
        status, body = await post(server, '{"query": "你好", "user_id": "王五"}')
        assert status == 200 and body["messages"] == []
    finally:
        await server.close()
