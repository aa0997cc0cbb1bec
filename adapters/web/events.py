"""Per-session event log behind the widget's SSE stream.

Everything a widget shows (the visitor's messages, answer deltas, final
answers) is appended here with an id ``<ms>-<seq>`` that only grows, and an
SSE connection replays the log after its ``Last-Event-ID``. A dropped
connection therefore neither loses nor repeats anything, several tabs stay in
step, and in Redis mode (a Redis Stream per session) the turn may run in a
worker process while the browser listens on a gateway. The Redis Stream is
keyed by the session's conversation (``keys.web_events(ref.key)``), so the
admin API's erasure finds it with the conversation's other keys.

The log also remembers which answers were streamed (``append_delta``), so the
sender that delivers the final answer, in whatever process, knows not to
stream it again (``append_answer``); in Redis that mark is a per-conversation
hash written in the same round trip as the delta.

Reading in Redis mode: open SSE connections never hold a pooled connection
each. One :class:`StreamReader` per process blocks in a single ``XREAD`` on
every watched session stream (on one connection of its own) and wakes the
local readers of the sessions that got events, so the connections SSE uses do
not grow with the number of open streams. That connection comes from a pool
of its own (``Services.redis_blocking``), so the blocking read can never take
one that dedup, state or rate counters need, however small the shared pool.

Both logs are bounded per process in sessions (``web.max_sessions``): past it
the longest idle session nobody is reading is forgotten here (in Redis its
stream stays, and a later reader watches it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from bot.privacy.pii import redact
from bot.state.keys import Keys
from bot.types import ConversationRef

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, Any]]  # (event id, event)

_MAX_BLOCK_S = 2.0
_REDIS_SOCKET_TIMEOUT_S = 5.0  # redis-py's default when the URL names none
_READ_COUNT = 500  # entries per stream per read
_MAX_MARKS_PER_SESSION = 256  # memory mode: streamed answers remembered per session (turns that never deliver)
_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")

# The final events of an answer, in one step: the synthetic deltas of an answer that came whole (ARGV[5 ..
# 4 + n_fill]) only when nothing of it was streamed, then the reply and done events; and the streamed mark goes.
_APPEND_ANSWER = """
redis.replicate_commands()
local streamed = redis.call('HDEL', KEYS[2], ARGV[1])
local first = 5
if streamed == 1 then first = 5 + tonumber(ARGV[4]) end
local ids = {}
for i = first, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ids
"""


def stored(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the log keeps it: its ``text`` with personal data redacted (bot/privacy/pii.py). The
    log outlives the turn (idle TTL) and is replayed to every tab; the tab that sent a message shows it as
    typed (widget.js adds it before the log echoes it). A streamed delta is redacted on its own: a number
    split across deltas is not seen here, and a delta whose length changed makes the widget wait for the
    final answer (its ``offset`` no longer follows), which is redacted whole."""
    text = event.get("text")
    if not isinstance(text, str) or not text:
        return event
    clean = redact(text)
    return event if clean == text else {**event, "text": clean}


def _dump(event: dict[str, Any]) -> str:
    return json.dumps(stored(event), ensure_ascii=False)


def session_ref(session_id: str) -> ConversationRef:
    """The conversation a widget session is: one visitor, one chat, addressed by the session id."""
    return ConversationRef(channel="web", conversation_id=session_id, user_id=session_id)


