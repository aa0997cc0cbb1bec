"""The per-session event log behind the SSE stream, in memory and in Redis: ids, replay, waiting readers,
the streamed-answer marks, and Redis mode's one blocking read per process for every watched session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from adapters.web.events import EventLog, MemoryEventLog, RedisEventLog, parse_event_id
from bot.state.keys import Keys

SID = "f" * 32


@pytest.fixture(params=["memory", "redis"])
async def log(request: pytest.FixtureRequest, redis_client: aioredis.Redis, key_prefix: str) -> AsyncIterator[EventLog]:
    log: EventLog
    if request.param == "memory":
        log = MemoryEventLog(per_session=50, idle_ttl_s=600)
    else:
        log = RedisEventLog(redis_client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
    yield log
    await log.close()


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
    log = RedisEventLog(client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
    try:
        assert await log.read(SID, "0-0", timeout_s=1.5) == []
        reader = asyncio.create_task(log.read(SID, "0-0", timeout_s=10))
        await asyncio.sleep(1.5)
        event_id = await log.append(SID, {"late": True})
        assert await reader == [(event_id, {"late": True})]
    finally:
        await log.close()
        await client.aclose()


async def test_append_many_keeps_order_and_wakes_readers_once(log: EventLog) -> None:
    start = await log.last_id(SID)
    reader = asyncio.create_task(log.read(SID, start, timeout_s=10))
    await asyncio.sleep(0.05)
    ids = await log.append_many(SID, [{"n": i} for i in range(4)])
    got = await asyncio.wait_for(reader, 5)
    assert [e[1]["n"] for e in got] == [0, 1, 2, 3] and [e[0] for e in got] == ids
    assert [parse_event_id(i) for i in ids] == sorted(parse_event_id(i) for i in ids)


# ---------------------------------------------------------------- streamed marks


async def test_an_answer_that_came_whole_is_filled_in_one_that_streamed_is_not(log: EventLog) -> None:
    fill = [{"type": "delta", "message_id": "m-whole", "offset": 0, "text": "整"}]
    ids = await log.append_answer(SID, "m-whole", fill, [{"type": "reply"}, {"type": "done"}])
    assert [e["type"] for _, e in await log.entries(SID)] == ["delta", "reply", "done"] and len(ids) == 3
    await log.append_delta(SID, "m-live", {"type": "delta", "message_id": "m-live", "offset": 0, "text": "流"})
    await log.append_delta(SID, "m-live", {"type": "delta", "message_id": "m-live", "offset": 1, "text": "式"})
    ids = await log.append_answer(SID, "m-live", [{"type": "delta", "message_id": "m-live", "offset": 0}],
                                  [{"type": "reply"}, {"type": "done"}])
    assert len(ids) == 2
    kinds = [(e["type"], e.get("offset")) for _, e in await log.entries(SID)][3:]
    assert kinds == [("delta", 0), ("delta", 1), ("reply", None), ("done", None)]  # no synthetic restart
    # the mark went with the delivery: the same answer delivered again (a redelivered turn) is filled in again
    assert len(await log.append_answer(SID, "m-live", fill, [{"type": "done"}])) == 2


async def test_redis_marks_live_with_the_conversation(redis_client: aioredis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    log = RedisEventLog(redis_client, keys, per_session=50, idle_ttl_s=600)
    await log.append_delta(SID, "m-1", {"type": "delta"})
    marks = keys.web_streamed(f"web::{SID}")
    assert marks in keys.conversation_keys(f"web::{SID}")  # erased with the conversation
    assert await redis_client.hgetall(marks) == {"m-1": "1"}
    assert 0 < await redis_client.pttl(marks) <= 600_000
    await log.append_answer(SID, "m-1", [], [{"type": "done"}])
    assert not await redis_client.exists(marks)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts what is written to Redis sockets: one send per command or pipeline, that is one round trip."""
    sent = [0]
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command, check_health: bool = True) -> None:  # type: ignore[no-untyped-def]
        sent[0] += 1
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    yield sent


