"""POST /chat is safe by default: a per-client rate limit (per API key, or per address without keys) and its
own share of the pending budget, so a flood of /chat answers 429 / 503 to that client while every other
client and the platform channels (WeCom, DingTalk) are still served.

Real server, real Redis; the only stand-in is a sender that holds /chat turns open until the test lets
them go, so requests stay in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from adapters.api import ApiInbound
from bot.app import SERVICES_KEY
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply
from tests.conftest import make_config, start_server

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {"state.url": redis_url, "state.key_prefix": key_prefix}


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def factory(overrides: dict[str, Any]) -> TestServer:
        server = await start_server(make_config(overrides))
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()



async def chat(http: aiohttp.ClientSession, server: TestServer, query: str = "如何重置密码",
               headers: dict[str, str] | None = None, **extra: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(server.make_url("/chat"), json={"query": query, **extra}, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def inbound_of(server: TestServer) -> ApiInbound:
    return next(r.handler.__self__ for r in server.app.router.routes()  # type: ignore[attr-defined]
                if r.resource is not None and r.resource.canonical == "/chat")


# ---------------------------------------------------------------- rate limit


async def test_chat_flood_from_one_key_is_429_with_retry_after_and_other_keys_are_served(
    serve: Any, http: aiohttp.ClientSession, store: dict[str, Any]
) -> None:
    server = await serve({**store, "api.keys": f"[{KEY_A}, {KEY_B}]", "api.rate_per_client_per_min": 3})
    for _ in range(3):
        status, body, _ = await chat(http, server, headers=bearer(KEY_A))
        assert status == 200, body
    status, body, headers = await chat(http, server, headers=bearer(KEY_A))
    assert (status, body["error"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) > 0
    assert KEY_A not in body["message"]
    status, body, _ = await chat(http, server, headers=bearer(KEY_B))  # another client is not held back
    assert status == 200 and "忘记密码" in body["answer"]


async def test_chat_flood_from_one_address_is_429_and_other_addresses_are_served(
    serve: Any, http: aiohttp.ClientSession, store: dict[str, Any]
) -> None:
    """Without keys the client is its address, by the widget's rule: the last X-Forwarded-For hop, and only
    behind a proxy of ours (``web.trust_forwarded_for``)."""
    server = await serve({**store, "api.rate_per_client_per_min": 2, "web.trust_forwarded_for": "true"})
    flood = {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}
    assert [(await chat(http, server, headers=flood))[0] for _ in range(3)] == [200, 200, 429]
    other = {"X-Forwarded-For": "203.0.113.9, 198.51.100.2"}  # same say-so, another address our proxy saw
    status, body, _ = await chat(http, server, headers=other)
    assert status == 200, body


async def test_forwarded_for_is_ignored_unless_trusted(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve({"api.rate_per_client_per_min": 2})
    statuses = [(await chat(http, server, headers={"X-Forwarded-For": f"198.51.100.{i}"}))[0] for i in range(3)]
    assert statuses == [200, 200, 429]  # a made-up header per request buys no new budget


async def test_a_bad_key_is_401_before_any_counting(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve({"api.keys": f"[{KEY_A}]", "api.rate_per_client_per_min": 1})
    for _ in range(3):
        status, body, headers = await chat(http, server, headers=bearer("wrong-key"))
        assert (status, body["error"]) == (401, "unauthorized") and headers.get("WWW-Authenticate") == "Bearer"
    assert (await chat(http, server, headers=bearer(KEY_A)))[0] == 200


async def test_the_rate_counter_never_names_the_api_key(
    serve: Any, http: aiohttp.ClientSession, redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    server = await serve({"state.url": redis_url, "state.key_prefix": key_prefix, "api.keys": f"[{KEY_A}]"})
    assert (await chat(http, server, headers=bearer(KEY_A)))[0] == 200
    rate_keys = [k async for k in redis_client.scan_iter(match=f"{key_prefix}:rate:api:*")]
    assert len(rate_keys) == 1 and KEY_A not in rate_keys[0]
    assert 0 < await redis_client.pttl(rate_keys[0]) <= 60_000  # a window, not a counter forever


# ---------------------------------------------------------------- the pending budget


class HeldSender:
    """The real /chat sender, holding each turn's replies until ``gate`` opens (the turn stays pending)."""

    def __init__(self, real: Any, gate: asyncio.Event) -> None:
        self.real = real
        self.gate = gate
        self.name = real.name

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        await self.gate.wait()
        await self.real.deliver(event, replies)


