"""The per-session event log behind the SSE stream, in memory and in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from adapters.web.events import EventLog, MemoryEventLog, RedisEventLog, parse_event_id
from bot.state.keys import Keys

SID = "f" * 32


@pytest.fixture(params=["memory", "redis"])
async def log(request: pytest.FixtureRequest, redis_client: aioredis.Redis, key_prefix: str) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        yield MemoryEventLog(per_session=50, idle_ttl_s=600)
    else:
        yield RedisEventLog(redis_client, Keys(key_prefix), per_session=50, idle_ttl_s=600)


async def test_ids_grow_and_reads_resume_after_a_cursor(log: EventLog) -> None:
    ids = [await log.append(SID, {"n": i, "text": f"第{i}段"}) for i in range(5)]
    assert [parse_event_id(i) for i in ids] == sorted(parse_event_id(i) for i in ids)
    assert len(set(ids)) == 5
    got = await log.read(SID, ids[1], timeout_s=1)
    assert [e for _, e in got] == [{"n": i, "text": f"第{i}段"} for i in (2, 3, 4)]
    assert [i for i, _ in got] == ids[2:]
    assert await log.last_id(SID) == ids[-1]
    assert [e["n"] for _, e in await log.entries(SID)] == [0, 1, 2, 3, 4]


async def test_a_waiting_reader_wakes_on_append(log: EventLog) -> None:
    start = await log.last_id(SID)
    reader = asyncio.create_task(log.read(SID, start, timeout_s=10))
    await asyncio.sleep(0.05)
    assert not reader.done()
    event_id = await log.append(SID, {"type": "delta"})
    assert await reader == [(event_id, {"type": "delta"})]


async def test_read_times_out_empty_and_sessions_are_separate(log: EventLog) -> None:
    await log.append("e" * 32, {"other": True})
    assert await log.read(SID, "0-0", timeout_s=0.05) == []
    assert await log.last_id(SID) == "0-0"


async def test_log_is_bounded_per_session(log: EventLog) -> None:
    for i in range(200):
        await log.append(SID, {"n": i})
    kept = await log.entries(SID)
    assert 50 <= len(kept) < 200  # Redis trims approximately
    assert kept[-1][1] == {"n": 199}


async def test_redis_log_expires_with_the_conversation(redis_client: aioredis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    log = RedisEventLog(redis_client, keys, per_session=50, idle_ttl_s=600)
    await log.append(SID, {"n": 1})
    assert 0 < await redis_client.pttl(keys.web_events(f"web::{SID}")) <= 600_000


@pytest.mark.parametrize("raw", ["", "12", "a-1", "1-2-3", "1-2; DROP"])
def test_bad_event_ids_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(raw)


async def test_redis_read_waits_longer_than_the_socket_timeout(redis_url: str, key_prefix: str) -> None:
    """A reader idle past the client's socket timeout comes back empty rather than failing."""
    client = aioredis.from_url(redis_url, decode_responses=True, socket_timeout=1.0)
    try:
        log = RedisEventLog(client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
        assert await log.read(SID, "0-0", timeout_s=1.5) == []
        reader = asyncio.create_task(log.read(SID, "0-0", timeout_s=10))
        await asyncio.sleep(1.5)
        event_id = await log.append(SID, {"late": True})
        assert await reader == [(event_id, {"late": True})]
    finally:
        await client.aclose()


async def test_append_many_keeps_order_and_wakes_readers_once(log: EventLog) -> None:
    start = await log.last_id(SID)
    reader = asyncio.create_task(log.read(SID, start, timeout_s=10))
    await asyncio.sleep(0.05)
    ids = await log.append_many(SID, [{"n": i} for i in range(4)])
    got = await asyncio.wait_for(reader, 5)
    assert [e[1]["n"] for e in got] == [0, 1, 2, 3] and [e[0] for e in got] == ids
    assert [parse_event_id(i) for i in ids] == sorted(parse_event_id(i) for i in ids)
