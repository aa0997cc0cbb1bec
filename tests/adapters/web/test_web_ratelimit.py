"""Per-session and per-IP limits on shared counters (real Redis and the in-process KV)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from adapters.web.ratelimit import WINDOW_S, RateLimiter
from bot.http import HttpError
from bot.state.keys import Keys
from bot.state.kv import MemoryKV, RedisKV


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest, redis_client: aioredis.Redis, key_prefix: str) -> RateLimiter:
    kv = MemoryKV() if request.param == "memory" else RedisKV(redis_client)
    return RateLimiter(kv, Keys(key_prefix), per_session_per_min=2, per_ip_per_min=3)


async def test_session_limit_answers_429_with_retry_after(limiter: RateLimiter) -> None:
    await limiter.check_session("a" * 32)
    await limiter.check_session("a" * 32)
    with pytest.raises(HttpError) as err:
        await limiter.check_session("a" * 32)
    assert err.value.status == 429
    assert err.value.code == "rate_limited"
    assert err.value.headers["Retry-After"] == str(WINDOW_S)
    await limiter.check_session("b" * 32)  # another conversation has its own budget


async def test_ip_limit_is_separate_per_address(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.check_ip("10.0.0.1")
    with pytest.raises(HttpError):
        await limiter.check_ip("10.0.0.1")
    await limiter.check_ip("10.0.0.2")


async def test_redis_counters_are_shared_and_expire(redis_client: aioredis.Redis, key_prefix: str) -> None:
    """Two gateway processes (two limiters on one Redis) share one budget, and the window expires."""
    keys = Keys(key_prefix)
    one = RateLimiter(RedisKV(redis_client), keys, 2, 100)
    two = RateLimiter(RedisKV(redis_client), keys, 2, 100)
    await one.check_session("c" * 32)
    await two.check_session("c" * 32)
    with pytest.raises(HttpError):
        await one.check_session("c" * 32)
    ttl = await redis_client.pttl(keys.rate("web:session:" + "c" * 32))
    assert 0 < ttl <= WINDOW_S * 1000
