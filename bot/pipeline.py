"""A turn as a pipeline of small steps around one typed :class:`TurnContext`.

    ledger ─> [load ─> dialogue ─> (safety, cache …) ─> save] ─> deliver
               └── run again from ``load`` when the compare-and-set save loses a race

``ledger`` (only when the inbox can redeliver) makes an event delivered again
answered once, with the same words: if its replies were already sent it
stops, if they were recorded but not sent it sends those. The bracketed part
decides: a step reads and changes ``ctx.state`` / ``ctx.replies``, and may set
``ctx.decided`` so later deciding steps are skipped (a safety refusal, a cache
hit). ``save`` writes the new state and the replies in one atomic step. Later
features (input and output filters, the Q&A cache, A/B arms) are one more
:class:`Step` in the list, not a change to the hub. Each step is timed in
``kefu_turn_step_seconds{step}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot import codec, messages
from bot.answer import StreamFn, no_stream
from bot.metrics import Metrics
from bot.state import SENT, DialogueState, LedgerEntry, StateStore, StoreDown, VersionConflict
from bot.state.redis import store_trouble
from bot.turn import TurnHandler
from bot.types import Event, Reply

log = logging.getLogger(__name__)

MARK_SENT_PATIENCE_S = 30.0
AFTER_ASYNC_S = 5.0
CAS_ATTEMPTS = 12  # with jittered backoff; contention needs two processes on one conversation


def store_backoff(first_s: float = 0.1, cap_s: float = 5.0) -> Iterator[float]:
    """Jittered, doubling waits for work that waits out an unreachable Redis (never ends by itself)."""
    wait = first_s
    while True:
        yield wait * random.uniform(0.5, 1.0)
        wait = min(cap_s, wait * 2)


@dataclass(slots=True)
class TurnContext:
    """Everything one turn knows; mutable because each step adds to it."""

    event: Event
    redelivered: bool = False
    stream: StreamFn = no_stream
    state: DialogueState | None = None
    loaded: DialogueState | None = None  # the state as the turn found it, before any step changed it
    replies: tuple[Reply, ...] = ()
    decided: bool = False  # a deciding step answered; the rest of the deciding steps are skipped
    # ok | timeout | error | send_error; from the ledger: resent (the recorded replies go out again),
    # duplicate (they were sent already: nothing left to do)
    outcome: str = "ok"
    timings: dict[str, float] = field(default_factory=dict)
    # The A/B arm (bot/ab/), set by the ``ab`` step: ``arm`` is "<test>/<arm>" as the archive keeps it,
    # ``arm_adapter`` the LoRA adapter the arm's model calls use (None: the base model).
    arm: str | None = None
    ab_test: str | None = None
    arm_adapter: str | None = None


class Step(Protocol):
    name: str
    # A step may also set ``checks = True``: it checks what was decided (the output filter) and runs even
    # after a deciding step set ``ctx.decided``.

    async def run(self, ctx: TurnContext) -> None: ...


class LoadState:
    name = "load"

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def run(self, ctx: TurnContext) -> None:
        ctx.state = await self.store.load(ctx.event.ref.key)


class Dialogue:
    """The turn handler (the dialogue graph or the simple responder) decides replies and the next state."""

    name = "dialogue"

    def __init__(self, handler: TurnHandler) -> None:
        self.handler = handler

    async def run(self, ctx: TurnContext) -> None:
        assert ctx.state is not None
        result = await self.handler.handle(ctx.event, ctx.state, ctx.stream)
        ctx.state, ctx.replies, ctx.decided = result.state, result.replies, True


class TurnPipeline:
    def __init__(
        self,
        store: StateStore,
        deciding: Sequence[Step],
        deliver: Callable[[Event, Sequence[Reply]], Awaitable[None]],
        metrics: Metrics,
        *,
        ledger: bool,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.store = store
        # Called once per event after its answer went out (not for a duplicate, which sends nothing), with
        # the outcome known: the conversation archive. Synchronous and expected not to block; an exception
        # is logged and the turn goes on.
        self.after: list[Callable[[TurnContext], None]] = []
        # Awaited in turn once the turn is saved and before its answer is sent, each within AFTER_ASYNC_S:
        # work that needs I/O and must be visible by the time the customer reads the answer (the agent
        # console's inbox, bot/console/desk.py: "已为您转接人工" never arrives before the row an agent
        # sees). A failure or a timeout is logged only; the answer still goes out.
        self.saved_async: list[Callable[[TurnContext], Awaitable[None]]] = []
        self.load = LoadState(store)
        self.deciding = tuple(deciding)
        self.deliver = deliver
        self.metrics = metrics
        self.ledger = ledger
        self._step_metric: dict[str, Any] = {}
        # Turn slots bound the deciding part only (model, dialogue): a slow platform send (DingTalk's
        # 20 a minute per robot) waits without holding a slot other conversations need.
        self.slots: contextlib.AbstractAsyncContextManager[Any] = (
            slots if slots is not None else contextlib.nullcontext()
        )

    async def run(self, ctx: TurnContext, deadline_s: float) -> None:
        """Run the turn; a turn that fails or passes its deadline is answered with an apology (marked sent
        like any answer, so a redelivery does not answer twice). :class:`StoreDown` is not a failed turn:
        it propagates, and the caller runs the event again once the store is back."""
        event = ctx.event
        # Not only redeliveries: a publish whose confirm was lost is refused at the gateway and taken again
        # from the platform's retry, so the same event can also arrive as a new message.
        if self.ledger:
            await self._timed("ledger", self._from_ledger, ctx)
            if ctx.outcome == "duplicate":
                return
        if ctx.outcome != "resent":
            try:
                async with self.slots, asyncio.timeout(deadline_s):
                    await self._decide(ctx)
            except StoreDown:
                raise
            except TimeoutError:
                ctx.outcome = "timeout"
                log.error("turn for %s event %s passed its %.0fs deadline", event.ref.channel, event.id, deadline_s)
            except Exception:
                ctx.outcome = "error"
                log.exception("turn for %s event %s failed", event.ref.channel, event.id)
            if ctx.outcome != "ok":
                text = messages.text("apology", event.lang or "zh")
                ctx.replies = (Reply(event.ref, text, in_reply_to=event.id, source="system"),)
        for async_hook in self.saved_async:
            try:
                async with asyncio.timeout(AFTER_ASYNC_S):
                    await async_hook(ctx)
            except StoreDown as exc:
                log.warning("saved-turn hook %s skipped for %s event %s: %s",
                            getattr(async_hook, "__qualname__", async_hook), event.ref.channel, event.id, exc)
            except Exception:
                log.exception("saved-turn hook %s failed for %s event %s",
                              getattr(async_hook, "__qualname__", async_hook), event.ref.channel, event.id)
        await self._timed("deliver", self._deliver, ctx)
        for hook in self.after:
            try:
                hook(ctx)
            except Exception:
                log.exception("after-turn hook %s failed for %s event %s", getattr(hook, "__qualname__", hook),
                              event.ref.channel, event.id)

    async def _decide(self, ctx: TurnContext) -> None:
        for attempt in range(CAS_ATTEMPTS):
            ctx.decided = False
            await self._timed("load", self.load.run, ctx)
            assert ctx.state is not None
            ctx.loaded = ctx.state
            loaded = ctx.state.version
            for step in self.deciding:
                if ctx.decided and not getattr(step, "checks", False):
                    continue  # decided: only steps that check the decision (the output filter) still run
                await self._timed(step.name, step.run, ctx)
            entry = LedgerEntry(ctx.event.dedup_key, codec.encode_replies(ctx.replies)) if self.ledger else None
            started = time.perf_counter()
            try:
                ctx.state = await self.store.save(ctx.state, expected_version=loaded, ledger=entry)
                return
            except VersionConflict:
                self.metrics.state_conflicts.inc()
                log.info("state of %s changed under turn %s; running it again", ctx.event.ref.key, ctx.event.id)
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
            finally:
                self._observe("save", ctx, time.perf_counter() - started)
        raise RuntimeError(f"could not save the state after {CAS_ATTEMPTS} attempts")

    async def _from_ledger(self, ctx: TurnContext) -> None:
        recorded = await self.store.ledger(ctx.event.ref.key, ctx.event.dedup_key)
        if recorded is None:
            return
        if recorded == SENT:
            ctx.outcome = "duplicate"
            log.info("%s event %s was answered before its redelivery; not sent again", ctx.event.ref.channel,
                     ctx.event.id)
            return
        ctx.replies, ctx.outcome = codec.decode_replies(recorded), "resent"
        log.info("%s event %s redelivered after its answer was decided; sending that answer", ctx.event.ref.channel,
                 ctx.event.id)

    async def _deliver(self, ctx: TurnContext) -> None:
        """A failed send is counted, not retried by redelivery: the channels already retry what is safe to
        retry, and a send that broke off may have arrived (a second copy is worse than none). Redis being
        away is different: the send did not leave, so the recorded replies are sent once it is back."""
        for wait in store_backoff():
            try:
                await self.deliver(ctx.event, ctx.replies)
                break
            except Exception as exc:
                if not store_trouble(exc):
                    ctx.outcome = "send_error"
                    self.metrics.send_errors.labels(ctx.event.ref.channel).inc()
                    log.exception("%s failed to deliver the answer to event %s", ctx.event.ref.channel, ctx.event.id)
                    break
                # Redis (token cache, send gate, event log) away: nothing left yet. The event stays
                # unacknowledged meanwhile; at shutdown the next worker sends the recorded replies.
                log.warning("Redis unreachable while sending the answer to %s event %s; again in %.1fs",
                            ctx.event.ref.channel, ctx.event.id, wait)
                await asyncio.sleep(wait)
        if self.ledger:  # also after a failed turn's apology, so a redelivery does not answer a second time
            await self._mark_sent(ctx)

    async def _mark_sent(self, ctx: TurnContext) -> None:
        """Tried for a while when Redis is away (the replies' text should not stay behind), then given up:
        the send happened, and the acknowledgement that follows keeps the event from coming back."""
        deadline = time.monotonic() + MARK_SENT_PATIENCE_S
        for wait in store_backoff(cap_s=2.0):
            try:
                await self.store.mark_sent(ctx.event.ref.key, ctx.event.dedup_key)
                return
            except StoreDown:
                if time.monotonic() > deadline:
                    log.warning("could not mark %s event %s as sent", ctx.event.ref.channel, ctx.event.id)
                    return
                await asyncio.sleep(wait)

    async def _timed(self, name: str, fn: Callable[[TurnContext], Awaitable[None]], ctx: TurnContext) -> None:
        started = time.perf_counter()
        try:
            await fn(ctx)
        finally:
            self._observe(name, ctx, time.perf_counter() - started)

    def _observe(self, name: str, ctx: TurnContext, seconds: float) -> None:
        ctx.timings[name] = ctx.timings.get(name, 0.0) + seconds
        child = self._step_metric.get(name)
        if child is None:  # labels() costs more than the observation; steps are few
            child = self._step_metric[name] = self.metrics.turn_step.labels(name)
        child.observe(seconds)
