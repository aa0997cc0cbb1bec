"""One contract, every store: the in-memory store and Redis (for real)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.state import DialogueState, Handoff, StateStore, VersionConflict
from bot.state.keys import Keys
from bot.state.memory import MemoryStore
from bot.state.redis import RedisStore
from bot.types import ConversationRef


@pytest.fixture(params=["memory", "redis", "redis-6.2"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[StateStore]:
    """Redis twice: the current server, and 6.2, the oldest the hub supports."""
    if request.param == "memory":
        yield MemoryStore(idle_ttl_s=60, dedup_ttl_s=86400)
        return
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_6_2_url")
    client = aioredis.from_url(url, decode_responses=True)
    yield RedisStore(client, Keys(key_prefix), idle_ttl_s=60, dedup_ttl_s=86400)
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_missing_conversation_loads_fresh(store: StateStore) -> None:
    state = await store.load("web::u1")
    assert state == DialogueState(key="web::u1")
    assert state.version == 0


async def test_save_then_load_round_trips_chinese(store: StateStore) -> None:
    state = (await store.load("wecom:corp:张三")).replace(node="collect_order", slots={"order_id": "DD2024"})
    state = state.with_turn("user", "我要退款", limit=10).with_turn("assistant", "请提供订单号", limit=10)
    saved = await store.save(state, expected_version=0)
    assert saved.version == 1
    loaded = await store.load("wecom:corp:张三")
    assert loaded.version == 1
    assert loaded.node == "collect_order"
    assert dict(loaded.slots) == {"order_id": "DD2024"}
    assert [(t.role, t.text) for t in loaded.history] == [("user", "我要退款"), ("assistant", "请提供订单号")]


async def test_the_dialogue_fields_round_trip(store: StateStore) -> None:
    ref = ConversationRef(channel="wecom", conversation_id="group-9", user_id="张三", tenant="corp1", is_group=True)
    state = (await store.load(ref.key)).replace(
        lang="en", ref=ref, handoff=Handoff("anger", "agent", 1700000000.5), angry_messages=2, invalid_answers=1,
        handed_off=True,
    )
    saved = await store.save(state, expected_version=0)
    assert await store.load(ref.key) == saved == state.replace(version=1, updated_at=saved.updated_at)


async def test_stale_version_is_refused(store: StateStore) -> None:
    first = await store.load("k")
    await store.save(first.replace(node="a"), expected_version=first.version)
    with pytest.raises(VersionConflict):
        await store.save(first.replace(node="b"), expected_version=first.version)
    assert (await store.load("k")).node == "a"


async def test_concurrent_increments_lose_no_update(store: StateStore) -> None:
    async def increment() -> None:
        while True:
            state = await store.load("counter")
            try:
                counted = state.replace(slots={"n": state.slots.get("n", 0) + 1})
                await store.save(counted, expected_version=state.version)
                return
            except VersionConflict:
                await asyncio.sleep(0)

    await asyncio.gather(*(increment() for _ in range(25)))
    final = await store.load("counter")
    assert final.slots["n"] == 25
    assert final.version == 25


async def test_delete_forgets_everything(store: StateStore) -> None:
    await store.save((await store.load("k")).replace(node="x"), expected_version=0)
    await store.delete("k")
    assert (await store.load("k")).version == 0


async def test_first_seen_deduplicates(store: StateStore) -> None:
    assert await store.first_seen("wecom:corp:msg-1") is True
    assert await store.first_seen("wecom:corp:msg-1") is False
    assert await store.first_seen("wecom:corp:msg-2") is True


async def test_ping(store: StateStore) -> None:
    assert await store.ping() is True


async def test_memory_store_idle_expiry_restarts() -> None:
    now = [1000.0]
    store = MemoryStore(idle_ttl_s=30, dedup_ttl_s=86400, clock=lambda: now[0])
    await store.save(DialogueState(key="k", node="x"), expected_version=0)
    now[0] += 29
    assert (await store.load("k")).node == "x"
    now[0] += 2
    assert (await store.load("k")).version == 0


async def test_memory_store_keeps_a_handed_off_conversation_for_the_handoff_ttl() -> None:
    now = [1000.0]
    store = MemoryStore(idle_ttl_s=30, dedup_ttl_s=86400, clock=lambda: now[0], handoff_ttl_s=3600)
    saved = await store.save(DialogueState(key="k", handed_off=True), expected_version=0)
    now[0] += 3599  # long past the idle TTL: an agent answers the next morning
    assert (await store.load("k")).handed_off
    released = await store.save(saved.replace(handed_off=False), expected_version=saved.version)
    now[0] += 31  # released: the idle TTL again
    assert (await store.load("k")).version == 0
    assert released.version == 2


async def test_redis_store_sets_idle_ttl_and_dedup_ttl(redis_client: aioredis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    store = RedisStore(redis_client, keys, idle_ttl_s=1800, dedup_ttl_s=86400)
    await store.save(DialogueState(key="k"), expected_version=0)
    assert 0 < await redis_client.pttl(keys.state("k")) <= 1800 * 1000
    await store.first_seen("m")
    assert 86000 < await redis_client.ttl(keys.dedup("m")) <= 86400


async def test_redis_store_keeps_a_handed_off_conversation_for_the_handoff_ttl(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    store = RedisStore(redis_client, keys, idle_ttl_s=1800, dedup_ttl_s=86400, handoff_ttl_s=259200)
    saved = await store.save(DialogueState(key="k", handed_off=True), expected_version=0)
    assert 1800 * 1000 < await redis_client.pttl(keys.state("k")) <= 259200 * 1000
    await store.save(saved.replace(handed_off=False), expected_version=saved.version)
    assert 0 < await redis_client.pttl(keys.state("k")) <= 1800 * 1000


async def test_redis_store_reports_unreachable() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", Keys("x"), 60, 86400)
    assert await store.ping() is False
    await store.close()


async def test_forget_seen_lets_a_redelivery_in(store: StateStore) -> None:
    assert await store.first_seen("wecom:corp:msg-9") is True
    await store.forget_seen("wecom:corp:msg-9")
    assert await store.first_seen("wecom:corp:msg-9") is True


async def test_memory_store_sweeps_expired_entries() -> None:
    now = [1000.0]
    store = MemoryStore(idle_ttl_s=30, dedup_ttl_s=86400, clock=lambda: now[0])
    for i in range(100):
        await store.save(DialogueState(key=f"k{i}"), expected_version=0)
        await store.first_seen(f"m{i}")
    now[0] += 86400 + 61
    await store.first_seen("new")
    assert len(store._states) == 0 and set(store._seen) == {"new"}


async def test_ledger_is_written_with_the_state_and_keeps_no_text_once_sent(store: StateStore) -> None:
    from bot.state import SENT, LedgerEntry

    assert await store.ledger("web::u1", "web::m1") is None
    state = await store.load("web::u1")
    with pytest.raises(VersionConflict):  # a refused save records no replies either
        await store.save(state.replace(node="x"), expected_version=5, ledger=LedgerEntry("web::m1", '["早"]'))
    assert await store.ledger("web::u1", "web::m1") is None
    entry = LedgerEntry("web::m1", '["您好，退款三天到账"]')
    await store.save(state.replace(node="x"), expected_version=0, ledger=entry)
    assert await store.ledger("web::u1", "web::m1") == '["您好，退款三天到账"]'
    assert await store.ledger("web::u1", "web::m2") is None
    await store.mark_sent("web::u1", "web::m1")
    assert await store.ledger("web::u1", "web::m1") == SENT


async def test_a_provisional_mark_holds_off_a_second_taker_then_lapses(store: StateStore) -> None:
    """A mark whose caller never heard back (Redis answered into a broken connection) must not turn the
    platform's retry into a duplicate that nobody answers."""
    import asyncio

    from bot.state import SeenPending

    assert await store.first_seen("wecom::m1", pending_s=0.3) is True
    with pytest.raises(SeenPending):  # someone is taking it right now: try again later
        await store.first_seen("wecom::m1", pending_s=0.3)
    await asyncio.sleep(0.4)
    assert await store.first_seen("wecom::m1", pending_s=0.3) is True  # lapsed: taken over
    await store.confirm_seen("wecom::m1")
    assert await store.first_seen("wecom::m1", pending_s=0.3) is False  # final: a true duplicate
    assert await store.first_seen("wecom::m2") is True and await store.first_seen("wecom::m2") is False
