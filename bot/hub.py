"""The hub: accept -> dedup -> per-conversation mailbox -> turn -> deliver.

``accept`` only deduplicates and enqueues, so adapters acknowledge the platform
at once (WeCom retries after 5 s). Each conversation has a mailbox drained by
one task, so its messages are answered in arrival order, while different
conversations run concurrently up to ``max_concurrent_turns``. The in-process
mailbox is the queue today; a Redis Streams queue between gateways and GPU
workers replaces :meth:`_enqueue` and the drain loop without touching turns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from bot import messages
from bot.config import HubConfig
from bot.metrics import Metrics
from bot.state import DialogueState, StateStore, VersionConflict
from bot.turn import TurnHandler, TurnResult
from bot.types import Event, Reply, ReplyChunk

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 12  # with jittered backoff; contention needs two processes on one conversation


class Overloaded(Exception):
    """The event was not taken; the platform should retry later (nothing is lost)."""


class StoreUnavailable(Overloaded):
    """The state store cannot record the event, so it cannot be taken safely."""


class ReplySink(Protocol):
    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        """Send a turn's replies (possibly none); ``event`` is None for proactive sends."""


@runtime_checkable
class StreamingSink(Protocol):
    async def stream(self, chunk: ReplyChunk) -> None:
        """Show a partial answer while it is generated."""


class Hub:
    def __init__(self, cfg: HubConfig, store: StateStore, handler: TurnHandler, metrics: Metrics) -> None:
        self.cfg = cfg
        self.store = store
        self.handler = handler
        self.metrics = metrics
        self._sinks: dict[str, ReplySink] = {}
        self._mailboxes: dict[str, deque[Event]] = {}
        self._drainers: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(cfg.max_concurrent_turns)
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    def register(self, channel: str, sink: ReplySink) -> None:
        self._sinks[channel] = sink

    def sink(self, channel: str) -> ReplySink:
        return self._sinks[channel]

    async def accept(self, event: Event) -> bool:
        """Take an event for answering. False: a redelivery already taken."""
        channel = event.ref.channel
        if channel not in self._sinks:
            raise ValueError(f"no channel registered as {channel!r}")
        if self._closing:
            self.metrics.events_rejected.labels(channel).inc()
            raise Overloaded("shutting down")
        if self._pending >= self.cfg.max_pending:
            self.metrics.events_rejected.labels(channel).inc()
            raise Overloaded(f"{self._pending} events pending")
        try:
            first = await self.store.first_seen(event.dedup_key)
        except Exception as exc:
            self.metrics.events_rejected.labels(channel).inc()
            log.error("state store unavailable, %s event %s refused for a retry: %s", channel, event.id, exc)
            raise StoreUnavailable(str(exc)) from exc
        if not first:
            self.metrics.events_duplicate.labels(channel).inc()
            log.info("duplicate %s event %s dropped", channel, event.id)
            return False
        self.metrics.events_accepted.labels(channel).inc()
        self._enqueue(event)
        return True

    def _enqueue(self, event: Event) -> None:
        key = event.ref.key
        self._pending += 1
        self.metrics.pending.set(self._pending)
        self._idle.clear()
        self._mailboxes.setdefault(key, deque()).append(event)
        if key not in self._drainers:
            self._drainers[key] = asyncio.create_task(self._drain(key), name=f"conversation {key}")

    async def _drain(self, key: str) -> None:
        box = self._mailboxes[key]
        try:
            while box:
                event = box[0]
                async with self._slots:
                    await self._run_turn(event)
                box.popleft()
                self._pending -= 1
                self.metrics.pending.set(self._pending)
        finally:
            # No await between the emptiness check and the removal: an accept
            # that lands after this point starts a fresh drainer.
            if not box:
                del self._mailboxes[key]
            del self._drainers[key]
            if not self._drainers:
                self._idle.set()

    async def _run_turn(self, event: Event) -> None:
        channel = event.ref.channel
        sink = self._sinks[channel]
        stream = self._streamer(sink, event)
        outcome = "ok"
        replies: tuple[Reply, ...] = ()
        try:
            async with asyncio.timeout(self.cfg.turn_deadline_s):
                replies = await self._turn_with_retries(event, stream)
        except TimeoutError:
            outcome = "timeout"
            log.error("turn for %s event %s passed its %.0fs deadline", channel, event.id, self.cfg.turn_deadline_s)
        except Exception:
            outcome = "error"
            log.exception("turn for %s event %s failed", channel, event.id)
        if outcome != "ok":
            lang = event.lang or "zh"
            replies = (Reply(event.ref, messages.text("apology", lang), in_reply_to=event.id, source="system"),)
        try:
            await sink.deliver(event, replies)
        except Exception:
            outcome = "send_error"
            self.metrics.send_errors.labels(channel).inc()
            log.exception("%s failed to deliver the answer to event %s", channel, event.id)
        self.metrics.turns.labels(channel, outcome).inc()
        self.metrics.turn_latency.labels(channel).observe(max(0.0, time.time() - event.received_at))

    async def _turn_with_retries(self, event: Event, stream) -> tuple[Reply, ...]:
        for attempt in range(_CAS_ATTEMPTS):
            state = await self.store.load(event.ref.key)
            result: TurnResult = await self.handler.handle(event, state, stream)
            try:
                await self.store.save(result.state, expected_version=state.version)
                return result.replies
            except VersionConflict:
                self.metrics.state_conflicts.inc()
                log.info("state of %s changed under turn %s; running it again", event.ref.key, event.id)
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise RuntimeError(f"could not save state of {event.ref.key} after {_CAS_ATTEMPTS} attempts")

    @staticmethod
    def _streamer(sink: ReplySink, event: Event):
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
        for attempt in range(_CAS_ATTEMPTS):
            state = await self.store.load(key)
            try:
                return await self.store.save(change(state), expected_version=state.version)
            except VersionConflict:
                self.metrics.state_conflicts.inc()
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise RuntimeError(f"could not update state of {key}")

    async def drain(self, within_s: float) -> bool:
        """Wait until every accepted event is answered; False on timeout."""
        try:
            async with asyncio.timeout(within_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def close(self, drain_s: float = 10.0) -> None:
        """Refuse new events (platforms retry them), answer what was accepted,
        and un-see whatever is still unanswered after ``drain_s`` so its
        redelivery is taken instead of dropped as a duplicate."""
        self._closing = True
        if await self.drain(drain_s):
            return
        log.warning("shutting down with %d events unanswered; their redeliveries will be answered", self._pending)
        for task in list(self._drainers.values()):
            task.cancel()
        await asyncio.gather(*self._drainers.values(), return_exceptions=True)
        for box in self._mailboxes.values():
            for event in box:
                try:
                    await self.store.forget_seen(event.dedup_key)
                except Exception:
                    log.exception("could not un-see %s event %s", event.ref.channel, event.id)
        self._mailboxes.clear()

    @property
    def pending(self) -> int:
        return self._pending
