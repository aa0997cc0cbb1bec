"""The WeCom API client against the loopback fake: shared token, single-flight
refresh, retries, and the per-user send budget."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from adapters.wecom.api import AccessToken, AppClient, CallPolicy, WecomApiError
from bot.state.keys import Keys
from bot.state.kv import RedisKV
from bot.state.shared import WindowGate

from .fake_wecom import FakeWecom


def _token(fake: FakeWecom, kv: RedisKV, keys: Keys, http: aiohttp.ClientSession, secret: str = "s") -> AccessToken:
    return AccessToken(CallPolicy(lambda: http, 2, 0.0), kv, keys, fake.url, "corp", secret, 7)


async def test_one_refresh_across_processes(fake_wecom: FakeWecom, redis_client, key_prefix: str,
                                            http: aiohttp.ClientSession) -> None:
    fake_wecom.token_delay_s = 0.2  # slow enough that every caller overlaps the first fetch
    kv, keys = RedisKV(redis_client), Keys(key_prefix)
    processes = [_token(fake_wecom, kv, keys, http) for _ in range(4)]  # each has its own in-process lock
    tokens = await asyncio.gather(*(p.get() for p in processes for _ in range(5)))
    assert set(tokens) == {"tok1"}
    assert len(fake_wecom.gettoken) == 1
    assert await redis_client.get(keys.token("wecom:corp:7")) == "tok1"
    assert 6000 < await redis_client.ttl(keys.token("wecom:corp:7")) <= 6900  # renewed five minutes early
    assert await redis_client.get(keys.lock("token:wecom:corp:7")) is None


async def test_invalidate_keeps_a_token_another_process_already_replaced(
        fake_wecom: FakeWecom, redis_client, key_prefix: str, http: aiohttp.ClientSession) -> None:
    kv, keys = RedisKV(redis_client), Keys(key_prefix)
    a, b = _token(fake_wecom, kv, keys, http), _token(fake_wecom, kv, keys, http)
    old = await a.get()
    await a.invalidate(old)
    new = await b.get()
    await a.invalidate(old)  # late: must not throw away b's fresh token
    assert (old, new, await a.get()) == ("tok1", "tok2", "tok2")
    assert len(fake_wecom.gettoken) == 2


async def test_gettoken_error_is_raised(fake_wecom: FakeWecom, redis_client, key_prefix: str,
                                        http: aiohttp.ClientSession) -> None:
    token = _token(fake_wecom, RedisKV(redis_client), Keys(key_prefix), http, secret="wrong")
    with pytest.raises(WecomApiError) as info:
        await token.get()
    assert info.value.errcode == 40001
    assert "wrong" not in str(info.value)  # the secret never lands in logs or errors



async def test_a_refresh_stuck_in_another_process_ends_in_a_wecom_error(
        fake_wecom: FakeWecom, redis_client, key_prefix: str, http: aiohttp.ClientSession) -> None:
    keys = Keys(key_prefix)
    token = _token(fake_wecom, RedisKV(redis_client), keys, http)
    await redis_client.set(keys.lock("token:wecom:corp:7"), "other-process", ex=60)
    token.wait_s = 0.2
    with pytest.raises(WecomApiError, match="another process") as info:
        await token.get()
    assert info.value.errcode == -1
    assert fake_wecom.gettoken == []
    assert await redis_client.get(keys.lock("token:wecom:corp:7")) == "other-process"  # not ours to release

async def test_rate_limit_retries_then_gives_up(fake_wecom: FakeWecom, redis_client, key_prefix: str,
                                               http: aiohttp.ClientSession) -> None:
    kv, keys = RedisKV(redis_client), Keys(key_prefix)
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    policy = CallPolicy(lambda: http, 3, 0.5, sleep)
    client = AppClient(_token(fake_wecom, kv, keys, http), policy, WindowGate(kv, keys.rate, 30), fake_wecom.url, 7)
    fake_wecom.send_script = [45009] * 10
    with pytest.raises(WecomApiError) as info:
        await client.send_text("u", "你好")
    assert info.value.errcode == 45009
    assert len(fake_wecom.sends) == 4 and delays == [0.5, 1.0, 2.0]  # exponential backoff


async def test_unreachable_server_is_retried_then_reported(redis_client, key_prefix: str,
                                                           http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    calls = 0

    async def sleep(_s: float) -> None:
        nonlocal calls
        calls += 1

    policy = CallPolicy(lambda: http, 2, 0.1, sleep)
    with pytest.raises(WecomApiError, match="gave up after 3 attempts"):
        await policy.call("GET", f"http://127.0.0.1:{port}/cgi-bin/gettoken", "gettoken", params={})
    assert calls == 2


async def test_per_user_send_budget_queues_instead_of_dropping(fake_wecom: FakeWecom, redis_client, key_prefix: str,
                                                               http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    kv, keys = RedisKV(redis_client), Keys(key_prefix)
    gate = WindowGate(kv, keys.rate, 3, clock=lambda: now[0], sleep=sleep)
    client = AppClient(_token(fake_wecom, kv, keys, http), CallPolicy(lambda: http, 0, 0.0), gate, fake_wecom.url, 7)
    windows = []
    for i in range(7):
        await client.send_text("u", f"消息{i}")
        windows.append(int(now[0] // 60))
    assert windows == [16, 16, 16, 17, 17, 17, 18]  # three a minute, none lost
    assert fake_wecom.texts() == [f"消息{i}" for i in range(7)]
    assert len(slept) == 2
    assert await redis_client.get(keys.rate("wecom:7:u:18")) == "1"  # the budget is counted per agent and user
    await client.send_text("other", "另一位")  # another user has a budget of their own
    assert len(slept) == 2



async def test_a_send_that_times_out_is_not_repeated(fake_wecom: FakeWecom, redis_client, key_prefix: str) -> None:
    """WeCom may have delivered a message whose answer never came back: sending
    it again would show the customer the same answer twice."""
    kv, keys = RedisKV(redis_client), Keys(key_prefix)
    fake_wecom.send_gate = asyncio.Event()  # message/send hangs
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        client = AppClient(_token(fake_wecom, kv, keys, http), CallPolicy(lambda: http, 3, 0.0), WindowGate(
            kv, keys.rate, 30), fake_wecom.url, 7)
        with pytest.raises(WecomApiError, match="not retried"):
            await client.send_text("u", "你好")
    fake_wecom.send_gate.set()
    assert len(fake_wecom.sends) == 1
