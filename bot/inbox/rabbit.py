"""RabbitMQ inbox (``queue.url`` set): gateways put events, workers answer them.

Topology, declared idempotently by :meth:`RabbitInbox.start` (``name`` is ``queue.name``):

* ``{name}.in``, a durable direct exchange; partition ``i`` is bound to it with routing key ``str(i)``.
  A named exchange rather than the default one: gateways need write permission on this one exchange only,
  an operator can add a binding (a tap, a migration) without touching the publishers, and with
  ``mandatory`` set a missing partition queue comes back as an unroutable return (a 503), not a silent drop.
* ``{name}.p000`` ... ``{name}.pNNN``, ``queue.partitions`` durable quorum queues with single active
  consumer, ``x-delivery-limit``, dead-lettering (at-least-once) to ``{name}.dead`` and ``reject-publish``
  past ``x-max-length``. A conversation always hashes (crc32 of its key) to the same partition, so its
  events stay in order. Queue arguments cannot change once declared: a changed ``partitions`` moves
  conversations, a changed limit makes the declare fail (delete the queues, or use a policy).
* ``{name}.dead``, a fanout exchange with a quorum queue behind it, where unreadable events and events
  that failed ``delivery_limit`` times are parked (nothing retries them; an operator looks).

Workers spread the partitions between them through Redis (:meth:`RabbitInbox._tick`): each heartbeats
into ``keys.queue_workers(name)``; partition ``i`` belongs to ``sorted(live workers)[i % len(live)]``; the
owner holds the lease ``keys.queue_lease(name, i)`` (renewed every ``lease_s / 3``) and only a lease holder
consumes. A partition that moves is handed over gracefully: its owner stops starting events, lets the
running ones finish and be acknowledged, closes the partition's channel (the broker gives what is left
back, in order) and only then deletes the lease, so the next owner never overtakes an unfinished event. A
dead worker's leases expire and the live ones take its partitions. Single active consumer stays on as the
broker's own guarantee that one consumer per partition is active. Without Redis one worker consumes
every partition.

What RabbitMQ 3.10.8 does with quorum queues, measured on the broker these tests run against (the
order of events depends on it):

* ``basic.nack(requeue=True)`` puts a message back at the *head* of the queue (the quorum queue's
  "returns" are served before ready messages), in the order of the nacks: with 0..5 in the queue and 0, 1, 2
  delivered (prefetch 3), nacking 1 then 0 redelivers 1, 0, and only then 3. Every return adds one to
  ``x-delivery-count``.
* When a channel closes with unacknowledged messages they go back in the order they were delivered on
  it (checkout order): 3, 4, 5 delivered first, then 2, 0, 1 redelivered, closing returns 3, 4, 5, 2, 0, 1,
  each with ``redelivered`` set and ``x-delivery-count`` + 1.
* ``basic.cancel`` of the active consumer activates the waiting single-active consumer *at once*, while
  the cancelled one still holds unacknowledged messages: the waiting one got 2..5 while 0, 1 were unacked.
* With ``x-delivery-limit`` L a message returned every time is delivered L + 1 times, then dead-lettered
  (``x-first-death-reason`` ``delivery_limit``); ``reject(requeue=False)`` dead-letters at once
  (``rejected``). ``x-dead-letter-strategy: at-least-once`` is accepted (it needs ``reject-publish``).
* ``reject-publish`` is a soft limit: with ``x-max-length`` 2 the third publish was still confirmed
  (``max_length + 1`` kept) before nacks (:class:`aio_pika.exceptions.DeliveryError`) began; unacked
  messages count too, and after an ack the limit lifts with about one message of lag.
* The ``message_count`` of a (passive) queue declare counts ready messages only, not unacknowledged ones.

So a failed event is *not* nacked here: a nack returns it to the head, but the later events of the same
conversation this worker already holds (prefetch) were delivered before its redelivery; if the channel
then closed (crash, handover) the broker would give them back ahead of it (checkout order), and nacking
them along with it would count deliveries against events that never failed, until the broker parks
them unseen. Instead the worker keeps the failed event (unacknowledged, in its place at the head of its
conversation) and runs it again at once with ``redelivered`` set and the next ``attempt``, like the
in-process inbox; at ``delivery_limit`` attempts it is rejected into ``{name}.dead``. What the worker holds
is therefore always in delivery order, and whatever goes back to the broker goes back in order. The
broker's ``x-delivery-limit`` stays as the backstop for events whose handling kills the worker (each
crash returns them with ``x-delivery-count`` + 1). For the same reason a handover never ``basic.cancel``s
(another worker may be waiting as the standby, even while the lease looks ours: see :meth:`_retire`): it keeps
the consumer, starts nothing new, and closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import zlib
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aio_pika
import redis.asyncio as aioredis
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import ChannelPreconditionFailed

from bot.codec import CodecError, decode_event, encode_event
from bot.config import QueueConfig
from bot.inbox.base import Delivery, Handler, QueueUnavailable, SeenSet, confirm_seen, record_seen
from bot.metrics import Metrics
from bot.state.keys import Keys
from bot.types import Event

log = logging.getLogger(__name__)

RELEASE_DRAIN_S = 30.0  # a rebalance waits this long for running events before handing them back unfinished
_CONNECT_RETRY_S = 1.0  # after a failed connect, puts fail at once for this long instead of trying again
_RECONNECT_INTERVAL_S = 2.0  # the gateway connection's own reconnect pace after the broker went away
_RECONNECT_MAX_S = 5.0  # the worker connection's reconnect backoff grows from lease_s / 3 to this
_OP_TIMEOUT_S = 5.0  # bound on broker and Redis round trips that are not publishes (declare, qos, close)

# Heartbeat with the Redis clock (no skew between worker hosts), drop members older than a lease, list the rest.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# Keep a lease we hold, or take it again if it lapsed while we went on consuming (a Redis hiccup longer than a
# lease); 0 when another worker holds it.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def partition_of(conversation_key: str, partitions: int) -> int:
    """The partition of a conversation: stable across processes and releases (never Python's ``hash()``)."""
    return zlib.crc32(conversation_key.encode()) % partitions


def safe_url(url: str) -> str:
    """An AMQP URL fit for logs: no ``user:password@``, no query."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    with contextlib.suppress(ValueError):
        if parts.port:
            host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True, eq=False)
class _Item:
    message: AbstractIncomingMessage
    delivery: Delivery


@dataclass(eq=False)
class _Partition:
    """One consumed partition: its channel and the events it delivered that are not settled yet."""

    index: int
    channel: AbstractChannel
    tag: str | None = None
    boxes: dict[str, deque[_Item]] = field(default_factory=dict)  # per conversation, in delivery order
    drainers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    running: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no handler runs
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # a handover's wait is cut short
    accepting: bool = True  # False: start nothing more, what is held goes back with the channel
    retiring: bool = False
    cancelled: bool = False  # the broker cancelled the consumer (queue deleted)

    def __post_init__(self) -> None:
        self.idle.set()

    def unsettled(self) -> int:
        return sum(len(box) for box in self.boxes.values())

    def lost(self) -> bool:
        return self.cancelled or self.channel.is_closed


class RabbitInbox:
    redelivers = True

    def __init__(self, cfg: QueueConfig, seen: SeenSet, metrics: Metrics, *, redis: aioredis.Redis | None,
                 keys: Keys, worker_id: str, max_concurrent: int) -> None:
        self.cfg = cfg
        self.seen = seen
        self.metrics = metrics
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self._slots = asyncio.Semaphore(max_concurrent)
        self._where = safe_url(cfg.url)
        self._connect_timeout = max(1.0, cfg.confirm_timeout_s)
        self._lease_ms = max(1, int(cfg.lease_s * 1000))
        self._start_lock = asyncio.Lock()
        self._connect_failed_at: float | None = None
        self._pub: AbstractRobustConnection | None = None  # gateway side: reconnects by itself
        self._pub_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._info_channel: AbstractChannel | None = None
        self._sub: AbstractConnection | None = None  # worker side: reconnected by the partition upkeep
        self._sub_down = False
        self._sub_backoff = 0.0
        self._sub_retry_at = 0.0
        self._redis_down = False
        self._handler: Handler | None = None
        self._owned: dict[int, _Partition] = {}
        self._retiring: set[asyncio.Task[int]] = set()
        self._upkeep: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._consuming = False
        self._closed = False
        if redis is not None:
            self._heartbeat_script = redis.register_script(_HEARTBEAT)
            self._renew_script = redis.register_script(_RENEW)
            self._release_script = redis.register_script(_RELEASE)

    # -- names --------------------------------------------------------------------------------------------

    def queue_name(self, partition: int) -> str:
        return f"{self.cfg.name}.p{partition:03d}"

    @property
    def dead_name(self) -> str:
        return f"{self.cfg.name}.dead"

    @property
    def exchange_name(self) -> str:
        return f"{self.cfg.name}.in"

    def partition_of(self, event: Event) -> int:
        return partition_of(event.ref.key, self.cfg.partitions)

    @property
    def owned_partitions(self) -> frozenset[int]:
        """The partitions this worker consumes now (for tests and the admin view)."""
        return frozenset(p for p, part in self._owned.items() if not part.retiring)

    def _partition_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-delivery-limit": self.cfg.delivery_limit,
            "x-dead-letter-exchange": self.dead_name,
            "x-dead-letter-strategy": "at-least-once",
            "x-max-length": self.cfg.max_length,
            "x-overflow": "reject-publish",
        }

    # -- gateway side -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._start(retry_now=True)

    async def _start(self, *, retry_now: bool) -> None:
        if self._closed:
            raise QueueUnavailable("closed")
        async with self._start_lock:
            if self._exchange is not None:
                return
            loop = asyncio.get_running_loop()
            if not retry_now and self._connect_failed_at is not None \
                    and loop.time() - self._connect_failed_at < _CONNECT_RETRY_S:
                raise QueueUnavailable("broker unreachable")
            conn: AbstractRobustConnection | None = None
            try:
                conn = await aio_pika.connect_robust(
                    self.cfg.url, timeout=self._connect_timeout, reconnect_interval=_RECONNECT_INTERVAL_S,
                    client_properties={"connection_name": f"kefu {self.worker_id} put"},
                )
                async with asyncio.timeout(_OP_TIMEOUT_S + self.cfg.partitions * 0.5):
                    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                    exchange = await self._declare(channel)
            except Exception as exc:
                self._connect_failed_at = loop.time()
                if isinstance(exc, ChannelPreconditionFailed):  # names the queue and the argument, no secret
                    log.error("queue %s on %s declared with other arguments: %s", self.cfg.name, self._where, exc)
                else:
                    log.error("RabbitMQ at %s unavailable: %s", self._where, type(exc).__name__)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(_OP_TIMEOUT_S):
                            await conn.close()
                raise QueueUnavailable(type(exc).__name__) from exc
            self._pub, self._pub_channel, self._exchange = conn, channel, exchange
            self._connect_failed_at = None
            log.info("queue %s on %s: %d partitions", self.cfg.name, self._where, self.cfg.partitions)

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        dead_exchange = await channel.declare_exchange(self.dead_name, aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(self.dead_name, durable=True, arguments={"x-queue-type": "quorum"})
        await dead.bind(dead_exchange)
        exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True)
        arguments = self._partition_arguments()
        for i in range(self.cfg.partitions):
            queue = await channel.declare_queue(self.queue_name(i), durable=True, arguments=arguments)
            await queue.bind(exchange, routing_key=str(i))
        return exchange

    async def _ready_exchange(self) -> AbstractExchange:
        """The exchange to publish to, or :class:`QueueUnavailable` at once while the broker is away."""
        if self._closed:
            raise QueueUnavailable("closed")
        if self._exchange is None:
            await self._start(retry_now=False)
        conn, channel, exchange = self._pub, self._pub_channel, self._exchange
        if conn is None or channel is None or exchange is None or conn.is_closed or not conn.connected.is_set() \
                or channel.is_closed:
            raise QueueUnavailable("not connected")
        return exchange

    async def put_once(self, event: Event) -> bool:
        exchange = await self._ready_exchange()  # before the dedup mark: a down broker costs the store nothing
        key = event.dedup_key
        # Provisional until the broker confirms, and for longer than a publish may take.
        first = await record_seen(self.seen, event, self.cfg.confirm_timeout_s + 2 * _OP_TIMEOUT_S)
        if not first:
            return False
        message = aio_pika.Message(encode_event(event), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   message_id=key, content_type="application/json")
        try:
            # A timeout is ambiguous (the broker may still confirm): the id is forgotten anyway, so the
            # platform's retry is taken; a second copy in the queue is answered once thanks to the reply ledger.
            async with asyncio.timeout(self.cfg.confirm_timeout_s):
                await exchange.publish(message, routing_key=str(self.partition_of(event)), mandatory=True)
        except asyncio.CancelledError:
            await asyncio.shield(self._forget(event))
            raise
        except Exception as exc:  # DeliveryError (nack: full), PublishError (unroutable), timeout, connection
            log.warning("broker did not take %s event %s (%s), refused for a retry", event.ref.channel, event.id,
                        type(exc).__name__)
            await self._forget(event)
            raise QueueUnavailable(type(exc).__name__) from exc
        await confirm_seen(self.seen, event)
        return True

    async def _forget(self, event: Event) -> None:
        try:
            await self.seen.forget_seen(event.dedup_key)
        except Exception as exc:
            log.error("could not un-see %s event %s: %s", event.ref.channel, event.id, type(exc).__name__)

    async def depth(self) -> int:
        """Events waiting in the partition queues (ready ones: the broker does not count unacknowledged
        events) plus the ones this worker holds unfinished; also sets ``queue_depth`` inbox and dead."""
        await self._ready_exchange()
        try:
            async with asyncio.timeout(_OP_TIMEOUT_S):
                channel = self._info_channel
                if channel is None or channel.is_closed:
                    assert self._pub is not None
                    channel = self._info_channel = await self._pub.channel(publisher_confirms=False)
                ready = 0
                for i in range(self.cfg.partitions):
                    queue = await channel.declare_queue(self.queue_name(i), passive=True, robust=False)
                    ready += queue.declaration_result.message_count or 0
                dead_queue = await channel.declare_queue(self.dead_name, passive=True, robust=False)
                dead = dead_queue.declaration_result.message_count or 0
        except Exception as exc:
            log.warning("queue depth of %s unknown: %s", self.cfg.name, type(exc).__name__)
            raise QueueUnavailable(type(exc).__name__) from exc
        self.metrics.queue_depth.labels("inbox").set(ready)
        self.metrics.queue_depth.labels("dead").set(dead)
        return ready + sum(part.unsettled() for part in self._owned.values())

    # -- worker side --------------------------------------------------------------------------------------

    async def consume(self, handler: Handler) -> None:
        if self._closed:
            raise QueueUnavailable("closed")
        self._handler = handler
        if self._consuming:
            return
        await self.start()
        await self._connect_consumer()
        self._consuming = True
        await self._tick()
        self._upkeep = asyncio.create_task(self._keep_partitions(), name=f"queue partitions of {self.worker_id}")

    def _consumer_connected(self) -> bool:
        return self._sub is not None and not self._sub.is_closed and self._sub.connected.is_set()

    async def _connect_consumer(self) -> None:
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    await old.close()
        try:
            conn = await aio_pika.connect(self.cfg.url, timeout=self._connect_timeout,
                                          client_properties={"connection_name": f"kefu {self.worker_id} consume"})
        except Exception as exc:
            if not self._sub_down:  # once per outage, not every upkeep round
                log.error("RabbitMQ at %s unavailable for consuming (%s); retrying", self._where, type(exc).__name__)
            self._sub_down = True
            raise QueueUnavailable(type(exc).__name__) from exc
        if self._sub_down:
            log.warning("RabbitMQ at %s is back; consuming again", self._where)
        self._sub_down = False
        conn.close_callbacks.add(self._poke)
        self._sub = conn

    def _poke(self, *_: Any) -> None:
        self._wake.set()

    async def _keep_partitions(self) -> None:
        interval = self.cfg.lease_s / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue partition upkeep failed; trying again")

    async def _tick(self) -> None:
        """One round: drop partitions whose channel died, reconnect, heartbeat, renew leases, hand over what is
        no longer ours, claim what is ours and free."""
        for part in list(self._owned.values()):
            if not part.retiring and part.lost():
                await self._drop(part)
        if not self._consumer_connected():
            loop = asyncio.get_running_loop()
            if loop.time() < self._sub_retry_at:
                return
            try:
                await self._connect_consumer()
            except QueueUnavailable:  # back off: lease_s / 3, doubling up to _RECONNECT_MAX_S
                self._sub_backoff = min(_RECONNECT_MAX_S, max(self.cfg.lease_s / 3, self._sub_backoff * 2))
                self._sub_retry_at = loop.time() + self._sub_backoff
                return
            self._sub_backoff = 0.0
        partitions = range(self.cfg.partitions)
        if self.redis is None:
            assigned = set(partitions)
            held = set(self._owned)
        else:
            try:
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    workers = await self._heartbeat()
                    held = await self._renew(list(self._owned))
            except Exception as exc:  # Redis away: keep what we consume (single active consumer still holds)
                if not self._redis_down:
                    log.warning("queue leases not renewed (%s); consuming on", type(exc).__name__)
                self._redis_down = True
                return
            if self._redis_down:
                log.warning("queue leases renewed again")
            self._redis_down = False
            assigned = {i for i in partitions if workers and workers[i % len(workers)] == self.worker_id}
        for index, part in list(self._owned.items()):
            if part.retiring:
                continue
            if index not in held:
                log.warning("lease on partition %d is held by another worker; handing it over", index)
                self._retire_soon(part)
            elif index not in assigned:
                self._retire_soon(part)
        for index in sorted(assigned - set(self._owned)):
            if self.redis is not None and not await self._claim(index):
                continue
            try:
                await self._open(index)
            except asyncio.CancelledError:
                await asyncio.shield(self._release_lease(index))
                raise
            except Exception as exc:
                log.warning("could not consume %s: %s", self.queue_name(index), type(exc).__name__)
                await self._release_lease(index)

    async def _heartbeat(self) -> list[str]:
        keep_ms = max(10 * self._lease_ms, 60_000)
        members = await self._heartbeat_script(keys=[self.keys.queue_workers(self.cfg.name)],
                                               args=[self.worker_id, self._lease_ms, keep_ms])
        return sorted(_text(m) for m in members)

    async def _renew(self, indexes: list[int]) -> set[int]:
        held = set()
        for index in indexes:
            lease = self.keys.queue_lease(self.cfg.name, index)
            if await self._renew_script(keys=[lease], args=[self.worker_id, self._lease_ms]):
                held.add(index)
        return held

    async def _claim(self, index: int) -> bool:
        try:
            async with asyncio.timeout(_OP_TIMEOUT_S):
                assert self.redis is not None
                return bool(await self.redis.set(self.keys.queue_lease(self.cfg.name, index), self.worker_id, nx=True,
                                                 px=self._lease_ms))
        except Exception as exc:
            log.warning("could not claim partition %d: %s", index, type(exc).__name__)
            return False

    async def _release_lease(self, index: int) -> None:
        if self.redis is None:
            return
        try:
            async with asyncio.timeout(_OP_TIMEOUT_S):
                await self._release_script(keys=[self.keys.queue_lease(self.cfg.name, index)], args=[self.worker_id])
        except Exception as exc:  # it expires by itself
            log.warning("could not release partition %d: %s", index, type(exc).__name__)

    async def _open(self, index: int) -> None:
        assert self._sub is not None
        channel = await self._sub.channel(publisher_confirms=False)
        part = _Partition(index, channel)
        try:
            async with asyncio.timeout(_OP_TIMEOUT_S):
                await channel.set_qos(prefetch_count=self.cfg.prefetch)
                underlay = await channel.get_underlay_channel()
                underlay.on_consumer_cancel_callbacks.add(partial(self._cancelled_by_broker, part))
                channel.close_callbacks.add(self._poke)
                queue: AbstractQueue = await channel.get_queue(self.queue_name(index), ensure=False)
                self._owned[index] = part
                part.tag = await queue.consume(partial(self._on_message, part))
        except BaseException:
            self._owned.pop(index, None)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    await channel.close()
            raise
        log.info("worker %s consumes %s", self.worker_id, self.queue_name(index))

    def _cancelled_by_broker(self, part: _Partition, _frame: Any) -> None:
        part.cancelled = True
        self._wake.set()

    async def _on_message(self, part: _Partition, message: AbstractIncomingMessage) -> None:
        # No await before the event is in its mailbox: deliveries are handled in the order they arrived.
        try:
            event = decode_event(message.body)
        except CodecError as exc:
            self.metrics.queue_dead_lettered.inc()
            log.error("unreadable message on %s parked as dead: %s", self.queue_name(part.index), exc)
            try:
                await message.reject(requeue=False)
            except Exception as exc2:
                log.warning("could not park an unreadable message: %s", type(exc2).__name__)
            return
        try:
            returns = int((message.headers or {}).get("x-delivery-count") or 0)
        except (TypeError, ValueError):
            returns = 0
        if message.redelivered:  # a crashed or departed worker's event (local retries are counted in _handle)
            self.metrics.queue_redeliveries.inc()
        item = _Item(message, Delivery(event, redelivered=bool(message.redelivered), attempt=1 + returns))
        key = event.ref.key
        part.boxes.setdefault(key, deque()).append(item)
        self._wake_conversation(part, key)

    def _wake_conversation(self, part: _Partition, key: str) -> None:
        if part.accepting and self._handler is not None and key in part.boxes and key not in part.drainers:
            part.drainers[key] = asyncio.create_task(self._drain(part, key, self._handler),
                                                     name=f"conversation {key}")

    async def _drain(self, part: _Partition, key: str, handler: Handler) -> None:
        box = part.boxes[key]
        try:
            while box and part.accepting:
                item = box[0]
                async with self._slots:
                    if not part.accepting:
                        break
                    part.running += 1
                    part.idle.clear()
                    try:
                        settled = await self._handle(handler, item)
                    finally:
                        part.running -= 1
                        if not part.running:
                            part.idle.set()
                if settled:
                    box.popleft()
                else:  # run again in its place: nothing of this conversation overtakes it
                    d = item.delivery
                    box[0] = _Item(item.message, Delivery(d.event, redelivered=True, attempt=d.attempt + 1))
        finally:
            # No await between the emptiness check and the removal: a delivery after it starts a new drainer.
            if not box and part.boxes.get(key) is box:
                del part.boxes[key]
            part.drainers.pop(key, None)

    async def _handle(self, handler: Handler, item: _Item) -> bool:
        """Run one delivery; True when it is settled (acknowledged, or rejected as dead)."""
        d = item.delivery
        try:
            await handler(d)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling %s event %s failed (delivery %d)", d.event.ref.channel, d.event.id, d.attempt)
            if d.attempt < self.cfg.delivery_limit:
                self.metrics.queue_redeliveries.inc()
                return False
            self.metrics.queue_dead_lettered.inc()
            log.error("%s event %s parked as dead after %d deliveries", d.event.ref.channel, d.event.id, d.attempt)
            await self._settle(item, dead=True)
            return True
        await self._settle(item, dead=False)
        return True

    async def _settle(self, item: _Item, *, dead: bool) -> None:
        try:
            if dead:
                await item.message.reject(requeue=False)
            else:
                await item.message.ack()
        except Exception as exc:  # the channel is gone: the broker hands the event out again (redelivered)
            log.warning("could not settle %s event %s: %s", item.delivery.event.ref.channel, item.delivery.event.id,
                        type(exc).__name__)

    def _retire_soon(self, part: _Partition) -> None:
        part.retiring = True
        task = asyncio.create_task(self._retire(part, RELEASE_DRAIN_S),
                                   name=f"hand over {self.queue_name(part.index)}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, part: _Partition, drain_s: float) -> int:
        """Hand a partition over: start nothing more, give the running events up to ``drain_s`` (or until
        hurried) to finish, close the channel (the broker gives the rest back, in order), release the lease.
        Returns how many events went back unfinished.

        Never ``basic.cancel`` first, even with the lease in hand: a lease can lapse and be claimed and then
        come back to us (both workers slow under load, the renew script takes a lapsed lease again), so another
        worker may already wait as the single-active standby. A cancel would make it active at once while this
        worker still holds unacknowledged earlier events of the same conversations, which the standby would
        then get *after* later ones (answers out of order: seen under load in the e2e test). Closing the
        channel returns what this worker holds first, in delivery order, whoever consumes next. The cost is
        small: deliveries that arrive during the drain go back with the prefetched ones."""
        part.retiring = True
        part.accepting = False
        if part.running:
            waits = [asyncio.ensure_future(part.idle.wait()), asyncio.ensure_future(part.hurry.wait())]
            try:
                await asyncio.wait(waits, timeout=drain_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        await self._stop_drainers(part)
        handed = part.unsettled()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_OP_TIMEOUT_S):
                await part.channel.close()
        part.boxes.clear()
        if self._owned.get(part.index) is part:
            del self._owned[part.index]
        await self._release_lease(part.index)
        if handed:
            log.info("worker %s handed %d unfinished events of %s back", self.worker_id, handed,
                     self.queue_name(part.index))
        return handed

    async def _drop(self, part: _Partition) -> None:
        """A partition whose channel or consumer died: the broker already took its events back."""
        part.accepting = False
        await self._stop_drainers(part)
        handed = part.unsettled()
        part.boxes.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_OP_TIMEOUT_S):
                await part.channel.close()
        if self._owned.get(part.index) is part:
            del self._owned[part.index]
        await self._release_lease(part.index)
        log.warning("worker %s lost %s (%d events unfinished go to the next consumer)", self.worker_id,
                    self.queue_name(part.index), handed)

    @staticmethod
    async def _stop_drainers(part: _Partition) -> None:
        tasks = list(part.drainers.values())
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_consuming(self, drain_s: float) -> bool:
        if not self._consuming:
            return True
        self._consuming = False
        if self._upkeep is not None:
            self._upkeep.cancel()
            # Bounded: shutdown must not hang on a broker call that ignores the cancel; closing the
            # connection below hands every unfinished event back anyway.
            await asyncio.wait([self._upkeep], timeout=_OP_TIMEOUT_S)
            self._upkeep = None
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Future[int]] = list(self._retiring)
        for part in list(self._owned.values()):
            if part.retiring:  # a handover already under way: cut its wait to ours
                loop.call_later(max(0.0, drain_s), part.hurry.set)
            else:
                part.retiring = True
                tasks.append(asyncio.ensure_future(self._retire(part, drain_s)))
        handed = 0
        if tasks:
            done, late = await asyncio.wait(tasks, timeout=drain_s + 3 * _OP_TIMEOUT_S)
            for task in late:
                task.cancel()
                log.error("handing a partition back did not finish; closing its connection instead")
                handed += 1
            for task in done:
                if task.cancelled() or task.exception() is not None:
                    log.error("handing a partition back failed: %s",
                              "cancelled" if task.cancelled() else type(task.exception()).__name__)
                    handed += 1
                else:
                    handed += task.result()
        self._handler = None
        if self.redis is not None:
            try:
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    await self.redis.zrem(self.keys.queue_workers(self.cfg.name), self.worker_id)
            except Exception as exc:  # the membership expires by itself
                log.warning("could not leave the queue workers: %s", type(exc).__name__)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    await self._sub.close()
            self._sub = None
        if handed:
            log.warning("stopped consuming with %d events unfinished; the next worker gets them again", handed)
        return handed == 0

    async def close(self) -> None:
        if self._consuming:
            await self.stop_consuming(0)
        self._closed = True
        conn, self._pub, self._pub_channel, self._exchange, self._info_channel = self._pub, None, None, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_OP_TIMEOUT_S):
                    await conn.close()
