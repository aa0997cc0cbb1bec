"""Small shared key-value operations for adapters: cached platform tokens, one
refresher at a time, sliding-window rate counters, and short bounded lists
(messages waiting for a customer's next request). Redis when the state is in
Redis (so every process shares them), a dict otherwise. A key holds either a
string or a list, never both."""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

import redis.asyncio as aioredis


class SharedKV(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float) -> None: ...

    async def set_nx(self, key: str, value: str, ttl_s: float) -> bool:
        """Set only when absent; the building block of single-flight locks."""

    async def delete(self, key: str) -> None: ...

    async def hit(self, key: str, window_s: float) -> int:
        """Count one hit in a fixed window and return the count so far."""

    async def list_push(self, key: str, value: str, *, max_len: int, ttl_s: float) -> int:
        """Append to the list at ``key``, keeping only its newest ``max_len`` items, and (re)start its TTL;
        returns the list's length. One atomic step."""

    async def list_take(self, key: str) -> list[str]:
        """Every item of the list, oldest first, and the list deleted, in one atomic step: two takers
        never both get an item."""


class MemoryKV:
    _SWEEP_INTERVAL_S = 60.0

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, str]] = {}
        self._lists: dict[str, tuple[float, deque[str]]] = {}
        self._next_sweep = 0.0

    def _sweep(self) -> None:
        """Rate windows and notices are written once and never read again:
        drop expired keys now and then so memory stays bounded."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._SWEEP_INTERVAL_S
            self._data = {k: v for k, v in self._data.items() if v[0] > now}
            self._lists = {k: v for k, v in self._lists.items() if v[0] > now}

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None or item[0] <= time.monotonic():
            self._data.pop(key, None)
            return None
        return item[1]

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def set(self, key: str, value: str, ttl_s: float) -> None:
        self._sweep()
        self._data[key] = (time.monotonic() + ttl_s, value)

    async def set_nx(self, key: str, value: str, ttl_s: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._lists.pop(key, None)

    async def hit(self, key: str, window_s: float) -> int:
        self._sweep()
        current = self._live(key)
        count = int(current or 0) + 1
        expires = self._data[key][0] if current is not None else time.monotonic() + window_s
        self._data[key] = (expires, str(count))
        return count

    async def list_push(self, key: str, value: str, *, max_len: int, ttl_s: float) -> int:
        self._sweep()
        items = self._live_list(key) or deque()
        items.append(value)
        while len(items) > max(1, max_len):
            items.popleft()
        self._lists[key] = (time.monotonic() + ttl_s, items)
        return len(items)

    async def list_take(self, key: str) -> list[str]:
        items = self._live_list(key)
        self._lists.pop(key, None)
        return list(items or ())

    def _live_list(self, key: str) -> deque[str] | None:
        item = self._lists.get(key)
        if item is None or item[0] <= time.monotonic():
            self._lists.pop(key, None)
            return None
        return item[1]


class RedisKV:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def get(self, key: str) -> str | None:
        return await self.client.get(key)

    async def set(self, key: str, value: str, ttl_s: float) -> None:
        await self.client.set(key, value, px=max(1, int(ttl_s * 1000)))

    async def set_nx(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(await self.client.set(key, value, nx=True, px=max(1, int(ttl_s * 1000))))

    async def delete(self, key: str) -> None:
        await self.client.delete(key)

    async def hit(self, key: str, window_s: float) -> int:
        # The window starts with the first hit (SET NX PX) and INCR keeps its TTL; PEXPIRE ... NX would say
        # the same in one command but needs Redis 7, and the hub runs on 6.2 (bot/state/redisconn.py).
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, px=max(1, int(window_s * 1000)), nx=True)
            pipe.incr(key)
            _, count = await pipe.execute()
        return int(count)

    async def list_push(self, key: str, value: str, *, max_len: int, ttl_s: float) -> int:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, value)
            pipe.ltrim(key, -max(1, max_len), -1)
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            pipe.llen(key)
            *_, length = await pipe.execute()
        return int(length)

    async def list_take(self, key: str) -> list[str]:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            items, _ = await pipe.execute()
        return list(items)
