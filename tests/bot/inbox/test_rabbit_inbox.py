"""What only the RabbitMQ inbox does: spread partitions over workers, hand them over, park unreadable
messages, refuse puts at once while the broker is away."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from bot.inbox import Delivery, QueueUnavailable
from bot.inbox.rabbit import RabbitInbox, partition_of, safe_url
from bot.metrics import Metrics
from bot.state.keys import Keys
from bot.state.redis import RedisStore
from tests.services import PrivateRabbit

from .helpers import RabbitObjects, counter, delete_keys, event, number, wait_until

PARTITIONS = 8


class Workers:
    """RabbitInbox workers of one deployment: one queue.name, one Redis, one dedup store."""

    def __init__(self, rabbit: RabbitObjects, redis: aioredis.Redis, key_prefix: str) -> None:
        self.rabbit = rabbit
        self.redis = redis
        self.keys = Keys(key_prefix)
        self.seen = RedisStore(redis, self.keys, 60, 86400)
        self.metrics = Metrics()
        self.inboxes: list[RabbitInbox] = []

    def worker(self, worker_id: str, **overrides: object) -> RabbitInbox:
        inbox = RabbitInbox(self.rabbit.config(**overrides), self.seen, self.metrics, redis=self.redis,
                            keys=self.keys, worker_id=worker_id, max_concurrent=16)
        self.inboxes.append(inbox)
        return inbox


@pytest.fixture
async def workers(rabbit_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Workers]:
    rabbit = RabbitObjects(rabbit_url, partitions=PARTITIONS)
    client = aioredis.from_url(redis_url, decode_responses=True)
    w = Workers(rabbit, client, key_prefix)
    try:
        yield w
    finally:
        for inbox in w.inboxes:
            await inbox.close()
        await rabbit.delete()
        await delete_keys(client, key_prefix)
        await client.aclose()


class Record:
    """Handled events per conversation, by whom, and any two of one conversation running at once."""

    def __init__(self) -> None:
        self.numbers: dict[str, list[int]] = defaultdict(list)
        self.by: dict[str, set[str]] = defaultdict(set)
        self.busy: set[str] = set()
        self.overlaps: list[str] = []

    def handler(self, worker: str) -> Callable[[Delivery], object]:
        async def handle(d: Delivery) -> None:
            key = d.event.ref.conversation_id
            if key in self.busy:
                self.overlaps.append(d.event.id)
            self.busy.add(key)
            try:
                await asyncio.sleep(0.003)
                self.numbers[key].append(number(d.event))
                self.by[worker].add(d.event.id)
            finally:
                self.busy.discard(key)

        return handle

    def total(self) -> int:
        return sum(map(len, self.numbers.values()))


async def put_all(inbox: RabbitInbox, conversations: range, numbers: range) -> None:
    async def one(c: int) -> None:
        for n in numbers:
            assert await inbox.put_once(event(f"conv{c}", n)) is True

    await asyncio.gather(*(one(c) for c in conversations))


async def test_two_workers_split_the_partitions_and_one_takes_over_when_the_other_stops(workers: Workers) -> None:
    a, b = workers.worker("worker-a"), workers.worker("worker-b")
    record = Record()
    await a.consume(record.handler("a"))
    assert a.owned_partitions == set(range(PARTITIONS))  # alone at first
    await b.consume(record.handler("b"))
    await wait_until(lambda: len(a.owned_partitions) == 4 and len(b.owned_partitions) == 4, "a 4/4 split")
    assert a.owned_partitions | b.owned_partitions == set(range(PARTITIONS))

    conversations = range(24)  # crc32 spreads these over all 8 partitions
    assert {partition_of(f"web::conv{c}", PARTITIONS) for c in conversations} == set(range(PARTITIONS))
    await put_all(a, conversations, range(10))
    await wait_until(lambda: record.total() >= 240, "the first 240 events handled")
    assert record.by["a"] and record.by["b"]  # both workers answered

    more = asyncio.create_task(put_all(b, conversations, range(10, 30)))  # keeps coming during the handover
    await wait_until(lambda: record.total() >= 300, "some of the next events handled")
    await a.stop_consuming(10.0)  # what it held unstarted goes back to the broker, then to b
    await wait_until(lambda: b.owned_partitions == set(range(PARTITIONS)), "b owning every partition")
    await more
    await wait_until(lambda: record.total() >= 720, "all 720 events handled")
    await asyncio.sleep(0.1)  # a double delivery would show up now
    assert dict(record.numbers) == {f"conv{c}": list(range(30)) for c in conversations}  # once each, in order
    assert record.overlaps == []


async def test_a_dead_workers_partitions_move_after_its_leases_expire(workers: Workers) -> None:
    a, b = workers.worker("worker-a"), workers.worker("worker-b")
    record = Record()
    await a.consume(record.handler("a"))
    await b.consume(record.handler("b"))
    await wait_until(lambda: len(b.owned_partitions) == 4, "a 4/4 split")
    # a crashes: no more heartbeats or renewals, its connection drops, its leases stay until they expire
    assert a._upkeep is not None and a._sub is not None
    a._upkeep.cancel()
    await a._sub.close()
    await wait_until(lambda: b.owned_partitions == set(range(PARTITIONS)), "b owning every partition")
    await put_all(b, range(16), range(5))
    await wait_until(lambda: record.total() >= 80, "every event handled by b")
    assert dict(record.numbers) == {f"conv{c}": list(range(5)) for c in range(16)}
    assert not record.by["a"]


async def test_an_unreadable_message_is_parked_and_the_partition_goes_on(workers: Workers) -> None:
    inbox = workers.worker("worker-a")
    await inbox.start()
    record = Record()
    await inbox.consume(record.handler("a"))
    c = next(c for c in range(100) if partition_of(f"web::conv{c}", PARTITIONS) == 0)
    await workers.rabbit.publish_raw(0, b'{"f": 1, "id": "half an event"}')
    assert await inbox.put_once(event(f"conv{c}", 0))
    await wait_until(lambda: record.total() == 1, "the next event on that partition handled")
    dead = []

    async def parked() -> bool:
        dead.extend(await workers.rabbit.take_dead())
        return bool(dead)

    await wait_until(parked, "the unreadable message in the dead letters")
    assert [m.body for m in dead] == [b'{"f": 1, "id": "half an event"}']
    assert counter(workers.metrics, "kefu_queue_dead_lettered") == 1


async def test_put_once_fails_fast_while_no_broker_answers(workers: Workers) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = workers.worker("worker-a", url=f"amqp://guest:secret@127.0.0.1:{port}/")
    e = event("c1", 0)
    async with asyncio.timeout(15):  # refused, not hung
        with pytest.raises(QueueUnavailable):
            await inbox.start()
        for _ in range(3):
            with pytest.raises(QueueUnavailable):
                await inbox.put_once(e)
    assert await workers.seen.first_seen(e.dedup_key) is True  # never marked seen: the retry will be taken


def test_urls_in_logs_carry_no_credentials() -> None:
    assert safe_url("amqp://kefu:s3cret@mq.internal:5672/prod?heartbeat=30") == "amqp://mq.internal:5672/prod"
    assert safe_url("amqps://u:p@[::1]:5671/") == "amqps://[::1]:5671/"


async def test_puts_and_consuming_resume_after_the_broker_restarts(redis_url: str, key_prefix: str) -> None:
    node = PrivateRabbit()  # never the shared broker: this one is stopped under the inbox
    await asyncio.to_thread(node.start)
    client = aioredis.from_url(redis_url, decode_responses=True)
    w = Workers(RabbitObjects(node.url, partitions=2), client, key_prefix)
    try:
        inbox = w.worker("worker-a", partitions=2)
        record = Record()
        await inbox.consume(record.handler("a"))
        await put_all(inbox, range(4), range(3))
        await wait_until(lambda: record.total() >= 12, "the events before the restart handled")

        await asyncio.to_thread(node.stop)
        async with asyncio.timeout(15):  # refused at once while the broker is away, not hung
            with pytest.raises(QueueUnavailable):
                await inbox.put_once(event("conv0", 3))
        await asyncio.to_thread(node.start)

        async def taken() -> bool:
            try:
                return await inbox.put_once(event("conv0", 3))
            except QueueUnavailable:
                return False

        await wait_until(taken, "a put taken after the restart", timeout=60)  # the connection came back by itself
        await put_all(inbox, range(1, 4), range(3, 5))
        await put_all(inbox, range(1), range(4, 5))
        await wait_until(lambda: record.total() >= 20, "the events after the restart handled", timeout=60)
        assert dict(record.numbers) == {f"conv{c}": list(range(5)) for c in range(4)}
    finally:
        for inbox in w.inboxes:
            await inbox.close()
        await delete_keys(client, key_prefix)
        await client.aclose()
        await asyncio.to_thread(node.close)


async def test_a_worker_whose_lease_was_taken_hands_over_without_reordering(workers: Workers) -> None:
    """A lease lost while events of a conversation are unacknowledged here (Redis slow, the loop stalled past
    lease_s): the partition's new owner may already wait as the standby consumer. The handover must not make
    it active while this worker still holds earlier events, or it answers later events first."""
    parts = 2  # sorted workers [worker-a, worker-b]: partition 1 is worker-b's
    conv = next(f"conv{c}" for c in range(100) if partition_of(f"web::conv{c}", parts) == 1)
    handled: list[int] = []
    gate, started = asyncio.Event(), asyncio.Event()

    async def slow_a(d: Delivery) -> None:
        started.set()
        await gate.wait()  # holds event 0; 1.. wait in a's mailbox, unacknowledged
        handled.append(number(d.event))

    async def record_b(d: Delivery) -> None:
        handled.append(number(d.event))

    a = workers.worker("worker-a", partitions=parts)
    b = workers.worker("worker-b", partitions=parts)
    await a.consume(slow_a)
    assert a.owned_partitions == {0, 1}
    for n in range(6):
        assert await a.put_once(event(conv, n))
    await asyncio.wait_for(started.wait(), 10)
    await workers.redis.delete(workers.keys.queue_lease(workers.rabbit.name, 1))  # the lease is gone
    await b.consume(record_b)
    await wait_until(lambda: 1 in b.owned_partitions, "worker-b holding partition 1")
    await wait_until(lambda: 1 not in a.owned_partitions, "worker-a handing partition 1 over")
    for n in range(6, 10):  # published while worker-a still holds 0..5 unacknowledged
        assert await b.put_once(event(conv, n))
    await asyncio.sleep(0.5)  # time for the broker to deliver 6..9 to whichever consumer is active
    gate.set()
    await wait_until(lambda: len(handled) >= 10, "every event handled")
    await asyncio.sleep(0.3)  # nothing more (no event twice)
    assert handled == list(range(10))
