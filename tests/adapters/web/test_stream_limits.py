"""Open widget streams are bounded per session, per client address and per process, and however many are open
they never take the Redis connections that /chat, dedup and state writes need.

Every refusal is a JSON error with ``Retry-After`` (and the CORS headers, so a widget on another site can
read it); the process keeps serving, and the stream opens again once there is room.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.web.events import MemoryEventLog, RedisEventLog
from bot.state.keys import Keys

from .conftest import WebServerFactory, auth, new_session, read_sse

SHOP = "https://shop.example"


async def open_stream(http: aiohttp.ClientSession, server, token: str,
                      headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    resp = await http.get(server.make_url("/api/web/stream"), headers={**auth(token), **(headers or {})})
    if resp.status == 200:
        assert await resp.content.readline() == b"retry: 2000\n"
    return resp


async def refused(resp: aiohttp.ClientResponse) -> tuple[int, str, str | None]:
    body = await resp.json()
    resp.close()
    return resp.status, body["error"], resp.headers.get("Retry-After")


async def test_streams_from_one_address_past_the_cap_are_429_other_addresses_open(
    web_server: WebServerFactory, http: aiohttp.ClientSession
) -> None:
    server, _ = await web_server({"web.max_streams_per_ip": 2, "web.trust_forwarded_for": "true",
                                  "web.allowed_origins": f"[{SHOP}]"})
    one = {"X-Forwarded-For": "203.0.113.7", "Origin": SHOP}
    sessions = [await new_session(http, server) for _ in range(4)]
    held = [await open_stream(http, server, s["token"], one) for s in sessions[:2]]
    try:
        assert [r.status for r in held] == [200, 200]
        third = await open_stream(http, server, sessions[2]["token"], one)
        assert third.headers["Access-Control-Allow-Origin"] == SHOP  # the widget can read the refusal
        assert "Retry-After" in third.headers["Access-Control-Expose-Headers"]
        status, code, retry = await refused(third)
        assert (status, code) == (429, "too_many_streams") and retry is not None and int(retry) > 0
        other = await open_stream(http, server, sessions[3]["token"], {"X-Forwarded-For": "203.0.113.8"})
        assert other.status == 200
        other.close()
    finally:
        for resp in held:
            resp.close()
    await asyncio.sleep(0.05)  # the handlers see the disconnects and give their places back
    again = await open_stream(http, server, sessions[2]["token"], one)
    assert again.status == 200
    again.close()


async def test_streams_past_the_process_cap_are_503_and_the_widget_comes_back_later(
    web_server: WebServerFactory, http: aiohttp.ClientSession
) -> None:
    server, web = await web_server({"web.max_streams": 2})
    sessions = [await new_session(http, server) for _ in range(3)]
    held = [await open_stream(http, server, s["token"]) for s in sessions[:2]]
    try:
        status, code, retry = await refused(await open_stream(http, server, sessions[2]["token"]))
        assert (status, code) == (503, "streams_full") and retry is not None and int(retry) > 0
        # the process still serves everything else
        async with http.post(server.make_url("/api/web/messages"), headers=auth(sessions[0]["token"]),
                             json={"text": "如何重置密码", "client_id": "after-full-1"}) as r:
            assert r.status == 202
        kinds = [e["type"] for _, e in await read_sse(held[0], 1)]
        assert kinds == ["user"]
    finally:
        for resp in held:
            resp.close()
    await asyncio.sleep(0.05)
    assert web.inbound._open_streams.open == 0
    again = await open_stream(http, server, sessions[2]["token"])
    assert again.status == 200
    again.close()


@pytest.fixture
async def many() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


STREAMS = 200


async def test_200_open_streams_leave_chat_dedup_and_state_their_one_connection(
    web_server: WebServerFactory, many: aiohttp.ClientSession, redis_url: str, key_prefix: str
) -> None:
    """The shared pool has ONE connection: the blocking read has its own, so nothing waits behind it."""
    server, web = await web_server({"state.url": redis_url, "state.key_prefix": key_prefix,
                                    "state.max_connections": 1, "web.heartbeat_s": 30,
                                    "web.rate_per_ip_per_min": 100_000, "web.max_streams_per_ip": 1000})
    assert isinstance(web.events, RedisEventLog)
    assert web.services.redis is not None and web.services.redis_blocking is not None
    shared = web.services.redis.connection_pool
    assert shared.max_connections == 1
    sessions = [await new_session(many, server) for _ in range(STREAMS)]
    streams = []
    try:
        for s in sessions:
            resp = await open_stream(many, server, s["token"])
            assert resp.status == 200, await resp.text()
            streams.append(resp)
        reader = web.events.reader
        for _ in range(1500):  # until every handler waits on the shared read
            if reader.watched == STREAMS and all(w.waiters for w in reader._watches.values()):
                break
            await asyncio.sleep(0.02)
        assert reader.watched == STREAMS
        assert not shared._in_use_connections  # 200 waiting streams hold none of the shared pool

        # /chat: a whole turn through Redis (rate counter, dedup, state save, reply ledger)
        async with many.post(server.make_url("/chat"), json={"query": "如何重置密码？", "user_id": "streams-1"}) as r:
            assert r.status == 200, await r.text()
            assert "忘记密码" in (await r.json())["answer"]
        state = await web.services.store.load("api::streams-1")
        assert [t.role for t in state.history] == ["user", "assistant"]

        # dedup: a widget message sent twice is taken once and answered on its stream
        for duplicate in (False, True):
            async with many.post(server.make_url("/api/web/messages"), headers=auth(sessions[7]["token"]),
                                 json={"text": "如何重置密码？", "client_id": "streams-msg-1"}) as r:
                assert r.status == 202, await r.text()
                assert (await r.json())["duplicate"] is duplicate
        events = []
        while not events or events[-1][1]["type"] != "done":
            events += await read_sse(streams[7], 1)
        assert [e["type"] for _, e in events].count("reply") == 1
        assert not shared._in_use_connections
        # the widget's XREAD and the console feed's (bot/console/feed.py)
        assert len(web.services.redis_blocking.connection_pool._in_use_connections) <= 2
    finally:
        for resp in streams:
            resp.close()


# ---------------------------------------------------------------- idle sessions per process


async def test_memory_log_forgets_the_longest_idle_sessions_but_never_one_being_read() -> None:
    log = MemoryEventLog(per_session=10, idle_ttl_s=600, max_sessions=3)
    watched = asyncio.create_task(log.read("watched", "0-0", timeout_s=10))
    await asyncio.sleep(0.01)
    for i in range(10):  # a flood of new sessions
        await log.append(f"idle-{i}", {"n": i})
    assert len(log._logs) <= 3 + 1  # the bound, and the one being read
    event_id = await log.append("watched", {"still": "here"})
    assert await asyncio.wait_for(watched, 5) == [(event_id, {"still": "here"})]
    assert "idle-0" not in log._logs and "idle-9" in log._logs


async def test_the_stream_reader_watches_at_most_its_cap(redis_client: aioredis.Redis, key_prefix: str) -> None:
    log = RedisEventLog(redis_client, Keys(key_prefix), per_session=10, idle_ttl_s=600, max_sessions=3)
    try:
        for i in range(8):  # readers that come and go, each on its own session
            assert await log.read(f"visitor-{i}", "0-0", timeout_s=0.01) == []
            assert log.reader.watched <= 3
        event_id = await log.append("visitor-0", {"back": True})  # an unwatched session is watched again
        assert await log.read("visitor-0", "0-0", timeout_s=5) == [(event_id, {"back": True})]
    finally:
        await log.close()
