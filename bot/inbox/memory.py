"""In-process inbox: the embedded default (``queue.url`` empty, ``make run``).

One mailbox per conversation, drained by one task, so a conversation's events
run in arrival order while different conversations run concurrently up to
``max_concurrent``. Channels named in ``channel_limits`` may hold at most that
many of the ``max_pending`` events (their share), so a flood on one public
channel (``/chat``, the widget) answers that channel 503 while WeCom and
DingTalk events are still taken. Nothing survives the process: at shutdown whatever is
still unanswered is un-seen, so the platform's retry is taken (by this process
after a restart, or by another).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Mapping

from bot.inbox.base import Delivery, Handler, Overloaded, SeenSet, confirm_seen, record_seen
from bot.metrics import Metrics
from bot.types import Event

log = logging.getLogger(__name__)

_DEAD_KEPT = 1000  # parked events kept for inspection
_PENDING_S = 2.0  # a provisional dedup mark older than this is taken over (the put is one Redis round trip)


class MemoryInbox:
    redelivers = False

    def __init__(self, seen: SeenSet, metrics: Metrics, *, max_pending: int, max_concurrent: int,
                 delivery_limit: int = 5, channel_limits: Mapping[str, int] | None = None) -> None:
        self.seen = seen
        self.metrics = metrics
        self.max_pending = max_pending
        self.channel_limits = dict(channel_limits or {})  # channel -> the most events it may hold pending
        self._held: Counter[str] = Counter()  # channel -> events pending, counted from before the dedup mark
        self.delivery_limit = delivery_limit
        self._slots = asyncio.Semaphore(max_concurrent)
        self._mailboxes: dict[str, deque[Delivery]] = {}
        self._drainers: dict[str, asyncio.Task[None]] = {}
        self._handler: Handler | None = None
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.dead: deque[Event] = deque(maxlen=_DEAD_KEPT)

    async def start(self) -> None:
        return None

    async def put_once(self, event: Event) -> bool:
        if self._closing:
            raise Overloaded("shutting down")
        if self._pending >= self.max_pending:
            raise Overloaded(f"{self._pending} events pending")
        channel = event.ref.channel
        limit = self.channel_limits.get(channel)
        if limit is not None and self._held[channel] >= limit:
            raise Overloaded(f"channel {channel} holds its share of pending events ({limit})")
        self._held[channel] += 1  # before the await: concurrent puts cannot all pass the check
        try:
            first = await record_seen(self.seen, event, _PENDING_S)
        except BaseException:
            self._release(channel)
            raise
        if not first:
            self._release(channel)
            return False
        self._pending += 1
        self.metrics.pending.set(self._pending)
        self._idle.clear()
        key = event.ref.key
        self._mailboxes.setdefault(key, deque()).append(Delivery(event))
        self._wake(key)
        await confirm_seen(self.seen, event)
        return True

    def _wake(self, key: str) -> None:
        if self._handler is not None and key in self._mailboxes and key not in self._drainers:
            self._drainers[key] = asyncio.create_task(self._drain(key), name=f"conversation {key}")

    async def consume(self, handler: Handler) -> None:
        self._handler = handler
        for key in list(self._mailboxes):
            self._wake(key)

    async def _drain(self, key: str) -> None:
        box = self._mailboxes[key]
        handler = self._handler
        assert handler is not None
        try:
            while box:
                delivery = box[0]
                async with self._slots:
                    try:
                        await handler(delivery)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("handling %s event %s failed (delivery %d)", delivery.event.ref.channel,
                                      delivery.event.id, delivery.attempt)
                        if delivery.attempt < self.delivery_limit:
                            self.metrics.queue_redeliveries.inc()
                            box[0] = Delivery(delivery.event, redelivered=True, attempt=delivery.attempt + 1)
                            continue
                        self.metrics.queue_dead_lettered.inc()
                        self.dead.append(delivery.event)
                        log.error("%s event %s parked as dead after %d deliveries", delivery.event.ref.channel,
                                  delivery.event.id, delivery.attempt)
                box.popleft()
                self._pending -= 1
                self._release(delivery.event.ref.channel)
                self.metrics.pending.set(self._pending)
        finally:
            # No await between the emptiness check and the removal: a put that
            # lands after this point starts a fresh drainer.
            if not box:
                del self._mailboxes[key]
            del self._drainers[key]
            if not self._drainers and not self._mailboxes:
                self._idle.set()

    async def stop_consuming(self, drain_s: float) -> bool:
        self._closing = True
        if self._pending == 0:
            return True
        try:
            async with asyncio.timeout(drain_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            pass
        log.warning("shutting down with %d events unanswered; their redeliveries will be answered", self._pending)
        self._handler = None
        tasks = list(self._drainers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for box in self._mailboxes.values():
            for delivery in box:
                try:
                    await self.seen.forget_seen(delivery.event.dedup_key)
                except Exception:
                    log.exception("could not un-see %s event %s", delivery.event.ref.channel, delivery.event.id)
        self._mailboxes.clear()
        self._held.clear()
        self._pending = 0
        self.metrics.pending.set(0)
        return False

    def _release(self, channel: str) -> None:
        self._held[channel] -= 1
        if self._held[channel] <= 0:
            del self._held[channel]

    def held(self, channel: str) -> int:
        """Events of ``channel`` pending now (for tests and metrics)."""
        return self._held[channel]

    async def depth(self) -> int:
        self.metrics.queue_depth.labels("inbox").set(self._pending)
        self.metrics.queue_depth.labels("dead").set(len(self.dead))
        return self._pending

    async def close(self) -> None:
        await self.stop_consuming(0)
