"""DynamicBatcher with a fake model: windows, batch limits, back-pressure, deadlines, cancellation, close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from engine.base import ChatMessage, EngineError, EngineOverloaded, GenerationRequest
from engine.batcher import END, DynamicBatcher, EngineDeadlineExceeded, Slot, deliver
from tests.engine.helpers import until


def req(text: str, deadline: float | None = None) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", text),), deadline=deadline, request_id=text)


class FakeModel:
    """Echoes each request's text back one character per 'step'; can be held mid-batch by a test."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.steps_run = 0
        self.stopped_early = False

    def __call__(self, slots: list[Slot]) -> None:
        self.batches.append([s.request.request_id for s in slots])
        self.started.set()
        self.hold.wait(5)
        texts = [s.request.messages[-1].content for s in slots]
        loop = slots[0].loop
        done = [False] * len(slots)
        for step in range(max(map(len, texts))):
            if all(s.cancelled or d for s, d in zip(slots, done, strict=True)):
                self.stopped_early = True  # what the StoppingCriteria does in engine/hf.py
                break
            self.steps_run += 1
            items: list[tuple[Slot, object]] = []
            for i, (slot, text) in enumerate(zip(slots, texts, strict=True)):
                if done[i] or slot.cancelled:
                    continue
                items.append((slot, text[step]))
                if step == len(text) - 1:
                    done[i] = True
                    items.append((slot, END))
            deliver(loop, items)  # type: ignore[arg-type]
            time.sleep(0.002)
        deliver(loop, [(s, END) for s, d in zip(slots, done, strict=True) if not d])


@pytest.fixture
async def make() -> AsyncIterator[object]:
    made: list[DynamicBatcher] = []

    async def factory(model: FakeModel, **kw: float) -> DynamicBatcher:
        opts = {"window_s": 0.05, "max_batch_size": 8, "queue_max": 16} | kw
        b = DynamicBatcher(model, **opts)  # type: ignore[arg-type]
        await b.start()
        made.append(b)
        return b

    yield factory
    for b in made:
        model_hold = getattr(b._run_batch, "hold", None)
        if model_hold is not None:
            model_hold.set()
        await b.close()


async def collect(b: DynamicBatcher, r: GenerationRequest) -> str:
    return "".join([d async for d in b.stream(r)])


async def test_concurrent_requests_share_one_batch(make) -> None:
    model = FakeModel()
    b = await make(model)
    outs = await asyncio.gather(*(collect(b, req(t)) for t in ("ab", "cdef", "g")))
    assert outs == ["ab", "cdef", "g"]
    assert model.batches == [["ab", "cdef", "g"]]
    assert b.stats.batch_sizes[-1] == 3


async def test_max_batch_size_splits_batches(make) -> None:
    model = FakeModel()
    b = await make(model, max_batch_size=2)
    outs = await asyncio.gather(*(collect(b, req(f"r{i}")) for i in range(5)))
    assert outs == [f"r{i}" for i in range(5)]
    assert [len(x) for x in model.batches] == [2, 2, 1]


async def test_request_arriving_during_a_batch_joins_the_next(make) -> None:
    model = FakeModel()
    model.hold.clear()
    b = await make(model, window_s=0.0)
    first = asyncio.create_task(collect(b, req("first")))
    await asyncio.to_thread(model.started.wait, 5)
    late = [asyncio.create_task(collect(b, req(t))) for t in ("x", "y")]
    await asyncio.sleep(0.01)
    model.hold.set()
    assert await first == "first"
    assert [await t for t in late] == ["x", "y"]
    assert model.batches == [["first"], ["x", "y"]]


async def test_full_queue_raises_overloaded_at_once(make) -> None:
    model = FakeModel()
    model.hold.clear()
    b = await make(model, window_s=0.0, max_batch_size=1, queue_max=2)
    running = asyncio.create_task(collect(b, req("run")))
    await asyncio.to_thread(model.started.wait, 5)
    waiting = [asyncio.create_task(collect(b, req(f"w{i}"))) for i in range(2)]
    await asyncio.sleep(0.01)
    assert b.pending == 2 and b.full()
    with pytest.raises(EngineOverloaded):
        await collect(b, req("one too many"))
    model.hold.set()
    assert await running == "run"
    assert [await t for t in waiting] == ["w0", "w1"]