async def test_redis_delta_and_answer_are_one_round_trip_each(
    redis_client: aioredis.Redis, key_prefix: str, round_trips: list[int]
) -> None:
    log = RedisEventLog(redis_client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
    await log.append_answer(SID, "warm-up", [], [{"type": "done"}])  # loads the script (once per Redis)
    fill = [{"type": "delta", "message_id": "m-2", "offset": i, "text": "x"} for i in range(8)]
    round_trips[0] = 0
    await log.append_answer(SID, "m-2", fill, [{"type": "reply"}, {"type": "done"}])
    assert round_trips[0] == 1
    round_trips[0] = 0
    await log.append_delta(SID, "m-3", {"type": "delta"})
    assert round_trips[0] == 1


# ---------------------------------------------------------------- Redis: one blocking read for every stream


async def test_many_waiting_readers_share_one_connection(redis_url: str, key_prefix: str) -> None:
    """Readers on 80 sessions wait at once through a pool capped at 5 connections, and each gets its events."""
    sep = "&" if "?" in redis_url else "?"
    client = aioredis.from_url(f"{redis_url}{sep}max_connections=5", decode_responses=True)
    log = RedisEventLog(client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
    sids = [f"{n:032x}" for n in range(80)]
    try:
        readers = [asyncio.create_task(log.read(sid, "0-0", timeout_s=20)) for sid in sids]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if log.reader.watched == len(sids) and all(w.waiters for w in log.reader._watches.values()):
                break
        pool = client.connection_pool
        assert len(pool._in_use_connections) <= 1  # the one blocking read, whatever the number of readers
        ids = {sid: await log.append(sid, {"to": sid}) for sid in sids}
        got = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert [g for g in got] == [[(ids[sid], {"to": sid})] for sid in sids]
        assert len(pool._in_use_connections) + len(pool._available_connections) <= 5
    finally:
        await log.close()
        await client.aclose()


async def test_a_reader_behind_what_the_watch_keeps_reads_its_gap(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Replay after a cursor is exact (no loss, no repeat) however far behind the reader is."""
    log = RedisEventLog(redis_client, Keys(key_prefix), per_session=500, idle_ttl_s=600)
    log.reader.keep = 2
    try:
        first = await log.append(SID, {"n": 0})
        live = asyncio.create_task(log.read(SID, first, timeout_s=10))
        await asyncio.sleep(0.1)
        ids = await log.append_many(SID, [{"n": i} for i in range(1, 6)])
        assert [e["n"] for _, e in await asyncio.wait_for(live, 5)] == [1, 2, 3, 4, 5]
        watch = log.reader._watches[log._key(SID)]
        assert len(watch.recent) == 2  # the reader kept only the latest two
        behind = await log.read(SID, ids[0], timeout_s=5)  # a reconnect from event 1: read from Redis
        assert [i for i, _ in behind] == ids[1:]
        recent = await log.read(SID, ids[3], timeout_s=5)  # within what the watch keeps: no Redis read
        assert [i for i, _ in recent] == ids[4:]
        late = asyncio.create_task(log.read(SID, ids[-1], timeout_s=10))
        await asyncio.sleep(0.05)
        after = await log.append(SID, {"n": 6})
        assert await asyncio.wait_for(late, 5) == [(after, {"n": 6})]
    finally:
        await log.close()


async def test_readers_keep_up_with_a_busy_stream(redis_client: aioredis.Redis, key_prefix: str) -> None:
    """Two readers following one session while 300 events arrive in small bursts: each sees all, once, in order."""
    log = RedisEventLog(redis_client, Keys(key_prefix), per_session=1000, idle_ttl_s=600)

    async def follow(count: int) -> list[int]:
        cursor, seen = await log.last_id(SID), []
        while len(seen) < count:
            entries = await log.read(SID, cursor, timeout_s=5)
            assert entries, "a reader stalled"
            seen += [e["n"] for _, e in entries]
            cursor = entries[-1][0]
            await asyncio.sleep(0)  # busy writing to the browser
        return seen

    try:
        await log.append(SID, {"n": -1})
        followers = [asyncio.create_task(follow(300)) for _ in range(2)]
        await asyncio.sleep(0.1)
        for burst in range(60):
            await log.append_many(SID, [{"n": burst * 5 + i} for i in range(5)])
        for seen in await asyncio.wait_for(asyncio.gather(*followers), 20):
            assert seen == list(range(300))
    finally:
        await log.close()


async def test_a_stream_left_alone_is_unwatched_and_the_connection_given_back(
    redis_url: str, key_prefix: str
) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True, socket_timeout=0.4)
    log = RedisEventLog(client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
    log.reader.linger_s = 0.1
    try:
        assert await log.read(SID, "0-0", timeout_s=0.1) == []
        assert log.reader.watched == 1
        for _ in range(50):
            await asyncio.sleep(0.1)
            if log.reader._task is None:
                break
        assert log.reader.watched == 0 and log.reader._task is None
        assert not client.connection_pool._in_use_connections
        event_id = await log.append(SID, {"again": True})  # and a new reader starts it again
        assert await log.read(SID, "0-0", timeout_s=5) == [(event_id, {"again": True})]
    finally:
        await log.close()
        await client.aclose()


async def test_redis_away_fails_the_read_instead_of_hanging(key_prefix: str) -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    log = RedisEventLog(client, Keys(key_prefix), per_session=50, idle_ttl_s=600)
    try:
        with pytest.raises((RedisError, OSError)):
            await asyncio.wait_for(log.read(SID, "0-0", timeout_s=30), 10)
    finally:
        await log.close()
        await client.aclose()
