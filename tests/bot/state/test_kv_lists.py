"""The SharedKV list operations, one contract for the in-process KV and Redis (for real): bounded,
expiring lists taken whole and atomically (the /chat outbox of agent replies)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from bot.state.keys import Keys
from bot.state.kv import MemoryKV, RedisKV, SharedKV


@pytest.fixture(params=["memory", "redis"])
def kv(request: pytest.FixtureRequest, redis_client: aioredis.Redis) -> SharedKV:
    return MemoryKV() if request.param == "memory" else RedisKV(redis_client)


@pytest.fixture
def key(key_prefix: str) -> str:
    return Keys(key_prefix).api_outbox("api::张三")


async def test_items_come_back_oldest_first_and_once(kv: SharedKV, key: str) -> None:
    assert await kv.list_take(key) == []
    assert [await kv.list_push(key, v, max_len=10, ttl_s=60) for v in ("一", "二", "三")] == [1, 2, 3]
    assert await kv.list_take(key) == ["一", "二", "三"]
    assert await kv.list_take(key) == []  # taken means gone


async def test_only_the_newest_max_len_are_kept(kv: SharedKV, key: str) -> None:
    for i in range(7):
        length = await kv.list_push(key, f"m{i}", max_len=3, ttl_s=60)
    assert length == 3
    assert await kv.list_take(key) == ["m4", "m5", "m6"]


async def test_the_list_expires_and_each_push_restarts_the_ttl(kv: SharedKV, key: str) -> None:
    await kv.list_push(key, "old", max_len=5, ttl_s=0.15)
    await asyncio.sleep(0.1)
    await kv.list_push(key, "new", max_len=5, ttl_s=0.15)  # the whole list lives on
    await asyncio.sleep(0.1)
    assert await kv.list_take(key) == ["old", "new"]
    await kv.list_push(key, "gone", max_len=5, ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert await kv.list_take(key) == []


async def test_concurrent_takers_never_both_get_an_item(kv: SharedKV, key: str) -> None:
    for i in range(20):
        await kv.list_push(key, str(i), max_len=50, ttl_s=60)
    taken = await asyncio.gather(*(kv.list_take(key) for _ in range(5)))
    assert sorted(int(v) for batch in taken for v in batch) == list(range(20))
    assert sum(1 for batch in taken if batch) == 1


async def test_delete_removes_a_list(kv: SharedKV, key: str) -> None:
    await kv.list_push(key, "x", max_len=5, ttl_s=60)
    await kv.delete(key)
    assert await kv.list_take(key) == []


async def test_redis_sets_the_ttl_on_the_list(redis_client: aioredis.Redis, key: str) -> None:
    await RedisKV(redis_client).list_push(key, "x", max_len=5, ttl_s=90)
    assert 0 < await redis_client.pttl(key) <= 90_000
    assert await redis_client.lrange(key, 0, -1) == ["x"]
