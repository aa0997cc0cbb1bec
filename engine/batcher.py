"""Dynamic batching: gather concurrent requests, run them together in a worker thread, stream rows back.

Why: a forward pass over 16 rows costs little more than over one, so a model
serving many chats at once should never run them one by one. The batcher owns
the asyncio side only (queueing, windows, deadlines, cancellation, delivery);
what a batch *is* lives in the ``run_batch`` callable (``engine/hf.py``), which
runs in one dedicated thread so the event loop never blocks on the model.

Lifecycle of a request: ``stream()`` puts a :class:`Slot` in a bounded queue
(full: :class:`EngineOverloaded` at once). The collector takes the oldest slot,
waits until ``batch_window`` after *its* arrival (less when arrivals stop) or
until ``max_batch_size`` slots are there, drops slots that were cancelled or whose deadline passed, and
hands the rest to ``run_batch``. Requests arriving meanwhile wait for the next
batch. The worker thread reports text through :func:`deliver`, one
``call_soon_threadsafe`` per decoding step for the whole batch. A consumer that
stops iterating marks its slot cancelled; the model side checks that flag
every step (a ``StoppingCriteria``), so the row stops and, if every row
stopped, the whole generation ends early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from engine.base import EngineError, EngineOverloaded, GenerationRequest

log = logging.getLogger(__name__)


class EngineDeadlineExceeded(EngineError, TimeoutError):
    """The request's deadline passed before its answer was complete; it was dropped or stopped.

    Also a TimeoutError, so callers that treat deadlines apart from failures see it as one.
    """


class _End:
    """Marks the end of a slot's stream (a class, so it never equals a text delta)."""


END: Final = _End()
Item = str | _End | BaseException


@dataclass(eq=False, slots=True)
class Slot:
    """One queued or running request, shared by the event loop and the worker thread.

    ``cancelled`` is written by the loop and read by the worker each decoding
    step; a plain attribute is enough under the GIL.
    """

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    enqueued_at: float  # loop.time()
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    closed: bool = False  # END or an error was put in the queue (loop thread only)

    def expired(self, now: float | None = None) -> bool:
        deadline = self.request.deadline
        return deadline is not None and (time.monotonic() if now is None else now) >= deadline

    def put(self, item: Item) -> None:
        """Queue one item for the consumer; call from the loop thread only."""
        if self.closed:
            return
        if isinstance(item, (_End, BaseException)):
            self.closed = True
        self.queue.put_nowait(item)


def deliver(loop: asyncio.AbstractEventLoop, items: list[tuple[Slot, Item]]) -> None:
    """Hand items from the worker thread to the loop in one wake-up (not one per row)."""
    if not items:
        return
    with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
        loop.call_soon_threadsafe(_dispatch, items)


def _dispatch(items: Iterable[tuple[Slot, Item]]) -> None:
    for slot, item in items:
        slot.put(item)


@dataclass(slots=True)
class BatchStats:
    """Counters for tests, benchmarks and metrics; written by the loop and the worker thread."""

    batches: int = 0
    requests: int = 0  # rows actually run
    expired: int = 0  # dropped before running because the deadline had passed
    cancelled: int = 0  # dropped before running because the consumer had gone
    tokens: int = 0  # generated tokens, all rows
    early_stops: int = 0  # generations ended before max_new_tokens because every row was done
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))


RunBatch = Callable[[list[Slot]], None]


