"""WindowGate and SharedToken, on the in-process KV and on Redis (for real): the
send budget and the single-flight token cache the channel adapters share."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from bot.state.keys import Keys
from bot.state.kv import MemoryKV, RedisKV, SharedKV
from bot.state.shared import SharedToken, SharedTokenTimeout, WindowGate
from tests.fakes.clock import FakeClock


@pytest.fixture(params=["memory", "redis"])
def kv(request: pytest.FixtureRequest, redis_client: aioredis.Redis) -> SharedKV:
    return MemoryKV() if request.param == "memory" else RedisKV(redis_client)


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


# WindowGate


async def test_gate_queues_past_the_limit_in_order_and_never_drops(kv: SharedKV, keys: Keys) -> None:
    clock = FakeClock(start=600.0 + 45.0)  # 15 s before the next minute
    gate = WindowGate(kv, keys.rate, 2, clock=clock, sleep=clock.sleep)
    passed: list[tuple[int, float]] = []

    async def send(i: int) -> None:
        await gate.wait("bot")
        passed.append((i, clock()))

    await asyncio.gather(*(send(i) for i in range(5)))
    assert passed == [(0, 645.0), (1, 645.0), (2, 660.0), (3, 660.0), (4, 720.0)]  # two a minute, FIFO, none lost
    assert clock.sleeps == [15.0, 60.0]  # each wait ends exactly at the next window
    assert gate._queues == {}  # no per-name state is left behind once nobody waits


async def test_gate_budgets_are_per_name_and_shared_between_processes(kv: SharedKV, keys: Keys) -> None:
    clock = FakeClock(start=1200.0)
    one, two = (WindowGate(kv, keys.rate, 3, clock=clock, sleep=clock.sleep) for _ in range(2))
    await one.wait("a")
    await two.wait("a")
    await one.wait("a")
    await two.wait("b")  # another name has a budget of its own
    assert clock.sleeps == []
    await two.wait("a")  # the fourth pass of the minute for "a", from the other "process"
    assert clock.sleeps == [60.0]


async def test_gate_waiter_blocks_neither_other_names_nor_loses_its_place(kv: SharedKV, keys: Keys) -> None:
    now = [60.0]
    wake = asyncio.Event()

    async def sleep(_seconds: float) -> None:
        await wake.wait()  # the test decides when a waiter wakes, one wake-up at a time
        wake.clear()

    gate = WindowGate(kv, keys.rate, 1, clock=lambda: now[0], sleep=sleep)
    order: list[str] = []

    async def send(name: str, tag: str) -> None:
        await gate.wait(name)
        order.append(tag)

    await send("x", "first")
    second = asyncio.create_task(send("x", "second"))  # over the limit: sleeps
    await asyncio.sleep(0.01)
    await asyncio.wait_for(send("y", "other name"), 1)  # not held up by the sleeper on "x"
    now[0] = 120.0  # the next window opens while "second" still sleeps
    newcomer = asyncio.create_task(send("x", "newcomer"))
    await asyncio.sleep(0.01)
    assert order == ["first", "other name"]  # the newcomer queued behind the sleeper instead of taking its slot
    wake.set()
    await asyncio.sleep(0.01)
    assert order == ["first", "other name", "second"]  # the newcomer now waits for the window after
    now[0] = 180.0
    wake.set()
    await asyncio.wait_for(asyncio.gather(second, newcomer), 1)
    assert order == ["first", "other name", "second", "newcomer"]


async def test_gate_counts_in_the_kv_with_a_key_per_window(redis_client: aioredis.Redis, keys: Keys) -> None:
    clock = FakeClock(start=125.0)
    gate = WindowGate(RedisKV(redis_client), keys.rate, 5, window_s=10.0, clock=clock, sleep=clock.sleep)
    for _ in range(2):
        await gate.wait("bot")
    assert await redis_client.get(keys.rate("bot:12")) == "2"
    assert 10_000 < await redis_client.pttl(keys.rate("bot:12")) <= 20_000  # kept two windows


# SharedToken


class Platform:
    """The platform side of a token: counts fetches, issues tok1, tok2, ..."""

    def __init__(self, delay_s: float = 0.0, lifetime_s: float = 7200.0) -> None:
        self.delay_s = delay_s
        self.lifetime_s = lifetime_s
        self.fetches = 0
        self.fail = False

    async def fetch(self) -> tuple[str, float]:
        self.fetches += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("platform refused the secret")
        return f"tok{self.fetches}", self.lifetime_s


def _token(kv: SharedKV, keys: Keys, platform: Platform, **kw: float) -> SharedToken:
    return SharedToken(kv, keys.token("app"), keys.lock("token:app"), platform.fetch, poll_s=0.01, **kw)


async def test_token_is_fetched_once_across_processes(kv: SharedKV, keys: Keys) -> None:
    platform = Platform(delay_s=0.1)  # slow enough that every caller overlaps the first fetch
    processes = [_token(kv, keys, platform) for _ in range(4)]  # each has its own in-process lock
    tokens = await asyncio.gather(*(p.get() for p in processes for _ in range(5)))
    assert set(tokens) == {"tok1"}
    assert platform.fetches == 1
    assert await kv.get(keys.token("app")) == "tok1"
    assert await kv.get(keys.lock("token:app")) is None  # released after the refresh


async def test_token_is_cached_shorter_than_it_lives(redis_client: aioredis.Redis, keys: Keys) -> None:
    kv = RedisKV(redis_client)
    await _token(kv, keys, Platform(lifetime_s=7200)).get()
    assert 6800_000 < await redis_client.pttl(keys.token("app")) <= 6900_000  # renewed five minutes early
    await kv.delete(keys.token("app"))
    await _token(kv, keys, Platform(lifetime_s=100)).get()
    assert 50_000 < await redis_client.pttl(keys.token("app")) <= 60_000  # but kept at least a minute


async def test_a_stale_token_is_never_returned(kv: SharedKV, keys: Keys) -> None:
    platform = Platform()
    token = _token(kv, keys, platform)
    old = await token.get()
    assert await token.get(stale=old) == "tok2"  # refused by the platform: refetched although still cached
    assert await token.get(stale=old) == "tok2"  # and the new one is then shared
    assert platform.fetches == 2


async def test_invalidate_keeps_a_token_another_process_already_replaced(kv: SharedKV, keys: Keys) -> None:
    platform = Platform()
    a, b = _token(kv, keys, platform), _token(kv, keys, platform)
    old = await a.get()
    await a.invalidate(old)
    new = await b.get()
    await a.invalidate(old)  # late: must not throw away b's fresh token
    assert (old, new, await a.get()) == ("tok1", "tok2", "tok2")
    assert platform.fetches == 2


async def test_a_failed_fetch_releases_the_lock_and_is_retried(kv: SharedKV, keys: Keys) -> None:
    platform = Platform()
    platform.fail = True
    token = _token(kv, keys, platform)
    with pytest.raises(RuntimeError, match="refused"):
        await token.get()
    assert await kv.get(keys.lock("token:app")) is None
    platform.fail = False
    assert await token.get() == "tok2"


async def test_a_waiter_takes_the_token_another_process_stores(kv: SharedKV, keys: Keys) -> None:
    platform = Platform()
    await kv.set(keys.lock("token:app"), "other-process", 60)
    waiter = asyncio.create_task(_token(kv, keys, platform).get())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await kv.set(keys.token("app"), "theirs", 60)
    assert await asyncio.wait_for(waiter, 1) == "theirs"
    assert platform.fetches == 0


async def test_waiting_too_long_for_another_process_is_a_clear_error(kv: SharedKV, keys: Keys) -> None:
    platform = Platform()
    await kv.set(keys.lock("token:app"), "other-process", 60)
    with pytest.raises(SharedTokenTimeout, match="another process"):
        await _token(kv, keys, platform, wait_s=0.1).get()

    class PlatformError(Exception):
        pass

    custom = SharedToken(kv, keys.token("app"), keys.lock("token:app"), platform.fetch, poll_s=0.01, wait_s=0.1,
                         timeout_error=PlatformError)
    with pytest.raises(PlatformError):
        await custom.get()
    assert platform.fetches == 0
    assert await kv.get(keys.lock("token:app")) == "other-process"  # never released by a non-owner


async def test_a_lock_taken_over_after_expiry_is_not_released_by_the_old_owner(kv: SharedKV, keys: Keys) -> None:
    async def slow_fetch() -> tuple[str, float]:
        # The fetch outlived lock_ttl_s: the lock expired and another process now holds it.
        await kv.set(keys.lock("token:app"), "next-owner", 60)
        return "tok1", 7200

    token = SharedToken(kv, keys.token("app"), keys.lock("token:app"), slow_fetch)
    assert await token.get() == "tok1"
    assert await kv.get(keys.lock("token:app")) == "next-owner"
