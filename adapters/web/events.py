"""Per-session event log behind the widget's SSE stream.

Everything a widget shows (the visitor's messages, answer deltas, final
answers) is appended here with an id ``<ms>-<seq>`` that only grows, and an
SSE connection replays the log after its ``Last-Event-ID``. A dropped
connection therefore neither loses nor repeats anything, several tabs stay in
step, and in Redis mode (a Redis Stream per session) the turn may run in one
gateway process while the browser listens on another. The Redis Stream is
keyed by the session's conversation (``keys.web_events(ref.key)``), so the
admin API's erasure finds it with the conversation's other keys.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from bot.state.keys import Keys
from bot.types import ConversationRef

Entry = tuple[str, dict[str, Any]]  # (event id, event)

_MAX_BLOCK_S = 2.0
_REDIS_SOCKET_TIMEOUT_S = 5.0  # redis-py's default when the URL names none
_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")


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

    async def read(self, session_id: str, after: str, timeout_s: float) -> list[Entry]:
        """Events after ``after``, waiting up to ``timeout_s`` for the first one."""

    async def entries(self, session_id: str) -> list[Entry]:
        """Everything still kept for the session, oldest first."""

    async def last_id(self, session_id: str) -> str:
        """The newest id, or ``"0-0"``: where a live-only reader starts."""

    async def close(self) -> None: ...


class MemoryEventLog:
    """One process: a bounded deque per session, readers woken by a Condition."""

    def __init__(self, per_session: int, idle_ttl_s: float, max_sessions: int = 10_000) -> None:
        self.per_session = per_session
        self.idle_ttl_s = idle_ttl_s
        self.max_sessions = max_sessions
        self._logs: OrderedDict[str, tuple[deque[Entry], asyncio.Condition]] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._last = (0, 0)

    def _log(self, session_id: str) -> tuple[deque[Entry], asyncio.Condition]:
        item = self._logs.get(session_id)
        now = time.monotonic()
        if item is not None and now - self._touched[session_id] > self.idle_ttl_s:
            item[0].clear()
        if item is None:
            item = (deque(maxlen=self.per_session), asyncio.Condition())
            self._logs[session_id] = item
            while len(self._logs) > self.max_sessions:  # bounded: forget the longest-idle session
                old, _ = self._logs.popitem(last=False)
                self._touched.pop(old, None)
        self._logs.move_to_end(session_id)
        self._touched[session_id] = now
        return item

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    async def append(self, session_id: str, event: dict[str, Any]) -> str:
        return (await self.append_many(session_id, [event]))[0]

    async def append_many(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        entries, cond = self._log(session_id)
        ids = []
        for event in events:
            ids.append(self._next_id())
            entries.append((ids[-1], event))
        async with cond:
            cond.notify_all()
        return ids

    def _after(self, entries: Sequence[Entry], after: tuple[int, int]) -> list[Entry]:
        return [e for e in entries if parse_event_id(e[0]) > after]

    async def read(self, session_id: str, after: str, timeout_s: float) -> list[Entry]:
        entries, cond = self._log(session_id)
        cursor = parse_event_id(after)
        found = self._after(entries, cursor)
        if found:
            return found
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: bool(self._after(entries, cursor))), timeout_s)
            except TimeoutError:
                return []
        return self._after(entries, cursor)

    async def entries(self, session_id: str) -> list[Entry]:
        return list(self._log(session_id)[0])

    async def last_id(self, session_id: str) -> str:
        entries = self._log(session_id)[0]
        return entries[-1][0] if entries else "0-0"

    async def erase(self, session_id: str) -> int:
        """Forget a session's events (right to erasure); 1 when there were any."""
        item = self._logs.pop(session_id, None)
        self._touched.pop(session_id, None)
        return 1 if item is not None and item[0] else 0

    async def close(self) -> None:
        self._logs.clear()


class RedisEventLog:
    """A capped Redis Stream per session, expiring with the conversation."""

    def __init__(self, client: aioredis.Redis, keys: Keys, per_session: int, idle_ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.per_session = per_session
        self.ttl_ms = max(1, int(idle_ttl_s * 1000))
        # Blocking reads go in slices under the client's socket timeout (5 s by default in redis-py 8):
        # a longer block would fail as a read timeout instead of coming back empty.
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout", _REDIS_SOCKET_TIMEOUT_S)
        self.block_s = min(_MAX_BLOCK_S, socket_timeout / 2) if socket_timeout else _MAX_BLOCK_S

    def _key(self, session_id: str) -> str:
        return self.keys.web_events(session_ref(session_id).key)

    async def append(self, session_id: str, event: dict[str, Any]) -> str:
        return (await self.append_many(session_id, [event]))[0]

    async def append_many(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        key = self._key(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(key, {"d": json.dumps(event, ensure_ascii=False)}, maxlen=self.per_session,
                          approximate=True)
            pipe.pexpire(key, self.ttl_ms)
            *ids, _ = await pipe.execute()
        return [i if isinstance(i, str) else i.decode() for i in ids]

    @staticmethod
    def _decode(raw: Sequence[Any]) -> list[Entry]:
        out: list[Entry] = []
        for event_id, fields in raw:
            data = fields.get("d") if isinstance(fields, dict) else None
            if data is None:
                continue
            out.append((event_id, json.loads(data)))
        return out

    async def read(self, session_id: str, after: str, timeout_s: float) -> list[Entry]:
        parse_event_id(after)
        key = self._key(session_id)
        deadline = time.monotonic() + timeout_s
        while True:
            block_s = min(self.block_s, max(0.001, deadline - time.monotonic()))
            result = await self.client.xread({key: after}, count=500, block=max(1, int(block_s * 1000)))
            if result:
                streams = result.items() if isinstance(result, dict) else result  # RESP3 answers a dict
                return [entry for _key, raw in streams for entry in self._decode(raw)]
            if time.monotonic() >= deadline:
                return []

    async def entries(self, session_id: str) -> list[Entry]:
        return self._decode(await self.client.xrange(self._key(session_id)))

    async def last_id(self, session_id: str) -> str:
        raw = await self.client.xrevrange(self._key(session_id), count=1)
        return raw[0][0] if raw else "0-0"

    async def close(self) -> None:
        return None
