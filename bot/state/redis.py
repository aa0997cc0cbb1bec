"""Redis store (``redis.asyncio``): shared by every gateway and worker process.

A conversation is one hash ``{v: version, d: json}``; the compare-and-set save
is a Lua script so check, write and TTL refresh are one atomic step.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from bot.state.base import DialogueState, VersionConflict
from bot.state.keys import Keys

_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '0') ~= ARGV[1] then return -1 end
local nv = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'v', nv, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return nv
"""


class RedisStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, idle_ttl_s: float, dedup_ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self._idle_ms = int(idle_ttl_s * 1000)
        self._dedup_s = int(dedup_ttl_s)
        self._cas = client.register_script(_CAS)

    @classmethod
    def from_url(cls, url: str, keys: Keys, idle_ttl_s: float, dedup_ttl_s: float) -> RedisStore:
        client = aioredis.from_url(url, decode_responses=True, health_check_interval=30)
        return cls(client, keys, idle_ttl_s, dedup_ttl_s)

    async def load(self, key: str) -> DialogueState:
        version, raw = await self.client.hmget(self.keys.state(key), ["v", "d"])
        if version is None or raw is None:
            return DialogueState(key=key)
        return DialogueState.from_json(key, int(version), raw)

    async def save(self, state: DialogueState, *, expected_version: int) -> DialogueState:
        saved = state.replace(updated_at=time.time())
        result = await self._cas(
            keys=[self.keys.state(state.key)], args=[str(expected_version), saved.to_json(), self._idle_ms]
        )
        if int(result) < 0:
            raise VersionConflict(state.key)
        return saved.replace(version=int(result))

    async def delete(self, key: str) -> None:
        await self.client.delete(self.keys.state(key))

    async def first_seen(self, dedup_key: str) -> bool:
        return bool(await self.client.set(self.keys.dedup(dedup_key), "1", nx=True, ex=self._dedup_s))

    async def forget_seen(self, dedup_key: str) -> None:
        await self.client.delete(self.keys.dedup(dedup_key))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (aioredis.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
