"""Live console events for every gateway process: a handoff arrived, a customer wrote, taken, released, FAQ changed.

The conversation may be handed off on any worker and an agent may watch from any gateway, so in Redis mode the
events go through one capped stream (``keys.console_feed()``). Each process reads it with ONE ``XREAD BLOCK`` on
the blocking pool (``Services.redis_blocking``) and fans the events out to its subscribers (SSE connections) and
listeners (FAQ curation reloading on kind ``faq``): a hundred open inboxes cost one Redis connection, not a hundred.
The events only say that something changed (kind, conversation key, an agent's name); pages read the rows and
states themselves, so no customer text passes through here and an event missed is repaired by the next one.

A subscriber that falls behind (its bounded queue full) or that may have missed events (Redis was away) gets
``kind="resync"``: reload the list, then go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bot.state.keys import Keys
from bot.state.redisconn import MAX_BLOCK_S

log = logging.getLogger(__name__)

QUEUE_SIZE = 100  # events a subscriber may be behind before it is told to resync instead
MAXLEN = 1000  # the stream keeps about this many (XADD MAXLEN ~)
BLOCK_S = MAX_BLOCK_S  # one XREAD waits at most this, as the widget's does (bot/state/redisconn.py)
READY_WAIT_S = 2.0  # how long subscribe() waits for the reader's first position (Redis away: it goes on)
_BACKOFF_MAX_S = 5.0

Listener = Callable[["FeedEvent"], Awaitable[None] | None]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FeedEvent:
    kind: str  # handoff | message | taken | released | reply | faq | resync
    key: str  # conversation key ("" for faq and resync)
    data: Mapping[str, Any] = field(default_factory=_empty)  # small: {"agent": ...}, never customer text
    id: str = ""  # stream id (for SSE id:); memory mode: a counter


RESYNC = "resync"
_END = FeedEvent(kind="", key="")  # put in a subscriber's queue by close(): the iteration ends


class _Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[FeedEvent] = asyncio.Queue(QUEUE_SIZE)

    def put(self, event: FeedEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:  # too slow: what it missed is reloaded, not replayed
            _clear(self.queue)
            self.queue.put_nowait(FeedEvent(kind=RESYNC, key=""))

    def end(self) -> None:
        _clear(self.queue)
        self.queue.put_nowait(_END)

    def __aiter__(self) -> AsyncIterator[FeedEvent]:
        return self

    async def __anext__(self) -> FeedEvent:
        event = await self.queue.get()
        if event is _END:
            self.queue.put_nowait(_END)  # stays ended for a second look
            raise StopAsyncIteration
        return event


def _clear(queue: asyncio.Queue[FeedEvent]) -> None:
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return


class ConsoleFeed:
    """In-process feed (memory mode: one process does everything); the Redis feed below shares its fan-out."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._listeners: list[Listener] = []
        self._closed = False
        self._seq = 0

    async def start(self) -> None:
        """Nothing to open in memory."""

    async def close(self) -> None:
        """Ends every subscription (SSE connections end at shutdown)."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.end()

    async def publish(self, kind: str, key: str, **data: Any) -> None:
        self._seq += 1
        await self._fan_out(FeedEvent(kind=kind, key=key, data=MappingProxyType(dict(data)), id=str(self._seq)))

    async def erase(self, key: str) -> int:
        """Erasure: the events naming a conversation (memory keeps none)."""
        return 0

    def listen(self, fn: Listener) -> None:
        """``fn(event)`` for every event this process reads, in the reading task; errors are logged."""
        self._listeners.append(fn)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[FeedEvent]]:
        sub = _Subscriber()
        if self._closed:
            sub.end()
        self._subscribers.add(sub)
        try:
            await self._subscribed()
            yield sub
        finally:
            self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _subscribed(self) -> None:
        """Hook: the Redis feed makes sure its reader runs."""

    def _broadcast(self, event: FeedEvent) -> None:
        for sub in list(self._subscribers):
            sub.put(event)

    async def _fan_out(self, event: FeedEvent) -> None:
        self._broadcast(event)
        for fn in list(self._listeners):
            try:
                result = fn(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("console feed listener %s failed on a %s event", getattr(fn, "__qualname__", fn),
                              event.kind)


class RedisFeed(ConsoleFeed):
    """Events through ``keys.console_feed()``; one reading task per process, started by the first subscriber
    (or by :meth:`start` when something listens), reading from where the stream stood when it started."""

    def __init__(self, redis: Any, blocking: Any, keys: Keys) -> None:
        super().__init__()
        self.redis = redis
        self.blocking = blocking or redis
        self.stream = keys.console_feed()
        kwargs = getattr(getattr(self.blocking, "connection_pool", None), "connection_kwargs", {})
        socket_timeout = kwargs.get("socket_timeout")
        # a block longer than the socket allows would fail as a timeout instead of coming back empty
        self.block_s = min(BLOCK_S, socket_timeout / 2) if socket_timeout else BLOCK_S
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        self._started = True
        if self._listeners:
            self._run_reader()

    def listen(self, fn: Listener) -> None:
        super().listen(fn)
        if self._started:
            self._run_reader()

    async def close(self) -> None:
        await super().close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def publish(self, kind: str, key: str, **data: Any) -> None:
        """Raises what Redis raises: the caller (desk) logs it; the row on the board is what counts."""
        fields = {"kind": kind, "key": key, "data": json.dumps(data, ensure_ascii=False, separators=(",", ":"))}
        await self.redis.xadd(self.stream, fields, maxlen=MAXLEN, approximate=True)

    async def erase(self, key: str) -> int:
        """XDEL the stream's entries naming the conversation (the stream is capped: one short scan)."""
        entries = await self.redis.xrange(self.stream, min="-", max="+", count=MAXLEN * 2)
        mine = [entry_id for entry_id, fields in entries if fields.get("key") == key]
        return int(await self.redis.xdel(self.stream, *mine)) if mine else 0

    async def _subscribed(self) -> None:
        self._run_reader()
        with contextlib.suppress(TimeoutError):  # Redis away: the reader tells it to resync once it is back
            async with asyncio.timeout(READY_WAIT_S):
                await self._ready.wait()

    def _run_reader(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._read(), name="console-feed-reader")

    async def _read(self) -> None:
        cursor: str | None = None
        backoff = 0.2
        down = False
        while not self._closed:
            try:
                if cursor is None:  # where the stream stands now: what comes after is what we fan out
                    last = await self.redis.xrevrange(self.stream, count=1)
                    cursor = last[0][0] if last else "0-0"
                    self._ready.set()
                result = await self.blocking.xread({self.stream: cursor}, count=100,
                                                   block=max(1, int(self.block_s * 1000)))
                if down:
                    log.info("console feed: Redis is back")
                    down = False
                    self._broadcast(FeedEvent(kind=RESYNC, key=""))
                backoff = 0.2
                for _stream, entries in result or ():
                    for entry_id, raw in entries:
                        cursor = entry_id
                        event = _decode(entry_id, raw)
                        if event is not None:
                            await self._fan_out(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: wait and read on from the same position
                if not down:
                    log.warning("console feed: cannot read from Redis (%s); retrying", type(exc).__name__)
                    down = True
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)


def _decode(entry_id: str, raw: Mapping[str, str]) -> FeedEvent | None:
    try:
        data = json.loads(raw.get("data") or "{}")
    except ValueError:
        data = {}
    kind = raw.get("kind")
    if not kind:
        return None
    return FeedEvent(kind=str(kind), key=str(raw.get("key") or ""),
                     data=MappingProxyType(data if isinstance(data, dict) else {}), id=entry_id)


def open_feed(redis: Any, redis_blocking: Any, keys: Keys) -> ConsoleFeed:
    """Through Redis when state is there (every process sees every event), else in this process."""
    return ConsoleFeed() if redis is None else RedisFeed(redis, redis_blocking, keys)