class Platform:
    """A platform channel's sender (WeCom here): what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        self.sent += [r.text for r in replies]


async def wait_in_flight(inbound: ApiInbound, count: int) -> None:
    for _ in range(1500):  # the bound only stops a broken test
        if inbound.in_flight >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{inbound.in_flight} /chat requests in flight, expected {count}")


def wecom_event(i: int) -> Event:
    ref = ConversationRef(channel="wecom", conversation_id=f"corp:zhangsan{i}", user_id=f"zhangsan{i}")
    return Event(id=f"wecom-msg-{i}", kind=EventKind.MESSAGE, ref=ref, text="如何重置密码")


async def test_chat_flooded_to_its_share_is_503_while_a_wecom_event_is_still_accepted(
    serve: Any, http: aiohttp.ClientSession, store: dict[str, Any]
) -> None:
    server = await serve({**store, "hub.max_pending": 8, "api.pending_share": 0.25})  # /chat may hold 2
    services: Services = server.app[SERVICES_KEY]
    gate = asyncio.Event()
    services.hub.register("api", HeldSender(services.hub.sink("api"), gate))
    wecom = Platform()
    services.hub.register("wecom", wecom)
    inbound = inbound_of(server)
    held = [asyncio.create_task(chat(http, server, user_id=f"flood-{i}")) for i in range(2)]
    try:
        await wait_in_flight(inbound, 2)
        status, body, headers = await chat(http, server, user_id="flood-2")
        assert (status, body["error"]) == (503, "overloaded") and int(headers["Retry-After"]) > 0
        # WeCom's events still have their room in the budget
        assert await services.hub.accept(wecom_event(0)) is True
        assert await services.hub.accept(wecom_event(1)) is True
        gate.set()
        for status, body, _ in await asyncio.gather(*held):
            assert status == 200 and "忘记密码" in body["answer"]  # nothing legitimate was lost
        assert await services.hub.drain(10)
        assert len(wecom.sent) == 2
        status, body, _ = await chat(http, server, user_id="flood-2")  # the refused request, sent again
        assert status == 200, body
    finally:
        gate.set()
        await asyncio.gather(*held, return_exceptions=True)


async def test_a_gateway_bounds_its_waiting_chat_requests_by_itself(
    serve: Any, http: aiohttp.ClientSession
) -> None:
    """With RabbitMQ between gateway and workers the gateway cannot see the queue's share; it bounds the
    /chat requests waiting in it (the same share of ``hub.max_pending``)."""
    server = await serve({"hub.max_pending": 100, "api.pending_share": 0.01})
    inbound = inbound_of(server)
    assert inbound.max_in_flight == 1
    services: Services = server.app[SERVICES_KEY]
    services.hub.inbox.channel_limits["api"] = 100  # type: ignore[attr-defined]  # as a RabbitMQ inbox: no share
    gate = asyncio.Event()
    services.hub.register("api", HeldSender(services.hub.sink("api"), gate))
    first = asyncio.create_task(chat(http, server, user_id="waiting"))
    try:
        await wait_in_flight(inbound, 1)
        status, body, headers = await chat(http, server, user_id="second")
        assert (status, body["error"]) == (503, "overloaded") and "Retry-After" in headers
        gate.set()
        assert (await first)[0] == 200
        assert inbound.in_flight == 0
        assert (await chat(http, server, user_id="second"))[0] == 200
    finally:
        gate.set()
        await asyncio.gather(first, return_exceptions=True)