def parse_event_id(raw: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a comparable pair; raises ValueError otherwise."""
    m = _EVENT_ID.fullmatch(raw.strip())
    if m is None:
        raise ValueError(f"not an event id: {raw[:40]!r}")
    return int(m.group(1)), int(m.group(2))


class EventLog(Protocol):
    async def append(self, session_id: str, event: dict[str, Any]) -> str:
        """Add an event; returns its id."""

    async def append_many(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        """Add events in order in one step (one Redis round trip); returns their ids."""

    async def append_delta(self, session_id: str, message_id: str, event: dict[str, Any]) -> str:
        """Add a streamed piece of the answer to ``message_id`` and remember that it was streamed
        (one Redis round trip)."""

    async def append_answer(self, session_id: str, message_id: str, fill: Sequence[dict[str, Any]],
                            events: Sequence[dict[str, Any]]) -> list[str]:
        """Finish the answer to ``message_id`` in one step: ``fill`` (deltas standing in for a stream)
        only if nothing of it was streamed, then ``events``; forget the streamed mark. Returns the ids
        of what was added."""

    async def read(self, session_id: str, after: str, timeout_s: float) -> list[Entry]:
        """Events after ``after``, waiting up to ``timeout_s`` for the first one."""

    async def entries(self, session_id: str) -> list[Entry]:
        """Everything still kept for the session, oldest first."""

    async def last_id(self, session_id: str) -> str:
        """The newest id, or ``"0-0"``: where a live-only reader starts."""

    async def close(self) -> None: ...


class _MemorySession:
    __slots__ = ("cond", "entries", "readers", "streamed", "touched")

    def __init__(self, per_session: int) -> None:
        self.entries: deque[Entry] = deque(maxlen=per_session)
        self.cond = asyncio.Condition()
        self.streamed: OrderedDict[str, None] = OrderedDict()  # answers with streamed deltas, oldest first
        self.touched = time.monotonic()
        self.readers = 0  # reads waiting on it now: never forgotten while read, or their events would go astray


class MemoryEventLog:
    """One process: a bounded deque per session, readers woken by a Condition."""

    def __init__(self, per_session: int, idle_ttl_s: float, max_sessions: int = 10_000) -> None:
        self.per_session = per_session
        self.idle_ttl_s = idle_ttl_s
        self.max_sessions = max_sessions
        self.max_marks = _MAX_MARKS_PER_SESSION
        self._logs: OrderedDict[str, _MemorySession] = OrderedDict()
        self._last = (0, 0)

    def _log(self, session_id: str) -> _MemorySession:
        item = self._logs.get(session_id)
        now = time.monotonic()
        if item is not None and now - item.touched > self.idle_ttl_s:
            item.entries.clear()
            item.streamed.clear()
        if item is None:
            item = _MemorySession(self.per_session)
            self._logs[session_id] = item
            self._forget_idle()
        self._logs.move_to_end(session_id)
        item.touched = now
        return item

    def _forget_idle(self) -> None:
        """Bounded: past ``max_sessions`` forget the longest-idle sessions nobody is reading."""
        excess = len(self._logs) - self.max_sessions
        if excess <= 0:
            return
        for sid in [sid for sid, item in self._logs.items() if not item.readers][:excess]:
            del self._logs[sid]

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    async def append(self, session_id: str, event: dict[str, Any]) -> str:
        return (await self.append_many(session_id, [event]))[0]

    async def append_many(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        item = self._log(session_id)
        ids = []
        for event in events:
            ids.append(self._next_id())
            item.entries.append((ids[-1], stored(event)))
        async with item.cond:
            item.cond.notify_all()
        return ids

    async def append_delta(self, session_id: str, message_id: str, event: dict[str, Any]) -> str:
        streamed = self._log(session_id).streamed
        streamed[message_id] = None
        streamed.move_to_end(message_id)
        while len(streamed) > self.max_marks:  # answers that never delivered (a shutdown): forget the oldest
            streamed.popitem(last=False)
        return await self.append(session_id, event)

    async def append_answer(self, session_id: str, message_id: str, fill: Sequence[dict[str, Any]],
                            events: Sequence[dict[str, Any]]) -> list[str]:
        streamed = self._log(session_id).streamed
        was_streamed = message_id in streamed
        streamed.pop(message_id, None)
        return await self.append_many(session_id, [*([] if was_streamed else fill), *events])

    def _after(self, entries: Sequence[Entry], after: tuple[int, int]) -> list[Entry]:
        return [e for e in entries if parse_event_id(e[0]) > after]

    async def read(self, session_id: str, after: str, timeout_s: float) -> list[Entry]:
        item = self._log(session_id)
        entries, cond = item.entries, item.cond
        cursor = parse_event_id(after)
        found = self._after(entries, cursor)
        if found:
            return found
        item.readers += 1
        try:
            async with cond:
                try:
                    await asyncio.wait_for(cond.wait_for(lambda: bool(self._after(entries, cursor))), timeout_s)
                except TimeoutError:
                    return []
        finally:
            item.readers -= 1
        return self._after(entries, cursor)

    async def entries(self, session_id: str) -> list[Entry]:
        return list(self._log(session_id).entries)

    async def last_id(self, session_id: str) -> str:
        entries = self._log(session_id).entries
        return entries[-1][0] if entries else "0-0"

    async def erase(self, session_id: str) -> int:
        """Forget a session's events and marks (right to erasure); 1 when there were any events."""
        item = self._logs.pop(session_id, None)
        return 1 if item is not None and item.entries else 0

    async def close(self) -> None:
        self._logs.clear()


def _decode(raw: Sequence[Any]) -> list[Entry]:
    out: list[Entry] = []
    for event_id, fields in raw:
        data = fields.get("d") if isinstance(fields, dict) else None
        if data is None:
            continue
        out.append((event_id, json.loads(data)))
    return out


def _streams(result: Any) -> list[tuple[str, list[Any]]]:
    """XREAD's answer as (key, entries) pairs: RESP2 answers a list, RESP3 a dict."""
    if not result:
        return []
    return list(result.items()) if isinstance(result, dict) else [(k, v) for k, v in result]


def _after_id(cursor: tuple[int, int]) -> str:
    """The smallest id after ``cursor``: an exclusive XRANGE start that every Redis version reads."""
    return f"{cursor[0]}-{cursor[1] + 1}"


class RedisEventLog:
    """A capped Redis Stream per session, expiring with the conversation."""

    def __init__(self, client: aioredis.Redis, keys: Keys, per_session: int, idle_ttl_s: float, *,
                 blocking: aioredis.Redis | None = None, max_sessions: int = 10_000) -> None:
        self.client = client
        self.keys = keys
        self.per_session = per_session
        self.ttl_ms = max(1, int(idle_ttl_s * 1000))
        self._append_answer = client.register_script(_APPEND_ANSWER)
        self.reader = StreamReader(client, keys, blocking=blocking, max_watched=max_sessions)

    def _key(self, session_id: str) -> str:
        return self.keys.web_events(session_ref(session_id).key)

    def _marks(self, session_id: str) -> str:
        return self.keys.web_streamed(session_ref(session_id).key)

    async def append(self, session_id: str, event: dict[str, Any]) -> str:
        return (await self.append_many(session_id, [event]))[0]

    async def append_many(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        key = self._key(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(key, {"d": _dump(event)}, maxlen=self.per_session, approximate=True)
            pipe.pexpire(key, self.ttl_ms)
            *ids, _ = await pipe.execute()
        return [i if isinstance(i, str) else i.decode() for i in ids]

    async def append_delta(self, session_id: str, message_id: str, event: dict[str, Any]) -> str:
        key, marks = self._key(session_id), self._marks(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"d": _dump(event)}, maxlen=self.per_session, approximate=True)
            pipe.pexpire(key, self.ttl_ms)
            pipe.hincrby(marks, message_id, 1)
            pipe.pexpire(marks, self.ttl_ms)
            event_id, *_ = await pipe.execute()
        return event_id if isinstance(event_id, str) else event_id.decode()

    async def append_answer(self, session_id: str, message_id: str, fill: Sequence[dict[str, Any]],
                            events: Sequence[dict[str, Any]]) -> list[str]:
        args = [message_id, self.per_session, self.ttl_ms, len(fill),
                *(_dump(e) for e in [*fill, *events])]
        ids = await self._append_answer(keys=[self._key(session_id), self._marks(session_id)], args=args)
        return [i if isinstance(i, str) else i.decode() for i in ids]

    async def read(self, session_id: str, after: str, timeout_s: float) -> list[Entry]:
        return await self.reader.read(self._key(session_id), after, timeout_s)

    async def entries(self, session_id: str) -> list[Entry]:
        return _decode(await self.client.xrange(self._key(session_id)))

    async def last_id(self, session_id: str) -> str:
        raw = await self.client.xrevrange(self._key(session_id), count=1)
        return raw[0][0] if raw else "0-0"

    async def close(self) -> None:
        await self.reader.close()


class _Watch:
    """One session stream the reader follows: everything it has read up to ``cursor``, and the latest of it
    (the entries after ``base``) kept for local readers that were busy writing when it came."""

    __slots__ = ("base", "cursor", "idle_since", "readers", "recent", "waiters")

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        self.base = parse_event_id(cursor)
        self.recent: deque[tuple[tuple[int, int], Entry]] = deque()
        self.waiters: set[asyncio.Future[None]] = set()
        self.readers = 0
        self.idle_since = time.monotonic()

    def add(self, raw: Sequence[Any], keep: int) -> None:
        for entry in _decode(raw):
            self.recent.append((parse_event_id(entry[0]), entry))
        self.cursor = raw[-1][0]
        while len(self.recent) > keep:
            self.base = self.recent.popleft()[0]
        if not self.recent:
            self.base = parse_event_id(self.cursor)

    def after(self, cursor: tuple[int, int]) -> list[Entry]:
        return [entry for eid, entry in self.recent if eid > cursor]

    def wake(self, exc: BaseException | None = None) -> None:
        for fut in self.waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
        self.waiters.clear()


class StreamReader:
    """Every SSE connection of this process waits on one ``XREAD BLOCK`` over all watched session streams.

    A reader asks for a stream's events after its cursor. A stream nobody here watched yet is added to the
    watch list, and the blocked ``XREAD`` is woken to include it by an entry on this process's own wake-up
    stream (``keys.web_wakeup``), which the ``XREAD`` always watches too: one short write per newly watched
    session, on the shared pool. The reading task holds one connection of the shared pool for as long as
    anything is watched. Each watch keeps the entries it read last (``keep``) for readers that were busy
    writing to their browser; a reader further behind (a reconnect with an older ``Last-Event-ID``) reads
    its gap with one ``XRANGE``. Streams nobody reads for ``linger_s`` are dropped from the list, and past
    ``max_watched`` the longest idle ones at once.

    The ``XREAD`` runs on ``blocking`` (a client with a small pool of its own, ``Services.redis_blocking``)
    when given, else on one connection of the shared pool.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, *, keep: int = 64, linger_s: float = 30.0,
                 blocking: aioredis.Redis | None = None, max_watched: int = 10_000) -> None:
        self.client = client
        self.blocking = blocking or client
        self.keep = keep
        self.linger_s = linger_s
        self.max_watched = max_watched
        # Blocking reads go in slices under the reading client's socket timeout: a longer block would fail
        # as a read timeout instead of coming back empty.
        kwargs = self.blocking.connection_pool.connection_kwargs
        socket_timeout = kwargs.get("socket_timeout", _REDIS_SOCKET_TIMEOUT_S)
        self.block_s = min(_MAX_BLOCK_S, socket_timeout / 2) if socket_timeout else _MAX_BLOCK_S
        self.wakeup_key = keys.web_wakeup(uuid.uuid4().hex[:12])
        self._wakeup_cursor = "0-0"
        self._wake_pending = False
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: aioredis.Redis | None = None
        self._closed = False

    @property
    def watched(self) -> int:
        return len(self._watches)

    async def read(self, key: str, after: str, timeout_s: float) -> list[Entry]:
        cursor = parse_event_id(after)
        if self._closed:  # shutting down: nothing more comes (and a caller's loop does not spin)
            await asyncio.sleep(timeout_s)
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        watch = self._watches.get(key)
        fresh = watch is None
        if watch is None:
            if len(self._watches) >= self.max_watched:  # the read loop sweeps lingering ones; here only room
                self._drop_idle(room_for=1)
            watch = self._watches[key] = _Watch(after)
        watch.readers += 1
        try:
            self._start()
            if fresh:
                await self._wake()  # the blocked XREAD starts again with this stream in it, from ``after``
            while True:
                fut: asyncio.Future[None] = loop.create_future()
                watch.waiters.add(fut)  # before looking, so nothing read while we look is missed
                try:
                    if cursor >= watch.base:
                        found = watch.after(cursor)
                    else:  # the watch no longer holds what follows our cursor: read that part ourselves
                        found = _decode(await self.client.xrange(key, min=_after_id(cursor), count=_READ_COUNT))
                    if found:
                        return found
                    left = deadline - loop.time()
                    if left <= 0 or self._closed:
                        return []
                    try:
                        await asyncio.wait_for(fut, left)
                    except TimeoutError:
                        return []
                    if self._closed:
                        return []
                finally:
                    watch.waiters.discard(fut)
                    if not fut.done():
                        fut.cancel()
                    elif not fut.cancelled():
                        fut.exception()  # retrieved: an error meant for a reader that had already returned
        finally:
            watch.readers -= 1
            watch.idle_since = time.monotonic()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="web-event-reader")

    async def _wake(self) -> None:
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wakeup_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self.wakeup_key, 60_000)
                await pipe.execute()
        except BaseException:
            self._wake_pending = False
            raise

    async def _run(self) -> None:
        backoff = 0.1
        while not self._closed:
            self._drop_idle()
            if not self._watches:
                await self._release()  # nothing to watch: give the connection back until a reader comes
                if not self._watches:  # no await between this check and the end: a new reader starts a new task
                    self._task = None
                    return
            try:
                await self._read_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the readers end their streams, browsers come back later
                log.warning("web event reader: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
                for watch in self._watches.values():
                    watch.wake(exc)
                await self._release()
                await asyncio.sleep(backoff)
                backoff = min(_MAX_BLOCK_S, backoff * 2)

    def _drop_idle(self, room_for: int = 0) -> None:
        """Unwatch streams nobody has read for ``linger_s``; and while more than ``max_watched - room_for``
        are watched, the longest idle of those nobody reads now."""
        now = time.monotonic()
        idle = []
        for key, watch in list(self._watches.items()):
            if not watch.readers and not watch.waiters:
                if now - watch.idle_since > self.linger_s:
                    del self._watches[key]
                else:
                    idle.append((watch.idle_since, key))
        excess = len(self._watches) - max(0, self.max_watched - room_for)
        if excess > 0:
            for _, key in sorted(idle)[:excess]:
                del self._watches[key]

    async def _read_once(self) -> None:
        self._wake_pending = False  # a reader adding a stream from now on wakes the read that follows
        watched = dict(self._watches)
        if self._conn is None:
            self._conn = aioredis.Redis(connection_pool=self.blocking.connection_pool, single_connection_client=True)
        streams = {self.wakeup_key: self._wakeup_cursor, **{key: w.cursor for key, w in watched.items()}}
        result = await self._conn.xread(streams, count=_READ_COUNT, block=max(1, int(self.block_s * 1000)))
        for key, raw in _streams(result):
            if not raw:
                continue
            if key == self.wakeup_key:
                self._wakeup_cursor = raw[-1][0]
                continue
            watch = watched.get(key)
            if watch is None or self._watches.get(key) is not watch:  # dropped meanwhile; a new watch reads again
                continue
            watch.add(raw, self.keep)
            watch.wake()

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for watch in self._watches.values():
            watch.wake()
        self._watches.clear()
        await self._release()
