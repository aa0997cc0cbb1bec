"""The hub: what a gateway does with an event (``accept``) and what a worker
does with it (``_handle``: the turn pipeline, then the channel's sender).

``accept`` only hands the event to the inbox, which deduplicates it and makes
it durable, so adapters acknowledge the platform at once (WeCom retries after
5 s). Where the event waits and who answers it is the inbox's business: the
in-process one (``make run``) or RabbitMQ between gateways and workers
(``bot/inbox``). What happens in a turn is the pipeline's (``bot/pipeline.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from bot.config import HubConfig
from bot.inbox import Delivery, Inbox, Overloaded, StoreUnavailable
from bot.inbox.memory import MemoryInbox
from bot.metrics import Metrics
from bot.pipeline import CAS_ATTEMPTS, Dialogue, Step, TurnContext, TurnPipeline, store_backoff
from bot.state import DialogueState, StateStore, StoreDown, VersionConflict
from bot.turn import TurnHandler
from bot.types import Event, Reply, ReplyChunk

log = logging.getLogger(__name__)

__all__ = ["Hub", "Overloaded", "ReplySink", "StoreUnavailable", "StreamingSink", "share_limits"]

class ReplySink(Protocol):
    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        """Send a turn's replies (possibly none); ``event`` is None for proactive sends."""


@runtime_checkable
class StreamingSink(Protocol):
    async def stream(self, chunk: ReplyChunk) -> None:
        """Show a partial answer while it is generated."""


def share_limits(max_pending: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Each channel's share of ``max_pending`` as a count of events (at least one)."""
    return {channel: max(1, int(max_pending * share)) for channel, share in shares.items()}


class Hub:
    def __init__(
        self,
        cfg: HubConfig,
        store: StateStore,
        handler: TurnHandler,
        metrics: Metrics,
        inbox: Inbox | None = None,
        steps: Sequence[Step] | None = None,
        origin: str = "",
        shares: Mapping[str, float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.handler = handler
        self.origin = origin  # stamped on accepted events, so answers that must come back here find this process
        # Without a shared queue this process answers what it accepts (the embedded default).
        self._answers_own = inbox is None
        # The inbox runs up to max_pending conversations at once; turn slots (max_concurrent_turns)
        # bound only the deciding part, so conversations waiting on a slow send do not block the others.
        # Public channels (``shares``: /chat, the widget) may hold only their share of max_pending, so a
        # flood on them cannot push the platform channels into 503.
        self.inbox: Inbox = inbox or MemoryInbox(store, metrics, max_pending=cfg.max_pending,
                                                 max_concurrent=cfg.max_pending,
                                                 channel_limits=share_limits(cfg.max_pending, shares or {}))
        self.pipeline = TurnPipeline(
            store, steps if steps is not None else [Dialogue(handler)], self._send, metrics,
            ledger=self.inbox.redelivers, slots=asyncio.Semaphore(cfg.max_concurrent_turns),
        )
        self._sinks: dict[str, ReplySink] = {}
        self._consuming = False
        self._closing = False

    def register(self, channel: str, sink: ReplySink) -> None:
        self._sinks[channel] = sink

    def sink(self, channel: str) -> ReplySink:
        return self._sinks[channel]

    async def accept(self, event: Event) -> bool:
        """Take an event for answering. False: a redelivery already taken. Raises
        :class:`Overloaded` (the platform should retry; nothing was taken)."""
        channel = event.ref.channel
        if channel not in self._sinks:
            raise ValueError(f"no channel registered as {channel!r}")
        if self._closing:
            self.metrics.events_rejected.labels(channel).inc()
            raise Overloaded("shutting down")
        if self._answers_own and not self._consuming:
            await self.start_consuming()
        if self.origin and not event.origin:
            event = dataclasses.replace(event, origin=self.origin)
        try:
            first = await self.inbox.put_once(event)
        except Overloaded:
            self.metrics.events_rejected.labels(channel).inc()
            raise
        if not first:
            self.metrics.events_duplicate.labels(channel).inc()
            log.info("duplicate %s event %s dropped", channel, event.id)
            return False
        self.metrics.events_accepted.labels(channel).inc()
        return True

    async def start_consuming(self) -> None:
        """Become a worker: answer events from the inbox."""
        if not self._consuming:
            self._consuming = True
            await self.inbox.consume(self._handle)

    async def _handle(self, delivery: Delivery) -> None:
        event = delivery.event
        if event.ref.channel not in self._sinks:  # a worker configured without this channel: park it, loudly
            raise LookupError(f"this worker has no channel {event.ref.channel!r}")
        ctx = TurnContext(event, redelivered=delivery.redelivered, stream=self._streamer(event))
        for wait in store_backoff():
            try:
                await self.pipeline.run(ctx, self.cfg.turn_deadline_s)
                break
            except StoreDown as exc:
                # Not a failed turn: the event stays with this worker (unacknowledged) and runs again when
                # the store is back; at shutdown the inbox hands it to another worker.
                log.warning("state store unreachable (%s) during %s event %s; retrying in %.1fs", exc,
                            event.ref.channel, event.id, wait)
                await asyncio.sleep(wait)
                ctx = TurnContext(event, redelivered=True, stream=ctx.stream)  # may have saved: check the ledger
        self.metrics.turns.labels(event.ref.channel, ctx.outcome).inc()
        if ctx.outcome != "duplicate":
            self.metrics.turn_latency.labels(event.ref.channel).observe(max(0.0, time.time() - event.received_at))

    async def _send(self, event: Event, replies: Sequence[Reply]) -> None:
        await self._sinks[event.ref.channel].deliver(event, replies)

    def _streamer(self, event: Event):
        sink = self._sinks[event.ref.channel]
        if not isinstance(sink, StreamingSink):
            async def ignore(_so_far: str, _delta: str) -> None:
                return None

            return ignore

        async def forward(so_far: str, delta: str) -> None:
            try:
                await sink.stream(ReplyChunk(event.ref, event.id, so_far, delta))
            except Exception:
                log.exception("streaming a partial answer to %s failed", event.ref.channel)

        return forward

    async def update_state(self, key: str, change) -> DialogueState:
        """Apply ``change(state) -> state`` with compare-and-set, for out-of-turn
        updates such as an agent taking over or releasing a conversation."""
        for attempt in range(CAS_ATTEMPTS):
            state = await self.store.load(key)
            try:
                return await self.store.save(change(state), expected_version=state.version)
            except VersionConflict:
                self.metrics.state_conflicts.inc()
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise RuntimeError(f"could not update state of {key}")

    async def drain(self, within_s: float) -> bool:
        """Wait until every accepted event is answered; False on timeout (for tests and shutdown)."""
        try:
            async with asyncio.timeout(within_s):
                while await self.inbox.depth():  # noqa: ASYNC110 (depth may be a broker call, not an event)
                    await asyncio.sleep(0.01)
            return True
        except TimeoutError:
            return False

    async def close(self, drain_s: float = 10.0) -> None:
        """Refuse new events (platforms retry them), finish the turns in flight for up to ``drain_s``,
        and hand back the rest: to another worker through the broker, or un-seen so the platform's
        retry is taken. Nothing accepted is dropped."""
        self._closing = True
        if self._consuming:
            await self.inbox.stop_consuming(drain_s)
        await self.inbox.close()

    async def pending(self) -> int:
        return await self.inbox.depth()
