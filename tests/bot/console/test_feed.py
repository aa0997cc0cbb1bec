"""The console feed: in-process fan-out, and through Redis between processes (each a client of its own),
with slow subscribers told to resync and a reader that outlives a Redis restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from bot.console import feed as feed_module
from bot.console.feed import RESYNC, ConsoleFeed, FeedEvent, RedisFeed, open_feed
from bot.state.keys import Keys
from bot.state.redisconn import open_blocking_client
from tests.services import PrivateRedis


async def next_event(sub: AsyncIterator[FeedEvent], within_s: float = 15.0) -> FeedEvent:
    return await asyncio.wait_for(sub.__anext__(), within_s)


async def until(check: Callable[[], bool], within_s: float = 15.0) -> None:
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110 (a condition set by another task, not an event we own)
            await asyncio.sleep(0.01)


def process(url: str, prefix: str) -> tuple[RedisFeed, list[aioredis.Redis]]:
    """A feed as one gateway process has it: its own shared client and blocking client."""
    shared = aioredis.from_url(url, decode_responses=True)
    blocking = open_blocking_client(url, socket_timeout_s=2.0, connect_timeout_s=1.0)
    feed = open_feed(shared, blocking, Keys(prefix))
    assert isinstance(feed, RedisFeed)
    return feed, [shared, blocking]


@pytest.fixture
async def two_processes(redis_url: str, key_prefix: str, redis_client: aioredis.Redis
                        ) -> AsyncIterator[tuple[RedisFeed, RedisFeed]]:
    a, clients_a = process(redis_url, key_prefix)
    b, clients_b = process(redis_url, key_prefix)
    await a.start()
    await b.start()
    yield a, b
    for feed in (a, b):
        await feed.close()
    for client in (*clients_a, *clients_b):
        await client.aclose()


# ---------------------------------------------------------------------------------------------------- memory
async def test_memory_feed_fans_out_to_subscribers_and_listeners() -> None:
    feed = open_feed(None, None, Keys("t"))
    assert type(feed) is ConsoleFeed
    heard: list[str] = []
    heard_async: list[str] = []

    async def async_listener(event: FeedEvent) -> None:
        heard_async.append(event.kind)

    def broken(event: FeedEvent) -> None:
        raise RuntimeError("listener bug")

    feed.listen(broken)
    feed.listen(lambda e: heard.append(e.kind))
    feed.listen(async_listener)
    await feed.start()
    async with feed.subscribe() as one, feed.subscribe() as two:
        assert feed.subscribers == 2
        await feed.publish("handoff", "wecom:corp:zhang", reason="requested")
        for sub in (one, two):
            event = await next_event(sub)
            assert (event.kind, event.key, dict(event.data)) == ("handoff", "wecom:corp:zhang",
                                                                  {"reason": "requested"})
            assert event.id
    assert feed.subscribers == 0
    assert heard == heard_async == ["handoff"]  # a broken listener does not stop the others
    await feed.close()


async def test_a_slow_subscriber_is_told_to_resync_instead_of_growing() -> None:
    feed = ConsoleFeed()
    async with feed.subscribe() as sub:
        for n in range(feed_module.QUEUE_SIZE + 20):
            await feed.publish("message", f"k{n}")
        first = await next_event(sub)
        assert first.kind == RESYNC
        after = await next_event(sub)
        assert after.kind == "message" and after.key == f"k{feed_module.QUEUE_SIZE + 1}"
    await feed.close()


async def test_close_ends_every_subscription() -> None:
    feed = ConsoleFeed()
    async with feed.subscribe() as sub:
        reading = asyncio.ensure_future(anext_or_end(sub))
        await asyncio.sleep(0)
        await feed.close()
        assert await asyncio.wait_for(reading, 5) is None
    async with feed.subscribe() as late:  # subscribing after shutdown ends at once
        assert await asyncio.wait_for(anext_or_end(late), 5) is None


async def anext_or_end(sub: AsyncIterator[FeedEvent]) -> FeedEvent | None:
    async for event in sub:
        return event
    return None


# ---------------------------------------------------------------------------------------------------- redis
async def test_two_processes_see_each_others_events(two_processes: tuple[RedisFeed, RedisFeed]) -> None:
    a, b = two_processes
    heard: list[FeedEvent] = []
    b.listen(heard.append)
    async with a.subscribe() as at_a, b.subscribe() as at_b:
        await a.publish("handoff", "wecom:corp:zhang", reason="anger")
        await b.publish("taken", "wecom:corp:zhang", agent="小王")
        for sub in (at_a, at_b):
            first, second = await next_event(sub), await next_event(sub)
            assert (first.kind, dict(first.data)) == ("handoff", {"reason": "anger"})
            assert (second.kind, second.key, dict(second.data)) == ("taken", "wecom:corp:zhang", {"agent": "小王"})
            assert first.id < second.id and "-" in first.id  # stream ids, for SSE id:
    await until(lambda: [e.kind for e in heard] == ["handoff", "taken"])


async def test_listeners_alone_start_the_reader(two_processes: tuple[RedisFeed, RedisFeed]) -> None:
    a, b = two_processes
    heard: list[str] = []
    b.listen(lambda e: heard.append(e.kind))  # after start(): reads at once, no subscriber needed
    async with b.subscribe():  # waits until the reader knows where the stream stands
        pass
    await a.publish("faq", "", faq_id="account-reset-password")
    await until(lambda: heard == ["faq"])


async def test_old_events_are_not_replayed_and_the_stream_is_capped(
    two_processes: tuple[RedisFeed, RedisFeed], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    a, b = two_processes
    for n in range(feed_module.MAXLEN + 300):
        await a.publish("message", f"old{n}")
    assert await redis_client.xlen(Keys(key_prefix).console_feed()) < feed_module.MAXLEN + 300
    async with b.subscribe() as sub:
        await a.publish("released", "new")
        event = await next_event(sub)
        assert (event.kind, event.key) == ("released", "new")


async def test_a_slow_redis_subscriber_gets_resync(two_processes: tuple[RedisFeed, RedisFeed]) -> None:
    a, b = two_processes
    heard: list[str] = []
    b.listen(lambda e: heard.append(e.key))
    async with b.subscribe() as sub:
        total = feed_module.QUEUE_SIZE + 30
        for n in range(total):
            await a.publish("message", f"k{n}")
        await until(lambda: len(heard) == total)  # the reader has fanned every event out
        first = await next_event(sub)
        assert first.kind == RESYNC


async def test_erase_removes_the_events_naming_a_conversation(two_processes: tuple[RedisFeed, RedisFeed],
                                                               redis_client: aioredis.Redis, key_prefix: str) -> None:
    a, _ = two_processes
    await a.publish("handoff", "web::gone")
    await a.publish("message", "web::gone")
    await a.publish("handoff", "web::kept")
    assert await a.erase("web::gone") == 2
    entries = await redis_client.xrange(Keys(key_prefix).console_feed())
    assert [fields["key"] for _, fields in entries] == ["web::kept"]


async def test_the_reader_survives_a_redis_restart_and_says_resync(private_redis: PrivateRedis) -> None:
    private_redis.start()
    feed, clients = process(private_redis.url, "kefutest-feed")
    other = aioredis.from_url(private_redis.url, decode_responses=True)
    try:
        await feed.start()
        async with feed.subscribe() as sub:
            await other.xadd(Keys("kefutest-feed").console_feed(), {"kind": "handoff", "key": "k1", "data": "{}"})
            assert (await next_event(sub)).key == "k1"
            private_redis.kill()
            await asyncio.sleep(0.3)  # the reader finds Redis gone (and keeps trying)
            private_redis.start()
            assert (await next_event(sub, 30)).kind == RESYNC
            await other.aclose()  # its connection died with the server
            other = aioredis.from_url(private_redis.url, decode_responses=True)
            await other.xadd(Keys("kefutest-feed").console_feed(), {"kind": "message", "key": "k2", "data": "{}"})
            assert (await next_event(sub, 30)).key == "k2"
    finally:
        await feed.close()
        await other.aclose()
        for client in clients:
            await client.aclose()