async def test_expired_request_is_not_run(make) -> None:
    model = FakeModel()
    b = await make(model)
    with pytest.raises(EngineDeadlineExceeded):
        await collect(b, req("late", deadline=time.monotonic() - 1))
    err = EngineDeadlineExceeded("x")
    assert isinstance(err, EngineError) and isinstance(err, TimeoutError)
    assert model.batches == []


async def test_deadline_passing_in_the_queue_drops_the_request(make) -> None:
    model = FakeModel()
    model.hold.clear()
    b = await make(model, window_s=0.0, max_batch_size=1)
    running = asyncio.create_task(collect(b, req("run")))
    await asyncio.to_thread(model.started.wait, 5)
    with pytest.raises(EngineDeadlineExceeded):  # the consumer stops waiting at its deadline...
        await collect(b, req("short", deadline=time.monotonic() + 0.05))
    model.hold.set()
    assert await running == "run"
    assert await until(lambda: b.stats.cancelled + b.stats.expired == 1)
    assert model.batches == [["run"]]  # ...and the batcher never runs it


async def test_closing_a_stream_cancels_its_row_and_the_batch_goes_on(make) -> None:
    model = FakeModel()
    b = await make(model)
    long_text = "x" * 200
    gen = b.stream(req(long_text))
    other = asyncio.create_task(collect(b, req("keep going")))
    assert await anext(gen) == "x"
    await gen.aclose()
    assert await other == "keep going"
    assert await until(lambda: model.stopped_early)  # the batch ended when "keep going" did...
    assert model.steps_run < len(long_text)  # ...not after 200 steps


async def test_cancelling_the_consumer_task_cancels_its_row(make) -> None:
    model = FakeModel()
    b = await make(model)
    task = asyncio.create_task(collect(b, req("y" * 500)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await until(lambda: model.stopped_early)
    assert model.steps_run < 500


async def test_cancelled_while_queued_is_never_run(make) -> None:
    model = FakeModel()
    model.hold.clear()
    b = await make(model, window_s=0.0, max_batch_size=1)
    running = asyncio.create_task(collect(b, req("run")))
    await asyncio.to_thread(model.started.wait, 5)
    gen = b.stream(req("gone"))
    waiter = asyncio.create_task(anext(gen))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    model.hold.set()
    assert await running == "run"
    assert await until(lambda: b.stats.cancelled == 1)
    assert model.batches == [["run"]]


async def test_close_fails_waiting_requests(make) -> None:
    model = FakeModel()
    model.hold.clear()
    b = await make(model, window_s=0.0, max_batch_size=1)
    running = asyncio.create_task(collect(b, req("run")))
    await asyncio.to_thread(model.started.wait, 5)
    waiting = asyncio.create_task(collect(b, req("w")))
    await asyncio.sleep(0.01)
    model.hold.set()
    await b.close()
    with pytest.raises(EngineError):
        await waiting
    try:  # the running batch either finished before close or was failed by it
        assert await running == "run"
    except EngineError:
        pass
    with pytest.raises(EngineError):
        await collect(b, req("after close"))


async def test_a_crashing_batch_fails_its_requests_not_the_batcher(make) -> None:
    calls = []

    def boom(slots: list[Slot]) -> None:
        calls.append(len(slots))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        deliver(slots[0].loop, [(s, "ok") for s in slots] + [(s, END) for s in slots])

    b = DynamicBatcher(boom, window_s=0.0, max_batch_size=4, queue_max=4)
    await b.start()
    try:
        with pytest.raises(EngineError, match="out of memory"):
            await collect(b, req("a"))
        assert await collect(b, req("b")) == "ok"
    finally:
        await b.close()
