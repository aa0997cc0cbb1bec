"""One contract, every inbox: the in-process one and RabbitMQ (a real broker, leases in a real Redis)."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.inbox import Delivery, Inbox, Overloaded, SeenSet, StoreUnavailable
from bot.inbox.memory import MemoryInbox
from bot.inbox.rabbit import RabbitInbox
from bot.metrics import Metrics
from bot.state.keys import Keys
from bot.state.memory import MemoryStore
from bot.state.redis import RedisStore

from .helpers import RabbitObjects, counter, delete_keys, event, number, wait_until

DELIVERY_LIMIT = 3


class World:
    """Inboxes of one kind sharing a dedup store and metrics; every ``inbox()`` is another worker."""

    def __init__(self, kind: str, *, redis: aioredis.Redis | None = None, key_prefix: str = "",
                 rabbit: RabbitObjects | None = None) -> None:
        self.kind = kind
        self.metrics = Metrics()
        self.redis = redis
        self.keys = Keys(key_prefix)
        self.rabbit = rabbit
        self.seen = MemoryStore(60, 86400) if kind == "memory" else RedisStore(redis, self.keys, 60, 86400)
        self.inboxes: list[Inbox] = []
        self._ids = itertools.count(1)

    def inbox(self, *, capacity: int | None = None, seen: SeenSet | None = None) -> Inbox:
        """A new inbox; ``capacity``: events it takes before refusing (memory: pending, rabbit: max_length
        of a single partition); ``seen``: another dedup store than the shared one."""
        inbox: Inbox
        seen = seen or self.seen
        if self.kind == "memory":
            inbox = MemoryInbox(seen, self.metrics, max_pending=capacity or 10_000, max_concurrent=16,
                                delivery_limit=DELIVERY_LIMIT)
        else:
            assert self.rabbit is not None
            cfg = (self.rabbit.config(partitions=1, max_length=capacity) if capacity
                   else self.rabbit.config(partitions=4))
            inbox = RabbitInbox(cfg, seen, self.metrics, redis=self.redis, keys=self.keys,
                                worker_id=f"worker-{next(self._ids)}", max_concurrent=16)
        self.inboxes.append(inbox)
        return inbox

    async def dead_ids(self) -> list[str]:
        if self.kind == "memory":
            return [e.id for inbox in self.inboxes for e in inbox.dead]  # type: ignore[attr-defined]
        assert self.rabbit is not None
        return await self.rabbit.dead_ids()

    async def close(self) -> None:
        for inbox in self.inboxes:
            await inbox.close()


@pytest.fixture(params=["memory", "rabbit"])
async def world(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[World]:
    if request.param == "memory":
        w = World("memory")
        yield w
        await w.close()
        return
    rabbit = RabbitObjects(request.getfixturevalue("rabbit_url"), partitions=4)  # only this case needs a broker
    client = aioredis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    w = World("rabbit", redis=client, key_prefix=key_prefix, rabbit=rabbit)
    try:
        yield w
    finally:
        await w.close()
        await rabbit.delete()
        await delete_keys(client, key_prefix)
        await client.aclose()


async def test_put_once_takes_an_event_once(world: World) -> None:
    inbox = world.inbox()
    await inbox.start()
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.event.id)

    await inbox.consume(handler)
    first, later = event("c1", 0), event("c1", 1)
    assert await inbox.put_once(first) is True
    assert await inbox.put_once(first) is False  # the platform's retry
    assert await inbox.put_once(later) is True
    await wait_until(lambda: len(handled) >= 2, "both events handled")
    assert handled == ["c1-0", "c1-1"]


async def test_each_conversation_in_order_while_conversations_overlap(world: World) -> None:
    inbox = world.inbox()
    await inbox.start()
    seen: dict[str, list[int]] = defaultdict(list)
    busy: set[str] = set()
    overlaps: list[str] = []
    running = 0
    most = 0

    async def handler(d: Delivery) -> None:
        nonlocal running, most
        key = d.event.ref.conversation_id
        if key in busy:
            overlaps.append(d.event.id)
        busy.add(key)
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.002)
            seen[key].append(number(d.event))
        finally:
            running -= 1
            busy.discard(key)

    await inbox.consume(handler)

    async def put_conversation(c: int) -> None:
        for n in range(25):
            assert await inbox.put_once(event(f"conv{c}", n)) is True

    await asyncio.gather(*(put_conversation(c) for c in range(20)))
    await wait_until(lambda: sum(map(len, seen.values())) >= 500, "500 events handled")
    await asyncio.sleep(0.05)  # a double delivery would show up now
    assert {key: numbers for key, numbers in seen.items()} == {f"conv{c}": list(range(25)) for c in range(20)}
    assert overlaps == []  # one event of a conversation at a time
    assert most > 1  # different conversations ran concurrently


async def test_a_failing_event_comes_back_before_the_rest_of_its_conversation(world: World) -> None:
    inbox = world.inbox()
    await inbox.start()
    log: list[tuple[str, bool, int, str]] = []
    failures = 0

    async def handler(d: Delivery) -> None:
        nonlocal failures
        if d.event.id == "c1-0" and failures < 2:
            failures += 1
            log.append((d.event.id, d.redelivered, d.attempt, "failed"))
            raise RuntimeError("engine down")
        log.append((d.event.id, d.redelivered, d.attempt, "done"))

    for n in range(3):  # all waiting before a worker starts, so the later ones are at hand when c1-0 fails
        assert await inbox.put_once(event("c1", n))
    await inbox.consume(handler)
    await wait_until(lambda: len(log) >= 5, "three events handled")
    assert log == [
        ("c1-0", False, 1, "failed"),
        ("c1-0", True, 2, "failed"),
        ("c1-0", True, 3, "done"),
        ("c1-1", False, 1, "done"),
        ("c1-2", False, 1, "done"),
    ]
    assert counter(world.metrics, "kefu_queue_redeliveries") == 2
    assert counter(world.metrics, "kefu_queue_dead_lettered") == 0


async def test_an_event_that_always_fails_is_parked_as_dead(world: World) -> None:
    inbox = world.inbox()
    await inbox.start()
    attempts: list[int] = []
    done: list[str] = []

    async def handler(d: Delivery) -> None:
        if d.event.id == "c1-0":
            attempts.append(d.attempt)
            raise ValueError("poison")
        done.append(d.event.id)

    await inbox.consume(handler)
    assert await inbox.put_once(event("c1", 0))
    assert await inbox.put_once(event("c1", 1))
    await wait_until(lambda: done == ["c1-1"], "the next event handled")
    assert attempts == [1, 2, 3]  # delivery_limit deliveries, then parked
    dead: list[str] = []

    async def parked() -> bool:
        dead.extend(await world.dead_ids())
        return bool(dead)

    await wait_until(parked, "the event in the dead letters")
    assert dead == ["c1-0"]
    assert counter(world.metrics, "kefu_queue_dead_lettered") == 1
    assert counter(world.metrics, "kefu_queue_redeliveries") == DELIVERY_LIMIT - 1


async def test_full_refuses_and_forgets_the_id(world: World) -> None:
    inbox = world.inbox(capacity=2)
    await inbox.start()
    taken = []
    refused = None
    for n in range(20):  # RabbitMQ's reject-publish is a soft limit: a message or so more gets in
        e = event("c1", n)
        try:
            assert await inbox.put_once(e) is True
        except Overloaded:
            refused = e
            break
        taken.append(e.id)
    assert refused is not None, "never refused"
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.event.id)

    await inbox.consume(handler)
    await wait_until(lambda: len(handled) >= len(taken), "the taken events handled")

    async def taken_again() -> bool:
        try:
            return await inbox.put_once(refused)  # False would mean the id was kept: the retry lost
        except Overloaded:
            return False

    await wait_until(taken_again, "the refused event taken on a retry")
    await wait_until(lambda: refused.id in handled, "the retried event handled")
    assert handled == [*taken, refused.id]


async def test_stop_consuming_hands_back_the_event_in_flight(world: World) -> None:
    first = world.inbox()
    await first.start()
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        started.set()
        await never.wait()

    await first.consume(stuck)
    e = event("c1", 0)
    assert await first.put_once(e)
    await asyncio.wait_for(started.wait(), 20)
    assert await first.stop_consuming(0.1) is False  # something was handed back
    second = world.inbox()
    await second.start()
    if world.kind == "memory":
        assert await second.put_once(e) is True  # un-seen: the platform's retry is taken
        return
    got: list[Delivery] = []

    async def handler(d: Delivery) -> None:
        got.append(d)

    await second.consume(handler)  # another worker gets it from the broker
    await wait_until(lambda: got, "the event at the second worker")
    assert [d.event.id for d in got] == ["c1-0"]
    assert got[0].redelivered is True
    assert got[0].attempt == 2


async def test_depth_counts_waiting_events(world: World) -> None:
    inbox = world.inbox()
    await inbox.start()
    assert await inbox.depth() == 0
    for c in range(3):
        assert await inbox.put_once(event(f"c{c}", 0))

    async def three() -> bool:
        return await inbox.depth() == 3

    await wait_until(three, "depth 3")
    gate = asyncio.Event()

    async def handler(d: Delivery) -> None:
        await gate.wait()

    await inbox.consume(handler)
    await asyncio.sleep(0.1)
    assert await inbox.depth() == 3  # taken by a worker but not finished: still counted
    gate.set()

    async def empty() -> bool:
        return await inbox.depth() == 0

    await wait_until(empty, "depth 0")


class DownStore:
    async def first_seen(self, dedup_key: str, *, pending_s: float = 0.0) -> bool:
        raise ConnectionError("store unreachable")

    async def confirm_seen(self, dedup_key: str) -> None:
        raise ConnectionError("store unreachable")

    async def forget_seen(self, dedup_key: str) -> None:
        raise ConnectionError("store unreachable")


async def test_an_event_the_store_cannot_mark_is_refused(world: World) -> None:
    inbox = world.inbox(seen=DownStore())
    await inbox.start()
    with pytest.raises(StoreUnavailable):
        await inbox.put_once(event("c1", 0))
    assert await inbox.depth() == 0  # nothing was queued that a retry would then duplicate