class DynamicBatcher:
    """Queue, window and worker thread around a ``run_batch(slots)`` callable.

    ``run_batch`` runs in the worker thread; it must eventually deliver END or an
    exception to every slot it was given (the batcher closes any it forgot with an
    :class:`EngineError`, and fails them all if it raises).
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        window_s: float,
        max_batch_size: int,
        queue_max: int,
        name: str = "engine",
        stats: BatchStats | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._window_s = max(0.0, window_s)
        self._max_batch = max(1, max_batch_size)
        self._queue_max = max(1, queue_max)
        self._name = name
        self.stats = stats or BatchStats()
        self._queue: asyncio.Queue[Slot] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = executor  # one thread: batches never overlap
        self._own_executor = executor is None
        self._running: list[Slot] = []
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._closed = False
        self._queue = asyncio.Queue(maxsize=self._queue_max)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self._name}-generate")
            self._own_executor = True
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"{self._name}-batcher")

    def configure(self, *, window_s: float | None = None, max_batch_size: int | None = None) -> None:
        """Retune a running batcher (benchmarks compare one-at-a-time and batched on one loaded model)."""
        if window_s is not None:
            self._window_s = max(0.0, window_s)
        if max_batch_size is not None:
            self._max_batch = max(1, max_batch_size)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closed

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        return 0 if self._queue is None else self._queue.qsize()

    def full(self) -> bool:
        return self._queue is not None and self._queue.full()

    async def close(self) -> None:
        """Fail waiting requests, stop the running batch early, and join the worker thread."""
        self._closed = True
        closed = EngineError("engine closed")
        for slot in self._running:
            slot.cancelled = True  # the worker's stopping criteria ends generation at the next step
            slot.put(closed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().put(closed)
        if self._executor is not None and self._own_executor:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)

    # -- requests ------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Slot:
        """Queue a request now; raises EngineOverloaded when the queue is full."""
        if self._queue is None or not self.running:
            raise EngineError("engine is not running")
        loop = asyncio.get_running_loop()
        slot = Slot(request=request, loop=loop, enqueued_at=loop.time())
        if slot.expired():
            raise EngineDeadlineExceeded("deadline passed before the request was queued")
        try:
            self._queue.put_nowait(slot)
        except asyncio.QueueFull:
            raise EngineOverloaded(f"engine queue full ({self._queue_max} waiting)") from None
        return slot

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the request's text as it is generated; closing this generator cancels the request."""
        slot = self.submit(request)
        loop = slot.loop
        stop_at = None if request.deadline is None else loop.time() + (request.deadline - time.monotonic())
        try:
            while True:
                if stop_at is not None and loop.time() >= stop_at:  # even with text waiting: it is too late
                    raise EngineDeadlineExceeded("deadline passed while generating")
                if slot.queue.empty():
                    try:
                        async with asyncio.timeout_at(stop_at):
                            item = await slot.queue.get()
                    except TimeoutError:
                        raise EngineDeadlineExceeded("deadline passed while generating") from None
                else:
                    item = slot.queue.get_nowait()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                # Several steps may have arrived while the consumer was busy: hand them over at once.
                parts = [item]
                while not slot.queue.empty():
                    nxt = slot.queue.get_nowait()
                    if not isinstance(nxt, str):
                        slot.queue.put_nowait(nxt)  # queue was drained up to here, so order is kept
                        break
                    parts.append(nxt)
                yield "".join(parts)
        finally:
            if not slot.closed or not slot.queue.empty():
                slot.cancelled = True

    # -- collector -----------------------------------------------------------------------------

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(loop)
            live = self._admit(batch)
            if not live:
                continue
            self._running = live
            self.stats.batches += 1
            self.stats.requests += len(live)
            self.stats.batch_sizes.append(len(live))
            try:
                await loop.run_in_executor(self._executor, self._run_batch, live)
            except asyncio.CancelledError:
                raise
            except EngineError as exc:
                self._fail(live, exc)
            except Exception as exc:  # a crashed batch must not take the batcher down
                log.exception("%s: batch of %d failed", self._name, len(live))
                self._fail(live, EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self._running = []
            # Items delivered by the worker were scheduled before the executor's result, so they are
            # already in the slots' queues; anything still open was forgotten by run_batch.
            self._fail(live, EngineError("generation ended without a result"))

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[Slot]:
        """The oldest waiting slot plus whatever arrives within its window, up to max_batch_size.

        The window also closes once no request came for a quarter of it: a burst that has
        arrived (the usual case under load) runs at once instead of idling out the window.
        """
        assert self._queue is not None
        first = await self._queue.get()
        batch = [first]
        window_end = first.enqueued_at + self._window_s
        quiet = max(0.001, self._window_s / 4)
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            now = loop.time()
            if window_end <= now:
                break
            try:
                async with asyncio.timeout_at(min(window_end, now + quiet)):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    def _admit(self, batch: list[Slot]) -> list[Slot]:
        """Drop slots whose consumer left or whose deadline passed while they waited."""
        now = time.monotonic()
        live = []
        for slot in batch:
            if slot.cancelled:
                self.stats.cancelled += 1
                slot.put(END)
            elif slot.expired(now):
                self.stats.expired += 1
                slot.put(EngineDeadlineExceeded("deadline passed before the request could run"))
            else:
                live.append(slot)
        return live

    @staticmethod
    def _fail(slots: list[Slot], exc: EngineError) -> None:
        for slot in slots:
            slot.put(exc)
