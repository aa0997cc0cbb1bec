"""Redis store (``redis.asyncio``): shared by every gateway and worker process.

A conversation is one hash ``{v: version, d: json}``; the compare-and-set save
is a Lua script so check, write and TTL refresh are one atomic step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.state.base import SENT, DialogueState, LedgerEntry, SeenPending, StoreDown, VersionConflict
from bot.state.keys import Keys
from bot.state.redisconn import open_client

_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '0') ~= ARGV[1] then return -1 end
local nv = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'v', nv, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5]) end
return nv
"""


P = ParamSpec("P")
T = TypeVar("T")


def store_trouble(exc: BaseException) -> bool:
    """Whether an error means Redis could not be reached (the work is to be done again), not a failure of the
    work itself; raised by the store as :class:`StoreDown`, by channels' direct Redis use as redis-py's own."""
    return isinstance(exc, (StoreDown, RedisConnectionError, RedisTimeoutError))


def _down_is_store_down(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Connection trouble becomes :class:`StoreDown`, so callers retry the work instead of failing it."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreDown(type(exc).__name__) from exc

    return wrapper


_SEEN = """
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, 2) ~= 'p:' then return 0 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now < tonumber(string.sub(v, 3)) then return -1 end
end
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[1], 'p:' .. (now + tonumber(ARGV[2])), 'EX', ARGV[1])
else
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
end
return 1
"""


class RedisStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, idle_ttl_s: float, dedup_ttl_s: float, *,
                 handoff_ttl_s: float | None = None) -> None:
        self.client = client
        self.keys = keys
        self._idle_ms = int(idle_ttl_s * 1000)
        # A conversation a person has is kept longer (StateConfig.handoff_ttl_s): its inbox row lives on it.
        self._handoff_ms = int(max(idle_ttl_s, handoff_ttl_s or 0) * 1000)
        self._dedup_s = int(dedup_ttl_s)
        self._cas = client.register_script(_CAS)
        self._seen = client.register_script(_SEEN)  # server time, so gateways' clocks need not agree

    @classmethod
    def from_url(cls, url: str, keys: Keys, idle_ttl_s: float, dedup_ttl_s: float, *, max_connections: int = 100,
                 pool_timeout_s: float = 5.0, socket_timeout_s: float = 5.0,
                 connect_timeout_s: float = 2.0, handoff_ttl_s: float | None = None) -> RedisStore:
        # A blocking pool (under a backlog hundreds of conversations run at once) with every wait bounded:
        # bot/state/redisconn.py.
        client = open_client(url, max_connections=max_connections, pool_timeout_s=pool_timeout_s,
                             socket_timeout_s=socket_timeout_s, connect_timeout_s=connect_timeout_s)
        return cls(client, keys, idle_ttl_s, dedup_ttl_s, handoff_ttl_s=handoff_ttl_s)

    @_down_is_store_down
    async def load(self, key: str) -> DialogueState:
        version, raw = await self.client.hmget(self.keys.state(key), ["v", "d"])
        if version is None or raw is None:
            return DialogueState(key=key)
        return DialogueState.from_json(key, int(version), raw)

    @_down_is_store_down
    async def save(
        self, state: DialogueState, *, expected_version: int, ledger: LedgerEntry | None = None
    ) -> DialogueState:
        saved = state.replace(updated_at=time.time())
        keys = [self.keys.state(state.key)]
        ttl_ms = self._handoff_ms if saved.handed_off else self._idle_ms
        args: list[str | int] = [str(expected_version), saved.to_json(), ttl_ms]
        if ledger is not None:
            keys.append(self.keys.reply(state.key, ledger.dedup_key))
            args += [ledger.replies, self._dedup_s * 1000]
        result = await self._cas(keys=keys, args=args)
        if int(result) < 0:
            raise VersionConflict(state.key)
        return saved.replace(version=int(result))

    @_down_is_store_down
    async def ledger(self, conversation: str, dedup_key: str) -> str | None:
        return await self.client.get(self.keys.reply(conversation, dedup_key))

    @_down_is_store_down
    async def mark_sent(self, conversation: str, dedup_key: str) -> None:
        await self.client.set(self.keys.reply(conversation, dedup_key), SENT, ex=self._dedup_s)

    async def delete(self, key: str) -> None:
        await self.client.delete(self.keys.state(key))

    async def first_seen(self, dedup_key: str, *, pending_s: float = 0.0) -> bool:
        result = int(await self._seen(keys=[self.keys.dedup(dedup_key)],
                                      args=[self._dedup_s, int(pending_s * 1000)]))
        if result < 0:
            raise SeenPending(dedup_key)
        return result == 1

    async def confirm_seen(self, dedup_key: str) -> None:
        await self.client.set(self.keys.dedup(dedup_key), "1", xx=True, keepttl=True)

    async def forget_seen(self, dedup_key: str) -> None:
        await self.client.delete(self.keys.dedup(dedup_key))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (aioredis.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
