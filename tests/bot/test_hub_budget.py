"""The pending budget is shared out: public channels (``/chat``, the widget) hold at most their share of
``hub.max_pending`` in a process, so a flood on them answers them 503 while WeCom and DingTalk events are
still taken; and the share comes back as their turns finish."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from bot.config import HubConfig
from bot.hub import Hub, Overloaded, share_limits
from bot.metrics import Metrics
from bot.state.keys import Keys
from bot.state.memory import MemoryStore
from bot.state.redis import RedisStore
from bot.types import ConversationRef, Event, EventKind
from tests.bot.test_hub import CountingHandler, RecordingSink

GATE = "held"  # events with this text wait for the gate: they stay pending


def ev(channel: str, i: int, text: str = GATE) -> Event:
    ref = ConversationRef(channel=channel, conversation_id=f"{channel}-user-{i}", user_id=f"{channel}-user-{i}")
    return Event(id=f"{channel}-{i}", kind=EventKind.MESSAGE, ref=ref, text=text)


def budget_hub(store: object, gate: asyncio.Event, *, max_pending: int = 8) -> tuple[Hub, dict[str, RecordingSink]]:
    hub = Hub(HubConfig(max_pending=max_pending), store, CountingHandler({GATE: gate}), Metrics(),  # type: ignore[arg-type]
              shares={"api": 0.25, "web": 0.25})
    sinks = {name: RecordingSink() for name in ("api", "web", "wecom", "dingtalk")}
    for name, sink in sinks.items():
        hub.register(name, sink)
    return hub, sinks


def test_shares_are_counts_of_at_least_one() -> None:
    assert share_limits(10000, {"api": 0.25, "web": 0.1}) == {"api": 2500, "web": 1000}
    assert share_limits(3, {"api": 0.1}) == {"api": 1}


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str, key_prefix: str):
    if request.param == "memory":
        yield MemoryStore(60, 86400)
        return
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield RedisStore(client, Keys(key_prefix), 60, 86400)
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_chat_flood_to_its_share_still_leaves_wecom_and_dingtalk_room(store: object) -> None:
    gate = asyncio.Event()
    hub, sinks = budget_hub(store, gate, max_pending=8)  # api 2, web 2, the rest for everyone
    try:
        assert [await hub.accept(ev("api", i)) for i in range(2)] == [True, True]
        with pytest.raises(Overloaded):
            await hub.accept(ev("api", 2))  # /chat's share is used up: 503 for /chat
        assert await hub.accept(ev("wecom", 0)) and await hub.accept(ev("dingtalk", 0))
        assert [await hub.accept(ev("web", i)) for i in range(2)] == [True, True]
        with pytest.raises(Overloaded):
            await hub.accept(ev("web", 2))
        assert await hub.accept(ev("wecom", 1)) and await hub.accept(ev("dingtalk", 1))
        with pytest.raises(Overloaded):  # the whole budget is still a bound for everyone
            await hub.accept(ev("wecom", 2))
        # the refused /chat event was not taken: its retry is, once the held turns finish
        gate.set()
        assert await hub.drain(10)
        assert await hub.accept(ev("api", 2))
        assert await hub.drain(10)
        assert sorted(d[0] for d in sinks["api"].delivered) == ["api-0", "api-1", "api-2"]  # type: ignore[type-var]
        assert len(sinks["wecom"].delivered) == 2 and len(sinks["dingtalk"].delivered) == 2
        assert len(sinks["web"].delivered) == 2
    finally:
        gate.set()
        await hub.close()


async def test_a_burst_of_concurrent_chat_events_cannot_overshoot_its_share(store: object) -> None:
    """The share is taken before the dedup round trip, so concurrent puts cannot all pass the check."""
    gate = asyncio.Event()
    hub, _ = budget_hub(store, gate, max_pending=40)  # api: 10
    try:
        results = await asyncio.gather(*(hub.accept(ev("api", i)) for i in range(50)), return_exceptions=True)
        assert sum(r is True for r in results) == 10
        assert all(isinstance(r, Overloaded) for r in results if r is not True)
        assert await hub.accept(ev("wecom", 0))
        assert hub.inbox.held("api") == 10  # type: ignore[attr-defined]
    finally:
        gate.set()
        await hub.drain(10)
        await hub.close()


async def test_a_duplicate_or_a_refused_event_gives_its_share_back(store: object) -> None:
    gate = asyncio.Event()
    hub, _ = budget_hub(store, gate, max_pending=8)
    try:
        assert await hub.accept(ev("api", 0))
        assert await hub.accept(ev("api", 0)) is False  # a redelivery: not a second place
        assert hub.inbox.held("api") == 1  # type: ignore[attr-defined]
        assert await hub.accept(ev("api", 1))
        gate.set()
        assert await hub.drain(10)
        assert hub.inbox.held("api") == 0  # type: ignore[attr-defined]
    finally:
        gate.set()
        await hub.close()
