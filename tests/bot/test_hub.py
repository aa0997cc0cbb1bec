"""The hub's guarantees: dedup, per-conversation order, cross-conversation
concurrency, deadlines and no lost update across processes sharing Redis."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from bot.answer import StreamFn
from bot.config import HubConfig
from bot.hub import Hub, Overloaded
from bot.metrics import Metrics
from bot.state import DialogueState
from bot.state.keys import Keys
from bot.state.memory import MemoryStore
from bot.state.redis import RedisStore
from bot.turn import TurnResult
from bot.types import ConversationRef, Event, EventKind, Reply


class RecordingSink:
    def __init__(self) -> None:
        self.delivered: list[tuple[str | None, tuple[str, ...]]] = []
        self.done = asyncio.Event()
        self.expected = 0

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        self.delivered.append((event.id if event else None, tuple(r.text for r in replies)))
        if len(self.delivered) >= self.expected:
            self.done.set()


class CountingHandler:
    """Echoes the text after a random pause and counts turns in the state."""

    def __init__(self, gate: dict[str, asyncio.Event] | None = None) -> None:
        self.gate = gate or {}

    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        if (g := self.gate.get(event.text or "")) is not None:
            await g.wait()
        await asyncio.sleep(random.random() / 200)
        n = state.slots.get("n", 0) + 1
        new = state.replace(slots={"n": n})
        return TurnResult(new, (Reply(event.ref, f"{event.text}#{n}", in_reply_to=event.id),))


def event(i: int | str, user: str = "u1", text: str | None = None) -> Event:
    ref = ConversationRef(channel="test", conversation_id=user, user_id=user)
    return Event(id=str(i), kind=EventKind.MESSAGE, ref=ref, text=text if text is not None else str(i))


def make_hub(handler: object, store: object | None = None, **cfg: object) -> tuple[Hub, RecordingSink]:
    hub = Hub(HubConfig(**cfg), store or MemoryStore(60, 86400), handler, Metrics())  # type: ignore[arg-type]
    sink = RecordingSink()
    hub.register("test", sink)
    return hub, sink


async def test_redeliveries_produce_one_answer() -> None:
    hub, sink = make_hub(CountingHandler())
    results = [await hub.accept(event("m1")) for _ in range(3)]
    assert results == [True, False, False]
    assert await hub.drain(5)
    assert sink.delivered == [("m1", ("m1#1",))]


async def test_one_conversation_is_answered_in_arrival_order() -> None:
    hub, sink = make_hub(CountingHandler())
    await asyncio.gather(*(hub.accept(event(i)) for i in range(30)))
    assert await hub.drain(10)
    assert [d[0] for d in sink.delivered] == [str(i) for i in range(30)]
    assert [d[1][0] for d in sink.delivered] == [f"{i}#{i + 1}" for i in range(30)]


async def test_conversations_run_concurrently() -> None:
    gate = asyncio.Event()
    hub, sink = make_hub(CountingHandler({"slow": gate}))
    sink.expected = 1
    await hub.accept(event("a", user="alice", text="slow"))
    await hub.accept(event("b", user="bob", text="fast"))
    await asyncio.wait_for(sink.done.wait(), 5)
    assert sink.delivered == [("b", ("fast#1",))]  # bob answered while alice still waits
    gate.set()
    assert await hub.drain(5)
    assert len(sink.delivered) == 2


async def test_a_failing_turn_gets_an_apology_and_the_next_one_runs() -> None:
    class Boom(CountingHandler):
        async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
            if event.text == "boom":
                raise RuntimeError("kaput")
            return await super().handle(event, state, stream)

    hub, sink = make_hub(Boom())
    await hub.accept(event("1", text="boom"))
    await hub.accept(event("2", text="ok"))
    assert await hub.drain(5)
    assert "抱歉" in sink.delivered[0][1][0]
    assert sink.delivered[1] == ("2", ("ok#1",))
    assert hub.metrics.turns.labels("test", "error")._value.get() == 1


async def test_turn_deadline_answers_with_an_apology() -> None:
    hub, sink = make_hub(CountingHandler({"hang": asyncio.Event()}), turn_deadline_s=0.05)
    await hub.accept(event("1", text="hang"))
    assert await hub.drain(5)
    assert "抱歉" in sink.delivered[0][1][0]


async def test_overload_refuses_before_accepting() -> None:
    gate = asyncio.Event()
    hub, _sink = make_hub(CountingHandler({"x": gate}), max_pending=2)
    await hub.accept(event("1", text="x"))
    await hub.accept(event("2", text="x"))
    with pytest.raises(Overloaded):
        await hub.accept(event("3", text="x"))
    gate.set()
    assert await hub.drain(5)
    assert await hub.accept(event("3", text="x")) is True  # not marked seen while refused


async def test_unknown_channel_is_a_programming_error() -> None:
    hub, _ = make_hub(CountingHandler())
    bad = Event(id="1", kind=EventKind.MESSAGE, ref=ConversationRef("nope", "u", "u"), text="hi")
    with pytest.raises(ValueError, match="nope"):
        await hub.accept(bad)


async def test_two_processes_sharing_redis_lose_no_update(redis_url: str, key_prefix: str) -> None:
    """Two hubs (as two gateway processes) take turns of one conversation at once."""
    clients = [aioredis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    hubs = []
    for c in clients:
        hub, _ = make_hub(CountingHandler(), RedisStore(c, Keys(key_prefix), 60, 86400))
        hubs.append(hub)
    try:
        await asyncio.gather(*(hubs[i % 2].accept(event(i)) for i in range(40)))
        assert all([await h.drain(20) for h in hubs])
        state = await hubs[0].store.load(event(0).ref.key)
        assert state.slots["n"] == 40
    finally:
        for c in clients:
            keys = [k async for k in c.scan_iter(match=f"{key_prefix}:*")]
            if keys:
                await c.delete(*keys)
            await c.aclose()


async def test_closing_refuses_new_events_and_unsees_unanswered_ones() -> None:
    store = MemoryStore(60, 86400)
    hub, sink = make_hub(CountingHandler({"hang": asyncio.Event()}), store)
    await hub.accept(event("1", text="hang"))
    await hub.accept(event("2", text="queued"))
    await hub.close(drain_s=0.05)
    with pytest.raises(Overloaded):
        await hub.accept(event("3"))
    assert sink.delivered == []
    # both redeliveries will be taken by the next process instead of dropped as duplicates
    assert await store.first_seen(event("1").dedup_key) is True
    assert await store.first_seen(event("2").dedup_key) is True


async def test_closing_answers_what_was_accepted_first() -> None:
    hub, sink = make_hub(CountingHandler())
    for i in range(5):
        await hub.accept(event(i))
    await hub.close(drain_s=5)
    assert [d[0] for d in sink.delivered] == [str(i) for i in range(5)]


async def test_a_slow_send_holds_no_turn_slot_other_conversations_need() -> None:
    class SlowForAlice(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
            if event is not None and event.ref.user_id == "alice":
                await self.release.wait()  # a platform send gate (DingTalk: 20 a minute per robot)
            await super().deliver(event, replies)

    hub = Hub(HubConfig(max_concurrent_turns=1), MemoryStore(60, 86400), CountingHandler(), Metrics())
    sink = SlowForAlice()
    hub.register("test", sink)
    sink.expected = 3
    await hub.accept(event("a", user="alice", text="a"))
    for i, user in enumerate(("bob", "carol", "dave")):
        await hub.accept(event(f"x{i}", user=user, text=user))
    await asyncio.wait_for(sink.done.wait(), 5)  # one turn slot, yet the others are answered meanwhile
    assert {d[0] for d in sink.delivered} == {"x0", "x1", "x2"}
    sink.release.set()
    assert await hub.drain(5)
    assert len(sink.delivered) == 4


async def test_a_store_outage_delays_the_answer_instead_of_failing_it() -> None:
    from bot.state import StoreDown

    class FlakyStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__(60, 86400)
            self.failures = 3

        async def load(self, key: str) -> DialogueState:
            if self.failures:
                self.failures -= 1
                raise StoreDown("ConnectionError")
            return await super().load(key)

    store = FlakyStore()
    hub, sink = make_hub(CountingHandler(), store)
    await hub.accept(event("1", text="hello"))
    assert await hub.drain(10)
    assert sink.delivered == [("1", ("hello#1",))]  # no apology: the turn ran once the store was back
    assert hub.metrics.turns.labels("test", "ok")._value.get() == 1


async def test_more_conversations_than_redis_connections_wait_for_one(redis_url: str, key_prefix: str) -> None:
    store = RedisStore.from_url(redis_url, Keys(key_prefix), 60, 86400, max_connections=2, pool_timeout_s=10)
    hub, sink = make_hub(CountingHandler(), store)
    try:
        await asyncio.gather(*(hub.accept(event(f"m{i}", user=f"u{i}")) for i in range(40)))
        assert await hub.drain(30)
        assert len(sink.delivered) == 40
        assert hub.metrics.turns.labels("test", "ok")._value.get() == 40  # no turn failed for want of a connection
    finally:
        keys = [k async for k in store.client.scan_iter(match=f"{key_prefix}:*")]
        if keys:
            await store.client.delete(*keys)
        await store.close()


async def test_a_dedup_mark_whose_answer_was_lost_does_not_lose_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis set the mark, but the answer never came back (it restarted): the gateway said 503; WeCom's retry
    must be answered, not dropped as a duplicate."""
    import bot.inbox.memory

    monkeypatch.setattr(bot.inbox.memory, "_PENDING_S", 0.2)

    class LosesOneAnswer(MemoryStore):
        lost = False

        async def first_seen(self, dedup_key: str, *, pending_s: float = 0.0) -> bool:
            result = await super().first_seen(dedup_key, pending_s=pending_s)
            if not self.lost:
                self.lost = True
                raise ConnectionError("connection reset after the command")
            return result

    hub, sink = make_hub(CountingHandler(), LosesOneAnswer(60, 86400))
    with pytest.raises(Overloaded):
        await hub.accept(event("m1", text="在吗"))
    assert await hub.accept(event("m1", text="在吗")) is True  # the retry waits out the provisional mark
    assert await hub.accept(event("m1", text="在吗")) is False  # now a true duplicate
    assert await hub.drain(5)
    assert sink.delivered == [("m1", ("在吗#1",))]
