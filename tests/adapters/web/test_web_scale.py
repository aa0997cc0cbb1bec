"""Open widget streams do not take the Redis connections every other channel needs.

A real server with state in Redis and the client's pool capped at 20 connections: 64 open SSE streams
hold none of them while they wait (one blocking read serves them all), ``/chat`` still answers, and
every stream still gets its events, FAQ turns and proactive replies alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

from adapters.web.events import RedisEventLog
from bot.types import ConversationRef, Reply

from .conftest import WebServerFactory, auth, new_session, read_sse

STREAMS = 64
POOL_CAP = 20


def capped(url: str, max_connections: int) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["max_connections"] = str(max_connections)
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
async def many() -> AsyncIterator[aiohttp.ClientSession]:
    """A client without aiohttp's own limit of 100 connections per session (and 64 streams are open at once)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def test_open_streams_leave_the_pool_to_the_other_channels(
    web_server: WebServerFactory, many: aiohttp.ClientSession, redis_url: str, key_prefix: str
) -> None:
    server, web = await web_server({"state.url": capped(redis_url, POOL_CAP), "state.key_prefix": key_prefix,
                                    "web.rate_per_ip_per_min": 10_000, "web.heartbeat_s": 30,
                                    "web.max_streams_per_ip": 1000})  # every stream comes from 127.0.0.1
    assert isinstance(web.events, RedisEventLog)
    assert web.services.redis is not None
    pool = web.services.redis.connection_pool
    assert pool.max_connections == POOL_CAP

    sessions = [await new_session(many, server) for _ in range(STREAMS)]
    streams = []
    try:
        for s in sessions:
            resp = await many.get(server.make_url("/api/web/stream"), headers=auth(s["token"]))
            assert resp.status == 200, await resp.text()
            assert await resp.content.readline() == b"retry: 2000\n"
            streams.append(resp)
        reader = web.events.reader
        for _ in range(500):  # until every handler waits on the shared read
            if reader.watched == STREAMS and all(w.waiters for w in reader._watches.values()):
                break
            await asyncio.sleep(0.02)
        assert reader.watched == STREAMS
        held = len(pool._in_use_connections)
        assert held <= 2, f"{held} pooled connections held by {STREAMS} open streams"

        # the other channels still get connections: /chat runs a whole turn through Redis
        async with many.post(server.make_url("/chat"), json={"query": "如何重置密码？", "user_id": "scale-1"}) as r:
            assert r.status == 200, await r.text()
            assert "忘记密码" in (await r.json())["answer"]

        # FAQ turns from a few widgets reach their own streams, in order
        asked = range(0, STREAMS, 16)
        for n in asked:
            async with many.post(server.make_url("/api/web/messages"), headers=auth(sessions[n]["token"]),
                                 json={"text": "如何重置密码？", "client_id": f"scale-{n:04d}"}) as r:
                assert r.status == 202, await r.text()
        for n in asked:
            events = []
            while not events or events[-1][1]["type"] != "done":
                events += await read_sse(streams[n], 1)
            kinds = [e["type"] for _, e in events]
            assert kinds[0] == "user" and kinds[-2:] == ["reply", "done"] and "delta" in kinds
            assert all(e["message_id"] == f"scale-{n:04d}" for _, e in events)

        # and an agent's message to every visitor reaches every stream, once
        for n, s in enumerate(sessions):
            sid = s["session_id"]
            ref = ConversationRef(channel="web", conversation_id=sid, user_id=sid)
            await web.sender.deliver(None, [Reply(ref, f"第 {n} 位访客您好", source="agent")])
        got = await asyncio.gather(*(read_sse(resp, 1) for resp in streams))
        assert [[e["text"] for _, e in g] for g in got] == [[f"第 {n} 位访客您好"] for n in range(STREAMS)]
        assert len(pool._in_use_connections) <= 2
        assert len(pool._in_use_connections) + len(pool._available_connections) <= POOL_CAP
    finally:
        for resp in streams:
            resp.close()
