"""Events, polling and per-test broker objects for the inbox tests."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis

from bot.codec import decode_event
from bot.config import QueueConfig
from bot.metrics import Metrics
from bot.types import ConversationRef, Event, EventKind
from tests.services import delete_rabbit_objects


def event(conversation: str, n: int) -> Event:
    return Event(id=f"{conversation}-{n}", kind=EventKind.MESSAGE,
                 ref=ConversationRef("web", conversation, f"user-{conversation}"), text=f"消息 {n}")


def number(e: Event) -> int:
    return int(e.id.rsplit("-", 1)[1])


async def wait_until(condition: Callable[[], Any | Awaitable[Any]], what: str, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def delete_keys(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)


def counter(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"{name}_total") or 0.0


class RabbitObjects:
    """The exchanges and queues of one test's ``queue.name``, and a look into its dead-letter queue."""

    def __init__(self, url: str, partitions: int) -> None:
        self.url = url
        self.name = f"kefutest-{uuid.uuid4().hex[:10]}"
        self.partitions = partitions

    def config(self, **overrides: Any) -> QueueConfig:
        values: dict[str, Any] = {"url": self.url, "name": self.name, "partitions": self.partitions,
                                  "delivery_limit": 3, "prefetch": 16, "lease_s": 1.0, "confirm_timeout_s": 3.0}
        values.update(overrides)
        self.partitions = values["partitions"]
        return QueueConfig(**values)

    async def take_dead(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Everything in ``{name}.dead`` now (taken off the queue)."""
        taken = []
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(f"{self.name}.dead", ensure=False)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                taken.append(message)
        return taken

    async def dead_ids(self) -> list[str]:
        return [decode_event(m.body).id for m in await self.take_dead()]

    async def publish_raw(self, partition: int, body: bytes) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(aio_pika.Message(body, delivery_mode=2),
                                                   routing_key=f"{self.name}.p{partition:03d}")

    async def delete(self) -> None:
        await delete_rabbit_objects(
            self.url,
            queues=[*(f"{self.name}.p{i:03d}" for i in range(self.partitions)), f"{self.name}.dead"],
            exchanges=[f"{self.name}.in", f"{self.name}.dead"],
        )
