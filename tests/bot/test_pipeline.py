"""The turn pipeline: steps in order, compare-and-set retries, and the reply ledger that
answers a redelivered event once and with the same words."""

from __future__ import annotations

from collections.abc import Sequence

from bot import codec
from bot.answer import StreamFn
from bot.metrics import Metrics
from bot.pipeline import Dialogue, TurnContext, TurnPipeline
from bot.state import DialogueState
from bot.state.memory import MemoryStore
from bot.turn import TurnResult
from bot.types import ConversationRef, Event, EventKind, Reply

REF = ConversationRef(channel="test", conversation_id="u1", user_id="u1")


def event(i: str, text: str = "在吗") -> Event:
    return Event(id=i, kind=EventKind.MESSAGE, ref=REF, text=text)


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        self.calls += 1
        if event.text == "boom":
            raise RuntimeError("kaput")
        reply = Reply(event.ref, f"第{self.calls}次生成：{event.text}", in_reply_to=event.id)
        return TurnResult(state.with_turn("user", event.text or "", 10), (reply,))


class Sent:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, event: Event, replies: Sequence[Reply]) -> None:
        self.texts += [r.text for r in replies]


def pipeline(store: MemoryStore, handler: Counting, sent: Sent) -> TurnPipeline:
    return TurnPipeline(store, [Dialogue(handler)], sent, Metrics(), ledger=True)


async def test_a_turn_saves_state_and_replies_together_then_marks_them_sent() -> None:
    store, handler, sent = MemoryStore(60, 86400), Counting(), Sent()
    ctx = TurnContext(event("m1"))
    await pipeline(store, handler, sent).run(ctx, 5)
    assert sent.texts == ["第1次生成：在吗"]
    assert (await store.load(REF.key)).version == 1
    assert await store.ledger(REF.key, event("m1").dedup_key) == ""  # sent: no text kept
    assert set(ctx.timings) >= {"load", "dialogue", "save", "deliver"}


async def test_a_redelivery_after_the_send_sends_nothing() -> None:
    store, handler, sent = MemoryStore(60, 86400), Counting(), Sent()
    p = pipeline(store, handler, sent)
    await p.run(TurnContext(event("m1")), 5)
    again = TurnContext(event("m1"), redelivered=True)
    await p.run(again, 5)
    assert sent.texts == ["第1次生成：在吗"] and handler.calls == 1
    assert again.outcome == "duplicate"


async def test_a_redelivery_after_a_crash_before_the_send_sends_the_recorded_answer() -> None:
    store, handler, sent = MemoryStore(60, 86400), Counting(), Sent()

    async def crash(_event: Event, _replies: Sequence[Reply]) -> None:
        raise SystemExit  # the process dies between "decided and saved" and "sent"

    first = TurnPipeline(store, [Dialogue(handler)], crash, Metrics(), ledger=True)
    try:
        await first.run(TurnContext(event("m1")), 5)
    except SystemExit:
        pass
    recorded = await store.ledger(REF.key, event("m1").dedup_key)
    assert recorded and codec.decode_replies(recorded)[0].text == "第1次生成：在吗"
    again = TurnContext(event("m1"), redelivered=True)
    await pipeline(store, handler, sent).run(again, 5)
    assert sent.texts == ["第1次生成：在吗"]  # the same words, not a second generation
    assert handler.calls == 1 and again.outcome == "resent"
    assert (await store.load(REF.key)).version == 1  # and the turn was not applied twice


async def test_a_failed_turn_is_answered_with_an_apology_once() -> None:
    store, handler, sent = MemoryStore(60, 86400), Counting(), Sent()
    p = pipeline(store, handler, sent)
    ctx = TurnContext(event("m1", "boom"))
    await p.run(ctx, 5)
    assert ctx.outcome == "error" and "抱歉" in sent.texts[0]
    await p.run(TurnContext(event("m1", "boom"), redelivered=True), 5)
    assert len(sent.texts) == 1


async def test_without_a_redelivering_queue_no_ledger_is_kept() -> None:
    store, handler, sent = MemoryStore(60, 86400), Counting(), Sent()
    await TurnPipeline(store, [Dialogue(handler)], sent, Metrics(), ledger=False).run(TurnContext(event("m1")), 5)
    assert await store.ledger(REF.key, event("m1").dedup_key) is None
    assert sent.texts == ["第1次生成：在吗"]


async def test_a_send_that_needs_redis_waits_for_it_instead_of_dropping_the_answer() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    store, handler = MemoryStore(60, 86400), Counting()
    attempts: list[str] = []

    async def flaky(_event: Event, replies: Sequence[Reply]) -> None:
        attempts.append(replies[0].text)
        if len(attempts) < 3:
            raise RedisConnectionError("Connection refused")  # e.g. the access-token cache during a restart

    ctx = TurnContext(event("m1"))
    await TurnPipeline(store, [Dialogue(handler)], flaky, Metrics(), ledger=True).run(ctx, 5)
    assert attempts == ["第1次生成：在吗"] * 3 and ctx.outcome == "ok"
    assert handler.calls == 1
    assert await store.ledger(REF.key, event("m1").dedup_key) == ""
