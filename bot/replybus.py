"""Answers that must reach the gateway process holding the customer's connection.

Most channels answer through the platform (WeCom ``message/send``, DingTalk)
or through Redis (the widget's event log, AI-bot stream buffers), so any
worker can send them. Two cannot: a ``/chat`` request and a WeCom AI-bot
event callback wait, in one gateway, for their turn's replies. The event
carries that gateway's ``origin`` and the worker publishes the replies to it.
In one process (:class:`LocalBus`) that is a function call; between processes
(:class:`RabbitBus`) each gateway has its own exclusive, auto-deleted queue on
a direct exchange, so an answer for a gateway that is gone is simply dropped
(its HTTP request went with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

from bot import codec
from bot.types import Event, Reply

log = logging.getLogger(__name__)

BusHandler = Callable[[bytes], Awaitable[None]]


def process_origin() -> str:
    """A name for this process that no other process shares, also across restarts."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ReplyBus(Protocol):
    origin: str  # what events accepted here carry, so answers find their way back

    def subscribe(self, topic: str, handler: BusHandler) -> None: ...

    async def publish(self, origin: str, topic: str, body: bytes) -> None:
        """Best effort: the receiver may be gone, and then its customer's connection is gone too."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def send_replies(bus: ReplyBus, topic: str, event: Event, replies: Sequence[Reply]) -> None:
    """A turn's replies, to the gateway whose request for ``event`` waits on ``topic``."""
    body = json.dumps({"id": event.id, "replies": codec.encode_replies(replies)}).encode()
    await bus.publish(event.origin, topic, body)


class ReplyWaiters:
    """Requests this gateway holds open until their turn's replies come back on ``topic``."""

    def __init__(self, bus: ReplyBus, topic: str) -> None:
        self._waiting: dict[str, asyncio.Future[tuple[Reply, ...]]] = {}
        bus.subscribe(topic, self._on_replies)

    @contextlib.contextmanager
    def waiting(self, event_id: str) -> Iterator[asyncio.Future[tuple[Reply, ...]]]:
        """Register before the event is accepted (a fast worker may answer first); forgotten on exit."""
        fut: asyncio.Future[tuple[Reply, ...]] = asyncio.get_running_loop().create_future()
        self._waiting[event_id] = fut
        try:
            yield fut
        finally:
            self._waiting.pop(event_id, None)

    async def _on_replies(self, body: bytes) -> None:
        data = json.loads(body)
        fut = self._waiting.get(data["id"])
        if fut is not None and not fut.done():
            fut.set_result(codec.decode_replies(data["replies"]))
        else:  # the request gave up or went away; the answer is in the history
            log.info("replies for %s came after its request ended; dropped", data["id"])

    def cancel_all(self) -> None:
        for fut in self._waiting.values():
            fut.cancel()


class LocalBus:
    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin or process_origin()
        self._handlers: dict[str, BusHandler] = {}

    def subscribe(self, topic: str, handler: BusHandler) -> None:
        self._handlers[topic] = handler

    async def publish(self, origin: str, topic: str, body: bytes) -> None:
        if origin not in ("", self.origin):
            log.warning("answer for another process %s cannot be delivered without a shared queue", origin)
            return
        handler = self._handlers.get(topic)
        if handler is not None:
            await handler(body)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RabbitBus:
    def __init__(self, url: str, name: str, origin: str | None = None) -> None:
        self.url = url
        self.exchange_name = f"{name}.replies"
        self.origin = origin or process_origin()
        self._handlers: dict[str, BusHandler] = {}
        self._connection = None
        self._exchange = None
        self._ready = asyncio.Event()

    def subscribe(self, topic: str, handler: BusHandler) -> None:
        self._handlers[topic] = handler

    async def start(self) -> None:
        import aio_pika

        self._connection = await aio_pika.connect_robust(self.url, timeout=10)
        channel = await self._connection.channel()
        self._exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.DIRECT,
                                                        durable=True)
        if self._handlers:  # only processes that hold customers' connections listen
            queue = await channel.declare_queue(f"{self.exchange_name}.{self.origin}", exclusive=True,
                                                auto_delete=True, arguments={"x-queue-type": "classic"})
            await queue.bind(self._exchange, routing_key=self.origin)
            await queue.consume(self._on_message, no_ack=True)
        self._ready.set()

    async def _on_message(self, message) -> None:
        topic = (message.headers or {}).get("topic")
        handler = self._handlers.get(topic) if isinstance(topic, str) else None
        if handler is None:
            log.warning("reply bus message without a known topic dropped")
            return
        try:
            await handler(message.body)
        except Exception:
            log.exception("reply bus handler for %s failed", topic)

    async def publish(self, origin: str, topic: str, body: bytes) -> None:
        import aio_pika

        if not origin:
            return
        if self._exchange is None:
            await asyncio.wait_for(self._ready.wait(), 10)
        assert self._exchange is not None
        message = aio_pika.Message(body, headers={"topic": topic}, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                                   expiration=60)
        try:
            await self._exchange.publish(message, routing_key=origin, mandatory=False, timeout=5)
        except Exception as exc:  # the waiting request times out on its own; the answer is in the history
            log.warning("answer for %s not published on the reply bus: %s", origin, type(exc).__name__)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
