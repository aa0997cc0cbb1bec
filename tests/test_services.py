"""The private-server helpers keep what production would keep across restarts and crashes.

Crash tests elsewhere trust these helpers, so they are checked against real servers
here. One RabbitMQ node serves the whole module: each boot costs several seconds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aio_pika
import pytest
import redis.asyncio as aioredis
from aio_pika.exceptions import ChannelNotFoundEntity

from tests.services import (
    PrivateRabbit,
    PrivateRedis,
    amqp_answers,
    delete_rabbit_objects,
    free_port,
    redis_answers,
)


async def test_private_redis_keeps_data_across_restart() -> None:
    with PrivateRedis() as server:
        client = aioredis.from_url(server.url, decode_responses=True)
        await client.set("kefu:survivor", "yes")
        await client.aclose()
        port = server.port

        await asyncio.to_thread(server.restart)

        assert server.port == port
        client = aioredis.from_url(server.url, decode_responses=True)
        assert await client.get("kefu:survivor") == "yes"
        await client.aclose()
    assert not server.dir.exists()


async def test_private_redis_kill_and_start() -> None:
    with PrivateRedis(appendfsync="always") as server:
        client = aioredis.from_url(server.url, decode_responses=True)
        await client.set("kefu:acked", "1")
        await client.aclose()

        await asyncio.to_thread(server.kill)
        assert not redis_answers(server.url)

        await asyncio.to_thread(server.start)
        client = aioredis.from_url(server.url, decode_responses=True)
        assert await client.get("kefu:acked") == "1"  # fsync'd before the reply, so a crash keeps it
        await client.aclose()


def test_answer_checks_reject_a_dead_port() -> None:
    port = free_port()
    assert not amqp_answers(f"amqp://guest:guest@127.0.0.1:{port}/", timeout=0.5)
    assert not redis_answers(f"redis://127.0.0.1:{port}/0", timeout=0.5)


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    """One node for the module (skipping, with the reason, if rabbitmq-server cannot be had)."""
    with PrivateRabbit() as node:
        yield node


@pytest.fixture
def queue_name() -> str:
    return f"kefutest-{uuid.uuid4().hex[:10]}"


async def _publish_confirmed(url: str, queue: str, body: bytes) -> None:
    """Declare a durable quorum queue and publish one persistent message, returning after the broker's confirm."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        confirm = await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)
        assert confirm is not None


async def _take_one(url: str, queue: str) -> bytes:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        message = await declared.get(no_ack=False, timeout=10)
        await message.ack()
        assert await declared.get(fail=False) is None
        return message.body


async def test_private_rabbit_keeps_quorum_messages_across_restart(rabbit: PrivateRabbit, queue_name: str) -> None:
    await _publish_confirmed(rabbit.url, queue_name, b"survives a restart")
    port = rabbit.port

    await asyncio.to_thread(rabbit.restart)

    assert rabbit.port == port
    assert await _take_one(rabbit.url, queue_name) == b"survives a restart"


async def test_private_rabbit_kill_and_start(rabbit: PrivateRabbit, queue_name: str) -> None:
    await _publish_confirmed(rabbit.url, queue_name, b"confirmed before the crash")

    await asyncio.to_thread(rabbit.kill)
    assert not rabbit.running
    assert not amqp_answers(rabbit.url)

    await asyncio.to_thread(rabbit.start)
    assert amqp_answers(rabbit.url)
    # A quorum queue confirms only after its log is on disk, so even a SIGKILL keeps the message
    # (kill() first flushes the queue registry, as a broker running for a while would have).
    assert await _take_one(rabbit.url, queue_name) == b"confirmed before the crash"


async def test_delete_rabbit_objects(rabbit: PrivateRabbit, queue_name: str) -> None:
    exchange_name = f"{queue_name}-x"
    connection = await aio_pika.connect(rabbit.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)

        await delete_rabbit_objects(rabbit.url, queues=[queue_name, f"{queue_name}-never-declared"],
                                    exchanges=[exchange_name, f"{queue_name}-never-declared"])

        with pytest.raises(ChannelNotFoundEntity):
            await (await connection.channel()).declare_queue(queue_name, passive=True)
        with pytest.raises(ChannelNotFoundEntity):
            await (await connection.channel()).declare_exchange(exchange_name, passive=True)
